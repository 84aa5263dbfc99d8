//! SPEC §3 step 3: authenticate the caller of a protected route with its Okta access token.
//!
//! Requires the `RequestContext` with its route; sets its `identity` (the verified claims) for
//! the layers after it. Public routes pass untouched, whatever they carry.
//!
//! The decision is [`validate::parse`] + [`validate::verify`], pure functions; this module
//! adds the only asynchronous part, one refetch of the keys when a token names an unknown
//! `kid` ([`jwks::KeyCache::refetch_for`]), and the verified-token cache. Refusals are the 400,
//! 401 and 503 rows of SPEC §3, with fixed descriptions; neither the token nor a library's
//! error text is ever logged or returned.

pub mod bearer;
pub mod cache;
pub mod jwks;
pub mod validate;

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::Arc;

use futures_util::future::Either;
use http::{HeaderMap, Request, Response};
use tower_http::auth::{AsyncAuthorizeRequest, AsyncRequireAuthorizationLayer};

use crate::body::Body;
use crate::config::{Access, Okta};
use crate::metrics::{Metrics, ResultLabel};
use crate::reject::Reject;
use crate::snapshot::RequestContext;
use bearer::BearerError;
use cache::TokenCache;
use jwks::KeyCache;
use prometheus_client::metrics::counter::Counter;
use validate::{Identity, KeySet, Policy, Reason};

/// Everything needed to authenticate requests under one configuration.
#[derive(Debug)]
pub struct Authenticator {
    policy: Policy,
    keys: Arc<KeyCache>,
    cache: Option<TokenCache>,
    max_token_bytes: usize,
    /// `jwtgate_token_cache_lookups_total{result="hit"}`, looked up once here rather than by
    /// label on every request.
    hits: Counter,
    /// `jwtgate_token_cache_lookups_total{result="miss"}`.
    misses: Counter,
}

impl Authenticator {
    /// An authenticator for `okta`, reading keys from `keys`.
    pub fn new(okta: &Okta, keys: Arc<KeyCache>) -> Authenticator {
        Authenticator::with_metrics(okta, keys, &Metrics::new())
    }

    /// Like [`Authenticator::new`], counting token-cache lookups in `metrics`.
    pub fn with_metrics(okta: &Okta, keys: Arc<KeyCache>, metrics: &Metrics) -> Authenticator {
        Authenticator {
            policy: Policy::new(okta),
            keys,
            cache: (okta.token_cache_size > 0).then(|| TokenCache::new(okta.token_cache_size)),
            max_token_bytes: okta.max_token_bytes,
            // `_owned` lets go of the family's lock at once: a guard from `get_or_create` lives
            // to the end of this expression and would deadlock the second lookup.
            hits: metrics
                .token_cache
                .get_or_create_owned(&ResultLabel { result: "hit" }),
            misses: metrics
                .token_cache
                .get_or_create_owned(&ResultLabel { result: "miss" }),
        }
    }

    /// Keeps these claims (the `claims_to_headers` names) in identities; others are dropped.
    #[must_use]
    pub fn forwarding(mut self, claims: impl IntoIterator<Item = String>) -> Authenticator {
        self.policy.forwarded_claims = claims.into_iter().collect();
        self
    }

    /// The key cache this authenticator reads.
    pub fn keys(&self) -> &Arc<KeyCache> {
        &self.keys
    }

    /// Authenticates a request from its headers and raw query string at time `now` (seconds
    /// since the epoch).
    ///
    /// # Errors
    ///
    /// The [`Reject`] to answer with: `MissingToken`, `InvalidRequest`, `InvalidToken`, or
    /// `KeysUnavailable` when no key was ever fetched.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        now: u64,
    ) -> Result<Arc<Identity>, Reject> {
        match self.authenticate_now(headers, query, now) {
            Some(outcome) => outcome,
            None => self.authenticate_after_refetch(headers, query, now).await,
        }
    }

    /// [`Authenticator::authenticate`] without waiting: every outcome but one is decided here,
    /// on the keys in hand. `None` when the token names a key not among them: that needs the
    /// keys fetched again ([`Authenticator::authenticate_after_refetch`]).
    pub fn authenticate_now(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        now: u64,
    ) -> Option<Result<Arc<Identity>, Reject>> {
        let raw = match bearer::locate(headers, query, self.max_token_bytes) {
            Ok(raw) => raw,
            Err(e) => return Some(Err(refusal(e))),
        };
        let keys = self.keys.current();
        // A hit compares the whole token with one that was verified, so its characters need
        // no checking: only a miss pays for that.
        if let (Some(cache), Some(keys)) = (&self.cache, &keys)
            && let Some(identity) = cache.get(raw, keys.generation, now)
        {
            self.hits.inc();
            return Some(Ok(identity));
        }
        let token = match bearer::jws_text(raw) {
            Ok(token) => token,
            Err(e) => return Some(Err(refusal(e))),
        };
        let Some(keys) = keys else {
            return Some(Err(Reject::KeysUnavailable));
        };
        if self.cache.is_some() {
            self.misses.inc();
        }
        let parsed = match validate::parse(token, &self.policy) {
            Ok(parsed) => parsed,
            Err(reason) => return Some(Err(Reject::InvalidToken(reason))),
        };
        let verified = validate::verify(&parsed, &keys, &self.policy, now);
        if verified == Err(Reason::UnknownKey) {
            return None;
        }
        Some(self.remember(token, &keys, verified))
    }

    /// The rest of [`Authenticator::authenticate`] for a token whose key was not in hand: one
    /// refetch of the keys (at most one per `kid_refetch_cooldown`, shared by all waiting
    /// requests), then verification against them. It finds and parses the token again rather
    /// than carry borrows of the request across the wait: a few microseconds, on a path taken
    /// only by tokens signed with a key the gateway has not seen.
    ///
    /// # Errors
    ///
    /// As [`Authenticator::authenticate`]; `InvalidToken(UnknownKey)` when the key is still
    /// unknown.
    pub async fn authenticate_after_refetch(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        now: u64,
    ) -> Result<Arc<Identity>, Reject> {
        let raw = bearer::locate(headers, query, self.max_token_bytes).map_err(refusal)?;
        let token = bearer::jws_text(raw).map_err(refusal)?;
        let parsed = validate::parse(token, &self.policy).map_err(Reject::InvalidToken)?;
        let Some(keys) = self.keys.refetch_for(&parsed.kid).await else {
            return Err(Reject::InvalidToken(Reason::UnknownKey));
        };
        let verified = validate::verify(&parsed, &keys, &self.policy, now);
        self.remember(token, &keys, verified)
    }

    /// The identity of a verified token, cached under the key set that verified it.
    fn remember(
        &self,
        token: &str,
        keys: &KeySet,
        verified: Result<Identity, Reason>,
    ) -> Result<Arc<Identity>, Reject> {
        let identity = Arc::new(verified.map_err(Reject::InvalidToken)?);
        if let Some(cache) = &self.cache {
            cache.insert(token, keys.generation, identity.clone());
        }
        Ok(identity)
    }
}

fn refusal(e: BearerError) -> Reject {
    match e {
        BearerError::Missing => Reject::MissingToken,
        BearerError::Misplaced => Reject::InvalidRequest,
        BearerError::Invalid(reason) => Reject::InvalidToken(reason),
    }
}

/// The layer: 400/401/503 on protected routes, the context's identity set on success.
pub fn layer() -> AsyncRequireAuthorizationLayer<Authenticate> {
    AsyncRequireAuthorizationLayer::new(Authenticate)
}

/// [`AsyncAuthorizeRequest`] implementation behind [`layer`].
#[derive(Debug, Clone, Copy)]
pub struct Authenticate;

type Decided<B> = Result<Request<B>, Response<Body>>;

impl<B: Send + 'static> AsyncAuthorizeRequest<B> for Authenticate {
    type RequestBody = B;
    type ResponseBody = Body;
    /// Ready at once, except for a token whose key must be fetched first (boxed: rare).
    type Future = Either<Ready<Decided<B>>, Pin<Box<dyn Future<Output = Decided<B>> + Send>>>;

    fn authorize(&mut self, req: Request<B>) -> Self::Future {
        // The context is looked up once and borrowed from the request until the decision: the
        // identity is set through that borrow, and the authenticator is only cloned for the
        // one path that waits.
        let Some((context, route)) = RequestContext::routed(&req) else {
            tracing::error!("auth layer reached without a matched route");
            return Either::Left(ready(Err(Reject::Internal.into_response())));
        };
        if route.route.access == Access::Public {
            return Either::Left(ready(Ok(req)));
        }
        // A protected route without [okta] does not validate; fail closed regardless.
        let Some(auth) = context.snapshot.auth.as_ref() else {
            return Either::Left(ready(Err(Reject::KeysUnavailable.into_response())));
        };
        let now = validate::unix_now();
        match auth.authenticate_now(req.headers(), req.uri().query(), now) {
            Some(Ok(identity)) => {
                let _ = context.record.identity.set(identity);
                Either::Left(ready(Ok(req)))
            }
            Some(Err(reject)) => Either::Left(ready(Err(refuse(reject)))),
            None => {
                let auth = auth.clone();
                Either::Right(Box::pin(async move {
                    let outcome = auth
                        .authenticate_after_refetch(req.headers(), req.uri().query(), now)
                        .await;
                    match outcome {
                        Ok(identity) => {
                            if let Some(context) = RequestContext::of(&req) {
                                let _ = context.record.identity.set(identity);
                            }
                            Ok(req)
                        }
                        Err(reject) => Err(refuse(reject)),
                    }
                }))
            }
        }
    }
}

/// The answer to a refused token.
fn refuse(reject: Reject) -> Response<Body> {
    tracing::debug!(refusal = %reject.description(), "authentication refused");
    reject.into_response()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::HeaderValue;
    use http::header::AUTHORIZATION;
    use serde_json::json;

    use super::*;
    use crate::config::Config;
    use crate::issuer::{Issuer, IssuerConfig};
    use crate::proxy::upstream::ConnectTimeouts;

    async fn authenticator(issuer: &Issuer, okta_extra: &str) -> Authenticator {
        let config = Config::from_toml_str(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[okta]\nissuer = \"{}\"\naudience = \"api://test\"\n{okta_extra}\n",
            issuer.issuer_url()
        ))
        .unwrap();
        let okta = config.okta.unwrap();
        let keys = KeyCache::new(
            &okta,
            crate::proxy::client(ConnectTimeouts::default()).unwrap(),
        );
        keys.fetch().await.unwrap();
        Authenticator::new(&okta, keys)
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    async fn issuer() -> Issuer {
        Issuer::start(
            ([127, 0, 0, 1], 0).into(),
            IssuerConfig {
                auth_server_id: "t".into(),
                audience: "api://test".into(),
                token_lifetime: Duration::from_secs(60),
                users: vec![],
                clients: vec![],
            },
        )
        .await
        .unwrap()
    }

    fn claims(issuer: &Issuer, iat: u64, exp: u64) -> serde_json::Value {
        json!({"iss": issuer.issuer_url(), "aud": "api://test", "sub": "alice", "iat": iat, "exp": exp})
    }

    #[tokio::test]
    async fn the_cache_never_serves_a_token_at_or_after_its_exp() {
        let issuer = issuer().await;
        let auth = authenticator(&issuer, "leeway = \"0s\"").await;
        let (iat, exp) = (1_800_000_000, 1_800_000_060);
        let headers = bearer(&issuer.sign(&claims(&issuer, iat, exp)));
        assert!(auth.authenticate(&headers, None, exp - 1).await.is_ok());
        assert_eq!(auth.cache.as_ref().unwrap().len(), 1, "verified and cached");
        assert_eq!(
            auth.authenticate(&headers, None, exp).await,
            Err(Reject::InvalidToken(Reason::Expired))
        );
    }

    #[tokio::test]
    async fn a_cache_hit_still_honours_the_leeway_window_through_full_verification() {
        let issuer = issuer().await;
        let auth = authenticator(&issuer, "leeway = \"30s\"").await;
        let (iat, exp) = (1_800_000_000, 1_800_000_060);
        let headers = bearer(&issuer.sign(&claims(&issuer, iat, exp)));
        assert!(auth.authenticate(&headers, None, exp - 1).await.is_ok());
        // Past exp the cache misses; verification accepts inside the leeway, then refuses.
        assert!(auth.authenticate(&headers, None, exp + 29).await.is_ok());
        assert_eq!(
            auth.authenticate(&headers, None, exp + 30).await,
            Err(Reject::InvalidToken(Reason::Expired))
        );
    }

    #[tokio::test]
    async fn a_cached_tokens_near_twins_are_checked_in_full_not_served() {
        // A hit skips the character check, so only the exact bytes of a verified token may hit:
        // the same token with a byte added, removed, or swapped for a forbidden one misses and is
        // refused for what it is.
        let issuer = issuer().await;
        let auth = authenticator(&issuer, "").await;
        let (iat, exp) = (1_800_000_000, 1_800_000_060);
        let token = issuer.sign(&claims(&issuer, iat, exp));
        assert!(auth.authenticate(&bearer(&token), None, iat).await.is_ok());
        let malformed = Err(Reject::InvalidToken(Reason::Malformed));
        let mut swapped = token.clone().into_bytes();
        swapped[10] = b'!';
        let swapped = String::from_utf8(swapped).unwrap();
        assert_eq!(
            auth.authenticate(&bearer(&swapped), None, iat).await,
            malformed
        );
        let padded = format!("{token}=");
        assert_eq!(
            auth.authenticate(&bearer(&padded), None, iat).await,
            malformed
        );
        let cut = &token[..token.len() - 1];
        assert!(matches!(
            auth.authenticate(&bearer(cut), None, iat).await,
            Err(Reject::InvalidToken(_))
        ));
        assert!(auth.authenticate(&bearer(&token), None, iat).await.is_ok());
    }

    #[tokio::test]
    async fn with_the_cache_off_every_request_is_verified() {
        let issuer = issuer().await;
        let auth = authenticator(&issuer, "token_cache_size = 0").await;
        assert!(auth.cache.is_none());
        let headers = bearer(&issuer.sign(&claims(&issuer, 1_800_000_000, 1_800_000_060)));
        assert!(
            auth.authenticate(&headers, None, 1_800_000_001)
                .await
                .is_ok()
        );
    }
}
