//! TLS for the REST API (server side) and for the REST clients (the CLI, the peer probes):
//! rustls with the `ring` provider, certificates and keys from PEM files.
//!
//! Keys are read once per (re)load, kept only inside rustls' configuration, and never logged;
//! an encrypted PKCS#8 key (`-----BEGIN ENCRYPTED PRIVATE KEY-----`) is decrypted with its
//! password (`restapi.keyfile_password`, `ctl.keyfile_password`, `etcd3.key_password`).
//! Errors name the configuration key and the file, never the file's contents.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CipherSuite, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// A TLS file or setting that could not be used: `key: message` (the key names the setting).
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct TlsError {
    pub key: String,
    pub message: String,
}

fn err(key: &str, message: impl Into<String>) -> TlsError {
    TlsError {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// The process-wide rustls provider (`ring`). Clients that do not set their own TLS
/// configuration (reqwest's default builder) need one installed; calling this more than once
/// is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn read(path: &Path, key: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| err(key, format!("cannot read {}: {e}", path.display())))
}

/// Every certificate in a PEM file, in order (the leaf first for a chain).
pub fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path, key)?;
    certs_from_pem(&bytes, path, key)
}

fn certs_from_pem(
    bytes: &[u8],
    path: &Path,
    key: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            err(
                key,
                format!("{}: not a PEM certificate file: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(err(
            key,
            format!("{}: no PEM certificate in the file", path.display()),
        ));
    }
    Ok(certs)
}

const ENCRYPTED_BEGIN: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----";
const ENCRYPTED_END: &str = "-----END ENCRYPTED PRIVATE KEY-----";

/// The private key in a PEM file (PKCS#8, PKCS#1 RSA, SEC1 EC, or encrypted PKCS#8 with
/// `password`). `key` and `password_key` name the settings for the error messages.
pub fn read_private_key(
    path: &Path,
    password: Option<&str>,
    key: &str,
    password_key: &str,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path, key)?;
    key_from_pem(&bytes, path, password, key, password_key)
}

fn key_from_pem(
    bytes: &[u8],
    path: &Path,
    password: Option<&str>,
    key: &str,
    password_key: &str,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let text = String::from_utf8_lossy(bytes);
    if let Some(start) = text.find(ENCRYPTED_BEGIN) {
        let Some(password) = password else {
            return Err(err(
                key,
                format!(
                    "{}: the private key is encrypted: set {password_key}",
                    path.display()
                ),
            ));
        };
        let block = text
            .get(start..)
            .and_then(|rest| {
                rest.find(ENCRYPTED_END)
                    .and_then(|end| rest.get(..end + ENCRYPTED_END.len()))
            })
            .ok_or_else(|| err(key, format!("{}: truncated encrypted key", path.display())))?;
        let (_, der) = pkcs8::der::pem::decode_vec(block.as_bytes())
            .map_err(|e| err(key, format!("{}: bad encrypted key: {e}", path.display())))?;
        let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_slice())
            .map_err(|e| err(key, format!("{}: bad encrypted key: {e}", path.display())))?;
        let doc = info.decrypt(password).map_err(|_| {
            err(
                password_key,
                format!(
                    "cannot decrypt the private key in {} (wrong password, or an encryption \
                     other than PBES2 with PBKDF2 or scrypt and AES-CBC)",
                    path.display()
                ),
            )
        })?;
        return Ok(PrivateKeyDer::Pkcs8(doc.as_bytes().to_vec().into()));
    }
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(err(
            key,
            format!(
                "{}: the private key is encrypted in OpenSSL's traditional format, which \
                 pgbaton does not read: convert it to PKCS#8 with `openssl pkcs8 -topk8 -in \
                 old.key -out new.key` (keeping a password) and set {password_key}",
                path.display()
            ),
        ));
    }
    PrivateKeyDer::from_pem_slice(bytes).map_err(|_| {
        err(
            key,
            format!("{}: no PEM private key in the file", path.display()),
        )
    })
}

/// A private key as PEM text (for the etcd client, which takes PEM): decrypted when it was
/// encrypted. The text holds the key: keep it out of logs.
pub fn private_key_pem(
    path: &Path,
    password: Option<&str>,
    key: &str,
    password_key: &str,
) -> Result<String, TlsError> {
    let der = read_private_key(path, password, key, password_key)?;
    let label = match &der {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    };
    pkcs8::der::pem::encode_string(label, pkcs8::der::pem::LineEnding::LF, der.secret_der())
        .map_err(|e| err(key, format!("{}: {e}", path.display())))
}

fn roots(path: &Path, key: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path, key)? {
        roots.add(cert).map_err(|e| {
            err(
                key,
                format!("{}: not a CA certificate: {e}", path.display()),
            )
        })?;
    }
    Ok(roots)
}

/// `restapi.verify_client`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuth {
    #[default]
    None,
    Optional,
    Required,
}

/// The REST API's TLS settings (`restapi.certfile`, ...).
#[derive(Clone, PartialEq)]
pub struct ServerTlsSettings {
    pub certfile: PathBuf,
    /// The key in `certfile` when `None`.
    pub keyfile: Option<PathBuf>,
    pub keyfile_password: Option<String>,
    pub cafile: Option<PathBuf>,
    /// OpenSSL names of the TLS 1.2 suites to offer, in preference order; `None`: all.
    pub ciphers: Option<Vec<String>>,
    pub client_auth: ClientAuth,
}

impl std::fmt::Debug for ServerTlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTlsSettings")
            .field("certfile", &self.certfile)
            .field("keyfile", &self.keyfile)
            .field("cafile", &self.cafile)
            .field("ciphers", &self.ciphers)
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

/// The rustls suite of an OpenSSL TLS 1.2 suite name (the six `ring` implements).
fn tls12_suite(name: &str) -> Option<CipherSuite> {
    Some(match name {
        "ECDHE-ECDSA-AES256-GCM-SHA384" => CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-AES256-GCM-SHA384" => CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-CHACHA20-POLY1305" => {
            CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "ECDHE-RSA-CHACHA20-POLY1305" => CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-ECDSA-AES128-GCM-SHA256" => CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-AES128-GCM-SHA256" => CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        _ => return None,
    })
}

/// The provider with only the TLS 1.2 suites `names` (in that order) besides every TLS 1.3
/// suite.
fn server_provider(names: Option<&[String]>) -> Result<CryptoProvider, TlsError> {
    let mut p = provider();
    let Some(names) = names else { return Ok(p) };
    let all = std::mem::take(&mut p.cipher_suites);
    let (tls13, tls12): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|s| s.version() == &rustls::version::TLS13);
    let mut chosen = tls13;
    for name in names {
        let want = tls12_suite(name)
            .ok_or_else(|| err("restapi.ciphers", format!("{name} is not implemented")))?;
        if let Some(s) = tls12.iter().find(|s| s.suite() == want) {
            chosen.push(*s);
        }
    }
    p.cipher_suites = chosen;
    Ok(p)
}

struct Loaded {
    config: Arc<rustls::ServerConfig>,
    /// A hash of the files' contents: a reload with the same files changes nothing.
    fingerprint: u64,
}

/// The REST API's TLS configuration, reloadable while the listener stays open: new
/// connections get the configuration of the last successful (re)load.
pub struct ServerTls {
    settings: ServerTlsSettings,
    loaded: RwLock<Loaded>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the files and builds the configuration; an error names the setting.
    pub fn load(settings: ServerTlsSettings) -> Result<ServerTls, TlsError> {
        let loaded = build_server(&settings)?;
        Ok(ServerTls {
            settings,
            loaded: RwLock::new(loaded),
        })
    }

    /// Reads the files again: `Ok(true)` when they changed and new connections now use them,
    /// `Ok(false)` when they are the same; on an error the previous configuration stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let fresh = build_server(&self.settings)?;
        let mut loaded = self
            .loaded
            .write()
            .map_err(|_| err("restapi.certfile", "internal error: poisoned lock"))?;
        if loaded.fingerprint == fresh.fingerprint {
            return Ok(false);
        }
        *loaded = fresh;
        Ok(true)
    }

    pub fn client_auth(&self) -> ClientAuth {
        self.settings.client_auth
    }

    pub(crate) fn config(&self) -> Arc<rustls::ServerConfig> {
        match self.loaded.read() {
            Ok(l) => l.config.clone(),
            Err(poisoned) => poisoned.into_inner().config.clone(),
        }
    }
}

fn build_server(s: &ServerTlsSettings) -> Result<Loaded, TlsError> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let cert_bytes = read(&s.certfile, "restapi.certfile")?;
    cert_bytes.hash(&mut hasher);
    let chain = certs_from_pem(&cert_bytes, &s.certfile, "restapi.certfile")?;
    let key = match &s.keyfile {
        Some(path) => {
            let bytes = read(path, "restapi.keyfile")?;
            bytes.hash(&mut hasher);
            key_from_pem(
                &bytes,
                path,
                s.keyfile_password.as_deref(),
                "restapi.keyfile",
                "restapi.keyfile_password",
            )?
        }
        None => key_from_pem(
            &cert_bytes,
            &s.certfile,
            s.keyfile_password.as_deref(),
            "restapi.certfile",
            "restapi.keyfile_password",
        )
        .map_err(|e| TlsError {
            message: format!("{} (and restapi.keyfile is not set)", e.message),
            ..e
        })?,
    };
    let provider = Arc::new(server_provider(s.ciphers.as_deref())?);
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| err("restapi.ciphers", e.to_string()))?;
    let verifier = match s.client_auth {
        ClientAuth::None => WebPkiClientVerifier::no_client_auth(),
        mode => {
            let path = s
                .cafile
                .as_ref()
                .ok_or_else(|| err("restapi.cafile", "required with verify_client"))?;
            let bytes = read(path, "restapi.cafile")?;
            bytes.hash(&mut hasher);
            let mut store = RootCertStore::empty();
            for cert in certs_from_pem(&bytes, path, "restapi.cafile")? {
                store.add(cert).map_err(|e| {
                    err(
                        "restapi.cafile",
                        format!("{}: not a CA certificate: {e}", path.display()),
                    )
                })?;
            }
            let b = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider);
            let b = if mode == ClientAuth::Optional {
                b.allow_unauthenticated()
            } else {
                b
            };
            b.build()
                .map_err(|e| err("restapi.cafile", format!("{}: {e}", path.display())))?
        }
    };
    let mut config = builder
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            err(
                "restapi.certfile",
                format!(
                    "{}: certificate and key do not fit: {e}",
                    s.certfile.display()
                ),
            )
        })?;
    config.ignore_client_order = s.ciphers.is_some();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Loaded {
        config: Arc::new(config),
        fingerprint: hasher.finish(),
    })
}

/// How a REST client checks servers and which certificate it presents (Patroni's `ctl`
/// section, falling back to `restapi`).
#[derive(Clone, Default, PartialEq)]
pub struct ClientTlsSettings {
    /// Do not verify the server's certificate; with `certfile`, verify the chain but not the
    /// host name (Patroni's `ctl.insecure`).
    pub insecure: bool,
    /// CA certificates to check servers against; the system's roots when `None`.
    pub cacert: Option<PathBuf>,
    /// Client certificate, presented when the server asks for one.
    pub certfile: Option<PathBuf>,
    /// Its key; the key in `certfile` when `None`.
    pub keyfile: Option<PathBuf>,
    pub keyfile_password: Option<String>,
}

impl std::fmt::Debug for ClientTlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTlsSettings")
            .field("insecure", &self.insecure)
            .field("cacert", &self.cacert)
            .field("certfile", &self.certfile)
            .field("keyfile", &self.keyfile)
            .finish_non_exhaustive()
    }
}

/// The rustls client configuration for `settings`.
pub fn client_config(settings: &ClientTlsSettings) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| err("ctl", e.to_string()))?;
    let store = match &settings.cacert {
        Some(path) => roots(path, "ctl.cacert")?,
        None => {
            let mut store = RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(native.certs);
            store
        }
    };
    let builder = if settings.insecure && settings.certfile.is_none() {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
    } else if store.is_empty() {
        return Err(err(
            "ctl.cacert",
            "no CA certificate to check servers with: set ctl.cacert (or restapi.cafile)",
        ));
    } else {
        let webpki =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
                .build()
                .map_err(|e| err("ctl.cacert", e.to_string()))?;
        if settings.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyName(webpki)))
        } else {
            builder.with_webpki_verifier(webpki)
        }
    };
    let mut config = match &settings.certfile {
        Some(certfile) => {
            let chain = read_certs(certfile, "ctl.certfile")?;
            let key = match &settings.keyfile {
                Some(k) => read_private_key(
                    k,
                    settings.keyfile_password.as_deref(),
                    "ctl.keyfile",
                    "ctl.keyfile_password",
                )?,
                None => read_private_key(
                    certfile,
                    settings.keyfile_password.as_deref(),
                    "ctl.certfile",
                    "ctl.keyfile_password",
                )?,
            };
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                err(
                    "ctl.certfile",
                    format!(
                        "{}: certificate and key do not fit: {e}",
                        certfile.display()
                    ),
                )
            })?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `ctl.insecure` without a client certificate: any server certificate (the handshake's
/// signatures are still checked).
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `ctl.insecure` with a client certificate: the chain is verified, the host name is not (as
/// Patroni's `assert_hostname = False`).
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
