//! The tamper-evident hash chain: `hash = sha256(previous hash of the stream || canonical bytes)`.
//!
//! The canonical bytes of an event are a JSON object with keys in byte order, no whitespace,
//! over every stored field except the database-assigned ones (`global_position`,
//! `transaction_id`). Object keys are sorted here, not by `serde_json`, so the result does not
//! depend on whether some crate in the build enabled `serde_json/preserve_order`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::model::{RecordedEvent, StreamVerification};
use crate::{StreamHead, StreamId};

/// The previous hash of a stream's first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// The fields of an event that the chain covers.
#[derive(Clone, Copy, Debug)]
pub struct HashedFields<'a> {
    pub event_id: Uuid,
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub version: i64,
    pub event_type: &'a str,
    pub event_version: i32,
    pub payload: &'a Value,
    pub metadata: &'a Value,
    pub recorded_at: DateTime<Utc>,
}

impl<'a> HashedFields<'a> {
    pub fn of(event: &'a RecordedEvent) -> Self {
        Self {
            event_id: event.event_id,
            aggregate_type: &event.aggregate_type,
            aggregate_id: &event.aggregate_id,
            version: event.version,
            event_type: &event.event_type,
            event_version: event.event_version,
            payload: &event.payload,
            metadata: &event.metadata,
            recorded_at: event.recorded_at,
        }
    }

    /// The canonical bytes: sorted-key compact JSON.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.push(b'{');
        let field = |out: &mut Vec<u8>, name: &str, first: bool| {
            if !first {
                out.push(b',');
            }
            write_string(out, name);
            out.push(b':');
        };
        // Keys in byte order.
        field(&mut out, "aggregate_id", true);
        write_string(&mut out, self.aggregate_id);
        field(&mut out, "aggregate_type", false);
        write_string(&mut out, self.aggregate_type);
        field(&mut out, "event_id", false);
        write_string(&mut out, &self.event_id.hyphenated().to_string());
        field(&mut out, "event_type", false);
        write_string(&mut out, self.event_type);
        field(&mut out, "event_version", false);
        out.extend_from_slice(self.event_version.to_string().as_bytes());
        field(&mut out, "metadata", false);
        write_canonical(&mut out, self.metadata);
        field(&mut out, "payload", false);
        write_canonical(&mut out, self.payload);
        field(&mut out, "recorded_at", false);
        write_string(
            &mut out,
            &self
                .recorded_at
                .to_rfc3339_opts(SecondsFormat::Micros, true),
        );
        field(&mut out, "version", false);
        out.extend_from_slice(self.version.to_string().as_bytes());
        out.push(b'}');
        out
    }

    /// This event's link in the chain.
    pub fn chain_hash(&self, previous: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(previous);
        hasher.update(self.canonical_bytes());
        hasher.finalize().into()
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    // serde_json's string escaping is deterministic; writing into a Vec cannot fail.
    if serde_json::to_writer(&mut *out, s).is_err() {
        unreachable_write();
    }
}

#[cold]
fn unreachable_write() {
    tracing::error!("serde_json failed to write into a Vec; canonical bytes are incomplete");
}

/// Compact JSON with object keys sorted by their bytes.
pub fn write_canonical(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, val)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, key);
                out.push(b':');
                write_canonical(out, val);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(out, item);
            }
            out.push(b']');
        }
        scalar => {
            if serde_json::to_writer(&mut *out, scalar).is_err() {
                unreachable_write();
            }
        }
    }
}

/// Recompute the chain over one stream's events, given in version order.
///
/// Names the first version that is wrong: a missing or repeated version (an event deleted or
/// inserted), an event of another stream, an event out of log order, or a hash that does not
/// match (an altered or reordered event). Everything after the first break is unverifiable and
/// not reported separately.
pub fn verify_chain<'a>(
    stream: &StreamId,
    events: impl IntoIterator<Item = &'a RecordedEvent>,
) -> StreamVerification {
    let mut check = StreamCheck::new(stream.clone());
    for event in events {
        check.push(event);
    }
    check.finish()
}

/// Incremental chain check of one stream, fed its events in version order.
#[derive(Clone, Debug)]
pub struct StreamCheck {
    stream: StreamId,
    head: StreamHead,
    last_position: i64,
    events: u64,
    broken: Option<(i64, String)>,
    trusted_start: Option<i64>,
}

impl StreamCheck {
    /// A check from the stream's first event.
    pub fn new(stream: StreamId) -> Self {
        Self {
            stream,
            head: StreamHead::EMPTY,
            last_position: 0,
            events: 0,
            broken: None,
            trusted_start: None,
        }
    }

    /// A check of a stream excerpt whose first event (not version 1) is taken as given: its
    /// own hash cannot be recomputed without the event before it; every later link is checked.
    pub fn from_excerpt(first: &RecordedEvent) -> Self {
        let mut check = Self::new(first.stream());
        match first.head() {
            Some(head) => {
                check.head = head;
                check.last_position = first.global_position;
                check.events = 1;
                check.trusted_start = Some(first.version);
            }
            None => check.broken = Some((first.version, "stored hash is not 32 bytes".into())),
        }
        check
    }

    pub fn stream(&self) -> &StreamId {
        &self.stream
    }

    /// The version the excerpt started from, when it did not start at version 1.
    pub fn trusted_start(&self) -> Option<i64> {
        self.trusted_start
    }

    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    pub fn push(&mut self, event: &RecordedEvent) {
        self.events += 1;
        if self.broken.is_some() {
            return;
        }
        let expected_version = self.head.version + 1;
        let problem = if event.aggregate_type != self.stream.aggregate_type
            || event.aggregate_id != self.stream.aggregate_id
        {
            Some((
                expected_version,
                format!(
                    "event {} at position {} belongs to {}/{}",
                    event.event_id, event.global_position, event.aggregate_type, event.aggregate_id
                ),
            ))
        } else if event.version != expected_version {
            let what = if event.version > expected_version {
                "missing"
            } else {
                "repeated"
            };
            Some((
                expected_version.min(event.version),
                format!(
                    "version {expected_version} expected, found {} ({what} event)",
                    event.version
                ),
            ))
        } else if event.global_position <= self.last_position {
            Some((
                event.version,
                format!(
                    "position {} is not after the previous event's {} (out of log order)",
                    event.global_position, self.last_position
                ),
            ))
        } else {
            let computed = HashedFields::of(event).chain_hash(&self.head.hash);
            if event.hash.as_slice() == computed {
                self.head = StreamHead {
                    version: event.version,
                    hash: computed,
                };
                self.last_position = event.global_position;
                None
            } else {
                Some((
                    event.version,
                    format!(
                        "stored hash {} does not match the recomputed {}",
                        hex::encode(&event.hash),
                        hex::encode(computed)
                    ),
                ))
            }
        };
        self.broken = problem;
    }

    /// The verified head so far (the last event whose link checked out).
    pub fn head(&self) -> StreamHead {
        self.head
    }

    pub fn finish(self) -> StreamVerification {
        let (first_broken_version, detail) = match self.broken {
            Some((version, detail)) => (Some(version), Some(detail)),
            None => (None, None),
        };
        StreamVerification {
            stream: self.stream,
            events: self.events,
            first_broken_version,
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields<'a>(payload: &'a Value, metadata: &'a Value) -> HashedFields<'a> {
        HashedFields {
            event_id: Uuid::nil(),
            aggregate_type: "car",
            aggregate_id: "c-1",
            version: 1,
            event_type: "CarRegistered",
            event_version: 1,
            payload,
            metadata,
            recorded_at: DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap_or_default(),
        }
    }

    #[test]
    fn canonical_bytes_sort_keys_at_every_depth() {
        let payload = json!({"z": 1, "a": {"y": [1, {"b": 2, "a": 1}], "x": "é\"\n"}});
        let metadata = json!({"correlation_id": "c"});
        let text = String::from_utf8(fields(&payload, &metadata).canonical_bytes()).unwrap();
        assert_eq!(
            text,
            r#"{"aggregate_id":"c-1","aggregate_type":"car","event_id":"00000000-0000-0000-0000-000000000000","event_type":"CarRegistered","event_version":1,"metadata":{"correlation_id":"c"},"payload":{"a":{"x":"é\"\n","y":[1,{"a":1,"b":2}]},"z":1},"recorded_at":"2023-11-14T22:13:20.123456Z","version":1}"#
        );
    }

    #[test]
    fn the_hash_depends_on_the_previous_hash_and_on_every_field() {
        let payload = json!({"rate": 4500});
        let metadata = json!({});
        let base = fields(&payload, &metadata);
        let h = base.chain_hash(&GENESIS);
        assert_ne!(h, base.chain_hash(&[1; 32]));
        let other_payload = json!({"rate": 4501});
        assert_ne!(h, fields(&other_payload, &metadata).chain_hash(&GENESIS));
        assert_ne!(h, HashedFields { version: 2, ..base }.chain_hash(&GENESIS));
    }
}
