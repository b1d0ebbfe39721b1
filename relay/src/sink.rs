//! The Kafka sink: produce a batch with an idempotent producer, succeed only when all is acked.
//!
//! Each event goes to `<prefix>.<aggregate type>` with the aggregate id as key, so one
//! aggregate's events land on one partition. The producer is idempotent (`acks=all`,
//! `enable.idempotence`, at most 5 requests in flight), which makes librdkafka keep the order
//! of messages within a partition across its internal retries. [`KafkaSink::deliver`] waits for
//! every message's acknowledgement; if any failed it reports the batch as transiently failed,
//! after every message of the attempt has settled (none is left in flight to overtake the
//! retry), and the runtime delivers the whole batch again: at least once, in order per key
//! counting first occurrences, duplicates only of ids already sent.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use eventstore::RecordedEvent;
use projections::runtime::{ExternalSink, SinkError};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use crate::cloudevents::{self, CONTENT_TYPE};
use crate::topics::ensure_topics;
use crate::{RelayConfig, RelayError};

/// Delivers batches of the log to Kafka. See the module documentation for the guarantees.
pub struct KafkaSink {
    config: RelayConfig,
    producer: Mutex<FutureProducer>,
    /// Whether the topics are known to exist on the broker. Cleared after a failed batch, so a
    /// broker that came back empty gets its topics again before the retry.
    topics_ready: AtomicBool,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// An encoded message, ready to produce.
struct Outgoing {
    topic: String,
    value: Vec<u8>,
}

impl KafkaSink {
    /// A sink for `config`. Builds the producer; connects lazily.
    pub fn new(config: RelayConfig) -> Result<Self, RelayError> {
        config.validate()?;
        let producer = producer(&config)?;
        Ok(Self {
            config,
            producer: Mutex::new(producer),
            topics_ready: AtomicBool::new(false),
        })
    }

    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    fn current_producer(&self) -> FutureProducer {
        match self.producer.lock() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// After a failed batch, start a fresh producer (a new idempotent producer id) for the
    /// retry. A failed idempotent session can be left unusable (fatal error, or the broker
    /// answering `ProducerFenced` / `InvalidProducerEpoch` to every later request); a new
    /// producer is cheap next to a stalled relay, and nothing of the old one is in flight.
    fn replace_producer(&self, old: &FutureProducer) {
        if let Some((code, reason)) = old.client().fatal_error() {
            tracing::warn!(error.code = ?code, error = %reason, "producer failed fatally");
        }
        match producer(&self.config) {
            Ok(fresh) => match self.producer.lock() {
                Ok(mut p) => *p = fresh,
                Err(poisoned) => *poisoned.into_inner() = fresh,
            },
            Err(e) => tracing::error!(error = %e, "cannot start a new producer"),
        }
    }

    fn encode(&self, batch: &[RecordedEvent]) -> Result<Vec<Outgoing>, SinkError> {
        batch
            .iter()
            .enumerate()
            .map(|(index, event)| {
                let topic = self
                    .config
                    .topic_for(&event.aggregate_type)
                    .ok_or_else(|| SinkError::Poison {
                        index,
                        reason: format!("aggregate type {:?} has no topic", event.aggregate_type),
                    })?;
                let value = cloudevents::encode(event, &self.config.source).map_err(|e| {
                    SinkError::Poison {
                        index,
                        reason: format!("cannot encode as a CloudEvent: {e}"),
                    }
                })?;
                Ok(Outgoing { topic, value })
            })
            .collect()
    }

    /// Enqueue every message in order, then wait for every acknowledgement.
    async fn produce_all(
        &self,
        producer: &FutureProducer,
        batch: &[RecordedEvent],
        outgoing: &[Outgoing],
    ) -> Result<(), SinkError> {
        let mut pending: Vec<DeliveryFuture> = Vec::with_capacity(outgoing.len());
        let mut enqueue_error = None;
        'events: for (index, (event, message)) in batch.iter().zip(outgoing).enumerate() {
            loop {
                let headers = OwnedHeaders::new().insert(Header {
                    key: "content-type",
                    value: Some(CONTENT_TYPE),
                });
                let record = FutureRecord::to(&message.topic)
                    .key(event.aggregate_id.as_str())
                    .payload(message.value.as_slice())
                    .headers(headers);
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => {
                        enqueue_error = Some((index, e));
                        break 'events;
                    }
                }
            }
        }
        // Wait for everything enqueued, even after a failure: nothing of this attempt may still
        // be in flight when the batch is retried.
        let results = futures::future::join_all(pending).await;
        let mut first_error: Option<(usize, KafkaError)> = None;
        let mut failed = 0usize;
        for (index, result) in results.into_iter().enumerate() {
            let error = match result {
                Ok(Ok(_)) => continue,
                Ok(Err((e, _))) => e,
                Err(_) => KafkaError::Canceled,
            };
            failed += 1;
            first_error.get_or_insert((index, error));
        }
        if enqueue_error.is_some() {
            failed += 1;
        }
        // The enqueue error is at an index after every enqueued message: delivery errors first.
        let Some((index, error)) = first_error.or(enqueue_error) else {
            return Ok(());
        };
        if is_permanent(&error) {
            // The broker can never take this message (too large for its limits): stop there.
            return Err(SinkError::Poison {
                index,
                reason: error.to_string(),
            });
        }
        Err(SinkError::Transient(format!(
            "{failed} of {} messages not acknowledged; first error (event {}): {error}",
            outgoing.len(),
            batch
                .get(index)
                .map(|e| e.event_id.to_string())
                .unwrap_or_default()
        )))
    }
}

/// Errors that retrying the same message cannot cure.
fn is_permanent(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
    )
}

/// An idempotent producer for `config`, with the settings the sink uses (also for benchmarks
/// that compare the relay with a bare producer).
pub fn producer(config: &RelayConfig) -> Result<FutureProducer, RelayError> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", "fleetledger-relay")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set(
            "message.timeout.ms",
            config.delivery_timeout.as_millis().to_string(),
        )
        // Same key → same partition as Java clients would choose.
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()?)
}

#[async_trait::async_trait]
impl ExternalSink for KafkaSink {
    fn name(&self) -> &str {
        &self.config.name
    }

    async fn prepare(&self) -> Result<(), SinkError> {
        ensure_topics(&self.config)
            .await
            .map_err(|e| SinkError::Transient(e.to_string()))?;
        self.topics_ready.store(true, Ordering::Release);
        Ok(())
    }

    async fn deliver(&self, batch: &[RecordedEvent]) -> Result<(), SinkError> {
        let outgoing = self.encode(batch)?;
        if !self.topics_ready.load(Ordering::Acquire) {
            self.prepare().await?;
        }
        let producer = self.current_producer();
        let started = std::time::Instant::now();
        match self.produce_all(&producer, batch, &outgoing).await {
            Ok(()) => {
                metrics::counter!("fleetledger_relay_messages_total").increment(batch.len() as u64);
                metrics::gauge!("fleetledger_relay_stalled").set(0.0);
                metrics::histogram!("fleetledger_relay_batch_seconds")
                    .record(started.elapsed().as_secs_f64());
                Ok(())
            }
            Err(e) => {
                metrics::counter!("fleetledger_relay_failed_batches_total").increment(1);
                metrics::gauge!("fleetledger_relay_stalled").set(1.0);
                self.topics_ready.store(false, Ordering::Release);
                self.replace_producer(&producer);
                Err(e)
            }
        }
    }
}
