//! Operating jwtgate: metrics after a scripted mix of requests, live reload with traffic
//! running (valid, invalid and half-written files, file change), state kept across reloads,
//! and the `health` command.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use jwtgate::body;
use jwtgate::config::Config;
use jwtgate::echo::EchoServer;
use jwtgate::server::Gateway;

use crate::support::{
    Harness, ROUTES, client, config_with_issuer, public_upstream, scrape, send, start_issuer,
    value, wait_ready,
};

#[tokio::test]
async fn metrics_count_a_scripted_mix_of_requests() {
    let dead = crate::support::closed_port().await;
    let h = Harness::with(&format!(
        "{ROUTES}[rate_limits.groups]\norders-readers = {{ requests = 3, per = \"1h\" }}\n{}",
        public_upstream("dead", &[format!("http://{dead}")], "")
    ))
    .await;
    let alice = h.token("alice");
    let mut expired = h.issuer.claims_for_user("alice");
    expired["exp"] = serde_json::json!(1_000_000_000u64);
    expired["iat"] = serde_json::json!(999_999_000u64);
    let expired = h.issuer.sign(&expired);

    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(h.get_with("/api/orders", &alice).await.status.as_u16()); // 200 ×3, 429
    }
    statuses.push(h.get("/api/orders").await.status.as_u16()); // 401 missing
    statuses.push(h.get_with("/api/orders", &expired).await.status.as_u16()); // 401 expired
    statuses.push(h.get_with("/api/admin", &alice).await.status.as_u16()); // 403
    statuses.push(h.get("/nowhere").await.status.as_u16()); // 404
    statuses.push(h.get("/dead").await.status.as_u16()); // 502
    statuses.push(h.get("/public/x").await.status.as_u16()); // 200
    assert_eq!(statuses, [200, 200, 200, 429, 401, 401, 403, 404, 502, 200]);

    let m = scrape(&h.gateway).await;
    let series = [
        (
            r#"jwtgate_requests_total{route="/api/orders",status_class="2xx"}"#,
            3.0,
        ),
        (
            r#"jwtgate_requests_total{route="/api/orders",status_class="4xx"}"#,
            3.0,
        ),
        (
            r#"jwtgate_requests_total{route="/api/admin",status_class="4xx"}"#,
            1.0,
        ),
        (
            r#"jwtgate_requests_total{route="none",status_class="4xx"}"#,
            1.0,
        ),
        (
            r#"jwtgate_requests_total{route="/dead",status_class="5xx"}"#,
            1.0,
        ),
        (
            r#"jwtgate_requests_total{route="/public",status_class="2xx"}"#,
            1.0,
        ),
        (r#"jwtgate_refusals_total{reason="rate_limited"}"#, 1.0),
        (r#"jwtgate_refusals_total{reason="missing_token"}"#, 1.0),
        (r#"jwtgate_refusals_total{reason="token_expired"}"#, 1.0),
        (r#"jwtgate_refusals_total{reason="forbidden"}"#, 1.0),
        (r#"jwtgate_refusals_total{reason="no_route"}"#, 1.0),
        (r#"jwtgate_refusals_total{reason="upstream_failed"}"#, 1.0),
        (
            r#"jwtgate_ratelimit_decisions_total{limit="orders-readers",decision="allowed",backend="local"}"#,
            3.0,
        ),
        (
            r#"jwtgate_ratelimit_decisions_total{limit="orders-readers",decision="limited",backend="local"}"#,
            1.0,
        ),
        (
            r#"jwtgate_upstream_errors_total{upstream="dead",kind="refused"}"#,
            1.0,
        ),
        (r#"jwtgate_key_fetches_total{result="success"}"#, 1.0),
        ("jwtgate_signing_keys", 1.0),
        ("jwtgate_requests_in_flight", 0.0),
        (
            r#"jwtgate_request_duration_seconds_count{route="/api/orders"}"#,
            6.0,
        ),
    ];
    for (name, want) in series {
        assert_eq!(value(&m, name), want, "{name}\n{m}");
    }
    // The token was verified once and then served from the cache (the 429 and the 403 are
    // later lookups of the same token).
    assert!(
        value(&m, r#"jwtgate_token_cache_lookups_total{result="hit"}"#) >= 3.0,
        "{m}"
    );
    assert!(value(&m, "jwtgate_signing_keys_age_seconds") >= 0.0);
    // Label values are bounded: no path or subject ever becomes a label.
    assert!(!m.contains("/nowhere") && !m.contains("alice"), "{m}");
}

const V1: &str = r#"
[[routes]]
path = "/public"
upstream = "echo"
public = true
[[routes]]
path = "/api/orders"
upstream = "echo"
groups = ["orders-readers"]
[rate_limits.groups]
admins = { requests = 2, per = "1h" }
"#;

fn v2() -> String {
    format!("{V1}[[routes]]\npath = \"/new\"\nupstream = \"echo\"\npublic = true\n")
}

struct Reloadable {
    gateway: Gateway,
    issuer: jwtgate::issuer::Issuer,
    echo: EchoServer,
    dir: tempfile::TempDir,
}

impl Reloadable {
    async fn start() -> Reloadable {
        let issuer = start_issuer().await;
        let echo = EchoServer::start(([127, 0, 0, 1], 0).into()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let r = Reloadable {
            gateway: Gateway::start(
                Config::from_toml_str(&config_with_issuer(
                    echo.addr(),
                    issuer.issuer_url(),
                    "",
                    V1,
                ))
                .unwrap(),
            )
            .await
            .unwrap(),
            issuer,
            echo,
            dir,
        };
        wait_ready(&r.gateway).await;
        r
    }

    fn text(&self, extra: &str) -> String {
        config_with_issuer(self.echo.addr(), self.issuer.issuer_url(), "", extra)
    }

    fn file(&self) -> std::path::PathBuf {
        self.dir.path().join("jwtgate.toml")
    }

    async fn status(&self, path: &str, token: Option<&str>) -> u16 {
        let mut req = Request::get(format!("http://{}{path}", self.gateway.listen_addr()));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        send(&client(), req.body(body::empty()).unwrap())
            .await
            .status
            .as_u16()
    }
}

#[tokio::test]
async fn valid_invalid_and_half_written_files_with_traffic_running() {
    let r = Arc::new(Reloadable::start().await);
    let token = r.issuer.token_for_user("alice");
    let fetches_before = r.issuer.key_requests();

    // Traffic on a public and a protected route for the whole test.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for i in 0..8 {
        let (r, stop, token) = (r.clone(), stop.clone(), token.clone());
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let status = if i % 2 == 0 {
                    r.status("/public/x", None).await
                } else {
                    r.status("/api/orders", Some(&token)).await
                };
                seen.push(status);
            }
            seen
        }));
    }

    let control = r.gateway.control();
    assert_eq!(r.status("/new", None).await, 404);
    let v2 = r.text(&v2());
    for round in 0..10 {
        // Valid: v2 adds /new.
        std::fs::write(r.file(), &v2).unwrap();
        control.reload_file(&r.file()).await.unwrap();
        assert_eq!(r.status("/new", None).await, 200, "round {round}");
        // Invalid: an unknown upstream; refused, v2 stays.
        std::fs::write(
            r.file(),
            v2.replace(
                "upstream = \"echo\"\npublic = true\n",
                "upstream = \"gone\"\npublic = true\n",
            ),
        )
        .unwrap();
        assert!(control.reload_file(&r.file()).await.is_err());
        assert_eq!(r.status("/new", None).await, 200);
        // Half-written: the file cut in the middle of a table.
        std::fs::write(r.file(), &v2[..v2.len() / 2]).unwrap();
        assert!(control.reload_file(&r.file()).await.is_err());
        assert_eq!(r.status("/new", None).await, 200);
        // Back to v1.
        std::fs::write(r.file(), r.text(V1)).unwrap();
        control.reload_file(&r.file()).await.unwrap();
        assert_eq!(r.status("/new", None).await, 404);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        let seen = w.await.unwrap();
        total += seen.len();
        assert!(
            seen.iter().all(|s| *s == 200),
            "a request failed during reloads: {seen:?}"
        );
    }
    assert!(total > 40, "too little traffic to prove anything: {total}");
    assert_eq!(
        r.issuer.key_requests(),
        fetches_before,
        "an unchanged issuer keeps its keys"
    );
    let m = scrape(&r.gateway).await;
    assert_eq!(
        value(&m, r#"jwtgate_config_reloads_total{result="success"}"#),
        20.0
    );
    assert_eq!(
        value(&m, r#"jwtgate_config_reloads_total{result="failure"}"#),
        20.0
    );
}

#[tokio::test]
async fn a_reload_keeps_buckets_of_unchanged_limits() {
    let r = Reloadable::start().await;
    let bob = r.issuer.token_for_user("bob"); // admins: 2 per hour
    assert_eq!(r.status("/api/orders", Some(&bob)).await, 200);
    assert_eq!(r.status("/api/orders", Some(&bob)).await, 200);
    r.gateway
        .reload(Config::from_toml_str(&r.text(&v2())).unwrap())
        .await
        .unwrap();
    assert_eq!(
        r.status("/api/orders", Some(&bob)).await,
        429,
        "the bucket survived"
    );
    let changed = v2().replace("requests = 2", "requests = 5");
    r.gateway
        .reload(Config::from_toml_str(&r.text(&changed)).unwrap())
        .await
        .unwrap();
    assert_eq!(
        r.status("/api/orders", Some(&bob)).await,
        200,
        "a changed limit starts afresh"
    );
}

#[tokio::test]
async fn a_changed_file_is_reloaded_by_the_watcher() {
    let r = Reloadable::start().await;
    std::fs::write(r.file(), r.text(V1)).unwrap();
    let watcher = jwtgate::reload::spawn(r.file(), r.gateway.control(), None).unwrap();
    std::fs::write(r.file(), r.text(&v2())).unwrap();
    // File events and the debounce take real time: poll, bounded.
    let mut status = 404;
    for _ in 0..300 {
        status = r.status("/new", None).await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200, "the watcher did not reload the changed file");
    watcher.abort();
}

#[tokio::test]
async fn a_new_issuer_is_fetched_before_the_swap_or_the_reload_is_refused() {
    let r = Reloadable::start().await;
    let other = start_issuer().await;
    let switched = config_with_issuer(r.echo.addr(), other.issuer_url(), "", V1);
    other.set_available(false);
    let err = r
        .gateway
        .reload(Config::from_toml_str(&switched).unwrap())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("keys could not be fetched"),
        "{err}"
    );
    assert_eq!(
        r.status("/api/orders", Some(&r.issuer.token_for_user("alice")))
            .await,
        200,
        "the old issuer is still in force"
    );
    other.set_available(true);
    r.gateway
        .reload(Config::from_toml_str(&switched).unwrap())
        .await
        .unwrap();
    assert_eq!(
        r.status("/api/orders", Some(&other.token_for_user("alice")))
            .await,
        200
    );
    assert_eq!(
        r.status("/api/orders", Some(&r.issuer.token_for_user("alice")))
            .await,
        401
    );
}

#[tokio::test]
async fn the_health_command_asks_the_admin_listener() {
    let h = Harness::start().await;
    let admin = h.gateway.admin_addr().unwrap();
    let run = |url: String| {
        Command::new(env!("CARGO_BIN_EXE_jwtgate"))
            .args(["health", "--url", &url])
            .output()
            .unwrap()
    };
    let ok = tokio::task::spawn_blocking(move || run(format!("http://{admin}/healthz")))
        .await
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let dead = crate::support::closed_port().await;
    let down = tokio::task::spawn_blocking(move || run(format!("http://{dead}/healthz")))
        .await
        .unwrap();
    assert_eq!(down.status.code(), Some(1));
}
