//! The admin listener: `/healthz` (the process is up) and `/readyz` (it should get traffic).
//!
//! `/readyz` answers 503 once a drain has begun, so a load balancer stops sending new requests
//! while the in-flight ones finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::auth::jwks::KeyCache;
use crate::body::{self, Body};

/// Readiness state shared by the listeners and the admin endpoints.
#[derive(Debug, Default)]
pub struct Health {
    draining: AtomicBool,
    keys: Option<Arc<KeyCache>>,
}

impl Health {
    /// Readiness that also waits for `keys` to hold signing keys (SPEC §4), if given.
    pub fn new(keys: Option<Arc<KeyCache>>) -> Health {
        Health {
            draining: AtomicBool::new(false),
            keys,
        }
    }

    /// Marks the gateway as draining: `/readyz` turns 503.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether the gateway should receive traffic: not draining, and signing keys loaded
    /// when there is an issuer.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire)
            && self.keys.as_ref().is_none_or(|k| k.current().is_some())
    }

    /// Why it is not ready, for the `/readyz` body.
    fn not_ready_reason(&self) -> &'static str {
        if self.draining.load(Ordering::Acquire) {
            "draining\n"
        } else {
            "signing keys not loaded\n"
        }
    }
}

/// Answers one admin request.
pub fn respond<B>(health: &Arc<Health>, req: &Request<B>) -> Response<Body> {
    let (status, text) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") if health.is_ready() => {
            (StatusCode::OK, "ready\n")
        }
        (&Method::GET | &Method::HEAD, "/readyz") => {
            (StatusCode::SERVICE_UNAVAILABLE, health.not_ready_reason())
        }
        (_, "/healthz" | "/readyz") => (StatusCode::METHOD_NOT_ALLOWED, "use GET\n"),
        _ => (StatusCode::NOT_FOUND, "not found\n"),
    };
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[test]
    fn readyz_turns_unavailable_when_draining_and_healthz_stays_ok() {
        let health = Arc::new(Health::default());
        assert_eq!(respond(&health, &get("/readyz")).status(), StatusCode::OK);
        health.start_draining();
        assert_eq!(
            respond(&health, &get("/readyz")).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(respond(&health, &get("/healthz")).status(), StatusCode::OK);
        assert_eq!(
            respond(&health, &get("/other")).status(),
            StatusCode::NOT_FOUND
        );
    }
}
