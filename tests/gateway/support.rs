//! The test harness: an echo upstream and the gateway on 127.0.0.1 port 0, a real HTTP client,
//! and a raw-socket client for requests a well-behaved client would never send.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::client::conn::http2::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jwtgate::body::{self, Body};
use jwtgate::config::Config;
use jwtgate::echo::EchoServer;
use jwtgate::issuer::{Client as OAuthClient, Issuer, IssuerConfig, User};
use jwtgate::server::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Routes used by most tests; `{echo}` is the echo upstream's name.
pub(crate) const ROUTES: &str = r#"
[[routes]]
path = "/public"
upstream = "echo"
public = true

[[routes]]
path = "/public/stripped"
upstream = "echo"
public = true
strip_prefix = true

[[routes]]
path = "/get-only"
methods = ["GET", "HEAD"]
upstream = "echo"
public = true

[[routes]]
path = "/api/orders"
methods = ["GET", "POST"]
upstream = "echo"
groups = ["orders-readers"]

[[routes]]
path = "/api/admin"
upstream = "echo"
groups = ["admins"]

[[routes]]
path = "/api/machine"
upstream = "echo"
scopes = ["orders:read"]

[[routes]]
path = "/api/any"
upstream = "echo"
"#;

/// A gateway in front of one echo upstream, trusting one local issuer.
pub(crate) struct Harness {
    pub(crate) gateway: Gateway,
    pub(crate) echo: EchoServer,
    pub(crate) issuer: Issuer,
    client: Client<HttpConnector, Body>,
}

/// The parts of a response tests look at, with the body read whole.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    /// The body as JSON (the echo's request description, or a refusal).
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// A header the echo upstream received, by lower-case name (all values, joined by `|`).
    pub(crate) fn upstream_header(&self, name: &str) -> Option<String> {
        let doc = self.json();
        let values: Vec<String> = doc["headers"]
            .as_array()
            .expect("an echo reply")
            .iter()
            .filter(|pair| pair[0] == name)
            .map(|pair| pair[1].as_str().unwrap().to_owned())
            .collect();
        (!values.is_empty()).then(|| values.join("|"))
    }
}

/// Config text for a gateway in front of `echo` with public routes only (no `[okta]`), plus
/// `extra` TOML (routes, upstreams…).
pub(crate) fn config_text(echo: SocketAddr, extra: &str) -> String {
    gateway_config(echo, "", extra)
}

/// Config text for a gateway in front of `echo` trusting `issuer`; `okta_extra` is added to
/// `[okta]` and `extra` at the end.
pub(crate) fn config_with_issuer(
    echo: SocketAddr,
    issuer: &str,
    okta_extra: &str,
    extra: &str,
) -> String {
    let okta = format!("[okta]\nissuer = \"{issuer}\"\naudience = \"api://test\"\n{okta_extra}\n");
    gateway_config(echo, &okta, extra)
}

/// Configuration to append for an upstream `name` of its own on `targets`, with
/// `upstream_lines` (a timeout, say) in its table, and a public route `/{name}` to it.
pub(crate) fn public_upstream(name: &str, targets: &[String], upstream_lines: &str) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "[upstreams.{name}]\ntargets = [{}]\n{upstream_lines}\n\
         [[routes]]\npath = \"/{name}\"\nupstream = \"{name}\"\npublic = true\n",
        targets.join(", ")
    )
}

fn gateway_config(echo: SocketAddr, okta: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace = "5s"

{okta}
[upstreams.echo]
targets = ["http://{echo}"]
timeout = "5s"
{extra}
"#
    )
}

/// The users and clients of the test issuer.
pub(crate) fn issuer_config() -> IssuerConfig {
    let user = |name: &str, groups: &[&str]| User {
        name: name.into(),
        password: format!("{name}-password"),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    };
    IssuerConfig {
        auth_server_id: "test".into(),
        audience: "api://test".into(),
        token_lifetime: Duration::from_secs(3600),
        users: vec![
            user("alice", &["orders-readers"]),
            user("bob", &["admins", "orders-readers"]),
            user("nobody", &[]),
        ],
        clients: vec![OAuthClient {
            id: "test-client".into(),
            secret: "test-secret".into(),
            scopes: vec!["orders:read".into(), "orders:write".into()],
        }],
    }
}

/// Starts a local issuer on 127.0.0.1, port 0.
pub(crate) async fn start_issuer() -> Issuer {
    Issuer::start(([127, 0, 0, 1], 0).into(), issuer_config())
        .await
        .unwrap()
}

/// Polls `/readyz` until it answers 200 (the first key fetch runs in the background).
pub(crate) async fn wait_ready(gateway: &Gateway) {
    let admin = gateway.admin_addr().expect("an admin listener");
    let c = client();
    for _ in 0..1000 {
        let r = send(
            &c,
            Request::get(format!("http://{admin}/readyz"))
                .body(body::empty())
                .unwrap(),
        )
        .await;
        if r.status == StatusCode::OK {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the gateway never became ready");
}

impl Harness {
    /// Starts an echo upstream and a gateway with [`ROUTES`].
    pub(crate) async fn start() -> Harness {
        Self::with(ROUTES).await
    }

    /// Starts an echo upstream and a gateway with `extra` config appended.
    pub(crate) async fn with(extra: &str) -> Harness {
        Self::configured("", extra).await
    }

    /// Starts an issuer, an echo upstream and a gateway with `okta_extra` added to `[okta]`
    /// and `extra` appended; returns once the gateway holds signing keys.
    pub(crate) async fn configured(okta_extra: &str, extra: &str) -> Harness {
        let issuer = start_issuer().await;
        let echo = EchoServer::start(([127, 0, 0, 1], 0).into()).await.unwrap();
        let text = config_with_issuer(echo.addr(), issuer.issuer_url(), okta_extra, extra);
        let config =
            Config::from_toml_str(&text).unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
        let gateway = Gateway::start(config).await.unwrap();
        wait_ready(&gateway).await;
        Harness {
            gateway,
            echo,
            issuer,
            client: client(),
        }
    }

    /// A fresh token for `user` from the harness issuer.
    pub(crate) fn token(&self, user: &str) -> String {
        self.issuer.token_for_user(user)
    }

    /// `GET path` with `Authorization: Bearer token`.
    pub(crate) async fn get_with(&self, path: &str, token: &str) -> Reply {
        self.send(
            Request::get(path)
                .header("authorization", format!("Bearer {token}"))
                .body(body::empty())
                .unwrap(),
        )
        .await
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.listen_addr())
    }

    /// Sends a request built by the test (its URI is a path; the gateway's address is added).
    pub(crate) async fn send(&self, req: Request<Body>) -> Reply {
        let (mut parts, b) = req.into_parts();
        parts.uri = self.url(&parts.uri.to_string()).parse().unwrap();
        send(&self.client, Request::from_parts(parts, b)).await
    }

    /// `GET path`.
    pub(crate) async fn get(&self, path: &str) -> Reply {
        self.send(Request::get(path).body(body::empty()).unwrap())
            .await
    }

    /// Sends raw bytes and returns everything the gateway answered until it closed.
    pub(crate) async fn raw(&self, request: &[u8]) -> String {
        raw(self.gateway.listen_addr(), request).await
    }
}

/// A plain HTTP/1.1 client.
pub(crate) fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Fails, rather than hangs, a test that waits on something the gateway should bound (a timer
/// left at an hour would otherwise hang the test rather than fail it).
pub(crate) async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("no answer within 30 s")
}

/// Sends `req` and reads the whole response.
pub(crate) async fn send(client: &Client<HttpConnector, Body>, req: Request<Body>) -> Reply {
    reply(within(client.request(req)).await.expect("request failed")).await
}

/// `response` with its body read whole (from any client: HTTP/1's or h2's).
pub(crate) async fn reply<B>(response: Response<B>) -> Reply
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let (parts, b) = response.into_parts();
    let body = b.collect().await.expect("response body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Writes `request` to a new connection and reads until the peer closes (or 10s pass).
pub(crate) async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in a raw reply.
pub(crate) fn raw_status(reply: &str) -> u16 {
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {reply:?}"))
}

/// An upstream that accepts connections and never answers (for 504s).
pub(crate) async fn silent_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, task)
}

/// An upstream on 127.0.0.1 that runs `serve` on each connection it accepts, in a task of its
/// own.
pub(crate) async fn each_connection<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// An h2 client over `io` (hyper's, which answers PINGs) and the task that drives its
/// connection.
pub(crate) async fn h2_over<IO>(io: IO) -> (SendRequest<Body>, JoinHandle<()>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, conn)
}

/// An address where nothing listens (connections are refused).
pub(crate) async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// The gateway's `/metrics` text.
pub(crate) async fn scrape(gateway: &Gateway) -> String {
    let admin = gateway.admin_addr().unwrap();
    let r = send(
        &client(),
        Request::get(format!("http://{admin}/metrics"))
            .body(body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    String::from_utf8(r.body.to_vec()).unwrap()
}

/// The value of one series, e.g. `jwtgate_refusals_total{reason="forbidden"}`; 0 if absent.
pub(crate) fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map_or(0.0, |v| v.trim().parse().unwrap())
}
