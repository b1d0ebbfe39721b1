//! The command executor: load (snapshot + events), handle, append at the loaded version,
//! retry on conflict with bounded jittered backoff.
//!
//! cqrs-es's `CqrsFramework` is not used (DESIGN.md decision 1): it cannot return global
//! positions and runs queries in-process after commit. This executor keeps cqrs-es's
//! `Aggregate` contract and adds, per process:
//! - a striped lock, so commands for one aggregate issued in this process queue up instead of
//!   conflicting with each other (other processes are still handled by the version check);
//! - a bounded cache of loaded aggregates, so a command on a warm aggregate costs one INSERT.
//!   A cached state is only a guess: the append is checked against its version, a conflict
//!   drops it, and a rule violation found on a cached state is re-checked on a fresh load.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use eventstore::{
    EventMetadata, EventStore, EventStoreError, RecordedEvent, StreamAppend, StreamHead, StreamId,
};
use lru::LruCache;
use rand::Rng;
use serde_json::json;
use tokio::sync::Mutex;

use crate::codec::{self, CodecError};
use crate::context::CommandContext;

/// How conflicts are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles each time up to `max_delay`, fully jittered.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(200),
        }
    }
}

impl RetryPolicy {
    /// The pause after failed attempt number `attempt` (1-based): uniform in [0, cap].
    pub fn delay(&self, attempt: u32) -> Duration {
        let cap = eventstore::backoff::Backoff::new(self.base_delay, self.max_delay).delay(attempt);
        rand::rng().random_range(Duration::ZERO..=cap)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutorConfig {
    pub retry: RetryPolicy,
    /// Write a snapshot each time a stream crosses a multiple of this many events (0 = never).
    pub snapshot_every: u64,
    /// Version of the aggregate state's shape; snapshots of another version are ignored.
    pub snapshot_state_version: u32,
    /// Loaded aggregates kept in memory (0 = always load).
    pub cache_capacity: usize,
    /// Number of per-process locks aggregates are spread over.
    pub lock_stripes: usize,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            snapshot_every: 100,
            snapshot_state_version: 1,
            cache_capacity: 10_000,
            lock_stripes: 256,
        }
    }
}

/// An aggregate's state and the head of its stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded<A> {
    pub state: A,
    pub head: StreamHead,
    /// The version of the snapshot the load started from, if any.
    pub snapshot_version: Option<i64>,
}

/// What a successful command wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Committed {
    /// The events as stored, with their global positions (empty when the command was a no-op).
    pub events: Vec<RecordedEvent>,
    /// The stream's head after the command.
    pub head: StreamHead,
    /// Attempts it took (1 = no conflict).
    pub attempts: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError<E: std::error::Error> {
    /// The aggregate refused the command (a business rule).
    #[error(transparent)]
    Rejected(E),
    /// Every attempt met a concurrent writer.
    #[error("gave up after {attempts} attempts: {source}")]
    Conflict {
        attempts: u32,
        #[source]
        source: EventStoreError,
    },
    #[error(transparent)]
    Store(#[from] EventStoreError),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

type Stripe<A> = Mutex<Option<LruCache<String, Loaded<A>>>>;

/// Runs commands of one aggregate type. Cheap to clone.
pub struct Executor<A: Aggregate> {
    inner: Arc<Inner<A>>,
}

impl<A: Aggregate> Clone for Executor<A> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<A: Aggregate> {
    store: EventStore,
    services: A::Services,
    config: ExecutorConfig,
    stripes: Vec<Stripe<A>>,
}

enum Attempt<A: Aggregate> {
    Done(Committed),
    Conflict(EventStoreError),
    Failed(ExecuteError<A::Error>),
}

impl<A> Executor<A>
where
    A: Aggregate + Clone,
    A::Command: Clone,
{
    pub fn new(store: EventStore, services: A::Services, config: ExecutorConfig) -> Self {
        let stripes = config.lock_stripes.max(1);
        let per_stripe = NonZeroUsize::new(config.cache_capacity.div_ceil(stripes));
        Self {
            inner: Arc::new(Inner {
                store,
                services,
                stripes: (0..stripes)
                    .map(|_| Mutex::new(per_stripe.map(LruCache::new)))
                    .collect(),
                config,
            }),
        }
    }

    pub fn store(&self) -> &EventStore {
        &self.inner.store
    }

    /// Run `command` on aggregate `id`, retrying concurrency conflicts per the policy.
    #[tracing::instrument(skip_all, fields(aggregate.type = A::TYPE, aggregate.id = %id), err(level = "debug"))]
    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
        ctx: &CommandContext,
    ) -> Result<Committed, ExecuteError<A::Error>> {
        let stream = StreamId::new(A::TYPE, id);
        let metadata = ctx.metadata();
        let policy = &self.inner.config.retry;
        let mut attempt = 1;
        loop {
            let outcome = {
                let mut cache = self.stripe(id).lock().await;
                self.attempt(&mut cache, &stream, command.clone(), &metadata)
                    .await
            };
            match outcome {
                Attempt::Done(mut committed) => {
                    committed.attempts = attempt;
                    return Ok(committed);
                }
                Attempt::Failed(e) => return Err(e),
                Attempt::Conflict(source) if attempt >= policy.max_attempts => {
                    return Err(ExecuteError::Conflict {
                        attempts: attempt,
                        source,
                    });
                }
                Attempt::Conflict(source) => {
                    tracing::debug!(attempt, error = %source, "conflict; retrying");
                    tokio::time::sleep(policy.delay(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn attempt(
        &self,
        cache: &mut Option<LruCache<String, Loaded<A>>>,
        stream: &StreamId,
        command: A::Command,
        metadata: &EventMetadata,
    ) -> Attempt<A> {
        let id = &stream.aggregate_id;
        let cached = cache.as_mut().and_then(|c| c.get(id).cloned());
        let from_cache = cached.is_some();
        let mut loaded = match cached {
            Some(loaded) => loaded,
            None => match self.load(id).await {
                Ok(loaded) => loaded,
                Err(e) => return Attempt::Failed(e),
            },
        };
        let before = loaded.clone();
        let mut events = match self.handle(&mut loaded.state, command.clone()).await {
            Ok(events) => events,
            Err(rejection) if from_cache => {
                // The cache may be behind another process: decide on fresh state.
                let fresh = match self.load(id).await {
                    Ok(fresh) => fresh,
                    Err(e) => return Attempt::Failed(e),
                };
                if fresh.head == before.head {
                    return Attempt::Failed(ExecuteError::Rejected(rejection));
                }
                loaded = fresh;
                match self.handle(&mut loaded.state, command).await {
                    Ok(events) => events,
                    Err(rejection) => {
                        put(
                            cache,
                            id,
                            Loaded {
                                state: before.state.clone(),
                                ..loaded
                            },
                        );
                        return Attempt::Failed(ExecuteError::Rejected(rejection));
                    }
                }
            }
            Err(rejection) => return Attempt::Failed(ExecuteError::Rejected(rejection)),
        };
        if events.is_empty() {
            return Attempt::Done(Committed {
                events: Vec::new(),
                head: loaded.head,
                attempts: 1,
            });
        }
        let encoded = match events
            .drain(..)
            .map(|e| codec::encode(&e))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(encoded) => encoded,
            Err(e) => return Attempt::Failed(e.into()),
        };
        let append = StreamAppend::after(stream.clone(), loaded.head, encoded);
        match self.inner.store.append(&[append], metadata).await {
            Ok(recorded) => {
                let previous = loaded.head.version;
                let head = recorded
                    .last()
                    .and_then(RecordedEvent::head)
                    .unwrap_or(loaded.head);
                loaded.head = head;
                self.maybe_snapshot(stream, previous, &loaded).await;
                put(cache, id, loaded);
                Attempt::Done(Committed {
                    events: recorded,
                    head,
                    attempts: 1,
                })
            }
            Err(e) => {
                if let Some(c) = cache.as_mut() {
                    c.pop(id);
                }
                match e {
                    EventStoreError::OptimisticConcurrency { .. } => Attempt::Conflict(e),
                    e => Attempt::Failed(e.into()),
                }
            }
        }
    }

    async fn handle(&self, state: &mut A, command: A::Command) -> Result<Vec<A::Event>, A::Error> {
        let sink = EventSink::default();
        state.handle(command, &self.inner.services, &sink).await?;
        Ok(sink.collect().await)
    }

    /// Run `command` against a loaded aggregate without writing anything: the state after it
    /// and the append that would record it (`None` when the command emits nothing). Used by
    /// callers that append several aggregates in one transaction.
    pub async fn decide(
        &self,
        id: &str,
        loaded: &Loaded<A>,
        command: A::Command,
    ) -> Result<(Loaded<A>, Option<StreamAppend>), ExecuteError<A::Error>> {
        let mut after = loaded.clone();
        let events = self
            .handle(&mut after.state, command)
            .await
            .map_err(ExecuteError::Rejected)?;
        if events.is_empty() {
            return Ok((after, None));
        }
        let encoded = events
            .iter()
            .map(codec::encode)
            .collect::<Result<Vec<_>, _>>()?;
        let append = StreamAppend::after(StreamId::new(A::TYPE, id), loaded.head, encoded);
        Ok((after, Some(append)))
    }

    /// Drop a cached aggregate (after another component appended to its stream).
    pub async fn forget(&self, id: &str) {
        let mut cache = self.stripe(id).lock().await;
        if let Some(c) = cache.as_mut() {
            c.pop(id);
        }
    }

    /// Load an aggregate from its latest usable snapshot plus the events after it.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, ExecuteError<A::Error>> {
        let stream = StreamId::new(A::TYPE, id);
        let mut loaded = Loaded {
            state: A::default(),
            head: StreamHead::EMPTY,
            snapshot_version: None,
        };
        if let Some(snapshot) = self.inner.store.load_snapshot(&stream).await? {
            match self.snapshot_state(&snapshot.state) {
                Some(state) => {
                    loaded.state = state;
                    loaded.head = snapshot.head;
                    loaded.snapshot_version = Some(snapshot.head.version);
                }
                None => {
                    tracing::warn!(stream = %stream, "snapshot of another state version ignored")
                }
            }
        }
        let events = self
            .inner
            .store
            .read_stream(&stream, loaded.head.version + 1, None)
            .await?;
        apply_all(&mut loaded, &events)?;
        Ok(loaded)
    }

    /// Load an aggregate from its events alone, ignoring snapshots and the cache.
    pub async fn load_from_events(&self, id: &str) -> Result<Loaded<A>, ExecuteError<A::Error>> {
        let stream = StreamId::new(A::TYPE, id);
        let events = self.inner.store.read_stream(&stream, 1, None).await?;
        let mut loaded = Loaded {
            state: A::default(),
            head: StreamHead::EMPTY,
            snapshot_version: None,
        };
        apply_all(&mut loaded, &events)?;
        Ok(loaded)
    }

    fn snapshot_state(&self, stored: &serde_json::Value) -> Option<A> {
        snapshot_state(stored, self.inner.config.snapshot_state_version)
    }

    async fn maybe_snapshot(&self, stream: &StreamId, previous: i64, loaded: &Loaded<A>) {
        let every = self.inner.config.snapshot_every;
        let Ok(every) = i64::try_from(every) else {
            return;
        };
        if every == 0 || loaded.head.version / every == previous / every {
            return;
        }
        let state = match serde_json::to_value(&loaded.state) {
            Ok(state) => {
                json!({ "state_version": self.inner.config.snapshot_state_version, "state": state })
            }
            Err(e) => {
                tracing::warn!(stream = %stream, error = %e, "aggregate state does not serialize; no snapshot");
                return;
            }
        };
        if let Err(e) = self
            .inner
            .store
            .save_snapshot(stream, loaded.head, &state)
            .await
        {
            // A missing snapshot only makes the next load longer.
            tracing::warn!(stream = %stream, error = %e, "could not save snapshot");
        }
    }

    fn stripe(&self, id: &str) -> &Stripe<A> {
        let mut hasher = DefaultHasher::new();
        id.hash(&mut hasher);
        let n = self.inner.stripes.len() as u64;
        // n > 0 by construction; the index is < n so it fits usize.
        &self.inner.stripes[(hasher.finish() % n) as usize]
    }
}

fn put<A>(cache: &mut Option<LruCache<String, Loaded<A>>>, id: &str, loaded: Loaded<A>) {
    if let Some(c) = cache.as_mut() {
        c.put(id.to_owned(), loaded);
    }
}

fn apply_all<A: Aggregate>(
    loaded: &mut Loaded<A>,
    events: &[RecordedEvent],
) -> Result<(), CodecError> {
    for event in events {
        loaded.state.apply(codec::decode::<A>(event)?);
        if let Some(head) = event.head() {
            loaded.head = head;
        }
    }
    Ok(())
}

/// The state a stored snapshot holds (`{"state_version": N, "state": …}`), when it was written
/// for `state_version` and still reads as today's state; `None` otherwise (rebuild from events).
pub fn snapshot_state<A: Aggregate>(stored: &serde_json::Value, state_version: u32) -> Option<A> {
    let version = stored.get("state_version")?.as_u64()?;
    if version != u64::from(state_version) {
        return None;
    }
    serde_json::from_value(stored.get("state")?.clone()).ok()
}

/// Rebuild an aggregate's state from stored events (already upcast), e.g. for auditors.
pub fn replay<A: Aggregate>(events: &[RecordedEvent]) -> Result<A, CodecError> {
    let mut state = A::default();
    for event in events {
        state.apply(codec::decode::<A>(event)?);
    }
    Ok(state)
}
