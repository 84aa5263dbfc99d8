//! A reverse proxy with nothing but the HTTP machinery jwtgate is built on, as a floor for
//! `scripts/bench/run.sh`: how fast it forwards when it checks nothing.
//!
//! `cargo run --release --example bare_proxy -- LISTEN UPSTREAM MODE`, MODE one of:
//! - `pooled`: hyper-util's pooled client (what jwtgate used for every request before; still
//!   what it uses for h2 clients and WebSocket upgrades);
//! - `carried`: the upstream connection travels with the client connection
//!   (`jwtgate::proxy::conns`, what jwtgate uses for HTTP/1.1 clients).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jwtgate::body::{self, Body};
use jwtgate::config::Target;
use jwtgate::proxy::Upstreams;
use jwtgate::proxy::conns::Affinity;
use jwtgate::proxy::upstream::ConnectTimeouts;
use tokio::net::TcpListener;

/// The upstream deadline of every request (jwtgate's default `timeout`).
const DEADLINE: Duration = Duration::from_secs(30);

#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args.next().unwrap_or("127.0.0.1:18087".into()).parse()?;
    let upstream: SocketAddr = args.next().unwrap_or("127.0.0.1:18081".into()).parse()?;
    let carried = args.next().is_some_and(|m| m == "carried");
    let target = Arc::new(Target {
        scheme: http::uri::Scheme::HTTP,
        authority: upstream.to_string().parse()?,
    });
    let upstreams = Arc::new(Upstreams::new(ConnectTimeouts::default())?);
    let listener = TcpListener::bind(listen).await?;
    // SIGTERM ends the process through `exit`, so that an instrumented build
    // (scripts/pgo/bare.sh) writes its profile as it goes.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        term.recv().await;
        std::process::exit(0);
    });
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (upstreams, target) = (upstreams.clone(), target.clone());
        let affinity = Arc::new(Affinity::default());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (upstreams, target, affinity) =
                    (upstreams.clone(), target.clone(), affinity.clone());
                async move {
                    let (mut parts, incoming) = req.into_parts();
                    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                    parts.uri = Uri::try_from(format!("{target}{pq}")).unwrap_or_default();
                    let req = Request::from_parts(parts, body::boxed(incoming));
                    let response: Option<Response<Body>> = if carried {
                        // Every proxy needs a deadline for the upstream; this is the one
                        // jwtgate's carried connections keep (one timer per connection).
                        let sent = upstreams
                            .conns()
                            .send(affinity, Target::clone(&target), req, DEADLINE)
                            .await;
                        sent.ok().map(|r| r.map(Body::new))
                    } else {
                        let sent = upstreams.client().request(req).await;
                        sent.ok().map(|r| r.map(body::boxed))
                    };
                    Ok::<_, Infallible>(response.unwrap_or_else(|| {
                        let mut r = Response::new(body::empty());
                        *r.status_mut() = StatusCode::BAD_GATEWAY;
                        r
                    }))
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
