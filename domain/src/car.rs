//! The Car aggregate: a vehicle of the fleet, its details, daily rate, branch and lifecycle.
//!
//! A car holds its future reservation and maintenance windows and refuses any overlap; each
//! window keeps the car for its turnaround after it (cleaning at the branch it ends at, a
//! per-branch setting carried by the event), so nothing may start before that ends; a retired car accepts no reservation. Past windows are pruned
//! as events carrying a later instant are applied, so the state stays small.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::money::Money;
use crate::window::TimeWindow;

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

/// Changes to a car's details; `None` keeps the current value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarDetailsPatch {
    pub make: Option<String>,
    pub model: Option<String>,
    pub year: Option<i32>,
    pub class: Option<CarClass>,
    pub seats: Option<u8>,
    pub transmission: Option<Transmission>,
    pub fuel: Option<FuelType>,
    pub features: Option<Vec<String>>,
}

impl CarDetailsPatch {
    fn apply_to(self, d: &CarDetails) -> CarDetails {
        CarDetails {
            make: self.make.unwrap_or_else(|| d.make.clone()),
            model: self.model.unwrap_or_else(|| d.model.clone()),
            year: self.year.unwrap_or(d.year),
            class: self.class.unwrap_or(d.class),
            seats: self.seats.unwrap_or(d.seats),
            transmission: self.transmission.unwrap_or(d.transmission),
            fuel: self.fuel.unwrap_or(d.fuel),
            features: self.features.unwrap_or_else(|| d.features.clone()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CarCommand {
    Register {
        id: Uuid,
        details: CarDetails,
        daily_rate: Money,
        branch: String,
    },
    UpdateDetails {
        patch: CarDetailsPatch,
    },
    ChangeDailyRate {
        daily_rate: Money,
    },
    /// Moves the car to another branch. Refused while bookings not yet picked up wait for it
    /// where it is (they would be stranded).
    Relocate {
        branch: String,
        now: DateTime<Utc>,
    },
    Retire {
        reason: String,
        now: DateTime<Utc>,
    },
    /// Takes the car out over `window`. Not `urgent`, the window must be free; `urgent` (a
    /// breakdown, a recall), bookings that have not started over it are displaced (their
    /// reservations dropped, for staff to reassign); a rental in progress still refuses it.
    ScheduleMaintenance {
        maintenance_id: Uuid,
        window: TimeWindow,
        reason: String,
        turnaround_minutes: i64,
        urgent: bool,
        now: DateTime<Utc>,
    },
    /// Ends the maintenance in progress, or else the next one scheduled.
    CompleteMaintenance {
        now: DateTime<Utc>,
    },
    /// Blocks `window` for a booking, and `turnaround_minutes` after it (the turnaround of the
    /// branch the booking returns to). Neither may touch another block or the turnaround after
    /// it. Reserving the same window again for the same booking is a no-op.
    Reserve {
        booking_id: Uuid,
        window: TimeWindow,
        turnaround_minutes: i64,
        now: DateTime<Utc>,
    },
    /// Moves a booking's reservation: the old window is given up only if the new one fits.
    ChangeReservation {
        booking_id: Uuid,
        window: TimeWindow,
        turnaround_minutes: i64,
        now: DateTime<Utc>,
    },
    /// Gives a booking's window back; a no-op when the booking holds none.
    Release {
        booking_id: Uuid,
        now: DateTime<Utc>,
    },
    /// Hands the car over for a booking. Up to `early_minutes` before the booking's window
    /// that is a plain hand-over; earlier, the car must be free (turnarounds included) from
    /// `now` to the window, and the reservation then starts at `now`, so nobody else can book a
    /// car that is already out.
    HandOver {
        booking_id: Uuid,
        odometer_km: f64,
        early_minutes: i64,
        /// Where the booking picks the car up: the car must be there.
        pickup_branch: String,
        now: DateTime<Utc>,
    },
    TakeBack {
        booking_id: Uuid,
        odometer_km: f64,
        branch: String,
        now: DateTime<Utc>,
    },
}

#[derive(
    Clone, Debug, PartialEq, Serialize, Deserialize, strum::IntoStaticStr, strum::VariantNames,
)]
pub enum CarEvent {
    CarRegistered {
        id: Uuid,
        details: CarDetails,
        daily_rate: Money,
        branch: String,
        /// When the car entered service, when that is earlier than the event (a fleet's
        /// history imported, demo data); absent: from the event's time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        in_service_from: Option<DateTime<Utc>>,
    },
    CarDetailsUpdated {
        details: CarDetails,
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
        at: DateTime<Utc>,
    },
    MaintenanceScheduled {
        maintenance_id: Uuid,
        window: TimeWindow,
        reason: String,
        at: DateTime<Utc>,
        /// Bookings whose reservations this urgent maintenance dropped.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        displaced: Vec<Uuid>,
        /// Minutes the car stays out after the window (the branch's turnaround then; absent in
        /// events written before turnaround was per branch: 60).
        #[serde(default = "legacy_turnaround")]
        turnaround_minutes: i64,
    },
    MaintenanceCompleted {
        maintenance_id: Uuid,
        at: DateTime<Utc>,
    },
    CarReserved {
        booking_id: Uuid,
        window: TimeWindow,
        at: DateTime<Utc>,
        /// Minutes the car stays out after the window: the turnaround of the branch the
        /// booking returns to (absent in events written before turnaround was per branch: 60).
        #[serde(default = "legacy_turnaround")]
        turnaround_minutes: i64,
    },
    ReservationChanged {
        booking_id: Uuid,
        from: TimeWindow,
        to: TimeWindow,
        at: DateTime<Utc>,
        /// The turnaround after the new window (absent in older events: 60).
        #[serde(default = "legacy_turnaround")]
        turnaround_minutes: i64,
    },
    ReservationReleased {
        booking_id: Uuid,
        at: DateTime<Utc>,
    },
    CarPickedUp {
        booking_id: Uuid,
        odometer_km: f64,
        at: DateTime<Utc>,
    },
    CarReturned {
        booking_id: Uuid,
        odometer_km: f64,
        branch: String,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for CarEvent {
    fn event_type(&self) -> String {
        // The variant's name: one per variant, listed in `EVENT_TYPES`.
        <&'static str>::from(self).to_owned()
    }

    fn event_version(&self) -> String {
        crate::V1.to_owned()
    }
}

/// Every event type a car emits, for the event catalog and the relay's topics.
pub const EVENT_TYPES: &[&str] = <CarEvent as strum::VariantNames>::VARIANTS;

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
    #[error("the window starts in the past")]
    WindowInPast,
    #[error("the car is not free from {} to {} (taken by {taken_by})", window.start, window.end)]
    NotAvailable {
        window: TimeWindow,
        taken_by: String,
    },
    #[error("no maintenance is scheduled")]
    NoMaintenance,
    #[error("booking {0} holds no reservation of this car")]
    NoReservation(Uuid),
    #[error("the car is out on a rental")]
    Rented,
    #[error(
        "too early to pick up: the car is reserved before this booking ({taken_by}); pick-up \
         is possible from {possible_from}"
    )]
    TooEarly {
        possible_from: DateTime<Utc>,
        taken_by: String,
    },
    #[error("the car is not out on rental {0}")]
    NotRentedBy(Uuid),
    #[error("the odometer cannot go back from {last} km to {given} km")]
    OdometerBackwards { last: String, given: String },
    #[error("the car has upcoming bookings; cancel or move them first")]
    HasBookings,
    #[error("the car is at {at}, the booking picks it up at {pickup}")]
    Elsewhere { at: String, pickup: String },
}

/// What blocks a car for a window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockKind {
    Rental {
        booking_id: Uuid,
    },
    Maintenance {
        maintenance_id: Uuid,
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub kind: BlockKind,
    pub window: TimeWindow,
    /// Minutes the car stays out of use after the window (cleaning and preparation at the
    /// branch it ends at): nothing else may start before `window.end` plus this.
    #[serde(default = "legacy_turnaround")]
    pub turnaround_minutes: i64,
}

/// The turnaround every reservation had before it became a per-branch setting: what events
/// written then, which do not say theirs, mean.
pub const LEGACY_TURNAROUND_MINUTES: i64 = 60;

/// The longest turnaround a branch may set (a day): readers widen their index searches by it.
pub const MAX_TURNAROUND_MINUTES: i64 = 24 * 60;

fn legacy_turnaround() -> i64 {
    LEGACY_TURNAROUND_MINUTES
}

fn minutes(m: i64) -> Duration {
    Duration::minutes(m.clamp(0, MAX_TURNAROUND_MINUTES))
}

impl Block {
    /// The booking a reservation is for (`None` for maintenance).
    pub fn booking(&self) -> Option<Uuid> {
        match self.kind {
            BlockKind::Rental { booking_id } => Some(booking_id),
            BlockKind::Maintenance { .. } => None,
        }
    }

    /// When the car is next free after this block: its end plus its turnaround.
    pub fn free_from(&self) -> DateTime<Utc> {
        self.window.end + minutes(self.turnaround_minutes)
    }

    /// Whether `window`, followed by `turnaround_minutes` of its own turnaround, collides with
    /// this block and the turnaround after it.
    pub fn clashes(&self, window: &TimeWindow, turnaround_minutes: i64) -> bool {
        window.start < self.free_from()
            && self.window.start < window.end + minutes(turnaround_minutes)
    }

    fn describe(&self) -> String {
        match &self.kind {
            BlockKind::Rental { .. } => "another booking".into(),
            BlockKind::Maintenance { reason, .. } => format!("maintenance ({reason})"),
        }
    }
}

/// The car's status at an instant, as the fleet sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CarStatus {
    Available,
    Reserved,
    Rented,
    Maintenance,
    Retired,
}

/// A car's state, rebuilt from its events.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Car {
    pub id: Option<Uuid>,
    pub details: Option<CarDetails>,
    pub daily_rate: Option<Money>,
    pub branch: Option<String>,
    pub retired: bool,
    pub odometer_km: Option<f64>,
    /// The booking the car is out on, between hand-over and take-back.
    pub rented_by: Option<Uuid>,
    /// Reservations and maintenance that have not ended yet, in start order.
    pub blocks: Vec<Block>,
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

    /// The first block (other than `except`'s) that `window` and its turnaround would
    /// collide with.
    fn collision(
        &self,
        window: &TimeWindow,
        turnaround_minutes: i64,
        except: Option<Uuid>,
    ) -> Option<&Block> {
        self.blocks
            .iter()
            .filter(|b| except.is_none() || b.booking() != except)
            .find(|b| b.clashes(window, turnaround_minutes))
    }

    fn ensure_free(
        &self,
        window: &TimeWindow,
        turnaround_minutes: i64,
        except: Option<Uuid>,
    ) -> Result<(), CarError> {
        match self.collision(window, turnaround_minutes, except) {
            Some(block) => Err(CarError::NotAvailable {
                window: *window,
                taken_by: block.describe(),
            }),
            None => Ok(()),
        }
    }

    fn reservation_of(&self, booking_id: Uuid) -> Option<&Block> {
        self.blocks.iter().find(|b| b.booking() == Some(booking_id))
    }

    /// The bookings an urgent maintenance over `window` would displace: those whose
    /// reservations collide with it (turnarounds included) and whose rental has not started.
    pub fn bookings_displaced_by(&self, window: &TimeWindow, turnaround_minutes: i64) -> Vec<Uuid> {
        self.blocks
            .iter()
            .filter(|b| b.clashes(window, turnaround_minutes))
            .filter_map(Block::booking)
            .filter(|id| self.rented_by != Some(*id))
            .collect()
    }

    /// The car's status at `now`.
    pub fn status_at(&self, now: DateTime<Utc>) -> CarStatus {
        if self.retired {
            CarStatus::Retired
        } else if self.rented_by.is_some() {
            CarStatus::Rented
        } else if self
            .blocks
            .iter()
            .any(|b| matches!(b.kind, BlockKind::Maintenance { .. }) && b.window.contains(now))
        {
            CarStatus::Maintenance
        } else if self
            .blocks
            .iter()
            .any(|b| b.booking().is_some() && b.window.contains(now))
        {
            CarStatus::Reserved
        } else {
            CarStatus::Available
        }
    }

    /// Forget windows whose turnaround ended before `at`, except the one of a rental still out.
    fn prune(&mut self, at: DateTime<Utc>) {
        let out = self.rented_by;
        self.blocks
            .retain(|b| b.free_from() > at || (out.is_some() && b.booking() == out));
    }

    /// Ends the block `which` picks at `at` if it would end later (its turnaround then
    /// follows from `at`), and drops it if it had not started by then: a car back early, a
    /// maintenance done early. The availability read model does the same.
    fn cut(&mut self, which: impl Fn(&Block) -> bool, at: DateTime<Utc>) {
        self.blocks.retain_mut(|b| {
            if !which(b) {
                return true;
            }
            if b.window.end > at {
                match TimeWindow::new(b.window.start, at) {
                    Ok(window) => b.window = window,
                    Err(_) => return false,
                }
            }
            true
        });
    }

    fn insert_block(&mut self, block: Block) {
        let at = self
            .blocks
            .partition_point(|b| b.window.start <= block.window.start);
        self.blocks.insert(at, block);
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
                    in_service_from: None,
                }
            }
            CarCommand::UpdateDetails { patch } => {
                self.registered_rate()?;
                let current = self.details.as_ref().ok_or(CarError::NotRegistered)?;
                let details = patch.apply_to(current);
                details.validate()?;
                if &details == current {
                    return Err(CarError::Unchanged);
                }
                CarEvent::CarDetailsUpdated { details }
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
            CarCommand::Relocate { branch, now } => {
                self.registered_rate()?;
                check_branch(&branch)?;
                if self.rented_by.is_some() {
                    return Err(CarError::Rented);
                }
                if self
                    .blocks
                    .iter()
                    .any(|b| b.booking().is_some() && b.window.end > now)
                {
                    return Err(CarError::HasBookings);
                }
                let from = self.branch.clone().unwrap_or_default();
                if from == branch {
                    return Err(CarError::Unchanged);
                }
                CarEvent::CarRelocated { from, to: branch }
            }
            CarCommand::Retire { reason, now } => {
                self.registered_rate()?;
                if self.rented_by.is_some() {
                    return Err(CarError::Rented);
                }
                if self
                    .blocks
                    .iter()
                    .any(|b| b.booking().is_some() && b.window.end > now)
                {
                    return Err(CarError::HasBookings);
                }
                CarEvent::CarRetired { reason, at: now }
            }
            CarCommand::ScheduleMaintenance {
                maintenance_id,
                window,
                reason,
                turnaround_minutes,
                urgent,
                now,
            } => {
                self.registered_rate()?;
                if window.end <= now {
                    return Err(CarError::WindowInPast);
                }
                if reason.trim().is_empty() || reason.len() > 500 {
                    return Err(CarError::InvalidDetails {
                        field: "reason",
                        reason: "must be 1 to 500 characters",
                    });
                }
                // Not started yet: an urgent maintenance takes their place.
                let displaced = if urgent {
                    self.bookings_displaced_by(&window, turnaround_minutes)
                } else {
                    Vec::new()
                };
                if let Some(block) = self.blocks.iter().find(|b| {
                    b.clashes(&window, turnaround_minutes)
                        && b.booking().is_none_or(|id| !displaced.contains(&id))
                }) {
                    return Err(CarError::NotAvailable {
                        window,
                        taken_by: block.describe(),
                    });
                }
                CarEvent::MaintenanceScheduled {
                    maintenance_id,
                    window,
                    reason,
                    at: now,
                    displaced,
                    turnaround_minutes,
                }
            }
            CarCommand::CompleteMaintenance { now } => {
                self.registered_rate()?;
                let maintenance_id = self
                    .blocks
                    .iter()
                    .filter_map(|b| match b.kind {
                        BlockKind::Maintenance { maintenance_id, .. } if b.window.end > now => {
                            Some(maintenance_id)
                        }
                        _ => None,
                    })
                    .next()
                    .ok_or(CarError::NoMaintenance)?;
                CarEvent::MaintenanceCompleted {
                    maintenance_id,
                    at: now,
                }
            }
            CarCommand::Reserve {
                booking_id,
                window,
                turnaround_minutes,
                now,
            } => {
                self.registered_rate()?;
                if let Some(existing) = self.reservation_of(booking_id) {
                    if existing.window == window {
                        return Ok(());
                    }
                    return Err(CarError::NotAvailable {
                        window,
                        taken_by: "this booking's own reservation".into(),
                    });
                }
                if window.start < now {
                    return Err(CarError::WindowInPast);
                }
                self.ensure_free(&window, turnaround_minutes, None)?;
                CarEvent::CarReserved {
                    booking_id,
                    window,
                    at: now,
                    turnaround_minutes,
                }
            }
            CarCommand::ChangeReservation {
                booking_id,
                window,
                turnaround_minutes,
                now,
            } => {
                self.registered_rate()?;
                let from = self
                    .reservation_of(booking_id)
                    .ok_or(CarError::NoReservation(booking_id))?
                    .window;
                if from == window {
                    return Err(CarError::Unchanged);
                }
                if self.rented_by == Some(booking_id) {
                    // Out on this booking: only the return moves, and not into the past.
                    if window.start != from.start || window.end <= now {
                        return Err(CarError::WindowInPast);
                    }
                } else if window.start < now {
                    return Err(CarError::WindowInPast);
                }
                self.ensure_free(&window, turnaround_minutes, Some(booking_id))?;
                CarEvent::ReservationChanged {
                    booking_id,
                    from,
                    to: window,
                    at: now,
                    turnaround_minutes,
                }
            }
            CarCommand::Release { booking_id, now } => {
                if self.reservation_of(booking_id).is_none() {
                    return Ok(());
                }
                CarEvent::ReservationReleased {
                    booking_id,
                    at: now,
                }
            }
            CarCommand::HandOver {
                booking_id,
                odometer_km,
                early_minutes,
                pickup_branch,
                now,
            } => {
                if self.id.is_none() {
                    return Err(CarError::NotRegistered);
                }
                if self.rented_by == Some(booking_id) {
                    return Ok(());
                }
                if self.rented_by.is_some() {
                    return Err(CarError::Rented);
                }
                let at = self.branch.clone().unwrap_or_default();
                if at != pickup_branch {
                    return Err(CarError::Elsewhere {
                        at,
                        pickup: pickup_branch,
                    });
                }
                let reservation = self
                    .reservation_of(booking_id)
                    .ok_or(CarError::NoReservation(booking_id))?;
                let (window, own_turnaround) = (reservation.window, reservation.turnaround_minutes);
                self.check_odometer(odometer_km)?;
                if now < window.start - Duration::minutes(early_minutes.max(0)) {
                    // Out before its time: the extra time must be free, and becomes reserved.
                    let early =
                        TimeWindow::new(now, window.end).map_err(|_| CarError::WindowInPast)?;
                    // The last block in the way decides when the car can go.
                    let in_the_way = self
                        .blocks
                        .iter()
                        .filter(|b| b.booking() != Some(booking_id))
                        .filter(|b| b.clashes(&early, own_turnaround))
                        .max_by_key(|b| b.free_from());
                    if let Some(block) = in_the_way {
                        return Err(CarError::TooEarly {
                            possible_from: block
                                .free_from()
                                .min(window.start - Duration::minutes(early_minutes.max(0))),
                            taken_by: block.describe(),
                        });
                    }
                    sink.write(
                        CarEvent::ReservationChanged {
                            booking_id,
                            from: window,
                            to: early,
                            at: now,
                            turnaround_minutes: own_turnaround,
                        },
                        self,
                    )
                    .await;
                }
                CarEvent::CarPickedUp {
                    booking_id,
                    odometer_km,
                    at: now,
                }
            }
            CarCommand::TakeBack {
                booking_id,
                odometer_km,
                branch,
                now,
            } => {
                if self.rented_by != Some(booking_id) {
                    return Err(CarError::NotRentedBy(booking_id));
                }
                check_branch(&branch)?;
                self.check_odometer(odometer_km)?;
                CarEvent::CarReturned {
                    booking_id,
                    odometer_km,
                    branch,
                    at: now,
                }
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
                ..
            } => {
                self.id = Some(id);
                self.details = Some(details);
                self.daily_rate = Some(daily_rate);
                self.branch = Some(branch);
            }
            CarEvent::CarDetailsUpdated { details } => self.details = Some(details),
            CarEvent::DailyRateChanged { to, .. } => self.daily_rate = Some(to),
            CarEvent::CarRelocated { to, .. } => self.branch = Some(to),
            CarEvent::CarRetired { at, .. } => {
                self.retired = true;
                self.prune(at);
            }
            CarEvent::MaintenanceScheduled {
                maintenance_id,
                window,
                reason,
                at,
                displaced,
                turnaround_minutes,
            } => {
                self.prune(at);
                self.blocks.retain(|b| {
                    b.booking()
                        .is_none_or(|booking| !displaced.contains(&booking))
                });
                self.insert_block(Block {
                    kind: BlockKind::Maintenance {
                        maintenance_id,
                        reason,
                    },
                    window,
                    turnaround_minutes,
                });
            }
            CarEvent::MaintenanceCompleted { maintenance_id, at } => {
                self.cut(
                    |b| matches!(b.kind, BlockKind::Maintenance { maintenance_id: m, .. } if m == maintenance_id),
                    at,
                );
                self.prune(at);
            }
            CarEvent::CarReserved {
                booking_id,
                window,
                at,
                turnaround_minutes,
            } => {
                self.prune(at);
                self.insert_block(Block {
                    kind: BlockKind::Rental { booking_id },
                    window,
                    turnaround_minutes,
                });
            }
            CarEvent::ReservationChanged {
                booking_id,
                to,
                at,
                turnaround_minutes,
                ..
            } => {
                self.blocks.retain(|b| b.booking() != Some(booking_id));
                self.prune(at);
                self.insert_block(Block {
                    kind: BlockKind::Rental { booking_id },
                    window: to,
                    turnaround_minutes,
                });
            }
            CarEvent::ReservationReleased { booking_id, at } => {
                self.blocks.retain(|b| b.booking() != Some(booking_id));
                self.prune(at);
            }
            CarEvent::CarPickedUp {
                booking_id,
                odometer_km,
                at,
            } => {
                self.rented_by = Some(booking_id);
                self.odometer_km = Some(odometer_km);
                self.prune(at);
            }
            CarEvent::CarReturned {
                booking_id,
                odometer_km,
                branch,
                at,
            } => {
                self.rented_by = None;
                self.odometer_km = Some(odometer_km);
                self.branch = Some(branch);
                self.cut(|b| b.booking() == Some(booking_id), at);
                self.prune(at);
            }
        }
    }
}

impl Car {
    fn check_odometer(&self, given: f64) -> Result<(), CarError> {
        let last = self.odometer_km.unwrap_or(0.0);
        if !given.is_finite() || !(0.0..=10_000_000.0).contains(&given) {
            return Err(CarError::InvalidDetails {
                field: "odometerKm",
                reason: "must be between 0 and 10,000,000",
            });
        }
        if given < last {
            return Err(CarError::OdometerBackwards {
                last: last.to_string(),
                given: given.to_string(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::Currency;

    type CarTest = TestFramework<Car>;

    fn usd(minor: i64) -> Money {
        Money::new(minor, Currency::USD)
    }

    fn day(d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, d, h, 0, 0)
            .single()
            .unwrap_or_default()
    }

    fn window(from: (u32, u32), to: (u32, u32)) -> TimeWindow {
        TimeWindow::new(day(from.0, from.1), day(to.0, to.1)).unwrap()
    }

    fn now() -> DateTime<Utc> {
        day(1, 8)
    }

    fn b(n: u128) -> Uuid {
        Uuid::from_u128(n)
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
            in_service_from: None,
        }
    }

    fn reserved(booking: u128, w: TimeWindow) -> CarEvent {
        CarEvent::CarReserved {
            booking_id: b(booking),
            window: w,
            at: now(),
            turnaround_minutes: 60,
        }
    }

    fn reserve(booking: u128, w: TimeWindow) -> CarCommand {
        CarCommand::Reserve {
            booking_id: b(booking),
            window: w,
            turnaround_minutes: 60,
            now: now(),
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
    fn updates_details_with_a_patch() {
        let patch = CarDetailsPatch {
            seats: Some(7),
            features: Some(vec!["gps".into()]),
            ..CarDetailsPatch::default()
        };
        CarTest::with(())
            .given(vec![registered()])
            .when(CarCommand::UpdateDetails { patch })
            .then_expect_events(vec![CarEvent::CarDetailsUpdated {
                details: CarDetails {
                    seats: 7,
                    features: vec!["gps".into()],
                    ..details()
                },
            }]);
        CarTest::with(())
            .given(vec![registered()])
            .when(CarCommand::UpdateDetails {
                patch: CarDetailsPatch {
                    seats: Some(0),
                    ..CarDetailsPatch::default()
                },
            })
            .then_expect_error(CarError::InvalidDetails {
                field: "seats",
                reason: "must be between 1 and 60",
            });
        CarTest::with(())
            .given(vec![registered()])
            .when(CarCommand::UpdateDetails {
                patch: CarDetailsPatch::default(),
            })
            .then_expect_error(CarError::Unchanged);
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
                now: now(),
            })
            .then_expect_events(vec![CarEvent::CarRelocated {
                from: "LIS".into(),
                to: "OPO".into(),
            }]);
        CarTest::with(())
            .given(vec![registered()])
            .when(CarCommand::Relocate {
                branch: "LIS".into(),
                now: now(),
            })
            .then_expect_error(CarError::Unchanged);
        CarTest::with(())
            .given(vec![registered()])
            .when(CarCommand::Retire {
                reason: "old".into(),
                now: now(),
            })
            .then_expect_events(vec![CarEvent::CarRetired {
                reason: "old".into(),
                at: now(),
            }]);
        CarTest::with(())
            .given(vec![
                registered(),
                CarEvent::CarRetired {
                    reason: "old".into(),
                    at: now(),
                },
            ])
            .when(CarCommand::ChangeDailyRate {
                daily_rate: usd(100),
            })
            .then_expect_error(CarError::Retired);
        CarTest::with(())
            .given(vec![registered(), reserved(1, window((3, 10), (5, 10)))])
            .when(CarCommand::Retire {
                reason: "old".into(),
                now: now(),
            })
            .then_expect_error(CarError::HasBookings);
    }

    #[test]
    fn a_retired_car_accepts_no_reservation() {
        CarTest::with(())
            .given(vec![
                registered(),
                CarEvent::CarRetired {
                    reason: "sold".into(),
                    at: now(),
                },
            ])
            .when(reserve(1, window((3, 10), (5, 10))))
            .then_expect_error(CarError::Retired);
    }

    #[test]
    fn reserves_a_free_window() {
        let w = window((3, 10), (5, 10));
        CarTest::with(())
            .given(vec![registered()])
            .when(reserve(1, w))
            .then_expect_events(vec![reserved(1, w)]);
        // Again for the same booking and window: nothing new (a retried command).
        CarTest::with(())
            .given(vec![registered(), reserved(1, w)])
            .when(reserve(1, w))
            .then_expect_events(vec![]);
    }

    fn reserved_with(booking: u128, w: TimeWindow, turnaround_minutes: i64) -> CarEvent {
        CarEvent::CarReserved {
            booking_id: b(booking),
            window: w,
            at: now(),
            turnaround_minutes,
        }
    }

    fn reserve_with(booking: u128, w: TimeWindow, turnaround_minutes: i64) -> CarCommand {
        CarCommand::Reserve {
            booking_id: b(booking),
            window: w,
            turnaround_minutes,
            now: now(),
        }
    }

    #[test]
    fn each_reservation_keeps_the_turnaround_of_the_branch_it_returns_to() {
        // Returned to a branch that cleans for three hours: the car is out until 13:00.
        let first = window((5, 8), (5, 10));
        let at_noon = window((5, 12), (6, 12));
        CarTest::with(())
            .given(vec![registered(), reserved_with(1, first, 180)])
            .when(reserve_with(2, at_noon, 30))
            .then_expect_error(CarError::NotAvailable {
                window: at_noon,
                taken_by: "another booking".into(),
            });
        let at_one = window((5, 13), (6, 12));
        CarTest::with(())
            .given(vec![registered(), reserved_with(1, first, 180)])
            .when(reserve_with(2, at_one, 30))
            .then_expect_events(vec![reserved_with(2, at_one, 30)]);
        // Before it, the new rental's own turnaround decides: ending at 6:00 with half an hour
        // of cleaning fits before 8:00, with three hours it does not.
        let before = window((4, 10), (5, 6));
        CarTest::with(())
            .given(vec![registered(), reserved_with(1, first, 180)])
            .when(reserve_with(3, before, 30))
            .then_expect_events(vec![reserved_with(3, before, 30)]);
        CarTest::with(())
            .given(vec![registered(), reserved_with(1, first, 180)])
            .when(reserve_with(3, before, 180))
            .then_expect_error(CarError::NotAvailable {
                window: before,
                taken_by: "another booking".into(),
            });
    }

    #[test]
    fn a_car_back_early_is_free_after_its_turnaround_from_the_return() {
        let booked = window((3, 10), (6, 10));
        let picked = CarEvent::CarPickedUp {
            booking_id: b(1),
            odometer_km: 1_000.0,
            at: day(3, 10),
        };
        let back = CarEvent::CarReturned {
            booking_id: b(1),
            odometer_km: 1_200.0,
            branch: "LIS".into(),
            at: day(4, 10),
        };
        let history = vec![registered(), reserved_with(1, booked, 120), picked, back];
        // Back on the 4th at 10:00 with two hours of cleaning: noon, not 11:00.
        let at_eleven = window((4, 11), (5, 10));
        CarTest::with(())
            .given(history.clone())
            .when(CarCommand::Reserve {
                booking_id: b(2),
                window: at_eleven,
                turnaround_minutes: 60,
                now: day(4, 10),
            })
            .then_expect_error(CarError::NotAvailable {
                window: at_eleven,
                taken_by: "another booking".into(),
            });
        let at_noon = window((4, 12), (5, 10));
        CarTest::with(())
            .given(history)
            .when(CarCommand::Reserve {
                booking_id: b(2),
                window: at_noon,
                turnaround_minutes: 60,
                now: day(4, 10),
            })
            .then_expect_events(vec![CarEvent::CarReserved {
                booking_id: b(2),
                window: at_noon,
                at: day(4, 10),
                turnaround_minutes: 60,
            }]);
    }

    #[test]
    fn events_from_before_turnaround_was_per_branch_mean_an_hour() {
        let stored = serde_json::json!({ "CarReserved": {
            "booking_id": b(1),
            "window": { "start": day(3, 10), "end": day(5, 10) },
            "at": now(),
        }});
        let event: CarEvent = serde_json::from_value(stored).unwrap();
        assert_eq!(event, reserved_with(1, window((3, 10), (5, 10)), 60));
    }

    #[test]
    fn refuses_overlaps_including_the_turnaround_buffer() {
        let taken = window((3, 10), (5, 10));
        let overlapping = window((4, 10), (6, 10));
        CarTest::with(())
            .given(vec![registered(), reserved(1, taken)])
            .when(reserve(2, overlapping))
            .then_expect_error(CarError::NotAvailable {
                window: overlapping,
                taken_by: "another booking".into(),
            });
        // Starts 30 minutes after the other ends: inside the 60-minute turnaround.
        let tight = TimeWindow::new(day(5, 10) + Duration::minutes(30), day(7, 10)).unwrap();
        CarTest::with(())
            .given(vec![registered(), reserved(1, taken)])
            .when(reserve(2, tight))
            .then_expect_error(CarError::NotAvailable {
                window: tight,
                taken_by: "another booking".into(),
            });
        // Exactly one buffer later: fine.
        let after = TimeWindow::new(day(5, 11), day(7, 10)).unwrap();
        CarTest::with(())
            .given(vec![registered(), reserved(1, taken)])
            .when(reserve(2, after))
            .then_expect_events(vec![reserved(2, after)]);
    }

    #[test]
    fn urgent_maintenance_displaces_bookings_that_have_not_started_but_never_a_rental() {
        let broken = window((3, 0), (6, 0));
        let schedule = |urgent| CarCommand::ScheduleMaintenance {
            maintenance_id: b(9),
            window: broken,
            reason: "engine warning".into(),
            turnaround_minutes: 60,
            urgent,
            now: now(),
        };
        // Two bookings over the window (one within the turnaround of its end), one after it.
        let (first, second, later) = (
            window((2, 12), (3, 12)),
            window((6, 0), (7, 0)),
            window((9, 0), (10, 0)),
        );
        CarTest::with(())
            .given(vec![
                registered(),
                reserved(1, first),
                reserved(2, second),
                reserved(3, later),
            ])
            .when(schedule(true))
            .then_expect_events(vec![CarEvent::MaintenanceScheduled {
                maintenance_id: b(9),
                window: broken,
                reason: "engine warning".into(),
                at: now(),
                displaced: vec![b(1), b(2)],
                turnaround_minutes: 60,
            }]);
        // Not urgent, the same window is refused.
        CarTest::with(())
            .given(vec![registered(), reserved(1, first)])
            .when(schedule(false))
            .then_expect_error(CarError::NotAvailable {
                window: broken,
                taken_by: "another booking".into(),
            });
        // A customer is out with the car: it cannot be taken from them.
        CarTest::with(())
            .given(vec![
                registered(),
                reserved(1, first),
                CarEvent::CarPickedUp {
                    booking_id: b(1),
                    odometer_km: 10.0,
                    at: day(2, 12),
                },
            ])
            .when(schedule(true))
            .then_expect_error(CarError::NotAvailable {
                window: broken,
                taken_by: "another booking".into(),
            });
    }

    #[test]
    fn maintenance_blocks_reservations_and_completes() {
        let m = window((3, 0), (4, 0));
        let scheduled = CarEvent::MaintenanceScheduled {
            maintenance_id: b(9),
            window: m,
            reason: "tyres".into(),
            at: now(),
            displaced: vec![],
            turnaround_minutes: 60,
        };
        CarTest::with(())
            .given(vec![registered()])
            .when(CarCommand::ScheduleMaintenance {
                maintenance_id: b(9),
                window: m,
                reason: "tyres".into(),
                turnaround_minutes: 60,
                urgent: false,
                now: now(),
            })
            .then_expect_events(vec![scheduled.clone()]);
        let w = window((3, 12), (5, 12));
        CarTest::with(())
            .given(vec![registered(), scheduled.clone()])
            .when(reserve(1, w))
            .then_expect_error(CarError::NotAvailable {
                window: w,
                taken_by: "maintenance (tyres)".into(),
            });
        CarTest::with(())
            .given(vec![registered(), reserved(1, w)])
            .when(CarCommand::ScheduleMaintenance {
                maintenance_id: b(9),
                window: m,
                reason: "tyres".into(),
                turnaround_minutes: 60,
                urgent: false,
                now: now(),
            })
            .then_expect_error(CarError::NotAvailable {
                window: m,
                taken_by: "another booking".into(),
            });
        CarTest::with(())
            .given(vec![registered(), scheduled.clone()])
            .when(CarCommand::CompleteMaintenance { now: day(3, 9) })
            .then_expect_events(vec![CarEvent::MaintenanceCompleted {
                maintenance_id: b(9),
                at: day(3, 9),
            }]);
        CarTest::with(())
            .given(vec![registered()])
            .when(CarCommand::CompleteMaintenance { now: now() })
            .then_expect_error(CarError::NoMaintenance);
        // Completed: the window is free again.
        CarTest::with(())
            .given(vec![
                registered(),
                scheduled,
                CarEvent::MaintenanceCompleted {
                    maintenance_id: b(9),
                    at: now(),
                },
            ])
            .when(reserve(1, w))
            .then_expect_events(vec![reserved(1, w)]);
    }

    #[test]
    fn a_reservation_moves_only_if_the_new_window_fits() {
        let w1 = window((3, 10), (5, 10));
        let w2 = window((10, 10), (12, 10));
        let moved = window((4, 10), (6, 10));
        CarTest::with(())
            .given(vec![registered(), reserved(1, w1), reserved(2, w2)])
            .when(CarCommand::ChangeReservation {
                booking_id: b(1),
                window: moved,
                turnaround_minutes: 60,
                now: now(),
            })
            .then_expect_events(vec![CarEvent::ReservationChanged {
                booking_id: b(1),
                from: w1,
                to: moved,
                at: now(),
                turnaround_minutes: 60,
            }]);
        let clash = window((9, 10), (11, 10));
        CarTest::with(())
            .given(vec![registered(), reserved(1, w1), reserved(2, w2)])
            .when(CarCommand::ChangeReservation {
                booking_id: b(1),
                window: clash,
                turnaround_minutes: 60,
                now: now(),
            })
            .then_expect_error(CarError::NotAvailable {
                window: clash,
                taken_by: "another booking".into(),
            });
        CarTest::with(())
            .given(vec![registered()])
            .when(CarCommand::ChangeReservation {
                booking_id: b(1),
                window: clash,
                turnaround_minutes: 60,
                now: now(),
            })
            .then_expect_error(CarError::NoReservation(b(1)));
    }

    #[test]
    fn releasing_frees_the_window_and_is_idempotent() {
        let w = window((3, 10), (5, 10));
        CarTest::with(())
            .given(vec![registered(), reserved(1, w)])
            .when(CarCommand::Release {
                booking_id: b(1),
                now: now(),
            })
            .then_expect_events(vec![CarEvent::ReservationReleased {
                booking_id: b(1),
                at: now(),
            }]);
        CarTest::with(())
            .given(vec![
                registered(),
                reserved(1, w),
                CarEvent::ReservationReleased {
                    booking_id: b(1),
                    at: now(),
                },
            ])
            .when(CarCommand::Release {
                booking_id: b(1),
                now: now(),
            })
            .then_expect_events(vec![]);
        CarTest::with(())
            .given(vec![
                registered(),
                reserved(1, w),
                CarEvent::ReservationReleased {
                    booking_id: b(1),
                    at: now(),
                },
            ])
            .when(reserve(2, w))
            .then_expect_events(vec![reserved(2, w)]);
    }

    #[test]
    fn hands_over_and_takes_back() {
        let w = window((3, 10), (5, 10));
        let picked = CarEvent::CarPickedUp {
            booking_id: b(1),
            odometer_km: 1_000.0,
            at: day(3, 10),
        };
        CarTest::with(())
            .given(vec![registered(), reserved(1, w)])
            .when(CarCommand::HandOver {
                booking_id: b(1),
                odometer_km: 1_000.0,
                early_minutes: 60,
                pickup_branch: "LIS".into(),
                now: day(3, 10),
            })
            .then_expect_events(vec![picked.clone()]);
        CarTest::with(())
            .given(vec![registered(), reserved(1, w)])
            .when(CarCommand::HandOver {
                booking_id: b(2),
                odometer_km: 1_000.0,
                early_minutes: 60,
                pickup_branch: "LIS".into(),
                now: day(3, 10),
            })
            .then_expect_error(CarError::NoReservation(b(2)));
        CarTest::with(())
            .given(vec![registered(), reserved(1, w), picked.clone()])
            .when(CarCommand::TakeBack {
                booking_id: b(1),
                odometer_km: 999.0,
                branch: "OPO".into(),
                now: day(5, 9),
            })
            .then_expect_error(CarError::OdometerBackwards {
                last: "1000".into(),
                given: "999".into(),
            });
        CarTest::with(())
            .given(vec![registered(), reserved(1, w), picked.clone()])
            .when(CarCommand::TakeBack {
                booking_id: b(1),
                odometer_km: 1_420.5,
                branch: "OPO".into(),
                now: day(5, 9),
            })
            .then_expect_events(vec![CarEvent::CarReturned {
                booking_id: b(1),
                odometer_km: 1_420.5,
                branch: "OPO".into(),
                at: day(5, 9),
            }]);
        CarTest::with(())
            .given(vec![registered(), reserved(1, w), picked])
            .when(CarCommand::Relocate {
                branch: "OPO".into(),
                now: now(),
            })
            .then_expect_error(CarError::Rented);
    }

    #[test]
    fn past_windows_are_pruned_from_state() {
        let mut car = Car::default();
        car.apply(registered());
        car.apply(reserved(1, window((3, 10), (5, 10))));
        car.apply(reserved(2, window((8, 10), (9, 10))));
        assert_eq!(car.blocks.len(), 2);
        car.apply(CarEvent::CarReserved {
            booking_id: b(3),
            window: window((20, 10), (21, 10)),
            at: day(6, 0),
            turnaround_minutes: 60,
        });
        let left: Vec<_> = car.blocks.iter().filter_map(Block::booking).collect();
        assert_eq!(left, [b(2), b(3)]);
        assert_eq!(car.status_at(day(8, 12)), CarStatus::Reserved);
        assert_eq!(car.status_at(day(10, 12)), CarStatus::Available);
    }

    fn hand_over(booking: u128, at: DateTime<Utc>) -> CarCommand {
        CarCommand::HandOver {
            booking_id: b(booking),
            odometer_km: 1_000.0,
            early_minutes: 60,
            pickup_branch: "LIS".into(),
            now: at,
        }
    }

    #[test]
    fn a_car_with_bookings_waiting_stays_where_they_expect_it() {
        let w = window((20, 10), (28, 10));
        // Relocating would strand the booking at LIS.
        CarTest::with(())
            .given(vec![registered(), reserved(1, w)])
            .when(CarCommand::Relocate {
                branch: "OPO".into(),
                now: day(7, 10),
            })
            .then_expect_error(CarError::HasBookings);
        // Once that booking is over, it may move.
        CarTest::with(())
            .given(vec![registered(), reserved(1, w)])
            .when(CarCommand::Relocate {
                branch: "OPO".into(),
                now: day(28, 11),
            })
            .then_expect_events(vec![CarEvent::CarRelocated {
                from: "LIS".into(),
                to: "OPO".into(),
            }]);
        // A car returned to OPO cannot be handed over at LIS.
        CarTest::with(())
            .given(vec![
                registered(),
                CarEvent::CarRelocated {
                    from: "LIS".into(),
                    to: "OPO".into(),
                },
                reserved(1, w),
            ])
            .when(hand_over(1, day(20, 10)))
            .then_expect_error(CarError::Elsewhere {
                at: "OPO".into(),
                pickup: "LIS".into(),
            });
    }

    #[test]
    fn a_pick_up_within_the_early_allowance_leaves_the_reservation_alone() {
        let w = window((20, 10), (28, 10));
        CarTest::with(())
            .given(vec![registered(), reserved(1, w)])
            .when(hand_over(1, day(20, 9)))
            .then_expect_events(vec![CarEvent::CarPickedUp {
                booking_id: b(1),
                odometer_km: 1_000.0,
                at: day(20, 9),
            }]);
    }

    #[test]
    fn an_early_pick_up_reserves_the_extra_time_so_nobody_else_can_book_it() {
        let w = window((20, 10), (28, 10));
        // Picked up on the 7th for a rental from the 20th: the car is out from the 7th.
        CarTest::with(())
            .given(vec![registered(), reserved(1, w)])
            .when(hand_over(1, day(7, 10)))
            .then_expect_events(vec![
                CarEvent::ReservationChanged {
                    booking_id: b(1),
                    from: w,
                    to: window((7, 10), (28, 10)),
                    at: day(7, 10),
                    turnaround_minutes: 60,
                },
                CarEvent::CarPickedUp {
                    booking_id: b(1),
                    odometer_km: 1_000.0,
                    at: day(7, 10),
                },
            ]);
        // Once out, another booking of the 10th-12th does not fit.
        CarTest::with(())
            .given(vec![
                registered(),
                reserved(1, w),
                CarEvent::ReservationChanged {
                    booking_id: b(1),
                    from: w,
                    to: window((7, 10), (28, 10)),
                    at: day(7, 10),
                    turnaround_minutes: 60,
                },
                CarEvent::CarPickedUp {
                    booking_id: b(1),
                    odometer_km: 1_000.0,
                    at: day(7, 10),
                },
            ])
            .when(CarCommand::Reserve {
                booking_id: b(2),
                window: window((10, 10), (12, 10)),
                turnaround_minutes: 60,
                now: day(7, 11),
            })
            .then_expect_error(CarError::NotAvailable {
                window: window((10, 10), (12, 10)),
                taken_by: "another booking".into(),
            });
    }

    #[test]
    fn an_early_pick_up_over_another_booking_is_refused_naming_when_it_can_be() {
        let w = window((20, 10), (28, 10));
        let other = window((10, 10), (12, 10));
        CarTest::with(())
            .given(vec![registered(), reserved(1, w), reserved(2, other)])
            .when(hand_over(1, day(7, 10)))
            .then_expect_error(CarError::TooEarly {
                possible_from: day(12, 11),
                taken_by: "another booking".into(),
            });
    }
}
