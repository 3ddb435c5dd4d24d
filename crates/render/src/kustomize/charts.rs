//! `helmCharts:` of a kustomization, inflated by lockstep's Helm path rather than kustomize's
//! `--enable-helm`: each entry becomes a release rendered by `helm template` with its values on a
//! pipe, SOPS-encrypted values files (helm-secrets' layout) passed as sealed placeholders, and its
//! hooks run as Helm runs them. The sealed output then enters the build as a resource of the
//! kustomization, in the scratch copy, so kustomize's transformers (namespace, prefixes, labels,
//! patches) apply to it as they would to the output of its own Helm generator.
//!
//! What an entry means follows kustomize: the chart is `<chartHome>/<name>` beside the
//! kustomization (`<chartHome>/<name>-<version>/<name>` with `repo` and `version`), `chartHome`
//! defaulting to `charts`; `valuesFile` (default: the chart's `values.yaml`) merged with
//! `valuesInline` by `valuesMerge` (`override`, `merge`, `replace`), then `additionalValuesFiles`
//! in order, as Helm merges `-f` files; the chart's `crds/` only with `includeCRDs: true`; hooks
//! left out with `skipHooks: true`. Lockstep differs where kustomize's choice cannot hold in
//! GitOps: a chart is never fetched (vendor it, as a remote base), and without `releaseName` the
//! release is named after the chart, not a random name.

use std::collections::BTreeMap;

use yaml_serde::{Mapping, Value};

use super::{StandIns, dir_of, strings};
use crate::chart::{self, Helm, Release, Rerun, Values};
use crate::diagnostic::Diagnostic;
use crate::manifest::{self, Body, Manifest};
use crate::project::{Chart, Environment, is_dns_label};
use crate::sealed::SecretsFile;
use lockstep_core::snapshot::{Snapshot, join_path as join};

/// The annotation that carries an object's release through the build (removed after it).
pub(crate) const RELEASE_MARK: &str = "lockstep.dev/overlay-release";

/// The name kustomize gives a chart's home when `helmGlobals.chartHome` is not set.
const DEFAULT_CHART_HOME: &str = "charts";

/// One `helmCharts` entry, read: a release to render.
pub(crate) struct Entry {
    /// The kustomization that names it.
    pub kustomization: String,
    /// The release name.
    pub release: String,
    /// The chart (a directory of the project) and what of it is rendered.
    pub chart: Chart,
    /// The release's namespace.
    pub namespace: String,
    /// What the chart sees as `.Capabilities`.
    pub environment: Environment,
    /// The merged values (sealed placeholders for SOPS-encrypted values).
    pub values: Values,
}

/// The releases of every kustomization the build reads, in order of kustomization and entry.
pub(crate) fn entries(
    snapshot: &Snapshot,
    reached: &[(String, Value)],
    environment: &Environment,
    stand_ins: &mut StandIns,
) -> Result<Vec<Entry>, Diagnostic> {
    let mut out: Vec<Entry> = Vec::new();
    for (path, doc) in reached {
        if doc.get("helmChartInflationGenerator").is_some() {
            return Err(Diagnostic::new(
                "helmChartInflationGenerator is kustomize's retired form of helmCharts",
            )
            .in_file(path.clone())
            .with_help("write the chart as a helmCharts: entry (kustomize's current form)"));
        }
        let Some(list) = doc.get("helmCharts") else {
            continue;
        };
        let Some(list) = list.as_sequence() else {
            return Err(Diagnostic::new("helmCharts is not a list")
                .in_file(path.clone())
                .with_help("write one `- name: <chart>` entry per chart"));
        };
        let home = chart_home(path, doc)?;
        for item in list {
            let entry = entry(snapshot, path, &home, item, environment, stand_ins)?;
            if let Some(other) = out.iter().find(|e| e.release == entry.release) {
                return Err(Diagnostic::new(format!(
                    "release {} is also named in {}",
                    entry.release, other.kustomization
                ))
                .in_file(path.clone())
                .with_help("give each helmCharts entry its own releaseName"));
            }
            out.push(entry);
        }
    }
    Ok(out)
}

/// `helmGlobals.chartHome`, as a project directory.
fn chart_home(path: &str, doc: &Value) -> Result<String, Diagnostic> {
    let dir = dir_of(path);
    let home = doc
        .get("helmGlobals")
        .and_then(|g| g.get("chartHome"))
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_CHART_HOME);
    join(dir, home).ok_or_else(|| {
        Diagnostic::new(format!(
            "helmGlobals.chartHome {home:?} is outside the project"
        ))
        .in_file(path.to_string())
        .with_help("name a directory of the repository, relative to the kustomization")
    })
}

/// One entry of a kustomization's `helmCharts`.
fn entry(
    snapshot: &Snapshot,
    path: &str,
    home: &str,
    item: &Value,
    environment: &Environment,
    stand_ins: &mut StandIns,
) -> Result<Entry, Diagnostic> {
    let fail = |message: String, help: &str| {
        Diagnostic::new(message)
            .in_file(path.to_string())
            .with_help(help.to_string())
    };
    let text = |key: &str| item.get(key).and_then(Value::as_str).map(str::to_string);
    let name = text("name").ok_or_else(|| {
        fail(
            "a helmCharts entry has no name".into(),
            "name the chart: `- name: <chart>`",
        )
    })?;
    if item.get("nameTemplate").is_some() {
        return Err(fail(
            format!("chart {name}: nameTemplate is not supported"),
            "name the release with releaseName:",
        ));
    }
    let release = text("releaseName").unwrap_or_else(|| name.clone());
    if !is_dns_label(&release) {
        return Err(fail(
            format!("release name {release:?} is not a DNS label, as Helm needs"),
            "set releaseName: to lowercase letters, digits and '-'",
        ));
    }
    let (version, repo) = (text("version"), text("repo"));
    let home = match (&version, &repo) {
        (Some(v), Some(_)) => format!("{home}/{name}-{v}"),
        _ => home.to_string(),
    };
    let dir = format!("{home}/{name}");
    if snapshot.get(&format!("{dir}/Chart.yaml")).is_none() {
        return Err(match &repo {
            Some(repo) => fail(
                format!(
                    "chart {name} of {repo} is not in the repository at {dir}; lockstep does not fetch the charts of a kustomization"
                ),
                &format!(
                    "vendor it (a review then sees what is applied): `helm pull --untar --untardir {home} --repo {repo} {name}{}`, or declare it under charts: in lockstep.yaml, where lockstep.lock pins it by digest",
                    version
                        .as_deref()
                        .map(|v| format!(" --version {v}"))
                        .unwrap_or_default()
                ),
            ),
            None => fail(
                format!("chart {name}: {dir}/Chart.yaml does not exist"),
                "put the chart at <chartHome>/<name> beside the kustomization (chartHome: charts unless helmGlobals says otherwise)",
            ),
        });
    }
    let flag = |key: &str| item.get(key).and_then(Value::as_bool).unwrap_or(false);
    let chart = Chart {
        chart: dir.clone(),
        namespace: None,
        values: None,
        environments: None,
        repo: None,
        version: None,
        skip_crds: !flag("includeCRDs"),
        skip_hooks: flag("skipHooks"),
    };
    let namespace = text("namespace").unwrap_or_else(|| environment.namespace.clone());
    let mut environment = environment.clone();
    if let Some(v) = text("kubeVersion") {
        environment.kube_version = Some(v);
    }
    for api in strings(item.get("apiVersions")) {
        environment.api_versions.push(api);
    }
    let values = values(snapshot, path, &dir, item, stand_ins)?;
    Ok(Entry {
        kustomization: path.to_string(),
        release,
        chart,
        namespace,
        environment,
        values,
    })
}

/// An entry's values, merged as kustomize and Helm merge them.
fn values(
    snapshot: &Snapshot,
    path: &str,
    chart_dir: &str,
    item: &Value,
    stand_ins: &mut StandIns,
) -> Result<Values, Diagnostic> {
    let dir = dir_of(path);
    let named = |file: &str| {
        join(dir, file).ok_or_else(|| {
            Diagnostic::new(format!("values file {file:?} is outside the project"))
                .in_file(path.to_string())
                .with_help("name a file of the repository, relative to the kustomization")
        })
    };
    let mut merged = match item.get("valuesFile").and_then(Value::as_str) {
        Some(file) => values_file(snapshot, path, &named(file)?, stand_ins)?,
        // The chart's own values: Helm reads them anyway.
        None => Value::Mapping(Mapping::new()),
    };
    let inline = item
        .get("valuesInline")
        .cloned()
        .unwrap_or(Value::Mapping(Mapping::new()));
    if !inline.is_mapping() {
        return Err(Diagnostic::new(format!(
            "valuesInline of chart {chart_dir} is not a mapping"
        ))
        .in_file(path.to_string())
        .with_help("write the values as `key: value` lines"));
    }
    let how = item
        .get("valuesMerge")
        .and_then(Value::as_str)
        .unwrap_or("override");
    if inline.as_mapping().is_some_and(|m| !m.is_empty()) {
        merged = match how {
            "override" => merge(merged, inline),
            "merge" => merge(inline, merged),
            "replace" => inline,
            other => {
                return Err(Diagnostic::new(format!(
                    "valuesMerge {other:?} is not override, merge or replace"
                ))
                .in_file(path.to_string())
                .with_help("valuesMerge: override (the default) lets valuesInline win; merge lets the values file win; replace uses valuesInline alone"));
            }
        };
    }
    for file in strings(item.get("additionalValuesFiles")) {
        let more = values_file(snapshot, path, &named(&file)?, stand_ins)?;
        merged = merge(merged, more);
    }
    let text = yaml_serde::to_string(&merged).unwrap_or_default();
    Values::parse(path, text)
}

/// A values file as a mapping; a SOPS-encrypted one as its sealed stand-in (which the build's
/// sealed references then resolve against).
fn values_file(
    snapshot: &Snapshot,
    path: &str,
    file: &str,
    stand_ins: &mut StandIns,
) -> Result<Value, Diagnostic> {
    let content = snapshot.get(file).ok_or_else(|| {
        Diagnostic::new(format!("values file {file} does not exist"))
            .in_file(path.to_string())
            .with_help("name a file of the repository, relative to the kustomization")
    })?;
    let format = lockstep_sops::store::Format::from_path(std::path::Path::new(file));
    let value = if lockstep_sops::is_encrypted(content, format) {
        let structure = SecretsFile::parse(file, content)?;
        let sealed = super::sealed_document(file, content)?;
        let text = yaml_serde::to_string(&sealed).unwrap_or_default();
        stand_ins.insert(file.to_string(), (text, structure));
        sealed
    } else if content.iter().all(u8::is_ascii_whitespace) {
        Value::Mapping(Mapping::new())
    } else {
        yaml_serde::from_slice(content).map_err(|e| {
            let text = String::from_utf8_lossy(content);
            crate::project::yaml_diagnostic(file, &text, &e)
                .with_help("a values file holds one YAML mapping")
        })?
    };
    if !value.is_mapping() {
        return Err(Diagnostic::new("the values are not a mapping")
            .in_file(file.to_string())
            .with_help("write the values as `key: value` lines, as in a chart's values.yaml"));
    }
    Ok(value)
}

/// `over` merged onto `base` as Helm merges values files: mappings key by key, anything else
/// replaced, a `null` removing the key.
fn merge(base: Value, over: Value) -> Value {
    match (base, over) {
        (Value::Mapping(mut base), Value::Mapping(over)) => {
            for (key, value) in over {
                if value.is_null() {
                    base.remove(&key);
                    continue;
                }
                let merged = match base.remove(&key) {
                    Some(old) => merge(old, value),
                    None => value,
                };
                base.insert(key, merged);
            }
            Value::Mapping(base)
        }
        (_, over) => over,
    }
}

/// The releases rendered, and what the scratch copy holds instead of the kustomizations naming
/// them: each kustomization without its `helmCharts` and with the releases' output as resources.
#[derive(Default)]
pub(crate) struct Inflated {
    /// The rendered releases (their reruns compare against the objects Helm printed).
    pub releases: Vec<chart::Output>,
    /// Files of the scratch copy, by project path: rewritten kustomizations and chart outputs.
    pub files: BTreeMap<String, String>,
}

/// Renders every entry with Helm (its sealed values on a pipe) and writes its objects, marked
/// with their release, as a resource of its kustomization.
pub(crate) fn inflate(
    helm: &Helm,
    snapshot: &Snapshot,
    reached: &[(String, Value)],
    entries: Vec<Entry>,
    max_output: usize,
) -> Result<Inflated, Diagnostic> {
    let mut files = BTreeMap::new();
    let mut added: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut releases = Vec::new();
    let mut left = max_output;
    for entry in &entries {
        let job = Release {
            name: &entry.release,
            chart: &entry.chart,
            namespace: &entry.namespace,
            archive: None,
        };
        let text = chart::template(
            helm,
            snapshot,
            &job,
            &entry.environment,
            &entry.values,
            left,
        )?;
        left = left.saturating_sub(text.len());
        let (reviewed, marked) = objects_of(entry, &text)?;
        let dir = dir_of(&entry.kustomization);
        let name = format!(".lockstep-chart-{}.yaml", entry.release);
        files.insert(
            join(dir, &name).unwrap_or_else(|| name.clone()),
            marked.join("---\n"),
        );
        added
            .entry(entry.kustomization.as_str())
            .or_default()
            .push(name);
        let objects = reviewed
            .iter()
            .filter_map(|m| m.id.as_ref())
            .map(|id| chart::object_key(&id.kind, &id.name))
            .collect();
        releases.push(chart::Output {
            release: entry.release.clone(),
            chart_dir: entry.chart.label(),
            namespace: entry.namespace.clone(),
            text,
            passed: entry.values.passed.clone(),
            rerun: Some(Rerun {
                release: entry.release.clone(),
                chart: entry.chart.clone(),
                namespace: entry.namespace.clone(),
                environment: entry.environment.clone(),
                values: entry.values.text.clone(),
                helm: helm.clone(),
                archive: None,
                sealed: !entry.values.passed.is_empty(),
                objects,
                reviewed: Some(reviewed),
            }),
        });
    }
    for (path, doc) in reached {
        let Some(names) = added.remove(path.as_str()) else {
            continue;
        };
        files.insert(path.clone(), without_charts(doc, names));
    }
    Ok(Inflated { releases, files })
}

/// A release's objects: as Helm printed them (placeholders revealed, for the apply-time
/// comparison), and marked with the release for the build.
fn objects_of(entry: &Entry, text: &str) -> Result<(Vec<Manifest>, Vec<String>), Diagnostic> {
    let chart_dir = entry.chart.label();
    let mut reviewed = Vec::new();
    let mut marked = Vec::new();
    for doc in manifest::split_documents(text) {
        if chart::holds_nothing(doc.text) {
            continue;
        }
        let source = chart::source_of(doc.text, &chart_dir);
        let (mut value, id) = crate::parse_document(doc.text).map_err(|p| {
            Diagnostic::new(format!("chart {}: {}", entry.release, p.message))
                .in_file(source.clone())
                .with_help("the chart printed YAML that does not parse; look at the template named")
        })?;
        chart::reveal_encoded(&mut value);
        let refs = {
            let mut refs: Vec<_> = manifest::find_refs(&value, &id)
                .into_iter()
                .filter_map(|f| f.reference)
                .collect();
            refs.sort();
            refs.dedup();
            refs
        };
        let mut with_mark = value.clone();
        mark(&mut with_mark, &entry.release);
        marked.push(yaml_serde::to_string(&with_mark).unwrap_or_default());
        reviewed.push(Manifest {
            source,
            id: Some(id),
            body: Body::Object(value),
            refs,
            release: Some(entry.release.clone()),
        });
    }
    Ok((reviewed, marked))
}

/// Adds the release annotation.
fn mark(object: &mut Value, release: &str) {
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_mapping_mut) else {
        return;
    };
    let annotations = meta
        .entry(Value::from("annotations"))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if !annotations.is_mapping() {
        *annotations = Value::Mapping(Mapping::new());
    }
    if let Some(a) = annotations.as_mapping_mut() {
        a.insert(Value::from(RELEASE_MARK), Value::from(release));
    }
}

/// Removes the release annotation from a built object, returning the release it named.
pub(crate) fn take_mark(object: &mut Value) -> Option<String> {
    let meta = object.get_mut("metadata")?.as_mapping_mut()?;
    let annotations = meta.get_mut("annotations")?.as_mapping_mut()?;
    let release = annotations.remove(RELEASE_MARK)?;
    if annotations.is_empty() {
        meta.remove("annotations");
    }
    release.as_str().map(str::to_string)
}

/// A kustomization without `helmCharts`/`helmGlobals`, naming `names` (files beside it) as
/// resources.
fn without_charts(doc: &Value, names: Vec<String>) -> String {
    let mut doc = doc.clone();
    if let Some(m) = doc.as_mapping_mut() {
        m.remove("helmCharts");
        m.remove("helmGlobals");
        let resources = m
            .entry(Value::from("resources"))
            .or_insert_with(|| Value::Sequence(Vec::new()));
        if !resources.is_sequence() {
            *resources = Value::Sequence(Vec::new());
        }
        if let Some(list) = resources.as_sequence_mut() {
            list.extend(names.into_iter().map(Value::from));
        }
    }
    yaml_serde::to_string(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        yaml_serde::from_str(text).expect("YAML")
    }

    #[test]
    fn values_merge_as_helm_merges_values_files() {
        let merged = merge(
            yaml("image: {repository: web, tag: '1'}\nreplicas: 1\nlist: [a, b]\ngone: x\n"),
            yaml("image: {tag: '2'}\nlist: [c]\ngone: null\nnew: true\n"),
        );
        assert_eq!(
            merged,
            yaml("image: {repository: web, tag: '2'}\nreplicas: 1\nlist: [c]\nnew: true\n")
        );
    }

    #[test]
    fn the_release_mark_is_taken_off_without_leaving_an_empty_mapping() {
        let mut object = yaml("kind: ConfigMap\nmetadata: {name: x}\n");
        mark(&mut object, "web");
        assert_eq!(
            object["metadata"]["annotations"][RELEASE_MARK].as_str(),
            Some("web")
        );
        assert_eq!(take_mark(&mut object).as_deref(), Some("web"));
        assert_eq!(object, yaml("kind: ConfigMap\nmetadata: {name: x}\n"));
        let mut other = yaml("kind: ConfigMap\nmetadata: {name: x, annotations: {a: b}}\n");
        mark(&mut other, "web");
        take_mark(&mut other);
        assert_eq!(other["metadata"]["annotations"]["a"].as_str(), Some("b"));
    }

    #[test]
    fn a_kustomization_names_the_rendered_charts_instead() {
        let doc = yaml("namePrefix: p-\nhelmCharts:\n  - name: web\nhelmGlobals: {chartHome: c}\n");
        let out = yaml(&without_charts(
            &doc,
            vec![".lockstep-chart-web.yaml".into()],
        ));
        assert_eq!(
            out,
            yaml("namePrefix: p-\nresources: [.lockstep-chart-web.yaml]\n")
        );
        let doc = yaml("resources: [a.yaml]\nhelmCharts: [{name: web}]\n");
        let out = yaml(&without_charts(&doc, vec!["b.yaml".into()]));
        assert_eq!(out, yaml("resources: [a.yaml, b.yaml]\n"));
    }
}
