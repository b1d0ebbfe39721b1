//! `fleetledger relay`: the Kafka relay as a process of its own, and in-process for `serve`.
//!
//! The relay is the projector `relay.kafka` (lease, no-skip reader, checkpoint); several relay
//! processes may run, one delivers and the others wait as hot standbys.

use std::future::Future;
use std::process::ExitCode;

use anyhow::{Context, Result};
use eventstore::EventStore;
use projections::runtime::{Projector, RunOptions};

use crate::config::Config;
use crate::db;

/// Why the relay does not run when `KAFKA_BROKERS` is unset.
pub const OFF: &str = "the Kafka relay is off: KAFKA_BROKERS is not set. Set it to the \
     brokers' host:port list (e.g. KAFKA_BROKERS=127.0.0.1:9092); see .env.example for the \
     other FLEETLEDGER_KAFKA_* settings";

/// The relay projector over `store`, or `None` when `KAFKA_BROKERS` is unset (the embedded
/// default runs without Kafka). `serve` may spawn it with [`Projector::run`].
pub fn projector(store: EventStore, config: &Config) -> Result<Option<Projector>> {
    let Some(kafka) = config.kafka.clone() else {
        return Ok(None);
    };
    let projector = relay::projector(store, kafka, RunOptions::default())
        .context("starting the Kafka producer")?;
    Ok(Some(projector))
}

/// `fleetledger relay`: run until `shutdown`; exit code 2 with a message when Kafka is not
/// configured.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<ExitCode> {
    if config.kafka.is_none() {
        eprintln!("{OFF}");
        return Ok(ExitCode::from(2));
    }
    let pool = db::connect_and_migrate(&config, "fleetledger-relay").await?;
    let Some(projector) = projector(commands::upcasters::event_store(pool), &config)? else {
        return Ok(ExitCode::from(2));
    };
    if let Some(kafka) = &config.kafka {
        tracing::info!(brokers = %kafka.brokers, topic_prefix = %kafka.topic_prefix,
            "relay starting (waits for the lease if another relay holds it)");
    }
    projector.run(shutdown).await.context("relay")?;
    tracing::info!("relay stopped");
    Ok(ExitCode::SUCCESS)
}
