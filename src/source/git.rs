//! Git: fetch one ref of a repository (a bare clone in a cache directory, via gix) and read the
//! project at that commit straight from the object database into a [`Snapshot`] — no checkout, no
//! work tree, nothing on disk but Git objects (which hold only what is in Git: encrypted secrets).

use std::path::Path;
use std::sync::atomic::AtomicBool;

use super::{MAX_FILE_BYTES, PROJECT_ENTRIES, Snapshot};

/// Which revision to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Revision {
    /// The remote's default branch.
    #[default]
    Default,
    /// A branch.
    Branch(String),
    /// A tag.
    Tag(String),
    /// A commit id (full hex); the default branch is fetched and the commit looked up in it.
    Commit(String),
}

/// What a fetch produced.
pub struct Fetched {
    /// The commit id (hex).
    pub revision: String,
    /// The project files at that commit.
    pub snapshot: Snapshot,
}

/// A fetch or read that failed. Never holds file contents.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GitError(pub String);

fn err(what: &str, e: impl std::fmt::Display) -> GitError {
    GitError(format!("{what}: {e}"))
}

/// Fetches `url` at `rev` into `cache` (replaced on every call) and reads the project under `path`.
pub fn fetch(url: &str, rev: &Revision, path: &str, cache: &Path) -> Result<Fetched, GitError> {
    if cache.exists() {
        std::fs::remove_dir_all(cache)
            .map_err(|e| err(&format!("clearing {}", cache.display()), e))?;
    }
    std::fs::create_dir_all(cache).map_err(|e| err(&format!("creating {}", cache.display()), e))?;
    let mut prepare = gix::prepare_clone_bare(url, cache).map_err(|e| err(url, e))?;
    let ref_name = match rev {
        Revision::Branch(b) => Some(b.clone()),
        Revision::Tag(t) => Some(t.clone()),
        Revision::Default | Revision::Commit(_) => None,
    };
    if let Some(name) = &ref_name {
        prepare = prepare
            .with_ref_name(Some(name.as_str()))
            .map_err(|e| err(&format!("ref {name}"), e))?;
    }
    let interrupt = AtomicBool::new(false);
    let (repo, _outcome) = prepare
        .fetch_only(gix::progress::Discard, &interrupt)
        .map_err(|e| err(&format!("fetching {url}"), e))?;
    let commit = match rev {
        Revision::Commit(id) => {
            let oid = gix::ObjectId::from_hex(id.as_bytes())
                .map_err(|e| err(&format!("commit {id}"), e))?;
            repo.find_commit(oid)
                .map_err(|e| err(&format!("commit {id} is not on the default branch"), e))?
        }
        _ => repo
            .head_commit()
            .map_err(|e| err("reading the fetched ref", e))?,
    };
    let revision = commit.id.to_hex().to_string();
    let mut tree = commit
        .tree()
        .map_err(|e| err("reading the commit's tree", e))?;
    let path = path.trim_matches('/');
    if !path.is_empty() && path != "." {
        let entry = tree
            .lookup_entry_by_path(path)
            .map_err(|e| err(&format!("path {path}"), e))?
            .ok_or_else(|| GitError(format!("path {path:?} does not exist at {revision}")))?;
        tree = repo
            .find_tree(entry.object_id())
            .map_err(|e| err(&format!("path {path:?} is not a directory"), e))?;
    }
    let mut recorder = gix::traverse::tree::Recorder::default();
    tree.traverse()
        .breadthfirst(&mut recorder)
        .map_err(|e| err("walking the tree", e))?;
    let mut snapshot = Snapshot::new();
    for entry in recorder.records {
        if !entry.mode.is_blob() {
            continue;
        }
        let file = entry.filepath.to_string();
        let top = file.split('/').next().unwrap_or_default();
        let hidden = file.split('/').any(|seg| seg.starts_with('.'));
        if hidden || !PROJECT_ENTRIES.contains(&top) {
            continue;
        }
        let blob = repo
            .find_blob(entry.oid)
            .map_err(|e| err(&format!("reading {file}"), e))?;
        if blob.data.len() as u64 > MAX_FILE_BYTES {
            return Err(GitError(format!(
                "{file}: {} bytes is more than the {MAX_FILE_BYTES} a project file may have",
                blob.data.len()
            )));
        }
        snapshot.insert(file, blob.data.clone());
    }
    Ok(Fetched { revision, snapshot })
}
