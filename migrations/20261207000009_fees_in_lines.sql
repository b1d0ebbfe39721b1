-- A cancelled or no-show booking now shows what it costs: its lines take the booked price off
-- and add the fee, and its total is the fee (as its balance already said). The history read
-- model is rebuilt once from the log on upgrade (under its lease, into fresh tables, swapped in
-- at the live checkpoint).
UPDATE projection_checkpoints
SET repair_reason = 'cancelled and no-show bookings show their fee in total and lines; rebuilt once'
WHERE name = 'history' AND global_position > 0;
