//! The executor against a real PostgreSQL: commit results, retries, cache staleness, snapshots.

use commands::{CommandContext, ExecuteError, Executor, ExecutorConfig, RetryPolicy};
use domain::car::{Car, CarClass, CarCommand, CarDetails, CarError, FuelType, Transmission};
use domain::{Currency, Money};
use eventstore::testing::TestDatabase;
use eventstore::{EventStore, EventStoreError, StreamId};
use uuid::Uuid;

fn usd(minor: i64) -> Money {
    Money::new(minor, Currency::USD)
}

fn register(id: Uuid) -> CarCommand {
    CarCommand::Register {
        id,
        details: CarDetails {
            make: "Renault".into(),
            model: "Clio".into(),
            year: 2023,
            class: CarClass::Economy,
            seats: 5,
            transmission: Transmission::Manual,
            fuel: FuelType::Petrol,
            features: vec![],
        },
        daily_rate: usd(3_000),
        branch: "LIS".into(),
    }
}

fn executor(store: &EventStore, config: ExecutorConfig) -> Executor<Car> {
    Executor::new(store.clone(), (), config)
}

fn ctx() -> CommandContext {
    CommandContext::new("user-1").with_trace_id("trace-abc")
}

#[tokio::test]
async fn a_command_returns_its_stored_events_with_positions_and_metadata() {
    let db = TestDatabase::create().await;
    let cars = executor(&db.store(), ExecutorConfig::default());
    let id = Uuid::now_v7();
    let context = ctx();
    let done = cars
        .execute(&id.to_string(), register(id), &context)
        .await
        .unwrap();
    assert_eq!(done.attempts, 1);
    assert_eq!(done.events.len(), 1);
    let event = &done.events[0];
    assert!(event.global_position > 0);
    assert_eq!((event.aggregate_type.as_str(), event.version), ("car", 1));
    assert_eq!(event.event_type, "CarRegistered");
    assert_eq!(event.payload["daily_rate"]["minor"], 3_000);
    let meta = event.typed_metadata().unwrap();
    assert_eq!(meta.actor.as_deref(), Some("user-1"));
    assert_eq!(meta.correlation_id, context.correlation_id);
    assert_eq!(meta.trace_id.as_deref(), Some("trace-abc"));

    let stored = db
        .store()
        .read_stream(&StreamId::new("car", id.to_string()), 1, None)
        .await
        .unwrap();
    assert_eq!(stored, done.events);

    let err = cars
        .execute(
            &id.to_string(),
            CarCommand::ChangeDailyRate {
                daily_rate: usd(3_000),
            },
            &ctx(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ExecuteError::Rejected(CarError::Unchanged)),
        "{err:?}"
    );
    assert_eq!(
        cars.load(&id.to_string()).await.unwrap().head.version,
        1,
        "a rejection writes nothing"
    );
}

#[tokio::test]
async fn snapshot_plus_events_loads_the_same_state_as_events_alone() {
    let db = TestDatabase::create().await;
    let config = ExecutorConfig {
        snapshot_every: 3,
        cache_capacity: 0,
        ..ExecutorConfig::default()
    };
    let cars = executor(&db.store(), config.clone());
    let id = Uuid::now_v7();
    let key = id.to_string();
    cars.execute(&key, register(id), &ctx()).await.unwrap();
    for i in 1..=10 {
        let command = if i % 4 == 0 {
            CarCommand::Relocate {
                branch: format!("B{i}"),
                now: chrono::Utc::now(),
            }
        } else {
            CarCommand::ChangeDailyRate {
                daily_rate: usd(3_000 + i),
            }
        };
        cars.execute(&key, command, &ctx()).await.unwrap();
    }
    let from_snapshot = cars.load(&key).await.unwrap();
    let from_events = cars.load_from_events(&key).await.unwrap();
    assert_eq!(from_snapshot.snapshot_version, Some(9));
    assert_eq!(from_events.snapshot_version, None);
    assert_eq!(from_snapshot.state, from_events.state);
    assert_eq!(from_snapshot.head, from_events.head);
    assert_eq!(from_events.head.version, 11);
    assert_eq!(from_events.state.daily_rate, Some(usd(3_010)));
    assert_eq!(from_events.state.branch.as_deref(), Some("B8"));

    // A snapshot of another state shape is ignored, not trusted.
    let newer_shape = executor(
        &db.store(),
        ExecutorConfig {
            snapshot_state_version: 2,
            ..config
        },
    );
    let loaded = newer_shape.load(&key).await.unwrap();
    assert_eq!(loaded.snapshot_version, None);
    assert_eq!(loaded.state, from_events.state);
}

/// Two executors stand for two processes: their caches and locks are separate, so they meet
/// only at the version check, and retries must make every command land.
#[tokio::test]
async fn a_hot_aggregate_under_two_processes_loses_no_command() {
    let db = TestDatabase::create().await;
    let config = ExecutorConfig {
        retry: RetryPolicy {
            max_attempts: 50,
            ..RetryPolicy::default()
        },
        ..ExecutorConfig::default()
    };
    let a = executor(
        &EventStore::new(db.new_pool("proc-a", 8).await),
        config.clone(),
    );
    let b = executor(&EventStore::new(db.new_pool("proc-b", 8).await), config);
    let id = Uuid::now_v7();
    let key = id.to_string();
    a.execute(&key, register(id), &ctx()).await.unwrap();

    let mut tasks = Vec::new();
    for t in 0..8i64 {
        let cars = if t % 2 == 0 { a.clone() } else { b.clone() };
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut retried = 0;
            for n in 0..10i64 {
                let rate = usd(10_000 + t * 100 + n);
                let done = cars
                    .execute(
                        &key,
                        CarCommand::ChangeDailyRate { daily_rate: rate },
                        &ctx(),
                    )
                    .await
                    .expect("every command lands");
                retried += done.attempts - 1;
            }
            retried
        }));
    }
    let mut retries = 0;
    for t in tasks {
        retries += t.await.unwrap();
    }
    let loaded = a.load_from_events(&key).await.unwrap();
    assert_eq!(loaded.head.version, 81);
    let verify = db
        .store()
        .verify_stream(&StreamId::new("car", &key))
        .await
        .unwrap();
    assert!(verify.is_valid(), "{verify:?}");
    eprintln!("cross-process retries: {retries}");
}

#[tokio::test]
async fn a_stale_cache_never_decides_the_outcome() {
    let db = TestDatabase::create().await;
    let a = executor(&db.store(), ExecutorConfig::default());
    let b = executor(&db.store(), ExecutorConfig::default());
    let id = Uuid::now_v7();
    let key = id.to_string();
    a.execute(&key, register(id), &ctx()).await.unwrap(); // a caches the car at LIS

    // b moves the car; a's cache still says LIS, where "relocate to LIS" would be refused.
    b.execute(
        &key,
        CarCommand::Relocate {
            branch: "OPO".into(),
            now: chrono::Utc::now(),
        },
        &ctx(),
    )
    .await
    .unwrap();
    let back = a
        .execute(
            &key,
            CarCommand::Relocate {
                branch: "LIS".into(),
                now: chrono::Utc::now(),
            },
            &ctx(),
        )
        .await
        .unwrap();
    assert_eq!(back.head.version, 3);

    // b retires it; a's cache (version 3, not retired) would accept a rate change.
    b.execute(
        &key,
        CarCommand::Retire {
            reason: "sold".into(),
            now: chrono::Utc::now(),
        },
        &ctx(),
    )
    .await
    .unwrap();
    let err = a
        .execute(
            &key,
            CarCommand::ChangeDailyRate { daily_rate: usd(1) },
            &ctx(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ExecuteError::Rejected(CarError::Retired)),
        "{err:?}"
    );
}

#[tokio::test]
async fn conflicts_beyond_the_retry_budget_are_reported() {
    let db = TestDatabase::create().await;
    let one_try = ExecutorConfig {
        retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        ..ExecutorConfig::default()
    };
    let a = executor(&db.store(), one_try);
    let b = executor(&db.store(), ExecutorConfig::default());
    let id = Uuid::now_v7();
    let key = id.to_string();
    a.execute(&key, register(id), &ctx()).await.unwrap();
    b.execute(
        &key,
        CarCommand::ChangeDailyRate { daily_rate: usd(5) },
        &ctx(),
    )
    .await
    .unwrap();
    let err = a
        .execute(
            &key,
            CarCommand::ChangeDailyRate { daily_rate: usd(6) },
            &ctx(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ExecuteError::Conflict {
                attempts: 1,
                source: EventStoreError::OptimisticConcurrency { actual: 2, .. }
            }
        ),
        "{err:?}"
    );
    // The conflict dropped the stale cache entry: the next command succeeds at once.
    let done = a
        .execute(
            &key,
            CarCommand::ChangeDailyRate { daily_rate: usd(6) },
            &ctx(),
        )
        .await
        .unwrap();
    assert_eq!((done.head.version, done.attempts), (3, 1));
}
