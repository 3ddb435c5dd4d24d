//! Apply: converge a cluster to an [`ApplySet`] with server-side apply, safely.
//!
//! Order of work (nothing is written until every object that can be checked has passed):
//! 1. discovery: each object's resource and scope (kinds defined by CRDs in the same set are
//!    understood from the CRD before it exists);
//! 2. a server-side **dry-run** apply of every object; any failure (schema, admission, RBAC,
//!    immutable field, field conflict) stops here with every failing object and the server's reason;
//!    objects that need a Namespace or CRD of the set that does not exist yet are checked right after
//!    stage 1 creates those, before anything else is written;
//! 3. staged apply: CRDs (waited until Established) and Namespaces; then the `pre-apply` hooks
//!    (see [`hooks`]); then wave by wave (see [`waves`]; one wave when none is declared) cluster
//!    RBAC and classes, then the rest kind by kind, with bounded concurrency, each wave waited
//!    healthy before the next; an object whose dry-run result equals the live object is not
//!    written;
//! 4. prune from the inventory (see [`inventory`]), later waves first — never after an error, never
//!    a mass prune without consent, never an object that is not ours;
//! 5. the new inventory is recorded; `post-apply` hooks once the set is healthy, `on-failure`
//!    hooks when a write step failed.
//!
//! Every object is labelled `app.kubernetes.io/managed-by: lockstep`, `lockstep.dev/project` and
//! `lockstep.dev/environment`; the field manager is `lockstep`.

pub mod deadline;
pub mod diff;
pub mod health;
pub mod hooks;
pub mod inventory;
pub mod observe;
pub mod redact;
pub mod replace;
pub mod sealed;
pub mod waves;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use futures::{StreamExt, stream};
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope};
use kube::{Api, Client};
use serde_json::{Value as Json, json};

use crate::decrypt::{ApplyObject, ApplySet, SecretJson};
use crate::objects::{ObjectId, kind_rank};

pub use deadline::Deadline;
pub use inventory::{Inventory, InventoryEntry};

/// The field manager lockstep applies with.
pub const FIELD_MANAGER: &str = "lockstep";
/// Label every applied object carries.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "lockstep");
/// Label naming the project.
pub const PROJECT_LABEL: &str = "lockstep.dev/project";
/// Label naming the environment.
pub const ENVIRONMENT_LABEL: &str = "lockstep.dev/environment";
/// Annotation that keeps an object from being pruned.
pub const PRUNE_ANNOTATION: &str = "lockstep.dev/prune";
/// Annotation naming the Sync that applied an object (`Sync <namespace>/<name>`; absent when the
/// CLI did): another Sync neither applies over it nor prunes it.
pub const OWNER_ANNOTATION: &str = "lockstep.dev/owner";
/// Annotation holding a digest of what lockstep last applied (Secret values left out of it), so an
/// unchanged object can be recognised without a request.
pub const APPLIED_ANNOTATION: &str = "lockstep.dev/applied";

/// How to apply.
#[derive(Debug, Clone)]
pub struct Options {
    /// Take over fields owned by other managers.
    pub force_conflicts: bool,
    /// Delete objects that left the set.
    pub prune: bool,
    /// Allow pruning everything or more than half of the inventory.
    pub allow_mass_prune: bool,
    /// Also prune CustomResourceDefinitions, Namespaces and PersistentVolumeClaims.
    pub prune_protected: bool,
    /// Wait for health after applying.
    pub wait: bool,
    /// How long the whole apply may wait, all its waits together (dependencies, CRDs
    /// established, replaced objects gone, hooks, waves, health): one budget, as Flux's
    /// `spec.timeout`. The `on-failure` hooks, run after a failure, get a budget of their own.
    pub timeout: Duration,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Only validate (dry-run) and report what would change; write nothing.
    pub dry_run: bool,
    /// With `dry_run`: when to compare secret-bearing objects by their sealed digest instead of
    /// decrypting them.
    pub sealed: SealedPreview,
    /// A revision to record in the inventory (a Git commit, or empty).
    pub revision: String,
    /// Who applies (`Sync <namespace>/<name>`; `None`: the CLI). Recorded on every object and the
    /// inventory; what another Sync owns is refused, never pruned.
    pub owner: Option<String>,
    /// Asked before every write step (each stage, kind, the prune and the inventory); when it says
    /// no, the apply stops with [`ApplyError::Interrupted`] and prunes nothing. The controller
    /// uses it to stop writing the moment it no longer holds its Lease.
    pub gate: Option<Gate>,
}

/// When a preview leaves secret-bearing objects sealed (see [`crate::sealed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedPreview {
    /// Always decrypt (a real apply; the controller).
    Never,
    /// When no identity opens the secrets (a reviewer without the key).
    WithoutKeys,
    /// Always, even with keys at hand (the same preview a keyless CI job makes).
    Always,
}

/// A check that writing may go on (see [`Options::gate`]).
#[derive(Clone)]
pub struct Gate(pub std::sync::Arc<dyn Fn() -> bool + Send + Sync>);

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Gate")
    }
}

impl Options {
    fn may_write(&self) -> Result<(), ApplyError> {
        match &self.gate {
            Some(Gate(open)) if !open() => Err(ApplyError::Interrupted),
            _ => Ok(()),
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            force_conflicts: false,
            prune: true,
            allow_mass_prune: false,
            prune_protected: false,
            wait: true,
            timeout: Duration::from_secs(300),
            concurrency: 16,
            dry_run: false,
            sealed: SealedPreview::Never,
            revision: String::new(),
            owner: None,
            gate: None,
        }
    }
}

/// The note on an object a preview found without this environment's labels (applying adopts it).
pub const ADOPTED: &str = "it exists without this environment's lockstep labels";

/// What happened to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// It did not exist and was created.
    Created,
    /// It existed and was changed.
    Configured,
    /// It already matched; nothing was sent.
    Unchanged,
    /// It was deleted (pruned).
    Pruned,
    /// It left the set but was kept (protected kind, annotation, or not ours).
    Kept,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
            Action::Pruned => "pruned",
            Action::Kept => "kept",
        })
    }
}

/// Progress reported while applying.
#[derive(Debug, Clone)]
pub enum Event {
    /// A stage starts (`validate`, `apply crds+namespaces`, …) with the number of objects.
    Stage(String, usize),
    /// Something worth knowing that stops nothing (the cluster differs from the charts' profile).
    Note(String),
    /// An object was handled.
    Object(ObjectId, Action, Option<String>),
}

/// The outcome of an apply.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Every object and what happened, in order.
    pub objects: Vec<(ObjectId, Action, Option<String>)>,
    /// Objects that did not become ready, with why.
    pub not_ready: Vec<(ObjectId, String)>,
    /// With [`Options::dry_run`]: a unified diff per object that would change.
    pub diffs: Vec<(ObjectId, String)>,
}

impl Summary {
    /// How many objects had this outcome.
    pub fn count(&self, action: Action) -> usize {
        self.objects.iter().filter(|(_, a, _)| *a == action).count()
    }

    /// The objects created, configured or pruned (in a dry run: that would be).
    pub fn changes(&self) -> impl Iterator<Item = &(ObjectId, Action, Option<String>)> {
        self.objects
            .iter()
            .filter(|(_, a, _)| matches!(a, Action::Created | Action::Configured | Action::Pruned))
    }
}

/// One object the server refused, with its reason.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The object.
    pub id: ObjectId,
    /// Where it was rendered from.
    pub source: String,
    /// The server's reason (or ours).
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.id, self.source, self.reason)
    }
}

/// Why an apply stopped. Never holds secret values (server messages about Secrets name fields, not
/// values).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Talking to the cluster failed.
    #[error("cluster: {}", reason(.0))]
    Kube(#[from] kube::Error),
    /// [`Options::gate`] closed: the apply stopped between steps; nothing was pruned.
    #[error(
        "stopped before finishing: this process may no longer write (another replica holds the Lease); nothing was pruned"
    )]
    Interrupted,
    /// A kind the cluster does not serve and no CRD in the set defines.
    #[error("{0}")]
    UnknownKind(String),
    /// Objects failed the dry run; what had been written by then is in `written`.
    #[error("{} object(s) failed validation{}:\n  {}", .refusals.len(), .written, .refusals.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Validation {
        /// Each failing object.
        refusals: Vec<Refusal>,
        /// What had been written when validation failed.
        written: Written,
    },
    /// Objects failed to apply after validation passed.
    #[error("{} object(s) failed to apply (nothing was pruned):\n  {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Apply(Vec<Refusal>),
    /// Pruning would delete too much.
    #[error("prune refused: {stale} of {total} inventoried object(s) would be deleted{}; nothing was applied. If this is intended, pass --allow-mass-prune (a Sync: spec.allowMassPrune: true)", if *.everything { " (everything)" } else { " (more than half)" })]
    MassPrune {
        /// Objects that would go.
        stale: usize,
        /// Objects in the inventory.
        total: usize,
        /// Whether the new set is empty.
        everything: bool,
    },
    /// Objects go into namespaces that neither exist nor are in the set.
    #[error(
        "namespace {} does not exist and is not in the set; nothing was written. Add `createNamespace: true` to the environment in lockstep.yaml, add a Namespace to the templates, or create it", .0.join(", ")
    )]
    MissingNamespace(Vec<String>),
    /// The object or inventory belongs to another Sync.
    #[error(
        "{what} belongs to {owner} ({OWNER_ANNOTATION}); two Syncs may not manage one object or environment: remove it from one of them, or delete the other Sync first; nothing was written"
    )]
    Owned {
        /// What is owned.
        what: String,
        /// Its owner.
        owner: String,
    },
    /// The inventory was written by another apply while this one ran.
    #[error(
        "the inventory changed while applying (another apply of this environment ran at the same time); run again"
    )]
    InventoryChanged,
    /// A keyless set (secret-bearing objects left sealed) was given to a real apply.
    #[error("a set with sealed objects can only be previewed (diff), never applied")]
    SealedApply,
    /// The API server will not serve a CRD of the set: its names collide with another's.
    #[error(
        "CustomResourceDefinition {name} is not accepted: {message}; rename its kind, plural, singular or short names"
    )]
    CrdRejected {
        /// The CRD.
        name: String,
        /// The server's NamesAccepted message.
        message: String,
    },
    /// A CRD did not become Established in time.
    #[error("CustomResourceDefinition {0} was not Established within the timeout")]
    CrdTimeout(String),
    /// A hook failed (or the objects it follows did not become healthy for a post hook).
    #[error("{0}")]
    Hook(Box<HookFailure>),
    /// A wave's objects did not become healthy: the later waves were not applied.
    #[error("{0}")]
    Wave(Box<WaveFailure>),
    /// An environment this one depends on is not applied or not healthy.
    #[error("environment {environment} depends on {needed}: {why}; nothing was applied")]
    Dependency {
        /// This environment.
        environment: String,
        /// The one it depends on.
        needed: String,
        /// What is missing.
        why: String,
    },
}

/// A wave whose objects did not become healthy.
#[derive(Debug, thiserror::Error)]
#[error(
    "wave {wave} is not healthy: {id}: {why}; the later waves ({later}) were not applied and nothing was pruned"
)]
pub struct WaveFailure {
    /// The wave.
    pub wave: i64,
    /// Its first object that is not ready.
    pub id: ObjectId,
    /// Why.
    pub why: String,
    /// The waves not applied.
    pub later: String,
}

/// A hook that failed.
#[derive(Debug, thiserror::Error)]
#[error("{}{phase} hook {id} failed: {reason}; {after}", .release.as_ref().map_or(String::new(), |r| format!("chart {r}: ")))]
pub struct HookFailure {
    /// The chart release whose hook it is (`None`: an environment hook).
    pub release: Option<String>,
    /// The name of the phase (Helm's for chart hooks).
    pub phase: &'static str,
    /// The hook (or the object that was not healthy).
    pub id: ObjectId,
    /// Why.
    pub reason: String,
    /// What was and was not done.
    pub after: &'static str,
}

/// What an apply had written when it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Nothing.
    Nothing,
    /// Stage 0 (CRDs and Namespaces the later objects need) changed the cluster.
    CrdsAndNamespaces,
    /// A preview ([`Options::dry_run`]): nothing is ever written.
    Preview,
}

impl fmt::Display for Written {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Written::Nothing => "; nothing was written",
            Written::CrdsAndNamespaces => "; only CRDs and Namespaces were written",
            Written::Preview => "",
        })
    }
}

/// API requests made by clients from [`counting_client`] in this process.
static REQUESTS: std::sync::LazyLock<std::sync::Arc<std::sync::atomic::AtomicUsize>> =
    std::sync::LazyLock::new(Default::default);

/// How many API requests this process has made (for `--output json` and the controller's metrics).
pub fn requests_made() -> usize {
    REQUESTS.load(std::sync::atomic::Ordering::Relaxed)
}

/// A client for `config` that counts its requests in [`requests_made`].
pub fn counting_client(config: kube::Config) -> Result<Client, kube::Error> {
    let counter = REQUESTS.clone();
    let count = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        req
    });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&count)
        .build())
}

/// Parses `90s`, `5m`, `1h` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration such as 90s, 5m or 1h"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        _ => return Err(format!("{s:?}: units are s, m or h")),
    };
    match secs {
        Some(secs) if secs <= MAX_DURATION.as_secs() => Ok(Duration::from_secs(secs)),
        _ => Err(format!("{s:?}: at most {}h", MAX_DURATION.as_secs() / 3600)),
    }
}

/// The longest duration [`parse_duration`] accepts (30 days): intervals and timeouts beyond it are
/// mistakes, and would overflow clock arithmetic further on.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// A JSON body whose `Debug` never shows its content (kube requires `Debug` on patch bodies).
struct Redacted<'a>(&'a Json);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<object>")
    }
}

impl serde::Serialize for Redacted<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Where an object goes: its resource and whether it is namespaced.
#[derive(Clone)]
struct Target {
    ar: ApiResource,
    namespaced: bool,
}

fn version_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or(api_version, |(_, v)| v)
}

fn api(client: &Client, t: &Target, ns: Option<&str>) -> Api<DynamicObject> {
    match (t.namespaced, ns) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &t.ar),
        _ => Api::all_with(client.clone(), &t.ar),
    }
}

/// The server's message for an error, without the Rust wrapping.
pub fn reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            let mut s = status.message.clone();
            if s.is_empty() {
                s = format!("{status:?}");
            }
            s
        }
        other => other.to_string(),
    }
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Adds lockstep's ownership labels to an object.
pub fn label(object: &mut Json, project: &str, environment: &str) {
    let Some(obj) = object.as_object_mut() else {
        return;
    };
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    if !labels.is_object() {
        *labels = json!({});
    }
    if let Some(labels) = labels.as_object_mut() {
        labels.insert(MANAGED_BY.0.into(), Json::String(MANAGED_BY.1.into()));
        labels.insert(PROJECT_LABEL.into(), Json::String(project.into()));
        labels.insert(ENVIRONMENT_LABEL.into(), Json::String(environment.into()));
    }
}

/// The label selector matching objects of one project environment.
pub fn selector(project: &str, environment: &str) -> String {
    format!(
        "{}={},{PROJECT_LABEL}={project},{ENVIRONMENT_LABEL}={environment}",
        MANAGED_BY.0, MANAGED_BY.1
    )
}

/// Removes what the server adds or changes on every write (and the type fields list items lack),
/// for comparing objects.
pub fn strip_noise(v: &mut Json) {
    if let Some(obj) = v.as_object_mut() {
        obj.remove("apiVersion");
        obj.remove("kind");
    }
    if let Some(meta) = v.get_mut("metadata").and_then(Json::as_object_mut) {
        for k in [
            "managedFields",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "uid",
        ] {
            meta.remove(k);
        }
    }
}

/// What of an object's content its applied digest may cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digestible {
    /// Everything (no decrypted value in it).
    All,
    /// A Secret: everything but its values (only their key names count).
    SecretKeys,
    /// An object from a whole-file SOPS manifest: plaintext may be anywhere in it, so only its
    /// identity and metadata count — including its sealed digest, which changes with its ciphertext.
    MetadataOnly,
}

/// A digest of the object lockstep sends, without its own annotation. Decrypted values are left
/// out ([`Digestible`]): they are compared in memory against the live object instead, so no digest
/// of a secret is ever stored.
pub fn applied_digest(body: &Json, digestible: Digestible) -> String {
    use sha2::Digest as _;
    let mut copy = SecretJson::wrap(body.clone());
    let v = copy.expose_mut();
    if let Some(a) = v
        .get_mut("metadata")
        .and_then(|m| m.get_mut("annotations"))
        .and_then(Json::as_object_mut)
    {
        a.remove(APPLIED_ANNOTATION);
    }
    if let Some(meta) = v.get_mut("metadata").and_then(Json::as_object_mut)
        && meta
            .get("annotations")
            .and_then(Json::as_object)
            .is_some_and(|a| a.is_empty())
    {
        meta.remove("annotations");
    }
    match digestible {
        Digestible::All => {}
        Digestible::SecretKeys => {
            for section in ["data", "stringData"] {
                if let Some(m) = v.get_mut(section).and_then(Json::as_object_mut) {
                    for (_, value) in m.iter_mut() {
                        *value = Json::String(String::new());
                    }
                }
            }
        }
        Digestible::MetadataOnly => {
            if let Some(obj) = v.as_object_mut() {
                obj.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata"));
            }
        }
    }
    let text = serde_json::to_vec(v).unwrap_or_default();
    hex::encode(&sha2::Sha256::digest(&text)[..16])
}

fn annotate(body: &mut Json, digest: &str) {
    let Some(meta) = body.get_mut("metadata").and_then(Json::as_object_mut) else {
        return;
    };
    let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
    if !annotations.is_object() {
        *annotations = json!({});
    }
    if let Some(a) = annotations.as_object_mut() {
        a.insert(APPLIED_ANNOTATION.into(), Json::String(digest.into()));
    }
}

/// Whether every field of `desired` is in `live` with the same value (lists element by element).
pub fn is_subset(desired: &Json, live: &Json) -> bool {
    match (desired, live) {
        (Json::Object(d), Json::Object(l)) => d
            .iter()
            .all(|(k, v)| l.get(k).is_some_and(|lv| is_subset(v, lv))),
        (Json::Array(d), Json::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(a, b)| is_subset(a, b))
        }
        (a, b) => a == b,
    }
}

/// Whether a live object is exactly what lockstep last applied and still holds every field of it.
fn untouched(body: &Json, digest: &str, live: Option<&SecretJson>) -> bool {
    let Some(live) = live.map(SecretJson::expose) else {
        return false;
    };
    // List items carry no apiVersion/kind; everything else must be there as sent.
    let fields_match = body.as_object().is_some_and(|b| {
        b.iter()
            .filter(|(k, _)| *k != "apiVersion" && *k != "kind")
            .all(|(k, v)| live.get(k).is_some_and(|lv| is_subset(v, lv)))
    });
    live["metadata"]["annotations"][APPLIED_ANNOTATION].as_str() == Some(digest) && fields_match
}

/// Discovery plus what the set's own CRDs define.
/// How long a process reuses the API server's discovery (a long-running controller would otherwise
/// fetch it on every sync); a kind it does not know triggers a fresh look at once.
const DISCOVERY_TTL: Duration = Duration::from_secs(60);

static DISCOVERY: std::sync::Mutex<Option<(std::time::Instant, std::sync::Arc<Discovery>)>> =
    std::sync::Mutex::new(None);

/// The cluster's discovery: the cached one when fresh enough (`true`), else fetched now.
async fn discovery(
    client: &Client,
    fresh: bool,
) -> Result<(std::sync::Arc<Discovery>, bool), ApplyError> {
    if !fresh
        && let Ok(guard) = DISCOVERY.lock()
        && let Some((at, d)) = guard.as_ref()
        && at.elapsed() < DISCOVERY_TTL
    {
        return Ok((d.clone(), true));
    }
    Ok((discovery_now(client).await?, false))
}

async fn discovery_now(client: &Client) -> Result<std::sync::Arc<Discovery>, ApplyError> {
    let d = std::sync::Arc::new(Discovery::new(client.clone()).run_aggregated().await?);
    if let Ok(mut guard) = DISCOVERY.lock() {
        *guard = Some((std::time::Instant::now(), d.clone()));
    }
    Ok(d)
}

struct Resolver {
    discovery: std::sync::Arc<Discovery>,
    /// (group, kind) → (plural, namespaced) from CRDs in the set.
    from_crds: HashMap<(String, String), (String, bool)>,
}

impl Resolver {
    async fn new(client: &Client, set: &ApplySet) -> Result<Resolver, ApplyError> {
        let (discovery, cached) = discovery(client, false).await?;
        let mut resolver = Resolver::with(discovery, set);
        // A kind that appeared since the cached discovery: look again before calling it unknown.
        if cached
            && set
                .objects
                .iter()
                .any(|o| resolver.resolve(&o.api_version, &o.id).is_none())
        {
            resolver.discovery = discovery_now(client).await?;
        }
        Ok(resolver)
    }

    fn with(discovery: std::sync::Arc<Discovery>, set: &ApplySet) -> Resolver {
        let mut from_crds = HashMap::new();
        for o in &set.objects {
            if o.id.kind == "CustomResourceDefinition" {
                let spec = &o.object.expose()["spec"];
                if let (Some(g), Some(k), Some(p)) = (
                    spec["group"].as_str(),
                    spec["names"]["kind"].as_str(),
                    spec["names"]["plural"].as_str(),
                ) {
                    let namespaced = spec["scope"].as_str() != Some("Cluster");
                    from_crds.insert((g.to_string(), k.to_string()), (p.to_string(), namespaced));
                }
            }
        }
        Resolver {
            discovery,
            from_crds,
        }
    }

    /// The target of a kind; `deferred` when only a CRD of the set defines it (not served yet).
    fn resolve(&self, api_version: &str, id: &ObjectId) -> Option<(Target, bool)> {
        let gvk = GroupVersionKind::gvk(&id.group, version_of(api_version), &id.kind);
        if let Some((ar, caps)) = self.discovery.resolve_gvk(&gvk) {
            return Some((
                Target {
                    ar,
                    namespaced: caps.scope == Scope::Namespaced,
                },
                false,
            ));
        }
        let (plural, namespaced) = self.from_crds.get(&(id.group.clone(), id.kind.clone()))?;
        Some((
            Target {
                ar: ApiResource::from_gvk_with_plural(&gvk, plural),
                namespaced: *namespaced,
            },
            true,
        ))
    }
}

/// The result of a dry run of one object.
enum Checked {
    /// The server accepted it; this is what it would store.
    Accepted(SecretJson),
    /// The server refused it.
    Refused(String),
    /// It changes an immutable field and opts in to [`replace::REPLACE`]: deleted, then created.
    Replace,
}

/// One object of the set on its way to the cluster.
struct Item<'a> {
    obj: &'a ApplyObject,
    target: Target,
    deferred: bool,
    body: SecretJson,
    /// [`applied_digest`] of `body`.
    digest: String,
    /// The live object is what was last applied: no request needed.
    untouched: bool,
    /// The object exists in the cluster (so its dry-run result is compared with it).
    live: bool,
    /// It exists without this environment's labels: applying takes it over.
    adopted: bool,
    /// Its wave ([`waves::wave_of`]).
    wave: i64,
    /// It was applied before the hooks that need it (not again with its wave).
    early: bool,
}

impl Item<'_> {
    /// Secrets, and any object that carries decrypted values (a whole-file SOPS manifest).
    fn carries_plaintext(&self) -> bool {
        let id = &self.obj.id;
        (id.group.is_empty() && id.kind == "Secret") || self.obj.has_secrets
    }

    /// The server's reason for refusing this item, with any value it quotes hidden when the item
    /// carries decrypted values.
    fn refused(&self, e: &kube::Error) -> String {
        let message = reason(e);
        if self.carries_plaintext() {
            redact::hide_values(&message, self.body.expose())
        } else {
            message
        }
    }
}

/// Server-side applies one item with `pp` (a dry run when `pp` says so).
async fn send(
    client: &Client,
    item: &Item<'_>,
    pp: &PatchParams,
) -> Result<DynamicObject, kube::Error> {
    api(client, &item.target, item.obj.id.namespace.as_deref())
        .patch(
            &item.obj.id.name,
            pp,
            &Patch::Apply(Redacted(item.body.expose())),
        )
        .await
}

/// Like [`send`] when the response is not needed: asks for Protobuf (far cheaper for the API server
/// to encode than JSON; custom resources fall back to JSON) and discards the body. On failure the
/// request is repeated with JSON, so the error carries the server's message (server-side apply is
/// idempotent).
async fn send_quiet(client: &Client, item: &Item<'_>, pp: &PatchParams) -> Result<(), kube::Error> {
    use kube::Resource as _;
    let ns = if item.target.namespaced {
        item.obj.id.namespace.as_deref()
    } else {
        None
    };
    let url = DynamicObject::url_path(&item.target.ar, ns);
    let mut req = kube::core::Request::new(url)
        .patch(
            &item.obj.id.name,
            pp,
            &Patch::Apply(Redacted(item.body.expose())),
        )
        .map_err(kube::Error::BuildRequest)?;
    req.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static(
            "application/vnd.kubernetes.protobuf;q=1, application/json;q=0.9",
        ),
    );
    let response = client.send(req.map(kube::client::Body::from)).await?;
    let ok = response.status().is_success();
    let _ = response.into_body().collect_bytes().await;
    if ok {
        Ok(())
    } else {
        send(client, item, pp).await.map(|_| ())
    }
}

async fn dry_run(client: &Client, item: &Item<'_>, pp: &PatchParams) -> Checked {
    match send(client, item, pp).await {
        Ok(o) => match serde_json::to_value(&o) {
            Ok(v) => Checked::Accepted(SecretJson::wrap(v)),
            Err(e) => Checked::Refused(format!("unreadable dry-run result: {e}")),
        },
        Err(e) => Checked::Refused(item.refused(&e)),
    }
}

async fn dry_run_all(client: &Client, items: &[&Item<'_>], opts: &Options) -> Vec<Checked> {
    // Strict: an unknown or duplicated field is an error naming it, as `kubectl apply` does.
    let mut pp = PatchParams::apply(FIELD_MANAGER)
        .dry_run()
        .validation(kube::api::ValidationDirective::Strict);
    if opts.force_conflicts {
        pp = pp.force();
    }
    let pp = &pp;
    // A new object's dry-run result is only shown by a diff; otherwise success is all that counts.
    let keep = |item: &Item<'_>| opts.dry_run || item.live;
    // Made lazily, so only `concurrency` requests exist at once (each future is the size of a
    // whole request). The closure takes an index, not a reference: a closure over references in a
    // stream held across `.await` makes the caller's future lose `Send` (rust-lang/rust#102211), and
    // the controller runs each reconcile on its own task.
    let work = (0..items.len()).map(|n| {
        let item = items[n];
        async move {
            if keep(item) {
                dry_run(client, item, pp).await
            } else {
                match send_quiet(client, item, pp).await {
                    Ok(()) => Checked::Accepted(SecretJson::wrap(Json::Null)),
                    Err(e) => Checked::Refused(item.refused(&e)),
                }
            }
        }
    });
    stream::iter(work)
        .buffered(opts.concurrency.max(1))
        .collect()
        .await
}

/// Objects per page when listing live objects.
const LIST_PAGE: u32 = 500;

/// Lists the live objects of the set's resources that carry our labels, by (resource, ns, name).
async fn live_objects(
    client: &Client,
    items: &[Item<'_>],
    sel: &str,
) -> Result<HashMap<LiveKey, SecretJson>, ApplyError> {
    let mut groups: BTreeMap<(String, Option<String>), Target> = BTreeMap::new();
    for i in items {
        let ns = if i.target.namespaced {
            i.obj.id.namespace.clone()
        } else {
            None
        };
        groups
            .entry((
                i.target.ar.api_version.clone() + "/" + &i.target.ar.plural,
                ns,
            ))
            .or_insert_with(|| i.target.clone());
    }
    let mut live = HashMap::new();
    for ((key, ns), target) in groups {
        use kube::Resource as _;
        let url = DynamicObject::url_path(&target.ar, ns.as_deref());
        let mut lp = ListParams::default().labels(sel).limit(LIST_PAGE);
        loop {
            let req = kube::core::Request::new(&url)
                .list(&lp)
                .map_err(kube::Error::BuildRequest)?;
            // Read as plain JSON (no typed copy), one page at a time.
            let mut page: Json = match client.request::<Json>(req).await {
                Ok(p) => p,
                // A namespace or CRD that does not exist yet has nothing live.
                Err(e) if status_code(&e) == Some(404) => break,
                // Not allowed to list: the dry run of each object reports what is forbidden.
                Err(e) if status_code(&e) == Some(403) => break,
                Err(e) => return Err(e.into()),
            };
            let next = page["metadata"]["continue"]
                .as_str()
                .filter(|c| !c.is_empty())
                .map(str::to_string);
            if let Some(items) = page.get_mut("items").and_then(Json::as_array_mut) {
                for mut o in items.drain(..) {
                    // Field ownership is the server's business; it is the bulk of a live object.
                    if let Some(meta) = o.get_mut("metadata").and_then(Json::as_object_mut) {
                        meta.remove("managedFields");
                    }
                    let name = o["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    live.insert((key.clone(), ns.clone(), name), SecretJson::wrap(o));
                }
            }
            drop(SecretJson::wrap(page));
            match next {
                Some(token) => lp.continue_token = Some(token),
                None => break,
            }
        }
    }
    Ok(live)
}

/// For a preview: finds the objects of the set that exist without this environment's labels (made
/// by hand, by another tool or another environment), so the diff compares with what is really there
/// and says the object will be adopted. One GET per object the labelled lists did not find.
async fn find_unlabelled(
    client: &Client,
    items: &mut [Item<'_>],
    live: &mut HashMap<LiveKey, SecretJson>,
    opts: &Options,
) -> Result<(), ApplyError> {
    let unseen: Vec<usize> = (0..items.len())
        .filter(|&i| !items[i].deferred && !live.contains_key(&live_key(&items[i])))
        .collect();
    let shared: &[Item<'_>] = items;
    // Lazy, over indices, as in `dry_run_all`.
    let work = unseen.iter().copied().map(|i| {
        let item = &shared[i];
        async move { (i, get_live(client, &item.target, &item.obj.id).await) }
    });
    let found: Vec<_> = stream::iter(work)
        .buffered(opts.concurrency.max(1))
        .collect()
        .await;
    for (i, got) in found {
        let json = match got {
            Ok(Some(o)) => o,
            // Not there (a new object), or not allowed to read it (the dry run reports that).
            Ok(None) => continue,
            Err(e) if status_code(&e) == Some(403) => continue,
            Err(e) => return Err(e.into()),
        };
        items[i].adopted = true;
        live.insert(live_key(&items[i]), json);
    }
    Ok(())
}

/// Reads one live object as plain JSON straight into a wiping container (a Secret holds values),
/// without its managed fields; `None` when it does not exist.
async fn get_live(
    client: &Client,
    target: &Target,
    id: &ObjectId,
) -> Result<Option<SecretJson>, kube::Error> {
    use kube::Resource as _;
    let ns = id.namespace.as_deref().filter(|_| target.namespaced);
    let url = DynamicObject::url_path(&target.ar, ns);
    let req = kube::core::Request::new(url)
        .get(&id.name, &Default::default())
        .map_err(kube::Error::BuildRequest)?;
    let mut json = match client.request::<Json>(req).await {
        Ok(o) => SecretJson::wrap(o),
        Err(e) if status_code(&e) == Some(404) => return Ok(None),
        Err(e) => return Err(e),
    };
    if let Some(meta) = json
        .expose_mut()
        .get_mut("metadata")
        .and_then(Json::as_object_mut)
    {
        meta.remove("managedFields");
    }
    Ok(Some(json))
}

fn live_key(item: &Item<'_>) -> LiveKey {
    let ns = if item.target.namespaced {
        item.obj.id.namespace.clone()
    } else {
        None
    };
    (
        item.target.ar.api_version.clone() + "/" + &item.target.ar.plural,
        ns,
        item.obj.id.name.clone(),
    )
}

/// Whether a dry-run result equals the live object (so nothing needs to be sent).
fn same(dry: &Json, live: Option<&Json>) -> bool {
    let Some(live) = live else {
        return false;
    };
    let mut a = SecretJson::wrap(dry.clone());
    let mut b = SecretJson::wrap(live.clone());
    strip_noise(a.expose_mut());
    strip_noise(b.expose_mut());
    a.expose() == b.expose()
}

async fn wait_crd_established(
    client: &Client,
    name: &str,
    deadline: Deadline,
) -> Result<(), ApplyError> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
        "customresourcedefinitions",
    );
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    loop {
        if let Some(crd) = api.get_opt(name).await? {
            let conditions = crd.data["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let holds = |t: &str, s: &str| {
                conditions
                    .iter()
                    .find(|c| c["type"] == t && c["status"] == s)
            };
            if holds("Established", "True").is_some() {
                return Ok(());
            }
            // Names another CRD already uses: it will never be Established; say so at once.
            if let Some(c) = holds("NamesAccepted", "False") {
                return Err(ApplyError::CrdRejected {
                    name: name.to_string(),
                    message: c["message"].as_str().unwrap_or_default().to_string(),
                });
            }
        }
        if deadline.passed() {
            return Err(ApplyError::CrdTimeout(name.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stage of an object: 0 = CRDs and Namespaces, 1 = cluster RBAC and classes, 2 = the rest.
fn stage_of(id: &ObjectId) -> usize {
    match id.kind.as_str() {
        "CustomResourceDefinition" | "Namespace" => 0,
        "ClusterRole" | "ClusterRoleBinding" => 1,
        k if k.ends_with("Class") && id.namespace.is_none() => 1,
        _ => 2,
    }
}

/// The number of [`stage_of`] stages.
const STAGES: usize = 3;

/// Key of a live object: (resource, namespace, name).
type LiveKey = (String, Option<String>, String);

/// An apply in progress: the set resolved against the cluster, the inventory read, the prune
/// planned and the live objects known — before anything is written. The pipeline drives it one
/// step at a time: [`Plan::validate`] → [`Plan::apply`] → [`Plan::prune`] → [`Plan::health`], then
/// [`Plan::finish`]. A step that fails leaves every later step undone (nothing pruned after an
/// error).
pub struct Plan<'a> {
    client: &'a Client,
    set: &'a ApplySet,
    opts: &'a Options,
    resolver: Resolver,
    items: Vec<Item<'a>>,
    inventory_api: Api<DynamicObject>,
    previous: Inventory,
    current: BTreeSet<InventoryEntry>,
    stale: Vec<InventoryEntry>,
    live: HashMap<LiveKey, SecretJson>,
    results: HashMap<usize, Checked>,
    summary: Summary,
    /// The chart hooks of the set (not inventoried, never pruned).
    hooks: Vec<hooks::HookItem<'a>>,
    /// Hooks lockstep never runs (`test`, delete, rollback), with their kinds.
    skipped_hooks: Vec<(ObjectId, String)>,
    /// Per release with hooks: whether it was installed before this apply, and whether anything
    /// of it changes (hooks run only then).
    releases: BTreeMap<String, (bool, bool)>,
    /// Whether this apply changes the environment (a new revision, an object it writes,
    /// something to prune): its environment hooks run only then.
    changed: bool,
    /// Whether this apply has written anything of the set yet (an object, a hook, a deletion):
    /// the `on-failure` hooks run only then.
    wrote: bool,
    /// When the waits of this apply must end ([`Options::timeout`] from the plan's start).
    deadline: Deadline,
}

impl<'a> Plan<'a> {
    /// Resolves every object of `set` (labelled, annotated), finds namespaces that do not exist
    /// yet, reads the inventory, refuses a mass prune and lists the live objects. Writes nothing.
    pub async fn new(
        client: &'a Client,
        set: &'a ApplySet,
        opts: &'a Options,
    ) -> Result<Plan<'a>, ApplyError> {
        let deadline = Deadline::after(opts.timeout);
        let resolver = Resolver::new(client, set).await?;
        let (mut items, refusals) = resolve_items(&resolver, set, opts.owner.as_deref())?;
        defer_missing_namespaces(client, &mut items, opts).await?;
        let (mut items, hooks, skipped_hooks) = split_hooks(items, refusals)?;
        let inventory_api = inventory::api(client, &set.namespace);
        let previous = Inventory::read(&inventory_api, &set.project, &set.environment).await?;
        previous.check_owner(
            opts.owner.as_deref(),
            &format!(
                "{}/{}",
                set.namespace,
                inventory::name(&set.project, &set.environment)
            ),
        )?;
        if !set.sealed.is_empty() && !opts.dry_run {
            return Err(ApplyError::SealedApply);
        }
        // A keyless preview's sealed objects are part of the set: they are compared, not stale.
        let current: BTreeSet<InventoryEntry> = items
            .iter()
            .map(|i| InventoryEntry::of(&i.obj.id, &i.obj.api_version))
            .chain(
                set.sealed
                    .iter()
                    .map(|s| InventoryEntry::of(&s.id, &s.api_version)),
            )
            .collect();
        let stale = stale_entries(&previous, &current, opts)?;
        let mut live =
            live_objects(client, &items, &selector(&set.project, &set.environment)).await?;
        if opts.dry_run {
            find_unlabelled(client, &mut items, &mut live, opts).await?;
        }
        for item in items.iter_mut() {
            let key = live_key(item);
            item.untouched = untouched(item.body.expose(), &item.digest, live.get(&key));
            item.live = live.contains_key(&key);
        }
        refuse_foreign(&items, &live, opts.owner.as_deref())?;
        // Settled by `validate` once the dry run says what would be written.
        let releases = release_states(&items, &hooks, &previous, &opts.revision, |i| {
            !items[i].untouched
        });
        let changed = true;
        Ok(Plan {
            client,
            set,
            opts,
            resolver,
            items,
            inventory_api,
            previous,
            current,
            stale,
            live,
            results: HashMap::new(),
            summary: Summary::default(),
            hooks,
            skipped_hooks,
            releases,
            changed,
            wrote: false,
            deadline,
        })
    }

    /// Dependencies: every environment the set depends on (`dependsOn`) is applied in this
    /// cluster (it has an inventory) and its objects are healthy, waited within the timeout. A
    /// preview only says what is missing.
    pub async fn dependencies(&self, progress: &mut impl FnMut(&Event)) -> Result<(), ApplyError> {
        for need in &self.set.needs {
            let env = &need.environment;
            let api = inventory::api(self.client, &need.namespace);
            let found = Inventory::read(&api, &self.set.project, env).await?;
            let why = if found.entries.is_empty() {
                Some(format!(
                    "it is not applied in this cluster (no inventory {}/{}); apply it first: lockstep apply --env {env}",
                    need.namespace,
                    inventory::name(&self.set.project, env)
                ))
            } else {
                let watched: Vec<(ObjectId, Api<DynamicObject>)> = found
                    .entries
                    .iter()
                    .filter(|e| health::has_rule(&e.id()))
                    .filter_map(|e| {
                        inventory::api_for(self.client, &self.resolver.discovery, e)
                            .map(|api| (e.id(), api))
                    })
                    .collect();
                progress(&Event::Stage(
                    format!("wait for environment {env} (dependsOn)"),
                    watched.len(),
                ));
                let deadline = if self.opts.dry_run {
                    Deadline::now()
                } else {
                    self.deadline
                };
                let left = health::wait(self.client, &watched, deadline).await?;
                left.into_iter()
                    .next()
                    .map(|(id, why)| format!("{id} is not healthy: {why}"))
            };
            if let Some(why) = why {
                if self.opts.dry_run {
                    progress(&Event::Note(format!(
                        "environment {} depends on {env}: {why}",
                        self.set.environment
                    )));
                    continue;
                }
                return Err(ApplyError::Dependency {
                    environment: self.set.environment.clone(),
                    needed: env.clone(),
                    why,
                });
            }
        }
        Ok(())
    }

    /// Validate: a strict server-side dry run of every object that can be checked now (objects of
    /// namespaces and CRDs the set creates are checked by [`Plan::apply`] once those exist).
    pub async fn validate(&mut self, progress: &mut impl FnMut(&Event)) -> Result<(), ApplyError> {
        let now: Vec<usize> = (0..self.items.len())
            .filter(|&i| !self.items[i].deferred && !self.items[i].untouched)
            .collect();
        progress(&Event::Stage(
            "validate (server-side dry run)".into(),
            now.len(),
        ));
        let written = if self.opts.dry_run {
            Written::Preview
        } else {
            Written::Nothing
        };
        for (id, kinds) in &self.skipped_hooks {
            progress(&Event::Note(format!(
                "{id}: a {kinds} hook, which lockstep does not run; it is not applied"
            )));
        }
        self.dry_run(&now, written).await?;
        self.dry_run_hooks().await?;
        self.settle_changes();
        Ok(())
    }

    /// Whether item `i` will be written: it is not as last applied, and its dry-run result
    /// differs from the live object (or it was not checked yet: new, in a new namespace).
    fn writes(&self, i: usize) -> bool {
        let item = &self.items[i];
        if item.untouched {
            return false;
        }
        match self.results.get(&i) {
            Some(Checked::Accepted(dry)) => !same(
                dry.expose(),
                self.live.get(&live_key(item)).map(SecretJson::expose),
            ),
            _ => true,
        }
    }

    /// Decides, from the dry run, which releases and whether the environment change (hooks run
    /// only then).
    fn settle_changes(&mut self) {
        let writes: Vec<bool> = (0..self.items.len()).map(|i| self.writes(i)).collect();
        self.releases = release_states(
            &self.items,
            &self.hooks,
            &self.previous,
            &self.opts.revision,
            |i| writes[i],
        );
        self.changed = self.previous.revision != self.opts.revision
            || self.previous.hooks_pending
            || writes.iter().any(|&w| w)
            || self.prunes_something();
    }

    /// Whether a stale entry is up for deletion: pruning is on and it is not a protected kind
    /// kept without consent (a kept entry stays in the inventory; it alone changes nothing).
    fn prunes_something(&self) -> bool {
        self.opts.prune
            && self
                .stale
                .iter()
                .any(|e| self.opts.prune_protected || !inventory::protected(&e.kind))
    }

    /// The dry run of every hook that can be checked now: not in a namespace the set creates,
    /// and not live (a live one is deleted before it is created again).
    async fn dry_run_hooks(&self) -> Result<(), ApplyError> {
        let pp = PatchParams::apply(FIELD_MANAGER).dry_run().force();
        let mut refusals = Vec::new();
        for h in self.hooks.iter().filter(|h| !h.item.deferred) {
            let id = &h.item.obj.id;
            let api = api(self.client, &h.item.target, id.namespace.as_deref());
            if api.get_opt(&id.name).await?.is_some() {
                continue;
            }
            if let Err(e) = send(self.client, &h.item, &pp).await {
                refusals.push(Refusal {
                    id: id.clone(),
                    source: h.item.obj.source.clone(),
                    reason: h.item.refused(&e),
                });
            }
        }
        if refusals.is_empty() {
            Ok(())
        } else {
            Err(ApplyError::Validation {
                refusals,
                written: if self.opts.dry_run {
                    Written::Preview
                } else {
                    Written::Nothing
                },
            })
        }
    }

    /// How the cluster differs from the profile the set's charts were rendered for: another
    /// Kubernetes version, or listed API versions it does not serve (empty: it matches, or there is
    /// no profile).
    pub async fn profile_differences(&self) -> Vec<String> {
        let Some(profile) = &self.set.profile else {
            return Vec::new();
        };
        let mut notes = Vec::new();
        if let Some(wanted) = &profile.kube_version
            && let Ok(info) = self.client.apiserver_version().await
        {
            let bare = |v: &str| v.trim_start_matches('v').to_string();
            let running = info.git_version;
            if bare(wanted) != bare(&running) {
                notes.push(format!(
                    "the environment's kubeVersion is {wanted}, the cluster runs {running}: its charts were rendered for {wanted} (.Capabilities.KubeVersion); set kubeVersion: {running} to render what this cluster gets"
                ));
            }
        }
        for listed in &profile.api_versions {
            let mut parts = listed.splitn(3, '/');
            let (first, second, kind) = (parts.next(), parts.next(), parts.next());
            let (group, version) = match (first, second) {
                (Some(g), Some(v)) => (g, v),
                (Some(v), None) => ("", v),
                _ => continue,
            };
            let served = match kind {
                Some(kind) => self
                    .resolver
                    .discovery
                    .resolve_gvk(&GroupVersionKind::gvk(group, version, kind))
                    .is_some(),
                None => self
                    .resolver
                    .discovery
                    .groups()
                    .any(|g| g.name() == group && g.versions().any(|v| v == version)),
            };
            if !served {
                notes.push(format!(
                    "the environment's apiVersions lists {listed}, which the cluster does not serve: its charts were rendered as if it did (.Capabilities.APIVersions)"
                ));
            }
        }
        notes
    }

    /// Apply: CRDs and Namespaces (waited Established), the pre hooks (after what they name),
    /// then wave by wave cluster RBAC and classes, then the rest; within a stage kind by kind,
    /// objects concurrently; each wave waited healthy before the next. With
    /// [`Options::dry_run`], only compares and records a diff per object that would change.
    pub async fn apply(&mut self, progress: &mut impl FnMut(&Event)) -> Result<(), ApplyError> {
        let all: Vec<usize> = (0..self.items.len()).collect();
        self.apply_stage(0, &all, "", progress).await?;
        if !self.opts.dry_run {
            self.wait_crds().await?;
        }
        self.validate_deferred(progress).await?;
        // The inventory's namespace exists now (stage 0 may have created it).
        self.record_pending().await?;
        // As in Helm: CRDs and namespaces first, then the hooks — once what they use exists.
        self.apply_needed(progress).await?;
        self.environment_hooks(hooks::Phase::PreApply, progress)
            .await?;
        self.run_hooks(false, progress).await?;
        let waves = self.waves();
        for (n, (wave, members)) in waves.iter().enumerate() {
            if n > 0 {
                self.wait_wave(waves[n - 1].0, &waves[n - 1].1, &waves[n..])
                    .await?;
            }
            let label = if waves.len() > 1 {
                format!(" (wave {wave})")
            } else {
                String::new()
            };
            for stage in 1..STAGES {
                self.apply_stage(stage, members, &label, progress).await?;
            }
        }
        self.compare_sealed(progress).await
    }

    /// The waves of the objects past stage 0, in order, with their items.
    fn waves(&self) -> Vec<(i64, Vec<usize>)> {
        let mut waves: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, item) in self.items.iter().enumerate() {
            if stage_of(&item.obj.id) > 0 {
                waves.entry(item.wave).or_default().push(i);
            }
        }
        waves.into_iter().collect()
    }

    /// Waits until the objects of `wave` (`members`) with a health rule are ready, before the
    /// `later` waves are applied (not in a dry run: nothing was written to wait for).
    async fn wait_wave(
        &self,
        wave: i64,
        members: &[usize],
        later: &[(i64, Vec<usize>)],
    ) -> Result<(), ApplyError> {
        if self.opts.dry_run {
            return Ok(());
        }
        match self.first_unhealthy(members).await? {
            None => Ok(()),
            Some((id, why)) => Err(ApplyError::Wave(Box::new(WaveFailure {
                wave,
                id,
                why,
                later: later
                    .iter()
                    .map(|(w, _)| w.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }))),
        }
    }

    /// Applies, before any hook runs, the Secrets, ConfigMaps and ServiceAccounts of the set
    /// that the hooks due now name (a migration Job needs the database password), and those the
    /// `on-failure` hooks name (they run whichever step fails).
    async fn apply_needed(&mut self, progress: &mut impl FnMut(&Event)) -> Result<(), ApplyError> {
        let mut wanted = BTreeSet::new();
        for h in self.hooks.iter().filter(|h| self.due_before(h)) {
            let ns = h.item.obj.id.namespace.as_deref();
            for (kind, name) in hooks::needs(h.item.body.expose()) {
                wanted.insert((kind, ns.map(str::to_string), name));
            }
        }
        let needed: Vec<usize> = (0..self.items.len())
            .filter(|&i| {
                let id = &self.items[i].obj.id;
                id.group.is_empty()
                    && stage_of(id) > 0
                    && wanted.contains(&(id.kind.clone(), id.namespace.clone(), id.name.clone()))
            })
            .collect();
        if needed.is_empty() {
            return Ok(());
        }
        progress(&Event::Stage(
            if self.opts.dry_run {
                "compare what the hooks use".into()
            } else {
                "apply what the hooks use".into()
            },
            needed.len(),
        ));
        self.send_by_kind(&needed, progress).await?;
        for i in needed {
            self.items[i].early = true;
        }
        Ok(())
    }

    /// Whether hook `h` may run before the set is applied, in this apply: a pre-apply hook, or
    /// an `on-failure` one (a failure may come before the objects it uses were applied).
    fn due_before(&self, h: &hooks::HookItem<'_>) -> bool {
        if h.hook.environment {
            let phases = &h.hook.phases;
            return self.changed
                && (phases.contains(&hooks::Phase::PreApply)
                    || phases.contains(&hooks::Phase::OnFailure));
        }
        h.item
            .obj
            .release
            .as_deref()
            .and_then(|r| self.releases.get(r))
            .is_some_and(|&(installed, changed)| {
                changed && h.hook.phases.contains(&hooks::Phase::of(installed, false))
            })
    }

    /// Runs the environment hooks of `phase`, in wave order, when the apply changes something.
    async fn environment_hooks(
        &mut self,
        phase: hooks::Phase,
        progress: &mut impl FnMut(&Event),
    ) -> Result<(), ApplyError> {
        if !self.changed {
            return Ok(());
        }
        let due: Vec<usize> = (0..self.hooks.len())
            .filter(|&i| {
                self.hooks[i].hook.environment && self.hooks[i].hook.phases.contains(&phase)
            })
            .collect();
        let after = match phase {
            hooks::Phase::PreApply => {
                "nothing else of the set was applied (only what the hooks use) and nothing was pruned"
            }
            hooks::Phase::PrePrune => "the set was applied; nothing was pruned",
            _ => "the set was applied and pruned; the later hooks did not run",
        };
        self.run_due(None, phase, due, after, progress).await
    }

    /// The `on-failure` hooks, after a write step failed (never in a dry run, never before
    /// anything of the set was written: an inventory written meanwhile by another apply, a
    /// refusal of the deferred dry run). They get a budget of their own (the failure may have
    /// spent the apply's). Their own failure is reported, not returned: the first error stands.
    pub async fn failure_hooks(&mut self, progress: &mut impl FnMut(&Event)) {
        if self.opts.dry_run || !self.wrote {
            return;
        }
        self.deadline = Deadline::after(self.opts.timeout);
        if let Err(e) = self
            .environment_hooks(hooks::Phase::OnFailure, progress)
            .await
        {
            progress(&Event::Note(format!(
                "an on-failure hook did not succeed: {e}"
            )));
        }
    }

    /// A keyless preview: each sealed object's digest against its live object's annotation.
    async fn compare_sealed(
        &mut self,
        progress: &mut impl FnMut(&Event),
    ) -> Result<(), ApplyError> {
        if self.set.sealed.is_empty() {
            return Ok(());
        }
        progress(&Event::Stage(
            "compare sealed objects (no key)".into(),
            self.set.sealed.len(),
        ));
        for s in &self.set.sealed {
            let verdict = match self.resolver.resolve(&s.api_version, &s.id) {
                None => sealed::Verdict::Unserved,
                Some((target, _)) => match get_live(self.client, &target, &s.id).await {
                    Ok(live) => sealed::verdict(live.as_ref().map(SecretJson::expose), &s.digest),
                    Err(e) if status_code(&e) == Some(403) => sealed::Verdict::Forbidden,
                    Err(e) => return Err(e.into()),
                },
            };
            let (action, note) = verdict.report();
            progress(&Event::Object(s.id.clone(), action, Some(note.into())));
            self.summary
                .objects
                .push((s.id.clone(), action, Some(note.into())));
        }
        Ok(())
    }

    /// Prune: deletes what left the set (newest kinds first, only objects that are still ours),
    /// then records the new inventory. With [`Options::dry_run`], reports what would be pruned.
    pub async fn prune(&mut self, progress: &mut impl FnMut(&Event)) -> Result<(), ApplyError> {
        self.may_write()?;
        if self.prunes_something() {
            self.environment_hooks(hooks::Phase::PrePrune, progress)
                .await?;
        }
        let kept = self.prune_stale(progress).await?;
        self.record_inventory(kept).await
    }

    /// Health: with [`Options::wait`], waits until every object with a health rule is ready, fails,
    /// or the timeout passes; the objects that are not ready go into the summary.
    pub async fn health(&mut self, progress: &mut impl FnMut(&Event)) -> Result<(), ApplyError> {
        if !self.opts.wait || self.opts.dry_run {
            return Ok(());
        }
        let everything: Vec<usize> = (0..self.items.len()).collect();
        let watched = self.watched(&everything);
        if watched.is_empty() {
            return Ok(());
        }
        progress(&Event::Stage("wait for health".into(), watched.len()));
        self.summary.not_ready = health::wait(self.client, &watched, self.deadline).await?;
        Ok(())
    }

    /// Post hooks: for each release that changed, once its objects are healthy, its
    /// `post-install` (first apply) or `post-upgrade` hooks; then, once the whole set is healthy,
    /// the environment's `post-apply` hooks.
    pub async fn post_hooks(
        &mut self,
        progress: &mut impl FnMut(&Event),
    ) -> Result<(), ApplyError> {
        self.run_hooks(true, progress).await?;
        let phase = hooks::Phase::PostApply;
        if !self.post_due() {
            return Ok(());
        }
        if !self.opts.dry_run {
            let everything: Vec<usize> = (0..self.items.len()).collect();
            self.wait_healthy(&everything, None, phase).await?;
        }
        self.environment_hooks(phase, progress).await?;
        self.clear_hooks_pending().await
    }

    /// Runs the hooks of one side of the apply (`post`: after it) for every release that
    /// changed, in Helm's order. A dry run only says which would run.
    async fn run_hooks(
        &mut self,
        post: bool,
        progress: &mut impl FnMut(&Event),
    ) -> Result<(), ApplyError> {
        let after = if post {
            "the release's objects were applied; its later hooks did not run"
        } else {
            "nothing else of the set was applied (only what the hooks use) and nothing was pruned"
        };
        let releases: Vec<(String, bool, bool)> = self
            .releases
            .iter()
            .map(|(r, &(installed, changed))| (r.clone(), installed, changed))
            .collect();
        for (release, installed, changed) in releases {
            let phase = hooks::Phase::of(installed, post);
            let due: Vec<usize> = (0..self.hooks.len())
                .filter(|&i| {
                    let h = &self.hooks[i];
                    h.item.obj.release.as_deref() == Some(release.as_str())
                        && h.hook.phases.contains(&phase)
                })
                .collect();
            if due.is_empty() || !changed {
                continue;
            }
            if post && !self.opts.dry_run {
                let own: Vec<usize> = (0..self.items.len())
                    .filter(|&i| self.items[i].obj.release.as_deref() == Some(release.as_str()))
                    .collect();
                self.wait_healthy(&own, Some(&release), phase).await?;
            }
            self.run_due(Some(&release), phase, due, after, progress)
                .await?;
        }
        Ok(())
    }

    /// Runs the hooks `due` (indices into the hooks) of one phase, in order, each to its end;
    /// then deletes those whose policy says `hook-succeeded`. A dry run only says which would run.
    async fn run_due(
        &mut self,
        release: Option<&str>,
        phase: hooks::Phase,
        mut due: Vec<usize>,
        after: &'static str,
        progress: &mut impl FnMut(&Event),
    ) -> Result<(), ApplyError> {
        if due.is_empty() {
            return Ok(());
        }
        due.sort_by(|&a, &b| {
            let (a, b) = (&self.hooks[a], &self.hooks[b]);
            hooks::order((&a.hook, &a.item.obj.id), (&b.hook, &b.item.obj.id))
        });
        let whose = release.map_or(String::new(), |r| format!(" of chart {r}"));
        progress(&Event::Stage(
            format!("hooks {}{whose}", phase.name()),
            due.len(),
        ));
        if self.opts.dry_run {
            for &i in &due {
                progress(&Event::Note(format!(
                    "{}: {} hook{whose}, run on apply",
                    self.hooks[i].item.obj.id,
                    phase.name()
                )));
            }
            return Ok(());
        }
        let failed = |id, reason| {
            ApplyError::Hook(Box::new(HookFailure {
                release: release.map(str::to_string),
                phase: phase.name(),
                id,
                reason,
                after,
            }))
        };
        for &i in &due {
            self.may_write()?;
            self.wrote = true;
            let ran = hooks::run(self.client, &self.hooks[i], self.deadline).await;
            let id = self.hooks[i].item.obj.id.clone();
            match ran {
                Ok(()) => {
                    let note = Some(format!("{} hook", phase.name()));
                    progress(&Event::Object(id.clone(), Action::Created, note.clone()));
                    self.summary.objects.push((id, Action::Created, note));
                }
                Err(reason) => return Err(failed(id, self.hide_values(&reason))),
            }
        }
        let ran: Vec<&hooks::HookItem<'_>> = due.iter().map(|&i| &self.hooks[i]).collect();
        if let Err((id, why)) = hooks::delete_succeeded(self.client, &ran, self.deadline).await {
            return Err(failed(id, format!("its hook-succeeded deletion: {why}")));
        }
        Ok(())
    }

    /// Waits until the items `members` with a health rule are ready, or one fails or the timeout
    /// passes: the first that is not ready, with why.
    async fn first_unhealthy(
        &self,
        members: &[usize],
    ) -> Result<Option<(ObjectId, String)>, ApplyError> {
        let left = health::wait(self.client, &self.watched(members), self.deadline).await?;
        Ok(left.into_iter().next())
    }

    /// The items `members` with a health rule, each with its API.
    fn watched(&self, members: &[usize]) -> Vec<(ObjectId, Api<DynamicObject>)> {
        members
            .iter()
            .map(|&i| &self.items[i])
            .filter(|i| health::has_rule(&i.obj.id))
            .map(|i| {
                let id = i.obj.id.clone();
                let api = api(self.client, &i.target, id.namespace.as_deref());
                (id, api)
            })
            .collect()
    }

    /// Waits until the items `members` with a health rule are ready, before the post hooks of
    /// `release` (or of the environment) run.
    async fn wait_healthy(
        &self,
        members: &[usize],
        release: Option<&str>,
        phase: hooks::Phase,
    ) -> Result<(), ApplyError> {
        match self.first_unhealthy(members).await? {
            None => Ok(()),
            Some((id, why)) => Err(ApplyError::Hook(Box::new(HookFailure {
                release: release.map(str::to_string),
                phase: phase.name(),
                id,
                reason: format!("the objects it follows are not healthy: {why}"),
                after: "the objects were applied; the hooks after them did not run",
            }))),
        }
    }

    /// `message` with every decrypted value of the set hidden (a hook's log could quote one).
    fn hide_values(&self, message: &str) -> String {
        self.items
            .iter()
            .chain(self.hooks.iter().map(|h| &h.item))
            .filter(|i| i.carries_plaintext())
            .fold(message.to_string(), |m, i| {
                redact::hide_values(&m, i.body.expose())
            })
    }

    /// The objects the health step found not ready, with why.
    pub fn not_ready(&self) -> &[(ObjectId, String)] {
        &self.summary.not_ready
    }

    /// What the apply did.
    pub fn finish(self) -> Summary {
        self.summary
    }

    fn may_write(&self) -> Result<(), ApplyError> {
        if self.opts.dry_run {
            Ok(())
        } else {
            self.opts.may_write()
        }
    }

    /// Dry-runs the items at `indices` and keeps each result; any refusal fails validation (after
    /// stage 0 was `written`, or before anything was).
    async fn dry_run(&mut self, indices: &[usize], written: Written) -> Result<(), ApplyError> {
        let items: Vec<&Item<'_>> = indices.iter().map(|&i| &self.items[i]).collect();
        let checked = dry_run_all(self.client, &items, self.opts).await;
        let mut refusals = Vec::new();
        for (&index, mut c) in indices.iter().zip(checked) {
            let item = &self.items[index];
            if let Checked::Refused(r) = &c
                && item.live
                && let Some(field) = replace::immutable_field(r)
            {
                if replace::opted_in(item.body.expose()) {
                    c = Checked::Replace;
                } else {
                    c = Checked::Refused(replace::explain(&item.obj.id.kind, &field));
                }
            }
            if let Checked::Refused(r) = &c {
                refusals.push(Refusal {
                    id: item.obj.id.clone(),
                    source: item.obj.source.clone(),
                    reason: r.clone(),
                });
            }
            self.results.insert(index, c);
        }
        if refusals.is_empty() {
            Ok(())
        } else {
            Err(ApplyError::Validation { refusals, written })
        }
    }

    /// Checks what waited for stage 0 (objects of new namespaces and CRDs), now that it exists and
    /// before anything else is written.
    async fn validate_deferred(
        &mut self,
        progress: &mut impl FnMut(&Event),
    ) -> Result<(), ApplyError> {
        let later: Vec<usize> = (0..self.items.len())
            .filter(|&i| self.items[i].deferred && !self.items[i].untouched)
            .collect();
        if later.is_empty() || self.opts.dry_run {
            return Ok(());
        }
        progress(&Event::Stage(
            "validate objects of new namespaces and CRDs".into(),
            later.len(),
        ));
        // Stage 0 ran: it wrote something unless every CRD and Namespace was already as planned.
        let wrote = self
            .summary
            .objects
            .iter()
            .any(|(_, a, _)| matches!(a, Action::Created | Action::Configured));
        let written = if wrote {
            Written::CrdsAndNamespaces
        } else {
            Written::Nothing
        };
        self.dry_run(&later, written).await
    }

    /// Applies (or compares) the objects of `members` in one stage (not those applied early),
    /// kind by kind; `wave` ends the progress label.
    async fn apply_stage(
        &mut self,
        stage: usize,
        members: &[usize],
        wave: &str,
        progress: &mut impl FnMut(&Event),
    ) -> Result<(), ApplyError> {
        let in_stage: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&i| stage_of(&self.items[i].obj.id) == stage && !self.items[i].early)
            .collect();
        if in_stage.is_empty() {
            return Ok(());
        }
        let label = match (stage, self.opts.dry_run) {
            (0, false) => "apply CRDs and Namespaces",
            (1, false) => "apply cluster RBAC and classes",
            (_, false) => "apply",
            (0, true) => "compare CRDs and Namespaces",
            (1, true) => "compare cluster RBAC and classes",
            (_, true) => "compare",
        };
        progress(&Event::Stage(format!("{label}{wave}"), in_stage.len()));
        self.send_by_kind(&in_stage, progress).await
    }

    /// Sends (or compares) the items `indices`, one kind after another, each kind's objects
    /// concurrently.
    async fn send_by_kind(
        &mut self,
        indices: &[usize],
        progress: &mut impl FnMut(&Event),
    ) -> Result<(), ApplyError> {
        let mut by_rank: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for &i in indices {
            by_rank
                .entry(kind_rank(&self.items[i].obj.id.kind))
                .or_default()
                .push(i);
        }
        for group in by_rank.into_values() {
            self.may_write()?;
            let done = self.send_group(&group).await;
            self.record_group(done, progress)?;
        }
        Ok(())
    }

    /// Sends one kind's objects concurrently (or, in a dry run, decides what would happen).
    async fn send_group(&self, group: &[usize]) -> Vec<(usize, Result<Action, String>)> {
        // The dry run checked every field (strictly); the write itself need not check again.
        let mut pp =
            PatchParams::apply(FIELD_MANAGER).validation(kube::api::ValidationDirective::Ignore);
        if self.opts.force_conflicts {
            pp = pp.force();
        }
        let pp = &pp;
        // Lazy, over indices, as in `dry_run_all`.
        let work = group.iter().copied().map(|i| {
            let item = &self.items[i];
            let unchanged = !self.writes(i);
            let changed = if item.live {
                Action::Configured
            } else {
                Action::Created
            };
            let replaced = matches!(self.results.get(&i), Some(Checked::Replace));
            async move {
                if unchanged {
                    return (i, Ok(Action::Unchanged));
                }
                if self.opts.dry_run {
                    return (i, Ok(changed));
                }
                if replaced {
                    let api = api(self.client, &item.target, item.obj.id.namespace.as_deref());
                    if let Err(why) =
                        hooks::delete_and_wait(&api, &item.obj.id.name, self.deadline).await
                    {
                        return (i, Err(format!("replacing it: {why}")));
                    }
                }
                match send_quiet(self.client, item, pp).await {
                    Ok(()) => (i, Ok(changed)),
                    Err(e) if replaced => (
                        i,
                        Err(format!(
                            "deleted to be replaced, but not created again: {}",
                            item.refused(&e)
                        )),
                    ),
                    Err(e) => (i, Err(item.refused(&e))),
                }
            }
        });
        stream::iter(work)
            .buffered(self.opts.concurrency.max(1))
            .collect()
            .await
    }

    /// Records what happened to one kind's objects (a diff each in a dry run); fails when any
    /// object failed.
    fn record_group(
        &mut self,
        done: Vec<(usize, Result<Action, String>)>,
        progress: &mut impl FnMut(&Event),
    ) -> Result<(), ApplyError> {
        let mut failures = Vec::new();
        // A failed send may have written part of an object's change (or a replacement's delete).
        self.wrote |= !self.opts.dry_run
            && done
                .iter()
                .any(|(_, r)| !matches!(r, Ok(Action::Unchanged)));
        for (i, r) in done {
            let id = self.items[i].obj.id.clone();
            if self.opts.dry_run && matches!(r, Ok(Action::Created | Action::Configured)) {
                let text = self.diff_of(i);
                self.summary.diffs.push((id.clone(), text));
            }
            match r {
                Ok(action) => {
                    let changed = action != Action::Unchanged;
                    let note = if changed && matches!(self.results.get(&i), Some(Checked::Replace))
                    {
                        let done = if self.opts.dry_run {
                            "would be replaced: deleted and created again"
                        } else {
                            "replaced: deleted and created again"
                        };
                        Some(format!("{done} ({})", replace::REPLACE))
                    } else {
                        (self.items[i].adopted && changed).then(|| ADOPTED.to_string())
                    };
                    progress(&Event::Object(id.clone(), action, note.clone()));
                    self.summary.objects.push((id, action, note));
                }
                Err(reason) => failures.push(Refusal {
                    id,
                    source: self.items[i].obj.source.clone(),
                    reason,
                }),
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(ApplyError::Apply(failures))
        }
    }

    /// The unified diff of item `i`: the server's dry-run result against the live object.
    fn diff_of(&self, i: usize) -> String {
        let item = &self.items[i];
        let id = &item.obj.id;
        let merged = match self.results.get(&i) {
            Some(Checked::Accepted(dry)) => dry.duplicate(),
            _ => item.body.duplicate(),
        };
        let name = format!("{}/{}", item.obj.api_version, id);
        diff::unified(
            &name,
            item.carries_plaintext(),
            self.live.get(&live_key(item)).map(SecretJson::expose),
            merged.expose(),
        )
    }

    /// Waits until every CRD of the set is Established.
    async fn wait_crds(&self) -> Result<(), ApplyError> {
        for item in self
            .items
            .iter()
            .filter(|i| i.obj.id.kind == "CustomResourceDefinition")
        {
            wait_crd_established(self.client, &item.obj.id.name, self.deadline).await?;
        }
        Ok(())
    }

    /// Prunes the stale entries, newest kinds first; returns those that stay in the inventory.
    async fn prune_stale(
        &mut self,
        progress: &mut impl FnMut(&Event),
    ) -> Result<Vec<InventoryEntry>, ApplyError> {
        let mut kept = Vec::new();
        if self.stale.is_empty() {
            return Ok(kept);
        }
        progress(&Event::Stage("prune".into(), self.stale.len()));
        let read: Vec<Option<inventory::Stale>> = if self.opts.prune {
            let (client, opts, discovery) = (self.client, self.opts, &self.resolver.discovery);
            let stale = &self.stale;
            // Over indices, as in `dry_run_all` (rust-lang/rust#102211).
            let work = (0..stale.len()).map(|n| {
                let entry = &stale[n];
                async move { Some(inventory::read_stale(client, discovery, entry, opts).await) }
            });
            stream::iter(work)
                .buffered(self.opts.concurrency.max(1))
                .collect()
                .await
        } else {
            self.stale.iter().map(|_| None).collect()
        };
        // Later waves first (as they were applied last), then newest kinds first.
        let mut order: Vec<(InventoryEntry, Option<inventory::Stale>)> =
            self.stale.iter().cloned().zip(read).collect();
        order.sort_by_cached_key(|(entry, stale)| {
            let wave = stale
                .as_ref()
                .and_then(inventory::Stale::annotations)
                .and_then(|a| waves::wave_of(&json!({"metadata": {"annotations": a}})).ok())
                .unwrap_or(0);
            // Namespaces and CRDs go last, whatever their wave (as they are applied first).
            let last = stage_of(&entry.id()) == 0;
            (
                last,
                std::cmp::Reverse(wave),
                std::cmp::Reverse(kind_rank(&entry.kind)),
            )
        });
        for (entry, stale) in order {
            self.may_write()?;
            let (action, note, keep) = match stale {
                None => (Action::Kept, Some("pruning is off".to_string()), true),
                Some(stale) => inventory::prune_one(stale, &entry, self.set, self.opts).await,
            };
            if keep {
                kept.push(entry.clone());
            }
            // In a preview, `Pruned` means "would be pruned": reported like any other change.
            self.wrote |= action == Action::Pruned && !self.opts.dry_run;
            let id = entry.id();
            progress(&Event::Object(id.clone(), action, note.clone()));
            self.summary.objects.push((id, action, note));
        }
        Ok(kept)
    }

    /// Writes the new inventory (the set plus what could not be pruned), unless it is unchanged.
    async fn record_inventory(&mut self, kept: Vec<InventoryEntry>) -> Result<(), ApplyError> {
        if self.opts.dry_run {
            return Ok(());
        }
        self.may_write()?;
        let mut entries = std::mem::take(&mut self.current);
        entries.extend(kept);
        let mut next = Inventory {
            entries,
            revision: self.opts.revision.clone(),
            owner: self.opts.owner.clone(),
            resource_version: None,
            hooks_pending: self.post_due(),
        };
        // Unchanged inventory, unchanged cluster: a no-op apply writes nothing at all.
        if next.same_as(&self.previous) {
            next.resource_version = self.previous.resource_version.clone();
            self.previous = next;
            return Ok(());
        }
        self.replace_inventory(next).await
    }

    /// Writes `next` over the inventory as last read or written (refused when another apply
    /// changed it since), and remembers it as that.
    async fn replace_inventory(&mut self, mut next: Inventory) -> Result<(), ApplyError> {
        next.resource_version = next
            .write(
                &self.inventory_api,
                &self.set.project,
                &self.set.environment,
                self.previous.resource_version.as_deref(),
            )
            .await?;
        self.previous = next;
        Ok(())
    }

    /// Whether the environment's `post-apply` hooks are due in this apply.
    fn post_due(&self) -> bool {
        self.changed
            && self
                .hooks
                .iter()
                .any(|h| h.hook.environment && h.hook.phases.contains(&hooks::Phase::PostApply))
    }

    /// Once the `post-apply` hooks succeeded: the inventory no longer says they are pending.
    async fn clear_hooks_pending(&mut self) -> Result<(), ApplyError> {
        if self.opts.dry_run || !self.previous.hooks_pending {
            return Ok(());
        }
        self.may_write()?;
        let done = Inventory {
            hooks_pending: false,
            ..self.previous.clone()
        };
        self.replace_inventory(done).await
    }

    /// Before the first object past CRDs and Namespaces is written: records every object of the set that the inventory
    /// does not list yet (with what it lists), so an apply cut short — the API server gone, the
    /// process killed — leaves nothing unrecorded to orphan. Fails, writing nothing, when another
    /// apply changed the inventory since it was read.
    async fn record_pending(&mut self) -> Result<(), ApplyError> {
        let new = self
            .current
            .iter()
            .any(|e| !self.previous.entries.contains(e));
        let foreign = self.previous.owner != self.opts.owner;
        if self.opts.dry_run || !(new || foreign) {
            return Ok(());
        }
        self.may_write()?;
        let mut pending = Inventory {
            entries: self.previous.entries.clone(),
            revision: self.previous.revision.clone(),
            owner: self.opts.owner.clone(),
            resource_version: None,
            hooks_pending: self.previous.hooks_pending,
        };
        pending.entries.extend(self.current.iter().cloned());
        self.replace_inventory(pending).await
    }
}

/// Deletes everything the inventory `namespace/inventory` records, with the guards of any prune
/// (only objects still carrying the environment's labels, protected kinds only with
/// `prune_protected`, `lockstep.dev/prune: disabled` respected); the inventory goes too, unless
/// something was kept (it then lists only what was kept). What a deleted `Sync` does with
/// `prune: true`, as Flux's Kustomization. No inventory: nothing to do.
pub async fn prune_everything(
    client: &Client,
    namespace: &str,
    inventory: &str,
    opts: &Options,
) -> Result<Summary, ApplyError> {
    let configmaps = inventory::api(client, namespace);
    let Some(cm) = configmaps.get_opt(inventory).await? else {
        return Ok(Summary::default());
    };
    let label = |k: &str| cm.metadata.labels.as_ref().and_then(|l| l.get(k)).cloned();
    let (Some(project), Some(environment)) = (label(PROJECT_LABEL), label(ENVIRONMENT_LABEL))
    else {
        return Ok(Summary::default());
    };
    let nothing = ApplySet {
        project,
        environment,
        namespace: namespace.to_string(),
        objects: Vec::new(),
        sealed: Vec::new(),
        profile: None,
        notes: Vec::new(),
        needs: Vec::new(),
    };
    let opts = Options {
        prune: true,
        allow_mass_prune: true,
        dry_run: false,
        ..opts.clone()
    };
    let mut plan = Plan::new(client, &nothing, &opts).await?;
    plan.prune(&mut |_| {}).await?;
    let summary = plan.finish();
    let left = Inventory::read(&configmaps, &nothing.project, &nothing.environment).await?;
    if left.entries.is_empty() {
        opts.may_write()?;
        match configmaps.delete(inventory, &Default::default()).await {
            Ok(_) => {}
            Err(e) if status_code(&e) == Some(404) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(summary)
}

/// Records the applying Sync on an object.
fn annotate_owner(object: &mut Json, owner: &str) {
    if let Some(meta) = object.get_mut("metadata").and_then(Json::as_object_mut) {
        let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(OWNER_ANNOTATION.into(), Json::String(owner.into()));
        }
    }
}

/// Refuses the apply when a live namespaced object of the set belongs to another Sync.
/// Cluster-scoped objects (a CRD two environments of one project both ship) are shared: the last
/// Sync to apply one owns it, and only the owner prunes it.
fn refuse_foreign(
    items: &[Item<'_>],
    live: &HashMap<LiveKey, SecretJson>,
    owner: Option<&str>,
) -> Result<(), ApplyError> {
    let Some(owner) = owner else {
        return Ok(());
    };
    for item in items.iter().filter(|i| i.target.namespaced) {
        let theirs = live
            .get(&live_key(item))
            .and_then(|l| l.expose()["metadata"]["annotations"][OWNER_ANNOTATION].as_str());
        if let Some(theirs) = theirs
            && theirs != owner
        {
            return Err(ApplyError::Owned {
                what: format!("{} ({})", item.obj.id, item.obj.source),
                owner: theirs.to_string(),
            });
        }
    }
    Ok(())
}

/// Takes the hooks out of the items: those lockstep runs (second), and those it never runs
/// (third, with their hook kinds). Hook annotations that make no sense join the `refusals` of
/// [`resolve_items`]; any refusal is an error, before anything is written.
#[allow(clippy::type_complexity)]
fn split_hooks<'a>(
    items: Vec<Item<'a>>,
    mut refusals: Vec<Refusal>,
) -> Result<
    (
        Vec<Item<'a>>,
        Vec<hooks::HookItem<'a>>,
        Vec<(ObjectId, String)>,
    ),
    ApplyError,
> {
    let mut objects = Vec::new();
    let mut hook_items = Vec::new();
    let mut skipped = Vec::new();
    for item in items {
        match hooks::role_of(item.body.expose(), item.obj.release.is_some(), item.wave) {
            Ok(hooks::Role::Object) => objects.push(item),
            Ok(hooks::Role::Hook(hook)) => hook_items.push(hooks::HookItem { hook, item }),
            Ok(hooks::Role::Skipped(kinds)) => skipped.push((item.obj.id.clone(), kinds)),
            Err(reason) => refusals.push(Refusal {
                id: item.obj.id.clone(),
                source: item.obj.source.clone(),
                reason,
            }),
        }
    }
    if refusals.is_empty() {
        Ok((objects, hook_items, skipped))
    } else {
        Err(ApplyError::Validation {
            refusals,
            written: Written::Nothing,
        })
    }
}

/// For each release with hooks: whether the inventory held any of its objects (installed), and
/// whether this apply changes it (new, an object it `writes`, or — a release of hooks only — a
/// new revision).
fn release_states(
    items: &[Item<'_>],
    hooks: &[hooks::HookItem<'_>],
    previous: &Inventory,
    revision: &str,
    writes: impl Fn(usize) -> bool,
) -> BTreeMap<String, (bool, bool)> {
    let mut out = BTreeMap::new();
    for release in hooks
        .iter()
        .filter(|h| !h.hook.environment)
        .filter_map(|h| h.item.obj.release.as_deref())
    {
        if out.contains_key(release) {
            continue;
        }
        let own: Vec<usize> = (0..items.len())
            .filter(|&i| items[i].obj.release.as_deref() == Some(release))
            .collect();
        let installed = own.iter().any(|&i| {
            let obj = items[i].obj;
            previous
                .entries
                .contains(&InventoryEntry::of(&obj.id, &obj.api_version))
        });
        let changed = !installed
            || if own.is_empty() {
                previous.revision != revision
            } else {
                own.iter().any(|&i| writes(i))
            };
        out.insert(release.to_string(), (installed, changed));
    }
    out
}

/// Resolves, labels and annotates every object of the set and reads its wave; a kind nobody
/// serves is an error, a wave that makes no sense a refusal (returned).
fn resolve_items<'a>(
    resolver: &Resolver,
    set: &'a ApplySet,
    owner: Option<&str>,
) -> Result<(Vec<Item<'a>>, Vec<Refusal>), ApplyError> {
    let mut unknown = Vec::new();
    let mut annotations = Vec::new();
    let mut items = Vec::new();
    for obj in &set.objects {
        let Some((target, deferred)) = resolver.resolve(&obj.api_version, &obj.id) else {
            unknown.push(format!(
                "{} ({}): the cluster does not serve {} {} and no CustomResourceDefinition in the set defines it",
                obj.id, obj.source, obj.api_version, obj.id.kind
            ));
            continue;
        };
        let mut body = obj.object.duplicate();
        label(body.expose_mut(), &set.project, &set.environment);
        if let Some(owner) = owner {
            annotate_owner(body.expose_mut(), owner);
        }
        if !target.namespaced
            && let Some(meta) = body
                .expose_mut()
                .get_mut("metadata")
                .and_then(Json::as_object_mut)
        {
            meta.remove("namespace");
        }
        let is_secret = obj.id.group.is_empty() && obj.id.kind == "Secret";
        let digestible = match (is_secret, obj.has_secrets) {
            (true, _) => Digestible::SecretKeys,
            (false, true) => Digestible::MetadataOnly,
            (false, false) => Digestible::All,
        };
        let digest = applied_digest(body.expose(), digestible);
        annotate(body.expose_mut(), &digest);
        let wave = waves::wave_of(body.expose()).unwrap_or_else(|reason| {
            annotations.push(Refusal {
                id: obj.id.clone(),
                source: obj.source.clone(),
                reason,
            });
            0
        });
        items.push(Item {
            obj,
            target,
            deferred,
            body,
            digest,
            untouched: false,
            live: false,
            adopted: false,
            wave,
            early: false,
        });
    }
    if unknown.is_empty() {
        Ok((items, annotations))
    } else {
        Err(ApplyError::UnknownKind(unknown.join("\n")))
    }
}

/// Marks objects of namespaces that do not exist yet as deferred (checked after stage 0 creates
/// them). One GET per namespace the set uses; a client that may not read a namespace (a
/// namespace-bound ServiceAccount) cannot create it either: it must exist, nothing is deferred.
async fn defer_missing_namespaces(
    client: &Client,
    items: &mut [Item<'_>],
    opts: &Options,
) -> Result<(), ApplyError> {
    let ns_api: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("", "v1", "Namespace"),
            "namespaces",
        ),
    );
    let used: BTreeSet<String> = items
        .iter()
        .filter(|i| i.target.namespaced)
        .filter_map(|i| i.obj.id.namespace.clone())
        .collect();
    let lookups: Vec<_> = used
        .iter()
        .map(|ns| {
            let ns_api = &ns_api;
            async move { (ns.clone(), ns_api.get_metadata_opt(ns).await) }
        })
        .collect();
    let mut missing: BTreeSet<String> = BTreeSet::new();
    for (ns, found) in stream::iter(lookups)
        .buffer_unordered(opts.concurrency.max(1))
        .collect::<Vec<_>>()
        .await
    {
        match found {
            Ok(Some(_)) => {}
            Ok(None) => {
                missing.insert(ns);
            }
            Err(e) if status_code(&e) == Some(403) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let created = |ns: &str| {
        items.iter().any(|i| {
            i.obj.id.kind == "Namespace" && i.obj.id.group.is_empty() && i.obj.id.name == ns
        })
    };
    let absent: Vec<String> = missing.iter().filter(|ns| !created(ns)).cloned().collect();
    if !absent.is_empty() {
        return Err(ApplyError::MissingNamespace(absent));
    }
    for item in items.iter_mut() {
        if item.target.namespaced
            && let Some(ns) = &item.obj.id.namespace
            && missing.contains(ns)
        {
            item.deferred = true;
        }
    }
    Ok(())
}

/// The inventory entries that left the set; refuses a mass prune before anything is written.
fn stale_entries(
    previous: &Inventory,
    current: &BTreeSet<InventoryEntry>,
    opts: &Options,
) -> Result<Vec<InventoryEntry>, ApplyError> {
    let stale: Vec<InventoryEntry> = previous
        .entries
        .iter()
        .filter(|e| !current.contains(*e))
        .cloned()
        .collect();
    if opts.prune && !stale.is_empty() && !opts.allow_mass_prune {
        let everything = current.is_empty();
        if everything || stale.len() * 2 > previous.entries.len() {
            return Err(ApplyError::MassPrune {
                stale: stale.len(),
                total: previous.entries.len(),
                everything,
            });
        }
    }
    Ok(stale)
}

/// Deletes one object with a precondition on its UID.
pub(crate) async fn delete_exact(
    api: &Api<DynamicObject>,
    name: &str,
    uid: &str,
) -> Result<(), kube::Error> {
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        propagation_policy: Some(kube::api::PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    api.delete(name, &dp).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_added_without_losing_existing_ones() {
        let mut o = json!({"metadata": {"name": "a", "labels": {"x": "y"}}});
        label(&mut o, "shop", "dev");
        assert_eq!(o["metadata"]["labels"]["x"], "y");
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "lockstep"
        );
        assert_eq!(o["metadata"]["labels"]["lockstep.dev/project"], "shop");
        assert_eq!(o["metadata"]["labels"]["lockstep.dev/environment"], "dev");
    }

    #[test]
    fn durations_parse_with_units_and_refuse_what_would_overflow() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("720h").is_ok());
        for bad in [
            "721h",
            "18446744073709551615s",
            "18446744073709551615h",
            "5d",
            "m",
            "",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stages_put_definitions_first() {
        let id = |kind: &str, ns: Option<&str>| ObjectId {
            group: String::new(),
            kind: kind.into(),
            namespace: ns.map(str::to_string),
            name: "x".into(),
        };
        assert_eq!(stage_of(&id("Namespace", None)), 0);
        assert_eq!(stage_of(&id("CustomResourceDefinition", None)), 0);
        assert_eq!(stage_of(&id("StorageClass", None)), 1);
        assert_eq!(stage_of(&id("ClusterRole", None)), 1);
        assert_eq!(stage_of(&id("Deployment", Some("a"))), 2);
    }
}

#[cfg(test)]
mod fast_path_tests {
    use super::*;

    #[test]
    fn subset_needs_every_desired_field_and_whole_lists() {
        let live = json!({"a": {"b": 1, "c": [1, {"x": 1, "y": 2}]}, "extra": true});
        assert!(is_subset(&json!({"a": {"c": [1, {"x": 1}]}}), &live));
        assert!(!is_subset(&json!({"a": {"b": 2}}), &live));
        assert!(
            !is_subset(&json!({"a": {"c": [1]}}), &live),
            "a shorter list is a change"
        );
        assert!(!is_subset(&json!({"missing": 1}), &live));
    }

    #[test]
    fn the_applied_digest_ignores_secret_values_but_not_their_keys() {
        let a = json!({"kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "c2VjcmV0"}});
        let b = json!({"kind": "Secret", "metadata": {"name": "s", "annotations": {APPLIED_ANNOTATION: "x"}}, "data": {"k": "b3RoZXI="}});
        let c = json!({"kind": "Secret", "metadata": {"name": "s"}, "data": {"other": "c2VjcmV0"}});
        let keys = Digestible::SecretKeys;
        assert_eq!(applied_digest(&a, keys), applied_digest(&b, keys));
        assert_ne!(applied_digest(&a, keys), applied_digest(&c, keys));
        assert_ne!(
            applied_digest(&a, Digestible::All),
            applied_digest(&b, Digestible::All)
        );
    }

    #[test]
    fn a_sops_manifests_digest_depends_on_its_metadata_never_on_its_plaintext() {
        let object = |value: &str, sealed: &str| {
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": "d", "annotations": {crate::sealed::SEALED_DIGEST: sealed}},
                   "spec": {"template": {"spec": {"containers": [{"env": [{"name": "K", "value": value}]}]}}}})
        };
        let only = Digestible::MetadataOnly;
        assert_eq!(
            applied_digest(&object("plain-1", "sha256:a"), only),
            applied_digest(&object("plain-2", "sha256:a"), only),
            "the plaintext must not move the digest"
        );
        assert_ne!(
            applied_digest(&object("plain-1", "sha256:a"), only),
            applied_digest(&object("plain-1", "sha256:b"), only),
            "a new ciphertext (sealed digest) must"
        );
    }
}
