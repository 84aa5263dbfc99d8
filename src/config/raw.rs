//! Serde mirror of the TOML file, field for field.
//!
//! Nothing here is checked beyond TOML types: every value that a later check must point at is a
//! `Spanned<T>`, and every key is optional so that `validate` can report *all* missing keys at
//! once instead of serde stopping at the first. Unknown keys are collected by `serde_ignored`
//! (see `config::parse`), which is why no struct carries `deny_unknown_fields`. Table keys
//! (upstream, group and claim names) are plain `String`s: toml cannot span a map key, so their
//! errors point at the value instead.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use toml::Spanned;

pub(crate) type Text = Spanned<String>;
pub(crate) type List = Spanned<Vec<Text>>;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawConfig {
    pub(crate) server: Option<Spanned<RawServer>>,
    pub(crate) okta: Option<Spanned<RawOkta>>,
    #[serde(default)]
    pub(crate) upstreams: BTreeMap<String, Spanned<RawUpstream>>,
    #[serde(default)]
    pub(crate) routes: Vec<Spanned<RawRoute>>,
    pub(crate) rate_limits: Option<Spanned<RawRateLimits>>,
    pub(crate) forward: Option<Spanned<RawForward>>,
    pub(crate) demo: Option<Spanned<RawDemo>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawServer {
    pub(crate) listen: Option<Text>,
    pub(crate) admin_listen: Option<Text>,
    pub(crate) workers: Option<Spanned<i64>>,
    pub(crate) tls_cert: Option<Text>,
    pub(crate) tls_key: Option<Text>,
    pub(crate) shutdown_grace: Option<Text>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawOkta {
    pub(crate) issuer: Option<Text>,
    pub(crate) audience: Option<Spanned<OneOrMany>>,
    pub(crate) jwks_uri: Option<Text>,
    pub(crate) groups_claim: Option<Text>,
    pub(crate) scopes_claim: Option<Text>,
    pub(crate) algorithms: Option<List>,
    pub(crate) leeway: Option<Text>,
    pub(crate) jwks_refresh: Option<Text>,
    pub(crate) jwks_refetch_cooldown: Option<Text>,
    pub(crate) max_token_bytes: Option<Spanned<i64>>,
    pub(crate) client_ids: Option<List>,
    pub(crate) token_cache_size: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawUpstream {
    pub(crate) targets: Option<List>,
    pub(crate) connect_timeout: Option<Text>,
    pub(crate) timeout: Option<Text>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawRoute {
    pub(crate) path: Option<Text>,
    pub(crate) methods: Option<List>,
    pub(crate) upstream: Option<Text>,
    pub(crate) groups: Option<List>,
    pub(crate) scopes: Option<List>,
    pub(crate) strip_prefix: Option<bool>,
    pub(crate) public: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawRateLimits {
    pub(crate) default: Option<Spanned<RawLimit>>,
    #[serde(default)]
    pub(crate) groups: BTreeMap<String, Spanned<RawLimit>>,
    pub(crate) backend: Option<Text>,
    pub(crate) redis_url: Option<Text>,
    pub(crate) redis_timeout: Option<Text>,
    pub(crate) redis_key_prefix: Option<Text>,
    pub(crate) max_tracked_callers: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawLimit {
    pub(crate) requests: Option<Spanned<i64>>,
    pub(crate) per: Option<Text>,
    pub(crate) burst: Option<Spanned<i64>>,
    pub(crate) by: Option<Text>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawForward {
    #[serde(default)]
    pub(crate) claims_to_headers: BTreeMap<String, Text>,
    pub(crate) forward_authorization: Option<bool>,
}

/// `audience = "api://x"` or `audience = ["api://x", "api://y"]`.
///
/// Written by hand rather than with `#[serde(untagged)]`, which would lose the spans of the
/// elements and turn every type error into "data did not match any variant".
#[derive(Debug)]
pub(crate) struct OneOrMany(pub(crate) Vec<Text>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor;

        impl<'de> Visitor<'de> for OneOrManyVisitor {
            type Value = OneOrMany;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of strings")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                // A lone string has no span of its own here; `validate` uses the key's span.
                Ok(OneOrMany(vec![Spanned::new(0..0, v.to_owned())]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Text>()? {
                    items.push(item);
                }
                Ok(OneOrMany(items))
            }
        }

        deserializer.deserialize_any(OneOrManyVisitor)
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawDemo {
    pub(crate) issuer_listen: Option<Text>,
    pub(crate) upstream_listen: Option<Text>,
    pub(crate) auth_server_id: Option<Text>,
    pub(crate) token_lifetime: Option<Text>,
    #[serde(default)]
    pub(crate) users: Vec<Spanned<RawDemoUser>>,
    #[serde(default)]
    pub(crate) clients: Vec<Spanned<RawDemoClient>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawDemoUser {
    pub(crate) name: Option<Text>,
    pub(crate) password: Option<Text>,
    pub(crate) groups: Option<List>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawDemoClient {
    pub(crate) id: Option<Text>,
    pub(crate) secret: Option<Text>,
    pub(crate) scopes: Option<List>,
}
