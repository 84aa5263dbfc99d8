//! SPEC §3 last step: forward the request to a target of the route's upstream (502 / 504).
//!
//! Requires the `RequestContext` with its route (and the connection's details). Bodies stream
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

pub mod conns;
pub mod headers;
mod relay;
pub mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HOST, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower::Service;

use crate::access_log::Record;
use crate::auth::validate::Identity;
use crate::body::{self, Body};
use crate::config::{self, Target};
use crate::reject::Reject;
use crate::route::CompiledRoute;
use crate::server::ConnInfo;
use crate::snapshot::{RequestContext, Snapshot};
use conns::Affinity;
use upstream::{ConnectTimeouts, Connector};

/// The one pooled client shared by every upstream.
pub type HttpClient = Client<HttpsConnector<Connector>, Body>;

/// Builds the shared upstream client: HTTP/1.1 over TCP or rustls (aws-lc-rs), pooled.
///
/// # Errors
///
/// Only if the TLS provider refuses the default protocol versions, which aws-lc-rs never does.
pub fn client(timeouts: ConnectTimeouts) -> Result<HttpClient, rustls::Error> {
    Ok(pooled(connector(timeouts)?))
}

fn pooled(connector: HttpsConnector<Connector>) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(conns::IDLE_TIMEOUT)
        .build(connector)
}

/// TCP with the target's connect deadline, then rustls (aws-lc-rs, system roots) for `https`.
///
/// # Errors
///
/// As [`client`].
pub fn connector(timeouts: ConnectTimeouts) -> Result<HttpsConnector<Connector>, rustls::Error> {
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
    Ok(builder
        .https_or_http()
        .enable_http1()
        .wrap_connector(Connector::new(timeouts)))
}

/// Everything that reaches upstreams: the pooled client (h2 clients' requests, WebSocket
/// upgrades, the issuer's keys) and the connections HTTP/1.1 client connections carry along
/// ([`conns`]).
#[derive(Debug, Clone)]
pub struct Upstreams {
    client: HttpClient,
    conns: Arc<conns::Connections>,
}

impl Upstreams {
    /// Both ways to upstreams, opening connections with the same connector.
    ///
    /// # Errors
    ///
    /// As [`client`].
    pub fn new(timeouts: ConnectTimeouts) -> Result<Upstreams, rustls::Error> {
        let connector = connector(timeouts)?;
        Ok(Upstreams {
            client: pooled(connector.clone()),
            conns: Arc::new(conns::Connections::new(connector)),
        })
    }

    /// The pooled client.
    pub fn client(&self) -> &HttpClient {
        &self.client
    }

    /// The connections carried by client connections, and the idle ones.
    pub fn conns(&self) -> &Arc<conns::Connections> {
        &self.conns
    }
}

/// The innermost service: forwards to the upstream and maps its failures to 502 / 504.
#[derive(Debug, Clone)]
pub struct Forward {
    // Behind an `Arc`: the stack is cloned per request, and cloning the client itself means a
    // handful of reference counts (pool, connector, executor, timers) each time.
    upstreams: Arc<Upstreams>,
}

impl Forward {
    /// Forwards through `upstreams`.
    pub fn new(upstreams: Upstreams) -> Forward {
        Forward {
            upstreams: Arc::new(upstreams),
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
        let prepared = match prepare(req) {
            Ok(prepared) => prepared,
            Err(reject) => return Box::pin(std::future::ready(Ok(reject.into_response()))),
        };
        let Prepared {
            req,
            target,
            timeout,
            affinity,
            websocket,
            finish,
        } = prepared;
        match affinity {
            // The carried connection keeps one timer for the deadlines of all its requests.
            // The future kept for the request is the send itself and what the answer needs.
            Some(affinity) => Box::pin(Forwarding {
                sending: self.upstreams.conns.send(affinity, target, req, timeout),
                finish,
            }),
            None => Box::pin(through_pool(
                self.upstreams.clone(),
                req,
                timeout,
                websocket,
                finish,
            )),
        }
    }
}

/// The client address of a request that came on no connection (the stack called directly).
static LOOPBACK: HeaderValue = HeaderValue::from_static("127.0.0.1");

/// A request ready for its upstream, and what its answer needs.
struct Prepared {
    req: Request<Body>,
    target: Target,
    /// The upstream's deadline for the response head.
    timeout: Duration,
    /// The upstream connection the client connection carries, if the request may use it.
    affinity: Option<Arc<Affinity>>,
    websocket: bool,
    finish: Finish,
}

/// Takes the request's context and rewrites the request for a target of its route's upstream.
fn prepare(mut req: Request<Body>) -> Result<Prepared, Reject> {
    let Some(RequestContext {
        snapshot,
        conn,
        record,
    }) = req.extensions_mut().remove::<RequestContext>()
    else {
        tracing::error!("forward reached without a request context");
        return Err(Reject::Internal);
    };
    let Some(route) = record.route() else {
        tracing::error!("forward reached without a matched route");
        return Err(Reject::Internal);
    };
    let identity = record.identity.get().map(Arc::as_ref);
    let Some(target) = route.upstream.next_target() else {
        return Err(Reject::UpstreamFailed);
    };
    let _ = record.upstream.set(target.clone());
    let (affinity, websocket) = rewrite(
        &mut req,
        route,
        target,
        &snapshot.config.forward,
        conn,
        identity,
    )?;
    Ok(Prepared {
        req,
        target: target.clone(),
        timeout: route.upstream.timeout,
        affinity,
        websocket,
        finish: Finish { record, snapshot },
    })
}

pin_project_lite::pin_project! {
    /// A request sent over the upstream connection its client connection carries, until the
    /// response head.
    struct Forwarding<F> {
        #[pin]
        sending: F,
        finish: Finish,
    }
}

impl<F> Future for Forwarding<F>
where
    F: Future<Output = Result<Response<conns::Driven>, conns::SendError>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let sent = std::task::ready!(this.sending.poll(cx));
        let response = this
            .finish
            .answer(sent.map(|r| (r.map(Body::new), false)))
            .unwrap_or_else(Reject::into_response);
        Poll::Ready(Ok(response))
    }
}

/// Sends through the pooled client: h2 clients' requests and WebSocket upgrades.
async fn through_pool(
    upstreams: Arc<Upstreams>,
    mut req: Request<Body>,
    timeout: Duration,
    websocket: bool,
    finish: Finish,
) -> Result<Response<Body>, Infallible> {
    let mut client_upgrade = websocket.then(|| {
        headers::restore_websocket_upgrade(req.headers_mut());
        hyper::upgrade::on(&mut req)
    });
    let sent = match tokio::time::timeout(timeout, upstreams.client.request(req)).await {
        Err(_) => Err(conns::SendError::Timeout),
        Ok(Ok(mut response)) => {
            let upgraded =
                response.status() == StatusCode::SWITCHING_PROTOCOLS && client_upgrade.is_some();
            if let (Some(client), true) = (client_upgrade.take(), upgraded) {
                let upstream = hyper::upgrade::on(&mut response);
                tokio::spawn(tunnel(client, upstream));
            }
            Ok((response.map(body::boxed), upgraded))
        }
        Ok(Err(e)) if e.is_connect() => Err(conns::SendError::Connect(e.into())),
        Ok(Err(e)) => Err(conns::SendError::Http(e.into())),
    };
    Ok(finish.answer(sent).unwrap_or_else(Reject::into_response))
}

/// What the answer to a forwarded request needs: its record, with the route and target (for
/// the log and the metrics of a failure), and the configuration it was served under.
struct Finish {
    record: Arc<Record>,
    snapshot: Arc<Snapshot>,
}

impl Finish {
    /// The client's response to what the upstream sent back (and whether it switched to a
    /// WebSocket): 502 / 504 for a failure, the upstream's response without its hop-by-hop
    /// headers otherwise.
    fn answer(
        &self,
        sent: Result<(Response<Body>, bool), conns::SendError>,
    ) -> Result<Response<Body>, Reject> {
        let Finish { record, snapshot } = self;
        // Both set by `prepare`.
        let route = record.route();
        let upstream = route.map_or("", |r| r.upstream.name.as_str());
        let target = record.upstream.get().map(tracing::field::display);
        match sent {
            Err(conns::SendError::Timeout) => {
                let timeout = route.map(|r| tracing::field::debug(r.upstream.timeout));
                tracing::warn!(upstream, target, timeout, "upstream timed out");
                upstream_error(snapshot, upstream, "timeout");
                Err(Reject::UpstreamTimeout)
            }
            Err(e) => {
                let kind = e.kind();
                tracing::warn!(upstream, target, kind, error = %e.chain(), "upstream failed");
                upstream_error(snapshot, upstream, kind);
                Err(Reject::UpstreamFailed)
            }
            Ok((response, upgraded)) => {
                let (mut parts, body) = response.into_parts();
                headers::remove_hop_by_hop(&mut parts.headers);
                if upgraded {
                    headers::restore_websocket_upgrade(&mut parts.headers);
                    return Ok(Response::from_parts(parts, body));
                }
                // The upstream's HTTP version is its own hop's; hyper answers the client in the
                // version of the client's connection.
                parts.version = Version::HTTP_11;
                if parts.status == StatusCode::SWITCHING_PROTOCOLS {
                    // A 101 nobody asked for cannot be relayed: the client did not offer to
                    // switch.
                    tracing::warn!(upstream, target, "unsolicited 101 from upstream");
                    return Err(Reject::UpstreamFailed);
                }
                Ok(Response::from_parts(parts, body))
            }
        }
    }
}

/// Rewrites `req` for `target`: the upstream URI, HTTP/1.1, and the headers
/// (`headers::prepare_request`). Returns the upstream connection the client connection
/// carries, when this request may use it, and whether the request asks for a WebSocket
/// upgrade. Synchronous, like all of `prepare`: none of its locals become part of the
/// future kept across the upstream round trip.
fn rewrite(
    req: &mut Request<Body>,
    route: &CompiledRoute,
    target: &Target,
    forward: &config::Forward,
    conn: Option<ConnInfo>,
    identity: Option<&Identity>,
) -> Result<(Option<Arc<Affinity>>, bool), Reject> {
    let path = upstream_path(&route.route, req.uri().path());
    let pq = match (req.uri().path_and_query(), req.uri().query()) {
        // The (normalised) path goes up unchanged: share it rather than format and parse it.
        (Some(pq), _) if path.len() == req.uri().path().len() => Ok(pq.clone()),
        (_, Some(q)) => PathAndQuery::try_from(format!("{path}?{q}")),
        (_, None) => PathAndQuery::try_from(path.to_owned()),
    }
    .map_err(|_| Reject::Internal)?;

    let host_header = req.headers().get(HOST).cloned();
    let host_sent = host_header.is_some();
    let host = host_header.or_else(|| req.uri().authority().and_then(|a| a.as_str().parse().ok()));
    let origin = headers::Origin {
        client_ip: conn.as_ref().map_or(&LOOPBACK, |c| &c.client_ip),
        tls: conn.as_ref().is_some_and(|c| c.tls),
        host: host.as_ref(),
        host_sent,
    };
    let upgrade = headers::prepare_request(req.headers_mut(), origin, forward, identity);
    let websocket = headers::is_websocket_upgrade(req, upgrade.as_ref());
    // An HTTP/1.1 client connection carries its upstream connection along; h2 clients (many
    // requests at once on one connection) and WebSocket upgrades use the pool.
    let affinity = conn
        .map(|c| c.affinity)
        .filter(|_| !websocket && req.version() != Version::HTTP_2);
    // The client speaks HTTP/1.1 to upstreams whatever the client spoke to us.
    *req.version_mut() = Version::HTTP_11;
    // A carried connection is already to `target` and writes the origin form the upstream
    // reads; the pooled client picks its connection by the absolute form (and writes the
    // origin form itself).
    *req.uri_mut() = if affinity.is_some() {
        Uri::from(pq)
    } else {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(target.scheme.clone());
        parts.authority = Some(target.authority.clone());
        parts.path_and_query = Some(pq);
        Uri::from_parts(parts).map_err(|_| Reject::Internal)?
    };
    Ok((affinity, websocket))
}

fn upstream_error(snapshot: &Snapshot, upstream: &str, kind: &'static str) {
    snapshot
        .metrics
        .upstream_errors
        .get_or_create(&crate::metrics::UpstreamErrorLabels {
            upstream: upstream.to_owned(),
            kind,
        })
        .inc();
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
