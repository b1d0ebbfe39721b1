//! What each projection reports: state, position and lag, in a table and as metrics.
//!
//! The active instance writes its state (`projection_status`) on changes only; position comes
//! from `projection_checkpoints`, and lag is computed when asked, from the events after the
//! checkpoint: how many, and how old the oldest of them is.

use std::time::Duration;

use chrono::{DateTime, Utc};
use eventstore::{Checkpoint, RecordedEvent};
use serde::Serialize;
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;

/// A projection's lifecycle state, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Has taken the lease and is reading its backlog.
    CatchingUp,
    /// Caught up with the log; applying new events as they come.
    Running,
    /// The target refuses the batch for now (broker down); retrying.
    Stalled,
    /// Stopped at an event it cannot apply; needs a fix (a new version, an upcaster, a
    /// rebuild), then `fleetledger projections resume` (a rebuild resumes it itself).
    Failed,
    /// Asked to carry on after a failure: the instance holding the lease starts again from the
    /// checkpoint within a second or so.
    Resuming,
    /// No instance holds the lease.
    Stopped,
    /// Rebuilding its checkpoint's state once before carrying on (a repair the schema
    /// migrations asked for; the old tables keep serving meanwhile).
    Repairing,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CatchingUp => "catching_up",
            Self::Running => "running",
            Self::Stalled => "stalled",
            Self::Failed => "failed",
            Self::Resuming => "resuming",
            Self::Stopped => "stopped",
            Self::Repairing => "repairing",
        }
    }
}

/// One row of the status table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProjectionStatus {
    pub name: String,
    pub transaction_id: u64,
    /// Global position of the last event applied.
    pub position: i64,
    /// Committed events after the checkpoint (at most [`LAG_COUNT_CAP`]).
    pub lag_events: i64,
    /// Age of the oldest unapplied event in milliseconds (0 when caught up).
    pub lag_ms: f64,
    pub state: String,
    pub owner: Option<String>,
    pub error: Option<String>,
    pub failed_position: Option<i64>,
    pub updated_at: DateTime<Utc>,
}

pub(crate) async fn set_state(
    pool: &PgPool,
    name: &str,
    state: State,
    owner: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_status (name, state, owner, updated_at) VALUES ($1, $2, $3, now()) \
         ON CONFLICT (name) DO UPDATE SET state = $2, owner = $3, error = NULL, \
           failed_transaction_id = NULL, failed_position = NULL, failed_event_id = NULL, \
           updated_at = now()",
    )
    .bind(name)
    .bind(state.as_str())
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(())
}

pub(crate) async fn set_state_with_error(
    pool: &PgPool,
    name: &str,
    state: State,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_status (name, state, error, updated_at) VALUES ($1, $2, $3, now()) \
         ON CONFLICT (name) DO UPDATE SET state = $2, error = $3, updated_at = now()",
    )
    .bind(name)
    .bind(state.as_str())
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

pub(crate) async fn set_failed(
    pool: &PgPool,
    name: &str,
    at: Checkpoint,
    event: Option<&RecordedEvent>,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_status (name, state, failed_transaction_id, failed_position, \
           failed_event_id, error, updated_at) \
         VALUES ($1, 'failed', $2, $3, $4, $5, now()) \
         ON CONFLICT (name) DO UPDATE SET state = 'failed', failed_transaction_id = $2, \
           failed_position = $3, failed_event_id = $4, error = $5, updated_at = now()",
    )
    .bind(name)
    .bind(eventstore::Xid8(at.transaction_id))
    .bind(at.global_position)
    .bind(event.map(|e| e.event_id))
    .bind(error)
    .execute(pool)
    .await?;
    metrics::gauge!("fleetledger_projection_failed", "projection" => name.to_owned()).set(1.0);
    Ok(())
}

/// `lag_events` is counted exactly up to this many, and saturates there: counting a backlog
/// of millions on every status call would cost more than it tells.
pub const LAG_COUNT_CAP: i64 = 100_000;

/// Every projection that has a checkpoint, with its lag, ordered by name.
/// Ask a failed projection to carry on from its checkpoint (after a fix, or once a rebuild
/// swapped in tables past the event it failed at): the running instance that holds its lease
/// takes it up without a restart. `false` when it had not failed.
pub async fn request_resume(pool: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE projection_status SET state = 'resuming', updated_at = now() \
         WHERE name = $1 AND state = 'failed'",
    )
    .bind(name)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Whether someone asked `name` to resume ([`request_resume`]).
pub(crate) async fn resume_requested(pool: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM projection_status WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?;
    Ok(state.as_deref() == Some("resuming"))
}

/// The state each of `names` last reported (`running`, `failed`...; `None`: never ran), by
/// name.
pub async fn states(
    pool: &PgPool,
    names: &[String],
) -> Result<Vec<(String, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT n.name, s.state FROM unnest($1::text[]) AS n(name) \
         LEFT JOIN projection_status s ON s.name = n.name ORDER BY n.name",
    )
    .bind(names)
    .fetch_all(pool)
    .await
}

/// The projections that have failed, by name.
pub async fn failed(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT name FROM projection_status WHERE state = 'failed' ORDER BY name")
        .fetch_all(pool)
        .await
}

/// Those of `names` whose checkpoint has not reached `target` yet (or that have none), by
/// name: what a read that must see a command's effect waits for.
pub async fn behind(
    pool: &PgPool,
    names: &[String],
    target: Checkpoint,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT n.name FROM unnest($1::text[]) AS n(name) \
         LEFT JOIN projection_checkpoints c ON c.name = n.name \
         WHERE c.name IS NULL \
            OR (c.transaction_id, c.global_position) < ($2, $3) \
         ORDER BY n.name",
    )
    .bind(names)
    .bind(eventstore::Xid8(target.transaction_id))
    .bind(target.global_position)
    .fetch_all(pool)
    .await
}

pub async fn list(pool: &PgPool) -> Result<Vec<ProjectionStatus>, sqlx::Error> {
    list_where(pool, None).await
}

/// [`list`], restricted to `names`.
pub async fn list_some(
    pool: &PgPool,
    names: &[String],
) -> Result<Vec<ProjectionStatus>, sqlx::Error> {
    list_where(pool, Some(names)).await
}

/// Lag is counted with two ordered range scans of the commit-order index (the rest of the
/// checkpoint's transaction, then the transactions after it), never with a row comparison,
/// which the planner turns into a scan of the whole log: a caught-up projection costs two
/// empty index probes however long the log is.
async fn list_where(
    pool: &PgPool,
    names: Option<&[String]>,
) -> Result<Vec<ProjectionStatus>, sqlx::Error> {
    // The capped counts make the planner expect large scans and compile the query (JIT, about
    // 100 ms) for what are two empty index probes when the projections are caught up.
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL jit = off").execute(&mut *tx).await?;
    let rows = sqlx::query(
        "SELECT c.name, c.transaction_id, c.global_position, \
           coalesce(s.state, 'stopped') AS state, s.owner, s.error, s.failed_position, \
           greatest(c.updated_at, coalesce(s.updated_at, c.updated_at)) AS updated_at, \
           least($1, (SELECT count(*) FROM ( \
             (SELECT 1 FROM events e WHERE e.transaction_id = c.transaction_id \
                AND e.global_position > c.global_position LIMIT $1) \
             UNION ALL \
             (SELECT 1 FROM events e WHERE e.transaction_id > c.transaction_id LIMIT $1) \
           ) behind)) AS lag_events, \
           coalesce((SELECT extract(epoch FROM (clock_timestamp() - min(next.recorded_at))) * 1000 \
             FROM ( \
               (SELECT e.recorded_at FROM events e WHERE e.transaction_id = c.transaction_id \
                  AND e.global_position > c.global_position ORDER BY e.global_position LIMIT 1) \
               UNION ALL \
               (SELECT e.recorded_at FROM events e WHERE e.transaction_id > c.transaction_id \
                  ORDER BY e.transaction_id, e.global_position LIMIT 1) \
             ) next), 0)::float8 AS lag_ms \
         FROM projection_checkpoints c LEFT JOIN projection_status s USING (name) \
         WHERE $2::text[] IS NULL OR c.name = ANY($2) \
         ORDER BY c.name",
    )
    .bind(LAG_COUNT_CAP)
    .bind(names)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    rows.into_iter()
        .map(|row| {
            let checkpoint = crate::runtime::checkpoint_of_columns(&row, 1, 2)?;
            Ok(ProjectionStatus {
                name: row.try_get(0)?,
                transaction_id: checkpoint.transaction_id,
                position: checkpoint.global_position,
                state: row.try_get("state")?,
                owner: row.try_get("owner")?,
                error: row.try_get("error")?,
                failed_position: row.try_get("failed_position")?,
                updated_at: row.try_get("updated_at")?,
                lag_events: row.try_get("lag_events")?,
                lag_ms: row.try_get::<f64, _>("lag_ms")?.max(0.0),
            })
        })
        .collect()
}

/// Export the position, lag and state of the projections called `names` (the ones this
/// process runs) as gauges until cancelled.
pub async fn report_metrics(
    pool: PgPool,
    names: Vec<String>,
    every: Duration,
    token: CancellationToken,
) {
    loop {
        match list_some(&pool, &names).await {
            Ok(statuses) => {
                for s in statuses {
                    let name = s.name.clone();
                    metrics::gauge!("fleetledger_projection_position", "projection" => name.clone())
                        .set(s.position as f64);
                    metrics::gauge!("fleetledger_projection_lag_events", "projection" => name.clone())
                        .set(s.lag_events as f64);
                    metrics::gauge!("fleetledger_projection_lag_ms", "projection" => name.clone())
                        .set(s.lag_ms);
                    metrics::gauge!("fleetledger_projection_failed", "projection" => name.clone())
                        .set(if s.state == "failed" { 1.0 } else { 0.0 });
                    metrics::gauge!("fleetledger_projection_running", "projection" => name)
                        .set(if s.state == "running" { 1.0 } else { 0.0 });
                }
            }
            Err(e) => tracing::debug!(error = %e, "projection status unavailable"),
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
