//! The Telemetry aggregate through the executor on a real PostgreSQL: what a batch stores, how
//! the caller gets the API's acknowledgement, and that replays and snapshots rebuild the same
//! state (sensor floats survive the jsonb round trip).

use chrono::{DateTime, TimeDelta, Utc};
use commands::codec;
use commands::{CommandContext, ExecuteError, Executor, ExecutorConfig};
use cqrs_es::Aggregate;
use domain::telemetry::{
    BatchSummary, GeoPoint, MaintenanceReason, Reading, ReadingField, Telemetry, TelemetryCommand,
    TelemetryError, TelemetryEvent, TelemetryPolicy,
};
use eventstore::testing::TestDatabase;
use eventstore::{RecordedEvent, StreamId};
use uuid::Uuid;

fn start() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_261_600, 0).unwrap() // 2026-01-01T10:00:00Z
}

fn reading(minutes: i64, km: f64, fuel: Option<f64>, temp: Option<f64>) -> Reading {
    Reading {
        recorded_at: start() + TimeDelta::minutes(minutes),
        position: GeoPoint {
            latitude: 38.7223,
            longitude: -9.139_337,
        },
        speed_kph: Some(87.5),
        fuel_percent: fuel,
        battery_percent: Some(0.1 + 0.2), // 0.30000000000000004: a float that tests the round trip
        odometer_km: km,
        engine_temp_c: temp,
    }
}

fn record(car: Uuid, readings: Vec<Reading>) -> TelemetryCommand {
    TelemetryCommand::RecordReadings {
        car_id: car,
        readings,
        received_at: start() + TimeDelta::days(30),
    }
}

fn executor(db: &TestDatabase, config: ExecutorConfig) -> Executor<Telemetry> {
    Executor::new(db.store(), TelemetryPolicy::default(), config)
}

fn ctx() -> CommandContext {
    CommandContext::new("device:unit-42")
}

fn decoded(events: &[RecordedEvent]) -> Vec<TelemetryEvent> {
    events
        .iter()
        .map(|e| codec::decode::<Telemetry>(e).unwrap())
        .collect()
}

/// The acknowledgement as the API computes it: off the committed `ReadingsRecorded`, or, when
/// nothing was recorded, by assessing the batch on the current state.
async fn ack(
    cars: &Executor<Telemetry>,
    car: Uuid,
    readings: Vec<Reading>,
) -> (BatchSummary, Vec<TelemetryEvent>) {
    let received_at = start() + TimeDelta::days(30);
    let committed = cars
        .execute(&car.to_string(), record(car, readings.clone()), &ctx())
        .await
        .unwrap();
    let events = decoded(&committed.events);
    let summary = match events.iter().find_map(TelemetryEvent::batch_summary) {
        Some(summary) => summary,
        None => cars
            .load(&car.to_string())
            .await
            .unwrap()
            .state
            .assess(&readings, received_at, &TelemetryPolicy::default())
            .summary(),
    };
    (summary, events)
}

#[tokio::test]
async fn a_batch_stores_the_accepted_readings_and_its_warnings_in_one_append() {
    let db = TestDatabase::create().await;
    let cars = executor(&db, ExecutorConfig::default());
    let car = Uuid::now_v7();
    let (summary, events) = ack(
        &cars,
        car,
        vec![
            reading(2, 1_001.0, Some(14.0), Some(121.0)),
            reading(1, 1_000.0, Some(40.0), Some(95.0)),
            reading(3, 1_002.0, Some(130.0), None), // fuel out of range
            reading(1, 1_000.0, Some(40.0), Some(95.0)), // resent
        ],
    )
    .await;
    assert_eq!((summary.accepted, summary.duplicates), (2, 1));
    assert_eq!(summary.rejected.len(), 1);
    assert_eq!(summary.rejected[0].field, ReadingField::FuelPercent);
    assert_eq!(
        summary.rejected[0].to_string(),
        "readings[2] at 2026-01-01T10:03:00Z: fuelPercent 130 is outside 0..=100"
    );
    let types: Vec<String> = events
        .iter()
        .map(cqrs_es::DomainEvent::event_type)
        .collect();
    assert_eq!(types, ["ReadingsRecorded", "FuelLow", "MaintenanceDue"]);
    assert_eq!(
        events[2],
        TelemetryEvent::MaintenanceDue {
            at: start() + TimeDelta::minutes(2),
            reason: MaintenanceReason::EngineTemperature,
            odometer_km: 1_001.0,
            engine_temp_c: Some(121.0),
        }
    );

    let stream = StreamId::new(Telemetry::TYPE, car.to_string());
    let stored = db.store().read_stream(&stream, 1, None).await.unwrap();
    assert_eq!(stored.len(), 3);
    assert!(stored.iter().all(|e| e.aggregate_type == "telemetry"
        && e.aggregate_id == car.to_string()
        && e.event_version == 1));
    let payload = &stored[0].payload;
    assert_eq!(payload["car_id"], car.to_string());
    assert_eq!(payload["readings"][0]["odometer_km"], 1_000.0);
    assert_eq!(payload["readings"][1]["position"]["latitude"], 38.7223);
    assert_eq!(payload["duplicates"], 1);
    assert_eq!(payload["rejected"][0]["field"], "fuel_percent");
    assert_eq!(payload["rejected"][0]["reason"]["kind"], "out_of_range");
    assert_eq!(stored[1].payload["fuel_percent"], 14.0);
    assert_eq!(stored[2].payload["reason"], "ENGINE_TEMPERATURE");
    assert!(db.store().verify_stream(&stream).await.unwrap().is_valid());
}

#[tokio::test]
async fn a_batch_of_only_duplicates_and_rejections_writes_nothing_and_is_explained() {
    let db = TestDatabase::create().await;
    let cars = executor(&db, ExecutorConfig::default());
    let car = Uuid::now_v7();
    ack(&cars, car, vec![reading(5, 500.0, None, None)]).await;
    let (summary, events) = ack(
        &cars,
        car,
        vec![
            reading(5, 500.0, None, None),
            reading(4, 499.0, None, None),
            reading(6, 499.0, None, None), // backwards
            reading(7, f64::NAN, None, None),
        ],
    )
    .await;
    assert!(events.is_empty());
    assert_eq!((summary.accepted, summary.duplicates), (0, 2));
    let fields: Vec<(u32, ReadingField)> = summary
        .rejected
        .iter()
        .map(|r| (r.index, r.field))
        .collect();
    assert_eq!(
        fields,
        [(2, ReadingField::OdometerKm), (3, ReadingField::OdometerKm)]
    );
    let head = cars.load(&car.to_string()).await.unwrap().head;
    assert_eq!(head.version, 1, "nothing appended");

    let (empty, events) = ack(&cars, car, vec![]).await;
    assert!(events.is_empty());
    assert_eq!(empty, BatchSummary::default());
}

#[tokio::test]
async fn warnings_do_not_repeat_until_the_car_is_serviced() {
    let db = TestDatabase::create().await;
    let cars = executor(&db, ExecutorConfig::default());
    let car = Uuid::now_v7();
    let key = car.to_string();
    // 15 000 km after the first reading, over 40 hours: due once.
    let (_, first) = ack(
        &cars,
        car,
        vec![
            reading(0, 10_000.0, None, None),
            reading(2_400, 25_000.0, None, None),
        ],
    )
    .await;
    assert!(matches!(
        first.last(),
        Some(TelemetryEvent::MaintenanceDue {
            reason: MaintenanceReason::ServiceInterval,
            ..
        })
    ));
    let (_, again) = ack(&cars, car, vec![reading(2_401, 25_001.0, None, None)]).await;
    assert_eq!(again.len(), 1, "only the readings: {again:?}");

    let serviced = cars
        .execute(
            &key,
            TelemetryCommand::CompleteService {
                car_id: car,
                odometer_km: None,
            },
            &ctx(),
        )
        .await
        .unwrap();
    assert_eq!(
        decoded(&serviced.events),
        [TelemetryEvent::ServiceCompleted {
            car_id: car,
            odometer_km: Some(25_001.0),
        }]
    );
    let state = cars.load(&key).await.unwrap().state;
    assert!(state.maintenance_due.is_empty());
    assert_eq!(state.service_baseline_km, Some(25_001.0));

    let err = cars
        .execute(
            &key,
            TelemetryCommand::CompleteService {
                car_id: Uuid::now_v7(),
                odometer_km: None,
            },
            &ctx(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ExecuteError::Rejected(TelemetryError::WrongCar { stream, .. }) if stream == car
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn snapshots_and_replays_rebuild_the_same_state() {
    let db = TestDatabase::create().await;
    let config = ExecutorConfig {
        snapshot_every: 2,
        cache_capacity: 0,
        ..ExecutorConfig::default()
    };
    let cars = executor(&db, config);
    let car = Uuid::now_v7();
    let key = car.to_string();
    let mut km = 0.0;
    for batch in 0..5i64 {
        let readings = (0..3i64)
            .map(|i| {
                km += 1.234_567_890_123;
                let fuel = 50.0 - (batch * 3 + i) as f64 * 3.3;
                reading(batch * 10 + i, km, Some(fuel), Some(90.0 + i as f64))
            })
            .collect();
        ack(&cars, car, readings).await;
    }
    let from_snapshot = cars.load(&key).await.unwrap();
    let from_events = cars.load_from_events(&key).await.unwrap();
    assert!(from_snapshot.snapshot_version.is_some());
    assert_eq!(from_snapshot.state, from_events.state);
    assert_eq!(from_events.state.readings_recorded, 15);
    assert_eq!(from_events.state.last.map(|r| r.odometer_km), Some(km));
    assert_eq!(
        from_events.state.last.and_then(|r| r.battery_percent),
        Some(0.1 + 0.2)
    );
    let stream = StreamId::new(Telemetry::TYPE, &key);
    let events = db.store().read_stream(&stream, 1, None).await.unwrap();
    let replayed: Telemetry = commands::replay(&events).unwrap();
    assert_eq!(replayed, from_events.state);
}

/// An auditor's point-in-time state of a stream longer than a page: from the snapshot when one
/// was taken at or before the point (an event before it is never read again), a page of events
/// at a time after it, equal to a replay of every event; and the chain verified page by page.
#[tokio::test]
async fn state_at_a_point_starts_from_the_snapshot_and_reads_a_long_stream_a_page_at_a_time() {
    use commands::history::{AsOf, state_at};
    let db = TestDatabase::create().await;
    let store = db.store();
    let cars = executor(
        &db,
        ExecutorConfig {
            snapshot_every: 500,
            cache_capacity: 0,
            ..ExecutorConfig::default()
        },
    );
    let car = Uuid::now_v7();
    let key = car.to_string();
    let batches = eventstore::STREAM_PAGE + 100;
    for i in 0..batches {
        let km = 10.0 + i as f64 * 0.7;
        ack(&cars, car, vec![reading(i, km, Some(60.0), Some(90.0))]).await;
    }
    let stream = StreamId::new(Telemetry::TYPE, &key);
    let events = store.read_stream(&stream, 1, None).await.unwrap();
    let head = events.len() as i64;
    assert!(head > eventstore::STREAM_PAGE, "{head} events");
    let snapshot = store.load_snapshot(&stream).await.unwrap().unwrap();
    assert_eq!(snapshot.head.version, 1_000);

    let replay_to = |version: i64| -> serde_json::Value {
        let state: Telemetry = commands::replay(&events[..version as usize]).unwrap();
        serde_json::to_value(state).unwrap()
    };
    for version in [1, 600, 999, 1_000, 1_001, head] {
        let state = state_at(&store, &stream, AsOf::Version(version))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(state.version, version);
        assert_eq!(
            state.recorded_at,
            Some(events[version as usize - 1].recorded_at)
        );
        assert_eq!(state.state, replay_to(version), "at version {version}");
    }
    let latest = state_at(&store, &stream, AsOf::Latest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((latest.version, &latest.state), (head, &replay_to(head)));
    let then = events[599].recorded_at;
    let at_instant = state_at(&store, &stream, AsOf::Instant(then))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (at_instant.version, &at_instant.state),
        (600, &replay_to(600))
    );

    // Mark the snapshot: what starts from it shows the mark, what lies before it does not.
    sqlx::query(
        "UPDATE snapshots SET state = jsonb_set(state, '{state,readings_recorded}', '1000000') \
         WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(&stream.aggregate_type)
    .bind(&stream.aggregate_id)
    .execute(&db.pool)
    .await
    .unwrap();
    let latest = state_at(&store, &stream, AsOf::Latest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        latest.state["readings_recorded"],
        1_000_000 + (head - 1_000),
        "started from the snapshot at version 1000"
    );
    let before = state_at(&store, &stream, AsOf::Version(999))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(before.state, replay_to(999));

    let verified = store.verify_stream(&stream).await.unwrap();
    assert!(verified.is_valid(), "{verified:?}");
    assert_eq!(verified.events, head as u64);
}
