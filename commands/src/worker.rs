//! The worker: runs due follow-up steps of the booking path until each is done.
//!
//! Steps are claimed with a short lease in an autocommit statement (never a long open
//! transaction, which would hold back the log's readers), run through the normal commands, and
//! marked done. Every step is idempotent: running one twice (after a crash between its effect
//! and its mark) changes nothing the second time.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use domain::booking::BookingError;
use sqlx::Row;
use uuid::Uuid;

use crate::booking::{BookingFlowError, BookingService};
use crate::checkout::Checkout;
use crate::context::CommandContext;

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub done: u32,
    pub failed: u32,
}

#[derive(Clone)]
pub struct Worker {
    bookings: BookingService,
    checkout: Option<Checkout>,
    lease: Duration,
    batch: i64,
}

enum Outcome {
    Done,
    Retry(String),
}

impl Worker {
    pub fn new(bookings: BookingService) -> Self {
        Self {
            bookings,
            checkout: None,
            lease: Duration::seconds(60),
            batch: 50,
        }
    }

    /// Also run the payment steps (confirm after capture, refund after cancellation).
    pub fn with_checkout(mut self, checkout: Checkout) -> Self {
        self.checkout = Some(checkout);
        self
    }

    /// Run every step due at `now` once.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<Pass, sqlx::Error> {
        let pool = self.bookings.store().pool().clone();
        let rows = sqlx::query(
            "UPDATE workflow_steps SET lease_until = $1 + $2 * interval '1 second', attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM workflow_steps \
                          WHERE done_at IS NULL AND due_at <= $1 AND (lease_until IS NULL OR lease_until < $1) \
                          ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING id, kind, booking_id, payload, attempts",
        )
        .bind(now)
        .bind(self.lease.num_seconds() as f64)
        .bind(self.batch)
        .fetch_all(&pool)
        .await?;
        let mut pass = Pass::default();
        for row in rows {
            let id: Uuid = row.try_get("id")?;
            let kind: String = row.try_get("kind")?;
            let booking_id: Uuid = row.try_get("booking_id")?;
            let attempts: i32 = row.try_get("attempts")?;
            let ctx = CommandContext::new("system:worker").caused_by(id);
            let payload: serde_json::Value = row.try_get("payload")?;
            let outcome = self.run_step(&kind, booking_id, &payload, &ctx, now).await;
            match outcome {
                Outcome::Done => {
                    sqlx::query(
                        "UPDATE workflow_steps SET done_at = $2, lease_until = NULL WHERE id = $1",
                    )
                    .bind(id)
                    .bind(now)
                    .execute(&pool)
                    .await?;
                    pass.done += 1;
                }
                Outcome::Retry(error) => {
                    tracing::warn!(step.id = %id, step.kind = %kind, attempts, error = %error, "step failed; will retry");
                    let backoff = Duration::seconds(
                        2i64.saturating_pow(attempts.clamp(1, 10) as u32).min(600),
                    );
                    sqlx::query("UPDATE workflow_steps SET last_error = $2, lease_until = NULL, due_at = $3 WHERE id = $1")
                        .bind(id)
                        .bind(&error)
                        .bind(now + backoff)
                        .execute(&pool)
                        .await?;
                    pass.failed += 1;
                }
            }
        }
        Ok(pass)
    }

    async fn run_step(
        &self,
        kind: &str,
        booking_id: Uuid,
        payload: &serde_json::Value,
        ctx: &CommandContext,
        now: DateTime<Utc>,
    ) -> Outcome {
        let payment_id = payload
            .get("payment_id")
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse::<Uuid>().ok());
        match (kind, &self.checkout, payment_id) {
            ("confirm_payment", Some(checkout), Some(payment_id)) => {
                return match checkout
                    .finish_payment(ctx, booking_id, payment_id, now)
                    .await
                {
                    Ok(()) => Outcome::Done,
                    Err(e) => Outcome::Retry(e.to_string()),
                };
            }
            ("refund", Some(checkout), Some(payment_id)) => {
                let amount = payload
                    .get("amount_minor")
                    .and_then(serde_json::Value::as_i64)
                    .zip(
                        payload
                            .get("currency")
                            .and_then(|c| serde_json::from_value(c.clone()).ok()),
                    );
                let Some((minor, currency)) = amount else {
                    return Outcome::Retry("refund step without an amount".into());
                };
                return match checkout
                    .refund_for_cancellation(ctx, payment_id, domain::Money::new(minor, currency))
                    .await
                {
                    Ok(()) => Outcome::Done,
                    Err(e) => Outcome::Retry(e.to_string()),
                };
            }
            _ => {}
        }
        match kind {
            "expire_hold" => match self.bookings.expire(ctx, booking_id, now).await {
                Ok(_) => Outcome::Done,
                // Confirmed, cancelled or already expired: nothing left to do.
                Err(BookingFlowError::Booking(BookingError::InvalidTransition { .. })) => {
                    Outcome::Done
                }
                Err(BookingFlowError::BookingNotFound) => Outcome::Done,
                Err(e) => Outcome::Retry(e.to_string()),
            },
            other => Outcome::Retry(format!("no handler for step kind {other:?} in this build")),
        }
    }

    /// Run passes every `interval` until `shutdown` resolves.
    pub async fn run(
        &self,
        interval: StdDuration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            match self.run_once(Utc::now()).await {
                Ok(pass) if pass.done + pass.failed > 0 => {
                    tracing::info!(done = pass.done, failed = pass.failed, "worker pass");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "worker pass failed"),
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}
