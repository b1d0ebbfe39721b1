//! Projector runtime and read models (search, availability, history, analytics, telemetry).
//!
//! Each read model is a [`runtime::Projection`]: a name, the tables it owns, and a handler that
//! applies one event inside the runtime's transaction. The runtime ([`runtime::Projector`])
//! reads the log through the no-skip reader and commits effects and checkpoint together;
//! [`rebuild`] recomputes a projection from position zero into fresh tables and swaps them in.

pub mod analytics;
pub mod availability;
pub mod history;
pub mod rebuild;
pub mod runtime;
pub mod search;
pub mod status;
pub mod telemetry;

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use eventstore::RecordedEvent;
use serde::de::DeserializeOwned;

pub use runtime::{
    ApplyError, ExternalSink, Projection, Projector, RunOptions, RuntimeError, SinkError, Target,
};
pub use status::ProjectionStatus;

/// Every read-model projection, in a stable order.
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(search::Search),
        Arc::new(availability::Availability),
        Arc::new(history::History),
        Arc::new(analytics::Analytics),
        Arc::new(telemetry::TelemetryProjection),
    ]
}

/// The projection called `name`, if there is one.
pub fn by_name(name: &str) -> Option<Arc<dyn Projection>> {
    all().into_iter().find(|p| p.name() == name)
}

/// The names of every read-model projection.
pub fn names() -> Vec<&'static str> {
    all().iter().map(|p| p.name()).collect()
}

/// A stored event as its domain event ([`RecordedEvent::decode`]), failing as a read model does.
pub(crate) fn decode<E: DeserializeOwned>(event: &RecordedEvent) -> Result<E, ApplyError> {
    event.decode().map_err(|e| ApplyError::Decode {
        event_type: event.event_type.clone(),
        event_version: event.event_version,
        reason: e.to_string(),
    })
}

/// The aggregate id as a UUID (every Fleetledger aggregate id is one).
pub(crate) fn aggregate_uuid(event: &RecordedEvent) -> Result<uuid::Uuid, ApplyError> {
    event.aggregate_id.parse().map_err(|_| {
        ApplyError::Invalid(format!(
            "{} id {:?} is not a UUID",
            event.aggregate_type, event.aggregate_id
        ))
    })
}

/// The UTC calendar day of an instant.
pub(crate) fn day_of(at: DateTime<Utc>) -> NaiveDate {
    at.date_naive()
}

/// `[start, end)` cut at UTC midnights: each day it touches and the seconds spent in it.
pub(crate) fn split_by_day(start: DateTime<Utc>, end: DateTime<Utc>) -> Vec<(NaiveDate, i64)> {
    let mut out = Vec::new();
    let mut cursor = start;
    while cursor < end {
        let day = cursor.date_naive();
        let next_midnight = day
            .succ_opt()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|d| d.and_utc())
            .unwrap_or(end);
        let stop = next_midnight.min(end);
        out.push((day, (stop - cursor).num_seconds()));
        cursor = stop;
    }
    out
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn a_window_splits_at_midnight() {
        let start = Utc.with_ymd_and_hms(2026, 3, 1, 22, 0, 0).unwrap();
        let end = Utc.with_ymd_and_hms(2026, 3, 3, 1, 30, 0).unwrap();
        let days = split_by_day(start, end);
        let d = |day| NaiveDate::from_ymd_opt(2026, 3, day).unwrap();
        assert_eq!(
            days,
            vec![(d(1), 2 * 3600), (d(2), 24 * 3600), (d(3), 5400)]
        );
        assert!(split_by_day(end, start).is_empty());
    }

    #[test]
    fn names_are_unique() {
        let mut names = names();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
    }
}
