//! The other members' status over their REST API (`GET <api_url>`), for the leader race.

use std::future::Future;
use std::time::Duration;

use baton_core::{ClusterView, MemberName, PeerStatus};
use futures::future::join_all;

/// How the agent learns the other members' status. `HttpPeers` asks their REST API; the
/// simulator answers from its model.
pub trait Peers: Send + Sync + 'static {
    /// The status of every other member in `view`, each bounded by `timeout`. Members that do
    /// not answer come back with `reachable: false`.
    fn probe(
        &self,
        view: &ClusterView,
        me: &MemberName,
        timeout: Duration,
    ) -> impl Future<Output = Vec<PeerStatus>> + Send;

    /// Failsafe mode: `POST /failsafe` with `body` to each of `targets` (name, `api_url`),
    /// concurrently, each bounded by `timeout`. Returns the members that answered
    /// `200 Accepted`. The default accepts for nobody (a leader then fences as usual).
    fn post_failsafe(
        &self,
        targets: &[(MemberName, String)],
        body: &str,
        timeout: Duration,
    ) -> impl Future<Output = Vec<MemberName>> + Send {
        let _ = (targets, body, timeout);
        async { vec![] }
    }
}

/// `http://host:8008/patroni` → `http://host:8008/<endpoint>` (Patroni's
/// `Member.get_endpoint_url`).
pub fn endpoint_url(api_url: &str, endpoint: &str) -> Option<String> {
    let (scheme, rest) = api_url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    (!authority.is_empty()).then(|| format!("{scheme}://{authority}/{endpoint}"))
}

/// `GET <api_url>` on each member, concurrently.
pub struct HttpPeers {
    http: reqwest::Client,
    /// `restapi.authentication`: `POST /failsafe` is an unsafe endpoint behind it on every
    /// member (the members share the setting).
    auth: Option<(String, String)>,
}

impl HttpPeers {
    /// Plain HTTP, or HTTPS checked against the system's roots.
    pub fn new() -> anyhow::Result<HttpPeers> {
        baton_api::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(concat!("pgbaton/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HttpPeers { http, auth: None })
    }

    /// With a client built from the configuration ([`crate::security::http_client`]): the
    /// `ctl`/`restapi` CA and client certificate, so probes reach members whose API asks for
    /// client certificates.
    pub fn with_client(http: reqwest::Client) -> HttpPeers {
        HttpPeers { http, auth: None }
    }

    /// Send `restapi.authentication` with `POST /failsafe`.
    pub fn with_auth(mut self, auth: Option<(String, String)>) -> HttpPeers {
        self.auth = auth;
        self
    }
}

impl Peers for HttpPeers {
    async fn probe(
        &self,
        view: &ClusterView,
        me: &MemberName,
        timeout: Duration,
    ) -> Vec<PeerStatus> {
        let asks = view.members.iter().filter(|m| &m.name != me).map(|m| {
            let name = m.name.clone();
            let url = m.api_url.clone();
            let tags = m.tags.clone();
            async move {
                let unreachable = PeerStatus::unreachable(name.clone(), tags);
                let Some(url) = url else { return unreachable };
                let answer = async {
                    // Positions read from PostgreSQL now, not the member's last cycle's.
                    let resp = self
                        .http
                        .get(&url)
                        .header(baton_api::LIVE_HEADER, "1")
                        .timeout(timeout)
                        .send()
                        .await?;
                    resp.json::<serde_json::Value>().await
                };
                match tokio::time::timeout(timeout, answer).await {
                    Ok(Ok(json)) => baton_api::peer_status_from_json(name, &json),
                    _ => unreachable,
                }
            }
        });
        join_all(asks).await
    }

    async fn post_failsafe(
        &self,
        targets: &[(MemberName, String)],
        body: &str,
        timeout: Duration,
    ) -> Vec<MemberName> {
        let asks = targets.iter().map(|(name, api_url)| async move {
            let url = endpoint_url(api_url, "failsafe")?;
            let answer = async {
                let mut request = self
                    .http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.to_owned())
                    .timeout(timeout);
                if let Some((user, password)) = &self.auth {
                    request = request.basic_auth(user, Some(password));
                }
                let resp = request.send().await?;
                let ok = resp.status() == reqwest::StatusCode::OK;
                Ok::<_, reqwest::Error>(ok && resp.text().await? == "Accepted")
            };
            match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(true)) => Some(name.clone()),
                _ => None,
            }
        });
        join_all(asks).await.into_iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn endpoint_urls_replace_the_path_like_patroni() {
        use super::endpoint_url;
        assert_eq!(
            endpoint_url("http://10.0.0.1:8008/patroni", "failsafe").as_deref(),
            Some("http://10.0.0.1:8008/failsafe")
        );
        assert_eq!(
            endpoint_url("https://[::1]:8008", "failsafe").as_deref(),
            Some("https://[::1]:8008/failsafe")
        );
        assert_eq!(endpoint_url("garbage", "failsafe"), None);
    }
}
