//! An echo upstream, for the demo and the tests.
//!
//! By default it answers `200` with a JSON description of the request it received (method,
//! request target, path, query, headers, body size), reading the body as it streams. With the
//! request header `x-echo-body: stream` it streams the request body back instead, so large
//! bodies can be pushed through the gateway in both directions. It numbers the connections it
//! accepts (from 1) and says in each JSON answer which one the request came on (`connection`).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::body::{self, Body};

/// A running echo server; stops when dropped.
#[derive(Debug)]
pub struct EchoServer {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl EchoServer {
    /// Binds `addr` (port 0 picks a free port) and starts serving.
    ///
    /// # Errors
    ///
    /// The address cannot be bound.
    pub async fn start(addr: SocketAddr) -> io::Result<EchoServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let (counter, accepted) = (requests.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                let connection = accepted.fetch_add(1, Ordering::Relaxed) + 1;
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        async move { Ok::<_, Infallible>(echo(req, connection).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(EchoServer {
            addr,
            requests,
            connections,
            task,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many requests it has received.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// How many connections it has accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(req: Request<Incoming>, connection: u64) -> Response<Body> {
    if req
        .headers()
        .get("x-echo-body")
        .is_some_and(|v| v == "stream")
    {
        let content_type = req.headers().get(CONTENT_TYPE).cloned();
        let mut response = Response::new(body::boxed(req.into_body()));
        if let Some(ct) = content_type {
            response.headers_mut().insert(CONTENT_TYPE, ct);
        }
        return response;
    }
    let (parts, mut incoming) = req.into_parts();
    let mut body_bytes: u64 = 0;
    let mut body_error = None;
    while let Some(frame) = incoming.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    body_bytes += data.len() as u64;
                }
            }
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let doc = serde_json::json!({
        "method": parts.method.as_str(),
        // The request target as the upstream received it (origin or absolute form).
        "target": parts.uri.to_string(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": body_bytes,
        "body_error": body_error,
        "connection": connection,
    });
    let mut response = Response::new(body::full(Bytes::from(doc.to_string())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
