//! The in-cluster controller: the `Sync` custom resource and its reconcile, which runs the same
//! pipeline stages as `lockstep apply` — fetch (Git, [`crate::source::git`]) → render → decrypt (with
//! identities from a Kubernetes Secret) → apply/prune — and reports the outcome on the resource's
//! status, with a Reason per step.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

pub mod server;

use crate::apply::{self, Action, Options};
use crate::keys::KeyRing;
use crate::render::{self, Request};
use crate::source::git::{self, Revision};

/// What a `Sync` follows and applies.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "lockstep.dev",
    version = "v1alpha1",
    kind = "Sync",
    namespaced,
    status = "SyncStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.lastAppliedRevision"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SyncSpec {
    /// The Git repository and the directory holding `lockstep.yaml`.
    pub source: SourceSpec,
    /// The environment to render (a key of `environments:` in `lockstep.yaml`).
    pub environment: String,
    /// How often to sync (e.g. `5m`); default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Delete objects that left the set (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<bool>,
    /// Do nothing while true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    /// Where the age/SSH identities that open the secrets are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decryption: Option<Decryption>,
    /// A webhook that triggers a sync: a Secret with key `token`, used as the GitHub HMAC-SHA256
    /// key (`X-Hub-Signature-256`) or compared with GitLab's `X-Gitlab-Token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,
    /// Between commits: `correct` (default) re-applies objects changed by hand, taking fields back
    /// from other managers; `warn` only reports them (new commits are still applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_mode: Option<DriftMode>,
}

/// What to do about objects changed by hand.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DriftMode {
    /// Re-apply them.
    Correct,
    /// Report them on the status and in an Event; change nothing.
    Warn,
}

/// Webhook settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    /// A Secret in the Sync's namespace with the key `token`.
    pub secret_ref: LocalRef,
}

/// A Git source.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    /// Repository URL (https, ssh or file).
    pub url: String,
    /// Branch, tag or commit (default: the remote's default branch).
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<GitRef>,
    /// Directory of the project in the repository (default: the root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// One of branch, tag or commit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitRef {
    /// A branch name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// A tag name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// A full commit id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// Decryption settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Decryption {
    /// A Secret in the Sync's namespace holding identities under any key names.
    pub secret_ref: LocalRef,
}

/// A reference to an object in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct LocalRef {
    /// Its name.
    pub name: String,
}

/// What the controller last did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// `Ready`, `Reconciling`, `Stalled`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The last commit applied successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_revision: Option<String>,
    /// The last commit tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_revision: Option<String>,
    /// Objects in the applied set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<i64>,
    /// The inventory ConfigMap (`namespace/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<String>,
    /// How long the last sync took, e.g. `1.2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_duration: Option<String>,
}

/// A status condition (the `metav1.Condition` shape).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Reconciling` or `Stalled`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason naming the pipeline step (e.g. `RenderFailed`, `Succeeded`).
    pub reason: String,
    /// What happened, for people. Never holds a secret value.
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation this condition describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The `Sync` CRD as YAML (the committed `templates/crds/sync.yaml` must equal this).
pub fn crd_yaml() -> String {
    let crd = Sync::crd();
    let value = serde_json::to_value(&crd).unwrap_or_default();
    let yaml = yaml_serde::to_value(&value).unwrap_or(yaml_serde::Value::Null);
    format!(
        "# Generated by `lockstep controller --print-crd` from the Rust types; do not edit.\n{}",
        crate::render::emit::to_yaml(&yaml)
    )
}

/// How a reconcile ended, as the Ready condition's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Everything applied.
    Succeeded,
    /// The Git fetch failed.
    FetchFailed,
    /// Render found problems.
    RenderFailed,
    /// The decryption Secret or the secrets did not open.
    DecryptFailed,
    /// The dry run refused objects.
    ValidationFailed,
    /// Applying failed.
    ApplyFailed,
    /// Pruning was refused or failed.
    PruneFailed,
    /// Suspended.
    Suspended,
    /// `driftMode: warn` found objects changed by hand (nothing was written).
    DriftDetected,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Succeeded => "Succeeded",
            Reason::FetchFailed => "FetchFailed",
            Reason::RenderFailed => "RenderFailed",
            Reason::DecryptFailed => "DecryptFailed",
            Reason::ValidationFailed => "ValidationFailed",
            Reason::ApplyFailed => "ApplyFailed",
            Reason::PruneFailed => "PruneFailed",
            Reason::Suspended => "Suspended",
            Reason::DriftDetected => "DriftDetected",
        }
    }
}

/// Loads identities from every value of a Secret (any key name; detected by content: values that
/// are not identities are skipped).
fn identities(secret: &Secret) -> KeyRing {
    let mut ring = KeyRing::default();
    for (key, value) in secret.data.iter().flatten() {
        let _ = ring.add_text(&value.0, &format!("secret key {key}"));
    }
    ring
}

/// The outcome of one reconcile.
struct Outcome {
    reason: Reason,
    message: String,
    revision: Option<String>,
    objects: Option<usize>,
    inventory: Option<String>,
    /// Objects created, configured or pruned.
    changed: usize,
}

async fn run_pipeline(client: &Client, sync: &Sync, cache: &Path) -> Outcome {
    let fail = |reason, message: String, revision: Option<String>| Outcome {
        reason,
        message,
        revision,
        objects: None,
        inventory: None,
        changed: 0,
    };
    let spec = &sync.spec;
    let ns = sync.namespace().unwrap_or_else(|| "default".into());
    let rev = match &spec.source.git_ref {
        Some(GitRef {
            commit: Some(c), ..
        }) => Revision::Commit(c.clone()),
        Some(GitRef { tag: Some(t), .. }) => Revision::Tag(t.clone()),
        Some(GitRef {
            branch: Some(b), ..
        }) => Revision::Branch(b.clone()),
        _ => Revision::Default,
    };
    let url = spec.source.url.clone();
    let path = spec.source.path.clone().unwrap_or_default();
    let dir = cache.join(format!("{ns}.{}", sync.name_any()));
    let fetched = tokio::task::spawn_blocking(move || git::fetch(&url, &rev, &path, &dir)).await;
    let fetched = match fetched {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => return fail(Reason::FetchFailed, e.to_string(), None),
        Err(e) => return fail(Reason::FetchFailed, e.to_string(), None),
    };
    let revision = Some(fetched.revision.clone());
    let rendered = match render::render(
        &fetched.snapshot,
        &Request {
            env: spec.environment.clone(),
            ..Request::default()
        },
    ) {
        Ok(r) => r,
        Err(d) => return fail(Reason::RenderFailed, d.to_string(), revision),
    };
    let ring = match &spec.decryption {
        Some(d) => {
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
            match secrets.get_opt(&d.secret_ref.name).await {
                Ok(Some(s)) => identities(&s),
                Ok(None) => {
                    return fail(
                        Reason::DecryptFailed,
                        format!(
                            "decryption Secret {ns}/{} does not exist",
                            d.secret_ref.name
                        ),
                        revision,
                    );
                }
                Err(e) => return fail(Reason::DecryptFailed, apply::reason(&e), revision),
            }
        }
        None => KeyRing::default(),
    };
    let set = match crate::decrypt::decrypt(&rendered, &fetched.snapshot, &ring) {
        Ok(s) => s,
        Err(e) => {
            let message = match &e {
                crate::decrypt::DecryptError::Sops {
                    file,
                    source:
                        crate::sops::SopsError::NoMatchingIdentity {
                            recipients, tried, ..
                        },
                } => format!(
                    "{file}: no identity in the decryption Secret opens it; it is encrypted to {}; the Secret holds {}",
                    recipients.join(", "),
                    if tried.is_empty() {
                        "no identities".to_string()
                    } else {
                        tried
                            .iter()
                            .map(|(p, _)| p.clone())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
                other => other.to_string(),
            };
            return fail(Reason::DecryptFailed, message, revision);
        }
    };
    drop(ring);
    // Between commits in warn mode, only look: a dry run reports what differs from Git.
    let already_applied = sync
        .status
        .as_ref()
        .and_then(|s| s.last_applied_revision.as_deref())
        == Some(fetched.revision.as_str());
    let warn_only = already_applied && spec.drift_mode == Some(DriftMode::Warn);
    let opts = Options {
        prune: spec.prune.unwrap_or(true),
        wait: false,
        revision: fetched.revision.clone(),
        // GitOps: Git wins over hand edits, including fields another manager took over.
        force_conflicts: true,
        dry_run: warn_only,
        ..Options::default()
    };
    if warn_only {
        return match apply::apply(client, &set, &opts, &mut |_| {}).await {
            Ok(summary) => {
                let drifted: Vec<String> = summary
                    .objects
                    .iter()
                    .filter(|(_, a, _)| {
                        matches!(a, Action::Created | Action::Configured | Action::Pruned)
                    })
                    .map(|(id, a, _)| {
                        format!(
                            "{id} ({})",
                            if *a == Action::Configured {
                                "changed"
                            } else if *a == Action::Created {
                                "missing"
                            } else {
                                "left the set"
                            }
                        )
                    })
                    .collect();
                if drifted.is_empty() {
                    Outcome {
                        reason: Reason::Succeeded,
                        message: format!("revision {} is applied; no drift", fetched.revision),
                        revision,
                        objects: Some(set.objects.len()),
                        inventory: None,
                        changed: 0,
                    }
                } else {
                    let n = drifted.len();
                    Outcome {
                        reason: Reason::DriftDetected,
                        message: format!(
                            "{n} object(s) differ from revision {} (driftMode: warn, nothing changed): {}",
                            fetched.revision,
                            drifted.join(", ")
                        ),
                        revision,
                        objects: Some(set.objects.len()),
                        inventory: None,
                        changed: 0,
                    }
                }
            }
            Err(e) => fail(Reason::ValidationFailed, e.to_string(), revision),
        };
    }
    match apply::apply(client, &set, &opts, &mut |_| {}).await {
        Ok(summary) => {
            let changed = summary
                .objects
                .iter()
                .filter(|(_, a, _)| {
                    matches!(a, Action::Created | Action::Configured | Action::Pruned)
                })
                .count();
            Outcome {
                reason: Reason::Succeeded,
                message: format!(
                    "applied revision {}: {} object(s), {changed} changed",
                    fetched.revision,
                    set.objects.len()
                ),
                revision,
                objects: Some(set.objects.len()),
                inventory: Some(format!(
                    "{}/{}",
                    set.namespace,
                    apply::inventory::name(&set.project, &set.environment)
                )),
                changed,
            }
        }
        Err(e) => {
            let reason = match &e {
                apply::ApplyError::Validation { .. } | apply::ApplyError::UnknownKind(_) => {
                    Reason::ValidationFailed
                }
                apply::ApplyError::MassPrune { .. } => Reason::PruneFailed,
                _ => Reason::ApplyFailed,
            };
            fail(reason, e.to_string(), revision)
        }
    }
}

/// What one reconcile did, for logs and metrics.
#[derive(Debug, Clone)]
pub struct Report {
    /// Whether it succeeded.
    pub ok: bool,
    /// How long it took.
    pub duration: Duration,
    /// Objects in the applied set (when known).
    pub objects: Option<usize>,
    /// The last applied revision.
    pub revision: Option<String>,
}

/// Reconciles one `Sync` now and writes its status.
pub async fn reconcile(client: &Client, sync: &Sync, cache: &Path) -> Result<Report, kube::Error> {
    let ns = sync.namespace().unwrap_or_else(|| "default".into());
    let api: Api<Sync> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    let outcome = if sync.spec.suspend == Some(true) {
        Outcome {
            reason: Reason::Suspended,
            message: "suspended".into(),
            revision: None,
            objects: None,
            inventory: None,
            changed: 0,
        }
    } else {
        run_pipeline(client, sync, cache).await
    };
    let ok = outcome.reason == Reason::Succeeded;
    // An Event when something changed or failed (repeats fold into one series).
    if !ok || outcome.changed > 0 {
        publish_event(client, sync, outcome.reason, &outcome.message).await;
    }
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let generation = sync.metadata.generation;
    let previous = sync.status.clone().unwrap_or_default();
    let ready_status = if ok { "True" } else { "False" };
    let transition = previous
        .conditions
        .iter()
        .find(|c| {
            c.type_ == "Ready" && c.status == ready_status && c.reason == outcome.reason.as_str()
        })
        .map_or(now.clone(), |c| c.last_transition_time.clone());
    let status = SyncStatus {
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: ready_status.into(),
            reason: outcome.reason.as_str().into(),
            message: outcome.message,
            last_transition_time: transition,
            observed_generation: generation,
        }],
        observed_generation: generation,
        last_applied_revision: if ok {
            outcome.revision.clone()
        } else {
            previous.last_applied_revision
        },
        last_attempted_revision: outcome.revision.or(previous.last_attempted_revision),
        objects: outcome.objects.map(|n| n as i64).or(previous.objects),
        inventory: outcome.inventory.or(previous.inventory),
        last_sync_duration: Some(format!("{:.1}s", started.elapsed().as_secs_f64())),
    };
    api.patch_status(
        &sync.name_any(),
        &PatchParams::apply(apply::FIELD_MANAGER).force(),
        &Patch::Apply(json!({
            "apiVersion": "lockstep.dev/v1alpha1",
            "kind": "Sync",
            "status": &status,
        })),
    )
    .await?;
    Ok(Report {
        ok,
        duration: started.elapsed(),
        objects: status.objects.map(|n| n as usize),
        revision: status.last_applied_revision.clone(),
    })
}

/// Annotation that asks for a sync now (`lockstep sync NAME` sets it to the time of asking).
pub const SYNC_REQUESTED: &str = "lockstep.dev/sync-requested";

/// The default interval between syncs of one `Sync`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);

/// First retry delay after a failed sync; doubles with each failure, up to the interval.
pub const RETRY_BASE: Duration = Duration::from_secs(5);

/// What the loop remembers about one `Sync` between polls.
#[derive(Debug, Clone)]
pub struct Schedule {
    last_run: Instant,
    generation: Option<i64>,
    requested: Option<String>,
    failures: u32,
}

/// The interval of a Sync, spread by up to ±10 % (the same for a Sync every time, different between
/// Syncs) so many Syncs do not fetch at once.
pub fn interval_of(sync: &Sync) -> Duration {
    let base = sync
        .spec
        .interval
        .as_deref()
        .and_then(|s| apply::parse_duration(s).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_INTERVAL);
    let uid = sync.metadata.uid.clone().unwrap_or_default();
    let spread = uid
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
        % 21;
    base.mul_f64(0.9 + spread as f64 / 100.0)
}

fn requested(sync: &Sync) -> Option<String> {
    sync.annotations().get(SYNC_REQUESTED).cloned()
}

/// Whether a Sync should be reconciled now: never seen, its spec changed, a sync was requested, or
/// its interval (after a failure: the back-off) has passed.
pub fn due(sync: &Sync, schedule: Option<&Schedule>, now: Instant) -> bool {
    let Some(s) = schedule else {
        return true;
    };
    if s.generation != sync.metadata.generation || s.requested != requested(sync) {
        return true;
    }
    let wait = if s.failures > 0 {
        RETRY_BASE
            .saturating_mul(1 << s.failures.min(16))
            .min(interval_of(sync))
    } else {
        interval_of(sync)
    };
    now.duration_since(s.last_run) >= wait
}

/// Runs forever: every `poll` (or at once when the webhook asks), lists the Syncs and reconciles
/// those that are [`due`] or requested; records each outcome in `hub`.
pub async fn run_loop(
    client: &Client,
    namespace: Option<&str>,
    cache: &Path,
    poll: Duration,
    hub: &server::Hub,
    log: &mut dyn FnMut(&str),
) {
    let api: Api<Sync> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut schedules: HashMap<String, Schedule> = HashMap::new();
    loop {
        match api.list(&Default::default()).await {
            Ok(list) => {
                hub.set_ready(true);
                for sync in list.items {
                    let key = sync.metadata.uid.clone().unwrap_or_else(|| sync.name_any());
                    let ns = sync.namespace().unwrap_or_default();
                    let hooked = hub.take_request(&ns, &sync.name_any());
                    if !hooked && !due(&sync, schedules.get(&key), Instant::now()) {
                        continue;
                    }
                    let name = format!("{ns}/{}", sync.name_any());
                    let failures = schedules.get(&key).map_or(0, |s| s.failures);
                    let failures = match reconcile(client, &sync, cache).await {
                        Ok(report) => {
                            hub.record(&ns, &sync.name_any(), &report);
                            if report.ok {
                                log(&format!("{name}: ready"));
                                0
                            } else {
                                log(&format!(
                                    "{name}: failed (see its status); retrying with back-off"
                                ));
                                failures + 1
                            }
                        }
                        Err(e) => {
                            log(&format!(
                                "{name}: cannot update status: {}",
                                apply::reason(&e)
                            ));
                            failures + 1
                        }
                    };
                    schedules.insert(
                        key,
                        Schedule {
                            last_run: Instant::now(),
                            generation: sync.metadata.generation,
                            requested: requested(&sync),
                            failures,
                        },
                    );
                }
            }
            Err(e) => {
                hub.set_ready(false);
                log(&format!("listing Syncs: {}", apply::reason(&e)));
            }
        }
        hub.wait(poll).await;
    }
}

/// Asks the controller to sync a `Sync` now (sets [`SYNC_REQUESTED`] to the current time).
pub async fn request_sync(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<String, kube::Error> {
    let api: Api<Sync> = Api::namespaced(client.clone(), namespace);
    let now = jiff::Timestamp::now().to_string();
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {SYNC_REQUESTED: now}}})),
    )
    .await?;
    Ok(now)
}

/// Publishes a Kubernetes Event about a Sync (failures to publish are not errors of the sync).
async fn publish_event(client: &Client, sync: &Sync, reason: Reason, message: &str) {
    use kube::Resource as _;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "lockstep-controller".into(),
            instance: std::env::var("HOSTNAME").ok(),
        },
    );
    // An Event note holds at most 1 kB.
    let mut note: String = message.chars().take(1000).collect();
    if note.len() < message.len() {
        note.push('…');
    }
    let event = Event {
        type_: if reason == Reason::Succeeded {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: reason.as_str().into(),
        note: Some(note),
        action: "Sync".into(),
        secondary: None,
    };
    let _ = recorder.publish(&event, &sync.object_ref(&())).await;
}

/// Reconciles every `Sync` (in `namespace`, or all namespaces) once; returns (succeeded, failed).
pub async fn reconcile_all(
    client: &Client,
    namespace: Option<&str>,
    cache: &Path,
) -> Result<(usize, usize), kube::Error> {
    let api: Api<Sync> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut ok = 0;
    let mut failed = 0;
    for sync in api.list(&Default::default()).await?.items {
        if reconcile(client, &sync, cache).await?.ok {
            ok += 1;
        } else {
            failed += 1;
        }
    }
    Ok((ok, failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync(interval: Option<&str>, generation: i64, requested: Option<&str>) -> Sync {
        let mut s = Sync::new(
            "shop",
            SyncSpec {
                source: SourceSpec {
                    url: "file:///x".into(),
                    git_ref: None,
                    path: None,
                },
                environment: "dev".into(),
                interval: interval.map(str::to_string),
                prune: None,
                suspend: None,
                decryption: None,
                webhook: None,
                drift_mode: None,
            },
        );
        s.metadata.generation = Some(generation);
        s.metadata.uid = Some("0b5e7c1e".into());
        if let Some(r) = requested {
            s.metadata.annotations = Some([(SYNC_REQUESTED.to_string(), r.to_string())].into());
        }
        s
    }

    #[test]
    fn syncs_are_due_when_new_changed_requested_or_their_interval_passed() {
        let now = Instant::now();
        let s = sync(Some("10m"), 1, None);
        assert!(due(&s, None, now), "never seen");
        let schedule = Schedule {
            last_run: now,
            generation: Some(1),
            requested: None,
            failures: 0,
        };
        assert!(!due(&s, Some(&schedule), now + Duration::from_secs(60)));
        assert!(due(&s, Some(&schedule), now + Duration::from_secs(700)));
        assert!(
            due(&sync(Some("10m"), 2, None), Some(&schedule), now),
            "spec changed"
        );
        assert!(
            due(&sync(Some("10m"), 1, Some("t1")), Some(&schedule), now),
            "requested"
        );
        let failed = Schedule {
            failures: 2,
            ..schedule
        };
        assert!(!due(&s, Some(&failed), now + Duration::from_secs(19)));
        assert!(
            due(&s, Some(&failed), now + Duration::from_secs(20)),
            "5s x 2^2 back-off"
        );
    }

    #[test]
    fn intervals_are_spread_by_at_most_ten_percent() {
        let d = interval_of(&sync(Some("10m"), 1, None));
        assert!(
            d >= Duration::from_secs(540) && d <= Duration::from_secs(660),
            "{d:?}"
        );
        let default = interval_of(&sync(None, 1, None));
        assert!(
            default >= Duration::from_secs(270) && default <= Duration::from_secs(330),
            "{default:?}"
        );
    }

    #[test]
    fn the_committed_crd_is_what_the_types_generate() {
        let committed = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/crds/sync.yaml"),
        )
        .expect("templates/crds/sync.yaml is committed");
        assert_eq!(
            committed,
            crd_yaml(),
            "regenerate with `lockstep controller --print-crd > templates/crds/sync.yaml`"
        );
    }
}
