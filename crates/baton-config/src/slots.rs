//! The dynamic `slots` section (also read as `permanent_slots` and
//! `permanent_replication_slots`, Patroni's older names), `member_slots_ttl` and
//! `ignore_slots`.

use baton_core::slots::{ClusterType, PermanentSlot, SlotKind, SlotMatcher, SlotType};
use serde_json::Value;

use crate::walk::{Cx, index, join};

/// Patroni's `slot_name_re`: lower-case letters, digits and `_`, 1 to 63 of them.
fn valid_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `slots: {name: {type: physical, cluster_type: ..} | {type: logical, database: ..,
/// plugin: ..} | null}`. A value without `type` is logical when it names a database and a
/// plugin, physical otherwise (as in Patroni). Every problem is an error at its key path
/// (Patroni logs and skips the entry; a slot silently not kept would lose its consumer's
/// position after a failover).
pub(crate) fn permanent_slots(cx: &mut Cx, path: &str, v: &Value) -> Option<Vec<PermanentSlot>> {
    let Value::Object(map) = v else {
        cx.mismatch(path, "a mapping of slot names", v);
        return None;
    };
    let mut out = Vec::new();
    let before = cx.error_count();
    for (name, value) in map {
        let p = join(path, name);
        if !valid_slot_name(name) {
            cx.error(
                &p,
                "invalid replication slot name: 1 to 63 lower-case letters, digits and `_`",
            );
            continue;
        }
        let entry = match value {
            Value::Null => serde_json::Map::new(),
            Value::Object(m) => m.clone(),
            other => {
                cx.mismatch(&p, "a mapping (type, database, plugin) or nothing", other);
                continue;
            }
        };
        let known = ["type", "database", "plugin", "cluster_type"];
        let unknown: Vec<&String> = entry
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .collect();
        if !unknown.is_empty() {
            for key in unknown {
                cx.error(
                    &join(&p, key),
                    "unknown key (a slot takes type, database, plugin, cluster_type)",
                );
            }
            continue;
        }
        let text = |cx: &mut Cx, key: &str| -> Option<String> {
            match entry.get(key) {
                None | Some(Value::Null) => None,
                Some(v) => cx.string(&join(&p, key), v, "a string"),
            }
        };
        let database = text(cx, "database");
        let plugin = text(cx, "plugin");
        let kind = match text(cx, "type").as_deref() {
            Some("physical") => "physical",
            Some("logical") => "logical",
            Some(other) => {
                cx.error(
                    &join(&p, "type"),
                    format!("expected physical or logical, found {other:?}"),
                );
                continue;
            }
            None if database.is_some() && plugin.is_some() => "logical",
            None => "physical",
        };
        let cluster_type = match text(cx, "cluster_type").as_deref() {
            None => None,
            Some("primary") => Some(ClusterType::Primary),
            Some("standby") => Some(ClusterType::Standby),
            Some(other) => {
                cx.error(
                    &join(&p, "cluster_type"),
                    format!("expected primary or standby, found {other:?}"),
                );
                continue;
            }
        };
        let kind = if kind == "physical" {
            SlotKind::Physical
        } else {
            let (Some(database), Some(plugin)) = (database, plugin) else {
                cx.error(&p, "a logical slot needs both `database` and `plugin`");
                continue;
            };
            SlotKind::Logical { database, plugin }
        };
        // As in Patroni, `cluster_type` selects physical slots only: a logical slot is kept
        // in a regular cluster whatever it says (a standby cluster keeps no logical slots).
        let cluster_type = match (&kind, cluster_type) {
            (SlotKind::Logical { .. }, Some(_)) => {
                cx.warn(
                    &join(&p, "cluster_type"),
                    "applies to physical slots only (as in Patroni): this logical slot is kept \
                     in a regular cluster, and a standby cluster keeps no logical slots",
                );
                None
            }
            (_, t) => t,
        };
        out.push(PermanentSlot {
            name: name.clone(),
            kind,
            cluster_type,
        });
    }
    (cx.error_count() == before).then_some(out)
}

/// `member_slots_ttl`: seconds as a number, or a number with a unit (`ms`, `s`, `min`, `h`,
/// `d`) as Patroni reads it (`30min`); 0 turns retention off.
pub(crate) fn member_slots_ttl(cx: &mut Cx, path: &str, v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => match n.as_u64() {
            Some(s) => Some(s),
            None => {
                cx.mismatch(path, "a non-negative number of seconds", v);
                None
            }
        },
        Value::String(s) => {
            let s = s.trim();
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (digits, unit) = s.split_at(split);
            let n: Option<u64> = digits.parse().ok();
            let scale_ms = match unit.trim() {
                "" | "s" => Some(1000),
                "ms" => Some(1),
                "min" => Some(60_000),
                "h" => Some(3_600_000),
                "d" => Some(86_400_000),
                _ => None,
            };
            match (n, scale_ms) {
                (Some(n), Some(ms)) => Some(n.saturating_mul(ms) / 1000),
                _ => {
                    cx.error(
                        path,
                        format!(
                            "expected seconds or a duration such as 30min (units ms, s, min, h, d), found {s:?}"
                        ),
                    );
                    None
                }
            }
        }
        other => {
            cx.mismatch(path, "seconds or a duration such as 30min", other);
            None
        }
    }
}

/// `ignore_slots: [{name: .., type: physical|logical, database: .., plugin: ..}, ...]`: every
/// field an entry gives must match (Patroni's `ignore_replication_slot`); `null` is as if the
/// field were absent. Every problem is an error at its key path, even in the DCS value (the
/// whole value is then not adopted): an entry silently not applied would let pgbaton drop a
/// slot someone else relies on.
pub(crate) fn ignore_slots(cx: &mut Cx, path: &str, v: &Value) -> Option<Vec<SlotMatcher>> {
    let items = match v {
        Value::Null => return Some(Vec::new()),
        Value::Array(items) => items,
        other => {
            cx.mismatch(
                path,
                "a list of mappings (name, type, database, plugin)",
                other,
            );
            return None;
        }
    };
    let before = cx.error_count();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = index(path, i);
        let Value::Object(entry) = item else {
            cx.mismatch(&p, "a mapping (name, type, database, plugin)", item);
            continue;
        };
        let mut matcher = SlotMatcher::default();
        for (key, value) in entry {
            let kp = join(&p, key);
            if value.is_null() {
                if !["name", "type", "database", "plugin"].contains(&key.as_str()) {
                    cx.error(
                        &kp,
                        "unknown key (an entry takes name, type, database, plugin)",
                    );
                }
                continue;
            }
            let text = |cx: &mut Cx| -> Option<String> {
                let s = cx.string(&kp, value, "a string")?;
                if s.is_empty() {
                    cx.error(&kp, "empty: leave the key out to match any");
                    return None;
                }
                Some(s)
            };
            match key.as_str() {
                "name" => matcher.name = text(cx),
                "database" => matcher.database = text(cx),
                "plugin" => matcher.plugin = text(cx),
                "type" => {
                    matcher.slot_type = match text(cx).as_deref() {
                        Some("physical") => Some(SlotType::Physical),
                        Some("logical") => Some(SlotType::Logical),
                        Some(other) => {
                            cx.error(
                                &kp,
                                format!("expected physical or logical, found {other:?}"),
                            );
                            None
                        }
                        None => None,
                    }
                }
                _ => cx.error(
                    &kp,
                    "unknown key (an entry takes name, type, database, plugin)",
                ),
            }
        }
        out.push(matcher);
    }
    (cx.error_count() == before).then_some(out)
}

#[cfg(test)]
mod tests {
    use crate::DynamicConfig;
    use baton_core::slots::{ClusterType, PermanentSlot, SlotKind, SlotMatcher, SlotType};

    fn parse(json: &str) -> Result<DynamicConfig, String> {
        DynamicConfig::from_json_strict(json)
            .map(|(d, _)| d)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn permanent_slots_parse_with_patronis_defaults() {
        let d = parse(
            r#"{"slots":{"perm1":null,"perm2":{"type":"physical"},
                "lslot":{"type":"logical","database":"postgres","plugin":"test_decoding"},
                "implied":{"database":"app","plugin":"pgoutput"},
                "standby_only":{"type":"physical","cluster_type":"standby"}},
                "member_slots_ttl":"10min"}"#,
        )
        .expect("valid");
        let logical = |db: &str, plugin: &str| SlotKind::Logical {
            database: db.into(),
            plugin: plugin.into(),
        };
        assert_eq!(
            d.permanent_slots,
            vec![
                PermanentSlot {
                    name: "implied".into(),
                    kind: logical("app", "pgoutput"),
                    cluster_type: None
                },
                PermanentSlot {
                    name: "lslot".into(),
                    kind: logical("postgres", "test_decoding"),
                    cluster_type: None
                },
                PermanentSlot {
                    name: "perm1".into(),
                    kind: SlotKind::Physical,
                    cluster_type: None
                },
                PermanentSlot {
                    name: "perm2".into(),
                    kind: SlotKind::Physical,
                    cluster_type: None
                },
                PermanentSlot {
                    name: "standby_only".into(),
                    kind: SlotKind::Physical,
                    cluster_type: Some(ClusterType::Standby)
                },
            ]
        );
        assert_eq!(d.member_slots_ttl, 600);
        assert_eq!(parse("{}").expect("empty").member_slots_ttl, 1800);
        assert_eq!(
            parse(r#"{"member_slots_ttl":0}"#)
                .expect("zero")
                .member_slots_ttl,
            0
        );
        // Patroni's older names, the first one set wins.
        let d = parse(r#"{"permanent_slots":{"a":null},"slots":{"b":null}}"#).expect("alias");
        assert_eq!(d.permanent_slots.len(), 1);
        assert_eq!(d.permanent_slots[0].name, "a");
    }

    #[test]
    fn cluster_type_says_which_kind_of_cluster_keeps_a_physical_slot() {
        let (d, warnings) = DynamicConfig::from_json_strict(
            r#"{"slots":{"standby_only":{"type":"physical","cluster_type":"standby"},
                "primary_only":{"cluster_type":"primary"},
                "lslot":{"type":"logical","database":"postgres","plugin":"test_decoding",
                         "cluster_type":"standby"}}}"#,
        )
        .expect("valid");
        let found: Vec<(&str, Option<ClusterType>)> = d
            .permanent_slots
            .iter()
            .map(|s| (s.name.as_str(), s.cluster_type))
            .collect();
        assert_eq!(
            found,
            [
                ("lslot", None),
                ("primary_only", Some(ClusterType::Primary)),
                ("standby_only", Some(ClusterType::Standby)),
            ]
        );
        expect_test::expect!["slots.lslot.cluster_type: applies to physical slots only (as in Patroni): this logical slot is kept in a regular cluster, and a standby cluster keeps no logical slots"].assert_eq(&warnings.join("\n"));
        let e = parse(r#"{"slots":{"s":{"cluster_type":"replica"},"t":{"cluster_type":1}}}"#)
            .expect_err("invalid");
        expect_test::expect![[r#"
            slots.s.cluster_type: expected primary or standby, found "replica"
            slots.t.cluster_type: expected a string, found the integer 1"#]]
        .assert_eq(&e);
    }

    #[test]
    fn bad_permanent_slots_are_errors_at_their_key() {
        let e = parse(
            r#"{"slots":{"Bad-Name":null,"l":{"type":"logical","database":"postgres"},
                "t":{"type":"magic"},"x":{"typo":1},"n":5},"member_slots_ttl":"soon"}"#,
        )
        .expect_err("invalid");
        expect_test::expect![[r#"
            slots.Bad-Name: invalid replication slot name: 1 to 63 lower-case letters, digits and `_`
            slots.l: a logical slot needs both `database` and `plugin`
            slots.n: expected a mapping (type, database, plugin) or nothing, found the integer 5
            slots.t.type: expected physical or logical, found "magic"
            slots.x.typo: unknown key (a slot takes type, database, plugin, cluster_type)
            member_slots_ttl: expected seconds or a duration such as 30min (units ms, s, min, h, d), found "soon""#]]
        .assert_eq(&e);
    }

    #[test]
    fn ignore_slots_parse_every_field_optional() {
        let d = parse(
            r#"{"ignore_slots":[{"name":"debezium","type":"logical","database":"app","plugin":"pgoutput"},
                {"type":"physical"},{"name":"barman","database":null},{}]}"#,
        )
        .expect("valid");
        assert_eq!(
            d.ignore_slots,
            vec![
                SlotMatcher {
                    name: Some("debezium".into()),
                    slot_type: Some(SlotType::Logical),
                    database: Some("app".into()),
                    plugin: Some("pgoutput".into()),
                },
                SlotMatcher {
                    slot_type: Some(SlotType::Physical),
                    ..SlotMatcher::default()
                },
                SlotMatcher {
                    name: Some("barman".into()),
                    ..SlotMatcher::default()
                },
                SlotMatcher::default(),
            ]
        );
        assert!(parse("{}").expect("empty").ignore_slots.is_empty());
        assert!(
            parse(r#"{"ignore_slots":null}"#)
                .expect("null")
                .ignore_slots
                .is_empty()
        );
    }

    #[test]
    fn bad_ignore_slots_are_errors_at_their_key_even_in_the_dcs() {
        let bad = r#"{"ignore_slots":[{"name":"a","typo":"x"},{"type":"magic"},{"name":5},"barman",
            {"database":""}]}"#;
        let e = parse(bad).expect_err("invalid");
        expect_test::expect![[r#"
            ignore_slots[0].typo: unknown key (an entry takes name, type, database, plugin)
            ignore_slots[1].type: expected physical or logical, found "magic"
            ignore_slots[2].name: expected a string, found the integer 5
            ignore_slots[3]: expected a mapping (name, type, database, plugin), found the string "barman"
            ignore_slots[4].database: empty: leave the key out to match any"#]].assert_eq(&e);
        // Read back from the DCS it is an error too: the value is not adopted.
        let e = crate::DynamicConfig::from_json(bad).expect_err("invalid in the DCS");
        assert!(e.to_string().contains("ignore_slots[0].typo"), "{e}");
        let e = parse(r#"{"ignore_slots":{"name":"a"}}"#).expect_err("not a list");
        expect_test::expect!["ignore_slots: expected a list of mappings (name, type, database, plugin), found a mapping"].assert_eq(&e);
    }
}
