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
use crate::proxy::{Forward, HttpClient};
use crate::snapshot::Live;
use crate::{auth, normalize, route, snapshot};

/// The whole request path as one service; it never fails (refusals are responses).
pub type GatewayService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// Builds the gateway's request path over the live configuration and the shared client.
pub fn build(live: Live, client: HttpClient) -> GatewayService {
    let service = ServiceBuilder::new()
        // Outermost: mark the bearer token sensitive before anything can log the request.
        .layer(SetSensitiveRequestHeadersLayer::new([AUTHORIZATION]))
        // Load the configuration in force once, so one request sees one configuration.
        .layer(snapshot::layer(live))
        // SPEC §3 step 1, before routing, so routes are matched on the normalised path; also
        // refuses ambiguous framing before any other layer looks at the request.
        .layer(normalize::layer())
        // Step 2: 404 / 405; inserts MatchedRoute.
        .layer(route::layer())
        // Step 3: protected routes need a caller (fails closed until token checks exist).
        .layer(auth::layer())
        // Last: 502 / 504; streams both ways.
        .service(Forward::new(client));
    BoxCloneSyncService::new(service)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arc_swap::ArcSwap;
    use http::{Method, StatusCode};
    use tower::ServiceExt as _;

    use super::*;
    use crate::body;
    use crate::config::Config;
    use crate::proxy::upstream::ConnectTimeouts;
    use crate::snapshot::Snapshot;

    /// One request per SPEC §3 row this stack answers, through the real layer order.
    #[tokio::test]
    async fn each_spec_row_gets_its_status_through_the_whole_stack() {
        // Port 1 on loopback: nothing listens there, so connecting is refused.
        let config = Config::from_toml_str(
            r#"
            [server]
            listen = "127.0.0.1:0"
            [okta]
            issuer = "https://id.example/oauth2/x"
            audience = "api://x"
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
            "#,
        )
        .unwrap();
        let timeouts = ConnectTimeouts::default();
        let snapshot = Snapshot::new(Arc::new(config));
        timeouts.install(snapshot.upstreams.values().map(AsRef::as_ref));
        let live: Live = Arc::new(ArcSwap::from_pointee(snapshot));
        let stack = build(live, crate::proxy::client(timeouts).unwrap());

        let rows = [
            (Method::GET, "/public/%2Fetc", StatusCode::BAD_REQUEST),
            (Method::GET, "/../public", StatusCode::BAD_REQUEST),
            (Method::GET, "/elsewhere", StatusCode::NOT_FOUND),
            (Method::POST, "/public", StatusCode::METHOD_NOT_ALLOWED),
            (Method::GET, "/private", StatusCode::UNAUTHORIZED),
            (Method::GET, "/public/x", StatusCode::BAD_GATEWAY),
        ];
        for (method, path, want) in rows {
            let req = http::Request::builder()
                .method(method.clone())
                .uri(path)
                .body(body::empty())
                .unwrap();
            let response = stack.clone().oneshot(req).await.unwrap();
            assert_eq!(response.status(), want, "{method} {path}");
        }
    }
}
