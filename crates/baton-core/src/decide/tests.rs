//! Decision tests: a cluster described as text, the decision rendered as text.
//!
//! Fixture lines (`key: tokens`, tokens are `k=v` or bare words):
//! ```text
//! config: me=n2 ttl=10 loop_wait=2 lag=1048576 start_timeout=300 rewind=on slots=on wipe=off pause=off bootstrap=on nofailover=off priority=1
//! now: 100
//! lease: id=7 deadline=105            (or `lease: none`)
//! dcs: init=7001 leader=n1@5 optime=0/3000000 history=1 config=yes     (or `dcs: unreachable`)
//!     (leader=?@5: a leader key on lease 5 whose value does not decode; epoch=N its
//!      create_revision, default 1)
//!     (history=N: timelines 1..=N ended at N·0/1000000: TL1 at 0/1000000, TL2 at 0/2000000;
//!      creator=n1: the member whose promotion ended the last one)
//! member: n1 role=primary xlog=0/3000000 conn=10.0.0.1:5432 tl=2 nostream nofailover priority=2
//! pg: data=initialized sysid=7001 state=in-archive-recovery tl=1 ckpt=0/2000000
//! pg: running primary|replica|nosql tl=1 hist=2 flush=0/3000000 recv=.. replay=.. slots=n1,n3
//!     (hist: the newest timeline history file in pg_wal)
//! peer: n3 reachable|unreachable wal=0/2000000 tl=1 primary nofailover priority=2
//! memory: following=n1 down_since=90 rewind_failed=n1 nostream_since=70 epoch=1 handed_over
//! failure: rewind at=99
//! failover: leader=n1 candidate=n2 at=2026-11-22T05:00:00+00:00 rev=9
//! unix: 1795323590000          (wall clock, ms; default 1795323600000 = 2026-11-22T05:00:00Z)
//! config: sync=on|quorum strict=on count=2 maxlag=1000;  dcs: sync=n1:n2,n3@7 quorum=1
//!     (leader:standbys@revision; quorum= the `/sync` quorum; sync=?@7 a `/sync` that does
//!      not decode; sync=-:n2@7 one that names no leader)
//! pg: running primary ssn=2~(n2,n3) repl=n2:sync:0_3000000,n3:async:0_2000000:0_1000000
//!     commit=remote_apply
//!     (`~` stands for a space, `_` for `/` inside repl; repl rows are name:sync_state:flush
//!      with an optional :replay, which defaults to flush; commit= is synchronous_commit)
//! ```
//! Times are seconds on the monotonic clock.

use std::fmt::Write;
use std::time::Duration;

use expect_test::{Expect, expect};

use crate::decision::{
    Action, ActionFailure, ActionKind, HaConfig, LeaseState, Memory, Observation, PeerStatus,
    SyncConfig, SyncMode,
};
use crate::pg::{ClusterState, ControlData, DataDir, PgProcess, PgSql, ReplicationRow};
use crate::types::{Lsn, MemberName, Mono, Timeline};
use crate::view::{
    ClusterView, FailoverRequest, HistoryLine, LeaderKey, LeaderStatus, Member, SyncKey, SyncState,
    Tags, Versioned,
};

fn name(s: &str) -> MemberName {
    MemberName::new(s).expect("fixture names are non-empty")
}

fn secs(s: &str) -> Mono {
    Mono::from_millis(s.parse::<u64>().expect("seconds") * 1000)
}

fn lsn(s: &str) -> Lsn {
    s.parse().expect("fixture LSN")
}

struct Tokens<'a> {
    words: Vec<&'a str>,
}

impl<'a> Tokens<'a> {
    fn new(rest: &'a str) -> Tokens<'a> {
        Tokens {
            words: rest.split_whitespace().collect(),
        }
    }
    fn get(&self, key: &str) -> Option<&'a str> {
        self.words
            .iter()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }
    fn has(&self, word: &str) -> bool {
        self.words.contains(&word)
    }
    fn first(&self) -> &'a str {
        self.words.first().copied().unwrap_or("")
    }
    fn on(&self, key: &str, default: bool) -> bool {
        self.get(key).map_or(default, |v| v == "on")
    }
}

fn tags(t: &Tokens<'_>) -> Tags {
    Tags {
        nofailover: t.has("nofailover").then_some(true),
        failover_priority: t.get("priority").map(|p| p.parse().expect("priority")),
        nostream: t.has("nostream"),
        ..Tags::default()
    }
}

struct Fixture {
    memory: Memory,
    obs: Observation,
    config: HaConfig,
    now: Mono,
}

fn parse(fixture: &str) -> Fixture {
    let mut config = HaConfig {
        me: name("n2"),
        ttl: Duration::from_secs(10),
        loop_wait: Duration::from_secs(2),
        retry_timeout: Duration::from_secs(3),
        maximum_lag_on_failover: 1_048_576,
        primary_start_timeout: Duration::from_secs(300),
        use_pg_rewind: true,
        use_slots: true,
        unsupported_blocker: None,
        remove_data_directory_on_rewind_failure: false,
        pause: false,
        tags: Tags::default(),
        can_bootstrap: true,
        sync: SyncConfig::default(),
    };
    let mut obs = Observation {
        unix_ms: 1_795_323_600_000,
        ..Observation::default()
    };
    let mut memory = Memory::default();
    let mut now = Mono::from_millis(100_000);
    let mut view: Option<ClusterView> = Some(ClusterView::default());

    for line in fixture.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (key, rest) = line.split_once(':').expect("fixture line is `key: tokens`");
        let t = Tokens::new(rest);
        match key {
            "config" => {
                if let Some(me) = t.get("me") {
                    config.me = name(me);
                }
                let dur = |k: &str, d: Duration| {
                    t.get(k)
                        .map_or(d, |v| Duration::from_secs(v.parse().expect("secs")))
                };
                config.ttl = dur("ttl", config.ttl);
                config.loop_wait = dur("loop_wait", config.loop_wait);
                config.primary_start_timeout = dur("start_timeout", config.primary_start_timeout);
                if let Some(l) = t.get("lag") {
                    config.maximum_lag_on_failover = l.parse().expect("lag");
                }
                // Each `config:` line changes only what it names.
                config.use_pg_rewind = t.on("rewind", config.use_pg_rewind);
                config.use_slots = t.on("slots", config.use_slots);
                if let Some(key) = t.get("blocker") {
                    config.unsupported_blocker = Some(key.to_owned());
                }
                config.remove_data_directory_on_rewind_failure =
                    t.on("wipe", config.remove_data_directory_on_rewind_failure);
                config.pause = t.on("pause", config.pause);
                config.can_bootstrap = t.on("bootstrap", config.can_bootstrap);
                match t.get("sync") {
                    Some("on") => config.sync.mode = SyncMode::Priority,
                    Some("quorum") => config.sync.mode = SyncMode::Quorum,
                    Some("off") => config.sync.mode = SyncMode::Off,
                    Some(other) => panic!("sync={other}"),
                    None => {}
                }
                config.sync.strict = t.on("strict", config.sync.strict);
                if let Some(n) = t.get("count") {
                    config.sync.node_count = n.parse().expect("count");
                }
                if let Some(n) = t.get("maxlag") {
                    config.sync.max_lag_on_syncnode = Some(n.parse().expect("maxlag"));
                }
                let line_tags = tags(&t);
                if line_tags != Tags::default() {
                    config.tags = line_tags;
                }
            }
            "now" => now = secs(t.first()),
            "lease" => {
                obs.lease = if t.has("none") {
                    LeaseState::default()
                } else {
                    LeaseState {
                        id: t.get("id").map(|v| v.parse().expect("lease id")),
                        fence_deadline: t.get("deadline").map(secs),
                    }
                }
            }
            "dcs" => {
                if t.has("unreachable") {
                    view = None;
                    continue;
                }
                let v = view.get_or_insert_with(ClusterView::default);
                v.initialize = t.get("init").map(|s| {
                    if s == "\"\"" {
                        String::new()
                    } else {
                        s.to_owned()
                    }
                });
                if let Some(l) = t.get("leader") {
                    let (n, lease) = l.split_once('@').expect("leader=name@lease");
                    v.leader = Some(LeaderKey {
                        name: (n != "?").then(|| name(n)),
                        lease: lease.parse().expect("lease"),
                        create_revision: t.get("epoch").map_or(1, |e| e.parse().expect("epoch")),
                        mod_revision: 1,
                    });
                }
                v.status = t.get("optime").map(|o| LeaderStatus {
                    optime: lsn(o),
                    ..LeaderStatus::default()
                });
                if let Some(h) = t.get("history") {
                    let last: u32 = h.parse().expect("history timeline");
                    v.history = (1..=last)
                        .map(|tl| HistoryLine {
                            timeline: Timeline(tl),
                            lsn: Lsn(u64::from(tl) << 24),
                            reason: "no recovery target specified".into(),
                            timestamp: None,
                            new_leader: None,
                        })
                        .collect();
                }
                if let (Some(creator), Some(last)) = (t.get("creator"), v.history.last_mut()) {
                    last.new_leader = Some(creator.to_owned());
                }
                if let Some(sync) = t.get("sync") {
                    // sync=leader:a,b@rev
                    let (body, rev) = sync.split_once('@').unwrap_or((sync, "3"));
                    let (leader, standbys) = body.split_once(':').unwrap_or((body, ""));
                    let mod_revision = rev.parse().expect("sync rev");
                    v.sync = if leader == "?" {
                        SyncKey::Unreadable {
                            why: "invalid JSON".into(),
                            mod_revision,
                        }
                    } else {
                        SyncKey::Present(Versioned {
                            value: SyncState {
                                leader: (leader != "-").then(|| name(leader)),
                                sync_standby: standbys
                                    .split(',')
                                    .filter(|s| !s.is_empty())
                                    .map(name)
                                    .collect(),
                                quorum: t.get("quorum").map_or(0, |q| q.parse().expect("quorum")),
                            },
                            mod_revision,
                        })
                    };
                }
                if t.get("config") != Some("no") {
                    v.config = Some(Versioned {
                        value: "{}".into(),
                        mod_revision: 1,
                    });
                }
            }
            "member" => {
                let v = view.get_or_insert_with(ClusterView::default);
                v.members.push(Member {
                    name: name(t.first()),
                    role: t.get("role").unwrap_or("replica").to_owned(),
                    state: "running".into(),
                    conn_url: t.get("conn").map(|c| format!("postgres://{c}/postgres")),
                    xlog_location: t.get("xlog").map(lsn),
                    timeline: t.get("tl").map(|v| Timeline(v.parse().expect("tl"))),
                    tags: tags(&t),
                    ..Member::default()
                });
            }
            "pg" => {
                if let Some(data) = t.get("data") {
                    obs.pg.data_dir = match data {
                        "empty" => DataDir::Empty,
                        "unusable" => DataDir::Unusable("permission denied".into()),
                        _ => DataDir::Initialized(ControlData {
                            system_id: t.get("sysid").unwrap_or("7001").to_owned(),
                            state: ClusterState::parse(
                                &t.get("state")
                                    .unwrap_or("in-archive-recovery")
                                    .replace('-', " "),
                            )
                            .expect("controldata state"),
                            timeline: Timeline(t.get("tl").map_or(1, |v| v.parse().expect("tl"))),
                            checkpoint_lsn: t.get("ckpt").map_or(Lsn(0x200_0000), lsn),
                            ..ControlData::default()
                        }),
                    };
                }
                if t.has("running") {
                    obs.pg.process = PgProcess::Running { pid: 4242 };
                    if !t.has("nosql") {
                        obs.pg.sql = Some(PgSql {
                            server_version: 150_008,
                            in_recovery: !t.has("primary"),
                            timeline: Timeline(t.get("tl").map_or(1, |v| v.parse().expect("tl"))),
                            flush_lsn: t.get("flush").map(lsn),
                            received_lsn: t.get("recv").map(lsn),
                            replayed_lsn: t.get("replay").map(lsn),
                            streaming: t.has("streaming"),
                            newest_history: t
                                .get("hist")
                                .map(|v| Timeline(v.parse().expect("hist"))),
                            synchronous_standby_names: t.get("ssn").unwrap_or("").replace('~', " "),
                            synchronous_commit: t.get("commit").unwrap_or("on").to_owned(),
                            replication: t
                                .get("repl")
                                .map(|r| {
                                    r.split(',')
                                        .map(|row| {
                                            // name:sync_state:flush[:replay]
                                            let mut it = row.split(':');
                                            let app = it.next().expect("repl name");
                                            let state = it.next().expect("repl sync_state");
                                            let flush =
                                                it.next().map(|l| lsn(&l.replace('_', "/")));
                                            let replay = it
                                                .next()
                                                .map(|l| lsn(&l.replace('_', "/")))
                                                .or(flush);
                                            ReplicationRow {
                                                application_name: app.to_owned(),
                                                state: "streaming".into(),
                                                sync_state: state.to_owned(),
                                                write_lsn: flush,
                                                flush_lsn: flush,
                                                replay_lsn: replay,
                                                ..ReplicationRow::default()
                                            }
                                        })
                                        .collect()
                                })
                                .unwrap_or_default(),
                            slots: t
                                .get("slots")
                                .map(|s| s.split(',').map(str::to_owned).collect())
                                .unwrap_or_default(),
                            ..PgSql::default()
                        });
                    }
                }
            }
            "peer" => obs.peers.push(PeerStatus {
                name: name(t.first()),
                reachable: !t.has("unreachable"),
                is_primary: t.has("primary"),
                wal_position: t.get("wal").map(lsn),
                timeline: Some(Timeline(t.get("tl").map_or(1, |v| v.parse().expect("tl")))),
                tags: tags(&t),
                watchdog_failed: false,
            }),
            "memory" => {
                memory.following = t.get("following").map(name);
                memory.primary_down_since = t.get("down_since").map(secs);
                memory.rewind_failed_against = t.get("rewind_failed").map(name);
                memory.not_streaming_since = t.get("nostream_since").map(secs);
                memory.handed_over = t.has("handed_over");
                memory.leader_epoch = t.get("epoch").map(|e| e.parse().expect("epoch"));
            }
            "unix" => obs.unix_ms = t.first().parse().expect("unix ms"),
            "failover" => {
                let v = view.get_or_insert_with(ClusterView::default);
                v.failover = Some(Versioned {
                    value: FailoverRequest {
                        leader: t.get("leader").map(name),
                        candidate: t.get("candidate").map(name),
                        scheduled_at: t.get("at").map(str::to_owned),
                    },
                    mod_revision: t.get("rev").map_or(9, |r| r.parse().expect("rev")),
                });
            }
            "failure" => {
                obs.last_failure = Some(ActionFailure {
                    action: match t.first() {
                        "rewind" => ActionKind::Rewind,
                        "start" => ActionKind::StartPostgres,
                        other => panic!("unknown failure kind {other}"),
                    },
                    at: t.get("at").map_or(now, secs),
                    error: "exit status 1".into(),
                })
            }
            other => panic!("unknown fixture key {other}"),
        }
    }
    if let Some(v) = view.as_mut() {
        v.members.sort_by(|a, b| a.name.cmp(&b.name));
    }
    obs.dcs = view;
    Fixture {
        memory,
        obs,
        config,
        now,
    }
}

fn render(fixture: &str) -> String {
    let f = parse(fixture);
    let d = super::decide(&f.memory, &f.obs, &f.config, f.now);
    let mut out = String::new();
    writeln!(out, "reason: {}", d.reason).unwrap();
    if d.actions.is_empty() {
        writeln!(out, "actions: none").unwrap();
    } else {
        writeln!(out, "actions:").unwrap();
        for (i, a) in d.actions.iter().enumerate() {
            writeln!(out, "  {}. {a}", i + 1).unwrap();
        }
    }
    let m = &d.next_memory;
    let opt = |n: &Option<MemberName>| n.as_ref().map_or("-".to_owned(), |n| n.to_string());
    writeln!(
        out,
        "memory: leader={} following={} down_since={} rewind_failed={}",
        m.was_leader,
        opt(&m.following),
        m.primary_down_since
            .map_or("-".to_owned(), |t| t.to_string()),
        opt(&m.rewind_failed_against),
    )
    .unwrap();
    writeln!(
        out,
        "wake: +{}ms",
        d.wake_at.as_millis().saturating_sub(f.now.as_millis())
    )
    .unwrap();
    out
}

#[track_caller]
fn check(fixture: &str, expect: Expect) {
    expect.assert_eq(&render(fixture));
}

/// A healthy three-member cluster seen from n2 (a streaming replica of n1).
const CLUSTER: &str = "
    lease: id=7 deadline=105
    dcs: init=7001 leader=n1@5 optime=0/3000000
    member: n1 role=primary xlog=0/3000000 conn=10.0.0.1:5432
    member: n2 role=replica xlog=0/3000000 conn=10.0.0.2:5432
    member: n3 role=replica xlog=0/3000000 conn=10.0.0.3:5432
";

// ---- bootstrap -------------------------------------------------------------------------

#[test]
fn empty_cluster_races_for_initialize() {
    check(
        "lease: id=7 deadline=105
         dcs:
         pg: data=empty",
        expect![[r#"
            reason: trying to bootstrap a new cluster
            actions:
              1. race for initialize key
              2. bootstrap new cluster
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn bootstrap_needs_a_lease() {
    check(
        "lease: none
         dcs:
         pg: data=empty",
        expect![[r#"
            reason: waiting for a lease from the DCS
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +1000ms
        "#]],
    );
}

#[test]
fn nofailover_member_never_bootstraps() {
    check(
        "config: bootstrap=off
         lease: id=7 deadline=105
         dcs:
         pg: data=empty",
        expect![[r#"
            reason: not allowed to bootstrap a new cluster (nofailover or no bootstrap section); waiting for a leader
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +1000ms
        "#]],
    );
}

#[test]
fn another_member_is_bootstrapping() {
    check(
        r#"lease: id=7 deadline=105
           dcs: init=""
           pg: data=empty"#,
        expect![[r#"
            reason: waiting for leader to bootstrap
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +1000ms
        "#]],
    );
}

#[test]
fn empty_member_clones_from_the_leader_then_streams() {
    check(
        &format!("{CLUSTER}\n pg: data=empty"),
        expect![[r#"
            reason: creating replica from n1
            actions:
              1. clone from n1 (10.0.0.1:5432)
              2. start postgres as replica of n1 (10.0.0.1:5432)
            memory: leader=false following=n1 down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn unusable_data_directory_is_left_alone() {
    check(
        &format!("{CLUSTER}\n pg: data=unusable"),
        expect![[r#"
            reason: data directory is not usable, leaving it alone: permission denied
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +2000ms
        "#]],
    );
}

#[test]
fn data_from_another_cluster_is_not_used() {
    check(
        &format!("{CLUSTER}\n pg: data=initialized sysid=9999 state=shut-down-in-recovery"),
        expect![[r#"
            reason: system ID mismatch, node belongs to a different cluster: 9999 != 7001
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +2000ms
        "#]],
    );
}

// ---- steady state ----------------------------------------------------------------------

#[test]
fn leader_keeps_its_role_and_slots() {
    check(
        "config: me=n1
         lease: id=5 deadline=105
         dcs: init=7001 leader=n1@5 optime=0/3000000
         member: n1 role=primary conn=10.0.0.1:5432
         member: n2 role=replica conn=10.0.0.2:5432
         member: n3 role=replica conn=10.0.0.3:5432
         pg: data=initialized state=in-production
         pg: running primary tl=1 flush=0/3000000 slots=n2,n3",
        expect![[r#"
            reason: no action. I am the leader with the lock
            actions: none
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +2000ms
        "#]],
    );
}

#[test]
fn leader_creates_missing_slots_config_and_history() {
    check(
        "config: me=n1
         lease: id=5 deadline=105
         dcs: init=7001 leader=n1@5 optime=0/3000000 config=no
         member: n1 role=primary conn=10.0.0.1:5432
         member: n2 role=replica conn=10.0.0.2:5432
         member: n3 role=replica conn=10.0.0.3:5432 nostream
         pg: data=initialized state=in-production
         pg: running primary tl=2 flush=0/3000000",
        expect![[r#"
            reason: no action. I am the leader with the lock
            actions:
              1. write dynamic config
              2. update timeline history
              3. ensure slots [n2]
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn leader_without_use_slots_creates_and_drops_no_slot() {
    check(
        "config: me=n1 slots=off
         lease: id=5 deadline=105
         dcs: init=7001 leader=n1@5 optime=0/3000000
         member: n1 role=primary conn=10.0.0.1:5432
         member: n2 role=replica conn=10.0.0.2:5432
         member: n3 role=replica conn=10.0.0.3:5432
         pg: data=initialized state=in-production
         pg: running primary tl=1 flush=0/3000000 slots=n4",
        expect![[r#"
            reason: no action. I am the leader with the lock
            actions: none
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +2000ms
        "#]],
    );
}

#[test]
fn leader_wakes_up_at_its_fencing_deadline() {
    check(
        "config: me=n1 loop_wait=10
         lease: id=5 deadline=103
         dcs: init=7001 leader=n1@5
         member: n1 role=primary conn=10.0.0.1:5432
         pg: data=initialized state=in-production
         pg: running primary tl=1 flush=0/3000000",
        expect![[r#"
            reason: no action. I am the leader with the lock
            actions: none
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +3000ms
        "#]],
    );
}

#[test]
fn replica_points_postgres_at_the_leader_once() {
    let fixture = format!(
        "{CLUSTER}\n pg: data=initialized\n pg: running replica tl=1 recv=0/3000000 replay=0/3000000"
    );
    check(
        &fixture,
        expect![[r#"
            reason: no action. I am a secondary, and following a leader (n1)
            actions:
              1. follow n1 (10.0.0.1:5432)
            memory: leader=false following=n1 down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    check(
        &format!("{fixture}\n memory: following=n1"),
        expect![[r#"
            reason: no action. I am a secondary, and following a leader (n1)
            actions: none
            memory: leader=false following=n1 down_since=- rewind_failed=-
            wake: +2000ms
        "#]],
    );
}

#[test]
fn replica_keeps_streaming_when_the_dcs_is_unreachable() {
    check(
        "lease: none
         dcs: unreachable
         pg: data=initialized
         pg: running replica tl=1 recv=0/3000000 replay=0/3000000
         memory: following=n1",
        expect![[r#"
            reason: DCS is not accessible
            actions: none
            memory: leader=false following=n1 down_since=- rewind_failed=-
            wake: +2000ms
        "#]],
    );
}

// ---- fencing ---------------------------------------------------------------------------

#[test]
fn leader_past_its_fencing_deadline_stops_postgres_immediately() {
    check(
        "config: me=n1
         now: 106
         lease: id=5 deadline=105
         dcs: init=7001 leader=n1@5
         member: n1 role=primary conn=10.0.0.1:5432
         pg: data=initialized state=in-production
         pg: running primary tl=1 flush=0/3000000",
        expect![[r#"
            reason: demoted self because the leader lease could not be renewed before its fencing deadline
            actions:
              1. stop postgres (immediate)
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn leader_cut_off_from_the_dcs_runs_until_its_deadline_then_fences() {
    let base = "config: me=n1
         lease: id=5 deadline=105
         dcs: unreachable
         pg: data=initialized state=in-production
         pg: running primary tl=1 flush=0/3000000
    ";
    check(
        &format!("{base}\n now: 104"),
        expect![[r#"
            reason: DCS is not accessible
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +1000ms
        "#]],
    );
    check(
        &format!("{base}\n now: 105"),
        expect![[r#"
            reason: demoted self because DCS is not accessible and I was a leader
            actions:
              1. stop postgres (immediate)
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn primary_that_does_not_answer_sql_is_fenced_too() {
    check(
        "config: me=n1
         now: 106
         lease: id=5 deadline=105
         dcs: init=7001 leader=n1@5
         pg: data=initialized state=in-production
         pg: running nosql",
        expect![[r#"
            reason: demoted self because the leader lease could not be renewed before its fencing deadline
            actions:
              1. stop postgres (immediate)
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn primary_that_sees_another_leader_demotes() {
    check(
        "config: me=n1
         lease: id=9 deadline=105
         dcs: init=7001 leader=n2@7
         member: n2 role=primary conn=10.0.0.2:5432
         pg: data=initialized state=in-production
         pg: running primary tl=1 flush=0/3000000",
        expect![[r#"
            reason: demoting self because I do not have the lock and I was a leader
            actions:
              1. stop postgres (immediate)
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn primary_without_any_leader_key_is_fenced_before_racing() {
    check(
        "config: me=n1
         lease: id=9 deadline=105
         dcs: init=7001
         member: n1 role=primary conn=10.0.0.1:5432
         pg: data=initialized state=in-production
         pg: running primary tl=1 flush=0/3000000",
        expect![[r#"
            reason: demoting self because I do not have the lock and I was a leader
            actions:
              1. stop postgres (immediate)
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn restarted_agent_reattaches_its_own_leader_key() {
    check(
        "config: me=n1
         lease: id=9 deadline=105
         dcs: init=7001 leader=n1@5
         member: n1 role=primary conn=10.0.0.1:5432
         pg: data=initialized state=in-production
         pg: running primary tl=1 flush=0/3000000",
        expect![[r#"
            reason: postgres is running as primary and the leader key still holds my name: re-attaching it to my lease
            actions:
              1. re-attach leader key to our lease
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

// ---- failover --------------------------------------------------------------------------

/// n1's host died: its leader and member keys expired with its lease.
const LEADERLESS: &str = "
    lease: id=7 deadline=105
    dcs: init=7001 optime=0/3000000
    member: n2 role=replica xlog=0/3000000 conn=10.0.0.2:5432
    member: n3 role=replica xlog=0/3000000 conn=10.0.0.3:5432
    pg: data=initialized
";

#[test]
fn most_advanced_replica_takes_the_key_and_promotes() {
    check(
        &format!(
            "{LEADERLESS}
             pg: running replica tl=1 recv=0/3000100 replay=0/3000100
             peer: n3 reachable wal=0/3000000
             memory: following=n1"
        ),
        expect![[r#"
            reason: promoted self to leader by acquiring session lock
            actions:
              1. acquire leader key
              2. promote postgres
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn replica_behind_a_peer_lets_the_peer_win() {
    check(
        &format!(
            "{LEADERLESS}
             pg: running replica tl=1 recv=0/3000000 replay=0/3000000
             peer: n3 reachable wal=0/3000100"
        ),
        expect![[r#"
            reason: following a different leader because i am not the healthiest node: Wal position of n3 (0/3000100) is ahead of my wal position (0/3000000)
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +1000ms
        "#]],
    );
}

#[test]
fn a_peer_ahead_that_may_not_fail_over_is_ignored() {
    check(
        &format!(
            "{LEADERLESS}
             pg: running replica tl=1 recv=0/3000000 replay=0/3000000
             peer: n3 reachable wal=0/3000100 nofailover"
        ),
        expect![[r#"
            reason: promoted self to leader by acquiring session lock
            actions:
              1. acquire leader key
              2. promote postgres
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn unreachable_peers_are_not_compared() {
    check(
        &format!(
            "{LEADERLESS}
             pg: running replica tl=1 recv=0/3000000 replay=0/3000000
             peer: n3 unreachable wal=0/3000100"
        ),
        expect![[r#"
            reason: promoted self to leader by acquiring session lock
            actions:
              1. acquire leader key
              2. promote postgres
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn equal_positions_go_to_the_higher_failover_priority() {
    check(
        &format!(
            "{LEADERLESS}
             pg: running replica tl=1 recv=0/3000000 replay=0/3000000
             peer: n3 reachable wal=0/3000000 priority=5"
        ),
        expect![[r#"
            reason: following a different leader because i am not the healthiest node: n3 has equally tolerable WAL position and priority 5, while this node has priority 1
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +1000ms
        "#]],
    );
}

#[test]
fn replica_lagging_beyond_maximum_lag_on_failover_does_not_race() {
    check(
        &format!(
            "config: lag=1000
             {LEADERLESS}
             pg: running replica tl=1 recv=0/2000000 replay=0/2000000"
        ),
        expect![[r#"
            reason: following a different leader because i am not the healthiest node: my wal position is 16777216 bytes behind, more than maximum_lag_on_failover (1000)
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +1000ms
        "#]],
    );
}

#[test]
fn a_member_behind_the_clusters_timeline_does_not_race() {
    // The history says the cluster moved to timeline 2 (its primary is gone); promoting from
    // timeline 1 would create a second, different timeline 2.
    check(
        &format!(
            "{LEADERLESS}
             dcs: init=7001 optime=0/3000000 history=1
             pg: running replica tl=1 recv=0/3000000 replay=0/3000000"
        ),
        expect![[r#"
            reason: following a different leader because i am not the healthiest node: my timeline 1 is behind the cluster timeline 2
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +1000ms
        "#]],
    );
}

#[test]
fn a_standby_that_followed_the_switch_is_not_behind_whatever_its_checkpoint_says() {
    // Its WAL receiver is down (the leader is gone), so PostgreSQL reports the last
    // checkpoint's timeline 1; pg_wal holds 00000002.history: it followed the switch.
    check(
        &format!(
            "{LEADERLESS}
             dcs: init=7001 optime=0/3000000 history=1
             pg: running replica tl=1 hist=2 recv=0/3000000 replay=0/3000000"
        ),
        expect![[r#"
            reason: promoted self to leader by acquiring session lock
            actions:
              1. acquire leader key
              2. promote postgres
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn a_peer_behind_the_clusters_timeline_does_not_block_the_race() {
    // n3 has more WAL, but on timeline 1, which the cluster left: it cannot take over, and
    // waiting for it would leave the cluster without a leader.
    check(
        &format!(
            "{LEADERLESS}
             dcs: init=7001 optime=0/3000000 history=1
             pg: running replica tl=2 recv=0/3000000 replay=0/3000000
             peer: n3 reachable wal=0/3000100 tl=1"
        ),
        expect![[r#"
            reason: promoted self to leader by acquiring session lock
            actions:
              1. acquire leader key
              2. promote postgres
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn a_live_primary_among_the_peers_blocks_the_race() {
    check(
        &format!(
            "{LEADERLESS}
             pg: running replica tl=1 recv=0/3000000 replay=0/3000000
             peer: n3 reachable primary wal=0/3000000"
        ),
        expect![[r#"
            reason: following a different leader because i am not the healthiest node: Primary (n3) is still alive
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +1000ms
        "#]],
    );
}

#[test]
fn nofailover_member_never_races() {
    check(
        &format!(
            "config: nofailover
             {LEADERLESS}
             pg: running replica tl=1 recv=0/3000100 replay=0/3000100"
        ),
        expect![[r#"
            reason: following a different leader because I am not allowed to promote
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +1000ms
        "#]],
    );
}

#[test]
fn winner_promotes_after_taking_the_key() {
    check(
        "lease: id=7 deadline=105
         dcs: init=7001 leader=n2@7
         member: n2 role=replica conn=10.0.0.2:5432
         pg: data=initialized
         pg: running replica tl=1 recv=0/3000000 replay=0/3000000",
        expect![[r#"
            reason: promoted self to leader because I had the session lock
            actions:
              1. promote postgres
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn pause_blocks_the_race() {
    check(
        &format!(
            "config: pause=on
             {LEADERLESS}
             pg: running replica tl=1 recv=0/3000100 replay=0/3000100"
        ),
        expect![[r#"
            reason: PAUSE: not acting while paused, would have: promoted self to leader by acquiring session lock
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +1000ms
        "#]],
    );
}

// ---- PostgreSQL down -------------------------------------------------------------------

#[test]
fn crashed_primary_is_restarted_in_place_while_we_hold_the_key() {
    check(
        "config: me=n1 start_timeout=30
         lease: id=5 deadline=105
         dcs: init=7001 leader=n1@5
         member: n1 role=primary conn=10.0.0.1:5432
         pg: data=initialized state=in-production",
        expect![[r#"
            reason: starting primary after failure
            actions:
              1. start postgres as primary
            memory: leader=true following=- down_since=100.000s rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn crashed_primary_hands_over_after_primary_start_timeout() {
    check(
        "config: me=n1 start_timeout=30
         lease: id=5 deadline=105
         dcs: init=7001 leader=n1@5
         member: n1 role=primary conn=10.0.0.1:5432
         pg: data=initialized state=in-production ckpt=0/3000000
         memory: down_since=60",
        expect![[r#"
            reason: removed leader key after trying and failing to start postgres within primary_start_timeout
            actions:
              1. release leader key (last lsn 0/3000000)
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn stopped_replica_starts_following_the_leader() {
    check(
        &format!("{CLUSTER}\n pg: data=initialized state=shut-down-in-recovery"),
        expect![[r#"
            reason: starting as a secondary following n1
            actions:
              1. start postgres as replica of n1 (10.0.0.1:5432)
            memory: leader=false following=n1 down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn stopped_member_without_a_leader_starts_read_only() {
    check(
        &format!("{LEADERLESS}\n pg: data=initialized state=shut-down"),
        expect![[r#"
            reason: starting as a secondary; no leader to follow yet
            actions:
              1. start postgres as replica without upstream
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

// ---- rejoin of an old primary ----------------------------------------------------------

#[test]
fn old_primary_rewinds_before_following_the_new_leader() {
    check(
        &format!("config: me=n2\n{CLUSTER}\n pg: data=initialized state=in-production"),
        expect![[r#"
            reason: running pg_rewind from n1 before following it
            actions:
              1. rewind from n1 (10.0.0.1:5432)
              2. start postgres as replica of n1 (10.0.0.1:5432)
            memory: leader=false following=n1 down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn failed_rewind_stays_stopped_unless_allowed_to_wipe() {
    let base = format!("{CLUSTER}\n pg: data=initialized state=shut-down\n failure: rewind at=99");
    check(
        &base,
        expect![[r#"
            reason: pg_rewind from n1 failed and remove_data_directory_on_rewind_failure is off; staying stopped
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=n1
            wake: +2000ms
        "#]],
    );
    check(
        &format!("config: wipe=on\n{base}"),
        expect![[r#"
            reason: pg_rewind from n1 failed; removing data directory to re-clone
            actions:
              1. wipe data directory
            memory: leader=false following=- down_since=- rewind_failed=n1
            wake: +0ms
        "#]],
    );
}

#[test]
fn old_primary_without_rewind_still_never_starts_as_primary() {
    check(
        &format!("config: rewind=off\n{CLUSTER}\n pg: data=initialized state=in-production"),
        expect![[r#"
            reason: starting as a secondary following n1
            actions:
              1. start postgres as replica of n1 (10.0.0.1:5432)
            memory: leader=false following=n1 down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

// ---- switchover / manual failover ------------------------------------------------------

/// n1 leads; n2 and n3 stream from it and answer their REST API.
const SWITCHOVER: &str = "
    config: me=n1
    lease: id=5 deadline=105
    dcs: init=7001 leader=n1@5 optime=0/3000000
    member: n1 role=primary conn=10.0.0.1:5432
    member: n2 role=replica conn=10.0.0.2:5432
    member: n3 role=replica conn=10.0.0.3:5432
    pg: data=initialized state=in-production
    pg: running primary tl=1 flush=0/3000000 slots=n2,n3
    peer: n2 reachable wal=0/3000000
    peer: n3 reachable wal=0/3000000
";

#[test]
fn leader_hands_over_to_a_healthy_candidate() {
    check(
        &format!("{SWITCHOVER}\n failover: leader=n1 candidate=n2"),
        expect![[r#"
            reason: switchover: demoting myself in favour of n2
            actions:
              1. hand over: stop postgres (fast) and release leader key
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn leader_cleans_up_requests_it_cannot_carry_out() {
    check(
        &format!("{SWITCHOVER}\n failover: leader=n3 candidate=n2"),
        expect![[r#"
            reason: Cleaning up failover key: leader name does not match (n3)
            actions:
              1. clear failover key
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    check(
        &format!("{SWITCHOVER}\n failover: leader=n1 candidate=n9"),
        expect![[r#"
            reason: Cleaning up failover key: candidate n9 does not exist
            actions:
              1. clear failover key
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    let unreachable = SWITCHOVER.replace("peer: n2 reachable", "peer: n2 unreachable");
    check(
        &format!("{unreachable}\n failover: leader=n1 candidate=n2"),
        expect![[r#"
            reason: Cleaning up failover key: candidate n2 is not healthy enough to take over
            actions:
              1. clear failover key
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    check(
        &format!("{SWITCHOVER}\n failover: leader=n1 candidate=n2 at=yesterday"),
        expect![[r#"
            reason: Cleaning up failover key: cannot parse scheduled_at "yesterday"
            actions:
              1. clear failover key
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn scheduled_switchover_waits_for_its_time_then_hands_over() {
    check(
        &format!(
            "{SWITCHOVER}\n failover: leader=n1 candidate=n2 at=2026-11-22T05:00:01.500+00:00"
        ),
        expect![[r#"
            reason: Awaiting switchover at 2026-11-22T05:00:01.500+00:00
            actions: none
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +1500ms
        "#]],
    );
    check(
        &format!("{SWITCHOVER}\n failover: leader=n1 candidate=n2 at=2026-11-22T04:59:59+00:00"),
        expect![[r#"
            reason: switchover: demoting myself in favour of n2
            actions:
              1. hand over: stop postgres (fast) and release leader key
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    check(
        &format!("{SWITCHOVER}\n failover: leader=n1 candidate=n2 at=2026-11-22T04:00:00+00:00"),
        expect![[r#"
            reason: Cleaning up failover key: the switchover scheduled at 2026-11-22T04:00:00+00:00 is stale
            actions:
              1. clear failover key
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

/// After the hand-over: n1's key is gone, the failover key names the candidate.
const HANDED_OVER: &str = "
    lease: id=7 deadline=105
    dcs: init=7001 optime=0/3000000
    member: n1 role=replica conn=10.0.0.1:5432
    member: n2 role=replica conn=10.0.0.2:5432
    member: n3 role=replica conn=10.0.0.3:5432
    pg: data=initialized
";

#[test]
fn named_candidate_takes_the_key_even_when_not_the_healthiest() {
    check(
        &format!(
            "config: me=n2
             {HANDED_OVER}
             pg: running replica tl=1 recv=0/3000000 replay=0/3000000
             peer: n3 reachable wal=0/3000100
             failover: leader=n1 candidate=n2"
        ),
        expect![[r#"
            reason: promoted self to leader by acquiring session lock as the manual failover candidate
            actions:
              1. acquire leader key
              2. promote postgres
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn others_leave_the_key_to_a_healthy_candidate_but_not_to_a_dead_one() {
    let base = format!(
        "config: me=n3
         {HANDED_OVER}
         pg: running replica tl=1 recv=0/3000100 replay=0/3000100
         failover: leader=n1 candidate=n2"
    );
    check(
        &format!("{base}\n peer: n2 reachable wal=0/3000000"),
        expect![[r#"
            reason: following a different leader because n2 is the manual failover candidate
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +1000ms
        "#]],
    );
    check(
        &format!("{base}\n peer: n2 unreachable"),
        expect![[r#"
            reason: promoted self to leader by acquiring session lock
            actions:
              1. acquire leader key
              2. promote postgres
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn former_leader_does_not_race_after_handing_over_without_a_candidate() {
    check(
        &format!(
            "config: me=n1
             {HANDED_OVER}
             pg: running replica tl=1 recv=0/3000100 replay=0/3000100
             peer: n2 reachable wal=0/3000000
             failover: leader=n1"
        ),
        expect![[r#"
            reason: I handed leadership over in a switchover: waiting for another member to take it
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +1000ms
        "#]],
    );
}

#[test]
fn new_leader_clears_the_request_it_fulfilled() {
    check(
        "config: me=n2
         lease: id=7 deadline=105
         dcs: init=7001 leader=n2@7
         member: n2 role=primary conn=10.0.0.2:5432
         pg: data=initialized state=in-production
         pg: running primary tl=2 flush=0/3000100
         failover: leader=n1 candidate=n2 rev=12",
        expect![[r#"
            reason: Cleaning up failover key: I am the candidate and hold the leader key
            actions:
              1. clear failover key
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn a_manual_switchover_to_a_named_candidate_works_while_paused() {
    check(
        &format!("config: pause=on\n{SWITCHOVER}\n failover: leader=n1 candidate=n2"),
        expect![[r#"
            reason: PAUSE: switchover: demoting myself in favour of n2
            actions:
              1. hand over: stop postgres (fast) and release leader key
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

// ---- synchronous mode ------------------------------------------------------------------

/// n1 leads in synchronous mode; n2 and n3 stream from it.
const SYNC_LEADER: &str = "
    config: me=n1 sync=on
    lease: id=5 deadline=105
    dcs: init=7001 leader=n1@5 optime=0/3000000
    member: n1 role=primary conn=10.0.0.1:5432
    member: n2 role=replica conn=10.0.0.2:5432
    member: n3 role=replica conn=10.0.0.3:5432
    pg: data=initialized state=in-production
";

#[test]
fn sync_leader_first_claims_the_sync_key() {
    check(
        &format!(
            "{SYNC_LEADER}\n pg: running primary tl=1 flush=0/3000000 slots=n2,n3 repl=n2:async:0_3000000,n3:async:0_3000000"
        ),
        expect![[r#"
            reason: Enabled synchronous replication
            actions:
              1. write /sync: leader n1, sync_standby []
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn sync_standby_is_added_to_the_guc_before_it_is_published() {
    // Step 1: set the GUC (remembering our position at the change).
    check(
        &format!(
            "{SYNC_LEADER}
             dcs: init=7001 leader=n1@5 optime=0/3000000 sync=n1:@7
             pg: running primary tl=1 flush=0/3000000 slots=n2,n3 repl=n2:async:0_3000000,n3:async:0_2000000"
        ),
        expect![[r#"
            reason: Assigning synchronous_standby_names = 'n2'
            actions:
              1. set synchronous_standby_names to 'n2'
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    // Step 2: PostgreSQL reports it `sync` but it has not flushed past our position at the
    // change yet: not published.
    let base = format!(
        "{SYNC_LEADER}
         dcs: init=7001 leader=n1@5 optime=0/3000000 sync=n1:@7"
    );
    let parsed = parse(&format!(
        "{base}\n pg: running primary tl=1 flush=0/3000100 slots=n2,n3 ssn=n2 repl=n2:sync:0_3000000,n3:async:0_2000000"
    ));
    let mut memory = parsed.memory.clone();
    memory.sync_changed_at = Some(lsn("0/3000100"));
    let d = super::decide(&memory, &parsed.obs, &parsed.config, parsed.now);
    assert!(d.actions.is_empty(), "published too early: {:?}", d.actions);
    assert_eq!(
        d.wake_at,
        parsed.now + Duration::from_secs(1),
        "a sync leader rechecks within 1 s"
    );
    // Step 3: caught up: published.
    let parsed = parse(&format!(
        "{base}\n pg: running primary tl=1 flush=0/3000200 slots=n2,n3 ssn=n2 repl=n2:sync:0_3000100,n3:async:0_2000000"
    ));
    let d = super::decide(&memory, &parsed.obs, &parsed.config, parsed.now);
    assert_eq!(
        d.reason.to_string(),
        "Synchronous standby status assigned to [n2]"
    );
    assert_eq!(
        d.actions
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["write /sync: leader n1, sync_standby [n2]"]
    );
}

#[test]
fn a_sync_standby_that_stopped_streaming_is_unpublished_before_the_guc_changes() {
    check(
        &format!(
            "{SYNC_LEADER}
             dcs: init=7001 leader=n1@5 optime=0/3000000 sync=n1:n2@7
             pg: running primary tl=1 flush=0/3000000 slots=n2,n3 ssn=n2 repl=n3:async:0_3000000"
        ),
        expect![[r#"
            reason: Removing standbys from /sync before changing synchronous_standby_names
            actions:
              1. write /sync: leader n1, sync_standby []
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    // Then the GUC moves to the remaining standby.
    check(
        &format!(
            "{SYNC_LEADER}
             dcs: init=7001 leader=n1@5 optime=0/3000000 sync=n1:@8
             pg: running primary tl=1 flush=0/3000000 slots=n2,n3 ssn=n2 repl=n3:async:0_3000000"
        ),
        expect![[r#"
            reason: Assigning synchronous_standby_names = 'n3'
            actions:
              1. set synchronous_standby_names to 'n3'
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn an_async_standby_that_flushed_further_does_not_displace_the_sync_one() {
    // Under a steady writer the asynchronous standby's flush position is momentarily ahead of
    // the synchronous one's: the set stays (Patroni ranks `sync_state` before position), so
    // `/sync` is not emptied just before a failover would need it.
    check(
        &format!(
            "{SYNC_LEADER}
             dcs: init=7001 leader=n1@5 optime=0/3000000 sync=n1:n2@7
             pg: running primary tl=1 flush=0/3000200 slots=n2,n3 ssn=n2 repl=n2:sync:0_3000100,n3:async:0_3000200"
        ),
        expect![[r#"
            reason: no action. I am the leader with the lock
            actions: none
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +1000ms
        "#]],
    );
}

#[test]
fn strict_mode_never_empties_the_guc() {
    check(
        &format!(
            "config: strict=on
             {SYNC_LEADER}
             dcs: init=7001 leader=n1@5 optime=0/3000000 sync=n1:@8
             pg: running primary tl=1 flush=0/3000000 slots=n2,n3 ssn=n2"
        ),
        expect![[r#"
            reason: Assigning synchronous_standby_names = '__patroni_strict_sync_replica_placeholder__'
            actions:
              1. set synchronous_standby_names to '__patroni_strict_sync_replica_placeholder__'
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    // Non-strict: with nobody streaming, commits go through unprotected (async).
    check(
        &format!(
            "{SYNC_LEADER}
             dcs: init=7001 leader=n1@5 optime=0/3000000 sync=n1:@8
             pg: running primary tl=1 flush=0/3000000 slots=n2,n3 ssn=n2"
        ),
        expect![[r#"
            reason: Assigning synchronous_standby_names = ''
            actions:
              1. set synchronous_standby_names to ''
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn switching_sync_mode_off_unpublishes_then_releases_commits() {
    check(
        &format!(
            "{SYNC_LEADER}
             config: sync=off
             dcs: init=7001 leader=n1@5 optime=0/3000000 sync=n1:n2@8
             pg: running primary tl=1 flush=0/3000000 slots=n2,n3 ssn=n2 repl=n2:sync:0_3000000"
        ),
        expect![[r#"
            reason: Disabled synchronous replication
            actions:
              1. delete /sync
              2. reset synchronous_standby_names to the configured value
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

/// n1 died in synchronous mode; /sync says n2 was its synchronous standby.
const SYNC_LEADERLESS: &str = "
    config: sync=on
    lease: id=7 deadline=105
    dcs: init=7001 optime=0/3000000 sync=n1:n2@8
    member: n2 role=replica xlog=0/3000000 conn=10.0.0.2:5432
    member: n3 role=replica xlog=0/3000000 conn=10.0.0.3:5432
    pg: data=initialized
";

#[test]
fn only_a_sync_standby_may_promote_and_it_claims_sync_first() {
    check(
        &format!(
            "config: me=n3
             {SYNC_LEADERLESS}
             pg: running replica tl=1 recv=0/3000100 replay=0/3000100
             peer: n2 unreachable"
        ),
        expect![[r#"
            reason: following a different leader because i am not the healthiest node: synchronous mode is on and I am not a synchronous standby (not in /sync)
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +1000ms
        "#]],
    );
    // n2 wins even though the asynchronous n3 received more WAL: n3 cannot be trusted to hold
    // every acknowledged commit, n2 can.
    check(
        &format!(
            "config: me=n2
             {SYNC_LEADERLESS}
             pg: running replica tl=1 recv=0/3000000 replay=0/3000000
             peer: n3 reachable wal=0/3000100"
        ),
        expect![[r#"
            reason: promoted self to leader by acquiring session lock
            actions:
              1. acquire leader key
              2. write /sync: leader n2, sync_standby []
              3. set synchronous_standby_names to ''
              4. promote postgres
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn strict_promotion_keeps_the_old_set_so_no_commit_goes_through_unprotected() {
    check(
        &format!(
            "config: me=n2 strict=on
             {SYNC_LEADERLESS}
             pg: running replica tl=1 recv=0/3000000 replay=0/3000000"
        ),
        expect![[r#"
            reason: promoted self to leader by acquiring session lock
            actions:
              1. acquire leader key
              2. write /sync: leader n2, sync_standby [n1]
              3. set synchronous_standby_names to 'n1'
              4. promote postgres
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

// ---- findings of the simulator ---------------------------------------------------------

#[test]
fn a_leader_that_cannot_read_the_dcs_stays_armed_for_fencing() {
    // F1: the DCS read failed; the lease is still valid. The leader must stay "leader" so the
    // fencer keeps watching its deadline, and the cycle must wake up at that deadline.
    let f = parse(
        "config: me=n1 loop_wait=10
         lease: id=5 deadline=104
         dcs: unreachable
         pg: data=initialized state=in-production
         pg: running primary tl=1 flush=0/3000000",
    );
    let memory = Memory {
        was_leader: true,
        ..Memory::default()
    };
    let d = super::decide(&memory, &f.obs, &f.config, f.now);
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert!(d.next_memory.was_leader, "the fencer would be disarmed");
    assert_eq!(d.wake_at, Mono::from_millis(104_000));
}

#[test]
fn a_standby_under_our_stale_key_is_stopped_before_the_key_is_released() {
    // F3: the previous agent process died during `pg_ctl promote`.
    check(
        "config: me=n1
         lease: id=9 deadline=105
         dcs: init=7001 leader=n1@5
         member: n1 role=replica conn=10.0.0.1:5432
         pg: data=initialized
         pg: running replica tl=1 recv=0/3000000 replay=0/3000000",
        expect![[r#"
            reason: removed leader key because postgres is not running as primary
            actions:
              1. stop postgres (immediate)
              2. release leader key
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn a_leader_whose_standby_crashed_mid_promotion_restarts_it_as_a_standby_then_promotes() {
    // F4: starting a standby data directory as a primary would not switch the timeline.
    check(
        "config: me=n1
         lease: id=5 deadline=105
         dcs: init=7001 leader=n1@5
         member: n1 role=replica conn=10.0.0.1:5432
         pg: data=initialized state=in-archive-recovery",
        expect![[r#"
            reason: starting primary after failure
            actions:
              1. start postgres as replica without upstream
            memory: leader=true following=- down_since=100.000s rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn a_fenced_leader_without_the_dcs_does_not_spin() {
    // After fencing (PostgreSQL stopped), with the DCS still unreachable and the deadline in
    // the past, the next cycle comes after loop_wait, not at once.
    let f = parse(
        "config: me=n1 loop_wait=10
         now: 110
         lease: id=5 deadline=104
         dcs: unreachable
         pg: data=initialized state=in-production",
    );
    let memory = Memory {
        was_leader: true,
        ..Memory::default()
    };
    let d = super::decide(&memory, &f.obs, &f.config, f.now);
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(d.wake_at, f.now + Duration::from_secs(10));
}

// ---- divergence of a running standby (simulator findings F5, F6) -----------------------------

/// n1 leads on timeline 2, which left timeline 1 at 0/1000000.
const NEW_TIMELINE: &str = "
    lease: id=7 deadline=105
    dcs: init=7001 leader=n1@5 optime=0/3000000 history=1
    member: n1 role=primary xlog=0/3000000 conn=10.0.0.1:5432 tl=2
    member: n2 role=replica conn=10.0.0.2:5432 tl=1
";

#[test]
fn a_standby_ahead_of_the_fork_point_is_rewound() {
    // F6: n2 received WAL on timeline 1 past the point where n1's timeline 2 forked off.
    check(
        &format!(
            "{NEW_TIMELINE}
             pg: data=initialized
             pg: running replica tl=1 recv=0/1800000 replay=0/1800000
             memory: following=n1 nostream_since=70"
        ),
        expect![[r#"
            reason: diverged from n1: WAL up to 0/1800000 on timeline 1 (past 0/1000000, where n1's history left that timeline); stopping for pg_rewind
            actions:
              1. stop postgres (fast)
              2. rewind from n1 (10.0.0.1:5432)
              3. start postgres as replica of n1 (10.0.0.1:5432)
            memory: leader=false following=n1 down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn a_former_primary_running_as_a_lone_standby_is_rewound_when_a_leader_appears() {
    // F5: started as a standby without upstream while there was no leader; its own WAL
    // (replayed from pg_wal) runs past the fork point.
    check(
        &format!(
            "{NEW_TIMELINE}
             pg: data=initialized
             pg: running replica tl=1 replay=0/1400000
             memory: following=n1 nostream_since=70"
        ),
        expect![[r#"
            reason: diverged from n1: WAL up to 0/1400000 on timeline 1 (past 0/1000000, where n1's history left that timeline); stopping for pg_rewind
            actions:
              1. stop postgres (fast)
              2. rewind from n1 (10.0.0.1:5432)
              3. start postgres as replica of n1 (10.0.0.1:5432)
            memory: leader=false following=n1 down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn a_standby_is_first_pointed_at_a_new_leader_and_judged_later() {
    // Not following n1 yet (a lone standby, or another leader before): re-point it; the
    // 2 * ttl clock starts now.
    check(
        &format!(
            "{NEW_TIMELINE}
             pg: data=initialized
             pg: running replica tl=1 replay=0/1400000
             memory: nostream_since=10"
        ),
        expect![[r#"
            reason: no action. I am a secondary, and following a leader (n1)
            actions:
              1. follow n1 (10.0.0.1:5432)
            memory: leader=false following=n1 down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn a_rewound_and_restarted_standby_gets_a_fresh_divergence_clock() {
    // The rewind cycle (stop, pg_rewind, start) at t=100 after not streaming since t=70.
    let diverged = format!(
        "{NEW_TIMELINE}
         pg: data=initialized
         pg: running replica tl=1 recv=0/1800000 replay=0/1800000
         memory: following=n1 nostream_since=70"
    );
    let f = parse(&diverged);
    let d = super::decide(&f.memory, &f.obs, &f.config, f.now);
    assert!(
        d.actions.iter().any(|a| matches!(a, Action::Rewind { .. })),
        "{d:?}"
    );
    assert_eq!(d.next_memory.not_streaming_since, None, "{d:?}");
    // Five seconds later the new postmaster has not connected yet and still reports the old
    // checkpoint's timeline: that is no divergence yet.
    let mut later = parse(&diverged.replace("nostream_since=70", ""));
    later.memory = d.next_memory.clone();
    let now = Mono::from_millis(f.now.as_millis() + 5_000);
    let d2 = super::decide(&later.memory, &later.obs, &later.config, now);
    assert!(d2.actions.is_empty(), "{d2:?}");
    assert_eq!(d2.next_memory.not_streaming_since, Some(now));
}

#[test]
fn a_standby_that_stopped_streaming_only_recently_is_left_alone() {
    // Right after a switchover or a rewind, PostgreSQL may report the last checkpoint's
    // timeline: no rewind before 2 * ttl without streaming.
    check(
        &format!(
            "{NEW_TIMELINE}
             pg: data=initialized
             pg: running replica tl=1 recv=0/1800000 replay=0/1800000
             memory: following=n1 nostream_since=85"
        ),
        expect![[r#"
            reason: no action. I am a secondary, and following a leader (n1)
            actions: none
            memory: leader=false following=n1 down_since=- rewind_failed=-
            wake: +2000ms
        "#]],
    );
}

#[test]
fn a_standby_behind_the_fork_point_or_streaming_just_follows() {
    check(
        &format!(
            "{NEW_TIMELINE}
             pg: data=initialized
             pg: running replica tl=1 recv=0/0800000 replay=0/0800000"
        ),
        expect![[r#"
            reason: no action. I am a secondary, and following a leader (n1)
            actions:
              1. follow n1 (10.0.0.1:5432)
            memory: leader=false following=n1 down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    // Streaming means PostgreSQL found its way onto the leader's timeline: positions from the
    // moment of the switch are no evidence of divergence.
    check(
        &format!(
            "{NEW_TIMELINE}
             pg: data=initialized
             pg: running replica tl=1 recv=0/1800000 streaming
             memory: following=n1"
        ),
        expect![[r#"
            reason: no action. I am a secondary, and following a leader (n1)
            actions: none
            memory: leader=false following=n1 down_since=- rewind_failed=-
            wake: +2000ms
        "#]],
    );
    // A history that does not cover the standby's timeline proves nothing.
    check(
        "lease: id=7 deadline=105
         dcs: init=7001 leader=n1@5 optime=0/3000000
         member: n1 role=primary xlog=0/3000000 conn=10.0.0.1:5432 tl=2
         pg: data=initialized
         pg: running replica tl=1 recv=0/1800000
         memory: following=n1",
        expect![[r#"
            reason: no action. I am a secondary, and following a leader (n1)
            actions: none
            memory: leader=false following=n1 down_since=- rewind_failed=-
            wake: +2000ms
        "#]],
    );
}

#[test]
fn a_diverged_standby_without_pg_rewind_is_recloned_only_when_allowed() {
    let standby = format!(
        "{NEW_TIMELINE}
         pg: data=initialized
         pg: running replica tl=1 recv=0/1800000
         memory: following=n1 nostream_since=70"
    );
    check(
        &format!("{standby}\n config: rewind=off wipe=on"),
        expect![[r#"
            reason: diverged from n1: WAL up to 0/1800000 on timeline 1 (past 0/1000000, where n1's history left that timeline); use_pg_rewind is off; re-creating the replica
            actions:
              1. stop postgres (fast)
              2. wipe data directory
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    check(
        &format!("{standby}\n config: rewind=off wipe=off"),
        expect![[r#"
            reason: diverged from n1: WAL up to 0/1800000 on timeline 1 (past 0/1000000, where n1's history left that timeline); use_pg_rewind and remove_data_directory_on_rewind_failure are off; it cannot stream
            actions: none
            memory: leader=false following=n1 down_since=- rewind_failed=-
            wake: +2000ms
        "#]],
    );
}

#[test]
fn a_standby_stopped_for_a_rewind_that_failed_is_not_restarted_diverged() {
    check(
        &format!(
            "{NEW_TIMELINE}
             pg: data=initialized state=shut-down-in-recovery tl=1
             failure: rewind at=99"
        ),
        expect![[r#"
            reason: pg_rewind from n1 failed and remove_data_directory_on_rewind_failure is off; staying stopped
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=n1
            wake: +2000ms
        "#]],
    );
}

#[test]
fn a_former_primary_on_the_leaders_own_new_timeline_is_not_rewound() {
    // n2 and n1 were both promoted from timeline 1 to 2 (n2 while cut off); the history names
    // n1 as the creator of timeline 2. pg_rewind would see "same timeline" and do nothing.
    let collision = "
        lease: id=7 deadline=105
        dcs: init=7001 leader=n1@5 optime=0/3000000 history=1 creator=n1
        member: n1 role=primary xlog=0/3000000 conn=10.0.0.1:5432 tl=2
        pg: data=initialized state=shut-down tl=2 ckpt=0/1400000
    ";
    check(
        &format!("{collision}\n config: wipe=on"),
        expect![[r#"
            reason: this member and n1 were both promoted to timeline 2: pg_rewind cannot tell them apart; re-creating the replica
            actions:
              1. wipe data directory
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    check(
        collision,
        expect![[r#"
        reason: this member and n1 were both promoted to timeline 2: pg_rewind cannot tell them apart; remove_data_directory_on_rewind_failure is off; staying stopped (reinitialize it)
        actions: none
        memory: leader=false following=- down_since=- rewind_failed=-
        wake: +2000ms
    "#]],
    );
    // The history has no line for timeline 1 yet (n1 promoted, its history write is still to
    // come): no rewind, which could be a no-op on our diverged WAL; wait for the line.
    check(
        &collision.replace(" history=1 creator=n1", ""),
        expect![[r#"
            reason: this member was a primary on timeline 2 and n1 is on it too; waiting for the history to record who created it before rejoining
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +2000ms
        "#]],
    );
    // n1 holds the key but is still promoting (its member key says replica, timeline 1): no
    // rewind from it yet — it may land on our timeline number (simulator seed 40609025607086).
    check(
        &collision.replace(" history=1 creator=n1", "").replace(
            "role=primary xlog=0/3000000 conn=10.0.0.1:5432 tl=2",
            "role=replica xlog=0/3000000 conn=10.0.0.1:5432 tl=1",
        ),
        expect![[r#"
            reason: leader n1 is still in recovery and therefore can't be used for rewind; waiting
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +2000ms
        "#]],
    );
    // The history says we created timeline 2 and n1 followed us onto it: a plain rewind.
    check(
        &collision.replace("creator=n1", "creator=n2"),
        expect![[r#"
            reason: running pg_rewind from n1 before following it
            actions:
              1. rewind from n1 (10.0.0.1:5432)
              2. start postgres as replica of n1 (10.0.0.1:5432)
            memory: leader=false following=n1 down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

// ---- quorum mode (`synchronous_mode: quorum`) ------------------------------------------------

const QUORUM_LEADER: &str = "
    config: me=n1 sync=quorum
    lease: id=5 deadline=105
    dcs: init=7001 leader=n1@5 optime=0/3000000
    member: n1 role=primary conn=10.0.0.1:5432
    member: n2 role=replica conn=10.0.0.2:5432
    member: n3 role=replica conn=10.0.0.3:5432
    pg: data=initialized state=in-production
";

#[test]
fn quorum_leader_raises_the_quorum_then_sets_any_then_publishes() {
    // Step 1: ANY 1 (n2,n3) needs quorum 1 (= |voters ∪ names| - numsync) first.
    check(
        &format!(
            "{QUORUM_LEADER}
             dcs: init=7001 leader=n1@5 optime=0/3000000 sync=n1:@7
             pg: running primary flush=0/3000000 repl=n2:async:0_3000000,n3:async:0_3000000"
        ),
        expect![[r#"
            reason: Increasing quorum to 1 before changing synchronous_standby_names
            actions:
              1. write /sync: leader n1, sync_standby [], quorum 1
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    // Step 2: the GUC.
    check(
        &format!(
            "{QUORUM_LEADER}
             dcs: init=7001 leader=n1@5 optime=0/3000000 sync=n1:@8 quorum=1
             pg: running primary flush=0/3000000 repl=n2:async:0_3000000,n3:async:0_3000000"
        ),
        expect![[r#"
            reason: Assigning synchronous_standby_names = 'ANY 1 (n2,n3)'
            actions:
              1. set synchronous_standby_names to 'ANY 1 (n2,n3)'
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    // Step 3: both report `quorum` and flushed past the change: published, quorum 1.
    check(
        &format!(
            "{QUORUM_LEADER}
             dcs: init=7001 leader=n1@5 optime=0/3000000 sync=n1:@9 quorum=1
             pg: running primary flush=0/3000000 ssn=ANY~1~(n2,n3) repl=n2:quorum:0_3000000,n3:quorum:0_3000000"
        ),
        expect![[r#"
            reason: Quorum standbys [n2, n3], quorum 1
            actions:
              1. write /sync: leader n1, sync_standby [n2, n3], quorum 1
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    // Only n2 confirmed (n3 has not flushed our position yet): n2 alone is a voter, and the
    // quorum stays 1, so n2 by itself cannot win a race (its one vote < 2).
    check(
        &format!(
            "{QUORUM_LEADER}
             dcs: init=7001 leader=n1@5 optime=0/3000000 sync=n1:@9 quorum=1
             pg: running primary flush=0/3000000 ssn=ANY~1~(n2,n3) repl=n2:quorum:0_3000000,n3:quorum:0_2000000"
        ),
        expect![[r#"
            reason: Quorum standbys [n2], quorum 1
            actions:
              1. write /sync: leader n1, sync_standby [n2], quorum 1
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn quorum_leader_unpublishes_a_departed_voter_before_shrinking_any() {
    // n3 stopped streaming: out of /sync first (quorum kept), then out of the GUC.
    check(
        &format!(
            "{QUORUM_LEADER}
             dcs: init=7001 leader=n1@5 optime=0/3000000 sync=n1:n2,n3@9 quorum=1
             pg: running primary flush=0/3000000 ssn=ANY~1~(n2,n3) repl=n2:quorum:0_3000000"
        ),
        expect![[r#"
            reason: Removing standbys from /sync before changing synchronous_standby_names
            actions:
              1. write /sync: leader n1, sync_standby [n2], quorum 1
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    check(
        &format!(
            "{QUORUM_LEADER}
             dcs: init=7001 leader=n1@5 optime=0/3000000 sync=n1:n2@10 quorum=1
             pg: running primary flush=0/3000000 ssn=ANY~1~(n2,n3) repl=n2:quorum:0_3000000"
        ),
        expect![[r#"
            reason: Assigning synchronous_standby_names = 'ANY 1 (n2)'
            actions:
              1. set synchronous_standby_names to 'ANY 1 (n2)'
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

const QUORUM_LEADERLESS: &str = "
    config: sync=quorum
    lease: id=7 deadline=105
    dcs: init=7001 optime=0/3000000 sync=n1:n2,n3@8 quorum=1
    member: n2 role=replica xlog=0/3000000 conn=10.0.0.2:5432
    member: n3 role=replica xlog=0/3000000 conn=10.0.0.3:5432
    pg: data=initialized
    pg: running replica tl=1 recv=0/3000000 replay=0/3000000
";

#[test]
fn quorum_candidate_needs_quorum_plus_one_voters_not_ahead_of_it() {
    check(
        &format!("{QUORUM_LEADERLESS}\n peer: n3 reachable wal=0/3000000"),
        expect![[r#"
            reason: promoted self to leader by acquiring session lock
            actions:
              1. acquire leader key
              2. write /sync: leader n2, sync_standby []
              3. set synchronous_standby_names to ''
              4. promote postgres
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    check(
        &format!("{QUORUM_LEADERLESS}\n peer: n3 unreachable"),
        expect![[r#"
            reason: following a different leader because i am not the healthiest node: only 1 of the 2 quorum votes needed to prove this node holds every acknowledged commit
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +1000ms
        "#]],
    );
    // A voter ahead of us, even one that may not be promoted, holds commits we lack.
    check(
        &format!("{QUORUM_LEADERLESS}\n peer: n3 reachable wal=0/3000100 nofailover"),
        expect![[r#"
            reason: following a different leader because i am not the healthiest node: Wal position of n3 (0/3000100) is ahead of my wal position (0/3000000)
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +1000ms
        "#]],
    );
}

#[test]
fn a_standby_lagging_beyond_maximum_lag_on_syncnode_is_not_made_synchronous() {
    check(
        &format!(
            "{SYNC_LEADER}
             config: maxlag=1000
             dcs: init=7001 leader=n1@5 optime=0/3000000 sync=n1:@7
             pg: running primary flush=0/3000000 repl=n2:async:0_2000000,n3:async:0_3000000"
        ),
        expect![[r#"
            reason: Assigning synchronous_standby_names = 'n3'
            actions:
              1. set synchronous_standby_names to 'n3'
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn a_non_ascii_member_name_in_synchronous_mode_is_handled() {
    // `synchronous_standby_names` holding a quoted non-ASCII name used to be sliced at a byte
    // offset inside a character: the decision core panicked and the leader crash-looped.
    check(
        "
        config: me=n1 sync=on
        lease: id=5 deadline=105
        dcs: init=7001 leader=n1@5 optime=0/3000000 sync=n1:@7
        member: n1 role=primary conn=10.0.0.1:5432
        member: nœd2 role=replica conn=10.0.0.2:5432
        pg: data=initialized state=in-production
        pg: running primary tl=1 flush=0/3000000 slots=nœd2 ssn=\"nœd2\" repl=nœd2:sync:0_3000000
        ",
        expect![[r#"
            reason: Synchronous standby status assigned to [nœd2]
            actions:
              1. write /sync: leader n1, sync_standby [nœd2]
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

/// n2 is the published synchronous standby; its replay is paused (flushed 0/3000000, replayed
/// 0/1000000), n3 is healthy; `synchronous_commit` is `commit`.
fn sync_replay_paused(commit: &str) -> String {
    format!(
        "{SYNC_LEADER}
         config: maxlag=1000
         dcs: init=7001 leader=n1@5 optime=0/3000000 sync=n1:n2@7
         pg: running primary flush=0/3000000 slots=n2,n3 ssn=n2 commit={commit} repl=n2:sync:0_3000000:0_1000000,n3:async:0_3000000"
    )
}

#[test]
fn under_remote_apply_a_sync_standby_whose_replay_is_paused_is_replaced() {
    // Commits wait for replay: n2 lags 32 MiB on the position that matters and is unpublished
    // first (then the GUC moves to n3, then n3 is published).
    check(
        &sync_replay_paused("remote_apply"),
        expect![[r#"
            reason: Removing standbys from /sync before changing synchronous_standby_names
            actions:
              1. write /sync: leader n1, sync_standby []
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    // Commits wait for flush: n2 is as far as n3 and stays.
    check(
        &sync_replay_paused("on"),
        expect![[r#"
            reason: no action. I am the leader with the lock
            actions: none
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +1000ms
        "#]],
    );
}

#[test]
fn a_paused_cluster_still_replaces_a_lagging_sync_standby() {
    check(
        &format!("{}\n config: pause=on", sync_replay_paused("remote_apply")),
        expect![[r#"
            reason: PAUSE: Removing standbys from /sync before changing synchronous_standby_names
            actions:
              1. write /sync: leader n1, sync_standby []
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

/// n1 handed leadership over to n2 in a switchover while the cluster is paused; its
/// PostgreSQL is stopped (clean shutdown) and n2 now leads.
const HANDED_OVER_PAUSED: &str = "
    config: me=n1 pause=on
    lease: id=5 deadline=105
    dcs: init=7001 leader=n2@7 optime=0/3000000 history=1 creator=n2
    member: n1 role=primary conn=10.0.0.1:5432
    member: n2 role=primary xlog=0/3000100 tl=2 conn=10.0.0.2:5432
    pg: data=initialized state=shut-down tl=1 ckpt=0/3000000
";

#[test]
fn a_paused_switchover_brings_the_former_primary_back_as_a_standby() {
    check(
        &format!("{HANDED_OVER_PAUSED}\n memory: handed_over"),
        expect![[r#"
            reason: PAUSE: running pg_rewind from n2 before following it
            actions:
              1. rewind from n2 (10.0.0.2:5432)
              2. start postgres as replica of n2 (10.0.0.2:5432)
            memory: leader=false following=n2 down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    // A PostgreSQL that stopped for another reason stays down while paused.
    check(
        HANDED_OVER_PAUSED,
        expect![[r#"
            reason: PAUSE: not acting while paused, would have: running pg_rewind from n2 before following it
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +2000ms
        "#]],
    );
}

// ---- /sync missing or unreadable; leader key unreadable (issue 17) ------------------------

/// n2 is the most advanced reachable standby of a leaderless cluster in synchronous mode;
/// the `dcs:` line of each case says what `/sync` holds.
const SYNC_UNKNOWN: &str = "
    config: me=n2 sync=on
    lease: id=7 deadline=105
    member: n2 role=replica xlog=0/3000000 conn=10.0.0.2:5432
    member: n3 role=replica xlog=0/3000000 conn=10.0.0.3:5432
    pg: data=initialized
    pg: running replica tl=1 recv=0/3000100 replay=0/3000100
    peer: n3 reachable wal=0/3000000
";

#[test]
fn sync_mode_without_a_usable_sync_key_blocks_the_race() {
    // Deleted (or never written): nothing says who holds every acknowledged commit, exactly as
    // when `/sync` names someone else.
    check(
        &format!("{SYNC_UNKNOWN}\n dcs: init=7001 optime=0/3000000"),
        expect![[r#"
            reason: following a different leader because i am not the healthiest node: synchronous mode is on and /sync is missing or names no leader, so nothing says which member holds every acknowledged commit; to promote anyway, turn synchronous_mode off or run a manual failover to a named candidate
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +1000ms
        "#]],
    );
    // A `/sync` that names no leader says as little.
    check(
        &format!("{SYNC_UNKNOWN}\n dcs: init=7001 optime=0/3000000 sync=-:n2@8"),
        expect![[r#"
            reason: following a different leader because i am not the healthiest node: synchronous mode is on and /sync is missing or names no leader, so nothing says which member holds every acknowledged commit; to promote anyway, turn synchronous_mode off or run a manual failover to a named candidate
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +1000ms
        "#]],
    );
    check(
        &format!("{SYNC_UNKNOWN}\n dcs: init=7001 optime=0/3000000 sync=?@8"),
        expect![[r#"
            reason: following a different leader because i am not the healthiest node: synchronous mode is on and /sync cannot be read (invalid JSON), so nothing says which member holds every acknowledged commit; to promote anyway, turn synchronous_mode off or run a manual failover to a named candidate
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +1000ms
        "#]],
    );
    // Quorum mode: no voters to count.
    check(
        &format!("{SYNC_UNKNOWN}\n config: sync=quorum\n dcs: init=7001 optime=0/3000000 sync=?@8"),
        expect![[r#"
            reason: following a different leader because i am not the healthiest node: synchronous mode is on and /sync cannot be read (invalid JSON), so nothing says which member holds every acknowledged commit; to promote anyway, turn synchronous_mode off or run a manual failover to a named candidate
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +1000ms
        "#]],
    );
    // The remedies the reason names: synchronous mode off ...
    check(
        &format!("{SYNC_UNKNOWN}\n config: sync=off\n dcs: init=7001 optime=0/3000000 sync=?@8"),
        expect![[r#"
            reason: promoted self to leader by acquiring session lock
            actions:
              1. acquire leader key
              2. promote postgres
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    // ... or a manual failover to a named candidate.
    check(
        &format!(
            "{SYNC_UNKNOWN}
             dcs: init=7001 optime=0/3000000 sync=?@8
             failover: candidate=n2"
        ),
        expect![[r#"
            reason: promoted self to leader by acquiring session lock as the manual failover candidate
            actions:
              1. acquire leader key
              2. write /sync: leader n2, sync_standby []
              3. set synchronous_standby_names to ''
              4. promote postgres
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

/// The `WriteSync` of a decision, with its compare-and-swap version.
fn sync_write(fixture: &str) -> (Option<SyncState>, i64) {
    let f = parse(fixture);
    let d = super::decide(&f.memory, &f.obs, &f.config, f.now);
    d.actions
        .iter()
        .find_map(|a| match a {
            Action::WriteSync { state, version } => Some((state.clone(), *version)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no /sync write in {:?}", d.actions))
}

#[test]
fn the_leader_replaces_an_unreadable_sync_key_at_its_revision() {
    let leader = format!(
        "{SYNC_LEADER}
         dcs: init=7001 leader=n1@5 optime=0/3000000 sync=?@17
         pg: running primary tl=1 flush=0/3000000 slots=n2,n3 repl=n2:async:0_3000000"
    );
    check(
        &leader,
        expect![[r#"
            reason: Enabled synchronous replication
            actions:
              1. write /sync: leader n1, sync_standby []
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    assert_eq!(
        sync_write(&leader).1,
        17,
        "compare-and-swap on the garbage's revision"
    );
    // A manual candidate claims `/sync` over garbage the same way, and over nothing with 0.
    let candidate = |sync: &str| {
        format!("{SYNC_UNKNOWN}\n dcs: init=7001 optime=0/3000000 {sync}\n failover: candidate=n2")
    };
    assert_eq!(sync_write(&candidate("sync=?@8")).1, 8);
    assert_eq!(sync_write(&candidate("")).1, 0);
}

/// n1 leads (on lease 5); its leader key now holds a value that does not decode.
const GARBAGE_LEADER: &str = "
    member: n1 role=primary xlog=0/3000000 conn=10.0.0.1:5432
    member: n2 role=replica xlog=0/3000000 conn=10.0.0.2:5432
    pg: data=initialized
";

#[test]
fn the_holder_of_an_unreadable_leader_key_rewrites_it_and_keeps_its_primary() {
    // The key is still on our lease: ours, whatever it holds.
    check(
        &format!(
            "config: me=n1
             lease: id=5 deadline=105
             {GARBAGE_LEADER}
             dcs: init=7001 leader=?@5 optime=0/3000000
             pg: running primary tl=1 flush=0/3000000 slots=n2"
        ),
        expect![[r#"
            reason: the leader key is mine but its value is unreadable: rewriting it with my name
            actions:
              1. rewrite the unreadable leader key with our name
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    // Written without a lease (a plain `etcdctl put`): still the key we acquired, by its
    // create_revision.
    check(
        &format!(
            "config: me=n1
             lease: id=5 deadline=105
             {GARBAGE_LEADER}
             dcs: init=7001 leader=?@0 epoch=4 optime=0/3000000
             memory: epoch=4
             pg: running primary tl=1 flush=0/3000000 slots=n2"
        ),
        expect![[r#"
            reason: the leader key is mine but its value is unreadable: rewriting it with my name
            actions:
              1. rewrite the unreadable leader key with our name
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    // A key another acquisition created (another epoch) is not ours: stop being a primary.
    check(
        &format!(
            "config: me=n1
             lease: id=5 deadline=105
             {GARBAGE_LEADER}
             dcs: init=7001 leader=?@0 epoch=9 optime=0/3000000
             memory: epoch=4
             pg: running primary tl=1 flush=0/3000000 slots=n2"
        ),
        expect![[r#"
            reason: demoting self because I do not have the lock and I was a leader
            actions:
              1. stop postgres (immediate)
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    // Paused: rewriting the key changes no role, so it still happens.
    check(
        &format!(
            "config: me=n1 pause=on
             lease: id=5 deadline=105
             {GARBAGE_LEADER}
             dcs: init=7001 leader=?@5 optime=0/3000000
             pg: running primary tl=1 flush=0/3000000 slots=n2"
        ),
        expect![[r#"
            reason: PAUSE: the leader key is mine but its value is unreadable: rewriting it with my name
            actions:
              1. rewrite the unreadable leader key with our name
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn an_unreadable_leader_key_someone_else_holds_means_someone_leads() {
    // A standby neither races nor follows: someone leads, the key does not say who.
    check(
        &format!(
            "config: me=n2
             lease: id=7 deadline=105
             {GARBAGE_LEADER}
             dcs: init=7001 leader=?@5 optime=0/3000000
             pg: running replica tl=1 recv=0/3000000 replay=0/3000000
             peer: n1 unreachable"
        ),
        expect![[r#"
            reason: the leader key exists but its value is unreadable: someone leads, not known who; waiting for its holder to rewrite it or for its lease to expire
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +2000ms
        "#]],
    );
    // Attached to no lease, it never expires: the reason says what to do.
    check(
        &format!(
            "config: me=n2
             lease: id=7 deadline=105
             {GARBAGE_LEADER}
             dcs: init=7001 leader=?@0 optime=0/3000000
             pg: running replica tl=1 recv=0/3000000 replay=0/3000000"
        ),
        expect![[r#"
            reason: the leader key exists but its value is unreadable and it is attached to no lease, so it never expires: waiting for its holder to rewrite it (delete the key if its holder is gone)
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +2000ms
        "#]],
    );
    // A primary that does not hold it stops; an empty data directory waits (no clone source,
    // and no bootstrap while a leader key exists).
    check(
        &format!(
            "config: me=n2
             lease: id=7 deadline=105
             {GARBAGE_LEADER}
             dcs: init=7001 leader=?@5 optime=0/3000000
             pg: running primary tl=1 flush=0/3000000"
        ),
        expect![[r#"
            reason: demoting self because I do not have the lock and I was a leader
            actions:
              1. stop postgres (immediate)
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    check(
        "config: me=n3
         lease: id=8 deadline=105
         dcs: leader=?@5
         pg: data=empty",
        expect![[r#"
            reason: the leader key exists but its value is unreadable: someone leads, not known who; waiting for its holder to rewrite it or for its lease to expire
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +2000ms
        "#]],
    );
    // Once the key went with its lease, the race is the normal one.
    check(
        &format!(
            "config: me=n2
             lease: id=7 deadline=105
             {GARBAGE_LEADER}
             dcs: init=7001 optime=0/3000000
             pg: running replica tl=1 recv=0/3000000 replay=0/3000000
             peer: n1 unreachable"
        ),
        expect![[r#"
            reason: promoted self to leader by acquiring session lock
            actions:
              1. acquire leader key
              2. promote postgres
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
}

#[test]
fn the_leader_epoch_is_remembered_while_the_key_exists() {
    let decide = |fixture: &str, epoch: Option<i64>| {
        let f = parse(fixture);
        let memory = Memory {
            leader_epoch: epoch,
            ..f.memory
        };
        super::decide(&memory, &f.obs, &f.config, f.now)
            .next_memory
            .leader_epoch
    };
    let ours = "config: me=n1
        lease: id=5 deadline=105
        dcs: init=7001 leader=n1@5 epoch=4
        member: n1 role=primary conn=10.0.0.1:5432
        pg: data=initialized state=in-production
        pg: running primary tl=1 flush=0/3000000";
    assert_eq!(decide(ours, None), Some(4), "learnt while we hold the key");
    let garbage = ours.replace("leader=n1@5", "leader=?@0");
    assert_eq!(
        decide(&garbage, Some(4)),
        Some(4),
        "kept while the key exists"
    );
    let other = ours.replace("leader=n1@5 epoch=4", "leader=n2@9 epoch=6");
    assert_eq!(decide(&other, Some(4)), None, "forgotten with the key");
    let unreachable = "config: me=n1
        lease: id=5 deadline=105
        dcs: unreachable
        pg: data=initialized state=in-production";
    assert_eq!(
        decide(unreachable, Some(4)),
        Some(4),
        "no news is no change"
    );
}

#[test]
fn a_standby_cluster_request_in_the_dcs_stops_the_primary_and_blocks_leadership() {
    // The leader: PostgreSQL stopped cleanly, key released.
    check(
        "
        config: me=n1 blocker=standby_cluster
        lease: id=5 deadline=105
        dcs: init=7001 leader=n1@5 optime=0/3000000
        member: n1 role=primary conn=10.0.0.1:5432
        member: n2 role=replica conn=10.0.0.2:5432
        pg: data=initialized state=in-production
        pg: running primary tl=1 flush=0/3000000 slots=n2
        ",
        expect![[r#"
            reason: the dynamic configuration sets standby_cluster, which pgbaton does not support yet: no writable primary runs in this cluster until it is removed (edit-config)
            actions:
              1. stop postgres (fast)
              2. release leader key
            memory: leader=true following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    // Afterwards it comes back read-only, without an upstream.
    check(
        "
        config: me=n1 blocker=standby_cluster
        lease: id=5 deadline=105
        dcs: init=7001 optime=0/3000000
        member: n2 role=replica conn=10.0.0.2:5432
        pg: data=initialized state=shut-down
        ",
        expect![[r#"
            reason: the dynamic configuration sets standby_cluster, which pgbaton does not support yet: no writable primary runs in this cluster until it is removed (edit-config)
            actions:
              1. start postgres as replica without upstream
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +0ms
        "#]],
    );
    // A leaderless, healthiest standby does not race.
    check(
        "
        config: blocker=standby_cluster
        lease: id=7 deadline=105
        dcs: init=7001 optime=0/3000000
        member: n2 role=replica xlog=0/3000000 conn=10.0.0.2:5432
        member: n3 role=replica xlog=0/2000000 conn=10.0.0.3:5432
        pg: data=initialized
        pg: running replica tl=1 recv=0/3000000 replay=0/3000000
        peer: n3 reachable wal=0/2000000 tl=1
        ",
        expect![[r#"
            reason: the dynamic configuration sets standby_cluster, which pgbaton does not support yet: no writable primary runs in this cluster until it is removed (edit-config)
            actions: none
            memory: leader=false following=- down_since=- rewind_failed=-
            wake: +1000ms
        "#]],
    );
}
