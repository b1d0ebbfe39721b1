//! The telemetry read model: every accepted reading per car, and the latest one.

use domain::telemetry::{Reading, TelemetryEvent};
use eventstore::RecordedEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::decode;
use crate::runtime::{ApplyError, Projection};

pub struct TelemetryProjection;

#[async_trait::async_trait]
impl Projection for TelemetryProjection {
    fn name(&self) -> &'static str {
        "telemetry"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_telemetry_readings", "rm_telemetry_latest"]
    }

    fn wants(&self, event: &RecordedEvent) -> bool {
        event.aggregate_type == "telemetry" && event.event_type == "ReadingsRecorded"
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        let TelemetryEvent::ReadingsRecorded {
            car_id, readings, ..
        } = decode(event)?
        else {
            return Ok(());
        };
        if readings.is_empty() {
            return Ok(());
        }
        insert_readings(conn, car_id, &readings).await?;
        let latest = readings
            .iter()
            .max_by_key(|r| r.recorded_at)
            .copied()
            .ok_or_else(|| ApplyError::Invalid("no readings".to_owned()))?;
        sqlx::query(
            "INSERT INTO rm_telemetry_latest AS l (car_id, recorded_at, latitude, longitude, \
               speed_kph, fuel_percent, battery_percent, odometer_km, engine_temp_c) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (car_id) DO UPDATE SET recorded_at = EXCLUDED.recorded_at, \
               latitude = EXCLUDED.latitude, longitude = EXCLUDED.longitude, \
               speed_kph = EXCLUDED.speed_kph, fuel_percent = EXCLUDED.fuel_percent, \
               battery_percent = EXCLUDED.battery_percent, odometer_km = EXCLUDED.odometer_km, \
               engine_temp_c = EXCLUDED.engine_temp_c \
             WHERE l.recorded_at < EXCLUDED.recorded_at",
        )
        .bind(car_id)
        .bind(latest.recorded_at)
        .bind(latest.position.latitude)
        .bind(latest.position.longitude)
        .bind(latest.speed_kph)
        .bind(latest.fuel_percent)
        .bind(latest.battery_percent)
        .bind(latest.odometer_km)
        .bind(latest.engine_temp_c)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// One statement for the whole batch of readings.
async fn insert_readings(
    conn: &mut PgConnection,
    car: Uuid,
    readings: &[Reading],
) -> Result<(), sqlx::Error> {
    let column = |f: fn(&Reading) -> Option<f64>| readings.iter().map(f).collect::<Vec<_>>();
    let times: Vec<_> = readings.iter().map(|r| r.recorded_at).collect();
    sqlx::query(
        "INSERT INTO rm_telemetry_readings (car_id, recorded_at, latitude, longitude, speed_kph, \
           fuel_percent, battery_percent, odometer_km, engine_temp_c) \
         SELECT $1, * FROM unnest($2::timestamptz[], $3::float8[], $4::float8[], $5::float8[], \
           $6::float8[], $7::float8[], $8::float8[], $9::float8[]) \
         ON CONFLICT (car_id, recorded_at) DO NOTHING",
    )
    .bind(car)
    .bind(times)
    .bind(column(|r| Some(r.position.latitude)))
    .bind(column(|r| Some(r.position.longitude)))
    .bind(column(|r| r.speed_kph))
    .bind(column(|r| r.fuel_percent))
    .bind(column(|r| r.battery_percent))
    .bind(column(|r| Some(r.odometer_km)))
    .bind(column(|r| r.engine_temp_c))
    .execute(conn)
    .await?;
    Ok(())
}
