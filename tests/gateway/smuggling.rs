//! Request smuggling: messages whose framing can be read two ways never reach an upstream.
//! Each test writes raw bytes, as an attacker would, and checks the upstream saw nothing.

use crate::support::{Harness, raw_status};

async fn refused(h: &Harness, request: &str) {
    let reply = h.raw(request.as_bytes()).await;
    assert_eq!(raw_status(&reply), 400, "{request:?} got: {reply}");
    // Only one response: no second, smuggled request was answered on the connection.
    assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{reply}");
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused() {
    let h = Harness::start().await;
    refused(
        &h,
        "POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/orders HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    refused(
        &h,
        "POST /public/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\nGET /api/orders HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(h.echo.requests(), 0);
}

#[tokio::test]
async fn differing_or_repeated_content_lengths_are_refused() {
    let h = Harness::start().await;
    refused(
        &h,
        "POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc",
    )
    .await;
    refused(
        &h,
        "POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 30\r\n\r\nabc",
    )
    .await;
    refused(
        &h,
        "POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert_eq!(h.echo.requests(), 0);
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_are_refused() {
    let h = Harness::start().await;
    for te in [
        "gzip, chunked",
        "chunked, chunked",
        "identity",
        "chunked, gzip",
        "xchunked",
    ] {
        refused(
            &h,
            &format!(
                "POST /public/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\nConnection: close\r\n\r\n0\r\n\r\n"
            ),
        )
        .await;
    }
    refused(
        &h,
        "POST /public/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(h.echo.requests(), 0);
}

#[tokio::test]
async fn several_host_headers_and_folded_headers_are_refused() {
    let h = Harness::start().await;
    refused(
        &h,
        "GET /public/x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    )
    .await;
    refused(
        &h,
        "GET /public/x HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(h.echo.requests(), 0);
}

#[tokio::test]
async fn transfer_encoding_on_http_1_0_is_refused() {
    let h = Harness::start().await;
    let reply = h
        .raw(b"POST /public/x HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .await;
    assert_eq!(raw_status(&reply), 400, "{reply}");
    assert_eq!(h.echo.requests(), 0);
}

#[tokio::test]
async fn a_well_framed_chunked_request_is_reframed_for_the_upstream() {
    let h = Harness::start().await;
    let reply = h
        .raw(b"POST /public/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        .await;
    assert_eq!(raw_status(&reply), 200, "{reply}");
    assert!(reply.contains(r#""body_bytes":5"#), "{reply}");
    assert_eq!(h.echo.requests(), 1);
}

#[tokio::test]
async fn an_ambiguous_request_after_a_good_one_on_the_same_connection_is_refused() {
    let h = Harness::start().await;
    let reply = h
        .raw(b"POST /public/first HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloPOST /public/second HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nGET /api/orders HTTP/1.1\r\nHost: a\r\n\r\n")
        .await;
    let statuses: Vec<&str> = reply
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &reply[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "400"], "{reply}");
    assert_eq!(
        h.echo.requests(),
        1,
        "only the first, well-framed request was forwarded"
    );
}

#[tokio::test]
async fn a_head_too_long_to_watch_is_refused_not_served_unwatched() {
    // The framing watcher follows lines up to 64 KiB; hyper's own default would accept heads of
    // about 400 KiB. A long line first and an ambiguous request behind it must not get through
    // on a connection the watcher has stopped following: the head is refused with 431.
    let h = Harness::start().await;
    let long = "a".repeat(70 * 1024);
    let reply = h
        .raw(
            format!(
                "GET /public/x HTTP/1.1\r\nHost: a\r\nX-Long: {long}\r\n\r\n\
                 POST /public/y HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(
        raw_status(&reply),
        431,
        "{}",
        &reply[..reply.len().min(200)]
    );
    assert_eq!(h.echo.requests(), 0);

    // A long head within the limit is served as usual.
    let long = "a".repeat(60 * 1024);
    let reply = h
        .raw(
            format!(
                "GET /public/x HTTP/1.1\r\nHost: a\r\nX-Long: {long}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(raw_status(&reply), 200);
    assert_eq!(h.echo.requests(), 1);
}
