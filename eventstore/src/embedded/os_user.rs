//! The OS user the cluster runs as when this process is root (PostgreSQL refuses root), and
//! commands run as that user.

use super::*;

/// An OS user PostgreSQL runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OsUser {
    pub(super) name: String,
    pub(super) uid: u32,
    pub(super) gid: u32,
}

/// The effective uid of this process, from `/proc/self/status`, else `id -u`.
pub(super) async fn effective_uid() -> Result<u32, EmbeddedError> {
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

pub(super) fn passwd_entries() -> Vec<OsUser> {
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
pub(super) fn unprivileged_user() -> Result<OsUser, EmbeddedError> {
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
pub(super) fn cluster_user(data_dir: &Path, euid: u32) -> Result<Option<OsUser>, EmbeddedError> {
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
pub(super) fn first_untraversable(dir: &Path, user: &OsUser) -> Option<PathBuf> {
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
