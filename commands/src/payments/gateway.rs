//! The `PaymentGateway` strategy: what every payment provider, sandbox or real, offers.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use domain::Money;
use domain::payment::PaymentMethodKind;
use uuid::Uuid;

/// What a gateway call resolves to. Boxed so gateways can sit in a `Vec<Arc<dyn PaymentGateway>>`.
pub type GatewayFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, GatewayError>> + Send + 'a>>;

/// Why a gateway did not do what was asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The provider processed the request and said no. Final: never retried elsewhere.
    #[error("declined: {0}")]
    Declined(String),
    /// The provider refused to take the request at all (outage); nothing was processed.
    #[error("gateway unavailable")]
    Unavailable,
    /// The provider did not answer within the router's per-attempt timeout.
    #[error("gateway timed out")]
    Timeout,
}

/// The client-side tokenizer's opaque token for a payment method (never a raw card number).
/// Its `Debug` hides it, and it is never written to the event log.
#[derive(Clone, PartialEq, Eq)]
pub struct PaymentToken(String);

impl PaymentToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token itself, for the gateway call only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PaymentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PaymentToken(***)")
    }
}

/// A request to authorize a charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeRequest {
    pub payment_id: Uuid,
    pub amount: Money,
    pub method: PaymentMethodKind,
    /// A one-time token from the client's tokenizer, or a saved method's id
    /// ([`Authorization::payment_method`]) for a charge made without the customer present.
    pub token: PaymentToken,
    /// The same key always yields the provider's first answer, never a second charge.
    pub idempotency_key: String,
}

/// A gateway's yes to a charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    /// The provider's id for the charge; captures and refunds name it.
    pub reference: String,
    /// The provider's reusable id for the payment method (Stripe's `pm_…`), for later charges
    /// made without the customer present (fees found at return). Its token is never stored.
    pub payment_method: Option<String>,
}

/// Capture an authorized charge in full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureRequest {
    pub reference: String,
    pub amount: Money,
    pub idempotency_key: String,
}

/// Send `amount` of a captured charge back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundRequest {
    pub reference: String,
    pub amount: Money,
    pub idempotency_key: String,
}

/// A gateway's confirmation of a refund.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundReceipt {
    pub reference: String,
}

/// What a gateway has on record for an authorization's idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// No request with this key reached the provider: nothing was charged.
    Unknown,
    Authorized(Authorization),
    Declined(String),
}

/// A payment provider. One implementation per provider; the router holds them as
/// `Arc<dyn PaymentGateway>` in per-method fallback order.
///
/// Every call must honour its idempotency key: repeating a call with the same key returns the
/// first outcome and moves no money a second time.
pub trait PaymentGateway: Send + Sync {
    /// A stable name, recorded on the payment it processes.
    fn name(&self) -> &str;

    fn supports(&self, method: PaymentMethodKind) -> bool;

    fn authorize<'a>(&'a self, request: &'a ChargeRequest) -> GatewayFuture<'a, Authorization>;

    /// What became of the authorization request with this idempotency key: how a payment
    /// interrupted by a crash learns whether it was charged. (Real providers answer this: a
    /// search by the key or by metadata carrying it.)
    fn lookup<'a>(&'a self, idempotency_key: &'a str) -> GatewayFuture<'a, Recorded>;

    fn capture<'a>(&'a self, request: &'a CaptureRequest) -> GatewayFuture<'a, ()>;

    fn refund<'a>(&'a self, request: &'a RefundRequest) -> GatewayFuture<'a, RefundReceipt>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_do_not_print() {
        let token = PaymentToken::new("tok_secret");
        assert_eq!(format!("{token:?}"), "PaymentToken(***)");
        assert_eq!(token.expose(), "tok_secret");
    }
}
