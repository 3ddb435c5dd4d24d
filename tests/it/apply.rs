//! `lockstep apply` and `lockstep diff` against the real control plane from `scripts/cluster`
//! (kube-apiserver + etcd + controller-manager + scheduler + kwok), through the real binary.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};

const BIN: &str = env!("CARGO_BIN_EXE_lockstep");
const DEMO_RECIPIENT: &str = "age1cunssxzmelyguczf39cjyuztac9mh3wlk6hgqv0s8m7khtfyw47qxrz3zg";

fn demo_key() -> PathBuf {
    support::repo_root().join("keys-example/age.key")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A project in a temp dir whose one environment `dev` renders into `namespace`.
pub(crate) struct Project {
    dir: tempfile::TempDir,
    home: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Project {
    pub(crate) fn new(cluster: &support::Cluster, name: &str, namespace: &str) -> Project {
        let p = Project {
            dir: tempfile::tempdir().expect("tempdir"),
            home: tempfile::tempdir().expect("tempdir"),
            kubeconfig: cluster.kubeconfig.clone(),
        };
        p.write(
            "lockstep.yaml",
            &format!("project: {name}\nenvironments:\n  dev: {{namespace: {namespace}}}\n"),
        );
        p
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn write(&self, rel: &str, content: &str) {
        let path = self.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, content).expect("write");
    }

    /// Encrypts `plain` to `recipient` as the environment's secrets file (plaintext only on stdin);
    /// returns the encrypted text.
    fn secrets(&self, recipient: &str, plain: &str) -> String {
        const FILE: &str = "environments/dev/secrets.yaml";
        let sealed = support::encrypt_stdin(Path::new(BIN), recipient, FILE, plain);
        let text = String::from_utf8(sealed).expect("utf-8");
        self.write(FILE, &text);
        text
    }

    fn remove(&self, rel: &str) {
        std::fs::remove_file(self.path().join(rel)).expect("remove");
    }

    /// `args` and the environment, cluster, key and project options every run here takes.
    fn full_args(&self, args: &[&str], kubeconfig: &Path) -> Vec<String> {
        self.full_args_in("dev", args, kubeconfig)
    }

    /// [`Project::full_args`] for environment `env`.
    fn full_args_in(&self, env: &str, args: &[&str], kubeconfig: &Path) -> Vec<String> {
        let mut full: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        full.extend([
            "--env".into(),
            env.into(),
            "--kubeconfig".into(),
            kubeconfig.to_string_lossy().into_owned(),
            "--identity".into(),
            demo_key().to_string_lossy().into_owned(),
            self.path().to_string_lossy().into_owned(),
        ]);
        full
    }

    fn run_with(&self, args: &[&str], kubeconfig: &Path) -> Output {
        let full = self.full_args(args, kubeconfig);
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        support::run_isolated(Path::new(BIN), &full, &[], self.home.path())
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, &self.kubeconfig.clone())
    }

    /// Runs without any identity (a reviewer without the key).
    fn run_keyless(&self, args: &[&str]) -> Output {
        let dir = self.path().to_string_lossy().into_owned();
        let kc = self.kubeconfig.to_string_lossy().into_owned();
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--env", "dev", "--kubeconfig", &kc, &dir]);
        support::run_isolated(Path::new(BIN), &full, &[], self.home.path())
    }

    fn apply(&self, extra: &[&str]) -> Output {
        self.apply_in("dev", extra)
    }

    /// `lockstep apply --wait=false` of environment `env` with `extra` arguments.
    pub(crate) fn apply_in(&self, env: &str, extra: &[&str]) -> Output {
        let mut args = vec!["apply", "--wait=false"];
        args.extend_from_slice(extra);
        let full = self.full_args_in(env, &args, &self.kubeconfig);
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        support::run_isolated(Path::new(BIN), &full, &[], self.home.path())
    }
}

fn cm_template(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  key: {{{{ values.{value} | default(\"v\") }}}}\n"
    )
}

async fn versions(api: &Api<ConfigMap>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = api
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|c| {
            (
                c.metadata.name.unwrap_or_default(),
                c.metadata.resource_version.unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn the_shop_applies_with_secrets_decrypted_in_the_cluster_only_and_reapplies_without_writes()
{
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let ns = format!("shop-{}", std::process::id());
    let p = Project::new(&cluster, "shop", &ns);
    // The bundled example, pointed at a namespace of its own.
    support::copy_shop(p.path());
    let out = p.apply(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The CRD is cluster-scoped and may exist from an earlier run (or a Sync of another test, which
    // names itself on it); everything else is new.
    let err = stderr(&out);
    let configured: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("configured ") && !l.contains("CustomResourceDefinition"))
        .collect();
    assert!(configured.is_empty(), "{configured:?}");
    assert!(
        stderr(&out).contains("created    Secret"),
        "{}",
        stderr(&out)
    );

    // The Secret holds the decrypted value; the custom resource of the set's CRD exists.
    let decrypted = support::run_isolated(
        Path::new(BIN),
        &[
            "decrypt",
            "--extract",
            "[\"web\"][\"session_key\"]",
            &p.path()
                .join("environments/dev/secrets.yaml")
                .to_string_lossy(),
        ],
        &[("SOPS_AGE_KEY_FILE", &demo_key().to_string_lossy())],
        p.home.path(),
    );
    assert!(decrypted.status.success(), "{}", stderr(&decrypted));
    let session_key = stdout(&decrypted).trim().to_string();
    assert!(session_key.len() > 20);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let app = secrets.get("shop-app").await.expect("shop-app");
    let data = app.data.expect("data");
    assert_eq!(data["SESSION_KEY"].0, session_key.as_bytes());
    let labels = app.metadata.labels.expect("labels");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "lockstep");
    assert_eq!(labels["lockstep.dev/project"], "shop");
    let backups: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("shop.example.com", "v1", "Backup"),
            "backups",
        ),
    );
    assert!(
        backups
            .get_opt("postgres-nightly")
            .await
            .expect("get")
            .is_some()
    );

    // No plaintext on the terminal or on disk (project, home).
    let b64 = base64::engine::general_purpose::STANDARD.encode(&session_key);
    let seen = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        !seen.contains(&session_key) && !seen.contains(&b64),
        "secret printed"
    );
    for root in [p.path(), p.home.path()] {
        for file in support::files_under(root) {
            let bytes = std::fs::read(&file).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains(&session_key),
                "plaintext in {}",
                file.display()
            );
        }
    }

    // A second apply writes nothing: every resourceVersion stays.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let before = versions(&cms).await;
    let secret_rv = secrets
        .get("shop-app")
        .await
        .expect("get")
        .metadata
        .resource_version;
    let again = p.apply(&[]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("0 created, 0 configured, 14 unchanged"),
        "{}",
        stdout(&again)
    );
    assert_eq!(versions(&cms).await, before);
    assert_eq!(
        secrets
            .get("shop-app")
            .await
            .expect("get")
            .metadata
            .resource_version,
        secret_rv
    );
}

#[tokio::test]
async fn only_changed_objects_are_written_removed_ones_are_pruned_and_foreign_ones_are_kept() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "prune").await;
    let p = Project::new(&cluster, "prune", &ns);
    for n in ["a", "b", "c", "d", "e"] {
        p.write(&format!("templates/{n}.yaml"), &cm_template(n, n));
    }
    let out = p.apply(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let before = versions(&cms).await;

    // One value changes: one object is configured, the others keep their resourceVersion.
    let out = p.apply(&["--set", "a=changed"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("0 created, 1 configured, 4 unchanged"),
        "{}",
        stdout(&out)
    );
    let after = versions(&cms).await;
    let changed: Vec<&String> = before
        .iter()
        .zip(&after)
        .filter(|(x, y)| x.1 != y.1)
        .map(|(x, _)| &x.0)
        .collect();
    assert_eq!(changed, ["a"]);

    // Someone takes over `e` (drops our labels); then `d` and `e` leave the set.
    cms.patch(
        "e",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": null}})),
    )
    .await
    .expect("relabel");
    p.remove("templates/d.yaml");
    p.remove("templates/e.yaml");
    let out = p.apply(&["--set", "a=changed"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("pruned     ConfigMap"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("does not carry this environment's lockstep labels"),
        "{}",
        stderr(&out)
    );
    assert!(
        cms.get_opt("d").await.expect("get").is_none(),
        "d is pruned"
    );
    assert!(
        cms.get_opt("e").await.expect("get").is_some(),
        "the foreign e stays"
    );

    // Everything leaves the set: refused without --allow-mass-prune, nothing changes.
    for n in ["a", "b", "c"] {
        p.remove(&format!("templates/{n}.yaml"));
    }
    let out = p.apply(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("prune refused: 3 of 3"),
        "{}",
        stderr(&out)
    );
    assert!(cms.get_opt("a").await.expect("get").is_some());
    let out = p.apply(&["--allow-mass-prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(cms.get_opt("a").await.expect("get").is_none());
}

#[tokio::test]
async fn one_invalid_object_means_nothing_is_written() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "invalid").await;
    let p = Project::new(&cluster, "invalid", &ns);
    p.write("templates/good.yaml", &cm_template("good", "x"));
    p.write(
        "templates/bad.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: bad\nspec:\n  replicas: \"three\"\n",
    );
    let out = p.apply(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("failed validation; nothing was written"),
        "{err}"
    );
    assert!(err.contains("Deployment.apps"), "{err}");
    assert!(err.contains("templates/bad.yaml"), "{err}");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    assert!(
        cms.get_opt("good").await.expect("get").is_none(),
        "nothing may be written"
    );
}

/// The API server quotes an invalid value in its refusal; for an object carrying decrypted values
/// (a whole-file SOPS manifest) the value must not reach the output, while the field stays named.
#[tokio::test]
async fn server_refusals_of_decrypted_objects_never_carry_their_values() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "redact").await;
    let p = Project::new(&cluster, "redact", &ns);
    let marker = "MARKER-Not_A-Host.example";
    let plain = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: upstream\nspec:\n  type: ExternalName\n  externalName: {marker}\n"
    );
    let sealed = support::encrypt_stdin(
        Path::new(BIN),
        DEMO_RECIPIENT,
        "manifests/upstream.yaml",
        &plain,
    );
    p.write(
        "manifests/upstream.yaml",
        &String::from_utf8(sealed).expect("utf-8"),
    );
    for command in [&["apply", "--wait=false"][..], &["diff"][..]] {
        let out = p.run(command);
        let err = stderr(&out);
        assert_ne!(out.status.code(), Some(0), "{command:?}: {err}");
        assert!(err.contains("spec.externalName"), "{command:?}: {err}");
        assert!(err.contains("<hidden"), "{command:?}: {err}");
        assert!(
            !err.contains(marker) && !stdout(&out).contains(marker),
            "{command:?} shows the decrypted value: {err}"
        );
    }
}

#[tokio::test]
async fn field_conflicts_are_reported_and_force_conflicts_takes_them() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "conflict").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    cms.patch(
        "shared",
        &PatchParams::apply("other-tool"),
        &Patch::Apply(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": {"key": "theirs"}
        })),
    )
    .await
    .expect("other manager");
    let p = Project::new(&cluster, "conflict", &ns);
    p.write("templates/shared.yaml", &cm_template("shared", "k"));
    let out = p.apply(&[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("conflict") && err.contains("other-tool") && err.contains(".data.key"),
        "{err}"
    );
    assert_eq!(
        cms.get("shared").await.expect("get").data.expect("data")["key"],
        "theirs"
    );
    let out = p.apply(&["--force-conflicts"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        cms.get("shared").await.expect("get").data.expect("data")["key"],
        "v"
    );
}

#[tokio::test]
async fn a_wrong_key_applies_nothing_and_says_which_recipients_would_do() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "wrongkey").await;
    let p = Project::new(&cluster, "wrongkey", &ns);
    p.write("templates/cm.yaml", &cm_template("plain", "x"));
    p.write(
        "templates/s.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData:\n  p: {{ secrets.db.password }}\n",
    );
    // Encrypted to a fresh key that is not the one apply is given.
    let other = tempfile::tempdir().expect("tempdir");
    let key = other.path().join("other.txt");
    let made = support::run_isolated(
        Path::new(BIN),
        &["keygen", "-o", &key.to_string_lossy()],
        &[],
        other.path(),
    );
    assert!(made.status.success());
    let public = std::fs::read_to_string(&key)
        .expect("key")
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(str::to_string))
        .expect("public");
    p.secrets(&public, "db:\n  password: not-for-this-key\n");
    let out = p.apply(&[]);
    assert_eq!(out.status.code(), Some(128), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("environments/dev/secrets.yaml") && err.contains(&public),
        "{err}"
    );
    assert!(
        err.contains(DEMO_RECIPIENT),
        "names the identity tried: {err}"
    );
    assert!(err.contains("nothing was applied"), "{err}");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    assert!(cms.get_opt("plain").await.expect("get").is_none());

    // Encrypted to the right key but changed by hand afterwards: the MAC refuses it.
    let text = p.secrets(DEMO_RECIPIENT, "db:\n  password: right-key\n");
    let at = text.find("data:").expect("a value") + 6;
    let mut bytes = text.into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    p.write(
        "environments/dev/secrets.yaml",
        &String::from_utf8(bytes).expect("utf-8"),
    );
    let out = p.apply(&[]);
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains("environments/dev/secrets.yaml") && err.contains("nothing was applied"),
        "{err}"
    );
    assert!(cms.get_opt("plain").await.expect("get").is_none());
}

#[tokio::test]
async fn a_namespace_bound_service_account_applies_there_and_is_told_what_it_may_not_do() {
    let cluster = need!("control plane", support::cluster());
    let admin = cluster.admin().await;
    let ns = cluster.namespace(&admin, "tenant").await;
    let other = cluster.namespace(&admin, "tenant-other").await;
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(admin.clone(), &ns);
    roles
        .patch(
            "deployer",
            &PatchParams::apply("test"),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "deployer"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "patch", "create", "delete"]}]
            })),
        )
        .await
        .expect("role");
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
        Api::namespaced(admin.clone(), &ns);
    bindings
        .patch(
            "deployer",
            &PatchParams::apply("test"),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "deployer"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "deployer"},
                "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": ns}]
            })),
        )
        .await
        .expect("binding");
    let dir = tempfile::tempdir().expect("tempdir");
    let sa = cluster
        .service_account_kubeconfig(&admin, &ns, "deployer", dir.path())
        .await;
    let p = Project::new(&cluster, "tenant", &ns);
    p.write("templates/cm.yaml", &cm_template("mine", "x"));
    let out = p.run_with(&["apply", "--wait=false"], &sa);
    assert!(out.status.success(), "{}", stderr(&out));
    p.write(
        "templates/elsewhere.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: theirs\n  namespace: {other}\n"
        ),
    );
    let out = p.run_with(&["apply", "--wait=false"], &sa);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("forbidden"), "{err}");
    assert!(
        err.contains(&format!("system:serviceaccount:{ns}:deployer")),
        "{err}"
    );
    assert!(err.contains("configmaps") && err.contains(&other), "{err}");
}

#[tokio::test]
async fn wait_reports_available_deployments_and_the_reason_one_cannot_progress() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "health").await;
    let p = Project::new(&cluster, "health", &ns);
    let deployment = |name: &str, extra: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 1\n  progressDeadlineSeconds: 2\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n{extra}      containers:\n        - name: c\n          image: example.com/app:1\n"
        )
    };
    p.write("templates/ok.yaml", &deployment("ok", ""));
    let out = p.run(&["apply", "--timeout", "60s", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json output");
    assert_eq!(doc["counts"]["created"], 1, "{doc}");
    assert_eq!(doc["counts"]["notReady"], 0, "{doc}");
    assert_eq!(doc["objects"][0]["kind"], "Deployment", "{doc}");
    p.write(
        "templates/stuck.yaml",
        &deployment("stuck", "      nodeSelector: {no-such-label: \"true\"}\n"),
    );
    let out = p.run(&["apply", "--timeout", "60s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("stuck") && err.contains("ProgressDeadlineExceeded"),
        "{err}"
    );

    // A pod that cannot pull its image fails the wait at once, not after the timeout. (No node
    // runs this pod; its container status is set as the kubelet would report it.)
    p.remove("templates/stuck.yaml");
    let pull = deployment("pull", "      nodeSelector: {no-such-label: \"true\"}\n")
        .replace("progressDeadlineSeconds: 2", "progressDeadlineSeconds: 600");
    p.write("templates/pull.yaml", &pull);
    let started = std::time::Instant::now();
    let child = std::process::Command::new(BIN)
        .args(p.full_args(&["apply", "--timeout", "300s"], &p.kubeconfig))
        .env("HOME", p.home.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn apply");
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
    let lp = kube::api::ListParams::default().labels("app=pull");
    let pod = loop {
        if let Some(pod) = pods.list(&lp).await.expect("pods").items.into_iter().next() {
            break pod;
        }
        assert!(
            started.elapsed().as_secs() < 60,
            "no pod for the Deployment"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let name = pod.metadata.name.clone().expect("pod name");
    let status = serde_json::json!({"status": {"containerStatuses": [{
        "name": "c", "image": "example.com/app:1", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"example.com/app:1\""}}
    }]}});
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("set the container status");
    let out = child.wait_with_output().expect("apply ends");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("container c: ImagePullBackOff: Back-off pulling image"),
        "{err}"
    );
    assert!(
        started.elapsed().as_secs() < 60,
        "failed fast, not after the 300 s timeout: {:?}",
        started.elapsed()
    );
}

/// A project in a new namespace (`name-…`) with a ConfigMap `cm` (value `x`) and a Secret `s`
/// whose `p` is the secret `db.password`, set to `password`; returns the namespace and the project.
async fn cm_and_secret(
    cluster: &support::Cluster,
    client: &kube::Client,
    name: &str,
    password: &str,
) -> (String, Project) {
    let ns = cluster.namespace(client, name).await;
    let p = Project::new(cluster, name, &ns);
    p.write("templates/cm.yaml", &cm_template("cm", "x"));
    p.write(
        "templates/s.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData:\n  p: {{ secrets.db.password }}\n",
    );
    p.secrets(DEMO_RECIPIENT, &format!("db:\n  password: {password}\n"));
    (ns, p)
}

#[tokio::test]
async fn diff_exits_0_without_changes_1_with_them_and_never_shows_secret_values() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let (_, p) = cm_and_secret(&cluster, &client, "diff", "first-Secret-Value").await;
    let out = p.run(&["diff"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "new objects are changes: {}",
        stderr(&out)
    );
    let out = p.apply(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = p.run(&["diff"]);
    support::assert_no_changes(&out);
    p.secrets(DEMO_RECIPIENT, "db:\n  password: second-Secret-Value\n");
    let out = p.run(&["diff", "--set", "x=new"]);
    assert_eq!(out.status.code(), Some(1));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains("+  key: new"), "{text}");
    assert!(text.contains("p: (hidden, changed)"), "{text}");
    let b64 = base64::engine::general_purpose::STANDARD;
    for secret in ["first-Secret-Value", "second-Secret-Value"] {
        assert!(
            !text.contains(secret) && !text.contains(&b64.encode(secret)),
            "{text}"
        );
    }
}

#[tokio::test]
async fn diff_reports_what_it_would_prune_and_adopt_and_shows_only_changed_lines() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "diffprune").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let p = Project::new(&cluster, "diffprune", &ns);
    p.write("templates/keep.yaml", &cm_template("keep", "x"));
    p.write("templates/gone.yaml", &cm_template("gone", "y"));
    let out = p.apply(&[]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A deletion from Git is a change: previewed as a prune, exit 1 (it was exit 0, silent).
    p.remove("templates/gone.yaml");
    let out = p.run(&["diff"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(
        stdout(&out),
        format!("would prune ConfigMap {ns}/gone\n"),
        "{}",
        stderr(&out)
    );
    let out = p.run(&["diff", "-o", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["counts"]["pruned"], 1, "{doc}");
    assert!(
        cms.get_opt("gone").await.expect("get").is_some(),
        "a preview deletes nothing"
    );
    let out = p.apply(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        cms.get_opt("gone").await.expect("get").is_none(),
        "the apply prunes it"
    );

    // A one-value change shows exactly that value, whatever order the server returns fields in.
    let out = p.run(&["diff", "--set", "x=changed"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        support::changed_lines(&stdout(&out)),
        ["-  key: v", "+  key: changed"],
        "{}",
        stdout(&out)
    );

    // An object made by hand is compared with what is there, and said to be adopted.
    let hand: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "byhand"},
        "data": {"key": "typed-by-hand"}
    }))
    .expect("configmap");
    cms.create(&Default::default(), &hand)
        .await
        .expect("create by hand");
    p.write("templates/byhand.yaml", &cm_template("byhand", "z"));
    // The field is owned by whoever made it: the refusal names the way out, and is a preview's.
    let out = p.run(&["diff"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("conflict"), "{err}");
    assert!(
        err.contains(
            "other field managers own these fields: pass --force-conflicts to take them over"
        ),
        "{err}"
    );
    assert!(
        !err.contains("nothing was written"),
        "a diff writes nothing anyway: {err}"
    );
    let out = p.run(&["diff", "--force-conflicts"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("-  key: typed-by-hand\n+  key: v\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "would adopt ConfigMap {ns}/byhand: it exists without this environment's lockstep labels"
        )),
        "{text}"
    );
    let out = p.run(&["diff", "--force-conflicts", "-o", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        doc["counts"]["configured"], 1,
        "adopting configures, not creates: {doc}"
    );

    // A Secret once made with client-side `kubectl apply` keeps its values in an annotation: an
    // adopting diff must not print them (on either side).
    let value = "S3CR3T-by-kubectl";
    let b64 = base64::engine::general_purpose::STANDARD.encode(value);
    let last = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kubectl-made", "namespace": ns}, "data": {"k": b64}});
    let made: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kubectl-made", "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": last.to_string()}},
        "data": {"k": b64}
    }))
    .expect("secret");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(&Default::default(), &made)
        .await
        .expect("create by hand");
    p.write(
        "templates/kubectl-made.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: kubectl-made, labels: {team: a}}\ndata: {k: bmV3}\n",
    );
    let out = p.run(&["diff", "--force-conflicts"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        all.contains(&format!("would adopt Secret {ns}/kubectl-made")),
        "{all}"
    );
    assert!(!all.contains(value) && !all.contains(&b64), "{all}");
    assert!(!all.contains("last-applied-configuration"), "{all}");
    assert_eq!(doc["counts"]["created"], 0, "{doc}");
}

#[tokio::test]
async fn a_reviewer_without_the_key_previews_with_secrets_compared_sealed() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let (ns, p) = cm_and_secret(&cluster, &client, "keyless", "first-Keyless-Value").await;
    let out = p.apply(&[]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Nothing changed: exit 0 without any key, and it says how Secrets were compared.
    let out = p.run_keyless(&["diff"]);
    support::assert_no_changes(&out);
    assert!(
        stderr(&out).contains("compared sealed (no identity at hand opens")
            && stderr(&out).contains("environments/dev/secrets.yaml"),
        "{}",
        stderr(&out)
    );

    // A new secret value and a new plain value: both show, the Secret as sealed and changed.
    p.secrets(DEMO_RECIPIENT, "db:\n  password: second-Keyless-Value\n");
    let out = p.run_keyless(&["diff", "--set", "x=new"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("+  key: new"), "{text}");
    assert!(
        text.contains(&format!("Secret {ns}/s: (sealed, changed)\n")),
        "{text}"
    );
    // The same preview with the key at hand, when asked for.
    let out = p.run(&["diff", "--sealed", "--set", "x=new"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stdout(&out), text);
    let b64 = base64::engine::general_purpose::STANDARD;
    let all = format!("{text}{}", stderr(&out));
    for secret in ["first-Keyless-Value", "second-Keyless-Value"] {
        assert!(
            !all.contains(secret) && !all.contains(&b64.encode(secret)),
            "{all}"
        );
    }
    // Applied (with the key), the new digest is recorded: the keyless preview is clean again.
    let out = p.apply(&["--set", "x=new"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = p.run_keyless(&["diff", "--set", "x=new"]);
    support::assert_no_changes(&out);
}

/// Two applies of one environment at once: each inventory write carries the resourceVersion it
/// read, so the later one fails (and is run again) instead of dropping the earlier one's entries.
#[tokio::test]
async fn an_inventory_write_from_a_stale_read_is_refused() {
    use lockstep::apply::{ApplyError, Inventory, InventoryEntry, inventory};
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "inventory-race").await;
    let api = inventory::api(&client, &ns);
    let entry = |name: &str| InventoryEntry {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: Some(ns.clone()),
        name: name.into(),
    };
    let mut first = Inventory::default();
    first.entries.insert(entry("one"));
    let rv = first
        .write(&api, "race", "dev", None)
        .await
        .expect("created");
    // A second apply that read nothing (before the first wrote) may not create it over the first.
    let late = Inventory::default();
    assert!(matches!(
        late.write(&api, "race", "dev", None).await,
        Err(ApplyError::InventoryChanged)
    ));
    let read = Inventory::read(&api, "race", "dev").await.expect("read");
    assert_eq!(read.resource_version, rv);
    let mut second = read.clone();
    second.entries.insert(entry("two"));
    second
        .write(&api, "race", "dev", read.resource_version.as_deref())
        .await
        .expect("written from a fresh read");
    // The first apply, writing from its stale read, is refused; the second's entries stay.
    assert!(matches!(
        first.write(&api, "race", "dev", rv.as_deref()).await,
        Err(ApplyError::InventoryChanged)
    ));
    let now = Inventory::read(&api, "race", "dev").await.expect("read");
    assert!(now.entries.contains(&entry("two")));
    // Two first applies at once: exactly one creates the inventory, the other is told.
    for round in 0..5 {
        let environment = format!("first-{round}");
        let (mut a, mut b) = (Inventory::default(), Inventory::default());
        a.entries.insert(entry("a"));
        b.entries.insert(entry("b"));
        let (ra, rb) = tokio::join!(
            a.write(&api, "race", &environment, None),
            b.write(&api, "race", &environment, None)
        );
        let refused = [&ra, &rb]
            .iter()
            .filter(|r| matches!(r, Err(ApplyError::InventoryChanged)))
            .count();
        assert_eq!(
            (ra.is_ok() as usize + rb.is_ok() as usize, refused),
            (1, 1),
            "round {round}: {ra:?} {rb:?}"
        );
        let kept = Inventory::read(&api, "race", &environment)
            .await
            .expect("read");
        let winner = if ra.is_ok() { &a } else { &b };
        assert_eq!(kept.entries, winner.entries, "round {round}");
    }
}

/// A CRD whose kind another CRD already claims is never Established: the apply says so at once
/// instead of waiting out its timeout (holding a controller slot all that while).
#[tokio::test]
async fn a_crd_whose_names_collide_fails_at_once() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "crd-collide").await;
    let group = format!("collide{}.example.com", std::process::id());
    let crd = |plural: &str, kind: &str| {
        format!(
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {{name: {plural}.{group}}}\nspec:\n  group: {group}\n  scope: Namespaced\n  names: {{plural: {plural}, singular: {}, kind: {kind}, listKind: {kind}List}}\n  versions:\n    - name: v1\n      served: true\n      storage: true\n      schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}\n",
            plural.trim_end_matches('s')
        )
    };
    let first = Project::new(&cluster, "first", &ns);
    first.write("templates/crd.yaml", &crd("widgets", "Widget"));
    let out = first.apply(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let second = Project::new(&cluster, "second", &ns);
    second.write("templates/crd.yaml", &crd("gadgets", "Widget"));
    let started = std::time::Instant::now();
    let out = second.apply(&["--timeout", "5m"]);
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!("gadgets.{group} is not accepted")) && err.contains("Widget"),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}
