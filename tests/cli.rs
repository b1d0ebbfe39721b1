//! The `fleetledger` binary end to end: migrate, verify, and the embedded default of `serve`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eventstore::testing::TestDatabase;
use eventstore::{EventMetadata, ExpectedVersion, NewEvent, StreamAppend, StreamId};
use serde_json::json;

fn fleetledger() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetledger"));
    cmd.env_remove("DATABASE_URL").env("RUST_LOG", "info");
    cmd
}

#[tokio::test]
async fn migrate_then_verify_passes_and_fails_on_tampering() {
    let db = TestDatabase::create().await;
    let migrate = fleetledger()
        .arg("migrate")
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );

    let store = db.store();
    for id in ["a", "b"] {
        store
            .append(
                &[StreamAppend::new(
                    StreamId::new("car", id),
                    ExpectedVersion::NoStream,
                    vec![
                        NewEvent::new("Noted", 1, json!({"n": 1})),
                        NewEvent::new("Noted", 1, json!({"n": 2})),
                    ],
                )],
                &EventMetadata::for_actor("test"),
            )
            .await
            .unwrap();
    }
    let verify = |args: &[&str]| {
        fleetledger()
            .arg("verify")
            .args(args)
            .env("DATABASE_URL", db.url())
            .output()
            .unwrap()
    };
    let ok = verify(&["--all"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("2 streams, 4 events verified, 0 broken"));

    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_append_only")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE events SET payload = '{\"n\": 9}' WHERE aggregate_id = 'b' AND version = 2",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let bad = verify(&["--all"]);
    assert_eq!(bad.status.code(), Some(1));
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(
        out.contains("BROKEN car/b: first broken version 2"),
        "{out}"
    );
    assert!(verify(&["--stream", "car/a"]).status.success());
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stop_embedded(data: &Path) {
    let _ = fleetledger()
        .args(["db", "stop"])
        .env("FLEETLEDGER_DATA_DIR", data)
        .output();
}

/// With no DATABASE_URL, `serve` starts its own PostgreSQL under the data dir, answers
/// `/readyz`, shuts down cleanly on SIGTERM, and the next run reuses the same cluster.
#[tokio::test]
async fn serve_runs_on_the_embedded_cluster_and_reuses_it() {
    let data = std::env::temp_dir().join(format!("fl-embedded-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&data).unwrap();
    // The cluster may run as an unprivileged user (when tests run as root): let it in.
    Command::new("chmod")
        .arg("755")
        .arg(&data)
        .status()
        .unwrap();

    let mut token = String::new();
    for run in 0..2 {
        let mut child = fleetledger()
            .arg("serve")
            .env("FLEETLEDGER_DATA_DIR", &data)
            .env_remove("FLEETLEDGER_JWT_SECRET")
            .env("FLEETLEDGER_HTTP_ADDR", "127.0.0.1:0")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let server = Server(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let addr = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("run {run}: serve never said it was listening"));
            if let Some(rest) = line
                .split("addr=")
                .nth(1)
                .filter(|_| line.contains("listening"))
            {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        // Ready once the database answers and the in-process projectors run.
        let ready_by = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
            if ready.status() == 200 {
                break;
            }
            assert!(
                Instant::now() < ready_by,
                "run {run}: never ready: {}",
                ready.text().await.unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The GraphQL API answers on the same server.
        let branches: serde_json::Value = reqwest::Client::new()
            .post(format!("http://{addr}/graphql"))
            .json(&serde_json::json!({ "query": "{ branches { code } }" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            branches["data"]["branches"],
            serde_json::json!([]),
            "run {run}"
        );
        assert!(data.join("postgres").join("PG_VERSION").exists());
        // Tokens survive a restart: the signing key made on the first run is kept (0600).
        let gql = |query: serde_json::Value, token: Option<String>| {
            let mut request = reqwest::Client::new()
                .post(format!("http://{addr}/graphql"))
                .json(&query);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request.send()
        };
        if run == 0 {
            let registered: serde_json::Value = gql(
                serde_json::json!({ "query": "mutation { register(input: { email: \"kim@example.com\", \
                    password: \"a long enough password\", name: \"Kim\" }) { token } }" }),
                None,
            )
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
            token = registered["data"]["register"]["token"]
                .as_str()
                .unwrap()
                .to_owned();
        } else {
            let me: serde_json::Value = gql(
                serde_json::json!({ "query": "{ me { email } }" }),
                Some(token.clone()),
            )
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
            assert_eq!(me["data"]["me"]["email"], "kim@example.com", "{me}");
        }
        use std::os::unix::fs::PermissionsExt as _;
        let key = std::fs::metadata(data.join("jwt-secret")).unwrap();
        assert_eq!(key.permissions().mode() & 0o777, 0o600);

        let pid = server.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let mut server = server;
        let status = server.0.wait().unwrap();
        assert!(status.success(), "run {run}: serve exited with {status}");
    }
    // The cluster outlives the server; `db status` says so and how to connect.
    let status = fleetledger()
        .args(["db", "status"])
        .env("FLEETLEDGER_DATA_DIR", &data)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(said.contains(": running"), "{said}");
    assert!(
        said.contains("connect with: psql 'postgres:///fleetledger?host="),
        "{said}"
    );
    stop_embedded(&data);
    let _ = std::fs::remove_dir_all(&data);
}

/// Every command explains itself: a description and an example in its `--help`.
#[test]
fn every_command_has_a_description_and_an_example() {
    for command in [
        "serve",
        "schema",
        "policy",
        "migrate",
        "worker",
        "project",
        "seed",
        "projections",
        "relay",
        "verify",
        "anchor",
        "export",
        "verify-export",
        "replay",
        "bench",
        "db",
    ] {
        let out = fleetledger().args([command, "--help"]).output().unwrap();
        assert!(out.status.success(), "{command}");
        let help = String::from_utf8(out.stdout).unwrap();
        let description = help.lines().next().unwrap_or_default();
        assert!(description.len() > 20, "{command}: {help}");
        assert!(
            help.contains("Example"),
            "{command} --help has no example:\n{help}"
        );
    }
}

/// `fleetledger worker` creates the bootstrap admin once, runs, and stops on SIGTERM.
#[tokio::test]
async fn the_worker_bootstraps_the_first_admin_and_stops_on_sigterm() {
    let db = TestDatabase::create().await;
    for _ in 0..2 {
        let mut child = fleetledger()
            .arg("worker")
            .env("DATABASE_URL", db.url())
            .env("FLEETLEDGER_BOOTSTRAP_ADMIN_EMAIL", "Admin@Example.com")
            .env(
                "FLEETLEDGER_BOOTSTRAP_ADMIN_PASSWORD",
                "correct horse battery",
            )
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        loop {
            let line = lines.next().expect("worker exited early").unwrap();
            assert!(!line.contains("ERROR"), "{line}");
            if line.contains("worker running") {
                break;
            }
        }
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        assert!(child.wait().unwrap().success());
    }
    let admins: Vec<(String, String)> = sqlx::query_as("SELECT email, role FROM users")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        admins,
        vec![("admin@example.com".to_owned(), "ADMIN".to_owned())]
    );
}

/// `fleetledger schema` prints the SDL committed as docs/schema.graphql.
#[test]
fn the_policy_tables_in_the_docs_are_the_one_enforced() {
    let out = fleetledger().arg("policy").output().unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    for doc in ["docs/security.md", "docs/api.md"] {
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(doc)).unwrap();
        let (_, rest) = text
            .split_once("<!-- policy:begin -->\n")
            .unwrap_or_else(|| panic!("{doc} marks where the policy table begins"));
        let (table, _) = rest
            .split_once("<!-- policy:end -->")
            .unwrap_or_else(|| panic!("{doc} marks where the policy table ends"));
        assert!(
            table == printed,
            "{doc}'s policy table differs from `fleetledger policy`: paste its output between \
             the markers"
        );
    }
}

#[test]
fn schema_prints_the_committed_sdl() {
    let out = fleetledger().arg("schema").output().unwrap();
    assert!(out.status.success());
    let committed =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schema.graphql"))
            .unwrap();
    assert!(
        String::from_utf8(out.stdout).unwrap() == committed,
        "docs/schema.graphql differs from `fleetledger schema`"
    );
}

#[tokio::test]
async fn worker_status_lists_the_steps_that_wait_for_staff() {
    let db = eventstore::testing::TestDatabase::create().await;
    let status = || {
        fleetledger()
            .args(["worker", "status"])
            .env("DATABASE_URL", db.url())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let quiet = status();
    assert_eq!(quiet.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&quiet.stdout),
        "steps: 0 due, 0 waiting, 0 stuck\n"
    );
    let step = uuid::Uuid::now_v7();
    let booking = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO workflow_steps (id, kind, booking_id, due_at, attempts, last_error, stuck_at) \
         VALUES ($1, 'refund', $2, now(), 1, 'refund declined by sandbox-card: no', \
         '2026-12-07T10:00:00Z')",
    )
    .bind(step)
    .bind(booking)
    .execute(&db.pool)
    .await
    .unwrap();
    let stuck = status();
    assert_eq!(
        stuck.status.code(),
        Some(3),
        "a stuck step makes the status fail"
    );
    assert_eq!(
        String::from_utf8_lossy(&stuck.stdout),
        format!(
            "steps: 0 due, 0 waiting, 1 stuck\nstuck {step} refund booking {booking} since \
             2026-12-07T10:00:00+00:00 after 1 attempt(s): refund declined by sandbox-card: no\n"
        )
    );
}

/// `fleetledger bench <args> --json` on a fresh database: its one JSON object.
async fn bench_json(args: &[&str]) -> serde_json::Value {
    let db = TestDatabase::create().await;
    let out = fleetledger()
        .arg("bench")
        .args(args)
        .arg("--json")
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `bench append --json` prints one JSON object: each scenario's median rate for us and both
/// baselines, and our ratio to each (a tiny run: the shape is what is checked, not speed).
#[tokio::test]
async fn bench_append_prints_its_figures_as_json() {
    let figures = bench_json(&[
        "append",
        "--sequential",
        "10",
        "--tasks",
        "2",
        "--per-task",
        "3",
        "--hot-per-task",
        "3",
        "--rounds",
        "1",
        "--warmup",
        "1",
    ])
    .await;
    assert_eq!(figures["failed"], 0);
    for scenario in ["sequential", "distinct", "hot"] {
        let s = &figures["append"][scenario];
        for key in [
            "ours",
            "postgres_es",
            "raw",
            "ratio_raw",
            "ratio_postgres_es",
        ] {
            assert!(
                s[key].as_f64().is_some_and(|v| v > 0.0),
                "{scenario}.{key}: {s}"
            );
        }
        let ratio = s["ours"].as_f64().unwrap() / s["raw"].as_f64().unwrap();
        assert!(
            (ratio - s["ratio_raw"].as_f64().unwrap()).abs() < 1e-9,
            "{s}"
        );
    }
}

/// `bench projections --json` names every figure: read rates, each rebuild with its ratios,
/// and the lag percentiles of each reader (a tiny run: the shape is what is checked).
#[tokio::test]
async fn bench_projections_prints_its_figures_as_json() {
    let figures = bench_json(&[
        "projections",
        "--bookings",
        "50",
        "--cars",
        "10",
        "--lag-rate",
        "100",
        "--lag-seconds",
        "1",
    ])
    .await;
    let p = &figures["projections"];
    assert!(p["events"].as_u64().is_some_and(|n| n > 0), "{p}");
    let ratio = p["read"]["reader_events_per_s"].as_f64().unwrap()
        / p["read"]["copy_events_per_s"].as_f64().unwrap();
    assert!((ratio - p["read"]["ratio_reader_copy"].as_f64().unwrap()).abs() < 1e-9);
    let mut rebuilt: Vec<&str> = p["rebuild"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    rebuilt.sort_unstable();
    assert_eq!(
        rebuilt,
        [
            "all_one_after_another",
            "all_one_shared_read",
            "analytics",
            "availability",
            "history",
            "search",
            "telemetry"
        ]
    );
    for reader in ["subscription", "search", "availability"] {
        for q in ["p50", "p99", "max"] {
            assert!(
                p["lag_ms"][reader][q].as_f64().is_some(),
                "{reader}.{q}: {p}"
            );
        }
    }
}

/// `bench search --json` prints one JSON object: for each fleet size, the three phases (HTTP
/// search, trivial query, SQL) with their rates and percentiles, both ratios, and the scaling
/// from the smallest size to the largest (a tiny run: the shape and that every request
/// succeeded are checked, not speed).
#[tokio::test]
async fn bench_search_prints_its_figures_as_json() {
    let figures = bench_json(&[
        "search",
        "--cars",
        "20,40",
        "--branches",
        "6",
        "--seconds",
        "1",
        "--connections",
        "2",
    ])
    .await;
    let sizes = figures["search"]["sizes"].as_object().unwrap();
    let mut names: Vec<&str> = sizes.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["20", "40"]);
    for (cars, size) in sizes {
        for phase in ["search", "trivial", "sql"] {
            let p = &size[phase];
            assert!(
                p["requests"].as_u64().is_some_and(|n| n > 0),
                "{cars} {phase}: {p}"
            );
            assert_eq!(p["errors"], 0, "{cars} {phase}: {p}");
            assert!(p["p99_ms"].as_f64().unwrap() >= p["p50_ms"].as_f64().unwrap());
        }
        let ratio = size["search"]["per_second"].as_f64().unwrap()
            / size["sql"]["per_second"].as_f64().unwrap();
        assert!((ratio - size["api_over_sql"].as_f64().unwrap()).abs() < 1e-9);
        let kinds = size["sql_by_kind"].as_object().unwrap();
        let mut kind_names: Vec<&str> = kinds.keys().map(String::as_str).collect();
        kind_names.sort_unstable();
        assert_eq!(kind_names, ["branch", "class_price", "near", "text"]);
        for (kind, k) in kinds {
            for what in ["page", "count"] {
                let (p50, p99) = (
                    k[format!("{what}_p50_ms")].as_f64().unwrap(),
                    k[format!("{what}_p99_ms")].as_f64().unwrap(),
                );
                assert!(p50 > 0.0 && p99 >= p50, "{cars} {kind} {what}: {k}");
            }
        }
    }
    assert_eq!(figures["search"]["scaling"]["from"], 20);
    assert_eq!(figures["search"]["scaling"]["to"], 40);
}
