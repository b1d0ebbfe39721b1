//! Demo data whose numbers are true: seeded cars are in service before their first booking, so
//! a past day's metrics count what the log says happened that day.

use std::process::Command;

use eventstore::testing::TestDatabase;
use projections::{Projector, RunOptions};

#[tokio::test]
async fn a_seeded_past_days_metrics_agree_with_the_log() {
    let db = TestDatabase::create().await;
    let seeded = Command::new(env!("CARGO_BIN_EXE_fleetledger"))
        .args([
            "seed",
            "--cars",
            "5",
            "--customers",
            "3",
            "--bookings",
            "40",
            "--days",
            "30",
            "--seed",
            "11",
        ])
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        seeded.status.success(),
        "{}",
        String::from_utf8_lossy(&seeded.stderr)
    );
    let analytics = projections::by_name("analytics").unwrap();
    Projector::postgres(db.store(), analytics, RunOptions::default())
        .catch_up()
        .await
        .unwrap();

    // The past day with the most rentals starting.
    let (day, started, rented_seconds): (chrono::NaiveDate, i64, i64) = sqlx::query_as(
        "SELECT day, sum(rentals_started)::int8, sum(rented_seconds)::int8 FROM rm_daily_metrics \
         WHERE day < current_date GROUP BY day ORDER BY 2 DESC, 1 LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(started > 0);
    let from_log: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'RentalStarted' \
           AND (payload->>'at')::timestamptz >= $1::date::timestamp AT TIME ZONE 'UTC' \
           AND (payload->>'at')::timestamptz < ($1::date + 1)::timestamp AT TIME ZONE 'UTC'",
    )
    .bind(day)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(started, from_log, "rentals started on {day}");

    // Every seeded car was in service that day, and rented for part of it: utilization is real.
    let in_service: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM rm_analytics_cars WHERE registered_at < $1::date::timestamp AT TIME ZONE 'UTC'",
    )
    .bind(day)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(in_service, 5, "cars in service on {day}");
    assert!(rented_seconds > 0, "cars were rented on {day}");
}
