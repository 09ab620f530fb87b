//! The PostgreSQL model on its own: the rules the simulation leans on.

use super::*;

fn t(ms: u64) -> Mono {
    Mono::from_millis(ms)
}

fn model() -> Model {
    Model::new(
        ["n1", "n2", "n3"]
            .iter()
            .enumerate()
            .map(|(i, n)| ((*n).to_owned(), format!("10.0.0.{}", i + 1)))
            .collect(),
    )
}

const ALL: &dyn Fn(usize, usize) -> bool = &|_, _| true;

/// n1 primary, n2 and n3 streaming from it, `writes` writes replicated everywhere.
fn cluster(writes: usize) -> Model {
    let mut m = model();
    m.initdb(0, "7000".into(), t(0)).expect("initdb");
    let g = m.start(0, Role::Primary, None, t(0)).expect("start");
    m.start_ready(0, g, t(1));
    for i in [1, 2] {
        m.clone_from(i, 0, true).expect("clone");
        let g = m.start(i, Role::Standby, Some(0), t(2)).expect("start");
        m.start_ready(i, g, t(3));
    }
    for _ in 0..writes {
        m.write(0, t(4));
    }
    m.replicate(1_000, ALL, t(5));
    m
}

fn stream(m: &Model, i: usize) -> Stream {
    m.nodes[i].proc.as_ref().expect("running").stream.clone()
}

fn stop(m: &mut Model, i: usize, kind: StopKind) {
    if let Some(g) = m.stop(i, kind, t(10)) {
        m.stop_done(i, g, kind, t(10));
    }
}

fn promote(m: &mut Model, i: usize) {
    let g = m.promote(i, 1).expect("promote");
    m.promote_done(i, g, t(20));
}

#[test]
fn standbys_stream_and_the_durable_prefix_follows_them() {
    let mut m = cluster(3);
    assert_eq!(stream(&m, 1), Stream::Streaming);
    assert_eq!(
        m.durable.0, 4,
        "initdb record + 3 writes are on every member"
    );
    // A write only on the primary is not durable until it is replicated.
    m.write(0, t(6));
    m.update_durable();
    assert_eq!(m.durable.0, 4);
    m.replicate(1_000, ALL, t(7));
    assert_eq!(m.durable.0, 5);
    assert_eq!(m.durable_writes(), 4);
    // A cut link stops replication.
    m.write(0, t(8));
    m.replicate(1_000, &|a, b| !matches!((a.min(b), a.max(b)), (0, 1)), t(9));
    assert!(matches!(stream(&m, 1), Stream::Waiting(_)));
    assert_eq!(m.nodes[1].data.as_ref().map(|d| d.wal.len()), Some(5));
    assert_eq!(m.nodes[2].data.as_ref().map(|d| d.wal.len()), Some(6));
}

#[test]
fn promotion_switches_timeline_and_the_others_follow_the_switch() {
    let mut m = cluster(2);
    stop(&mut m, 0, StopKind::Immediate);
    promote(&mut m, 1);
    assert!(m.nodes[1].accepts_writes());
    assert_eq!(m.nodes[1].data.as_ref().map(Data::timeline), Some(2));
    let history = m.timeline_history(1).expect("history");
    assert_eq!(history.len(), 1);
    assert_eq!(
        (history[0].timeline, history[0].lsn),
        (Timeline(1), lsn_of(3))
    );
    // n3 (same position as n2 was) follows the new timeline.
    assert!(m.follow(2, 1));
    m.replicate(1_000, ALL, t(21));
    assert_eq!(stream(&m, 2), Stream::Streaming);
    assert_eq!(m.nodes[2].data.as_ref().map(Data::timeline), Some(2));
    assert!(m.violations.is_empty(), "{:?}", m.violations);
}

#[test]
fn an_old_primary_with_extra_wal_diverges_unless_rewound() {
    let mut m = cluster(2);
    // n1 writes more that nobody receives, then is fenced; n2 takes over.
    m.write(0, t(6));
    m.write(0, t(6));
    stop(&mut m, 0, StopKind::Immediate);
    assert_eq!(
        m.nodes[0].data.as_ref().map(|d| d.state),
        Some(ClusterState::InProduction)
    );
    promote(&mut m, 1);
    // Started as a standby of n2 as it is: it cannot stream, ever.
    let g = m.start(0, Role::Standby, Some(1), t(30)).expect("start");
    m.start_ready(0, g, t(31));
    m.replicate(1_000, ALL, t(32));
    assert!(
        matches!(&stream(&m, 0), Stream::Diverged(why) if why.contains("forked off")),
        "{:?}",
        stream(&m, 0)
    );
    assert!(m.nodes[0].standby_on_primary_dir);
    // Stopped, rewound (the writes nobody received are gone) and started: it streams.
    stop(&mut m, 0, StopKind::Fast);
    m.rewind(0, 1, true).expect("rewind");
    let g = m.start(0, Role::Standby, Some(1), t(40)).expect("start");
    m.start_ready(0, g, t(41));
    m.replicate(1_000, ALL, t(42));
    assert_eq!(stream(&m, 0), Stream::Streaming);
    assert_eq!(m.lost_writes(1).len(), 2);
}

#[test]
fn pg_rewind_does_nothing_on_the_same_timeline_and_fails_without_a_common_ancestor() {
    let mut m = cluster(1);
    m.write(0, t(6));
    stop(&mut m, 0, StopKind::Immediate);
    // n2 becomes a primary WITHOUT promotion (a standby directory started as a primary):
    // same timeline, PostgreSQL cannot tell the histories apart.
    stop(&mut m, 1, StopKind::Fast);
    let g = m.start(1, Role::Primary, None, t(30)).expect("start");
    m.start_ready(1, g, t(31));
    assert!(m.nodes[1].primary_without_switch);
    assert_eq!(m.nodes[1].data.as_ref().map(Data::timeline), Some(1));
    m.write(1, t(32));
    let before = m.nodes[0].data.as_ref().map(|d| d.wal.clone());
    m.rewind(0, 1, true).expect("no rewind required");
    assert_eq!(m.nodes[0].data.as_ref().map(|d| d.wal.clone()), before);
    let g = m.start(0, Role::Standby, Some(1), t(40)).expect("start");
    m.start_ready(0, g, t(41));
    m.replicate(1_000, ALL, t(42));
    assert!(
        matches!(&stream(&m, 0), Stream::Diverged(why) if why.contains("prev-link")),
        "{:?}",
        stream(&m, 0)
    );

    // A target on a timeline the source never had.
    let mut m = cluster(1);
    stop(&mut m, 2, StopKind::Fast);
    promote(&mut m, 1); // n2: timeline 2
    stop(&mut m, 0, StopKind::Immediate);
    let g = m.start(0, Role::Standby, None, t(50)).expect("start");
    m.start_ready(0, g, t(51));
    promote(&mut m, 0); // n1: its own timeline 2, then 3
    stop(&mut m, 0, StopKind::Fast);
    let g = m.start(0, Role::Standby, None, t(52)).expect("start");
    m.start_ready(0, g, t(53));
    promote(&mut m, 0);
    assert_eq!(m.nodes[0].data.as_ref().map(Data::timeline), Some(3));
    stop(&mut m, 0, StopKind::Fast);
    let err = m.rewind(0, 1, true).expect_err("no common ancestor");
    assert!(err.contains("common ancestor"), "{err}");
}

#[test]
fn two_writable_nodes_are_a_violation() {
    let mut m = cluster(0);
    promote(&mut m, 1);
    assert_eq!(m.violations.len(), 1);
    assert_eq!(m.violations[0].kind, ViolationKind::TwoWritablePrimaries);
    assert_eq!(m.violations[0].nodes, vec![1, 0]);
}

#[test]
fn a_primary_without_the_durable_prefix_is_a_violation() {
    let mut m = cluster(2);
    // n3 falls behind (cut off), n1 and n2 go on together; then everything is durable only
    // up to what n3 has. Wipe n3 and clone it from n2: all members again, durable grows.
    m.write(0, t(6));
    m.replicate(1_000, &|a, b| a.max(b) != 2, t(7));
    assert_eq!(m.durable.0, 3);
    stop(&mut m, 2, StopKind::Immediate);
    stop(&mut m, 0, StopKind::Immediate);
    // n3 (missing the last write, which is not durable) may take over: no violation.
    let g = m.start(2, Role::Standby, None, t(8)).expect("start");
    m.start_ready(2, g, t(9));
    promote(&mut m, 2);
    assert!(m.violations.is_empty(), "{:?}", m.violations);

    // But a member lacking durable WAL may not.
    let mut m = cluster(2);
    stop(&mut m, 0, StopKind::Immediate);
    stop(&mut m, 2, StopKind::Immediate);
    m.wipe(2).expect("wipe");
    m.initdb(2, "7000".into(), t(10)).expect("initdb");
    let g = m.start(2, Role::Primary, None, t(11)).expect("start");
    m.start_ready(2, g, t(12));
    assert_eq!(
        m.violations.iter().map(|v| v.kind).collect::<Vec<_>>(),
        vec![ViolationKind::DurableWriteLost]
    );
}

#[test]
fn synchronous_commits_wait_for_their_standbys() {
    let mut m = cluster(0);
    let async_write = m.begin_write(0);
    assert_eq!(m.commit_state(&async_write), Some(true), "async: at once");

    m.set_ssn(0, Some("FIRST 1 (n3, n2)"));
    let p = m.begin_write(0);
    assert_eq!(m.commit_state(&p), None, "nobody has flushed it");
    m.replicate(0, ALL, t(6));
    assert_eq!(m.commit_state(&p), None, "connected, not flushed");
    m.replicate(1_000, ALL, t(7));
    assert_eq!(m.commit_state(&p), Some(true));
    // FIRST picks among the connected standbys: with n3 gone, n2 is the synchronous one.
    let p = m.begin_write(0);
    m.replicate(1_000, &|a, b| a.max(b) != 2, t(8));
    assert_eq!(m.commit_state(&p), Some(true));
    m.replicate(1_000, ALL, t(9));

    m.set_ssn(0, Some("ANY 1 (n2, n3)"));
    let p = m.begin_write(0);
    m.replicate(1_000, &|a, b| a.max(b) != 2, t(10));
    assert_eq!(m.commit_state(&p), Some(true), "any one of them");

    // The primary dies while a commit waits: the client never learns the outcome.
    m.set_ssn(0, Some("n3"));
    let p = m.begin_write(0);
    m.stop(0, StopKind::Crash, t(9));
    assert_eq!(m.commit_state(&p), Some(false));
    assert_eq!(
        sync_state("FIRST 1 (n3, n2)", "n2", &["n2", "n3"]),
        ("potential", 2),
        "pg_stat_replication"
    );
    // As the commit rule: with n3 not streaming, n2 is the synchronous one.
    assert_eq!(sync_state("FIRST 1 (n3, n2)", "n2", &["n2"]), ("sync", 2));
    assert_eq!(sync_state("ANY 1 (n3, n2)", "n2", &["n2"]), ("quorum", 1));
    assert_eq!(sync_state("n3", "n2", &["n2", "n3"]), ("async", 0));
}

#[test]
fn sync_rules_parse_like_postgresql() {
    let first = SyncRule::parse("FIRST 2 (a, \"b\", c)").expect("rule");
    assert_eq!(
        (first.method, first.count, first.names.clone()),
        (
            SyncMethod::First,
            2,
            vec!["a".into(), "b".into(), "c".into()]
        )
    );
    let any = SyncRule::parse("any 1 (*)").expect("rule");
    assert_eq!((any.method, any.count), (SyncMethod::Any, 1));
    assert_eq!(any.priority("whoever"), Some(0));
    let plain = SyncRule::parse("a, b").expect("rule");
    assert_eq!((plain.method, plain.count), (SyncMethod::First, 1));
    assert_eq!(SyncRule::parse("  "), None);
}
