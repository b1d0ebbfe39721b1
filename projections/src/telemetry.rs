//! The telemetry read model: every accepted reading per car, and the latest one.
//!
//! A batch inserts all its readings with one statement and moves each car's latest reading
//! with one upsert.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use domain::telemetry::{Reading, TelemetryEvent};
use eventstore::RecordedEvent;
use sqlx::{PgConnection, PgPool};
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
        events: &[&RecordedEvent],
    ) -> Result<(), ApplyError> {
        let mut all: Vec<(Uuid, Reading)> = Vec::new();
        let mut latest: BTreeMap<Uuid, Reading> = BTreeMap::new();
        for event in events {
            let TelemetryEvent::ReadingsRecorded {
                car_id, readings, ..
            } = decode(event)?
            else {
                continue;
            };
            for reading in readings {
                let newer = latest
                    .get(&car_id)
                    .is_none_or(|l| l.recorded_at < reading.recorded_at);
                if newer {
                    latest.insert(car_id, reading);
                }
                all.push((car_id, reading));
            }
        }
        if all.is_empty() {
            return Ok(());
        }
        insert(
            conn,
            "INSERT INTO rm_telemetry_readings (car_id, recorded_at, latitude, longitude, \
               speed_kph, fuel_percent, battery_percent, odometer_km, engine_temp_c) \
             SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::float8[], $4::float8[], \
               $5::float8[], $6::float8[], $7::float8[], $8::float8[], $9::float8[]) \
             ON CONFLICT (car_id, recorded_at) DO NOTHING",
            &all,
        )
        .await?;
        let latest: Vec<(Uuid, Reading)> = latest.into_iter().collect();
        insert(
            conn,
            "INSERT INTO rm_telemetry_latest AS l (car_id, recorded_at, latitude, longitude, \
               speed_kph, fuel_percent, battery_percent, odometer_km, engine_temp_c) \
             SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::float8[], $4::float8[], \
               $5::float8[], $6::float8[], $7::float8[], $8::float8[], $9::float8[]) \
             ON CONFLICT (car_id) DO UPDATE SET recorded_at = EXCLUDED.recorded_at, \
               latitude = EXCLUDED.latitude, longitude = EXCLUDED.longitude, \
               speed_kph = EXCLUDED.speed_kph, fuel_percent = EXCLUDED.fuel_percent, \
               battery_percent = EXCLUDED.battery_percent, odometer_km = EXCLUDED.odometer_km, \
               engine_temp_c = EXCLUDED.engine_temp_c \
             WHERE l.recorded_at < EXCLUDED.recorded_at",
            &latest,
        )
        .await
    }
}

/// Run `sql` with the readings as nine column arrays.
async fn insert(
    conn: &mut PgConnection,
    sql: &str,
    rows: &[(Uuid, Reading)],
) -> Result<(), ApplyError> {
    let column =
        |f: fn(&Reading) -> Option<f64>| rows.iter().map(|(_, r)| f(r)).collect::<Vec<_>>();
    sqlx::query(sql)
        .bind(rows.iter().map(|(car, _)| *car).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, r)| r.recorded_at).collect::<Vec<_>>())
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

/// A reading as the telemetry read model keeps it (`rm_telemetry_latest`,
/// `rm_telemetry_readings`).
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct TelemetryRow {
    pub car_id: Uuid,
    pub recorded_at: DateTime<Utc>,
    pub latitude: f64,
    pub longitude: f64,
    pub speed_kph: Option<f64>,
    pub fuel_percent: Option<f64>,
    pub battery_percent: Option<f64>,
    pub odometer_km: f64,
    pub engine_temp_c: Option<f64>,
}

const TELEMETRY_COLUMNS: &str = "car_id, recorded_at, latitude, longitude, speed_kph, \
    fuel_percent, battery_percent, odometer_km, engine_temp_c";

/// A car's latest reading.
pub async fn latest(pool: &PgPool, car: Uuid) -> Result<Option<TelemetryRow>, sqlx::Error> {
    let sql = format!("SELECT {TELEMETRY_COLUMNS} FROM rm_telemetry_latest WHERE car_id = $1");
    sqlx::query_as(&sql).bind(car).fetch_optional(pool).await
}

/// A car's readings recorded in `[from, to)`, oldest first, at most `limit`.
pub async fn readings(
    pool: &PgPool,
    car: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<TelemetryRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {TELEMETRY_COLUMNS} FROM rm_telemetry_readings \
         WHERE car_id = $1 AND recorded_at >= $2 AND recorded_at < $3 \
         ORDER BY recorded_at LIMIT $4"
    );
    sqlx::query_as(&sql)
        .bind(car)
        .bind(from)
        .bind(to)
        .bind(limit)
        .fetch_all(pool)
        .await
}
