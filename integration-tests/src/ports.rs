//! Free TCP ports on 127.0.0.1, reserved across concurrently running test processes.
//!
//! Ports come from 20000–32000 (below Linux's ephemeral range, away from the packaged
//! services on 2379/5432/8008). A port is handed out only when
//! - no other test process holds its reservation: an exclusive `flock` on
//!   `/tmp/pgbaton-test-ports/<port>`, held until this process exits, and
//! - it can be bound on 127.0.0.1 right now.

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, Ordering};

use anyhow::{Context, bail};
use nix::fcntl::{Flock, FlockArg};

const FIRST: u16 = 20000;
const LAST: u16 = 32000;

/// Reservations held for the life of the process.
static HELD: Mutex<Vec<Flock<File>>> = Mutex::new(Vec::new());
/// Where this process continues scanning (0 = not started).
static NEXT: AtomicU16 = AtomicU16::new(0);

/// A TCP port on 127.0.0.1 that nobody listens on and no other test process has reserved.
pub fn free_port() -> anyhow::Result<u16> {
    let dir = lock_dir()?;
    // Spread concurrent test processes over the range so they rarely contend.
    let span = LAST - FIRST;
    let _ = NEXT.compare_exchange(
        0,
        FIRST + (std::process::id() % u32::from(span / 64)) as u16 * 64,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = if port >= LAST {
            NEXT.store(FIRST + 1, Ordering::SeqCst);
            FIRST
        } else {
            port
        };
        let path = dir.join(port.to_string());
        let opened = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .or_else(|_| File::open(&path));
        let Ok(file) = opened else {
            continue;
        };
        let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        HELD.lock().unwrap_or_else(|e| e.into_inner()).push(lock);
        return Ok(port);
    }
    bail!("no free TCP port in {FIRST}..{LAST}")
}

fn lock_dir() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join("pgbaton-test-ports");
    if !dir.exists() {
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        // Shared by every user that runs tests on this machine.
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777));
    }
    Ok(dir)
}
