//! SPEC §7: rate limits shared across replicas in Redis, against a real `redis-server` (each
//! test starts its own on a free loopback port). The GCRA script's arithmetic is checked with
//! a controlled clock against the local limiter; the gateways are checked for one shared limit,
//! expiring keys, and falling back and coming back when Redis stops, is absent or hangs.
//!
//! Recovery is eventual by design (one probe per `PROBE_INTERVAL`), so those tests poll with a
//! bound; nothing else waits on time.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use jwtgate::auth::validate::Identity;
use jwtgate::config::{By, Config, Limit, RateLimits, RedisBackend};
use jwtgate::echo::EchoServer;
use jwtgate::issuer::Issuer;
use jwtgate::metrics::Metrics;
use jwtgate::ratelimit::RateLimiter;
use jwtgate::ratelimit::remote::{Failure, Remote, Verdict};
use jwtgate::server::Gateway;
use redis::AsyncCommands as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cli::spawn_gateway_with_env;
use crate::support::{ROUTES, Reply, config_with_issuer, scrape, start_issuer, value, wait_ready};
use crate::tls::{Pem, write_cert};

/// A `redis-server` of its own on 127.0.0.1 (no persistence), stopped on drop.
struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Serves TLS only, with this certificate (which is also its own root).
    tls: Option<Pem>,
    /// `requirepass`: a fresh random password, which goes into [`RedisServer::url`].
    password: Option<String>,
}

impl RedisServer {
    async fn start() -> RedisServer {
        RedisServer::start_on(free_port().await).await
    }

    async fn start_on(port: u16) -> RedisServer {
        RedisServer::launch(port, false).await
    }

    /// A Redis that speaks TLS only (`rediss://`), with a self-signed certificate for
    /// 127.0.0.1, and requires a password.
    async fn start_tls() -> RedisServer {
        RedisServer::launch(free_port().await, true).await
    }

    async fn launch(port: u16, tls: bool) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let password = tls.then(random_password);
        let tls = tls.then(|| write_cert(dir.path(), "redis"));
        let mut server = RedisServer {
            port,
            child: None,
            dir,
            tls,
            password,
        };
        server.restart().await;
        server
    }

    /// Starts (again) on the same port; returns once it answers `PING`.
    async fn restart(&mut self) {
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        match &self.tls {
            None => command.args(["--port", &port]),
            Some(pem) => command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(&pem.cert)
                .arg("--tls-key-file")
                .arg(&pem.key)
                .arg("--tls-ca-cert-file")
                .arg(&pem.cert),
        };
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is not installed (`.ci/run` installs it: apt-get install redis-server)");
        self.child = Some(child);
        for _ in 0..1000 {
            let up = match self.tls {
                None => ping(self.addr()).await,
                Some(_) => self.tls_connection().await.is_some(),
            };
            if up {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// A connection over TLS that trusts the server's certificate, once it answers.
    async fn tls_connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        let pem = self.tls.as_ref()?;
        let certs = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(&pem.cert).unwrap()),
        };
        let client = redis::Client::build_with_tls(self.url(), certs).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
        pong.ok().map(|_| conn)
    }

    fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    fn url(&self) -> String {
        self.url_with(self.password.as_deref())
    }

    /// The URL with `password` in place of the server's own.
    fn url_with(&self, password: Option<&str>) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let user = password.map(|p| format!(":{p}@")).unwrap_or_default();
        format!("{scheme}://{user}127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP / SIGCONT: a Redis that accepts connections and answers nothing.
    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
    }

    async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A password no other run shares (std's per-process random hash keys).
fn random_password() -> String {
    use std::hash::BuildHasher as _;
    let state = std::collections::hash_map::RandomState::new();
    format!("pw{:016x}{:016x}", state.hash_one(1), state.hash_one(2))
}

/// redis-server cannot report a port 0 choice: take a free one from the kernel.
async fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).await.is_ok() && &reply == b"+PONG\r\n"
}

fn settings(url: String) -> RedisBackend {
    RedisBackend {
        url,
        timeout: Duration::from_millis(200),
        key_prefix: "jwtgate-test:".into(),
    }
}

/// A connected [`Remote`] (polls until the background connection is made).
async fn remote(redis: &RedisServer) -> Remote {
    let remote = Remote::connect(&settings(redis.url()), Arc::new(Metrics::new()));
    let probe = limit(1, 1);
    for _ in 0..1000 {
        match remote.verdict("jwtgate-test:probe", &probe, Some(0)).await {
            Err(Failure::NotConnected) => tokio::time::sleep(Duration::from_millis(10)).await,
            Ok(_) => return remote,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("never connected to Redis");
}

fn limit(requests: u32, burst: u32) -> Limit {
    Limit {
        requests: NonZeroU32::new(requests).unwrap(),
        per: Duration::from_secs(u64::from(requests)),
        burst: NonZeroU32::new(burst).unwrap(),
        by: By::Subject,
    }
}

const SECOND: u64 = 1_000_000;

#[tokio::test]
async fn the_script_counts_first_request_burst_boundary_and_refill() {
    let redis = RedisServer::start().await;
    let remote = remote(&redis).await;
    let quota = limit(3, 3); // one request per second, burst 3
    let t0 = 1_700_000_000 * SECOND;
    let ask = |now: u64| {
        let remote = &remote;
        async move {
            remote
                .verdict("jwtgate-test:b", &quota, Some(now))
                .await
                .unwrap()
        }
    };
    // First request: a full bucket, one taken.
    assert_eq!(ask(t0).await, Verdict::Allowed { remaining: 2 });
    assert_eq!(ask(t0).await, Verdict::Allowed { remaining: 1 });
    assert_eq!(ask(t0).await, Verdict::Allowed { remaining: 0 });
    // Burst boundary: the next one waits exactly one interval.
    assert_eq!(
        ask(t0).await,
        Verdict::Refused {
            wait: Duration::from_secs(1)
        }
    );
    // One microsecond early is still refused; on time, one more passes.
    assert_eq!(
        ask(t0 + SECOND - 1).await,
        Verdict::Refused {
            wait: Duration::from_micros(1)
        }
    );
    assert_eq!(ask(t0 + SECOND).await, Verdict::Allowed { remaining: 0 });
    // Long after: full again.
    assert_eq!(
        ask(t0 + 60 * SECOND).await,
        Verdict::Allowed { remaining: 2 }
    );

    // The key lives until the bucket is full again (here: one interval after that request).
    let mut c = redis.connection().await;
    let ttl: i64 = c.pttl("jwtgate-test:b").await.unwrap();
    assert!((1..=1000).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn the_script_decides_as_the_local_limiter_does() {
    let redis = RedisServer::start().await;
    let remote = remote(&redis).await;
    let quota = limit(10, 4);
    let limits = RateLimits {
        default: Some(quota),
        ..RateLimits::default()
    };
    let clock = FakeRelativeClock::default();
    let local = RateLimiter::with_clock(&limits, clock.clone());
    let who = Identity {
        sub: "alice".into(),
        uid: None,
        cid: None,
        groups: vec![],
        scopes: vec![],
        exp: 0,
        claims: Default::default(),
    };
    let t0 = 1_800_000_000 * SECOND;
    let mut elapsed = 0u64;
    // Bursts, pauses shorter and longer than an interval, a pause that refills everything.
    for step_ms in [
        0, 0, 0, 0, 0, 0, 300, 700, 1000, 0, 0, 250, 2500, 0, 0, 0, 0, 0, 9000, 0,
    ] {
        clock.advance(Duration::from_millis(step_ms));
        elapsed += step_ms * 1000;
        let expected = local.check(&who).unwrap();
        let verdict = remote
            .verdict("jwtgate-test:same", &quota, Some(t0 + elapsed))
            .await
            .unwrap();
        assert_eq!(
            Remote::decision(&quota, verdict),
            expected,
            "after {elapsed} µs"
        );
    }
}

const LIMITS: &str = r#"
[rate_limits.groups]
orders-readers = { requests = 4, per = "1h" }
admins = { requests = 6, per = "1h", by = "group" }
"#;

/// Two gateways sharing one Redis, one issuer, one echo.
struct Replicas {
    a: Gateway,
    b: Gateway,
    issuer: Issuer,
    _echo: EchoServer,
}

/// A gateway configuration with the test routes, `limits`, and limits kept in the Redis at
/// `redis_url` under the prefix `jwtgate-test:`.
fn redis_config(
    echo: SocketAddr,
    issuer_url: &str,
    redis_url: &str,
    timeout: &str,
    limits: &str,
) -> String {
    let backend = format!(
        "[rate_limits]\nbackend = \"redis\"\nredis_url = \"{redis_url}\"\nredis_timeout = \"{timeout}\"\nredis_key_prefix = \"jwtgate-test:\"\n"
    );
    config_with_issuer(echo, issuer_url, "", &format!("{ROUTES}{backend}{limits}"))
}

async fn replicas(redis_url: &str, limits: &str) -> Replicas {
    let issuer = start_issuer().await;
    let echo = EchoServer::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let text = redis_config(echo.addr(), issuer.issuer_url(), redis_url, "200ms", limits);
    let start = || async {
        let gateway = Gateway::start(Config::from_toml_str(&text).unwrap())
            .await
            .unwrap();
        wait_ready(&gateway).await;
        gateway
    };
    Replicas {
        a: start().await,
        b: start().await,
        issuer,
        _echo: echo,
    }
}

async fn get(gateway: &Gateway, token: &str) -> Reply {
    get_at(gateway.listen_addr(), token).await
}

/// Sends until a decision of `backend` is counted on `gateway` (bounded), returning the
/// statuses seen meanwhile.
async fn until_decided_by(gateway: &Gateway, token: &str, backend: &str) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..300 {
        let before = decisions(gateway, backend).await;
        statuses.push(get(gateway, token).await.status.as_u16());
        if decisions(gateway, backend).await > before {
            return statuses;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no {backend} decision; statuses {statuses:?}");
}

async fn decisions(gateway: &Gateway, backend: &str) -> f64 {
    let m = scrape(gateway).await;
    ["allowed", "limited"]
        .iter()
        .flat_map(|d| {
            ["orders-readers", "admins"].map(|l| {
                value(
                    &m,
                    &format!(
                        "jwtgate_ratelimit_decisions_total{{limit=\"{l}\",decision=\"{d}\",backend=\"{backend}\"}}"
                    ),
                )
            })
        })
        .sum()
}

async fn fallback(gateway: &Gateway) -> f64 {
    value(&scrape(gateway).await, "jwtgate_ratelimit_redis_fallback")
}

#[tokio::test]
async fn two_replicas_enforce_one_limit_per_subject_and_per_group() {
    let redis = RedisServer::start().await;
    let r = replicas(&redis.url(), LIMITS).await;

    // alice: orders-readers, 4 per hour per subject, alternating between the replicas.
    let alice = r.issuer.token_for_user("alice");
    let mut seen = Vec::new();
    for i in 0..8 {
        let gateway = if i % 2 == 0 { &r.a } else { &r.b };
        let reply = get(gateway, &alice).await;
        seen.push((
            reply.status.as_u16(),
            reply.headers["ratelimit-remaining"]
                .to_str()
                .unwrap()
                .to_owned(),
        ));
    }
    let expected: Vec<(u16, String)> = [(200, "3"), (200, "2"), (200, "1"), (200, "0")]
        .into_iter()
        .chain([(429, "0"); 4])
        .map(|(s, r)| (s, r.to_owned()))
        .collect();
    assert_eq!(seen, expected);

    // admins: 6 per hour for the whole group, shared by two admins on two replicas.
    let bob = r.issuer.token_for_user("bob");
    let mut other = r.issuer.claims_for_user("bob");
    other["sub"] = serde_json::json!("carol");
    other["uid"] = serde_json::json!("00u-carol");
    let carol = r.issuer.sign(&other);
    let mut allowed = 0;
    for i in 0..12 {
        let (gateway, token) = if i % 2 == 0 {
            (&r.a, &bob)
        } else {
            (&r.b, &carol)
        };
        if get(gateway, token).await.status == 200 {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 6);
    assert!(decisions(&r.a, "redis").await >= 10.0);
    assert_eq!(decisions(&r.a, "local").await, 0.0);
    assert_eq!(fallback(&r.a).await, 0.0);

    // Every key Redis holds expires (when its bucket is full again, at most an hour away).
    let mut c = redis.connection().await;
    let keys: Vec<String> = c.keys("jwtgate-test:*").await.unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}"); // alice's bucket and the admins group's
    for key in keys {
        let ttl: i64 = c.pttl(&key).await.unwrap();
        assert!((1..=3_600_000).contains(&ttl), "{key}: {ttl}");
    }
}

const GENEROUS: &str = r#"
[rate_limits.groups]
orders-readers = { requests = 1000, per = "1h" }
"#;

#[tokio::test]
async fn redis_stopped_mid_traffic_falls_back_then_comes_back_after_a_restart() {
    let mut redis = RedisServer::start().await;
    let r = replicas(&redis.url(), GENEROUS).await;
    let alice = r.issuer.token_for_user("alice");
    assert_eq!(get(&r.a, &alice).await.status, 200);
    assert_eq!(decisions(&r.a, "redis").await, 1.0);

    redis.stop();
    // Never a 5xx: decisions move to the local limiter, and the fallback shows.
    let statuses = until_decided_by(&r.a, &alice, "local").await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(fallback(&r.a).await, 1.0);
    for _ in 0..20 {
        assert_eq!(get(&r.a, &alice).await.status, 200);
    }

    redis.restart().await;
    let statuses = until_decided_by(&r.a, &alice, "redis").await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(fallback(&r.a).await, 0.0);
}

#[tokio::test]
async fn redis_unreachable_at_start_is_not_a_readiness_problem() {
    let port = free_port().await;
    // Nothing listens yet: the replicas start, are ready, and limit locally.
    let r = replicas(&format!("redis://127.0.0.1:{port}"), GENEROUS).await;
    let alice = r.issuer.token_for_user("alice");
    assert_eq!(get(&r.a, &alice).await.status, 200);
    assert_eq!(decisions(&r.a, "local").await, 1.0);
    assert_eq!(fallback(&r.a).await, 1.0);

    let _redis = RedisServer::start_on(port).await;
    let statuses = until_decided_by(&r.a, &alice, "redis").await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(fallback(&r.a).await, 0.0);
}

#[tokio::test]
async fn a_hanging_redis_costs_at_most_the_timeout_then_is_bypassed() {
    let redis = RedisServer::start().await;
    let r = replicas(&redis.url(), GENEROUS).await;
    let alice = r.issuer.token_for_user("alice");
    assert_eq!(get(&r.a, &alice).await.status, 200);

    redis.signal("-STOP"); // accepts connections, answers nothing
    let reply = get(&r.a, &alice).await;
    assert_eq!(reply.status, 200, "decided locally after the timeout");
    assert_eq!(decisions(&r.a, "local").await, 1.0);
    assert_eq!(fallback(&r.a).await, 1.0);

    redis.signal("-CONT");
    let statuses = until_decided_by(&r.a, &alice, "redis").await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(fallback(&r.a).await, 0.0);
}

/// Waits (bounded) for a line of `child`'s log that contains every one of `needles`.
async fn logged(child: &crate::child::Child, needles: &[&str]) -> String {
    for _ in 0..3000 {
        match child.log.try_recv() {
            Ok(line) if needles.iter().all(|n| line.contains(n)) => return line,
            Ok(_) => {}
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
        }
    }
    panic!("no log line with {needles:?}");
}

/// `GET /api/orders` on a gateway process.
async fn get_at(addr: SocketAddr, token: &str) -> Reply {
    crate::support::send(
        &crate::support::client(),
        http::Request::get(format!("http://{addr}/api/orders"))
            .header("authorization", format!("Bearer {token}"))
            .body(jwtgate::body::empty())
            .unwrap(),
    )
    .await
}

/// Waits (bounded) until the gateway has the issuer's keys: a token without the route's group
/// is then refused 403, not 503, and no limit counts it.
async fn until_keys(addr: SocketAddr, nobody: &str) {
    for _ in 0..1000 {
        if get_at(addr, nobody).await.status == 403 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the gateway at {addr} never got the issuer's keys");
}

/// `rediss://` with a password: two gateway processes share their limits in a Redis reached
/// over TLS and verify its certificate against the roots `SSL_CERT_FILE` names (how an
/// operator trusts a private CA, docs/scaling.md). A gateway that does not trust the
/// certificate, or sends a wrong password, says so at the default level, with the URL but not
/// the password, and keeps its limits local.
#[tokio::test]
async fn limits_shared_over_tls_need_a_trusted_redis_certificate_and_the_password() {
    let redis = RedisServer::start_tls().await;
    let password = redis.password.clone().unwrap();
    let issuer = start_issuer().await;
    let echo = EchoServer::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config_for = |name: &str, url: &str| {
        let text = redis_config(echo.addr(), issuer.issuer_url(), url, "1s", LIMITS);
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let config = config_for("jwtgate.toml", &redis.url());
    let roots = redis.tls.as_ref().unwrap().cert.as_path();
    let nobody = issuer.token_for_user("nobody");

    let trusting =
        [(); 2].map(|()| spawn_gateway_with_env(&config, "info", &[("SSL_CERT_FILE", roots)]));
    for gateway in &trusting {
        logged(
            gateway,
            &[
                "connected to Redis for rate limits",
                "rediss://***@127.0.0.1",
            ],
        )
        .await;
        until_keys(gateway.addr, &nobody).await;
    }
    // alice: orders-readers, 4 per hour per subject, alternating between the two processes.
    let alice = issuer.token_for_user("alice");
    let mut statuses = Vec::new();
    for i in 0..6 {
        statuses.push(get_at(trusting[i % 2].addr, &alice).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429]);
    let mut conn = redis.tls_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("jwtgate-test:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty(), "no limit state in the TLS Redis");

    // Another root: the handshake fails on the certificate. alice, out of requests in Redis,
    // is counted afresh by this process's own limiter.
    let other = write_cert(dir.path(), "other");
    let doubting =
        spawn_gateway_with_env(&config, "info", &[("SSL_CERT_FILE", other.cert.as_path())]);
    let failure = logged(
        &doubting,
        &["cannot connect to Redis", "certificate", "WARN"],
    )
    .await;
    let shown = format!("rediss://***@127.0.0.1:{}", redis.port);
    assert!(failure.contains(&shown), "{failure}");
    assert!(
        !failure.contains(&password),
        "the password was logged: {failure}"
    );
    until_keys(doubting.addr, &nobody).await;
    let reply = get_at(doubting.addr, &alice).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["ratelimit-remaining"], "3");

    // The right roots, a wrong password: Redis refuses it, and the log names neither password.
    let wrong = random_password();
    let misconfigured = config_for("wrong.toml", &redis.url_with(Some(&wrong)));
    let refused = spawn_gateway_with_env(&misconfigured, "info", &[("SSL_CERT_FILE", roots)]);
    let failure = logged(&refused, &["cannot connect to Redis", "WARN", &shown]).await;
    assert!(
        failure.contains("Password authentication failed"),
        "{failure}"
    );
    for secret in [&password, &wrong] {
        assert!(
            !failure.contains(secret.as_str()),
            "a password was logged: {failure}"
        );
    }
    until_keys(refused.addr, &nobody).await;
    let reply = get_at(refused.addr, &alice).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["ratelimit-remaining"], "3");
}
