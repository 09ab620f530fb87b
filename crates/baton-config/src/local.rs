//! The local configuration file: Patroni's schema for the subset pgbaton supports.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use baton_core::{Tags, WatchdogMode};
use serde_json::Value;

use crate::addr;
use crate::dynamic::{self, DynamicConfig};
use crate::model::{
    AllowEntry, Bootstrap, Config, Credentials, Ctl, Etcd, Postgresql, RestApi, RestTls,
    VerifyClient, Vip, Watchdog, WatchdogDriver,
};
use crate::params::{self, Source};
use crate::walk::{Cx, Obj, describe, index};

/// Patroni's reserved member name for the strict synchronous mode.
const PLACEHOLDER_NAME: &str = "__patroni_strict_sync_replica_placeholder__";
/// PostgreSQL's `NAMEDATALEN - 1`: the longest `application_name` and replication slot name.
const MAX_NAME_BYTES: usize = 63;
const DEFAULT_NAMESPACE: &str = "/service";
const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// Directories every local user may write to: a password file there can be replaced or read
/// by another user between two writes.
const SHARED_DIRS: [&str; 3] = ["/tmp", "/var/tmp", "/dev/shm"];
const DEFAULT_PG_CTL_TIMEOUT: u32 = 60;
const HOST_PORT: &str = "a string \"host:port\"";

/// Reads the whole file (environment already applied). `None` when the document is not a
/// mapping; otherwise a configuration that is only meaningful if no error was recorded.
pub(crate) fn parse(cx: &mut Cx, root: &Value) -> Option<Config> {
    if !root.is_object() {
        cx.error(
            "",
            format!(
                "expected a mapping of configuration sections at the top level, found {}",
                describe(root)
            ),
        );
        return None;
    }
    let mut top = Obj::new(cx, "", root)?;

    let scope = top.req(cx, "scope", scope_name).unwrap_or_default();
    let namespace = top
        .opt(cx, "namespace", |cx, p, v| cx.string(p, v, "a string"))
        .map_or_else(|| DEFAULT_NAMESPACE.to_owned(), |s| normalize_namespace(&s));
    let name = top.req(cx, "name", member_name).unwrap_or_default();
    let restapi = restapi(cx, &mut top);
    let ctl = ctl(cx, &mut top);
    let etcd = dcs(cx, &mut top);
    let bootstrap = bootstrap(cx, &mut top);
    let postgresql = postgresql(cx, &mut top);
    let tags = tags(cx, &mut top);
    let watchdog = watchdog(cx, &mut top);
    let vip = vip(cx, &mut top);
    let log = crate::log::log(cx, &mut top);
    top.flagged(cx);
    top.finish(cx);

    if postgresql.pg_hba.is_empty() && bootstrap.as_ref().is_none_or(|b| b.dcs.pg_hba.is_empty()) {
        cx.warn(
            "postgresql.pg_hba",
            "not set, nor bootstrap.dcs.postgresql.pg_hba: unless the cluster's dynamic \
             configuration (the DCS /config key) has postgresql.pg_hba, pgbaton writes its \
             built-in default pg_hba.conf (see docs/configuration.md)",
        );
    }

    Some(Config {
        scope,
        namespace,
        name,
        restapi,
        ctl,
        etcd,
        bootstrap,
        postgresql,
        tags,
        watchdog,
        vip,
        log,
    })
}

/// `scope`: a non-empty string that fits in a DCS key segment and in `cluster_name`.
fn scope_name(cx: &mut Cx, path: &str, v: &Value) -> Option<String> {
    let s = cx.nonempty(path, v, "a string")?;
    if s.contains('/') {
        cx.error(path, format!("must not contain \"/\", found {s:?}"));
        return None;
    }
    if s.chars().any(char::is_control) {
        cx.error(
            path,
            format!("must not contain control characters, found {s:?}"),
        );
        return None;
    }
    Some(s)
}

/// `name`: the member key's last segment, PostgreSQL's `application_name` on the leader (matched
/// against `synchronous_standby_names`) and, lower-cased with `-` and `.` as `_`, the
/// replication slot name. PostgreSQL replaces characters outside printable ASCII in
/// `application_name` with `?` and truncates it at 63 bytes, and Patroni's slot name mapping
/// expands other characters, so only names made of ASCII letters, digits, `_`, `-` and `.`, 63
/// bytes at most, keep the three equal to what pgbaton compares.
fn member_name(cx: &mut Cx, path: &str, v: &Value) -> Option<String> {
    let name = cx.nonempty(path, v, "a string")?;
    if name == PLACEHOLDER_NAME {
        cx.error(
            path,
            format!("{name:?} is reserved by Patroni for synchronous mode"),
        );
        return None;
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        cx.error(
            path,
            format!(
                "{name:?} cannot be a member name: found {c:?}; use ASCII letters, digits, \"_\", \
                 \"-\" and \".\" only (the name is also PostgreSQL's application_name, an entry of \
                 synchronous_standby_names and the replication slot name)"
            ),
        );
        return None;
    }
    if name.len() > MAX_NAME_BYTES {
        cx.error(
            path,
            format!(
                "{name:?} cannot be a member name: {} bytes, at most {MAX_NAME_BYTES} (PostgreSQL \
                 truncates application_name and slot names longer than that)",
                name.len()
            ),
        );
        return None;
    }
    Some(name)
}

/// Patroni joins `/`, namespace and scope and collapses repeated slashes: `service`, `/service`
/// and `/service/` are the same prefix.
fn normalize_namespace(s: &str) -> String {
    let parts: Vec<&str> = s.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("/{}", parts.join("/"))
    }
}

fn host_port_error(value: &str, reason: &str) -> String {
    format!("expected \"host:port\", found {value:?} ({reason})")
}

/// A required section: reported when absent (or empty).
fn required<'v>(cx: &mut Cx, top: &mut Obj<'v>, key: &str) -> Option<Obj<'v>> {
    if top.has(key) {
        top.section(cx, key)
    } else {
        top.get_any(key);
        cx.error(&top.child(key), "required section is missing");
        None
    }
}

fn restapi(cx: &mut Cx, top: &mut Obj<'_>) -> RestApi {
    let mut r = RestApi {
        listen: String::new(),
        listen_addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        connect_address: String::new(),
        authentication: None,
        tls: None,
        allowlist: Vec::new(),
        allowlist_include_members: false,
        extra_headers: Vec::new(),
    };
    let Some(mut o) = required(cx, top, "restapi") else {
        return r;
    };
    if let Some(listen) = o.req(cx, "listen", |cx, p, v| cx.string(p, v, HOST_PORT)) {
        let path = o.child("listen");
        match addr::split_host_port(&listen, None) {
            Ok((host, port)) => match addr::listen_addr(&host, port) {
                Ok(a) => r.listen_addr = a,
                Err(m) => cx.error(&path, m),
            },
            Err(reason) => cx.error(&path, host_port_error(&listen, &reason)),
        }
        r.listen = listen;
    }
    if let Some(connect) = o.req(cx, "connect_address", |cx, p, v| cx.string(p, v, HOST_PORT)) {
        let path = o.child("connect_address");
        match addr::split_host_port(&connect, None) {
            Ok((host, _)) if host.is_empty() => {
                cx.error(&path, host_port_error(&connect, "missing host"))
            }
            Ok(_) => {}
            Err(reason) => cx.error(&path, host_port_error(&connect, &reason)),
        }
        r.connect_address = connect;
    }
    if let Some(mut auth) = o.section(cx, "authentication") {
        let user = auth.req(cx, "username", |cx, p, v| cx.nonempty(p, v, "a string"));
        let password = auth.req(cx, "password", |cx, p, v| cx.secret(p, v));
        auth.finish(cx);
        r.authentication = user.zip(password);
    }
    r.tls = rest_tls(cx, &mut o);
    if let Some(list) = o.opt(cx, "allowlist", allowlist) {
        r.allowlist = list;
    }
    if let Some(include) = o.opt(cx, "allowlist_include_members", |cx, p, v| cx.boolean(p, v)) {
        r.allowlist_include_members = include;
    }
    if let Some(headers) = o.opt(cx, "http_extra_headers", extra_headers) {
        r.extra_headers = headers;
    }
    if let Some(headers) = o.opt(cx, "https_extra_headers", extra_headers) {
        if r.tls.is_some() {
            r.extra_headers.extend(headers);
        } else if !headers.is_empty() {
            cx.warn(
                &o.child("https_extra_headers"),
                "ignored: the REST API serves plain HTTP (restapi.certfile is not set), as in \
                 Patroni",
            );
        }
    }
    o.flagged(cx);
    o.finish(cx);
    r
}

/// A file path; an empty string asks for nothing (as Patroni reads it).
fn path(cx: &mut Cx, p: &str, v: &Value) -> Option<PathBuf> {
    let s = cx.string(p, v, "a file path")?;
    (!s.trim().is_empty()).then(|| PathBuf::from(s))
}

/// `key` is present with a value that asks for something (not `null`, `""`, `[]`, `{}`).
fn given(o: &mut Obj<'_>, key: &str) -> bool {
    o.get(key).is_some_and(|v| !crate::support::is_empty(v))
}

/// `restapi.certfile` and its companions; `None` (plain HTTP) without `certfile`.
fn rest_tls(cx: &mut Cx, o: &mut Obj<'_>) -> Option<RestTls> {
    let certfile = o.opt(cx, "certfile", path);
    let keyfile = o.opt(cx, "keyfile", path);
    let keyfile_password = o.opt(cx, "keyfile_password", |cx, p, v| cx.secret(p, v));
    let cafile = o.opt(cx, "cafile", path);
    let ciphers = o.opt(cx, "ciphers", |cx, p, v| {
        let spec = cx.nonempty(p, v, "an OpenSSL cipher list")?;
        match crate::ciphers::evaluate(&spec) {
            Ok(list) => Some((spec, list)),
            Err(m) => {
                cx.error(p, m);
                None
            }
        }
    });
    let verify_client = o.opt(cx, "verify_client", |cx, p, v| {
        let s = cx.string(p, v, "\"none\", \"optional\" or \"required\"")?;
        match s.as_str() {
            "none" => Some(VerifyClient::None),
            "optional" => Some(VerifyClient::Optional),
            "required" => Some(VerifyClient::Required),
            _ => {
                cx.error(
                    p,
                    format!("expected \"none\", \"optional\" or \"required\", found {s:?}"),
                );
                None
            }
        }
    });
    let Some(certfile) = certfile else {
        // Patroni serves plain HTTP then and ignores these; an operator who set them meant
        // HTTPS, so they are errors here rather than a silent downgrade.
        for key in [
            "keyfile",
            "keyfile_password",
            "cafile",
            "ciphers",
            "verify_client",
        ] {
            if given(o, key) {
                cx.error(
                    &o.child(key),
                    "needs restapi.certfile: without it the REST API serves plain HTTP",
                );
            }
        }
        return None;
    };
    let verify_client = verify_client.unwrap_or_default();
    if verify_client != VerifyClient::None && cafile.is_none() && !given(o, "cafile") {
        cx.error(
            &o.child("cafile"),
            "required key is missing (verify_client asks for client certificates, and they \
             are checked against the CA certificates in this file)",
        );
    }
    Some(RestTls {
        certfile,
        keyfile,
        keyfile_password,
        cafile,
        ciphers,
        verify_client,
    })
}

/// `restapi.allowlist`: addresses, networks (`10.0.0.0/24`) and host names.
fn allowlist(cx: &mut Cx, p: &str, v: &Value) -> Option<Vec<AllowEntry>> {
    let items = cx.string_list(p, v)?;
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match allow_entry(item.trim()) {
            Ok(e) => out.push(e),
            Err(m) => {
                cx.error(&index(p, i), m);
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn allow_entry(s: &str) -> Result<AllowEntry, String> {
    if s.is_empty() {
        return Err("expected an address, a network or a host name, found an empty string".into());
    }
    if let Some((addr, len)) = s.split_once('/') {
        let addr: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("expected a network such as 10.0.0.0/24, found {s:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("the prefix length of {s:?} must be 0 to {max}"))?;
        return Ok(AllowEntry::Network(addr, len));
    }
    if let Ok(addr) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        return Ok(AllowEntry::Network(addr, len));
    }
    let host_ok = s.len() <= 253
        && s.split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if host_ok {
        Ok(AllowEntry::Host(s.to_owned()))
    } else {
        Err(format!(
            "expected an address, a network or a host name, found {s:?}"
        ))
    }
}

/// `http_extra_headers` / `https_extra_headers`: a mapping of header names to values.
fn extra_headers(cx: &mut Cx, p: &str, v: &Value) -> Option<Vec<(String, String)>> {
    let Value::Object(map) = v else {
        cx.mismatch(p, "a mapping of header names to values", v);
        return None;
    };
    let mut out = Vec::with_capacity(map.len());
    let mut ok = true;
    for (name, value) in map {
        let vp = crate::walk::join(p, name);
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(token) {
            cx.error(&vp, format!("{name:?} is not a valid HTTP header name"));
            ok = false;
            continue;
        }
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                cx.mismatch(&vp, "a string", other);
                ok = false;
                continue;
            }
        };
        if !text.chars().all(|c| c == '\t' || (' '..='~').contains(&c)) {
            cx.error(
                &vp,
                "an HTTP header value must be printable ASCII on one line",
            );
            ok = false;
            continue;
        }
        out.push((name.clone(), text));
    }
    ok.then_some(out)
}

/// The `ctl` section (Patroni's patronictl settings).
fn ctl(cx: &mut Cx, top: &mut Obj<'_>) -> Ctl {
    let mut c = Ctl::default();
    let Some(mut o) = top.section(cx, "ctl") else {
        return c;
    };
    if let Some(mut auth) = o.section(cx, "authentication") {
        let user = auth.req(cx, "username", |cx, p, v| cx.nonempty(p, v, "a string"));
        let password = auth.req(cx, "password", |cx, p, v| cx.secret(p, v));
        auth.finish(cx);
        c.authentication = user.zip(password);
    }
    c.insecure = o
        .opt(cx, "insecure", |cx, p, v| cx.boolean(p, v))
        .unwrap_or(false);
    c.cacert = o.opt(cx, "cacert", path);
    c.certfile = o.opt(cx, "certfile", path);
    c.keyfile = o.opt(cx, "keyfile", path);
    c.keyfile_password = o.opt(cx, "keyfile_password", |cx, p, v| cx.secret(p, v));
    if c.certfile.is_none() && !given(&mut o, "certfile") {
        for key in ["keyfile", "keyfile_password"] {
            if given(&mut o, key) {
                cx.error(
                    &o.child(key),
                    "needs ctl.certfile (the client certificate this key belongs to)",
                );
            }
        }
    }
    o.flagged(cx);
    o.finish(cx);
    c
}

const OTHER_DCS: [&str; 6] = [
    "consul",
    "zookeeper",
    "exhibitor",
    "kubernetes",
    "raft",
    "nomad",
];

fn dcs(cx: &mut Cx, top: &mut Obj<'_>) -> Etcd {
    let mut etcd = Etcd {
        hosts: Vec::new(),
        protocol: "http".to_owned(),
        username: None,
        password: None,
        cacert: None,
        cert: None,
        key: None,
        key_password: None,
    };
    let v3 = top.get("etcd3");
    let v2 = top.get("etcd");
    match (v3, v2) {
        (Some(v), v2) => {
            if v2.is_some() {
                top.value_class(cx, "etcd", "beside etcd3");
            }
            if let Some(o) = Obj::new(cx, "etcd3", v) {
                etcd = etcd_section(cx, o);
            }
        }
        (None, Some(v)) => {
            top.value_class(cx, "etcd", "without etcd3");
            if let Some(o) = Obj::new_as(cx, "etcd", "etcd3", v) {
                etcd = etcd_section(cx, o);
            }
        }
        (None, None) => {
            let others: Vec<&str> = OTHER_DCS.iter().copied().filter(|k| top.has(k)).collect();
            let message = if others.is_empty() {
                "required section is missing (etcd3, or etcd)".to_owned()
            } else {
                format!(
                    "required section is missing: pgbaton supports etcd only, found {}",
                    others.join(", ")
                )
            };
            cx.error("etcd3", message);
        }
    }
    etcd
}

fn etcd_section(cx: &mut Cx, mut o: Obj<'_>) -> Etcd {
    let host = o.opt(cx, "host", |cx, p, v| {
        let s = cx.string(p, v, HOST_PORT)?;
        endpoint(cx, p, &s)
    });
    let hosts = o.opt(cx, "hosts", |cx, p, v| {
        let items: Vec<(String, String)> = match v {
            Value::String(s) => s
                .split(',')
                .filter(|h| !h.trim().is_empty())
                .map(|h| (p.to_owned(), h.trim().to_owned()))
                .collect(),
            Value::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let ip = index(p, i);
                    if let Some(s) = cx.string(&ip, item, HOST_PORT) {
                        out.push((ip, s));
                    }
                }
                out
            }
            other => {
                cx.mismatch(
                    p,
                    "a list of \"host:port\" or a comma-separated string",
                    other,
                );
                return None;
            }
        };
        let endpoints: Vec<String> = items
            .iter()
            .filter_map(|(ip, s)| endpoint(cx, ip, s))
            .collect();
        if endpoints.len() == items.len() && !endpoints.is_empty() {
            Some(endpoints)
        } else {
            if items.is_empty() {
                cx.error(p, "expected at least one \"host:port\"");
            }
            None
        }
    });
    let protocol = o.opt(cx, "protocol", |cx, p, v| {
        let s = cx.string(p, v, "\"http\" or \"https\"")?;
        match s.as_str() {
            "http" | "https" => Some(s),
            _ => {
                cx.error(p, format!("expected \"http\" or \"https\", found {s:?}"));
                None
            }
        }
    });
    let protocol = protocol.unwrap_or_else(|| "http".to_owned());
    let cacert = o.opt(cx, "cacert", path);
    let cert = o.opt(cx, "cert", path);
    let key = o.opt(cx, "key", path);
    let key_password = o.opt(cx, "key_password", |cx, p, v| cx.secret(p, v));
    if protocol != "https" {
        // Patroni would talk plain HTTP and ignore the files: an operator who gave them meant
        // TLS, so that is an error here rather than a silent downgrade.
        for k in ["cacert", "cert", "key", "key_password"] {
            if given(&mut o, k) {
                cx.error(
                    &o.child(k),
                    "needs protocol: https (the file is only used over TLS)",
                );
            }
        }
    }
    match (given(&mut o, "cert"), given(&mut o, "key")) {
        (true, false) => cx.error(&o.child("key"), "required key is missing (cert is set)"),
        (false, true) => cx.error(&o.child("cert"), "required key is missing (key is set)"),
        _ => {}
    }
    if given(&mut o, "key_password") && !given(&mut o, "key") {
        cx.error(
            &o.child("key_password"),
            "needs key (the encrypted key it decrypts)",
        );
    }
    let username = o.opt(cx, "username", |cx, p, v| cx.nonempty(p, v, "a string"));
    let password = o.opt(cx, "password", |cx, p, v| cx.secret(p, v));
    if username.is_some() && password.is_none() && !o.has("password") {
        cx.error(
            &o.child("password"),
            "required key is missing (username is set)",
        );
    }
    if username.is_none() && password.is_some() && !o.has("username") {
        cx.error(
            &o.child("username"),
            "required key is missing (password is set)",
        );
    }

    let has_host = o.has("host");
    let has_hosts = o.has("hosts");
    if has_host && has_hosts {
        cx.warn(
            &o.child("host"),
            "ignored: hosts is set too (as in Patroni)",
        );
    }
    let hosts = match (hosts, host) {
        (Some(list), _) => list,
        (None, Some(one)) if !has_hosts => vec![one],
        _ => {
            if !has_host && !has_hosts {
                let alt = ["url", "proxy", "srv", "srv_suffix"]
                    .into_iter()
                    .find(|k| o.has(k));
                let message = match alt {
                    Some(k) => format!(
                        "required key is missing: pgbaton needs host or hosts ({k} is not supported)"
                    ),
                    None => "required key is missing: set host or hosts".to_owned(),
                };
                cx.error(&o.child("hosts"), message);
            }
            Vec::new()
        }
    };
    o.flagged(cx);
    o.finish(cx);
    Etcd {
        hosts,
        protocol,
        username,
        password,
        cacert,
        cert,
        key,
        key_password,
    }
}

fn endpoint(cx: &mut Cx, path: &str, s: &str) -> Option<String> {
    match addr::etcd_endpoint(s) {
        Ok(e) => Some(e),
        Err(m) => {
            cx.error(path, m);
            None
        }
    }
}

fn bootstrap(cx: &mut Cx, top: &mut Obj<'_>) -> Option<Bootstrap> {
    // Present even when empty: Patroni bootstraps whenever the section exists.
    let v = top.get_any("bootstrap")?;
    let mut o = Obj::new(cx, "bootstrap", v)?;
    let dcs = match o.get_any("dcs") {
        Some(v) => dynamic::parse(cx, "bootstrap.dcs", v),
        None => DynamicConfig::defaults(),
    };
    let initdb = o.opt(cx, "initdb", initdb).unwrap_or_default();
    let method = match o.opt(cx, "method", |cx, p, v| cx.nonempty(p, v, "a string")) {
        Some(method) if method == "initdb" => {
            o.value_class(cx, "method", "initdb");
            None
        }
        Some(method) => {
            o.value_class(cx, "method", "a custom method");
            crate::recovery::custom(cx, &mut o, &method)
        }
        None => None,
    };
    // Patroni's two names for one script; `post_bootstrap` wins.
    let post_bootstrap = o.opt(cx, "post_bootstrap", crate::hooks::script);
    let post_init = o.opt(cx, "post_init", crate::hooks::script);
    let post_bootstrap = post_bootstrap.or(post_init);
    o.flagged(cx);
    o.finish(cx);
    Some(Bootstrap {
        dcs,
        initdb,
        method,
        post_bootstrap,
    })
}

/// initdb options pgbaton sets itself (Patroni's list).
const INITDB_RESERVED: [&str; 5] = ["pgdata", "nosync", "pwfile", "sync-only", "version"];

/// `bootstrap.initdb`: a list of option names and single-pair mappings (`- encoding: UTF8`),
/// or a mapping of options; rendered as `--name[=value]`.
fn initdb(cx: &mut Cx, path: &str, v: &Value) -> Option<Vec<String>> {
    tool_options(
        cx,
        path,
        v,
        "an initdb option or a single \"option: value\" pair",
        "a list of initdb options",
        initdb_option,
    )
}

/// A program's options as Patroni's configuration spells them (`bootstrap.initdb`,
/// `postgresql.basebackup`): a list of option names and single-pair mappings, or a mapping of
/// options, each rendered by `option` (its key path, name, and value: `None` for a bare name).
/// `item` and `whole` say what a list entry and the whole value must be in type errors.
/// `None` when any error was reported.
pub(crate) fn tool_options(
    cx: &mut Cx,
    path: &str,
    v: &Value,
    item: &str,
    whole: &str,
    option: fn(&mut Cx, &str, &str, Option<&Value>) -> Option<String>,
) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let before = cx.error_count();
    match v {
        Value::Array(items) => {
            for (i, entry) in items.iter().enumerate() {
                let p = index(path, i);
                let rendered = match entry {
                    Value::String(s) => option(cx, &p, s, None),
                    Value::Object(m) if m.len() == 1 => m
                        .iter()
                        .next()
                        .and_then(|(k, val)| option(cx, &p, k, Some(val))),
                    Value::Object(m) => {
                        cx.error(
                            &p,
                            format!(
                                "expected a single \"option: value\" pair, found {} keys",
                                m.len()
                            ),
                        );
                        None
                    }
                    other => {
                        cx.mismatch(&p, item, other);
                        None
                    }
                };
                out.extend(rendered);
            }
        }
        Value::Object(m) => {
            for (k, val) in m {
                let p = crate::walk::join(path, k);
                out.extend(option(cx, &p, k, Some(val)));
            }
        }
        other => {
            cx.mismatch(path, whole, other);
            return None;
        }
    }
    (cx.error_count() == before).then_some(out)
}

fn initdb_option(cx: &mut Cx, path: &str, name: &str, value: Option<&Value>) -> Option<String> {
    let name = name.trim().trim_start_matches('-');
    let bare = name.split('=').next().unwrap_or_default();
    if bare.is_empty() {
        cx.error(
            path,
            "expected an initdb option name, found an empty string",
        );
        return None;
    }
    if INITDB_RESERVED.contains(&bare) {
        cx.error(
            path,
            format!("initdb option {bare:?} is set by pgbaton and cannot be given"),
        );
        return None;
    }
    match value {
        None => Some(format!("--{name}")),
        Some(Value::String(s)) => Some(format!("--{name}={s}")),
        Some(Value::Number(n)) => Some(format!("--{name}={n}")),
        Some(other) => {
            cx.mismatch(path, "a string or number as the option's value", other);
            None
        }
    }
}

fn postgresql(cx: &mut Cx, top: &mut Obj<'_>) -> Postgresql {
    let mut pg = Postgresql {
        listen: String::new(),
        listen_addresses: String::new(),
        port: 5432,
        connect_address: String::new(),
        connect_host: String::new(),
        connect_port: 5432,
        data_dir: PathBuf::new(),
        bin_dir: PathBuf::from(DEFAULT_BIN_DIR),
        pgpass: PathBuf::new(),
        superuser: Credentials {
            username: String::new(),
            password: None,
            options: Vec::new(),
        },
        replication: Credentials {
            username: String::new(),
            password: None,
            options: Vec::new(),
        },
        rewind: None,
        parameters: Default::default(),
        pg_hba: Vec::new(),
        use_pg_rewind: None,
        remove_data_directory_on_rewind_failure: false,
        pg_ctl_timeout: Duration::from_secs(u64::from(DEFAULT_PG_CTL_TIMEOUT)),
        use_unix_socket: false,
        callbacks: Default::default(),
        pre_promote: None,
        before_stop: None,
        create_replica_methods: Vec::new(),
        basebackup: Vec::new(),
        recovery_conf: Vec::new(),
    };
    let Some(mut o) = required(cx, top, "postgresql") else {
        return pg;
    };

    if let Some(listen) = o.req(cx, "listen", |cx, p, v| {
        cx.string(p, v, "a string \"host[,host...]:port\"")
    }) {
        let path = o.child("listen");
        match addr::split_host_port(&listen, Some(5432)) {
            Ok((hosts, port)) => {
                let list: Vec<&str> = hosts.split(',').map(str::trim).collect();
                if list.iter().any(|h| h.is_empty()) {
                    cx.error(
                        &path,
                        format!("expected \"host[,host...]:port\", found {listen:?} (empty host)"),
                    );
                } else if list.len() > 1 && list.contains(&"*") {
                    cx.error(&path, format!("expected \"*\" alone, found {listen:?}"));
                }
                pg.listen_addresses = list.join(",");
                pg.port = port;
            }
            Err(reason) => cx.error(
                &path,
                format!("expected \"host[,host...]:port\", found {listen:?} ({reason})"),
            ),
        }
        pg.listen = listen;
    }
    if let Some(connect) = o.req(cx, "connect_address", |cx, p, v| cx.string(p, v, HOST_PORT)) {
        let path = o.child("connect_address");
        match addr::split_host_port(&connect, Some(5432)) {
            Ok((host, _)) if host.is_empty() || host.contains(',') || host == "*" => {
                cx.error(
                    &path,
                    host_port_error(&connect, "expected one host other members can connect to"),
                );
            }
            Ok((host, port)) => {
                pg.connect_host = host;
                pg.connect_port = port;
            }
            Err(reason) => cx.error(&path, host_port_error(&connect, &reason)),
        }
        pg.connect_address = connect;
    }
    if let Some(dir) = o.req(cx, "data_dir", |cx, p, v| cx.nonempty(p, v, "a path")) {
        pg.data_dir = PathBuf::from(dir);
    }
    if let Some(dir) = o.opt(cx, "bin_dir", |cx, p, v| cx.string(p, v, "a path"))
        && !dir.trim().is_empty()
    {
        pg.bin_dir = PathBuf::from(dir);
    }
    match o.opt(cx, "pgpass", |cx, p, v| cx.nonempty(p, v, "a path")) {
        Some(file) => {
            pg.pgpass = PathBuf::from(file);
            if let Some(dir) = SHARED_DIRS
                .iter()
                .find(|d| pg.pgpass.parent().is_some_and(|p| p.starts_with(d)))
            {
                cx.warn(
                    &o.child("pgpass"),
                    format!(
                        "{} is in {dir}, a directory every local user can write to; remove the \
                         key to use the default, beside the data directory",
                        pg.pgpass.display()
                    ),
                );
            }
        }
        None => pg.pgpass = default_pgpass(&pg.data_dir),
    }
    if let Some(mut auth) = required(cx, &mut o, "authentication") {
        if let Some(c) = required(cx, &mut auth, "superuser") {
            pg.superuser = credentials(cx, c, Role::Superuser);
        }
        if let Some(c) = required(cx, &mut auth, "replication") {
            pg.replication = credentials(cx, c, Role::Replication);
        }
        pg.rewind = auth
            .section(cx, "rewind")
            .map(|c| credentials(cx, c, Role::Rewind));
        auth.finish(cx);
    }
    if let Some(v) = o.get("parameters") {
        pg.parameters = params::parameters(cx, &o.child("parameters"), v, Source::Local);
    }
    if let Some(lines) = o.opt(cx, "pg_hba", |cx, p, v| cx.string_list(p, v)) {
        pg.pg_hba = lines;
    }
    pg.use_pg_rewind = o.opt(cx, "use_pg_rewind", |cx, p, v| cx.boolean(p, v));
    if let Some(b) = o.opt(cx, "remove_data_directory_on_rewind_failure", |cx, p, v| {
        cx.boolean(p, v)
    }) {
        pg.remove_data_directory_on_rewind_failure = b;
    }
    if let Some(secs) = o.opt(cx, "pg_ctl_timeout", |cx, p, v| cx.u32(p, v, 1)) {
        pg.pg_ctl_timeout = Duration::from_secs(u64::from(secs));
    }
    if let Some(b) = o.opt(cx, "use_unix_socket", |cx, p, v| cx.boolean(p, v)) {
        pg.use_unix_socket = b;
    }
    pg.callbacks = crate::hooks::callbacks(cx, &mut o);
    pg.pre_promote = o.opt(cx, "pre_promote", crate::hooks::script);
    pg.before_stop = o.opt(cx, "before_stop", crate::hooks::script);
    pg.create_replica_methods = crate::replica::methods(cx, &mut o);
    pg.basebackup = o
        .opt(cx, "basebackup", crate::replica::basebackup)
        .unwrap_or_default();
    pg.recovery_conf = o
        .opt(cx, "recovery_conf", |cx, p, v| {
            crate::recovery::recovery_conf(cx, p, v, crate::recovery::Use::Replica)
        })
        .unwrap_or_default();
    o.flagged(cx);
    o.finish(cx);
    pg
}

/// `<data_dir>.pgpass`: beside the data directory (not in it: `initdb` and `pg_basebackup`
/// need it empty), in a directory only PostgreSQL's user writes to, one file per data
/// directory.
fn default_pgpass(data_dir: &std::path::Path) -> PathBuf {
    let mut name = data_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "pgdata".into());
    name.push(".pgpass");
    data_dir.with_file_name(name)
}

/// Which role a `postgresql.authentication` entry is: pgbaton's own connections (tokio-postgres,
/// no GSSAPI) use the superuser and the rewind role; only libpq (walreceiver, pg_basebackup)
/// uses the replication role.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Superuser,
    Replication,
    Rewind,
}

fn credentials(cx: &mut Cx, mut o: Obj<'_>, role: Role) -> Credentials {
    let username = o
        .req(cx, "username", |cx, p, v| cx.nonempty(p, v, "a string"))
        .unwrap_or_default();
    let password = o.opt(cx, "password", |cx, p, v| cx.secret(p, v));
    let mut options: Vec<(String, String)> = Vec::new();
    for key in crate::model::CONN_OPTIONS {
        let Some(value) = o.opt(cx, key, |cx, p, v| cx.nonempty(p, v, "a string")) else {
            continue;
        };
        let allowed: &[&str] = match key {
            "sslmode" => &[
                "disable",
                "allow",
                "prefer",
                "require",
                "verify-ca",
                "verify-full",
            ],
            "gssencmode" => &["disable", "prefer", "require"],
            "channel_binding" => &["disable", "prefer", "require"],
            // File names (`sslrootcert` may also be `system`).
            _ => &[],
        };
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            cx.error(
                &o.child(key),
                format!("expected one of {}, found {value:?}", allowed.join(", ")),
            );
            continue;
        }
        if key == "gssencmode" {
            let class = match (value.as_str(), role) {
                ("require", Role::Replication) => "require, for replication",
                ("require", _) => "require, for superuser or rewind",
                _ => "disable or prefer",
            };
            o.value_class(cx, key, class);
        }
        options.push((key.to_owned(), value));
    }
    let get = |k: &str| {
        options
            .iter()
            .find(|(o, _)| o == k)
            .map(|(_, v)| v.as_str())
    };
    // pgbaton's own connections read no ~/.postgresql/ defaults: say so where libpq would.
    if get("sslkey").is_some() != get("sslcert").is_some() {
        let (given, missing) = if get("sslkey").is_some() {
            ("sslkey", "sslcert")
        } else {
            ("sslcert", "sslkey")
        };
        cx.error(
            &o.child(given),
            format!(
                "needs {missing} too: pgbaton does not read ~/.postgresql/postgresql.crt or \
                 postgresql.key"
            ),
        );
    }
    if matches!(get("sslmode"), Some("verify-ca" | "verify-full")) && get("sslrootcert").is_none() {
        cx.error(
            &o.child("sslmode"),
            "verify-ca and verify-full need sslrootcert (a CA file, or \"system\" for the \
             system's roots): pgbaton does not read ~/.postgresql/root.crt",
        );
    }
    if get("sslcrl").is_some() && get("sslrootcert").is_none() {
        cx.error(
            &o.child("sslcrl"),
            "needs sslrootcert: a revocation list is checked with the CA that verifies the server",
        );
    }
    // libpq's remaining setting, with its one value pgbaton matches.
    if let Some(mode) = o.opt(cx, "sslnegotiation", |cx, p, v| {
        cx.nonempty(p, v, "a string")
    }) {
        match mode.as_str() {
            "postgres" => o.value_class(cx, "sslnegotiation", "postgres"),
            "direct" => o.value_class(cx, "sslnegotiation", "direct"),
            other => cx.error(
                &o.child("sslnegotiation"),
                format!("expected one of postgres, direct, found {other:?}"),
            ),
        }
    }
    o.flagged(cx);
    o.finish(cx);
    Credentials {
        username,
        password,
        options,
    }
}

fn tags(cx: &mut Cx, top: &mut Obj<'_>) -> Tags {
    let mut t = Tags::default();
    let Some(mut o) = top.section(cx, "tags") else {
        return t;
    };
    t.nofailover = o.opt(cx, "nofailover", |cx, p, v| cx.boolean(p, v));
    t.failover_priority = o.opt(cx, "failover_priority", |cx, p, v| {
        cx.int(p, v, 0, i64::MAX)
    });
    t.noloadbalance = o
        .opt(cx, "noloadbalance", |cx, p, v| cx.boolean(p, v))
        .unwrap_or(false);
    t.clonefrom = o
        .opt(cx, "clonefrom", |cx, p, v| cx.boolean(p, v))
        .unwrap_or(false);
    t.nosync = o.opt(cx, "nosync", |cx, p, v| cx.boolean(p, v));
    t.sync_priority = o.opt(cx, "sync_priority", |cx, p, v| cx.int(p, v, 0, i64::MAX));
    t.nostream = o
        .opt(cx, "nostream", |cx, p, v| cx.boolean(p, v))
        .unwrap_or(false);
    t.replicatefrom = o
        .opt(cx, "replicatefrom", |cx, p, v| {
            cx.string(p, v, "a member name")
        })
        .filter(|s| !s.trim().is_empty());
    o.flagged(cx);

    // Patroni warns and lets the boolean tag win.
    for (flag, flag_value, prio, prio_value) in [
        (
            "nofailover",
            t.nofailover,
            "failover_priority",
            t.failover_priority,
        ),
        ("nosync", t.nosync, "sync_priority", t.sync_priority),
    ] {
        if let (Some(b), Some(p)) = (flag_value, prio_value)
            && b == (p > 0)
        {
            cx.warn(
                "tags",
                format!("conflicting {flag}: {b} and {prio}: {p}; {flag}: {b} wins, as in Patroni"),
            );
        }
    }
    for key in o.keys() {
        if o.is_known(key) {
            continue;
        }
        if let Some(v) = o.get_free(key) {
            t.custom.insert(key.to_owned(), v.to_string());
        }
    }
    o.finish(cx);
    t
}

fn watchdog(cx: &mut Cx, top: &mut Obj<'_>) -> Watchdog {
    let mut wd = Watchdog::default();
    let Some(mut o) = top.section(cx, "watchdog") else {
        return wd;
    };
    let mut label = "automatic";
    if let Some((mode, l)) = o.opt(cx, "mode", |cx, p, v| {
        let text = match v {
            Value::Bool(false) => "off".to_owned(),
            Value::String(s) => s.trim().to_ascii_lowercase(),
            other => {
                cx.mismatch(p, "one of off, automatic, required", other);
                return None;
            }
        };
        match text.as_str() {
            "off" | "disable" | "disabled" => Some((WatchdogMode::Off, "off")),
            "automatic" | "auto" => Some((WatchdogMode::Automatic, "automatic")),
            "required" | "require" => Some((WatchdogMode::Required, "required")),
            _ => {
                cx.error(
                    p,
                    format!("expected one of off, automatic, required, found {text:?}"),
                );
                None
            }
        }
    }) {
        wd.mode = mode;
        label = l;
    }
    if o.has("mode") {
        o.value_class(cx, "mode", label);
    }
    if let Some(device) = o.opt(cx, "device", |cx, p, v| {
        let path = cx.nonempty(p, v, "a path")?;
        if !path.starts_with('/') {
            cx.error(p, format!("expected an absolute path, found {path:?}"));
            return None;
        }
        Some(path)
    }) {
        wd.device = device.into();
    }
    if let Some(margin) = o.opt(cx, "safety_margin", |cx, p, v| cx.int(p, v, -1, 3600)) {
        wd.safety_margin = margin;
    }
    if let Some(driver) = o.opt(cx, "driver", |cx, p, v| {
        let text = cx.nonempty(p, v, "default or testing")?;
        match text.as_str() {
            "default" => Some(WatchdogDriver::Default),
            "testing" => Some(WatchdogDriver::Testing),
            other => {
                cx.error(
                    p,
                    format!("expected one of default, testing, found {other:?}"),
                );
                None
            }
        }
    }) {
        wd.driver = driver;
    }
    o.flagged(cx);
    o.finish(cx);
    wd
}

fn vip(cx: &mut Cx, top: &mut Obj<'_>) -> Option<Vip> {
    let mut o = top.section(cx, "vip")?;
    let address = o.req(cx, "address", vip_address);
    let interface = o.req(cx, "interface", |cx, p, v| {
        let name = cx.nonempty(p, v, "a network interface name")?;
        match interface_name_problem(&name) {
            Some(problem) => {
                cx.error(
                    p,
                    format!("{name:?} is not a valid interface name: {problem}"),
                );
                None
            }
            None => Some(name),
        }
    });
    let arp_count = o
        .opt(cx, "arp_count", |cx, p, v| cx.uint(p, v, 0, 100))
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(Vip::DEFAULT_ARP_COUNT);
    let arp_interval = o
        .opt(cx, "arp_interval", |cx, p, v| {
            bounded_seconds(cx, p, v, 0.0, 60.0)
        })
        .unwrap_or(Vip::DEFAULT_ARP_INTERVAL);
    let reconcile_interval = o
        .opt(cx, "reconcile_interval", |cx, p, v| {
            bounded_seconds(cx, p, v, 0.1, 3600.0)
        })
        .unwrap_or(Vip::DEFAULT_RECONCILE_INTERVAL);
    o.finish(cx);
    let (address, prefix_len) = address.unwrap_or((Ipv4Addr::UNSPECIFIED, 32));
    Some(Vip {
        address,
        prefix_len,
        interface: interface.unwrap_or_default(),
        arp_count,
        arp_interval,
        reconcile_interval,
    })
}

/// `vip.address`: an IPv4 address with an optional prefix length, usable as a host address.
fn vip_address(cx: &mut Cx, path: &str, v: &Value) -> Option<(Ipv4Addr, u8)> {
    let text = cx.nonempty(path, v, "an IPv4 address such as 10.0.0.100/24")?;
    match parse_vip_address(text.trim()) {
        Ok(parsed) => Some(parsed),
        Err(problem) => {
            cx.error(path, problem);
            None
        }
    }
}

fn parse_vip_address(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip_text, prefix_text) = match text.split_once('/') {
        Some((ip, prefix)) => (ip, Some(prefix)),
        None => (text, None),
    };
    let ip: Ipv4Addr = match ip_text.parse() {
        Ok(ip) => ip,
        Err(_) if ip_text.parse::<std::net::Ipv6Addr>().is_ok() => {
            return Err(format!(
                "{text:?}: IPv6 floating addresses are not supported (yet); use an IPv4 address"
            ));
        }
        Err(_) => {
            return Err(format!(
                "{text:?} is not an IPv4 address with an optional prefix length (10.0.0.100/24)"
            ));
        }
    };
    let prefix_len = match prefix_text {
        None => 32,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if (1..=32).contains(&n) && !p.starts_with('+') => n,
            _ => {
                return Err(format!(
                    "{text:?}: the prefix length must be a number from 1 to 32, found {p:?}"
                ));
            }
        },
    };
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
        return Err(format!(
            "{text:?}: {ip} cannot be a floating address (unspecified, loopback, multicast or \
             broadcast)"
        ));
    }
    if prefix_len <= 30 {
        let mask = u32::MAX << (32 - u32::from(prefix_len));
        let bits = u32::from(ip);
        if bits & !mask == 0 {
            return Err(format!(
                "{text:?} is the network address of {}/{prefix_len}, not a host address",
                Ipv4Addr::from(bits & mask)
            ));
        }
        if bits & !mask == !mask {
            return Err(format!(
                "{text:?} is the broadcast address of {}/{prefix_len}, not a host address",
                Ipv4Addr::from(bits & mask)
            ));
        }
    }
    Ok((ip, prefix_len))
}

/// What is wrong with a Linux interface name (the kernel's `dev_valid_name`), if anything.
fn interface_name_problem(name: &str) -> Option<&'static str> {
    if name.len() > 15 {
        Some("at most 15 bytes")
    } else if name == "." || name == ".." {
        Some("\".\" and \"..\" are reserved")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        Some("no \"/\", \":\" or white space (an alias label such as eth0:1 is not an interface)")
    } else {
        None
    }
}

/// A number of seconds (fractions allowed) in `min..=max`.
fn bounded_seconds(cx: &mut Cx, path: &str, v: &Value, min: f64, max: f64) -> Option<Duration> {
    let secs = cx.seconds(path, v)?;
    if secs < min || secs > max {
        cx.error(
            path,
            format!("must be between {min} and {max} seconds, found {secs}"),
        );
        return None;
    }
    Some(Duration::from_secs_f64(secs))
}
