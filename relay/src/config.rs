//! The relay's settings: brokers, topic naming, partitions, CloudEvents source, producer timeouts.

use std::time::Duration;

use crate::RelayError;

/// The aggregate types the log holds; each gets its own topic `<prefix>.<type>`.
pub const AGGREGATE_TYPES: [&str; 4] = ["car", "booking", "payment", "telemetry"];

/// How the relay reaches Kafka and names what it writes there.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// `KAFKA_BROKERS`: comma-separated `host:port` bootstrap servers.
    pub brokers: String,
    /// `FLEETLEDGER_KAFKA_TOPIC_PREFIX` (default `fleetledger`): topics are `<prefix>.car`, ….
    pub topic_prefix: String,
    /// `FLEETLEDGER_KAFKA_PARTITIONS` (default 3): partitions of topics the relay creates.
    pub partitions: i32,
    /// `FLEETLEDGER_KAFKA_REPLICATION` (default 1): replication factor of topics it creates.
    pub replication: i32,
    /// `FLEETLEDGER_CLOUDEVENTS_SOURCE` (default `urn:fleetledger`): the CloudEvents `source`.
    pub source: String,
    /// `FLEETLEDGER_KAFKA_DELIVERY_TIMEOUT_MS` (default 30000): how long the producer tries to
    /// deliver a message before the batch is reported as failed and retried from the log.
    pub delivery_timeout: Duration,
    /// The checkpoint, lease and status name (default `relay.kafka`).
    pub name: String,
    /// `FLEETLEDGER_KAFKA_BATCH` (default 2000): events read, produced and acknowledged per
    /// checkpoint move. Each batch waits for every acknowledgement before the next one starts,
    /// so larger batches amortise that round trip (docs/benchmarks.md).
    pub batch_size: i64,
}

impl RelayConfig {
    /// Defaults for everything but the brokers.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic_prefix: "fleetledger".to_owned(),
            partitions: 3,
            replication: 1,
            source: "urn:fleetledger".to_owned(),
            delivery_timeout: Duration::from_secs(30),
            name: "relay.kafka".to_owned(),
            batch_size: 2000,
        }
    }

    /// Check the values before any client is built.
    pub fn validate(&self) -> Result<(), RelayError> {
        if self.brokers.trim().is_empty() {
            return Err(RelayError::Config("KAFKA_BROKERS is empty".to_owned()));
        }
        let prefix_ok = !self.topic_prefix.is_empty()
            && self.topic_prefix.len() <= 200
            && self
                .topic_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !prefix_ok {
            return Err(RelayError::Config(format!(
                "topic prefix {:?} must be 1-200 characters of [a-zA-Z0-9._-]",
                self.topic_prefix
            )));
        }
        if self.partitions < 1 {
            return Err(RelayError::Config(
                "partitions must be at least 1".to_owned(),
            ));
        }
        if self.replication < 1 {
            return Err(RelayError::Config(
                "replication must be at least 1".to_owned(),
            ));
        }
        if self.batch_size < 1 {
            return Err(RelayError::Config(
                "batch size must be at least 1".to_owned(),
            ));
        }
        if self.source.trim().is_empty() {
            return Err(RelayError::Config("CloudEvents source is empty".to_owned()));
        }
        if self.delivery_timeout < Duration::from_millis(100) {
            return Err(RelayError::Config(
                "delivery timeout must be at least 100 ms".to_owned(),
            ));
        }
        Ok(())
    }

    /// The topic of an aggregate type, or `None` for a type the relay does not know.
    pub fn topic_for(&self, aggregate_type: &str) -> Option<String> {
        AGGREGATE_TYPES
            .contains(&aggregate_type)
            .then(|| format!("{}.{aggregate_type}", self.topic_prefix))
    }

    /// Every topic the relay writes.
    pub fn topics(&self) -> Vec<String> {
        AGGREGATE_TYPES
            .iter()
            .map(|t| format!("{}.{t}", self.topic_prefix))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_named_by_prefix_and_aggregate_type() {
        let mut config = RelayConfig::new("localhost:9092");
        config.topic_prefix = "acme.prod".to_owned();
        assert_eq!(config.topic_for("car").as_deref(), Some("acme.prod.car"));
        assert_eq!(config.topic_for("account"), None);
        assert_eq!(config.topics().len(), 4);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn invalid_settings_are_refused() {
        let mut config = RelayConfig::new("localhost:9092");
        config.topic_prefix = "bad prefix".to_owned();
        assert!(config.validate().is_err());
        let mut config = RelayConfig::new(" ");
        assert!(config.validate().is_err());
        config = RelayConfig::new("b:1");
        config.partitions = 0;
        assert!(config.validate().is_err());
    }
}
