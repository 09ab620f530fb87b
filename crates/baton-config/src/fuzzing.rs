//! The properties the fuzz targets (`fuzz/`, cargo-fuzz, nightly) and this crate's proptest
//! smoke tests (stable, part of `make test`) check on configuration input: the YAML file with
//! `PATRONI_*`/`PGBATON_*` variables, and the dynamic configuration as the DCS `/config` key
//! holds it (anyone with write access to the prefix controls it). Each function panics when a
//! property fails and is otherwise silent.

use crate::{DynamicConfig, is_local_only, load_str};

/// A configuration file with these environment variables: never panics; a refusal names at
/// least one problem, each with a message.
pub fn file(yaml: &str, env: &[(String, String)]) {
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    match load_str(yaml, &lookup) {
        Ok(loaded) => {
            for name in loaded.config.postgresql.parameters.keys() {
                assert!(
                    crate::params::name_problem(name).is_none(),
                    "parameter {name:?} accepted"
                );
            }
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "a refusal without an error");
            assert!(errors.0.iter().all(|e| !e.message.is_empty()));
        }
    }
}

/// A `/config` value: never panics, in either mode; an accepted value never brings in a
/// local-only parameter; `raw` parses back to the same configuration (the timing adjustments
/// are already in it), and the strict parse accepts nothing the lenient one refuses.
pub fn dynamic(text: &str) {
    let lenient = DynamicConfig::from_json(text);
    let strict = DynamicConfig::from_json_strict(text);
    if strict.is_ok() {
        assert!(
            lenient.is_ok(),
            "strict accepts what DCS mode refuses: {text:?}"
        );
    }
    for parsed in [&lenient, &strict] {
        let Ok((d, _)) = parsed else { continue };
        for name in d.parameters.keys() {
            assert!(!is_local_only(name), "{name} taken from /config: {text:?}");
        }
        let again = DynamicConfig::from_json(&d.to_json())
            .unwrap_or_else(|e| panic!("{} (from {text:?}) does not parse: {e}", d.to_json()));
        assert_eq!(again.0, *d, "from {text:?}");
    }
}
