//! A booking's activity: what happened to it, when, and for how much, as its customer sees it.
//!
//! Built from the events of the booking's timeline (the booking, its car's hand-over and
//! return, its payments), but a view of its own: each event the customer has a reason to see
//! becomes one entry with a kind, a time, an amount as Money and a short detail; internal
//! events (reservations, authorizations, attempts, reserved refunds) and every payload and
//! metadata field (references, idempotency keys, trace ids) stay out. Staff and auditors keep
//! the raw events (`Booking.timeline`, `events`).

use async_graphql::{Enum, SimpleObject};
use chrono::{DateTime, Utc};
use eventstore::RecordedEvent;
use serde_json::Value;

use super::types::Money;

/// What happened.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ActivityKind {
    /// The car was reserved and the booking is waiting for payment (amount: the total).
    Held,
    /// The window changed (amount: the new total).
    Modified,
    /// A payment was taken (amount: what was captured).
    Paid,
    /// A payment was declined (detail: the provider's reason).
    PaymentDeclined,
    /// A payment was given up without charging anything (detail: why).
    PaymentAbandoned,
    Confirmed,
    /// Cancelled (amount: the cancellation fee, when there is one).
    Cancelled,
    /// The hold ran out before payment.
    Expired,
    /// Paid, but nobody came by the pick-up time and its grace (amount: the fee kept).
    NoShow,
    /// The car was not back by the return time and its grace.
    Overdue,
    /// The booking's car was taken out of service; staff will give it another (detail: why).
    CarWithdrawn,
    /// The booking was moved to another car, same window and price (detail: why).
    CarChanged,
    PickedUp,
    /// The car came back (amount: the final total, fees included).
    Returned,
    /// Money went back to the customer (amount: that refund).
    Refunded,
    FeedbackGiven,
}

/// One entry of a booking's activity.
#[derive(SimpleObject, Clone, Debug)]
pub(crate) struct BookingActivity {
    pub(crate) at: DateTime<Utc>,
    pub(crate) kind: ActivityKind,
    pub(crate) amount: Option<Money>,
    pub(crate) detail: Option<String>,
}

fn money(value: &Value) -> Option<Money> {
    let minor = value.get("minor")?.as_i64()?;
    let currency = value.get("currency")?.as_str()?;
    Some(Money::new(minor, currency))
}

fn text(value: &Value, field: &str) -> Option<String> {
    value.get(field)?.as_str().map(str::to_owned)
}

/// The entry an event makes, if the customer has a reason to see it.
pub(crate) fn entry(event: &RecordedEvent) -> Option<BookingActivity> {
    let p = &event.payload;
    let (kind, amount, detail) = match event.event_type.as_str() {
        "BookingHeld" => (ActivityKind::Held, money(&p["quote"]["total"]), None),
        "BookingModified" => (ActivityKind::Modified, money(&p["quote"]["total"]), None),
        "PaymentCaptured" => (ActivityKind::Paid, money(&p["amount"]), None),
        "PaymentFailed" => (ActivityKind::PaymentDeclined, None, text(p, "reason")),
        "PaymentAbandoned" => (ActivityKind::PaymentAbandoned, None, text(p, "reason")),
        "BookingConfirmed" => (ActivityKind::Confirmed, None, None),
        "BookingCancelled" => (
            ActivityKind::Cancelled,
            money(&p["fee"]).filter(|m| !m.amount.is_zero()),
            text(p, "reason"),
        ),
        "BookingExpired" => (ActivityKind::Expired, None, None),
        "BookingNoShow" => (ActivityKind::NoShow, money(&p["fee"]), None),
        "RentalOverdue" => (ActivityKind::Overdue, None, None),
        "BookingDisplaced" => (ActivityKind::CarWithdrawn, None, text(p, "reason")),
        "BookingReassigned" => (ActivityKind::CarChanged, None, text(p, "reason")),
        "RentalStarted" => (ActivityKind::PickedUp, None, None),
        "RentalCompleted" => (ActivityKind::Returned, money(&p["total"]), None),
        "PaymentRefunded" => (ActivityKind::Refunded, money(&p["amount"]), None),
        "FeedbackSubmitted" => (ActivityKind::FeedbackGiven, None, None),
        _ => return None,
    };
    // The event's own time where it has one (a hand-over at the counter), else when recorded.
    let at = p
        .get("at")
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map_or(event.recorded_at, |t| t.with_timezone(&Utc));
    Some(BookingActivity {
        at,
        kind,
        amount,
        detail,
    })
}
