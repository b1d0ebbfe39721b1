//! Catch-up-then-live subscriptions over the no-skip reader.
//!
//! A subscription reads the log in commit order from its checkpoint, in batches, through the
//! same query as `read_all`. When it has caught up it waits for a wake-up: a NOTIFY from any
//! process that appended, an in-process signal, or the polling interval, whichever comes first.
//! Wake-ups are only hints; what is delivered is always decided by reading after the
//! checkpoint, so a lost notification, a dropped connection or a restarted server can delay
//! delivery but never skip or repeat an event.

use std::collections::VecDeque;
use std::time::Duration;

use futures::Stream;
use rand::Rng;
use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::error::EventStoreError;
use crate::model::{Checkpoint, RecordedEvent};
use crate::store::{EventStore, NOTIFY_CHANNEL};

/// Tuning of a subscription.
#[derive(Clone, Debug)]
pub struct SubscribeOptions {
    /// Events fetched per read.
    pub batch_size: i64,
    /// Longest wait between reads when no notification arrives.
    pub poll_interval: Duration,
    /// First delay after a failed read; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Whether to LISTEN for notifications from other processes.
    pub listen: bool,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            listen: true,
        }
    }
}

/// A position in the log that moves forward one delivered event at a time.
pub struct Subscription {
    store: EventStore,
    checkpoint: Checkpoint,
    buffer: VecDeque<RecordedEvent>,
    listener: Option<PgListener>,
    local: watch::Receiver<u64>,
    options: SubscribeOptions,
    failures: u32,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("checkpoint", &self.checkpoint)
            .field("buffered", &self.buffer.len())
            .field("listening", &self.listener.is_some())
            .finish()
    }
}

impl Subscription {
    pub(crate) fn new(store: EventStore, after: Checkpoint, options: SubscribeOptions) -> Self {
        let local = store.appended_signal();
        Self {
            store,
            checkpoint: after,
            buffer: VecDeque::new(),
            listener: None,
            local,
            options,
            failures: 0,
        }
    }

    /// The checkpoint of the last event returned by [`Subscription::next`].
    pub fn checkpoint(&self) -> Checkpoint {
        self.checkpoint
    }

    /// The next event in commit order, waiting for it if needed.
    ///
    /// Transient database failures are retried with backoff inside this call. It returns an
    /// error only for what retrying cannot fix (a payload no upcaster can lift, a corrupt row);
    /// the checkpoint then stays before the failing event.
    pub async fn next(&mut self) -> Result<RecordedEvent, EventStoreError> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.checkpoint = event.checkpoint();
                return Ok(event);
            }
            if self.options.listen && self.listener.is_none() {
                self.listener = self.connect_listener().await;
            }
            // Mark the signal seen before reading, so an append after this read wakes us.
            self.local.borrow_and_update();
            let after = self.buffer_end();
            match self.store.read_all(after, self.options.batch_size).await {
                Ok(batch) if !batch.is_empty() => {
                    self.failures = 0;
                    self.buffer.extend(batch);
                }
                Ok(_) => {
                    self.failures = 0;
                    self.wait().await;
                }
                Err(e) if e.is_transient() => {
                    self.failures += 1;
                    let delay = self.backoff();
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64,
                        checkpoint = %self.checkpoint, "subscription read failed; retrying");
                    // A dead connection may also have taken the listener with it.
                    self.listener = None;
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Turn the subscription into a `Stream` of events.
    pub fn into_stream(self) -> impl Stream<Item = Result<RecordedEvent, EventStoreError>> + Send {
        futures::stream::unfold(self, |mut sub| async move {
            let item = sub.next().await;
            Some((item, sub))
        })
    }

    fn buffer_end(&self) -> Checkpoint {
        self.buffer
            .back()
            .map_or(self.checkpoint, RecordedEvent::checkpoint)
    }

    async fn connect_listener(&self) -> Option<PgListener> {
        let connect = async {
            let mut listener = PgListener::connect_with(self.store.pool()).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match connect.await {
            Ok(listener) => Some(listener),
            Err(e) => {
                tracing::debug!(error = %e, "LISTEN failed; polling until it works");
                None
            }
        }
    }

    async fn wait(&mut self) {
        let poll = tokio::time::sleep(self.options.poll_interval);
        match self.listener.as_mut() {
            Some(listener) => {
                tokio::select! {
                    received = listener.try_recv() => {
                        if let Err(e) = received {
                            tracing::debug!(error = %e, "LISTEN connection failed");
                            self.listener = None;
                        }
                    }
                    _ = self.local.changed() => {}
                    _ = poll => {}
                }
            }
            None => {
                tokio::select! {
                    _ = self.local.changed() => {}
                    _ = poll => {}
                }
            }
        }
    }

    fn backoff(&self) -> Duration {
        let base = crate::backoff::Backoff::new(self.options.min_backoff, self.options.max_backoff)
            .delay(self.failures);
        // Full jitter between half and all of the delay.
        let half = base / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }
}
