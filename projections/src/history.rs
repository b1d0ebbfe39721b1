//! The history read model: bookings per customer and car, payments, and each booking's timeline.
//!
//! A booking row follows its stream (held, confirmed, modified, cancelled, expired, picked up,
//! returned with charges, feedback); payments follow theirs; the timeline lists every event that
//! touched a booking (its own, the car's reservation events for it, its payments) in commit
//! order, as references into the log.
//!
//! A batch loads the bookings and payments it touches, folds the events in memory, and writes
//! each table with one statement.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use domain::booking::BookingEvent;
use domain::car::CarEvent;
use domain::payment::PaymentEvent;
use domain::pricing::{LineCode, PriceLine, Quote};
use eventstore::RecordedEvent;
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::runtime::{ApplyError, Projection};
use crate::search::enum_name;
use crate::{aggregate_uuid, decode};

pub struct History;

/// How a booking ended before its rental.
#[derive(Clone, Copy)]
enum Ended {
    Cancelled,
    NoShow,
}

/// A booking that ended before its rental (cancelled, a no-show) costs its fee: its lines say
/// so (the booked price taken off, the fee added) and its total is the fee, as its balance.
fn ends_for_a_fee(row: &mut BookingRow, ended: Ended, fee_minor: i64) {
    let (why, fee_label, credit, fee) = match ended {
        Ended::Cancelled => (
            "cancelled",
            "cancellation fee",
            LineCode::CancellationCredit,
            LineCode::CancellationFee,
        ),
        Ended::NoShow => (
            "no-show",
            "no-show fee",
            LineCode::NoShowCredit,
            LineCode::NoShowFee,
        ),
    };
    let mut lines = match std::mem::take(&mut row.lines) {
        Value::Array(lines) => lines,
        _ => Vec::new(),
    };
    lines.push(json!({
        "code": credit.as_str(),
        "label": format!("{why}: the booked price is not charged"),
        "amount_minor": -row.total_minor,
    }));
    if fee_minor != 0 {
        lines.push(json!({ "code": fee.as_str(), "label": fee_label, "amount_minor": fee_minor }));
    }
    row.lines = Value::Array(lines);
    row.total_minor = fee_minor;
}

fn extras_json(quote: &Quote) -> Value {
    serde_json::to_value(&quote.extras).unwrap_or_else(|_| Value::Array(Vec::new()))
}

fn mileage_json(quote: &Quote) -> Option<Value> {
    quote.mileage.and_then(|m| serde_json::to_value(m).ok())
}

fn lines_json(lines: &[PriceLine]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| json!({ "code": l.code().as_str(), "label": l.label, "amount_minor": l.amount.minor }))
        .collect()
}

/// A row of `rm_bookings`: a booking as the history read model keeps it.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct BookingRow {
    pub booking_id: Uuid,
    pub customer_id: Uuid,
    pub car_id: Uuid,
    pub pickup_at: DateTime<Utc>,
    pub return_at: DateTime<Utc>,
    pub pickup_branch: String,
    pub return_branch: String,
    pub status: String,
    pub held_until: Option<DateTime<Utc>>,
    pub days: i32,
    pub total_minor: i64,
    pub currency: String,
    pub lines: Value,
    pub payment_id: Option<Uuid>,
    pub cancelled_by: Option<String>,
    pub cancel_reason: Option<String>,
    pub cancel_fee_minor: Option<i64>,
    pub picked_up_at: Option<DateTime<Utc>>,
    pub odometer_out_km: Option<f64>,
    pub fuel_out_percent: Option<f64>,
    pub returned_at: Option<DateTime<Utc>>,
    pub odometer_in_km: Option<f64>,
    pub fuel_in_percent: Option<f64>,
    pub returned_branch: Option<String>,
    pub rating: Option<i32>,
    pub comment: Option<String>,
    pub feedback_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub overdue_at: Option<DateTime<Utc>>,
    pub displaced_at: Option<DateTime<Utc>>,
    /// The extras priced in: `[{"kind": "CHILD_SEAT", "quantity": 2}]`.
    pub extras: Value,
    /// The mileage terms priced in (`MileageTerms`); NULL: unlimited.
    pub mileage: Option<Value>,
}

/// A row of `rm_payments`.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct PaymentRow {
    pub payment_id: Uuid,
    pub booking_id: Uuid,
    pub amount_minor: i64,
    pub refunded_minor: i64,
    pub currency: String,
    pub method: String,
    pub status: String,
    pub gateway: Option<String>,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The columns of [`BookingRow`].
pub const BOOKING_COLUMNS: &str = "booking_id, customer_id, car_id, pickup_at, return_at, \
    pickup_branch, return_branch, status, held_until, days, total_minor, currency, lines, \
    payment_id, cancelled_by, cancel_reason, cancel_fee_minor, picked_up_at, odometer_out_km, \
    fuel_out_percent, returned_at, odometer_in_km, fuel_in_percent, returned_branch, rating, \
    comment, feedback_at, created_at, updated_at, overdue_at, displaced_at, extras, mileage";

/// The columns of [`PaymentRow`].
pub const PAYMENT_COLUMNS: &str = "payment_id, booking_id, amount_minor, refunded_minor, \
    currency, method, status, gateway, failure_reason, created_at, updated_at";

impl PaymentRow {
    /// Money this payment holds: captured minus refunded (zero unless it was captured).
    pub fn held_minor(&self) -> i64 {
        match self.status.as_str() {
            "CAPTURED" | "PARTIALLY_REFUNDED" | "REFUNDED" => {
                self.amount_minor - self.refunded_minor
            }
            _ => 0,
        }
    }

    /// Money captured (before refunds).
    pub fn captured_minor(&self) -> i64 {
        if self.held_minor() != 0 || self.status == "REFUNDED" {
            self.amount_minor
        } else {
            0
        }
    }
}

/// One booking's row, from the read model.
pub async fn booking(
    conn: impl sqlx::PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<BookingRow>, sqlx::Error> {
    let sql = format!("SELECT {BOOKING_COLUMNS} FROM rm_bookings WHERE booking_id = $1");
    sqlx::query_as(&sql).bind(id).fetch_optional(conn).await
}

/// One payment's row, from the read model.
pub async fn payment(
    conn: impl sqlx::PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<PaymentRow>, sqlx::Error> {
    let sql = format!("SELECT {PAYMENT_COLUMNS} FROM rm_payments WHERE payment_id = $1");
    sqlx::query_as(&sql).bind(id).fetch_optional(conn).await
}

/// Which bookings a list shows: every filter given must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BookingFilter {
    /// Status names (`HELD`, `CONFIRMED`...); `None`: any.
    pub statuses: Option<Vec<String>>,
    pub car_id: Option<Uuid>,
    pub customer_id: Option<Uuid>,
}

/// Where a booking list stands: its newest-first sort key, `(created_at, booking_id)`.
pub type BookingKey = (DateTime<Utc>, Uuid);

/// The key a list resumes after, for `row`.
pub fn booking_key(row: &BookingRow) -> BookingKey {
    (row.created_at, row.booking_id)
}

const BOOKING_FILTERS: &str = "($1::text[] IS NULL OR status = ANY($1)) \
    AND ($2::uuid IS NULL OR car_id = $2) AND ($3::uuid IS NULL OR customer_id = $3)";

/// Up to `limit` bookings matching `filter`, newest first, after `after` (keyset: a booking
/// made between two pages neither repeats nor shifts a row).
pub async fn bookings(
    pool: &PgPool,
    filter: &BookingFilter,
    after: Option<BookingKey>,
    limit: i64,
) -> Result<Vec<BookingRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {BOOKING_COLUMNS} FROM rm_bookings WHERE {BOOKING_FILTERS} \
           AND ($4::timestamptz IS NULL OR (created_at, booking_id) < ($4, $5)) \
         ORDER BY created_at DESC, booking_id DESC LIMIT $6"
    );
    sqlx::query_as(&sql)
        .bind(&filter.statuses)
        .bind(filter.car_id)
        .bind(filter.customer_id)
        .bind(after.map(|a| a.0))
        .bind(after.map(|a| a.1))
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// How many bookings match `filter`, counted up to `cap` (a list's total is shown, not paid
/// for in full).
pub async fn count_bookings(
    pool: &PgPool,
    filter: &BookingFilter,
    cap: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM (SELECT 1 FROM rm_bookings WHERE {BOOKING_FILTERS} LIMIT $4) AS capped"
    ))
    .bind(&filter.statuses)
    .bind(filter.car_id)
    .bind(filter.customer_id)
    .bind(cap)
    .fetch_one(pool)
    .await
}

/// Every payment of a booking, oldest first (a booking has a handful: its payment, retries
/// with other keys, charges for fees; at most 100). Uses `rm_payments_booking_idx`.
pub async fn payments_of(pool: &PgPool, booking: Uuid) -> Result<Vec<PaymentRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM rm_payments WHERE booking_id = $1 \
         ORDER BY created_at, payment_id LIMIT 100"
    );
    sqlx::query_as(&sql).bind(booking).fetch_all(pool).await
}

/// Whether `customer` has `car` out on a rental now (an ACTIVE booking of it).
pub async fn renting(pool: &PgPool, customer: Uuid, car: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM rm_bookings \
           WHERE customer_id = $1 AND car_id = $2 AND status = 'ACTIVE')",
    )
    .bind(customer)
    .bind(car)
    .fetch_one(pool)
    .await
}

/// How many bookings hold or will take a car (HELD, CONFIRMED, ACTIVE), picked up at
/// `branch` or anywhere.
pub async fn count_active(pool: &PgPool, branch: Option<&str>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM rm_bookings WHERE status IN ('HELD', 'CONFIRMED', 'ACTIVE') \
         AND ($1::text IS NULL OR pickup_branch = $1)",
    )
    .bind(branch)
    .fetch_one(pool)
    .await
}

/// The log positions of a booking's timeline (its events and its payments'), in commit order,
/// at most `limit`: read them from the log with `EventStore::read_positions`.
pub async fn timeline(pool: &PgPool, booking: Uuid, limit: i64) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT global_position FROM rm_booking_timeline WHERE booking_id = $1 \
         ORDER BY transaction_id, global_position LIMIT $2",
    )
    .bind(booking)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Booking `id`'s row folded from events alone, exactly as this projection writes it: its
/// stream's events, and payment events naming it (what set its `payment_id` before it was
/// confirmed); anything else is passed over. `None` when no `BookingHeld` is among them. This is
/// the write side's answer when the read model is behind: the same row, from the log.
pub fn booking_from_events(
    id: Uuid,
    events: &[RecordedEvent],
) -> Result<Option<BookingRow>, ApplyError> {
    let mut bookings = HashMap::new();
    for event in events {
        match event.aggregate_type.as_str() {
            "booking" if aggregate_uuid(event)? == id => {
                apply_booking(&mut bookings, id, decode(event)?, event.recorded_at)?;
            }
            "payment" => {
                if let PaymentEvent::PaymentRequested { booking_id, .. } = decode(event)?
                    && booking_id == id
                    && let Some(row) = bookings.get_mut(&id)
                {
                    row.payment_id = Some(aggregate_uuid(event)?);
                }
            }
            _ => {}
        }
    }
    Ok(bookings.remove(&id))
}

/// Payment `id`'s row folded from its stream's events, as this projection writes it.
pub fn payment_from_events(
    id: Uuid,
    events: &[RecordedEvent],
) -> Result<Option<PaymentRow>, ApplyError> {
    let mut payments = HashMap::new();
    for event in events {
        if event.aggregate_type == "payment" && aggregate_uuid(event)? == id {
            apply_payment(&mut payments, id, decode(event)?, event.recorded_at)?;
        }
    }
    Ok(payments.remove(&id))
}

enum Decoded {
    Booking(Uuid, BookingEvent),
    Car(CarEvent),
    Payment(Uuid, PaymentEvent),
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
        events: &[&RecordedEvent],
    ) -> Result<(), ApplyError> {
        let mut decoded = Vec::with_capacity(events.len());
        let mut booking_ids = HashSet::new();
        let mut payment_ids = HashSet::new();
        for event in events {
            let item = match event.aggregate_type.as_str() {
                "booking" => {
                    let id = aggregate_uuid(event)?;
                    booking_ids.insert(id);
                    Decoded::Booking(id, decode(event)?)
                }
                "car" => Decoded::Car(decode(event)?),
                _ => {
                    let id = aggregate_uuid(event)?;
                    payment_ids.insert(id);
                    let e: PaymentEvent = decode(event)?;
                    if let PaymentEvent::PaymentRequested { booking_id, .. } = &e {
                        booking_ids.insert(*booking_id);
                    }
                    Decoded::Payment(id, e)
                }
            };
            decoded.push((item, *event));
        }
        let mut bookings = load_bookings(conn, booking_ids).await?;
        let mut payments = load_payments(conn, payment_ids).await?;
        let mut dirty_bookings = HashSet::new();
        let mut dirty_payments = HashSet::new();
        let mut timeline: Vec<(Uuid, &RecordedEvent)> = Vec::new();
        for (item, event) in decoded {
            let at = event.recorded_at;
            match item {
                Decoded::Booking(id, e) => {
                    apply_booking(&mut bookings, id, e, at)?;
                    dirty_bookings.insert(id);
                    timeline.push((id, event));
                }
                Decoded::Car(
                    CarEvent::CarReserved { booking_id, .. }
                    | CarEvent::ReservationChanged { booking_id, .. }
                    | CarEvent::ReservationReleased { booking_id, .. }
                    | CarEvent::CarPickedUp { booking_id, .. }
                    | CarEvent::CarReturned { booking_id, .. },
                ) => timeline.push((booking_id, event)),
                Decoded::Car(_) => {}
                Decoded::Payment(id, e) => {
                    if let PaymentEvent::PaymentRequested { booking_id, .. } = &e
                        && let Some(booking) = bookings.get_mut(booking_id)
                    {
                        booking.payment_id = Some(id);
                        dirty_bookings.insert(*booking_id);
                    }
                    if let Some(booking) = apply_payment(&mut payments, id, e, at)? {
                        dirty_payments.insert(id);
                        timeline.push((booking, event));
                    }
                }
            }
        }
        let changed: Vec<&BookingRow> = dirty_bookings
            .iter()
            .filter_map(|id| bookings.get(id))
            .collect();
        write_bookings(conn, &changed).await?;
        let changed: Vec<&PaymentRow> = dirty_payments
            .iter()
            .filter_map(|id| payments.get(id))
            .collect();
        write_payments(conn, &changed).await?;
        write_timeline(conn, &timeline).await
    }
}

async fn load_bookings(
    conn: &mut PgConnection,
    ids: HashSet<Uuid>,
) -> Result<HashMap<Uuid, BookingRow>, ApplyError> {
    let ids: Vec<Uuid> = ids.into_iter().collect();
    let sql = format!("SELECT {BOOKING_COLUMNS} FROM rm_bookings WHERE booking_id = ANY($1)");
    Ok(sqlx::query_as::<_, BookingRow>(&sql)
        .bind(&ids)
        .fetch_all(conn)
        .await?
        .into_iter()
        .map(|row| (row.booking_id, row))
        .collect())
}

async fn load_payments(
    conn: &mut PgConnection,
    ids: HashSet<Uuid>,
) -> Result<HashMap<Uuid, PaymentRow>, ApplyError> {
    let ids: Vec<Uuid> = ids.into_iter().collect();
    let sql = format!("SELECT {PAYMENT_COLUMNS} FROM rm_payments WHERE payment_id = ANY($1)");
    Ok(sqlx::query_as::<_, PaymentRow>(&sql)
        .bind(&ids)
        .fetch_all(conn)
        .await?
        .into_iter()
        .map(|row| (row.payment_id, row))
        .collect())
}

fn apply_booking(
    bookings: &mut HashMap<Uuid, BookingRow>,
    id: Uuid,
    event: BookingEvent,
    at: DateTime<Utc>,
) -> Result<(), ApplyError> {
    if let BookingEvent::BookingHeld {
        customer_id,
        car_id,
        window,
        pickup_branch,
        return_branch,
        quote,
        held_until,
        at: held_at,
        ..
    } = event
    {
        if bookings.contains_key(&id) {
            return Err(ApplyError::Invalid(format!("booking {id} held twice")));
        }
        bookings.insert(
            id,
            BookingRow {
                booking_id: id,
                customer_id,
                car_id,
                pickup_at: window.start,
                return_at: window.end,
                pickup_branch,
                return_branch,
                status: "HELD".to_owned(),
                held_until: Some(held_until),
                days: i32::try_from(quote.days).unwrap_or(i32::MAX),
                total_minor: quote.total.minor,
                currency: quote.total.currency.as_str().to_owned(),
                lines: Value::Array(lines_json(&quote.lines)),
                extras: extras_json(&quote),
                mileage: mileage_json(&quote),
                payment_id: None,
                cancelled_by: None,
                cancel_reason: None,
                cancel_fee_minor: None,
                picked_up_at: None,
                odometer_out_km: None,
                fuel_out_percent: None,
                returned_at: None,
                odometer_in_km: None,
                fuel_in_percent: None,
                returned_branch: None,
                rating: None,
                comment: None,
                feedback_at: None,
                created_at: held_at,
                updated_at: at,
                overdue_at: None,
                displaced_at: None,
            },
        );
        return Ok(());
    }
    // Events for a booking never held leave nothing to update.
    let Some(row) = bookings.get_mut(&id) else {
        return Ok(());
    };
    row.updated_at = at;
    match event {
        BookingEvent::BookingHeld { .. } => {}
        BookingEvent::BookingConfirmed { payment_id, .. } => {
            row.status = "CONFIRMED".to_owned();
            row.held_until = None;
            row.payment_id = Some(payment_id);
        }
        BookingEvent::BookingModified { to, quote, .. } => {
            row.pickup_at = to.start;
            row.return_at = to.end;
            row.days = i32::try_from(quote.days).unwrap_or(i32::MAX);
            row.total_minor = quote.total.minor;
            row.currency = quote.total.currency.as_str().to_owned();
            row.lines = Value::Array(lines_json(&quote.lines));
            row.extras = extras_json(&quote);
            row.mileage = mileage_json(&quote);
        }
        BookingEvent::BookingCancelled {
            by, reason, fee, ..
        } => {
            row.status = "CANCELLED".to_owned();
            row.held_until = None;
            row.cancelled_by = Some(enum_name(&by));
            row.cancel_reason = reason;
            row.cancel_fee_minor = Some(fee.minor);
            ends_for_a_fee(row, Ended::Cancelled, fee.minor);
        }
        BookingEvent::BookingExpired { .. } => {
            row.status = "EXPIRED".to_owned();
            row.held_until = None;
        }
        BookingEvent::BookingNoShow { fee, .. } => {
            row.status = "NO_SHOW".to_owned();
            // What the booking keeps, as for a cancellation.
            row.cancel_fee_minor = Some(fee.minor);
            ends_for_a_fee(row, Ended::NoShow, fee.minor);
        }
        BookingEvent::RentalOverdue { at } => row.overdue_at = Some(at),
        BookingEvent::BookingReassigned { to_car, .. } => {
            row.car_id = to_car;
            row.displaced_at = None;
        }
        BookingEvent::BookingDisplaced { at, .. } => row.displaced_at = Some(at),
        BookingEvent::RentalStarted {
            odometer_km,
            fuel_percent,
            at: started,
        } => {
            row.status = "ACTIVE".to_owned();
            row.picked_up_at = Some(started);
            row.odometer_out_km = Some(odometer_km);
            row.fuel_out_percent = Some(fuel_percent);
        }
        BookingEvent::RentalCompleted {
            odometer_km,
            fuel_percent,
            branch,
            charges,
            total,
            at: returned,
        } => {
            row.status = "COMPLETED".to_owned();
            row.returned_at = Some(returned);
            row.odometer_in_km = Some(odometer_km);
            row.fuel_in_percent = Some(fuel_percent);
            row.returned_branch = Some(branch);
            row.total_minor = total.minor;
            if let Value::Array(lines) = &mut row.lines {
                lines.extend(lines_json(&charges));
            }
        }
        BookingEvent::FeedbackSubmitted {
            rating,
            comment,
            at: submitted,
        } => {
            row.rating = Some(i32::from(rating));
            row.comment = comment;
            row.feedback_at = Some(submitted);
        }
    }
    Ok(())
}

/// Fold a payment event; the booking it belongs to, if the payment is known.
fn apply_payment(
    payments: &mut HashMap<Uuid, PaymentRow>,
    id: Uuid,
    event: PaymentEvent,
    at: DateTime<Utc>,
) -> Result<Option<Uuid>, ApplyError> {
    if let PaymentEvent::PaymentRequested {
        booking_id,
        amount,
        method,
        ..
    } = event
    {
        if payments.contains_key(&id) {
            return Err(ApplyError::Invalid(format!("payment {id} requested twice")));
        }
        payments.insert(
            id,
            PaymentRow {
                payment_id: id,
                booking_id,
                amount_minor: amount.minor,
                refunded_minor: 0,
                currency: amount.currency.as_str().to_owned(),
                method: enum_name(&method),
                status: "PENDING".to_owned(),
                gateway: None,
                failure_reason: None,
                created_at: at,
                updated_at: at,
            },
        );
        return Ok(Some(booking_id));
    }
    let Some(row) = payments.get_mut(&id) else {
        return Ok(None);
    };
    row.updated_at = at;
    match event {
        PaymentEvent::PaymentRequested { .. }
        | PaymentEvent::RefundRequested { .. }
        | PaymentEvent::RefundFailed { .. } => {}
        PaymentEvent::PaymentAuthorized { gateway, .. } => {
            row.status = "AUTHORIZED".to_owned();
            row.gateway = Some(gateway);
            row.failure_reason = None;
        }
        PaymentEvent::PaymentFailed { gateway, reason } => {
            row.status = "FAILED".to_owned();
            row.gateway = Some(gateway);
            row.failure_reason = Some(reason);
        }
        PaymentEvent::PaymentAbandoned { reason } => {
            row.status = "FAILED".to_owned();
            row.failure_reason = Some(reason);
        }
        PaymentEvent::PaymentAttemptFailed { attempt, tried } => {
            row.status = "PENDING".to_owned();
            row.failure_reason = Some(format!(
                "attempt {attempt}: no payment gateway answered ({} tried)",
                tried.len()
            ));
        }
        PaymentEvent::PaymentRetried { .. } => {
            row.status = "PENDING".to_owned();
            row.failure_reason = None;
        }
        PaymentEvent::PaymentCaptured { .. } => row.status = "CAPTURED".to_owned(),
        PaymentEvent::PaymentRefunded { refunded_total, .. } => {
            row.refunded_minor = refunded_total.minor;
            row.status = if refunded_total.minor >= row.amount_minor {
                "REFUNDED"
            } else {
                "PARTIALLY_REFUNDED"
            }
            .to_owned();
        }
    }
    Ok(Some(row.booking_id))
}

async fn write_bookings(conn: &mut PgConnection, rows: &[&BookingRow]) -> Result<(), ApplyError> {
    if rows.is_empty() {
        return Ok(());
    }
    macro_rules! column {
        ($field:ident) => {
            rows.iter().map(|r| r.$field.clone()).collect::<Vec<_>>()
        };
    }
    let lines: Vec<String> = rows.iter().map(|r| r.lines.to_string()).collect();
    let extras: Vec<String> = rows.iter().map(|r| r.extras.to_string()).collect();
    let mileage: Vec<Option<String>> = rows
        .iter()
        .map(|r| r.mileage.as_ref().map(Value::to_string))
        .collect();
    sqlx::query(
        "INSERT INTO rm_bookings (booking_id, customer_id, car_id, pickup_at, return_at, \
           pickup_branch, return_branch, status, held_until, days, total_minor, currency, lines, \
           payment_id, cancelled_by, cancel_reason, cancel_fee_minor, picked_up_at, \
           odometer_out_km, fuel_out_percent, returned_at, odometer_in_km, fuel_in_percent, \
           returned_branch, rating, comment, feedback_at, created_at, updated_at, overdue_at, \
           displaced_at, extras, mileage) \
         SELECT booking_id, customer_id, car_id, pickup_at, return_at, pickup_branch, \
           return_branch, status, held_until, days, total_minor, currency, lines::jsonb, \
           payment_id, cancelled_by, cancel_reason, cancel_fee_minor, picked_up_at, \
           odometer_out_km, fuel_out_percent, returned_at, odometer_in_km, fuel_in_percent, \
           returned_branch, rating, comment, feedback_at, created_at, updated_at, overdue_at, \
           displaced_at, extras::jsonb, mileage::jsonb \
         FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::timestamptz[], $5::timestamptz[], \
           $6::text[], $7::text[], $8::text[], $9::timestamptz[], $10::int[], $11::bigint[], \
           $12::text[], $13::text[], $14::uuid[], $15::text[], $16::text[], $17::bigint[], \
           $18::timestamptz[], $19::float8[], $20::float8[], $21::timestamptz[], $22::float8[], \
           $23::float8[], $24::text[], $25::int[], $26::text[], $27::timestamptz[], \
           $28::timestamptz[], $29::timestamptz[], $30::timestamptz[], $31::timestamptz[], \
           $32::text[], $33::text[]) \
           AS u(booking_id, customer_id, car_id, pickup_at, return_at, pickup_branch, \
             return_branch, status, held_until, days, total_minor, currency, lines, payment_id, \
             cancelled_by, cancel_reason, cancel_fee_minor, picked_up_at, odometer_out_km, \
             fuel_out_percent, returned_at, odometer_in_km, fuel_in_percent, returned_branch, \
             rating, comment, feedback_at, created_at, updated_at, overdue_at, displaced_at, \
             extras, mileage) \
         ON CONFLICT (booking_id) DO UPDATE SET car_id = EXCLUDED.car_id, \
           pickup_at = EXCLUDED.pickup_at, \
           return_at = EXCLUDED.return_at, status = EXCLUDED.status, \
           held_until = EXCLUDED.held_until, days = EXCLUDED.days, \
           total_minor = EXCLUDED.total_minor, currency = EXCLUDED.currency, \
           lines = EXCLUDED.lines, payment_id = EXCLUDED.payment_id, \
           cancelled_by = EXCLUDED.cancelled_by, cancel_reason = EXCLUDED.cancel_reason, \
           cancel_fee_minor = EXCLUDED.cancel_fee_minor, picked_up_at = EXCLUDED.picked_up_at, \
           odometer_out_km = EXCLUDED.odometer_out_km, \
           fuel_out_percent = EXCLUDED.fuel_out_percent, returned_at = EXCLUDED.returned_at, \
           odometer_in_km = EXCLUDED.odometer_in_km, fuel_in_percent = EXCLUDED.fuel_in_percent, \
           returned_branch = EXCLUDED.returned_branch, rating = EXCLUDED.rating, \
           comment = EXCLUDED.comment, feedback_at = EXCLUDED.feedback_at, \
           updated_at = EXCLUDED.updated_at, overdue_at = EXCLUDED.overdue_at, \
           displaced_at = EXCLUDED.displaced_at, extras = EXCLUDED.extras, \
           mileage = EXCLUDED.mileage",
    )
    .bind(column!(booking_id))
    .bind(column!(customer_id))
    .bind(column!(car_id))
    .bind(column!(pickup_at))
    .bind(column!(return_at))
    .bind(column!(pickup_branch))
    .bind(column!(return_branch))
    .bind(column!(status))
    .bind(column!(held_until))
    .bind(column!(days))
    .bind(column!(total_minor))
    .bind(column!(currency))
    .bind(lines)
    .bind(column!(payment_id))
    .bind(column!(cancelled_by))
    .bind(column!(cancel_reason))
    .bind(column!(cancel_fee_minor))
    .bind(column!(picked_up_at))
    .bind(column!(odometer_out_km))
    .bind(column!(fuel_out_percent))
    .bind(column!(returned_at))
    .bind(column!(odometer_in_km))
    .bind(column!(fuel_in_percent))
    .bind(column!(returned_branch))
    .bind(column!(rating))
    .bind(column!(comment))
    .bind(column!(feedback_at))
    .bind(column!(created_at))
    .bind(column!(updated_at))
    .bind(column!(overdue_at))
    .bind(column!(displaced_at))
    .bind(extras)
    .bind(mileage)
    .execute(conn)
    .await?;
    Ok(())
}

async fn write_payments(conn: &mut PgConnection, rows: &[&PaymentRow]) -> Result<(), ApplyError> {
    if rows.is_empty() {
        return Ok(());
    }
    macro_rules! column {
        ($field:ident) => {
            rows.iter().map(|r| r.$field.clone()).collect::<Vec<_>>()
        };
    }
    sqlx::query(
        "INSERT INTO rm_payments (payment_id, booking_id, amount_minor, refunded_minor, currency, \
           method, status, gateway, failure_reason, created_at, updated_at) \
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::bigint[], $5::text[], \
           $6::text[], $7::text[], $8::text[], $9::text[], $10::timestamptz[], \
           $11::timestamptz[]) \
         ON CONFLICT (payment_id) DO UPDATE SET refunded_minor = EXCLUDED.refunded_minor, \
           status = EXCLUDED.status, gateway = EXCLUDED.gateway, \
           failure_reason = EXCLUDED.failure_reason, updated_at = EXCLUDED.updated_at",
    )
    .bind(column!(payment_id))
    .bind(column!(booking_id))
    .bind(column!(amount_minor))
    .bind(column!(refunded_minor))
    .bind(column!(currency))
    .bind(column!(method))
    .bind(column!(status))
    .bind(column!(gateway))
    .bind(column!(failure_reason))
    .bind(column!(created_at))
    .bind(column!(updated_at))
    .execute(conn)
    .await?;
    Ok(())
}

async fn write_timeline(
    conn: &mut PgConnection,
    rows: &[(Uuid, &RecordedEvent)],
) -> Result<(), ApplyError> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO rm_booking_timeline (booking_id, transaction_id, global_position, event_type) \
         SELECT * FROM unnest($1::uuid[], $2::xid8[], $3::bigint[], $4::text[]) \
           AS u(b, t, p, e)",
    )
    .bind(rows.iter().map(|(b, _)| *b).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|(_, e)| eventstore::Xid8(e.transaction_id))
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|(_, e)| e.global_position)
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|(_, e)| e.event_type.clone())
            .collect::<Vec<_>>(),
    )
    .execute(conn)
    .await?;
    Ok(())
}
