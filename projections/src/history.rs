//! The history read model: bookings per customer and car, payments, and each booking's timeline.
//!
//! A booking row follows its stream (held, confirmed, modified, cancelled, expired, picked up,
//! returned with charges, feedback); payments follow theirs; the timeline lists every event that
//! touched a booking (its own, the car's reservation events for it, its payments) in commit
//! order, as references into the log.

use chrono::{DateTime, Utc};
use domain::booking::BookingEvent;
use domain::car::CarEvent;
use domain::payment::PaymentEvent;
use domain::pricing::PriceLine;
use eventstore::RecordedEvent;
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::runtime::{ApplyError, Projection};
use crate::search::enum_name;
use crate::{aggregate_uuid, decode};

pub struct History;

fn lines_json(lines: &[PriceLine]) -> Value {
    Value::Array(
        lines
            .iter()
            .map(|l| json!({ "label": l.label, "amount_minor": l.amount.minor }))
            .collect(),
    )
}

#[async_trait::async_trait]
impl Projection for History {
    fn name(&self) -> &'static str {
        "history"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_bookings", "rm_payments", "rm_booking_timeline"]
    }

    fn wants(&self, event: &RecordedEvent) -> bool {
        match event.aggregate_type.as_str() {
            "booking" | "payment" => true,
            "car" => matches!(
                event.event_type.as_str(),
                "CarReserved"
                    | "ReservationChanged"
                    | "ReservationReleased"
                    | "CarPickedUp"
                    | "CarReturned"
            ),
            _ => false,
        }
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        match event.aggregate_type.as_str() {
            "booking" => {
                let booking = aggregate_uuid(event)?;
                apply_booking(conn, booking, decode(event)?, event.recorded_at).await?;
                timeline(conn, booking, event).await
            }
            "car" => {
                let booking = match decode::<CarEvent>(event)? {
                    CarEvent::CarReserved { booking_id, .. }
                    | CarEvent::ReservationChanged { booking_id, .. }
                    | CarEvent::ReservationReleased { booking_id, .. }
                    | CarEvent::CarPickedUp { booking_id, .. }
                    | CarEvent::CarReturned { booking_id, .. } => booking_id,
                    _ => return Ok(()),
                };
                timeline(conn, booking, event).await
            }
            "payment" => {
                let payment = aggregate_uuid(event)?;
                let booking =
                    apply_payment(conn, payment, decode(event)?, event.recorded_at).await?;
                match booking {
                    Some(booking) => timeline(conn, booking, event).await,
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

async fn timeline(
    conn: &mut PgConnection,
    booking: Uuid,
    event: &RecordedEvent,
) -> Result<(), ApplyError> {
    sqlx::query(
        "INSERT INTO rm_booking_timeline (booking_id, transaction_id, global_position, event_type) \
         VALUES ($1, $2::text::xid8, $3, $4)",
    )
    .bind(booking)
    .bind(event.transaction_id.to_string())
    .bind(event.global_position)
    .bind(&event.event_type)
    .execute(conn)
    .await?;
    Ok(())
}

async fn apply_booking(
    conn: &mut PgConnection,
    booking: Uuid,
    event: BookingEvent,
    at: DateTime<Utc>,
) -> Result<(), ApplyError> {
    match event {
        BookingEvent::BookingHeld {
            customer_id,
            car_id,
            window,
            pickup_branch,
            return_branch,
            quote,
            held_until,
            at: held_at,
            ..
        } => {
            sqlx::query(
                "INSERT INTO rm_bookings (booking_id, customer_id, car_id, pickup_at, return_at, \
                   pickup_branch, return_branch, status, held_until, days, total_minor, currency, \
                   lines, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'HELD', $8, $9, $10, $11, $12, $13, $14)",
            )
            .bind(booking)
            .bind(customer_id)
            .bind(car_id)
            .bind(window.start)
            .bind(window.end)
            .bind(&pickup_branch)
            .bind(&return_branch)
            .bind(held_until)
            .bind(i32::try_from(quote.days).unwrap_or(i32::MAX))
            .bind(quote.total.minor)
            .bind(quote.total.currency.as_str())
            .bind(lines_json(&quote.lines))
            .bind(held_at)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        BookingEvent::BookingConfirmed { payment_id, .. } => {
            sqlx::query(
                "UPDATE rm_bookings SET status = 'CONFIRMED', held_until = NULL, payment_id = $2, \
                   updated_at = $3 WHERE booking_id = $1",
            )
            .bind(booking)
            .bind(payment_id)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        BookingEvent::BookingModified { to, quote, .. } => {
            sqlx::query(
                "UPDATE rm_bookings SET pickup_at = $2, return_at = $3, days = $4, total_minor = $5, \
                   currency = $6, lines = $7, updated_at = $8 WHERE booking_id = $1",
            )
            .bind(booking)
            .bind(to.start)
            .bind(to.end)
            .bind(i32::try_from(quote.days).unwrap_or(i32::MAX))
            .bind(quote.total.minor)
            .bind(quote.total.currency.as_str())
            .bind(lines_json(&quote.lines))
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        BookingEvent::BookingCancelled {
            by, reason, fee, ..
        } => {
            sqlx::query(
                "UPDATE rm_bookings SET status = 'CANCELLED', held_until = NULL, cancelled_by = $2, \
                   cancel_reason = $3, cancel_fee_minor = $4, updated_at = $5 WHERE booking_id = $1",
            )
            .bind(booking)
            .bind(enum_name(&by))
            .bind(reason)
            .bind(fee.minor)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        BookingEvent::BookingExpired { .. } => {
            sqlx::query(
                "UPDATE rm_bookings SET status = 'EXPIRED', held_until = NULL, updated_at = $2 \
                 WHERE booking_id = $1",
            )
            .bind(booking)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        BookingEvent::RentalStarted {
            odometer_km,
            fuel_percent,
            at: started,
        } => {
            sqlx::query(
                "UPDATE rm_bookings SET status = 'ACTIVE', picked_up_at = $2, odometer_out_km = $3, \
                   fuel_out_percent = $4, updated_at = $5 WHERE booking_id = $1",
            )
            .bind(booking)
            .bind(started)
            .bind(odometer_km)
            .bind(fuel_percent)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        BookingEvent::RentalCompleted {
            odometer_km,
            fuel_percent,
            branch,
            charges,
            total,
            at: returned,
        } => {
            sqlx::query(
                "UPDATE rm_bookings SET status = 'COMPLETED', returned_at = $2, odometer_in_km = $3, \
                   fuel_in_percent = $4, returned_branch = $5, total_minor = $6, \
                   lines = lines || $7, updated_at = $8 WHERE booking_id = $1",
            )
            .bind(booking)
            .bind(returned)
            .bind(odometer_km)
            .bind(fuel_percent)
            .bind(&branch)
            .bind(total.minor)
            .bind(lines_json(&charges))
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        BookingEvent::FeedbackSubmitted {
            rating,
            comment,
            at: submitted,
        } => {
            sqlx::query(
                "UPDATE rm_bookings SET rating = $2, comment = $3, feedback_at = $4, updated_at = $5 \
                 WHERE booking_id = $1",
            )
            .bind(booking)
            .bind(i32::from(rating))
            .bind(comment)
            .bind(submitted)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// Apply a payment event; returns the booking it belongs to (if the payment is known).
async fn apply_payment(
    conn: &mut PgConnection,
    payment: Uuid,
    event: PaymentEvent,
    at: DateTime<Utc>,
) -> Result<Option<Uuid>, ApplyError> {
    if let PaymentEvent::PaymentRequested {
        booking_id,
        amount,
        method,
        ..
    } = &event
    {
        sqlx::query(
            "INSERT INTO rm_payments (payment_id, booking_id, amount_minor, currency, method, \
               status, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'PENDING', $6, $6)",
        )
        .bind(payment)
        .bind(booking_id)
        .bind(amount.minor)
        .bind(amount.currency.as_str())
        .bind(enum_name(method))
        .bind(at)
        .execute(&mut *conn)
        .await?;
        sqlx::query("UPDATE rm_bookings SET payment_id = $2 WHERE booking_id = $1")
            .bind(booking_id)
            .bind(payment)
            .execute(&mut *conn)
            .await?;
        return Ok(Some(*booking_id));
    }
    // (status, gateway, failure_reason, refunded_minor): None leaves the column as it is.
    let (sql, binds): (&str, Vec<Option<String>>) = match event {
        PaymentEvent::PaymentRequested { .. } => return Ok(None),
        PaymentEvent::PaymentAuthorized { gateway, .. } => (
            "UPDATE rm_payments SET status = 'AUTHORIZED', gateway = $2, failure_reason = NULL, \
               updated_at = $3 WHERE payment_id = $1 RETURNING booking_id",
            vec![Some(gateway)],
        ),
        PaymentEvent::PaymentFailed { gateway, reason } => (
            "UPDATE rm_payments SET status = 'FAILED', gateway = $2, failure_reason = $4, \
               updated_at = $3 WHERE payment_id = $1 RETURNING booking_id",
            vec![Some(gateway), Some(reason)],
        ),
        PaymentEvent::PaymentAttemptFailed { attempt, tried } => (
            "UPDATE rm_payments SET status = 'PENDING', failure_reason = $2, updated_at = $3 \
             WHERE payment_id = $1 RETURNING booking_id",
            vec![Some(format!(
                "attempt {attempt}: no payment gateway answered ({} tried)",
                tried.len()
            ))],
        ),
        PaymentEvent::PaymentRetried { .. } => (
            "UPDATE rm_payments SET status = 'PENDING', failure_reason = NULL, updated_at = $2 \
             WHERE payment_id = $1 RETURNING booking_id",
            vec![],
        ),
        PaymentEvent::PaymentCaptured { .. } => (
            "UPDATE rm_payments SET status = 'CAPTURED', updated_at = $2 \
             WHERE payment_id = $1 RETURNING booking_id",
            vec![],
        ),
        PaymentEvent::PaymentRefunded { refunded_total, .. } => (
            "UPDATE rm_payments SET refunded_minor = $2::text::bigint, \
               status = CASE WHEN $2::text::bigint >= amount_minor THEN 'REFUNDED' \
                             ELSE 'PARTIALLY_REFUNDED' END, \
               updated_at = $3 WHERE payment_id = $1 RETURNING booking_id",
            vec![Some(refunded_total.minor.to_string())],
        ),
        PaymentEvent::RefundRequested { .. } | PaymentEvent::RefundFailed { .. } => (
            "UPDATE rm_payments SET updated_at = $2 WHERE payment_id = $1 RETURNING booking_id",
            vec![],
        ),
    };
    let mut query = sqlx::query_scalar::<_, Uuid>(sql).bind(payment);
    match binds.as_slice() {
        [] => query = query.bind(at),
        [first] => query = query.bind(first.clone()).bind(at),
        [first, second, ..] => {
            query = query.bind(first.clone()).bind(at).bind(second.clone());
        }
    }
    Ok(query.fetch_optional(&mut *conn).await?)
}
