//! Who asked: a log line for every refused login (rate-limited, so a password-guessing client
//! cannot flood the log) and for every accepted unsafe request (switchover, failover,
//! cancelling a scheduled switchover, `PATCH /config`, reinitialize), with the client's address
//! and the user it authenticated as.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_core::Mono;

/// At most one "failed login" line per window; the next one says how many were left out.
pub(crate) const FAILED_LOGIN_WINDOW: Duration = Duration::from_secs(10);

/// Shared by every request handler (cloned with [`crate::ApiState`]).
#[derive(Clone, Debug, Default)]
pub struct AuditLog {
    failed: Arc<Mutex<FailedLogins>>,
}

#[derive(Debug, Default)]
struct FailedLogins {
    /// When the last line was written.
    logged_at: Option<Mono>,
    /// Failures since then that were not logged.
    suppressed: u64,
}

/// How the client is named in the log.
pub(crate) fn client_label(client: Option<SocketAddr>) -> String {
    client.map_or_else(|| "an unknown address".to_owned(), |a| a.ip().to_string())
}

impl AuditLog {
    /// The line to log for a refused login at `now`, or `None` while inside the window of the
    /// previous line (the failure is counted and reported with the next line).
    pub(crate) fn failed_login_line(
        &self,
        now: Mono,
        client: Option<SocketAddr>,
        request: &str,
        reason: &str,
    ) -> Option<String> {
        let mut failed = self
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failed
            .logged_at
            .is_some_and(|at| now.saturating_since(at) < FAILED_LOGIN_WINDOW)
        {
            failed.suppressed += 1;
            return None;
        }
        let more = std::mem::take(&mut failed.suppressed);
        failed.logged_at = Some(now);
        let mut line = format!(
            "REST API: refused {request} from {}: {reason}",
            client_label(client)
        );
        if more > 0 {
            line.push_str(&format!(
                " ({more} more refused logins in the last {} s not logged)",
                FAILED_LOGIN_WINDOW.as_secs()
            ));
        }
        Some(line)
    }

    pub(crate) fn failed_login(
        &self,
        now: Mono,
        client: Option<SocketAddr>,
        request: &str,
        reason: &str,
    ) {
        if let Some(line) = self.failed_login_line(now, client, request, reason) {
            tracing::warn!("{line}");
        }
    }
}

/// What of a request body is logged: never the whole body (a configuration patch may carry
/// values an operator would not want in a log).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Summary {
    Nothing,
    /// The names of the top-level keys (`PATCH /config`).
    TopLevelKeys,
    /// These fields when they are strings, numbers or booleans (switchover requests).
    Fields(&'static [&'static str]),
}

/// ` {"leader": "n1", ...}`-like text for the log, or an empty string.
pub(crate) fn request_summary(summary: Summary, body: &[u8]) -> String {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return String::new();
    };
    let parts: Vec<String> = match summary {
        Summary::Nothing => return String::new(),
        Summary::TopLevelKeys => map.keys().map(|k| format!("{k:?}")).collect(),
        Summary::Fields(fields) => fields
            .iter()
            .filter_map(|f| match map.get(*f)? {
                v @ (serde_json::Value::String(_)
                | serde_json::Value::Number(_)
                | serde_json::Value::Bool(_)) => Some(format!("{f}={v}")),
                _ => None,
            })
            .collect(),
    };
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// Who asked for an accepted unsafe request: `user admin at 10.0.0.9`.
pub(crate) fn who(auth: Option<&(String, String)>, client: Option<SocketAddr>) -> String {
    match auth {
        Some((user, _)) => format!("user {user} at {}", client_label(client)),
        None => format!(
            "{} (no restapi.authentication configured)",
            client_label(client)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_logins_are_logged_once_per_window_with_a_count() {
        let log = AuditLog::default();
        let at = |s: u64| Mono::from_millis(s * 1000);
        let client: Option<SocketAddr> = "10.1.2.3:40000".parse().ok();
        let line =
            |s| log.failed_login_line(at(s), client, "POST /switchover", "not authenticated");
        assert_eq!(
            line(100).as_deref(),
            Some("REST API: refused POST /switchover from 10.1.2.3: not authenticated")
        );
        assert_eq!(line(101), None);
        assert_eq!(line(109), None);
        assert_eq!(
            line(110).as_deref(),
            Some(
                "REST API: refused POST /switchover from 10.1.2.3: not authenticated \
                 (2 more refused logins in the last 10 s not logged)"
            )
        );
        assert_eq!(line(111), None);
    }

    #[test]
    fn summaries_never_carry_values_of_a_config_patch() {
        let patch = br#"{"postgresql":{"parameters":{"secret_thing":"hunter2"}},"ttl":30}"#;
        assert_eq!(
            request_summary(Summary::TopLevelKeys, patch),
            r#" ("postgresql", "ttl")"#
        );
        let switchover = br#"{"leader":"n1","candidate":"n2","extra":{"x":1}}"#;
        assert_eq!(
            request_summary(
                Summary::Fields(&["leader", "candidate", "scheduled_at"]),
                switchover
            ),
            r#" (leader="n1", candidate="n2")"#
        );
        assert_eq!(request_summary(Summary::Nothing, switchover), "");
        assert_eq!(request_summary(Summary::TopLevelKeys, b"not json"), "");
    }

    #[test]
    fn who_names_the_user_and_the_address() {
        let client: Option<SocketAddr> = "[fd00::5]:1".parse().ok();
        let auth = ("admin".to_owned(), "secret".to_owned());
        assert_eq!(who(Some(&auth), client), "user admin at fd00::5");
        assert_eq!(
            who(None, None),
            "an unknown address (no restapi.authentication configured)"
        );
    }
}
