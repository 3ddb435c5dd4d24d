//! The in-cluster controller: the `Sync` custom resource and its reconcile, which runs the same
//! pipeline stages as `lockstep apply` — fetch (Git, [`crate::source::git`]) → render → decrypt (with
//! identities from a Kubernetes Secret) → apply/prune — and reports the outcome on the resource's
//! status, with a Reason per step.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::controller::Action as Requeue;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

pub mod depends;
pub mod history;
pub mod install;
pub mod leader;
pub mod metrics;
pub mod rollback;
pub mod server;

use crate::apply::{self, Action, Options};
use crate::keys::KeyRing;
use crate::pipeline::{self, Fetched, StageError};
use crate::render::Request;
use crate::source::charts;
use crate::source::git::{self, Revision};
use crate::source::verify;

/// What a `Sync` follows and applies.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "lockstep.dev",
    version = "v1alpha1",
    kind = "Sync",
    namespaced,
    status = "SyncStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.lastAppliedRevision"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SyncSpec {
    /// The Git repository and the directory holding `lockstep.yaml`.
    pub source: SourceSpec,
    /// The environment to render (a key of `environments:` in `lockstep.yaml`).
    pub environment: String,
    /// How often to sync (e.g. `5m`); default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+[smh]?$"))]
    pub interval: Option<String>,
    /// Delete objects that left the set (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<bool>,
    /// Also delete CustomResourceDefinitions, Namespaces and PersistentVolumeClaims that left the
    /// set (default false: they are kept and listed in `status.kept`), as `--prune-protected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_protected: Option<bool>,
    /// Allow a commit to prune everything or more than half of what was applied (default false:
    /// such a sync fails with PruneFailed and deletes nothing), as `--allow-mass-prune`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_mass_prune: Option<bool>,
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
    /// After a failure, retry after this long (e.g. `30s`); default: 5s doubling with each failure,
    /// up to the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+[smh]?$"))]
    pub retry_interval: Option<String>,
    /// How long the fetch may take, and the apply's waits all together (dependencies, CRDs,
    /// hooks, waves, health) (e.g. `3m`); default: the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+[smh]?$"))]
    pub timeout: Option<String>,
    /// Wait until the applied objects are healthy before reporting Ready (default false: Ready
    /// once applied, as Flux's `wait`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<bool>,
    /// Apply while impersonating this ServiceAccount of the Sync's namespace (multi-tenancy: the
    /// Sync can do only what that ServiceAccount may do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// How the project's repository and OCI charts are fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charts: Option<ChartsSpec>,
    /// Syncs that must be Ready (for their current spec) before this one applies; it waits with
    /// reason `DependencyNotReady`, woken as soon as they are. Cycles are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Dependency>,
}

/// A Sync another one waits for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Dependency {
    /// Its name.
    pub name: String,
    /// Its namespace (default: this Sync's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `same`: it must also have applied the commit this Sync is about to apply (both sync one
    /// repository), as when a platform change and a team's change land in one commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<DependencyRevision>,
}

/// Which revision a dependency must have applied.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DependencyRevision {
    /// The commit this Sync is about to apply.
    Same,
}

/// Access to chart repositories and registries.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChartsSpec {
    /// A Secret in the Sync's namespace: `.dockerconfigjson` (or `config.json`), a Docker config
    /// whose `auths` give the logins by host (registries, and repositories on those hosts), and
    /// `ca.crt`, CA certificates to trust besides the system's.
    pub secret_ref: LocalRef,
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
    /// Credentials, a Secret in the Sync's namespace: `username` + `password` (or `token`) for
    /// HTTPS; `identity` (or `ssh-privatekey`) + `known_hosts` for SSH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalRef>,
    /// Only apply commits signed by a trusted SSH key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
}

/// Commit signature verification.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verify {
    /// A Secret in the Sync's namespace whose values are `allowed_signers` lines
    /// (`principal ssh-ed25519 AAAA…`, as `git config gpg.ssh.allowedSignersFile`) and/or
    /// armored OpenPGP public keys (`gpg --armor --export`).
    pub secret_ref: LocalRef,
    /// What must be signed: `HEAD` (default: the commit), `Tag` (the annotated tag named by
    /// `ref.tag`) or `TagAndHEAD` (both), as Flux's `verify.mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<VerifyMode>,
    /// Refuse a commit that does not descend from the last applied one (reason `NotFastForward`):
    /// someone who may move the branch or tag cannot bring back an older, once validly signed
    /// commit. A `ref.commit` pin is exempt (the Sync's author chose that commit). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_fast_forward: Option<bool>,
}

/// Which Git objects `verify` checks.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum VerifyMode {
    /// The commit that is applied.
    #[default]
    #[serde(rename = "HEAD")]
    Head,
    /// The annotated tag `ref.tag` names (it must be signed; the commit need not be).
    Tag,
    /// Both the tag and the commit.
    #[serde(rename = "TagAndHEAD")]
    TagAndHead,
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
    /// Objects that left the set but were not deleted, and why (a protected kind without
    /// `pruneProtected`, an object another owner took over, a failed delete retried next time).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<String>,
    /// The last `lockstep sync` request (the `lockstep.dev/sync-requested` annotation's value)
    /// this status answers, as Flux's `lastHandledReconcileAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_sync_at: Option<String>,
    /// When the last sync ended (whatever its result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_synced_at: Option<Time>,
    /// Objects of the applied set that were not ready after the last health wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready: Option<i64>,
    /// Objects the last sync found changed by hand: corrected (`driftMode: correct`) or only
    /// reported (`warn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drifted: Option<i64>,
    /// The last `lockstep rollback`: the commit pinned, the one rolled back from, who asked, and
    /// whether it holds (`Pinned`), was refused, ended with a newer commit, or was cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<rollback::RollbackStatus>,
}

/// A status condition: Kubernetes' own `metav1.Condition` (type `Ready`, `Reconciling` or
/// `Stalled`; a CamelCase reason naming the pipeline step; a message that never holds a value).
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The `Sync` CRD as YAML (the committed `templates/manifests/crd-sync.yaml` must equal this).
pub fn crd_yaml() -> String {
    generated_crd(&Sync::crd(), "sync")
}

/// A CRD as YAML, headed by the command that prints it (`--print-crd <which>`).
fn generated_crd(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    which: &str,
) -> String {
    let mut value = serde_json::to_value(crd).unwrap_or_default();
    unwrap_descriptions(&mut value);
    let yaml = yaml_serde::to_value(&value).unwrap_or(yaml_serde::Value::Null);
    let flag = if which == "sync" {
        "--print-crd".to_string()
    } else {
        format!("--print-crd {which}")
    };
    format!(
        "# Generated by `lockstep controller {flag}` from the Rust types; do not edit.\n{}",
        crate::render::emit::to_yaml(&yaml)
    )
}

/// Joins the lines of every schema `description` (doc comments wrap at 100 columns; `kubectl
/// explain` wraps by itself), keeping paragraph breaks.
fn unwrap_descriptions(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                match child {
                    serde_json::Value::String(text) if k == "description" => {
                        *text = text
                            .split("\n\n")
                            .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    other => unwrap_descriptions(other),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

pub use crate::pipeline::Reason;

/// A Secret's values, moved out of the API object into wiping buffers: identities, Git credentials
/// and webhook tokens never sit in plain `ByteString`s once read. Not printable, not clonable.
pub struct SecretData(std::collections::BTreeMap<String, zeroize::Zeroizing<Vec<u8>>>);

impl SecretData {
    /// Takes the values out of `secret` (moved, not copied).
    pub fn take(secret: Secret) -> SecretData {
        SecretData(
            secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, zeroize::Zeroizing::new(v.0)))
                .collect(),
        )
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.0.get(key).map(|v| v.as_slice())
    }

    /// Every (key, value).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }
}

/// Loads identities from every value of a Secret (any key name; detected by content: values that
/// are not identities are skipped).
fn identities(secret: &SecretData) -> KeyRing {
    let mut ring = KeyRing::default();
    for (key, value) in secret.iter() {
        let _ = ring.add_text(value, &format!("secret key {key}"));
    }
    ring
}

/// Git credentials from a Secret: SSH (`identity` or `ssh-privatekey`, with `known_hosts`) or
/// HTTPS basic auth (`username` + `password`, or `token`).
pub fn git_auth(
    secret: &SecretData,
    what: &str,
    url: &str,
    insecure_http: bool,
) -> Result<git::Auth, String> {
    let text = |key: &str| {
        secret
            .get(key)
            .map(|v| zeroize::Zeroizing::new(String::from_utf8_lossy(v).into_owned()))
    };
    let http = url.starts_with("https://") || url.starts_with("http://");
    if !http && let Some(key) = text("identity").or_else(|| text("ssh-privatekey")) {
        return Ok(git::Auth::Ssh {
            key,
            known_hosts: text("known_hosts")
                .map(|k| k.to_string())
                .unwrap_or_default(),
        });
    }
    if http && let Some(password) = text("password").or_else(|| text("token")) {
        if url.starts_with("http://") && !insecure_http {
            return Err(format!(
                "{what}: refusing to send a password or token in clear over http://; use an https:// URL (or start the controller with --allow-insecure-http)"
            ));
        }
        return Ok(git::Auth::Basic {
            username: text("username")
                .map(|u| u.trim().to_string())
                .unwrap_or_else(|| "git".into()),
            password,
        });
    }
    Err(if http {
        format!("{what} has neither password nor token (with username) for an HTTPS source")
    } else {
        format!(
            "{what} has neither identity nor ssh-privatekey (with known_hosts) for an SSH source"
        )
    })
}

/// Whether a source URL names a remote (HTTPS, HTTP, SSH, or scp-like `user@host:path`) rather
/// than the controller's own file system.
pub fn remote_url(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://") || git::is_ssh(url)
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
    /// Objects that left the set and were kept, with why (`None`: the sync did not get to prune).
    kept: Option<Vec<String>>,
    /// Objects not ready after the health wait (`None`: no health was waited for).
    not_ready: Option<usize>,
    /// Objects that differed from the revision (`driftMode: warn`; `None`: not looked at).
    drifted: Option<usize>,
    /// The first line of the commit's message.
    subject: Option<String>,
    /// The digest of the sealed render applied.
    render_digest: Option<String>,
    /// The new `status.rollback` (`None`: as it was).
    rollback: Option<rollback::RollbackStatus>,
}

/// The controller's access to the cluster: its own client, and the configuration from which
/// clients that impersonate a Sync's `serviceAccountName` are made.
#[derive(Clone)]
pub struct Access {
    /// The controller's own client.
    pub client: Client,
    config: Option<kube::Config>,
    gate: Option<apply::Gate>,
    local_sources: bool,
    /// Whether Git credentials may go over plain `http://`.
    insecure_http: bool,
    /// The ServiceAccount (in the Sync's namespace) a Sync without `serviceAccountName` acts as.
    default_service_account: Option<String>,
    /// Whether a Sync must act as a ServiceAccount (its own or the default): never as the controller.
    require_service_account: bool,
    /// The only namespaces whose Syncs are served (`None`: all).
    tenant_namespaces: Option<std::collections::BTreeSet<String>>,
    /// How renders are probed in a child process first (`None`: rendered in this process only).
    probe: Option<crate::probe::Probe>,
    /// The longest a Sync's fetch or health wait may take, whatever its `spec.timeout` says (one
    /// Sync holds one of the loop's slots that long at most).
    max_timeout: Duration,
    /// One recorder for the process, so repeated Events fold into a series.
    recorder: kube::runtime::events::Recorder,
    /// Chart archives, in memory (an archive fetched with a tenant's login serves that tenant).
    charts: Arc<charts::Store>,
    /// Entries of each Sync's [`history`] kept.
    history: usize,
}

/// Bytes of chart archives the controller keeps in memory.
pub const CHART_CACHE_BYTES: usize = 32 * 1024 * 1024;

impl Access {
    /// Access with `client`; `config` (the client's configuration) enables `serviceAccountName`.
    pub fn new(client: Client, config: Option<kube::Config>) -> Access {
        let recorder = kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: "lockstep-controller".into(),
                instance: std::env::var("POD_NAME")
                    .or_else(|_| std::env::var("HOSTNAME"))
                    .ok(),
            },
        );
        Access {
            client,
            config,
            gate: None,
            local_sources: false,
            insecure_http: false,
            default_service_account: None,
            require_service_account: false,
            tenant_namespaces: None,
            probe: None,
            max_timeout: DEFAULT_MAX_TIMEOUT,
            recorder,
            charts: Arc::new(charts::Store::in_memory(CHART_CACHE_BYTES, false)),
            history: history::DEFAULT_ENTRIES,
        }
    }

    /// The same access, keeping `entries` syncs in each Sync's history (at most
    /// [`history::MAX_ENTRIES`]).
    pub fn with_history(mut self, entries: usize) -> Access {
        self.history = entries.clamp(1, history::MAX_ENTRIES);
        self
    }

    /// The same access, with Syncs that name no `serviceAccountName` acting as `name` in their own
    /// namespace instead of as the controller (Flux's `--default-service-account`).
    pub fn with_default_service_account(mut self, name: Option<String>) -> Access {
        self.default_service_account = name.filter(|n| !n.is_empty());
        self
    }

    /// The same access, refusing Syncs that would act with the controller's own rights (no
    /// `serviceAccountName` and no default): for installs where the controller may impersonate.
    pub fn with_required_service_account(mut self, required: bool) -> Access {
        self.require_service_account = required;
        self
    }

    /// The same access, with no Sync waiting longer than `max` (see [`DEFAULT_MAX_TIMEOUT`]).
    pub fn with_max_timeout(mut self, max: Duration) -> Access {
        self.max_timeout = max;
        self
    }

    /// The same access, rendering every Sync first in a child process within `probe`'s limits.
    pub fn with_render_probe(mut self, probe: Option<crate::probe::Probe>) -> Access {
        self.probe = probe;
        self
    }

    /// Why a Sync may not run under this access, if it may not.
    fn refusal(&self, sync: &Sync, ns: &str) -> Option<String> {
        if let Some(tenants) = &self.tenant_namespaces
            && !tenants.contains(ns)
        {
            let list: Vec<&str> = tenants.iter().map(String::as_str).collect();
            return Some(format!(
                "namespace {ns} is not one of this controller's tenant namespaces ({}; --tenant-namespaces): move the Sync to one of them, or add {ns} to the install's tenantNamespaces",
                list.join(", ")
            ));
        }
        let named =
            sync.spec.service_account_name.is_some() || self.default_service_account.is_some();
        (self.require_service_account && !named).then(|| {
            format!(
                "spec.serviceAccountName is required by this controller (--require-service-account): name a ServiceAccount of namespace {ns} that may apply the Sync's objects"
            )
        })
    }

    /// The same access, serving only Syncs in `namespaces` (empty: every namespace); Syncs
    /// elsewhere are refused before anything is read for them.
    pub fn with_tenant_namespaces(mut self, namespaces: &[String]) -> Access {
        let set: std::collections::BTreeSet<String> = namespaces
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        self.tenant_namespaces = (!set.is_empty()).then_some(set);
        self
    }

    /// The same access, also sending Git credentials over plain `http://` (off by default: they
    /// would cross the network in clear).
    pub fn with_insecure_http(mut self, allowed: bool) -> Access {
        self.insecure_http = allowed;
        self.charts = Arc::new(charts::Store::in_memory(CHART_CACHE_BYTES, allowed));
        self
    }

    /// The same access, also accepting `file://` and plain-path sources. Off by default: in a
    /// shared cluster a Sync could otherwise read any repository on the controller's file system
    /// (another Sync's fetch included).
    pub fn with_local_sources(mut self, allowed: bool) -> Access {
        self.local_sources = allowed;
        self
    }

    /// The same access, writing only while `may_write` says so (leadership): a reconcile checks
    /// it before it starts, between apply steps and before writing the status.
    pub fn with_gate(
        mut self,
        may_write: impl Fn() -> bool + Send + std::marker::Sync + 'static,
    ) -> Access {
        self.gate = Some(apply::Gate(std::sync::Arc::new(may_write)));
        self
    }

    fn may_write(&self) -> bool {
        self.gate.as_ref().is_none_or(|apply::Gate(open)| open())
    }

    /// The client a Sync applies with and reads its Secrets with.
    pub(crate) fn for_sync(&self, sync: &Sync, ns: &str) -> Result<Client, String> {
        if let Some(why) = self.refusal(sync, ns) {
            return Err(why);
        }
        let Some(sa) = sync
            .spec
            .service_account_name
            .as_ref()
            .or(self.default_service_account.as_ref())
        else {
            return Ok(self.client.clone());
        };
        let mut config = self.config.clone().ok_or_else(|| {
            "serviceAccountName needs the controller's cluster configuration".to_string()
        })?;
        config.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:{sa}"));
        apply::counting_client(config).map_err(|e| format!("impersonating {ns}/{sa}: {e}"))
    }
}

/// The longest fetch or health wait of any Sync unless `--max-timeout` says otherwise.
pub const DEFAULT_MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// How a Sync names itself on what it applies ([`apply::OWNER_ANNOTATION`]) and its inventory.
pub fn owner_of(sync: &Sync) -> String {
    format!(
        "Sync {}/{}",
        sync.namespace().unwrap_or_default(),
        sync.name_any()
    )
}

fn duration_field(value: Option<&str>, field: &str) -> Result<Option<Duration>, String> {
    value
        .map(|v| apply::parse_duration(v).map_err(|e| format!("spec.{field}: {e}")))
        .transpose()
}

/// Reads Secret `ns/name` (its `role` names it in messages) straight into [`SecretData`].
pub async fn read_secret(
    client: &Client,
    ns: &str,
    name: &str,
    role: &str,
) -> Result<SecretData, String> {
    if let Some(why) = crate::objects::path_segment_problem(name) {
        return Err(format!("{role} Secret name {name:?}: {why}"));
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    match secrets.get_opt(name).await {
        Ok(Some(s)) => Ok(SecretData::take(s)),
        Ok(None) => Err(format!("{role} Secret {ns}/{name} does not exist")),
        Err(e) => Err(format!("{role} Secret {ns}/{name}: {}", apply::reason(&e))),
    }
}

/// The controller's side of the pipeline for one Sync: its Git source (fetched with the
/// credentials Secret), its signers, its decryption Secret, and a client that applies as its
/// `serviceAccountName` (whose rights also read those Secrets).
struct SyncInputs {
    access: Access,
    sync: Sync,
    ns: String,
    cache: PathBuf,
    timeout: Result<Duration, String>,
    tenant: Option<Client>,
    /// Dependencies that must have applied the fetched commit (`revision: same`).
    pins: Vec<depends::Pin>,
    /// A rollback's pin, given to the fetch.
    rollback: Option<git::Pin>,
    /// What the fetch made of it.
    pinned: Option<git::Pinned>,
}

impl SyncInputs {
    fn new(
        access: &Access,
        sync: &Sync,
        cache: &Path,
        pins: &[depends::Pin],
        rollback: Option<git::Pin>,
    ) -> SyncInputs {
        let timeout = duration_field(sync.spec.timeout.as_deref(), "timeout").map(|t| {
            t.unwrap_or_else(|| interval_of(sync))
                .min(access.max_timeout)
        });
        SyncInputs {
            access: access.clone(),
            sync: sync.clone(),
            ns: sync.namespace().unwrap_or_else(|| "default".into()),
            cache: cache.to_path_buf(),
            timeout,
            tenant: None,
            pins: pins.to_vec(),
            rollback,
            pinned: None,
        }
    }

    /// How long the health wait may take (a bad `spec.timeout` already failed the fetch).
    fn health_timeout(&self) -> Duration {
        self.timeout.clone().unwrap_or(DEFAULT_INTERVAL)
    }

    /// The client the Sync's Secrets are read and its objects applied with.
    fn tenant(&mut self) -> Result<Client, String> {
        if let Some(c) = &self.tenant {
            return Ok(c.clone());
        }
        let c = self.access.for_sync(&self.sync, &self.ns)?;
        self.tenant = Some(c.clone());
        Ok(c)
    }

    /// The Git credentials named by `source.secretRef`.
    async fn credentials(&mut self) -> Result<git::Auth, String> {
        let Some(r) = self.sync.spec.source.secret_ref.clone() else {
            return Ok(git::Auth::None);
        };
        let tenant = self.tenant()?;
        let secret = read_secret(&tenant, &self.ns, &r.name, "credentials").await?;
        git_auth(
            &secret,
            &format!("credentials Secret {}/{}", self.ns, r.name),
            &self.sync.spec.source.url,
            self.access.insecure_http,
        )
    }

    /// The logins and CA certificates of `spec.charts.secretRef`.
    async fn chart_credentials(&mut self) -> Result<charts::Credentials, String> {
        let mut credentials = charts::Credentials::none();
        let Some(spec) = self.sync.spec.charts.clone() else {
            return Ok(credentials);
        };
        let name = spec.secret_ref.name;
        let what = format!("charts Secret {}/{name}", self.ns);
        let tenant = self.tenant()?;
        let secret = read_secret(&tenant, &self.ns, &name, "charts").await?;
        let mut used = false;
        for key in [".dockerconfigjson", "config.json"] {
            if let Some(json) = secret.get(key) {
                credentials
                    .add_docker_config(json)
                    .map_err(|e| format!("{what}: {key}: {e}"))?;
                used = true;
            }
        }
        if let Some(pem) = secret.get("ca.crt") {
            credentials.add_root(pem.to_vec());
            used = true;
        }
        if !used {
            return Err(format!(
                "{what} has none of the keys .dockerconfigjson, config.json or ca.crt"
            ));
        }
        Ok(credentials)
    }

    /// The trusted signers named by `source.verify`.
    async fn signers(&mut self, name: &str) -> Result<verify::AllowedSigners, String> {
        let what = format!("signers Secret {}/{name}", self.ns);
        let tenant = self.tenant()?;
        let secret = read_secret(&tenant, &self.ns, name, "signers").await?;
        let text: String = secret
            .iter()
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned() + "\n")
            .collect();
        match verify::AllowedSigners::parse(&text, &what) {
            Ok(a) if !a.is_empty() => Ok(a),
            Ok(_) => Err(format!(
                "{what} lists no signing keys (allowed_signers lines or PGP public key blocks)"
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The commit a new one must descend from: the last applied one, when `verify.requireFastForward`
    /// is on and the ref is a branch, a tag or the default branch (not a `commit` pin).
    fn fast_forward_from(&self) -> Option<String> {
        let spec = &self.sync.spec.source;
        let on = spec
            .verify
            .as_ref()
            .and_then(|v| v.require_fast_forward)
            .unwrap_or(false);
        if !on || matches!(revision_of(spec.git_ref.as_ref()), Revision::Commit(_)) {
            return None;
        }
        self.sync
            .status
            .as_ref()
            .and_then(|s| s.last_applied_revision.clone())
            .filter(|r| r.len() == 40 || r.len() == 64)
    }

    /// Whether this run only looks for drift: the revision is already applied and `driftMode` is
    /// `warn`.
    fn warn_only(&self, revision: &str) -> bool {
        let applied = self
            .sync
            .status
            .as_ref()
            .and_then(|s| s.last_applied_revision.as_deref());
        applied == Some(revision) && self.sync.spec.drift_mode == Some(DriftMode::Warn)
    }
}

/// The cache repository of `url` under the controller's cache directory.
fn cache_dir(cache: &Path, url: &str) -> PathBuf {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(url.as_bytes());
    cache
        .join("git")
        .join(format!("{}.git", hex::encode(&digest[..10])))
}

fn revision_of(git_ref: Option<&GitRef>) -> Revision {
    match git_ref {
        Some(GitRef {
            commit: Some(c), ..
        }) => Revision::Commit(c.clone()),
        Some(GitRef { tag: Some(t), .. }) => Revision::Tag(t.clone()),
        Some(GitRef {
            branch: Some(b), ..
        }) => Revision::Branch(b.clone()),
        _ => Revision::Default,
    }
}

impl pipeline::Inputs for SyncInputs {
    async fn chart_access(&mut self) -> Result<pipeline::ChartAccess, StageError> {
        let credentials = self.chart_credentials().await.map_err(StageError::Fetch)?;
        Ok(pipeline::ChartAccess {
            store: self.access.charts.clone(),
            credentials: Arc::new(credentials),
            scope: self.ns.clone(),
        })
    }

    async fn fetch(&mut self) -> Result<Fetched, StageError> {
        let spec = self.sync.spec.clone();
        let timeout = self.timeout.clone().map_err(StageError::Fetch)?;
        if let Some(why) = self.access.refusal(&self.sync, &self.ns) {
            return Err(StageError::Fetch(why));
        }
        let shown_url = git::redact(&spec.source.url);
        if !remote_url(&spec.source.url) && !self.access.local_sources {
            return Err(StageError::Fetch(format!(
                "source.url {shown_url}: only https://, http://, ssh:// and user@host:path sources are allowed (local paths need the controller's --allow-local-sources)"
            )));
        }
        let auth = self.credentials().await.map_err(StageError::Fetch)?;
        let url = spec.source.url.clone();
        let path = spec.source.path.clone().unwrap_or_default();
        let rev = revision_of(spec.source.git_ref.as_ref());
        // The cache of this repository URL, shared by the Syncs that use it (each fetch still
        // asks the server with the Sync's own credentials before anything is read).
        let dir = cache_dir(&self.cache, &url);
        let interrupt = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = interrupt.clone();
        let descends_from = self.fast_forward_from();
        let pin = self.rollback.clone();
        let fetch = tokio::task::spawn_blocking(move || {
            git::fetch(
                &url,
                &rev,
                &path,
                &auth,
                &dir,
                descends_from.as_deref(),
                pin.as_ref(),
                &stop,
            )
        });
        let fetched = match tokio::time::timeout(timeout, fetch).await {
            Ok(Ok(Ok(f))) => f,
            Ok(Ok(Err(e))) => return Err(StageError::Fetch(e.to_string())),
            Ok(Err(e)) => return Err(StageError::Fetch(e.to_string())),
            Err(_) => {
                interrupt.store(true, std::sync::atomic::Ordering::SeqCst);
                return Err(StageError::Fetch(format!(
                    "fetching {shown_url} took longer than the timeout ({}s)",
                    timeout.as_secs()
                )));
            }
        };
        self.pinned = fetched.pinned.clone();
        if let Some(why) = self.pins.iter().find_map(|p| p.waiting(&fetched.revision)) {
            return Err(StageError::Dependency(why));
        }
        Ok(Fetched {
            snapshot: fetched.snapshot,
            revision: fetched.revision,
            commit: Some(fetched.commit),
            tag: fetched.tag,
            descends: fetched.descends,
        })
    }

    async fn verify(&mut self, fetched: &Fetched) -> Result<(), StageError> {
        let Some(v) = self.sync.spec.source.verify.clone() else {
            return Ok(());
        };
        let signers = self
            .signers(&v.secret_ref.name)
            .await
            .map_err(StageError::Verify)?;
        let mode = v.mode.unwrap_or_default();
        if matches!(mode, VerifyMode::Tag | VerifyMode::TagAndHead) {
            let Some(GitRef {
                tag: Some(name), ..
            }) = &self.sync.spec.source.git_ref
            else {
                return Err(StageError::Verify(
                    "verify.mode Tag and TagAndHEAD check the tag named by source.ref.tag, and \
                     this Sync names no tag: set ref.tag, or use verify.mode HEAD"
                        .into(),
                ));
            };
            let tag = fetched
                .tag
                .as_deref()
                .ok_or(verify::VerifyError::LightweightTag);
            pipeline::cpu(|| tag.and_then(|t| verify::verify_tag(t, &signers)))
                .map_err(|e| StageError::Verify(format!("tag {name}: {e}")))?;
        }
        if matches!(mode, VerifyMode::Head | VerifyMode::TagAndHead) {
            let commit = fetched.commit.as_deref().unwrap_or_default();
            pipeline::cpu(|| verify::verify_commit(commit, &signers))
                .map_err(|e| StageError::Verify(format!("commit {}: {e}", fetched.revision)))?;
        }
        if fetched.descends == Some(false)
            && let Some(last) = self.fast_forward_from()
        {
            return Err(StageError::NotFastForward(format!(
                "commit {} does not descend from {last}, the last applied commit: the ref was \
                 moved back or its history rewritten (verify.requireFastForward); push a new \
                 commit on top of {last}, or, to go back on purpose, pin it with source.ref.commit",
                fetched.revision
            )));
        }
        Ok(())
    }

    async fn identities(&mut self) -> Result<KeyRing, StageError> {
        let Some(d) = self.sync.spec.decryption.clone() else {
            return Ok(KeyRing::default());
        };
        let tenant = self.tenant().map_err(StageError::Keys)?;
        let secret = read_secret(&tenant, &self.ns, &d.secret_ref.name, "decryption")
            .await
            .map_err(StageError::Keys)?;
        let mut ring = identities(&secret);
        ring.searched.push(format!(
            "decryption Secret {}/{} ({} identities)",
            self.ns,
            d.secret_ref.name,
            ring.identities.len()
        ));
        Ok(ring)
    }

    fn key_hint(&self) -> String {
        match &self.sync.spec.decryption {
            Some(d) => format!(
                "add the identity of one of the recipients above to the decryption Secret {}/{}",
                self.ns, d.secret_ref.name
            ),
            None => "set spec.decryption.secretRef to a Secret holding the identity of one of the recipients above".into(),
        }
    }

    fn options(&self, fetched: &Fetched) -> Options {
        let spec = &self.sync.spec;
        let warn_only = self.warn_only(&fetched.revision);
        Options {
            prune: spec.prune.unwrap_or(true),
            prune_protected: spec.prune_protected.unwrap_or(false),
            allow_mass_prune: spec.allow_mass_prune.unwrap_or(false),
            wait: spec.wait.unwrap_or(false) && !warn_only,
            timeout: self.health_timeout(),
            revision: fetched.revision.clone(),
            // GitOps: Git wins over hand edits, including fields another manager took over.
            force_conflicts: true,
            dry_run: warn_only,
            owner: Some(owner_of(&self.sync)),
            gate: self.access.gate.clone(),
            ..Options::default()
        }
    }

    async fn client(&mut self) -> Result<Client, StageError> {
        self.tenant().map_err(StageError::Cluster)
    }

    fn render_probe(&self) -> Option<&crate::probe::Probe> {
        self.access.probe.as_ref()
    }
}

/// The outcome of a `driftMode: warn` look at an applied revision.
fn drift_outcome(done: &pipeline::Outcome) -> Outcome {
    let drifted: Vec<String> = done
        .summary
        .changes()
        .map(|(id, a, _)| {
            let what = match a {
                Action::Configured => "changed",
                Action::Created => "missing",
                _ => "left the set",
            };
            format!("{id} ({what})")
        })
        .collect();
    let drifted_count = drifted.len();
    let (reason, message) = if drifted.is_empty() {
        (
            Reason::Succeeded,
            format!("revision {} is applied; no drift", done.revision),
        )
    } else {
        (
            Reason::DriftDetected,
            format!(
                "{} object(s) differ from revision {} (driftMode: warn, nothing changed): {}",
                drifted.len(),
                done.revision,
                drifted.join(", ")
            ),
        )
    };
    Outcome {
        reason,
        message,
        revision: Some(done.revision.clone()),
        objects: Some(done.objects),
        inventory: None,
        changed: 0,
        kept: None,
        not_ready: None,
        drifted: Some(drifted_count),
        subject: done.subject.clone(),
        render_digest: Some(done.render_digest.clone()),
        rollback: None,
    }
}

/// The outcome of an apply.
fn applied_outcome(done: &pipeline::Outcome, timeout: Duration) -> Outcome {
    let summary = &done.summary;
    let changed = summary.changes().count();
    let kept: Vec<String> = summary
        .objects
        .iter()
        .filter(|(_, a, _)| *a == Action::Kept)
        .map(|(id, _, note)| match note {
            Some(why) => format!("{id}: {why}"),
            None => id.to_string(),
        })
        .collect();
    let kept_note = if kept.is_empty() {
        String::new()
    } else {
        format!(
            "; {} object(s) left the set but were kept (see status.kept)",
            kept.len()
        )
    };
    let (reason, message) = if summary.not_ready.is_empty() {
        (
            Reason::Succeeded,
            format!(
                "applied revision {}: {} object(s), {changed} changed{kept_note}",
                done.revision, done.objects
            ),
        )
    } else {
        (
            Reason::HealthCheckFailed,
            format!(
                "applied revision {}, but {} object(s) are not ready after {}s: {}",
                done.revision,
                summary.not_ready.len(),
                timeout.as_secs(),
                summary
                    .not_ready
                    .iter()
                    .map(|(id, why)| format!("{id}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        )
    };
    Outcome {
        reason,
        message,
        revision: Some(done.revision.clone()),
        objects: Some(done.objects),
        inventory: Some(format!("{}/{}", done.namespace, done.inventory)),
        changed,
        kept: Some(kept),
        not_ready: Some(summary.not_ready.len()),
        drifted: None,
        subject: done.subject.clone(),
        render_digest: Some(done.render_digest.clone()),
        rollback: None,
    }
}

/// Runs the pipeline for one Sync (at the rollback's pinned commit while it holds), and what the
/// fetch made of the pin.
async fn run_pipeline(
    access: &Access,
    sync: &Sync,
    cache: &Path,
    pins: &[depends::Pin],
    pin: Option<git::Pin>,
) -> (Outcome, Option<git::Pinned>) {
    let mut inputs = SyncInputs::new(access, sync, cache, pins, pin);
    let request = Request {
        env: sync.spec.environment.clone(),
        ..Request::default()
    };
    let label = format!(
        "{}/{}",
        sync.namespace().unwrap_or_default(),
        sync.name_any()
    );
    let mut notes = |e: &apply::Event| {
        if let apply::Event::Note(note) = e {
            tracing::warn!(sync = %label, "{note}");
        }
    };
    let outcome = match pipeline::run(&mut inputs, &request, &mut notes).await {
        Ok(done) if inputs.warn_only(&done.revision) => drift_outcome(&done),
        Ok(done) => applied_outcome(&done, inputs.health_timeout()),
        Err(failed) => Outcome {
            reason: failed.error.reason(),
            message: failed.error.to_string(),
            revision: failed.revision,
            objects: None,
            inventory: None,
            changed: 0,
            kept: None,
            not_ready: None,
            drifted: None,
            subject: failed.subject,
            render_digest: None,
            rollback: None,
        },
    };
    (outcome, inputs.pinned)
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
    /// The Ready condition's reason.
    pub reason: Reason,
    /// Objects created, configured or pruned.
    pub changed: usize,
    /// Objects re-applied because they had been changed by hand (same revision as last time).
    pub drift_corrected: usize,
    /// The revision this sync looked at (applied or not).
    pub attempted: Option<String>,
    /// The Ready condition's message (names files, objects and steps, never a value).
    pub message: String,
    /// The first line of the attempted commit's message.
    pub subject: Option<String>,
    /// The digest of the sealed render applied.
    pub render_digest: Option<String>,
    /// Whether this sync ended a rollback request (refused or ended: its annotation removed).
    pub rollback_over: bool,
}

/// Reconciles one `Sync` now and writes its status: `Reconciling` while it runs, then `Ready`
/// (with the step's Reason) and `Stalled` when only a new commit or spec can help. `deps` is what
/// its dependencies allow ([`depends::check`]): when it must wait, only its status is written.
pub async fn reconcile(
    access: &Access,
    sync: &Sync,
    cache: &Path,
    deps: &depends::Verdict,
) -> Result<Report, kube::Error> {
    let started = Instant::now();
    if !access.may_write() {
        return Err(kube::Error::Service(
            "this replica may no longer write (it does not hold the Lease)".into(),
        ));
    }
    if sync.metadata.deletion_timestamp.is_some() {
        finalize(access, sync)
            .await
            .map_err(|why| kube::Error::Service(why.into()))?;
        return Ok(Report::deleted());
    }
    keep_finalizer(access, sync).await?;
    if sync.spec.suspend == Some(true) {
        let outcome = Outcome::failed(Reason::Suspended, "suspended".into());
        return conclude(access, sync, outcome, started).await;
    }
    let pins = match deps {
        depends::Verdict::Go(pins) => pins,
        depends::Verdict::Wait(why) => {
            let outcome = Outcome::failed(Reason::DependencyNotReady, why.clone());
            if says_already(sync, &outcome) {
                // Woken by a dependency whose change does not change why this one waits: no
                // write (dependents of this Sync are not woken again for nothing).
                return Ok(Report {
                    ok: false,
                    duration: started.elapsed(),
                    objects: None,
                    revision: sync
                        .status
                        .as_ref()
                        .and_then(|s| s.last_applied_revision.clone()),
                    reason: outcome.reason,
                    changed: 0,
                    drift_corrected: 0,
                    attempted: None,
                    message: outcome.message,
                    subject: None,
                    render_digest: None,
                    rollback_over: false,
                });
            }
            return conclude(access, sync, outcome, started).await;
        }
    };
    write_status(access, sync, &reconciling(sync)).await?;
    let outcome = match rollback::plan(sync) {
        rollback::Plan::Follow { status, remove } => {
            if let Some(value) = remove {
                rollback::remove_annotation(&access.client, sync, &value).await;
            }
            let (mut outcome, _) = run_bounded(access, sync, cache, pins, None).await;
            outcome.rollback = status;
            outcome
        }
        rollback::Plan::Pin {
            request,
            annotation,
            fresh,
        } => rolled_back(access, sync, cache, pins, &request, &annotation, fresh).await,
    };
    conclude(access, sync, outcome, started).await
}

/// [`run_pipeline`] within [`pipeline_limit`].
async fn run_bounded(
    access: &Access,
    sync: &Sync,
    cache: &Path,
    pins: &[depends::Pin],
    pin: Option<git::Pin>,
) -> (Outcome, Option<git::Pinned>) {
    let render = access.probe.as_ref().map_or(Duration::ZERO, |p| p.time);
    let limit = pipeline_limit(sync, access.max_timeout, render);
    let run = run_pipeline(access, sync, cache, pins, pin);
    match tokio::time::timeout(limit, run).await {
        Ok(done) => done,
        Err(_) => (
            Outcome::failed(
                Reason::ReconcileFailed,
                format!(
                    "the sync took longer than {}s, far beyond its timeout (a call that never \
                     answered); it was stopped and is retried with back-off",
                    limit.as_secs()
                ),
            ),
            None,
        ),
    }
}

/// A sync under a rollback request: the pinned commit while no newer one is there (`RolledBack`
/// once applied); the ref's tip once a newer commit ended the pin; and for a request not applied
/// yet whose commit fails before the apply (it no longer fetches, verifies, renders or decrypts),
/// a refusal — the annotation removed, the reason in `status.rollback` and an Event — then the
/// ordinary sync of the ref, so the Sync stays as it was.
async fn rolled_back(
    access: &Access,
    sync: &Sync,
    cache: &Path,
    pins: &[depends::Pin],
    request: &rollback::Request,
    annotation: &str,
    fresh: bool,
) -> Outcome {
    use rollback::RollbackState as State;
    let (mut outcome, pinned) =
        run_bounded(access, sync, cache, pins, Some(rollback::pin_of(request))).await;
    match pinned {
        Some(git::Pinned::Ended) => {
            rollback::remove_annotation(&access.client, sync, annotation).await;
            let tip = outcome.revision.clone().unwrap_or_default();
            let message = rollback::ended(request, sync, &tip);
            publish_event(
                &access.recorder,
                sync,
                Reason::Succeeded,
                &format!("rollback {message}"),
            )
            .await;
            outcome.rollback = Some(rollback::status_of(request, State::Ended, message));
            outcome
        }
        Some(git::Pinned::Held { rewritten }) if outcome.reason.is_ok() => {
            outcome.reason = Reason::RolledBack;
            outcome.message = rollback::held(request, sync, rewritten.as_deref(), &outcome.message);
            outcome.rollback = Some(rollback::status_of(
                request,
                State::Pinned,
                outcome.message.clone(),
            ));
            outcome
        }
        _ if fresh && rollback::refuses(outcome.reason) => {
            let message = rollback::refusal(request, outcome.reason, &outcome.message);
            rollback::remove_annotation(&access.client, sync, annotation).await;
            publish_event(&access.recorder, sync, outcome.reason, &message).await;
            let (mut outcome, _) = run_bounded(access, sync, cache, pins, None).await;
            outcome.message = format!("{message}; {}", outcome.message);
            outcome.rollback = Some(rollback::status_of(request, State::Refused, message));
            outcome
        }
        _ => {
            // Failed in or after the apply, or a pin already applied that fails now: retried
            // like any failure, still pinned.
            outcome.rollback = Some(rollback::status_of(
                request,
                State::Pinned,
                format!(
                    "pinned to {}; the last sync failed ({}), retried",
                    request.revision,
                    outcome.reason.as_str()
                ),
            ));
            outcome
        }
    }
}

/// Whether the Sync's Ready condition already says `outcome` for its current spec.
fn says_already(sync: &Sync, outcome: &Outcome) -> bool {
    let Some(status) = &sync.status else {
        return false;
    };
    status.observed_generation == sync.metadata.generation
        && status.conditions.iter().any(|c| {
            c.type_ == "Ready"
                && c.status == "False"
                && c.reason == outcome.reason.as_str()
                && c.message == capped(&outcome.message)
        })
}

/// Time a sync's steps may take together beyond their own bounds, for applying, pruning and
/// status writes.
pub const PIPELINE_SLACK: Duration = Duration::from_secs(600);

/// The longest one run of the pipeline may take: its fetch, its apply's waits (one budget for
/// them all) and the `on-failure` hooks after a failed apply (each within the Sync's timeout, at
/// most `max_timeout`), its render (`render`: the probe's time limit), and [`PIPELINE_SLACK`].
/// Every step is bounded on its own, so only a fault (a call that never answers) reaches this;
/// the run is then stopped, freeing its slot of the loop.
pub fn pipeline_limit(sync: &Sync, max_timeout: Duration, render: Duration) -> Duration {
    let timeout = duration_field(sync.spec.timeout.as_deref(), "timeout")
        .ok()
        .flatten()
        .unwrap_or_else(|| interval_of(sync))
        .min(max_timeout);
    timeout
        .saturating_mul(3)
        .saturating_add(render)
        .saturating_add(PIPELINE_SLACK)
}

impl Outcome {
    /// An outcome without a revision or objects.
    fn failed(reason: Reason, message: String) -> Outcome {
        Outcome {
            reason,
            message,
            revision: None,
            objects: None,
            inventory: None,
            changed: 0,
            kept: None,
            not_ready: None,
            drifted: None,
            subject: None,
            render_digest: None,
            rollback: None,
        }
    }
}

/// The most of a message a status condition carries (a render with thousands of problems must
/// not make the status too big to write, which would leave the Sync at `Reconciling`).
pub const MAX_STATUS_MESSAGE: usize = 32 * 1024;

/// `message`, cut at [`MAX_STATUS_MESSAGE`] bytes (on a character boundary) with how much was left out.
fn capped(message: &str) -> String {
    if message.len() <= MAX_STATUS_MESSAGE {
        return message.to_string();
    }
    let mut end = MAX_STATUS_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… ({} more bytes; `lockstep render` or `lockstep diff` of the commit shows everything)",
        &message[..end],
        message.len() - end
    )
}

/// The time as a status writes it (whole seconds, as `metav1.Time`).
fn now() -> Time {
    Time(jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap_or_default())
}

/// The status while a sync runs: the previous one with `Reconciling=True` (and no `Stalled`).
fn reconciling(sync: &Sync) -> SyncStatus {
    let mut status = sync.status.clone().unwrap_or_default();
    status
        .conditions
        .retain(|c| c.type_ != "Reconciling" && c.type_ != "Stalled");
    status.conditions.push(Condition {
        type_: "Reconciling".into(),
        status: "True".into(),
        reason: "Progressing".into(),
        message: format!("syncing {}", git::redact(&sync.spec.source.url)),
        last_transition_time: now(),
        observed_generation: sync.metadata.generation,
    });
    status
}

/// The status after a sync: `Ready` with the outcome's Reason (its transition time kept while the
/// Reason stays), `Stalled` when only a new commit or spec helps; revisions, objects and inventory
/// kept from before when this sync did not get that far.
fn concluded(sync: &Sync, outcome: &Outcome, took: Duration) -> SyncStatus {
    let previous = sync.status.clone().unwrap_or_default();
    let drifted = drifted(&previous, outcome);
    let generation = sync.metadata.generation;
    let ok = outcome.reason.is_ok();
    let ready_status = if ok { "True" } else { "False" };
    let transition = previous
        .conditions
        .iter()
        .find(|c| {
            c.type_ == "Ready" && c.status == ready_status && c.reason == outcome.reason.as_str()
        })
        .map_or_else(now, |c| c.last_transition_time.clone());
    let message = capped(&outcome.message);
    let condition = |type_: &str, status: &str| Condition {
        type_: type_.into(),
        status: status.into(),
        reason: outcome.reason.as_str().into(),
        message: message.clone(),
        last_transition_time: transition.clone(),
        observed_generation: generation,
    };
    let mut conditions = vec![condition("Ready", ready_status)];
    if outcome.reason.stalls() {
        conditions.push(condition("Stalled", "True"));
    }
    SyncStatus {
        conditions,
        observed_generation: generation,
        last_applied_revision: if ok {
            outcome.revision.clone()
        } else {
            previous.last_applied_revision
        },
        last_attempted_revision: outcome
            .revision
            .clone()
            .or(previous.last_attempted_revision),
        objects: outcome.objects.map(|n| n as i64).or(previous.objects),
        inventory: outcome.inventory.clone().or(previous.inventory),
        last_sync_duration: Some(format!("{:.1}s", took.as_secs_f64())),
        kept: outcome.kept.clone().unwrap_or(previous.kept),
        last_handled_sync_at: requested(sync).or(previous.last_handled_sync_at),
        last_synced_at: Some(now()),
        not_ready: outcome.not_ready.map(|n| n as i64).or(previous.not_ready),
        drifted: drifted.map(|n| n as i64).or(previous.drifted),
        rollback: outcome.rollback.clone().or(previous.rollback),
    }
}

/// Objects the sync found changed by hand: reported (`driftMode: warn`), or corrected — what a
/// successful sync of the revision already applied changed.
fn drifted(previous: &SyncStatus, outcome: &Outcome) -> Option<usize> {
    let same_revision =
        outcome.revision.is_some() && previous.last_applied_revision == outcome.revision;
    match outcome.drifted {
        Some(n) => Some(n),
        None if outcome.reason.is_ok() && same_revision => Some(outcome.changed),
        None if outcome.reason.is_ok() => Some(0),
        None => None,
    }
}

/// Server-side applies a Sync's status.
async fn write_status(
    access: &Access,
    sync: &Sync,
    status: &SyncStatus,
) -> Result<(), kube::Error> {
    let ns = sync.namespace().unwrap_or_else(|| "default".into());
    let api: Api<Sync> = Api::namespaced(access.client.clone(), &ns);
    api.patch_status(
        &sync.name_any(),
        &PatchParams::apply(apply::FIELD_MANAGER).force(),
        &Patch::Apply(json!({
            "apiVersion": "lockstep.dev/v1alpha1",
            "kind": "Sync",
            "status": status,
        })),
    )
    .await
    .map(|_| ())
}

/// Ends a reconcile: an Event when something changed or failed (repeats fold into one series),
/// the status (unless this replica lost the Lease mid-sync: the new leader writes it), and the
/// report for logs and metrics.
async fn conclude(
    access: &Access,
    sync: &Sync,
    outcome: Outcome,
    started: Instant,
) -> Result<Report, kube::Error> {
    let ok = outcome.reason.is_ok();
    if !ok || outcome.changed > 0 {
        publish_event(&access.recorder, sync, outcome.reason, &outcome.message).await;
    }
    let previous = sync.status.clone().unwrap_or_default();
    let status = concluded(sync, &outcome, started.elapsed());
    let report = Report {
        ok,
        reason: outcome.reason,
        duration: started.elapsed(),
        objects: status.objects.map(|n| n as usize),
        revision: status.last_applied_revision.clone(),
        changed: outcome.changed,
        drift_corrected: if outcome.drifted.is_none() {
            drifted(&previous, &outcome).unwrap_or(0)
        } else {
            0
        },
        attempted: outcome.revision.clone(),
        message: outcome.message.clone(),
        subject: outcome.subject.clone(),
        render_digest: outcome.render_digest.clone(),
        rollback_over: outcome
            .rollback
            .as_ref()
            .is_some_and(|r| r.state != rollback::RollbackState::Pinned),
    };
    if access.may_write() {
        write_status(access, sync, &status).await?;
    }
    Ok(report)
}

impl Report {
    /// The report of a Sync whose deletion was handled (no sync ran).
    fn deleted() -> Report {
        Report {
            ok: true,
            duration: Duration::ZERO,
            objects: None,
            revision: None,
            reason: Reason::Succeeded,
            changed: 0,
            drift_corrected: 0,
            attempted: None,
            message: "deleted".into(),
            subject: None,
            render_digest: None,
            rollback_over: false,
        }
    }
}

/// The finalizer through which deleting a Sync with `prune` on (the default) deletes what it
/// applied, as Flux's Kustomization does.
pub const FINALIZER: &str = "lockstep.dev/prune";

fn has_finalizer(sync: &Sync) -> bool {
    sync.finalizers().iter().any(|f| f == FINALIZER)
}

/// The Sync's finalizers other than [`FINALIZER`] (someone else's: always kept).
fn other_finalizers(sync: &Sync) -> Vec<String> {
    sync.finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect()
}

/// Writes `finalizers` (the rest of the list kept as it is); the resourceVersion makes it fail
/// rather than overwrite a change made meanwhile.
async fn set_finalizers(
    access: &Access,
    sync: &Sync,
    list: Vec<String>,
) -> Result<(), kube::Error> {
    let api: Api<Sync> =
        Api::namespaced(access.client.clone(), &sync.namespace().unwrap_or_default());
    api.patch(
        &sync.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {
            "finalizers": list,
            "resourceVersion": sync.resource_version(),
        }})),
    )
    .await
    .map(|_| ())
}

/// Keeps [`FINALIZER`] in step with `spec.prune`: there when deleting the Sync should delete its
/// objects, gone when it should leave them.
async fn keep_finalizer(access: &Access, sync: &Sync) -> Result<(), kube::Error> {
    let wanted = sync.spec.prune.unwrap_or(true);
    if wanted == has_finalizer(sync) {
        return Ok(());
    }
    let mut list = other_finalizers(sync);
    if wanted {
        list.push(FINALIZER.into());
    }
    set_finalizers(access, sync, list).await
}

/// A Sync being deleted: with [`FINALIZER`] (and not suspended), deletes what its inventory
/// records — as the Sync's ServiceAccount, with the guards of any prune — then lets it go. An
/// Event says what was deleted and what was kept. Errors name what failed, never a value.
async fn finalize(access: &Access, sync: &Sync) -> Result<(), String> {
    if !has_finalizer(sync) {
        return Ok(());
    }
    let ns = sync.namespace().unwrap_or_default();
    let inventory = sync.status.as_ref().and_then(|s| s.inventory.clone());
    if sync.spec.suspend != Some(true)
        && let Some((inv_ns, inv_name)) = inventory.as_deref().and_then(|i| i.split_once('/'))
    {
        let client = access.for_sync(sync, &ns)?;
        let opts = Options {
            prune_protected: sync.spec.prune_protected.unwrap_or(false),
            owner: Some(owner_of(sync)),
            gate: access.gate.clone(),
            ..Options::default()
        };
        let summary = apply::prune_everything(&client, inv_ns, inv_name, &opts)
            .await
            .map_err(|e| format!("pruning what it applied: {e}"))?;
        let kept: Vec<String> = summary
            .objects
            .iter()
            .filter(|(_, a, _)| *a == Action::Kept)
            .map(|(id, _, note)| format!("{id}: {}", note.clone().unwrap_or_default()))
            .collect();
        let mut message = format!(
            "deleted: pruned {} object(s) it had applied",
            summary.count(Action::Pruned)
        );
        if !kept.is_empty() {
            message.push_str(&format!("; kept {}: {}", kept.len(), kept.join("; ")));
        }
        publish_event(&access.recorder, sync, Reason::Succeeded, &message).await;
    }
    set_finalizers(access, sync, other_finalizers(sync))
        .await
        .map_err(|e| format!("removing its finalizer: {}", apply::reason(&e)))
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
    rollback: Option<String>,
    failures: u32,
    /// The newest history entry this replica recorded or read for the Sync: a reconcile not
    /// [`history::worth_recording`] after it is not recorded, without reading the history again.
    recorded: Option<history::Entry>,
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

fn rollback_requested(sync: &Sync) -> Option<String> {
    sync.annotations().get(rollback::ROLLBACK).cloned()
}

/// Whether a Sync should be reconciled now: never seen, its spec changed, a sync was requested, or
/// its interval (after a failure: the back-off) has passed.
pub fn due(sync: &Sync, schedule: Option<&Schedule>, now: Instant) -> bool {
    due_in(sync, schedule, now).is_zero()
}

/// How long until a Sync is [`due`] (zero: now).
pub fn due_in(sync: &Sync, schedule: Option<&Schedule>, now: Instant) -> Duration {
    let Some(s) = schedule else {
        return Duration::ZERO;
    };
    if s.generation != sync.metadata.generation
        || s.requested != requested(sync)
        || s.rollback != rollback_requested(sync)
    {
        return Duration::ZERO;
    }
    wait_after(sync, s.failures).saturating_sub(now.duration_since(s.last_run))
}

/// How long to wait after a sync that ended the `failures`-th failure in a row (0: a success):
/// the interval, or after a failure `retryInterval`, else 5 s doubling up to the interval.
pub fn wait_after(sync: &Sync, failures: u32) -> Duration {
    if failures == 0 {
        return interval_of(sync);
    }
    let retry = sync
        .spec
        .retry_interval
        .as_deref()
        .and_then(|r| apply::parse_duration(r).ok())
        .filter(|d| !d.is_zero());
    retry.unwrap_or_else(|| {
        RETRY_BASE
            .saturating_mul(1 << failures.min(16))
            .min(interval_of(sync))
    })
}

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct LoopOptions {
    /// Only this namespace's Syncs (default: all).
    pub namespace: Option<String>,
    /// Only Syncs matching this label selector (default: all), e.g. to split Syncs between
    /// controllers.
    pub selector: Option<String>,
    /// How often a replica that does not lead looks again.
    pub poll: Duration,
    /// Syncs reconciled at the same time.
    pub concurrency: usize,
}

/// What every reconcile of the loop shares.
struct Context {
    access: Access,
    cache: PathBuf,
    hub: Arc<server::Hub>,
    poll: Duration,
    /// By Sync UID: when it last ran, for which spec and request, and its failures in a row.
    schedules: Mutex<HashMap<String, Schedule>>,
}

/// A reconcile that ended without `Ready=True`; the loop retries it after `retry`.
#[derive(Debug, thiserror::Error)]
#[error("{reason} (retrying in {}s)", retry.as_secs())]
pub struct SyncFailed {
    reason: String,
    retry: Duration,
}

fn key_of(sync: &Sync) -> String {
    sync.metadata.uid.clone().unwrap_or_else(|| sync.name_any())
}

/// One reconcile of the loop. Runs the Sync when it is due (or a webhook asked for it), isolated:
/// a panic in any step ends this reconcile with a failed status, never the process or another
/// Sync's reconcile. Requeues itself after the interval, or fails with the back-off.
async fn reconcile_due(sync: Arc<Sync>, ctx: Arc<Context>) -> Result<Requeue, SyncFailed> {
    if ctx.hub.lifecycle.is_stopping() {
        return Ok(Requeue::await_change());
    }
    if !ctx.hub.leadership.is_leading() {
        return Ok(Requeue::requeue(ctx.poll));
    }
    let ns = sync.namespace().unwrap_or_default();
    let name = sync.name_any();
    if sync.metadata.deletion_timestamp.is_some() {
        return match isolated(finalize(&ctx.access, &sync)).await {
            Ok(Ok(())) => {
                // Gone for good: nothing of it stays in the loop's memory or the metrics.
                lock(&ctx.schedules).remove(&key_of(&sync));
                ctx.hub.metrics.forget(&ns, &name);
                ctx.hub.waiting.clear(&ns, &name);
                Ok(Requeue::await_change())
            }
            Ok(Err(why)) => {
                tracing::warn!(sync = %format!("{ns}/{name}"), "deleting: {why}");
                Err(SyncFailed {
                    reason: why,
                    retry: RETRY_BASE,
                })
            }
            Err(Panicked) => Err(SyncFailed {
                reason: "the clean-up stopped unexpectedly".into(),
                retry: RETRY_BASE,
            }),
        };
    }
    let key = key_of(&sync);
    let schedule = lock(&ctx.schedules).get(&key).cloned();
    let hooked = ctx.hub.requests.take(&ns, &name);
    let wait = due_in(&sync, schedule.as_ref(), Instant::now());
    if !hooked && !wait.is_zero() {
        return Ok(Requeue::requeue(wait));
    }
    let started = Instant::now();
    if !sync.spec.depends_on.is_empty() {
        ctx.hub.waiting.mark(&ns, &name);
    }
    let deps = match ctx.hub.syncs() {
        Some(store) => depends::check(&sync, store),
        None => depends::check(&sync, &|_: &str, _: &str| None),
    };
    let result = match isolated(reconcile(&ctx.access, &sync, &ctx.cache, &deps)).await {
        Ok(r) => r,
        Err(Panicked) => {
            let outcome = Outcome::failed(
                Reason::ReconcileFailed,
                "the reconcile stopped unexpectedly (an internal error in lockstep; the controller \
                 keeps running and retries with back-off)"
                    .into(),
            );
            conclude(&ctx.access, &sync, outcome, started).await
        }
    };
    // What started it, read before the schedule is replaced.
    let trigger = trigger_of(&sync, schedule.as_ref(), hooked);
    let recorded = schedule.as_ref().and_then(|s| s.recorded.clone());
    let failures = schedule.map_or(0, |s| s.failures);
    let label = format!("{ns}/{name}");
    // Waiting for a dependency is no failure: the watch wakes it, no back-off needed.
    let waiting = matches!(&result, Ok(r) if r.reason == Reason::DependencyNotReady);
    if !waiting {
        ctx.hub.waiting.clear(&ns, &name);
    }
    let failures = match &result {
        Ok(report) if report.ok || waiting => 0,
        _ => failures + 1,
    };
    log_report(&label, &result, Some(wait_after(&sync, failures)));
    if let Ok(report) = &result {
        ctx.hub.metrics.record(&ns, &name, report);
    }
    lock(&ctx.schedules).insert(
        key,
        Schedule {
            last_run: Instant::now(),
            generation: sync.metadata.generation,
            requested: requested(&sync),
            // A request this sync ended is gone from the Sync (the controller removed it): its
            // removal is no new request.
            rollback: match &result {
                Ok(r) if r.rollback_over => None,
                _ => rollback_requested(&sync),
            },
            failures,
            recorded: recorded.clone(),
        },
    );
    // After the metrics: history is a record, never in the way of what a sync reports.
    if let Ok(report) = &result
        && ctx.access.may_write()
    {
        let newest = remember(&ctx.access, &sync, report, trigger, recorded.as_ref()).await;
        if let Some(s) = lock(&ctx.schedules).get_mut(&key_of(&sync)) {
            s.recorded = newest.or(recorded);
        }
    }
    let retry = wait_after(&sync, failures);
    match result {
        Ok(report) if report.ok || waiting => Ok(Requeue::requeue(retry)),
        Ok(report) => Err(SyncFailed {
            reason: report.reason.as_str().into(),
            retry,
        }),
        Err(e) => Err(SyncFailed {
            reason: apply::reason(&e),
            retry,
        }),
    }
}

/// What started a reconcile, in the words of [`history::Entry::trigger`].
fn trigger_of(sync: &Sync, schedule: Option<&Schedule>, hooked: bool) -> &'static str {
    if hooked {
        return "webhook";
    }
    match schedule {
        None if sync.status.is_none() => "new",
        None => "start",
        Some(s) if s.generation != sync.metadata.generation => "spec change",
        Some(s) if s.requested != requested(sync) => "request",
        Some(s) if s.rollback != rollback_requested(sync) => "rollback",
        Some(s) if s.failures > 0 => "retry",
        Some(_) => "poll",
    }
}

/// Records a reconcile in the Sync's history (a failure to do so is logged: history never fails
/// a sync).
/// `known`: the newest entry this replica knows the history holds (then a reconcile not worth
/// recording after it costs no read). Returns the newest entry after this one, when known.
async fn remember(
    access: &Access,
    sync: &Sync,
    report: &Report,
    trigger: &str,
    known: Option<&history::Entry>,
) -> Option<history::Entry> {
    if report.reason == Reason::DependencyNotReady && report.attempted.is_none() {
        // Waiting is status, not history: nothing was tried.
        return None;
    }
    let entry = history::Entry {
        revision: report.attempted.clone().or(report.revision.clone()),
        subject: report.subject.clone(),
        at: now().0.to_string(),
        trigger: trigger.to_string(),
        result: report.reason.as_str().to_string(),
        message: history::cap(&report.message),
        duration: format!("{:.1}s", report.duration.as_secs_f64()),
        changed: report.changed as u64,
        render_digest: report.render_digest.clone(),
    };
    if known.is_some() && !history::worth_recording(known, &entry) {
        return None;
    }
    match history::record(&access.client, sync, entry, access.history).await {
        Ok(newest) => newest,
        Err(e) => {
            tracing::warn!(
                sync = %format!("{}/{}", sync.namespace().unwrap_or_default(), sync.name_any()),
                "could not record the sync in its history: {}",
                apply::reason(&e)
            );
            None
        }
    }
}

/// One log line per reconcile: the Sync, the revision, how long it took, and on failure the step's
/// Reason, its message (which never holds a value) and when it is tried again.
fn log_report(label: &str, result: &Result<Report, kube::Error>, retry: Option<Duration>) {
    let retry_in_seconds = retry.map(|d| d.as_secs());
    let revision = |r: &Report| {
        r.attempted
            .clone()
            .or(r.revision.clone())
            .unwrap_or_default()
    };
    match result {
        Ok(report) if report.ok => tracing::info!(
            sync = %label,
            revision = %revision(report),
            objects = report.objects.unwrap_or(0),
            changed = report.changed,
            seconds = report.duration.as_secs_f64(),
            "ready: {}",
            report.message
        ),
        Ok(report) => {
            let next = if report.reason.stalls() {
                "stalled: only a new commit or spec change helps"
            } else {
                "retrying"
            };
            tracing::warn!(
                sync = %label,
                revision = %revision(report),
                reason = report.reason.as_str(),
                seconds = report.duration.as_secs_f64(),
                retry_in_seconds,
                "{next}: {}",
                report.message
            );
        }
        Err(e) => tracing::warn!(
            sync = %label,
            error = %apply::reason(e),
            retry_in_seconds,
            "cannot update status"
        ),
    }
}

/// A reconcile that panicked (the panic itself went to the log through the panic hook).
#[derive(Debug, PartialEq, Eq)]
pub struct Panicked;

/// Runs `work`, turning a panic in it into [`Panicked`] instead of unwinding into the loop, so one
/// Sync's fault ends only its own reconcile.
pub async fn isolated<T>(work: impl std::future::Future<Output = T>) -> Result<T, Panicked> {
    futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(work))
        .await
        .map_err(|_| Panicked)
}

/// The loop's back-off: what [`reconcile_due`] computed.
fn error_policy(_: Arc<Sync>, failed: &SyncFailed, _: Arc<Context>) -> Requeue {
    Requeue::requeue(failed.retry)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a watch event must change to start a reconcile: a new Sync, its spec (generation) or a
/// `lockstep sync` request — never a status write.
fn spec_or_request(sync: &Sync) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sync.metadata.generation.hash(&mut h);
    requested(sync).hash(&mut h);
    rollback_requested(sync).hash(&mut h);
    sync.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// Yields once each time this replica starts leading (a new term starts from scratch: every Sync
/// is synced at once), and logs each change of leadership.
fn terms(ctx: Arc<Context>) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::unfold((ctx, false), |(ctx, mut was)| async move {
        loop {
            if ctx.hub.lifecycle.is_stopping() {
                return None;
            }
            // The controller polls this stream as long as its scheduler runs: a sign of life.
            ctx.hub.progress.beat();
            let leading = ctx.hub.leadership.is_leading();
            if leading != was {
                if leading {
                    tracing::info!("leading: reconciling Syncs");
                } else {
                    tracing::info!("not leading: waiting for the Lease");
                }
                was = leading;
                if leading {
                    lock(&ctx.schedules).clear();
                    return Some(((), (ctx, was)));
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Resolves once [`server::Lifecycle::stop`] was called.
async fn stopped(hub: Arc<server::Hub>) {
    while !hub.lifecycle.is_stopping() {
        hub.lifecycle
            .sleep_unless_stopped(Duration::from_millis(500))
            .await;
    }
}

/// Runs the controller until `hub` is stopped: kube-runtime's `Controller` over a watch of the
/// Syncs (a reflector store, no repeated LISTs), reconciling each Sync on its own — when it is new,
/// its spec changes or a sync is requested (annotation or webhook), and again after its interval
/// (after a failure: the back-off) — up to `concurrency` at once, so one slow Sync holds one slot
/// and never the others. Only while this replica leads. After a stop, no new reconcile starts;
/// those in flight finish (they stop writing by themselves if leadership lapses), then the hub is
/// marked drained.
pub async fn run_loop(access: Access, opts: &LoopOptions, cache: &Path, hub: Arc<server::Hub>) {
    use kube::runtime::{Controller, WatchStreamExt, controller, reflector, watcher};
    let api: Api<Sync> = match &opts.namespace {
        Some(ns) => Api::namespaced(access.client.clone(), ns),
        None => Api::all(access.client.clone()),
    };
    let ctx = Arc::new(Context {
        access,
        cache: cache.to_path_buf(),
        hub: hub.clone(),
        poll: opts.poll,
        schedules: Mutex::new(HashMap::new()),
    });
    let (reader, writer) = reflector::store();
    hub.set_syncs(reader.clone());
    let sweeper = tokio::spawn(sweep_caches(
        reader.clone(),
        cache.to_path_buf(),
        hub.clone(),
    ));
    let mut config = watcher::Config::default();
    if let Some(selector) = &opts.selector {
        config = config.labels(selector);
    }
    let syncs = watcher(api, config)
        .backoff(watch_backoff())
        .modify(slim)
        .reflect(writer)
        // Ready once the first list is in the store. (Not `Store::wait_until_ready`: the
        // controller waits on it too, and only one waiter is woken.)
        .inspect({
            let hub = hub.clone();
            move |event| {
                if let Ok(watcher::Event::InitDone) = event {
                    hub.set_ready(true);
                }
            }
        })
        .inspect({
            let hub = hub.clone();
            let store = reader.clone();
            move |event| match event {
                // Ready: its waiting dependents go; not Ready: they say the new reason.
                Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                    wake_dependents(&hub, &store, s, true);
                }
                // After a re-list (the watch was down: events, deletions among them, may have
                // been missed), every waiting Sync looks again.
                Ok(watcher::Event::InitDone) => {
                    for (ns, name) in hub.waiting.all() {
                        hub.requests.ask(&ns, &name);
                    }
                }
                Ok(watcher::Event::Delete(s)) => wake_dependents(&hub, &store, s, false),
                _ => {}
            }
        })
        .applied_objects()
        .predicate_filter(spec_or_request, Default::default());
    let hooks = hub
        .requests
        .stream()
        .map(|(ns, name)| reflector::ObjectRef::<Sync>::new(&name).within(&ns));
    let concurrency = u16::try_from(opts.concurrency.max(1)).unwrap_or(u16::MAX);
    Controller::for_stream(syncs, reader)
        .with_config(controller::Config::default().concurrency(concurrency))
        .reconcile_on(hooks)
        .reconcile_all_on(terms(ctx.clone()))
        .graceful_shutdown_on(stopped(hub.clone()))
        .run(reconcile_due, error_policy, ctx)
        .for_each(|result| {
            match result {
                // Failed reconciles were logged by the reconcile itself.
                Ok(_) | Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(controller::Error::ObjectNotFound(_)) => {}
                Err(e) => tracing::warn!(error = %e, "watching Syncs"),
            }
            std::future::ready(())
        })
        .await;
    sweeper.abort();
    hub.progress.end();
    hub.lifecycle.mark_drained();
}

/// How often the repository caches no Sync uses any more are removed.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// Every [`SWEEP_EVERY`], removes the repository caches of URLs no Sync in the store names (a
/// repository a Sync moved away from, or a deleted Sync's), so the cache volume holds only what is
/// read. The first sweep waits one period: the store is full by then.
async fn sweep_caches(
    store: kube::runtime::reflector::Store<Sync>,
    cache: PathBuf,
    hub: Arc<server::Hub>,
) {
    loop {
        hub.lifecycle.sleep_unless_drained(SWEEP_EVERY).await;
        if hub.lifecycle.is_stopping() {
            return;
        }
        let in_use: std::collections::HashSet<PathBuf> = store
            .state()
            .iter()
            .map(|s| cache_dir(&cache, &s.spec.source.url))
            .collect();
        let root = cache.join("git");
        let removed = tokio::task::spawn_blocking(move || git::sweep(&root, &in_use))
            .await
            .unwrap_or_default();
        for dir in removed {
            tracing::info!(cache = %dir.display(), "removed the cache of a repository no Sync reads");
        }
    }
}

/// Asks for a sync of the Syncs that depend on `changed` (only those waiting, when `waiting`):
/// a dependency that became Ready wakes its dependents at once, one that failed or was deleted
/// gets reported.
fn wake_dependents(
    hub: &server::Hub,
    store: &kube::runtime::reflector::Store<Sync>,
    changed: &Sync,
    waiting: bool,
) {
    let (ns, name) = (changed.namespace().unwrap_or_default(), changed.name_any());
    for s in store.state() {
        let (their_ns, their_name) = (s.namespace().unwrap_or_default(), s.name_any());
        if depends::names(&s, &ns, &name)
            && (!waiting || hub.waiting.contains(&their_ns, &their_name))
        {
            hub.requests.ask(&their_ns, &their_name);
        }
    }
}

/// What the loop keeps of a Sync: everything but its managed fields and `kubectl`'s copy of the
/// last applied configuration, which nothing reads and which are most of a stored Sync's memory
/// (each managed-fields entry is a parsed JSON tree).
fn slim(sync: &mut Sync) {
    sync.metadata.managed_fields = None;
    if let Some(a) = sync.metadata.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// The retry delays of the Sync watch after an error: 0.5 s doubling to 3 s, each plus up to as
/// much again of jitter (so never over 6 s), starting over after a minute without errors.
/// kube-runtime's default grows to 30 s, so after an API server outage of half a minute a
/// controller could sit idle for another 30 s; one watch per process retrying every few seconds
/// costs the API server nothing.
fn watch_backoff()
-> kube::runtime::utils::ResetTimerBackoff<kube::runtime::watcher::ExponentialBackoff> {
    let delays = backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(500))
        .with_max_delay(std::time::Duration::from_secs(3))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    kube::runtime::utils::ResetTimerBackoff::new(delays.into(), std::time::Duration::from_secs(60))
}

/// Keeps `hub`'s leadership current by competing for the Lease every [`leader::RENEW_EVERY`]
/// until the loop has drained after a stop, then gives the Lease up. Each successful round makes
/// this replica the leader until [`leader::LEASE_DURATION`] minus one renewal period after the
/// round *began* (on the local monotonic clock), so leadership lapses by itself — before another
/// replica may take the Lease — when renewals fail or hang (each round times out after one period).
pub async fn run_election(elector: leader::Elector, hub: &server::Hub) {
    let valid_for = leader::LEASE_DURATION.saturating_sub(leader::RENEW_EVERY);
    loop {
        if hub.lifecycle.is_drained()
            || (hub.lifecycle.is_stopping() && !hub.leadership.is_leading())
        {
            break;
        }
        let began = Instant::now();
        match tokio::time::timeout(leader::RENEW_EVERY, elector.try_acquire()).await {
            // A new term is noticed by the loop (`terms`), which then syncs every Sync.
            Ok(Ok(leader::Round::Leading)) => hub.leadership.lead_until(Some(began + valid_for)),
            Ok(Ok(leader::Round::Following(_))) => hub.leadership.lead_until(None),
            Ok(Err(e)) => tracing::warn!(error = %apply::reason(&e), "renewing the Lease"),
            Err(_) => tracing::warn!("renewing the Lease: no answer in time"),
        }
        end_lapsed_term(hub);
        hub.lifecycle
            .sleep_unless_drained(leader::RENEW_EVERY)
            .await;
    }
    let was_leading = hub.leadership.is_leading();
    hub.leadership.lead_until(None);
    if was_leading && let Err(e) = elector.release().await {
        tracing::warn!(error = %apply::reason(&e), "releasing the Lease");
    }
}

/// Ends an elected term whose deadline passed without renewal, logging the wall-clock time of that
/// deadline: the moment this replica stopped writing (it already had: the deadline is the gate).
fn end_lapsed_term(hub: &server::Hub) {
    let Some(deadline) = hub.leadership.deadline() else {
        return;
    };
    let now = Instant::now();
    if now < deadline {
        return;
    }
    let ago = now.duration_since(deadline);
    let stopped = std::time::SystemTime::now()
        .checked_sub(ago)
        .and_then(|t| jiff::Timestamp::try_from(t).ok())
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        .unwrap_or_default();
    tracing::warn!(
        stopped_at = %stopped,
        "not leading: the Lease was not renewed in time; writing stopped at its deadline"
    );
    hub.leadership.lead_until(None);
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

/// The outcome of the sync request made `at`, once the status answers it and no sync is running:
/// (Ready, reason, message).
fn handled(sync: &Sync, at: &str) -> Option<(bool, String, String)> {
    let status = sync.status.as_ref()?;
    if status.last_handled_sync_at.as_deref() != Some(at) {
        return None;
    }
    settled_ready(status)
}

/// The Ready condition (Ready, reason, message) once no sync is running.
pub fn settled_ready(status: &SyncStatus) -> Option<(bool, String, String)> {
    if status
        .conditions
        .iter()
        .any(|c| c.type_ == "Reconciling" && c.status == "True")
    {
        return None;
    }
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((
        ready.status == "True",
        ready.reason.clone(),
        ready.message.clone(),
    ))
}

/// Waits until the controller has handled the sync request made `at` (watching the Sync; polling
/// when this client may not watch); `None` after `timeout` or when the Sync was deleted.
pub async fn wait_handled(
    client: &Client,
    namespace: &str,
    name: &str,
    at: &str,
    timeout: Duration,
) -> Result<Option<(bool, String, String)>, kube::Error> {
    let api: Api<Sync> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + timeout;
    let done = |s: Option<&Sync>| s.is_some_and(|s| handled(s, at).is_some());
    match tokio::time::timeout(
        timeout,
        kube::runtime::wait::await_condition(api.clone(), name, done),
    )
    .await
    {
        Err(_) => return Ok(None),
        Ok(Ok(found)) => return Ok(found.and_then(|s| handled(&s, at))),
        // Not allowed to watch: ask every half second instead.
        Ok(Err(_)) => {}
    }
    poll_sync(&api, name, deadline, |s| handled(s, at)).await
}

/// Reads Sync `name` every half second until `answer` finds what it waits for in it (`None`
/// once `deadline` passed).
pub async fn poll_sync<T>(
    api: &Api<Sync>,
    name: &str,
    deadline: Instant,
    answer: impl Fn(&Sync) -> Option<T>,
) -> Result<Option<T>, kube::Error> {
    loop {
        if let Some(found) = answer(&api.get(name).await?) {
            return Ok(Some(found));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// An Event's action: `Sync`, and a short digest of its note (see [`publish_event`]).
fn event_action(note: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(note.as_bytes());
    format!("Sync-{}", hex::encode(&digest[..6]))
}

/// Publishes a Kubernetes Event about a Sync (failures to publish are not errors of the sync).
async fn publish_event(
    recorder: &kube::runtime::events::Recorder,
    sync: &Sync,
    reason: Reason,
    message: &str,
) {
    use kube::Resource as _;
    use kube::runtime::events::{Event, EventType};
    // An Event note holds at most 1 kB.
    let mut note: String = message.chars().take(1000).collect();
    if note.len() < message.len() {
        note.push('…');
    }
    let event = Event {
        type_: if reason.is_ok() {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: reason.as_str().into(),
        // The Recorder folds repeats by (type, reason, action), not by note: a digest of the note in
        // the action makes each distinct message (each revision, each new failure) its own Event,
        // while the same message repeated still folds into one series.
        action: event_action(&note),
        note: Some(note),
        secondary: None,
    };
    let _ = recorder.publish(&event, &sync.object_ref(&())).await;
}

/// Reconciles every `Sync` (in `namespace`, or all namespaces) once; returns (succeeded, failed).
pub async fn reconcile_all(
    access: &Access,
    namespace: Option<&str>,
    selector: Option<&str>,
    cache: &Path,
) -> Result<(usize, usize), kube::Error> {
    let api: Api<Sync> = match namespace {
        Some(ns) => Api::namespaced(access.client.clone(), ns),
        None => Api::all(access.client.clone()),
    };
    let mut ok = 0;
    let mut failed = 0;
    let mut params = kube::api::ListParams::default();
    if let Some(selector) = selector {
        params = params.labels(selector);
    }
    let listed = depends::in_order(api.list(&params).await?.items);
    // What each Sync's status says now: updated as each one is reconciled, so a dependency
    // reconciled earlier in this pass counts with its new status.
    let mut current: HashMap<(String, String), Arc<Sync>> = listed
        .iter()
        .map(|s| {
            let key = (s.namespace().unwrap_or_default(), s.name_any());
            (key, Arc::new(s.clone()))
        })
        .collect();
    for sync in listed {
        let (ns, name) = (sync.namespace().unwrap_or_default(), sync.name_any());
        let label = format!("{ns}/{name}");
        let deps = depends::check(&sync, &|ns: &str, name: &str| {
            current.get(&(ns.to_string(), name.to_string())).cloned()
        });
        let result = reconcile(access, &sync, cache, &deps).await;
        log_report(&label, &result, None);
        if let Ok(report) = &result {
            remember(access, &sync, report, trigger_of(&sync, None, false), None).await;
        }
        if let Ok(Some(fresh)) = Api::<Sync>::namespaced(access.client.clone(), &ns)
            .get_opt(&name)
            .await
        {
            current.insert((ns, name), Arc::new(fresh));
        }
        if result?.ok {
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

    #[test]
    fn the_watch_retries_within_six_seconds_however_long_the_outage() {
        let delays: Vec<_> = watch_backoff().take(50).collect();
        assert_eq!(delays.len(), 50, "the watch never gives up");
        assert!(delays[0] <= std::time::Duration::from_secs(1), "{delays:?}");
        assert!(
            delays
                .iter()
                .all(|d| *d <= std::time::Duration::from_secs(6)),
            "{delays:?}"
        );
        assert!(
            delays[10] >= std::time::Duration::from_secs(3),
            "{delays:?}"
        );
    }

    /// A Sync of `file:///x` with this interval, generation and sync request, for unit tests.
    pub(crate) fn sync(interval: Option<&str>, generation: i64, requested: Option<&str>) -> Sync {
        let mut s = Sync::new(
            "shop",
            SyncSpec {
                source: SourceSpec {
                    url: "file:///x".into(),
                    git_ref: None,
                    path: None,
                    secret_ref: None,
                    verify: None,
                },
                environment: "dev".into(),
                interval: interval.map(str::to_string),
                prune: None,
                prune_protected: None,
                allow_mass_prune: None,
                suspend: None,
                decryption: None,
                webhook: None,
                drift_mode: None,
                retry_interval: None,
                timeout: None,
                wait: None,
                service_account_name: None,
                charts: None,
                depends_on: Vec::new(),
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
    fn a_pipeline_run_is_bounded_by_its_steps_bounds_plus_slack() {
        let mut s = sync(Some("5m"), 1, None);
        let minute = Duration::from_secs(60);
        // No timeout: the interval (5m, spread by up to ±10 %) bounds the fetch, the apply's
        // waits and the on-failure hooks.
        let limit = pipeline_limit(&s, 60 * minute, minute);
        let spread = interval_of(&s);
        assert_eq!(limit, spread * 3 + minute + PIPELINE_SLACK);
        s.spec.timeout = Some("3m".into());
        assert_eq!(
            pipeline_limit(&s, 60 * minute, minute),
            Duration::from_secs(3 * 180 + 60 + 600)
        );
        // A huge timeout is capped at the controller's maximum.
        s.spec.timeout = Some("720h".into());
        assert_eq!(
            pipeline_limit(&s, 60 * minute, Duration::ZERO),
            180 * minute + PIPELINE_SLACK
        );
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
            rollback: None,
            failures: 0,
            recorded: None,
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
        let mut rolled = sync(Some("10m"), 1, None);
        rolled.metadata.annotations = Some([(rollback::ROLLBACK.to_string(), "{}".into())].into());
        assert!(due(&rolled, Some(&schedule), now), "a rollback asked for");
        let failed = Schedule {
            failures: 2,
            ..schedule
        };
        assert!(!due(&s, Some(&failed), now + Duration::from_secs(19)));
        assert!(
            due(&s, Some(&failed), now + Duration::from_secs(20)),
            "5s x 2^2 back-off"
        );
        let mut fixed = sync(Some("10m"), 1, None);
        fixed.spec.retry_interval = Some("45s".into());
        assert!(!due(&fixed, Some(&failed), now + Duration::from_secs(44)));
        assert!(
            due(&fixed, Some(&failed), now + Duration::from_secs(45)),
            "retryInterval replaces the back-off"
        );
    }

    /// An outcome as `run_pipeline` makes it: the set's size only when the set was built and sent.
    fn outcome(reason: Reason, revision: Option<&str>) -> Outcome {
        let applied = matches!(
            reason,
            Reason::Succeeded | Reason::HealthCheckFailed | Reason::DriftDetected
        );
        Outcome {
            reason,
            message: format!("{} happened", reason.as_str()),
            revision: revision.map(str::to_string),
            objects: applied.then_some(14),
            inventory: applied.then(|| "shop/lockstep-inventory-shop-dev".to_string()),
            changed: 0,
            kept: None,
            not_ready: None,
            drifted: None,
            subject: None,
            render_digest: None,
            rollback: None,
        }
    }

    /// A transition time long before any test runs.
    fn earlier() -> Time {
        Time("2026-01-01T00:00:00Z".parse().expect("a timestamp"))
    }

    fn with_status(mut sync: Sync, ready: (&str, &str), applied: Option<&str>) -> Sync {
        sync.status = Some(SyncStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: ready.0.into(),
                reason: ready.1.into(),
                message: String::new(),
                last_transition_time: earlier(),
                observed_generation: Some(1),
            }],
            observed_generation: Some(1),
            last_applied_revision: applied.map(str::to_string),
            last_attempted_revision: applied.map(str::to_string),
            objects: Some(3),
            inventory: Some("shop/old".into()),
            last_sync_duration: None,
            kept: Vec::new(),
            last_handled_sync_at: None,
            ..SyncStatus::default()
        });
        sync
    }

    #[test]
    #[rustfmt::skip]
    fn status_transitions_follow_the_outcome() {
        let fresh = sync(None, 2, None);
        let failing = with_status(sync(None, 2, None), ("False", "RenderFailed"), Some("aaa"));
        let ready = with_status(sync(None, 2, None), ("True", "Succeeded"), Some("aaa"));
        // (previous, outcome) → (Ready, reason, Stalled, lastApplied, lastAttempted, objects,
        //  transition time kept)
        type Expected<'a> = (
            &'a str,
            &'a str,
            bool,
            Option<&'a str>,
            Option<&'a str>,
            Option<i64>,
            bool,
        );
        let cases: Vec<(&Sync, Outcome, Expected<'_>)> = vec![
            (&fresh, outcome(Reason::Succeeded, Some("bbb")),
             ("True", "Succeeded", false, Some("bbb"), Some("bbb"), Some(14), false)),
            (&failing, outcome(Reason::Succeeded, Some("bbb")),
             ("True", "Succeeded", false, Some("bbb"), Some("bbb"), Some(14), false)),
            // A broken commit stalls and keeps what was applied.
            (&ready, outcome(Reason::RenderFailed, Some("ccc")),
             ("False", "RenderFailed", true, Some("aaa"), Some("ccc"), Some(3), false)),
            (&ready, outcome(Reason::VerifyFailed, Some("ccc")),
             ("False", "VerifyFailed", true, Some("aaa"), Some("ccc"), Some(3), false)),
            (&ready, outcome(Reason::ValidationFailed, Some("ccc")),
             ("False", "ValidationFailed", true, Some("aaa"), Some("ccc"), Some(3), false)),
            // Failures a retry can fix do not stall; before the fetch there is no revision.
            (&ready, outcome(Reason::FetchFailed, None),
             ("False", "FetchFailed", false, Some("aaa"), Some("aaa"), Some(3), false)),
            (&ready, outcome(Reason::ApplyFailed, Some("ccc")),
             ("False", "ApplyFailed", false, Some("aaa"), Some("ccc"), Some(3), false)),
            (&ready, outcome(Reason::HealthCheckFailed, Some("ccc")),
             ("False", "HealthCheckFailed", false, Some("aaa"), Some("ccc"), Some(14), false)),
            (&ready, outcome(Reason::DriftDetected, Some("aaa")),
             ("False", "DriftDetected", false, Some("aaa"), Some("aaa"), Some(14), false)),
            (&ready, outcome(Reason::ReconcileFailed, None),
             ("False", "ReconcileFailed", false, Some("aaa"), Some("aaa"), Some(3), false)),
            (&ready, outcome(Reason::Suspended, None),
             ("False", "Suspended", false, Some("aaa"), Some("aaa"), Some(3), false)),
            // The same Ready status and reason again: the transition time stays.
            (&ready, outcome(Reason::Succeeded, Some("aaa")),
             ("True", "Succeeded", false, Some("aaa"), Some("aaa"), Some(14), true)),
            (&failing, outcome(Reason::RenderFailed, Some("ccc")),
             ("False", "RenderFailed", true, Some("aaa"), Some("ccc"), Some(3), true)),
        ];
        for (previous, outcome, expected) in cases {
            let status = concluded(previous, &outcome, Duration::from_millis(1500));
            let ready = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .expect("Ready");
            let stalled = status.conditions.iter().any(|c| c.type_ == "Stalled");
            let kept = ready.last_transition_time == earlier();
            let got = (
                ready.status.as_str(),
                ready.reason.as_str(),
                stalled,
                status.last_applied_revision.as_deref(),
                status.last_attempted_revision.as_deref(),
                status.objects,
                kept,
            );
            assert_eq!(
                got, expected,
                "{:?} after {:?}",
                outcome.reason, previous.status
            );
            assert_eq!(ready.message, outcome.message);
            assert_eq!(status.observed_generation, Some(2));
            assert_eq!(status.last_sync_duration.as_deref(), Some("1.5s"));
        }
    }

    #[tokio::test]
    async fn a_panicking_reconcile_ends_only_itself() {
        let panicking = isolated(async {
            let width: usize = "18446744073709551615".parse().expect("a number");
            " ".repeat(width).len()
        })
        .await;
        assert_eq!(panicking, Err(Panicked));
        assert_eq!(isolated(async { 7 }).await, Ok(7));
    }

    #[test]
    fn only_remote_sources_count_as_remote() {
        for url in [
            "https://git.example.com/shop.git",
            "ssh://git@git.example.com/shop.git",
            "git@github.com:org/shop.git",
            "HTTP://host/x",
        ] {
            assert!(remote_url(url), "{url}");
        }
        for url in [
            "file:///var/cache/lockstep/other.git",
            "/srv/git/shop.git",
            "./shop",
            "../x:y",
        ] {
            assert!(!remote_url(url), "{url}");
        }
    }

    #[test]
    fn git_credentials_follow_the_source_scheme() {
        let secret = |pairs: &[(&str, &str)]| {
            SecretData::take(Secret {
                data: Some(
                    pairs
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.to_string(),
                                k8s_openapi::ByteString(v.as_bytes().to_vec()),
                            )
                        })
                        .collect(),
                ),
                ..Secret::default()
            })
        };
        let both = secret(&[
            ("identity", "KEY"),
            ("known_hosts", "host ssh-ed25519 AAAA"),
            ("password", "pw"),
        ]);
        assert!(matches!(
            git_auth(&both, "s", "https://h/r.git", false),
            Ok(git::Auth::Basic { ref username, .. }) if username == "git"
        ));
        assert!(matches!(
            git_auth(&both, "s", "ssh://git@h/r.git", false),
            Ok(git::Auth::Ssh { .. })
        ));
        let token = secret(&[("username", "ci"), ("token", "s3cr3t-token")]);
        assert!(matches!(
            git_auth(&token, "s", "https://h/r.git", false),
            Ok(git::Auth::Basic { ref username, .. }) if username == "ci"
        ));
        // Never in clear over http://, unless the platform allowed it.
        let err = git_auth(&token, "Secret ns/creds", "http://h/r.git", false)
            .expect_err("clear-text credentials");
        assert!(
            err.contains("https://") && err.contains("--allow-insecure-http"),
            "{err}"
        );
        assert!(matches!(
            git_auth(&token, "s", "http://h/r.git", true),
            Ok(git::Auth::Basic { .. })
        ));
        let err =
            git_auth(&token, "Secret ns/creds", "git@h:r.git", false).expect_err("no SSH key");
        assert!(
            err.contains("Secret ns/creds") && err.contains("identity"),
            "{err}"
        );
        assert!(!err.contains("s3cr3t-token"), "{err}");
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
    fn the_crd_shows_reason_and_status_columns_and_descriptions_without_hard_wraps() {
        let crd: serde_json::Value =
            yaml_serde::from_str(&crd_yaml()).expect("the generated CRD parses");
        let columns: Vec<&str> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .expect("columns")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(columns, ["Ready", "Reason", "Revision", "Age", "Status"]);
        fn walk(v: &serde_json::Value, found: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, c) in m {
                        if k == "description"
                            && let Some(t) = c.as_str()
                            && t.replace("\n\n", "").contains('\n')
                        {
                            found.push(t.to_string());
                        }
                        walk(c, found);
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|c| walk(c, found)),
                _ => {}
            }
        }
        let mut wrapped = Vec::new();
        walk(&crd, &mut wrapped);
        assert!(wrapped.is_empty(), "{wrapped:#?}");
    }

    #[test]
    fn status_messages_are_capped_on_a_character_boundary() {
        assert_eq!(capped("short"), "short");
        let long = "€".repeat(MAX_STATUS_MESSAGE); // 3 bytes each: the cut must move back
        let cut = capped(&long);
        assert!(cut.len() < MAX_STATUS_MESSAGE + 200, "{}", cut.len());
        assert!(
            cut.ends_with("shows everything)"),
            "{}",
            &cut[cut.len() - 80..]
        );
        let kept = MAX_STATUS_MESSAGE - MAX_STATUS_MESSAGE % 3;
        assert!(
            cut.contains(&format!("({} more bytes;", long.len() - kept)),
            "{}",
            &cut[kept..]
        );
    }

    #[test]
    fn the_committed_crd_is_what_the_types_generate() {
        let committed = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/manifests/crd-sync.yaml"),
        )
        .expect("templates/manifests/crd-sync.yaml is committed");
        assert_eq!(
            committed,
            crd_yaml(),
            "regenerate with `lockstep controller --print-crd > templates/manifests/crd-sync.yaml`"
        );
    }
}
