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

/// Wait until `check` holds, checking every 20 ms, for at most `secs` seconds; then fail the
/// test naming `what`. The one way tests wait for something to happen (never a bare sleep).
///
/// # Panics
/// When the deadline passes first.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A PostgreSQL cluster of one test's own: the embedded cluster, created under a fresh
/// temporary directory, migrated, and stopped and removed on drop.
///
/// For tests that need cluster-wide state to themselves, such as the transaction counter
/// (`burn_transactions`): on the shared server other tests move it at the same time.
pub struct TestCluster {
    root: std::path::PathBuf,
    pub server: crate::embedded::EmbeddedPostgres,
    pub pool: PgPool,
}

impl TestCluster {
    /// # Panics
    /// When the PostgreSQL server binaries are missing or the cluster cannot start: the
    /// message says what to install.
    pub async fn start(tag: &str) -> Self {
        let cluster = Self::start_unmigrated(tag).await;
        crate::MIGRATOR
            .run(&cluster.pool)
            .await
            .unwrap_or_else(|e| panic!("migrations failed on the test cluster: {e}"));
        cluster
    }

    /// [`TestCluster::start`] without the migrations (for tests of the migrations).
    ///
    /// # Panics
    /// As [`TestCluster::start`].
    pub async fn start_unmigrated(tag: &str) -> Self {
        use std::os::unix::fs::DirBuilderExt as _;
        let root = std::env::temp_dir().join(format!(
            "fleetledger-cluster-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        // 0755: when the tests run as root the server runs as another OS user, which must be
        // able to reach its data directory.
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&root)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
        let server = crate::embedded::EmbeddedPostgres::start(&root.join("postgres"))
            .await
            .unwrap_or_else(|e| panic!("cannot start a test cluster: {e}"));
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .connect_with(
                server
                    .connect_options()
                    .application_name("fleetledger-tests"),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test cluster: {e}"));
        Self { root, server, pool }
    }

    /// The cluster's URL, for child processes.
    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn store(&self) -> EventStore {
        EventStore::new(self.pool.clone())
    }

    /// Use up transaction ids until the next one handed out is at least `next`: one
    /// committed, empty transaction per id, on a connection of its own (other sessions keep
    /// appending meanwhile).
    pub async fn burn_transactions(&self, next: u64) {
        burn_transactions(&self.pool, next).await;
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let data_dir = self.server.data_dir().to_path_buf();
        let root = self.root.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = rt.block_on(crate::embedded::EmbeddedPostgres::stop(&data_dir));
            }
            let _ = std::fs::remove_dir_all(&root);
        })
        .join();
    }
}

/// Use up transaction ids on `pool`'s cluster until the next one handed out is at least `next`.
///
/// # Panics
/// On a database error.
pub async fn burn_transactions(pool: &PgPool, next: u64) {
    let mut conn = pool
        .acquire()
        .await
        .unwrap_or_else(|e| panic!("burn_transactions: {e}"));
    // A DO block sent alone as a simple query may commit; each COMMIT ends a transaction that
    // was given an id by pg_current_xact_id(). Asynchronous commit: nothing here needs
    // durability.
    conn.execute("SET synchronous_commit TO off")
        .await
        .unwrap_or_else(|e| panic!("burn_transactions: {e}"));
    let sql = format!(
        "DO $$ BEGIN \
           WHILE pg_current_xact_id() < '{}'::xid8 LOOP COMMIT; END LOOP; \
         END $$",
        next.saturating_sub(1)
    );
    conn.execute(sql.as_str())
        .await
        .unwrap_or_else(|e| panic!("burn_transactions to {next}: {e}"));
    conn.execute("RESET synchronous_commit")
        .await
        .unwrap_or_else(|e| panic!("burn_transactions: {e}"));
}
