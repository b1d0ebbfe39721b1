//! `EventStore`: atomic multi-stream append, no-skip reads in commit order, snapshots, verify.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Timelike, Utc};
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgPool, PgRow};
use tokio::sync::watch;
use uuid::Uuid;

use crate::error::EventStoreError;
use crate::hash::{HashedFields, StreamCheck};
use crate::model::{
    Checkpoint, EventMetadata, ExpectedVersion, RecordedEvent, Snapshot, StreamAppend, StreamHead,
    StreamId, StreamVerification,
};
use crate::subscribe::{SubscribeOptions, Subscription};
use crate::upcast::UpcasterRegistry;
use crate::xid8::Xid8;

/// The LISTEN/NOTIFY channel that tells readers the log has grown.
pub const NOTIFY_CHANNEL: &str = "fleetledger_events";

/// Attempts for an append whose streams are all `ExpectedVersion::Any`.
const ANY_VERSION_ATTEMPTS: u32 = 5;

pub(crate) const COLUMNS: &str = "global_position, transaction_id, event_id, \
     aggregate_type, aggregate_id, version, event_type, event_version, payload, metadata, \
     recorded_at, hash";

type Result<T, E = EventStoreError> = std::result::Result<T, E>;

/// Versions read per query when a whole stream is walked (verifying, replaying).
pub const STREAM_PAGE: i64 = 1_000;

/// The event log. Cheap to clone; clones share one pool and one notifier.
#[derive(Clone, Debug)]
pub struct EventStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    upcasters: UpcasterRegistry,
    /// Bumped after every committed append: wakes in-process subscribers and the notifier.
    appended: watch::Sender<u64>,
}

impl EventStore {
    /// A store with no upcasters.
    pub fn new(pool: PgPool) -> Self {
        Self::with_upcasters(pool, UpcasterRegistry::default())
    }

    /// A store that lifts old payloads on read through `upcasters`.
    ///
    /// Must be called inside a tokio runtime: it starts the task that sends NOTIFY after
    /// appends. The task ends when the last clone of the store is dropped.
    pub fn with_upcasters(pool: PgPool, upcasters: UpcasterRegistry) -> Self {
        let (appended, rx) = watch::channel(0u64);
        tokio::spawn(notify_after_appends(pool.clone(), rx));
        Self {
            inner: Arc::new(Inner {
                pool,
                upcasters,
                appended,
            }),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    pub fn upcasters(&self) -> &UpcasterRegistry {
        &self.inner.upcasters
    }

    /// Apply the sqlx migrations in migrations/ (idempotent).
    pub async fn migrate(&self) -> Result<()> {
        crate::MIGRATOR.run(&self.inner.pool).await?;
        Ok(())
    }

    /// Append events to one or several streams in one transaction.
    ///
    /// Each stream is checked against its expected version; on any mismatch nothing is written
    /// for any stream and `OptimisticConcurrency` names the first stream that did not match.
    /// Returns the recorded events in the order given, with their global positions.
    #[tracing::instrument(skip_all, fields(streams = appends.len()), err(level = "debug"))]
    pub async fn append(
        &self,
        appends: &[StreamAppend],
        metadata: &EventMetadata,
    ) -> Result<Vec<RecordedEvent>> {
        let only_any = appends.iter().all(|a| a.expected == ExpectedVersion::Any);
        let mut attempt = 1;
        loop {
            let mut conn = self.inner.pool.acquire().await?;
            match self.append_on(&mut conn, appends, metadata, false).await {
                Err(EventStoreError::OptimisticConcurrency { .. })
                    if only_any && attempt < ANY_VERSION_ATTEMPTS =>
                {
                    attempt += 1;
                }
                Ok(events) => {
                    self.wake_subscribers();
                    return Ok(events);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Append inside a transaction the caller owns (e.g. with read-model or outbox writes).
    ///
    /// The caller commits; after the commit, call [`EventStore::wake_subscribers`] so readers do
    /// not wait for their polling interval. A failed append is rolled back to a savepoint, so
    /// the caller's transaction stays usable (and nothing of the append is in it).
    pub async fn append_in(
        &self,
        conn: &mut PgConnection,
        appends: &[StreamAppend],
        metadata: &EventMetadata,
    ) -> Result<Vec<RecordedEvent>> {
        self.append_on(conn, appends, metadata, true).await
    }

    /// Tell subscribers, in this process and (through NOTIFY) in others, that the log grew.
    pub fn wake_subscribers(&self) {
        self.inner.appended.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes after every append committed by this process (a wake-up hint for readers).
    pub fn appended_signal(&self) -> watch::Receiver<u64> {
        self.inner.appended.subscribe()
    }

    async fn append_on(
        &self,
        conn: &mut PgConnection,
        appends: &[StreamAppend],
        metadata: &EventMetadata,
        in_transaction: bool,
    ) -> Result<Vec<RecordedEvent>> {
        validate(appends)?;

        let to_look_up: Vec<&StreamId> = appends
            .iter()
            .filter(|a| needs_head_lookup(a))
            .map(|a| &a.stream)
            .collect();
        let looked_up = if to_look_up.is_empty() {
            HashMap::new()
        } else {
            fetch_heads(&mut *conn, &to_look_up).await?
        };

        let mut metadata = serde_json::to_value(metadata)
            .map_err(|e| EventStoreError::InvalidAppend(format!("metadata: {e}")))?;
        crate::json::normalize(&mut metadata);
        if let Some(path) = crate::json::find_unstorable(&metadata) {
            return Err(EventStoreError::InvalidAppend(format!(
                "metadata: the string at {path} contains a NUL character, which the log cannot store"
            )));
        }
        let recorded_at = now_micros();

        let total: usize = appends.iter().map(|a| a.events.len()).sum();
        let mut rows = Rows::with_capacity(total);
        let mut recorded = Vec::with_capacity(total);
        for append in appends {
            let mut head = match (append.known_head, append.expected) {
                (Some(head), _) => head,
                (None, ExpectedVersion::NoStream | ExpectedVersion::Exact(0)) => StreamHead::EMPTY,
                (None, expected) => {
                    let actual = looked_up
                        .get(&append.stream)
                        .copied()
                        .unwrap_or(StreamHead::EMPTY);
                    if let ExpectedVersion::Exact(v) = expected
                        && v != actual.version
                    {
                        return Err(EventStoreError::OptimisticConcurrency {
                            stream: append.stream.clone(),
                            expected,
                            actual: actual.version,
                        });
                    }
                    actual
                }
            };
            for event in &append.events {
                let version = head.version + 1;
                let mut payload = event.payload.clone();
                crate::json::normalize(&mut payload);
                let fields = HashedFields {
                    event_id: event.event_id,
                    aggregate_type: &append.stream.aggregate_type,
                    aggregate_id: &append.stream.aggregate_id,
                    version,
                    event_type: &event.event_type,
                    event_version: event.event_version,
                    payload: &payload,
                    metadata: &metadata,
                    recorded_at,
                };
                let hash = fields.chain_hash(&head.hash);
                head = StreamHead { version, hash };
                rows.push(&append.stream, version, event, payload.clone(), hash);
                recorded.push(RecordedEvent {
                    global_position: 0,
                    transaction_id: 0,
                    event_id: event.event_id,
                    aggregate_type: append.stream.aggregate_type.clone(),
                    aggregate_id: append.stream.aggregate_id.clone(),
                    version,
                    event_type: event.event_type.clone(),
                    event_version: event.event_version,
                    payload,
                    metadata: metadata.clone(),
                    recorded_at,
                    hash: hash.to_vec(),
                });
            }
        }

        if in_transaction {
            sqlx::query("SAVEPOINT fleetledger_append")
                .execute(&mut *conn)
                .await?;
        }
        let inserted = sqlx::query(
            "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, \
                                 event_version, payload, metadata, recorded_at, hash) \
             SELECT e.event_id, e.aggregate_type, e.aggregate_id, e.version, e.event_type, \
                    e.event_version, e.payload, $8, $9, e.hash \
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[], \
                         $6::int[], $7::jsonb[], $10::bytea[]) \
                  AS e(event_id, aggregate_type, aggregate_id, version, event_type, \
                       event_version, payload, hash) \
             RETURNING event_id, global_position, transaction_id",
        )
        .bind(&rows.event_ids)
        .bind(&rows.aggregate_types)
        .bind(&rows.aggregate_ids)
        .bind(&rows.versions)
        .bind(&rows.event_types)
        .bind(&rows.event_versions)
        .bind(&rows.payloads)
        .bind(&metadata)
        .bind(recorded_at)
        .bind(&rows.hashes)
        .fetch_all(&mut *conn)
        .await;

        let inserted = match inserted {
            Ok(rows) => rows,
            Err(e) => {
                if in_transaction {
                    sqlx::query("ROLLBACK TO SAVEPOINT fleetledger_append")
                        .execute(&mut *conn)
                        .await?;
                }
                // Explained on the same connection: taking another from the pool while this
                // one is held could wait forever when every connection does the same.
                return Err(self.explain_insert_error(conn, e, appends).await);
            }
        };

        let mut positions: HashMap<Uuid, (i64, u64)> = HashMap::with_capacity(inserted.len());
        for row in inserted {
            let event_id: Uuid = row.try_get(0)?;
            let position: i64 = row.try_get(1)?;
            let txid: Xid8 = row.try_get(2)?;
            positions.insert(event_id, (position, txid.0));
        }
        for event in &mut recorded {
            let (position, txid) = positions.get(&event.event_id).copied().ok_or_else(|| {
                EventStoreError::Corrupt(format!("insert returned no row for {}", event.event_id))
            })?;
            event.global_position = position;
            event.transaction_id = txid;
        }
        Ok(recorded)
    }

    /// Turn a failed INSERT into the typed error the caller can act on.
    async fn explain_insert_error(
        &self,
        conn: &mut PgConnection,
        e: sqlx::Error,
        appends: &[StreamAppend],
    ) -> EventStoreError {
        let Some(db) = e.as_database_error() else {
            return e.into();
        };
        match db.constraint() {
            Some("events_stream_version_key") => {
                // The competing writer has committed (a unique violation waits for it), so a
                // fresh read of the heads shows which stream moved.
                let streams: Vec<&StreamId> = appends.iter().map(|a| &a.stream).collect();
                let heads = match fetch_heads(&mut *conn, &streams).await {
                    Ok(heads) => heads,
                    Err(err) => return err,
                };
                let actual_of = |a: &StreamAppend| heads.get(&a.stream).map_or(0, |h| h.version);
                let moved = appends
                    .iter()
                    .find(|a| match a.expected {
                        ExpectedVersion::Exact(v) => actual_of(a) != v,
                        ExpectedVersion::NoStream => actual_of(a) != 0,
                        ExpectedVersion::Any => false,
                    })
                    .or_else(|| {
                        appends
                            .iter()
                            .find(|a| a.known_head.is_some_and(|h| h.version != actual_of(a)))
                    })
                    .unwrap_or(&appends[0]);
                EventStoreError::OptimisticConcurrency {
                    stream: moved.stream.clone(),
                    expected: moved.expected,
                    actual: actual_of(moved),
                }
            }
            Some("events_event_id_key") => {
                let id = appends
                    .iter()
                    .flat_map(|a| &a.events)
                    .find(|ev| db.message().contains(&ev.event_id.to_string()))
                    .or_else(|| appends.iter().flat_map(|a| &a.events).next())
                    .map(|ev| ev.event_id)
                    .unwrap_or_default();
                EventStoreError::DuplicateEventId(id)
            }
            _ if db.code().as_deref() == Some("22P05") => EventStoreError::InvalidAppend(format!(
                "payload not storable as jsonb: {}",
                db.message()
            )),
            _ => e.into(),
        }
    }
}

impl EventStore {
    /// One stream's events with `from_version <= version <= to_version`, oldest first, upcast.
    pub async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: i64,
        to_version: Option<i64>,
    ) -> Result<Vec<RecordedEvent>> {
        self.read_stream_raw(stream, from_version, to_version)
            .await?
            .into_iter()
            .map(|e| self.inner.upcasters.upcast(e))
            .collect()
    }

    /// One stream exactly as stored (no upcasting): what the hash chain covers.
    pub async fn read_stream_raw(
        &self,
        stream: &StreamId,
        from_version: i64,
        to_version: Option<i64>,
    ) -> Result<Vec<RecordedEvent>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM events \
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND version >= $3 AND version <= $4 \
             ORDER BY version"
        );
        sqlx::query(&sql)
            .bind(&stream.aggregate_type)
            .bind(&stream.aggregate_id)
            .bind(from_version)
            .bind(to_version.unwrap_or(i64::MAX))
            .fetch_all(&self.inner.pool)
            .await?
            .into_iter()
            .map(|row| decode_event(&row))
            .collect()
    }

    /// The events at `positions` (those that exist), in commit order, upcast: how a read model
    /// that indexes the log (a booking's timeline) has its events read back.
    pub async fn read_positions(&self, positions: &[i64]) -> Result<Vec<RecordedEvent>> {
        self.read_positions_raw(positions)
            .await?
            .into_iter()
            .map(|e| self.inner.upcasters.upcast(e))
            .collect()
    }

    /// [`EventStore::read_positions`] without upcasting: the events exactly as stored.
    pub async fn read_positions_raw(&self, positions: &[i64]) -> Result<Vec<RecordedEvent>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE global_position = ANY($1) \
             ORDER BY transaction_id, global_position"
        );
        sqlx::query(&sql)
            .bind(positions)
            .fetch_all(&self.inner.pool)
            .await?
            .into_iter()
            .map(|row| decode_event(&row))
            .collect()
    }

    /// Up to `limit` events after `after` that match `filter`, in commit order, upcast, below
    /// the log's horizon as every reader reads (an audit's page of the log). Only the filters
    /// given are in the query, so the planner takes the index each one leads (event type,
    /// aggregate type, aggregate id: each followed by the commit order).
    pub async fn read_filtered(
        &self,
        after: Checkpoint,
        filter: &LogFilter,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>> {
        let mut q: sqlx::QueryBuilder<'_, sqlx::Postgres> =
            sqlx::QueryBuilder::new(format!("SELECT {COLUMNS} FROM events WHERE "));
        q.push("(transaction_id, global_position) > (")
            .push_bind(Xid8(after.transaction_id))
            .push(", ")
            .push_bind(after.global_position)
            .push(") AND transaction_id < (SELECT log_horizon())");
        if let Some(types) = &filter.aggregate_types {
            q.push(" AND aggregate_type = ANY(")
                .push_bind(types.clone())
                .push(")");
        }
        if let Some(types) = &filter.event_types {
            q.push(" AND event_type = ANY(")
                .push_bind(types.clone())
                .push(")");
        }
        if let Some(id) = &filter.aggregate_id {
            q.push(" AND aggregate_id = ").push_bind(id.clone());
        }
        q.push(" ORDER BY transaction_id, global_position LIMIT ")
            .push_bind(limit.max(0));
        q.build()
            .fetch_all(&self.inner.pool)
            .await?
            .iter()
            .map(|row| decode_event(row).and_then(|e| self.inner.upcasters.upcast(e)))
            .collect()
    }

    /// Where the event at `position` stands in commit order; `None` when there is none.
    pub async fn checkpoint_of(&self, position: i64) -> Result<Option<Checkpoint>> {
        let txid: Option<Xid8> =
            sqlx::query_scalar("SELECT transaction_id FROM events WHERE global_position = $1")
                .bind(position)
                .fetch_optional(&self.inner.pool)
                .await?;
        Ok(txid.map(|txid| Checkpoint {
            transaction_id: txid.0,
            global_position: position,
        }))
    }

    /// Up to `limit` events after `after`, in commit order, upcast.
    ///
    /// Only events of transactions older than every transaction still running that may append
    /// events are returned (`transaction_id < log_horizon()`, see [`crate::quiet`]): an event
    /// whose transaction is still open holds back everything after it instead of being
    /// skipped.
    pub async fn read_all(&self, after: Checkpoint, limit: i64) -> Result<Vec<RecordedEvent>> {
        self.read_all_raw(after, limit)
            .await?
            .into_iter()
            .map(|e| self.inner.upcasters.upcast(e))
            .collect()
    }

    /// [`EventStore::read_all`] without upcasting: the log exactly as stored.
    pub async fn read_all_raw(&self, after: Checkpoint, limit: i64) -> Result<Vec<RecordedEvent>> {
        read_all_on(&self.inner.pool, after, limit).await
    }

    /// Up to `limit` events with `after < checkpoint <= upto`, in commit order, upcast.
    ///
    /// `upto` must be a checkpoint some reader has already seen (a projection's checkpoint):
    /// every event at or before it belongs to a finished transaction, so this range never
    /// changes. Used to bring a rebuilt projection exactly to a live one's position.
    pub async fn read_until(
        &self,
        after: Checkpoint,
        upto: Checkpoint,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>> {
        // Split like the no-skip reader's query, for the same planner reason.
        let sql = format!(
            "SELECT {COLUMNS} FROM ( \
               (SELECT * FROM events \
                 WHERE transaction_id = $1 AND global_position > $2 \
                 ORDER BY global_position LIMIT $5) \
               UNION ALL \
               (SELECT * FROM events \
                 WHERE transaction_id > $1 AND transaction_id <= $3 \
                 ORDER BY transaction_id, global_position LIMIT $5) \
             ) AS tail \
             WHERE (transaction_id, global_position) <= ($3, $4) \
             ORDER BY transaction_id, global_position \
             LIMIT $5"
        );
        sqlx::query(&sql)
            .bind(Xid8(after.transaction_id))
            .bind(after.global_position)
            .bind(Xid8(upto.transaction_id))
            .bind(upto.global_position)
            .bind(limit.max(0))
            .fetch_all(&self.inner.pool)
            .await?
            .into_iter()
            .map(|row| decode_event(&row).and_then(|e| self.inner.upcasters.upcast(e)))
            .collect()
    }

    /// Catch up from `after`, then follow the log live. See [`Subscription`].
    pub fn subscribe(&self, after: Checkpoint) -> Subscription {
        Subscription::new(self.clone(), after, SubscribeOptions::default())
    }

    pub fn subscribe_with(&self, after: Checkpoint, options: SubscribeOptions) -> Subscription {
        Subscription::new(self.clone(), after, options)
    }

    /// The stream's current head (version 0 when it has no events).
    pub async fn stream_head(&self, stream: &StreamId) -> Result<StreamHead> {
        let heads = fetch_heads(&self.inner.pool, &[stream]).await?;
        Ok(heads.get(stream).copied().unwrap_or(StreamHead::EMPTY))
    }

    /// The checkpoint of the newest event that readers can see now.
    pub async fn visible_head(&self) -> Result<Checkpoint> {
        let row = sqlx::query(
            "SELECT transaction_id, global_position FROM events \
             WHERE transaction_id < (SELECT log_horizon()) \
             ORDER BY transaction_id DESC, global_position DESC LIMIT 1",
        )
        .fetch_optional(&self.inner.pool)
        .await?;
        match row {
            None => Ok(Checkpoint::START),
            Some(row) => Ok(Checkpoint {
                transaction_id: row.try_get::<Xid8, _>(0)?.0,
                global_position: row.try_get(1)?,
            }),
        }
    }

    /// The newest committed event in commit order, whether or not readers may see it yet.
    pub async fn committed_head(&self) -> Result<Checkpoint> {
        let row = sqlx::query(
            "SELECT transaction_id, global_position FROM events \
             ORDER BY transaction_id DESC, global_position DESC LIMIT 1",
        )
        .fetch_optional(&self.inner.pool)
        .await?;
        match row {
            None => Ok(Checkpoint::START),
            Some(row) => Ok(Checkpoint {
                transaction_id: row.try_get::<Xid8, _>(0)?.0,
                global_position: row.try_get(1)?,
            }),
        }
    }

    /// Wait until readers can see `target` (every transaction that could still commit before
    /// it has finished). Returns the visible head then, or `None` after `timeout`.
    pub async fn wait_visible(
        &self,
        target: Checkpoint,
        timeout: std::time::Duration,
    ) -> Result<Option<Checkpoint>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pauses = crate::backoff::Backoff::new(
            std::time::Duration::from_millis(5),
            std::time::Duration::from_millis(200),
        )
        .pauses();
        loop {
            let head = self.visible_head().await?;
            if head >= target {
                return Ok(Some(head));
            }
            let pause = pauses
                .next()
                .unwrap_or(std::time::Duration::from_millis(200));
            if tokio::time::Instant::now() + pause > deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Recompute one stream's hash chain from the stored rows, up to its head when asked, a
    /// page of [`STREAM_PAGE`] versions at a time: memory stays bounded however long the stream
    /// (a car's telemetry grows for years).
    pub async fn verify_stream(&self, stream: &StreamId) -> Result<StreamVerification> {
        let last = self.stream_head(stream).await?.version;
        let mut check = StreamCheck::new(stream.clone());
        let mut from = 1;
        while from <= last {
            let to = (from + STREAM_PAGE - 1).min(last);
            for event in &self.read_stream_raw(stream, from, Some(to)).await? {
                check.push(event);
            }
            from = to + 1;
        }
        Ok(check.finish())
    }

    /// The last version of `stream` recorded by `at`: the versions before the first one
    /// recorded later (0 when none was recorded by then). Reads versions and times only.
    pub async fn version_at(&self, stream: &StreamId, at: DateTime<Utc>) -> Result<i64> {
        let first_later: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM events \
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND recorded_at > $3 \
             ORDER BY version LIMIT 1",
        )
        .bind(&stream.aggregate_type)
        .bind(&stream.aggregate_id)
        .bind(at)
        .fetch_optional(&self.inner.pool)
        .await?;
        match first_later {
            Some(version) => Ok(version - 1),
            None => Ok(self.stream_head(stream).await?.version),
        }
    }

    /// The latest snapshot of a stream, if any.
    pub async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        let row = sqlx::query(
            "SELECT version, hash, state, taken_at FROM snapshots \
             WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(&stream.aggregate_type)
        .bind(&stream.aggregate_id)
        .fetch_optional(&self.inner.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let hash: Vec<u8> = row.try_get("hash")?;
        Ok(Some(Snapshot {
            stream: stream.clone(),
            head: StreamHead {
                version: row.try_get("version")?,
                hash: hash
                    .try_into()
                    .map_err(|_| EventStoreError::Corrupt(format!("snapshot hash of {stream}")))?,
            },
            state: row.try_get("state")?,
            taken_at: row.try_get("taken_at")?,
        }))
    }

    /// Store the state after `head` as the stream's snapshot, unless a newer one exists.
    pub async fn save_snapshot(
        &self,
        stream: &StreamId,
        head: StreamHead,
        state: &Value,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO snapshots (aggregate_type, aggregate_id, version, hash, state) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE \
             SET version = EXCLUDED.version, hash = EXCLUDED.hash, state = EXCLUDED.state, \
                 taken_at = now() \
             WHERE snapshots.version < EXCLUDED.version",
        )
        .bind(&stream.aggregate_type)
        .bind(&stream.aggregate_id)
        .bind(head.version)
        .bind(head.hash.as_slice())
        .bind(state)
        .execute(&self.inner.pool)
        .await?;
        Ok(())
    }

    /// Drop a stream's snapshot (e.g. after its state type changed shape).
    pub async fn delete_snapshot(&self, stream: &StreamId) -> Result<()> {
        sqlx::query("DELETE FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = $2")
            .bind(&stream.aggregate_type)
            .bind(&stream.aggregate_id)
            .execute(&self.inner.pool)
            .await?;
        Ok(())
    }
}

pub(crate) async fn read_all_on<'e, E>(
    executor: E,
    after: Checkpoint,
    limit: i64,
) -> Result<Vec<RecordedEvent>>
where
    E: sqlx::PgExecutor<'e>,
{
    // Two ordered index scans, the rest of the checkpoint's transaction and the transactions
    // after it, rather than one row comparison: on a large log the planner misjudges
    // `(transaction_id, global_position) > (…)` and sorts the whole tail (seconds per batch
    // instead of milliseconds).
    let sql = format!(
        "SELECT {COLUMNS} FROM ( \
           (SELECT * FROM events \
             WHERE transaction_id = $1 AND global_position > $2 \
               AND transaction_id < (SELECT log_horizon()) \
             ORDER BY global_position LIMIT $3) \
           UNION ALL \
           (SELECT * FROM events \
             WHERE transaction_id > $1 \
               AND transaction_id < (SELECT log_horizon()) \
             ORDER BY transaction_id, global_position LIMIT $3) \
         ) AS tail \
         ORDER BY transaction_id, global_position \
         LIMIT $3"
    );
    sqlx::query(&sql)
        .bind(Xid8(after.transaction_id))
        .bind(after.global_position)
        .bind(limit.max(0))
        .fetch_all(executor)
        .await?
        .into_iter()
        .map(|row| decode_event(&row))
        .collect()
}

/// Sends one NOTIFY per burst of appends, outside the appending transactions.
///
/// A NOTIFY inside the appending transaction would take PostgreSQL's global notify lock until
/// that transaction's commit record is flushed, serialising every append; a separate, tiny
/// notifying statement keeps appends concurrent, and bursts collapse into one notification.
async fn notify_after_appends(pool: PgPool, mut appended: watch::Receiver<u64>) {
    while appended.changed().await.is_ok() {
        if let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
            .bind(NOTIFY_CHANNEL)
            .execute(&pool)
            .await
        {
            // Readers fall back to polling; nothing is lost.
            tracing::debug!(error = %e, "could not send the append notification");
        }
    }
}

fn validate(appends: &[StreamAppend]) -> Result<()> {
    let invalid = |msg: String| Err(EventStoreError::InvalidAppend(msg));
    if appends.is_empty() {
        return invalid("no streams to append to".into());
    }
    let mut seen = std::collections::HashSet::new();
    for a in appends {
        if !seen.insert(&a.stream) {
            return invalid(format!("stream {} appears twice in one append", a.stream));
        }
        if a.events.is_empty() {
            return invalid(format!("no events for stream {}", a.stream));
        }
        if a.stream.aggregate_type.is_empty() || a.stream.aggregate_id.is_empty() {
            return invalid("aggregate type and id must not be empty".into());
        }
        if let Some(head) = a.known_head {
            let agrees = match a.expected {
                ExpectedVersion::Exact(v) => v == head.version,
                ExpectedVersion::NoStream => head.version == 0,
                ExpectedVersion::Any => true,
            };
            if !agrees {
                return invalid(format!(
                    "known head {} of {} contradicts expected {}",
                    head.version, a.stream, a.expected
                ));
            }
        }
        if let ExpectedVersion::Exact(v) = a.expected
            && v < 0
        {
            return invalid(format!("negative expected version {v}"));
        }
        for e in &a.events {
            if e.event_type.is_empty() || e.event_version < 1 {
                return invalid(format!(
                    "event {} needs a type and a version >= 1",
                    e.event_id
                ));
            }
            if let Some(path) = crate::json::find_unstorable(&e.payload) {
                return invalid(format!(
                    "event {} ({}): the string at {path} contains a NUL character, which the \
                     log cannot store",
                    e.event_id, e.event_type
                ));
            }
        }
    }
    Ok(())
}

fn needs_head_lookup(a: &StreamAppend) -> bool {
    a.known_head.is_none()
        && matches!(
            a.expected,
            ExpectedVersion::Any | ExpectedVersion::Exact(1..)
        )
}

async fn fetch_heads<'e, E>(
    executor: E,
    streams: &[&StreamId],
) -> Result<HashMap<StreamId, StreamHead>>
where
    E: sqlx::PgExecutor<'e>,
{
    let types: Vec<&str> = streams.iter().map(|s| s.aggregate_type.as_str()).collect();
    let ids: Vec<&str> = streams.iter().map(|s| s.aggregate_id.as_str()).collect();
    let rows = sqlx::query(
        "SELECT s.aggregate_type, s.aggregate_id, h.version, h.hash \
         FROM unnest($1::text[], $2::text[]) AS s(aggregate_type, aggregate_id) \
         CROSS JOIN LATERAL ( \
             SELECT version, hash FROM events e \
             WHERE e.aggregate_type = s.aggregate_type AND e.aggregate_id = s.aggregate_id \
             ORDER BY version DESC LIMIT 1) h",
    )
    .bind(&types)
    .bind(&ids)
    .fetch_all(executor)
    .await?;
    let mut heads = HashMap::with_capacity(rows.len());
    for row in rows {
        let stream = StreamId::new(row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?);
        let hash: Vec<u8> = row.try_get(3)?;
        let hash = hash
            .try_into()
            .map_err(|_| EventStoreError::Corrupt(format!("hash of the head of {stream}")))?;
        heads.insert(
            stream,
            StreamHead {
                version: row.try_get(2)?,
                hash,
            },
        );
    }
    Ok(heads)
}

/// Columns of a multi-stream INSERT, one array per column.
struct Rows {
    event_ids: Vec<Uuid>,
    aggregate_types: Vec<String>,
    aggregate_ids: Vec<String>,
    versions: Vec<i64>,
    event_types: Vec<String>,
    event_versions: Vec<i32>,
    payloads: Vec<Value>,
    hashes: Vec<Vec<u8>>,
}

impl Rows {
    fn with_capacity(n: usize) -> Self {
        Self {
            event_ids: Vec::with_capacity(n),
            aggregate_types: Vec::with_capacity(n),
            aggregate_ids: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            event_types: Vec::with_capacity(n),
            event_versions: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            hashes: Vec::with_capacity(n),
        }
    }

    fn push(
        &mut self,
        stream: &StreamId,
        version: i64,
        event: &crate::NewEvent,
        payload: Value,
        hash: [u8; 32],
    ) {
        self.event_ids.push(event.event_id);
        self.aggregate_types.push(stream.aggregate_type.clone());
        self.aggregate_ids.push(stream.aggregate_id.clone());
        self.versions.push(version);
        self.event_types.push(event.event_type.clone());
        self.event_versions.push(event.event_version);
        self.payloads.push(payload);
        self.hashes.push(hash.to_vec());
    }
}

/// Which events a filtered read of the log returns: every filter given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogFilter {
    pub aggregate_types: Option<Vec<String>>,
    pub event_types: Option<Vec<String>>,
    pub aggregate_id: Option<String>,
}

/// Now, truncated to the microsecond precision PostgreSQL stores, so the hash computed before
/// the insert matches the one recomputed from the stored row.
fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    let micros = now.nanosecond() / 1_000 * 1_000;
    now.with_nanosecond(micros).unwrap_or(now)
}

/// One event from a row holding the columns of the `events` table under their own names.
pub fn decode_event(row: &PgRow) -> Result<RecordedEvent> {
    Ok(RecordedEvent {
        global_position: row.try_get("global_position")?,
        transaction_id: row.try_get::<Xid8, _>("transaction_id")?.0,
        event_id: row.try_get("event_id")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        version: row.try_get("version")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: row.try_get("payload")?,
        metadata: row.try_get("metadata")?,
        recorded_at: row.try_get("recorded_at")?,
        hash: row.try_get("hash")?,
    })
}
