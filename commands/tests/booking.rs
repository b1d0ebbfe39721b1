//! The booking path against real PostgreSQL and Redis: no overbooking under 200 concurrent
//! requests (with and without Redis), idempotency, expiry, cancellation and modification.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use commands::booking::{BookingConfig, BookingFlowError, BookingRequest, BookingService};
use commands::locks::HotCarLock;
use commands::{CommandContext, Executor, ExecutorConfig};
use domain::TimeWindow;
use domain::booking::{BookingStatus, CancelledBy};
use domain::car::{Car, CarClass, CarCommand, CarDetails, CarError, FuelType, Transmission};
use domain::{Currency, Money};
use eventstore::testing::TestDatabase;
use uuid::Uuid;

fn redis_url() -> String {
    std::env::var("FLEETLEDGER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Redis as configured, failing the test when it cannot be reached (never a silent skip).
async fn redis_lock() -> HotCarLock {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} is required for this test: {e}"));
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
    HotCarLock::new(&url, &format!("fltest:{}:", Uuid::new_v4().simple())).unwrap()
}

/// A Redis that is down: nothing listens on port 1.
fn stopped_redis() -> HotCarLock {
    HotCarLock::new("redis://127.0.0.1:1", "fltest:").unwrap()
}

struct Fixture {
    _db: TestDatabase,
    service: BookingService,
    db_store: eventstore::EventStore,
    car_id: Uuid,
}

async fn fixture(lock: HotCarLock, config: BookingConfig) -> Fixture {
    let db = TestDatabase::create().await;
    let store = db.store();
    let cars: Executor<Car> = Executor::new(store.clone(), (), ExecutorConfig::default());
    let bookings = Executor::new(store.clone(), (), ExecutorConfig::default());
    let car_id = Uuid::now_v7();
    cars.execute(
        &car_id.to_string(),
        CarCommand::Register {
            id: car_id,
            details: CarDetails {
                make: "Fiat".into(),
                model: "500".into(),
                year: 2024,
                class: CarClass::Economy,
                seats: 4,
                transmission: Transmission::Manual,
                fuel: FuelType::Petrol,
                features: vec![],
            },
            daily_rate: Money::new(3_000, Currency::EUR),
            branch: "LIS".into(),
        },
        &CommandContext::new("staff"),
    )
    .await
    .unwrap();
    let service = BookingService::new(store.clone(), cars, bookings, lock, config);
    Fixture {
        _db: db,
        service,
        db_store: store,
        car_id,
    }
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

/// Windows are counted in days from one instant fixed for the whole test binary.
fn days_from_now(from: i64, to: i64) -> TimeWindow {
    static BASE: std::sync::OnceLock<DateTime<Utc>> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| now() + Duration::days(1));
    TimeWindow::new(base + Duration::days(from), base + Duration::days(to)).unwrap()
}

fn request(car_id: Uuid, window: TimeWindow) -> BookingRequest {
    BookingRequest {
        car_id,
        window,
        pickup_branch: None,
        return_branch: None,
        extras: Vec::new(),
    }
}

async fn count(f: &Fixture, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1 AND aggregate_id = $2")
        .bind(event_type)
        .bind(f.car_id.to_string())
        .fetch_one(f.db_store.pool())
        .await
        .unwrap()
}

async fn race_for_one_car(lock: HotCarLock) {
    let f = Arc::new(fixture(lock, BookingConfig::default()).await);
    let mut tasks = Vec::new();
    for i in 0..200i64 {
        let f = Arc::clone(&f);
        tasks.push(tokio::spawn(async move {
            // Overlapping windows: all share day 2.
            let window = days_from_now(i % 3, 3 + i % 2);
            let ctx = CommandContext::new(format!("customer-{i}"));
            f.service
                .request_booking(&ctx, Uuid::now_v7(), request(f.car_id, window), None, now())
                .await
        }));
    }
    let (mut held, mut conflicts) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(view) => {
                assert_eq!(view.status(), Some(BookingStatus::Held));
                held += 1;
            }
            Err(
                BookingFlowError::Car(CarError::NotAvailable { .. })
                | BookingFlowError::Contended(_),
            ) => conflicts += 1,
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!((held, conflicts), (1, 199));
    assert_eq!(count(&f, "CarReserved").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_requests_for_one_car_hold_exactly_one() {
    race_for_one_car(redis_lock().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_requests_for_one_car_hold_exactly_one_with_redis_down() {
    race_for_one_car(stopped_redis()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn non_overlapping_windows_all_succeed() {
    let f = Arc::new(fixture(redis_lock().await, BookingConfig::default()).await);
    let mut tasks = Vec::new();
    for i in 0..20i64 {
        let f = Arc::clone(&f);
        tasks.push(tokio::spawn(async move {
            // One day each, a day apart: well clear of the turnaround.
            let window = days_from_now(2 * i, 2 * i + 1);
            f.service
                .request_booking(
                    &CommandContext::new("c"),
                    Uuid::now_v7(),
                    request(f.car_id, window),
                    None,
                    now(),
                )
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("every disjoint window is free");
    }
    assert_eq!(count(&f, "CarReserved").await, 20);
}

#[tokio::test]
async fn an_idempotency_key_returns_the_first_booking() {
    let f = Arc::new(fixture(redis_lock().await, BookingConfig::default()).await);
    let customer = Uuid::now_v7();
    let ctx = CommandContext::new(customer.to_string());
    let first = f
        .service
        .request_booking(
            &ctx,
            customer,
            request(f.car_id, days_from_now(1, 3)),
            Some("key-1"),
            now(),
        )
        .await
        .unwrap();
    let again = f
        .service
        .request_booking(
            &ctx,
            customer,
            request(f.car_id, days_from_now(1, 3)),
            Some("key-1"),
            now(),
        )
        .await
        .unwrap();
    assert_eq!(first.id, again.id);
    // Concurrent double submits with a new key: one booking.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let f = Arc::clone(&f);
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            f.service
                .request_booking(
                    &ctx,
                    customer,
                    request(f.car_id, days_from_now(5, 6)),
                    Some("key-2"),
                    now(),
                )
                .await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().unwrap().id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
    assert_eq!(count(&f, "CarReserved").await, 2);
    // Another customer's key with the same text is a different booking.
    let other = Uuid::now_v7();
    let err = f
        .service
        .request_booking(
            &ctx,
            other,
            request(f.car_id, days_from_now(1, 3)),
            Some("key-1"),
            now(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, BookingFlowError::Car(CarError::NotAvailable { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_one_way_rental_needs_a_real_branch_and_pays_the_fee() {
    let f = fixture(redis_lock().await, BookingConfig::default()).await;
    let ctx = CommandContext::new("c");
    let mut one_way = request(f.car_id, days_from_now(1, 3));
    one_way.return_branch = Some("NOPE".into());
    let err = f
        .service
        .request_booking(&ctx, Uuid::now_v7(), one_way.clone(), None, now())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BookingFlowError::Invalid {
                field: "returnBranchCode",
                ..
            }
        ),
        "{err:?}"
    );
    sqlx::query("INSERT INTO branches (code, name, city, latitude, longitude) VALUES ('OPO', 'Porto Airport', 'Porto', 41.24, -8.68)")
        .execute(f.db_store.pool())
        .await
        .unwrap();
    one_way.return_branch = Some("OPO".into());
    let held = f
        .service
        .request_booking(&ctx, Uuid::now_v7(), one_way, None, now())
        .await
        .unwrap();
    // 2 days × 30.00 + one-way fee 50.00.
    assert_eq!(held.state.total, Some(Money::new(11_000, Currency::EUR)));
}

#[tokio::test]
async fn an_expired_hold_frees_the_car() {
    let config = BookingConfig {
        hold_ttl: Duration::seconds(60),
        ..BookingConfig::default()
    };
    let f = fixture(redis_lock().await, config).await;
    let ctx = CommandContext::new("c");
    let window = days_from_now(1, 2);
    let held = f
        .service
        .request_booking(&ctx, Uuid::now_v7(), request(f.car_id, window), None, now())
        .await
        .unwrap();
    let err = f.service.expire(&ctx, held.id, now()).await.unwrap_err();
    assert!(
        matches!(
            err,
            BookingFlowError::Booking(domain::booking::BookingError::HoldNotEnded(_))
        ),
        "{err:?}"
    );
    let expired = f
        .service
        .expire(&ctx, held.id, now() + Duration::seconds(61))
        .await
        .unwrap();
    assert_eq!(expired.status(), Some(BookingStatus::Expired));
    let again = f
        .service
        .request_booking(&ctx, Uuid::now_v7(), request(f.car_id, window), None, now())
        .await
        .unwrap();
    assert_eq!(again.status(), Some(BookingStatus::Held));
    assert_eq!(count(&f, "ReservationReleased").await, 1);
}

#[tokio::test]
async fn the_worker_expires_a_hold_that_nobody_paid() {
    let config = BookingConfig {
        hold_ttl: Duration::seconds(30),
        ..BookingConfig::default()
    };
    let f = fixture(redis_lock().await, config).await;
    let ctx = CommandContext::new("c");
    let window = days_from_now(1, 2);
    let held = f
        .service
        .request_booking(&ctx, Uuid::now_v7(), request(f.car_id, window), None, now())
        .await
        .unwrap();
    let worker = commands::worker::Worker::new(f.service.clone());
    // Not due yet: nothing happens.
    assert_eq!(
        worker.run_once(now()).await.unwrap(),
        commands::worker::Pass::default()
    );
    assert_eq!(
        f.service.get(held.id).await.unwrap().status(),
        Some(BookingStatus::Held)
    );
    // Past heldUntil (as a crash-restarted worker would find it): expired, car free.
    let later = now() + Duration::seconds(31);
    assert_eq!(worker.run_once(later).await.unwrap().done, 1);
    assert_eq!(
        f.service.get(held.id).await.unwrap().status(),
        Some(BookingStatus::Expired)
    );
    assert_eq!(
        worker.run_once(later).await.unwrap(),
        commands::worker::Pass::default(),
        "done steps do not run again"
    );
    f.service
        .request_booking(&ctx, Uuid::now_v7(), request(f.car_id, window), None, now())
        .await
        .unwrap();
}

#[tokio::test]
async fn cancellation_releases_and_modification_moves_atomically() {
    let f = fixture(redis_lock().await, BookingConfig::default()).await;
    let ctx = CommandContext::new("c");
    let a = f
        .service
        .request_booking(
            &ctx,
            Uuid::now_v7(),
            request(f.car_id, days_from_now(1, 3)),
            None,
            now(),
        )
        .await
        .unwrap();
    let b = f
        .service
        .request_booking(
            &ctx,
            Uuid::now_v7(),
            request(f.car_id, days_from_now(6, 8)),
            None,
            now(),
        )
        .await
        .unwrap();
    // Moving a onto b's days fails and leaves a where it was.
    let err = f
        .service
        .modify(&ctx, a.id, days_from_now(5, 7), now())
        .await
        .unwrap_err();
    assert!(
        matches!(err, BookingFlowError::Car(CarError::NotAvailable { .. })),
        "{err:?}"
    );
    assert_eq!(
        f.service.get(a.id).await.unwrap().state.window,
        Some(days_from_now(1, 3))
    );
    // A free window: moved and re-priced (3 days → 2 days at 30.00).
    let moved = f
        .service
        .modify(&ctx, a.id, days_from_now(10, 12), now())
        .await
        .unwrap();
    assert_eq!(moved.state.total, Some(Money::new(6_000, Currency::EUR)));
    // a's old days are free again.
    f.service
        .request_booking(
            &ctx,
            Uuid::now_v7(),
            request(f.car_id, days_from_now(1, 3)),
            None,
            now(),
        )
        .await
        .unwrap();
    // Cancelling b frees its window.
    let cancelled = f
        .service
        .cancel(
            &ctx,
            b.id,
            CancelledBy::Customer,
            Some("changed plans".into()),
            now(),
        )
        .await
        .unwrap();
    assert_eq!(cancelled.status(), Some(BookingStatus::Cancelled));
    f.service
        .request_booking(
            &ctx,
            Uuid::now_v7(),
            request(f.car_id, days_from_now(6, 8)),
            None,
            now(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn completing_maintenance_restarts_the_service_interval() {
    use commands::fleet::Fleet;
    use domain::telemetry::{Telemetry, TelemetryPolicy};
    let f = fixture(HotCarLock::disabled(), BookingConfig::default()).await;
    let ctx = CommandContext::new("staff");
    let cars: Executor<Car> = Executor::new(f.db_store.clone(), (), ExecutorConfig::default());
    let telemetry: Executor<Telemetry> = Executor::new(
        f.db_store.clone(),
        TelemetryPolicy::default(),
        ExecutorConfig::default(),
    );
    let window = TimeWindow::new(now() - Duration::hours(1), now() + Duration::hours(5)).unwrap();
    cars.execute(
        &f.car_id.to_string(),
        CarCommand::ScheduleMaintenance {
            maintenance_id: Uuid::now_v7(),
            window,
            reason: "service".into(),
            turnaround_minutes: 0,
            urgent: false,
            now: now() - Duration::hours(2),
        },
        &ctx,
    )
    .await
    .unwrap();
    let fleet = Fleet::new(cars.clone(), telemetry.clone());
    let events = fleet
        .complete_maintenance(&ctx, f.car_id, now())
        .await
        .unwrap();
    let types: Vec<_> = events
        .iter()
        .map(|e| (e.aggregate_type.as_str(), e.event_type.as_str()))
        .collect();
    assert_eq!(
        types,
        [
            ("car", "MaintenanceCompleted"),
            ("telemetry", "ServiceCompleted")
        ]
    );
    assert_eq!(
        events[0].transaction_id, events[1].transaction_id,
        "one append"
    );
    assert!(
        cars.load(&f.car_id.to_string())
            .await
            .unwrap()
            .state
            .blocks
            .is_empty()
    );
}
