//! `jwtgate demo`: a local Okta-compatible issuer, an echo upstream and the gateway, all on
//! loopback, with a printed walk-through of `curl` commands (SPEC §1, §5).
//!
//! Everything comes from one configuration file (`config/demo.toml`): the gateway's own tables,
//! plus `[demo]` for the issuer's users and clients and the two extra listen addresses. When
//! `[demo]` asks for port 0 (the tests do), the bound issuer URL replaces `[okta] issuer` and
//! the bound echo address replaces upstream targets naming `upstream_listen`.

use std::io;
use std::time::Duration;

use crate::config::Config;
use crate::echo::EchoServer;
use crate::issuer::{Issuer, IssuerConfig};
use crate::server::{Gateway, StartError};

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The configuration does not describe a demo (exit code 2).
    #[error("{0}")]
    Config(String),
    /// A listener could not be bound (exit code 1).
    #[error("{what}: cannot listen on {addr}: {source}")]
    Bind {
        /// Which part of the demo.
        what: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The gateway could not start.
    #[error(transparent)]
    Gateway(#[from] StartError),
}

/// A running demo.
#[derive(Debug)]
pub struct Demo {
    /// The local issuer.
    pub issuer: Issuer,
    /// The echo upstream.
    pub echo: EchoServer,
    /// The gateway.
    pub gateway: Gateway,
    config: Config,
}

impl Demo {
    /// Starts issuer, echo upstream and gateway from a configuration with a `[demo]` table,
    /// and waits (up to 10s) for the gateway to hold the issuer's keys.
    ///
    /// # Errors
    ///
    /// No `[demo]` or `[okta]` table, an issuer URL that does not match the demo's, or an
    /// address that cannot be bound.
    pub async fn start(mut config: Config) -> Result<Demo, DemoError> {
        let Some(demo) = config.demo.clone() else {
            return Err(DemoError::Config(
                "the configuration has no [demo] table; use config/demo.toml".into(),
            ));
        };
        let Some(okta) = config.okta.as_mut() else {
            return Err(DemoError::Config(
                "the demo configuration needs an [okta] table".into(),
            ));
        };
        let issuer = Issuer::start(
            demo.issuer_listen,
            IssuerConfig {
                auth_server_id: demo.auth_server_id.clone(),
                audience: okta.audiences.first().cloned().unwrap_or_default(),
                token_lifetime: demo.token_lifetime,
                users: demo.users.clone(),
                clients: demo.clients.clone(),
            },
        )
        .await
        .map_err(|source| DemoError::Bind {
            what: "issuer",
            addr: demo.issuer_listen,
            source,
        })?;
        if demo.issuer_listen.port() == 0 {
            issuer.issuer_url().clone_into(&mut okta.issuer);
        } else if okta.issuer != issuer.issuer_url() {
            return Err(DemoError::Config(format!(
                "[okta] issuer must be {} for the demo's issuer, not {}",
                issuer.issuer_url(),
                okta.issuer
            )));
        }
        let echo = EchoServer::start(demo.upstream_listen)
            .await
            .map_err(|source| DemoError::Bind {
                what: "echo upstream",
                addr: demo.upstream_listen,
                source,
            })?;
        if demo.upstream_listen.port() == 0 {
            let wanted = demo.upstream_listen.to_string();
            let bound: http::uri::Authority = echo
                .addr()
                .to_string()
                .parse()
                .map_err(|_| DemoError::Config("unusable echo address".into()))?;
            for upstream in config.upstreams.values_mut() {
                for target in &mut upstream.targets {
                    if target.authority.as_str() == wanted {
                        target.authority = bound.clone();
                    }
                }
            }
        }
        let gateway = Gateway::start(config.clone()).await?;
        // The first key fetch runs in the background; the walk-through should work at once.
        for _ in 0..500 {
            let ready = gateway
                .live()
                .load()
                .auth
                .as_ref()
                .is_some_and(|a| a.keys().current().is_some());
            if ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Demo {
            issuer,
            echo,
            gateway,
            config,
        })
    }

    /// The walk-through printed by `jwtgate demo`: how to get a token and what each call shows.
    pub fn walkthrough(&self) -> String {
        let gw = format!("http://{}", self.gateway.listen_addr());
        let token_url = self.issuer.token_url();
        let demo = self.config.demo.as_ref();
        let client = demo.and_then(|d| d.clients.first());
        let (client_id, secret) = client.map_or(("client", "secret"), |c| (&c.id, &c.secret));
        let user = |name: &str| demo.and_then(|d| d.users.iter().find(|u| u.name == name));
        let (alice, alice_pw) =
            user("alice").map_or(("alice", "password"), |u| (&u.name, &u.password));
        let admin = self
            .gateway
            .admin_addr()
            .map(|a| format!("   (admin http://{a}/readyz)"))
            .unwrap_or_default();
        format!(
            r#"jwtgate demo is running:
  gateway   {gw}{admin}
  issuer    {issuer}   (local, Okta-compatible)
  upstream  http://{echo}   (echo: answers with what it received)

1. Get an access token for {alice} (group orders-readers) with the password grant:

  TOKEN=$(curl -s -u {client_id}:{secret} \
    -d grant_type=password -d username={alice} -d password={alice_pw} -d scope=orders:read \
    {token_url} | sed -E 's/.*"access_token":"([^"]+)".*/\1/')

2. Call a protected route with it: 200; the echo shows what the upstream received (no token,
   X-Auth-Subject and X-Auth-Groups from the verified claims, RateLimit-* on the response):

  curl -i {gw}/api/orders/42 -H "Authorization: Bearer $TOKEN"

3. The same call without a token: 401

  curl -i {gw}/api/orders/42

4. A route for the admins group: {alice} is not in it, 403

  curl -i {gw}/api/admin -H "Authorization: Bearer $TOKEN"

5. The same token with its signature replaced: 401 invalid_token

  curl -i {gw}/api/orders/42 -H "Authorization: Bearer ${{TOKEN%.*}}.AAAA"

6. A public route needs no token: 200

  curl -i {gw}/public/hello

7. orders-readers may call 5 times a minute: the calls after that get 429 with Retry-After

  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w "%{{http_code}} " {gw}/api/orders/42 -H "Authorization: Bearer $TOKEN"; done; echo

Users: alice (orders-readers), bob (admins, orders-readers), carol (no groups); see config/demo.toml.
Press Ctrl-C to stop.
"#,
            issuer = self.issuer.issuer_url(),
            echo = self.echo.addr(),
        )
    }
}
