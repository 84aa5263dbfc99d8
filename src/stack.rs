//! The layer order of SPEC §3, decided here and nowhere else.
//!
//! In a `ServiceBuilder` the layer added first sees the request first, so this file reads in
//! the order a request travels.

use std::convert::Infallible;

use http::header::AUTHORIZATION;
use http::{Request, Response};
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::body::Body;
use crate::proxy::{Forward, Upstreams};
use crate::snapshot::Live;
use std::sync::Arc;

use crate::metrics::Metrics;
use crate::{access_log, auth, authz, normalize, ratelimit, route, snapshot};

/// The whole request path as one service; it never fails (refusals are responses).
pub type GatewayService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// Builds the gateway's request path over the live configuration, the way to upstreams and the
/// process's metrics.
pub fn build(live: Live, upstreams: Upstreams, metrics: Arc<Metrics>) -> GatewayService {
    let service = ServiceBuilder::new()
        // Outermost: mark the bearer token sensitive before anything can log the request.
        .layer(SetSensitiveRequestHeadersLayer::new([AUTHORIZATION]))
        // Load the configuration in force once, so one request sees one configuration (hyper's
        // service has already done so for requests from a connection; server::HyperService).
        .layer(snapshot::layer(live))
        // Every request gets one access-log line and its metrics, whatever happens below.
        .layer(access_log::layer(metrics))
        // SPEC §3 step 1, before routing, so routes are matched on the normalised path; also
        // refuses ambiguous framing before any other layer looks at the request.
        .layer(normalize::layer())
        // Step 2: 404 / 405; sets the request context's route.
        .layer(route::layer())
        // Step 3: protected routes need a valid Okta access token (400 / 401 / 503); sets the
        // context's identity. Before authz, which decides on that identity.
        .layer(auth::layer())
        // Step 4: the route's groups and scopes (403).
        .layer(authz::layer())
        // Step 5: after authz, so refused callers spend no quota; 429, and RateLimit-* on
        // every response that passes.
        .layer(ratelimit::layer())
        // Last: 502 / 504; streams both ways.
        .service(Forward::new(upstreams));
    BoxCloneSyncService::new(service)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arc_swap::ArcSwap;
    use http::{Method, StatusCode};
    use tower::ServiceExt as _;

    use super::*;
    use crate::auth::jwks::KeyCache;
    use crate::body;
    use crate::config::Config;
    use crate::issuer::{Issuer, IssuerConfig};
    use crate::proxy::upstream::ConnectTimeouts;
    use crate::snapshot::Snapshot;

    /// The issuer's keys as the stack holds them.
    #[derive(Clone, Copy, PartialEq)]
    enum Keys {
        Fetched,
        NeverFetched,
        /// No key cache at all: a snapshot no valid configuration makes (`[okta]` is required
        /// once a route is protected), to check the auth layer still fails closed.
        NoCache,
    }

    async fn stack(issuer: &str, keys: Keys) -> GatewayService {
        // Port 1 on loopback: nothing listens there, so connecting is refused.
        let config = Config::from_toml_str(&format!(
            r#"
            [server]
            listen = "127.0.0.1:0"
            [okta]
            issuer = "{issuer}"
            audience = "api://test"
            [upstreams.nowhere]
            targets = ["http://127.0.0.1:1"]
            [[routes]]
            path = "/public"
            methods = ["GET"]
            upstream = "nowhere"
            public = true
            [[routes]]
            path = "/private"
            upstream = "nowhere"
            "#
        ))
        .unwrap();
        let timeouts = ConnectTimeouts::default();
        let upstreams = crate::proxy::Upstreams::new(timeouts.clone()).unwrap();
        let cache = KeyCache::new(config.okta.as_ref().unwrap(), upstreams.client().clone());
        if keys == Keys::Fetched {
            cache.fetch().await.unwrap();
        }
        let cache = (keys != Keys::NoCache).then_some(cache);
        let snapshot = Snapshot::new(Arc::new(config), cache);
        timeouts.install(snapshot.upstreams.values().map(AsRef::as_ref));
        build(
            Arc::new(ArcSwap::from_pointee(snapshot)),
            upstreams,
            Arc::new(crate::metrics::Metrics::new()),
        )
    }

    async fn status(
        stack: &GatewayService,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> StatusCode {
        let mut req = http::Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let response = stack
            .clone()
            .oneshot(req.body(body::empty()).unwrap())
            .await
            .unwrap();
        response.status()
    }

    /// One request per SPEC §3 row this stack answers, through the real layer order.
    #[tokio::test]
    async fn each_spec_row_gets_its_status_through_the_whole_stack() {
        let issuer = Issuer::start(
            ([127, 0, 0, 1], 0).into(),
            IssuerConfig::single_user("test", "api://test", "alice", &[]),
        )
        .await
        .unwrap();
        let s = stack(issuer.issuer_url(), Keys::Fetched).await;
        let good = issuer.token_for_user("alice");
        let rows = [
            (Method::GET, "/public/%2Fetc", None, StatusCode::BAD_REQUEST),
            (Method::GET, "/../public", None, StatusCode::BAD_REQUEST),
            (Method::GET, "/elsewhere", None, StatusCode::NOT_FOUND),
            (
                Method::POST,
                "/public",
                None,
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (Method::GET, "/private", None, StatusCode::UNAUTHORIZED),
            (
                Method::GET,
                "/private",
                Some("a.b.c"),
                StatusCode::UNAUTHORIZED,
            ),
            (
                Method::GET,
                "/private?access_token=x",
                Some(good.as_str()),
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::GET,
                "/private",
                Some(good.as_str()),
                StatusCode::BAD_GATEWAY,
            ),
            (Method::GET, "/public/x", None, StatusCode::BAD_GATEWAY),
        ];
        for (method, path, token, want) in rows {
            assert_eq!(
                status(&s, method.clone(), path, token).await,
                want,
                "{method} {path}"
            );
        }
        // No key ever fetched, or no key cache at all: protected routes answer 503, public
        // ones still work.
        for keys in [Keys::NeverFetched, Keys::NoCache] {
            let cold = stack(issuer.issuer_url(), keys).await;
            assert_eq!(
                status(&cold, Method::GET, "/private", Some(&good)).await,
                StatusCode::SERVICE_UNAVAILABLE
            );
            assert_eq!(
                status(&cold, Method::GET, "/public/x", None).await,
                StatusCode::BAD_GATEWAY
            );
        }
    }
}
