//! Connecting to the database: `DATABASE_URL`, or the embedded cluster when it is unset.

use std::str::FromStr;

use anyhow::{Context, Result};
use eventstore::embedded::EmbeddedPostgres;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::Config;

/// The server's connection options, starting the embedded cluster if needed.
pub async fn connect_options(config: &Config) -> Result<PgConnectOptions> {
    match &config.database_url {
        Some(url) => PgConnectOptions::from_str(url.expose())
            .context("DATABASE_URL is not a valid PostgreSQL URL"),
        None => {
            let dir = config.embedded_dir();
            let pg = EmbeddedPostgres::start(&dir).await.with_context(|| {
                format!("starting the embedded PostgreSQL in {}", dir.display())
            })?;
            tracing::info!(data_dir = %dir.display(), "using the embedded PostgreSQL (set DATABASE_URL to use another server)");
            Ok(pg.connect_options())
        }
    }
}

/// A pool on the configured database, migrated.
pub async fn connect_and_migrate(config: &Config, application: &str) -> Result<PgPool> {
    let options = connect_options(config).await?.application_name(application);
    let pool = PgPoolOptions::new()
        .max_connections(config.db_max_connections)
        // While the database is down, a request fails (UNAVAILABLE) after this, not after 30 s.
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(options)
        .await
        .context("connecting to PostgreSQL")?;
    eventstore::MIGRATOR
        .run(&pool)
        .await
        .context("applying migrations")?;
    Ok(pool)
}
