//! Listeners and connections: accept, optional TLS, hyper-util's auto (HTTP/1.1 + h2)
//! connection per socket, and the drain on shutdown.
//!
//! Shutdown: stop accepting, turn `/readyz` to 503, let every open connection finish its
//! in-flight requests (HTTP/1 keep-alive is switched off, h2 gets GOAWAY), and give up after
//! `server.shutdown_grace`.

pub mod drain;
pub mod framing;
pub mod idle;
pub mod tls;

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::Either;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::admin::Admin;
use crate::body;
use crate::config::Config;
use crate::snapshot::{CompileError, Live, RequestContext, Shared};
use crate::stack::{self, GatewayService};

/// What the gateway knows about the client connection (each request's `RequestContext` holds
/// a copy).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's address.
    pub remote: SocketAddr,
    /// The peer's IP address as a header value (for `X-Forwarded-For`), written out once.
    pub client_ip: http::HeaderValue,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// Which request on this connection, if any, had ambiguous framing.
    pub framing: Arc<framing::AmbiguousFraming>,
    /// This request's index on its connection (0-based, arrival order).
    pub index: u64,
    /// The upstream connection this client connection carries between its requests.
    pub affinity: Arc<crate::proxy::conns::Affinity>,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The TLS certificate or key cannot be used (a configuration error).
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The upstream client could not be built.
    #[error("cannot build the upstream client: {0}")]
    Client(#[from] rustls::Error),
    /// The configuration could not be compiled.
    #[error("{0}")]
    Compile(String),
}

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A running gateway: its bound addresses and the handles to reload and stop it.
#[derive(Debug)]
pub struct Gateway {
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    control: Arc<Control>,
    shutdown: watch::Sender<bool>,
    proxy_task: JoinHandle<()>,
    admin_task: Option<JoinHandle<()>>,
    housekeeping: JoinHandle<()>,
}

/// Reloads the configuration of a running gateway; cheap to clone behind an `Arc`.
#[derive(Debug)]
pub struct Control {
    live: Live,
    shared: Shared,
    /// Serialises reloads: two at once would race on which snapshot is "previous".
    reloading: tokio::sync::Mutex<()>,
    started_with: crate::config::Server,
}

/// Why a reload was refused; the previous configuration stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file has problems (the same ones `jwtgate check` prints).
    #[error("{0}")]
    Config(#[from] crate::config::ConfigErrors),
    /// The new configuration cannot be put in force (e.g. the new issuer's keys).
    #[error(transparent)]
    Compile(#[from] CompileError),
}

impl Control {
    /// The configuration in force.
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.shared.metrics
    }

    /// Puts `config` in force: every request that starts after the swap sees all of it, every
    /// request already running keeps the configuration it started with. Keys of an unchanged
    /// issuer and buckets of unchanged limits are kept. `[server]` changes (listeners, TLS,
    /// workers, grace) need a restart and are reported, not applied.
    ///
    /// # Errors
    ///
    /// The new configuration cannot be put in force; the old one stays.
    pub async fn reload(&self, config: Config) -> Result<(), ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let result = self.reload_locked(config).await;
        let outcome = if result.is_ok() { "success" } else { "failure" };
        crate::metrics::Metrics::count(&self.shared.metrics.reloads, outcome);
        result
    }

    async fn reload_locked(&self, config: Config) -> Result<(), ReloadError> {
        let server = &config.server;
        let old = &self.started_with;
        let tls_changed = server.tls.as_ref().map(|t| (&t.cert, &t.key))
            != old.tls.as_ref().map(|t| (&t.cert, &t.key));
        if server.listen != old.listen
            || server.admin_listen != old.admin_listen
            || server.workers != old.workers
            || server.shutdown_grace != old.shutdown_grace
            || tls_changed
        {
            tracing::warn!(
                "[server] changed: listeners, TLS, workers and grace apply after a restart"
            );
        }
        let previous = self.live.load_full();
        let snapshot = self
            .shared
            .compile(Arc::new(config), Some(&previous), true)
            .await?;
        self.live.store(Arc::new(snapshot));
        tracing::info!("configuration reloaded");
        Ok(())
    }

    /// Reads `path` and reloads it, logging each problem of an invalid file the way `check`
    /// prints it.
    ///
    /// # Errors
    ///
    /// As [`Control::reload`], or the file is invalid.
    pub async fn reload_file(&self, path: &std::path::Path) -> Result<(), ReloadError> {
        let config = match Config::load(path) {
            Ok(c) => c,
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!(problem = %e, "configuration reload refused");
                }
                crate::metrics::Metrics::count(&self.shared.metrics.reloads, "failure");
                return Err(errors.into());
            }
        };
        let result = self.reload(config).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "configuration reload refused");
        }
        result
    }
}

impl Gateway {
    /// Binds the listeners and starts serving `config`.
    ///
    /// # Errors
    ///
    /// A listener that cannot be bound, unusable TLS files, or a TLS provider failure.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        let tls = config.server.tls.as_ref().map(tls::load).transpose()?;
        let grace = config.server.shutdown_grace;
        let listen_addr = config.server.listen;
        let admin_addr = config.server.admin_listen;
        let started_with = config.server.clone();

        let shared = Shared::new()?;
        let snapshot = shared
            .compile(Arc::new(config), None, false)
            .await
            .map_err(|e| StartError::Compile(e.0))?;
        let live: Live = Arc::new(ArcSwap::from_pointee(snapshot));
        let service = stack::build(
            live.clone(),
            shared.upstreams.clone(),
            shared.metrics.clone(),
        );
        let housekeeping = tokio::spawn(housekeeping(live.clone(), shared.upstreams.clone()));

        let listener = bind(listen_addr).await?;
        let listen = listener.local_addr().map_err(|source| StartError::Bind {
            addr: listen_addr,
            source,
        })?;
        let admin_state = Arc::new(Admin::new(live.clone()));
        let (admin, admin_task) = match admin_addr {
            Some(addr) => {
                let l = bind(addr).await?;
                let bound = l
                    .local_addr()
                    .map_err(|source| StartError::Bind { addr, source })?;
                tracing::info!(addr = %bound, "admin listening");
                (
                    Some(bound),
                    Some(tokio::spawn(serve_admin(l, admin_state.clone()))),
                )
            }
            None => (None, None),
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(addr = %listen, %scheme, "gateway listening");
        let proxy_task = tokio::spawn(serve_proxy(
            listener,
            tls.map(TlsAcceptor::from),
            Serving {
                service,
                live: live.clone(),
            },
            shutdown_rx,
            grace,
            admin_state,
        ));
        Ok(Gateway {
            listen,
            admin,
            control: Arc::new(Control {
                live,
                shared,
                reloading: tokio::sync::Mutex::new(()),
                started_with,
            }),
            shutdown,
            proxy_task,
            admin_task,
            housekeeping,
        })
    }

    /// The bound proxy address (useful with port 0).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The bound admin address, if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The configuration in force.
    pub fn live(&self) -> &Live {
        &self.control.live
    }

    /// The reload handle.
    pub fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    /// Puts a new configuration in force (see [`Control::reload`]).
    ///
    /// # Errors
    ///
    /// As [`Control::reload`].
    pub async fn reload(&self, config: Config) -> Result<(), ReloadError> {
        self.control.reload(config).await
    }

    /// Starts the drain: stop accepting, finish in-flight requests within the grace period.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Waits until the drain is over (call [`Gateway::shutdown`] first, or it waits forever).
    pub async fn wait(self) {
        if let Err(e) = self.proxy_task.await {
            tracing::error!(error = %e, "proxy task failed");
        }
        if let Some(admin) = self.admin_task {
            admin.abort();
        }
        self.housekeeping.abort();
        self.control.shared.stop();
    }
}

/// How often rate-limit state of callers whose buckets have refilled is dropped.
const HOUSEKEEPING_PERIOD: Duration = Duration::from_secs(30);

/// Keeps long-lived state bounded: drops refilled rate-limit buckets and closes idle upstream
/// connections past their deadline.
async fn housekeeping(live: Live, upstreams: crate::proxy::Upstreams) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(limiter) = live.load().limiter.clone() {
            limiter.retain_recent();
        }
        upstreams.conns().idle().evict_expired();
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// What each client connection serves: the request path, and the live configuration its
/// requests' contexts load (the same one the stack's snapshot layer would).
#[derive(Clone)]
struct Serving {
    service: GatewayService,
    live: Live,
}

async fn serve_proxy(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    serving: Serving,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    admin: Arc<Admin>,
) {
    let drain = drain::Drain::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Slow-header clients (slowloris) lose their connection instead of holding it forever.
    // Each connection gets a timer of its own (`serve`).
    builder
        .http1()
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // Heads over 64 KiB are refused (431) rather than followed by the framing watcher.
        .max_buf_size(framing::MAX_HEAD);
    // An h2 header list gets the same 64 KiB as an HTTP/1 head (hyper's default is 16 KiB), so
    // a request, its token included, is refused or served alike whichever protocol it uses.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(framing::MAX_HEAD as u32);
    let builder = Arc::new(builder);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    tokio::spawn(connection(
                        builder.clone(),
                        stream,
                        remote,
                        tls.clone(),
                        serving.clone(),
                        drain.watch(),
                    ));
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning on the error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    admin.start_draining();
    tracing::info!(connections = drain.count(), ?grace, "draining");
    match tokio::time::timeout(grace, drain.shutdown()).await {
        Ok(()) => tracing::info!("drained"),
        Err(_) => tracing::warn!(?grace, "grace period over; closing remaining connections"),
    }
}

async fn connection(
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    remote: SocketAddr,
    tls: Option<TlsAcceptor>,
    serving: Serving,
    watch: drain::Watch,
) {
    let _ = stream.set_nodelay(true);
    let result = match tls {
        None => serve(&builder, stream, remote, false, serving, watch).await,
        Some(acceptor) => {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => serve(&builder, stream, remote, true, serving, watch).await,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "TLS handshake timed out");
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%remote, error = %e, "connection ended with an error");
    }
}

/// Serves HTTP/1.1 or h2 on one (plain or TLS) stream until it closes or the drain ends it.
async fn serve<IO>(
    builder: &auto::Builder<TokioExecutor>,
    stream: IO,
    remote: SocketAddr,
    tls: bool,
    serving: Serving,
    watch: drain::Watch,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let streams = Arc::new(idle::Streams::default());
    let on_h2 = idle::Arm::new(&streams, watch.early());
    let (stream, framing) = framing::Watched::new(stream, on_h2);
    let info = ConnInfo {
        remote,
        client_ip: http::HeaderValue::from_str(&remote.ip().to_string())
            .unwrap_or(http::HeaderValue::from_static("127.0.0.1")),
        tls,
        framing,
        index: 0,
        affinity: Arc::default(),
    };
    let service = HyperService::new(serving.service, serving.live, info, streams);
    // The connection's own timer: one tokio timer for the header-read deadline of all its
    // request heads (crate::timer).
    let mut builder = builder.clone();
    builder.http1().timer(crate::timer::ConnTimer::default());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    // `None`: an idle h2 connection dropped by its watch (`idle`), which logged it.
    watch
        .run(conn.into_owned(), |conn| conn.graceful_shutdown())
        .await
        .unwrap_or(Ok(()))
}

/// Adapts the tower stack to hyper: boxes the body and starts the request's context with the
/// configuration in force and the connection's details, numbering requests in the order hyper
/// hands them over.
///
/// hyper calls a service by `&self`, tower by `&mut self`; the usual bridge clones the stack for
/// every request (one allocation and a reference count per layer). The stack is instead called
/// in place: no layer applies backpressure, so it is ready at once. That is checked, not
/// assumed: a stack that is not ready is cloned and driven to readiness the usual way.
#[derive(Debug)]
struct HyperService {
    service: RefCell<GatewayService>,
    live: Live,
    info: ConnInfo,
    next_index: Cell<u64>,
    /// The connection's open h2 streams (`idle`).
    streams: Arc<idle::Streams>,
}

impl HyperService {
    fn new(
        service: GatewayService,
        live: Live,
        info: ConnInfo,
        streams: Arc<idle::Streams>,
    ) -> HyperService {
        HyperService {
            service: RefCell::new(service),
            live,
            info,
            next_index: Cell::new(0),
            streams,
        }
    }
}

type StackFuture = <GatewayService as tower::Service<Request<body::Body>>>::Future;

type Answer = Result<http::Response<body::Body>, std::convert::Infallible>;
type Boxed = Pin<Box<dyn Future<Output = Answer> + Send>>;

impl hyper::service::Service<Request<Incoming>> for HyperService {
    type Response = http::Response<body::Body>;
    type Error = std::convert::Infallible;
    /// The stack's own future for HTTP/1; boxed for an h2 stream, which is counted open until
    /// its response body is done (`idle`), and for a stack that was not ready.
    type Future = Either<StackFuture, Boxed>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        if req.version() == http::Version::HTTP_2 {
            let open = self.streams.open();
            let answer = self.call_stack(req);
            return Either::Right(Box::pin(async move {
                let Ok(response) = answer.await;
                Ok(response.map(|b| body::boxed(idle::Held::new(b, open))))
            }));
        }
        self.call_stack(req)
    }
}

/// The connection owns its service: the service goes when the connection ends (or is dropped
/// at shutdown), and the idle watch with it.
impl Drop for HyperService {
    fn drop(&mut self) {
        self.streams.end();
    }
}

impl HyperService {
    /// Numbers the request, gives it its context and calls the stack. Inlined: the stack's
    /// future is returned by value, and a call would move it once more.
    #[inline(always)]
    fn call_stack(&self, req: Request<Incoming>) -> Either<StackFuture, Boxed> {
        let mut req = req.map(body::boxed);
        let mut info = self.info.clone();
        info.index = self.next_index.get();
        self.next_index.set(info.index + 1);
        // The request's one extension: the snapshot layer finds it in place.
        req.extensions_mut()
            .insert(RequestContext::new(&self.live, Some(info)));
        // hyper never calls a connection's service from within a call, so this borrow is the
        // only one.
        let mut service = self.service.borrow_mut();
        let mut cx = Context::from_waker(Waker::noop());
        match tower::Service::poll_ready(&mut *service, &mut cx) {
            Poll::Ready(Ok(())) => Either::Left(tower::Service::call(&mut *service, req)),
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => Either::Right(Box::pin(service.clone().oneshot(req))),
        }
    }
}

async fn serve_admin(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let response = admin.respond(&req);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::{Response, StatusCode};
    use http_body_util::{BodyExt as _, Empty};
    use hyper::client::conn::http1 as client;

    use super::*;

    /// Not ready on every other poll; answers with the index the request was numbered with.
    #[derive(Clone)]
    struct Hesitant {
        polls: Arc<AtomicUsize>,
    }

    impl tower::Service<Request<body::Body>> for Hesitant {
        type Response = http::Response<body::Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            if self.polls.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<body::Body>) -> Self::Future {
            let index = RequestContext::of(&req)
                .and_then(|c| c.conn.as_ref())
                .map_or(99, |c| c.index);
            let response = Response::builder()
                .header("x-index", index)
                .body(body::empty())
                .unwrap();
            std::future::ready(Ok(response))
        }
    }

    #[tokio::test]
    async fn a_stack_that_is_not_ready_is_driven_to_readiness_before_the_call() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let polls = Arc::new(AtomicUsize::new(0));
        let stack = GatewayService::new(Hesitant {
            polls: polls.clone(),
        });
        let streams = Arc::new(idle::Streams::default());
        let on_h2 = idle::Arm::new(&streams, drain::Drain::new().watch().early());
        let (server_io, framing) = framing::Watched::new(server_io, on_h2);
        let info = ConnInfo {
            remote: ([127, 0, 0, 1], 1).into(),
            client_ip: http::HeaderValue::from_static("127.0.0.1"),
            tls: false,
            framing,
            index: 0,
            affinity: Arc::default(),
        };
        let live = crate::snapshot::empty_live();
        let server = hyper::server::conn::http1::Builder::new().serve_connection(
            TokioIo::new(server_io),
            HyperService::new(stack, live, info, streams),
        );
        tokio::spawn(server);
        let (mut sender, conn) = client::handshake(TokioIo::new(client_io)).await.unwrap();
        tokio::spawn(conn);
        for expected in ["0", "1", "2"] {
            let req = Request::get("/")
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            let response = sender.send_request(req).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()["x-index"], expected);
            response.into_body().collect().await.unwrap();
        }
        // Each request met a stack that was not ready (in place), then a clone that was.
        assert_eq!(polls.load(Ordering::Relaxed), 6);
    }
}
