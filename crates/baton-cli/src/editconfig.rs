//! `pgbaton edit-config` without IO: patronictl's `--set` paths, `--apply`/`--replace` YAML
//! merges, the YAML shown for editing and the unified diff of a change.

use serde_json::{Map, Value};

/// The configuration as patronictl shows it for editing (`yaml.safe_dump`: block style, keys
/// sorted).
pub fn to_yaml(data: &Value) -> Result<String, String> {
    match data {
        Value::Object(m) if m.is_empty() => Ok("{}\n".to_owned()),
        _ => serde_yaml::to_string(data)
            .map_err(|e| format!("render the configuration as YAML: {e}")),
    }
}

/// A YAML document (a file, standard input, the edited text) as JSON. An empty document is
/// `null`, as `yaml.safe_load` reads it.
pub fn from_yaml(text: &str, what: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_yaml::from_str::<Value>(text).map_err(|e| format!("{what}: not valid YAML: {e}"))
}

/// A configuration document: a mapping (an empty document is an empty one).
fn as_mapping(v: Value, what: &str) -> Result<Map<String, Value>, String> {
    match v {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        other => Err(format!(
            "{what}: the configuration must be a mapping, found {}",
            kind(&other)
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// `--apply`: the document merged into `data` as patronictl's `patch_config` (mappings merge,
/// `null` removes, anything else replaces).
pub fn apply_yaml(data: &Value, text: &str, what: &str) -> Result<Value, String> {
    let patch = as_mapping(from_yaml(text, what)?, what)?;
    let mut out = as_mapping(data.clone(), "the stored configuration")?;
    baton_api::merge_patch(&mut out, &patch);
    Ok(Value::Object(out))
}

/// `--replace`: the document as the whole configuration.
pub fn replace_yaml(text: &str, what: &str) -> Result<Value, String> {
    Ok(Value::Object(as_mapping(from_yaml(text, what)?, what)?))
}

/// `--pg NAME=VALUE` as the `--set` pair patronictl makes of it.
pub fn pg_pair(pair: &str) -> String {
    format!("postgresql.parameters.{}", pair.trim_start())
}

/// `--set KEY=VALUE` pairs applied in order (patronictl's `apply_config_changes`): KEY is a
/// dotted path, except that everything after `postgresql.parameters.` is one parameter name
/// (GUCs contain dots); VALUE is YAML; `null` or nothing removes the key, and mappings left
/// empty by a removal go too.
pub fn set_values(data: &Value, pairs: &[String]) -> Result<Value, String> {
    let mut out = as_mapping(data.clone(), "the stored configuration")?;
    for pair in pairs {
        let Some((path, value)) = pair.split_once('=') else {
            return Err(format!(
                "invalid parameter setting {pair:?}: expected KEY=VALUE"
            ));
        };
        let mut path: Vec<String> = path.trim().split('.').map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!(
                "invalid parameter setting {pair:?}: empty key in the path"
            ));
        }
        if path.len() > 3 && path[0] == "postgresql" && path[1] == "parameters" {
            let guc = path[2..].join(".");
            path.truncate(2);
            path.push(guc);
        }
        let value = from_yaml(value, &format!("the value of {}", path.join(".")))?;
        set_path(&mut out, &path, value);
    }
    Ok(Value::Object(out))
}

fn set_path(config: &mut Map<String, Value>, path: &[String], value: Value) {
    let Some((key, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        if value.is_null() {
            config.remove(key);
        } else {
            config.insert(key.clone(), value);
        }
        return;
    }
    if !matches!(config.get(key), Some(Value::Object(_))) {
        config.insert(key.clone(), Value::Object(Map::new()));
    }
    let mut emptied = false;
    if let Some(Value::Object(child)) = config.get_mut(key) {
        set_path(child, rest, value);
        emptied = child.is_empty();
    }
    if emptied {
        config.remove(key);
    }
}

/// A unified diff (three lines of context, `difflib.unified_diff`'s shape), empty when the
/// texts are equal.
pub fn unified_diff(before: &str, after: &str) -> String {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    let ops = diff_ops(&a, &b);
    if ops.iter().all(|op| matches!(op, Op::Same(..))) {
        return String::new();
    }
    const CONTEXT: usize = 3;
    let mut out = String::from("--- \n+++ \n");
    // Group the operations into hunks: changes with up to 2*CONTEXT unchanged lines between.
    let changed: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| !matches!(op, Op::Same(..)))
        .map(|(i, _)| i)
        .collect();
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for &i in &changed {
        match groups.last_mut() {
            Some((_, end)) if i <= *end + 2 * CONTEXT + 1 => *end = i,
            _ => groups.push((i, i)),
        }
    }
    for (first, last) in groups {
        let start = first.saturating_sub(CONTEXT);
        let end = (last + CONTEXT + 1).min(ops.len());
        let hunk = &ops[start..end];
        let (mut a_start, mut b_start) = (None, None);
        let (mut a_len, mut b_len) = (0, 0);
        for op in hunk {
            match *op {
                Op::Same(i, j) => {
                    a_start.get_or_insert(i);
                    b_start.get_or_insert(j);
                    a_len += 1;
                    b_len += 1;
                }
                Op::Del(i, j) => {
                    a_start.get_or_insert(i);
                    b_start.get_or_insert(j);
                    a_len += 1;
                }
                Op::Add(i, j) => {
                    a_start.get_or_insert(i);
                    b_start.get_or_insert(j);
                    b_len += 1;
                }
            }
        }
        let range = |start: Option<usize>, len: usize| {
            let s = start.unwrap_or(0);
            match len {
                0 => format!("{s},0"),
                1 => format!("{}", s + 1),
                n => format!("{},{n}", s + 1),
            }
        };
        out.push_str(&format!(
            "@@ -{} +{} @@\n",
            range(a_start, a_len),
            range(b_start, b_len)
        ));
        for op in hunk {
            match *op {
                Op::Same(i, _) => out.push_str(&format!(" {}\n", a[i])),
                Op::Del(i, _) => out.push_str(&format!("-{}\n", a[i])),
                Op::Add(_, j) => out.push_str(&format!("+{}\n", b[j])),
            }
        }
    }
    out
}

/// One line of the edit script, with the positions in both texts where it applies.
#[derive(Clone, Copy, Debug)]
enum Op {
    Same(usize, usize),
    Del(usize, usize),
    Add(usize, usize),
}

/// The longest-common-subsequence edit script (configurations are small).
fn diff_ops(a: &[&str], b: &[&str]) -> Vec<Op> {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut ops = Vec::new();
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push(Op::Same(i, j));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            ops.push(Op::Add(i, j));
            j += 1;
        } else {
            ops.push(Op::Del(i, j));
            i += 1;
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;
    use serde_json::json;

    fn pairs(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn set_follows_dotted_paths_and_keeps_guc_names_whole() {
        let data = json!({"ttl": 30, "postgresql": {"parameters": {"work_mem": "4MB"}}});
        let out = set_values(
            &data,
            &pairs(&[
                "ttl=20",
                "loop_wait=5",
                "postgresql.use_pg_rewind=true",
                &pg_pair(" auto_explain.log_min_duration=100"),
                "synchronous_mode=on",
            ]),
        )
        .expect("set");
        assert_eq!(
            out,
            json!({
                "ttl": 20, "loop_wait": 5, "synchronous_mode": "on",
                "postgresql": {"use_pg_rewind": true, "parameters": {
                    "work_mem": "4MB", "auto_explain.log_min_duration": 100}}
            })
        );
    }

    #[test]
    fn set_null_or_nothing_removes_and_prunes_empty_mappings() {
        let data = json!({"ttl": 30, "postgresql": {"parameters": {"work_mem": "4MB"}}});
        let out = set_values(
            &data,
            &pairs(&["postgresql.parameters.work_mem=null", "ttl="]),
        )
        .expect("set");
        assert_eq!(out, json!({}));
    }

    #[test]
    fn set_refuses_malformed_pairs() {
        let data = json!({});
        assert!(
            set_values(&data, &pairs(&["ttl"]))
                .unwrap_err()
                .contains("KEY=VALUE")
        );
        assert!(set_values(&data, &pairs(&["a..b=1"])).is_err());
        assert!(
            set_values(&data, &pairs(&["ttl=[1"]))
                .unwrap_err()
                .contains("ttl")
        );
    }

    #[test]
    fn apply_merges_and_replace_replaces() {
        let data =
            json!({"ttl": 30, "postgresql": {"parameters": {"work_mem": "4MB", "jit": "off"}}});
        let out = apply_yaml(
            &data,
            "loop_wait: 5\npostgresql:\n  parameters:\n    jit: null\n    work_mem: 8MB\n",
            "x.yml",
        )
        .expect("apply");
        assert_eq!(
            out,
            json!({"ttl": 30, "loop_wait": 5, "postgresql": {"parameters": {"work_mem": "8MB"}}})
        );
        assert_eq!(
            replace_yaml("ttl: 20\n", "x.yml").expect("replace"),
            json!({"ttl": 20})
        );
        assert!(
            replace_yaml("- 1\n", "x.yml")
                .unwrap_err()
                .contains("mapping")
        );
        assert_eq!(replace_yaml("", "x.yml").expect("empty"), json!({}));
    }

    #[test]
    fn yaml_is_sorted_block_style() {
        let data =
            json!({"ttl": 30, "loop_wait": 10, "postgresql": {"parameters": {"work_mem": "4MB"}}});
        expect![[r#"
            loop_wait: 10
            postgresql:
              parameters:
                work_mem: 4MB
            ttl: 30
        "#]]
        .assert_eq(&to_yaml(&data).expect("yaml"));
    }

    #[test]
    fn diffs_are_unified_with_three_lines_of_context() {
        let before = "a: 1\nb: 2\nc: 3\nd: 4\ne: 5\nf: 6\ng: 7\nh: 8\ni: 9\nj: 10\n";
        let after = "a: 1\nb: 20\nc: 3\nd: 4\ne: 5\nf: 6\ng: 7\nh: 8\ni: 9\nj: 10\nk: 11\n";
        expect![[r#"
            --- 
            +++ 
            @@ -1,5 +1,5 @@
             a: 1
            +b: 20
            -b: 2
             c: 3
             d: 4
             e: 5
            @@ -8,3 +8,4 @@
             h: 8
             i: 9
             j: 10
            +k: 11
        "#]]
        .assert_eq(&unified_diff(before, after));
        assert_eq!(unified_diff(before, before), "");
    }
}
