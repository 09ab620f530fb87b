//! The listener: plain HTTP or TLS (rustls), HTTP/1.1 with keep-alive (Patroni's server
//! speaks HTTP/1.0 and closes after each answer; an HTTP/1.0 request, or one with
//! `Connection: close`, still gets exactly that), and the limits that keep health checks
//! answered while someone floods or stalls the API:
//! - request headers must arrive within [`Limits::header_read_timeout`] of the connection (the
//!   TLS handshake included) or, on a kept-alive connection, of the previous answer (so an idle
//!   kept-alive connection holds its slot no longer than a slow first request would), a body
//!   within [`Limits::body_read_timeout`];
//! - a body is at most [`Limits::max_body_bytes`] (413 beyond);
//! - at most [`Limits::max_connections`] connections are served at once (the next ones wait in
//!   the listen backlog); a connection costs a task and a socket, never a thread;
//! - at most [`Limits::max_unsafe_requests`] requests to unsafe endpoints run at once (the next
//!   get 503 at once), so a flood of switchovers cannot starve `/primary`.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, HeaderValue};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::ApiState;
use crate::tls::{ClientAuth, ServerTls};

/// Request limits; see the module documentation.
#[derive(Clone, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_connections: usize,
    pub max_unsafe_requests: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_body_bytes: 1 << 20,
            max_connections: 512,
            max_unsafe_requests: 4,
        }
    }
}

/// Who may call the unsafe endpoints, and the headers added to every response.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// `restapi.allowlist` as networks (an address is a full-length prefix); host names are
    /// resolved by [`resolve_allowlist`] before.
    pub allowlist: Vec<(IpAddr, u8)>,
    /// `restapi.allowlist_include_members`.
    pub include_members: bool,
    /// `http_extra_headers` (+ `https_extra_headers` with TLS).
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
}

/// How the API is served.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// `None`: plain HTTP.
    pub tls: Option<Arc<ServerTls>>,
    pub access: Access,
    pub limits: Limits,
}

/// What the handlers need of the serving options (a router extension).
#[derive(Debug)]
pub(crate) struct Policy {
    pub(crate) access: Access,
    /// With TLS and `verify_client` `optional` or `required`: unsafe endpoints need a client
    /// certificate (Patroni's "client certificate required").
    pub(crate) require_client_cert: bool,
    pub(crate) limits: Limits,
    pub(crate) unsafe_slots: Arc<Semaphore>,
}

impl Policy {
    pub(crate) fn new(options: &ServeOptions) -> Policy {
        Policy {
            access: options.access.clone(),
            require_client_cert: options
                .tls
                .as_ref()
                .is_some_and(|t| t.client_auth() != ClientAuth::None),
            limits: options.limits.clone(),
            unsafe_slots: Arc::new(Semaphore::new(options.limits.max_unsafe_requests)),
        }
    }
}

impl Default for Policy {
    fn default() -> Policy {
        Policy::new(&ServeOptions::default())
    }
}

/// Whether the connection presented a client certificate the TLS layer verified.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientCert(pub(crate) bool);

/// Host names of an allowlist resolved to addresses (Patroni resolves them when the API
/// starts or reloads); a name that does not resolve is logged and allows nothing.
pub async fn resolve_allowlist(hosts: &[String]) -> Vec<(IpAddr, u8)> {
    let mut out = Vec::new();
    for host in hosts {
        match tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::lookup_host((host.as_str(), 0)),
        )
        .await
        {
            Ok(Ok(addrs)) => out.extend(addrs.map(|a| full_prefix(a.ip()))),
            Ok(Err(e)) => tracing::error!("restapi.allowlist: failed to resolve {host}: {e}"),
            Err(_) => tracing::error!("restapi.allowlist: failed to resolve {host}: timed out"),
        }
    }
    out
}

pub(crate) fn full_prefix(ip: IpAddr) -> (IpAddr, u8) {
    match ip {
        IpAddr::V4(_) => (ip, 32),
        IpAddr::V6(_) => (ip, 128),
    }
}

/// `ip` is in the network `net/len` (an IPv4-mapped IPv6 client counts as its IPv4 address).
pub(crate) fn in_network(ip: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let len = u32::from(len.min(32));
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let len = u32::from(len.min(128));
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Serves the REST API on `listener` until `shutdown` completes, then lets requests in flight
/// finish.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: ApiState,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let policy = Arc::new(Policy::new(&options));
    let app = crate::handlers::router_with(state, policy.clone());
    let connections = Arc::new(Semaphore::new(options.limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait a little instead of spinning.
                    tracing::warn!("REST API: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        tasks.spawn(connection(
            stream,
            peer,
            app.clone(),
            options.tls.clone(),
            options.limits.clone(),
            stop_rx.clone(),
            permit,
        ));
        while tasks.try_join_next().is_some() {}
    }
    stop_tx.send_replace(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    tls: Option<Arc<ServerTls>>,
    limits: Limits,
    stop: watch::Receiver<bool>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    match tls {
        None => exchange(TokioIo::new(stream), peer, false, app, &limits, stop).await,
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
            let stream =
                match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, "REST API: TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "REST API: TLS handshake timed out");
                        return;
                    }
                };
            let has_cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty());
            exchange(TokioIo::new(stream), peer, has_cert, app, &limits, stop).await;
        }
    }
}

async fn exchange<I>(
    io: I,
    peer: SocketAddr,
    has_cert: bool,
    app: Router,
    limits: &Limits,
    mut stop: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request.extensions_mut().insert(ClientCert(has_cert));
            let app = app.clone();
            async move { tower::ServiceExt::oneshot(app, request.map(axum::body::Body::new)).await }
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, "REST API connection: {e}");
            }
        }
        () = async { _ = stop.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_their_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_network(ip("10.0.0.7"), (ip("10.0.0.0"), 24)));
        assert!(!in_network(ip("10.0.1.7"), (ip("10.0.0.0"), 24)));
        assert!(in_network(ip("10.0.1.7"), (ip("0.0.0.0"), 0)));
        assert!(in_network(ip("127.0.0.1"), full_prefix(ip("127.0.0.1"))));
        assert!(!in_network(ip("127.0.0.2"), full_prefix(ip("127.0.0.1"))));
        assert!(in_network(ip("::ffff:10.0.0.7"), (ip("10.0.0.0"), 8)));
        assert!(in_network(ip("fd00::1"), (ip("fd00::"), 64)));
        assert!(!in_network(ip("fd01::1"), (ip("fd00::"), 64)));
        assert!(!in_network(ip("10.0.0.1"), (ip("fd00::"), 0)));
    }
}
