//! The real-process fault suite ("chaos", safety-and-testing.md §7): three etcd members,
//! three PostgreSQL nodes with their agents, each in its own network namespace on a bridge,
//! HAProxy and the clients in the client namespace. Faults are injected on the primary while
//! the workloads run; after each fault the cluster must heal by itself, and the checkers
//! decide whether an acknowledged write was lost or two primaries were writable at once.
//!
//! - [`workload`]: W1 (the set workload through HAProxy) and W2 (per-node probe writers);
//! - [`readers`]: W3 (readers of the newest ids through HAProxy), for C4;
//! - [`checker`]: C1 (lost / unexpected writes), C3 (the sound overlap check), C4 (a read
//!   observed and later lost), recovery times;
//! - [`faults`]: what each fault does to the cluster and how long it holds;
//! - [`roles`] and [`primaries`]: C5, every node's role as the client namespace sees it, and
//!   the windows in which two nodes answered as primaries (with their causes and the fence
//!   margin);
//! - [`report`]: the Markdown and JSON report;
//! - [`runner`]: one cluster per configuration profile, the fault loop, the final read.

pub mod checker;
pub mod faults;
pub mod primaries;
pub mod readers;
pub mod report;
pub mod roles;
pub mod runner;
pub mod workload;

use std::time::{Duration, Instant};

/// The run's one clock: nanoseconds since the run started, on `CLOCK_MONOTONIC` (which every
/// network namespace shares), so that times recorded by the client namespace's workers, the
/// probe writers and the fault injector are comparable.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: Instant,
    /// `CLOCK_BOOTTIME` at `base` (ns), for the agents' fence records.
    boot_at_base: u64,
    /// The wall clock at `base`, for the agents' log lines.
    wall_at_base: std::time::SystemTime,
}

impl Clock {
    pub fn new() -> Clock {
        let base = Instant::now();
        Clock {
            base,
            boot_at_base: boottime_ns(),
            wall_at_base: std::time::SystemTime::now(),
        }
    }

    /// `ns` on this clock as the agents' log timestamps spell the wall clock
    /// (`2026-01-02T03:04:05.678Z`, UTC, to the millisecond).
    pub fn log_stamp(&self, ns: u64) -> String {
        let at = self.wall_at_base + Duration::from_nanos(ns);
        let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        utc_stamp(since.as_secs(), since.subsec_millis())
    }

    /// Nanoseconds since the run started.
    pub fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// The instant `ns` after the run started.
    pub fn instant_at(&self, ns: u64) -> Instant {
        self.base + Duration::from_nanos(ns)
    }

    /// A time in ms of `CLOCK_BOOTTIME` (the agents' clock) on this clock. `CLOCK_BOOTTIME`
    /// and `CLOCK_MONOTONIC` differ by the time the machine was suspended, a constant while
    /// the suite runs (to the microseconds between the two readings in [`Clock::new`]).
    pub fn from_boottime_ms(&self, ms: u64) -> Option<u64> {
        ms.saturating_mul(1_000_000).checked_sub(self.boot_at_base)
    }
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) for `secs` since the Unix epoch (proleptic Gregorian
/// calendar, Howard Hinnant's `civil_from_days`).
fn utc_date_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for `secs` since the Unix epoch.
fn utc_stamp(secs: u64, millis: u32) -> String {
    format!("{}.{millis:03}Z", utc_date_time(secs))
}

/// `YYYY-MM-DDTHH:MM:SS+00:00` (Patroni's schedule form) for `secs` since the Unix epoch.
pub fn iso8601_utc(secs: u64) -> String {
    format!("{}+00:00", utc_date_time(secs))
}

/// `CLOCK_BOOTTIME` now, in ns (0 if it cannot be read).
fn boottime_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |t| {
        (t.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(t.tv_nsec() as u64)
    })
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
/// `PGBATON_CHAOS_SEED` fixes the seed of the fault offsets and victims;
/// `PGBATON_CHAOS_PARALLEL=N` runs N independent clusters at once (see [`default_parallel`]),
/// the iterations of every fault distributed over them.
/// `PGBATON_CHAOS_FAULTS=kill-agent,cut-from-etcd` runs only those faults (negative controls
/// included only when named) and `PGBATON_CHAOS_REPLICATION=async|quorum` only that
/// configuration: for chasing one fault, never for a verdict on the whole suite.
#[derive(Clone, Debug)]
pub struct Profile {
    pub name: String,
    pub iterations: usize,
    /// How long a lasting fault (partition, pause, dead agent, lost quorum) holds.
    pub hold: Duration,
    /// How long the flapping partition flaps.
    pub flap_for: Duration,
    /// The asynchronous configuration runs every fault (`long`), or only the negative
    /// controls and the faults of issue 19 (kill, freeze, cut the primary's agent from etcd).
    pub async_all_faults: bool,
    pub only_faults: Option<Vec<faults::Fault>>,
    pub only_replication: Option<String>,
    pub seed: u64,
    /// Independent clusters (workers) running at once, each in its own set of network
    /// namespaces with its own etcd; iteration `i` of every fault runs on worker
    /// `(i - 1) % parallel` ([`worker_iterations`]).
    pub parallel: usize,
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
                async_all_faults: false,
                only_faults: None,
                only_replication: None,
                seed: 0,
                parallel: 1,
            },
            "long" => Profile {
                name,
                iterations: 30,
                hold: ttl + Duration::from_secs(10),
                flap_for: Duration::from_secs(60),
                async_all_faults: true,
                only_faults: None,
                only_replication: None,
                seed: 0,
                parallel: default_parallel(
                    std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
                ),
            },
            other => anyhow::bail!("PGBATON_CHAOS={other:?}: use short or long"),
        };
        if let Ok(n) = std::env::var("PGBATON_CHAOS_ITERATIONS") {
            profile.iterations = n
                .parse()
                .map_err(|e| anyhow::anyhow!("PGBATON_CHAOS_ITERATIONS={n:?}: {e}"))?;
        }
        if let Ok(n) = std::env::var("PGBATON_CHAOS_PARALLEL") {
            profile.parallel =
                n.parse().ok().filter(|&n: &usize| n >= 1).ok_or_else(|| {
                    anyhow::anyhow!("PGBATON_CHAOS_PARALLEL={n:?}: a number >= 1")
                })?;
        }
        if let Ok(list) = std::env::var("PGBATON_CHAOS_FAULTS") {
            let faults = list
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| {
                    faults::Fault::from_name(n).ok_or_else(|| {
                        let known: Vec<&str> =
                            faults::Fault::ALL.iter().map(|f| f.name()).collect();
                        anyhow::anyhow!(
                            "PGBATON_CHAOS_FAULTS: unknown fault {n:?}; known: {}",
                            known.join(", ")
                        )
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            profile.only_faults = Some(faults);
        }
        if let Ok(r) = std::env::var("PGBATON_CHAOS_REPLICATION") {
            anyhow::ensure!(
                r == "async" || r == "quorum",
                "PGBATON_CHAOS_REPLICATION={r:?}: use async or quorum"
            );
            profile.only_replication = Some(r);
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

/// The long profile's number of parallel clusters for a machine with `cores` cores: two per
/// core, at most 4. A cluster (3 etcd members, 3 PostgreSQL nodes and agents, HAProxy, the
/// workloads) spends most of an iteration waiting for the fault's hold and the recovery: on
/// two cores, four clusters ran at 50 s per iteration and worker, as two had (docs/testing.md,
/// "Fault suite"), which is what 30 iterations of every fault in about two hours need; the
/// short profile (`make test`) runs one.
pub fn default_parallel(cores: usize) -> usize {
    cores.saturating_mul(2).clamp(1, 4)
}

/// The iterations (1-based, of `iterations` per fault) that worker `worker` of `workers` runs:
/// `worker + 1`, `worker + 1 + workers`, ... (round robin, so the workers' shares differ by at
/// most one and every iteration runs exactly once).
pub fn worker_iterations(iterations: usize, workers: usize, worker: usize) -> Vec<usize> {
    (1..=iterations)
        .filter(|i| (i - 1) % workers.max(1) == worker)
        .collect()
}

/// The seed of worker `worker`'s faults: the run's seed for worker 0 (so one worker replays
/// what the serial suite did), a splitmix64 step away from it for the others.
pub fn worker_seed(seed: u64, worker: usize) -> u64 {
    if worker == 0 {
        seed
    } else {
        Rng::new(seed ^ (worker as u64).wrapping_mul(0xa076_1d64_78bd_642f)).next_u64()
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

#[cfg(test)]
mod tests {
    use super::{default_parallel, iso8601_utc, utc_stamp, worker_iterations, worker_seed};

    #[test]
    fn iterations_are_dealt_round_robin_each_exactly_once() {
        assert_eq!(worker_iterations(5, 2, 0), [1, 3, 5]);
        assert_eq!(worker_iterations(5, 2, 1), [2, 4]);
        assert_eq!(worker_iterations(1, 1, 0), [1]);
        // More workers than iterations: the extra ones get nothing.
        assert!(worker_iterations(2, 3, 2).is_empty());
        for (n, w) in [(30, 1), (30, 2), (30, 4), (7, 3)] {
            let mut all: Vec<usize> = (0..w).flat_map(|k| worker_iterations(n, w, k)).collect();
            all.sort_unstable();
            assert_eq!(all, (1..=n).collect::<Vec<_>>(), "{n} over {w}");
        }
    }

    #[test]
    fn workers_get_distinct_seeds_and_worker_0_keeps_the_runs() {
        assert_eq!(worker_seed(42, 0), 42);
        let seeds: std::collections::BTreeSet<u64> = (0..8).map(|w| worker_seed(42, w)).collect();
        assert_eq!(seeds.len(), 8);
        assert_eq!(worker_seed(42, 3), worker_seed(42, 3));
    }

    #[test]
    fn the_default_parallelism_follows_the_cores() {
        assert_eq!(default_parallel(0), 1);
        assert_eq!(default_parallel(1), 2);
        assert_eq!(default_parallel(2), 4);
        assert_eq!(default_parallel(64), 4);
    }

    #[test]
    fn log_stamps_spell_utc_like_the_agents_logs() {
        assert_eq!(utc_stamp(0, 0), "1970-01-01T00:00:00.000Z");
        // 2024-02-29T23:59:59.5 UTC (a leap day).
        assert_eq!(utc_stamp(1_709_251_199, 500), "2024-02-29T23:59:59.500Z");
        assert_eq!(utc_stamp(1_767_323_045, 7), "2026-01-02T03:04:05.007Z");
        assert_eq!(iso8601_utc(1_767_323_045), "2026-01-02T03:04:05+00:00");
    }
}
