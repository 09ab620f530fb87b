//! TLS, client certificates, the allowlist, extra headers and the request limits, over real
//! sockets ([`crate::serve_with`]). Certificates are made at test time with rcgen.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{harness, primary};
use crate::tls::{ClientAuth, ClientTlsSettings, ServerTls, ServerTlsSettings, client_config};
use crate::{Access, ApiState, Command, Limits, ServeOptions, serve_with};

/// A test CA in a temporary directory, issuing server and client certificates.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_file: PathBuf,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "pgbaton test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    Pki { dir, ca, ca_file }
}

impl Pki {
    /// (certificate, key) files for `name`, valid for localhost and 127.0.0.1.
    fn issue(&self, name: &str, client: bool) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let cert_file = self.dir.path().join(format!("{name}.pem"));
        let key_file = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    fn server_settings(&self, name: &str, client_auth: ClientAuth) -> ServerTlsSettings {
        let (certfile, keyfile) = self.issue(name, false);
        ServerTlsSettings {
            certfile,
            keyfile: Some(keyfile),
            keyfile_password: None,
            cafile: Some(self.ca_file.clone()),
            ciphers: None,
            client_auth,
        }
    }

    fn client(&self, cert: Option<(PathBuf, PathBuf)>) -> reqwest::Client {
        let settings = ClientTlsSettings {
            insecure: false,
            cacert: Some(self.ca_file.clone()),
            keyfile: cert.as_ref().map(|(_, k)| k.clone()),
            certfile: cert.map(|(c, _)| c),
            keyfile_password: None,
        };
        reqwest::Client::builder()
            .use_preconfigured_tls(client_config(&settings).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }
}

struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("server stops")
            .expect("server task");
        assert!(result.is_ok(), "{result:?}");
    }

    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://127.0.0.1:{}{path}", self.addr.port())
    }
}

async fn start(state: ApiState, options: ServeOptions) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve_with(listener, state, options, async {
        _ = stopped.await;
    }));
    Server {
        addr,
        stop: Some(stop),
        task,
    }
}

/// The DER of the certificate a TLS server at `addr` presents.
async fn presented_certificate(pki: &Pki, addr: SocketAddr) -> Vec<u8> {
    let settings = ClientTlsSettings {
        cacert: Some(pki.ca_file.clone()),
        ..ClientTlsSettings::default()
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(&settings).unwrap()));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn pem_der(path: &Path) -> Vec<u8> {
    crate::tls::read_certs(path, "test").unwrap()[0].to_vec()
}

#[tokio::test]
async fn https_serves_and_a_reload_swaps_the_certificate_without_closing_the_listener() {
    crate::tls::install_crypto_provider();
    let pki = pki();
    let settings = pki.server_settings("node1", ClientAuth::None);
    let (certfile, keyfile) = (settings.certfile.clone(), settings.keyfile.clone().unwrap());
    let tls = Arc::new(ServerTls::load(settings).unwrap());
    let h = harness(primary());
    let server = start(
        h.state.clone(),
        ServeOptions {
            tls: Some(tls.clone()),
            ..ServeOptions::default()
        },
    )
    .await;
    let client = pki.client(None);
    let resp = client
        .get(server.url("https", "/primary"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Plain HTTP on the TLS port gets nowhere.
    assert!(
        reqwest::Client::new()
            .get(server.url("http", "/primary"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .is_err()
    );
    let first = presented_certificate(&pki, server.addr).await;
    assert_eq!(first, pem_der(&certfile));

    // Nothing changed on disk: nothing to do.
    assert!(!tls.reload().unwrap());
    // A new certificate and key at the same paths (a renewal).
    let (new_cert, new_key) = pki.issue("node1-renewed", false);
    std::fs::copy(&new_cert, &certfile).unwrap();
    std::fs::copy(&new_key, &keyfile).unwrap();
    assert!(tls.reload().unwrap());
    let second = presented_certificate(&pki, server.addr).await;
    assert_eq!(second, pem_der(&new_cert));
    assert_ne!(first, second);
    // A broken file on a later reload keeps the working configuration.
    std::fs::write(&keyfile, "not a key").unwrap();
    let e = tls.reload().unwrap_err();
    assert!(e.to_string().starts_with("restapi.keyfile: "), "{e}");
    assert_eq!(presented_certificate(&pki, server.addr).await, second);
    let resp = client
        .get(server.url("https", "/patroni"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    server.finish().await;
}

#[tokio::test]
async fn verify_client_required_fails_the_handshake_without_a_certificate() {
    crate::tls::install_crypto_provider();
    let pki = pki();
    let tls =
        Arc::new(ServerTls::load(pki.server_settings("node1", ClientAuth::Required)).unwrap());
    let h = harness(primary());
    let options = ServeOptions {
        tls: Some(tls),
        ..ServeOptions::default()
    };
    let server = start(h.state.clone(), options).await;
    assert!(
        pki.client(None)
            .get(server.url("https", "/primary"))
            .send()
            .await
            .is_err()
    );
    let with_cert = pki.client(Some(pki.issue("admin", true)));
    let resp = with_cert
        .get(server.url("https", "/primary"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // A certificate from another CA is refused too.
    let other = pki_client_of_other_ca(&pki);
    assert!(
        other
            .get(server.url("https", "/primary"))
            .send()
            .await
            .is_err()
    );
    server.finish().await;
}

/// A client trusting our CA but presenting a certificate of another CA.
fn pki_client_of_other_ca(ours: &Pki) -> reqwest::Client {
    let other = pki();
    let (cert, key) = other.issue("intruder", true);
    let settings = ClientTlsSettings {
        cacert: Some(ours.ca_file.clone()),
        certfile: Some(cert),
        keyfile: Some(key),
        ..ClientTlsSettings::default()
    };
    // Keep the other CA's directory alive for the files' sake: the config is read now.
    let config = client_config(&settings).unwrap();
    drop(other);
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn with_commands(state: &mut ApiState) -> mpsc::Receiver<Command> {
    let (tx, rx) = mpsc::channel(4);
    state.commands = Some(tx);
    rx
}

const SWITCHOVER: &str = r#"{"leader":"node1","candidate":"node2"}"#;

#[tokio::test]
async fn verify_client_optional_serves_gets_and_refuses_unsafe_requests_without_a_certificate() {
    crate::tls::install_crypto_provider();
    let pki = pki();
    let tls =
        Arc::new(ServerTls::load(pki.server_settings("node1", ClientAuth::Optional)).unwrap());
    let mut h = harness(primary());
    h.state.auth = Some(("admin".to_owned(), "s3cret".to_owned()));
    let mut commands = with_commands(&mut h.state);
    let server = start(
        h.state.clone(),
        ServeOptions {
            tls: Some(tls),
            ..ServeOptions::default()
        },
    )
    .await;
    let anonymous = pki.client(None);
    let resp = anonymous
        .get(server.url("https", "/primary"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = anonymous
        .post(server.url("https", "/switchover"))
        .basic_auth("admin", Some("s3cret"))
        .body(SWITCHOVER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.text().await.unwrap(), "client certificate required");
    // With a certificate, authentication comes next: 401 without credentials.
    let admin = pki.client(Some(pki.issue("admin", true)));
    let resp = admin
        .post(server.url("https", "/switchover"))
        .body(SWITCHOVER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.text().await.unwrap(), "no auth header received");
    // Neither request reached the agent.
    assert!(commands.try_recv().is_err());
    server.finish().await;
}

async fn raw_request(addr: SocketAddr, request: &str) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(20), conn.read_to_string(&mut response))
        .await
        .expect("an answer")
        .unwrap();
    response
}

fn post(path: &str, body: &str, auth: Option<&str>) -> String {
    let auth = auth
        .map(|a| format!("Authorization: Basic {a}\r\n"))
        .unwrap_or_default();
    format!(
        "POST {path} HTTP/1.0\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn the_allowlist_refuses_with_403_before_authentication_and_lets_health_checks_through() {
    let mut h = harness(primary());
    h.state.auth = Some(("admin".to_owned(), "s3cret".to_owned()));
    let mut commands = with_commands(&mut h.state);
    let elsewhere = ServeOptions {
        access: Access {
            allowlist: vec![("10.0.0.0".parse().unwrap(), 8)],
            ..Access::default()
        },
        ..ServeOptions::default()
    };
    let server = start(h.state.clone(), elsewhere).await;
    let answer = raw_request(server.addr, &post("/switchover", SWITCHOVER, None)).await;
    assert!(answer.starts_with("HTTP/1.0 403 Forbidden\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nAccess is denied"), "{answer}");
    let answer = raw_request(server.addr, "GET /primary HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
    server.finish().await;

    // Allowed by address: authentication decides (401 without credentials).
    let here = ServeOptions {
        access: Access {
            allowlist: vec![("127.0.0.1".parse().unwrap(), 32)],
            ..Access::default()
        },
        ..ServeOptions::default()
    };
    let server = start(h.state.clone(), here).await;
    let answer = raw_request(server.addr, &post("/switchover", SWITCHOVER, None)).await;
    assert!(
        answer.starts_with("HTTP/1.0 401 Unauthorized\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("www-authenticate: Basic realm=\"Patroni\""),
        "{answer}"
    );
    server.finish().await;
    assert!(commands.try_recv().is_err(), "no request reached the agent");

    // allowlist_include_members alone: the members' API hosts (node1's is 10.0.0.1 in the
    // view) may, 127.0.0.1 may not until a member's api_url names it.
    let members = ServeOptions {
        access: Access {
            include_members: true,
            ..Access::default()
        },
        ..ServeOptions::default()
    };
    let server = start(h.state.clone(), members.clone()).await;
    let answer = raw_request(server.addr, &post("/switchover", SWITCHOVER, None)).await;
    assert!(answer.starts_with("HTTP/1.0 403 Forbidden\r\n"), "{answer}");
    server.finish().await;
    let mut snap = primary();
    if let Some(c) = snap.cluster.as_mut() {
        c.members[1].api_url = Some("https://127.0.0.1:8009/patroni".to_owned());
    }
    h.publish.send_replace(Arc::new(snap));
    let server = start(h.state.clone(), members).await;
    let answer = raw_request(server.addr, &post("/switchover", SWITCHOVER, None)).await;
    assert!(
        answer.starts_with("HTTP/1.0 401 Unauthorized\r\n"),
        "{answer}"
    );
    server.finish().await;
    assert!(commands.try_recv().is_err());
}

#[tokio::test]
async fn extra_headers_are_on_every_response() {
    let h = harness(primary());
    let options = ServeOptions {
        access: Access {
            extra_headers: vec![(
                "x-frame-options".parse().unwrap(),
                "SAMEORIGIN".parse().unwrap(),
            )],
            ..Access::default()
        },
        ..ServeOptions::default()
    };
    let server = start(h.state.clone(), options).await;
    for request in [
        "GET /patroni HTTP/1.0\r\n\r\n".to_owned(),
        "OPTIONS / HTTP/1.0\r\n\r\n".to_owned(),
        post("/switchover", SWITCHOVER, None),
    ] {
        let answer = raw_request(server.addr, &request).await;
        assert!(
            answer.contains("x-frame-options: SAMEORIGIN\r\n"),
            "{answer}"
        );
    }
    server.finish().await;
}

#[tokio::test]
async fn oversized_and_slow_bodies_are_refused_and_unsafe_requests_have_their_own_limit() {
    let mut h = harness(primary());
    // An agent that never answers: accepted unsafe requests stay in flight.
    let _commands = with_commands(&mut h.state);
    let limits = Limits {
        body_read_timeout: Duration::from_millis(300),
        max_body_bytes: 1024,
        max_unsafe_requests: 2,
        ..Limits::default()
    };
    let server = start(
        h.state.clone(),
        ServeOptions {
            limits,
            ..ServeOptions::default()
        },
    )
    .await;
    let big = format!("{{\"leader\":\"node1\",\"pad\":\"{}\"}}", "x".repeat(2000));
    let answer = raw_request(server.addr, &post("/switchover", &big, None)).await;
    assert!(answer.starts_with("HTTP/1.0 413 "), "{answer}");
    // A body announced but never sent.
    let answer = raw_request(
        server.addr,
        "POST /switchover HTTP/1.0\r\nContent-Length: 100\r\n\r\n{\"lea",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.0 408 "), "{answer}");

    // Two switchovers in flight (the agent never answers them)...
    let mut stuck = Vec::new();
    for _ in 0..2 {
        let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        conn.write_all(post("/switchover", SWITCHOVER, None).as_bytes())
            .await
            .unwrap();
        stuck.push(conn);
    }
    // ... so a third is refused at once, while /primary answers.
    let third = loop {
        let answer = raw_request(server.addr, &post("/switchover", SWITCHOVER, None)).await;
        if answer.starts_with("HTTP/1.0 503 ") {
            break answer;
        }
        // The first two may not have taken their slots yet; the loop is bounded by the
        // test's own timeout.
        assert!(!answer.starts_with("HTTP/1.0 200 "), "{answer}");
        tokio::task::yield_now().await;
    };
    assert!(
        third.contains("too many requests to the unsafe endpoints"),
        "{third}"
    );
    let answer = raw_request(server.addr, "GET /primary HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
    drop(stuck);
    server.finish().await;
}

#[tokio::test]
async fn idle_connections_are_closed_and_primary_keeps_answering() {
    let h = harness(primary());
    let limits = Limits {
        header_read_timeout: Duration::from_millis(500),
        max_connections: 16,
        ..Limits::default()
    };
    let server = start(
        h.state.clone(),
        ServeOptions {
            limits,
            ..ServeOptions::default()
        },
    )
    .await;
    // More idle connections than the server serves at once, and half a request line on some.
    let mut idle = Vec::new();
    for i in 0..40 {
        let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        if i % 2 == 0 {
            conn.write_all(b"GET /prim").await.unwrap();
        }
        idle.push(conn);
    }
    // The health check is answered (once the server has shed the idlers it could not
    // serve).
    let answer = raw_request(server.addr, "GET /primary HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
    // And every idle connection is eventually closed by the server.
    for mut conn in idle {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "an idle connection stayed open");
    }
    server.finish().await;
}

/// HTTP/1.1 keeps the connection for the next request (load balancers and benchmarks reuse
/// it); an idle kept-alive connection is closed after `header_read_timeout` like a slow
/// first request; HTTP/1.0 is closed after the answer (tested by `raw_request` everywhere).
#[tokio::test]
async fn a_kept_alive_connection_serves_several_requests_then_times_out_idle() {
    let h = harness(primary());
    let limits = Limits {
        header_read_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let server = start(
        h.state.clone(),
        ServeOptions {
            limits,
            ..ServeOptions::default()
        },
    )
    .await;
    let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = b"GET /primary HTTP/1.1\r\nHost: x\r\n\r\n";
    for _ in 0..3 {
        conn.write_all(request).await.unwrap();
        // One whole answer: headers, then the body's Content-Length bytes.
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            conn.read_exact(&mut byte).await.unwrap();
            got.push(byte[0]);
        }
        let head = String::from_utf8(got).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .expect("content-length")
            .parse()
            .unwrap();
        let mut body = vec![0u8; length];
        conn.read_exact(&mut body).await.unwrap();
        assert!(String::from_utf8(body).unwrap().contains("\"role\""));
    }
    // Idle now: the server closes it (EOF), well within the test's bound.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "an idle kept-alive connection stayed open");
    server.finish().await;
}

#[tokio::test]
async fn an_encrypted_pkcs8_key_is_read_with_its_password() {
    crate::tls::install_crypto_provider();
    let pki = pki();
    let mut settings = pki.server_settings("node1", ClientAuth::None);
    let keyfile = settings.keyfile.clone().unwrap();
    // Encrypt the key as `openssl pkcs8 -topk8 -v2 aes-256-cbc` does (PBES2, PBKDF2-SHA256).
    let plain = std::fs::read_to_string(&keyfile).unwrap();
    let (_, der) = pkcs8::der::pem::decode_vec(plain.as_bytes()).unwrap();
    let info = pkcs8::PrivateKeyInfo::try_from(der.as_slice()).unwrap();
    let params =
        pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(2048, b"saltsalt", &[7u8; 16])
            .unwrap();
    let encrypted = info.encrypt_with_params(params, "hunter2").unwrap();
    let pem = encrypted
        .to_pem("ENCRYPTED PRIVATE KEY", pkcs8::der::pem::LineEnding::LF)
        .unwrap();
    std::fs::write(&keyfile, pem).unwrap();

    let e = ServerTls::load(settings.clone()).unwrap_err();
    expect_test::expect![[
        r#"restapi.keyfile: <key>: the private key is encrypted: set restapi.keyfile_password"#
    ]]
    .assert_eq(
        &e.to_string()
            .replace(&keyfile.display().to_string(), "<key>"),
    );
    settings.keyfile_password = Some("badpass1".to_owned());
    let e = ServerTls::load(settings.clone()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("restapi.keyfile_password: cannot decrypt"),
        "{e}"
    );
    assert!(!e.to_string().contains("badpass1"), "{e}");
    settings.keyfile_password = Some("hunter2".to_owned());
    let tls = Arc::new(ServerTls::load(settings).unwrap());
    let server = start(
        harness(primary()).state,
        ServeOptions {
            tls: Some(tls),
            ..ServeOptions::default()
        },
    )
    .await;
    let resp = pki
        .client(None)
        .get(server.url("https", "/primary"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    server.finish().await;

    // OpenSSL's traditional encrypted PEM: refused with the way out.
    std::fs::write(
        &keyfile,
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n",
    )
    .unwrap();
    let e =
        crate::tls::read_private_key(&keyfile, Some("x"), "ctl.keyfile", "ctl.keyfile_password")
            .unwrap_err();
    assert!(e.to_string().contains("openssl pkcs8 -topk8"), "{e}");
}

#[tokio::test]
async fn ciphers_limit_the_tls12_suites_offered() {
    crate::tls::install_crypto_provider();
    let pki = pki();
    let mut settings = pki.server_settings("node1", ClientAuth::None);
    settings.ciphers = Some(vec!["ECDHE-ECDSA-CHACHA20-POLY1305".to_owned()]);
    let tls = Arc::new(ServerTls::load(settings).unwrap());
    let server = start(
        harness(primary()).state,
        ServeOptions {
            tls: Some(tls),
            ..ServeOptions::default()
        },
    )
    .await;
    // A TLS 1.2-only client that prefers AES: the server picks the one suite it allows.
    let provider = rustls::crypto::ring::default_provider();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates({
            let mut roots = rustls::RootCertStore::empty();
            for c in crate::tls::read_certs(&pki.ca_file, "ca").unwrap() {
                roots.add(c).unwrap();
            }
            roots
        })
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(
        tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256)
    );
    drop(tls);
    server.finish().await;
}

#[test]
fn keys_encrypted_by_openssl_are_read() {
    // Test-only keys made with OpenSSL 3.0: `openssl pkcs8 -topk8` (PBES2, PBKDF2-SHA256,
    // AES-256-CBC) of an EC and of an RSA key; password `hunter2`.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/tests/fixtures");
    for file in ["openssl-pbes2-ec.key", "openssl-pbes2-rsa.key"] {
        let path = dir.join(file);
        let key = crate::tls::read_private_key(&path, Some("hunter2"), "k", "p")
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            matches!(key, rustls::pki_types::PrivateKeyDer::Pkcs8(_)),
            "{file}"
        );
        let pem = crate::tls::private_key_pem(&path, Some("hunter2"), "k", "p").unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{file}");
        assert!(crate::tls::read_private_key(&path, Some("nope"), "k", "p").is_err());
    }
}
