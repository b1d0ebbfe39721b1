//! Fleetledger's HTTP surface: the GraphQL API (queries, mutations, subscriptions) over the
//! command services and read models, with health, readiness and Prometheus metrics.

pub mod auth;
pub mod error;
pub mod guard;
pub mod http;
pub mod pages;
pub mod policy;
pub mod ratelimit;
pub mod read_side;
pub mod schema;
pub mod services;
pub mod websocket;
pub mod workers;

use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub use error::AppError;
pub use http::router;
pub use ratelimit::{RateLimitConfig, RateLimiter};
pub use schema::{AppSchema, QueryLimits, sdl};
pub use services::Services;

/// Settings of the HTTP surface.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// `FLEETLEDGER_CORS_ORIGINS`: origins browsers may call from (`*` for any; empty: none).
    pub cors_origins: Vec<String>,
    /// `FLEETLEDGER_BODY_LIMIT`: largest request body in bytes.
    pub body_limit_bytes: usize,
    pub limits: QueryLimits,
    pub rate_limit: RateLimitConfig,
    /// Serve GraphiQL on `GET /graphql` to browsers.
    pub graphiql: bool,
    /// `FLEETLEDGER_GRAPHQL_MAX_BATCH`: operations one HTTP request may batch (each counts
    /// against the rate limit).
    pub max_batch: usize,
    /// `FLEETLEDGER_REQUEST_BUDGET_MS`: the longest an HTTP GraphQL request may run.
    pub request_budget: std::time::Duration,
    /// `FLEETLEDGER_LOGIN_ATTEMPTS` per account and `FLEETLEDGER_LOGIN_WINDOW` seconds.
    pub login_attempts: u64,
    /// `FLEETLEDGER_LOGIN_ATTEMPTS_PER_ADDRESS` per client address and window (default 50).
    pub login_attempts_per_address: u64,
    pub login_window: std::time::Duration,
    /// `FLEETLEDGER_GRAPHQL_THREADS`: threads of the runtime GraphQL work runs on (apart from
    /// the one serving health, readiness and signals).
    pub graphql_threads: usize,
    /// How often an open WebSocket's session is checked again (10 s): a connection whose
    /// session ended or whose token expired is closed.
    pub session_recheck: std::time::Duration,
    /// What one client may hold open over WebSockets.
    pub websocket: websocket::WebSocketLimits,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            cors_origins: Vec::new(),
            body_limit_bytes: 256 * 1024,
            limits: QueryLimits::default(),
            rate_limit: RateLimitConfig::default(),
            graphiql: true,
            max_batch: 10,
            request_budget: std::time::Duration::from_secs(30),
            login_attempts: 10,
            login_attempts_per_address: 50,
            login_window: std::time::Duration::from_secs(900),
            graphql_threads: std::thread::available_parallelism().map_or(2, usize::from),
            session_recheck: std::time::Duration::from_secs(10),
            websocket: websocket::WebSocketLimits::default(),
        }
    }
}

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct AppState {
    pub services: Services,
    pub schema: AppSchema,
    pub limiter: RateLimiter,
    pub config: Arc<ApiConfig>,
    pub metrics: Option<PrometheusHandle>,
    pub workers: workers::Workers,
    /// WebSocket connections open per client address.
    pub connections: websocket::ConnectionGate,
}

/// Why the API could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("REDIS_URL is not a valid Redis URL: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("cannot start the GraphQL runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

impl AppState {
    pub fn new(services: Services, config: ApiConfig) -> Result<Self, SetupError> {
        let limiter = RateLimiter::new(config.rate_limit.clone())?;
        let login = ratelimit::LoginGuard {
            limiter: limiter.clone(),
            attempts: config.login_attempts,
            attempts_per_address: config.login_attempts_per_address,
            window: config.login_window,
        };
        Ok(Self {
            schema: schema::build_with(services.clone(), config.limits, Some(login)),
            limiter,
            services,
            workers: workers::Workers::new(config.graphql_threads)?,
            connections: websocket::ConnectionGate::default(),
            config: Arc::new(config),
            metrics: prometheus(),
        })
    }
}

/// The process's Prometheus recorder, installed on first call (the `metrics` crate has one
/// global recorder: the projectors' gauges and the API's counters all land in it). `None`
/// when another recorder was installed first.
pub fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "cannot install the Prometheus recorder");
                None
            }
        })
        .clone()
}
