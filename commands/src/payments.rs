//! Payments: the `PaymentGateway` strategy, the fallback router, the sandbox gateways, and the
//! service that runs a payment from request to capture, or to a decline, and refunds it.
//!
//! # Paying
//! [`PaymentService::pay`] derives the payment id from the booking and the client's idempotency
//! key ([`payment_id`]), so a retried request lands on the same Payment stream:
//! 1. `Request` (a no-op when the identical request is already recorded);
//! 2. authorize through the [`GatewayRouter`], with the payment id as the gateway's idempotency
//!    key, so even a repeated call to a gateway charges once;
//! 3. record the authorization and capture it, or record the decline.
//!
//! Outcomes, all of them recorded before `pay` returns:
//! - authorized and captured → `Ok`, status CAPTURED, `gateway` names the one that processed it
//!   (the backup when the primary was down or timed out);
//! - declined → `Ok`, status FAILED with the gateway and the reason. Terminal: paying again
//!   takes a new idempotency key (a new payment); the booking stays HELD meanwhile;
//! - every gateway unavailable or timed out → `Err(GatewaysUnavailable)` (UNAVAILABLE, "retry").
//!   Nothing was charged; the payment stays PENDING with failure reason "all gateways
//!   unavailable", and retrying **with the same key** starts another attempt on the same
//!   payment.
//!
//! A repeated request (same booking and key) never reaches a gateway again unless the payment
//! is waiting for exactly that: a retry after an attempt no gateway processed, or the capture of
//! an authorization whose capture failed. Otherwise it returns the payment as it is. In one
//! process concurrent requests for one payment queue up, so the second sees the first's
//! outcome; across processes the second sees PENDING until the first finishes.
//!
//! # Refunding
//! [`PaymentService::refund`] reserves the amount on the payment, asks the gateway that
//! processed the payment (never a fallback: the charge lives there) with the refund id as its
//! idempotency key, then records the result. A declined refund releases the reservation. When
//! the gateway is unavailable or times out the refund stays reserved and the next `refund` call
//! for the payment finishes that refund (same gateway, same key, so it is paid out once) instead
//! of starting another.
//!
//! # Finishing after a crash
//! A process that dies between opening an attempt and recording its outcome leaves the payment
//! PENDING with the attempt open. [`PaymentService::finish`] (the worker's step, once the
//! payer's claim is gone) and a retried `pay` ask the method's gateways what they have on record
//! for the payment's idempotency key ([`PaymentGateway::lookup`]) and record that: an
//! authorization (then captured), or a decline. When no gateway has it, nothing was charged:
//! `finish` abandons the payment (FAILED), a retried `pay`, which has the token again, makes the
//! attempt. A refund left reserved is finished with the same refund key, so it is paid out once.

pub mod gateway;
pub mod router;
pub mod sandbox;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::Money;
use domain::payment::{
    IdempotencyKey, Payment, PaymentCommand, PaymentError, PaymentMethodKind, PaymentStatus, Stage,
    UnreachedGateway,
};
use eventstore::{EventStoreError, StreamId};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;

use crate::codec::CodecError;
use crate::context::CommandContext;
use crate::executor::{ExecuteError, Executor, replay};

pub use gateway::{
    Authorization, CaptureRequest, ChargeRequest, GatewayError, GatewayFuture, PaymentGateway,
    PaymentToken, Recorded, RefundReceipt, RefundRequest,
};
pub use router::{DEFAULT_ATTEMPT_TIMEOUT, GatewayRouter, Routed};
pub use sandbox::{SandboxGateway, SandboxGateways};

/// The payment a booking's idempotency key names: the same pair always gives the same id, so a
/// retried request finds the payment the first one opened. (UUID v8 over SHA-256.)
pub fn payment_id(booking_id: Uuid, key: &IdempotencyKey) -> Uuid {
    let digest = Sha256::new()
        .chain_update(b"fleetledger/payment/")
        .chain_update(booking_id.as_bytes())
        .chain_update(key.as_str().as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// A request to pay for a booking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayRequest {
    pub booking_id: Uuid,
    pub amount: Money,
    pub method: PaymentMethodKind,
    pub token: PaymentToken,
    pub idempotency_key: IdempotencyKey,
    /// Only this gateway, no fallback (a saved payment method lives at one gateway).
    pub gateway: Option<String>,
}

/// A payment method a gateway saved when it authorized a payment: later charges without the
/// customer present go to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedMethod {
    pub gateway: String,
    pub method: PaymentMethodKind,
    pub id: String,
}

/// A payment as the contract shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PaymentView {
    pub id: Uuid,
    pub booking_id: Uuid,
    pub amount: Money,
    pub refunded: Money,
    pub method: PaymentMethodKind,
    pub status: PaymentStatus,
    /// The gateway that processed it (authorized or declined).
    pub gateway: Option<String>,
    pub failure_reason: Option<String>,
    /// When the payment was requested (its first event's `recorded_at`).
    pub created_at: DateTime<Utc>,
    /// The stream's version this view reflects.
    pub version: i64,
}

/// Why a payment operation failed. The intended API code is noted on each variant.
#[derive(Debug, thiserror::Error)]
pub enum PaymentServiceError {
    /// NOT_FOUND.
    #[error("payment {0} not found")]
    NotFound(Uuid),
    /// The payment refused the command: BAD_USER_INPUT when
    /// [`PaymentError::is_invalid_input`], otherwise CONFLICT.
    #[error(transparent)]
    Rejected(PaymentError),
    /// UNAVAILABLE: no gateway processed the payment; nothing was charged. It is recorded as
    /// PENDING ("all gateways unavailable"); the same request may be retried.
    #[error("no payment gateway could process payment {payment_id}")]
    GatewaysUnavailable {
        payment_id: Uuid,
        tried: Vec<UnreachedGateway>,
    },
    /// UNAVAILABLE: the gateway that holds the charge did not answer a capture or refund; the
    /// same call may be retried.
    #[error("payment gateway {gateway} is unavailable for payment {payment_id}")]
    GatewayUnavailable { gateway: String, payment_id: Uuid },
    /// CONFLICT: the gateway refused the refund; nothing was refunded.
    #[error("refund declined by {gateway}: {reason}")]
    RefundDeclined { gateway: String, reason: String },
    /// INTERNAL: no gateway is configured for the method (or for a recorded gateway name).
    #[error("no payment gateway is configured for {0}")]
    NoGateway(String),
    /// CONFLICT (concurrency) or INTERNAL/UNAVAILABLE (store): never a business rule.
    #[error(transparent)]
    Execute(ExecuteError<PaymentError>),
}

impl From<ExecuteError<PaymentError>> for PaymentServiceError {
    fn from(e: ExecuteError<PaymentError>) -> Self {
        match e {
            ExecuteError::Rejected(rule) => Self::Rejected(rule),
            e => Self::Execute(e),
        }
    }
}

impl From<EventStoreError> for PaymentServiceError {
    fn from(e: EventStoreError) -> Self {
        Self::Execute(ExecuteError::Store(e))
    }
}

impl From<CodecError> for PaymentServiceError {
    fn from(e: CodecError) -> Self {
        Self::Execute(ExecuteError::Codec(e))
    }
}

type Result<T, E = PaymentServiceError> = std::result::Result<T, E>;

/// Why a payment interrupted before any gateway processed it is FAILED.
pub const INTERRUPTED: &str =
    "interrupted before any gateway processed it; nothing was charged; pay again";

const LOCK_STRIPES: usize = 64;

/// Runs payments. Cheap to clone.
#[derive(Clone)]
pub struct PaymentService {
    payments: Executor<Payment>,
    router: Arc<GatewayRouter>,
    /// In-process queue per payment (striped), held across the gateway calls.
    locks: Arc<[Mutex<()>]>,
}

impl PaymentService {
    pub fn new(payments: Executor<Payment>, router: GatewayRouter) -> Self {
        Self {
            payments,
            router: Arc::new(router),
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    pub fn router(&self) -> &GatewayRouter {
        &self.router
    }

    /// Pay for a booking; see the module documentation for the outcomes.
    #[tracing::instrument(
        skip_all,
        fields(booking.id = %request.booking_id, payment.method = %request.method, payment.id = tracing::field::Empty),
        err(level = "info")
    )]
    pub async fn pay(&self, request: PayRequest, ctx: &CommandContext) -> Result<PaymentView> {
        if self.router.gateways(request.method).is_empty() {
            return Err(PaymentServiceError::NoGateway(request.method.to_string()));
        }
        let id = payment_id(request.booking_id, &request.idempotency_key);
        let key = id.to_string();
        tracing::Span::current().record("payment.id", tracing::field::display(id));
        let _queued = self.queue(&key).await;
        let opened = self
            .payments
            .execute(
                &key,
                PaymentCommand::Request {
                    id,
                    booking_id: request.booking_id,
                    amount: request.amount,
                    method: request.method,
                    idempotency_key: request.idempotency_key.clone(),
                },
                ctx,
            )
            .await?;
        if opened.events.is_empty() && !self.resume(id, request.amount, ctx).await? {
            return self.view(id).await;
        }
        self.attempt(id, &request, ctx).await?;
        self.view(id).await
    }

    /// The same request was made before. Open another attempt if the last one reached no
    /// gateway (`true`: go and attempt), finish a capture that failed, or leave it as it is.
    async fn resume(&self, id: Uuid, amount: Money, ctx: &CommandContext) -> Result<bool> {
        let key = id.to_string();
        let payment = self.payments.load(&key).await?.state;
        match (payment.stage, payment.gateway, payment.reference) {
            (Stage::Unprocessed, ..) => {
                match self
                    .payments
                    .execute(&key, PaymentCommand::Retry, ctx)
                    .await
                {
                    Ok(_) => Ok(true),
                    // Another process opened the next attempt first.
                    Err(ExecuteError::Rejected(_)) => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }
            (Stage::Authorized, Some(gateway), Some(reference)) => {
                self.capture(id, &gateway, reference, amount, ctx).await?;
                Ok(false)
            }
            // An attempt was interrupted: settle it from the gateways' records, or make it
            // (same key, so a gateway that did charge answers that charge) when none has it.
            (Stage::Attempting, ..) => Ok(!self.settle_from_records(id, ctx).await?),
            _ => Ok(false),
        }
    }

    /// Finish a payment whose process died: settle an interrupted attempt from what the
    /// gateways have on record (abandon it when none has it: nothing was charged), capture an
    /// authorization, pay out a reserved refund. The payment as it is afterwards.
    pub async fn finish(&self, id: Uuid, ctx: &CommandContext) -> Result<Option<PaymentView>> {
        let key = id.to_string();
        let queued = self.queue(&key).await;
        let payment = self.payments.load(&key).await?.state;
        let Some(request) = payment.request.clone() else {
            return Ok(None);
        };
        match (payment.stage, payment.gateway, payment.reference) {
            (Stage::Attempting, ..) => {
                let settled = self.settle_from_records(id, ctx).await?;
                if !settled {
                    self.record(
                        id,
                        PaymentCommand::Abandon {
                            reason: INTERRUPTED.to_owned(),
                        },
                        ctx,
                    )
                    .await?;
                }
            }
            (Stage::Authorized, Some(gateway), Some(reference)) => {
                self.capture(id, &gateway, reference, request.amount, ctx)
                    .await?;
            }
            _ => {}
        }
        if payment.pending_refund.is_some() {
            drop(queued);
            let reason = payment.pending_refund.map(|p| p.reason).unwrap_or_default();
            self.refund(id, None, &reason, ctx).await?;
        }
        self.get(id).await
    }

    /// Give up a payment no gateway processed (its attempts all unreached): FAILED.
    pub async fn abandon(&self, id: Uuid, reason: &str, ctx: &CommandContext) -> Result<()> {
        let _queued = self.queue(&id.to_string()).await;
        let abandon = PaymentCommand::Abandon {
            reason: reason.to_owned(),
        };
        self.record(id, abandon, ctx).await
    }

    /// Record what the method's gateways have on record for the open attempt; `false` when
    /// none has anything (nothing was charged). A gateway that cannot answer makes this an
    /// error: without its answer nobody can say whether it charged.
    async fn settle_from_records(&self, id: Uuid, ctx: &CommandContext) -> Result<bool> {
        let key = id.to_string();
        let payment = self.payments.load(&key).await?.state;
        let Some(request) = payment.request else {
            return Ok(false);
        };
        for gateway in self.router.gateways(request.method) {
            let recorded = self.router.call(gateway.lookup(&key)).await.map_err(|_| {
                PaymentServiceError::GatewayUnavailable {
                    gateway: gateway.name().to_owned(),
                    payment_id: id,
                }
            })?;
            let name = gateway.name().to_owned();
            match recorded {
                Recorded::Unknown => continue,
                Recorded::Authorized(authorization) => {
                    tracing::info!(payment.id = %id, gateway = %name, "interrupted attempt: the gateway had authorized it");
                    self.record(
                        id,
                        PaymentCommand::RecordAuthorization {
                            gateway: name.clone(),
                            reference: authorization.reference.clone(),
                            payment_method: authorization.payment_method.clone(),
                        },
                        ctx,
                    )
                    .await?;
                    self.capture(id, &name, authorization.reference, request.amount, ctx)
                        .await?;
                }
                Recorded::Declined(reason) => {
                    tracing::info!(payment.id = %id, gateway = %name, "interrupted attempt: the gateway had declined it");
                    self.record(
                        id,
                        PaymentCommand::RecordDecline {
                            gateway: name,
                            reason,
                        },
                        ctx,
                    )
                    .await?;
                }
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Record a gateway's outcome of the open attempt (or its abandonment); another process
    /// settling it first is not an error.
    async fn record(&self, id: Uuid, command: PaymentCommand, ctx: &CommandContext) -> Result<()> {
        match self.payments.execute(&id.to_string(), command, ctx).await {
            Ok(_)
            | Err(ExecuteError::Rejected(
                PaymentError::InvalidTransition { .. } | PaymentError::NoAttemptInProgress,
            )) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// One attempt through the router, recorded.
    async fn attempt(&self, id: Uuid, request: &PayRequest, ctx: &CommandContext) -> Result<()> {
        let key = id.to_string();
        let charge = ChargeRequest {
            payment_id: id,
            amount: request.amount,
            method: request.method,
            token: request.token.clone(),
            idempotency_key: key.clone(),
        };
        crate::crash_point!("payment.before_gateway");
        let routed = match &request.gateway {
            Some(gateway) => self.router.authorize_at(gateway, &charge).await,
            None => self.router.authorize(&charge).await,
        };
        crate::crash_point!("payment.gateway_answered");
        match routed {
            Routed::Authorized {
                gateway,
                authorization,
            } => {
                let reference = authorization.reference;
                // Another process paying with the same key may have recorded the same answer
                // first (the gateway gave both the first outcome of the key): that is no error.
                self.record(
                    id,
                    PaymentCommand::RecordAuthorization {
                        gateway: gateway.clone(),
                        reference: reference.clone(),
                        payment_method: authorization.payment_method,
                    },
                    ctx,
                )
                .await?;
                crate::crash_point!("payment.authorized");
                self.capture(id, &gateway, reference, request.amount, ctx)
                    .await
            }
            Routed::Declined { gateway, reason } => {
                self.record(id, PaymentCommand::RecordDecline { gateway, reason }, ctx)
                    .await
            }
            Routed::Unreached(tried) => {
                self.payments
                    .execute(
                        &key,
                        PaymentCommand::RecordUnreached {
                            tried: tried.clone(),
                        },
                        ctx,
                    )
                    .await?;
                Err(PaymentServiceError::GatewaysUnavailable {
                    payment_id: id,
                    tried,
                })
            }
        }
    }

    /// Capture an authorization at the gateway that made it, and record the outcome.
    async fn capture(
        &self,
        id: Uuid,
        gateway_name: &str,
        reference: String,
        amount: Money,
        ctx: &CommandContext,
    ) -> Result<()> {
        let gateway = self.gateway(gateway_name)?;
        let request = CaptureRequest {
            reference,
            amount,
            idempotency_key: format!("{id}:capture"),
        };
        let command = match self.router.call(gateway.capture(&request)).await {
            Ok(()) => PaymentCommand::Capture,
            Err(GatewayError::Declined(reason)) => PaymentCommand::RecordDecline {
                gateway: gateway_name.to_owned(),
                reason: format!("capture declined: {reason}"),
            },
            Err(GatewayError::Unavailable | GatewayError::Timeout) => {
                // Left AUTHORIZED: the same pay request captures it later.
                return Err(PaymentServiceError::GatewayUnavailable {
                    gateway: gateway_name.to_owned(),
                    payment_id: id,
                });
            }
        };
        match self.payments.execute(&id.to_string(), command, ctx).await {
            // A concurrent request for the same payment (another process) settled it first.
            Ok(_) | Err(ExecuteError::Rejected(PaymentError::InvalidTransition { .. })) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Refund `amount` of a captured payment (`None`: everything still refundable).
    ///
    /// If a refund of this payment is still reserved (its gateway was unavailable, or a process
    /// stopped half-way), this call finishes that one and returns, rather than starting another.
    #[tracing::instrument(skip_all, fields(payment.id = %payment_id), err(level = "info"))]
    pub async fn refund(
        &self,
        payment_id: Uuid,
        amount: Option<Money>,
        reason: &str,
        ctx: &CommandContext,
    ) -> Result<PaymentView> {
        let key = payment_id.to_string();
        let _queued = self.queue(&key).await;
        let mut payment = self.payments.load(&key).await?.state;
        if payment.request.is_none() {
            return Err(PaymentServiceError::NotFound(payment_id));
        }
        if payment.pending_refund.is_none() {
            self.payments
                .execute(
                    &key,
                    PaymentCommand::RequestRefund {
                        refund_id: Uuid::now_v7(),
                        amount,
                        reason: reason.to_owned(),
                    },
                    ctx,
                )
                .await?;
            payment = self.payments.load(&key).await?.state;
        }
        if let (Some(pending), Some(gateway_name), Some(reference)) = (
            payment.pending_refund,
            payment.gateway.as_deref(),
            payment.reference,
        ) {
            let gateway = self.gateway(gateway_name)?;
            let request = RefundRequest {
                reference,
                amount: pending.amount,
                idempotency_key: pending.refund_id.to_string(),
            };
            let command = match self.router.call(gateway.refund(&request)).await {
                Ok(receipt) => PaymentCommand::RecordRefund {
                    refund_id: pending.refund_id,
                    reference: receipt.reference,
                },
                Err(GatewayError::Declined(reason)) => {
                    self.payments
                        .execute(
                            &key,
                            PaymentCommand::RecordRefundFailure {
                                refund_id: pending.refund_id,
                                reason: reason.clone(),
                            },
                            ctx,
                        )
                        .await?;
                    return Err(PaymentServiceError::RefundDeclined {
                        gateway: gateway_name.to_owned(),
                        reason,
                    });
                }
                Err(GatewayError::Unavailable | GatewayError::Timeout) => {
                    return Err(PaymentServiceError::GatewayUnavailable {
                        gateway: gateway_name.to_owned(),
                        payment_id,
                    });
                }
            };
            match self.payments.execute(&key, command, ctx).await {
                // Another process recorded the same refund first.
                Ok(_) | Err(ExecuteError::Rejected(PaymentError::UnknownRefund(_))) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.view(payment_id).await
    }

    /// The payment method the gateway saved when it authorized this payment.
    pub async fn saved_method(&self, payment_id: Uuid) -> Result<Option<SavedMethod>> {
        let payment = self.payments.load(&payment_id.to_string()).await?.state;
        Ok(
            match (payment.gateway, payment.payment_method, payment.request) {
                (Some(gateway), Some(id), Some(request)) => Some(SavedMethod {
                    gateway,
                    method: request.method,
                    id,
                }),
                _ => None,
            },
        )
    }

    /// The payment as it is now.
    pub async fn get(&self, payment_id: Uuid) -> Result<Option<PaymentView>> {
        let stream = StreamId::new(Payment::TYPE, payment_id.to_string());
        let events = self.payments.store().read_stream(&stream, 1, None).await?;
        let Some(first) = events.first() else {
            return Ok(None);
        };
        let created_at = first.recorded_at;
        let version = events.last().map_or(0, |e| e.version);
        let payment: Payment = replay(&events)?;
        let (Some(status), Some(request)) = (payment.status(), payment.request) else {
            return Ok(None);
        };
        Ok(Some(PaymentView {
            id: request.id,
            booking_id: request.booking_id,
            amount: request.amount,
            refunded: payment
                .refunded
                .unwrap_or(Money::zero(request.amount.currency)),
            method: request.method,
            status,
            gateway: payment.gateway,
            failure_reason: payment.failure_reason,
            created_at,
            version,
        }))
    }

    async fn view(&self, payment_id: Uuid) -> Result<PaymentView> {
        self.get(payment_id)
            .await?
            .ok_or(PaymentServiceError::NotFound(payment_id))
    }

    fn gateway(&self, name: &str) -> Result<&Arc<dyn PaymentGateway>> {
        self.router
            .gateway(name)
            .ok_or_else(|| PaymentServiceError::NoGateway(name.to_owned()))
    }

    async fn queue(&self, key: &str) -> MutexGuard<'_, ()> {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        // LOCK_STRIPES > 0; the index is below it.
        let stripe = (hasher.finish() % LOCK_STRIPES as u64) as usize;
        self.locks[stripe].lock().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_ids_are_stable_and_distinct() {
        let key = IdempotencyKey::parse("pay-1").unwrap();
        let booking = Uuid::from_u128(1);
        let id = payment_id(booking, &key);
        assert_eq!(id, payment_id(booking, &key));
        assert_eq!(id.get_version_num(), 8);
        assert_ne!(id, payment_id(Uuid::from_u128(2), &key));
        assert_ne!(
            id,
            payment_id(booking, &IdempotencyKey::parse("pay-2").unwrap())
        );
        // Pinned: changing the derivation would orphan every stored payment's retries.
        // Pinned (and checked with Python's hashlib): changing the derivation would orphan
        // every stored payment's retries.
        assert_eq!(id.to_string(), "fc6bd979-104a-8f19-84ef-fd9cb1cbaa19");
    }
}
