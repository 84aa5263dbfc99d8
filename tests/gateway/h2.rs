//! h2's own limits. Idle connections: one with no stream open is sent GOAWAY 30 s after its
//! last stream (or its preface), as an idle HTTP/1 keep-alive connection is closed after 30 s,
//! and is closed outright 30 s later if the client has not finished the close by then. Header
//! lists: over 64 KiB (as for HTTP/1 heads), a 431. h2 with prior knowledge on the plain
//! listener, and once over TLS, where the same watch reads the decrypted bytes.
//!
//! Time is tokio's paused clock. When every task waits, the runtime looks for I/O once and
//! then moves the clock to the next timer, even when that I/O has arrived: a request in
//! flight over loopback would let the gateway's 30 s idle timer jump due. So each test keeps a
//! 1 ms timer running (`fine_clock`), and the clock moves 1 ms at a time while I/O is under
//! way; and the clients write with `TCP_NODELAY` (`connect`), so that no write waits on the
//! real time of a delayed acknowledgement.

use std::net::SocketAddr;
use std::time::Duration;

use http::Request;
use hyper::client::conn::http2::SendRequest;
use jwtgate::body::{self, Body};
use jwtgate::config::Config;
use jwtgate::echo::EchoServer;
use jwtgate::server::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::support::{each_connection, h2_over};
use crate::tls::{connect_over, tls_gateway_to};
use crate::upstream_conns::read_head;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame, then the acknowledgement of the server's.
const SETTINGS_AND_ACK: &[u8] = b"\0\0\0\x04\0\0\0\0\0\0\0\0\x04\x01\0\0\0\0";
const GOAWAY: u8 = 0x7;

/// On the fine clock, a gateway with `/public` to an echo server, `/late` to an upstream that
/// answers each request 45 s after its head, and `/trickle` to one that sends the head at once
/// and the body 45 s later (both under a route timeout of an hour).
async fn gateway() -> (EchoServer, Gateway) {
    fine_clock();
    let echo = EchoServer::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let late = answers_after_45_s(b"").await;
    let trickle = answers_after_45_s(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n").await;
    let config = Config::from_toml_str(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.echo]\ntargets = [\"http://{}\"]\n\
         [upstreams.late]\ntargets = [\"http://{late}\"]\ntimeout = \"1h\"\n\
         [upstreams.trickle]\ntargets = [\"http://{trickle}\"]\ntimeout = \"1h\"\n\
         [[routes]]\npath = \"/public\"\nupstream = \"echo\"\npublic = true\n\
         [[routes]]\npath = \"/late\"\nupstream = \"late\"\npublic = true\n\
         [[routes]]\npath = \"/trickle\"\nupstream = \"trickle\"\npublic = true\n",
        echo.addr()
    ))
    .unwrap();
    let gateway = Gateway::start(config).await.unwrap();
    (echo, gateway)
}

/// An upstream that writes `first` as soon as a request's head is in, and the rest of the
/// response `HTTP/1.1 200 OK`, 4 bytes of body, 45 s later.
async fn answers_after_45_s(first: &'static [u8]) -> SocketAddr {
    each_connection(move |mut s| async move {
        let whole = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate";
        read_head(&mut s).await;
        let _ = s.write_all(first).await;
        tokio::time::sleep(Duration::from_secs(45)).await;
        let _ = s.write_all(&whole[first.len()..]).await;
        let _ = s.read(&mut [0u8; 64]).await;
    })
    .await
}

/// A connection to the gateway that sends each write at once. With Nagle's algorithm, a small
/// write waits for the peer's delayed acknowledgement, some milliseconds of real time, which
/// the paused clock would count as seconds (`fine_clock`).
async fn connect(gateway: &Gateway) -> TcpStream {
    let tcp = TcpStream::connect(gateway.listen_addr()).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp
}

/// An h2 client (hyper's, which answers PINGs) and the task that drives its connection.
async fn h2_client(gateway: &Gateway) -> (SendRequest<Body>, JoinHandle<()>) {
    h2_over(connect(gateway).await).await
}

/// The status of `GET path` on `send`, with its body read; `None` if it could not be sent.
async fn get(send: &mut SendRequest<Body>, path: &str) -> Option<u16> {
    let request = Request::get(format!("http://gw{path}"))
        .body(body::empty())
        .unwrap();
    let response = send.send_request(request).await.ok()?;
    let status = response.status().as_u16();
    http_body_util::BodyExt::collect(response.into_body())
        .await
        .ok()?;
    Some(status)
}

/// Keeps the next timer at most 1 ms away, for the paused clock to move in steps that small.
fn fine_clock() {
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
}

/// Waits for the client's connection to end, for five minutes at most.
async fn ends(conn: JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(300), conn)
        .await
        .expect("the connection is still open after five minutes")
        .unwrap();
}

/// `after`, within the timer wheel's resolution.
fn about(after: Duration, secs: u64) {
    assert!(
        (Duration::from_secs(secs)..Duration::from_secs(secs + 1)).contains(&after),
        "after {after:?}, not {secs} s"
    );
}

#[tokio::test(start_paused = true)]
async fn an_h2_connection_that_sends_no_request_gets_goaway_at_30_s_and_is_closed_at_60_s() {
    let (echo, gateway) = gateway().await;
    let mut stream = connect(&gateway).await;
    let started = Instant::now();
    stream.write_all(PREFACE).await.unwrap();
    stream.write_all(SETTINGS_AND_ACK).await.unwrap();
    // Frames as they come (type, when), until the connection closes. This client answers
    // nothing, not even the PING that hyper's graceful close sends with its GOAWAY.
    let (mut frames, mut pending) = (Vec::new(), Vec::new());
    let mut buf = [0u8; 4096];
    let give_up = started + Duration::from_secs(300);
    let closed = loop {
        let read = tokio::time::timeout_at(give_up, stream.read(&mut buf)).await;
        match read.expect("still open after five minutes") {
            Ok(0) | Err(_) => break started.elapsed(),
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
        while pending.len() >= 9 {
            let len = usize::from(pending[0]) << 16
                | usize::from(pending[1]) << 8
                | usize::from(pending[2]);
            if pending.len() < 9 + len {
                break;
            }
            frames.push((pending[3], started.elapsed()));
            pending.drain(..9 + len);
        }
    };
    let goaway = frames.iter().find(|(kind, _)| *kind == GOAWAY);
    let Some(&(_, sent)) = goaway else {
        panic!("no GOAWAY in {frames:?}");
    };
    about(sent, 30);
    about(closed, 60);
    assert_eq!(echo.requests(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_idle_h2_connection_is_closed_30_s_after_its_last_response() {
    let (echo, gateway) = gateway().await;
    let (mut send, conn) = h2_client(&gateway).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(get(&mut send, "/public/x").await, Some(200));
    let answered = Instant::now();
    // hyper's client answers the PING, so the close completes at once.
    ends(conn).await;
    about(answered.elapsed(), 30);
    assert_eq!(get(&mut send, "/public/x").await, None);
    assert_eq!(echo.requests(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_h2_client_asking_every_20_s_keeps_its_connection() {
    let (echo, gateway) = gateway().await;
    let (mut send, conn) = h2_client(&gateway).await;
    let started = Instant::now();
    for round in 1..=5 {
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(
            get(&mut send, "/public/x").await,
            Some(200),
            "round {round}"
        );
    }
    assert!(started.elapsed() >= Duration::from_secs(100));
    assert!(!conn.is_finished());
    assert_eq!(echo.requests(), 5);
}

/// A stream is open until its response has been sent: a response that takes 45 s, before its
/// head or in its body, is not idle time, and the connection takes new requests after it.
#[tokio::test(start_paused = true)]
async fn an_h2_stream_open_longer_than_30_s_keeps_its_connection() {
    let (echo, gateway) = gateway().await;
    let (mut send, conn) = h2_client(&gateway).await;
    for path in ["/late", "/trickle"] {
        let started = Instant::now();
        assert_eq!(get(&mut send, path).await, Some(200), "{path}");
        about(started.elapsed(), 45);
    }
    assert_eq!(get(&mut send, "/public/x").await, Some(200));
    assert!(!conn.is_finished());
    assert_eq!(echo.requests(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_idle_h2_connection_over_tls_is_closed_30_s_after_its_last_response() {
    fine_clock();
    let echo = EchoServer::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (gateway, pem) = tls_gateway_to(dir.path(), "public", echo.addr(), "30s").await;
    let tls = connect_over(connect(&gateway).await, &pem.der, b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = h2_over(tls).await;
    assert_eq!(get(&mut send, "/public/x").await, Some(200));
    let answered = Instant::now();
    ends(conn).await;
    about(answered.elapsed(), 30);
    assert_eq!(echo.requests(), 1);
}

/// An h2 request's header list may be as large as an HTTP/1 head, 64 KiB (hyper's own limit
/// is 16 KiB): a 20 KiB header is served, and a larger list is answered 431 by the h2 crate,
/// before anything reaches the gateway's layers, and the connection carries on.
#[tokio::test(start_paused = true)]
async fn an_h2_header_list_over_64_kib_is_a_431_and_the_connection_carries_on() {
    let (echo, gateway) = gateway().await;
    let (mut send, conn) = h2_client(&gateway).await;
    let with_header = |bytes: usize| {
        Request::get("http://gw/public/x")
            .header("x-big", "a".repeat(bytes))
            .body(body::empty())
            .unwrap()
    };
    let response = send.send_request(with_header(20 * 1024)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(echo.requests(), 1);
    let response = send.send_request(with_header(65 * 1024)).await.unwrap();
    assert_eq!(response.status(), 431);
    assert_eq!(get(&mut send, "/public/x").await, Some(200));
    assert!(!conn.is_finished());
    assert_eq!(echo.requests(), 2);
}
