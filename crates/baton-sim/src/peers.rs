//! `SimPeers`: the leader race's `GET /patroni` on the other members, answered from their
//! agents' published snapshots with the positions and timeline of their PostgreSQL at that
//! moment (the live query a racing peer asks for, `baton_api::live_snapshot`; the model
//! always answers it), through the same code the REST API and the HTTP prober use
//! (`baton_api::status_json` → `baton_api::peer_status_from_json`). A member across a network
//! cut, or whose agent is frozen, does not answer before the timeout; a member whose agent is
//! down refuses the connection at once.

use std::sync::Arc;
use std::time::Duration;

use baton_agent::peers::Peers;
use baton_core::{ClusterView, MemberName, PeerStatus};
use futures::future::join_all;

use crate::world::{Answer, World};

pub(crate) struct SimPeers {
    w: Arc<World>,
    i: usize,
}

impl SimPeers {
    pub(crate) fn new(w: Arc<World>, i: usize) -> SimPeers {
        SimPeers { w, i }
    }
}

impl Peers for SimPeers {
    async fn probe(
        &self,
        view: &ClusterView,
        me: &MemberName,
        timeout: Duration,
    ) -> Vec<PeerStatus> {
        let asks = view.members.iter().filter(|m| &m.name != me).map(|m| {
            let name = m.name.clone();
            let tags = m.tags.clone();
            async move {
                let unreachable = PeerStatus::unreachable(name.clone(), tags);
                let Some(target) = self.w.index_of(name.as_str()) else {
                    return unreachable;
                };
                let latency = self.w.rng().ms(1, 10);
                let answer = if !self.w.reachable(self.i, target) {
                    Answer::Hangs
                } else {
                    self.w.agent_answers(target)
                };
                match answer {
                    Answer::Refused => {
                        tokio::time::sleep(latency).await;
                        unreachable
                    }
                    Answer::Hangs => {
                        tokio::time::sleep(timeout).await;
                        unreachable
                    }
                    Answer::Up if latency >= timeout => {
                        tokio::time::sleep(timeout).await;
                        unreachable
                    }
                    Answer::Up => {
                        tokio::time::sleep(latency).await;
                        // The state at the moment the request is served.
                        let snapshot = self.w.agents()[target]
                            .snapshot
                            .as_ref()
                            .map(|rx| rx.borrow().clone());
                        match snapshot {
                            Some(snap) if self.w.agent_answers(target) == Answer::Up => {
                                // The racing peer's `x-pgbaton-live`: positions and timeline
                                // of the target's PostgreSQL now (`Postgres::live_sql`), not
                                // its last cycle's.
                                let live = self.w.model().observe(target).sql;
                                let (snap, _) = baton_api::live_snapshot(&snap, live);
                                let json = baton_api::status_json(&snap, self.w.now());
                                baton_api::peer_status_from_json(name, &json)
                            }
                            _ => unreachable,
                        }
                    }
                }
            }
        });
        join_all(asks).await
    }

    /// `POST /failsafe`, answered by the target's REST API logic
    /// (`baton_api::answer_failsafe_post`) from its snapshot at the moment it is served; a
    /// member across a cut, frozen or down does not accept.
    async fn post_failsafe(
        &self,
        targets: &[(MemberName, String)],
        body: &str,
        timeout: Duration,
    ) -> Vec<MemberName> {
        let asks = targets.iter().map(|(name, _)| async move {
            let target = self.w.index_of(name.as_str())?;
            let latency = self.w.rng().ms(1, 10);
            let answer = if !self.w.reachable(self.i, target) {
                Answer::Hangs
            } else {
                self.w.agent_answers(target)
            };
            match answer {
                Answer::Refused => {
                    tokio::time::sleep(latency).await;
                    None
                }
                Answer::Hangs => {
                    tokio::time::sleep(timeout).await;
                    None
                }
                Answer::Up if latency >= timeout => {
                    tokio::time::sleep(timeout).await;
                    None
                }
                Answer::Up => {
                    tokio::time::sleep(latency).await;
                    let (snapshot, inbox) = {
                        let agents = self.w.agents();
                        let slot = &agents[target];
                        (
                            slot.snapshot.as_ref().map(|rx| rx.borrow().clone()),
                            slot.failsafe_inbox.clone(),
                        )
                    };
                    let snap = snapshot.filter(|_| self.w.agent_answers(target) == Answer::Up)?;
                    let (code, text) = baton_api::answer_failsafe_post(
                        &snap,
                        &inbox,
                        self.w.now(),
                        body.as_bytes(),
                    );
                    (code.as_u16() == 200 && text.as_deref() == Some("Accepted"))
                        .then(|| name.clone())
                }
            }
        });
        join_all(asks).await.into_iter().flatten().collect()
    }
}
