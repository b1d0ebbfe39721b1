//! User accounts: registration, log-in with JWTs, profiles, roles, the bootstrap admin.
//!
//! Accounts are a plain table (`users`), not an aggregate: personal data (email, name, phone)
//! must be correctable and erasable, which an append-only log is not. Events elsewhere carry
//! user ids only.
//!
//! - Passwords are hashed with argon2id at the `argon2` crate's default parameters, on the
//!   blocking pool (a hash takes tens of milliseconds of CPU).
//! - Log-in gives the same [`AccountError::InvalidCredentials`] for an unknown email and a wrong
//!   password, and verifies against a dummy hash when the email is unknown so both take about
//!   as long.
//! - Access tokens are short-lived HS256 JWTs with `sub` (user id), `role` (informative),
//!   `sep` (the user's session epoch), `sid` (the session), `iat` and `exp`. A request acts with
//!   the role the users row holds now, and only while the session is open and the epoch
//!   unchanged ([`Accounts::session_role`]).
//! - A login opens a session (`sessions`) with a refresh token (`refresh_tokens`, stored as a
//!   SHA-256 hash). [`Accounts::refresh`] spends it for a new access token and a new refresh
//!   token; a spent one presented again ends the session ([`AccountError::RefreshTokenReused`]).
//!   [`Accounts::logout`] ends one session, [`Accounts::end_sessions`] (and any role change)
//!   all of a user's.
//! - One role per user. The last ADMIN cannot lose the role ([`AccountError::LastAdmin`]), and
//!   [`Accounts::bootstrap_admin`] creates an ADMIN only while there is none; both decide under
//!   one advisory lock, so concurrent start-ups create one admin.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use chrono::{DateTime, TimeDelta, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

/// The unique index on `lower(email)`.
const EMAIL_KEY: &str = "users_email_key";
/// Serialises "who is an admin" decisions: bootstrap and role changes.
const ADMIN_LOCK: i64 = 0x666c_6565_745f_6164; // "fleet_ad"

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    Customer,
    Admin,
    Auditor,
    Analyst,
    Integrator,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Customer,
        Role::Admin,
        Role::Auditor,
        Role::Analyst,
        Role::Integrator,
    ];

    /// The stored and wire name (`CUSTOMER`, `ADMIN`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "CUSTOMER",
            Self::Admin => "ADMIN",
            Self::Auditor => "AUDITOR",
            Self::Analyst => "ANALYST",
            Self::Integrator => "INTEGRATOR",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or(InvalidInput {
                field: "role",
                reason: "must be CUSTOMER, ADMIN, AUDITOR, ANALYST or INTEGRATOR",
            })
    }
}

/// An input value that does not parse; `field` is the API's input field name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidInput {
    pub field: &'static str,
    pub reason: &'static str,
}

fn invalid(field: &'static str, reason: &'static str) -> InvalidInput {
    InvalidInput { field, reason }
}

/// A syntactically valid email address, trimmed and lower-cased.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub const MAX_LEN: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let shape = invalid("email", "must be an address like name@example.com");
        let email = raw.trim().to_lowercase();
        if email.chars().count() > Self::MAX_LEN {
            return Err(invalid("email", "must be at most 254 characters"));
        }
        let Some((local, domain)) = email.split_once('@') else {
            return Err(shape);
        };
        let local_ok = (1..=64).contains(&local.len())
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local
                .chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && !"\"(),:;<>@[\\]".contains(c));
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|label| {
                (1..=63).contains(&label.len())
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_alphanumeric() || c == '-')
            });
        if local_ok && domain_ok {
            Ok(Self(email))
        } else {
            Err(shape)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A password that meets the length rules. Never printed.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub const MIN_CHARS: usize = 10;
    pub const MAX_CHARS: usize = 128;

    pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidInput> {
        let raw = raw.into();
        let chars = raw.chars().count();
        if chars < Self::MIN_CHARS {
            return Err(invalid("password", "must be at least 10 characters"));
        }
        if chars > Self::MAX_CHARS {
            return Err(invalid("password", "must be at most 128 characters"));
        }
        Ok(Self(raw))
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

/// A display name: 1 to 100 characters after trimming, no control characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersonName(String);

impl PersonName {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let name = raw.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(invalid("name", "must be 1 to 100 characters"));
        }
        if name.chars().any(char::is_control) {
            return Err(invalid("name", "must not contain control characters"));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A phone number: digits and spaces, an optional leading `+`, at most 32 characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Phone(String);

impl Phone {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let phone = raw.trim();
        let reason = "must be digits and spaces with an optional leading +, at most 32 characters";
        let body = phone.strip_prefix('+').unwrap_or(phone);
        let ok = phone.len() <= 32
            && body.chars().any(|c| c.is_ascii_digit())
            && body.chars().all(|c| c.is_ascii_digit() || c == ' ');
        if ok {
            Ok(Self(phone.to_owned()))
        } else {
            Err(invalid("phone", reason))
        }
    }

    /// None or a blank string is no phone.
    pub fn parse_optional(raw: Option<&str>) -> Result<Option<Self>, InvalidInput> {
        match raw {
            Some(raw) if !raw.trim().is_empty() => Self::parse(raw).map(Some),
            _ => Ok(None),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A secret string (the JWT signing secret). Debug and Display never show it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What a token says about its bearer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: Uuid,
    /// The role when the token was issued (informative: requests act with the role the
    /// account holds now).
    pub role: Role,
    /// The user's session epoch when the token was issued; the token works while the account
    /// is still at that epoch (0 for tokens from before sessions could end).
    #[serde(default)]
    pub sep: i64,
    /// The session the token belongs to (absent on tokens from before sessions had ids); the
    /// token works while that session is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<Uuid>,
    /// Issued at, seconds since the Unix epoch.
    pub iat: i64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: i64,
}

/// HS256 signing and verification keys and the token lifetime.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: TimeDelta,
    /// How long a session lasts at most, refreshed or not.
    session_ttl: TimeDelta,
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKeys")
            .field("secret", &format_args!(".."))
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl JwtKeys {
    /// HS256 wants a key at least as long as its hash.
    pub const MIN_SECRET_BYTES: usize = 32;

    pub fn new(secret: &Secret, ttl: Duration) -> Result<Self, AccountError> {
        if secret.expose().len() < Self::MIN_SECRET_BYTES {
            return Err(AccountError::WeakSecret {
                min_bytes: Self::MIN_SECRET_BYTES,
            });
        }
        let ttl = TimeDelta::from_std(ttl)
            .ok()
            .filter(|t| *t >= TimeDelta::seconds(1) && *t <= TimeDelta::days(366))
            .ok_or(AccountError::InvalidTtl)?;
        let bytes = secret.expose().as_bytes();
        Ok(Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            ttl,
            session_ttl: TimeDelta::days(30),
        })
    }

    /// Sessions (and so refresh tokens) end this long after the login at the latest (default
    /// 30 days); never shorter than an access token.
    pub fn with_session_ttl(mut self, ttl: Duration) -> Result<Self, AccountError> {
        self.session_ttl = TimeDelta::from_std(ttl)
            .ok()
            .filter(|t| *t >= self.ttl && *t <= TimeDelta::days(366))
            .ok_or(AccountError::InvalidTtl)?;
        Ok(self)
    }

    pub fn ttl(&self) -> TimeDelta {
        self.ttl
    }

    pub fn session_ttl(&self) -> TimeDelta {
        self.session_ttl
    }

    /// A token for `user_id` issued at `now`, and when it expires (whole seconds).
    pub fn issue(
        &self,
        user_id: Uuid,
        role: Role,
        session_epoch: i64,
        session: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<(String, DateTime<Utc>), AccountError> {
        let claims = Claims {
            sub: user_id,
            role,
            sep: session_epoch,
            sid: session,
            iat: now.timestamp(),
            exp: (now + self.ttl).timestamp(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AccountError::Token(e.to_string()))?;
        let expires_at = DateTime::from_timestamp(claims.exp, 0).ok_or(AccountError::InvalidTtl)?;
        Ok((token, expires_at))
    }

    /// The claims of a token this service signed that has not expired (checked against the
    /// system clock, no leeway: issuer and verifier share the clock).
    pub fn verify(&self, token: &str) -> Result<Claims, AccountError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iat", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AccountError::TokenExpired,
                _ => AccountError::InvalidToken,
            })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub phone: Option<String>,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct AuthPayload {
    pub token: String,
    pub expires_at: DateTime<Utc>,
    /// Exchanged for the next access token (and the next refresh token) by
    /// [`Accounts::refresh`]; good once.
    pub refresh_token: String,
    /// When the session ends at the latest.
    pub refresh_expires_at: DateTime<Utc>,
    pub user: User,
}

impl fmt::Debug for AuthPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthPayload")
            .field("token", &format_args!(".."))
            .field("expires_at", &self.expires_at)
            .field("refresh_token", &format_args!(".."))
            .field("refresh_expires_at", &self.refresh_expires_at)
            .field("user", &self.user)
            .finish()
    }
}

/// Raw registration input, parsed by [`Accounts::register`].
#[derive(Clone)]
pub struct RegisterInput {
    pub email: String,
    pub password: String,
    pub name: String,
    pub phone: Option<String>,
}

impl fmt::Debug for RegisterInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterInput")
            .field("email", &self.email)
            .field("password", &format_args!(".."))
            .field("name", &self.name)
            .field("phone", &self.phone)
            .finish()
    }
}

/// A profile change. `None` keeps a field; a blank `phone` removes the phone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProfileUpdate {
    pub name: Option<String>,
    pub phone: Option<String>,
}

/// What [`Accounts::bootstrap_admin`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    Created(User),
    /// There is an admin already; nothing was changed.
    AdminExists,
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error("this email is already registered")]
    EmailTaken,
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("the token has expired")]
    TokenExpired,
    #[error("the token is invalid")]
    InvalidToken,
    #[error("the session has ended (the account's role changed or its sessions were ended)")]
    SessionEnded,
    #[error("the refresh token is invalid, spent or expired; log in again")]
    InvalidRefreshToken,
    #[error(
        "the refresh token was used before: the session is ended on every device; log in again"
    )]
    RefreshTokenReused,
    #[error("no such user")]
    NotFound,
    #[error("the last ADMIN cannot lose the role")]
    LastAdmin,
    #[error("the JWT secret must be at least {min_bytes} bytes")]
    WeakSecret { min_bytes: usize },
    #[error("the token lifetime must be between 1 second and 366 days")]
    InvalidTtl,
    #[error("password hashing failed: {0}")]
    Hashing(String),
    #[error("token signing failed: {0}")]
    Token(String),
    #[error("corrupt user row: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    email: String,
    name: String,
    phone: Option<String>,
    role: String,
    password_hash: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    session_epoch: i64,
}

impl UserRow {
    fn into_user(self) -> Result<User, AccountError> {
        let role = self
            .role
            .parse()
            .map_err(|_| AccountError::Corrupt(format!("role {:?}", self.role)))?;
        Ok(User {
            id: self.id,
            email: self.email,
            name: self.name,
            phone: self.phone,
            role,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

const COLUMNS: &str =
    "id, email, name, phone, role, password_hash, created_at, updated_at, session_epoch";

fn email_taken(e: sqlx::Error) -> AccountError {
    match e.as_database_error().and_then(|d| d.constraint()) {
        Some(EMAIL_KEY) => AccountError::EmailTaken,
        _ => e.into(),
    }
}

/// An argon2id PHC string for `password` (blocking: run it off the async threads).
pub fn hash_password(password: &str) -> Result<String, AccountError> {
    hash_blocking(password)
}

fn hash_blocking(password: &str) -> Result<String, AccountError> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| AccountError::Hashing(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AccountError::Hashing(e.to_string()))
}

fn verify_blocking(password: &str, hash: &str) -> Result<bool, AccountError> {
    let parsed = PasswordHash::new(hash).map_err(|e| AccountError::Corrupt(e.to_string()))?;
    match Argon2::default().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(AccountError::Hashing(e.to_string())),
    }
}

/// A hash of a random password, to verify against when the email is unknown.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let random = Uuid::new_v4().to_string();
        // Cannot fail with a valid salt; an empty hash fails to parse, fast, which only costs
        // the timing cover.
        hash_blocking(&random).unwrap_or_default()
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AccountError> + Send + 'static,
) -> Result<T, AccountError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AccountError::Hashing(format!("hashing task failed: {e}")))?
}

/// The accounts service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Accounts {
    pool: PgPool,
    keys: JwtKeys,
}

impl Accounts {
    pub fn new(pool: PgPool, keys: JwtKeys) -> Self {
        Self { pool, keys }
    }

    pub fn keys(&self) -> &JwtKeys {
        &self.keys
    }

    /// Create a CUSTOMER account and log it in.
    #[tracing::instrument(skip_all, err(level = "debug"))]
    pub async fn register(&self, input: RegisterInput) -> Result<AuthPayload, AccountError> {
        let email = Email::parse(&input.email)?;
        let password = Password::parse(input.password)?;
        let name = PersonName::parse(&input.name)?;
        let phone = Phone::parse_optional(input.phone.as_deref())?;
        let user = self
            .insert(&email, &password, &name, phone.as_ref(), Role::Customer)
            .await?;
        tracing::info!(user.id = %user.id, "user registered");
        self.open_session(user, 0).await
    }

    /// Check an email and password and issue a token.
    #[tracing::instrument(skip_all, err(level = "debug"))]
    pub async fn login(&self, email: &str, password: &str) -> Result<AuthPayload, AccountError> {
        if password.chars().count() > Password::MAX_CHARS {
            return Err(AccountError::InvalidCredentials);
        }
        let row = match Email::parse(email) {
            Ok(email) => self.find_by_email(&email).await?,
            Err(_) => None,
        };
        let password = password.to_owned();
        let Some(row) = row else {
            // Spend the time a real check takes, so timing does not tell which emails exist.
            let _ = blocking(move || verify_blocking(&password, dummy_hash())).await;
            return Err(AccountError::InvalidCredentials);
        };
        let hash = row.password_hash.clone();
        if !blocking(move || verify_blocking(&password, &hash)).await? {
            return Err(AccountError::InvalidCredentials);
        }
        let epoch = row.session_epoch;
        self.open_session(row.into_user()?, epoch).await
    }

    /// The role the holder of `claims` acts with now, if its session is still open: the
    /// account exists, its session epoch is the one the token was issued at, and the token's
    /// session (when it names one) was neither logged out nor ended by reuse.
    pub async fn session_role(&self, claims: &Claims) -> Result<Role, AccountError> {
        let row: Option<(String, i64, bool)> = sqlx::query_as(
            "SELECT u.role, u.session_epoch, \
               $2::uuid IS NULL OR EXISTS (SELECT 1 FROM sessions s WHERE s.id = $2 \
                 AND s.user_id = u.id AND s.revoked_at IS NULL AND s.expires_at > now()) \
             FROM users u WHERE u.id = $1",
        )
        .bind(claims.sub)
        .bind(claims.sid)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some((role, epoch, open)) if epoch == claims.sep && open => Role::from_str(&role)
                .map_err(|_| AccountError::Corrupt(format!("unknown role {role:?}"))),
            _ => Err(AccountError::SessionEnded),
        }
    }

    /// Exchange a refresh token for a new access token and a new refresh token (rotation).
    /// A refresh token is good once: presenting a spent one again ends its whole session, since
    /// either its holder or a thief already refreshed with it.
    #[tracing::instrument(skip_all, err(level = "debug"))]
    pub async fn refresh(&self, refresh_token: &str) -> Result<AuthPayload, AccountError> {
        let (token_id, secret) =
            parse_refresh_token(refresh_token).ok_or(AccountError::InvalidRefreshToken)?;
        let mut tx = self.pool.begin().await?;
        type Row = (
            Uuid,
            Vec<u8>,
            Option<DateTime<Utc>>,
            Uuid,
            DateTime<Utc>,
            bool,
            i64,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT t.session_id, t.secret_hash, t.used_at, s.user_id, s.expires_at, \
               s.revoked_at IS NOT NULL, s.epoch \
             FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id \
             WHERE t.id = $1 FOR UPDATE OF t, s",
        )
        .bind(token_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((session, stored, used_at, user_id, session_expires, revoked, epoch)) = row else {
            return Err(AccountError::InvalidRefreshToken);
        };
        if !same_digest(&stored, &secret_digest(&secret)) {
            return Err(AccountError::InvalidRefreshToken);
        }
        if used_at.is_some() {
            if !revoked {
                sqlx::query(
                    "UPDATE sessions SET revoked_at = now(), revoked_reason = 'refresh token reused' \
                     WHERE id = $1",
                )
                .bind(session)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                tracing::warn!(user.id = %user_id, session.id = %session,
                    "a spent refresh token was presented again: the session is ended");
            }
            return Err(AccountError::RefreshTokenReused);
        }
        if revoked || session_expires <= Utc::now() {
            return Err(AccountError::InvalidRefreshToken);
        }
        let sql = format!("SELECT {COLUMNS} FROM users WHERE id = $1");
        let user: UserRow = sqlx::query_as(&sql)
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
        if user.session_epoch != epoch {
            // The role changed, or every session was ended, since this login.
            return Err(AccountError::InvalidRefreshToken);
        }
        sqlx::query("UPDATE refresh_tokens SET used_at = now() WHERE id = $1")
            .bind(token_id)
            .execute(&mut *tx)
            .await?;
        let (next, next_secret) = new_refresh_token();
        sqlx::query("INSERT INTO refresh_tokens (id, session_id, secret_hash) VALUES ($1, $2, $3)")
            .bind(next)
            .bind(session)
            .bind(secret_digest(&next_secret).as_slice())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let user = user.into_user()?;
        let (token, expires_at) =
            self.keys
                .issue(user.id, user.role, epoch, Some(session), Utc::now())?;
        Ok(AuthPayload {
            token,
            expires_at,
            refresh_token: format_refresh_token(next, &next_secret),
            refresh_expires_at: session_expires,
            user,
        })
    }

    /// End one session (the caller's): its access and refresh tokens stop working at once.
    #[tracing::instrument(skip_all, fields(user.id = %user_id), err(level = "debug"))]
    pub async fn logout(&self, user_id: Uuid, session: Uuid) -> Result<(), AccountError> {
        sqlx::query(
            "UPDATE sessions SET revoked_at = now(), revoked_reason = 'logged out' \
             WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
        )
        .bind(session)
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Open a session for `user` and issue its first access and refresh tokens.
    async fn open_session(
        &self,
        user: User,
        session_epoch: i64,
    ) -> Result<AuthPayload, AccountError> {
        let now = Utc::now();
        let session = Uuid::now_v7();
        // Whole seconds, like a JWT's `exp`: what is stored is what is answered.
        let expires = DateTime::from_timestamp((now + self.keys.session_ttl()).timestamp(), 0)
            .ok_or(AccountError::InvalidTtl)?;
        let (token_id, secret) = new_refresh_token();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO sessions (id, user_id, epoch, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(session)
        .bind(user.id)
        .bind(session_epoch)
        .bind(expires)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO refresh_tokens (id, session_id, secret_hash) VALUES ($1, $2, $3)")
            .bind(token_id)
            .bind(session)
            .bind(secret_digest(&secret).as_slice())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let (token, expires_at) =
            self.keys
                .issue(user.id, user.role, session_epoch, Some(session), now)?;
        Ok(AuthPayload {
            token,
            expires_at,
            refresh_token: format_refresh_token(token_id, &secret),
            refresh_expires_at: expires,
            user,
        })
    }

    /// End every session of `user_id`: each token issued before stops working.
    #[tracing::instrument(skip_all, fields(user.id = %user_id), err(level = "debug"))]
    pub async fn end_sessions(&self, user_id: Uuid) -> Result<(), AccountError> {
        let mut tx = self.pool.begin().await?;
        let ended = sqlx::query(
            "UPDATE users SET session_epoch = session_epoch + 1, updated_at = now() WHERE id = $1",
        )
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        if ended.rows_affected() == 0 {
            return Err(AccountError::NotFound);
        }
        sqlx::query(
            "UPDATE sessions SET revoked_at = now(), revoked_reason = 'every session ended' \
             WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!("sessions ended");
        Ok(())
    }

    /// The claims of a valid, unexpired token.
    pub fn verify_token(&self, token: &str) -> Result<Claims, AccountError> {
        self.keys.verify(token)
    }

    pub async fn get(&self, user_id: Uuid) -> Result<Option<User>, AccountError> {
        let sql = format!("SELECT {COLUMNS} FROM users WHERE id = $1");
        sqlx::query_as::<_, UserRow>(&sql)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?
            .map(UserRow::into_user)
            .transpose()
    }

    #[tracing::instrument(skip_all, fields(user.id = %user_id), err(level = "debug"))]
    pub async fn update_profile(
        &self,
        user_id: Uuid,
        update: ProfileUpdate,
    ) -> Result<User, AccountError> {
        let name = update.name.as_deref().map(PersonName::parse).transpose()?;
        let phone = match update.phone.as_deref() {
            None => None,
            Some(raw) => Some(Phone::parse_optional(Some(raw))?),
        };
        let sql = format!(
            "UPDATE users SET name = COALESCE($2, name), \
             phone = CASE WHEN $3 THEN $4 ELSE phone END, updated_at = now() \
             WHERE id = $1 RETURNING {COLUMNS}"
        );
        sqlx::query_as::<_, UserRow>(&sql)
            .bind(user_id)
            .bind(name.as_ref().map(PersonName::as_str))
            .bind(phone.is_some())
            .bind(phone.flatten().as_ref().map(Phone::as_str))
            .fetch_optional(&self.pool)
            .await?
            .ok_or(AccountError::NotFound)?
            .into_user()
    }

    /// Give a user `role` (their only role). Refuses to demote the last ADMIN.
    #[tracing::instrument(skip_all, fields(user.id = %user_id, role = %role), err(level = "debug"))]
    pub async fn grant_role(&self, user_id: Uuid, role: Role) -> Result<User, AccountError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(ADMIN_LOCK)
            .execute(&mut *tx)
            .await?;
        let current: Option<String> =
            sqlx::query_scalar("SELECT role FROM users WHERE id = $1 FOR UPDATE")
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?;
        let current = current.ok_or(AccountError::NotFound)?;
        if current == Role::Admin.as_str() && role != Role::Admin {
            let admins: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE role = $1")
                .bind(Role::Admin.as_str())
                .fetch_one(&mut *tx)
                .await?;
            if admins <= 1 {
                return Err(AccountError::LastAdmin);
            }
        }
        let sql = format!(
            "UPDATE users SET role = $2, updated_at = now(), \
               session_epoch = session_epoch + CASE WHEN role = $2 THEN 0 ELSE 1 END \
             WHERE id = $1 RETURNING {COLUMNS}"
        );
        let row = sqlx::query_as::<_, UserRow>(&sql)
            .bind(user_id)
            .bind(role.as_str())
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(from = %current, "role granted");
        row.into_user()
    }

    /// Create the first ADMIN, only while no ADMIN exists (safe to run at every start-up).
    ///
    /// An existing account with that email is not promoted: whoever registered it first would
    /// become admin. That is [`AccountError::EmailTaken`].
    #[tracing::instrument(skip_all, err(level = "debug"))]
    pub async fn bootstrap_admin(
        &self,
        email: &str,
        password: &str,
    ) -> Result<Bootstrap, AccountError> {
        let email = Email::parse(email)?;
        let password = Password::parse(password)?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(ADMIN_LOCK)
            .execute(&mut *tx)
            .await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE role = $1)")
                .bind(Role::Admin.as_str())
                .fetch_one(&mut *tx)
                .await?;
        if exists {
            return Ok(Bootstrap::AdminExists);
        }
        let hash = {
            let password = password.clone();
            blocking(move || hash_blocking(password.expose())).await?
        };
        let sql = format!(
            "INSERT INTO users (id, email, name, phone, role, password_hash) \
             VALUES ($1, $2, $3, NULL, $4, $5) RETURNING {COLUMNS}"
        );
        let row = sqlx::query_as::<_, UserRow>(&sql)
            .bind(Uuid::now_v7())
            .bind(email.as_str())
            .bind("Administrator")
            .bind(Role::Admin.as_str())
            .bind(hash)
            .fetch_one(&mut *tx)
            .await
            .map_err(email_taken)?;
        tx.commit().await?;
        let user = row.into_user()?;
        Ok(Bootstrap::Created(user))
    }

    async fn insert(
        &self,
        email: &Email,
        password: &Password,
        name: &PersonName,
        phone: Option<&Phone>,
        role: Role,
    ) -> Result<User, AccountError> {
        let hash = {
            let password = password.clone();
            blocking(move || hash_blocking(password.expose())).await?
        };
        let sql = format!(
            "INSERT INTO users (id, email, name, phone, role, password_hash) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
        );
        sqlx::query_as::<_, UserRow>(&sql)
            .bind(Uuid::now_v7())
            .bind(email.as_str())
            .bind(name.as_str())
            .bind(phone.map(Phone::as_str))
            .bind(role.as_str())
            .bind(hash)
            .fetch_one(&self.pool)
            .await
            .map_err(email_taken)?
            .into_user()
    }

    async fn find_by_email(&self, email: &Email) -> Result<Option<UserRow>, AccountError> {
        let sql = format!("SELECT {COLUMNS} FROM users WHERE lower(email) = $1");
        Ok(sqlx::query_as::<_, UserRow>(&sql)
            .bind(email.as_str())
            .fetch_optional(&self.pool)
            .await?)
    }
}

/// How a refresh token starts: `flr_<token id>.<secret>`, both hex.
const REFRESH_PREFIX: &str = "flr_";

fn new_refresh_token() -> (Uuid, [u8; 32]) {
    use rand::Rng as _;
    (Uuid::now_v7(), rand::rng().random())
}

fn format_refresh_token(id: Uuid, secret: &[u8; 32]) -> String {
    format!("{REFRESH_PREFIX}{}.{}", id.simple(), hex::encode(secret))
}

fn parse_refresh_token(token: &str) -> Option<(Uuid, Vec<u8>)> {
    let (id, secret) = token.strip_prefix(REFRESH_PREFIX)?.split_once('.')?;
    let secret = hex::decode(secret).ok().filter(|s| s.len() == 32)?;
    Some((Uuid::try_parse(id).ok()?, secret))
}

fn secret_digest(secret: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(secret).into()
}

/// Compare digests without stopping at the first difference.
fn same_digest(stored: &[u8], presented: &[u8; 32]) -> bool {
    stored.len() == presented.len()
        && stored
            .iter()
            .zip(presented)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}
