//! `lockstep.yaml`: the project name and its environments.
//!
//! ```yaml
//! project: shop
//! environments:
//!   dev:
//!     namespace: shop-dev
//!     createNamespace: true   # add the Namespace unless a template defines it
//!   prod:
//!     namespace: shop
//!     kubeVersion: v1.34.4    # what Helm charts see as .Capabilities (default: Helm's own)
//!     apiVersions: [monitoring.coreos.com/v1]
//! charts:
//!   metrics:                  # the release name
//!     chart: charts/metrics-server
//!     namespace: kube-system  # default: the environment's namespace
//!     values: charts/metrics.values.yaml   # a template, like those under templates/
//!     environments: [prod]    # default: every environment
//!   dns:
//!     repo: https://charts.example.org   # a chart repository (its index.yaml)…
//!     chart: external-dns                 # …and the chart's name in it
//!     version: 1.22.0                     # required for repository and OCI charts
//!   web:
//!     chart: oci://registry.example.org/charts/web   # an OCI registry
//!     version: 2.0.1
//! ```
//!
//! Repository and OCI charts are pinned by digest in `lockstep.lock` (see [`crate::lock`]).
//!
//! Unknown keys are errors (a typo such as `namepsace` must not silently fall back to a default).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use super::diagnostic::{Diagnostic, line_range};

/// The project file's name at the root of a project.
pub const PROJECT_FILE: &str = "lockstep.yaml";

/// A parsed and validated `lockstep.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Project {
    /// Project name (a DNS label); labels every applied object and names the inventory.
    pub project: String,
    /// Environments by name, in file order of their names (sorted).
    pub environments: BTreeMap<String, Environment>,
    /// Helm charts by release name.
    #[serde(default)]
    pub charts: BTreeMap<String, Chart>,
}

/// Where chart directories and their values templates live in a project.
pub const CHARTS_DIR: &str = "charts/";

/// One Helm chart release of a project.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chart {
    /// The chart directory in the project, under `charts/` (e.g. `charts/metrics-server`); with
    /// `repo`, the chart's name in that repository; or an OCI reference (`oci://host/path/name`).
    pub chart: String,
    /// The namespace of the release (default: the environment's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// A values template under `charts/` (rendered like `templates/`: it sees `values`, `env`,
    /// `project` and `secrets`); its output is the chart's values.
    #[serde(default)]
    pub values: Option<String>,
    /// The environments that get this release (default: every one).
    #[serde(default)]
    pub environments: Option<Vec<String>>,
    /// A chart repository URL (where its `index.yaml` is).
    #[serde(default)]
    pub repo: Option<String>,
    /// The exact chart version of a repository or OCI chart.
    #[serde(default)]
    pub version: Option<String>,
    /// Leaves out the chart's `crds/` (a kustomization's chart without `includeCRDs: true`).
    #[serde(skip)]
    pub skip_crds: bool,
    /// Leaves out the chart's hooks (a kustomization's chart with `skipHooks: true`).
    #[serde(skip)]
    pub skip_hooks: bool,
}

/// Where a chart comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    /// A directory of the project.
    Dir(&'a str),
    /// A chart repository: its URL (no trailing `/`), the chart's name, the version.
    Repo {
        /// The repository URL.
        url: &'a str,
        /// The chart's name in its index.
        name: &'a str,
        /// The chart version.
        version: &'a str,
    },
    /// An OCI registry: the reference without tag (`oci://host/path/name`), the version (tag).
    Oci {
        /// The reference.
        reference: &'a str,
        /// The chart version.
        version: &'a str,
    },
}

/// The scheme of OCI chart references.
pub const OCI_SCHEME: &str = "oci://";

impl Chart {
    /// Where the chart comes from (for a checked project; a missing version reads as empty).
    pub fn source(&self) -> Source<'_> {
        let version = self.version.as_deref().unwrap_or_default();
        match &self.repo {
            Some(url) => Source::Repo {
                url: url.trim_end_matches('/'),
                name: &self.chart,
                version,
            },
            None if self.chart.starts_with(OCI_SCHEME) => Source::Oci {
                reference: &self.chart,
                version,
            },
            None => Source::Dir(self.chart.trim_end_matches('/')),
        }
    }

    /// Whether the chart is fetched (from a repository or registry) rather than in the project.
    pub fn is_remote(&self) -> bool {
        !matches!(self.source(), Source::Dir(_))
    }

    /// How the chart's files are named in sources and messages: its directory, or
    /// `REPO/NAME@VERSION` / `oci://…/NAME@VERSION`.
    pub fn label(&self) -> String {
        match self.source() {
            Source::Dir(dir) => dir.to_string(),
            Source::Repo { url, name, version } => format!("{url}/{name}@{version}"),
            Source::Oci { reference, version } => format!("{reference}@{version}"),
        }
    }

    /// Whether environment `env` gets this release.
    pub fn applies_to(&self, env: &str) -> bool {
        self.environments
            .as_ref()
            .is_none_or(|list| list.iter().any(|e| e == env))
    }
}

/// One environment of a project.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// Namespace given to namespaced objects that do not name one.
    pub namespace: String,
    /// Adds the namespace to the set when no template defines it (Helm's `--create-namespace`,
    /// Argo CD's `CreateNamespace=true`). Like any Namespace, it is only pruned with
    /// `--prune-protected`.
    #[serde(default, rename = "createNamespace")]
    pub create_namespace: bool,
    /// The Kubernetes version charts see as `.Capabilities.KubeVersion` (`helm template
    /// --kube-version`), so an offline render equals what the cluster would get.
    #[serde(default, rename = "kubeVersion")]
    pub kube_version: Option<String>,
    /// Extra API versions charts see in `.Capabilities.APIVersions` (`--api-versions`).
    #[serde(default, rename = "apiVersions")]
    pub api_versions: Vec<String>,
    /// A Kustomize overlay of the project (a directory holding `kustomization.yaml`), built by
    /// `kustomize build`; its objects join the environment's.
    #[serde(default)]
    pub kustomize: Option<String>,
    /// Environments of the project that must be applied and healthy in the cluster before this
    /// one is applied (`lockstep apply` waits for them within its timeout, then refuses).
    #[serde(default, rename = "dependsOn")]
    pub depends_on: Vec<String>,
}

/// An environment another one depends on, as apply finds it in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needed {
    /// Its name.
    pub environment: String,
    /// Its namespace (where its inventory is).
    pub namespace: String,
}

/// What charts are rendered for: the Kubernetes version and extra API versions Helm's
/// `.Capabilities` report (default: Helm's own). Apply compares it with the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    /// `kubeVersion` (e.g. `v1.34.4`).
    pub kube_version: Option<String>,
    /// `apiVersions` (`group/version` or `group/version/Kind`).
    pub api_versions: Vec<String>,
}

impl Environment {
    /// The environment's cluster profile.
    pub fn profile(&self) -> Profile {
        Profile {
            kube_version: self.kube_version.clone(),
            api_versions: self.api_versions.clone(),
        }
    }
}

/// Whether `path` names a directory inside the project: relative, no `..`, no hidden segment.
fn is_project_dir(path: &str) -> bool {
    let path = path.trim_end_matches('/');
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|seg| !seg.is_empty() && seg != ".." && !seg.starts_with('.'))
        || path == "."
}

/// Whether `s` is a DNS-1123 label: 1–63 of `a-z`, `0-9`, `-`, starting and ending alphanumeric.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A YAML error's message (without yaml_serde's " at line L column C", which a snippet shows) and the
/// byte range from where it points to the end of that line.
pub fn yaml_error_at(text: &str, err: &yaml_serde::Error) -> (String, std::ops::Range<usize>) {
    let mut message = err.to_string();
    if let Some(i) = message.find(" at line ") {
        message.truncate(i);
    }
    let range = match err.location() {
        Some(loc) => {
            let line = line_range(text, loc.line());
            let start = (line.start + loc.column().saturating_sub(1)).min(line.end);
            start..line.end
        }
        None => 0..0,
    };
    (message, range)
}

/// A YAML syntax or shape error as a diagnostic pointing at its line.
pub fn yaml_diagnostic(file: &str, text: &str, err: &yaml_serde::Error) -> Diagnostic {
    let (message, range) = yaml_error_at(text, err);
    let d = Diagnostic::new(message).in_file(file);
    match err.location() {
        Some(loc) => d
            .at_line(loc.line())
            .with_snippet(Arc::from(text), range, "here"),
        None => d,
    }
}

impl Project {
    /// Parses and validates `lockstep.yaml`.
    pub fn parse(text: &str) -> Result<Project, Diagnostic> {
        let project: Project =
            yaml_serde::from_str(text).map_err(|e| yaml_diagnostic(PROJECT_FILE, text, &e))?;
        let at = |needle: &str, message: String, help: &str| {
            let d = Diagnostic::new(message)
                .in_file(PROJECT_FILE)
                .with_help(help.to_string());
            match find_line(text, needle) {
                Some(range) => d.with_snippet(Arc::from(text), range, "here"),
                None => d,
            }
        };
        if !is_dns_label(&project.project) {
            return Err(at(
                "project:",
                format!("project name {:?} is not a DNS label", project.project),
                "use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit",
            ));
        }
        if project.environments.is_empty() {
            return Err(at(
                "environments:",
                "no environments are defined".into(),
                "add at least one, e.g. `environments: {dev: {namespace: myapp-dev}}`",
            ));
        }
        for (name, env) in &project.environments {
            if !is_dns_label(name) {
                return Err(at(
                    &format!("{name}:"),
                    format!("environment name {name:?} is not a DNS label"),
                    "use 1-63 lowercase letters, digits and '-'",
                ));
            }
            if let Some(dir) = &env.kustomize
                && !is_project_dir(dir)
            {
                return Err(at(
                    &format!("kustomize: {dir}"),
                    format!(
                        "environment {name}: kustomize {dir:?} is not a directory inside the project"
                    ),
                    "name the overlay's directory relative to lockstep.yaml (e.g. overlays/prod), without .. or a leading /",
                ));
            }
            if !is_dns_label(&env.namespace) {
                return Err(at(
                    &format!("namespace: {}", env.namespace),
                    format!(
                        "environment {name}: namespace {:?} is not a valid namespace name",
                        env.namespace
                    ),
                    "use 1-63 lowercase letters, digits and '-'",
                ));
            }
        }
        for (release, chart) in &project.charts {
            check_chart(&project, release, chart).map_err(|(needle, message, help)| {
                at(&needle, format!("chart {release}: {message}"), &help)
            })?;
        }
        check_dependencies(&project)
            .map_err(|(needle, message, help)| at(&needle, message, &help))?;
        Ok(project)
    }

    /// The environments `name` depends on, with their namespaces.
    pub fn needed(&self, name: &str) -> Vec<Needed> {
        self.environments
            .get(name)
            .map(|e| {
                e.depends_on
                    .iter()
                    .filter_map(|d| {
                        self.environments.get(d).map(|dep| Needed {
                            environment: d.clone(),
                            namespace: dep.namespace.clone(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The environment called `name`, or an error listing the defined ones.
    pub fn environment(&self, name: &str) -> Result<&Environment, Diagnostic> {
        self.environments.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.environments.keys().map(String::as_str).collect();
            Diagnostic::new(format!("environment {name:?} is not defined"))
                .in_file(PROJECT_FILE)
                .with_help(format!(
                    "defined environments: {}; add it under `environments:`",
                    known.join(", ")
                ))
        })
    }
}

/// Checks `dependsOn`: defined environments only, and no cycle. On error: the text to point at,
/// the message and what to do.
fn check_dependencies(project: &Project) -> Result<(), (String, String, String)> {
    for (name, env) in &project.environments {
        for dep in &env.depends_on {
            if !project.environments.contains_key(dep) {
                return Err((
                    "dependsOn".into(),
                    format!(
                        "environment {name}: dependsOn names {dep:?}, which is not an environment of this project"
                    ),
                    "name environments defined under `environments:`".into(),
                ));
            }
        }
        // Depth-first from `name`: a path back to it is a cycle.
        let mut path = vec![name.clone()];
        if let Some(cycle) = cycle_from(project, name, &mut path) {
            return Err((
                "dependsOn".into(),
                format!(
                    "environments depend on each other in a cycle: {}",
                    cycle.join(" → ")
                ),
                "remove one of these dependsOn entries".into(),
            ));
        }
    }
    Ok(())
}

fn cycle_from(project: &Project, start: &str, path: &mut Vec<String>) -> Option<Vec<String>> {
    let at = path.last()?.clone();
    for dep in &project.environments.get(&at)?.depends_on {
        if dep == start {
            let mut cycle = path.clone();
            cycle.push(dep.clone());
            return Some(cycle);
        }
        if path.contains(dep) || path.len() > project.environments.len() {
            continue;
        }
        path.push(dep.clone());
        if let Some(c) = cycle_from(project, start, path) {
            return Some(c);
        }
        path.pop();
    }
    None
}

/// Checks one chart entry: a release name Helm accepts, a chart directory and values template
/// under `charts/` inside the project, known environments. On error: the text to point at, the
/// message and what to do.
fn check_chart(
    project: &Project,
    release: &str,
    chart: &Chart,
) -> Result<(), (String, String, String)> {
    if !is_dns_label(release) || release.len() > 53 {
        return Err((
            format!("{release}:"),
            "the release name is not a DNS label of at most 53 characters (Helm's rule)".into(),
            "use lowercase letters, digits and '-'".into(),
        ));
    }
    check_remote(release, chart)?;
    let inside = |path: &str| {
        path.starts_with(CHARTS_DIR)
            && path.len() > CHARTS_DIR.len()
            && path
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.starts_with('.'))
    };
    if !chart.is_remote() && !inside(chart.chart.trim_end_matches('/')) {
        return Err((
            format!("chart: {}", chart.chart),
            format!(
                "chart {:?} is not a directory under {CHARTS_DIR}",
                chart.chart
            ),
            format!(
                "put the chart's directory under {CHARTS_DIR} (e.g. {CHARTS_DIR}{release}), or name a chart repository in repo: or an {OCI_SCHEME} reference"
            ),
        ));
    }
    if let Some(values) = &chart.values
        && !inside(values)
    {
        return Err((
            format!("values: {values}"),
            format!("values {values:?} is not a file under {CHARTS_DIR}"),
            format!(
                "put the values template under {CHARTS_DIR} (e.g. {CHARTS_DIR}{release}.values.yaml)"
            ),
        ));
    }
    if let Some(ns) = &chart.namespace
        && !is_dns_label(ns)
    {
        return Err((
            format!("namespace: {ns}"),
            format!("namespace {ns:?} is not a valid namespace name"),
            "use 1-63 lowercase letters, digits and '-'".into(),
        ));
    }
    for env in chart.environments.iter().flatten() {
        if !project.environments.contains_key(env) {
            return Err((
                env.to_string(),
                format!("environment {env:?} is not defined"),
                "name environments defined under environments:".into(),
            ));
        }
    }
    Ok(())
}

/// Checks the source fields of a chart: a repository URL and chart name, an OCI reference, each
/// with an exact version; or a directory without one.
fn check_remote(release: &str, chart: &Chart) -> Result<(), (String, String, String)> {
    let web = |url: &str| {
        (url.starts_with("https://") || url.starts_with("http://"))
            && !url.contains('@')
            && !url.contains(char::is_whitespace)
    };
    if let Some(repo) = &chart.repo {
        if !web(repo) {
            return Err((
                format!("repo: {repo}"),
                format!("repo {repo:?} is not an https:// or http:// URL without credentials"),
                "name the chart repository's URL (where its index.yaml is); credentials go in Helm's repositories.yaml or the Sync's chart Secret, never in the URL".into(),
            ));
        }
        if chart.chart.is_empty() || chart.chart.contains(['/', ':']) {
            return Err((
                format!("chart: {}", chart.chart),
                format!(
                    "with repo:, chart {:?} must be the chart's name in the repository",
                    chart.chart
                ),
                format!("e.g. `repo: {repo}` and `chart: {release}`"),
            ));
        }
    } else if let Some(rest) = chart.chart.strip_prefix(OCI_SCHEME) {
        let valid = rest.split_once('/').is_some_and(|(host, path)| {
            !host.is_empty()
                && !host.contains('@')
                && !path.is_empty()
                && path.split('/').all(|seg| {
                    !seg.is_empty()
                        && seg.bytes().all(|b| {
                            b.is_ascii_lowercase()
                                || b.is_ascii_digit()
                                || matches!(b, b'.' | b'_' | b'-')
                        })
                })
        });
        if !valid {
            return Err((
                format!("chart: {}", chart.chart),
                format!(
                    "{:?} is not an OCI chart reference without tag or digest",
                    chart.chart
                ),
                "write oci://HOST[:PORT]/PATH/NAME (lowercase path) and the tag in version:".into(),
            ));
        }
    } else {
        if chart.version.is_some() {
            return Err((
                "version:".into(),
                "version: is for repository and OCI charts; a chart directory's version is in its Chart.yaml".into(),
                "remove version:, or name a repository in repo:".into(),
            ));
        }
        return Ok(());
    }
    match chart.version.as_deref() {
        None | Some("") => Err((
            format!("{release}:"),
            "a repository or OCI chart needs its exact version".into(),
            "add `version: X.Y.Z` (lockstep.lock then pins its digest: run `lockstep charts update`)".into(),
        )),
        Some(v) if !is_exact_version(v) => Err((
            format!("version: {v}"),
            format!("version {v:?} is not an exact version"),
            "pin one version (e.g. 1.2.3): the lock file records its digest, and an update is a reviewable change".into(),
        )),
        Some(_) => Ok(()),
    }
}

/// Whether `v` is one exact (semver-shaped) version: `1.2.3`, `v1.2.3`, `1.2.3-rc.1+build`.
fn is_exact_version(v: &str) -> bool {
    let v = v.strip_prefix('v').unwrap_or(v);
    let core = v.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
}

/// The range of the first line containing `needle` (trimmed), for pointing at a key.
fn find_line(text: &str, needle: &str) -> Option<std::ops::Range<usize>> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if let Some(i) = line.find(needle) {
            return Some(offset + i..offset + line.trim_end().len());
        }
        offset += line.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_project_parses() {
        let p = Project::parse("project: shop\nenvironments:\n  dev: {namespace: shop-dev}\n  prod:\n    namespace: shop\n")
            .expect("valid");
        assert_eq!(p.project, "shop");
        assert_eq!(p.environment("prod").expect("prod").namespace, "shop");
        let err = p.environment("qa").expect_err("undefined");
        assert!(
            err.to_string().contains("dev, prod"),
            "lists known envs: {err}"
        );
    }

    #[test]
    fn a_typo_in_a_key_is_an_error_on_its_line() {
        let text = "project: shop\nenvironments:\n  dev:\n    namepsace: shop-dev\n";
        let err = Project::parse(text).expect_err("unknown field");
        assert_eq!(err.line, Some(4), "{err:?}");
        assert!(err.message.contains("namepsace"), "{}", err.message);
    }

    #[test]
    fn names_must_be_dns_labels() {
        let err = Project::parse("project: My_Shop\nenvironments: {dev: {namespace: a}}\n")
            .expect_err("bad name");
        assert!(err.message.contains("My_Shop"));
        assert_eq!(err.line, Some(1));
        let err = Project::parse("project: shop\nenvironments:\n  dev:\n    namespace: Shop\n")
            .expect_err("bad namespace");
        assert_eq!(err.line, Some(4), "{err:?}");
        assert!(Project::parse("project: shop\nenvironments: {}\n").is_err());
    }
}
