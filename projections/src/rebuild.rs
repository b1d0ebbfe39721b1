//! Rebuild a projection from position zero into fresh tables, compare, and swap them in.
//!
//! The rebuilt tables are created in a schema of their own (`rebuild_<name>`) as copies of the
//! live tables' definitions, and filled by the projection's own handler with `search_path`
//! pointing there, while the live tables keep serving. The last step is one transaction that
//! locks the live checkpoint row (the live projector's next batch waits on it, and locks it
//! first, so the two never deadlock), brings the rebuilt tables to exactly the live position,
//! compares the two sets of tables if asked, and swaps them: the live projector then carries on
//! from the same checkpoint with the new tables. With `verify`, the rebuild is bounded by the
//! live checkpoint throughout so that the comparison is exact.

use eventstore::{Checkpoint, EventStore, EventStoreError, RecordedEvent};
use serde::Serialize;
use sqlx::{Connection, PgConnection, Row};

use crate::runtime::{
    ApplyError, Projection, apply_events, checkpoint_of, load_checkpoint, locate_failure,
    store_checkpoint,
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
}

impl Default for RebuildOptions {
    fn default() -> Self {
        Self {
            batch_size: 5_000,
            verify: false,
            swap: true,
        }
    }
}

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

/// Rebuild `projection`; `progress(applied, total)` is called after every batch.
pub async fn rebuild(
    store: &EventStore,
    projection: &dyn Projection,
    options: &RebuildOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<RebuildReport, RebuildError> {
    let pool = store.pool();
    let name = projection.name();
    let schema = format!("rebuild_{name}");
    // One rebuild per projection at a time, held for the whole run on a connection of its own.
    let mut guard = PgConnection::connect_with(pool.connect_options().as_ref()).await?;
    let free: bool = sqlx::query_scalar(
        "SELECT pg_try_advisory_lock(hashtextextended('fleetledger.rebuild:' || $1, 0))",
    )
    .bind(name)
    .fetch_one(&mut guard)
    .await?;
    if !free {
        return Err(RebuildError::Busy(name.to_owned()));
    }
    let result = rebuild_locked(store, projection, options, progress, &schema).await;
    // Leave nothing behind, whatever happened.
    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(pool)
        .await;
    let _ = guard.close().await;
    result
}

async fn rebuild_locked(
    store: &EventStore,
    projection: &dyn Projection,
    options: &RebuildOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
    schema: &str,
) -> Result<RebuildReport, RebuildError> {
    let pool = store.pool();
    let name = projection.name();
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

    let live = load_checkpoint(pool, name).await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    let total = u64::try_from(total).unwrap_or(0);
    let mut checkpoint = Checkpoint::START;
    let mut events = 0u64;
    progress(0, total);
    loop {
        let batch = if options.verify {
            let live = load_checkpoint(pool, name).await?.max(live);
            store
                .read_until(checkpoint, live, options.batch_size)
                .await?
        } else {
            store.read_all(checkpoint, options.batch_size).await?
        };
        let Some(last) = batch.last().map(RecordedEvent::checkpoint) else {
            break;
        };
        let mut tx = pool.begin().await?;
        redirect(&mut tx, schema).await?;
        apply_or_report(pool, &mut tx, schema, projection, &batch).await?;
        tx.commit().await?;
        checkpoint = last;
        events += batch.len() as u64;
        progress(events, total.max(events));
    }

    // The swap: lock the live checkpoint, catch up to it, compare, swap.
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "SELECT transaction_id::text, global_position FROM projection_checkpoints \
         WHERE name = $1 FOR UPDATE",
    )
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    let live = checkpoint_of(&row)?;
    redirect(&mut tx, schema).await?;
    while checkpoint < live {
        let batch = store
            .read_until(checkpoint, live, options.batch_size)
            .await?;
        let Some(last) = batch.last().map(RecordedEvent::checkpoint) else {
            break;
        };
        apply_or_report(pool, &mut tx, schema, projection, &batch).await?;
        checkpoint = last;
        events += batch.len() as u64;
    }
    progress(events, total.max(events));
    sqlx::query("SET LOCAL search_path TO public")
        .execute(&mut *tx)
        .await?;
    let mut differences = Vec::new();
    if options.verify {
        for table in projection.tables() {
            if let Some(diff) = compare(&mut tx, schema, table).await? {
                differences.push(diff);
            }
        }
    }
    if options.swap {
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
        tx.commit().await?;
    } else {
        tx.rollback().await?;
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
