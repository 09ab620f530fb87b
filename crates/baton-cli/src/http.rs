//! The CLI's REST client: TLS and credentials from the `ctl` section (falling back to
//! `restapi`), as patronictl reads them.

use std::time::Duration;

use anyhow::Context;

/// An HTTP client for the members' REST APIs.
pub fn client(config: &baton_config::Config, timeout: Duration) -> anyhow::Result<reqwest::Client> {
    baton_api::tls::install_crypto_provider();
    baton_agent::security::http_client(config, Some(timeout))
        .context("set up the REST API client (ctl / restapi TLS settings)")
}

/// `method url` with the credentials for the unsafe endpoints (`ctl.authentication`, else
/// `restapi.authentication`).
pub fn request(
    config: &baton_config::Config,
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
) -> reqwest::RequestBuilder {
    let request = client.request(method, url);
    match config.rest_client().authentication {
        Some((user, password)) => request.basic_auth(user, Some(password)),
        None => request,
    }
}

/// How to reach etcd (TLS files read now).
pub fn etcd_settings(
    config: &baton_config::Config,
    timeout: Duration,
) -> anyhow::Result<baton_dcs::EtcdSettings> {
    baton_api::tls::install_crypto_provider();
    baton_agent::security::etcd_settings(config, timeout)
}
