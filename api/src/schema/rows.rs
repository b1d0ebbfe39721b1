//! Rows of the read models (migrations/20261123000001_read_models.sql) and their loaders.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ApiResult;

/// `rm_search_cars` plus the status computed as the table's comment says.
#[derive(Clone, Debug, sqlx::FromRow)]
pub(crate) struct CarRow {
    pub(crate) car_id: Uuid,
    pub(crate) make: String,
    pub(crate) model: String,
    pub(crate) year: i32,
    pub(crate) class: String,
    pub(crate) seats: i32,
    pub(crate) transmission: String,
    pub(crate) fuel: String,
    pub(crate) features: Vec<String>,
    pub(crate) daily_rate_minor: i64,
    pub(crate) currency: String,
    pub(crate) branch_code: String,
    pub(crate) odometer_km: Option<f64>,
    pub(crate) rating_sum: i64,
    pub(crate) review_count: i32,
    pub(crate) status: String,
}

/// The columns of [`CarRow`] over `rm_search_cars c`.
pub(crate) const CAR_COLUMNS: &str = "c.car_id, c.make, c.model, c.year, c.class, c.seats, \
    c.transmission, c.fuel, c.features, c.daily_rate_minor, c.currency, c.branch_code, \
    c.odometer_km, c.rating_sum, c.review_count, \
    CASE WHEN c.retired THEN 'RETIRED' \
         WHEN c.rented_booking IS NOT NULL THEN 'RENTED' \
         WHEN EXISTS (SELECT 1 FROM rm_availability_blocks b WHERE b.car_id = c.car_id \
                      AND b.kind = 'MAINTENANCE' AND b.period @> now()) THEN 'MAINTENANCE' \
         WHEN EXISTS (SELECT 1 FROM rm_availability_blocks b WHERE b.car_id = c.car_id \
                      AND b.kind = 'RESERVATION' AND b.period @> now()) THEN 'RESERVED' \
         ELSE 'AVAILABLE' END AS status";

pub(crate) async fn car(pool: &PgPool, id: Uuid) -> ApiResult<Option<CarRow>> {
    let sql = format!("SELECT {CAR_COLUMNS} FROM rm_search_cars c WHERE c.car_id = $1");
    Ok(sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?)
}

/// `rm_bookings`.
#[derive(Clone, Debug, sqlx::FromRow)]
pub(crate) struct BookingRow {
    pub(crate) booking_id: Uuid,
    pub(crate) customer_id: Uuid,
    pub(crate) car_id: Uuid,
    pub(crate) pickup_at: DateTime<Utc>,
    pub(crate) return_at: DateTime<Utc>,
    pub(crate) pickup_branch: String,
    pub(crate) return_branch: String,
    pub(crate) status: String,
    pub(crate) held_until: Option<DateTime<Utc>>,
    pub(crate) total_minor: i64,
    pub(crate) currency: String,
    pub(crate) lines: serde_json::Value,
    pub(crate) payment_id: Option<Uuid>,
    pub(crate) cancel_fee_minor: Option<i64>,
    pub(crate) rating: Option<i32>,
    pub(crate) comment: Option<String>,
    pub(crate) feedback_at: Option<DateTime<Utc>>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) overdue_at: Option<DateTime<Utc>>,
    pub(crate) displaced_at: Option<DateTime<Utc>>,
}

pub(crate) const BOOKING_COLUMNS: &str = "booking_id, customer_id, car_id, pickup_at, return_at, \
    pickup_branch, return_branch, status, held_until, total_minor, currency, lines, payment_id, \
    cancel_fee_minor, rating, comment, feedback_at, created_at, overdue_at, displaced_at";

pub(crate) async fn booking(pool: &PgPool, id: Uuid) -> ApiResult<Option<BookingRow>> {
    let sql = format!("SELECT {BOOKING_COLUMNS} FROM rm_bookings WHERE booking_id = $1");
    Ok(sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?)
}

/// `rm_payments`.
#[derive(Clone, Debug, sqlx::FromRow)]
pub(crate) struct PaymentRow {
    pub(crate) payment_id: Uuid,
    pub(crate) booking_id: Uuid,
    pub(crate) amount_minor: i64,
    pub(crate) refunded_minor: i64,
    pub(crate) currency: String,
    pub(crate) method: String,
    pub(crate) status: String,
    pub(crate) gateway: Option<String>,
    pub(crate) failure_reason: Option<String>,
    pub(crate) created_at: DateTime<Utc>,
}

const PAYMENT_COLUMNS: &str = "payment_id, booking_id, amount_minor, refunded_minor, currency, \
    method, status, gateway, failure_reason, created_at";

pub(crate) async fn payment(pool: &PgPool, id: Uuid) -> ApiResult<Option<PaymentRow>> {
    let sql = format!("SELECT {PAYMENT_COLUMNS} FROM rm_payments WHERE payment_id = $1");
    Ok(sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?)
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

impl PaymentRow {
    /// Money this payment holds: captured minus refunded (zero unless it was captured).
    pub(crate) fn held_minor(&self) -> i64 {
        match self.status.as_str() {
            "CAPTURED" | "PARTIALLY_REFUNDED" | "REFUNDED" => {
                self.amount_minor - self.refunded_minor
            }
            _ => 0,
        }
    }

    /// Money captured (before refunds).
    pub(crate) fn captured_minor(&self) -> i64 {
        if self.held_minor() != 0 || self.status == "REFUNDED" {
            self.amount_minor
        } else {
            0
        }
    }
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
