-- Search at fleet scale: a branch's cars in price order (a search by branch, and each branch
-- of a search near a point, reads a page from it and stops), and the fleet in rating order.
CREATE INDEX IF NOT EXISTS rm_search_cars_branch_rate_idx
    ON rm_search_cars (branch_code, daily_rate_minor, car_id) WHERE NOT retired;
CREATE INDEX IF NOT EXISTS rm_search_cars_rating_idx
    ON rm_search_cars ((coalesce(rating_sum::float8 / nullif(review_count, 0), -1)) DESC,
                       review_count DESC, car_id)
    WHERE NOT retired;
