//! The projector runtime: lease, no-skip batches, checkpoint in the effect's transaction.
//!
//! A projector reads the log after its checkpoint through the event store's no-skip reader, in
//! batches. For a PostgreSQL read model ([`Projection`]) it applies a batch and moves the
//! checkpoint in one transaction, which first locks the checkpoint row and checks that it still
//! holds the position this instance believes in: two instances can never both apply an event,
//! whatever happens to leases (exactly-once effect). For an external target ([`ExternalSink`],
//! the Kafka relay) the checkpoint moves only after the sink says every event of the batch is
//! acknowledged (at-least-once delivery, never a loss).
//!
//! One instance per projection is active: it holds a PostgreSQL advisory lock on a connection
//! of its own. Others wait as hot standbys and take over within `lease_poll` once the holder's
//! connection ends (its process died or shut down). An event a handler cannot apply stops that
//! projection at the event, with the position in its status; it is never skipped.

use eventstore::backoff::Backoff;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use eventstore::{Checkpoint, EventStore, EventStoreError, NOTIFY_CHANNEL, RecordedEvent, Xid8};
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::status::{self, State};

/// Why a handler could not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot read {event_type} v{event_version}: {reason}")]
    Decode {
        event_type: String,
        event_version: i32,
        reason: String,
    },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Invalid(String),
}

impl ApplyError {
    /// Worth retrying the same batch (connection lost, serialization failure, deadlock).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Database(e) if eventstore::error::is_transient_sqlx(e))
    }
}

/// A read model in PostgreSQL, fed batches inside the runtime's transaction.
///
/// A handler folds a batch in memory (loading the rows it touches once) and writes each table
/// with a few set-based statements, so a rebuild is not bound by one round trip per event.
/// When a batch fails for good, the runtime applies its events one at a time (each behind a
/// savepoint) to find the one that cannot be applied, keeps those before it, and stops there.
#[async_trait::async_trait]
pub trait Projection: Send + Sync + 'static {
    /// The checkpoint, lease and status name.
    fn name(&self) -> &'static str;
    /// Every table the projection writes (unqualified: a rebuild redirects them with
    /// `search_path`). A rebuild recreates these and nothing else.
    fn tables(&self) -> &'static [&'static str];
    /// Whether [`Projection::apply`] needs this event. Others still advance the checkpoint.
    fn wants(&self, event: &RecordedEvent) -> bool;
    /// Apply `events` (wanted ones only, in commit order). Must be deterministic: derived
    /// only from the events and the tables (never `now()`), and the same whether the events
    /// come in one batch or one by one, so a rebuild reproduces the live tables exactly.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ApplyError>;
}

/// Why an external sink could not deliver a batch.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Retry the same batch later (broker down, timeout): the runtime backs off, state "stalled".
    #[error("{0}")]
    Transient(String),
    /// `batch[index]` can never be delivered: the projection stops there (state "failed").
    #[error("event {index} of the batch: {reason}")]
    Poison { index: usize, reason: String },
}

/// A target outside PostgreSQL (a message broker). Delivery is at least once.
#[async_trait::async_trait]
pub trait ExternalSink: Send + Sync + 'static {
    /// Name of the checkpoint row, lease and status row, e.g. "relay.kafka".
    fn name(&self) -> &str;
    /// Called after the lease is taken, before the first batch (e.g. create topics).
    async fn prepare(&self) -> Result<(), SinkError> {
        Ok(())
    }
    /// Deliver the batch in order; return Ok only when every event is acknowledged (durable).
    /// The runtime then advances the checkpoint to the batch's last event.
    async fn deliver(&self, batch: &[RecordedEvent]) -> Result<(), SinkError>;
}

/// What a projector feeds.
#[derive(Clone)]
pub enum Target {
    Postgres(Arc<dyn Projection>),
    External(Arc<dyn ExternalSink>),
}

impl Target {
    pub fn name(&self) -> String {
        match self {
            Self::Postgres(p) => p.name().to_owned(),
            Self::External(s) => s.name().to_owned(),
        }
    }
}

/// Tuning of one projector.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Events read and applied per transaction.
    pub batch_size: i64,
    /// Longest wait between reads when no notification arrives.
    pub poll_interval: Duration,
    /// How often a standby tries to take the lease.
    pub lease_poll: Duration,
    /// Who holds the lease, for the status table (host:pid by default).
    pub owner: String,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            lease_poll: Duration::from_secs(1),
            owner: default_owner(),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// `host:pid`, naming this process in the status table.
pub fn default_owner() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event store: {0}")]
    Store(#[from] EventStoreError),
    #[error("projection {0}: another instance moved the checkpoint; giving up the lease")]
    Fenced(String),
    #[error("projection {0}: the lease connection was lost")]
    LeaseLost(String),
    #[error("projection {0}: a rebuild of it is running elsewhere; waiting for it")]
    Busy(String),
    #[error("projection {0}: asked to resume; starting again from its checkpoint")]
    Resumed(String),
    #[error("projection {name} stopped at position {position}: {reason}")]
    Poisoned {
        name: String,
        position: i64,
        reason: String,
    },
}

impl RuntimeError {
    /// Start again from the lease: the database blinked or another instance took over.
    fn is_recoverable(&self) -> bool {
        match self {
            Self::Database(e) => eventstore::error::is_transient_sqlx(e),
            Self::Store(e) => e.is_transient(),
            Self::Fenced(_) | Self::LeaseLost(_) | Self::Busy(_) | Self::Resumed(_) => true,
            Self::Poisoned { .. } => false,
        }
    }
}

/// One projection's runner.
pub struct Projector {
    store: EventStore,
    target: Target,
    options: RunOptions,
}

enum BatchOutcome {
    Applied(Checkpoint),
    /// `batch[index]` cannot be applied; everything before it was.
    Poison {
        applied: Checkpoint,
        index: usize,
        reason: String,
    },
}

impl Projector {
    pub fn new(store: EventStore, target: Target, options: RunOptions) -> Self {
        Self {
            store,
            target,
            options,
        }
    }

    pub fn postgres(
        store: EventStore,
        projection: Arc<dyn Projection>,
        options: RunOptions,
    ) -> Self {
        Self::new(store, Target::Postgres(projection), options)
    }

    pub fn external(store: EventStore, sink: Arc<dyn ExternalSink>, options: RunOptions) -> Self {
        Self::new(store, Target::External(sink), options)
    }

    pub fn name(&self) -> String {
        self.target.name()
    }

    /// Take the lease, apply every event committed before this call, and return the
    /// checkpoint reached. (Tests, benchmarks and one-shot catch-ups; a service uses
    /// [`Projector::run`].) Events of transactions still open elsewhere in the cluster hold
    /// the reader back; this waits for them rather than stopping short.
    pub async fn catch_up(&self) -> Result<Checkpoint, RuntimeError> {
        let Target::Postgres(projection) = &self.target else {
            return Err(RuntimeError::Database(sqlx::Error::Protocol(
                "catch_up is for PostgreSQL projections".to_owned(),
            )));
        };
        let name = self.name();
        let pool = self.store.pool();
        let token = CancellationToken::new();
        let Some(_lease) = Lease::acquire(pool, &name, &self.options, &token).await else {
            return Err(RuntimeError::LeaseLost(name));
        };
        let target = self.store.committed_head().await?;
        let mut checkpoint = load_checkpoint(pool, &name).await?;
        let mut idle = Backoff::new(Duration::from_millis(2), Duration::from_millis(100)).pauses();
        loop {
            let batch = self
                .store
                .read_all(checkpoint, self.options.batch_size)
                .await?;
            if batch.is_empty() {
                if checkpoint >= target {
                    return Ok(checkpoint);
                }
                tokio::time::sleep(idle.next().unwrap_or(Duration::from_millis(100))).await;
                continue;
            }
            match apply_batch(pool, projection.as_ref(), &name, checkpoint, &batch).await? {
                BatchOutcome::Applied(next) => checkpoint = next,
                BatchOutcome::Poison { index, reason, .. } => {
                    let event = &batch[index];
                    status::set_failed(pool, &name, event.checkpoint(), Some(event), &reason)
                        .await?;
                    return Err(RuntimeError::Poisoned {
                        name,
                        position: event.global_position,
                        reason,
                    });
                }
            }
        }
    }

    /// Waits for the lease (hot standby), then runs until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), RuntimeError> {
        let token = CancellationToken::new();
        let work = self.run_until_cancelled(token.clone());
        tokio::pin!(work);
        tokio::pin!(shutdown);
        tokio::select! {
            result = &mut work => result,
            () = &mut shutdown => {
                token.cancel();
                work.await
            }
        }
    }

    /// [`Projector::run`] with a cancellation token.
    pub async fn run_until_cancelled(self, token: CancellationToken) -> Result<(), RuntimeError> {
        let name = self.name();
        let mut failures = 0u32;
        loop {
            let Some(lease) = Lease::acquire(self.store.pool(), &name, &self.options, &token).await
            else {
                return Ok(());
            };
            tracing::info!(projection = %name, owner = %self.options.owner, "lease taken; running");
            let result = self.run_leased(lease, &token).await;
            match result {
                Ok(()) => {
                    let _ = status::set_state(self.store.pool(), &name, State::Stopped, None).await;
                    return Ok(());
                }
                Err(e) if e.is_recoverable() => {
                    failures += 1;
                    let delay = backoff(&self.options, failures);
                    tracing::warn!(projection = %name, error = %e, retry_in_ms = delay.as_millis() as u64,
                        "projector interrupted; taking the lease again");
                    tokio::select! {
                        () = token.cancelled() => return Ok(()),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn run_leased(
        &self,
        mut lease: Lease,
        token: &CancellationToken,
    ) -> Result<(), RuntimeError> {
        let name = self.name();
        let pool = self.store.pool().clone();
        if let Some(reason) = repair_reason(&pool, &name).await?
            && let Some(outcome) = self.repair(&name, &reason, &mut lease, token).await?
        {
            return Ok(outcome);
        }
        let mut checkpoint = load_checkpoint(&pool, &name).await?;
        status::set_state(&pool, &name, State::CatchingUp, Some(&self.options.owner)).await?;
        if let Target::External(sink) = &self.target {
            self.prepare_sink(sink, token).await?;
        }
        let mut listener = connect_listener(&pool).await;
        let mut appended = self.store.appended_signal();
        let mut state = State::CatchingUp;
        let mut failures = 0u32;
        let mut last_lease_check = tokio::time::Instant::now();
        loop {
            if token.is_cancelled() {
                return Ok(());
            }
            if last_lease_check.elapsed() >= self.options.lease_poll {
                lease.check(&name).await?;
                last_lease_check = tokio::time::Instant::now();
            }
            appended.borrow_and_update();
            let batch = match self
                .store
                .read_all(checkpoint, self.options.batch_size)
                .await
            {
                Ok(batch) => batch,
                Err(e) if e.is_transient() => {
                    failures += 1;
                    let delay = backoff(&self.options, failures);
                    tracing::warn!(projection = %name, error = %e, "read failed; retrying");
                    sleep_or_cancel(delay, token).await;
                    listener = None;
                    continue;
                }
                Err(e) => {
                    // A row the reader cannot decode (no upcaster): stop here, visibly.
                    let reason = e.to_string();
                    status::set_failed(&pool, &name, checkpoint, None, &reason).await?;
                    tracing::error!(projection = %name, checkpoint = %checkpoint, error = %reason,
                        "projection stopped: the next event cannot be read");
                    return idle_failed(&mut lease, &name, token, &self.options, &pool).await;
                }
            };
            if batch.is_empty() {
                if state != State::Running {
                    state = State::Running;
                    status::set_state(&pool, &name, state, Some(&self.options.owner)).await?;
                }
                wait_for_events(
                    &mut listener,
                    &mut appended,
                    self.options.poll_interval,
                    token,
                )
                .await;
                if listener.is_none() {
                    listener = connect_listener(&pool).await;
                }
                continue;
            }
            let outcome = match &self.target {
                Target::Postgres(p) => {
                    apply_batch(&pool, p.as_ref(), &name, checkpoint, &batch).await
                }
                Target::External(sink) => {
                    self.deliver_batch(sink.as_ref(), checkpoint, &batch, &mut state, token)
                        .await
                }
            };
            match outcome {
                Ok(BatchOutcome::Applied(next)) => {
                    failures = 0;
                    checkpoint = next;
                    metrics::gauge!("fleetledger_projection_position", "projection" => name.clone())
                        .set(checkpoint.global_position as f64);
                    metrics::counter!("fleetledger_projection_events_total", "projection" => name.clone())
                        .increment(batch.len() as u64);
                }
                Ok(BatchOutcome::Poison {
                    applied,
                    index,
                    reason,
                }) => {
                    let event = &batch[index];
                    status::set_failed(&pool, &name, event.checkpoint(), Some(event), &reason)
                        .await?;
                    tracing::error!(projection = %name, position = event.global_position,
                        event.id = %event.event_id, event.type = %event.event_type, error = %reason,
                        checkpoint = %applied, "projection stopped at an event it cannot apply");
                    return idle_failed(&mut lease, &name, token, &self.options, &pool).await;
                }
                Err(e) if matches!(&e, RuntimeError::Database(db) if eventstore::error::is_transient_sqlx(db)) =>
                {
                    failures += 1;
                    let delay = backoff(&self.options, failures);
                    tracing::warn!(projection = %name, error = %e, "batch failed; retrying");
                    sleep_or_cancel(delay, token).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Carry out the repair the migrations asked for (`projection_checkpoints.repair_reason`)
    /// under the lease, before anything else is applied: a read model is rebuilt from the start
    /// of the log and swapped in at its live checkpoint; an external sink gets the whole log
    /// again (its consumers drop duplicates by event id). `Some(())` means the projection
    /// stopped (the rebuild met an event it cannot apply) and was left failed, idle.
    async fn repair(
        &self,
        name: &str,
        reason: &str,
        lease: &mut Lease,
        token: &CancellationToken,
    ) -> Result<Option<()>, RuntimeError> {
        let pool = self.store.pool();
        status::set_state(pool, name, State::Repairing, Some(&self.options.owner)).await?;
        tracing::warn!(projection = %name, reason, "repairing the projection before it carries on");
        match &self.target {
            Target::External(_) => {
                sqlx::query(
                    "UPDATE projection_checkpoints SET transaction_id = $2, global_position = 0, \
                       repair_reason = NULL, updated_at = now() WHERE name = $1",
                )
                .bind(name)
                .bind(Xid8(0))
                .execute(pool)
                .await?;
                tracing::warn!(projection = %name,
                    "delivering the whole log again; consumers drop the duplicates by event id");
            }
            Target::Postgres(projection) => {
                let options = crate::rebuild::RebuildOptions {
                    batch_size: self.options.batch_size.max(1_000),
                    verify: false,
                    swap: true,
                    while_paused: None,
                };
                match crate::rebuild::rebuild(
                    &self.store,
                    projection.as_ref(),
                    &options,
                    &|_, _| {},
                )
                .await
                {
                    Ok(report) => {
                        tracing::info!(projection = %name, events = report.events,
                            checkpoint = %report.checkpoint, "projection repaired");
                    }
                    Err(crate::rebuild::RebuildError::Apply {
                        position, reason, ..
                    }) => {
                        let reason = format!("repair stopped at position {position}: {reason}");
                        status::set_failed(pool, name, Checkpoint::START, None, &reason).await?;
                        tracing::error!(projection = %name, error = %reason, "repair failed");
                        idle_failed(lease, name, token, &self.options, pool).await?;
                        return Ok(Some(()));
                    }
                    Err(crate::rebuild::RebuildError::Busy(_)) => {
                        // An operator's rebuild is running; it clears the mark when it swaps.
                        return Err(RuntimeError::Busy(name.to_owned()));
                    }
                    Err(crate::rebuild::RebuildError::Database(e)) => return Err(e.into()),
                    Err(crate::rebuild::RebuildError::Store(e)) => return Err(e.into()),
                }
            }
        }
        Ok(None)
    }

    async fn prepare_sink(
        &self,
        sink: &Arc<dyn ExternalSink>,
        token: &CancellationToken,
    ) -> Result<(), RuntimeError> {
        let name = sink.name().to_owned();
        let mut failures = 0u32;
        loop {
            match sink.prepare().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    failures += 1;
                    let delay = backoff(&self.options, failures);
                    status::set_state_with_error(
                        self.store.pool(),
                        &name,
                        State::Stalled,
                        &e.to_string(),
                    )
                    .await?;
                    tracing::warn!(projection = %name, error = %e, "sink not ready; retrying");
                    if sleep_or_cancel(delay, token).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Deliver until acknowledged (or poison), then move the checkpoint.
    async fn deliver_batch(
        &self,
        sink: &dyn ExternalSink,
        from: Checkpoint,
        batch: &[RecordedEvent],
        state: &mut State,
        token: &CancellationToken,
    ) -> Result<BatchOutcome, RuntimeError> {
        let name = sink.name().to_owned();
        let pool = self.store.pool();
        let mut failures = 0u32;
        loop {
            match sink.deliver(batch).await {
                Ok(()) => {
                    let to = batch.last().map_or(from, RecordedEvent::checkpoint);
                    advance_external(pool, &name, from, to).await?;
                    if *state == State::Stalled {
                        *state = State::CatchingUp;
                        status::set_state(pool, &name, *state, Some(&self.options.owner)).await?;
                    }
                    return Ok(BatchOutcome::Applied(to));
                }
                Err(SinkError::Poison { index, reason }) => {
                    let index = index.min(batch.len().saturating_sub(1));
                    let applied = if index == 0 {
                        from
                    } else {
                        let to = batch[index - 1].checkpoint();
                        advance_external(pool, &name, from, to).await?;
                        to
                    };
                    return Ok(BatchOutcome::Poison {
                        applied,
                        index,
                        reason,
                    });
                }
                Err(SinkError::Transient(reason)) => {
                    failures += 1;
                    let delay = backoff(&self.options, failures);
                    if *state != State::Stalled {
                        *state = State::Stalled;
                    }
                    status::set_state_with_error(pool, &name, State::Stalled, &reason).await?;
                    metrics::counter!("fleetledger_projection_stalls_total", "projection" => name.clone())
                        .increment(1);
                    tracing::warn!(projection = %name, error = %reason,
                        retry_in_ms = delay.as_millis() as u64, "delivery failed; retrying the batch");
                    if sleep_or_cancel(delay, token).await {
                        // Shutting down: nothing was acknowledged past `from`.
                        return Ok(BatchOutcome::Applied(from));
                    }
                }
            }
        }
    }
}

/// Apply a batch and move the checkpoint in one transaction. If the batch fails for good,
/// the event at fault is found, the events before it are applied, and the failure reported.
async fn apply_batch(
    pool: &PgPool,
    projection: &dyn Projection,
    name: &str,
    from: Checkpoint,
    batch: &[RecordedEvent],
) -> Result<BatchOutcome, RuntimeError> {
    let to = batch.last().map_or(from, RecordedEvent::checkpoint);
    let mut tx = pool.begin().await?;
    // It appends no events: readers of the log need not wait for it, even stuck.
    eventstore::quiet::declare(&mut tx).await?;
    // A rebuild swapping this projection's tables pauses it here, before this transaction
    // writes anything (so it waits without a transaction id).
    sqlx::query(&format!(
        "SELECT pg_advisory_xact_lock_shared({})",
        crate::rebuild::SWAP_LOCK
    ))
    .bind(name)
    .execute(&mut *tx)
    .await?;
    lock_checkpoint(&mut tx, name, from).await?;
    let attempt = async {
        apply_events(&mut tx, projection, batch).await?;
        store_checkpoint(&mut tx, name, to).await?;
        // Deferred constraints are checked here: a failure is the batch's too.
        tx.commit().await?;
        Ok::<_, ApplyError>(())
    };
    match attempt.await {
        Ok(()) => return Ok(BatchOutcome::Applied(to)),
        Err(e) if e.is_transient() => return Err(transient(e)),
        Err(e) => {
            tracing::debug!(projection = %name, error = %e, "batch failed; locating the event");
        }
    }
    let mut tx = pool.begin().await?;
    eventstore::quiet::declare(&mut tx).await?;
    lock_checkpoint(&mut tx, name, from).await?;
    sqlx::query("SET CONSTRAINTS ALL IMMEDIATE")
        .execute(&mut *tx)
        .await?;
    match locate_failure(&mut tx, projection, batch).await {
        Ok(Some((index, e))) => {
            let applied = if index == 0 {
                from
            } else {
                let at = batch[index - 1].checkpoint();
                store_checkpoint(&mut tx, name, at).await?;
                at
            };
            tx.commit().await?;
            Ok(BatchOutcome::Poison {
                applied,
                index,
                reason: e.to_string(),
            })
        }
        Ok(None) => {
            // One by one, every event applied: the batch failure did not reproduce.
            tracing::warn!(projection = %name, "a batch failed but its events applied one by one");
            store_checkpoint(&mut tx, name, to).await?;
            tx.commit().await?;
            Ok(BatchOutcome::Applied(to))
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(transient(e))
        }
    }
}

fn transient(e: ApplyError) -> RuntimeError {
    match e {
        ApplyError::Database(db) => RuntimeError::Database(db),
        other => RuntimeError::Database(sqlx::Error::Protocol(other.to_string())),
    }
}

/// Run the projection's handler over the wanted events of `events`, as one batch.
pub(crate) async fn apply_events(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    events: &[RecordedEvent],
) -> Result<(), ApplyError> {
    let wanted: Vec<&RecordedEvent> = events.iter().filter(|e| projection.wants(e)).collect();
    if wanted.is_empty() {
        return Ok(());
    }
    projection.apply(conn, &wanted).await
}

/// Apply `events` one at a time, each behind a savepoint, until one fails: its index and
/// error, with every event before it applied on `conn`. `Ok(None)` when all apply.
pub(crate) async fn locate_failure(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    events: &[RecordedEvent],
) -> Result<Option<(usize, ApplyError)>, ApplyError> {
    for (index, event) in events.iter().enumerate() {
        if !projection.wants(event) {
            continue;
        }
        sqlx::query("SAVEPOINT fleetledger_event")
            .execute(&mut *conn)
            .await?;
        match projection.apply(conn, &[event]).await {
            Ok(()) => {
                sqlx::query("RELEASE SAVEPOINT fleetledger_event")
                    .execute(&mut *conn)
                    .await?;
            }
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                sqlx::query("ROLLBACK TO SAVEPOINT fleetledger_event")
                    .execute(&mut *conn)
                    .await?;
                return Ok(Some((index, e)));
            }
        }
    }
    Ok(None)
}

/// Lock the checkpoint row and check it is where this instance left it (the fence).
async fn lock_checkpoint(
    conn: &mut PgConnection,
    name: &str,
    expected: Checkpoint,
) -> Result<(), RuntimeError> {
    let row = sqlx::query(
        "SELECT transaction_id, global_position FROM projection_checkpoints \
         WHERE name = $1 FOR UPDATE",
    )
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    let actual = match row {
        Some(row) => checkpoint_of(&row)?,
        None => return Err(RuntimeError::Fenced(name.to_owned())),
    };
    if actual != expected {
        return Err(RuntimeError::Fenced(name.to_owned()));
    }
    Ok(())
}

pub(crate) async fn store_checkpoint(
    conn: &mut PgConnection,
    name: &str,
    to: Checkpoint,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projection_checkpoints \
         SET transaction_id = $2, global_position = $3, updated_at = now() \
         WHERE name = $1",
    )
    .bind(name)
    .bind(Xid8(to.transaction_id))
    .bind(to.global_position)
    .execute(conn)
    .await?;
    Ok(())
}

async fn advance_external(
    pool: &PgPool,
    name: &str,
    from: Checkpoint,
    to: Checkpoint,
) -> Result<(), RuntimeError> {
    let mut tx = pool.begin().await?;
    eventstore::quiet::declare(&mut tx).await?;
    lock_checkpoint(&mut tx, name, from).await?;
    store_checkpoint(&mut tx, name, to).await?;
    tx.commit().await?;
    Ok(())
}

/// Why the migrations asked for `name` to be repaired before it carries on, if they did.
async fn repair_reason(pool: &PgPool, name: &str) -> Result<Option<String>, sqlx::Error> {
    let reason: Option<Option<String>> =
        sqlx::query_scalar("SELECT repair_reason FROM projection_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?;
    Ok(reason.flatten())
}

/// The stored checkpoint of `name`, creating the row at the start of the log if absent.
pub async fn load_checkpoint(pool: &PgPool, name: &str) -> Result<Checkpoint, sqlx::Error> {
    sqlx::query("INSERT INTO projection_checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(name)
        .execute(pool)
        .await?;
    let row = sqlx::query(
        "SELECT transaction_id, global_position FROM projection_checkpoints WHERE name = $1",
    )
    .bind(name)
    .fetch_one(pool)
    .await?;
    checkpoint_of(&row)
}

pub(crate) fn checkpoint_of(row: &sqlx::postgres::PgRow) -> Result<Checkpoint, sqlx::Error> {
    checkpoint_of_columns(row, 0, 1)
}

/// A checkpoint from a row's `transaction_id` (xid8) and `global_position` columns.
pub(crate) fn checkpoint_of_columns(
    row: &sqlx::postgres::PgRow,
    transaction_column: usize,
    position_column: usize,
) -> Result<Checkpoint, sqlx::Error> {
    Ok(Checkpoint {
        transaction_id: row.try_get::<Xid8, _>(transaction_column)?.0,
        global_position: row.try_get(position_column)?,
    })
}

/// Stay failed (holding the lease, so a standby does not fail the same way) until shutdown.
/// Hold the lease of a failed projection (so no other instance retries the same event), until
/// it is asked to resume ([`status::request_resume`]): then start again from the checkpoint.
async fn idle_failed(
    lease: &mut Lease,
    name: &str,
    token: &CancellationToken,
    options: &RunOptions,
    pool: &PgPool,
) -> Result<(), RuntimeError> {
    loop {
        if sleep_or_cancel(options.lease_poll.min(Duration::from_secs(1)), token).await {
            return Ok(());
        }
        lease.check(name).await?;
        if status::resume_requested(pool, name).await? {
            tracing::warn!(projection = %name, "asked to resume; starting again from the checkpoint");
            return Err(RuntimeError::Resumed(name.to_owned()));
        }
    }
}

async fn connect_listener(pool: &PgPool) -> Option<PgListener> {
    let connect = async {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        Ok::<_, sqlx::Error>(listener)
    };
    match connect.await {
        Ok(listener) => Some(listener),
        Err(e) => {
            tracing::debug!(error = %e, "LISTEN failed; polling");
            None
        }
    }
}

async fn wait_for_events(
    listener: &mut Option<PgListener>,
    appended: &mut watch::Receiver<u64>,
    poll: Duration,
    token: &CancellationToken,
) {
    let sleep = tokio::time::sleep(poll);
    match listener.as_mut() {
        Some(l) => {
            tokio::select! {
                received = l.try_recv() => {
                    if !matches!(received, Ok(Some(_))) {
                        *listener = None;
                    }
                }
                _ = appended.changed() => {}
                () = sleep => {}
                () = token.cancelled() => {}
            }
        }
        None => {
            tokio::select! {
                _ = appended.changed() => {}
                () = sleep => {}
                () = token.cancelled() => {}
            }
        }
    }
}

/// Sleep, or return true at once when cancelled.
async fn sleep_or_cancel(delay: Duration, token: &CancellationToken) -> bool {
    tokio::select! {
        () = token.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

fn backoff(options: &RunOptions, failures: u32) -> Duration {
    Backoff::new(options.min_backoff, options.max_backoff).delay(failures)
}

/// The advisory lock that makes one instance of a projection active.
struct Lease {
    conn: PgConnection,
}

impl Lease {
    /// Wait until this process holds the lease of `name`; `None` when cancelled first.
    async fn acquire(
        pool: &PgPool,
        name: &str,
        options: &RunOptions,
        token: &CancellationToken,
    ) -> Option<Self> {
        let mut announced = false;
        let mut failures = 0u32;
        loop {
            if token.is_cancelled() {
                return None;
            }
            match Self::try_acquire(pool, name).await {
                Ok(Some(lease)) => return Some(lease),
                Ok(None) => {
                    if !announced {
                        tracing::info!(projection = %name, "another instance holds the lease; standing by");
                        announced = true;
                    }
                    if sleep_or_cancel(options.lease_poll, token).await {
                        return None;
                    }
                }
                Err(e) => {
                    failures += 1;
                    let delay = backoff(options, failures);
                    tracing::warn!(projection = %name, error = %e, "cannot try the lease; retrying");
                    if sleep_or_cancel(delay, token).await {
                        return None;
                    }
                }
            }
        }
    }

    async fn try_acquire(pool: &PgPool, name: &str) -> Result<Option<Self>, sqlx::Error> {
        let options = pool
            .connect_options()
            .as_ref()
            .clone()
            .application_name(&format!("fleetledger-lease-{name}"));
        let mut conn = PgConnection::connect_with(&options).await?;
        let taken: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_lock(hashtextextended('fleetledger.projection:' || $1, 0))",
        )
        .bind(name)
        .fetch_one(&mut conn)
        .await?;
        if taken {
            Ok(Some(Self { conn }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    /// Fails when the lease connection is gone (the lock went with it).
    async fn check(&mut self, name: &str) -> Result<(), RuntimeError> {
        match sqlx::query("SELECT 1").execute(&mut self.conn).await {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(projection = %name, error = %e, "lease connection failed");
                Err(RuntimeError::LeaseLost(name.to_owned()))
            }
        }
    }
}
