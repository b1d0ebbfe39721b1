//! Pricing: pure functions from a rate, a window and a policy to an itemised quote.
//!
//! Amounts are integer minor units; every division rounds half up to the minor unit, so the
//! same inputs always give the same cents.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::money::{Money, MoneyError};

/// The rental company's price rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricingPolicy {
    /// Minutes past a whole number of days that are not charged as another day.
    pub grace_minutes: i64,
    /// Rentals of at least this many days get the long-rental discount.
    pub long_rental_min_days: i64,
    /// The long-rental discount in basis points of the base price (1000 = 10 %).
    pub long_rental_discount_bp: i64,
    /// Flat fee when the car is returned to another branch, in the rate's minor units.
    pub one_way_fee_minor: i64,
    /// Late fee per started hour past the grace, in basis points of the daily rate.
    pub late_hour_bp: i64,
    /// Refuelling charge per missing percentage point of the tank, in minor units.
    pub refuel_per_percent_minor: i64,
    /// Cancellation is free until this many hours before pickup.
    pub free_cancellation_hours: i64,
    /// What a rental returned before its booked end costs.
    #[serde(default)]
    pub early_return: EarlyReturn,
    /// The extras and coverage on offer, each priced per day.
    #[serde(default = "default_extras")]
    pub extras: Vec<ExtraPrice>,
    /// Kilometres included per charged day, and the fee per kilometre beyond.
    #[serde(default)]
    pub mileage: Mileage,
}

/// An extra or a coverage a renter may add to a booking.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum ExtraKind {
    ChildSeat,
    /// A second (third...) person allowed to drive.
    AdditionalDriver,
    /// Collision damage waiver: the renter's liability for damage to the car is waived.
    CollisionDamageWaiver,
    Gps,
}

impl ExtraKind {
    /// Every kind.
    pub const ALL: &'static [ExtraKind] = <Self as strum::VariantArray>::VARIANTS;

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// How it reads on a price line.
    pub fn label(self) -> &'static str {
        match self {
            Self::ChildSeat => "child seat",
            Self::AdditionalDriver => "additional driver",
            Self::CollisionDamageWaiver => "collision damage waiver",
            Self::Gps => "GPS navigation",
        }
    }

    /// The code of its price line.
    pub fn line_code(self) -> LineCode {
        match self {
            Self::ChildSeat => LineCode::ChildSeat,
            Self::AdditionalDriver => LineCode::AdditionalDriver,
            Self::CollisionDamageWaiver => LineCode::CollisionDamageWaiver,
            Self::Gps => LineCode::Gps,
        }
    }
}

/// The price of an extra: per charged day, in the rate's minor units, at most
/// `max_per_rental_minor` a rental for each one taken, and at most `max_quantity` of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraPrice {
    pub kind: ExtraKind,
    pub per_day_minor: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_rental_minor: Option<i64>,
    pub max_quantity: u8,
}

/// An extra taken with a booking, and how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extra {
    pub kind: ExtraKind,
    pub quantity: u8,
}

/// What the fleet offers unless configured otherwise (`FLEETLEDGER_EXTRAS`).
pub fn default_extras() -> Vec<ExtraPrice> {
    let price = |kind, per_day_minor, max_per_rental_minor, max_quantity| ExtraPrice {
        kind,
        per_day_minor,
        max_per_rental_minor,
        max_quantity,
    };
    vec![
        price(ExtraKind::ChildSeat, 800, Some(6_000), 3),
        price(ExtraKind::AdditionalDriver, 1_000, None, 4),
        price(ExtraKind::CollisionDamageWaiver, 1_500, None, 1),
        price(ExtraKind::Gps, 700, Some(5_000), 1),
    ]
}

/// How far a rental may drive for its price.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mileage {
    Unlimited,
    /// `km_per_day` per charged day included; each whole kilometre beyond costs
    /// `excess_per_km_minor` of the rate's minor units.
    PerDay {
        km_per_day: i64,
        excess_per_km_minor: i64,
    },
}

impl Default for Mileage {
    fn default() -> Self {
        Self::PerDay {
            km_per_day: 300,
            excess_per_km_minor: 25,
        }
    }
}

/// The mileage a booking was priced with: kept in its quote, so a return is charged by the
/// terms the customer agreed to, whatever the policy says by then.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MileageTerms {
    /// Kilometres included in the rental's charged days.
    pub km_included: i64,
    pub km_per_day: i64,
    pub excess_per_km_minor: i64,
}

/// What a rental returned before its booked end costs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EarlyReturn {
    /// The booked days, whatever the return (the default, as most rental desks do).
    #[default]
    AsBooked,
    /// The days used, priced as a rental of that length, plus a fee in the rate's minor
    /// units; the rest is refunded. Never more than the booked price.
    PerDayUsed { fee_minor: i64 },
}

/// A rental as it comes back: what was booked, and the readings at the desk.
#[derive(Clone, Debug, PartialEq)]
pub struct RentalReturn {
    pub daily_rate: Money,
    /// The booked window (from the pick-up, when the car went out early).
    pub booked_from: DateTime<Utc>,
    pub booked_until: DateTime<Utc>,
    /// The booked price, before charges at return.
    pub booked_total: Money,
    /// Booked to come back to another branch.
    pub one_way: bool,
    pub returned: DateTime<Utc>,
    pub fuel_out_percent: f64,
    pub fuel_in_percent: f64,
    /// The odometer at the hand-over and at the return.
    pub odometer_out_km: f64,
    pub odometer_in_km: f64,
    /// The booking's extras (priced again over the days used by a per-day-used early return).
    pub extras: Vec<Extra>,
    /// The booking's mileage terms; `None`: unlimited.
    pub mileage: Option<MileageTerms>,
}

impl Default for PricingPolicy {
    fn default() -> Self {
        Self {
            grace_minutes: 59,
            long_rental_min_days: 7,
            long_rental_discount_bp: 1_000,
            one_way_fee_minor: 5_000,
            late_hour_bp: 2_500,
            refuel_per_percent_minor: 150,
            free_cancellation_hours: 24,
            early_return: EarlyReturn::AsBooked,
            extras: default_extras(),
            mileage: Mileage::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    #[error("the return must be after the pickup")]
    EmptyWindow,
    #[error("fuel level must be between 0 and 100 percent")]
    FuelOutOfRange,
    #[error("{} is not offered", .0.as_str())]
    ExtraNotOffered(ExtraKind),
    #[error("{} may be taken at most {max} time(s) (and at least once)", .kind.as_str())]
    ExtraQuantity { kind: ExtraKind, max: u8 },
    #[error("{} is listed twice", .0.as_str())]
    ExtraTwice(ExtraKind),
    #[error("the odometer readings must be finite and not go back")]
    OdometerBackwards,
    #[error(transparent)]
    Money(#[from] MoneyError),
}

/// What a price line is, stable for programs (its label is for people and may change).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum LineCode {
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
    /// A line written before lines had codes, of no kind above.
    Other,
}

impl LineCode {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The code of a line written before lines had codes, from its label.
    pub fn of_label(label: &str) -> Self {
        let starts = |p: &str| label.starts_with(p);
        if label.starts_with(|c: char| c.is_ascii_digit())
            && (label.contains("day(s)") || label.contains(" days"))
        {
            Self::RentalDays
        } else if starts("long-rental discount") {
            Self::LongRentalDiscount
        } else if starts("one-way fee") {
            Self::OneWayFee
        } else if starts("late return,") && label.contains("day(s)") {
            Self::LateDays
        } else if starts("late return") {
            Self::LateHours
        } else if starts("early return fee") {
            Self::EarlyReturnFee
        } else if starts("early return") {
            Self::EarlyReturnCredit
        } else if starts("refuelling") {
            Self::Refuelling
        } else if starts("cancellation fee") {
            Self::CancellationFee
        } else if starts("cancelled:") {
            Self::CancellationCredit
        } else if starts("no-show fee") {
            Self::NoShowFee
        } else if starts("no-show:") {
            Self::NoShowCredit
        } else {
            Self::Other
        }
    }
}

/// One line of a quote or invoice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceLine {
    /// Absent in lines written before lines had codes: [`PriceLine::code`] then reads it
    /// from the label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<LineCode>,
    pub label: String,
    pub amount: Money,
}

impl PriceLine {
    pub fn new(code: LineCode, label: impl Into<String>, amount: Money) -> Self {
        Self {
            code: Some(code),
            label: label.into(),
            amount,
        }
    }

    /// What the line is.
    pub fn code(&self) -> LineCode {
        self.code.unwrap_or_else(|| LineCode::of_label(&self.label))
    }
}

/// An itemised price.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    pub days: i64,
    pub lines: Vec<PriceLine>,
    pub total: Money,
    /// The extras priced in (re-priced with the booking when it changes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extras: Vec<Extra>,
    /// The mileage allowance priced in; `None`: unlimited (and every quote made before
    /// allowances existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mileage: Option<MileageTerms>,
}

/// `amount × bp / 10 000`, rounded half up (amounts are never negative here).
fn basis_points(amount: i64, bp: i64) -> Result<i64, MoneyError> {
    let product = i128::from(amount) * i128::from(bp);
    i64::try_from((product + 5_000) / 10_000).map_err(|_| MoneyError::Overflow)
}

/// Charged days: whole 24-hour units, rounded up, after forgiving `grace_minutes`; at least 1.
pub fn rental_days(
    pickup: DateTime<Utc>,
    ret: DateTime<Utc>,
    policy: &PricingPolicy,
) -> Result<i64, PricingError> {
    let minutes = (ret - pickup).num_minutes();
    if ret <= pickup {
        return Err(PricingError::EmptyWindow);
    }
    let charged = (minutes - policy.grace_minutes).max(0);
    Ok(((charged + 1_439) / 1_440).max(1))
}

fn total_of(lines: &[PriceLine], zero: Money) -> Result<Money, MoneyError> {
    lines
        .iter()
        .try_fold(zero, |sum, line| sum.checked_add(line.amount))
}

/// The extras asked for, checked against what `policy` offers: each kind once, in a quantity
/// it allows; returned in a stable order (by kind).
pub fn check_extras(extras: &[Extra], policy: &PricingPolicy) -> Result<Vec<Extra>, PricingError> {
    let mut checked: Vec<Extra> = Vec::with_capacity(extras.len());
    for extra in extras {
        let offer = policy
            .extras
            .iter()
            .find(|o| o.kind == extra.kind)
            .ok_or(PricingError::ExtraNotOffered(extra.kind))?;
        if extra.quantity == 0 || extra.quantity > offer.max_quantity {
            return Err(PricingError::ExtraQuantity {
                kind: extra.kind,
                max: offer.max_quantity,
            });
        }
        if checked.iter().any(|c| c.kind == extra.kind) {
            return Err(PricingError::ExtraTwice(extra.kind));
        }
        checked.push(*extra);
    }
    checked.sort_by_key(|e| e.kind);
    Ok(checked)
}

/// The price of renting at `daily_rate` over `[pickup, ret)`, one-way when the branches differ,
/// with `extras` (checked by [`check_extras`]) and the policy's mileage allowance.
pub fn quote(
    daily_rate: Money,
    pickup: DateTime<Utc>,
    ret: DateTime<Utc>,
    one_way: bool,
    extras: &[Extra],
    policy: &PricingPolicy,
) -> Result<Quote, PricingError> {
    let extras = check_extras(extras, policy)?;
    let days = rental_days(pickup, ret, policy)?;
    let base = daily_rate.checked_mul(days)?;
    let currency = daily_rate.currency;
    let mut lines = vec![PriceLine::new(
        LineCode::RentalDays,
        format!("{days} day(s) × {daily_rate}"),
        base,
    )];
    if days >= policy.long_rental_min_days && policy.long_rental_discount_bp > 0 {
        let discount = basis_points(base.minor, policy.long_rental_discount_bp)?;
        lines.push(PriceLine::new(
            LineCode::LongRentalDiscount,
            format!(
                "long-rental discount ({}+ days, {}.{:02}%)",
                policy.long_rental_min_days,
                policy.long_rental_discount_bp / 100,
                policy.long_rental_discount_bp % 100
            ),
            Money::new(-discount, currency),
        ));
    }
    if one_way {
        lines.push(PriceLine::new(
            LineCode::OneWayFee,
            "one-way fee",
            Money::new(policy.one_way_fee_minor, currency),
        ));
    }
    for extra in &extras {
        // check_extras found its offer.
        let Some(offer) = policy.extras.iter().find(|o| o.kind == extra.kind) else {
            continue;
        };
        let per_one = offer
            .per_day_minor
            .checked_mul(days)
            .ok_or(MoneyError::Overflow)?;
        let capped = offer
            .max_per_rental_minor
            .map_or(per_one, |cap| per_one.min(cap));
        let amount = capped
            .checked_mul(i64::from(extra.quantity))
            .ok_or(MoneyError::Overflow)?;
        let unit = Money::new(offer.per_day_minor, currency);
        let label = match (extra.quantity, capped < per_one) {
            (1, false) => format!("{}, {days} day(s) × {unit}", extra.kind.label()),
            (n, false) => format!("{n} × {}, {days} day(s) × {unit}", extra.kind.label()),
            (1, true) => format!(
                "{}, at most {}",
                extra.kind.label(),
                Money::new(capped, currency)
            ),
            (n, true) => format!(
                "{n} × {}, at most {} each",
                extra.kind.label(),
                Money::new(capped, currency)
            ),
        };
        lines.push(PriceLine::new(
            extra.kind.line_code(),
            label,
            Money::new(amount, currency),
        ));
    }
    let mileage = match policy.mileage {
        Mileage::Unlimited => None,
        Mileage::PerDay {
            km_per_day,
            excess_per_km_minor,
        } => Some(MileageTerms {
            km_included: km_per_day.checked_mul(days).ok_or(MoneyError::Overflow)?,
            km_per_day,
            excess_per_km_minor,
        }),
    };
    let total = total_of(&lines, Money::zero(currency))?;
    Ok(Quote {
        days,
        lines,
        total,
        extras,
        mileage,
    })
}

/// Charges (and credits) at return:
/// - **late**, past the grace: each whole day late at the daily rate, and the started hours
///   of what remains at `late_hour_bp` of the rate each, those hours costing at most one day;
/// - **early**, by [`EarlyReturn`]: nothing, or the unused days credited less a fee;
/// - **refuelling**: each whole missing percentage point of the tank.
pub fn return_charges(
    rental: &RentalReturn,
    policy: &PricingPolicy,
) -> Result<Vec<PriceLine>, PricingError> {
    let valid = |f: f64| (0.0..=100.0).contains(&f);
    if !valid(rental.fuel_out_percent) || !valid(rental.fuel_in_percent) {
        return Err(PricingError::FuelOutOfRange);
    }
    let (out, back_in) = (rental.odometer_out_km, rental.odometer_in_km);
    if !out.is_finite() || !back_in.is_finite() || back_in < out {
        return Err(PricingError::OdometerBackwards);
    }
    let rate = rental.daily_rate;
    let mut lines = Vec::new();
    // Days charged beyond the booking (a started late day counts): each brings its allowance.
    let mut late_days_charged = 0;
    let late_minutes = (rental.returned - rental.booked_until).num_minutes() - policy.grace_minutes;
    if late_minutes > 0 {
        let (days, rest) = (late_minutes / 1_440, late_minutes % 1_440);
        late_days_charged = days + i64::from(rest > 0);
        if days > 0 {
            lines.push(PriceLine::new(
                LineCode::LateDays,
                format!("late return, {days} day(s) × {rate}"),
                rate.checked_mul(days)?,
            ));
        }
        if rest > 0 {
            let hours = (rest + 59) / 60;
            let fee = basis_points(rate.minor, policy.late_hour_bp)?
                .checked_mul(hours)
                .ok_or(MoneyError::Overflow)?
                .min(rate.minor);
            lines.push(PriceLine::new(
                LineCode::LateHours,
                format!("late return, {hours} started hour(s)"),
                Money::new(fee, rate.currency),
            ));
        }
    }
    if let EarlyReturn::PerDayUsed { fee_minor } = policy.early_return
        && rental.returned < rental.booked_until
    {
        // Priced as a rental that ended now (at least a minute long, so at least a day).
        let used_until = rental
            .returned
            .max(rental.booked_from + Duration::minutes(1));
        let used = quote(
            rate,
            rental.booked_from,
            used_until,
            rental.one_way,
            &rental.extras,
            policy,
        )?;
        let unused = rental.booked_total.checked_sub(used.total)?;
        if unused.minor > fee_minor {
            lines.push(PriceLine::new(
                LineCode::EarlyReturnCredit,
                format!("early return, {} day(s) used", used.days),
                Money::new(-unused.minor, rate.currency),
            ));
            lines.push(PriceLine::new(
                LineCode::EarlyReturnFee,
                "early return fee",
                Money::new(fee_minor, rate.currency),
            ));
        }
    }
    // Whole missing percentage points; fuel levels are measurements, the charge is not.
    let missing = (rental.fuel_out_percent - rental.fuel_in_percent).floor();
    if missing >= 1.0 {
        let points = missing as i64;
        lines.push(PriceLine::new(
            LineCode::Refuelling,
            format!("refuelling, {points}% of the tank"),
            Money::new(points * policy.refuel_per_percent_minor, rate.currency),
        ));
    }
    if let Some(terms) = rental.mileage {
        let allowance = terms
            .km_per_day
            .checked_mul(late_days_charged)
            .and_then(|late| late.checked_add(terms.km_included))
            .ok_or(MoneyError::Overflow)?;
        // Whole kilometres beyond; the readings are measurements, the charge is not.
        let driven = (back_in - out).floor();
        let beyond = driven - allowance as f64;
        if beyond >= 1.0 {
            let km = beyond as i64;
            lines.push(PriceLine::new(
                LineCode::MileageExcess,
                format!("mileage, {km} km beyond the {allowance} km included"),
                Money::new(
                    km.checked_mul(terms.excess_per_km_minor)
                        .ok_or(MoneyError::Overflow)?,
                    rate.currency,
                ),
            ));
        }
    }
    Ok(lines)
}

/// What cancelling at `now` costs: nothing until `free_cancellation_hours` before pickup, then
/// one day's rate.
pub fn cancellation_fee(
    daily_rate: Money,
    pickup: DateTime<Utc>,
    now: DateTime<Utc>,
    policy: &PricingPolicy,
) -> Money {
    if pickup - now >= Duration::hours(policy.free_cancellation_hours) {
        Money::zero(daily_rate.currency)
    } else {
        daily_rate
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use serde_json::json;

    use super::*;
    use crate::Currency;

    fn at(day: u32, hour: u32, minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, day, hour, minute, 0)
            .single()
            .unwrap_or_default()
    }

    fn rate() -> Money {
        Money::new(4_599, Currency::EUR)
    }

    fn p() -> PricingPolicy {
        PricingPolicy::default()
    }

    #[test]
    fn days_round_up_after_a_59_minute_grace() {
        assert_eq!(rental_days(at(1, 10, 0), at(1, 12, 0), &p()), Ok(1));
        assert_eq!(rental_days(at(1, 10, 0), at(2, 10, 0), &p()), Ok(1));
        assert_eq!(rental_days(at(1, 10, 0), at(2, 10, 59), &p()), Ok(1));
        assert_eq!(rental_days(at(1, 10, 0), at(2, 11, 0), &p()), Ok(2));
        assert_eq!(rental_days(at(1, 10, 0), at(4, 10, 30), &p()), Ok(3));
        assert_eq!(
            rental_days(at(1, 10, 0), at(1, 10, 0), &p()),
            Err(PricingError::EmptyWindow)
        );
        assert_eq!(
            rental_days(at(2, 10, 0), at(1, 10, 0), &p()),
            Err(PricingError::EmptyWindow)
        );
    }

    #[test]
    fn a_short_round_trip_is_rate_times_days() {
        let q = quote(rate(), at(1, 9, 0), at(4, 9, 30), false, &[], &p()).unwrap();
        assert_eq!(q.days, 3);
        assert_eq!(q.total, Money::new(13_797, Currency::EUR));
        assert_eq!(q.lines.len(), 1);
    }

    #[test]
    fn a_week_one_way_gets_the_discount_and_the_fee() {
        let q = quote(rate(), at(1, 9, 0), at(8, 9, 0), true, &[], &p()).unwrap();
        assert_eq!(q.days, 7);
        let amounts: Vec<i64> = q.lines.iter().map(|l| l.amount.minor).collect();
        // 7 × 45.99 = 321.93; 10 % = 32.193 → 32.19; one-way 50.00.
        assert_eq!(amounts, [32_193, -3_219, 5_000]);
        assert_eq!(q.total, Money::new(33_974, Currency::EUR));
    }

    /// Booked 1st 10:00 to 5th 10:00 (four days, 183.96), returned at `returned` with the
    /// tank as it left unless said otherwise.
    fn back(returned: DateTime<Utc>) -> RentalReturn {
        RentalReturn {
            daily_rate: rate(),
            booked_from: at(1, 10, 0),
            booked_until: at(5, 10, 0),
            booked_total: Money::new(18_396, Currency::EUR),
            one_way: false,
            returned,
            fuel_out_percent: 80.0,
            fuel_in_percent: 80.0,
            odometer_out_km: 10_000.0,
            odometer_in_km: 10_500.0,
            extras: Vec::new(),
            mileage: None,
        }
    }

    fn amounts(lines: &[PriceLine]) -> Vec<i64> {
        lines.iter().map(|l| l.amount.minor).collect()
    }

    #[test]
    fn late_returns_pay_per_started_hour_up_to_a_day_and_per_day_beyond() {
        let charges = |returned| return_charges(&back(returned), &p()).unwrap();
        assert!(charges(at(5, 10, 59)).is_empty());
        // 25 % of 45.99 = 11.4975 → 11.50 per started hour.
        assert_eq!(amounts(&charges(at(5, 11, 0))), [1_150]);
        assert_eq!(amounts(&charges(at(5, 13, 30))), [3_450]);
        // 23 hours late: the hours cost at most one day.
        assert_eq!(amounts(&charges(at(6, 9, 0))), [4_599]);
        // Three days and three hours late, less the grace: three days, then three started
        // hours (2 h 01 min).
        let late = charges(at(8, 13, 0));
        assert_eq!(amounts(&late), [13_797, 3_450]);
        assert_eq!(late[0].label, "late return, 3 day(s) × 45.99 EUR");
        // Exactly three days late, to the minute past the grace: days only.
        assert_eq!(amounts(&charges(at(8, 10, 59))), [13_797]);
    }

    #[test]
    fn an_early_return_is_charged_as_booked_or_per_day_used_by_the_policy() {
        // As booked (the default): nothing back.
        assert!(
            return_charges(&back(at(2, 12, 0)), &p())
                .unwrap()
                .is_empty()
        );
        let per_day = PricingPolicy {
            early_return: EarlyReturn::PerDayUsed { fee_minor: 2_500 },
            ..p()
        };
        // Back after a day and two hours (past the grace): two days used (91.98), 92.00
        // unused days credited, 25.00 fee.
        let lines = return_charges(&back(at(2, 12, 0)), &per_day).unwrap();
        assert_eq!(amounts(&lines), [-9_198, 2_500]);
        assert_eq!(lines[0].label, "early return, 2 day(s) used");
        // Back within the grace of the booked end: nothing to credit.
        assert!(
            return_charges(&back(at(5, 9, 30)), &per_day)
                .unwrap()
                .is_empty()
        );
        // A day early but the fee is larger than what a day is worth: nothing either way.
        let dear = PricingPolicy {
            early_return: EarlyReturn::PerDayUsed { fee_minor: 5_000 },
            ..p()
        };
        assert!(
            return_charges(&back(at(4, 9, 0)), &dear)
                .unwrap()
                .is_empty()
        );
        // Returned before it was due to start (out early within the desk's allowance): one
        // day, the least a rental costs.
        let lines = return_charges(&back(at(1, 9, 30)), &per_day).unwrap();
        assert_eq!(amounts(&lines), [-13_797, 2_500]);
    }

    #[test]
    fn lines_written_before_codes_get_theirs_from_the_label() {
        let old = |label: &str| PriceLine {
            code: None,
            label: label.into(),
            amount: Money::new(100, Currency::EUR),
        };
        let cases = [
            ("5 day(s) × 105.00 EUR", LineCode::RentalDays),
            ("5 day(s) × 10500", LineCode::RentalDays),
            ("2 days", LineCode::RentalDays),
            (
                "long-rental discount (7+ days, 10.00%)",
                LineCode::LongRentalDiscount,
            ),
            ("one-way fee", LineCode::OneWayFee),
            ("late return, 3 day(s) × 45.99 EUR", LineCode::LateDays),
            ("late return, 2 started hour(s)", LineCode::LateHours),
            ("late return", LineCode::LateHours),
            ("early return, 1 day(s) used", LineCode::EarlyReturnCredit),
            ("early return fee", LineCode::EarlyReturnFee),
            ("refuelling, 37% of the tank", LineCode::Refuelling),
            ("a gift", LineCode::Other),
        ];
        for (label, code) in cases {
            assert_eq!(old(label).code(), code, "{label}");
        }
        // A stored code wins over the label; it is written and read back as itself.
        let line = PriceLine::new(
            LineCode::OneWayFee,
            "2 days",
            Money::new(5_000, Currency::EUR),
        );
        assert_eq!(line.code(), LineCode::OneWayFee);
        let json = serde_json::to_value(&line).unwrap();
        assert_eq!(json["code"], "ONE_WAY_FEE");
        assert_eq!(serde_json::from_value::<PriceLine>(json).unwrap(), line);
        // Every code's wire name is the GraphQL enum's.
        for code in <LineCode as strum::VariantArray>::VARIANTS {
            let wire = serde_json::to_value(code).unwrap();
            assert_eq!(wire, code.as_str());
        }
    }

    #[test]
    fn refuelling_charges_whole_missing_points() {
        let tank = |out, back_in| RentalReturn {
            fuel_out_percent: out,
            fuel_in_percent: back_in,
            ..back(at(5, 10, 0))
        };
        let lines = return_charges(&tank(100.0, 62.5), &p()).unwrap();
        assert_eq!(
            lines,
            vec![PriceLine::new(
                LineCode::Refuelling,
                "refuelling, 37% of the tank",
                Money::new(5_550, Currency::EUR)
            )]
        );
        assert!(return_charges(&tank(50.0, 70.0), &p()).unwrap().is_empty());
        assert_eq!(
            return_charges(&tank(101.0, 70.0), &p()),
            Err(PricingError::FuelOutOfRange)
        );
    }

    fn extra(kind: ExtraKind, quantity: u8) -> Extra {
        Extra { kind, quantity }
    }

    #[test]
    fn extras_are_priced_per_day_capped_per_rental_and_itemised() {
        let extras = [
            extra(ExtraKind::Gps, 1),
            extra(ExtraKind::ChildSeat, 2),
            extra(ExtraKind::CollisionDamageWaiver, 1),
        ];
        // Three days: seats 3 × 8.00 each (under the 60.00 cap), CDW 3 × 15.00, GPS 3 × 7.00.
        let q = quote(rate(), at(1, 9, 0), at(4, 9, 0), false, &extras, &p()).unwrap();
        let codes: Vec<LineCode> = q.lines.iter().map(PriceLine::code).collect();
        assert_eq!(
            codes,
            [
                LineCode::RentalDays,
                LineCode::ChildSeat,
                LineCode::CollisionDamageWaiver,
                LineCode::Gps
            ]
        );
        assert_eq!(amounts(&q.lines), [13_797, 4_800, 4_500, 2_100]);
        assert_eq!(q.lines[1].label, "2 × child seat, 3 day(s) × 8.00 EUR");
        assert_eq!(q.total, Money::new(25_197, Currency::EUR));
        // Kept in the order of kinds, so a re-price lists them the same.
        assert_eq!(
            q.extras.iter().map(|e| e.kind).collect::<Vec<_>>(),
            [
                ExtraKind::ChildSeat,
                ExtraKind::CollisionDamageWaiver,
                ExtraKind::Gps
            ]
        );
        // Ten days: a seat costs at most 60.00, GPS at most 50.00; the discount is on the
        // days only.
        let q = quote(rate(), at(1, 9, 0), at(11, 9, 0), false, &extras, &p()).unwrap();
        assert_eq!(amounts(&q.lines), [45_990, -4_599, 12_000, 15_000, 5_000]);
        assert_eq!(q.lines[2].label, "2 × child seat, at most 60.00 EUR each");
        assert_eq!(q.lines[4].label, "GPS navigation, at most 50.00 EUR");
    }

    #[test]
    fn extras_not_offered_or_in_a_wrong_quantity_are_refused() {
        let ask = |extras: &[Extra], policy: &PricingPolicy| {
            quote(rate(), at(1, 9, 0), at(4, 9, 0), false, extras, policy).map(|q| q.total)
        };
        assert_eq!(
            ask(&[extra(ExtraKind::ChildSeat, 4)], &p()),
            Err(PricingError::ExtraQuantity {
                kind: ExtraKind::ChildSeat,
                max: 3
            })
        );
        assert_eq!(
            ask(&[extra(ExtraKind::Gps, 0)], &p()),
            Err(PricingError::ExtraQuantity {
                kind: ExtraKind::Gps,
                max: 1
            })
        );
        assert_eq!(
            ask(&[extra(ExtraKind::Gps, 1), extra(ExtraKind::Gps, 1)], &p()),
            Err(PricingError::ExtraTwice(ExtraKind::Gps))
        );
        let no_gps = PricingPolicy {
            extras: default_extras()
                .into_iter()
                .filter(|o| o.kind != ExtraKind::Gps)
                .collect(),
            ..p()
        };
        assert_eq!(
            ask(&[extra(ExtraKind::Gps, 1)], &no_gps),
            Err(PricingError::ExtraNotOffered(ExtraKind::Gps))
        );
    }

    #[test]
    fn a_quote_carries_its_mileage_allowance_and_unlimited_carries_none() {
        let q = quote(rate(), at(1, 9, 0), at(4, 9, 0), false, &[], &p()).unwrap();
        assert_eq!(
            q.mileage,
            Some(MileageTerms {
                km_included: 900,
                km_per_day: 300,
                excess_per_km_minor: 25
            })
        );
        let unlimited = PricingPolicy {
            mileage: Mileage::Unlimited,
            ..p()
        };
        let q = quote(rate(), at(1, 9, 0), at(4, 9, 0), false, &[], &unlimited).unwrap();
        assert_eq!(q.mileage, None);
        // A quote stored before extras and allowances existed reads as none of either, and
        // one without them is written as before.
        let old = json!({"days": 3, "lines": [], "total": {"minor": 0, "currency": "EUR"}});
        let read: Quote = serde_json::from_value(old.clone()).unwrap();
        assert_eq!((read.extras.len(), read.mileage), (0, None));
        assert_eq!(serde_json::to_value(&read).unwrap(), old);
    }

    #[test]
    fn kilometres_beyond_the_allowance_are_charged_whole_and_late_days_bring_theirs() {
        let terms = Some(MileageTerms {
            km_included: 1_200,
            km_per_day: 300,
            excess_per_km_minor: 25,
        });
        let driven = |km: f64, returned| RentalReturn {
            odometer_in_km: 10_000.0 + km,
            mileage: terms,
            ..back(returned)
        };
        let on_time = at(5, 10, 0);
        assert!(
            return_charges(&driven(1_200.9, on_time), &p())
                .unwrap()
                .is_empty()
        );
        let lines = return_charges(&driven(1_250.7, on_time), &p()).unwrap();
        assert_eq!(
            lines,
            vec![PriceLine::new(
                LineCode::MileageExcess,
                "mileage, 50 km beyond the 1200 km included",
                Money::new(1_250, Currency::EUR)
            )]
        );
        // A day and two hours late: two more days charged, 600 km more allowed.
        let lines = return_charges(&driven(1_850.0, at(6, 12, 0)), &p()).unwrap();
        assert_eq!(
            lines.iter().map(PriceLine::code).collect::<Vec<_>>(),
            [
                LineCode::LateDays,
                LineCode::LateHours,
                LineCode::MileageExcess
            ]
        );
        assert_eq!(lines[2].amount, Money::new(50 * 25, Currency::EUR));
        // Unlimited (and every booking priced before allowances): never charged.
        let unlimited = RentalReturn {
            mileage: None,
            ..driven(90_000.0, on_time)
        };
        assert!(return_charges(&unlimited, &p()).unwrap().is_empty());
        let backwards = RentalReturn {
            odometer_in_km: 9_999.0,
            ..back(on_time)
        };
        assert_eq!(
            return_charges(&backwards, &p()),
            Err(PricingError::OdometerBackwards)
        );
    }

    #[test]
    fn a_per_day_used_early_return_credits_the_extras_of_the_unused_days() {
        let per_day = PricingPolicy {
            early_return: EarlyReturn::PerDayUsed { fee_minor: 2_500 },
            ..p()
        };
        let seat = [extra(ExtraKind::ChildSeat, 1)];
        let booked = quote(rate(), at(1, 10, 0), at(5, 10, 0), false, &seat, &per_day).unwrap();
        let rental = RentalReturn {
            booked_total: booked.total,
            extras: seat.to_vec(),
            ..back(at(2, 12, 0))
        };
        // Two days used of four: two days and two days of the seat back, less the fee.
        let lines = return_charges(&rental, &per_day).unwrap();
        assert_eq!(amounts(&lines), [-(9_198 + 1_600), 2_500]);
    }

    #[test]
    fn cancellation_is_free_until_a_day_before_pickup() {
        let pickup = at(10, 12, 0);
        assert_eq!(
            cancellation_fee(rate(), pickup, at(9, 12, 0), &p()).minor,
            0
        );
        assert_eq!(
            cancellation_fee(rate(), pickup, at(9, 12, 1), &p()).minor,
            4_599
        );
        assert_eq!(
            cancellation_fee(rate(), pickup, at(11, 0, 0), &p()).minor,
            4_599
        );
    }
}
