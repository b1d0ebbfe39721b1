//! Point-in-time state for auditors: an aggregate rebuilt from its events (through the same
//! upcasters the application reads with), as of a version or an instant.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::booking::Booking;
use domain::car::Car;
use domain::payment::Payment;
use domain::telemetry::Telemetry;
use eventstore::{EventStore, EventStoreError, STREAM_PAGE, StreamId};
use serde::Serialize;
use serde_json::Value;

use crate::codec::{self, CodecError};
use crate::executor::snapshot_state;

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
    let head = store.stream_head(stream).await?.version;
    if head == 0 {
        return Ok(None);
    }
    let target = match as_of {
        AsOf::Latest => head,
        AsOf::Version(v) => v.min(head),
        AsOf::Instant(t) => store.version_at(stream, t).await?,
    };
    let (state, recorded_at) = match stream.aggregate_type.as_str() {
        Car::TYPE => rebuild::<Car>(store, stream, target).await?,
        Booking::TYPE => rebuild::<Booking>(store, stream, target).await?,
        Payment::TYPE => rebuild::<Payment>(store, stream, target).await?,
        Telemetry::TYPE => rebuild::<Telemetry>(store, stream, target).await?,
        other => return Err(HistoryError::UnknownType(other.to_owned())),
    };
    Ok(Some(HistoricState {
        aggregate_type: stream.aggregate_type.clone(),
        aggregate_id: stream.aggregate_id.clone(),
        version: target,
        recorded_at,
        state,
    }))
}

/// The state after version `target` (0: none) and when that version was recorded: from the
/// stream's snapshot when it was taken at or before `target` (and reads as today's state), then
/// the events after it a page at a time, so neither time nor memory is the whole stream's.
async fn rebuild<A: Aggregate>(
    store: &EventStore,
    stream: &StreamId,
    target: i64,
) -> Result<(Value, Option<DateTime<Utc>>), HistoryError> {
    let mut state = A::default();
    let mut from = 1;
    if let Some(snapshot) = store.load_snapshot(stream).await?
        && snapshot.head.version <= target
        && let Some(taken) = snapshot_state::<A>(
            &snapshot.state,
            crate::ExecutorConfig::default().snapshot_state_version,
        )
    {
        state = taken;
        from = snapshot.head.version + 1;
    }
    let mut recorded_at = None;
    while from <= target {
        let to = (from + STREAM_PAGE - 1).min(target);
        for event in store.read_stream(stream, from, Some(to)).await? {
            state.apply(codec::decode::<A>(&event)?);
            recorded_at = Some(event.recorded_at);
        }
        from = to + 1;
    }
    if recorded_at.is_none() && target > 0 {
        // Started from a snapshot at the very version asked for: its time is that event's.
        recorded_at = store
            .read_stream_raw(stream, target, Some(target))
            .await?
            .first()
            .map(|e| e.recorded_at);
    }
    Ok((to_json(&state)?, recorded_at))
}

fn to_json(state: &impl Serialize) -> Result<Value, HistoryError> {
    serde_json::to_value(state).map_err(|e| HistoryError::Serialize(e.to_string()))
}
