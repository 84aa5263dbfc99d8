//! The issuer's signing keys: discovery, fetch, background refresh, refetch on unknown `kid`.
//!
//! SPEC §4 and OKTA.md §5: the first fetch runs in the background while the gateway serves;
//! a refresh runs every `jwks_refresh`; a token naming an unknown `kid` triggers at most one
//! fetch per `jwks_refetch_cooldown`, shared by every request waiting on it; a failed fetch
//! keeps the last good keys and is retried with backoff; a new set replaces the old one whole.
//! Only RSA signing keys of at least 2048 bits with exponent 65537 are kept. Nothing taken from
//! a token ever becomes a URL: keys come only from the configured issuer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{ACCEPT, HeaderValue, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;

use super::validate::{Key, KeySet};
use crate::body;
use crate::config::{Algorithm, Okta};
use crate::lock;
use crate::metrics::Metrics;
use crate::proxy::HttpClient;

/// Largest JWKS or discovery document read.
const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// Most keys kept from one JWKS (Okta lists two or three).
const MAX_KEYS: usize = 20;
/// Smallest RSA modulus accepted.
const MIN_RSA_BITS: usize = 2048;
/// Deadline for one HTTP exchange with the issuer, body included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// First retry delay after a failed fetch; doubles up to `MAX_BACKOFF`.
const INITIAL_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A fetch that failed; the message names the URL and the cause, never a token.
#[derive(Debug, Clone, thiserror::Error)]
#[error("fetching {uri}: {reason}")]
pub struct FetchError {
    /// What was fetched.
    pub uri: String,
    /// Why it failed.
    pub reason: String,
}

/// The signing keys of one issuer, kept current.
#[derive(Debug)]
pub struct KeyCache {
    issuer: String,
    configured_jwks_uri: Option<Uri>,
    algorithms: Vec<Algorithm>,
    refresh_every: Duration,
    cooldown: Duration,
    client: HttpClient,
    keys: ArcSwapOption<KeySet>,
    discovered_jwks_uri: Mutex<Option<Uri>>,
    /// When the last fetch caused by an unknown `kid` started; the lock is the single flight.
    kid_fetch: tokio::sync::Mutex<Option<Instant>>,
    generation: AtomicU64,
    last_success: Mutex<Option<std::time::Instant>>,
    metrics: Arc<Metrics>,
}

impl KeyCache {
    /// A cache for the issuer of `okta`, fetching through `client`. Nothing is fetched until
    /// [`KeyCache::spawn_refresh`] or [`KeyCache::fetch`].
    pub fn new(okta: &Okta, client: HttpClient) -> Arc<KeyCache> {
        KeyCache::with_metrics(okta, client, Arc::new(Metrics::new()))
    }

    /// Like [`KeyCache::new`], counting fetches in `metrics`.
    pub fn with_metrics(okta: &Okta, client: HttpClient, metrics: Arc<Metrics>) -> Arc<KeyCache> {
        Arc::new(KeyCache {
            issuer: okta.issuer.clone(),
            configured_jwks_uri: okta.jwks_uri.clone(),
            algorithms: okta.algorithms.clone(),
            refresh_every: okta.jwks_refresh,
            cooldown: okta.jwks_refetch_cooldown,
            client,
            keys: ArcSwapOption::empty(),
            discovered_jwks_uri: Mutex::new(None),
            kid_fetch: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            last_success: Mutex::new(None),
            metrics,
        })
    }

    /// Whether this cache serves the same keys `okta` asks for (same issuer, JWKS URL and
    /// algorithms), so a reload can keep it.
    pub fn serves(&self, okta: &Okta) -> bool {
        self.issuer == okta.issuer
            && self.configured_jwks_uri == okta.jwks_uri
            && self.algorithms == okta.algorithms
    }

    /// Time since the last successful fetch, if any.
    pub fn age(&self) -> Option<Duration> {
        lock(&self.last_success).map(|t| t.elapsed())
    }

    /// The keys in force; `None` until a fetch has ever succeeded.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    /// Runs the first fetch (retried with backoff) and then the periodic refresh, until the
    /// returned task is aborted.
    pub fn spawn_refresh(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            let mut backoff = INITIAL_BACKOFF;
            loop {
                let had_keys = cache.current().is_some();
                match cache.fetch().await {
                    Ok(set) => {
                        tracing::info!(issuer = %cache.issuer, keys = set.keys.len(), "signing keys loaded");
                        backoff = INITIAL_BACKOFF;
                        tokio::time::sleep(cache.refresh_every).await;
                    }
                    Err(e) => {
                        tracing::warn!(
                            error = %e,
                            retry_in = ?backoff,
                            keeping_last_good_keys = had_keys,
                            "signing key fetch failed"
                        );
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF).min(cache.refresh_every);
                    }
                }
            }
        })
    }

    /// Called for a token whose `kid` is unknown: fetches again unless a `kid`-triggered fetch
    /// started less than `jwks_refetch_cooldown` ago. Concurrent callers wait for the same fetch.
    /// Returns the keys in force afterwards.
    pub async fn refetch_for(&self, kid: &str) -> Option<Arc<KeySet>> {
        let mut last = self.kid_fetch.lock().await;
        // Someone ahead in the queue may already have fetched the key this caller needs.
        if let Some(keys) = self.current()
            && keys.keys.contains_key(kid)
        {
            return Some(keys);
        }
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < self.cooldown) {
            return self.current();
        }
        *last = Some(now);
        if let Err(e) = self.fetch().await {
            tracing::warn!(error = %e, "signing key refetch for an unknown kid failed");
        }
        self.current()
    }

    /// Fetches the JWKS once (discovering its URL first if needed) and installs it.
    ///
    /// # Errors
    ///
    /// The request, the document or its keys were unusable; the previous keys stay.
    pub async fn fetch(&self) -> Result<Arc<KeySet>, FetchError> {
        let result = self.fetch_inner().await;
        if result.is_err() {
            Metrics::count(&self.metrics.key_fetches, "failure");
        } else {
            *lock(&self.last_success) = Some(std::time::Instant::now());
            Metrics::count(&self.metrics.key_fetches, "success");
        }
        result
    }

    async fn fetch_inner(&self) -> Result<Arc<KeySet>, FetchError> {
        let uri = match self.jwks_uri() {
            Some(uri) => uri,
            None => {
                let uri = self.discover().await?;
                *lock(&self.discovered_jwks_uri) = Some(uri.clone());
                uri
            }
        };
        let fetched = get(&self.client, &uri).await.and_then(|bytes| {
            parse_jwks(&bytes, &self.algorithms).map_err(|reason| FetchError {
                uri: uri.to_string(),
                reason,
            })
        });
        let keys = match fetched {
            Ok(keys) => keys,
            Err(e) => {
                // A discovered URL may have moved: discover again next time.
                *lock(&self.discovered_jwks_uri) = None;
                return Err(e);
            }
        };
        let set = Arc::new(KeySet {
            keys,
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
        });
        self.keys.store(Some(set.clone()));
        Ok(set)
    }

    fn jwks_uri(&self) -> Option<Uri> {
        self.configured_jwks_uri
            .clone()
            .or_else(|| lock(&self.discovered_jwks_uri).clone())
    }

    /// RFC 8414 metadata, then OpenID discovery; the document's `issuer` must be ours exactly
    /// and its `jwks_uri` must be on the issuer's own host (OKTA.md §5, K07).
    async fn discover(&self) -> Result<Uri, FetchError> {
        let base = self.issuer.trim_end_matches('/');
        let mut last_error = None;
        for suffix in [
            "/.well-known/oauth-authorization-server",
            "/.well-known/openid-configuration",
        ] {
            let url = format!("{base}{suffix}");
            let fail = |reason: String| FetchError {
                uri: url.clone(),
                reason,
            };
            let Ok(uri) = url.parse::<Uri>() else {
                return Err(fail("the issuer does not form a valid URL".into()));
            };
            let bytes = match get(&self.client, &uri).await {
                Ok(b) => b,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            #[derive(Deserialize)]
            struct Metadata {
                issuer: String,
                jwks_uri: String,
            }
            let doc: Metadata = serde_json::from_slice(&bytes)
                .map_err(|_| fail("not a metadata document with issuer and jwks_uri".into()))?;
            if doc.issuer != self.issuer {
                return Err(fail(format!(
                    "the document's issuer {:?} is not the configured issuer",
                    doc.issuer
                )));
            }
            let jwks: Uri = doc
                .jwks_uri
                .parse()
                .map_err(|_| fail("jwks_uri is not a URL".into()))?;
            let issuer_uri: Uri = self
                .issuer
                .parse()
                .map_err(|_| fail("the issuer is not a URL".into()))?;
            if jwks.scheme() != issuer_uri.scheme() || jwks.authority() != issuer_uri.authority() {
                return Err(fail(format!("jwks_uri {jwks} is not on the issuer's host")));
            }
            return Ok(jwks);
        }
        Err(last_error.unwrap_or_else(|| FetchError {
            uri: base.to_owned(),
            reason: "no discovery document".into(),
        }))
    }
}

/// GET with a deadline and a size cap; only 200 counts. Redirects are not followed.
async fn get(client: &HttpClient, uri: &Uri) -> Result<Bytes, FetchError> {
    let fail = |reason: String| FetchError {
        uri: uri.to_string(),
        reason,
    };
    let request = Request::get(uri.clone())
        .header(ACCEPT, HeaderValue::from_static("application/json"))
        .header(USER_AGENT, HeaderValue::from_static("jwtgate"))
        .body(body::empty())
        .map_err(|e| fail(e.to_string()))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| fail(format!("request failed: {e}")))?;
        if response.status() != StatusCode::OK {
            return Err(fail(format!("status {}", response.status())));
        }
        Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .map_err(|e| fail(format!("reading the body: {e}")))
    };
    tokio::time::timeout(FETCH_TIMEOUT, exchange)
        .await
        .map_err(|_| fail(format!("no complete answer within {FETCH_TIMEOUT:?}")))?
}

/// Keeps the usable keys of a JWKS document (OKTA.md §5, rule 5): `kty` RSA, `use` absent or
/// `sig`, `alg` absent or allowed, a well-formed `kid` that no other key shares, a modulus of
/// at least 2048 bits and exponent 65537. Anything else is skipped, not fatal.
///
/// # Errors
///
/// The document is not a JWKS, or none of its keys is usable.
pub fn parse_jwks(bytes: &[u8], algorithms: &[Algorithm]) -> Result<HashMap<String, Key>, String> {
    #[derive(Deserialize)]
    struct Jwks {
        keys: Vec<Value>,
    }
    let doc: Jwks = serde_json::from_slice(bytes).map_err(|_| "not a JWKS document".to_owned())?;
    let mut keys: HashMap<String, Key> = HashMap::new();
    let mut seen: HashMap<String, u32> = HashMap::new();
    for jwk in &doc.keys {
        let field = |name: &str| jwk.get(name).and_then(Value::as_str);
        let Some(kid) = field("kid") else { continue };
        *seen.entry(kid.to_owned()).or_default() += 1;
        if field("kty") != Some("RSA") || !matches!(field("use"), None | Some("sig")) {
            continue;
        }
        let alg = match field("alg") {
            None => None,
            Some(name) => match algorithms.iter().find(|a| a.name() == name) {
                Some(a) => Some(*a),
                None => continue,
            },
        };
        let (Some(n), Some(e)) = (
            field("n").and_then(|n| URL_SAFE_NO_PAD.decode(n).ok()),
            field("e").and_then(|e| URL_SAFE_NO_PAD.decode(e).ok()),
        ) else {
            continue;
        };
        let n = strip_leading_zeros(&n);
        if n.is_empty() || modulus_bits(n) < MIN_RSA_BITS || strip_leading_zeros(&e) != [1, 0, 1] {
            continue;
        }
        let kid_ok = kid.len() <= 128
            && kid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !kid_ok || keys.len() >= MAX_KEYS {
            continue;
        }
        keys.insert(
            kid.to_owned(),
            Key {
                alg,
                decoding: DecodingKey::from_rsa_raw_components(n, &[1, 0, 1]),
            },
        );
    }
    // Two keys with one kid: neither can be chosen safely.
    keys.retain(|kid, _| seen.get(kid) == Some(&1));
    if keys.is_empty() {
        return Err("no usable RSA signing key in the JWKS".to_owned());
    }
    Ok(keys)
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

fn modulus_bits(n: &[u8]) -> usize {
    n.len() * 8 - n[0].leading_zeros() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rsa_jwk(kid: &str, bits: usize, e: &[u8]) -> Value {
        // A modulus of exactly `bits` bits: a leading one bit, the rest arbitrary.
        let mut n = vec![0x5au8; bits / 8];
        n[0] = 0x80;
        json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
               "n": URL_SAFE_NO_PAD.encode(&n), "e": URL_SAFE_NO_PAD.encode(e)})
    }

    fn parse(keys: &[Value]) -> Result<Vec<String>, String> {
        let bytes = serde_json::to_vec(&json!({ "keys": keys })).unwrap();
        let mut kids: Vec<String> = parse_jwks(&bytes, &[Algorithm::RS256])?
            .into_keys()
            .collect();
        kids.sort();
        Ok(kids)
    }

    #[test]
    fn only_strong_rsa_signing_keys_with_a_unique_kid_are_kept() {
        let mut enc = rsa_jwk("enc", 2048, &[1, 0, 1]);
        enc["use"] = json!("enc");
        let mut hs = rsa_jwk("hs", 2048, &[1, 0, 1]);
        hs["alg"] = json!("HS256");
        let mut no_alg = rsa_jwk("no-alg", 2048, &[1, 0, 1]);
        no_alg.as_object_mut().unwrap().remove("alg");
        let keys = vec![
            rsa_jwk("good", 2048, &[1, 0, 1]),
            rsa_jwk("big", 4096, &[1, 0, 1]),
            no_alg,
            rsa_jwk("weak", 1024, &[1, 0, 1]),
            rsa_jwk("e3", 2048, &[3]),
            rsa_jwk("twice", 2048, &[1, 0, 1]),
            rsa_jwk("twice", 2048, &[1, 0, 1]),
            enc,
            hs,
            json!({"kty": "oct", "kid": "oct", "k": "c2VjcmV0"}),
            json!({"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AAAA", "y": "AAAA"}),
            json!({"kty": "RSA", "kid": "bad b64", "n": "!!!", "e": "AQAB"}),
            json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"}),
            json!("not an object"),
        ];
        assert_eq!(parse(&keys).unwrap(), ["big", "good", "no-alg"]);
    }

    #[test]
    fn a_jwks_without_a_usable_key_is_an_error() {
        assert!(parse(&[rsa_jwk("weak", 1024, &[1, 0, 1])]).is_err());
        assert!(parse(&[]).is_err());
        assert!(parse_jwks(b"{\"keys\": 5}", &[Algorithm::RS256]).is_err());
        assert!(parse_jwks(b"<html>", &[Algorithm::RS256]).is_err());
    }

    #[test]
    fn no_more_than_twenty_keys_are_kept() {
        let keys: Vec<Value> = (0..50)
            .map(|i| rsa_jwk(&format!("k{i}"), 2048, &[1, 0, 1]))
            .collect();
        assert_eq!(parse(&keys).unwrap().len(), MAX_KEYS);
    }
}
