//! Hooks: objects (a Job, usually) run at a point of the apply instead of applied with the set.
//!
//! - **Environment hooks** — `lockstep.dev/hook: pre-apply | post-apply | on-failure | pre-prune`
//!   on any object (Argo CD's `argocd.argoproj.io/hook: PreSync | PostSync | SyncFail` read as the
//!   first three), ordered by wave, with `lockstep.dev/hook-delete-policy` (or Argo CD's). They run
//!   when the apply changes something (a new revision, an object not as last applied, something
//!   to prune): `pre-apply` after Namespaces and CRDs, once the Secrets, ConfigMaps and
//!   ServiceAccount it names are applied; `post-apply` once the whole set is healthy; `pre-prune`
//!   before anything is deleted; `on-failure` when a write step fails.
//! - **Chart hooks** — Helm's `helm.sh/hook` on chart output, run where Helm runs them:
//!   `pre-install` before the first apply of a release (the inventory holds none of its objects
//!   yet), `pre-upgrade` before later ones, `post-install` / `post-upgrade` once the release's
//!   objects are healthy, in `helm.sh/hook-weight` order, only when the release changes. `test`
//!   hooks are never applied, nor are `pre/post-delete` and `pre/post-rollback` ones.
//!
//! Each hook is waited to its end (a Job `Complete`, a Pod `Succeeded`; other kinds once created).
//! `before-hook-creation` (the default, as in Helm and Argo CD) deletes the previous one first; a
//! live hook whose spec changed is replaced in any case, so a Job's immutable template never wedges
//! a sync. A failed hook stops the apply with its reason. Hooks are not inventoried (never pruned).

use std::time::Duration;

use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, PatchParams};
use serde_json::Value as Json;

use super::deadline::Deadline;
use super::{FIELD_MANAGER, Item, api, health, kind_rank, send};
use crate::objects::ObjectId;

/// Helm's hook annotation.
pub const HOOK: &str = "helm.sh/hook";
/// Helm's hook weight annotation.
pub const WEIGHT: &str = "helm.sh/hook-weight";
/// Helm's hook delete policy annotation.
pub const DELETE_POLICY: &str = "helm.sh/hook-delete-policy";
/// lockstep's hook annotation (environment hooks).
pub const LOCKSTEP_HOOK: &str = "lockstep.dev/hook";
/// lockstep's hook delete policy annotation.
pub const LOCKSTEP_DELETE_POLICY: &str = "lockstep.dev/hook-delete-policy";
/// Argo CD's hook annotation, read as [`LOCKSTEP_HOOK`].
pub const ARGO_HOOK: &str = "argocd.argoproj.io/hook";
/// Argo CD's hook delete policy annotation.
pub const ARGO_DELETE_POLICY: &str = "argocd.argoproj.io/hook-delete-policy";

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Before the first apply of its release.
    PreInstall,
    /// Before a later apply of its release.
    PreUpgrade,
    /// After the first apply, once the release's objects are healthy.
    PostInstall,
    /// After a later apply, once the release's objects are healthy.
    PostUpgrade,
    /// Environment hook: before the set is applied (after Namespaces and CRDs).
    PreApply,
    /// Environment hook: once the whole set is applied and healthy.
    PostApply,
    /// Environment hook: when a write step of the apply failed.
    OnFailure,
    /// Environment hook: before anything is pruned.
    PrePrune,
}

impl Phase {
    /// Helm's name of the phase.
    pub fn name(self) -> &'static str {
        match self {
            Phase::PreInstall => "pre-install",
            Phase::PreUpgrade => "pre-upgrade",
            Phase::PostInstall => "post-install",
            Phase::PostUpgrade => "post-upgrade",
            Phase::PreApply => "pre-apply",
            Phase::PostApply => "post-apply",
            Phase::OnFailure => "on-failure",
            Phase::PrePrune => "pre-prune",
        }
    }

    /// The phase before (`post`: after) an apply of a release that is (not) installed yet.
    pub fn of(installed: bool, post: bool) -> Phase {
        match (installed, post) {
            (false, false) => Phase::PreInstall,
            (true, false) => Phase::PreUpgrade,
            (false, true) => Phase::PostInstall,
            (true, true) => Phase::PostUpgrade,
        }
    }
}

/// A hook's annotations, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// The phases it runs in.
    pub phases: Vec<Phase>,
    /// Its weight (lower first).
    pub weight: i64,
    /// `before-hook-creation`: delete the previous one before creating it.
    pub before_creation: bool,
    /// `hook-succeeded`: delete it once it succeeded.
    pub on_success: bool,
    /// `hook-failed`: delete it once it failed.
    pub on_failure: bool,
    /// An environment hook (lockstep's or Argo CD's annotation), not a chart release's.
    pub environment: bool,
}

/// What an object's hook annotations make of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// An ordinary object of the set.
    Object,
    /// A hook of the apply.
    Hook(Hook),
    /// A hook of a kind lockstep never runs (Helm's `test`, delete, rollback; Argo CD's `Skip`,
    /// `Sync`, `PostDelete`): not applied.
    Skipped(String),
}

/// Reads an object's hook annotations: lockstep's and Argo CD's on any object, Helm's only on
/// chart output (`chart`). `wave` orders environment hooks. A `lockstep.dev/hook` that names no
/// phase is an error.
pub fn role_of(body: &Json, chart: bool, wave: i64) -> Result<Role, String> {
    let annotations = &body["metadata"]["annotations"];
    let text = |key: &str| annotations[key].as_str();
    let names = |list: &str| -> Vec<String> {
        list.split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect()
    };
    if let Some(list) = text(LOCKSTEP_HOOK) {
        let mut phases = Vec::new();
        for name in names(list) {
            phases.push(match name.as_str() {
                "pre-apply" => Phase::PreApply,
                "post-apply" => Phase::PostApply,
                "on-failure" => Phase::OnFailure,
                "pre-prune" => Phase::PrePrune,
                other => {
                    return Err(format!(
                        "annotation {LOCKSTEP_HOOK}: {other:?} is not a hook phase (pre-apply, post-apply, on-failure, pre-prune)"
                    ));
                }
            });
        }
        if phases.is_empty() {
            return Err(format!("annotation {LOCKSTEP_HOOK} names no phase"));
        }
        return Ok(with_policy(phases, wave, text(LOCKSTEP_DELETE_POLICY)).into());
    }
    if let Some(list) = text(ARGO_HOOK) {
        let (phases, others) = phases_of(names(list), |name| match name {
            "PreSync" => Some(Phase::PreApply),
            "PostSync" => Some(Phase::PostApply),
            "SyncFail" => Some(Phase::OnFailure),
            _ => None,
        });
        if phases.is_empty() {
            return Ok(Role::Skipped(format!("Argo CD {}", others.join(","))));
        }
        let policy = text(ARGO_DELETE_POLICY).map(|p| {
            p.replace("BeforeHookCreation", "before-hook-creation")
                .replace("HookSucceeded", "hook-succeeded")
                .replace("HookFailed", "hook-failed")
        });
        return Ok(with_policy(phases, wave, policy.as_deref()).into());
    }
    let Some(list) = text(HOOK).filter(|_| chart) else {
        return Ok(Role::Object);
    };
    let (phases, others) = phases_of(names(list), |name| match name {
        "pre-install" => Some(Phase::PreInstall),
        "pre-upgrade" => Some(Phase::PreUpgrade),
        "post-install" => Some(Phase::PostInstall),
        "post-upgrade" => Some(Phase::PostUpgrade),
        _ => None,
    });
    if phases.is_empty() {
        return Ok(Role::Skipped(format!("Helm {}", others.join(","))));
    }
    let weight = text(WEIGHT)
        .and_then(|w| w.trim().parse().ok())
        .unwrap_or(0);
    let mut hook = with_policy(phases, weight, text(DELETE_POLICY));
    hook.environment = false;
    Ok(hook.into())
}

/// The phases `names` map to, and the names that map to none.
fn phases_of(
    names: Vec<String>,
    phase: impl Fn(&str) -> Option<Phase>,
) -> (Vec<Phase>, Vec<String>) {
    let mut phases = Vec::new();
    let mut others = Vec::new();
    for name in names {
        match phase(&name) {
            Some(p) => phases.push(p),
            None => others.push(name),
        }
    }
    (phases, others)
}

/// A hook with its delete policy read (`before-hook-creation` when none is given, as in Helm
/// and Argo CD).
fn with_policy(phases: Vec<Phase>, weight: i64, policy: Option<&str>) -> Hook {
    let policies: Vec<&str> = policy
        .map(|p| p.split(',').map(str::trim).collect())
        .unwrap_or_default();
    Hook {
        phases,
        weight,
        before_creation: policies.is_empty() || policies.contains(&"before-hook-creation"),
        on_success: policies.contains(&"hook-succeeded"),
        on_failure: policies.contains(&"hook-failed"),
        environment: true,
    }
}

impl From<Hook> for Role {
    fn from(h: Hook) -> Role {
        Role::Hook(h)
    }
}

/// Orders hooks as Helm does: weight, then kind (install order), then name.
pub fn order(a: (&Hook, &ObjectId), b: (&Hook, &ObjectId)) -> std::cmp::Ordering {
    (a.0.weight, kind_rank(&a.1.kind), &a.1.name).cmp(&(
        b.0.weight,
        kind_rank(&b.1.kind),
        &b.1.name,
    ))
}

/// A hook of the set, resolved like any object.
pub(super) struct HookItem<'a> {
    pub(super) hook: Hook,
    pub(super) item: Item<'a>,
}

/// How one hook ended.
pub(super) type Ran = Result<(), String>;

/// Runs one hook: deletes the previous one (`before-hook-creation`), creates it, waits for its
/// end before `deadline`; a failed one is deleted when its policy says `hook-failed`. Errors say
/// what went wrong. (`hook-succeeded` hooks are deleted by [`delete_succeeded`] once every hook of
/// the phase succeeded: a ServiceAccount hook must outlive the Job hook that runs as it.)
pub(super) async fn run(client: &Client, hook: &HookItem<'_>, deadline: Deadline) -> Ran {
    let id = &hook.item.obj.id;
    let api = api(client, &hook.item.target, id.namespace.as_deref());
    if hook.hook.before_creation || changed(&api, &id.name, &hook.item.digest).await? {
        delete_and_wait(&api, &id.name, deadline).await?;
    }
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    send(client, &hook.item, &pp)
        .await
        .map_err(|e| hook.item.refused(&e))?;
    let ended = wait_for_end(client, id, &api, deadline).await;
    if ended.is_err() && hook.hook.on_failure {
        delete_and_wait(&api, &id.name, deadline).await?;
    }
    ended
}

/// Whether a previous run of the hook is still there with another spec (it is replaced then: a
/// Job's template cannot change).
async fn changed(api: &Api<DynamicObject>, name: &str, digest: &str) -> Result<bool, String> {
    match api.get_metadata_opt(name).await {
        Ok(None) => Ok(false),
        Ok(Some(live)) => Ok(live
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(super::APPLIED_ANNOTATION))
            .is_none_or(|d| d != digest)),
        Err(e) => Err(super::reason(&e)),
    }
}

/// What a hook's pod uses by name from its namespace: the Secrets, ConfigMaps and
/// ServiceAccount of its pod spec (a Pod's, or a Job's, CronJob's or workload's template), as
/// (kind, name).
pub fn needs(body: &Json) -> Vec<(String, String)> {
    let spec = [
        &body["spec"]["template"]["spec"],
        &body["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        &body["spec"],
    ]
    .into_iter()
    .find(|s| s["containers"].is_array());
    let Some(spec) = spec else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut add = |kind: &str, name: &Json| {
        if let Some(n) = name.as_str() {
            out.push((kind.to_string(), n.to_string()));
        }
    };
    add("ServiceAccount", &spec["serviceAccountName"]);
    let list = |v: &Json| v.as_array().cloned().unwrap_or_default();
    for c in list(&spec["containers"])
        .into_iter()
        .chain(list(&spec["initContainers"]))
    {
        for e in list(&c["env"]) {
            add("Secret", &e["valueFrom"]["secretKeyRef"]["name"]);
            add("ConfigMap", &e["valueFrom"]["configMapKeyRef"]["name"]);
        }
        for e in list(&c["envFrom"]) {
            add("Secret", &e["secretRef"]["name"]);
            add("ConfigMap", &e["configMapRef"]["name"]);
        }
    }
    for v in list(&spec["volumes"]) {
        add("Secret", &v["secret"]["secretName"]);
        add("ConfigMap", &v["configMap"]["name"]);
        for source in list(&v["projected"]["sources"]) {
            add("Secret", &source["secret"]["name"]);
            add("ConfigMap", &source["configMap"]["name"]);
        }
    }
    for p in list(&spec["imagePullSecrets"]) {
        add("Secret", &p["name"]);
    }
    out
}

/// Deletes the `hook-succeeded` hooks of a phase that succeeded, as Helm does after the phase.
pub(super) async fn delete_succeeded(
    client: &Client,
    hooks: &[&HookItem<'_>],
    deadline: Deadline,
) -> Result<(), (ObjectId, String)> {
    for hook in hooks.iter().filter(|h| h.hook.on_success) {
        let id = &hook.item.obj.id;
        let api = api(client, &hook.item.target, id.namespace.as_deref());
        delete_and_wait(&api, &id.name, deadline)
            .await
            .map_err(|why| (id.clone(), why))?;
    }
    Ok(())
}

/// Deletes an object (its dependents in the background) and waits until it is gone, at most until
/// `deadline`.
pub(super) async fn delete_and_wait(
    api: &Api<DynamicObject>,
    name: &str,
    deadline: Deadline,
) -> Ran {
    let dp = DeleteParams {
        propagation_policy: Some(kube::api::PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(e) => return Err(format!("deleting the previous one: {}", super::reason(&e))),
    }
    loop {
        match api.get_opt(name).await {
            Ok(None) => return Ok(()),
            Ok(Some(_)) if deadline.passed() => {
                return Err(format!(
                    "it was deleted but still there when the apply's timeout ({}s) ran out",
                    deadline.total().as_secs()
                ));
            }
            Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(250)).await,
            Err(e) => return Err(super::reason(&e)),
        }
    }
}

/// Waits until a Job completes or a Pod succeeds (other kinds: at once); a failure gives its
/// reason, with the failed pod's termination message when there is one.
async fn wait_for_end(
    client: &Client,
    id: &ObjectId,
    api: &Api<DynamicObject>,
    deadline: Deadline,
) -> Ran {
    match (id.group.as_str(), id.kind.as_str()) {
        ("batch", "Job") => {
            let watched = [(id.clone(), api.clone())];
            let left = health::wait(client, &watched, deadline)
                .await
                .map_err(|e| e.to_string())?;
            match left.into_iter().next() {
                None => Ok(()),
                Some((_, why)) => {
                    let detail = pod_message(client, id, "job-name").await;
                    Err(with_detail(why, detail))
                }
            }
        }
        ("", "Pod") => loop {
            let pod = api.get_opt(&id.name).await.map_err(|e| super::reason(&e))?;
            let v = pod
                .map(|p| serde_json::to_value(p).unwrap_or(Json::Null))
                .unwrap_or(Json::Null);
            match v["status"]["phase"].as_str() {
                Some("Succeeded") => return Ok(()),
                Some("Failed") => {
                    return Err(with_detail("the pod failed".into(), termination(&v)));
                }
                _ if deadline.passed() => {
                    return Err(format!(
                        "the pod had not finished when the apply's timeout ({}s) ran out",
                        deadline.total().as_secs()
                    ));
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        },
        _ => Ok(()),
    }
}

fn with_detail(why: String, detail: Option<String>) -> String {
    match detail {
        Some(d) => format!("{why}; {d}"),
        None => why,
    }
}

/// The termination message of a failed pod of the Job (pods labelled `label=<job name>`).
async fn pod_message(client: &Client, id: &ObjectId, label: &str) -> Option<String> {
    let pods: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        id.namespace.as_deref()?,
        &kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&()),
    );
    let lp = kube::api::ListParams::default().labels(&format!("{label}={}", id.name));
    let list = pods.list(&lp).await.ok()?;
    list.items.iter().find_map(|p| {
        let v = serde_json::to_value(p).ok()?;
        termination(&v).map(|t| format!("pod {}: {t}", p.metadata.name.clone().unwrap_or_default()))
    })
}

/// A container's termination reason and message, from a pod's status.
fn termination(pod: &Json) -> Option<String> {
    pod["status"]["containerStatuses"]
        .as_array()?
        .iter()
        .find_map(|c| {
            let t = &c["state"]["terminated"];
            let code = t["exitCode"].as_i64()?;
            (code != 0).then(|| {
                let reason = t["reason"].as_str().unwrap_or("Error");
                match t["message"]
                    .as_str()
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                {
                    Some(m) => format!("{reason} (exit {code}): {m}"),
                    None => format!("{reason} (exit {code})"),
                }
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn annotated(a: Json) -> Json {
        json!({"metadata": {"annotations": a}})
    }

    #[test]
    fn hook_annotations_read_as_helm_does() {
        let role_of = |body: &Json| role_of(body, true, 0).unwrap();
        assert_eq!(role_of(&json!({"metadata": {}})), Role::Object);
        let role = role_of(&annotated(json!({
            HOOK: "pre-install, pre-upgrade",
            WEIGHT: "-5",
            DELETE_POLICY: "before-hook-creation,hook-succeeded"
        })));
        assert_eq!(
            role,
            Role::Hook(Hook {
                phases: vec![Phase::PreInstall, Phase::PreUpgrade],
                weight: -5,
                before_creation: true,
                on_success: true,
                on_failure: false,
                environment: false,
            })
        );
        // No policy: before-hook-creation, as in Helm 3.
        let Role::Hook(h) = role_of(&annotated(json!({HOOK: "post-install"}))) else {
            panic!("a hook");
        };
        assert!(h.before_creation && !h.on_success && h.weight == 0);
        assert_eq!(
            role_of(&annotated(json!({HOOK: "test"}))),
            Role::Skipped("Helm test".into())
        );
        assert_eq!(
            role_of(&annotated(json!({HOOK: "pre-delete,post-rollback"}))),
            Role::Skipped("Helm pre-delete,post-rollback".into())
        );
    }

    #[test]
    fn environment_hooks_read_from_lockstep_and_argo_cd_annotations_on_any_object() {
        let hook = role_of(
            &annotated(
                json!({LOCKSTEP_HOOK: "pre-apply,on-failure", LOCKSTEP_DELETE_POLICY: "hook-succeeded"}),
            ),
            false,
            -2,
        );
        assert_eq!(
            hook,
            Ok(Role::Hook(Hook {
                phases: vec![Phase::PreApply, Phase::OnFailure],
                weight: -2,
                before_creation: false,
                on_success: true,
                on_failure: false,
                environment: true,
            }))
        );
        let Ok(Role::Hook(argo)) = role_of(
            &annotated(json!({ARGO_HOOK: "PostSync", ARGO_DELETE_POLICY: "HookFailed"})),
            false,
            0,
        ) else {
            panic!("an Argo CD PostSync hook is a hook");
        };
        assert_eq!(argo.phases, vec![Phase::PostApply]);
        assert!(argo.on_failure && !argo.before_creation && argo.environment);
        assert_eq!(
            role_of(&annotated(json!({ARGO_HOOK: "Skip"})), false, 0),
            Ok(Role::Skipped("Argo CD Skip".into()))
        );
        // Helm's annotation means nothing outside chart output.
        assert_eq!(
            role_of(&annotated(json!({HOOK: "pre-install"})), false, 0),
            Ok(Role::Object)
        );
        let e = role_of(&annotated(json!({LOCKSTEP_HOOK: "before"})), false, 0).unwrap_err();
        assert!(e.contains("\"before\" is not a hook phase"), "{e}");
    }

    #[test]
    fn phases_follow_whether_the_release_is_installed() {
        assert_eq!(Phase::of(false, false), Phase::PreInstall);
        assert_eq!(Phase::of(true, false), Phase::PreUpgrade);
        assert_eq!(Phase::of(false, true), Phase::PostInstall);
        assert_eq!(Phase::of(true, true), Phase::PostUpgrade);
    }

    #[test]
    fn hooks_order_by_weight_then_kind_then_name() {
        let hook = |weight| Hook {
            phases: vec![Phase::PreInstall],
            weight,
            before_creation: true,
            on_success: false,
            on_failure: false,
            environment: false,
        };
        let id = |kind: &str, name: &str| ObjectId {
            group: String::new(),
            kind: kind.into(),
            namespace: None,
            name: name.into(),
        };
        let (h1, h2) = (hook(1), hook(-1));
        let (job, sa) = (id("Job", "a"), id("ServiceAccount", "z"));
        let mut list = [(&h1, &sa), (&h2, &job), (&h1, &job)];
        list.sort_by(|a, b| order(*a, *b));
        assert_eq!(list[0].1.kind, "Job", "lowest weight first");
        assert_eq!(list[1].1.kind, "ServiceAccount", "then kind order");
    }

    #[test]
    fn a_hook_needs_the_secrets_config_maps_and_service_account_its_pod_names() {
        let job = json!({"kind": "Job", "spec": {"template": {"spec": {
            "serviceAccountName": "migrator",
            "containers": [{"env": [
                {"name": "A", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                {"name": "B", "value": "plain"}
            ], "envFrom": [{"configMapRef": {"name": "settings"}}]}],
            "volumes": [{"secret": {"secretName": "tls"}}, {"emptyDir": {}}]
        }}}});
        let mut needs = needs(&job);
        needs.sort();
        let want = [
            ("ConfigMap", "settings"),
            ("Secret", "db"),
            ("Secret", "tls"),
            ("ServiceAccount", "migrator"),
        ];
        assert_eq!(
            needs,
            want.map(|(k, n)| (k.to_string(), n.to_string())).to_vec()
        );
        assert!(super::needs(&json!({"kind": "ConfigMap", "data": {}})).is_empty());
    }

    #[test]
    fn a_failed_containers_message_is_its_reason() {
        let pod = json!({"status": {"containerStatuses": [
            {"state": {"terminated": {"exitCode": 0}}},
            {"state": {"terminated": {"exitCode": 3, "reason": "Error", "message": "migration 42 failed\n"}}}
        ]}});
        assert_eq!(
            termination(&pod).as_deref(),
            Some("Error (exit 3): migration 42 failed")
        );
    }
}
