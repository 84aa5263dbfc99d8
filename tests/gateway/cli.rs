//! The `jwtgate` binary itself: `check` on good and bad files, exit codes, and a real `run`
//! that streams 1 GiB in bounded memory and drains on SIGTERM.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use http::Request;
use jwtgate::config::Config;
use jwtgate::echo::EchoServer;

use crate::child::Child;
use crate::support::{client, config_text, h2_over, send};

fn jwtgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jwtgate"))
        .args(args)
        .output()
        .expect("the jwtgate binary runs")
}

fn check(path: &Path) -> (i32, String, String) {
    let out = jwtgate(&["check", "--config", path.to_str().unwrap()]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_shipped_config_file_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
            let (code, stdout, stderr) = check(&path);
            assert_eq!(code, 0, "{}: {stderr}", path.display());
            assert!(
                stdout.contains("routes (") && stdout.contains("is valid"),
                "{stdout}"
            );
            seen += 1;
        }
    }
    assert!(seen >= 1, "no config files found in {}", dir.display());
}

#[test]
fn check_prints_every_problem_with_its_place_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        r#"[server]
listn = "127.0.0.1:8080"

[okta]
issuer = "https://id.example/oauth2/x"
audience = "api://x"
algorithms = ["RS256", "none", "HS256"]
leeway = "30"

[upstreams.orders]
targets = ["http://127.0.0.1:9001"]
timeout = "soon"

[[routes]]
path = "/api/orders"
upstream = "ordrs"

[[routes]]
path = "/public"
upstream = "orders"
public = true
groups = ["everyone"]

[[routes]]
path = "/api/orders"
methods = ["GET"]
upstream = "orders"
"#,
    )
    .unwrap();
    let (code, stdout, stderr) = check(&file);
    assert_eq!(code, 2, "{stdout}{stderr}");
    let f = file.display();
    let expected = [
        format!("{f}:1:1: server.listen: missing required key"),
        format!("{f}:2:1: server.listn: unknown key"),
        format!("{f}:7:24: okta.algorithms: \"none\" is refused"),
        format!("{f}:7:32: okta.algorithms: \"HS256\" is refused: HMAC"),
        format!("{f}:8:10: okta.leeway: \"30\" is not a duration"),
        format!("{f}:12:11: upstreams.orders.timeout: \"soon\" is not a duration"),
        format!("{f}:16:12: routes[0].upstream: unknown upstream \"ordrs\""),
        format!("{f}:22:10: routes[1].groups: a public route takes no token"),
        format!("{f}:24:1: routes[2]: duplicate route: path \"/api/orders\""),
        "9 problems in".to_owned(),
    ];
    for line in &expected {
        assert!(
            stderr.contains(line.as_str()),
            "missing {line:?} in:\n{stderr}"
        );
    }
}

#[test]
fn check_refuses_a_table_of_bad_files_each_with_its_reason() {
    let base = "[server]\nlisten = \"127.0.0.1:8080\"\n[upstreams.u]\ntargets = [\"http://127.0.0.1:9\"]\n";
    let okta = "[okta]\nissuer = \"https://id.example/oauth2/x\"\naudience = \"api://x\"\n";
    let route = "[[routes]]\npath = \"/\"\nupstream = \"u\"\npublic = true\n";
    let cases: Vec<(String, &str)> = vec![
        (
            "[server]\nlisten = 8080\n".into(),
            "server.listen: invalid type: integer `8080`, expected a string",
        ),
        ("[server\n".into(), "1:8: unclosed table"),
        (
            format!("{base}[[routes]]\npath = \"/x\"\nupstream = \"u\"\n"),
            "okta: missing table [okta]: protected routes need an issuer",
        ),
        (
            format!("{base}{okta}algorithms = [\"None\"]\n{route}"),
            "okta.algorithms: \"None\" is refused",
        ),
        (
            format!("{base}{okta}algorithms = [\"HS512\"]\n{route}"),
            "okta.algorithms: \"HS512\" is refused",
        ),
        (
            format!("{base}{okta}algorithms = []\n{route}"),
            "okta.algorithms: must name at least one algorithm",
        ),
        (
            format!("{base}{okta}issuer2 = \"x\"\n{route}"),
            "okta.issuer2: unknown key",
        ),
        (
            format!("{base}{okta}max_token_bytes = 10\n{route}"),
            "okta.max_token_bytes: must be between 512 and 65536",
        ),
        (
            format!("{base}{okta}leeway = \"10m\"\n{route}"),
            "okta.leeway: must be at most 5m",
        ),
        (
            format!("{base}{route}[[routes]]\npath = \"/\"\nupstream = \"u\"\npublic = true\n"),
            "routes[1]: duplicate route",
        ),
        (
            format!("{base}[[routes]]\npath = \"api\"\nupstream = \"u\"\npublic = true\n"),
            "routes[0].path: must start with '/'",
        ),
        (
            format!("{base}[[routes]]\npath = \"/a/../b\"\nupstream = \"u\"\npublic = true\n"),
            "routes[0].path: is not in normal form",
        ),
        (
            format!("{base}[[routes]]\npath = \"/a%2Fb\"\nupstream = \"u\"\npublic = true\n"),
            "routes[0].path: can never match a request: encoded slash in path",
        ),
        (
            format!(
                "{base}[[routes]]\npath = \"/a\"\nmethods = [\"get\"]\nupstream = \"u\"\npublic = true\n"
            ),
            "routes[0].methods: \"get\": methods are case-sensitive",
        ),
        (
            format!(
                "{base}[[routes]]\npath = \"/a\"\nupstream = \"u\"\npublic = true\nscopes = [\"s\"]\n"
            ),
            "routes[0].scopes: a public route takes no token",
        ),
        (
            format!("{base}{route}[rate_limits]\nbackend = \"memcached\"\n"),
            "rate_limits.backend: \"memcached\" is not a backend",
        ),
        (
            format!("{base}{route}[rate_limits]\nbackend = \"redis\"\n"),
            "rate_limits.redis_url: required with backend = \"redis\"",
        ),
        (
            format!(
                "{base}{route}[rate_limits]\nbackend = \"redis\"\nredis_url = \"http://r:6379\"\n"
            ),
            "rate_limits.redis_url: \"http://r:6379\" is not a redis:// or rediss:// URL",
        ),
        (
            format!("{base}{route}[rate_limits.groups]\ng = {{ requests = 5 }}\n"),
            "rate_limits.groups.g.per: missing required key",
        ),
        (
            format!(
                "{base}{route}[forward]\nclaims_to_headers = {{ sub = \"X-Forwarded-For\" }}\n"
            ),
            "forward.claims_to_headers.sub: x-forwarded-for is owned by HTTP or the gateway",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:8080\"\ntls_cert = \"a.pem\"\n".into(),
            "server.tls_key: tls_cert is set but tls_key is not",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:8080\"\nworkers = 0\n".into(),
            "server.workers: must be between 1 and 1024, got 0",
        ),
        (
            format!("[server]\nlisten = \"127.0.0.1:8080\"\n[upstreams.u]\ntargets = []\n{route}"),
            "upstreams.u.targets: must not be empty",
        ),
        (
            format!("{base}{okta}jwks_uri = \"http://keys.example/v1/keys\"\n{route}"),
            "okta.jwks_uri: must use https",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (text, expected)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("case{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let (code, _, stderr) = check(&file);
        assert_eq!(code, 2, "case {i}: {stderr}");
        assert!(
            stderr.contains(expected),
            "case {i}: expected {expected:?} in:\n{stderr}\nfile:\n{text}"
        );
        assert!(
            stderr.contains(&format!("{}:", file.display())),
            "case {i}: the file is not named: {stderr}"
        );
    }
}

#[test]
fn a_missing_file_is_a_configuration_error() {
    let out = jwtgate(&["check", "--config", "/nonexistent/jwtgate.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the file"));
    let out = jwtgate(&["run", "--config", "/nonexistent/jwtgate.toml"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_port_in_use_is_a_fatal_error_with_exit_code_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("busy.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"{}\"\n[upstreams.u]\ntargets = [\"http://127.0.0.1:9\"]\n[[routes]]\npath = \"/\"\nupstream = \"u\"\npublic = true\n",
            taken.local_addr().unwrap()
        ),
    )
    .unwrap();
    let out = jwtgate(&["run", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen on"));
}

fn spawn_gateway(config: &Path, rust_log: &str) -> Child {
    spawn_gateway_with_env(config, rust_log, &[])
}

/// [`spawn_gateway`] with more variables in the child's environment.
pub(crate) fn spawn_gateway_with_env(
    config: &Path,
    rust_log: &str,
    env: &[(&str, &Path)],
) -> Child {
    let binary = Path::new(env!("CARGO_BIN_EXE_jwtgate"));
    Child::spawn(binary, config, rust_log, env).unwrap_or_else(|e| panic!("{e}"))
}

/// Sends SIGTERM and waits for the exit status.
async fn terminate(mut child: Child) -> (std::process::ExitStatus, Child) {
    tokio::task::spawn_blocking(move || {
        let status = child.terminate().unwrap();
        (status, child)
    })
    .await
    .unwrap()
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_streams_one_gib_in_bounded_memory_and_exits_0_on_sigterm() {
    let echo = EchoServer::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("run.toml");
    let extra = "[[routes]]\npath = \"/upload\"\nupstream = \"echo\"\npublic = true\n";
    std::fs::write(&file, config_text(echo.addr(), extra)).unwrap();
    let child = spawn_gateway(&file, "info");
    let pid = child.process.id();

    let total: u64 = 1 << 30;
    let chunk = Bytes::from(vec![b'z'; 256 << 10]);
    let frames = futures_util::stream::iter(
        (0..total / chunk.len() as u64).map(move |_| Ok::<_, BoxError>(Frame::data(chunk.clone()))),
    );
    let reply = send(
        &client(),
        Request::post(format!("http://{}/upload", child.addr))
            .body(StreamBody::new(frames).boxed_unsync())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["body_bytes"], total);
    let peak_mib = peak_rss_kib(pid) / 1024;
    eprintln!("jwtgate peak RSS after a 1 GiB upload: {peak_mib} MiB");
    assert!(
        peak_mib < 100,
        "peak RSS {peak_mib} MiB: the body was buffered"
    );

    let (status, _child) = terminate(child).await;
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM must drain and exit 0, got {status:?}"
    );
}

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use jwtgate::body::BoxError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_text_reaches_the_logs_even_at_trace_level() {
    let issuer = crate::support::start_issuer().await;
    let echo = EchoServer::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("logs.toml");
    let text = crate::support::config_with_issuer(
        echo.addr(),
        issuer.issuer_url(),
        "",
        crate::support::ROUTES,
    );
    std::fs::write(&file, text).unwrap();
    let child = spawn_gateway(&file, "trace");
    let addr = child.addr;

    let good = issuer.token_for_user("alice");
    let mut expired_claims = issuer.claims_for_user("alice");
    expired_claims["exp"] = serde_json::json!(1_000_000_000u64);
    expired_claims["iat"] = serde_json::json!(999_999_000u64);
    let expired = issuer.sign(&expired_claims);
    let forged = format!("{}.AAAA", good.rsplit_once('.').unwrap().0);
    let secrets = [good.clone(), expired.clone(), forged.clone()];

    let c = client();
    // Keys load in the background: retry until the good token is accepted.
    let mut status = 0;
    for _ in 0..500 {
        let r = send(
            &c,
            Request::get(format!("http://{addr}/api/orders"))
                .header("authorization", format!("Bearer {good}"))
                .body(jwtgate::body::empty())
                .unwrap(),
        )
        .await;
        status = r.status.as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, 200);
    for token in &secrets {
        for path in ["/api/orders", "/public/x"] {
            let _ = send(
                &c,
                Request::get(format!("http://{addr}{path}"))
                    .header("authorization", format!("Bearer {token}"))
                    .body(jwtgate::body::empty())
                    .unwrap(),
            )
            .await;
        }
        let _ = send(
            &c,
            Request::get(format!("http://{addr}/api/orders?access_token={token}"))
                .body(jwtgate::body::empty())
                .unwrap(),
        )
        .await;
    }
    // The same over h2 (prior knowledge), whose frame logs are the likeliest leak.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut h2, _conn) = h2_over(tcp).await;
    let r = h2
        .send_request(
            Request::get(format!("http://{addr}/api/orders"))
                .header("authorization", format!("Bearer {good}"))
                .body(jwtgate::body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(h2);

    let (status, child) = terminate(child).await;
    assert_eq!(status.code(), Some(0));
    let log: Vec<String> = child.log.try_iter().collect();
    assert!(
        log.len() > 20,
        "trace logging produced too little to be a test: {log:?}"
    );
    let all = log.join("\n");
    for token in &secrets {
        let (rest, signature) = token.rsplit_once('.').unwrap();
        let payload = rest.split_once('.').unwrap().1;
        assert!(
            !all.contains(signature),
            "a token signature reached the logs"
        );
        assert!(!all.contains(payload), "a token payload reached the logs");
    }
    assert!(
        !all.contains("Bearer ey"),
        "an Authorization header reached the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_gets_one_access_log_line_and_sighup_reloads() {
    let issuer = crate::support::start_issuer().await;
    let echo = EchoServer::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.toml");
    let write = |extra: &str| {
        let text = crate::support::config_with_issuer(echo.addr(), issuer.issuer_url(), "", extra);
        std::fs::write(&file, text).unwrap();
    };
    write(crate::support::ROUTES);
    let child = spawn_gateway(&file, "info");
    let addr = child.addr;
    let c = client();
    let token = issuer.token_for_user("alice");
    let get = |path: String, token: Option<&str>| {
        let mut r = Request::get(format!("http://{addr}{path}"));
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        r.body(jwtgate::body::empty()).unwrap()
    };
    // Keys load in the background.
    for _ in 0..500 {
        if send(&c, get("/api/orders".into(), Some(&token)))
            .await
            .status
            == 200
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = send(
        &c,
        get(
            "/api/orders/./7?secret=hunter2&access=x".into(),
            Some(&token),
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send(&c, get("/api/admin".into(), Some(&token))).await;
    assert_eq!(r.status, 403);
    let r = send(&c, get("/public/x?q=hunter3".into(), None)).await;
    assert_eq!(r.status, 200);

    // SIGHUP reloads a changed file (the watcher may also see the change; either way the
    // signal must be logged and reload the file).
    write(&format!(
        "{}[[routes]]\npath = \"/new\"\nupstream = \"echo\"\npublic = true\n",
        crate::support::ROUTES
    ));
    let hup = Command::new("kill")
        .args(["-HUP", &child.process.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let mut status = 404;
    for _ in 0..300 {
        status = send(&c, get("/new".into(), None)).await.status.as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200, "SIGHUP did not reload the configuration");

    let (exit, child) = terminate(child).await;
    assert_eq!(exit.code(), Some(0));
    let lines: Vec<serde_json::Value> = child
        .log
        .try_iter()
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "SIGHUP: reloading the configuration"),
        "no SIGHUP line"
    );
    let access: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"] == "jwtgate::access")
        .collect();
    let find = |path: &str| {
        access
            .iter()
            .find(|l| l["path"] == path)
            .unwrap_or_else(|| panic!("no access line for {path}: {access:?}"))
    };
    let ok = find("/api/orders/7");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["route"], "/api/orders");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["subject"], "alice");
    assert_eq!(ok["upstream"], format!("http://{}", echo.addr()));
    assert_eq!(ok["refusal"], "-");
    assert!(ok["latency_ms"].as_f64().is_some());
    let refused = find("/api/admin");
    assert_eq!(refused["status"], 403);
    assert_eq!(refused["refusal"], "forbidden");
    assert_eq!(refused["subject"], "alice");
    let all: String = lines.iter().map(|l| l.to_string()).collect();
    for secret in [
        "hunter2",
        "hunter3",
        "secret=",
        token.rsplit_once('.').unwrap().1,
    ] {
        assert!(!all.contains(secret), "{secret} reached the log");
    }
}

#[tokio::test]
async fn a_sighup_right_after_start_reloads_instead_of_ending_the_process() {
    // SIGHUP's default action ends a process: its listener must be in place before the
    // gateway announces its address, or a reload sent at once kills the gateway.
    let echo = EchoServer::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hup.toml");
    std::fs::write(
        &file,
        config_text(
            echo.addr(),
            "[[routes]]\npath = \"/public\"\nupstream = \"echo\"\npublic = true\n",
        ),
    )
    .unwrap();
    for _ in 0..10 {
        let mut child = spawn_gateway(&file, "info");
        let pid = child.process.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
        let reply = send(
            &client(),
            Request::get(format!("http://{}/public/x", child.addr))
                .body(jwtgate::body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, 200);
        assert!(
            child.process.try_wait().unwrap().is_none(),
            "the gateway ended on SIGHUP"
        );
        let (status, _) = terminate(child).await;
        assert!(status.success(), "{status}");
    }
}
