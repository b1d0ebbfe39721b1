//! `fleetledger worker` killed with SIGKILL: a hold due at T still expires by T + 5 s, run by
//! the next worker, because a dead worker's claims end with its database session.

use std::process::{Child, Command, Stdio};

use chrono::{Duration, Utc};
use commands::booking::{BookingConfig, BookingRequest, BookingService};
use commands::locks::HotCarLock;
use commands::{CommandContext, Executor, ExecutorConfig};
use domain::booking::BookingStatus;
use domain::car::{Car, CarClass, CarCommand, CarDetails, FuelType, Transmission};
use domain::{Currency, Money, TimeWindow};
use eventstore::testing::{TestDatabase, eventually};
use uuid::Uuid;

/// A worker process, killed with SIGKILL when dropped.
struct WorkerProcess(Child);

impl WorkerProcess {
    fn start(db: &TestDatabase) -> Self {
        Self(
            Command::new(env!("CARGO_BIN_EXE_fleetledger"))
                .arg("worker")
                .env("DATABASE_URL", db.url())
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start fleetledger worker"),
        )
    }

    fn kill_9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill_9();
    }
}

#[tokio::test]
async fn a_hold_expires_on_time_after_its_worker_is_killed() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let cars: Executor<Car> = Executor::new(store.clone(), (), ExecutorConfig::default());
    let car_id = Uuid::now_v7();
    cars.execute(
        &car_id.to_string(),
        CarCommand::Register {
            id: car_id,
            details: CarDetails {
                make: "Fiat".into(),
                model: "500".into(),
                year: 2025,
                class: CarClass::Economy,
                seats: 4,
                transmission: Transmission::Manual,
                fuel: FuelType::Petrol,
                features: vec![],
            },
            daily_rate: Money::new(3_500, Currency::EUR),
            branch: "BER".into(),
        },
        &CommandContext::new("staff"),
    )
    .await
    .unwrap();
    let bookings = BookingService::new(
        store.clone(),
        cars,
        Executor::new(store.clone(), (), ExecutorConfig::default()),
        HotCarLock::disabled(),
        BookingConfig {
            hold_ttl: Duration::seconds(4),
            ..BookingConfig::default()
        },
    );
    let mut first = WorkerProcess::start(&db);
    let start = Utc::now() + Duration::days(2);
    let held = bookings
        .request_booking(
            &CommandContext::new("customer"),
            Uuid::now_v7(),
            BookingRequest {
                car_id,
                window: TimeWindow::new(start, start + Duration::days(1)).unwrap(),
                pickup_branch: None,
                return_branch: None,
                extras: Vec::new(),
            },
            None,
            Utc::now(),
        )
        .await
        .unwrap();
    let due = held.state.held_until.expect("a HELD booking has heldUntil");
    // The worker dies a second before the hold is due; another one is started.
    let kill_at = due - Duration::seconds(1);
    eventually(10, "a second before the hold is due", || async {
        Utc::now() >= kill_at
    })
    .await;
    first.kill_9();
    let _second = WorkerProcess::start(&db);
    eventually(10, "the hold expired", || async {
        bookings.get(held.id).await.unwrap().status() == Some(BookingStatus::Expired)
    })
    .await;
    let expired_at = Utc::now();
    assert!(
        expired_at <= due + Duration::seconds(5),
        "due at {due}, expired by {expired_at}"
    );
}
