//! jwtgate is a reverse-proxy API gateway that enforces access tokens issued by an Okta custom
//! authorization server.
//!
//! # Request flow (SPEC §3)
//!
//! normalise path → match route → authenticate → authorise → rate limit → rewrite headers →
//! forward. The order is decided in one place, [`stack::build`]; each step is a module below,
//! listed in that order, with a pure decision function and a thin tower layer.
//!
//! # Layout
//!
//! - [`config`]: the TOML file, validated into typed values; every problem reported at once.
//! - [`snapshot`]: one configuration compiled for serving, swapped whole on reload.
//! - [`normalize`]: path normalisation and framing checks (400).
//! - [`route`]: segment-boundary longest-prefix matching (404, 405).
//! - [`auth`]: Okta access-token validation for protected routes (400, 401, 503).
//! - [`authz`]: route groups and scopes (403).
//! - [`ratelimit`]: per-group GCRA limits with governor (429).
//! - [`proxy`]: forwarding, header hygiene, upstream pools (502, 504).
//! - [`reject`]: every refusal and its response.
//! - [`stack`]: the layer order.
//! - [`server`]: listeners, TLS, connections, drain.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`metrics`]: Prometheus metrics.
//! - [`access_log`]: one structured line per request.
//! - [`echo`]: an echo upstream for the demo and the tests.
//! - [`issuer`]: a local Okta-compatible issuer for the demo, the tests and the benches.
//! - [`demo`]: `jwtgate demo`: issuer, echo upstream and gateway on loopback.
//! - [`reload`]: live reload on SIGHUP and file change.
//! - [`cli`]: the command line and exit codes.

pub mod config;
pub mod snapshot;

pub mod auth;
pub mod authz;
pub mod normalize;
pub mod proxy;
pub mod ratelimit;
pub mod route;

pub mod access_log;
pub mod admin;
pub mod body;
pub mod cli;
pub mod demo;
pub mod echo;
pub mod issuer;
pub mod metrics;
pub mod reject;
pub mod reload;
pub mod server;
pub mod stack;
pub mod timer;

/// Locks a mutex, taking the data even if a thread panicked while holding it: every mutex in
/// jwtgate guards plain values that stay consistent across a panic.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
