//! Wiring: builds the application's services from the configuration.

use std::time::Duration;

use anyhow::{Context, Result};
use commands::accounts::{Accounts, Bootstrap, JwtKeys, Secret};
use commands::booking::BookingConfig;
use commands::locks::HotCarLock;
use commands::payments::{DEFAULT_ATTEMPT_TIMEOUT, SandboxGateways};
use commands::worker::Worker;
use eventstore::EventStore;
use rand::Rng;
use sqlx::PgPool;

use crate::config::Config;

/// The services one process runs.
#[derive(Clone)]
pub(crate) struct App {
    pub(crate) store: EventStore,
    pub(crate) accounts: Accounts,
    pub(crate) worker: Worker,
    pub(crate) services: api::Services,
}

impl App {
    pub(crate) fn build(config: &Config, pool: PgPool) -> Result<Self> {
        let lock = match &config.redis_url {
            Some(url) => HotCarLock::new(url.expose(), "fleetledger:")
                .context("REDIS_URL is not a valid Redis URL")?,
            None => HotCarLock::disabled(),
        };
        let secret = match &config.jwt_secret {
            Some(secret) => secret.expose().to_owned(),
            None => {
                tracing::warn!(
                    "FLEETLEDGER_JWT_SECRET is unset: tokens are signed with a random key and die with this process"
                );
                let bytes: [u8; 32] = rand::rng().random();
                hex::encode(bytes)
            }
        };
        let keys = JwtKeys::new(
            &Secret::new(secret),
            Duration::from_secs(config.jwt_ttl_seconds),
        )
        .context("FLEETLEDGER_JWT_SECRET / FLEETLEDGER_JWT_TTL")?;
        let services = api::Services::build(
            pool,
            api::services::ServicesConfig {
                executor: config.executor.clone(),
                booking: BookingConfig {
                    hold_ttl: chrono::Duration::seconds(config.hold_ttl_seconds),
                    ..BookingConfig::default()
                },
                lock,
                keys,
                gateways: SandboxGateways::new().router(DEFAULT_ATTEMPT_TIMEOUT),
                read_your_writes_timeout: Duration::from_millis(config.read_your_writes_ms),
            },
        );
        let worker =
            Worker::new(services.bookings.clone()).with_checkout(services.checkout.clone());
        Ok(Self {
            store: services.store.clone(),
            accounts: services.accounts.clone(),
            worker,
            services,
        })
    }

    /// The HTTP application's state: the API over these services.
    pub(crate) fn api_state(&self, config: &Config) -> Result<api::AppState> {
        let api_config = api::ApiConfig {
            cors_origins: config.cors_origins.clone(),
            body_limit_bytes: config.body_limit_bytes,
            limits: api::QueryLimits {
                max_depth: config.graphql_max_depth,
                max_fields: config.graphql_max_fields,
                max_complexity: config.graphql_max_complexity,
                max_page_size: config.graphql_max_page_size,
            },
            rate_limit: api::RateLimitConfig {
                requests: config.rate_limit_requests,
                window: Duration::from_secs(config.rate_limit_window_seconds),
                redis_url: config.redis_url.as_ref().map(|u| u.expose().to_owned()),
                key_prefix: "fleetledger:".into(),
            },
            graphiql: config.graphiql,
        };
        api::AppState::new(self.services.clone(), api_config)
            .context("REDIS_URL is not a valid Redis URL")
    }

    /// Create the first admin from FLEETLEDGER_BOOTSTRAP_ADMIN_EMAIL/_PASSWORD if none exists.
    pub(crate) async fn bootstrap_admin(&self, config: &Config) -> Result<()> {
        let (Some(email), Some(password)) = (
            &config.bootstrap_admin_email,
            &config.bootstrap_admin_password,
        ) else {
            return Ok(());
        };
        match self
            .accounts
            .bootstrap_admin(email, password.expose())
            .await
            .context("creating the bootstrap admin")?
        {
            Bootstrap::Created(user) => {
                tracing::info!(user.id = %user.id, "bootstrap admin created")
            }
            Bootstrap::AdminExists => tracing::debug!("an admin exists; bootstrap skipped"),
        }
        Ok(())
    }
}
