//! The floating IP with real hosts: three nodes, each in its own network namespace on a bridge
//! (etcd reached over it), and a client namespace that only ever uses the floating address.
//!
//! One scenario, in order: the address sits on the leader and a client reaches the primary
//! through it; the primary's host dies and the client reaches the new primary through the
//! address (the time from promotion is printed); the leader is cut from etcd only and drops the
//! address before its lease can expire, and the next leader takes it; a planned switchover
//! moves it to the candidate. Throughout, an ARP probe from the client namespace asks who owns
//! the address, and no sample may show two owners.
//!
//! A second scenario: the leader's agent alone is SIGKILLed, later another leader's agent is
//! SIGSTOPped (host, link and fence guard stay up); the fence guard must take the address off
//! that host, so that no 100 ms sample of the hosts' interfaces ever shows two holders, and the
//! new primary alone holds it once it has it.
//!
//! Skips (printing a `SKIP` line) when not root or when `ip`, `iptables`, `nsenter` or
//! `setpriv` is missing, unless `PGBATON_REQUIRE_INTEGRATION=1`.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use baton_integration_tests::{
    Check, Cluster, ClusterSpec, HOST_INTERFACE, NETNS_PREFIX_LEN, PgTarget, Tools, format_mac,
    pid_alive, run_in, scaled, simple_query, spawn_in, wait_for,
};
use futures::future::LocalBoxFuture;
use serde_json::json;

/// Last octet of the floating IP in the test subnet.
const VIP_OCTET: u8 = 100;
/// How long one ARP probe waits for answers.
const ARP_WAIT: Duration = Duration::from_millis(200);
/// How often the failover and switchover measurements poll.
const TICK: Duration = Duration::from_millis(50);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floating_ip_follows_the_primary_across_failover_partition_and_switchover()
-> anyhow::Result<()> {
    let test = "floating_ip_follows_the_primary_across_failover_partition_and_switchover";
    let Some(tools) = Tools::for_netns_test(test)? else {
        return Ok(());
    };
    let VipCluster {
        mut cluster,
        ttl,
        vip,
        client_ns,
        via_vip,
        macs,
    } = VipCluster::start(&tools).await?;
    let arp = ArpWatch::start(&client_ns, vip, macs);

    // a. Healthy: the address is on the leader only, and the client reaches the primary.
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await
        .context("initial bootstrap")?;
    let first = healthy.leader.clone();
    eprintln!("healthy: leader {first}, replicas {:?}", healthy.replicas);
    wait_vip_only_on(&cluster, vip, &first, scaled(Duration::from_secs(30))).await?;
    let reached = client_query(&client_ns, &via_vip).await?;
    ensure!(
        reached == (false, first.clone()),
        "through the floating IP the client reached {reached:?}, want the primary {first}"
    );
    arp.wait_owner(&first, scaled(Duration::from_secs(10)))
        .await
        .context("the ARP probe never saw the leader own the floating IP")?;
    eprintln!("a. {vip} is on {first}; the client reaches it through {vip}");

    // c. The primary's host dies; the client reaches the new primary through the address.
    let survivors: Vec<String> = healthy.replicas.clone();
    let killed_at = Instant::now();
    cluster.kill_host(&first)?;
    let deadline = scaled(ttl + Duration::from_secs(40));
    let (promoted, reached) = tokio::join!(
        watch_promotion(&cluster, &survivors, deadline),
        client_reaches_primary(&client_ns, &via_vip, &first, deadline),
    );
    let (promoted_at, promoted_name) = promoted.context("no survivor was promoted")?;
    let (reached_at, reached_name) =
        reached.context("the client never reached a new primary through the floating IP")?;
    let second = cluster
        .wait_new_leader(&first, scaled(Duration::from_secs(30)))
        .await?;
    ensure!(
        promoted_name == second && reached_name == second,
        "promoted {promoted_name}, client reached {reached_name}, leader key {second}"
    );
    let after_promotion = signed_ms(reached_at, promoted_at);
    eprintln!(
        "c. FIGURE vip-after-failover: {second} promoted {:.2}s after the kill; the client \
         reached it through {vip} {after_promotion:+} ms after its promotion",
        promoted_at.duration_since(killed_at).as_secs_f64(),
    );
    ensure!(
        after_promotion < scaled(Duration::from_secs(10)).as_millis() as i64,
        "the client reached the new primary through the floating IP only {after_promotion} ms \
         after its promotion"
    );
    wait_vip_only_on(&cluster, vip, &second, scaled(Duration::from_secs(10))).await?;
    arp.wait_owner(&second, scaled(Duration::from_secs(10)))
        .await?;

    // d. The old host boots and rejoins. Then the leader is cut from etcd only: it drops the
    //    address before its lease can expire, and another node takes it.
    cluster.start_agent(&first)?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await
        .context("the old primary's host rejoins")?;
    let leader = healthy.leader.clone();
    wait_vip_only_on(&cluster, vip, &leader, scaled(Duration::from_secs(30))).await?;
    let key = cluster
        .etcd()
        .get(&cluster.key("leader"))
        .await?
        .context("no leader key")?;
    ensure!(key.value == leader, "leader key {key:?}, want {leader}");

    cluster.cut_from_etcd(&leader)?;
    let cut_at = Instant::now();
    // The lease cannot be renewed any more: it expires no earlier than `remaining` after the
    // moment this request is sent (etcd truncates the remaining TTL to whole seconds).
    let asked_at = Instant::now();
    let (remaining, granted) = cluster.etcd().client().lease_ttl(key.lease).await?;
    let expires_earliest = asked_at + Duration::from_secs(remaining.max(0) as u64);
    let (dropped_at, key_gone_at) = watch_partitioned_leader(
        &cluster,
        vip,
        &leader,
        cut_at,
        scaled(ttl + Duration::from_secs(30)),
    )
    .await?;
    let secs = |t: Instant| t.duration_since(cut_at).as_secs_f64();
    eprintln!(
        "d. FIGURE vip-drop-on-partition: {leader} cut from etcd; it dropped {vip} {:.2}s after \
         the cut; its lease (granted {granted}s, {remaining}s left at the cut) expires no \
         earlier than {:.2}s; the leader key was seen gone at {:.2}s; ttl {}s",
        secs(dropped_at),
        secs(expires_earliest),
        secs(key_gone_at),
        ttl.as_secs()
    );
    ensure!(
        dropped_at < expires_earliest,
        "{leader} still held {vip} {:.2}s after the cut, when its lease could already have \
         expired ({:.2}s)",
        secs(dropped_at),
        secs(expires_earliest)
    );
    ensure!(
        dropped_at.duration_since(cut_at) < ttl,
        "{leader} still held {vip} a ttl after the cut"
    );
    let third = cluster
        .wait_new_leader(&leader, scaled(ttl + Duration::from_secs(30)))
        .await
        .context("a new leader after the partition")?;
    wait_vip_only_on(&cluster, vip, &third, scaled(Duration::from_secs(10))).await?;
    let reached = client_query(&client_ns, &via_vip).await?;
    ensure!(
        reached == (false, third.clone()),
        "the client reached {reached:?} through the floating IP, want the primary {third}"
    );
    arp.wait_owner(&third, scaled(Duration::from_secs(10)))
        .await?;
    eprintln!(
        "d. {third} took {vip} {:.2}s after the cut",
        secs(Instant::now())
    );
    cluster.heal(&leader)?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await
        .context("the partitioned leader rejoins after healing")?;
    ensure!(
        healthy.leader == third,
        "leader {} after healing",
        healthy.leader
    );
    wait_vip_only_on(&cluster, vip, &third, scaled(Duration::from_secs(30))).await?;

    // e. A planned switchover to a named candidate: the address follows.
    let candidate = healthy.replicas[0].clone();
    let started = Instant::now();
    cluster.cli_switchover(&third, &candidate, None).await?;
    let (reached_at, reached_name) = client_reaches_primary(
        &client_ns,
        &via_vip,
        &third,
        scaled(Duration::from_secs(60)),
    )
    .await?;
    ensure!(
        reached_name == candidate,
        "after the switchover to {candidate} the client reached {reached_name}"
    );
    eprintln!(
        "e. FIGURE vip-after-switchover: the client reached {candidate} through {vip} {:.2}s \
         after the switchover was requested",
        reached_at.duration_since(started).as_secs_f64()
    );
    wait_vip_only_on(&cluster, vip, &candidate, scaled(Duration::from_secs(30))).await?;
    arp.wait_owner(&candidate, scaled(Duration::from_secs(10)))
        .await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(120)))
        .await?;
    ensure!(healthy.leader == candidate, "leader {}", healthy.leader);

    // b. At most one owner at every ARP sample, all along.
    let report = arp.stop()?;
    eprintln!(
        "b. ARP probe: {} samples, owners over time: {}",
        report.samples,
        report.history.join(" -> ")
    );
    ensure!(
        report.samples >= 50,
        "the ARP probe took only {} samples",
        report.samples
    );
    ensure!(
        report.duplicates.is_empty(),
        "two owners of {vip} at once: {:?}",
        report.duplicates
    );
    cluster.finish();
    Ok(())
}

/// SIGKILL, then SIGSTOP, of the leader's agent alone: its host, its link and its fence guard
/// stay up, and PostgreSQL runs on until the guard kills it at the fencing deadline. Without
/// the guard taking the floating IP too, the host keeps it and two hosts answer ARP for it
/// once the new primary adds it.
///
/// Asserted for each fault, over 100 ms samples of the three hosts' `eth0` from just before
/// the fault until the faulted agent is back as a replica: no sample shows two holders; every
/// sample before the new primary's first one shows the old leader or nobody; from the first
/// sample showing the new primary, every sample shows exactly the new primary (through the
/// resumed or restarted agent's rejoin too). The old host is seen without the address before
/// the new one is seen with it. A client in the client namespace reaches the new primary
/// through the address, and the old host's PostgreSQL was stopped. All along, no ARP probe
/// from the client namespace gets two answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_or_frozen_agent_leaves_the_floating_ip_to_the_new_primary_alone()
-> anyhow::Result<()> {
    let test = "a_killed_or_frozen_agent_leaves_the_floating_ip_to_the_new_primary_alone";
    let Some(tools) = Tools::for_netns_test(test)? else {
        return Ok(());
    };
    let mut setup = VipCluster::start(&tools).await?;
    let arp = ArpWatch::start(&setup.client_ns, setup.vip, setup.macs.clone());
    let healthy = setup
        .cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await
        .context("initial bootstrap")?;
    let mut leader = healthy.leader.clone();
    eprintln!("healthy: leader {leader}, replicas {:?}", healthy.replicas);
    for fault in [AgentFault::Kill, AgentFault::Freeze] {
        leader = agent_fault_leaves_the_address_to_the_new_primary(&mut setup, &leader, fault)
            .await
            .with_context(|| format!("{fault:?} of the leader's agent"))?;
    }
    let report = arp.stop()?;
    eprintln!(
        "ARP probe: {} samples, owners over time: {}",
        report.samples,
        report.history.join(" -> ")
    );
    ensure!(
        report.duplicates.is_empty(),
        "two ARP owners of {} at once: {:?}",
        setup.vip,
        report.duplicates
    );
    setup.cluster.finish();
    Ok(())
}

/// What happens to the leader's agent.
#[derive(Clone, Copy, Debug)]
enum AgentFault {
    /// SIGKILL of the agent alone; afterwards it is started again.
    Kill,
    /// SIGSTOP of the agent alone; afterwards SIGCONT.
    Freeze,
}

/// One fault of `old`'s agent (the leader, holding the address), up to the faulted agent's
/// return as a replica; see the test above for what is asserted. Returns the new leader.
async fn agent_fault_leaves_the_address_to_the_new_primary(
    setup: &mut VipCluster,
    old: &str,
    fault: AgentFault,
) -> anyhow::Result<String> {
    let vip = setup.vip;
    wait_vip_only_on(&setup.cluster, vip, old, scaled(Duration::from_secs(30))).await?;
    let guard_file = guard_pid_file(&setup.cluster, old);
    let guard_pid: i32 = std::fs::read_to_string(&guard_file)
        .with_context(|| format!("read {}", guard_file.display()))?
        .trim()
        .parse()
        .with_context(|| format!("the PID in {}", guard_file.display()))?;
    let owners = OwnerWatch::start(&setup.cluster, vip);
    owners
        .wait_samples(1, scaled(Duration::from_secs(10)))
        .await?;

    match fault {
        AgentFault::Kill => setup.cluster.kill_agent(old),
        AgentFault::Freeze => setup.cluster.pause_agent(old, true)?,
    }
    let fault_at = Instant::now();
    ensure!(
        pid_alive(guard_pid),
        "the fence guard of {old} (pid {guard_pid}) did not survive the {fault:?} of its agent"
    );
    eprintln!(
        "{fault:?}: the agent of {old} (leader, holding {vip}); its guard {guard_pid} runs on"
    );

    let survivors: Vec<String> = setup
        .cluster
        .names()
        .into_iter()
        .filter(|n| n != old)
        .collect();
    let deadline = scaled(setup.ttl + Duration::from_secs(40));
    let (promoted, reached) = tokio::join!(
        watch_promotion(&setup.cluster, &survivors, deadline),
        client_reaches_primary(&setup.client_ns, &setup.via_vip, old, deadline),
    );
    let (promoted_at, promoted_name) = promoted.context("no survivor was promoted")?;
    let reached = reached.context("the client never reached a new primary through the floating IP");
    // The samples so far say more than a timeout would.
    let summary = check_owners(
        &owners.samples()?,
        old,
        &promoted_name,
        fault_at,
        promoted_at,
    )?;
    let (reached_at, reached_name) = reached?;
    let new = setup
        .cluster
        .wait_new_leader(old, scaled(Duration::from_secs(30)))
        .await?;
    ensure!(
        promoted_name == new && reached_name == new,
        "promoted {promoted_name}, client reached {reached_name}, leader key {new}"
    );
    ensure!(
        setup.cluster.node(old).postmaster_pid().is_none(),
        "PostgreSQL still runs on {old} after {new} was promoted"
    );
    eprintln!(
        "{fault:?}: FIGURE vip-after-agent-{}: {new} promoted {:.2}s after the fault; the \
         client reached it through {vip} {:+} ms after its promotion; {summary}",
        match fault {
            AgentFault::Kill => "kill",
            AgentFault::Freeze => "freeze",
        },
        promoted_at.duration_since(fault_at).as_secs_f64(),
        signed_ms(reached_at, promoted_at),
    );
    wait_vip_only_on(&setup.cluster, vip, &new, scaled(Duration::from_secs(10))).await?;

    // The faulted agent comes back and rejoins as a replica: the address stays on the new
    // primary alone throughout.
    match fault {
        AgentFault::Kill => setup.cluster.start_agent(old)?,
        AgentFault::Freeze => setup.cluster.pause_agent(old, false)?,
    }
    let healthy = setup
        .cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await
        .with_context(|| format!("{old} rejoins after the {fault:?}"))?;
    ensure!(
        healthy.leader == new && healthy.replicas.iter().any(|r| r == old),
        "after {old}'s return: {healthy:?}"
    );
    wait_vip_only_on(&setup.cluster, vip, &new, scaled(Duration::from_secs(10))).await?;
    let samples = owners.stop()?;
    let summary = check_owners(&samples, old, &new, fault_at, promoted_at)?;
    eprintln!("{fault:?}: {old} rejoined as a replica; {summary}");
    Ok(new)
}

/// `<data_dir>.pgbaton-guard` of node `name`: the PID of its fence guard.
fn guard_pid_file(cluster: &Cluster, name: &str) -> std::path::PathBuf {
    let data_dir = &cluster.node(name).config.data_dir;
    let mut file = data_dir.as_os_str().to_owned();
    file.push(".pgbaton-guard");
    file.into()
}

/// The checks of the address-holder samples (see
/// [`a_killed_or_frozen_agent_leaves_the_floating_ip_to_the_new_primary_alone`]): `Err` on
/// the first sample that breaks one, else a one-line summary with the figures.
fn check_owners(
    samples: &[OwnerSample],
    old: &str,
    new: &str,
    fault_at: Instant,
    promoted_at: Instant,
) -> anyhow::Result<String> {
    let since = |t: Instant| signed_ms(t, fault_at);
    let show = |s: &OwnerSample| format!("{:+} ms after the fault: {:?}", since(s.at), s.holders);
    ensure!(!samples.is_empty(), "no sample of the address holders");
    if let Some(two) = samples.iter().find(|s| s.holders.len() > 1) {
        bail!(
            "two hosts hold the floating IP at once, {}; owners over time: {}",
            show(two),
            history(samples)
        );
    }
    let first_new = samples
        .iter()
        .position(|s| s.holders == [new])
        .context("the new primary never held the floating IP")?;
    if let Some(odd) = samples[..first_new]
        .iter()
        .find(|s| !(s.holders.is_empty() || s.holders == [old]))
    {
        bail!(
            "before the new primary {new} held it, {}; owners over time: {}",
            show(odd),
            history(samples)
        );
    }
    if let Some(odd) = samples[first_new..].iter().find(|s| s.holders != [new]) {
        bail!(
            "once the new primary {new} held it, {}; owners over time: {}",
            show(odd),
            history(samples)
        );
    }
    let last_old = samples[..first_new]
        .iter()
        .rposition(|s| s.holders == [old])
        .context("the old leader was never seen holding the floating IP")?;
    ensure!(
        last_old + 1 < first_new,
        "no sample between the old leader's last ({}) and the new primary's first ({})",
        show(&samples[last_old]),
        show(&samples[first_new])
    );
    let widest = samples
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .max()
        .unwrap_or_default();
    Ok(format!(
        "{} samples of the hosts' interfaces (widest gap {} ms): last on {old} {:+} ms after \
         the fault, first on {new} {:+} ms after the fault ({:+} ms after its promotion), \
         never two",
        samples.len(),
        widest.as_millis(),
        since(samples[last_old].at),
        since(samples[first_new].at),
        signed_ms(samples[first_new].at, promoted_at),
    ))
}

/// `[node1] -> [] -> [node2]`: the holder sets in order, repeats removed.
fn history(samples: &[OwnerSample]) -> String {
    let mut out: Vec<&[String]> = Vec::new();
    for s in samples {
        if out.last() != Some(&s.holders.as_slice()) {
            out.push(&s.holders);
        }
    }
    out.iter()
        .map(|h| format!("{h:?}"))
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// One look at every host's `eth0`: which hold the floating IP.
#[derive(Clone, Debug)]
struct OwnerSample {
    at: Instant,
    holders: Vec<String>,
}

/// A thread that, every [`OWNER_SAMPLE`], lists the hosts whose `eth0` holds the floating IP
/// (`ip -n <host> addr`, one host after the other: a sample takes a few milliseconds).
struct OwnerWatch {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Result<Vec<OwnerSample>, String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often [`OwnerWatch`] samples.
const OWNER_SAMPLE: Duration = Duration::from_millis(100);

impl OwnerWatch {
    fn start(cluster: &Cluster, vip: Ipv4Addr) -> OwnerWatch {
        let tools = cluster.network().tools().clone();
        let hosts: Vec<(String, String)> = cluster
            .network()
            .hosts()
            .iter()
            .map(|h| (h.name.clone(), h.netns.clone()))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Ok(Vec::new())));
        let thread = {
            let (stop, samples) = (stop.clone(), samples.clone());
            std::thread::spawn(move || {
                let want = vip.to_string();
                let mut next = Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    let at = Instant::now();
                    let mut holders = Vec::new();
                    for (name, netns) in &hosts {
                        match tools.addresses_in(netns) {
                            Ok(addresses) => {
                                if addresses
                                    .iter()
                                    .any(|a| a.split('/').next() == Some(want.as_str()))
                                {
                                    holders.push(name.clone());
                                }
                            }
                            Err(e) => {
                                *samples.lock().unwrap_or_else(|e| e.into_inner()) =
                                    Err(format!("{e:#}"));
                                return;
                            }
                        }
                    }
                    if let Ok(list) = samples.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                        list.push(OwnerSample { at, holders });
                    }
                    // The sampling period, not a synchronisation.
                    next += OWNER_SAMPLE;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now;
                    }
                }
            })
        };
        OwnerWatch {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// The samples so far.
    fn samples(&self) -> anyhow::Result<Vec<OwnerSample>> {
        match &*self.samples.lock().unwrap_or_else(|e| e.into_inner()) {
            Ok(list) => Ok(list.clone()),
            Err(e) => bail!("sampling the address holders failed: {e}"),
        }
    }

    async fn wait_samples(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        wait_for(
            &format!("{n} samples of the address holders"),
            timeout,
            || async {
                let len = self.samples()?.len();
                Ok(if len >= n {
                    Check::Done(())
                } else {
                    Check::not_yet(format!("{len} samples"))
                })
            },
        )
        .await
    }

    /// Stop sampling; every sample taken.
    fn stop(mut self) -> anyhow::Result<Vec<OwnerSample>> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("the address sampler panicked"))?;
        }
        self.samples()
    }
}

impl Drop for OwnerWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Three hosts in namespaces with the floating IP configured, agents started.
struct VipCluster {
    cluster: Cluster,
    ttl: Duration,
    vip: Ipv4Addr,
    client_ns: String,
    /// Any node's PostgreSQL, through the floating IP.
    via_vip: PgTarget,
    macs: Vec<(String, [u8; 6])>,
}

impl VipCluster {
    async fn start(tools: &Tools) -> anyhow::Result<VipCluster> {
        let mut spec = ClusterSpec::new(3);
        spec.netns = true;
        spec.haproxy = None;
        // The address depends on the subnet the network gets: configure it before the agents
        // start.
        spec.start_agents = false;
        let ttl = spec.timing.ttl();
        let mut cluster = Cluster::start(tools, spec).await?;
        let vip = cluster.network().address(VIP_OCTET);
        let vip_config = json!({"vip": {
            "address": format!("{vip}/{NETNS_PREFIX_LEN}"),
            "interface": HOST_INTERFACE,
            "arp_count": 3,
            "arp_interval": 1,
            "reconcile_interval": 5,
        }});
        for name in cluster.names() {
            cluster.update_config(&name, &vip_config)?;
            cluster.start_agent(&name)?;
        }
        let client_ns = cluster.network().client().netns.clone();
        let via_vip = PgTarget {
            host: vip.to_string(),
            ..cluster.nodes()[0].pg()
        };
        let macs: Vec<(String, [u8; 6])> = cluster
            .names()
            .into_iter()
            .map(|n| Ok((n.clone(), cluster.network().mac(&n)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(VipCluster {
            cluster,
            ttl,
            vip,
            client_ns,
            via_vip,
            macs,
        })
    }
}

/// Wait until `name` (a running host) holds `vip` on its interface and no other host does.
async fn wait_vip_only_on(
    cluster: &Cluster,
    vip: Ipv4Addr,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_for(&format!("{vip} on {name} only"), timeout, || async {
        cluster.check_agents_alive()?;
        let holders = cluster.network().holders(vip)?;
        Ok(if holders == [name] {
            Check::Done(())
        } else {
            Check::not_yet(format!("held by {holders:?}"))
        })
    })
    .await
}

/// From the client namespace, through the floating IP: `(pg_is_in_recovery(), node name)`.
async fn client_query(client_ns: &str, via: &PgTarget) -> anyhow::Result<(bool, String)> {
    let via = via.clone();
    run_in(client_ns, move || async move { primary_behind(&via).await }).await?
}

/// One connection to `via`: whether the server is in recovery, and which node it is (the
/// directory above its data directory is named after the node).
async fn primary_behind(via: &PgTarget) -> anyhow::Result<(bool, String)> {
    let client = via.connect_with_timeout(Duration::from_secs(1)).await?;
    let rows = simple_query(
        &client,
        "SELECT pg_is_in_recovery()::text, current_setting('data_directory')",
    )
    .await?;
    match rows.as_slice() {
        [row] if row.len() == 2 => {
            let in_recovery = row[0].as_deref() == Some("true");
            let dir = row[1].clone().unwrap_or_default();
            let node = std::path::Path::new(&dir)
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or(dir);
            Ok((in_recovery, node))
        }
        _ => bail!("unexpected reply {rows:?}"),
    }
}

/// From the client namespace, a connection attempt through the floating IP every [`TICK`]
/// (overlapping, each with a 1 s limit) until one reaches a primary other than `not`: when
/// that attempt finished, and the node.
async fn client_reaches_primary(
    client_ns: &str,
    via: &PgTarget,
    not: &str,
    timeout: Duration,
) -> anyhow::Result<(Instant, String)> {
    let (via, not) = (via.clone(), not.to_owned());
    run_in(client_ns, move || async move {
        let end = Instant::now() + timeout;
        let mut attempts = tokio::task::JoinSet::new();
        let mut last = String::from("no attempt finished");
        while Instant::now() < end {
            if attempts.len() < 40 {
                let via = via.clone();
                attempts.spawn(async move { (primary_behind(&via).await, Instant::now()) });
            }
            let tick = tokio::time::sleep(TICK);
            tokio::pin!(tick);
            loop {
                tokio::select! {
                    _ = &mut tick => break,
                    Some(done) = attempts.join_next() => match done {
                        Ok((Ok((false, node)), at)) if node != not => return Ok((at, node)),
                        Ok((Ok(other), _)) => last = format!("reached {other:?}"),
                        Ok((Err(e), _)) => last = format!("{e:#}"),
                        Err(e) => last = format!("{e}"),
                    },
                }
            }
        }
        bail!("timed out after {timeout:?}; last attempt: {last}")
    })
    .await?
}

/// Watch `candidates` until one answers as a primary: `pg_is_in_recovery()` on a connection
/// held open across the promotion and `GET /primary`, each polled every 20 ms on its own (so a
/// slow answer from one does not delay the others): when, and which.
async fn watch_promotion(
    cluster: &Cluster,
    candidates: &[String],
    timeout: Duration,
) -> anyhow::Result<(Instant, String)> {
    const POLL: Duration = Duration::from_millis(20);
    let mut watchers: Vec<LocalBoxFuture<'_, (Instant, String)>> = Vec::new();
    for name in candidates {
        let node = cluster.node(name);
        watchers.push(Box::pin(async move {
            let mut client = None;
            loop {
                if client.is_none() {
                    client = node
                        .pg()
                        .connect_with_timeout(Duration::from_millis(500))
                        .await
                        .ok();
                }
                if let Some(c) = &client {
                    match simple_query(c, "SELECT pg_is_in_recovery()::text").await {
                        Ok(rows) if rows == [vec![Some("false".to_owned())]] => {
                            return (Instant::now(), name.clone());
                        }
                        Ok(_) => {}
                        Err(_) => client = None,
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        }));
        watchers.push(Box::pin(async move {
            loop {
                if node.http_status("/primary").await.ok() == Some(200) {
                    return (Instant::now(), name.clone());
                }
                tokio::time::sleep(POLL).await;
            }
        }));
    }
    let (first, _, _) = tokio::time::timeout(timeout, futures::future::select_all(watchers))
        .await
        .with_context(|| format!("no promotion among {candidates:?} within {timeout:?}"))?;
    Ok(first)
}

/// After `leader` was cut from etcd: when its interface stopped holding `vip`, and when etcd's
/// leader key stopped naming it (its lease expired), both polled every 50 ms. Fails if the
/// address comes back on `leader` while the key is still its.
async fn watch_partitioned_leader(
    cluster: &Cluster,
    vip: Ipv4Addr,
    leader: &str,
    cut_at: Instant,
    timeout: Duration,
) -> anyhow::Result<(Instant, Instant)> {
    let key = cluster.key("leader");
    let (mut dropped_at, mut gone_at) = (None, None);
    while cut_at.elapsed() < timeout && (dropped_at.is_none() || gone_at.is_none()) {
        let holds = cluster.network().holds(leader, vip)?;
        let now = Instant::now();
        match (holds, dropped_at) {
            (false, None) => dropped_at = Some(now),
            (true, Some(_)) => bail!("{leader} added {vip} again while cut from etcd"),
            _ => {}
        }
        if gone_at.is_none()
            && let Ok(kv) = cluster.etcd().get(&key).await
            && kv.is_none_or(|kv| kv.value != leader)
        {
            gone_at = Some(Instant::now());
        }
        tokio::time::sleep(TICK).await;
    }
    match (dropped_at, gone_at) {
        (Some(d), Some(g)) => Ok((d, g)),
        (None, _) => bail!("{leader} kept {vip} for {timeout:?} while cut from etcd"),
        (_, None) => bail!("the leader key still named {leader} {timeout:?} after the cut"),
    }
}

/// `a - b` in milliseconds, signed.
fn signed_ms(a: Instant, b: Instant) -> i64 {
    if a >= b {
        a.duration_since(b).as_millis() as i64
    } else {
        -(b.duration_since(a).as_millis() as i64)
    }
}

/// A thread in the client namespace that asks, one ARP probe after another, who owns the
/// floating IP (`baton_vip::probe::arp_owners`: one request, every distinct hardware address
/// that answers within [`ARP_WAIT`]).
struct ArpWatch {
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<ArpState>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    macs: Vec<(String, [u8; 6])>,
}

#[derive(Default)]
struct ArpState {
    samples: u64,
    /// The owners of the last sample.
    last: Vec<[u8; 6]>,
    /// Owner sets in order, consecutive repeats removed.
    history: Vec<Vec<[u8; 6]>>,
    /// Samples with more than one owner: (time since start, owners).
    duplicates: Vec<(Duration, Vec<[u8; 6]>)>,
    error: Option<String>,
}

struct ArpReport {
    samples: u64,
    history: Vec<String>,
    duplicates: Vec<(Duration, Vec<String>)>,
}

impl ArpWatch {
    fn start(client_ns: &str, vip: Ipv4Addr, macs: Vec<(String, [u8; 6])>) -> ArpWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(ArpState::default()));
        let thread = {
            let (stop, state) = (stop.clone(), state.clone());
            spawn_in(client_ns, move || {
                let started = Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    let result = baton_vip::probe::arp_owners(HOST_INTERFACE, vip, ARP_WAIT);
                    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                    match result {
                        Ok(owners) => {
                            s.samples += 1;
                            if owners.len() > 1 {
                                s.duplicates.push((started.elapsed(), owners.clone()));
                            }
                            if s.history.last() != Some(&owners) {
                                s.history.push(owners.clone());
                            }
                            s.last = owners;
                        }
                        Err(e) => {
                            s.error = Some(e.to_string());
                            return;
                        }
                    }
                }
            })
        };
        ArpWatch {
            stop,
            state,
            thread: Some(thread),
            macs,
        }
    }

    fn name(&self, mac: &[u8; 6]) -> String {
        self.macs
            .iter()
            .find(|(_, m)| m == mac)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| format_mac(mac))
    }

    /// Wait until a sample shows `name` as the only owner.
    async fn wait_owner(&self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        wait_for(
            &format!("the ARP probe to see {name} as the only owner"),
            timeout,
            || async {
                let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(e) = &s.error {
                    bail!("the ARP probe failed: {e}");
                }
                let owners: Vec<String> = s.last.iter().map(|m| self.name(m)).collect();
                Ok(if owners == [name] {
                    Check::Done(())
                } else {
                    Check::not_yet(format!("owners {owners:?} after {} samples", s.samples))
                })
            },
        )
        .await
    }

    /// Stop probing; what was seen.
    fn stop(mut self) -> anyhow::Result<ArpReport> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("the ARP probe thread panicked"))??;
        }
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = &s.error {
            bail!("the ARP probe failed: {e}");
        }
        let names =
            |owners: &[[u8; 6]]| -> Vec<String> { owners.iter().map(|m| self.name(m)).collect() };
        Ok(ArpReport {
            samples: s.samples,
            history: s
                .history
                .iter()
                .map(|o| format!("{:?}", names(o)))
                .collect(),
            duplicates: s.duplicates.iter().map(|(at, o)| (*at, names(o))).collect(),
        })
    }
}

impl Drop for ArpWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
