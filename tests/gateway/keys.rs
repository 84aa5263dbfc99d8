//! Key handling end to end (SPEC §4, OKTA.md §5 K01–K07): rotation, outages, kid floods,
//! discovery checks.

use futures_util::future::join_all;
use http::Request;
use jwtgate::auth::jwks::KeyCache;
use jwtgate::body;
use jwtgate::config::Config;
use jwtgate::echo::EchoServer;
use jwtgate::proxy::upstream::ConnectTimeouts;
use jwtgate::server::Gateway;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::{Harness, ROUTES, client, config_with_issuer, send, start_issuer, wait_ready};

async fn readyz(gateway: &Gateway) -> u16 {
    let admin = gateway.admin_addr().unwrap();
    send(
        &client(),
        Request::get(format!("http://{admin}/readyz"))
            .body(body::empty())
            .unwrap(),
    )
    .await
    .status
    .as_u16()
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_and_the_old_key_keeps_working_while_listed() {
    let h = Harness::configured("jwks_refetch_cooldown = \"1ms\"", ROUTES).await;
    let old = h.token("alice");
    assert_eq!(h.get_with("/api/orders", &old).await.status, 200);
    let before = h.issuer.key_requests();

    h.issuer.rotate().unwrap();
    let new = h.token("alice");
    assert_eq!(
        h.get_with("/api/orders", &new).await.status,
        200,
        "new kid after one refetch"
    );
    assert_eq!(h.issuer.key_requests(), before + 1);
    assert_eq!(
        h.get_with("/api/orders", &old).await.status,
        200,
        "old kid still listed"
    );
    assert_eq!(h.get_with("/api/orders", &new).await.status, 200);
    assert_eq!(
        h.issuer.key_requests(),
        before + 1,
        "known kids need no fetch"
    );
}

#[tokio::test]
async fn a_key_removed_from_the_jwks_stops_working_after_the_next_fetch() {
    let h = Harness::configured("jwks_refetch_cooldown = \"1ms\"", ROUTES).await;
    let old = h.token("alice");
    assert_eq!(h.get_with("/api/orders", &old).await.status, 200);
    // Emergency rotation: a new key, and the old one withdrawn.
    h.issuer.rotate().unwrap();
    h.issuer.retire_old_keys();
    let new = h.token("alice");
    assert_eq!(h.get_with("/api/orders", &new).await.status, 200);
    // The old token was cached as verified; the new key set must not let it through.
    let r = h.get_with("/api/orders", &old).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error_description"], "unknown signing key");
}

#[tokio::test]
async fn an_unknown_kid_flood_causes_at_most_one_fetch_per_cooldown() {
    let h = Harness::start().await; // default cooldown: 30s
    let before = h.issuer.key_requests();
    let claims = h.issuer.claims_for_user("alice");
    let tokens: Vec<String> = (0..300)
        .map(|i| {
            h.issuer.sign_with_header(
                &json!({"alg": "RS256", "kid": format!("flood-{i}")}),
                &claims,
            )
        })
        .collect();
    let replies = join_all(tokens.iter().map(|t| h.get_with("/api/orders", t))).await;
    assert!(replies.iter().all(|r| r.status == 401));
    let fetched = h.issuer.key_requests() - before;
    assert!(fetched <= 1, "{fetched} key fetches for one cooldown");
    // Genuine tokens are unaffected.
    assert_eq!(
        h.get_with("/api/orders", &h.token("alice")).await.status,
        200
    );
}

#[tokio::test]
async fn with_the_issuer_down_at_start_protected_routes_answer_503_until_keys_arrive() {
    let issuer = start_issuer().await;
    issuer.set_available(false);
    let echo = EchoServer::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let config = Config::from_toml_str(&config_with_issuer(
        echo.addr(),
        issuer.issuer_url(),
        "",
        ROUTES,
    ))
    .unwrap();
    let gateway = Gateway::start(config).await.unwrap();
    let c = client();
    let url = |p: &str| format!("http://{}{p}", gateway.listen_addr());
    let token = issuer.token_for_user("alice");
    let protected = || {
        Request::get(url("/api/orders"))
            .header("authorization", format!("Bearer {token}"))
            .body(body::empty())
            .unwrap()
    };

    assert_eq!(readyz(&gateway).await, 503);
    let r = send(&c, protected()).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    let public = send(
        &c,
        Request::get(url("/public/x")).body(body::empty()).unwrap(),
    )
    .await;
    assert_eq!(public.status, 200, "public routes work without keys");
    assert_eq!(echo.requests(), 1);

    issuer.set_available(true);
    wait_ready(&gateway).await;
    assert_eq!(send(&c, protected()).await.status, 200);
}

#[tokio::test]
async fn an_issuer_outage_mid_run_keeps_the_last_good_keys() {
    let h = Harness::configured("jwks_refetch_cooldown = \"1ms\"", ROUTES).await;
    let token = h.token("alice");
    assert_eq!(h.get_with("/api/orders", &token).await.status, 200);
    h.issuer.set_available(false);
    // An unknown kid forces a fetch, which fails: the keys in force must stay.
    let claims = h.issuer.claims_for_user("bob");
    let stranger = h
        .issuer
        .sign_with_header(&json!({"alg": "RS256", "kid": "stranger"}), &claims);
    assert_eq!(h.get_with("/api/orders", &stranger).await.status, 401);
    assert_eq!(h.get_with("/api/orders", &h.token("bob")).await.status, 200);
    assert_eq!(h.get_with("/api/orders", &token).await.status, 200);
    assert_eq!(
        readyz(&h.gateway).await,
        200,
        "an outage after the first fetch is not unreadiness"
    );
}

/// A metadata endpoint that names another issuer, or keys on another host.
async fn lying_metadata(issuer_field: &str, jwks_uri: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/oauth2/lies", listener.local_addr().unwrap());
    let doc = json!({
        "issuer": issuer_field.replace("{base}", &base),
        "jwks_uri": jwks_uri.replace("{base}", &base),
    })
    .to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let doc = doc.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{doc}",
                    doc.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    base
}

#[tokio::test]
async fn discovery_that_names_another_issuer_or_host_is_refused() {
    let real = start_issuer().await;
    let cases = [
        (
            "{base}/",
            "{base}/v1/keys".to_owned(),
            "is not the configured issuer",
        ),
        (
            "https://evil.example/oauth2/lies",
            "{base}/v1/keys".to_owned(),
            "is not the configured issuer",
        ),
        (
            "{base}",
            format!("{}/v1/keys", real.issuer_url()),
            "is not on the issuer's host",
        ),
    ];
    for (issuer_field, jwks, why) in cases {
        let base = lying_metadata(issuer_field, &jwks).await;
        let echo = EchoServer::start(([127, 0, 0, 1], 0).into()).await.unwrap();
        let config =
            Config::from_toml_str(&config_with_issuer(echo.addr(), &base, "", ROUTES)).unwrap();
        let client = jwtgate::proxy::client(ConnectTimeouts::default()).unwrap();
        let keys = KeyCache::new(config.okta.as_ref().unwrap(), client);
        let err = keys.fetch().await.unwrap_err();
        assert!(err.reason.contains(why), "{issuer_field} / {jwks}: {err}");
        assert!(keys.current().is_none());
        // The gateway built on it never becomes ready: once its own fetch has failed, it
        // still answers 503 (no keys, no traffic to protected routes).
        let gateway = Gateway::start(config).await.unwrap();
        let metrics = gateway.control().metrics().clone();
        let failed = || {
            metrics
                .key_fetches
                .get_or_create(&jwtgate::metrics::ResultLabel { result: "failure" })
                .get()
        };
        for _ in 0..500 {
            if failed() > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(failed() > 0, "the gateway never tried to fetch keys");
        assert_eq!(readyz(&gateway).await, 503);
    }
    assert_eq!(
        real.key_requests(),
        0,
        "keys were fetched from another host"
    );
}

#[tokio::test]
async fn an_explicit_jwks_uri_is_used_without_discovery() {
    let issuer = start_issuer().await;
    let echo = EchoServer::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    // Nothing listens at this issuer URL, so discovery cannot succeed: only the explicit JWKS
    // URL can provide keys.
    let unreachable_issuer = "http://127.0.0.1:1/oauth2/elsewhere";
    let okta_extra = format!("jwks_uri = \"{}/v1/keys\"", issuer.issuer_url());
    let text = config_with_issuer(echo.addr(), unreachable_issuer, &okta_extra, ROUTES);
    let gateway = Gateway::start(Config::from_toml_str(&text).unwrap())
        .await
        .unwrap();
    wait_ready(&gateway).await;
    let mut claims = issuer.claims_for_user("alice");
    claims["iss"] = json!(unreachable_issuer);
    let r = send(
        &client(),
        Request::get(format!("http://{}/api/orders", gateway.listen_addr()))
            .header("authorization", format!("Bearer {}", issuer.sign(&claims)))
            .body(body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(issuer.key_requests() >= 1);
}
