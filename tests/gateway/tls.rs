//! TLS termination with a certificate generated in the test: HTTP/1.1 and h2 over TLS, ALPN,
//! h2 cancellation, and clear errors for unusable certificate files; TLS towards upstreams: an
//! untrusted certificate refused (a silent handshake: forward.rs).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::Request;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::TokioIo;
use jwtgate::body;
use jwtgate::config::Config;
use jwtgate::echo::EchoServer;
use jwtgate::server::{Gateway, StartError};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::{Harness, h2_over, public_upstream, silent_upstream, within};
use crate::upstream_conns::holds_each_request;

pub(crate) struct Pem {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) der: CertificateDer<'static>,
}

pub(crate) fn write_cert(dir: &Path, name: &str) -> Pem {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    Pem {
        cert,
        key,
        der: generated.cert.der().clone(),
    }
}

fn tls_config(echo: &EchoServer, cert: &Path, key: &Path) -> Config {
    tls_config_routing(
        cert,
        key,
        &format!(
            "[upstreams.echo]\ntargets = [\"http://{}\"]\n[[routes]]\npath = \"/\"\nupstream = \"echo\"\npublic = true\n",
            echo.addr()
        ),
    )
}

/// A TLS gateway with `routes` (upstreams and routes) after its `[server]` table.
fn tls_config_routing(cert: &Path, key: &Path, routes: &str) -> Config {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{routes}",
        cert.display(),
        key.display(),
    );
    Config::from_toml_str(&text).unwrap()
}

/// A TLS gateway, its certificate written under `dir`, with one public route `/{name}` to
/// `upstream` under the upstream `timeout`.
pub(crate) async fn tls_gateway_to(
    dir: &Path,
    name: &str,
    upstream: SocketAddr,
    timeout: &str,
) -> (Gateway, Pem) {
    let pem = write_cert(dir, "gw");
    let routes = public_upstream(
        name,
        &[format!("http://{upstream}")],
        &format!("timeout = \"{timeout}\""),
    );
    let gateway = Gateway::start(tls_config_routing(&pem.cert, &pem.key, &routes))
        .await
        .unwrap();
    (gateway, pem)
}

/// A TLS-terminating gateway with a fresh self-signed certificate, in front of an echo server.
struct TlsGateway {
    gateway: Gateway,
    echo: EchoServer,
    pem: Pem,
    _dir: tempfile::TempDir,
}

impl TlsGateway {
    async fn start() -> TlsGateway {
        let dir = tempfile::tempdir().unwrap();
        let pem = write_cert(dir.path(), "gw");
        let echo = EchoServer::start(([127, 0, 0, 1], 0).into()).await.unwrap();
        let gateway = Gateway::start(tls_config(&echo, &pem.cert, &pem.key))
            .await
            .unwrap();
        TlsGateway {
            gateway,
            echo,
            pem,
            _dir: dir,
        }
    }
}

async fn connect(
    gateway: &Gateway,
    trust: &CertificateDer<'static>,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(gateway.listen_addr()).await.unwrap();
    connect_over(tcp, trust, alpn).await
}

/// A TLS client on `tcp`, trusting `trust` alone and offering `alpn`.
pub(crate) async fn connect_over(
    tcp: TcpStream,
    trust: &CertificateDer<'static>,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test]
async fn https_with_http_1_1_reaches_the_upstream_marked_as_https() {
    // The echo server runs as long as it is held.
    let TlsGateway {
        gateway,
        echo: _echo,
        pem,
        ..
    } = TlsGateway::start().await;

    let tls = connect(&gateway, &pem.der, b"http/1.1").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = send
        .send_request(
            Request::get("/hello")
                .header("host", "localhost")
                .body(body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let doc = echo_doc(response).await;
    assert_eq!(doc["path"], "/hello");
    assert_eq!(
        upstream_header(&doc, "x-forwarded-proto"),
        Some("https".into())
    );
}

#[tokio::test]
async fn h2_is_negotiated_by_alpn_and_forwarded_as_http_1_1() {
    // The echo server runs as long as it is held.
    let TlsGateway {
        gateway,
        echo: _echo,
        pem,
        ..
    } = TlsGateway::start().await;

    let tls = connect(&gateway, &pem.der, b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, _conn) = h2_over(tls).await;
    let response = send
        .send_request(
            Request::post("https://localhost/h2/path?x=1")
                .body(body::full("twelve bytes"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let doc = echo_doc(response).await;
    assert_eq!(doc["path"], "/h2/path");
    assert_eq!(doc["query"], "x=1");
    // h2 requests go through the pooled client; it too sends the origin form.
    assert_eq!(doc["target"], "/h2/path?x=1");
    assert_eq!(doc["version"], "HTTP/1.1");
    assert_eq!(doc["body_bytes"], 12);
    assert_eq!(
        upstream_header(&doc, "host"),
        Some("localhost".into()),
        "the :authority became Host"
    );
}

/// h2 clients' requests go through the pooled client, not a carried connection: its wait for
/// the response head is bounded by the route's `timeout` too.
#[tokio::test]
async fn an_h2_request_to_a_silent_upstream_is_a_504_after_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (silent, _task) = silent_upstream().await;
    let (gateway, pem) = tls_gateway_to(dir.path(), "slow", silent, "300ms").await;

    let tls = connect(&gateway, &pem.der, b"h2").await;
    let (mut send, _conn) = h2_over(tls).await;
    let response = within(
        send.send_request(
            Request::get("https://localhost/slow")
                .body(body::empty())
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 504);
    assert_eq!(echo_doc(response).await["error"], "gateway_timeout");
}

/// An h2 client that gives up on a request (its stream is reset) cancels the upstream request as
/// an HTTP/1.1 client that hangs up does (upstream_conns.rs): the pooled client's connection
/// closes at once, not when the route's hour-long `timeout` would end the wait. The client's
/// connection stays open and usable; closing it cancels its open streams' upstream requests too.
#[tokio::test]
async fn an_h2_stream_reset_mid_request_closes_its_upstream_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, mut got, mut closed) = holds_each_request().await;
    let (gateway, pem) = tls_gateway_to(dir.path(), "hold", upstream, "1h").await;

    // hyper's h2 client drives the connection in a task of its own: a second handle on the
    // socket is how the test cuts it.
    let tcp = TcpStream::connect(gateway.listen_addr())
        .await
        .unwrap()
        .into_std()
        .unwrap();
    let cut = tcp.try_clone().unwrap();
    let tls = connect_over(TcpStream::from_std(tcp).unwrap(), &pem.der, b"h2").await;
    let (send, _conn) = h2_over(tls).await;
    let request = |mut send: SendRequest<_>| {
        tokio::spawn(async move {
            send.send_request(
                Request::get("https://localhost/hold")
                    .body(body::empty())
                    .unwrap(),
            )
            .await
        })
    };

    // Dropping the response future resets the stream (RST_STREAM, CANCEL).
    let waiting = request(send.clone());
    within(got.recv()).await.unwrap();
    waiting.abort();
    assert_eq!(
        within(closed.recv()).await,
        Some(()),
        "after a stream reset"
    );

    // The same connection still carries requests; closing it takes their upstream work along.
    let waiting = request(send.clone());
    within(got.recv()).await.unwrap();
    cut.shutdown(std::net::Shutdown::Both).unwrap();
    assert_eq!(
        within(closed.recv()).await,
        Some(()),
        "after the connection closed"
    );
    waiting.abort();
}

/// Upstream TLS is verified against the system's roots: an https upstream whose certificate
/// nothing trusted signed (here a second, TLS-terminating gateway with a self-signed one, in
/// front of an echo server) is a 502, and the request never reaches it.
#[tokio::test]
async fn an_https_upstream_with_an_untrusted_certificate_gets_no_request_502() {
    let TlsGateway {
        gateway: upstream,
        echo,
        ..
    } = TlsGateway::start().await;
    let h = Harness::with(&public_upstream(
        "tls",
        &[format!("https://{}", upstream.listen_addr())],
        "",
    ))
    .await;
    let r = h.get("/tls").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "bad_gateway");
    assert_eq!(
        echo.requests(),
        0,
        "the request went past an untrusted certificate"
    );
}

#[tokio::test]
async fn a_key_that_does_not_match_the_certificate_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_cert(dir.path(), "a");
    let b = write_cert(dir.path(), "b");
    let echo = EchoServer::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let err = Gateway::start(tls_config(&echo, &a.cert, &b.key))
        .await
        .unwrap_err();
    let StartError::Tls(e) = err else {
        panic!("expected a TLS configuration error, got {err}");
    };
    assert_eq!(e.0.key, "server.tls_key");
    assert!(
        e.0.reason.contains("cannot be used with the certificate"),
        "{}",
        e.0.reason
    );
}

#[tokio::test]
async fn unreadable_or_empty_pem_files_are_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_cert(dir.path(), "good");
    let echo = EchoServer::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let missing = dir.path().join("missing.pem");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();

    let cases = [
        (missing.clone(), good.key.clone(), "server.tls_cert"),
        (empty.clone(), good.key.clone(), "server.tls_cert"),
        (good.cert.clone(), missing, "server.tls_key"),
        (good.cert.clone(), empty, "server.tls_key"),
        // A certificate where the key should be.
        (good.cert.clone(), good.cert.clone(), "server.tls_key"),
    ];
    for (cert, key, want_key) in cases {
        match Gateway::start(tls_config(&echo, &cert, &key)).await {
            Err(StartError::Tls(e)) => assert_eq!(e.0.key, want_key, "{cert:?} {key:?}: {e}"),
            Err(other) => panic!("{cert:?} {key:?}: wrong error {other}"),
            Ok(_) => panic!("{cert:?} {key:?}: started"),
        }
    }
}

/// The echo upstream's JSON description of the request it received.
async fn echo_doc(response: http::Response<hyper::body::Incoming>) -> serde_json::Value {
    use http_body_util::BodyExt as _;
    serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

/// A header the echo upstream received, from its description.
fn upstream_header(doc: &serde_json::Value, name: &str) -> Option<serde_json::Value> {
    doc["headers"]
        .as_array()?
        .iter()
        .find(|p| p[0] == name)
        .map(|p| p[1].clone())
}
