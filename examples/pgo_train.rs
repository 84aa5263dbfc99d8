//! The training run of the profile-guided release build (`scripts/pgo/build.sh`).
//!
//! `pgo_train JWTGATE` starts two gateways from the instrumented binary JWTGATE, one on plain
//! HTTP (one worker: the single-threaded scheduler, access log on as by default) and one on
//! HTTPS (two workers: the multi-threaded scheduler, access log off), with the local issuer and
//! an echo upstream in this process. It sends each a fixed mix of traffic (the usual case
//! first and most, then streamed bodies, every refusal the gateway makes, h2, an https
//! upstream and the admin endpoints), checks every answer's status, and stops both gateways
//! with SIGTERM so that they write their profiles (`LLVM_PROFILE_FILE`) as they exit.
//!
//! Code the training does not reach is compiled as cold (for size). What is in the mix and
//! what is not is listed in docs/performance.md ("Profile-guided build").

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;
use jwtgate::body::{self, Body};
use jwtgate::echo::EchoServer;
use jwtgate::issuer::{Issuer, IssuerConfig, User};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[path = "../tests/gateway/child.rs"]
mod child;

use child::Child;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let binary = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .ok_or("usage: pgo_train JWTGATE")?;
    let dir = tempfile::tempdir()?;
    let started = Instant::now();

    let issuer = Issuer::start(([127, 0, 0, 1], 0).into(), issuer_config()).await?;
    let echo = EchoServer::start(([127, 0, 0, 1], 0).into()).await?;
    let tls = write_cert(dir.path())?;

    // The HTTPS gateway first: the plain one uses it as an https upstream.
    let secure_config = dir.path().join("secure.toml");
    std::fs::write(
        &secure_config,
        gateway_toml(&issuer, echo.addr(), 2, &tls_lines(&tls), ""),
    )?;
    let secure = Child::spawn(&binary, &secure_config, "warn,jwtgate::server=info", &[])?;
    let plain_config = dir.path().join("plain.toml");
    let tls_upstream = format!(
        "[upstreams.secure]\ntargets = [\"https://localhost:{}\"]\n[[routes]]\npath = \"/via-https\"\nupstream = \"secure\"\nstrip_prefix = true\npublic = true\n",
        secure.addr.port()
    );
    std::fs::write(
        &plain_config,
        gateway_toml(
            &issuer,
            echo.addr(),
            1,
            "admin_listen = \"127.0.0.1:0\"\n",
            &tls_upstream,
        ),
    )?;
    // The plain gateway trusts the HTTPS one's certificate the way an operator's system store
    // would hold a private CA (rustls-native-certs reads SSL_CERT_FILE).
    let plain = Child::spawn(
        &binary,
        &plain_config,
        "info",
        &[("SSL_CERT_FILE", tls.cert.as_path())],
    )?;

    let train = Training::new(&issuer);
    let http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let base = format!("http://{}", plain.addr);
    wait_ready(&http, &format!("http://{}/readyz", admin(&plain)?)).await?;

    let mut report = Vec::new();
    report.extend(train.plain(&http, &base).await?);
    report.extend(train.secure(&tls, secure.addr).await?);
    report.extend(train.admin(&http, admin(&plain)?).await?);
    report.push(train.raw(plain.addr).await?);

    stop(plain)?;
    stop(secure)?;
    println!(
        "training done in {:.1} s: {} requests",
        started.elapsed().as_secs_f64(),
        report.iter().map(|p| p.sent).sum::<usize>()
    );
    Ok(())
}

fn issuer_config() -> IssuerConfig {
    let user = |name: &str, groups: &[&str]| User {
        name: name.to_owned(),
        password: "unused".to_owned(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    };
    IssuerConfig {
        auth_server_id: "train".to_owned(),
        audience: "api://train".to_owned(),
        token_lifetime: Duration::from_secs(3600),
        users: vec![
            user("member", &["staff", "readers"]),
            user("outsider", &["visitors"]),
            user("throttled", &["tiny"]),
        ],
        clients: Vec::new(),
    }
}

/// A gateway configuration like an operator's: protected and public routes, methods, groups,
/// prefix stripping, per-group limits (one that is soon spent), identity headers.
fn gateway_toml(
    issuer: &Issuer,
    echo: SocketAddr,
    workers: usize,
    server_extra: &str,
    extra: &str,
) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
workers = {workers}
{server_extra}
[okta]
issuer = "{issuer}"
audience = "api://train"

[upstreams.echo]
targets = ["http://{echo}"]

[[routes]]
path = "/api"
upstream = "echo"
groups = ["staff", "tiny"]

[[routes]]
path = "/api/reports"
methods = ["GET", "HEAD"]
upstream = "echo"
groups = ["readers"]
strip_prefix = true

[[routes]]
path = "/admin"
upstream = "echo"
groups = ["admins"]

[[routes]]
path = "/public"
upstream = "echo"
public = true
{extra}
[rate_limits]
default = {{ requests = 1000000000, per = "1s" }}

[rate_limits.groups]
staff = {{ requests = 1000000000, per = "1s" }}
tiny = {{ requests = 1, per = "1h" }}

[forward]
claims_to_headers = {{ sub = "X-Auth-Subject", groups = "X-Auth-Groups" }}
"#,
        issuer = issuer.issuer_url(),
    )
}

struct Tls {
    cert: PathBuf,
    key: PathBuf,
    der: rustls::pki_types::CertificateDer<'static>,
}

fn write_cert(dir: &Path) -> Result<Tls, BoxError> {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let (cert, key) = (dir.join("gateway.pem"), dir.join("gateway.key"));
    std::fs::write(&cert, generated.cert.pem())?;
    std::fs::write(&key, generated.signing_key.serialize_pem())?;
    Ok(Tls {
        cert,
        key,
        der: generated.cert.der().clone(),
    })
}

fn tls_lines(tls: &Tls) -> String {
    format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        tls.cert.display(),
        tls.key.display()
    )
}

/// The admin listener of a gateway whose configuration has one.
fn admin(gateway: &Child) -> Result<SocketAddr, BoxError> {
    Ok(gateway.admin.ok_or("no admin listener")?)
}

/// SIGTERM, then the exit status: a clean exit is what writes the profile.
fn stop(mut gateway: Child) -> Result<(), BoxError> {
    let status = gateway.terminate()?;
    if !status.success() {
        let said: Vec<String> = gateway.log.try_iter().collect();
        return Err(format!(
            "the gateway exited with {status}; it said:\n{}",
            said.join("\n")
        )
        .into());
    }
    Ok(())
}

async fn wait_ready<C>(client: &Client<C, Body>, url: &str) -> Result<(), BoxError>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    for _ in 0..300 {
        if let Ok(response) = client.request(anonymous(url)?).await
            && response.status() == StatusCode::OK
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{url} never answered 200").into())
}

/// What one phase sent and got.
struct Phase {
    name: &'static str,
    sent: usize,
    statuses: BTreeMap<u16, usize>,
    elapsed: Duration,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<44} {:>7} requests in {:>5.2} s, statuses {:?}",
            self.name,
            self.sent,
            self.elapsed.as_secs_f64(),
            self.statuses
        )
    }
}

/// The tokens and the traffic.
struct Training {
    member: String,
    outsider: String,
    throttled: String,
    /// Valid tokens of distinct callers: each is verified once, then found in the cache.
    callers: Vec<String>,
    /// Tokens the gateway must refuse: the reason, the token, how many requests.
    refused: Vec<(&'static str, String, usize)>,
}

impl Training {
    fn new(issuer: &Issuer) -> Training {
        let member = issuer.token_for_user("member");
        let claims = issuer.claims_for_user("member");
        let callers = (0..2_000)
            .map(|i| {
                let mut c = claims.clone();
                c["sub"] = format!("caller{i}@train.example").into();
                c["uid"] = format!("00u{i:017}").into();
                issuer.sign(&c)
            })
            .collect();
        let with = |key: &str, value: serde_json::Value| {
            let mut c = claims.clone();
            c[key] = value;
            issuer.sign(&c)
        };
        let now = claims["iat"].as_i64().unwrap_or(0);
        // One character in the middle of the signature: a well-formed token whose RSA
        // check fails (the last character holds mostly padding bits).
        let at = member.len() - 40;
        let flipped = if member.as_bytes()[at] == b'A' {
            "B"
        } else {
            "A"
        };
        let bad_signature = format!("{}{flipped}{}", &member[..at], &member[at + 1..]);
        let mut refused: Vec<_> = [
            ("token expired", with("exp", json!(now - 3600))),
            ("token not yet valid", with("nbf", json!(now + 3600))),
            (
                "token for another audience",
                with("aud", json!("api://other")),
            ),
            (
                "token from another issuer",
                with("iss", json!("https://evil.example/oauth2/x")),
            ),
            ("token with a bad signature", bad_signature),
            (
                "token signed with alg none",
                format!(
                    "{}.{}.",
                    b64(br#"{"alg":"none","typ":"JWT"}"#),
                    member.split('.').nth(1).unwrap_or_default()
                ),
            ),
            ("malformed token", "not.a.token".to_owned()),
        ]
        .into_iter()
        .map(|(reason, token)| (reason, token, 500))
        .collect();
        // An unknown kid makes the gateway fetch the keys again (then wait out its
        // cooldown): a few of those.
        let unknown_kid = issuer.sign_with_header(
            &json!({"alg": "RS256", "kid": "unknown-kid", "typ": "JWT"}),
            &claims,
        );
        refused.push(("token with an unknown kid", unknown_kid, 50));
        Training {
            member,
            outsider: issuer.token_for_user("outsider"),
            throttled: issuer.token_for_user("throttled"),
            callers,
            refused,
        }
    }

    /// The plain-HTTP gateway: the usual traffic first and most, then bodies, then refusals.
    async fn plain(
        &self,
        client: &Client<HttpConnector, Body>,
        base: &str,
    ) -> Result<Vec<Phase>, BoxError> {
        let (member, callers) = (&self.member, &self.callers);
        let url = |path: &str| format!("{base}{path}");
        let post = |path: &str| with_token(Request::post(url(path)), member);
        let mut table = vec![
            mix(
                "GET protected, one token",
                64,
                60_000,
                |_| 200,
                |i| {
                    get(
                        &url(&format!("/api/items/{}?page={}", i % 100, i % 7)),
                        member,
                    )
                },
            ),
            mix(
                "GET public",
                64,
                20_000,
                |_| 200,
                |i| anonymous(&url(&format!("/public/page/{}", i % 50))),
            ),
            mix(
                "GET protected, 2,000 distinct callers",
                64,
                10_000,
                |_| 200,
                |i| get(&url("/api/items"), &callers[i % callers.len()]),
            ),
            mix(
                "GET/HEAD strip_prefix route",
                32,
                4_000,
                |_| 200,
                |i| {
                    let method = if i % 4 == 0 {
                        Method::HEAD
                    } else {
                        Method::GET
                    };
                    let request = Request::builder()
                        .method(method)
                        .uri(url(&format!("/api/reports/{i}")));
                    Ok(with_token(request, member).body(body::empty())?)
                },
            ),
            mix(
                "POST 16 KiB body (Content-Length)",
                32,
                3_000,
                |_| 200,
                |_| {
                    let request = post("/api/orders").header("content-type", "application/json");
                    Ok(request.body(body::full(vec![b'x'; 16 * 1024]))?)
                },
            ),
            mix(
                "POST 256 KiB chunked, echoed back",
                16,
                500,
                |_| 200,
                |_| {
                    let chunks = (0..16).map(|_| {
                        Ok::<_, body::BoxError>(Frame::data(Bytes::from(vec![b'y'; 16 * 1024])))
                    });
                    let body = body::boxed(StreamBody::new(futures_util::stream::iter(chunks)));
                    Ok(post("/api/upload")
                        .header("x-echo-body", "stream")
                        .body(body)?)
                },
            ),
            // The throttled caller's limit is one request an hour: one answered, then 429s.
            mix(
                "within the limit",
                1,
                1,
                |_| 200,
                |_| get(&url("/api/items"), &self.throttled),
            ),
            mix(
                "over the limit (429)",
                16,
                2_000,
                |_| 429,
                |_| get(&url("/api/items"), &self.throttled),
            ),
            mix(
                "no token (401)",
                16,
                2_000,
                |_| 401,
                |_| anonymous(&url("/api/items")),
            ),
            mix(
                "group not allowed (403)",
                16,
                2_000,
                |_| 403,
                |i| get(&url(["/api/items", "/admin/users"][i % 2]), &self.outsider),
            ),
            mix(
                "no route (404)",
                16,
                1_000,
                |_| 404,
                |_| get(&url("/nowhere/at/all"), member),
            ),
            mix(
                "method not allowed (405)",
                16,
                1_000,
                |_| 405,
                |_| {
                    let request = with_token(Request::delete(url("/api/reports/1")), member);
                    Ok(request.body(body::empty())?)
                },
            ),
            mix(
                "dot segments and encoded paths",
                16,
                2_000,
                |i| if i % 5 == 4 { 400 } else { 200 },
                |i| {
                    // Resolved (200) but for the NUL, which is refused (400): `expect` above.
                    let path = [
                        "/public/a/./b/../c",
                        "/public//x",
                        "/public/%41%42",
                        "/public/%2e%2e/public/x",
                        "/public/%00",
                    ][i % 5];
                    get(&url(path), member)
                },
            ),
            mix(
                "spoofed identity and hop-by-hop headers",
                16,
                2_000,
                |_| 200,
                |_| {
                    let request = with_token(Request::get(url("/api/items")), member)
                        .header("x-auth-subject", "admin")
                        .header("x-forwarded-for", "10.1.2.3")
                        .header("connection", "x-custom, keep-alive")
                        .header("x-custom", "1")
                        .header("te", "trailers");
                    Ok(request.body(body::empty())?)
                },
            ),
            mix(
                "https upstream (the TLS gateway)",
                16,
                5_000,
                |_| 200,
                |i| anonymous(&url(&format!("/via-https/public/{i}"))),
            ),
        ];
        for (reason, token, count) in &self.refused {
            table.push(mix(
                reason,
                8,
                *count,
                |_| 401,
                move |_| get(&url("/api/items"), token),
            ));
        }
        let mut phases = Vec::new();
        for m in table {
            phases.push(run(m.name, client, m.concurrency, m.count, m.expect, m.make).await?);
        }
        Ok(phases)
    }

    /// The HTTPS gateway: HTTP/1.1 and h2 by ALPN.
    async fn secure(&self, tls: &Tls, addr: SocketAddr) -> Result<Vec<Phase>, BoxError> {
        let base = format!("https://localhost:{}", addr.port());
        let mut phases = Vec::new();
        for (name, h2) in [("TLS, HTTP/1.1", false), ("TLS, h2", true)] {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(tls.der.clone())?;
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
            let builder = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_only();
            let connector = if h2 {
                builder.enable_http2().build()
            } else {
                builder.enable_http1().build()
            };
            let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build(connector);
            let member = &self.member;
            phases.push(
                run(
                    name,
                    &client,
                    32,
                    10_000,
                    |i| if i % 10 == 9 { 401 } else { 200 },
                    |i| {
                        if i % 10 == 9 {
                            anonymous(&format!("{base}/api/items"))
                        } else if i % 10 == 8 {
                            let request =
                                with_token(Request::post(format!("{base}/api/orders")), member);
                            Ok(request.body(body::full(vec![b'z'; 4096]))?)
                        } else {
                            get(&format!("{base}/api/items/{i}"), member)
                        }
                    },
                )
                .await?,
            );
        }
        Ok(phases)
    }

    /// The admin listener, as a scraper and a load balancer see it.
    async fn admin(
        &self,
        client: &Client<HttpConnector, Body>,
        admin: SocketAddr,
    ) -> Result<Vec<Phase>, BoxError> {
        Ok(vec![
            run(
                "admin /metrics, /readyz, /healthz",
                client,
                2,
                300,
                |_| 200,
                |i| {
                    let path = ["/metrics", "/readyz", "/healthz"][i % 3];
                    anonymous(&format!("http://{admin}{path}"))
                },
            )
            .await?,
        ])
    }

    /// Requests no client library sends: smuggling attempts and bad framing, over raw TCP.
    async fn raw(&self, addr: SocketAddr) -> Result<Phase, BoxError> {
        const REQUESTS: [&[u8]; 4] = [
            b"POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            b"GET /public/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET /public/\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
        ];
        let started = Instant::now();
        let mut statuses = BTreeMap::new();
        for i in 0..400 {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            stream.write_all(REQUESTS[i % REQUESTS.len()]).await?;
            // The status line is all that is read: a refusal may keep the connection open.
            let mut reply = Vec::new();
            while reply.len() < 12 && stream.read_buf(&mut reply).await? > 0 {}
            let status = std::str::from_utf8(reply.get(9..12).unwrap_or_default())
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
                .unwrap_or(0);
            if status != 400 {
                return Err(format!("raw request {i}: expected 400, got {status}").into());
            }
            *statuses.entry(status).or_default() += 1;
        }
        let phase = Phase {
            name: "smuggling and bad framing (raw)",
            sent: 400,
            statuses,
            elapsed: started.elapsed(),
        };
        println!("{phase}");
        Ok(phase)
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// One phase of the mix: how many requests, over how many connections, made how, answered how.
struct Mix<'a> {
    name: &'static str,
    concurrency: usize,
    count: usize,
    /// The status the i-th request must get.
    expect: fn(usize) -> u16,
    make: Box<dyn Fn(usize) -> Result<Request<Body>, BoxError> + Send + Sync + 'a>,
}

fn mix<'a>(
    name: &'static str,
    concurrency: usize,
    count: usize,
    expect: fn(usize) -> u16,
    make: impl Fn(usize) -> Result<Request<Body>, BoxError> + Send + Sync + 'a,
) -> Mix<'a> {
    Mix {
        name,
        concurrency,
        count,
        expect,
        make: Box::new(make),
    }
}

fn anonymous(url: &str) -> Result<Request<Body>, BoxError> {
    Ok(Request::get(url).body(body::empty())?)
}

fn with_token(builder: http::request::Builder, token: &str) -> http::request::Builder {
    builder.header("authorization", format!("Bearer {token}"))
}

fn get(url: &str, token: &str) -> Result<Request<Body>, BoxError> {
    Ok(with_token(Request::get(url), token).body(body::empty())?)
}

/// Sends `count` requests made by `make` over `concurrency` tasks, reads every body to its
/// end, and fails at the first answer whose status is not `expect(i)` for its request.
async fn run<C, F>(
    name: &'static str,
    client: &Client<C, Body>,
    concurrency: usize,
    count: usize,
    expect: fn(usize) -> u16,
    make: F,
) -> Result<Phase, BoxError>
where
    C: Connect + Clone + Send + Sync + 'static,
    F: Fn(usize) -> Result<Request<Body>, BoxError> + Send + Sync,
{
    let started = Instant::now();
    let make = &make;
    let tasks = (0..concurrency).map(|task| async move {
        let mut statuses = BTreeMap::<u16, usize>::new();
        for i in (task..count).step_by(concurrency) {
            let response = client.request(make(i)?).await?;
            let status = response.status().as_u16();
            response.into_body().collect().await?;
            if status != expect(i) {
                return Err(format!("{name}: request {i} got {status}, not {}", expect(i)).into());
            }
            *statuses.entry(status).or_default() += 1;
        }
        Ok::<_, BoxError>(statuses)
    });
    let mut statuses = BTreeMap::new();
    for result in futures_util::future::join_all(tasks).await {
        for (status, n) in result? {
            *statuses.entry(status).or_default() += n;
        }
    }
    let phase = Phase {
        name,
        sent: count,
        statuses,
        elapsed: started.elapsed(),
    };
    println!("{phase}");
    Ok(phase)
}
