//! The Payment aggregate: paying for a booking, from request through authorization and capture
//! (or a decline) to full or partial refunds.
//!
//! ```text
//!            authorized            captured              refunded (part)       refunded (rest)
//! PENDING ─────────────▶ AUTHORIZED ──────▶ CAPTURED ─────────────▶ PARTIALLY_REFUNDED ──▶ REFUNDED
//!  │   ▲ retried              │ declined at capture
//!  │   └── attempt failed     ▼
//!  └────── declined ──────▶ FAILED (terminal)
//! ```
//!
//! Decisions this aggregate encodes:
//! - **A decline is terminal.** A declined payment is FAILED for good, with the gateway and the
//!   reason. Paying again is a new request with a new idempotency key, hence a new Payment (the
//!   application derives the payment id from the booking and the key). A decline is never retried
//!   on another gateway either.
//! - **An attempt no gateway processed charges nothing** (every gateway was unavailable or timed
//!   out): [`PaymentEvent::PaymentAttemptFailed`] leaves the payment PENDING with the failure
//!   reason [`ALL_GATEWAYS_UNAVAILABLE`], and the same request may start another attempt
//!   ([`PaymentCommand::Retry`]). Only one attempt is ever open, so two processes cannot both
//!   retry.
//! - **Requests are idempotent.** Repeating the identical `Request` emits nothing; the same
//!   payment id with another amount or method is refused ([`PaymentError::IdempotencyKeyReused`]).
//! - **Refunds reserve before they pay out.** `RequestRefund` reserves the amount (one refund in
//!   progress at a time) before the gateway is called, and `RecordRefund` or
//!   `RecordRefundFailure` settles it, so concurrent refunds, even from several processes, can
//!   never send more back than was captured. A refund is positive, in the payment's currency,
//!   and the refunded total never exceeds the captured amount.
//! - Capture is always of the full authorized amount.
//! - **No payment stays PENDING for good.** A payment whose attempt was interrupted (the
//!   process died before the gateway's answer was recorded) is settled from what the gateways
//!   have on record for its key; when none has anything, nothing was charged and the payment is
//!   abandoned ([`PaymentEvent::PaymentAbandoned`]: FAILED, no gateway). A payment no gateway
//!   could reach is abandoned the same way once its booking no longer waits for it.

use std::fmt;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::money::{Currency, Money};

/// The failure reason a payment carries while no gateway could process it.
pub const ALL_GATEWAYS_UNAVAILABLE: &str = "all gateways unavailable";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentMethodKind {
    Card,
    Paypal,
    Wallet,
}

impl PaymentMethodKind {
    pub const ALL: [PaymentMethodKind; 3] = [Self::Card, Self::Paypal, Self::Wallet];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Card => "CARD",
            Self::Paypal => "PAYPAL",
            Self::Wallet => "WALLET",
        }
    }
}

impl fmt::Display for PaymentMethodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status the public contract shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    Pending,
    Authorized,
    Captured,
    Failed,
    Refunded,
    PartiallyRefunded,
}

impl PaymentStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Authorized => "AUTHORIZED",
            Self::Captured => "CAPTURED",
            Self::Failed => "FAILED",
            Self::Refunded => "REFUNDED",
            Self::PartiallyRefunded => "PARTIALLY_REFUNDED",
        }
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The client's key for one payment request: 1 to 255 visible ASCII characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    pub fn parse(key: &str) -> Result<Self, PaymentError> {
        if key.is_empty() || key.len() > Self::MAX_LEN || !key.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(PaymentError::InvalidIdempotencyKey);
        }
        Ok(Self(key.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = PaymentError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<IdempotencyKey> for String {
    fn from(key: IdempotencyKey) -> Self {
        key.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a gateway did not process an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Unreached {
    /// The gateway refused the request outright (outage, circuit open).
    Unavailable,
    /// The gateway did not answer in time.
    TimedOut,
}

/// A gateway an attempt was offered to that did not process it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreachedGateway {
    pub gateway: String,
    pub cause: Unreached,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentCommand {
    /// Open the payment (its first attempt). Repeating the identical request is a no-op.
    Request {
        id: Uuid,
        booking_id: Uuid,
        amount: Money,
        method: PaymentMethodKind,
        idempotency_key: IdempotencyKey,
    },
    /// A gateway authorized the open attempt; `payment_method` is the provider's reusable id
    /// for the method, when it saved one.
    RecordAuthorization {
        gateway: String,
        reference: String,
        payment_method: Option<String>,
    },
    /// A gateway declined the open attempt, or the capture of an authorization: terminal.
    RecordDecline { gateway: String, reason: String },
    /// No gateway processed the open attempt; nothing was charged.
    RecordUnreached { tried: Vec<UnreachedGateway> },
    /// Open another attempt after one no gateway processed.
    Retry,
    /// Give up a payment no gateway charged (the open or last attempt reached none): FAILED.
    Abandon { reason: String },
    /// The authorized amount was captured.
    Capture,
    /// Reserve a refund; `None` means everything still refundable.
    RequestRefund {
        refund_id: Uuid,
        amount: Option<Money>,
        reason: String,
    },
    /// The gateway paid the reserved refund back.
    RecordRefund { refund_id: Uuid, reference: String },
    /// The gateway refused the reserved refund; the reservation is released.
    RecordRefundFailure { refund_id: Uuid, reason: String },
}

#[derive(
    Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::VariantNames,
)]
pub enum PaymentEvent {
    /// The payment was opened; its first attempt is under way.
    PaymentRequested {
        id: Uuid,
        booking_id: Uuid,
        amount: Money,
        method: PaymentMethodKind,
        idempotency_key: IdempotencyKey,
    },
    PaymentAuthorized {
        gateway: String,
        reference: String,
        /// The provider's reusable id for the payment method (absent before it was recorded,
        /// and when the provider saved none): fees found later are charged to it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payment_method: Option<String>,
    },
    /// Declined by `gateway`; the payment is FAILED for good.
    PaymentFailed {
        gateway: String,
        reason: String,
    },
    /// Attempt number `attempt` reached no gateway; nothing was charged, the payment is PENDING.
    PaymentAttemptFailed {
        attempt: u32,
        tried: Vec<UnreachedGateway>,
    },
    /// Attempt number `attempt` (2 or more) was opened.
    PaymentRetried {
        attempt: u32,
    },
    /// No gateway has this payment on record: nothing was charged, the payment is FAILED for
    /// good (an attempt interrupted before any gateway processed it, or one no gateway could
    /// reach whose booking stopped waiting).
    PaymentAbandoned {
        reason: String,
    },
    PaymentCaptured {
        amount: Money,
    },
    /// `amount` is reserved for a refund the gateway has yet to confirm.
    RefundRequested {
        refund_id: Uuid,
        amount: Money,
        reason: String,
    },
    PaymentRefunded {
        refund_id: Uuid,
        amount: Money,
        /// Everything refunded so far, this refund included.
        refunded_total: Money,
        reference: String,
    },
    RefundFailed {
        refund_id: Uuid,
        reason: String,
    },
}

impl DomainEvent for PaymentEvent {
    fn event_type(&self) -> String {
        // The variant's name: one per variant, listed in `EVENT_TYPES`.
        <&'static str>::from(self).to_owned()
    }

    fn event_version(&self) -> String {
        crate::V1.to_owned()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error("idempotency key must be 1 to 255 visible ASCII characters")]
    InvalidIdempotencyKey,
    #[error("amount must be positive")]
    NonPositiveAmount,
    #[error("the amount is in {actual}, the payment is in {expected}")]
    CurrencyMismatch {
        expected: Currency,
        actual: Currency,
    },
    #[error("{field} must be 1 to {max} characters")]
    InvalidText { field: &'static str, max: usize },
    #[error("payment has not been requested")]
    NotRequested,
    #[error("this idempotency key was already used for a payment with another amount or method")]
    IdempotencyKeyReused,
    #[error("a payment attempt is already in progress")]
    AttemptInProgress,
    #[error("no payment attempt is in progress")]
    NoAttemptInProgress,
    #[error("cannot {action} a {status} payment")]
    InvalidTransition {
        action: &'static str,
        status: PaymentStatus,
    },
    #[error("refund {0} is still in progress")]
    RefundInProgress(Uuid),
    #[error("no refund {0} is in progress")]
    UnknownRefund(Uuid),
    #[error("a refund of {requested} exceeds the {refundable} still refundable")]
    RefundExceedsCaptured { requested: Money, refundable: Money },
}

impl PaymentError {
    /// The request itself is malformed (as opposed to refused by the payment's state).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Self::InvalidIdempotencyKey
                | Self::NonPositiveAmount
                | Self::CurrencyMismatch { .. }
                | Self::InvalidText { .. }
        )
    }
}

/// Where the payment is in its lifecycle; [`Payment::status`] is its public face.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// Not requested.
    #[default]
    New,
    /// An attempt is open: under way, or interrupted before its outcome was recorded.
    Attempting,
    /// The last attempt reached no gateway; nothing was charged and it may be retried.
    Unprocessed,
    Authorized,
    Captured,
    Failed,
}

/// What was asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRequest {
    pub id: Uuid,
    pub booking_id: Uuid,
    pub amount: Money,
    pub method: PaymentMethodKind,
    pub idempotency_key: IdempotencyKey,
}

/// A refund reserved and not yet settled with the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRefund {
    pub refund_id: Uuid,
    pub amount: Money,
    pub reason: String,
}

/// A payment's state, rebuilt from its events.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    pub request: Option<PaymentRequest>,
    pub stage: Stage,
    /// Attempts opened so far.
    pub attempts: u32,
    /// The gateway that authorized or declined it.
    pub gateway: Option<String>,
    /// The authorizing gateway's reference for the charge.
    pub reference: Option<String>,
    /// The authorizing gateway's reusable id for the payment method.
    pub payment_method: Option<String>,
    pub failure_reason: Option<String>,
    /// Refunded so far (zero once requested).
    pub refunded: Option<Money>,
    pub pending_refund: Option<PendingRefund>,
}

const MAX_NAME: usize = 64;
const MAX_REFERENCE: usize = 128;
const MAX_REASON: usize = 500;

fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), PaymentError> {
    if value.trim().is_empty() || value.chars().count() > max {
        return Err(PaymentError::InvalidText { field, max });
    }
    Ok(())
}

impl Payment {
    /// The public status; `None` before the payment is requested.
    pub fn status(&self) -> Option<PaymentStatus> {
        let request = self.request.as_ref()?;
        Some(match self.stage {
            Stage::New | Stage::Attempting | Stage::Unprocessed => PaymentStatus::Pending,
            Stage::Authorized => PaymentStatus::Authorized,
            Stage::Failed => PaymentStatus::Failed,
            Stage::Captured => {
                let refunded = self.refunded.map_or(0, |m| m.minor);
                if refunded == 0 {
                    PaymentStatus::Captured
                } else if refunded < request.amount.minor {
                    PaymentStatus::PartiallyRefunded
                } else {
                    PaymentStatus::Refunded
                }
            }
        })
    }

    /// What can still be refunded: captured minus refunded minus any refund in progress.
    /// `None` unless the payment was captured.
    pub fn refundable(&self) -> Option<Money> {
        let request = self.request.as_ref()?;
        if self.stage != Stage::Captured {
            return None;
        }
        let refunded = self.refunded.map_or(0, |m| m.minor);
        let pending = self.pending_refund.as_ref().map_or(0, |p| p.amount.minor);
        Some(Money::new(
            request.amount.minor - refunded - pending,
            request.amount.currency,
        ))
    }

    fn requested(&self) -> Result<&PaymentRequest, PaymentError> {
        self.request.as_ref().ok_or(PaymentError::NotRequested)
    }

    fn invalid(&self, action: &'static str) -> PaymentError {
        match self.status() {
            Some(status) => PaymentError::InvalidTransition { action, status },
            None => PaymentError::NotRequested,
        }
    }

    fn open_attempt(&self) -> Result<(), PaymentError> {
        match self.stage {
            Stage::Attempting => Ok(()),
            Stage::New => Err(PaymentError::NotRequested),
            Stage::Unprocessed => Err(PaymentError::NoAttemptInProgress),
            _ => Err(self.invalid("settle an attempt of")),
        }
    }

    fn pending(&self, refund_id: Uuid) -> Result<&PendingRefund, PaymentError> {
        self.pending_refund
            .as_ref()
            .filter(|p| p.refund_id == refund_id)
            .ok_or(PaymentError::UnknownRefund(refund_id))
    }

    fn refund_amount(&self, amount: Option<Money>) -> Result<Money, PaymentError> {
        let request = self.requested()?;
        if self.stage != Stage::Captured {
            return Err(self.invalid("refund"));
        }
        if let Some(pending) = &self.pending_refund {
            return Err(PaymentError::RefundInProgress(pending.refund_id));
        }
        let refundable = self
            .refundable()
            .unwrap_or(Money::zero(request.amount.currency));
        if refundable.minor <= 0 {
            return Err(self.invalid("refund"));
        }
        let amount = amount.unwrap_or(refundable);
        if amount.currency != request.amount.currency {
            return Err(PaymentError::CurrencyMismatch {
                expected: request.amount.currency,
                actual: amount.currency,
            });
        }
        if amount.minor <= 0 {
            return Err(PaymentError::NonPositiveAmount);
        }
        if amount.minor > refundable.minor {
            return Err(PaymentError::RefundExceedsCaptured {
                requested: amount,
                refundable,
            });
        }
        Ok(amount)
    }
}

impl Aggregate for Payment {
    const TYPE: &'static str = "payment";
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type Error = PaymentError;
    type Services = ();

    async fn handle(
        &mut self,
        command: PaymentCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), PaymentError> {
        let event = match command {
            PaymentCommand::Request {
                id,
                booking_id,
                amount,
                method,
                idempotency_key,
            } => {
                let asked = PaymentRequest {
                    id,
                    booking_id,
                    amount,
                    method,
                    idempotency_key,
                };
                if let Some(existing) = &self.request {
                    return if *existing == asked {
                        Ok(())
                    } else {
                        Err(PaymentError::IdempotencyKeyReused)
                    };
                }
                if amount.minor <= 0 {
                    return Err(PaymentError::NonPositiveAmount);
                }
                PaymentEvent::PaymentRequested {
                    id: asked.id,
                    booking_id: asked.booking_id,
                    amount: asked.amount,
                    method: asked.method,
                    idempotency_key: asked.idempotency_key,
                }
            }
            PaymentCommand::RecordAuthorization {
                gateway,
                reference,
                payment_method,
            } => {
                self.open_attempt()?;
                check_text("gateway", &gateway, MAX_NAME)?;
                check_text("reference", &reference, MAX_REFERENCE)?;
                if let Some(method) = &payment_method {
                    check_text("payment_method", method, MAX_REFERENCE)?;
                }
                PaymentEvent::PaymentAuthorized {
                    gateway,
                    reference,
                    payment_method,
                }
            }
            PaymentCommand::RecordDecline { gateway, reason } => {
                if self.stage != Stage::Authorized {
                    self.open_attempt()?;
                }
                check_text("gateway", &gateway, MAX_NAME)?;
                check_text("reason", &reason, MAX_REASON)?;
                PaymentEvent::PaymentFailed { gateway, reason }
            }
            PaymentCommand::RecordUnreached { tried } => {
                self.open_attempt()?;
                for unreached in &tried {
                    check_text("gateway", &unreached.gateway, MAX_NAME)?;
                }
                PaymentEvent::PaymentAttemptFailed {
                    attempt: self.attempts,
                    tried,
                }
            }
            PaymentCommand::Retry => match self.stage {
                Stage::Unprocessed => PaymentEvent::PaymentRetried {
                    attempt: self.attempts + 1,
                },
                Stage::Attempting => return Err(PaymentError::AttemptInProgress),
                _ => return Err(self.invalid("retry")),
            },
            PaymentCommand::Abandon { reason } => {
                if !matches!(self.stage, Stage::Attempting | Stage::Unprocessed) {
                    return Err(self.invalid("abandon"));
                }
                check_text("reason", &reason, MAX_REASON)?;
                PaymentEvent::PaymentAbandoned { reason }
            }
            PaymentCommand::Capture => {
                let amount = self.requested()?.amount;
                if self.stage != Stage::Authorized {
                    return Err(self.invalid("capture"));
                }
                PaymentEvent::PaymentCaptured { amount }
            }
            PaymentCommand::RequestRefund {
                refund_id,
                amount,
                reason,
            } => {
                let amount = self.refund_amount(amount)?;
                check_text("reason", &reason, MAX_REASON)?;
                PaymentEvent::RefundRequested {
                    refund_id,
                    amount,
                    reason,
                }
            }
            PaymentCommand::RecordRefund {
                refund_id,
                reference,
            } => {
                let pending = self.pending(refund_id)?;
                check_text("reference", &reference, MAX_REFERENCE)?;
                let refunded = self
                    .refunded
                    .unwrap_or(Money::zero(pending.amount.currency));
                let refunded_total = refunded.checked_add(pending.amount).map_err(|_| {
                    PaymentError::RefundExceedsCaptured {
                        requested: pending.amount,
                        refundable: Money::zero(pending.amount.currency),
                    }
                })?;
                PaymentEvent::PaymentRefunded {
                    refund_id,
                    amount: pending.amount,
                    refunded_total,
                    reference,
                }
            }
            PaymentCommand::RecordRefundFailure { refund_id, reason } => {
                self.pending(refund_id)?;
                check_text("reason", &reason, MAX_REASON)?;
                PaymentEvent::RefundFailed { refund_id, reason }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: PaymentEvent) {
        match event {
            PaymentEvent::PaymentRequested {
                id,
                booking_id,
                amount,
                method,
                idempotency_key,
            } => {
                self.refunded = Some(Money::zero(amount.currency));
                self.request = Some(PaymentRequest {
                    id,
                    booking_id,
                    amount,
                    method,
                    idempotency_key,
                });
                self.stage = Stage::Attempting;
                self.attempts = 1;
            }
            PaymentEvent::PaymentAuthorized {
                gateway,
                reference,
                payment_method,
            } => {
                self.stage = Stage::Authorized;
                self.gateway = Some(gateway);
                self.reference = Some(reference);
                self.payment_method = payment_method;
                self.failure_reason = None;
            }
            PaymentEvent::PaymentFailed { gateway, reason } => {
                self.stage = Stage::Failed;
                self.gateway = Some(gateway);
                self.failure_reason = Some(reason);
            }
            PaymentEvent::PaymentAttemptFailed { .. } => {
                self.stage = Stage::Unprocessed;
                self.failure_reason = Some(ALL_GATEWAYS_UNAVAILABLE.to_owned());
            }
            PaymentEvent::PaymentRetried { attempt } => {
                self.stage = Stage::Attempting;
                self.attempts = attempt;
                self.failure_reason = None;
            }
            PaymentEvent::PaymentAbandoned { reason } => {
                self.stage = Stage::Failed;
                self.failure_reason = Some(reason);
            }
            PaymentEvent::PaymentCaptured { .. } => self.stage = Stage::Captured,
            PaymentEvent::RefundRequested {
                refund_id,
                amount,
                reason,
            } => {
                self.pending_refund = Some(PendingRefund {
                    refund_id,
                    amount,
                    reason,
                });
            }
            PaymentEvent::PaymentRefunded { refunded_total, .. } => {
                self.refunded = Some(refunded_total);
                self.pending_refund = None;
            }
            PaymentEvent::RefundFailed { .. } => self.pending_refund = None,
        }
    }
}

/// Every event type a payment emits, for the event catalog and the relay's topics.
pub const EVENT_TYPES: &[&str] = <PaymentEvent as strum::VariantNames>::VARIANTS;

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    type PaymentTest = TestFramework<Payment>;

    fn usd(minor: i64) -> Money {
        Money::new(minor, Currency::USD)
    }

    fn key() -> IdempotencyKey {
        IdempotencyKey::parse("key-1").unwrap()
    }

    fn refund_id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn request(amount: Money) -> PaymentCommand {
        PaymentCommand::Request {
            id: Uuid::nil(),
            booking_id: Uuid::from_u128(7),
            amount,
            method: PaymentMethodKind::Card,
            idempotency_key: key(),
        }
    }

    fn requested() -> PaymentEvent {
        PaymentEvent::PaymentRequested {
            id: Uuid::nil(),
            booking_id: Uuid::from_u128(7),
            amount: usd(10_000),
            method: PaymentMethodKind::Card,
            idempotency_key: key(),
        }
    }

    fn authorized() -> PaymentEvent {
        PaymentEvent::PaymentAuthorized {
            gateway: "sandbox-card".into(),
            reference: "ch_1".into(),
            payment_method: None,
        }
    }

    fn declined() -> PaymentEvent {
        PaymentEvent::PaymentFailed {
            gateway: "sandbox-card".into(),
            reason: "insufficient funds".into(),
        }
    }

    fn unreached() -> PaymentEvent {
        PaymentEvent::PaymentAttemptFailed {
            attempt: 1,
            tried: vec![UnreachedGateway {
                gateway: "sandbox-card".into(),
                cause: Unreached::TimedOut,
            }],
        }
    }

    fn captured() -> PaymentEvent {
        PaymentEvent::PaymentCaptured {
            amount: usd(10_000),
        }
    }

    fn captured_payment() -> Vec<PaymentEvent> {
        vec![requested(), authorized(), captured()]
    }

    fn refund_requested(n: u128, minor: i64) -> PaymentEvent {
        PaymentEvent::RefundRequested {
            refund_id: refund_id(n),
            amount: usd(minor),
            reason: "changed plans".into(),
        }
    }

    fn refunded(n: u128, minor: i64, total: i64) -> PaymentEvent {
        PaymentEvent::PaymentRefunded {
            refund_id: refund_id(n),
            amount: usd(minor),
            refunded_total: usd(total),
            reference: format!("re_{n}"),
        }
    }

    fn refund(n: u128, amount: Option<Money>) -> PaymentCommand {
        PaymentCommand::RequestRefund {
            refund_id: refund_id(n),
            amount,
            reason: "changed plans".into(),
        }
    }

    fn state(events: Vec<PaymentEvent>) -> Payment {
        let mut payment = Payment::default();
        for event in events {
            payment.apply(event);
        }
        payment
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert_eq!(
            IdempotencyKey::parse("a-B_9:~").unwrap().as_str(),
            "a-B_9:~"
        );
        let long = "k".repeat(256);
        for bad in ["", "has space", "tab\t", "é", long.as_str()] {
            assert_eq!(
                IdempotencyKey::parse(bad),
                Err(PaymentError::InvalidIdempotencyKey),
                "{bad:?}"
            );
        }
        assert!(serde_json::from_str::<IdempotencyKey>("\"\"").is_err());
    }

    #[test]
    fn a_request_opens_the_payment_once() {
        PaymentTest::with(())
            .given_no_previous_events()
            .when(request(usd(10_000)))
            .then_expect_events(vec![requested()]);
        // The identical request again is a no-op, not an error.
        PaymentTest::with(())
            .given(vec![requested()])
            .when(request(usd(10_000)))
            .then_expect_events(vec![]);
        PaymentTest::with(())
            .given(vec![requested(), authorized(), captured()])
            .when(request(usd(10_000)))
            .then_expect_events(vec![]);
        PaymentTest::with(())
            .given(vec![requested()])
            .when(request(usd(10_001)))
            .then_expect_error(PaymentError::IdempotencyKeyReused);
        PaymentTest::with(())
            .given_no_previous_events()
            .when(request(usd(0)))
            .then_expect_error(PaymentError::NonPositiveAmount);
        PaymentTest::with(())
            .given_no_previous_events()
            .when(request(usd(-5)))
            .then_expect_error(PaymentError::NonPositiveAmount);
    }

    #[test]
    fn an_authorized_payment_is_captured_in_full() {
        PaymentTest::with(())
            .given(vec![requested()])
            .when(PaymentCommand::RecordAuthorization {
                gateway: "sandbox-card".into(),
                reference: "ch_1".into(),
                payment_method: None,
            })
            .then_expect_events(vec![authorized()]);
        PaymentTest::with(())
            .given(vec![requested(), authorized()])
            .when(PaymentCommand::Capture)
            .then_expect_events(vec![captured()]);
        PaymentTest::with(())
            .given(vec![requested()])
            .when(PaymentCommand::Capture)
            .then_expect_error(PaymentError::InvalidTransition {
                action: "capture",
                status: PaymentStatus::Pending,
            });
        PaymentTest::with(())
            .given(captured_payment())
            .when(PaymentCommand::Capture)
            .then_expect_error(PaymentError::InvalidTransition {
                action: "capture",
                status: PaymentStatus::Captured,
            });
        PaymentTest::with(())
            .given(vec![requested(), authorized()])
            .when(PaymentCommand::RecordAuthorization {
                gateway: "sandbox-card".into(),
                reference: "ch_2".into(),
                payment_method: None,
            })
            .then_expect_error(PaymentError::InvalidTransition {
                action: "settle an attempt of",
                status: PaymentStatus::Authorized,
            });
        PaymentTest::with(())
            .given(vec![requested()])
            .when(PaymentCommand::RecordAuthorization {
                gateway: " ".into(),
                reference: "ch_1".into(),
                payment_method: None,
            })
            .then_expect_error(PaymentError::InvalidText {
                field: "gateway",
                max: 64,
            });
        PaymentTest::with(())
            .given_no_previous_events()
            .when(PaymentCommand::Capture)
            .then_expect_error(PaymentError::NotRequested);
    }

    #[test]
    fn a_decline_is_terminal() {
        PaymentTest::with(())
            .given(vec![requested()])
            .when(PaymentCommand::RecordDecline {
                gateway: "sandbox-card".into(),
                reason: "insufficient funds".into(),
            })
            .then_expect_events(vec![declined()]);
        let failed = |action| PaymentError::InvalidTransition {
            action,
            status: PaymentStatus::Failed,
        };
        PaymentTest::with(())
            .given(vec![requested(), declined()])
            .when(PaymentCommand::Retry)
            .then_expect_error(failed("retry"));
        PaymentTest::with(())
            .given(vec![requested(), declined()])
            .when(PaymentCommand::RecordAuthorization {
                gateway: "sandbox-card-backup".into(),
                reference: "ch_2".into(),
                payment_method: None,
            })
            .then_expect_error(failed("settle an attempt of"));
        PaymentTest::with(())
            .given(vec![requested(), declined()])
            .when(PaymentCommand::Capture)
            .then_expect_error(failed("capture"));
        PaymentTest::with(())
            .given(vec![requested(), declined()])
            .when(refund(1, None))
            .then_expect_error(failed("refund"));
        // A capture the gateway refuses fails the authorized payment.
        PaymentTest::with(())
            .given(vec![requested(), authorized()])
            .when(PaymentCommand::RecordDecline {
                gateway: "sandbox-card".into(),
                reason: "capture declined: authorization expired".into(),
            })
            .then_expect_events(vec![PaymentEvent::PaymentFailed {
                gateway: "sandbox-card".into(),
                reason: "capture declined: authorization expired".into(),
            }]);
        PaymentTest::with(())
            .given(captured_payment())
            .when(PaymentCommand::RecordDecline {
                gateway: "sandbox-card".into(),
                reason: "too late".into(),
            })
            .then_expect_error(PaymentError::InvalidTransition {
                action: "settle an attempt of",
                status: PaymentStatus::Captured,
            });
    }

    #[test]
    fn a_payment_no_gateway_charged_is_abandoned_for_good() {
        let abandon = || PaymentCommand::Abandon {
            reason: "interrupted before any gateway processed it".into(),
        };
        let abandoned = PaymentEvent::PaymentAbandoned {
            reason: "interrupted before any gateway processed it".into(),
        };
        // An interrupted attempt, and an attempt no gateway could reach.
        for given in [vec![requested()], vec![requested(), unreached()]] {
            PaymentTest::with(())
                .given(given)
                .when(abandon())
                .then_expect_events(vec![abandoned.clone()]);
        }
        let failed = state(vec![requested(), abandoned.clone()]);
        assert_eq!(failed.status(), Some(PaymentStatus::Failed));
        assert_eq!(
            failed.failure_reason.as_deref(),
            Some("interrupted before any gateway processed it")
        );
        assert_eq!(failed.gateway, None);
        // Terminal: nothing settles, retries or abandons it again.
        for command in [abandon(), PaymentCommand::Retry, PaymentCommand::Capture] {
            assert!(
                matches!(
                    PaymentTest::with(())
                        .given(vec![requested(), abandoned.clone()])
                        .when(command)
                        .inspect_result(),
                    Err(PaymentError::InvalidTransition {
                        status: PaymentStatus::Failed,
                        ..
                    })
                ),
                "an abandoned payment is final"
            );
        }
        // A payment that was charged is never abandoned.
        for given in [vec![requested(), authorized()], captured_payment()] {
            let status = state(given.clone()).status().unwrap();
            PaymentTest::with(())
                .given(given)
                .when(abandon())
                .then_expect_error(PaymentError::InvalidTransition {
                    action: "abandon",
                    status,
                });
        }
    }

    #[test]
    fn an_attempt_no_gateway_processed_can_be_retried() {
        PaymentTest::with(())
            .given(vec![requested()])
            .when(PaymentCommand::RecordUnreached {
                tried: vec![UnreachedGateway {
                    gateway: "sandbox-card".into(),
                    cause: Unreached::TimedOut,
                }],
            })
            .then_expect_events(vec![unreached()]);
        PaymentTest::with(())
            .given(vec![requested(), unreached()])
            .when(PaymentCommand::Retry)
            .then_expect_events(vec![PaymentEvent::PaymentRetried { attempt: 2 }]);
        PaymentTest::with(())
            .given(vec![
                requested(),
                unreached(),
                PaymentEvent::PaymentRetried { attempt: 2 },
            ])
            .when(PaymentCommand::RecordUnreached { tried: vec![] })
            .then_expect_events(vec![PaymentEvent::PaymentAttemptFailed {
                attempt: 2,
                tried: vec![],
            }]);
        // Only one attempt is open at a time.
        PaymentTest::with(())
            .given(vec![requested()])
            .when(PaymentCommand::Retry)
            .then_expect_error(PaymentError::AttemptInProgress);
        PaymentTest::with(())
            .given(vec![requested(), unreached()])
            .when(PaymentCommand::RecordAuthorization {
                gateway: "sandbox-card".into(),
                reference: "ch_1".into(),
                payment_method: None,
            })
            .then_expect_error(PaymentError::NoAttemptInProgress);
        PaymentTest::with(())
            .given(captured_payment())
            .when(PaymentCommand::Retry)
            .then_expect_error(PaymentError::InvalidTransition {
                action: "retry",
                status: PaymentStatus::Captured,
            });
        PaymentTest::with(())
            .given_no_previous_events()
            .when(PaymentCommand::Retry)
            .then_expect_error(PaymentError::NotRequested);

        let pending = state(vec![requested(), unreached()]);
        assert_eq!(pending.status(), Some(PaymentStatus::Pending));
        assert_eq!(
            pending.failure_reason.as_deref(),
            Some(ALL_GATEWAYS_UNAVAILABLE)
        );
        let retried = state(vec![
            requested(),
            unreached(),
            PaymentEvent::PaymentRetried { attempt: 2 },
        ]);
        assert_eq!((retried.attempts, retried.failure_reason), (2, None));
    }

    #[test]
    fn refunds_partial_then_the_rest() {
        PaymentTest::with(())
            .given(captured_payment())
            .when(refund(1, Some(usd(3_000))))
            .then_expect_events(vec![refund_requested(1, 3_000)]);
        PaymentTest::with(())
            .given(captured_payment())
            .and(vec![refund_requested(1, 3_000)])
            .when(PaymentCommand::RecordRefund {
                refund_id: refund_id(1),
                reference: "re_1".into(),
            })
            .then_expect_events(vec![refunded(1, 3_000, 3_000)]);
        // No amount: everything still refundable.
        PaymentTest::with(())
            .given(captured_payment())
            .and(vec![refund_requested(1, 3_000), refunded(1, 3_000, 3_000)])
            .when(refund(2, None))
            .then_expect_events(vec![refund_requested(2, 7_000)]);
        PaymentTest::with(())
            .given(captured_payment())
            .and(vec![
                refund_requested(1, 3_000),
                refunded(1, 3_000, 3_000),
                refund_requested(2, 7_000),
            ])
            .when(PaymentCommand::RecordRefund {
                refund_id: refund_id(2),
                reference: "re_2".into(),
            })
            .then_expect_events(vec![refunded(2, 7_000, 10_000)]);

        let mut payment = state(captured_payment());
        assert_eq!(payment.status(), Some(PaymentStatus::Captured));
        assert_eq!(payment.refundable(), Some(usd(10_000)));
        payment.apply(refund_requested(1, 3_000));
        assert_eq!(payment.status(), Some(PaymentStatus::Captured));
        assert_eq!(payment.refundable(), Some(usd(7_000)));
        payment.apply(refunded(1, 3_000, 3_000));
        assert_eq!(payment.status(), Some(PaymentStatus::PartiallyRefunded));
        payment.apply(refund_requested(2, 7_000));
        payment.apply(refunded(2, 7_000, 10_000));
        assert_eq!(payment.status(), Some(PaymentStatus::Refunded));
        assert_eq!(payment.refunded, Some(usd(10_000)));
        assert_eq!(payment.refundable(), Some(usd(0)));
    }

    #[test]
    fn refunds_never_exceed_what_was_captured() {
        let partly = || {
            let mut events = captured_payment();
            events.extend([refund_requested(1, 3_000), refunded(1, 3_000, 3_000)]);
            events
        };
        PaymentTest::with(())
            .given(partly())
            .when(refund(2, Some(usd(7_001))))
            .then_expect_error(PaymentError::RefundExceedsCaptured {
                requested: usd(7_001),
                refundable: usd(7_000),
            });
        PaymentTest::with(())
            .given(partly())
            .when(refund(2, Some(usd(7_000))))
            .then_expect_events(vec![refund_requested(2, 7_000)]);
        PaymentTest::with(())
            .given(captured_payment())
            .when(refund(1, Some(usd(0))))
            .then_expect_error(PaymentError::NonPositiveAmount);
        PaymentTest::with(())
            .given(captured_payment())
            .when(refund(1, Some(usd(-1))))
            .then_expect_error(PaymentError::NonPositiveAmount);
        PaymentTest::with(())
            .given(captured_payment())
            .when(refund(1, Some(Money::new(100, Currency::EUR))))
            .then_expect_error(PaymentError::CurrencyMismatch {
                expected: Currency::USD,
                actual: Currency::EUR,
            });
        // A refund in progress holds its amount: a second one waits for it.
        PaymentTest::with(())
            .given(captured_payment())
            .and(vec![refund_requested(1, 3_000)])
            .when(refund(2, Some(usd(1))))
            .then_expect_error(PaymentError::RefundInProgress(refund_id(1)));
        let mut full = captured_payment();
        full.extend([refund_requested(1, 10_000), refunded(1, 10_000, 10_000)]);
        PaymentTest::with(())
            .given(full.clone())
            .when(refund(2, Some(usd(1))))
            .then_expect_error(PaymentError::InvalidTransition {
                action: "refund",
                status: PaymentStatus::Refunded,
            });
        PaymentTest::with(())
            .given(full)
            .when(refund(2, None))
            .then_expect_error(PaymentError::InvalidTransition {
                action: "refund",
                status: PaymentStatus::Refunded,
            });
        PaymentTest::with(())
            .given(vec![requested(), authorized()])
            .when(refund(1, Some(usd(1))))
            .then_expect_error(PaymentError::InvalidTransition {
                action: "refund",
                status: PaymentStatus::Authorized,
            });
        PaymentTest::with(())
            .given_no_previous_events()
            .when(refund(1, None))
            .then_expect_error(PaymentError::NotRequested);
        PaymentTest::with(())
            .given(captured_payment())
            .when(PaymentCommand::RequestRefund {
                refund_id: refund_id(1),
                amount: None,
                reason: String::new(),
            })
            .then_expect_error(PaymentError::InvalidText {
                field: "reason",
                max: 500,
            });
    }

    #[test]
    fn a_failed_refund_releases_its_reservation() {
        let mut events = captured_payment();
        events.push(refund_requested(1, 4_000));
        PaymentTest::with(())
            .given(events.clone())
            .when(PaymentCommand::RecordRefundFailure {
                refund_id: refund_id(1),
                reason: "refund declined".into(),
            })
            .then_expect_events(vec![PaymentEvent::RefundFailed {
                refund_id: refund_id(1),
                reason: "refund declined".into(),
            }]);
        PaymentTest::with(())
            .given(events.clone())
            .when(PaymentCommand::RecordRefund {
                refund_id: refund_id(2),
                reference: "re_2".into(),
            })
            .then_expect_error(PaymentError::UnknownRefund(refund_id(2)));
        PaymentTest::with(())
            .given(captured_payment())
            .when(PaymentCommand::RecordRefundFailure {
                refund_id: refund_id(1),
                reason: "x".into(),
            })
            .then_expect_error(PaymentError::UnknownRefund(refund_id(1)));
        events.push(PaymentEvent::RefundFailed {
            refund_id: refund_id(1),
            reason: "refund declined".into(),
        });
        PaymentTest::with(())
            .given(events)
            .when(refund(2, None))
            .then_expect_events(vec![refund_requested(2, 10_000)]);
    }

    #[test]
    fn statuses_and_methods_use_the_contract_names() {
        assert_eq!(
            serde_json::to_value(PaymentStatus::PartiallyRefunded).unwrap(),
            "PARTIALLY_REFUNDED"
        );
        assert_eq!(
            serde_json::to_value(PaymentMethodKind::Paypal).unwrap(),
            "PAYPAL"
        );
        assert_eq!(
            serde_json::to_value(Unreached::TimedOut).unwrap(),
            "TIMED_OUT"
        );
        for status in [
            PaymentStatus::Pending,
            PaymentStatus::Authorized,
            PaymentStatus::Captured,
            PaymentStatus::Failed,
            PaymentStatus::Refunded,
            PaymentStatus::PartiallyRefunded,
        ] {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        for method in PaymentMethodKind::ALL {
            assert_eq!(serde_json::to_value(method).unwrap(), method.as_str());
        }
        assert_eq!(
            state(vec![requested(), declined()]).status(),
            Some(PaymentStatus::Failed)
        );
        assert_eq!(Payment::default().status(), None);
    }

    /// The event store codec stores a variant's content under its `event_type`.
    #[test]
    fn every_event_type_is_its_variant_name() {
        let events = vec![
            requested(),
            authorized(),
            declined(),
            unreached(),
            PaymentEvent::PaymentRetried { attempt: 2 },
            captured(),
            refund_requested(1, 1),
            refunded(1, 1, 1),
            PaymentEvent::RefundFailed {
                refund_id: refund_id(1),
                reason: "no".into(),
            },
        ];
        for event in events {
            let value = serde_json::to_value(&event).unwrap();
            let object = value.as_object().unwrap();
            assert_eq!(object.len(), 1);
            assert!(object.contains_key(&event.event_type()), "{value}");
            assert_eq!(event.event_version(), "1");
        }
    }
}
