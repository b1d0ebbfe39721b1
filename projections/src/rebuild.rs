//! Rebuild a projection from position zero into fresh tables, compare, and swap them in.
//!
//! The rebuilt tables are created in a schema of their own (`rebuild_<name>`) as copies of the
//! live tables' definitions, and filled by the projection's own handler with `search_path`
//! pointing there, while the live tables keep serving. Then, per projection: its live projector
//! is paused between two batches by a session advisory lock (`fleetledger.swap:<name>`, which
//! every batch takes shared before it writes), the rebuilt tables are brought to exactly the
//! live position in batches of their own, compared with the live ones if asked, and swapped in
//! by one short transaction of renames and the checkpoint; the live projector then carries on
//! from the same checkpoint with the new tables. No transaction id is held while catching up or
//! comparing (a session lock takes none), so the no-skip readers of everything else (the other
//! projections, the relay, subscriptions, read-your-writes) keep seeing new events: the first
//! version did all of it inside the transaction that locked the checkpoint row, and stalled
//! the whole system for as long as the comparison took. With `verify`, the rebuild is bounded
//! by the live checkpoint throughout so that the comparison is exact.

use std::sync::Arc;

use eventstore::{Checkpoint, EventStore, EventStoreError, RecordedEvent};
use futures::future::BoxFuture;
use serde::Serialize;
use sqlx::{Connection, PgConnection, Row};

use crate::runtime::{
    ApplyError, Projection, apply_events, load_checkpoint, locate_failure, store_checkpoint,
};

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event store: {0}")]
    Store(#[from] EventStoreError),
    #[error("event at position {position} ({event_type}) cannot be applied: {reason}")]
    Apply {
        position: i64,
        event_type: String,
        reason: String,
    },
    #[error("another rebuild of {0} is running")]
    Busy(String),
}

#[derive(Clone, Debug)]
pub struct RebuildOptions {
    /// Events applied per transaction while rebuilding.
    pub batch_size: i64,
    /// Compare the rebuilt tables with the live ones before swapping.
    pub verify: bool,
    /// Swap the rebuilt tables in (false: build, compare, and throw away).
    pub swap: bool,
    /// Called with the projection's name while its live projector is paused and the rebuilt
    /// tables are caught up (and compared), just before the swap.
    pub while_paused: Option<WhilePaused>,
}

/// A callback run while a projection's live projector is paused for its swap.
#[derive(Clone)]
pub struct WhilePaused(pub Arc<dyn Fn(String) -> BoxFuture<'static, ()> + Send + Sync>);

impl std::fmt::Debug for WhilePaused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WhilePaused(..)")
    }
}

impl Default for RebuildOptions {
    fn default() -> Self {
        Self {
            batch_size: 5_000,
            verify: false,
            swap: true,
            while_paused: None,
        }
    }
}

/// The advisory lock key that pauses `name`'s live projector between batches: SQL over `$1`.
pub(crate) const SWAP_LOCK: &str = "hashtextextended('fleetledger.swap:' || $1, 0)";

/// Rows that differ between the rebuilt and the live version of one table.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TableDiff {
    pub table: String,
    /// Rows the rebuild produced that the live table lacks (count, and the first few as JSON).
    pub only_rebuilt: i64,
    pub only_rebuilt_sample: Vec<serde_json::Value>,
    /// Rows of the live table the rebuild did not produce.
    pub only_live: i64,
    pub only_live_sample: Vec<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RebuildReport {
    pub projection: String,
    pub events: u64,
    pub checkpoint: Checkpoint,
    /// Filled when verifying: one entry per table that differs (empty: identical).
    pub differences: Vec<TableDiff>,
    pub verified: bool,
    pub swapped: bool,
}

const SAMPLE: i64 = 10;

/// Rebuild `projection`; `progress(read, total)` is called after every batch.
pub async fn rebuild(
    store: &EventStore,
    projection: &dyn Projection,
    options: &RebuildOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<RebuildReport, RebuildError> {
    let mut reports = rebuild_many(store, &[projection], options, progress).await?;
    reports
        .pop()
        .ok_or_else(|| RebuildError::Busy(projection.name().to_owned()))
}

/// Rebuild several projections from one read of the log: each batch is read once (the next
/// one is fetched while the current one is applied) and applied to every projection's fresh
/// tables concurrently, each on its own connection; then each is swapped in on its own.
pub async fn rebuild_many(
    store: &EventStore,
    projections: &[&dyn Projection],
    options: &RebuildOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Vec<RebuildReport>, RebuildError> {
    let pool = store.pool();
    // One rebuild per projection at a time, held for the whole run on a connection of its own.
    let mut guard = PgConnection::connect_with(pool.connect_options().as_ref()).await?;
    for projection in projections {
        let free: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_lock(hashtextextended('fleetledger.rebuild:' || $1, 0))",
        )
        .bind(projection.name())
        .fetch_one(&mut guard)
        .await?;
        if !free {
            let _ = guard.close().await;
            return Err(RebuildError::Busy(projection.name().to_owned()));
        }
    }
    let schemas: Vec<String> = projections
        .iter()
        .map(|p| format!("rebuild_{}", p.name()))
        .collect();
    let result = rebuild_locked(store, projections, &schemas, options, progress).await;
    // Leave nothing behind, whatever happened.
    for schema in &schemas {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(pool)
            .await;
    }
    let _ = guard.close().await;
    result
}

async fn rebuild_locked(
    store: &EventStore,
    projections: &[&dyn Projection],
    schemas: &[String],
    options: &RebuildOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Vec<RebuildReport>, RebuildError> {
    let pool = store.pool();
    for (projection, schema) in projections.iter().zip(schemas) {
        let mut setup = pool.begin().await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&mut *setup)
            .await?;
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut *setup)
            .await?;
        for table in projection.tables() {
            sqlx::query(&format!(
                "CREATE TABLE {schema}.{table} (LIKE public.{table} INCLUDING ALL)"
            ))
            .execute(&mut *setup)
            .await?;
        }
        setup.commit().await?;
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    let total = u64::try_from(total).unwrap_or(0);
    // With verify, never read past the slowest live projection: each is then caught up to its
    // own live position in its swap.
    let bound = async || -> Result<Option<Checkpoint>, RebuildError> {
        if !options.verify {
            return Ok(None);
        }
        let mut lowest: Option<Checkpoint> = None;
        for projection in projections {
            let live = load_checkpoint(pool, projection.name()).await?;
            lowest = Some(lowest.map_or(live, |l| l.min(live)));
        }
        Ok(lowest)
    };
    let fetch = async |after: Checkpoint, upto: Option<Checkpoint>| match upto {
        Some(upto) => store.read_until(after, upto, options.batch_size).await,
        None => store.read_all(after, options.batch_size).await,
    };
    let mut checkpoint = Checkpoint::START;
    let mut events = 0u64;
    progress(0, total);
    let mut batch = fetch(checkpoint, bound().await?).await?;
    while let Some(last) = batch.last().map(RecordedEvent::checkpoint) {
        let upto = bound().await?;
        let apply_all = futures::future::try_join_all(
            projections
                .iter()
                .zip(schemas)
                .map(|(projection, schema)| apply_rebuilt(pool, schema, *projection, &batch)),
        );
        let (next, applied) = tokio::join!(fetch(last, upto), apply_all);
        applied?;
        checkpoint = last;
        events += batch.len() as u64;
        progress(events, total.max(events));
        batch = next?;
    }
    let mut reports = Vec::with_capacity(projections.len());
    for (projection, schema) in projections.iter().zip(schemas) {
        reports.push(swap(store, *projection, schema, options, checkpoint, events).await?);
    }
    Ok(reports)
}

/// Apply one batch to a projection's fresh tables, in a transaction of its own.
async fn apply_rebuilt(
    pool: &sqlx::PgPool,
    schema: &str,
    projection: &dyn Projection,
    batch: &[RecordedEvent],
) -> Result<(), RebuildError> {
    let mut tx = pool.begin().await?;
    eventstore::quiet::declare(&mut tx).await?;
    redirect(&mut tx, schema).await?;
    apply_or_report(pool, &mut tx, schema, projection, batch).await?;
    tx.commit().await?;
    Ok(())
}

/// Pause the live projector, bring the fresh tables to its checkpoint, compare, and swap.
async fn swap(
    store: &EventStore,
    projection: &dyn Projection,
    schema: &str,
    options: &RebuildOptions,
    checkpoint: Checkpoint,
    events: u64,
) -> Result<RebuildReport, RebuildError> {
    let pool = store.pool();
    let name = projection.name();
    // A session lock on a connection of its own: it holds no transaction id, and it ends
    // with the connection whatever happens here.
    let mut pause = PgConnection::connect_with(pool.connect_options().as_ref()).await?;
    sqlx::query(&format!("SELECT pg_advisory_lock({SWAP_LOCK})"))
        .bind(name)
        .execute(&mut pause)
        .await?;
    let result = swap_paused(store, projection, schema, options, checkpoint, events).await;
    let _ = pause.close().await;
    result
}

async fn swap_paused(
    store: &EventStore,
    projection: &dyn Projection,
    schema: &str,
    options: &RebuildOptions,
    mut checkpoint: Checkpoint,
    mut events: u64,
) -> Result<RebuildReport, RebuildError> {
    let pool = store.pool();
    let name = projection.name();
    // The live projector is between batches: its checkpoint stays where it is.
    let live = load_checkpoint(pool, name).await?;
    while checkpoint < live {
        let batch = store
            .read_until(checkpoint, live, options.batch_size)
            .await?;
        let Some(last) = batch.last().map(RecordedEvent::checkpoint) else {
            break;
        };
        apply_rebuilt(pool, schema, projection, &batch).await?;
        checkpoint = last;
        events += batch.len() as u64;
    }
    let mut differences = Vec::new();
    if options.verify {
        // Plain reads: no transaction id.
        let mut conn = pool.acquire().await?;
        for table in projection.tables() {
            if let Some(diff) = compare(&mut conn, schema, table).await? {
                differences.push(diff);
            }
        }
    }
    if let Some(hook) = &options.while_paused {
        (hook.0)(name.to_owned()).await;
    }
    if options.swap {
        let mut tx = pool.begin().await?;
        eventstore::quiet::declare(&mut tx).await?;
        for table in projection.tables() {
            sqlx::query(&format!("DROP TABLE public.{table}"))
                .execute(&mut *tx)
                .await?;
            sqlx::query(&format!("ALTER TABLE {schema}.{table} SET SCHEMA public"))
                .execute(&mut *tx)
                .await?;
        }
        if checkpoint > live {
            // The live projector was behind: it carries on from the rebuilt position (its
            // next batch sees the moved checkpoint and reloads it).
            store_checkpoint(&mut tx, name, checkpoint).await?;
        }
        // Rebuilt from the start: whatever repair the migrations asked for is done.
        sqlx::query("UPDATE projection_checkpoints SET repair_reason = NULL WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        // A live projector that had failed carries on from here, without a restart.
        sqlx::query(
            "UPDATE projection_status SET state = 'resuming', updated_at = now() \
             WHERE name = $1 AND state = 'failed'",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(RebuildReport {
        projection: name.to_owned(),
        events,
        checkpoint: checkpoint.max(live),
        differences,
        verified: options.verify,
        swapped: options.swap,
    })
}

async fn redirect(conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("SET LOCAL search_path TO {schema}, public"))
        .execute(conn)
        .await?;
    Ok(())
}

async fn apply_or_report(
    pool: &sqlx::PgPool,
    conn: &mut PgConnection,
    schema: &str,
    projection: &dyn Projection,
    batch: &[RecordedEvent],
) -> Result<(), RebuildError> {
    let error = match apply_events(conn, projection, batch).await {
        Ok(()) => return Ok(()),
        Err(ApplyError::Database(db)) if eventstore::error::is_transient_sqlx(&db) => {
            return Err(RebuildError::Database(db));
        }
        Err(e) => e,
    };
    // Find the event at fault, in a transaction of its own that is thrown away.
    let mut probe = pool.begin().await?;
    redirect(&mut probe, schema).await?;
    sqlx::query("SET CONSTRAINTS ALL IMMEDIATE")
        .execute(&mut *probe)
        .await?;
    let found = locate_failure(&mut probe, projection, batch).await;
    let _ = probe.rollback().await;
    Err(match found {
        Ok(Some((index, e))) => RebuildError::Apply {
            position: batch[index].global_position,
            event_type: batch[index].event_type.clone(),
            reason: e.to_string(),
        },
        _ => RebuildError::Apply {
            position: batch.first().map_or(0, |e| e.global_position),
            event_type: "(batch)".to_owned(),
            reason: error.to_string(),
        },
    })
}

/// Rows in one version of `table` and not the other (multiset difference both ways).
async fn compare(
    conn: &mut PgConnection,
    schema: &str,
    table: &str,
) -> Result<Option<TableDiff>, sqlx::Error> {
    let side = |a: &str, b: &str| {
        format!("SELECT * FROM {a}.{table} EXCEPT ALL SELECT * FROM {b}.{table}")
    };
    let mut counts = Vec::new();
    let mut samples = Vec::new();
    for (a, b) in [(schema, "public"), ("public", schema)] {
        let diff = side(a, b);
        let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM ({diff}) d"))
            .fetch_one(&mut *conn)
            .await?;
        let rows = sqlx::query(&format!(
            "SELECT row_to_json(d)::jsonb FROM ({diff}) d LIMIT {SAMPLE}"
        ))
        .fetch_all(&mut *conn)
        .await?;
        let rows = rows
            .into_iter()
            .map(|r| r.try_get::<serde_json::Value, _>(0))
            .collect::<Result<Vec<_>, _>>()?;
        counts.push(count);
        samples.push(rows);
    }
    if counts.iter().all(|c| *c == 0) {
        return Ok(None);
    }
    let only_live_sample = samples.pop().unwrap_or_default();
    let only_rebuilt_sample = samples.pop().unwrap_or_default();
    Ok(Some(TableDiff {
        table: table.to_owned(),
        only_rebuilt: counts[0],
        only_rebuilt_sample,
        only_live: counts[1],
        only_live_sample,
    }))
}
