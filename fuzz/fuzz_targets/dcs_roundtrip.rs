//! Structured DCS records: encode → decode → encode is a fixpoint, and the typed values come
//! back (the decoders' half of the round trip, from the encoders' side).
#![no_main]

use arbitrary::Arbitrary;
use baton_core::{
    FailoverRequest, HistoryLine, Lsn, Member, MemberName, SyncState, Tags, Timeline,
};
use baton_dcs_mem::record;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    conn_url: Option<String>,
    api_url: Option<String>,
    state: String,
    role: String,
    version: Option<String>,
    lsns: [Option<u64>; 3],
    replication_state: Option<String>,
    timeline: Option<u32>,
    flags: [bool; 5],
    nofailover: Option<bool>,
    nosync: Option<bool>,
    priorities: [Option<i64>; 2],
    replicatefrom: Option<String>,
    custom: Vec<(String, String)>,
    reason: Option<String>,
    names: Vec<String>,
    quorum: u32,
    history: Vec<(u32, u64, String, Option<String>, Option<String>)>,
    optime: u64,
    slots: Vec<(String, u64)>,
    scheduled_at: Option<String>,
}

fuzz_target!(|i: Input| {
    let names: Vec<MemberName> = i
        .names
        .iter()
        .filter_map(|n| MemberName::new(n.as_str()))
        .collect();
    let member = Member {
        name: MemberName::new("m").unwrap_or_default(),
        conn_url: i.conn_url,
        api_url: i.api_url,
        state: i.state,
        role: i.role,
        version: i.version,
        tags: Tags {
            nofailover: i.nofailover,
            failover_priority: i.priorities[0],
            noloadbalance: i.flags[0],
            clonefrom: i.flags[1],
            nosync: i.nosync,
            sync_priority: i.priorities[1],
            nostream: i.flags[2],
            replicatefrom: i.replicatefrom,
            custom: i.custom.into_iter().collect(),
        },
        xlog_location: i.lsns[0].map(Lsn),
        receive_lsn: i.lsns[1].map(Lsn),
        replay_lsn: i.lsns[2].map(Lsn),
        replication_state: i.replication_state,
        timeline: i.timeline.map(Timeline),
        pending_restart: i.flags[3],
        pause: i.flags[4],
        reason: i.reason,
        lease: 7,
    };
    // The decoders' properties on what the encoders write.
    baton_dcs_mem::fuzzing::values(&record::encode_member(&member));
    let sync = SyncState {
        leader: names.first().cloned(),
        sync_standby: names.iter().skip(1).cloned().collect(),
        quorum: i.quorum,
    };
    baton_dcs_mem::fuzzing::values(&record::encode_sync(&sync));
    let lines: Vec<HistoryLine> = i
        .history
        .into_iter()
        .map(|(t, l, reason, timestamp, new_leader)| HistoryLine {
            timeline: Timeline(t),
            lsn: Lsn(l),
            reason,
            timestamp,
            new_leader,
        })
        .collect();
    let text = record::encode_history(&lines);
    assert_eq!(record::decode_history(&text), Ok(lines), "{text}");
    let slots: Vec<(String, Lsn)> = i.slots.into_iter().map(|(n, l)| (n, Lsn(l))).collect();
    let text = record::encode_status(Lsn(i.optime), &slots, &[]);
    let (status, problems) = record::decode_status(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert!(problems.is_empty(), "{text}: {problems:?}");
    assert_eq!(status.optime, Lsn(i.optime));
    for (name, _) in &slots {
        let last = slots.iter().rev().find(|(n, _)| n == name).map(|(_, l)| *l);
        assert_eq!(status.slots.get(name).copied(), last, "{text}");
    }
    let failover = FailoverRequest {
        leader: names.first().cloned(),
        candidate: names.get(1).cloned(),
        scheduled_at: i.scheduled_at.filter(|s| !s.is_empty()),
    };
    let text = record::encode_failover(&failover);
    let expected = (failover.leader.is_some() || failover.candidate.is_some()).then_some(failover);
    assert_eq!(record::decode_failover(&text), Ok(expected), "{text}");
});
