//! Finds the one bearer token of a request (RFC 6750 §2.1), or says why there is none.
//!
//! Exactly one location is accepted: a single `Authorization: Bearer <token>` header line
//! (scheme case-insensitive). A second `Authorization` line, or an `access_token` query
//! parameter (RFC 6750 §2.3) next to or instead of the header, is refused: two credentials can
//! be judged differently by two readers (OKTA.md §0.5).

use http::HeaderMap;
use http::header::AUTHORIZATION;

use super::validate::Reason;

/// Why no usable bearer token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    /// No `Authorization: Bearer` header (another scheme counts as none): 401.
    Missing,
    /// Several credentials, or a token outside the `Authorization` header: 400.
    Misplaced,
    /// A token is there but unusable: 401 `invalid_token`.
    Invalid(Reason),
}

/// Extracts the bearer token from the headers; `query` is the raw query string.
///
/// # Errors
///
/// A [`BearerError`] saying which refusal applies.
pub fn extract<'a>(
    headers: &'a HeaderMap,
    query: Option<&str>,
    max_bytes: usize,
) -> Result<&'a str, BearerError> {
    jws_text(locate(headers, query, max_bytes)?)
}

/// Finds the token's bytes: every check of [`extract`] except the one on its characters,
/// which [`jws_text`] makes (the verified-token cache is looked up in between).
///
/// # Errors
///
/// A [`BearerError`] saying which refusal applies.
pub fn locate<'a>(
    headers: &'a HeaderMap,
    query: Option<&str>,
    max_bytes: usize,
) -> Result<&'a [u8], BearerError> {
    if query.is_some_and(has_access_token_param) {
        return Err(BearerError::Misplaced);
    }
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Err(BearerError::Missing),
        (Some(v), None) => v.as_bytes(),
        (Some(_), Some(_)) => return Err(BearerError::Misplaced),
    };
    let Some((scheme, rest)) = split_scheme(value) else {
        return Err(BearerError::Missing);
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(BearerError::Missing);
    }
    if rest.len() > max_bytes {
        return Err(BearerError::Invalid(Reason::TooLarge));
    }
    if rest.is_empty() {
        return Err(BearerError::Invalid(Reason::Malformed));
    }
    Ok(rest)
}

/// The token as text, if it is made only of the characters a JWS compact serialisation uses
/// (token68 as base64url and dots).
///
/// # Errors
///
/// `Invalid(Malformed)` for any other byte.
pub fn jws_text(token: &[u8]) -> Result<&str, BearerError> {
    if !all_jws_bytes(token) {
        return Err(BearerError::Invalid(Reason::Malformed));
    }
    // Checked to be ASCII just above.
    std::str::from_utf8(token).map_err(|_| BearerError::Invalid(Reason::Malformed))
}

/// Whether every byte is one a JWS compact serialisation uses: base64url and `.`.
///
/// This runs on every byte of every token, so it is written without an early exit and with
/// arithmetic instead of a chain of comparisons, which the compiler turns into vector code (a
/// short-circuiting `all` over a byte table still showed at ~2 % of a load profile).
fn all_jws_bytes(bytes: &[u8]) -> bool {
    bytes.iter().fold(true, |ok, &b| {
        let letter = (b | 0x20).wrapping_sub(b'a') < 26;
        let digit = b.wrapping_sub(b'0') < 10;
        ok & (letter | digit | (b == b'-') | (b == b'_') | (b == b'.'))
    })
}

/// `Bearer <token>`: the scheme, one space, the rest.
fn split_scheme(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let space = value.iter().position(|&b| b == b' ')?;
    Some((&value[..space], &value[space + 1..]))
}

fn has_access_token_param(query: &str) -> bool {
    form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == "access_token")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_token_byte_check_accepts_exactly_base64url_and_dots() {
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
            assert_eq!(all_jws_bytes(&[b]), expected, "byte {b:#04x}");
            assert_eq!(all_jws_bytes(&[b'a', b, b'.']), expected, "byte {b:#04x}");
        }
        assert!(all_jws_bytes(b""));
    }

    #[test]
    fn one_bearer_header_is_accepted_whatever_the_scheme_case() {
        for v in ["Bearer a.b.c", "bearer a.b.c", "BEARER a.b.c"] {
            assert_eq!(extract(&headers(&[v]), None, 100), Ok("a.b.c"), "{v}");
        }
    }

    #[test]
    fn every_other_shape_is_refused_with_its_reason() {
        use BearerError::*;
        let cases: [(&[&str], Option<&str>, BearerError); 11] = [
            (&[], None, Missing),
            (&["Basic dXNlcjpwYXNz"], None, Missing),
            (&["Bearer"], None, Missing),
            (&["Bearer "], None, Invalid(Reason::Malformed)),
            (&["Bearer  a.b.c"], None, Invalid(Reason::Malformed)),
            (&["Bearer a.b.c "], None, Invalid(Reason::Malformed)),
            (&["Bearer a.b.c=="], None, Invalid(Reason::Malformed)),
            (&["Bearer a.b.c", "Bearer d.e.f"], None, Misplaced),
            (&["Bearer a.b.c"], Some("x=1&access_token=d.e.f"), Misplaced),
            (&[], Some("access_token=d.e.f"), Misplaced),
            (
                &["Bearer 0123456789.0123456789"],
                None,
                Invalid(Reason::TooLarge),
            ),
        ];
        for (values, query, want) in cases {
            assert_eq!(
                extract(&headers(values), query, 20),
                Err(want),
                "{values:?} {query:?}"
            );
        }
    }
}
