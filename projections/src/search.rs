//! The search read model: one row per car with what searchCars filters and sorts on.
//!
//! Details, class, seats, transmission, fuel, features, daily rate, branch, retirement, whether
//! it is out on a rental, odometer (hand-overs, returns and telemetry), and the rating from
//! feedback on its bookings. Time-dependent status (maintenance, reserved now) is derived when
//! read, from the availability model; see the migration's comments.
//!
//! A batch loads the cars it touches, folds the events into them in memory, and writes them
//! back with one upsert.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use domain::booking::BookingEvent;
use domain::car::{CarDetails, CarEvent};
use domain::telemetry::TelemetryEvent;
use eventstore::RecordedEvent;
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::runtime::{ApplyError, Projection};
use crate::{aggregate_uuid, decode};

pub struct Search;

/// A car as searches and lookups read it: its `rm_search_cars` row and its status now (the
/// availability blocks that contain this instant), as the read side's answer.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct CarView {
    pub car_id: Uuid,
    pub make: String,
    pub model: String,
    pub year: i32,
    pub class: String,
    pub seats: i32,
    pub transmission: String,
    pub fuel: String,
    pub features: Vec<String>,
    pub daily_rate_minor: i64,
    pub currency: String,
    pub branch_code: String,
    pub odometer_km: Option<f64>,
    pub rating_sum: i64,
    pub review_count: i32,
    pub status: String,
}

/// The columns of [`CarView`] over `rm_search_cars c`. The status follows `Car::status_at`:
/// retired, out on a rental, in maintenance now, reserved now, else available.
pub const CAR_COLUMNS: &str = "c.car_id, c.make, c.model, c.year, c.class, c.seats, \
    c.transmission, c.fuel, c.features, c.daily_rate_minor, c.currency, c.branch_code, \
    c.odometer_km, c.rating_sum, c.review_count, \
    CASE WHEN c.retired THEN 'RETIRED' \
         WHEN c.rented_booking IS NOT NULL THEN 'RENTED' \
         WHEN EXISTS (SELECT 1 FROM rm_availability_blocks b WHERE b.car_id = c.car_id \
                      AND b.kind = 'MAINTENANCE' AND b.period @> now()) THEN 'MAINTENANCE' \
         WHEN EXISTS (SELECT 1 FROM rm_availability_blocks b WHERE b.car_id = c.car_id \
                      AND b.kind = 'RESERVATION' AND b.period @> now()) THEN 'RESERVED' \
         ELSE 'AVAILABLE' END AS status";

/// One car, from the read models.
pub async fn car(
    conn: impl sqlx::PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<CarView>, sqlx::Error> {
    let sql = format!("SELECT {CAR_COLUMNS} FROM rm_search_cars c WHERE c.car_id = $1");
    sqlx::query_as(&sql).bind(id).fetch_optional(conn).await
}

/// Cars of `class` at `branch`, priced in `currency`, not retired, with no reservation or
/// maintenance that keeps them over `[from, to)` followed by `turnaround_minutes`, cheapest
/// first (then by id), at most `limit`; `exclude` left out. What the read side shows free: the
/// car's aggregate has the last word when one is reserved.
#[allow(clippy::too_many_arguments)]
pub async fn free_cars(
    conn: impl sqlx::PgExecutor<'_>,
    branch: &str,
    class: &str,
    currency: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    turnaround_minutes: i64,
    exclude: Uuid,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let turnaround =
        i32::try_from(turnaround_minutes.clamp(0, domain::car::MAX_TURNAROUND_MINUTES))
            .unwrap_or(0);
    let mut q: sqlx::QueryBuilder<'_, sqlx::Postgres> = sqlx::QueryBuilder::new(
        "SELECT c.car_id FROM rm_search_cars c WHERE NOT c.retired AND c.branch_code = ",
    );
    q.push_bind(branch)
        .push(" AND c.class = ")
        .push_bind(class)
        .push(" AND c.currency = ")
        .push_bind(currency)
        .push(" AND c.car_id <> ")
        .push_bind(exclude)
        .push(" AND ");
    push_free(&mut q, from, to, Turnaround::Minutes(turnaround));
    q.push(" ORDER BY c.daily_rate_minor, c.car_id LIMIT ")
        .push_bind(limit.clamp(1, 100));
    q.build_query_scalar().fetch_all(conn).await
}

/// Cars by id (those that exist), in no order: one query for a page's worth of lookups.
pub async fn cars(pool: &sqlx::PgPool, ids: &[Uuid]) -> Result<Vec<CarView>, sqlx::Error> {
    let sql = format!("SELECT {CAR_COLUMNS} FROM rm_search_cars c WHERE c.car_id = ANY($1)");
    sqlx::query_as(&sql).bind(ids).fetch_all(pool).await
}

/// A search around a point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Near {
    pub latitude: f64,
    pub longitude: f64,
    pub radius_km: f64,
}

/// How search results are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CarOrder {
    PriceAsc,
    PriceDesc,
    /// Nearest first (needs `near`).
    Distance,
    /// Best average rating first, unrated last.
    Rating,
}

/// Where a search page ends, in the order it was asked for: the next page starts after it
/// (keyset), so cars added, changed or booked between two pages are neither repeated nor
/// skipped unless they moved in the order themselves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CarAfter {
    PriceAsc {
        rate: i64,
        id: Uuid,
    },
    PriceDesc {
        rate: i64,
        id: Uuid,
    },
    Distance {
        km: f64,
        rate: i64,
        id: Uuid,
    },
    /// `score`: the average rating, -1 for a car without reviews (they come last).
    Rating {
        score: f64,
        reviews: i32,
        id: Uuid,
    },
}

impl CarAfter {
    /// The order this cursor belongs to.
    pub fn order(&self) -> CarOrder {
        match self {
            Self::PriceAsc { .. } => CarOrder::PriceAsc,
            Self::PriceDesc { .. } => CarOrder::PriceDesc,
            Self::Distance { .. } => CarOrder::Distance,
            Self::Rating { .. } => CarOrder::Rating,
        }
    }

    /// As an opaque cursor (floats by their bits, so a cursor reads back exactly).
    pub fn to_cursor(&self) -> String {
        match self {
            Self::PriceAsc { rate, id } => format!("c:asc:{rate}:{id}"),
            Self::PriceDesc { rate, id } => format!("c:desc:{rate}:{id}"),
            Self::Distance { km, rate, id } => format!("c:near:{:x}:{rate}:{id}", km.to_bits()),
            Self::Rating { score, reviews, id } => {
                format!("c:rating:{:x}:{reviews}:{id}", score.to_bits())
            }
        }
    }

    /// A cursor [`CarAfter::to_cursor`] wrote; `None` for anything else.
    pub fn from_cursor(cursor: &str) -> Option<Self> {
        let parts: Vec<&str> = cursor.strip_prefix("c:")?.split(':').collect();
        let float = |hex: &str| u64::from_str_radix(hex, 16).ok().map(f64::from_bits);
        let id = |text: &str| Uuid::try_parse(text).ok();
        match parts.as_slice() {
            ["asc", rate, car] => Some(Self::PriceAsc {
                rate: rate.parse().ok()?,
                id: id(car)?,
            }),
            ["desc", rate, car] => Some(Self::PriceDesc {
                rate: rate.parse().ok()?,
                id: id(car)?,
            }),
            ["near", km, rate, car] => Some(Self::Distance {
                km: float(km).filter(|k| k.is_finite())?,
                rate: rate.parse().ok()?,
                id: id(car)?,
            }),
            ["rating", score, reviews, car] => Some(Self::Rating {
                score: float(score).filter(|s| s.is_finite())?,
                reviews: reviews.parse().ok()?,
                id: id(car)?,
            }),
            _ => None,
        }
    }
}

/// What `searchCars` asks: cars free over `[pickup_at, return_at)` (turnarounds included, as
/// booking decides) matching every filter given. Enum filters are wire names (`SUV`,
/// `AUTOMATIC`...).
#[derive(Clone, Debug, PartialEq)]
pub struct CarQuery {
    pub pickup_at: DateTime<Utc>,
    pub return_at: DateTime<Utc>,
    pub branch: Option<String>,
    pub near: Option<Near>,
    pub classes: Option<Vec<String>>,
    pub min_seats: Option<i32>,
    /// `(currency, minor units)`: priced in that currency at most that much a day.
    pub max_daily_rate: Option<(String, i64)>,
    pub transmission: Option<String>,
    pub fuel: Option<String>,
    /// Words of make, model, features, or the branch's name and city.
    pub text: Option<String>,
    pub order: CarOrder,
    /// Resume after this car (its order must be `order`).
    pub after: Option<CarAfter>,
    pub limit: i64,
}

/// A car found, how far it is from `near`, and where a page ending at it resumes.
#[derive(Clone, Debug, PartialEq)]
pub struct CarHit {
    pub car: CarView,
    pub distance_km: Option<f64>,
    pub after: CarAfter,
}

/// A page of a search: at most `limit` hits, and whether more follow.
#[derive(Clone, Debug, PartialEq)]
pub struct CarPage {
    pub hits: Vec<CarHit>,
    pub more: bool,
}

/// Great-circle distance in km between `near` and a branch `br`.
fn haversine_sql(q: &mut sqlx::QueryBuilder<'_, sqlx::Postgres>, near: Near) {
    q.push("(6371.0 * 2 * asin(sqrt(power(sin(radians(br.latitude - ")
        .push_bind(near.latitude)
        .push(") / 2), 2) + cos(radians(")
        .push_bind(near.latitude)
        .push(")) * cos(radians(br.latitude)) * power(sin(radians(br.longitude - ")
        .push_bind(near.longitude)
        .push(") / 2), 2))))");
}

/// The average rating as the Rating order sorts it: -1 without reviews (the expression of
/// `rm_search_cars_rating_idx`).
const SCORE_SQL: &str = "coalesce(c.rating_sum::float8 / nullif(c.review_count, 0), -1)";

/// At most this many words of a text search are used.
const MAX_WORDS: usize = 8;

/// `(SELECT … FROM branches …) br`: the branches a search may take cars from (the one asked
/// for, those within the radius of the point), with their distance from the point.
fn push_branches(
    q: &mut sqlx::QueryBuilder<'_, sqlx::Postgres>,
    query: &CarQuery,
    only: Option<&[String]>,
) {
    q.push("(SELECT br.code, br.turnaround_minutes, ");
    match query.near {
        Some(near) => haversine_sql(q, near),
        None => {
            q.push("NULL::double precision");
        }
    };
    q.push(" AS distance_km FROM branches br WHERE true");
    if let Some(code) = &query.branch {
        q.push(" AND br.code = ").push_bind(code.clone());
    }
    if let Some(codes) = only {
        q.push(" AND br.code = ANY(")
            .push_bind(codes.to_vec())
            .push(")");
    }
    if let Some(near) = query.near {
        q.push(" AND ");
        haversine_sql(q, near);
        q.push(" <= ").push_bind(near.radius_km);
    }
    q.push(") br");
}

/// The turnaround a rental's return adds before the car is free again.
#[derive(Clone, Copy)]
enum Turnaround {
    /// That of the branch `br` the car stands at (where a round trip returns it).
    OfBranch,
    Minutes(i32),
}

/// "Car `c` is free for `[pickup, return_at)`" as booking decides it: no block may reach the
/// pick-up with its own turnaround, and the rental with its turnaround may reach no block.
///
/// A window from [`BUSY_FROM`] ago on tests the row's own `busy` set (each block widened by
/// its turnaround), a range test with no join. An older window probes the availability
/// model's blocks: the `&&` on `period`, widened by the longest turnaround, is what its GiST
/// index answers, then the exact test.
fn push_free(
    q: &mut sqlx::QueryBuilder<'_, sqlx::Postgres>,
    pickup: DateTime<Utc>,
    return_at: DateTime<Utc>,
    turnaround: Turnaround,
) {
    let push_end = |q: &mut sqlx::QueryBuilder<'_, sqlx::Postgres>| {
        q.push_bind(return_at).push(" + make_interval(mins => ");
        match turnaround {
            Turnaround::OfBranch => q.push("br.turnaround_minutes"),
            Turnaround::Minutes(m) => q.push_bind(m),
        };
        q.push(")");
    };
    if pickup >= Utc::now() - BUSY_FROM {
        q.push("NOT c.busy && tstzrange(")
            .push_bind(pickup)
            .push(", ");
        push_end(q);
        q.push(")");
        return;
    }
    q.push(
        "NOT EXISTS (SELECT 1 FROM rm_availability_blocks b \
         WHERE b.car_id = c.car_id AND b.period && tstzrange(",
    );
    q.push_bind(pickup - chrono::Duration::minutes(domain::car::MAX_TURNAROUND_MINUTES))
        .push(", ");
    push_end(q);
    q.push(") AND upper(b.period) + make_interval(mins => b.turnaround_minutes) > ")
        .push_bind(pickup)
        .push(")");
}

/// The conditions on a car `c` at branch `br` that `query` asks for (no cursor).
fn push_car_conditions(q: &mut sqlx::QueryBuilder<'_, sqlx::Postgres>, query: &CarQuery) {
    q.push("NOT c.retired AND ");
    push_free(q, query.pickup_at, query.return_at, Turnaround::OfBranch);
    if let Some(classes) = &query.classes {
        q.push(" AND c.class = ANY(")
            .push_bind(classes.clone())
            .push(")");
    }
    if let Some(seats) = query.min_seats {
        q.push(" AND c.seats >= ").push_bind(seats);
    }
    if let Some((currency, max)) = &query.max_daily_rate {
        q.push(" AND c.currency = ")
            .push_bind(currency.clone())
            .push(" AND c.daily_rate_minor <= ")
            .push_bind(*max);
    }
    if let Some(t) = &query.transmission {
        q.push(" AND c.transmission = ").push_bind(t.clone());
    }
    if let Some(f) = &query.fuel {
        q.push(" AND c.fuel = ").push_bind(f.clone());
    }
    if let Some(text) = &query.text {
        // Each word in the car (make, model, features: its GIN index) or in the name or city
        // of the branch it stands at (those branches' codes, found once per word).
        for word in text.split_whitespace().take(MAX_WORDS) {
            q.push(" AND (c.search_vector @@ plainto_tsquery('simple', ")
                .push_bind(word.to_owned())
                .push(
                    ") OR c.branch_code = ANY(ARRAY(SELECT w.code FROM branches w \
                     WHERE to_tsvector('simple', w.name || ' ' || w.city) \
                     @@ plainto_tsquery('simple', ",
                )
                .push_bind(word.to_owned())
                .push("))))");
        }
    }
}

/// Why a search cannot run as asked.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("the cursor belongs to another order")]
    CursorOrder,
    #[error("the DISTANCE order needs a point to measure from")]
    DistanceWithoutPoint,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Search the fleet: one page, in `query.order`, after `query.after`.
///
/// Every order reads an index in its own order and stops at the page's end, so a page costs
/// about the same whatever the fleet's size: price (`rm_search_cars_rate_idx`, or
/// `rm_search_cars_branch_rate_idx` for one branch) and rating (`rm_search_cars_rating_idx`).
/// Distance is the branch's: the branches within the radius are taken nearest first, and each
/// (with any at the very same distance) gives its cars in price order until the page is full,
/// so a search near a point usually reads one branch.
pub async fn find(pool: &sqlx::PgPool, query: &CarQuery) -> Result<CarPage, SearchError> {
    if query.after.is_some_and(|a| a.order() != query.order) {
        return Err(SearchError::CursorOrder);
    }
    if query.order != CarOrder::Distance {
        return page_of(pool, query, None).await;
    }
    let Some(near) = query.near else {
        return Err(SearchError::DistanceWithoutPoint);
    };
    let resume_km = match query.after {
        Some(CarAfter::Distance { km, .. }) => Some(km),
        _ => None,
    };
    // The branches within reach, nearest first (a fleet has hundreds at most).
    let mut q: sqlx::QueryBuilder<'_, sqlx::Postgres> =
        sqlx::QueryBuilder::new("SELECT br.code, br.distance_km FROM ");
    push_branches(&mut q, query, None);
    if let Some(km) = resume_km {
        q.push(" WHERE br.distance_km >= ").push_bind(km);
    }
    q.push(" ORDER BY br.distance_km, br.code");
    let branches: Vec<(String, f64)> = q.build_query_as().fetch_all(pool).await?;
    let mut hits: Vec<CarHit> = Vec::new();
    let mut rest = branches.as_slice();
    while let Some((_, km)) = rest.first() {
        // Branches at the very same distance are one group, merged in price order.
        let same = rest.iter().take_while(|(_, d)| d == km).count();
        let codes: Vec<String> = rest[..same].iter().map(|(c, _)| c.clone()).collect();
        rest = &rest[same..];
        let after = match query.after {
            Some(CarAfter::Distance { km: at, rate, id }) if at == *km => {
                Some(CarAfter::PriceAsc { rate, id })
            }
            _ => None,
        };
        let wanted = query.limit + 1 - hits.len() as i64;
        let group = CarQuery {
            order: CarOrder::PriceAsc,
            after,
            limit: wanted,
            near: Some(near),
            ..query.clone()
        };
        let page = page_of(pool, &group, Some(&codes)).await?;
        hits.extend(page.hits.into_iter().map(|hit| CarHit {
            after: CarAfter::Distance {
                km: *km,
                rate: hit.car.daily_rate_minor,
                id: hit.car.car_id,
            },
            distance_km: Some(*km),
            car: hit.car,
        }));
        if hits.len() as i64 > query.limit {
            break;
        }
    }
    let more = hits.len() as i64 > query.limit;
    hits.truncate(usize::try_from(query.limit).unwrap_or(0));
    Ok(CarPage { hits, more })
}

/// One page in a price or rating order, of the branches `only` names when given.
async fn page_of(
    pool: &sqlx::PgPool,
    query: &CarQuery,
    only: Option<&[String]>,
) -> Result<CarPage, SearchError> {
    use sqlx::Row;
    let page = query.limit + 1;
    let mut q: sqlx::QueryBuilder<'_, sqlx::Postgres> = sqlx::QueryBuilder::new("SELECT ");
    q.push(CAR_COLUMNS)
        .push(", br.distance_km, ")
        .push(SCORE_SQL)
        .push(" AS score FROM ");
    push_branches(&mut q, query, only);
    q.push(" JOIN rm_search_cars c ON c.branch_code = br.code WHERE ");
    push_car_conditions(&mut q, query);
    // The branches named on the car too: one code lets the planner read that branch's cars in
    // price order (`rm_search_cars_branch_rate_idx`); through the join alone it walked the
    // whole fleet's price index for a branch of dear cars (137 ms at 20,000 cars).
    match only {
        Some([code]) => {
            q.push(" AND c.branch_code = ").push_bind(code.clone());
        }
        Some(codes) => {
            q.push(" AND c.branch_code = ANY(")
                .push_bind(codes.to_vec())
                .push(")");
        }
        None => {}
    }
    match query.after {
        None | Some(CarAfter::Distance { .. }) => {}
        Some(CarAfter::PriceAsc { rate, id }) => {
            q.push(" AND (c.daily_rate_minor, c.car_id) > (")
                .push_bind(rate)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        Some(CarAfter::PriceDesc { rate, id }) => {
            q.push(" AND (c.daily_rate_minor, c.car_id) < (")
                .push_bind(rate)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        Some(CarAfter::Rating { score, reviews, id }) => {
            q.push(" AND (")
                .push(SCORE_SQL)
                .push(" < ")
                .push_bind(score)
                .push(" OR (")
                .push(SCORE_SQL)
                .push(" = ")
                .push_bind(score)
                .push(" AND (c.review_count < ")
                .push_bind(reviews)
                .push(" OR (c.review_count = ")
                .push_bind(reviews)
                .push(" AND c.car_id > ")
                .push_bind(id)
                .push("))))");
        }
    }
    q.push(match query.order {
        CarOrder::PriceAsc | CarOrder::Distance => " ORDER BY c.daily_rate_minor, c.car_id",
        CarOrder::PriceDesc => " ORDER BY c.daily_rate_minor DESC, c.car_id DESC",
        CarOrder::Rating => {
            " ORDER BY coalesce(c.rating_sum::float8 / nullif(c.review_count, 0), -1) DESC, \
             c.review_count DESC, c.car_id"
        }
    });
    q.push(" LIMIT ").push_bind(page);
    let found = q.build().fetch_all(pool).await?;
    let more = found.len() as i64 > query.limit;
    let mut hits = Vec::new();
    for row in found.iter().take(usize::try_from(query.limit).unwrap_or(0)) {
        let car: CarView = sqlx::FromRow::from_row(row)?;
        let distance_km: Option<f64> = row.try_get("distance_km")?;
        let score: f64 = row.try_get("score")?;
        let (rate, id) = (car.daily_rate_minor, car.car_id);
        let after = match query.order {
            CarOrder::PriceAsc | CarOrder::Distance => CarAfter::PriceAsc { rate, id },
            CarOrder::PriceDesc => CarAfter::PriceDesc { rate, id },
            CarOrder::Rating => CarAfter::Rating {
                score,
                reviews: car.review_count,
                id,
            },
        };
        hits.push(CarHit {
            car,
            distance_km,
            after,
        });
    }
    Ok(CarPage { hits, more })
}

/// How many cars `query` matches (its window and filters), counted up to `cap`: a total shown
/// beside a page, exact when small and never more work than `cap` matches.
pub async fn count(pool: &sqlx::PgPool, query: &CarQuery, cap: i64) -> Result<i64, sqlx::Error> {
    let mut q: sqlx::QueryBuilder<'_, sqlx::Postgres> =
        sqlx::QueryBuilder::new("SELECT count(*) FROM (SELECT 1 FROM ");
    push_branches(&mut q, query, None);
    q.push(" JOIN rm_search_cars c ON c.branch_code = br.code WHERE ");
    push_car_conditions(&mut q, query);
    q.push(" LIMIT ").push_bind(cap).push(") AS capped");
    q.build_query_scalar().fetch_one(pool).await
}

/// How many cars of `branch` (or of the fleet) are in each status now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetCounts {
    pub cars: i64,
    pub available: i64,
    pub rented: i64,
    pub maintenance: i64,
    pub retired: i64,
}

pub async fn fleet_counts(
    pool: &sqlx::PgPool,
    branch: Option<&str>,
) -> Result<FleetCounts, sqlx::Error> {
    use sqlx::Row;
    let row = sqlx::query(&format!(
        "SELECT count(*) AS cars, count(*) FILTER (WHERE status = 'AVAILABLE') AS available, \
           count(*) FILTER (WHERE status = 'RENTED') AS rented, \
           count(*) FILTER (WHERE status = 'MAINTENANCE') AS maintenance, \
           count(*) FILTER (WHERE status = 'RETIRED') AS retired \
         FROM (SELECT {CAR_COLUMNS} FROM rm_search_cars c \
               WHERE $1::text IS NULL OR c.branch_code = $1) s"
    ))
    .bind(branch)
    .fetch_one(pool)
    .await?;
    Ok(FleetCounts {
        cars: row.try_get("cars")?,
        available: row.try_get("available")?,
        rented: row.try_get("rented")?,
        maintenance: row.try_get("maintenance")?,
        retired: row.try_get("retired")?,
    })
}

/// An enum's wire name (`SCREAMING_SNAKE_CASE`, as serde writes it).
pub fn enum_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

#[derive(Clone, Debug, sqlx::FromRow)]
struct CarRow {
    car_id: Uuid,
    make: String,
    model: String,
    year: i32,
    class: String,
    seats: i32,
    transmission: String,
    fuel: String,
    features: Vec<String>,
    daily_rate_minor: i64,
    currency: String,
    branch_code: String,
    retired: bool,
    rented_booking: Option<Uuid>,
    odometer_km: Option<f64>,
    rating_sum: i64,
    review_count: i32,
    registered_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// The car's blocks that may still keep it from a rental (the availability model's, as
    /// the same fold makes them), so a search tests a row and not a join.
    blocks: sqlx::types::Json<Vec<KeptBlock>>,
}

/// A block as a search row keeps it (`rm_search_cars.blocks`).
#[derive(Clone, Debug, PartialEq, serde::Deserialize, Serialize)]
struct KeptBlock {
    id: Uuid,
    kind: String,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    turnaround_minutes: i32,
}

/// How long a row keeps a block after it stopped holding the car, counted from the car's
/// latest event: searches from a day ago on read the kept blocks (`BUSY_FROM`), and a window
/// that starts earlier is tested against the availability model itself.
const KEEP_PAST: chrono::Duration = chrono::Duration::days(1);

/// Searches whose pick-up is no earlier than this before now test the row's `busy` set; older
/// ones probe the availability model. Smaller than [`KEEP_PAST`], so a block a row no longer
/// keeps can never meet a window tested against it, even with the clocks of this process and
/// of the database apart by hours.
const BUSY_FROM: chrono::Duration = chrono::Duration::hours(12);

impl CarRow {
    /// The row of a car as `CarRegistered` makes it.
    fn registered(
        car_id: Uuid,
        details: &CarDetails,
        daily_rate: domain::Money,
        branch: &str,
        at: DateTime<Utc>,
    ) -> Self {
        let mut row = CarRow {
            car_id,
            make: String::new(),
            model: String::new(),
            year: 0,
            class: String::new(),
            seats: 0,
            transmission: String::new(),
            fuel: String::new(),
            features: Vec::new(),
            daily_rate_minor: daily_rate.minor,
            currency: daily_rate.currency.as_str().to_owned(),
            branch_code: branch.to_owned(),
            retired: false,
            rented_booking: None,
            odometer_km: None,
            rating_sum: 0,
            review_count: 0,
            registered_at: at,
            updated_at: at,
            blocks: sqlx::types::Json(Vec::new()),
        };
        row.set_details(details);
        row
    }

    /// Fold a car event that moves its blocks, as the availability model folds it, then
    /// forget the blocks that stopped holding the car more than [`KEEP_PAST`] before `at`.
    fn fold_blocks(&mut self, event: &CarEvent, at: DateTime<Utc>) -> Result<(), ApplyError> {
        use crate::availability::{Block, fold};
        let car = self.car_id;
        let mut current: HashMap<(Uuid, Uuid), Block> = self
            .blocks
            .iter()
            .map(|b| {
                let kind = if b.kind == "MAINTENANCE" {
                    "MAINTENANCE"
                } else {
                    "RESERVATION"
                };
                let block = Block {
                    kind,
                    start: b.from,
                    end: b.to,
                    reason: None,
                    turnaround_minutes: b.turnaround_minutes,
                };
                ((car, b.id), block)
            })
            .collect();
        fold(&mut current, &mut HashSet::new(), car, event.clone())?;
        let mut kept: Vec<KeptBlock> = current
            .into_iter()
            .filter(|(_, b)| b.held_until() > at - KEEP_PAST)
            .map(|((_, id), b)| KeptBlock {
                id,
                kind: b.kind.to_owned(),
                from: b.start,
                to: b.end,
                turnaround_minutes: b.turnaround_minutes,
            })
            .collect();
        kept.sort_by_key(|b| (b.from, b.id));
        self.blocks = sqlx::types::Json(kept);
        Ok(())
    }

    /// The union of its blocks, each held until its turnaround ends, as a `tstzmultirange`
    /// literal.
    fn busy(&self) -> String {
        let ranges: Vec<String> = self
            .blocks
            .iter()
            .map(|b| {
                let until = b.to + chrono::Duration::minutes(i64::from(b.turnaround_minutes));
                format!(
                    "[\"{}\",\"{}\")",
                    b.from.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                    until.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                )
            })
            .collect();
        format!("{{{}}}", ranges.join(","))
    }

    fn set_details(&mut self, details: &CarDetails) {
        self.make.clone_from(&details.make);
        self.model.clone_from(&details.model);
        self.year = details.year;
        self.class = enum_name(&details.class);
        self.seats = i32::from(details.seats);
        self.transmission = enum_name(&details.transmission);
        self.fuel = enum_name(&details.fuel);
        self.features.clone_from(&details.features);
    }

    fn raise_odometer(&mut self, km: f64) {
        self.odometer_km = Some(self.odometer_km.unwrap_or(0.0).max(km));
    }

    fn search_text(&self) -> String {
        let mut text = format!("{} {}", self.make, self.model);
        for feature in &self.features {
            text.push(' ');
            text.push_str(feature);
        }
        text
    }
}

enum Decoded {
    Car(Uuid, CarEvent),
    Booking(Uuid, BookingEvent),
    Telemetry(TelemetryEvent),
}

#[async_trait::async_trait]
impl Projection for Search {
    fn name(&self) -> &'static str {
        "search"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_search_cars", "rm_search_booking_cars"]
    }

    fn wants(&self, event: &RecordedEvent) -> bool {
        match event.aggregate_type.as_str() {
            "car" => true,
            "booking" => matches!(
                event.event_type.as_str(),
                "BookingHeld" | "FeedbackSubmitted"
            ),
            "telemetry" => event.event_type == "ReadingsRecorded",
            _ => false,
        }
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ApplyError> {
        let mut decoded = Vec::with_capacity(events.len());
        let mut cars = HashSet::new();
        let mut feedback_bookings = HashSet::new();
        for event in events {
            let item = match event.aggregate_type.as_str() {
                "car" => {
                    let id = aggregate_uuid(event)?;
                    cars.insert(id);
                    Decoded::Car(id, decode(event)?)
                }
                "booking" => {
                    let id = aggregate_uuid(event)?;
                    let e: BookingEvent = decode(event)?;
                    match &e {
                        BookingEvent::BookingHeld { car_id, .. } => {
                            cars.insert(*car_id);
                        }
                        _ => {
                            feedback_bookings.insert(id);
                        }
                    }
                    Decoded::Booking(id, e)
                }
                _ => {
                    let e: TelemetryEvent = decode(event)?;
                    if let TelemetryEvent::ReadingsRecorded { car_id, .. } = &e {
                        cars.insert(*car_id);
                    }
                    Decoded::Telemetry(e)
                }
            };
            decoded.push((item, event.recorded_at));
        }
        // Which car each rated booking is for (booked earlier, or in this batch).
        let mut booking_car: HashMap<Uuid, Uuid> = HashMap::new();
        if !feedback_bookings.is_empty() {
            let ids: Vec<Uuid> = feedback_bookings.into_iter().collect();
            let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(
                "SELECT booking_id, car_id FROM rm_search_booking_cars WHERE booking_id = ANY($1)",
            )
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?;
            for (booking, car) in rows {
                cars.insert(car);
                booking_car.insert(booking, car);
            }
        }
        let ids: Vec<Uuid> = cars.into_iter().collect();
        let mut rows: HashMap<Uuid, CarRow> = sqlx::query_as::<_, CarRow>(
            "SELECT car_id, make, model, year, class, seats, transmission, fuel, features, \
               daily_rate_minor, currency, branch_code, retired, rented_booking, odometer_km, \
               rating_sum, review_count, registered_at, updated_at, blocks \
             FROM rm_search_cars WHERE car_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|row| (row.car_id, row))
        .collect();
        let mut dirty = HashSet::new();
        let mut new_bookings: Vec<(Uuid, Uuid)> = Vec::new();
        for (item, at) in decoded {
            match item {
                Decoded::Car(car, event) => {
                    if let CarEvent::CarRegistered {
                        details,
                        daily_rate,
                        branch,
                        ..
                    } = &event
                    {
                        if rows.contains_key(&car) {
                            return Err(ApplyError::Invalid(format!("car {car} registered twice")));
                        }
                        let row = CarRow::registered(car, details, *daily_rate, branch, at);
                        rows.insert(car, row);
                        dirty.insert(car);
                        continue;
                    }
                    let Some(row) = rows.get_mut(&car) else {
                        continue;
                    };
                    if crate::availability::moves_blocks(&event) {
                        row.fold_blocks(&event, at)?;
                        row.updated_at = at;
                        dirty.insert(car);
                    }
                    if apply_car(row, event, at) {
                        dirty.insert(car);
                    }
                }
                Decoded::Booking(booking, BookingEvent::BookingHeld { car_id, .. }) => {
                    booking_car.insert(booking, car_id);
                    new_bookings.push((booking, car_id));
                }
                Decoded::Booking(booking, BookingEvent::FeedbackSubmitted { rating, .. }) => {
                    let car = booking_car.get(&booking).copied();
                    if let Some(row) = car.and_then(|c| rows.get_mut(&c)) {
                        row.rating_sum += i64::from(rating);
                        row.review_count += 1;
                        row.updated_at = at;
                        dirty.insert(row.car_id);
                    }
                }
                Decoded::Booking(..) => {}
                Decoded::Telemetry(TelemetryEvent::ReadingsRecorded {
                    car_id, readings, ..
                }) => {
                    let max = readings.iter().map(|r| r.odometer_km).reduce(f64::max);
                    if let (Some(row), Some(km)) = (rows.get_mut(&car_id), max) {
                        row.raise_odometer(km);
                        dirty.insert(car_id);
                    }
                }
                Decoded::Telemetry(_) => {}
            }
        }
        if !new_bookings.is_empty() {
            let (bookings, cars): (Vec<Uuid>, Vec<Uuid>) = new_bookings.into_iter().unzip();
            sqlx::query(
                "INSERT INTO rm_search_booking_cars (booking_id, car_id) \
                 SELECT * FROM unnest($1::uuid[], $2::uuid[])",
            )
            .bind(bookings)
            .bind(cars)
            .execute(&mut *conn)
            .await?;
        }
        let changed: Vec<&CarRow> = dirty.iter().filter_map(|id| rows.get(id)).collect();
        write_cars(conn, &changed).await
    }
}

/// Fold one car event into its row; whether the row changed.
fn apply_car(row: &mut CarRow, event: CarEvent, at: DateTime<Utc>) -> bool {
    match event {
        CarEvent::CarRegistered { .. }
        | CarEvent::MaintenanceScheduled { .. }
        | CarEvent::MaintenanceCompleted { .. }
        | CarEvent::CarReserved { .. }
        | CarEvent::ReservationChanged { .. }
        | CarEvent::ReservationReleased { .. } => return false,
        CarEvent::CarDetailsUpdated { details } => row.set_details(&details),
        CarEvent::DailyRateChanged { to, .. } => {
            row.daily_rate_minor = to.minor;
            row.currency = to.currency.as_str().to_owned();
        }
        CarEvent::CarRelocated { to, .. } => row.branch_code = to,
        CarEvent::CarRetired { .. } => row.retired = true,
        CarEvent::CarPickedUp {
            booking_id,
            odometer_km,
            ..
        } => {
            row.rented_booking = Some(booking_id);
            row.raise_odometer(odometer_km);
        }
        CarEvent::CarReturned {
            odometer_km,
            branch,
            ..
        } => {
            row.rented_booking = None;
            row.branch_code = branch;
            row.raise_odometer(odometer_km);
        }
    }
    row.updated_at = at;
    true
}

async fn write_cars(conn: &mut PgConnection, rows: &[&CarRow]) -> Result<(), ApplyError> {
    if rows.is_empty() {
        return Ok(());
    }
    macro_rules! column {
        ($field:ident) => {
            rows.iter().map(|r| r.$field.clone()).collect::<Vec<_>>()
        };
    }
    let features: Vec<String> = rows
        .iter()
        .map(|r| serde_json::to_string(&r.features).unwrap_or_else(|_| "[]".to_owned()))
        .collect();
    let text: Vec<String> = rows.iter().map(|r| r.search_text()).collect();
    let blocks: Vec<String> = rows
        .iter()
        .map(|r| serde_json::to_string(&r.blocks.0).unwrap_or_else(|_| "[]".to_owned()))
        .collect();
    let busy: Vec<String> = rows.iter().map(|r| r.busy()).collect();
    sqlx::query(
        "INSERT INTO rm_search_cars (car_id, make, model, year, class, seats, transmission, fuel, \
           features, daily_rate_minor, currency, branch_code, retired, rented_booking, \
           odometer_km, rating_sum, review_count, search_vector, registered_at, updated_at, \
           blocks, busy) \
         SELECT car_id, make, model, year, class, seats, transmission, fuel, \
           ARRAY(SELECT jsonb_array_elements_text(features::jsonb)), daily_rate_minor, currency, \
           branch_code, retired, rented_booking, odometer_km, rating_sum, review_count, \
           to_tsvector('simple', search_text), registered_at, updated_at, blocks::jsonb, \
           busy::tstzmultirange \
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::text[], $6::int[], \
           $7::text[], $8::text[], $9::text[], $10::bigint[], $11::text[], $12::text[], \
           $13::bool[], $14::uuid[], $15::float8[], $16::bigint[], $17::int[], $18::text[], \
           $19::timestamptz[], $20::timestamptz[], $21::text[], $22::text[]) \
           AS u(car_id, make, model, year, class, seats, transmission, fuel, features, \
             daily_rate_minor, currency, branch_code, retired, rented_booking, odometer_km, \
             rating_sum, review_count, search_text, registered_at, updated_at, blocks, busy) \
         ON CONFLICT (car_id) DO UPDATE SET make = EXCLUDED.make, model = EXCLUDED.model, \
           year = EXCLUDED.year, class = EXCLUDED.class, seats = EXCLUDED.seats, \
           transmission = EXCLUDED.transmission, fuel = EXCLUDED.fuel, \
           features = EXCLUDED.features, daily_rate_minor = EXCLUDED.daily_rate_minor, \
           currency = EXCLUDED.currency, branch_code = EXCLUDED.branch_code, \
           retired = EXCLUDED.retired, rented_booking = EXCLUDED.rented_booking, \
           odometer_km = EXCLUDED.odometer_km, rating_sum = EXCLUDED.rating_sum, \
           review_count = EXCLUDED.review_count, search_vector = EXCLUDED.search_vector, \
           updated_at = EXCLUDED.updated_at, blocks = EXCLUDED.blocks, busy = EXCLUDED.busy",
    )
    .bind(column!(car_id))
    .bind(column!(make))
    .bind(column!(model))
    .bind(column!(year))
    .bind(column!(class))
    .bind(column!(seats))
    .bind(column!(transmission))
    .bind(column!(fuel))
    .bind(features)
    .bind(column!(daily_rate_minor))
    .bind(column!(currency))
    .bind(column!(branch_code))
    .bind(column!(retired))
    .bind(column!(rented_booking))
    .bind(column!(odometer_km))
    .bind(column!(rating_sum))
    .bind(column!(review_count))
    .bind(text)
    .bind(column!(registered_at))
    .bind(column!(updated_at))
    .bind(blocks)
    .bind(busy)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;
    use domain::window::TimeWindow;

    fn row() -> CarRow {
        let details = CarDetails {
            make: "Fiat".into(),
            model: "Panda".into(),
            year: 2024,
            class: domain::car::CarClass::Economy,
            seats: 4,
            transmission: domain::car::Transmission::Manual,
            fuel: domain::car::FuelType::Petrol,
            features: Vec::new(),
        };
        let rate = domain::Money::new(3_000, domain::Currency::EUR);
        CarRow::registered(Uuid::from_u128(1), &details, rate, "LIS", day(1, 9))
    }

    fn day(d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, d, h, 0, 0).unwrap()
    }

    fn window(from: DateTime<Utc>, to: DateTime<Utc>) -> TimeWindow {
        TimeWindow::new(from, to).unwrap()
    }

    #[test]
    fn a_row_keeps_the_blocks_that_can_still_hold_the_car_and_their_union_widened_by_turnaround() {
        let mut car = row();
        let (a, b) = (Uuid::from_u128(10), Uuid::from_u128(11));
        let reserve = |booking_id, from, to, turnaround_minutes| CarEvent::CarReserved {
            booking_id,
            window: window(from, to),
            at: day(1, 9),
            turnaround_minutes,
        };
        car.fold_blocks(&reserve(a, day(3, 10), day(5, 10), 60), day(1, 9))
            .unwrap();
        car.fold_blocks(&reserve(b, day(8, 10), day(9, 10), 30), day(1, 10))
            .unwrap();
        assert_eq!(
            car.busy(),
            "{[\"2026-12-03T10:00:00Z\",\"2026-12-05T11:00:00Z\"),\
             [\"2026-12-08T10:00:00Z\",\"2026-12-09T10:30:00Z\")}"
        );
        // Released: gone. The other, a day after it stopped holding the car: forgotten.
        car.fold_blocks(
            &CarEvent::ReservationReleased {
                booking_id: b,
                at: day(2, 9),
            },
            day(2, 9),
        )
        .unwrap();
        assert_eq!(car.blocks.len(), 1);
        car.fold_blocks(
            &CarEvent::ReservationReleased {
                booking_id: Uuid::from_u128(99),
                at: day(6, 10),
            },
            day(6, 10),
        )
        .unwrap();
        assert_eq!(car.blocks.len(), 1, "held until 5 Dec 11:00, kept a day");
        car.fold_blocks(
            &CarEvent::ReservationReleased {
                booking_id: Uuid::from_u128(99),
                at: day(6, 11),
            },
            day(6, 11) + chrono::Duration::minutes(1),
        )
        .unwrap();
        assert!(car.blocks.is_empty(), "{:?}", car.blocks);
        assert_eq!(car.busy(), "{}");
        // A forgotten reservation that moves (an overdue rental extended) is kept again.
        car.fold_blocks(
            &CarEvent::ReservationChanged {
                booking_id: a,
                from: window(day(3, 10), day(5, 10)),
                to: window(day(3, 10), day(10, 10)),
                at: day(6, 12),
                turnaround_minutes: 60,
            },
            day(6, 12),
        )
        .unwrap();
        assert_eq!(
            car.busy(),
            "{[\"2026-12-03T10:00:00Z\",\"2026-12-10T11:00:00Z\")}"
        );
    }
}
