//! The hot steps of a request, each against its floor in the same run (docs/performance.md):
//! route matching with 1,000 routes vs 1; a cached token vs a full RSA verification; a
//! rate-limit charge vs the policy choice alone.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Method;
use jwtgate::auth::cache::TokenCache;
use jwtgate::auth::jwks::parse_jwks;
use jwtgate::auth::validate::{self, KeySet, Policy};
use jwtgate::config::{Algorithm, Config};
use jwtgate::issuer::{Issuer, IssuerConfig};
use jwtgate::ratelimit::RateLimiter;
use jwtgate::snapshot::Snapshot;

fn table(routes: usize) -> Snapshot {
    let mut text = String::from(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.u]\ntargets = [\"http://127.0.0.1:1\"]\n",
    );
    for i in 0..routes {
        text.push_str(&format!(
            "[[routes]]\npath = \"/svc{i}/api\"\nupstream = \"u\"\npublic = true\n"
        ));
    }
    Snapshot::new(Arc::new(Config::from_toml_str(&text).unwrap()), None)
}

fn routing(c: &mut Criterion) {
    let one = table(1);
    let many = table(1000);
    let mut g = c.benchmark_group("normalize+route");
    g.bench_function("1 route", |b| {
        b.iter(|| {
            let path = jwtgate::normalize::path(black_box("/svc0/api/items/42")).unwrap();
            black_box(one.routes.find(&Method::GET, &path).is_ok())
        });
    });
    g.bench_function("1000 routes", |b| {
        b.iter(|| {
            let path = jwtgate::normalize::path(black_box("/svc500/api/items/42")).unwrap();
            black_box(many.routes.find(&Method::GET, &path).is_ok())
        });
    });
    g.bench_function("1000 routes, dot segments", |b| {
        b.iter(|| {
            let path = jwtgate::normalize::path(black_box("/svc500/./api//items/x/../42")).unwrap();
            black_box(many.routes.find(&Method::GET, &path).is_ok())
        });
    });
    g.finish();
}

fn tokens(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let issuer = runtime.block_on(async {
        Issuer::start(
            ([127, 0, 0, 1], 0).into(),
            IssuerConfig::single_user("bench", "api://bench", "alice", &["readers"]),
        )
        .await
        .unwrap()
    });
    let token = issuer.token_for_user("alice");
    let keys = KeySet {
        keys: parse_jwks(
            &serde_json::to_vec(&issuer.jwks()).unwrap(),
            &[Algorithm::RS256],
        )
        .unwrap(),
        generation: 1,
    };
    let policy = Policy {
        issuer: issuer.issuer_url().to_owned(),
        audiences: vec!["api://bench".into()],
        algorithms: vec![Algorithm::RS256],
        leeway: 30,
        client_ids: None,
        groups_claim: "groups".into(),
        scopes_claim: "scp".into(),
        forwarded_claims: vec!["sub".into(), "groups".into()],
    };
    let now = validate::unix_now();
    let identity = {
        let parsed = validate::parse(&token, &policy).unwrap();
        Arc::new(validate::verify(&parsed, &keys, &policy, now).unwrap())
    };
    let cache = TokenCache::new(10_000);
    cache.insert(&token, 1, identity);

    let mut g = c.benchmark_group("token");
    g.bench_function("RSA verify + claims", |b| {
        b.iter(|| {
            let parsed = validate::parse(black_box(&token), &policy).unwrap();
            black_box(validate::verify(&parsed, &keys, &policy, now).is_ok())
        });
    });
    g.bench_function("cache hit", |b| {
        b.iter(|| black_box(cache.get(black_box(token.as_bytes()), 1, now).is_some()));
    });
    g.finish();
}

fn limits(c: &mut Criterion) {
    let config = Config::from_toml_str(
        "[server]\nlisten = \"127.0.0.1:0\"\n[rate_limits]\ndefault = { requests = 1000000000, per = \"1s\" }\n[rate_limits.groups]\nreaders = { requests = 1000000000, per = \"1s\" }\n",
    )
    .unwrap();
    let limiter = RateLimiter::new(&config.rate_limits);
    let identity = validate::Identity {
        sub: "alice".into(),
        uid: Some("00u1a2b3c4d5e6f7g8h9".into()),
        cid: None,
        groups: vec!["readers".into(), "others".into()],
        scopes: vec![],
        exp: 0,
        claims: Default::default(),
    };
    let mut g = c.benchmark_group("ratelimit");
    g.bench_function("select only", |b| {
        b.iter(|| black_box(limiter.select(black_box(&identity)).is_some()));
    });
    g.bench_function("select + GCRA charge", |b| {
        b.iter(|| black_box(limiter.check(black_box(&identity)).is_some()));
    });
    g.finish();
}

criterion_group!(benches, routing, tokens, limits);
criterion_main!(benches);
