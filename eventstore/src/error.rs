//! The event store's typed errors.

use uuid::Uuid;

use crate::model::{ExpectedVersion, StreamId};

#[derive(Debug, thiserror::Error)]
pub enum EventStoreError {
    /// The stream was not at the version the writer expected; nothing was written.
    #[error(
        "optimistic concurrency conflict on {stream}: expected {expected}, actual version {actual}"
    )]
    OptimisticConcurrency {
        stream: StreamId,
        expected: ExpectedVersion,
        actual: i64,
    },
    /// An event with this id is already in the log.
    #[error("event {0} is already in the log")]
    DuplicateEventId(Uuid),
    /// The append request itself is malformed (nothing was written).
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    /// An upcaster could not lift a stored payload.
    #[error("cannot upcast {event_type} v{event_version} (event {event_id}): {reason}")]
    Upcast {
        event_id: Uuid,
        event_type: String,
        event_version: i32,
        reason: String,
    },
    /// A wait on the database did not finish in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// What was asked for is not stored.
    #[error("not found: {0}")]
    NotFound(String),
    /// A stored row could not be decoded.
    #[error("corrupt row in the event log: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl EventStoreError {
    /// A failure that may go away by itself: a lost connection, a pool timeout, a restarting
    /// server, a serialization failure. Callers retry these with backoff.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(e) => is_transient_sqlx(e),
            _ => false,
        }
    }

    /// The database could not be reached at all (as opposed to refusing a statement).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Database(e) => is_unavailable_sqlx(e),
            _ => false,
        }
    }
}

/// Connection-level failures: the server is down, restarting, or dropped us.
pub fn is_unavailable_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P01-03: admin/crash shutdown, cannot connect now;
            // 53300: too many connections.
            code.starts_with("08") || code.starts_with("57P") || code == "53300"
        }),
        _ => false,
    }
}

/// Unavailability plus serialization failures and deadlocks, which a retry resolves.
pub fn is_transient_sqlx(e: &sqlx::Error) -> bool {
    is_unavailable_sqlx(e)
        || matches!(e, sqlx::Error::Database(db)
            if db.code().is_some_and(|code| code == "40001" || code == "40P01"))
}
