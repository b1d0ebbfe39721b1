//! Finding the PostgreSQL server binaries (PATH, then versioned install roots), all three
//! from one installation.

use super::*;

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

    pub(super) fn not_found(&self) -> EmbeddedError {
        EmbeddedError::BinariesNotFound {
            path_dirs: self.path_dirs.clone(),
            install_roots: self.install_roots.clone(),
        }
    }
}

/// "15" -> [15], "9.6" -> [9, 6]; anything else is not a version directory.
pub(super) fn version_key(name: &str) -> Option<Vec<u64>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

pub(super) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

pub(super) fn has_programs(dir: &Path) -> bool {
    PROGRAMS
        .iter()
        .all(|program| is_executable(&dir.join(program)))
}

/// If `dir/pg_ctl` is a symlink into a directory that itself has all programs (as with
/// `/usr/local/bin/pg_ctl -> /usr/lib/postgresql/15/bin/pg_ctl`), use that directory, so that
/// all programs come from the same installation.
pub(super) fn real_bin_dir(dir: &Path) -> PathBuf {
    fs::canonicalize(dir.join("pg_ctl"))
        .ok()
        .and_then(|real| real.parent().map(Path::to_path_buf))
        .filter(|real| has_programs(real))
        .unwrap_or_else(|| dir.to_path_buf())
}

/// "postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)" -> "15"; "… 9.6.24" -> "9.6".
pub(super) fn major_version(version_output: &str) -> Option<String> {
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

pub(super) async fn binary_major_version(bin_dir: &Path) -> Option<String> {
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
pub(super) async fn select_binaries(
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
