//! Upstream connections travel with client connections (docs/decisions.md): reused while the
//! client keeps its connection, handed on when it closes it, never reused after a failure.

use std::net::SocketAddr;

use http::Request;
use http_body_util::BodyExt;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use jwtgate::body::{self, Body};
use jwtgate::echo::EchoServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::support::{Harness, each_connection, public_upstream, raw, raw_status, within};

/// One client connection to `addr`, kept open for several requests in turn.
struct KeepAlive(http1::SendRequest<Body>);

impl KeepAlive {
    async fn open(addr: SocketAddr) -> KeepAlive {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        KeepAlive(sender)
    }

    /// `GET path`; the status and the body.
    async fn get(&mut self, path: &str) -> (u16, bytes::Bytes) {
        self.0.ready().await.unwrap();
        let req = Request::get(path)
            .header("host", "gateway.test")
            .body(body::empty())
            .unwrap();
        let response = self.0.send_request(req).await.unwrap();
        let status = response.status().as_u16();
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    }

    /// `POST path` with a body of `len` bytes through to the echo upstream: which upstream
    /// connection carried it, and how many body bytes the upstream read.
    async fn upload(&mut self, path: &str, len: usize) -> (u64, u64) {
        self.0.ready().await.unwrap();
        let req = Request::post(path)
            .header("host", "gateway.test")
            .body(body::full(vec![b'x'; len]))
            .unwrap();
        let response = self.0.send_request(req).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        (
            doc["connection"].as_u64().unwrap(),
            doc["body_bytes"].as_u64().unwrap(),
        )
    }

    /// `GET path` through to the echo upstream: which upstream connection carried it.
    async fn upstream_connection(&mut self, path: &str) -> u64 {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        doc["connection"].as_u64().unwrap()
    }
}

#[tokio::test]
async fn a_keep_alive_client_keeps_one_upstream_connection() {
    let h = Harness::start().await;
    let mut client = KeepAlive::open(h.gateway.listen_addr()).await;
    for _ in 0..5 {
        assert_eq!(client.upstream_connection("/public/x").await, 1);
    }
    assert_eq!(h.echo.requests(), 5);
    assert_eq!(h.echo.connections(), 1);
}

/// An upstream that reads each upload whole before it answers leaves the connection ready
/// for the next request, which goes out on it.
#[tokio::test]
async fn uploads_on_a_keep_alive_client_keep_one_upstream_connection() {
    let h = Harness::start().await;
    let mut client = KeepAlive::open(h.gateway.listen_addr()).await;
    for len in [1, 100_000, 0, 3] {
        assert_eq!(client.upload("/public/x", len).await, (1, len as u64));
    }
    assert_eq!(client.upstream_connection("/public/x").await, 1);
    assert_eq!(h.echo.connections(), 1);
}

/// The upstream is an origin server: it gets the path and query only (RFC 9112, section
/// 3.2.1), on the first request of a connection and on the ones its carried upstream
/// connection serves after it, so it takes the host from `Host` and not from the target.
#[tokio::test]
async fn requests_reach_the_upstream_in_origin_form() {
    let h = Harness::start().await;
    let mut client = KeepAlive::open(h.gateway.listen_addr()).await;
    for (path, target) in [
        ("/public/x?a=1&b=2", "/public/x?a=1&b=2"),
        ("/public/stripped/y?q", "/y?q"),
        ("/public", "/public"),
    ] {
        let (status, body) = client.get(path).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["target"], target, "for {path}");
        let hosts: Vec<&serde_json::Value> = doc["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|pair| pair[0] == "host")
            .map(|pair| &pair[1])
            .collect();
        assert_eq!(hosts, ["gateway.test"], "the client's Host, for {path}");
    }
    // All three went through one client connection, so its upstream connection was reused.
    assert_eq!(h.echo.connections(), 1);

    // A client may send the absolute form to the gateway; the upstream still gets the origin
    // form.
    let raw = h
        .raw(b"GET http://api.example/public/z?k=v HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n")
        .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains(r#""target":"/public/z?k=v""#), "{raw}");
}

#[tokio::test]
async fn two_clients_at_once_get_two_upstream_connections() {
    let h = Harness::start().await;
    let mut a = KeepAlive::open(h.gateway.listen_addr()).await;
    let mut b = KeepAlive::open(h.gateway.listen_addr()).await;
    let (first_a, first_b) = (
        a.upstream_connection("/public/a").await,
        b.upstream_connection("/public/b").await,
    );
    assert_ne!(
        first_a, first_b,
        "one upstream connection serves one client at a time"
    );
    for _ in 0..3 {
        assert_eq!(a.upstream_connection("/public/a").await, first_a);
        assert_eq!(b.upstream_connection("/public/b").await, first_b);
    }
    assert_eq!(h.echo.connections(), 2);
}

#[tokio::test]
async fn round_robin_targets_each_keep_their_connection() {
    let a = EchoServer::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let b = EchoServer::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let h = Harness::with(&public_upstream(
        "pair",
        &[
            format!("http://{}", a.addr()),
            format!("http://{}", b.addr()),
        ],
        "",
    ))
    .await;
    let mut client = KeepAlive::open(h.gateway.listen_addr()).await;
    for _ in 0..6 {
        assert_eq!(client.get("/pair").await.0, 200);
    }
    // Targets alternate per request, and each target's connection is found again (the one the
    // client connection carries, or the idle one it handed on).
    assert_eq!((a.requests(), b.requests()), (3, 3));
    assert_eq!((a.connections(), b.connections()), (1, 1));
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_replaced_not_answered_502() {
    let (upstream, close, mut closed) = answer_then_close_when_told().await;
    let h = Harness::with(&public_upstream(
        "once",
        &[format!("http://{upstream}")],
        "",
    ))
    .await;
    let mut client = KeepAlive::open(h.gateway.listen_addr()).await;
    for round in 1..=3 {
        let (status, body) = client.get("/once").await;
        assert_eq!(status, 200, "round {round}");
        assert_eq!(body, "ok");
        // Now the gateway keeps the connection idle; the upstream closes it (its FIN is with
        // the gateway when `closed` reports), and the next request must go out on a new one.
        close.send(()).unwrap();
        closed.recv().await.unwrap();
    }
}

#[tokio::test]
async fn after_a_timeout_the_upstream_connection_is_not_reused() {
    let (upstream, mut requests) = answers_second_request_only().await;
    let h = Harness::with(&public_upstream(
        "slow",
        &[format!("http://{upstream}")],
        "timeout = \"200ms\"",
    ))
    .await;
    let mut client = KeepAlive::open(h.gateway.listen_addr()).await;
    assert_eq!(client.get("/slow").await.0, 504);
    // The first connection never answers, even late; a reused one would time out again.
    let (status, body) = client.get("/slow").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(requests.recv().await, Some(1));
    assert_eq!(requests.recv().await, Some(2));
}

/// A carried connection keeps one timer for all its requests' deadlines: moved later for the
/// next request of the same route, and earlier for a route with a shorter timeout.
#[tokio::test]
async fn each_request_on_a_kept_connection_gets_its_own_deadline() {
    let upstream = answers_first_request_of_each_connection().await;
    let target = [format!("http://{upstream}")];
    let h = Harness::with(&format!(
        "{}{}",
        public_upstream("patient", &target, "timeout = \"1h\""),
        public_upstream("hasty", &target, "timeout = \"200ms\"")
    ))
    .await;
    let mut client = KeepAlive::open(h.gateway.listen_addr()).await;
    // The hasty route's deadline is earlier than the one the connection's timer holds.
    assert_eq!(within(client.get("/patient")).await.0, 200);
    assert_eq!(within(client.get("/hasty")).await.0, 504);
    // A fresh connection: its second request's deadline is later than the first's.
    assert_eq!(within(client.get("/hasty")).await.0, 200);
    assert_eq!(within(client.get("/hasty")).await.0, 504);
}

#[tokio::test]
async fn clients_that_close_each_connection_still_reuse_upstream_connections() {
    let h = Harness::start().await;
    let mut seen = Vec::new();
    for _ in 0..5 {
        let reply = raw(
            h.gateway.listen_addr(),
            b"GET /public/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(raw_status(&reply), 200, "{reply}");
        let body = &reply[reply.find("\r\n\r\n").unwrap() + 4..];
        let doc: serde_json::Value = serde_json::from_str(body).unwrap();
        seen.push(doc["connection"].as_u64().unwrap());
    }
    // Each client connection hands its upstream connection to the idle list when it ends; a
    // client connection that starts before the previous one has quite ended opens another.
    assert!(
        h.echo.connections() < 5,
        "every request opened an upstream connection: {seen:?}"
    );
}

/// An upstream that answers each connection's first request with `ok` (keeping the connection
/// open, as any HTTP/1.1 server does), closes it when told to, and reports once it is closed.
async fn answer_then_close_when_told() -> (
    SocketAddr,
    mpsc::UnboundedSender<()>,
    mpsc::UnboundedReceiver<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (close_tx, mut close_rx) = mpsc::unbounded_channel();
    let (closed_tx, closed_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            read_head(&mut s).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            if close_rx.recv().await.is_none() {
                return;
            }
            drop(s);
            let _ = closed_tx.send(());
        }
    });
    (addr, close_tx, closed_rx)
}

/// An upstream that never answers the first request it gets and answers every later one on a
/// new connection; reports each request's number.
async fn answers_second_request_only() -> (SocketAddr, mpsc::UnboundedReceiver<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut n = 0;
        let mut silent = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            read_head(&mut s).await;
            n += 1;
            let _ = tx.send(n);
            if n == 1 {
                // Keep it open and say nothing.
                silent.push(s);
                continue;
            }
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            drop(s);
        }
    });
    (addr, rx)
}

/// Reads until the end of a request head (the tests send no bodies).
pub(crate) async fn read_head(s: &mut TcpStream) {
    let _ = take_head(s, &mut Vec::new()).await;
}

/// Reads from `s` into `buf` until it holds a whole message head, and takes the head out of
/// `buf`, lowercased; `None` if the connection ends first.
async fn take_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..at]).to_ascii_lowercase();
            buf.drain(..at + 4);
            return Some(head);
        }
        read_more(s, buf).await?;
    }
}

/// Reads from `s` into `buf` until it holds `len` bytes, and takes them out of `buf`; `None`
/// if the connection ends first.
async fn take_body(s: &mut TcpStream, buf: &mut Vec<u8>, len: usize) -> Option<Vec<u8>> {
    while buf.len() < len {
        read_more(s, buf).await?;
    }
    Some(buf.drain(..len).collect())
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// The `Content-Length` of a lowercased head (0 without one).
fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// An upstream that answers the first request on each connection with `ok` and never answers
/// a later one (it keeps the connection open and says nothing).
async fn answers_first_request_of_each_connection() -> SocketAddr {
    each_connection(|mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await;
        read_head(&mut s).await;
        // Hold the connection until the gateway gives up on it.
        let _ = s.read(&mut [0u8; 1]).await;
    })
    .await
}

/// An upstream that answers each request as soon as its head is in, then reads and discards
/// its `Content-Length` body before the next request (as servers that refuse an upload early
/// do); reports each request's head and how many body bytes it drained.
async fn answers_before_the_body() -> (SocketAddr, mpsc::UnboundedReceiver<(String, usize)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(head) = take_head(&mut s, &mut buf).await {
                    let length = content_length(&head);
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
                        .await
                        .is_err()
                        || take_body(&mut s, &mut buf, length).await.is_none()
                    {
                        return;
                    }
                    let first = head.lines().next().unwrap_or_default().to_string();
                    let _ = tx.send((first, length));
                }
            });
        }
    });
    (addr, rx)
}

/// Reads one response with a `Content-Length` body from a raw client connection: its status
/// and body, or `None` if the gateway closed the connection first.
async fn read_response(s: &mut TcpStream) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let head = take_head(s, &mut buf).await?;
    let body = take_body(s, &mut buf, content_length(&head)).await?;
    let status = head[9..12].parse().unwrap();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The upstream answers an upload before it has read it: the answer reaches the client at
/// once, and the client connection is then closed rather than left waiting for a body the
/// gateway no longer forwards (the upstream connection, still in the middle of the request,
/// cannot carry another one). A new client connection is served as usual.
#[tokio::test]
async fn an_answer_before_the_upload_ends_closes_the_client_connection() {
    let (upstream, mut seen) = answers_before_the_body().await;
    let h = Harness::with(&public_upstream(
        "early",
        &[format!("http://{upstream}")],
        "",
    ))
    .await;
    let mut s = TcpStream::connect(h.gateway.listen_addr()).await.unwrap();
    s.write_all(b"POST /early HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[b'x'; 10]).await.unwrap();
    assert_eq!(
        within(read_response(&mut s)).await,
        Some((200, "early".to_string()))
    );
    // The rest of the body and a second request: the gateway may already have closed the
    // connection, so these writes may fail; what matters is that no answer is left pending.
    let _ = s.write_all(&[b'x'; 99_990]).await;
    let _ = s.write_all(b"GET /early HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(within(read_response(&mut s)).await, None);

    let mut s = TcpStream::connect(h.gateway.listen_addr()).await.unwrap();
    s.write_all(b"GET /early HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        within(read_response(&mut s)).await,
        Some((200, "early".to_string()))
    );
    // The upstream saw the upload cut short (its connection closed) and then the new request,
    // on a new connection.
    assert_eq!(
        within(seen.recv()).await,
        Some(("get /early http/1.1".to_string(), 0))
    );
}

/// An upstream that never answers: it reports each request once its head is in, and each
/// connection once the gateway has closed it.
pub(crate) async fn holds_each_request() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<()>,
    mpsc::UnboundedReceiver<()>,
) {
    let (got_tx, got_rx) = mpsc::unbounded_channel();
    let (closed_tx, closed_rx) = mpsc::unbounded_channel();
    let addr = each_connection(move |mut s| {
        let (got_tx, closed_tx) = (got_tx.clone(), closed_tx.clone());
        async move {
            let mut buf = Vec::new();
            if take_head(&mut s, &mut buf).await.is_none() {
                return;
            }
            let _ = got_tx.send(());
            while read_more(&mut s, &mut buf).await.is_some() {}
            let _ = closed_tx.send(());
        }
    })
    .await;
    (addr, got_rx, closed_rx)
}

/// A client that hangs up while its request waits on the upstream takes the upstream's work
/// with it: the gateway closes the upstream connection at once, not when the route's
/// `timeout` (here an hour) would have ended the wait. A slow upstream behind impatient
/// clients, which retry, would otherwise serve every abandoned request to its end. A client
/// that only shuts its sending side (a half-close) has hung up too, as for nginx by default:
/// it gets no answer, and its connection is closed.
#[tokio::test]
async fn a_client_that_hangs_up_mid_request_closes_its_upstream_connection() {
    let (upstream, mut got, mut closed) = holds_each_request().await;
    let h = Harness::with(&public_upstream(
        "hold",
        &[format!("http://{upstream}")],
        "timeout = \"1h\"",
    ))
    .await;
    let open = || async {
        let mut s = TcpStream::connect(h.gateway.listen_addr()).await.unwrap();
        s.write_all(b"GET /hold HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        s
    };

    let s = open().await;
    within(got.recv()).await.unwrap();
    drop(s);
    assert_eq!(within(closed.recv()).await, Some(()), "after a close");

    let mut s = open().await;
    within(got.recv()).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(within(closed.recv()).await, Some(()), "after a half-close");
    let mut rest = Vec::new();
    within(s.read_to_end(&mut rest)).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "",
        "no answer after a half-close"
    );
}
