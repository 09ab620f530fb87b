//! From the configuration to the TLS and access settings of the REST API server, the REST
//! clients (peer probes, the CLI) and the etcd client. Files are read here, once; an error
//! names the configuration key.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use baton_api::{
    Access, ClientAuth, ClientTlsSettings, ServeOptions, ServerTls, ServerTlsSettings,
};
use baton_config::{AllowEntry, Config, VerifyClient};
use baton_dcs::{DcsScope, EtcdSettings, EtcdTls};

/// The REST API server's options: TLS (files read now), the allowlist (host names resolved
/// now), extra headers, default limits.
pub async fn serve_options(config: &Config) -> anyhow::Result<ServeOptions> {
    let rest = &config.restapi;
    let tls = match &rest.tls {
        Some(t) => Some(Arc::new(ServerTls::load(ServerTlsSettings {
            certfile: t.certfile.clone(),
            keyfile: t.keyfile.clone(),
            keyfile_password: t.keyfile_password.clone(),
            cafile: t.cafile.clone(),
            ciphers: t
                .ciphers
                .as_ref()
                .map(|(_, list)| list.iter().map(|s| (*s).to_owned()).collect()),
            client_auth: match t.verify_client {
                VerifyClient::None => ClientAuth::None,
                VerifyClient::Optional => ClientAuth::Optional,
                VerifyClient::Required => ClientAuth::Required,
            },
        })?)),
        None => None,
    };
    let mut allowlist = Vec::new();
    let mut hosts = Vec::new();
    for entry in &rest.allowlist {
        match entry {
            AllowEntry::Network(ip, len) => allowlist.push((*ip, *len)),
            AllowEntry::Host(h) => hosts.push(h.clone()),
        }
    }
    allowlist.extend(baton_api::resolve_allowlist(&hosts).await);
    let mut extra_headers = Vec::new();
    for (name, value) in &rest.extra_headers {
        let header = name
            .parse()
            .with_context(|| format!("restapi.http_extra_headers: header name {name:?}"))?;
        let value = value
            .parse()
            .with_context(|| format!("restapi.http_extra_headers.{name}: bad value"))?;
        extra_headers.push((header, value));
    }
    Ok(ServeOptions {
        tls,
        access: Access {
            allowlist,
            include_members: rest.allowlist_include_members,
            extra_headers,
        },
        limits: Default::default(),
    })
}

/// The REST client's TLS settings (`ctl`, falling back to `restapi`).
pub fn client_tls(config: &Config) -> ClientTlsSettings {
    let c = config.rest_client();
    ClientTlsSettings {
        insecure: c.insecure,
        cacert: c.cacert,
        certfile: c.certfile,
        keyfile: c.keyfile,
        keyfile_password: c.keyfile_password,
    }
}

/// An HTTP client for other members' REST APIs (and this one's): Patroni's TLS settings, a
/// client certificate presented when a server asks for one.
pub fn http_client(config: &Config, timeout: Option<Duration>) -> anyhow::Result<reqwest::Client> {
    let tls = baton_api::tls::client_config(&client_tls(config))?;
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("pgbaton/", env!("CARGO_PKG_VERSION")))
        .use_preconfigured_tls(tls);
    if let Some(t) = timeout {
        builder = builder.timeout(t);
    }
    builder.build().context("build the HTTP client")
}

/// How to reach etcd: endpoints, credentials and TLS (files read, the key decrypted).
pub fn etcd_settings(config: &Config, request_timeout: Duration) -> anyhow::Result<EtcdSettings> {
    let etcd = &config.etcd;
    let tls = if etcd.protocol == "https" {
        let ca_pem = match &etcd.cacert {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("etcd3.cacert: cannot read {}", path.display()))?,
            ),
            None => None,
        };
        let identity = match (&etcd.cert, &etcd.key) {
            (Some(cert), Some(key)) => {
                let cert_pem = std::fs::read_to_string(cert)
                    .with_context(|| format!("etcd3.cert: cannot read {}", cert.display()))?;
                let key_pem = baton_api::tls::private_key_pem(
                    key,
                    etcd.key_password.as_deref(),
                    "etcd3.key",
                    "etcd3.key_password",
                )?;
                Some((cert_pem, key_pem))
            }
            _ => None,
        };
        Some(EtcdTls { ca_pem, identity })
    } else {
        None
    };
    Ok(EtcdSettings {
        endpoints: etcd.hosts.clone(),
        scope: DcsScope {
            namespace: config.namespace.clone(),
            scope: config.scope.clone(),
        },
        request_timeout,
        username: etcd.username.clone(),
        password: etcd.password.clone(),
        tls,
    })
}
