//! SPEC §3 step 2: match the normalised path to a route (404 / 405 + `Allow`).
//!
//! Requires the [`RequestContext`] extension and a normalised URI; sets its route.
//!
//! Prefixes match on segment boundaries (`/api/orders` matches `/api/orders`, `/api/orders/` and
//! `/api/orders/7`, never `/api/ordersX`) and the longest matching prefix wins. The methods are
//! judged on that longest prefix alone: if none of its routes allows the method the answer is
//! 405, never a fall-back to a shorter prefix, so a public `/api` route cannot swallow a `DELETE`
//! meant for a protected `/api/orders`.

use std::collections::HashMap;
use std::sync::Arc;

use http::header::HeaderValue;
use http::{Method, Request, Response};
use tower_http::validate_request::{ValidateRequest, ValidateRequestHeaderLayer};

use crate::access_log::Routed;
use crate::body::Body;
use crate::config::Route;
use crate::proxy::upstream::UpstreamPool;
use crate::reject::Reject;
use crate::snapshot::RequestContext;

/// A route ready for requests: its configuration and its upstream.
#[derive(Debug)]
pub struct CompiledRoute {
    /// The route as configured.
    pub route: Route,
    /// The upstream it forwards to.
    pub upstream: Arc<UpstreamPool>,
    /// Its request count and duration series.
    pub metrics: crate::metrics::RouteMetrics,
}

/// All routes of one configuration, indexed by path.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Hashed with foldhash rather than SipHash: every request looks up one or more of its
    /// path's prefixes here, and the table is fixed by the configuration (a client's paths are
    /// looked up, never inserted, so no flooding of this table is possible).
    by_path: HashMap<String, PathEntry, foldhash::fast::RandomState>,
}

#[derive(Debug)]
struct PathEntry {
    routes: Vec<Arc<CompiledRoute>>,
    /// `Allow` for a 405; `None` when some route here takes any method.
    allow: Option<HeaderValue>,
}

// === impl RouteTable ===

impl RouteTable {
    /// Indexes `routes` by path. Route paths were validated (normal form, no duplicates).
    pub fn new(routes: impl IntoIterator<Item = Arc<CompiledRoute>>) -> RouteTable {
        let mut grouped: HashMap<String, Vec<Arc<CompiledRoute>>> = HashMap::new();
        for r in routes {
            grouped.entry(r.route.path.clone()).or_default().push(r);
        }
        let by_path = grouped
            .into_iter()
            .map(|(path, routes)| {
                let allow = allow_header(&routes);
                (path, PathEntry { routes, allow })
            })
            .collect();
        RouteTable { by_path }
    }

    /// Finds the route for a normalised path and a method.
    ///
    /// # Errors
    ///
    /// [`Reject::NoRoute`] or [`Reject::MethodNotAllowed`].
    pub fn find(&self, method: &Method, path: &str) -> Result<&Arc<CompiledRoute>, Reject> {
        let entry = self.longest_prefix(path).ok_or(Reject::NoRoute)?;
        entry
            .routes
            .iter()
            .find(|r| r.route.methods.as_ref().is_none_or(|m| m.contains(method)))
            .ok_or_else(|| Reject::MethodNotAllowed {
                allow: entry
                    .allow
                    .clone()
                    .unwrap_or_else(|| HeaderValue::from_static("")),
            })
    }

    /// Walks the path's segment-boundary prefixes from longest to shortest: one hash lookup per
    /// segment, whatever the number of routes.
    fn longest_prefix(&self, path: &str) -> Option<&PathEntry> {
        let mut candidate = path;
        loop {
            if let Some(entry) = self.by_path.get(candidate) {
                return Some(entry);
            }
            if candidate == "/" {
                return None;
            }
            candidate = match candidate.rfind('/') {
                Some(0) | None => "/",
                Some(i) => &candidate[..i],
            };
        }
    }
}

fn allow_header(routes: &[Arc<CompiledRoute>]) -> Option<HeaderValue> {
    let mut methods: Vec<&str> = Vec::new();
    for r in routes {
        for m in r.route.methods.as_ref()? {
            if !methods.contains(&m.as_str()) {
                methods.push(m.as_str());
            }
        }
    }
    methods.sort_unstable();
    HeaderValue::from_str(&methods.join(", ")).ok()
}

/// The layer: refuses with 404/405 or sets the request context's route.
pub fn layer() -> ValidateRequestHeaderLayer<MatchRoute> {
    ValidateRequestHeaderLayer::custom(MatchRoute)
}

/// [`ValidateRequest`] implementation behind [`layer`].
#[derive(Debug, Clone, Copy)]
pub struct MatchRoute;

impl<B> ValidateRequest<B> for MatchRoute {
    type ResponseBody = Body;

    fn validate(&mut self, req: &mut Request<B>) -> Result<(), Response<Body>> {
        let Some(context) = RequestContext::of(req) else {
            tracing::error!("route layer reached without a request context");
            return Err(Reject::Internal.into_response());
        };
        let matched = context
            .snapshot
            .routes
            .find(req.method(), req.uri().path())
            .map_err(Reject::into_response)?;
        let _ = context.record.routed.set(Routed {
            uri: req.uri().clone(),
            route: matched.clone(),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::snapshot::Snapshot;

    fn table(toml_routes: &str) -> RouteTable {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[okta]\nissuer = \"https://id.example/oauth2/x\"\naudience = \"api://x\"\n[upstreams.u]\ntargets = [\"http://127.0.0.1:1\"]\n{toml_routes}"
        );
        let config = Config::from_toml_str(&text).unwrap();
        Snapshot::new(Arc::new(config), None).routes
    }

    fn found(t: &RouteTable, m: &Method, p: &str) -> Result<String, Reject> {
        t.find(m, p).map(|r| r.route.path.clone())
    }

    #[test]
    fn prefixes_match_on_segment_boundaries_and_the_longest_wins() {
        let t = table(
            r#"
            [[routes]]
            path = "/api"
            upstream = "u"
            public = true
            [[routes]]
            path = "/api/orders"
            upstream = "u"
            public = true
            "#,
        );
        assert_eq!(
            found(&t, &Method::GET, "/api/orders"),
            Ok("/api/orders".into())
        );
        assert_eq!(
            found(&t, &Method::GET, "/api/orders/"),
            Ok("/api/orders".into())
        );
        assert_eq!(
            found(&t, &Method::GET, "/api/orders/7/x"),
            Ok("/api/orders".into())
        );
        assert_eq!(found(&t, &Method::GET, "/api/ordersX"), Ok("/api".into()));
        assert_eq!(found(&t, &Method::GET, "/api/"), Ok("/api".into()));
        assert_eq!(found(&t, &Method::GET, "/apix"), Err(Reject::NoRoute));
        assert_eq!(found(&t, &Method::GET, "/"), Err(Reject::NoRoute));
    }

    #[test]
    fn the_root_route_matches_everything_else() {
        let t = table("[[routes]]\npath = \"/\"\nupstream = \"u\"\npublic = true\n");
        assert_eq!(found(&t, &Method::GET, "/anything/at/all"), Ok("/".into()));
        assert_eq!(found(&t, &Method::GET, "/"), Ok("/".into()));
    }

    #[test]
    fn methods_are_judged_on_the_longest_prefix_only() {
        let t = table(
            r#"
            [[routes]]
            path = "/api"
            upstream = "u"
            public = true
            [[routes]]
            path = "/api/orders"
            methods = ["POST", "GET"]
            upstream = "u"
            [[routes]]
            path = "/api/orders"
            methods = ["PUT"]
            upstream = "u"
            "#,
        );
        assert_eq!(
            found(&t, &Method::PUT, "/api/orders/1"),
            Ok("/api/orders".into())
        );
        let err = found(&t, &Method::DELETE, "/api/orders/1").unwrap_err();
        assert_eq!(
            err,
            Reject::MethodNotAllowed {
                allow: HeaderValue::from_static("GET, POST, PUT")
            }
        );
    }
}
