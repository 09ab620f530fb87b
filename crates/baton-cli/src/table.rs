//! Pure renderers for `list`, `topology`, `history` and `query`: patronictl's tables (pretty,
//! tsv) and its JSON and YAML.

use baton_core::{ClusterView, Lsn, Member};
use serde_json::{Map, Value, json};

use crate::cli::Format;

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
    pub pending_restart: bool,
    /// The tags the member publishes (Patroni's member key `tags`), empty when none.
    pub tags: Map<String, Value>,
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
        role: if leader && m.role == "standby_leader" {
            // The leader of a standby cluster says so in its member key (Patroni's list).
            "Standby Leader".to_owned()
        } else if leader {
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
        pending_restart: m.pending_restart,
        tags: published_tags(m),
    }
}

/// The member key's `tags` as Patroni publishes them (defaults left out).
fn published_tags(m: &Member) -> Map<String, Value> {
    serde_json::from_str::<Value>(&baton_dcs::record::encode_member(m))
        .ok()
        .and_then(|v| v.get("tags").cloned())
        .and_then(|t| match t {
            Value::Object(map) => Some(map),
            _ => None,
        })
        .unwrap_or_default()
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

/// A table as patronictl's `print_output` takes it: columns, rows of JSON values (`""` for an
/// empty cell), right-aligned columns, and a title for the pretty format.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    pub title: Option<String>,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    pub right: Vec<&'static str>,
    /// A member table (its first column is `Cluster`): the pretty format leaves that column out
    /// and shows `Tags` as YAML; JSON and YAML leave empty cells out.
    pub members: bool,
}

/// A cell as Python's `str()` prints it in patronictl's tables.
fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// A YAML scalar as `yaml.safe_dump` writes it in flow style (strings quoted only when
/// needed).
fn flow_scalar(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let plain = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
                && serde_yaml::from_str::<Value>(s).ok().as_ref() == Some(v);
            if plain {
                s.clone()
            } else {
                format!("'{}'", s.replace('\'', "''"))
            }
        }
        Value::Object(m) => flow_map(m),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(flow_scalar).collect::<Vec<_>>().join(", ")
        ),
        Value::Null => "null".to_owned(),
        other => other.to_string(),
    }
}

fn flow_map(m: &Map<String, Value>) -> String {
    let parts: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{k}: {}", flow_scalar(v)))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// Member tags in a table cell: YAML, block style in the pretty format, flow style in tsv.
fn tags_text(v: &Value, pretty: bool) -> String {
    match v {
        Value::Object(m) if m.is_empty() => String::new(),
        Value::Object(m) if pretty => serde_yaml::to_string(m)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        Value::Object(m) => flow_map(m),
        other => cell_text(other),
    }
}

/// The table in `format` (`delimiter` separates tsv columns).
pub fn render(table: &Table, format: Format, delimiter: &str) -> String {
    match format {
        Format::Json | Format::Yaml => {
            let elements: Vec<Value> = table
                .rows
                .iter()
                .map(|r| {
                    let mut o = Map::new();
                    for (c, v) in table.columns.iter().zip(r) {
                        if table.members && cell_text(v).is_empty() {
                            continue;
                        }
                        o.insert(c.clone(), v.clone());
                    }
                    Value::Object(o)
                })
                .collect();
            let list = Value::Array(elements);
            if format == Format::Json {
                format!("{list}\n")
            } else {
                serde_yaml::to_string(&list).unwrap_or_default()
            }
        }
        Format::Tsv => {
            let tags = table.columns.iter().position(|c| c == "Tags");
            let mut out = String::new();
            if !table.columns.is_empty() {
                out.push_str(&table.columns.join(delimiter));
                out.push('\n');
            }
            for r in &table.rows {
                let cells: Vec<String> = r
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        if table.members && Some(i) == tags {
                            tags_text(v, false)
                        } else {
                            cell_text(v)
                        }
                    })
                    .collect();
                out.push_str(&cells.join(delimiter));
                out.push('\n');
            }
            out
        }
        Format::Pretty => {
            let skip = usize::from(table.members);
            let tags = table.columns.iter().position(|c| c == "Tags");
            let header: Vec<&str> = table.columns[skip.min(table.columns.len())..]
                .iter()
                .map(|c| match c.as_str() {
                    "Receive Lag" | "Replay Lag" => "Lag",
                    other => other,
                })
                .collect();
            let right: Vec<bool> = table.columns[skip.min(table.columns.len())..]
                .iter()
                .map(|c| table.right.contains(&c.as_str()))
                .collect();
            let rows: Vec<Vec<String>> = table
                .rows
                .iter()
                .map(|r| {
                    r.iter()
                        .enumerate()
                        .skip(skip)
                        .map(|(i, v)| {
                            if table.members && Some(i) == tags {
                                tags_text(v, true)
                            } else {
                                cell_text(v)
                            }
                        })
                        .collect()
                })
                .collect();
            render_table(table.title.as_deref(), &header, &right, &rows)
        }
    }
}

/// A prettytable-style table with the title embedded in the top border, as patronictl prints.
/// A cell may hold several lines; then every row is ruled off (prettytable's `hrules=ALL`).
pub fn render_table(
    title: Option<&str>,
    header: &[&str],
    right_aligned: &[bool],
    rows: &[Vec<String>],
) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            for line in cell.lines() {
                *w = (*w).max(line.chars().count());
            }
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
    let line = |cells: &[&str], header: bool| {
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
    let all_rules = rows.iter().any(|r| r.iter().any(|c| c.contains('\n')));
    let mut out = String::new();
    out.push_str(&top);
    out.push('\n');
    out.push_str(&line(header, true));
    out.push('\n');
    out.push_str(&border);
    out.push('\n');
    for (n, r) in rows.iter().enumerate() {
        let height = r
            .iter()
            .map(|c| c.lines().count().max(1))
            .max()
            .unwrap_or(1);
        for k in 0..height {
            let cells: Vec<&str> = r.iter().map(|c| c.lines().nth(k).unwrap_or("")).collect();
            out.push_str(&line(&cells, false));
            out.push('\n');
        }
        if all_rules && n + 1 < rows.len() {
            out.push_str(&border);
            out.push('\n');
        }
    }
    out.push_str(&border);
    out.push('\n');
    out
}

/// What `list` and `topology` show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// `-e`: the optional columns even when empty.
    pub extended: bool,
    /// `topology`: replicas as a tree under the member they stream from.
    pub topology: bool,
}

/// The optional columns, shown with `-e` or when some member has a value (patronictl).
const OPTIONAL: [&str; 4] = [
    "Pending restart",
    "Pending restart reason",
    "Scheduled restart",
    "Tags",
];

/// The member table of `list` (patronictl's `output_members`).
pub fn member_table(scope: &str, view: &ClusterView, options: ListOptions) -> Table {
    let mut rows = rows(view);
    if options.topology {
        rows = topology_sort(view, rows);
    }
    let mut columns: Vec<String> = [
        "Cluster",
        "Member",
        "Host",
        "Role",
        "State",
        "TL",
        "Receive LSN",
        "Receive Lag",
        "Replay LSN",
        "Replay Lag",
    ]
    .iter()
    .map(|c| (*c).to_owned())
    .collect();
    // pgbaton schedules no restarts and does not record why a restart is pending: those two
    // columns are empty, shown with -e only.
    let has = |c: &str| match c {
        "Pending restart" => rows.iter().any(|r| r.pending_restart),
        "Tags" => rows.iter().any(|r| !r.tags.is_empty()),
        _ => false,
    };
    for c in OPTIONAL {
        if options.extended || has(c) {
            columns.push(c.to_owned());
        }
    }
    let num = |v: Option<u64>| v.map_or_else(|| json!(""), |n| json!(n));
    let text = |v: Option<Lsn>| v.map_or_else(|| json!(""), |l| json!(l.to_string()));
    let cells: Vec<Vec<Value>> = rows
        .into_iter()
        .map(|r| {
            let mut cells = vec![
                json!(scope),
                json!(r.member),
                json!(r.host),
                json!(r.role),
                json!(r.state),
                r.timeline.map_or_else(|| json!(""), |t| json!(t)),
                text(r.receive_lsn),
                num(r.receive_lag_mb),
                text(r.replay_lsn),
                num(r.replay_lag_mb),
            ];
            for c in &columns[10..] {
                cells.push(match c.as_str() {
                    "Pending restart" if r.pending_restart => json!("*"),
                    "Tags" if !r.tags.is_empty() => Value::Object(r.tags.clone()),
                    _ => json!(""),
                });
            }
            cells
        })
        .collect();
    Table {
        title: Some(title(scope, view)),
        columns,
        rows: cells,
        right: vec![
            "TL",
            "Receive LSN",
            "Receive Lag",
            "Replay LSN",
            "Replay Lag",
        ],
        members: true,
    }
}

/// Leader first, then every replica under the member its `replicatefrom` tag names (when that
/// is another replica), else under the leader; each level indented by two spaces and marked
/// `+ ` (patronictl's `topology_sort`). Members in a `replicatefrom` cycle, which patronictl
/// would not print, are shown at the first level.
fn topology_sort(view: &ClusterView, rows: Vec<Row>) -> Vec<Row> {
    let leader = view.leader_name().map(ToString::to_string);
    let replicas: Vec<String> = rows
        .iter()
        .filter(|r| Some(&r.member) != leader.as_ref())
        .map(|r| r.member.clone())
        .collect();
    let parent_of = |r: &Row| -> Option<String> {
        let from = view
            .members
            .iter()
            .find(|m| m.name.as_str() == r.member)
            .and_then(|m| m.tags.replicatefrom.clone());
        match from {
            Some(p) if p != r.member && replicas.contains(&p) => Some(p),
            _ => leader.clone(),
        }
    };
    let mut out: Vec<Row> = Vec::new();
    let mut placed: Vec<String> = Vec::new();
    fn walk(
        parent: Option<&str>,
        level: usize,
        rows: &[Row],
        parent_of: &dyn Fn(&Row) -> Option<String>,
        leader: Option<&str>,
        out: &mut Vec<Row>,
        placed: &mut Vec<String>,
    ) {
        for r in rows {
            if Some(r.member.as_str()) == leader || placed.contains(&r.member) {
                continue;
            }
            if parent_of(r).as_deref() == parent {
                placed.push(r.member.clone());
                let mut shown = r.clone();
                shown.member = format!("{}+ {}", " ".repeat((level - 1) * 2), r.member);
                out.push(shown);
                walk(
                    Some(&r.member),
                    level + 1,
                    rows,
                    parent_of,
                    leader,
                    out,
                    placed,
                );
            }
        }
    }
    if let Some(l) = leader.as_deref()
        && let Some(r) = rows.iter().find(|r| r.member == l)
    {
        out.push(r.clone());
    }
    walk(
        leader.as_deref(),
        1,
        &rows,
        &parent_of,
        leader.as_deref(),
        &mut out,
        &mut placed,
    );
    for r in &rows {
        if Some(&r.member) != leader.as_ref() && !placed.contains(&r.member) {
            let mut shown = r.clone();
            shown.member = format!("+ {}", r.member);
            out.push(shown);
        }
    }
    out
}

/// The lines after the pretty table: maintenance mode, a scheduled switchover, and (pgbaton)
/// without a leader the members' reasons.
pub fn service_info(view: &ClusterView) -> String {
    let mut info: Vec<String> = Vec::new();
    if view.members.iter().any(|m| m.pause) {
        info.push("Maintenance mode: on".to_owned());
    }
    if let Some(f) = &view.failover
        && let Some(at) = &f.value.scheduled_at
    {
        let mut text = format!("Switchover scheduled at: {at}");
        if let Some(from) = &f.value.leader {
            text.push_str(&format!("\n{:>24}: {from}", "from"));
        }
        if let Some(to) = &f.value.candidate {
            text.push_str(&format!("\n{:>24}: {to}", "to"));
        }
        info.push(text);
    }
    let mut out = if info.is_empty() {
        String::new()
    } else {
        format!(" {}\n", info.join("\n "))
    };
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

/// `list` (or `topology`) in `format`, with the service lines after a pretty table.
pub fn render_members(
    scope: &str,
    view: &ClusterView,
    options: ListOptions,
    format: Format,
) -> String {
    let table = member_table(scope, view, options);
    let mut out = render(&table, format, "\t");
    if format == Format::Pretty {
        out.push_str(&service_info(view));
    }
    out
}

pub fn render_list(scope: &str, view: &ClusterView) -> String {
    render_members(scope, view, ListOptions::default(), Format::Pretty)
}

/// `list --format json`: patronictl's keys; absent values are left out.
pub fn list_json(scope: &str, view: &ClusterView) -> Value {
    let table = member_table(scope, view, ListOptions::default());
    serde_json::from_str(&render(&table, Format::Json, "\t")).unwrap_or(Value::Null)
}

/// `history`: TL, LSN, Reason, Timestamp, New Leader (empty strings where a line has fewer).
pub fn history_table(view: &ClusterView) -> Table {
    Table {
        title: None,
        columns: ["TL", "LSN", "Reason", "Timestamp", "New Leader"]
            .iter()
            .map(|c| (*c).to_owned())
            .collect(),
        rows: view
            .history
            .iter()
            .map(|h| {
                vec![
                    json!(h.timeline.0),
                    json!(h.lsn.0),
                    json!(h.reason),
                    json!(h.timestamp.clone().unwrap_or_default()),
                    json!(h.new_leader.clone().unwrap_or_default()),
                ]
            })
            .collect(),
        right: vec!["TL", "LSN"],
        members: false,
    }
}

pub fn render_history(view: &ClusterView) -> String {
    render(&history_table(view), Format::Pretty, "\t")
}

#[cfg(test)]
mod tests;
