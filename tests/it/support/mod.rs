//! Test harness: the real peers (sops, age, kube-apiserver…) and one real control plane per test binary.
//!
//! - Peers are found in `$LOCKSTEP_PEERS_BIN`, else in the directory `scripts/peers --dir` names.
//! - The control plane is the one `$LOCKSTEP_TEST_KUBECONFIG` points at (as `scripts/test` sets it from
//!   `scripts/cluster up`), else one started lazily with `scripts/cluster up --watch-pid <this process>`,
//!   which stops itself when the test binary exits. The plain `KUBECONFIG` is deliberately ignored so a
//!   test run can never create namespaces in a user's real cluster.
//! - When a peer or the control plane is missing, tests fail under `CI=true` and are skipped (with a
//!   message on stderr) otherwise.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig, NamedAuthInfo};
use kube::{Client, Config};

pub mod gitserver;
pub mod gnupg;

/// The repository root (where `scripts/` lives).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// True when running under CI: missing peers then fail tests instead of skipping them.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Returns `Some(value)`, or handles a missing prerequisite: panics under CI, else prints a skip notice
/// and returns `None` (the caller returns early).
pub fn require<T>(what: &str, found: Result<T, String>) -> Option<T> {
    match found {
        Ok(v) => Some(v),
        Err(why) if in_ci() => panic!("{what} is required under CI=true: {why}"),
        Err(why) => {
            eprintln!("SKIPPED: {what} is not available ({why}); run scripts/test to get it");
            None
        }
    }
}

/// Unwraps a prerequisite or returns from the calling test (skip outside CI, fail under CI).
#[macro_export]
macro_rules! need {
    ($what:expr, $found:expr) => {
        match $crate::support::require($what, $found) {
            Some(v) => v,
            None => return,
        }
    };
}

// ------------------------------------------------------------------------------------------- peers

static PEERS_BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();

fn peers_bin() -> Result<PathBuf, String> {
    PEERS_BIN
        .get_or_init(|| {
            if let Some(dir) = std::env::var_os("LOCKSTEP_PEERS_BIN") {
                return Ok(PathBuf::from(dir));
            }
            let out = Command::new(repo_root().join("scripts/peers"))
                .arg("--dir")
                .output()
                .map_err(|e| format!("cannot run scripts/peers --dir: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "scripts/peers --dir failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
        .clone()
}

/// Path of a real peer binary (`sops`, `age`, `age-keygen`, `kube-apiserver`…), if it has been built.
pub fn peer(name: &str) -> Result<PathBuf, String> {
    built(peers_bin()?.join(name))
}

/// Path of a file the peers ship beside their binaries (`flux/crds.yaml`, `kwok/stages.yaml`),
/// if it has been built.
pub fn peer_share(rel: &str) -> Result<PathBuf, String> {
    let bin = peers_bin()?;
    built(bin.parent().unwrap_or(&bin).join("share").join(rel))
}

fn built(path: PathBuf) -> Result<PathBuf, String> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} does not exist; build it with scripts/peers",
            path.display()
        ))
    }
}

/// `text` with the ciphertext digests (`@0a1b2c3d`) of its sealed placeholders removed, for
/// comparing with placeholders written out in a test.
pub fn without_digests(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<sealed:") {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find('>').map_or(rest.len(), |i| i + 1);
        let placeholder = &rest[..end];
        match placeholder.find('@') {
            Some(at)
                if placeholder.len() >= at + 9
                    && placeholder[at + 1..at + 9]
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit()) =>
            {
                out.push_str(&placeholder[..at]);
                out.push_str(&placeholder[at + 9..]);
            }
            _ => out.push_str(placeholder),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A real Helm chart that `scripts/peers` unpacked from the Go module shipping it
/// (`metrics-server`, `external-dns`).
pub fn chart(name: &str) -> Result<PathBuf, String> {
    let bin = peers_bin()?;
    let path = bin
        .parent()
        .map(|root| root.join("charts").join(name))
        .unwrap_or_default();
    if path.join("Chart.yaml").is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} does not exist; fetch it with scripts/peers charts",
            path.display()
        ))
    }
}

/// Runs `bin` in `home` (also its HOME and XDG_CONFIG_HOME) with no sops/age key variables from the
/// caller's environment, plus `env`. Both lockstep and sops then see only what the test set up; running
/// in `home` matters because sops looks for `.sops.yaml` from the working directory.
pub fn run_isolated(
    bin: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    home: &Path,
) -> std::process::Output {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    for var in [
        "SOPS_AGE_KEY",
        "SOPS_AGE_KEY_FILE",
        "SOPS_AGE_KEY_CMD",
        "SOPS_AGE_SSH_PRIVATE_KEY_FILE",
        "SOPS_AGE_RECIPIENTS",
        "SOPS_CONFIG",
    ] {
        cmd.env_remove(var);
    }
    cmd.current_dir(home)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

/// Encrypts `plain` with the `lockstep` binary `bin` to `recipient` as if it were the file `rel`,
/// feeding the plaintext through stdin (it is never written in clear); returns the encrypted file.
pub fn encrypt_stdin(bin: &Path, recipient: &str, rel: &str, plain: &str) -> Vec<u8> {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = Command::new(bin)
        .args([
            "encrypt",
            "--age",
            recipient,
            "--filename-override",
            rel,
            "-",
        ])
        .env_remove("SOPS_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn encrypt");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(plain.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("encrypt");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Copies the bundled `examples/shop` project (everything but `lockstep.yaml`) into `dest`.
pub fn copy_shop(dest: &Path) {
    let shop = repo_root().join("examples/shop");
    for entry in [
        "values.yaml",
        "templates",
        "environments",
        "manifests",
        ".sops.yaml",
    ] {
        let ok = Command::new("cp")
            .arg("-r")
            .arg(shop.join(entry))
            .arg(dest)
            .status()
            .expect("cp")
            .success();
        assert!(ok, "copying {entry} of examples/shop");
    }
}

/// Every file under `dir`, recursively (empty when `dir` does not exist); for marker searches.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Watches directories while programs run, opening every file that appears there and keeping it
/// open, so what a program writes is still readable after it deletes the file: a proof of what
/// touched the disk, however briefly (a file rewritten in place is read as last written).
pub struct DiskWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    held: std::sync::Arc<std::sync::Mutex<Vec<(PathBuf, std::fs::File)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DiskWatch {
    /// Starts polling `dirs` (recursively, about every 0.2 ms); at most 20,000 files are held.
    pub fn start(dirs: &[&Path]) -> DiskWatch {
        use std::os::unix::fs::MetadataExt as _;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let roots: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
        let thread = std::thread::spawn({
            let (stop, held) = (stop.clone(), held.clone());
            move || {
                let mut seen = std::collections::HashSet::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for file in roots.iter().flat_map(|r| files_under(r)) {
                        let Ok(meta) = std::fs::symlink_metadata(&file) else {
                            continue;
                        };
                        if !meta.is_file() || !seen.insert((file.clone(), meta.ino())) {
                            continue;
                        }
                        let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
                        if held.len() < 20_000
                            && let Ok(open) = std::fs::File::open(&file)
                        {
                            held.push((file, open));
                        }
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
        DiskWatch {
            stop,
            held,
            thread: Some(thread),
        }
    }

    /// The files seen so far whose content holds `marker` (read through the open handle, so a file
    /// deleted since counts too).
    pub fn holding(&self, marker: &str) -> Vec<PathBuf> {
        use std::os::unix::fs::FileExt as _;
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.iter()
            .filter(|(_, file)| {
                let len = file.metadata().map(|m| m.len()).unwrap_or(0).min(1 << 24);
                let mut bytes = vec![0; usize::try_from(len).unwrap_or(0)];
                let read = file.read_at(&mut bytes, 0).unwrap_or(0);
                bytes[..read]
                    .windows(marker.len())
                    .any(|w| w == marker.as_bytes())
            })
            .map(|(path, _)| path.clone())
            .collect()
    }

    /// The paths of the files seen.
    pub fn paths(&self) -> Vec<PathBuf> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.iter().map(|(path, _)| path.clone()).collect()
    }
}

impl Drop for DiskWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Asserts that `out` failed and that its error output says every one of `needles`.
pub fn fails_saying(out: &std::process::Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected a failure: {err}");
    for n in needles {
        assert!(err.contains(n), "missing {n:?} in:\n{err}");
    }
}

/// Fails naming the file when any file under `dirs` holds `marker` (a plaintext secret).
pub fn assert_nowhere(marker: &str, dirs: &[&Path]) {
    for dir in dirs {
        for file in files_under(dir) {
            let bytes = std::fs::read(&file).unwrap_or_default();
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "{} holds the secret",
                file.display()
            );
        }
    }
}

// ------------------------------------------------------------------------------------------ cluster

/// A running control plane the tests may use.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Admin kubeconfig (client certificate in `system:masters`).
    pub kubeconfig: PathBuf,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// The control plane for this test binary: the given one, or one started on first use.
pub fn cluster() -> Result<Cluster, String> {
    CLUSTER.get_or_init(start_or_reuse).clone()
}

fn start_or_reuse() -> Result<Cluster, String> {
    if let Some(path) = std::env::var_os("LOCKSTEP_TEST_KUBECONFIG") {
        let kubeconfig = PathBuf::from(path);
        if !kubeconfig.is_file() {
            // Pointed at something that is not there: a configuration error, never a skip.
            panic!(
                "LOCKSTEP_TEST_KUBECONFIG={} does not exist",
                kubeconfig.display()
            );
        }
        return Ok(Cluster { kubeconfig });
    }
    for component in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
    ] {
        peer(component)?;
    }
    let state = std::env::temp_dir().join(format!("lockstep-test-cluster-{}", std::process::id()));
    let out = Command::new(repo_root().join("scripts/cluster"))
        .args(["up", "--watch-pid", &std::process::id().to_string()])
        .env("LOCKSTEP_CLUSTER_DIR", &state)
        .env("LOCKSTEP_PEERS_BIN", peers_bin()?)
        .output()
        .map_err(|e| format!("cannot run scripts/cluster: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    match last.strip_prefix("KUBECONFIG=") {
        // Peers exist but the control plane would not start: that is a failure everywhere.
        Some(path) if out.status.success() => Ok(Cluster {
            kubeconfig: PathBuf::from(path),
        }),
        _ => panic!(
            "scripts/cluster up failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn install_crypto_provider() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // Only one rustls provider is compiled in, but name it so nothing has to guess.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// A client for the kubeconfig at `path` (its current context).
pub async fn client_for(path: &Path) -> Result<Client, String> {
    install_crypto_provider();
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Client::try_from(config).map_err(|e| format!("{}: {e}", path.display()))
}

impl Cluster {
    /// An admin client; panics if the API server does not answer, since a kubeconfig was given.
    pub async fn admin(&self) -> Client {
        let client = client_for(&self.kubeconfig)
            .await
            .unwrap_or_else(|e| panic!("admin client: {e}"));
        client.apiserver_version().await.unwrap_or_else(|e| {
            panic!(
                "API server of {} does not answer: {e}",
                self.kubeconfig.display()
            )
        });
        client
    }

    /// Creates a fresh namespace for one test, named `<prefix>-<unique suffix>`.
    pub async fn namespace(&self, client: &Client, prefix: &str) -> String {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"lockstep.dev/test": "true"}}
        }))
        .expect("namespace object");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        name
    }

    /// Writes a kubeconfig whose user is ServiceAccount `namespace/name`, authenticated by a token from
    /// the TokenRequest API (the ServiceAccount is created if missing). Returns the file's path.
    pub async fn service_account_kubeconfig(
        &self,
        admin: &Client,
        namespace: &str,
        name: &str,
        dir: &Path,
    ) -> PathBuf {
        let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
        if sas
            .get_opt(name)
            .await
            .expect("look up service account")
            .is_none()
        {
            let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}
            }))
            .expect("service account object");
            sas.create(&PostParams::default(), &sa)
                .await
                .expect("create service account");
        }
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let token = sas
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .expect("TokenRequest")
            .status
            .expect("TokenRequest status")
            .token;

        let mut kubeconfig =
            Kubeconfig::read_from(&self.kubeconfig).expect("read admin kubeconfig");
        let user = format!("system:serviceaccount:{namespace}:{name}");
        kubeconfig.auth_infos = vec![NamedAuthInfo {
            name: user.clone(),
            auth_info: Some(AuthInfo {
                token: Some(token.into()),
                ..Default::default()
            }),
            ..Default::default()
        }];
        for context in &mut kubeconfig.contexts {
            if let Some(ctx) = context.context.as_mut() {
                ctx.user = Some(user.clone());
            }
        }
        let path = dir.join(format!("{namespace}-{name}.kubeconfig"));
        // JSON is valid YAML, and every kubeconfig reader accepts it.
        let text = serde_json::to_string_pretty(&kubeconfig).expect("serialize kubeconfig");
        std::fs::write(&path, text).expect("write service account kubeconfig");
        path
    }
}

/// Polls `check` every 250 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Writes `text` to a new file readable only by its owner (ssh refuses private keys others can read).
pub fn write_private(path: &Path, text: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The lines a unified diff adds or removes (its `+++`/`---` headers excluded).
pub fn changed_lines(diff: &str) -> Vec<&str> {
    diff.lines()
        .filter(|l| {
            (l.starts_with('+') || l.starts_with('-'))
                && !l.starts_with("+++")
                && !l.starts_with("---")
        })
        .collect()
}

/// Panics unless a `lockstep diff` found nothing to change: exit 0 and nothing on stdout.
pub fn assert_no_changes(out: &std::process::Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Panics with the process's stderr unless it exited 0.
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A control plane of one test's own (for faults that would disturb the shared one): started with
/// `scripts/cluster up`, stopped when dropped.
pub struct PrivateCluster {
    /// The cluster.
    pub cluster: Cluster,
    /// Its state directory (PIDs in `pids`).
    pub state: PathBuf,
}

impl PrivateCluster {
    /// Starts one; `Err` when the peers are not built.
    pub fn start() -> Result<PrivateCluster, String> {
        peer("etcd")?;
        let state = std::env::temp_dir().join(format!(
            "lockstep-private-cluster-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        let out = Command::new(repo_root().join("scripts/cluster"))
            .args(["up", "--watch-pid", &std::process::id().to_string()])
            .env("LOCKSTEP_CLUSTER_DIR", &state)
            .env("LOCKSTEP_PEERS_BIN", peers_bin()?)
            .output()
            .map_err(|e| format!("cannot run scripts/cluster: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(path) = stdout
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("KUBECONFIG="))
        else {
            panic!(
                "scripts/cluster up failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        };
        Ok(PrivateCluster {
            cluster: Cluster {
                kubeconfig: PathBuf::from(path),
            },
            state,
        })
    }

    /// The PID of one of its components (`etcd`, `kube-apiserver`, …).
    pub fn pid(&self, component: &str) -> u32 {
        std::fs::read_to_string(self.state.join("pids"))
            .expect("pids")
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, name)| *name == component)
            .filter_map(|(pid, _)| pid.parse().ok())
            .next_back()
            .unwrap_or_else(|| panic!("no {component} in the pids file"))
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/cluster"))
            .arg("down")
            .env("LOCKSTEP_CLUSTER_DIR", &self.state)
            .output();
    }
}
