//! Projector runtime and read models (search, availability, history, analytics, telemetry).
//!
//! Not built yet: the projector issue fills this crate. Readers will use
//! `eventstore::EventStore::read_all`, the no-skip reader, and keep their checkpoint in the
//! `projection_checkpoints` table in the same transaction as their read-model writes.
