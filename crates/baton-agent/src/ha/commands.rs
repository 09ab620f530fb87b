//! Commands: requests from the REST API (switchover, failover, configuration,
//! reinitialize, reload) and the shutdown on SIGTERM.

use std::time::Duration;

use baton_api::{Command, CommandReply, RestartRequest, SwitchoverRequest};
use baton_config::DynamicConfig;
use baton_core::{
    ClusterView, MemberName, Observation, Refusal, ScheduledRestart, ShutdownPlan, StopMode,
    SwitchoverAsk, SwitchoverNext,
};
use baton_dcs::{Dcs, LeaderWrite};
use baton_pg::Postgres;
use tracing::{error, info, warn};

use super::Agent;
use crate::peers::Peers;

impl<D: Dcs, P: Postgres, R: Peers> Agent<D, P, R> {
    /// Re-read the local configuration file (SIGHUP, `POST /reload`) and adopt what applies
    /// at run time ([`crate::reload::adopt`]); PostgreSQL gets its part in the next cycle. A
    /// file with errors changes nothing: the errors are logged with their key paths and the
    /// running configuration stays. Never ends the agent.
    pub async fn reload(&mut self) -> CommandReply {
        let Some(source) = self.config_source.clone() else {
            return CommandReply::Text(
                503,
                "this agent has no configuration file to re-read".into(),
            );
        };
        let loaded = match tokio::task::spawn_blocking(move || source()).await {
            Ok(loaded) => loaded,
            Err(e) => {
                error!("failed to re-read the configuration: {e}");
                return CommandReply::Text(
                    500,
                    format!("failed to re-read the configuration: {e}"),
                );
            }
        };
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(errors) => {
                for e in &errors.0 {
                    error!("configuration reload: {e}");
                }
                error!("the configuration file has errors; keeping the running configuration");
                return CommandReply::Text(
                    500,
                    format!(
                        "the configuration file has errors; keeping the running configuration:\n{errors}"
                    ),
                );
            }
        };
        for w in &loaded.warnings {
            warn!("config: {w}");
        }
        let reloaded = crate::reload::adopt(&self.config, loaded.config);
        for path in &reloaded.needs_restart {
            warn!(
                "{path}: changed in the configuration file; needs a restart of the agent (keeping the running value)"
            );
        }
        if reloaded.applied.is_empty() {
            info!("configuration reloaded: nothing to apply");
        } else {
            info!(
                "configuration reloaded: applying {}",
                reloaded.applied.join(", ")
            );
        }
        self.config = reloaded.config;
        self.callbacks.configure(&self.config);
        self.refresh_ha();
        // Look at PostgreSQL's settings again even when they did not change.
        self.applied_pg = None;
        CommandReply::Text(202, "reload scheduled".into())
    }

    /// Carry out a request from the REST API. Every check reads the DCS afresh (linearizable);
    /// bad requests change nothing.
    pub async fn handle(&mut self, command: Command) {
        match command {
            Command::Switchover { request, reply } => {
                let answer = self.request_switchover(&request).await;
                info!(?request, ?answer, "switchover request");
                let _ = reply.send(answer);
            }
            Command::CancelSwitchover { reply } => {
                let _ = reply.send(self.cancel_switchover().await);
            }
            Command::PatchConfig { patch, reply } => {
                let _ = reply.send(self.patch_config(&patch).await);
            }
            Command::ReplaceConfig {
                config,
                expected_revision,
                reply,
            } => {
                let _ = reply.send(self.replace_config(config, expected_revision).await);
            }
            Command::Restart { request, reply } => {
                info!(?request, "restart request");
                self.restart(request, reply).await;
            }
            Command::CancelRestart { reply } => {
                let answer = match self.scheduled_restart.clone() {
                    Some(r) => {
                        self.set_scheduled_restart(None);
                        info!(schedule = %r.schedule, "scheduled restart deleted");
                        CommandReply::Text(200, "scheduled restart deleted".into())
                    }
                    None => CommandReply::Text(404, "no restarts are scheduled".into()),
                };
                let _ = reply.send(answer);
            }
            Command::Reinitialize { force, reply } => {
                let _ = reply.send(self.reinitialize(force).await);
            }
            Command::Reload { reply } => {
                info!("POST /reload: re-reading the configuration");
                let _ = reply.send(self.reload().await);
            }
        }
    }

    pub(super) async fn read_fresh(&self) -> Result<ClusterView, CommandReply> {
        match tokio::time::timeout(self.ha.retry_timeout, self.dcs.read_cluster()).await {
            Ok(Ok(view)) => Ok(view),
            Ok(Err(e)) => Err(CommandReply::Text(
                503,
                format!("failed to read the cluster from the DCS: {e}"),
            )),
            Err(_) => Err(CommandReply::Text(
                503,
                "failed to read the cluster from the DCS: timed out".into(),
            )),
        }
    }

    /// Patroni's `is_failover_possible` pre-checks (`baton_core::check_switchover`, then for
    /// an immediate one `check_candidates` on the members' answers), then the `failover` key.
    pub(super) async fn request_switchover(&self, req: &SwitchoverRequest) -> CommandReply {
        let view = match self.read_fresh().await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let ask = SwitchoverAsk {
            leader: req.leader.clone(),
            candidate: req.candidate.as_deref().and_then(MemberName::new),
            scheduled_at: req.scheduled_at.clone(),
            failover: req.failover,
        };
        let refuse = |r: Refusal| CommandReply::Text(r.status(), r.to_string());
        match baton_core::check_switchover(&view, &ask, &self.ha.sync, &self.name) {
            Err(r) => return refuse(r),
            Ok(SwitchoverNext::Write) => {}
            Ok(SwitchoverNext::ProbeCandidates {
                exclude,
                include_me,
            }) => {
                let mut peers = self
                    .peers
                    .probe(&view, &exclude, Duration::from_secs(2))
                    .await;
                if include_me {
                    // No leader: this member is a candidate too; it is reachable by definition.
                    let me = self.pg.observe().await;
                    peers.push(baton_core::PeerStatus {
                        name: self.name.clone(),
                        reachable: me.is_running(),
                        is_primary: me.is_primary(),
                        wal_position: me.wal_position(),
                        timeline: me.timeline(),
                        tags: self.config.tags.clone(),
                        watchdog_failed: false,
                    });
                }
                if let Err(r) = baton_core::check_candidates(&peers, &ask) {
                    return refuse(r);
                }
            }
        }
        match self.dcs.write_failover(Some(&ask.to_request()), None).await {
            Ok(_) => CommandReply::Accepted,
            Err(e) => {
                warn!("failed to write failover key into DCS: {e:#}");
                CommandReply::Text(503, "failed to write failover key into DCS".into())
            }
        }
    }

    pub(super) async fn cancel_switchover(&self) -> CommandReply {
        let view = match self.read_fresh().await {
            Ok(v) => v,
            Err(r) => return r,
        };
        match view.failover {
            Some(f) if f.value.scheduled_at.is_some() => {
                match self.dcs.write_failover(None, Some(f.mod_revision)).await {
                    Ok(true) => CommandReply::Text(200, "scheduled switchover deleted".into()),
                    Ok(false) => {
                        CommandReply::Text(409, "the failover key changed meanwhile".into())
                    }
                    Err(e) => {
                        CommandReply::Text(503, format!("failed to delete the failover key: {e}"))
                    }
                }
            }
            _ => CommandReply::Text(404, "no switchover is scheduled".into()),
        }
    }

    /// `POST /restart` (Patroni's `restart` and `schedule_future_restart`): a schedule is
    /// kept for the cycle that reaches it (`decide` runs it), an immediate restart starts
    /// beside the loop when its conditions match, and is answered when it ends.
    pub(super) async fn restart(
        &mut self,
        request: RestartRequest,
        reply: tokio::sync::oneshot::Sender<CommandReply>,
    ) {
        let pg = self.pg.observe().await;
        if let Some((schedule, at_unix_ms)) = request.schedule {
            let answer = if self.scheduled_restart.is_some() {
                CommandReply::Text(409, "Another restart is already scheduled".into())
            } else {
                info!(%schedule, "restart scheduled");
                self.set_scheduled_restart(Some(ScheduledRestart {
                    schedule,
                    at_unix_ms,
                    filters: request.filters,
                    postmaster_start_time: pg.sql.as_ref().map(|s| s.postmaster_start_time.clone()),
                }));
                CommandReply::Text(202, "Restart scheduled".into())
            };
            let _ = reply.send(answer);
            return;
        }
        let view = match self.read_fresh().await {
            Ok(v) => v,
            Err(r) => {
                let _ = reply.send(r);
                return;
            }
        };
        let holds = self.holds_key(Some(&view));
        if let Err(why) = baton_core::restart_matches(&request.filters, &pg, holds) {
            info!("not proceeding with the restart: {why}");
            let _ = reply.send(CommandReply::Text(
                503,
                "restart conditions are not satisfied".into(),
            ));
            return;
        }
        if let Some(running) = self.running.as_ref().map(|r| r.kind) {
            let _ = reply.send(CommandReply::Text(
                503,
                format!("{} already in progress", running.long_label()),
            ));
            return;
        }
        let remote = self
            .ha
            .standby_cluster
            .as_ref()
            .map(|source| baton_core::Upstream::remote(&self.name, source));
        let action = baton_core::restart_action(&view, &pg, holds, remote);
        info!("{action}");
        self.restart_timeout = request.filters.timeout;
        self.restart_reply = Some(reply);
        self.start_long(std::slice::from_ref(&action));
        let busy = self.busy();
        self.publish(Some(&view), &pg, busy).await;
    }

    /// `POST /reinitialize`: stop PostgreSQL and empty the data directory; the next cycle
    /// clones from the leader (Patroni's reinit). Refused on the leader and without one.
    pub(super) async fn reinitialize(&mut self, force: bool) -> CommandReply {
        let view = match self.read_fresh().await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let pg = self.pg.observe().await;
        let steps = match baton_core::check_reinitialize(&view, &self.name, &pg) {
            Ok(steps) => steps,
            Err(r) => return CommandReply::Text(r.status(), r.to_string()),
        };
        // Patroni: a running action is cancelled with `force`, else it is its answer.
        if let Some(running) = self.running.as_ref().map(|r| r.kind) {
            if !force {
                return CommandReply::Text(
                    503,
                    format!("{} already in progress", running.long_label()),
                );
            }
            self.end_long("reinitialize with force", true).await;
        }
        let obs = Observation {
            dcs: Some(view),
            pg,
            ..Observation::default()
        };
        if self.execute(&steps, &obs).await {
            return CommandReply::Text(503, "reinitialize failed: see the agent log".into());
        }
        info!("reinitialize: data directory removed; cloning from the leader next");
        CommandReply::Text(200, "reinitialize started".into())
    }

    /// `PATCH /config`: merge, validate, compare-and-swap. An invalid result changes nothing.
    pub(super) async fn patch_config(
        &self,
        patch: &serde_json::Map<String, serde_json::Value>,
    ) -> CommandReply {
        let view = match self.read_fresh().await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let Some(stored) = view.config else {
            return CommandReply::Text(
                503,
                "the cluster has no valid dynamic configuration".into(),
            );
        };
        let Ok(mut config) =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&stored.value)
        else {
            return CommandReply::Text(
                503,
                "the cluster has no valid dynamic configuration".into(),
            );
        };
        baton_api::merge_patch(&mut config, patch);
        let text = serde_json::Value::Object(config).to_string();
        if let Err(e) = DynamicConfig::from_json_strict(&text) {
            return CommandReply::Text(400, format!("invalid configuration: {e}"));
        }
        match self
            .dcs
            .write_config(&text, Some(stored.mod_revision))
            .await
        {
            Ok(true) => CommandReply::Json(200, text),
            Ok(false) => {
                CommandReply::Text(409, "the configuration changed meanwhile; try again".into())
            }
            Err(e) => CommandReply::Text(503, format!("failed to write the configuration: {e}")),
        }
    }

    /// `PUT /config`: validate, then write the whole document when it differs from the stored
    /// one (compare-and-swap on the revision read; with `expected_revision`, only at that
    /// revision). An invalid document changes nothing.
    pub(super) async fn replace_config(
        &self,
        config: serde_json::Map<String, serde_json::Value>,
        expected_revision: Option<i64>,
    ) -> CommandReply {
        let view = match self.read_fresh().await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let (text, version) =
            match plan_replace_config(view.config.as_ref(), config, expected_revision) {
                Ok(ReplacePlan::Unchanged(text)) => return CommandReply::Json(200, text),
                Ok(ReplacePlan::Write { text, version }) => (text, version),
                Err(refusal) => return refusal,
            };
        match self.dcs.write_config(&text, version).await {
            Ok(true) => CommandReply::Json(200, text),
            Ok(false) => {
                CommandReply::Text(409, "the configuration changed meanwhile; try again".into())
            }
            // Patroni answers a failed DCS write of PUT /config with 502.
            Err(e) => CommandReply::Text(502, format!("failed to write the configuration: {e}")),
        }
    }

    /// On SIGTERM: end a long action (a clone is cancelled, the others waited for), stop
    /// PostgreSQL (fast) and then give up the leader key, as Patroni does. In pause mode
    /// PostgreSQL and the key are left alone.
    pub async fn shutdown(&mut self) {
        let leading = !self.ha.pause && {
            let view =
                match tokio::time::timeout(self.ha.retry_timeout, self.dcs.read_cluster()).await {
                    Ok(Ok(v)) => Some(v),
                    _ => self.last_view.clone(),
                };
            self.holds_key(view.as_ref()) || self.was_leader()
        };
        self.end_long("shutting down", false).await;
        let plan = baton_core::shutdown_plan(self.ha.pause, leading);
        if plan == ShutdownPlan::LeaveRunning {
            info!("paused: leaving PostgreSQL running and the leader key in place");
            return;
        }
        info!("shutting down: stopping PostgreSQL");
        self.callbacks.before_stop(StopMode::Fast).await;
        if let Err(e) = self.pg.stop(StopMode::Fast).await {
            error!("failed to stop PostgreSQL (fast), stopping it immediately: {e:#}");
            if let Err(e) = self.pg.stop(StopMode::Immediate).await {
                error!("failed to stop PostgreSQL: {e:#}; keeping the leader key");
                return;
            }
        }
        self.leading.send_modify(|s| s.leading = false);
        if plan == ShutdownPlan::StopAndRelease {
            let state = self.pg.observe().await;
            if let (Some(lsn), Some(holder)) = (state.wal_position(), self.holder()) {
                let retain = self.retained_slot_names();
                match self.dcs.write_status(&holder, lsn, &[], &retain).await {
                    Ok(LeaderWrite::Written | LeaderWrite::Conflict) => {}
                    Ok(LeaderWrite::NotLeader) => {
                        info!("last position not published: we no longer hold the leader key")
                    }
                    Err(e) => warn!("failed to write the last position to the status key: {e:#}"),
                }
            }
            match self.dcs.release_leader(&self.name).await {
                Ok(_) => info!("released the leader key"),
                Err(e) => warn!("failed to release the leader key: {e:#}"),
            }
        }
    }
}

/// What `PUT /config` does with the stored `config` key.
#[derive(Debug, PartialEq, Eq)]
enum ReplacePlan {
    /// The same document is stored already: nothing to write (Patroni's `deep_compare`).
    Unchanged(String),
    /// Write `text`, only while the key is at `version` (`Some(0)`: absent).
    Write { text: String, version: Option<i64> },
}

/// Checks a replacement document against the stored key: the `If-Match` revision, the
/// configuration rules of `bootstrap.dcs` (errors name their key path).
fn plan_replace_config(
    stored: Option<&baton_core::Versioned<String>>,
    config: serde_json::Map<String, serde_json::Value>,
    expected_revision: Option<i64>,
) -> Result<ReplacePlan, CommandReply> {
    let current = stored.map_or(0, |s| s.mod_revision);
    if let Some(expected) = expected_revision
        && expected != current
    {
        return Err(CommandReply::Text(
            409,
            format!(
                "the configuration changed meanwhile (revision {current}, not {expected}); try again"
            ),
        ));
    }
    let new = serde_json::Value::Object(config);
    let text = new.to_string();
    if let Err(e) = DynamicConfig::from_json_strict(&text) {
        return Err(CommandReply::Text(
            400,
            format!("invalid configuration: {e}"),
        ));
    }
    let old = stored.and_then(|s| serde_json::from_str::<serde_json::Value>(&s.value).ok());
    if old.as_ref() == Some(&new) {
        return Ok(ReplacePlan::Unchanged(text));
    }
    Ok(ReplacePlan::Write {
        text,
        version: Some(current),
    })
}

#[cfg(test)]
mod tests {
    use super::{ReplacePlan, plan_replace_config};
    use baton_api::CommandReply;
    use baton_core::Versioned;
    use serde_json::{Map, Value, json};

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn replace_config_writes_a_valid_new_document_at_the_revision_read() {
        let stored = Versioned {
            value: r#"{"ttl":30,"loop_wait":10}"#.to_owned(),
            mod_revision: 7,
        };
        assert_eq!(
            plan_replace_config(Some(&stored), object(json!({"ttl": 20})), None),
            Ok(ReplacePlan::Write {
                text: r#"{"ttl":20}"#.into(),
                version: Some(7)
            })
        );
        assert_eq!(
            plan_replace_config(Some(&stored), object(json!({"ttl": 20})), Some(7)),
            Ok(ReplacePlan::Write {
                text: r#"{"ttl":20}"#.into(),
                version: Some(7)
            })
        );
        // Same document (key order aside): nothing is written.
        assert_eq!(
            plan_replace_config(
                Some(&stored),
                object(json!({"loop_wait": 10, "ttl": 30})),
                None
            ),
            Ok(ReplacePlan::Unchanged(
                r#"{"loop_wait":10,"ttl":30}"#.into()
            ))
        );
        // No key yet: created only if still absent.
        assert_eq!(
            plan_replace_config(None, object(json!({"ttl": 20})), None),
            Ok(ReplacePlan::Write {
                text: r#"{"ttl":20}"#.into(),
                version: Some(0)
            })
        );
    }

    #[test]
    fn replace_config_refuses_a_stale_revision_and_an_invalid_document() {
        let stored = Versioned {
            value: r#"{"ttl":30}"#.to_owned(),
            mod_revision: 7,
        };
        match plan_replace_config(Some(&stored), object(json!({"ttl": 20})), Some(6)) {
            Err(CommandReply::Text(409, text)) => assert!(text.contains("revision 7"), "{text}"),
            other => panic!("unexpected {other:?}"),
        }
        match plan_replace_config(Some(&stored), object(json!({"loop_wait": "soon"})), None) {
            Err(CommandReply::Text(400, text)) => assert!(text.contains("loop_wait"), "{text}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
