//! The other members' status over their REST API (`GET <api_url>`), for the leader race.

use std::time::Duration;

use baton_core::{ClusterView, MemberName, PeerStatus};
use futures::future::join_all;

/// Ask every other member with an `api_url` for its status, concurrently, each bounded by
/// `timeout`. Members that do not answer come back with `reachable: false`.
pub async fn probe(
    http: &reqwest::Client,
    view: &ClusterView,
    me: &MemberName,
    timeout: Duration,
) -> Vec<PeerStatus> {
    let asks = view.members.iter().filter(|m| &m.name != me).map(|m| {
        let name = m.name.clone();
        let url = m.api_url.clone();
        let tags = m.tags.clone();
        async move {
            let unreachable = PeerStatus {
                name: name.clone(),
                reachable: false,
                is_primary: false,
                wal_position: None,
                timeline: None,
                tags,
                watchdog_failed: false,
            };
            let Some(url) = url else { return unreachable };
            let answer = async {
                let resp = http.get(&url).timeout(timeout).send().await?;
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
