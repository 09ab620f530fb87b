//! Pure renderers for `pgbaton list` and `pgbaton history`: patronictl's table and JSON.

use baton_core::{ClusterView, Lsn, Member};
use serde_json::{Map, Value, json};

/// One row of `list`.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub member: String,
    pub host: String,
    pub role: String,
    pub state: String,
    pub timeline: Option<u32>,
    pub receive_lsn: Option<Lsn>,
    pub receive_lag_mb: Option<u64>,
    pub replay_lsn: Option<Lsn>,
    pub replay_lag_mb: Option<u64>,
}

fn lag_mb(optime: Option<Lsn>, lsn: Option<Lsn>) -> Option<u64> {
    let (optime, lsn) = (optime?, lsn?);
    Some((optime.saturating_sub(lsn) as f64 / 1024.0 / 1024.0).round() as u64)
}

/// Rows as patronictl builds them: sorted by name; `host:port` when any port differs from
/// 5432 or a host repeats; role `Leader` / `Replica`; replicas show their replication state.
pub fn rows(view: &ClusterView) -> Vec<Row> {
    let hosts: Vec<(String, u16)> = view
        .members
        .iter()
        .map(|m| m.pg_host_port().unwrap_or_else(|| (String::new(), 5432)))
        .collect();
    let show_port = hosts.iter().any(|(_, p)| *p != 5432)
        || hosts
            .iter()
            .enumerate()
            .any(|(i, (h, _))| hosts[..i].iter().any(|(o, _)| o == h));
    let optime = view
        .optime()
        .or_else(|| view.leader_member().and_then(|m| m.xlog_location));
    view.members
        .iter()
        .zip(hosts)
        .map(|(m, (host, port))| {
            let leader = view.leader_name() == Some(&m.name);
            row(
                m,
                leader,
                if show_port {
                    format!("{host}:{port}")
                } else {
                    host
                },
                optime,
            )
        })
        .collect()
}

fn row(m: &Member, leader: bool, host: String, optime: Option<Lsn>) -> Row {
    let state = match (&m.replication_state, leader) {
        (Some(rs), false) => rs.clone(),
        _ => m.state.clone(),
    };
    let replica_lsn = |l: Option<Lsn>| if leader { None } else { l.or(m.xlog_location) };
    let receive_lsn = replica_lsn(m.receive_lsn);
    let replay_lsn = replica_lsn(m.replay_lsn);
    Row {
        member: m.name.to_string(),
        host,
        role: if leader {
            "Leader".to_owned()
        } else {
            "Replica".to_owned()
        },
        state,
        timeline: m.timeline.map(|t| t.0),
        receive_lsn,
        receive_lag_mb: lag_mb(optime, receive_lsn),
        replay_lsn,
        replay_lag_mb: lag_mb(optime, replay_lsn),
    }
}

/// The cluster title: `Cluster: <scope> (<sysid>)`, `(uninitialized)` or `(initializing)`.
pub fn title(scope: &str, view: &ClusterView) -> String {
    let id = match view.initialize.as_deref() {
        None => "uninitialized",
        Some("") => "initializing",
        Some(sysid) => sysid,
    };
    format!("Cluster: {scope} ({id})")
}

/// A prettytable-style table with the title embedded in the top border, as patronictl prints.
pub fn render_table(
    title: Option<&str>,
    header: &[&str],
    right_aligned: &[bool],
    rows: &[Vec<String>],
) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let border: String = {
        let mut s = String::from("+");
        for w in &widths {
            s.push_str(&"-".repeat(w + 2));
            s.push('+');
        }
        s
    };
    // Title in the top border: "+ Cluster: x (y) -+----..." padded to the border's length.
    let top = match title {
        None => border.clone(),
        Some(title) => {
            let mut top = format!("+ {title} ");
            if top.chars().count() < border.chars().count() {
                let rest: String = border.chars().skip(top.chars().count()).collect();
                top.push_str(&rest);
            } else {
                top.push('+');
            }
            top
        }
    };
    let line = |cells: &[String], header: bool| {
        let mut s = String::from("|");
        for ((w, cell), right) in widths.iter().zip(cells).zip(right_aligned) {
            if *right && !header {
                s.push_str(&format!(" {cell:>w$} |"));
            } else {
                s.push_str(&format!(" {cell:<w$} |"));
            }
        }
        s
    };
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let mut out = String::new();
    out.push_str(&top);
    out.push('\n');
    out.push_str(&line(&header, true));
    out.push('\n');
    out.push_str(&border);
    out.push('\n');
    for r in rows {
        out.push_str(&line(r, false));
        out.push('\n');
    }
    out.push_str(&border);
    out.push('\n');
    out
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(String::new, ToString::to_string)
}

pub fn render_list(scope: &str, view: &ClusterView) -> String {
    let header = [
        "Member",
        "Host",
        "Role",
        "State",
        "TL",
        "Receive LSN",
        "Lag",
        "Replay LSN",
        "Lag",
    ];
    let right = [false, false, false, false, true, true, true, true, true];
    let cells: Vec<Vec<String>> = rows(view)
        .into_iter()
        .map(|r| {
            vec![
                r.member,
                r.host,
                r.role,
                r.state,
                opt(&r.timeline),
                opt(&r.receive_lsn),
                opt(&r.receive_lag_mb),
                opt(&r.replay_lsn),
                opt(&r.replay_lag_mb),
            ]
        })
        .collect();
    let mut out = render_table(Some(&title(scope, view)), &header, &right, &cells);
    if view.members.iter().any(|m| m.pause) {
        out.push_str(" Maintenance mode: on\n");
    }
    // pgbaton: without a leader, say why nobody takes over (the members' last reasons).
    if view.leader.is_none() {
        for m in &view.members {
            if let Some(reason) = &m.reason {
                out.push_str(&format!(" {}: {reason}\n", m.name));
            }
        }
    }
    out
}

/// `list --format json`: patronictl's keys; absent values are left out.
pub fn list_json(scope: &str, view: &ClusterView) -> Value {
    let rows = rows(view)
        .into_iter()
        .map(|r| {
            let mut o = Map::new();
            o.insert("Cluster".into(), json!(scope));
            o.insert("Member".into(), json!(r.member));
            o.insert("Host".into(), json!(r.host));
            o.insert("Role".into(), json!(r.role));
            o.insert("State".into(), json!(r.state));
            if let Some(tl) = r.timeline {
                o.insert("TL".into(), json!(tl));
            }
            if let Some(l) = r.receive_lsn {
                o.insert("Receive LSN".into(), json!(l.to_string()));
            }
            if let Some(l) = r.receive_lag_mb {
                o.insert("Receive Lag".into(), json!(l));
            }
            if let Some(l) = r.replay_lsn {
                o.insert("Replay LSN".into(), json!(l.to_string()));
            }
            if let Some(l) = r.replay_lag_mb {
                o.insert("Replay Lag".into(), json!(l));
            }
            Value::Object(o)
        })
        .collect();
    Value::Array(rows)
}

pub fn render_history(view: &ClusterView) -> String {
    let header = ["TL", "LSN", "Reason", "Timestamp", "New Leader"];
    let right = [true, true, false, false, false];
    let cells: Vec<Vec<String>> = view
        .history
        .iter()
        .map(|h| {
            vec![
                h.timeline.to_string(),
                h.lsn.0.to_string(),
                h.reason.clone(),
                h.timestamp.clone().unwrap_or_default(),
                h.new_leader.clone().unwrap_or_default(),
            ]
        })
        .collect();
    render_table(None, &header, &right, &cells)
}

#[cfg(test)]
mod tests;
