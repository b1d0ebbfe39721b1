//! Fleetledger's event log on PostgreSQL: append, read, subscribe, snapshots, hash chain, upcasting.
//!
//! Invariants (see docs/ARCHITECTURE.md for why each holds):
//! - a stream's versions are 1, 2, 3… with no gap, enforced by a unique key;
//! - an append to several streams writes all or nothing;
//! - readers see the log in `(transaction_id, global_position)` order and never skip an event
//!   whose transaction committed late;
//! - every event's hash chains it to the previous event of its stream.

pub mod audit;
pub mod backoff;
pub mod embedded;
pub mod error;
pub mod hash;
pub mod json;
pub mod model;
pub mod quiet;
pub mod store;
pub mod subscribe;
pub mod tail;
#[cfg(feature = "testing")]
pub mod testing;
pub mod upcast;
pub mod xid8;

pub use error::EventStoreError;
pub use model::{
    Checkpoint, EventMetadata, ExpectedVersion, NewEvent, RecordedEvent, Snapshot, StreamAppend,
    StreamHead, StreamId, StreamVerification,
};
pub use store::{EventStore, LogFilter, NOTIFY_CHANNEL, STREAM_PAGE};
pub use subscribe::{SubscribeOptions, Subscription};
pub use tail::LogTail;
pub use upcast::UpcasterRegistry;
pub use xid8::Xid8;

/// The schema migrations (event log and read models), embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
