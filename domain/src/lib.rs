//! Fleetledger's pure domain: aggregates (cqrs-es `Aggregate`), commands, events, value objects.
//!
//! Nothing here does I/O. Every event type is past tense and has an `event_version`; payload
//! upcasters live in the event store.

pub mod booking;
pub mod car;
pub mod money;
pub mod payment;
pub mod pricing;
pub mod telemetry;
pub mod window;

pub use money::{Currency, Money};

/// Every `(aggregate type, event type)` the domain can emit, from the event enums themselves
/// (a new variant is listed here with no one having to remember it).
pub fn event_types() -> Vec<(&'static str, &'static str)> {
    let mut all = Vec::new();
    for (aggregate, types) in [
        ("car", car::EVENT_TYPES),
        ("booking", booking::EVENT_TYPES),
        ("payment", payment::EVENT_TYPES),
        ("telemetry", telemetry::EVENT_TYPES),
    ] {
        all.extend(types.iter().map(|t| (aggregate, *t)));
    }
    all
}
pub use window::TimeWindow;

/// The version cqrs-es's `DomainEvent::event_version` reports for every event still at v1.
pub const V1: &str = "1";
