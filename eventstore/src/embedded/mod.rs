//! Embedded PostgreSQL: a private cluster run from the machine's own PostgreSQL binaries.
//!
//! When no `DATABASE_URL` is given, Fleetledger keeps its event log in a PostgreSQL cluster of
//! its own under a data directory (by default `./data/postgres`). [`EmbeddedPostgres::start`]
//! creates the cluster on first use (`initdb`), starts the server if it is not running, waits
//! until it accepts connections and creates the `fleetledger` database. The server is left
//! running when the process exits and is reused by the next run; [`EmbeddedPostgres::stop`]
//! stops it.
//!
//! Layout of a data directory `D`:
//!
//! * `D/` – the cluster (`PG_VERSION`, `postgresql.conf`, …), mode 0700.
//! * `D/run/` – the server's unix socket directory (the server listens on the socket only).
//! * `D/postgres.log` – the server log.
//! * `D/fleetledger-embedded.conf` – how the server listens, chosen once at `initdb` time.
//! * `D/fleetledger-password` – only when listening on TCP (see below), mode 0600.
//! * `D.lock` (next to `D`) – serialises concurrent starts and stops.
//!
//! The settings live in `postgresql.conf`, so `pg_ctl -D D -l D/postgres.log start` by hand
//! starts the same server. The socket directory is written as the relative path `run`, which
//! the server resolves against the data directory, so the directory can be moved.
//!
//! A unix socket path is limited to 107 bytes. When `D/run/.s.PGSQL.5432` would be longer, the
//! cluster instead listens on a free port on `127.0.0.1` with `scram-sha-256` authentication and
//! a generated password; that choice is recorded in `D/fleetledger-embedded.conf` and reused.
//!
//! `initdb` and `postgres` refuse to run as root. When this process runs as root, the cluster is
//! created for, and run as, the `postgres` OS user if it exists, else `nobody`; an existing
//! cluster is run as the owner of its data directory. That user needs to be able to traverse
//! every parent directory of `D`.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
use sqlx::{Connection as _, Executor as _};
use tokio::process::Command;

mod binaries;
mod files;
mod os_user;
mod process;

pub use binaries::BinarySearch;
use binaries::*;
pub use files::Listen;
use files::*;
use os_user::*;
use process::*;

/// Name of the database the application uses.
pub const DATABASE: &str = "fleetledger";
/// Name of the cluster's superuser role, as which the application connects.
pub const USER: &str = "fleetledger";
/// Install hint used when no PostgreSQL binaries are found.
pub const INSTALL_HINT: &str = "install the PostgreSQL server: on Debian/Ubuntu `apt-get install postgresql`; \
     on other systems install your distribution's PostgreSQL server package (for example \
     `dnf install postgresql-server` or `brew install postgresql`) and put its bin directory \
     (containing initdb, pg_ctl and postgres) on PATH; or set DATABASE_URL to use an existing server";

/// The three programs the embedded cluster needs, all from the same installation.
const PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
/// Where distributions such as Debian/Ubuntu install versioned PostgreSQL binaries
/// (`<root>/<major>/bin`).
const DEFAULT_INSTALL_ROOT: &str = "/usr/lib/postgresql";

const STATE_FILE: &str = "fleetledger-embedded.conf";
const PASSWORD_FILE: &str = "fleetledger-password";
const LOG_FILE: &str = "postgres.log";
const SOCKET_DIR: &str = "run";
/// Port number used in socket mode; it only names the socket file inside the private
/// socket directory, no TCP port is opened.
const SOCKET_PORT: u16 = 5432;
/// `sizeof(sockaddr_un.sun_path) - 1` on Linux.
const MAX_SOCKET_PATH: usize = 107;
/// `pg_ctl start -t`.
const PG_CTL_WAIT_SECS: u64 = 60;
/// Upper bound for any single helper program (initdb, pg_ctl).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);
/// How long to keep trying to connect after `pg_ctl start` returned.
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);
const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_RETRY_DELAY: Duration = Duration::from_millis(200);
/// Client environment variables that must not leak into initdb/pg_ctl/postgres.
const CLIENT_ENV: [&str; 10] = [
    "PGDATA",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGOPTIONS",
    "PGSERVICE",
];

/// Errors of the embedded PostgreSQL cluster.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No directory with `initdb`, `pg_ctl` and `postgres` was found.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or under \
         {install_roots}/*/bin; {hint}",
        install_roots = display_paths(.install_roots),
        hint = INSTALL_HINT
    )]
    BinariesNotFound {
        /// The `PATH` directories that were searched.
        path_dirs: Vec<PathBuf>,
        /// The roots of versioned installations that were searched.
        install_roots: Vec<PathBuf>,
    },

    /// The data directory holds a cluster of a major version no installed binaries match.
    #[error(
        "the cluster in {data_dir} was created by PostgreSQL {cluster_version}, but only these \
         PostgreSQL binaries were found: {found}; install PostgreSQL {cluster_version} (on \
         Debian/Ubuntu `apt-get install postgresql-{cluster_version}`) or upgrade the cluster \
         with pg_upgrade"
    )]
    VersionMismatch {
        /// The data directory.
        data_dir: PathBuf,
        /// Contents of `PG_VERSION`.
        cluster_version: String,
        /// The binaries found, as "dir (version)".
        found: String,
    },

    /// The data directory path cannot be used.
    #[error("invalid data directory {path}: {reason}")]
    InvalidDataDir {
        /// The path as given.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },

    /// The data directory exists, is not empty and holds no PostgreSQL cluster.
    #[error(
        "{0} exists and is not empty but holds no PostgreSQL cluster (no PG_VERSION); \
         move it away or choose another data directory"
    )]
    NotACluster(PathBuf),

    /// The data directory holds a cluster that Fleetledger did not create.
    #[error(
        "{data_dir} holds a PostgreSQL cluster that was not created by Fleetledger (no {file}); \
         point DATABASE_URL at it instead, or choose another data directory"
    )]
    ForeignCluster {
        /// The data directory.
        data_dir: PathBuf,
        /// The missing state file name.
        file: &'static str,
    },

    /// A file Fleetledger wrote into the data directory cannot be understood.
    #[error("cannot read {path}: {reason}")]
    BadStateFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Running as root, but no unprivileged OS user to run PostgreSQL as was found.
    #[error(
        "running as root, and PostgreSQL refuses to run as root, but neither the `postgres` nor \
         the `nobody` OS user exists in /etc/passwd; create a `postgres` user (installing the \
         PostgreSQL package usually does) or run Fleetledger as an unprivileged user"
    )]
    NoUnprivilegedUser,

    /// Running as root, and the data directory is owned by root.
    #[error(
        "{0} is owned by root, and PostgreSQL refuses to run as root; chown -R it to the OS user \
         that should run the server (e.g. postgres)"
    )]
    OwnedByRoot(PathBuf),

    /// The data directory is owned by another OS user than the one running this process.
    #[error(
        "{data_dir} is owned by uid {owner}, but this process runs as uid {euid}; PostgreSQL \
         must run as the owner of its data directory: run Fleetledger as that user (or as root)"
    )]
    WrongOwner {
        /// The data directory.
        data_dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        euid: u32,
    },

    /// The OS user that runs PostgreSQL cannot reach the data directory.
    #[error(
        "the OS user `{user}` that runs PostgreSQL cannot reach {data_dir}: {blocking} is not \
         traversable by it (it needs the x permission on every parent directory); choose a \
         data directory elsewhere or `chmod o+x` that directory"
    )]
    NotTraversable {
        /// The OS user PostgreSQL runs as.
        user: String,
        /// The data directory.
        data_dir: PathBuf,
        /// The (first) directory that blocks access, as far as can be told from mode bits.
        blocking: PathBuf,
    },

    /// The unix socket path would be too long (the data directory was moved to a longer path).
    #[error(
        "the unix socket path {0} is longer than {MAX_SOCKET_PATH} bytes; move the data \
         directory to a shorter path"
    )]
    SocketPathTooLong(PathBuf),

    /// A helper program failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error (and output), trimmed.
        stderr: String,
    },

    /// The server did not start.
    #[error(
        "PostgreSQL in {data_dir} did not start: {detail}\n--- last lines of {log} ---\n{log_tail}"
    )]
    StartFailed {
        /// The data directory.
        data_dir: PathBuf,
        /// What pg_ctl said.
        detail: String,
        /// The server log.
        log: PathBuf,
        /// Its last lines.
        log_tail: String,
    },

    /// The server was started but does not accept connections.
    #[error("PostgreSQL in {data_dir} does not accept connections after {waited:?}: {source}")]
    NotAccepting {
        /// The data directory.
        data_dir: PathBuf,
        /// How long we tried.
        waited: Duration,
        /// The last connection error.
        #[source]
        source: sqlx::Error,
    },

    /// A statement on the server failed.
    #[error("{context}: {source}")]
    Sql {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: sqlx::Error,
    },

    /// A file system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

pub(super) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> EmbeddedError {
    let context = context.into();
    move |source| EmbeddedError::Io { context, source }
}

pub(super) fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "(no directories)".to_owned();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// The embedded server
// ---------------------------------------------------------------------------------------------

/// A running embedded PostgreSQL server and how to reach it.
#[derive(Clone)]
pub struct EmbeddedPostgres {
    data_dir: PathBuf,
    socket_dir: Option<PathBuf>,
    port: u16,
    password: Option<String>,
    bin_dir: PathBuf,
    os_user: Option<String>,
}

impl fmt::Debug for EmbeddedPostgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedPostgres")
            .field("data_dir", &self.data_dir)
            .field("socket_dir", &self.socket_dir)
            .field("port", &self.port)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("bin_dir", &self.bin_dir)
            .field("os_user", &self.os_user)
            .finish()
    }
}

impl EmbeddedPostgres {
    /// Finds the PostgreSQL binaries (`PATH`, then `/usr/lib/postgresql/*/bin`), creates the
    /// cluster if `data_dir` is new, starts the server unless it is already running, waits until
    /// it accepts connections and creates the `fleetledger` database if it is missing.
    ///
    /// Concurrent calls for the same directory (also from other processes) are serialised by a
    /// lock on `<data_dir>.lock`; the later ones reuse the server the first one started.
    ///
    /// # Errors
    /// See [`EmbeddedError`]; every variant says what to do about it.
    pub async fn start(data_dir: &Path) -> Result<Self, EmbeddedError> {
        Self::start_with(data_dir, &BinarySearch::from_env()).await
    }

    /// [`start`](Self::start) with an explicit binary search path.
    ///
    /// # Errors
    /// See [`EmbeddedError`].
    pub async fn start_with(data_dir: &Path, search: &BinarySearch) -> Result<Self, EmbeddedError> {
        let data_dir = resolve_data_dir(data_dir)?;
        let _lock = lock_data_dir(&data_dir).await?;
        let euid = effective_uid().await?;

        let bin_dir = match inspect_data_dir(&data_dir)? {
            DirState::Cluster(version) => {
                select_binaries(search, Some(&version), &data_dir).await?
            }
            DirState::Empty => {
                let bin_dir = select_binaries(search, None, &data_dir).await?;
                let user = if euid == 0 {
                    Some(unprivileged_user()?)
                } else {
                    None
                };
                if let Some(user) = &user {
                    check_reachable(&bin_dir, user, &data_dir).await?;
                }
                init_cluster(&data_dir, &bin_dir, user.as_ref()).await?;
                bin_dir
            }
        };

        let user = cluster_user(&data_dir, euid)?;
        if let Some(user) = &user {
            check_reachable(&bin_dir, user, &data_dir).await?;
        }
        let (listen, password) = read_listen(&data_dir)?;
        let socket_dir = match listen {
            Listen::Socket => {
                if !socket_path_fits(&data_dir) {
                    return Err(EmbeddedError::SocketPathTooLong(socket_file(&data_dir)));
                }
                Some(data_dir.join(SOCKET_DIR))
            }
            Listen::Tcp { .. } => None,
        };
        // The server needs its socket directory; recreate it if someone removed it.
        let run_dir = data_dir.join(SOCKET_DIR);
        if !run_dir.is_dir() {
            create_private_dir(&run_dir, user.as_ref())?;
        }

        let server = Self {
            data_dir,
            socket_dir,
            port: listen.port(),
            password,
            bin_dir,
            os_user: user.as_ref().map(|u| u.name.clone()),
        };

        if pg_ctl_status(&server.bin_dir, &server.data_dir, user.as_ref()).await? {
            tracing::info!(data_dir = %server.data_dir.display(), "reusing running embedded PostgreSQL");
        } else {
            server.pg_ctl_start(user.as_ref()).await?;
        }
        server.ensure_database().await?;
        Ok(server)
    }

    async fn pg_ctl_start(&self, user: Option<&OsUser>) -> Result<(), EmbeddedError> {
        let log = self.log_file();
        let pg_ctl = self.bin_dir.join("pg_ctl");
        let wait = PG_CTL_WAIT_SECS.to_string();
        let start_args = args([
            OsStr::new("start"),
            OsStr::new("-D"),
            self.data_dir.as_os_str(),
            OsStr::new("-l"),
            log.as_os_str(),
            OsStr::new("-w"),
            OsStr::new("-t"),
            OsStr::new(&wait),
        ]);
        tracing::info!(data_dir = %self.data_dir.display(), bin_dir = %self.bin_dir.display(), "starting embedded PostgreSQL");
        let output = run_output(&pg_ctl, &start_args, user, &self.data_dir).await?;
        if output.status.success() {
            return Ok(());
        }
        Err(EmbeddedError::StartFailed {
            data_dir: self.data_dir.clone(),
            detail: format!(
                "`pg_ctl start` exited with {}: {}",
                output.status,
                output_text(&output)
            ),
            log_tail: log_tail(&log, 20),
            log,
        })
    }

    /// Connects (retrying until the deadline) to the `postgres` database and creates
    /// `fleetledger` if it is missing.
    async fn ensure_database(&self) -> Result<(), EmbeddedError> {
        let options = self.connect_options().database("postgres");
        let started = Instant::now();
        let mut conn = loop {
            let attempt = tokio::time::timeout(
                CONNECT_ATTEMPT_TIMEOUT,
                PgConnection::connect_with(&options),
            )
            .await
            .unwrap_or_else(|_| {
                Err(sqlx::Error::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connection attempt timed out after {CONNECT_ATTEMPT_TIMEOUT:?}"),
                )))
            });
            match attempt {
                Ok(conn) => break conn,
                Err(e) if is_retryable(&e) && started.elapsed() < CONNECT_DEADLINE => {
                    tracing::debug!(error = %e, "embedded PostgreSQL not accepting connections yet");
                    tokio::time::sleep(CONNECT_RETRY_DELAY).await;
                }
                Err(source) => {
                    return Err(EmbeddedError::NotAccepting {
                        data_dir: self.data_dir.clone(),
                        waited: started.elapsed(),
                        source,
                    });
                }
            }
        };
        let sql_err = |context: &str| {
            let context = context.to_owned();
            move |source| EmbeddedError::Sql { context, source }
        };
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(DATABASE)
                .fetch_one(&mut conn)
                .await
                .map_err(sql_err("cannot list databases"))?;
        if !exists {
            match conn
                .execute(format!("CREATE DATABASE \"{DATABASE}\"").as_str())
                .await
            {
                Ok(_) => tracing::info!("created database {DATABASE}"),
                // 42P04 duplicate_database: someone else was faster.
                Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P04") => {}
                Err(e) => return Err(sql_err(&format!("cannot create database {DATABASE}"))(e)),
            }
        }
        // Closing politely is a nicety; the server copes with a dropped connection.
        let _ = conn.close().await;
        Ok(())
    }

    /// Options to connect to the `fleetledger` database as user `fleetledger`: through the unix
    /// socket in `<data dir>/run`, or `127.0.0.1:<port>` with the generated password.
    ///
    /// Environment variables (`PGHOST`, `PGUSER`, …) and `~/.pgpass` do not override them.
    pub fn connect_options(&self) -> PgConnectOptions {
        let options = PgConnectOptions::new_without_pgpass()
            .username(USER)
            .database(DATABASE)
            .port(self.port)
            .ssl_mode(PgSslMode::Disable);
        match (&self.socket_dir, &self.password) {
            (Some(socket_dir), _) => options.socket(socket_dir),
            (None, Some(password)) => options.host("127.0.0.1").password(password),
            (None, None) => options.host("127.0.0.1"),
        }
    }

    /// The connection as a URL for psql and sqlx, e.g.
    /// `postgres:///fleetledger?host=/abs/data/postgres/run&port=5432&user=fleetledger`
    /// (or `postgres://fleetledger:<password>@127.0.0.1:<port>/fleetledger` on TCP).
    ///
    /// On TCP it contains the password, so do not log it.
    pub fn url(&self) -> String {
        match (&self.socket_dir, &self.password) {
            (Some(socket_dir), _) => format!(
                "postgres:///{DATABASE}?host={}&port={}&user={USER}",
                percent_encode(&socket_dir.to_string_lossy()),
                self.port
            ),
            (None, Some(password)) => format!(
                "postgres://{USER}:{}@127.0.0.1:{}/{DATABASE}",
                percent_encode(password),
                self.port
            ),
            (None, None) => format!("postgres://{USER}@127.0.0.1:{}/{DATABASE}", self.port),
        }
    }

    /// The absolute data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The unix socket directory, or `None` when the server listens on TCP.
    pub fn socket_dir(&self) -> Option<&Path> {
        self.socket_dir.as_deref()
    }

    /// The port (in socket mode it only names the socket file).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the PostgreSQL binaries in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The OS user the server runs as, when it is not this process's user (running as root).
    pub fn os_user(&self) -> Option<&str> {
        self.os_user.as_deref()
    }

    /// The server log file.
    pub fn log_file(&self) -> PathBuf {
        self.data_dir.join(LOG_FILE)
    }

    /// Whether a server is running on `data_dir` (`pg_ctl status`). A missing or empty
    /// directory has no server.
    ///
    /// # Errors
    /// When the binaries cannot be found or `pg_ctl status` fails unexpectedly.
    pub async fn is_running(data_dir: &Path) -> Result<bool, EmbeddedError> {
        let Some((data_dir, bin_dir, user)) = existing_cluster(data_dir).await? else {
            return Ok(false);
        };
        pg_ctl_status(&bin_dir, &data_dir, user.as_ref()).await
    }

    /// Stops the server on `data_dir` (`pg_ctl stop -m fast`) and waits until it is down.
    /// Does nothing when no server is running.
    ///
    /// # Errors
    /// When the binaries cannot be found or `pg_ctl stop` fails.
    pub async fn stop(data_dir: &Path) -> Result<(), EmbeddedError> {
        let Some((data_dir, bin_dir, user)) = existing_cluster(data_dir).await? else {
            return Ok(());
        };
        let _lock = lock_data_dir(&data_dir).await?;
        if !pg_ctl_status(&bin_dir, &data_dir, user.as_ref()).await? {
            return Ok(());
        }
        let stop_args = args([
            OsStr::new("stop"),
            OsStr::new("-D"),
            data_dir.as_os_str(),
            OsStr::new("-m"),
            OsStr::new("fast"),
            OsStr::new("-w"),
            OsStr::new("-t"),
            OsStr::new(&PG_CTL_WAIT_SECS.to_string()),
        ]);
        run_checked(
            &bin_dir.join("pg_ctl"),
            &stop_args,
            user.as_ref(),
            &data_dir,
        )
        .await?;
        tracing::info!(data_dir = %data_dir.display(), "stopped embedded PostgreSQL");
        Ok(())
    }
}

/// The resolved data directory, binaries and server user of an existing cluster, or `None`
/// when there is no cluster at `data_dir`.
async fn existing_cluster(
    data_dir: &Path,
) -> Result<Option<(PathBuf, PathBuf, Option<OsUser>)>, EmbeddedError> {
    let absolute = std::path::absolute(data_dir)
        .map_err(io_err(format!("cannot resolve {}", data_dir.display())))?;
    if !absolute.exists() {
        return Ok(None);
    }
    let data_dir = resolve_data_dir(&absolute)?;
    let DirState::Cluster(version) = inspect_data_dir(&data_dir)? else {
        return Ok(None);
    };
    let bin_dir = select_binaries(&BinarySearch::from_env(), Some(&version), &data_dir).await?;
    let user = cluster_user(&data_dir, effective_uid().await?)?;
    Ok(Some((data_dir, bin_dir, user)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_major_versions() {
        assert_eq!(
            major_version("postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)").as_deref(),
            Some("15")
        );
        assert_eq!(
            major_version("postgres (PostgreSQL) 9.6.24").as_deref(),
            Some("9.6")
        );
        assert_eq!(
            major_version("postgres (PostgreSQL) 17beta1").as_deref(),
            Some("17")
        );
        assert_eq!(major_version("nothing here"), None);
    }

    #[test]
    fn version_directories_sort_numerically() {
        let mut keys = vec![
            version_key("9.6").unwrap(),
            version_key("15").unwrap(),
            version_key("10").unwrap(),
        ];
        keys.sort_by(|a, b| b.cmp(a));
        assert_eq!(keys, vec![vec![15], vec![10], vec![9, 6]]);
        assert_eq!(version_key("main"), None);
    }

    #[test]
    fn state_file_round_trips() {
        let path = Path::new("/x/fleetledger-embedded.conf");
        for listen in [Listen::Socket, Listen::Tcp { port: 40123 }] {
            assert_eq!(
                Listen::parse_state_file(path, &listen.state_file_text()).unwrap(),
                listen
            );
        }
        assert!(Listen::parse_state_file(path, "listen = udp\n").is_err());
        assert!(Listen::parse_state_file(path, "listen = tcp\n").is_err());
    }

    fn server(socket_dir: Option<&str>, port: u16, password: Option<&str>) -> EmbeddedPostgres {
        EmbeddedPostgres {
            data_dir: PathBuf::from("/srv/a b+c/postgres"),
            socket_dir: socket_dir.map(PathBuf::from),
            port,
            password: password.map(str::to_owned),
            bin_dir: PathBuf::from("/usr/lib/postgresql/15/bin"),
            os_user: None,
        }
    }

    #[test]
    fn url_encodes_the_socket_directory() {
        assert_eq!(percent_encode("/tmp/a b+c/run"), "/tmp/a%20b%2Bc/run");
    }

    #[test]
    fn socket_url_parses_back_to_the_same_options() {
        let server = server(Some("/srv/a b+c/postgres/run"), 5432, None);
        let url = server.url();
        assert_eq!(
            url,
            "postgres:///fleetledger?host=/srv/a%20b%2Bc/postgres/run&port=5432&user=fleetledger"
        );
        let parsed: PgConnectOptions = url.parse().unwrap();
        assert_eq!(
            parsed.get_socket(),
            Some(&PathBuf::from("/srv/a b+c/postgres/run"))
        );
        assert_eq!(parsed.get_port(), 5432);
        assert_eq!(parsed.get_username(), USER);
        assert_eq!(parsed.get_database(), Some(DATABASE));
        let options = server.connect_options();
        assert_eq!(options.get_socket(), parsed.get_socket());
        assert_eq!(options.get_database(), Some(DATABASE));
    }

    #[test]
    fn tcp_url_parses_back_to_the_same_options() {
        let server = server(None, 40123, Some("00ff"));
        let url = server.url();
        assert_eq!(
            url,
            "postgres://fleetledger:00ff@127.0.0.1:40123/fleetledger"
        );
        let parsed: PgConnectOptions = url.parse().unwrap();
        assert_eq!(parsed.get_host(), "127.0.0.1");
        assert_eq!(parsed.get_port(), 40123);
        assert_eq!(parsed.get_username(), USER);
        assert_eq!(parsed.get_database(), Some(DATABASE));
        assert!(
            !format!("{server:?}").contains("00ff"),
            "Debug redacts the password"
        );
    }

    #[test]
    fn user_at_empty_host_is_not_a_valid_url() {
        // Why `url()` puts the user into the query string.
        assert!(
            "postgres://fleetledger@/fleetledger?host=/tmp"
                .parse::<PgConnectOptions>()
                .is_err()
        );
    }
}
