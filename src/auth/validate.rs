//! The token decision, as a pure function: header checks, key choice, signature, claims.
//!
//! Nothing here does I/O or reads a clock: the caller passes the key set and `now`, so every
//! case is a table test. jsonwebtoken is used for the signature alone; every claim check is
//! written out here because the crate's `Validation` defaults accept tokens without `iss` or
//! `aud`, ignore `nbf` and future `iat`, and ignore `crit` (OKTA.md §2.3, measured).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_json::Value;

use crate::config::{Algorithm, Okta};

/// Why a token was refused; each has a fixed, client-safe description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not three base64url JSON segments, a duplicate JSON key, a claim of the wrong type.
    Malformed,
    /// Longer than `max_token_bytes`.
    TooLarge,
    /// A header that names other keys or changes how the token is read (`jku`, `x5u`, `jwk`,
    /// `x5c`, `crit`, `cty`, `zip`, `enc`, `b64`, …).
    ForbiddenHeader,
    /// `alg` outside the allow-list, or different from the key's own.
    Algorithm,
    /// No key with this `kid` (after one refetch allowed by the cooldown).
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// `iss` is not the configured issuer.
    Issuer,
    /// `aud` contains none of the configured audiences.
    Audience,
    /// `exp` is past (beyond the leeway).
    Expired,
    /// `nbf` or `iat` is in the future (beyond the leeway).
    NotYetValid,
    /// `exp - iat` is longer than Okta's longest access-token lifetime (24 h).
    LifetimeTooLong,
    /// `cid` is not in `client_ids`.
    ClientNotAllowed,
    /// A required claim (`iss`, `aud`, `exp`, `iat`, `sub`, `cid` with `client_ids`) is absent.
    MissingClaim,
    /// An ID token (`nonce` or `at_hash`), not an access token.
    NotAccessToken,
}

impl Reason {
    /// Every reason, for tests and metrics.
    pub const ALL: [Reason; 14] = [
        Reason::Malformed,
        Reason::TooLarge,
        Reason::ForbiddenHeader,
        Reason::Algorithm,
        Reason::UnknownKey,
        Reason::BadSignature,
        Reason::Issuer,
        Reason::Audience,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::LifetimeTooLong,
        Reason::ClientNotAllowed,
        Reason::MissingClaim,
        Reason::NotAccessToken,
    ];

    /// The fixed name used in metrics and logs (`token_expired`, …).
    pub fn metric_name(self) -> &'static str {
        match self {
            Reason::Malformed => "token_malformed",
            Reason::TooLarge => "token_too_large",
            Reason::ForbiddenHeader => "token_forbidden_header",
            Reason::Algorithm => "token_algorithm",
            Reason::UnknownKey => "token_unknown_key",
            Reason::BadSignature => "token_bad_signature",
            Reason::Issuer => "token_issuer",
            Reason::Audience => "token_audience",
            Reason::Expired => "token_expired",
            Reason::NotYetValid => "token_not_yet_valid",
            Reason::LifetimeTooLong => "token_lifetime",
            Reason::ClientNotAllowed => "token_client",
            Reason::MissingClaim => "token_missing_claim",
            Reason::NotAccessToken => "token_not_access_token",
        }
    }

    /// The fixed `error_description`.
    pub fn description(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed token",
            Reason::TooLarge => "token too large",
            Reason::ForbiddenHeader => "token header not accepted",
            Reason::Algorithm => "signing algorithm not accepted",
            Reason::UnknownKey => "unknown signing key",
            Reason::BadSignature => "invalid signature",
            Reason::Issuer => "wrong issuer",
            Reason::Audience => "wrong audience",
            Reason::Expired => "token expired",
            Reason::NotYetValid => "token not yet valid",
            Reason::LifetimeTooLong => "token lifetime too long",
            Reason::ClientNotAllowed => "client not allowed",
            Reason::MissingClaim => "required claim missing",
            Reason::NotAccessToken => "not an access token",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// Okta's longest access-token lifetime (OKTA.md §1.5).
const MAX_LIFETIME_SECS: u64 = 24 * 60 * 60;
/// Longest `kid` looked up (OKTA.md §5, rule 6).
const MAX_KID_BYTES: usize = 128;
/// Headers that point at other keys, or change how the token must be read: never honoured.
const FORBIDDEN_HEADERS: &[&str] = &[
    "jku", "x5u", "jwk", "x5c", "x5t", "x5t#S256", "crit", "cty", "zip", "enc", "b64",
];

/// What a token must satisfy, from `[okta]`.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Exact `iss`.
    pub issuer: String,
    /// `aud` must contain one of these.
    pub audiences: Vec<String>,
    /// Accepted `alg` values.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew allowed, in seconds.
    pub leeway: u64,
    /// `cid` allow-list.
    pub client_ids: Option<Vec<String>>,
    /// Claim holding the groups.
    pub groups_claim: String,
    /// Claim holding the scopes.
    pub scopes_claim: String,
    /// Claims kept in [`Identity::claims`]: those `[forward] claims_to_headers` names. The
    /// rest are dropped once checked, so a cached identity holds only what is used (about
    /// 2 KB less per cached token with Okta's usual claims).
    pub forwarded_claims: Vec<String>,
}

impl Policy {
    /// The policy of an `[okta]` table.
    pub fn new(okta: &Okta) -> Policy {
        Policy {
            issuer: okta.issuer.clone(),
            audiences: okta.audiences.clone(),
            algorithms: okta.algorithms.clone(),
            leeway: okta.leeway.as_secs(),
            client_ids: okta.client_ids.clone(),
            forwarded_claims: Vec::new(),
            groups_claim: okta.groups_claim.clone(),
            scopes_claim: okta.scopes_claim.clone(),
        }
    }
}

/// One verification key from the issuer's JWKS.
pub struct Key {
    /// The key's own `alg`, if the JWKS names one.
    pub alg: Option<Algorithm>,
    /// The RSA public key.
    pub decoding: DecodingKey,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// The keys in force, by `kid`; replaced whole on every successful fetch.
#[derive(Debug, Default)]
pub struct KeySet {
    /// Keys by `kid`.
    pub keys: HashMap<String, Key>,
    /// Increases with every fetched set, so caches can tell old results from new.
    pub generation: u64,
}

/// What a verified token says about its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `sub`.
    pub sub: String,
    /// `uid` (Okta user id; absent on machine tokens).
    pub uid: Option<String>,
    /// `cid` (the client that obtained the token).
    pub cid: Option<String>,
    /// The groups claim.
    pub groups: Vec<String>,
    /// The scopes claim (`scp` array or `scope` string).
    pub scopes: Vec<String>,
    /// `exp`, in seconds since the epoch.
    pub exp: u64,
    /// The claims of [`Policy::forwarded_claims`] that are a string, number, boolean or array
    /// of those, as the header value `claims_to_headers` sends (array items joined with `,`).
    pub claims: BTreeMap<String, HeaderValue>,
}

/// A token split and its header checked, not yet verified.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// `alg`, already known to be allowed.
    pub alg: Algorithm,
    /// `kid`.
    pub kid: String,
    /// `header.payload`, the signed bytes.
    signing_input: &'a str,
    payload: &'a str,
    signature: &'a str,
}

/// Splits a compact JWS and checks its header.
///
/// # Errors
///
/// [`Reason::Malformed`], [`Reason::ForbiddenHeader`] or [`Reason::Algorithm`].
pub fn parse<'a>(token: &'a str, policy: &Policy) -> Result<Parsed<'a>, Reason> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        // Also a JWE (five segments) or a JSON-serialised JWS.
        return Err(Reason::Malformed);
    };
    if header.is_empty() || payload.is_empty() || signature.is_empty() {
        // An empty signature is how `alg: none` tokens travel.
        return Err(Reason::Malformed);
    }
    let header_json = strict_object(&decode_segment(header)?)?;
    // Refused here, not left to the signature check: padding or stray characters make the
    // token malformed whatever its signature.
    decode_segment(signature)?;
    if FORBIDDEN_HEADERS
        .iter()
        .any(|h| header_json.contains_key(*h))
    {
        return Err(Reason::ForbiddenHeader);
    }
    if let Some(typ) = header_json.get("typ") {
        let ok = typ
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("JWT") || t.eq_ignore_ascii_case("at+jwt"));
        if !ok {
            return Err(Reason::Malformed);
        }
    }
    let alg_name = header_json
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(Reason::Malformed)?;
    // Exact, case-sensitive: "none", "None", "rs256" and HMAC names all end here.
    let alg = policy
        .algorithms
        .iter()
        .copied()
        .find(|a| a.name() == alg_name)
        .ok_or(Reason::Algorithm)?;
    let kid = header_json
        .get("kid")
        .and_then(Value::as_str)
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_KID_BYTES
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .ok_or(Reason::Malformed)?;
    Ok(Parsed {
        alg,
        kid: kid.to_owned(),
        signing_input: &token[..header.len() + 1 + payload.len()],
        payload,
        signature,
    })
}

/// Verifies a parsed token against `keys` and checks every claim at time `now` (seconds since
/// the epoch).
///
/// # Errors
///
/// The first [`Reason`] that applies, in the order: key, signature, claims.
pub fn verify(
    parsed: &Parsed<'_>,
    keys: &KeySet,
    policy: &Policy,
    now: u64,
) -> Result<Identity, Reason> {
    let key = keys.keys.get(&parsed.kid).ok_or(Reason::UnknownKey)?;
    if key.alg.is_some_and(|a| a != parsed.alg) {
        return Err(Reason::Algorithm);
    }
    let valid = jsonwebtoken::crypto::verify(
        parsed.signature,
        parsed.signing_input.as_bytes(),
        &key.decoding,
        jwt_algorithm(parsed.alg),
    )
    .unwrap_or(false);
    if !valid {
        return Err(Reason::BadSignature);
    }
    let claims = strict_object(&decode_segment(parsed.payload)?)?;
    check_claims(&claims, policy, now)
}

fn check_claims(
    claims: &BTreeMap<String, Value>,
    policy: &Policy,
    now: u64,
) -> Result<Identity, Reason> {
    let string = |name: &str| -> Result<Option<&str>, Reason> {
        match claims.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Reason::Malformed),
        }
    };
    let seconds = |name: &str| -> Result<Option<u64>, Reason> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or(Reason::Malformed),
        }
    };

    let iss = string("iss")?.ok_or(Reason::MissingClaim)?;
    if iss != policy.issuer {
        return Err(Reason::Issuer);
    }
    let aud = match claims.get("aud") {
        None => return Err(Reason::MissingClaim),
        Some(v) => strings(v).ok_or(Reason::Malformed)?,
    };
    if !aud.iter().any(|a| policy.audiences.contains(a)) {
        return Err(Reason::Audience);
    }
    let exp = seconds("exp")?.ok_or(Reason::MissingClaim)?;
    let iat = seconds("iat")?.ok_or(Reason::MissingClaim)?;
    if now >= exp.saturating_add(policy.leeway) {
        return Err(Reason::Expired);
    }
    if iat > now.saturating_add(policy.leeway) {
        return Err(Reason::NotYetValid);
    }
    if let Some(nbf) = seconds("nbf")?
        && nbf > now.saturating_add(policy.leeway)
    {
        return Err(Reason::NotYetValid);
    }
    if exp <= iat {
        return Err(Reason::Malformed);
    }
    if exp - iat > MAX_LIFETIME_SECS {
        return Err(Reason::LifetimeTooLong);
    }
    let sub = string("sub")?
        .filter(|s| !s.is_empty())
        .ok_or(Reason::MissingClaim)?;
    // An ID token of the same issuer is signed with the same keys; the audience check already
    // refuses it, and these claims only ever appear in ID tokens (OKTA.md §1.9).
    if claims.contains_key("nonce") || claims.contains_key("at_hash") {
        return Err(Reason::NotAccessToken);
    }
    let cid = string("cid")?;
    if let Some(allowed) = &policy.client_ids {
        let cid = cid.ok_or(Reason::MissingClaim)?;
        if !allowed.iter().any(|c| c == cid) {
            return Err(Reason::ClientNotAllowed);
        }
    }
    let groups = match claims.get(&policy.groups_claim) {
        None => Vec::new(),
        Some(Value::Array(_)) => strings(&claims[&policy.groups_claim]).ok_or(Reason::Malformed)?,
        Some(_) => return Err(Reason::Malformed),
    };
    let scopes = match claims.get(&policy.scopes_claim) {
        None => Vec::new(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(v) => strings(v).ok_or(Reason::Malformed)?,
    };
    let flat = policy
        .forwarded_claims
        .iter()
        .filter_map(|k| Some((k.clone(), forwarded_value(k, claims.get(k)?)?)))
        .collect();
    Ok(Identity {
        sub: sub.to_owned(),
        uid: string("uid")?.map(str::to_owned),
        cid: cid.map(str::to_owned),
        groups,
        scopes,
        exp,
        claims: flat,
    })
}

/// A string, or an array of strings, as a list.
fn strings(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect(),
        _ => None,
    }
}

/// A scalar or an array of scalars, as text (for headers).
/// The header value a forwarded claim becomes: its scalars joined with `,`. Made once per
/// verified token (the identity is cached with it), not per request. A claim that is no
/// scalar or array of scalars, or whose text cannot be a header value, is not forwarded.
fn forwarded_value(claim: &str, v: &Value) -> Option<HeaderValue> {
    let text = scalars(v)?.join(",");
    match HeaderValue::try_from(text) {
        Ok(value) => Some(value),
        Err(_) => {
            tracing::debug!(%claim, "claim is not a valid header value; not forwarded");
            None
        }
    }
}

fn scalars(v: &Value) -> Option<Vec<String>> {
    let one = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match v {
        Value::Array(items) => items.iter().map(one).collect(),
        v => one(v).map(|s| vec![s]),
    }
}

fn jwt_algorithm(a: Algorithm) -> jsonwebtoken::Algorithm {
    match a {
        Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
        Algorithm::RS384 => jsonwebtoken::Algorithm::RS384,
        Algorithm::RS512 => jsonwebtoken::Algorithm::RS512,
        Algorithm::PS256 => jsonwebtoken::Algorithm::PS256,
        Algorithm::PS384 => jsonwebtoken::Algorithm::PS384,
        Algorithm::PS512 => jsonwebtoken::Algorithm::PS512,
    }
}

/// Base64url without padding, strictly (no `=`, no whitespace, canonical trailing bits).
fn decode_segment(segment: &str) -> Result<Vec<u8>, Reason> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| Reason::Malformed)
}

/// A JSON object whose top-level keys are unique (serde_json would keep the last of two
/// `"alg"`s silently; two readers could then disagree about the token).
fn strict_object(bytes: &[u8]) -> Result<BTreeMap<String, Value>, Reason> {
    struct Unique(BTreeMap<String, Value>);

    impl<'de> Deserialize<'de> for Unique {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Unique;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
                    let mut out = BTreeMap::new();
                    while let Some((k, v)) = map.next_entry::<String, Value>()? {
                        if out.insert(k, v).is_some() {
                            return Err(de::Error::custom("duplicate key"));
                        }
                    }
                    Ok(Unique(out))
                }
            }
            d.deserialize_map(V)
        }
    }

    serde_json::from_slice::<Unique>(bytes)
        .map(|u| u.0)
        .map_err(|_| Reason::Malformed)
}

/// Seconds since the epoch, for callers that use the real clock.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

#[cfg(test)]
mod tests;
