//! Fleet commands that span a car and its telemetry stream.
//!
//! Completing a car's maintenance also completes the service on its telemetry stream, so the
//! "maintenance due" interval restarts from there; both events go in one append.

use chrono::{DateTime, Utc};
use domain::car::{Car, CarCommand};
use domain::telemetry::{Telemetry, TelemetryCommand};
use eventstore::{EventStoreError, RecordedEvent};
use uuid::Uuid;

use crate::context::CommandContext;
use crate::executor::{ExecuteError, Executor, RetryPolicy};

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("car not found")]
    CarNotFound,
    #[error(transparent)]
    Car(#[from] ExecuteError<domain::car::CarError>),
    #[error(transparent)]
    Telemetry(#[from] ExecuteError<domain::telemetry::TelemetryError>),
    #[error("gave up after {0} conflicting attempts")]
    Contended(u32),
    #[error(transparent)]
    Store(#[from] EventStoreError),
}

#[derive(Clone)]
pub struct Fleet {
    cars: Executor<Car>,
    telemetry: Executor<Telemetry>,
}

impl Fleet {
    pub fn new(cars: Executor<Car>, telemetry: Executor<Telemetry>) -> Self {
        Self { cars, telemetry }
    }

    /// End the car's current (or next) maintenance and restart its service interval.
    pub async fn complete_maintenance(
        &self,
        ctx: &CommandContext,
        car_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Vec<RecordedEvent>, FleetError> {
        let id = car_id.to_string();
        let policy = RetryPolicy::default();
        let mut attempt = 1;
        loop {
            let car = self.cars.load(&id).await?;
            if car.state.id.is_none() {
                return Err(FleetError::CarNotFound);
            }
            let (_, car_append) = self
                .cars
                .decide(&id, &car, CarCommand::CompleteMaintenance { now })
                .await?;
            let telemetry = self.telemetry.load(&id).await?;
            let (_, telemetry_append) = self
                .telemetry
                .decide(
                    &id,
                    &telemetry,
                    TelemetryCommand::CompleteService {
                        car_id,
                        odometer_km: car.state.odometer_km,
                    },
                )
                .await?;
            let appends: Vec<_> = [car_append, telemetry_append]
                .into_iter()
                .flatten()
                .collect();
            match self.cars.store().append(&appends, &ctx.metadata()).await {
                Ok(events) => {
                    self.cars.forget(&id).await;
                    self.telemetry.forget(&id).await;
                    return Ok(events);
                }
                Err(EventStoreError::OptimisticConcurrency { .. })
                    if attempt < policy.max_attempts =>
                {
                    tokio::time::sleep(policy.delay(attempt)).await;
                    attempt += 1;
                }
                Err(EventStoreError::OptimisticConcurrency { .. }) => {
                    return Err(FleetError::Contended(attempt));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}
