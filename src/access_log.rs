//! One structured access-log line per request (SPEC §6), and the per-request metrics.
//!
//! The layer is the outermost of the request path after the snapshot layer: it keeps the
//! [`Record`] of the request's context (`snapshot::RequestContext`), which the layers below fill
//! in (normalised path and route, subject, upstream target), and when the response leaves it
//! writes one `tracing` event with target `jwtgate::access` and the fields method, path, route,
//! status, latency_ms, subject, upstream and refusal. It never logs a header value or a query
//! string, so neither a token nor a query parameter can reach the log.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use http::{Method, Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::body::Body;
use crate::metrics::{Metrics, ReasonLabel, RequestLabels, RouteLabel, status_class};
use crate::reject::Refusal;
use crate::snapshot::RequestContext;

/// What the layers learn about a request, filled in as it travels (each field once), read by
/// the layers after them and by the access log. Each field shares what the request path holds
/// anyway (no copy, nothing written out per request).
///
/// Each field is a `OnceLock`, and setting one costs about 90 instructions (`Once`'s state
/// machine), so what one layer learns at one moment goes into one field (docs/performance.md,
/// change 26).
#[derive(Debug, Default)]
pub struct Record {
    /// The normalised URI and the route it matched (set by routing).
    pub routed: OnceLock<Routed>,
    /// The verified identity; only `sub` is logged (set by authentication).
    pub identity: OnceLock<Arc<crate::auth::validate::Identity>>,
    /// The upstream target the request went to (set by forwarding; written out only if the
    /// line is logged).
    pub upstream: OnceLock<crate::config::Target>,
}

/// What routing learnt about a request.
#[derive(Debug)]
pub struct Routed {
    /// The normalised URI; only its path is logged.
    pub uri: http::Uri,
    /// The matched route.
    pub route: Arc<crate::route::CompiledRoute>,
}

impl Record {
    /// The matched route (once routing has run).
    pub fn route(&self) -> Option<&Arc<crate::route::CompiledRoute>> {
        self.routed.get().map(|r| &r.route)
    }
}

/// The layer.
pub fn layer(metrics: Arc<Metrics>) -> AccessLogLayer {
    AccessLogLayer { metrics }
}

/// Layer behind [`layer`].
#[derive(Debug, Clone)]
pub struct AccessLogLayer {
    metrics: Arc<Metrics>,
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// Service behind [`AccessLogLayer`].
#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B> Service<Request<B>> for AccessLog<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let record = match RequestContext::of(&req) {
            Some(context) => context.record.clone(),
            None => {
                tracing::error!("access log reached without a request context");
                Arc::default()
            }
        };
        let method = req.method().clone();
        self.metrics.in_flight.inc();
        ResponseFuture {
            inner: self.inner.call(req),
            done: Some(Pending {
                record,
                method,
                start: Instant::now(),
                metrics: self.metrics.clone(),
            }),
        }
    }
}

/// What the future needs when the response arrives; decrements the in-flight gauge when
/// dropped, so a request abandoned by its client is not counted forever.
struct Pending {
    record: Arc<Record>,
    method: Method,
    start: Instant,
    metrics: Arc<Metrics>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}

impl Pending {
    fn finish(&self, response: &Response<Body>) {
        let latency = self.start.elapsed();
        let status = response.status();
        let refusal = response.extensions().get::<Refusal>().map(|r| r.0);
        let m = &self.metrics;
        let route = match self.record.route() {
            Some(r) => {
                let path = r.route.path.as_str();
                r.metrics.observe(m, path, status, latency.as_secs_f64());
                path
            }
            None => {
                let route_label = RouteLabel {
                    route: "none".to_owned(),
                };
                m.duration
                    .get_or_create(&route_label)
                    .observe(latency.as_secs_f64());
                m.requests
                    .get_or_create(&RequestLabels {
                        route: route_label.route,
                        status_class: status_class(status),
                    })
                    .inc();
                "none"
            }
        };
        if let Some(reason) = refusal {
            m.refusals.get_or_create(&ReasonLabel { reason }).inc();
        }
        tracing::info!(
            target: "jwtgate::access",
            method = %self.method,
            path = self.record.routed.get().map_or("-", |r| r.uri.path()),
            route,
            status = status.as_u16(),
            latency_ms = latency.as_secs_f64() * 1000.0,
            subject = self.record.identity.get().map_or("-", |i| i.sub.as_str()),
            upstream = %self
                .record
                .upstream
                .get()
                .map_or(&"-" as &dyn std::fmt::Display, |t| t as &dyn std::fmt::Display),
            refusal = refusal.unwrap_or("-"),
            "request"
        );
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`AccessLog`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        done: Option<Pending>,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let (Ok(response), Some(pending)) = (&result, this.done.take()) {
            pending.finish(response);
        }
        Poll::Ready(result)
    }
}
