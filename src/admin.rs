//! The admin listener: `/healthz` (the process is up), `/readyz` (it should get traffic) and
//! `/metrics` (Prometheus text, SPEC §6).
//!
//! `/readyz` answers 503 until the issuer's signing keys are loaded (when there is an issuer)
//! and as soon as a drain has begun, so a load balancer stops sending new requests while the
//! in-flight ones finish.

use std::sync::atomic::{AtomicBool, Ordering};

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::body::{self, Body};
use crate::snapshot::Live;

/// Readiness state and metrics, read by the admin endpoints.
#[derive(Debug)]
pub struct Admin {
    draining: AtomicBool,
    live: Live,
}

impl Admin {
    /// Admin endpoints over the configuration in force.
    pub fn new(live: Live) -> Admin {
        Admin {
            draining: AtomicBool::new(false),
            live,
        }
    }

    /// Marks the gateway as draining: `/readyz` turns 503.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether the gateway should receive traffic: not draining, and signing keys loaded
    /// when there is an issuer.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire) && self.keys_loaded()
    }

    fn keys_loaded(&self) -> bool {
        self.live
            .load()
            .auth
            .as_ref()
            .is_none_or(|a| a.keys().current().is_some())
    }

    /// Answers one admin request.
    pub fn respond<B>(&self, req: &Request<B>) -> Response<Body> {
        let get = matches!(*req.method(), Method::GET | Method::HEAD);
        let (status, content_type, text) = match (get, req.uri().path()) {
            (true, "/healthz") => (StatusCode::OK, TEXT, "ok\n".to_owned()),
            (true, "/readyz") if self.is_ready() => (StatusCode::OK, TEXT, "ready\n".to_owned()),
            (true, "/readyz") if self.draining.load(Ordering::Acquire) => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                "draining\n".to_owned(),
            ),
            (true, "/readyz") => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                "signing keys not loaded\n".to_owned(),
            ),
            (true, "/metrics") => (StatusCode::OK, METRICS, self.render_metrics()),
            (false, "/healthz" | "/readyz" | "/metrics") => {
                (StatusCode::METHOD_NOT_ALLOWED, TEXT, "use GET\n".to_owned())
            }
            _ => (StatusCode::NOT_FOUND, TEXT, "not found\n".to_owned()),
        };
        let mut response = Response::new(body::full(text));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    }

    /// Refreshes the gauges read at scrape time and renders every metric.
    fn render_metrics(&self) -> String {
        let snapshot = self.live.load();
        let metrics = &snapshot.metrics;
        if let Some(keys) = snapshot.auth.as_ref().map(|a| a.keys()) {
            let held = keys.current().map_or(0, |k| k.keys.len());
            metrics
                .signing_keys
                .set(i64::try_from(held).unwrap_or(i64::MAX));
            metrics
                .signing_keys_age
                .set(keys.age().map_or(f64::NAN, |a| a.as_secs_f64()));
        }
        metrics.render()
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
const METRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[test]
    fn readyz_turns_unavailable_when_draining_and_healthz_stays_ok() {
        let admin = Admin::new(crate::snapshot::empty_live());
        assert_eq!(admin.respond(&get("/readyz")).status(), StatusCode::OK);
        admin.start_draining();
        assert_eq!(
            admin.respond(&get("/readyz")).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(admin.respond(&get("/healthz")).status(), StatusCode::OK);
        assert_eq!(admin.respond(&get("/metrics")).status(), StatusCode::OK);
        assert_eq!(
            admin.respond(&get("/other")).status(),
            StatusCode::NOT_FOUND
        );
    }
}
