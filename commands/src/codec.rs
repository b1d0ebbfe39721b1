//! How cqrs-es domain events become stored payloads and back.
//!
//! Domain events are serde enums, externally tagged, whose variant name is their
//! `event_type()`. The stored payload is the variant's content only (the type is its own
//! column); a unit variant stores `null`. `event_version()` is an integer ("1", or "1.0").

use cqrs_es::{Aggregate, DomainEvent};
use eventstore::{NewEvent, RecordedEvent};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("event {event_type}: {reason}")]
    Encode { event_type: String, reason: String },
    #[error(
        "stored event {event_type} v{event_version} at {stream} version {version} cannot be read: {reason}"
    )]
    Decode {
        stream: String,
        version: i64,
        event_type: String,
        event_version: i32,
        reason: String,
    },
}

/// Parse cqrs-es's string event version ("1" or "1.0") into the stored integer.
pub fn parse_event_version(version: &str) -> Option<i32> {
    let major = version.strip_suffix(".0").unwrap_or(version);
    major.parse().ok().filter(|v: &i32| *v >= 1)
}

/// A domain event as an event to append.
pub fn encode<E: DomainEvent>(event: &E) -> Result<NewEvent, CodecError> {
    let event_type = event.event_type();
    let fail = |reason: String| CodecError::Encode {
        event_type: event_type.clone(),
        reason,
    };
    let version = parse_event_version(&event.event_version()).ok_or_else(|| {
        fail(format!(
            "version {:?} is not an integer >= 1",
            event.event_version()
        ))
    })?;
    let payload = match serde_json::to_value(event).map_err(|e| fail(e.to_string()))? {
        Value::Object(mut map) if map.len() == 1 && map.contains_key(&event_type) => {
            map.remove(&event_type).unwrap_or(Value::Null)
        }
        Value::String(tag) if tag == event_type => Value::Null,
        other => {
            return Err(fail(format!(
                "serializes as {other}, not as an enum variant named like its event_type"
            )));
        }
    };
    Ok(NewEvent::new(event_type, version, payload))
}

/// A stored event as the aggregate's domain event.
pub fn decode<A: Aggregate>(event: &RecordedEvent) -> Result<A::Event, CodecError> {
    event.decode().map_err(|e| CodecError::Decode {
        stream: format!("{}/{}", event.aggregate_type, event.aggregate_id),
        version: event.version,
        event_type: event.event_type.clone(),
        event_version: event.event_version,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_versions_are_integers() {
        assert_eq!(parse_event_version("1"), Some(1));
        assert_eq!(parse_event_version("2.0"), Some(2));
        assert_eq!(parse_event_version("1.1"), None);
        assert_eq!(parse_event_version("0"), None);
        assert_eq!(parse_event_version("x"), None);
    }
}
