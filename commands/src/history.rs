//! Point-in-time state for auditors: an aggregate rebuilt from its events (through the same
//! upcasters the application reads with), as of a version or an instant.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::booking::Booking;
use domain::car::Car;
use domain::payment::Payment;
use domain::telemetry::Telemetry;
use eventstore::{EventStore, EventStoreError, RecordedEvent, StreamId};
use serde::Serialize;
use serde_json::Value;

use crate::codec::CodecError;
use crate::executor::replay;

/// Which point of a stream's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsOf {
    Latest,
    Version(i64),
    Instant(DateTime<Utc>),
}

/// An aggregate's state at a point of its history.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HistoricState {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Version of the last event applied (0: the stream had no events by then).
    pub version: i64,
    pub recorded_at: Option<DateTime<Utc>>,
    pub state: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("unknown aggregate type {0:?} (known: {known})", known = KNOWN.join(", "))]
    UnknownType(String),
    #[error(transparent)]
    Store(#[from] EventStoreError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("state does not serialize: {0}")]
    Serialize(String),
}

/// The aggregate types this build can rebuild.
pub const KNOWN: &[&str] = &[Car::TYPE, Booking::TYPE, Payment::TYPE, Telemetry::TYPE];

/// Rebuild `stream`'s state at `as_of`. `None` when the stream has no events at all.
pub async fn state_at(
    store: &EventStore,
    stream: &StreamId,
    as_of: AsOf,
) -> Result<Option<HistoricState>, HistoryError> {
    if !KNOWN.contains(&stream.aggregate_type.as_str()) {
        return Err(HistoryError::UnknownType(stream.aggregate_type.clone()));
    }
    let upto = match as_of {
        AsOf::Version(v) => Some(v),
        _ => None,
    };
    let mut events = store.read_stream(stream, 1, upto).await?;
    if events.is_empty() && store.stream_head(stream).await?.version == 0 {
        return Ok(None);
    }
    if let AsOf::Instant(t) = as_of {
        events.retain(|e| e.recorded_at <= t);
    }
    let state = match stream.aggregate_type.as_str() {
        Car::TYPE => to_json(&replay::<Car>(&events)?)?,
        Booking::TYPE => to_json(&replay::<Booking>(&events)?)?,
        Payment::TYPE => to_json(&replay::<Payment>(&events)?)?,
        Telemetry::TYPE => to_json(&replay::<Telemetry>(&events)?)?,
        other => return Err(HistoryError::UnknownType(other.to_owned())),
    };
    let last: Option<&RecordedEvent> = events.last();
    Ok(Some(HistoricState {
        aggregate_type: stream.aggregate_type.clone(),
        aggregate_id: stream.aggregate_id.clone(),
        version: last.map_or(0, |e| e.version),
        recorded_at: last.map(|e| e.recorded_at),
        state,
    }))
}

fn to_json(state: &impl Serialize) -> Result<Value, HistoryError> {
    serde_json::to_value(state).map_err(|e| HistoryError::Serialize(e.to_string()))
}
