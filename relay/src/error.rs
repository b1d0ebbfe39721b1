//! The relay's errors.

use rdkafka::error::KafkaError;

/// Why the relay could not be set up or could not talk to the broker.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("relay configuration: {0}")]
    Config(String),
    #[error("Kafka client: {0}")]
    Kafka(#[from] KafkaError),
    #[error("creating topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
}
