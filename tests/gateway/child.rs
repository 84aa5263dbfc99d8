//! A `jwtgate run` child process, the addresses it logged and its stderr lines.
//!
//! Shared by the tests that run the binary (cli.rs, redis.rs) and by the training run of the
//! profile-guided build (examples/pgo_train.rs includes this file with `#[path]`), so that both
//! start and stop the gateway the same way.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a starting gateway may take to log its addresses.
const START: Duration = Duration::from_secs(30);

pub(crate) struct Child {
    pub(crate) process: std::process::Child,
    /// The proxy listener's address.
    pub(crate) addr: SocketAddr,
    /// The admin listener's address, when the configuration has `admin_listen`.
    #[allow(dead_code, reason = "the PGO training reads it; no test does")]
    pub(crate) admin: Option<SocketAddr>,
    /// The stderr lines logged after the addresses. A thread reads stderr to its end, so the
    /// child's writes never block.
    pub(crate) log: mpsc::Receiver<String>,
}

impl Child {
    /// Runs `binary run --log-format json --config config` with `RUST_LOG=rust_log` and `env`
    /// added to its environment. Returns once the gateway has logged its listening address,
    /// and its admin address if `config` names one; otherwise kills it and says what it logged.
    pub(crate) fn spawn(
        binary: &Path,
        config: &Path,
        rust_log: &str,
        env: &[(&str, &Path)],
    ) -> Result<Child, String> {
        // Ask the gateway's own configuration loader, so that the wait is for exactly the
        // listeners the child will open.
        let expect_admin = jwtgate::config::Config::load(config)
            .map_err(|e| e.to_string())?
            .server
            .admin_listen
            .is_some();
        let mut process = Command::new(binary)
            .args(["run", "--log-format", "json", "--config"])
            .arg(config)
            .env("RUST_LOG", rust_log)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", binary.display()))?;
        let stderr = process.stderr.take().expect("stderr is piped");
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut addr, mut admin) = (None, None);
        let mut said = Vec::new();
        while addr.is_none() || (expect_admin && admin.is_none()) {
            let Ok(line) = log.recv_timeout(START) else {
                let _ = process.kill();
                let _ = process.wait();
                return Err(format!(
                    "{} did not log its addresses; it said:\n{}",
                    config.display(),
                    said.join("\n")
                ));
            };
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                let logged = event["addr"].as_str().and_then(|a| a.parse().ok());
                match event["message"].as_str() {
                    Some("gateway listening") => addr = logged,
                    Some("admin listening") => admin = logged,
                    _ => {}
                }
            }
            said.push(line);
        }
        Ok(Child {
            process,
            addr: addr.expect("the loop ends with an address"),
            admin,
            log,
        })
    }

    /// Sends SIGTERM and waits for the exit status.
    pub(crate) fn terminate(&mut self) -> Result<ExitStatus, String> {
        let pid = self.process.id().to_string();
        let kill = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .map_err(|e| format!("kill: {e}"))?;
        if !kill.success() {
            return Err(format!("kill -TERM {pid}: {kill}"));
        }
        self.process.wait().map_err(|e| format!("wait: {e}"))
    }
}

impl Drop for Child {
    /// A test or training that failed leaves no gateway behind (after `terminate` this finds
    /// it gone).
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
