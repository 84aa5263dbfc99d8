//! One structured access-log line per request (SPEC §6), and the per-request metrics.
//!
//! The layer is the outermost of the request path: it inserts a [`Record`] into the request's
//! extensions, the layers below fill in what they learn (normalised path and route, subject,
//! upstream target), and when the response leaves it writes one `tracing` event with target
//! `jwtgate::access` and the fields method, path, route, status, latency_ms, subject, upstream
//! and refusal. It never logs a header value or a query string, so neither a token nor a query
//! parameter can reach the log.

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

/// What the layers learn about a request, filled in as it travels (each field once).
#[derive(Debug, Default)]
pub struct Record {
    /// The normalised path (set by routing).
    pub path: OnceLock<String>,
    /// The matched route's path (set by routing).
    pub route: OnceLock<String>,
    /// The verified `sub` (set by authentication).
    pub subject: OnceLock<String>,
    /// The upstream target the request went to (set by forwarding).
    pub upstream: OnceLock<String>,
}

impl Record {
    /// The record of a request, if the access-log layer is above.
    pub fn of<B>(req: &Request<B>) -> Option<&Arc<Record>> {
        req.extensions().get::<Arc<Record>>()
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

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let record = Arc::new(Record::default());
        req.extensions_mut().insert(record.clone());
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
        let route = self.record.route.get().map_or("none", String::as_str);
        let m = &self.metrics;
        let route_label = RouteLabel {
            route: route.to_owned(),
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
        if let Some(reason) = refusal {
            m.refusals.get_or_create(&ReasonLabel { reason }).inc();
        }
        tracing::info!(
            target: "jwtgate::access",
            method = %self.method,
            path = self.record.path.get().map_or("-", String::as_str),
            route,
            status = status.as_u16(),
            latency_ms = latency.as_secs_f64() * 1000.0,
            subject = self.record.subject.get().map_or("-", String::as_str),
            upstream = self.record.upstream.get().map_or("-", String::as_str),
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
