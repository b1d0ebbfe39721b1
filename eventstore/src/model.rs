//! The types the log is written and read in: streams, expected versions, events, checkpoints.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// One aggregate's stream: `(aggregate_type, aggregate_id)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamId {
    pub aggregate_type: String,
    pub aggregate_id: String,
}

impl StreamId {
    pub fn new(aggregate_type: impl Into<String>, aggregate_id: impl Into<String>) -> Self {
        Self {
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.aggregate_type, self.aggregate_id)
    }
}

/// What the writer believes the stream's current version is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the current version is (still atomic and chained).
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have exactly this version (0 = no stream).
    Exact(i64),
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no stream"),
            Self::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// An event to append. Its position in the stream is decided by the append.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub event_version: i32,
    pub payload: Value,
}

impl NewEvent {
    /// A new event with a fresh time-ordered id.
    pub fn new(event_type: impl Into<String>, event_version: i32, payload: Value) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            event_version,
            payload,
        }
    }
}

/// The tail of a stream as a writer last saw it: its version and the hash of that event.
///
/// Passing it lets the append continue the hash chain without reading the stream again; it is
/// safe because an event, once written at a version, never changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamHead {
    pub version: i64,
    pub hash: [u8; 32],
}

impl StreamHead {
    /// The head of a stream with no events.
    pub const EMPTY: StreamHead = StreamHead {
        version: 0,
        hash: [0; 32],
    };
}

/// Events to append to one stream, with the writer's expectation about the stream.
#[derive(Clone, Debug)]
pub struct StreamAppend {
    pub stream: StreamId,
    pub expected: ExpectedVersion,
    /// The head the writer loaded, if it has one; must agree with `expected`.
    pub known_head: Option<StreamHead>,
    pub events: Vec<NewEvent>,
}

impl StreamAppend {
    pub fn new(stream: StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        Self {
            stream,
            expected,
            known_head: None,
            events,
        }
    }

    /// Append after a head the writer has loaded (expected version = `head.version`).
    pub fn after(stream: StreamId, head: StreamHead, events: Vec<NewEvent>) -> Self {
        Self {
            stream,
            expected: ExpectedVersion::Exact(head.version),
            known_head: Some(head),
            events,
        }
    }
}

/// Who did it and why: written into every event's `metadata`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// Ties together every event caused by one user request.
    pub correlation_id: Uuid,
    /// The command or event that directly caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// The user id or system role that issued the command (never personal data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The distributed trace the command ran in, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

impl EventMetadata {
    /// Metadata for a new request: a fresh correlation id and the given actor.
    pub fn for_actor(actor: impl Into<String>) -> Self {
        Self {
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            actor: Some(actor.into()),
            trace_id: None,
        }
    }
}

/// A position in commit order. Readers resume strictly after it.
///
/// `transaction_id` comes first: a transaction that took an earlier `global_position` may commit
/// later, and ordering by `(transaction_id, global_position)` over finished transactions only is
/// what lets a reader never skip it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Checkpoint {
    pub transaction_id: u64,
    pub global_position: i64,
}

impl Checkpoint {
    /// Before the first event.
    pub const START: Checkpoint = Checkpoint {
        transaction_id: 0,
        global_position: 0,
    };
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transaction_id, self.global_position)
    }
}

/// One event as the log holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub global_position: i64,
    pub transaction_id: u64,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub version: i64,
    pub event_type: String,
    pub event_version: i32,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
    #[serde(with = "hex_bytes")]
    pub hash: Vec<u8>,
}

impl RecordedEvent {
    /// The event as its domain type, an enum with a variant per event type: the payload
    /// re-tagged with its `event_type`, the inverse of how the writers store a variant (its
    /// fields as the payload, a unit variant as `null`). The one decoder: aggregates
    /// (`commands::codec::decode`) and read models read events through it.
    pub fn decode<E: serde::de::DeserializeOwned>(&self) -> Result<E, serde_json::Error> {
        let tagged = match &self.payload {
            Value::Null => Value::String(self.event_type.clone()),
            payload => {
                let mut map = serde_json::Map::with_capacity(1);
                map.insert(self.event_type.clone(), payload.clone());
                Value::Object(map)
            }
        };
        serde_json::from_value(tagged)
    }

    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            transaction_id: self.transaction_id,
            global_position: self.global_position,
        }
    }

    pub fn stream(&self) -> StreamId {
        StreamId::new(&self.aggregate_type, &self.aggregate_id)
    }

    /// The typed metadata; `None` if the stored metadata does not have the standard shape.
    pub fn typed_metadata(&self) -> Option<EventMetadata> {
        serde_json::from_value(self.metadata.clone()).ok()
    }

    /// This event as the head of its stream.
    pub fn head(&self) -> Option<StreamHead> {
        let hash: [u8; 32] = self.hash.as_slice().try_into().ok()?;
        Some(StreamHead {
            version: self.version,
            hash,
        })
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

/// The latest snapshot of a stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub stream: StreamId,
    pub head: StreamHead,
    pub state: Value,
    pub taken_at: DateTime<Utc>,
}

/// The result of recomputing one stream's hash chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StreamVerification {
    pub stream: StreamId,
    /// Events read from the stream.
    pub events: u64,
    /// The first version whose stored hash (or position in the chain) is wrong.
    pub first_broken_version: Option<i64>,
    pub detail: Option<String>,
}

impl StreamVerification {
    pub fn is_valid(&self) -> bool {
        self.first_broken_version.is_none()
    }
}
