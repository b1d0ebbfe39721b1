//! The analytics read model: per day and branch, and per day and car.
//!
//! Counts (bookings created and cancelled, rentals started and completed) fall on the UTC day of
//! the event, under the booking's pickup branch and currency. Two money figures:
//! - **revenue** is money in the bank: captured on the day the gateway captured it, minus
//!   refunds on the day the gateway paid them out (`refunds` shows those alone), so a day's
//!   revenue equals what the payments' events say moved that day, per booking and per car;
//! - **earned** is revenue recognised when earned: a completed rental's final total (fees
//!   included) on its return day, a cancellation fee on its cancellation day.
//!
//! A completed rental's time out is split across the days it covers (rented seconds, for
//! utilization); its distance (odometer in − out) falls on its return day. Cars in service per
//! branch are kept for utilization's denominator.
//!
//! A batch loads the bookings, payments and cars it touches, sums its increments per row in
//! memory, and adds them with one upsert per table.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use domain::booking::BookingEvent;
use domain::car::CarEvent;
use domain::payment::PaymentEvent;
use eventstore::RecordedEvent;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::runtime::{ApplyError, Projection};
use crate::{aggregate_uuid, day_of, decode, split_by_day};

pub struct Analytics;

/// Increments to one `rm_daily_metrics` row.
#[derive(Default, Clone, Copy)]
struct Daily {
    created: i32,
    cancelled: i32,
    started: i32,
    completed: i32,
    revenue: i64,
    refunds: i64,
    earned: i64,
    rented_seconds: i64,
    rental_days: i64,
}

impl Daily {
    fn add(&mut self, o: Daily) {
        self.created += o.created;
        self.cancelled += o.cancelled;
        self.started += o.started;
        self.completed += o.completed;
        self.revenue += o.revenue;
        self.refunds += o.refunds;
        self.earned += o.earned;
        self.rented_seconds += o.rented_seconds;
        self.rental_days += o.rental_days;
    }
}

/// Increments to one `rm_car_daily` row.
#[derive(Default, Clone, Copy)]
struct CarDaily {
    rented_seconds: i64,
    revenue: i64,
    earned: i64,
    distance_km: f64,
}

#[derive(Clone, Debug, sqlx::FromRow)]
struct BookingRow {
    booking_id: Uuid,
    car_id: Uuid,
    branch_code: String,
    currency: String,
    days: i32,
    picked_up_at: Option<DateTime<Utc>>,
    odometer_out_km: Option<f64>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
struct CarRow {
    car_id: Uuid,
    branch_code: String,
    registered_at: DateTime<Utc>,
    retired_at: Option<DateTime<Utc>>,
}

enum Decoded {
    Car(Uuid, CarEvent),
    Booking(Uuid, BookingEvent),
    Payment(Uuid, PaymentEvent),
}

/// Everything a batch adds up, keyed so that each row is written once.
#[derive(Default)]
struct Sums {
    /// (day, branch, currency) → increments; a BTreeMap so rows are written in a fixed order.
    daily: BTreeMap<(NaiveDate, String, String), Daily>,
    /// (day, car) → (branch, currency, increments); branch and currency of the first touch.
    cars: BTreeMap<(NaiveDate, Uuid), (String, String, CarDaily)>,
}

impl Sums {
    fn daily(&mut self, day: NaiveDate, b: &BookingRow, d: Daily) {
        self.daily
            .entry((day, b.branch_code.clone(), b.currency.clone()))
            .or_default()
            .add(d);
    }

    fn car(&mut self, day: NaiveDate, b: &BookingRow, d: CarDaily) {
        let entry = self.cars.entry((day, b.car_id)).or_insert_with(|| {
            (
                b.branch_code.clone(),
                b.currency.clone(),
                CarDaily::default(),
            )
        });
        entry.2.rented_seconds += d.rented_seconds;
        entry.2.revenue += d.revenue;
        entry.2.earned += d.earned;
        entry.2.distance_km += d.distance_km;
    }
}

#[async_trait::async_trait]
impl Projection for Analytics {
    fn name(&self) -> &'static str {
        "analytics"
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "rm_analytics_bookings",
            "rm_analytics_payments",
            "rm_analytics_cars",
            "rm_daily_metrics",
            "rm_car_daily",
        ]
    }

    fn wants(&self, event: &RecordedEvent) -> bool {
        match event.aggregate_type.as_str() {
            "car" => matches!(
                event.event_type.as_str(),
                "CarRegistered" | "CarRelocated" | "CarRetired" | "CarReturned"
            ),
            "booking" => event.event_type != "FeedbackSubmitted",
            "payment" => matches!(
                event.event_type.as_str(),
                "PaymentRequested" | "PaymentCaptured" | "PaymentRefunded"
            ),
            _ => false,
        }
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ApplyError> {
        let mut decoded = Vec::with_capacity(events.len());
        let (mut car_ids, mut booking_ids, mut payment_ids) =
            (HashSet::new(), HashSet::new(), HashSet::new());
        for event in events {
            let id = aggregate_uuid(event)?;
            let item = match event.aggregate_type.as_str() {
                "car" => {
                    car_ids.insert(id);
                    Decoded::Car(id, decode(event)?)
                }
                "booking" => {
                    booking_ids.insert(id);
                    Decoded::Booking(id, decode(event)?)
                }
                _ => {
                    payment_ids.insert(id);
                    let payment: PaymentEvent = decode(event)?;
                    if let PaymentEvent::PaymentRequested { booking_id, .. } = &payment {
                        // Money may move on it later in this same batch.
                        booking_ids.insert(*booking_id);
                    }
                    Decoded::Payment(id, payment)
                }
            };
            decoded.push((item, event.recorded_at));
        }
        // Payments refunded in this batch but requested earlier: their bookings.
        let mut payment_booking: HashMap<Uuid, Uuid> = sqlx::query_as::<_, (Uuid, Uuid)>(
            "SELECT payment_id, booking_id FROM rm_analytics_payments WHERE payment_id = ANY($1)",
        )
        .bind(payment_ids.into_iter().collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect();
        booking_ids.extend(payment_booking.values().copied());
        let mut bookings: HashMap<Uuid, BookingRow> = sqlx::query_as::<_, BookingRow>(
            "SELECT booking_id, car_id, branch_code, currency, days, picked_up_at, odometer_out_km \
             FROM rm_analytics_bookings WHERE booking_id = ANY($1)",
        )
        .bind(booking_ids.into_iter().collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| (r.booking_id, r))
        .collect();
        let mut cars: HashMap<Uuid, CarRow> = sqlx::query_as::<_, CarRow>(
            "SELECT car_id, branch_code, registered_at, retired_at FROM rm_analytics_cars \
             WHERE car_id = ANY($1)",
        )
        .bind(car_ids.into_iter().collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| (r.car_id, r))
        .collect();

        let mut sums = Sums::default();
        let mut dirty_bookings = HashSet::new();
        let mut dirty_cars = HashSet::new();
        let mut new_payments = Vec::new();
        for (item, recorded_at) in decoded {
            match item {
                Decoded::Car(id, event) => {
                    if apply_car(&mut cars, id, event, recorded_at)? {
                        dirty_cars.insert(id);
                    }
                }
                Decoded::Booking(id, event) => {
                    if apply_booking(&mut bookings, &mut sums, id, event)? {
                        dirty_bookings.insert(id);
                    }
                }
                Decoded::Payment(id, PaymentEvent::PaymentRequested { booking_id, .. }) => {
                    if payment_booking.insert(id, booking_id).is_some() {
                        return Err(ApplyError::Invalid(format!("payment {id} requested twice")));
                    }
                    new_payments.push((id, booking_id));
                }
                Decoded::Payment(id, PaymentEvent::PaymentCaptured { amount }) => {
                    let b = payment_booking_row(&payment_booking, &bookings, id)?;
                    let day = day_of(recorded_at);
                    let daily = Daily {
                        revenue: amount.minor,
                        ..Daily::default()
                    };
                    sums.daily(day, b, daily);
                    let car = CarDaily {
                        revenue: amount.minor,
                        ..CarDaily::default()
                    };
                    sums.car(day, b, car);
                }
                Decoded::Payment(id, PaymentEvent::PaymentRefunded { amount, .. }) => {
                    let b = payment_booking_row(&payment_booking, &bookings, id)?;
                    let day = day_of(recorded_at);
                    let daily = Daily {
                        revenue: -amount.minor,
                        refunds: amount.minor,
                        ..Daily::default()
                    };
                    sums.daily(day, b, daily);
                    let car = CarDaily {
                        revenue: -amount.minor,
                        ..CarDaily::default()
                    };
                    sums.car(day, b, car);
                }
                Decoded::Payment(..) => {}
            }
        }
        if !new_payments.is_empty() {
            let (ids, bookings): (Vec<Uuid>, Vec<Uuid>) = new_payments.into_iter().unzip();
            sqlx::query(
                "INSERT INTO rm_analytics_payments (payment_id, booking_id) \
                 SELECT * FROM unnest($1::uuid[], $2::uuid[])",
            )
            .bind(ids)
            .bind(bookings)
            .execute(&mut *conn)
            .await?;
        }
        write_bookings(
            conn,
            dirty_bookings.iter().filter_map(|id| bookings.get(id)),
        )
        .await?;
        write_cars(conn, dirty_cars.iter().filter_map(|id| cars.get(id))).await?;
        write_sums(conn, sums).await
    }
}

fn never_held(booking: Uuid) -> ApplyError {
    ApplyError::Invalid(format!("booking {booking} was never held"))
}

/// Fold a car event; whether the car's row changed.
fn apply_car(
    cars: &mut HashMap<Uuid, CarRow>,
    id: Uuid,
    event: CarEvent,
    recorded_at: DateTime<Utc>,
) -> Result<bool, ApplyError> {
    match event {
        CarEvent::CarRegistered {
            branch,
            in_service_from,
            ..
        } => {
            if cars.contains_key(&id) {
                return Err(ApplyError::Invalid(format!("car {id} registered twice")));
            }
            cars.insert(
                id,
                CarRow {
                    car_id: id,
                    branch_code: branch,
                    // In service from the event, or from the earlier date it names.
                    registered_at: in_service_from
                        .map_or(recorded_at, |from| from.min(recorded_at)),
                    retired_at: None,
                },
            );
            Ok(true)
        }
        CarEvent::CarRelocated { to: branch, .. } | CarEvent::CarReturned { branch, .. } => {
            Ok(cars.get_mut(&id).is_some_and(|car| {
                car.branch_code = branch;
                true
            }))
        }
        CarEvent::CarRetired { at, .. } => Ok(cars.get_mut(&id).is_some_and(|car| {
            car.retired_at = Some(at);
            true
        })),
        _ => Ok(false),
    }
}

/// Fold a booking event into the lookups and the sums; whether the booking's row changed.
fn apply_booking(
    bookings: &mut HashMap<Uuid, BookingRow>,
    sums: &mut Sums,
    id: Uuid,
    event: BookingEvent,
) -> Result<bool, ApplyError> {
    if let BookingEvent::BookingHeld {
        car_id,
        pickup_branch,
        quote,
        at,
        ..
    } = event
    {
        if bookings.contains_key(&id) {
            return Err(ApplyError::Invalid(format!("booking {id} held twice")));
        }
        let row = BookingRow {
            booking_id: id,
            car_id,
            branch_code: pickup_branch,
            currency: quote.total.currency.as_str().to_owned(),
            days: i32::try_from(quote.days).unwrap_or(i32::MAX),
            picked_up_at: None,
            odometer_out_km: None,
        };
        sums.daily(
            day_of(at),
            &row,
            Daily {
                created: 1,
                ..Daily::default()
            },
        );
        bookings.insert(id, row);
        return Ok(true);
    }
    let b = bookings.get_mut(&id).ok_or_else(|| never_held(id))?;
    match event {
        BookingEvent::BookingHeld { .. }
        | BookingEvent::BookingConfirmed { .. }
        | BookingEvent::FeedbackSubmitted { .. }
        | BookingEvent::BookingExpired { .. } => Ok(false),
        BookingEvent::BookingModified { quote, .. } => {
            b.days = i32::try_from(quote.days).unwrap_or(i32::MAX);
            Ok(true)
        }
        BookingEvent::RentalOverdue { .. } | BookingEvent::BookingDisplaced { .. } => Ok(false),
        // The booking's money and use go to the car it ends up on.
        BookingEvent::BookingReassigned { to_car, .. } => {
            b.car_id = to_car;
            Ok(true)
        }
        BookingEvent::BookingNoShow { fee, at } => {
            // The fee kept is earned on the day the no-show was marked.
            let day = day_of(at);
            let earned = Daily {
                earned: fee.minor,
                ..Daily::default()
            };
            sums.daily(day, b, earned);
            if fee.minor != 0 {
                let car = CarDaily {
                    earned: fee.minor,
                    ..CarDaily::default()
                };
                sums.car(day, b, car);
            }
            Ok(false)
        }
        BookingEvent::BookingCancelled { fee, at, .. } => {
            let day = day_of(at);
            sums.daily(
                day,
                b,
                Daily {
                    cancelled: 1,
                    earned: fee.minor,
                    ..Daily::default()
                },
            );
            if fee.minor != 0 {
                sums.car(
                    day,
                    b,
                    CarDaily {
                        earned: fee.minor,
                        ..CarDaily::default()
                    },
                );
            }
            Ok(false)
        }
        BookingEvent::RentalStarted {
            odometer_km, at, ..
        } => {
            b.picked_up_at = Some(at);
            b.odometer_out_km = Some(odometer_km);
            sums.daily(
                day_of(at),
                b,
                Daily {
                    started: 1,
                    ..Daily::default()
                },
            );
            Ok(true)
        }
        BookingEvent::RentalCompleted {
            odometer_km,
            total,
            at,
            ..
        } => {
            let start = b.picked_up_at.unwrap_or(at);
            for (d, seconds) in split_by_day(start, at) {
                sums.daily(
                    d,
                    b,
                    Daily {
                        rented_seconds: seconds,
                        ..Daily::default()
                    },
                );
                sums.car(
                    d,
                    b,
                    CarDaily {
                        rented_seconds: seconds,
                        ..CarDaily::default()
                    },
                );
            }
            let day = day_of(at);
            sums.daily(
                day,
                b,
                Daily {
                    completed: 1,
                    earned: total.minor,
                    rental_days: i64::from(b.days),
                    ..Daily::default()
                },
            );
            // Whole metres: summed exactly in a numeric column.
            let distance = b.odometer_out_km.map_or(0.0, |out| {
                ((odometer_km - out).max(0.0) * 1000.0).round() / 1000.0
            });
            sums.car(
                day,
                b,
                CarDaily {
                    earned: total.minor,
                    distance_km: distance,
                    ..CarDaily::default()
                },
            );
            Ok(false)
        }
    }
}

/// The booking a payment was requested for.
fn payment_booking_row<'a>(
    payment_booking: &HashMap<Uuid, Uuid>,
    bookings: &'a HashMap<Uuid, BookingRow>,
    payment: Uuid,
) -> Result<&'a BookingRow, ApplyError> {
    let booking = payment_booking.get(&payment).ok_or_else(|| {
        ApplyError::Invalid(format!(
            "money moved on payment {payment}, which was never requested"
        ))
    })?;
    bookings.get(booking).ok_or_else(|| never_held(*booking))
}

async fn write_bookings<'a>(
    conn: &mut PgConnection,
    rows: impl Iterator<Item = &'a BookingRow>,
) -> Result<(), ApplyError> {
    let rows: Vec<&BookingRow> = rows.collect();
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO rm_analytics_bookings (booking_id, car_id, branch_code, currency, days, \
           picked_up_at, odometer_out_km) \
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int[], \
           $6::timestamptz[], $7::float8[]) \
         ON CONFLICT (booking_id) DO UPDATE SET days = EXCLUDED.days, \
           picked_up_at = EXCLUDED.picked_up_at, odometer_out_km = EXCLUDED.odometer_out_km",
    )
    .bind(rows.iter().map(|r| r.booking_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.car_id).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.branch_code.clone())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.currency.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.days).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.picked_up_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.odometer_out_km).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

async fn write_cars<'a>(
    conn: &mut PgConnection,
    rows: impl Iterator<Item = &'a CarRow>,
) -> Result<(), ApplyError> {
    let rows: Vec<&CarRow> = rows.collect();
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO rm_analytics_cars (car_id, branch_code, registered_at, retired_at) \
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::timestamptz[]) \
         ON CONFLICT (car_id) DO UPDATE SET branch_code = EXCLUDED.branch_code, \
           retired_at = EXCLUDED.retired_at",
    )
    .bind(rows.iter().map(|r| r.car_id).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.branch_code.clone())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.registered_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.retired_at).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

async fn write_sums(conn: &mut PgConnection, sums: Sums) -> Result<(), ApplyError> {
    if !sums.daily.is_empty() {
        let (keys, values): (Vec<_>, Vec<_>) = sums.daily.into_iter().unzip();
        sqlx::query(
            "INSERT INTO rm_daily_metrics AS m (day, branch_code, currency, bookings_created, \
               bookings_cancelled, rentals_started, rentals_completed, revenue_minor, \
               refunds_minor, rented_seconds, rental_days_sum, earned_minor) \
             SELECT * FROM unnest($1::date[], $2::text[], $3::text[], $4::int[], $5::int[], \
               $6::int[], $7::int[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], \
               $12::bigint[]) \
             ON CONFLICT (day, branch_code, currency) DO UPDATE SET \
               bookings_created = m.bookings_created + EXCLUDED.bookings_created, \
               bookings_cancelled = m.bookings_cancelled + EXCLUDED.bookings_cancelled, \
               rentals_started = m.rentals_started + EXCLUDED.rentals_started, \
               rentals_completed = m.rentals_completed + EXCLUDED.rentals_completed, \
               revenue_minor = m.revenue_minor + EXCLUDED.revenue_minor, \
               refunds_minor = m.refunds_minor + EXCLUDED.refunds_minor, \
               rented_seconds = m.rented_seconds + EXCLUDED.rented_seconds, \
               rental_days_sum = m.rental_days_sum + EXCLUDED.rental_days_sum, \
               earned_minor = m.earned_minor + EXCLUDED.earned_minor",
        )
        .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.1.clone()).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.2.clone()).collect::<Vec<_>>())
        .bind(values.iter().map(|v| v.created).collect::<Vec<_>>())
        .bind(values.iter().map(|v| v.cancelled).collect::<Vec<_>>())
        .bind(values.iter().map(|v| v.started).collect::<Vec<_>>())
        .bind(values.iter().map(|v| v.completed).collect::<Vec<_>>())
        .bind(values.iter().map(|v| v.revenue).collect::<Vec<_>>())
        .bind(values.iter().map(|v| v.refunds).collect::<Vec<_>>())
        .bind(values.iter().map(|v| v.rented_seconds).collect::<Vec<_>>())
        .bind(values.iter().map(|v| v.rental_days).collect::<Vec<_>>())
        .bind(values.iter().map(|v| v.earned).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    if !sums.cars.is_empty() {
        let (keys, values): (Vec<_>, Vec<_>) = sums.cars.into_iter().unzip();
        sqlx::query(
            "INSERT INTO rm_car_daily AS c (day, car_id, branch_code, currency, rented_seconds, \
               revenue_minor, distance_km, earned_minor) \
             SELECT * FROM unnest($1::date[], $2::uuid[], $3::text[], $4::text[], $5::bigint[], \
               $6::bigint[], $7::float8[], $8::bigint[]) \
             ON CONFLICT (day, car_id) DO UPDATE SET \
               rented_seconds = c.rented_seconds + EXCLUDED.rented_seconds, \
               revenue_minor = c.revenue_minor + EXCLUDED.revenue_minor, \
               earned_minor = c.earned_minor + EXCLUDED.earned_minor, \
               distance_km = c.distance_km + EXCLUDED.distance_km",
        )
        .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
        .bind(values.iter().map(|v| v.0.clone()).collect::<Vec<_>>())
        .bind(values.iter().map(|v| v.1.clone()).collect::<Vec<_>>())
        .bind(
            values
                .iter()
                .map(|v| v.2.rented_seconds)
                .collect::<Vec<_>>(),
        )
        .bind(values.iter().map(|v| v.2.revenue).collect::<Vec<_>>())
        .bind(values.iter().map(|v| v.2.distance_km).collect::<Vec<_>>())
        .bind(values.iter().map(|v| v.2.earned).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// One day's figures in one currency, summed over the branches asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct DayFigures {
    pub day: NaiveDate,
    pub currency: String,
    pub bookings_created: i64,
    pub bookings_cancelled: i64,
    pub rentals_started: i64,
    pub rentals_completed: i64,
    pub revenue_minor: i64,
    pub refunds_minor: i64,
    pub earned_minor: i64,
    pub rented_seconds: i64,
    pub rental_days: i64,
    /// Seconds the fleet (of the branch) was in service that day: what utilization divides by.
    pub available_seconds: f64,
}

/// The figures of every day in `[from, to]` with any, per currency, for `branch` or the whole
/// fleet; by day, then currency.
pub async fn days(
    pool: &PgPool,
    from: NaiveDate,
    to: NaiveDate,
    branch: Option<&str>,
) -> Result<Vec<DayFigures>, sqlx::Error> {
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
    .bind(branch)
    .fetch_all(pool)
    .await?;
    found
        .iter()
        .map(|r| {
            Ok(DayFigures {
                day: r.try_get("day")?,
                currency: r.try_get("currency")?,
                bookings_created: r.try_get("created")?,
                bookings_cancelled: r.try_get("cancelled")?,
                rentals_started: r.try_get("started")?,
                rentals_completed: r.try_get("completed")?,
                revenue_minor: r.try_get("revenue")?,
                refunds_minor: r.try_get("refunds")?,
                earned_minor: r.try_get("earned")?,
                rented_seconds: r.try_get("rented")?,
                rental_days: r.try_get("rental_days")?,
                available_seconds: r.try_get("available")?,
            })
        })
        .collect()
}

/// One car's figures over a period.
#[derive(Clone, Debug, PartialEq)]
pub struct CarFigures {
    pub car_id: Uuid,
    pub currency: String,
    pub rented_seconds: i64,
    pub revenue_minor: i64,
    pub earned_minor: i64,
    pub distance_km: f64,
}

/// The `limit` cars rented longest over `[from, to]` (of `branch`, or all), longest first.
pub async fn cars_by_rented_time(
    pool: &PgPool,
    from: NaiveDate,
    to: NaiveDate,
    branch: Option<&str>,
    limit: i64,
) -> Result<Vec<CarFigures>, sqlx::Error> {
    let found = sqlx::query(
        "SELECT car_id, min(currency) AS currency, sum(rented_seconds)::int8 AS rented, \
           sum(revenue_minor)::int8 AS revenue, sum(earned_minor)::int8 AS earned, \
           sum(distance_km)::float8 AS distance \
         FROM rm_car_daily WHERE day BETWEEN $1 AND $2 AND ($3::text IS NULL OR branch_code = $3) \
         GROUP BY car_id ORDER BY rented DESC, car_id LIMIT $4",
    )
    .bind(from)
    .bind(to)
    .bind(branch)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    found
        .iter()
        .map(|r| {
            Ok(CarFigures {
                car_id: r.try_get("car_id")?,
                currency: r.try_get("currency")?,
                rented_seconds: r.try_get("rented")?,
                revenue_minor: r.try_get("revenue")?,
                earned_minor: r.try_get("earned")?,
                distance_km: r.try_get("distance")?,
            })
        })
        .collect()
}
