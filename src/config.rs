//! Validated configuration: the types the rest of jwtgate reads.
//!
//! Loading runs in three stages (STYLE rule 7): `raw` mirrors the TOML with spans, `validate`
//! walks it and collects *every* problem with its file, line, column and key, and the types in
//! this file hold only checked values (`Duration`, `SocketAddr`, `Method`, enums), so no other
//! module re-parses a string or re-checks an invariant.

mod raw;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::HeaderName;
use http::uri::{Authority, Scheme};
use http::{Method, Uri};

/// The whole validated configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`: listeners, TLS, workers, shutdown.
    pub server: Server,
    /// `[okta]`: the authorization server whose tokens are accepted; absent only when every
    /// route is public.
    pub okta: Option<Okta>,
    /// `[upstreams.NAME]`, by name.
    pub upstreams: BTreeMap<String, Upstream>,
    /// `[[routes]]`, in file order.
    pub routes: Vec<Route>,
    /// `[rate_limits]`.
    pub rate_limits: RateLimits,
    /// `[forward]`.
    pub forward: Forward,
    /// `[demo]`: read only by `jwtgate demo`.
    pub demo: Option<Demo>,
}

/// `[demo]`: the local issuer and echo upstream that `jwtgate demo` starts (SPEC §5).
#[derive(Debug, Clone)]
pub struct Demo {
    /// Where the local issuer listens.
    pub issuer_listen: SocketAddr,
    /// Where the echo upstream listens.
    pub upstream_listen: SocketAddr,
    /// The `{id}` of `/oauth2/{id}` (default `demo`).
    pub auth_server_id: String,
    /// Lifetime of issued tokens (default 1h).
    pub token_lifetime: Duration,
    /// Users for the password grant.
    pub users: Vec<crate::issuer::User>,
    /// OAuth clients.
    pub clients: Vec<crate::issuer::Client>,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct Server {
    /// Address of the proxy listener.
    pub listen: SocketAddr,
    /// Address of the admin listener (`/healthz`, `/readyz`), if any.
    pub admin_listen: Option<SocketAddr>,
    /// Runtime worker threads; `None` means one per core.
    pub workers: Option<NonZeroUsize>,
    /// Certificate and key for HTTPS on `listen`, if set.
    pub tls: Option<TlsFiles>,
    /// How long in-flight requests may run after SIGTERM/SIGINT (default 30s).
    pub shutdown_grace: Duration,
}

/// PEM files for TLS termination, with the place in the configuration that named them.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Where `tls_cert` was written, so a bad file is reported like any other config error.
    pub origin: Location,
}

/// `[okta]`.
#[derive(Debug, Clone)]
pub struct Okta {
    /// Exact expected `iss`.
    pub issuer: String,
    /// Accepted `aud` values; the token's `aud` must contain one.
    pub audiences: Vec<String>,
    /// Explicit JWKS URL; `None` means discovery from the issuer.
    pub jwks_uri: Option<Uri>,
    /// Claim holding the caller's groups (default `groups`).
    pub groups_claim: String,
    /// Claim holding the granted scopes (default `scp`).
    pub scopes_claim: String,
    /// Accepted signature algorithms (default RS256 only).
    pub algorithms: Vec<Algorithm>,
    /// Clock skew allowed on `exp`, `nbf` and `iat` (default 30s).
    pub leeway: Duration,
    /// Background JWKS refresh period (default 15m).
    pub jwks_refresh: Duration,
    /// Least time between two fetches caused by unknown `kid`s (default 30s).
    pub jwks_refetch_cooldown: Duration,
    /// Longest accepted bearer token in bytes (default 8192).
    pub max_token_bytes: usize,
    /// Allow-list for the `cid` claim, if set.
    pub client_ids: Option<Vec<String>>,
    /// How many verified tokens are remembered (default 10,000; 0 turns the cache off).
    pub token_cache_size: usize,
}

/// A JWS algorithm jwtgate is willing to verify: RSA signatures only (OKTA.md §0.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(clippy::upper_case_acronyms)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (what Okta uses).
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
}

impl Algorithm {
    /// Every accepted algorithm, by its JOSE name.
    pub const ALL: [(&'static str, Algorithm); 6] = [
        ("RS256", Algorithm::RS256),
        ("RS384", Algorithm::RS384),
        ("RS512", Algorithm::RS512),
        ("PS256", Algorithm::PS256),
        ("PS384", Algorithm::PS384),
        ("PS512", Algorithm::PS512),
    ];

    /// The JOSE `alg` name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map_or("?", |(n, _)| n)
    }
}

/// `[upstreams.NAME]`.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The table name.
    pub name: String,
    /// Targets, used round robin.
    pub targets: Vec<Target>,
    /// Deadline for opening a connection to a target (default 2s).
    pub connect_timeout: Duration,
    /// Deadline for the upstream's response headers (default 30s).
    pub timeout: Duration,
}

/// One upstream address: scheme and authority, never a path.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// `host:port`.
    pub authority: Authority,
}

/// Two targets are equal when they are spelt the same way. Equality decides which upstream
/// connection a request may reuse, on every request of a carried connection, and both sides
/// come from the configuration, so the spelling is the same each time. `Authority`'s own `==`
/// ignores case byte by byte (some 300 instructions per request); this is one `memcmp`.
impl PartialEq for Target {
    fn eq(&self, other: &Target) -> bool {
        self.scheme == other.scheme && self.authority.as_str() == other.authority.as_str()
    }
}

impl Eq for Target {}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

/// `[[routes]]`.
#[derive(Debug, Clone)]
pub struct Route {
    /// Normalised path prefix, without a trailing slash (except `/`).
    pub path: String,
    /// Allowed methods; `None` allows any.
    pub methods: Option<Vec<Method>>,
    /// Name of the upstream (checked to exist).
    pub upstream: String,
    /// Who may call it.
    pub access: Access,
    /// Whether the route's prefix is removed before forwarding.
    pub strip_prefix: bool,
}

/// Who may call a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// No token needed.
    Public,
    /// A valid token is needed, and then these checks pass.
    Protected {
        /// The caller needs at least one of these; `None` admits any valid token.
        groups: Option<Vec<String>>,
        /// The caller needs all of these.
        scopes: Vec<String>,
    },
}

/// `[rate_limits]`.
#[derive(Debug, Clone)]
pub struct RateLimits {
    /// Limit for callers none of whose groups has one.
    pub default: Option<Limit>,
    /// Limits by group name.
    pub groups: BTreeMap<String, Limit>,
    /// Where bucket state lives.
    pub backend: Backend,
    /// Callers tracked per limit before new ones share one overflow bucket (default 100,000).
    pub max_tracked_callers: usize,
}

impl Default for RateLimits {
    fn default() -> RateLimits {
        RateLimits {
            default: None,
            groups: BTreeMap::new(),
            backend: Backend::Local,
            max_tracked_callers: crate::ratelimit::DEFAULT_MAX_TRACKED_CALLERS,
        }
    }
}

/// One GCRA quota: `requests` per `per`, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Requests replenished per `per`.
    pub requests: NonZeroU32,
    /// Replenish period.
    pub per: Duration,
    /// Largest burst (defaults to `requests`).
    pub burst: NonZeroU32,
    /// Whose bucket a request is charged to.
    pub by: By,
}

/// Whose bucket a limited request is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// One bucket per caller (default).
    Subject,
    /// One bucket shared by the whole group.
    Group,
}

/// Where rate-limit state lives (SPEC §7).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Backend {
    /// In this process (default).
    #[default]
    Local,
    /// In Redis, shared by replicas.
    Redis(RedisBackend),
}

/// `backend = "redis"` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisBackend {
    /// `redis://` or `rediss://` URL.
    pub url: String,
    /// A slower decision falls back to the local limiter (default 50ms).
    pub timeout: Duration,
    /// Prefix of every key (default `jwtgate:`).
    pub key_prefix: String,
}

/// `[forward]`.
#[derive(Debug, Clone, Default)]
pub struct Forward {
    /// Verified claim → request header set for the upstream.
    pub claims_to_headers: Vec<(String, HeaderName)>,
    /// Every header a client may not send: the `claims_to_headers` names, plus each one
    /// spelled with `_` for `-` (and the reverse), which CGI-style upstreams read as the same.
    pub strip_headers: Vec<HeaderName>,
    /// Whether the upstream sees the bearer token (default false).
    pub forward_authorization: bool,
}

/// A place in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a place in the text.
    pub position: Option<(usize, usize)>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(f, "{}:{line}:{column}", self.file.display()),
            None => write!(f, "{}", self.file.display()),
        }
    }
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where it is.
    pub location: Location,
    /// Dotted key path, e.g. `routes[2].upstream`.
    pub key: String,
    /// Why it is wrong.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.location, self.reason)
        } else {
            write!(f, "{}: {}: {}", self.location, self.key, self.reason)
        }
    }
}

/// Every problem found in one configuration file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// === impl Config ===

impl Config {
    /// Reads and validates the file at `path`.
    ///
    /// # Errors
    ///
    /// Every problem in the file, or one error if it cannot be read.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) => Err(ConfigErrors(vec![ConfigError {
                location: Location {
                    file: path.to_path_buf(),
                    position: None,
                },
                key: String::new(),
                reason: format!("cannot read the file: {e}"),
            }])),
        }
    }

    /// Validates TOML text as if it were a file named `<inline>` in the current directory.
    ///
    /// # Errors
    ///
    /// Every problem in the text.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigErrors> {
        Self::parse(Path::new("<inline>"), text)
    }

    /// Validates `text`, naming `file` in errors and resolving relative paths against its folder.
    ///
    /// # Errors
    ///
    /// Every problem in the text.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
        validate::parse(file, text)
    }

    /// The upstream a route forwards to.
    ///
    /// # Panics
    ///
    /// Never for a validated `Config`: every route's upstream was checked to exist.
    pub fn upstream_of(&self, route: &Route) -> &Upstream {
        &self.upstreams[&route.upstream]
    }

    /// A one-screen summary for `jwtgate check`: routes, upstreams and groups.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let scheme = if self.server.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let _ = writeln!(out, "listen  {scheme}://{}", self.server.listen);
        if let Some(admin) = self.server.admin_listen {
            let _ = writeln!(out, "admin   http://{admin}");
        }
        if let Some(okta) = &self.okta {
            let _ = writeln!(out, "issuer  {}", okta.issuer);
            let _ = writeln!(out, "audience {}", okta.audiences.join(", "));
        }
        let _ = writeln!(out, "\nroutes ({}):", self.routes.len());
        for r in &self.routes {
            let methods = r.methods.as_ref().map_or_else(
                || "*".to_owned(),
                |m| m.iter().map(Method::as_str).collect::<Vec<_>>().join(","),
            );
            let access = match &r.access {
                Access::Public => "public".to_owned(),
                Access::Protected { groups, scopes } => {
                    let mut s = match groups {
                        Some(g) => format!("groups {}", g.join(",")),
                        None => "any valid token".to_owned(),
                    };
                    if !scopes.is_empty() {
                        let _ = write!(s, "; scopes {}", scopes.join(","));
                    }
                    s
                }
            };
            let strip = if r.strip_prefix {
                " (strip prefix)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  {:<24} {:<12} -> {:<12} {access}{strip}",
                r.path, methods, r.upstream
            );
        }
        let _ = writeln!(out, "\nupstreams ({}):", self.upstreams.len());
        for u in self.upstreams.values() {
            let targets: Vec<String> = u.targets.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                out,
                "  {:<12} {} (connect {:?}, timeout {:?})",
                u.name,
                targets.join(" "),
                u.connect_timeout,
                u.timeout
            );
        }
        let mut groups = std::collections::BTreeSet::new();
        for r in &self.routes {
            if let Access::Protected {
                groups: Some(g), ..
            } = &r.access
            {
                groups.extend(g.iter().map(String::as_str));
            }
        }
        groups.extend(self.rate_limits.groups.keys().map(String::as_str));
        let _ = writeln!(out, "\ngroups ({}):", groups.len());
        for g in groups {
            let limit = self
                .rate_limits
                .groups
                .get(g)
                .map_or_else(|| "no group limit".to_owned(), describe_limit);
            let _ = writeln!(out, "  {g:<24} {limit}");
        }
        if let Some(d) = &self.rate_limits.default {
            let _ = writeln!(out, "  {:<24} {}", "(default)", describe_limit(d));
        }
        out
    }
}

fn describe_limit(l: &Limit) -> String {
    let by = match l.by {
        By::Subject => "per caller",
        By::Group => "shared by the group",
    };
    format!("{} per {:?}, burst {}, {by}", l.requests, l.per, l.burst)
}

#[cfg(test)]
mod tests {
    use super::Target;

    fn target(s: &str) -> Target {
        let uri: http::Uri = s.parse().unwrap();
        let parts = uri.into_parts();
        Target {
            scheme: parts.scheme.unwrap(),
            authority: parts.authority.unwrap(),
        }
    }

    #[test]
    fn a_target_equals_only_itself_spelt_the_same_way() {
        let a = target("http://127.0.0.1:8080");
        assert_eq!(a, target("http://127.0.0.1:8080"));
        assert_ne!(a, target("https://127.0.0.1:8080"), "another scheme");
        assert_ne!(a, target("http://127.0.0.1:8081"), "another port");
        assert_ne!(a, target("http://127.0.0.2:8080"), "another host");
        // Spelt otherwise: another target for reuse (both sides come from the configuration).
        let upper = target("http://API.internal:80");
        assert_ne!(upper, target("http://api.internal:80"));
        assert_eq!(upper, target("http://API.internal:80"));
    }
}
