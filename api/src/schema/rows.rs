//! Rows of the read models (migrations/20261123000001_read_models.sql) and their loaders.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ApiResult;

pub(crate) use projections::search::{CAR_COLUMNS, CarView as CarRow};

pub(crate) async fn car(pool: &PgPool, id: Uuid) -> ApiResult<Option<CarRow>> {
    Ok(projections::search::car(pool, id).await?)
}

pub(crate) use projections::history::{BOOKING_COLUMNS, BookingRow, PAYMENT_COLUMNS, PaymentRow};

pub(crate) async fn booking(pool: &PgPool, id: Uuid) -> ApiResult<Option<BookingRow>> {
    Ok(projections::history::booking(pool, id).await?)
}

pub(crate) async fn payment(pool: &PgPool, id: Uuid) -> ApiResult<Option<PaymentRow>> {
    Ok(projections::history::payment(pool, id).await?)
}

/// Every payment of a booking, oldest first (a booking has a handful: its payment, retries
/// with other keys, charges for fees). Uses `rm_payments_booking_idx`.
pub(crate) async fn booking_payments(pool: &PgPool, booking: Uuid) -> ApiResult<Vec<PaymentRow>> {
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM rm_payments WHERE booking_id = $1 \
         ORDER BY created_at, payment_id LIMIT 100"
    );
    Ok(sqlx::query_as(&sql).bind(booking).fetch_all(pool).await?)
}

/// `rm_telemetry_latest` / `rm_telemetry_readings`.
#[derive(Clone, Debug, sqlx::FromRow)]
pub(crate) struct TelemetryRow {
    pub(crate) car_id: Uuid,
    pub(crate) recorded_at: DateTime<Utc>,
    pub(crate) latitude: f64,
    pub(crate) longitude: f64,
    pub(crate) speed_kph: Option<f64>,
    pub(crate) fuel_percent: Option<f64>,
    pub(crate) battery_percent: Option<f64>,
    pub(crate) odometer_km: f64,
    pub(crate) engine_temp_c: Option<f64>,
}

pub(crate) const TELEMETRY_COLUMNS: &str = "car_id, recorded_at, latitude, longitude, speed_kph, \
    fuel_percent, battery_percent, odometer_km, engine_temp_c";

pub(crate) async fn latest_telemetry(pool: &PgPool, car: Uuid) -> ApiResult<Option<TelemetryRow>> {
    let sql = format!("SELECT {TELEMETRY_COLUMNS} FROM rm_telemetry_latest WHERE car_id = $1");
    Ok(sqlx::query_as(&sql).bind(car).fetch_optional(pool).await?)
}
