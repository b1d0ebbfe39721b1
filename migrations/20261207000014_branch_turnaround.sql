-- Turnaround (the cleaning time after a rental, before the car can go out again) is a setting
-- of each branch: a rental returned there keeps the car that long after its window. It was one
-- fixed hour for the whole fleet, which is what the default keeps for existing branches.
ALTER TABLE branches ADD COLUMN IF NOT EXISTS turnaround_minutes integer NOT NULL DEFAULT 60
    CHECK (turnaround_minutes BETWEEN 0 AND 1440);

-- The availability read model keeps each block's own turnaround (from its event: CarReserved,
-- ReservationChanged, MaintenanceScheduled; 60 in events written before), so availability and
-- search answer exactly what booking decides. Blocks are free of each other's periods; the
-- turnarounds are applied by readers (a block keeps the car until upper(period) + turnaround).
ALTER TABLE rm_availability_blocks ADD COLUMN IF NOT EXISTS turnaround_minutes integer NOT NULL
    DEFAULT 60;
