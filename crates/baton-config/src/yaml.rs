//! YAML text → JSON tree. Everything after this step walks `serde_json::Value`, which is also
//! the form the dynamic configuration takes in the DCS.

use serde_json::{Map, Number, Value};

use crate::walk::{Cx, describe, index, join};

/// Parses one YAML document. Reports malformed YAML with its line and column, an empty
/// document, and values JSON cannot hold (non-string keys, custom tags, NaN).
pub(crate) fn parse(cx: &mut Cx, text: &str, origin: Option<&str>) -> Option<Value> {
    let prefix = origin.map(|o| format!("{o}: ")).unwrap_or_default();
    let mut doc: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(doc) => doc,
        Err(e) => {
            cx.error("", format!("{prefix}{}", syntax_message(&e)));
            return None;
        }
    };
    if let Err(e) = doc.apply_merge() {
        cx.error("", format!("{prefix}invalid YAML merge key (<<): {e}"));
        return None;
    }
    if doc.is_null() {
        cx.error("", format!("{prefix}the configuration is empty"));
        return None;
    }
    to_json(cx, "", &doc)
}

fn syntax_message(e: &serde_yaml::Error) -> String {
    let mut text = e.to_string();
    match e.location() {
        Some(loc) => {
            // The library appends " at line L column C" itself; say it once, first.
            if let Some(pos) = text.find(" at line ") {
                text.truncate(pos);
            }
            format!(
                "invalid YAML at line {} column {}: {text}",
                loc.line(),
                loc.column()
            )
        }
        None => format!("invalid YAML: {text}"),
    }
}

fn to_json(cx: &mut Cx, path: &str, v: &serde_yaml::Value) -> Option<Value> {
    use serde_yaml::Value as Y;
    match v {
        Y::Null => Some(Value::Null),
        Y::Bool(b) => Some(Value::Bool(*b)),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(Value::from(i))
            } else if let Some(u) = n.as_u64() {
                Some(Value::from(u))
            } else {
                match n.as_f64().and_then(Number::from_f64) {
                    Some(f) => Some(Value::Number(f)),
                    None => {
                        cx.error(path, format!("expected a finite number, found {n}"));
                        None
                    }
                }
            }
        }
        Y::String(s) => Some(Value::String(s.clone())),
        Y::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                match to_json(cx, &index(path, i), item) {
                    Some(j) => out.push(j),
                    None => ok = false,
                }
            }
            ok.then_some(Value::Array(out))
        }
        Y::Mapping(m) => {
            let mut out = Map::new();
            let mut ok = true;
            for (k, item) in m {
                let key = match k {
                    Y::String(s) => s.clone(),
                    other => {
                        let shown = scalar_text(other);
                        let described = to_json_scalar(other)
                            .map_or_else(|| "a complex key".to_owned(), |j| describe(&j));
                        cx.error(
                            &join(path, &shown),
                            format!("keys must be strings, found {described} (quote it)"),
                        );
                        ok = false;
                        continue;
                    }
                };
                match to_json(cx, &join(path, &key), item) {
                    Some(j) => {
                        out.insert(key, j);
                    }
                    None => ok = false,
                }
            }
            ok.then_some(Value::Object(out))
        }
        Y::Tagged(t) => {
            cx.error(
                path,
                format!("YAML tags are not supported, found {}", t.tag),
            );
            None
        }
    }
}

fn scalar_text(v: &serde_yaml::Value) -> String {
    use serde_yaml::Value as Y;
    match v {
        Y::Null => "~".to_owned(),
        Y::Bool(b) => b.to_string(),
        Y::Number(n) => n.to_string(),
        Y::String(s) => s.clone(),
        _ => "?".to_owned(),
    }
}

fn to_json_scalar(v: &serde_yaml::Value) -> Option<Value> {
    use serde_yaml::Value as Y;
    match v {
        Y::Null => Some(Value::Null),
        Y::Bool(b) => Some(Value::Bool(*b)),
        Y::Number(n) => n
            .as_i64()
            .map(Value::from)
            .or_else(|| n.as_f64().and_then(Number::from_f64).map(Value::Number)),
        _ => None,
    }
}

/// Patroni's `patch_config`: `patch` is laid over `base`; a `null` in `patch` removes the key,
/// mappings merge recursively, anything else replaces.
pub(crate) fn patch(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(&k);
                } else if let Some(existing) = b.get_mut(&k)
                    && existing.is_object()
                    && v.is_object()
                {
                    patch(existing, v);
                } else {
                    b.insert(k, v);
                }
            }
        }
        (b, p) => *b = p,
    }
}
