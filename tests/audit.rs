//! Auditors' tools end to end: tampering of four kinds (altered payload, deleted event, inserted
//! event, reordered pair) is caught by `verify`, by `verify-export` on an export, and against an
//! anchor taken before; a chain rewritten consistently is caught by the anchor alone.

use std::process::Command;

use commands::{CommandContext, Executor, ExecutorConfig};
use domain::car::{Car, CarClass, CarCommand, CarDetails, FuelType, Transmission};
use domain::{Currency, Money};
use eventstore::hash::HashedFields;
use eventstore::testing::TestDatabase;
use eventstore::{EventStore, StreamId};
use serde_json::{Value, json};
use uuid::Uuid;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn fleetledger(db: &TestDatabase, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetledger"))
        .args(args)
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run fleetledger");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn usd(minor: i64) -> Money {
    Money::new(minor, Currency::USD)
}

/// Two cars: A with 4 events, B with 2. Returns their ids.
async fn history(store: &EventStore) -> (String, String) {
    let cars: Executor<Car> = Executor::new(store.clone(), (), ExecutorConfig::default());
    let ctx = CommandContext::new("staff-1");
    let mut ids = Vec::new();
    for changes in [3, 1] {
        let id = Uuid::now_v7();
        let register = CarCommand::Register {
            id,
            details: CarDetails {
                make: "Seat".into(),
                model: "Ibiza".into(),
                year: 2022,
                class: CarClass::Compact,
                seats: 5,
                transmission: Transmission::Manual,
                fuel: FuelType::Petrol,
                features: vec!["ac".into()],
            },
            daily_rate: usd(4_000),
            branch: "MAD".into(),
        };
        cars.execute(&id.to_string(), register, &ctx).await.unwrap();
        for n in 1..=changes {
            let cmd = CarCommand::ChangeDailyRate {
                daily_rate: usd(4_000 + n * 100),
            };
            cars.execute(&id.to_string(), cmd, &ctx).await.unwrap();
        }
        ids.push(id.to_string());
    }
    (ids.remove(0), ids.remove(0))
}

async fn superuser(db: &TestDatabase, sql: &str) {
    sqlx::query(sql)
        .execute(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

struct Audited {
    db: TestDatabase,
    car_a: String,
    anchor: String,
    dir: std::path::PathBuf,
}

impl Drop for Audited {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A clean history, checked by every tool, with an anchor taken.
async fn audited() -> Audited {
    let db = TestDatabase::create().await;
    let (car_a, _car_b) = history(&db.store()).await;
    let dir = std::env::temp_dir().join(format!("fl-audit-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();

    let anchor = fleetledger(&db, &["anchor"]);
    assert_eq!(anchor.code, Some(0), "{}", anchor.stderr);
    let token = anchor.stdout.trim().to_owned();
    assert_eq!(token.split(':').count(), 3, "{token}");

    let verify = fleetledger(&db, &["verify", "--all", "--against-anchor", &token]);
    assert_eq!(verify.code, Some(0), "{}{}", verify.stdout, verify.stderr);
    assert!(
        verify
            .stdout
            .contains("2 streams, 6 events verified, 0 broken"),
        "{}",
        verify.stdout
    );
    assert!(verify.stdout.contains("matches"), "{}", verify.stdout);

    let file = dir.join("clean.jsonl");
    let export = fleetledger(&db, &["export", "-o", file.to_str().unwrap()]);
    assert_eq!(export.code, Some(0), "{}", export.stderr);
    let lines = std::fs::read_to_string(&file).unwrap();
    assert_eq!(lines.lines().count(), 6);
    let first: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    for field in [
        "global_position",
        "transaction_id",
        "event_id",
        "aggregate_type",
        "aggregate_id",
        "version",
        "event_type",
        "event_version",
        "payload",
        "metadata",
        "recorded_at",
        "hash",
    ] {
        assert!(first.get(field).is_some(), "export lacks {field}: {first}");
    }
    let check = fleetledger(&db, &["verify-export", file.to_str().unwrap()]);
    assert_eq!(check.code, Some(0), "{}", check.stdout);

    Audited {
        db,
        car_a,
        anchor: token,
        dir,
    }
}

/// Every tool must see the damage and name the stream and its first broken version.
///
/// An export is in log order, so `verify-export` meets a stream's events in the order they were
/// committed; an event inserted later shows there as a version missing where it should be.
fn assert_detected(a: &Audited, version: i64, export_version: i64, case: &str) {
    let expected = format!("BROKEN car/{}: first broken version {version}", a.car_a);
    let verify = fleetledger(&a.db, &["verify"]);
    assert_eq!(
        verify.code,
        Some(1),
        "{case}: verify passed:\n{}",
        verify.stdout
    );
    assert!(
        verify.stdout.contains(&expected),
        "{case}: verify said:\n{}",
        verify.stdout
    );

    let file = a.dir.join(format!("{case}.jsonl"));
    let export = fleetledger(&a.db, &["export", "-o", file.to_str().unwrap()]);
    assert_eq!(export.code, Some(0), "{case}: {}", export.stderr);
    let check = fleetledger(&a.db, &["verify-export", file.to_str().unwrap()]);
    assert_eq!(
        check.code,
        Some(1),
        "{case}: verify-export passed:\n{}",
        check.stdout
    );
    let expected = format!(
        "BROKEN car/{}: first broken version {export_version}",
        a.car_a
    );
    assert!(
        check.stdout.contains(&expected),
        "{case}: verify-export said:\n{}",
        check.stdout
    );

    let anchored = fleetledger(&a.db, &["verify", "--all", "--against-anchor", &a.anchor]);
    assert_eq!(
        anchored.code,
        Some(1),
        "{case}: anchor check passed:\n{}",
        anchored.stdout
    );
    // The anchor check recomputes the chains it covers: it can never pass where verify fails.
    assert!(
        anchored.stdout.contains("BROKEN anchor"),
        "{case}: {}",
        anchored.stdout
    );
    assert!(
        !anchored.stdout.contains("matches:"),
        "{case}: {}",
        anchored.stdout
    );
}

async fn disable_append_only(db: &TestDatabase) {
    superuser(db, "ALTER TABLE events DISABLE TRIGGER events_append_only").await;
}

#[tokio::test]
async fn an_altered_payload_is_detected() {
    let a = audited().await;
    disable_append_only(&a.db).await;
    superuser(&a.db, &format!(
        "UPDATE events SET payload = jsonb_set(payload, '{{to,minor}}', '1') WHERE aggregate_id = '{}' AND version = 3",
        a.car_a
    ))
    .await;
    assert_detected(&a, 3, 3, "altered");
}

#[tokio::test]
async fn a_deleted_event_is_detected() {
    let a = audited().await;
    disable_append_only(&a.db).await;
    superuser(
        &a.db,
        &format!(
            "DELETE FROM events WHERE aggregate_id = '{}' AND version = 2",
            a.car_a
        ),
    )
    .await;
    assert_detected(&a, 2, 2, "deleted");
}

#[tokio::test]
async fn an_inserted_event_is_detected() {
    let a = audited().await;
    disable_append_only(&a.db).await;
    let id = &a.car_a;
    // Make room at version 2, then forge an event there whose own link is correct.
    superuser(&a.db, &format!("UPDATE events SET version = version + 1000 WHERE aggregate_id = '{id}' AND version >= 2")).await;
    superuser(&a.db, &format!("UPDATE events SET version = version - 999 WHERE aggregate_id = '{id}' AND version > 1000")).await;
    let v1 =
        a.db.store()
            .read_stream_raw(&StreamId::new("car", id), 1, Some(1))
            .await
            .unwrap()
            .remove(0);
    let payload =
        json!({"from": {"minor": 4000, "currency": "USD"}, "to": {"minor": 1, "currency": "USD"}});
    let forged = HashedFields {
        event_id: Uuid::now_v7(),
        aggregate_type: "car",
        aggregate_id: id,
        version: 2,
        event_type: "DailyRateChanged",
        event_version: 1,
        payload: &payload,
        metadata: &v1.metadata,
        recorded_at: v1.recorded_at,
    };
    let hash = forged.chain_hash(&v1.hash);
    sqlx::query(
        "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, event_version, \
         payload, metadata, recorded_at, hash) VALUES ($1, 'car', $2, 2, 'DailyRateChanged', 1, $3, $4, $5, $6)",
    )
    .bind(forged.event_id)
    .bind(id)
    .bind(&payload)
    .bind(&v1.metadata)
    .bind(v1.recorded_at)
    .bind(hash.as_slice())
    .execute(&a.db.pool)
    .await
    .unwrap();
    assert_detected(&a, 3, 2, "inserted");
}

#[tokio::test]
async fn a_reordered_pair_is_detected() {
    let a = audited().await;
    disable_append_only(&a.db).await;
    let id = &a.car_a;
    superuser(
        &a.db,
        &format!("UPDATE events SET version = 100 WHERE aggregate_id = '{id}' AND version = 2"),
    )
    .await;
    superuser(
        &a.db,
        &format!("UPDATE events SET version = 2 WHERE aggregate_id = '{id}' AND version = 3"),
    )
    .await;
    superuser(
        &a.db,
        &format!("UPDATE events SET version = 3 WHERE aggregate_id = '{id}' AND version = 100"),
    )
    .await;
    assert_detected(&a, 2, 2, "reordered");
}

/// Someone who can write the table alters event 2 and recomputes every later hash: each chain
/// is consistent again, and only the anchor kept elsewhere shows the change.
#[tokio::test]
async fn a_consistently_rewritten_chain_is_caught_by_the_anchor() {
    let a = audited().await;
    disable_append_only(&a.db).await;
    let stream = StreamId::new("car", &a.car_a);
    let mut events =
        a.db.store()
            .read_stream_raw(&stream, 1, None)
            .await
            .unwrap();
    events[1].payload["to"]["minor"] = json!(1);
    let mut previous = events[0].hash.clone();
    for event in events.iter_mut().skip(1) {
        event.hash = HashedFields::of(event).chain_hash(&previous).to_vec();
        previous = event.hash.clone();
        sqlx::query("UPDATE events SET payload = $1, hash = $2 WHERE event_id = $3")
            .bind(&event.payload)
            .bind(&event.hash)
            .bind(event.event_id)
            .execute(&a.db.pool)
            .await
            .unwrap();
    }
    let verify = fleetledger(&a.db, &["verify"]);
    assert_eq!(
        verify.code,
        Some(0),
        "the rewrite is internally consistent:\n{}",
        verify.stdout
    );
    let anchored = fleetledger(&a.db, &["verify", "--against-anchor", &a.anchor]);
    assert_eq!(anchored.code, Some(1), "{}", anchored.stdout);
    assert!(
        anchored.stdout.contains(&format!(
            "BROKEN anchor: car/{}: head was version 4",
            a.car_a
        )),
        "{}",
        anchored.stdout
    );
    // The digest alone (position looked up in the anchors table) works the same.
    let digest = a.anchor.rsplit(':').next().unwrap();
    assert_eq!(
        fleetledger(&a.db, &["verify", "--against-anchor", digest]).code,
        Some(1)
    );
}

#[tokio::test]
async fn an_edited_export_file_is_detected_offline() {
    let a = audited().await;
    let file = a.dir.join("clean.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    let edited = text.replacen("\"minor\":4100", "\"minor\":4099", 1);
    assert_ne!(edited, text);
    let tampered = a.dir.join("edited.jsonl");
    std::fs::write(&tampered, edited).unwrap();
    let check = fleetledger(&a.db, &["verify-export", tampered.to_str().unwrap()]);
    assert_eq!(check.code, Some(1), "{}", check.stdout);
    assert!(
        check
            .stdout
            .contains(&format!("BROKEN car/{}: first broken version 2", a.car_a)),
        "{}",
        check.stdout
    );
}

#[tokio::test]
async fn replay_rebuilds_state_at_a_version_and_an_instant() {
    let a = audited().await;
    let stream = format!("car/{}", a.car_a);
    let at2 = fleetledger(&a.db, &["replay", &stream, "--at-version", "2"]);
    assert_eq!(at2.code, Some(0), "{}", at2.stderr);
    let state: Value = serde_json::from_str(&at2.stdout).unwrap();
    assert_eq!(state["version"], 2);
    assert_eq!(state["state"]["daily_rate"]["minor"], 4_100);

    let latest: Value =
        serde_json::from_str(&fleetledger(&a.db, &["replay", &stream]).stdout).unwrap();
    assert_eq!(latest["version"], 4);
    assert_eq!(latest["state"]["daily_rate"]["minor"], 4_300);

    let events =
        a.db.store()
            .read_stream(&StreamId::new("car", &a.car_a), 1, None)
            .await
            .unwrap();
    let instant = events[0].recorded_at.to_rfc3339();
    let then: Value =
        serde_json::from_str(&fleetledger(&a.db, &["replay", &stream, "--as-of", &instant]).stdout)
            .unwrap();
    assert_eq!(then["version"], 1);
    assert_eq!(then["state"]["daily_rate"]["minor"], 4_000);

    let unknown = fleetledger(&a.db, &["replay", "spaceship/1"]);
    assert_ne!(unknown.code, Some(0));
    assert!(
        unknown.stderr.contains("unknown aggregate type"),
        "{}",
        unknown.stderr
    );
}

/// Seeded demo data (telemetry floats, money, long histories) verifies, and so does an anchor
/// taken over it: what `seed` appends is what `verify` reads back.
#[tokio::test]
async fn seed_then_verify_all_and_the_anchor_are_ok() {
    let db = TestDatabase::create().await;
    let seeded = fleetledger(
        &db,
        &[
            "seed",
            "--cars",
            "12",
            "--customers",
            "6",
            "--bookings",
            "60",
            "--readings-per-rental",
            "6",
            "--seed",
            "7",
        ],
    );
    assert_eq!(seeded.code, Some(0), "{}", seeded.stderr);
    // One demo account per role, printed with their password.
    for login in [
        "ADMIN      admin@seed.fleetledger.test",
        "AUDITOR    auditor@seed.fleetledger.test",
        "ANALYST    analyst@seed.fleetledger.test",
        "INTEGRATOR integrator@seed.fleetledger.test",
        "CUSTOMER   customer1@seed.fleetledger.test … customer6@seed.fleetledger.test",
    ] {
        assert!(
            seeded.stdout.contains(login),
            "{login} not in {}",
            seeded.stdout
        );
    }
    assert!(
        seeded.stdout.contains("password \"fleetledger-demo\""),
        "{}",
        seeded.stdout
    );
    let roles: Vec<(String, i64)> =
        sqlx::query_as("SELECT role, count(*) FROM users GROUP BY role ORDER BY role")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let roles: Vec<(&str, i64)> = roles.iter().map(|(r, n)| (r.as_str(), *n)).collect();
    assert_eq!(
        roles,
        [
            ("ADMIN", 1),
            ("ANALYST", 1),
            ("AUDITOR", 1),
            ("CUSTOMER", 6),
            ("INTEGRATOR", 1)
        ]
    );
    let telemetry: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'telemetry'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(telemetry > 0, "the seed recorded telemetry");

    let verify = fleetledger(&db, &["verify", "--all"]);
    assert_eq!(verify.code, Some(0), "{}{}", verify.stdout, verify.stderr);
    assert!(!verify.stdout.contains("BROKEN"), "{}", verify.stdout);

    let anchor = fleetledger(&db, &["anchor"]);
    assert_eq!(anchor.code, Some(0), "{}", anchor.stderr);
    let token = anchor.stdout.trim();
    let against = fleetledger(&db, &["verify", "--all", "--against-anchor", token]);
    assert_eq!(
        against.code,
        Some(0),
        "{}{}",
        against.stdout,
        against.stderr
    );
    assert!(against.stdout.contains("matches"), "{}", against.stdout);
}

/// Asked for more bookings than the cars' calendars hold, `seed` says how many it made and why.
#[tokio::test]
async fn seed_says_when_it_made_fewer_bookings_than_asked() {
    let db = TestDatabase::create().await;
    let seeded = fleetledger(
        &db,
        &[
            "seed",
            "--cars",
            "1",
            "--customers",
            "1",
            "--bookings",
            "500",
            "--days",
            "10",
            "--seed",
            "3",
        ],
    );
    assert_eq!(seeded.code, Some(0), "{}", seeded.stderr);
    let made: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'BookingHeld'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(made > 0 && made < 500, "{made}");
    let line = format!(
        "made {made} of the 500 bookings asked for: 1 car(s) over 10 days of history and 30 days \
         ahead hold no more without overlapping (ask for more --cars or --days)"
    );
    assert!(seeded.stdout.contains(&line), "{}", seeded.stdout);
}
