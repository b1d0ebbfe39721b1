//! Integration tests of the embedded PostgreSQL cluster: create, connect, reuse, stop.
//!
//! They need the machine's PostgreSQL server binaries (initdb, pg_ctl, postgres). Each test uses
//! its own data directory under the system temp dir and stops its server at the end; the
//! servers listen on unix sockets inside those directories (or on a free 127.0.0.1 port for the
//! long-path test), never on 5432/TCP.

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use eventstore::embedded::{BinarySearch, EmbeddedError, EmbeddedPostgres};
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// A fresh directory `<temp>/fleetledger-embedded-<tag>-<pid>-<nanos>` (mode 0755, so that the
/// `postgres` OS user can traverse it when the tests run as root); removed on drop after the
/// server in it has been stopped.
struct TempRoot {
    path: PathBuf,
}

impl TempRoot {
    fn new(tag: &str) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "fleetledger-embedded-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&path)
            .with_context(|| format!("create {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Stops the server even when an assertion failed, so no test leaves a server behind.
struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let data_dir = self.0.clone();
        // Drop runs inside the test's runtime; stop from a separate thread with its own runtime.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = rt.block_on(EmbeddedPostgres::stop(&data_dir));
            }
        })
        .join();
    }
}

async fn identity(options: &PgConnectOptions) -> anyhow::Result<(String, String, DateTime<Utc>)> {
    let mut conn = PgConnection::connect_with(options).await?;
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await?;
    assert_eq!(one, 1);
    let row: (String, String, DateTime<Utc>) = sqlx::query_as(
        "SELECT current_user::text, current_database()::text, pg_postmaster_start_time()",
    )
    .fetch_one(&mut conn)
    .await?;
    conn.close().await?;
    Ok(row)
}

#[tokio::test]
async fn creates_reuses_and_stops_a_cluster() -> anyhow::Result<()> {
    let root = TempRoot::new("reuse")?;
    // A nested, not yet existing path, like ./data/postgres.
    let data_dir = root.path.join("data").join("postgres");
    let _stop = StopOnDrop(data_dir.clone());

    assert!(!EmbeddedPostgres::is_running(&data_dir).await?);

    let first = EmbeddedPostgres::start(&data_dir).await?;
    assert_eq!(first.data_dir(), std::fs::canonicalize(&data_dir)?);
    assert!(data_dir.join("PG_VERSION").is_file());
    assert!(first.socket_dir().is_some(), "short path: unix socket mode");
    assert!(EmbeddedPostgres::is_running(&data_dir).await?);

    let (user, database, started_at) = identity(&first.connect_options()).await?;
    assert_eq!(user, "fleetledger");
    assert_eq!(database, "fleetledger");

    // The URL form reaches the same server.
    let from_url: PgConnectOptions = first.url().parse()?;
    let (url_user, url_database, url_started_at) = identity(&from_url).await?;
    assert_eq!(
        (url_user.as_str(), url_database.as_str()),
        ("fleetledger", "fleetledger")
    );
    assert_eq!(url_started_at, started_at);

    // A second start on the same directory reuses the running server.
    let second = EmbeddedPostgres::start(&data_dir).await?;
    let (_, _, started_again_at) = identity(&second.connect_options()).await?;
    assert_eq!(started_again_at, started_at, "the running server is reused");

    // After a stop, start reuses the cluster (no second initdb: the database survives) and
    // starts a new server process.
    EmbeddedPostgres::stop(&data_dir).await?;
    assert!(!EmbeddedPostgres::is_running(&data_dir).await?);
    EmbeddedPostgres::stop(&data_dir).await?; // stopping a stopped server is a no-op
    assert!(
        PgConnection::connect_with(&first.connect_options())
            .await
            .is_err(),
        "server is down after stop"
    );
    let third = EmbeddedPostgres::start(&data_dir).await?;
    let (user, database, restarted_at) = identity(&third.connect_options()).await?;
    assert_eq!(
        (user.as_str(), database.as_str()),
        ("fleetledger", "fleetledger")
    );
    assert!(
        restarted_at > started_at,
        "a new server process was started"
    );

    EmbeddedPostgres::stop(&data_dir).await?;
    assert!(!EmbeddedPostgres::is_running(&data_dir).await?);
    Ok(())
}

#[tokio::test]
async fn concurrent_starts_share_one_cluster() -> anyhow::Result<()> {
    let root = TempRoot::new("concurrent")?;
    let data_dir = root.path.join("pg");
    let _stop = StopOnDrop(data_dir.clone());

    let (a, b) = tokio::join!(
        EmbeddedPostgres::start(&data_dir),
        EmbeddedPostgres::start(&data_dir)
    );
    let (a, b) = (a?, b?);
    let (_, _, a_started) = identity(&a.connect_options()).await?;
    let (_, _, b_started) = identity(&b.connect_options()).await?;
    assert_eq!(a_started, b_started, "both starts use the same server");
    // No leftovers of the staging directory next to the data directory.
    let mut names: Vec<String> = std::fs::read_dir(&root.path)?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    assert_eq!(names, ["pg", "pg.lock"]);

    EmbeddedPostgres::stop(&data_dir).await?;
    Ok(())
}

#[tokio::test]
async fn long_paths_fall_back_to_localhost_tcp_with_a_password() -> anyhow::Result<()> {
    let root = TempRoot::new("tcp")?;
    // Make `<data dir>/run/.s.PGSQL.5432` longer than a unix socket path may be.
    let long = "d".repeat(120);
    let data_dir = root.path.join(&long);
    let _stop = StopOnDrop(data_dir.clone());

    let server = EmbeddedPostgres::start(&data_dir).await?;
    assert!(server.socket_dir().is_none(), "TCP fallback");
    assert_ne!(server.port(), 5432);
    let state = std::fs::read_to_string(data_dir.join("fleetledger-embedded.conf"))?;
    assert!(state.contains("listen = tcp"), "{state}");
    let password = data_dir.join("fleetledger-password");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&password)?.permissions())
            & 0o777,
        0o600
    );

    let (user, database, started_at) = identity(&server.connect_options()).await?;
    assert_eq!(
        (user.as_str(), database.as_str()),
        ("fleetledger", "fleetledger")
    );
    let (_, _, url_started_at) = identity(&server.url().parse()?).await?;
    assert_eq!(url_started_at, started_at);

    // Password authentication is really required.
    let wrong = server.connect_options().password("wrong");
    assert!(PgConnection::connect_with(&wrong).await.is_err());

    // The recorded choice is reused on the next start.
    let again = EmbeddedPostgres::start(&data_dir).await?;
    assert_eq!(again.port(), server.port());
    let (_, _, again_started_at) = identity(&again.connect_options()).await?;
    assert_eq!(again_started_at, started_at);

    EmbeddedPostgres::stop(&data_dir).await?;
    Ok(())
}

#[test]
fn missing_binaries_error_names_the_package() {
    let empty = BinarySearch::default();
    assert!(empty.candidates().is_empty());
    let err = empty
        .find()
        .expect_err("no binaries in an empty search path");
    assert!(
        matches!(err, EmbeddedError::BinariesNotFound { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("apt-get install postgresql"), "{message}");
    assert!(message.contains("initdb"), "{message}");

    // Directories without the programs do not count either.
    let nowhere = BinarySearch {
        path_dirs: vec![PathBuf::from("/nonexistent/bin")],
        install_roots: vec![PathBuf::from("/nonexistent/lib/postgresql")],
    };
    assert!(nowhere.find().is_err());
}

#[tokio::test]
async fn start_with_an_empty_search_path_fails_before_touching_the_directory() -> anyhow::Result<()>
{
    let root = TempRoot::new("nobin")?;
    let data_dir = root.path.join("pg");
    let err = EmbeddedPostgres::start_with(&data_dir, &BinarySearch::default())
        .await
        .expect_err("no binaries");
    assert!(
        err.to_string().contains("apt-get install postgresql"),
        "{err}"
    );
    assert!(!data_dir.exists());
    Ok(())
}

#[test]
fn discovers_the_machine_binaries() {
    // Informational on machines without PostgreSQL; on this project's machines it is installed.
    let search = BinarySearch::from_env();
    if let Ok(dir) = search.find() {
        for program in ["initdb", "pg_ctl", "postgres"] {
            assert!(Path::new(&dir).join(program).is_file());
        }
    }
}
