//! The one place the application's event upcasters are registered, and the event store every
//! process reads the log through.
//!
//! When an event's payload changes shape, the new code writes the new version and an upcaster
//! lifts each older version one step on read (`UpcasterRegistry::register(type, from, lift)`):
//! aggregates, read models, the relay, the API and `fleetledger replay` then only ever see the
//! newest shape, while the stored rows (and their hash chain) stay as written. Fields that were
//! only added are cheaper still: a `#[serde(default)]` reads the old payloads unchanged (how
//! `turnaround_minutes` and `in_service_from` arrived), so no upcaster is registered today.
//! docs/extending.md walks through adding one.

use eventstore::{EventStore, UpcasterRegistry};
use sqlx::PgPool;

/// Every upcaster the application reads with.
pub fn registry() -> UpcasterRegistry {
    UpcasterRegistry::new()
}

/// The event log over `pool`, read through [`registry`]: what every process (serve, worker,
/// projectors, relay, audit) opens.
pub fn event_store(pool: PgPool) -> EventStore {
    EventStore::with_upcasters(pool, registry())
}
