//! Transactions that append no events, and say so.
//!
//! Readers of the log never pass an event whose transaction may still commit (the no-skip
//! rule: `transaction_id < log_horizon()`). Every running transaction with an id used to count,
//! so one projector stuck inside its batch (waiting on a lock, say) held back every other
//! projector, the relay and each read-your-writes wait. A transaction that appends nothing
//! calls [`declare`] first, before any statement that gives it a transaction id; the horizon
//! (migration 20261207000015) then passes over it. Forgetting to declare only makes readers
//! wait for the transaction; declaring in a transaction that does append events would let a
//! reader skip them, so only code that never appends (projector, relay and rebuild batches)
//! declares.

use sqlx::PgConnection;

/// The shared advisory lock a quiet transaction holds (its two-key form, as `pg_locks` shows
/// it: `classid`, `objid`, `objsubid = 2`).
pub const QUIET_LOCK: (i32, i32) = (2_026_120_701, 1);

/// Declare that the transaction on `conn` appends no events, so readers of the log do not wait
/// for it. Call it first in the transaction; it is released at commit or rollback.
pub async fn declare(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1, $2)")
        .bind(QUIET_LOCK.0)
        .bind(QUIET_LOCK.1)
        .execute(conn)
        .await?;
    Ok(())
}
