//! Upstream connections that follow the client connection (docs/decisions.md, "Upstream
//! connections").
//!
//! An HTTP/1.1 client connection carries one request at a time, so it can carry one upstream
//! connection along with it: the request goes out on the upstream connection the previous
//! request of the same client connection used, and that upstream connection is driven by the
//! client connection's own task, while the gateway waits for the response head and then from
//! the response body as hyper writes it out. No pool lookup, no second task and no wake-up
//! between tasks per request; that made a bare hyper proxy 1.2x faster in the load run
//! (docs/performance.md).
//!
//! When a client connection ends, its upstream connection is handed to a process-wide idle list
//! (bounded, with an idle deadline), where the next new client connection finds it; clients
//! that send one request per connection therefore still reuse upstream connections.
//!
//! An upstream connection is only reused when the whole response went through it; a response
//! cut short, a timeout or an error closes it. A reused connection that turns out to be closed
//! before the request was written is replaced by a fresh one and the request sent again (the
//! request never reached the upstream, so this is safe for any method).

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::Frame;
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant as TokioInstant;
use tower::ServiceExt as _;

use super::relay::{self, Relay, Relayed};
use super::upstream::Connector;
use crate::body::{Body, BoxError};
use crate::config::Target;
use crate::timer::Deadline;

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;

/// Idle upstream connections kept for new client connections, across all targets.
pub const MAX_IDLE: usize = 256;
/// An idle upstream connection older than this is closed rather than reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why no response came back.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened (refused, timed out, TLS failed).
    Connect(BoxError),
    /// The connection failed while the request or the response head was under way.
    Http(BoxError),
    /// No response head within the upstream's `timeout`.
    Timeout,
}

impl SendError {
    /// `timeout`, `refused`, `connect_timeout`, `connect_error` or `reset`, for metrics.
    pub fn kind(&self) -> &'static str {
        let (e, connect) = match self {
            SendError::Connect(e) => (e, true),
            SendError::Http(e) => (e, false),
            SendError::Timeout => return "timeout",
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
        while let Some(c) = cause {
            if c.is::<super::upstream::ConnectTimeout>() {
                return "connect_timeout";
            }
            if let Some(io) = c.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::ConnectionRefused
            {
                return "refused";
            }
            cause = c.source();
        }
        if connect { "connect_error" } else { "reset" }
    }

    /// The error and its causes, `: `-separated, for the log.
    pub fn chain(&self) -> String {
        let e = match self {
            SendError::Connect(e) | SendError::Http(e) => e,
            SendError::Timeout => return "no response head within the upstream's timeout".into(),
        };
        let mut s = e.to_string();
        let mut source = e.source();
        while let Some(cause) = source {
            s.push_str(": ");
            s.push_str(&cause.to_string());
            source = cause.source();
        }
        s
    }
}

/// One open upstream connection: the handle to send on and the connection itself, which
/// whoever waits on it must poll.
struct Parked {
    target: Target,
    sender: http1::SendRequest<Body>,
    conn: Pin<Box<http1::Connection<Relayed<Io>, Body>>>,
    /// What the connection is polled with, and the waker that stands for it (`relay`).
    relay: Arc<Relay>,
    waker: Waker,
    /// The connection has finished (closed or failed); it cannot be used again.
    done: bool,
    idle_since: Instant,
    /// Where it goes when its client connection ends (weak: the idle list holds connections).
    home: Weak<IdleList>,
    /// The deadline of the request under way: one timer for all the requests the connection
    /// carries for one client connection.
    timer: Deadline,
}

impl Parked {
    fn go_home(mut self) {
        // The timer belongs to the runtime of the client connection that made it; the next
        // client connection may run on another worker.
        self.timer = Deadline::default();
        if let Some(home) = self.home.upgrade() {
            home.put(self);
        }
    }
}

impl std::fmt::Debug for Parked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parked")
            .field("target", &self.target.to_string())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Parked {
    /// Polls the connection on behalf of the task `cx` belongs to; it makes progress on
    /// whatever the handle asked of it.
    fn drive(&mut self, cx: &mut Context<'_>) -> Option<hyper::Error> {
        if self.done {
            return None;
        }
        let conn = self.conn.as_mut();
        match self.relay.drive(&self.waker, cx, |cx| conn.poll(cx)) {
            Poll::Pending => None,
            Poll::Ready(result) => {
                self.done = true;
                result.err()
            }
        }
    }

    /// Whether the connection can carry another request: it is open and has finished the last
    /// one. An upstream may answer before it has read the whole request body; such a
    /// connection is still sending it, and would only go on while driven, which a parked
    /// connection is not. Dropped instead, it lets go of the request body, and hyper closes the
    /// client connection after the response unless the rest has already arrived
    /// (docs/decisions.md).
    fn reusable(&self) -> bool {
        !self.done && !self.sender.is_closed() && self.sender.is_ready()
    }

    /// Waits until the connection can take a request; `Ok(false)` if it has closed meanwhile.
    async fn ready(&mut self) -> Result<bool, SendError> {
        poll_fn(|cx| {
            if self.drive(cx).is_some() || self.done {
                return Poll::Ready(Ok(false));
            }
            match self.sender.poll_ready(cx) {
                Poll::Ready(r) => Poll::Ready(Ok(r.is_ok())),
                Poll::Pending if self.timer.passed(cx) => Poll::Ready(Err(SendError::Timeout)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Hands `req` to the connection at once and returns the wait for its response head,
    /// which drives the connection meanwhile. On a failure before the request was written, the
    /// request comes back for another attempt.
    ///
    /// Not an `async fn`: one would keep `req` in its state twice (as its argument and as the
    /// local it moves into) across the whole round trip, and the future of a request is
    /// copied into a fresh allocation for each request (docs/performance.md, change 24).
    fn send(&mut self, mut req: Request<Body>) -> Sending<'_, impl TrySend> {
        origin_form(req.uri_mut());
        Sending {
            sending: self.sender.try_send_request(req),
            parked: self,
            failure: None,
        }
    }
}

/// The future `SendRequest::try_send_request` returns.
trait TrySend: Future<Output = Result<Response<Incoming>, TrySendError<Request<Body>>>> {}

impl<F> TrySend for F where
    F: Future<Output = Result<Response<Incoming>, TrySendError<Request<Body>>>>
{
}

pin_project_lite::pin_project! {
    /// A request handed to an upstream connection, until its response head: polls the
    /// connection, which writes the request and reads the head, and the wait for the head.
    struct Sending<'a, F> {
        #[pin]
        sending: F,
        parked: &'a mut Parked,
        failure: Option<hyper::Error>,
    }
}

impl<F: TrySend> Future for Sending<'_, F> {
    type Output = Result<Response<Incoming>, (SendError, Option<Request<Body>>)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(e) = this.parked.drive(cx) {
            *this.failure = Some(e);
        }
        // The head only arrives while the connection is driven, as just now (`relay`).
        match relay::look(cx, |noop| this.sending.poll(noop)) {
            Poll::Ready(Ok(response)) => Poll::Ready(Ok(response)),
            Poll::Ready(Err(mut e)) => {
                let unsent = e.take_message();
                let cause = this.failure.take().unwrap_or_else(|| e.into_error());
                Poll::Ready(Err((SendError::Http(cause.into()), unsent)))
            }
            // The connection has ended without answering: nothing will.
            Poll::Pending if this.parked.done => Poll::Ready(Err((
                SendError::Http(this.failure.take().map_or_else(
                    || BoxError::from("the upstream closed the connection"),
                    BoxError::from,
                )),
                None,
            ))),
            Poll::Pending if this.parked.timer.passed(cx) => {
                Poll::Ready(Err((SendError::Timeout, None)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Leaves only the path and query of `uri`: a request to an origin server names its target in
/// origin form (RFC 9112, section 3.2.1). hyper's connection writes the target it is given,
/// and the absolute form (`GET http://10.0.0.5:8080/x`) would also tell the upstream to take
/// the host from that target and ignore the `Host` the gateway passes on (section 3.2.2).
/// hyper-util's pooled client makes the same change for the requests it sends. The gateway's
/// own requests arrive in origin form already (`proxy::rewrite`); this covers callers that
/// pass an absolute URI.
fn origin_form(uri: &mut Uri) {
    if uri.scheme().is_some() || uri.authority().is_some() {
        let pq = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *uri = Uri::from(pq);
    }
}

/// The upstream connection a client connection carries along (at most one, idle between its
/// requests). Dropped with the client connection, when it hands its connection to the idle list.
#[derive(Debug, Default)]
pub struct Affinity(Mutex<Option<Parked>>);

impl Affinity {
    fn take(&self, target: &Target) -> Option<Parked> {
        let mut slot = lock(&self.0);
        if slot.as_ref().is_some_and(|p| p.target == *target) {
            slot.take()
        } else {
            None
        }
    }

    fn park(&self, mut parked: Parked) {
        parked.idle_since = Instant::now();
        let previous = lock(&self.0).replace(parked);
        if let Some(previous) = previous {
            previous.go_home();
        }
    }
}

impl Drop for Affinity {
    fn drop(&mut self) {
        let parked = lock(&self.0).take();
        if let Some(parked) = parked {
            parked.go_home();
        }
    }
}

/// Idle upstream connections no client connection carries, newest last.
#[derive(Debug, Default)]
pub struct IdleList(Mutex<Vec<Parked>>);

impl IdleList {
    fn put(&self, parked: Parked) {
        if !parked.reusable() {
            return;
        }
        let mut idle = lock(&self.0);
        let now = Instant::now();
        idle.retain(|p| now.duration_since(p.idle_since) < IDLE_TIMEOUT && p.reusable());
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push(parked);
    }

    fn take(&self, target: &Target) -> Option<Parked> {
        let mut idle = lock(&self.0);
        let now = Instant::now();
        let i = idle.iter().rposition(|p| {
            p.target == *target && now.duration_since(p.idle_since) < IDLE_TIMEOUT
        })?;
        // `remove`, not `swap_remove`: the list stays oldest first, which `put` relies on to
        // evict the oldest. A shift of at most `MAX_IDLE` entries, once per new client
        // connection.
        Some(idle.remove(i))
    }

    /// How many idle connections are kept.
    pub fn len(&self) -> usize {
        lock(&self.0).len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes idle connections past their deadline or closed by the upstream.
    pub fn evict_expired(&self) {
        let now = Instant::now();
        lock(&self.0).retain(|p| now.duration_since(p.idle_since) < IDLE_TIMEOUT && p.reusable());
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Opens upstream connections and keeps the idle ones.
#[derive(Debug, Clone)]
pub struct Connections {
    connector: HttpsConnector<Connector>,
    idle: Arc<IdleList>,
}

impl Connections {
    /// Opens connections with `connector` (TCP with the target's connect deadline, then TLS for
    /// `https` targets).
    pub fn new(connector: HttpsConnector<Connector>) -> Connections {
        Connections {
            connector,
            idle: Arc::default(),
        }
    }

    /// The idle list (for housekeeping and tests).
    pub fn idle(&self) -> &Arc<IdleList> {
        &self.idle
    }

    async fn open(&self, target: &Target) -> Result<Parked, SendError> {
        let uri = Uri::builder()
            .scheme(target.scheme.clone())
            .authority(target.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| SendError::Connect(e.into()))?;
        let io = self
            .connector
            .clone()
            .oneshot(uri)
            .await
            .map_err(SendError::Connect)?;
        let (relay, waker) = Relay::new();
        let (sender, conn) = http1::handshake(Relayed::new(io))
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        Ok(Parked {
            target: target.clone(),
            sender,
            conn: Box::pin(conn),
            relay,
            waker,
            done: false,
            idle_since: Instant::now(),
            home: Arc::downgrade(&self.idle),
            timer: Deadline::default(),
        })
    }

    /// Sends `req` to `target` over the connection `affinity` carries, an idle one, or a new
    /// one, and returns the response with a body that drives the connection and hands it back
    /// to `affinity` once the response is complete.
    ///
    /// Returns a future that borrows nothing, so a caller can keep it as it is rather than
    /// await it from an `async fn` of its own (which would store `req` again).
    ///
    /// # Errors
    ///
    /// No connection could be opened, the one used failed before the response head, or the
    /// response head did not come within `timeout` (which includes opening a connection).
    pub fn send(
        self: &Arc<Self>,
        affinity: Arc<Affinity>,
        target: Target,
        mut req: Request<Body>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Response<Driven>, SendError>> + Send + 'static {
        let deadline = TokioInstant::now() + timeout;
        let reused = affinity.take(&target).or_else(|| self.idle.take(&target));
        let conns = self.clone();
        async move {
            if let Some(mut parked) = reused {
                parked.timer.aim(deadline);
                if parked.ready().await? {
                    match parked.send(req).await {
                        Ok(response) => return Ok(keep(response, parked, affinity)),
                        // Closed under us before the request went out: try a fresh connection.
                        Err((SendError::Http(_), Some(unsent))) => req = unsent,
                        Err((e, _)) => return Err(e),
                    }
                }
            }
            // Boxed: opening (connect, TLS, handshake) is the rare path and by far the largest
            // state; inline, every request's future would be that size, copied at every move.
            let mut parked = Box::pin(tokio::time::timeout_at(deadline, conns.open(&target)))
                .await
                .map_err(|_| SendError::Timeout)??;
            parked.timer.aim(deadline);
            match parked.send(req).await {
                Ok(response) => Ok(keep(response, parked, affinity)),
                Err((e, _)) => Err(e),
            }
        }
    }
}

/// Puts the connection into the response body, which drives it while the body streams.
fn keep(response: Response<Incoming>, parked: Parked, affinity: Arc<Affinity>) -> Response<Driven> {
    // After a 101 the connection speaks another protocol: never reuse it.
    let parked = (response.status() != http::StatusCode::SWITCHING_PROTOCOLS).then_some(parked);
    response.map(|incoming| Driven {
        incoming,
        parked,
        affinity,
        ended: false,
    })
}

/// A response body that drives its upstream connection and, once the body is complete, parks
/// the connection with the client connection it came from.
#[derive(Debug)]
pub struct Driven {
    incoming: Incoming,
    parked: Option<Parked>,
    affinity: Arc<Affinity>,
    ended: bool,
}

impl http_body::Body for Driven {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(parked) = this.parked.as_mut() else {
            return Pin::new(&mut this.incoming)
                .poll_frame(cx)
                .map_err(Into::into);
        };
        // The body only arrives while the connection is driven (`relay`): look, drive, look
        // again, without a waker of its own.
        let mut incoming = Pin::new(&mut this.incoming);
        let mut frame = incoming
            .as_mut()
            .poll_frame(&mut Context::from_waker(Waker::noop()));
        if frame.is_pending() {
            if let Some(e) = parked.drive(cx) {
                this.parked = None;
                return Poll::Ready(Some(Err(e.into())));
            }
            frame = if parked.done {
                // Ended: the body's last answer (its end, or an error if it was cut short) is
                // not tied to a drive any more.
                incoming.poll_frame(cx)
            } else {
                relay::look(cx, |noop| incoming.poll_frame(noop))
            };
        }
        if let Poll::Ready(None) = frame {
            this.ended = true;
        }
        frame.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || http_body::Body::is_end_stream(&self.incoming)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.incoming)
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended, so "ended" is also "the length
        // announced has all arrived".
        if let Some(parked) = self.parked.take()
            && (self.ended || http_body::Body::is_end_stream(&self.incoming))
            && parked.reusable()
        {
            self.affinity.park(parked);
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::echo::EchoServer;
    use crate::proxy::upstream::ConnectTimeouts;

    async fn setup() -> (EchoServer, Arc<Connections>, Target) {
        let echo = EchoServer::start(([127, 0, 0, 1], 0).into()).await.unwrap();
        let (conns, target) = connections_to(echo.addr());
        (echo, conns, target)
    }

    /// Connections with the default connector, and `addr` as a plain-HTTP target.
    fn connections_to(addr: std::net::SocketAddr) -> (Arc<Connections>, Target) {
        let conns = Arc::new(Connections::new(
            crate::proxy::connector(ConnectTimeouts::default()).unwrap(),
        ));
        let target = Target {
            scheme: http::uri::Scheme::HTTP,
            authority: addr.to_string().parse().unwrap(),
        };
        (conns, target)
    }

    const T: Duration = Duration::from_secs(30);

    fn get(target: &Target) -> Request<Body> {
        Request::get(format!("{target}/x"))
            .body(crate::body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn a_client_connection_that_ends_hands_its_upstream_connection_on() {
        let (echo, conns, target) = setup().await;
        let first = Arc::new(Affinity::default());
        let response = conns
            .send(first.clone(), target.clone(), get(&target), T)
            .await
            .unwrap();
        response.into_body().collect().await.unwrap();
        assert!(
            conns.idle().is_empty(),
            "the client connection still carries it"
        );
        drop(first);
        assert_eq!(conns.idle().len(), 1);

        let second = Arc::new(Affinity::default());
        let response = conns
            .send(second.clone(), target.clone(), get(&target), T)
            .await
            .unwrap();
        response.into_body().collect().await.unwrap();
        assert!(
            conns.idle().is_empty(),
            "the second client connection carries it now"
        );
        assert_eq!((echo.requests(), echo.connections()), (2, 1));
    }

    #[tokio::test]
    async fn the_idle_list_stays_oldest_first_when_one_is_taken_from_its_middle() {
        let (_a, conns, a) = setup().await;
        let b_echo = EchoServer::start(([127, 0, 0, 1], 0).into()).await.unwrap();
        let b = Target {
            scheme: http::uri::Scheme::HTTP,
            authority: b_echo.addr().to_string().parse().unwrap(),
        };
        // Three client connections, each carrying a connection of its own: to a, b, b.
        let mut carriers = Vec::new();
        for target in [&a, &b, &b] {
            let affinity = Arc::new(Affinity::default());
            let response = conns
                .send(affinity.clone(), target.clone(), get(target), T)
                .await
                .unwrap();
            response.into_body().collect().await.unwrap();
            carriers.push(affinity);
        }
        drop(carriers);
        let order = |conns: &Connections| {
            lock(&conns.idle().0)
                .iter()
                .map(|p| (p.target.clone(), p.idle_since))
                .collect::<Vec<_>>()
        };
        let before = order(&conns);
        assert_eq!(before.len(), 3);
        assert!(before.is_sorted_by_key(|(_, since)| *since));

        // A new client connection to a takes the oldest entry.
        let taken = conns.idle().take(&a).expect("an idle connection to a");
        assert_eq!(taken.target, a);
        assert_eq!(
            order(&conns),
            before[1..],
            "the two connections to b, oldest first, so that the oldest is evicted first"
        );
    }

    #[tokio::test]
    async fn waiting_for_a_busy_connection_ends_at_the_deadline() {
        // An upstream that takes the connection and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (conns, target) = connections_to(silent.local_addr().unwrap());
        let held = tokio::spawn(async move { silent.accept().await.map(|(stream, _)| stream) });
        let mut parked = conns.open(&target).await.unwrap();
        // One request under way: the connection cannot take another until it is answered.
        let unanswered = parked.sender.try_send_request(get(&target));
        parked.timer.aim(TokioInstant::now());
        let waited = tokio::time::timeout(T, parked.ready()).await;
        assert!(
            matches!(waited, Ok(Err(SendError::Timeout))),
            "the wait ended with {:?}",
            waited.map(|r| r.map_err(|e| e.chain()))
        );
        drop(unanswered);
        let _stream = held.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_response_not_read_to_the_end_closes_its_connection() {
        let (echo, conns, target) = setup().await;
        let affinity = Arc::new(Affinity::default());
        let response = conns
            .send(affinity.clone(), target.clone(), get(&target), T)
            .await
            .unwrap();
        drop(response);
        drop(affinity);
        assert!(
            conns.idle().is_empty(),
            "a half-read response's connection was kept"
        );

        let affinity = Arc::new(Affinity::default());
        let response = conns
            .send(affinity, target.clone(), get(&target), T)
            .await
            .unwrap();
        response.into_body().collect().await.unwrap();
        assert_eq!((echo.requests(), echo.connections()), (2, 2));
    }
}
