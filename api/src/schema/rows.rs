//! The read side's rows the API shows, and their lookups: every one is the projections'
//! query API (`projections::search`, `history`, `telemetry`...); the API names no read-model
//! table itself.

use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ApiResult;

pub(crate) use projections::history::{BookingRow, PaymentRow};
pub(crate) use projections::search::CarView as CarRow;
pub(crate) use projections::telemetry::TelemetryRow;

pub(crate) async fn car(pool: &PgPool, id: Uuid) -> ApiResult<Option<CarRow>> {
    Ok(projections::search::car(pool, id).await?)
}

pub(crate) async fn booking(pool: &PgPool, id: Uuid) -> ApiResult<Option<BookingRow>> {
    Ok(projections::history::booking(pool, id).await?)
}

pub(crate) async fn payment(pool: &PgPool, id: Uuid) -> ApiResult<Option<PaymentRow>> {
    Ok(projections::history::payment(pool, id).await?)
}

/// Every payment of a booking, oldest first.
pub(crate) async fn booking_payments(pool: &PgPool, booking: Uuid) -> ApiResult<Vec<PaymentRow>> {
    Ok(projections::history::payments_of(pool, booking).await?)
}

pub(crate) async fn latest_telemetry(pool: &PgPool, car: Uuid) -> ApiResult<Option<TelemetryRow>> {
    Ok(projections::telemetry::latest(pool, car).await?)
}
