//! `host:port` strings, the way Patroni splits them (`patroni.utils.split_host_port`): the port
//! is after the last `:`, IPv6 hosts may be bracketed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

/// Splits `value` at the last `:`. Without a `:` the port is `default`, or an error when there
/// is none. Brackets around IPv6 hosts are removed (each of a comma-separated list).
pub(crate) fn split_host_port(value: &str, default: Option<u16>) -> Result<(String, u16), String> {
    let value = value.trim();
    let (host, port) = match value.rsplit_once(':') {
        // "[::1]" without a port
        _ if value.starts_with('[') && value.ends_with(']') => match default {
            Some(port) => (value.to_owned(), port),
            None => return Err("missing \":port\"".to_owned()),
        },
        Some((host, port)) => (host.to_owned(), parse_port(port)?),
        None => match default {
            Some(port) => (value.to_owned(), port),
            None => return Err("missing \":port\"".to_owned()),
        },
    };
    let host = if host.contains(':') || host.contains('[') {
        host.split(',')
            .map(|h| h.trim().trim_start_matches('[').trim_end_matches(']'))
            .collect::<Vec<_>>()
            .join(",")
    } else {
        host
    };
    Ok((host, port))
}

fn parse_port(port: &str) -> Result<u16, String> {
    match port.trim().parse::<u16>() {
        Ok(0) => Err("port must be between 1 and 65535, found 0".to_owned()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!(
            "port must be a number between 1 and 65535, found {port:?}"
        )),
    }
}

/// The address to bind the REST API to. An empty host or `*` means every IPv4 address;
/// `localhost` is 127.0.0.1; other names are resolved with the system resolver.
pub(crate) fn listen_addr(host: &str, port: u16) -> Result<SocketAddr, String> {
    if host.is_empty() || host == "*" {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if host.contains(',') {
        return Err(format!("expected one host to listen on, found {host:?}"));
    }
    match (host, port).to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("host name {host:?} resolves to no address")),
        Err(e) => Err(format!("cannot resolve host name {host:?}: {e}")),
    }
}

/// Normalises an etcd endpoint to `host:port` (port 2379 when missing).
pub(crate) fn etcd_endpoint(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("expected \"host:port\", found an empty string".to_owned());
    }
    if value.contains("://") {
        return Err(format!(
            "expected \"host:port\" without a scheme (set the protocol key instead), found {value:?}"
        ));
    }
    let (host, port) = split_host_port(value, Some(2379))
        .map_err(|reason| format!("expected \"host:port\", found {value:?} ({reason})"))?;
    if host.is_empty() {
        return Err(format!("expected \"host:port\", found {value:?}"));
    }
    if host.contains(',') {
        return Err(format!("expected one \"host:port\", found {value:?}"));
    }
    Ok(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}
