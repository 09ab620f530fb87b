//! The YAML configuration file with `PATRONI_*`/`PGBATON_*` variables.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    yaml: String,
    env: Vec<(u8, String)>,
}

const SUFFIXES: &[&str] = &[
    "NAME", "SCOPE", "NAMESPACE", "RESTAPI_LISTEN", "RESTAPI_CONNECT_ADDRESS", "RESTAPI_ALLOWLIST",
    "RESTAPI_HTTP_EXTRA_HEADERS", "RESTAPI_VERIFY_CLIENT", "RESTAPI_PASSWORD", "CTL_INSECURE",
    "POSTGRESQL_LISTEN", "POSTGRESQL_DATA_DIR", "ETCD3_HOSTS", "ETCD3_HOST", "ETCD3_PROTOCOL",
    "ETCD_HOSTS", "ETCD3_USERNAME",
];

fuzz_target!(|input: Input| {
    let env: Vec<(String, String)> = input
        .env
        .into_iter()
        .take(6)
        .map(|(i, v)| {
            let prefix = if i & 0x80 == 0 { "PATRONI_" } else { "PGBATON_" };
            let suffix = SUFFIXES[usize::from(i & 0x7f) % SUFFIXES.len()];
            (format!("{prefix}{suffix}"), v)
        })
        .collect();
    baton_config::fuzzing::file(&input.yaml, &env);
});
