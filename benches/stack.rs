//! The whole request path through `oneshot`, against the same request sent straight to the
//! echo upstream, in the same run (docs/performance.md). Both go over loopback TCP to the same
//! in-process echo server, so the difference is what the gateway adds.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use http_body_util::BodyExt;
use jwtgate::body;
use jwtgate::config::Config;
use jwtgate::echo::EchoServer;
use jwtgate::issuer::{Issuer, IssuerConfig};
use jwtgate::snapshot::Shared;
use tower::ServiceExt as _;

fn stack(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (issuer, echo, service, direct, metrics) = runtime.block_on(async {
        let issuer = Issuer::start(
            ([127, 0, 0, 1], 0).into(),
            IssuerConfig::single_user("bench", "api://bench", "alice", &["readers"]),
        )
        .await
        .unwrap();
        let echo = EchoServer::start(([127, 0, 0, 1], 0).into()).await.unwrap();
        let config = Config::from_toml_str(&format!(
            r#"
[server]
listen = "127.0.0.1:0"
[okta]
issuer = "{}"
audience = "api://bench"
[upstreams.echo]
targets = ["http://{}"]
[[routes]]
path = "/public"
upstream = "echo"
public = true
[[routes]]
path = "/api"
upstream = "echo"
groups = ["readers"]
[rate_limits.groups]
readers = {{ requests = 1000000000, per = "1s" }}
[forward]
claims_to_headers = {{ sub = "X-Auth-Subject", groups = "X-Auth-Groups" }}
"#,
            issuer.issuer_url(),
            echo.addr()
        ))
        .unwrap();
        let shared = Shared::new().unwrap();
        let snapshot = shared.compile(Arc::new(config), None, true).await.unwrap();
        let live = Arc::new(arc_swap::ArcSwap::from_pointee(snapshot));
        let service = jwtgate::stack::build(live, shared.upstreams.clone(), shared.metrics.clone());
        let metrics = shared.metrics.clone();
        (
            issuer,
            echo,
            service,
            shared.upstreams.client().clone(),
            metrics,
        )
    });
    let token = format!("Bearer {}", issuer.token_for_user("alice"));
    let echo_url = format!("http://{}/api/items/42", echo.addr());

    let mut g = c.benchmark_group("stack");
    g.bench_function("echo directly (floor)", |b| {
        b.to_async(&runtime).iter(|| async {
            let req = Request::get(&echo_url).body(body::empty()).unwrap();
            let r = direct.request(req).await.unwrap();
            r.into_body().collect().await.unwrap();
        });
    });
    g.bench_function("public route", |b| {
        b.to_async(&runtime).iter(|| async {
            let req = Request::get("/public/items/42")
                .body(body::empty())
                .unwrap();
            let r = service.clone().oneshot(req).await.unwrap();
            assert_eq!(r.status(), 200);
            r.into_body().collect().await.unwrap();
        });
    });
    g.bench_function("protected route, token cached", |b| {
        b.to_async(&runtime).iter(|| async {
            let req = Request::get("/api/items/42")
                .header("authorization", &token)
                .body(body::empty())
                .unwrap();
            let r = service.clone().oneshot(req).await.unwrap();
            assert_eq!(r.status(), 200);
            r.into_body().collect().await.unwrap();
        });
    });
    g.finish();
    // Shown with --nocapture-like output: proves the protected route ran from the cache.
    for line in metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("jwtgate_token_cache"))
    {
        eprintln!("{line}");
    }
}

criterion_group!(benches, stack);
criterion_main!(benches);
