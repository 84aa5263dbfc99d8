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
