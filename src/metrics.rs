//! Prometheus metrics (SPEC §6), served as text on the admin listener's `/metrics`.
//!
//! One [`Metrics`] lives as long as the process and is shared by every configuration, so a
//! reload never resets a counter. Label values are bounded: route paths and upstream, group and
//! reason names all come from the configuration or from fixed lists, never from a request.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `route` and `status_class` of a finished request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The matched route's path, or `none` when no route matched.
    pub route: String,
    /// `2xx`, `3xx`, `4xx` or `5xx` (`1xx` for upgrades).
    pub status_class: &'static str,
}

/// `route` alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// The matched route's path, or `none`.
    pub route: String,
}

/// `reason` of a refusal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A fixed refusal name, e.g. `token_expired`, `forbidden`, `rate_limited`.
    pub reason: &'static str,
}

/// `result` of an operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `success` or `failure` (key fetches, reloads), `hit` or `miss` (token cache).
    pub result: &'static str,
}

/// A rate-limit decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// The group whose limit applied, or `default`.
    pub limit: String,
    /// `allowed` or `limited`.
    pub decision: &'static str,
    /// `local` or `redis`: which store decided.
    pub backend: &'static str,
}

/// An upstream failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    /// The upstream's name.
    pub upstream: String,
    /// `refused`, `connect_timeout`, `connect_error`, `timeout` or `reset`.
    pub kind: &'static str,
}

/// Every metric jwtgate exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `jwtgate_requests_total{route,status_class}`.
    pub requests: Family<RequestLabels, Counter>,
    /// `jwtgate_request_duration_seconds{route}`.
    pub duration: Family<RouteLabel, Histogram>,
    /// `jwtgate_requests_in_flight`.
    pub in_flight: Gauge,
    /// `jwtgate_refusals_total{reason}`.
    pub refusals: Family<ReasonLabel, Counter>,
    /// `jwtgate_key_fetches_total{result}`.
    pub key_fetches: Family<ResultLabel, Counter>,
    /// `jwtgate_signing_keys`.
    pub signing_keys: Gauge,
    /// `jwtgate_signing_keys_age_seconds`: since the last successful fetch.
    pub signing_keys_age: Gauge<f64, AtomicU64>,
    /// `jwtgate_token_cache_lookups_total{result}`.
    pub token_cache: Family<ResultLabel, Counter>,
    /// `jwtgate_ratelimit_decisions_total{limit,decision,backend}`.
    pub ratelimit: Family<LimitLabels, Counter>,
    /// `jwtgate_ratelimit_redis_fallback`: 1 while Redis decisions fall back to local ones.
    pub ratelimit_redis_fallback: Gauge,
    /// `jwtgate_upstream_errors_total{upstream,kind}`.
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    /// `jwtgate_config_reloads_total{result}`.
    pub reloads: Family<ResultLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("jwtgate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route and status class",
            requests.clone(),
        );
        let duration = Family::<RouteLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
        });
        registry.register(
            "request_duration_seconds",
            "Time from request to response headers, by route",
            duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Requests being handled",
            in_flight.clone(),
        );
        let refusals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "refusals",
            "Requests refused by the gateway, by reason",
            refusals.clone(),
        );
        let key_fetches = Family::<ResultLabel, Counter>::default();
        registry.register(
            "key_fetches",
            "Signing key (JWKS) fetches, by result",
            key_fetches.clone(),
        );
        let signing_keys = Gauge::default();
        registry.register("signing_keys", "Signing keys held", signing_keys.clone());
        let signing_keys_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "signing_keys_age_seconds",
            "Seconds since the last successful signing key fetch",
            signing_keys_age.clone(),
        );
        let token_cache = Family::<ResultLabel, Counter>::default();
        registry.register(
            "token_cache_lookups",
            "Verified-token cache lookups, by result",
            token_cache.clone(),
        );
        let ratelimit = Family::<LimitLabels, Counter>::default();
        registry.register(
            "ratelimit_decisions",
            "Rate-limit decisions, by limit, decision and backend (local or redis)",
            ratelimit.clone(),
        );
        let ratelimit_redis_fallback = Gauge::default();
        registry.register(
            "ratelimit_redis_fallback",
            "1 while backend = redis and decisions are taken locally because Redis failed",
            ratelimit_redis_fallback.clone(),
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failed exchanges with upstreams, by upstream and kind",
            upstream_errors.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads, by result",
            reloads.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            in_flight,
            refusals,
            key_fetches,
            signing_keys,
            signing_keys_age,
            token_cache,
            ratelimit,
            ratelimit_redis_fallback,
            upstream_errors,
            reloads,
        }
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts one `result` of a labelled operation.
    pub fn count(family: &Family<ResultLabel, Counter>, result: &'static str) {
        family.get_or_create(&ResultLabel { result }).inc();
    }
}

/// `2xx`-style class of a status code.
pub fn status_class(status: http::StatusCode) -> &'static str {
    STATUS_CLASSES[status_class_index(status)]
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_class_index(status: http::StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// One route's series of `jwtgate_requests_total` and `jwtgate_request_duration_seconds`,
/// looked up in their families on first use and kept: a request then counts without hashing
/// labels or making label strings. Every use must pass the same [`Metrics`] (the process's).
#[derive(Debug, Default)]
pub struct RouteMetrics {
    duration: std::sync::OnceLock<Histogram>,
    requests: [std::sync::OnceLock<Counter>; 5],
}

impl RouteMetrics {
    /// Counts a request to `route` answered with `status` after `seconds`.
    pub fn observe(&self, metrics: &Metrics, route: &str, status: http::StatusCode, seconds: f64) {
        let label = || RouteLabel {
            route: route.to_owned(),
        };
        self.duration
            .get_or_init(|| metrics.duration.get_or_create_owned(&label()))
            .observe(seconds);
        let class = status_class_index(status);
        self.requests[class]
            .get_or_init(|| {
                let labels = RequestLabels {
                    route: route.to_owned(),
                    status_class: STATUS_CLASSES[class],
                };
                metrics.requests.get_or_create_owned(&labels)
            })
            .inc();
    }
}
