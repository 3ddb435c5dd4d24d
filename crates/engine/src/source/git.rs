//! Git: fetch one ref of a repository (a bare clone in a cache directory, via gix) and read the
//! project at that commit straight from the object database into a [`Snapshot`] — no checkout, no
//! work tree, nothing on disk but Git objects (which hold only what is in Git: encrypted secrets).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::{MAX_FILE_BYTES, MAX_PROJECT_BYTES, MAX_PROJECT_FILES, PROJECT_ENTRIES, Snapshot};
use lockstep_core::snapshot::{reads_entry, reads_everything};

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

/// How to authenticate to the remote.
#[derive(Default)]
pub enum Auth {
    /// Anonymous.
    #[default]
    None,
    /// HTTP(S) basic authentication (a token goes in `password`).
    Basic {
        /// The user name.
        username: String,
        /// The password or token.
        password: zeroize::Zeroizing<String>,
    },
    /// An SSH private key, and the `known_hosts` lines the server's host key must match.
    Ssh {
        /// The private key (OpenSSH or PEM format, not passphrase-protected).
        key: zeroize::Zeroizing<String>,
        /// `known_hosts` lines.
        known_hosts: String,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::None => "Auth::None",
            Auth::Basic { .. } => "Auth::Basic",
            Auth::Ssh { .. } => "Auth::Ssh",
        })
    }
}

/// What a fetch produced.
pub struct Fetched {
    /// The commit id (hex).
    pub revision: String,
    /// The raw commit object (headers incl. any signature, then the message), for signature checks.
    pub commit: Vec<u8>,
    /// For a [`Revision::Tag`] that names an annotated tag: the raw tag object (headers, message,
    /// any signature), for signature checks. `None` for a lightweight tag and other revisions.
    pub tag: Option<Vec<u8>>,
    /// Whether the commit is the `descends_from` commit [`fetch`] was given or one of its
    /// descendants (`None` when none was given).
    pub descends: Option<bool>,
    /// What became of the rollback pin [`fetch`] was given (`None` when none was).
    pub pinned: Option<Pinned>,
    /// The project files at that commit.
    pub snapshot: Snapshot,
}

/// Commits fetched at first when [`fetch`] is to tell whether the new commit descends from an
/// earlier one: a push rarely adds more; when the earlier commit is not among them, the whole
/// history is fetched and searched.
pub const ANCESTRY_DEPTH: u32 = 256;

/// Name prefix of the private directories [`SshFiles`] makes (see [`remove_leftovers`]).
const SSH_DIR_PREFIX: &str = "lockstep-ssh-";

/// Removes SSH key directories that processes no longer running left in the temporary directory
/// (the controller calls this at start; directories are named after their process).
pub fn remove_leftovers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(SSH_DIR_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        let alive = !pid.is_empty() && Path::new("/proc").join(pid).exists();
        if !alive {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// An SSH key written for the `ssh` program for the length of one fetch, in a private directory
/// of the temporary directory (memory-backed in the install manifests); removed on drop.
struct SshFiles {
    dir: std::path::PathBuf,
}

impl SshFiles {
    fn write(key: &str, known_hosts: &str) -> Result<SshFiles, GitError> {
        use std::io::Write as _;
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).map_err(|e| err("random name", e))?;
        let dir = std::env::temp_dir().join(format!(
            "{SSH_DIR_PREFIX}{}-{}",
            std::process::id(),
            hex::encode(suffix)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| err(&format!("creating {}", dir.display()), e))?;
        let files = SshFiles { dir };
        let write = |name: &str, text: &str| -> Result<(), GitError> {
            let path = files.dir.join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| err(&format!("writing {}", path.display()), e))?;
            f.write_all(text.as_bytes())
                .and_then(|_| {
                    if text.ends_with('\n') {
                        Ok(())
                    } else {
                        f.write_all(b"\n")
                    }
                })
                .map_err(|e| err(&format!("writing {}", path.display()), e))
        };
        write("identity", key)?;
        write("known_hosts", known_hosts)?;
        Ok(files)
    }

    fn command(&self) -> String {
        let q = |name: &str| format!("'{}'", self.dir.join(name).display());
        format!(
            "ssh -F /dev/null -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o BatchMode=yes -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=3",
            q("identity"),
            q("known_hosts")
        )
    }
}

impl Drop for SshFiles {
    fn drop(&mut self) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join("identity"))
        {
            use std::io::Write as _;
            let len = f.metadata().map(|m| m.len()).unwrap_or(0) as usize;
            let _ = f.write_all(&vec![0u8; len]);
            let _ = f.sync_all();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fetch or read that failed. Never holds file contents.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GitError(pub String);

fn err(what: &str, e: impl std::fmt::Display) -> GitError {
    GitError(format!("{what}: {e}"))
}

/// Like [`err`], with the error's causes (the transport's own words are usually in a source).
fn err_chain(what: &str, e: &(dyn std::error::Error + 'static)) -> GitError {
    let mut text = format!("{what}: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        let line = s.to_string();
        if !text.ends_with(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = s.source();
    }
    GitError(text)
}

/// `url` without the password or token an `https://user:secret@host/…` URL may carry, for
/// messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) if rest[..at].contains(':') => {
            let user = &rest[..at].split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// A rollback's pin: read `commit`, an older commit of the ref's history, instead of the ref's
/// tip — for as long as no commit newer than `from` (the tip the rollback was made from) is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The commit to read (full hex).
    pub commit: String,
    /// The tip the rollback was made from (full hex).
    pub from: String,
}

/// What became of a [`Pin`] in a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pinned {
    /// No newer commit: the pinned commit was read. `rewritten` names the tip when it is not
    /// `from` and does not descend from it either (the ref was moved back or its history
    /// rewritten: not newer, so the pin holds).
    Held {
        /// The tip, when the ref's history was rewritten.
        rewritten: Option<String>,
    },
    /// The tip descends from `from` and differs from it: a newer commit, which was read.
    Ended,
}

/// Fetches `url` at `rev` into `dir`, the cache repository of that URL (a bare repository kept
/// between fetches: only what is new is fetched; a first fetch of a branch or tag is shallow, one
/// commit deep), and reads the project under `path` from its object database. Every fetch asks
/// the server for its refs with `auth`: what is read is what the server advertises to those
/// credentials now, never what an earlier fetch left. With `descends_from` (a commit id), also
/// finds out whether the fetched commit descends from that one ([`Fetched::descends`]); with a
/// `pin`, reads the pinned commit while the tip is not newer than the pin's `from`
/// ([`Fetched::pinned`]). Either needs history: the cache is deepened by [`ANCESTRY_DEPTH`]
/// commits, and to the whole history only when those do not settle it. One fetch at a time per
/// cache (a lock file beside it, across processes too); a cache that does not open or read, or
/// grew past [`MAX_CACHE_BYTES`] or [`MAX_CACHE_PACKS`], is rebuilt. Setting `interrupt` makes a
/// fetch in progress give up.
#[allow(clippy::too_many_arguments)]
pub fn fetch(
    url: &str,
    rev: &Revision,
    path: &str,
    auth: &Auth,
    dir: &Path,
    descends_from: Option<&str>,
    pin: Option<&Pin>,
    interrupt: &AtomicBool,
) -> Result<Fetched, GitError> {
    let _lock = CacheLock::take(dir)?;
    let attempt = |repo: gix::Repository, fresh: bool| {
        fetch_into(
            &repo,
            fresh,
            url,
            rev,
            path,
            auth,
            descends_from,
            pin,
            interrupt,
        )
    };
    match open_cache(dir) {
        Some(repo) => match attempt(repo, false) {
            // The server could not be asked: the cache is not at fault.
            Err(Failed::Remote(e)) => Err(e),
            Err(Failed::Local(_)) if !interrupt.load(std::sync::atomic::Ordering::Relaxed) => {
                attempt(new_cache(dir)?, true).map_err(Failed::into_inner)
            }
            other => other.map_err(Failed::into_inner),
        },
        None => attempt(new_cache(dir)?, true).map_err(Failed::into_inner),
    }
}

/// The most a cache repository may hold on disk before it is rebuilt (shallow again).
pub const MAX_CACHE_BYTES: u64 = 512 * 1024 * 1024;

/// The most pack files a cache may collect (each fetch of something new adds one) before it is
/// rebuilt: reading stays fast without a repack.
pub const MAX_CACHE_PACKS: usize = 64;

/// Why one attempt failed: asking the server, or something in the cache (then rebuilt and tried once more).
enum Failed {
    Remote(GitError),
    Local(GitError),
}

impl Failed {
    fn into_inner(self) -> GitError {
        match self {
            Failed::Remote(e) | Failed::Local(e) => e,
        }
    }
}

impl From<GitError> for Failed {
    fn from(e: GitError) -> Failed {
        Failed::Local(e)
    }
}

/// An exclusive lock on `<dir>.lock`, held for one fetch; released when dropped (or when the
/// process ends).
struct CacheLock {
    _file: std::fs::File,
}

impl CacheLock {
    fn take(dir: &Path) -> Result<CacheLock, GitError> {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| err(&format!("creating {}", parent.display()), e))?;
        }
        let path = dir.with_extension("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| err(&format!("opening {}", path.display()), e))?;
        file.lock()
            .map_err(|e| err(&format!("locking {}", path.display()), e))?;
        Ok(CacheLock { _file: file })
    }
}

/// Removes the repository caches under `root` (the `<name>.git` directories [`fetch`] keeps, with
/// their `.lock` files) that are not in `in_use` — a repository no Sync reads any more. A cache
/// whose lock is held (a fetch in flight) is left for the next sweep. Returns what was removed.
pub fn sweep(root: &Path, in_use: &std::collections::HashSet<PathBuf>) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let dir = e.path();
        if dir.extension().is_none_or(|x| x != "git") || in_use.contains(&dir) || !dir.is_dir() {
            continue;
        }
        let lock = dir.with_extension("lock");
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
        else {
            continue;
        };
        if file.try_lock().is_err() {
            continue;
        }
        if std::fs::remove_dir_all(&dir).is_ok() {
            let _ = std::fs::remove_file(&lock);
            removed.push(dir);
        }
    }
    removed
}

/// The cache repository at `dir` when it is there, opens, and is within its bounds; otherwise
/// it is removed.
fn open_cache(dir: &Path) -> Option<gix::Repository> {
    if !dir.exists() {
        return None;
    }
    let packs = dir.join("objects").join("pack");
    let (mut bytes, mut count) = (0u64, 0usize);
    for e in std::fs::read_dir(&packs).into_iter().flatten().flatten() {
        bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
        count += usize::from(e.path().extension().is_some_and(|x| x == "pack"));
    }
    let within = bytes <= MAX_CACHE_BYTES && count <= MAX_CACHE_PACKS;
    match gix::open_opts(dir, gix::open::Options::isolated()) {
        Ok(repo) if within && repo.is_bare() => Some(repo),
        _ => {
            let _ = std::fs::remove_dir_all(dir);
            None
        }
    }
}

/// A new, empty cache repository at `dir` (whatever was there removed).
fn new_cache(dir: &Path) -> Result<gix::Repository, GitError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| err(&format!("clearing {}", dir.display()), e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| err(&format!("creating {}", dir.display()), e))?;
    gix::ThreadSafeRepository::init_opts(
        dir,
        gix::create::Kind::Bare,
        gix::create::Options::default(),
        gix::open::Options::isolated(),
    )
    .map(|r| r.to_thread_local())
    .map_err(|e| err(&format!("creating the cache {}", dir.display()), e))
}

/// One attempt of [`fetch`] with the cache `repo` (`fresh`: just created).
#[allow(clippy::too_many_arguments)]
fn fetch_into(
    repo: &gix::Repository,
    fresh: bool,
    url: &str,
    rev: &Revision,
    path: &str,
    auth: &Auth,
    descends_from: Option<&str>,
    pin: Option<&Pin>,
    interrupt: &AtomicBool,
) -> Result<Fetched, Failed> {
    let oid = |id: &str, what: &str| {
        gix::ObjectId::from_hex(id.as_bytes()).map_err(|e| err(&format!("{what} {id}"), e))
    };
    let earlier = descends_from
        .map(|id| oid(id, "the earlier commit"))
        .transpose()?;
    let pin = pin
        .map(|p| {
            Ok::<_, GitError>((
                oid(&p.commit, "the pinned commit")?,
                oid(&p.from, "the commit rolled back from")?,
            ))
        })
        .transpose()?;
    if pin.is_some() && matches!(rev, Revision::Commit(_)) {
        return Err(Failed::Local(GitError(
            "a commit ref cannot be rolled back: it names one commit already".into(),
        )));
    }
    let needs_history = earlier.is_some() || pin.is_some();
    // How the first fetch of this attempt treats the shallow boundary; deeper ones follow when
    // the history there does not settle what was asked.
    // A commit is asked for by its id, alone (depth 1 into a new cache): servers speaking protocol
    // v2 serve any commit they hold. One that will not is asked for the default branch's history.
    let mut by_id = matches!(rev, Revision::Commit(_));
    let mut shallow = match rev {
        Revision::Commit(_) if fresh => {
            gix::remote::fetch::Shallow::DepthAtRemote(std::num::NonZeroU32::MIN)
        }
        Revision::Commit(_) => gix::remote::fetch::Shallow::NoChange,
        _ if fresh && needs_history => gix::remote::fetch::Shallow::DepthAtRemote(
            std::num::NonZeroU32::new(ANCESTRY_DEPTH).unwrap_or(std::num::NonZeroU32::MIN),
        ),
        _ if fresh => gix::remote::fetch::Shallow::DepthAtRemote(std::num::NonZeroU32::MIN),
        _ => gix::remote::fetch::Shallow::NoChange,
    };
    let mut deepened = 0;
    'deeper: loop {
        let spec = match rev {
            Revision::Commit(id) if by_id => id.clone(),
            _ => refspec(rev),
        };
        let fetched =
            update(repo, url, &spec, auth, shallow.clone(), interrupt).and_then(|outcome| {
                tip_of(repo, rev)
                    .map(|tip| (tip, outcome))
                    .map_err(Failed::Local)
            });
        let (tip, outcome) = match fetched {
            Ok(found) => found,
            Err(_) if by_id => {
                // Not served by id: look for it in the default branch's whole history.
                by_id = false;
                shallow = gix::remote::fetch::Shallow::undo();
                continue 'deeper;
            }
            Err(e) => return Err(e),
        };
        // Whether the history here settles a search; `None`: deepen the cache and look again.
        let is_shallow = repo
            .is_shallow()
            .map_err(|e| err("reading the shallow boundary", e))?;
        let mut deeper = || {
            if !is_shallow || deepened >= 2 {
                return false;
            }
            shallow = if deepened == 0 {
                gix::remote::fetch::Shallow::Deepen(ANCESTRY_DEPTH)
            } else {
                gix::remote::fetch::Shallow::undo()
            };
            deepened += 1;
            true
        };
        let mut pinned = None;
        let mut read = tip.id;
        if let Some((commit, from)) = pin {
            let newer = tip.id != from;
            let descends = newer && ancestry(repo, tip.id, from, interrupt)? == Ancestry::Found;
            if newer && !descends && deeper() {
                continue 'deeper;
            }
            if newer && descends {
                pinned = Some(Pinned::Ended);
            } else {
                match ancestry(repo, tip.id, commit, interrupt)? {
                    Ancestry::Found => {}
                    Ancestry::Truncated if deeper() => continue 'deeper,
                    _ => {
                        return Err(Failed::Local(GitError(format!(
                            "commit {commit} is not in the history of {} (at {}): it cannot be \
                             rolled back to",
                            describe(rev),
                            tip.id
                        ))));
                    }
                }
                read = commit;
                pinned = Some(Pinned::Held {
                    rewritten: newer.then(|| tip.id.to_hex().to_string()),
                });
            }
        }
        let descends = match (earlier, &pinned) {
            (None, _) | (_, Some(Pinned::Held { .. })) => None,
            (Some(earlier), _) => match ancestry(repo, tip.id, earlier, interrupt)? {
                Ancestry::Found => Some(true),
                Ancestry::Truncated if deeper() => continue 'deeper,
                Ancestry::NotFound | Ancestry::Truncated => Some(false),
            },
        };
        let commit = if read == tip.id {
            tip
        } else {
            repo.find_commit(read)
                .map_err(|e| err(&format!("reading commit {read}"), e))?
        };
        let tag = match (rev, &pinned) {
            (_, Some(Pinned::Held { .. })) => None,
            (Revision::Tag(name), _) => annotated_tag(repo, &outcome, name, commit.id)?,
            _ => None,
        };
        let revision = commit.id.to_hex().to_string();
        let snapshot = read_project(repo, &commit, path, &revision)?;
        return Ok(Fetched {
            revision,
            commit: commit.data.clone(),
            tag,
            descends,
            pinned,
            snapshot,
        });
    }
}

/// The local ref a revision's remote ref is fetched into (`None` for a commit).
fn local_ref(rev: &Revision) -> Option<String> {
    match rev {
        Revision::Default => Some("refs/remotes/origin/HEAD".into()),
        Revision::Branch(b) => Some(full_ref("refs/heads/", b)),
        Revision::Tag(t) => Some(full_ref("refs/tags/", t)),
        Revision::Commit(_) => None,
    }
}

/// The refspec that fetches `rev` (forced: a force-pushed branch or a moved tag is followed).
fn refspec(rev: &Revision) -> String {
    match rev {
        // A commit a server will not serve by id is looked up in the default branch's history.
        Revision::Default | Revision::Commit(_) => "+HEAD:refs/remotes/origin/HEAD".into(),
        Revision::Branch(_) | Revision::Tag(_) => {
            let name = local_ref(rev).unwrap_or_default();
            format!("+{name}:{name}")
        }
    }
}

/// Asks the server for its refs and fetches what of `rev` the cache lacks (nothing, and no pack
/// negotiation, when the ref did not move).
fn update(
    repo: &gix::Repository,
    url: &str,
    spec: &str,
    auth: &Auth,
    shallow: gix::remote::fetch::Shallow,
    interrupt: &AtomicBool,
) -> Result<gix::remote::fetch::Outcome, Failed> {
    let remote_err = |what: &str, e: &(dyn std::error::Error + 'static)| {
        Failed::Remote(err_chain(&format!("{what} {}", redact(url)), e))
    };
    let mut repo = repo.clone();
    let ssh_files = match auth {
        Auth::Ssh { key, known_hosts } => {
            if known_hosts.trim().is_empty() {
                return Err(Failed::Remote(GitError(
                    "the SSH credentials have no known_hosts: add the server's host key (ssh-keyscan HOST) under the key known_hosts".into(),
                )));
            }
            let files = SshFiles::write(key, known_hosts)?;
            let mut config = repo.config_snapshot_mut();
            config
                .append_config(
                    [format!("core.sshCommand={}", files.command()).as_str()],
                    gix::config::Source::Api,
                )
                .map_err(|e| err("configuring ssh", e))?;
            config.commit().map_err(|e| err("configuring ssh", e))?;
            Some(files)
        }
        Auth::None if is_ssh(url) => {
            return Err(Failed::Remote(GitError(format!(
                "{}: an SSH source needs credentials with the server's host key (known_hosts, and an identity); lockstep never trusts an unknown host key",
                redact(url)
            ))));
        }
        _ => None,
    };
    let remote = repo
        .remote_at_without_url_rewrite(url)
        .map_err(|e| Failed::Remote(err(&redact(url), e)))?
        .with_refspecs([spec], gix::remote::Direction::Fetch)
        .map_err(|e| err("the refspec", e))?
        .with_fetch_tags(gix::remote::fetch::Tags::None);
    let mut connection = remote
        .connect(gix::remote::Direction::Fetch)
        .map_err(|e| remote_err("connecting to", &e))?;
    if let Auth::Basic { username, password } = auth {
        connection.set_credentials(basic_credentials(username, password, url));
    }
    let prepare = connection
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(|e| remote_err("fetching", &e))?;
    let outcome = prepare
        .with_shallow(shallow)
        .receive(gix::progress::Discard, interrupt)
        .map_err(|e| Failed::Local(err_chain(&format!("fetching {}", redact(url)), &e)))?;
    drop(ssh_files);
    Ok(outcome)
}

/// The commit `rev` names in the cache after [`update`].
fn tip_of<'r>(repo: &'r gix::Repository, rev: &Revision) -> Result<gix::Commit<'r>, GitError> {
    let id = match (rev, local_ref(rev)) {
        (Revision::Commit(id), _) => {
            gix::ObjectId::from_hex(id.as_bytes()).map_err(|e| err(&format!("commit {id}"), e))?
        }
        (_, Some(name)) => repo
            .find_reference(name.as_str())
            .map_err(|e| err(&format!("reading {name} after the fetch"), e))?
            .peel_to_id()
            .map_err(|e| err(&format!("reading {name} after the fetch"), e))?
            .detach(),
        (_, None) => return Err(GitError("no ref to read".into())),
    };
    repo.find_commit(id).map_err(|e| match rev {
        Revision::Commit(c) => err(&format!("commit {c} is not on the default branch"), e),
        _ => err(&format!("reading commit {id}"), e),
    })
}

/// How a message names the ref a revision follows.
fn describe(rev: &Revision) -> String {
    match rev {
        Revision::Default => "the default branch".into(),
        Revision::Branch(b) => format!("branch {b}"),
        Revision::Tag(t) => format!("tag {t}"),
        Revision::Commit(c) => format!("commit {c}"),
    }
}

/// What a search of a commit's history for an earlier commit found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ancestry {
    /// The earlier commit is the commit or one of its ancestors.
    Found,
    /// The whole history was searched without finding it.
    NotFound,
    /// Not found in the part of the history that was fetched (a shallow clone).
    Truncated,
}

/// Searches the history of `commit` for `earlier`.
fn ancestry(
    repo: &gix::Repository,
    commit: gix::ObjectId,
    earlier: gix::ObjectId,
    interrupt: &AtomicBool,
) -> Result<Ancestry, GitError> {
    if commit == earlier {
        return Ok(Ancestry::Found);
    }
    let walk = repo
        .rev_walk([commit])
        .all()
        .map_err(|e| err("walking the history", e))?;
    for info in walk {
        if interrupt.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(GitError("walking the history: interrupted".into()));
        }
        let info = info.map_err(|e| err("walking the history", e))?;
        if info.id == earlier {
            return Ok(Ancestry::Found);
        }
    }
    let shallow = repo
        .is_shallow()
        .map_err(|e| err("reading the shallow boundary", e))?;
    Ok(if shallow {
        Ancestry::Truncated
    } else {
        Ancestry::NotFound
    })
}

/// The raw object of the annotated tag `refs/tags/<name>` as the fetch found it, checked to point
/// at `commit` (so its signature vouches for what is read); `None` for a lightweight tag.
fn annotated_tag(
    repo: &gix::Repository,
    outcome: &gix::remote::fetch::Outcome,
    name: &str,
    commit: gix::ObjectId,
) -> Result<Option<Vec<u8>>, GitError> {
    let full = full_ref("refs/tags/", name);
    let tag_id = outcome.ref_map.remote_refs.iter().find_map(|r| match r {
        gix::protocol::handshake::Ref::Peeled {
            full_ref_name, tag, ..
        } if full_ref_name == full.as_str() => Some(*tag),
        _ => None,
    });
    let Some(tag_id) = tag_id else {
        return Ok(None);
    };
    let object = repo
        .find_object(tag_id)
        .map_err(|e| err(&format!("reading tag {name}"), e))?;
    if object.kind != gix::object::Kind::Tag {
        return Ok(None);
    }
    let data = object.data.clone();
    let target = data
        .strip_prefix(b"object ")
        .and_then(|rest| rest.split(|&b| b == b'\n').next())
        .and_then(|hex| gix::ObjectId::from_hex(hex).ok());
    if target != Some(commit) {
        return Err(GitError(format!(
            "tag {name} does not point at the commit {commit} it was read as (a nested tag, or the server's answer is inconsistent)"
        )));
    }
    Ok(Some(data))
}

/// The credential helper of HTTP(S) basic authentication: the login, only to the source's own
/// host (a redirect elsewhere gets nothing).
fn basic_credentials(
    username: &str,
    password: &zeroize::Zeroizing<String>,
    url: &str,
) -> impl FnMut(
    gix::credentials::helper::Action,
) -> gix::Result<Option<gix::credentials::protocol::Outcome>>
+ 'static {
    let (username, password) = (username.to_string(), password.clone());
    let host = host_of(url);
    move |action| match action {
        gix::credentials::helper::Action::Get(ctx) if ctx.host.is_some() && ctx.host != host => {
            Ok(None)
        }
        gix::credentials::helper::Action::Get(ctx) => {
            Ok(Some(gix::credentials::protocol::Outcome {
                identity: gix::sec::identity::Account {
                    username: username.clone(),
                    password: password.to_string(),
                    oauth_refresh_token: None,
                },
                next: ctx.into(),
            }))
        }
        _ => Ok(None),
    }
}

/// The `host[:port]` of an HTTP(S) URL, as Git's credential protocol names it.
fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    Some(host.to_string())
}

/// Where a symbolic link at `link` (a project path) points, as a project path; `None` when the
/// target is absolute or leaves the project.
fn link_target(link: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let dir = link.rsplit_once('/').map_or("", |(dir, _)| dir);
    lockstep_core::snapshot::join_path(dir, target).filter(|p| !p.is_empty())
}

/// `name` under `prefix`, unless it already is a full name there.
fn full_ref(prefix: &str, name: &str) -> String {
    if name.starts_with(prefix) {
        name.to_string()
    } else {
        format!("{prefix}{name}")
    }
}

/// Whether `url` is reached over SSH (`ssh://…` or scp-like `user@host:path`).
pub fn is_ssh(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    if ["ssh://", "git+ssh://", "ssh+git://"]
        .iter()
        .any(|p| lower.starts_with(p))
    {
        return true;
    }
    !lower.contains("://")
        && !lower.starts_with('/')
        && !lower.starts_with('.')
        && url
            .split_once(':')
            .is_some_and(|(host, _)| !host.is_empty() && !host.contains('/'))
}

/// A commit of a local repository, with the project as it is there.
pub struct LocalCommit {
    /// The commit id (hex).
    pub id: String,
    /// The first line of its message.
    pub subject: String,
    /// The project's files at that commit.
    pub snapshot: Snapshot,
}

/// Reads the project in `dir` (inside the work tree of a local repository) as it is at `rev`
/// (what `git rev-parse` takes: `HEAD`, `HEAD~1`, `origin/main`, a tag, a commit id), straight
/// from the object database, with the same bounds as a fetched project. Nothing is fetched.
pub fn read_local(dir: &Path, rev: &str) -> Result<LocalCommit, GitError> {
    let repo = gix::discover(dir).map_err(|e| {
        err(
            &format!("{} is not inside a Git repository", dir.display()),
            e,
        )
    })?;
    let root = repo.workdir().ok_or_else(|| {
        GitError(format!(
            "{}: the repository is bare; run this in a checkout",
            dir.display()
        ))
    })?;
    let canonical = |p: &Path| {
        p.canonicalize()
            .map_err(|e| err(&format!("reading {}", p.display()), e))
    };
    let (dir_abs, root_abs) = (canonical(dir)?, canonical(root)?);
    let path = dir_abs
        .strip_prefix(&root_abs)
        .map_err(|_| {
            GitError(format!(
                "{} is not inside the work tree {}",
                dir.display(),
                root.display()
            ))
        })?
        .to_str()
        .ok_or_else(|| GitError(format!("{}: the path is not UTF-8", dir.display())))?
        .replace(std::path::MAIN_SEPARATOR, "/");
    let id = repo
        .rev_parse_single(rev)
        .map_err(|e| err(&format!("revision {rev:?}"), e))?;
    let commit = id
        .object()
        .map_err(|e| err(&format!("revision {rev:?}"), e))?
        .peel_to_commit()
        .map_err(|e| err(&format!("revision {rev:?} is not a commit"), e))?;
    let subject = commit
        .message()
        .map(|m| m.summary().to_string())
        .unwrap_or_default();
    let snapshot = read_project(&repo, &commit, &path, rev)?;
    Ok(LocalCommit {
        id: commit.id.to_string(),
        subject,
        snapshot,
    })
}

/// The project at `path` of the commit's tree, straight from the object database: only project
/// entries, no hidden files, no file over [`MAX_FILE_BYTES`].
fn read_project(
    repo: &gix::Repository,
    commit: &gix::Commit<'_>,
    path: &str,
    revision: &str,
) -> Result<Snapshot, GitError> {
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
    // lockstep.yaml says whether every top-level entry is read (a bounded read: it is read again
    // with the rest).
    let project_file = tree
        .lookup_entry_by_path(PROJECT_ENTRIES[0])
        .ok()
        .flatten()
        .map(|e| e.object_id())
        .filter(|oid| {
            repo.find_header(*oid)
                .is_ok_and(|h| h.size() <= MAX_FILE_BYTES)
        })
        .and_then(|oid| repo.find_blob(oid).ok())
        .map(|b| b.data.clone())
        .unwrap_or_default();
    let mut walk = Walk {
        repo,
        root: tree.clone(),
        files: Vec::new(),
        entries: 0,
        everything: reads_everything(&project_file),
    };
    walk.tree(tree, "", 0)?;
    let files = walk.files;
    let mut snapshot = Snapshot::new();
    for (file, oid) in files {
        // Sizes from the object header, before anything is read: a tree may point many times at
        // one big blob that packs to almost nothing.
        let size = repo
            .find_header(oid)
            .map_err(|e| err(&format!("reading {file}"), e))?
            .size();
        if size > MAX_FILE_BYTES {
            return Err(GitError(format!(
                "{file}: {size} bytes is more than the {MAX_FILE_BYTES} a project file may have"
            )));
        }
        if !snapshot.has_room_for(size) {
            return Err(GitError(format!(
                "the project is bigger than lockstep reads ({MAX_PROJECT_FILES} files, {MAX_PROJECT_BYTES} bytes in all), reached at {file}"
            )));
        }
        let blob = repo
            .find_blob(oid)
            .map_err(|e| err(&format!("reading {file}"), e))?;
        snapshot.insert(file, blob.data.clone());
    }
    Ok(snapshot)
}

/// Tree entries a project walk may visit (files, directories and links, project entries only).
pub const MAX_TREE_ENTRIES: usize = 2 * MAX_PROJECT_FILES;

/// Deepest directory nesting a project walk descends.
pub const MAX_TREE_DEPTH: usize = 64;

/// Bytes of one tree object or symbolic link read during the walk (a tree of 100,000 entries is
/// about 4 MB).
const MAX_TREE_OBJECT_BYTES: u64 = 4 * 1024 * 1024;

/// The walk over a project's tree: only the top-level entries lockstep reads are entered, hidden
/// entries are skipped, and symbolic links are looked up where they point (inside the project) —
/// so a huge repository around a small project costs only the project.
struct Walk<'r> {
    repo: &'r gix::Repository,
    root: gix::Tree<'r>,
    files: Vec<(String, gix::ObjectId)>,
    entries: usize,
    /// Every top-level entry, not only the project entries (see `reads_everything`).
    everything: bool,
}

impl<'r> Walk<'r> {
    /// Every file under `tree` (at project path `prefix`), links followed.
    fn tree(&mut self, tree: gix::Tree<'r>, prefix: &str, depth: usize) -> Result<(), GitError> {
        if depth > MAX_TREE_DEPTH {
            return Err(GitError(format!(
                "{prefix}: directories nested more than {MAX_TREE_DEPTH} deep"
            )));
        }
        for entry in tree.iter() {
            let entry = entry.map_err(|e| err(&format!("reading the tree at {prefix:?}"), e))?;
            let name = entry.filename().to_string();
            if name.starts_with('.') || (prefix.is_empty() && !reads_entry(&name, self.everything))
            {
                continue;
            }
            self.entries += 1;
            if self.entries > MAX_TREE_ENTRIES {
                return Err(GitError(format!(
                    "the project has more than {MAX_TREE_ENTRIES} files and directories (reached at {prefix}/{name})"
                )));
            }
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let mode = entry.mode();
            if mode.is_tree() {
                let sub = self.find_tree(entry.object_id(), &path)?;
                self.tree(sub, &path, depth + 1)?;
            } else if mode.is_blob() {
                self.files.push((path, entry.object_id()));
            } else if mode.is_link() {
                self.link(&path, entry.object_id(), depth)?;
            }
        }
        Ok(())
    }

    /// A symbolic link: the file or directory it points to inside the project, as if it were at
    /// `path` (a link leaving the project, or to another link, is not part of it, as for a directory).
    fn link(&mut self, path: &str, oid: gix::ObjectId, depth: usize) -> Result<(), GitError> {
        let target = self.read_small(oid, path)?;
        let Some(target) = link_target(path, &String::from_utf8_lossy(&target)) else {
            return Ok(());
        };
        let Some(entry) = self
            .root
            .lookup_entry_by_path(&target)
            .map_err(|e| err(&format!("following {path}"), e))?
        else {
            return Ok(());
        };
        let mode = entry.mode();
        if mode.is_blob() {
            self.files.push((path.to_string(), entry.object_id()));
        } else if mode.is_tree() {
            let sub = self.find_tree(entry.object_id(), path)?;
            self.tree(sub, path, depth + 1)?;
        }
        Ok(())
    }

    fn find_tree(&self, oid: gix::ObjectId, path: &str) -> Result<gix::Tree<'r>, GitError> {
        self.check_size(oid, path)?;
        self.repo
            .find_tree(oid)
            .map_err(|e| err(&format!("reading {path}"), e))
    }

    fn read_small(&self, oid: gix::ObjectId, path: &str) -> Result<Vec<u8>, GitError> {
        self.check_size(oid, path)?;
        let blob = self
            .repo
            .find_blob(oid)
            .map_err(|e| err(&format!("reading {path}"), e))?;
        Ok(blob.data.clone())
    }

    /// Refuses an object too big for its role before it is read.
    fn check_size(&self, oid: gix::ObjectId, path: &str) -> Result<(), GitError> {
        let size = self
            .repo
            .find_header(oid)
            .map_err(|e| err(&format!("reading {path}"), e))?
            .size();
        if size > MAX_TREE_OBJECT_BYTES {
            return Err(GitError(format!(
                "{path}: a directory or link of {size} bytes is more than lockstep reads ({MAX_TREE_OBJECT_BYTES})"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_sweep_removes_only_unused_caches_that_no_fetch_holds() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = |name: &str| {
            let d = root.path().join(name);
            std::fs::create_dir_all(d.join("objects")).expect("mkdir");
            d
        };
        let (used, unused, busy) = (dir("used.git"), dir("unused.git"), dir("busy.git"));
        std::fs::create_dir_all(root.path().join("other")).expect("mkdir");
        let held = super::CacheLock::take(&busy).expect("lock");
        let in_use = std::collections::HashSet::from([used.clone()]);
        assert_eq!(super::sweep(root.path(), &in_use), vec![unused.clone()]);
        assert!(used.is_dir() && busy.is_dir() && !unused.exists());
        assert!(!unused.with_extension("lock").exists());
        drop(held);
        assert_eq!(super::sweep(root.path(), &in_use), vec![busy.clone()]);
        assert!(root.path().join("other").is_dir());
    }

    use super::*;

    #[test]
    fn links_resolve_inside_the_project_only() {
        let cases = [
            (
                "environments/prod/values.yaml",
                "../dev/values.yaml",
                Some("environments/dev/values.yaml"),
            ),
            (
                "values.yaml",
                "shared/values.yaml",
                Some("shared/values.yaml"),
            ),
            ("templates/x", "./y/", Some("templates/y")),
            ("values.yaml", "../outside.yaml", None),
            ("templates/a.yaml", "/etc/passwd", None),
        ];
        for (link, target, expected) in cases {
            assert_eq!(
                link_target(link, target).as_deref(),
                expected,
                "{link} -> {target}"
            );
        }
    }

    #[test]
    fn ssh_urls_are_recognised() {
        for url in [
            "ssh://git@host/r.git",
            "git@host:org/r.git",
            "GIT+SSH://h/r",
        ] {
            assert!(is_ssh(url), "{url}");
        }
        for url in ["https://host/r.git", "file:///tmp/r", "/tmp/r", "./r", "C"] {
            assert!(!is_ssh(url), "{url}");
        }
    }

    #[test]
    fn credentials_go_to_the_sources_own_host() {
        assert_eq!(
            host_of("https://git.example.com/shop.git").as_deref(),
            Some("git.example.com")
        );
        assert_eq!(
            host_of("https://deploy:t@127.0.0.1:8443/a/b.git").as_deref(),
            Some("127.0.0.1:8443")
        );
        assert_eq!(host_of("git@host:shop.git"), None);
    }

    #[test]
    fn passwords_in_urls_are_hidden_and_everything_else_is_kept() {
        assert_eq!(
            redact("https://deploy:t0ken@git.example.com/shop.git"),
            "https://deploy:***@git.example.com/shop.git"
        );
        assert_eq!(
            redact("https://git.example.com/a@b.git"),
            "https://git.example.com/a@b.git"
        );
        assert_eq!(
            redact("ssh://git@git.example.com/shop.git"),
            "ssh://git@git.example.com/shop.git"
        );
        assert_eq!(redact("git@host:shop.git"), "git@host:shop.git");
    }
}
