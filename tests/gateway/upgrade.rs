//! Upgrades: WebSocket passes through on GET routes; h2c and other protocols never do.

use std::net::SocketAddr;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jwtgate::body;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Harness, raw_status};

/// An upstream that accepts WebSocket upgrades and then echoes raw bytes back.
async fn websocket_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                    let wants = req
                        .headers()
                        .get("upgrade")
                        .is_some_and(|v| v == "websocket");
                    if !wants {
                        let mut r = Response::new(body::full("no upgrade"));
                        *r.status_mut() = StatusCode::BAD_REQUEST;
                        return Ok::<_, std::convert::Infallible>(r);
                    }
                    let upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let mut io = TokioIo::new(upgrade.await.unwrap());
                        let mut buf = [0u8; 1024];
                        loop {
                            match io.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => io.write_all(&buf[..n]).await.unwrap(),
                            }
                        }
                    });
                    let mut r = Response::new(body::empty());
                    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    r.headers_mut()
                        .insert("upgrade", "websocket".parse().unwrap());
                    r.headers_mut()
                        .insert("connection", "upgrade".parse().unwrap());
                    r.headers_mut().insert(
                        "sec-websocket-accept",
                        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".parse().unwrap(),
                    );
                    Ok(r)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn harness() -> Harness {
    let ws = websocket_upstream().await;
    Harness::with(&format!(
        "[upstreams.ws]\ntargets = [\"http://{ws}\"]\n[[routes]]\npath = \"/ws\"\nmethods = [\"GET\"]\nupstream = \"ws\"\npublic = true\n[[routes]]\npath = \"/public\"\nupstream = \"echo\"\npublic = true\n"
    ))
    .await
}

/// Reads one response head (up to the blank line) from a raw stream.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "closed mid-head: {head:?}"
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn a_websocket_upgrade_is_tunnelled_both_ways() {
    let h = harness().await;
    let mut stream = TcpStream::connect(h.gateway.listen_addr()).await.unwrap();
    stream
        .write_all(b"GET /ws/chat HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert_eq!(raw_status(&head), 101, "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(lower.contains("connection: upgrade"), "{head}");
    assert!(
        lower.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );

    for message in [&b"hello"[..], b"\x81\x05world", &[0u8; 4096][..]] {
        stream.write_all(message).await.unwrap();
        let mut back = vec![0u8; message.len()];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(back, message);
    }
}

#[tokio::test]
async fn an_h2c_upgrade_is_never_passed_to_the_upstream() {
    let h = harness().await;
    let reply = h
        .raw(b"GET /public/x HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(raw_status(&reply), 200, "{reply}");
    let lower = reply.to_ascii_lowercase();
    assert!(
        !lower.contains(r#"["upgrade""#),
        "Upgrade reached the upstream: {reply}"
    );
    assert!(!lower.contains(r#"["http2-settings""#), "{reply}");
}

#[tokio::test]
async fn a_websocket_upgrade_with_another_method_is_not_tunnelled() {
    let h = harness().await;
    // POST is not a WebSocket handshake: the upgrade headers are stripped like any hop-by-hop
    // header and the echo answers an ordinary request.
    let reply = h
        .raw(b"POST /public/x HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(raw_status(&reply), 200, "{reply}");
    assert!(
        !reply.to_ascii_lowercase().contains(r#"["upgrade""#),
        "{reply}"
    );
}
