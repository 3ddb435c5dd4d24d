//! The controller against the real control plane and a real Git repository (served over `file://`):
//! a `Sync` converges, a broken commit leaves the cluster as it was and says why, a removed template is
//! pruned, and a wrong decryption key is named on the status.

mod support;

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
    git(repo.path(), &["init", "-q", "-b", "main"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "shop"]);
    repo
}

/// Creates or replaces Secret `name` in `ns` holding one `key: value`.
async fn put_secret(client: &kube::Client, ns: &str, name: &str, key: &str, value: &str) {
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                "stringData": {key: value}
            })),
        )
        .await
        .unwrap_or_else(|e| panic!("Secret {ns}/{name}: {e}"));
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
                home.path(),
            );
            assert!(
                out.status.success(),
                "lockstep install --apply: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        })
        .await;
    cluster
        .service_account_kubeconfig(admin, "lockstep-system", "lockstep-controller", dir)
        .await
}

fn controller(kubeconfig: &Path, ns: &str, cache: &Path, home: &Path) -> Output {
    support::run_isolated(
        Path::new(BIN),
        &[
            "controller",
            "--once",
            "--allow-local-sources",
            "-n",
            ns,
            "--kubeconfig",
            &kubeconfig.to_string_lossy(),
            "--cache",
            &cache.to_string_lossy(),
        ],
        &[],
        home,
    )
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
        let ar =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        for o in api.list(&Default::default()).await.expect("list").items {
            let name = o.metadata.name.clone().unwrap_or_default();
            // Objects of other writers (the token controller, the inventory) are not the shop's.
            if name.starts_with("kube-root-ca") || name.starts_with("lockstep-inventory") {
                continue;
            }
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

#[tokio::test]
async fn a_sync_converges_refuses_a_broken_commit_prunes_and_names_a_wrong_key() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let creds = tempfile::tempdir().expect("tempdir");
    let controller_kubeconfig = install_controller(&cluster, &client, creds.path()).await;
    let sync_ns = cluster.namespace(&client, "sync").await;
    let target = format!("shop-sync-{}", std::process::id());
    let repo = shop_repo(&target);
    let home = tempfile::tempdir().expect("tempdir");
    let cache: PathBuf = home.path().join("git-cache");

    // The decryption Secret: the demo key under an arbitrary key name.
    put_secret(&client, &sync_ns, "age-key", "whatever.agekey", &demo_key()).await;
    let api = syncs(&client, &sync_ns);
    api.patch(
        "shop",
        &PatchParams::apply("test"),
        &Patch::Apply(serde_json::json!({
            "apiVersion": "lockstep.dev/v1alpha1", "kind": "Sync", "metadata": {"name": "shop"},
            "spec": {
                "source": {"url": format!("file://{}", repo.path().display()), "ref": {"branch": "main"}},
                "environment": "dev",
                "decryption": {"secretRef": {"name": "age-key"}}
            }
        })),
    )
    .await
    .expect("sync");

    // Converge.
    let out = controller(&controller_kubeconfig, &sync_ns, &cache, home.path());
    support::assert_success(&out);
    let sync = api.get("shop").await.expect("get");
    let (status, reason, message) = ready(&sync);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "Succeeded"),
        "{message}"
    );
    let first = head(repo.path());
    assert_eq!(sync.data["status"]["lastAppliedRevision"], first.as_str());
    assert_eq!(sync.data["status"]["objects"], 14);
    let shop_secrets: Api<Secret> = Api::namespaced(client.clone(), &target);
    let app = shop_secrets
        .get("shop-app")
        .await
        .expect("shop-app applied");
    let session = app.data.expect("data")["SESSION_KEY"].0.clone();
    let session = String::from_utf8(session).expect("utf-8");
    // A commit that changes one value: only the object that uses it is written.
    let before = versions(&client, &target).await;
    let dev_values = repo.path().join("environments/dev/values.yaml");
    let text = std::fs::read_to_string(&dev_values).expect("values");
    std::fs::write(&dev_values, text.replace("shop.dev.", "shop2.dev.")).expect("write");
    git(repo.path(), &["commit", "-q", "-am", "new host"]);
    let out = controller(&controller_kubeconfig, &sync_ns, &cache, home.path());
    support::assert_success(&out);
    let after = versions(&client, &target).await;
    let changed: Vec<&String> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(v))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(changed, ["Ingress/web"], "only the Ingress uses the host");
    let first = head(repo.path());

    // A hand edit is corrected on the next sync (driftMode: correct is the default)…
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), &target);
    let log_level = |cm: k8s_openapi::api::core::v1::ConfigMap| {
        cm.data
            .unwrap_or_default()
            .get("LOG_LEVEL")
            .cloned()
            .unwrap_or_default()
    };
    let edit = serde_json::json!({"data": {"LOG_LEVEL": "trace"}});
    config_maps
        .patch("shop-config", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .expect("hand edit");
    let out = controller(&controller_kubeconfig, &sync_ns, &cache, home.path());
    support::assert_success(&out);
    assert_eq!(
        log_level(config_maps.get("shop-config").await.expect("cm")),
        "debug"
    );
    // …or only reported with driftMode: warn.
    set_drift_mode(&api, "shop", "warn").await;
    config_maps
        .patch("shop-config", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .expect("hand edit");
    let out = controller(&controller_kubeconfig, &sync_ns, &cache, home.path());
    let message = failed_with(&out, &api, "shop", "DriftDetected").await;
    assert_eq!(
        log_level(config_maps.get("shop-config").await.expect("cm")),
        "trace"
    );
    assert!(
        message.contains("ConfigMap") && message.contains("shop-config"),
        "{message}"
    );
    set_drift_mode(&api, "shop", "correct").await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &target);
    // The generation only moves when the spec changes (status updates by the controllers do not count).
    let web_generation = deployments
        .get("web")
        .await
        .expect("web")
        .metadata
        .generation;

    // A broken template: Ready=False with the reason, the cluster untouched, the old revision kept.
    std::fs::write(
        repo.path().join("templates/broken.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\ndata:\n  x: {{ values.nope }}\n",
    )
    .expect("write");
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "broken"]);
    let out = controller(&controller_kubeconfig, &sync_ns, &cache, home.path());
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sync = api.get("shop").await.expect("get");
    let (status, reason, message) = ready(&sync);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "RenderFailed")
    );
    assert!(message.contains("templates/broken.yaml"), "{message}");
    assert_eq!(sync.data["status"]["lastAppliedRevision"], first.as_str());
    assert_eq!(
        sync.data["status"]["lastAttemptedRevision"],
        head(repo.path()).as_str()
    );
    assert_eq!(
        deployments
            .get("web")
            .await
            .expect("web")
            .metadata
            .generation,
        web_generation
    );
    // …and says so in a Warning Event on the Sync.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), &sync_ns);
    let list = events.list(&Default::default()).await.expect("events");
    let failed = list
        .items
        .iter()
        .find(|e| e.reason.as_deref() == Some("RenderFailed"))
        .expect("a RenderFailed event");
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    assert_eq!(
        failed.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("shop")
    );
    assert!(
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Succeeded")),
        "the first sync changed objects, so it has an Event"
    );

    // Fixed, and the Ingress template removed: converged again, the Ingress pruned.
    std::fs::remove_file(repo.path().join("templates/broken.yaml")).expect("rm");
    std::fs::remove_file(repo.path().join("templates/ingress.yaml")).expect("rm");
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "no ingress"]);
    let out = controller(&controller_kubeconfig, &sync_ns, &cache, home.path());
    support::assert_success(&out);
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &target);
    assert!(
        ingresses.get_opt("web").await.expect("get").is_none(),
        "the Ingress is pruned"
    );
    let sync = api.get("shop").await.expect("get");
    assert_eq!(ready(&sync).0, "True");
    assert_eq!(
        sync.data["status"]["lastAppliedRevision"],
        head(repo.path()).as_str()
    );

    // A tampered secrets file (one ciphertext changed): DecryptFailed, the cluster as it was.
    let before = versions(&client, &target).await;
    let secrets_file = repo.path().join("environments/dev/secrets.yaml");
    let text = std::fs::read_to_string(&secrets_file).expect("secrets");
    let at = text.find("ENC[AES256_GCM,data:").expect("a value") + "ENC[AES256_GCM,data:".len();
    let mut bytes = text.into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(&secrets_file, bytes).expect("write");
    git(repo.path(), &["commit", "-q", "-am", "tampered"]);
    let out = controller(&controller_kubeconfig, &sync_ns, &cache, home.path());
    let message = failed_with(&out, &api, "shop", "DecryptFailed").await;
    assert!(
        message.contains("environments/dev/secrets.yaml"),
        "{message}"
    );
    assert_eq!(
        versions(&client, &target).await,
        before,
        "nothing written or pruned"
    );
    git(repo.path(), &["revert", "--no-edit", "HEAD"]);
    // A missing decryption Secret is named.
    Api::<Secret>::namespaced(client.clone(), &sync_ns)
        .delete("age-key", &Default::default())
        .await
        .expect("delete");
    let out = controller(&controller_kubeconfig, &sync_ns, &cache, home.path());
    let message = failed_with(&out, &api, "shop", "DecryptFailed").await;
    assert!(
        message.contains(&format!(
            "decryption Secret {sync_ns}/age-key does not exist"
        )),
        "{message}"
    );

    // A decryption Secret holding another key: DecryptFailed naming recipients and identities.
    let (other, other_public) = lockstep::keys::generate("2026-01-01T00:00:00Z");
    put_secret(&client, &sync_ns, "age-key", "whatever.agekey", &other).await;
    let out = controller(&controller_kubeconfig, &sync_ns, &cache, home.path());
    let message = failed_with(&out, &api, "shop", "DecryptFailed").await;
    let sync = api.get("shop").await.expect("get");
    assert!(
        message.contains("age1cunssxzmelyguczf39cjyuztac9mh3wlk6hgqv0s8m7khtfyw47qxrz3zg"),
        "{message}"
    );
    assert!(message.contains(&other_public), "{message}");

    // The decrypted value is nowhere in the status, the Events or the controller's output.
    let all_events = serde_json::to_string(
        &events
            .list(&Default::default())
            .await
            .expect("events")
            .items,
    )
    .expect("json");
    assert!(!all_events.contains(&session), "secret in an event");
    let status_text = sync.data["status"].to_string();
    assert!(!status_text.contains(&session), "secret in status");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!output.contains(&session), "secret in output");
    for file in support::files_under(home.path()) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !bytes
                .windows(session.len())
                .any(|w| w == session.as_bytes()),
            "plaintext on disk: {}",
            file.display()
        );
    }
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
    let log = std::fs::File::create(home.join(format!("{name}.log"))).expect("log file");
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

/// Kills the controller process when the test ends, however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
    stream.write_all(body).expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
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

#[tokio::test]
async fn the_loop_syncs_new_syncs_at_once_waits_for_the_interval_and_obeys_lockstep_sync_and_the_webhook()
 {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let creds = tempfile::tempdir().expect("tempdir");
    let controller_kubeconfig = install_controller(&cluster, &client, creds.path()).await;
    let sync_ns = cluster.namespace(&client, "loop").await;
    let target = format!("shop-loop-{}", std::process::id());
    let repo = shop_repo(&target);
    let home = tempfile::tempdir().expect("tempdir");
    put_secret(&client, &sync_ns, "age-key", "keys.txt", &demo_key()).await;
    put_secret(&client, &sync_ns, "hook", "token", "hook-s3cret").await;
    let api = syncs(&client, &sync_ns);
    api.patch(
        "shop",
        &PatchParams::apply("test"),
        &Patch::Apply(serde_json::json!({
            "apiVersion": "lockstep.dev/v1alpha1", "kind": "Sync", "metadata": {"name": "shop"},
            "spec": {
                "source": {"url": format!("file://{}", repo.path().display())},
                "environment": "dev",
                "interval": "1h",
                "decryption": {"secretRef": {"name": "age-key"}},
                "webhook": {"secretRef": {"name": "hook"}}
            }
        })),
    )
    .await
    .expect("sync");
    let port = free_port();
    let _controller = spawn_loop(
        &controller_kubeconfig,
        &["-n", &sync_ns],
        port,
        home.path(),
        "controller",
        &["--poll", "1s"],
    );
    let first = head(repo.path());
    wait_applied(&api, "shop", &first, "the first sync").await;

    // A new commit is not picked up before the interval (1h)…
    std::fs::remove_file(repo.path().join("templates/ingress.yaml")).expect("rm");
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "no ingress"]);
    let second = head(repo.path());
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let status = api.get("shop").await.expect("get").data["status"].clone();
    assert_eq!(
        status["lastAppliedRevision"],
        first.as_str(),
        "synced before its interval"
    );

    // …but at once when asked.
    let out = support::run_isolated(
        Path::new(BIN),
        &[
            "sync",
            "shop",
            "-n",
            &sync_ns,
            "--kubeconfig",
            &cluster.kubeconfig.to_string_lossy(),
        ],
        &[],
        home.path(),
    );
    support::assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("requested"));
    wait_applied(&api, "shop", &second, "the requested sync").await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &target);
    assert!(
        ingresses.get_opt("web").await.expect("get").is_none(),
        "pruned by the loop"
    );

    // Health and metrics.
    assert_eq!(http(port, "GET", "/healthz", &[], b"").0, 200);
    assert_eq!(http(port, "GET", "/readyz", &[], b"").0, 200);
    let (code, metrics) = http(port, "GET", "/metrics", &[], b"");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("lockstep_syncs_total{result=\"success\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("revision=\"{second}\"")),
        "{metrics}"
    );
    assert!(metrics.contains("lockstep_objects_managed{"), "{metrics}");

    // The webhook: a bad signature is refused and changes nothing; a good one syncs at once.
    std::fs::remove_file(repo.path().join("templates/backup.yaml")).expect("rm");
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "no backup"]);
    let third = head(repo.path());
    let body = br#"{"ref":"refs/heads/main"}"#;
    let path = format!("/hook/{sync_ns}/shop");
    let (code, _) = http(
        port,
        "POST",
        &path,
        &[("X-Hub-Signature-256", "sha256=00")],
        body,
    );
    assert_eq!(code, 401);
    let (code, _) = http(port, "POST", &path, &[("X-Gitlab-Token", "wrong")], body);
    assert_eq!(code, 401);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let status = api.get("shop").await.expect("get").data["status"].clone();
    assert_eq!(
        status["lastAppliedRevision"],
        second.as_str(),
        "a refused hook must not sync"
    );
    let signature = hook_signature(body, b"hook-s3cret");
    let (code, _) = http(
        port,
        "POST",
        &path,
        &[("X-Hub-Signature-256", &signature)],
        body,
    );
    assert_eq!(code, 202);
    wait_applied(&api, "shop", &third, "the webhook sync").await;

    // The decrypted values are nowhere in the metrics, the log, the status or the cache on disk.
    let shop_secrets: Api<Secret> = Api::namespaced(client.clone(), &target);
    let app = shop_secrets.get("shop-app").await.expect("shop-app");
    let (_, metrics) = http(port, "GET", "/metrics", &[], b"");
    let log = log_of(&home.path().join("controller.log"));
    assert!(log.contains("ready"), "{log}");
    let status = api.get("shop").await.expect("get").data["status"].to_string();
    let files = support::files_under(home.path());
    for (key, value) in app.data.unwrap_or_default() {
        let value = String::from_utf8(value.0).expect("utf-8");
        assert!(!metrics.contains(&value), "{key} in the metrics");
        assert!(!log.contains(&value), "{key} in the log");
        assert!(!status.contains(&value), "{key} in the status");
        for file in &files {
            let bytes = std::fs::read(file).unwrap_or_default();
            assert!(
                !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
                "{key} on disk: {}",
                file.display()
            );
        }
    }
}

#[tokio::test]
async fn the_loop_corrects_a_hand_edit_within_one_interval() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let creds = tempfile::tempdir().expect("tempdir");
    let controller_kubeconfig = install_controller(&cluster, &client, creds.path()).await;
    let sync_ns = cluster.namespace(&client, "drift").await;
    let target = cluster.namespace(&client, "drift-apps").await;
    let repo = tiny_repo(&target);
    let home = tempfile::tempdir().expect("tempdir");
    let api = syncs(&client, &sync_ns);
    create_local_sync(
        &api,
        "tiny",
        repo.path(),
        serde_json::json!({"interval": "3s"}),
    )
    .await;
    let port = free_port();
    let _controller = spawn_loop(
        &controller_kubeconfig,
        &["-n", &sync_ns],
        port,
        home.path(),
        "controller",
        &["--poll", "1s"],
    );
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), &target);
    let mode = async || {
        config_maps
            .get_opt("settings")
            .await
            .ok()
            .flatten()
            .and_then(|c| c.data)
            .and_then(|d| d.get("mode").cloned())
    };
    wait_for("the first sync", async || {
        mode().await.as_deref() == Some("one")
    })
    .await;
    config_maps
        .patch(
            "settings",
            &PatchParams::apply("kubectl-edit").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
                "data": {"mode": "by hand"}
            })),
        )
        .await
        .expect("hand edit");
    assert_eq!(mode().await.as_deref(), Some("by hand"));
    let edited = std::time::Instant::now();
    wait_for("the correction", async || {
        mode().await.as_deref() == Some("one")
    })
    .await;
    assert!(
        edited.elapsed() < std::time::Duration::from_millis(3300 + 1000 + 1500),
        "corrected after {:?}: more than one interval (3 s ± 10 %) plus a poll",
        edited.elapsed()
    );
    // Counted once the sync that corrected it has finished.
    wait_for("the correction to be counted", async || {
        metric(port, "lockstep_drift_corrections_total") >= 1.0
    })
    .await;
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
    api.patch(
        name,
        &PatchParams::apply("test").force(),
        &Patch::Apply(serde_json::json!({
            "apiVersion": "lockstep.dev/v1alpha1", "kind": "Sync", "metadata": {"name": name},
            "spec": spec
        })),
    )
    .await
    .unwrap_or_else(|e| panic!("Sync {name}: {e}"));
}

#[tokio::test]
async fn private_repositories_over_https_auth_and_ssh_and_signed_commits_only() {
    use support::gitserver::{GitHttp, GitSsh, ssh_keypair};
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let creds = tempfile::tempdir().expect("tempdir");
    let controller_kubeconfig = install_controller(&cluster, &client, creds.path()).await;
    let sync_ns = cluster.namespace(&client, "private").await;
    let home = tempfile::tempdir().expect("tempdir");
    let cache = home.path().join("git-cache");
    let served = tempfile::tempdir().expect("tempdir");
    put_secret(&client, &sync_ns, "age-key", "key", &demo_key()).await;
    let api = syncs(&client, &sync_ns);

    // Three repositories, each rendering into its own namespace, served from one directory.
    let pid = std::process::id();
    let mut work = Vec::new();
    for name in ["https", "ssh", "signed"] {
        let repo = shop_repo(&format!("shop-{name}-{pid}"));
        git(
            served.path(),
            &[
                "clone",
                "-q",
                "--bare",
                &repo.path().to_string_lossy(),
                &format!("{name}.git"),
            ],
        );
        git(
            &served.path().join(format!("{name}.git")),
            &["config", "http.receivepack", "true"],
        );
        work.push(repo);
    }

    // HTTPS with basic auth (the server's CA handed to the controller as SSL_CERT_FILE): a wrong
    // password is a FetchFailed naming nothing secret…
    let http = GitHttp::start_tls(served.path(), Some(("deploy", "t0ken-4f9a")));
    let ca = http.ca_file().expect("a CA").to_string_lossy().into_owned();
    let run = || {
        support::run_isolated(
            Path::new(BIN),
            &[
                "controller",
                "--once",
                "-n",
                &sync_ns,
                "--kubeconfig",
                &controller_kubeconfig.to_string_lossy(),
                "--cache",
                &cache.to_string_lossy(),
            ],
            &[("SSL_CERT_FILE", ca.as_str())],
            home.path(),
        )
    };
    put_secret_data(
        &client,
        &sync_ns,
        "https-creds",
        serde_json::json!({"username": "deploy", "password": "wrong"}),
    )
    .await;
    create_sync(
        &api,
        "https",
        serde_json::json!({
            "source": {"url": http.url("https.git"), "ref": {"branch": "main"},
                       "secretRef": {"name": "https-creds"}},
            "environment": "dev",
            "decryption": {"secretRef": {"name": "age-key"}}
        }),
    )
    .await;
    // SSH with a deploy key and the server's host key.
    let (key, public) = ssh_keypair(home.path());
    let ssh = GitSsh::start(served.path(), &public);
    put_secret_data(
        &client,
        &sync_ns,
        "ssh-creds",
        serde_json::json!({"identity": key, "known_hosts": ssh.known_hosts()}),
    )
    .await;
    create_sync(
        &api,
        "ssh",
        serde_json::json!({
            "source": {"url": ssh.url("ssh.git"), "secretRef": {"name": "ssh-creds"}},
            "environment": "dev",
            "decryption": {"secretRef": {"name": "age-key"}}
        }),
    )
    .await;
    // A local path is refused unless the controller allows local sources: another Sync's
    // repository or fetch on the controller's disk is no one else's business.
    create_sync(
        &api,
        "local",
        serde_json::json!({
            "source": {"url": format!("file://{}", served.path().join("ssh.git").display())},
            "environment": "dev"
        }),
    )
    .await;
    let out = run();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, reason, message) = ready(&api.get("local").await.expect("get"));
    assert_eq!((status.as_str(), reason.as_str()), ("False", "FetchFailed"));
    assert!(message.contains("--allow-local-sources"), "{message}");
    api.delete("local", &Default::default())
        .await
        .expect("delete");
    let (status, reason, message) = ready(&api.get("https").await.expect("get"));
    assert_eq!((status.as_str(), reason.as_str()), ("False", "FetchFailed"));
    assert!(!message.contains("wrong"), "{message}");
    assert!(
        http.requests().iter().any(|r| r.status == 401),
        "the server was asked and refused"
    );
    let (status, reason, message) = ready(&api.get("ssh").await.expect("get"));
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "Succeeded"),
        "{message}\n{}",
        ssh.log()
    );
    // …and the right one converges.
    put_secret_data(
        &client,
        &sync_ns,
        "https-creds",
        serde_json::json!({"username": "deploy", "password": "t0ken-4f9a"}),
    )
    .await;
    let out = run();
    assert!(
        out.status.success(),
        "{}\nhttps: {:?}\nssh: {:?}",
        String::from_utf8_lossy(&out.stderr),
        ready(&api.get("https").await.expect("get")),
        ready(&api.get("ssh").await.expect("get")),
    );
    let sync = api.get("https").await.expect("get");
    assert_eq!(ready(&sync).0, "True", "{:?}", ready(&sync));
    assert_eq!(
        sync.data["status"]["lastAppliedRevision"],
        head(work[0].path()).as_str()
    );
    // SSH without known_hosts is refused before connecting.
    put_secret_data(
        &client,
        &sync_ns,
        "ssh-creds",
        serde_json::json!({"identity": key, "known_hosts": ""}),
    )
    .await;
    let out = run();
    let message = failed_with(&out, &api, "ssh", "FetchFailed").await;
    assert!(message.contains("known_hosts"), "{message}");
    api.delete("https", &Default::default())
        .await
        .expect("delete");
    api.delete("ssh", &Default::default())
        .await
        .expect("delete");

    // Signed commits only: the trusted signer's key in allowed_signers form.
    let (signing_key, signing_public) = ssh_keypair(home.path());
    let key_file = home.path().join("signing-key");
    support::write_private(&key_file, &signing_key);
    put_secret_data(
        &client,
        &sync_ns,
        "signers",
        serde_json::json!({"allowed_signers": format!("release@example.com {signing_public}\n")}),
    )
    .await;
    create_sync(
        &api,
        "signed",
        serde_json::json!({
            "source": {"url": http.url("signed.git"), "secretRef": {"name": "https-creds"},
                       "verify": {"secretRef": {"name": "signers"}}},
            "environment": "dev",
            "decryption": {"secretRef": {"name": "age-key"}}
        }),
    )
    .await;
    let target = format!("shop-signed-{pid}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &target);
    // The repository's only commit is unsigned: VerifyFailed, Stalled, nothing applied.
    let out = run();
    let message = failed_with(&out, &api, "signed", "VerifyFailed").await;
    let sync = api.get("signed").await.expect("get");
    assert!(message.contains("not signed"), "{message}");
    assert!(
        sync.data["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs
                .iter()
                .any(|c| c["type"] == "Stalled" && c["status"] == "True")),
        "{}",
        sync.data["status"]
    );
    assert!(deployments.get_opt("web").await.expect("get").is_none());
    // A commit signed by the trusted key is applied.
    let repo = work[2].path();
    git(repo, &["remote", "add", "origin", &http.url("signed.git")]);
    let push = |repo: &Path| {
        let url = http
            .url("signed.git")
            .replace("https://", "https://deploy:t0ken-4f9a@");
        let out = Command::new("git")
            .args(["push", "-q", &url, "main"])
            .current_dir(repo)
            .env("GIT_SSL_CAINFO", &ca)
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()
            .expect("git push");
        assert!(
            out.status.success(),
            "git push: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let commit_signed = |repo: &Path, key: &Path, message: &str| {
        git(
            repo,
            &[
                "-c",
                "gpg.format=ssh",
                "-c",
                &format!("user.signingkey={}", key.display()),
                "commit",
                "-q",
                "-S",
                "--allow-empty",
                "-m",
                message,
            ],
        );
    };
    commit_signed(repo, &key_file, "signed release");
    push(repo);
    let signed = head(repo);
    let out = run();
    support::assert_success(&out);
    let sync = api.get("signed").await.expect("get");
    assert_eq!(sync.data["status"]["lastAppliedRevision"], signed.as_str());
    assert!(
        !sync.data["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Stalled")),
        "{}",
        sync.data["status"]
    );
    let web_generation = deployments
        .get("web")
        .await
        .expect("web")
        .metadata
        .generation;
    // A commit signed by another key, changing the web Deployment: refused, the cluster unchanged.
    let (other_key, _) = ssh_keypair(home.path());
    let other_file = home.path().join("other-key");
    support::write_private(&other_file, &other_key);
    let values = repo.join("values.yaml");
    let text = std::fs::read_to_string(&values).expect("values");
    std::fs::write(&values, text.replacen("replicas: 1", "replicas: 4", 1)).expect("write");
    git(repo, &["add", "-A"]);
    commit_signed(repo, &other_file, "not trusted");
    push(repo);
    let out = run();
    let message = failed_with(&out, &api, "signed", "VerifyFailed").await;
    let sync = api.get("signed").await.expect("get");
    assert!(message.contains("not in the allowed signers"), "{message}");
    assert_eq!(sync.data["status"]["lastAppliedRevision"], signed.as_str());
    assert_eq!(
        deployments
            .get("web")
            .await
            .expect("web")
            .metadata
            .generation,
        web_generation,
        "a refused commit changes nothing"
    );
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

/// A one-ConfigMap project rendering into `namespace`, as a Git repository.
fn tiny_repo(namespace: &str) -> tempfile::TempDir {
    let repo = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(repo.path().join("templates")).expect("mkdir");
    std::fs::write(
        repo.path().join("lockstep.yaml"),
        format!("project: tiny\nenvironments:\n  dev: {{namespace: {namespace}}}\n"),
    )
    .expect("write");
    std::fs::write(
        repo.path().join("templates/settings.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: one}\n",
    )
    .expect("write");
    git(repo.path(), &["init", "-q", "-b", "main"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "tiny"]);
    repo
}

#[tokio::test]
async fn a_sync_with_a_service_account_can_do_only_what_that_account_may() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let creds = tempfile::tempdir().expect("tempdir");
    let controller_kubeconfig = install_controller(&cluster, &client, creds.path()).await;
    let sync_ns = cluster.namespace(&client, "tenant-syncs").await;
    let target = cluster.namespace(&client, "tenant-apps").await;
    let repo = tiny_repo(&target);
    let home = tempfile::tempdir().expect("tempdir");
    let cache = home.path().join("git-cache");
    // The tenant's ServiceAccount may manage ConfigMaps in its own namespace and nothing else.
    let sa: k8s_openapi::api::core::v1::ServiceAccount = serde_json::from_value(
        serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "tenant"}}),
    )
    .expect("sa");
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), &sync_ns)
        .create(&Default::default(), &sa)
        .await
        .expect("create sa");
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "tenant-admin"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                   "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}]
    }))
    .expect("role");
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(client.clone(), &target)
        .create(&Default::default(), &role)
        .await
        .expect("create role");
    let binding: k8s_openapi::api::rbac::v1::RoleBinding =
        serde_json::from_value(serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "tenant-admin"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": sync_ns}]
        }))
        .expect("binding");
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client.clone(), &target)
        .create(&Default::default(), &binding)
        .await
        .expect("create binding");
    // RBAC takes effect asynchronously: wait until the API server agrees.
    let reviews: Api<k8s_openapi::api::authorization::v1::SubjectAccessReview> =
        Api::all(client.clone());
    let review: k8s_openapi::api::authorization::v1::SubjectAccessReview =
        serde_json::from_value(serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {
                "user": format!("system:serviceaccount:{sync_ns}:tenant"),
                "resourceAttributes": {"verb": "patch", "resource": "configmaps", "namespace": target}
            }
        }))
        .expect("review");
    wait_for("the tenant's RoleBinding", async || {
        reviews
            .create(&Default::default(), &review)
            .await
            .is_ok_and(|r| r.status.is_some_and(|s| s.allowed))
    })
    .await;
    let api = syncs(&client, &sync_ns);
    create_local_sync(
        &api,
        "tiny",
        repo.path(),
        serde_json::json!({"serviceAccountName": "tenant"}),
    )
    .await;
    let out = controller(&controller_kubeconfig, &sync_ns, &cache, home.path());
    assert!(
        out.status.success(),
        "{}\n{:?}",
        String::from_utf8_lossy(&out.stderr),
        ready(&api.get("tiny").await.expect("get"))
    );
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), &target);
    let settings = config_maps.get("settings").await.expect("applied");
    // The object was written by the impersonated ServiceAccount, as field manager lockstep.
    assert!(
        settings
            .metadata
            .managed_fields
            .unwrap_or_default()
            .iter()
            .any(|m| m.manager.as_deref() == Some("lockstep")),
    );

    // A commit reaching into another namespace: refused by the API server for that account, with
    // verb, resource and namespace named; nothing changes.
    std::fs::write(
        repo.path().join("templates/settings.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: two}\n",
    )
    .expect("write");
    std::fs::write(
        repo.path().join("templates/escape.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: escape, namespace: default}\ndata: {x: y}\n",
    )
    .expect("write");
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "escape"]);
    let out = controller(&controller_kubeconfig, &sync_ns, &cache, home.path());
    let message = failed_with(&out, &api, "tiny", "ValidationFailed").await;
    assert!(
        message.contains("forbidden")
            && message.contains(&format!("system:serviceaccount:{sync_ns}:tenant"))
            && message.contains("configmaps")
            && message.contains("\"default\""),
        "{message}"
    );
    assert_eq!(
        config_maps
            .get("settings")
            .await
            .expect("cm")
            .data
            .unwrap_or_default()["mode"],
        "one",
        "nothing was applied"
    );
    let defaults: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "default");
    assert!(defaults.get_opt("escape").await.expect("get").is_none());
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
            "--identity",
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

#[tokio::test]
async fn two_replicas_only_the_leader_syncs_and_a_stopped_leader_hands_over() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let creds = tempfile::tempdir().expect("tempdir");
    let controller_kubeconfig = install_controller(&cluster, &client, creds.path()).await;
    let sync_ns = cluster.namespace(&client, "replicas").await;
    let target = cluster.namespace(&client, "replicas-apps").await;
    let repo = tiny_repo(&target);
    let home = tempfile::tempdir().expect("tempdir");
    put_secret(&client, &sync_ns, "hook", "token", "hook-s3cret").await;
    let api = syncs(&client, &sync_ns);
    create_local_sync(
        &api,
        "tiny",
        repo.path(),
        serde_json::json!({"interval": "1h", "webhook": {"secretRef": {"name": "hook"}}}),
    )
    .await;
    let lease = format!("test-{}", std::process::id());
    let ports = [free_port(), free_port()];
    let mut replicas = vec![
        Some(start_replica(
            &controller_kubeconfig,
            &sync_ns,
            &lease,
            "replica-a",
            ports[0],
            home.path(),
        )),
        Some(start_replica(
            &controller_kubeconfig,
            &sync_ns,
            &lease,
            "replica-b",
            ports[1],
            home.path(),
        )),
    ];
    let first = head(repo.path());
    wait_applied(&api, "tiny", &first, "the first sync").await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "lockstep-system");
    let holder = leases
        .get(&lease)
        .await
        .expect("lease")
        .spec
        .unwrap_or_default()
        .holder_identity;
    let leader = match holder.as_deref() {
        Some("replica-a") => 0,
        Some("replica-b") => 1,
        other => panic!("unexpected holder {other:?}"),
    };
    let follower = 1 - leader;
    let success = "lockstep_syncs_total{result=\"success\"}";
    assert_eq!(metric(ports[leader], success), 1.0);
    assert_eq!(
        metric(ports[follower], success),
        0.0,
        "the follower never syncs"
    );

    // A webhook that reaches the follower is handed to the leader.
    std::fs::write(
        repo.path().join("templates/settings.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: two}\n",
    )
    .expect("write");
    git(repo.path(), &["commit", "-q", "-am", "two"]);
    let second = head(repo.path());
    let body = br#"{}"#;
    let signature = hook_signature(body, b"hook-s3cret");
    let (code, _) = http(
        ports[follower],
        "POST",
        &format!("/hook/{sync_ns}/tiny"),
        &[("X-Hub-Signature-256", &signature)],
        body,
    );
    assert_eq!(code, 202);
    wait_applied(&api, "tiny", &second, "the hooked sync").await;
    assert_eq!(
        metric(ports[follower], success),
        0.0,
        "the follower still never syncs"
    );

    // SIGTERM: the leader finishes, gives the Lease up and exits 0; the follower takes over.
    let mut stopping = replicas[leader].take().expect("leader");
    let child = &mut stopping.0;
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let status = child.wait().expect("wait");
    let names = ["replica-a", "replica-b"];
    let leader_log = log_of(&home.path().join(format!("{}.log", names[leader])));
    assert!(status.success(), "{status:?}\n{leader_log}");
    assert!(leader_log.contains("stopped"), "{leader_log}");
    std::fs::write(
        repo.path().join("templates/settings.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: three}\n",
    )
    .expect("write");
    git(repo.path(), &["commit", "-q", "-am", "three"]);
    let third = head(repo.path());
    // The new leader starts its term with a sync of every Sync.
    wait_applied(&api, "tiny", &third, "the new leader's sync").await;
    let holder = leases
        .get(&lease)
        .await
        .expect("lease")
        .spec
        .unwrap_or_default()
        .holder_identity;
    assert_eq!(holder.as_deref(), Some(names[follower]));
    assert!(metric(ports[follower], success) >= 1.0);
    drop(replicas);
}

/// A project in `namespace` with one PersistentVolumeClaim of a storage class nobody provides: it
/// never binds, so a `wait: true` Sync of it waits for its whole timeout.
fn unbindable_repo(namespace: &str) -> tempfile::TempDir {
    let repo = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(repo.path().join("templates")).expect("mkdir");
    std::fs::write(
        repo.path().join("lockstep.yaml"),
        format!("project: slow\nenvironments:\n  dev: {{namespace: {namespace}}}\n"),
    )
    .expect("write");
    std::fs::write(
        repo.path().join("templates/data.yaml"),
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n  storageClassName: nobody-provides-this\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    )
    .expect("write");
    git(repo.path(), &["init", "-q", "-b", "main"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "slow"]);
    repo
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

#[tokio::test]
async fn one_slow_or_broken_sync_never_holds_back_another() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let creds = tempfile::tempdir().expect("tempdir");
    let controller_kubeconfig = install_controller(&cluster, &client, creds.path()).await;
    let shard = format!("isolation-{}", std::process::id());
    let label = serde_json::json!({"lockstep.dev/test-shard": shard});
    let home = tempfile::tempdir().expect("tempdir");

    // Sync A: waits (up to 10 minutes) for a claim that never binds.
    let ns_a = cluster.namespace(&client, "slow").await;
    let target_a = cluster.namespace(&client, "slow-target").await;
    let repo_a = unbindable_repo(&target_a);
    let api_a = syncs(&client, &ns_a);
    let sync = |name: &str, repo: &Path, extra: serde_json::Value| {
        let mut spec = serde_json::json!({
            "source": {"url": format!("file://{}", repo.display())},
            "environment": "dev",
            "interval": "1h",
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        serde_json::json!({
            "apiVersion": "lockstep.dev/v1alpha1", "kind": "Sync",
            "metadata": {"name": name, "labels": label.clone()},
            "spec": spec
        })
    };
    let put = async |api: &Api<DynamicObject>, body: serde_json::Value| {
        let name = body["metadata"]["name"].as_str().expect("name").to_string();
        api.patch(
            &name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(body),
        )
        .await
        .unwrap_or_else(|e| panic!("Sync {name}: {e}"));
    };
    put(
        &api_a,
        sync(
            "slow",
            repo_a.path(),
            serde_json::json!({"wait": true, "timeout": "10m"}),
        ),
    )
    .await;
    let port = free_port();
    let _controller = spawn_loop(
        &controller_kubeconfig,
        &[
            "--watch-label-selector",
            &format!("lockstep.dev/test-shard={shard}"),
        ],
        port,
        home.path(),
        "controller",
        &[],
    );
    // A is applied and now waits for health.
    let claims: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &target_a,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("", "v1", "PersistentVolumeClaim"),
            "persistentvolumeclaims",
        ),
    );
    wait_for("A's claim to be applied", async || {
        claims.get_opt("data").await.is_ok_and(|c| c.is_some())
    })
    .await;

    // Sync B, in another namespace, created while A waits: Ready within 30 s.
    let ns_b = cluster.namespace(&client, "quick").await;
    let target_b = cluster.namespace(&client, "quick-target").await;
    let repo_b = tiny_repo(&target_b);
    let api_b = syncs(&client, &ns_b);
    put_secret(&client, &ns_b, "hook", "token", "quick-s3cret").await;
    let started = std::time::Instant::now();
    put(
        &api_b,
        sync(
            "quick",
            repo_b.path(),
            serde_json::json!({"webhook": {"secretRef": {"name": "hook"}}}),
        ),
    )
    .await;
    let first = head(repo_b.path());
    wait_applied(&api_b, "quick", &first, "B's first sync").await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "B became Ready after {:?}",
        started.elapsed()
    );

    // A webhook for B during A's wait syncs B's new commit within 10 s.
    let second = commit_settings(repo_b.path(), "two");
    let started = std::time::Instant::now();
    send_hook(port, &ns_b, "quick", "quick-s3cret");
    wait_applied(&api_b, "quick", &second, "B's webhook sync").await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "B synced {:?} after its webhook",
        started.elapsed()
    );
    let slow = api_a.get("slow").await.expect("get A").data["status"].clone();
    assert!(
        slow["conditions"].as_array().is_some_and(|cs| cs
            .iter()
            .any(|c| c["type"] == "Reconciling" && c["status"] == "True")),
        "A is still waiting: {slow}"
    );

    // Templates that would exhaust memory or panic a helper, in A's namespace: each ends its own
    // reconcile with RenderFailed; the process keeps running and B keeps syncing.
    for (name, width) in [
        ("hungry", "100000000000"),
        ("overflow", "18446744073709551615"),
    ] {
        let repo = tiny_repo(&target_a);
        std::fs::write(
            repo.path().join("templates/settings.yaml"),
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata:\n  text: |\n{{{{ 'x' | indent({width}) }}}}\n"),
        )
        .expect("write");
        git(repo.path(), &["commit", "-q", "-am", name]);
        put(&api_a, sync(name, repo.path(), serde_json::json!({}))).await;
        wait_for(&format!("{name} to fail"), async || {
            api_a.get(name).await.is_ok_and(|s| {
                s.data["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["reason"] == "RenderFailed")
                })
            })
        })
        .await;
        // The repository's temporary directory goes with `repo`: the Sync has done its work.
    }
    assert_eq!(
        http(port, "GET", "/healthz", &[], b"").0,
        200,
        "the controller runs"
    );
    let third = commit_settings(repo_b.path(), "three");
    send_hook(port, &ns_b, "quick", "quick-s3cret");
    wait_applied(
        &api_b,
        "quick",
        &third,
        "B's sync after the broken templates",
    )
    .await;
}
