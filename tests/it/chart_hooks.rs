//! Chart hooks against the real control plane, where Helm runs them: `pre-install` only on the
//! first apply of a release, `pre-upgrade` on later ones, `post-*` once the release's objects are
//! healthy, in weight order, delete policies honoured, `test` hooks never applied, no hook on a
//! reconcile that changes nothing, and a failed hook stops the apply with its reason. The real
//! ingress-nginx chart (admission-webhook certificate Jobs) renders as `helm template` prints it and
//! converges with its hooks in Helm's order.

use crate::charts::{BIN, helms, objects, write};
use crate::support;

use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams};
use kube::runtime::watcher;

fn lockstep(args: &[&str], helm: &Path, home: &Path) -> Output {
    support::run_isolated(
        Path::new(BIN),
        args,
        &[("LOCKSTEP_HELM", &helm.to_string_lossy())],
        home,
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A Job that finishes at once (kwok completes its pod); with `stuck`, one that can never be
/// scheduled and fails when its deadline passes.
fn job(name: &str, hook: &str, weight: i32, policy: &str, stuck: bool) -> String {
    let placement = if stuck {
        "      nodeSelector: {lockstep-test: nowhere}\n"
    } else {
        ""
    };
    let deadline = if stuck {
        "  activeDeadlineSeconds: 2\n"
    } else {
        ""
    };
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\n  annotations:\n    helm.sh/hook: {hook}\n    helm.sh/hook-weight: \"{weight}\"\n{policy}spec:\n  backoffLimit: 0\n{deadline}  template:\n    spec:\n      restartPolicy: Never\n{placement}      containers:\n        - name: run\n          image: busybox:1.36\n"
    )
}

/// A chart with a Deployment, a ConfigMap carrying `version`, and hooks of every kind.
fn hook_chart(root: &Path) {
    write(
        root,
        "charts/app/Chart.yaml",
        "apiVersion: v2\nname: app\nversion: 0.1.0\n",
    );
    write(root, "charts/app/values.yaml", "version: 1\nfail: false\n");
    write(
        root,
        "charts/app/templates/app.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: app}}\n  template:\n    metadata: {labels: {app: app}}\n    spec:\n      containers:\n        - name: app\n          image: nginx:1.27\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-config\ndata:\n  version: {{ .Values.version | quote }}\n",
    );
    let succeeded = "    helm.sh/hook-delete-policy: hook-succeeded\n";
    let hooks = [
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: app-hooks\n  annotations:\n    helm.sh/hook: pre-install,pre-upgrade\n    helm.sh/hook-weight: \"-5\"\n".to_string(),
        job("app-preinstall", "pre-install", 0, succeeded, false),
        job("app-preupgrade", "pre-upgrade", 0, "", false),
        "{{- if .Values.fail }}\n".to_string() + &job("app-fail", "pre-upgrade", 5, "", true) + "{{- end }}\n",
        job("app-postinstall", "post-install", 0, "", false),
        job("app-postupgrade", "post-upgrade", 0, "", false),
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: app-test\n  annotations:\n    helm.sh/hook: test\nspec:\n  containers:\n    - name: t\n      image: busybox:1.36\n".to_string(),
    ];
    write(
        root,
        "charts/app/templates/hooks.yaml",
        &hooks.join("---\n"),
    );
}

/// Records the names of Jobs and Deployments created in `ns` from now on, in the order the API
/// server created them (their creation `resourceVersion`: two watches deliver in no common order).
async fn record_creations(client: &kube::Client, ns: &str) -> Arc<Mutex<Vec<(u64, String)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let jobs = watcher(
        Api::<Job>::namespaced(client.clone(), ns),
        watcher::Config::default(),
    )
    .map(|e| e.map(|e| names(e, "Job")));
    let deployments = watcher(
        Api::<Deployment>::namespaced(client.clone(), ns),
        watcher::Config::default(),
    )
    .map(|e| e.map(|e| names(e, "Deployment")));
    let mut both = futures::stream::select(jobs, deployments).boxed();
    let out = seen.clone();
    tokio::spawn(async move {
        let mut known = std::collections::BTreeSet::new();
        while let Some(next) = both.next().await {
            for (key, uid) in next.unwrap_or_default() {
                if known.insert(uid) {
                    out.lock().expect("lock").push(key);
                }
            }
        }
    });
    // Let the watches start before anything is created.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    seen
}

fn names<K: kube::Resource>(e: watcher::Event<K>, kind: &str) -> Vec<((u64, String), String)> {
    let one = |o: &K| {
        let version = o
            .meta()
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok());
        (
            (
                version.unwrap_or(u64::MAX),
                format!("{kind}/{}", o.meta().name.clone().unwrap_or_default()),
            ),
            o.meta().uid.clone().unwrap_or_default(),
        )
    };
    match e {
        watcher::Event::Apply(o) | watcher::Event::InitApply(o) => vec![one(&o)],
        _ => Vec::new(),
    }
}

/// Waits a moment for the watch to catch up, then takes what it recorded so far, in creation order.
async fn taken(seen: &Arc<Mutex<Vec<(u64, String)>>>) -> Vec<String> {
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let mut got = std::mem::take(&mut *seen.lock().expect("lock"));
    got.sort();
    got.into_iter().map(|(_, name)| name).collect()
}

#[tokio::test]
async fn hooks_run_as_helm_runs_them_on_install_and_upgrade_and_a_failed_one_stops_the_apply() {
    let helm = need!("helm v3 and v4", helms()).remove(0);
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "chart-hooks").await;
    let project = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let root = project.path();
    write(
        root,
        "lockstep.yaml",
        &format!(
            "project: hooked\nenvironments:\n  dev: {{namespace: {ns}}}\ncharts:\n  app:\n    chart: charts/app\n    values: charts/app.values.yaml\n"
        ),
    );
    write(root, "values.yaml", "version: 1\nfail: false\n");
    write(
        root,
        "charts/app.values.yaml",
        "version: {{ values.version }}\nfail: {{ values.fail }}\n",
    );
    hook_chart(root);
    let dir = root.to_string_lossy().into_owned();
    let kubeconfig = cluster.kubeconfig.to_string_lossy().into_owned();
    let apply = |sets: &[&str]| {
        let mut args = vec![
            "apply",
            "--wait=false",
            "--env",
            "dev",
            "--kubeconfig",
            &kubeconfig,
        ];
        for s in sets {
            args.extend(["--set", s]);
        }
        args.push(&dir);
        lockstep(&args, &helm, home.path())
    };
    let seen = record_creations(&client, &ns).await;
    let jobs = Api::<Job>::namespaced(client.clone(), &ns);

    // Install: pre-install hooks, then the release, then (once healthy) post-install.
    let out = apply(&[]);
    support::assert_success(&out);
    let err = stderr(&out);
    assert_eq!(
        taken(&seen).await,
        [
            "Job/app-preinstall",
            "Deployment/app",
            "Job/app-postinstall"
        ],
        "{err}"
    );
    assert!(err.contains("hooks pre-install of chart app"), "{err}");
    assert!(
        err.contains("a Helm test hook, which lockstep does not run"),
        "{err}"
    );
    assert!(
        Api::<Pod>::namespaced(client.clone(), &ns)
            .get_opt("app-test")
            .await
            .expect("get")
            .is_none(),
        "test hooks are not applied"
    );
    // hook-succeeded: gone; the default (before-hook-creation): kept until the next run.
    assert!(jobs.get_opt("app-preinstall").await.expect("get").is_none());
    assert!(
        jobs.get_opt("app-postinstall")
            .await
            .expect("get")
            .is_some()
    );
    // Hooks are not inventoried (so never pruned).
    let inventory = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("lockstep-inventory-hooked-dev")
        .await
        .expect("inventory");
    let listed = format!("{:?}", inventory.data);
    assert!(
        listed.contains("app-config") && !listed.contains("app-post"),
        "{listed}"
    );

    // A reconcile that changes nothing runs no hook.
    let out = apply(&[]);
    support::assert_success(&out);
    assert_eq!(taken(&seen).await, Vec::<String>::new(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("hooks pre-upgrade"),
        "{}",
        stderr(&out)
    );

    // Upgrade: pre-upgrade, not pre-install; then post-upgrade.
    let out = apply(&["version=2"]);
    support::assert_success(&out);
    assert_eq!(
        taken(&seen).await,
        ["Job/app-preupgrade", "Job/app-postupgrade"],
        "{}",
        stderr(&out)
    );

    // A pre-upgrade hook that fails: the apply stops with its reason; nothing else changes.
    let out = apply(&["version=3", "fail=true"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    for needle in [
        "chart app: pre-upgrade hook",
        "app-fail",
        "DeadlineExceeded",
        "nothing else of the set was applied",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }
    let config = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("app-config")
        .await
        .expect("config");
    assert_eq!(
        config
            .data
            .unwrap_or_default()
            .get("version")
            .map(String::as_str),
        Some("2"),
        "the release was not changed"
    );
    let created = taken(&seen).await;
    assert!(
        !created.contains(&"Job/app-postupgrade".to_string()),
        "{created:?}"
    );
}

#[tokio::test]
async fn the_ingress_nginx_chart_renders_as_helm_does_and_converges_with_its_hooks() {
    let helms = need!("helm v3 and v4", helms());
    let chart = need!("the ingress-nginx chart", support::chart("ingress-nginx"));
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "ingress").await;
    let project = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let root = project.path();
    write(
        root,
        "lockstep.yaml",
        &format!(
            "project: edge\nenvironments:\n  dev: {{namespace: {ns}, kubeVersion: v1.34.4, apiVersions: [policy/v1/PodDisruptionBudget]}}\ncharts:\n  edge:\n    chart: charts/ingress-nginx\n    values: charts/edge.values.yaml\n"
        ),
    );
    // The admission webhook sees only this namespace (other tests create Ingresses), its class
    // is this test's own, and the Service needs no load balancer.
    let values = format!(
        "controller:\n  service:\n    type: ClusterIP\n  ingressClassResource:\n    name: nginx-{ns}\n    controllerValue: k8s.io/ingress-nginx-{ns}\n  admissionWebhooks:\n    namespaceSelector:\n      matchLabels:\n        kubernetes.io/metadata.name: {ns}\n"
    );
    write(root, "charts/edge.values.yaml", &values);
    crate::charts::copy_dir(&chart, &root.join("charts/ingress-nginx"));
    let dir = root.to_string_lossy().into_owned();
    for helm in &helms {
        let out = lockstep(&["render", "--env", "dev", &dir], helm, home.path());
        support::assert_success(&out);
        let ours = objects(&String::from_utf8(out.stdout).expect("utf-8"));
        let theirs = objects(&helm_template_with(helm, &chart, &ns, &values));
        assert!(
            theirs.contains_key("Job/edge-ingress-nginx-admission-create"),
            "{:?}",
            theirs.keys()
        );
        assert_eq!(ours, theirs, "{} object by object", helm.display());
    }
    let seen = record_creations(&client, &ns).await;
    let kubeconfig = cluster.kubeconfig.to_string_lossy().into_owned();
    let out = lockstep(
        &["apply", "--env", "dev", "--kubeconfig", &kubeconfig, &dir],
        &helms[0],
        home.path(),
    );
    cleanup_cluster_objects(&client, &ns).await;
    support::assert_success(&out);
    assert_eq!(
        taken(&seen).await,
        [
            "Job/edge-ingress-nginx-admission-create",
            "Deployment/edge-ingress-nginx-controller",
            "Job/edge-ingress-nginx-admission-patch"
        ],
        "{}",
        stderr(&out)
    );
    // Both Jobs say hook-succeeded: gone once they succeeded.
    let jobs = Api::<Job>::namespaced(client.clone(), &ns);
    assert!(
        jobs.list(&Default::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
}

/// `helm template` with the environment's profile (as lockstep renders it).
fn helm_template_with(helm: &Path, chart: &Path, ns: &str, values: &str) -> String {
    let scratch = tempfile::tempdir().expect("tempdir");
    let file = scratch.path().join("values.yaml");
    std::fs::write(&file, values).expect("write");
    let out = std::process::Command::new(helm)
        .args(["template", "edge"])
        .arg(chart)
        .args([
            "--namespace",
            ns,
            "--include-crds",
            "--kube-version",
            "v1.34.4",
        ])
        .args([
            "--api-versions",
            "policy/v1/PodDisruptionBudget",
            "--values",
        ])
        .arg(&file)
        .env("HOME", scratch.path())
        .output()
        .expect("helm template");
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Deletes the cluster-scoped objects of the ingress-nginx release (its webhook configuration
/// first), so no other test meets them.
async fn cleanup_cluster_objects(client: &kube::Client, ns: &str) {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    use k8s_openapi::api::networking::v1::IngressClass;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let dp = DeleteParams::default();
    let _ = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .delete("edge-ingress-nginx-admission", &dp)
        .await;
    let _ = Api::<IngressClass>::all(client.clone())
        .delete(&format!("nginx-{ns}"), &dp)
        .await;
    for name in ["edge-ingress-nginx", "edge-ingress-nginx-admission"] {
        let _ = Api::<ClusterRole>::all(client.clone())
            .delete(name, &dp)
            .await;
        let _ = Api::<ClusterRoleBinding>::all(client.clone())
            .delete(name, &dp)
            .await;
    }
}
