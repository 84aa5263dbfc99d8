//! SPEC §3 last step: forward the request to a target of the route's upstream (502 / 504).
//!
//! Requires `MatchedRoute`, the `Arc<Snapshot>` and the connection's `ConnInfo`. Bodies stream
//! in both directions: the request body is handed to the client as it arrives, and the
//! upstream's body is handed back to hyper frame by frame; nothing is buffered whole.
//!
//! Framing towards the upstream is always recomputed by the client from the body itself (hyper
//! writes `Content-Length` for a body of known size and chunked encoding otherwise), so no
//! framing header a client sent is ever relayed as is.
//!
//! WebSocket upgrades (`GET` with `Upgrade: websocket`) pass through (SPEC §3): the upgrade
//! headers are kept for the upstream, and once it answers 101 the two connections are joined
//! byte for byte. Every other upgrade (notably `h2c`, whose pass-through lets a client speak h2
//! directly to the upstream past the gateway) is stripped like any hop-by-hop header.

pub mod headers;
pub mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower::Service;

use crate::auth::validate::Identity;
use crate::body::{self, Body};
use crate::reject::Reject;
use crate::route::MatchedRoute;
use crate::server::ConnInfo;
use crate::snapshot::Snapshot;
use upstream::{ConnectTimeouts, Connector};

/// The one pooled client shared by every upstream.
pub type HttpClient = Client<HttpsConnector<Connector>, Body>;

/// Builds the shared upstream client: HTTP/1.1 over TCP or rustls (aws-lc-rs), pooled.
///
/// # Errors
///
/// Only if the TLS provider refuses the default protocol versions, which aws-lc-rs never does.
pub fn client(timeouts: ConnectTimeouts) -> Result<HttpClient, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = match hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider.clone())
    {
        Ok(b) => b,
        Err(e) => {
            // A container without a CA bundle can still proxy to plain-http upstreams.
            tracing::warn!(error = %e, "no system CA certificates: https upstreams will fail verification");
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls)
        }
    };
    let connector = builder
        .https_or_http()
        .enable_http1()
        .wrap_connector(Connector::new(timeouts));
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .build(connector))
}

/// The innermost service: forwards to the upstream and maps its failures to 502 / 504.
#[derive(Debug, Clone)]
pub struct Forward {
    // Behind an `Arc`: the stack is cloned per request, and cloning the client itself means a
    // handful of reference counts (pool, connector, executor, timers) each time.
    client: Arc<HttpClient>,
}

impl Forward {
    /// Forwards through `client`.
    pub fn new(client: HttpClient) -> Forward {
        Forward {
            client: Arc::new(client),
        }
    }
}

impl Service<Request<Body>> for Forward {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The legacy client is always ready: it queues on its pool internally.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let client = self.client.clone();
        Box::pin(async move {
            Ok(forward(&client, req)
                .await
                .unwrap_or_else(Reject::into_response))
        })
    }
}

async fn forward(client: &HttpClient, mut req: Request<Body>) -> Result<Response<Body>, Reject> {
    let (Some(MatchedRoute(route)), Some(snapshot)) = (
        req.extensions_mut().remove::<MatchedRoute>(),
        req.extensions().get::<Arc<Snapshot>>().cloned(),
    ) else {
        tracing::error!("forward reached without a matched route or snapshot");
        return Err(Reject::Internal);
    };
    let conn = req
        .extensions()
        .get::<ConnInfo>()
        .map(|c| (c.remote.ip(), c.tls));
    let Some(target) = route.upstream.next_target() else {
        return Err(Reject::UpstreamFailed);
    };

    if let Some(record) = crate::access_log::Record::of(&req) {
        let _ = record.upstream.set(target.to_string());
    }
    let path = upstream_path(&route.route, req.uri().path());
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let uri = Uri::builder()
        .scheme(target.scheme.clone())
        .authority(target.authority.clone())
        .path_and_query(PathAndQuery::try_from(pq).map_err(|_| Reject::Internal)?)
        .build()
        .map_err(|_| Reject::Internal)?;

    let websocket = headers::is_websocket_upgrade(&req);
    let host = req
        .headers()
        .get(HOST)
        .cloned()
        .or_else(|| req.uri().authority().and_then(|a| a.as_str().parse().ok()));
    let origin = headers::Origin {
        client_ip: conn.map_or([127, 0, 0, 1].into(), |(ip, _)| ip),
        tls: conn.is_some_and(|(_, tls)| tls),
        host: host.as_ref(),
    };
    let identity = req.extensions().get::<Arc<Identity>>().cloned();
    headers::prepare_request(
        req.headers_mut(),
        origin,
        &snapshot.config.forward,
        identity.as_deref(),
    );
    // The client speaks HTTP/1.1 to upstreams whatever the client spoke to us.
    *req.version_mut() = Version::HTTP_11;
    *req.uri_mut() = uri;
    let client_upgrade = websocket.then(|| {
        headers::restore_websocket_upgrade(req.headers_mut());
        hyper::upgrade::on(&mut req)
    });

    let deadline = route.upstream.timeout;
    let upstream_error = |kind: &'static str| {
        snapshot
            .metrics
            .upstream_errors
            .get_or_create(&crate::metrics::UpstreamErrorLabels {
                upstream: route.upstream.name.clone(),
                kind,
            })
            .inc();
    };
    match tokio::time::timeout(deadline, client.request(req)).await {
        Err(_) => {
            tracing::warn!(upstream = %route.upstream.name, %target, ?deadline, "upstream timed out");
            upstream_error("timeout");
            Err(Reject::UpstreamTimeout)
        }
        Ok(Err(e)) => {
            let kind = error_kind(&e);
            tracing::warn!(
                upstream = %route.upstream.name,
                %target,
                kind,
                error = %error_chain(&e),
                "upstream failed"
            );
            upstream_error(kind);
            Err(Reject::UpstreamFailed)
        }
        Ok(Ok(mut response)) => {
            let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
            if let (Some(client_upgrade), true) = (client_upgrade, switching) {
                let upstream_upgrade = hyper::upgrade::on(&mut response);
                tokio::spawn(tunnel(client_upgrade, upstream_upgrade));
                let (mut parts, incoming) = response.into_parts();
                headers::remove_hop_by_hop(&mut parts.headers);
                headers::restore_websocket_upgrade(&mut parts.headers);
                return Ok(Response::from_parts(parts, body::boxed(incoming)));
            }
            let (mut parts, incoming) = response.into_parts();
            headers::remove_hop_by_hop(&mut parts.headers);
            // The upstream's HTTP version is its own hop's; hyper answers the client in the
            // version of the client's connection.
            parts.version = Version::HTTP_11;
            if switching {
                // A 101 nobody asked for cannot be relayed: the client did not offer to switch.
                tracing::warn!(upstream = %route.upstream.name, %target, "unsolicited 101 from upstream");
                return Err(Reject::UpstreamFailed);
            }
            Ok(Response::from_parts(parts, body::boxed(incoming)))
        }
    }
}

/// Joins the client's and the upstream's upgraded connections until either side closes.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "websocket upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "websocket tunnel ended with an error");
    }
}

/// The path the upstream receives: the normalised path, minus the route prefix if asked.
fn upstream_path<'a>(route: &crate::config::Route, path: &'a str) -> &'a str {
    if !route.strip_prefix || route.path == "/" {
        return path;
    }
    match path.get(route.path.len()..) {
        Some(rest) if rest.starts_with('/') => rest,
        _ => "/",
    }
}

/// `refused`, `connect_timeout`, `connect_error` or `reset`, for metrics.
fn error_kind(e: &hyper_util::client::legacy::Error) -> &'static str {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(cause) = source {
        if cause.is::<upstream::ConnectTimeout>() {
            return "connect_timeout";
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return "refused";
        }
        source = cause.source();
    }
    if e.is_connect() {
        "connect_error"
    } else {
        "reset"
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Access, Route};

    #[test]
    fn strip_prefix_keeps_a_leading_slash() {
        let mut route = Route {
            path: "/api/orders".into(),
            methods: None,
            upstream: "u".into(),
            access: Access::Public,
            strip_prefix: true,
        };
        assert_eq!(upstream_path(&route, "/api/orders/7"), "/7");
        assert_eq!(upstream_path(&route, "/api/orders/"), "/");
        assert_eq!(upstream_path(&route, "/api/orders"), "/");
        route.strip_prefix = false;
        assert_eq!(upstream_path(&route, "/api/orders/7"), "/api/orders/7");
        route.path = "/".into();
        route.strip_prefix = true;
        assert_eq!(upstream_path(&route, "/x/y"), "/x/y");
    }
}
