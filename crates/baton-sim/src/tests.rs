//! Tier-2 tests: whole clusters under seeded faults.
//!
//! pgbaton has open bugs that this simulator found (see [`Finding`]). The checker recognises
//! each of them from the state of the world when an invariant breaks, so the seed sweep fails
//! only on a violation it cannot attribute to one of [`crate::OPEN_FINDINGS`]. When a fix lands, drop
//! its finding from the list: from then on the sweep guards against its return. The scripted
//! tests below reproduce each finding on purpose and document today's behaviour; each says
//! what to change once the bug is fixed.

use std::time::Duration;

use super::*;

/// Run `seeds` on two threads (each run is single-threaded and deterministic).
fn run_all(seeds: &[u64], opts: &Options) -> Vec<Outcome> {
    let mut out: Vec<Outcome> = std::thread::scope(|s| {
        let (a, b) = seeds.split_at(seeds.len() / 2);
        let ha = s.spawn(|| a.iter().map(|&seed| run(seed, opts)).collect::<Vec<_>>());
        let hb = s.spawn(|| b.iter().map(|&seed| run(seed, opts)).collect::<Vec<_>>());
        let mut v = ha.join().expect("runner thread");
        v.extend(hb.join().expect("runner thread"));
        v
    });
    out.sort_by_key(|o| o.seed);
    out
}

fn ten_s() -> Timing {
    Timing {
        ttl: 10,
        loop_wait: 2,
        retry_timeout: 4,
    }
}

fn scripted(faults: Vec<Fault>, chaos_secs: u64) -> Schedule {
    Schedule {
        rounds: vec![Round {
            chaos: Duration::from_secs(chaos_secs),
            faults,
        }],
    }
}

fn fault(at_ms: u64, dur_ms: u64, kind: FaultKind) -> Fault {
    Fault {
        at: Duration::from_millis(at_ms),
        dur: Duration::from_millis(dur_ms),
        kind,
    }
}

fn findings(out: &Outcome) -> Vec<(ViolationKind, Option<Finding>)> {
    out.violations.iter().map(|v| (v.kind, v.finding)).collect()
}

#[test]
fn fixed_seeds_break_no_invariant_beyond_the_known_findings() {
    let three = Options::default();
    let five = Options {
        nodes: 5,
        rounds: 2,
        ..Options::default()
    };
    let mut outcomes = run_all(&(1..=24).collect::<Vec<_>>(), &three);
    outcomes.extend(run_all(&[101, 102, 103, 104], &five));

    let mut unexplained = Vec::new();
    let mut tally: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for out in &outcomes {
        for v in &out.violations {
            match v.finding {
                Some(f) if OPEN_FINDINGS.contains(&f) => {
                    tally.entry(format!("{f:?}")).or_default().push(out.seed);
                }
                _ => unexplained.push(out.report(250)),
            }
        }
        // A run that ended without a violation converged after every round and in the end.
        if out.ok() {
            assert!(!out.stats.convergence.is_empty(), "seed {}", out.seed);
        }
    }
    eprintln!(
        "{} seeds: {} clean; known findings hit: {tally:?}",
        outcomes.len(),
        outcomes.iter().filter(|o| o.ok()).count()
    );
    assert!(
        unexplained.is_empty(),
        "{} violation(s) not explained by a known finding:\n{}",
        unexplained.len(),
        unexplained.join("\n")
    );
}

#[test]
fn a_seed_replays_exactly() {
    let opts = Options::default();
    // A seed whose run has a failover in it (which one depends on the agent code).
    let a = (1..=20)
        .map(|seed| run(seed, &opts))
        .find(|o| o.stats.promotions > 0)
        .expect("one of 20 seeds fails over");
    let b = run(a.seed, &opts);
    assert_eq!(a.trace.len(), b.trace.len());
    for (x, y) in a.trace.iter().zip(&b.trace) {
        assert_eq!(x, y);
    }
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_ne!(a.trace_hash, run(a.seed + 1, &opts).trace_hash);
}

/// The negative control: a member that promotes without waiting for the leader's lease (it
/// takes the key as soon as it cannot reach the leader) must be caught.
#[test]
fn the_checker_catches_a_promotion_before_the_lease_expired() {
    let opts = Options {
        broken: Some(Broken::Steal),
        timing: Some(ten_s()),
        schedule: Some(scripted(
            vec![
                fault(
                    2_000,
                    20_000,
                    FaultKind::PeerPartition {
                        a: Target::Leader,
                        b: Target::Replica(0),
                    },
                ),
                fault(
                    2_000,
                    20_000,
                    FaultKind::PeerPartition {
                        a: Target::Leader,
                        b: Target::Replica(1),
                    },
                ),
            ],
            30,
        )),
        ..Options::default()
    };
    let out = run(1, &opts);
    assert!(
        findings(&out).contains(&(ViolationKind::TwoWritablePrimaries, None)),
        "{}",
        out.report(80)
    );
    // The same cut with the real code: no violation (the leader keeps its lease).
    let honest = run(
        1,
        &Options {
            broken: None,
            ..opts
        },
    );
    assert!(honest.ok(), "{}", honest.report(80));

    // And under random faults it is caught too.
    let random = run_all(
        &[1, 2, 3, 4],
        &Options {
            broken: Some(Broken::Steal),
            ..Options::default()
        },
    );
    assert!(
        random
            .iter()
            .any(|o| findings(o).contains(&(ViolationKind::TwoWritablePrimaries, None))),
        "the broken variant went unnoticed on four random seeds"
    );
}

/// Known gap, documented: an agent frozen (SIGSTOP) for longer than the ttl cannot fence, its
/// PostgreSQL keeps accepting writes, the lease expires and another member is promoted. Only a
/// watchdog (or an external fencer) closes this. When one exists, expect no violation here.
#[test]
fn a_frozen_agent_leaves_its_primary_writable_past_the_lease() {
    let opts = Options {
        unsafe_faults: true,
        timing: Some(ten_s()),
        schedule: Some(scripted(
            vec![fault(
                2_000,
                30_000,
                FaultKind::AgentPause {
                    target: Target::Leader,
                },
            )],
            40,
        )),
        ..Options::default()
    };
    let out = run(1, &opts);
    assert_eq!(
        findings(&out),
        vec![(
            ViolationKind::TwoWritablePrimaries,
            Some(Finding::NoWatchdog)
        )],
        "{}",
        out.report(80)
    );
}

/// Runs `opts` on four seeds (the script is fixed; the seed moves every delay a little) and
/// returns the violations.
/// One run: seed, what broke (and the diagnosis), the report.
type Run = (u64, Vec<(ViolationKind, Option<Finding>)>, String);

fn four_seeds(opts: &Options) -> Vec<Run> {
    run_all(&[1, 2, 3, 4], opts)
        .iter()
        .map(|o| (o.seed, findings(o), o.report(60)))
        .collect()
}

/// F1, fixed: the leader is cut off from the DCS with requests hanging. Its HA loop is blocked
/// in DCS timeouts past the fencing deadline; the fencer must still stop PostgreSQL before the
/// lease can expire and a replica is promoted. (Before the fix `decide` forgot `was_leader`
/// without a DCS view and the fencer was disarmed exactly then.)
#[test]
fn f1_the_fencer_stays_armed_when_the_dcs_goes_silent() {
    let opts = Options {
        timing: Some(ten_s()),
        schedule: Some(scripted(
            vec![fault(
                2_000,
                30_000,
                FaultKind::DcsPartition {
                    target: Target::Leader,
                    hang: true,
                },
            )],
            40,
        )),
        ..Options::default()
    };
    for (seed, v, report) in four_seeds(&opts) {
        assert!(v.is_empty(), "seed {seed}: {v:?}\n{report}");
    }
}

/// F2, fixed: the leader is isolated, its agent is killed and restarted by a supervisor two
/// seconds later. The new process cannot reach the DCS; it must fence PostgreSQL by the
/// deadline its predecessor recorded, before a replica can be promoted.
#[test]
fn f2_a_restarted_agent_fences_its_primary_by_the_recorded_deadline() {
    let opts = Options {
        timing: Some(ten_s()),
        fixes: Fixes {
            keep_fencer_armed_without_dcs: true,
        },
        schedule: Some(scripted(
            vec![
                fault(
                    2_000,
                    30_000,
                    FaultKind::Isolate {
                        target: Target::Leader,
                    },
                ),
                fault(
                    3_000,
                    2_000,
                    FaultKind::AgentCrash {
                        target: Target::Leader,
                    },
                ),
            ],
            40,
        )),
        ..Options::default()
    };
    for (seed, v, report) in four_seeds(&opts) {
        assert!(v.is_empty(), "seed {seed}: {v:?}\n{report}");
    }
}
