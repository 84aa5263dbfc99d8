//! `jwtgate demo`: the shipped demo configuration, started on port 0, answers its own
//! walk-through with 200, 401 and 403; and the binary prints the walk-through and stops on
//! SIGINT with exit code 0.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use http::Request;
use jwtgate::body;
use jwtgate::config::Config;
use jwtgate::demo::Demo;

use crate::support::{client, send};

/// config/demo.toml with every listener on port 0.
fn demo_config_on_port_0() -> String {
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml"))
            .unwrap();
    shipped
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0")
        .replace(
            "issuer_listen = \"127.0.0.1:8180\"",
            "issuer_listen = \"127.0.0.1:0\"",
        )
        .replace("127.0.0.1:9001", "127.0.0.1:0")
}

#[tokio::test]
async fn the_demo_answers_its_walkthrough() {
    let config = Config::from_toml_str(&demo_config_on_port_0()).unwrap();
    let demo = Demo::start(config).await.unwrap();
    let c = client();
    let token_reply = send(
        &c,
        Request::post(demo.issuer.token_url())
            .header("content-type", "application/x-www-form-urlencoded")
            .header("authorization", "Basic ZGVtby1jbGllbnQ6ZGVtby1jbGllbnQtc2VjcmV0")
            .body(body::full(
                "grant_type=password&username=alice&password=alice-demo-password&scope=orders%3Aread",
            ))
            .unwrap(),
    )
    .await;
    assert_eq!(token_reply.status, 200, "{:?}", token_reply.body);
    let token = token_reply.json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let gw = demo.gateway.listen_addr();
    let call = |path: &str, token: Option<&str>| {
        let mut r = Request::get(format!("http://{gw}{path}"));
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        r.body(body::empty()).unwrap()
    };
    let tampered = format!("{}.AAAA", token.rsplit_once('.').unwrap().0);
    let steps = [
        ("/api/orders/42", Some(token.as_str()), 200),
        ("/api/orders/42", None, 401),
        ("/api/admin", Some(token.as_str()), 403),
        ("/api/orders/42", Some(tampered.as_str()), 401),
        ("/public/hello", None, 200),
    ];
    for (path, token, status) in steps {
        assert_eq!(send(&c, call(path, token)).await.status, status, "{path}");
    }
    // Step 7: 5 per minute for orders-readers, one already spent in step 2.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            send(&c, call("/api/orders/42", Some(&token)))
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429]);
    let text = demo.walkthrough();
    assert!(text.contains(&demo.issuer.token_url()), "{text}");
    assert!(
        text.contains(&format!("http://{gw}/api/orders/42")),
        "{text}"
    );
}

#[test]
fn the_demo_command_prints_the_walkthrough_and_stops_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("demo.toml");
    std::fs::write(&file, demo_config_on_port_0()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_jwtgate"))
        .args(["demo", "--config", file.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    let mut printed = Vec::new();
    for line in lines.by_ref() {
        let done = line.starts_with("Press Ctrl-C");
        printed.push(line);
        if done {
            break;
        }
    }
    let text = printed.join("\n");
    for expected in [
        "grant_type=password",
        "401",
        "403",
        "Authorization: Bearer $TOKEN",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn the_demo_refuses_a_configuration_without_a_demo_table() {
    let out = Command::new(env!("CARGO_BIN_EXE_jwtgate"))
        .args([
            "demo",
            "--config",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("config/jwtgate.toml")
                .to_str()
                .unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [demo] table"));
}
