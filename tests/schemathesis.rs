//! A bounded schemathesis run (GraphQL mode) against `fleetledger serve`: generated queries and
//! mutations for every operation, anonymous and as an ADMIN, must never get an HTTP 5xx, a
//! non-JSON answer or an error without a code or with the code INTERNAL, and the anonymous
//! run, refused wherever it would write, must leave the log empty
//! (tests/schemathesis/hooks.py holds the check and the strategies for the API's scalars).
//!
//! scripts/test (the README's test command) installs schemathesis into
//! ~/.cache/fleetledger/schemathesis when it is missing; FLEETLEDGER_SCHEMATHESIS points at
//! another installation.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Serve, admin_token};
use eventstore::testing::TestDatabase;

fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("FLEETLEDGER_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    let path = Path::new(&home).join(".cache/fleetledger/schemathesis/bin/schemathesis");
    assert!(
        path.exists(),
        "schemathesis is not installed at {}: run scripts/test (the README's test command), or \
         set FLEETLEDGER_SCHEMATHESIS",
        path.display()
    );
    path
}

/// Run schemathesis against `addr` (with `token` when given); its report on failure.
fn run(addr: &str, token: Option<&str>) {
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis");
    let mut command = Command::new(schemathesis());
    command
        .current_dir(&hooks)
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args([
            "run",
            &format!("http://{addr}/graphql"),
            "--checks",
            "no_internal_error",
            "--hypothesis-max-examples",
            "25",
            "--hypothesis-deadline",
            "None",
            "--hypothesis-seed",
            "20261207",
            "--hypothesis-database",
            "none",
            "--workers",
            "2",
            "--no-color",
        ]);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let out = command.output().expect("run schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found answers without a proper error code ({}):\n{report}\n{}",
        if token.is_some() {
            "as ADMIN"
        } else {
            "anonymous"
        },
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("no_internal_error"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_never_get_an_internal_error_or_a_5xx() {
    let db = TestDatabase::create().await;
    let serve = Serve::start(&db.url(), &[("FLEETLEDGER_RATE_LIMIT", "0")]);
    let admin = admin_token(&serve.addr).await;
    let addr = serve.addr.clone();
    let anonymous = addr.clone();
    tokio::task::spawn_blocking(move || run(&anonymous, None))
        .await
        .unwrap();
    // Every mutation that writes to the log needs a signed-in caller: the anonymous run was
    // refused throughout, and a refusal stores nothing.
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(db.store().pool())
        .await
        .unwrap();
    assert_eq!(events, 0, "refused requests appended events");
    tokio::task::spawn_blocking(move || run(&addr, Some(&admin)))
        .await
        .unwrap();
    drop(serve);
}
