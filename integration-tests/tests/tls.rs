//! A hardened cluster (issue 11): etcd over TLS with `--client-cert-auth`, JWT tokens that
//! expire after 5 s and a user whose role only reaches the cluster's prefix; the REST API over
//! HTTPS with client certificates (required for the unsafe endpoints), basic auth and an
//! allowlist; the pgbaton CLI, Patroni's patronictl and HAProxy's `check-ssl` health checks talking
//! to it.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_integration_tests::tls::{ETCD_PASSWORD, ETCD_USER, Pki, SecureEtcd, hardened_overlay};
use baton_integration_tests::{
    Check, Cluster, ClusterSpec, Patronictl, PgTarget, Tools, patronictl_venv, scaled, wait_for,
};
use serde_json::{Value, json};

const TOKEN_TTL: Duration = Duration::from_secs(5);

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `GET /patroni` of every node over HTTPS: (name, role, state, dcs_last_seen).
async fn roles(cluster: &Cluster, http: &reqwest::Client) -> Vec<(String, Option<Value>)> {
    let mut out = Vec::new();
    for node in cluster.nodes() {
        let url = format!("https://127.0.0.1:{}/patroni", node.config.rest_port);
        let doc = match http.get(&url).send().await {
            Ok(r) => r.json::<Value>().await.ok(),
            Err(_) => None,
        };
        out.push((node.name.clone(), doc));
    }
    out
}

/// Waits until one node is a running primary and every other a running replica; the leader.
async fn wait_healthy(
    cluster: &Cluster,
    http: &reqwest::Client,
    what: &str,
) -> anyhow::Result<String> {
    wait_for(what, scaled(Duration::from_secs(120)), || async {
        let docs = roles(cluster, http).await;
        let role = |d: &Option<Value>| {
            d.as_ref().map(|d| {
                (
                    d["role"].as_str().unwrap_or("").to_owned(),
                    d["state"].as_str().unwrap_or("").to_owned(),
                )
            })
        };
        let primaries: Vec<&String> = docs
            .iter()
            .filter(|(_, d)| role(d) == Some(("primary".into(), "running".into())))
            .map(|(n, _)| n)
            .collect();
        let replicas = docs
            .iter()
            .filter(|(_, d)| role(d) == Some(("replica".into(), "running".into())))
            .count();
        if primaries.len() == 1 && replicas + 1 == docs.len() {
            Ok(Check::Done(primaries[0].clone()))
        } else {
            Ok(Check::NotYet(format!("{docs:?}")))
        }
    })
    .await
}

#[tokio::test]
async fn tls_etcd_with_auth_and_a_tls_rest_api() -> anyhow::Result<()> {
    let test = "tls_etcd_with_auth_and_a_tls_rest_api";
    let Some(tools) = Tools::for_test(test)? else {
        return Ok(());
    };
    let mut spec = ClusterSpec::new(2);
    spec.start_etcd = false;
    spec.start_agents = false;
    let mut cluster = Cluster::create(&tools, spec)?;
    let prefix = format!("{}/", cluster.key_prefix().trim_end_matches('/'));
    let pki = Pki::create(&cluster.dir().join("pki"))?;
    let client_cert = pki.issue("baton-client")?;
    let etcd = SecureEtcd::start(
        &tools.etcd,
        &cluster.dir().join("etcd-tls"),
        &pki,
        &prefix,
        TOKEN_TTL,
    )
    .await?;
    // The agents' etcd user reaches the cluster's prefix and nothing else.
    assert!(
        etcd.can_read("baton", "baton-etcd-pw", &format!("{prefix}x"))
            .await?
    );
    assert!(
        !etcd
            .can_read("baton", "baton-etcd-pw", "/elsewhere/x")
            .await?
    );

    for name in cluster.names() {
        let node_cert = pki.issue(&name)?;
        cluster.update_config(
            &name,
            &hardened_overlay(&pki, &node_cert, &client_cert, &etcd),
        )?;
        cluster.start_agent(&name)?;
    }
    let http = pki.http_client(Some(&client_cert), None)?;
    let leader = wait_healthy(&cluster, &http, "a healthy cluster over TLS etcd and HTTPS").await?;
    let replica = cluster
        .names()
        .into_iter()
        .find(|n| *n != leader)
        .expect("two nodes");

    // The agents keep reading etcd after their first tokens expired (JWT ttl 5 s): the
    // leader's last successful DCS read moves on past two token lifetimes from now.
    let since = now_unix();
    let leader_url = format!(
        "https://127.0.0.1:{}/patroni",
        cluster.node(&leader).config.rest_port
    );
    wait_for(
        "DCS reads go on after the etcd token expired",
        scaled(Duration::from_secs(60)),
        || async {
            let doc: Value = http.get(&leader_url).send().await?.json().await?;
            let seen = doc["dcs_last_seen"].as_u64().unwrap_or(0);
            if seen > since + 2 * TOKEN_TTL.as_secs() && doc["role"] == "primary" {
                Ok(Check::Done(()))
            } else {
                Ok(Check::NotYet(format!(
                    "dcs_last_seen {seen}, since {since}: {doc}"
                )))
            }
        },
    )
    .await?;

    // Extra headers on HTTPS answers (http_extra_headers and https_extra_headers).
    let resp = http.get(&leader_url).send().await?;
    assert_eq!(resp.headers()["x-frame-options"], "SAMEORIGIN");
    assert_eq!(
        resp.headers()["strict-transport-security"],
        "max-age=31536000"
    );

    // Refusals: no credentials (401), a client outside the allowlist (403), no client
    // certificate (403); none of them changes the DCS.
    let failover_key = format!("{prefix}failover");
    let switchover_url = format!(
        "https://127.0.0.1:{}/switchover",
        cluster.node(&leader).config.rest_port
    );
    let body = json!({"leader": leader, "candidate": replica});
    let resp = http.post(&switchover_url).json(&body).send().await?;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.text().await?, "no auth header received");
    let outside = pki.http_client(Some(&client_cert), Some(IpAddr::from([127, 0, 0, 2])))?;
    let resp = outside
        .post(&switchover_url)
        .basic_auth("admin", Some("rest-pw"))
        .json(&body)
        .send()
        .await?;
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.text().await?, "Access is denied");
    let anonymous = pki.http_client(None, None)?;
    let resp = anonymous
        .post(&switchover_url)
        .basic_auth("admin", Some("rest-pw"))
        .json(&body)
        .send()
        .await?;
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.text().await?, "client certificate required");
    // GETs need no certificate (verify_client: optional).
    assert_eq!(anonymous.get(&leader_url).send().await?.status(), 200);
    assert_eq!(
        etcd.get(&failover_key).await?,
        None,
        "no failover key written"
    );
    assert_eq!(
        etcd.get(&format!("{prefix}leader")).await?.as_deref(),
        Some(leader.as_str())
    );

    // HAProxy checks /primary over TLS (check-ssl, verifying the CA, presenting a client
    // certificate) and routes to the leader.
    let haproxy = start_haproxy(&tools, &cluster, &pki, &client_cert)?;
    let via_haproxy = |port: u16| {
        PgTarget {
            host: "127.0.0.1".to_owned(),
            port: haproxy.port,
            ..cluster.node(&leader).pg()
        }
        .with_port_check(port)
    };
    let leader_pg = cluster.node(&leader).config.pg_port;
    wait_for(
        "HAProxy routes to the leader after check-ssl health checks",
        scaled(Duration::from_secs(60)),
        || via_haproxy(leader_pg),
    )
    .await?;

    // The pgbaton CLI over TLS etcd and HTTPS with its client certificate: list, switchover.
    let config = cluster
        .node(&leader)
        .config_path
        .to_string_lossy()
        .into_owned();
    let out = cluster
        .pgbaton_cli(&["-c", &config, "list", "--format", "json"])
        .await?;
    assert!(
        out.status.success(),
        "list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    cluster.cli_switchover(&leader, &replica, None).await?;
    let new_leader = wait_healthy(&cluster, &http, "the switchover done over HTTPS").await?;
    assert_eq!(new_leader, replica);
    let new_pg = cluster.node(&new_leader).config.pg_port;
    let via_haproxy_new = |port: u16| {
        PgTarget {
            host: "127.0.0.1".to_owned(),
            port: haproxy.port,
            ..cluster.node(&new_leader).pg()
        }
        .with_port_check(port)
    };
    wait_for(
        "HAProxy follows the new leader",
        scaled(Duration::from_secs(60)),
        || via_haproxy_new(new_pg),
    )
    .await?;

    // Patroni's own patronictl over TLS etcd with a user, and over HTTPS with its client
    // certificate and the REST credentials: list, then a switchover back.
    // etcd's gateway refuses a client certificate with a CommonName once auth is on, so
    // patronictl presents one without (docs/operations.md, Security).
    if let Some(bin) = patronictl_venv(test).await? {
        let client_cert = pki.issue_without_cn("patronictl")?;
        let spec = cluster.spec();
        let config = json!({
            "scope": spec.scope,
            "namespace": spec.namespace,
            "etcd3": {
                "hosts": [etcd.tls_host],
                "protocol": "https",
                "cacert": pki.ca_file,
                "cert": client_cert.cert,
                "key": client_cert.key,
                "username": ETCD_USER,
                "password": ETCD_PASSWORD,
            },
            "ctl": {
                "cacert": pki.ca_file,
                "certfile": client_cert.cert,
                "keyfile": client_cert.key,
                "authentication": {"username": "admin", "password": "rest-pw"},
            },
        });
        let config_path = cluster.dir().join("patronictl-tls.yml");
        std::fs::write(&config_path, serde_json::to_string(&config)?)?;
        let ctl = Patronictl {
            bin,
            config_path,
            scope: spec.scope.clone(),
        };
        let listed = ctl.list().await?;
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert!(
            listed
                .iter()
                .any(|m| m["Member"] == new_leader.as_str() && m["Role"] == "Leader"),
            "patronictl sees the leader over TLS etcd: {listed:?}"
        );
        let scope = spec.scope.clone();
        let out = ctl
            .run(&[
                "switchover",
                &scope,
                "--leader",
                &new_leader,
                "--candidate",
                &leader,
                "--force",
            ])
            .await?;
        assert!(out.success, "{out}");
        let back = wait_healthy(&cluster, &http, "the switchover patronictl asked for").await?;
        assert_eq!(back, leader, "patronictl's switchover over HTTPS");
    }

    drop(haproxy);
    cluster.finish();
    drop(etcd);
    Ok(())
}

/// HAProxy in front of the nodes' PostgreSQL, checking `/primary` with `check-ssl`.
struct Haproxy {
    _proc: baton_integration_tests::Proc,
    port: u16,
}

fn start_haproxy(
    tools: &Tools,
    cluster: &Cluster,
    pki: &Pki,
    client: &baton_integration_tests::tls::CertFiles,
) -> anyhow::Result<Haproxy> {
    let port = baton_integration_tests::free_port()?;
    let mut servers = String::new();
    for node in cluster.nodes() {
        servers.push_str(&format!(
            "    server {} 127.0.0.1:{} check port {} check-ssl verify required ca-file {} crt {}\n",
            node.name,
            node.config.pg_port,
            node.config.rest_port,
            pki.ca_file.display(),
            client.combined.display(),
        ));
    }
    let config = format!(
        "global\n    maxconn 100\n\ndefaults\n    mode tcp\n    timeout connect 2s\n    \
         timeout client 30m\n    timeout server 30m\n    timeout check 2s\n\n\
         listen primary\n    bind 127.0.0.1:{port}\n    option httpchk GET /primary\n    \
         http-check expect status 200\n    \
         default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions\n{servers}"
    );
    let dir = cluster.dir().join("haproxy-tls");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config)?;
    let mut cmd = std::process::Command::new(&tools.haproxy);
    cmd.arg("-db").arg("-f").arg(&path);
    let proc =
        baton_integration_tests::Proc::spawn("haproxy (check-ssl)", cmd, &dir.join("haproxy.log"))?;
    Ok(Haproxy { _proc: proc, port })
}

trait PortCheck {
    /// Connects and checks that the server behind is on `port` and a primary.
    fn with_port_check(
        self,
        port: u16,
    ) -> impl std::future::Future<Output = anyhow::Result<Check<()>>>;
}

impl PortCheck for PgTarget {
    async fn with_port_check(self, port: u16) -> anyhow::Result<Check<()>> {
        match self
            .query("select inet_server_port()::text, pg_is_in_recovery()::text")
            .await
        {
            Ok(rows) => {
                let got = rows.first().cloned().unwrap_or_default();
                if got == vec![Some(port.to_string()), Some("false".to_owned())] {
                    Ok(Check::Done(()))
                } else {
                    Ok(Check::NotYet(format!("{got:?}")))
                }
            }
            Err(e) => Ok(Check::NotYet(e.to_string())),
        }
    }
}
