//! Diffs of what `apply` would change: the server's dry-run result against the live object, as a
//! unified diff in YAML, with noise removed and Secret values masked (key names and whether a value
//! was added, changed or removed — never a value, never a hash of one).

use serde_json::{Map, Value as Json};

use crate::decrypt::SecretJson;
use crate::render::emit;

/// A copy without the fields that change on every write or are not the user's to set (in a wiping
/// container: a Secret's copy holds its values until they are masked).
fn clean(v: &Json) -> SecretJson {
    let mut copy = SecretJson::wrap(v.clone());
    let v = copy.expose_mut();
    // Type fields (list items carry none; the header names the type) and server bookkeeping.
    super::strip_noise(v);
    if let Some(obj) = v.as_object_mut() {
        obj.remove("status");
        if let Some(meta) = obj.get_mut("metadata").and_then(Json::as_object_mut)
            && let Some(a) = meta.get_mut("annotations").and_then(Json::as_object_mut)
        {
            a.remove(super::APPLIED_ANNOTATION);
            // Client-side `kubectl apply` keeps the whole object here — a Secret's values
            // included — so it is never shown, on any kind (it fails closed).
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
            a.remove("deprecated.daemonset.template.generation");
            a.remove("deployment.kubernetes.io/revision");
            if a.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    sort_keys(v);
    copy
}

/// Orders every mapping's keys, so both sides of a diff list fields the same way and only changed
/// lines differ (the server returns live and dry-run objects in different key orders).
fn sort_keys(v: &mut Json) {
    match v {
        Json::Object(m) => {
            m.sort_keys();
            m.values_mut().for_each(sort_keys);
        }
        Json::Array(a) => a.iter_mut().for_each(sort_keys),
        _ => {}
    }
}

const MASK: &str = "(hidden)";
const MASK_CHANGED: &str = "(hidden, changed)";

/// Masks the values of a Secret pair: equal values look equal, changed ones say so.
fn mask_secret(live: &mut Json, new: &mut Json) {
    for section in ["data", "stringData"] {
        let old = SecretJson::wrap(Json::Object(
            live.get(section)
                .and_then(Json::as_object)
                .cloned()
                .unwrap_or_default(),
        ));
        let old_map: Option<&Map<String, Json>> = old.expose().as_object();
        if let Some(m) = new.get_mut(section).and_then(Json::as_object_mut) {
            for (k, v) in m.iter_mut() {
                let changed = old_map.and_then(|o| o.get(k)).is_some_and(|o| o != v);
                *v = Json::String(if changed { MASK_CHANGED } else { MASK }.into());
            }
        }
        if let Some(m) = live.get_mut(section).and_then(Json::as_object_mut) {
            for (_, v) in m.iter_mut() {
                *v = Json::String(MASK.into());
            }
        }
    }
}

fn yaml(v: &Json) -> String {
    match yaml_serde::to_value(v) {
        Ok(y) => emit::to_yaml(&y),
        Err(_) => String::new(),
    }
}

/// A unified diff from `live` (None when the object is new) to `new`, labelled with `name`.
pub fn unified(name: &str, is_secret: bool, live: Option<&Json>, new: &Json) -> String {
    let mut old = live.map_or_else(|| SecretJson::wrap(Json::Null), clean);
    let mut next = clean(new);
    if is_secret {
        mask_secret(old.expose_mut(), next.expose_mut());
    }
    let old_text = if live.is_some() {
        yaml(old.expose())
    } else {
        String::new()
    };
    let new_text = yaml(next.expose());
    similar::TextDiff::from_lines(&old_text, &new_text)
        .unified_diff()
        .context_radius(3)
        .header(&format!("live/{name}"), &format!("merged/{name}"))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_values_never_appear_in_a_diff() {
        let live = json!({"kind": "Secret", "metadata": {"name": "s", "resourceVersion": "7"}, "data": {"a": "c2VjcmV0MQ==", "b": "a2VlcA==", "gone": "eA=="}});
        let new = json!({"kind": "Secret", "metadata": {"name": "s"}, "data": {"a": "c2VjcmV0Mg==", "b": "a2VlcA==", "added": "eQ=="}});
        let d = unified("v1/Secret/s", true, Some(&live), &new);
        for secret in ["c2VjcmV0MQ==", "c2VjcmV0Mg==", "a2VlcA==", "eA==", "eQ=="] {
            assert!(!d.contains(secret), "{d}");
        }
        assert!(d.contains("+  a: (hidden, changed)"), "{d}");
        assert!(d.contains("-  gone: (hidden)"), "{d}");
        assert!(d.contains("+  added: (hidden)"), "{d}");
        assert!(!d.contains("resourceVersion"), "{d}");
    }

    #[test]
    fn last_applied_configuration_never_appears() {
        let last = r#"{"apiVersion":"v1","data":{"k":"UzNDUjNU"},"kind":"Secret","metadata":{"name":"s"}}"#;
        let annotated = |kind: &str, labels: Json| {
            json!({"kind": kind, "metadata": {"name": "s", "labels": labels, "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": last}}, "data": {"k": "UzNDUjNU"}})
        };
        // A Secret: masked values, and the annotation (which repeats them) gone.
        let d = unified(
            "v1/Secret/s",
            true,
            Some(&annotated("Secret", json!({}))),
            &annotated("Secret", json!({"a": "b"})),
        );
        assert!(
            !d.contains("UzNDUjNU") && !d.contains("last-applied"),
            "{d}"
        );
        // Any other kind: the annotation is never shown either.
        let d = unified(
            "v1/ConfigMap/s",
            false,
            Some(&annotated("ConfigMap", json!({}))),
            &annotated("ConfigMap", json!({"a": "b"})),
        );
        assert!(!d.contains("last-applied"), "{d}");
    }

    #[test]
    fn key_order_does_not_show_as_a_change() {
        let live = json!({"kind": "Deployment", "metadata": {"namespace": "n", "name": "d", "labels": {"b": "1", "a": "2"}}, "spec": {"template": {"x": 1}, "replicas": 1}});
        let new = json!({"spec": {"replicas": 2, "template": {"x": 1}}, "metadata": {"labels": {"a": "2", "b": "1"}, "name": "d", "namespace": "n"}, "kind": "Deployment"});
        let d = unified("apps/v1/Deployment/n/d", false, Some(&live), &new);
        let changed: Vec<&str> = d
            .lines()
            .filter(|l| {
                (l.starts_with('+') || l.starts_with('-'))
                    && !l.starts_with("+++")
                    && !l.starts_with("---")
            })
            .collect();
        assert_eq!(changed, ["-  replicas: 1", "+  replicas: 2"], "{d}");
    }
}
