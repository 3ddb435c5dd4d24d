//! Declared order against the real control plane: waves (lockstep's and Argo CD's annotation),
//! environment hooks (`pre-apply`, `post-apply`, `on-failure`), the Secrets a hook uses applied
//! before it, a changed hook Job replaced, a failed hook's pod reason (kwok fails pods labelled
//! `outcome: fail`), and a plain Job whose template changed: a named error, or replaced with the
//! opt-in. Order is read from the API server: the resourceVersion at which each object was first
//! seen created, complete or available (one etcd revision counter orders every kind).

use crate::apply::Project;
use crate::support;

use std::collections::BTreeSet;
use std::process::Output;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher;

/// `lockstep apply --wait=false` of `env` in `p` with `--set` for each of `sets`.
fn apply(p: &Project, env: &str, sets: &[&str]) -> Output {
    let args: Vec<&str> = sets.iter().flat_map(|s| ["--set", *s]).collect();
    p.apply_in(env, &args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What the API server did in a namespace, as seen by watches: (resourceVersion, "Kind/name
/// milestone"), each milestone once per object (by UID).
type Seen = Arc<Mutex<Vec<(u64, String)>>>;

/// A milestone an object has reached, when it has: a Job `complete`, a Deployment `available`.
fn milestones(kind: &str, o: &DynamicObject) -> Vec<&'static str> {
    let status = &o.data["status"];
    let condition = |t: &str| {
        status["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == t && c["status"] == "True"))
    };
    let mut out = vec!["created"];
    match kind {
        "Job" if condition("Complete") => out.push("complete"),
        "Job" if condition("Failed") => out.push("failed"),
        "Deployment"
            if condition("Available") && status["availableReplicas"].as_i64() >= Some(1) =>
        {
            out.push("available")
        }
        _ => {}
    }
    out
}

/// Starts watches on `kinds` ((group, version, kind, plural)) in `ns` recording [`milestones`].
async fn record(client: &kube::Client, ns: &str, kinds: &[(&str, &str, &str, &str)]) -> Seen {
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let mut streams = Vec::new();
    for &(group, version, kind, plural) in kinds {
        let ar =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        let kind = kind.to_string();
        streams.push(
            watcher(api, watcher::Config::default())
                .map(move |e| (kind.clone(), e))
                .boxed(),
        );
    }
    let mut all = futures::stream::select_all(streams);
    let out = seen.clone();
    tokio::spawn(async move {
        let mut known = BTreeSet::new();
        while let Some((kind, event)) = all.next().await {
            let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = event else {
                continue;
            };
            let uid = o.metadata.uid.clone().unwrap_or_default();
            let rv = o
                .metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or(u64::MAX);
            let name = o.metadata.name.clone().unwrap_or_default();
            for m in milestones(&kind, &o) {
                if known.insert((uid.clone(), m)) {
                    out.lock()
                        .expect("lock")
                        .push((rv, format!("{kind}/{name} {m}")));
                }
            }
        }
    });
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    seen
}

/// What was recorded since the last call, in the API server's order.
async fn taken(seen: &Seen) -> Vec<String> {
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let mut got = std::mem::take(&mut *seen.lock().expect("lock"));
    got.sort();
    got.into_iter().map(|(_, what)| what).collect()
}

const WIDGETS: &str = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.ordering.lockstep.dev\nspec:\n  group: ordering.lockstep.dev\n  names: {kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}\n  scope: Namespaced\n  versions:\n    - name: v1\n      served: true\n      storage: true\n      schema:\n        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}\n";

/// A Job running `image`; its pod is labelled `outcome: fail` (kwok fails it) when `fail`.
fn job(name: &str, annotations: &str, image: &str, fail: &str, env: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\n  annotations:\n{annotations}spec:\n  backoffLimit: 0\n  template:\n    metadata:\n      labels: {{outcome: \"{fail}\"}}\n    spec:\n      restartPolicy: Never\n      containers:\n        - name: run\n          image: {image}\n{env}"
    )
}

fn deployment(name: &str, annotations: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  annotations:\n{annotations}spec:\n  replicas: 1\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers:\n        - name: {name}\n          image: {image}\n"
    )
}

async fn image_of(client: &kube::Client, ns: &str, name: &str) -> String {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("deployment");
    let spec = d.spec.expect("spec").template.spec.expect("pod spec");
    spec.containers[0].image.clone().unwrap_or_default()
}

async fn job_uid(client: &kube::Client, ns: &str, name: &str) -> Option<String> {
    Api::<Job>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .expect("get job")
        .and_then(|j| j.metadata.uid)
}

#[tokio::test]
async fn a_migration_hook_then_waves_each_healthy_before_the_next_and_hooks_only_on_change() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "waves").await;
    let p = Project::new(&cluster, "waves", &ns);
    p.write("values.yaml", "image: nginx:1.27\nfail: \"no\"\n");
    let uses_db = "          env:\n            - name: PASSWORD\n              valueFrom: {secretKeyRef: {name: db, key: password}}\n";
    let templates = [
        WIDGETS.to_string(),
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: not-a-real-one\n".into(),
        job(
            "migrate",
            "    lockstep.dev/hook: pre-apply\n",
            "{{ values.image }}",
            "{{ values.fail }}",
            uses_db,
        ),
        job(
            "notify",
            "    lockstep.dev/hook: on-failure\n",
            "busybox:1.36",
            "no",
            "",
        ),
        job(
            "smoke",
            "    lockstep.dev/hook: post-apply\n    lockstep.dev/hook-delete-policy: hook-succeeded\n",
            "busybox:1.36",
            "no",
            "",
        ),
        deployment("web", "    lockstep.dev/wave: \"1\"\n", "{{ values.image }}"),
        "apiVersion: ordering.lockstep.dev/v1\nkind: Widget\nmetadata:\n  name: w\n  annotations:\n    lockstep.dev/wave: \"2\"\nspec: {size: 1}\n".into(),
    ];
    p.write("templates/app.yaml", &templates.join("---\n"));
    let seen = record(
        &client,
        &ns,
        &[
            ("", "v1", "Secret", "secrets"),
            ("batch", "v1", "Job", "jobs"),
            ("apps", "v1", "Deployment", "deployments"),
            ("ordering.lockstep.dev", "v1", "Widget", "widgets"),
        ],
    )
    .await;

    // First apply: the Secret the migration uses, the migration to its end, wave 1 until the
    // Deployment is available, wave 2, then the post-apply hook.
    let out = apply(&p, "dev", &[]);
    support::assert_success(&out);
    let err = stderr(&out);
    let order = taken(&seen).await;
    let position = |what: &str| {
        order
            .iter()
            .position(|o| o == what)
            .unwrap_or_else(|| panic!("{what} not seen in {order:?}\n{err}"))
    };
    let chain = [
        "Secret/db created",
        "Job/migrate created",
        "Job/migrate complete",
        "Deployment/web created",
        "Deployment/web available",
        "Widget/w created",
        "Job/smoke created",
    ];
    for pair in chain.windows(2) {
        assert!(
            position(pair[0]) < position(pair[1]),
            "{} before {}: {order:?}\n{err}",
            pair[0],
            pair[1]
        );
    }
    assert!(
        !order.iter().any(|o| o.starts_with("Job/notify")),
        "{order:?}"
    );
    assert!(err.contains("hooks pre-apply"), "{err}");
    assert!(err.contains("(wave 2)"), "{err}");
    assert_eq!(job_uid(&client, &ns, "smoke").await, None, "hook-succeeded");
    let migrate = job_uid(&client, &ns, "migrate").await.expect("kept");

    // Nothing changed: no hook runs.
    let out = apply(&p, "dev", &[]);
    support::assert_success(&out);
    assert_eq!(taken(&seen).await, Vec::<String>::new(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("hooks pre-apply"),
        "{}",
        stderr(&out)
    );

    // A new image: the migration runs again, its old Job replaced (its template is immutable).
    let out = apply(&p, "dev", &["image=nginx:1.28"]);
    support::assert_success(&out);
    let order = taken(&seen).await;
    assert!(
        order.contains(&"Job/migrate complete".to_string()),
        "{order:?}\n{}",
        stderr(&out)
    );
    let again = job_uid(&client, &ns, "migrate").await.expect("ran again");
    assert_ne!(again, migrate, "a new Job, not the old one");
    assert_eq!(image_of(&client, &ns, "web").await, "nginx:1.28");

    // The migration fails: the sync stops with the pod's reason, on-failure runs, the
    // Deployment keeps its image.
    let out = apply(&p, "dev", &["image=nginx:1.29", "fail=fail"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    for needle in [
        "pre-apply hook Job.batch",
        "/migrate failed",
        "kwok failed this pod: it is labelled outcome=fail",
        "nothing else of the set was applied",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }
    assert!(
        job_uid(&client, &ns, "notify").await.is_some(),
        "on-failure ran: {err}"
    );
    assert_eq!(image_of(&client, &ns, "web").await, "nginx:1.28");
}

#[tokio::test]
async fn a_job_whose_template_changed_is_a_named_error_or_replaced_with_the_opt_in() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "replace").await;
    let p = Project::new(&cluster, "replace", &ns);
    p.write("values.yaml", "image: busybox:1.36\nreplace: \"false\"\n");
    p.write(
        "templates/report.yaml",
        &job(
            "report",
            "    lockstep.dev/replace: \"{{ values.replace }}\"\n",
            "{{ values.image }}",
            "no",
            "",
        ),
    );
    support::assert_success(&apply(&p, "dev", &[]));
    let first = job_uid(&client, &ns, "report").await.expect("created");

    let out = apply(&p, "dev", &["image=busybox:1.37"]);
    support::fails_saying(
        &out,
        &[
            "/report",
            "spec.template: field is immutable",
            "lockstep.dev/replace: \"true\"",
            "nothing was written",
        ],
    );
    assert_eq!(job_uid(&client, &ns, "report").await, Some(first.clone()));

    let out = apply(&p, "dev", &["image=busybox:1.37", "replace=true"]);
    support::assert_success(&out);
    assert!(
        stderr(&out).contains("replaced: deleted and created again"),
        "{}",
        stderr(&out)
    );
    let job = Api::<Job>::namespaced(client.clone(), &ns)
        .get("report")
        .await
        .expect("job");
    assert_ne!(job.metadata.uid.as_deref(), Some(first.as_str()));
    let image = job
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod")
        .containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("busybox:1.37"));
}

#[tokio::test]
async fn an_argo_cd_repository_applies_in_argo_cds_order_and_prunes_later_waves_first() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "argo-waves").await;
    let p = Project::new(&cluster, "argo", &ns);
    let wave = |w: i32| format!("    argocd.argoproj.io/sync-wave: \"{w}\"\n");
    let cm = |name: &str, w: i32| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  annotations:\n{}data: {{a: b}}\n",
            wave(w)
        )
    };
    let sa = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: b\n  annotations:\n{}",
        wave(-1)
    );
    let service = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: z\n  annotations:\n{}spec:\n  selector: {{app: a}}\n  ports: [{{port: 80}}]\n",
        wave(0)
    );
    let objects = |with_pruned: bool| {
        let mut all = vec![
            job(
                "db-init",
                "    argocd.argoproj.io/hook: PreSync\n    argocd.argoproj.io/hook-delete-policy: HookSucceeded\n",
                "busybox:1.36",
                "no",
                "",
            ),
            job(
                "report",
                "    argocd.argoproj.io/hook: PostSync\n",
                "busybox:1.36",
                "no",
                "",
            ),
            deployment("a", &wave(0), "nginx:1.27"),
            service.clone(),
            cm("keep", 0),
            cm("keep-too", 0),
        ];
        if with_pruned {
            all.push(cm("c", 5));
            all.push(sa.clone());
        }
        all.join("---\n")
    };
    p.write("templates/app.yaml", &objects(true));
    let seen = record(
        &client,
        &ns,
        &[
            ("batch", "v1", "Job", "jobs"),
            ("", "v1", "ServiceAccount", "serviceaccounts"),
            ("", "v1", "Service", "services"),
            ("apps", "v1", "Deployment", "deployments"),
            ("", "v1", "ConfigMap", "configmaps"),
        ],
    )
    .await;
    let out = apply(&p, "dev", &[]);
    support::assert_success(&out);
    let err = stderr(&out);
    // Argo CD's order: phase (PreSync, Sync, PostSync), then wave, then kind, then name; each
    // wave healthy before the next.
    let order: Vec<String> = taken(&seen)
        .await
        .into_iter()
        .filter(|o| {
            !o.starts_with("ServiceAccount/default") && !o.starts_with("ConfigMap/kube-root-ca")
        })
        .filter(|o| !o.starts_with("ConfigMap/lockstep-inventory"))
        .collect();
    // One kind's objects of a wave are sent at once (as Argo CD does): their order is the
    // server's, so the two ConfigMaps are compared as a pair.
    let mut order = order;
    let first = order.iter().position(|o| o.starts_with("ConfigMap/keep"));
    if let Some(i) = first
        && i + 1 < order.len()
    {
        order[i..i + 2].sort();
    }
    assert_eq!(
        order,
        [
            "Job/db-init created",
            "Job/db-init complete",
            "ServiceAccount/b created",
            "ConfigMap/keep created",
            "ConfigMap/keep-too created",
            "Service/z created",
            "Deployment/a created",
            "Deployment/a available",
            "ConfigMap/c created",
            "Job/report created",
            "Job/report complete",
        ],
        "{err}"
    );

    // Removed from wave 5 and wave -1: wave 5's object goes first.
    p.write("templates/app.yaml", &objects(false));
    let out = apply(&p, "dev", &[]);
    support::assert_success(&out);
    let err = stderr(&out);
    let at = |what: &str| {
        err.find(what)
            .unwrap_or_else(|| panic!("{what:?} not in {err}"))
    };
    assert!(
        at(&format!("ConfigMap {ns}/c\n")) < at(&format!("ServiceAccount {ns}/b\n")),
        "{err}"
    );
}

#[tokio::test]
async fn ordering_annotations_that_make_no_sense_are_refused_before_anything_is_written() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "bad-waves").await;
    let p = Project::new(&cluster, "bad", &ns);
    let cm = |name: &str, annotations: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  annotations:\n{annotations}data: {{a: b}}\n"
        )
    };
    p.write(
        "templates/app.yaml",
        &[
            cm("soon", "    lockstep.dev/wave: soon\n"),
            cm(
                "torn",
                "    lockstep.dev/wave: \"1\"\n    argocd.argoproj.io/sync-wave: \"2\"\n",
            ),
            cm("typo", "    lockstep.dev/hook: pre-aply\n"),
        ]
        .join("---\n"),
    );
    let out = apply(&p, "dev", &[]);
    support::fails_saying(
        &out,
        &[
            "templates/app.yaml",
            "lockstep.dev/wave: \"soon\" is not a whole number",
            "lockstep.dev/wave is 1 but argocd.argoproj.io/sync-wave is 2",
            "\"pre-aply\" is not a hook phase",
            "nothing was written",
        ],
    );
    let left = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &ns)
        .list(&Default::default())
        .await
        .expect("list");
    assert!(
        left.items
            .iter()
            .all(|c| c.metadata.name.as_deref() == Some("kube-root-ca.crt")),
        "nothing was written"
    );
}

#[tokio::test]
async fn an_environment_applies_only_once_the_environments_it_depends_on_are_applied_and_healthy() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let platform = cluster.namespace(&client, "platform").await;
    let team = cluster.namespace(&client, "team").await;
    let p = Project::new(&cluster, "layers", &platform);
    p.write(
        "lockstep.yaml",
        &format!(
            "project: layers\nenvironments:\n  platform: {{namespace: {platform}}}\n  team: {{namespace: {team}, dependsOn: [platform]}}\n"
        ),
    );
    p.write(
        "templates/app.yaml",
        &deployment("app", "    lockstep.dev/wave: \"0\"\n", "nginx:1.27"),
    );
    let out = apply(&p, "team", &[]);
    support::fails_saying(
        &out,
        &[
            "environment team depends on platform",
            "it is not applied in this cluster",
            "lockstep apply --env platform",
            "nothing was applied",
        ],
    );
    assert!(
        Api::<Deployment>::namespaced(client.clone(), &team)
            .get_opt("app")
            .await
            .expect("get")
            .is_none()
    );
    support::assert_success(&apply(&p, "platform", &[]));
    let out = apply(&p, "team", &[]);
    support::assert_success(&out);
    assert!(
        stderr(&out).contains("wait for environment platform (dependsOn)"),
        "{}",
        stderr(&out)
    );

    // Environments that depend on each other: refused when the project is read.
    p.write(
        "lockstep.yaml",
        &format!(
            "project: layers\nenvironments:\n  platform: {{namespace: {platform}, dependsOn: [team]}}\n  team: {{namespace: {team}, dependsOn: [platform]}}\n"
        ),
    );
    support::fails_saying(
        &apply(&p, "team", &[]),
        &["lockstep.yaml", "in a cycle: platform → team → platform"],
    );
}

#[tokio::test]
async fn a_failed_post_apply_hook_runs_again_on_the_next_apply_until_it_succeeds() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "post-retry").await;
    let p = Project::new(&cluster, "post", &ns);
    p.write("values.yaml", "fail: fail\n");
    p.write(
        "templates/app.yaml",
        &[
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: b}\n"
                .to_string(),
            job(
                "check",
                "    lockstep.dev/hook: post-apply\n",
                "busybox:1.36",
                "{{ values.fail }}",
                "",
            ),
        ]
        .join("---\n"),
    );
    let out = apply(&p, "dev", &[]);
    support::fails_saying(&out, &["post-apply hook Job.batch", "/check failed"]);
    let first = job_uid(&client, &ns, "check").await.expect("ran");
    // Nothing changed, but the post-apply hook has not succeeded yet: it runs again.
    let out = apply(&p, "dev", &[]);
    support::fails_saying(&out, &["post-apply hook Job.batch", "/check failed"]);
    let second = job_uid(&client, &ns, "check").await.expect("ran again");
    assert_ne!(first, second);
    // It succeeds: then a no-op apply runs no hook.
    support::assert_success(&apply(&p, "dev", &["fail=no"]));
    let third = job_uid(&client, &ns, "check").await.expect("ran");
    let out = apply(&p, "dev", &["fail=no"]);
    support::assert_success(&out);
    assert!(
        !stderr(&out).contains("hooks post-apply"),
        "{}",
        stderr(&out)
    );
    assert_eq!(job_uid(&client, &ns, "check").await, Some(third));
}

#[tokio::test]
async fn an_on_failure_hook_gets_the_secrets_it_uses_even_when_the_first_hook_fails() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "on-failure-needs").await;
    let p = Project::new(&cluster, "alerts", &ns);
    p.write("values.yaml", "{}\n");
    let uses_alerts = "          envFrom:\n            - secretRef: {name: alerts}\n";
    p.write(
        "templates/app.yaml",
        &[
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: alerts\nstringData:\n  webhook: not-a-real-one\n".to_string(),
            job("migrate", "    lockstep.dev/hook: pre-apply\n", "busybox:1.36", "fail", ""),
            job(
                "notify",
                "    lockstep.dev/hook: on-failure\n",
                "busybox:1.36",
                "no",
                uses_alerts,
            ),
            deployment("web", "", "nginx:1.27"),
        ]
        .join("---\n"),
    );
    let seen = record(
        &client,
        &ns,
        &[
            ("", "v1", "Secret", "secrets"),
            ("batch", "v1", "Job", "jobs"),
            ("apps", "v1", "Deployment", "deployments"),
        ],
    )
    .await;
    // The very first step fails (the pre-apply migration): the on-failure hook still finds the
    // Secret it uses, applied before any hook ran; nothing else of the set was applied.
    let out = apply(&p, "dev", &[]);
    support::fails_saying(&out, &["pre-apply hook Job.batch", "/migrate failed"]);
    let order = taken(&seen).await;
    let at = |what: &str| order.iter().position(|o| o == what);
    let (secret, notify) = (at("Secret/alerts created"), at("Job/notify created"));
    assert!(
        secret.is_some() && notify.is_some() && secret < notify,
        "the Secret before the hook: {order:?}\n{}",
        stderr(&out)
    );
    assert_eq!(at("Deployment/web created"), None, "{order:?}");
}

// Two workers: the apply blocks one (a child process) while the other lets the held Job go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_bounds_the_whole_apply_not_each_wait() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "one-budget").await;
    let p = Project::new(&cluster, "budget", &ns);
    p.write("values.yaml", "image: busybox:1.36\nstuck: \"no\"\n");
    // A pre-apply hook held by a finalizer (its replacement waits until the test lets it go),
    // then, once stuck, a claim no provisioner binds in wave 1 before a ConfigMap in wave 2.
    let held = "    lockstep.dev/hook: pre-apply\n    lockstep.dev/hook-delete-policy: before-hook-creation\n  finalizers: [ordering.lockstep.dev/hold]\n";
    p.write(
        "templates/app.yaml",
        &[
            job("hold", held, "{{ values.image }}", "no", ""),
            "{% if values.stuck == \"yes\" %}apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: never\n  annotations:\n    lockstep.dev/wave: \"1\"\nspec:\n  storageClassName: none\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Mi}}\n{% endif %}".to_string(),
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: after\n  annotations:\n    lockstep.dev/wave: \"2\"\ndata: {a: b}\n".to_string(),
        ]
        .join("---\n"),
    );
    support::assert_success(&apply(&p, "dev", &["image=busybox:1.36"]));
    let jobs = Api::<Job>::namespaced(client.clone(), &ns);
    // Let the held Job go 3 s into the next apply: its replacement spends 3 s of the budget.
    let release = {
        let jobs = jobs.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
            let patch = serde_json::json!({"metadata": {"finalizers": null}});
            jobs.patch(
                "hold",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .expect("release the held Job");
        })
    };
    let started = std::time::Instant::now();
    let out = p.apply_in(
        "dev",
        &[
            "--set",
            "image=busybox:1.37",
            "--set",
            "stuck=yes",
            "--timeout",
            "6s",
        ],
    );
    let took = started.elapsed();
    release.await.expect("released");
    support::fails_saying(&out, &["PersistentVolumeClaim", "/never", "wave 1"]);
    // Each wait on its own budget would take 3 s + 6 s; one budget ends the apply at 6 s.
    assert!(
        took < std::time::Duration::from_millis(8500),
        "took {took:?}: {}",
        stderr(&out)
    );
    assert!(
        took >= std::time::Duration::from_secs(5),
        "took {took:?}: {}",
        stderr(&out)
    );
    // Clean up the new hook Job's finalizer so the namespace can go.
    let patch = serde_json::json!({"metadata": {"finalizers": null}});
    let _ = jobs
        .patch(
            "hold",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await;
}
