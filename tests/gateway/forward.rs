//! Forwarding: header hygiene, protected routes failing closed, round robin, 502/504,
//! streaming bodies.

use bytes::Bytes;
use futures_util::stream;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use jwtgate::body::{self, BoxError};
use jwtgate::echo::EchoServer;

use crate::support::{Harness, closed_port, public_upstream, raw_status, silent_upstream};

#[tokio::test]
async fn hop_by_hop_and_connection_named_headers_are_removed() {
    let h = Harness::start().await;
    let r = h
        .send(
            Request::get("/public/x")
                .header("connection", "keep-alive, X-Forwarded-For, X-Secret")
                .header("x-secret", "internal")
                .header("keep-alive", "timeout=5")
                .header("te", "trailers")
                .header("proxy-authorization", "Basic eDp5")
                .header("proxy-connection", "keep-alive")
                .header("x-forwarded-for", "6.6.6.6")
                .header("x-kept", "yes")
                .body(body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    for gone in [
        "x-secret",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "connection",
    ] {
        assert_eq!(r.upstream_header(gone), None, "{gone} reached the upstream");
    }
    assert_eq!(r.upstream_header("x-kept").as_deref(), Some("yes"));
    // The client's X-Forwarded-For was nominated in Connection, so only the gateway's remains.
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
}

#[tokio::test]
async fn forwarding_headers_are_set_by_the_gateway() {
    let h = Harness::start().await;
    let r = h
        .send(
            Request::get("/public/x")
                .header("host", "api.example")
                .header("x-forwarded-for", "10.0.0.1")
                .header("x-forwarded-proto", "https")
                .header("x-forwarded-host", "evil.example")
                .body(body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("10.0.0.1, 127.0.0.1")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-host").as_deref(),
        Some("api.example")
    );
    assert_eq!(r.upstream_header("host").as_deref(), Some("api.example"));
}

#[tokio::test]
async fn the_bearer_token_is_not_forwarded_by_default() {
    let h = Harness::start().await;
    let r = h
        .send(
            Request::get("/public/x")
                .header("authorization", "Bearer abc.def.ghi")
                .body(body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("authorization"), None);
}

#[tokio::test]
async fn a_valid_token_reaches_a_protected_route_without_its_bearer_header() {
    let h = Harness::start().await;
    let r = h.get_with("/api/orders/7", &h.token("alice")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["path"], "/api/orders/7");
    assert_eq!(r.upstream_header("authorization"), None);
    assert_eq!(h.echo.requests(), 1);
}

#[tokio::test]
async fn forward_authorization_passes_the_token_when_asked() {
    let h = Harness::with(&format!(
        "{}\n[forward]\nforward_authorization = true\n",
        crate::support::ROUTES
    ))
    .await;
    let token = h.token("alice");
    let r = h.get_with("/api/orders", &token).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("authorization"),
        Some(format!("Bearer {token}"))
    );
}

#[tokio::test]
async fn targets_are_used_round_robin() {
    let first = EchoServer::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let second = EchoServer::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let h = Harness::with(&public_upstream(
        "pair",
        &[
            format!("http://{}", first.addr()),
            format!("http://{}", second.addr()),
        ],
        "",
    ))
    .await;
    for _ in 0..6 {
        assert_eq!(h.get("/pair").await.status, 200);
    }
    assert_eq!((first.requests(), second.requests()), (3, 3));
}

#[tokio::test]
async fn a_refused_upstream_is_a_502() {
    let dead = closed_port().await;
    let h = Harness::with(&public_upstream("dead", &[format!("http://{dead}")], "")).await;
    let r = h.get("/dead").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "bad_gateway");
}

/// An upstream that accepts and then says nothing: over http no response head comes, over
/// https not even the TLS handshake's answer (opening a connection counts against `timeout`).
#[tokio::test]
async fn a_silent_upstream_is_a_504_after_its_timeout() {
    let (silent, _task) = silent_upstream().await;
    for scheme in ["http", "https"] {
        let h = Harness::with(&public_upstream(
            "slow",
            &[format!("{scheme}://{silent}")],
            "timeout = \"300ms\"",
        ))
        .await;
        let r = h.get("/slow").await;
        assert_eq!(r.status, 504, "{scheme}");
        assert_eq!(r.json()["error"], "gateway_timeout", "{scheme}");
    }
}

fn counted_body(total: u64, chunk: usize) -> jwtgate::body::Body {
    let chunks = total.div_ceil(chunk as u64);
    let data = Bytes::from(vec![b'x'; chunk]);
    let s = stream::iter((0..chunks).map(move |i| {
        let remaining = total - i * chunk as u64;
        let n = remaining.min(chunk as u64) as usize;
        Ok::<_, BoxError>(Frame::data(data.slice(..n)))
    }));
    StreamBody::new(s).boxed_unsync()
}

#[tokio::test]
async fn a_large_chunked_upload_streams_to_the_upstream() {
    let h = Harness::start().await;
    let total: u64 = 64 << 20;
    let r = h
        .send(
            Request::post("/public/upload")
                .body(counted_body(total, 64 << 10))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["body_bytes"], total);
    assert_eq!(doc["body_error"], serde_json::Value::Null);
    // Sent without a length, so it reached the upstream chunked, with no Content-Length.
    assert_eq!(r.upstream_header("content-length"), None);
}

#[tokio::test]
async fn a_body_streams_back_from_the_upstream_unchanged() {
    let h = Harness::start().await;
    let payload: Vec<u8> = (0..(8 << 20)).map(|i: u32| (i % 251) as u8).collect();
    let r = h
        .send(
            Request::put("/public/echo")
                .header("x-echo-body", "stream")
                .header("content-type", "application/octet-stream")
                .body(body::full(payload.clone()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/octet-stream");
    assert!(r.body == payload, "the body came back changed");
}

/// An upstream that answers every request with the same raw bytes.
async fn canned_upstream(response: &'static [u8]) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(response).await;
        }
    });
    addr
}

async fn harness_for(upstream: std::net::SocketAddr) -> Harness {
    Harness::with(&public_upstream(
        "canned",
        &[format!("http://{upstream}")],
        "",
    ))
    .await
}

#[tokio::test]
async fn hop_by_hop_headers_of_the_response_are_removed() {
    let upstream = canned_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\nConnection: X-Upstream-Secret\r\nX-Upstream-Secret: 1\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\nok",
    )
    .await;
    let h = harness_for(upstream).await;
    let reply = h
        .raw(b"GET /canned HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(raw_status(&reply), 200, "{reply}");
    let lower = reply.to_ascii_lowercase();
    for gone in ["keep-alive:", "x-upstream-secret:", "proxy-connection:"] {
        assert!(!lower.contains(gone), "{gone} reached the client: {reply}");
    }
    assert!(lower.contains("x-kept: yes"), "{reply}");
}

#[tokio::test]
async fn an_http_1_0_upstream_is_answered_in_the_clients_version() {
    let upstream = canned_upstream(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let h = harness_for(upstream).await;
    let reply = h
        .raw(b"GET /canned HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("ok"), "{reply}");
}

const IDENTITY: &str = r#"
[forward]
claims_to_headers = { sub = "X-Auth-Subject", groups = "X-Auth-Groups", uid = "X-Auth-User", ver = "X-Auth-Version" }
"#;

#[tokio::test]
async fn verified_claims_become_headers_and_arrays_are_joined() {
    let h = Harness::with(&format!("{}{IDENTITY}", crate::support::ROUTES)).await;
    let r = h.get_with("/api/orders", &h.token("bob")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-auth-subject").as_deref(), Some("bob"));
    assert_eq!(
        r.upstream_header("x-auth-groups").as_deref(),
        Some("admins,orders-readers")
    );
    assert_eq!(r.upstream_header("x-auth-version").as_deref(), Some("1"));
    assert!(r.upstream_header("x-auth-user").is_some());
}

#[tokio::test]
async fn spoofed_identity_headers_are_removed_on_every_route() {
    let h = Harness::with(&format!("{}{IDENTITY}", crate::support::ROUTES)).await;
    let spoof = |req: http::request::Builder| {
        req.header("X-Auth-Subject", "admin")
            .header("x-auth-groups", "admins")
            .header("X-AUTH-USER", "00uADMIN")
            .header("x_auth_subject", "admin")
            .header("X_Auth_Groups", "admins")
            // A hop-by-hop listing must not remove what the gateway itself sets.
            .header("connection", "X-Auth-Subject, X-Auth-Groups")
    };
    // Public route: no identity at all reaches the upstream.
    let r = h
        .send(
            spoof(Request::get("/public/x"))
                .body(body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    for name in [
        "x-auth-subject",
        "x-auth-groups",
        "x-auth-user",
        "x_auth_subject",
        "x_auth_groups",
    ] {
        assert_eq!(r.upstream_header(name), None, "{name} reached the upstream");
    }
    // Protected route: only the verified values.
    let token = h.token("alice");
    let r = h
        .send(
            spoof(Request::get("/api/orders"))
                .header("authorization", format!("Bearer {token}"))
                .body(body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-auth-subject").as_deref(),
        Some("alice")
    );
    assert_eq!(
        r.upstream_header("x-auth-groups").as_deref(),
        Some("orders-readers")
    );
    assert_eq!(r.upstream_header("x_auth_subject"), None);
    assert_eq!(r.upstream_header("x_auth_groups"), None);
}
