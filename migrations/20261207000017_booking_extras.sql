-- The extras a booking was priced with ([{"kind": "CHILD_SEAT", "quantity": 2}]) and its
-- mileage terms ({"km_included": .., "km_per_day": .., "excess_per_km_minor": ..}; NULL:
-- unlimited, which every booking made before allowances had).
ALTER TABLE rm_bookings ADD COLUMN IF NOT EXISTS extras jsonb NOT NULL DEFAULT '[]';
ALTER TABLE rm_bookings ADD COLUMN IF NOT EXISTS mileage jsonb;
