//! One configuration compiled for serving, and the live holder that reloads swap.
//!
//! A request loads the live [`Snapshot`] once (in the outermost layer) and carries the
//! `Arc<Snapshot>` in its extensions, so a reload in the middle of a request never mixes two
//! configurations (STYLE rule 8).

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::Request;
use tower::util::MapRequestLayer;

use crate::auth::Authenticator;
use crate::auth::jwks::KeyCache;
use crate::config::Config;
use crate::proxy::upstream::UpstreamPool;
use crate::ratelimit::RateLimiter;
use crate::route::{CompiledRoute, RouteTable};

/// A validated configuration, compiled: route table and upstream pools.
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
}

/// The configuration in force; swapped whole on reload.
pub type Live = Arc<ArcSwap<Snapshot>>;

impl Snapshot {
    /// Compiles a validated configuration; `keys` holds the signing keys of its `[okta]`
    /// issuer (kept by the caller so that they outlive a reload).
    pub fn new(config: Arc<Config>, keys: Option<Arc<KeyCache>>) -> Snapshot {
        let upstreams: BTreeMap<String, Arc<UpstreamPool>> = config
            .upstreams
            .iter()
            .map(|(name, u)| (name.clone(), Arc::new(UpstreamPool::new(u))))
            .collect();
        let routes = RouteTable::new(config.routes.iter().map(|r| {
            Arc::new(CompiledRoute {
                route: r.clone(),
                upstream: upstreams[&r.upstream].clone(),
            })
        }));
        let auth = match (&config.okta, keys) {
            (Some(okta), Some(keys)) => Some(Arc::new(Authenticator::new(okta, keys))),
            _ => None,
        };
        let limiter =
            Some(Arc::new(RateLimiter::new(&config.rate_limits))).filter(|l| !l.is_empty());
        Snapshot {
            config,
            routes,
            upstreams,
            auth,
            limiter,
        }
    }
}

/// The layer: inserts the snapshot in force into the request's extensions.
pub fn layer<B>(live: Live) -> MapRequestLayer<impl Fn(Request<B>) -> Request<B> + Clone> {
    MapRequestLayer::new(move |mut req: Request<B>| {
        req.extensions_mut().insert(live.load_full());
        req
    })
}
