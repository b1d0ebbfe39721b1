//! Test support: a fresh, migrated database per test on the shared PostgreSQL server.
//!
//! The server comes from `FLEETLEDGER_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, a superuser: some tests disable the
//! append-only trigger on purpose). Each `TestDatabase` creates its own database and drops only
//! that database when it goes out of scope. An unreachable server fails the test with a message
//! saying what to start; it never skips.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgConnection};

use crate::EventStore;

/// The server tests run against.
pub fn server_url() -> String {
    std::env::var("FLEETLEDGER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    pub pool: PgPool,
    admin: PgConnectOptions,
}

impl TestDatabase {
    /// Create and migrate a fresh database.
    ///
    /// # Panics
    /// When the server cannot be reached or the database cannot be created: a test that needs
    /// PostgreSQL must fail, not pass silently, when PostgreSQL is missing.
    pub async fn create() -> Self {
        let admin = PgConnectOptions::from_str(&server_url())
            .unwrap_or_else(|e| panic!("FLEETLEDGER_TEST_DATABASE_URL is not a valid URL: {e}"))
            .application_name("fleetledger-tests");
        let name = format!("fltest_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin.connect().await.unwrap_or_else(|e| {
            panic!(
                "cannot reach the test PostgreSQL at {} ({e}); start it (see README, Testing) \
                 or set FLEETLEDGER_TEST_DATABASE_URL",
                server_url()
            )
        });
        conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        let _ = conn.close().await;
        let db = Self {
            pool: PgPoolOptions::new()
                .max_connections(20)
                .connect_with(admin.clone().database(&name))
                .await
                .unwrap_or_else(|e| panic!("cannot connect to test database {name}: {e}")),
            name,
            admin,
        };
        crate::MIGRATOR
            .run(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("migrations failed on {}: {e}", db.name));
        db
    }

    /// Connection options for this database (e.g. for a second, independent pool).
    pub fn options(&self) -> PgConnectOptions {
        self.admin.clone().database(&self.name)
    }

    /// A URL for this database, for child processes (TCP servers only).
    pub fn url(&self) -> String {
        format!(
            "postgres://{}@{}:{}/{}",
            self.admin.get_username(),
            self.admin.get_host(),
            self.admin.get_port(),
            self.name
        )
    }

    /// A new pool on this database with its own connections.
    pub async fn new_pool(&self, application_name: &str, max_connections: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(self.options().application_name(application_name))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.name))
    }

    /// An event store over this database's pool.
    pub fn store(&self) -> EventStore {
        EventStore::new(self.pool.clone())
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop runs outside async; use a private runtime on a plain thread.
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect_with(&admin).await {
                    let sql = format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#);
                    if let Err(e) = conn.execute(sql.as_str()).await {
                        eprintln!("could not drop test database {name}: {e}");
                    }
                }
            });
        });
        let _ = handle.join();
    }
}
