//! Paying for a booking: the payment and the booking's confirmation, finished even after a crash.
//!
//! Before any gateway is called, a `confirm_payment` step is stored for the booking. The normal
//! path confirms the booking right after the capture; if the process dies in between, the worker
//! runs the step later: a captured payment confirms a booking still on hold, and is refunded
//! in full if the hold ended meanwhile. Both outcomes are idempotent.

use chrono::{DateTime, Duration, Utc};
use domain::Money;
use domain::booking::{BookingError, BookingStatus};
use domain::payment::{IdempotencyKey, PaymentMethodKind, PaymentStatus};
use serde_json::json;
use uuid::Uuid;

use crate::booking::{BookingFlowError, BookingService, BookingView};
use crate::context::CommandContext;
use crate::payments::{
    PayRequest, PaymentService, PaymentServiceError, PaymentToken, PaymentView, payment_id,
};

/// How long the normal path has to confirm before the worker steps in.
const CONFIRM_GRACE: Duration = Duration::seconds(60);

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
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// The outcome of paying: the payment, and the booking after it.
#[derive(Clone, Debug)]
pub struct Paid {
    pub payment: PaymentView,
    pub booking: BookingView,
}

#[derive(Clone)]
pub struct Checkout {
    bookings: BookingService,
    payments: PaymentService,
}

impl Checkout {
    pub fn new(bookings: BookingService, payments: PaymentService) -> Self {
        Self { bookings, payments }
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
        sqlx::query("INSERT INTO workflow_steps (id, kind, booking_id, payload, due_at) VALUES ($1, 'confirm_payment', $2, $3, $4)")
            .bind(Uuid::now_v7())
            .bind(booking_id)
            .bind(json!({ "payment_id": id }))
            .bind(now + CONFIRM_GRACE)
            .execute(self.bookings.store().pool())
            .await?;
        let request = PayRequest {
            booking_id,
            amount: total,
            method,
            token: PaymentToken::new(token),
            idempotency_key: key,
        };
        let payment = self.payments.pay(request, ctx).await?;
        let booking = match payment.status {
            PaymentStatus::Captured => self.settle(ctx, booking_id, &payment, now).await?,
            _ => self.bookings.get(booking_id).await?,
        };
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

    /// The worker's `confirm_payment` step: finish what a crashed `pay_booking` left.
    pub async fn finish_payment(
        &self,
        ctx: &CommandContext,
        booking_id: Uuid,
        payment_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(), CheckoutError> {
        let Some(payment) = self.payments.get(payment_id).await? else {
            return Ok(()); // never requested: the crash came before the gateway was called
        };
        if payment.status == PaymentStatus::Captured {
            self.settle(ctx, booking_id, &payment, now).await?;
        }
        Ok(())
    }

    /// The worker's `refund` step after a cancellation; skipped once refunded that far.
    pub async fn refund_for_cancellation(
        &self,
        ctx: &CommandContext,
        payment_id: Uuid,
        amount: Money,
    ) -> Result<(), CheckoutError> {
        let Some(payment) = self.payments.get(payment_id).await? else {
            return Ok(());
        };
        if payment.refunded.minor >= amount.minor {
            return Ok(());
        }
        let remaining = Money::new(amount.minor - payment.refunded.minor, amount.currency);
        self.payments
            .refund(payment_id, Some(remaining), "booking cancelled", ctx)
            .await?;
        Ok(())
    }
}
