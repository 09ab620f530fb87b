//! The YAML configuration file with `PATRONI_*`/`PGBATON_*` variables. The input is the file's
//! text, then optionally a NUL byte and `NAME=value` lines of environment (so real files serve
//! as seeds: `fuzz/seeds/config_yaml/`); a name is a variable's suffix (`SCOPE`, `ETCD3_HOSTS`,
//! ...), `PGBATON_` when it starts with `+`, else `PATRONI_`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (yaml, env) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b""[..]),
    };
    let (Ok(yaml), Ok(env)) = (std::str::from_utf8(yaml), std::str::from_utf8(env)) else {
        return;
    };
    let env: Vec<(String, String)> = env
        .lines()
        .take(8)
        .filter_map(|line| {
            let (name, value) = line.split_once('=')?;
            Some(match name.strip_prefix('+') {
                Some(suffix) => (format!("PGBATON_{suffix}"), value.to_owned()),
                None => (format!("PATRONI_{name}"), value.to_owned()),
            })
        })
        .collect();
    baton_config::fuzzing::file(yaml, &env);
});
