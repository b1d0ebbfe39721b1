//! Wiring: builds the application's services from the configuration.

use std::time::Duration;

use anyhow::{Context, Result};
use commands::Executor;
use commands::accounts::{Accounts, Bootstrap, JwtKeys, Secret};
use commands::booking::{BookingConfig, BookingService};
use commands::checkout::Checkout;
use commands::locks::HotCarLock;
use commands::payments::{DEFAULT_ATTEMPT_TIMEOUT, PaymentService, SandboxGateways};
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
}

impl App {
    pub(crate) fn build(config: &Config, pool: PgPool) -> Result<Self> {
        let store = EventStore::new(pool.clone());
        let lock = match &config.redis_url {
            Some(url) => HotCarLock::new(url.expose(), "fleetledger:")
                .context("REDIS_URL is not a valid Redis URL")?,
            None => HotCarLock::disabled(),
        };
        let bookings = BookingService::new(
            store.clone(),
            Executor::new(store.clone(), (), config.executor.clone()),
            Executor::new(store.clone(), (), config.executor.clone()),
            lock,
            BookingConfig {
                hold_ttl: chrono::Duration::seconds(config.hold_ttl_seconds),
                ..BookingConfig::default()
            },
        );
        let payments = PaymentService::new(
            Executor::new(store.clone(), (), config.executor.clone()),
            SandboxGateways::new().router(DEFAULT_ATTEMPT_TIMEOUT),
        );
        let worker = Worker::new(bookings.clone()).with_checkout(Checkout::new(bookings, payments));
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
        Ok(Self {
            store,
            accounts: Accounts::new(pool, keys),
            worker,
        })
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
