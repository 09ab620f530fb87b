//! `GET /metrics`: Prometheus text with Patroni's metric names, help texts and order, labelled
//! `{scope="..",name=".."}`, plus a few `pgbaton_` extras.

use std::fmt::Write as _;

use baton_core::Mono;

use crate::status::{POSTGRES_STATES, Status, Xlog};
use crate::{Snapshot, VERSION, VipStatus};

pub(crate) fn metrics_text(snap: &Snapshot, vip: Option<&VipStatus>, now: Mono) -> String {
    let status = Status::new(snap);
    let labels = format!(
        "{{scope=\"{}\",name=\"{}\"}}",
        escape_label(&snap.scope),
        escape_label(snap.name.as_str())
    );
    let mut out = Metrics {
        out: String::with_capacity(4096),
        labels,
    };
    let flag = |b: bool| u8::from(b).to_string();

    let (location, received, replayed, replayed_timestamp, paused) = match &status.xlog {
        Some(Xlog::Primary { location }) => (location.unwrap_or(0), 0, 0, None, false),
        Some(Xlog::Replica {
            received_location,
            replayed_location,
            replayed_timestamp,
            paused,
        }) => (
            0,
            received_location.unwrap_or(0),
            replayed_location.unwrap_or(0),
            replayed_timestamp.as_deref(),
            *paused,
        ),
        None => (0, 0, 0, None, false),
    };

    out.metric(
        "patroni_version",
        "Patroni semver without periods.",
        "gauge",
        &padded_version(VERSION),
    );
    out.metric(
        "patroni_postgres_running",
        "Value is 1 if Postgres is running, 0 otherwise.",
        "gauge",
        &flag(status.is_running()),
    );
    out.metric(
        "patroni_postmaster_start_time",
        "Epoch seconds since Postgres started.",
        "gauge",
        &epoch_or_zero(status.postmaster_start_time.as_deref()),
    );
    out.metric(
        "patroni_primary",
        "Value is 1 if this node is the leader, 0 otherwise.",
        "gauge",
        &flag(status.role == "primary"),
    );
    out.metric(
        "patroni_xlog_location",
        "Current location of the Postgres transaction log, 0 if this node is not the leader.",
        "counter",
        &location.to_string(),
    );
    out.metric(
        "patroni_standby_leader",
        "Value is 1 if this node is the standby_leader, 0 otherwise.",
        "gauge",
        &flag(status.role == "standby_leader"),
    );
    out.metric(
        "patroni_replica",
        "Value is 1 if this node is a replica, 0 otherwise.",
        "gauge",
        &flag(status.role == "replica"),
    );
    out.metric(
        "patroni_sync_standby",
        "Value is 1 if this node is a sync standby, 0 otherwise.",
        "gauge",
        &flag(status.sync_standby),
    );
    out.metric(
        "patroni_quorum_standby",
        "Value is 1 if this node is a quorum standby, 0 otherwise.",
        "gauge",
        &flag(status.quorum_standby),
    );
    out.metric(
        "patroni_xlog_received_location",
        "Current location of the received Postgres transaction log, 0 if this node is not a replica.",
        "counter",
        &received.to_string(),
    );
    out.metric(
        "patroni_xlog_replayed_location",
        "Current location of the replayed Postgres transaction log, 0 if this node is not a replica.",
        "counter",
        &replayed.to_string(),
    );
    out.metric(
        "patroni_xlog_replayed_timestamp",
        "Current timestamp of the replayed Postgres transaction log, 0 if null.",
        "gauge",
        &epoch_or_zero(replayed_timestamp),
    );
    out.metric(
        "patroni_xlog_paused",
        "Value is 1 if the Postgres xlog is paused, 0 otherwise.",
        "gauge",
        &flag(paused),
    );
    let server_version = status.server_version.unwrap_or(0);
    if server_version >= 90600 {
        out.metric(
            "patroni_postgres_streaming",
            "Value is 1 if Postgres is streaming, 0 otherwise.",
            "gauge",
            &flag(status.replication_state == Some("streaming")),
        );
        out.metric(
            "patroni_postgres_in_archive_recovery",
            "Value is 1 if Postgres is replicating from archive, 0 otherwise.",
            "gauge",
            &flag(status.replication_state == Some("in archive recovery")),
        );
    }
    // Patroni prints a stray space before the labels of this one; we do not.
    out.metric(
        "patroni_postgres_server_version",
        "Version of Postgres (if running), 0 otherwise.",
        "gauge",
        &server_version.to_string(),
    );
    out.metric(
        "patroni_cluster_unlocked",
        "Value is 1 if the cluster is unlocked, 0 if locked.",
        "gauge",
        &flag(status.cluster_unlocked),
    );
    out.metric(
        "patroni_failsafe_mode_is_active",
        "Value is 1 if failsafe mode is active, 0 if inactive.",
        "gauge",
        &flag(snap.failsafe_mode && snap.failsafe_active),
    );
    out.metric(
        "patroni_failsafe_mode_enabled",
        "Value is 1 if failsafe mode is enabled in the configuration, 0 otherwise.",
        "gauge",
        // The mode the agent runs with (the key in `/config` alone does not turn it on).
        &flag(snap.failsafe_mode),
    );
    out.metric(
        "patroni_failsafe_member",
        "Value is 1 if this node is a member of the failsafe topology, 0 otherwise.",
        "gauge",
        &flag(
            snap.failsafe_mode
                && snap
                    .cluster
                    .as_ref()
                    .and_then(|c| c.failsafe.as_ref())
                    .is_some_and(|t| t.contains_key(&snap.name)),
        ),
    );
    out.metric(
        "patroni_postgres_timeline",
        "Postgres timeline of this node (if running), 0 otherwise.",
        "counter",
        &status.timeline.unwrap_or(0).to_string(),
    );
    out.metric(
        "patroni_dcs_last_seen",
        "Epoch timestamp when DCS was last contacted successfully by Patroni.",
        "gauge",
        &status.dcs_last_seen.to_string(),
    );
    out.metric(
        "patroni_pending_restart",
        "Value is 1 if the node needs a restart, 0 otherwise.",
        "gauge",
        &flag(status.pending_restart),
    );
    out.metric(
        "patroni_is_paused",
        "Value is 1 if auto failover is disabled, 0 otherwise.",
        "gauge",
        &flag(status.pause),
    );
    out.help(
        "patroni_postgres_state",
        "Numeric representation of Postgres state.",
    );
    let values: Vec<String> = POSTGRES_STATES
        .iter()
        .enumerate()
        .map(|(i, (name, _))| format!("{i}={name}"))
        .collect();
    out.line(&format!("# Values: {}", values.join(", ")));
    out.type_and_value(
        "patroni_postgres_state",
        "gauge",
        &status.state_index().to_string(),
    );
    out.metric(
        "patroni_failover_priority",
        "Failover priority of this node, 0 if it may not become the leader.",
        "gauge",
        &snap.tags.effective_failover_priority().to_string(),
    );

    // pgbaton's own.
    let is_leader = snap.is_leader_at(now);
    out.metric(
        "pgbaton_leader",
        "Value is 1 if this node holds the leader key and its fencing deadline is ahead, 0 otherwise.",
        "gauge",
        &flag(is_leader),
    );
    let fence_left = match snap.fence_deadline {
        Some(deadline) if snap.holds_leader_key => deadline.saturating_since(now),
        _ => std::time::Duration::ZERO,
    };
    out.metric(
        "pgbaton_fence_remaining_seconds",
        "Seconds until the leader's fencing deadline, 0 if not the leader or already past it.",
        "gauge",
        &seconds(fence_left.as_millis()),
    );
    out.metric(
        "pgbaton_last_cycle_age_seconds",
        "Seconds since the HA loop last finished a cycle.",
        "gauge",
        &seconds(now.saturating_since(snap.last_cycle).as_millis()),
    );
    out.metric(
        "pgbaton_watchdog_armed",
        "Value is 1 if the watchdog device is armed (this node leads with watchdog.mode automatic or required), 0 otherwise.",
        "gauge",
        &flag(snap.watchdog_armed),
    );
    out.metric(
        "pgbaton_watchdog_failed",
        "Value is 1 if watchdog.mode is required and the watchdog cannot be armed (as /patroni's watchdog_failed), 0 otherwise.",
        "gauge",
        &flag(snap.watchdog_failed),
    );
    if let Some(vip) = vip {
        out.metric(
            "pgbaton_vip_present",
            "Value is 1 if the floating IP is on this node's interface, 0 otherwise.",
            "gauge",
            &flag(vip.present),
        );
        out.metric(
            "pgbaton_vip_desired",
            "Value is 1 if this node should hold the floating IP (leader, primary, lease valid), 0 otherwise.",
            "gauge",
            &flag(vip.desired),
        );
        out.metric(
            "pgbaton_vip_error",
            "Value is 1 if the last floating IP operation failed, 0 otherwise.",
            "gauge",
            &flag(vip.error.is_some()),
        );
    }
    out.out
}

struct Metrics {
    out: String,
    labels: String,
}

impl Metrics {
    fn line(&mut self, line: &str) {
        self.out.push_str(line);
        self.out.push('\n');
    }

    fn help(&mut self, name: &str, help: &str) {
        _ = writeln!(self.out, "# HELP {name} {help}");
    }

    fn type_and_value(&mut self, name: &str, kind: &str, value: &str) {
        _ = writeln!(self.out, "# TYPE {name} {kind}");
        _ = writeln!(self.out, "{name}{} {value}", self.labels);
    }

    fn metric(&mut self, name: &str, help: &str, kind: &str, value: &str) {
        self.help(name, help);
        self.type_and_value(name, kind, value);
    }
}

/// Label values escape `\`, `"` and newlines (exposition format).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `0.1.0` → `000100`, as Patroni's `''.join(x.zfill(2) for x in version.split('.'))`
/// (a pre-release suffix is dropped).
fn padded_version(version: &str) -> String {
    version
        .split('.')
        .map(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            format!("{digits:0>2}")
        })
        .collect()
}

fn seconds(millis: u128) -> String {
    format!("{}.{:03}", millis / 1000, millis % 1000)
}

/// Epoch seconds of a PostgreSQL timestamp as Python prints a float (`1724873966.352526`,
/// `1724873966.0`); `0` when absent or unparsable.
fn epoch_or_zero(ts: Option<&str>) -> String {
    match ts.and_then(parse_timestamp_micros) {
        Some(micros) => {
            // Exact below 2^53 µs (year 2255); the division is correctly rounded like Python's.
            #[expect(
                clippy::cast_precision_loss,
                reason = "microseconds since 1970 fit in 53 bits"
            )]
            let secs = micros as f64 / 1e6;
            if secs.fract() == 0.0 {
                format!("{secs:.1}")
            } else {
                format!("{secs}")
            }
        }
        None => "0".to_owned(),
    }
}

/// Microseconds since the Unix epoch of `YYYY-MM-DD[ T]HH:MM:SS[.ffffff][(+|-)HH[:MM[:SS]]|Z]`
/// (`timestamptz` output, or Python's `str(datetime)`). Without a zone, UTC.
pub(crate) fn parse_timestamp_micros(ts: &str) -> Option<i64> {
    let ts = ts.trim();
    let num = |s: &str| -> Option<i64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (date, rest) = (ts.get(..10)?, ts.get(10..)?);
    let mut d = date.split('-');
    let (year, month, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    let rest = rest.strip_prefix([' ', 'T'])?;
    let (hour, minute, second) = (
        num(rest.get(0..2)?)?,
        num(rest.get(3..5)?)?,
        num(rest.get(6..8)?)?,
    );
    if rest.get(2..3)? != ":" || rest.get(5..6)? != ":" {
        return None;
    }
    let mut rest = rest.get(8..)?;
    let mut micros = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let len = frac
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(frac.len());
        let digits = frac.get(..len.min(6))?;
        micros = num(digits)? * 10_i64.pow(6 - u32::try_from(digits.len()).ok()?);
        rest = &frac[len..];
    }
    let offset_secs = match rest {
        "" | "Z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            // `+HH`, `+HH:MM[:SS]` or `+HHMM[SS]`.
            let zone: String = rest[1..].chars().filter(|c| *c != ':').collect();
            if !matches!(zone.len(), 2 | 4 | 6) {
                return None;
            }
            let mut secs = 0;
            for (i, unit) in [3600, 60, 1].into_iter().enumerate() {
                if let Some(part) = zone.get(2 * i..2 * i + 2) {
                    secs += num(part)? * unit;
                }
            }
            sign * secs
        }
    };
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = baton_core::days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let cases = [
            ("1970-01-01 00:00:00+00", Some(0)),
            ("1970-01-01 00:00:00", Some(0)),
            (
                "2024-08-28 19:39:26.352526+00:00",
                Some(1_724_873_966_352_526),
            ),
            ("2024-08-28 21:39:26.352526+02", Some(1_724_873_966_352_526)),
            ("2024-08-28T14:09:26.35-0530", Some(1_724_873_966_350_000)),
            ("2000-02-29 12:00:00Z", Some(951_825_600_000_000)),
            ("2024-08-28 19:39", None),
            ("yesterday", None),
            ("2024-13-28 19:39:26+00", None),
            ("2024-08-28 19:39:26+0", None),
            ("", None),
        ];
        let got: Vec<_> = cases
            .iter()
            .map(|(s, _)| (*s, parse_timestamp_micros(s)))
            .collect();
        assert_eq!(got, cases.to_vec());
        assert_eq!(
            epoch_or_zero(Some("2024-08-28 19:39:26.352526+00:00")),
            "1724873966.352526"
        );
        assert_eq!(
            epoch_or_zero(Some("2024-08-28 19:39:26+00")),
            "1724873966.0"
        );
        assert_eq!(epoch_or_zero(None), "0");
    }

    #[test]
    fn versions_are_zero_padded() {
        assert_eq!(padded_version("0.1.0"), "000100");
        assert_eq!(padded_version("4.1.4"), "040104");
        assert_eq!(padded_version("12.3.10-rc1"), "120310");
    }
}
