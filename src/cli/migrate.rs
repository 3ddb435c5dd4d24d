//! `lockstep init --from-flux DIR`: turns a Flux repository's `Kustomization`s (and the
//! `GitRepository` they read) into a lockstep project over the same tree: one environment per
//! Kustomization, building its `spec.path` as a Kustomize overlay into its `targetNamespace`, and
//! one `Sync` per environment with the same source, interval, prune, suspend, wait, timeout,
//! ServiceAccount and decryption Secret (Flux's `sops-age` Secret holds identities lockstep reads
//! as they are). `.sops.yaml` stays as it is. What has no lockstep counterpart is listed, never
//! silently dropped.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};
use yaml_serde::Value;

use super::exit::{Code, Failure};
use crate::render::project::is_dns_label;

/// Flux's Kustomization API group.
const KUSTOMIZE_GROUP: &str = "kustomize.toolkit.fluxcd.io/";
/// Flux's source API group.
const SOURCE_GROUP: &str = "source.toolkit.fluxcd.io/";

/// Spec fields of a Flux Kustomization that lockstep has no counterpart for, with what to do.
const NOT_CARRIED: [(&str, &str); 9] = [
    (
        "postBuild",
        "post-build variable substitution: move the values into the overlay (patches, replacements) or into a lockstep template",
    ),
    (
        "dependsOn",
        "ordering between Syncs is not carried over: apply the dependency first",
    ),
    (
        "healthChecks",
        "set spec.wait: true on the Sync; it waits for every applied object",
    ),
    (
        "patches",
        "move the patches into the overlay's kustomization.yaml",
    ),
    (
        "images",
        "move the image overrides into the overlay's kustomization.yaml (images:)",
    ),
    (
        "components",
        "list the components in the overlay's kustomization.yaml",
    ),
    (
        "commonMetadata",
        "add the labels and annotations in the overlay's kustomization.yaml",
    ),
    (
        "namePrefix",
        "set namePrefix in the overlay's kustomization.yaml",
    ),
    (
        "kubeConfig",
        "remote clusters: run a lockstep controller in that cluster",
    ),
];

/// What a migration found: the project file, the Syncs, and what was not carried over.
#[derive(Debug, Default)]
pub struct Migration {
    /// The `lockstep.yaml` text.
    pub project_file: String,
    /// One `Sync` per environment.
    pub syncs: Vec<Json>,
    /// `Kustomization NAME: field: what to do`.
    pub not_carried: Vec<String>,
}

/// Reads every YAML document under `flux_dir` and maps its Kustomizations (the one that applies
/// the `flux_dir` itself, Flux's own, is skipped).
pub fn migrate(root: &Path, flux_dir: &Path, project: &str) -> Result<Migration, Failure> {
    let mut docs = Vec::new();
    for file in yaml_files(flux_dir)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| Failure::new(Code::ERROR, format!("{}: {e}", file.display())))?;
        for doc in yaml_serde::Deserializer::from_str(&text) {
            if let Ok(v) = <Value as serde::Deserialize>::deserialize(doc) {
                docs.push((file.clone(), v));
            }
        }
    }
    let of_kind = |group: &'static str, kind: &'static str| {
        docs.iter().filter(move |(_, d)| {
            d["kind"].as_str() == Some(kind)
                && d["apiVersion"]
                    .as_str()
                    .is_some_and(|a| a.starts_with(group))
        })
    };
    let sources: BTreeMap<String, &Value> = of_kind(SOURCE_GROUP, "GitRepository")
        .filter_map(|(_, d)| Some((d["metadata"]["name"].as_str()?.to_string(), d)))
        .collect();
    let flux_rel = flux_dir
        .strip_prefix(root)
        .unwrap_or(flux_dir)
        .to_string_lossy()
        .trim_matches('/')
        .to_string();
    let mut out = Migration::default();
    let mut environments = String::new();
    for (file, k) in of_kind(KUSTOMIZE_GROUP, "Kustomization") {
        let name = k["metadata"]["name"].as_str().unwrap_or_default();
        let spec = &k["spec"];
        let path = spec["path"]
            .as_str()
            .unwrap_or(".")
            .trim_start_matches("./")
            .trim_matches('/')
            .to_string();
        if path == flux_rel {
            continue;
        }
        if !is_dns_label(name) {
            return Err(Failure::new(
                Code::ERROR,
                format!(
                    "{}: Kustomization {name:?} cannot name a lockstep environment (a DNS label)",
                    file.display()
                ),
            ));
        }
        let namespace = spec["targetNamespace"].as_str().unwrap_or("default");
        environments.push_str(&format!(
            "  {name}:\n    namespace: {namespace}\n    kustomize: {}\n",
            if path.is_empty() { "." } else { &path }
        ));
        for (field, todo) in NOT_CARRIED {
            if !spec[field].is_null() {
                out.not_carried
                    .push(format!("Kustomization {name}: {field}: {todo}"));
            }
        }
        out.syncs
            .push(sync_of(name, k, &sources, &mut out.not_carried));
    }
    if environments.is_empty() {
        return Err(Failure::new(
            Code::ERROR,
            format!(
                "{}: no Flux Kustomization (kustomize.toolkit.fluxcd.io) applies a path outside it",
                flux_dir.display()
            ),
        ));
    }
    out.project_file = format!(
        "# Migrated from Flux (lockstep init --from-flux {flux_rel}): one environment per Kustomization.\nproject: {project}\nenvironments:\n{environments}"
    );
    Ok(out)
}

/// The Sync of one Kustomization.
fn sync_of(
    name: &str,
    k: &Value,
    sources: &BTreeMap<String, &Value>,
    not_carried: &mut Vec<String>,
) -> Json {
    let spec = &k["spec"];
    let source_name = spec["sourceRef"]["name"].as_str().unwrap_or_default();
    let git = sources.get(source_name);
    let url = git
        .and_then(|g| g["spec"]["url"].as_str())
        .unwrap_or("https://git.example.org/REPLACE-ME.git");
    if git.is_none() {
        not_carried.push(format!(
            "Kustomization {name}: sourceRef {source_name:?}: no GitRepository of that name was found; set source.url"
        ));
    }
    let mut source = json!({"url": url});
    if let Some(g) = git {
        let r = &g["spec"]["ref"];
        for field in ["branch", "tag", "commit"] {
            if let Some(v) = r[field].as_str() {
                source["ref"] = json!({field: v});
            }
        }
        if let Some(secret) = g["spec"]["secretRef"]["name"].as_str() {
            source["secretRef"] = json!({"name": secret});
        }
    }
    let mut sync_spec = json!({"source": source, "environment": name});
    // Fields a Sync spells as Flux does.
    for field in [
        "interval",
        "retryInterval",
        "timeout",
        "prune",
        "suspend",
        "wait",
        "serviceAccountName",
    ] {
        if let Some(v) = yaml_to_json(&spec[field]) {
            sync_spec[field] = v;
        }
    }
    if let Some(secret) = spec["decryption"]["secretRef"]["name"].as_str() {
        sync_spec["decryption"] = json!({"secretRef": {"name": secret}});
    }
    json!({
        "apiVersion": "lockstep.dev/v1alpha1",
        "kind": "Sync",
        "metadata": {
            "name": name,
            "namespace": k["metadata"]["namespace"].as_str().unwrap_or("flux-system"),
        },
        "spec": sync_spec,
    })
}

fn yaml_to_json(v: &Value) -> Option<Json> {
    match v {
        Value::Null => None,
        Value::Bool(b) => Some(json!(b)),
        Value::String(s) => Some(json!(s)),
        Value::Number(n) => n.as_i64().map(|i| json!(i)),
        _ => None,
    }
}

/// The `.yaml`/`.yml` files under `dir`, sorted (hidden entries skipped).
fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d)
            .map_err(|e| Failure::new(Code::ERROR, format!("--from-flux {}: {e}", d.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if hidden {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Runs the migration for `init`: writes `lockstep.yaml`, prints the Syncs (YAML, for `kubectl
/// apply -f -`) and lists what was not carried over.
pub fn run(
    root: &Path,
    flux_dir: &Path,
    project: &str,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<(), Failure> {
    let flux_dir = if flux_dir.is_absolute() {
        flux_dir.to_path_buf()
    } else {
        root.join(flux_dir)
    };
    let migration = migrate(root, &flux_dir, project)?;
    let path = root.join("lockstep.yaml");
    std::fs::write(&path, &migration.project_file).map_err(|e| {
        Failure::new(
            Code::COULD_NOT_WRITE_OUTPUT_FILE,
            format!("{}: {e}", path.display()),
        )
    })?;
    for sync in &migration.syncs {
        let _ = write!(
            stdout,
            "---\n{}",
            yaml_serde::to_string(sync).unwrap_or_default()
        );
    }
    let _ = writeln!(
        stderr,
        "lockstep: wrote {} with {} environment(s); the Syncs above replace the Kustomizations (apply them, then suspend or delete Flux's)",
        path.display(),
        migration.syncs.len()
    );
    for line in &migration.not_carried {
        let _ = writeln!(stderr, "lockstep: not carried over: {line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kustomizations_become_environments_and_syncs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("clusters/prod/flux-system")).expect("mkdir");
        std::fs::write(
            root.join("clusters/prod/flux-system/gotk-sync.yaml"),
            "apiVersion: source.toolkit.fluxcd.io/v1\nkind: GitRepository\nmetadata: {name: flux-system, namespace: flux-system}\nspec:\n  url: ssh://git@example.org/shop.git\n  ref: {branch: main}\n  secretRef: {name: flux-system}\n---\napiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata: {name: flux-system, namespace: flux-system}\nspec:\n  path: ./clusters/prod\n  sourceRef: {kind: GitRepository, name: flux-system}\n",
        )
        .expect("write");
        std::fs::write(
            root.join("clusters/prod/apps.yaml"),
            "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata: {name: apps, namespace: flux-system}\nspec:\n  interval: 10m\n  path: ./apps/prod\n  prune: true\n  targetNamespace: shop\n  sourceRef: {kind: GitRepository, name: flux-system}\n  decryption: {provider: sops, secretRef: {name: sops-age}}\n  postBuild:\n    substitute: {cluster: prod}\n",
        )
        .expect("write");
        let Ok(m) = migrate(root, &root.join("clusters/prod"), "shop") else {
            panic!("the migration failed");
        };
        assert!(
            m.project_file
                .contains("  apps:\n    namespace: shop\n    kustomize: apps/prod\n"),
            "{}",
            m.project_file
        );
        assert_eq!(m.syncs.len(), 1, "Flux's own Kustomization is skipped");
        let s = &m.syncs[0]["spec"];
        assert_eq!(s["source"]["url"], "ssh://git@example.org/shop.git");
        assert_eq!(s["source"]["ref"]["branch"], "main");
        assert_eq!(s["source"]["secretRef"]["name"], "flux-system");
        assert_eq!(s["interval"], "10m");
        assert_eq!(s["prune"], true);
        assert_eq!(s["decryption"]["secretRef"]["name"], "sops-age");
        assert!(
            m.not_carried.iter().any(|l| l.contains("postBuild")),
            "{:?}",
            m.not_carried
        );
    }
}
