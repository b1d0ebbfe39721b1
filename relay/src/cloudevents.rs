//! CloudEvents 1.0 structured JSON encoding of a recorded event (the Kafka message value).
//!
//! Attributes: `specversion` `1.0`; `id` = the event id (consumers dedupe on it); `source` =
//! the configured source; `type` = `fleetledger.<aggregate type>.<event type>`; `subject` = the
//! aggregate id; `time` = when it was recorded; `datacontenttype` = `application/json`;
//! `data` = the payload. Extensions: `aggregatetype`, `streamversion` (the event's version in
//! its stream), `eventversion` (the payload shape's version), `globalposition` and
//! `transactionid` (its place in the log, as decimal strings: CloudEvents integers are 32-bit),
//! `correlationid` and `causationid` (when the event's metadata has them), `partitionkey` (the
//! Kafka key, per the CloudEvents Kafka binding).

use chrono::SecondsFormat;
use eventstore::RecordedEvent;
use serde_json::{Map, Value, json};

/// The media type of a structured-mode CloudEvent, sent as the message's `content-type` header.
pub const CONTENT_TYPE: &str = "application/cloudevents+json; charset=UTF-8";

/// The CloudEvents `type` of an event.
pub fn event_type(event: &RecordedEvent) -> String {
    format!("fleetledger.{}.{}", event.aggregate_type, event.event_type)
}

/// The CloudEvent for `event`, as a JSON object.
pub fn to_cloudevent(event: &RecordedEvent, source: &str) -> Value {
    let mut object = Map::new();
    object.insert("specversion".to_owned(), json!("1.0"));
    object.insert("id".to_owned(), json!(event.event_id.to_string()));
    object.insert("source".to_owned(), json!(source));
    object.insert("type".to_owned(), json!(event_type(event)));
    object.insert("subject".to_owned(), json!(event.aggregate_id));
    object.insert(
        "time".to_owned(),
        json!(
            event
                .recorded_at
                .to_rfc3339_opts(SecondsFormat::Micros, true)
        ),
    );
    object.insert("datacontenttype".to_owned(), json!("application/json"));
    object.insert("aggregatetype".to_owned(), json!(event.aggregate_type));
    object.insert("streamversion".to_owned(), json!(event.version));
    object.insert("eventversion".to_owned(), json!(event.event_version));
    object.insert(
        "globalposition".to_owned(),
        json!(event.global_position.to_string()),
    );
    object.insert(
        "transactionid".to_owned(),
        json!(event.transaction_id.to_string()),
    );
    for (field, attribute) in [
        ("correlation_id", "correlationid"),
        ("causation_id", "causationid"),
    ] {
        if let Some(Value::String(id)) = event.metadata.get(field) {
            object.insert(attribute.to_owned(), json!(id));
        }
    }
    object.insert("partitionkey".to_owned(), json!(event.aggregate_id));
    object.insert("data".to_owned(), event.payload.clone());
    Value::Object(object)
}

/// The message value: the CloudEvent serialized.
pub fn encode(event: &RecordedEvent, source: &str) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&to_cloudevent(event, source))
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use uuid::Uuid;

    use super::*;

    fn event() -> RecordedEvent {
        RecordedEvent {
            global_position: 42,
            transaction_id: 9_000_000_001,
            event_id: Uuid::nil(),
            aggregate_type: "car".to_owned(),
            aggregate_id: "c-1".to_owned(),
            version: 3,
            event_type: "CarRelocated".to_owned(),
            event_version: 1,
            payload: json!({"from": "BER", "to": "MUC"}),
            metadata: json!({"correlation_id": "0190-corr", "actor": "u-1"}),
            recorded_at: Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap(),
            hash: vec![0; 32],
        }
    }

    #[test]
    fn an_event_becomes_a_structured_cloudevent() {
        let ce = to_cloudevent(&event(), "urn:fleetledger");
        assert_eq!(
            ce,
            json!({
                "specversion": "1.0",
                "id": "00000000-0000-0000-0000-000000000000",
                "source": "urn:fleetledger",
                "type": "fleetledger.car.CarRelocated",
                "subject": "c-1",
                "time": "2026-11-23T10:00:00.000000Z",
                "datacontenttype": "application/json",
                "aggregatetype": "car",
                "streamversion": 3,
                "eventversion": 1,
                "globalposition": "42",
                "transactionid": "9000000001",
                "correlationid": "0190-corr",
                "partitionkey": "c-1",
                "data": {"from": "BER", "to": "MUC"}
            })
        );
    }

    #[test]
    fn attribute_names_follow_the_cloudevents_naming_rule() {
        let ce = to_cloudevent(&event(), "urn:fleetledger");
        for name in ce.as_object().unwrap().keys() {
            assert!(
                name.len() <= 20
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
                "{name}"
            );
        }
    }
}
