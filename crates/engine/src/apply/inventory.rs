//! The inventory: which objects an environment applied, kept in the cluster so the next apply (from
//! the CLI or the in-cluster controller) knows what to prune. Object references only, never data.
//!
//! It is a ConfigMap `lockstep-inventory-<project>-<environment>` in the environment's namespace:
//! `data.objects` holds one `apiVersion kind namespace name` line per object (`-` for cluster-scoped),
//! `data.revision` and `data.appliedAt` say what was applied when, `data.owner` which Sync keeps it
//! (none for the CLI). Writes carry the `resourceVersion` read as a precondition, so two applies
//! of one environment at once cannot lose each other's entries: the later one fails and retries.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope};
use kube::{Api, Client};
use serde_json::{Value as Json, json};

use super::{
    Action, ApplyError, ENVIRONMENT_LABEL, FIELD_MANAGER, MANAGED_BY, OWNER_ANNOTATION, Options,
    PROJECT_LABEL, PRUNE_ANNOTATION, delete_exact, reason,
};
use crate::decrypt::ApplySet;
use crate::objects::{ObjectId, group_of};

/// One inventoried object. Equality and order ignore the API version: the same object under a
/// newer version is the same object (and must not be pruned).
#[derive(Debug, Clone)]
pub struct InventoryEntry {
    /// `apiVersion` it was applied with.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Namespace (`None` for cluster-scoped).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl InventoryEntry {
    /// The entry for an object.
    pub fn of(id: &ObjectId, api_version: &str) -> InventoryEntry {
        InventoryEntry {
            api_version: api_version.to_string(),
            kind: id.kind.clone(),
            namespace: id.namespace.clone(),
            name: id.name.clone(),
        }
    }

    /// The object's identity.
    pub fn id(&self) -> ObjectId {
        ObjectId {
            group: group_of(&self.api_version).to_string(),
            kind: self.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    fn key(&self) -> (&str, &str, Option<&str>, &str) {
        (
            group_of(&self.api_version),
            self.kind.as_str(),
            self.namespace.as_deref(),
            self.name.as_str(),
        )
    }

    fn line(&self) -> String {
        format!(
            "{} {} {} {}",
            self.api_version,
            self.kind,
            self.namespace.as_deref().unwrap_or("-"),
            self.name
        )
    }

    fn parse(line: &str) -> Option<InventoryEntry> {
        let mut parts = line.split_whitespace();
        let api_version = parts.next()?.to_string();
        let kind = parts.next()?.to_string();
        let namespace = match parts.next()? {
            "-" => None,
            ns => Some(ns.to_string()),
        };
        let name = parts.next()?.to_string();
        // An inventory can be edited by hand: a line whose names would change an API URL is no
        // object lockstep applied.
        let bad = |n: &str| crate::objects::path_segment_problem(n).is_some();
        if bad(&name) || namespace.as_deref().is_some_and(bad) || bad(&kind) {
            return None;
        }
        Some(InventoryEntry {
            api_version,
            kind,
            namespace,
            name,
        })
    }
}

impl PartialEq for InventoryEntry {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for InventoryEntry {}

impl PartialOrd for InventoryEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InventoryEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// The recorded set of one project environment.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// The objects.
    pub entries: BTreeSet<InventoryEntry>,
    /// The revision applied.
    pub revision: String,
    /// The Sync that keeps it (`Sync <namespace>/<name>`); `None`: the CLI, or nobody yet.
    pub owner: Option<String>,
    /// The ConfigMap's `resourceVersion` when read or last written (`None`: there is none yet).
    pub resource_version: Option<String>,
    /// The environment's `post-apply` hooks of the recorded apply have not succeeded yet: the
    /// next apply counts as a change (and runs them again) even at the same revision.
    pub hooks_pending: bool,
}

/// The inventory ConfigMap's name.
pub fn name(project: &str, environment: &str) -> String {
    format!("lockstep-inventory-{project}-{environment}")
}

/// The ConfigMap API of a namespace.
pub fn api(client: &Client, namespace: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("", "v1", "ConfigMap"),
        "configmaps",
    );
    Api::namespaced_with(client.clone(), namespace, &ar)
}

impl Inventory {
    /// Whether two inventories record the same objects (with the same API versions) and revision.
    pub fn same_as(&self, other: &Inventory) -> bool {
        self.revision == other.revision
            && self.hooks_pending == other.hooks_pending
            && self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|(a, b)| a.line() == b.line())
    }

    /// Reads the inventory (empty when there is none yet).
    pub async fn read(
        api: &Api<DynamicObject>,
        project: &str,
        environment: &str,
    ) -> Result<Inventory, ApplyError> {
        Ok(Inventory::read_named(api, &name(project, environment))
            .await?
            .unwrap_or_default())
    }

    /// Reads the inventory ConfigMap `name` (`None` when there is none).
    pub async fn read_named(
        api: &Api<DynamicObject>,
        name: &str,
    ) -> Result<Option<Inventory>, ApplyError> {
        let cm = match api.get_opt(name).await {
            Ok(cm) => cm,
            Err(kube::Error::Api(s)) if s.code == 404 => None,
            Err(e) => return Err(e.into()),
        };
        let Some(cm) = cm else {
            return Ok(None);
        };
        let owner = cm.data["data"]["owner"]
            .as_str()
            .filter(|o| !o.is_empty())
            .map(str::to_string);
        let entries = cm.data["data"]["objects"]
            .as_str()
            .unwrap_or_default()
            .lines()
            .filter_map(InventoryEntry::parse)
            .collect();
        Ok(Some(Inventory {
            entries,
            revision: cm.data["data"]["revision"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            owner,
            resource_version: cm.metadata.resource_version.clone(),
            hooks_pending: cm.data["data"]["hooksPending"]
                .as_str()
                .is_some_and(|v| !v.is_empty()),
        }))
    }

    /// Writes the inventory (server-side apply) if the ConfigMap is still at `expected` (the
    /// `resourceVersion` read; `None`: it must not exist); returns the new `resourceVersion`.
    pub async fn write(
        &self,
        api: &Api<DynamicObject>,
        project: &str,
        environment: &str,
        expected: Option<&str>,
    ) -> Result<Option<String>, ApplyError> {
        let objects: Vec<String> = self.entries.iter().map(InventoryEntry::line).collect();
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let mut body = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name(project, environment),
                "labels": {
                    MANAGED_BY.0: MANAGED_BY.1,
                    PROJECT_LABEL: project,
                    ENVIRONMENT_LABEL: environment,
                    "lockstep.dev/inventory": "true",
                },
            },
            "data": {
                "objects": objects.join("\n"),
                "revision": self.revision,
                "appliedAt": now,
                "owner": self.owner.clone().unwrap_or_default(),
            },
        });
        if self.hooks_pending {
            body["data"]["hooksPending"] = Json::String("post-apply".into());
        }
        let changed = |e: kube::Error| match &e {
            kube::Error::Api(s) if s.code == 409 => ApplyError::InventoryChanged,
            _ => e.into(),
        };
        let written = match expected {
            // An apply with a resourceVersion is refused (409) when the object has changed since.
            Some(rv) => {
                body["metadata"]["resourceVersion"] = Json::String(rv.to_string());
                api.patch(
                    &name(project, environment),
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&body),
                )
                .await
                .map_err(changed)?
            }
            // A server-side apply would create or overwrite alike (it ignores a resourceVersion on
            // create): a create is refused (409) when another apply made the inventory meanwhile.
            None => {
                let object: DynamicObject =
                    serde_json::from_value(body).map_err(kube::Error::SerdeError)?;
                let params = PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PostParams::default()
                };
                api.create(&params, &object).await.map_err(changed)?
            }
        };
        Ok(written.metadata.resource_version)
    }

    /// Refuses an inventory kept by another Sync than `owner` (the CLI, `None`, may take over any).
    pub fn check_owner(&self, owner: Option<&str>, cm: &str) -> Result<(), ApplyError> {
        match (self.owner.as_deref(), owner) {
            (Some(theirs), Some(ours)) if theirs != ours => Err(ApplyError::Owned {
                what: format!("the inventory {cm}"),
                owner: theirs.to_string(),
            }),
            _ => Ok(()),
        }
    }
}

pub(crate) fn protected(kind: &str) -> bool {
    matches!(
        kind,
        "CustomResourceDefinition" | "Namespace" | "PersistentVolumeClaim"
    )
}

/// What pruning one stale object comes to: what happened, a note, and whether it stays in the
/// inventory (a failed or refused delete is retried next time).
pub(crate) type Pruned = (Action, Option<String>, bool);

/// A stale inventory entry, read from the cluster.
pub(crate) enum Stale {
    /// Decided without a delete (protected, not served, gone, unreadable).
    Decided(Pruned),
    /// The live object, and the API to delete it with.
    Live(Box<(Api<DynamicObject>, DynamicObject)>),
}

impl Stale {
    /// The live object's annotations (none when it was decided without one).
    pub(crate) fn annotations(&self) -> Option<&std::collections::BTreeMap<String, String>> {
        match self {
            Stale::Live(live) => live.1.metadata.annotations.as_ref(),
            Stale::Decided(_) => None,
        }
    }
}

/// The API of an inventoried object: the version it was applied with, else the one the cluster
/// recommends now (an upgrade may have retired the old version; the object is still there).
/// `None` when the kind is not served right now.
pub(crate) fn api_for(
    client: &Client,
    discovery: &Discovery,
    entry: &InventoryEntry,
) -> Option<Api<DynamicObject>> {
    let version = entry
        .api_version
        .rsplit_once('/')
        .map_or(entry.api_version.as_str(), |(_, v)| v);
    let group = group_of(&entry.api_version);
    let gvk = GroupVersionKind::gvk(group, version, &entry.kind);
    let (ar, caps) = discovery.resolve_gvk(&gvk).or_else(|| {
        discovery
            .get(group)
            .and_then(|g| g.recommended_kind(&entry.kind))
    })?;
    Some(match (caps.scope, &entry.namespace) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
        _ => Api::all_with(client.clone(), &ar),
    })
}

/// Reads one stale object: protected kinds are kept without consent, kinds not served right now
/// stay inventoried, an object already gone is forgotten.
pub(crate) async fn read_stale(
    client: &Client,
    discovery: &Discovery,
    entry: &InventoryEntry,
    opts: &Options,
) -> Stale {
    let decided = |action, note: String, keep| Stale::Decided((action, Some(note), keep));
    if protected(&entry.kind) && !opts.prune_protected {
        return decided(
            Action::Kept,
            format!(
                "{} is protected: pruned only with consent (--prune-protected; a Sync: spec.pruneProtected: true)",
                entry.kind
            ),
            true,
        );
    }
    let Some(api) = api_for(client, discovery, entry) else {
        // Not served at all right now (a CRD being reinstalled, discovery briefly incomplete):
        // kept in the inventory, so it is still pruned once it is served again.
        return decided(
            Action::Kept,
            format!(
                "{} {} is not served right now; kept in the inventory for the next run",
                entry.api_version, entry.kind
            ),
            true,
        );
    };
    match api.get_opt(&entry.name).await {
        Ok(Some(o)) => Stale::Live(Box::new((api, o))),
        // Already deleted: a real run forgets it (pruned); a preview has nothing to change.
        Ok(None) => {
            let action = if opts.dry_run {
                Action::Unchanged
            } else {
                Action::Pruned
            };
            decided(action, "already gone".into(), false)
        }
        Err(e) => decided(
            Action::Kept,
            format!("cannot read it: {}", reason(&e)),
            true,
        ),
    }
}

/// Prunes one stale object read by [`read_stale`] if it is safe: only an object still ours
/// (this environment's labels, no other Sync's owner annotation, not `prune: disabled`), with a
/// precondition on its UID.
pub(crate) async fn prune_one(
    stale: Stale,
    entry: &InventoryEntry,
    set: &ApplySet,
    opts: &Options,
) -> Pruned {
    let (api, live) = match stale {
        Stale::Decided(done) => return done,
        Stale::Live(live) => *live,
    };
    let annotations = live.metadata.annotations.clone().unwrap_or_default();
    if let (Some(theirs), Some(ours)) = (annotations.get(OWNER_ANNOTATION), &opts.owner)
        && theirs != ours
    {
        return (
            Action::Kept,
            Some(format!(
                "not deleted: it belongs to {theirs} ({OWNER_ANNOTATION})"
            )),
            false,
        );
    }
    let labels = live.metadata.labels.clone().unwrap_or_default();
    let ours = labels.get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1)
        && labels.get(PROJECT_LABEL) == Some(&set.project)
        && labels.get(ENVIRONMENT_LABEL) == Some(&set.environment);
    if !ours {
        return (
            Action::Kept,
            Some("not deleted: it does not carry this environment's lockstep labels".into()),
            false,
        );
    }
    if annotations.get(PRUNE_ANNOTATION).map(String::as_str) == Some("disabled") {
        return (
            Action::Kept,
            Some(format!(
                "not deleted: annotated {PRUNE_ANNOTATION}: disabled"
            )),
            false,
        );
    }
    if opts.dry_run {
        return (Action::Pruned, Some("would be pruned".into()), true);
    }
    let uid = live.metadata.uid.clone().unwrap_or_default();
    match delete_exact(&api, &entry.name, &uid).await {
        Ok(()) => (Action::Pruned, None, false),
        Err(e) if matches!(&e, kube::Error::Api(s) if s.code == 404) => {
            (Action::Pruned, Some("already gone".into()), false)
        }
        Err(e) => (
            Action::Kept,
            Some(format!(
                "delete failed, kept for the next run: {}",
                reason(&e)
            )),
            true,
        ),
    }
}

/// The inventory's objects as JSON lines (for `--output json`).
pub fn to_json(inv: &Inventory) -> Json {
    Json::Array(inv.entries.iter().map(|e| Json::String(e.line())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_ignore_the_version_when_compared() {
        let e = InventoryEntry::parse("apps/v1 Deployment shop web").expect("parses");
        assert_eq!(e.line(), "apps/v1 Deployment shop web");
        let newer = InventoryEntry::parse("apps/v2 Deployment shop web").expect("parses");
        assert_eq!(e, newer);
        let cluster = InventoryEntry::parse("v1 Namespace - shop").expect("parses");
        assert_eq!(cluster.namespace, None);
        assert!(InventoryEntry::parse("v1 Namespace").is_none());
        assert!(InventoryEntry::parse("v1 Secret shop ../../other").is_none());
        assert!(InventoryEntry::parse("v1 Secret .. x").is_none());
    }
}
