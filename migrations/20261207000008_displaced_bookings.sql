-- A booking whose car an urgent maintenance took out (`BookingDisplaced`) waits for staff to
-- move it to another car (`BookingReassigned`); the history read model keeps since when.
-- Existing rows had no such event.
ALTER TABLE rm_bookings ADD COLUMN IF NOT EXISTS displaced_at timestamptz;
-- Staff's list of bookings without a car.
CREATE INDEX IF NOT EXISTS rm_bookings_displaced_idx ON rm_bookings (displaced_at, booking_id)
    WHERE displaced_at IS NOT NULL;
