//! RFC 8725 and OKTA.md attacks, end to end: each one is refused with 401, nothing reaches the
//! upstream, and no URL taken from a token is ever contacted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use tokio::net::TcpListener;

use crate::support::{Harness, h2_over, reply, start_issuer};

/// A server that only counts the connections it receives.
async fn attacker_server() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    (url, hits)
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn alg_none_tokens_are_refused() {
    let h = Harness::start().await;
    let claims = b64(&h.issuer.claims_for_user("bob").to_string());
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = b64(&json!({"alg": alg, "kid": h.issuer.current_kid()}).to_string());
        for token in [
            format!("{header}.{claims}."),
            format!("{header}.{claims}.e30"),
        ] {
            assert_eq!(h.get_with("/api/orders", &token).await.status, 401, "{alg}");
        }
    }
    assert_eq!(h.echo.requests(), 0);
}

#[tokio::test]
async fn hs256_signed_with_the_published_key_is_refused() {
    let h = Harness::start().await;
    let jwks = h.issuer.jwks();
    let header = b64(&json!({"alg": "HS256", "kid": h.issuer.current_kid()}).to_string());
    let claims = b64(&h.issuer.claims_for_user("bob").to_string());
    let input = format!("{header}.{claims}");
    for secret in [
        jwks.to_string(),
        jwks["keys"][0].to_string(),
        jwks["keys"][0]["n"].to_string(),
    ] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(hmac::sign(&key, input.as_bytes()));
        assert_eq!(
            h.get_with("/api/orders", &format!("{input}.{sig}"))
                .await
                .status,
            401
        );
    }
    assert_eq!(h.echo.requests(), 0);
}

#[tokio::test]
async fn key_urls_and_embedded_keys_in_the_header_are_never_used() {
    let h = Harness::start().await;
    let attacker = start_issuer().await;
    let (attacker_url, hits) = attacker_server().await;
    let claims = h.issuer.claims_for_user("bob");
    let attacker_jwk = attacker.jwks()["keys"][0].clone();
    let headers = [
        json!({"alg": "RS256", "kid": attacker.current_kid(), "jku": format!("{attacker_url}/keys")}),
        json!({"alg": "RS256", "kid": h.issuer.current_kid(), "jku": format!("{attacker_url}/keys")}),
        json!({"alg": "RS256", "kid": attacker.current_kid(), "x5u": format!("{attacker_url}/cert.pem")}),
        json!({"alg": "RS256", "kid": attacker.current_kid(), "jwk": attacker_jwk}),
        json!({"alg": "RS256", "jwk": attacker_jwk}),
        json!({"alg": "RS256", "kid": attacker.current_kid(), "x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A"]}),
    ];
    for header in headers {
        // Signed with the attacker's own key, which the header points at.
        let token = attacker.sign_with_header(&header, &claims);
        assert_eq!(
            h.get_with("/api/orders", &token).await.status,
            401,
            "{header}"
        );
    }
    // A forged kid signed by the attacker: refused, and the gateway only asks its own issuer.
    let forged = attacker.sign(&claims);
    assert_eq!(h.get_with("/api/orders", &forged).await.status, 401);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the gateway contacted a URL from a token"
    );
    assert_eq!(
        attacker.key_requests(),
        0,
        "the gateway fetched the attacker's keys"
    );
    assert_eq!(h.echo.requests(), 0);
}

#[tokio::test]
async fn an_id_token_of_the_same_issuer_is_refused() {
    let h = Harness::start().await;
    let mut claims = h.issuer.claims_for_user("bob");
    // An ID token: audience is the client, and it carries ID-token claims.
    claims["aud"] = json!("test-client");
    claims["nonce"] = json!("n-0S6_WzA2Mj");
    assert_eq!(
        h.get_with("/api/orders", &h.issuer.sign(&claims))
            .await
            .status,
        401
    );
    claims["aud"] = json!("api://test");
    assert_eq!(
        h.get_with("/api/orders", &h.issuer.sign(&claims))
            .await
            .status,
        401
    );
    assert_eq!(h.echo.requests(), 0);
}

#[tokio::test]
async fn a_token_from_another_authorization_server_is_refused() {
    let h = Harness::start().await;
    let other = start_issuer().await;
    // Same audience, same claims shape, a different issuer and key: the org authorization
    // server or another tenant.
    let token = other.token_for_user("bob");
    assert_eq!(h.get_with("/api/orders", &token).await.status, 401);
    let mut claims = other.claims_for_user("bob");
    claims["iss"] = json!(h.issuer.issuer_url());
    assert_eq!(
        h.get_with("/api/orders", &other.sign(&claims)).await.status,
        401
    );
    assert_eq!(h.echo.requests(), 0);
}

/// A token of three well-formed parts, `payload` bytes in the middle one.
fn oversized(payload: usize) -> String {
    format!(
        "{}.{}.{}",
        "a".repeat(6000),
        "b".repeat(payload),
        "c".repeat(100)
    )
}

#[tokio::test]
async fn an_oversized_token_is_refused_before_any_parsing() {
    let h = Harness::start().await;
    let r = h.get_with("/api/orders", &oversized(3000)).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error_description"], "token too large");
}

/// Over h2 too, where a header list may be as large as an HTTP/1 head (64 KiB): a 20 KiB token
/// reaches the token check and is refused there as too large, not served.
#[tokio::test]
async fn an_oversized_token_over_h2_is_refused_before_any_parsing() {
    let h = Harness::start().await;
    let tcp = tokio::net::TcpStream::connect(h.gateway.listen_addr())
        .await
        .unwrap();
    let (mut send, _conn) = h2_over(tcp).await;
    let mut get = async |token: &str| {
        let request = http::Request::get("http://gw/api/orders")
            .header("authorization", format!("Bearer {token}"))
            .body(jwtgate::body::empty())
            .unwrap();
        reply(send.send_request(request).await.unwrap()).await
    };
    assert_eq!(get(&h.token("alice")).await.status, 200);
    let r = get(&oversized(14000)).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error_description"], "token too large");
    assert_eq!(
        h.echo.requests(),
        1,
        "only the valid token's request is forwarded"
    );
}
