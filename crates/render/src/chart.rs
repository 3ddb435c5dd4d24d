//! Helm charts as a render source: every release of `lockstep.yaml`'s `charts:` for the
//! environment is rendered by the real `helm template`. Its values come from a values template in
//! which secrets are sealed placeholders, so Helm never receives a value; the values reach Helm on
//! a pipe and the chart (which holds no secret) is copied into a private scratch directory that is
//! removed afterwards. Helm stores nothing: no release Secret, no values file, no cache of ours.
//!
//! In the chart's output a placeholder may end up only in a Secret's `data`/`stringData`, as in
//! templates. A chart that base64-encodes a value (`b64enc`) hides its placeholder: such `data`
//! entries are decoded, and the placeholder is marked for base64 at apply time (or, inside a
//! larger text, the entry moves to `stringData`, which apply encodes). A sealed value passed in
//! that appears nowhere in the output (the chart hashed or changed it) is an error: it would
//! otherwise be a silently wrong credential.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use yaml_serde::{Mapping, Value};
use zeroize::Zeroizing;

use super::diagnostic::Diagnostic;
use super::manifest::Manifest;
use super::program;
use super::project::{Chart, Environment, Source};
use super::sealed::{self, SealedRef, Transform};
use lockstep_core::snapshot::Snapshot;

/// The environment variable naming the `helm` program (default: `helm` on `PATH`).
pub const HELM_ENV: &str = "LOCKSTEP_HELM";

/// How long one `helm template` may take.
pub const HELM_TIMEOUT: Duration = Duration::from_secs(60);

/// Data one `helm template` process may use (`RLIMIT_DATA`), in bytes.
pub const HELM_MEMORY: u64 = 1024 * 1024 * 1024;

/// How charts are rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charts {
    /// By running Helm.
    Helm(Helm),
    /// Not at all: only their values templates are rendered (the controller's render probe
    /// checks those; the chart itself is rendered by Helm in its own bounded process).
    ValuesOnly,
}

impl Default for Charts {
    fn default() -> Charts {
        Charts::Helm(Helm::from_env())
    }
}

/// The `helm` program and its bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Helm {
    /// The program (`$LOCKSTEP_HELM`, else `helm` on `PATH`).
    pub program: PathBuf,
    /// Wall-clock time before it is killed.
    pub timeout: Duration,
    /// Its `RLIMIT_DATA`, in bytes.
    pub memory: u64,
}

impl Helm {
    /// `$LOCKSTEP_HELM` or `helm`, with the default bounds.
    pub fn from_env() -> Helm {
        let program = std::env::var_os(HELM_ENV)
            .filter(|p| !p.is_empty())
            .map_or_else(|| PathBuf::from("helm"), PathBuf::from);
        Helm {
            program,
            timeout: HELM_TIMEOUT,
            memory: HELM_MEMORY,
        }
    }
}

/// One release's values, rendered from its values template.
pub(crate) struct Values {
    /// The values as YAML text (sealed placeholders for secrets).
    pub text: String,
    /// Each sealed reference passed in, with the values key it sits at (`db.password`).
    pub passed: Vec<(SealedRef, String)>,
}

impl Values {
    /// Parses a values template's output; `file` names it in messages.
    pub(crate) fn parse(file: &str, text: String) -> Result<Values, Diagnostic> {
        let value: Value = if text.trim().is_empty() {
            Value::Mapping(Mapping::new())
        } else {
            yaml_serde::from_str(&text).map_err(|e| {
                super::project::yaml_diagnostic(file, &text, &e).with_help(
                    "the values template must produce a YAML mapping: the chart's values",
                )
            })?
        };
        if !matches!(value, Value::Mapping(_)) {
            return Err(Diagnostic::new("the chart's values are not a mapping")
                .in_file(file)
                .with_help("write the values as `key: value` lines, as in a chart's values.yaml"));
        }
        let mut passed = Vec::new();
        strings(&value, &mut Vec::new(), &mut |path, s| {
            for (_, r) in SealedRef::find_all(s) {
                passed.push((r, path.join(".")));
            }
        });
        Ok(Values { text, passed })
    }
}

/// A release that received sealed values, as apply renders it once more with the real ones (on a
/// pipe) to prove the reviewed render faithful.
#[derive(Debug, Clone)]
pub struct Rerun {
    /// The release name.
    pub release: String,
    /// Its chart entry.
    pub chart: Chart,
    /// Its namespace.
    pub namespace: String,
    /// The environment's profile (`kubeVersion`, `apiVersions`).
    pub environment: Environment,
    /// The sealed values Helm rendered.
    pub values: String,
    /// The Helm that rendered them.
    pub helm: Helm,
    /// The chart archive of a repository or OCI chart (checked against the lock).
    pub archive: Option<Arc<[u8]>>,
    /// Whether sealed values were passed in (a difference then fails closed; without, the second
    /// render only proves the chart renders alike each time, and a difference is told).
    pub sealed: bool,
    /// The objects it rendered, as [`object_key`]s (another release of the same chart has its own).
    pub objects: Vec<String>,
    /// For a release of a kustomization, whose objects the build transformed afterwards: the
    /// objects as Helm printed them, which the second render is compared with instead.
    pub reviewed: Option<Vec<Manifest>>,
}

impl Rerun {
    /// The release, for [`run`].
    pub fn release(&self) -> Release<'_> {
        Release {
            name: &self.release,
            chart: &self.chart,
            namespace: &self.namespace,
            archive: self.archive.as_deref(),
        }
    }

    /// What its objects' sources start with: the chart directory, or [`Chart::label`].
    pub fn chart_dir(&self) -> String {
        self.chart.label()
    }
}

/// What `helm template` printed for one release.
pub(crate) struct Output {
    /// The release name.
    pub release: String,
    /// The chart directory in the project.
    pub chart_dir: String,
    /// The release's namespace.
    pub namespace: String,
    /// Helm's standard output: the rendered manifests.
    pub text: String,
    /// The sealed references passed in.
    pub passed: Vec<(SealedRef, String)>,
    /// How to render it again at apply (when sealed values were passed in).
    pub rerun: Option<Rerun>,
}

/// One release to render: its name, its chart and its namespace.
#[derive(Clone, Copy)]
pub struct Release<'a> {
    /// The release name.
    pub name: &'a str,
    /// The chart entry of `lockstep.yaml`.
    pub chart: &'a Chart,
    /// The release's namespace.
    pub namespace: &'a str,
    /// The chart archive, for a repository or OCI chart.
    pub archive: Option<&'a [u8]>,
}

/// What `helm template` reads on standard input.
pub enum Feed<'a> {
    /// The sealed values of a render (Helm's error output is passed on in messages).
    Sealed(&'a str),
    /// Values holding plaintext, for the apply-time check: Helm's output is returned in a wiping
    /// buffer, and its error output (which could quote a value) is never passed on.
    Real(&'a [u8]),
}

/// Renders one release with Helm: the chart's files copied into a private scratch directory, the
/// values on standard input, `.Capabilities` from the environment's profile; at most `max_output`
/// bytes of output.
pub fn run(
    helm: &Helm,
    snapshot: &Snapshot,
    release: &Release<'_>,
    environment: &Environment,
    feed: Feed<'_>,
    max_output: usize,
) -> Result<Zeroizing<Vec<u8>>, Diagnostic> {
    let Release {
        name: release,
        chart,
        namespace,
        archive,
    } = *release;
    let real = matches!(feed, Feed::Real(_));
    let label = chart.label();
    let fail = |message: String| {
        Diagnostic::new(format!("chart {release}: {message}")).in_file(label.clone())
    };
    let scratch = program::Scratch::new("chart")
        .map_err(|e| fail(format!("cannot make a scratch directory: {e}")))?;
    let root = match (chart.source(), archive) {
        (Source::Dir(dir), _) => copy_chart_dir(snapshot, dir, &scratch.0.join("chart"))
            .map_err(|(message, help)| fail(message).with_help(help))?,
        (_, Some(bytes)) => {
            let to = scratch.0.join("chart.tgz");
            std::fs::write(&to, bytes)
                .map_err(|e| fail(format!("cannot write the chart archive for Helm: {e}")))?;
            to
        }
        (_, None) => {
            return Err(fail("the chart archive is not at hand".into())
                .with_help("run `lockstep charts pull` to fetch the locked charts"));
        }
    };
    let home = scratch.0.join("helm");
    let mut cmd = Command::new(&helm.program);
    cmd.arg("template")
        .arg(release)
        .arg(&root)
        .args(["--namespace", namespace, "--values", "-"]);
    if !chart.skip_crds {
        cmd.arg("--include-crds");
    }
    if chart.skip_hooks {
        cmd.arg("--no-hooks");
    }
    if let Some(v) = &environment.kube_version {
        cmd.args(["--kube-version", v]);
    }
    for api in &environment.api_versions {
        cmd.args(["--api-versions", api]);
    }
    // Nothing of the host's Helm setup (repositories, plugins, registry logins) plays a part.
    cmd.env_clear()
        .env("HOME", &home)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    let input: &[u8] = match feed {
        Feed::Sealed(text) => text.as_bytes(),
        Feed::Real(bytes) => bytes,
    };
    let bounds = program::Bounds {
        timeout: helm.timeout,
        memory: helm.memory,
    };
    let program::Ran {
        out,
        too_long,
        err,
        status,
    } = program::run(&mut cmd, input, bounds, max_output, real).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => fail(format!(
            "charts are rendered by the helm program (Helm v3 or v4), and {} was not found",
            helm.program.display()
        ))
        .with_help(format!(
            "install Helm, or set {HELM_ENV} to the helm program"
        )),
        _ => fail(format!("cannot run {}: {e}", helm.program.display())),
    })?;
    let Some(status) = status else {
        return Err(fail(format!(
            "helm template took longer than {}s and was stopped",
            helm.timeout.as_secs()
        ))
        .with_help("look for a runaway loop in the chart's templates"));
    };
    if too_long {
        return Err(fail(format!(
            "the chart's output is larger than the {max_output} bytes left for the render"
        ))
        .with_help(
            "a render is bounded; split the environment, or look for a runaway loop in the chart",
        ));
    }
    if !status.success() {
        if real {
            return Err(fail(format!(
                "helm template failed ({status}) with the real values, though it rendered the sealed ones"
            ))
            .with_help("the chart checks or transforms a secret value (its length, its form) in a way its placeholder passed: Helm's message is not shown, as it could quote the value"));
        }
        let said = String::from_utf8_lossy(&err);
        let said = said.trim();
        return Err(fail(format!(
            "helm template failed ({status}): {}",
            if said.is_empty() { "no message" } else { said }
        ))
        .with_help(if said.contains("requires kubeVersion") {
            "the chart checks the Kubernetes version: set the environment's kubeVersion: in lockstep.yaml (e.g. kubeVersion: v1.34.4) to the cluster's"
        } else {
            "the message above is Helm's; it names the chart file at fault"
        }));
    }
    Ok(out)
}

/// Copies a chart directory of the project into `root` (charts hold no secret); on error, the
/// message and what to do.
fn copy_chart_dir(
    snapshot: &Snapshot,
    dir: &str,
    root: &Path,
) -> Result<PathBuf, (String, String)> {
    let prefix = format!("{dir}/");
    if snapshot.get(&format!("{prefix}Chart.yaml")).is_none() {
        return Err((
            format!("{dir}/Chart.yaml does not exist"),
            "name a chart directory (one holding Chart.yaml) under charts/".into(),
        ));
    }
    let files = snapshot
        .under(&prefix)
        .map(|(path, bytes)| (&path[prefix.len()..], bytes));
    program::write_tree(root, files).map_err(|(path, e)| {
        (
            format!("cannot copy {prefix}{path} for Helm: {e}"),
            "check the space of /dev/shm".into(),
        )
    })?;
    Ok(root.to_path_buf())
}

/// [`run`] with sealed values, as text.
pub(crate) fn template(
    helm: &Helm,
    snapshot: &Snapshot,
    release: &Release<'_>,
    environment: &Environment,
    values: &Values,
    max_output: usize,
) -> Result<String, Diagnostic> {
    let mut out = run(
        helm,
        snapshot,
        release,
        environment,
        Feed::Sealed(&values.text),
        max_output,
    )?;
    // Sealed output: taken out of the wiping buffer, not copied.
    String::from_utf8(std::mem::take(&mut *out)).map_err(|_| {
        Diagnostic::new(format!(
            "chart {}: helm printed output that is not UTF-8",
            release.name
        ))
        .in_file(release.chart.label())
    })
}

/// Whether a document of Helm's output holds only comments and blank lines (a template that
/// rendered to nothing).
pub fn holds_nothing(doc: &str) -> bool {
    doc.lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
}

/// How a release's objects are named in [`Rerun::objects`]: `Kind/name`.
pub fn object_key(kind: &str, name: &str) -> String {
    format!("{kind}/{name}")
}

/// The project file a document of Helm's output came from: its `# Source: <chart>/templates/x`
/// line, with the chart's name replaced by its directory.
pub(crate) fn source_of(doc: &str, chart_dir: &str) -> String {
    let named = doc
        .lines()
        .find_map(|l| l.strip_prefix("# Source: "))
        .map(str::trim);
    match named.and_then(|n| n.split_once('/')) {
        Some((_, rest)) => format!("{chart_dir}/{rest}"),
        None => chart_dir.to_string(),
    }
}

/// In a v1 Secret of a chart's output, the `data` entries whose base64 hides a placeholder (the
/// chart's `b64enc`): one whole placeholder is marked for base64 at apply; a placeholder inside a
/// larger text moves, decoded, to `stringData` (which apply encodes). Returns whether anything
/// changed.
pub(crate) fn reveal_encoded(object: &mut Value) -> bool {
    let escaped = reveal_query_escaped_in(object);
    reveal_base64(object) || escaped
}

/// Puts back placeholders that the chart's `urlquery` or `toJson` escaped, in every string of
/// `object`, marked for that escaping at apply (outside a Secret they are then refused like any
/// placeholder).
fn reveal_query_escaped_in(object: &mut Value) -> bool {
    match object {
        Value::String(s) => {
            let mut changed = false;
            for reveal in [sealed::reveal_query_escaped, sealed::reveal_json_escaped] {
                if let Some(revealed) = reveal(s) {
                    *s = revealed;
                    changed = true;
                }
            }
            changed
        }
        Value::Mapping(m) => {
            let mut changed = false;
            for (_, v) in m.iter_mut() {
                changed |= reveal_query_escaped_in(v);
            }
            changed
        }
        Value::Sequence(items) => {
            let mut changed = false;
            for v in items.iter_mut() {
                changed |= reveal_query_escaped_in(v);
            }
            changed
        }
        Value::Tagged(t) => reveal_query_escaped_in(&mut t.value),
        _ => false,
    }
}

/// The base64 part of [`reveal_encoded`].
fn reveal_base64(object: &mut Value) -> bool {
    let is_secret = object.get("kind").and_then(Value::as_str) == Some("Secret")
        && object.get("apiVersion").and_then(Value::as_str) == Some("v1");
    if !is_secret {
        return false;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    // A text the chart put in stringData with a base64-encoded part that hides a placeholder.
    let mut changed = false;
    if let Some(Value::Mapping(sd)) = object.get_mut("stringData") {
        for (_, v) in sd.iter_mut() {
            if let Value::String(s) = v
                && let Some(revealed) = sealed::reveal_nested_base64(s)
            {
                *s = revealed;
                changed = true;
            }
        }
    }
    let Some(Value::Mapping(data)) = object.get_mut("data") else {
        return changed;
    };
    let mut moved = Vec::new();
    for (key, value) in data.iter_mut() {
        let Some(text) = value.as_str() else { continue };
        let Some(mut decoded) = b64
            .decode(text.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
        else {
            continue;
        };
        for reveal in [
            sealed::reveal_query_escaped,
            sealed::reveal_json_escaped,
            sealed::reveal_nested_base64,
        ] {
            if let Some(revealed) = reveal(&decoded) {
                decoded = revealed;
            }
        }
        if !decoded.contains(sealed::PLACEHOLDER_PREFIX) {
            continue;
        }
        let found = SealedRef::find_all(&decoded);
        match found.as_slice() {
            [(range, r)] if *range == (0..decoded.len()) && r.transform == Transform::Plain => {
                let mut marked = r.clone();
                marked.transform = Transform::Base64;
                *value = Value::String(marked.placeholder());
                changed = true;
            }
            _ => moved.push((key.clone(), decoded)),
        }
    }
    if moved.is_empty() {
        return changed;
    }
    for (key, _) in &moved {
        data.remove(key);
    }
    let string_data = object.as_mapping_mut().map(|m| {
        m.entry(Value::from("stringData"))
            .or_insert_with(|| Value::Mapping(Mapping::new()))
    });
    if let Some(Value::Mapping(sd)) = string_data {
        for (key, text) in moved {
            sd.insert(key, Value::String(text));
        }
    }
    true
}

/// Every sealed reference anywhere in `value`'s strings.
pub(crate) fn refs_in(value: &Value) -> Vec<SealedRef> {
    let mut out = Vec::new();
    strings(value, &mut Vec::new(), &mut |_, s| {
        out.extend(SealedRef::find_all(s).into_iter().map(|(_, r)| r));
    });
    out
}

/// Calls `f` with every string of `value` and its key path.
fn strings(value: &Value, path: &mut Vec<String>, f: &mut dyn FnMut(&[String], &str)) {
    match value {
        Value::String(s) => f(path, s),
        Value::Mapping(m) => {
            for (k, v) in m {
                path.push(k.as_str().map_or_else(|| format!("{k:?}"), str::to_string));
                strings(v, path, f);
                path.pop();
            }
        }
        Value::Sequence(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(i.to_string());
                strings(v, path, f);
                path.pop();
            }
        }
        Value::Tagged(t) => strings(&t.value, path, f),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_placeholders_in_secret_data_are_revealed() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let whole = "<sealed:environments/dev/secrets.yaml#/db/password>";
        let inside = format!("{{\"auth\":\"{whole}\"}}");
        let text = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\ndata:\n  pw: {}\n  cfg: {}\n  plain: aGVsbG8=\n",
            b64.encode(whole),
            b64.encode(&inside)
        );
        let mut v: Value = yaml_serde::from_str(&text).expect("yaml");
        assert!(reveal_encoded(&mut v));
        assert_eq!(
            v["data"]["pw"].as_str(),
            Some("<sealed:environments/dev/secrets.yaml#/db/password|base64>")
        );
        assert_eq!(v["data"]["plain"].as_str(), Some("aGVsbG8="));
        assert!(v["data"].get("cfg").is_none());
        assert_eq!(v["stringData"]["cfg"].as_str(), Some(inside.as_str()));
        // Not a Secret: nothing is decoded.
        let mut cm: Value =
            yaml_serde::from_str(&text.replace("kind: Secret", "kind: ConfigMap")).expect("yaml");
        assert!(!reveal_encoded(&mut cm));
    }

    #[test]
    fn sources_name_the_chart_directory() {
        assert_eq!(
            source_of(
                "# Source: metrics-server/templates/svc.yaml\nkind: Service\n",
                "charts/metrics"
            ),
            "charts/metrics/templates/svc.yaml"
        );
        assert_eq!(
            source_of("# Source: app/charts/db/templates/a.yaml\n", "charts/app"),
            "charts/app/charts/db/templates/a.yaml"
        );
        assert_eq!(source_of("kind: X\n", "charts/app"), "charts/app");
    }

    #[test]
    fn values_record_where_each_sealed_value_was_passed() {
        let v = Values::parse(
            "charts/a.values.yaml",
            "db:\n  password: <sealed:environments/dev/secrets.yaml#/db/pw>\nlist: [x, '<sealed:environments/dev/secrets.yaml#/t>']\n".into(),
        )
        .expect("parses");
        let keys: Vec<&str> = v.passed.iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(keys, ["db.password", "list.1"]);
        assert!(Values::parse("charts/a.values.yaml", "- a\n".into()).is_err());
        assert!(
            Values::parse("charts/a.values.yaml", "".into())
                .expect("empty")
                .passed
                .is_empty()
        );
    }
}
