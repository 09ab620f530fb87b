//! The validated configuration. Every value here has been checked; defaults are filled in.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use baton_core::Tags;

use crate::dynamic::DynamicConfig;

/// A validated configuration file (with environment overrides applied), plus what the
/// operator should be told about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    pub config: Config,
    /// `path: message` lines: Patroni keys accepted but not used, values adjusted, ignored
    /// settings. Meant to be logged at WARN once at startup and printed by `validate-config`.
    pub warnings: Vec<String>,
}

/// The local configuration of one pgbaton agent (Patroni's YAML file, supported subset).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Cluster name (`scope`).
    pub scope: String,
    /// Key prefix in the DCS, normalised to a leading `/` and no trailing `/` (`/service`);
    /// the empty string for the root.
    pub namespace: String,
    /// This member's name, unique in the cluster.
    pub name: String,
    pub restapi: RestApi,
    /// The `ctl` section: how the CLI (and this agent's peer probes) call the REST APIs.
    pub ctl: Ctl,
    pub etcd: Etcd,
    /// Present when this node may bootstrap a new cluster (`bootstrap` section present).
    pub bootstrap: Option<Bootstrap>,
    pub postgresql: Postgresql,
    pub tags: Tags,
    /// The `watchdog` section.
    pub watchdog: Watchdog,
    /// pgbaton's own floating-IP section.
    pub vip: Option<Vip>,
    /// The `log` section (Patroni's defaults when absent).
    pub log: crate::log::Log,
}

#[derive(Clone, PartialEq)]
pub struct RestApi {
    /// As written: `host:port`.
    pub listen: String,
    /// The socket address to bind (`*` and an empty host are 0.0.0.0).
    pub listen_addr: SocketAddr,
    /// `host:port` other members and clients use to reach this API.
    pub connect_address: String,
    /// Basic-auth credentials required for the unsafe endpoints: (username, password).
    pub authentication: Option<(String, String)>,
    /// HTTPS (`restapi.certfile` set); `None`: plain HTTP.
    pub tls: Option<RestTls>,
    /// `restapi.allowlist`: who may call the unsafe endpoints (empty: anyone).
    pub allowlist: Vec<AllowEntry>,
    /// `restapi.allowlist_include_members`: the members' REST API hosts may too.
    pub allowlist_include_members: bool,
    /// `restapi.http_extra_headers`, plus `https_extra_headers` when TLS is on, in file order.
    pub extra_headers: Vec<(String, String)>,
}

impl RestApi {
    /// `http` or `https`: the scheme of this member's `api_url`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

impl fmt::Debug for RestApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestApi")
            .field("listen", &self.listen)
            .field("listen_addr", &self.listen_addr)
            .field("connect_address", &self.connect_address)
            .field(
                "authentication",
                &self.authentication.as_ref().map(|(u, _)| (u, "<redacted>")),
            )
            .field("tls", &self.tls)
            .field("allowlist", &self.allowlist)
            .field("allowlist_include_members", &self.allowlist_include_members)
            .field("extra_headers", &self.extra_headers)
            .finish()
    }
}

/// The REST API's TLS settings (`restapi.certfile` and its companions).
#[derive(Clone, PartialEq)]
pub struct RestTls {
    /// PEM certificate chain (and the key, when `keyfile` is not given).
    pub certfile: PathBuf,
    pub keyfile: Option<PathBuf>,
    /// Decrypts an encrypted PKCS#8 `keyfile`.
    pub keyfile_password: Option<String>,
    /// CA certificates client certificates are checked against.
    pub cafile: Option<PathBuf>,
    /// `restapi.ciphers` as written, and the OpenSSL names of the TLS 1.2 suites it selects
    /// among those pgbaton implements, in preference order. `None`: every suite. TLS 1.3
    /// suites are always on (as in Patroni, whose `set_ciphers` does not touch them).
    pub ciphers: Option<(String, Vec<&'static str>)>,
    pub verify_client: VerifyClient,
}

impl fmt::Debug for RestTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestTls")
            .field("certfile", &self.certfile)
            .field("keyfile", &self.keyfile)
            .field(
                "keyfile_password",
                &self.keyfile_password.as_ref().map(|_| "<redacted>"),
            )
            .field("cafile", &self.cafile)
            .field("ciphers", &self.ciphers)
            .field("verify_client", &self.verify_client)
            .finish()
    }
}

/// `restapi.verify_client`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VerifyClient {
    /// No client certificate is asked for.
    #[default]
    None,
    /// Asked for; a connection without one is served, but the unsafe endpoints answer 403.
    Optional,
    /// Required by the TLS handshake for every request.
    Required,
}

/// One `restapi.allowlist` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowEntry {
    /// An address or a network: `10.0.0.5`, `10.0.0.0/24`, `fd00::/64` (the address is
    /// masked to the prefix).
    Network(IpAddr, u8),
    /// A host name, resolved when the REST API starts.
    Host(String),
}

/// The `ctl` section (Patroni's patronictl settings): how `pgbaton` commands and this agent's
/// own requests to other members' REST APIs authenticate and check TLS. Each file falls back
/// to the `restapi` one, as in Patroni (`ctl.cacert` → `restapi.cafile`, `ctl.certfile` →
/// `restapi.certfile`, ...).
#[derive(Clone, Default, PartialEq)]
pub struct Ctl {
    /// Basic-auth credentials for the unsafe endpoints (else `restapi.authentication`).
    pub authentication: Option<(String, String)>,
    /// Do not verify the server's certificate (with a client certificate: its host name only,
    /// as Patroni).
    pub insecure: bool,
    pub cacert: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub keyfile_password: Option<String>,
}

impl fmt::Debug for Ctl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctl")
            .field(
                "authentication",
                &self.authentication.as_ref().map(|(u, _)| (u, "<redacted>")),
            )
            .field("insecure", &self.insecure)
            .field("cacert", &self.cacert)
            .field("certfile", &self.certfile)
            .field("keyfile", &self.keyfile)
            .field(
                "keyfile_password",
                &self.keyfile_password.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// What a REST client (the CLI, the peer probes) uses, `ctl` first, then `restapi`.
#[derive(Clone, Default, PartialEq)]
pub struct RestClient {
    pub authentication: Option<(String, String)>,
    pub insecure: bool,
    pub cacert: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub keyfile_password: Option<String>,
}

impl fmt::Debug for RestClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestClient")
            .field(
                "authentication",
                &self.authentication.as_ref().map(|(u, _)| (u, "<redacted>")),
            )
            .field("insecure", &self.insecure)
            .field("cacert", &self.cacert)
            .field("certfile", &self.certfile)
            .field("keyfile", &self.keyfile)
            .field(
                "keyfile_password",
                &self.keyfile_password.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Config {
    /// The REST client settings: each from `ctl`, else from `restapi` (Patroni's
    /// `PatroniRequest`); `keyfile` and `keyfile_password` come from the same section as
    /// `certfile`.
    pub fn rest_client(&self) -> RestClient {
        let tls = self.restapi.tls.as_ref();
        let (certfile, keyfile, keyfile_password) = match &self.ctl.certfile {
            Some(c) => (
                Some(c.clone()),
                self.ctl.keyfile.clone(),
                self.ctl.keyfile_password.clone(),
            ),
            None => match tls {
                Some(t) => (
                    Some(t.certfile.clone()),
                    t.keyfile.clone(),
                    t.keyfile_password.clone(),
                ),
                None => (None, None, None),
            },
        };
        RestClient {
            authentication: self
                .ctl
                .authentication
                .clone()
                .or_else(|| self.restapi.authentication.clone()),
            insecure: self.ctl.insecure,
            cacert: self
                .ctl
                .cacert
                .clone()
                .or_else(|| tls.and_then(|t| t.cafile.clone())),
            certfile,
            keyfile,
            keyfile_password,
        }
    }
}

/// etcd connection settings (the `etcd3` section; `etcd` is read the same way).
#[derive(Clone, PartialEq)]
pub struct Etcd {
    /// Endpoints as `host:port` (port 2379 when not given).
    pub hosts: Vec<String>,
    /// `http` or `https`.
    pub protocol: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// CA certificates the etcd servers' certificates are checked against (with `https`;
    /// the system's roots when absent).
    pub cacert: Option<PathBuf>,
    /// Client certificate and key, for etcd's `--client-cert-auth`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Decrypts an encrypted PKCS#8 `key`.
    pub key_password: Option<String>,
}

impl fmt::Debug for Etcd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Etcd")
            .field("hosts", &self.hosts)
            .field("protocol", &self.protocol)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("cacert", &self.cacert)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field(
                "key_password",
                &self.key_password.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The `bootstrap` section: used only when this node initialises a brand-new cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Bootstrap {
    /// `bootstrap.dcs`, written once to the DCS `/config` key (defaults when absent).
    pub dcs: DynamicConfig,
    /// Rendered `initdb` options: `--encoding=UTF8`, `--data-checksums`.
    pub initdb: Vec<String>,
    /// `bootstrap.method` other than `initdb`, with its section `bootstrap.<method>`: the
    /// command that creates the new cluster's data directory instead of `initdb`.
    pub method: Option<baton_core::CustomBootstrap>,
    /// `bootstrap.post_bootstrap` (or its other name `post_init`): run once after a new
    /// cluster is created, with a connection URL as its last argument; a failure fails the
    /// bootstrap.
    pub post_bootstrap: Option<Script>,
}

/// A command from the local file, split into words as Patroni splits it (`shlex.split`).
/// Never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    pub argv: Vec<String>,
}

/// `postgresql.callbacks`: run with the arguments `action role scope` at PostgreSQL events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Callbacks {
    pub on_start: Option<Script>,
    pub on_stop: Option<Script>,
    pub on_restart: Option<Script>,
    pub on_reload: Option<Script>,
    pub on_role_change: Option<Script>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Postgresql {
    /// As written: `host[,host...]:port`.
    pub listen: String,
    /// The hosts part of `listen`, for `listen_addresses` (`*`, `0.0.0.0`, `127.0.0.1,::1`).
    pub listen_addresses: String,
    /// The port part of `listen` (5432 when not given).
    pub port: u16,
    /// As written: `host:port` other members use to reach this PostgreSQL.
    pub connect_address: String,
    pub connect_host: String,
    pub connect_port: u16,
    pub data_dir: PathBuf,
    /// Where `pg_ctl`, `initdb`, `pg_basebackup`, `pg_rewind`, ... are.
    pub bin_dir: PathBuf,
    /// The password file pgbaton writes for the tools it runs.
    pub pgpass: PathBuf,
    pub superuser: Credentials,
    pub replication: Credentials,
    /// The role `pg_rewind` connects as; the superuser when absent.
    pub rewind: Option<Credentials>,
    /// Local `postgresql.parameters`, rendered as PostgreSQL values (booleans as `on`/`off`).
    /// Parameters Patroni only takes from the dynamic configuration are not here (see
    /// [`crate::merged_parameters`]).
    pub parameters: BTreeMap<String, String>,
    /// Local `pg_hba.conf` lines; when empty the dynamic configuration's are used.
    pub pg_hba: Vec<String>,
    /// Local override of the dynamic `postgresql.use_pg_rewind`.
    pub use_pg_rewind: Option<bool>,
    pub remove_data_directory_on_rewind_failure: bool,
    /// How long `pg_ctl start/stop/promote` may take.
    pub pg_ctl_timeout: Duration,
    /// Connect to the local PostgreSQL over its Unix socket instead of TCP.
    pub use_unix_socket: bool,
    /// `postgresql.callbacks`.
    pub callbacks: Callbacks,
    /// `postgresql.pre_promote`: must exit 0 before PostgreSQL is promoted.
    pub pre_promote: Option<Script>,
    /// `postgresql.before_stop`: run before PostgreSQL is stopped; its result is ignored.
    pub before_stop: Option<Script>,
    /// `create_replica_methods` with their sections, in order; empty: `pg_basebackup` only.
    pub create_replica_methods: Vec<baton_core::ReplicaMethod>,
    /// `postgresql.basebackup`, rendered as `pg_basebackup` options (`--max-rate=100M`).
    pub basebackup: Vec<String>,
    /// `postgresql.recovery_conf`: recovery parameters written on every replica next to the
    /// ones pgbaton owns (names lower-cased, in file order).
    pub recovery_conf: Vec<(String, String)>,
}

/// A PostgreSQL role pgbaton connects as.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Option<String>,
    /// libpq connection settings given for the role, as keyword/value pairs in the order
    /// [`CONN_OPTIONS`] lists them (`sslmode`, `sslcert`, `sslkey`, `sslrootcert`, `sslcrl`,
    /// `gssencmode`, `channel_binding`), validated. File names, not secrets.
    pub options: Vec<(String, String)>,
}

/// The libpq connection settings `postgresql.authentication.<role>` may carry, as Patroni
/// passes them into `primary_conninfo`, `pg_basebackup`, `pg_rewind` and its own connections.
pub(crate) const CONN_OPTIONS: [&str; 7] = [
    "sslmode",
    "sslcert",
    "sslkey",
    "sslrootcert",
    "sslcrl",
    "gssencmode",
    "channel_binding",
];

impl Credentials {
    /// The value of a connection setting, if given.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("options", &self.options)
            .finish()
    }
}

/// The floating IP that follows the primary (pgbaton only; not a Patroni key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vip {
    /// The address (IPv4; not the network or broadcast address of its prefix).
    pub address: Ipv4Addr,
    /// Its prefix length, 1–32; `/32` when the file gives none.
    pub prefix_len: u8,
    /// The network interface to add it to (a syntactically valid Linux name; whether it
    /// exists is checked when the agent starts).
    pub interface: String,
    /// Gratuitous ARP announcements after adding the address (`0`: none).
    pub arp_count: u32,
    /// Time between two announcements.
    pub arp_interval: Duration,
    /// How often the interface is checked for drift (the address removed or added by hand).
    pub reconcile_interval: Duration,
}

impl Vip {
    pub const DEFAULT_ARP_COUNT: u32 = 3;
    pub const DEFAULT_ARP_INTERVAL: Duration = Duration::from_secs(1);
    pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(5);

    /// `10.0.0.100/24`
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.address, self.prefix_len)
    }
}

/// The `watchdog` section (Patroni's keys and defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watchdog {
    /// `watchdog.mode` (Patroni's aliases normalised); default `automatic`.
    pub mode: baton_core::WatchdogMode,
    /// `watchdog.device`; default `/dev/watchdog`.
    pub device: std::path::PathBuf,
    /// `watchdog.safety_margin` in seconds; default 5. The device's timeout is
    /// `ttl - safety_margin`; `-1` makes it `ttl / 2`.
    pub safety_margin: i64,
    /// `watchdog.driver`: `default` (a Linux watchdog device) or `testing`.
    pub driver: WatchdogDriver,
}

impl Default for Watchdog {
    fn default() -> Watchdog {
        Watchdog {
            mode: baton_core::WatchdogMode::Automatic,
            device: "/dev/watchdog".into(),
            safety_margin: 5,
            driver: WatchdogDriver::Default,
        }
    }
}

impl Watchdog {
    /// The device timeout for a lease of `ttl` seconds (Patroni's `WatchdogConfig.timeout`):
    /// `ttl - safety_margin`, or `ttl / 2` with `safety_margin: -1`. May be zero or negative
    /// for a margin as long as the ttl (the agent then cannot arm the device).
    pub fn timeout_secs(&self, ttl: u32) -> i64 {
        if self.safety_margin == -1 {
            i64::from(ttl / 2)
        } else {
            i64::from(ttl) - self.safety_margin
        }
    }
}

/// `watchdog.driver`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WatchdogDriver {
    /// A Linux watchdog device (`WDIOC_*` ioctls on `watchdog.device`).
    #[default]
    Default,
    /// A test double, for test harnesses only: `watchdog.device` names a regular file or a
    /// FIFO (never a character device), and every open, timeout, keepalive and close is
    /// written to it as a line. Nothing resets the host.
    Testing,
}
