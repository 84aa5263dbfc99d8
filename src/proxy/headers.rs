//! Header hygiene on the way to the upstream and back (SPEC §3 "Forwarding").
//!
//! Order matters and is fixed here: hop-by-hop headers and every header the client named in
//! `Connection` go first, then the bearer token (unless `forward_authorization`), and only then
//! are the gateway's own headers written. A client that lists `X-Forwarded-For` in `Connection`
//! therefore removes its own copy, never the gateway's.

use http::HeaderMap;

use crate::auth::validate::Identity;
use crate::config::Forward;
use http::header::{AUTHORIZATION, CONNECTION, Entry, HOST, HeaderName, HeaderValue, UPGRADE};

/// Hop-by-hop headers of RFC 9110 §7.6.1, plus the non-standard ones proxies still meet.
///
/// A `match` on the name rather than a list of `HeaderName`s: this runs for every header of
/// every request and response, and a `const` list is built and dropped at each use.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes every header named in `Connection`, then the hop-by-hop headers themselves.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    strip(headers, |_| false);
}

/// Removes the headers `Connection` names, the hop-by-hop headers and those `also` picks
/// (`also` sees every name present, before the other tests); returns what `Connection` said.
fn strip(headers: &mut HeaderMap, mut also: impl FnMut(&HeaderName) -> bool) -> Nominated {
    let nominated = Nominated::of(headers);
    remove_where(headers, |name| {
        also(name) || is_hop_by_hop(name) || nominated.names.contains(name)
    });
    nominated
}

/// What a message's `Connection` header says, read before the header goes.
struct Nominated {
    /// The header names it lists (none, mostly: then nothing is allocated).
    names: Vec<HeaderName>,
    /// The `Upgrade` header's value, if `Connection` lists `upgrade`.
    upgrade: Option<HeaderValue>,
}

impl Nominated {
    fn of(headers: &HeaderMap) -> Nominated {
        let connection = headers.get_all(CONNECTION);
        let mut upgrade = false;
        // Nearly every message has no `Connection` header, or one with a single usual option
        // (an upstream's `keep-alive`): answered without splitting and trimming the value.
        let names = if connection.iter().all(|v| names_no_header(v.as_bytes())) {
            upgrade = connection
                .iter()
                .any(|v| v.as_bytes().eq_ignore_ascii_case(b"upgrade"));
            Vec::new()
        } else {
            connection
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|t| {
                    upgrade |= t.eq_ignore_ascii_case("upgrade");
                    !names_no_header(t.as_bytes())
                })
                .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
                .collect()
        };
        Nominated {
            names,
            upgrade: upgrade.then(|| headers.get(UPGRADE).cloned()).flatten(),
        }
    }
}

/// Whether a `Connection` option is one of the usual ones, which name no other header
/// (`keep-alive` and `upgrade` go anyway); skipping them saves making a header name for every
/// upstream response.
fn names_no_header(option: &[u8]) -> bool {
    [&b"keep-alive"[..], b"close", b"upgrade"]
        .iter()
        .any(|o| option.eq_ignore_ascii_case(o))
}

/// Removes every header whose name `doomed` picks, looking at each name present: a request
/// has a handful of headers and the lists of names to remove are longer, so this costs a
/// fraction of removing each listed name (every removal hashes its name). One removal at a
/// time, walking again only when a walk found more than one: mostly there is none or one (a
/// request's `Authorization`, a response's `Connection`), and no list of names is allocated.
/// `doomed` sees every name present at least once.
fn remove_where(headers: &mut HeaderMap, mut doomed: impl FnMut(&HeaderName) -> bool) {
    loop {
        let mut found = headers.keys().filter(|name| doomed(name));
        let Some(name) = found.next().cloned() else {
            return;
        };
        let more = found.next().is_some();
        headers.remove(name);
        if !more {
            return;
        }
    }
}

/// Whether a request asks for a WebSocket upgrade (RFC 6455 §4.1): an HTTP/1.1 `GET` with
/// `Connection: upgrade` and `Upgrade: websocket` (`upgrade` is what [`prepare_request`]
/// returned for it). No other protocol is passed through.
pub fn is_websocket_upgrade<B>(req: &http::Request<B>, upgrade: Option<&HeaderValue>) -> bool {
    req.method() == http::Method::GET
        && req.version() == http::Version::HTTP_11
        && upgrade.is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Puts back the two headers that carry a WebSocket upgrade across this hop, after
/// [`remove_hop_by_hop`] removed them with everything else.
pub fn restore_websocket_upgrade(headers: &mut HeaderMap) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
}

/// What the gateway knows about the client connection.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The client's IP address as seen on the socket, written out (once per connection).
    pub client_ip: &'a HeaderValue,
    /// Whether the client spoke TLS to the gateway.
    pub tls: bool,
    /// `Host` (HTTP/1) or `:authority` (HTTP/2) of the request, if any.
    pub host: Option<&'a HeaderValue>,
    /// Whether `host` is the request's own `Host` header (which then stays where it is).
    pub host_sent: bool,
}

/// Rewrites request headers for the upstream: hygiene first, then the gateway's own headers,
/// then the verified identity (when the route is protected). Returns the protocol the client
/// asked to upgrade to (its `Upgrade` header, if `Connection` lists `upgrade`), which hygiene
/// removed with the other hop-by-hop headers.
pub fn prepare_request(
    headers: &mut HeaderMap,
    origin: Origin<'_>,
    forward: &Forward,
    identity: Option<&Identity>,
) -> Option<HeaderValue> {
    let host = origin.host.cloned();
    // Whether the client sent `X-Forwarded-For` (mostly not: then it is not looked up again).
    let mut forwarded_for = false;
    let Nominated {
        names: nominated,
        upgrade,
    } = strip(headers, |name| {
        forwarded_for |= name == X_FORWARDED_FOR;
        // Identity headers are the gateway's to write: whatever a client sent under those
        // names (any case, `_` or `-`) goes, on public routes too.
        forward.strip_headers.contains(name)
            || (!forward.forward_authorization && name == AUTHORIZATION)
    });
    // Append to the chain the client sent, as nginx's $proxy_add_x_forwarded_for does: the
    // right-most entry is the one this gateway vouches for.
    let chain: Vec<&str> = if forwarded_for {
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    } else {
        Vec::new()
    };
    if chain.is_empty() {
        headers.insert(X_FORWARDED_FOR, origin.client_ip.clone());
    } else {
        let ip = origin.client_ip.to_str().unwrap_or_default();
        if let Ok(v) = HeaderValue::from_str(&format!("{}, {ip}", chain.join(", "))) {
            headers.insert(X_FORWARDED_FOR, v);
        }
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if origin.tls { "https" } else { "http" }),
    );
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST, h.clone());
            // HTTP/2 clients send `:authority` instead of `Host`; an HTTP/1.1 upstream needs it.
            // A `Host` the client sent is this same value (more than one was refused as
            // ambiguous framing), so it stays as it is, unless the client listed it in
            // `Connection`.
            let kept = origin.host_sent && !nominated.contains(&HOST);
            if !kept && let Entry::Vacant(slot) = headers.entry(HOST) {
                slot.insert(h);
            }
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
    if let Some(identity) = identity {
        for (claim, name) in &forward.claims_to_headers {
            if let Some(value) = identity.claims.get(claim) {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
    upgrade
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING};

    static CLIENT: HeaderValue = HeaderValue::from_static("10.1.2.3");

    fn origin(host: Option<&HeaderValue>) -> Origin<'_> {
        Origin {
            client_ip: &CLIENT,
            tls: false,
            host,
            host_sent: false,
        }
    }

    #[test]
    fn connection_nominated_and_hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret , x-other"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert(TRAILER, HeaderValue::from_static("x-sum"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(PROXY_AUTHENTICATE, HeaderValue::from_static("Basic"));
        h.insert(PROXY_AUTHORIZATION, HeaderValue::from_static("Basic eDp5"));
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    fn forward(authorization: bool) -> Forward {
        Forward {
            forward_authorization: authorization,
            ..Forward::default()
        }
    }

    #[test]
    fn forwarding_headers_are_written_after_removal() {
        let host = HeaderValue::from_static("api.example");
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("X-Forwarded-For, X-Forwarded-Proto"),
        );
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(X_FORWARDED_HOST, HeaderValue::from_static("evil.example"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        prepare_request(&mut h, origin(Some(&host)), &forward(false), None);
        assert_eq!(h[X_FORWARDED_FOR], "10.1.2.3");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "api.example");
        assert_eq!(h[HOST], "api.example");
        assert!(!h.contains_key(AUTHORIZATION));
    }

    #[test]
    fn the_clients_host_stays_even_when_it_lists_it_in_connection() {
        let host = HeaderValue::from_static("api.example");
        for connection in [None, Some("host"), Some("keep-alive, Host")] {
            let mut h = HeaderMap::new();
            h.insert(HOST, host.clone());
            if let Some(c) = connection {
                h.insert(CONNECTION, HeaderValue::from_static(c));
            }
            let origin = Origin {
                host_sent: true,
                ..origin(Some(&host))
            };
            prepare_request(&mut h, origin, &forward(false), None);
            assert_eq!(h.get_all(HOST).iter().count(), 1, "{connection:?}: {h:?}");
            assert_eq!(h[HOST], "api.example", "{connection:?}");
            assert!(!h.contains_key(CONNECTION));
        }
    }

    #[test]
    fn the_upgrade_asked_for_is_returned_only_when_connection_lists_it() {
        let cases = [
            (None, None),
            (Some("upgrade"), Some("websocket")),
            (Some("Upgrade"), Some("websocket")),
            (Some("keep-alive, Upgrade"), Some("websocket")),
            (Some("x-other , upgrade"), Some("websocket")),
            (Some("keep-alive"), None),
            (Some("x-upgrade"), None),
        ];
        for (connection, want) in cases {
            let mut h = HeaderMap::new();
            h.insert(UPGRADE, HeaderValue::from_static("websocket"));
            if let Some(c) = connection {
                h.insert(CONNECTION, HeaderValue::from_static(c));
            }
            let upgrade = prepare_request(&mut h, origin(None), &forward(false), None);
            assert_eq!(
                upgrade.as_ref().map(|v| v.as_bytes()),
                want.map(str::as_bytes),
                "{connection:?}"
            );
            assert!(
                !h.contains_key(UPGRADE) && !h.contains_key(CONNECTION),
                "{h:?}"
            );
        }
    }

    #[test]
    fn forwarded_for_is_appended_to_the_clients_chain() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_static("2.2.2.2, 3.3.3.3"),
        );
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        prepare_request(&mut h, origin(None), &forward(true), None);
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3");
        assert_eq!(h[AUTHORIZATION], "Bearer x");
        assert!(!h.contains_key(X_FORWARDED_HOST));
    }
}
