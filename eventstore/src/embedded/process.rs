//! Running helper programs (initdb, pg_ctl) with a timeout, as the cluster's user, with their
//! output in the error when they fail.

use super::*;

/// A command for a PostgreSQL program, run as `user` (if any) in `cwd`, with `HOME` = `cwd`.
pub(super) fn pg_command(program: &Path, user: Option<&OsUser>, cwd: &Path) -> Command {
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

pub(super) fn command_line(program: &Path, args: &[OsString]) -> String {
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
pub(super) async fn run_output(
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

pub(super) fn not_traversable(user: &OsUser, data_dir: &Path, cwd: &Path) -> EmbeddedError {
    EmbeddedError::NotTraversable {
        user: user.name.clone(),
        data_dir: data_dir.to_path_buf(),
        blocking: first_untraversable(cwd, user).unwrap_or_else(|| cwd.to_path_buf()),
    }
}

/// Fails with [`EmbeddedError::NotTraversable`] unless `user` can reach the directory that holds
/// `data_dir` (checked by running `pg_ctl --version` as `user` in it, so ACLs count too).
pub(super) async fn check_reachable(
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

pub(super) fn output_text(output: &Output) -> String {
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
pub(super) async fn run_checked(
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

pub(super) fn args<I, S>(items: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    items.into_iter().map(|s| s.as_ref().to_owned()).collect()
}

/// `pg_ctl status`: exit 0 = running, 3 = not running, 4 = no accessible data directory.
pub(super) async fn pg_ctl_status(
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
