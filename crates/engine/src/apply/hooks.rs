//! Helm chart hooks, run where Helm runs them: `pre-install` before the first apply of a release
//! (the inventory holds none of its objects yet), `pre-upgrade` before later ones, `post-install` /
//! `post-upgrade` once the release's objects are healthy. Hooks run in weight order (then kind,
//! then name), each waited to its end (a Job `Complete`, a Pod `Succeeded`; other kinds once
//! created), with `helm.sh/hook-delete-policy` honoured (`before-hook-creation` by default, as in
//! Helm). A failed hook stops the apply with its reason. `test` hooks are never applied, nor are
//! `pre/post-delete` and `pre/post-rollback` ones (no Helm release is deleted or rolled back).
//! Hooks are not inventoried (never pruned) and run only when their release changes: a reconcile
//! that changes nothing runs no Job again.

use std::time::Duration;

use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, PatchParams};
use serde_json::Value as Json;

use super::{FIELD_MANAGER, Item, api, health, kind_rank, send};
use crate::objects::ObjectId;

/// Helm's hook annotation.
pub const HOOK: &str = "helm.sh/hook";
/// Helm's hook weight annotation.
pub const WEIGHT: &str = "helm.sh/hook-weight";
/// Helm's hook delete policy annotation.
pub const DELETE_POLICY: &str = "helm.sh/hook-delete-policy";

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
}

impl Phase {
    /// Helm's name of the phase.
    pub fn name(self) -> &'static str {
        match self {
            Phase::PreInstall => "pre-install",
            Phase::PreUpgrade => "pre-upgrade",
            Phase::PostInstall => "post-install",
            Phase::PostUpgrade => "post-upgrade",
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
}

/// What an object's `helm.sh/hook` annotation makes of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// An ordinary object of the set.
    Object,
    /// A hook of the apply.
    Hook(Hook),
    /// A hook of a kind lockstep never runs (`test`, delete, rollback): not applied.
    Skipped(String),
}

/// Reads an object's hook annotations. Only chart output has hooks.
pub fn role_of(body: &Json) -> Role {
    let annotations = &body["metadata"]["annotations"];
    let Some(list) = annotations[HOOK].as_str() else {
        return Role::Object;
    };
    let mut phases = Vec::new();
    let mut others = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name {
            "pre-install" => phases.push(Phase::PreInstall),
            "pre-upgrade" => phases.push(Phase::PreUpgrade),
            "post-install" => phases.push(Phase::PostInstall),
            "post-upgrade" => phases.push(Phase::PostUpgrade),
            other => others.push(other.to_string()),
        }
    }
    if phases.is_empty() {
        return Role::Skipped(others.join(","));
    }
    let weight = annotations[WEIGHT]
        .as_str()
        .and_then(|w| w.trim().parse().ok())
        .unwrap_or(0);
    let policies: Vec<&str> = annotations[DELETE_POLICY]
        .as_str()
        .map(|p| p.split(',').map(str::trim).collect())
        .unwrap_or_default();
    Hook {
        phases,
        weight,
        // Helm's default when no policy is given.
        before_creation: policies.is_empty() || policies.contains(&"before-hook-creation"),
        on_success: policies.contains(&"hook-succeeded"),
        on_failure: policies.contains(&"hook-failed"),
    }
    .into()
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
/// end within `timeout`; a failed one is deleted when its policy says `hook-failed`. Errors say
/// what went wrong. (`hook-succeeded` hooks are deleted by [`delete_succeeded`] once every hook of
/// the phase succeeded: a ServiceAccount hook must outlive the Job hook that runs as it.)
pub(super) async fn run(client: &Client, hook: &HookItem<'_>, timeout: Duration) -> Ran {
    let id = &hook.item.obj.id;
    let api = api(client, &hook.item.target, id.namespace.as_deref());
    if hook.hook.before_creation {
        delete_and_wait(&api, &id.name, timeout).await?;
    }
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    send(client, &hook.item, &pp)
        .await
        .map_err(|e| hook.item.refused(&e))?;
    let ended = wait_for_end(client, id, &api, timeout).await;
    if ended.is_err() && hook.hook.on_failure {
        delete_and_wait(&api, &id.name, timeout).await?;
    }
    ended
}

/// Deletes the `hook-succeeded` hooks of a phase that succeeded, as Helm does after the phase.
pub(super) async fn delete_succeeded(
    client: &Client,
    hooks: &[&HookItem<'_>],
    timeout: Duration,
) -> Result<(), (ObjectId, String)> {
    for hook in hooks.iter().filter(|h| h.hook.on_success) {
        let id = &hook.item.obj.id;
        let api = api(client, &hook.item.target, id.namespace.as_deref());
        delete_and_wait(&api, &id.name, timeout)
            .await
            .map_err(|why| (id.clone(), why))?;
    }
    Ok(())
}

/// Deletes an object (its dependents in the background) and waits until it is gone.
async fn delete_and_wait(api: &Api<DynamicObject>, name: &str, timeout: Duration) -> Ran {
    let dp = DeleteParams {
        propagation_policy: Some(kube::api::PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(e) => return Err(format!("deleting the previous one: {}", super::reason(&e))),
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match api.get_opt(name).await {
            Ok(None) => return Ok(()),
            Ok(Some(_)) if tokio::time::Instant::now() >= deadline => {
                return Err(format!(
                    "it was not gone within {}s of its deletion",
                    timeout.as_secs()
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
    timeout: Duration,
) -> Ran {
    match (id.group.as_str(), id.kind.as_str()) {
        ("batch", "Job") => {
            let watched = [(id.clone(), api.clone())];
            let left = health::wait(client, &watched, timeout)
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
        ("", "Pod") => {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let pod = api.get_opt(&id.name).await.map_err(|e| super::reason(&e))?;
                let v = pod
                    .map(|p| serde_json::to_value(p).unwrap_or(Json::Null))
                    .unwrap_or(Json::Null);
                match v["status"]["phase"].as_str() {
                    Some("Succeeded") => return Ok(()),
                    Some("Failed") => {
                        return Err(with_detail("the pod failed".into(), termination(&v)));
                    }
                    _ if tokio::time::Instant::now() >= deadline => {
                        return Err(format!(
                            "the pod did not finish within {}s",
                            timeout.as_secs()
                        ));
                    }
                    _ => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        }
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
            })
        );
        // No policy: before-hook-creation, as in Helm 3.
        let Role::Hook(h) = role_of(&annotated(json!({HOOK: "post-install"}))) else {
            panic!("a hook");
        };
        assert!(h.before_creation && !h.on_success && h.weight == 0);
        assert_eq!(
            role_of(&annotated(json!({HOOK: "test"}))),
            Role::Skipped("test".into())
        );
        assert_eq!(
            role_of(&annotated(json!({HOOK: "pre-delete,post-rollback"}))),
            Role::Skipped("pre-delete,post-rollback".into())
        );
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
