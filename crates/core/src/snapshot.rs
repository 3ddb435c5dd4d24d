//! A project in memory: a [`Snapshot`] of the files `render` reads, from a directory
//! ([`Snapshot::read_dir`]) or, in the engine, from a Git commit.
//!
//! Rendering never reads the filesystem itself; the CLI builds a snapshot from a directory and the
//! controller will build one from a Git tree, so both render exactly the same bytes. Only the files a
//! project consists of are read (`lockstep.yaml`, values, environments, templates, manifests).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Largest single file a snapshot accepts (templates, values and manifests are small; a bigger file
/// is almost certainly a mistake such as a committed archive).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Largest project a snapshot accepts, all files together: a repository whose tree points a
/// thousand times at one big blob (a few kilobytes packed) must not become gigabytes in memory.
pub const MAX_PROJECT_BYTES: u64 = 32 * 1024 * 1024;

/// Most files a project may have.
pub const MAX_PROJECT_FILES: usize = 10_000;

/// The top-level entries of a project that a snapshot reads.
pub const PROJECT_ENTRIES: [&str; 7] = [
    "lockstep.yaml",
    "lockstep.lock",
    "values.yaml",
    "templates",
    "environments",
    "manifests",
    "charts",
];

/// Whether a project reads every (non-hidden) top-level entry, not only [`PROJECT_ENTRIES`]: when
/// an environment of its `lockstep.yaml` builds a Kustomize overlay (`kustomize:`), whose bases
/// may lie anywhere in the project.
pub fn reads_everything(project_file: &[u8]) -> bool {
    let Ok(v) = yaml_serde::from_slice::<yaml_serde::Value>(project_file) else {
        return false;
    };
    v.get("environments")
        .and_then(yaml_serde::Value::as_mapping)
        .is_some_and(|envs| envs.values().any(|e| e.get("kustomize").is_some()))
}

/// Whether top-level entry `name` is read by a project for which [`reads_everything`] said
/// `everything`.
pub fn reads_entry(name: &str, everything: bool) -> bool {
    !name.starts_with('.') && (everything || PROJECT_ENTRIES.contains(&name))
}

/// `rel` taken from project directory `dir` (`""` for the root), with `.` and `..` resolved, as a
/// project path; `None` when it climbs out of the project.
pub fn join_path(dir: &str, rel: &str) -> Option<String> {
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for seg in rel.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(parts.join("/"))
}

/// The files of a project, by path relative to its root with `/` separators, in sorted order.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    files: BTreeMap<String, Vec<u8>>,
    /// All files' bytes together.
    bytes: u64,
}

/// A project directory that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// An I/O error on one path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file over [`MAX_FILE_BYTES`].
    #[error("{}: {size} bytes is more than the {MAX_FILE_BYTES} a project file may have", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// More than [`MAX_PROJECT_BYTES`] or [`MAX_PROJECT_FILES`] in all.
    #[error("the project is bigger than lockstep reads ({MAX_PROJECT_FILES} files, {MAX_PROJECT_BYTES} bytes in all), reached at {}", path.display())]
    ProjectTooLarge {
        /// The file at which the limit was reached.
        path: PathBuf,
    },
    /// A path that is not valid UTF-8 (templates are named by their path).
    #[error("{}: file names in a project must be valid UTF-8", path.display())]
    NotUtf8 {
        /// The path.
        path: PathBuf,
    },
}

impl Snapshot {
    /// An empty snapshot.
    pub fn new() -> Self {
        Snapshot::default()
    }

    /// Adds (or replaces) a file.
    pub fn insert(&mut self, path: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        let bytes = bytes.into();
        self.bytes += bytes.len() as u64;
        if let Some(old) = self.files.insert(path.into(), bytes) {
            self.bytes -= old.len() as u64;
        }
    }

    /// Whether one more file of `size` bytes would stay within [`MAX_PROJECT_FILES`] and
    /// [`MAX_PROJECT_BYTES`].
    pub fn has_room_for(&self, size: u64) -> bool {
        self.files.len() < MAX_PROJECT_FILES && self.bytes.saturating_add(size) <= MAX_PROJECT_BYTES
    }

    /// The bytes of a file, if present.
    pub fn get(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(Vec::as_slice)
    }

    /// Whether a file exists.
    pub fn contains(&self, path: &str) -> bool {
        self.files.contains_key(path)
    }

    /// Files whose path starts with `prefix` (use a trailing `/` for a directory), sorted by path.
    pub fn under<'a>(&'a self, prefix: &str) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        let prefix = prefix.to_string();
        self.files
            .range(prefix.clone()..)
            .take_while(move |(p, _)| p.starts_with(&prefix))
            .map(|(p, b)| (p.as_str(), b.as_slice()))
    }

    /// Number of files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the snapshot holds no file.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Reads the project files under `root`: the entries of [`PROJECT_ENTRIES`], recursively, skipping
    /// hidden files and directories (`.git`, editor swap files). Symbolic links are followed only
    /// when they stay inside `root`.
    pub fn read_dir(root: &Path) -> Result<Snapshot, SourceError> {
        let mut snapshot = Snapshot::new();
        let canonical_root = root.canonicalize().map_err(|source| SourceError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        let project_file = std::fs::read(root.join(PROJECT_ENTRIES[0])).unwrap_or_default();
        let mut entries: Vec<String> = PROJECT_ENTRIES.iter().map(|e| e.to_string()).collect();
        if reads_everything(&project_file) {
            let io = |source| SourceError::Io {
                path: root.to_path_buf(),
                source,
            };
            for entry in std::fs::read_dir(root).map_err(io)? {
                let name = entry.map_err(io)?.file_name();
                if let Some(name) = name.to_str()
                    && reads_entry(name, true)
                    && !entries.iter().any(|e| e == name)
                {
                    entries.push(name.to_string());
                }
            }
            entries.sort();
        }
        for entry in &entries {
            let path = root.join(entry);
            if path.exists() {
                read_into(&mut snapshot, &canonical_root, &path, entry)?;
            }
        }
        Ok(snapshot)
    }
}

fn read_into(
    snapshot: &mut Snapshot,
    root: &Path,
    path: &Path,
    rel: &str,
) -> Result<(), SourceError> {
    let io = |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Only a symbolic link can lead out of the project (its parents were checked on the way
    // down), so only links are resolved: a `canonicalize` per file costs a readlink per component.
    let mut meta = std::fs::symlink_metadata(path).map_err(io)?;
    if meta.file_type().is_symlink() {
        let canonical = path.canonicalize().map_err(io)?;
        if !canonical.starts_with(root) {
            // A link out of the project: a Git checkout would not carry its target either.
            return Ok(());
        }
        meta = std::fs::metadata(path).map_err(io)?;
    }
    if meta.is_dir() {
        let mut children = Vec::new();
        for child in std::fs::read_dir(path).map_err(io)? {
            let child = child.map_err(io)?;
            let name = child.file_name();
            let Some(name) = name.to_str() else {
                return Err(SourceError::NotUtf8 { path: child.path() });
            };
            if name.starts_with('.') {
                continue;
            }
            children.push(name.to_string());
        }
        children.sort();
        for name in children {
            read_into(snapshot, root, &path.join(&name), &format!("{rel}/{name}"))?;
        }
    } else if meta.is_file() {
        if meta.len() > MAX_FILE_BYTES {
            return Err(SourceError::TooLarge {
                path: path.to_path_buf(),
                size: meta.len(),
            });
        }
        if !snapshot.has_room_for(meta.len()) {
            return Err(SourceError::ProjectTooLarge {
                path: path.to_path_buf(),
            });
        }
        snapshot.insert(rel, std::fs::read(path).map_err(io)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_project_budget_counts_replaced_files_once() {
        let mut s = Snapshot::new();
        s.insert("a", vec![0u8; 1024]);
        s.insert("a", vec![0u8; 10]);
        assert!(s.has_room_for(MAX_PROJECT_BYTES - 10));
        assert!(!s.has_room_for(MAX_PROJECT_BYTES - 9));
    }

    #[test]
    fn under_lists_a_directory_in_order_and_nothing_beside_it() {
        let mut s = Snapshot::new();
        s.insert("templates/b.yaml", "b");
        s.insert("templates/a.yaml", "a");
        s.insert("templates2/x.yaml", "x");
        s.insert("values.yaml", "v");
        let got: Vec<_> = s.under("templates/").map(|(p, _)| p).collect();
        assert_eq!(got, ["templates/a.yaml", "templates/b.yaml"]);
    }

    #[test]
    fn read_dir_reads_project_entries_and_skips_hidden_and_unrelated_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("templates/_helpers")).expect("mkdir");
        std::fs::create_dir_all(root.join(".git")).expect("mkdir");
        std::fs::write(root.join("lockstep.yaml"), "project: x\n").expect("write");
        std::fs::write(root.join("templates/a.yaml"), "a").expect("write");
        std::fs::write(root.join("templates/.a.yaml.swp"), "swap").expect("write");
        std::fs::write(root.join("templates/_helpers/h.j2"), "h").expect("write");
        std::fs::write(root.join(".git/config"), "c").expect("write");
        std::fs::write(root.join("notes.txt"), "n").expect("write");
        let s = Snapshot::read_dir(root).expect("read");
        let paths: Vec<_> = s.under("").map(|(p, _)| p.to_string()).collect();
        assert_eq!(
            paths,
            [
                "lockstep.yaml",
                "templates/_helpers/h.j2",
                "templates/a.yaml"
            ]
        );
    }
}
