//! The analytics read model: per day and branch, and per day and car.
//!
//! Counts (bookings created and cancelled, rentals started and completed) fall on the UTC day of
//! the event, under the booking's pickup branch and currency. Revenue is recognised when earned:
//! a completed rental's final total on its return day, a cancellation fee on its cancellation
//! day; refunds on the day the gateway confirmed them. A completed rental's time out is split
//! across the days it covers (rented seconds, for utilization); its distance (odometer in − out)
//! falls on its return day. Cars in service per branch are kept for utilization's denominator.

use chrono::{DateTime, NaiveDate, Utc};
use domain::booking::BookingEvent;
use domain::car::CarEvent;
use domain::payment::PaymentEvent;
use eventstore::RecordedEvent;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::runtime::{ApplyError, Projection};
use crate::{aggregate_uuid, day_of, decode, split_by_day};

pub struct Analytics;

/// Increments to one `rm_daily_metrics` row.
#[derive(Default)]
struct Daily {
    created: i32,
    cancelled: i32,
    started: i32,
    completed: i32,
    revenue: i64,
    refunds: i64,
    rented_seconds: i64,
    rental_days: i64,
}

/// Increments to one `rm_car_daily` row.
#[derive(Default)]
struct CarDaily {
    rented_seconds: i64,
    revenue: i64,
    distance_km: f64,
}

struct BookingRef {
    car_id: Uuid,
    branch: String,
    currency: String,
    days: i32,
    picked_up_at: Option<DateTime<Utc>>,
    odometer_out_km: Option<f64>,
}

#[async_trait::async_trait]
impl Projection for Analytics {
    fn name(&self) -> &'static str {
        "analytics"
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "rm_analytics_bookings",
            "rm_analytics_payments",
            "rm_analytics_cars",
            "rm_daily_metrics",
            "rm_car_daily",
        ]
    }

    fn wants(&self, event: &RecordedEvent) -> bool {
        match event.aggregate_type.as_str() {
            "car" => matches!(
                event.event_type.as_str(),
                "CarRegistered" | "CarRelocated" | "CarRetired" | "CarReturned"
            ),
            "booking" => event.event_type != "FeedbackSubmitted",
            "payment" => matches!(
                event.event_type.as_str(),
                "PaymentRequested" | "PaymentRefunded"
            ),
            _ => false,
        }
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        let id = aggregate_uuid(event)?;
        match event.aggregate_type.as_str() {
            "car" => apply_car(conn, id, decode(event)?, event.recorded_at).await,
            "booking" => apply_booking(conn, id, decode(event)?).await,
            "payment" => apply_payment(conn, id, decode(event)?, event.recorded_at).await,
            _ => Ok(()),
        }
    }
}

async fn apply_car(
    conn: &mut PgConnection,
    car: Uuid,
    event: CarEvent,
    recorded_at: DateTime<Utc>,
) -> Result<(), ApplyError> {
    match event {
        CarEvent::CarRegistered { branch, .. } => {
            sqlx::query(
                "INSERT INTO rm_analytics_cars (car_id, branch_code, registered_at) VALUES ($1, $2, $3)",
            )
            .bind(car)
            .bind(&branch)
            .bind(recorded_at)
            .execute(conn)
            .await?;
        }
        CarEvent::CarRelocated { to: branch, .. } | CarEvent::CarReturned { branch, .. } => {
            sqlx::query("UPDATE rm_analytics_cars SET branch_code = $2 WHERE car_id = $1")
                .bind(car)
                .bind(&branch)
                .execute(conn)
                .await?;
        }
        CarEvent::CarRetired { at, .. } => {
            sqlx::query("UPDATE rm_analytics_cars SET retired_at = $2 WHERE car_id = $1")
                .bind(car)
                .bind(at)
                .execute(conn)
                .await?;
        }
        _ => {}
    }
    Ok(())
}

async fn apply_booking(
    conn: &mut PgConnection,
    booking: Uuid,
    event: BookingEvent,
) -> Result<(), ApplyError> {
    if let BookingEvent::BookingHeld {
        car_id,
        pickup_branch,
        quote,
        at,
        ..
    } = &event
    {
        sqlx::query(
            "INSERT INTO rm_analytics_bookings (booking_id, car_id, branch_code, currency, days) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(booking)
        .bind(car_id)
        .bind(pickup_branch)
        .bind(quote.total.currency.as_str())
        .bind(i32::try_from(quote.days).unwrap_or(i32::MAX))
        .execute(&mut *conn)
        .await?;
        let b = load_booking(conn, booking).await?;
        return add_daily(
            conn,
            day_of(*at),
            &b,
            Daily {
                created: 1,
                ..Daily::default()
            },
        )
        .await;
    }
    let b = load_booking(conn, booking).await?;
    match event {
        BookingEvent::BookingHeld { .. }
        | BookingEvent::BookingConfirmed { .. }
        | BookingEvent::FeedbackSubmitted { .. }
        | BookingEvent::BookingExpired { .. } => Ok(()),
        BookingEvent::BookingModified { quote, .. } => {
            sqlx::query("UPDATE rm_analytics_bookings SET days = $2 WHERE booking_id = $1")
                .bind(booking)
                .bind(i32::try_from(quote.days).unwrap_or(i32::MAX))
                .execute(&mut *conn)
                .await?;
            Ok(())
        }
        BookingEvent::BookingCancelled { fee, at, .. } => {
            let day = day_of(at);
            add_daily(
                conn,
                day,
                &b,
                Daily {
                    cancelled: 1,
                    revenue: fee.minor,
                    ..Daily::default()
                },
            )
            .await?;
            if fee.minor != 0 {
                add_car_daily(
                    conn,
                    day,
                    &b,
                    CarDaily {
                        revenue: fee.minor,
                        ..CarDaily::default()
                    },
                )
                .await?;
            }
            Ok(())
        }
        BookingEvent::RentalStarted {
            odometer_km, at, ..
        } => {
            sqlx::query(
                "UPDATE rm_analytics_bookings SET picked_up_at = $2, odometer_out_km = $3 \
                 WHERE booking_id = $1",
            )
            .bind(booking)
            .bind(at)
            .bind(odometer_km)
            .execute(&mut *conn)
            .await?;
            add_daily(
                conn,
                day_of(at),
                &b,
                Daily {
                    started: 1,
                    ..Daily::default()
                },
            )
            .await
        }
        BookingEvent::RentalCompleted {
            odometer_km,
            total,
            at,
            ..
        } => {
            let day = day_of(at);
            let start = b.picked_up_at.unwrap_or(at);
            for (d, seconds) in split_by_day(start, at) {
                add_daily(
                    conn,
                    d,
                    &b,
                    Daily {
                        rented_seconds: seconds,
                        ..Daily::default()
                    },
                )
                .await?;
                add_car_daily(
                    conn,
                    d,
                    &b,
                    CarDaily {
                        rented_seconds: seconds,
                        ..CarDaily::default()
                    },
                )
                .await?;
            }
            add_daily(
                conn,
                day,
                &b,
                Daily {
                    completed: 1,
                    revenue: total.minor,
                    rental_days: i64::from(b.days),
                    ..Daily::default()
                },
            )
            .await?;
            let distance = b
                .odometer_out_km
                .map_or(0.0, |out| (odometer_km - out).max(0.0));
            add_car_daily(
                conn,
                day,
                &b,
                CarDaily {
                    revenue: total.minor,
                    distance_km: distance,
                    ..CarDaily::default()
                },
            )
            .await
        }
    }
}

async fn apply_payment(
    conn: &mut PgConnection,
    payment: Uuid,
    event: PaymentEvent,
    recorded_at: DateTime<Utc>,
) -> Result<(), ApplyError> {
    match event {
        PaymentEvent::PaymentRequested { booking_id, .. } => {
            sqlx::query(
                "INSERT INTO rm_analytics_payments (payment_id, booking_id) VALUES ($1, $2)",
            )
            .bind(payment)
            .bind(booking_id)
            .execute(conn)
            .await?;
            Ok(())
        }
        PaymentEvent::PaymentRefunded { amount, .. } => {
            let booking: Option<Uuid> = sqlx::query_scalar(
                "SELECT booking_id FROM rm_analytics_payments WHERE payment_id = $1",
            )
            .bind(payment)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(booking) = booking else {
                return Err(ApplyError::Invalid(format!(
                    "refund of payment {payment}, which was never requested"
                )));
            };
            let b = load_booking(conn, booking).await?;
            add_daily(
                conn,
                day_of(recorded_at),
                &b,
                Daily {
                    refunds: amount.minor,
                    ..Daily::default()
                },
            )
            .await
        }
        _ => Ok(()),
    }
}

async fn load_booking(conn: &mut PgConnection, booking: Uuid) -> Result<BookingRef, ApplyError> {
    let row = sqlx::query(
        "SELECT car_id, branch_code, currency, days, picked_up_at, odometer_out_km \
         FROM rm_analytics_bookings WHERE booking_id = $1",
    )
    .bind(booking)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| ApplyError::Invalid(format!("booking {booking} was never held")))?;
    Ok(BookingRef {
        car_id: row.try_get(0)?,
        branch: row.try_get(1)?,
        currency: row.try_get(2)?,
        days: row.try_get(3)?,
        picked_up_at: row.try_get(4)?,
        odometer_out_km: row.try_get(5)?,
    })
}

async fn add_daily(
    conn: &mut PgConnection,
    day: NaiveDate,
    b: &BookingRef,
    d: Daily,
) -> Result<(), ApplyError> {
    sqlx::query(
        "INSERT INTO rm_daily_metrics AS m (day, branch_code, currency, bookings_created, \
           bookings_cancelled, rentals_started, rentals_completed, revenue_minor, refunds_minor, \
           rented_seconds, rental_days_sum) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (day, branch_code, currency) DO UPDATE SET \
           bookings_created = m.bookings_created + $4, \
           bookings_cancelled = m.bookings_cancelled + $5, \
           rentals_started = m.rentals_started + $6, \
           rentals_completed = m.rentals_completed + $7, \
           revenue_minor = m.revenue_minor + $8, \
           refunds_minor = m.refunds_minor + $9, \
           rented_seconds = m.rented_seconds + $10, \
           rental_days_sum = m.rental_days_sum + $11",
    )
    .bind(day)
    .bind(&b.branch)
    .bind(&b.currency)
    .bind(d.created)
    .bind(d.cancelled)
    .bind(d.started)
    .bind(d.completed)
    .bind(d.revenue)
    .bind(d.refunds)
    .bind(d.rented_seconds)
    .bind(d.rental_days)
    .execute(conn)
    .await?;
    Ok(())
}

async fn add_car_daily(
    conn: &mut PgConnection,
    day: NaiveDate,
    b: &BookingRef,
    d: CarDaily,
) -> Result<(), ApplyError> {
    sqlx::query(
        "INSERT INTO rm_car_daily AS c (day, car_id, branch_code, currency, rented_seconds, \
           revenue_minor, distance_km) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (day, car_id) DO UPDATE SET \
           rented_seconds = c.rented_seconds + $5, \
           revenue_minor = c.revenue_minor + $6, \
           distance_km = c.distance_km + $7",
    )
    .bind(day)
    .bind(b.car_id)
    .bind(&b.branch)
    .bind(&b.currency)
    .bind(d.rented_seconds)
    .bind(d.revenue)
    .bind(d.distance_km)
    .execute(conn)
    .await?;
    Ok(())
}
