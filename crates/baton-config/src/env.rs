//! Environment overrides: Patroni's `PATRONI_*` variables and the same names with `PGBATON_`,
//! which win. Values are laid over the file before validation, so they are checked like file
//! values; problems are reported under the variable's name.

use serde_json::{Map, Value};

use crate::walk::Cx;

/// Prefixes in the order they are applied: a later one wins.
pub(crate) const PREFIXES: [&str; 2] = ["PATRONI_", "PGBATON_"];

/// How a variable's text becomes a value.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    /// A YAML flow list or a comma-separated list (Patroni `_parse_list`).
    List,
    /// A YAML flow mapping (Patroni `_parse_dict`): `{X-Frame-Options: SAMEORIGIN}`.
    Map,
}

/// One supported variable: `<prefix><suffix>` sets the key at `path`. Setting it removes
/// `replaces` from the same section (an endpoint from the environment replaces the file's).
struct Var {
    suffix: &'static str,
    path: &'static [&'static str],
    kind: Kind,
    replaces: Option<&'static str>,
}

const fn text(suffix: &'static str, path: &'static [&'static str]) -> Var {
    Var {
        suffix,
        path,
        kind: Kind::Text,
        replaces: None,
    }
}

/// Every variable read, in application order.
const VARS: &[Var] = &[
    text("NAME", &["name"]),
    text("NAMESPACE", &["namespace"]),
    text("SCOPE", &["scope"]),
    text("RESTAPI_LISTEN", &["restapi", "listen"]),
    text("RESTAPI_CONNECT_ADDRESS", &["restapi", "connect_address"]),
    text(
        "RESTAPI_USERNAME",
        &["restapi", "authentication", "username"],
    ),
    text(
        "RESTAPI_PASSWORD",
        &["restapi", "authentication", "password"],
    ),
    text("RESTAPI_CERTFILE", &["restapi", "certfile"]),
    text("RESTAPI_KEYFILE", &["restapi", "keyfile"]),
    text("RESTAPI_KEYFILE_PASSWORD", &["restapi", "keyfile_password"]),
    text("RESTAPI_CAFILE", &["restapi", "cafile"]),
    text("RESTAPI_CIPHERS", &["restapi", "ciphers"]),
    text("RESTAPI_VERIFY_CLIENT", &["restapi", "verify_client"]),
    Var {
        suffix: "RESTAPI_ALLOWLIST",
        path: &["restapi", "allowlist"],
        kind: Kind::List,
        replaces: None,
    },
    text(
        "RESTAPI_ALLOWLIST_INCLUDE_MEMBERS",
        &["restapi", "allowlist_include_members"],
    ),
    Var {
        suffix: "RESTAPI_HTTP_EXTRA_HEADERS",
        path: &["restapi", "http_extra_headers"],
        kind: Kind::Map,
        replaces: None,
    },
    Var {
        suffix: "RESTAPI_HTTPS_EXTRA_HEADERS",
        path: &["restapi", "https_extra_headers"],
        kind: Kind::Map,
        replaces: None,
    },
    text("CTL_INSECURE", &["ctl", "insecure"]),
    text("CTL_CACERT", &["ctl", "cacert"]),
    text("CTL_CERTFILE", &["ctl", "certfile"]),
    text("CTL_KEYFILE", &["ctl", "keyfile"]),
    text("CTL_KEYFILE_PASSWORD", &["ctl", "keyfile_password"]),
    text("CTL_USERNAME", &["ctl", "authentication", "username"]),
    text("CTL_PASSWORD", &["ctl", "authentication", "password"]),
    text("POSTGRESQL_LISTEN", &["postgresql", "listen"]),
    text(
        "POSTGRESQL_CONNECT_ADDRESS",
        &["postgresql", "connect_address"],
    ),
    text("POSTGRESQL_DATA_DIR", &["postgresql", "data_dir"]),
    text("POSTGRESQL_PGPASS", &["postgresql", "pgpass"]),
    text("POSTGRESQL_BIN_DIR", &["postgresql", "bin_dir"]),
    text(
        "SUPERUSER_USERNAME",
        &["postgresql", "authentication", "superuser", "username"],
    ),
    text(
        "SUPERUSER_PASSWORD",
        &["postgresql", "authentication", "superuser", "password"],
    ),
    text(
        "REPLICATION_USERNAME",
        &["postgresql", "authentication", "replication", "username"],
    ),
    text(
        "REPLICATION_PASSWORD",
        &["postgresql", "authentication", "replication", "password"],
    ),
    text(
        "REWIND_USERNAME",
        &["postgresql", "authentication", "rewind", "username"],
    ),
    text(
        "REWIND_PASSWORD",
        &["postgresql", "authentication", "rewind", "password"],
    ),
    Var {
        suffix: "ETCD3_HOST",
        path: &["etcd3", "host"],
        kind: Kind::Text,
        replaces: Some("hosts"),
    },
    Var {
        suffix: "ETCD3_HOSTS",
        path: &["etcd3", "hosts"],
        kind: Kind::List,
        replaces: Some("host"),
    },
    text("ETCD3_PROTOCOL", &["etcd3", "protocol"]),
    text("ETCD3_USERNAME", &["etcd3", "username"]),
    text("ETCD3_PASSWORD", &["etcd3", "password"]),
    text("ETCD3_CACERT", &["etcd3", "cacert"]),
    text("ETCD3_CERT", &["etcd3", "cert"]),
    text("ETCD3_KEY", &["etcd3", "key"]),
    text("ETCD3_KEY_PASSWORD", &["etcd3", "key_password"]),
    Var {
        suffix: "ETCD_HOST",
        path: &["etcd", "host"],
        kind: Kind::Text,
        replaces: Some("hosts"),
    },
    Var {
        suffix: "ETCD_HOSTS",
        path: &["etcd", "hosts"],
        kind: Kind::List,
        replaces: Some("host"),
    },
    text("ETCD_PROTOCOL", &["etcd", "protocol"]),
    text("ETCD_USERNAME", &["etcd", "username"]),
    text("ETCD_PASSWORD", &["etcd", "password"]),
    text("ETCD_CACERT", &["etcd", "cacert"]),
    text("ETCD_CERT", &["etcd", "cert"]),
    text("ETCD_KEY", &["etcd", "key"]),
    text("ETCD_KEY_PASSWORD", &["etcd", "key_password"]),
];

/// Every variable name pgbaton reads, `PATRONI_*` first.
#[cfg(test)]
pub(crate) fn names() -> impl Iterator<Item = String> {
    PREFIXES
        .iter()
        .flat_map(|p| VARS.iter().map(move |v| format!("{p}{}", v.suffix)))
}

/// The process environment, for [`crate::load_file`] in the binary. Library code never reads
/// the environment itself.
pub fn std_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// Lays the environment over `root` (a mapping). Empty values are ignored, as Patroni does.
pub(crate) fn overlay(cx: &mut Cx, root: &mut Value, env: &dyn Fn(&str) -> Option<String>) {
    for prefix in PREFIXES {
        for var in VARS {
            let name = format!("{prefix}{}", var.suffix);
            let Some(raw) = env(&name).filter(|s| !s.is_empty()) else {
                continue;
            };
            let value = match var.kind {
                Kind::Text => Value::String(raw),
                Kind::List => match parse_list(&raw) {
                    Ok(v) => v,
                    Err(message) => {
                        cx.error(&name, message);
                        continue;
                    }
                },
                Kind::Map => match parse_map(&raw) {
                    Ok(v) => v,
                    Err(message) => {
                        cx.error(&name, message);
                        continue;
                    }
                },
            };
            let Some((key, parents)) = var.path.split_last() else {
                continue;
            };
            let Some(section) = section_mut(root, parents) else {
                // The file has a non-mapping there; that is reported when the file is walked.
                continue;
            };
            if let Some(other) = var.replaces
                && section.remove(other).is_some()
            {
                cx.clear_origin(&dotted(parents, other));
            }
            section.insert((*key).to_owned(), value);
            cx.set_origin(var.path.join("."), name);
        }
    }
}

fn dotted(parents: &[&str], key: &str) -> String {
    let mut parts: Vec<&str> = parents.to_vec();
    parts.push(key);
    parts.join(".")
}

/// The mapping at `path` under `root`, created when absent or `null`; `None` when something
/// else is in the way.
fn section_mut<'a>(root: &'a mut Value, path: &[&str]) -> Option<&'a mut Map<String, Value>> {
    let mut cur = root;
    for key in path {
        let map = cur.as_object_mut()?;
        let entry = map.entry((*key).to_owned()).or_insert(Value::Null);
        if entry.is_null() {
            *entry = Value::Object(Map::new());
        }
        cur = entry;
    }
    cur.as_object_mut()
}

/// Patroni `_parse_dict`: a YAML mapping, flow (`{a: b}`) or block.
fn parse_map(raw: &str) -> Result<Value, String> {
    match serde_yaml::from_str::<Value>(raw) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(format!(
            "expected a YAML mapping such as {{X-Frame-Options: SAMEORIGIN}}, found {raw:?}"
        )),
    }
}

/// Patroni `_parse_list`: a YAML list (`[a, b]`, `- a`) or, otherwise, a comma-separated one.
fn parse_list(raw: &str) -> Result<Value, String> {
    let text = if raw.trim().starts_with('-') || raw.contains('[') {
        raw.to_owned()
    } else {
        format!("[{raw}]")
    };
    let invalid =
        || format!("expected a YAML list or comma-separated \"host:port\" values, found {raw:?}");
    let Ok(serde_yaml::Value::Sequence(items)) = serde_yaml::from_str::<serde_yaml::Value>(&text)
    else {
        return Err(invalid());
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item {
            serde_yaml::Value::String(s) => out.push(Value::String(s)),
            serde_yaml::Value::Number(n) => out.push(Value::String(n.to_string())),
            _ => return Err(invalid()),
        }
    }
    Ok(Value::Array(out))
}
