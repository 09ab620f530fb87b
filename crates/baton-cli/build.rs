//! Release builds place the code the agent and the fence guard run while idle together at the
//! start of `.text` (lld's `--symbol-ordering-file`, the list in `symbol-order.txt`).
//!
//! Why: the kernel maps a binary's file pages in windows around each page fault (64 kB), so
//! the few functions an idle agent runs, spread over 6 MB of text, kept nearly all of the text
//! resident. Packed together they occupy a few hundred pages, and the rest (start-up, the CLI,
//! rare paths) is released after the first cycle (`baton_agent::startup_pages`) and stays out.
//! The order changes where code lies, never what it does. A stale list is harmless: names the
//! binary no longer has are ignored (`--no-warn-symbol-ordering`) and their code keeps its
//! default place. `scripts/symbol-order.sh` regenerates the list from a profiled idle cluster.
//!
//! Only where the linker is known to be lld: x86_64 Linux (rustc's default linker there since
//! Rust 1.90), and no linker chosen in RUSTFLAGS; `PGBATON_NO_SYMBOL_ORDER=1` at build time
//! turns it off. Dev builds (tests) never get it.

use std::path::PathBuf;

fn main() {
    let list = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("symbol-order.txt");
    println!("cargo::rerun-if-changed={}", list.display());
    println!("cargo::rerun-if-env-changed=PGBATON_NO_SYMBOL_ORDER");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let release = var("PROFILE") == "release";
    let lld_target = var("TARGET") == "x86_64-unknown-linux-gnu";
    let rustflags = var("CARGO_ENCODED_RUSTFLAGS");
    let own_linker = rustflags.contains("linker");
    let opted_out = std::env::var_os("PGBATON_NO_SYMBOL_ORDER").is_some();
    if release && lld_target && !own_linker && !opted_out && list.is_file() {
        println!(
            "cargo::rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo::rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
