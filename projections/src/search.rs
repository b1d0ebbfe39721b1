//! The search read model: one row per car with what searchCars filters and sorts on.
//!
//! Details, class, seats, transmission, fuel, features, daily rate, branch, retirement, whether
//! it is out on a rental, odometer (hand-overs, returns and telemetry), and the rating from
//! feedback on its bookings. Time-dependent status (maintenance, reserved now) is derived when
//! read, from the availability model; see the migration's comments.

use domain::booking::BookingEvent;
use domain::car::{CarDetails, CarEvent};
use domain::telemetry::TelemetryEvent;
use eventstore::RecordedEvent;
use serde::Serialize;
use sqlx::PgConnection;

use crate::runtime::{ApplyError, Projection};
use crate::{aggregate_uuid, decode};

pub struct Search;

/// An enum's wire name (`SCREAMING_SNAKE_CASE`, as serde writes it).
pub(crate) fn enum_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

fn search_text(details: &CarDetails) -> String {
    let mut text = format!("{} {}", details.make, details.model);
    for feature in &details.features {
        text.push(' ');
        text.push_str(feature);
    }
    text
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
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        let at = event.recorded_at;
        match event.aggregate_type.as_str() {
            "car" => {
                let car = aggregate_uuid(event)?;
                apply_car(conn, car, decode(event)?, at).await
            }
            "booking" => {
                let booking = aggregate_uuid(event)?;
                match decode::<BookingEvent>(event)? {
                    BookingEvent::BookingHeld { car_id, .. } => {
                        sqlx::query(
                            "INSERT INTO rm_search_booking_cars (booking_id, car_id) VALUES ($1, $2)",
                        )
                        .bind(booking)
                        .bind(car_id)
                        .execute(&mut *conn)
                        .await?;
                    }
                    BookingEvent::FeedbackSubmitted { rating, .. } => {
                        sqlx::query(
                            "UPDATE rm_search_cars c SET rating_sum = rating_sum + $2, \
                               review_count = review_count + 1, updated_at = $3 \
                             FROM rm_search_booking_cars b \
                             WHERE b.booking_id = $1 AND c.car_id = b.car_id",
                        )
                        .bind(booking)
                        .bind(i64::from(rating))
                        .bind(at)
                        .execute(&mut *conn)
                        .await?;
                    }
                    _ => {}
                }
                Ok(())
            }
            "telemetry" => {
                if let TelemetryEvent::ReadingsRecorded {
                    car_id, readings, ..
                } = decode(event)?
                {
                    let max = readings.iter().map(|r| r.odometer_km).fold(None, |m, v| {
                        Some(match m {
                            Some(m) if m >= v => m,
                            _ => v,
                        })
                    });
                    if let Some(odometer) = max {
                        sqlx::query(
                            "UPDATE rm_search_cars SET \
                               odometer_km = greatest(coalesce(odometer_km, 0), $2) \
                             WHERE car_id = $1",
                        )
                        .bind(car_id)
                        .bind(odometer)
                        .execute(&mut *conn)
                        .await?;
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

async fn apply_car(
    conn: &mut PgConnection,
    car: uuid::Uuid,
    event: CarEvent,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), ApplyError> {
    match event {
        CarEvent::CarRegistered {
            details,
            daily_rate,
            branch,
            ..
        } => {
            sqlx::query(
                "INSERT INTO rm_search_cars (car_id, make, model, year, class, seats, transmission, \
                   fuel, features, daily_rate_minor, currency, branch_code, search_vector, \
                   registered_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
                   to_tsvector('simple', $13), $14, $14)",
            )
            .bind(car)
            .bind(&details.make)
            .bind(&details.model)
            .bind(details.year)
            .bind(enum_name(&details.class))
            .bind(i32::from(details.seats))
            .bind(enum_name(&details.transmission))
            .bind(enum_name(&details.fuel))
            .bind(&details.features)
            .bind(daily_rate.minor)
            .bind(daily_rate.currency.as_str())
            .bind(&branch)
            .bind(search_text(&details))
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        CarEvent::CarDetailsUpdated { details } => {
            sqlx::query(
                "UPDATE rm_search_cars SET make = $2, model = $3, year = $4, class = $5, seats = $6, \
                   transmission = $7, fuel = $8, features = $9, \
                   search_vector = to_tsvector('simple', $10), updated_at = $11 \
                 WHERE car_id = $1",
            )
            .bind(car)
            .bind(&details.make)
            .bind(&details.model)
            .bind(details.year)
            .bind(enum_name(&details.class))
            .bind(i32::from(details.seats))
            .bind(enum_name(&details.transmission))
            .bind(enum_name(&details.fuel))
            .bind(&details.features)
            .bind(search_text(&details))
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        CarEvent::DailyRateChanged { to, .. } => {
            sqlx::query(
                "UPDATE rm_search_cars SET daily_rate_minor = $2, currency = $3, updated_at = $4 \
                 WHERE car_id = $1",
            )
            .bind(car)
            .bind(to.minor)
            .bind(to.currency.as_str())
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        CarEvent::CarRelocated { to, .. } => {
            sqlx::query(
                "UPDATE rm_search_cars SET branch_code = $2, updated_at = $3 WHERE car_id = $1",
            )
            .bind(car)
            .bind(&to)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        CarEvent::CarRetired { .. } => {
            sqlx::query(
                "UPDATE rm_search_cars SET retired = true, updated_at = $2 WHERE car_id = $1",
            )
            .bind(car)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        CarEvent::CarPickedUp {
            booking_id,
            odometer_km,
            ..
        } => {
            sqlx::query(
                "UPDATE rm_search_cars SET rented_booking = $2, \
                   odometer_km = greatest(coalesce(odometer_km, 0), $3), updated_at = $4 \
                 WHERE car_id = $1",
            )
            .bind(car)
            .bind(booking_id)
            .bind(odometer_km)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        CarEvent::CarReturned {
            odometer_km,
            branch,
            ..
        } => {
            sqlx::query(
                "UPDATE rm_search_cars SET rented_booking = NULL, branch_code = $2, \
                   odometer_km = greatest(coalesce(odometer_km, 0), $3), updated_at = $4 \
                 WHERE car_id = $1",
            )
            .bind(car)
            .bind(&branch)
            .bind(odometer_km)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        CarEvent::MaintenanceScheduled { .. }
        | CarEvent::MaintenanceCompleted { .. }
        | CarEvent::CarReserved { .. }
        | CarEvent::ReservationChanged { .. }
        | CarEvent::ReservationReleased { .. } => {}
    }
    Ok(())
}
