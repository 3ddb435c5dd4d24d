//! The controller against the real control plane and real Git repositories, one file per feature;
//! this module holds what they share (repositories, Secrets, Syncs, controller processes, waits).

mod auth;
mod charts;
mod converge;
mod depends;
mod drift;
mod faults;
mod flux;
mod isolation;
mod kustomize;
mod leader;
mod ownership;
mod prune;
mod rollback;
mod status;
mod tenancy;
mod triggers;

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;

const BIN: &str = env!("CARGO_BIN_EXE_lockstep");

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.com",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes `dir` a Git repository (branch main) with one commit of everything in it.
fn commit_all(dir: &Path, message: &str) {
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
}

/// Clones `repo` bare into `served/<name>`, for a Git server serving `served`.
fn clone_bare(served: &Path, repo: &Path, name: &str) {
    git(
        served,
        &["clone", "-q", "--bare", &repo.to_string_lossy(), name],
    );
}

/// Server-side applies `body` (named by its `metadata.name`) with `api`, as the field manager
/// `test`, forcing conflicts.
async fn apply_json(api: &Api<DynamicObject>, body: serde_json::Value) {
    let name = body["metadata"]["name"].as_str().expect("name").to_string();
    let kind = body["kind"].as_str().unwrap_or("object").to_string();
    api.patch(
        &name,
        &PatchParams::apply("test").force(),
        &Patch::Apply(body),
    )
    .await
    .unwrap_or_else(|e| panic!("{kind} {name}: {e}"));
}

fn head(dir: &Path) -> String {
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(dir)
        .output()
        .expect("git");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A Git repository holding the shop example, rendering `dev` into `namespace`.
fn shop_repo(namespace: &str) -> tempfile::TempDir {
    let repo = tempfile::tempdir().expect("tempdir");
    support::copy_shop(repo.path());
    std::fs::write(
        repo.path().join("lockstep.yaml"),
        format!("project: shop\nenvironments:\n  dev: {{namespace: {namespace}}}\n"),
    )
    .expect("write");
    commit_all(repo.path(), "shop");
    repo
}

/// Creates or replaces Secret `name` in `ns` holding one `key: value`.
async fn put_secret(client: &kube::Client, ns: &str, name: &str, key: &str, value: &str) {
    put_secret_data(client, ns, name, serde_json::json!({key: value})).await;
}

fn demo_key() -> String {
    std::fs::read_to_string(support::repo_root().join("keys-example/age.key")).expect("key")
}

fn syncs(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("lockstep.dev", "v1alpha1", "Sync"),
        "syncs",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Installs the controller with `lockstep install --apply` (the shipped CRD, ServiceAccount and
/// RBAC; once per test binary) and returns a kubeconfig for its ServiceAccount, so the controller
/// runs with exactly the rights the install manifests give it.
async fn install_controller(
    cluster: &support::Cluster,
    admin: &kube::Client,
    dir: &Path,
) -> PathBuf {
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    INSTALLED
        .get_or_init(|| async {
            let home = tempfile::tempdir().expect("tempdir");
            install_manifests(cluster, home.path());
        })
        .await;
    cluster
        .service_account_kubeconfig(admin, "lockstep-system", "lockstep-controller", dir)
        .await
}

/// `lockstep install --apply` on `cluster`: the CRD, RBAC and (unstarted) Deployment.
fn install_manifests(cluster: &support::Cluster, home: &Path) {
    let out = support::run_isolated(
        Path::new(BIN),
        &[
            "install",
            "--apply",
            "--wait=false",
            "--kubeconfig",
            &cluster.kubeconfig.to_string_lossy(),
        ],
        &[],
        home,
    );
    assert!(
        out.status.success(),
        "lockstep install --apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a controller test starts from: the control plane, an admin client, the installed
/// controller's ServiceAccount kubeconfig and a fresh namespace for the Syncs (named from `prefix`).
struct Fixture {
    cluster: support::Cluster,
    client: kube::Client,
    controller_kubeconfig: PathBuf,
    sync_ns: String,
    /// Holds the ServiceAccount's token files.
    _creds: tempfile::TempDir,
}

async fn fixture(prefix: &str) -> Result<Fixture, String> {
    let cluster = support::cluster()?;
    let client = cluster.admin().await;
    let creds = tempfile::tempdir().expect("tempdir");
    let controller_kubeconfig = install_controller(&cluster, &client, creds.path()).await;
    let sync_ns = cluster.namespace(&client, prefix).await;
    Ok(Fixture {
        cluster,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds: creds,
    })
}

fn controller(kubeconfig: &Path, ns: &str, cache: &Path, home: &Path) -> Output {
    controller_with(kubeconfig, ns, cache, home, &["--allow-local-sources"], &[])
}

/// `lockstep controller --once --allow-local-sources` for the Syncs of `ns` with `env` (in a
/// fresh home), which must succeed; its log.
fn sync_local_once(kubeconfig: &Path, ns: &str, env: &[(&str, &str)]) -> String {
    let home = tempfile::tempdir().expect("tempdir");
    let out = controller_with(
        kubeconfig,
        ns,
        &home.path().join("git-cache"),
        home.path(),
        &["--allow-local-sources"],
        env,
    );
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    log
}

/// `lockstep controller --once` for the Syncs of `ns`, with `extra` flags and environment.
fn controller_with(
    kubeconfig: &Path,
    ns: &str,
    cache: &Path,
    home: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let kubeconfig = kubeconfig.to_string_lossy();
    let cache = cache.to_string_lossy();
    let mut args = vec![
        "controller",
        "--once",
        "-n",
        ns,
        "--kubeconfig",
        &kubeconfig,
        "--cache",
        &cache,
    ];
    args.extend_from_slice(extra);
    support::run_isolated(Path::new(BIN), &args, env, home)
}

/// Writes `templates/<name>` in `repo` and commits it.
fn commit_template(repo: &Path, name: &str, text: &str) {
    std::fs::write(repo.join("templates").join(name), text).expect("write");
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", name]);
}

/// A template that does not render (`values.nope` is undefined).
const BROKEN: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\ndata:\n  x: {{ values.nope }}\n";

/// The objects of one kind `(group, version, kind, plural)` in `ns`, without those of other
/// writers: the API server's CA bundle (`kube-root-ca.crt`) and lockstep's inventory.
async fn objects_of(
    client: &kube::Client,
    ns: &str,
    (group, version, kind, plural): (&str, &str, &str, &str),
) -> Vec<DynamicObject> {
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let mut objects = api.list(&Default::default()).await.expect("list").items;
    objects.retain(|o| {
        let inventory = o
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key("lockstep.dev/inventory"));
        o.metadata.name.as_deref() != Some("kube-root-ca.crt") && !inventory
    });
    objects
}

/// `Kind/name` → version (resourceVersion, or generation for workloads) of the shop's objects in `ns`.
async fn versions(client: &kube::Client, ns: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for (group, version, kind, plural) in [
        ("", "v1", "ConfigMap", "configmaps"),
        ("", "v1", "Secret", "secrets"),
        ("", "v1", "Service", "services"),
        ("apps", "v1", "Deployment", "deployments"),
        ("apps", "v1", "StatefulSet", "statefulsets"),
        ("networking.k8s.io", "v1", "Ingress", "ingresses"),
        ("shop.example.com", "v1", "Backup", "backups"),
    ] {
        for o in objects_of(client, ns, (group, version, kind, plural)).await {
            let name = o.metadata.name.clone().unwrap_or_default();
            // Workloads' status moves on its own (the fake node runs their pods): compare the
            // generation, which only a spec change moves; everything else by resourceVersion.
            let version = if group == "apps" {
                format!("generation {:?}", o.metadata.generation)
            } else {
                o.metadata.resource_version.clone().unwrap_or_default()
            };
            out.insert(format!("{kind}/{name}"), version);
        }
    }
    out
}

/// Sets a Sync's `driftMode`.
async fn set_drift_mode(api: &Api<DynamicObject>, name: &str, mode: &str) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"driftMode": mode}})),
    )
    .await
    .unwrap_or_else(|e| panic!("driftMode {mode}: {e}"));
}

/// After a `--once` run that must have failed: the Sync's Ready condition is False with `reason`;
/// returns its message.
async fn failed_with(out: &Output, api: &Api<DynamicObject>, name: &str, reason: &str) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, got, message) = ready(&api.get(name).await.expect("get"));
    assert_eq!(
        (status.as_str(), got.as_str()),
        ("False", reason),
        "{message}"
    );
    message
}

fn ready(sync: &DynamicObject) -> (String, String, String) {
    let c = sync.data["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_default();
    (
        c["status"].as_str().unwrap_or_default().to_string(),
        c["reason"].as_str().unwrap_or_default().to_string(),
        c["message"].as_str().unwrap_or_default().to_string(),
    )
}

/// Starts `lockstep controller` as a loop on `port` with the given kubeconfig, Syncs of `ns` only,
/// its Git scratch space and log under `home/<name>`; `extra` adds arguments.
/// Starts `lockstep controller` for the Syncs `scope` selects (`["-n", ns]`, or a label selector).
fn spawn_loop(
    kubeconfig: &Path,
    scope: &[&str],
    port: u16,
    home: &Path,
    name: &str,
    extra: &[&str],
) -> Running {
    let log_path = home.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).expect("log file");
    Running(
        Command::new(BIN)
            .args(["controller", "--allow-local-sources"])
            .args(scope)
            .args(["--kubeconfig", &kubeconfig.to_string_lossy()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--cache", &home.join(name).to_string_lossy()])
            .args(extra)
            .env("HOME", home)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the controller"),
        log_path,
    )
}

/// A GitHub-style `X-Hub-Signature-256` value for `body`.
fn hook_signature(body: &[u8], key: &[u8]) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2_10::Sha256>::new_from_slice(key).expect("key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Waits until Sync `name` reports `revision` as applied.
async fn wait_applied(api: &Api<DynamicObject>, name: &str, revision: &str, what: &str) {
    wait_for(what, async || {
        api.get(name)
            .await
            .is_ok_and(|s| s.data["status"]["lastAppliedRevision"] == revision)
    })
    .await;
}

/// Kills the controller process when the test ends, however it ends; a failing test prints what
/// the controller logged.
struct Running(std::process::Child, PathBuf);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() {
            eprintln!(
                "the controller ({}) logged:\n{}",
                self.1.display(),
                log_of(&self.1)
            );
        }
    }
}

/// One HTTP/1.1 request to the controller on loopback: (status code, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).expect("write");
    // A server that refuses a body early may stop reading it (and reset the connection once it
    // has answered): what it answered is what counts.
    let _ = stream.write_all(body);
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Puts a Secret with several keys (`stringData`).
async fn put_secret_data(client: &kube::Client, ns: &str, name: &str, data: serde_json::Value) {
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                "stringData": data
            })),
        )
        .await
        .unwrap_or_else(|e| panic!("Secret {ns}/{name}: {e}"));
}

async fn create_sync(api: &Api<DynamicObject>, name: &str, spec: serde_json::Value) {
    apply_json(
        api,
        serde_json::json!({
            "apiVersion": "lockstep.dev/v1alpha1", "kind": "Sync", "metadata": {"name": name},
            "spec": spec
        }),
    )
    .await;
}

/// Creates Sync `name` of the `dev` environment of the repository at `repo` (file://), with the
/// `extra` spec fields.
async fn create_local_sync(
    api: &Api<DynamicObject>,
    name: &str,
    repo: &Path,
    extra: serde_json::Value,
) {
    let mut spec = serde_json::json!({
        "source": {"url": format!("file://{}", repo.display())},
        "environment": "dev"
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    create_sync(api, name, spec).await;
}

/// A Git repository of a project `project` rendering into `namespace`, with these templates.
fn project_repo(project: &str, namespace: &str, templates: &[(&str, &str)]) -> tempfile::TempDir {
    let repo = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(repo.path().join("templates")).expect("mkdir");
    std::fs::write(
        repo.path().join("lockstep.yaml"),
        format!("project: {project}\nenvironments:\n  dev: {{namespace: {namespace}}}\n"),
    )
    .expect("write");
    for (name, text) in templates {
        std::fs::write(repo.path().join("templates").join(name), text).expect("write");
    }
    commit_all(repo.path(), project);
    repo
}

/// A one-ConfigMap project rendering into `namespace`, as a Git repository.
fn tiny_repo(namespace: &str) -> tempfile::TempDir {
    project_repo(
        "tiny",
        namespace,
        &[(
            "settings.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: one}\n",
        )],
    )
}

/// `lockstep ARGS --kubeconfig KUBECONFIG` in a fresh home: (success, stdout, stderr).
fn cli_as(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let home = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kubeconfig.to_string_lossy();
    let mut all = args.to_vec();
    all.extend_from_slice(&["--kubeconfig", &kubeconfig]);
    let out = support::run_isolated(Path::new(BIN), &all, &[], home.path());
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `mode` of the ConfigMap `settings` a [`tiny_repo`] applies into `namespace`.
async fn settings_mode(client: &kube::Client, namespace: &str) -> String {
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), namespace)
        .get("settings")
        .await
        .expect("settings")
        .data
        .unwrap_or_default()["mode"]
        .clone()
}

/// The controller's log so far.
fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn start_replica(
    kubeconfig: &Path,
    ns: &str,
    lease: &str,
    identity: &str,
    port: u16,
    home: &Path,
) -> Running {
    spawn_loop(
        kubeconfig,
        &["-n", ns],
        port,
        home,
        identity,
        &[
            "--leader-elect",
            "--lease-namespace",
            "lockstep-system",
            "--lease-name",
            lease,
            "--lease-identity",
            identity,
            // A long poll: a new Sync, a requested sync and a new term wake the loop at once.
            "--poll",
            "60s",
        ],
    )
}

fn metric(port: u16, name: &str) -> f64 {
    let (_, text) = http(port, "GET", "/metrics", &[], b"");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// A project in `namespace` with one PersistentVolumeClaim of a storage class nobody provides: it
/// never binds, so a `wait: true` Sync of it waits for its whole timeout.
fn unbindable_repo(namespace: &str) -> tempfile::TempDir {
    project_repo(
        "slow",
        namespace,
        &[(
            "data.yaml",
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n  storageClassName: nobody-provides-this\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
        )],
    )
}

/// Replaces `templates/settings.yaml` of a [`tiny_repo`] and commits; returns the new commit.
fn commit_settings(repo: &Path, mode: &str) -> String {
    std::fs::write(
        repo.join("templates/settings.yaml"),
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {{mode: {mode}}}\n"),
    )
    .expect("write");
    git(repo, &["commit", "-q", "-am", mode]);
    head(repo)
}

/// Sends Sync `ns/name`'s webhook (signed with `token`) and expects 202.
fn send_hook(port: u16, ns: &str, name: &str, token: &str) {
    let body = br#"{"ref":"refs/heads/main"}"#;
    let signature = hook_signature(body, token.as_bytes());
    let (code, answer) = http(
        port,
        "POST",
        &format!("/hook/{ns}/{name}"),
        &[("X-Hub-Signature-256", signature.as_str())],
        body,
    );
    assert_eq!(code, 202, "{answer}");
}
