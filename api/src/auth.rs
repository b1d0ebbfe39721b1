//! Who is calling: the bearer token's claims, and the role checks resolvers make.
//!
//! The HTTP handler (and the WebSocket `connection_init`) turns the `Authorization` value into
//! a [`Caller`] and puts it in the request's data; resolvers ask it for what they need. A bad
//! or expired token is remembered as such, so an operation that needs a user answers
//! UNAUTHENTICATED with the reason, while anonymous operations (register, login, search) work.

use async_graphql::Context;
use commands::accounts::{Accounts, Role};
use uuid::Uuid;

use crate::error::{ApiResult, AppError};

/// The caller of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    /// A token was sent but it is invalid or expired, or its session has ended.
    BadToken(&'static str),
    /// A valid token whose session could not be checked (the database did not answer).
    Unchecked,
    User {
        id: Uuid,
        role: Role,
        /// The session the token belongs to (absent on tokens from before sessions had ids).
        session: Option<Uuid>,
    },
}

impl Caller {
    /// From an `Authorization` header value (`Bearer <jwt>`), or its absence.
    ///
    /// A valid signature is not enough: the account must still be at the session epoch the
    /// token was issued at, and the caller acts with the role the account holds now, so a
    /// demoted or signed-out user loses its rights at once (one primary-key lookup).
    pub async fn from_authorization(accounts: &Accounts, value: Option<&str>) -> Self {
        let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Self::Anonymous;
        };
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Self::BadToken("the Authorization header must be `Bearer <token>`"),
        };
        let claims = match accounts.verify_token(token) {
            Ok(claims) => claims,
            Err(commands::accounts::AccountError::TokenExpired) => {
                return Self::BadToken("the token has expired; log in again");
            }
            Err(_) => return Self::BadToken("the token is invalid"),
        };
        match accounts.session_role(&claims).await {
            Ok(role) => Self::User {
                id: claims.sub,
                role,
                session: claims.sid,
            },
            Err(commands::accounts::AccountError::SessionEnded) => {
                Self::BadToken("the session has ended; log in again")
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not check a session");
                Self::Unchecked
            }
        }
    }

    /// The caller's session, or UNAUTHENTICATED.
    pub fn session(&self) -> ApiResult<(Uuid, Option<Uuid>)> {
        let (id, _) = self.user()?;
        match self {
            Self::User { session, .. } => Ok((id, *session)),
            _ => Err(AppError::Unauthenticated),
        }
    }

    /// The key rate limits count under: the user, or `None` for anonymous callers.
    pub fn user_id(&self) -> Option<Uuid> {
        match self {
            Self::User { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// The caller as a user, or UNAUTHENTICATED.
    pub fn user(&self) -> ApiResult<(Uuid, Role)> {
        match self {
            Self::User { id, role, .. } => Ok((*id, *role)),
            Self::BadToken(reason) => Err(AppError::InvalidToken(reason)),
            Self::Unchecked => Err(AppError::Unavailable),
            Self::Anonymous => Err(AppError::Unauthenticated),
        }
    }

    /// The caller, who must hold one of `roles` (else FORBIDDEN).
    pub fn require(&self, roles: &[Role]) -> ApiResult<(Uuid, Role)> {
        let (id, role) = self.user()?;
        if roles.contains(&role) {
            Ok((id, role))
        } else {
            Err(AppError::Forbidden)
        }
    }

    /// The caller may act on something owned by `owner`: its owner, or one of `staff`.
    pub fn require_owner_or(&self, owner: Uuid, staff: &[Role]) -> ApiResult<(Uuid, Role)> {
        let (id, role) = self.user()?;
        if id == owner || staff.contains(&role) {
            Ok((id, role))
        } else {
            Err(AppError::Forbidden)
        }
    }

    /// The actor written into events' metadata: the user id, never personal data.
    pub fn actor(&self) -> String {
        match self {
            Self::User { id, .. } => format!("user:{id}"),
            _ => "anonymous".into(),
        }
    }
}

/// The caller of the operation `ctx` belongs to.
pub fn caller<'a>(ctx: &'a Context<'_>) -> ApiResult<&'a Caller> {
    ctx.data::<Caller>()
        .map_err(|e| AppError::internal(format!("no caller in the request data: {}", e.message)))
}

pub const ADMIN: &[Role] = &[Role::Admin];
pub const AUDIT: &[Role] = &[Role::Admin, Role::Auditor];
pub const ANALYTICS: &[Role] = &[Role::Admin, Role::Analyst];
pub const TELEMETRY_WRITE: &[Role] = &[Role::Admin, Role::Integrator];
/// Who may read a car's telemetry history (`telemetry`).
pub const TELEMETRY_READERS: &[Role] = &[Role::Admin, Role::Analyst, Role::Integrator];
/// Who may see where any car is right now (`Car.lastTelemetry`): personal data while someone
/// rents it, so besides these only the customer renting that car sees it.
pub const LIVE_POSITION_READERS: &[Role] = &[Role::Admin, Role::Integrator];
pub const EVENT_READERS: &[Role] = &[Role::Admin, Role::Auditor, Role::Integrator];
/// Who may read any booking: staff and auditors.
pub const BOOKING_READERS: &[Role] = &[Role::Admin, Role::Auditor];
