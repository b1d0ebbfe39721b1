//! Mutations: each runs one command service, then answers from the read models once the
//! projections that back the answer have applied the command (read-your-writes).

use async_graphql::{Context, Object};
use chrono::{DateTime, Utc};
use commands::CommandContext;
use commands::accounts::{ProfileUpdate, RegisterInput as AccountsRegister, Role as AccountRole};
use commands::booking::BookingRequest;
use commands::branches::{BranchInput as NewBranch, BranchPatch};
use domain::booking::CancelledBy;
use domain::car::{CarCommand, CarDetails, CarDetailsPatch};
use domain::telemetry::{GeoPoint as DomainPoint, Reading, TelemetryCommand, TelemetryEvent};
use domain::{Currency, Money as DomainMoney, TimeWindow};
use eventstore::{Checkpoint, RecordedEvent};
use uuid::Uuid;

use super::rows;
use super::scalars::Decimal;
use super::types::*;
use super::{services, text_arg};
use crate::auth::{self, caller};
use crate::error::{ApiResult, AppError};
use crate::services::{Services, last_checkpoint, projections as p};

fn context(ctx: &Context<'_>) -> ApiResult<CommandContext> {
    Ok(CommandContext::new(caller(ctx)?.actor()))
}

/// The position to wait for: the command's last event, or (when it wrote nothing, e.g. an
/// idempotent retry) everything committed so far.
async fn target(s: &Services, events: &[RecordedEvent]) -> ApiResult<Option<Checkpoint>> {
    match last_checkpoint(events) {
        Some(c) => Ok(Some(c)),
        None => Ok(Some(s.store.committed_head().await?)),
    }
}

/// The car as the command left it: from the read models once they have applied the command,
/// or else from the Car aggregate itself (what the command decided: details, rate, branch,
/// status by the domain's own rule), with the rating and odometer the search model last had
/// (no car command changes them), and a note that the read side is behind.
async fn car_after(
    ctx: &Context<'_>,
    s: &Services,
    id: Uuid,
    events: &[RecordedEvent],
) -> ApiResult<Car> {
    let behind = s
        .projections_behind(p::CARS, target(s, events).await?)
        .await?;
    let stale = rows::car(s.store.pool(), id).await?;
    if behind.is_empty() {
        return stale.map(Car).ok_or_else(|| AppError::not_found("car"));
    }
    crate::read_side::behind(ctx, &behind);
    let car = s.cars.load(&id.to_string()).await?.state;
    let (Some(details), Some(rate)) = (car.details.as_ref(), car.daily_rate) else {
        return Err(AppError::not_found("car"));
    };
    use projections::search::enum_name as name;
    Ok(Car(rows::CarRow {
        car_id: id,
        make: details.make.clone(),
        model: details.model.clone(),
        year: details.year,
        class: name(&details.class),
        seats: i32::from(details.seats),
        transmission: name(&details.transmission),
        fuel: name(&details.fuel),
        features: details.features.clone(),
        daily_rate_minor: rate.minor,
        currency: rate.currency.as_str().to_owned(),
        branch_code: car.branch.clone().unwrap_or_default(),
        odometer_km: match (car.odometer_km, stale.as_ref().and_then(|r| r.odometer_km)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        },
        rating_sum: stale.as_ref().map_or(0, |r| r.rating_sum),
        review_count: stale.as_ref().map_or(0, |r| r.review_count),
        status: name(&car.status_at(Utc::now())),
    }))
}

/// The booking as the command left it: read back from the read model once it has applied the
/// command, or else (it lags, or has stopped) from the log: the booking's stream, and the
/// command's own payment events, folded exactly as the history projection folds them, with a
/// note in the answer that the read side is behind. A committed command is never answered as
/// a failure. (A HELD booking's `payment_id`, set by a payment request of an earlier command,
/// is the one field the booking's own stream does not carry.)
async fn booking_after(
    ctx: &Context<'_>,
    s: &Services,
    id: Uuid,
    events: &[RecordedEvent],
) -> ApiResult<Booking> {
    let behind = s
        .projections_behind(p::BOOKINGS, target(s, events).await?)
        .await?;
    if behind.is_empty() {
        return rows::booking(s.store.pool(), id)
            .await?
            .map(Booking)
            .ok_or_else(|| AppError::not_found("booking"));
    }
    crate::read_side::behind(ctx, &behind);
    let stream = eventstore::StreamId::new("booking", id.to_string());
    let mut log = s.store.read_stream(&stream, 1, None).await?;
    log.extend(
        events
            .iter()
            .filter(|e| e.aggregate_type == "payment")
            .cloned(),
    );
    projections::history::booking_from_events(id, &log)
        .map_err(folding_failed)?
        .map(Booking)
        .ok_or_else(|| AppError::not_found("booking"))
}

/// The payment as it stands, read back as [`booking_after`] reads a booking.
async fn payment_after(ctx: &Context<'_>, s: &Services, id: Uuid) -> ApiResult<Payment> {
    let head = s.store.committed_head().await?;
    let behind = s.projections_behind(p::PAYMENTS, Some(head)).await?;
    if behind.is_empty() {
        return rows::payment(s.store.pool(), id)
            .await?
            .map(Payment)
            .ok_or_else(|| AppError::not_found("payment"));
    }
    crate::read_side::behind(ctx, &behind);
    let stream = eventstore::StreamId::new("payment", id.to_string());
    let log = s.store.read_stream(&stream, 1, None).await?;
    projections::history::payment_from_events(id, &log)
        .map_err(folding_failed)?
        .map(Payment)
        .ok_or_else(|| AppError::not_found("payment"))
}

/// An event of the log that its own projection's fold refuses: a defect, logged in full.
fn folding_failed(e: projections::ApplyError) -> AppError {
    tracing::error!(error = %e, "the log's events did not fold into a read-model row");
    AppError::Internal
}

/// A currency new prices may be set in here: ISO 4217, with as many decimals as the fleet's
/// (the pricing policy's fees are minor units of whatever a car is priced in).
fn priced_in(s: &Services, code: &str) -> ApiResult<Currency> {
    let currency =
        Currency::accept(code).map_err(|e| AppError::bad_input("currency", e.to_string()))?;
    let fleet = s.bookings.config().fleet_currency;
    if currency.exponent() != fleet.exponent() {
        return Err(AppError::bad_input(
            "currency",
            format!(
                "{currency} has {} decimal(s) and the fleet's {fleet} {}: the fees of the \
                 pricing policy, set in the fleet's minor units, would be off by a power of ten",
                currency.exponent(),
                fleet.exponent()
            ),
        ));
    }
    Ok(currency)
}

async fn require_branch(s: &Services, field: &str, code: &str) -> ApiResult<()> {
    match s.branches.get(code).await? {
        Some(_) => Ok(()),
        None => Err(AppError::bad_input(field, format!("no branch {code:?}"))),
    }
}

fn seats(field: &str, n: i32) -> ApiResult<u8> {
    u8::try_from(n).map_err(|_| AppError::bad_input(field, "must be between 1 and 60"))
}

/// The odometer and fuel level staff read at a hand-over or take-back, checked.
fn handover_readings(odometer_km: f64, fuel_percent: f64) -> ApiResult<(f64, f64)> {
    Ok((
        finite(
            "odometerKm",
            odometer_km,
            0.0,
            domain::telemetry::MAX_ODOMETER_KM,
        )?,
        finite("fuelPercent", fuel_percent, 0.0, 100.0)?,
    ))
}

fn finite(field: &str, v: f64, min: f64, max: f64) -> ApiResult<f64> {
    if v.is_finite() && (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(AppError::bad_input(
            field,
            format!("must be between {min} and {max}"),
        ))
    }
}

fn window(
    start_field: &str,
    start: DateTime<Utc>,
    end_field: &str,
    end: DateTime<Utc>,
) -> ApiResult<TimeWindow> {
    TimeWindow::new(start, end)
        .map_err(|_| AppError::bad_input(end_field, format!("must be after {start_field}")))
}

/// The caller, who must own the booking (or be ADMIN); the booking from the log, so a booking
/// made a moment ago is found even before the read models have it.
async fn own_booking(ctx: &Context<'_>, id: Uuid) -> ApiResult<(Uuid, AccountRole, Uuid)> {
    let who = caller(ctx)?;
    who.user()?;
    let view = services(ctx)?.bookings.get(id).await?;
    let owner = view
        .state
        .customer_id
        .ok_or_else(|| AppError::not_found("booking"))?;
    let (me, role) = who.require_owner_or(owner, auth::ADMIN)?;
    Ok((me, role, owner))
}

fn check_key(key: Option<String>) -> ApiResult<Option<String>> {
    match key {
        Some(k) if k.is_empty() || k.len() > 200 => Err(AppError::bad_input(
            "idempotencyKey",
            "must be 1 to 200 characters",
        )),
        other => Ok(other),
    }
}

pub struct Mutation;

#[Object]
impl Mutation {
    async fn register(&self, ctx: &Context<'_>, input: RegisterInput) -> ApiResult<AuthPayload> {
        let payload = services(ctx)?
            .accounts
            .register(AccountsRegister {
                email: input.email,
                password: input.password,
                name: input.name,
                phone: input.phone,
            })
            .await?;
        Ok(payload.into())
    }

    async fn login(
        &self,
        ctx: &Context<'_>,
        email: String,
        password: String,
    ) -> ApiResult<AuthPayload> {
        if email.len() > 254 || password.len() > 1_024 {
            return Err(AppError::InvalidToken("invalid email or password"));
        }
        // Password guessing is limited per account, whatever the address it comes from, and
        // per address, whatever the account it tries.
        if let Some(guard) = ctx.data_opt::<crate::ratelimit::LoginGuard>() {
            let address = ctx
                .data_opt::<crate::http::ClientAddress>()
                .and_then(|a| a.0);
            let mut keys = vec![(
                format!("login:{}", email.trim().to_lowercase()),
                guard.attempts,
            )];
            if let Some(address) = address {
                keys.push((format!("login-from:{address}"), guard.attempts_per_address));
            }
            for (key, attempts) in keys {
                if let crate::ratelimit::Decision::Limited { retry_after_secs } = guard
                    .limiter
                    .check_against(&key, attempts, guard.window)
                    .await
                {
                    return Err(AppError::RateLimited { retry_after_secs });
                }
            }
        }
        Ok(services(ctx)?
            .accounts
            .login(&email, &password)
            .await?
            .into())
    }

    async fn update_profile(
        &self,
        ctx: &Context<'_>,
        input: UpdateProfileInput,
    ) -> ApiResult<User> {
        let (me, _) = caller(ctx)?.user()?;
        let user = services(ctx)?
            .accounts
            .update_profile(
                me,
                ProfileUpdate {
                    name: input.name,
                    phone: input.phone,
                },
            )
            .await?;
        Ok(user.into())
    }

    /// ADMIN only, never on itself. A change of role ends the user's sessions: it logs in again
    /// with the new one.
    async fn grant_role(&self, ctx: &Context<'_>, user_id: Uuid, role: Role) -> ApiResult<User> {
        let (me, _) = caller(ctx)?.require(auth::ADMIN)?;
        if me == user_id {
            // Nobody changes its own role: another ADMIN decides.
            return Err(AppError::Conflict(
                "an ADMIN cannot change its own role; another ADMIN can".into(),
            ));
        }
        Ok(services(ctx)?
            .accounts
            .grant_role(user_id, role.into())
            .await?
            .into())
    }

    /// A new access token and a new refresh token for a refresh token (which is spent by it).
    /// A refresh token presented a second time ends its session on every device: someone else
    /// has it.
    async fn refresh_session(
        &self,
        ctx: &Context<'_>,
        refresh_token: String,
    ) -> ApiResult<AuthPayload> {
        if refresh_token.len() > 200 {
            return Err(AppError::InvalidToken(
                "the refresh token is invalid, spent or expired; log in again",
            ));
        }
        Ok(services(ctx)?
            .accounts
            .refresh(&refresh_token)
            .await?
            .into())
    }

    /// Ends the caller's session: its access token and refresh token stop working at once.
    async fn logout(&self, ctx: &Context<'_>) -> ApiResult<bool> {
        let (me, session) = caller(ctx)?.session()?;
        let s = services(ctx)?;
        match session {
            Some(session) => s.accounts.logout(me, session).await?,
            // A token from before sessions had ids: only ending them all reaches it.
            None => s.accounts.end_sessions(me).await?,
        }
        Ok(true)
    }

    /// Ends every session of the caller, on every device.
    async fn logout_everywhere(&self, ctx: &Context<'_>) -> ApiResult<bool> {
        let (me, _) = caller(ctx)?.user()?;
        services(ctx)?.accounts.end_sessions(me).await?;
        Ok(true)
    }

    /// Ends every session of a user: each token issued before stops working at once (the
    /// user logs in again). Without `userId`, the caller's own sessions; ADMIN may end anyone's.
    async fn end_sessions(&self, ctx: &Context<'_>, user_id: Option<Uuid>) -> ApiResult<bool> {
        let (me, role) = caller(ctx)?.user()?;
        let target = user_id.unwrap_or(me);
        if target != me && role != AccountRole::Admin {
            return Err(AppError::Forbidden);
        }
        services(ctx)?.accounts.end_sessions(target).await?;
        Ok(true)
    }

    async fn add_branch(&self, ctx: &Context<'_>, input: BranchInput) -> ApiResult<Branch> {
        caller(ctx)?.require(auth::ADMIN)?;
        input.position.check("position")?;
        let currency = match &input.currency {
            Some(code) => Some(priced_in(services(ctx)?, code)?),
            None => None,
        };
        let branch = services(ctx)?
            .branches
            .add(NewBranch {
                code: super::branch_code(&input.code),
                name: input.name,
                city: input.city,
                latitude: input.position.latitude,
                longitude: input.position.longitude,
                turnaround_minutes: input.turnaround_minutes.map(i64::from),
                currency,
            })
            .await?;
        Ok(Branch::of(
            branch,
            services(ctx)?.bookings.config().fleet_currency,
        ))
    }

    /// Change a branch's name, city or turnaround (ADMIN). A new turnaround applies to
    /// bookings made from now on: reservations already made keep the one they were made with.
    async fn update_branch(
        &self,
        ctx: &Context<'_>,
        code: String,
        input: BranchUpdateInput,
    ) -> ApiResult<Branch> {
        caller(ctx)?.require(auth::ADMIN)?;
        let branch = services(ctx)?
            .branches
            .update(
                &super::branch_code(&code),
                BranchPatch {
                    name: input.name,
                    city: input.city,
                    turnaround_minutes: input.turnaround_minutes.map(i64::from),
                },
            )
            .await?;
        Ok(Branch::of(
            branch,
            services(ctx)?.bookings.config().fleet_currency,
        ))
    }

    async fn add_car(&self, ctx: &Context<'_>, input: CarInput) -> ApiResult<Car> {
        caller(ctx)?.require(auth::ADMIN)?;
        let s = services(ctx)?;
        let branch = super::branch_code(&input.branch_code);
        let here =
            s.branches.get(&branch).await?.ok_or_else(|| {
                AppError::bad_input("branchCode", format!("no branch {branch:?}"))
            })?;
        // In the branch's currency (the fleet's by default); one the branch set is the only
        // one its cars may be priced in.
        let currency = match input.currency {
            Some(code) => priced_in(s, &code)?,
            None => here.currency_or(s.bookings.config().fleet_currency),
        };
        if let Some(here) = here.currency.as_deref()
            && here != currency.as_str()
        {
            return Err(AppError::bad_input(
                "currency",
                format!("branch {branch} prices in {here}"),
            ));
        }
        let rate = input
            .daily_rate
            .to_minor(currency)
            .map_err(|e| AppError::bad_input("dailyRate", e))?;
        if rate <= 0 {
            return Err(AppError::bad_input("dailyRate", "must be positive"));
        }
        let id = Uuid::now_v7();
        let details = CarDetails {
            make: input.make,
            model: input.model,
            year: input.year,
            class: input.class.to_domain()?,
            seats: seats("seats", input.seats)?,
            transmission: input.transmission.to_domain()?,
            fuel: input.fuel.to_domain()?,
            features: input.features.unwrap_or_default(),
        };
        let done = s
            .cars
            .execute(
                &id.to_string(),
                CarCommand::Register {
                    id,
                    details,
                    daily_rate: DomainMoney::new(rate, currency),
                    branch,
                },
                &context(ctx)?,
            )
            .await?;
        car_after(ctx, s, id, &done.events).await
    }

    async fn update_car(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        input: CarUpdateInput,
    ) -> ApiResult<Car> {
        caller(ctx)?.require(auth::ADMIN)?;
        let s = services(ctx)?;
        let patch = CarDetailsPatch {
            make: input.make,
            model: input.model,
            year: input.year,
            class: input.class.map(CarClass::to_domain).transpose()?,
            seats: input.seats.map(|n| seats("seats", n)).transpose()?,
            transmission: input
                .transmission
                .map(Transmission::to_domain)
                .transpose()?,
            fuel: input.fuel.map(FuelType::to_domain).transpose()?,
            features: input.features,
        };
        let done = s
            .cars
            .execute(
                &id.to_string(),
                CarCommand::UpdateDetails { patch },
                &context(ctx)?,
            )
            .await?;
        car_after(ctx, s, id, &done.events).await
    }

    async fn change_daily_rate(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        daily_rate: Decimal,
    ) -> ApiResult<Car> {
        caller(ctx)?.require(auth::ADMIN)?;
        let s = services(ctx)?;
        let car = s.cars.load(&id.to_string()).await?;
        let currency = car
            .state
            .daily_rate
            .map(|m| m.currency)
            .ok_or_else(|| AppError::not_found("car"))?;
        let rate = daily_rate
            .to_minor(currency)
            .map_err(|e| AppError::bad_input("dailyRate", e))?;
        if rate <= 0 {
            return Err(AppError::bad_input("dailyRate", "must be positive"));
        }
        let done = s
            .cars
            .execute(
                &id.to_string(),
                CarCommand::ChangeDailyRate {
                    daily_rate: DomainMoney::new(rate, currency),
                },
                &context(ctx)?,
            )
            .await?;
        car_after(ctx, s, id, &done.events).await
    }

    async fn relocate_car(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        branch_code: String,
    ) -> ApiResult<Car> {
        caller(ctx)?.require(auth::ADMIN)?;
        let s = services(ctx)?;
        let branch_code = super::branch_code(&branch_code);
        let there = s
            .branches
            .get(&branch_code)
            .await?
            .ok_or_else(|| AppError::bad_input("branchCode", format!("no branch {branch_code:?}")))?
            .currency;
        let priced = s
            .cars
            .load(&id.to_string())
            .await?
            .state
            .daily_rate
            .map(|r| r.currency);
        if let (Some(priced), Some(there)) = (priced, there.as_deref())
            && priced.as_str() != there
        {
            return Err(AppError::bad_input(
                "branchCode",
                format!("branch {branch_code} prices in {there}, this car in {priced}"),
            ));
        }
        let done = s
            .cars
            .execute(
                &id.to_string(),
                CarCommand::Relocate {
                    branch: branch_code,
                    now: chrono::Utc::now(),
                },
                &context(ctx)?,
            )
            .await?;
        car_after(ctx, s, id, &done.events).await
    }

    /// Take a car out of service over a window (ADMIN). The window must be free of bookings
    /// unless `urgent` (a breakdown, a recall): then the bookings that have not started over
    /// it lose the car at once, each marked `displacedSince`; the worker moves each to a free
    /// car of its class at its pick-up branch when there is one (at the price booked), else it
    /// waits for staff to `reassignBooking`. A rental in progress always refuses it.
    async fn schedule_maintenance(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        reason: String,
        urgent: Option<bool>,
    ) -> ApiResult<Car> {
        let urgent = urgent.unwrap_or(false);
        caller(ctx)?.require(auth::ADMIN)?;
        let s = services(ctx)?;
        let window = window("start", start, "end", end)?;
        let reason = text_arg("reason", &reason, 500)?;
        if reason.is_empty() {
            return Err(AppError::bad_input("reason", "must not be empty"));
        }
        let (events, _) = s
            .bookings
            .schedule_maintenance(&context(ctx)?, id, window, reason, urgent, Utc::now())
            .await?;
        car_after(ctx, s, id, &events).await
    }

    /// Move a booking that has not started to another car of its class, at its pick-up
    /// branch and free for its window (ADMIN): same window, same price. For a car taken out
    /// of service, or one a one-way return left elsewhere.
    async fn reassign_booking(
        &self,
        ctx: &Context<'_>,
        booking_id: Uuid,
        car_id: Uuid,
        reason: String,
    ) -> ApiResult<Booking> {
        caller(ctx)?.require(auth::ADMIN)?;
        let s = services(ctx)?;
        let reason = text_arg("reason", &reason, 500)?;
        let view = s
            .bookings
            .reassign(&context(ctx)?, booking_id, car_id, reason, Utc::now())
            .await?;
        booking_after(ctx, s, booking_id, &view.events).await
    }

    async fn complete_maintenance(&self, ctx: &Context<'_>, id: Uuid) -> ApiResult<Car> {
        caller(ctx)?.require(auth::ADMIN)?;
        let s = services(ctx)?;
        let events = s
            .fleet
            .complete_maintenance(&context(ctx)?, id, Utc::now())
            .await?;
        car_after(ctx, s, id, &events).await
    }

    async fn retire_car(&self, ctx: &Context<'_>, id: Uuid, reason: String) -> ApiResult<Car> {
        caller(ctx)?.require(auth::ADMIN)?;
        let s = services(ctx)?;
        let reason = text_arg("reason", &reason, 500)?;
        if reason.is_empty() {
            return Err(AppError::bad_input("reason", "must not be empty"));
        }
        let done = s
            .cars
            .execute(
                &id.to_string(),
                CarCommand::Retire {
                    reason,
                    now: Utc::now(),
                },
                &context(ctx)?,
            )
            .await?;
        car_after(ctx, s, id, &done.events).await
    }

    /// Reserves the car at once and returns a HELD booking with heldUntil; never overbooks.
    /// The same idempotencyKey from the same user returns the same booking.
    async fn request_booking(
        &self,
        ctx: &Context<'_>,
        input: BookingRequestInput,
        idempotency_key: Option<String>,
    ) -> ApiResult<Booking> {
        let (me, _) = caller(ctx)?.require(&[AccountRole::Customer, AccountRole::Admin])?;
        let s = services(ctx)?;
        let key = check_key(idempotency_key)?;
        let window = window("pickupAt", input.pickup_at, "returnAt", input.return_at)?;
        if window.duration() > chrono::Duration::days(90) {
            return Err(AppError::bad_input(
                "returnAt",
                "a rental lasts at most 90 days",
            ));
        }
        let view = s
            .bookings
            .request_booking(
                &context(ctx)?,
                me,
                BookingRequest {
                    car_id: input.car_id,
                    window,
                    pickup_branch: input.pickup_branch_code.as_deref().map(super::branch_code),
                    return_branch: input.return_branch_code.as_deref().map(super::branch_code),
                    extras: extras_input(input.extras)?.unwrap_or_default(),
                },
                key.as_deref(),
                Utc::now(),
            )
            .await?;
        booking_after(ctx, s, view.id, &view.events).await
    }

    /// Pays a HELD booking; on success it becomes CONFIRMED, on decline it stays HELD until heldUntil.
    async fn pay_booking(
        &self,
        ctx: &Context<'_>,
        booking_id: Uuid,
        method: PaymentMethodInput,
        idempotency_key: Option<String>,
    ) -> ApiResult<Payment> {
        own_booking(ctx, booking_id).await?;
        let s = services(ctx)?;
        let key = check_key(idempotency_key)?;
        let token = method.token.trim();
        if token.is_empty() || token.len() > 200 {
            return Err(AppError::bad_input(
                "method.token",
                "must be 1 to 200 characters",
            ));
        }
        let paid = s
            .checkout
            .pay_booking(
                &context(ctx)?,
                booking_id,
                method.kind.to_domain()?,
                token.to_owned(),
                key.as_deref(),
                Utc::now(),
            )
            .await?;
        let behind = s
            .projections_behind(p::BOOKINGS, target(s, &paid.booking.events).await?)
            .await?;
        crate::read_side::behind(ctx, &behind);
        payment_after(ctx, s, paid.payment.id).await
    }

    /// Move a booking to a new window on the same car, re-priced at the car's rate; a paid
    /// booking's difference is charged to the card it was paid with, or refunded. An ACTIVE
    /// rental (the car is out) keeps its `pickupAt` and moves only its return, which must
    /// still be in the future: that is how a rental is extended or shortened. `extras`, when
    /// given, replaces the booking's extras (an empty list removes them); they are re-priced
    /// with the window either way.
    async fn modify_booking(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        pickup_at: DateTime<Utc>,
        return_at: DateTime<Utc>,
        extras: Option<Vec<ExtraInput>>,
    ) -> ApiResult<Booking> {
        own_booking(ctx, id).await?;
        let s = services(ctx)?;
        let window = window("pickupAt", pickup_at, "returnAt", return_at)?;
        let extras = extras_input(extras)?;
        let view = s
            .bookings
            .modify_with(&context(ctx)?, id, window, extras, Utc::now())
            .await?;
        booking_after(ctx, s, id, &view.events).await
    }

    async fn cancel_booking(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        reason: Option<String>,
    ) -> ApiResult<Booking> {
        let (me, _, owner) = own_booking(ctx, id).await?;
        let s = services(ctx)?;
        let reason = reason.map(|r| text_arg("reason", &r, 500)).transpose()?;
        let by = if me == owner {
            CancelledBy::Customer
        } else {
            CancelledBy::Staff
        };
        let view = s
            .bookings
            .cancel(&context(ctx)?, id, by, reason, Utc::now())
            .await?;
        booking_after(ctx, s, id, &view.events).await
    }

    /// Staff hands the car over (ADMIN). More than an hour before the booked pick-up
    /// (`FLEETLEDGER_EARLY_PICKUP_MINUTES`) the car must be free until then: the rental then
    /// runs from now, re-priced, and a paid booking's difference is charged.
    async fn pick_up_car(
        &self,
        ctx: &Context<'_>,
        booking_id: Uuid,
        odometer_km: f64,
        fuel_percent: f64,
    ) -> ApiResult<Booking> {
        caller(ctx)?.require(auth::ADMIN)?;
        let s = services(ctx)?;
        let (odometer, fuel) = handover_readings(odometer_km, fuel_percent)?;
        let view = s
            .bookings
            .pick_up(&context(ctx)?, booking_id, odometer, fuel, Utc::now())
            .await?;
        booking_after(ctx, s, booking_id, &view.events).await
    }

    /// Staff takes the car back (ADMIN); late return and fuel fees are charged.
    async fn return_car(
        &self,
        ctx: &Context<'_>,
        booking_id: Uuid,
        odometer_km: f64,
        fuel_percent: f64,
        branch_code: String,
    ) -> ApiResult<Booking> {
        caller(ctx)?.require(auth::ADMIN)?;
        let s = services(ctx)?;
        let (odometer, fuel) = handover_readings(odometer_km, fuel_percent)?;
        let branch_code = super::branch_code(&branch_code);
        require_branch(s, "branchCode", &branch_code).await?;
        let view = s
            .bookings
            .return_car(
                &context(ctx)?,
                booking_id,
                odometer,
                fuel,
                branch_code,
                Utc::now(),
            )
            .await?;
        booking_after(ctx, s, booking_id, &view.events).await
    }

    /// Send a stuck step back to the worker: due at once, with a fresh retry budget.
    async fn retry_step(&self, ctx: &Context<'_>, id: Uuid) -> ApiResult<bool> {
        caller(ctx)?.require(auth::ADMIN)?;
        if commands::worker::retry_step(services(ctx)?.store.pool(), id).await? {
            Ok(true)
        } else {
            Err(AppError::not_found("stuck step"))
        }
    }

    async fn refund_payment(
        &self,
        ctx: &Context<'_>,
        payment_id: Uuid,
        amount: Option<Decimal>,
    ) -> ApiResult<Payment> {
        caller(ctx)?.require(auth::ADMIN)?;
        let s = services(ctx)?;
        let payments = s.checkout.payments();
        let current = payments
            .get(payment_id)
            .await?
            .ok_or_else(|| AppError::not_found("payment"))?;
        let amount = match amount {
            Some(a) => {
                let minor = a
                    .to_minor(current.amount.currency)
                    .map_err(|e| AppError::bad_input("amount", e))?;
                if minor <= 0 {
                    return Err(AppError::bad_input("amount", "must be positive"));
                }
                Some(DomainMoney::new(minor, current.amount.currency))
            }
            None => None,
        };
        payments
            .refund(payment_id, amount, "refund by staff", &context(ctx)?)
            .await?;
        payment_after(ctx, s, payment_id).await
    }

    async fn submit_feedback(
        &self,
        ctx: &Context<'_>,
        booking_id: Uuid,
        rating: i32,
        comment: Option<String>,
    ) -> ApiResult<Feedback> {
        let (me, _, owner) = own_booking(ctx, booking_id).await?;
        if me != owner {
            return Err(AppError::Forbidden);
        }
        if !(1..=5).contains(&rating) {
            return Err(AppError::bad_input("rating", "must be 1 to 5"));
        }
        let comment = comment
            .map(|c| text_arg("comment", &c, 2_000))
            .transpose()?;
        let s = services(ctx)?;
        let view = s
            .bookings
            .submit_feedback(&context(ctx)?, booking_id, rating, comment, Utc::now())
            .await?;
        // The answer is the booking's own state (what its event holds); the wait is for the
        // reads that follow (the car's rating, the booking's history).
        let behind = s
            .projections_behind(&[p::HISTORY, p::SEARCH], target(s, &view.events).await?)
            .await?;
        crate::read_side::behind(ctx, &behind);
        let feedback = view
            .state
            .feedback
            .ok_or_else(|| AppError::internal("a booking without feedback after its feedback"))?;
        Ok(Feedback {
            booking_id,
            rating: feedback.rating.into(),
            comment: feedback.comment,
            submitted_at: feedback.submitted_at,
        })
    }

    async fn record_telemetry(
        &self,
        ctx: &Context<'_>,
        car_id: Uuid,
        readings: Vec<TelemetryReadingInput>,
    ) -> ApiResult<TelemetryAck> {
        caller(ctx)?.require(auth::TELEMETRY_WRITE)?;
        let s = services(ctx)?;
        if readings.is_empty() {
            return Err(AppError::bad_input("readings", "must not be empty"));
        }
        if readings.len() > s.telemetry_policy.max_batch {
            return Err(AppError::bad_input(
                "readings",
                format!("at most {} readings per call", s.telemetry_policy.max_batch),
            ));
        }
        if s.cars.load(&car_id.to_string()).await?.state.id.is_none() {
            return Err(AppError::not_found("car"));
        }
        let readings: Vec<Reading> = readings
            .into_iter()
            .map(|r| Reading {
                recorded_at: r.recorded_at,
                position: DomainPoint {
                    latitude: r.position.latitude,
                    longitude: r.position.longitude,
                },
                speed_kph: r.speed_kph,
                fuel_percent: r.fuel_percent,
                battery_percent: r.battery_percent,
                odometer_km: r.odometer_km,
                engine_temp_c: r.engine_temp_c,
            })
            .collect();
        let received_at = Utc::now();
        let done = s
            .telemetry
            .execute(
                &car_id.to_string(),
                TelemetryCommand::RecordReadings {
                    car_id,
                    readings: readings.clone(),
                    received_at,
                },
                &context(ctx)?,
            )
            .await?;
        let recorded = done.events.iter().find_map(|e| {
            commands::codec::decode::<domain::telemetry::Telemetry>(e)
                .ok()
                .and_then(|t: TelemetryEvent| t.batch_summary())
        });
        let summary = match recorded {
            Some(summary) => summary,
            None => s
                .telemetry
                .load(&car_id.to_string())
                .await?
                .state
                .assess(&readings, received_at, &s.telemetry_policy)
                .summary(),
        };
        Ok(TelemetryAck {
            accepted: i32::try_from(summary.accepted).unwrap_or(i32::MAX),
            duplicates: i32::try_from(summary.duplicates).unwrap_or(i32::MAX),
            rejected: summary.rejected.iter().map(ToString::to_string).collect(),
        })
    }
}
