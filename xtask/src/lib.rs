//! Checks of the repository itself, run as tests: `cargo test -p xtask` (and so part of
//! `cargo test --workspace` and `make test`).
//!
//! - [`tidy`]: the dependency rules between the crates, read from every `Cargo.toml`, and the
//!   purity of `baton-core`, read from its sources. `ARCHITECTURE.md` lists the same rules; the
//!   tests check that it does.

pub mod tidy;
