//! Fleetledger's Kafka relay: every event of the log, as a CloudEvent, on one topic per aggregate type.
//!
//! The relay is a projector with an external target: the projector runtime
//! (`projections::runtime`) reads the log with the no-skip reader under a lease, hands batches to
//! [`KafkaSink`], and moves the checkpoint only after the sink reports that the broker
//! acknowledged every message of the batch. Delivery is therefore at least once: a batch that
//! failed half way is delivered again whole, so consumers see duplicates (same CloudEvents `id`)
//! but never a gap, and each aggregate's events in order on one partition (key = aggregate id).

pub mod cloudevents;
pub mod config;
pub mod error;
pub mod sink;
#[cfg(feature = "testing")]
pub mod testing;
pub mod topics;

pub use config::{AGGREGATE_TYPES, RelayConfig};
pub use error::RelayError;
pub use sink::KafkaSink;

use std::sync::Arc;

use projections::runtime::{Projector, RunOptions};

/// The projector that relays the log to Kafka (checkpoint, lease and status name:
/// `config.name`, `relay.kafka` by default). Its batch size is `config.batch_size`; the other
/// run options (polling, lease, backoff) come from `options`.
pub fn projector(
    store: eventstore::EventStore,
    config: RelayConfig,
    mut options: RunOptions,
) -> Result<Projector, RelayError> {
    options.batch_size = config.batch_size;
    let sink = KafkaSink::new(config)?;
    Ok(Projector::external(store, Arc::new(sink), options))
}
