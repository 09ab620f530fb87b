//! The one way the control commands talk to an agent's REST API (credentials, timeouts, TLS
//! through `baton_cli::http`).

use std::time::Duration;

use anyhow::Context;

/// An answer: status and body text.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// One REST request with the configured credentials. `Err` only when no answer came (connection
/// refused, timeout); any HTTP status is a [`Reply`].
pub(crate) async fn request(
    config: &baton_config::Config,
    method: reqwest::Method,
    url: &str,
    body: Option<&serde_json::Value>,
    headers: &[(&str, String)],
) -> anyhow::Result<Reply> {
    // TLS (ctl.cacert/certfile/keyfile/insecure, else restapi's) and the credentials
    // (ctl.authentication, else restapi.authentication), as patronictl reads them.
    let client = baton_cli::http::client(config, Duration::from_secs(60))?;
    let mut request = baton_cli::http::request(config, &client, method.clone(), url);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    Ok(Reply { status, body })
}

/// [`request`] that prints the answer and fails on a non-2xx status.
pub(crate) async fn call(
    config: &baton_config::Config,
    method: reqwest::Method,
    url: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<String> {
    let reply = request(config, method.clone(), url, body, &[]).await?;
    if !reply.ok() {
        let status = reqwest::StatusCode::from_u16(reply.status)
            .map_or_else(|_| reply.status.to_string(), |s| s.to_string());
        anyhow::bail!("{method} {url}: {status}: {}", reply.body);
    }
    if !reply.body.is_empty() {
        println!("{}", reply.body);
    }
    Ok(reply.body)
}
