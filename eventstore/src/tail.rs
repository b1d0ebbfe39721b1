//! One tail of the log per process, fanned out in memory.
//!
//! A [`Subscription`] reads the log on its own: a thousand open GraphQL subscriptions were a
//! thousand readers polling the database four times a second each, and each fetched every
//! event with its payload to throw most away. A `LogTail` is one such reader for the whole
//! process; it publishes every event it reads to a broadcast channel, and each subscriber keeps
//! what its filter wants. A subscriber that starts behind the tail (a position in the past), or
//! falls so far behind that the channel dropped events for it, reads the gap from the log
//! itself, up to the tail's position, then listens again: nothing is skipped and nothing is
//! repeated, whatever the timing (the tail's position and a new receiver are taken under one
//! lock, so every event after that position reaches the receiver).
//!
//! The tail starts with its first subscriber, at the log's visible head, and stops once the
//! `LogTail` and every stream made from it are dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::Stream;
use tokio::sync::{OnceCell, broadcast};

use crate::error::EventStoreError;
use crate::model::{Checkpoint, RecordedEvent};
use crate::store::EventStore;
use crate::subscribe::SubscribeOptions;

/// Events a subscriber may fall behind the tail before it reads the gap from the log.
const CHANNEL_CAPACITY: usize = 4_096;

/// The process's one reader of the log. Cheap to clone.
#[derive(Clone)]
pub struct LogTail {
    inner: Arc<Inner>,
}

struct Inner {
    store: EventStore,
    options: SubscribeOptions,
    capacity: usize,
    started: OnceCell<()>,
    state: Mutex<Published>,
}

/// What the tail has published: its channel, and the checkpoint of the last event sent.
struct Published {
    sender: broadcast::Sender<Arc<RecordedEvent>>,
    position: Checkpoint,
    /// Why the tail stopped (an event no upcaster can read), once it has.
    failed: Option<String>,
}

impl std::fmt::Debug for LogTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogTail").finish_non_exhaustive()
    }
}

impl LogTail {
    /// A tail over `store`, reading as `options` say (batch size, polling, LISTEN).
    pub fn new(store: EventStore, options: SubscribeOptions) -> Self {
        Self::with_capacity(store, options, CHANNEL_CAPACITY)
    }

    /// [`LogTail::new`] with a channel of `capacity` events (tests make it small to exercise
    /// subscribers that fall behind).
    pub fn with_capacity(store: EventStore, options: SubscribeOptions, capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self {
            inner: Arc::new(Inner {
                store,
                options,
                capacity: capacity.max(1),
                started: OnceCell::new(),
                state: Mutex::new(Published {
                    sender,
                    position: Checkpoint::START,
                    failed: None,
                }),
            }),
        }
    }

    /// Every event after `after` that `keep` wants, in commit order: first from the log where
    /// `after` is behind the tail, then as the tail publishes them.
    pub fn subscribe<F>(
        &self,
        after: Checkpoint,
        keep: F,
    ) -> impl Stream<Item = Result<RecordedEvent, EventStoreError>> + Send + 'static + use<F>
    where
        F: Fn(&RecordedEvent) -> bool + Send + Sync + 'static,
    {
        let follower = Follower {
            tail: self.clone(),
            last: after,
            keep: Box::new(keep),
            mode: Mode::Start,
            buffer: VecDeque::new(),
            failures: 0,
        };
        futures::stream::unfold(follower, |mut f| async move {
            let item = f.next().await;
            Some((item, f))
        })
    }

    /// The checkpoint of the last event the tail published.
    pub fn position(&self) -> Checkpoint {
        self.lock().position
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Published> {
        // A panic while holding this lock leaves consistent data (two plain assignments).
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn start(&self) -> Result<(), EventStoreError> {
        self.inner
            .started
            .get_or_try_init(|| async {
                let head = self.inner.store.visible_head().await?;
                self.lock().position = head;
                let subscription = self
                    .inner
                    .store
                    .subscribe_with(head, self.inner.options.clone());
                tokio::spawn(run(Arc::downgrade(&self.inner), subscription));
                Ok::<_, EventStoreError>(())
            })
            .await?;
        Ok(())
    }

    /// A receiver of everything published after the returned position.
    fn receiver(&self) -> (broadcast::Receiver<Arc<RecordedEvent>>, Checkpoint) {
        let state = self.lock();
        (state.sender.subscribe(), state.position)
    }
}

/// The tail's task: read, publish, until the tail is dropped.
async fn run(inner: Weak<Inner>, mut subscription: crate::subscribe::Subscription) {
    loop {
        // Wake up now and then to notice that nobody holds the tail any more.
        let next = tokio::time::timeout(Duration::from_secs(1), subscription.next()).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match next {
            Err(_) => {}
            Ok(Ok(event)) => {
                let mut state = inner
                    .state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                state.position = event.checkpoint();
                // No receiver is fine: nobody listens right now.
                let _ = state.sender.send(Arc::new(event));
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, checkpoint = %subscription.checkpoint(),
                    "the log tail stopped at an event it cannot read");
                let mut state = inner
                    .state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                state.failed = Some(e.to_string());
                // Dropping the sender's clone is not possible while it is shared; replace it,
                // which closes every receiver.
                let (closed, _) = broadcast::channel(inner.capacity);
                state.sender = closed;
                return;
            }
        }
    }
}

enum Mode {
    /// Take a receiver and the tail's position; read the gap first if behind it.
    Start,
    /// Read the log directly up to `upto`, then follow `rx`.
    CatchUp {
        rx: broadcast::Receiver<Arc<RecordedEvent>>,
        upto: Checkpoint,
    },
    Live(broadcast::Receiver<Arc<RecordedEvent>>),
}

struct Follower {
    tail: LogTail,
    last: Checkpoint,
    keep: Box<dyn Fn(&RecordedEvent) -> bool + Send + Sync>,
    mode: Mode,
    buffer: VecDeque<RecordedEvent>,
    failures: u32,
}

impl Follower {
    async fn next(&mut self) -> Result<RecordedEvent, EventStoreError> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Ok(event);
            }
            match std::mem::replace(&mut self.mode, Mode::Start) {
                Mode::Start => {
                    self.tail.start().await?;
                    if let Some(reason) = self.tail.lock().failed.clone() {
                        return Err(EventStoreError::Corrupt(format!(
                            "the log tail stopped: {reason}"
                        )));
                    }
                    let (rx, upto) = self.tail.receiver();
                    self.mode = if self.last < upto {
                        Mode::CatchUp { rx, upto }
                    } else {
                        Mode::Live(rx)
                    };
                }
                Mode::CatchUp { rx, upto } => {
                    let batch = match self
                        .tail
                        .inner
                        .store
                        .read_all(self.last, self.tail.inner.options.batch_size)
                        .await
                    {
                        Ok(batch) => batch,
                        Err(e) if e.is_transient() => {
                            self.failures += 1;
                            let delay = Duration::from_millis(50 << self.failures.min(6));
                            tracing::warn!(error = %e, "log tail catch-up read failed; retrying");
                            tokio::time::sleep(delay).await;
                            self.mode = Mode::CatchUp { rx, upto };
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    self.failures = 0;
                    let mut reached = batch.is_empty();
                    for event in batch {
                        if event.checkpoint() > upto {
                            reached = true;
                            break;
                        }
                        self.last = event.checkpoint();
                        if (self.keep)(&event) {
                            self.buffer.push_back(event);
                        }
                    }
                    self.mode = if reached || self.last >= upto {
                        Mode::Live(rx)
                    } else {
                        Mode::CatchUp { rx, upto }
                    };
                }
                Mode::Live(mut rx) => match rx.recv().await {
                    Ok(event) => {
                        if event.checkpoint() > self.last {
                            self.last = event.checkpoint();
                            if (self.keep)(&event) {
                                self.buffer.push_back(RecordedEvent::clone(&event));
                            }
                        }
                        self.mode = Mode::Live(rx);
                    }
                    // Fell behind by more than the channel holds: read the gap from the log.
                    Err(broadcast::error::RecvError::Lagged(_)) => self.mode = Mode::Start,
                    Err(broadcast::error::RecvError::Closed) => {
                        let reason = self.tail.lock().failed.clone().unwrap_or_default();
                        return Err(EventStoreError::Corrupt(format!(
                            "the log tail stopped: {reason}"
                        )));
                    }
                },
            }
        }
    }
}
