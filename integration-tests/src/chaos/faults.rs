//! The faults (safety-and-testing.md §7.6), each injected on the current primary: start,
//! hold, heal. Holding is the fault's definition, so it is the one place where the suite
//! sleeps; everything after the heal polls for conditions.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::{Profile, Rng};
use crate::cluster::Cluster;
use crate::tools::scaled;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// F1: `kill -9` the primary's agent; PostgreSQL runs on without it; the agent is
    /// restarted after the hold (as a supervisor would).
    KillAgent,
    /// F1b, the negative control of C5 (fencing off): kill the primary's fence guard first,
    /// then `kill -9` its agent, restart the agent after the hold. Nothing fences the old
    /// primary until the restarted agent does, so the sampler must see two primaries once a
    /// replica has taken over; if it does not, the checker is blind.
    KillAgentUnguarded,
    /// F2: `kill -9` the primary's postmaster and every backend; the agent stays up.
    KillPostmaster,
    /// F3: SIGSTOP the primary's agent for longer than ttl, then SIGCONT.
    PauseAgent,
    /// F4: drop every packet between the primary and etcd (both ways).
    CutFromEtcd,
    /// F5: drop every packet on the primary's interface: etcd, the other nodes, HAProxy and
    /// the clients all lose it.
    Isolate,
    /// F6: `kill -9` two of the three etcd members, restart them after the hold.
    EtcdQuorumLoss,
    /// F10: isolate the primary for 1–3 s, heal for 1–3 s, repeatedly.
    FlappingPartition,
    /// F14: a planned switchover to a random replica (one step of the switchover loop).
    Switchover,
    /// The primary loses etcd and the other nodes, but HAProxy and the clients still reach it,
    /// so it keeps taking commits until it fences. In asynchronous mode (the negative control)
    /// it acknowledges them and they are lost when a replica takes over; in quorum mode they
    /// wait for a standby that is gone and come back as warning-commits (indeterminate).
    PartitionFromCluster,
}

/// Who the fault hits.
#[derive(Clone, Debug)]
pub struct Target {
    pub primary: String,
    pub replicas: Vec<String>,
}

impl Fault {
    /// The faults of the RPO=0 profile, in the order they run. The last one keeps the clients
    /// on a primary that has lost its synchronous standbys: its commits come back with the
    /// "canceling wait for synchronous replication" warning (the client cancels), committed
    /// locally only; C1 holds only if those are classified `info`, never `ok`.
    pub const RPO0: [Fault; 9] = [
        Fault::KillAgent,
        Fault::KillPostmaster,
        Fault::PauseAgent,
        Fault::CutFromEtcd,
        Fault::Isolate,
        Fault::EtcdQuorumLoss,
        Fault::FlappingPartition,
        Fault::Switchover,
        Fault::PartitionFromCluster,
    ];

    /// Every fault, for `PGBATON_CHAOS_FAULTS` and the asynchronous profile.
    pub const ALL: [Fault; 10] = [
        Fault::KillAgentUnguarded,
        Fault::KillAgent,
        Fault::KillPostmaster,
        Fault::PauseAgent,
        Fault::CutFromEtcd,
        Fault::Isolate,
        Fault::EtcdQuorumLoss,
        Fault::FlappingPartition,
        Fault::Switchover,
        Fault::PartitionFromCluster,
    ];

    /// The fault named `name` (as [`Fault::name`] spells it).
    pub fn from_name(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillAgent => "kill-agent",
            Fault::KillAgentUnguarded => "kill-agent-unguarded",
            Fault::KillPostmaster => "kill-postmaster",
            Fault::PauseAgent => "sigstop-agent",
            Fault::CutFromEtcd => "cut-from-etcd",
            Fault::Isolate => "isolate",
            Fault::EtcdQuorumLoss => "etcd-quorum-loss",
            Fault::FlappingPartition => "flapping-partition",
            Fault::Switchover => "switchover",
            Fault::PartitionFromCluster => "partition-from-cluster",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Fault::KillAgent => "kill -9 the primary's agent; restart it after the hold",
            Fault::KillAgentUnguarded => {
                "kill the primary's fence guard, then kill -9 its agent; restart it after the hold"
            }
            Fault::KillPostmaster => "kill -9 the primary's postmaster and backends (agent alive)",
            Fault::PauseAgent => "SIGSTOP the primary's agent for the hold (> ttl), then SIGCONT",
            Fault::CutFromEtcd => "drop all traffic between the primary and etcd for the hold",
            Fault::Isolate => "drop all traffic on the primary's interface for the hold",
            Fault::EtcdQuorumLoss => "kill -9 two of three etcd members; restart after the hold",
            Fault::FlappingPartition => "isolate the primary 1-3 s, heal 1-3 s, repeatedly",
            Fault::Switchover => "planned switchover to a random replica",
            Fault::PartitionFromCluster => {
                "cut the primary from etcd and the other nodes (clients still reach it) for the hold"
            }
        }
    }

    /// Whether W2 (local commits) must never show two writable primaries. Always: a live agent
    /// fences before its lease can expire, and for a killed or frozen (SIGSTOP) agent its fence
    /// guard (a process of its own, `baton_agent::guard`) does. Kept as a per-fault rule so a
    /// fault a node cannot survive on its own (a frozen whole host) can be measured only.
    pub fn agent_can_fence(self) -> bool {
        !self.fencing_disabled()
    }

    /// The fault switches fencing off (the harness kills the fence guard): the negative
    /// control of C5, which must see two primaries.
    pub fn fencing_disabled(self) -> bool {
        self == Fault::KillAgentUnguarded
    }

    /// Inject the fault on `target`, hold it, heal it. Returns when the fault is over (the
    /// cluster may still be recovering).
    pub async fn inject(
        self,
        cluster: &mut Cluster,
        target: &Target,
        profile: &Profile,
        rng: &mut Rng,
    ) -> anyhow::Result<()> {
        let primary = target.primary.as_str();
        match self {
            Fault::KillAgent => {
                cluster.kill_agent(primary);
                tokio::time::sleep(profile.hold).await;
                cluster.start_agent(primary)?;
            }
            Fault::KillAgentUnguarded => {
                kill_fence_guard(cluster, primary)?;
                cluster.kill_agent(primary);
                tokio::time::sleep(profile.hold).await;
                cluster.start_agent(primary)?;
            }
            Fault::KillPostmaster => {
                cluster.kill_postgres(primary)?;
            }
            Fault::PauseAgent => {
                cluster.pause_agent(primary, true)?;
                tokio::time::sleep(profile.hold).await;
                cluster.pause_agent(primary, false)?;
            }
            Fault::CutFromEtcd => {
                cluster.cut_from_etcd(primary)?;
                tokio::time::sleep(profile.hold).await;
                cluster.heal(primary)?;
            }
            Fault::Isolate => {
                cluster.network_mut().isolate(primary)?;
                tokio::time::sleep(profile.hold).await;
                cluster.heal(primary)?;
            }
            Fault::EtcdQuorumLoss => etcd_quorum_loss(cluster, profile, rng).await?,
            Fault::FlappingPartition => flap(cluster, primary, profile, rng).await?,
            Fault::Switchover => {
                let to = &target.replicas[rng.index(target.replicas.len())];
                cluster.cli_switchover(primary, to, None).await?;
            }
            Fault::PartitionFromCluster => {
                let peers: Vec<_> = cluster
                    .network()
                    .hosts()
                    .iter()
                    .filter(|h| h.name != primary)
                    .map(|h| h.address)
                    .collect();
                for peer in peers {
                    cluster.network_mut().block(primary, peer)?;
                }
                cluster.cut_from_etcd(primary)?;
                tokio::time::sleep(profile.hold).await;
                cluster.heal(primary)?;
            }
        }
        Ok(())
    }
}

/// SIGKILL node `name`'s fence guard (named by `<data_dir>.pgbaton-guard`, checked against
/// its command line so a reused PID is never signalled). A test-only way to switch fencing
/// off: no configuration key of the agent can.
fn kill_fence_guard(cluster: &Cluster, name: &str) -> anyhow::Result<()> {
    let data_dir = &cluster.node(name).config.data_dir;
    let mut file_name = data_dir.file_name().unwrap_or_default().to_os_string();
    file_name.push(".pgbaton-guard");
    let file = data_dir.with_file_name(file_name);
    let pid: i32 = std::fs::read_to_string(&file)
        .with_context(|| format!("read {}", file.display()))?
        .trim()
        .parse()
        .with_context(|| format!("PID in {}", file.display()))?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    anyhow::ensure!(
        args.contains(&b"fence-guard".as_slice())
            && args.contains(&data_dir.as_os_str().as_encoded_bytes()),
        "{name}: PID {pid} from {} is not its fence guard",
        file.display()
    );
    let killed = crate::process::kill_tree(&[pid]);
    eprintln!("chaos: killed the fence guard of {name} (pid {pid}, {killed:?})");
    Ok(())
}

/// Kill two random etcd members, hold, restart them and wait until etcd answers again.
async fn etcd_quorum_loss(
    cluster: &mut Cluster,
    profile: &Profile,
    rng: &mut Rng,
) -> anyhow::Result<()> {
    let n = cluster.etcd().member_count();
    anyhow::ensure!(n == 3, "quorum loss needs three etcd members, not {n}");
    let spared = rng.index(n);
    let victims: Vec<usize> = (0..n).filter(|&i| i != spared).collect();
    for &i in &victims {
        cluster.etcd_mut().kill_member(i);
    }
    eprintln!("chaos: killed etcd members {victims:?} (0-based); member {spared} alone");
    tokio::time::sleep(profile.hold).await;
    for &i in &victims {
        cluster.etcd_mut().spawn_member(i)?;
    }
    cluster
        .etcd()
        .wait_ready(scaled(Duration::from_secs(60)))
        .await
        .context("etcd after the quorum loss")
}

/// Isolate and heal `primary` alternately, each phase 1–3 s, for `profile.flap_for`.
async fn flap(
    cluster: &mut Cluster,
    primary: &str,
    profile: &Profile,
    rng: &mut Rng,
) -> anyhow::Result<()> {
    let (lo, hi) = (Duration::from_secs(1), Duration::from_secs(3));
    let started = Instant::now();
    let mut flips = 0;
    while started.elapsed() < profile.flap_for {
        cluster.network_mut().isolate(primary)?;
        tokio::time::sleep(rng.duration(lo, hi)).await;
        cluster.heal(primary)?;
        tokio::time::sleep(rng.duration(lo, hi)).await;
        flips += 1;
    }
    eprintln!("chaos: {primary} flapped {flips} times");
    Ok(())
}
