-- The no-skip rule, narrowed to the transactions that can append events.
--
-- Readers of the log read only events of transactions older than every transaction still
-- running (an event whose transaction is open holds back everything after it instead of being
-- skipped). Read against the whole server, one stuck transaction of any kind held back every
-- reader: a projector waiting on a lock inside its batch stopped all the other projectors, the
-- relay and every read-your-writes wait. Transactions that append no events (projector and
-- relay batches, a rebuild's copies and swap) now say so by holding the shared advisory lock
-- (2026120701, 1) for their whole duration, taken before they have a transaction id
-- (`eventstore::quiet`); the horizon passes over them. A transaction that does not say so is
-- waited for as before, so forgetting to say it only costs waiting, never a skipped event.
--
-- The horizon is the oldest running transaction id that is not quiet, or the snapshot's xmax
-- when there is none; the events below it are all committed in the caller's snapshot (a quiet
-- transaction has none). `pg_locks` is read only when some transaction is running.
CREATE OR REPLACE FUNCTION log_horizon() RETURNS xid8
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN pg_snapshot_xmin(snap.s) = pg_snapshot_xmax(snap.s) THEN pg_snapshot_xmax(snap.s)
        ELSE coalesce(
            (SELECT min(running.x) FROM pg_snapshot_xip(snap.s) AS running(x)
              WHERE xid(running.x) NOT IN (
                  -- The ids of quiet sessions' transactions: each transaction holds an
                  -- ExclusiveLock on its own id, beside the quiet lock of its session.
                  SELECT t.transactionid
                    FROM pg_locks q JOIN pg_locks t ON t.pid = q.pid
                   WHERE q.locktype = 'advisory' AND q.classid = 2026120701 AND q.objid = 1
                     AND q.objsubid = 2 AND q.granted
                     AND t.locktype = 'transactionid' AND t.mode = 'ExclusiveLock'
                     AND t.granted)),
            pg_snapshot_xmax(snap.s))
    END
    FROM (SELECT pg_current_snapshot() AS s) AS snap
$$;
