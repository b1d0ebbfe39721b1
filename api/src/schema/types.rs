//! The contract's object, enum and input types, and how each is resolved.

use async_graphql::dataloader::DataLoader;
use async_graphql::{ComplexObject, Context, Enum, InputObject, Json, Object, SimpleObject};
use chrono::{DateTime, Utc};
use commands::accounts;
use eventstore::RecordedEvent;
use uuid::Uuid;

use super::activity::{self, BookingActivity};
use super::loaders::{BranchLoader, CarLoader};
use super::rows::{self, BookingRow, CarRow, PaymentRow, TelemetryRow};
use super::scalars::Decimal;
use super::{offset_cursor, offset_from, page_size, services, weighted};
use crate::auth::{self, caller};
use crate::error::{ApiResult, AppError};

macro_rules! wire_enum {
    ($name:ident { $($variant:ident = $wire:literal),+ $(,)? }) => {
        #[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($variant),+ }
        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $wire),+ }
            }
            pub fn from_wire(s: &str) -> ApiResult<Self> {
                match s {
                    $($wire => Ok(Self::$variant),)+
                    other => Err(AppError::internal(format!(
                        "stored {} {other:?} is not in the contract", stringify!($name)))),
                }
            }
            /// The domain's serde value (the same wire name).
            pub fn to_domain<T: serde::de::DeserializeOwned>(self) -> ApiResult<T> {
                serde_json::from_value(serde_json::Value::String(self.as_str().to_owned()))
                    .map_err(AppError::internal)
            }
        }
    };
}

wire_enum!(Role { Customer = "CUSTOMER", Admin = "ADMIN", Auditor = "AUDITOR", Analyst = "ANALYST", Integrator = "INTEGRATOR" });
wire_enum!(CarClass { Economy = "ECONOMY", Compact = "COMPACT", Sedan = "SEDAN", Suv = "SUV", Truck = "TRUCK", Van = "VAN", Luxury = "LUXURY", Electric = "ELECTRIC" });
wire_enum!(Transmission { Automatic = "AUTOMATIC", Manual = "MANUAL" });
wire_enum!(FuelType { Petrol = "PETROL", Diesel = "DIESEL", Hybrid = "HYBRID", Electric = "ELECTRIC" });
wire_enum!(CarStatus { Available = "AVAILABLE", Reserved = "RESERVED", Rented = "RENTED", Maintenance = "MAINTENANCE", Retired = "RETIRED" });
wire_enum!(BookingStatus { Held = "HELD", Confirmed = "CONFIRMED", Active = "ACTIVE", Completed = "COMPLETED", Cancelled = "CANCELLED", Expired = "EXPIRED", NoShow = "NO_SHOW" });
wire_enum!(PaymentMethodKind { Card = "CARD", Paypal = "PAYPAL", Wallet = "WALLET" });
wire_enum!(PaymentStatus { Pending = "PENDING", Authorized = "AUTHORIZED", Captured = "CAPTURED", Failed = "FAILED", Refunded = "REFUNDED", PartiallyRefunded = "PARTIALLY_REFUNDED" });
wire_enum!(CarSort { PriceAsc = "PRICE_ASC", PriceDesc = "PRICE_DESC", Distance = "DISTANCE", Rating = "RATING" });

impl From<accounts::Role> for Role {
    fn from(r: accounts::Role) -> Self {
        match r {
            accounts::Role::Customer => Self::Customer,
            accounts::Role::Admin => Self::Admin,
            accounts::Role::Auditor => Self::Auditor,
            accounts::Role::Analyst => Self::Analyst,
            accounts::Role::Integrator => Self::Integrator,
        }
    }
}

impl From<Role> for accounts::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::Customer => Self::Customer,
            Role::Admin => Self::Admin,
            Role::Auditor => Self::Auditor,
            Role::Analyst => Self::Analyst,
            Role::Integrator => Self::Integrator,
        }
    }
}

#[derive(SimpleObject, Clone, Debug)]
pub struct Money {
    pub amount: Decimal,
    pub currency: String,
}

impl Money {
    /// `minor` units of `currency`, shown with its minor units ("5000" yen, "129.90" euros).
    pub fn new(minor: i64, currency: impl Into<String>) -> Self {
        let currency = currency.into();
        let exponent = domain::Currency::parse(&currency).map_or(2, |c| c.exponent());
        Self {
            amount: Decimal::of_minor(minor, exponent),
            currency,
        }
    }
}

impl From<domain::Money> for Money {
    fn from(m: domain::Money) -> Self {
        Self::new(m.minor, m.currency.as_str())
    }
}

#[derive(SimpleObject, Clone, Copy, Debug)]
pub struct GeoPoint {
    pub latitude: f64,
    pub longitude: f64,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct Branch {
    pub code: String,
    pub name: String,
    pub city: String,
    pub position: GeoPoint,
    /// Minutes a car returned here stays out (cleaning) before its next rental starts:
    /// `availability`, `searchCars` and booking all keep it free after each rental.
    pub turnaround_minutes: i32,
    /// The currency cars added here are priced in (the fleet's unless the branch set its own;
    /// one it set is the only one its cars, and cars moved or returned to it, may have).
    pub currency: String,
}

impl Branch {
    /// The branch as the API shows it, its currency resolved against the fleet's.
    pub(crate) fn of(b: commands::branches::Branch, fleet: domain::Currency) -> Self {
        let currency = b.currency_or(fleet).as_str().to_owned();
        Self {
            code: b.code,
            name: b.name,
            city: b.city,
            position: GeoPoint {
                latitude: b.latitude,
                longitude: b.longitude,
            },
            turnaround_minutes: b.turnaround_minutes,
            currency,
        }
    }
}

pub(crate) async fn branch_by_code(ctx: &Context<'_>, code: &str) -> ApiResult<Branch> {
    let loader = ctx
        .data::<DataLoader<BranchLoader>>()
        .map_err(|e| AppError::internal(e.message))?;
    let fleet = services(ctx)?.bookings.config().fleet_currency;
    loader
        .load_one(code.to_owned())
        .await?
        .map(|b| Branch::of(b, fleet))
        .ok_or_else(|| AppError::internal(format!("branch {code:?} is referenced but missing")))
}

#[derive(SimpleObject, Clone, Copy, Debug)]
pub struct TimeRange {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

#[derive(SimpleObject, Clone, Debug, Default)]
pub struct PageInfo {
    pub has_next_page: bool,
    pub has_previous_page: bool,
    pub start_cursor: Option<String>,
    pub end_cursor: Option<String>,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub phone: Option<String>,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

impl From<accounts::User> for User {
    fn from(u: accounts::User) -> Self {
        Self {
            id: u.id,
            email: u.email,
            name: u.name,
            phone: u.phone,
            role: u.role.into(),
            created_at: u.created_at,
        }
    }
}

/// A signed-in session: a short-lived access token for `Authorization: Bearer`, and a refresh
/// token that `refreshSession` exchanges for the next pair (each refresh token works once).
#[derive(SimpleObject, Clone, Debug)]
pub struct AuthPayload {
    /// The access token (minutes; `FLEETLEDGER_JWT_TTL`).
    pub token: String,
    pub expires_at: DateTime<Utc>,
    /// Good for one `refreshSession`; presenting it a second time ends the session everywhere.
    pub refresh_token: String,
    /// The session ends then at the latest, however often it is refreshed
    /// (`FLEETLEDGER_SESSION_TTL`).
    pub refresh_expires_at: DateTime<Utc>,
    pub user: User,
}

impl From<accounts::AuthPayload> for AuthPayload {
    fn from(p: accounts::AuthPayload) -> Self {
        Self {
            token: p.token,
            expires_at: p.expires_at,
            refresh_token: p.refresh_token,
            refresh_expires_at: p.refresh_expires_at,
            user: p.user.into(),
        }
    }
}

/// A car, from the search read model.
pub struct Car(pub(crate) CarRow);

#[Object]
impl Car {
    async fn id(&self) -> Uuid {
        self.0.car_id
    }
    async fn make(&self) -> &str {
        &self.0.make
    }
    async fn model(&self) -> &str {
        &self.0.model
    }
    async fn year(&self) -> i32 {
        self.0.year
    }
    async fn class(&self) -> ApiResult<CarClass> {
        CarClass::from_wire(&self.0.class)
    }
    async fn seats(&self) -> i32 {
        self.0.seats
    }
    async fn transmission(&self) -> ApiResult<Transmission> {
        Transmission::from_wire(&self.0.transmission)
    }
    async fn fuel(&self) -> ApiResult<FuelType> {
        FuelType::from_wire(&self.0.fuel)
    }
    async fn features(&self) -> &[String] {
        &self.0.features
    }
    async fn daily_rate(&self) -> Money {
        Money::new(self.0.daily_rate_minor, &self.0.currency)
    }
    async fn branch(&self, ctx: &Context<'_>) -> ApiResult<Branch> {
        branch_by_code(ctx, &self.0.branch_code).await
    }
    async fn status(&self) -> ApiResult<CarStatus> {
        CarStatus::from_wire(&self.0.status)
    }
    async fn odometer_km(&self) -> Option<f64> {
        self.0.odometer_km
    }
    /// The car's latest reading (ADMIN, INTEGRATOR, and the customer renting the car right
    /// now): where a rented car is tells where its renter is, so nobody else sees it.
    async fn last_telemetry(&self, ctx: &Context<'_>) -> ApiResult<Option<TelemetryReading>> {
        let (me, role) = caller(ctx)?.user()?;
        let pool = services(ctx)?.store.pool();
        if !auth::LIVE_POSITION_READERS.contains(&role)
            && !projections::history::renting(pool, me, self.0.car_id).await?
        {
            return Err(AppError::Forbidden);
        }
        Ok(rows::latest_telemetry(pool, self.0.car_id)
            .await?
            .map(TelemetryReading::from))
    }
    async fn average_rating(&self) -> Option<f64> {
        (self.0.review_count > 0).then(|| self.0.rating_sum as f64 / f64::from(self.0.review_count))
    }
    async fn review_count(&self) -> i32 {
        self.0.review_count
    }
    /// Reserved windows, for staff; customers see only free windows via `availability`.
    async fn reservations(
        &self,
        ctx: &Context<'_>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> ApiResult<Vec<TimeRange>> {
        caller(ctx)?.require(auth::ADMIN)?;
        if to <= from {
            return Err(AppError::bad_input("to", "must be after from"));
        }
        let pool = services(ctx)?.store.pool();
        let rows = projections::availability::reservations(pool, self.0.car_id, from, to).await?;
        Ok(rows
            .into_iter()
            .map(|(start, end)| TimeRange { start, end })
            .collect())
    }
    /// The car's own event stream (ADMIN, AUDITOR).
    #[graphql(complexity = "weighted(first, 50, child_complexity)")]
    async fn history(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "Some(50)")] first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<EventConnection> {
        caller(ctx)?.require(auth::AUDIT)?;
        let limit = page_size(ctx, first, 50)?;
        let offset = offset_from(after.as_deref())?;
        let store = &services(ctx)?.store;
        let stream = eventstore::StreamId::new("car", self.0.car_id.to_string());
        let events = store
            .read_stream(&stream, offset + 1, Some(offset + limit + 1))
            .await?;
        let has_next = events.len() as i64 > limit;
        let edges: Vec<EventEdge> = events
            .into_iter()
            .take(limit as usize)
            .map(|e| EventEdge {
                cursor: offset_cursor(e.version - 1),
                node: EventRecord(e),
            })
            .collect();
        Ok(EventConnection::new(edges, has_next, offset > 0))
    }
}

#[derive(SimpleObject)]
pub struct CarEdge {
    pub cursor: String,
    pub node: Car,
    pub distance_km: Option<f64>,
}

/// A page of cars. `cursor`s resume in the same order (keyset): cars booked, added or changed
/// between two pages are neither repeated nor skipped unless they moved in the order.
#[derive(SimpleObject)]
pub struct CarConnection {
    pub edges: Vec<CarEdge>,
    pub page_info: PageInfo,
    /// How many cars match, counted up to 100 (100 means at least that many); computed only
    /// when asked for.
    pub total_count: i32,
}

/// What a price line is: stable for programs, while `label` is for people and may change.
#[derive(async_graphql::Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(remote = "domain::pricing::LineCode")]
pub enum PriceLineCode {
    /// The days rented at the daily rate.
    RentalDays,
    LongRentalDiscount,
    OneWayFee,
    /// Whole days late, at the daily rate.
    LateDays,
    /// Started hours late beyond the whole days.
    LateHours,
    /// The unused days of a rental back early (negative), by the early-return policy.
    EarlyReturnCredit,
    EarlyReturnFee,
    Refuelling,
    /// A cancelled booking's price taken off (negative).
    CancellationCredit,
    CancellationFee,
    /// A no-show's price taken off (negative).
    NoShowCredit,
    NoShowFee,
    ChildSeat,
    AdditionalDriver,
    CollisionDamageWaiver,
    Gps,
    /// Kilometres driven beyond the rental's allowance.
    MileageExcess,
    /// A line of no kind above (written before lines had codes).
    Other,
}

/// An extra or a coverage a booking may add, priced per day (`extrasOffered`).
#[derive(async_graphql::Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(remote = "domain::pricing::ExtraKind")]
pub enum ExtraKind {
    ChildSeat,
    /// A second (third...) person allowed to drive.
    AdditionalDriver,
    /// Collision damage waiver: the renter's liability for damage to the car is waived.
    CollisionDamageWaiver,
    Gps,
}

/// An extra taken with a booking.
#[derive(SimpleObject, Clone, Copy, Debug)]
pub struct Extra {
    pub kind: ExtraKind,
    pub quantity: i32,
}

impl From<domain::pricing::Extra> for Extra {
    fn from(e: domain::pricing::Extra) -> Self {
        Self {
            kind: e.kind.into(),
            quantity: i32::from(e.quantity),
        }
    }
}

/// An extra asked for: its kind and how many (1 unless said).
#[derive(InputObject, Clone, Copy, Debug)]
pub struct ExtraInput {
    pub kind: ExtraKind,
    #[graphql(default = 1)]
    pub quantity: i32,
}

/// The extras asked for, as the pricing rules take them (at most one entry per kind, so at
/// most as many entries as kinds).
pub(crate) fn extras_input(
    extras: Option<Vec<ExtraInput>>,
) -> ApiResult<Option<Vec<domain::pricing::Extra>>> {
    let Some(extras) = extras else {
        return Ok(None);
    };
    let kinds = domain::pricing::ExtraKind::ALL.len();
    if extras.len() > kinds {
        return Err(AppError::bad_input(
            "extras",
            format!("at most {kinds} entries, one per kind"),
        ));
    }
    extras
        .into_iter()
        .map(|e| {
            let quantity = u8::try_from(e.quantity).map_err(|_| {
                AppError::bad_input("extras", "a quantity is between 1 and the kind's maximum")
            })?;
            Ok(domain::pricing::Extra {
                kind: e.kind.into(),
                quantity,
            })
        })
        .collect::<ApiResult<Vec<_>>>()
        .map(Some)
}

/// What an extra costs (`extrasOffered`).
#[derive(SimpleObject, Clone, Debug)]
pub struct ExtraOffer {
    pub kind: ExtraKind,
    /// How it reads on a price line.
    pub label: String,
    /// Per charged day, for each one taken.
    pub per_day: Money,
    /// At most this much a rental for each one taken, however long; null: no cap.
    pub max_per_rental: Option<Money>,
    pub max_quantity: i32,
}

/// How far a booking may drive for its price: `kmIncluded` over its charged days; each whole
/// kilometre beyond costs `excessPerKm` at return. Null where a booking has unlimited mileage.
#[derive(SimpleObject, Clone, Debug)]
pub struct MileageTerms {
    pub km_included: i64,
    pub km_per_day: i64,
    pub excess_per_km: Money,
}

impl MileageTerms {
    pub(crate) fn of(terms: domain::pricing::MileageTerms, currency: &str) -> Self {
        Self {
            km_included: terms.km_included,
            km_per_day: terms.km_per_day,
            excess_per_km: Money::new(terms.excess_per_km_minor, currency),
        }
    }
}

#[derive(SimpleObject, Clone, Debug)]
pub struct PriceLine {
    pub code: PriceLineCode,
    pub label: String,
    pub amount: Money,
}

impl From<domain::pricing::PriceLine> for PriceLine {
    fn from(line: domain::pricing::PriceLine) -> Self {
        Self {
            code: line.code().into(),
            label: line.label,
            amount: line.amount.into(),
        }
    }
}

#[derive(SimpleObject)]
pub struct Quote {
    pub car: Car,
    pub pickup_at: DateTime<Utc>,
    pub return_at: DateTime<Utc>,
    pub days: i32,
    pub total: Money,
    pub lines: Vec<PriceLine>,
    /// The extras priced in.
    pub extras: Vec<Extra>,
    /// The mileage allowance priced in; null: unlimited.
    pub mileage: Option<MileageTerms>,
}

/// A booking, from the history read model.
pub struct Booking(pub(crate) BookingRow);

#[Object]
impl Booking {
    async fn id(&self) -> Uuid {
        self.0.booking_id
    }
    async fn customer(&self, ctx: &Context<'_>) -> ApiResult<User> {
        let s = services(ctx)?;
        s.accounts
            .get(self.0.customer_id)
            .await?
            .map(User::from)
            .ok_or_else(|| AppError::not_found("customer"))
    }
    async fn car(&self, ctx: &Context<'_>) -> ApiResult<Car> {
        let loader = ctx
            .data::<DataLoader<CarLoader>>()
            .map_err(|e| AppError::internal(e.message))?;
        loader
            .load_one(self.0.car_id)
            .await?
            .map(Car)
            .ok_or_else(|| AppError::internal("booking's car missing from the search model"))
    }
    async fn pickup_at(&self) -> DateTime<Utc> {
        self.0.pickup_at
    }
    async fn return_at(&self) -> DateTime<Utc> {
        self.0.return_at
    }
    async fn pickup_branch(&self, ctx: &Context<'_>) -> ApiResult<Branch> {
        branch_by_code(ctx, &self.0.pickup_branch).await
    }
    async fn return_branch(&self, ctx: &Context<'_>) -> ApiResult<Branch> {
        branch_by_code(ctx, &self.0.return_branch).await
    }
    async fn status(&self) -> ApiResult<BookingStatus> {
        BookingStatus::from_wire(&self.0.status)
    }
    /// Set when an ACTIVE rental's car was not back by its return time and grace: staff
    /// follows up. (A NO_SHOW booking is one paid for that nobody picked up in time.)
    async fn overdue_since(&self) -> Option<DateTime<Utc>> {
        self.0.overdue_at
    }
    /// Set while the booking has no car: an urgent maintenance took its car out of service.
    /// Staff find a free car of its class at its pick-up branch (`searchCars` with its window)
    /// and `reassignBooking`; until then it cannot be picked up.
    async fn displaced_since(&self) -> Option<DateTime<Utc>> {
        self.0.displaced_at
    }
    /// Set while HELD: the hold is released automatically after this instant.
    async fn held_until(&self) -> Option<DateTime<Utc>> {
        self.0.held_until
    }
    /// The extras and coverage taken (priced in `lines`): what the desk prepares.
    async fn extras(&self) -> ApiResult<Vec<Extra>> {
        let extras: Vec<domain::pricing::Extra> =
            serde_json::from_value(self.0.extras.clone()).map_err(AppError::internal)?;
        Ok(extras.into_iter().map(Extra::from).collect())
    }
    /// The kilometres included and the fee beyond, as booked; null: unlimited.
    async fn mileage(&self) -> ApiResult<Option<MileageTerms>> {
        self.0
            .mileage
            .clone()
            .map(|m| {
                serde_json::from_value::<domain::pricing::MileageTerms>(m)
                    .map(|terms| MileageTerms::of(terms, &self.0.currency))
                    .map_err(AppError::internal)
            })
            .transpose()
    }
    /// What the booking costs: its price, with the charges found at return once returned;
    /// once cancelled or a no-show, the fee it keeps.
    async fn total(&self) -> Money {
        Money::new(self.0.total_minor, &self.0.currency)
    }
    /// How `total` adds up, line by line (a cancellation takes the booked price off and adds
    /// its fee).
    async fn lines(&self) -> ApiResult<Vec<PriceLine>> {
        stored_lines(&self.0.lines, &self.0.currency)
    }
    async fn payment(&self, ctx: &Context<'_>) -> ApiResult<Option<Payment>> {
        let Some(id) = self.0.payment_id else {
            return Ok(None);
        };
        let pool = services(ctx)?.store.pool();
        Ok(rows::payment(pool, id).await?.map(Payment))
    }
    /// Every payment of the booking, oldest first: the one that confirmed it, declined or
    /// abandoned attempts, and charges for fees found at return.
    async fn payments(&self, ctx: &Context<'_>) -> ApiResult<Vec<Payment>> {
        let pool = services(ctx)?.store.pool();
        Ok(rows::booking_payments(pool, self.0.booking_id)
            .await?
            .into_iter()
            .map(Payment)
            .collect())
    }
    /// The money side of the booking: what is owed, paid, refunded and still due.
    async fn balance(&self, ctx: &Context<'_>) -> ApiResult<Balance> {
        let pool = services(ctx)?.store.pool();
        let payments = rows::booking_payments(pool, self.0.booking_id).await?;
        let owed = match self.0.status.as_str() {
            "CANCELLED" | "NO_SHOW" => self.0.cancel_fee_minor.unwrap_or(0),
            "EXPIRED" => 0,
            _ => self.0.total_minor,
        };
        let paid: i64 = payments.iter().map(rows::PaymentRow::captured_minor).sum();
        let held: i64 = payments.iter().map(rows::PaymentRow::held_minor).sum();
        let currency = &self.0.currency;
        Ok(Balance {
            owed: Money::new(owed, currency),
            paid: Money::new(paid, currency),
            refunded: Money::new(paid - held, currency),
            due: Money::new(owed - held, currency),
        })
    }
    async fn feedback(&self) -> Option<Feedback> {
        Some(Feedback {
            booking_id: self.0.booking_id,
            rating: self.0.rating?,
            comment: self.0.comment.clone(),
            submitted_at: self.0.feedback_at?,
        })
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// Every event that touched this booking, oldest first (owner, ADMIN, AUDITOR).
    /// What happened to the booking, in order. Staff and auditors get the events as logged;
    /// the booking's customer gets each event's type, time and position with an empty
    /// `payload` and `metadata` (they hold internal references, amounts in minor units,
    /// idempotency keys and trace ids).
    async fn timeline(&self, ctx: &Context<'_>) -> ApiResult<Vec<EventRecord>> {
        let (_, role) = caller(ctx)?.require_owner_or(self.0.customer_id, auth::BOOKING_READERS)?;
        let redact = !auth::BOOKING_READERS.contains(&role);
        let events =
            timeline_events(&services(ctx)?.store, self.0.booking_id, Logged::AsStored).await?;
        Ok(events
            .into_iter()
            .map(|mut event| {
                if redact {
                    event.payload = serde_json::json!({});
                    event.metadata = serde_json::json!({});
                }
                EventRecord(event)
            })
            .collect())
    }
    /// What happened to the booking, when, and for how much, as its customer sees it: held,
    /// paid, confirmed, picked up, returned, refunded... Internal steps and every event
    /// payload stay out; staff and auditors read the raw events in `timeline`.
    async fn activity(&self, ctx: &Context<'_>) -> ApiResult<Vec<BookingActivity>> {
        let events =
            timeline_events(&services(ctx)?.store, self.0.booking_id, Logged::Upcast).await?;
        Ok(events.iter().filter_map(activity::entry).collect())
    }
}

/// How a timeline's events are read: as the log holds them (what auditors see), or upcast to
/// today's shapes (what the activity reads its fields from).
#[derive(Clone, Copy)]
enum Logged {
    AsStored,
    Upcast,
}

/// The events of a booking's timeline, in commit order (a booking has a few dozen at most;
/// the bound keeps a pathological one from costing more): the read side knows where they
/// are, the log has them.
async fn timeline_events(
    store: &eventstore::EventStore,
    booking: Uuid,
    logged: Logged,
) -> ApiResult<Vec<eventstore::RecordedEvent>> {
    let positions = projections::history::timeline(store.pool(), booking, 1_000).await?;
    Ok(match logged {
        Logged::AsStored => store.read_positions_raw(&positions).await?,
        Logged::Upcast => store.read_positions(&positions).await?,
    })
}

/// `[{"label": .., "amount_minor": ..}]` as price lines.
pub(crate) fn stored_lines(lines: &serde_json::Value, currency: &str) -> ApiResult<Vec<PriceLine>> {
    #[derive(serde::Deserialize)]
    struct Line {
        #[serde(default)]
        code: Option<domain::pricing::LineCode>,
        label: String,
        amount_minor: i64,
    }
    let lines: Vec<Line> = serde_json::from_value(lines.clone()).map_err(AppError::internal)?;
    Ok(lines
        .into_iter()
        .map(|l| PriceLine {
            // Rows written before lines had codes: read it from the label.
            code: l
                .code
                .unwrap_or_else(|| domain::pricing::LineCode::of_label(&l.label))
                .into(),
            label: l.label,
            amount: Money::new(l.amount_minor, currency),
        })
        .collect())
}

#[derive(SimpleObject)]
pub struct BookingEdge {
    pub cursor: String,
    pub node: Booking,
}

/// A page of bookings, newest first. Cursors hold the place in that order, so bookings made,
/// changed or expired between two pages are neither repeated nor skipped.
#[derive(SimpleObject)]
pub struct BookingConnection {
    pub edges: Vec<BookingEdge>,
    pub page_info: PageInfo,
    /// Bookings that match, counted up to 10,000 (10,000 means at least that many).
    pub total_count: i32,
}

/// A payment, from the history read model.
/// What a booking owes and holds. `owed` is the booking's total (its final total once
/// returned, fees included; the cancellation fee once cancelled; nothing once expired);
/// `due = owed − (paid − refunded)`: positive while the customer still owes money (unpaid, or
/// fees whose charge was declined), negative while a refund is on its way.
#[derive(SimpleObject)]
pub struct Balance {
    pub owed: Money,
    /// Captured, before refunds.
    pub paid: Money,
    pub refunded: Money,
    pub due: Money,
}

pub struct Payment(pub(crate) PaymentRow);

#[Object]
impl Payment {
    async fn id(&self) -> Uuid {
        self.0.payment_id
    }
    async fn booking(&self, ctx: &Context<'_>) -> ApiResult<Booking> {
        let pool = services(ctx)?.store.pool();
        rows::booking(pool, self.0.booking_id)
            .await?
            .map(Booking)
            .ok_or_else(|| AppError::not_found("booking"))
    }
    async fn amount(&self) -> Money {
        Money::new(self.0.amount_minor, &self.0.currency)
    }
    async fn refunded(&self) -> Money {
        Money::new(self.0.refunded_minor, &self.0.currency)
    }
    async fn method(&self) -> ApiResult<PaymentMethodKind> {
        PaymentMethodKind::from_wire(&self.0.method)
    }
    async fn status(&self) -> ApiResult<PaymentStatus> {
        PaymentStatus::from_wire(&self.0.status)
    }
    /// Which gateway processed it; differs from the primary when fallback was used.
    async fn gateway(&self) -> Option<&str> {
        self.0.gateway.as_deref()
    }
    async fn failure_reason(&self) -> Option<&str> {
        self.0.failure_reason.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

#[derive(SimpleObject, Clone, Debug)]
#[graphql(complex)]
pub struct Feedback {
    #[graphql(skip)]
    pub booking_id: Uuid,
    pub rating: i32,
    pub comment: Option<String>,
    pub submitted_at: DateTime<Utc>,
}

#[ComplexObject]
impl Feedback {
    async fn booking(&self, ctx: &Context<'_>) -> ApiResult<Booking> {
        let pool = services(ctx)?.store.pool();
        rows::booking(pool, self.booking_id)
            .await?
            .map(Booking)
            .ok_or_else(|| AppError::not_found("booking"))
    }
}

#[derive(SimpleObject, Clone, Debug)]
pub struct TelemetryReading {
    pub car_id: Uuid,
    pub recorded_at: DateTime<Utc>,
    pub position: GeoPoint,
    pub speed_kph: Option<f64>,
    pub fuel_percent: Option<f64>,
    pub battery_percent: Option<f64>,
    pub odometer_km: f64,
    pub engine_temp_c: Option<f64>,
}

impl From<TelemetryRow> for TelemetryReading {
    fn from(r: TelemetryRow) -> Self {
        Self {
            car_id: r.car_id,
            recorded_at: r.recorded_at,
            position: GeoPoint {
                latitude: r.latitude,
                longitude: r.longitude,
            },
            speed_kph: r.speed_kph,
            fuel_percent: r.fuel_percent,
            battery_percent: r.battery_percent,
            odometer_km: r.odometer_km,
            engine_temp_c: r.engine_temp_c,
        }
    }
}

impl TelemetryReading {
    pub fn from_domain(car_id: Uuid, r: &domain::telemetry::Reading) -> Self {
        Self {
            car_id,
            recorded_at: r.recorded_at,
            position: GeoPoint {
                latitude: r.position.latitude,
                longitude: r.position.longitude,
            },
            speed_kph: r.speed_kph,
            fuel_percent: r.fuel_percent,
            battery_percent: r.battery_percent,
            odometer_km: r.odometer_km,
            engine_temp_c: r.engine_temp_c,
        }
    }
}

#[derive(SimpleObject, Clone, Debug)]
pub struct TelemetryAck {
    pub accepted: i32,
    pub duplicates: i32,
    pub rejected: Vec<String>,
}

/// One stored event, exactly as the log holds it.
pub struct EventRecord(pub(crate) RecordedEvent);

#[Object]
impl EventRecord {
    /// Position in the global log; a decimal string because it can exceed 2^31.
    async fn position(&self) -> String {
        self.0.global_position.to_string()
    }
    async fn event_id(&self) -> Uuid {
        self.0.event_id
    }
    async fn aggregate_type(&self) -> &str {
        &self.0.aggregate_type
    }
    async fn aggregate_id(&self) -> &str {
        &self.0.aggregate_id
    }
    async fn version(&self) -> i32 {
        i32::try_from(self.0.version).unwrap_or(i32::MAX)
    }
    async fn event_type(&self) -> &str {
        &self.0.event_type
    }
    async fn event_version(&self) -> i32 {
        self.0.event_version
    }
    async fn payload(&self) -> Json<serde_json::Value> {
        Json(self.0.payload.clone())
    }
    async fn metadata(&self) -> Json<serde_json::Value> {
        Json(self.0.metadata.clone())
    }
    async fn recorded_at(&self) -> DateTime<Utc> {
        self.0.recorded_at
    }
    /// Hex SHA-256 linking this event to the previous event of the same stream.
    async fn hash(&self) -> String {
        self.0.hash.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[derive(SimpleObject)]
pub struct EventEdge {
    pub cursor: String,
    pub node: EventRecord,
}

#[derive(SimpleObject)]
pub struct EventConnection {
    pub edges: Vec<EventEdge>,
    pub page_info: PageInfo,
}

impl EventConnection {
    pub fn new(edges: Vec<EventEdge>, has_next: bool, has_previous: bool) -> Self {
        let page_info = PageInfo {
            has_next_page: has_next,
            has_previous_page: has_previous,
            start_cursor: edges.first().map(|e| e.cursor.clone()),
            end_cursor: edges.last().map(|e| e.cursor.clone()),
        };
        Self { edges, page_info }
    }
}

#[derive(SimpleObject, Clone, Debug)]
pub struct StreamVerification {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub events: i32,
    pub valid: bool,
    pub first_broken_version: Option<i32>,
    pub detail: Option<String>,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct DailyMetrics {
    pub date: chrono::NaiveDate,
    pub branch_code: Option<String>,
    pub bookings_created: i32,
    pub bookings_cancelled: i32,
    pub rentals_started: i32,
    pub rentals_completed: i32,
    /// Money in the bank from the day: captured minus refunded, on the days the gateway moved
    /// it. Sums to what the payments' events say.
    pub revenue: Money,
    /// Refunds paid out that day (already taken off `revenue`).
    pub refunds: Money,
    /// Revenue recognised when earned: completed rentals' final totals (fees included) on
    /// their return day, cancellation fees on their cancellation day.
    pub earned: Money,
    /// Rented car-hours divided by available car-hours, 0..1.
    pub utilization: f64,
    pub average_rental_days: Option<f64>,
}

#[derive(SimpleObject)]
pub struct CarUtilization {
    pub car: Car,
    pub rented_hours: f64,
    pub utilization: f64,
    /// Captured minus refunded for the car's bookings over the period.
    pub revenue: Money,
    /// Earned over the period (completed rentals' totals, cancellation fees).
    pub earned: Money,
    pub distance_km: f64,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct FleetSummary {
    pub cars: i32,
    pub available: i32,
    pub rented: i32,
    pub in_maintenance: i32,
    pub retired: i32,
    pub active_bookings: i32,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct ProjectionStatus {
    pub name: String,
    /// Global position of the last event applied.
    pub position: String,
    /// Events in the log not yet applied.
    pub lag_events: i32,
    /// Age of the oldest unapplied event, in milliseconds (0 when caught up).
    pub lag_ms: f64,
    pub state: String,
    pub updated_at: DateTime<Utc>,
}

#[derive(InputObject, Clone, Copy, Debug)]
pub struct GeoPointInput {
    pub latitude: f64,
    pub longitude: f64,
}

impl GeoPointInput {
    pub fn check(&self, field: &str) -> ApiResult<()> {
        if !(-90.0..=90.0).contains(&self.latitude) {
            return Err(AppError::bad_input(
                format!("{field}.latitude"),
                "must be between -90 and 90",
            ));
        }
        if !(-180.0..=180.0).contains(&self.longitude) {
            return Err(AppError::bad_input(
                format!("{field}.longitude"),
                "must be between -180 and 180",
            ));
        }
        Ok(())
    }
}

#[derive(InputObject, Clone, Debug)]
pub struct CarSearchInput {
    pub pickup_at: DateTime<Utc>,
    pub return_at: DateTime<Utc>,
    pub branch_code: Option<String>,
    pub near: Option<GeoPointInput>,
    #[graphql(default_with = "Some(25.0)")]
    pub radius_km: Option<f64>,
    pub classes: Option<Vec<CarClass>>,
    pub min_seats: Option<i32>,
    /// In the fleet's currency; cars priced in another do not match (no exchange rates here).
    pub max_daily_rate: Option<Decimal>,
    pub transmission: Option<Transmission>,
    pub fuel: Option<FuelType>,
    /// Free text over make, model and features.
    pub text: Option<String>,
    #[graphql(default_with = "Some(CarSort::PriceAsc)")]
    pub sort: Option<CarSort>,
}

#[derive(InputObject, Clone)]
pub struct RegisterInput {
    pub email: String,
    pub password: String,
    pub name: String,
    pub phone: Option<String>,
}

#[derive(InputObject, Clone, Debug)]
pub struct UpdateProfileInput {
    pub name: Option<String>,
    pub phone: Option<String>,
}

#[derive(InputObject, Clone, Debug)]
pub struct CarInput {
    pub make: String,
    pub model: String,
    pub year: i32,
    pub class: CarClass,
    pub seats: i32,
    pub transmission: Transmission,
    pub fuel: FuelType,
    #[graphql(default_with = "Some(Vec::new())")]
    pub features: Option<Vec<String>>,
    pub daily_rate: Decimal,
    /// ISO 4217, two minor units; absent: the fleet's currency (`FLEETLEDGER_CURRENCY`, USD
    /// unless set).
    pub currency: Option<String>,
    pub branch_code: String,
}

#[derive(InputObject, Clone, Debug)]
pub struct CarUpdateInput {
    pub make: Option<String>,
    pub model: Option<String>,
    pub year: Option<i32>,
    pub class: Option<CarClass>,
    pub seats: Option<i32>,
    pub transmission: Option<Transmission>,
    pub fuel: Option<FuelType>,
    pub features: Option<Vec<String>>,
}

#[derive(InputObject, Clone, Debug)]
pub struct BranchInput {
    pub code: String,
    pub name: String,
    pub city: String,
    pub position: GeoPointInput,
    /// Minutes a car returned here stays out before its next rental (0 to 1440; 60 if not
    /// given).
    pub turnaround_minutes: Option<i32>,
    /// The ISO 4217 currency cars here are priced in (the fleet's if not given; with as many
    /// decimals as the fleet's). Fixed once the branch exists.
    pub currency: Option<String>,
}

/// Changes to a branch; a field left out keeps its value.
#[derive(InputObject, Clone, Debug)]
pub struct BranchUpdateInput {
    pub name: Option<String>,
    pub city: Option<String>,
    /// Applies to bookings made from now on; reservations already made keep theirs.
    pub turnaround_minutes: Option<i32>,
}

#[derive(InputObject, Clone, Debug)]
pub struct BookingRequestInput {
    pub car_id: Uuid,
    pub pickup_at: DateTime<Utc>,
    pub return_at: DateTime<Utc>,
    pub pickup_branch_code: Option<String>,
    pub return_branch_code: Option<String>,
    /// Extras and coverage (child seat, additional driver, damage waiver...), priced per day.
    pub extras: Option<Vec<ExtraInput>>,
}

#[derive(InputObject, Clone)]
pub struct PaymentMethodInput {
    pub kind: PaymentMethodKind,
    /// Opaque token from the client-side tokenizer (never a raw card number).
    pub token: String,
}

#[derive(InputObject, Clone, Debug)]
pub struct TelemetryReadingInput {
    pub recorded_at: DateTime<Utc>,
    pub position: GeoPointInput,
    pub speed_kph: Option<f64>,
    pub fuel_percent: Option<f64>,
    pub battery_percent: Option<f64>,
    pub odometer_km: f64,
    pub engine_temp_c: Option<f64>,
}

#[derive(InputObject, Clone, Debug, Default)]
pub struct EventFilter {
    pub aggregate_types: Option<Vec<String>>,
    pub event_types: Option<Vec<String>>,
    pub aggregate_id: Option<String>,
}

impl EventFilter {
    pub fn matches(&self, e: &RecordedEvent) -> bool {
        self.aggregate_types
            .as_ref()
            .is_none_or(|t| t.contains(&e.aggregate_type))
            && self
                .event_types
                .as_ref()
                .is_none_or(|t| t.contains(&e.event_type))
            && self
                .aggregate_id
                .as_ref()
                .is_none_or(|id| *id == e.aggregate_id)
    }
}

/// A follow-up step that stopped retrying and waits for staff.
#[derive(SimpleObject, Clone, Debug)]
pub struct StuckStep {
    pub id: Uuid,
    /// `refund`, `settle_balance`, `confirm_payment`, `expire_hold`, `no_show`, `overdue`,
    /// `strand_check`.
    pub kind: String,
    pub booking_id: Uuid,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub stuck_at: DateTime<Utc>,
    /// Pass as `after` for the next page.
    pub cursor: String,
}

impl From<commands::worker::StuckStep> for StuckStep {
    fn from(s: commands::worker::StuckStep) -> Self {
        Self {
            cursor: format!("{}/{}", s.stuck_at.to_rfc3339(), s.id),
            id: s.id,
            kind: s.kind,
            booking_id: s.booking_id,
            attempts: s.attempts,
            last_error: s.last_error,
            stuck_at: s.stuck_at,
        }
    }
}

/// What cancelling a booking now would cost.
#[derive(SimpleObject, Clone, Debug)]
pub struct CancellationQuote {
    /// Kept by the rental company.
    pub fee: Money,
    /// Sent back of what was paid.
    pub refund: Money,
}
