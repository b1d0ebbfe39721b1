-- A rental whose car is not back by its return time and grace is flagged overdue (the
-- `RentalOverdue` event); the history read model keeps when. Existing rows had no such event.
ALTER TABLE rm_bookings ADD COLUMN IF NOT EXISTS overdue_at timestamptz;
-- Staff's list of rentals out too long.
CREATE INDEX IF NOT EXISTS rm_bookings_overdue_idx ON rm_bookings (overdue_at)
    WHERE overdue_at IS NOT NULL AND status = 'ACTIVE';
