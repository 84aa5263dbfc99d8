//! One configuration compiled for serving, the live holder that reloads swap, and the state
//! that outlives configurations.
//!
//! A request loads the live [`Snapshot`] once (when hyper hands it over, or in the outermost
//! layer) and carries the `Arc<Snapshot>` in its [`RequestContext`] extension, so a reload in
//! the middle of a request never mixes two configurations (STYLE rule 8). [`Shared`] keeps what
//! must survive a reload: the upstream client, the issuer's keys, limiter buckets of unchanged
//! limits, and the metrics.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::Request;
use tokio::task::JoinHandle;
use tower::util::MapRequestLayer;

use crate::access_log::Record;
use crate::auth::Authenticator;
use crate::auth::jwks::KeyCache;
use crate::auth::validate::Identity;
use crate::config::{Backend, Config, RateLimits};
use crate::lock;
use crate::metrics::Metrics;
use crate::proxy::Upstreams;
use crate::proxy::upstream::{ConnectTimeouts, UpstreamPool};
use crate::ratelimit::RateLimiter;
use crate::ratelimit::remote::Remote;
use crate::route::{CompiledRoute, RouteTable};
use crate::server::ConnInfo;

/// A validated configuration, compiled: route table, upstream pools, token checks, limits.
#[derive(Debug)]
pub struct Snapshot {
    /// The configuration it was built from.
    pub config: Arc<Config>,
    /// Routes by path.
    pub routes: RouteTable,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, Arc<UpstreamPool>>,
    /// Token checks for protected routes; `None` without `[okta]`.
    pub auth: Option<Arc<Authenticator>>,
    /// Per-group rate limits; `None` when none is configured.
    pub limiter: Option<Arc<RateLimiter>>,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
}

/// The configuration in force; swapped whole on reload.
pub type Live = Arc<ArcSwap<Snapshot>>;

impl Snapshot {
    /// Compiles a validated configuration with fresh limiter state and its own metrics;
    /// `keys` holds the signing keys of its `[okta]` issuer.
    pub fn new(config: Arc<Config>, keys: Option<Arc<KeyCache>>) -> Snapshot {
        let metrics = Arc::new(Metrics::new());
        let limiter = RateLimiter::new(&config.rate_limits).with_remote(remote(
            &config.rate_limits,
            None,
            &metrics,
        ));
        Snapshot::from_parts(config, keys, limiter, metrics)
    }

    fn from_parts(
        config: Arc<Config>,
        keys: Option<Arc<KeyCache>>,
        limiter: RateLimiter,
        metrics: Arc<Metrics>,
    ) -> Snapshot {
        let upstreams: BTreeMap<String, Arc<UpstreamPool>> = config
            .upstreams
            .iter()
            .map(|(name, u)| (name.clone(), Arc::new(UpstreamPool::new(u))))
            .collect();
        let routes = RouteTable::new(config.routes.iter().map(|r| {
            Arc::new(CompiledRoute {
                route: r.clone(),
                upstream: upstreams[&r.upstream].clone(),
                metrics: Default::default(),
            })
        }));
        let auth = match (&config.okta, keys) {
            (Some(okta), Some(keys)) => Some(Arc::new(
                Authenticator::with_metrics(okta, keys, &metrics).forwarding(
                    config
                        .forward
                        .claims_to_headers
                        .iter()
                        .map(|(claim, _)| claim.clone()),
                ),
            )),
            _ => None,
        };
        let limiter = Some(Arc::new(limiter)).filter(|l| !l.is_empty());
        Snapshot {
            config,
            routes,
            upstreams,
            auth,
            limiter,
            metrics,
        }
    }
}

/// State that outlives any one configuration.
#[derive(Debug)]
pub struct Shared {
    /// The way to upstreams and the issuer.
    pub upstreams: Upstreams,
    /// Connect deadlines by target, refreshed with every snapshot.
    pub timeouts: ConnectTimeouts,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    keys: Mutex<Option<KeySource>>,
}

#[derive(Debug)]
struct KeySource {
    cache: Arc<KeyCache>,
    refresh: JoinHandle<()>,
}

/// Why a configuration could not be put in force.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CompileError(pub String);

impl Shared {
    /// Shared state with a new upstream client and metrics.
    ///
    /// # Errors
    ///
    /// The TLS provider refused its defaults (never with aws-lc-rs).
    pub fn new() -> Result<Shared, rustls::Error> {
        let timeouts = ConnectTimeouts::default();
        Ok(Shared {
            upstreams: Upstreams::new(timeouts.clone())?,
            timeouts,
            metrics: Arc::new(Metrics::new()),
            keys: Mutex::new(None),
        })
    }

    /// The issuer's key cache in force, if any.
    pub fn keys(&self) -> Option<Arc<KeyCache>> {
        lock(&self.keys).as_ref().map(|k| k.cache.clone())
    }

    /// Compiles `config` into a snapshot, keeping what `previous` had that still applies: the
    /// key cache when issuer, JWKS URL and algorithms are unchanged, and the limiter buckets of
    /// unchanged limits. A new issuer's keys are fetched before this returns when
    /// `fetch_new_keys` is set (reloads), so the swap never opens a window without keys;
    /// at start-up the first fetch runs in the background instead.
    ///
    /// # Errors
    ///
    /// A new issuer's keys could not be fetched (the previous configuration should stay).
    pub async fn compile(
        &self,
        config: Arc<Config>,
        previous: Option<&Snapshot>,
        fetch_new_keys: bool,
    ) -> Result<Snapshot, CompileError> {
        let keys = match &config.okta {
            None => None,
            Some(okta) => match self.keys().filter(|k| k.serves(okta)) {
                Some(same) => Some(same),
                None => {
                    let cache = KeyCache::with_metrics(
                        okta,
                        self.upstreams.client().clone(),
                        self.metrics.clone(),
                    );
                    if fetch_new_keys {
                        cache.fetch().await.map_err(|e| {
                            CompileError(format!("the new issuer's keys could not be fetched: {e}"))
                        })?;
                    }
                    let refresh = cache.spawn_refresh();
                    if let Some(old) = lock(&self.keys).replace(KeySource {
                        cache: cache.clone(),
                        refresh,
                    }) {
                        old.refresh.abort();
                    }
                    Some(cache)
                }
            },
        };
        let previous_limiter = previous.and_then(|p| p.limiter.as_deref());
        let limiter = RateLimiter::reusing(&config.rate_limits, previous_limiter)
            .with_remote(remote(&config.rate_limits, previous_limiter, &self.metrics));
        let snapshot = Snapshot::from_parts(config, keys, limiter, self.metrics.clone());
        self.timeouts
            .install(snapshot.upstreams.values().map(AsRef::as_ref));
        Ok(snapshot)
    }

    /// Stops the background key refresh.
    pub fn stop(&self) {
        if let Some(k) = lock(&self.keys).take() {
            k.refresh.abort();
        }
    }
}

/// Request extension: what the request path knows about a request so far. hyper's service
/// inserts it with the configuration in force and the connection's details, before the stack
/// runs (the snapshot layer inserts it instead when the stack is called without a connection).
/// What the layers learn goes into its [`Record`], which the access log shares: routing sets the
/// route, authentication the identity, each once, in one place.
/// One extension rather than one per item: every insert into a request's extension map boxes
/// its value, and the first allocates the map (docs/performance.md).
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The configuration in force for this request: one request sees one configuration.
    pub snapshot: Arc<Snapshot>,
    /// The client connection the request came on (none when the stack is called directly).
    pub conn: Option<ConnInfo>,
    /// What the layers have learnt: route, identity, upstream target (shared with the access
    /// log, which writes it out when the response leaves).
    pub record: Arc<Record>,
}

impl RequestContext {
    /// The context of a request arriving now, on `conn` if it came on a connection.
    pub fn new(live: &Live, conn: Option<ConnInfo>) -> RequestContext {
        RequestContext {
            snapshot: live.load_full(),
            conn,
            record: Arc::default(),
        }
    }

    /// The route matched (once routing has run).
    pub fn route(&self) -> Option<&Arc<CompiledRoute>> {
        self.record.route()
    }

    /// The verified identity (once authentication has run, on protected routes).
    pub fn identity(&self) -> Option<&Arc<Identity>> {
        self.record.identity.get()
    }

    /// The context of a request that went through the snapshot layer.
    pub fn of<B>(req: &Request<B>) -> Option<&RequestContext> {
        req.extensions().get::<RequestContext>()
    }

    /// The context and the matched route of a request that went through routing.
    pub fn routed<B>(req: &Request<B>) -> Option<(&RequestContext, &Arc<CompiledRoute>)> {
        let context = RequestContext::of(req)?;
        Some((context, context.route()?))
    }
}

/// A live configuration with no routes, upstreams or `[okta]` (for unit tests that need one).
#[cfg(test)]
pub(crate) fn empty_live() -> Live {
    let config = Config::from_toml_str("[server]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    Arc::new(ArcSwap::from_pointee(Snapshot::new(Arc::new(config), None)))
}

/// The layer: inserts a [`RequestContext`] with the snapshot in force, unless hyper's service
/// already did (it does for every request that comes on a connection).
pub fn layer<B>(live: Live) -> MapRequestLayer<impl Fn(Request<B>) -> Request<B> + Clone> {
    MapRequestLayer::new(move |mut req: Request<B>| {
        if RequestContext::of(&req).is_none() {
            req.extensions_mut()
                .insert(RequestContext::new(&live, None));
        }
        req
    })
}

/// The Redis side of `[rate_limits]` with `backend = "redis"`: the previous configuration's
/// connection when its settings are the same, a new one otherwise.
fn remote(
    limits: &RateLimits,
    previous: Option<&RateLimiter>,
    metrics: &Arc<Metrics>,
) -> Option<Arc<Remote>> {
    let Backend::Redis(settings) = &limits.backend else {
        metrics.ratelimit_redis_fallback.set(0);
        return None;
    };
    if let Some(same) = previous
        .and_then(RateLimiter::remote)
        .filter(|r| r.settings() == settings)
    {
        return Some(same.clone());
    }
    Some(Arc::new(Remote::connect(settings, metrics.clone())))
}
