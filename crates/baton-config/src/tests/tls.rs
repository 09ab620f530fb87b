//! The `restapi` TLS and access keys, the `ctl` section and etcd TLS: what they read into the
//! configuration, and the errors that name their key.

use expect_test::expect;

use super::{BASE, check, check_env, load};
use crate::{AllowEntry, VerifyClient};

fn with_restapi(extra: &str) -> String {
    BASE.replacen(
        "  connect_address: 127.0.0.1:8008\n",
        &format!("  connect_address: 127.0.0.1:8008\n{extra}"),
        1,
    )
}

fn with_etcd(extra: &str) -> String {
    BASE.replace(
        "  host: 127.0.0.1:2379\n",
        &format!("  host: 127.0.0.1:2379\n{extra}"),
    )
}

#[test]
fn a_hardened_file_reads_every_tls_and_access_key() {
    let yaml = with_etcd(
        "  protocol: https\n  cacert: /etc/pgbaton/etcd-ca.pem\n  cert: /etc/pgbaton/etcd.pem\n  \
         key: /etc/pgbaton/etcd.key\n  key_password: k\n  username: baton\n  password: pw\n",
    )
    .replacen(
        "  connect_address: 127.0.0.1:8008\n",
        "  connect_address: 127.0.0.1:8008\n  certfile: /etc/pgbaton/api.pem\n  \
         keyfile: /etc/pgbaton/api.key\n  keyfile_password: secret\n  cafile: /etc/pgbaton/ca.pem\n  \
         ciphers: 'ECDHE+AESGCM:!aRSA'\n  verify_client: optional\n  \
         allowlist: [10.0.0.0/24, 127.0.0.1, '::1', db1.example.com]\n  \
         allowlist_include_members: true\n  http_extra_headers: {X-Frame-Options: SAMEORIGIN}\n  \
         https_extra_headers: {Strict-Transport-Security: max-age=31536000}\n",
        1,
    ) + "ctl:\n  insecure: false\n  cacert: /etc/pgbaton/ca.pem\n  certfile: /etc/pgbaton/cli.pem\n  \
         keyfile: /etc/pgbaton/cli.key\n  authentication: {username: admin, password: x}\n";
    let loaded = load(&yaml);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    let tls = c.restapi.tls.as_ref().expect("tls");
    assert_eq!(tls.verify_client, VerifyClient::Optional);
    assert_eq!(
        tls.ciphers.as_ref().map(|(_, l)| l.clone()),
        Some(vec![
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "ECDHE-ECDSA-AES128-GCM-SHA256"
        ])
    );
    assert_eq!(c.restapi.scheme(), "https");
    assert_eq!(
        c.restapi.allowlist,
        vec![
            AllowEntry::Network("10.0.0.0".parse().unwrap(), 24),
            AllowEntry::Network("127.0.0.1".parse().unwrap(), 32),
            AllowEntry::Network("::1".parse().unwrap(), 128),
            AllowEntry::Host("db1.example.com".to_owned()),
        ]
    );
    assert!(c.restapi.allowlist_include_members);
    assert_eq!(
        c.restapi.extra_headers,
        vec![
            ("X-Frame-Options".to_owned(), "SAMEORIGIN".to_owned()),
            (
                "Strict-Transport-Security".to_owned(),
                "max-age=31536000".to_owned()
            ),
        ]
    );
    assert_eq!(c.etcd.protocol, "https");
    assert_eq!(c.etcd.key_password.as_deref(), Some("k"));
    // Secrets never show in the debug output.
    let debug = format!("{c:?}");
    for secret in ["secret", "\"pw\"", "\"k\"", "\"x\""] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
    // The client settings: ctl first.
    let client = c.rest_client();
    assert_eq!(client.authentication, Some(("admin".into(), "x".into())));
    assert_eq!(
        client.certfile.as_deref(),
        Some(std::path::Path::new("/etc/pgbaton/cli.pem"))
    );
    assert_eq!(client.keyfile_password, None);
}

#[test]
fn rest_client_settings_fall_back_to_restapi_as_patroni() {
    let c = load(&with_restapi(
        "  certfile: /a.pem\n  keyfile: /a.key\n  keyfile_password: p\n  cafile: /ca.pem\n  \
         authentication: {username: u, password: v}\n",
    ))
    .config;
    let client = c.rest_client();
    assert_eq!(
        client.cacert.as_deref(),
        Some(std::path::Path::new("/ca.pem"))
    );
    assert_eq!(
        client.certfile.as_deref(),
        Some(std::path::Path::new("/a.pem"))
    );
    assert_eq!(
        client.keyfile.as_deref(),
        Some(std::path::Path::new("/a.key"))
    );
    assert_eq!(client.keyfile_password.as_deref(), Some("p"));
    assert_eq!(client.authentication, Some(("u".into(), "v".into())));
    assert!(!client.insecure);
    // Plain HTTP: nothing to present.
    let plain = load(BASE).config.rest_client();
    assert_eq!(plain.certfile, None);
    assert_eq!(load(BASE).config.restapi.scheme(), "http");
}

#[test]
fn tls_and_access_errors_name_their_key() {
    check(
        &with_restapi(
            "  certfile: /a.pem\n  verify_client: sometimes\n  ciphers: 'DHE-RSA-AES256-SHA:MEDIUM'\n  \
             allowlist: [10.0.0.0/33, 'not a host', '']\n  http_extra_headers: {'Bad Name': x, X-Ok: \"a\\nb\"}\n",
        ),
        expect![[r#"
            errors:
            restapi.ciphers: "DHE-RSA-AES256-SHA:MEDIUM" selects no cipher suite pgbaton implements: its TLS library (rustls) offers only ECDHE-ECDSA-AES256-GCM-SHA384, ECDHE-RSA-AES256-GCM-SHA384, ECDHE-ECDSA-CHACHA20-POLY1305, ECDHE-RSA-CHACHA20-POLY1305, ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256 for TLS 1.2 (TLS 1.3 suites are always on)
            restapi.verify_client: expected "none", "optional" or "required", found "sometimes"
            restapi.allowlist[0]: the prefix length of "10.0.0.0/33" must be 0 to 32
            restapi.allowlist[1]: expected an address, a network or a host name, found "not a host"
            restapi.allowlist[2]: expected an address, a network or a host name, found an empty string
            restapi.http_extra_headers."Bad Name": "Bad Name" is not a valid HTTP header name
            restapi.http_extra_headers.X-Ok: an HTTP header value must be printable ASCII on one line
        "#]],
    );
    check(
        &with_restapi("  certfile: /a.pem\n  verify_client: required\n"),
        expect![[r#"
            errors:
            restapi.cafile: required key is missing (verify_client asks for client certificates, and they are checked against the CA certificates in this file)
        "#]],
    );
    check(
        &(BASE.to_owned() + "ctl:\n  keyfile: /k\n  insecure: maybe\n"),
        expect![[r#"
            errors:
            ctl.insecure: expected a boolean, found the string "maybe"
            ctl.keyfile: needs ctl.certfile (the client certificate this key belongs to)
        "#]],
    );
    check(
        &(BASE.to_owned() + "ctl:\n  cafile: /k\n"),
        expect![[r#"
            errors:
            ctl.cafile: unknown key
        "#]],
    );
    check(
        &with_etcd("  protocol: https\n  cert: /c.pem\n"),
        expect![[r#"
            errors:
            etcd3.key: required key is missing (cert is set)
        "#]],
    );
}

#[test]
fn tls_keys_come_from_patroni_variables_too() {
    let yaml = with_etcd("  protocol: https\n");
    check_env(
        &yaml,
        &[
            ("PATRONI_RESTAPI_CERTFILE", "/a.pem"),
            ("PATRONI_RESTAPI_VERIFY_CLIENT", "required"),
            ("PATRONI_RESTAPI_CAFILE", "/ca.pem"),
            ("PATRONI_RESTAPI_ALLOWLIST", "10.0.0.1,10.0.1.0/24"),
            ("PATRONI_RESTAPI_HTTPS_EXTRA_HEADERS", "{X-A: b}"),
            ("PATRONI_ETCD3_CACERT", "/etcd-ca.pem"),
            ("PATRONI_ETCD3_CERT", "/etcd.pem"),
            ("PATRONI_ETCD3_KEY", "/etcd.key"),
            ("PATRONI_CTL_INSECURE", "true"),
            ("PGBATON_CTL_CERTFILE", "/cli.pem"),
        ],
        expect![[r#"
            ok
        "#]],
    );
    check_env(
        &yaml,
        &[("PATRONI_RESTAPI_VERIFY_CLIENT", "required")],
        expect![[r#"
            errors:
            PATRONI_RESTAPI_VERIFY_CLIENT: needs restapi.certfile: without it the REST API serves plain HTTP
        "#]],
    );
    check_env(
        BASE,
        &[("PATRONI_ETCD3_CACERT", "/etcd-ca.pem")],
        expect![[r#"
            errors:
            PATRONI_ETCD3_CACERT: needs protocol: https (the file is only used over TLS)
        "#]],
    );
}
