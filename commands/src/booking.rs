//! The booking path: commands that touch a car and a booking together, atomically.
//!
//! Reserving the car and holding the booking are one append to two streams, each at its loaded
//! version (DESIGN.md decision 6), so two requests for the same car and overlapping windows can
//! never both succeed: one append wins, the other retries, reloads the car, sees the window
//! taken and answers a conflict. A Redis lock per car (`SET NX PX`, released by token) makes
//! contenders queue instead of racing; correctness never depends on it, and without Redis the
//! path works the same, with more retries.
//!
//! Follow-up steps that must happen later or elsewhere (expiring a hold, confirming after a
//! payment, refunding a cancellation) are rows in `workflow_steps`, written in the same
//! transaction as the events that make them necessary, and run by the worker until done.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use domain::booking::{Booking, BookingCommand, BookingError, BookingStatus, CancelledBy};
use domain::car::{Car, CarCommand, CarError};
use domain::pricing::{self, Extra, PricingError, PricingPolicy, Quote};
use domain::{Money, TimeWindow};
use eventstore::{EventStore, EventStoreError, RecordedEvent, StreamAppend};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::context::CommandContext;
use crate::executor::{ExecuteError, Executor, Loaded, RetryPolicy};
use crate::locks::HotCarLock;

/// The worker's step that looks for another car for a booking that lost its own.
fn rehome_step(booking_id: Uuid, now: DateTime<Utc>) -> Step {
    Step {
        kind: "rehome",
        booking_id,
        payload: json!({}),
        due_at: now,
    }
}

/// Settings of the booking path.
#[derive(Clone, Debug)]
pub struct BookingConfig {
    /// How long a HELD booking waits for payment (`FLEETLEDGER_HOLD_TTL`, default 300 s).
    pub hold_ttl: Duration,
    /// How long before a booking's pick-up time the car may be handed over with no questions
    /// (`FLEETLEDGER_EARLY_PICKUP_MINUTES`, default 60); earlier, only if the car is free
    /// until then, and the booking then holds it from the hand-over.
    pub early_pickup_minutes: i64,
    /// How long after a paid booking's pick-up time nobody came before it is a no-show
    /// (`FLEETLEDGER_NO_SHOW_GRACE_MINUTES`, default 120).
    pub no_show_grace_minutes: i64,
    pub pricing: PricingPolicy,
    /// The currency a car is priced in when none is given (`FLEETLEDGER_CURRENCY`, USD).
    pub fleet_currency: domain::Currency,
    pub retry: RetryPolicy,
    /// How long the per-car Redis lock lives if its holder dies.
    pub lock_ttl: StdDuration,
    /// How long a request waits for the per-car lock before going ahead without it.
    pub lock_wait: StdDuration,
}

impl Default for BookingConfig {
    fn default() -> Self {
        Self {
            hold_ttl: Duration::seconds(300),
            early_pickup_minutes: 60,
            no_show_grace_minutes: 120,
            pricing: PricingPolicy::default(),
            fleet_currency: domain::Currency::USD,
            retry: RetryPolicy {
                max_attempts: 20,
                ..RetryPolicy::default()
            },
            lock_ttl: StdDuration::from_secs(5),
            lock_wait: StdDuration::from_secs(2),
        }
    }
}

/// What a customer asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct BookingRequest {
    pub car_id: Uuid,
    pub window: TimeWindow,
    /// Defaults to the car's branch; must be where the car is.
    pub pickup_branch: Option<String>,
    /// Defaults to the pickup branch; another branch adds the one-way fee.
    pub return_branch: Option<String>,
    /// Extras and coverage, priced per day by the policy.
    pub extras: Vec<Extra>,
}

/// What a booking that lost its car needs of another: where and when, its class and currency.
#[derive(Clone, Debug, PartialEq)]
pub struct SpareCarWanted {
    pub branch: String,
    /// The class's wire name (`COMPACT`, `SUV`...).
    pub class: String,
    pub currency: String,
    pub window: TimeWindow,
    /// The turnaround after the booking (its return branch's).
    pub turnaround_minutes: i64,
    /// The car it lost.
    pub exclude: Uuid,
    pub limit: i64,
}

/// Where a booking that lost its car may find another: cars the read side shows free for it,
/// best first. Only a proposal: the car's aggregate decides when the booking moves to it.
#[async_trait::async_trait]
pub trait SpareCars: Send + Sync {
    async fn spare_cars(&self, wanted: &SpareCarWanted) -> Result<Vec<Uuid>, BookingFlowError>;
}

#[derive(Debug, thiserror::Error)]
pub enum BookingFlowError {
    #[error("car not found")]
    CarNotFound,
    #[error("booking not found")]
    BookingNotFound,
    #[error(transparent)]
    Car(CarError),
    #[error(transparent)]
    Booking(BookingError),
    #[error(transparent)]
    Pricing(#[from] PricingError),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("the car is in demand; gave up after {0} attempts")]
    Contended(u32),
    #[error(transparent)]
    Store(#[from] EventStoreError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Codec(#[from] crate::codec::CodecError),
}

impl From<ExecuteError<CarError>> for BookingFlowError {
    fn from(e: ExecuteError<CarError>) -> Self {
        match e {
            ExecuteError::Rejected(e) => Self::Car(e),
            ExecuteError::Conflict { attempts, .. } => Self::Contended(attempts),
            ExecuteError::Store(e) => Self::Store(e),
            ExecuteError::Codec(e) => Self::Codec(e),
        }
    }
}

impl From<ExecuteError<BookingError>> for BookingFlowError {
    fn from(e: ExecuteError<BookingError>) -> Self {
        match e {
            ExecuteError::Rejected(e) => Self::Booking(e),
            ExecuteError::Conflict { attempts, .. } => Self::Contended(attempts),
            ExecuteError::Store(e) => Self::Store(e),
            ExecuteError::Codec(e) => Self::Codec(e),
        }
    }
}

/// A booking as the booking path knows it right after a command.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BookingView {
    pub id: Uuid,
    pub version: i64,
    pub state: Booking,
    /// The events the command appended (empty when it changed nothing), with positions.
    #[serde(skip)]
    pub events: Vec<RecordedEvent>,
}

impl BookingView {
    pub fn status(&self) -> Option<BookingStatus> {
        self.state.status
    }
}

/// The `refund` step that sends back what a paid booking's total exceeds the fee it keeps
/// (a cancellation, a no-show); none when nothing was paid or nothing goes back.
fn refund_beyond(
    booking: &Booking,
    booking_id: Uuid,
    fee: Option<Money>,
    now: DateTime<Utc>,
) -> Vec<Step> {
    match (booking.payment_id, fee, booking.total) {
        (Some(payment_id), Some(fee), Some(total)) if total.minor > fee.minor => vec![Step {
            kind: "refund",
            booking_id,
            payload: json!({ "payment_id": payment_id, "amount_minor": total.minor - fee.minor, "currency": total.currency }),
            due_at: now,
        }],
        _ => Vec::new(),
    }
}

/// A follow-up step, run by the worker when due.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Step {
    pub(crate) kind: &'static str,
    pub(crate) booking_id: Uuid,
    pub(crate) payload: serde_json::Value,
    pub(crate) due_at: DateTime<Utc>,
}

/// Runs the booking path.
#[derive(Clone)]
pub struct BookingService {
    store: EventStore,
    cars: Executor<Car>,
    bookings: Executor<Booking>,
    lock: HotCarLock,
    config: BookingConfig,
}

/// The booking id a user's idempotency key maps to: the same key from the same user always
/// names the same booking stream, so a retried request finds the first one.
pub fn booking_id_for(user: Uuid, key: &str) -> Uuid {
    let digest = Sha256::new()
        .chain_update(b"fleetledger/booking/")
        .chain_update(user.as_bytes())
        .chain_update(key.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

impl BookingService {
    pub fn new(
        store: EventStore,
        cars: Executor<Car>,
        bookings: Executor<Booking>,
        lock: HotCarLock,
        config: BookingConfig,
    ) -> Self {
        Self {
            store,
            cars,
            bookings,
            lock,
            config,
        }
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    pub fn config(&self) -> &BookingConfig {
        &self.config
    }

    /// Price a rental of `car_id` over `window`, as `request_booking` would.
    pub async fn quote(
        &self,
        car_id: Uuid,
        window: TimeWindow,
        return_branch: Option<&str>,
        extras: &[Extra],
    ) -> Result<Quote, BookingFlowError> {
        let car = self.load_car(car_id).await?;
        self.price(&car.state, window, return_branch, extras)
    }

    /// What cancelling `booking` at `now` costs: nothing while HELD (nothing was paid), then
    /// the policy's fee (free until `free_cancellation_hours` before pick-up, one day's rate
    /// after).
    pub fn cancellation_fee(
        &self,
        booking: &Booking,
        now: DateTime<Utc>,
    ) -> Result<Money, BookingFlowError> {
        let window = booking.window.ok_or(BookingFlowError::BookingNotFound)?;
        let total = booking.total.ok_or(BookingFlowError::BookingNotFound)?;
        if booking.status == Some(BookingStatus::Held) {
            return Ok(Money::zero(total.currency));
        }
        let rate = booking.daily_rate().unwrap_or(Money::zero(total.currency));
        Ok(pricing::cancellation_fee(
            rate,
            window.start,
            now,
            &self.config.pricing,
        ))
    }

    fn price(
        &self,
        car: &Car,
        window: TimeWindow,
        return_branch: Option<&str>,
        extras: &[Extra],
    ) -> Result<Quote, BookingFlowError> {
        let rate = car.daily_rate.ok_or(BookingFlowError::CarNotFound)?;
        let one_way = return_branch.is_some_and(|r| Some(r) != car.branch.as_deref());
        Ok(pricing::quote(
            rate,
            window.start,
            window.end,
            one_way,
            extras,
            &self.config.pricing,
        )?)
    }

    /// The turnaround of the branch `code` (minutes a car returned there stays out for
    /// cleaning) and the currency it set for its cars, if it did; `None` when there is no such
    /// branch.
    async fn branch_settings(
        &self,
        code: &str,
    ) -> Result<Option<(i64, Option<String>)>, BookingFlowError> {
        let row: Option<(i32, Option<String>)> =
            sqlx::query_as("SELECT turnaround_minutes, currency FROM branches WHERE code = $1")
                .bind(code)
                .fetch_optional(self.store.pool())
                .await?;
        Ok(row.map(|(minutes, currency)| (i64::from(minutes), currency)))
    }

    /// The turnaround after a rental returned to `code`: the branch's, or the one every
    /// reservation had before it was per branch for a code missing from the table (a car
    /// registered by an import that never added its branch).
    async fn turnaround_at(&self, code: &str) -> Result<i64, BookingFlowError> {
        Ok(self
            .branch_settings(code)
            .await?
            .map_or(domain::car::LEGACY_TURNAROUND_MINUTES, |(minutes, _)| {
                minutes
            }))
    }

    /// The turnaround after `booking`: that of the branch it returns the car to.
    async fn turnaround_after(&self, booking: &Booking) -> Result<i64, BookingFlowError> {
        match booking
            .return_branch
            .as_deref()
            .or(booking.pickup_branch.as_deref())
        {
            Some(code) => self.turnaround_at(code).await,
            None => Ok(domain::car::LEGACY_TURNAROUND_MINUTES),
        }
    }

    async fn load_car(&self, car_id: Uuid) -> Result<Loaded<Car>, BookingFlowError> {
        let car = self.cars.load(&car_id.to_string()).await?;
        if car.state.id.is_none() {
            return Err(BookingFlowError::CarNotFound);
        }
        Ok(car)
    }

    async fn load_booking(&self, booking_id: Uuid) -> Result<Loaded<Booking>, BookingFlowError> {
        let booking = self.bookings.load(&booking_id.to_string()).await?;
        if booking.state.status.is_none() {
            return Err(BookingFlowError::BookingNotFound);
        }
        Ok(booking)
    }

    /// Reserve the car and hold a booking for `customer`, atomically. With an idempotency key,
    /// the same key from the same customer returns the first booking instead of a second one.
    #[tracing::instrument(skip_all, fields(car.id = %request.car_id), err(level = "debug"))]
    pub async fn request_booking(
        &self,
        ctx: &CommandContext,
        customer_id: Uuid,
        request: BookingRequest,
        idempotency_key: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<BookingView, BookingFlowError> {
        if let Some(key) = idempotency_key
            && (key.is_empty() || key.len() > 200)
        {
            return Err(BookingFlowError::Invalid {
                field: "idempotencyKey",
                reason: "must be 1 to 200 characters".into(),
            });
        }
        let booking_id =
            idempotency_key.map_or_else(Uuid::now_v7, |key| booking_id_for(customer_id, key));
        if idempotency_key.is_some()
            && let Some(existing) = self.existing_for(booking_id, customer_id).await?
        {
            return Ok(existing);
        }
        let _guard = self
            .lock
            .acquire(request.car_id, self.config.lock_ttl, self.config.lock_wait)
            .await;
        let held_until = now + self.config.hold_ttl;
        let result = self
            .transact(ctx, || async {
                let car = self.load_car(request.car_id).await?;
                let branch = car.state.branch.clone().unwrap_or_default();
                let pickup_branch = request
                    .pickup_branch
                    .clone()
                    .unwrap_or_else(|| branch.clone());
                if pickup_branch != branch {
                    return Err(BookingFlowError::Invalid {
                        field: "pickupBranchCode",
                        reason: format!("the car is at branch {branch}"),
                    });
                }
                let return_branch = request
                    .return_branch
                    .clone()
                    .unwrap_or_else(|| pickup_branch.clone());
                let turnaround = match self.branch_settings(&return_branch).await? {
                    // A car priced in one currency is not left where prices are in another.
                    Some((_, Some(currency)))
                        if return_branch != pickup_branch
                            && car
                                .state
                                .daily_rate
                                .is_some_and(|r| r.currency.as_str() != currency) =>
                    {
                        return Err(BookingFlowError::Invalid {
                            field: "returnBranchCode",
                            reason: format!(
                                "branch {return_branch} prices in {currency}, this car in {}",
                                car.state
                                    .daily_rate
                                    .map_or_else(String::new, |r| r.currency.to_string())
                            ),
                        });
                    }
                    Some((minutes, _)) => minutes,
                    None if return_branch == pickup_branch => {
                        domain::car::LEGACY_TURNAROUND_MINUTES
                    }
                    None => {
                        return Err(BookingFlowError::Invalid {
                            field: "returnBranchCode",
                            reason: format!("no branch {return_branch:?}"),
                        });
                    }
                };
                let quote = self.price(
                    &car.state,
                    request.window,
                    Some(&return_branch),
                    &request.extras,
                )?;
                let car_id = request.car_id.to_string();
                let reserve = CarCommand::Reserve {
                    booking_id,
                    window: request.window,
                    turnaround_minutes: turnaround,
                    now,
                };
                let (_, car_append) = self.cars.decide(&car_id, &car, reserve).await?;
                let hold = BookingCommand::Request {
                    booking_id,
                    customer_id,
                    car_id: request.car_id,
                    window: request.window,
                    pickup_branch,
                    return_branch,
                    quote,
                    held_until,
                    now,
                };
                let empty = Loaded {
                    state: Booking::default(),
                    head: eventstore::StreamHead::EMPTY,
                    snapshot_version: None,
                };
                let (after, booking_append) = self
                    .bookings
                    .decide(&booking_id.to_string(), &empty, hold)
                    .await?;
                let expire = Step {
                    kind: "expire_hold",
                    booking_id,
                    payload: json!({}),
                    due_at: held_until,
                };
                Ok((
                    after,
                    [car_append, booking_append].into_iter().flatten().collect(),
                    vec![expire],
                ))
            })
            .await;
        match result {
            Ok((state, events)) => {
                crate::crash_point!("booking.requested");
                self.cars.forget(&request.car_id.to_string()).await;
                Ok(self.view(booking_id, state, events))
            }
            // A concurrent retry with the same key won the race: answer with its booking.
            Err(e) if idempotency_key.is_some() => {
                match self.existing_for(booking_id, customer_id).await? {
                    Some(existing) => Ok(existing),
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn existing_for(
        &self,
        booking_id: Uuid,
        customer_id: Uuid,
    ) -> Result<Option<BookingView>, BookingFlowError> {
        let loaded = self.bookings.load(&booking_id.to_string()).await?;
        if loaded.state.status.is_none() {
            return Ok(None);
        }
        if loaded.state.customer_id != Some(customer_id) {
            return Err(BookingFlowError::Invalid {
                field: "idempotencyKey",
                reason: "already used".into(),
            });
        }
        Ok(Some(self.view(booking_id, loaded, Vec::new())))
    }

    fn view(&self, id: Uuid, loaded: Loaded<Booking>, events: Vec<RecordedEvent>) -> BookingView {
        BookingView {
            id,
            version: loaded.head.version,
            state: loaded.state,
            events,
        }
    }

    /// A car's current state.
    pub async fn car(&self, car_id: Uuid) -> Result<Car, BookingFlowError> {
        Ok(self.load_car(car_id).await?.state)
    }

    /// The cars' executor (staff's commands on a car alone).
    pub fn cars(&self) -> &Executor<Car> {
        &self.cars
    }

    /// The booking's current state.
    pub async fn get(&self, booking_id: Uuid) -> Result<BookingView, BookingFlowError> {
        let loaded = self.load_booking(booking_id).await?;
        Ok(self.view(booking_id, loaded, Vec::new()))
    }

    /// Run a command on the booking and one on its car, in one append; retried on conflicts.
    async fn booking_and_car(
        &self,
        ctx: &CommandContext,
        booking_id: Uuid,
        booking_command: impl Fn(&Booking) -> Result<BookingCommand, BookingFlowError>,
        car_command: impl Fn(&Booking) -> Option<CarCommand>,
        steps: impl Fn(&Booking) -> Vec<Step>,
    ) -> Result<BookingView, BookingFlowError> {
        let (state, events) = self
            .transact(ctx, || async {
                let booking = self.load_booking(booking_id).await?;
                let command = booking_command(&booking.state)?;
                let (after, booking_append) = self
                    .bookings
                    .decide(&booking_id.to_string(), &booking, command)
                    .await?;
                let mut appends: Vec<StreamAppend> = booking_append.into_iter().collect();
                if appends.is_empty() {
                    return Ok((after, appends, Vec::new()));
                }
                if let (Some(car_id), Some(car_command)) =
                    (booking.state.car_id, car_command(&booking.state))
                {
                    let car = self.load_car(car_id).await?;
                    let (_, car_append) = self
                        .cars
                        .decide(&car_id.to_string(), &car, car_command)
                        .await?;
                    appends.extend(car_append);
                }
                let steps = steps(&after.state);
                Ok((after, appends, steps))
            })
            .await?;
        if let Some(car_id) = state.state.car_id {
            self.cars.forget(&car_id.to_string()).await;
        }
        self.bookings.forget(&booking_id.to_string()).await;
        Ok(self.view(booking_id, state, events))
    }

    /// Cancel a HELD or CONFIRMED booking and release the car; a paid booking is refunded what
    /// exceeds the cancellation fee (free until the policy's cut-off before pickup).
    pub async fn cancel(
        &self,
        ctx: &CommandContext,
        booking_id: Uuid,
        by: CancelledBy,
        reason: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<BookingView, BookingFlowError> {
        self.booking_and_car(
            ctx,
            booking_id,
            |b| {
                let fee = self.cancellation_fee(b, now)?;
                Ok(BookingCommand::Cancel {
                    by,
                    reason: reason.clone(),
                    fee,
                    now,
                })
            },
            |_| Some(CarCommand::Release { booking_id, now }),
            |after| refund_beyond(after, booking_id, after.cancellation_fee, now),
        )
        .await
    }

    /// Expire a HELD booking whose hold has ended and release the car (the worker's step).
    pub async fn expire(
        &self,
        ctx: &CommandContext,
        booking_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<BookingView, BookingFlowError> {
        self.booking_and_car(
            ctx,
            booking_id,
            |_| Ok(BookingCommand::Expire { now }),
            |_| Some(CarCommand::Release { booking_id, now }),
            |_| Vec::new(),
        )
        .await
    }

    /// Move a booking to a new window on the same car, re-priced; the old window is released
    /// only if the new one is reserved (one append).
    pub async fn modify(
        &self,
        ctx: &CommandContext,
        booking_id: Uuid,
        window: TimeWindow,
        now: DateTime<Utc>,
    ) -> Result<BookingView, BookingFlowError> {
        self.modify_with(ctx, booking_id, window, None, now).await
    }

    /// [`modify`](Self::modify), also replacing the booking's extras when `extras` is given
    /// (kept otherwise); the booking is priced again either way.
    pub async fn modify_with(
        &self,
        ctx: &CommandContext,
        booking_id: Uuid,
        window: TimeWindow,
        extras: Option<Vec<Extra>>,
        now: DateTime<Utc>,
    ) -> Result<BookingView, BookingFlowError> {
        let booking = self.load_booking(booking_id).await?;
        let car_id = booking
            .state
            .car_id
            .ok_or(BookingFlowError::BookingNotFound)?;
        let car = self.load_car(car_id).await?;
        let extras = extras.unwrap_or_else(|| booking.state.extras().to_vec());
        let quote = self.price(
            &car.state,
            window,
            booking.state.return_branch.as_deref(),
            &extras,
        )?;
        let turnaround = self.turnaround_after(&booking.state).await?;
        self.booking_and_car(
            ctx,
            booking_id,
            |_| {
                Ok(BookingCommand::Modify {
                    window,
                    quote: quote.clone(),
                    now,
                })
            },
            // Only the extras changed: the car's reservation stays as it is.
            |before| {
                (before.window != Some(window)).then_some(CarCommand::ChangeReservation {
                    booking_id,
                    window,
                    turnaround_minutes: turnaround,
                    now,
                })
            },
            // A paid booking's new total is settled (also an active rental's, extended or
            // shortened): the difference charged or refunded.
            |after| {
                if !matches!(
                    after.status,
                    Some(BookingStatus::Confirmed | BookingStatus::Active)
                ) {
                    return Vec::new();
                }
                vec![Step {
                    kind: "settle_balance",
                    booking_id,
                    payload: json!({}),
                    due_at: now,
                }]
            },
        )
        .await
    }

    /// Staff moves a booking that has not started to another car, for the same window at the
    /// same price (an upgrade is on the house): the new car must be at the booking's pick-up
    /// branch and free for the window; its reservation, the old car's release and the
    /// booking's `BookingReassigned` are one append.
    pub async fn reassign(
        &self,
        ctx: &CommandContext,
        booking_id: Uuid,
        to_car: Uuid,
        reason: String,
        now: DateTime<Utc>,
    ) -> Result<BookingView, BookingFlowError> {
        let (state, events) = self
            .transact(ctx, || async {
                let booking = self.load_booking(booking_id).await?;
                let turnaround = self.turnaround_after(&booking.state).await?;
                let from_car = booking
                    .state
                    .car_id
                    .ok_or(BookingFlowError::BookingNotFound)?;
                let window = booking
                    .state
                    .window
                    .ok_or(BookingFlowError::BookingNotFound)?;
                let (after, booking_append) = self
                    .bookings
                    .decide(
                        &booking_id.to_string(),
                        &booking,
                        BookingCommand::Reassign {
                            car_id: to_car,
                            reason: reason.clone(),
                            now,
                        },
                    )
                    .await?;
                let car = self.load_car(to_car).await?;
                let pickup = booking.state.pickup_branch.clone().unwrap_or_default();
                let at = car.state.branch.clone().unwrap_or_default();
                if at != pickup {
                    return Err(BookingFlowError::Car(CarError::Elsewhere { at, pickup }));
                }
                let class = |c: &Car| c.details.as_ref().map(|d| d.class);
                if class(&car.state) != class(&self.load_car(from_car).await?.state) {
                    return Err(BookingFlowError::Invalid {
                        field: "carId",
                        reason: "the new car must be of the booking's class".into(),
                    });
                }
                let (_, reserve) = self
                    .cars
                    .decide(
                        &to_car.to_string(),
                        &car,
                        CarCommand::Reserve {
                            booking_id,
                            window,
                            turnaround_minutes: turnaround,
                            now,
                        },
                    )
                    .await?;
                // Back to the car it lost (relocated home): nothing to release.
                let release = if from_car == to_car {
                    None
                } else {
                    let old = self.load_car(from_car).await?;
                    self.cars
                        .decide(
                            &from_car.to_string(),
                            &old,
                            CarCommand::Release { booking_id, now },
                        )
                        .await?
                        .1
                };
                let appends: Vec<StreamAppend> = booking_append
                    .into_iter()
                    .chain(reserve)
                    .chain(release)
                    .collect();
                Ok((after, appends, Vec::new()))
            })
            .await?;
        if let Some(from) = events
            .iter()
            .find(|e| e.aggregate_type == "car" && e.event_type == "ReservationReleased")
        {
            self.cars.forget(&from.aggregate_id).await;
        }
        self.cars.forget(&to_car.to_string()).await;
        self.bookings.forget(&booking_id.to_string()).await;
        Ok(self.view(booking_id, state, events))
    }

    /// The worker's `rehome` step, after a booking lost its car (urgent maintenance, a car
    /// left at another branch): move it to a spare car of its class at its pick-up branch,
    /// free over its window, at the price booked (`reassign`), trying the cars `spares`
    /// proposes in turn. The car it moved to; `None` when it no longer needs one or no spare
    /// took it (it then stays displaced, for staff). Idempotent.
    pub async fn rehome(
        &self,
        ctx: &CommandContext,
        booking_id: Uuid,
        spares: &dyn SpareCars,
        now: DateTime<Utc>,
    ) -> Result<Option<Uuid>, BookingFlowError> {
        let booking = self.load_booking(booking_id).await?;
        let state = &booking.state;
        let waiting = matches!(
            state.status,
            Some(BookingStatus::Held | BookingStatus::Confirmed)
        );
        let (true, true, Some(lost), Some(window), Some(total)) = (
            state.displaced,
            waiting,
            state.car_id,
            state.window,
            state.total,
        ) else {
            return Ok(None);
        };
        let class = self
            .load_car(lost)
            .await?
            .state
            .details
            .as_ref()
            .and_then(|d| serde_json::to_value(d.class).ok())
            .and_then(|v| v.as_str().map(str::to_owned))
            .ok_or(BookingFlowError::CarNotFound)?;
        let branch = state.pickup_branch.clone().unwrap_or_default();
        let wanted = SpareCarWanted {
            branch: branch.clone(),
            class,
            currency: total.currency.as_str().to_owned(),
            window,
            turnaround_minutes: self.turnaround_after(state).await?,
            exclude: lost,
            limit: 10,
        };
        let reason = format!("moved automatically to a free car of its class at {branch}");
        for candidate in spares.spare_cars(&wanted).await? {
            match self
                .reassign(ctx, booking_id, candidate, reason.clone(), now)
                .await
            {
                Ok(_) => return Ok(Some(candidate)),
                // Taken since the read side looked, or not what it seemed: the next one.
                Err(BookingFlowError::Car(_) | BookingFlowError::Invalid { .. }) => {}
                // Moved or ended meanwhile: nothing left to do.
                Err(BookingFlowError::Booking(_)) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// After a car came back to another branch than it left from (the worker's
    /// `strand_check` step, stored with the return): each later booking that expects it at
    /// another branch loses it (`BookingDisplaced`, and the car's `ReservationReleased`, one
    /// append per booking), so staff find it in the list of bookings without a car instead of
    /// at the counter. Idempotent. The bookings displaced.
    pub async fn displace_stranded(
        &self,
        ctx: &CommandContext,
        returned_booking: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Vec<Uuid>, BookingFlowError> {
        let returned = self.load_booking(returned_booking).await?;
        let car_id = returned
            .state
            .car_id
            .ok_or(BookingFlowError::BookingNotFound)?;
        let car = self.load_car(car_id).await?;
        let at = car.state.branch.clone().unwrap_or_default();
        let later: Vec<Uuid> = car
            .state
            .blocks
            .iter()
            .filter_map(domain::car::Block::booking)
            .filter(|b| *b != returned_booking)
            .collect();
        let mut displaced = Vec::new();
        for booking_id in later {
            let booking = self.load_booking(booking_id).await?;
            let expects = booking.state.pickup_branch.clone().unwrap_or_default();
            let waiting = matches!(
                booking.state.status,
                Some(BookingStatus::Held | BookingStatus::Confirmed)
            );
            if !waiting || expects == at || booking.state.displaced {
                continue;
            }
            let reason = format!("the car was returned to {at}, not to {expects}");
            self.booking_and_car(
                ctx,
                booking_id,
                |_| {
                    Ok(BookingCommand::Displace {
                        reason: reason.clone(),
                        now,
                    })
                },
                |_| Some(CarCommand::Release { booking_id, now }),
                |_| vec![rehome_step(booking_id, now)],
            )
            .await?;
            displaced.push(booking_id);
        }
        Ok(displaced)
    }

    /// Take a car out for maintenance over `window`. `urgent` (a breakdown, a recall), the
    /// bookings that have not started over it lose the car in the same append
    /// (`BookingDisplaced`, each waiting for staff to reassign it); otherwise the window
    /// must be free. The car's events and the displaced bookings' ids.
    pub async fn schedule_maintenance(
        &self,
        ctx: &CommandContext,
        car_id: Uuid,
        window: TimeWindow,
        reason: String,
        urgent: bool,
        now: DateTime<Utc>,
    ) -> Result<(Vec<RecordedEvent>, Vec<Uuid>), BookingFlowError> {
        let maintenance_id = Uuid::now_v7();
        let (displaced, events) = self
            .transact_any(ctx, || async {
                let car = self.load_car(car_id).await?;
                // Maintenance ends where the car stands: that branch's turnaround follows it.
                let turnaround = match car.state.branch.as_deref() {
                    Some(code) => self.turnaround_at(code).await?,
                    None => domain::car::LEGACY_TURNAROUND_MINUTES,
                };
                let (_, car_append) = self
                    .cars
                    .decide(
                        &car_id.to_string(),
                        &car,
                        CarCommand::ScheduleMaintenance {
                            maintenance_id,
                            window,
                            reason: reason.clone(),
                            turnaround_minutes: turnaround,
                            urgent,
                            now,
                        },
                    )
                    .await?;
                // The reservations the urgent maintenance dropped (as its event lists them).
                let displaced = if urgent {
                    car.state.bookings_displaced_by(&window, turnaround)
                } else {
                    Vec::new()
                };
                let mut appends: Vec<StreamAppend> = car_append.into_iter().collect();
                for booking_id in &displaced {
                    let booking = self.load_booking(*booking_id).await?;
                    let (_, append) = self
                        .bookings
                        .decide(
                            &booking_id.to_string(),
                            &booking,
                            BookingCommand::Displace {
                                reason: reason.clone(),
                                now,
                            },
                        )
                        .await?;
                    appends.extend(append);
                }
                let steps = displaced
                    .iter()
                    .map(|booking_id| rehome_step(*booking_id, now))
                    .collect();
                Ok((displaced, appends, steps))
            })
            .await?;
        self.cars.forget(&car_id.to_string()).await;
        for booking_id in &displaced {
            self.bookings.forget(&booking_id.to_string()).await;
        }
        Ok((events, displaced))
    }

    /// Staff hands the car over. Earlier than the desk's allowance before the booked time
    /// (`early_pickup_minutes`), the car must be free until then; the rental then runs from
    /// now, re-priced, and a paid booking's difference is charged (`settle_balance`).
    pub async fn pick_up(
        &self,
        ctx: &CommandContext,
        booking_id: Uuid,
        odometer_km: f64,
        fuel_percent: f64,
        now: DateTime<Utc>,
    ) -> Result<BookingView, BookingFlowError> {
        let booking = self.load_booking(booking_id).await?;
        let early = booking.state.window.filter(|w| {
            booking.state.status == Some(BookingStatus::Confirmed)
                && now < w.start - Duration::minutes(self.config.early_pickup_minutes.max(0))
        });
        let from_now = match (early, booking.state.car_id) {
            (Some(window), Some(car_id)) => {
                let car = self.load_car(car_id).await?;
                let extended =
                    TimeWindow::new(now, window.end).map_err(|_| BookingFlowError::Invalid {
                        field: "pickupAt",
                        reason: "the pick-up must be before the booked return".into(),
                    })?;
                Some(self.price(
                    &car.state,
                    extended,
                    booking.state.return_branch.as_deref(),
                    booking.state.extras(),
                )?)
            }
            _ => None,
        };
        self.booking_and_car(
            ctx,
            booking_id,
            |_| {
                Ok(BookingCommand::PickUp {
                    odometer_km,
                    fuel_percent,
                    from_now: from_now.clone(),
                    now,
                })
            },
            |booking| {
                Some(CarCommand::HandOver {
                    booking_id,
                    odometer_km,
                    early_minutes: self.config.early_pickup_minutes,
                    pickup_branch: booking.pickup_branch.clone().unwrap_or_default(),
                    now,
                })
            },
            // If the car is not back by the return time and its grace, the worker flags it; a
            // rental re-priced by an early pick-up settles its difference.
            |after| {
                let mut steps = Vec::new();
                if let Some(window) = after.window {
                    steps.push(Step {
                        kind: "overdue",
                        booking_id,
                        payload: json!({}),
                        due_at: window.end
                            + Duration::minutes(self.config.pricing.grace_minutes.max(0)),
                    });
                }
                if from_now.is_some() {
                    steps.push(Step {
                        kind: "settle_balance",
                        booking_id,
                        payload: json!({}),
                        due_at: now,
                    });
                }
                steps
            },
        )
        .await
    }

    /// Staff takes the car back: late-return and refuelling charges (and, by the policy, an
    /// early return's credit) are added to the total; a paid booking's difference is then
    /// charged or refunded (`settle_balance`).
    pub async fn return_car(
        &self,
        ctx: &CommandContext,
        booking_id: Uuid,
        odometer_km: f64,
        fuel_percent: f64,
        branch: String,
        now: DateTime<Utc>,
    ) -> Result<BookingView, BookingFlowError> {
        let policy = self.config.pricing.clone();
        self.booking_and_car(
            ctx,
            booking_id,
            |b| {
                let window = b.window.ok_or(BookingFlowError::BookingNotFound)?;
                let rate = b.daily_rate().ok_or(BookingFlowError::BookingNotFound)?;
                let charges = pricing::return_charges(
                    &pricing::RentalReturn {
                        daily_rate: rate,
                        booked_from: window.start,
                        booked_until: window.end,
                        booked_total: b.total.ok_or(BookingFlowError::BookingNotFound)?,
                        one_way: b.pickup_branch.is_some() && b.pickup_branch != b.return_branch,
                        returned: now,
                        fuel_out_percent: b.pickup_fuel_percent.unwrap_or(100.0),
                        fuel_in_percent: fuel_percent,
                        odometer_out_km: b.pickup_odometer_km.unwrap_or(0.0),
                        odometer_in_km: odometer_km,
                        extras: b.extras().to_vec(),
                        mileage: b.quote.as_ref().and_then(|q| q.mileage),
                    },
                    &policy,
                )?;
                Ok(BookingCommand::Return {
                    odometer_km,
                    fuel_percent,
                    branch: branch.clone(),
                    charges,
                    now,
                })
            },
            |_| {
                Some(CarCommand::TakeBack {
                    booking_id,
                    odometer_km,
                    branch: branch.clone(),
                    now,
                })
            },
            // Fees found at return are charged to the payment method saved at booking; a car
            // back at another branch than it left from may strand its later bookings.
            |after| {
                let mut steps = Vec::new();
                if !after.extra_charges.is_empty() {
                    steps.push(Step {
                        kind: "settle_balance",
                        booking_id,
                        payload: json!({}),
                        due_at: now,
                    });
                }
                if after.pickup_branch.as_deref() != Some(branch.as_str()) {
                    steps.push(Step {
                        kind: "strand_check",
                        booking_id,
                        payload: json!({}),
                        due_at: now,
                    });
                }
                steps
            },
        )
        .await
        .inspect(|_| {
            crate::crash_point!("booking.returned");
        })
    }

    /// The customer rates a completed rental.
    pub async fn submit_feedback(
        &self,
        ctx: &CommandContext,
        booking_id: Uuid,
        rating: i32,
        comment: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<BookingView, BookingFlowError> {
        let id = booking_id.to_string();
        self.load_booking(booking_id).await?;
        let done = self
            .bookings
            .execute(
                &id,
                BookingCommand::SubmitFeedback {
                    rating,
                    comment,
                    now,
                },
                ctx,
            )
            .await?;
        let loaded = self.bookings.load(&id).await?;
        Ok(self.view(booking_id, loaded, done.events))
    }

    /// Confirm a HELD booking after its payment was captured.
    pub async fn confirm(
        &self,
        ctx: &CommandContext,
        booking_id: Uuid,
        payment_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<BookingView, BookingFlowError> {
        let grace = self.config.no_show_grace_minutes;
        self.booking_and_car(
            ctx,
            booking_id,
            |_| Ok(BookingCommand::Confirm { payment_id, now }),
            |_| None,
            // If nobody comes by the pick-up time and its grace, the worker marks a no-show.
            |after| match after.window {
                Some(window) => vec![Step {
                    kind: "no_show",
                    booking_id,
                    payload: json!({}),
                    due_at: window.start + Duration::minutes(grace.max(0)),
                }],
                None => Vec::new(),
            },
        )
        .await
    }

    /// The worker's `no_show` step: a paid booking nobody picked up by its time and grace is a
    /// no-show. The car is released at once, the no-show fee (the policy's late-cancellation
    /// fee: one day's rate) is kept and the rest refunded.
    pub async fn mark_no_show(
        &self,
        ctx: &CommandContext,
        booking_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<BookingView, BookingFlowError> {
        let policy = self.config.pricing.clone();
        let grace = self.config.no_show_grace_minutes;
        self.booking_and_car(
            ctx,
            booking_id,
            |b| {
                let window = b.window.ok_or(BookingFlowError::BookingNotFound)?;
                let total = b.total.ok_or(BookingFlowError::BookingNotFound)?;
                let rate = b.daily_rate().unwrap_or(Money::zero(total.currency));
                Ok(BookingCommand::MarkNoShow {
                    fee: pricing::cancellation_fee(rate, window.start, now, &policy),
                    grace_minutes: grace,
                    now,
                })
            },
            |_| Some(CarCommand::Release { booking_id, now }),
            |after| refund_beyond(after, booking_id, after.no_show_fee, now),
        )
        .await
    }

    /// The worker's `overdue` step: a rental whose car is not back by its return time and the
    /// grace is marked overdue, for staff to follow up.
    pub async fn mark_overdue(
        &self,
        ctx: &CommandContext,
        booking_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<BookingView, BookingFlowError> {
        let grace = self.config.pricing.grace_minutes;
        self.booking_and_car(
            ctx,
            booking_id,
            |_| {
                Ok(BookingCommand::MarkOverdue {
                    grace_minutes: grace,
                    now,
                })
            },
            |_| None,
            |_| Vec::new(),
        )
        .await
    }

    /// Load, decide and append (with follow-up steps) in one transaction, retrying conflicts.
    async fn transact<F, Fut>(
        &self,
        ctx: &CommandContext,
        attempt: F,
    ) -> Result<(Loaded<Booking>, Vec<RecordedEvent>), BookingFlowError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<
                Output = Result<(Loaded<Booking>, Vec<StreamAppend>, Vec<Step>), BookingFlowError>,
            >,
    {
        let (mut after, events) = self.transact_any(ctx, attempt).await?;
        if let Some(head) = events
            .iter()
            .rev()
            .find(|e| e.aggregate_type == "booking")
            .and_then(RecordedEvent::head)
        {
            after.head = head;
        }
        Ok((after, events))
    }

    /// Decide and append (with `steps`) until the append is not a version conflict: the
    /// decision is remade on the reloaded streams, up to the retry policy's attempts.
    async fn transact_any<T, F, Fut>(
        &self,
        ctx: &CommandContext,
        attempt: F,
    ) -> Result<(T, Vec<RecordedEvent>), BookingFlowError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<
                Output = Result<(T, Vec<StreamAppend>, Vec<Step>), BookingFlowError>,
            >,
    {
        let policy = &self.config.retry;
        let metadata = ctx.metadata();
        let mut tries = 1;
        loop {
            let (after, appends, steps) = attempt().await?;
            if appends.is_empty() {
                return Ok((after, Vec::new()));
            }
            match self.append_with_steps(&appends, &steps, &metadata).await {
                Ok(events) => return Ok((after, events)),
                Err(BookingFlowError::Store(EventStoreError::OptimisticConcurrency { .. }))
                    if tries < policy.max_attempts =>
                {
                    tokio::time::sleep(policy.delay(tries)).await;
                    tries += 1;
                }
                Err(BookingFlowError::Store(EventStoreError::OptimisticConcurrency { .. })) => {
                    return Err(BookingFlowError::Contended(tries));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn append_with_steps(
        &self,
        appends: &[StreamAppend],
        steps: &[Step],
        metadata: &eventstore::EventMetadata,
    ) -> Result<Vec<RecordedEvent>, BookingFlowError> {
        let mut tx = self.store.pool().begin().await?;
        let events = self.store.append_in(&mut tx, appends, metadata).await?;
        for step in steps {
            sqlx::query("INSERT INTO workflow_steps (id, kind, booking_id, payload, due_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(Uuid::now_v7())
                .bind(step.kind)
                .bind(step.booking_id)
                .bind(&step.payload)
                .bind(step.due_at)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.store.wake_subscribers();
        Ok(events)
    }
}
