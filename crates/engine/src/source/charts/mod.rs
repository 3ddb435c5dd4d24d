//! Repository and OCI charts: `lockstep charts update` finds each chart's archive and writes its
//! digest to `lockstep.lock`; before a render, [`gather`] takes every locked archive the
//! environment needs from a content-addressed cache (or fetches it by its locked URL or digest)
//! and refuses any whose SHA-256 differs from the lock. With the archives cached, a render needs
//! no network.
//!
//! The CLI caches archives on disk (`$LOCKSTEP_CACHE_DIR/charts`, charts hold no secret); the
//! controller keeps them in memory, where an archive fetched with a tenant's credentials serves
//! only that tenant.

pub mod credentials;
pub mod remote;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use lockstep_core::snapshot::Snapshot;
use lockstep_render::Diagnostic;
use lockstep_render::lock::{self, Archives, LOCK_FILE, Lock, Locked};
use lockstep_render::project::{Chart, PROJECT_FILE, Project, Source};

pub use credentials::{Credentials, Login};
use remote::Http;

/// The environment variable naming the CLI's cache directory.
pub const CACHE_ENV: &str = "LOCKSTEP_CACHE_DIR";

/// Where chart archives are kept between renders.
pub struct Store {
    /// A directory of `sha256/<hex>.tgz` files (the CLI), or none (memory only).
    dir: Option<PathBuf>,
    /// Archives in memory, by scope and digest, with their total size bound.
    memory: Mutex<Memory>,
    /// Whether `http://` repositories may be read (never with credentials).
    allow_http: bool,
}

/// The in-memory part of a [`Store`].
#[derive(Default)]
struct Memory {
    archives: BTreeMap<(String, String), Arc<[u8]>>,
    order: Vec<(String, String)>,
    bytes: usize,
    limit: usize,
}

/// What `lockstep charts update` changed.
#[derive(Debug)]
pub struct Updated {
    /// The new lock.
    pub lock: Lock,
    /// One line per release whose entry is new or changed (`web: 2.0.1 sha256:…`).
    pub changes: Vec<String>,
}

impl Store {
    /// A cache on disk under `dir` (made when first written), keeping nothing in memory beyond a
    /// run.
    pub fn on_disk(dir: PathBuf) -> Store {
        Store {
            dir: Some(dir),
            memory: Mutex::new(Memory {
                limit: 256 * 1024 * 1024,
                ..Memory::default()
            }),
            allow_http: true,
        }
    }

    /// A cache in memory only, of at most `limit` bytes (oldest archives go first).
    pub fn in_memory(limit: usize, allow_http: bool) -> Store {
        Store {
            dir: None,
            memory: Mutex::new(Memory {
                limit,
                ..Memory::default()
            }),
            allow_http,
        }
    }

    /// The CLI's cache directory: `$LOCKSTEP_CACHE_DIR/charts`, else
    /// `$XDG_CACHE_HOME/lockstep/charts`, else `~/.cache/lockstep/charts`.
    pub fn default_dir() -> PathBuf {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        var(CACHE_ENV)
            .or_else(|| var("XDG_CACHE_HOME").map(|p| p.join("lockstep")))
            .or_else(|| var("HOME").map(|p| p.join(".cache/lockstep")))
            .unwrap_or_else(|| PathBuf::from(".lockstep-cache"))
            .join("charts")
    }

    fn path_of(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        Some(self.dir.as_ref()?.join("sha256").join(format!("{hex}.tgz")))
    }

    /// The archive with `digest` in this store, checked.
    fn cached(&self, scope: &str, digest: &str) -> Option<Arc<[u8]>> {
        let key = (scope.to_string(), digest.to_string());
        if let Some(found) = self.memory.lock().ok()?.archives.get(&key) {
            return Some(found.clone());
        }
        let path = self.path_of(digest)?;
        let bytes = std::fs::read(&path).ok()?;
        if lock::digest_of(&bytes) != digest {
            // A damaged or altered cache entry is fetched again.
            let _ = std::fs::remove_file(&path);
            return None;
        }
        Some(Arc::from(bytes))
    }

    /// Keeps an archive (already checked against `digest`).
    fn keep(&self, scope: &str, digest: &str, bytes: &Arc<[u8]>) -> Result<(), String> {
        if let Some(path) = self.path_of(digest) {
            let dir = path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let mut suffix = [0u8; 6];
            let _ = getrandom::fill(&mut suffix);
            let tmp = dir.join(format!(".{}.tmp", hex::encode(suffix)));
            std::fs::write(&tmp, bytes)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    format!("{}: {e}", path.display())
                })?;
            return Ok(());
        }
        let Ok(mut memory) = self.memory.lock() else {
            return Ok(());
        };
        let key = (scope.to_string(), digest.to_string());
        if memory.archives.contains_key(&key) || bytes.len() > memory.limit {
            return Ok(());
        }
        while memory.bytes + bytes.len() > memory.limit && !memory.order.is_empty() {
            let oldest = memory.order.remove(0);
            if let Some(gone) = memory.archives.remove(&oldest) {
                memory.bytes -= gone.len();
            }
        }
        memory.bytes += bytes.len();
        memory.order.push(key.clone());
        memory.archives.insert(key, bytes.clone());
        Ok(())
    }
}

/// A fetch problem of one release, as a diagnostic at the lock file.
fn problem(release: &str, message: impl Into<String>, help: &str) -> Diagnostic {
    Diagnostic::new(format!("chart {release}: {}", message.into()))
        .in_file(LOCK_FILE)
        .with_help(help.to_string())
}

/// The project and lock of a snapshot; `None` when either does not parse (the render reports it).
fn project_and_lock(snapshot: &Snapshot) -> Option<(Project, Lock)> {
    parse_both(snapshot).ok()
}

/// Whether the project names any repository or OCI chart (so a render needs archives).
pub fn needs_archives(snapshot: &Snapshot) -> bool {
    project_and_lock(snapshot).is_some_and(|(p, _)| p.charts.values().any(Chart::is_remote))
}

/// Every locked archive that environment `env` renders, from `store` or fetched (and then kept):
/// each checked against its digest. Entries missing from the lock or not matching lockstep.yaml
/// are left to the render, which names them. `scope` keeps archives fetched with credentials
/// apart in a shared memory store (the Sync's namespace; empty for the CLI).
pub fn gather(
    snapshot: &Snapshot,
    env: &str,
    store: &Store,
    credentials: &Credentials,
    scope: &str,
) -> Result<Archives, Diagnostic> {
    let mut archives = Archives::default();
    let Some((project, lock)) = project_and_lock(snapshot) else {
        return Ok(archives);
    };
    let http = OnceLock::new();
    for (release, chart) in project.charts.iter().filter(|(_, c)| c.applies_to(env)) {
        let Ok(entry) = lock.entry(release, chart) else {
            continue;
        };
        let bytes = archive(release, chart, entry, store, credentials, scope, &http)?;
        archives.insert(entry.digest.clone(), bytes);
    }
    Ok(archives)
}

/// `lockstep charts pull`: every locked archive of the project, into `store`. Returns how many
/// were fetched (the others were cached).
pub fn pull(
    snapshot: &Snapshot,
    store: &Store,
    credentials: &Credentials,
) -> Result<(usize, usize), Diagnostic> {
    let (project, lock) = parse_both(snapshot)?;
    let http = OnceLock::new();
    let (mut fetched, mut cached) = (0, 0);
    for (release, chart) in project.charts.iter().filter(|(_, c)| c.is_remote()) {
        let entry = lock.entry(release, chart).map_err(|why| {
            problem(
                release,
                why,
                "the lock file pins each repository and OCI chart by digest",
            )
        })?;
        if store.cached("", &entry.digest).is_some() {
            cached += 1;
            continue;
        }
        archive(release, chart, entry, store, credentials, "", &http)?;
        fetched += 1;
    }
    Ok((fetched, cached))
}

/// The project and lock of a snapshot, or the diagnostic of whichever does not parse.
fn parse_both(snapshot: &Snapshot) -> Result<(Project, Lock), Diagnostic> {
    let text = snapshot
        .get(PROJECT_FILE)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .ok_or_else(|| {
            Diagnostic::new(format!("{PROJECT_FILE} not found"))
                .with_help("run this in a project directory (or name it)")
        })?;
    let project = Project::parse(&text)?;
    let lock_text = snapshot
        .get(LOCK_FILE)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    Ok((project, Lock::parse(&lock_text)?))
}

/// `lockstep charts update [RELEASE…]`: finds every repository and OCI chart (or only those
/// named) at its version, fetches its archive into `store`, and returns the lock with their
/// digests (entries of releases no longer in the project are dropped).
pub fn update(
    snapshot: &Snapshot,
    only: &[String],
    store: &Store,
    credentials: &Credentials,
) -> Result<Updated, Diagnostic> {
    let (project, old) = parse_both(snapshot)?;
    for name in only {
        match project.charts.get(name) {
            Some(c) if c.is_remote() => {}
            Some(_) => {
                return Err(problem(
                    name,
                    "is a chart directory of the project; only repository and OCI charts are locked",
                    "name a release with repo: or an oci:// chart",
                ));
            }
            None => {
                return Err(Diagnostic::new(format!(
                    "no chart release {name:?} in {PROJECT_FILE}"
                ))
                .in_file(PROJECT_FILE)
                .with_help("name a release under charts:"));
            }
        }
    }
    let http = OnceLock::new();
    let client = || client_of(&http, credentials);
    let mut lock = Lock::default();
    let mut changes = Vec::new();
    for (release, chart) in project.charts.iter().filter(|(_, c)| c.is_remote()) {
        let keep_old = !only.is_empty() && !only.contains(release);
        if keep_old && let Ok(entry) = old.entry(release, chart) {
            lock.charts.insert(release.clone(), entry.clone());
            continue;
        }
        let fail = |why: String| {
            problem(
                release,
                why,
                "check the chart's name, version and source in lockstep.yaml, and the credentials for its host",
            )
        };
        let (source, name, found, login) = match chart.source() {
            Source::Dir(_) => continue,
            Source::Repo { url, name, version } => {
                check_scheme(store, url, credentials.for_repo(url)).map_err(fail)?;
                let login = credentials.for_repo(url);
                let found = client()
                    .map_err(fail)?
                    .find_in_repo(url, name, version, login)
                    .map_err(fail)?;
                // Credentials go to the archive's host only if it is the repository's.
                let login =
                    login.filter(|_| credentials::host_of(&found.url) == credentials::host_of(url));
                (url.to_string(), name.to_string(), found, login)
            }
            Source::Oci { reference, version } => {
                let (host, _) = remote::split_reference(reference).map_err(fail)?;
                let login = credentials.for_host(host);
                let found = client()
                    .map_err(fail)?
                    .find_in_registry(reference, version, login)
                    .map_err(fail)?;
                let name = reference.rsplit('/').next().unwrap_or_default().to_string();
                (reference.to_string(), name, found, login)
            }
        };
        let bytes = match &chart.source() {
            Source::Oci { reference, .. } => {
                let digest = found.digest.clone().unwrap_or_default();
                client().map_err(fail)?.blob(reference, &digest, login)
            }
            _ => client().map_err(fail)?.archive(&found.url, login),
        }
        .map_err(fail)?;
        let digest = lock::digest_of(&bytes);
        if let Some(said) = &found.digest
            && said != &digest
        {
            return Err(fail(format!(
                "the archive at {} has digest {digest}, but its source lists {said}: it was altered or damaged",
                found.url
            )));
        }
        let bytes: Arc<[u8]> = Arc::from(bytes);
        store
            .keep("", &digest, &bytes)
            .map_err(|e| fail(format!("caching the chart: {e}")))?;
        let entry = Locked {
            source,
            chart: name,
            version: chart.version.clone().unwrap_or_default(),
            digest,
            url: matches!(chart.source(), Source::Repo { .. }).then(|| found.url.clone()),
        };
        if old.charts.get(release) != Some(&entry) {
            changes.push(format!("{release}: {} {}", chart.label(), entry.digest));
        }
        lock.charts.insert(release.clone(), entry);
    }
    for release in old.charts.keys().filter(|r| !lock.charts.contains_key(*r)) {
        changes.push(format!("{release}: removed"));
    }
    Ok(Updated { lock, changes })
}

/// The shared client, made on first use.
fn client_of<'a>(
    http: &'a OnceLock<Result<Http, String>>,
    credentials: &Credentials,
) -> Result<&'a Http, String> {
    http.get_or_init(|| Http::new(&credentials.roots))
        .as_ref()
        .map_err(Clone::clone)
}

/// Refuses `http://` where the store does not allow it, and credentials over it anywhere.
fn check_scheme(store: &Store, url: &str, login: Option<&Login>) -> Result<(), String> {
    if !url.starts_with("http://") {
        return Ok(());
    }
    if !store.allow_http {
        return Err(format!(
            "{url}: plain http:// chart repositories are not allowed here; serve the repository over https://"
        ));
    }
    if login.is_some() {
        return Err(format!(
            "{url}: credentials are never sent over plain http://; serve the repository over https://"
        ));
    }
    Ok(())
}

/// One locked archive: from the store, else fetched by its URL (repositories) or digest (OCI)
/// and checked.
fn archive(
    release: &str,
    chart: &Chart,
    entry: &Locked,
    store: &Store,
    credentials: &Credentials,
    scope: &str,
    http: &OnceLock<Result<Http, String>>,
) -> Result<Arc<[u8]>, Diagnostic> {
    let fail = |why: String| {
        problem(
            release,
            why,
            "fetching a locked chart needs its source; `lockstep charts pull` fills the cache for offline renders",
        )
    };
    let login = match chart.source() {
        Source::Dir(_) => None,
        Source::Repo { url, .. } => {
            let login = credentials.for_repo(url);
            check_scheme(store, url, login).map_err(fail)?;
            let archive_host = entry.url.as_deref().and_then(credentials::host_of);
            login.filter(|_| archive_host == credentials::host_of(url))
        }
        Source::Oci { reference, .. } => remote::split_reference(reference)
            .ok()
            .and_then(|(host, _)| credentials.for_host(host)),
    };
    let key = if login.is_some() { scope } else { "" };
    if let Some(bytes) = store.cached(key, &entry.digest) {
        return Ok(bytes);
    }
    let client = client_of(http, credentials).map_err(fail)?;
    let bytes = match (chart.source(), &entry.url) {
        (Source::Oci { reference, .. }, _) => client.blob(reference, &entry.digest, login),
        (_, Some(url)) => client.archive(url, login),
        (_, None) => Err(format!(
            "{LOCK_FILE} has no url for it: run `lockstep charts update {release}`"
        )),
    }
    .map_err(fail)?;
    let digest = lock::digest_of(&bytes);
    if digest != entry.digest {
        return Err(problem(
            release,
            format!(
                "the fetched archive of {} has digest {digest}, but {LOCK_FILE} pins {}: refused",
                chart.label(),
                entry.digest
            ),
            "the chart at its source is not the one reviewed; if the change is expected, run `lockstep charts update` and review the new digest",
        ));
    }
    let bytes: Arc<[u8]> = Arc::from(bytes);
    store
        .keep(key, &entry.digest, &bytes)
        .map_err(|e| fail(format!("caching the chart: {e}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archive_fetched_with_a_tenants_login_serves_only_that_tenant() {
        let store = Store::in_memory(1024, false);
        let bytes: Arc<[u8]> = Arc::from(&b"private chart"[..]);
        let digest = lock::digest_of(&bytes);
        store.keep("team-a", &digest, &bytes).expect("kept");
        assert!(store.cached("team-a", &digest).is_some());
        assert!(
            store.cached("", &digest).is_none(),
            "not for anonymous fetches"
        );
        assert!(
            store.cached("team-b", &digest).is_none(),
            "not for another tenant"
        );
    }

    #[test]
    fn the_memory_store_is_bounded_oldest_first() {
        let store = Store::in_memory(20, false);
        let a: Arc<[u8]> = Arc::from(&[1u8; 12][..]);
        let b: Arc<[u8]> = Arc::from(&[2u8; 12][..]);
        let (da, db) = (lock::digest_of(&a), lock::digest_of(&b));
        store.keep("", &da, &a).expect("kept");
        store.keep("", &db, &b).expect("kept");
        assert!(store.cached("", &da).is_none(), "the oldest went");
        assert!(store.cached("", &db).is_some());
        let big: Arc<[u8]> = Arc::from(&[3u8; 21][..]);
        store
            .keep("", &lock::digest_of(&big), &big)
            .expect("not kept, no error");
        assert!(store.cached("", &lock::digest_of(&big)).is_none());
    }
}
