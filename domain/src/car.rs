//! The Car aggregate: a vehicle of the fleet, its details, daily rate, branch and lifecycle.
//!
//! This is the part of Car the event log issue needs (register, change rate, relocate, retire);
//! reservations and maintenance windows join it with the booking flow.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::money::Money;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CarClass {
    Economy,
    Compact,
    Sedan,
    Suv,
    Truck,
    Van,
    Luxury,
    Electric,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Transmission {
    Automatic,
    Manual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FuelType {
    Petrol,
    Diesel,
    Hybrid,
    Electric,
}

/// What a car is. Checked on registration so an invalid car cannot exist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarDetails {
    pub make: String,
    pub model: String,
    pub year: i32,
    pub class: CarClass,
    pub seats: u8,
    pub transmission: Transmission,
    pub fuel: FuelType,
    pub features: Vec<String>,
}

impl CarDetails {
    fn validate(&self) -> Result<(), CarError> {
        let text = |field: &'static str, value: &str| {
            if value.trim().is_empty() || value.len() > 64 {
                Err(CarError::InvalidDetails {
                    field,
                    reason: "must be 1 to 64 characters",
                })
            } else {
                Ok(())
            }
        };
        text("make", &self.make)?;
        text("model", &self.model)?;
        if !(1950..=2100).contains(&self.year) {
            return Err(CarError::InvalidDetails {
                field: "year",
                reason: "must be between 1950 and 2100",
            });
        }
        if !(1..=60).contains(&self.seats) {
            return Err(CarError::InvalidDetails {
                field: "seats",
                reason: "must be between 1 and 60",
            });
        }
        if self.features.len() > 50 {
            return Err(CarError::InvalidDetails {
                field: "features",
                reason: "at most 50",
            });
        }
        for feature in &self.features {
            text("features", feature)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CarCommand {
    Register {
        id: Uuid,
        details: CarDetails,
        daily_rate: Money,
        branch: String,
    },
    ChangeDailyRate {
        daily_rate: Money,
    },
    Relocate {
        branch: String,
    },
    Retire {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CarEvent {
    CarRegistered {
        id: Uuid,
        details: CarDetails,
        daily_rate: Money,
        branch: String,
    },
    DailyRateChanged {
        from: Money,
        to: Money,
    },
    CarRelocated {
        from: String,
        to: String,
    },
    CarRetired {
        reason: String,
    },
}

impl DomainEvent for CarEvent {
    fn event_type(&self) -> String {
        match self {
            Self::CarRegistered { .. } => "CarRegistered",
            Self::DailyRateChanged { .. } => "DailyRateChanged",
            Self::CarRelocated { .. } => "CarRelocated",
            Self::CarRetired { .. } => "CarRetired",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        crate::V1.to_owned()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CarError {
    #[error("car is already registered")]
    AlreadyRegistered,
    #[error("car is not registered")]
    NotRegistered,
    #[error("car is retired")]
    Retired,
    #[error("invalid {field}: {reason}")]
    InvalidDetails {
        field: &'static str,
        reason: &'static str,
    },
    #[error("daily rate must be positive")]
    NonPositiveRate,
    #[error("the daily rate is in {actual}, the car is priced in {expected}")]
    CurrencyChange {
        expected: crate::Currency,
        actual: crate::Currency,
    },
    #[error("branch code must be 1 to 16 characters")]
    InvalidBranch,
    #[error("nothing to change")]
    Unchanged,
}

/// A car's state, rebuilt from its events.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Car {
    pub id: Option<Uuid>,
    pub details: Option<CarDetails>,
    pub daily_rate: Option<Money>,
    pub branch: Option<String>,
    pub retired: bool,
}

fn check_branch(code: &str) -> Result<(), CarError> {
    if code.is_empty() || code.len() > 16 || code.trim() != code {
        return Err(CarError::InvalidBranch);
    }
    Ok(())
}

impl Car {
    fn registered_rate(&self) -> Result<Money, CarError> {
        if self.retired {
            return Err(CarError::Retired);
        }
        self.daily_rate.ok_or(CarError::NotRegistered)
    }
}

impl Aggregate for Car {
    const TYPE: &'static str = "car";
    type Command = CarCommand;
    type Event = CarEvent;
    type Error = CarError;
    type Services = ();

    async fn handle(
        &mut self,
        command: CarCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), CarError> {
        let event = match command {
            CarCommand::Register {
                id,
                details,
                daily_rate,
                branch,
            } => {
                if self.id.is_some() {
                    return Err(CarError::AlreadyRegistered);
                }
                details.validate()?;
                check_branch(&branch)?;
                if daily_rate.minor <= 0 {
                    return Err(CarError::NonPositiveRate);
                }
                CarEvent::CarRegistered {
                    id,
                    details,
                    daily_rate,
                    branch,
                }
            }
            CarCommand::ChangeDailyRate { daily_rate } => {
                let from = self.registered_rate()?;
                if daily_rate.minor <= 0 {
                    return Err(CarError::NonPositiveRate);
                }
                if daily_rate.currency != from.currency {
                    return Err(CarError::CurrencyChange {
                        expected: from.currency,
                        actual: daily_rate.currency,
                    });
                }
                if daily_rate == from {
                    return Err(CarError::Unchanged);
                }
                CarEvent::DailyRateChanged {
                    from,
                    to: daily_rate,
                }
            }
            CarCommand::Relocate { branch } => {
                self.registered_rate()?;
                check_branch(&branch)?;
                let from = self.branch.clone().unwrap_or_default();
                if from == branch {
                    return Err(CarError::Unchanged);
                }
                CarEvent::CarRelocated { from, to: branch }
            }
            CarCommand::Retire { reason } => {
                self.registered_rate()?;
                CarEvent::CarRetired { reason }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: CarEvent) {
        match event {
            CarEvent::CarRegistered {
                id,
                details,
                daily_rate,
                branch,
            } => {
                self.id = Some(id);
                self.details = Some(details);
                self.daily_rate = Some(daily_rate);
                self.branch = Some(branch);
            }
            CarEvent::DailyRateChanged { to, .. } => self.daily_rate = Some(to),
            CarEvent::CarRelocated { to, .. } => self.branch = Some(to),
            CarEvent::CarRetired { .. } => self.retired = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::Currency;

    type CarTest = TestFramework<Car>;

    fn usd(minor: i64) -> Money {
        Money::new(minor, Currency::USD)
    }

    fn details() -> CarDetails {
        CarDetails {
            make: "Toyota".into(),
            model: "Corolla".into(),
            year: 2024,
            class: CarClass::Compact,
            seats: 5,
            transmission: Transmission::Automatic,
            fuel: FuelType::Hybrid,
            features: vec!["bluetooth".into()],
        }
    }

    fn registered() -> CarEvent {
        CarEvent::CarRegistered {
            id: Uuid::nil(),
            details: details(),
            daily_rate: usd(4_500),
            branch: "LIS".into(),
        }
    }

    #[test]
    fn registers_a_valid_car() {
        CarTest::with(())
            .given_no_previous_events()
            .when(CarCommand::Register {
                id: Uuid::nil(),
                details: details(),
                daily_rate: usd(4_500),
                branch: "LIS".into(),
            })
            .then_expect_events(vec![registered()]);
    }

    #[test]
    fn refuses_invalid_details_and_rates() {
        let bad_year = CarDetails {
            year: 1800,
            ..details()
        };
        CarTest::with(())
            .given_no_previous_events()
            .when(CarCommand::Register {
                id: Uuid::nil(),
                details: bad_year,
                daily_rate: usd(4_500),
                branch: "LIS".into(),
            })
            .then_expect_error(CarError::InvalidDetails {
                field: "year",
                reason: "must be between 1950 and 2100",
            });
        CarTest::with(())
            .given_no_previous_events()
            .when(CarCommand::Register {
                id: Uuid::nil(),
                details: details(),
                daily_rate: usd(0),
                branch: "LIS".into(),
            })
            .then_expect_error(CarError::NonPositiveRate);
        CarTest::with(())
            .given(vec![registered()])
            .when(CarCommand::Register {
                id: Uuid::nil(),
                details: details(),
                daily_rate: usd(1),
                branch: "LIS".into(),
            })
            .then_expect_error(CarError::AlreadyRegistered);
    }

    #[test]
    fn changes_the_rate_in_the_same_currency_only() {
        CarTest::with(())
            .given(vec![registered()])
            .when(CarCommand::ChangeDailyRate {
                daily_rate: usd(5_000),
            })
            .then_expect_events(vec![CarEvent::DailyRateChanged {
                from: usd(4_500),
                to: usd(5_000),
            }]);
        CarTest::with(())
            .given(vec![registered()])
            .when(CarCommand::ChangeDailyRate {
                daily_rate: Money::new(5_000, Currency::EUR),
            })
            .then_expect_error(CarError::CurrencyChange {
                expected: Currency::USD,
                actual: Currency::EUR,
            });
        CarTest::with(())
            .given(vec![registered()])
            .when(CarCommand::ChangeDailyRate {
                daily_rate: usd(4_500),
            })
            .then_expect_error(CarError::Unchanged);
        CarTest::with(())
            .given_no_previous_events()
            .when(CarCommand::ChangeDailyRate {
                daily_rate: usd(5_000),
            })
            .then_expect_error(CarError::NotRegistered);
    }

    #[test]
    fn relocates_and_retires() {
        CarTest::with(())
            .given(vec![registered()])
            .when(CarCommand::Relocate {
                branch: "OPO".into(),
            })
            .then_expect_events(vec![CarEvent::CarRelocated {
                from: "LIS".into(),
                to: "OPO".into(),
            }]);
        CarTest::with(())
            .given(vec![registered()])
            .when(CarCommand::Relocate {
                branch: "LIS".into(),
            })
            .then_expect_error(CarError::Unchanged);
        CarTest::with(())
            .given(vec![
                registered(),
                CarEvent::CarRetired {
                    reason: "old".into(),
                },
            ])
            .when(CarCommand::ChangeDailyRate {
                daily_rate: usd(100),
            })
            .then_expect_error(CarError::Retired);
    }
}
