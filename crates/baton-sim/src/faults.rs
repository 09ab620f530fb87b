//! The fault menu, the seeded schedule, and applying faults to the world.
//!
//! A schedule is a list of rounds. Each round is a chaos window with faults starting and
//! ending inside it; at its end every fault is healed and the cluster must converge within a
//! bound (checked by the driver). Targets are symbolic ("the leader", "the 2nd replica") and
//! resolved when the fault starts, so a schedule stays meaningful whoever leads by then.
//!
//! Network faults are kept as a set of active faults and the network is recomputed from the
//! set whenever it changes, so overlapping faults compose (two cuts of the same link heal
//! when the second one ends).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::rng::Rng;
use crate::world::{DcsLink, World};
use crate::{Params, agent, pg};

/// Who a fault hits, resolved when it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The member named in the leader key (member 0 when there is none).
    Leader,
    /// The k-th member (mod the count) that does not hold the leader key.
    Replica(usize),
    /// A member by index.
    Node(usize),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Leader => write!(f, "leader"),
            Target::Replica(k) => write!(f, "replica#{k}"),
            Target::Node(n) => write!(f, "n{}", n + 1),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The member cannot reach the DCS: connection refused (`hang: false`) or silence.
    DcsPartition { target: Target, hang: bool },
    /// Two members cannot reach each other (REST API, replication, rewind, clone).
    PeerPartition { a: Target, b: Target },
    /// The member reaches neither the DCS nor any other member (clients still reach it).
    Isolate { target: Target },
    /// SIGKILL of the agent process; it is restarted when the fault ends (within
    /// min(5 s, ttl/4): a supervisor's restart; longer outages only with `unsafe_faults`).
    AgentCrash { target: Target },
    /// The postmaster dies (instantaneous; the agent is expected to deal with it).
    PgCrash { target: Target },
    /// DCS calls take `extra` ms more each way, for one member or (`None`) all of them.
    SlowDcs {
        target: Option<Target>,
        extra: (u64, u64),
    },
    /// Start, stop, promote, rewind and clone take ten times longer on the member.
    SlowPg { target: Target },
    /// etcd loses its leader: requests wait, no lease expires, and when a new leader is
    /// elected every lease starts its TTL afresh (plus one election timeout).
    EtcdElection,
    /// SIGSTOP of the agent process — keeper, fencer and HA loop alike — while PostgreSQL
    /// keeps running; the fence guard (not paused) must fence. Only with `unsafe_faults`
    /// (these faults were the no-watchdog gap before the guard; they stay opt-in so that the
    /// default seeds keep their schedules).
    AgentPause { target: Target },
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultKind::DcsPartition { target, hang } => write!(
                f,
                "cut {target} from the DCS ({})",
                if *hang { "silence" } else { "refused" }
            ),
            FaultKind::PeerPartition { a, b } => write!(f, "cut {a} from {b}"),
            FaultKind::Isolate { target } => write!(f, "isolate {target}"),
            FaultKind::AgentCrash { target } => write!(f, "kill the agent of {target}"),
            FaultKind::PgCrash { target } => write!(f, "crash postgres on {target}"),
            FaultKind::SlowDcs {
                target: Some(t),
                extra,
            } => write!(f, "slow DCS for {t} (+{}..{} ms)", extra.0, extra.1),
            FaultKind::SlowDcs {
                target: None,
                extra,
            } => write!(f, "slow DCS for everyone (+{}..{} ms)", extra.0, extra.1),
            FaultKind::SlowPg { target } => write!(f, "slow postgres on {target}"),
            FaultKind::EtcdElection => write!(f, "etcd leader election"),
            FaultKind::AgentPause { target } => write!(f, "pause the agent of {target}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Start, from the beginning of the round.
    pub at: Duration,
    pub dur: Duration,
    pub kind: FaultKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Round {
    pub chaos: Duration,
    pub faults: Vec<Fault>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    pub rounds: Vec<Round>,
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, r) in self.rounds.iter().enumerate() {
            writeln!(f, "round {k}: chaos {}s", r.chaos.as_secs())?;
            for fault in &r.faults {
                writeln!(
                    f,
                    "  +{:>6.1}s for {:>5.1}s: {}",
                    fault.at.as_secs_f64(),
                    fault.dur.as_secs_f64(),
                    fault.kind
                )?;
            }
        }
        Ok(())
    }
}

/// A seeded schedule of `rounds` rounds for `params`.
pub fn generate(rng: &mut Rng, params: &Params, rounds: usize, unsafe_faults: bool) -> Schedule {
    let ttl = u64::from(params.ttl);
    let n = params.names.len();
    let mut out = Schedule::default();
    for _ in 0..rounds {
        let chaos_s = rng.range((2 * ttl).max(20), (5 * ttl).max(50));
        let chaos = Duration::from_secs(chaos_s);
        let count = rng.range(1, 4);
        let mut faults = Vec::new();
        for _ in 0..count {
            let at = rng.ms(0, chaos_s * 1000 * 2 / 3);
            let target = |rng: &mut Rng| match rng.below(10) {
                0..=5 => Target::Leader,
                6..=8 => Target::Replica(rng.below(n as u64) as usize),
                _ => Target::Node(rng.below(n as u64) as usize),
            };
            let max_ms = chaos.saturating_sub(at).as_millis() as u64;
            let mut dur = rng.ms(1_000, (3 * ttl * 1000).min(max_ms).max(1_000));
            let weights: &[(u64, u8)] = &[
                (15, 0),
                (12, 1),
                (15, 2),
                (12, 3),
                (12, 4),
                (10, 5),
                (8, 6),
                (8, 7),
                (if unsafe_faults { 15 } else { 0 }, 8),
            ];
            let total: u64 = weights.iter().map(|w| w.0).sum();
            let mut pick = rng.below(total);
            let mut which = 0;
            for (w, k) in weights {
                if pick < *w {
                    which = *k;
                    break;
                }
                pick -= w;
            }
            let kind = match which {
                0 => FaultKind::DcsPartition {
                    target: target(rng),
                    hang: rng.chance(50),
                },
                1 => {
                    let a = target(rng);
                    let mut b = Target::Replica(rng.below(n as u64) as usize);
                    if a == b {
                        b = Target::Leader;
                    }
                    FaultKind::PeerPartition { a, b }
                }
                2 => FaultKind::Isolate {
                    target: target(rng),
                },
                3 => {
                    // A supervisor restarts a crashed agent within seconds; an agent that
                    // stays down past its lease (the fence guard must fence) only with
                    // unsafe_faults.
                    dur = if unsafe_faults && rng.chance(30) {
                        rng.ms(ttl * 1000, 3 * ttl * 1000)
                    } else {
                        rng.ms(200, (ttl * 1000 / 4).min(5_000))
                    };
                    FaultKind::AgentCrash {
                        target: target(rng),
                    }
                }
                4 => {
                    dur = Duration::ZERO;
                    FaultKind::PgCrash {
                        target: target(rng),
                    }
                }
                5 => {
                    let lo = rng.range(50, 800);
                    let hi = lo + rng.range(0, 2_000);
                    let target = if rng.chance(50) {
                        None
                    } else {
                        Some(target(rng))
                    };
                    FaultKind::SlowDcs {
                        target,
                        extra: (lo, hi),
                    }
                }
                6 => FaultKind::SlowPg {
                    target: target(rng),
                },
                7 => {
                    dur = rng.ms(500, 4_000);
                    FaultKind::EtcdElection
                }
                _ => {
                    dur = rng.ms(ttl * 1000 + 1_000, 3 * ttl * 1000);
                    FaultKind::AgentPause {
                        target: target(rng),
                    }
                }
            };
            let dur = dur.min(chaos.saturating_sub(at));
            faults.push(Fault { at, dur, kind });
        }
        faults.sort_by_key(|f| f.at);
        out.rounds.push(Round { chaos, faults });
    }
    out
}

/// A fault with its targets resolved to members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Active {
    DcsCut {
        node: usize,
        hang: bool,
    },
    PeerCut {
        a: usize,
        b: usize,
    },
    Isolate {
        node: usize,
    },
    AgentDown {
        node: usize,
    },
    SlowDcs {
        node: Option<usize>,
        extra: (u64, u64),
    },
    SlowPg {
        node: usize,
    },
    AgentPause {
        node: usize,
    },
}

/// The faults in force; the network and the agents follow it.
#[derive(Default)]
pub(crate) struct Faults {
    active: Vec<(usize, Active)>,
    next_id: usize,
}

fn resolve(w: &World, t: Target) -> usize {
    let n = w.params.names.len();
    let leader = w.leader();
    match t {
        Target::Leader => leader.unwrap_or(0),
        Target::Node(k) => k % n,
        Target::Replica(k) => {
            let others: Vec<usize> = (0..n).filter(|&i| Some(i) != leader).collect();
            others[k % others.len()]
        }
    }
}

impl Faults {
    /// Start `kind`; returns the handle to end it with (`None` for instantaneous faults).
    pub(crate) fn start(
        &mut self,
        w: &Arc<World>,
        kind: &FaultKind,
        dur: Duration,
    ) -> Option<usize> {
        let active = match *kind {
            FaultKind::DcsPartition { target, hang } => Active::DcsCut {
                node: resolve(w, target),
                hang,
            },
            FaultKind::PeerPartition { a, b } => {
                let (a, b) = (resolve(w, a), resolve(w, b));
                if a == b {
                    w.log("FAULT", &format!("{kind}: same member, skipped"));
                    return None;
                }
                Active::PeerCut { a, b }
            }
            FaultKind::Isolate { target } => Active::Isolate {
                node: resolve(w, target),
            },
            FaultKind::AgentCrash { target } => {
                let node = resolve(w, target);
                if self
                    .active
                    .iter()
                    .any(|(_, a)| *a == Active::AgentDown { node })
                {
                    // One supervised restart at a time: overlapping kills would stretch the
                    // outage past what a supervisor allows (unsafe_faults covers long ones).
                    w.log(
                        "FAULT",
                        &format!("{kind}: {} already down, skipped", w.name(node)),
                    );
                    return None;
                }
                Active::AgentDown { node }
            }
            FaultKind::PgCrash { target } => {
                let node = resolve(w, target);
                w.log("FAULT", &format!("{kind} = {}", w.name(node)));
                pg::crash(w, node);
                return None;
            }
            FaultKind::SlowDcs { target, extra } => Active::SlowDcs {
                node: target.map(|t| resolve(w, t)),
                extra,
            },
            FaultKind::SlowPg { target } => Active::SlowPg {
                node: resolve(w, target),
            },
            FaultKind::EtcdElection => {
                w.log("FAULT", &format!("{kind} for {:.1}s", dur.as_secs_f64()));
                tokio::spawn(election(w.clone(), dur));
                return None;
            }
            FaultKind::AgentPause { target } => Active::AgentPause {
                node: resolve(w, target),
            },
        };
        w.log("FAULT", &format!("{kind}: {}", describe(w, &active)));
        let id = self.next_id;
        self.next_id += 1;
        self.active.push((id, active));
        self.apply(w);
        Some(id)
    }

    pub(crate) fn end(&mut self, w: &Arc<World>, id: usize) {
        if let Some(pos) = self.active.iter().position(|(i, _)| *i == id) {
            let (_, a) = self.active.remove(pos);
            w.log("HEAL", &describe(w, &a));
            self.apply(w);
        }
    }

    pub(crate) fn heal_all(&mut self, w: &Arc<World>) {
        if !self.active.is_empty() {
            w.log("HEAL", "everything");
        }
        self.active.clear();
        self.apply(w);
    }

    /// Make the network and the agent processes match the active set.
    fn apply(&self, w: &Arc<World>) {
        let n = w.params.names.len();
        let mut down = BTreeSet::new();
        let mut paused = BTreeSet::new();
        {
            let mut net = w.net();
            net.dcs = vec![DcsLink::Up; n];
            net.dcs_slow = vec![None; n];
            net.cuts.clear();
            net.pg_slow = vec![false; n];
            for (_, a) in &self.active {
                match *a {
                    Active::DcsCut { node, hang } => {
                        let link = if hang {
                            DcsLink::Blackhole
                        } else {
                            DcsLink::Refused
                        };
                        if net.dcs[node] != DcsLink::Blackhole {
                            net.dcs[node] = link;
                        }
                    }
                    Active::PeerCut { a, b } => {
                        net.cuts.insert((a.min(b), a.max(b)));
                    }
                    Active::Isolate { node } => {
                        net.dcs[node] = DcsLink::Blackhole;
                        for other in (0..n).filter(|&o| o != node) {
                            net.cuts.insert((node.min(other), node.max(other)));
                        }
                    }
                    Active::SlowDcs { node, extra } => {
                        let nodes: Vec<usize> = node.map_or_else(|| (0..n).collect(), |i| vec![i]);
                        for i in nodes {
                            let cur = net.dcs_slow[i].unwrap_or((0, 0));
                            net.dcs_slow[i] = Some((cur.0.max(extra.0), cur.1.max(extra.1)));
                        }
                    }
                    Active::SlowPg { node } => net.pg_slow[node] = true,
                    Active::AgentDown { node } => {
                        down.insert(node);
                    }
                    Active::AgentPause { node } => {
                        paused.insert(node);
                    }
                }
            }
        }
        for i in 0..n {
            let (running, is_paused) = {
                let agents = w.agents();
                (agents[i].running, agents[i].paused())
            };
            if down.contains(&i) {
                if running {
                    agent::crash(w, i);
                }
                continue;
            }
            if !running {
                agent::start(w, i);
            }
            match (paused.contains(&i), is_paused) {
                (true, false) => agent::pause(w, i),
                (false, true) => agent::resume(w, i),
                _ => {}
            }
        }
    }
}

fn describe(w: &World, a: &Active) -> String {
    let name = |i: usize| w.name(i).to_owned();
    match *a {
        Active::DcsCut { node, hang } => format!(
            "{} cut from the DCS ({})",
            name(node),
            if hang { "silence" } else { "refused" }
        ),
        Active::PeerCut { a, b } => format!("{} cut from {}", name(a), name(b)),
        Active::Isolate { node } => format!("{} isolated", name(node)),
        Active::AgentDown { node } => format!("agent of {} down", name(node)),
        Active::SlowDcs { node, extra } => format!(
            "slow DCS (+{}..{} ms) for {}",
            extra.0,
            extra.1,
            node.map_or_else(|| "everyone".to_owned(), name)
        ),
        Active::SlowPg { node } => format!("slow postgres on {}", name(node)),
        Active::AgentPause { node } => format!("agent of {} paused", name(node)),
    }
}

/// Keep every lease from expiring: refresh them all to their full TTL now.
async fn refresh_leases(w: &World) {
    let max = w.net().max_lease;
    for id in 1..=max {
        let _ = baton_ports::Dcs::keepalive(&w.store, id).await;
    }
}

/// etcd's leader change: nothing is served and no lease expires while it lasts (followers
/// never expire leases); the new leader then gives every lease its full TTL plus one
/// election timeout (`Promote(extend)`), which we model by refreshing them once more a second
/// after the election.
async fn election(w: Arc<World>, dur: Duration) {
    if w.net().election {
        return;
    }
    w.net().election = true;
    let end = tokio::time::Instant::now() + dur;
    loop {
        refresh_leases(&w).await;
        if tokio::time::Instant::now() >= end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100).min(end - tokio::time::Instant::now())).await;
    }
    refresh_leases(&w).await;
    w.net().election = false;
    w.election_over.notify_waiters();
    w.log(
        "HEAL",
        "etcd has a new leader; every lease restarted its TTL",
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    refresh_leases(&w).await;
}
