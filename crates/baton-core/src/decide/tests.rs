//! Decision tests: a cluster described as text, the decision rendered as text.
//!
//! The cases are data, in `crates/baton-core/testdata/decide/*.txt` (one file per rule or
//! theme; `testdata/decide/README.md` says which). [`decision_fixtures`] runs every case of
//! every file and compares the rendered decision with the expected block; a mismatch fails
//! with `file:line`, the case name and a line diff. `UPDATE_EXPECT=1 cargo test -p baton-core
//! decision_fixtures` rewrites the expected blocks in place instead (review the diff).
//!
//! A file is a sequence of blocks separated by blank lines; `#` lines are comments:
//! ```text
//! # A file comment.
//!
//! preamble CLUSTER
//! # What the preamble describes.
//! lease: id=7 deadline=105
//! member: n1 role=primary xlog=0/3000000 conn=10.0.0.1:5432
//!
//! case replica_follows_the_leader show=memory,revisions
//! # Why this case exists.
//! include: CLUSTER
//! pg: data=initialized
//! ----
//! reason: ...
//! ```
//! `preamble NAME` defines fixture lines once; `include: NAME` stands for them where it
//! appears (a preamble may include another). Names are looked up in the file itself, then in
//! `_preambles.txt` (the ones several files share). Lines are read in order and a later line
//! overrides what an earlier one set (a second `dcs:` line after an `include:`, say);
//! `member:` and `peer:` lines add up.
//! `case NAME` holds fixture lines, `----`, then the expected decision up to the next blank
//! line: `reason:`, the numbered `actions:`, `memory:` (part of the next memory) and
//! `wake:` (the next wake-up, relative to `now`). `show=` renders more: `memory` adds a
//! `memory+:` line with the rest of the next memory, `revisions` the compare-and-swap
//! revision of each action that has one. Each case starts from a fresh memory, except that
//! `memory: previous` continues from the memory the case above it in the file returned.
//! Every decision test is such a case: the Rust tests in this file test the runner itself.
//!
//! Fixture lines (`key: tokens`, tokens are `k=v` or bare words):
//! ```text
//! config: me=n2 ttl=10 loop_wait=2 lag=1048576 start_timeout=300 rewind=on slots=on wipe=off pause=off bootstrap=on nofailover=off priority=1 no_leader=off
//!     (each `config:` line changes only what it names; no_leader=on: a replica method works
//!      without a leader; blocker=standby_cluster: a dynamic
//!      configuration key pgbaton must not ignore)
//! now: 100
//! lease: id=7 deadline=105            (or `lease: none`)
//! dcs: init=7001 leader=n1@5 optime=0/3000000 history=1 config=yes     (or `dcs: unreachable`)
//!     (leader=?@5: a leader key on lease 5 whose value does not decode; epoch=N its
//!      create_revision, default 1)
//!     (history=N: timelines 1..=N ended at N·0/1000000: TL1 at 0/1000000, TL2 at 0/2000000;
//!      creator=n1: the member whose promotion ended the last one)
//! member: n1 role=primary xlog=0/3000000 conn=10.0.0.1:5432 tl=2 nostream nofailover priority=2
//!     state=stopped streaming archive clonefrom replicatefrom=n3
//!     (state: the member key's `state`, default running; streaming / archive:
//!      `replication_state` `streaming` / `in archive recovery`; the tags words work on `config:` lines too, for this member's own tags)
//! pg: data=initialized sysid=7001 state=in-archive-recovery tl=1 ckpt=0/2000000
//! pg: running primary|replica|nosql tl=1 hist=2 flush=0/3000000 recv=.. replay=.. slots=n1,n3
//!     (hist: the newest timeline history file in pg_wal)
//! peer: n3 reachable|unreachable wal=0/2000000 tl=1 primary nofailover priority=2 watchdog_failed
//! memory: following=n1 down_since=90 rewind_failed=n1 nostream_since=70 epoch=1 handed_over
//!     was_leader sync_changed=0/3000100     (or `memory: previous`, see above)
//! failure: rewind at=99              (the previous cycle's actions failed: rewind, start, clone,
//!                                      pre_promote: a promotion's pre_promote script)
//! outcome: took_key lease=7|missed_key|released_key   (what they did with the leader key)
//! running: clone|rewind|bootstrap|start|restart   (a long action the agent runs beside the loop)
//! restart_at: 1795323600000 role=replica pending   (a scheduled restart, wall clock ms)
//! failover: leader=n1 candidate=n2 at=2026-11-22T05:00:00+00:00 rev=9
//! config: watchdog=off|automatic|required     (default off)
//! watchdog: armed failed       (the agent's watchdog state; each word present or not)
//! unix: 1795323590000          (wall clock, ms; default 1795323600000 = 2026-11-22T05:00:00Z)
//! config: failsafe=on;  dcs: failsafe=n1,n2,n3     (the `/failsafe` topology; every member's
//!     api_url is http://NAME:8008/patroni)
//! failsafe: round=120 topology=n1,n2,n3 accepted=n2,n3 ping=n1@115
//!     (round: the leader's last POST /failsafe round and the deadline it proves;
//!      ping: a POST /failsafe this member accepted, from n1, valid until 115)
//! config: sync=on|quorum strict=on count=2 maxlag=1000;  dcs: sync=n1:n2,n3@7 quorum=1
//!     (leader:standbys@revision; quorum= the `/sync` quorum; sync=?@7 a `/sync` that does
//!      not decode; sync=-:n2@7 one that names no leader)
//! pg: running primary ssn=2~(n2,n3) repl=n2:sync:0_3000000,n3:async:0_2000000:0_1000000
//!     commit=remote_apply
//!     (`~` stands for a space, `_` for `/` inside repl; repl rows are name:sync_state:flush
//!      with an optional :replay, which defaults to flush; commit= is synchronous_commit)
//! ```
//! permanent: perm1 physical | lslot logical db=postgres plugin=test_decoding
//!     (an entry of the dynamic `slots` section, a physical one with an optional
//!      cluster_type=primary|standby; `config: member_slots_ttl=30` seconds)
//! pgslot: lslot logical db=postgres plugin=test_decoding pos=0/3000000 ours
//!     (a slot on the instance, after `pg: running`; `ours`: in pgbaton's record; an own
//!      physical slot is also one of the `slots=` names)
//! status: slots=perm1@0/3000000,lslot@0/2800000 retain=n1,n3   (the leader's `/status`)
//! memory: seen=n1@90,n3@80 copied=95   (the leader's member slot record; the last copy of
//!     logical slots; `show=slots` renders both)
//! memory: primed pending=cdc@700,new@- phys_xmin=720   (copied logical slots not yet known
//!     safe after a failover, `crate::slot_readiness`; `show=slots` renders them)
//! outcome: primary_slots physical=n2 xmin=720|none|missing logical=cdc@700
//!     (what `CheckLogicalSlots` read on the leader)
//! pgslot: ... xmin=700   (a logical slot's catalog_xmin)
//! ignore: name=n3 type=physical db=.. plugin=..   (an `ignore_slots` entry)
//! Times are seconds on the monotonic clock.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::Duration;

use expect_test::expect;

use crate::ActionOutcome;
use crate::decision::{
    Action, ActionFailure, ActionKind, FailsafePing, FailsafeRound, HaConfig, LeaseState, Memory,
    Observation, PeerStatus, StandbyCluster, SyncConfig, SyncMode, WatchdogMode, WatchdogState,
};
use crate::pg::{
    ClusterState, ControlData, DataDir, PgProcess, PgSql, ReplicationRow, TimelineStart,
};
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

fn slot_kind(t: &Tokens<'_>) -> crate::slots::SlotKind {
    if t.has("logical") {
        crate::slots::SlotKind::Logical {
            database: t.get("db").unwrap_or("postgres").to_owned(),
            plugin: t.get("plugin").unwrap_or("test_decoding").to_owned(),
        }
    } else {
        crate::slots::SlotKind::Physical
    }
}

fn tags(t: &Tokens<'_>) -> Tags {
    Tags {
        nofailover: t.has("nofailover").then_some(true),
        failover_priority: t.get("priority").map(|p| p.parse().expect("priority")),
        nostream: t.has("nostream"),
        clonefrom: t.has("clonefrom"),
        replicatefrom: t.get("replicatefrom").map(str::to_owned),
        ..Tags::default()
    }
}

struct Fixture {
    memory: Memory,
    obs: Observation,
    config: HaConfig,
    now: Mono,
}

/// The fixture lines of one case (includes expanded); `previous` is the memory the case
/// before it returned, for `memory: previous`.
fn parse(fixture: &str, previous: Option<&Memory>) -> Fixture {
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
        clone_without_leader: false,
        sync: SyncConfig::default(),
        watchdog: WatchdogMode::Off,
        failsafe_mode: false,
        standby_cluster: None,
        permanent_slots: Vec::new(),
        member_slots_ttl: crate::slots::DEFAULT_MEMBER_SLOTS_TTL,
        ignore_slots: Vec::new(),
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
                // `standby=HOST:PORT` (`standby=off` removes it), `standby_slot=NAME`.
                match t.get("standby") {
                    Some("off") => config.standby_cluster = None,
                    Some(addr) => {
                        let (host, port) = addr.rsplit_once(':').expect("standby=HOST:PORT");
                        config.standby_cluster = Some(StandbyCluster {
                            host: (!host.is_empty()).then(|| host.to_owned()),
                            port: port.parse().expect("standby port"),
                            ..StandbyCluster::default()
                        });
                    }
                    None => {}
                }
                if let (Some(slot), Some(sc)) =
                    (t.get("standby_slot"), config.standby_cluster.as_mut())
                {
                    sc.primary_slot_name = Some(slot.to_owned());
                }
                if let Some(key) = t.get("blocker") {
                    config.unsupported_blocker = Some(key.to_owned());
                }
                config.remove_data_directory_on_rewind_failure =
                    t.on("wipe", config.remove_data_directory_on_rewind_failure);
                config.pause = t.on("pause", config.pause);
                config.can_bootstrap = t.on("bootstrap", config.can_bootstrap);
                config.clone_without_leader = t.on("no_leader", config.clone_without_leader);
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
                match t.get("watchdog") {
                    Some("off") => config.watchdog = WatchdogMode::Off,
                    Some("automatic") => config.watchdog = WatchdogMode::Automatic,
                    Some("required") => config.watchdog = WatchdogMode::Required,
                    Some(other) => panic!("watchdog={other}"),
                    None => {}
                }
                config.failsafe_mode = t.on("failsafe", config.failsafe_mode);
                config.member_slots_ttl = dur("member_slots_ttl", config.member_slots_ttl);
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
                if let Some(names) = t.get("failsafe") {
                    v.failsafe = Some(
                        names
                            .split(',')
                            .map(|n| (name(n), format!("http://{n}:8008/patroni")))
                            .collect(),
                    );
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
                    state: t.get("state").unwrap_or("running").to_owned(),
                    replication_state: if t.has("streaming") {
                        Some("streaming".to_owned())
                    } else if t.has("archive") {
                        Some("in archive recovery".to_owned())
                    } else {
                        None
                    },
                    conn_url: t.get("conn").map(|c| format!("postgres://{c}/postgres")),
                    api_url: Some(format!("http://{}:8008/patroni", t.first())),
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
                            // began=<parent>@<lsn>: our timeline began where parent ended.
                            timeline_start: t.get("began").map(|v| {
                                let (parent, at) = v.split_once('@').expect("began=P@LSN");
                                let parent = Timeline(parent.parse().expect("began parent"));
                                TimelineStart {
                                    timeline: Timeline(
                                        t.get("tl").map_or(1, |v| v.parse().expect("tl")),
                                    ),
                                    parent,
                                    at: lsn(at),
                                }
                            }),
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
            "permanent" => {
                // permanent: NAME physical [cluster_type=primary|standby]
                //          | NAME logical db=postgres plugin=test_decoding
                config.permanent_slots.push(crate::slots::PermanentSlot {
                    name: t.first().to_owned(),
                    kind: slot_kind(&t),
                    cluster_type: t.get("cluster_type").map(|v| match v {
                        "primary" => crate::slots::ClusterType::Primary,
                        "standby" => crate::slots::ClusterType::Standby,
                        other => panic!("permanent: cluster_type={other}"),
                    }),
                });
            }
            "ignore" => {
                // ignore: [name=NAME] [type=physical|logical] [db=..] [plugin=..] (`ignore_slots`)
                config.ignore_slots.push(crate::slots::SlotMatcher {
                    name: t.get("name").map(str::to_owned),
                    slot_type: t.get("type").map(|v| match v {
                        "physical" => crate::slots::SlotType::Physical,
                        "logical" => crate::slots::SlotType::Logical,
                        other => panic!("ignore: type={other}"),
                    }),
                    database: t.get("db").map(str::to_owned),
                    plugin: t.get("plugin").map(str::to_owned),
                });
            }
            "pgslot" => {
                // pgslot: NAME physical|logical db=.. plugin=.. pos=0/3000000 ours
                let sql = obs.pg.sql.as_mut().expect("`pgslot:` after `pg: running`");
                let info = crate::slots::SlotInfo {
                    name: t.first().to_owned(),
                    kind: slot_kind(&t),
                    position: t.get("pos").map(lsn),
                    ours: t.has("ours"),
                    catalog_xmin: t.get("xmin").map(|x| x.parse().expect("xmin")),
                };
                if info.ours
                    && info.kind == crate::slots::SlotKind::Physical
                    && !sql.slots.contains(&info.name)
                {
                    sql.slots.push(info.name.clone());
                }
                sql.replication_slots.push(info);
            }
            "status" => {
                // status: slots=a@0/3000000,b@0/2000000 retain=n1,n3 (after `dcs:`)
                let v = view.get_or_insert_with(ClusterView::default);
                let st = v.status.get_or_insert_with(LeaderStatus::default);
                if let Some(list) = t.get("slots") {
                    for item in list.split(',').filter(|i| !i.is_empty()) {
                        let (n, l) = item.split_once('@').expect("slots=name@lsn");
                        st.slots.insert(n.to_owned(), lsn(l));
                    }
                }
                if let Some(list) = t.get("retain") {
                    st.retain_slots = list.split(',').map(str::to_owned).collect();
                }
            }
            "peer" => obs.peers.push(PeerStatus {
                name: name(t.first()),
                reachable: !t.has("unreachable"),
                is_primary: t.has("primary"),
                wal_position: t.get("wal").map(lsn),
                timeline: Some(Timeline(t.get("tl").map_or(1, |v| v.parse().expect("tl")))),
                tags: tags(&t),
                watchdog_failed: t.has("watchdog_failed"),
            }),
            "memory" => {
                if t.has("previous") {
                    assert_eq!(t.words.len(), 1, "`memory: previous` takes no other token");
                    memory = previous
                        .expect("`memory: previous` needs a case before it in the same file")
                        .clone();
                    continue;
                }
                memory.following = t.get("following").map(name);
                memory.primary_down_since = t.get("down_since").map(secs);
                memory.rewind_failed_against = t.get("rewind_failed").map(name);
                memory.not_streaming_since = t.get("nostream_since").map(secs);
                memory.handed_over = t.has("handed_over");
                memory.leader_epoch = t.get("epoch").map(|e| e.parse().expect("epoch"));
                memory.was_leader = t.has("was_leader");
                memory.sync_changed_at = t.get("sync_changed").map(lsn);
                if let Some(list) = t.get("seen") {
                    // seen=n1@90,n3@80: member slot names and when the leader last saw them
                    memory.slots_seen = list
                        .split(',')
                        .map(|item| {
                            let (n, at) = item.split_once('@').expect("seen=name@secs");
                            (n.to_owned(), secs(at))
                        })
                        .collect();
                }
                memory.slots_copied_at = t.get("copied").map(secs);
                // pending=cdc@700,other@- primed phys_xmin=720: the copied logical slots not
                // yet known safe (`crate::slot_readiness`)
                let readiness = &mut memory.logical_readiness;
                readiness.primed = t.has("primed");
                readiness.physical_xmin = t.get("phys_xmin").map(|x| x.parse().expect("xmin"));
                if let Some(list) = t.get("pending") {
                    readiness.pending = list
                        .split(',')
                        .map(|item| {
                            let (n, x) = item.split_once('@').expect("pending=name@xmin|-");
                            (n.to_owned(), (x != "-").then(|| x.parse().expect("xmin")))
                        })
                        .collect();
                }
            }
            "watchdog" => {
                obs.watchdog = WatchdogState {
                    armed: t.has("armed"),
                    failed: t.has("failed"),
                }
            }
            "unix" => obs.unix_ms = t.first().parse().expect("unix ms"),
            "failsafe" => {
                let names = |k: &str| -> Vec<MemberName> {
                    t.get(k)
                        .map(|v| v.split(',').filter(|n| !n.is_empty()).map(name).collect())
                        .unwrap_or_default()
                };
                if let Some(until) = t.get("round") {
                    obs.failsafe.round = Some(FailsafeRound {
                        until: secs(until),
                        topology: names("topology"),
                        accepted: names("accepted"),
                    });
                }
                if let Some(ping) = t.get("ping") {
                    let (leader, until) = ping.split_once('@').expect("ping=leader@until");
                    obs.failsafe.accepted = Some(FailsafePing {
                        leader: name(leader),
                        until: secs(until),
                    });
                }
            }
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
            "restart_at" => {
                obs.scheduled_restart = Some(crate::ScheduledRestart {
                    schedule: "fixture".into(),
                    at_unix_ms: t.first().parse().expect("restart_at unix ms"),
                    filters: crate::RestartFilters {
                        role: t.get("role").and_then(crate::RestartRole::parse),
                        restart_pending: t.has("pending"),
                        ..crate::RestartFilters::default()
                    },
                    postmaster_start_time: None,
                })
            }
            "running" => {
                obs.running = Some(match t.first() {
                    "clone" => ActionKind::Clone,
                    "rewind" => ActionKind::Rewind,
                    "bootstrap" => ActionKind::BootstrapCluster,
                    "start" => ActionKind::StartPostgres,
                    "restart" => ActionKind::RestartPostgres,
                    other => panic!("unknown running action {other}"),
                })
            }
            "outcome" => obs.outcomes.push(match t.first() {
                "took_key" => ActionOutcome::TookKey {
                    lease: t.get("lease").map_or(7, |l| l.parse().expect("lease")),
                },
                "missed_key" => ActionOutcome::MissedKey,
                "released_key" => ActionOutcome::ReleasedKey,
                "primary_slots" => {
                    // outcome: primary_slots physical=n2 xmin=720|none|missing logical=cdc@700
                    let xmin = t.get("xmin").expect("xmin=");
                    ActionOutcome::PrimarySlots(crate::slot_readiness::PrimarySlots {
                        physical: t.get("physical").expect("physical=").to_owned(),
                        physical_xmin: match xmin {
                            "missing" => None,
                            "none" => Some(None),
                            x => Some(Some(x.parse().expect("xmin"))),
                        },
                        logical: t
                            .get("logical")
                            .unwrap_or("")
                            .split(',')
                            .filter(|i| !i.is_empty())
                            .map(|item| {
                                let (n, x) = item.split_once('@').expect("logical=name@xmin");
                                (n.to_owned(), Some(x.parse().expect("xmin")))
                            })
                            .collect(),
                    })
                }
                other => panic!("unknown outcome {other}"),
            }),
            "failure" => obs.outcomes.push(ActionOutcome::Failed(ActionFailure {
                action: match t.first() {
                    "rewind" => ActionKind::Rewind,
                    "start" => ActionKind::StartPostgres,
                    "pre_promote" => ActionKind::PrePromote,
                    "clone" => ActionKind::Clone,
                    "bootstrap" => ActionKind::BootstrapCluster,
                    other => panic!("unknown failure kind {other}"),
                },
                at: t.get("at").map_or(now, secs),
                error: "exit status 1".into(),
            })),
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

/// What a case renders beyond the default (`show=` on its `case` line).
#[derive(Clone, Copy, Debug, Default)]
struct Show {
    /// A `memory+:` line with the fields of the next memory the `memory:` line leaves out.
    memory: bool,
    /// The compare-and-swap revision of each action that carries one.
    revisions: bool,
    /// A `slots:` line: the leader's record of member slots (`retain_slots`) and the last
    /// copy of logical slots.
    slots: bool,
}

/// The decision for a fixture, rendered, and the memory it hands to the next cycle.
fn render(f: &Fixture, show: Show) -> (String, Memory) {
    let d = super::decide(&f.memory, &f.obs, &f.config, f.now);
    let mut out = String::new();
    writeln!(out, "reason: {}", d.reason).unwrap();
    if d.actions.is_empty() {
        writeln!(out, "actions: none").unwrap();
    } else {
        writeln!(out, "actions:").unwrap();
        for (i, a) in d.actions.iter().enumerate() {
            write!(out, "  {}. {a}", i + 1).unwrap();
            if show.revisions
                && let Some(rev) = revision(a)
            {
                write!(out, " (at revision {rev})").unwrap();
            }
            writeln!(out).unwrap();
        }
    }
    let m = &d.next_memory;
    let opt = |n: &Option<MemberName>| n.as_ref().map_or("-".to_owned(), |n| n.to_string());
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
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
    if show.memory {
        writeln!(
            out,
            "memory+: sync_changed={} nostream_since={} handed_over={} epoch={}",
            or_dash(m.sync_changed_at.map(|l| l.to_string())),
            or_dash(m.not_streaming_since.map(|t| t.to_string())),
            m.handed_over,
            or_dash(m.leader_epoch.map(|e| e.to_string())),
        )
        .unwrap();
        if let Some((at, error)) = &m.pre_promote_failed {
            writeln!(out, "memory+: pre_promote_failed={at} ({error})").unwrap();
        }
        if let Some((at, error)) = &m.bootstrap_failed {
            writeln!(out, "memory+: bootstrap_failed={at} ({error})").unwrap();
        }
    }
    if show.slots {
        let seen: Vec<String> = m
            .slots_seen
            .iter()
            .map(|(n, at)| format!("{n}@{at}"))
            .collect();
        writeln!(
            out,
            "slots: seen=[{}] copied={}",
            seen.join(","),
            or_dash(m.slots_copied_at.map(|t| t.to_string())),
        )
        .unwrap();
        let r = &m.logical_readiness;
        if r.primed || !r.pending.is_empty() {
            let pending: Vec<String> = r
                .pending
                .iter()
                .map(|(n, x)| format!("{n}@{}", or_dash(x.map(|x| x.to_string()))))
                .collect();
            writeln!(
                out,
                "readiness: pending=[{}] ready=[{}] problem={}",
                pending.join(","),
                r.ready.join(","),
                or_dash(r.problem.clone()),
            )
            .unwrap();
        }
    }
    writeln!(
        out,
        "wake: +{}ms",
        d.wake_at.as_millis().saturating_sub(f.now.as_millis())
    )
    .unwrap();
    (out, d.next_memory)
}

/// The revision an action compares against before it writes (0: the key must not exist).
fn revision(action: &Action) -> Option<i64> {
    match action {
        Action::RepairLeader { version }
        | Action::ClearFailover { version }
        | Action::WriteSync { version, .. } => Some(*version),
        _ => None,
    }
}

/// `preamble NAME`: fixture lines defined once.
struct Preamble {
    /// Fixture lines with their line numbers (1-based), comments left out.
    lines: Vec<(usize, String)>,
}

/// `case NAME`: fixture lines, `----`, the expected decision.
struct Case {
    name: String,
    /// The line of `case NAME` (1-based).
    line: usize,
    show: Show,
    fixture: Vec<(usize, String)>,
    /// Where the expected lines are in the file (0-based; empty when there are none yet).
    expected: Range<usize>,
}

/// One file under `testdata/decide/`.
struct DataFile {
    /// The name the messages use (`testdata/decide/sync.txt`).
    name: String,
    lines: Vec<String>,
    preambles: BTreeMap<String, Preamble>,
    cases: Vec<Case>,
}

impl DataFile {
    fn parse(name: &str, text: &str) -> Result<DataFile, String> {
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let blank = |i: usize| lines.get(i).is_none_or(|l| l.trim().is_empty());
        let comment = |i: usize| lines[i].trim_start().starts_with('#');
        let at = |i: usize| format!("{name}:{}", i + 1);
        let mut preambles = BTreeMap::new();
        let mut cases = vec![];
        let mut i = 0;
        while i < lines.len() {
            if blank(i) || comment(i) {
                i += 1;
                continue;
            }
            let header = i;
            let mut words = lines[i].split_whitespace();
            let kind = words.next().unwrap_or_default();
            let Some(block) = words.next().map(str::to_owned) else {
                return Err(format!("{}: `{kind}` needs a name", at(i)));
            };
            i += 1;
            match kind {
                "preamble" => {
                    if let Some(extra) = words.next() {
                        return Err(format!("{}: unexpected `{extra}`", at(header)));
                    }
                    let mut body = vec![];
                    while !blank(i) {
                        if lines[i].trim() == "----" {
                            return Err(format!("{}: a preamble has no expected output", at(i)));
                        }
                        if !comment(i) {
                            body.push((i + 1, lines[i].trim().to_owned()));
                        }
                        i += 1;
                    }
                    if preambles
                        .insert(block.clone(), Preamble { lines: body })
                        .is_some()
                    {
                        return Err(format!("{}: preamble {block} is defined twice", at(header)));
                    }
                }
                "case" => {
                    let mut show = Show::default();
                    for word in words {
                        let Some(list) = word.strip_prefix("show=") else {
                            return Err(format!("{}: unknown option `{word}`", at(header)));
                        };
                        for item in list.split(',') {
                            match item {
                                "memory" => show.memory = true,
                                "revisions" => show.revisions = true,
                                "slots" => show.slots = true,
                                _ => return Err(format!("{}: unknown show={item}", at(header))),
                            }
                        }
                    }
                    let mut fixture = vec![];
                    while lines.get(i).is_none_or(|l| l.trim() != "----") {
                        if blank(i) {
                            return Err(format!("{}: case {block} has no `----` line", at(header)));
                        }
                        if !comment(i) {
                            fixture.push((i + 1, lines[i].trim().to_owned()));
                        }
                        i += 1;
                    }
                    i += 1;
                    let start = i;
                    while !blank(i) {
                        i += 1;
                    }
                    cases.push(Case {
                        name: block,
                        line: header + 1,
                        show,
                        fixture,
                        expected: start..i,
                    });
                }
                _ => {
                    return Err(format!(
                        "{}: expected `case NAME`, `preamble NAME`, a `#` comment or a blank line",
                        at(header)
                    ));
                }
            }
        }
        Ok(DataFile {
            name: name.to_owned(),
            lines,
            preambles,
            cases,
        })
    }
}

/// `lines` with each `include: NAME` replaced by the preamble's lines: the file's own
/// preamble, else the shared one. `used` collects (defining file, preamble) pairs.
fn expand(
    file: &DataFile,
    shared: &DataFile,
    lines: &[(usize, String)],
    stack: &mut Vec<String>,
    used: &mut BTreeSet<(String, String)>,
) -> Result<Vec<String>, String> {
    let mut out = vec![];
    for (n, line) in lines {
        let Some(name) = line.strip_prefix("include:").map(str::trim) else {
            out.push(line.clone());
            continue;
        };
        let (def, preamble) = match (file.preambles.get(name), shared.preambles.get(name)) {
            (Some(p), _) => (file, p),
            (None, Some(p)) => (shared, p),
            (None, None) => {
                return Err(format!(
                    "{}:{n}: no preamble {name} in this file or in {}",
                    file.name, shared.name
                ));
            }
        };
        if stack.iter().any(|s| s == name) {
            return Err(format!(
                "{}:{n}: preamble {name} includes itself",
                file.name
            ));
        }
        used.insert((def.name.clone(), name.to_owned()));
        stack.push(name.to_owned());
        out.extend(expand(def, shared, &preamble.lines, stack, used)?);
        stack.pop();
    }
    Ok(out)
}

/// What running the cases of one file found.
struct Outcome {
    /// Cases that could not run: an unknown preamble, a fixture the parser rejects.
    errors: Vec<String>,
    /// Cases whose decision differs from the expected block, with a diff.
    mismatches: Vec<String>,
    /// The file with those expected blocks replaced by the actual decisions.
    blessed: Option<String>,
}

fn run_file(file: &DataFile, shared: &DataFile, used: &mut BTreeSet<(String, String)>) -> Outcome {
    let mut errors = vec![];
    let mut mismatches = vec![];
    let mut replace: Vec<(Range<usize>, String)> = vec![];
    let mut previous: Option<Memory> = None;
    for case in &file.cases {
        let at = format!("{}:{}: case {}", file.name, case.line, case.name);
        let prev = previous.take();
        let lines = match expand(file, shared, &case.fixture, &mut vec![], used) {
            Ok(lines) => lines,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let show = case.show;
        let ran = catch_unwind(AssertUnwindSafe(|| {
            render(&parse(&lines.join("\n"), prev.as_ref()), show)
        }));
        let (actual, next) = match ran {
            Ok(ran) => ran,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                errors.push(format!("{at}: {why}"));
                continue;
            }
        };
        previous = Some(next);
        let expected = &file.lines[case.expected.clone()];
        if actual.lines().ne(expected.iter().map(String::as_str)) {
            mismatches.push(format!(
                "{at}: the decision differs (- expected, + actual):\n{}",
                diff(expected, &actual)
            ));
            replace.push((case.expected.clone(), actual));
        }
    }
    let blessed = (!replace.is_empty()).then(|| {
        let mut out = String::new();
        let mut k = 0;
        for (range, actual) in &replace {
            for line in &file.lines[k..range.start] {
                writeln!(out, "{line}").unwrap();
            }
            out.push_str(actual);
            k = range.end;
        }
        for line in &file.lines[k..] {
            writeln!(out, "{line}").unwrap();
        }
        out
    });
    Outcome {
        errors,
        mismatches,
        blessed,
    }
}

/// A line diff (longest common subsequence): `  ` both, `- ` expected only, `+ ` actual only.
fn diff(expected: &[String], actual: &str) -> String {
    let a: Vec<&str> = expected.iter().map(String::as_str).collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = String::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            writeln!(out, "  {}", a[i]).unwrap();
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            writeln!(out, "- {}", a[i]).unwrap();
            i += 1;
        } else {
            writeln!(out, "+ {}", b[j]).unwrap();
            j += 1;
        }
    }
    out
}

/// Every case of every file under `testdata/decide/` (see the module docs).
#[test]
fn decision_fixtures() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/decide");
    let read = |file: &str| {
        let text = std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("read testdata/decide/{file}: {e}"));
        DataFile::parse(&format!("testdata/decide/{file}"), &text).unwrap_or_else(|e| panic!("{e}"))
    };
    let shared = read("_preambles.txt");
    assert!(
        shared.cases.is_empty(),
        "{} holds preambles only",
        shared.name
    );
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("list testdata/decide")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".txt") && n != "_preambles.txt")
        .collect();
    names.sort();
    assert!(
        !names.is_empty(),
        "no decision fixtures in {}",
        dir.display()
    );

    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = vec![];
    let mut cases = 0;
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut defined: Vec<(String, String)> = shared
        .preambles
        .keys()
        .map(|p| (shared.name.clone(), p.clone()))
        .collect();
    let mut used = BTreeSet::new();
    for name in &names {
        let file = read(name);
        if file.cases.is_empty() {
            failures.push(format!("{}: no cases", file.name));
        }
        for case in &file.cases {
            let here = format!("{}:{}", file.name, case.line);
            if let Some(first) = seen.insert(case.name.clone(), here.clone()) {
                failures.push(format!("{here}: case {} is also at {first}", case.name));
            }
        }
        defined.extend(
            file.preambles
                .keys()
                .map(|p| (file.name.clone(), p.clone())),
        );
        cases += file.cases.len();
        let outcome = run_file(&file, &shared, &mut used);
        failures.extend(outcome.errors);
        match outcome.blessed {
            Some(text) if update => std::fs::write(dir.join(name), text)
                .unwrap_or_else(|e| panic!("write {}: {e}", file.name)),
            _ => failures.extend(outcome.mismatches),
        }
    }
    for (file, preamble) in defined {
        if !used.contains(&(file.clone(), preamble.clone())) {
            failures.push(format!("{file}: preamble {preamble} is never included"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems in {cases} decision fixtures (UPDATE_EXPECT=1 rewrites the expected \
         blocks):\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The runner: a wrong expectation fails with its place and a diff, blessing rewrites just
/// the expected blocks, and `memory: previous` continues from the case above.
#[test]
fn the_runner_reports_and_blesses_mismatches() {
    let shared = DataFile::parse(
        "shared.txt",
        "preamble EMPTY\n# Nothing in the DCS.\nlease: id=7 deadline=105\ndcs:\n",
    )
    .unwrap();
    let text = "# A file.\n\ncase wrong\ninclude: EMPTY\npg: data=empty\n----\nreason: wrong\n\n\
                case missing show=memory\n# No expectation yet.\ninclude: EMPTY\n\
                config: bootstrap=off\npg: data=empty\nmemory: handed_over\n----\n\n\
                case previous show=memory\ninclude: EMPTY\ndcs: init=\"\"\npg: data=empty\n\
                memory: previous\n----\n";
    let file = DataFile::parse("t.txt", text).unwrap();
    let out = run_file(&file, &shared, &mut BTreeSet::new());
    assert_eq!(out.errors, Vec::<String>::new());
    expect![[r#"
        t.txt:3: case wrong: the decision differs (- expected, + actual):
        - reason: wrong
        + reason: trying to bootstrap a new cluster
        + actions:
        +   1. race for initialize key
        +   2. bootstrap new cluster
        + memory: leader=false following=- down_since=- rewind_failed=-
        + wake: +0ms
    "#]]
    .assert_eq(&out.mismatches[0]);
    assert_eq!(out.mismatches.len(), 3);
    let blessed = out.blessed.expect("blessed");
    expect![[r##"
        # A file.

        case wrong
        include: EMPTY
        pg: data=empty
        ----
        reason: trying to bootstrap a new cluster
        actions:
          1. race for initialize key
          2. bootstrap new cluster
        memory: leader=false following=- down_since=- rewind_failed=-
        wake: +0ms

        case missing show=memory
        # No expectation yet.
        include: EMPTY
        config: bootstrap=off
        pg: data=empty
        memory: handed_over
        ----
        reason: not allowed to bootstrap a new cluster (nofailover or no bootstrap section); waiting for a leader
        actions: none
        memory: leader=false following=- down_since=- rewind_failed=-
        memory+: sync_changed=- nostream_since=- handed_over=true epoch=-
        wake: +1000ms

        case previous show=memory
        include: EMPTY
        dcs: init=""
        pg: data=empty
        memory: previous
        ----
        reason: waiting for leader to bootstrap
        actions: none
        memory: leader=false following=- down_since=- rewind_failed=-
        memory+: sync_changed=- nostream_since=- handed_over=true epoch=-
        wake: +1000ms
    "##]]
    .assert_eq(&blessed);
    let again = run_file(
        &DataFile::parse("t.txt", &blessed).unwrap(),
        &shared,
        &mut BTreeSet::new(),
    );
    assert!(again.errors.is_empty() && again.mismatches.is_empty() && again.blessed.is_none());
}

/// Files and cases the runner cannot use are reported with their place.
#[test]
fn the_runner_rejects_malformed_files_with_their_place() {
    let parse_err = |text: &str| DataFile::parse("t.txt", text).err().unwrap_or_default();
    assert_eq!(
        parse_err("case a\npg: data=empty\n\nreason: x\n"),
        "t.txt:1: case a has no `----` line"
    );
    assert_eq!(
        parse_err("\nfixture a\n"),
        "t.txt:2: expected `case NAME`, `preamble NAME`, a `#` comment or a blank line"
    );
    assert_eq!(
        parse_err("case a shwo=memory\n----\n"),
        "t.txt:1: unknown option `shwo=memory`"
    );
    assert_eq!(
        parse_err("preamble P\nnow: 1\n\npreamble P\nnow: 2\n"),
        "t.txt:4: preamble P is defined twice"
    );
    let shared = DataFile::parse("shared.txt", "preamble LOOP\ninclude: LOOP\n").unwrap();
    let file = DataFile::parse(
        "t.txt",
        "case unknown\ninclude: NOPE\n----\n\ncase looping\ninclude: LOOP\n----\n\n\
         case bad_key\nfrobnicate: yes\n----\n\ncase no_previous\nmemory: previous\n----\n",
    )
    .unwrap();
    let out = run_file(&file, &shared, &mut BTreeSet::new());
    assert_eq!(
        out.errors,
        [
            "t.txt:2: no preamble NOPE in this file or in shared.txt",
            "shared.txt:2: preamble LOOP includes itself",
            "t.txt:9: case bad_key: unknown fixture key frobnicate",
            "t.txt:13: case no_previous: `memory: previous` needs a case before it in the same file",
        ]
    );
}
