-- Search at fleet scale: each car's row keeps the blocks that may still keep it from a rental
-- (the availability model's, folded the same way by the search projection, forgotten a day
-- after they stop holding the car) and their union as a multirange, each block widened by its
-- turnaround. "Free for [pickup, return + turnaround)" is then a test on the row
-- (NOT busy && tstzrange(...)), not a probe into rm_availability_blocks per car.
--   blocks: [{"id": uuid, "kind": "RESERVATION"|"MAINTENANCE", "from": ts, "to": ts,
--             "turnaround_minutes": int}], earliest first.
ALTER TABLE rm_search_cars ADD COLUMN IF NOT EXISTS blocks jsonb NOT NULL DEFAULT '[]';
ALTER TABLE rm_search_cars ADD COLUMN IF NOT EXISTS busy tstzmultirange NOT NULL DEFAULT '{}';

-- Rows written before this migration take the blocks the availability model holds now.
UPDATE rm_search_cars c
SET blocks = k.blocks, busy = k.busy
FROM (
    SELECT b.car_id,
           jsonb_agg(jsonb_build_object(
               'id', b.block_id, 'kind', b.kind,
               'from', lower(b.period), 'to', upper(b.period),
               'turnaround_minutes', b.turnaround_minutes)
             ORDER BY lower(b.period), b.block_id) AS blocks,
           range_agg(tstzrange(lower(b.period),
                               upper(b.period) + make_interval(mins => b.turnaround_minutes))) AS busy
    FROM rm_availability_blocks b
    WHERE upper(b.period) + make_interval(mins => b.turnaround_minutes) > now() - interval '1 day'
    GROUP BY b.car_id
) k
WHERE c.car_id = k.car_id AND c.busy = '{}';
