//! Table tests of the pure decision, with keys and signatures from the real local issuer.

use std::time::Duration;

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::*;
use crate::auth::jwks::parse_jwks;
use crate::issuer::{Client, Issuer, IssuerConfig, User};

const NOW: u64 = 1_800_000_000;
const LEEWAY: u64 = 30;

async fn issuer() -> Issuer {
    Issuer::start(
        ([127, 0, 0, 1], 0).into(),
        IssuerConfig {
            auth_server_id: "test".into(),
            audience: "api://test".into(),
            token_lifetime: Duration::from_secs(3600),
            users: vec![User {
                name: "alice".into(),
                password: "pw".into(),
                groups: vec!["readers".into()],
            }],
            clients: vec![Client {
                id: "client-1".into(),
                secret: "s".into(),
                scopes: vec!["orders:read".into()],
            }],
        },
    )
    .await
    .unwrap()
}

fn policy(issuer: &Issuer) -> Policy {
    Policy {
        issuer: issuer.issuer_url().to_owned(),
        audiences: vec!["api://test".into()],
        algorithms: vec![Algorithm::RS256],
        leeway: LEEWAY,
        client_ids: None,
        groups_claim: "groups".into(),
        scopes_claim: "scp".into(),
        forwarded_claims: vec![],
    }
}

fn keys(issuer: &Issuer) -> KeySet {
    let bytes = serde_json::to_vec(&issuer.jwks()).unwrap();
    KeySet {
        keys: parse_jwks(&bytes, &[Algorithm::RS256]).unwrap(),
        generation: 1,
    }
}

/// Okta-shaped claims, issued at NOW.
fn claims(issuer: &Issuer) -> Value {
    json!({
        "ver": 1, "jti": "AT.x", "iss": issuer.issuer_url(), "aud": "api://test",
        "iat": NOW, "exp": NOW + 3600, "cid": "client-1", "uid": "00u1",
        "scp": ["orders:read", "openid"], "sub": "alice", "groups": ["readers", "admins"],
    })
}

fn check(issuer: &Issuer, token: &str, policy: &Policy, now: u64) -> Result<Identity, Reason> {
    let parsed = parse(token, policy)?;
    verify(&parsed, &keys(issuer), policy, now)
}

fn with(mut base: Value, changes: &Value) -> Value {
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

fn b64(v: &str) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

#[tokio::test]
async fn a_forwarded_claim_that_cannot_be_a_header_value_is_left_out() {
    let iss = issuer().await;
    let mut p = policy(&iss);
    p.forwarded_claims = vec!["dept".into(), "note".into(), "nested".into()];
    let token = iss.sign(&with(
        claims(&iss),
        &json!({"dept": ["sales", 7, true], "note": "a\r\nX-Injected: 1", "nested": {"a": 1}}),
    ));
    let id = check(&iss, &token, &p, NOW).unwrap();
    assert_eq!(id.claims["dept"], "sales,7,true");
    assert!(!id.claims.contains_key("note"), "{:?}", id.claims);
    assert!(!id.claims.contains_key("nested"), "{:?}", id.claims);
}

#[tokio::test]
async fn an_okta_token_yields_its_identity() {
    let iss = issuer().await;
    let mut p = policy(&iss);
    p.forwarded_claims = vec!["sub".into(), "groups".into(), "absent".into()];
    let id = check(&iss, &iss.sign(&claims(&iss)), &p, NOW).unwrap();
    assert_eq!(id.sub, "alice");
    assert_eq!(id.uid.as_deref(), Some("00u1"));
    assert_eq!(id.cid.as_deref(), Some("client-1"));
    assert_eq!(id.groups, ["readers", "admins"]);
    assert_eq!(id.scopes, ["orders:read", "openid"]);
    assert_eq!(id.exp, NOW + 3600);
    // Only the forwarded claims are kept (cached identities stay small).
    assert_eq!(id.claims["sub"], "alice");
    assert_eq!(id.claims["groups"], "readers,admins");
    assert_eq!(id.claims.len(), 2, "{:?}", id.claims);
}

#[tokio::test]
async fn a_space_separated_scope_string_is_split() {
    let iss = issuer().await;
    let mut p = policy(&iss);
    p.scopes_claim = "scope".into();
    let t = iss.sign(&with(claims(&iss), &json!({"scope": "a b  c"})));
    assert_eq!(check(&iss, &t, &p, NOW).unwrap().scopes, ["a", "b", "c"]);
}

#[tokio::test]
async fn alg_none_in_every_spelling_is_refused() {
    let iss = issuer().await;
    let p = policy(&iss);
    let kid = iss.current_kid();
    let payload = b64(&claims(&iss).to_string());
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = b64(&json!({"alg": alg, "kid": kid}).to_string());
        // Unsigned, as RFC 7519 §6.1 writes it: an empty signature.
        assert_eq!(
            check(&iss, &format!("{header}.{payload}."), &p, NOW),
            Err(Reason::Malformed),
            "{alg} unsigned"
        );
        // With a signature segment copied from a genuine token.
        let genuine = iss.sign(&claims(&iss));
        let sig = genuine.rsplit('.').next().unwrap();
        assert_eq!(
            check(&iss, &format!("{header}.{payload}.{sig}"), &p, NOW),
            Err(Reason::Algorithm),
            "{alg} with a signature"
        );
    }
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    let iss = issuer().await;
    let p = policy(&iss);
    let jwk = &iss.jwks()["keys"][0];
    let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
    // Every form of "the public key" an HMAC confusion attack might use as the secret.
    for secret in [
        n,
        jwk.to_string().into_bytes(),
        iss.jwks().to_string().into_bytes(),
    ] {
        for alg in ["HS256", "HS384", "HS512"] {
            let header = b64(&json!({"alg": alg, "kid": iss.current_kid()}).to_string());
            let payload = b64(&claims(&iss).to_string());
            let input = format!("{header}.{payload}");
            let key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
            let sig = URL_SAFE_NO_PAD.encode(hmac::sign(&key, input.as_bytes()));
            assert_eq!(
                check(&iss, &format!("{input}.{sig}"), &p, NOW),
                Err(Reason::Algorithm),
                "{alg}"
            );
        }
    }
}

#[tokio::test]
async fn an_algorithm_other_than_the_keys_own_is_refused() {
    let iss = issuer().await;
    let mut p = policy(&iss);
    p.algorithms = vec![Algorithm::RS256, Algorithm::PS256];
    // The issuer's key says alg RS256; a token claiming PS256 under that kid is refused before
    // any signature check.
    let t = iss.sign_with_header(
        &json!({"alg": "PS256", "kid": iss.current_kid()}),
        &claims(&iss),
    );
    assert_eq!(check(&iss, &t, &p, NOW), Err(Reason::Algorithm));
    let rs384 = iss.sign_with_header(
        &json!({"alg": "RS384", "kid": iss.current_kid()}),
        &claims(&iss),
    );
    assert_eq!(
        check(&iss, &rs384, &policy(&iss), NOW),
        Err(Reason::Algorithm)
    );
}

#[tokio::test]
async fn headers_that_name_other_keys_or_change_the_reading_are_refused() {
    let iss = issuer().await;
    let p = policy(&iss);
    let kid = iss.current_kid();
    let cases = [
        json!({"alg": "RS256", "kid": kid, "jku": "http://127.0.0.1:1/keys"}),
        json!({"alg": "RS256", "kid": kid, "x5u": "http://127.0.0.1:1/cert"}),
        json!({"alg": "RS256", "kid": kid, "jwk": iss.jwks()["keys"][0]}),
        json!({"alg": "RS256", "kid": kid, "x5c": ["MIIB"]}),
        json!({"alg": "RS256", "kid": kid, "crit": ["exp"]}),
        json!({"alg": "RS256", "kid": kid, "cty": "JWT"}),
        json!({"alg": "RS256", "kid": kid, "zip": "DEF"}),
        json!({"alg": "RS256", "kid": kid, "enc": "A256GCM"}),
        json!({"alg": "RS256", "kid": kid, "b64": false}),
        json!({"alg": "RS256", "kid": kid, "x5t": "abc"}),
    ];
    for header in cases {
        let t = iss.sign_with_header(&header, &claims(&iss));
        assert_eq!(
            check(&iss, &t, &p, NOW),
            Err(Reason::ForbiddenHeader),
            "{header}"
        );
    }
}

#[tokio::test]
async fn forged_or_odd_kids_never_choose_a_key() {
    let iss = issuer().await;
    let p = policy(&iss);
    let cases = [
        (
            json!({"alg": "RS256", "kid": "not-a-key"}),
            Reason::UnknownKey,
        ),
        (json!({"alg": "RS256"}), Reason::Malformed),
        (json!({"alg": "RS256", "kid": ""}), Reason::Malformed),
        (
            json!({"alg": "RS256", "kid": "../../keys"}),
            Reason::Malformed,
        ),
        (json!({"alg": "RS256", "kid": "a b"}), Reason::Malformed),
        (
            json!({"alg": "RS256", "kid": "k".repeat(129)}),
            Reason::Malformed,
        ),
        (json!({"alg": "RS256", "kid": 7}), Reason::Malformed),
        (
            json!({"alg": "RS256", "kid": iss.current_kid(), "typ": "JWE"}),
            Reason::Malformed,
        ),
    ];
    for (header, want) in cases {
        let t = iss.sign_with_header(&header, &claims(&iss));
        assert_eq!(check(&iss, &t, &p, NOW), Err(want), "{header}");
    }
}

#[tokio::test]
async fn a_changed_payload_or_a_foreign_signature_fails_verification() {
    let iss = issuer().await;
    let p = policy(&iss);
    let genuine = iss.sign(&claims(&iss));
    let (input, sig) = genuine.rsplit_once('.').unwrap();
    let (header, _) = input.split_once('.').unwrap();
    let admin = b64(&with(claims(&iss), &json!({"groups": ["admins", "root"]})).to_string());
    assert_eq!(
        check(&iss, &format!("{header}.{admin}.{sig}"), &p, NOW),
        Err(Reason::BadSignature)
    );
    // An attacker's own key, announcing the issuer's kid.
    let attacker = issuer().await;
    let forged = attacker.sign_with_header(
        &json!({"alg": "RS256", "kid": iss.current_kid()}),
        &claims(&iss),
    );
    assert_eq!(check(&iss, &forged, &p, NOW), Err(Reason::BadSignature));
    // A truncated or empty-looking signature.
    assert_eq!(
        check(&iss, &format!("{input}.AAAA"), &p, NOW),
        Err(Reason::BadSignature)
    );
}

#[tokio::test]
async fn shapes_other_than_a_compact_jws_are_malformed() {
    let iss = issuer().await;
    let p = policy(&iss);
    let genuine = iss.sign(&claims(&iss));
    let cases = [
        String::new(),
        "a.b".into(),
        "a.b.c.d.e".into(),
        format!("{genuine}."),
        format!("{genuine}=="),
        format!(".{genuine}"),
        genuine.replacen('.', "..", 1),
        format!("{}.e30.sig", b64("not json")),
        format!("{}.e30.sig", b64("[1,2]")),
    ];
    for t in cases {
        assert_eq!(
            check(&iss, &t, &p, NOW).map(|_| ()),
            Err(Reason::Malformed),
            "{t:?}"
        );
    }
}

#[tokio::test]
async fn duplicate_json_keys_are_refused_in_header_and_payload() {
    let iss = issuer().await;
    let p = policy(&iss);
    let kid = iss.current_kid();
    let dup_header = format!(r#"{{"alg":"RS256","kid":"{kid}","alg":"HS256"}}"#);
    let t = iss.sign_raw_json(&dup_header, &claims(&iss).to_string());
    assert_eq!(check(&iss, &t, &p, NOW), Err(Reason::Malformed));
    let body = claims(&iss).to_string();
    let dup_payload = body.replacen('{', r#"{"sub":"mallory","#, 1);
    let t = iss.sign_raw_json(
        &json!({"alg": "RS256", "kid": kid}).to_string(),
        &dup_payload,
    );
    assert_eq!(check(&iss, &t, &p, NOW), Err(Reason::Malformed));
}

#[tokio::test]
async fn issuer_and_audience_are_matched_exactly() {
    let iss = issuer().await;
    let p = policy(&iss);
    let url = iss.issuer_url().to_owned();
    let cases = [
        (json!({"iss": format!("{url}/")}), Err(Reason::Issuer)),
        (json!({"iss": url.to_uppercase()}), Err(Reason::Issuer)),
        (
            json!({"iss": "https://evil.example/oauth2/test"}),
            Err(Reason::Issuer),
        ),
        (
            json!({"iss": ["https://evil", url]}),
            Err(Reason::Malformed),
        ),
        (json!({"iss": null}), Err(Reason::MissingClaim)),
        (json!({"aud": "api://other"}), Err(Reason::Audience)),
        (json!({"aud": "client-1"}), Err(Reason::Audience)),
        (json!({"aud": ["api://other", "api://test"]}), Ok(())),
        (json!({"aud": []}), Err(Reason::Audience)),
        (json!({"aud": 5}), Err(Reason::Malformed)),
        (json!({"aud": null}), Err(Reason::MissingClaim)),
    ];
    for (change, want) in cases {
        let t = iss.sign(&with(claims(&iss), &change));
        assert_eq!(check(&iss, &t, &p, NOW).map(|_| ()), want, "{change}");
    }
}

#[tokio::test]
async fn time_claims_are_checked_at_the_leeway_boundaries() {
    let iss = issuer().await;
    let p = policy(&iss);
    let t = |change: Value| iss.sign(&with(claims(&iss), &change));
    let exp = NOW + 3600;
    // exp: accepted up to exp + leeway - 1, refused from exp + leeway.
    assert!(check(&iss, &t(json!({})), &p, exp + LEEWAY - 1).is_ok());
    assert_eq!(
        check(&iss, &t(json!({})), &p, exp + LEEWAY).map(|_| ()),
        Err(Reason::Expired)
    );
    // nbf and iat: accepted up to now + leeway, refused beyond.
    for claim in ["nbf", "iat"] {
        let at = |v: u64| t(json!({ claim: v, "exp": v + 600 }));
        assert!(
            check(&iss, &at(NOW + LEEWAY), &p, NOW).is_ok(),
            "{claim} at the edge"
        );
        assert_eq!(
            check(&iss, &at(NOW + LEEWAY + 1), &p, NOW).map(|_| ()),
            Err(Reason::NotYetValid),
            "{claim} beyond"
        );
    }
    let cases = [
        (json!({"exp": null}), Reason::MissingClaim),
        (json!({"iat": null}), Reason::MissingClaim),
        (json!({"exp": (NOW + 60) as f64 + 0.5}), Reason::Malformed),
        (json!({"exp": "1900000000"}), Reason::Malformed),
        (json!({"exp": -1}), Reason::Malformed),
        (
            json!({"iat": NOW - 10, "exp": NOW - 10 + 86_401}),
            Reason::LifetimeTooLong,
        ),
        (json!({"iat": NOW, "exp": NOW}), Reason::Malformed),
    ];
    for (change, want) in cases {
        assert_eq!(
            check(&iss, &t(change.clone()), &p, NOW).map(|_| ()),
            Err(want),
            "{change}"
        );
    }
}

#[tokio::test]
async fn required_claims_and_token_kinds_are_enforced() {
    let iss = issuer().await;
    let mut p = policy(&iss);
    let t = |change: Value| iss.sign(&with(claims(&iss), &change));
    let cases = [
        (json!({"sub": null}), Reason::MissingClaim),
        (json!({"sub": ""}), Reason::MissingClaim),
        (json!({"sub": 42}), Reason::Malformed),
        (json!({"nonce": "n-0S6_WzA2Mj"}), Reason::NotAccessToken),
        (
            json!({"at_hash": "77QmUPtjPfzWtF2AnpK9RQ"}),
            Reason::NotAccessToken,
        ),
        (json!({"groups": "admins"}), Reason::Malformed),
        (json!({"groups": ["a", 1]}), Reason::Malformed),
        (json!({"scp": 3}), Reason::Malformed),
    ];
    for (change, want) in cases {
        assert_eq!(
            check(&iss, &t(change.clone()), &p, NOW).map(|_| ()),
            Err(want),
            "{change}"
        );
    }
    p.client_ids = Some(vec!["client-1".into()]);
    assert!(check(&iss, &t(json!({})), &p, NOW).is_ok());
    assert_eq!(
        check(&iss, &t(json!({"cid": "client-2"})), &p, NOW).map(|_| ()),
        Err(Reason::ClientNotAllowed)
    );
    assert_eq!(
        check(&iss, &t(json!({"cid": null})), &p, NOW).map(|_| ()),
        Err(Reason::MissingClaim)
    );
}
