//! HTTP Basic authentication for the unsafe endpoints, as Patroni's `check_auth_header`: the
//! header must be exactly `Basic <base64("user:password")>`; failures answer 401 with
//! `WWW-Authenticate: Basic realm="Patroni"` and a plain-text reason.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use crate::handlers::text_response;

/// `None` when no credentials are configured or the request carries the right ones; otherwise
/// the 401 response to send, and its reason.
pub(crate) fn check_basic_auth(
    auth: Option<&(String, String)>,
    headers: &HeaderMap,
) -> Option<(Response, &'static str)> {
    let (user, password) = auth?;
    let reason = match headers.get(header::AUTHORIZATION) {
        None => "no auth header received",
        Some(value) => {
            let expected = base64_encode(format!("{user}:{password}").as_bytes());
            let given = value.as_bytes().strip_prefix(b"Basic ");
            match given {
                Some(given) if constant_time_eq(given, expected.as_bytes()) => return None,
                _ => "not authenticated",
            }
        }
    };
    let mut response = text_response(StatusCode::UNAUTHORIZED, reason);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Patroni\""),
    );
    Some((response, reason))
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Compares without an early exit on the first differing byte (`hmac.compare_digest`).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(auth: Option<(&str, &str)>, header: Option<&str>) -> String {
        let auth = auth.map(|(u, p)| (u.to_owned(), p.to_owned()));
        let mut headers = HeaderMap::new();
        if let Some(h) = header {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(h).unwrap());
        }
        match check_basic_auth(auth.as_ref(), &headers) {
            None => "ok".to_owned(),
            Some((resp, _)) => {
                let www = resp
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .map(|v| v.to_str().unwrap().to_owned());
                let ctype = resp
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap().to_owned());
                let body = futures_body(resp);
                format!("{body:?} www-authenticate={www:?} content-type={ctype:?}")
            }
        }
    }

    fn futures_body(resp: Response) -> String {
        let status = resp.status();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt.block_on(async {
            use http_body_util::BodyExt;
            resp.into_body().collect().await.unwrap().to_bytes()
        });
        format!("{} {}", status.as_u16(), String::from_utf8_lossy(&bytes))
    }

    #[test]
    fn basic_auth() {
        // "admin:s3cret" → YWRtaW46czNjcmV0
        assert_eq!(check(None, None), "ok");
        assert_eq!(check(None, Some("Basic garbage")), "ok");
        assert_eq!(
            check(Some(("admin", "s3cret")), Some("Basic YWRtaW46czNjcmV0")),
            "ok"
        );
        expect_test::expect![[r#"
            "401 no auth header received" www-authenticate=Some("Basic realm=\"Patroni\"") content-type=Some("text/html")"#]]
        .assert_eq(&check(Some(("admin", "s3cret")), None));
        expect_test::expect![[r#"
            "401 not authenticated" www-authenticate=Some("Basic realm=\"Patroni\"") content-type=Some("text/html")"#]]
        .assert_eq(&check(Some(("admin", "s3cret")), Some("Basic YWRtaW46d3Jvbmc=")));
        assert_eq!(
            check(Some(("admin", "s3cret")), Some("Bearer YWRtaW46czNjcmV0")),
            check(Some(("admin", "s3cret")), Some("x"))
        );
        assert!(
            check(Some(("admin", "s3cret")), Some("basic YWRtaW46czNjcmV0"))
                .contains("not authenticated")
        );
        assert!(
            check(Some(("admin", "s3cret")), Some("Basic YWRtaW46czNjcmV0 "))
                .contains("not authenticated")
        );
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64_encode(plain.as_bytes()), encoded, "{plain:?}");
        }
    }
}
