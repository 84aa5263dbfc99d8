//! The admin listener and the shutdown drain.

use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jwtgate::body;
use jwtgate::config::Config;
use jwtgate::server::Gateway;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::support::{client, config_text, send};

#[tokio::test]
async fn healthz_and_readyz_answer_on_the_admin_listener() {
    let h = crate::support::Harness::start().await;
    let admin = h.gateway.admin_addr().unwrap();
    let c = client();
    for path in ["/healthz", "/readyz"] {
        let r = send(
            &c,
            Request::get(format!("http://{admin}{path}"))
                .body(body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "{path}");
    }
    let r = send(
        &c,
        Request::get(format!("http://{admin}/nope"))
            .body(body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 404);
}

/// An upstream that tells the test when a request has arrived, then answers only when the test
/// releases it.
async fn gated_upstream() -> (std::net::SocketAddr, mpsc::Receiver<oneshot::Sender<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (arrived, rx) = mpsc::channel::<oneshot::Sender<()>>(8);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let arrived = arrived.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let arrived = arrived.clone();
                    async move {
                        let (release, released) = oneshot::channel();
                        arrived.send(release).await.unwrap();
                        let _ = released.await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(body::full("done")))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_refuses_new_connections() {
    let (upstream, mut arrivals) = gated_upstream().await;
    let extra = format!(
        "[upstreams.gated]\ntargets = [\"http://{upstream}\"]\n[[routes]]\npath = \"/slow\"\nupstream = \"gated\"\npublic = true\n"
    );
    let config = Config::from_toml_str(&config_text(upstream, &extra)).unwrap();
    let gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.listen_addr();
    let admin = gateway.admin_addr().unwrap();

    // Ten requests in flight, each on its own connection, all held by the upstream.
    let mut in_flight = Vec::new();
    let mut releases = Vec::new();
    for _ in 0..10 {
        in_flight.push(tokio::spawn(async move {
            send(
                &client(),
                Request::get(format!("http://{addr}/slow"))
                    .body(body::empty())
                    .unwrap(),
            )
            .await
        }));
        releases.push(
            arrivals
                .recv()
                .await
                .expect("the request reached the upstream"),
        );
    }

    gateway.shutdown();
    // The drain flag is set by the accept loop as it stops; wait for it (bounded).
    let c = client();
    let mut ready = 200;
    for _ in 0..500 {
        ready = send(
            &c,
            Request::get(format!("http://{admin}/readyz"))
                .body(body::empty())
                .unwrap(),
        )
        .await
        .status
        .as_u16();
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ready, 503, "/readyz did not report the drain");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "new connections are still accepted while draining"
    );

    for release in releases {
        release.send(()).unwrap();
    }
    for request in in_flight {
        let reply = request.await.unwrap();
        assert_eq!(
            reply.status, 200,
            "an in-flight request failed during the drain"
        );
        assert_eq!(&reply.body[..], b"done");
    }
    tokio::time::timeout(Duration::from_secs(10), gateway.wait())
        .await
        .expect("the drain finished once the last request was answered");
}
