//! The Telemetry aggregate: one stream per car (aggregate id = the car id) of sensor readings,
//! and the warnings derived from them (low fuel, maintenance due).
//!
//! Rules, all decided by [`Telemetry::assess`] and [`TelemetryCommand::RecordReadings`]:
//! - each reading is checked on its own; an invalid one is rejected with a [`Rejection`] that
//!   names the reading (index in the batch, time), the field and the reason. The others go on;
//! - the valid readings are taken in time order; one at or before the last recorded time
//!   (stored, or earlier in the same batch) is a duplicate and ignored: devices resend;
//! - the odometer never goes backwards, and never jumps further than the car could have driven
//!   since the last reading (400 km/h). One wild reading would otherwise poison the stream: every
//!   honest reading after it would be refused as "backwards";
//! - a reading more than `max_clock_skew` after the time the batch was received is rejected,
//!   for the same reason: a clock in 2099 would turn every later reading into a duplicate.
//!   The domain has no clock, so the caller passes `received_at`.
//!
//! Derived events, emitted with the readings in the same command:
//! - [`TelemetryEvent::FuelLow`] when the fuel level crosses below the threshold (the previous
//!   known level was at or above it, or unknown), not on every low reading;
//! - [`TelemetryEvent::MaintenanceDue`] once per reason ([`MaintenanceReason`]) until a service is
//!   completed. An overheated engine stays "due" until it has been serviced even if the
//!   temperature drops again: re-arming on a normal temperature would repeat the warning each
//!   time the temperature oscillates around the threshold, and an overheat needs an inspection.
//!
//! The batch result (the API's `TelemetryAck`): cqrs-es's `handle` returns only events, so
//! [`TelemetryEvent::ReadingsRecorded`] carries the batch's duplicate count and rejections (an
//! audit trail of what was refused) and [`TelemetryEvent::batch_summary`] reads the result off
//! the committed event. A batch with nothing accepted writes no event at all (devices resend a
//! lot; the log is not for noise); the caller then gets the result from [`Telemetry::assess`] on
//! the loaded state. That is exact for the accepted count (zero) and the reasons; a reading
//! refused as "backwards" on the state the command saw may be counted a duplicate on a newer
//! state, never accepted.
//!
//! The service interval baseline is the odometer at the last [`TelemetryEvent::ServiceCompleted`]
//! or, before any, the first reading's odometer: a car is assumed serviced when it joins the
//! fleet. Sensor values are `f64` (they are measurements, not money); every stored value is
//! finite, so events always serialize to JSON.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The fastest a car is believed to go; bounds speed readings and odometer jumps.
pub const MAX_SPEED_KPH: f64 = 400.0;
/// Odometer readings above this are a sensor fault, not a car.
pub const MAX_ODOMETER_KM: f64 = 10_000_000.0;
/// Rounding slack allowed on top of the fastest possible drive between two readings.
const ODOMETER_JUMP_SLACK_KM: f64 = 1.0;

/// Thresholds and limits; the aggregate's cqrs-es services.
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryPolicy {
    /// Distance since the last service after which maintenance is due.
    pub service_interval_km: f64,
    /// Engine temperature above which maintenance is due.
    pub engine_temp_limit_c: f64,
    /// Fuel level below which the fuel is low.
    pub low_fuel_percent: f64,
    /// How far after `received_at` a reading's time may be (device clocks drift).
    pub max_clock_skew: TimeDelta,
    /// Most readings in one command; a larger batch is refused whole.
    pub max_batch: usize,
}

impl Default for TelemetryPolicy {
    fn default() -> Self {
        Self {
            service_interval_km: 15_000.0,
            engine_temp_limit_c: 120.0,
            low_fuel_percent: 15.0,
            max_clock_skew: TimeDelta::minutes(5),
            max_batch: 1_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GeoPoint {
    pub latitude: f64,
    pub longitude: f64,
}

/// One sample from a car's telematics unit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub recorded_at: DateTime<Utc>,
    pub position: GeoPoint,
    pub speed_kph: Option<f64>,
    pub fuel_percent: Option<f64>,
    pub battery_percent: Option<f64>,
    pub odometer_km: f64,
    pub engine_temp_c: Option<f64>,
}

/// The field of a reading a rejection is about. Displayed with the API's input names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadingField {
    RecordedAt,
    Latitude,
    Longitude,
    SpeedKph,
    FuelPercent,
    BatteryPercent,
    OdometerKm,
    EngineTempC,
}

impl fmt::Display for ReadingField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::RecordedAt => "recordedAt",
            Self::Latitude => "position.latitude",
            Self::Longitude => "position.longitude",
            Self::SpeedKph => "speedKph",
            Self::FuelPercent => "fuelPercent",
            Self::BatteryPercent => "batteryPercent",
            Self::OdometerKm => "odometerKm",
            Self::EngineTempC => "engineTempC",
        })
    }
}

/// Why a reading was refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RejectReason {
    /// NaN or infinite (the value is not kept: JSON cannot hold it).
    NotFinite,
    OutOfRange {
        value: f64,
        min: f64,
        max: f64,
    },
    /// Later than the batch's receipt time plus the allowed clock skew.
    InFuture {
        received_at: DateTime<Utc>,
    },
    OdometerBackwards {
        odometer_km: f64,
        last_km: f64,
    },
    /// Further than the car could have driven since the last reading.
    OdometerJump {
        odometer_km: f64,
        last_km: f64,
        max_km: f64,
    },
}

/// One refused reading: which (index in the batch and time), which field, why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    pub index: u32,
    pub recorded_at: DateTime<Utc>,
    pub field: ReadingField,
    pub reason: RejectReason,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self
            .recorded_at
            .to_rfc3339_opts(SecondsFormat::AutoSi, true);
        write!(f, "readings[{}] at {at}: {} ", self.index, self.field)?;
        match &self.reason {
            RejectReason::NotFinite => f.write_str("is not a finite number"),
            RejectReason::OutOfRange { value, min, max } => {
                write!(f, "{value} is outside {min}..={max}")
            }
            RejectReason::InFuture { received_at } => write!(
                f,
                "is in the future (received at {})",
                received_at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
            ),
            RejectReason::OdometerBackwards {
                odometer_km,
                last_km,
            } => write!(f, "{odometer_km} is below the last recorded {last_km}"),
            RejectReason::OdometerJump {
                odometer_km,
                last_km,
                max_km,
            } => write!(
                f,
                "{odometer_km} is further from the last recorded {last_km} than the car can \
                 have driven (at most {max_km})"
            ),
        }
    }
}

/// What a batch of readings amounts to on a given state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Assessment {
    /// The readings to record, in time order.
    pub accepted: Vec<Reading>,
    /// Readings at or before the last recorded time.
    pub duplicates: u32,
    /// Refused readings, in batch order.
    pub rejected: Vec<Rejection>,
}

impl Assessment {
    pub fn summary(&self) -> BatchSummary {
        BatchSummary {
            accepted: count(self.accepted.len()),
            duplicates: self.duplicates,
            rejected: self.rejected.clone(),
        }
    }
}

/// The result of one batch, as the API's `TelemetryAck` reports it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchSummary {
    pub accepted: u32,
    pub duplicates: u32,
    pub rejected: Vec<Rejection>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MaintenanceReason {
    /// The odometer passed the service interval since the last service.
    ServiceInterval,
    /// The engine ran hotter than the limit.
    EngineTemperature,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TelemetryCommand {
    /// Record a batch of readings, received by the caller at `received_at`.
    RecordReadings {
        car_id: Uuid,
        readings: Vec<Reading>,
        received_at: DateTime<Utc>,
    },
    /// The car was serviced (the Car's "complete maintenance"); resets the service interval and
    /// re-arms the maintenance warnings. `odometer_km` defaults to the last recorded one.
    CompleteService {
        car_id: Uuid,
        odometer_km: Option<f64>,
    },
}

#[derive(
    Clone, Debug, PartialEq, Serialize, Deserialize, strum::IntoStaticStr, strum::VariantNames,
)]
pub enum TelemetryEvent {
    /// Accepted readings in time order, with what the same batch refused.
    ReadingsRecorded {
        car_id: Uuid,
        readings: Vec<Reading>,
        duplicates: u32,
        rejected: Vec<Rejection>,
    },
    /// The fuel level crossed below the low-fuel threshold.
    FuelLow {
        at: DateTime<Utc>,
        fuel_percent: f64,
    },
    /// Maintenance became due for `reason` (once per reason until a service is completed).
    MaintenanceDue {
        at: DateTime<Utc>,
        reason: MaintenanceReason,
        odometer_km: f64,
        engine_temp_c: Option<f64>,
    },
    /// The car was serviced at `odometer_km` (None: no odometer known yet; the next reading's
    /// odometer becomes the baseline).
    ServiceCompleted {
        car_id: Uuid,
        odometer_km: Option<f64>,
    },
}

impl TelemetryEvent {
    /// The batch result a `ReadingsRecorded` event stands for.
    pub fn batch_summary(&self) -> Option<BatchSummary> {
        match self {
            Self::ReadingsRecorded {
                readings,
                duplicates,
                rejected,
                ..
            } => Some(BatchSummary {
                accepted: count(readings.len()),
                duplicates: *duplicates,
                rejected: rejected.clone(),
            }),
            _ => None,
        }
    }
}

impl DomainEvent for TelemetryEvent {
    fn event_type(&self) -> String {
        // The variant's name: one per variant, listed in `EVENT_TYPES`.
        <&'static str>::from(self).to_owned()
    }

    fn event_version(&self) -> String {
        crate::V1.to_owned()
    }
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TelemetryError {
    /// The command names another car than the stream's (a routing mistake by the caller).
    #[error("this telemetry stream belongs to car {stream}, not {command}")]
    WrongCar { stream: Uuid, command: Uuid },
    #[error("at most {max} readings per batch, got {actual}")]
    BatchTooLarge { max: usize, actual: usize },
    #[error("service odometer must be a finite number between 0 and {MAX_ODOMETER_KM} km")]
    InvalidServiceOdometer,
}

/// A car's telemetry state, rebuilt from its events.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    pub car_id: Option<Uuid>,
    /// The latest recorded reading (its time and odometer bound the next ones).
    pub last: Option<Reading>,
    /// The last known fuel level (readings may omit it).
    pub fuel_percent: Option<f64>,
    /// Odometer at the last service; None until a service or the first reading.
    pub service_baseline_km: Option<f64>,
    /// Maintenance reasons raised and not yet resolved by a service.
    pub maintenance_due: BTreeSet<MaintenanceReason>,
    /// Readings recorded in all.
    pub readings_recorded: u64,
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn in_range(
    field: ReadingField,
    value: f64,
    min: f64,
    max: f64,
) -> Result<(), (ReadingField, RejectReason)> {
    if !value.is_finite() {
        Err((field, RejectReason::NotFinite))
    } else if value < min || value > max {
        Err((field, RejectReason::OutOfRange { value, min, max }))
    } else {
        Ok(())
    }
}

/// The checks a reading passes on its own, whatever the stream holds.
fn validate(
    reading: &Reading,
    received_at: DateTime<Utc>,
    policy: &TelemetryPolicy,
) -> Result<(), (ReadingField, RejectReason)> {
    use ReadingField as F;
    if reading.recorded_at > received_at + policy.max_clock_skew {
        return Err((F::RecordedAt, RejectReason::InFuture { received_at }));
    }
    in_range(F::Latitude, reading.position.latitude, -90.0, 90.0)?;
    in_range(F::Longitude, reading.position.longitude, -180.0, 180.0)?;
    let optional = [
        (F::SpeedKph, reading.speed_kph, 0.0, MAX_SPEED_KPH),
        (F::FuelPercent, reading.fuel_percent, 0.0, 100.0),
        (F::BatteryPercent, reading.battery_percent, 0.0, 100.0),
    ];
    for (field, value, min, max) in optional {
        if let Some(value) = value {
            in_range(field, value, min, max)?;
        }
    }
    in_range(F::OdometerKm, reading.odometer_km, 0.0, MAX_ODOMETER_KM)?;
    if let Some(temp) = reading.engine_temp_c {
        in_range(F::EngineTempC, temp, -50.0, 200.0)?;
    }
    Ok(())
}

/// Checks of a valid reading against the one recorded before it.
fn follows(reading: &Reading, last: &Reading) -> Result<(), RejectReason> {
    let (odometer_km, last_km) = (reading.odometer_km, last.odometer_km);
    if odometer_km < last_km {
        return Err(RejectReason::OdometerBackwards {
            odometer_km,
            last_km,
        });
    }
    // Milliseconds to hours; precision far beyond what the slack needs.
    let hours = (reading.recorded_at - last.recorded_at).num_milliseconds() as f64 / 3_600_000.0;
    let max_km = last_km + hours * MAX_SPEED_KPH + ODOMETER_JUMP_SLACK_KM;
    if odometer_km > max_km {
        return Err(RejectReason::OdometerJump {
            odometer_km,
            last_km,
            max_km,
        });
    }
    Ok(())
}

impl Telemetry {
    /// Sort a batch into accepted readings (time order), duplicates and rejections, on this
    /// state. Pure: the command uses it, and a caller can use it to explain a batch that
    /// recorded nothing.
    pub fn assess(
        &self,
        readings: &[Reading],
        received_at: DateTime<Utc>,
        policy: &TelemetryPolicy,
    ) -> Assessment {
        let mut rejected = Vec::new();
        let mut valid = Vec::with_capacity(readings.len());
        for (index, reading) in readings.iter().enumerate() {
            let index = count(index);
            match validate(reading, received_at, policy) {
                Ok(()) => valid.push((index, *reading)),
                Err((field, reason)) => rejected.push(Rejection {
                    index,
                    recorded_at: reading.recorded_at,
                    field,
                    reason,
                }),
            }
        }
        valid.sort_by_key(|(index, reading)| (reading.recorded_at, *index));
        let mut last = self.last;
        let mut assessment = Assessment::default();
        for (index, reading) in valid {
            if let Some(previous) = &last {
                if reading.recorded_at <= previous.recorded_at {
                    assessment.duplicates += 1;
                    continue;
                }
                if let Err(reason) = follows(&reading, previous) {
                    rejected.push(Rejection {
                        index,
                        recorded_at: reading.recorded_at,
                        field: ReadingField::OdometerKm,
                        reason,
                    });
                    continue;
                }
            }
            last = Some(reading);
            assessment.accepted.push(reading);
        }
        rejected.sort_by_key(|r| r.index);
        assessment.rejected = rejected;
        assessment
    }

    /// The warnings that recording `accepted` (time order) on this state raises.
    fn derive(&self, accepted: &[Reading], policy: &TelemetryPolicy) -> Vec<TelemetryEvent> {
        let mut events = Vec::new();
        let mut fuel = self.fuel_percent;
        let mut baseline = self.service_baseline_km;
        let mut due = self.maintenance_due.clone();
        for reading in accepted {
            let baseline_km = *baseline.get_or_insert(reading.odometer_km);
            if let Some(level) = reading.fuel_percent {
                let was_ok = fuel.is_none_or(|previous| previous >= policy.low_fuel_percent);
                if level < policy.low_fuel_percent && was_ok {
                    events.push(TelemetryEvent::FuelLow {
                        at: reading.recorded_at,
                        fuel_percent: level,
                    });
                }
                fuel = Some(level);
            }
            let mut raise = |reason, raised: bool| {
                if raised && due.insert(reason) {
                    events.push(TelemetryEvent::MaintenanceDue {
                        at: reading.recorded_at,
                        reason,
                        odometer_km: reading.odometer_km,
                        engine_temp_c: reading.engine_temp_c,
                    });
                }
            };
            raise(
                MaintenanceReason::ServiceInterval,
                reading.odometer_km - baseline_km >= policy.service_interval_km,
            );
            raise(
                MaintenanceReason::EngineTemperature,
                reading
                    .engine_temp_c
                    .is_some_and(|t| t > policy.engine_temp_limit_c),
            );
        }
        events
    }

    fn check_car(&self, car_id: Uuid) -> Result<(), TelemetryError> {
        match self.car_id {
            Some(stream) if stream != car_id => Err(TelemetryError::WrongCar {
                stream,
                command: car_id,
            }),
            _ => Ok(()),
        }
    }
}

impl Aggregate for Telemetry {
    const TYPE: &'static str = "telemetry";
    type Command = TelemetryCommand;
    type Event = TelemetryEvent;
    type Error = TelemetryError;
    type Services = TelemetryPolicy;

    async fn handle(
        &mut self,
        command: TelemetryCommand,
        policy: &TelemetryPolicy,
        sink: &EventSink<Self>,
    ) -> Result<(), TelemetryError> {
        let events = match command {
            TelemetryCommand::RecordReadings {
                car_id,
                readings,
                received_at,
            } => {
                self.check_car(car_id)?;
                if readings.len() > policy.max_batch {
                    return Err(TelemetryError::BatchTooLarge {
                        max: policy.max_batch,
                        actual: readings.len(),
                    });
                }
                let assessment = self.assess(&readings, received_at, policy);
                if assessment.accepted.is_empty() {
                    return Ok(());
                }
                let derived = self.derive(&assessment.accepted, policy);
                let mut events = vec![TelemetryEvent::ReadingsRecorded {
                    car_id,
                    readings: assessment.accepted,
                    duplicates: assessment.duplicates,
                    rejected: assessment.rejected,
                }];
                events.extend(derived);
                events
            }
            TelemetryCommand::CompleteService {
                car_id,
                odometer_km,
            } => {
                self.check_car(car_id)?;
                if odometer_km.is_some_and(|km| !(0.0..=MAX_ODOMETER_KM).contains(&km)) {
                    // NaN fails `contains` too.
                    return Err(TelemetryError::InvalidServiceOdometer);
                }
                let odometer_km = odometer_km.or(self.last.map(|r| r.odometer_km));
                vec![TelemetryEvent::ServiceCompleted {
                    car_id,
                    odometer_km,
                }]
            }
        };
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: TelemetryEvent) {
        match event {
            TelemetryEvent::ReadingsRecorded {
                car_id, readings, ..
            } => {
                self.car_id = Some(car_id);
                for reading in readings {
                    self.service_baseline_km.get_or_insert(reading.odometer_km);
                    if let Some(level) = reading.fuel_percent {
                        self.fuel_percent = Some(level);
                    }
                    self.last = Some(reading);
                    self.readings_recorded += 1;
                }
            }
            TelemetryEvent::FuelLow { .. } => {}
            TelemetryEvent::MaintenanceDue { reason, .. } => {
                self.maintenance_due.insert(reason);
            }
            TelemetryEvent::ServiceCompleted {
                car_id,
                odometer_km,
            } => {
                self.car_id = Some(car_id);
                self.service_baseline_km = odometer_km;
                self.maintenance_due.clear();
            }
        }
    }
}

/// Every event type the telemetry of a car emits, for the event catalog and the relay's topics.
pub const EVENT_TYPES: &[&str] = <TelemetryEvent as strum::VariantNames>::VARIANTS;

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    type TelemetryTest = TestFramework<Telemetry>;

    fn car() -> Uuid {
        Uuid::from_u128(7)
    }

    /// 2026-01-01T10:00:00Z plus `minutes`.
    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_261_600, 0).unwrap_or_default() + TimeDelta::minutes(minutes)
    }

    /// When the batches of `record` are received: after every reading of these tests.
    fn now() -> DateTime<Utc> {
        at(10_000)
    }

    /// A plain valid reading at minute `minutes` with odometer `km`.
    fn reading(minutes: i64, km: f64) -> Reading {
        Reading {
            recorded_at: at(minutes),
            position: GeoPoint {
                latitude: 38.72,
                longitude: -9.14,
            },
            speed_kph: Some(50.0),
            fuel_percent: None,
            battery_percent: None,
            odometer_km: km,
            engine_temp_c: Some(90.0),
        }
    }

    fn with_fuel(mut r: Reading, fuel: f64) -> Reading {
        r.fuel_percent = Some(fuel);
        r
    }

    fn with_temp(mut r: Reading, temp: f64) -> Reading {
        r.engine_temp_c = Some(temp);
        r
    }

    fn record(readings: Vec<Reading>) -> TelemetryCommand {
        TelemetryCommand::RecordReadings {
            car_id: car(),
            readings,
            received_at: now(),
        }
    }

    fn recorded(readings: Vec<Reading>) -> TelemetryEvent {
        TelemetryEvent::ReadingsRecorded {
            car_id: car(),
            readings,
            duplicates: 0,
            rejected: vec![],
        }
    }

    fn test() -> TelemetryTest {
        TelemetryTest::with(TelemetryPolicy::default())
    }

    fn state(events: Vec<TelemetryEvent>) -> Telemetry {
        let mut state = Telemetry::default();
        for e in events {
            state.apply(e);
        }
        state
    }

    #[test]
    fn records_valid_readings_in_time_order() {
        test()
            .given_no_previous_events()
            .when(record(vec![reading(2, 101.0), reading(1, 100.0)]))
            .then_expect_events(vec![recorded(vec![reading(1, 100.0), reading(2, 101.0)])]);
    }

    #[test]
    fn an_empty_batch_records_nothing() {
        test()
            .given(vec![recorded(vec![reading(1, 100.0)])])
            .when(record(vec![]))
            .then_expect_events(vec![]);
    }

    #[test]
    fn readings_at_or_before_the_last_time_are_duplicates() {
        test()
            .given(vec![recorded(vec![reading(5, 100.0)])])
            .when(record(vec![
                reading(4, 99.0),
                reading(5, 100.0),
                reading(6, 101.0),
                reading(6, 101.0),
            ]))
            .then_expect_events(vec![TelemetryEvent::ReadingsRecorded {
                car_id: car(),
                readings: vec![reading(6, 101.0)],
                duplicates: 3,
                rejected: vec![],
            }]);
        // Nothing new at all: no event, and not an error.
        test()
            .given(vec![recorded(vec![reading(5, 100.0)])])
            .when(record(vec![reading(5, 100.0), reading(3, 90.0)]))
            .then_expect_events(vec![]);
        let assessment = state(vec![recorded(vec![reading(5, 100.0)])]).assess(
            &[reading(5, 100.0), reading(3, 90.0)],
            now(),
            &TelemetryPolicy::default(),
        );
        assert_eq!(
            assessment.summary(),
            BatchSummary {
                accepted: 0,
                duplicates: 2,
                rejected: vec![]
            }
        );
    }

    #[test]
    fn out_of_range_readings_are_rejected_one_by_one_naming_the_field() {
        let mut bad_lat = reading(1, 100.0);
        bad_lat.position.latitude = 91.0;
        let mut bad_lon = reading(2, 100.0);
        bad_lon.position.longitude = -180.5;
        let mut fast = reading(3, 100.0);
        fast.speed_kph = Some(401.0);
        let mut negative_speed = reading(4, 100.0);
        negative_speed.speed_kph = Some(-1.0);
        let full = with_fuel(reading(5, 100.0), 100.5);
        let mut battery = reading(6, 100.0);
        battery.battery_percent = Some(-0.1);
        let negative_km = reading(7, -1.0);
        let hot = with_temp(reading(8, 100.0), 201.0);
        let cold = with_temp(reading(9, 100.0), -51.0);
        let nan = with_fuel(reading(10, 100.0), f64::NAN);
        let inf = reading(11, f64::INFINITY);
        let future = reading(10_006, 100.0); // 5 minutes of skew allowed
        let ok = reading(12, 100.0);
        let batch = vec![
            bad_lat,
            bad_lon,
            fast,
            negative_speed,
            full,
            battery,
            negative_km,
            hot,
            cold,
            nan,
            inf,
            future,
            ok,
        ];
        let assessment = Telemetry::default().assess(&batch, now(), &TelemetryPolicy::default());
        assert_eq!(assessment.accepted, vec![ok]);
        let fields: Vec<(u32, ReadingField)> = assessment
            .rejected
            .iter()
            .map(|r| (r.index, r.field))
            .collect();
        use ReadingField as F;
        assert_eq!(
            fields,
            vec![
                (0, F::Latitude),
                (1, F::Longitude),
                (2, F::SpeedKph),
                (3, F::SpeedKph),
                (4, F::FuelPercent),
                (5, F::BatteryPercent),
                (6, F::OdometerKm),
                (7, F::EngineTempC),
                (8, F::EngineTempC),
                (9, F::FuelPercent),
                (10, F::OdometerKm),
                (11, F::RecordedAt),
            ]
        );
        assert_eq!(assessment.rejected[9].reason, RejectReason::NotFinite);
        assert_eq!(
            assessment.rejected[4].reason,
            RejectReason::OutOfRange {
                value: 100.5,
                min: 0.0,
                max: 100.0
            }
        );
        assert_eq!(
            assessment.rejected[4].to_string(),
            "readings[4] at 2026-01-01T10:05:00Z: fuelPercent 100.5 is outside 0..=100"
        );
        assert_eq!(
            assessment.rejected[9].to_string(),
            "readings[9] at 2026-01-01T10:10:00Z: fuelPercent is not a finite number"
        );

        // The command records the valid one and keeps the refusals as an audit trail.
        let rejected = assessment.rejected.clone();
        test()
            .given_no_previous_events()
            .when(record(batch))
            .then_expect_events(vec![TelemetryEvent::ReadingsRecorded {
                car_id: car(),
                readings: vec![ok],
                duplicates: 0,
                rejected,
            }]);
    }

    #[test]
    fn a_batch_with_only_rejections_records_nothing_and_is_not_an_error() {
        test()
            .given_no_previous_events()
            .when(record(vec![with_fuel(reading(1, 1.0), 150.0)]))
            .then_expect_events(vec![]);
    }

    #[test]
    fn the_odometer_never_goes_backwards_nor_jumps() {
        test()
            .given(vec![recorded(vec![reading(0, 1_000.0)])])
            .when(record(vec![
                reading(1, 999.9),
                reading(2, 1_000.0),
                // 60 minutes at 400 km/h at most: 400 km + 1 km of slack.
                reading(62, 1_402.0),
                reading(63, 1_010.0),
            ]))
            .then_expect_events(vec![TelemetryEvent::ReadingsRecorded {
                car_id: car(),
                readings: vec![reading(2, 1_000.0), reading(63, 1_010.0)],
                duplicates: 0,
                rejected: vec![
                    Rejection {
                        index: 0,
                        recorded_at: at(1),
                        field: ReadingField::OdometerKm,
                        reason: RejectReason::OdometerBackwards {
                            odometer_km: 999.9,
                            last_km: 1_000.0,
                        },
                    },
                    Rejection {
                        index: 2,
                        recorded_at: at(62),
                        field: ReadingField::OdometerKm,
                        reason: RejectReason::OdometerJump {
                            odometer_km: 1_402.0,
                            last_km: 1_000.0,
                            max_km: 1_401.0,
                        },
                    },
                ],
            }]);
    }

    #[test]
    fn the_received_time_bounds_reading_times() {
        let command = |minutes| TelemetryCommand::RecordReadings {
            car_id: car(),
            readings: vec![reading(minutes, 10.0)],
            received_at: at(0),
        };
        test()
            .given_no_previous_events()
            .when(command(5))
            .then_expect_events(vec![recorded(vec![reading(5, 10.0)])]);
        test()
            .given_no_previous_events()
            .when(command(6))
            .then_expect_events(vec![]);
    }

    #[test]
    fn low_fuel_is_reported_when_crossing_below_not_on_every_low_reading() {
        test()
            .given(vec![recorded(vec![with_fuel(reading(0, 100.0), 40.0)])])
            .when(record(vec![
                with_fuel(reading(1, 101.0), 15.0),
                with_fuel(reading(2, 102.0), 14.9),
                with_fuel(reading(3, 103.0), 10.0),
                reading(4, 104.0), // no fuel level: does not re-arm
                with_fuel(reading(5, 105.0), 9.0),
            ]))
            .then_expect_events(vec![
                recorded(vec![
                    with_fuel(reading(1, 101.0), 15.0),
                    with_fuel(reading(2, 102.0), 14.9),
                    with_fuel(reading(3, 103.0), 10.0),
                    reading(4, 104.0),
                    with_fuel(reading(5, 105.0), 9.0),
                ]),
                TelemetryEvent::FuelLow {
                    at: at(2),
                    fuel_percent: 14.9,
                },
            ]);
        // Already low before this batch: no new warning.
        test()
            .given(vec![
                recorded(vec![with_fuel(reading(0, 100.0), 12.0)]),
                TelemetryEvent::FuelLow {
                    at: at(0),
                    fuel_percent: 12.0,
                },
            ])
            .when(record(vec![with_fuel(reading(1, 101.0), 11.0)]))
            .then_expect_events(vec![recorded(vec![with_fuel(reading(1, 101.0), 11.0)])]);
        // Refuelled, then low again: a second crossing, a second warning.
        test()
            .given(vec![recorded(vec![with_fuel(reading(0, 100.0), 12.0)])])
            .when(record(vec![
                with_fuel(reading(1, 100.0), 80.0),
                with_fuel(reading(2, 101.0), 5.0),
            ]))
            .then_expect_events(vec![
                recorded(vec![
                    with_fuel(reading(1, 100.0), 80.0),
                    with_fuel(reading(2, 101.0), 5.0),
                ]),
                TelemetryEvent::FuelLow {
                    at: at(2),
                    fuel_percent: 5.0,
                },
            ]);
        // The first level ever known, when low, is a crossing (previous level unknown).
        test()
            .given_no_previous_events()
            .when(record(vec![with_fuel(reading(0, 100.0), 3.0)]))
            .then_expect_events(vec![
                recorded(vec![with_fuel(reading(0, 100.0), 3.0)]),
                TelemetryEvent::FuelLow {
                    at: at(0),
                    fuel_percent: 3.0,
                },
            ]);
    }

    #[test]
    fn maintenance_is_due_once_when_the_service_interval_is_reached() {
        // Baseline: the first reading (20 000 km); due at 35 000 km.
        let first = reading(0, 20_000.0);
        test()
            .given(vec![recorded(vec![first])])
            .when(record(vec![
                reading(3_000, 34_999.0),
                reading(3_001, 35_000.0),
                reading(3_002, 35_001.0),
            ]))
            .then_expect_events(vec![
                recorded(vec![
                    reading(3_000, 34_999.0),
                    reading(3_001, 35_000.0),
                    reading(3_002, 35_001.0),
                ]),
                TelemetryEvent::MaintenanceDue {
                    at: at(3_001),
                    reason: MaintenanceReason::ServiceInterval,
                    odometer_km: 35_000.0,
                    engine_temp_c: Some(90.0),
                },
            ]);
        // Already due: no repeat.
        test()
            .given(vec![
                recorded(vec![first, reading(3_001, 35_000.0)]),
                TelemetryEvent::MaintenanceDue {
                    at: at(3_001),
                    reason: MaintenanceReason::ServiceInterval,
                    odometer_km: 35_000.0,
                    engine_temp_c: Some(90.0),
                },
            ])
            .when(record(vec![reading(3_100, 35_100.0)]))
            .then_expect_events(vec![recorded(vec![reading(3_100, 35_100.0)])]);
    }

    #[test]
    fn maintenance_is_due_once_when_the_engine_overheats() {
        test()
            .given(vec![recorded(vec![reading(0, 100.0)])])
            .when(record(vec![
                with_temp(reading(1, 101.0), 120.0),
                with_temp(reading(2, 102.0), 121.0),
                with_temp(reading(3, 103.0), 125.0),
                with_temp(reading(4, 104.0), 90.0),
                with_temp(reading(5, 105.0), 130.0),
            ]))
            .then_expect_events(vec![
                recorded(vec![
                    with_temp(reading(1, 101.0), 120.0),
                    with_temp(reading(2, 102.0), 121.0),
                    with_temp(reading(3, 103.0), 125.0),
                    with_temp(reading(4, 104.0), 90.0),
                    with_temp(reading(5, 105.0), 130.0),
                ]),
                TelemetryEvent::MaintenanceDue {
                    at: at(2),
                    reason: MaintenanceReason::EngineTemperature,
                    odometer_km: 102.0,
                    engine_temp_c: Some(121.0),
                },
            ]);
    }

    #[test]
    fn a_completed_service_resets_the_interval_and_rearms_the_warnings() {
        let history = vec![
            recorded(vec![
                reading(0, 0.0),
                with_temp(reading(3_000, 15_000.0), 130.0),
            ]),
            TelemetryEvent::MaintenanceDue {
                at: at(3_000),
                reason: MaintenanceReason::ServiceInterval,
                odometer_km: 15_000.0,
                engine_temp_c: Some(130.0),
            },
            TelemetryEvent::MaintenanceDue {
                at: at(3_000),
                reason: MaintenanceReason::EngineTemperature,
                odometer_km: 15_000.0,
                engine_temp_c: Some(130.0),
            },
        ];
        // Without an odometer, the last recorded one is the baseline.
        test()
            .given(history.clone())
            .when(TelemetryCommand::CompleteService {
                car_id: car(),
                odometer_km: None,
            })
            .then_expect_events(vec![TelemetryEvent::ServiceCompleted {
                car_id: car(),
                odometer_km: Some(15_000.0),
            }]);
        let serviced = {
            let mut h = history;
            h.push(TelemetryEvent::ServiceCompleted {
                car_id: car(),
                odometer_km: Some(15_010.0),
            });
            h
        };
        let after = state(serviced.clone());
        assert!(after.maintenance_due.is_empty());
        assert_eq!(after.service_baseline_km, Some(15_010.0));
        // Due again only 15 000 km after the service, and a new overheat warns again.
        test()
            .given(serviced)
            .when(record(vec![
                reading(6_000, 30_009.0),
                with_temp(reading(6_001, 30_010.0), 125.0),
            ]))
            .then_expect_events(vec![
                recorded(vec![
                    reading(6_000, 30_009.0),
                    with_temp(reading(6_001, 30_010.0), 125.0),
                ]),
                TelemetryEvent::MaintenanceDue {
                    at: at(6_001),
                    reason: MaintenanceReason::ServiceInterval,
                    odometer_km: 30_010.0,
                    engine_temp_c: Some(125.0),
                },
                TelemetryEvent::MaintenanceDue {
                    at: at(6_001),
                    reason: MaintenanceReason::EngineTemperature,
                    odometer_km: 30_010.0,
                    engine_temp_c: Some(125.0),
                },
            ]);
    }

    #[test]
    fn a_service_before_any_reading_leaves_the_baseline_to_the_first_reading() {
        test()
            .given_no_previous_events()
            .when(TelemetryCommand::CompleteService {
                car_id: car(),
                odometer_km: None,
            })
            .then_expect_events(vec![TelemetryEvent::ServiceCompleted {
                car_id: car(),
                odometer_km: None,
            }]);
        let s = state(vec![
            TelemetryEvent::ServiceCompleted {
                car_id: car(),
                odometer_km: None,
            },
            recorded(vec![reading(0, 5_000.0)]),
        ]);
        assert_eq!(s.service_baseline_km, Some(5_000.0));
        for bad in [-1.0, f64::NAN, f64::INFINITY, MAX_ODOMETER_KM + 1.0] {
            test()
                .given_no_previous_events()
                .when(TelemetryCommand::CompleteService {
                    car_id: car(),
                    odometer_km: Some(bad),
                })
                .then_expect_error(TelemetryError::InvalidServiceOdometer);
        }
    }

    #[test]
    fn commands_for_another_car_and_oversized_batches_are_refused() {
        let other = Uuid::from_u128(8);
        test()
            .given(vec![recorded(vec![reading(0, 1.0)])])
            .when(TelemetryCommand::RecordReadings {
                car_id: other,
                readings: vec![reading(1, 1.0)],
                received_at: now(),
            })
            .then_expect_error(TelemetryError::WrongCar {
                stream: car(),
                command: other,
            });
        let policy = TelemetryPolicy {
            max_batch: 2,
            ..TelemetryPolicy::default()
        };
        TelemetryTest::with(policy)
            .given_no_previous_events()
            .when(record(vec![reading(1, 1.0); 3]))
            .then_expect_error(TelemetryError::BatchTooLarge { max: 2, actual: 3 });
    }

    #[test]
    fn the_state_follows_the_events_and_the_summary_reads_off_the_event() {
        let event = TelemetryEvent::ReadingsRecorded {
            car_id: car(),
            readings: vec![with_fuel(reading(1, 10.0), 50.0), reading(2, 11.0)],
            duplicates: 2,
            rejected: vec![],
        };
        assert_eq!(
            event.batch_summary(),
            Some(BatchSummary {
                accepted: 2,
                duplicates: 2,
                rejected: vec![]
            })
        );
        let s = state(vec![event]);
        assert_eq!(s.car_id, Some(car()));
        assert_eq!(s.last, Some(reading(2, 11.0)));
        assert_eq!(
            s.fuel_percent,
            Some(50.0),
            "a reading without fuel keeps the level"
        );
        assert_eq!(s.service_baseline_km, Some(10.0));
        assert_eq!(s.readings_recorded, 2);
    }
}
