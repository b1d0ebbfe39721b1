//! The data directory: its state, how the server listens, its lock, the files written into
//! it, and creating a cluster in it (initdb through a staging directory).

use super::*;

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
    pub(super) fn port(self) -> u16 {
        match self {
            Self::Socket => SOCKET_PORT,
            Self::Tcp { port } => port,
        }
    }

    pub(super) fn state_file_text(self) -> String {
        let header = "# Written by Fleetledger when it created this PostgreSQL cluster; read on every start.\n";
        match self {
            Self::Socket => format!("{header}listen = socket\nport = {SOCKET_PORT}\n"),
            Self::Tcp { port } => format!("{header}listen = tcp\nport = {port}\n"),
        }
    }

    pub(super) fn parse_state_file(path: &Path, text: &str) -> Result<Self, EmbeddedError> {
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
pub(super) enum DirState {
    /// Nothing, or an empty directory.
    Empty,
    /// A cluster of this major version (contents of `PG_VERSION`).
    Cluster(String),
}

pub(super) fn inspect_data_dir(data_dir: &Path) -> Result<DirState, EmbeddedError> {
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
pub(super) fn resolve_data_dir(data_dir: &Path) -> Result<PathBuf, EmbeddedError> {
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
pub(super) fn sibling(data_dir: &Path, prefix: &str, suffix: &str) -> PathBuf {
    let mut name = OsString::from(prefix);
    name.push(
        data_dir
            .file_name()
            .unwrap_or_else(|| OsStr::new("postgres")),
    );
    name.push(suffix);
    data_dir.with_file_name(name)
}

pub(super) fn socket_file(data_dir: &Path) -> PathBuf {
    data_dir
        .join(SOCKET_DIR)
        .join(format!(".s.PGSQL.{SOCKET_PORT}"))
}

pub(super) fn socket_path_fits(data_dir: &Path) -> bool {
    socket_file(data_dir).as_os_str().len() <= MAX_SOCKET_PATH
}

/// Holds an exclusive lock on `<data dir>.lock` until dropped.
pub(super) struct DirLock {
    _file: fs::File,
}

pub(super) async fn lock_data_dir(data_dir: &Path) -> Result<DirLock, EmbeddedError> {
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

pub(super) fn create_private_dir(path: &Path, user: Option<&OsUser>) -> Result<(), EmbeddedError> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(io_err(format!("cannot create {}", path.display())))?;
    chown_to(path, user)
}

pub(super) fn chown_to(path: &Path, user: Option<&OsUser>) -> Result<(), EmbeddedError> {
    if let Some(user) = user {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(io_err(format!(
            "cannot chown {} to {}",
            path.display(),
            user.name
        )))?;
    }
    Ok(())
}

pub(super) fn write_file(
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

pub(super) fn append_file(path: &Path, contents: &str) -> Result<(), EmbeddedError> {
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_err(format!("cannot open {}", path.display())))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err(format!("cannot write {}", path.display())))
}

pub(super) fn remove_if_exists(path: &Path) -> Result<(), EmbeddedError> {
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

pub(super) fn free_local_port() -> Result<u16, EmbeddedError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(io_err("cannot find a free TCP port on 127.0.0.1"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("cannot find a free TCP port on 127.0.0.1"))?
        .port();
    Ok(port)
}

pub(super) fn server_settings(listen: Listen) -> String {
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
pub(super) async fn init_cluster(
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

pub(super) async fn init_staging(
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

pub(super) fn read_listen(data_dir: &Path) -> Result<(Listen, Option<String>), EmbeddedError> {
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

pub(super) fn log_tail(log: &Path, lines: usize) -> String {
    match fs::read_to_string(log) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read the log: {e})"),
    }
}

/// Percent-encodes everything except RFC 3986 unreserved characters and `/`.
pub(super) fn percent_encode(text: &str) -> String {
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

pub(super) fn is_retryable(error: &sqlx::Error) -> bool {
    match error {
        // 57P03 cannot_connect_now: starting up / shutting down / in recovery.
        sqlx::Error::Database(db) => db.code().as_deref() == Some("57P03"),
        sqlx::Error::Io(_) => true,
        _ => false,
    }
}
