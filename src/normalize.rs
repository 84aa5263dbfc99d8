//! SPEC §3 step 1: normalise the request path once, and refuse what cannot be normalised safely.
//!
//! Reads the request line and framing headers; rewrites the request URI to the normalised path
//! (the query string is kept byte for byte). Routing, authorisation and the upstream all see this
//! one path, so no layer can disagree with another about what was asked for (OKTA.md §0.6).
//!
//! Normalisation follows RFC 3986 §6.2.2: percent-encoded unreserved characters are decoded
//! (so `%2e%2e` becomes `..` *before* dot segments are resolved), other escapes are upper-cased,
//! `.` and `..` segments are resolved, and repeated slashes are merged. Refused outright (400):
//! `%2F` and `%5C` (an upstream would see a different segment structure), `\`, NUL, `;` (path
//! parameters that some servers strip before routing), invalid escapes or UTF-8, and `..` that
//! climbs above the root.

use std::borrow::Cow;
use std::fmt;

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use tower_http::validate_request::{ValidateRequest, ValidateRequestHeaderLayer};

use crate::body::Body;
use crate::reject::Reject;
use crate::snapshot::RequestContext;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPath {
    /// The path does not start with `/`.
    NotAbsolute,
    /// `%2F`: an encoded slash.
    EncodedSlash,
    /// `%5C` or `\`: a backslash, a separator on some servers.
    Backslash,
    /// `%00`: NUL.
    Nul,
    /// `;`: path parameters, which some servers drop before routing.
    Semicolon,
    /// A `%` not followed by two hex digits, or escapes that are not UTF-8.
    BadEncoding,
    /// `..` above the root.
    AboveRoot,
}

impl BadPath {
    /// The fixed `error_description` for this refusal.
    pub fn description(self) -> &'static str {
        match self {
            BadPath::NotAbsolute => "path must start with /",
            BadPath::EncodedSlash => "encoded slash in path",
            BadPath::Backslash => "backslash in path",
            BadPath::Nul => "NUL in path",
            BadPath::Semicolon => "path parameters are not accepted",
            BadPath::BadEncoding => "invalid percent-encoding in path",
            BadPath::AboveRoot => "path climbs above the root",
        }
    }
}

impl fmt::Display for BadPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// Normalises a raw request path (SPEC §3); borrows when it is already normal.
///
/// # Errors
///
/// A [`BadPath`] for every case SPEC §3 refuses with 400.
pub fn path(raw: &str) -> Result<Cow<'_, str>, BadPath> {
    if is_normal(raw.as_bytes()) {
        return Ok(Cow::Borrowed(raw));
    }
    resolved(raw)
}

/// Whether `raw` is normal as it stands: it starts with `/`, holds no byte that is decoded or
/// refused (`%`, `\`, `;`, NUL), and needs no dot-segment or slash resolution. Most requests
/// stop here, without the decoding pass; `false` only means the full normalisation decides.
fn is_normal(raw: &[u8]) -> bool {
    raw.first() == Some(&b'/')
        && !raw.iter().any(|b| matches!(b, b'%' | b'\\' | b';' | 0))
        && !needs_dot_or_slash_resolution(raw)
}

/// The full normalisation behind [`path`].
fn resolved(raw: &str) -> Result<Cow<'_, str>, BadPath> {
    if !raw.starts_with('/') {
        return Err(BadPath::NotAbsolute);
    }
    let decoded = decode_unreserved(raw)?;
    if needs_dot_or_slash_resolution(decoded.as_bytes()) {
        Ok(Cow::Owned(resolve(&decoded)?))
    } else {
        Ok(decoded)
    }
}

/// Decodes `%XX` of unreserved characters and upper-cases the rest; refuses the forbidden bytes.
fn decode_unreserved(raw: &str) -> Result<Cow<'_, str>, BadPath> {
    let bytes = raw.as_bytes();
    for &b in bytes {
        match b {
            b'\\' => return Err(BadPath::Backslash),
            b';' => return Err(BadPath::Semicolon),
            0 => return Err(BadPath::Nul),
            _ => {}
        }
    }
    if !bytes.contains(&b'%') {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = String::with_capacity(raw.len());
    let mut high_bytes = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            out.push(b as char);
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (
            bytes.get(i + 1).and_then(|c| hex(*c)),
            bytes.get(i + 2).and_then(|c| hex(*c)),
        ) else {
            return Err(BadPath::BadEncoding);
        };
        let v = h << 4 | l;
        match v {
            b'/' => return Err(BadPath::EncodedSlash),
            b'\\' => return Err(BadPath::Backslash),
            0 => return Err(BadPath::Nul),
            _ if is_unreserved(v) => out.push(v as char),
            _ => {
                high_bytes |= v >= 0x80;
                out.push('%');
                out.push(HEX_UPPER[usize::from(v >> 4)] as char);
                out.push(HEX_UPPER[usize::from(v & 0xF)] as char);
            }
        }
        i += 3;
    }
    if high_bytes && !escapes_are_utf8(&out) {
        return Err(BadPath::BadEncoding);
    }
    if out == raw {
        return Ok(Cow::Borrowed(raw));
    }
    Ok(Cow::Owned(out))
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Whether the fully decoded path is valid UTF-8 (only called when a byte ≥ 0x80 was escaped).
fn escapes_are_utf8(s: &str) -> bool {
    let bytes = s.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Escapes were validated and upper-cased by `decode_unreserved`.
            let h = hex(bytes[i + 1]).unwrap_or(0);
            let l = hex(bytes[i + 2]).unwrap_or(0);
            decoded.push(h << 4 | l);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    std::str::from_utf8(&decoded).is_ok()
}

/// Whether a path that starts with `/` has a `.` or `..` segment, or an empty one other than
/// the last (a trailing slash is normal).
fn needs_dot_or_slash_resolution(p: &[u8]) -> bool {
    let mut start = 1;
    for (i, &b) in p.iter().enumerate().skip(1) {
        if b == b'/' {
            if matches!(&p[start..i], b"" | b"." | b"..") {
                return true;
            }
            start = i + 1;
        }
    }
    matches!(&p[start..], b"." | b"..")
}

/// RFC 3986 §5.2.4 remove_dot_segments, plus merging of empty segments.
fn resolve(p: &str) -> Result<String, BadPath> {
    let mut stack: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in p[1..].split('/') {
        trailing_slash = false;
        match seg {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                stack.pop().ok_or(BadPath::AboveRoot)?;
                trailing_slash = true;
            }
            s => stack.push(s),
        }
    }
    let mut out = String::with_capacity(p.len());
    for seg in &stack {
        out.push('/');
        out.push_str(seg);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Checks framing and rewrites the URI to the normalised path.
///
/// # Errors
///
/// [`Reject::BadFraming`] or [`Reject::BadPath`].
pub fn request<B>(req: &mut Request<B>) -> Result<(), Reject> {
    check_framing(req)?;
    let uri = req.uri();
    let normal = path(uri.path()).map_err(Reject::BadPath)?;
    if let Cow::Owned(normal) = normal {
        let pq = match uri.query() {
            Some(q) => format!("{normal}?{q}"),
            None => normal,
        };
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(PathAndQuery::try_from(pq).map_err(|_| Reject::Internal)?);
        *req.uri_mut() = Uri::from_parts(parts).map_err(|_| Reject::Internal)?;
    }
    Ok(())
}

/// RFC 9112 §6.3: a message with both `Transfer-Encoding` and `Content-Length`, or several
/// `Content-Length` or `Host` lines, can be read two ways; one of those readings is a smuggled
/// request. hyper already refuses most of these, but the gateway refuses every such message
/// itself rather than depend on one parser's choices. `Transfer-Encoding` must be exactly
/// `chunked`: any other coding (`gzip, chunked`, `identity`, `chunked, chunked`) is one that
/// some upstream would read differently.
fn check_framing<B>(req: &Request<B>) -> Result<(), Reject> {
    // What hyper resolved silently, seen on the raw bytes (see `server::framing`).
    if RequestContext::of(req)
        .and_then(|c| c.conn.as_ref())
        .is_some_and(|c| c.framing.refuses(c.index))
    {
        return Err(Reject::BadFraming);
    }
    // One walk over the few lines a request has, rather than a hashed lookup of each name.
    let (mut te, mut te_chunked, mut cl, mut host) = (0u32, true, 0u32, 0u32);
    for (name, value) in req.headers() {
        if *name == TRANSFER_ENCODING {
            te += 1;
            te_chunked &= value.as_bytes().eq_ignore_ascii_case(b"chunked");
        } else if *name == CONTENT_LENGTH {
            cl += 1;
        } else if *name == HOST {
            host += 1;
        }
    }
    if te > 1 || (te == 1 && (!te_chunked || cl > 0)) || cl > 1 || host > 1 {
        return Err(Reject::BadFraming);
    }
    Ok(())
}

/// The layer: refuses with 400 or passes the request on with its URI normalised.
pub fn layer() -> ValidateRequestHeaderLayer<Normalize> {
    ValidateRequestHeaderLayer::custom(Normalize)
}

/// [`ValidateRequest`] implementation behind [`layer`].
#[derive(Debug, Clone, Copy)]
pub struct Normalize;

impl<B> ValidateRequest<B> for Normalize {
    type ResponseBody = Body;

    fn validate(&mut self, req: &mut Request<B>) -> Result<(), Response<Body>> {
        request(req).map_err(Reject::into_response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/api/orders",
            "/api/orders/",
            "/a/b.c/~d_e-f",
            "/a/%20b",
            "/.well-known/x",
        ] {
            assert!(matches!(path(p), Ok(Cow::Borrowed(b)) if b == p), "{p}");
        }
    }

    #[test]
    fn the_quick_check_agrees_with_the_full_normalisation() {
        // Every path of up to six bytes over an alphabet with each byte that matters.
        let alphabet = [b'/', b'a', b'.', b'%', b'2', b'e', b';', b'\\', 0];
        let mut paths: Vec<Vec<u8>> = vec![vec![]];
        let mut checked = 0;
        for _ in 0..6 {
            paths = paths
                .iter()
                .flat_map(|p| alphabet.iter().map(move |&b| [p.as_slice(), &[b]].concat()))
                .collect();
            for p in &paths {
                let p = std::str::from_utf8(p).unwrap();
                let full = resolved(p);
                // The segment rule against the resolution itself, where no byte is decoded.
                if p.starts_with('/') && !p.contains(['%', '\\', ';', '\0']) {
                    let unchanged = resolve(p).as_deref() == Ok(p);
                    assert_eq!(
                        needs_dot_or_slash_resolution(p.as_bytes()),
                        !unchanged,
                        "{p:?}"
                    );
                }
                if is_normal(p.as_bytes()) {
                    assert!(matches!(full, Ok(Cow::Borrowed(b)) if b == p), "{p:?}");
                } else if !p.contains('%') {
                    // Without escapes, only a path the full normalisation changes or refuses
                    // may take the long way.
                    assert!(!matches!(full, Ok(Cow::Borrowed(_))), "{p:?}");
                }
                checked += 1;
            }
        }
        assert_eq!(checked, (1..=6).map(|n| 9usize.pow(n)).sum::<usize>());
    }

    #[test]
    fn paths_are_normalised_as_rfc_3986_says() {
        let table = [
            ("//api///orders", "/api/orders"),
            ("/api/./orders", "/api/orders"),
            ("/api/x/../orders", "/api/orders"),
            ("/api/orders/.", "/api/orders/"),
            ("/api/orders/..", "/api/"),
            ("/a/..", "/"),
            ("/a/../", "/"),
            ("/.", "/"),
            ("//", "/"),
            // Encoded unreserved characters are decoded, so encoded dots are dot segments.
            ("/%61pi/%6Frders", "/api/orders"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/api/%2E%2E/admin", "/admin"),
            ("/api/.%2e/admin", "/admin"),
            ("/api/%2e/orders", "/api/orders"),
            ("/%7Euser", "/~user"),
            // Other escapes stay escaped, with upper-case hex.
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/caf%c3%a9", "/caf%C3%A9"),
        ];
        for (raw, want) in table {
            assert_eq!(path(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn dangerous_paths_are_refused() {
        let table = [
            ("api", BadPath::NotAbsolute),
            ("*", BadPath::NotAbsolute),
            ("/api%2Forders", BadPath::EncodedSlash),
            ("/api%2forders", BadPath::EncodedSlash),
            ("/api%5Corders", BadPath::Backslash),
            ("/api%5corders", BadPath::Backslash),
            ("/api\\orders", BadPath::Backslash),
            ("/api%00", BadPath::Nul),
            ("/api\0", BadPath::Nul),
            ("/api/orders;jsessionid=1", BadPath::Semicolon),
            ("/api%", BadPath::BadEncoding),
            ("/api%2", BadPath::BadEncoding),
            ("/api%zz", BadPath::BadEncoding),
            ("/api%c3%28", BadPath::BadEncoding),
            ("/..", BadPath::AboveRoot),
            ("/../etc/passwd", BadPath::AboveRoot),
            ("/a/../..", BadPath::AboveRoot),
            ("/%2e%2e/etc", BadPath::AboveRoot),
            ("/a/%2E%2E/%2e%2e/b", BadPath::AboveRoot),
        ];
        for (raw, want) in table {
            assert_eq!(path(raw), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn request_keeps_the_query_string_byte_for_byte() {
        let mut req = Request::get("http://h/a//b/../c?x=%2F..&y=1")
            .body(())
            .unwrap();
        request(&mut req).unwrap();
        assert_eq!(req.uri().path(), "/a/c");
        assert_eq!(req.uri().query(), Some("x=%2F..&y=1"));
        assert_eq!(req.uri().authority().unwrap(), "h");
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        fn post(lines: &[(&str, &str)]) -> Request<()> {
            lines
                .iter()
                .fold(Request::post("/x"), |r, (name, value)| {
                    r.header(*name, *value)
                })
                .body(())
                .unwrap()
        }
        let refused: &[&[(&str, &str)]] = &[
            &[("content-length", "5"), ("transfer-encoding", "chunked")],
            &[("transfer-encoding", "chunked"), ("content-length", "5")],
            &[("content-length", "5"), ("content-length", "5")],
            &[("host", "a"), ("host", "b")],
            &[
                ("transfer-encoding", "chunked"),
                ("x-between", "1"),
                ("transfer-encoding", "chunked"),
            ],
            &[("transfer-encoding", "gzip, chunked")],
            &[("transfer-encoding", "chunked, chunked")],
            &[("transfer-encoding", "identity")],
            &[("transfer-encoding", "chunked;x=1")],
        ];
        for lines in refused {
            assert_eq!(
                check_framing(&post(lines)),
                Err(Reject::BadFraming),
                "{lines:?}"
            );
        }
        let fine: &[&[(&str, &str)]] = &[
            &[
                ("host", "a"),
                ("content-length", "5"),
                ("x-other", "1"),
                ("x-other", "2"),
            ],
            &[("transfer-encoding", "Chunked")],
        ];
        for lines in fine {
            assert_eq!(check_framing(&post(lines)), Ok(()), "{lines:?}");
        }
    }
}
