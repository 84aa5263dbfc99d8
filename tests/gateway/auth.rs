//! Token enforcement over real sockets: each refusal with its status and header, the grants of
//! the local issuer, and one credential location only.

use http::Request;
use jwtgate::auth::validate::unix_now;
use jwtgate::body;
use serde_json::json;

use crate::support::{Harness, Reply, client, send};

fn assert_invalid_token(r: &Reply, description: &str) {
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert_eq!(
        r.headers["www-authenticate"],
        format!(
            r#"Bearer realm="jwtgate", error="invalid_token", error_description="{description}""#
        )
    );
    assert_eq!(r.json()["error"], "invalid_token");
    assert_eq!(r.json()["error_description"], description);
}

#[tokio::test]
async fn a_missing_token_gets_401_with_the_realm_only() {
    let h = Harness::start().await;
    for req in [
        Request::get("/api/orders").body(body::empty()).unwrap(),
        Request::get("/api/orders")
            .header("authorization", "Basic YWxpY2U6cHc=")
            .body(body::empty())
            .unwrap(),
    ] {
        let r = h.send(req).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.headers["www-authenticate"], r#"Bearer realm="jwtgate""#);
        assert_eq!(r.json()["error"], "unauthorized");
    }
    assert_eq!(h.echo.requests(), 0);
}

#[tokio::test]
async fn each_invalid_token_reason_is_refused_with_its_description() {
    let h = Harness::configured("max_token_bytes = 2048", crate::support::ROUTES).await;
    let iss = &h.issuer;
    let now = unix_now();
    let base = iss.claims_for_user("alice");
    let with = |changes: serde_json::Value| {
        let mut c = base.clone();
        for (k, v) in changes.as_object().unwrap() {
            c[k] = v.clone();
        }
        iss.sign(&c)
    };
    let genuine = iss.sign(&base);
    let (input, _) = genuine.rsplit_once('.').unwrap();
    let cases = [
        ("not-a-jwt".to_owned(), "malformed token"),
        (format!("{input}.c2lnbmF0dXJl"), "invalid signature"),
        (
            with(json!({"exp": now - 120, "iat": now - 4000})),
            "token expired",
        ),
        (with(json!({"nbf": now + 3600})), "token not yet valid"),
        (
            with(json!({"iat": now + 3600, "exp": now + 7200})),
            "token not yet valid",
        ),
        (
            with(json!({"iss": "https://evil.example/oauth2/test"})),
            "wrong issuer",
        ),
        (with(json!({"aud": "api://other"})), "wrong audience"),
        (
            with(json!({"exp": now + 90_000})),
            "token lifetime too long",
        ),
        (
            with(json!({"padding": "x".repeat(3000)})),
            "token too large",
        ),
        (with(json!({"nonce": "abc"})), "not an access token"),
        (
            iss.sign_with_header(&json!({"alg": "RS256", "kid": "unknown-kid"}), &base),
            "unknown signing key",
        ),
        (
            iss.sign_with_header(
                &json!({"alg": "RS256", "kid": iss.current_kid(), "crit": ["exp"]}),
                &base,
            ),
            "token header not accepted",
        ),
        (
            iss.sign_with_header(&json!({"alg": "RS512", "kid": iss.current_kid()}), &base),
            "signing algorithm not accepted",
        ),
    ];
    for (token, description) in cases {
        let r = h.get_with("/api/orders", &token).await;
        assert_invalid_token(&r, description);
    }
    assert_eq!(h.echo.requests(), 0, "a refused token reached the upstream");
}

#[tokio::test]
async fn the_client_id_allow_list_is_enforced() {
    let h = Harness::configured("client_ids = [\"another-client\"]", crate::support::ROUTES).await;
    let r = h.get_with("/api/orders", &h.token("alice")).await;
    assert_invalid_token(&r, "client not allowed");
}

#[tokio::test]
async fn two_credentials_or_a_token_in_the_query_are_a_400() {
    let h = Harness::start().await;
    let token = h.token("alice");
    let two = h
        .send(
            Request::get("/api/orders")
                .header("authorization", format!("Bearer {token}"))
                .header("authorization", format!("Bearer {token}"))
                .body(body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(two.status, 400);
    assert_eq!(two.json()["error"], "invalid_request");
    let query = h
        .get_with(&format!("/api/orders?access_token={token}"), &token)
        .await;
    assert_eq!(query.status, 400);
    let only_query = h.get(&format!("/api/orders?access_token={token}")).await;
    assert_eq!(only_query.status, 400);
    assert_eq!(h.echo.requests(), 0);
}

#[tokio::test]
async fn tokens_from_both_grants_of_the_local_issuer_are_accepted() {
    let h = Harness::start().await;
    let c = client();
    let grant = |form: &str| {
        Request::post(h.issuer.token_url())
            .header("content-type", "application/x-www-form-urlencoded")
            .header("authorization", "Basic dGVzdC1jbGllbnQ6dGVzdC1zZWNyZXQ=")
            .body(body::full(form.to_owned()))
            .unwrap()
    };
    for (form, route) in [
        (
            "grant_type=password&username=alice&password=alice-password&scope=orders%3Aread",
            "/api/orders",
        ),
        // A machine token has no user and no groups; it reaches a scope-protected route.
        (
            "grant_type=client_credentials&scope=orders%3Aread",
            "/api/machine",
        ),
    ] {
        let reply = send(&c, grant(form)).await;
        assert_eq!(reply.status, 200, "{form}: {:?}", reply.body);
        let doc = reply.json();
        assert_eq!(doc["token_type"], "Bearer");
        let token = doc["access_token"].as_str().unwrap();
        let r = h.get_with(route, token).await;
        assert_eq!(r.status, 200, "{form}");
    }
    let wrong = send(
        &c,
        grant("grant_type=password&username=alice&password=nope"),
    )
    .await;
    assert_eq!(wrong.status, 400);
    assert_eq!(wrong.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn public_routes_ignore_tokens_good_or_bad() {
    let h = Harness::start().await;
    for token in ["garbage", "a.b.c"] {
        assert_eq!(h.get_with("/public/x", token).await.status, 200);
    }
}

#[tokio::test]
async fn a_caller_outside_the_routes_groups_gets_403() {
    let h = Harness::start().await;
    for (user, path, status) in [
        ("alice", "/api/orders", 200),
        ("alice", "/api/admin", 403),
        ("bob", "/api/admin", 200),
        ("nobody", "/api/orders", 403),
        ("nobody", "/api/any", 200),
    ] {
        let r = h.get_with(path, &h.token(user)).await;
        assert_eq!(r.status, status, "{user} {path}");
        if status == 403 {
            assert_eq!(
                r.headers["www-authenticate"],
                r#"Bearer realm="jwtgate", error="insufficient_scope""#
            );
            assert_eq!(r.json()["error"], "insufficient_scope");
        }
    }
    assert_eq!(h.echo.requests(), 3);
}

#[tokio::test]
async fn a_token_missing_a_required_scope_gets_403_naming_it() {
    let h = Harness::start().await;
    let mut claims = h.issuer.claims_for_user("alice");
    claims["scp"] = json!(["openid"]);
    let r = h.get_with("/api/machine", &h.issuer.sign(&claims)).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.headers["www-authenticate"],
        r#"Bearer realm="jwtgate", error="insufficient_scope", scope="orders:read""#
    );
    claims["scp"] = json!(["openid", "orders:read"]);
    assert_eq!(
        h.get_with("/api/machine", &h.issuer.sign(&claims))
            .await
            .status,
        200
    );
}
