//! Branches: the rental locations cars belong to. A plain reference table, not an aggregate.
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
}

#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct Branch {
    pub code: String,
    pub name: String,
    pub city: String,
    pub latitude: f64,
    pub longitude: f64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum BranchError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error("branch code is already taken")]
    CodeTaken,
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

const COLUMNS: &str = "code, name, city, latitude, longitude, created_at";

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
        let sql = format!(
            "INSERT INTO branches (code, name, city, latitude, longitude) \
             VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
        );
        sqlx::query_as::<_, Branch>(&sql)
            .bind(&input.code)
            .bind(name)
            .bind(city)
            .bind(latitude)
            .bind(longitude)
            .fetch_one(&self.pool)
            .await
            .map_err(
                |e| match e.as_database_error().and_then(|d| d.constraint()) {
                    Some(CODE_KEY) => BranchError::CodeTaken,
                    _ => e.into(),
                },
            )
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
