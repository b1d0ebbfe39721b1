//! Every read model against a scripted history, with the exact rows expected.

mod common;

use chrono::{DateTime, NaiveDate, Utc};
use common::*;
use eventstore::testing::TestDatabase;
use sqlx::Row;
use uuid::Uuid;

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 3, d).unwrap()
}

#[tokio::test]
async fn search_rows_follow_the_cars() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let s = scripted_history(&store).await;
    catch_up(&store, projections::by_name("search").unwrap()).await;

    let rows = sqlx::query(
        "SELECT car_id, make, model, class, seats, transmission, fuel, features, \
           daily_rate_minor, currency, branch_code, retired, rented_booking, odometer_km, \
           rating_sum, review_count, search_vector @@ plainto_tsquery('simple', 'roof-box') \
         FROM rm_search_cars ORDER BY make DESC",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    let car = &rows[0];
    assert_eq!(car.get::<Uuid, _>(0), s.car);
    assert_eq!(car.get::<String, _>(1), "Toyota");
    assert_eq!(car.get::<String, _>(2), "RAV4");
    assert_eq!(car.get::<String, _>(3), "SUV");
    assert_eq!(car.get::<i32, _>(4), 5);
    assert_eq!(car.get::<String, _>(5), "AUTOMATIC");
    assert_eq!(car.get::<String, _>(6), "HYBRID");
    assert_eq!(car.get::<Vec<String>, _>(7), vec!["towbar", "roof-box"]);
    assert_eq!(car.get::<i64, _>(8), 6_000);
    assert_eq!(car.get::<String, _>(9), "EUR");
    assert_eq!(car.get::<Option<f64>, _>(13), Some(1_300.0));
    assert_eq!(car.get::<Option<Uuid>, _>(12), None, "back from its rental");
    assert_eq!(car.get::<String, _>(10), "MUC", "returned to Munich");
    assert!(!car.get::<bool, _>(11));
    assert_eq!(car.get::<Option<Uuid>, _>(12), None, "back from its rental");
    assert_eq!(car.get::<Option<f64>, _>(13), Some(1_300.0));
    assert_eq!(car.get::<i64, _>(14), 4);
    assert_eq!(car.get::<i32, _>(15), 1);
    assert!(car.get::<bool, _>(16), "features are searchable");

    let fiat = &rows[1];
    assert_eq!(fiat.get::<Uuid, _>(0), s.car2);
    assert_eq!(fiat.get::<String, _>(10), "HAM");
    assert!(fiat.get::<bool, _>(11), "retired");
    assert_eq!(fiat.get::<i32, _>(15), 0);
    assert!(!fiat.get::<bool, _>(16));
}

#[tokio::test]
async fn availability_holds_the_blocks_the_car_decided() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let s = scripted_history(&store).await;
    catch_up(&store, projections::by_name("availability").unwrap()).await;

    type Block = (Uuid, Uuid, String, DateTime<Utc>, DateTime<Utc>);
    let rows: Vec<Block> = sqlx::query_as(
        "SELECT car_id, block_id, kind, lower(period), upper(period) \
         FROM rm_availability_blocks ORDER BY lower(period)",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            // The rental, kept whole: the car came back after the window's end.
            (s.car, s.completed, "RESERVATION".into(), t(2, 10), t(4, 10)),
            // Maintenance 20-22 Mar, completed on the 21st.
            (
                s.car,
                s.maintenance,
                "MAINTENANCE".into(),
                t(20, 8),
                t(21, 8)
            ),
        ],
        "released reservations are gone"
    );
    // Free-window question: car 1 is busy on 3 Mar, free on 5 Mar.
    let busy: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM rm_availability_blocks \
         WHERE car_id = $1 AND period && tstzrange($2, $3))",
    )
    .bind(s.car)
    .bind(t(3, 0))
    .bind(t(3, 12))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(busy);
}

#[tokio::test]
async fn history_tracks_bookings_payments_and_timelines() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let s = scripted_history(&store).await;
    catch_up(&store, projections::by_name("history").unwrap()).await;

    let rows = sqlx::query(
        "SELECT booking_id, customer_id, car_id, status, held_until, days, total_minor, lines, \
           payment_id, cancelled_by, cancel_fee_minor, picked_up_at, returned_at, \
           odometer_in_km, returned_branch, rating, comment, pickup_at, return_at \
         FROM rm_bookings ORDER BY created_at",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 3);
    let done = &rows[0];
    assert_eq!(done.get::<Uuid, _>(0), s.completed);
    assert_eq!(done.get::<Uuid, _>(1), customer());
    assert_eq!(done.get::<String, _>(3), "COMPLETED");
    assert_eq!(done.get::<Option<DateTime<Utc>>, _>(4), None);
    assert_eq!(done.get::<i32, _>(5), 2);
    assert_eq!(done.get::<i64, _>(6), 14_500);
    assert_eq!(
        done.get::<serde_json::Value, _>(7),
        serde_json::json!([
            {"code": "RENTAL_DAYS", "label": "2 days", "amount_minor": 12_000},
            {"code": "LATE_HOURS", "label": "late return", "amount_minor": 2_500}
        ])
    );
    assert_eq!(done.get::<Option<Uuid>, _>(8), Some(s.payment));
    assert_eq!(done.get::<Option<DateTime<Utc>>, _>(11), Some(t(2, 10)));
    assert_eq!(done.get::<Option<DateTime<Utc>>, _>(12), Some(t(4, 12)));
    assert_eq!(done.get::<Option<f64>, _>(13), Some(1_300.0));
    assert_eq!(done.get::<Option<String>, _>(14).as_deref(), Some("MUC"));
    assert_eq!(done.get::<Option<i32>, _>(15), Some(4));
    assert_eq!(
        done.get::<Option<String>, _>(16).as_deref(),
        Some("clean car")
    );

    let cancelled = &rows[1];
    assert_eq!(cancelled.get::<String, _>(3), "CANCELLED");
    assert_eq!(
        cancelled.get::<Option<String>, _>(9).as_deref(),
        Some("CUSTOMER")
    );
    assert_eq!(cancelled.get::<Option<i64>, _>(10), Some(1_000));

    let expired = &rows[2];
    assert_eq!(expired.get::<String, _>(3), "EXPIRED");
    assert_eq!(expired.get::<Uuid, _>(1), other_customer());
    assert_eq!(expired.get::<DateTime<Utc>, _>(17), t(17, 10), "moved");
    assert_eq!(expired.get::<DateTime<Utc>, _>(18), t(18, 10));

    let payment: (Uuid, i64, i64, String, String, Option<String>) = sqlx::query_as(
        "SELECT booking_id, amount_minor, refunded_minor, method, status, gateway FROM rm_payments",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        payment,
        (
            s.completed,
            12_000,
            6_000,
            "CARD".into(),
            "PARTIALLY_REFUNDED".into(),
            Some("sandbox-card".into())
        )
    );

    let timeline: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM rm_booking_timeline WHERE booking_id = $1 \
         ORDER BY transaction_id, global_position",
    )
    .bind(s.completed)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        timeline,
        vec![
            "CarReserved",
            "BookingHeld",
            "PaymentRequested",
            "PaymentAuthorized",
            "PaymentCaptured",
            "BookingConfirmed",
            "CarPickedUp",
            "RentalStarted",
            "CarReturned",
            "RentalCompleted",
            "FeedbackSubmitted",
            "RefundRequested",
            "PaymentRefunded",
        ]
    );
}

#[tokio::test]
async fn analytics_counts_each_day_once() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let s = scripted_history(&store).await;
    catch_up(&store, projections::by_name("analytics").unwrap()).await;

    type Daily = (NaiveDate, String, i32, i32, i32, i32, i64, i64, i64, i64);
    let rows: Vec<Daily> = sqlx::query_as(
        "SELECT day, branch_code, bookings_created, bookings_cancelled, rentals_started, \
           rentals_completed, earned_minor, refunds_minor, rented_seconds, rental_days_sum \
         FROM rm_daily_metrics WHERE day <= '2026-03-31' ORDER BY day, branch_code",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let b = || "BER".to_owned();
    assert_eq!(
        rows,
        vec![
            (day(1), b(), 1, 0, 0, 0, 0, 0, 0, 0),
            (day(2), b(), 0, 0, 1, 0, 0, 0, 14 * 3600, 0),
            (day(3), b(), 0, 0, 0, 0, 0, 0, 24 * 3600, 0),
            (day(4), b(), 0, 0, 0, 1, 14_500, 0, 12 * 3600, 2),
            (day(5), b(), 1, 1, 0, 0, 1_000, 0, 0, 0),
            (day(6), b(), 1, 0, 0, 0, 0, 0, 0, 0),
        ]
    );
    // The refund falls on the day the gateway confirmed it (when the event was recorded).
    let refunds: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(refunds_minor), 0)::bigint FROM rm_daily_metrics")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(refunds, 6_000);
    // Revenue is money that moved: captured 120.00, refunded 60.00, both recorded today (the
    // day the gateway moved it), none on the days of the rental.
    let revenue: Vec<(NaiveDate, i64)> = sqlx::query_as(
        "SELECT day, revenue_minor FROM rm_daily_metrics WHERE revenue_minor <> 0 ORDER BY day",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let today = chrono::Utc::now().date_naive();
    assert_eq!(revenue, vec![(today, 12_000 - 6_000)]);

    let cars: Vec<(NaiveDate, Uuid, i64, i64, i64, f64)> = sqlx::query_as(
        "SELECT day, car_id, rented_seconds, revenue_minor, earned_minor, distance_km::float8 \
         FROM rm_car_daily ORDER BY day, car_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        cars,
        vec![
            (day(2), s.car, 14 * 3600, 0, 0, 0.0),
            (day(3), s.car, 24 * 3600, 0, 0, 0.0),
            (day(4), s.car, 12 * 3600, 0, 14_500, 300.0),
            (day(5), s.car2, 0, 0, 1_000, 0.0),
            (today, s.car, 0, 6_000, 0, 0.0),
        ]
    );
    let fleet: Vec<(Uuid, String, bool)> = sqlx::query_as(
        "SELECT car_id, branch_code, retired_at IS NOT NULL FROM rm_analytics_cars ORDER BY branch_code",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        fleet,
        vec![(s.car2, "HAM".into(), true), (s.car, "MUC".into(), false)]
    );
}

#[tokio::test]
async fn telemetry_keeps_readings_and_the_latest() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let s = scripted_history(&store).await;
    catch_up(&store, projections::by_name("telemetry").unwrap()).await;

    let readings: Vec<(DateTime<Utc>, f64, Option<f64>)> = sqlx::query_as(
        "SELECT recorded_at, odometer_km, fuel_percent FROM rm_telemetry_readings \
         WHERE car_id = $1 ORDER BY recorded_at",
    )
    .bind(s.car)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        readings,
        vec![
            (t(3, 8), 1_200.0, Some(70.0)),
            (t(3, 9), 1_250.0, Some(65.0))
        ]
    );
    let latest: (DateTime<Utc>, f64) = sqlx::query_as(
        "SELECT recorded_at, odometer_km FROM rm_telemetry_latest WHERE car_id = $1",
    )
    .bind(s.car)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(latest, (t(3, 9), 1_250.0));
}

#[tokio::test]
async fn every_projection_is_recorded_as_caught_up() {
    let db = TestDatabase::create().await;
    let store = db.store();
    scripted_history(&store).await;
    let before = projections::status::list(&db.pool).await.unwrap();
    assert!(before.is_empty(), "no projection has run yet");
    catch_up_all(&store).await;
    let head = store.visible_head().await.unwrap();
    let statuses = projections::status::list(&db.pool).await.unwrap();
    let names: Vec<&str> = statuses.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "analytics",
            "availability",
            "history",
            "search",
            "telemetry"
        ]
    );
    for s in statuses {
        assert_eq!(s.position, head.global_position, "{}", s.name);
        assert_eq!(s.lag_events, 0, "{}", s.name);
        assert_eq!(s.lag_ms, 0.0, "{}", s.name);
    }
    // New events show up as lag until applied.
    let car = Uuid::now_v7();
    append(
        &store,
        "car",
        car,
        vec![domain::car::CarEvent::CarRegistered {
            id: car,
            details: details("VW", "Golf", &[]),
            daily_rate: eur(4_000),
            branch: "BER".into(),
            in_service_from: None,
        }],
    )
    .await;
    let search = projections::status::list(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.name == "search")
        .unwrap();
    assert_eq!(search.lag_events, 1);
    assert!(search.lag_ms >= 0.0);
}
