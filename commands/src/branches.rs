//! Branches: the rental locations cars belong to. A plain reference table, not an aggregate.
//!
//! A branch's settings apply to what is decided from then on: its turnaround (minutes a car
//! returned there stays out for cleaning) is read when a booking reserves a car and written
//! into that reservation's event, so changing it never moves a reservation already made.
//!
//! Codes are 1 to 16 characters `A-Z`, `0-9` or `-`, taken as given (no case folding, so a
//! code means the same thing in a lookup, a car's events and the API). Cars refer to branches
//! by code; the table is written by ADMIN `addBranch` and read everywhere.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::accounts::InvalidInput;

/// The table's primary key; a duplicate code violates it.
const CODE_KEY: &str = "branches_pkey";

#[derive(Clone, Debug, PartialEq)]
pub struct BranchInput {
    pub code: String,
    pub name: String,
    pub city: String,
    pub latitude: f64,
    pub longitude: f64,
    /// Minutes a car returned here stays out before its next rental; `None`: the default
    /// ([`DEFAULT_TURNAROUND_MINUTES`]).
    pub turnaround_minutes: Option<i64>,
    /// The currency cars here are priced in; `None`: none set, cars default to the fleet's and
    /// may be priced in another. Set when the branch is added (its cars are priced in it, so it
    /// does not change).
    pub currency: Option<domain::Currency>,
}

/// Changes to a branch; `None` keeps the current value. The code never changes (cars and
/// events refer to it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BranchPatch {
    pub name: Option<String>,
    pub city: Option<String>,
    pub turnaround_minutes: Option<i64>,
}

/// A new branch's turnaround unless it says one: the hour every branch had before it was a
/// setting.
pub const DEFAULT_TURNAROUND_MINUTES: i64 = domain::car::LEGACY_TURNAROUND_MINUTES;

#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct Branch {
    pub code: String,
    pub name: String,
    pub city: String,
    pub latitude: f64,
    pub longitude: f64,
    pub turnaround_minutes: i32,
    /// `None`: the fleet's currency.
    pub currency: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl Branch {
    /// The currency cars here are priced in: the branch's, or else `fleet`.
    pub fn currency_or(&self, fleet: domain::Currency) -> domain::Currency {
        self.currency
            .as_deref()
            .and_then(|c| domain::Currency::parse(c).ok())
            .unwrap_or(fleet)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BranchError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error("branch code is already taken")]
    CodeTaken,
    #[error("no such branch")]
    NotFound,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Check a branch code: 1 to 16 characters `A-Z`, `0-9` or `-`.
pub fn check_code(code: &str) -> Result<(), InvalidInput> {
    let ok = (1..=16).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(InvalidInput {
            field: "code",
            reason: "must be 1 to 16 characters A-Z, 0-9 or -",
        })
    }
}

fn text(field: &'static str, value: &str) -> Result<String, InvalidInput> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > 100 || value.chars().any(char::is_control) {
        return Err(InvalidInput {
            field,
            reason: "must be 1 to 100 characters",
        });
    }
    Ok(value.to_owned())
}

fn turnaround(minutes: i64) -> Result<i32, InvalidInput> {
    if (0..=domain::car::MAX_TURNAROUND_MINUTES).contains(&minutes) {
        Ok(minutes as i32)
    } else {
        Err(InvalidInput {
            field: "turnaroundMinutes",
            reason: "must be between 0 and 1440 (a day)",
        })
    }
}

fn coordinate(
    field: &'static str,
    value: f64,
    limit: f64,
    reason: &'static str,
) -> Result<f64, InvalidInput> {
    // NaN fails `contains`.
    if (-limit..=limit).contains(&value) {
        Ok(value)
    } else {
        Err(InvalidInput { field, reason })
    }
}

const COLUMNS: &str =
    "code, name, city, latitude, longitude, turnaround_minutes, currency, created_at";

/// The branches service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Branches {
    pool: PgPool,
}

impl Branches {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Add a branch; a code in use is [`BranchError::CodeTaken`].
    #[tracing::instrument(skip_all, fields(branch.code = %input.code), err(level = "debug"))]
    pub async fn add(&self, input: BranchInput) -> Result<Branch, BranchError> {
        check_code(&input.code)?;
        let name = text("name", &input.name)?;
        let city = text("city", &input.city)?;
        let latitude = coordinate(
            "position.latitude",
            input.latitude,
            90.0,
            "must be between -90 and 90",
        )?;
        let longitude = coordinate(
            "position.longitude",
            input.longitude,
            180.0,
            "must be between -180 and 180",
        )?;
        let turnaround = turnaround(
            input
                .turnaround_minutes
                .unwrap_or(DEFAULT_TURNAROUND_MINUTES),
        )?;
        let sql = format!(
            "INSERT INTO branches \
               (code, name, city, latitude, longitude, turnaround_minutes, currency) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
        );
        sqlx::query_as::<_, Branch>(&sql)
            .bind(&input.code)
            .bind(name)
            .bind(city)
            .bind(latitude)
            .bind(longitude)
            .bind(turnaround)
            .bind(input.currency.map(|c| c.as_str().to_owned()))
            .fetch_one(&self.pool)
            .await
            .map_err(
                |e| match e.as_database_error().and_then(|d| d.constraint()) {
                    Some(CODE_KEY) => BranchError::CodeTaken,
                    _ => e.into(),
                },
            )
    }

    /// Change a branch's name, city or turnaround; the branch as it is now. A new turnaround
    /// applies to reservations made from now on.
    #[tracing::instrument(skip_all, fields(branch.code = %code), err(level = "debug"))]
    pub async fn update(&self, code: &str, patch: BranchPatch) -> Result<Branch, BranchError> {
        let name = patch.name.as_deref().map(|v| text("name", v)).transpose()?;
        let city = patch.city.as_deref().map(|v| text("city", v)).transpose()?;
        let turnaround = patch.turnaround_minutes.map(turnaround).transpose()?;
        let sql = format!(
            "UPDATE branches SET name = coalesce($2, name), city = coalesce($3, city), \
             turnaround_minutes = coalesce($4, turnaround_minutes) WHERE code = $1 \
             RETURNING {COLUMNS}"
        );
        sqlx::query_as::<_, Branch>(&sql)
            .bind(code)
            .bind(name)
            .bind(city)
            .bind(turnaround)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(BranchError::NotFound)
    }

    /// The branches of `codes` that exist (one query, for a page of cars or bookings).
    pub async fn get_many(&self, codes: &[String]) -> Result<Vec<Branch>, BranchError> {
        let sql = format!("SELECT {COLUMNS} FROM branches WHERE code = ANY($1)");
        Ok(sqlx::query_as::<_, Branch>(&sql)
            .bind(codes)
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn get(&self, code: &str) -> Result<Option<Branch>, BranchError> {
        let sql = format!("SELECT {COLUMNS} FROM branches WHERE code = $1");
        Ok(sqlx::query_as::<_, Branch>(&sql)
            .bind(code)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Every branch, ordered by code.
    pub async fn list(&self) -> Result<Vec<Branch>, BranchError> {
        let sql = format!("SELECT {COLUMNS} FROM branches ORDER BY code");
        Ok(sqlx::query_as::<_, Branch>(&sql)
            .fetch_all(&self.pool)
            .await?)
    }
}
