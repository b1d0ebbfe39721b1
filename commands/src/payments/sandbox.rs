//! The built-in sandbox gateways: they behave like real providers, with no network.
//!
//! # Test tokens
//! The names client developers know from Stripe's test mode, and this project's older names
//! (kept as aliases):
//!
//! | token                                  | alias                            | authorization outcome                   |
//! |----------------------------------------|----------------------------------|-----------------------------------------|
//! | `tok_visa`, `tok_mastercard`, `tok_amex` | `tok_success`                  | authorized                              |
//! | `tok_chargeDeclined`                   |                                  | declined, reason `card declined`        |
//! | `tok_chargeDeclinedInsufficientFunds`  | `tok_decline_insufficient_funds` | declined, reason `insufficient funds`   |
//! | `tok_chargeDeclinedExpiredCard`        | `tok_decline_expired`            | declined, reason `card expired`         |
//! | `tok_chargeCustomerFail`               |                                  | authorized; later charges with its saved method declined, `card declined` |
//! | `tok_timeout`                          |                                  | never answers (the router's timeout cuts it off) |
//! | anything else                          |                                  | declined, naming the accepted tokens    |
//!
//! The tokens work for every method (card, PayPal, wallet).
//!
//! # Saved payment methods
//! Every authorization made with a token saves the method: [`Authorization::payment_method`]
//! is its id (`pm_…`). A charge whose token is that id is a charge without the customer present
//! (fees found at return); it behaves as the token behind it, except for
//! `tok_chargeCustomerFail`, whose saved card declines such charges. An id the gateway never
//! issued is declined, `unknown payment method`.
//!
//! # Switches
//! - [`SandboxGateway::set_available`]: `false` makes every call fail at once with
//!   `Unavailable` (an outage; nothing is processed).
//! - [`SandboxGateway::set_response_delay`]: every answer comes after this delay (a slow
//!   provider; past the router's timeout it counts as a timeout, and nothing is processed).
//!
//! # Like a real provider
//! Every call honours its idempotency key: the same key returns the first outcome (a decline
//! too) without charging or refunding again; the same key with another amount is declined.
//! Captures need a known authorization for the full amount; refunds need a captured charge and
//! never exceed it. [`SandboxGateway::charges`] and [`SandboxGateway::charge_count`] show what
//! was charged, so tests can prove a payment was charged once. [`PaymentGateway::lookup`]
//! answers what became of an authorization's idempotency key.
//!
//! # Books
//! [`SandboxGateway::new`] keeps its books in memory; [`SandboxGateway::durable`] (what the
//! binary runs) keeps them in PostgreSQL, so after a crash or restart the sandbox still knows
//! its charges and its answers, like a real provider.

mod books;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use domain::Money;
use domain::payment::PaymentMethodKind;
use sqlx::PgPool;
use uuid::Uuid;

use self::books::{Books, Outcome};
use super::gateway::{
    Authorization, CaptureRequest, ChargeRequest, GatewayError, GatewayFuture, PaymentGateway,
    Recorded, RefundReceipt, RefundRequest,
};
use super::router::GatewayRouter;

/// Authorizes (alias of `tok_visa`).
pub const TOKEN_SUCCESS: &str = "tok_success";
/// Authorizes.
pub const TOKEN_VISA: &str = "tok_visa";
/// Declines with [`DECLINE_INSUFFICIENT_FUNDS`].
pub const TOKEN_DECLINE_INSUFFICIENT_FUNDS: &str = "tok_decline_insufficient_funds";
/// Declines with [`DECLINE_EXPIRED`].
pub const TOKEN_DECLINE_EXPIRED: &str = "tok_decline_expired";
/// Never answers.
pub const TOKEN_TIMEOUT: &str = "tok_timeout";

pub const DECLINE_GENERIC: &str = "card declined";
pub const DECLINE_INSUFFICIENT_FUNDS: &str = "insufficient funds";
pub const DECLINE_EXPIRED: &str = "card expired";
pub const DECLINE_UNKNOWN_TOKEN: &str = "unknown test token";
pub const DECLINE_UNKNOWN_METHOD: &str = "unknown payment method";
/// Authorizes, and saves a card whose later charges (without the customer) are declined.
pub const TOKEN_CHARGE_CUSTOMER_FAIL: &str = "tok_chargeCustomerFail";

/// How the sandbox's saved payment method ids begin.
const METHOD_PREFIX: &str = "pm_";

fn charge_reference() -> String {
    format!("ch_{}", Uuid::new_v4().simple())
}

/// What the sandbox does with a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    Authorize,
    /// Authorizes with the customer present; declines later charges with the saved method.
    AuthorizeOnce,
    Decline(&'static str),
    Hang,
}

/// Every accepted test token, in the order an error lists them.
const TEST_TOKENS: &[(&str, Behaviour)] = &[
    ("tok_visa", Behaviour::Authorize),
    ("tok_mastercard", Behaviour::Authorize),
    ("tok_amex", Behaviour::Authorize),
    ("tok_chargeDeclined", Behaviour::Decline(DECLINE_GENERIC)),
    (
        "tok_chargeDeclinedInsufficientFunds",
        Behaviour::Decline(DECLINE_INSUFFICIENT_FUNDS),
    ),
    (
        "tok_chargeDeclinedExpiredCard",
        Behaviour::Decline(DECLINE_EXPIRED),
    ),
    (TOKEN_CHARGE_CUSTOMER_FAIL, Behaviour::AuthorizeOnce),
    (TOKEN_TIMEOUT, Behaviour::Hang),
    (TOKEN_SUCCESS, Behaviour::Authorize),
    (
        TOKEN_DECLINE_INSUFFICIENT_FUNDS,
        Behaviour::Decline(DECLINE_INSUFFICIENT_FUNDS),
    ),
    (TOKEN_DECLINE_EXPIRED, Behaviour::Decline(DECLINE_EXPIRED)),
];

fn behaviour(token: &str) -> Option<Behaviour> {
    TEST_TOKENS
        .iter()
        .find(|(name, _)| *name == token)
        .map(|(_, b)| *b)
}

/// The accepted test tokens, for error messages and docs.
pub fn test_tokens() -> Vec<&'static str> {
    TEST_TOKENS.iter().map(|(name, _)| *name).collect()
}

fn unknown_token() -> String {
    format!(
        "{DECLINE_UNKNOWN_TOKEN}; the sandbox accepts {}",
        test_tokens().join(", ")
    )
}

/// One charge the sandbox made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxCharge {
    pub reference: String,
    pub idempotency_key: String,
    pub amount: Money,
    pub captured: bool,
    pub refunded: Money,
}

/// A sandbox provider for some payment methods.
pub struct SandboxGateway {
    name: String,
    methods: Vec<PaymentMethodKind>,
    available: AtomicBool,
    delay_ms: AtomicU64,
    authorize_calls: AtomicUsize,
    refund_calls: AtomicUsize,
    books: Books,
}

impl SandboxGateway {
    /// A sandbox whose books live in memory: gone with the process.
    pub fn new(name: impl Into<String>, methods: &[PaymentMethodKind]) -> Self {
        Self::with_books(name.into(), methods, Books::memory())
    }

    /// A sandbox whose books live in the database (`sandbox_*` tables): it remembers its
    /// charges and its answers per idempotency key across restarts, as a real provider does.
    pub fn durable(name: impl Into<String>, methods: &[PaymentMethodKind], pool: PgPool) -> Self {
        let name = name.into();
        let books = Books::durable(pool, &name);
        Self::with_books(name, methods, books)
    }

    fn with_books(name: String, methods: &[PaymentMethodKind], books: Books) -> Self {
        Self {
            name,
            methods: methods.to_vec(),
            available: AtomicBool::new(true),
            delay_ms: AtomicU64::new(0),
            authorize_calls: AtomicUsize::new(0),
            refund_calls: AtomicUsize::new(0),
            books,
        }
    }

    /// The outage switch: an unavailable gateway refuses every call at once.
    pub fn set_available(&self, available: bool) {
        self.available.store(available, Ordering::SeqCst);
    }

    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::SeqCst)
    }

    /// Answer every call only after `delay` (zero by default).
    pub fn set_response_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Every charge made so far, in order (empty if the books cannot be read).
    pub async fn charges(&self) -> Vec<SandboxCharge> {
        self.books.charges().await.unwrap_or_default()
    }

    /// How many charges were made (successful authorizations; replays not counted).
    pub async fn charge_count(&self) -> usize {
        self.charges().await.len()
    }

    /// How many authorization requests the gateway took in: replays included; refused by the
    /// outage switch, or abandoned by the caller during the response delay, not.
    pub fn authorize_calls(&self) -> usize {
        self.authorize_calls.load(Ordering::SeqCst)
    }

    /// How many refund requests the gateway took in (replays included; refused by the outage
    /// switch or abandoned during the response delay, not).
    pub fn refund_calls(&self) -> usize {
        self.refund_calls.load(Ordering::SeqCst)
    }

    /// How many refunds were paid out (replays not counted).
    pub async fn refund_count(&self) -> usize {
        self.books.refund_count().await.unwrap_or_default()
    }

    /// The provider's front door: an outage refuses at once, a slow provider answers late.
    async fn answer(&self) -> Result<(), GatewayError> {
        if !self.is_available() {
            return Err(GatewayError::Unavailable);
        }
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        Ok(())
    }
}

impl PaymentGateway for SandboxGateway {
    fn name(&self) -> &str {
        &self.name
    }

    fn supports(&self, method: PaymentMethodKind) -> bool {
        self.methods.contains(&method)
    }

    fn authorize<'a>(&'a self, request: &'a ChargeRequest) -> GatewayFuture<'a, Authorization> {
        Box::pin(async move {
            self.answer().await?;
            self.authorize_calls.fetch_add(1, Ordering::SeqCst);
            if !self.supports(request.method) {
                return Err(GatewayError::Declined(format!(
                    "{} is not accepted here",
                    request.method
                )));
            }
            let given = request.token.expose();
            // A saved method (a charge without the customer) behaves as the token behind it,
            // except that a card saved from `tok_chargeCustomerFail` declines such charges.
            let (token, method) = if given.starts_with(METHOD_PREFIX) {
                match self.books.saved_method(given).await? {
                    Some(token) => (token.clone(), (given.to_owned(), token)),
                    None => (String::new(), (given.to_owned(), String::new())),
                }
            } else {
                let id = format!("{METHOD_PREFIX}{}", Uuid::new_v4().simple());
                (given.to_owned(), (id, given.to_owned()))
            };
            let off_session = given.starts_with(METHOD_PREFIX);
            let decided = match behaviour(&token) {
                _ if off_session && token.is_empty() => {
                    Outcome::Declined(DECLINE_UNKNOWN_METHOD.into())
                }
                Some(Behaviour::Authorize) => Outcome::Done(charge_reference()),
                Some(Behaviour::AuthorizeOnce) if off_session => {
                    Outcome::Declined(DECLINE_GENERIC.into())
                }
                Some(Behaviour::AuthorizeOnce) => Outcome::Done(charge_reference()),
                Some(Behaviour::Decline(reason)) => Outcome::Declined(reason.into()),
                Some(Behaviour::Hang) => std::future::pending().await,
                None => Outcome::Declined(unknown_token()),
            };
            let (reference, payment_method) = self
                .books
                .authorize(
                    &request.idempotency_key,
                    request.amount,
                    decided,
                    Some(method),
                )
                .await?;
            Ok(Authorization {
                reference,
                payment_method,
            })
        })
    }

    fn lookup<'a>(&'a self, idempotency_key: &'a str) -> GatewayFuture<'a, Recorded> {
        Box::pin(async move {
            self.answer().await?;
            Ok(match self.books.lookup(idempotency_key).await? {
                None => Recorded::Unknown,
                Some((_, Outcome::Done(reference), payment_method)) => {
                    Recorded::Authorized(Authorization {
                        reference,
                        payment_method,
                    })
                }
                Some((_, Outcome::Declined(reason), _)) => Recorded::Declined(reason),
            })
        })
    }

    fn capture<'a>(&'a self, request: &'a CaptureRequest) -> GatewayFuture<'a, ()> {
        Box::pin(async move {
            self.answer().await?;
            self.books.capture(&request.reference, request.amount).await
        })
    }

    fn refund<'a>(&'a self, request: &'a RefundRequest) -> GatewayFuture<'a, RefundReceipt> {
        Box::pin(async move {
            self.answer().await?;
            self.refund_calls.fetch_add(1, Ordering::SeqCst);
            let reference = self
                .books
                .refund(&request.idempotency_key, &request.reference, request.amount)
                .await?;
            Ok(RefundReceipt { reference })
        })
    }
}

/// The built-in gateways, with handles for their switches.
#[derive(Clone)]
pub struct SandboxGateways {
    /// `sandbox-card`: primary for cards.
    pub card: Arc<SandboxGateway>,
    /// `sandbox-card-backup`: the cards' fallback.
    pub card_backup: Arc<SandboxGateway>,
    /// `sandbox-paypal`.
    pub paypal: Arc<SandboxGateway>,
    /// `sandbox-wallet`.
    pub wallet: Arc<SandboxGateway>,
}

impl Default for SandboxGateways {
    fn default() -> Self {
        Self::new()
    }
}

impl SandboxGateways {
    /// The four gateways with their books in memory.
    pub fn new() -> Self {
        Self::build(|name, method| SandboxGateway::new(name, &[method]))
    }

    /// The four gateways with their books in the database: what `serve` and `worker` run, so a
    /// payment interrupted by a crash can be finished by asking the gateway.
    pub fn durable(pool: &PgPool) -> Self {
        Self::build(|name, method| SandboxGateway::durable(name, &[method], pool.clone()))
    }

    fn build(gateway: impl Fn(&str, PaymentMethodKind) -> SandboxGateway) -> Self {
        Self {
            card: Arc::new(gateway("sandbox-card", PaymentMethodKind::Card)),
            card_backup: Arc::new(gateway("sandbox-card-backup", PaymentMethodKind::Card)),
            paypal: Arc::new(gateway("sandbox-paypal", PaymentMethodKind::Paypal)),
            wallet: Arc::new(gateway("sandbox-wallet", PaymentMethodKind::Wallet)),
        }
    }

    /// Cards: `sandbox-card` then `sandbox-card-backup`; PayPal and wallet: one gateway each.
    pub fn router(&self, attempt_timeout: Duration) -> GatewayRouter {
        GatewayRouter::new(attempt_timeout)
            .route(
                PaymentMethodKind::Card,
                [
                    self.card.clone() as Arc<dyn PaymentGateway>,
                    self.card_backup.clone(),
                ],
            )
            .route(
                PaymentMethodKind::Paypal,
                [self.paypal.clone() as Arc<dyn PaymentGateway>],
            )
            .route(
                PaymentMethodKind::Wallet,
                [self.wallet.clone() as Arc<dyn PaymentGateway>],
            )
    }
}

#[cfg(test)]
mod tests {
    use domain::Currency;

    use eventstore::testing::TestDatabase;

    use super::*;
    use crate::payments::PaymentToken;

    fn usd(minor: i64) -> Money {
        Money::new(minor, Currency::USD)
    }

    fn charge(token: &str, key: &str, minor: i64) -> ChargeRequest {
        ChargeRequest {
            payment_id: Uuid::nil(),
            amount: usd(minor),
            method: PaymentMethodKind::Card,
            token: PaymentToken::new(token),
            idempotency_key: key.into(),
        }
    }

    /// The same card gateway with its books in memory, and in a database of its own (the
    /// database is kept alive alongside).
    async fn cards() -> Vec<(SandboxGateway, Option<TestDatabase>)> {
        let db = TestDatabase::create().await;
        let durable = SandboxGateway::durable(
            "card",
            &[PaymentMethodKind::Card],
            db.store().pool().clone(),
        );
        vec![
            (
                SandboxGateway::new("card", &[PaymentMethodKind::Card]),
                None,
            ),
            (durable, Some(db)),
        ]
    }

    #[tokio::test]
    async fn documented_tokens_behave_as_documented() {
        for (gateway, _db) in cards().await {
            for token in ["tok_visa", "tok_mastercard", "tok_amex", TOKEN_SUCCESS] {
                assert!(
                    gateway.authorize(&charge(token, token, 500)).await.is_ok(),
                    "{token}"
                );
            }
            let unknown = "unknown test token; the sandbox accepts tok_visa, tok_mastercard, tok_amex, \
                 tok_chargeDeclined, tok_chargeDeclinedInsufficientFunds, \
                 tok_chargeDeclinedExpiredCard, tok_chargeCustomerFail, tok_timeout, tok_success, \
                 tok_decline_insufficient_funds, tok_decline_expired";
            for (token, reason) in [
                ("tok_chargeDeclined", DECLINE_GENERIC),
                (
                    "tok_chargeDeclinedInsufficientFunds",
                    DECLINE_INSUFFICIENT_FUNDS,
                ),
                ("tok_chargeDeclinedExpiredCard", DECLINE_EXPIRED),
                (TOKEN_DECLINE_INSUFFICIENT_FUNDS, DECLINE_INSUFFICIENT_FUNDS),
                (TOKEN_DECLINE_EXPIRED, DECLINE_EXPIRED),
                ("4242424242424242", unknown),
            ] {
                assert_eq!(
                    gateway.authorize(&charge(token, token, 500)).await,
                    Err(GatewayError::Declined(reason.into()))
                );
            }
            let hung = tokio::time::timeout(
                Duration::from_millis(50),
                gateway.authorize(&charge(TOKEN_TIMEOUT, "k2", 500)),
            )
            .await;
            assert!(hung.is_err(), "tok_timeout never answers");
            assert_eq!(
                gateway.charge_count().await,
                4,
                "one charge per authorizing token"
            );
            assert_eq!(gateway.charges().await[0].amount, usd(500));
        }
    }

    #[tokio::test]
    async fn one_idempotency_key_charges_once() {
        for (gateway, _db) in cards().await {
            let first = gateway.authorize(&charge(TOKEN_SUCCESS, "k", 500)).await;
            let again = gateway.authorize(&charge(TOKEN_SUCCESS, "k", 500)).await;
            assert_eq!(first, again);
            assert_eq!(gateway.charge_count().await, 1);
            assert_eq!(
                gateway.authorize(&charge(TOKEN_SUCCESS, "k", 501)).await,
                Err(GatewayError::Declined(
                    "idempotency key reused with another amount".into()
                ))
            );
            // A decline is replayed too, even if the token changed.
            let declined = gateway
                .authorize(&charge(TOKEN_DECLINE_EXPIRED, "d", 500))
                .await;
            assert_eq!(
                gateway.authorize(&charge(TOKEN_SUCCESS, "d", 500)).await,
                declined
            );
            assert_eq!(gateway.charge_count().await, 1);
        }
    }

    #[tokio::test]
    async fn an_outage_refuses_everything_and_processes_nothing() {
        for (gateway, _db) in cards().await {
            gateway.set_available(false);
            assert_eq!(
                gateway.authorize(&charge(TOKEN_SUCCESS, "k", 500)).await,
                Err(GatewayError::Unavailable)
            );
            assert_eq!(
                (gateway.charge_count().await, gateway.authorize_calls()),
                (0, 0)
            );
            gateway.set_available(true);
            assert!(
                gateway
                    .authorize(&charge(TOKEN_SUCCESS, "k", 500))
                    .await
                    .is_ok()
            );
        }
    }

    #[tokio::test]
    async fn refunds_need_a_capture_and_never_exceed_it() {
        for (gateway, _db) in cards().await {
            let auth = gateway
                .authorize(&charge(TOKEN_SUCCESS, "k", 1_000))
                .await
                .unwrap();
            let refund = |key: &str, minor| RefundRequest {
                reference: auth.reference.clone(),
                amount: usd(minor),
                idempotency_key: key.into(),
            };
            assert_eq!(
                gateway.refund(&refund("r0", 100)).await,
                Err(GatewayError::Declined("charge not captured".into()))
            );
            let capture = CaptureRequest {
                reference: auth.reference.clone(),
                amount: usd(1_000),
                idempotency_key: "c".into(),
            };
            gateway.capture(&capture).await.unwrap();
            gateway.capture(&capture).await.unwrap();
            let first = gateway.refund(&refund("r1", 600)).await.unwrap();
            assert_eq!(gateway.refund(&refund("r1", 600)).await, Ok(first));
            assert_eq!(
                gateway.refund(&refund("r2", 401)).await,
                Err(GatewayError::Declined(
                    "refund exceeds the captured amount".into()
                ))
            );
            gateway.refund(&refund("r3", 400)).await.unwrap();
            assert_eq!(gateway.refund_count().await, 2);
            assert_eq!(gateway.charges().await[0].refunded, usd(1_000));
        }
    }

    #[tokio::test]
    async fn durable_books_outlive_the_gateway_and_answer_lookups() {
        let db = TestDatabase::create().await;
        let pool = db.store().pool().clone();
        let open = || SandboxGateway::durable("card", &[PaymentMethodKind::Card], pool.clone());
        let before = open();
        // Racing requests with one key charge once and all get the same answer.
        let request = charge(TOKEN_SUCCESS, "pay-1", 1_000);
        let (a, b, c) = tokio::join!(
            before.authorize(&request),
            before.authorize(&request),
            before.authorize(&request),
        );
        let auth = a.unwrap();
        assert_eq!((b.unwrap(), c.unwrap()), (auth.clone(), auth.clone()));
        before
            .authorize(&charge(TOKEN_DECLINE_EXPIRED, "pay-2", 500))
            .await
            .unwrap_err();
        drop(before);

        // A new process: the charge, the decline and the capture state are all still known.
        let after = open();
        assert_eq!(
            after.lookup("pay-1").await,
            Ok(Recorded::Authorized(auth.clone()))
        );
        assert_eq!(
            after.lookup("pay-2").await,
            Ok(Recorded::Declined(DECLINE_EXPIRED.into()))
        );
        assert_eq!(after.lookup("pay-3").await, Ok(Recorded::Unknown));
        after
            .capture(&CaptureRequest {
                reference: auth.reference.clone(),
                amount: usd(1_000),
                idempotency_key: "c".into(),
            })
            .await
            .unwrap();
        let refund = RefundRequest {
            reference: auth.reference.clone(),
            amount: usd(400),
            idempotency_key: "r1".into(),
        };
        let receipt = after.refund(&refund).await.unwrap();
        assert_eq!(open().refund(&refund).await, Ok(receipt));
        assert_eq!(
            open().charges().await,
            vec![SandboxCharge {
                reference: auth.reference,
                idempotency_key: "pay-1".into(),
                amount: usd(1_000),
                captured: true,
                refunded: usd(400),
            }]
        );
        assert_eq!(open().refund_count().await, 1);
        // Gateways keep separate books.
        let other = SandboxGateway::durable("other", &[PaymentMethodKind::Card], pool.clone());
        assert_eq!(other.lookup("pay-1").await, Ok(Recorded::Unknown));
        // An outage answers no lookup.
        after.set_available(false);
        assert_eq!(after.lookup("pay-1").await, Err(GatewayError::Unavailable));
    }
}
