//! The real-process fault suite ("chaos", safety-and-testing.md §7): three etcd members,
//! three PostgreSQL nodes with their agents, each in its own network namespace on a bridge,
//! HAProxy and the clients in the client namespace. Faults are injected on the primary while
//! the workloads run; after each fault the cluster must heal by itself, and the checkers
//! decide whether an acknowledged write was lost or two primaries were writable at once.
//!
//! - [`workload`]: W1 (the set workload through HAProxy) and W2 (per-node probe writers);
//! - [`checker`]: C1 (lost / unexpected writes), C3 (the sound overlap check), recovery times;
//! - [`faults`]: what each fault does to the cluster and how long it holds;
//! - [`report`]: the Markdown and JSON report;
//! - [`runner`]: one cluster per configuration profile, the fault loop, the final read.

pub mod checker;
pub mod faults;
pub mod report;
pub mod runner;
pub mod workload;

use std::time::{Duration, Instant};

/// The run's one clock: nanoseconds since the run started, on `CLOCK_MONOTONIC` (which every
/// network namespace shares), so that times recorded by the client namespace's workers, the
/// probe writers and the fault injector are comparable.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            base: Instant::now(),
        }
    }

    /// Nanoseconds since the run started.
    pub fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Nanoseconds as seconds, for reports.
pub fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// How much to run: `PGBATON_CHAOS=short` (the default, what `cargo test` runs) or `long`
/// (`make chaos`); `PGBATON_CHAOS_ITERATIONS=N` overrides the iterations per fault and
/// `PGBATON_CHAOS_SEED` fixes the seed of the fault offsets and victims.
#[derive(Clone, Debug)]
pub struct Profile {
    pub name: String,
    pub iterations: usize,
    /// How long a lasting fault (partition, pause, dead agent, lost quorum) holds.
    pub hold: Duration,
    /// How long the flapping partition flaps.
    pub flap_for: Duration,
    pub seed: u64,
}

impl Profile {
    /// The profile for `ttl`, from the environment.
    pub fn from_env(ttl: Duration) -> anyhow::Result<Profile> {
        let name = std::env::var("PGBATON_CHAOS").unwrap_or_else(|_| "short".to_owned());
        let mut profile = match name.as_str() {
            "short" => Profile {
                name,
                iterations: 1,
                hold: ttl + Duration::from_secs(4),
                flap_for: Duration::from_secs(16),
                seed: 0,
            },
            "long" => Profile {
                name,
                iterations: 10,
                hold: ttl + Duration::from_secs(10),
                flap_for: Duration::from_secs(60),
                seed: 0,
            },
            other => anyhow::bail!("PGBATON_CHAOS={other:?}: use short or long"),
        };
        if let Ok(n) = std::env::var("PGBATON_CHAOS_ITERATIONS") {
            profile.iterations = n
                .parse()
                .map_err(|e| anyhow::anyhow!("PGBATON_CHAOS_ITERATIONS={n:?}: {e}"))?;
        }
        profile.seed = match std::env::var("PGBATON_CHAOS_SEED") {
            Ok(s) => s
                .parse()
                .map_err(|e| anyhow::anyhow!("PGBATON_CHAOS_SEED={s:?}: {e}"))?,
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1),
        };
        Ok(profile)
    }
}

/// A small seeded generator (splitmix64) for fault offsets, victims and flap lengths: the
/// seed is in the report, so a schedule can be replayed (real processes make the outcome
/// reproducible in distribution only).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)` (or `lo` when the range is empty).
    pub fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_millis() as u64;
        if span == 0 {
            return lo;
        }
        lo + Duration::from_millis(self.next_u64() % span)
    }

    /// An index below `n` (`n > 0`).
    pub fn index(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}
