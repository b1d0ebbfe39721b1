//! `AppError`: every failure the API reports, mapped once to a contract `extensions.code`.
//!
//! Service errors convert into it with `From`; internal and dependency failures are logged here
//! (once, with the detail) and reach the client as a fixed sentence, never the detail.

use async_graphql::ErrorExtensions as _;
use commands::ExecuteError;
use commands::accounts::AccountError;
use commands::booking::BookingFlowError;
use commands::branches::BranchError;
use commands::checkout::CheckoutError;
use commands::fleet::FleetError;
use commands::history::HistoryError;
use commands::payments::PaymentServiceError;
use domain::car::CarError;
use domain::telemetry::TelemetryError;
use eventstore::EventStoreError;

/// The codes of the public contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Unauthenticated,
    Forbidden,
    NotFound,
    BadUserInput,
    Conflict,
    RateLimited,
    Unavailable,
    Internal,
    /// The document's shape is over a bound (fields, depth, root fields, complexity, one
    /// credential check per document); `extensions.limit` names it, `extensions.max` its value.
    QueryTooComplex,
    /// A JSON batch holds more operations than allowed.
    BatchTooLarge,
    /// The request body is over the byte limit (HTTP 413).
    RequestTooLarge,
    /// The request ran past its wall-clock budget and was stopped (HTTP 503); retry.
    RequestTimeout,
    /// A WebSocket already runs as many operations as one connection may; complete one first
    /// (`extensions.limit` = `openOperations`, `extensions.max` its value).
    TooManyOperations,
    /// A client address already holds as many WebSocket connections as it may (HTTP 429;
    /// `extensions.limit` = `connections`).
    TooManyConnections,
    /// A read model this field is answered from stopped at an event it cannot apply
    /// (`extensions.readModels` names them); other fields and every command still work.
    ReadModelFailed,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden => "FORBIDDEN",
            Self::NotFound => "NOT_FOUND",
            Self::BadUserInput => "BAD_USER_INPUT",
            Self::Conflict => "CONFLICT",
            Self::RateLimited => "RATE_LIMITED",
            Self::Unavailable => "UNAVAILABLE",
            Self::Internal => "INTERNAL",
            Self::QueryTooComplex => "QUERY_TOO_COMPLEX",
            Self::BatchTooLarge => "BATCH_TOO_LARGE",
            Self::RequestTooLarge => "REQUEST_TOO_LARGE",
            Self::RequestTimeout => "REQUEST_TIMEOUT",
            Self::TooManyOperations => "TOO_MANY_OPERATIONS",
            Self::TooManyConnections => "TOO_MANY_CONNECTIONS",
            Self::ReadModelFailed => "READ_MODEL_FAILED",
        }
    }
}

/// A failure as the client sees it. Deliberately not `Display`: async-graphql converts any
/// `Display` error into a message without a code, so this type converts only through its own
/// `From`, which sets `extensions.code`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppError {
    Unauthenticated,
    InvalidToken(&'static str),
    Forbidden,
    NotFound(String),
    BadInput {
        field: String,
        message: String,
    },
    Conflict(String),
    RateLimited {
        retry_after_secs: u64,
    },
    Unavailable,
    /// UNAVAILABLE for good: the server is not set up for it (e.g. no payment gateway);
    /// retrying does not help, the operator must configure it.
    Unconfigured(String),
    /// The read models a field is answered from that have failed.
    ReadModelFailed(Vec<String>),
    Internal,
}

impl AppError {
    pub fn bad_input(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadInput {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound(what.into())
    }

    /// The message the client reads.
    pub fn message(&self) -> String {
        match self {
            Self::Unauthenticated => {
                "authentication required: send Authorization: Bearer <token> from login or register"
                    .into()
            }
            Self::InvalidToken(reason) => (*reason).into(),
            Self::Forbidden => "not allowed for your role".into(),
            Self::NotFound(what) => format!("{what} not found"),
            Self::BadInput { field, message } => format!("invalid {field}: {message}"),
            Self::Conflict(message) => message.clone(),
            Self::RateLimited { retry_after_secs } => {
                format!("too many requests; retry after {retry_after_secs} s")
            }
            Self::Unavailable => "a dependency is unavailable; retry shortly".into(),
            Self::Unconfigured(what) => format!("{what} on this server"),
            Self::ReadModelFailed(names) => format!(
                "this field is answered from the read model(s) {}, which stopped at an event \
                 they cannot apply; operators have been alerted. Other fields and commands work",
                names.join(", ")
            ),
            Self::Internal => "internal error".into(),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Self::Unauthenticated | Self::InvalidToken(_) => Code::Unauthenticated,
            Self::Forbidden => Code::Forbidden,
            Self::NotFound(_) => Code::NotFound,
            Self::BadInput { .. } => Code::BadUserInput,
            Self::Conflict(_) => Code::Conflict,
            Self::RateLimited { .. } => Code::RateLimited,
            Self::Unavailable | Self::Unconfigured(_) => Code::Unavailable,
            Self::ReadModelFailed(_) => Code::ReadModelFailed,
            Self::Internal => Code::Internal,
        }
    }

    /// An unexpected failure: logged with its detail, reported as INTERNAL.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::Internal
    }

    /// A database failure: UNAVAILABLE when the server cannot be reached, else INTERNAL.
    pub fn database(e: &sqlx::Error) -> Self {
        if eventstore::error::is_unavailable_sqlx(e) {
            tracing::warn!(error = %e, "database unavailable");
            Self::Unavailable
        } else {
            Self::internal(e)
        }
    }

    fn store(e: &EventStoreError) -> Self {
        match e {
            EventStoreError::OptimisticConcurrency { .. } => {
                Self::Conflict("a concurrent change won; retry".into())
            }
            EventStoreError::Database(db) => Self::database(db),
            EventStoreError::Timeout(_) => {
                tracing::warn!(error = %e, "event store timed out");
                Self::Unavailable
            }
            other => Self::internal(other),
        }
    }
}

impl AppError {
    /// The GraphQL error, with `extensions.code` (and `field` or `retryAfter`).
    pub fn to_graphql(&self) -> async_graphql::Error {
        async_graphql::Error::new(self.message()).extend_with(|_, ext| {
            ext.set("code", self.code().as_str());
            match self {
                Self::BadInput { field, .. } => ext.set("field", field.as_str()),
                Self::RateLimited { retry_after_secs } => ext.set("retryAfter", *retry_after_secs),
                Self::ReadModelFailed(names) => ext.set("readModels", names.clone()),
                _ => {}
            }
        })
    }
}

impl From<AppError> for async_graphql::Error {
    fn from(e: AppError) -> Self {
        e.to_graphql()
    }
}

/// The result type of resolvers.
pub type ApiResult<T> = Result<T, AppError>;

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        Self::database(&e)
    }
}

impl From<EventStoreError> for AppError {
    fn from(e: EventStoreError) -> Self {
        Self::store(&e)
    }
}

impl From<AccountError> for AppError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::Invalid(i) => Self::bad_input(i.field, i.reason),
            AccountError::EmailTaken => Self::Conflict("this email is already registered".into()),
            AccountError::InvalidCredentials => Self::InvalidToken("invalid email or password"),
            AccountError::TokenExpired => Self::InvalidToken("the token has expired"),
            AccountError::InvalidToken => Self::InvalidToken("the token is invalid"),
            AccountError::SessionEnded => Self::InvalidToken("the session has ended; log in again"),
            AccountError::InvalidRefreshToken => {
                Self::InvalidToken("the refresh token is invalid, spent or expired; log in again")
            }
            AccountError::RefreshTokenReused => Self::InvalidToken(
                "the refresh token was used before: the session is ended on every device; log in again",
            ),
            AccountError::NotFound => Self::not_found("user"),
            AccountError::LastAdmin => Self::Conflict("the last ADMIN cannot lose the role".into()),
            AccountError::Database(db) => Self::database(&db),
            other => Self::internal(other),
        }
    }
}

impl From<BranchError> for AppError {
    fn from(e: BranchError) -> Self {
        match e {
            BranchError::Invalid(i) => Self::bad_input(i.field, i.reason),
            BranchError::CodeTaken => Self::Conflict("branch code is already taken".into()),
            BranchError::NotFound => Self::not_found("branch"),
            BranchError::Database(db) => Self::database(&db),
        }
    }
}

fn execute<E: std::error::Error>(
    e: ExecuteError<E>,
    rejected: impl FnOnce(E) -> AppError,
) -> AppError {
    match e {
        ExecuteError::Rejected(rule) => rejected(rule),
        ExecuteError::Conflict { attempts, .. } => contended(attempts),
        ExecuteError::Store(s) => AppError::store(&s),
        ExecuteError::Codec(c) => AppError::internal(c),
    }
}

fn contended(attempts: u32) -> AppError {
    AppError::Conflict(format!(
        "too many concurrent changes (gave up after {attempts} attempts); retry"
    ))
}

/// Business rules of the Car aggregate: invalid values are BAD_USER_INPUT, the rest CONFLICT.
pub fn car_error(e: CarError) -> AppError {
    match e {
        CarError::InvalidDetails { field, reason } => AppError::bad_input(field, reason),
        CarError::NonPositiveRate => AppError::bad_input("dailyRate", "must be positive"),
        CarError::CurrencyChange { .. } => AppError::bad_input("dailyRate", e.to_string()),
        CarError::InvalidBranch => AppError::bad_input("branchCode", e.to_string()),
        CarError::WindowInPast => AppError::bad_input("start", e.to_string()),
        CarError::NotRegistered => AppError::not_found("car"),
        other => AppError::Conflict(other.to_string()),
    }
}

impl From<ExecuteError<CarError>> for AppError {
    fn from(e: ExecuteError<CarError>) -> Self {
        execute(e, car_error)
    }
}

impl From<ExecuteError<TelemetryError>> for AppError {
    fn from(e: ExecuteError<TelemetryError>) -> Self {
        execute(e, |t| match t {
            TelemetryError::BatchTooLarge { .. } => AppError::bad_input("readings", t.to_string()),
            other => AppError::Conflict(other.to_string()),
        })
    }
}

impl From<FleetError> for AppError {
    fn from(e: FleetError) -> Self {
        match e {
            FleetError::CarNotFound => Self::not_found("car"),
            FleetError::Car(c) => c.into(),
            FleetError::Telemetry(t) => t.into(),
            FleetError::Contended(n) => contended(n),
            FleetError::Store(s) => Self::store(&s),
        }
    }
}

impl From<BookingFlowError> for AppError {
    fn from(e: BookingFlowError) -> Self {
        use domain::booking::BookingError as B;
        use domain::pricing::PricingError as P;
        match e {
            BookingFlowError::CarNotFound => Self::not_found("car"),
            BookingFlowError::BookingNotFound => Self::not_found("booking"),
            // The car's window is the booking's: name the booking's argument.
            BookingFlowError::Car(CarError::WindowInPast) => {
                Self::bad_input("pickupAt", "the pick-up time is in the past")
            }
            BookingFlowError::Car(c) => car_error(c),
            BookingFlowError::Booking(b) => match b {
                B::NotFound => Self::not_found("booking"),
                B::PickupInPast => Self::bad_input("pickupAt", b.to_string()),
                B::InvalidRating => Self::bad_input("rating", b.to_string()),
                B::CommentTooLong => Self::bad_input("comment", b.to_string()),
                B::Invalid { field, reason } => Self::bad_input(field, reason),
                B::OdometerBackwards { .. } => Self::bad_input("odometerKm", b.to_string()),
                other => Self::Conflict(other.to_string()),
            },
            BookingFlowError::Pricing(p) => match p {
                P::EmptyWindow => Self::bad_input("returnAt", p.to_string()),
                P::FuelOutOfRange => Self::bad_input("fuelPercent", p.to_string()),
                P::ExtraNotOffered(_) | P::ExtraQuantity { .. } | P::ExtraTwice(_) => {
                    Self::bad_input("extras", p.to_string())
                }
                P::OdometerBackwards => Self::bad_input(
                    "odometerKm",
                    "the odometer cannot read less than at the pick-up",
                ),
                P::Money(m) => Self::bad_input("amount", m.to_string()),
            },
            BookingFlowError::Invalid { field, reason } => Self::bad_input(field, reason),
            BookingFlowError::Contended(n) => contended(n),
            BookingFlowError::Store(s) => Self::store(&s),
            BookingFlowError::Database(db) => Self::database(&db),
            BookingFlowError::Codec(c) => Self::internal(c),
        }
    }
}

impl From<PaymentServiceError> for AppError {
    fn from(e: PaymentServiceError) -> Self {
        match e {
            PaymentServiceError::NotFound(_) => Self::not_found("payment"),
            PaymentServiceError::Rejected(rule) if rule.is_invalid_input() => {
                Self::bad_input("amount", rule.to_string())
            }
            PaymentServiceError::Rejected(rule) => Self::Conflict(rule.to_string()),
            PaymentServiceError::GatewaysUnavailable { .. }
            | PaymentServiceError::GatewayUnavailable { .. } => {
                tracing::warn!(error = %e, "payment gateway unavailable");
                Self::Unavailable
            }
            PaymentServiceError::RefundDeclined { .. } => Self::Conflict(e.to_string()),
            PaymentServiceError::NoGateway(ref what) => {
                tracing::error!(error = %e, "no payment gateway (FLEETLEDGER_PAYMENT_GATEWAYS)");
                Self::Unconfigured(format!("no payment gateway is set up for {what}"))
            }
            PaymentServiceError::Execute(x) => execute(x, |r| AppError::Conflict(r.to_string())),
        }
    }
}

impl From<CheckoutError> for AppError {
    fn from(e: CheckoutError) -> Self {
        match e {
            CheckoutError::Booking(b) => b.into(),
            CheckoutError::Payment(p) => p.into(),
            CheckoutError::NotPayable(status) => Self::Conflict(format!(
                "the booking is {}, not waiting for payment",
                serde_json::to_value(status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            )),
            CheckoutError::InvalidKey(reason) => Self::bad_input("idempotencyKey", reason),
            CheckoutError::InProgress => Self::Conflict(e.to_string()),
            CheckoutError::Database(db) => Self::database(&db),
        }
    }
}

impl From<HistoryError> for AppError {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::UnknownType(_) => Self::bad_input("aggregateType", e.to_string()),
            HistoryError::Store(s) => Self::store(&s),
            other => Self::internal(other),
        }
    }
}
