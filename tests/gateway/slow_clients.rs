//! Slow clients (slowloris): a request head must arrive whole within 30 s, however steadily
//! its bytes trickle in. Time is tokio's paused clock, advanced by the runtime whenever every
//! task waits, so the test takes milliseconds and never depends on the machine's speed.

use std::time::Duration;

use jwtgate::config::Config;
use jwtgate::echo::EchoServer;
use jwtgate::server::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

async fn gateway() -> (EchoServer, Gateway) {
    let echo = EchoServer::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let config = Config::from_toml_str(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.echo]\ntargets = [\"http://{}\"]\n\
         [[routes]]\npath = \"/public\"\nupstream = \"echo\"\npublic = true\n",
        echo.addr()
    ))
    .unwrap();
    let gateway = Gateway::start(config).await.unwrap();
    (echo, gateway)
}

#[tokio::test(start_paused = true)]
async fn a_head_trickling_in_loses_its_connection_after_30_s() {
    let (echo, gateway) = gateway().await;
    let mut stream = TcpStream::connect(gateway.listen_addr()).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"GET /public/x HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    // One more header line every 10 s: progress, but the head never ends.
    let mut reply = Vec::new();
    let closed_after = loop {
        let mut buf = [0u8; 1024];
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break started.elapsed(),
                Ok(n) => reply.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(Duration::from_secs(10)) => {
                if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
                    break started.elapsed();
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the connection is still open after five minutes"
        );
    };
    closed_at_30_s(closed_after);
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
        "{reply}"
    );
    assert_eq!(echo.requests(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_is_closed_30_s_after_its_last_response() {
    let (echo, gateway) = gateway().await;
    let mut stream = TcpStream::connect(gateway.listen_addr()).await.unwrap();
    assert_eq!(get(&mut stream).await, Some(200));
    let answered = Instant::now();
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf[..n]));
    closed_at_30_s(answered.elapsed());
    assert_eq!(echo.requests(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_keep_alive_client_asking_every_20_s_keeps_its_connection() {
    let (echo, gateway) = gateway().await;
    let mut stream = TcpStream::connect(gateway.listen_addr()).await.unwrap();
    let started = Instant::now();
    for round in 1..=5 {
        // Each request's head is timed from the end of the previous response, not from the
        // start of the connection: 100 s in all, on one connection.
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(get(&mut stream).await, Some(200), "round {round}");
    }
    assert!(started.elapsed() >= Duration::from_secs(100));
    assert_eq!(echo.requests(), 5);
}

/// The header-read timeout's 30 s, give or take the timer wheel's resolution.
fn closed_at_30_s(after: Duration) {
    assert!(
        (Duration::from_secs(30)..Duration::from_secs(31)).contains(&after),
        "closed after {after:?}"
    );
}

/// Sends `GET /public/x` on `stream` and reads the whole response: its status, or `None` if
/// the connection closed first. The echo upstream's JSON body ends with `}`.
async fn get(stream: &mut TcpStream) -> Option<u16> {
    stream
        .write_all(b"GET /public/x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !reply.ends_with(b"}") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
    std::str::from_utf8(reply.get(9..12)?).ok()?.parse().ok()
}
