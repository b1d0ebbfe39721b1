-- Booking lists page by keyset over (created_at, booking_id), newest first; a list filtered by
-- status reads this index in that order instead of sorting every match.
CREATE INDEX IF NOT EXISTS rm_bookings_status_created_idx
    ON rm_bookings (status, created_at DESC, booking_id DESC);
DROP INDEX IF EXISTS rm_bookings_status_idx;
