//! Observe: an applied environment as it is in the cluster now — each object of its inventory
//! with its live health and when lockstep last changed it. Reads only (no Secret's data is
//! looked at: health never needs it, and only metadata is read for kinds without a health rule).

use futures::{StreamExt, stream};
use kube::Client;
use serde_json::Value as Json;

use super::health::{self, Health};
use super::inventory::{self, Inventory, InventoryEntry};
use super::{ApplyError, FIELD_MANAGER, discovery};
use crate::objects::ObjectId;

/// Objects read at once.
const CONCURRENCY: usize = 16;

/// How one inventoried object is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Ready by its kind's rule.
    Ready,
    /// Not yet, with why.
    Progressing(String),
    /// Failed, with why.
    Failed(String),
    /// It exists; its kind has no health rule.
    Exists,
    /// It is not in the cluster.
    Missing,
    /// Its kind is not served (a CRD removed), or it could not be read (why).
    Unknown(String),
}

impl State {
    /// A short word for tables: `Ready`, `Progressing`, `Failed`, `Exists`, `Missing`, `Unknown`.
    pub fn word(&self) -> &'static str {
        match self {
            State::Ready => "Ready",
            State::Progressing(_) => "Progressing",
            State::Failed(_) => "Failed",
            State::Exists => "Exists",
            State::Missing => "Missing",
            State::Unknown(_) => "Unknown",
        }
    }

    /// Why, when it is not plainly fine.
    pub fn why(&self) -> Option<&str> {
        match self {
            State::Progressing(w) | State::Failed(w) | State::Unknown(w) => Some(w),
            _ => None,
        }
    }
}

/// One inventoried object, observed.
#[derive(Debug, Clone)]
pub struct Observed {
    /// Its identity.
    pub id: ObjectId,
    /// Its `apiVersion` as inventoried.
    pub api_version: String,
    /// How it is.
    pub state: State,
    /// When lockstep last applied a change to it (its managed-fields entry), RFC 3339.
    pub changed_at: Option<String>,
}

/// An environment's inventory and its objects as they are now; `None` when the inventory
/// ConfigMap `namespace/name` does not exist.
pub async fn environment(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<(Inventory, Vec<Observed>)>, ApplyError> {
    let api = inventory::api(client, namespace);
    let Some(inv) = Inventory::read_named(&api, name).await? else {
        return Ok(None);
    };
    let (discovery, _) = discovery(client, false).await?;
    let entries: Vec<&InventoryEntry> = inv.entries.iter().collect();
    let observed = stream::iter(entries)
        .map(|e| {
            let discovery = discovery.clone();
            async move { observe(client, &discovery, e).await }
        })
        .buffered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    Ok(Some((inv, observed)))
}

async fn observe(client: &Client, discovery: &kube::Discovery, entry: &InventoryEntry) -> Observed {
    let id = entry.id();
    let mut observed = Observed {
        id: id.clone(),
        api_version: entry.api_version.clone(),
        state: State::Missing,
        changed_at: None,
    };
    let Some(api) = inventory::api_for(client, discovery, entry) else {
        observed.state = State::Unknown("its kind is not served by the cluster".into());
        return observed;
    };
    // Kinds without a health rule (Secrets among them) are read as metadata only.
    let rule = health::has_rule(&id);
    let read = if rule {
        api.get_opt(&id.name)
            .await
            .map(|o| o.map(|o| serde_json::to_value(o).unwrap_or(Json::Null)))
    } else {
        api.get_metadata_opt(&id.name)
            .await
            .map(|o| o.map(|o| serde_json::to_value(o).unwrap_or(Json::Null)))
    };
    match read {
        Ok(None) => {}
        Ok(Some(v)) => {
            observed.changed_at = last_applied_at(&v);
            observed.state = if rule {
                match health::check(&id, &v) {
                    Health::Ready => State::Ready,
                    Health::Progressing(w) => State::Progressing(w),
                    Health::Failed(w) => State::Failed(w),
                }
            } else {
                State::Exists
            };
        }
        Err(e) => observed.state = State::Unknown(super::reason(&e)),
    }
    observed
}

/// The time of lockstep's latest managed-fields entry on an object.
fn last_applied_at(obj: &Json) -> Option<String> {
    obj["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .filter(|f| f["manager"] == FIELD_MANAGER)
        .filter_map(|f| f["time"].as_str())
        .max()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_last_change_is_lockstep_s_latest_managed_fields_entry() {
        let obj = json!({"metadata": {"managedFields": [
            {"manager": "lockstep", "operation": "Apply", "time": "2026-12-01T10:00:00Z"},
            {"manager": "kube-controller-manager", "operation": "Update", "time": "2026-12-02T10:00:00Z"},
            {"manager": "lockstep", "operation": "Apply", "subresource": "status", "time": "2026-12-01T11:00:00Z"},
        ]}});
        assert_eq!(
            last_applied_at(&obj).as_deref(),
            Some("2026-12-01T11:00:00Z")
        );
        assert_eq!(last_applied_at(&json!({"metadata": {}})), None);
    }
}
