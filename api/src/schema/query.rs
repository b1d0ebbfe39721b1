//! Queries: accounts, search and bookings (read models), the log for auditors, analytics.

use async_graphql::{Context, Json, Object};
use chrono::{DateTime, NaiveDate, Utc};
use commands::history::{AsOf, state_at};
use eventstore::{Checkpoint, RecordedEvent, StreamId};
use sqlx::{Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::rows::{self, BOOKING_COLUMNS, BookingRow, CAR_COLUMNS, CarRow, TELEMETRY_COLUMNS};
use super::types::*;
use super::{offset_cursor, offset_from, page_size, services, text_arg, weighted};
use crate::auth::{self, caller};
use crate::error::{ApiResult, AppError};

/// The columns [`decode_event`] reads, over `events e`.
pub(crate) const EVENT_COLUMNS: &str = "e.global_position, e.transaction_id, \
    e.event_id, e.aggregate_type, e.aggregate_id, e.version, e.event_type, e.event_version, \
    e.payload, e.metadata, e.recorded_at, e.hash";

pub(crate) fn decode_event(row: &sqlx::postgres::PgRow) -> ApiResult<RecordedEvent> {
    Ok(eventstore::store::decode_event(row)?)
}

/// The longest period a time-range argument may span.
const MAX_SPAN_DAYS: i64 = 366;

fn check_window(
    from_field: &str,
    from: DateTime<Utc>,
    to_field: &str,
    to: DateTime<Utc>,
) -> ApiResult<()> {
    if to <= from {
        return Err(AppError::bad_input(
            to_field,
            format!("must be after {from_field}"),
        ));
    }
    if to - from > chrono::Duration::days(MAX_SPAN_DAYS) {
        return Err(AppError::bad_input(
            to_field,
            format!("at most {MAX_SPAN_DAYS} days after {from_field}"),
        ));
    }
    Ok(())
}

fn check_dates(from: NaiveDate, to: NaiveDate) -> ApiResult<()> {
    if to < from {
        return Err(AppError::bad_input("to", "must not be before from"));
    }
    if (to - from).num_days() > MAX_SPAN_DAYS {
        return Err(AppError::bad_input(
            "to",
            format!("at most {MAX_SPAN_DAYS} days after from"),
        ));
    }
    Ok(())
}

/// `afterPosition`: a global position (as `EventRecord.position` shows it) or an edge cursor
/// (`<transaction id>:<position>`), as the commit-order checkpoint to read after.
pub(crate) async fn checkpoint_after(
    ctx: &Context<'_>,
    after: Option<&str>,
) -> ApiResult<Checkpoint> {
    let bad = || {
        AppError::bad_input(
            "afterPosition",
            "must be an event's position or an edge cursor",
        )
    };
    let Some(after) = after.map(str::trim) else {
        return Ok(Checkpoint::START);
    };
    if let Some((tx, pos)) = after.split_once(':') {
        return Ok(Checkpoint {
            transaction_id: tx.parse().map_err(|_| bad())?,
            global_position: pos.parse().map_err(|_| bad())?,
        });
    }
    let position: i64 = after.parse().map_err(|_| bad())?;
    if position <= 0 {
        return Ok(Checkpoint::START);
    }
    let pool = services(ctx)?.store.pool();
    let txid: Option<eventstore::Xid8> =
        sqlx::query_scalar("SELECT transaction_id FROM events WHERE global_position = $1")
            .bind(position)
            .fetch_optional(pool)
            .await?;
    let txid =
        txid.ok_or_else(|| AppError::bad_input("afterPosition", "no event has this position"))?;
    Ok(Checkpoint {
        transaction_id: txid.0,
        global_position: position,
    })
}

pub(crate) fn event_cursor(e: &RecordedEvent) -> String {
    format!("{}:{}", e.transaction_id, e.global_position)
}

fn stream_id(aggregate_type: &str, aggregate_id: &str) -> ApiResult<StreamId> {
    let t = text_arg("aggregateType", aggregate_type, 64)?;
    let id = text_arg("aggregateId", aggregate_id, 200)?;
    if t.is_empty() {
        return Err(AppError::bad_input("aggregateType", "must not be empty"));
    }
    Ok(StreamId::new(t, id))
}

/// Load a booking the caller may see (owner or staff), or NOT_FOUND / FORBIDDEN.
pub(crate) async fn visible_booking(ctx: &Context<'_>, id: Uuid) -> ApiResult<BookingRow> {
    let who = caller(ctx)?;
    who.user()?;
    let row = rows::booking(services(ctx)?.store.pool(), id)
        .await?
        .ok_or_else(|| AppError::not_found("booking"))?;
    who.require_owner_or(row.customer_id, auth::BOOKING_READERS)?;
    Ok(row)
}

/// Matches counted at most, for a list's `totalCount` (exact below it; the count stops there).
pub(crate) const COUNT_CAP: i64 = 10_000;

/// A booking list's cursor: the row's place in the order `(created_at DESC, booking_id DESC)`.
fn booking_cursor(row: &BookingRow) -> String {
    format!(
        "b:{}:{}",
        row.created_at.timestamp_micros(),
        row.booking_id.simple()
    )
}

fn booking_after(after: Option<&str>) -> ApiResult<Option<(DateTime<Utc>, Uuid)>> {
    let Some(cursor) = after else {
        return Ok(None);
    };
    let bad = || AppError::bad_input("after", "not a cursor this API returned");
    let rest = cursor.strip_prefix("b:").ok_or_else(bad)?;
    let (micros, id) = rest.split_once(':').ok_or_else(bad)?;
    let at = micros
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(bad)?;
    let id = Uuid::parse_str(id).map_err(|_| bad())?;
    Ok(Some((at, id)))
}

/// Bookings newest first, paged by keyset on `(created_at, booking_id)`: a booking created,
/// changed or expired between two pages is neither repeated nor skipped. `totalCount` is exact
/// up to [`COUNT_CAP`] matches and stops counting there.
async fn booking_page(
    ctx: &Context<'_>,
    status: Option<Vec<BookingStatus>>,
    car_id: Option<Uuid>,
    customer_id: Option<Uuid>,
    first: Option<i32>,
    after: Option<String>,
) -> ApiResult<BookingConnection> {
    let limit = page_size(ctx, first, 20)?;
    let after = booking_after(after.as_deref())?;
    let statuses: Option<Vec<&str>> =
        status.map(|s| s.into_iter().map(BookingStatus::as_str).collect());
    let pool = services(ctx)?.store.pool();
    let filters = "($1::text[] IS NULL OR status = ANY($1)) AND ($2::uuid IS NULL OR car_id = $2) \
           AND ($3::uuid IS NULL OR customer_id = $3)";
    let sql = format!(
        "SELECT {BOOKING_COLUMNS} FROM rm_bookings WHERE {filters} \
           AND ($4::timestamptz IS NULL OR (created_at, booking_id) < ($4, $5)) \
         ORDER BY created_at DESC, booking_id DESC LIMIT $6"
    );
    let found: Vec<BookingRow> = sqlx::query_as(&sql)
        .bind(&statuses)
        .bind(car_id)
        .bind(customer_id)
        .bind(after.map(|a| a.0))
        .bind(after.map(|a| a.1))
        .bind(limit + 1)
        .fetch_all(pool)
        .await?;
    let total: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM (SELECT 1 FROM rm_bookings WHERE {filters} LIMIT $4) AS capped"
    ))
    .bind(&statuses)
    .bind(car_id)
    .bind(customer_id)
    .bind(COUNT_CAP)
    .fetch_one(pool)
    .await?;
    let has_next = found.len() as i64 > limit;
    let edges: Vec<BookingEdge> = found
        .into_iter()
        .take(limit as usize)
        .map(|row| BookingEdge {
            cursor: booking_cursor(&row),
            node: Booking(row),
        })
        .collect();
    let page_info = PageInfo {
        has_next_page: has_next,
        has_previous_page: after.is_some(),
        start_cursor: edges.first().map(|e| e.cursor.clone()),
        end_cursor: edges.last().map(|e| e.cursor.clone()),
    };
    Ok(BookingConnection {
        edges,
        page_info,
        total_count: i32::try_from(total).unwrap_or(i32::MAX),
    })
}

/// Great-circle distance in km between `(lat, lon)` parameters and a branch `br`.
fn haversine_sql(q: &mut QueryBuilder<'_, Postgres>, near: GeoPointInput) {
    q.push("(6371.0 * 2 * asin(sqrt(power(sin(radians(br.latitude - ")
        .push_bind(near.latitude)
        .push(") / 2), 2) + cos(radians(")
        .push_bind(near.latitude)
        .push(")) * cos(radians(br.latitude)) * power(sin(radians(br.longitude - ")
        .push_bind(near.longitude)
        .push(") / 2), 2))))");
}

pub struct Query;

#[Object]
impl Query {
    async fn me(&self, ctx: &Context<'_>) -> ApiResult<Option<User>> {
        match caller(ctx)? {
            auth::Caller::Anonymous => Ok(None),
            who => {
                let (id, _) = who.user()?;
                Ok(services(ctx)?.accounts.get(id).await?.map(User::from))
            }
        }
    }

    async fn branches(&self, ctx: &Context<'_>) -> ApiResult<Vec<Branch>> {
        let list = services(ctx)?.branches.list().await?;
        let fleet = services(ctx)?.bookings.config().fleet_currency;
        Ok(list.into_iter().map(|b| Branch::of(b, fleet)).collect())
    }

    #[graphql(complexity = "weighted(first, 20, child_complexity)")]
    async fn search_cars(
        &self,
        ctx: &Context<'_>,
        filter: CarSearchInput,
        #[graphql(default_with = "Some(20)")] first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<CarConnection> {
        let limit = page_size(ctx, first, 20)?;
        let offset = offset_from(after.as_deref())?;
        check_window("pickupAt", filter.pickup_at, "returnAt", filter.return_at)?;
        let s = services(ctx)?;
        let radius = filter.radius_km.unwrap_or(25.0);
        if let Some(near) = filter.near {
            near.check("near")?;
            if !(radius > 0.0 && radius <= 20_000.0) {
                return Err(AppError::bad_input(
                    "radiusKm",
                    "must be between 0 and 20000",
                ));
            }
        }
        let sort = filter.sort.unwrap_or(CarSort::PriceAsc);
        if sort == CarSort::Distance && filter.near.is_none() {
            return Err(AppError::bad_input("sort", "DISTANCE needs `near`"));
        }
        if let Some(seats) = filter.min_seats
            && !(1..=60).contains(&seats)
        {
            return Err(AppError::bad_input("minSeats", "must be between 1 and 60"));
        }
        let text = match &filter.text {
            Some(t) => Some(text_arg("text", t, 200)?).filter(|t| !t.is_empty()),
            None => None,
        };
        let mut q: QueryBuilder<'_, Postgres> = QueryBuilder::new("SELECT ");
        q.push(CAR_COLUMNS).push(", count(*) OVER () AS total, ");
        match filter.near {
            Some(near) => haversine_sql(&mut q, near),
            None => {
                q.push("NULL::double precision");
            }
        };
        // Free as booking decides: no block may reach the pick-up with its turnaround, and the
        // rental with the turnaround of its branch (where a round trip returns the car) may
        // reach no block. The `&&` on `period` (widened by the longest turnaround) is what the
        // GiST index answers; the exact test follows.
        q.push(
            " AS distance_km FROM rm_search_cars c JOIN branches br ON br.code = c.branch_code \
                 WHERE NOT c.retired AND NOT EXISTS (SELECT 1 FROM rm_availability_blocks b \
                 WHERE b.car_id = c.car_id AND b.period && tstzrange(",
        );
        q.push_bind(
            filter.pickup_at - chrono::Duration::minutes(domain::car::MAX_TURNAROUND_MINUTES),
        )
        .push(", ")
        .push_bind(filter.return_at)
        .push(" + make_interval(mins => br.turnaround_minutes)) AND upper(b.period) + make_interval(mins => b.turnaround_minutes) > ")
        .push_bind(filter.pickup_at)
        .push(")");
        if let Some(code) = &filter.branch_code {
            q.push(" AND c.branch_code = ")
                .push_bind(super::branch_code(code));
        }
        if let Some(near) = filter.near {
            q.push(" AND ");
            haversine_sql(&mut q, near);
            q.push(" <= ").push_bind(radius);
        }
        if let Some(classes) = &filter.classes {
            let classes: Vec<String> = classes.iter().map(|c| c.as_str().to_owned()).collect();
            q.push(" AND c.class = ANY(").push_bind(classes).push(")");
        }
        if let Some(seats) = filter.min_seats {
            q.push(" AND c.seats >= ").push_bind(seats);
        }
        if let Some(max) = filter.max_daily_rate {
            // In the fleet's currency: prices in another cannot be compared without a rate.
            let fleet = s.bookings.config().fleet_currency;
            let max = max
                .to_minor(fleet)
                .map_err(|e| AppError::bad_input("maxDailyRate", e))?;
            if max < 0 {
                return Err(AppError::bad_input("maxDailyRate", "must not be negative"));
            }
            q.push(" AND c.currency = ")
                .push_bind(fleet.as_str().to_owned())
                .push(" AND c.daily_rate_minor <= ")
                .push_bind(max);
        }
        if let Some(t) = filter.transmission {
            q.push(" AND c.transmission = ").push_bind(t.as_str());
        }
        if let Some(f) = filter.fuel {
            q.push(" AND c.fuel = ").push_bind(f.as_str());
        }
        if let Some(text) = text {
            // Make, model and features, and the branch the car stands at (name and city).
            q.push(
                " AND (c.search_vector || to_tsvector('simple', br.name || ' ' || br.city)) \
                 @@ plainto_tsquery('simple', ",
            )
            .push_bind(text)
            .push(")");
        }
        q.push(match sort {
            CarSort::PriceAsc => " ORDER BY c.daily_rate_minor, c.car_id",
            CarSort::PriceDesc => " ORDER BY c.daily_rate_minor DESC, c.car_id",
            CarSort::Distance => " ORDER BY distance_km, c.daily_rate_minor, c.car_id",
            CarSort::Rating => " ORDER BY (c.rating_sum::float8 / nullif(c.review_count, 0)) DESC NULLS LAST, c.review_count DESC, c.car_id",
        });
        q.push(" LIMIT ")
            .push_bind(limit + 1)
            .push(" OFFSET ")
            .push_bind(offset);
        let found = q.build().fetch_all(s.store.pool()).await?;
        let total: i64 = match found.first() {
            Some(r) => r.try_get("total")?,
            None => 0,
        };
        let has_next = found.len() as i64 > limit;
        let mut edges = Vec::new();
        for (i, row) in found.iter().take(limit as usize).enumerate() {
            let car: CarRow = sqlx::FromRow::from_row(row)?;
            edges.push(CarEdge {
                cursor: offset_cursor(offset + i as i64),
                node: Car(car),
                distance_km: row.try_get("distance_km")?,
            });
        }
        let page_info = PageInfo {
            has_next_page: has_next,
            has_previous_page: offset > 0,
            start_cursor: edges.first().map(|e| e.cursor.clone()),
            end_cursor: edges.last().map(|e| e.cursor.clone()),
        };
        Ok(CarConnection {
            edges,
            page_info,
            total_count: i32::try_from(total).unwrap_or(i32::MAX),
        })
    }

    async fn car(&self, ctx: &Context<'_>, id: Uuid) -> ApiResult<Option<Car>> {
        Ok(rows::car(services(ctx)?.store.pool(), id).await?.map(Car))
    }

    /// Free windows of one car inside [from, to): each can be booked as it is, for a rental
    /// returned to `returnBranchCode` (default: the car's branch, a round trip). A range ends
    /// where the rental's own turnaround (that branch's) would reach the next reservation, and
    /// starts when the one before it and its turnaround are over.
    async fn availability(
        &self,
        ctx: &Context<'_>,
        car_id: Uuid,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        return_branch_code: Option<String>,
    ) -> ApiResult<Vec<TimeRange>> {
        check_window("from", from, "to", to)?;
        let s = services(ctx)?;
        let pool = s.store.pool();
        let car = rows::car(pool, car_id)
            .await?
            .ok_or_else(|| AppError::not_found("car"))?;
        if car.status == "RETIRED" {
            return Ok(Vec::new());
        }
        let return_branch = match return_branch_code.as_deref() {
            Some(code) => super::branch_code(code),
            None => car.branch_code.clone(),
        };
        let own = match s.branches.get(&return_branch).await? {
            Some(branch) => chrono::Duration::minutes(branch.turnaround_minutes.into()),
            None if return_branch_code.is_some() => {
                return Err(AppError::bad_input(
                    "returnBranchCode",
                    format!("no branch {return_branch:?}"),
                ));
            }
            None => chrono::Duration::minutes(domain::car::LEGACY_TURNAROUND_MINUTES),
        };
        // Blocks that end up to the longest turnaround before `from` may still hold the car.
        let blocks: Vec<(DateTime<Utc>, DateTime<Utc>, i32)> = sqlx::query_as(
            "SELECT lower(period), upper(period), turnaround_minutes FROM rm_availability_blocks \
             WHERE car_id = $1 AND period && tstzrange($2, $3) ORDER BY lower(period)",
        )
        .bind(car_id)
        .bind(from - chrono::Duration::minutes(domain::car::MAX_TURNAROUND_MINUTES))
        .bind(to + own)
        .fetch_all(pool)
        .await?;
        let mut free = Vec::new();
        let mut cursor = from;
        // Taken: from where this rental's turnaround would reach the block, to the end of the
        // block's own.
        for (start, end) in blocks.into_iter().map(|(start, end, turnaround)| {
            (
                start - own,
                end + chrono::Duration::minutes(turnaround.into()),
            )
        }) {
            if start > cursor {
                free.push(TimeRange {
                    start: cursor,
                    end: start.min(to),
                });
            }
            cursor = cursor.max(end);
        }
        if cursor < to {
            free.push(TimeRange {
                start: cursor,
                end: to,
            });
        }
        free.retain(|r| r.end > r.start);
        Ok(free)
    }

    /// What booking the car for this window costs, line by line: the same computation
    /// `requestBooking` charges (with `returnBranchCode`, a one-way fee when it is not the car's
    /// branch; with `extras`, each priced per day).
    async fn quote(
        &self,
        ctx: &Context<'_>,
        car_id: Uuid,
        pickup_at: DateTime<Utc>,
        return_at: DateTime<Utc>,
        return_branch_code: Option<String>,
        extras: Option<Vec<ExtraInput>>,
    ) -> ApiResult<Quote> {
        let extras = extras_input(extras)?.unwrap_or_default();
        check_window("pickupAt", pickup_at, "returnAt", return_at)?;
        let s = services(ctx)?;
        let window = domain::TimeWindow::new(pickup_at, return_at)
            .map_err(|e| AppError::bad_input("returnAt", e.to_string()))?;
        let return_branch = return_branch_code.as_deref().map(super::branch_code);
        if let Some(code) = &return_branch
            && s.branches.get(code).await?.is_none()
        {
            return Err(AppError::bad_input(
                "returnBranchCode",
                format!("no branch {code:?}"),
            ));
        }
        let quote = s
            .bookings
            .quote(car_id, window, return_branch.as_deref(), &extras)
            .await?;
        let car = rows::car(s.store.pool(), car_id)
            .await?
            .ok_or_else(|| AppError::not_found("car"))?;
        Ok(Quote {
            car: Car(car),
            pickup_at,
            return_at,
            days: i32::try_from(quote.days).unwrap_or(i32::MAX),
            total: quote.total.into(),
            extras: quote.extras.iter().copied().map(Extra::from).collect(),
            mileage: quote
                .mileage
                .map(|m| MileageTerms::of(m, quote.total.currency.as_str())),
            lines: quote.lines.into_iter().map(PriceLine::from).collect(),
        })
    }

    /// The extras and coverage a booking may add, with their prices in the fleet's currency
    /// (a car priced in another currency of the same decimals charges the same amounts in its
    /// own).
    async fn extras_offered(&self, ctx: &Context<'_>) -> ApiResult<Vec<ExtraOffer>> {
        let s = services(ctx)?;
        let config = s.bookings.config();
        let currency = config.fleet_currency.as_str();
        Ok(config
            .pricing
            .extras
            .iter()
            .map(|offer| ExtraOffer {
                kind: offer.kind.into(),
                label: offer.kind.label().to_owned(),
                per_day: Money::new(offer.per_day_minor, currency),
                max_per_rental: offer
                    .max_per_rental_minor
                    .map(|cap| Money::new(cap, currency)),
                max_quantity: i32::from(offer.max_quantity),
            })
            .collect())
    }

    /// What cancelling the booking now would cost, before deciding: the fee kept and what
    /// goes back (the booking's customer, or staff). Free until 24 hours before pick-up, then
    /// one day's rate; nothing while HELD.
    async fn cancellation_quote(
        &self,
        ctx: &Context<'_>,
        booking_id: Uuid,
    ) -> ApiResult<CancellationQuote> {
        let row = visible_booking(ctx, booking_id).await?;
        let s = services(ctx)?;
        let view = s.bookings.get(booking_id).await?;
        if !matches!(
            view.status(),
            Some(domain::booking::BookingStatus::Held | domain::booking::BookingStatus::Confirmed)
        ) {
            return Err(AppError::Conflict(format!(
                "the booking is {}: it cannot be cancelled",
                row.status
            )));
        }
        let fee = s.bookings.cancellation_fee(&view.state, Utc::now())?;
        let paid: i64 = rows::booking_payments(s.store.pool(), booking_id)
            .await?
            .iter()
            .map(rows::PaymentRow::held_minor)
            .sum();
        let currency = fee.currency.as_str().to_owned();
        Ok(CancellationQuote {
            fee: Money::new(fee.minor, &currency),
            refund: Money::new((paid - fee.minor).max(0), &currency),
        })
    }

    async fn booking(&self, ctx: &Context<'_>, id: Uuid) -> ApiResult<Option<Booking>> {
        match visible_booking(ctx, id).await {
            Ok(row) => Ok(Some(Booking(row))),
            Err(AppError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The caller's own bookings, newest first: the rental history.
    #[graphql(complexity = "weighted(first, 20, child_complexity)")]
    async fn my_bookings(
        &self,
        ctx: &Context<'_>,
        status: Option<Vec<BookingStatus>>,
        #[graphql(default_with = "Some(20)")] first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<BookingConnection> {
        let (me, _) = caller(ctx)?.user()?;
        booking_page(ctx, status, None, Some(me), first, after).await
    }

    /// All bookings (ADMIN).
    #[graphql(complexity = "weighted(first, 20, child_complexity)")]
    async fn bookings(
        &self,
        ctx: &Context<'_>,
        status: Option<Vec<BookingStatus>>,
        car_id: Option<Uuid>,
        customer_id: Option<Uuid>,
        #[graphql(default_with = "Some(20)")] first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<BookingConnection> {
        caller(ctx)?.require(auth::ADMIN)?;
        booking_page(ctx, status, car_id, customer_id, first, after).await
    }

    async fn payment(&self, ctx: &Context<'_>, id: Uuid) -> ApiResult<Option<Payment>> {
        caller(ctx)?.user()?;
        let pool = services(ctx)?.store.pool();
        let Some(row) = rows::payment(pool, id).await? else {
            return Ok(None);
        };
        visible_booking(ctx, row.booking_id).await?;
        Ok(Some(Payment(row)))
    }

    /// The global log, in commit order, from a position.
    #[graphql(complexity = "weighted(first, 100, child_complexity)")]
    async fn events(
        &self,
        ctx: &Context<'_>,
        after_position: Option<String>,
        filter: Option<EventFilter>,
        #[graphql(default_with = "Some(100)")] first: Option<i32>,
    ) -> ApiResult<EventConnection> {
        caller(ctx)?.require(auth::AUDIT)?;
        let limit = page_size(ctx, first, 100)?;
        let after = checkpoint_after(ctx, after_position.as_deref()).await?;
        let filter = filter.unwrap_or_default();
        let store = &services(ctx)?.store;
        // Only the filters asked for, so the planner picks the index of each (event type,
        // aggregate type, aggregate id: each leads an index in commit order).
        let mut q: QueryBuilder<'_, Postgres> =
            QueryBuilder::new(format!("SELECT {EVENT_COLUMNS} FROM events e WHERE "));
        q.push("(e.transaction_id, e.global_position) > (")
            .push_bind(eventstore::Xid8(after.transaction_id))
            .push(", ")
            .push_bind(after.global_position)
            .push(") AND e.transaction_id < (SELECT log_horizon())");
        if let Some(types) = &filter.aggregate_types {
            q.push(" AND e.aggregate_type = ANY(")
                .push_bind(types)
                .push(")");
        }
        if let Some(types) = &filter.event_types {
            q.push(" AND e.event_type = ANY(")
                .push_bind(types)
                .push(")");
        }
        if let Some(id) = &filter.aggregate_id {
            q.push(" AND e.aggregate_id = ").push_bind(id);
        }
        q.push(" ORDER BY e.transaction_id, e.global_position LIMIT ")
            .push_bind(limit + 1);
        let found = q.build().fetch_all(store.pool()).await?;
        let has_next = found.len() as i64 > limit;
        let mut edges = Vec::new();
        for row in found.iter().take(limit as usize) {
            let event = store.upcasters().upcast(decode_event(row)?)?;
            edges.push(EventEdge {
                cursor: event_cursor(&event),
                node: EventRecord(event),
            });
        }
        Ok(EventConnection::new(
            edges,
            has_next,
            after != Checkpoint::START,
        ))
    }

    /// One stream, oldest first.
    async fn stream(
        &self,
        ctx: &Context<'_>,
        aggregate_type: String,
        aggregate_id: String,
        from_version: Option<i32>,
        to_version: Option<i32>,
    ) -> ApiResult<Vec<EventRecord>> {
        caller(ctx)?.require(auth::AUDIT)?;
        let stream = stream_id(&aggregate_type, &aggregate_id)?;
        let from = i64::from(from_version.unwrap_or(1));
        if from < 1 {
            return Err(AppError::bad_input("fromVersion", "must be at least 1"));
        }
        let to = to_version.map(i64::from);
        if to.is_some_and(|to| to < from) {
            return Err(AppError::bad_input(
                "toVersion",
                "must not be below fromVersion",
            ));
        }
        let events = services(ctx)?.store.read_stream(&stream, from, to).await?;
        Ok(events.into_iter().map(EventRecord).collect())
    }

    /// An aggregate's state rebuilt from its events, as of a version or an instant.
    async fn aggregate_state(
        &self,
        ctx: &Context<'_>,
        aggregate_type: String,
        aggregate_id: String,
        at_version: Option<i32>,
        as_of: Option<DateTime<Utc>>,
    ) -> ApiResult<Option<Json<serde_json::Value>>> {
        caller(ctx)?.require(auth::AUDIT)?;
        let stream = stream_id(&aggregate_type, &aggregate_id)?;
        let as_of = match (at_version, as_of) {
            (Some(_), Some(_)) => {
                return Err(AppError::bad_input(
                    "asOf",
                    "give atVersion or asOf, not both",
                ));
            }
            (Some(v), None) if v < 1 => {
                return Err(AppError::bad_input("atVersion", "must be at least 1"));
            }
            (Some(v), None) => AsOf::Version(i64::from(v)),
            (None, Some(t)) => AsOf::Instant(t),
            (None, None) => AsOf::Latest,
        };
        let state = state_at(&services(ctx)?.store, &stream, as_of).await?;
        match state {
            None => Ok(None),
            Some(s) => Ok(Some(Json(serde_json::json!({
                "aggregateType": s.aggregate_type,
                "aggregateId": s.aggregate_id,
                "version": s.version,
                "recordedAt": s.recorded_at,
                "state": s.state,
            })))),
        }
    }

    /// Recompute a stream's hash chain and say whether it is intact.
    async fn verify_stream(
        &self,
        ctx: &Context<'_>,
        aggregate_type: String,
        aggregate_id: String,
    ) -> ApiResult<StreamVerification> {
        caller(ctx)?.require(auth::AUDIT)?;
        let stream = stream_id(&aggregate_type, &aggregate_id)?;
        let v = services(ctx)?.store.verify_stream(&stream).await?;
        Ok(StreamVerification {
            valid: v.is_valid(),
            aggregate_type: v.stream.aggregate_type,
            aggregate_id: v.stream.aggregate_id,
            events: i32::try_from(v.events).unwrap_or(i32::MAX),
            first_broken_version: v
                .first_broken_version
                .map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
            detail: v.detail,
        })
    }

    async fn daily_metrics(
        &self,
        ctx: &Context<'_>,
        from: NaiveDate,
        to: NaiveDate,
        branch_code: Option<String>,
    ) -> ApiResult<Vec<DailyMetrics>> {
        caller(ctx)?.require(auth::ANALYTICS)?;
        let branch_code = branch_code.as_deref().map(super::branch_code);
        check_dates(from, to)?;
        let found = sqlx::query(
            "WITH m AS ( \
               SELECT day, currency, sum(bookings_created)::int8 AS created, \
                 sum(bookings_cancelled)::int8 AS cancelled, sum(rentals_started)::int8 AS started, \
                 sum(rentals_completed)::int8 AS completed, sum(revenue_minor)::int8 AS revenue, \
                 sum(refunds_minor)::int8 AS refunds, sum(earned_minor)::int8 AS earned, \
                 sum(rented_seconds)::int8 AS rented, \
                 sum(rental_days_sum)::int8 AS rental_days \
               FROM rm_daily_metrics WHERE day BETWEEN $1 AND $2 \
                 AND ($3::text IS NULL OR branch_code = $3) GROUP BY day, currency), \
             avail AS ( \
               SELECT m.day, coalesce(sum(extract(epoch FROM \
                   least(coalesce(c.retired_at, 'infinity'), ((m.day + 1)::timestamp AT TIME ZONE 'UTC')) \
                 - greatest(c.registered_at, (m.day::timestamp AT TIME ZONE 'UTC')))), 0)::float8 AS secs \
               FROM (SELECT DISTINCT day FROM m) m JOIN rm_analytics_cars c \
                 ON c.registered_at < ((m.day + 1)::timestamp AT TIME ZONE 'UTC') \
                AND coalesce(c.retired_at, 'infinity') > (m.day::timestamp AT TIME ZONE 'UTC') \
                AND ($3::text IS NULL OR c.branch_code = $3) \
               GROUP BY m.day) \
             SELECT m.*, coalesce(avail.secs, 0) AS available \
             FROM m LEFT JOIN avail USING (day) ORDER BY m.day, m.currency",
        )
        .bind(from)
        .bind(to)
        .bind(&branch_code)
        .fetch_all(services(ctx)?.store.pool())
        .await?;
        let mut out = Vec::new();
        for r in found {
            let currency: String = r.try_get("currency")?;
            let completed: i64 = r.try_get("completed")?;
            let rented: i64 = r.try_get("rented")?;
            let available: f64 = r.try_get("available")?;
            let rental_days: i64 = r.try_get("rental_days")?;
            let count = |v: i64| i32::try_from(v).unwrap_or(i32::MAX);
            out.push(DailyMetrics {
                date: r.try_get("day")?,
                branch_code: branch_code.clone(),
                bookings_created: count(r.try_get("created")?),
                bookings_cancelled: count(r.try_get("cancelled")?),
                rentals_started: count(r.try_get("started")?),
                rentals_completed: count(completed),
                revenue: Money::new(r.try_get("revenue")?, &currency),
                refunds: Money::new(r.try_get("refunds")?, &currency),
                earned: Money::new(r.try_get("earned")?, &currency),
                utilization: if available > 0.0 {
                    (rented as f64 / available).clamp(0.0, 1.0)
                } else {
                    0.0
                },
                average_rental_days: (completed > 0).then(|| rental_days as f64 / completed as f64),
            });
        }
        Ok(out)
    }

    /// Cars ranked by utilization over the period, highest first.
    #[graphql(complexity = "weighted(first, 20, child_complexity)")]
    async fn car_utilization(
        &self,
        ctx: &Context<'_>,
        from: NaiveDate,
        to: NaiveDate,
        branch_code: Option<String>,
        #[graphql(default_with = "Some(20)")] first: Option<i32>,
    ) -> ApiResult<Vec<CarUtilization>> {
        caller(ctx)?.require(auth::ANALYTICS)?;
        let branch_code = branch_code.as_deref().map(super::branch_code);
        check_dates(from, to)?;
        let limit = page_size(ctx, first, 20)?;
        let period_secs = ((to - from).num_days() + 1) as f64 * 86_400.0;
        let pool = services(ctx)?.store.pool();
        let found = sqlx::query(
            "SELECT car_id, min(currency) AS currency, sum(rented_seconds)::int8 AS rented, \
               sum(revenue_minor)::int8 AS revenue, sum(earned_minor)::int8 AS earned, \
               sum(distance_km)::float8 AS distance \
             FROM rm_car_daily WHERE day BETWEEN $1 AND $2 AND ($3::text IS NULL OR branch_code = $3) \
             GROUP BY car_id ORDER BY rented DESC, car_id LIMIT $4",
        )
        .bind(from)
        .bind(to)
        .bind(&branch_code)
        .bind(limit)
        .fetch_all(pool)
        .await?;
        let mut out = Vec::new();
        for r in found {
            let car_id: Uuid = r.try_get("car_id")?;
            let Some(car) = rows::car(pool, car_id).await? else {
                continue;
            };
            let rented: i64 = r.try_get("rented")?;
            let currency: String = r.try_get("currency")?;
            out.push(CarUtilization {
                car: Car(car),
                rented_hours: rented as f64 / 3600.0,
                utilization: (rented as f64 / period_secs).clamp(0.0, 1.0),
                revenue: Money::new(r.try_get("revenue")?, &currency),
                earned: Money::new(r.try_get("earned")?, &currency),
                distance_km: r.try_get("distance")?,
            });
        }
        Ok(out)
    }

    async fn fleet_summary(
        &self,
        ctx: &Context<'_>,
        branch_code: Option<String>,
    ) -> ApiResult<FleetSummary> {
        caller(ctx)?.require(auth::ANALYTICS)?;
        let branch_code = branch_code.as_deref().map(super::branch_code);
        let pool = services(ctx)?.store.pool();
        let row = sqlx::query(&format!(
            "SELECT count(*) AS cars, count(*) FILTER (WHERE status = 'AVAILABLE') AS available, \
               count(*) FILTER (WHERE status = 'RENTED') AS rented, \
               count(*) FILTER (WHERE status = 'MAINTENANCE') AS maintenance, \
               count(*) FILTER (WHERE status = 'RETIRED') AS retired \
             FROM (SELECT {CAR_COLUMNS} FROM rm_search_cars c \
                   WHERE $1::text IS NULL OR c.branch_code = $1) s"
        ))
        .bind(&branch_code)
        .fetch_one(pool)
        .await?;
        let active: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM rm_bookings WHERE status IN ('HELD', 'CONFIRMED', 'ACTIVE') \
             AND ($1::text IS NULL OR pickup_branch = $1)",
        )
        .bind(&branch_code)
        .fetch_one(pool)
        .await?;
        let n = |v: i64| i32::try_from(v).unwrap_or(i32::MAX);
        Ok(FleetSummary {
            cars: n(row.try_get("cars")?),
            available: n(row.try_get("available")?),
            rented: n(row.try_get("rented")?),
            in_maintenance: n(row.try_get("maintenance")?),
            retired: n(row.try_get("retired")?),
            active_bookings: n(active),
        })
    }

    #[graphql(complexity = "weighted(first, 500, child_complexity)")]
    async fn telemetry(
        &self,
        ctx: &Context<'_>,
        car_id: Uuid,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        #[graphql(default_with = "Some(500)")] first: Option<i32>,
    ) -> ApiResult<Vec<TelemetryReading>> {
        caller(ctx)?.require(auth::TELEMETRY_READERS)?;
        check_window("from", from, "to", to)?;
        let first = first.unwrap_or(500);
        if !(1..=5_000).contains(&first) {
            return Err(AppError::bad_input("first", "must be between 1 and 5000"));
        }
        let sql = format!(
            "SELECT {TELEMETRY_COLUMNS} FROM rm_telemetry_readings \
             WHERE car_id = $1 AND recorded_at >= $2 AND recorded_at < $3 ORDER BY recorded_at LIMIT $4"
        );
        let found: Vec<rows::TelemetryRow> = sqlx::query_as(&sql)
            .bind(car_id)
            .bind(from)
            .bind(to)
            .bind(i64::from(first))
            .fetch_all(services(ctx)?.store.pool())
            .await?;
        Ok(found.into_iter().map(TelemetryReading::from).collect())
    }

    async fn projections(&self, ctx: &Context<'_>) -> ApiResult<Vec<ProjectionStatus>> {
        caller(ctx)?.require(auth::ADMIN)?;
        let list = projections::status::list(services(ctx)?.store.pool()).await?;
        Ok(list
            .into_iter()
            .map(|p| ProjectionStatus {
                name: p.name,
                position: p.position.to_string(),
                lag_events: i32::try_from(p.lag_events).unwrap_or(i32::MAX),
                lag_ms: p.lag_ms,
                state: p.state,
                updated_at: p.updated_at,
            })
            .collect())
    }

    /// Follow-up steps that stopped retrying and wait for staff (a refund the gateway
    /// declined, a step that kept failing), oldest first; `retryStep` sends one back. Pages by
    /// the `cursor` of the last step seen.
    async fn stuck_steps(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "Some(20)")] first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Vec<StuckStep>> {
        caller(ctx)?.require(auth::ADMIN)?;
        let limit = page_size(ctx, first, 20)?;
        let after = after
            .map(|cursor| {
                let (at, id) = cursor.split_once('/').ok_or(())?;
                let at = DateTime::parse_from_rfc3339(at).map_err(|_| ())?;
                let id = Uuid::try_parse(id).map_err(|_| ())?;
                Ok::<_, ()>((at.with_timezone(&Utc), id))
            })
            .transpose()
            .map_err(|()| AppError::bad_input("after", "not a cursor from stuckSteps"))?;
        let steps =
            commands::worker::stuck_steps(services(ctx)?.store.pool(), after, limit).await?;
        Ok(steps.into_iter().map(StuckStep::from).collect())
    }
}
