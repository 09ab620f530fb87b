use baton_core::{
    ClusterView, HistoryLine, LeaderKey, LeaderStatus, Lsn, Member, MemberName, Timeline,
};
use expect_test::expect;

use super::{
    ListOptions, history_table, list_json, render, render_history, render_list, render_members,
};
use crate::cli::Format;

fn member(name: &str, port: u16, state: &str, lsn: Option<u64>) -> Member {
    Member {
        name: MemberName::new(name).expect("name"),
        conn_url: Some(format!("postgres://127.0.0.1:{port}/postgres")),
        state: "running".into(),
        role: if lsn.is_some() { "replica" } else { "primary" }.into(),
        replication_state: lsn.map(|_| state.to_owned()),
        timeline: Some(Timeline(3)),
        receive_lsn: lsn.map(Lsn),
        replay_lsn: lsn.map(Lsn),
        xlog_location: Some(Lsn(lsn.unwrap_or(0x4000_04E8))),
        ..Member::default()
    }
}

fn view() -> ClusterView {
    ClusterView {
        initialize: Some("7277694203142172922".into()),
        leader: Some(LeaderKey {
            name: MemberName::new("postgresql0"),
            lease: 1,
            create_revision: 1,
            mod_revision: 1,
        }),
        members: vec![
            member("postgresql0", 5432, "running", None),
            member("postgresql1", 5433, "streaming", Some(0x4000_04E8)),
            member(
                "postgresql2",
                5434,
                "streaming",
                Some(0x4000_04E8 - 3 * 1024 * 1024),
            ),
        ],
        status: Some(LeaderStatus {
            optime: Lsn(0x4000_04E8),
            ..LeaderStatus::default()
        }),
        ..ClusterView::default()
    }
}

#[test]
fn list_table_matches_patronictl() {
    expect![[r#"
        + Cluster: batman (7277694203142172922) -+-----------+----+-------------+-----+------------+-----+
        | Member      | Host           | Role    | State     | TL | Receive LSN | Lag | Replay LSN | Lag |
        +-------------+----------------+---------+-----------+----+-------------+-----+------------+-----+
        | postgresql0 | 127.0.0.1:5432 | Leader  | running   |  3 |             |     |            |     |
        | postgresql1 | 127.0.0.1:5433 | Replica | streaming |  3 |  0/400004E8 |   0 | 0/400004E8 |   0 |
        | postgresql2 | 127.0.0.1:5434 | Replica | streaming |  3 |  0/3FD004E8 |   3 | 0/3FD004E8 |   3 |
        +-------------+----------------+---------+-----------+----+-------------+-----+------------+-----+
    "#]]
    .assert_eq(&render_list("batman", &view()));
}

#[test]
fn a_standby_cluster_lists_its_standby_leader() {
    let mut v = view();
    v.members[0].role = "standby_leader".into();
    v.members[0].replication_state = Some("streaming".into());
    let out = render_list("batman", &v);
    assert!(
        out.contains("| postgresql0 | 127.0.0.1:5432 | Standby Leader | running "),
        "{out}"
    );
    assert!(out.contains("| Replica        | streaming |"), "{out}");
}

#[test]
fn hosts_without_ports_when_all_are_5432_and_distinct() {
    let mut v = view();
    for (i, m) in v.members.iter_mut().enumerate() {
        m.conn_url = Some(format!("postgres://10.0.0.{}:5432/postgres", i + 1));
    }
    let out = render_list("batman", &v);
    assert!(out.contains("| 10.0.0.1 |"), "{out}");
    assert!(!out.contains(":5432"), "{out}");
}

#[test]
fn without_a_leader_list_says_why_nobody_takes_over() {
    let mut v = view();
    v.members[1].reason = Some(
        "following a different leader because i am not the healthiest node: only 1 of the 2 quorum votes needed to prove this node holds every acknowledged commit".into(),
    );
    let with_leader = render_list("batman", &v);
    assert!(!with_leader.contains("quorum votes"), "{with_leader}");
    v.leader = None;
    let out = render_list("batman", &v);
    assert!(
        out.ends_with(" postgresql1: following a different leader because i am not the healthiest node: only 1 of the 2 quorum votes needed to prove this node holds every acknowledged commit\n"),
        "{out}"
    );
}

#[test]
fn uninitialized_cluster_title() {
    let out = render_list("batman", &ClusterView::default());
    assert!(
        out.starts_with("+ Cluster: batman (uninitialized) "),
        "{out}"
    );
}

#[test]
fn list_json_uses_patronictl_keys() {
    expect![[r#"
        [{"Cluster":"batman","Host":"127.0.0.1:5432","Member":"postgresql0","Role":"Leader","State":"running","TL":3},{"Cluster":"batman","Host":"127.0.0.1:5433","Member":"postgresql1","Receive LSN":"0/400004E8","Receive Lag":0,"Replay LSN":"0/400004E8","Replay Lag":0,"Role":"Replica","State":"streaming","TL":3},{"Cluster":"batman","Host":"127.0.0.1:5434","Member":"postgresql2","Receive LSN":"0/3FD004E8","Receive Lag":3,"Replay LSN":"0/3FD004E8","Replay Lag":3,"Role":"Replica","State":"streaming","TL":3}]"#]]
    .assert_eq(&list_json("batman", &view()).to_string());
}

#[test]
fn history_pretty_table() {
    let mut v = view();
    v.history = vec![HistoryLine {
        timeline: Timeline(1),
        lsn: Lsn(25_165_984),
        reason: "no recovery target specified".into(),
        timestamp: Some("2026-11-22T04:09:19+00:00".into()),
        new_leader: Some("postgresql1".into()),
    }];
    expect![[r#"
        +----+----------+------------------------------+---------------------------+-------------+
        | TL | LSN      | Reason                       | Timestamp                 | New Leader  |
        +----+----------+------------------------------+---------------------------+-------------+
        |  1 | 25165984 | no recovery target specified | 2026-11-22T04:09:19+00:00 | postgresql1 |
        +----+----------+------------------------------+---------------------------+-------------+
    "#]]
    .assert_eq(&render_history(&v));
}

#[test]
fn extended_list_adds_the_optional_columns() {
    let opts = ListOptions {
        extended: true,
        topology: false,
    };
    expect![[r#"
        + Cluster: batman (7277694203142172922) -+-----------+----+-------------+-----+------------+-----+-----------------+------------------------+-------------------+------+
        | Member      | Host           | Role    | State     | TL | Receive LSN | Lag | Replay LSN | Lag | Pending restart | Pending restart reason | Scheduled restart | Tags |
        +-------------+----------------+---------+-----------+----+-------------+-----+------------+-----+-----------------+------------------------+-------------------+------+
        | postgresql0 | 127.0.0.1:5432 | Leader  | running   |  3 |             |     |            |     |                 |                        |                   |      |
        | postgresql1 | 127.0.0.1:5433 | Replica | streaming |  3 |  0/400004E8 |   0 | 0/400004E8 |   0 |                 |                        |                   |      |
        | postgresql2 | 127.0.0.1:5434 | Replica | streaming |  3 |  0/3FD004E8 |   3 | 0/3FD004E8 |   3 |                 |                        |                   |      |
        +-------------+----------------+---------+-----------+----+-------------+-----+------------+-----+-----------------+------------------------+-------------------+------+
    "#]]
    .assert_eq(&render_members("batman", &view(), opts, Format::Pretty));
}

#[test]
fn tags_and_pending_restart_show_without_e_and_rule_every_row() {
    let mut v = view();
    v.members[1].tags.nofailover = Some(true);
    v.members[1].tags.clonefrom = true;
    v.members[2].pending_restart = true;
    expect![[r#"
        + Cluster: batman (7277694203142172922) -+-----------+----+-------------+-----+------------+-----+-----------------+------------------+
        | Member      | Host           | Role    | State     | TL | Receive LSN | Lag | Replay LSN | Lag | Pending restart | Tags             |
        +-------------+----------------+---------+-----------+----+-------------+-----+------------+-----+-----------------+------------------+
        | postgresql0 | 127.0.0.1:5432 | Leader  | running   |  3 |             |     |            |     |                 |                  |
        +-------------+----------------+---------+-----------+----+-------------+-----+------------+-----+-----------------+------------------+
        | postgresql1 | 127.0.0.1:5433 | Replica | streaming |  3 |  0/400004E8 |   0 | 0/400004E8 |   0 |                 | clonefrom: true  |
        |             |                |         |           |    |             |     |            |     |                 | nofailover: true |
        +-------------+----------------+---------+-----------+----+-------------+-----+------------+-----+-----------------+------------------+
        | postgresql2 | 127.0.0.1:5434 | Replica | streaming |  3 |  0/3FD004E8 |   3 | 0/3FD004E8 |   3 | *               |                  |
        +-------------+----------------+---------+-----------+----+-------------+-----+------------+-----+-----------------+------------------+
    "#]]
    .assert_eq(&render_list("batman", &v));
    expect![[r#"
        Cluster	Member	Host	Role	State	TL	Receive LSN	Receive Lag	Replay LSN	Replay Lag	Pending restart	Tags
        batman	postgresql0	127.0.0.1:5432	Leader	running	3						
        batman	postgresql1	127.0.0.1:5433	Replica	streaming	3	0/400004E8	0	0/400004E8	0		{clonefrom: true, nofailover: true}
        batman	postgresql2	127.0.0.1:5434	Replica	streaming	3	0/3FD004E8	3	0/3FD004E8	3	*	
    "#]]
    .assert_eq(&render_members("batman", &v, ListOptions::default(), Format::Tsv));
    let json = list_json("batman", &v);
    assert_eq!(
        json[1]["Tags"],
        serde_json::json!({"clonefrom": true, "nofailover": true})
    );
    assert_eq!(json[2]["Pending restart"], "*");
    assert!(json[0].get("Tags").is_none(), "{json}");
}

#[test]
fn topology_nests_replicas_under_their_replicatefrom() {
    let mut v = view();
    v.members[2].tags.replicatefrom = Some("postgresql1".into());
    let out = render_members(
        "batman",
        &v,
        ListOptions {
            extended: false,
            topology: true,
        },
        Format::Pretty,
    );
    expect![[r#"
        + Cluster: batman (7277694203142172922) -----+-----------+----+-------------+-----+------------+-----+----------------------------+
        | Member          | Host           | Role    | State     | TL | Receive LSN | Lag | Replay LSN | Lag | Tags                       |
        +-----------------+----------------+---------+-----------+----+-------------+-----+------------+-----+----------------------------+
        | postgresql0     | 127.0.0.1:5432 | Leader  | running   |  3 |             |     |            |     |                            |
        | + postgresql1   | 127.0.0.1:5433 | Replica | streaming |  3 |  0/400004E8 |   0 | 0/400004E8 |   0 |                            |
        |   + postgresql2 | 127.0.0.1:5434 | Replica | streaming |  3 |  0/3FD004E8 |   3 | 0/3FD004E8 |   3 | replicatefrom: postgresql1 |
        +-----------------+----------------+---------+-----------+----+-------------+-----+------------+-----+----------------------------+
    "#]]
    .assert_eq(&out);
}

#[test]
fn a_replicatefrom_cycle_loses_no_member_in_the_topology() {
    let mut v = view();
    v.members[1].tags.replicatefrom = Some("postgresql2".into());
    v.members[2].tags.replicatefrom = Some("postgresql1".into());
    let out = render_members(
        "batman",
        &v,
        ListOptions {
            extended: false,
            topology: true,
        },
        Format::Pretty,
    );
    assert!(out.contains("| + postgresql1 "), "{out}");
    assert!(out.contains("| + postgresql2 "), "{out}");
}

#[test]
fn a_scheduled_switchover_is_shown_under_the_table() {
    let mut v = view();
    v.failover = Some(baton_core::Versioned {
        value: baton_core::FailoverRequest {
            leader: MemberName::new("postgresql0"),
            candidate: MemberName::new("postgresql1"),
            scheduled_at: Some("2026-11-22T04:09:19+00:00".into()),
        },
        mod_revision: 5,
    });
    v.members[0].pause = true;
    let out = render_list("batman", &v);
    let tail: Vec<&str> = out.lines().rev().take(4).collect();
    expect![[r#"
        [
            "                      to: postgresql1",
            "                    from: postgresql0",
            " Switchover scheduled at: 2026-11-22T04:09:19+00:00",
            " Maintenance mode: on",
        ]
    "#]]
    .assert_debug_eq(&tail);
}

#[test]
fn history_json_and_yaml_are_patronictls_dicts() {
    let mut v = view();
    v.history = vec![
        HistoryLine {
            timeline: Timeline(1),
            lsn: Lsn(25_165_984),
            reason: "no recovery target specified".into(),
            timestamp: Some("2026-11-22T04:09:19+00:00".into()),
            new_leader: Some("postgresql1".into()),
        },
        HistoryLine {
            timeline: Timeline(2),
            lsn: Lsn(50_331_864),
            reason: "no recovery target specified".into(),
            timestamp: None,
            new_leader: None,
        },
    ];
    expect![[r#"
        [{"LSN":25165984,"New Leader":"postgresql1","Reason":"no recovery target specified","TL":1,"Timestamp":"2026-11-22T04:09:19+00:00"},{"LSN":50331864,"New Leader":"","Reason":"no recovery target specified","TL":2,"Timestamp":""}]
    "#]]
    .assert_eq(&render(&history_table(&v), Format::Json, "\t"));
    expect![[r#"
        - LSN: 25165984
          New Leader: postgresql1
          Reason: no recovery target specified
          TL: 1
          Timestamp: 2026-11-22T04:09:19+00:00
        - LSN: 50331864
          New Leader: ''
          Reason: no recovery target specified
          TL: 2
          Timestamp: ''
    "#]]
    .assert_eq(&render(&history_table(&v), Format::Yaml, "\t"));
}
