//! A bounded cache of tokens already verified, so a reused token skips the RSA verify.
//!
//! Keyed by the whole token text (compared in full on every hit), so a different token can
//! never hit. An entry is served only while the key set that verified it is still in force
//! (a new JWKS, for example one that dropped a compromised key, empties it in effect) and only
//! before its `exp`: it never outlives the token. Leeway is not applied here; a token inside
//! its leeway window is verified again, which is correct and rare.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use quick_cache::Equivalent;
use quick_cache::sync::Cache;

use super::validate::Identity;

/// Verified tokens → identities.
#[derive(Debug)]
pub struct TokenCache {
    /// Keyed by the token's bytes: a lookup happens before the token's characters are
    /// checked (a hit needs no check: it equals a token that was verified).
    cache: Cache<TokenKey, Entry>,
}

/// A verified token's bytes, compared in full but hashed by their length and last 32 bytes
/// (signature bytes): hashing all of a 700-byte token cost more than the rest of a hit. Only
/// verified tokens are stored, so no one without the issuer's key can make stored tokens
/// collide; a presented token that shares a stored one's tail is compared and misses.
#[derive(Debug, PartialEq, Eq)]
struct TokenKey(Box<[u8]>);

/// A presented token, looked up without copying it.
struct TokenRef<'a>(&'a [u8]);

fn hash_token<H: Hasher>(token: &[u8], state: &mut H) {
    state.write_usize(token.len());
    state.write(&token[token.len().saturating_sub(32)..]);
}

impl Hash for TokenKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_token(&self.0, state);
    }
}

impl Hash for TokenRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_token(self.0, state);
    }
}

impl Equivalent<TokenKey> for TokenRef<'_> {
    fn equivalent(&self, key: &TokenKey) -> bool {
        *self.0 == *key.0
    }
}

#[derive(Debug, Clone)]
struct Entry {
    generation: u64,
    identity: Arc<Identity>,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (least recently and least frequently used go
    /// first, CLOCK-Pro).
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            cache: Cache::new(capacity),
        }
    }

    /// The identity of `token` if it was verified under key set `generation` and `now` (seconds
    /// since the epoch) is before its `exp`.
    pub fn get(&self, token: &[u8], generation: u64, now: u64) -> Option<Arc<Identity>> {
        let entry = self.cache.get(&TokenRef(token))?;
        (entry.generation == generation && now < entry.identity.exp).then_some(entry.identity)
    }

    /// Remembers a verified token.
    pub fn insert(&self, token: &str, generation: u64, identity: Arc<Identity>) {
        self.cache.insert(
            TokenKey(token.as_bytes().into()),
            Entry {
                generation,
                identity,
            },
        );
    }

    /// Number of cached tokens.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn identity(exp: u64) -> Arc<Identity> {
        Arc::new(Identity {
            sub: "alice".into(),
            uid: None,
            cid: None,
            groups: vec![],
            scopes: vec![],
            exp,
            claims: BTreeMap::new(),
        })
    }

    #[test]
    fn an_entry_is_never_served_at_or_after_its_exp() {
        let c = TokenCache::new(10);
        c.insert("a.b.c", 1, identity(1000));
        assert!(c.get(b"a.b.c", 1, 999).is_some());
        assert!(c.get(b"a.b.c", 1, 1000).is_none());
        assert!(c.get(b"a.b.c", 1, 5000).is_none());
    }

    #[test]
    fn a_new_key_set_or_another_token_never_hits() {
        let c = TokenCache::new(10);
        c.insert("a.b.c", 1, identity(1000));
        assert!(c.get(b"a.b.c", 2, 10).is_none());
        assert!(c.get(b"a.b.d", 1, 10).is_none());
        assert!(c.get(b"a.b.", 1, 10).is_none());
    }

    #[test]
    fn tokens_that_share_their_length_and_tail_are_told_apart() {
        // Same length, same last 32 bytes (so the same hash): only the exact bytes hit.
        let tail = "s".repeat(40);
        let (a, b) = (format!("aaaa.{tail}"), format!("bbbb.{tail}"));
        let c = TokenCache::new(10);
        c.insert(&a, 1, identity(1000));
        assert!(c.get(a.as_bytes(), 1, 10).is_some());
        assert!(c.get(b.as_bytes(), 1, 10).is_none());
        c.insert(&b, 1, identity(2000));
        assert_eq!(c.get(a.as_bytes(), 1, 10).unwrap().exp, 1000);
        assert_eq!(c.get(b.as_bytes(), 1, 10).unwrap().exp, 2000);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let c = TokenCache::new(100);
        for i in 0..10_000 {
            c.insert(&format!("token-{i}"), 1, identity(1000));
        }
        assert!(c.len() <= 100, "{}", c.len());
    }
}
