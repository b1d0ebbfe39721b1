//! Demo data whose numbers are true: seeded cars are in service before their first booking, so
//! a past day's metrics count what the log says happened that day; and a present that looks
//! like a business: rentals out now, bookings to come, ratings that count, prices by the rules.

use std::process::Command;

use eventstore::testing::TestDatabase;
use projections::{Projector, RunOptions};

/// `fleetledger seed <args>` into `db`, which must succeed.
fn seed(db: &TestDatabase, args: &[&str]) {
    let seeded = Command::new(env!("CARGO_BIN_EXE_fleetledger"))
        .arg("seed")
        .args(args)
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        seeded.status.success(),
        "{}",
        String::from_utf8_lossy(&seeded.stderr)
    );
}

#[tokio::test]
async fn a_seeded_past_days_metrics_agree_with_the_log() {
    let db = TestDatabase::create().await;
    seed(
        &db,
        &[
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
        ],
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

#[tokio::test]
async fn seeded_data_has_a_present_ratings_that_count_and_real_prices() {
    let db = TestDatabase::create().await;
    seed(
        &db,
        &[
            "--cars",
            "20",
            "--customers",
            "5",
            "--bookings",
            "160",
            "--days",
            "60",
            "--seed",
            "7",
        ],
    );
    for name in ["search", "history"] {
        let projection = projections::by_name(name).unwrap();
        Projector::postgres(db.store(), projection, RunOptions::default())
            .catch_up()
            .await
            .unwrap();
    }
    let count = |sql: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    // Out now, and paid bookings to come.
    let active = count("SELECT count(*) FROM rm_bookings WHERE status = 'ACTIVE'").await;
    let coming =
        count("SELECT count(*) FROM rm_bookings WHERE status = 'CONFIRMED' AND pickup_at > now()")
            .await;
    assert!(active > 0 && coming > 0, "{active} active, {coming} coming");
    // Every rating in the log counts toward its car.
    let ratings = count("SELECT count(*) FROM events WHERE event_type = 'FeedbackSubmitted'").await;
    let reviews = count("SELECT sum(review_count)::int8 FROM rm_search_cars").await;
    assert!(ratings > 0);
    assert_eq!(reviews, ratings);
    // Prices by the pricing rules: one-way rentals carry the one-way fee, long ones the discount.
    let one_way_without_fee = count(
        "SELECT count(*) FROM rm_bookings WHERE pickup_branch <> return_branch \
           AND status NOT IN ('CANCELLED', 'EXPIRED') \
           AND NOT lines @> '[{\"code\": \"ONE_WAY_FEE\"}]'",
    )
    .await;
    let one_way =
        count("SELECT count(*) FROM rm_bookings WHERE pickup_branch <> return_branch").await;
    assert!(one_way > 0);
    assert_eq!(one_way_without_fee, 0);
    // Nothing booked after now.
    let from_the_future = count(
        "SELECT count(*) FROM events WHERE event_type = 'BookingHeld' \
           AND (payload->>'at')::timestamptz > now()",
    )
    .await;
    assert_eq!(from_the_future, 0);
}
