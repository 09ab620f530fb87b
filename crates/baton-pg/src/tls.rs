//! TLS for pgbaton's own PostgreSQL connections (tokio-postgres), with libpq's meaning of a
//! role's `sslmode`, `sslrootcert`, `sslcert`, `sslkey`, `sslcrl` and `channel_binding`:
//!
//! - `disable`: no TLS; `allow`, `prefer`: TLS when the server offers it; `require`: TLS or no
//!   connection. None of these check the server's certificate — except `require` with an
//!   `sslrootcert`, which checks the chain, as libpq does;
//! - `verify-ca`: the chain must lead to `sslrootcert` (`system`: the system's roots);
//!   `verify-full`: and the certificate must name the host connected to;
//! - `channel_binding`: SCRAM bound to the TLS connection (`tls-server-end-point`, the hash of
//!   the server's certificate as PostgreSQL computes it).
//!
//! Over a Unix socket there is no TLS (PostgreSQL offers none there; libpq ignores `sslmode`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::{ChannelBinding as BindingMode, SslMode};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use crate::Credentials;

/// The TLS part of a role's connection settings, read from its options.
#[derive(Clone, Debug)]
pub(crate) struct ConnTls {
    pub(crate) ssl_mode: SslMode,
    pub(crate) channel_binding: BindingMode,
    /// `None` when `sslmode` is `disable` (no TLS is ever attempted).
    pub(crate) connector: Option<RustlsConnect>,
}

/// What went wrong building a role's TLS settings (a file that does not load).
#[derive(Debug, thiserror::Error)]
#[error("{role}: {message}")]
pub struct TlsSetupError {
    pub role: String,
    pub message: String,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &str, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {path}: {e}"))
}

/// The connection settings for `creds` (its `options`), for a TCP connection.
pub(crate) fn conn_tls(creds: &Credentials, role: &str) -> Result<ConnTls, TlsSetupError> {
    let fail = |message: String| TlsSetupError {
        role: format!("postgresql.authentication.{role}"),
        message,
    };
    let mode = creds.option("sslmode").unwrap_or("prefer");
    let ssl_mode = match mode {
        "disable" => SslMode::Disable,
        "allow" | "prefer" => SslMode::Prefer,
        _ => SslMode::Require,
    };
    let channel_binding = match creds.option("channel_binding").unwrap_or("prefer") {
        "disable" => BindingMode::Disable,
        "require" => BindingMode::Require,
        _ => BindingMode::Prefer,
    };
    if ssl_mode == SslMode::Disable {
        return Ok(ConnTls {
            ssl_mode,
            channel_binding,
            connector: None,
        });
    }
    let provider = provider();
    let root = creds.option("sslrootcert");
    let verify = match (mode, root) {
        ("verify-full", Some(_)) => Verify::Full,
        ("verify-ca", Some(_)) | ("require", Some(_)) => Verify::Chain,
        ("verify-full" | "verify-ca", None) => {
            return Err(fail(format!("sslmode {mode} needs sslrootcert")));
        }
        _ => Verify::Nothing,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(AnyServer(provider.clone())),
        Verify::Chain | Verify::Full => {
            let mut roots = RootCertStore::empty();
            match root {
                Some("system") => {
                    let found = rustls_native_certs::load_native_certs();
                    for cert in found.certs {
                        let _ = roots.add(cert);
                    }
                }
                Some(path) => {
                    let bytes = read(path, "sslrootcert").map_err(fail)?;
                    for cert in CertificateDer::pem_slice_iter(&bytes) {
                        let cert = cert.map_err(|e| fail(format!("sslrootcert {path}: {e}")))?;
                        roots
                            .add(cert)
                            .map_err(|e| fail(format!("sslrootcert {path}: {e}")))?;
                    }
                }
                None => {}
            }
            if roots.is_empty() {
                return Err(fail(format!(
                    "sslrootcert {}: no CA certificate found",
                    root.unwrap_or_default()
                )));
            }
            let mut builder = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            );
            if let Some(path) = creds.option("sslcrl") {
                let bytes = read(path, "sslcrl").map_err(fail)?;
                let crls: Vec<CertificateRevocationListDer<'static>> =
                    CertificateRevocationListDer::pem_slice_iter(&bytes)
                        .collect::<Result<_, _>>()
                        .map_err(|e| fail(format!("sslcrl {path}: {e}")))?;
                builder = builder.with_crls(crls);
            }
            let inner = builder
                .build()
                .map_err(|e| fail(format!("sslrootcert: {e}")))?;
            if verify == Verify::Full {
                inner
            } else {
                Arc::new(AnyName(inner))
            }
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (creds.option("sslcert"), creds.option("sslkey")) {
        (Some(cert), Some(key)) => {
            let cert_bytes = read(cert, "sslcert").map_err(fail)?;
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_bytes)
                .collect::<Result<_, _>>()
                .map_err(|e| fail(format!("sslcert {cert}: {e}")))?;
            if chain.is_empty() {
                return Err(fail(format!("sslcert {cert}: no certificate found")));
            }
            let key_bytes = read(key, "sslkey").map_err(fail)?;
            // The key's bytes are never part of a message.
            let key_der = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|_| {
                fail(format!(
                    "sslkey {key}: no unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1) found"
                ))
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| fail(format!("sslcert {cert} / sslkey {key}: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(ConnTls {
        ssl_mode,
        channel_binding,
        connector: Some(RustlsConnect(Arc::new(config))),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verify {
    Nothing,
    Chain,
    Full,
}

/// tokio-postgres's TLS hook over rustls.
#[derive(Clone)]
pub(crate) struct RustlsConnect(Arc<rustls::ClientConfig>);

impl std::fmt::Debug for RustlsConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RustlsConnect")
    }
}

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsOne;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsOne, Self::Error> {
        // An IP address is a valid server name too (checked against the certificate's IP SANs).
        let name = ServerName::try_from(domain.to_owned())?;
        Ok(RustlsOne {
            config: self.0.clone(),
            name,
        })
    }
}

pub(crate) struct RustlsOne {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsOne
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move {
            let tls = connector.connect(self.name, stream).await?;
            Ok(RustlsStream(Box::new(tls)))
        })
    }
}

pub(crate) struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S> tokio_postgres::tls::TlsStream for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        match session.peer_certificates().and_then(|c| c.first()) {
            Some(cert) => ChannelBinding::tls_server_end_point(server_end_point(cert.as_ref())),
            None => ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// `tls-server-end-point` (RFC 5929): the hash of the server's certificate with the hash of
/// its signature algorithm, SHA-256 for MD5 and SHA-1 (and whatever is not recognised), as
/// PostgreSQL's `be_tls_get_certificate_hash` computes it.
pub(crate) fn server_end_point(cert: &[u8]) -> Vec<u8> {
    let algorithm = match signature_oid(cert) {
        Some(oid) if SHA384_OIDS.contains(&oid) => &ring::digest::SHA384,
        Some(oid) if SHA512_OIDS.contains(&oid) => &ring::digest::SHA512,
        _ => &ring::digest::SHA256,
    };
    ring::digest::digest(algorithm, cert).as_ref().to_vec()
}

/// sha384WithRSAEncryption, ecdsa-with-SHA384, RSASSA-PSS is hashed as SHA-256 (unknown here).
const SHA384_OIDS: &[&[u8]] = &[
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
    &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
];
/// sha512WithRSAEncryption, ecdsa-with-SHA512.
const SHA512_OIDS: &[&[u8]] = &[
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
    &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
];

/// One DER element at the start of `der`: (tag, contents, rest). `None` on anything malformed.
fn der_element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// The OID of a certificate's outer `signatureAlgorithm`.
fn signature_oid(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, certificate, _) = der_element(cert)? else {
        return None;
    };
    let (0x30, _tbs, rest) = der_element(certificate)? else {
        return None;
    };
    let (0x30, algorithm, _) = der_element(rest)? else {
        return None;
    };
    let (0x06, oid, _) = der_element(algorithm)? else {
        return None;
    };
    Some(oid)
}

/// `sslmode` prefer/require without a CA: any server certificate (the handshake's signatures
/// are still checked), as libpq.
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

/// `verify-ca` (and `require` with a CA): the chain is verified, the host name is not.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_walk_never_panics_on_garbage() {
        for bytes in [
            &[][..],
            &[0x30],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x03, 0x30, 0x01],
            &[0x30, 0x80],
        ] {
            assert_eq!(signature_oid(bytes), None);
            assert_eq!(server_end_point(bytes).len(), 32);
        }
    }

    #[test]
    fn options_pick_the_modes() {
        let creds = |pairs: &[(&str, &str)]| Credentials {
            username: "u".into(),
            password: None,
            options: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let t = conn_tls(&creds(&[]), "superuser").expect("default");
        assert_eq!(t.ssl_mode, SslMode::Prefer);
        assert!(t.connector.is_some());
        let t = conn_tls(&creds(&[("sslmode", "disable")]), "superuser").expect("disable");
        assert_eq!(t.ssl_mode, SslMode::Disable);
        assert!(t.connector.is_none());
        let t = conn_tls(
            &creds(&[("sslmode", "require"), ("channel_binding", "require")]),
            "superuser",
        )
        .expect("require");
        assert_eq!(t.ssl_mode, SslMode::Require);
        assert_eq!(t.channel_binding, BindingMode::Require);
        let e = conn_tls(
            &creds(&[
                ("sslmode", "verify-full"),
                ("sslrootcert", "/nonexistent/ca.pem"),
            ]),
            "rewind",
        )
        .expect_err("missing CA file");
        assert_eq!(
            e.to_string(),
            "postgresql.authentication.rewind: cannot read sslrootcert /nonexistent/ca.pem: No such file or directory (os error 2)"
        );
    }
}
