//! TLS and authentication for the harness: a test CA with server and client certificates
//! (rcgen, made at test time), an etcd started with TLS, `--client-cert-auth`, JWT tokens
//! with a short lifetime and a user whose role only reaches the cluster's prefix, and a
//! REST client that trusts the CA and presents a client certificate.
//!
//! The JWT signing key is an RSA key from `openssl genrsa` (etcd 3.4 reads RSA keys in
//! either PEM form but EC keys only as SEC1, and rcgen makes no RSA keys).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use serde_json::{Value, json};

use crate::ports::free_port;
use crate::process::Proc;
use crate::wait::{Check, wait_for};

/// rustls' process-wide provider (`ring`): reqwest clients built without their own TLS
/// configuration need it. Harmless to call again.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A certificate and its key, as files (and both in one file, for HAProxy's `crt`).
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub combined: PathBuf,
}

/// A test CA in `dir`, readable by the agents' user (test keys only).
pub struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    pub ca_file: PathBuf,
}

impl Pki {
    pub fn create(dir: &Path) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "pgbaton test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let ca_file = dir.join("ca.pem");
        write(&ca_file, &ca.pem())?;
        Ok(Pki {
            dir: dir.to_owned(),
            ca,
            ca_file,
        })
    }

    /// A certificate for `name` (its CN), valid for localhost and 127.0.0.1, for servers
    /// and clients alike.
    pub fn issue(&self, name: &str) -> anyhow::Result<CertFiles> {
        self.issue_cert(name, true)
    }

    /// A client certificate like [`Pki::issue`] but with no CommonName in its subject (an
    /// `O` only), as etcd's JSON gateway needs with `--client-cert-auth` and auth on: it
    /// refuses a client certificate with a CN ("CommonName of client sending a request
    /// against gateway will be ignored"), and patronictl talks to etcd through that gateway.
    pub fn issue_without_cn(&self, name: &str) -> anyhow::Result<CertFiles> {
        self.issue_cert(name, false)
    }

    fn issue_cert(&self, name: &str, with_cn: bool) -> anyhow::Result<CertFiles> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        if with_cn {
            params.distinguished_name.push(DnType::CommonName, name);
        } else {
            // rcgen's default subject has a CommonName of its own.
            params.distinguished_name = DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::OrganizationName, name);
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca)?;
        let files = CertFiles {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
            combined: self.dir.join(format!("{name}-combined.pem")),
        };
        write(&files.cert, &cert.pem())?;
        write(&files.key, &key.serialize_pem())?;
        write(
            &files.combined,
            &format!("{}{}", cert.pem(), key.serialize_pem()),
        )?;
        Ok(files)
    }

    /// An HTTPS client trusting this CA, presenting `client` when asked, bound to `local`
    /// (another loopback address tests the allowlist).
    pub fn http_client(
        &self,
        client: Option<&CertFiles>,
        local: Option<std::net::IpAddr>,
    ) -> anyhow::Result<reqwest::Client> {
        install_provider();
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read(&self.ca_file)?;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
            roots.add(cert?)?;
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let config = match client {
            Some(c) => {
                let chain = rustls::pki_types::CertificateDer::pem_file_iter(&c.cert)?
                    .collect::<Result<Vec<_>, _>>()?;
                let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&c.key)?;
                builder.with_client_auth_cert(chain, key)?
            }
            None => builder.with_no_client_auth(),
        };
        let mut b = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .no_proxy()
            .timeout(Duration::from_secs(10));
        if let Some(ip) = local {
            b = b.local_address(ip);
        }
        Ok(b.build()?)
    }
}

use rustls::pki_types::pem::PemObject as _;

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// etcd with TLS on its client port (client certificates required and checked against the
/// test CA), a plain-HTTP port on loopback for the harness's own setup and reads, and
/// authentication with JWT tokens that expire after `token_ttl`.
pub struct SecureEtcd {
    _proc: Proc,
    /// `127.0.0.1:<port>` of the TLS client port.
    pub tls_host: String,
    /// The plain JSON gateway (`http://127.0.0.1:<port>`).
    pub gateway: String,
    pub root_password: String,
    pub log: PathBuf,
    http: reqwest::Client,
}

/// The etcd user the agents use: its role may read and write `prefix` only.
pub const ETCD_USER: &str = "baton";
pub const ETCD_PASSWORD: &str = "baton-etcd-pw";

impl SecureEtcd {
    pub async fn start(
        etcd: &Path,
        dir: &Path,
        pki: &Pki,
        prefix: &str,
        token_ttl: Duration,
    ) -> anyhow::Result<SecureEtcd> {
        std::fs::create_dir_all(dir)?;
        let server = pki.issue("etcd")?;
        let jwt_key = dir.join("jwt.key");
        let jwt_pub = dir.join("jwt.pub");
        run(Command::new("openssl")
            .arg("genrsa")
            .arg("-out")
            .arg(&jwt_key)
            .arg("2048"))?;
        run(Command::new("openssl")
            .arg("rsa")
            .arg("-in")
            .arg(&jwt_key)
            .arg("-pubout")
            .arg("-out")
            .arg(&jwt_pub))?;
        let (tls_port, http_port, peer_port) = (free_port()?, free_port()?, free_port()?);
        let tls_url = format!("https://127.0.0.1:{tls_port}");
        let gateway = format!("http://127.0.0.1:{http_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = dir.join("etcd.log");
        let mut cmd = Command::new(etcd);
        cmd.current_dir(dir)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .args(["--name", "etcd-tls", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--listen-client-urls")
            .arg(format!("{tls_url},{gateway}"))
            .arg("--advertise-client-urls")
            .arg(&tls_url)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("etcd-tls={peer}"))
            .arg("--cert-file")
            .arg(&server.cert)
            .arg("--key-file")
            .arg(&server.key)
            .arg("--trusted-ca-file")
            .arg(&pki.ca_file)
            .arg("--client-cert-auth")
            .arg("--auth-token")
            .arg(format!(
                "jwt,pub-key={},priv-key={},sign-method=RS256,ttl={}s",
                jwt_pub.display(),
                jwt_key.display(),
                token_ttl.as_secs().max(1)
            ))
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        let proc = Proc::spawn("etcd (TLS, auth)", cmd, &log)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?;
        let me = SecureEtcd {
            _proc: proc,
            tls_host: format!("127.0.0.1:{tls_port}"),
            gateway,
            root_password: "root-etcd-pw".to_owned(),
            log,
            http,
        };
        wait_for(
            "etcd (TLS) answers on its gateway",
            crate::tools::scaled(Duration::from_secs(30)),
            || async {
                match me
                    .post("/v3/kv/range", json!({"key": B64.encode("x")}), None)
                    .await
                {
                    Ok(_) => Ok(Check::Done(())),
                    Err(e) => Ok(Check::NotYet(e.to_string())),
                }
            },
        )
        .await?;
        me.enable_auth(prefix).await?;
        Ok(me)
    }

    async fn post(&self, path: &str, body: Value, token: Option<&str>) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .post(format!("{}{path}", self.gateway))
            .json(&body);
        if let Some(t) = token {
            req = req.header("Authorization", t);
        }
        let resp = req.send().await.with_context(|| format!("POST {path}"))?;
        let status = resp.status();
        let v: Value = resp
            .json()
            .await
            .with_context(|| format!("POST {path}: body"))?;
        if !status.is_success() {
            bail!("POST {path}: {status}: {v}");
        }
        Ok(v)
    }

    /// Users `root` and [`ETCD_USER`] (read-write on `prefix` only), then auth on.
    async fn enable_auth(&self, prefix: &str) -> anyhow::Result<()> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let steps = [
            (
                "/v3/auth/user/add",
                json!({"name": "root", "password": self.root_password}),
            ),
            ("/v3/auth/role/add", json!({"name": "root"})),
            (
                "/v3/auth/user/grant",
                json!({"user": "root", "role": "root"}),
            ),
            ("/v3/auth/role/add", json!({"name": ETCD_USER})),
            (
                "/v3/auth/role/grant",
                json!({"name": ETCD_USER, "perm": {
                    "permType": "READWRITE",
                    "key": B64.encode(prefix),
                    "range_end": B64.encode(&end),
                }}),
            ),
            (
                "/v3/auth/user/add",
                json!({"name": ETCD_USER, "password": ETCD_PASSWORD}),
            ),
            (
                "/v3/auth/user/grant",
                json!({"user": ETCD_USER, "role": ETCD_USER}),
            ),
            ("/v3/auth/enable", json!({})),
        ];
        for (path, body) in steps {
            self.post(path, body, None)
                .await
                .with_context(|| format!("etcd auth setup {path}"))?;
        }
        Ok(())
    }

    /// A token of `user` (JWT: valid for the configured lifetime).
    pub async fn token(&self, user: &str, password: &str) -> anyhow::Result<String> {
        let v = self
            .post(
                "/v3/auth/authenticate",
                json!({"name": user, "password": password}),
                None,
            )
            .await?;
        v["token"]
            .as_str()
            .map(str::to_owned)
            .context("no token in the answer")
    }

    /// The value of `key`, read as root (`None`: absent).
    pub async fn get(&self, key: &str) -> anyhow::Result<Option<String>> {
        let token = self.token("root", &self.root_password).await?;
        let v = self
            .post(
                "/v3/kv/range",
                json!({"key": B64.encode(key)}),
                Some(&token),
            )
            .await?;
        match v["kvs"].as_array().and_then(|a| a.first()) {
            Some(kv) => {
                let raw = B64.decode(kv["value"].as_str().unwrap_or_default())?;
                Ok(Some(String::from_utf8_lossy(&raw).into_owned()))
            }
            None => Ok(None),
        }
    }

    /// Whether `user` may read `key` (a permission check through the gateway).
    pub async fn can_read(&self, user: &str, password: &str, key: &str) -> anyhow::Result<bool> {
        let token = self.token(user, password).await?;
        Ok(self
            .post(
                "/v3/kv/range",
                json!({"key": B64.encode(key)}),
                Some(&token),
            )
            .await
            .is_ok())
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("run {cmd:?} (is openssl installed?)"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The `restapi`, `ctl` and `etcd3` overlay of a hardened node: HTTPS with client
/// certificates optional (required for the unsafe endpoints), basic auth, an allowlist of
/// 127.0.0.1, the CLI and peer probes presenting `client`, etcd over TLS as [`ETCD_USER`].
pub fn hardened_overlay(
    pki: &Pki,
    node: &CertFiles,
    client: &CertFiles,
    etcd: &SecureEtcd,
) -> Value {
    json!({
        "restapi": {
            "certfile": node.cert,
            "keyfile": node.key,
            "cafile": pki.ca_file,
            "verify_client": "optional",
            "authentication": {"username": "admin", "password": "rest-pw"},
            "allowlist": ["127.0.0.1"],
            "http_extra_headers": {"X-Frame-Options": "SAMEORIGIN"},
            "https_extra_headers": {"Strict-Transport-Security": "max-age=31536000"},
        },
        "ctl": {
            "cacert": pki.ca_file,
            "certfile": client.cert,
            "keyfile": client.key,
        },
        "etcd3": {
            "hosts": [etcd.tls_host],
            "protocol": "https",
            "cacert": pki.ca_file,
            "cert": client.cert,
            "key": client.key,
            "username": ETCD_USER,
            "password": ETCD_PASSWORD,
        },
    })
}
