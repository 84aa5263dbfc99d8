//! Raw TOML → [`Config`], collecting every problem instead of stopping at the first.
//!
//! Each check pushes a [`ConfigError`] pointing at the offending value and carries on with a
//! placeholder, so `jwtgate check` shows the operator the whole list in one run. Only a TOML
//! syntax or type error stops early, because serde cannot go past it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::HeaderName;
use http::uri::Scheme;
use http::{Method, Uri};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::raw::{
    List, RawConfig, RawDemo, RawForward, RawLimit, RawOkta, RawRateLimits, RawRoute, RawServer,
    RawUpstream, Text,
};
use super::{
    Access, Algorithm, Backend, By, Config, ConfigError, ConfigErrors, Demo, Forward, Limit,
    Location, Okta, RateLimits, RedisBackend, Route, Server, Target, TlsFiles, Upstream,
};

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
const MAX_LEEWAY: Duration = Duration::from_secs(300);
const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(15 * 60);
const DEFAULT_REFETCH_COOLDOWN: Duration = Duration::from_secs(30);
const DEFAULT_MAX_TOKEN_BYTES: usize = 8192;
const MAX_TOKEN_BYTES_RANGE: std::ops::RangeInclusive<i64> = 512..=65536;
const DEFAULT_TOKEN_CACHE_SIZE: usize = 10_000;
const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);
const DEFAULT_REDIS_PREFIX: &str = "jwtgate:";

/// Headers the gateway owns or that define the message itself: `claims_to_headers` may not
/// name them, or a claim could rewrite framing, routing or the forwarding chain.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "authorization",
    "cookie",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

pub(super) fn parse(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let mut v = Validator {
        file,
        text,
        errors: Vec::new(),
    };
    let table = match DeTable::parse(text) {
        Ok(table) => table,
        Err(e) => {
            v.push_toml(&e, "");
            return Err(v.into_errors());
        }
    };
    let mut unknown: Vec<Vec<Segment>> = Vec::new();
    let deserializer = toml::de::Deserializer::from(table.clone());
    let raw: RawConfig = match serde_ignored::deserialize(deserializer, |path| {
        unknown.push(segments(&path));
    }) {
        Ok(raw) => raw,
        Err(e) => {
            let key = e
                .span()
                .map(|s| display_path(&key_at(&table, s.start)))
                .unwrap_or_default();
            v.push_toml(&e, &key);
            return Err(v.into_errors());
        }
    };
    for path in unknown {
        let span = locate(&table, &path);
        v.push(span, &display_path(&path), "unknown key");
    }
    let config = v.config(raw);
    if v.errors.is_empty() {
        Ok(config)
    } else {
        Err(v.into_errors())
    }
}

struct Validator<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn into_errors(mut self) -> ConfigErrors {
        self.errors
            .sort_by_key(|e| e.location.position.unwrap_or((usize::MAX, 0)));
        ConfigErrors(self.errors)
    }

    fn location(&self, span: Option<Range<usize>>) -> Location {
        Location {
            file: self.file.to_path_buf(),
            position: span.map(|s| line_column(self.text, s.start)),
        }
    }

    fn push(&mut self, span: Option<Range<usize>>, key: &str, reason: impl Into<String>) {
        let location = self.location(span);
        self.errors.push(ConfigError {
            location,
            key: key.to_owned(),
            reason: reason.into(),
        });
    }

    fn push_toml(&mut self, e: &toml::de::Error, key: &str) {
        // The message of a TOML error names the problem ("invalid type: string "x", expected
        // i64"); its first line is enough once we add our own position.
        let reason = e.message().lines().next().unwrap_or("invalid TOML").trim();
        self.push(e.span(), key, reason.to_owned());
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let server = match raw.server {
            Some(s) => self.server(s),
            None => {
                self.push(Some(0..0), "server", "missing table [server]");
                placeholder_server()
            }
        };
        let upstreams = self.upstreams(raw.upstreams);
        let routes = self.routes(raw.routes, &upstreams);
        let any_protected = routes.iter().any(|r| r.access != Access::Public);
        let okta = match raw.okta {
            Some(o) => Some(self.okta(o)),
            None if any_protected => {
                self.push(
                    Some(0..0),
                    "okta",
                    "missing table [okta]: protected routes need an issuer",
                );
                None
            }
            None => None,
        };
        let rate_limits = raw
            .rate_limits
            .map(|r| self.rate_limits(r))
            .unwrap_or_default();
        let forward = raw.forward.map(|f| self.forward(f)).unwrap_or_default();
        let demo = raw.demo.map(|d| self.demo(d));
        Config {
            server,
            okta,
            upstreams,
            routes,
            rate_limits,
            forward,
            demo,
        }
    }

    // --- [server] ---

    fn server(&mut self, raw: Spanned<RawServer>) -> Server {
        let span = raw.span();
        let raw = raw.into_inner();
        let listen = match &raw.listen {
            Some(l) => self.socket_addr("server.listen", l),
            None => {
                self.push(Some(span), "server.listen", "missing required key");
                None
            }
        };
        let admin_listen = raw
            .admin_listen
            .as_ref()
            .and_then(|a| self.socket_addr("server.admin_listen", a));
        if let (Some(l), Some(a), Some(raw_a)) = (listen, admin_listen, &raw.admin_listen)
            && l == a
            && l.port() != 0
        {
            self.push(
                Some(raw_a.span()),
                "server.admin_listen",
                "must differ from server.listen",
            );
        }
        let workers = raw.workers.as_ref().and_then(|w| {
            let n = *w.get_ref();
            match usize::try_from(n).ok().filter(|n| (1..=1024).contains(n)) {
                Some(n) => NonZeroUsize::new(n),
                None => {
                    self.push(
                        Some(w.span()),
                        "server.workers",
                        format!("must be between 1 and 1024, got {n}"),
                    );
                    None
                }
            }
        });
        let tls = match (&raw.tls_cert, &raw.tls_key) {
            (Some(cert), Some(key)) => {
                let origin = self.location(Some(cert.span()));
                let cert = self.file_path("server.tls_cert", cert);
                let key = self.file_path("server.tls_key", key);
                Some(TlsFiles { cert, key, origin })
            }
            (Some(cert), None) => {
                self.push(
                    Some(cert.span()),
                    "server.tls_key",
                    "tls_cert is set but tls_key is not: set both for HTTPS, or neither",
                );
                None
            }
            (None, Some(key)) => {
                self.push(
                    Some(key.span()),
                    "server.tls_cert",
                    "tls_key is set but tls_cert is not: set both for HTTPS, or neither",
                );
                None
            }
            (None, None) => None,
        };
        let shutdown_grace = self.duration(
            "server.shutdown_grace",
            raw.shutdown_grace.as_ref(),
            DEFAULT_SHUTDOWN_GRACE,
            true,
        );
        Server {
            listen: listen.unwrap_or_else(|| placeholder_server().listen),
            admin_listen,
            workers,
            tls,
            shutdown_grace,
        }
    }

    fn socket_addr(&mut self, key: &str, raw: &Text) -> Option<SocketAddr> {
        match raw.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(
                    Some(raw.span()),
                    key,
                    format!(
                        "{:?} is not an address: use IP:PORT, e.g. \"0.0.0.0:8080\" or \"[::1]:8080\"",
                        raw.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn file_path(&mut self, key: &str, raw: &Text) -> PathBuf {
        let p = Path::new(raw.get_ref());
        if raw.get_ref().is_empty() {
            self.push(Some(raw.span()), key, "must not be empty");
        }
        // Relative paths are read from the configuration file's folder, so the same file works
        // whatever the working directory of the process.
        match self.file.parent() {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }

    // --- [okta] ---

    fn okta(&mut self, raw: Spanned<RawOkta>) -> Okta {
        let span = raw.span();
        let raw = raw.into_inner();
        let issuer = match &raw.issuer {
            Some(i) => {
                self.https_url("okta.issuer", i);
                i.get_ref().clone()
            }
            None => {
                self.push(Some(span.clone()), "okta.issuer", "missing required key");
                String::new()
            }
        };
        let audiences = match raw.audience {
            Some(a) => {
                let key_span = a.span();
                let list = a.into_inner().0;
                if list.is_empty() {
                    self.push(Some(key_span.clone()), "okta.audience", "must not be empty");
                }
                for item in &list {
                    if item.get_ref().is_empty() {
                        let s = if item.span().is_empty() {
                            key_span.clone()
                        } else {
                            item.span()
                        };
                        self.push(Some(s), "okta.audience", "an audience must not be empty");
                    }
                }
                list.into_iter().map(Spanned::into_inner).collect()
            }
            None => {
                self.push(Some(span), "okta.audience", "missing required key");
                Vec::new()
            }
        };
        let jwks_uri = raw
            .jwks_uri
            .as_ref()
            .and_then(|u| self.https_url("okta.jwks_uri", u));
        let groups_claim = self.claim_name("okta.groups_claim", raw.groups_claim, "groups");
        let scopes_claim = self.claim_name("okta.scopes_claim", raw.scopes_claim, "scp");
        let algorithms = match &raw.algorithms {
            Some(list) => self.algorithms(list),
            None => vec![Algorithm::RS256],
        };
        let leeway = self.duration("okta.leeway", raw.leeway.as_ref(), DEFAULT_LEEWAY, true);
        if leeway > MAX_LEEWAY {
            let s = raw.leeway.as_ref().map(Spanned::span);
            self.push(
                s,
                "okta.leeway",
                "must be at most 5m: a larger leeway accepts long-expired tokens",
            );
        }
        let jwks_refresh = self.duration(
            "okta.jwks_refresh",
            raw.jwks_refresh.as_ref(),
            DEFAULT_JWKS_REFRESH,
            false,
        );
        let jwks_refetch_cooldown = self.duration(
            "okta.jwks_refetch_cooldown",
            raw.jwks_refetch_cooldown.as_ref(),
            DEFAULT_REFETCH_COOLDOWN,
            false,
        );
        let max_token_bytes = match &raw.max_token_bytes {
            Some(n) if MAX_TOKEN_BYTES_RANGE.contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                self.push(
                    Some(n.span()),
                    "okta.max_token_bytes",
                    format!(
                        "must be between {} and {}, got {}",
                        MAX_TOKEN_BYTES_RANGE.start(),
                        MAX_TOKEN_BYTES_RANGE.end(),
                        n.get_ref()
                    ),
                );
                DEFAULT_MAX_TOKEN_BYTES
            }
            None => DEFAULT_MAX_TOKEN_BYTES,
        };
        let client_ids = raw
            .client_ids
            .as_ref()
            .map(|l| self.names("okta.client_ids", l, "a client id"));
        let token_cache_size = match &raw.token_cache_size {
            Some(n) if (0..=10_000_000).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                self.push(
                    Some(n.span()),
                    "okta.token_cache_size",
                    format!("must be between 0 and 10000000, got {}", n.get_ref()),
                );
                DEFAULT_TOKEN_CACHE_SIZE
            }
            None => DEFAULT_TOKEN_CACHE_SIZE,
        };
        Okta {
            issuer,
            audiences,
            jwks_uri,
            groups_claim,
            scopes_claim,
            algorithms,
            leeway,
            jwks_refresh,
            jwks_refetch_cooldown,
            max_token_bytes,
            client_ids,
            token_cache_size,
        }
    }

    /// Parses an issuer or JWKS URL: https, or http on a loopback host (the local issuer).
    fn https_url(&mut self, key: &str, raw: &Text) -> Option<Uri> {
        let uri = match raw.get_ref().parse::<Uri>() {
            Ok(u) if u.scheme().is_some() && u.host().is_some() => u,
            _ => {
                self.push(
                    Some(raw.span()),
                    key,
                    format!("{:?} is not an absolute URL", raw.get_ref()),
                );
                return None;
            }
        };
        let loopback = matches!(uri.host(), Some("localhost" | "127.0.0.1" | "[::1]"));
        match uri.scheme_str() {
            Some("https") => Some(uri),
            Some("http") if loopback => Some(uri),
            Some("http") => {
                self.push(
                    Some(raw.span()),
                    key,
                    "must use https (plain http is allowed only for a loopback host)",
                );
                None
            }
            _ => {
                self.push(Some(raw.span()), key, "must be an https URL");
                None
            }
        }
    }

    fn claim_name(&mut self, key: &str, raw: Option<Text>, default: &str) -> String {
        match raw {
            Some(c) if c.get_ref().is_empty() => {
                self.push(Some(c.span()), key, "must not be empty");
                default.to_owned()
            }
            Some(c) => c.into_inner(),
            None => default.to_owned(),
        }
    }

    fn algorithms(&mut self, list: &List) -> Vec<Algorithm> {
        if list.get_ref().is_empty() {
            self.push(
                Some(list.span()),
                "okta.algorithms",
                "must name at least one algorithm, e.g. [\"RS256\"]",
            );
        }
        let mut out = Vec::new();
        for item in list.get_ref() {
            let name = item.get_ref().as_str();
            if let Some((_, a)) = Algorithm::ALL.iter().find(|(n, _)| *n == name) {
                if !out.contains(a) {
                    out.push(*a);
                }
                continue;
            }
            let reason = if name.eq_ignore_ascii_case("none") {
                format!("{name:?} is refused: an unsigned token proves nothing")
            } else if name.len() > 2 && name[..2].eq_ignore_ascii_case("HS") {
                format!(
                    "{name:?} is refused: HMAC algorithms would let anyone holding the public key forge tokens"
                )
            } else if Algorithm::ALL
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                format!("{name:?} is not an algorithm name: names are case-sensitive")
            } else {
                format!(
                    "{name:?} is not supported: use RS256 (Okta's), RS384, RS512, PS256, PS384 or PS512"
                )
            };
            self.push(Some(item.span()), "okta.algorithms", reason);
        }
        if out.is_empty() {
            out.push(Algorithm::RS256);
        }
        out
    }

    /// A list of non-empty strings, de-duplicated, order kept.
    fn names(&mut self, key: &str, list: &List, what: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for item in list.get_ref() {
            let s = item.get_ref();
            if s.is_empty() {
                self.push(Some(item.span()), key, format!("{what} must not be empty"));
            } else if !out.contains(s) {
                out.push(s.clone());
            }
        }
        out
    }

    // --- [upstreams.NAME] ---

    fn upstreams(
        &mut self,
        raw: BTreeMap<String, Spanned<RawUpstream>>,
    ) -> BTreeMap<String, Upstream> {
        let mut out = BTreeMap::new();
        for (name, upstream) in raw {
            let key = format!("upstreams.{name}");
            let n = &name;
            if n.is_empty()
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                self.push(
                    Some(upstream.span()),
                    &key,
                    "an upstream name may use only letters, digits, '-' and '_'",
                );
            }
            let span = upstream.span();
            let upstream = upstream.into_inner();
            let targets = match &upstream.targets {
                Some(list) => {
                    if list.get_ref().is_empty() {
                        self.push(
                            Some(list.span()),
                            &format!("{key}.targets"),
                            "must not be empty",
                        );
                    }
                    list.get_ref()
                        .iter()
                        .filter_map(|t| self.target(&format!("{key}.targets"), t))
                        .collect()
                }
                None => {
                    self.push(
                        Some(span),
                        &format!("{key}.targets"),
                        "missing required key",
                    );
                    Vec::new()
                }
            };
            let connect_timeout = self.duration(
                &format!("{key}.connect_timeout"),
                upstream.connect_timeout.as_ref(),
                DEFAULT_CONNECT_TIMEOUT,
                false,
            );
            let timeout = self.duration(
                &format!("{key}.timeout"),
                upstream.timeout.as_ref(),
                DEFAULT_TIMEOUT,
                false,
            );
            out.insert(
                name.clone(),
                Upstream {
                    name,
                    targets,
                    connect_timeout,
                    timeout,
                },
            );
        }
        out
    }

    fn target(&mut self, key: &str, raw: &Text) -> Option<Target> {
        let text = raw.get_ref();
        let bad = |why: &str| format!("{text:?} {why}");
        let Ok(uri) = text.parse::<Uri>() else {
            self.push(Some(raw.span()), key, bad("is not a URL"));
            return None;
        };
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            self.push(
                Some(raw.span()),
                key,
                bad("needs a scheme and a host, e.g. \"http://127.0.0.1:9001\""),
            );
            return None;
        };
        if *scheme != Scheme::HTTP && *scheme != Scheme::HTTPS {
            self.push(Some(raw.span()), key, bad("must use http or https"));
            return None;
        }
        if authority.as_str().contains('@') {
            self.push(
                Some(raw.span()),
                key,
                bad("must not carry user information"),
            );
            return None;
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            self.push(
                Some(raw.span()),
                key,
                bad("must not have a path or query: routes decide the path"),
            );
            return None;
        }
        Some(Target {
            scheme: scheme.clone(),
            authority: authority.clone(),
        })
    }

    // --- [[routes]] ---

    fn routes(
        &mut self,
        raw: Vec<Spanned<RawRoute>>,
        upstreams: &BTreeMap<String, Upstream>,
    ) -> Vec<Route> {
        let mut out: Vec<Route> = Vec::new();
        // Index in the file of each route in `out` (routes with a bad path are left out).
        let mut indices: Vec<usize> = Vec::new();
        for (i, route) in raw.into_iter().enumerate() {
            let key = format!("routes[{i}]");
            let span = route.span();
            let route = route.into_inner();
            let path = match &route.path {
                Some(p) => self.route_path(&format!("{key}.path"), p),
                None => {
                    self.push(
                        Some(span.clone()),
                        &format!("{key}.path"),
                        "missing required key",
                    );
                    None
                }
            };
            let methods = route
                .methods
                .as_ref()
                .map(|m| self.methods(&format!("{key}.methods"), m));
            let upstream = match &route.upstream {
                Some(u) if upstreams.contains_key(u.get_ref()) => u.get_ref().clone(),
                Some(u) => {
                    let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
                    let hint = if known.is_empty() {
                        "no [upstreams.NAME] table is defined".to_owned()
                    } else {
                        format!("defined upstreams: {}", known.join(", "))
                    };
                    self.push(
                        Some(u.span()),
                        &format!("{key}.upstream"),
                        format!("unknown upstream {:?} ({hint})", u.get_ref()),
                    );
                    String::new()
                }
                None => {
                    self.push(
                        Some(span.clone()),
                        &format!("{key}.upstream"),
                        "missing required key",
                    );
                    String::new()
                }
            };
            let access = self.access(&key, &route);
            let Some(path) = path else { continue };
            let route = Route {
                path,
                methods,
                upstream,
                access,
                strip_prefix: route.strip_prefix.unwrap_or(false),
            };
            if let Some(other) = out
                .iter()
                .position(|o| o.path == route.path && methods_overlap(&o.methods, &route.methods))
            {
                self.push(
                    Some(span),
                    &key,
                    format!(
                        "duplicate route: path {:?} with these methods is already routed by routes[{}]",
                        route.path, indices[other]
                    ),
                );
            }
            out.push(route);
            indices.push(i);
        }
        out
    }

    fn route_path(&mut self, key: &str, raw: &Text) -> Option<String> {
        let p = raw.get_ref();
        let why = if !p.starts_with('/') {
            Some("must start with '/'".to_owned())
        } else if p.contains(['?', '#']) {
            Some("must not contain a query or fragment".to_owned())
        } else if p.len() > 1 && p.ends_with('/') {
            Some(format!(
                "must not end with '/': prefixes match on segment boundaries, so {:?} already covers {p:?}",
                p.trim_end_matches('/')
            ))
        } else {
            match crate::normalize::path(p) {
                Ok(n) if n == *p => None,
                Ok(n) => Some(format!(
                    "is not in normal form: requests are matched after normalisation, write {n:?}"
                )),
                Err(reason) => Some(format!("can never match a request: {reason}")),
            }
        };
        match why {
            Some(why) => {
                self.push(Some(raw.span()), key, why);
                None
            }
            None => Some(p.clone()),
        }
    }

    fn methods(&mut self, key: &str, list: &List) -> Vec<Method> {
        if list.get_ref().is_empty() {
            self.push(
                Some(list.span()),
                key,
                "must not be empty: omit the key to allow any method",
            );
        }
        let mut out = Vec::new();
        for item in list.get_ref() {
            let m = item.get_ref();
            match Method::from_bytes(m.as_bytes()) {
                Ok(method) if m.bytes().all(|b| !b.is_ascii_lowercase()) => {
                    if !out.contains(&method) {
                        out.push(method);
                    }
                }
                Ok(_) => self.push(
                    Some(item.span()),
                    key,
                    format!(
                        "{m:?}: methods are case-sensitive, write {:?}",
                        m.to_ascii_uppercase()
                    ),
                ),
                Err(_) => {
                    self.push(
                        Some(item.span()),
                        key,
                        format!("{m:?} is not an HTTP method"),
                    );
                }
            }
        }
        out
    }

    fn access(&mut self, key: &str, route: &RawRoute) -> Access {
        let public = route.public.as_ref().is_some_and(|p| *p.get_ref());
        if public {
            for (name, list) in [("groups", &route.groups), ("scopes", &route.scopes)] {
                if let Some(l) = list {
                    self.push(
                        Some(l.span()),
                        &format!("{key}.{name}"),
                        format!("a public route takes no token, so it cannot require {name}"),
                    );
                }
            }
            return Access::Public;
        }
        let groups = route.groups.as_ref().map(|g| {
            if g.get_ref().is_empty() {
                self.push(
                    Some(g.span()),
                    &format!("{key}.groups"),
                    "an empty list would admit nobody: omit the key to admit any valid token",
                );
            }
            self.names(&format!("{key}.groups"), g, "a group name")
        });
        let scopes = route
            .scopes
            .as_ref()
            .map(|s| {
                for item in s.get_ref() {
                    // RFC 6749 §3.3 scope-token: printable ASCII but space, '"' and '\'.
                    let ok = item
                        .get_ref()
                        .bytes()
                        .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E));
                    if !ok {
                        self.push(
                            Some(item.span()),
                            &format!("{key}.scopes"),
                            format!("{:?} is not an OAuth scope (RFC 6749 §3.3)", item.get_ref()),
                        );
                    }
                }
                self.names(&format!("{key}.scopes"), s, "a scope")
            })
            .unwrap_or_default();
        Access::Protected { groups, scopes }
    }

    // --- [rate_limits] ---

    fn rate_limits(&mut self, raw: Spanned<RawRateLimits>) -> RateLimits {
        let span = raw.span();
        let mut raw = raw.into_inner();
        let default = raw.default.take().map(|d| {
            let by_group = d
                .get_ref()
                .by
                .as_ref()
                .filter(|b| b.get_ref() == "group")
                .map(Spanned::span);
            if let Some(s) = by_group {
                self.push(
                    Some(s),
                    "rate_limits.default.by",
                    "the default limit applies to callers outside every limited group, so it can only be by \"subject\"",
                );
            }
            self.limit("rate_limits.default", d)
        });
        let mut groups = BTreeMap::new();
        for (name, limit) in std::mem::take(&mut raw.groups) {
            let key = format!("rate_limits.groups.{name}");
            if name.is_empty() {
                self.push(Some(limit.span()), &key, "a group name must not be empty");
            }
            let limit = self.limit(&key, limit);
            groups.insert(name, limit);
        }
        let backend = match raw
            .backend
            .as_ref()
            .map(|b| (b.get_ref().as_str(), b.span()))
        {
            None | Some(("local", _)) => {
                for (k, v) in [
                    ("redis_url", &raw.redis_url),
                    ("redis_timeout", &raw.redis_timeout),
                    ("redis_key_prefix", &raw.redis_key_prefix),
                ] {
                    if let Some(v) = v {
                        self.push(
                            Some(v.span()),
                            &format!("rate_limits.{k}"),
                            "only used with backend = \"redis\"",
                        );
                    }
                }
                Backend::Local
            }
            Some(("redis", _)) => Backend::Redis(self.redis(&raw, span)),
            Some((other, s)) => {
                self.push(
                    Some(s),
                    "rate_limits.backend",
                    format!("{other:?} is not a backend: use \"local\" or \"redis\""),
                );
                Backend::Local
            }
        };
        let max_tracked_callers = match &raw.max_tracked_callers {
            Some(n) if (1..=100_000_000).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                self.push(
                    Some(n.span()),
                    "rate_limits.max_tracked_callers",
                    format!("must be between 1 and 100000000, got {}", n.get_ref()),
                );
                crate::ratelimit::DEFAULT_MAX_TRACKED_CALLERS
            }
            None => crate::ratelimit::DEFAULT_MAX_TRACKED_CALLERS,
        };
        RateLimits {
            default,
            groups,
            backend,
            max_tracked_callers,
        }
    }

    fn redis(&mut self, raw: &RawRateLimits, span: Range<usize>) -> RedisBackend {
        let url = match &raw.redis_url {
            Some(u) => {
                let ok = u
                    .get_ref()
                    .parse::<Uri>()
                    .ok()
                    .filter(|uri| uri.host().is_some())
                    .is_some_and(|uri| matches!(uri.scheme_str(), Some("redis" | "rediss")));
                if !ok {
                    self.push(
                        Some(u.span()),
                        "rate_limits.redis_url",
                        format!(
                            "{:?} is not a redis:// or rediss:// URL with a host",
                            u.get_ref()
                        ),
                    );
                }
                u.get_ref().clone()
            }
            None => {
                self.push(
                    Some(span),
                    "rate_limits.redis_url",
                    "required with backend = \"redis\"",
                );
                String::new()
            }
        };
        let timeout = self.duration(
            "rate_limits.redis_timeout",
            raw.redis_timeout.as_ref(),
            DEFAULT_REDIS_TIMEOUT,
            false,
        );
        let key_prefix = raw
            .redis_key_prefix
            .as_ref()
            .map_or_else(|| DEFAULT_REDIS_PREFIX.to_owned(), |p| p.get_ref().clone());
        RedisBackend {
            url,
            timeout,
            key_prefix,
        }
    }

    fn limit(&mut self, key: &str, raw: Spanned<RawLimit>) -> Limit {
        let span = raw.span();
        let raw = raw.into_inner();
        let requests = match &raw.requests {
            Some(n) => self.positive_u32(&format!("{key}.requests"), n),
            None => {
                self.push(
                    Some(span.clone()),
                    &format!("{key}.requests"),
                    "missing required key",
                );
                NonZeroU32::MIN
            }
        };
        let per = match &raw.per {
            Some(_) => self.duration(
                &format!("{key}.per"),
                raw.per.as_ref(),
                Duration::ZERO,
                false,
            ),
            None => {
                self.push(Some(span), &format!("{key}.per"), "missing required key");
                Duration::from_secs(1)
            }
        };
        let burst = raw
            .burst
            .as_ref()
            .map_or(requests, |b| self.positive_u32(&format!("{key}.burst"), b));
        let by = match raw.by.as_ref().map(|b| (b.get_ref().as_str(), b.span())) {
            None | Some(("subject", _)) => By::Subject,
            Some(("group", _)) => By::Group,
            Some((other, s)) => {
                self.push(
                    Some(s),
                    &format!("{key}.by"),
                    format!("{other:?} is not a bucket kind: use \"subject\" or \"group\""),
                );
                By::Subject
            }
        };
        Limit {
            requests,
            per,
            burst,
            by,
        }
    }

    fn positive_u32(&mut self, key: &str, raw: &Spanned<i64>) -> NonZeroU32 {
        let n = *raw.get_ref();
        match u32::try_from(n).ok().and_then(NonZeroU32::new) {
            Some(n) => n,
            None => {
                self.push(
                    Some(raw.span()),
                    key,
                    format!("must be a whole number from 1 to {}, got {n}", u32::MAX),
                );
                NonZeroU32::MIN
            }
        }
    }

    // --- [forward] ---

    fn forward(&mut self, raw: Spanned<RawForward>) -> Forward {
        let raw = raw.into_inner();
        let mut claims_to_headers: Vec<(String, HeaderName)> = Vec::new();
        for (claim, header) in raw.claims_to_headers {
            let key = format!("forward.claims_to_headers.{claim}");
            if claim.is_empty() {
                self.push(Some(header.span()), &key, "a claim name must not be empty");
                continue;
            }
            let Ok(name) = HeaderName::from_bytes(header.get_ref().as_bytes()) else {
                self.push(
                    Some(header.span()),
                    &key,
                    format!("{:?} is not a valid header name", header.get_ref()),
                );
                continue;
            };
            if RESERVED_HEADERS.contains(&name.as_str()) {
                self.push(
                    Some(header.span()),
                    &key,
                    format!("{name} is owned by HTTP or the gateway and cannot carry a claim"),
                );
                continue;
            }
            if let Some((other, _)) = claims_to_headers.iter().find(|(_, h)| *h == name) {
                self.push(
                    Some(header.span()),
                    &key,
                    format!("header {name} already carries claim {other:?}"),
                );
                continue;
            }
            claims_to_headers.push((claim, name));
        }
        let mut strip_headers: Vec<HeaderName> = Vec::new();
        for (_, name) in &claims_to_headers {
            let swapped: String = name
                .as_str()
                .chars()
                .map(|c| match c {
                    '-' => '_',
                    '_' => '-',
                    c => c,
                })
                .collect();
            for n in [
                Some(name.clone()),
                HeaderName::from_bytes(swapped.as_bytes()).ok(),
            ]
            .into_iter()
            .flatten()
            {
                if !strip_headers.contains(&n) {
                    strip_headers.push(n);
                }
            }
        }
        Forward {
            claims_to_headers,
            strip_headers,
            forward_authorization: raw.forward_authorization.unwrap_or(false),
        }
    }

    // --- [demo] ---

    fn demo(&mut self, raw: Spanned<RawDemo>) -> Demo {
        let span = raw.span();
        let raw = raw.into_inner();
        let mut listen = |key: &str, value: &Option<Text>| match value {
            Some(v) => self
                .socket_addr(key, v)
                .unwrap_or(([127, 0, 0, 1], 0).into()),
            None => {
                self.push(Some(span.clone()), key, "missing required key");
                ([127, 0, 0, 1], 0).into()
            }
        };
        let issuer_listen = listen("demo.issuer_listen", &raw.issuer_listen);
        let upstream_listen = listen("demo.upstream_listen", &raw.upstream_listen);
        let auth_server_id = match &raw.auth_server_id {
            Some(id)
                if !id.get_ref().is_empty()
                    && id.get_ref().bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                id.get_ref().clone()
            }
            Some(id) => {
                self.push(
                    Some(id.span()),
                    "demo.auth_server_id",
                    "use letters and digits only",
                );
                "demo".to_owned()
            }
            None => "demo".to_owned(),
        };
        let token_lifetime = self.duration(
            "demo.token_lifetime",
            raw.token_lifetime.as_ref(),
            Duration::from_secs(3600),
            false,
        );
        let mut text = |key: String, value: &Option<Text>, within: Range<usize>| match value {
            Some(v) if !v.get_ref().is_empty() => v.get_ref().clone(),
            Some(v) => {
                self.push(Some(v.span()), &key, "must not be empty");
                String::new()
            }
            None => {
                self.push(Some(within), &key, "missing required key");
                String::new()
            }
        };
        let mut users = Vec::new();
        for (i, u) in raw.users.iter().enumerate() {
            let key = format!("demo.users[{i}]");
            let name = text(format!("{key}.name"), &u.get_ref().name, u.span());
            let password = text(format!("{key}.password"), &u.get_ref().password, u.span());
            let groups = u
                .get_ref()
                .groups
                .as_ref()
                .map(|g| g.get_ref().iter().map(|x| x.get_ref().clone()).collect())
                .unwrap_or_default();
            users.push(crate::issuer::User {
                name,
                password,
                groups,
            });
        }
        let mut clients = Vec::new();
        for (i, c) in raw.clients.iter().enumerate() {
            let key = format!("demo.clients[{i}]");
            let id = text(format!("{key}.id"), &c.get_ref().id, c.span());
            let secret = text(format!("{key}.secret"), &c.get_ref().secret, c.span());
            let scopes = c
                .get_ref()
                .scopes
                .as_ref()
                .map(|g| g.get_ref().iter().map(|x| x.get_ref().clone()).collect())
                .unwrap_or_default();
            clients.push(crate::issuer::Client { id, secret, scopes });
        }
        if clients.is_empty() {
            self.push(
                Some(span),
                "demo.clients",
                "the demo needs at least one client for the token endpoint",
            );
        }
        Demo {
            issuer_listen,
            upstream_listen,
            auth_server_id,
            token_lifetime,
            users,
            clients,
        }
    }

    // --- shared ---

    fn duration(
        &mut self,
        key: &str,
        raw: Option<&Text>,
        default: Duration,
        allow_zero: bool,
    ) -> Duration {
        let Some(raw) = raw else { return default };
        match parse_duration(raw.get_ref()) {
            Some(d) if d.is_zero() && !allow_zero => {
                self.push(Some(raw.span()), key, "must be longer than zero");
                default
            }
            Some(d) => d,
            None => {
                self.push(
                    Some(raw.span()),
                    key,
                    format!(
                        "{:?} is not a duration: use a number and a unit, e.g. \"500ms\", \"30s\", \"15m\", \"1h\"",
                        raw.get_ref()
                    ),
                );
                default
            }
        }
    }
}

/// Parses `"500ms"`, `"30s"`, `"15m"`, `"1h"` (and humantime's other spellings, such as
/// `"1h 30m"`). Bare numbers are refused: a unit-less `30` is a common and silent mistake.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() || s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    humantime::parse_duration(s).ok()
}

fn methods_overlap(a: &Option<Vec<Method>>, b: &Option<Vec<Method>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
        _ => true,
    }
}

fn placeholder_server() -> Server {
    Server {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_listen: None,
        workers: None,
        tls: None,
        shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// The key path of an ignored (unknown) key, without serde's internal wrapper segments.
fn segments(path: &serde_ignored::Path<'_>) -> Vec<Segment> {
    use serde_ignored::Path;
    let mut out = match path {
        Path::Root => return Vec::new(),
        Path::Seq { parent, .. }
        | Path::Map { parent, .. }
        | Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => segments(parent),
    };
    match path {
        Path::Seq { index, .. } => out.push(Segment::Index(*index)),
        // `toml::Spanned` deserializes through a map with private keys; they are not the user's.
        Path::Map { key, .. } if !key.starts_with("$__serde_spanned_private") => {
            out.push(Segment::Key(key.clone()));
        }
        _ => {}
    }
    out
}

fn display_path(path: &[Segment]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Segment::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Segment::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// The path of the deepest key whose value contains byte `offset` (for serde type errors,
/// which carry a span but no key). The whole tree is walked: a table opened by a `[header]`
/// does not span its keys.
fn key_at(table: &Spanned<DeTable<'_>>, offset: usize) -> Vec<Segment> {
    fn walk(value: &DeValue<'_>, offset: usize, path: &mut Vec<Segment>, best: &mut Vec<Segment>) {
        let mut visit = |seg: Segment, v: &Spanned<DeValue<'_>>, path: &mut Vec<Segment>| {
            path.push(seg);
            if v.span().contains(&offset) && path.len() > best.len() {
                *best = path.clone();
            }
            walk(v.get_ref(), offset, path, best);
            path.pop();
        };
        if let Some(t) = value.as_table() {
            for (k, v) in t {
                visit(Segment::Key(k.get_ref().to_string()), v, path);
            }
        } else if let Some(a) = value.as_array() {
            for (i, v) in a.iter().enumerate() {
                visit(Segment::Index(i), v, path);
            }
        }
    }
    let mut best = Vec::new();
    let root = DeValue::Table(table.get_ref().clone());
    walk(&root, offset, &mut Vec::new(), &mut best);
    best
}

/// Finds the span of the key at `path` in the parsed document.
fn locate(table: &Spanned<DeTable<'_>>, path: &[Segment]) -> Option<Range<usize>> {
    let mut current: &DeTable<'_> = table.get_ref();
    let mut value: Option<&Spanned<DeValue<'_>>> = None;
    let mut span = None;
    for seg in path {
        match seg {
            Segment::Key(k) => {
                if let Some(v) = value {
                    current = v.get_ref().as_table()?;
                }
                let (key, v) = current.get_key_value(k.as_str())?;
                span = Some(key.span());
                value = Some(v);
            }
            Segment::Index(i) => {
                let v = value?.get_ref().as_array()?.get(*i)?;
                span = Some(v.span());
                value = Some(v);
            }
        }
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_the_spec_spellings_and_refuse_bare_numbers() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("-1s"), None);
    }

    #[test]
    fn line_and_column_count_characters_from_one() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, 10), (2, 4));
    }
}
