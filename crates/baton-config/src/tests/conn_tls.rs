//! Issue 11.4: a role's libpq TLS/GSS settings are read, checked and kept in order.

use expect_test::expect;

use super::{BASE, load, no_env};
use crate::load_str;

fn with_roles(superuser: &str, replication: &str) -> String {
    BASE.replace(
        "      password: patroni\n",
        &format!("      password: patroni\n{superuser}"),
    )
    .replace(
        "      password: rep-pass\n",
        &format!("      password: rep-pass\n{replication}"),
    )
}

#[test]
fn tls_settings_are_kept_per_role_in_libpqs_order() {
    let yaml = with_roles(
        "      channel_binding: require\n      sslmode: require\n",
        "      sslrootcert: /etc/ca.pem\n      sslmode: verify-full\n      sslkey: /etc/r.key\n      sslcert: /etc/r.pem\n      sslcrl: /etc/ca.crl\n      gssencmode: require\n",
    );
    let loaded = load(&yaml);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let pg = &loaded.config.postgresql;
    expect![[r#"
        [
            (
                "sslmode",
                "require",
            ),
            (
                "channel_binding",
                "require",
            ),
        ]
    "#]]
    .assert_debug_eq(&pg.superuser.options);
    expect![[r#"
        [
            (
                "sslmode",
                "verify-full",
            ),
            (
                "sslcert",
                "/etc/r.pem",
            ),
            (
                "sslkey",
                "/etc/r.key",
            ),
            (
                "sslrootcert",
                "/etc/ca.pem",
            ),
            (
                "sslcrl",
                "/etc/ca.crl",
            ),
            (
                "gssencmode",
                "require",
            ),
        ]
    "#]]
    .assert_debug_eq(&pg.replication.options);
    assert_eq!(pg.replication.option("sslmode"), Some("verify-full"));
    // Debug shows the file names (no secret) and hides the password.
    let shown = format!("{:?}", pg.replication);
    assert!(
        shown.contains("/etc/r.key") && !shown.contains("rep-pass"),
        "{shown}"
    );
}

#[test]
fn bad_tls_settings_name_their_key() {
    let err = |su: &str, repl: &str| {
        load_str(&with_roles(su, repl), &no_env)
            .expect_err("refused")
            .to_string()
    };
    expect![[r#"postgresql.authentication.superuser.sslmode: expected one of disable, allow, prefer, require, verify-ca, verify-full, found "verify""#]]
        .assert_eq(&err("      sslmode: verify\n", ""));
    expect!["postgresql.authentication.superuser.gssencmode: not supported by pgbaton yet: pgbaton's own connections as this role (tokio-postgres) have no GSSAPI encryption, so they would not be encrypted as asked"]
        .assert_eq(&err("      gssencmode: require\n", ""));
    expect![[r#"postgresql.authentication.replication.channel_binding: expected one of disable, prefer, require, found "yes""#]]
        .assert_eq(&err("", "      channel_binding: yes\n"));
    expect![[r#"postgresql.authentication.replication.sslmode: verify-ca and verify-full need sslrootcert (a CA file, or "system" for the system's roots): pgbaton does not read ~/.postgresql/root.crt"#]]
        .assert_eq(&err("", "      sslmode: verify-ca\n"));
}
