//! The availability read model: each car's reserved and maintenance windows as `tstzrange`.
//!
//! Mirrors the Car aggregate's blocks: a reservation appears with `CarReserved`, moves with
//! `ReservationChanged`, disappears with `ReservationReleased`, and is cut at the actual return
//! instant when the car comes back early; maintenance is cut when it completes early. Windows
//! that ended stay (staff see past reservations), which never conflicts with new ones since the
//! aggregate only reserves ahead.

use chrono::{DateTime, Utc};
use domain::car::CarEvent;
use eventstore::RecordedEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::runtime::{ApplyError, Projection};
use crate::{aggregate_uuid, decode};

pub struct Availability;

#[async_trait::async_trait]
impl Projection for Availability {
    fn name(&self) -> &'static str {
        "availability"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_availability_blocks"]
    }

    fn wants(&self, event: &RecordedEvent) -> bool {
        event.aggregate_type == "car"
            && matches!(
                event.event_type.as_str(),
                "MaintenanceScheduled"
                    | "MaintenanceCompleted"
                    | "CarReserved"
                    | "ReservationChanged"
                    | "ReservationReleased"
                    | "CarReturned"
            )
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        let car = aggregate_uuid(event)?;
        match decode::<CarEvent>(event)? {
            CarEvent::MaintenanceScheduled {
                maintenance_id,
                window,
                reason,
                ..
            } => {
                insert(
                    conn,
                    car,
                    maintenance_id,
                    "MAINTENANCE",
                    window,
                    Some(&reason),
                )
                .await?;
            }
            CarEvent::MaintenanceCompleted { maintenance_id, at } => {
                cut(conn, car, maintenance_id, at).await?;
            }
            CarEvent::CarReserved {
                booking_id, window, ..
            } => {
                insert(conn, car, booking_id, "RESERVATION", window, None).await?;
            }
            CarEvent::ReservationChanged { booking_id, to, .. } => {
                sqlx::query(
                    "UPDATE rm_availability_blocks SET period = tstzrange($3, $4, '[)') \
                     WHERE car_id = $1 AND block_id = $2",
                )
                .bind(car)
                .bind(booking_id)
                .bind(to.start)
                .bind(to.end)
                .execute(&mut *conn)
                .await?;
            }
            CarEvent::ReservationReleased { booking_id, .. } => {
                sqlx::query(
                    "DELETE FROM rm_availability_blocks WHERE car_id = $1 AND block_id = $2",
                )
                .bind(car)
                .bind(booking_id)
                .execute(&mut *conn)
                .await?;
            }
            CarEvent::CarReturned { booking_id, at, .. } => {
                cut(conn, car, booking_id, at).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

async fn insert(
    conn: &mut PgConnection,
    car: Uuid,
    block: Uuid,
    kind: &str,
    window: domain::TimeWindow,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO rm_availability_blocks (car_id, block_id, kind, period, reason) \
         VALUES ($1, $2, $3, tstzrange($4, $5, '[)'), $6)",
    )
    .bind(car)
    .bind(block)
    .bind(kind)
    .bind(window.start)
    .bind(window.end)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// End a block at `at` if it would end later; drop it if it had not started by then.
async fn cut(
    conn: &mut PgConnection,
    car: Uuid,
    block: Uuid,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM rm_availability_blocks \
         WHERE car_id = $1 AND block_id = $2 AND lower(period) >= $3",
    )
    .bind(car)
    .bind(block)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE rm_availability_blocks SET period = tstzrange(lower(period), $3, '[)') \
         WHERE car_id = $1 AND block_id = $2 AND upper(period) > $3",
    )
    .bind(car)
    .bind(block)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}
