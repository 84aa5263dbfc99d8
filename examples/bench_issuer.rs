//! The local issuer for `scripts/bench/run.sh`: serves keys on 127.0.0.1:PORT for the whole
//! benchmark and writes, into OUTDIR, `issuer.txt` (the issuer URL), `token.txt` (one token),
//! `tokens.txt` (TOKENS tokens of distinct callers, default 10,000) and `pubkey.pem` (for
//! HAProxy).
//!
//! `cargo run --release --example bench_issuer -- PORT OUTDIR [TOKENS]`

use std::time::Duration;

use jwtgate::issuer::{Issuer, IssuerConfig, User};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(18180);
    let out = std::path::PathBuf::from(args.next().unwrap_or_else(|| ".".into()));
    let count: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let issuer = Issuer::start(
        ([127, 0, 0, 1], port).into(),
        IssuerConfig {
            auth_server_id: "bench".into(),
            audience: "api://bench".into(),
            token_lifetime: Duration::from_secs(6 * 3600),
            users: vec![User {
                name: "bench-user".into(),
                password: "unused".into(),
                groups: vec!["bench".into()],
            }],
            clients: vec![],
        },
    )
    .await?;
    std::fs::write(out.join("issuer.txt"), issuer.issuer_url())?;
    std::fs::write(out.join("pubkey.pem"), issuer.public_key_pem())?;
    std::fs::write(out.join("token.txt"), issuer.token_for_user("bench-user"))?;
    let base = issuer.claims_for_user("bench-user");
    let mut many = String::new();
    for i in 0..count {
        let mut claims = base.clone();
        claims["sub"] = format!("user{i}@bench.example").into();
        claims["uid"] = format!("00u{i:017}").into();
        many.push_str(&issuer.sign(&claims));
        many.push('\n');
    }
    std::fs::write(out.join("tokens.txt"), many)?;
    eprintln!("bench issuer ready at {}", issuer.issuer_url());
    std::future::pending::<()>().await;
    Ok(())
}
