//! Queries: accounts, search and bookings (read models), the log for auditors, analytics.

use async_graphql::{Context, Json, Object};
use chrono::{DateTime, NaiveDate, Utc};
use commands::history::{AsOf, state_at};
use eventstore::{Checkpoint, RecordedEvent, StreamId};
use uuid::Uuid;

use super::rows::{self, BookingRow};
use super::types::*;
use super::{page_size, services, text_arg, weighted};
use crate::auth::{self, caller};
use crate::error::{ApiResult, AppError};

/// The columns [`decode_event`] reads, over `events e`.
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
    services(ctx)?
        .store
        .checkpoint_of(position)
        .await?
        .ok_or_else(|| AppError::bad_input("afterPosition", "no event has this position"))
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

/// `searchCars`' `totalCount` is counted up to this many: each match counted costs an
/// availability probe (and past a few hundred the planner trades the probes for a scan of every
/// reservation), while a customer choosing a car needs "100+" at most.
pub(crate) const SEARCH_COUNT_CAP: i64 = 100;

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
    let filter = projections::history::BookingFilter {
        statuses: status.map(|s| s.into_iter().map(|s| s.as_str().to_owned()).collect()),
        car_id,
        customer_id,
    };
    let pool = services(ctx)?.store.pool();
    let found = projections::history::bookings(pool, &filter, after, limit + 1).await?;
    // Counted only when asked for, and only up to the cap.
    let total = if ctx.look_ahead().field("totalCount").exists() {
        projections::history::count_bookings(pool, &filter, COUNT_CAP).await?
    } else {
        0
    };
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
        let after = after
            .as_deref()
            .map(|cursor| {
                projections::search::CarAfter::from_cursor(cursor)
                    .ok_or_else(|| AppError::bad_input("after", "not a cursor from searchCars"))
            })
            .transpose()?;
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
        let max_daily_rate = match filter.max_daily_rate {
            // In the fleet's currency: prices in another cannot be compared without a rate.
            Some(max) => {
                let fleet = s.bookings.config().fleet_currency;
                let max = max
                    .to_minor(fleet)
                    .map_err(|e| AppError::bad_input("maxDailyRate", e))?;
                if max < 0 {
                    return Err(AppError::bad_input("maxDailyRate", "must not be negative"));
                }
                Some((fleet.as_str().to_owned(), max))
            }
            None => None,
        };
        let query = projections::search::CarQuery {
            pickup_at: filter.pickup_at,
            return_at: filter.return_at,
            branch: filter.branch_code.as_deref().map(super::branch_code),
            near: filter.near.map(|near| projections::search::Near {
                latitude: near.latitude,
                longitude: near.longitude,
                radius_km: radius,
            }),
            classes: filter
                .classes
                .as_ref()
                .map(|classes| classes.iter().map(|c| c.as_str().to_owned()).collect()),
            min_seats: filter.min_seats,
            max_daily_rate,
            transmission: filter.transmission.map(|t| t.as_str().to_owned()),
            fuel: filter.fuel.map(|f| f.as_str().to_owned()),
            text,
            order: match sort {
                CarSort::PriceAsc => projections::search::CarOrder::PriceAsc,
                CarSort::PriceDesc => projections::search::CarOrder::PriceDesc,
                CarSort::Distance => projections::search::CarOrder::Distance,
                CarSort::Rating => projections::search::CarOrder::Rating,
            },
            after,
            limit,
        };
        let page = projections::search::find(s.store.pool(), &query)
            .await
            .map_err(|e| match e {
                projections::search::SearchError::Database(db) => AppError::from(db),
                other => AppError::bad_input("after", other.to_string()),
            })?;
        // Counted only when asked for, and only up to the cap; a first page that holds every
        // match is its own count.
        let total = if !ctx.look_ahead().field("totalCount").exists() {
            0
        } else if query.after.is_none() && !page.more {
            i64::try_from(page.hits.len()).unwrap_or(i64::MAX)
        } else {
            projections::search::count(s.store.pool(), &query, SEARCH_COUNT_CAP).await?
        };
        let has_next = page.more;
        let edges: Vec<CarEdge> = page
            .hits
            .into_iter()
            .map(|hit| CarEdge {
                cursor: hit.after.to_cursor(),
                node: Car(hit.car),
                distance_km: hit.distance_km,
            })
            .collect();
        let page_info = PageInfo {
            has_next_page: has_next,
            has_previous_page: after.is_some(),
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
        let free = projections::availability::free_ranges(pool, car_id, from, to, own).await?;
        Ok(free
            .into_iter()
            .map(|(start, end)| TimeRange { start, end })
            .collect())
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
        let log_filter = eventstore::LogFilter {
            aggregate_types: filter.aggregate_types.clone(),
            event_types: filter.event_types.clone(),
            aggregate_id: filter.aggregate_id.clone(),
        };
        let found = store.read_filtered(after, &log_filter, limit + 1).await?;
        let has_next = found.len() as i64 > limit;
        let edges: Vec<EventEdge> = found
            .into_iter()
            .take(limit as usize)
            .map(|event| EventEdge {
                cursor: event_cursor(&event),
                node: EventRecord(event),
            })
            .collect();
        Ok(EventConnection::new(
            edges,
            has_next,
            after != Checkpoint::START,
        ))
    }

    /// One stream, oldest first, from `fromVersion` (default 1): at most `first` events (1 to
    /// the page cap, default 100) up to `toVersion`. A stream's versions have no gaps, so the
    /// next page starts at the last version read plus one; a car's telemetry stream grows
    /// forever, and no request reads it whole.
    #[graphql(complexity = "weighted(first, 100, child_complexity)")]
    async fn stream(
        &self,
        ctx: &Context<'_>,
        aggregate_type: String,
        aggregate_id: String,
        from_version: Option<i32>,
        to_version: Option<i32>,
        #[graphql(default_with = "Some(100)")] first: Option<i32>,
    ) -> ApiResult<Vec<EventRecord>> {
        caller(ctx)?.require(auth::AUDIT)?;
        let stream = stream_id(&aggregate_type, &aggregate_id)?;
        let limit = page_size(ctx, first, 100)?;
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
        // Versions are 1, 2, 3... with no gap (invariant 1): a page is a version range.
        let last = (from + limit - 1).min(to.unwrap_or(i64::MAX));
        let events = services(ctx)?
            .store
            .read_stream(&stream, from, Some(last))
            .await?;
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
        let days = projections::analytics::days(
            services(ctx)?.store.pool(),
            from,
            to,
            branch_code.as_deref(),
        )
        .await?;
        let count = |v: i64| i32::try_from(v).unwrap_or(i32::MAX);
        let out = days
            .into_iter()
            .map(|d| DailyMetrics {
                date: d.day,
                branch_code: branch_code.clone(),
                bookings_created: count(d.bookings_created),
                bookings_cancelled: count(d.bookings_cancelled),
                rentals_started: count(d.rentals_started),
                rentals_completed: count(d.rentals_completed),
                revenue: Money::new(d.revenue_minor, &d.currency),
                refunds: Money::new(d.refunds_minor, &d.currency),
                earned: Money::new(d.earned_minor, &d.currency),
                utilization: if d.available_seconds > 0.0 {
                    (d.rented_seconds as f64 / d.available_seconds).clamp(0.0, 1.0)
                } else {
                    0.0
                },
                average_rental_days: (d.rentals_completed > 0)
                    .then(|| d.rental_days as f64 / d.rentals_completed as f64),
            })
            .collect();
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
        let found = projections::analytics::cars_by_rented_time(
            pool,
            from,
            to,
            branch_code.as_deref(),
            limit,
        )
        .await?;
        let cars =
            projections::search::cars(pool, &found.iter().map(|f| f.car_id).collect::<Vec<_>>())
                .await?;
        let mut out = Vec::new();
        for figures in found {
            let Some(car) = cars.iter().find(|c| c.car_id == figures.car_id) else {
                continue;
            };
            out.push(CarUtilization {
                car: Car(car.clone()),
                rented_hours: figures.rented_seconds as f64 / 3600.0,
                utilization: (figures.rented_seconds as f64 / period_secs).clamp(0.0, 1.0),
                revenue: Money::new(figures.revenue_minor, &figures.currency),
                earned: Money::new(figures.earned_minor, &figures.currency),
                distance_km: figures.distance_km,
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
        let counts = projections::search::fleet_counts(pool, branch_code.as_deref()).await?;
        let active = projections::history::count_active(pool, branch_code.as_deref()).await?;
        let n = |v: i64| i32::try_from(v).unwrap_or(i32::MAX);
        Ok(FleetSummary {
            cars: n(counts.cars),
            available: n(counts.available),
            rented: n(counts.rented),
            in_maintenance: n(counts.maintenance),
            retired: n(counts.retired),
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
        let found = projections::telemetry::readings(
            services(ctx)?.store.pool(),
            car_id,
            from,
            to,
            i64::from(first),
        )
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
