//! History: the last syncs of each Sync — revision, commit subject, when, what triggered it,
//! result, duration, objects changed, and the digest of the sealed render — kept by the controller
//! in a `SyncHistory` beside the Sync (same name and namespace, owned by it, so it goes with it).
//! Bounded: at most [`MAX_ENTRIES`] entries, each message capped. Not in the Sync's status: status
//! says what is, history what was, and it must not grow with every sync.
//!
//! A reconcile that changes nothing (same revision, nothing changed, same result, a plain poll)
//! is not an entry: twenty polls would otherwise push every real sync out of the list.

use kube::api::{Api, Patch, PatchParams};
use kube::{CustomResource, CustomResourceExt, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Sync;
use crate::apply;

/// The recorded syncs of one Sync.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "lockstep.dev",
    version = "v1alpha1",
    kind = "SyncHistory",
    plural = "synchistories",
    namespaced,
    printcolumn = r#"{"name":"Last","type":"string","jsonPath":".spec.entries[0].result"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".spec.entries[0].revision"}"#,
    printcolumn = r#"{"name":"At","type":"date","jsonPath":".spec.entries[0].at"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SyncHistorySpec {
    /// The syncs, newest first.
    #[serde(default)]
    pub entries: Vec<Entry>,
}

/// One sync.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The commit synced (or tried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The first line of its message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When the sync ended (RFC 3339).
    pub at: String,
    /// What started it: `new`, `start` (the controller's first look), `poll`, `retry`,
    /// `webhook`, `request` (`lockstep sync`), `rollback` (`lockstep rollback`), `spec change`.
    pub trigger: String,
    /// The result: the Ready condition's reason (`Succeeded`, `RenderFailed`, …).
    pub result: String,
    /// What the step said (never a value), capped.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// How long it took, e.g. `1.2s`.
    pub duration: String,
    /// Objects created, configured or pruned.
    #[serde(default)]
    pub changed: u64,
    /// The digest of the sealed render applied: equal digests, equal sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub render_digest: Option<String>,
}

/// Entries kept at most (`--history` may ask for fewer).
pub const MAX_ENTRIES: usize = 100;

/// Entries kept by default.
pub const DEFAULT_ENTRIES: usize = 20;

/// Bytes of an entry's message kept (the full message is in the Sync's status and its Event).
pub const MAX_MESSAGE: usize = 1024;

/// Whether `entry` is worth keeping after `last` (the newest kept): a new revision, a change, a
/// different result, or a sync someone asked for.
pub fn worth_recording(last: Option<&Entry>, entry: &Entry) -> bool {
    let Some(last) = last else {
        return true;
    };
    entry.changed > 0
        || entry.revision != last.revision
        || entry.result != last.result
        || entry.render_digest != last.render_digest
        || !matches!(entry.trigger.as_str(), "poll" | "retry" | "start")
}

/// `message` cut to [`MAX_MESSAGE`] bytes on a character boundary.
pub fn cap(message: &str) -> String {
    if message.len() <= MAX_MESSAGE {
        return message.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// `entries` with `entry` first, at most `keep` of them.
pub fn prepend(mut entries: Vec<Entry>, entry: Entry, keep: usize) -> Vec<Entry> {
    entries.insert(0, entry);
    entries.truncate(keep.clamp(1, MAX_ENTRIES));
    entries
}

/// The API of SyncHistories in a namespace.
pub fn api(client: &kube::Client, namespace: &str) -> Api<SyncHistory> {
    Api::namespaced(client.clone(), namespace)
}

/// Reads a Sync's history (empty when there is none yet).
pub async fn read(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Vec<Entry>, kube::Error> {
    Ok(api(client, namespace)
        .get_opt(name)
        .await?
        .map(|h| h.spec.entries)
        .unwrap_or_default())
}

/// Records `entry` in the Sync's history when it is [`worth_recording`], keeping `keep` entries;
/// the history is owned by the Sync (deleted with it). Returns the history's newest entry.
pub async fn record(
    client: &kube::Client,
    sync: &Sync,
    entry: Entry,
    keep: usize,
) -> Result<Option<Entry>, kube::Error> {
    let ns = sync.namespace().unwrap_or_default();
    let name = sync.name_any();
    let entries = read(client, &ns, &name).await?;
    if !worth_recording(entries.first(), &entry) {
        return Ok(entries.into_iter().next());
    }
    let newest = entry.clone();
    let entries = prepend(entries, entry, keep);
    let owner = sync.controller_owner_ref(&()).map(|mut o| {
        // Owned, not controlled: deleting the Sync deletes its history, nothing else follows.
        o.controller = None;
        o.block_owner_deletion = None;
        o
    });
    let body = serde_json::json!({
        "apiVersion": SyncHistory::api_version(&()),
        "kind": SyncHistory::kind(&()),
        "metadata": {"name": name, "ownerReferences": owner.into_iter().collect::<Vec<_>>()},
        "spec": {"entries": entries},
    });
    api(client, &ns)
        .patch(
            &name,
            &PatchParams::apply(apply::FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?;
    Ok(Some(newest))
}

/// The `SyncHistory` CRD as YAML (the committed `templates/manifests/crd-synchistory.yaml` must
/// equal this).
pub fn crd_yaml() -> String {
    super::generated_crd(&SyncHistory::crd(), "history")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(revision: &str, trigger: &str, result: &str, changed: u64) -> Entry {
        Entry {
            revision: Some(revision.into()),
            at: "2026-12-03T12:00:00Z".into(),
            trigger: trigger.into(),
            result: result.into(),
            duration: "1.0s".into(),
            changed,
            ..Entry::default()
        }
    }

    #[test]
    fn the_committed_crd_is_what_the_types_generate() {
        let committed = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("templates/manifests/crd-synchistory.yaml"),
        )
        .expect("templates/manifests/crd-synchistory.yaml is committed");
        assert_eq!(
            committed,
            crd_yaml(),
            "regenerate with `lockstep controller --print-crd history > templates/manifests/crd-synchistory.yaml`"
        );
    }

    #[test]
    fn only_syncs_that_did_or_meant_something_are_recorded() {
        let last = entry("aaa", "poll", "Succeeded", 3);
        let last = Some(&last);
        assert!(worth_recording(None, &entry("aaa", "poll", "Succeeded", 0)));
        assert!(!worth_recording(
            last,
            &entry("aaa", "poll", "Succeeded", 0)
        ));
        assert!(!worth_recording(
            last,
            &entry("aaa", "start", "Succeeded", 0)
        ));
        assert!(worth_recording(last, &entry("bbb", "poll", "Succeeded", 0)));
        assert!(
            worth_recording(last, &entry("aaa", "poll", "Succeeded", 1)),
            "drift corrected"
        );
        assert!(worth_recording(
            last,
            &entry("aaa", "poll", "HealthCheckFailed", 0)
        ));
        assert!(worth_recording(
            last,
            &entry("aaa", "request", "Succeeded", 0)
        ));
        assert!(worth_recording(
            last,
            &entry("aaa", "webhook", "Succeeded", 0)
        ));
    }

    #[test]
    fn history_stays_bounded_newest_first() {
        let mut entries = Vec::new();
        for i in 0..1000 {
            entries = prepend(entries, entry(&format!("r{i}"), "poll", "Succeeded", 1), 20);
        }
        assert_eq!(entries.len(), 20);
        assert_eq!(entries[0].revision.as_deref(), Some("r999"));
        assert_eq!(entries[19].revision.as_deref(), Some("r980"));
        assert_eq!(
            prepend(Vec::new(), entry("a", "poll", "S", 0), 10_000).len(),
            1
        );
        let many: Vec<Entry> = (0..500).map(|_| entry("x", "poll", "S", 0)).collect();
        assert_eq!(
            prepend(many, entry("y", "poll", "S", 0), 10_000).len(),
            MAX_ENTRIES
        );
        let long = "é".repeat(MAX_MESSAGE);
        let capped = cap(&long);
        assert!(capped.len() <= MAX_MESSAGE + 3 && capped.ends_with('…'));
    }
}
