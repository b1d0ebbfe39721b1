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

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> EmbeddedError {
    let context = context.into();
    move |source| EmbeddedError::Io { context, source }
}

fn display_paths(paths: &[PathBuf]) -> String {
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
// Binary discovery
// ---------------------------------------------------------------------------------------------

/// Where to look for the PostgreSQL server binaries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BinarySearch {
    /// Directories searched first, in order (normally `PATH`).
    pub path_dirs: Vec<PathBuf>,
    /// Roots of versioned installations, searched as `<root>/<version>/bin`, highest version
    /// first (normally `/usr/lib/postgresql`).
    pub install_roots: Vec<PathBuf>,
}

impl BinarySearch {
    /// `PATH`, then `/usr/lib/postgresql/*/bin`.
    pub fn from_env() -> Self {
        let path_dirs = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect())
            .unwrap_or_default();
        Self {
            path_dirs,
            install_roots: vec![PathBuf::from(DEFAULT_INSTALL_ROOT)],
        }
    }

    /// Every directory holding all of `initdb`, `pg_ctl` and `postgres`, most preferred first,
    /// without duplicates (symlinked binaries are resolved to their real directory).
    pub fn candidates(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        for dir in &self.path_dirs {
            if dir.is_absolute() && has_programs(dir) {
                dirs.push(real_bin_dir(dir));
            }
        }
        for root in &self.install_roots {
            let Ok(entries) = fs::read_dir(root) else {
                continue;
            };
            let mut versioned: Vec<(Vec<u64>, PathBuf)> = entries
                .filter_map(Result::ok)
                .filter_map(|entry| {
                    let name = entry.file_name();
                    let key = version_key(name.to_str()?)?;
                    let bin = entry.path().join("bin");
                    has_programs(&bin).then_some((key, bin))
                })
                .collect();
            versioned.sort_by(|a, b| b.0.cmp(&a.0));
            dirs.extend(versioned.into_iter().map(|(_, bin)| real_bin_dir(&bin)));
        }
        let mut seen = HashSet::new();
        dirs.retain(|dir| seen.insert(dir.clone()));
        dirs
    }

    /// The most preferred directory holding `initdb`, `pg_ctl` and `postgres`.
    ///
    /// # Errors
    /// [`EmbeddedError::BinariesNotFound`] (naming the package to install) when there is none.
    pub fn find(&self) -> Result<PathBuf, EmbeddedError> {
        self.candidates()
            .into_iter()
            .next()
            .ok_or_else(|| self.not_found())
    }

    fn not_found(&self) -> EmbeddedError {
        EmbeddedError::BinariesNotFound {
            path_dirs: self.path_dirs.clone(),
            install_roots: self.install_roots.clone(),
        }
    }
}

/// "15" -> [15], "9.6" -> [9, 6]; anything else is not a version directory.
fn version_key(name: &str) -> Option<Vec<u64>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn has_programs(dir: &Path) -> bool {
    PROGRAMS
        .iter()
        .all(|program| is_executable(&dir.join(program)))
}

/// If `dir/pg_ctl` is a symlink into a directory that itself has all programs (as with
/// `/usr/local/bin/pg_ctl -> /usr/lib/postgresql/15/bin/pg_ctl`), use that directory, so that
/// all programs come from the same installation.
fn real_bin_dir(dir: &Path) -> PathBuf {
    fs::canonicalize(dir.join("pg_ctl"))
        .ok()
        .and_then(|real| real.parent().map(Path::to_path_buf))
        .filter(|real| has_programs(real))
        .unwrap_or_else(|| dir.to_path_buf())
}

/// "postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)" -> "15"; "… 9.6.24" -> "9.6".
fn major_version(version_output: &str) -> Option<String> {
    let version = version_output
        .split_whitespace()
        .find(|token| token.starts_with(|c: char| c.is_ascii_digit()))?;
    let mut parts = version.split('.').map(|part| {
        part.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
    });
    let major = parts.next().filter(|m| !m.is_empty())?;
    let major_num: u64 = major.parse().ok()?;
    if major_num < 10 {
        let minor = parts.next().filter(|m| !m.is_empty())?;
        Some(format!("{major}.{minor}"))
    } else {
        Some(major)
    }
}

async fn binary_major_version(bin_dir: &Path) -> Option<String> {
    let output = Command::new(bin_dir.join("postgres"))
        .arg("--version")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .ok()?;
    if !output.status.success() {
        return None;
    }
    major_version(&String::from_utf8_lossy(&output.stdout))
}

/// The binaries to run the cluster in `data_dir` with: for a new cluster the most preferred
/// ones, for an existing one the most preferred ones of the cluster's major version.
async fn select_binaries(
    search: &BinarySearch,
    cluster_version: Option<&str>,
    data_dir: &Path,
) -> Result<PathBuf, EmbeddedError> {
    let candidates = search.candidates();
    let Some(wanted) = cluster_version else {
        return candidates
            .into_iter()
            .next()
            .ok_or_else(|| search.not_found());
    };
    if candidates.is_empty() {
        return Err(search.not_found());
    }
    let mut found = Vec::new();
    for dir in candidates {
        let version = binary_major_version(&dir).await;
        if version.as_deref() == Some(wanted) {
            return Ok(dir);
        }
        found.push(format!(
            "{} ({})",
            dir.display(),
            version.as_deref().unwrap_or("unknown version")
        ));
    }
    Err(EmbeddedError::VersionMismatch {
        data_dir: data_dir.to_path_buf(),
        cluster_version: wanted.to_owned(),
        found: found.join(", "),
    })
}

// ---------------------------------------------------------------------------------------------
// OS users
// ---------------------------------------------------------------------------------------------

/// An OS user PostgreSQL runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OsUser {
    name: String,
    uid: u32,
    gid: u32,
}

/// The effective uid of this process, from `/proc/self/status`, else `id -u`.
async fn effective_uid() -> Result<u32, EmbeddedError> {
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        let euid = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .and_then(|euid| euid.parse().ok());
        if let Some(euid) = euid {
            return Ok(euid);
        }
    }
    let output = Command::new("id")
        .arg("-u")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(io_err("cannot run `id -u` to find the effective user"))?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|_| EmbeddedError::Io {
            context: "cannot determine the effective user".to_owned(),
            source: io::Error::other(format!(
                "`id -u` printed {:?}",
                String::from_utf8_lossy(&output.stdout)
            )),
        })
}

fn passwd_entries() -> Vec<OsUser> {
    let Ok(passwd) = fs::read_to_string("/etc/passwd") else {
        return Vec::new();
    };
    passwd
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let _password = fields.next()?;
            let uid = fields.next()?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            Some(OsUser {
                name: name.to_owned(),
                uid,
                gid,
            })
        })
        .collect()
}

/// The unprivileged user to create a cluster for when running as root.
fn unprivileged_user() -> Result<OsUser, EmbeddedError> {
    let users = passwd_entries();
    ["postgres", "nobody"]
        .iter()
        .find_map(|wanted| {
            users
                .iter()
                .find(|user| user.name == *wanted && user.uid != 0)
                .cloned()
        })
        .ok_or(EmbeddedError::NoUnprivilegedUser)
}

/// The user that must run the server of the existing directory `data_dir`: `None` means this
/// process's own user.
fn cluster_user(data_dir: &Path, euid: u32) -> Result<Option<OsUser>, EmbeddedError> {
    let meta =
        fs::metadata(data_dir).map_err(io_err(format!("cannot stat {}", data_dir.display())))?;
    let owner = meta.uid();
    if euid != 0 {
        if owner != euid {
            return Err(EmbeddedError::WrongOwner {
                data_dir: data_dir.to_path_buf(),
                owner,
                euid,
            });
        }
        return Ok(None);
    }
    if owner == 0 {
        return Err(EmbeddedError::OwnedByRoot(data_dir.to_path_buf()));
    }
    let user = passwd_entries()
        .into_iter()
        .find(|user| user.uid == owner)
        .unwrap_or_else(|| OsUser {
            name: format!("uid {owner}"),
            uid: owner,
            gid: meta.gid(),
        });
    Ok(Some(user))
}

/// The first ancestor of `dir` that `user` cannot traverse, judged by mode bits only.
fn first_untraversable(dir: &Path, user: &OsUser) -> Option<PathBuf> {
    let mut ancestors: Vec<&Path> = dir.ancestors().collect();
    ancestors.reverse();
    ancestors.into_iter().find_map(|ancestor| {
        let meta = fs::metadata(ancestor).ok()?;
        let mode = meta.mode();
        let bit = if meta.uid() == user.uid {
            0o100
        } else if meta.gid() == user.gid {
            0o010
        } else {
            0o001
        };
        (mode & bit == 0).then(|| ancestor.to_path_buf())
    })
}

// ---------------------------------------------------------------------------------------------
// Running helper programs
// ---------------------------------------------------------------------------------------------

/// A command for a PostgreSQL program, run as `user` (if any) in `cwd`, with `HOME` = `cwd`.
fn pg_command(program: &Path, user: Option<&OsUser>, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd)
        .env("HOME", cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for var in CLIENT_ENV {
        cmd.env_remove(var);
    }
    if let Some(user) = user {
        cmd.uid(user.uid)
            .gid(user.gid)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name);
    }
    cmd
}

fn command_line(program: &Path, args: &[OsString]) -> String {
    let mut line = program.display().to_string();
    for arg in args {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs the command to completion (with a timeout) and returns its output, whatever its exit
/// status. A spawn failure with "permission denied" while running as another user means that
/// user cannot reach `cwd`.
async fn run_output(
    program: &Path,
    args: &[OsString],
    user: Option<&OsUser>,
    cwd: &Path,
) -> Result<Output, EmbeddedError> {
    let line = command_line(program, args);
    let child = pg_command(program, user, cwd).args(args).spawn();
    let child = match child {
        Ok(child) => child,
        Err(e) => {
            return Err(match user {
                Some(user) if e.kind() == io::ErrorKind::PermissionDenied => {
                    not_traversable(user, cwd, cwd)
                }
                _ => io_err(format!("cannot run `{line}`"))(e),
            });
        }
    };
    match tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.map_err(io_err(format!("cannot run `{line}`"))),
        Err(_) => Err(EmbeddedError::Command {
            command: line,
            status: format!("no exit after {COMMAND_TIMEOUT:?}, killed"),
            stderr: String::new(),
        }),
    }
}

fn not_traversable(user: &OsUser, data_dir: &Path, cwd: &Path) -> EmbeddedError {
    EmbeddedError::NotTraversable {
        user: user.name.clone(),
        data_dir: data_dir.to_path_buf(),
        blocking: first_untraversable(cwd, user).unwrap_or_else(|| cwd.to_path_buf()),
    }
}

/// Fails with [`EmbeddedError::NotTraversable`] unless `user` can reach the directory that holds
/// `data_dir` (checked by running `pg_ctl --version` as `user` in it, so ACLs count too).
async fn check_reachable(
    bin_dir: &Path,
    user: &OsUser,
    data_dir: &Path,
) -> Result<(), EmbeddedError> {
    let parent = data_dir.parent().unwrap_or(data_dir);
    let pg_ctl = bin_dir.join("pg_ctl");
    let version = args(["--version"]);
    match run_output(&pg_ctl, &version, Some(user), parent).await {
        Err(EmbeddedError::NotTraversable { .. }) => Err(not_traversable(user, data_dir, parent)),
        Err(e) => Err(e),
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(EmbeddedError::Command {
            command: command_line(&pg_ctl, &version),
            status: output.status.to_string(),
            stderr: output_text(&output),
        }),
    }
}

fn output_text(output: &Output) -> String {
    let mut text = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if text.is_empty() {
        text = stdout.trim().to_owned();
    }
    // Keep error messages readable: the end of the output says what went wrong.
    const MAX: usize = 4000;
    if text.len() > MAX {
        let mut cut = text.len() - MAX;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text = format!("…{}", &text[cut..]);
    }
    text
}

/// Runs the command and fails unless it exits successfully.
async fn run_checked(
    program: &Path,
    args: &[OsString],
    user: Option<&OsUser>,
    cwd: &Path,
) -> Result<Output, EmbeddedError> {
    let output = run_output(program, args, user, cwd).await?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(EmbeddedError::Command {
            command: command_line(program, args),
            status: output.status.to_string(),
            stderr: output_text(&output),
        })
    }
}

fn args<I, S>(items: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    items.into_iter().map(|s| s.as_ref().to_owned()).collect()
}

/// `pg_ctl status`: exit 0 = running, 3 = not running, 4 = no accessible data directory.
async fn pg_ctl_status(
    bin_dir: &Path,
    data_dir: &Path,
    user: Option<&OsUser>,
) -> Result<bool, EmbeddedError> {
    let pg_ctl = bin_dir.join("pg_ctl");
    let status_args = args([OsStr::new("status"), OsStr::new("-D"), data_dir.as_os_str()]);
    let output = run_output(&pg_ctl, &status_args, user, data_dir).await?;
    match output.status.code() {
        Some(0) => Ok(true),
        Some(3) => Ok(false),
        _ => Err(EmbeddedError::Command {
            command: command_line(&pg_ctl, &status_args),
            status: output.status.to_string(),
            stderr: output_text(&output),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Data directory state
// ---------------------------------------------------------------------------------------------

/// How the server listens; chosen once when the cluster is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// Unix socket in `<data dir>/run` only, `trust` authentication.
    Socket,
    /// `127.0.0.1:<port>` only, `scram-sha-256` authentication with a generated password.
    Tcp {
        /// The TCP port.
        port: u16,
    },
}

impl Listen {
    fn port(self) -> u16 {
        match self {
            Self::Socket => SOCKET_PORT,
            Self::Tcp { port } => port,
        }
    }

    fn state_file_text(self) -> String {
        let header = "# Written by Fleetledger when it created this PostgreSQL cluster; read on every start.\n";
        match self {
            Self::Socket => format!("{header}listen = socket\nport = {SOCKET_PORT}\n"),
            Self::Tcp { port } => format!("{header}listen = tcp\nport = {port}\n"),
        }
    }

    fn parse_state_file(path: &Path, text: &str) -> Result<Self, EmbeddedError> {
        let bad = |reason: String| EmbeddedError::BadStateFile {
            path: path.to_path_buf(),
            reason,
        };
        let mut listen = None;
        let mut port = None;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| bad(format!("line {line:?} is not `key = value`")))?;
            match key.trim() {
                "listen" => listen = Some(value.trim().to_owned()),
                "port" => {
                    port = Some(
                        value
                            .trim()
                            .parse::<u16>()
                            .map_err(|e| bad(format!("bad port {value:?}: {e}")))?,
                    );
                }
                _ => {}
            }
        }
        match (listen.as_deref(), port) {
            (Some("socket"), Some(SOCKET_PORT) | None) => Ok(Self::Socket),
            (Some("socket"), Some(other)) => Err(bad(format!(
                "socket mode with port {other}, expected {SOCKET_PORT}"
            ))),
            (Some("tcp"), Some(port)) => Ok(Self::Tcp { port }),
            (Some("tcp"), None) => Err(bad("tcp mode without a port".to_owned())),
            (other, _) => Err(bad(format!(
                "expected `listen = socket` or `listen = tcp`, found {other:?}"
            ))),
        }
    }
}

/// What is at the data directory path.
enum DirState {
    /// Nothing, or an empty directory.
    Empty,
    /// A cluster of this major version (contents of `PG_VERSION`).
    Cluster(String),
}

fn inspect_data_dir(data_dir: &Path) -> Result<DirState, EmbeddedError> {
    let mut entries = match fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(DirState::Empty),
        Err(e) => return Err(io_err(format!("cannot read {}", data_dir.display()))(e)),
    };
    if entries.next().is_none() {
        return Ok(DirState::Empty);
    }
    match fs::read_to_string(data_dir.join("PG_VERSION")) {
        Ok(version) => Ok(DirState::Cluster(version.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(EmbeddedError::NotACluster(data_dir.to_path_buf()))
        }
        Err(e) => Err(io_err(format!(
            "cannot read {}",
            data_dir.join("PG_VERSION").display()
        ))(e)),
    }
}

/// Absolute data directory path with its parent's symlinks resolved; creates the parent.
fn resolve_data_dir(data_dir: &Path) -> Result<PathBuf, EmbeddedError> {
    let invalid = |reason: &str| EmbeddedError::InvalidDataDir {
        path: data_dir.to_path_buf(),
        reason: reason.to_owned(),
    };
    let absolute = std::path::absolute(data_dir)
        .map_err(io_err(format!("cannot resolve {}", data_dir.display())))?;
    let name = absolute
        .file_name()
        .ok_or_else(|| invalid("it has no final directory name"))?
        .to_owned();
    if name == ".." || name == "." {
        return Err(invalid("it must end in a directory name, not `.` or `..`"));
    }
    let parent = absolute
        .parent()
        .ok_or_else(|| invalid("it has no parent directory"))?;
    fs::create_dir_all(parent).map_err(io_err(format!("cannot create {}", parent.display())))?;
    let parent =
        fs::canonicalize(parent).map_err(io_err(format!("cannot resolve {}", parent.display())))?;
    Ok(parent.join(name))
}

/// `<parent>/<prefix><name><suffix>` next to `data_dir`.
fn sibling(data_dir: &Path, prefix: &str, suffix: &str) -> PathBuf {
    let mut name = OsString::from(prefix);
    name.push(
        data_dir
            .file_name()
            .unwrap_or_else(|| OsStr::new("postgres")),
    );
    name.push(suffix);
    data_dir.with_file_name(name)
}

fn socket_file(data_dir: &Path) -> PathBuf {
    data_dir
        .join(SOCKET_DIR)
        .join(format!(".s.PGSQL.{SOCKET_PORT}"))
}

fn socket_path_fits(data_dir: &Path) -> bool {
    socket_file(data_dir).as_os_str().len() <= MAX_SOCKET_PATH
}

/// Holds an exclusive lock on `<data dir>.lock` until dropped.
struct DirLock {
    _file: fs::File,
}

async fn lock_data_dir(data_dir: &Path) -> Result<DirLock, EmbeddedError> {
    let path = sibling(data_dir, "", ".lock");
    let context = format!("cannot lock {}", path.display());
    let result = tokio::task::spawn_blocking(move || -> io::Result<fs::File> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        // Advisory lock (flock); released when the file is closed, also if the process dies.
        file.lock()?;
        Ok(file)
    })
    .await
    .map_err(|e| EmbeddedError::Io {
        context: context.clone(),
        source: io::Error::other(e),
    })?;
    let file = result.map_err(io_err(context))?;
    Ok(DirLock { _file: file })
}

fn create_private_dir(path: &Path, user: Option<&OsUser>) -> Result<(), EmbeddedError> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(io_err(format!("cannot create {}", path.display())))?;
    chown_to(path, user)
}

fn chown_to(path: &Path, user: Option<&OsUser>) -> Result<(), EmbeddedError> {
    if let Some(user) = user {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(io_err(format!(
            "cannot chown {} to {}",
            path.display(),
            user.name
        )))?;
    }
    Ok(())
}

fn write_file(
    path: &Path,
    contents: &str,
    mode: u32,
    user: Option<&OsUser>,
) -> Result<(), EmbeddedError> {
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(format!("cannot create {}", path.display())))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err(format!("cannot write {}", path.display())))?;
    chown_to(path, user)
}

fn append_file(path: &Path, contents: &str) -> Result<(), EmbeddedError> {
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_err(format!("cannot open {}", path.display())))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err(format!("cannot write {}", path.display())))
}

fn remove_if_exists(path: &Path) -> Result<(), EmbeddedError> {
    let result = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("cannot remove {}", path.display()))(e)),
    }
}

fn free_local_port() -> Result<u16, EmbeddedError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(io_err("cannot find a free TCP port on 127.0.0.1"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("cannot find a free TCP port on 127.0.0.1"))?
        .port();
    Ok(port)
}

fn server_settings(listen: Listen) -> String {
    let mut settings =
        String::from("\n# --- Fleetledger embedded server (appended once after initdb) ---\n");
    match listen {
        Listen::Socket => settings.push_str(&format!(
            "listen_addresses = ''\n\
             port = {SOCKET_PORT}\n\
             # Relative to the data directory.\n\
             unix_socket_directories = '{SOCKET_DIR}'\n\
             unix_socket_permissions = 0700\n"
        )),
        Listen::Tcp { port } => settings.push_str(&format!(
            "listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             # Relative to the data directory.\n\
             unix_socket_directories = '{SOCKET_DIR}'\n\
             unix_socket_permissions = 0700\n\
             password_encryption = 'scram-sha-256'\n"
        )),
    }
    settings
}

/// Creates a new cluster at `data_dir` (which is missing or empty): `initdb` into a hidden
/// sibling directory, configure it, then rename it into place, so that an interrupted
/// initialisation never leaves a half-made cluster behind.
async fn init_cluster(
    data_dir: &Path,
    bin_dir: &Path,
    user: Option<&OsUser>,
) -> Result<(), EmbeddedError> {
    let listen = if socket_path_fits(data_dir) {
        Listen::Socket
    } else {
        Listen::Tcp {
            port: free_local_port()?,
        }
    };
    let staging = sibling(data_dir, ".", ".initdb");
    let pwfile = sibling(data_dir, ".", ".initdb-pw");
    // Leftovers of an interrupted initialisation (we hold the lock, so nobody else is at it).
    remove_if_exists(&staging)?;
    remove_if_exists(&pwfile)?;
    create_private_dir(&staging, user)?;

    let result = init_staging(&staging, &pwfile, data_dir, bin_dir, user, listen).await;
    let cleanup_pw = remove_if_exists(&pwfile);
    if let Err(e) = result {
        // Best effort: the error that matters is the initialisation error.
        let _ = remove_if_exists(&staging);
        return Err(e);
    }
    cleanup_pw?;

    if data_dir.exists() {
        // An empty directory (inspect_data_dir checked): replace it.
        fs::remove_dir(data_dir).map_err(io_err(format!(
            "cannot replace the empty directory {}",
            data_dir.display()
        )))?;
    }
    fs::rename(&staging, data_dir).map_err(io_err(format!(
        "cannot move the new cluster from {} to {}",
        staging.display(),
        data_dir.display()
    )))?;
    tracing::info!(data_dir = %data_dir.display(), ?listen, "created embedded PostgreSQL cluster");
    Ok(())
}

async fn init_staging(
    staging: &Path,
    pwfile: &Path,
    data_dir: &Path,
    bin_dir: &Path,
    user: Option<&OsUser>,
    listen: Listen,
) -> Result<(), EmbeddedError> {
    let mut initdb_args = args([
        OsStr::new("-D"),
        staging.as_os_str(),
        OsStr::new("-U"),
        OsStr::new(USER),
        OsStr::new("-E"),
        OsStr::new("UTF8"),
        OsStr::new("--no-locale"),
    ]);
    let password = match listen {
        Listen::Socket => {
            // Only reachable through the socket in a 0700 directory.
            initdb_args.push("--auth=trust".into());
            None
        }
        Listen::Tcp { .. } => {
            let password = hex::encode(rand::random::<[u8; 24]>());
            write_file(pwfile, &format!("{password}\n"), 0o600, user)?;
            initdb_args.push("--auth=scram-sha-256".into());
            let mut pw_arg = OsString::from("--pwfile=");
            pw_arg.push(pwfile);
            initdb_args.push(pw_arg);
            Some(password)
        }
    };
    run_checked(&bin_dir.join("initdb"), &initdb_args, user, staging).await?;

    append_file(&staging.join("postgresql.conf"), &server_settings(listen))?;
    create_private_dir(&staging.join(SOCKET_DIR), user)?;
    if let Some(password) = password {
        write_file(
            &staging.join(PASSWORD_FILE),
            &format!("{password}\n"),
            0o600,
            user,
        )?;
    }
    write_file(
        &staging.join(STATE_FILE),
        &listen.state_file_text(),
        0o644,
        user,
    )?;
    tracing::debug!(data_dir = %data_dir.display(), "initdb done");
    Ok(())
}

fn read_listen(data_dir: &Path) -> Result<(Listen, Option<String>), EmbeddedError> {
    let state_path = data_dir.join(STATE_FILE);
    let text = match fs::read_to_string(&state_path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(EmbeddedError::ForeignCluster {
                data_dir: data_dir.to_path_buf(),
                file: STATE_FILE,
            });
        }
        Err(e) => return Err(io_err(format!("cannot read {}", state_path.display()))(e)),
    };
    let listen = Listen::parse_state_file(&state_path, &text)?;
    let password = match listen {
        Listen::Socket => None,
        Listen::Tcp { .. } => {
            let pw_path = data_dir.join(PASSWORD_FILE);
            let password = fs::read_to_string(&pw_path)
                .map_err(io_err(format!("cannot read {}", pw_path.display())))?;
            let password = password.trim().to_owned();
            if password.is_empty() {
                return Err(EmbeddedError::BadStateFile {
                    path: pw_path,
                    reason: "empty password".to_owned(),
                });
            }
            Some(password)
        }
    };
    Ok((listen, password))
}

fn log_tail(log: &Path, lines: usize) -> String {
    match fs::read_to_string(log) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read the log: {e})"),
    }
}

/// Percent-encodes everything except RFC 3986 unreserved characters and `/`.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

fn is_retryable(error: &sqlx::Error) -> bool {
    match error {
        // 57P03 cannot_connect_now: starting up / shutting down / in recovery.
        sqlx::Error::Database(db) => db.code().as_deref() == Some("57P03"),
        sqlx::Error::Io(_) => true,
        _ => false,
    }
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
