//! What one simulated server tells another: its data directory and postmaster state, as one
//! text line (`pgbaton-sim 1 <state> <sysid> <checkpoint> <records>`), answered to every
//! request line on a connection to its PostgreSQL port (the connection is kept). A standby's server reads its
//! upstream this way to stream, and `pg_basebackup` / `pg_rewind` read their source.

use baton_core::{ClusterState, Mono};

use crate::model::{Data, Node, Phase, Proc, Rec, Role, Stream};

const MAGIC: &str = "pgbaton-sim 1";

/// A node as seen from another server: `None` data is an empty data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    /// `primary`, `standby`, `promoting` (a standby being promoted), `starting`, `stopping`,
    /// `stopped`.
    pub state: String,
    pub sysid: String,
    pub checkpoint: usize,
    /// `(record id, timeline)` in WAL order.
    pub wal: Vec<(u64, u32)>,
}

/// The line describing `node`.
pub fn encode(node: &Node) -> String {
    let state = match &node.proc {
        None => "stopped",
        Some(p) => match (p.phase, p.role) {
            (Phase::Starting, _) => "starting",
            (Phase::Stopping, _) => "stopping",
            (Phase::Ready, Role::Primary) => "primary",
            (Phase::Ready, Role::Standby) if p.promoting => "promoting",
            (Phase::Ready, Role::Standby) => "standby",
        },
    };
    let (sysid, checkpoint, wal) = match &node.data {
        None => ("-".to_owned(), 0, "-".to_owned()),
        Some(d) => {
            let recs: Vec<String> = d.wal.iter().map(|r| format!("{}.{}", r.id, r.tl)).collect();
            (
                d.sysid.clone(),
                d.checkpoint,
                if recs.is_empty() {
                    "-".to_owned()
                } else {
                    recs.join(",")
                },
            )
        }
    };
    format!("{MAGIC} {state} {sysid} {checkpoint} {wal}\n")
}

/// Parses [`encode`]'s line; the error names what is wrong.
pub fn decode(line: &str) -> Result<Remote, String> {
    let rest = line
        .trim_end()
        .strip_prefix(MAGIC)
        .ok_or_else(|| format!("not a simulated PostgreSQL server: {line:?}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let [state, sysid, checkpoint, wal] = fields[..] else {
        return Err(format!("expected 4 fields after {MAGIC:?}, got {line:?}"));
    };
    let checkpoint = checkpoint
        .parse()
        .map_err(|e| format!("checkpoint {checkpoint:?}: {e}"))?;
    let wal = if wal == "-" {
        Vec::new()
    } else {
        wal.split(',')
            .map(|r| {
                let (id, tl) = r
                    .split_once('.')
                    .ok_or_else(|| format!("record {r:?}: expected id.timeline"))?;
                Ok((
                    id.parse().map_err(|e| format!("record {r:?}: {e}"))?,
                    tl.parse().map_err(|e| format!("record {r:?}: {e}"))?,
                ))
            })
            .collect::<Result<_, String>>()?
    };
    Ok(Remote {
        state: state.to_owned(),
        sysid: sysid.to_owned(),
        checkpoint,
        wal,
    })
}

impl Remote {
    /// Overwrites `mirror` (another process's node in this process's model) with what the
    /// remote server said. The mirror's postmaster runs without an upstream of its own.
    pub fn install(&self, mirror: &mut Node, now: Mono) {
        mirror.data = (self.sysid != "-").then(|| Data {
            sysid: self.sysid.clone(),
            wal: self
                .wal
                .iter()
                .map(|&(id, tl)| Rec {
                    id,
                    tl,
                    write: None,
                })
                .collect(),
            state: ClusterState::InProduction,
            checkpoint: self.checkpoint.min(self.wal.len()),
            last_checkpoint_at: now,
        });
        let running = |role, phase, promoting| Proc {
            pid: 1,
            generation: 0,
            role,
            phase,
            promoting,
            upstream: None,
            stream: Stream::Idle,
            started: now,
            from_standby_dir: false,
            promote_by: 0,
        };
        mirror.proc = match self.state.as_str() {
            "primary" => Some(running(Role::Primary, Phase::Ready, false)),
            "standby" => Some(running(Role::Standby, Phase::Ready, false)),
            "promoting" => Some(running(Role::Standby, Phase::Ready, true)),
            "starting" => Some(running(Role::Standby, Phase::Starting, false)),
            "stopping" => Some(running(Role::Standby, Phase::Stopping, false)),
            _ => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;

    #[test]
    fn a_node_round_trips_through_its_line() {
        let mut m = Model::new(vec![("n1".into(), "h1".into()), ("n2".into(), "h2".into())]);
        assert_eq!(
            decode(&encode(&m.nodes[0])).unwrap(),
            Remote {
                state: "stopped".into(),
                sysid: "-".into(),
                checkpoint: 0,
                wal: vec![]
            }
        );
        m.initdb(0, "7123".into(), Mono(0)).unwrap();
        m.start(0, Role::Primary, None, Mono(0)).unwrap();
        let g = m.nodes[0].proc.as_ref().unwrap().generation;
        m.start_ready(0, g, Mono(1));
        m.write(0, Mono(2));
        let line = encode(&m.nodes[0]);
        let remote = decode(&line).unwrap();
        assert_eq!(remote.state, "primary");
        assert_eq!(remote.sysid, "7123");
        assert_eq!(remote.wal.len(), 2);
        // Installed as a mirror, the copy is a source the model streams and clones from.
        let mut mirror = m.nodes[1].clone();
        remote.install(&mut mirror, Mono(3));
        m.nodes[1] = mirror;
        assert!(m.nodes[1].accepts_writes());
        assert_eq!(
            m.nodes[1].data.as_ref().unwrap().wal,
            m.nodes[0]
                .data
                .as_ref()
                .unwrap()
                .wal
                .iter()
                .map(|r| Rec { write: None, ..*r })
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn garbage_is_refused_with_what_is_wrong() {
        assert!(
            decode("HTTP/1.1 400")
                .unwrap_err()
                .contains("not a simulated")
        );
        assert!(
            decode("pgbaton-sim 1 primary 7 x -")
                .unwrap_err()
                .contains("checkpoint")
        );
        assert!(
            decode("pgbaton-sim 1 primary 7 1 5")
                .unwrap_err()
                .contains("id.timeline")
        );
    }
}
