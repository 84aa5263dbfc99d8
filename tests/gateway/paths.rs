//! SPEC §3 path handling over real sockets: normalisation, the 400 cases, 404, 405.

use crate::support::{Harness, raw_status};

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n").into_bytes()
}

/// The JSON body of a raw HTTP/1.1 reply (the echo's description of what it received).
fn body_json(reply: &str) -> serde_json::Value {
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {reply:?}"))
}

#[tokio::test]
async fn the_upstream_receives_the_normalised_path() {
    let h = Harness::start().await;
    let table = [
        ("/public/a/../b", "/public/b"),
        ("/public/./a/./b", "/public/a/b"),
        ("//public///a//b", "/public/a/b"),
        ("/public/a/%2e%2e/b", "/public/b"),
        ("/public/a/%2E%2E/b", "/public/b"),
        ("/public/a/.%2e/b", "/public/b"),
        ("/%70ublic/%7Euser", "/public/~user"),
        ("/public/a%20b", "/public/a%20b"),
        ("/public/caf%c3%a9", "/public/caf%C3%A9"),
        ("/public/", "/public/"),
        ("/public", "/public"),
    ];
    for (sent, received) in table {
        let reply = h.raw(&get(sent)).await;
        assert_eq!(raw_status(&reply), 200, "{sent}: {reply}");
        assert_eq!(body_json(&reply)["path"], received, "{sent}");
    }
}

#[tokio::test]
async fn the_query_string_is_forwarded_byte_for_byte() {
    let h = Harness::start().await;
    let reply = h.raw(&get("/public/x/../y?a=%2F..&b=%5C&c")).await;
    assert_eq!(raw_status(&reply), 200, "{reply}");
    let doc = body_json(&reply);
    assert_eq!(doc["path"], "/public/y");
    assert_eq!(doc["query"], "a=%2F..&b=%5C&c");
}

#[tokio::test]
async fn dangerous_paths_are_refused_with_400_and_never_forwarded() {
    let h = Harness::start().await;
    let table = [
        "/public%2Fx",
        "/public/a%2fb",
        "/public/a%5Cb",
        "/public/a%5cb",
        "/public/a\\b",
        "/public/a%00b",
        "/public/../../etc/passwd",
        "/..",
        "/%2e%2e/public",
        "/public/%2e%2e/%2E%2E/x",
        "/public/x;jsessionid=1",
        "/public/%zz",
        "/public/%c3%28",
    ];
    for path in table {
        let reply = h.raw(&get(path)).await;
        assert_eq!(raw_status(&reply), 400, "{path:?}: {reply}");
        if reply.contains("application/json") {
            assert_eq!(body_json(&reply)["error"], "invalid_request", "{path:?}");
        }
    }
    let nul = h
        .raw(b"GET /public/a\0b HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(raw_status(&nul), 400, "{nul}");
    assert_eq!(h.echo.requests(), 0, "a refused path reached the upstream");
}

#[tokio::test]
async fn encoded_dots_cannot_reach_a_protected_route_through_a_public_one() {
    let h = Harness::start().await;
    for path in [
        "/public/%2e%2e/api/orders",
        "/public/..%2fapi/orders",
        "/public/../api/orders",
        "/public/%2E%2E/api/orders/1",
    ] {
        let reply = h.raw(&get(path)).await;
        let status = raw_status(&reply);
        assert!(status == 401 || status == 400, "{path}: {reply}");
    }
    assert_eq!(h.echo.requests(), 0);
}

#[tokio::test]
async fn unknown_paths_get_404_and_prefixes_respect_segments() {
    let h = Harness::start().await;
    for path in ["/", "/nothing", "/publicity", "/api", "/api/ordersX"] {
        let r = h.get(path).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["error"], "not_found");
    }
    assert_eq!(h.echo.requests(), 0);
}

#[tokio::test]
async fn a_method_no_route_allows_gets_405_with_allow() {
    let h = Harness::start().await;
    let r = h
        .send(
            http::Request::delete("/get-only/x")
                .body(jwtgate::body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET, HEAD");
    assert_eq!(r.json()["error"], "method_not_allowed");
    assert_eq!(h.echo.requests(), 0);
}

#[tokio::test]
async fn strip_prefix_forwards_the_rest_of_the_path() {
    let h = Harness::start().await;
    for (sent, received) in [
        ("/public/stripped/7?q=1", "/7"),
        ("/public/stripped", "/"),
        ("/public/stripped/", "/"),
        ("/public/stripped/a/../b", "/b"),
    ] {
        let r = h.get(sent).await;
        assert_eq!(r.status, 200, "{sent}");
        assert_eq!(r.json()["path"], received, "{sent}");
    }
}
