-- Analytics: `revenue` becomes money in the bank (captured minus refunded, on the days the
-- gateway moved it), so that it reconciles with the payments; what used to be called revenue
-- (a completed rental's final total on its return day, a cancellation fee on its day) stays as
-- `earned`. The analytics read model is rebuilt once from the log on upgrade (under its lease,
-- into fresh tables, swapped in at the live checkpoint).
ALTER TABLE rm_daily_metrics ADD COLUMN IF NOT EXISTS earned_minor bigint NOT NULL DEFAULT 0;
ALTER TABLE rm_car_daily ADD COLUMN IF NOT EXISTS earned_minor bigint NOT NULL DEFAULT 0;

UPDATE projection_checkpoints
SET repair_reason = 'analytics revenue is now money captured minus refunded; rebuilt once'
WHERE name = 'analytics' AND global_position > 0;
