//! Paying for a booking: the payment and the booking's confirmation, finished even after a crash.
//!
//! Before any gateway is called, the request claims the payment's `confirm_payment` step (its
//! id is the payment id; see [`crate::claims`]) and stores it, due at once. While the request
//! works the claim keeps the worker off it; the request marks the step done when the payment
//! ended (captured and the booking confirmed, or declined). If the process dies anywhere in
//! between, its claim dies with its database session, and the next worker pass, seconds later,
//! runs the step: an interrupted attempt is settled from what the gateways have on record for
//! its idempotency key (or abandoned when none has it: nothing was charged), an authorization
//! is captured, a captured payment confirms a booking still on hold, and is refunded in full if
//! the hold ended meanwhile. A payment no gateway could reach waits for a retry with the same
//! key until the hold ends, and is then abandoned. Every outcome is idempotent.

use chrono::{DateTime, Duration, Utc};
use domain::Money;
use domain::booking::{BookingError, BookingStatus};
use domain::payment::{IdempotencyKey, PaymentMethodKind, PaymentStatus};
use serde_json::json;
use uuid::Uuid;

use crate::booking::{BookingFlowError, BookingService, BookingView};
use crate::claims::Claims;
use crate::context::CommandContext;
use crate::payments::{
    PayRequest, PaymentService, PaymentServiceError, PaymentToken, PaymentView, payment_id,
};

/// How long after an unreachable-gateway attempt the worker looks again, at most.
const UNREACHED_RECHECK: Duration = Duration::seconds(60);

/// How many declined charges for a balance (fees found at return, a longer booking) are tried
/// before it is left to staff. Charges that went through do not count: a rental extended three
/// times is charged three times.
pub const MAX_FEE_CHARGES: u32 = 3;

/// What settling a booking's balance came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeesCollected {
    /// Nothing is due (paid in full, or nothing to collect).
    Settled,
    /// The saved method declined; `charges` fee charges were tried so far.
    Declined { reason: String, charges: u32 },
    /// No more charges will be tried: the balance is left for staff.
    LeftToStaff { reason: String },
}

/// What the worker's `confirm_payment` step got done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    /// The payment ended and the booking agrees with it.
    Done,
    /// The payment waits for its payer (a retry with the same key) until then.
    WaitUntil(DateTime<Utc>),
}

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error(transparent)]
    Booking(#[from] BookingFlowError),
    #[error(transparent)]
    Payment(#[from] PaymentServiceError),
    #[error("the booking is {0:?}, not waiting for payment")]
    NotPayable(BookingStatus),
    #[error("invalid idempotencyKey: {0}")]
    InvalidKey(String),
    #[error("a payment with this idempotency key is being processed right now; retry shortly")]
    InProgress,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// The outcome of paying: the payment, and the booking after it.
#[derive(Clone, Debug)]
pub struct Paid {
    pub payment: PaymentView,
    pub booking: BookingView,
}

/// The idempotency key of the booking's `n`th charge for its balance.
fn balance_key(n: u32) -> Result<IdempotencyKey, CheckoutError> {
    IdempotencyKey::parse(&format!("balance-{n}"))
        .map_err(|e| CheckoutError::InvalidKey(e.to_string()))
}

/// Money a payment holds: captured minus refunded (zero unless captured).
fn net(view: &PaymentView) -> i64 {
    match view.status {
        PaymentStatus::Captured | PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded => {
            view.amount.minor - view.refunded.minor
        }
        _ => 0,
    }
}

#[derive(Clone)]
pub struct Checkout {
    bookings: BookingService,
    payments: PaymentService,
    claims: Claims,
}

impl Checkout {
    pub fn new(bookings: BookingService, payments: PaymentService) -> Self {
        let claims = Claims::new(bookings.store().pool().clone());
        Self {
            bookings,
            payments,
            claims,
        }
    }

    /// The claims this checkout takes (share them with the process's worker).
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    pub fn payments(&self) -> &PaymentService {
        &self.payments
    }

    /// Pay a HELD booking. A decline leaves it HELD with the reason on the payment; a capture
    /// confirms it. The same idempotency key never charges twice.
    pub async fn pay_booking(
        &self,
        ctx: &CommandContext,
        booking_id: Uuid,
        method: PaymentMethodKind,
        token: String,
        idempotency_key: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Paid, CheckoutError> {
        let booking = self.bookings.get(booking_id).await?;
        let status = booking.status().ok_or(BookingFlowError::BookingNotFound)?;
        let total: Money = booking
            .state
            .total
            .ok_or(BookingFlowError::BookingNotFound)?;
        let key = match idempotency_key {
            Some(k) => {
                IdempotencyKey::parse(k).map_err(|e| CheckoutError::InvalidKey(e.to_string()))?
            }
            None => IdempotencyKey::parse(&Uuid::now_v7().to_string())
                .map_err(|e| CheckoutError::InvalidKey(e.to_string()))?,
        };
        let id = payment_id(booking_id, &key);
        if status != BookingStatus::Held {
            // A retried request for the payment that confirmed it: answer with that payment.
            if let (Some(paid), Some(view)) =
                (booking.state.payment_id, self.payments.get(id).await?)
                && paid == id
            {
                return Ok(Paid {
                    payment: view,
                    booking,
                });
            }
            return Err(CheckoutError::NotPayable(status));
        }
        let Some(claim) = self.claims.try_claim(id).await? else {
            return Err(CheckoutError::InProgress);
        };
        let paid = self
            .pay_claimed(ctx, booking_id, id, method, token, key, total, now)
            .await;
        claim.release().await;
        paid
    }

    /// Pay under the claim of the payment's step; the step is done when the payment ended.
    #[allow(clippy::too_many_arguments)]
    async fn pay_claimed(
        &self,
        ctx: &CommandContext,
        booking_id: Uuid,
        id: Uuid,
        method: PaymentMethodKind,
        token: String,
        key: IdempotencyKey,
        total: Money,
        now: DateTime<Utc>,
    ) -> Result<Paid, CheckoutError> {
        let pool = self.bookings.store().pool();
        sqlx::query(
            "INSERT INTO workflow_steps (id, kind, booking_id, payload, due_at) \
             VALUES ($1, 'confirm_payment', $2, $3, $4) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(booking_id)
        .bind(json!({ "payment_id": id }))
        .bind(now)
        .execute(pool)
        .await?;
        let request = PayRequest {
            booking_id,
            amount: total,
            method,
            token: PaymentToken::new(token),
            idempotency_key: key,
            gateway: None,
        };
        let payment = self.payments.pay(request, ctx).await?;
        let booking = match payment.status {
            PaymentStatus::Captured => {
                crate::crash_point!("payment.captured");
                self.settle(ctx, booking_id, &payment, now).await?
            }
            _ => self.bookings.get(booking_id).await?,
        };
        if matches!(
            payment.status,
            PaymentStatus::Captured | PaymentStatus::Failed
        ) {
            sqlx::query(
                "UPDATE workflow_steps SET done_at = now() WHERE id = $1 AND done_at IS NULL",
            )
            .bind(id)
            .execute(pool)
            .await?;
        }
        Ok(Paid { payment, booking })
    }

    /// After a capture: confirm the booking, or refund the payment if the hold is gone.
    pub async fn settle(
        &self,
        ctx: &CommandContext,
        booking_id: Uuid,
        payment: &PaymentView,
        now: DateTime<Utc>,
    ) -> Result<BookingView, CheckoutError> {
        match self
            .bookings
            .confirm(ctx, booking_id, payment.id, now)
            .await
        {
            Ok(view) => Ok(view),
            Err(BookingFlowError::Booking(
                BookingError::HoldEnded(_) | BookingError::InvalidTransition { .. },
            )) => {
                let view = self.bookings.get(booking_id).await?;
                if view.state.payment_id != Some(payment.id) {
                    self.payments
                        .refund(
                            payment.id,
                            None,
                            "the booking was no longer held when the payment completed",
                            ctx,
                        )
                        .await?;
                }
                Ok(view)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The worker's `confirm_payment` step: finish what a `pay_booking` left (see the module
    /// documentation).
    pub async fn finish_payment(
        &self,
        ctx: &CommandContext,
        booking_id: Uuid,
        payment_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Finished, CheckoutError> {
        let Some(payment) = self.payments.finish(payment_id, ctx).await? else {
            return Ok(Finished::Done); // never requested: no gateway was called
        };
        match payment.status {
            PaymentStatus::Captured => {
                self.settle(ctx, booking_id, &payment, now).await?;
            }
            PaymentStatus::Pending => {
                // Every gateway was unreachable: the payer may retry with the same key while
                // the booking waits for it.
                let booking = self.bookings.get(booking_id).await?;
                let waiting = booking.status() == Some(BookingStatus::Held)
                    && booking.state.held_until.is_some_and(|until| until > now);
                if waiting {
                    let until = booking.state.held_until.unwrap_or(now);
                    return Ok(Finished::WaitUntil(until.min(now + UNREACHED_RECHECK)));
                }
                self.payments
                    .abandon(
                        payment_id,
                        "no gateway could be reached and the booking stopped waiting for it; \
                         nothing was charged",
                        ctx,
                    )
                    .await?;
            }
            _ => {}
        }
        Ok(Finished::Done)
    }

    /// The worker's `settle_balance` step, after a paid booking's total changed (a return
    /// with fees, a modification of a paid booking), and its `refund` step after a
    /// cancellation or a no-show: bring the money the booking holds (captured minus refunded,
    /// over all its payments) to what it owes: its total, or the fee it keeps once cancelled or
    /// a no-show (only refunded towards, never charged).
    ///
    /// - More is owed: the difference is charged to the payment method the gateway saved when
    ///   the booking was paid, without the customer present. Each charge is a payment of its
    ///   own (idempotency key `balance-N`), so a repeated step never charges twice: charges a
    ///   crash interrupted are finished first, from the gateway's records. A declined charge
    ///   leaves a balance due; the step retries with backoff, up to [`MAX_FEE_CHARGES`]
    ///   charges, then leaves the balance to staff.
    /// - Less is owed: the difference is refunded, from the booking's first payment on.
    pub async fn settle_balance(
        &self,
        ctx: &CommandContext,
        booking_id: Uuid,
    ) -> Result<FeesCollected, CheckoutError> {
        let booking = self.bookings.get(booking_id).await?;
        let state = &booking.state;
        // What the booking's money must come to: its total while it stands, the fee it keeps
        // once cancelled or a no-show; an expired hold's payment is refunded by its own step.
        let (Some(owed), Some(paid_with)) = (
            match booking.status() {
                Some(
                    BookingStatus::Confirmed | BookingStatus::Active | BookingStatus::Completed,
                ) => state.total,
                Some(BookingStatus::Cancelled) => state
                    .cancellation_fee
                    .or(state.total.map(|t| Money::zero(t.currency))),
                Some(BookingStatus::NoShow) => state.no_show_fee,
                _ => None,
            },
            state.payment_id,
        ) else {
            // Not paid, or nothing to settle.
            return Ok(FeesCollected::Settled);
        };
        let total = owed;
        let ended = matches!(
            booking.status(),
            Some(BookingStatus::Cancelled | BookingStatus::NoShow)
        );
        let mut holding = vec![paid_with];
        let mut held = self.held(paid_with).await?;
        let (mut charges, mut declined) = (0, 0);
        while let Some(view) = self
            .payments
            .finish(payment_id(booking_id, &balance_key(charges + 1)?), ctx)
            .await?
        {
            charges += 1;
            if view.status == PaymentStatus::Failed {
                declined += 1;
            }
            if view.status == PaymentStatus::Pending {
                // No gateway could be reached for it: nothing was charged; the next charge
                // takes its place.
                self.payments
                    .abandon(
                        view.id,
                        "no gateway could be reached; a later charge for the balance replaces it",
                        ctx,
                    )
                    .await?;
            }
            held += net(&view);
            holding.push(view.id);
        }
        let due = total.minor - held;
        if due < 0 {
            let why = if ended {
                "booking cancelled"
            } else {
                "the booking's total went down"
            };
            self.refund_excess(ctx, &holding, Money::new(-due, total.currency), why)
                .await?;
            return Ok(FeesCollected::Settled);
        }
        // A booking that ended keeps at most what it holds: its fee is not charged afresh.
        if due == 0 || ended {
            return Ok(FeesCollected::Settled);
        }
        if declined >= MAX_FEE_CHARGES {
            return Ok(FeesCollected::LeftToStaff {
                reason: format!("{declined} charges for the balance were declined"),
            });
        }
        let Some(saved) = self.payments.saved_method(paid_with).await? else {
            return Ok(FeesCollected::LeftToStaff {
                reason: "the gateway saved no payment method for the booking".into(),
            });
        };
        let request = PayRequest {
            booking_id,
            amount: Money::new(due, total.currency),
            method: saved.method,
            token: PaymentToken::new(saved.id),
            idempotency_key: balance_key(charges + 1)?,
            gateway: Some(saved.gateway),
        };
        let view = self.payments.pay(request, ctx).await?;
        Ok(match view.status {
            PaymentStatus::Failed => FeesCollected::Declined {
                reason: view.failure_reason.unwrap_or_default(),
                charges: declined + 1,
            },
            _ => FeesCollected::Settled,
        })
    }

    /// Refund `excess` from `payments`, each up to what it still holds, in order.
    async fn refund_excess(
        &self,
        ctx: &CommandContext,
        payments: &[Uuid],
        excess: Money,
        why: &str,
    ) -> Result<(), CheckoutError> {
        let mut left = excess.minor;
        for id in payments {
            if left <= 0 {
                break;
            }
            let holds = self.held(*id).await?;
            if holds <= 0 {
                continue;
            }
            let amount = holds.min(left);
            self.payments
                .refund(*id, Some(Money::new(amount, excess.currency)), why, ctx)
                .await?;
            left -= amount;
        }
        Ok(())
    }

    /// What a payment holds of the customer's money (captured minus refunded).
    async fn held(&self, payment_id: Uuid) -> Result<i64, CheckoutError> {
        Ok(self.payments.get(payment_id).await?.map_or(0, |v| net(&v)))
    }
}
