//! A local Okta-compatible authorization server (SPEC §5), for the demo, the tests and the
//! benchmarks.
//!
//! Serves, under `/oauth2/{id}`: both discovery documents, `/v1/keys`, and `POST /v1/token`
//! with the `password` and `client_credentials` grants (form-encoded, client authentication by
//! HTTP Basic or form fields, as Okta's API takes them). Tokens have the shape of Okta access
//! tokens: RS256 with a `kid`, and the claims `ver`, `jti`, `iss`, `aud`, `iat`, `exp`, `cid`,
//! `uid` (users only), `scp`, `sub` and `groups`. `POST /v1/rotate` (not an Okta endpoint)
//! rotates the signing key the way Okta does: the new key signs, the old one stays published.
//!
//! Methods on [`Issuer`] let tests rotate keys, take the issuer down, count key fetches and
//! sign arbitrary headers and claims with the real key, so attacks can be built from genuine
//! material.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::auth::validate::unix_now;
use crate::body::{self, Body};
use crate::lock;

/// A user of the local issuer.
#[derive(Debug, Clone)]
pub struct User {
    /// Login name; also the token's `sub`.
    pub name: String,
    /// Password for the password grant.
    pub password: String,
    /// Groups, put in the `groups` claim.
    pub groups: Vec<String>,
}

/// An OAuth client of the local issuer.
#[derive(Debug, Clone)]
pub struct Client {
    /// `client_id`; the token's `cid`.
    pub id: String,
    /// `client_secret`.
    pub secret: String,
    /// Scopes this client may ask for.
    pub scopes: Vec<String>,
}

/// What the local issuer serves.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// The authorization server id in `/oauth2/{id}`.
    pub auth_server_id: String,
    /// The `aud` of every token.
    pub audience: String,
    /// Token lifetime (Okta's default is one hour).
    pub token_lifetime: Duration,
    /// Users for the password grant.
    pub users: Vec<User>,
    /// Clients.
    pub clients: Vec<Client>,
}

impl IssuerConfig {
    /// An issuer `/oauth2/{auth_server_id}` for `audience` with one user (password `password`)
    /// in `groups`, no clients, and one-hour tokens: the setup of most tests and benchmarks.
    pub fn single_user(auth_server_id: &str, audience: &str, user: &str, groups: &[&str]) -> Self {
        IssuerConfig {
            auth_server_id: auth_server_id.to_owned(),
            audience: audience.to_owned(),
            token_lifetime: Duration::from_secs(3600),
            users: vec![User {
                name: user.to_owned(),
                password: "password".to_owned(),
                groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            }],
            clients: Vec::new(),
        }
    }
}

struct SigningKey {
    kid: String,
    pair: KeyPair,
    jwk: Value,
}

struct State {
    config: IssuerConfig,
    issuer: String,
    /// Published keys, the signing one last.
    keys: Mutex<Vec<SigningKey>>,
    key_requests: AtomicU64,
    available: AtomicBool,
    rng: SystemRandom,
}

/// A running local issuer; stops when dropped.
pub struct Issuer {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("addr", &self.addr)
            .field("issuer", &self.state.issuer)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// Binds `addr` (port 0 picks one), generates a signing key and starts serving.
    ///
    /// # Errors
    ///
    /// The address cannot be bound, or key generation failed.
    pub async fn start(addr: SocketAddr, config: IssuerConfig) -> io::Result<Issuer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let issuer = format!("http://{addr}/oauth2/{}", config.auth_server_id);
        let rng = SystemRandom::new();
        let first = new_key(&rng)?;
        let state = Arc::new(State {
            config,
            issuer,
            keys: Mutex::new(vec![first]),
            key_requests: AtomicU64::new(0),
            available: AtomicBool::new(true),
            rng,
        });
        let serving = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Issuer { addr, state, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The issuer URL, `http://ADDR/oauth2/{id}`: what `[okta] issuer` must say.
    pub fn issuer_url(&self) -> &str {
        &self.state.issuer
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/v1/token", self.state.issuer)
    }

    /// The `kid` of the key that signs now.
    pub fn current_kid(&self) -> String {
        lock(&self.state.keys)
            .last()
            .map(|k| k.kid.clone())
            .unwrap_or_default()
    }

    /// Generates a new signing key; the previous keys stay published (as Okta does).
    ///
    /// # Errors
    ///
    /// Key generation failed.
    pub fn rotate(&self) -> io::Result<String> {
        rotate(&self.state)
    }

    /// Stops publishing every key but the one that signs now (an emergency rotation).
    pub fn retire_old_keys(&self) {
        let mut keys = lock(&self.state.keys);
        let n = keys.len();
        keys.drain(..n.saturating_sub(1));
    }

    /// How many times `/v1/keys` was requested.
    pub fn key_requests(&self) -> u64 {
        self.state.key_requests.load(Ordering::Relaxed)
    }

    /// Takes the issuer down (every endpoint answers 503) or brings it back.
    pub fn set_available(&self, up: bool) {
        self.state.available.store(up, Ordering::Relaxed);
    }

    /// The claims the password grant would put in a token for `user`, issued now.
    ///
    /// # Panics
    ///
    /// If there is no such user (a test mistake).
    pub fn claims_for_user(&self, user: &str) -> Value {
        let u = self
            .state
            .config
            .users
            .iter()
            .find(|u| u.name == user)
            .unwrap_or_else(|| panic!("no user {user:?}"));
        let client = self
            .state
            .config
            .clients
            .first()
            .map(|c| c.id.as_str())
            .unwrap_or("client");
        claims(&self.state, &u.name, client, Some(u), &[], unix_now())
    }

    /// A token for `user`, as the password grant would issue it.
    pub fn token_for_user(&self, user: &str) -> String {
        self.sign(&self.claims_for_user(user))
    }

    /// Signs `claims` with the current key and Okta's header (`alg` RS256, `kid`).
    pub fn sign(&self, claims: &Value) -> String {
        let kid = self.current_kid();
        self.sign_with_header(&json!({ "kid": kid, "alg": "RS256" }), claims)
    }

    /// Signs `claims` under an arbitrary `header` with the current key (RS256), whatever the
    /// header claims; for building attacks from genuine signatures.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        sign_raw(&self.state, &header.to_string(), &claims.to_string())
    }

    /// Signs raw header and payload JSON text (for duplicate-key and other malformed JSON).
    pub fn sign_raw_json(&self, header: &str, claims: &str) -> String {
        sign_raw(&self.state, header, claims)
    }

    /// The JWKS the issuer publishes now.
    pub fn jwks(&self) -> Value {
        jwks(&self.state)
    }

    /// The current signing key's public key as PEM (SubjectPublicKeyInfo), for verifiers that
    /// take a key file (HAProxy's `jwt_verify` in the benchmark).
    pub fn public_key_pem(&self) -> String {
        use aws_lc_rs::encoding::AsDer as _;
        let keys = lock(&self.state.keys);
        let der = keys
            .last()
            .and_then(|k| k.pair.public_key().as_der().ok())
            .map(|d| d.as_ref().to_vec())
            .unwrap_or_default();
        let b64 = STANDARD.encode(der);
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn random_id(rng: &SystemRandom, bytes: usize) -> io::Result<String> {
    let mut buf = vec![0u8; bytes];
    rng.fill(&mut buf)
        .map_err(|_| io::Error::other("no randomness"))?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

fn new_key(rng: &SystemRandom) -> io::Result<SigningKey> {
    let pair = KeyPair::generate(KeySize::Rsa2048)
        .map_err(|_| io::Error::other("RSA key generation failed"))?;
    let kid = random_id(rng, 15)?;
    let public = pair.public_key();
    let jwk = json!({
        "kty": "RSA",
        "alg": "RS256",
        "kid": kid,
        "use": "sig",
        "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
        "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
    });
    Ok(SigningKey { kid, pair, jwk })
}

fn rotate(state: &State) -> io::Result<String> {
    let key = new_key(&state.rng)?;
    let kid = key.kid.clone();
    lock(&state.keys).push(key);
    Ok(kid)
}

fn jwks(state: &State) -> Value {
    let keys: Vec<Value> = lock(&state.keys)
        .iter()
        .rev()
        .map(|k| k.jwk.clone())
        .collect();
    json!({ "keys": keys })
}

fn sign_raw(state: &State, header: &str, claims: &str) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let keys = lock(&state.keys);
    let Some(key) = keys.last() else {
        return input + ".";
    };
    let mut signature = vec![0u8; key.pair.public_modulus_len()];
    if key
        .pair
        .sign(
            &RSA_PKCS1_SHA256,
            &state.rng,
            input.as_bytes(),
            &mut signature,
        )
        .is_err()
    {
        return input + ".";
    }
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Okta-shaped access-token claims for `sub`, issued `now` by client `cid`; users also get
/// `uid` and `groups` (machine tokens have neither, as in Okta).
fn claims(
    state: &State,
    sub: &str,
    cid: &str,
    user: Option<&User>,
    scopes: &[String],
    now: u64,
) -> Value {
    let jti = random_id(&state.rng, 15).unwrap_or_default();
    let mut claims = json!({
        "ver": 1,
        "jti": format!("AT.{jti}"),
        "iss": state.issuer,
        "aud": state.config.audience,
        "iat": now,
        "exp": now + state.config.token_lifetime.as_secs(),
        "cid": cid,
        "scp": scopes,
        "sub": sub,
    });
    if let Some(user) = user {
        // A stable, Okta-shaped user id derived from the name.
        claims["uid"] = json!(format!(
            "00u{}",
            URL_SAFE_NO_PAD.encode(user.name.as_bytes())
        ));
        claims["groups"] = json!(user.groups);
    }
    claims
}

fn json_response(status: StatusCode, doc: &Value) -> Response<Body> {
    let mut r = Response::new(body::full(doc.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    json_response(
        status,
        &json!({ "error": error, "error_description": description }),
    )
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    if !state.available.load(Ordering::Relaxed) {
        return oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "down",
        );
    }
    let prefix = format!("/oauth2/{}", state.config.auth_server_id);
    let Some(path) = req.uri().path().strip_prefix(&prefix) else {
        return oauth_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint");
    };
    match (req.method(), path) {
        (
            &Method::GET,
            "/.well-known/oauth-authorization-server" | "/.well-known/openid-configuration",
        ) => json_response(
            StatusCode::OK,
            &json!({
                "issuer": state.issuer,
                "jwks_uri": format!("{}/v1/keys", state.issuer),
                "token_endpoint": format!("{}/v1/token", state.issuer),
                "grant_types_supported": ["password", "client_credentials"],
                "response_types_supported": ["token"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            }),
        ),
        (&Method::GET, "/v1/keys") => {
            state.key_requests.fetch_add(1, Ordering::Relaxed);
            let mut r = json_response(StatusCode::OK, &jwks(state));
            r.headers_mut().insert(
                CACHE_CONTROL,
                HeaderValue::from_static("max-age=3600, must-revalidate"),
            );
            r
        }
        (&Method::POST, "/v1/token") => token(state, req).await,
        (&Method::POST, "/v1/rotate") => match rotate(state) {
            Ok(kid) => json_response(StatusCode::OK, &json!({ "kid": kid })),
            Err(_) => oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "rotation failed",
            ),
        },
        _ => oauth_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    }
}

async fn token(state: &State, req: Request<Incoming>) -> Response<Body> {
    let basic = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(a, b)| (a.to_owned(), b.to_owned())));
    let Ok(collected) = Limited::new(req.into_body(), 64 * 1024).collect().await else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "unreadable body",
        );
    };
    let form: HashMap<String, String> = form_urlencoded::parse(&collected.to_bytes())
        .into_owned()
        .collect();
    let (client_id, secret) = match (&basic, form.get("client_id"), form.get("client_secret")) {
        (Some((id, secret)), _, _) => (id.clone(), secret.clone()),
        (None, Some(id), Some(secret)) => (id.clone(), secret.clone()),
        _ => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            );
        }
    };
    let Some(client) = state
        .config
        .clients
        .iter()
        .find(|c| c.id == client_id && c.secret == secret)
    else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
    };
    let requested: Vec<String> = form
        .get("scope")
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    if let Some(bad) = requested.iter().find(|s| !client.scopes.contains(s)) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            &format!("the client may not request {bad}"),
        );
    }
    let now = unix_now();
    let claims = match form.get("grant_type").map(String::as_str) {
        Some("password") => {
            let (Some(name), Some(password)) = (form.get("username"), form.get("password")) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "username and password are required",
                );
            };
            let Some(user) = state
                .config
                .users
                .iter()
                .find(|u| &u.name == name && &u.password == password)
            else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "the credentials provided were invalid",
                );
            };
            claims(state, &user.name, &client.id, Some(user), &requested, now)
        }
        Some("client_credentials") => claims(state, &client.id, &client.id, None, &requested, now),
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "use password or client_credentials",
            );
        }
    };
    let kid = lock(&state.keys)
        .last()
        .map(|k| k.kid.clone())
        .unwrap_or_default();
    let token = sign_raw(
        state,
        &json!({ "kid": kid, "alg": "RS256" }).to_string(),
        &claims.to_string(),
    );
    json_response(
        StatusCode::OK,
        &json!({
            "token_type": "Bearer",
            "expires_in": state.config.token_lifetime.as_secs(),
            "access_token": token,
            "scope": requested.join(" "),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::SubjectPublicKeyInfoDer;
    use rustls::pki_types::pem::PemObject;

    #[tokio::test]
    async fn the_public_key_pem_verifies_the_issuers_tokens() {
        let issuer = Issuer::start(
            ([127, 0, 0, 1], 0).into(),
            IssuerConfig::single_user("t", "api://t", "a", &[]),
        )
        .await
        .unwrap();
        let pem = issuer.public_key_pem();
        let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes()).unwrap();
        let token = issuer.token_for_user("a");
        let (input, signature) = token.rsplit_once('.').unwrap();
        let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        let key = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            spki.as_ref(),
        );
        key.verify(input.as_bytes(), &signature)
            .expect("the PEM key verifies the issuer's signature");
    }
}
