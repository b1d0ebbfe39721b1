//! The worker: runs due follow-up steps of the booking path until each is done.
//!
//! A step is claimed ([`crate::claims`]: a session advisory lock on the process's claim
//! session), one step at a time, and run through the normal commands, then marked done. No transaction stays open
//! while a step runs (which would hold back the log's readers), and no lease can lapse under
//! a live worker however slow a gateway is: the claim lasts exactly as long as the worker's
//! session. A worker that dies (SIGKILL, lost connection) loses its session and with it its
//! claim at once, so another worker takes the step over at its next pass, seconds later,
//! rather than after a lease runs out. Each step reads the clock when it runs. Every step is
//! idempotent: running one again (after a crash between its effect and its mark) changes
//! nothing the second time.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use domain::booking::BookingError;
use sqlx::Row;
use uuid::Uuid;

use crate::booking::{BookingFlowError, BookingService, SpareCars};
use crate::checkout::{Checkout, FeesCollected, Finished};
use crate::claims::Claims;
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
    /// Where displaced bookings look for another car; without it they wait for staff.
    spares: Option<std::sync::Arc<dyn SpareCars>>,
    batch: i64,
    claims: Claims,
}

enum Outcome {
    Done,
    Retry(String),
    /// Nothing to do before this time (not a failure).
    Later(DateTime<Utc>),
    /// Retrying cannot help (a provider's decision): wait for staff.
    Stuck(String),
}

/// A step tried this often without success waits for staff (the backoff doubles from 2 s to
/// 10 minutes: about 1 h 20 min of retries).
pub const MAX_ATTEMPTS: i32 = 15;

/// A step that stopped retrying and waits for staff.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct StuckStep {
    pub id: Uuid,
    pub kind: String,
    pub booking_id: Uuid,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub stuck_at: DateTime<Utc>,
}

/// The follow-up steps at a glance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepCounts {
    /// Due now or overdue.
    pub due: i64,
    /// Scheduled for later (holds that have not ended, retries backing off).
    pub waiting: i64,
    pub stuck: i64,
}

/// Steps that wait for staff, oldest first, after `after` (keyset: stuck_at, id).
pub async fn stuck_steps(
    pool: &sqlx::PgPool,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<StuckStep>, sqlx::Error> {
    let (at, id) = after.unzip();
    sqlx::query_as(
        "SELECT id, kind, booking_id, attempts, last_error, stuck_at FROM workflow_steps \
         WHERE done_at IS NULL AND stuck_at IS NOT NULL \
           AND ($1::timestamptz IS NULL OR (stuck_at, id) > ($1, $2)) \
         ORDER BY stuck_at, id LIMIT $3",
    )
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// How many steps are due, waiting and stuck (three counts over partial indexes).
pub async fn step_counts(
    pool: &sqlx::PgPool,
    now: DateTime<Utc>,
) -> Result<StepCounts, sqlx::Error> {
    let (due, waiting, stuck): (i64, i64, i64) = sqlx::query_as(
        "SELECT \
           (SELECT count(*) FROM workflow_steps \
              WHERE done_at IS NULL AND stuck_at IS NULL AND due_at <= $1), \
           (SELECT count(*) FROM workflow_steps \
              WHERE done_at IS NULL AND stuck_at IS NULL AND due_at > $1), \
           (SELECT count(*) FROM workflow_steps WHERE done_at IS NULL AND stuck_at IS NOT NULL)",
    )
    .bind(now)
    .fetch_one(pool)
    .await?;
    Ok(StepCounts {
        due,
        waiting,
        stuck,
    })
}

/// Staff retries a stuck step: due at once, its attempts counted afresh. `false` when no such
/// stuck step exists.
pub async fn retry_step(pool: &sqlx::PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE workflow_steps SET stuck_at = NULL, attempts = 0, due_at = now() \
         WHERE id = $1 AND done_at IS NULL AND stuck_at IS NOT NULL",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

impl Worker {
    pub fn new(bookings: BookingService) -> Self {
        let claims = Claims::new(bookings.store().pool().clone());
        Self {
            bookings,
            checkout: None,
            spares: None,
            batch: 50,
            claims,
        }
    }

    /// Also run the payment steps (finish a payment, refund after cancellation), sharing the
    /// checkout's claims so the worker never runs a step a request of this process is on.
    /// Let the `rehome` step move displaced bookings to the spare cars `spares` proposes.
    pub fn with_spare_cars(mut self, spares: std::sync::Arc<dyn SpareCars>) -> Self {
        self.spares = Some(spares);
        self
    }

    pub fn with_checkout(mut self, checkout: Checkout) -> Self {
        self.claims = checkout.claims().clone();
        self.checkout = Some(checkout);
        self
    }

    /// Run every step due at `now` that no other worker holds, once. Each step runs at the
    /// later of `now` and the clock when it starts.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<Pass, sqlx::Error> {
        let pool = self.bookings.store().pool().clone();
        let due: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM workflow_steps \
             WHERE done_at IS NULL AND stuck_at IS NULL AND due_at <= $1 \
             ORDER BY due_at LIMIT $2",
        )
        .bind(now)
        .bind(self.batch)
        .fetch_all(&pool)
        .await?;
        let mut pass = Pass::default();
        for id in due {
            let Some(claim) = self.claims.try_claim(id).await? else {
                continue; // Another worker, or a request, is on it.
            };
            let result = self.run_claimed(&pool, id, now, &mut pass).await;
            claim.release().await;
            result?;
        }
        Ok(pass)
    }

    /// Run one step this worker holds the claim of.
    async fn run_claimed(
        &self,
        pool: &sqlx::PgPool,
        id: Uuid,
        now: DateTime<Utc>,
        pass: &mut Pass,
    ) -> Result<(), sqlx::Error> {
        // Under the claim, see whether it is still to do (another worker may have finished
        // it between the listing and the claim) and count the attempt.
        let row = sqlx::query(
            "UPDATE workflow_steps SET attempts = attempts + 1 \
             WHERE id = $1 AND done_at IS NULL AND stuck_at IS NULL AND due_at <= $2 \
             RETURNING kind, booking_id, payload, attempts",
        )
        .bind(id)
        .bind(now)
        .fetch_optional(pool)
        .await?;
        let Some(row) = row else {
            return Ok(());
        };
        let kind: String = row.try_get("kind")?;
        let booking_id: Uuid = row.try_get("booking_id")?;
        let attempts: i32 = row.try_get("attempts")?;
        let payload: serde_json::Value = row.try_get("payload")?;
        let ctx = CommandContext::new("system:worker").caused_by(id);
        let started = now.max(Utc::now());
        let outcome = self
            .run_step(&kind, booking_id, &payload, &ctx, started)
            .await;
        let finished = now.max(Utc::now());
        match outcome {
            Outcome::Done => {
                sqlx::query(
                    "UPDATE workflow_steps SET done_at = $2, lease_until = NULL, last_error = NULL \
                     WHERE id = $1",
                )
                .bind(id)
                .bind(finished)
                .execute(pool)
                .await?;
                pass.done += 1;
            }
            Outcome::Later(at) => {
                sqlx::query(
                    "UPDATE workflow_steps SET last_error = NULL, lease_until = NULL, due_at = $2 \
                     WHERE id = $1",
                )
                .bind(id)
                .bind(at.max(finished))
                .execute(pool)
                .await?;
            }
            Outcome::Retry(error) if attempts >= MAX_ATTEMPTS => {
                self.stick(
                    pool,
                    id,
                    &kind,
                    &format!("{error} (after {attempts} attempts)"),
                    finished,
                )
                .await?;
                pass.failed += 1;
            }
            Outcome::Stuck(error) => {
                self.stick(pool, id, &kind, &error, finished).await?;
                pass.failed += 1;
            }
            Outcome::Retry(error) => {
                tracing::warn!(step.id = %id, step.kind = %kind, attempts, error = %error, "step failed; will retry");
                // 2 s after the first failure, doubling, at most 10 minutes.
                let backoff = eventstore::backoff::Backoff::new(
                    std::time::Duration::from_secs(2),
                    std::time::Duration::from_secs(600),
                )
                .delay(u32::try_from(attempts).unwrap_or(1));
                let backoff = Duration::from_std(backoff).unwrap_or(Duration::seconds(600));
                sqlx::query(
                    "UPDATE workflow_steps SET last_error = $2, lease_until = NULL, due_at = $3 \
                     WHERE id = $1",
                )
                .bind(id)
                .bind(&error)
                .bind(finished + backoff)
                .execute(pool)
                .await?;
                pass.failed += 1;
            }
        }
        Ok(())
    }

    /// Stop retrying a step: it waits for staff.
    async fn stick(
        &self,
        pool: &sqlx::PgPool,
        id: Uuid,
        kind: &str,
        error: &str,
        at: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        tracing::error!(step.id = %id, step.kind = %kind, error = %error,
            "step stopped retrying; it waits for staff (stuckSteps, fleetledger worker status)");
        sqlx::query(
            "UPDATE workflow_steps SET stuck_at = $2, last_error = $3, lease_until = NULL \
             WHERE id = $1",
        )
        .bind(id)
        .bind(at)
        .bind(error)
        .execute(pool)
        .await?;
        Ok(())
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
                    Ok(Finished::Done) => Outcome::Done,
                    Ok(Finished::WaitUntil(at)) => Outcome::Later(at),
                    Err(e) => Outcome::Retry(e.to_string()),
                };
            }
            ("settle_balance", Some(checkout), _) => {
                return match checkout.settle_balance(ctx, booking_id).await {
                    Err(e) => failed_or(Err(e)),
                    Ok(FeesCollected::Settled) => Outcome::Done,
                    Ok(FeesCollected::Declined { reason, charges }) => Outcome::Retry(format!(
                        "charge {charges} for the balance declined: {reason}"
                    )),
                    // The balance stays due on the booking; the step waits in staff's list.
                    Ok(FeesCollected::LeftToStaff { reason }) => {
                        Outcome::Stuck(format!("balance left for staff to collect: {reason}"))
                    }
                };
            }
            // A cancelled or no-show booking keeps its fee: the rest goes back, over all the
            // payments it holds (a rental extended before was charged more than once).
            ("refund", Some(checkout), _) => {
                return failed_or(
                    checkout
                        .settle_balance(ctx, booking_id)
                        .await
                        .map(|_| Outcome::Done),
                );
            }
            _ => {}
        }
        match kind {
            "rehome" => {
                let Some(spares) = &self.spares else {
                    return Outcome::Done;
                };
                match self
                    .bookings
                    .rehome(ctx, booking_id, spares.as_ref(), now)
                    .await
                {
                    Ok(Some(car)) => {
                        metrics::counter!("fleetledger_bookings_rehomed_total").increment(1);
                        tracing::info!(booking.id = %booking_id, car.id = %car, "displaced booking moved to a spare car");
                        Outcome::Done
                    }
                    Ok(None) => Outcome::Done,
                    Err(e) => Outcome::Retry(e.to_string()),
                }
            }
            "strand_check" => match self.bookings.displace_stranded(ctx, booking_id, now).await {
                Ok(displaced) => {
                    for booking in displaced {
                        metrics::counter!("fleetledger_bookings_displaced_total").increment(1);
                        tracing::warn!(booking.id = %booking, "booking stranded: its car is at another branch");
                    }
                    Outcome::Done
                }
                Err(e) => Outcome::Retry(e.to_string()),
            },
            "no_show" => match self.bookings.mark_no_show(ctx, booking_id, now).await {
                Ok(view) => {
                    if view.status() == Some(domain::booking::BookingStatus::NoShow) {
                        metrics::counter!("fleetledger_bookings_no_show_total").increment(1);
                    }
                    Outcome::Done
                }
                // Picked up, cancelled, or (modified) not due yet.
                Err(BookingFlowError::Booking(BookingError::InvalidTransition { .. })) => {
                    Outcome::Done
                }
                Err(BookingFlowError::Booking(BookingError::NoShowTooEarly(at))) => {
                    Outcome::Later(at)
                }
                Err(e) => Outcome::Retry(e.to_string()),
            },
            "overdue" => match self.bookings.mark_overdue(ctx, booking_id, now).await {
                Ok(view) => {
                    if view.state.overdue {
                        metrics::counter!("fleetledger_rentals_overdue_total").increment(1);
                        tracing::warn!(booking.id = %booking_id, "rental overdue: the car is not back");
                    }
                    Outcome::Done
                }
                // Returned already.
                Err(BookingFlowError::Booking(BookingError::InvalidTransition { .. })) => {
                    Outcome::Done
                }
                Err(BookingFlowError::Booking(BookingError::NotOverdueYet(at))) => {
                    Outcome::Later(at)
                }
                Err(e) => Outcome::Retry(e.to_string()),
            },
            "expire_hold" => match self.bookings.expire(ctx, booking_id, now).await {
                Ok(_) => Outcome::Done,
                // Confirmed, cancelled or already expired: nothing left to do.
                Err(BookingFlowError::Booking(BookingError::InvalidTransition { .. })) => {
                    Outcome::Done
                }
                Err(BookingFlowError::BookingNotFound) => Outcome::Done,
                Err(e) => Outcome::Retry(e.to_string()),
            },
            other => Outcome::Stuck(format!("no handler for step kind {other:?} in this build")),
        }
    }

    /// Run passes every `interval` until `shutdown` resolves.
    pub async fn run(
        &self,
        interval: StdDuration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let pool = self.bookings.store().pool().clone();
        for pass in 0u64.. {
            // The gauges every few passes: due, waiting and stuck steps.
            if pass % 15 == 0 {
                match step_counts(&pool, Utc::now()).await {
                    Ok(counts) => {
                        for (state, n) in [
                            ("due", counts.due),
                            ("waiting", counts.waiting),
                            ("stuck", counts.stuck),
                        ] {
                            metrics::gauge!("fleetledger_workflow_steps", "state" => state)
                                .set(n as f64);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "counting the steps failed"),
                }
            }
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

/// A step's result: a refund the gateway declined waits for staff (asking again would only
/// record the same decision again); other failures are retried.
fn failed_or(result: Result<Outcome, crate::checkout::CheckoutError>) -> Outcome {
    use crate::checkout::CheckoutError;
    use crate::payments::PaymentServiceError;
    match result {
        Ok(outcome) => outcome,
        Err(CheckoutError::Payment(e @ PaymentServiceError::RefundDeclined { .. })) => {
            Outcome::Stuck(e.to_string())
        }
        Err(e) => Outcome::Retry(e.to_string()),
    }
}
