//! Wiring: builds the application's services from the configuration.

use std::time::Duration;

use anyhow::{Context, Result};
use commands::accounts::{Accounts, Bootstrap, JwtKeys, Secret};
use commands::booking::BookingConfig;
use commands::locks::HotCarLock;
use commands::payments::{DEFAULT_ATTEMPT_TIMEOUT, GatewayRouter, SandboxGateways};
use commands::worker::Worker;
use eventstore::EventStore;
use rand::Rng;
use sqlx::PgPool;

use crate::config::Config;

/// Spare cars for displaced bookings, as the search and availability read models show them.
struct ReadSideSpares(PgPool);

#[async_trait::async_trait]
impl commands::booking::SpareCars for ReadSideSpares {
    async fn spare_cars(
        &self,
        wanted: &commands::booking::SpareCarWanted,
    ) -> Result<Vec<uuid::Uuid>, commands::booking::BookingFlowError> {
        Ok(projections::search::free_cars(
            &self.0,
            &wanted.branch,
            &wanted.class,
            &wanted.currency,
            wanted.window.start,
            wanted.window.end,
            wanted.turnaround_minutes,
            wanted.exclude,
            wanted.limit,
        )
        .await?)
    }
}

/// The payment gateways `FLEETLEDGER_PAYMENT_GATEWAYS` names, in its order (checked when the
/// configuration was read). None: every payment is refused as UNAVAILABLE, and the log says so.
fn payment_gateways(config: &Config, pool: &PgPool) -> GatewayRouter {
    let mut router = GatewayRouter::new(DEFAULT_ATTEMPT_TIMEOUT);
    for name in &config.payment_gateways {
        if name == "sandbox" {
            tracing::warn!(
                "payments go to the sandbox: test tokens pay (FLEETLEDGER_PAYMENT_GATEWAYS)"
            );
            // The sandbox's books live in the database: after a crash it still knows what it
            // charged, and a payment interrupted there is finished by asking it.
            router = router.extend(SandboxGateways::durable(pool).router(DEFAULT_ATTEMPT_TIMEOUT));
        }
    }
    if config.payment_gateways.is_empty() {
        tracing::warn!(
            "no payment gateway is configured (FLEETLEDGER_PAYMENT_GATEWAYS): payments are refused"
        );
    }
    router
}

/// The services one process runs.
#[derive(Clone)]
pub struct App {
    pub store: EventStore,
    pub accounts: Accounts,
    pub worker: Worker,
    pub services: api::Services,
}

impl App {
    pub fn build(config: &Config, pool: PgPool) -> Result<Self> {
        let gateways = payment_gateways(config, &pool);
        let pool_for_spares = pool.clone();
        let lock = match &config.redis_url {
            Some(url) => HotCarLock::new(url.expose(), &config.redis_prefix)
                .context("REDIS_URL is not a valid Redis URL")?,
            None => HotCarLock::disabled(),
        };
        let secret = match &config.jwt_secret {
            Some(secret) => secret.expose().to_owned(),
            None => stored_signing_key(&config.data_dir.join("jwt-secret"))?,
        };
        let keys = JwtKeys::new(
            &Secret::new(secret),
            Duration::from_secs(config.jwt_ttl_seconds),
        )
        .and_then(|keys| keys.with_session_ttl(Duration::from_secs(config.session_ttl_seconds)))
        .context("FLEETLEDGER_JWT_SECRET / FLEETLEDGER_JWT_TTL / FLEETLEDGER_SESSION_TTL")?;
        let services = api::Services::build(
            pool,
            api::services::ServicesConfig {
                executor: config.executor.clone(),
                booking: BookingConfig {
                    hold_ttl: chrono::Duration::seconds(config.hold_ttl_seconds),
                    early_pickup_minutes: config.early_pickup_minutes,
                    no_show_grace_minutes: config.no_show_grace_minutes,
                    fleet_currency: config.fleet_currency,
                    pricing: domain::pricing::PricingPolicy {
                        early_return: config.early_return,
                        extras: config.extras.clone(),
                        mileage: config.mileage,
                        grace_minutes: config.return_grace_minutes.max(0),
                        ..domain::pricing::PricingPolicy::default()
                    },
                    ..BookingConfig::default()
                },
                lock,
                keys,
                gateways,
                read_your_writes_timeout: Duration::from_millis(config.read_your_writes_ms),
            },
        );
        let worker = Worker::new(services.bookings.clone())
            .with_checkout(services.checkout.clone())
            .with_spare_cars(std::sync::Arc::new(ReadSideSpares(pool_for_spares)));
        Ok(Self {
            store: services.store.clone(),
            accounts: services.accounts.clone(),
            worker,
            services,
        })
    }

    /// The HTTP application's state: the API over these services.
    pub fn api_state(&self, config: &Config) -> Result<api::AppState> {
        let api_config = api::ApiConfig {
            cors_origins: config.cors_origins.clone(),
            body_limit_bytes: config.body_limit_bytes,
            limits: api::QueryLimits {
                max_depth: config.graphql_max_depth,
                max_fields: config.graphql_max_fields,
                max_root_fields: config.graphql_max_root_fields,
                max_complexity: config.graphql_max_complexity,
                max_page_size: config.graphql_max_page_size,
                max_document_bytes: config.graphql_max_document_bytes,
                max_directives: config.graphql_max_directives,
            },
            rate_limit: api::RateLimitConfig {
                requests: config.rate_limit_requests,
                window: Duration::from_secs(config.rate_limit_window_seconds),
                redis_url: config.redis_url.as_ref().map(|u| u.expose().to_owned()),
                key_prefix: config.redis_prefix.clone(),
            },
            graphiql: config.graphiql,
            max_batch: config.graphql_max_batch,
            request_budget: Duration::from_millis(config.request_budget_ms),
            login_attempts: config.login_attempts,
            login_attempts_per_address: config.login_attempts_per_address,
            login_window: Duration::from_secs(config.login_window_seconds),
            graphql_threads: config.graphql_threads,
            session_recheck: Duration::from_millis(config.session_recheck_ms),
            websocket: api::websocket::WebSocketLimits {
                max_operations: config.ws_max_operations,
                connections_per_address: config.ws_connections_per_address,
                init_timeout: Duration::from_millis(config.ws_init_timeout_ms),
            },
        };
        api::AppState::new(self.services.clone(), api_config).context("setting up the API")
    }

    /// Create the first admin from FLEETLEDGER_BOOTSTRAP_ADMIN_EMAIL/_PASSWORD if none exists;
    /// its email when it was created now.
    pub async fn bootstrap_admin(&self, config: &Config) -> Result<Option<String>> {
        let (Some(email), Some(password)) = (
            &config.bootstrap_admin_email,
            &config.bootstrap_admin_password,
        ) else {
            return Ok(None);
        };
        match self
            .accounts
            .bootstrap_admin(email, password.expose())
            .await
            .context("creating the bootstrap admin")?
        {
            Bootstrap::Created(user) => {
                tracing::info!(user.id = %user.id, email = %user.email, "bootstrap admin created");
                Ok(Some(user.email))
            }
            Bootstrap::AdminExists => {
                tracing::debug!("an admin exists; bootstrap skipped");
                Ok(None)
            }
        }
    }
}

/// The token signing key kept in the data directory (mode 0600), made on first use, so that
/// tokens outlive a restart when FLEETLEDGER_JWT_SECRET is unset. Processes on other machines
/// do not share the file: give them FLEETLEDGER_JWT_SECRET instead.
pub fn stored_signing_key(path: &std::path::Path) -> Result<String> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let read = |path: &std::path::Path| -> Result<String> {
        let key = std::fs::read_to_string(path)
            .with_context(|| format!("reading the signing key {}", path.display()))?;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"),
                "the signing key is readable by others: chmod 600 it");
        }
        let key = key.trim().to_owned();
        anyhow::ensure!(
            key.len() >= 32,
            "the signing key {} is shorter than 32 characters",
            path.display()
        );
        Ok(key)
    };
    if path.exists() {
        return read(path);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let bytes: [u8; 32] = rand::rng().random();
    let key = hex::encode(bytes);
    // Written whole under a private name, then linked into place: a process starting at the
    // same moment either sees no key or the complete one, and exactly one key wins.
    let staged = path.with_extension(format!("new.{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staged)
        .with_context(|| format!("creating {}", staged.display()))?;
    file.write_all(key.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", staged.display()))?;
    let linked = std::fs::hard_link(&staged, path);
    let _ = std::fs::remove_file(&staged);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(),
                "FLEETLEDGER_JWT_SECRET is unset: made a token signing key and kept it here");
            Ok(key)
        }
        // Another process made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(path),
        Err(e) => Err(e).with_context(|| format!("creating the signing key {}", path.display())),
    }
}
