//! Which configuration keys pgbaton implements, which it refuses, and which it accepts with a
//! warning: the one table [`KEYS`] the parsers take their messages from and the key tables of
//! `docs/configuration.md` are generated from (the test `the_documented_key_tables_match_the_table`
//! fails when they drift; `UPDATE_EXPECT=1` rewrites them).
//!
//! The rule for a Patroni key pgbaton does not implement:
//! - **refused** (an error naming the key path, "not supported by pgbaton yet") when running
//!   without it would hurt an operator who migrates a production `patroni.yml`: a split brain,
//!   a security downgrade, lost replication slots, a replica that silently does less;
//! - **warned** (one warning at start and in `validate-config`) when ignoring it is harmless.
//!
//! A refused or warned key whose value is empty (`null`, `""`, `[]`, `{}`) asks for nothing and
//! is accepted silently. In the dynamic configuration read back from the DCS (which another tool
//! may have written) a refused key is a warning, never an error: the agent runs on, as if the key
//! were absent, and [`crate::DynamicConfig::unsupported`] lists it.

use serde_json::Value;

use crate::walk::Cx;

/// How pgbaton treats a key (or, for [`Rule::ByValue`], one class of its values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Support {
    /// Read, validated and acted on.
    Implemented,
    /// An error: running without it is unsafe. The text says what would go wrong.
    Refused(&'static str),
    /// One warning: ignoring it is harmless. The text is the warning.
    Warned(&'static str),
    /// A command pgbaton takes from the local file only (it runs as the agent's user): an
    /// error where someone asks to store it in the dynamic configuration (`bootstrap.dcs`,
    /// `PATCH`/`PUT /config`), a warning in the DCS value, which is used without it (as the
    /// local-only parameters).
    LocalOnly(&'static str),
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Rule {
    Always(Support),
    /// The status depends on the value: each class of values (described for the documentation,
    /// `"true"`, `"any other method"`) with its status. The parser decides the class.
    ByValue(&'static [(&'static str, Support)]),
}

/// Where a key is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The local file (`path` from the top of the file).
    Local,
    /// The dynamic configuration: `bootstrap.dcs` in the file, the DCS `/config` key (`path`
    /// from the top of the dynamic configuration).
    Dynamic,
    /// Both, with the same status (`postgresql.*` keys Patroni reads in either place).
    Both,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Key {
    /// Dotted path from the top of its scope; a `<...>` segment matches any key there.
    pub(crate) path: &'static str,
    pub(crate) scope: Scope,
    pub(crate) rule: Rule,
    /// The default, for the documentation (implemented keys).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) default: &'static str,
    /// What the key does, for the documentation (implemented keys; may be empty otherwise).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) doc: &'static str,
}

const fn local(path: &'static str, default: &'static str, doc: &'static str) -> Key {
    Key {
        path,
        scope: Scope::Local,
        rule: Rule::Always(Support::Implemented),
        default,
        doc,
    }
}

const fn dynamic(path: &'static str, default: &'static str, doc: &'static str) -> Key {
    Key {
        path,
        scope: Scope::Dynamic,
        rule: Rule::Always(Support::Implemented),
        default,
        doc,
    }
}

const fn refused(path: &'static str, scope: Scope, why: &'static str) -> Key {
    Key {
        path,
        scope,
        rule: Rule::Always(Support::Refused(why)),
        default: "",
        doc: "",
    }
}

const fn warned(path: &'static str, scope: Scope, why: &'static str) -> Key {
    Key {
        path,
        scope,
        rule: Rule::Always(Support::Warned(why)),
        default: "",
        doc: "",
    }
}

const fn local_only(path: &'static str, why: &'static str) -> Key {
    Key {
        path,
        scope: Scope::Dynamic,
        rule: Rule::Always(Support::LocalOnly(why)),
        default: "",
        doc: "",
    }
}

const fn by_value(
    path: &'static str,
    scope: Scope,
    default: &'static str,
    doc: &'static str,
    values: &'static [(&'static str, Support)],
) -> Key {
    Key {
        path,
        scope,
        rule: Rule::ByValue(values),
        default,
        doc,
    }
}

use Scope::{Both, Dynamic, Local};
use Support::{Implemented, LocalOnly, Refused, Warned};

const UNUSED_PATRONI_THREADS: &str =
    "accepted but not used by pgbaton (a setting of Patroni's Python threads)";
const OTHER_DCS: &str = "accepted but not used by pgbaton: it keeps cluster state in etcd only";
const TOP_DYNAMIC: &str = "ignored at the top level, as in Patroni: dynamic settings come from \
    bootstrap.dcs (when the cluster is created) and then from the DCS /config key";
const CITUS: &str = "Patroni keeps a Citus group's keys under /<namespace>/<scope>/<group>/, so \
    pgbaton, which would read and write /<namespace>/<scope>/ instead, would run a second, \
    separate cluster beside this group's Patroni members (two primaries)";
const ETCD_V2: &str = "read as etcd3: pgbaton talks to etcd with the v3 API only, so keys a \
    Patroni cluster wrote through the v2 API are not visible to it";
const REST_UNUSED: &str = "accepted but not used by pgbaton (a setting of Patroni's HTTP server)";
const ETCD_DISCOVERY: &str =
    "accepted but not used by pgbaton: it connects to the endpoints in host/hosts, as given";
const CONFIG_DIR: &str = "pgbaton keeps postgresql.conf, postgresql.base.conf and pg_hba.conf in \
    data_dir; the settings kept in this directory (ssl, shared_buffers, ...) would not be \
    applied: move them to postgresql.parameters";
const LOCAL_ONLY: &str = "only used in the local configuration; ignored in the dynamic \
    configuration, as in Patroni";
const SET_LOCALLY: &str = "accepted but not used by pgbaton from the dynamic configuration: set \
    it in the local file";
const LOCAL_USE_SLOTS: &str = "ignored in the local configuration, as in Patroni: set it in the \
    dynamic configuration (bootstrap.dcs.postgresql.use_slots)";
const REPLICA_METHODS_LOCAL: &str = "a custom replica method runs a command as the agent's user, \
    taken from the local configuration file only (whoever can write the dynamic configuration \
    could otherwise run code on every member); set create_replica_methods and the methods' \
    sections in the local file";
const BASEBACKUP_LOCAL: &str = "taken from the local configuration file only, with \
    create_replica_methods; set it in the local file";
const RECOVERY_CONF_LOCAL: &str = "recovery settings run commands as the postgres OS user \
    (restore_command, archive_cleanup_command), so pgbaton takes them from the local \
    configuration file only; set postgresql.recovery_conf in the local file";
const CUSTOM_CONF: &str = "pgbaton includes postgresql.base.conf from data_dir; the settings in \
    this file would not be applied";
const PG_IDENT: &str = "pgbaton does not write pg_ident.conf: the user name maps pg_hba lines \
    refer to would be missing";
const PER_ROLE: &str = "this member would run with the common settings in every role (primary, \
    replica, standby leader)";
const LOCAL_COMMAND: &str = "a command run as the agent's user, taken from the local \
    configuration file only (whoever can write the dynamic configuration could otherwise run \
    code on every member); set it in the local file";
const AUTH_TLS: &str = "this TLS setting of pgbaton's PostgreSQL connections is not \
    configurable, so it would not be applied";
const AUTH_TLS_WEAK: &str = "accepted but not used by pgbaton: its connections use libpq's \
    default (sslnegotiation postgres)";
const GSS_OWN: &str = "pgbaton's own connections as this role (tokio-postgres) have no GSSAPI \
    encryption, so they would not be encrypted as asked";

/// Every key pgbaton reads, refuses or warns about. Keys under `bootstrap.dcs` (and in the DCS
/// `/config` key) are [`Scope::Dynamic`], written from the top of the dynamic configuration.
pub(crate) static KEYS: &[Key] = &[
    // The top level.
    local(
        "scope",
        "required",
        "Cluster name. The DCS keys live under `/<namespace>/<scope>/`; also PostgreSQL's \
         `cluster_name`. Must not contain `/` or control characters.",
    ),
    local(
        "namespace",
        "`/service`",
        "DCS key prefix. Normalised: `service`, `/service` and `/service/` are the same.",
    ),
    local(
        "name",
        "required",
        "This member's name, unique in the cluster: the leader key's value, the member key, \
         `application_name`, the replication slot name. 1 to 63 ASCII letters, digits, `_`, `-` \
         and `.`; see [Member names](#member-names).",
    ),
    local("restapi", "required", "See [restapi](#restapi)."),
    local("etcd3", "required (or `etcd`)", "See [etcd3](#etcd3)."),
    by_value(
        "etcd",
        Local,
        "",
        "Patroni's etcd v2 section, with the keys of `etcd3`.",
        &[
            ("without etcd3", Warned(ETCD_V2)),
            ("beside etcd3", Warned("ignored: the etcd3 section is used")),
        ],
    ),
    local(
        "bootstrap",
        "absent",
        "See [bootstrap](#bootstrap). Its presence (even empty) lets this node create a new \
         cluster.",
    ),
    local("postgresql", "required", "See [postgresql](#postgresql)."),
    local("tags", "none", "See [tags](#tags)."),
    local(
        "watchdog",
        "`mode: automatic`",
        "See [watchdog](#watchdog).",
    ),
    local("vip", "absent", "pgbaton only. See [vip](#vip)."),
    local("log", "absent", "See [log](#log)."),
    local(
        "ctl",
        "none",
        "How `pgbaton` commands and this agent's own requests to other members' REST APIs \
         (peer probes) authenticate and check TLS, as Patroni's `ctl` section for \
         patronictl. Each setting falls back to its `restapi` counterpart, as in Patroni.",
    ),
    local(
        "ctl.authentication",
        "`restapi.authentication`",
        "`username` and `password` sent (HTTP Basic) to the unsafe endpoints.",
    ),
    local(
        "ctl.authentication.username",
        "required",
        "See `ctl.authentication`.",
    ),
    local(
        "ctl.authentication.password",
        "required",
        "See `ctl.authentication`.",
    ),
    local(
        "ctl.insecure",
        "`false`",
        "Do not verify the REST API's certificate. With a client certificate (`certfile`) \
         the chain is still verified and only the host name is not, as in Patroni.",
    ),
    local(
        "ctl.cacert",
        "`restapi.cafile`, else the system's roots",
        "PEM CA certificates the REST APIs' certificates are checked against.",
    ),
    local(
        "ctl.certfile",
        "`restapi.certfile`",
        "PEM client certificate, presented when a REST API asks for one (`verify_client`).",
    ),
    local(
        "ctl.keyfile",
        "`restapi.keyfile` (with `restapi.certfile`)",
        "PEM private key of `ctl.certfile`; the key in `ctl.certfile` when not given.",
    ),
    local(
        "ctl.keyfile_password",
        "`restapi.keyfile_password` (with `restapi.certfile`)",
        "Password of an encrypted PKCS#8 `ctl.keyfile`.",
    ),
    refused("citus", Local, CITUS),
    warned("thread_pool_size", Local, UNUSED_PATRONI_THREADS),
    warned("thread_stack_size", Local, UNUSED_PATRONI_THREADS),
    warned("consul", Local, OTHER_DCS),
    warned("zookeeper", Local, OTHER_DCS),
    warned("exhibitor", Local, OTHER_DCS),
    warned("kubernetes", Local, OTHER_DCS),
    warned("raft", Local, OTHER_DCS),
    warned("nomad", Local, OTHER_DCS),
    warned("ttl", Local, TOP_DYNAMIC),
    warned("loop_wait", Local, TOP_DYNAMIC),
    warned("retry_timeout", Local, TOP_DYNAMIC),
    warned("maximum_lag_on_failover", Local, TOP_DYNAMIC),
    warned("maximum_lag_on_syncnode", Local, TOP_DYNAMIC),
    warned("primary_start_timeout", Local, TOP_DYNAMIC),
    warned("master_start_timeout", Local, TOP_DYNAMIC),
    warned("primary_stop_timeout", Local, TOP_DYNAMIC),
    warned("master_stop_timeout", Local, TOP_DYNAMIC),
    warned("synchronous_mode", Local, TOP_DYNAMIC),
    warned("synchronous_mode_strict", Local, TOP_DYNAMIC),
    warned("synchronous_node_count", Local, TOP_DYNAMIC),
    warned("failsafe_mode", Local, TOP_DYNAMIC),
    warned("check_timeline", Local, TOP_DYNAMIC),
    warned("pause", Local, TOP_DYNAMIC),
    // restapi
    local(
        "restapi.listen",
        "required",
        "`host:port` to serve the Patroni-compatible REST API on. An empty host or `*` means all \
         IPv4 addresses; IPv6 as `[::]:8008`; `localhost` is 127.0.0.1; other host names are \
         resolved with the system resolver.",
    ),
    local(
        "restapi.connect_address",
        "required",
        "`host:port` other members and clients use to reach this API (published in the member \
         key as `api_url`).",
    ),
    local(
        "restapi.authentication",
        "none",
        "Basic-auth credentials required by the endpoints that change things (`POST \
         /switchover`, `/restart`, `PATCH /config`, ...): `username` and `password`, both \
         required when the section is present.",
    ),
    local(
        "restapi.authentication.username",
        "required",
        "See `restapi.authentication`.",
    ),
    local(
        "restapi.authentication.password",
        "required",
        "See `restapi.authentication`.",
    ),
    local(
        "restapi.certfile",
        "none (plain HTTP)",
        "PEM certificate chain: with it the REST API serves HTTPS only (rustls; TLS 1.2 and \
         1.3) and `api_url` is `https://...`. The private key may be in this file too. Read at \
         start and again on SIGHUP; a changed certificate or key is used for new connections \
         without closing the listener.",
    ),
    local(
        "restapi.keyfile",
        "the key in `certfile`",
        "PEM private key of `certfile` (PKCS#8, PKCS#1 RSA or SEC1 EC; encrypted PKCS#8 with \
         `keyfile_password`). Needs `certfile`.",
    ),
    local(
        "restapi.keyfile_password",
        "none",
        "Password of an encrypted PKCS#8 key (`-----BEGIN ENCRYPTED PRIVATE KEY-----`, PBES2: \
         PBKDF2 or scrypt with AES-CBC, as `openssl pkcs8 -topk8` writes). A key encrypted \
         in OpenSSL's traditional format (`Proc-Type: 4,ENCRYPTED`) is refused with an \
         error: convert it with `openssl pkcs8 -topk8`.",
    ),
    local(
        "restapi.cafile",
        "none",
        "PEM CA certificates client certificates are checked against; required with \
         `verify_client: optional` or `required`. Also the CA the CLI and the peer probes \
         check servers against when `ctl.cacert` is not set.",
    ),
    local(
        "restapi.ciphers",
        "every suite",
        "OpenSSL cipher list for TLS 1.2 (`HIGH:!aNULL`, `ECDHE+AESGCM`, exact names, `!`, \
         `-`, `+`, `@STRENGTH`). rustls implements six TLS 1.2 suites (ECDHE with ECDSA or \
         RSA, AES-128/256-GCM or CHACHA20-POLY1305); other names select nothing, and a list \
         that selects none of the six is an error. TLS 1.3 suites are always on (OpenSSL's \
         cipher list does not set them either).",
    ),
    local(
        "restapi.verify_client",
        "`none`",
        "`none`: no client certificate is asked for. `optional`: asked for and checked \
         against `cafile` when given; the unsafe endpoints answer 403 `client certificate \
         required` without one. `required`: the TLS handshake fails without a valid one, for \
         every endpoint. Needs `certfile`.",
    ),
    local(
        "restapi.allowlist",
        "anyone",
        "Addresses (`10.0.0.5`), networks (`10.0.0.0/24`, `fd00::/64`) and host names \
         (resolved when the agent starts) that may call the unsafe endpoints; any other \
         client gets 403 `Access is denied` before authentication is checked. Health checks \
         and other GETs are not restricted, as in Patroni.",
    ),
    local(
        "restapi.allowlist_include_members",
        "`false`",
        "Also allow the addresses of every member's REST API host (from `api_url` in the \
         DCS, resolved at each request). With it alone (no `allowlist`) only the members \
         may call the unsafe endpoints.",
    ),
    local(
        "restapi.http_extra_headers",
        "none",
        "A mapping of header names to values added to every response.",
    ),
    local(
        "restapi.https_extra_headers",
        "none",
        "Added to every response too, when TLS is on (`certfile`); ignored with a warning \
         otherwise.",
    ),
    warned("restapi.request_queue_size", Local, REST_UNUSED),
    warned("restapi.server_tokens", Local, REST_UNUSED),
    warned("restapi.thread_pool_size", Local, REST_UNUSED),
    // etcd3 (and etcd, read the same way)
    local("etcd3.host", "—", "One endpoint, `host[:port]`."),
    local(
        "etcd3.hosts",
        "—",
        "Several endpoints: a YAML list or a comma-separated string. Wins over `host` (as in \
         Patroni; `host` then gives a warning). One of `host`/`hosts` is required.",
    ),
    by_value(
        "etcd3.protocol",
        Local,
        "`http`",
        "How to talk to etcd: `https` is gRPC over TLS (rustls), checked against `cacert`.",
        &[("http", Implemented), ("https", Implemented)],
    ),
    local(
        "etcd3.username",
        "none",
        "etcd user name (etcd authentication); `password` is then required. The client \
         authenticates when it connects and again whenever etcd answers that its token \
         expired (`--auth-token-ttl`, JWT `ttl`).",
    ),
    local(
        "etcd3.password",
        "none",
        "The etcd user's password; only with `username`.",
    ),
    local(
        "etcd3.cacert",
        "the system's roots",
        "PEM CA certificates the etcd servers' certificates are checked against. Needs \
         `protocol: https`.",
    ),
    local(
        "etcd3.cert",
        "none",
        "PEM client certificate for etcd's `--client-cert-auth`; with `key`. Needs \
         `protocol: https`.",
    ),
    local(
        "etcd3.key",
        "none",
        "PEM private key of `cert` (PKCS#8, PKCS#1 RSA or SEC1 EC).",
    ),
    local(
        "etcd3.key_password",
        "none",
        "Password of an encrypted PKCS#8 `key` (see `restapi.keyfile_password`).",
    ),
    warned("etcd3.use_proxies", Local, ETCD_DISCOVERY),
    warned("etcd3.url", Local, ETCD_DISCOVERY),
    warned("etcd3.proxy", Local, ETCD_DISCOVERY),
    warned("etcd3.srv", Local, ETCD_DISCOVERY),
    warned("etcd3.srv_suffix", Local, ETCD_DISCOVERY),
    // bootstrap
    local(
        "bootstrap.dcs",
        "Patroni's defaults",
        "The initial [dynamic configuration](#dynamic-configuration), written once to the DCS \
         `/config` key (as given, plus any timing adjustment). Unknown and refused keys here are \
         errors.",
    ),
    local(
        "bootstrap.initdb",
        "none",
        "Options for `initdb`: a list of option names (`- data-checksums` → `--data-checksums`) \
         and single-pair mappings (`- encoding: UTF8` → `--encoding=UTF8`). A mapping of options \
         is also accepted (rendered in key order). A list item with more than one key is an \
         error (`bootstrap.initdb[2]`). `pgdata`, `nosync`, `pwfile`, `sync-only` and `version` \
         are set by pgbaton and rejected.",
    ),
    by_value(
        "bootstrap.method",
        Local,
        "`initdb`",
        "How a new cluster is created: `initdb`, or the name of a custom method whose section \
         `bootstrap.<method>` gives its command (restoring a backup, say). See \
         [Custom bootstrap](#custom-bootstrap).",
        &[("initdb", Implemented), ("a custom method", Implemented)],
    ),
    warned(
        "bootstrap.pg_hba",
        Local,
        "accepted but not used by pgbaton: it writes pg_hba.conf from postgresql.pg_hba (the \
         local one, else the dynamic configuration's); move these lines there",
    ),
    local(
        "bootstrap.post_bootstrap",
        "none",
        "A command (split into words as Patroni does, no shell) run once after `initdb`, the \
         first start of a new cluster and the creation of its roles, before the cluster is \
         published, with `postgresql://<superuser>@<socket directory>:<port>/postgres` as its \
         last argument and `PGPASSFILE` set. A non-zero exit fails the bootstrap (the \
         initialization is cancelled and the data directory removed). See \
         [Callbacks](#callbacks).",
    ),
    local(
        "bootstrap.post_init",
        "none",
        "The other name of `post_bootstrap` (which wins when both are given).",
    ),
    warned(
        "bootstrap.users",
        Local,
        "accepted but not used by pgbaton: it creates no users when creating a cluster",
    ),
    local(
        "bootstrap.<method>.command",
        "required",
        "The command that creates the data directory (split into words as Patroni does, no \
         shell), run as PostgreSQL's OS user with `--scope=<scope> --datadir=<data_dir>` and the \
         section's other keys as `--key=value` (booleans as `True`/`False`, in key order; `scope` \
         and `datadir` are ignored). A non-zero exit fails the bootstrap. Its output is logged.",
    ),
    local(
        "bootstrap.<method>.no_params",
        "`false`",
        "Pass only the section's other keys, not `--scope` and `--datadir`.",
    ),
    local(
        "bootstrap.<method>.keep_existing_recovery_conf",
        "`false`",
        "Keep the `recovery.signal` / `standby.signal` the command left (a backup tool's own \
         recovery setup); otherwise they are removed. Ignored with `recovery_conf`.",
    ),
    local(
        "bootstrap.<method>.recovery_conf",
        "none",
        "Recovery parameters for the first start (`restore_command`, `recovery_target_time`, \
         `recovery_target_action: promote`, ...), written into `postgresql.conf` with \
         `recovery.signal`. pgbaton waits for the recovery to end with a primary, then removes \
         them. `standby_mode` is rejected.",
    ),
    // postgresql
    local(
        "postgresql.listen",
        "required",
        "`host[,host...]:port`: `listen_addresses` and `port`. The port is after the last `:` \
         (so `127.0.0.1,::1:5432` works, as in Patroni); `*:5432` listens everywhere (`*` must \
         be alone); without a port, 5432.",
    ),
    local(
        "postgresql.connect_address",
        "required",
        "`host:port` other members and clients use (published as `conn_url`); without a port, \
         5432.",
    ),
    local("postgresql.data_dir", "required", "The data directory."),
    local(
        "postgresql.bin_dir",
        "`/usr/lib/postgresql/15/bin`",
        "Where `pg_ctl`, `initdb`, `pg_basebackup`, `pg_rewind`, ... are. (Patroni's default is \
         `$PATH`; an empty value here means the default.)",
    ),
    local(
        "postgresql.pgpass",
        "`<data_dir>.pgpass`",
        "The password file pgbaton writes for the tools it runs. The default is a file beside \
         the data directory (`/var/lib/postgresql/15/main` → `/var/lib/postgresql/15/main.pgpass`), \
         not Patroni's `/tmp/pgpass0`; a path in `/tmp`, `/var/tmp` or `/dev/shm` gives a warning.",
    ),
    local(
        "postgresql.authentication",
        "required",
        "The roles pgbaton connects as: `superuser`, `replication`, `rewind`.",
    ),
    local(
        "postgresql.authentication.superuser",
        "required",
        "`username` (required), `password`.",
    ),
    local(
        "postgresql.authentication.replication",
        "required",
        "`username` (required), `password`. Used by replicas to stream.",
    ),
    local(
        "postgresql.authentication.rewind",
        "superuser",
        "`username` (required), `password`. The role `pg_rewind` connects as.",
    ),
    local(
        "postgresql.authentication.<role>.username",
        "required",
        "The role's name.",
    ),
    local(
        "postgresql.authentication.<role>.password",
        "none",
        "The role's password (an unquoted number is used as its text).",
    ),
    local(
        "postgresql.authentication.<role>.sslmode",
        "`prefer`",
        "libpq's `sslmode` for the role's connections: `disable`, `allow`, `prefer`, `require`, \
         `verify-ca` (the chain is checked against `sslrootcert`), `verify-full` (and the host \
         name). Passed as Patroni does into `primary_conninfo` (replication), `pg_basebackup` \
         (replication) and `pg_rewind` (rewind), and used by pgbaton's own connections \
         (superuser; rewind for the checkpoint check on the source) over TLS (rustls). \
         `require` with `sslrootcert` checks the chain, as libpq does. Over a Unix socket \
         there is no TLS, as in libpq. `verify-ca`/`verify-full` need `sslrootcert`.",
    ),
    local(
        "postgresql.authentication.<role>.sslcert",
        "none",
        "Client certificate file (PEM) presented to the server; needs `sslkey`. Passed as \
         libpq's `sslcert`.",
    ),
    local(
        "postgresql.authentication.<role>.sslkey",
        "none",
        "The client certificate's private key (PEM, unencrypted); needs `sslcert`.",
    ),
    refused(
        "postgresql.authentication.<role>.sslpassword",
        Local,
        AUTH_TLS,
    ),
    local(
        "postgresql.authentication.<role>.sslrootcert",
        "none",
        "CA file (PEM) the server's certificate is checked against, or `system` for the \
         system's roots. pgbaton does not read `~/.postgresql/root.crt`.",
    ),
    local(
        "postgresql.authentication.<role>.sslcrl",
        "none",
        "Certificate revocation list file (PEM) checked with `sslrootcert` (which it needs).",
    ),
    refused(
        "postgresql.authentication.<role>.sslcrldir",
        Local,
        AUTH_TLS,
    ),
    by_value(
        "postgresql.authentication.<role>.gssencmode",
        Local,
        "`prefer`",
        "libpq's `gssencmode`, passed where libpq connects (`primary_conninfo`, \
         `pg_basebackup`, `pg_rewind`).",
        &[
            ("disable or prefer", Implemented),
            ("require, for replication", Implemented),
            ("require, for superuser or rewind", Refused(GSS_OWN)),
        ],
    ),
    local(
        "postgresql.authentication.<role>.channel_binding",
        "`prefer`",
        "libpq's `channel_binding` (`disable`, `prefer`, `require`: SCRAM bound to the TLS \
         connection, `tls-server-end-point`), for libpq and pgbaton's own connections.",
    ),
    by_value(
        "postgresql.authentication.<role>.sslnegotiation",
        Local,
        "",
        "",
        &[
            ("postgres", Warned(AUTH_TLS_WEAK)),
            ("direct", Refused(AUTH_TLS)),
        ],
    ),
    local(
        "postgresql.parameters",
        "none",
        "PostgreSQL parameters for this node; see [Parameters](#parameters).",
    ),
    local(
        "postgresql.pg_hba",
        "dynamic `postgresql.pg_hba`",
        "`pg_hba.conf` lines. When set, they replace the dynamic configuration's (local wins). \
         When neither is set, pgbaton writes its built-in default and says so with a warning.",
    ),
    local(
        "postgresql.use_pg_rewind",
        "dynamic value",
        "Overrides the dynamic `postgresql.use_pg_rewind` for this node.",
    ),
    local(
        "postgresql.remove_data_directory_on_rewind_failure",
        "`false`",
        "Wipe the data directory and re-clone when `pg_rewind` fails. Also read from the \
         dynamic configuration; either one set to `true` enables it.",
    ),
    local(
        "postgresql.pg_ctl_timeout",
        "`60`",
        "Seconds `pg_ctl start`/`stop`/`promote` may take (at least 1).",
    ),
    local(
        "postgresql.use_unix_socket",
        "`false`",
        "Connect to the local PostgreSQL over its Unix socket.",
    ),
    warned("postgresql.use_slots", Local, LOCAL_USE_SLOTS),
    warned(
        "postgresql.proxy_address",
        Local,
        "accepted but not used by pgbaton: it publishes no proxy address in the member key",
    ),
    refused("postgresql.config_dir", Local, CONFIG_DIR),
    warned(
        "postgresql.bin_name",
        Both,
        "accepted but not used by pgbaton: it runs the programs in bin_dir under their usual names",
    ),
    local(
        "postgresql.callbacks",
        "none",
        "Commands run at PostgreSQL events with the arguments `action role scope`, without \
         blocking the HA loop, one at a time (a new one kills the running one). Local file \
         only. See [Callbacks](#callbacks).",
    ),
    local(
        "postgresql.callbacks.on_start",
        "none",
        "PostgreSQL is seen running (after a start, or at the agent's start).",
    ),
    local(
        "postgresql.callbacks.on_stop",
        "none",
        "PostgreSQL is seen stopped (by pgbaton, or a crash).",
    ),
    local(
        "postgresql.callbacks.on_restart",
        "none",
        "PostgreSQL restarted: a restart by pgbaton (`POST /restart`, a scheduled one) fires \
         this once, not `on_stop` and `on_start`, as Patroni does; a new postmaster seen between \
         two loops does too.",
    ),
    local(
        "postgresql.callbacks.on_reload",
        "none",
        "PostgreSQL re-read its configuration files.",
    ),
    local(
        "postgresql.callbacks.on_role_change",
        "none",
        "PostgreSQL is seen running in another role (promoted, demoted to a replica).",
    ),
    by_value(
        "postgresql.create_replica_methods",
        Local,
        "`[basebackup]`",
        "How a replica is created: methods tried in order until one succeeds (`basebackup`, \
         or a custom method with its section `postgresql.<method>`); see \
         [Replica creation methods](#replica-creation-methods). With a method that has \
         `no_leader`, an empty member of an initialized cluster without a leader is created \
         by the `no_leader` methods alone (Patroni's bootstrap without leader).",
        &[
            ("[basebackup]", Implemented),
            ("custom methods", Implemented),
        ],
    ),
    by_value(
        "postgresql.create_replica_methods",
        Dynamic,
        "`[basebackup]`",
        "How a replica is created; only `[basebackup]` here: custom methods are set in the \
         local file.",
        &[
            ("[basebackup]", Implemented),
            ("any other", LocalOnly(REPLICA_METHODS_LOCAL)),
        ],
    ),
    local(
        "postgresql.<method>.command",
        "the method's name",
        "The command of a custom replica method (split into words as Patroni splits it). It \
         receives the section's other keys as `--key=value` (booleans as `True`/`False`, in \
         key order), then `--scope`, `--role=replica`, `--datadir` and `--connstring` (the \
         source's libpq connection string as the replication user, whose password is in the \
         file `PGPASSFILE` names). Exit code 0: the replica is created and starts streaming \
         from the leader; otherwise the next method is tried. Its output is logged. Killed \
         (its process group) when the agent shuts down.",
    ),
    local(
        "postgresql.<method>.no_leader",
        "`false`",
        "The method works without a member to copy from (a restore from a backup). \
         Patroni's older name `no_master` is accepted.",
    ),
    local(
        "postgresql.<method>.keep_data",
        "`false`",
        "The data directory is not emptied before the method runs.",
    ),
    local(
        "postgresql.<method>.no_params",
        "`false`",
        "Pass only the section's own keys (without `no_params`, `no_leader`, `no_master`, \
         `keep_data`), not `--scope`, `--role`, `--datadir`, `--connstring`.",
    ),
    local(
        "postgresql.basebackup",
        "none",
        "Options for `pg_basebackup` (the `basebackup` method): a list of option names and \
         single-pair mappings (`- checkpoint: fast` → `--checkpoint=fast`), or a mapping \
         (rendered in key order). pgbaton passes `--pgdata`, `--wal-method=stream`, \
         `--dbname` and, unless given here, `--checkpoint=fast`; `pgdata`, `format`, \
         `wal-method`, `xlog-method`, `gzip`, `version`, `compress`, `dbname`, `host`, \
         `port`, `username`, `password`, `target` and one-letter options are rejected.",
    ),
    local_only("postgresql.basebackup", BASEBACKUP_LOCAL),
    local(
        "postgresql.recovery_conf",
        "none",
        "Recovery parameters for every replica (`restore_command`, `recovery_min_apply_delay`, \
         `archive_cleanup_command`, ...), written into `postgresql.conf` next to the \
         `primary_conninfo` pgbaton writes (with `standby.signal`); a change is reloaded into a \
         running replica (a parameter PostgreSQL reads only at start waits for a restart, \
         reported as pending). `primary_conninfo`, `primary_slot_name` and `standby_mode` are \
         pgbaton's and rejected; `recovery_target*` are ignored with a warning (Patroni drops \
         them too: a replica follows the latest timeline). Not used on a primary.",
    ),
    local_only("postgresql.recovery_conf", RECOVERY_CONF_LOCAL),
    refused("postgresql.custom_conf", Both, CUSTOM_CONF),
    refused("postgresql.pg_ident", Both, PG_IDENT),
    refused("postgresql.pg_ident_primary", Both, PER_ROLE),
    refused("postgresql.pg_ident_replica", Both, PER_ROLE),
    refused("postgresql.pg_ident_standby_leader", Both, PER_ROLE),
    refused("postgresql.pg_hba_primary", Both, PER_ROLE),
    refused("postgresql.pg_hba_replica", Both, PER_ROLE),
    refused("postgresql.pg_hba_standby_leader", Both, PER_ROLE),
    refused("postgresql.parameters_primary", Both, PER_ROLE),
    refused("postgresql.parameters_replica", Both, PER_ROLE),
    refused("postgresql.parameters_standby_leader", Both, PER_ROLE),
    warned(
        "postgresql.remove_data_directory_on_diverged_timelines",
        Both,
        "accepted but not used by pgbaton: a diverged member is rewound (use_pg_rewind) or \
         re-cloned (remove_data_directory_on_rewind_failure)",
    ),
    warned(
        "postgresql.use_unix_socket_repl",
        Both,
        "accepted but not used by pgbaton: replicas stream over TCP",
    ),
    local(
        "postgresql.pre_promote",
        "none",
        "A command run (and waited for, up to `pg_ctl_timeout`) after the leader key is taken \
         and before PostgreSQL is promoted. A non-zero exit (or a timeout) cancels the \
         promotion: the leader key is released, the member's reason says why and it does not \
         race for the key again for `ttl` seconds. See [Callbacks](#callbacks).",
    ),
    local(
        "postgresql.before_stop",
        "none",
        "A command run (and waited for, up to `pg_ctl_timeout`) before a fast shutdown of a \
         running PostgreSQL (a switchover's hand-over, a restart, the agent's shutdown); never \
         before an immediate stop (fencing). A failure is logged and the stop goes on.",
    ),
    warned(
        "postgresql.krbsrvname",
        Both,
        "accepted but not used by pgbaton: replication connections do not set a Kerberos \
         service name",
    ),
    warned(
        "postgresql.pg_rewind",
        Both,
        "accepted but not used by pgbaton: pg_rewind runs with its own options, as \
         authentication.rewind",
    ),
    // tags
    local(
        "tags.nofailover",
        "unset",
        "`true`: never becomes primary (automatically or by switchover).",
    ),
    local(
        "tags.failover_priority",
        "1",
        "Integer ≥ 0; among equally up-to-date candidates the higher wins; 0 means nofailover.",
    ),
    local(
        "tags.noloadbalance",
        "`false`",
        "`GET /replica` answers 503 on this member.",
    ),
    local(
        "tags.nosync",
        "unset",
        "`true`: never a synchronous standby.",
    ),
    local("tags.sync_priority", "1", "Integer ≥ 0; 0 means nosync."),
    local(
        "tags.clonefrom",
        "`false`",
        "`true`: a new replica (empty data directory) clones from this member while it runs \
         as a replica at most `maximum_lag_on_failover` bytes behind the leader (the most \
         advanced such member, where Patroni picks one at random); otherwise, and after a \
         clone that failed, from the leader.",
    ),
    local(
        "tags.nostream",
        "`false`",
        "`true`: an archive-only replica: PostgreSQL runs as a standby without \
         `primary_conninfo` and replays WAL from `restore_command` (set it in \
         `postgresql.parameters`; without it the member receives no WAL), reporting \
         `replication_state: in archive recovery`; no member keeps a slot for it. A running \
         standby that streams when the tag is set is restarted without `primary_conninfo`. \
         Members whose `replicatefrom` names it stream from it.",
    ),
    local(
        "tags.replicatefrom",
        "unset",
        "A member name: stream from that member (cascading replication) while its member key \
         says it runs as a replica that replays WAL (`replication_state` `streaming`, or `in \
         archive recovery` for a `nostream` member) or it leads; otherwise from the leader, \
         returning to it when it replays again (Patroni follows the named member whatever its state). That \
         member keeps a physical slot for this one (`use_slots`), the leader none. A name \
         that is this member's own, or a `replicatefrom` cycle, means the leader.",
    ),
    local(
        "tags.<name>",
        "—",
        "Any other key is a custom tag: published in the member key, usable in \
         `?tag_<key>=<value>` filters. Any YAML value.",
    ),
    // watchdog
    by_value(
        "watchdog.mode",
        Local,
        "`automatic`",
        "`off`, `automatic` or `required` (Patroni's spellings `false`, `disable`, `disabled`, \
         `auto`, `require` are accepted). `automatic`: the watchdog is armed before this member \
         takes the leader role when it can be, and the member leads without one when it \
         cannot. `required`: no leader role without an armed watchdog (the member does not \
         race, gives the leader key up, and reports `watchdog_failed` in `/patroni`).",
        &[
            ("off", Implemented),
            ("automatic", Implemented),
            ("required", Implemented),
        ],
    ),
    local(
        "watchdog.device",
        "`/dev/watchdog`",
        "The Linux watchdog device (an absolute path). With `driver: testing`, the file the \
         test double writes its events to.",
    ),
    local(
        "watchdog.safety_margin",
        "`5`",
        "Seconds: the device's timeout is `ttl - safety_margin` (`-1`: `ttl / 2`), so the host \
         resets before the leader lease can expire when the agent stops kicking it.",
    ),
    local(
        "watchdog.driver",
        "`default`",
        "`default` (a Linux watchdog device) or `testing` (for test harnesses: events are \
         written as lines to `device`, which must not be a character device; nothing resets \
         the host).",
    ),
    // vip
    local(
        "vip.address",
        "required",
        "An IPv4 address, optionally with a prefix length 1–32 (`10.0.0.100/24`); without one it \
         is a `/32`. Not a network or broadcast address of its prefix, not loopback, multicast \
         or `0.0.0.0`. IPv6 is not supported yet.",
    ),
    local(
        "vip.interface",
        "required",
        "The network interface to add it to (`eth0`, `bond0.100`): at most 15 bytes, no `/`, `:` \
         or white space (an alias label such as `eth0:1` is not an interface). Whether it exists \
         is checked when the agent starts: an unknown interface stops the agent with \
         `vip.interface: no network interface named \"eth9\" on this host`.",
    ),
    local(
        "vip.arp_count",
        "`3`",
        "Gratuitous ARP announcements after adding the address (each is one ARP request and one \
         ARP reply, broadcast), 0–100. `0` sends none (then `CAP_NET_RAW` is not needed).",
    ),
    local(
        "vip.arp_interval",
        "`1`",
        "Seconds between two announcements (fractions allowed, 0–60). Linux ignores an update to \
         an ARP entry younger than its `locktime` (1 s by default), so spacing them by about a \
         second reaches caches the first one could not change.",
    ),
    local(
        "vip.reconcile_interval",
        "`5`",
        "Seconds between two checks of the interface for drift (0.1–3600).",
    ),
    // log
    local(
        "log.type",
        "`plain`",
        "`plain`: one line per event in `log.format`; `json`: one JSON object per line (Patroni 4), \
         whose keys are the fields of `log.format`.",
    ),
    local(
        "log.level",
        "`INFO`",
        "`DEBUG`, `INFO`, `WARNING` (`WARN`), `ERROR` or `CRITICAL` (`FATAL`; pgbaton logs \
         nothing above `ERROR`), any case. At `DEBUG`, tokio-postgres's own lines stay at \
         `INFO` (its debug lines are the text of every statement). The environment variable \
         `PGBATON_LOG` (a tracing filter such as `debug` or `baton_agent=debug,info`) overrides \
         it.",
    ),
    local(
        "log.traceback_level",
        "`ERROR`",
        "The level a panic's backtrace is logged at (the panic itself is logged at `ERROR`); \
         below `log.level` it is not written. pgbaton's errors carry their causes on one line, so \
         a panic is the only traceback it has.",
    ),
    local(
        "log.format",
        "`%(asctime)s %(levelname)s: %(message)s`",
        "A Python logging format: `%(field)s` with an optional `-` and width (`%(levelname)-8s`), \
         `%(field)d` for numbers, `%%`. Fields: `asctime`, `levelname`, `levelno`, `message`, \
         `name` (the Rust module target), `module`, `filename`, `pathname`, `lineno`, `process`, \
         `threadName`; any other field is an error naming it. With `type: json` also a list of \
         field names and `{field: key}` renames. An event's structured fields follow the message \
         as `key=value`.",
    ),
    local(
        "log.dateformat",
        "`%Y-%m-%d %H:%M:%S,mmm`",
        "The `asctime` format (`strftime`: `%Y %y %m %d %H %M %S %j %z %Z %%`; other directives \
         are errors). Times are UTC. Without it, Python's default with milliseconds.",
    ),
    local(
        "log.static_fields",
        "none",
        "`type: json` only: constant keys added to every line (`{app: pgbaton}`).",
    ),
    local(
        "log.dir",
        "absent (standard error)",
        "Write `pgbaton.log` in this directory (created if missing) instead of standard error.",
    ),
    local(
        "log.file_size",
        "`25000000`",
        "Bytes: before a line would make `pgbaton.log` reach this size, it is renamed \
         `pgbaton.log.1` (`.1` becomes `.2`, ...) and a new file is started, as Python's \
         `RotatingFileHandler` (`0`: never rotate).",
    ),
    local(
        "log.file_num",
        "`4`",
        "Rotated files kept (`pgbaton.log.1` to `.N`, the oldest deleted); `0` never rotates \
         (the file grows), as Python's `backupCount=0`.",
    ),
    local(
        "log.mode",
        "umask",
        "Permissions of the log files, octal (`0640`).",
    ),
    warned(
        "log.max_queue_size",
        Local,
        "accepted but not used by pgbaton: it writes log lines directly, without Patroni's queue",
    ),
    warned(
        "log.loggers",
        Local,
        "accepted but not used by pgbaton: Python logger names mean nothing to it; use PGBATON_LOG (a tracing filter) for per-module levels",
    ),
    warned(
        "log.deduplicate_heartbeat_logs",
        Local,
        "accepted but not used by pgbaton: it logs a decision when it changes, never every loop",
    ),
    // The dynamic configuration.
    dynamic(
        "ttl",
        "30",
        "Leader lease time to live, seconds. **At least 5** (see below).",
    ),
    dynamic(
        "loop_wait",
        "10",
        "Seconds between HA loop cycles. At least 1.",
    ),
    dynamic(
        "retry_timeout",
        "10",
        "Seconds a DCS or PostgreSQL operation is retried before it counts as failed. At least 1.",
    ),
    dynamic(
        "maximum_lag_on_failover",
        "1048576",
        "Bytes a replica may lag behind the leader's last published position and still take \
         over.",
    ),
    dynamic(
        "primary_start_timeout",
        "300",
        "Seconds a crashed primary is restarted in place before failing over.",
    ),
    dynamic(
        "master_start_timeout",
        "300",
        "The old name of `primary_start_timeout`; the new name wins.",
    ),
    dynamic(
        "pause",
        "`false`",
        "Maintenance mode: no automatic failover, PostgreSQL is left alone.",
    ),
    dynamic(
        "synchronous_mode",
        "`false`",
        "`true`/`on` (priority): the leader manages `synchronous_standby_names` (`name` or `N \
         (a,b)`) and `/sync`; only a member in `/sync` may take over. `quorum`: `ANY numsync \
         (every eligible standby)` with `numsync = min(synchronous_node_count, standbys)`; \
         `/sync` lists the voters and `quorum = voters − numsync`, and any member may take over \
         once `quorum + 1` voters (itself included) report a position not ahead of its own, \
         which proves it holds every acknowledged commit.",
    ),
    dynamic(
        "synchronous_mode_strict",
        "`false`",
        "Never let commits through without a synchronous standby: with none available, \
         `synchronous_standby_names` keeps the last set or Patroni's placeholder.",
    ),
    dynamic(
        "synchronous_node_count",
        "1",
        "How many synchronous standbys the leader keeps (priority), or how many of them must \
         acknowledge each commit (quorum).",
    ),
    dynamic(
        "maximum_lag_on_syncnode",
        "-1",
        "Bytes a standby may lag behind the most advanced standby (the primary when only one \
         streams) and still be made synchronous; -1: no limit.",
    ),
    warned(
        "max_timelines_history",
        Dynamic,
        "accepted but not used by pgbaton: the history key is not trimmed",
    ),
    warned(
        "primary_stop_timeout",
        Dynamic,
        "accepted but not used by pgbaton: stopping PostgreSQL is bounded by \
         postgresql.pg_ctl_timeout",
    ),
    warned(
        "master_stop_timeout",
        Dynamic,
        "accepted but not used by pgbaton: stopping PostgreSQL is bounded by \
         postgresql.pg_ctl_timeout",
    ),
    warned(
        "primary_race_backoff",
        Dynamic,
        "accepted but not used by pgbaton: members race for the leader key without this delay",
    ),
    by_value(
        "check_timeline",
        Dynamic,
        "`false`",
        "",
        &[
            ("true", Implemented),
            (
                "false",
                Warned(
                    "pgbaton always checks timelines: a member behind the cluster's timeline \
                     never takes over",
                ),
            ),
        ],
    ),
    dynamic(
        "failsafe_mode",
        "`false`",
        "DCS failsafe mode: a leader that cannot renew its lease keeps its primary while every \
         member of `/failsafe` (which the leader keeps current) accepts its `POST /failsafe`, \
         each round extending the fencing deadline by what a keepalive would; one member not \
         answering and it fences at the deadline. A member that accepted does not race for ttl; \
         a member missing from `/failsafe` never takes the key.",
    ),
    dynamic(
        "member_slots_ttl",
        "`1800` (30min)",
        "How long the leader keeps the replication slot of a member whose member key is gone \
         (seconds, or a duration such as `30min`), so that it streams at once when it comes \
         back (a rejoining former primary finds its slot on the new leader: the leader \
         publishes the names as `retain_slots` in `/status`). `0`: the slot goes with the \
         member key.",
    ),
    dynamic(
        "slots",
        "none",
        "Permanent replication slots, `name: {type: physical}` or `name: {type: logical, \
         database: .., plugin: ..}`. A physical slot may say `cluster_type: primary` (kept \
         in a regular cluster only) or `standby` (kept in a standby cluster only); without \
         it, in both. As in Patroni, a standby cluster keeps no logical slots, and \
         `cluster_type` on a logical slot is warned about and has no effect. The leader \
         creates them; replicas keep copies so that a \
         failover keeps them: physical slots created and advanced to the positions the \
         leader publishes in `/status`, logical slots copied from the leader once (their \
         state file, read with `pg_read_binary_file` as the rewind user, else the superuser; PostgreSQL is \
         restarted for it) and advanced with `pg_replication_slot_advance`, never past the \
         replica's replay position. Logical slots need `wal_level: logical`; with one declared, \
         `hot_standby_feedback` is turned on (as Patroni does); as \
         in Patroni, a consumer may see changes again after a failover (from the last \
         position the leader published), never miss any, and a replica logs when a copy \
         is safe to use after a failover (its slot on the leader holds a `catalog_xmin` that \
         reached the copied slot's). Members with `nofailover` keep no \
         permanent slot, `nostream` members no logical one. A slot pgbaton did not create \
         and was not told to keep is never dropped (Patroni drops unknown slots), nor is a \
         slot of a declared name but another type, database or plugin (reported instead); a \
         slot removed from this section is dropped if pgbaton made it.",
    ),
    dynamic(
        "permanent_slots",
        "none",
        "Patroni's older name of `slots` (read when set; `permanent_replication_slots` wins, \
         then `permanent_slots`, then `slots`).",
    ),
    dynamic(
        "permanent_replication_slots",
        "none",
        "Patroni's older name of `slots`.",
    ),
    dynamic(
        "ignore_slots",
        "none",
        "Replication slots pgbaton never drops, a list of `{name, type, database, plugin}` \
         entries (every field given must match; `type` is `physical` or `logical`; a physical \
         slot has no database or plugin), as in Patroni. pgbaton drops only slots it made \
         anyway; a matching one is kept even then: a member slot past `member_slots_ttl`, a \
         slot removed from `slots`, a slot whose declared type, database or plugin changed \
         (Patroni drops and re-creates that one), on the leader and on replicas. A slot \
         declared in `slots` or kept for a member is still created and advanced when it \
         matches (as in Patroni). An unknown field or a wrong type is an error at its key, \
         also in the DCS value (which is then not adopted).",
    ),
    dynamic(
        "standby_cluster",
        "none",
        "Makes this a standby cluster of another cluster: the holder of the leader key (the \
         standby leader) runs PostgreSQL as a standby of the remote `host` (or, without it, \
         replays the WAL archive through `restore_command`), never promotes, and holds the key \
         like a primary would; the other members stream from it. Failover and switchover \
         inside the cluster work as in a primary cluster. Set with `pgbaton demote-cluster`, \
         removed with `pgbaton promote-cluster` (or `edit-config`); changing it re-points the \
         standby leader. A section without `host`, `port` and `restore_command` is no standby \
         cluster. `synchronous_mode` is ignored while it is set, as in Patroni. The standby \
         leader writes no `history` (Patroni's neither): the key keeps what it had, and after \
         `promote-cluster` the new primary writes its timeline history file's lines.",
    ),
    dynamic(
        "standby_cluster.host",
        "none",
        "The remote primary (or a member or proxy of the other cluster) the standby leader \
         clones (`pg_basebackup`, on bootstrap) and streams from. Without it (and with \
         `restore_command`): an archive-only standby cluster, whose leader has no \
         `primary_conninfo` and is created by `create_replica_methods`.",
    ),
    dynamic("standby_cluster.port", "`5432`", "Port of `host`."),
    dynamic(
        "standby_cluster.primary_slot_name",
        "none",
        "The physical replication slot on the remote host the standby leader streams \
         through (`primary_slot_name`); without it, none is used. pgbaton does not create it.",
    ),
    dynamic(
        "standby_cluster.recovery_min_apply_delay",
        "none",
        "`recovery_min_apply_delay` of the standby leader (its replicas apply at once).",
    ),
    dynamic(
        "standby_cluster.restore_command",
        "none",
        "Marks the WAL archive as a source of the standby cluster (alone without `host`, a \
         fallback of streaming with it). pgbaton never runs a command from the DCS: each \
         member runs its local `postgresql.parameters.restore_command`, else the one of its \
         own file's `bootstrap.dcs.standby_cluster` (so Patroni's YAML works unchanged); a \
         member with none, or another one, logs a warning.",
    ),
    dynamic(
        "standby_cluster.archive_cleanup_command",
        "none",
        "As `restore_command`: the member's local `postgresql.parameters` one, else its own \
         file's `bootstrap.dcs.standby_cluster` one, runs.",
    ),
    dynamic(
        "standby_cluster.create_replica_methods",
        "`[basebackup]`",
        "Names of the methods that create the standby leader, in order, each `basebackup` or a \
         custom method defined in the member's local configuration (listed in its \
         `postgresql.create_replica_methods`; a name not defined there is skipped with a \
         warning: a name from the DCS never becomes a command, where Patroni runs the name \
         itself). Without a `host` only methods with `no_leader` (or `no_master`) run, as in \
         Patroni.",
    ),
    dynamic(
        "postgresql",
        "none",
        "The cluster-wide PostgreSQL settings below.",
    ),
    dynamic(
        "postgresql.use_pg_rewind",
        "`false`",
        "Rewind a former primary with `pg_rewind` instead of re-cloning it.",
    ),
    dynamic(
        "postgresql.use_slots",
        "`true`",
        "Replicas stream through replication slots the leader keeps for them; `false`: no \
         slots, no `primary_slot_name`. Only read from here, as in Patroni.",
    ),
    dynamic(
        "postgresql.parameters",
        "none",
        "See [Parameters](#parameters).",
    ),
    dynamic(
        "postgresql.pg_hba",
        "none",
        "`pg_hba.conf` lines, unless the local file has its own.",
    ),
    dynamic(
        "postgresql.remove_data_directory_on_rewind_failure",
        "`false`",
        "See [postgresql](#postgresql).",
    ),
    warned("postgresql.listen", Dynamic, LOCAL_ONLY),
    warned("postgresql.connect_address", Dynamic, LOCAL_ONLY),
    warned("postgresql.proxy_address", Dynamic, LOCAL_ONLY),
    warned("postgresql.config_dir", Dynamic, LOCAL_ONLY),
    warned("postgresql.data_dir", Dynamic, LOCAL_ONLY),
    warned("postgresql.pgpass", Dynamic, LOCAL_ONLY),
    warned("postgresql.authentication", Dynamic, LOCAL_ONLY),
    warned("postgresql.bin_dir", Dynamic, SET_LOCALLY),
    warned("postgresql.pg_ctl_timeout", Dynamic, SET_LOCALLY),
    warned("postgresql.use_unix_socket", Dynamic, SET_LOCALLY),
    // Commands run as the agent's user: never from the dynamic configuration.
    local_only("postgresql.callbacks", LOCAL_COMMAND),
    local_only("postgresql.pre_promote", LOCAL_COMMAND),
    local_only("postgresql.before_stop", LOCAL_COMMAND),
];

/// The prefix under which the dynamic configuration's keys appear in the file.
pub(crate) const DYNAMIC_ROOT: &str = "bootstrap.dcs";

/// `pattern` (a concrete path from the top of the file, dynamic keys under `bootstrap.dcs.`) as
/// (scope is dynamic, path within the scope).
fn split_scope(pattern: &str) -> (bool, &str) {
    match pattern
        .strip_prefix(DYNAMIC_ROOT)
        .and_then(|rest| rest.strip_prefix('.'))
    {
        Some(rest) => (true, rest),
        None => (false, pattern),
    }
}

fn in_scope(key: &Key, dynamic: bool) -> bool {
    match key.scope {
        Scope::Both => true,
        Scope::Local => !dynamic,
        Scope::Dynamic => dynamic,
    }
}

/// Whether the segments of `key_path` match `path` (a `<...>` segment matches any one).
fn path_matches(key_path: &str, path: &str) -> bool {
    let mut a = key_path.split('.');
    let mut b = path.split('.');
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(k), Some(p)) if k == p || (k.starts_with('<') && k.ends_with('>')) => {}
            _ => return false,
        }
    }
}

/// The table entry for a concrete key path (`postgresql.authentication.superuser.sslmode`,
/// `bootstrap.dcs.failsafe_mode`).
pub(crate) fn find(pattern: &str) -> Option<&'static Key> {
    let (dynamic, path) = split_scope(pattern);
    KEYS.iter()
        .find(|k| in_scope(k, dynamic) && path_matches(k.path, path))
}

/// The keys directly under the mapping at `parent` (a concrete path, as for [`find`]) whose
/// status never depends on the value: refused or warned ones, which the parsers check without
/// reading them.
pub(crate) fn flagged_children(parent: &str) -> impl Iterator<Item = (&'static str, Support)> {
    let dynamic = parent == DYNAMIC_ROOT || split_scope(parent).0;
    let inner = if parent == DYNAMIC_ROOT {
        ""
    } else {
        split_scope(parent).1
    };
    let inner = inner.to_owned();
    KEYS.iter().filter_map(move |k| {
        if !in_scope(k, dynamic) {
            return None;
        }
        let Rule::Always(
            support @ (Support::Refused(_) | Support::Warned(_) | Support::LocalOnly(_)),
        ) = k.rule
        else {
            return None;
        };
        let (key_parent, last) = match k.path.rsplit_once('.') {
            Some((p, l)) => (p, l),
            None => ("", k.path),
        };
        let parent_ok = if inner.is_empty() {
            key_parent.is_empty()
        } else {
            !key_parent.is_empty() && path_matches(key_parent, &inner)
        };
        parent_ok.then_some((last, support))
    })
}

/// Whether a value asks for nothing: `null`, an empty string, list or mapping.
pub(crate) fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

/// Records what `support` means for the key shown as `path`.
pub(crate) fn apply(cx: &mut Cx, path: &str, support: Support) {
    match support {
        Support::Implemented => {}
        Support::Refused(why) => cx.refuse(path, why),
        Support::Warned(why) => cx.warn(path, why),
        Support::LocalOnly(why) => cx.local_only(path, why),
    }
}

/// Applies the status the table gives the class `label` of the value of the key at `pattern`
/// (shown as `path`).
pub(crate) fn apply_value(cx: &mut Cx, path: &str, pattern: &str, label: &str) {
    let support = match find(pattern).map(|k| k.rule) {
        Some(Rule::ByValue(values)) => values.iter().find(|(l, _)| *l == label).map(|(_, s)| *s),
        Some(Rule::Always(s)) => Some(s),
        None => None,
    };
    match support {
        Some(s) => apply(cx, path, s),
        // A mistake in this crate, caught by the tests; never a panic on user input.
        None => cx.error(
            path,
            format!("internal error: no support entry for {pattern} ({label})"),
        ),
    }
}

/// The documentation's key tables, one per section of `docs/configuration.md`.
#[cfg(test)]
pub(crate) mod doc {
    use super::{KEYS, Key, Rule, Scope, Support};

    /// The sections, in the order of the documentation: (marker name, keys in it).
    pub(crate) const SECTIONS: &[&str] = &[
        "top",
        "restapi",
        "ctl",
        "etcd3",
        "bootstrap",
        "postgresql",
        "tags",
        "watchdog",
        "vip",
        "log",
        "dynamic",
    ];

    fn section_of(key: &Key) -> Vec<&'static str> {
        let first = key.path.split('.').next().unwrap_or_default();
        let local_section = if key.path.contains('.') { first } else { "top" };
        match key.scope {
            Scope::Local => vec![local_section],
            Scope::Dynamic => vec!["dynamic"],
            Scope::Both => vec![local_section, "dynamic"],
        }
    }

    fn support_text(s: Support) -> String {
        match s {
            Support::Implemented => "supported".to_owned(),
            Support::Refused(why) => format!("**refused** (not supported yet): {why}"),
            Support::Warned(why) => format!("warning: {why}"),
            Support::LocalOnly(why) => format!("**refused** in the dynamic configuration: {why}"),
        }
    }

    /// A table cell: `|` escaped, and `<` outside code spans (Markdown would read `<name>` as
    /// an HTML tag).
    fn cell(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut code = false;
        for c in text.chars() {
            match c {
                '`' => {
                    code = !code;
                    out.push(c);
                }
                '|' => out.push_str("\\|"),
                '<' if !code => out.push_str("&lt;"),
                c => out.push(c),
            }
        }
        out
    }

    /// The Markdown table of one section.
    pub(crate) fn table(section: &str) -> String {
        let mut out = String::from("| key | default | meaning |\n|---|---|---|\n");
        let mut keys: Vec<&Key> = KEYS
            .iter()
            .filter(|k| section_of(k).contains(&section))
            .collect();
        // The dynamic configuration's own keys first, then its `postgresql` section.
        keys.sort_by_key(|k| section == "dynamic" && k.path.starts_with("postgresql"));
        for key in keys {
            let meaning = match key.rule {
                Rule::Always(Support::Implemented) => key.doc.to_owned(),
                Rule::Always(Support::Refused(why)) => {
                    format!("**Refused** (not supported yet): {why}.")
                }
                Rule::Always(Support::Warned(why)) => format!("Warning: {why}."),
                Rule::Always(Support::LocalOnly(why)) => {
                    format!("**Refused** in the dynamic configuration: {why}.")
                }
                Rule::ByValue(values) => {
                    let mut parts: Vec<String> = Vec::new();
                    if !key.doc.is_empty() {
                        parts.push(key.doc.to_owned());
                    }
                    for (label, s) in values {
                        let label = if label.contains(' ') {
                            format!("*{label}*")
                        } else {
                            format!("`{label}`")
                        };
                        parts.push(format!("{label}: {}.", support_text(*s)));
                    }
                    parts.join(" ")
                }
            };
            let default = if key.default.is_empty() {
                "—"
            } else {
                key.default
            };
            out.push_str(&format!(
                "| `{}` | {} | {} |\n",
                key.path,
                cell(default),
                cell(&meaning)
            ));
        }
        out
    }
}
