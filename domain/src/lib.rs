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
pub use window::TimeWindow;

/// The version cqrs-es's `DomainEvent::event_version` reports for every event still at v1.
pub const V1: &str = "1";
