//! Shared by the root integration tests: a `fleetledger serve` child process and a GraphQL
//! client for it.

#![allow(dead_code)] // each test binary uses part of it

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

pub(crate) const ADMIN: &str = "admin@fleet.test";
pub(crate) const PASSWORD: &str = "correct horse battery";

/// A `fleetledger serve` process, killed when dropped.
pub(crate) struct Serve {
    child: Child,
    pub(crate) addr: String,
}

impl Serve {
    /// Start `serve` on `database_url` with a bootstrap admin and a fixed signing key, plus
    /// `env`; returns once it listens.
    pub(crate) fn start(database_url: &str, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fleetledger"));
        command
            .arg("serve")
            .env("DATABASE_URL", database_url)
            .env("FLEETLEDGER_HTTP_ADDR", "127.0.0.1:0")
            .env("FLEETLEDGER_BOOTSTRAP_ADMIN_EMAIL", ADMIN)
            .env("FLEETLEDGER_BOOTSTRAP_ADMIN_PASSWORD", PASSWORD)
            .env("FLEETLEDGER_RATE_LIMIT", "100000")
            // A deployment (DATABASE_URL) takes no test tokens unless it names the sandbox.
            .env("FLEETLEDGER_PAYMENT_GATEWAYS", "sandbox")
            .env(
                "FLEETLEDGER_JWT_SECRET",
                "integration-test-secret-integration-test",
            )
            .env_remove("REDIS_URL")
            .env_remove("KAFKA_BROKERS")
            .env_remove("FLEETLEDGER_CRASH_AT")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("start fleetledger serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let show = std::env::var_os("TEST_LOG").is_some();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if show {
                    eprintln!("serve: {line}");
                }
                if let Some(rest) = line
                    .split("addr=")
                    .nth(1)
                    .filter(|_| line.contains("listening"))
                {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("serve says where it listens");
        Self { child, addr }
    }

    /// Wait for the process to end by itself (a crash point), and say how it ended.
    pub(crate) fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("wait for fleetledger serve")
    }

    /// SIGKILL the process now (`Child::kill` sends SIGKILL) and reap it.
    pub(crate) fn kill_9(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.wait()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Send one GraphQL request; the whole answer (data and errors), or the transport error.
pub(crate) async fn gql_raw(
    addr: &str,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> Result<Value, reqwest::Error> {
    let mut request = reqwest::Client::new()
        .post(format!("http://{addr}/graphql"))
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await?.json().await
}

/// Send one GraphQL request that must succeed; its `data`.
pub(crate) async fn gql(addr: &str, token: Option<&str>, query: &str, variables: Value) -> Value {
    let body = gql_raw(addr, token, query, variables)
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"));
    assert!(body.get("errors").is_none(), "{query}: {body}");
    body["data"].clone()
}

/// The admin's token.
pub(crate) async fn admin_token(addr: &str) -> String {
    let data = gql(
        addr,
        None,
        "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
        json!({ "e": ADMIN, "p": PASSWORD }),
    )
    .await;
    data["login"]["token"].as_str().unwrap().to_owned()
}

/// A new customer's token.
pub(crate) async fn customer_token(addr: &str, email: &str) -> String {
    let data = gql(
        addr,
        None,
        "mutation($input: RegisterInput!) { register(input: $input) { token } }",
        json!({ "input": { "email": email, "password": "a long enough password", "name": "Test Renter" } }),
    )
    .await;
    data["register"]["token"].as_str().unwrap().to_owned()
}

/// An hour-aligned instant `days` from now, RFC 3339.
pub(crate) fn in_days(days: i64) -> String {
    use chrono::{DurationRound, TimeDelta, Utc};
    let base = Utc::now().duration_trunc(TimeDelta::hours(1)).unwrap();
    (base + TimeDelta::days(days)).to_rfc3339()
}
