//! A bounded schemathesis run (GraphQL mode) against `fleetledger serve`: generated queries and
//! mutations for every operation, anonymous and as an ADMIN, must never get an HTTP 5xx, a
//! non-JSON answer or an error without a code or with the code INTERNAL. A refusal stores
//! nothing: the anonymous run, refused wherever it would write, must leave the log empty, and
//! in the ADMIN run every answer with errors and no data must leave the log where it was
//! (tests/schemathesis/hooks.py holds the checks and the strategies for the API's scalars).
//!
//! scripts/test (the README's test command) installs schemathesis into
//! ~/.cache/fleetledger/schemathesis when it is missing; FLEETLEDGER_SCHEMATHESIS points at
//! another installation.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Serve, admin_token, gql, in_days};
use eventstore::testing::TestDatabase;
use serde_json::json;

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

/// A signed-in run: the token schemathesis sends, and another session's token the hooks read
/// the log with.
struct SignedIn {
    token: String,
    reader: String,
    /// Ids of what exists, for the UUID strategy.
    ids: Vec<String>,
}

/// A branch, two cars and a held booking of the admin's; their ids.
async fn seed(addr: &str, admin: &str) -> Vec<String> {
    gql(
        addr,
        Some(admin),
        "mutation { addBranch(input: { code: \"LIS\", name: \"Lisbon\", city: \"Lisbon\", \
         position: { latitude: 38.72, longitude: -9.14 } }) { code } }",
        json!({}),
    )
    .await;
    let mut ids = Vec::new();
    for make in ["Fiat", "Seat"] {
        let car = gql(
            addr,
            Some(admin),
            "mutation($m: String!) { addCar(input: { make: $m, model: \"Y\", year: 2024, \
             class: ECONOMY, seats: 4, transmission: MANUAL, fuel: PETROL, dailyRate: \"40.00\", \
             currency: \"EUR\", branchCode: \"LIS\" }) { id } }",
            json!({ "m": make }),
        )
        .await;
        ids.push(car["addCar"]["id"].as_str().unwrap().to_owned());
    }
    let booking = gql(
        addr,
        Some(admin),
        "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id } }",
        json!({ "i": { "carId": ids[0], "pickupAt": in_days(3), "returnAt": in_days(5) } }),
    )
    .await;
    ids.push(booking["requestBooking"]["id"].as_str().unwrap().to_owned());
    ids
}

/// Run schemathesis against `addr` (signed in when `signed_in` is given; then also checking,
/// one request at a time, that refused requests leave the log alone); its report on failure.
fn run(addr: &str, signed_in: Option<&SignedIn>) {
    let token = signed_in.map(|s| s.token.as_str());
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
            if token.is_some() {
                "no_internal_error,refusal_stores_nothing"
            } else {
                "no_internal_error"
            },
            "--hypothesis-max-examples",
            "25",
            "--hypothesis-deadline",
            "None",
            "--hypothesis-seed",
            "20261207",
            "--hypothesis-database",
            "none",
            "--workers",
            // One at a time when each call's effect on the log is checked.
            if token.is_some() { "1" } else { "2" },
            "--no-color",
        ]);
    if let Some(signed_in) = signed_in {
        command
            .args(["-H", &format!("Authorization: Bearer {}", signed_in.token)])
            // Ending its own sessions (endSessions without a user, too) would leave the rest of the run anonymous (both are
            // tested in api/tests/access.rs).
            .args(["--exclude-name", "Mutation.logout"])
            .args(["--exclude-name", "Mutation.logoutEverywhere"])
            .args(["--exclude-name", "Mutation.endSessions"])
            .env("FLEETLEDGER_ST_LOG_URL", format!("http://{addr}/graphql"))
            .env("FLEETLEDGER_ST_LOG_TOKEN", &signed_in.reader)
            .env("FLEETLEDGER_ST_IDS", signed_in.ids.join(","));
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
    if token.is_some() {
        assert!(report.contains("refusal_stores_nothing"), "{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_never_get_an_internal_error_or_a_5xx() {
    let db = TestDatabase::create().await;
    let serve = Serve::start(&db.url(), &[("FLEETLEDGER_RATE_LIMIT", "0")]);
    let admin = SignedIn {
        token: admin_token(&serve.addr).await,
        reader: admin_token(&serve.addr).await,
        ids: Vec::new(),
    };
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
    // Something to act on: generated UUIDs are drawn from these ids now and then
    // (FLEETLEDGER_ST_IDS), so signed-in requests reach real cars and bookings.
    let ids = seed(&serve.addr, &admin.token).await;
    let admin = SignedIn { ids, ..admin };
    let seeded: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(db.store().pool())
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || run(&addr, Some(&admin)))
        .await
        .unwrap();
    // Signed in, generated requests did write (branches, cars, …): the check that refusals
    // stored nothing had writes to tell them from.
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(db.store().pool())
        .await
        .unwrap();
    assert!(
        events > seeded,
        "no generated request wrote anything as ADMIN ({events} events, {seeded} seeded)"
    );
    drop(serve);
}
