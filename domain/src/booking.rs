//! The Booking aggregate: a customer's rental of one car, from hold to feedback.
//!
//! HELD (car reserved, waiting for payment until `held_until`) → CONFIRMED (paid) → ACTIVE
//! (picked up) → COMPLETED (returned). HELD or CONFIRMED can be cancelled; HELD past
//! `held_until` expires. The car's side of each step (reserve, release, hand over, take back)
//! is a Car command appended in the same transaction by the application layer.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::money::Money;
use crate::pricing::{PriceLine, Quote};
use crate::window::TimeWindow;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BookingStatus {
    Held,
    Confirmed,
    Active,
    Completed,
    Cancelled,
    Expired,
    /// Paid, but the customer never came: the car was released after the pick-up time and
    /// its grace, and the no-show fee kept.
    NoShow,
}

impl BookingStatus {
    /// The name clients see (the API's enum value).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "HELD",
            Self::Confirmed => "CONFIRMED",
            Self::Active => "ACTIVE",
            Self::Completed => "COMPLETED",
            Self::Cancelled => "CANCELLED",
            Self::Expired => "EXPIRED",
            Self::NoShow => "NO_SHOW",
        }
    }
}

impl std::fmt::Display for BookingStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CancelledBy {
    Customer,
    Staff,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feedback {
    pub rating: u8,
    pub comment: Option<String>,
    pub submitted_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum BookingCommand {
    Request {
        booking_id: Uuid,
        customer_id: Uuid,
        car_id: Uuid,
        window: TimeWindow,
        pickup_branch: String,
        return_branch: String,
        quote: Quote,
        held_until: DateTime<Utc>,
        now: DateTime<Utc>,
    },
    Confirm {
        payment_id: Uuid,
        now: DateTime<Utc>,
    },
    Modify {
        window: TimeWindow,
        quote: Quote,
        now: DateTime<Utc>,
    },
    Cancel {
        by: CancelledBy,
        reason: Option<String>,
        fee: Money,
        now: DateTime<Utc>,
    },
    Expire {
        now: DateTime<Utc>,
    },
    /// The customer did not come by the pick-up time plus `grace_minutes`: keep `fee`.
    MarkNoShow {
        fee: Money,
        grace_minutes: i64,
        now: DateTime<Utc>,
    },
    /// The car was not back by the return time plus `grace_minutes`.
    MarkOverdue {
        grace_minutes: i64,
        now: DateTime<Utc>,
    },
    /// Staff moves a booking that has not started to another car (same window, same price).
    Reassign {
        car_id: Uuid,
        reason: String,
        now: DateTime<Utc>,
    },
    /// The booking's car was taken out of service over its window (urgent maintenance): it
    /// waits for staff to reassign it.
    Displace {
        reason: String,
        now: DateTime<Utc>,
    },
    PickUp {
        odometer_km: f64,
        fuel_percent: f64,
        /// The car goes out before the booking's window (earlier than the desk's allowance):
        /// the rental then runs from `now` to the booked return, priced by this quote.
        from_now: Option<Quote>,
        now: DateTime<Utc>,
    },
    Return {
        odometer_km: f64,
        fuel_percent: f64,
        branch: String,
        charges: Vec<PriceLine>,
        now: DateTime<Utc>,
    },
    SubmitFeedback {
        rating: i32,
        comment: Option<String>,
        now: DateTime<Utc>,
    },
}

#[derive(
    Clone, Debug, PartialEq, Serialize, Deserialize, strum::IntoStaticStr, strum::VariantNames,
)]
pub enum BookingEvent {
    BookingHeld {
        booking_id: Uuid,
        customer_id: Uuid,
        car_id: Uuid,
        window: TimeWindow,
        pickup_branch: String,
        return_branch: String,
        quote: Quote,
        held_until: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    BookingConfirmed {
        payment_id: Uuid,
        at: DateTime<Utc>,
    },
    BookingModified {
        from: TimeWindow,
        to: TimeWindow,
        quote: Quote,
        at: DateTime<Utc>,
    },
    BookingCancelled {
        by: CancelledBy,
        reason: Option<String>,
        fee: Money,
        at: DateTime<Utc>,
    },
    BookingExpired {
        at: DateTime<Utc>,
    },
    /// The customer never came; `fee` is kept, the rest goes back.
    BookingNoShow {
        fee: Money,
        at: DateTime<Utc>,
    },
    /// The car is not back by its return time and grace: staff follows up.
    RentalOverdue {
        at: DateTime<Utc>,
    },
    /// Staff moved the booking to another car; window and price stay.
    BookingReassigned {
        from_car: Uuid,
        to_car: Uuid,
        reason: String,
        at: DateTime<Utc>,
    },
    /// The booking's car was taken out of service over its window; the booking needs another.
    BookingDisplaced {
        car_id: Uuid,
        reason: String,
        at: DateTime<Utc>,
    },
    RentalStarted {
        odometer_km: f64,
        fuel_percent: f64,
        at: DateTime<Utc>,
    },
    RentalCompleted {
        odometer_km: f64,
        fuel_percent: f64,
        branch: String,
        charges: Vec<PriceLine>,
        total: Money,
        at: DateTime<Utc>,
    },
    FeedbackSubmitted {
        rating: u8,
        comment: Option<String>,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for BookingEvent {
    fn event_type(&self) -> String {
        // The variant's name: one per variant, listed in `EVENT_TYPES`.
        <&'static str>::from(self).to_owned()
    }

    fn event_version(&self) -> String {
        crate::V1.to_owned()
    }
}

/// Every event type a booking emits, for the event catalog and the relay's topics.
pub const EVENT_TYPES: &[&str] = <BookingEvent as strum::VariantNames>::VARIANTS;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BookingError {
    #[error("booking already exists")]
    AlreadyExists,
    #[error("booking not found")]
    NotFound,
    #[error("the booking is {status}: it cannot be {action}")]
    InvalidTransition {
        status: BookingStatus,
        action: &'static str,
    },
    #[error("the hold ended at {0}; the booking can no longer be confirmed")]
    HoldEnded(DateTime<Utc>),
    #[error("the hold lasts until {0}; it cannot expire before")]
    HoldNotEnded(DateTime<Utc>),
    #[error("the pickup must be in the future")]
    PickupInPast,
    #[error("rating must be 1 to 5")]
    InvalidRating,
    #[error("comment must be at most 2000 characters")]
    CommentTooLong,
    #[error("feedback was already given")]
    FeedbackAlreadyGiven,
    #[error("the booking's car was taken out of service: reassign it to another car first")]
    Displaced,
    #[error("invalid {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    #[error("the odometer cannot go back from {pickup} km to {given} km")]
    OdometerBackwards { pickup: String, given: String },
    #[error("amounts must be in the booking's currency")]
    CurrencyMismatch,
    #[error("nothing to change")]
    Unchanged,
    #[error("not before {0}: the pick-up time and its grace have not passed")]
    NoShowTooEarly(DateTime<Utc>),
    #[error("not before {0}: the return time and its grace have not passed")]
    NotOverdueYet(DateTime<Utc>),
}

/// A booking's state, rebuilt from its events.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Booking {
    pub id: Option<Uuid>,
    pub status: Option<BookingStatus>,
    pub customer_id: Option<Uuid>,
    pub car_id: Option<Uuid>,
    pub window: Option<TimeWindow>,
    pub pickup_branch: Option<String>,
    pub return_branch: Option<String>,
    pub quote: Option<Quote>,
    pub held_until: Option<DateTime<Utc>>,
    pub payment_id: Option<Uuid>,
    pub pickup_odometer_km: Option<f64>,
    pub pickup_fuel_percent: Option<f64>,
    pub extra_charges: Vec<PriceLine>,
    pub total: Option<Money>,
    pub cancellation_fee: Option<Money>,
    pub feedback: Option<Feedback>,
    /// Kept when the customer never came.
    #[serde(default)]
    pub no_show_fee: Option<Money>,
    /// The car is late back (an ACTIVE rental past its return time and grace).
    #[serde(default)]
    pub overdue: bool,
    /// Its car was taken out of service: it needs another (until reassigned).
    #[serde(default)]
    pub displaced: bool,
}

fn check_percent(field: &'static str, v: f64) -> Result<(), BookingError> {
    if v.is_finite() && (0.0..=100.0).contains(&v) {
        Ok(())
    } else {
        Err(BookingError::Invalid {
            field,
            reason: "must be between 0 and 100",
        })
    }
}

/// Why staff moved or flagged a booking: 1 to 500 characters.
fn check_reason(reason: &str) -> Result<(), BookingError> {
    if reason.trim().is_empty() || reason.chars().count() > 500 {
        return Err(BookingError::Invalid {
            field: "reason",
            reason: "must be 1 to 500 characters",
        });
    }
    Ok(())
}

fn check_odometer(v: f64) -> Result<(), BookingError> {
    if v.is_finite() && (0.0..=10_000_000.0).contains(&v) {
        Ok(())
    } else {
        Err(BookingError::Invalid {
            field: "odometerKm",
            reason: "must be between 0 and 10,000,000",
        })
    }
}

impl Booking {
    /// The daily rate the booking was priced at: the quote's base line is days × rate
    /// (pricing::quote), so the division is exact.
    pub fn daily_rate(&self) -> Option<Money> {
        let quote = self.quote.as_ref()?;
        let base = quote.lines.first()?;
        (quote.days > 0).then(|| Money::new(base.amount.minor / quote.days, base.amount.currency))
    }

    /// The extras the booking was priced with.
    pub fn extras(&self) -> &[crate::pricing::Extra] {
        self.quote.as_ref().map_or(&[], |q| q.extras.as_slice())
    }

    fn status(&self) -> Result<BookingStatus, BookingError> {
        self.status.ok_or(BookingError::NotFound)
    }

    fn expect(
        &self,
        allowed: &[BookingStatus],
        action: &'static str,
    ) -> Result<BookingStatus, BookingError> {
        let status = self.status()?;
        if allowed.contains(&status) {
            Ok(status)
        } else {
            Err(BookingError::InvalidTransition { status, action })
        }
    }

    fn currency_ok(&self, amount: &Money) -> Result<(), BookingError> {
        match &self.total {
            Some(total) if total.currency != amount.currency => Err(BookingError::CurrencyMismatch),
            _ => Ok(()),
        }
    }
}

impl Aggregate for Booking {
    const TYPE: &'static str = "booking";
    type Command = BookingCommand;
    type Event = BookingEvent;
    type Error = BookingError;
    type Services = ();

    async fn handle(
        &mut self,
        command: BookingCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), BookingError> {
        use BookingStatus::{Active, Cancelled, Completed, Confirmed, Expired, Held, NoShow};
        let event = match command {
            BookingCommand::Request {
                booking_id,
                customer_id,
                car_id,
                window,
                pickup_branch,
                return_branch,
                quote,
                held_until,
                now,
            } => {
                if self.status.is_some() {
                    return Err(BookingError::AlreadyExists);
                }
                if window.start < now {
                    return Err(BookingError::PickupInPast);
                }
                BookingEvent::BookingHeld {
                    booking_id,
                    customer_id,
                    car_id,
                    window,
                    pickup_branch,
                    return_branch,
                    quote,
                    held_until,
                    at: now,
                }
            }
            BookingCommand::Confirm { payment_id, now } => {
                if self.status()? == Confirmed && self.payment_id == Some(payment_id) {
                    return Ok(());
                }
                self.expect(&[Held], "confirmed")?;
                if let Some(until) = self.held_until
                    && now >= until
                {
                    return Err(BookingError::HoldEnded(until));
                }
                BookingEvent::BookingConfirmed {
                    payment_id,
                    at: now,
                }
            }
            BookingCommand::Modify { window, quote, now } => {
                self.expect(&[Held, Confirmed, Active], "modified")?;
                let from = self.window.ok_or(BookingError::NotFound)?;
                if self.status()? == Active {
                    // The car is out: the pick-up happened; only the return can move, and not
                    // into the past.
                    if window.start != from.start {
                        return Err(BookingError::Invalid {
                            field: "pickupAt",
                            reason: "an active rental keeps the time its car was picked up",
                        });
                    }
                    if window.end <= now {
                        return Err(BookingError::Invalid {
                            field: "returnAt",
                            reason: "an active rental's new return must be in the future; \
                                     return the car instead",
                        });
                    }
                } else if window.start < now {
                    return Err(BookingError::PickupInPast);
                }
                self.currency_ok(&quote.total)?;
                if from == window && self.quote.as_ref() == Some(&quote) {
                    return Err(BookingError::Unchanged);
                }
                BookingEvent::BookingModified {
                    from,
                    to: window,
                    quote,
                    at: now,
                }
            }
            BookingCommand::Cancel {
                by,
                reason,
                fee,
                now,
            } => {
                if self.status()? == Cancelled {
                    return Ok(());
                }
                self.expect(&[Held, Confirmed], "cancelled")?;
                if reason.as_ref().is_some_and(|r| r.len() > 500) {
                    return Err(BookingError::Invalid {
                        field: "reason",
                        reason: "at most 500 characters",
                    });
                }
                self.currency_ok(&fee)?;
                BookingEvent::BookingCancelled {
                    by,
                    reason,
                    fee,
                    at: now,
                }
            }
            BookingCommand::Expire { now } => {
                if self.status()? == Expired {
                    return Ok(());
                }
                self.expect(&[Held], "expired")?;
                let until = self.held_until.ok_or(BookingError::NotFound)?;
                if now < until {
                    return Err(BookingError::HoldNotEnded(until));
                }
                BookingEvent::BookingExpired { at: now }
            }
            BookingCommand::MarkNoShow {
                fee,
                grace_minutes,
                now,
            } => {
                if self.status()? == NoShow {
                    return Ok(());
                }
                self.expect(&[Confirmed], "marked a no-show")?;
                if self.displaced {
                    // No car waited for the customer: not a no-show; staff settles it.
                    return Ok(());
                }
                self.currency_ok(&fee)?;
                let window = self.window.ok_or(BookingError::NotFound)?;
                let from = window.start + Duration::minutes(grace_minutes.max(0));
                if now < from {
                    return Err(BookingError::NoShowTooEarly(from));
                }
                let total = self.total.ok_or(BookingError::NotFound)?;
                let fee = Money::new(fee.minor.clamp(0, total.minor.max(0)), fee.currency);
                BookingEvent::BookingNoShow { fee, at: now }
            }
            BookingCommand::MarkOverdue { grace_minutes, now } => {
                self.expect(&[Active], "overdue")?;
                if self.overdue {
                    return Ok(());
                }
                let window = self.window.ok_or(BookingError::NotFound)?;
                let from = window.end + Duration::minutes(grace_minutes.max(0));
                if now < from {
                    return Err(BookingError::NotOverdueYet(from));
                }
                BookingEvent::RentalOverdue { at: now }
            }
            BookingCommand::Reassign {
                car_id,
                reason,
                now,
            } => {
                self.expect(&[Held, Confirmed], "reassigned")?;
                let from_car = self.car_id.ok_or(BookingError::NotFound)?;
                // A booking that lost its car may get the same car back (relocated home).
                if from_car == car_id && !self.displaced {
                    return Err(BookingError::Invalid {
                        field: "carId",
                        reason: "the booking already has this car",
                    });
                }
                check_reason(&reason)?;
                BookingEvent::BookingReassigned {
                    from_car,
                    to_car: car_id,
                    reason,
                    at: now,
                }
            }
            BookingCommand::Displace { reason, now } => {
                if self.displaced {
                    return Ok(());
                }
                self.expect(&[Held, Confirmed], "displaced")?;
                check_reason(&reason)?;
                BookingEvent::BookingDisplaced {
                    car_id: self.car_id.ok_or(BookingError::NotFound)?,
                    reason,
                    at: now,
                }
            }
            BookingCommand::PickUp {
                odometer_km,
                fuel_percent,
                from_now,
                now,
            } => {
                self.expect(&[Confirmed], "picked up")?;
                if self.displaced {
                    return Err(BookingError::Displaced);
                }
                check_odometer(odometer_km)?;
                check_percent("fuelPercent", fuel_percent)?;
                if let Some(quote) = from_now {
                    // Out early: the rental runs from now, re-priced, before it starts.
                    let from = self.window.ok_or(BookingError::NotFound)?;
                    if now >= from.start {
                        return Err(BookingError::Invalid {
                            field: "pickupAt",
                            reason: "only a pick-up before the booked time is re-priced",
                        });
                    }
                    self.currency_ok(&quote.total)?;
                    // Microseconds, as every stored window.
                    let to = TimeWindow::new(now, from.end).map_err(|_| BookingError::Invalid {
                        field: "pickupAt",
                        reason: "only a pick-up before the booked time is re-priced",
                    })?;
                    sink.write(
                        BookingEvent::BookingModified {
                            from,
                            to,
                            quote,
                            at: now,
                        },
                        self,
                    )
                    .await;
                }
                BookingEvent::RentalStarted {
                    odometer_km,
                    fuel_percent,
                    at: now,
                }
            }
            BookingCommand::Return {
                odometer_km,
                fuel_percent,
                branch,
                charges,
                now,
            } => {
                self.expect(&[Active], "returned")?;
                check_odometer(odometer_km)?;
                check_percent("fuelPercent", fuel_percent)?;
                let pickup = self.pickup_odometer_km.unwrap_or(0.0);
                if odometer_km < pickup {
                    return Err(BookingError::OdometerBackwards {
                        pickup: pickup.to_string(),
                        given: odometer_km.to_string(),
                    });
                }
                let mut total = self.total.ok_or(BookingError::NotFound)?;
                for line in &charges {
                    total = total
                        .checked_add(line.amount)
                        .map_err(|_| BookingError::CurrencyMismatch)?;
                }
                BookingEvent::RentalCompleted {
                    odometer_km,
                    fuel_percent,
                    branch,
                    charges,
                    total,
                    at: now,
                }
            }
            BookingCommand::SubmitFeedback {
                rating,
                comment,
                now,
            } => {
                self.expect(&[Completed], "rated")?;
                if self.feedback.is_some() {
                    return Err(BookingError::FeedbackAlreadyGiven);
                }
                let rating = u8::try_from(rating)
                    .ok()
                    .filter(|r| (1..=5).contains(r))
                    .ok_or(BookingError::InvalidRating)?;
                if comment.as_ref().is_some_and(|c| c.chars().count() > 2000) {
                    return Err(BookingError::CommentTooLong);
                }
                let comment = comment
                    .map(|c| c.trim().to_owned())
                    .filter(|c| !c.is_empty());
                BookingEvent::FeedbackSubmitted {
                    rating,
                    comment,
                    at: now,
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: BookingEvent) {
        match event {
            BookingEvent::BookingHeld {
                booking_id,
                customer_id,
                car_id,
                window,
                pickup_branch,
                return_branch,
                quote,
                held_until,
                ..
            } => {
                self.id = Some(booking_id);
                self.status = Some(BookingStatus::Held);
                self.customer_id = Some(customer_id);
                self.car_id = Some(car_id);
                self.window = Some(window);
                self.pickup_branch = Some(pickup_branch);
                self.return_branch = Some(return_branch);
                self.total = Some(quote.total);
                self.quote = Some(quote);
                self.held_until = Some(held_until);
            }
            BookingEvent::BookingConfirmed { payment_id, .. } => {
                self.status = Some(BookingStatus::Confirmed);
                self.payment_id = Some(payment_id);
                self.held_until = None;
            }
            BookingEvent::BookingModified { to, quote, .. } => {
                self.window = Some(to);
                self.total = Some(quote.total);
                self.quote = Some(quote);
            }
            BookingEvent::BookingCancelled { fee, .. } => {
                self.status = Some(BookingStatus::Cancelled);
                self.cancellation_fee = Some(fee);
                self.held_until = None;
            }
            BookingEvent::BookingExpired { .. } => {
                self.status = Some(BookingStatus::Expired);
                self.held_until = None;
            }
            BookingEvent::BookingNoShow { fee, .. } => {
                self.status = Some(BookingStatus::NoShow);
                self.no_show_fee = Some(fee);
            }
            BookingEvent::RentalOverdue { .. } => self.overdue = true,
            BookingEvent::BookingReassigned { to_car, .. } => {
                self.car_id = Some(to_car);
                self.displaced = false;
            }
            BookingEvent::BookingDisplaced { .. } => self.displaced = true,
            BookingEvent::RentalStarted {
                odometer_km,
                fuel_percent,
                ..
            } => {
                self.status = Some(BookingStatus::Active);
                self.pickup_odometer_km = Some(odometer_km);
                self.pickup_fuel_percent = Some(fuel_percent);
            }
            BookingEvent::RentalCompleted { charges, total, .. } => {
                self.status = Some(BookingStatus::Completed);
                self.extra_charges = charges;
                self.total = Some(total);
            }
            BookingEvent::FeedbackSubmitted {
                rating,
                comment,
                at,
            } => {
                self.feedback = Some(Feedback {
                    rating,
                    comment,
                    submitted_at: at,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::Currency;

    type BookingTest = TestFramework<Booking>;

    fn t(d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, d, h, 0, 0)
            .single()
            .unwrap_or_default()
    }

    fn eur(minor: i64) -> Money {
        Money::new(minor, Currency::EUR)
    }

    fn window() -> TimeWindow {
        TimeWindow::new(t(10, 9), t(13, 9)).unwrap()
    }

    fn quote(total: i64) -> Quote {
        Quote {
            days: 3,
            lines: vec![PriceLine::new(
                crate::pricing::LineCode::RentalDays,
                "3 day(s)",
                eur(total),
            )],
            total: eur(total),
            extras: Vec::new(),
            mileage: None,
        }
    }

    fn now() -> DateTime<Utc> {
        t(1, 12)
    }

    fn held() -> BookingEvent {
        BookingEvent::BookingHeld {
            booking_id: Uuid::from_u128(1),
            customer_id: Uuid::from_u128(2),
            car_id: Uuid::from_u128(3),
            window: window(),
            pickup_branch: "LIS".into(),
            return_branch: "LIS".into(),
            quote: quote(13_797),
            held_until: now() + Duration::minutes(5),
            at: now(),
        }
    }

    fn confirmed() -> BookingEvent {
        BookingEvent::BookingConfirmed {
            payment_id: Uuid::from_u128(9),
            at: now(),
        }
    }

    fn started() -> BookingEvent {
        BookingEvent::RentalStarted {
            odometer_km: 1_000.0,
            fuel_percent: 100.0,
            at: t(10, 9),
        }
    }

    #[test]
    fn a_customer_who_never_came_is_a_no_show_after_the_grace() {
        let mark = |h: u32| BookingCommand::MarkNoShow {
            fee: eur(4_599),
            grace_minutes: 120,
            now: t(10, h),
        };
        // Pick-up at 9:00 with two hours of grace: not at 10:00, from 11:00.
        BookingTest::with(())
            .given(vec![held(), confirmed()])
            .when(mark(10))
            .then_expect_error(BookingError::NoShowTooEarly(t(10, 11)));
        BookingTest::with(())
            .given(vec![held(), confirmed()])
            .when(mark(11))
            .then_expect_events(vec![BookingEvent::BookingNoShow {
                fee: eur(4_599),
                at: t(10, 11),
            }]);
        let gone = BookingEvent::BookingNoShow {
            fee: eur(4_599),
            at: t(10, 11),
        };
        let state = |events: Vec<BookingEvent>| {
            let mut b = Booking::default();
            events.into_iter().for_each(|e| b.apply(e));
            b
        };
        let no_show = state(vec![held(), confirmed(), gone.clone()]);
        assert_eq!(no_show.status, Some(BookingStatus::NoShow));
        assert_eq!(no_show.no_show_fee, Some(eur(4_599)));
        // Once is enough; a rental under way or an unpaid hold is never one.
        BookingTest::with(())
            .given(vec![held(), confirmed(), gone])
            .when(mark(12))
            .then_expect_events(vec![]);
        BookingTest::with(())
            .given(vec![held(), confirmed(), started()])
            .when(mark(12))
            .then_expect_error(BookingError::InvalidTransition {
                status: BookingStatus::Active,
                action: "marked a no-show",
            });
        BookingTest::with(())
            .given(vec![held()])
            .when(mark(12))
            .then_expect_error(BookingError::InvalidTransition {
                status: BookingStatus::Held,
                action: "marked a no-show",
            });
        // The fee never exceeds what the booking costs.
        BookingTest::with(())
            .given(vec![held(), confirmed()])
            .when(BookingCommand::MarkNoShow {
                fee: eur(99_999),
                grace_minutes: 0,
                now: t(10, 9),
            })
            .then_expect_events(vec![BookingEvent::BookingNoShow {
                fee: eur(13_797),
                at: t(10, 9),
            }]);
    }

    #[test]
    fn a_rental_past_its_return_and_grace_is_overdue_once() {
        let mark = |d: u32, h: u32| BookingCommand::MarkOverdue {
            grace_minutes: 59,
            now: t(d, h),
        };
        BookingTest::with(())
            .given(vec![held(), confirmed(), started()])
            .when(mark(13, 9))
            .then_expect_error(BookingError::NotOverdueYet(
                t(13, 9) + Duration::minutes(59),
            ));
        BookingTest::with(())
            .given(vec![held(), confirmed(), started()])
            .when(mark(13, 10))
            .then_expect_events(vec![BookingEvent::RentalOverdue { at: t(13, 10) }]);
        BookingTest::with(())
            .given(vec![
                held(),
                confirmed(),
                started(),
                BookingEvent::RentalOverdue { at: t(13, 10) },
            ])
            .when(mark(13, 12))
            .then_expect_events(vec![]);
        BookingTest::with(())
            .given(vec![held(), confirmed(), started(), completed()])
            .when(mark(13, 12))
            .then_expect_error(BookingError::InvalidTransition {
                status: BookingStatus::Completed,
                action: "overdue",
            });
    }

    fn completed() -> BookingEvent {
        BookingEvent::RentalCompleted {
            odometer_km: 1_300.0,
            fuel_percent: 100.0,
            branch: "LIS".into(),
            charges: vec![],
            total: eur(13_797),
            at: t(13, 9),
        }
    }

    #[test]
    fn a_request_holds_the_booking() {
        BookingTest::with(())
            .given_no_previous_events()
            .when(BookingCommand::Request {
                booking_id: Uuid::from_u128(1),
                customer_id: Uuid::from_u128(2),
                car_id: Uuid::from_u128(3),
                window: window(),
                pickup_branch: "LIS".into(),
                return_branch: "LIS".into(),
                quote: quote(13_797),
                held_until: now() + Duration::minutes(5),
                now: now(),
            })
            .then_expect_events(vec![held()]);
        BookingTest::with(())
            .given(vec![held()])
            .when(BookingCommand::Expire { now: t(20, 0) })
            .then_expect_events(vec![BookingEvent::BookingExpired { at: t(20, 0) }]);
    }

    #[test]
    fn a_request_in_the_past_is_refused() {
        let BookingEvent::BookingHeld {
            booking_id,
            customer_id,
            car_id,
            quote,
            ..
        } = held()
        else {
            return;
        };
        BookingTest::with(())
            .given_no_previous_events()
            .when(BookingCommand::Request {
                booking_id,
                customer_id,
                car_id,
                window: window(),
                pickup_branch: "LIS".into(),
                return_branch: "LIS".into(),
                quote,
                held_until: t(11, 0),
                now: t(11, 0),
            })
            .then_expect_error(BookingError::PickupInPast);
    }

    #[test]
    fn payment_confirms_only_during_the_hold() {
        BookingTest::with(())
            .given(vec![held()])
            .when(BookingCommand::Confirm {
                payment_id: Uuid::from_u128(9),
                now: now(),
            })
            .then_expect_events(vec![confirmed()]);
        let until = now() + Duration::minutes(5);
        BookingTest::with(())
            .given(vec![held()])
            .when(BookingCommand::Confirm {
                payment_id: Uuid::from_u128(9),
                now: until,
            })
            .then_expect_error(BookingError::HoldEnded(until));
        // The same confirmation again (a retried step) changes nothing.
        BookingTest::with(())
            .given(vec![held(), confirmed()])
            .when(BookingCommand::Confirm {
                payment_id: Uuid::from_u128(9),
                now: now(),
            })
            .then_expect_events(vec![]);
        BookingTest::with(())
            .given(vec![held(), confirmed()])
            .when(BookingCommand::Confirm {
                payment_id: Uuid::from_u128(8),
                now: now(),
            })
            .then_expect_error(BookingError::InvalidTransition {
                status: BookingStatus::Confirmed,
                action: "confirmed",
            });
    }

    #[test]
    fn holds_expire_only_after_held_until() {
        let until = now() + Duration::minutes(5);
        BookingTest::with(())
            .given(vec![held()])
            .when(BookingCommand::Expire { now: now() })
            .then_expect_error(BookingError::HoldNotEnded(until));
        BookingTest::with(())
            .given(vec![held(), confirmed()])
            .when(BookingCommand::Expire { now: t(20, 0) })
            .then_expect_error(BookingError::InvalidTransition {
                status: BookingStatus::Confirmed,
                action: "expired",
            });
    }

    #[test]
    fn cancellation_from_held_or_confirmed_only() {
        let cancel = |fee| BookingCommand::Cancel {
            by: CancelledBy::Customer,
            reason: Some("plans changed".into()),
            fee,
            now: now(),
        };
        BookingTest::with(())
            .given(vec![held(), confirmed()])
            .when(cancel(eur(0)))
            .then_expect_events(vec![BookingEvent::BookingCancelled {
                by: CancelledBy::Customer,
                reason: Some("plans changed".into()),
                fee: eur(0),
                at: now(),
            }]);
        BookingTest::with(())
            .given(vec![held(), confirmed(), started()])
            .when(cancel(eur(0)))
            .then_expect_error(BookingError::InvalidTransition {
                status: BookingStatus::Active,
                action: "cancelled",
            });
        BookingTest::with(())
            .given(vec![held()])
            .when(cancel(Money::new(0, Currency::USD)))
            .then_expect_error(BookingError::CurrencyMismatch);
    }

    #[test]
    fn modification_reprices_the_new_window() {
        let to = TimeWindow::new(t(11, 9), t(15, 9)).unwrap();
        BookingTest::with(())
            .given(vec![held(), confirmed()])
            .when(BookingCommand::Modify {
                window: to,
                quote: quote(18_396),
                now: now(),
            })
            .then_expect_events(vec![BookingEvent::BookingModified {
                from: window(),
                to,
                quote: quote(18_396),
                at: now(),
            }]);
        BookingTest::with(())
            .given(vec![held(), confirmed(), started(), completed()])
            .when(BookingCommand::Modify {
                window: to,
                quote: quote(18_396),
                now: now(),
            })
            .then_expect_error(BookingError::InvalidTransition {
                status: BookingStatus::Completed,
                action: "modified",
            });
    }

    #[test]
    fn a_modification_may_change_only_the_extras_but_not_nothing() {
        use crate::pricing::{Extra, ExtraKind};
        let with_seat = Quote {
            extras: vec![Extra {
                kind: ExtraKind::ChildSeat,
                quantity: 1,
            }],
            ..quote(16_197)
        };
        // Same window, a seat added: the new price is the booking's.
        BookingTest::with(())
            .given(vec![held(), confirmed()])
            .when(BookingCommand::Modify {
                window: window(),
                quote: with_seat.clone(),
                now: now(),
            })
            .then_expect_events(vec![BookingEvent::BookingModified {
                from: window(),
                to: window(),
                quote: with_seat,
                at: now(),
            }]);
        // Same window, same price and extras: refused, nothing is written.
        BookingTest::with(())
            .given(vec![held(), confirmed()])
            .when(BookingCommand::Modify {
                window: window(),
                quote: quote(13_797),
                now: now(),
            })
            .then_expect_error(BookingError::Unchanged);
    }

    #[test]
    fn an_active_rental_moves_its_return_only_and_not_into_the_past() {
        // Out since the 10th at 9:00; on the 12th the customer keeps it two more days.
        let longer = TimeWindow::new(t(10, 9), t(15, 9)).unwrap();
        BookingTest::with(())
            .given(vec![held(), confirmed(), started()])
            .when(BookingCommand::Modify {
                window: longer,
                quote: quote(22_995),
                now: t(12, 10),
            })
            .then_expect_events(vec![BookingEvent::BookingModified {
                from: window(),
                to: longer,
                quote: quote(22_995),
                at: t(12, 10),
            }]);
        // The pick-up happened: it cannot move.
        BookingTest::with(())
            .given(vec![held(), confirmed(), started()])
            .when(BookingCommand::Modify {
                window: TimeWindow::new(t(11, 9), t(15, 9)).unwrap(),
                quote: quote(18_396),
                now: t(12, 10),
            })
            .then_expect_error(BookingError::Invalid {
                field: "pickupAt",
                reason: "an active rental keeps the time its car was picked up",
            });
        // A return already past is a return, not a modification.
        BookingTest::with(())
            .given(vec![held(), confirmed(), started()])
            .when(BookingCommand::Modify {
                window: TimeWindow::new(t(10, 9), t(12, 9)).unwrap(),
                quote: quote(9_198),
                now: t(12, 10),
            })
            .then_expect_error(BookingError::Invalid {
                field: "returnAt",
                reason: "an active rental's new return must be in the future; return the car instead",
            });
    }

    #[test]
    fn staff_move_a_booking_that_has_not_started_to_another_car() {
        let reassign = |car: u128| BookingCommand::Reassign {
            car_id: Uuid::from_u128(car),
            reason: "car at the wrong branch".into(),
            now: now(),
        };
        BookingTest::with(())
            .given(vec![held(), confirmed()])
            .when(reassign(4))
            .then_expect_events(vec![BookingEvent::BookingReassigned {
                from_car: Uuid::from_u128(3),
                to_car: Uuid::from_u128(4),
                reason: "car at the wrong branch".into(),
                at: now(),
            }]);
        BookingTest::with(())
            .given(vec![held()])
            .when(reassign(3))
            .then_expect_error(BookingError::Invalid {
                field: "carId",
                reason: "the booking already has this car",
            });
        BookingTest::with(())
            .given(vec![held(), confirmed(), started()])
            .when(reassign(4))
            .then_expect_error(BookingError::InvalidTransition {
                status: BookingStatus::Active,
                action: "reassigned",
            });
        BookingTest::with(())
            .given(vec![held()])
            .when(BookingCommand::Reassign {
                car_id: Uuid::from_u128(4),
                reason: " ".into(),
                now: now(),
            })
            .then_expect_error(BookingError::Invalid {
                field: "reason",
                reason: "must be 1 to 500 characters",
            });
    }

    #[test]
    fn a_booking_whose_car_was_withdrawn_waits_for_another_and_is_no_no_show() {
        let displaced = BookingEvent::BookingDisplaced {
            car_id: Uuid::from_u128(3),
            reason: "engine warning".into(),
            at: now(),
        };
        BookingTest::with(())
            .given(vec![held(), confirmed()])
            .when(BookingCommand::Displace {
                reason: "engine warning".into(),
                now: now(),
            })
            .then_expect_events(vec![displaced.clone()]);
        // Nothing to hand over until it has another car.
        BookingTest::with(())
            .given(vec![held(), confirmed(), displaced.clone()])
            .when(BookingCommand::PickUp {
                odometer_km: 1_000.0,
                fuel_percent: 100.0,
                from_now: None,
                now: t(10, 9),
            })
            .then_expect_error(BookingError::Displaced);
        // Nobody waited with a car: the customer is no no-show.
        BookingTest::with(())
            .given(vec![held(), confirmed(), displaced.clone()])
            .when(BookingCommand::MarkNoShow {
                fee: eur(4_599),
                grace_minutes: 120,
                now: t(10, 12),
            })
            .then_expect_events(vec![]);
        // Reassigned, it can go out again.
        BookingTest::with(())
            .given(vec![
                held(),
                confirmed(),
                displaced,
                BookingEvent::BookingReassigned {
                    from_car: Uuid::from_u128(3),
                    to_car: Uuid::from_u128(4),
                    reason: "replacement".into(),
                    at: now(),
                },
            ])
            .when(BookingCommand::PickUp {
                odometer_km: 1_000.0,
                fuel_percent: 100.0,
                from_now: None,
                now: t(10, 9),
            })
            .then_expect_events(vec![BookingEvent::RentalStarted {
                odometer_km: 1_000.0,
                fuel_percent: 100.0,
                at: t(10, 9),
            }]);
    }

    #[test]
    fn a_pick_up_before_the_booked_time_runs_the_rental_from_then_repriced() {
        // Booked 10th 9:00 to 13th 9:00; the car goes out on the 7th at 9:00.
        let from_now = TimeWindow::new(t(7, 9), t(13, 9)).unwrap();
        BookingTest::with(())
            .given(vec![held(), confirmed()])
            .when(BookingCommand::PickUp {
                odometer_km: 1_000.0,
                fuel_percent: 100.0,
                from_now: Some(quote(27_594)),
                now: t(7, 9),
            })
            .then_expect_events(vec![
                BookingEvent::BookingModified {
                    from: window(),
                    to: from_now,
                    quote: quote(27_594),
                    at: t(7, 9),
                },
                BookingEvent::RentalStarted {
                    odometer_km: 1_000.0,
                    fuel_percent: 100.0,
                    at: t(7, 9),
                },
            ]);
        // At or after the booked time there is nothing to re-price.
        BookingTest::with(())
            .given(vec![held(), confirmed()])
            .when(BookingCommand::PickUp {
                odometer_km: 1_000.0,
                fuel_percent: 100.0,
                from_now: Some(quote(13_797)),
                now: t(10, 9),
            })
            .then_expect_error(BookingError::Invalid {
                field: "pickupAt",
                reason: "only a pick-up before the booked time is re-priced",
            });
        // Another currency than the booking's is refused.
        BookingTest::with(())
            .given(vec![held(), confirmed()])
            .when(BookingCommand::PickUp {
                odometer_km: 1_000.0,
                fuel_percent: 100.0,
                from_now: Some(Quote {
                    total: Money::new(27_594, Currency::USD),
                    ..quote(27_594)
                }),
                now: t(7, 9),
            })
            .then_expect_error(BookingError::CurrencyMismatch);
    }

    #[test]
    fn pick_up_and_return_with_charges() {
        BookingTest::with(())
            .given(vec![held()])
            .when(BookingCommand::PickUp {
                odometer_km: 1_000.0,
                fuel_percent: 100.0,
                from_now: None,
                now: t(10, 9),
            })
            .then_expect_error(BookingError::InvalidTransition {
                status: BookingStatus::Held,
                action: "picked up",
            });
        BookingTest::with(())
            .given(vec![held(), confirmed()])
            .when(BookingCommand::PickUp {
                odometer_km: 1_000.0,
                fuel_percent: 100.0,
                from_now: None,
                now: t(10, 9),
            })
            .then_expect_events(vec![started()]);
        BookingTest::with(())
            .given(vec![held(), confirmed()])
            .when(BookingCommand::PickUp {
                odometer_km: 1_000.0,
                fuel_percent: 101.0,
                from_now: None,
                now: t(10, 9),
            })
            .then_expect_error(BookingError::Invalid {
                field: "fuelPercent",
                reason: "must be between 0 and 100",
            });
        let late = PriceLine::new(
            crate::pricing::LineCode::LateHours,
            "late return, 2 started hour(s)",
            eur(2_300),
        );
        BookingTest::with(())
            .given(vec![held(), confirmed(), started()])
            .when(BookingCommand::Return {
                odometer_km: 1_300.0,
                fuel_percent: 100.0,
                branch: "LIS".into(),
                charges: vec![late.clone()],
                now: t(13, 11),
            })
            .then_expect_events(vec![BookingEvent::RentalCompleted {
                odometer_km: 1_300.0,
                fuel_percent: 100.0,
                branch: "LIS".into(),
                charges: vec![late],
                total: eur(16_097),
                at: t(13, 11),
            }]);
        BookingTest::with(())
            .given(vec![held(), confirmed(), started()])
            .when(BookingCommand::Return {
                odometer_km: 999.0,
                fuel_percent: 100.0,
                branch: "LIS".into(),
                charges: vec![],
                now: t(13, 9),
            })
            .then_expect_error(BookingError::OdometerBackwards {
                pickup: "1000".into(),
                given: "999".into(),
            });
    }

    #[test]
    fn feedback_once_rated_one_to_five_after_completion() {
        BookingTest::with(())
            .given(vec![held(), confirmed(), started(), completed()])
            .when(BookingCommand::SubmitFeedback {
                rating: 5,
                comment: Some(" great car ".into()),
                now: t(14, 0),
            })
            .then_expect_events(vec![BookingEvent::FeedbackSubmitted {
                rating: 5,
                comment: Some("great car".into()),
                at: t(14, 0),
            }]);
        for rating in [0, 6, -1] {
            BookingTest::with(())
                .given(vec![held(), confirmed(), started(), completed()])
                .when(BookingCommand::SubmitFeedback {
                    rating,
                    comment: None,
                    now: t(14, 0),
                })
                .then_expect_error(BookingError::InvalidRating);
        }
        BookingTest::with(())
            .given(vec![held(), confirmed(), started()])
            .when(BookingCommand::SubmitFeedback {
                rating: 4,
                comment: None,
                now: t(14, 0),
            })
            .then_expect_error(BookingError::InvalidTransition {
                status: BookingStatus::Active,
                action: "rated",
            });
        BookingTest::with(())
            .given(vec![
                held(),
                confirmed(),
                started(),
                completed(),
                BookingEvent::FeedbackSubmitted {
                    rating: 4,
                    comment: None,
                    at: t(14, 0),
                },
            ])
            .when(BookingCommand::SubmitFeedback {
                rating: 5,
                comment: None,
                now: t(14, 1),
            })
            .then_expect_error(BookingError::FeedbackAlreadyGiven);
        BookingTest::with(())
            .given(vec![held(), confirmed(), started(), completed()])
            .when(BookingCommand::SubmitFeedback {
                rating: 3,
                comment: Some("x".repeat(2001)),
                now: t(14, 0),
            })
            .then_expect_error(BookingError::CommentTooLong);
    }

    #[test]
    fn commands_on_a_missing_booking_are_typed_errors() {
        BookingTest::with(())
            .given_no_previous_events()
            .when(BookingCommand::Expire { now: now() })
            .then_expect_error(BookingError::NotFound);
    }
}
