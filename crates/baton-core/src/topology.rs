//! Replication topology from the tags: which member a replica streams from (`replicatefrom`,
//! cascading replication), which member an empty data directory is cloned from (`clonefrom`),
//! and which members' physical slots a member keeps. Pure functions of the DCS view, shared by
//! `decide` (this member) and the slot rule (every member, as the view shows it).
//!
//! Patroni's `_get_node_to_follow` follows the `replicatefrom` member whatever its state; here
//! a replica streams from it only while that member's key says it runs and streams (or it is
//! the leader), and from the leader otherwise, so a cascade keeps receiving WAL when its
//! upstream goes and returns to it when it comes back. A `replicatefrom` chain that loops
//! back to the member itself is ignored (the leader is followed).

use crate::types::MemberName;
use crate::view::{ClusterView, Member, Tags};

/// The member `me` (with `tags`) streams from: its `replicatefrom` member when that member is
/// usable ([`usable_upstream`]), otherwise the leader. `None` for a `nostream` member (it
/// streams from nobody), without a readable leader key, and when the leader is `me`.
pub fn stream_source<'v>(
    view: &'v ClusterView,
    me: &MemberName,
    tags: &Tags,
) -> Option<&'v MemberName> {
    if tags.nostream {
        return None;
    }
    let leader = view.leader_name()?;
    if leader == me {
        return None;
    }
    if let Some(wanted) = tags.replicatefrom.as_deref()
        && let Some(upstream) = usable_upstream(view, me, wanted)
    {
        return Some(upstream);
    }
    Some(leader)
}

/// The `replicatefrom` member named `wanted`, when `me` can stream from it: it is not `me`,
/// its member key exists, and it is the leader or a replica that runs and replays WAL
/// (`replication_state` `streaming` or `in archive recovery`), and its own `replicatefrom` chain does not lead back to
/// `me`.
pub fn usable_upstream<'v>(
    view: &'v ClusterView,
    me: &MemberName,
    wanted: &str,
) -> Option<&'v MemberName> {
    let member = view.members.iter().find(|m| m.name.as_str() == wanted)?;
    if &member.name == me {
        return None;
    }
    if view.leader_name() == Some(&member.name) {
        return Some(&member.name);
    }
    // A replica that replays WAL, streamed or from the archive (a `nostream` member), serves
    // it to its cascade.
    if !(member.state == "running"
        && member.role == "replica"
        && matches!(
            member.replication_state.as_deref(),
            Some("streaming" | "in archive recovery")
        ))
    {
        return None;
    }
    // A cycle (m2 replicatefrom m3, m3 replicatefrom m2) would leave both without WAL.
    let mut next = member.tags.replicatefrom.as_deref();
    for _ in 0..view.members.len() {
        match next {
            Some(name) if name == me.as_str() => return None,
            Some(name) => {
                next = view
                    .members
                    .iter()
                    .find(|m| m.name.as_str() == name)
                    .and_then(|m| m.tags.replicatefrom.as_deref());
            }
            None => break,
        }
    }
    Some(&member.name)
}

/// The member an empty data directory of `me` is cloned from: a running replica tagged
/// `clonefrom` (not the leader, not `me`) whose published WAL position is within
/// `max_lag` bytes of the leader's, the most advanced of them (by name among equals);
/// otherwise the leader. Patroni picks a `clonefrom` member at random; `decide` is
/// deterministic. `None` without a readable leader key.
pub fn clone_source<'v>(
    view: &'v ClusterView,
    me: &MemberName,
    max_lag: u64,
) -> Option<&'v MemberName> {
    let leader = view.leader_name()?;
    let leader_pos = view
        .leader_member()
        .and_then(|m| m.xlog_location)
        .into_iter()
        .chain(view.optime())
        .max();
    let best = view
        .members
        .iter()
        .filter(|m| {
            m.tags.clonefrom
                && &m.name != me
                && &m.name != leader
                && m.state == "running"
                && m.role == "replica"
                && m.conn_url.is_some()
        })
        .filter_map(|m| {
            let pos = m.xlog_location?;
            let lag = leader_pos?.saturating_sub(pos);
            (lag <= max_lag).then_some((pos, m))
        })
        // Most advanced first; among equals the first name.
        .max_by(|(a, ma), (b, mb)| a.cmp(b).then_with(|| mb.name.cmp(&ma.name)));
    Some(best.map_or(leader, |(_, m)| &m.name))
}

/// The physical slots `me` keeps, by slot name, sorted: one for every other member that is
/// not `nostream` and streams from `me` per [`stream_source`] (as the view shows that
/// member's tags). On the leader these are the members that stream from it directly; on a
/// replica, the members whose `replicatefrom` names it (while it can serve them).
pub fn slots_kept_by(view: &ClusterView, me: &MemberName) -> Vec<String> {
    let mut slots: Vec<String> = view
        .members
        .iter()
        .filter(|m| &m.name != me && !m.tags.nostream)
        .filter(|m| streams_from(view, m) == Some(me))
        .map(|m| m.name.slot_name())
        .collect();
    slots.sort();
    slots.dedup();
    slots
}

/// Where `member` streams from, as the view shows its tags.
fn streams_from<'v>(view: &'v ClusterView, member: &Member) -> Option<&'v MemberName> {
    stream_source(view, &member.name, &member.tags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Lsn;
    use crate::view::LeaderKey;

    fn name(s: &str) -> MemberName {
        MemberName::new(s).unwrap()
    }

    fn member(n: &str, role: &str, streaming: bool) -> Member {
        Member {
            name: name(n),
            conn_url: Some(format!("postgres://{n}:5432/postgres")),
            state: "running".into(),
            role: role.into(),
            replication_state: streaming.then(|| "streaming".into()),
            xlog_location: Some(Lsn(1000)),
            ..Member::default()
        }
    }

    /// m1 leads; m2 and m3 replicas streaming; m3 `replicatefrom: m2`.
    fn cascade() -> ClusterView {
        let mut m3 = member("m3", "replica", true);
        m3.tags.replicatefrom = Some("m2".into());
        ClusterView {
            leader: Some(LeaderKey {
                name: Some(name("m1")),
                lease: 1,
                create_revision: 1,
                mod_revision: 1,
            }),
            members: vec![
                member("m1", "primary", false),
                member("m2", "replica", true),
                m3,
            ],
            ..ClusterView::default()
        }
    }

    #[test]
    fn a_cascade_streams_from_its_replicatefrom_member_and_that_member_keeps_its_slot() {
        let v = cascade();
        let m3 = v.members[2].clone();
        assert_eq!(stream_source(&v, &m3.name, &m3.tags), Some(&name("m2")));
        assert_eq!(slots_kept_by(&v, &name("m1")), vec!["m2".to_owned()]);
        assert_eq!(slots_kept_by(&v, &name("m2")), vec!["m3".to_owned()]);
        assert!(slots_kept_by(&v, &name("m3")).is_empty());
    }

    #[test]
    fn an_upstream_that_does_not_stream_or_is_gone_sends_the_cascade_to_the_leader() {
        let mut v = cascade();
        let m3 = v.members[2].clone();
        v.members[1].replication_state = None;
        assert_eq!(stream_source(&v, &m3.name, &m3.tags), Some(&name("m1")));
        assert_eq!(slots_kept_by(&v, &name("m1")), vec!["m2", "m3"]);
        assert!(slots_kept_by(&v, &name("m2")).is_empty());
        v.members.remove(1);
        assert_eq!(stream_source(&v, &m3.name, &m3.tags), Some(&name("m1")));
    }

    #[test]
    fn an_upstream_that_became_the_leader_is_followed_as_the_leader() {
        let mut v = cascade();
        let m3 = v.members[2].clone();
        v.leader.as_mut().unwrap().name = Some(name("m2"));
        v.members[1].role = "primary".into();
        assert_eq!(stream_source(&v, &m3.name, &m3.tags), Some(&name("m2")));
        // The former leader m1 streams from the new one too.
        assert_eq!(slots_kept_by(&v, &name("m2")), vec!["m1", "m3"]);
    }

    #[test]
    fn a_replicatefrom_cycle_or_self_reference_follows_the_leader() {
        let mut v = cascade();
        v.members[1].tags.replicatefrom = Some("m3".into());
        let (m2, m3) = (v.members[1].clone(), v.members[2].clone());
        assert_eq!(stream_source(&v, &m3.name, &m3.tags), Some(&name("m1")));
        assert_eq!(stream_source(&v, &m2.name, &m2.tags), Some(&name("m1")));
        let mut me = m3.tags.clone();
        me.replicatefrom = Some("m3".into());
        assert_eq!(stream_source(&v, &m3.name, &me), Some(&name("m1")));
    }

    #[test]
    fn nostream_streams_from_nobody_and_gets_no_slot() {
        let mut v = cascade();
        v.members[2].tags.nostream = true;
        let m3 = v.members[2].clone();
        assert_eq!(stream_source(&v, &m3.name, &m3.tags), None);
        assert!(slots_kept_by(&v, &name("m2")).is_empty());
        assert_eq!(slots_kept_by(&v, &name("m1")), vec!["m2".to_owned()]);
    }

    #[test]
    fn clone_source_prefers_a_running_clonefrom_replica_within_the_lag_limit() {
        let mut v = cascade();
        let me = name("m4");
        assert_eq!(clone_source(&v, &me, 100), Some(&name("m1")));
        v.members[1].tags.clonefrom = true;
        v.members[2].tags.clonefrom = true;
        v.members[2].xlog_location = Some(Lsn(900));
        v.members[0].xlog_location = Some(Lsn(1000));
        assert_eq!(clone_source(&v, &me, 100), Some(&name("m2")));
        v.members[1].xlog_location = Some(Lsn(800));
        // m2 lags 200 bytes: m3 (100 bytes) is chosen.
        assert_eq!(clone_source(&v, &me, 100), Some(&name("m3")));
        v.members[2].state = "stopped".into();
        assert_eq!(clone_source(&v, &me, 100), Some(&name("m1")));
        // The leader tagged clonefrom is the leader anyway; a member never clones from itself.
        v.members[0].tags.clonefrom = true;
        v.members[1].xlog_location = Some(Lsn(1000));
        assert_eq!(clone_source(&v, &name("m2"), 100), Some(&name("m1")));
    }
}
