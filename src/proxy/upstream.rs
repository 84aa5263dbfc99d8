//! Upstream pools (round-robin target choice) and the connector behind the one shared client.
//!
//! There is one pooled hyper-util client for every upstream; per-upstream connect deadlines are
//! applied by [`Connector`], which looks the deadline up by the target's authority in a table
//! that each configuration install refreshes.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::Service;

use crate::body::BoxError;
use crate::config::{Target, Upstream};

/// One `[upstreams.NAME]`, ready to pick targets.
#[derive(Debug)]
pub struct UpstreamPool {
    /// The table name.
    pub name: String,
    targets: Vec<Target>,
    next: AtomicUsize,
    /// Deadline for the response headers.
    pub timeout: Duration,
    /// Deadline for opening a connection.
    pub connect_timeout: Duration,
}

impl UpstreamPool {
    /// Builds the pool for a validated upstream (at least one target).
    pub fn new(u: &Upstream) -> UpstreamPool {
        UpstreamPool {
            name: u.name.clone(),
            targets: u.targets.clone(),
            next: AtomicUsize::new(0),
            timeout: u.timeout,
            connect_timeout: u.connect_timeout,
        }
    }

    /// The next target, round robin. `None` only for an upstream with no targets, which
    /// validation never lets through.
    pub fn next_target(&self) -> Option<&Target> {
        if self.targets.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.targets.len();
        self.targets.get(i)
    }

    /// All targets, in configuration order.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }
}

/// Connect deadlines by target authority (`host:port`), shared by every clone of [`Connector`].
#[derive(Debug, Clone, Default)]
pub struct ConnectTimeouts(Arc<ArcSwap<HashMap<String, Duration>>>);

impl ConnectTimeouts {
    /// Replaces the table with the deadlines of `pools`; when two upstreams share a target the
    /// shorter deadline wins.
    pub fn install<'a>(&self, pools: impl IntoIterator<Item = &'a UpstreamPool>) {
        let mut table: HashMap<String, Duration> = HashMap::new();
        for pool in pools {
            for t in pool.targets() {
                let d = table
                    .entry(t.authority.as_str().to_owned())
                    .or_insert(pool.connect_timeout);
                *d = (*d).min(pool.connect_timeout);
            }
        }
        self.0.store(Arc::new(table));
    }

    fn get(&self, uri: &Uri) -> Duration {
        uri.authority()
            .and_then(|a| self.0.load().get(a.as_str()).copied())
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }
}

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// TCP connector that applies the target's `connect_timeout`.
#[derive(Debug, Clone)]
pub struct Connector {
    http: HttpConnector,
    timeouts: ConnectTimeouts,
}

/// A connect attempt that ran past its deadline.
#[derive(Debug, thiserror::Error)]
#[error("connect timed out after {0:?}")]
pub struct ConnectTimeout(Duration);

impl Connector {
    /// A plain TCP connector (TLS is layered on top by hyper-rustls).
    pub fn new(timeouts: ConnectTimeouts) -> Connector {
        let mut http = HttpConnector::new();
        // hyper-rustls decides the scheme; this connector only opens TCP.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        Connector { http, timeouts }
    }
}

impl Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let deadline = self.timeouts.get(&uri);
        let connecting = self.http.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(deadline, connecting).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(ConnectTimeout(deadline).into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn targets_are_used_round_robin() {
        let config = Config::from_toml_str(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.u]\ntargets = [\"http://127.0.0.1:1\", \"http://127.0.0.1:2\", \"http://127.0.0.1:3\"]\n",
        )
        .unwrap();
        let pool = UpstreamPool::new(&config.upstreams["u"]);
        let picked: Vec<String> = (0..6)
            .map(|_| pool.next_target().unwrap().authority.to_string())
            .collect();
        assert_eq!(
            picked,
            [
                "127.0.0.1:1",
                "127.0.0.1:2",
                "127.0.0.1:3",
                "127.0.0.1:1",
                "127.0.0.1:2",
                "127.0.0.1:3"
            ]
        );
    }

    #[test]
    fn connect_deadlines_are_looked_up_by_authority() {
        let config = Config::from_toml_str(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.a]\ntargets = [\"http://127.0.0.1:1\"]\nconnect_timeout = \"250ms\"\n[upstreams.b]\ntargets = [\"http://127.0.0.1:1\", \"http://127.0.0.1:2\"]\nconnect_timeout = \"5s\"\n",
        )
        .unwrap();
        let pools: Vec<UpstreamPool> = config.upstreams.values().map(UpstreamPool::new).collect();
        let t = ConnectTimeouts::default();
        t.install(&pools);
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        assert_eq!(
            t.get(&uri("http://127.0.0.1:1/")),
            Duration::from_millis(250)
        );
        assert_eq!(t.get(&uri("http://127.0.0.1:2/")), Duration::from_secs(5));
        assert_eq!(t.get(&uri("http://127.0.0.1:3/")), DEFAULT_CONNECT_TIMEOUT);
    }
}
