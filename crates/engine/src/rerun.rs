//! Render twice, apply what was reviewed: a chart release that received sealed values is rendered
//! once more at apply, with the real values on Helm's standard input (never a file), and every one
//! of its objects must equal the reviewed render with the values put in place. A chart that trims,
//! checks, hashes or generates something (`randAlphaNum`, `genCA`) renders differently; that fails
//! closed, naming the object and the field — never a value. Helm's output is read into a wiping
//! buffer and parsed straight into wiping objects. Helm's `checksum/…` annotations (hashes of
//! rendered files) are the one exception: the sealed render's are applied.

use serde_json::Value as Json;
use zeroize::{Zeroize, Zeroizing};

use crate::decrypt::{
    ApplyObject, SecretJson, fold_string_data, leaf_bytes, lookup, substitute, transformed,
};
use crate::render::budget::MAX_OUTPUT_BYTES;
use crate::render::chart::{self, Feed, Rerun};
use crate::render::sealed::SealedRef;
use crate::sops::tree::Document;
use crate::source::Snapshot;

/// Renders `rerun` with the values of the files `docs_of` opens in place of its placeholders and
/// compares the result with `objects` (the apply set, secrets in place); the error says what
/// differs.
pub(crate) fn check<'d>(
    rerun: &Rerun,
    snapshot: &Snapshot,
    docs_of: &dyn Fn(&str) -> &'d [Document],
    objects: &[ApplyObject],
) -> Result<(), String> {
    let values = real_values(rerun, docs_of)?;
    let out = chart::run(
        &rerun.helm,
        snapshot,
        &rerun.release(),
        &rerun.environment,
        Feed::Real(&values),
        MAX_OUTPUT_BYTES,
    )
    .map_err(|d| d.message)?;
    drop(values);
    let theirs = parse(&out)?;
    drop(out);
    let prefix = format!("{}/", rerun.chart_dir());
    let ours: Vec<&ApplyObject> = objects
        .iter()
        .filter(|o| {
            o.source.starts_with(&prefix) && rerun.objects.contains(&key_of(o.object.expose()))
        })
        .collect();
    compare(&ours, theirs, rerun.sealed)
}

/// The release's values with the real ones in place, as JSON (which Helm reads as YAML) in a
/// wiping buffer.
fn real_values<'d>(
    rerun: &Rerun,
    docs_of: &dyn Fn(&str) -> &'d [Document],
) -> Result<Zeroizing<Vec<u8>>, String> {
    let sealed: Json = yaml_serde::from_str(&rerun.values)
        .map_err(|e| format!("its values do not parse again: {e}"))?;
    let mut values = SecretJson::wrap(sealed);
    let mut extra = 0;
    put_values(values.expose_mut(), docs_of, &mut Vec::new(), &mut extra)?;
    let mut buf = Zeroizing::new(Vec::with_capacity(rerun.values.len() + extra * 2 + 1024));
    serde_json::to_writer(&mut *buf, values.expose()).map_err(|e| e.to_string())?;
    Ok(buf)
}

/// Replaces every placeholder in the strings of `v` with its value (base64 when marked so).
fn put_values<'d>(
    v: &mut Json,
    docs_of: &dyn Fn(&str) -> &'d [Document],
    path: &mut Vec<String>,
    extra: &mut usize,
) -> Result<(), String> {
    match v {
        Json::String(s) => {
            if !SealedRef::mentioned_in(s) {
                return Ok(());
            }
            let mut out = substitute(s, |r| {
                let plain = lookup(docs_of(&r.file), &r.path)
                    .and_then(leaf_bytes)
                    .ok_or_else(|| {
                        format!(
                            "values key {}: {} is not a single value of {}",
                            path.join("."),
                            r.display_path(),
                            r.file
                        )
                    })?;
                transformed(r.transform, &plain).ok_or_else(|| {
                    format!(
                        "values key {}: {} is not text; pass it as `| b64encode`",
                        path.join("."),
                        r.display_path()
                    )
                })
            })?;
            *extra += out.len();
            s.zeroize();
            *s = std::mem::take(&mut *out);
        }
        Json::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                put_values(item, docs_of, path, extra)?;
                path.pop();
            }
        }
        Json::Object(map) => {
            for (k, item) in map.iter_mut() {
                path.push(k.clone());
                put_values(item, docs_of, path, extra)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

/// Helm's output as wiping objects, by `Kind/name`, Secrets with `stringData` folded into `data`.
fn parse(out: &[u8]) -> Result<Vec<(String, SecretJson)>, String> {
    let text = std::str::from_utf8(out).map_err(|_| "Helm printed output that is not UTF-8")?;
    let mut objects = Vec::new();
    for doc in crate::render::manifest::split_documents(text) {
        if chart::holds_nothing(doc.text) {
            continue;
        }
        let value: Json = yaml_serde::from_str(doc.text)
            .map_err(|_| "Helm's output with the real values does not parse as YAML".to_string())?;
        let mut object = SecretJson::wrap(value);
        if object.expose().is_null() {
            continue;
        }
        let key = key_of(object.expose());
        if object.expose()["kind"] == "Secret" && object.expose()["apiVersion"] == "v1" {
            fold_string_data(&mut object);
        }
        objects.push((key, object));
    }
    Ok(objects)
}

fn key_of(v: &Json) -> String {
    chart::object_key(
        v["kind"].as_str().unwrap_or_default(),
        v["metadata"]["name"].as_str().unwrap_or_default(),
    )
}

/// Compares each of Helm's objects with ours (ours without what lockstep adds: the sealed digest
/// annotation, a defaulted namespace).
fn compare(
    ours: &[&ApplyObject],
    theirs: Vec<(String, SecretJson)>,
    sealed: bool,
) -> Result<(), String> {
    let differs = |object: &str, field: &str| {
        if sealed {
            format!(
                "{object} differs at `{field}` between the reviewed render (sealed values) and Helm's render with the real values: the chart treats a secret value otherwise than its placeholder (trims, checks or transforms it, or generates a value)"
            )
        } else {
            format!(
                "{object} differs at `{field}` between two renders with the same values: the chart makes it up on each render (randAlphaNum, genCA, lookup, now), so every apply changes it; set it in the chart's values"
            )
        }
    };
    if ours.len() != theirs.len() {
        let names: Vec<&str> = theirs.iter().map(|(k, _)| k.as_str()).collect();
        return Err(format!(
            "renders {} objects with the real values ({}) and {} with the sealed ones",
            theirs.len(),
            names.join(", "),
            ours.len()
        ));
    }
    for (key, theirs) in &theirs {
        let Some(mine) = ours.iter().find(|o| key_of(o.object.expose()) == *key) else {
            return Err(format!(
                "{key} is rendered with the real values but not with the sealed ones"
            ));
        };
        let mut mine = mine.object.duplicate();
        strip_additions(&mut mine, theirs.expose());
        if let Some(field) = first_difference(mine.expose(), theirs.expose(), &mut Vec::new()) {
            return Err(differs(key, &field));
        }
    }
    Ok(())
}

/// Removes from `mine` the sealed digest annotation and a namespace `theirs` does not name.
fn strip_additions(mine: &mut SecretJson, theirs: &Json) {
    let Some(meta) = mine
        .expose_mut()
        .get_mut("metadata")
        .and_then(Json::as_object_mut)
    else {
        return;
    };
    if theirs["metadata"].get("namespace").is_none() {
        meta.remove("namespace");
    }
    let empty = meta
        .get_mut("annotations")
        .and_then(Json::as_object_mut)
        .map(|a| {
            a.remove(crate::sealed::SEALED_DIGEST);
            a.is_empty()
        })
        .unwrap_or(false);
    if empty && theirs["metadata"].get("annotations").is_none() {
        meta.remove("annotations");
    }
}

/// The first field (dotted path) where `a` and `b` differ.
fn first_difference(a: &Json, b: &Json, path: &mut Vec<String>) -> Option<String> {
    match (a, b) {
        (Json::Object(x), Json::Object(y)) => {
            for k in x.keys().chain(y.keys()) {
                // Helm's `checksum/…` annotations hash rendered files: of the sealed render they
                // are what is applied (they change when a sealed value's ciphertext does).
                if k.starts_with("checksum/") && path.last().is_some_and(|p| p == "annotations") {
                    continue;
                }
                path.push(k.clone());
                let found = match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => first_difference(p, q, path),
                    _ => Some(path.join(".")),
                };
                path.pop();
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        (Json::Array(x), Json::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (p, q))| {
                path.push(i.to_string());
                let found = first_difference(p, q, path);
                path.pop();
                found
            })
        }
        _ if a == b => None,
        _ => Some(if path.is_empty() {
            "(the whole object)".into()
        } else {
            path.join(".")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_differing_field_is_named() {
        let a = serde_json::json!({"kind": "Secret", "data": {"a": "x", "b": "y"}, "list": [1, 2]});
        let b = serde_json::json!({"kind": "Secret", "data": {"a": "x", "b": "z"}, "list": [1, 2]});
        assert_eq!(
            first_difference(&a, &b, &mut Vec::new()).as_deref(),
            Some("data.b")
        );
        let c = serde_json::json!({"kind": "Secret", "data": {"a": "x", "b": "y"}, "list": [1, 3]});
        assert_eq!(
            first_difference(&a, &c, &mut Vec::new()).as_deref(),
            Some("list.1")
        );
        let d = serde_json::json!({"kind": "Secret", "data": {"a": "x"}, "list": [1, 2]});
        assert_eq!(
            first_difference(&a, &d, &mut Vec::new()).as_deref(),
            Some("data.b")
        );
        assert_eq!(first_difference(&a, &a.clone(), &mut Vec::new()), None);
        let e =
            serde_json::json!({"metadata": {"annotations": {"checksum/secret": "1", "x": "1"}}});
        let f =
            serde_json::json!({"metadata": {"annotations": {"checksum/secret": "2", "x": "1"}}});
        assert_eq!(
            first_difference(&e, &f, &mut Vec::new()),
            None,
            "checksum annotations"
        );
    }
}
