//! Typed configuration from the environment (`FLEETLEDGER_*`, `DATABASE_URL`, `REDIS_URL`,
//! `KAFKA_BROKERS`, `RUST_LOG`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use commands::{ExecutorConfig, RetryPolicy};

/// Looks a configuration variable up by name.
pub type Get<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A value that must never be printed (database URLs carry passwords).
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    /// `DATABASE_URL`; unset = the embedded cluster under `data_dir`.
    pub database_url: Option<Secret>,
    /// `FLEETLEDGER_DATA_DIR` (default `./data`): where the embedded cluster lives.
    pub data_dir: PathBuf,
    /// `FLEETLEDGER_DB_MAX_CONNECTIONS` (default 20).
    pub db_max_connections: u32,
    /// `FLEETLEDGER_HTTP_ADDR` (default `127.0.0.1:8080`).
    pub http_addr: SocketAddr,
    pub executor: ExecutorConfig,
    /// `FLEETLEDGER_LOG_FORMAT=json` for JSON logs.
    pub log_json: bool,
    /// `REDIS_URL`; unset = no hot-car lock (correct, with more retries under contention).
    pub redis_url: Option<Secret>,
    /// `FLEETLEDGER_HOLD_TTL` seconds a HELD booking waits for payment (default 300).
    pub hold_ttl_seconds: i64,
    /// `FLEETLEDGER_JWT_SECRET` (at least 32 bytes); unset = a random key per process.
    pub jwt_secret: Option<Secret>,
    /// `FLEETLEDGER_EARLY_PICKUP_MINUTES`: how long before pick-up time a car may be handed
    /// over with no questions (default 60); earlier only if it is free until then.
    pub early_pickup_minutes: i64,
    /// `FLEETLEDGER_NO_SHOW_GRACE_MINUTES`: how long after a paid booking's pick-up time
    /// nobody came before it is a no-show (default 120).
    pub no_show_grace_minutes: i64,
    /// `FLEETLEDGER_CURRENCY`: the fleet's currency, for cars added without one (ISO 4217 with
    /// two minor units; default USD).
    pub fleet_currency: domain::Currency,
    /// `FLEETLEDGER_RETURN_GRACE_MINUTES`: minutes past a return time (and past whole days of
    /// a rental) that are not charged, and after which a car not back is overdue (default 59).
    pub return_grace_minutes: i64,
    /// `FLEETLEDGER_PAYMENT_GATEWAYS`: the payment providers, by name, in order (comma
    /// separated). Known: `sandbox` (the built-in test gateways: `tok_success` pays). Default:
    /// `sandbox` in development (the embedded database, no `DATABASE_URL`), none otherwise, so
    /// a deployment never takes test tokens unless it names the sandbox.
    pub payment_gateways: Vec<String>,
    /// `FLEETLEDGER_EARLY_RETURN`: `as-booked` (default: the booked days are charged) or
    /// `per-day-used` (the days used, the rest refunded less
    /// `FLEETLEDGER_EARLY_RETURN_FEE_MINOR`, in the rate's minor units, default 2500).
    pub early_return: domain::pricing::EarlyReturn,
    /// `FLEETLEDGER_EXTRAS`: the extras on offer and their prices, in the rate's minor units:
    /// `KIND=PER_DAY[/MAX_PER_RENTAL][xMAX_QUANTITY]`, comma separated (`none`: no extras);
    /// default `CHILD_SEAT=800/6000x3,ADDITIONAL_DRIVER=1000x4,COLLISION_DAMAGE_WAIVER=1500,
    /// GPS=700/5000`.
    pub extras: Vec<domain::pricing::ExtraPrice>,
    /// `FLEETLEDGER_MILEAGE_KM_PER_DAY` included per charged day (0: unlimited; default 300)
    /// and `FLEETLEDGER_MILEAGE_EXCESS_PER_KM_MINOR` charged per whole kilometre beyond, in the
    /// rate's minor units (default 25).
    pub mileage: domain::pricing::Mileage,
    /// `FLEETLEDGER_JWT_TTL` seconds an access token lives (default 900).
    pub jwt_ttl_seconds: u64,
    /// `FLEETLEDGER_SESSION_TTL` seconds a session (and its refresh tokens) lives at most
    /// (default 2592000, 30 days).
    pub session_ttl_seconds: u64,
    /// `FLEETLEDGER_BOOTSTRAP_ADMIN_EMAIL` / `_PASSWORD`: the first admin, created if none exists.
    pub bootstrap_admin_email: Option<String>,
    pub bootstrap_admin_password: Option<Secret>,
    /// `FLEETLEDGER_PROJECTOR_BATCH`: events per projector transaction (default 500).
    pub projector_batch_size: i64,
    /// `FLEETLEDGER_PROJECTOR_POLL_MS`: polling fallback when no notification comes (default 500).
    pub projector_poll_ms: u64,
    /// `FLEETLEDGER_SERVE_PROJECTORS` (default true): whether `serve` runs the projectors
    /// in-process. Turn off when `fleetledger project` processes run them.
    pub serve_projectors: bool,
    /// `FLEETLEDGER_SERVE_WORKER` (default true): whether `serve` runs a worker (hold expiry,
    /// payment follow-ups, refunds, rehoming) in-process. Turn off when `fleetledger worker`
    /// processes run them.
    pub serve_worker: bool,
    /// `KAFKA_BROKERS` and the `FLEETLEDGER_KAFKA_*` settings; `None` = the relay is off.
    pub kafka: Option<relay::RelayConfig>,
    /// `FLEETLEDGER_CORS_ORIGINS`: comma-separated origins browsers may call the API from
    /// (`*` for any); unset = no cross-origin access.
    pub cors_origins: Vec<String>,
    /// `FLEETLEDGER_BODY_LIMIT`: largest request body in bytes (default 262144).
    pub body_limit_bytes: usize,
    /// `FLEETLEDGER_GRAPHQL_MAX_DEPTH` (default 12), `_MAX_COMPLEXITY` (default 5000),
    /// `_MAX_PAGE_SIZE` (default 100).
    pub graphql_max_depth: usize,
    /// `FLEETLEDGER_GRAPHQL_MAX_FIELDS`: fields a document may select once its fragments are
    /// expanded (default 2000).
    pub graphql_max_fields: usize,
    /// `FLEETLEDGER_GRAPHQL_MAX_ROOT_FIELDS`: root fields per operation, aliases included
    /// (default 20).
    pub graphql_max_root_fields: usize,
    /// `FLEETLEDGER_GRAPHQL_MAX_BATCH`: operations per batched HTTP request (default 10).
    pub graphql_max_batch: usize,
    /// `FLEETLEDGER_LOGIN_ATTEMPTS` per account per `FLEETLEDGER_LOGIN_WINDOW` seconds
    /// (default 10 per 900; 0 = no limit).
    pub login_attempts: u64,
    /// `FLEETLEDGER_LOGIN_ATTEMPTS_PER_ADDRESS` per client address per
    /// `FLEETLEDGER_LOGIN_WINDOW` seconds, whatever the account (default 50; 0 = no limit).
    pub login_attempts_per_address: u64,
    /// `FLEETLEDGER_REQUEST_BUDGET_MS`: the longest one HTTP GraphQL request may run (default
    /// 30000).
    pub request_budget_ms: u64,
    /// `FLEETLEDGER_GRAPHQL_THREADS`: threads of the runtime GraphQL work runs on, apart from
    /// the one answering health checks and signals (default: the number of cores).
    pub graphql_threads: usize,
    pub login_window_seconds: u64,
    pub graphql_max_complexity: usize,
    pub graphql_max_page_size: i32,
    /// `FLEETLEDGER_GRAPHQL_MAX_DOCUMENT_BYTES` (default 32768): longest query document.
    pub graphql_max_document_bytes: usize,
    /// `FLEETLEDGER_GRAPHQL_MAX_DIRECTIVES` (default 50): directives per document.
    pub graphql_max_directives: usize,
    /// `FLEETLEDGER_RATE_LIMIT`: requests per user (or IP) and window, 0 = off (default 600);
    /// `FLEETLEDGER_RATE_LIMIT_WINDOW` seconds (default 60).
    pub rate_limit_requests: u64,
    pub rate_limit_window_seconds: u64,
    /// `FLEETLEDGER_READ_YOUR_WRITES_MS`: how long a mutation waits for the read models to
    /// reflect it before answering UNAVAILABLE (default 5000).
    pub read_your_writes_ms: u64,
    /// `FLEETLEDGER_GRAPHIQL` (default true): serve GraphiQL to browsers on GET /graphql.
    pub graphiql: bool,
    /// `FLEETLEDGER_WS_MAX_OPERATIONS` (default 20): operations open at once on one WebSocket.
    pub ws_max_operations: usize,
    /// `FLEETLEDGER_WS_CONNECTIONS_PER_ADDRESS` (default 32): WebSocket connections one client
    /// address may hold open at once, per process.
    pub ws_connections_per_address: usize,
    /// `FLEETLEDGER_WS_INIT_TIMEOUT_MS` (default 10000): how long a new WebSocket may take to
    /// send `connection_init`.
    pub ws_init_timeout_ms: u64,
    /// `FLEETLEDGER_SESSION_RECHECK_MS` (default 10000): how often an open WebSocket re-checks
    /// that its session still stands.
    pub session_recheck_ms: u64,
    /// `FLEETLEDGER_REDIS_PREFIX` (default `fleetledger:`): the prefix of every Redis key.
    pub redis_prefix: String,
    /// `FLEETLEDGER_PROJECTOR_MAX_BACKOFF_MS` (default 10000): the longest wait before a
    /// projector retries after an error.
    pub projector_max_backoff_ms: u64,
}

impl Config {
    /// The configuration in this process's environment.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(&|name| std::env::var(name).ok())
    }

    /// The configuration from variables `get` looks up by name (unset: `None`), read and
    /// checked exactly as from the environment: what a test or an embedding program gives.
    pub fn from_vars(get: Get<'_>) -> Result<Self> {
        let defaults = ExecutorConfig::default();
        let retry = RetryPolicy {
            max_attempts: env_or(
                get,
                "FLEETLEDGER_RETRY_MAX_ATTEMPTS",
                defaults.retry.max_attempts,
            )?,
            base_delay: Duration::from_millis(env_or(get, "FLEETLEDGER_RETRY_BASE_MS", 5)?),
            max_delay: Duration::from_millis(env_or(get, "FLEETLEDGER_RETRY_MAX_MS", 200)?),
        };
        if retry.max_attempts == 0 {
            anyhow::bail!("FLEETLEDGER_RETRY_MAX_ATTEMPTS must be at least 1");
        }
        Ok(Self {
            database_url: non_empty(get, "DATABASE_URL").map(Secret),
            data_dir: non_empty(get, "FLEETLEDGER_DATA_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("data")),
            db_max_connections: env_or(get, "FLEETLEDGER_DB_MAX_CONNECTIONS", 20)?,
            http_addr: env_or(
                get,
                "FLEETLEDGER_HTTP_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 8080)),
            )?,
            executor: ExecutorConfig {
                retry,
                snapshot_every: env_or(get, "FLEETLEDGER_SNAPSHOT_EVERY", defaults.snapshot_every)?,
                snapshot_state_version: defaults.snapshot_state_version,
                cache_capacity: env_or(
                    get,
                    "FLEETLEDGER_AGGREGATE_CACHE",
                    defaults.cache_capacity,
                )?,
                lock_stripes: defaults.lock_stripes,
            },
            log_json: get("FLEETLEDGER_LOG_FORMAT").is_some_and(|v| v == "json"),
            redis_url: non_empty(get, "REDIS_URL").map(Secret),
            hold_ttl_seconds: env_or(get, "FLEETLEDGER_HOLD_TTL", 300)?,
            jwt_secret: non_empty(get, "FLEETLEDGER_JWT_SECRET").map(Secret),
            jwt_ttl_seconds: env_or(get, "FLEETLEDGER_JWT_TTL", 900)?,
            session_ttl_seconds: env_or(get, "FLEETLEDGER_SESSION_TTL", 30 * 86_400)?,
            early_pickup_minutes: env_or(get, "FLEETLEDGER_EARLY_PICKUP_MINUTES", 60)?,
            early_return: early_return(get)?,
            extras: match non_empty(get, "FLEETLEDGER_EXTRAS") {
                Some(spec) => {
                    extras(&spec).with_context(|| format!("FLEETLEDGER_EXTRAS={spec:?}"))?
                }
                None => domain::pricing::default_extras(),
            },
            mileage: mileage(get)?,
            return_grace_minutes: env_or(get, "FLEETLEDGER_RETURN_GRACE_MINUTES", 59)?,
            fleet_currency: match non_empty(get, "FLEETLEDGER_CURRENCY") {
                Some(code) => domain::Currency::accept(code.trim()).with_context(|| {
                    format!(
                        "FLEETLEDGER_CURRENCY={code:?} is not an ISO 4217 currency with minor units"
                    )
                })?,
                None => domain::Currency::USD,
            },
            payment_gateways: payment_gateways(get, non_empty(get, "DATABASE_URL").is_none())?,
            no_show_grace_minutes: env_or(get, "FLEETLEDGER_NO_SHOW_GRACE_MINUTES", 120)?,
            bootstrap_admin_email: non_empty(get, "FLEETLEDGER_BOOTSTRAP_ADMIN_EMAIL"),
            bootstrap_admin_password: non_empty(get, "FLEETLEDGER_BOOTSTRAP_ADMIN_PASSWORD")
                .map(Secret),
            projector_batch_size: positive(get, "FLEETLEDGER_PROJECTOR_BATCH", 500)?,
            projector_poll_ms: positive(get, "FLEETLEDGER_PROJECTOR_POLL_MS", 500)?,
            serve_projectors: env_or(get, "FLEETLEDGER_SERVE_PROJECTORS", true)?,
            serve_worker: env_or(get, "FLEETLEDGER_SERVE_WORKER", true)?,
            kafka: kafka_from_env(get)?,
            cors_origins: non_empty(get, "FLEETLEDGER_CORS_ORIGINS")
                .map(|v| {
                    v.split(',')
                        .map(|o| o.trim().to_owned())
                        .filter(|o| !o.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            body_limit_bytes: positive(get, "FLEETLEDGER_BODY_LIMIT", 256 * 1024)?,
            graphql_max_depth: positive(get, "FLEETLEDGER_GRAPHQL_MAX_DEPTH", 12)?,
            graphql_max_fields: positive(get, "FLEETLEDGER_GRAPHQL_MAX_FIELDS", 2_000)?,
            graphql_max_root_fields: positive(get, "FLEETLEDGER_GRAPHQL_MAX_ROOT_FIELDS", 20)?,
            graphql_max_batch: positive(get, "FLEETLEDGER_GRAPHQL_MAX_BATCH", 10)?,
            login_attempts: env_or(get, "FLEETLEDGER_LOGIN_ATTEMPTS", 10)?,
            login_attempts_per_address: env_or(get, "FLEETLEDGER_LOGIN_ATTEMPTS_PER_ADDRESS", 50)?,
            request_budget_ms: positive(get, "FLEETLEDGER_REQUEST_BUDGET_MS", 30_000)?,
            graphql_threads: positive(
                get,
                "FLEETLEDGER_GRAPHQL_THREADS",
                std::thread::available_parallelism().map_or(2, usize::from),
            )?,
            login_window_seconds: positive(get, "FLEETLEDGER_LOGIN_WINDOW", 900)?,
            graphql_max_complexity: positive(get, "FLEETLEDGER_GRAPHQL_MAX_COMPLEXITY", 5_000)?,
            graphql_max_page_size: positive(get, "FLEETLEDGER_GRAPHQL_MAX_PAGE_SIZE", 100)?,
            graphql_max_document_bytes: positive(
                get,
                "FLEETLEDGER_GRAPHQL_MAX_DOCUMENT_BYTES",
                32 * 1024,
            )?,
            graphql_max_directives: positive(get, "FLEETLEDGER_GRAPHQL_MAX_DIRECTIVES", 50)?,
            rate_limit_requests: env_or(get, "FLEETLEDGER_RATE_LIMIT", 600)?,
            rate_limit_window_seconds: positive(get, "FLEETLEDGER_RATE_LIMIT_WINDOW", 60)?,
            read_your_writes_ms: positive(get, "FLEETLEDGER_READ_YOUR_WRITES_MS", 5_000)?,
            graphiql: env_or(get, "FLEETLEDGER_GRAPHIQL", true)?,
            ws_max_operations: positive(get, "FLEETLEDGER_WS_MAX_OPERATIONS", 20)?,
            ws_connections_per_address: positive(
                get,
                "FLEETLEDGER_WS_CONNECTIONS_PER_ADDRESS",
                32,
            )?,
            ws_init_timeout_ms: positive(get, "FLEETLEDGER_WS_INIT_TIMEOUT_MS", 10_000)?,
            session_recheck_ms: positive(get, "FLEETLEDGER_SESSION_RECHECK_MS", 10_000)?,
            redis_prefix: non_empty(get, "FLEETLEDGER_REDIS_PREFIX")
                .unwrap_or_else(|| "fleetledger:".to_owned()),
            projector_max_backoff_ms: positive(
                get,
                "FLEETLEDGER_PROJECTOR_MAX_BACKOFF_MS",
                10_000,
            )?,
        })
    }

    /// Where the embedded cluster's files are.
    pub fn embedded_dir(&self) -> PathBuf {
        self.data_dir.join("postgres")
    }
}

/// The payment gateways that exist (`FLEETLEDGER_PAYMENT_GATEWAYS`).
pub const PAYMENT_GATEWAYS: &[&str] = &["sandbox"];

/// `FLEETLEDGER_PAYMENT_GATEWAYS`, checked against the known names; the sandbox by default in
/// development only.
fn payment_gateways(get: Get<'_>, development: bool) -> Result<Vec<String>> {
    let Some(list) = non_empty(get, "FLEETLEDGER_PAYMENT_GATEWAYS") else {
        return Ok(if development {
            vec!["sandbox".to_owned()]
        } else {
            Vec::new()
        });
    };
    let mut names = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !PAYMENT_GATEWAYS.contains(&name) {
            bail!(
                "FLEETLEDGER_PAYMENT_GATEWAYS names {name:?}, which is not a payment gateway \
                 (known: {})",
                PAYMENT_GATEWAYS.join(", ")
            );
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// `FLEETLEDGER_EXTRAS`: `KIND=PER_DAY[/MAX_PER_RENTAL][xMAX_QUANTITY]`, comma separated, or
/// `none`.
fn extras(spec: &str) -> Result<Vec<domain::pricing::ExtraPrice>> {
    use domain::pricing::{ExtraKind, ExtraPrice};
    if spec.trim() == "none" {
        return Ok(Vec::new());
    }
    let amount = |v: &str, what: &str| -> Result<i64> {
        let n: i64 = v
            .trim()
            .parse()
            .with_context(|| format!("{what} {v:?} is not a whole number of minor units"))?;
        if n < 0 {
            bail!("{what} {n} must not be negative");
        }
        Ok(n)
    };
    let mut offers: Vec<ExtraPrice> = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (kind, price) = item
            .split_once('=')
            .with_context(|| format!("{item:?} is not KIND=PER_DAY[/MAX][xQUANTITY]"))?;
        let kind: ExtraKind = kind.trim().parse().map_err(|_| {
            anyhow::anyhow!(
                "{kind:?} is not an extra (known: {})",
                ExtraKind::ALL
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let (price, quantity) = match price.split_once('x') {
            Some((price, quantity)) => (
                price,
                quantity
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|q| *q >= 1)
                    .with_context(|| format!("{item:?}: the quantity must be 1 to 255"))?,
            ),
            None => (price, 1),
        };
        let (per_day, cap) = match price.split_once('/') {
            Some((per_day, cap)) => (per_day, Some(amount(cap, "the cap")?)),
            None => (price, None),
        };
        if offers.iter().any(|o| o.kind == kind) {
            bail!("{} is listed twice", kind.as_str());
        }
        offers.push(ExtraPrice {
            kind,
            per_day_minor: amount(per_day, "the price per day")?,
            max_per_rental_minor: cap,
            max_quantity: quantity,
        });
    }
    Ok(offers)
}

/// `FLEETLEDGER_MILEAGE_KM_PER_DAY` (0: unlimited) and `_EXCESS_PER_KM_MINOR`.
fn mileage(get: Get<'_>) -> Result<domain::pricing::Mileage> {
    use domain::pricing::Mileage;
    let Mileage::PerDay {
        km_per_day: default_km,
        excess_per_km_minor: default_fee,
    } = Mileage::default()
    else {
        return Ok(Mileage::Unlimited);
    };
    let km_per_day: i64 = env_or(get, "FLEETLEDGER_MILEAGE_KM_PER_DAY", default_km)?;
    let excess_per_km_minor: i64 =
        env_or(get, "FLEETLEDGER_MILEAGE_EXCESS_PER_KM_MINOR", default_fee)?;
    if km_per_day < 0 || excess_per_km_minor < 0 {
        bail!("FLEETLEDGER_MILEAGE_KM_PER_DAY and _EXCESS_PER_KM_MINOR must not be negative");
    }
    Ok(if km_per_day == 0 {
        Mileage::Unlimited
    } else {
        Mileage::PerDay {
            km_per_day,
            excess_per_km_minor,
        }
    })
}

/// `FLEETLEDGER_EARLY_RETURN` and its fee.
fn early_return(get: Get<'_>) -> Result<domain::pricing::EarlyReturn> {
    use domain::pricing::EarlyReturn;
    let fee_minor: i64 = env_or(get, "FLEETLEDGER_EARLY_RETURN_FEE_MINOR", 2_500)?;
    if fee_minor < 0 {
        bail!("FLEETLEDGER_EARLY_RETURN_FEE_MINOR={fee_minor} must not be negative");
    }
    match non_empty(get, "FLEETLEDGER_EARLY_RETURN")
        .as_deref()
        .map(str::trim)
    {
        None | Some("as-booked") => Ok(EarlyReturn::AsBooked),
        Some("per-day-used") => Ok(EarlyReturn::PerDayUsed { fee_minor }),
        Some(other) => bail!("FLEETLEDGER_EARLY_RETURN={other:?} is not as-booked or per-day-used"),
    }
}

/// The relay's settings when `KAFKA_BROKERS` is set.
fn kafka_from_env(get: Get<'_>) -> Result<Option<relay::RelayConfig>> {
    let Some(brokers) = non_empty(get, "KAFKA_BROKERS") else {
        return Ok(None);
    };
    let mut kafka = relay::RelayConfig::new(brokers.trim());
    kafka.topic_prefix = env_or(get, "FLEETLEDGER_KAFKA_TOPIC_PREFIX", kafka.topic_prefix)?;
    kafka.partitions = env_or(get, "FLEETLEDGER_KAFKA_PARTITIONS", kafka.partitions)?;
    kafka.replication = env_or(get, "FLEETLEDGER_KAFKA_REPLICATION", kafka.replication)?;
    kafka.source = env_or(get, "FLEETLEDGER_CLOUDEVENTS_SOURCE", kafka.source)?;
    kafka.batch_size = env_or(get, "FLEETLEDGER_KAFKA_BATCH", kafka.batch_size)?;
    kafka.delivery_timeout = Duration::from_millis(env_or(
        get,
        "FLEETLEDGER_KAFKA_DELIVERY_TIMEOUT_MS",
        u64::try_from(kafka.delivery_timeout.as_millis()).unwrap_or(30_000),
    )?);
    kafka.validate().context("Kafka relay settings")?;
    Ok(Some(kafka))
}

fn positive<T>(get: Get<'_>, name: &str, default: T) -> Result<T>
where
    T: FromStr + PartialOrd + Default + Copy,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let value = env_or(get, name, default)?;
    if value <= T::default() {
        anyhow::bail!("{name} must be at least 1");
    }
    Ok(value)
}

fn non_empty(get: Get<'_>, name: &str) -> Option<String> {
    get(name).filter(|v| !v.trim().is_empty())
}

fn env_or<T>(get: Get<'_>, name: &str, default: T) -> Result<T>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match get(name) {
        Some(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .with_context(|| format!("{name}={v:?} is not valid")),
        _ => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use domain::pricing::{ExtraKind, ExtraPrice, default_extras};

    use super::extras;

    #[test]
    fn extras_are_read_from_their_compact_form() {
        let offers = extras("CHILD_SEAT=800/6000x3, GPS=700 ,ADDITIONAL_DRIVER=1000x4").unwrap();
        assert_eq!(
            offers,
            [
                ExtraPrice {
                    kind: ExtraKind::ChildSeat,
                    per_day_minor: 800,
                    max_per_rental_minor: Some(6_000),
                    max_quantity: 3
                },
                ExtraPrice {
                    kind: ExtraKind::Gps,
                    per_day_minor: 700,
                    max_per_rental_minor: None,
                    max_quantity: 1
                },
                ExtraPrice {
                    kind: ExtraKind::AdditionalDriver,
                    per_day_minor: 1_000,
                    max_per_rental_minor: None,
                    max_quantity: 4
                },
            ]
        );
        assert!(extras("none").unwrap().is_empty());
        // The documented default reads as the built-in one.
        let documented = "CHILD_SEAT=800/6000x3,ADDITIONAL_DRIVER=1000x4,COLLISION_DAMAGE_WAIVER=1500,GPS=700/5000";
        assert_eq!(extras(documented).unwrap(), default_extras());
        for (bad, says) in [
            ("SUNROOF=100", "is not an extra"),
            ("GPS", "is not KIND=PER_DAY"),
            ("GPS=-5", "must not be negative"),
            ("GPS=7.5", "not a whole number"),
            ("GPS=700x0", "quantity must be 1 to 255"),
            ("GPS=700,GPS=800", "listed twice"),
        ] {
            let error = format!("{:#}", extras(bad).unwrap_err());
            assert!(error.contains(says), "{bad}: {error}");
        }
    }
}
