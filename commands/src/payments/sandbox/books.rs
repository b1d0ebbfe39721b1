//! The sandbox's books: what it authorized, captured and refunded, per idempotency key.
//!
//! Kept in memory (unit tests) or in PostgreSQL (`sandbox_authorizations`, `sandbox_refunds`),
//! where they outlive the process like a real provider's books do: a payment interrupted by a
//! crash can ask afterwards what happened to its idempotency key, and refunds of charges made
//! before a restart find them. Both keep the same rules; the first outcome stored for a key is
//! the one every repeat gets, even when two requests race.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use domain::{Currency, Money};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::SandboxCharge;
use crate::payments::gateway::GatewayError;

/// The first outcome of a request: a reference (charge or refund receipt) or a decline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Done(String),
    Declined(String),
}

impl Outcome {
    fn into_result(self) -> Result<String, GatewayError> {
        match self {
            Self::Done(reference) => Ok(reference),
            Self::Declined(reason) => Err(GatewayError::Declined(reason)),
        }
    }

    fn from_columns(reference: Option<String>, declined: Option<String>) -> Self {
        match (reference, declined) {
            (Some(reference), _) => Self::Done(reference),
            (None, reason) => Self::Declined(reason.unwrap_or_default()),
        }
    }

    fn split(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Self::Done(reference) => (Some(reference), None),
            Self::Declined(reason) => (None, Some(reason)),
        }
    }
}

fn declined<T>(reason: &str) -> Result<T, GatewayError> {
    Err(GatewayError::Declined(reason.into()))
}

const KEY_REUSED: &str = "idempotency key reused with another amount";

/// Check a refund against the charge it names; the receipt reference when it may be paid out.
fn decide_refund(charge: Option<&SandboxCharge>, amount: Money) -> Outcome {
    let Some(charge) = charge else {
        return Outcome::Declined("unknown charge".into());
    };
    if !charge.captured {
        return Outcome::Declined("charge not captured".into());
    }
    if amount.minor <= 0 || amount.currency != charge.amount.currency {
        return Outcome::Declined("invalid refund amount".into());
    }
    match charge.refunded.checked_add(amount) {
        Ok(total) if total.minor <= charge.amount.minor => {
            Outcome::Done(format!("re_{}", Uuid::new_v4().simple()))
        }
        _ => Outcome::Declined("refund exceeds the captured amount".into()),
    }
}

#[derive(Default)]
pub(super) struct Ledger {
    /// The first answer per authorization idempotency key, with the amount asked and the
    /// payment method saved or used.
    authorizations: HashMap<String, (Money, Outcome, Option<String>)>,
    /// Saved payment methods: id → the test token behind it.
    methods: HashMap<String, String>,
    charges: Vec<SandboxCharge>,
    /// The first answer per refund idempotency key.
    refunds: HashMap<String, (Money, Outcome)>,
}

/// One gateway's books.
pub(super) enum Books {
    Memory(Mutex<Ledger>),
    Durable { pool: PgPool, gateway: String },
}

/// A database error inside the sandbox is its outage: nothing was decided.
fn outage(e: sqlx::Error) -> GatewayError {
    tracing::warn!(error = %e, "sandbox gateway: its database failed");
    GatewayError::Unavailable
}

fn money(minor: i64, currency: &str) -> Result<Money, GatewayError> {
    Currency::parse(currency)
        .map(|c| Money::new(minor, c))
        .map_err(|_| GatewayError::Unavailable)
}

impl Books {
    pub(super) fn memory() -> Self {
        Self::Memory(Mutex::new(Ledger::default()))
    }

    pub(super) fn durable(pool: PgPool, gateway: &str) -> Self {
        Self::Durable {
            pool,
            gateway: gateway.to_owned(),
        }
    }

    fn ledger(mutex: &Mutex<Ledger>) -> MutexGuard<'_, Ledger> {
        // The ledger holds no invariant a panicking holder could break half-way.
        mutex.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Store `decided` for `key` unless an outcome is stored already; answer the stored one:
    /// the charge's reference and its payment method. A charge saves `method` (id, token).
    pub(super) async fn authorize(
        &self,
        key: &str,
        amount: Money,
        decided: Outcome,
        method: Option<(String, String)>,
    ) -> Result<(String, Option<String>), GatewayError> {
        let (stored_amount, outcome, saved) = match self {
            Self::Memory(mutex) => {
                let mut ledger = Self::ledger(mutex);
                if let Some(stored) = ledger.authorizations.get(key) {
                    stored.clone()
                } else {
                    let method = method.filter(|_| matches!(decided, Outcome::Done(_)));
                    if let Outcome::Done(reference) = &decided {
                        ledger.charges.push(SandboxCharge {
                            reference: reference.clone(),
                            idempotency_key: key.to_owned(),
                            amount,
                            captured: false,
                            refunded: Money::zero(amount.currency),
                        });
                    }
                    if let Some((id, token)) = &method {
                        ledger.methods.insert(id.clone(), token.clone());
                    }
                    let stored = (amount, decided, method.map(|(id, _)| id));
                    ledger.authorizations.insert(key.to_owned(), stored.clone());
                    stored
                }
            }
            Self::Durable { pool, gateway } => {
                let (reference, reason) = decided.split();
                let (method_id, token) = match (&decided, &method) {
                    (Outcome::Done(_), Some((id, token))) => {
                        (Some(id.as_str()), Some(token.as_str()))
                    }
                    _ => (None, None),
                };
                sqlx::query(
                    "INSERT INTO sandbox_authorizations (gateway, idempotency_key, amount_minor, \
                     currency, reference, declined, payment_method, token) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                )
                .bind(gateway)
                .bind(key)
                .bind(amount.minor)
                .bind(amount.currency.to_string())
                .bind(reference)
                .bind(reason)
                .bind(method_id)
                .bind(token)
                .execute(pool)
                .await
                .map_err(outage)?;
                let found = self.lookup(key).await?;
                found.ok_or(GatewayError::Unavailable)?
            }
        };
        if stored_amount != amount {
            return declined(KEY_REUSED);
        }
        outcome.into_result().map(|reference| (reference, saved))
    }

    /// The test token behind a saved payment method.
    pub(super) async fn saved_method(&self, id: &str) -> Result<Option<String>, GatewayError> {
        match self {
            Self::Memory(mutex) => Ok(Self::ledger(mutex).methods.get(id).cloned()),
            Self::Durable { pool, gateway } => sqlx::query_scalar(
                "SELECT token FROM sandbox_authorizations \
                 WHERE gateway = $1 AND payment_method = $2 AND token IS NOT NULL LIMIT 1",
            )
            .bind(gateway)
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(outage),
        }
    }

    /// The stored outcome of the authorization request with this key, with its amount and
    /// payment method.
    pub(super) async fn lookup(
        &self,
        key: &str,
    ) -> Result<Option<(Money, Outcome, Option<String>)>, GatewayError> {
        match self {
            Self::Memory(mutex) => Ok(Self::ledger(mutex).authorizations.get(key).cloned()),
            Self::Durable { pool, gateway } => {
                let row = sqlx::query(
                    "SELECT amount_minor, currency, reference, declined, payment_method \
                     FROM sandbox_authorizations WHERE gateway = $1 AND idempotency_key = $2",
                )
                .bind(gateway)
                .bind(key)
                .fetch_optional(pool)
                .await
                .map_err(outage)?;
                row.map(|row| {
                    let amount = money(
                        row.try_get("amount_minor").map_err(outage)?,
                        row.try_get("currency").map_err(outage)?,
                    )?;
                    let outcome = Outcome::from_columns(
                        row.try_get("reference").map_err(outage)?,
                        row.try_get("declined").map_err(outage)?,
                    );
                    Ok((
                        amount,
                        outcome,
                        row.try_get("payment_method").map_err(outage)?,
                    ))
                })
                .transpose()
            }
        }
    }

    /// Capture the charge `reference` in full (again: no change).
    pub(super) async fn capture(&self, reference: &str, amount: Money) -> Result<(), GatewayError> {
        let found = match self {
            Self::Memory(mutex) => {
                let mut ledger = Self::ledger(mutex);
                let charge = ledger.charges.iter_mut().find(|c| c.reference == reference);
                charge.map(|charge| {
                    if charge.amount == amount {
                        charge.captured = true;
                    }
                    charge.amount
                })
            }
            Self::Durable { pool, gateway } => {
                let row = sqlx::query(
                    "UPDATE sandbox_authorizations \
                     SET captured = captured OR (amount_minor = $3 AND currency = $4) \
                     WHERE gateway = $1 AND reference = $2 RETURNING amount_minor, currency",
                )
                .bind(gateway)
                .bind(reference)
                .bind(amount.minor)
                .bind(amount.currency.to_string())
                .fetch_optional(pool)
                .await
                .map_err(outage)?;
                match row {
                    Some(row) => Some(money(
                        row.try_get("amount_minor").map_err(outage)?,
                        row.try_get("currency").map_err(outage)?,
                    )?),
                    None => None,
                }
            }
        };
        match found {
            None => declined("unknown authorization"),
            Some(authorized) if authorized != amount => {
                declined("capture amount differs from the authorization")
            }
            Some(_) => Ok(()),
        }
    }

    /// Refund `amount` of the charge `reference` under the refund's own key.
    pub(super) async fn refund(
        &self,
        key: &str,
        reference: &str,
        amount: Money,
    ) -> Result<String, GatewayError> {
        let (stored_amount, outcome) = match self {
            Self::Memory(mutex) => {
                let mut ledger = Self::ledger(mutex);
                if let Some(stored) = ledger.refunds.get(key) {
                    stored.clone()
                } else {
                    let charge = ledger.charges.iter_mut().find(|c| c.reference == reference);
                    let outcome = decide_refund(charge.as_deref(), amount);
                    if let (Outcome::Done(_), Some(charge)) = (&outcome, charge) {
                        charge.refunded.minor += amount.minor;
                    }
                    ledger
                        .refunds
                        .insert(key.to_owned(), (amount, outcome.clone()));
                    (amount, outcome)
                }
            }
            Self::Durable { pool, gateway } => self
                .refund_durable(pool, gateway, key, reference, amount)
                .await
                .map_err(outage)?,
        };
        if stored_amount != amount {
            return declined(KEY_REUSED);
        }
        outcome.into_result()
    }

    /// One short transaction: the charge locked, the key checked under the lock, both written.
    async fn refund_durable(
        &self,
        pool: &PgPool,
        gateway: &str,
        key: &str,
        reference: &str,
        amount: Money,
    ) -> Result<(Money, Outcome), sqlx::Error> {
        let mut tx = pool.begin().await?;
        let charge = sqlx::query(
            "SELECT idempotency_key, amount_minor, currency, captured, refunded_minor \
             FROM sandbox_authorizations WHERE gateway = $1 AND reference = $2 FOR UPDATE",
        )
        .bind(gateway)
        .bind(reference)
        .fetch_optional(&mut *tx)
        .await?;
        let stored = sqlx::query(
            "SELECT amount_minor, currency, receipt, declined FROM sandbox_refunds \
             WHERE gateway = $1 AND idempotency_key = $2",
        )
        .bind(gateway)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = stored {
            tx.rollback().await?;
            let currency: String = row.try_get("currency")?;
            let amount = Money::new(
                row.try_get("amount_minor")?,
                Currency::parse(&currency).map_err(|e| sqlx::Error::Decode(e.into()))?,
            );
            return Ok((
                amount,
                Outcome::from_columns(row.try_get("receipt")?, row.try_get("declined")?),
            ));
        }
        let charge = match charge {
            Some(row) => {
                let currency: String = row.try_get("currency")?;
                let currency =
                    Currency::parse(&currency).map_err(|e| sqlx::Error::Decode(e.into()))?;
                Some(SandboxCharge {
                    reference: reference.to_owned(),
                    idempotency_key: row.try_get("idempotency_key")?,
                    amount: Money::new(row.try_get("amount_minor")?, currency),
                    captured: row.try_get("captured")?,
                    refunded: Money::new(row.try_get("refunded_minor")?, currency),
                })
            }
            None => None,
        };
        let outcome = decide_refund(charge.as_ref(), amount);
        if let Outcome::Done(_) = outcome {
            sqlx::query(
                "UPDATE sandbox_authorizations SET refunded_minor = refunded_minor + $3 \
                 WHERE gateway = $1 AND reference = $2",
            )
            .bind(gateway)
            .bind(reference)
            .bind(amount.minor)
            .execute(&mut *tx)
            .await?;
        }
        let (receipt, reason) = outcome.split();
        sqlx::query(
            "INSERT INTO sandbox_refunds \
             (gateway, idempotency_key, charge, amount_minor, currency, receipt, declined) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(gateway)
        .bind(key)
        .bind(reference)
        .bind(amount.minor)
        .bind(amount.currency.to_string())
        .bind(receipt)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((amount, outcome))
    }

    /// Every charge, oldest first.
    pub(super) async fn charges(&self) -> Result<Vec<SandboxCharge>, GatewayError> {
        match self {
            Self::Memory(mutex) => Ok(Self::ledger(mutex).charges.clone()),
            Self::Durable { pool, gateway } => {
                let rows = sqlx::query(
                    "SELECT reference, idempotency_key, amount_minor, currency, captured, \
                     refunded_minor FROM sandbox_authorizations \
                     WHERE gateway = $1 AND reference IS NOT NULL ORDER BY created_at, reference",
                )
                .bind(gateway)
                .fetch_all(pool)
                .await
                .map_err(outage)?;
                rows.iter()
                    .map(|row| {
                        let currency: String = row.try_get("currency").map_err(outage)?;
                        Ok(SandboxCharge {
                            reference: row.try_get("reference").map_err(outage)?,
                            idempotency_key: row.try_get("idempotency_key").map_err(outage)?,
                            amount: money(row.try_get("amount_minor").map_err(outage)?, &currency)?,
                            captured: row.try_get("captured").map_err(outage)?,
                            refunded: money(
                                row.try_get("refunded_minor").map_err(outage)?,
                                &currency,
                            )?,
                        })
                    })
                    .collect()
            }
        }
    }

    /// How many refunds were paid out.
    pub(super) async fn refund_count(&self) -> Result<usize, GatewayError> {
        match self {
            Self::Memory(mutex) => Ok(Self::ledger(mutex)
                .refunds
                .values()
                .filter(|(_, outcome)| matches!(outcome, Outcome::Done(_)))
                .count()),
            Self::Durable { pool, gateway } => {
                let count: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM sandbox_refunds WHERE gateway = $1 AND receipt IS NOT NULL",
                )
                .bind(gateway)
                .fetch_one(pool)
                .await
                .map_err(outage)?;
                Ok(usize::try_from(count).unwrap_or(usize::MAX))
            }
        }
    }
}
