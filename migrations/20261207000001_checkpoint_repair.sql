-- Checkpoints that must be rebuilt before their projector carries on.
--
-- Until this release the no-skip reader ordered each batch by the transaction id's text, so a
-- batch holding ids on both sides of a power of ten ("9998", "10001") was applied out of order
-- and its checkpoint moved back behind events already applied: projections then re-applied
-- those events (or stopped on them) and the relay published some twice and others never.
--
-- Which checkpoints were hit cannot be told from the row itself, so every checkpoint past the
-- start of a log whose transaction ids span a power of ten is marked. The projector runtime
-- repairs a marked checkpoint once, under its lease, before applying anything else: a read
-- model is rebuilt from position zero into fresh tables and swapped in at the live checkpoint
-- (the old tables keep serving meanwhile); the relay publishes the log again from the start
-- (consumers already drop duplicates by CloudEvents id). A manual `projections rebuild` clears
-- the mark too.
ALTER TABLE projection_checkpoints ADD COLUMN repair_reason text;

UPDATE projection_checkpoints
SET repair_reason = 'the checkpoint was written by a reader that ordered transaction ids as '
                    'text; rebuilt once in xid8 order'
WHERE global_position > 0
  AND length((SELECT transaction_id FROM events ORDER BY transaction_id LIMIT 1)::text)
      <> length((SELECT transaction_id FROM events ORDER BY transaction_id DESC LIMIT 1)::text);
