//! Health: when an applied object counts as ready, and waiting for it.
//!
//! Deployments, StatefulSets, DaemonSets and ReplicaSets: the controller saw the latest generation
//! and every replica is updated and available (a Deployment whose `Progressing` condition says
//! `ProgressDeadlineExceeded` has failed). Jobs: `Complete` (`Failed` fails). PersistentVolumeClaims:
//! `Bound`. CRDs: `Established`. Services of type LoadBalancer: an ingress address. Custom resources:
//! a `Ready` condition, when they have one, must be `True`. A workload whose pods are stuck in a way
//! only a change can fix (`ImagePullBackOff`, `ErrImagePull`, `InvalidImageName`,
//! `CreateContainerConfigError`, `CrashLoopBackOff`) fails at once instead of waiting out the
//! timeout.

use std::time::Duration;

use super::deadline::Deadline;

use kube::api::{DynamicObject, ListParams};
use kube::{Api, Client};
use serde_json::Value as Json;

use super::ApplyError;
use crate::objects::{ObjectId, is_builtin_cluster_scoped};

/// Whether an object's readiness is checked.
pub fn has_rule(id: &ObjectId) -> bool {
    matches!(
        id.kind.as_str(),
        "Deployment"
            | "StatefulSet"
            | "DaemonSet"
            | "ReplicaSet"
            | "Job"
            | "PersistentVolumeClaim"
            | "CustomResourceDefinition"
            | "Service"
    ) || is_custom(id)
}

fn is_custom(id: &ObjectId) -> bool {
    !id.group.is_empty()
        && !id.group.ends_with(".k8s.io")
        && !matches!(
            id.group.as_str(),
            "apps" | "batch" | "policy" | "autoscaling" | "coordination.k8s.io"
        )
        && !is_builtin_cluster_scoped(&id.group, &id.kind)
}

/// An object's health now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Ready.
    Ready,
    /// Not yet, with why.
    Progressing(String),
    /// It will not become ready without a change, with why.
    Failed(String),
}

fn int(v: &Json) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn condition<'a>(obj: &'a Json, kind: &str) -> Option<&'a Json> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// Judges an object by its kind's rule.
pub fn check(id: &ObjectId, obj: &Json) -> Health {
    let status = &obj["status"];
    let observed = int(&status["observedGeneration"]);
    let generation = int(&obj["metadata"]["generation"]);
    let stale = || {
        Health::Progressing(format!(
            "the controller has not seen generation {generation} yet"
        ))
    };
    match id.kind.as_str() {
        "Deployment" => {
            if observed < generation {
                return stale();
            }
            if let Some(c) = condition(obj, "Progressing")
                && c["reason"] == "ProgressDeadlineExceeded"
            {
                return Health::Failed(format!(
                    "ProgressDeadlineExceeded: {}",
                    c["message"].as_str().unwrap_or_default()
                ));
            }
            let want = obj["spec"]["replicas"].as_i64().unwrap_or(1);
            let updated = int(&status["updatedReplicas"]);
            let available = int(&status["availableReplicas"]);
            if updated < want {
                Health::Progressing(format!("{updated} of {want} replicas updated"))
            } else if available < want {
                Health::Progressing(format!("{available} of {want} replicas available"))
            } else {
                Health::Ready
            }
        }
        "StatefulSet" | "ReplicaSet" => {
            if observed < generation {
                return stale();
            }
            let want = obj["spec"]["replicas"].as_i64().unwrap_or(1);
            let ready = int(&status["readyReplicas"]);
            if ready < want {
                Health::Progressing(format!("{ready} of {want} replicas ready"))
            } else {
                Health::Ready
            }
        }
        "DaemonSet" => {
            if observed < generation {
                return stale();
            }
            let want = int(&status["desiredNumberScheduled"]);
            let ready = int(&status["numberReady"]);
            if ready < want {
                Health::Progressing(format!("{ready} of {want} pods ready"))
            } else {
                Health::Ready
            }
        }
        "Job" => {
            if condition(obj, "Complete").is_some_and(|c| c["status"] == "True") {
                Health::Ready
            } else if let Some(c) = condition(obj, "Failed").filter(|c| c["status"] == "True") {
                Health::Failed(format!(
                    "{}: {}",
                    c["reason"].as_str().unwrap_or("Failed"),
                    c["message"].as_str().unwrap_or_default()
                ))
            } else {
                Health::Progressing("not complete".into())
            }
        }
        "PersistentVolumeClaim" => match status["phase"].as_str() {
            Some("Bound") => Health::Ready,
            Some("Lost") => Health::Failed("the claim lost its volume".into()),
            other => Health::Progressing(format!("phase {}", other.unwrap_or("unknown"))),
        },
        "CustomResourceDefinition" => {
            if condition(obj, "Established").is_some_and(|c| c["status"] == "True") {
                Health::Ready
            } else {
                Health::Progressing("not Established".into())
            }
        }
        "Service" => {
            if obj["spec"]["type"] == "LoadBalancer"
                && status["loadBalancer"]["ingress"]
                    .as_array()
                    .is_none_or(Vec::is_empty)
            {
                Health::Progressing("no load balancer address yet".into())
            } else {
                Health::Ready
            }
        }
        _ => match condition(obj, "Ready") {
            Some(c) if c["status"] == "True" => Health::Ready,
            Some(c) => Health::Progressing(format!(
                "Ready is {}: {}",
                c["status"].as_str().unwrap_or("Unknown"),
                c["message"].as_str().unwrap_or_default()
            )),
            None => Health::Ready,
        },
    }
}

/// Container states that do not clear up by waiting.
const STUCK: [&str; 5] = [
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CrashLoopBackOff",
];

/// Why a pod will not become ready without a change, if it is stuck so.
pub fn pod_stuck(pod: &Json) -> Option<String> {
    let statuses = ["initContainerStatuses", "containerStatuses"]
        .iter()
        .filter_map(|k| pod["status"][k].as_array())
        .flatten();
    for c in statuses {
        let waiting = &c["state"]["waiting"];
        if let Some(reason) = waiting["reason"].as_str()
            && STUCK.contains(&reason)
        {
            return Some(format!(
                "pod {} container {}: {reason}: {}",
                pod["metadata"]["name"].as_str().unwrap_or_default(),
                c["name"].as_str().unwrap_or_default(),
                waiting["message"].as_str().unwrap_or_default()
            ));
        }
    }
    None
}

/// For a workload still progressing: the first of its pods that is stuck (pods matched by its
/// `spec.selector.matchLabels` in its namespace).
async fn stuck_pod(client: &Client, id: &ObjectId, obj: &Json) -> Option<String> {
    if !matches!(
        id.kind.as_str(),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet"
    ) {
        return None;
    }
    let labels = obj["spec"]["selector"]["matchLabels"].as_object()?;
    let selector = labels
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(client.clone(), id.namespace.as_deref()?);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .ok()?;
    list.items
        .iter()
        .filter_map(|p| serde_json::to_value(p).ok())
        .find_map(|p| pod_stuck(&p))
}

/// Polls every object until all are ready, one fails, or the deadline passes (a spent one: they
/// are looked at once); returns the objects that are not ready with why.
pub async fn wait(
    client: &Client,
    objects: &[(ObjectId, Api<DynamicObject>)],
    deadline: Deadline,
) -> Result<Vec<(ObjectId, String)>, ApplyError> {
    let mut pending: Vec<usize> = (0..objects.len()).collect();
    let mut last: Vec<(usize, String)> = Vec::new();
    let mut failed: Vec<(ObjectId, String)> = Vec::new();
    // Pods are listed every 4th round (2 s), not every poll: a LIST per workload per half second
    // would double the wait's requests for what a kubelet reports in seconds anyway.
    let mut round: u32 = 0;
    loop {
        round = round.wrapping_add(1);
        let look_at_pods = round.is_multiple_of(4);
        last.clear();
        let mut still = Vec::new();
        for &i in &pending {
            let (id, api) = &objects[i];
            let health = match api.get_opt(&id.name).await? {
                Some(o) => {
                    let v = serde_json::to_value(&o).unwrap_or(Json::Null);
                    match check(id, &v) {
                        Health::Progressing(why) if look_at_pods => {
                            match stuck_pod(client, id, &v).await {
                                Some(stuck) => Health::Failed(stuck),
                                None => Health::Progressing(why),
                            }
                        }
                        other => other,
                    }
                }
                None => Health::Progressing("not found".into()),
            };
            match health {
                Health::Ready => {}
                Health::Progressing(why) => {
                    still.push(i);
                    last.push((i, why));
                }
                Health::Failed(why) => failed.push((id.clone(), why)),
            }
        }
        pending = still;
        if pending.is_empty() || deadline.passed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut out = failed;
    out.extend(
        last.into_iter()
            .map(|(i, why)| (objects[i].0.clone(), format!("timed out: {why}"))),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(kind: &str) -> ObjectId {
        ObjectId {
            group: "apps".into(),
            kind: kind.into(),
            namespace: Some("a".into()),
            name: "x".into(),
        }
    }

    #[test]
    fn deployment_rules() {
        let d = |status: Json| json!({"metadata": {"generation": 2}, "spec": {"replicas": 2}, "status": status});
        assert!(matches!(
            check(&id("Deployment"), &d(json!({"observedGeneration": 1}))),
            Health::Progressing(_)
        ));
        assert_eq!(
            check(
                &id("Deployment"),
                &d(json!({"observedGeneration": 2, "updatedReplicas": 2, "availableReplicas": 2}))
            ),
            Health::Ready
        );
        let stuck = d(
            json!({"observedGeneration": 2, "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"x\" has timed out progressing."}]}),
        );
        assert!(
            matches!(check(&id("Deployment"), &stuck), Health::Failed(m) if m.contains("ProgressDeadlineExceeded"))
        );
    }

    #[test]
    fn pods_stuck_on_their_image_or_config_fail_at_once() {
        let pod = |reason: &str| {
            json!({"metadata": {"name": "web-1"}, "status": {"containerStatuses": [
                {"name": "ok", "state": {"running": {}}},
                {"name": "app", "state": {"waiting": {"reason": reason, "message": "Back-off pulling image \"nope:1\""}}}
            ]}})
        };
        assert_eq!(
            pod_stuck(&pod("ImagePullBackOff")).as_deref(),
            Some("pod web-1 container app: ImagePullBackOff: Back-off pulling image \"nope:1\"")
        );
        assert!(pod_stuck(&pod("CrashLoopBackOff")).is_some());
        assert_eq!(pod_stuck(&pod("ContainerCreating")), None, "still starting");
        assert_eq!(pod_stuck(&json!({"status": {}})), None);
    }

    #[test]
    fn custom_resources_use_the_ready_condition() {
        let cr = ObjectId {
            group: "shop.example.com".into(),
            kind: "Backup".into(),
            namespace: Some("a".into()),
            name: "x".into(),
        };
        assert!(has_rule(&cr));
        assert_eq!(check(&cr, &json!({})), Health::Ready);
        assert!(matches!(
            check(&cr, &json!({"status": {"conditions": [{"type": "Ready", "status": "False", "message": "waiting"}]}})),
            Health::Progressing(m) if m.contains("waiting")
        ));
    }
}
