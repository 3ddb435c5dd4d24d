//! Render: templates + layered values → the manifests of one environment, secrets sealed.
//!
//! Input is a [`Snapshot`] of a project (see the repository layout in the README):
//!
//! ```text
//! lockstep.yaml                        project name, environments and their namespaces
//! values.yaml                          base values
//! environments/<env>/values.yaml       per-environment values
//! environments/<env>/secrets.<ext>     per-environment secrets, SOPS-encrypted (yaml, json, env, ini)
//! templates/**/*.yaml[.j2]             minijinja templates (paths with a `_` segment are helpers)
//! manifests/, environments/<env>/manifests/   plain or whole-file SOPS manifests, included as they are
//! charts/<chart>/, charts/*.values.yaml        Helm chart directories and their values templates
//! ```
//!
//! Render never needs or sees a key: `secrets` in templates exposes the secrets file's key
//! structure, whose leaves print as [`sealed`] placeholders. The result is a sorted list of
//! [`Manifest`]s, deterministic for the same inputs.

pub mod budget;
pub mod chart;
pub mod diagnostic;
pub mod emit;
pub mod helpers;
pub mod kustomize;
pub mod lock;
pub mod manifest;
mod program;
pub mod project;
pub mod sealed;
pub mod values;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{AutoEscape, Environment, UndefinedBehavior, context};
use yaml_serde::{Mapping, Value};

use lockstep_core::Snapshot;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use lockstep_core::objects::ObjectId;
pub use manifest::{Body, Manifest};
use project::Environment as EnvironmentSpec;
pub use project::{PROJECT_FILE, Project};
pub use sealed::{SealedRef, SecretsFile, Transform};

/// Steps one template render may take (minijinja fuel): bounds runaway loops in templates from Git,
/// and with them what a template can build (minijinja charges fuel for list items and string bytes).
/// A template printing 250 Deployments takes about 27,000.
pub const FUEL: u64 = 1_000_000;

/// Deepest nesting of blocks, macros and includes in one render.
pub const RECURSION_LIMIT: usize = 64;

/// What to render.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The environment's name (a key of `environments:` in `lockstep.yaml`).
    pub env: String,
    /// Extra values files (`--values`), as (name for messages, text), applied in order.
    pub values_files: Vec<(String, String)>,
    /// `--set` overrides, applied last, in order.
    pub sets: Vec<Mapping>,
    /// What the templates may use together: output bytes and steps.
    pub limits: budget::Limits,
    /// How the project's Helm charts are rendered.
    pub charts: chart::Charts,
    /// The archives of the repository and OCI charts in `lockstep.lock` (see
    /// `lockstep_engine::charts`, which fetches them).
    pub archives: lock::Archives,
    /// How the environment's Kustomize overlay is built.
    pub kustomize: kustomize::Kustomizer,
}

/// The rendered environment.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// Project name.
    pub project: String,
    /// Environment name.
    pub environment: String,
    /// The environment's default namespace.
    pub namespace: String,
    /// The environment's secrets file, if it has one.
    pub secrets_file: Option<String>,
    /// Every object, in apply order.
    pub manifests: Vec<Manifest>,
    /// Chart releases that received sealed values: apply renders each once more with the real
    /// values and must get the same objects.
    pub reruns: Vec<chart::Rerun>,
    /// The environment's cluster profile, when it has charts (apply compares it with the cluster).
    pub profile: Option<project::Profile>,
    /// The environments it depends on (`dependsOn`).
    pub needs: Vec<project::Needed>,
}

impl Rendered {
    /// One multi-document YAML stream; each document says which project file produced it.
    pub fn to_yaml_stream(&self) -> String {
        let parts = par_map(&self.manifests, 16, |m| {
            format!("---\n# Source: {}\n{}", m.source, m.to_yaml())
        });
        parts.concat()
    }

    /// Every distinct sealed reference, sorted.
    pub fn refs(&self) -> Vec<&SealedRef> {
        let mut all: Vec<&SealedRef> = self.manifests.iter().flat_map(|m| &m.refs).collect();
        all.sort();
        all.dedup();
        all
    }
}

/// Whether a path under `templates/` is rendered (rather than only included): a `.yaml`, `.yml`,
/// `.yaml.j2` or `.yml.j2` file with no path segment starting with `_`.
pub fn is_rendered_template(name: &str) -> bool {
    let manifest_ext = [".yaml", ".yml", ".yaml.j2", ".yml.j2"]
        .iter()
        .any(|ext| name.ends_with(ext));
    manifest_ext && !name.starts_with('/') && !name.split('/').any(|seg| seg.starts_with('_'))
}

/// The project file a template name stands for: `templates/<name>`, or for a chart's values
/// template (named by its project path after a `/`) that path.
fn file_of(name: &str) -> String {
    match name.strip_prefix('/') {
        Some(path) => path.to_string(),
        None => format!("templates/{name}"),
    }
}

fn utf8<'a>(file: &str, bytes: &'a [u8]) -> Result<&'a str, Diagnostic> {
    std::str::from_utf8(bytes).map_err(|e| {
        Diagnostic::new("the file is not valid UTF-8")
            .in_file(file)
            .at_line(diagnostic::line_of(
                &String::from_utf8_lossy(&bytes[..e.valid_up_to()]),
                e.valid_up_to(),
            ))
    })
}

/// Where a rendered document came from, to point errors at the right file and line.
enum Origin<'a> {
    Template {
        name: &'a str,
        output: &'a str,
        doc_offset: usize,
    },
    File {
        path: &'a str,
        text: &'a str,
        doc_offset: usize,
    },
    /// A document of `helm template`'s output; `file` is the chart template it names.
    Chart {
        file: String,
        output: &'a str,
        doc_offset: usize,
    },
}

struct Engine<'s> {
    env: Environment<'s>,
    templates: Arc<BTreeMap<String, Arc<str>>>,
    env_name: String,
    budget: Arc<budget::Budget>,
    /// Output spans of templates re-rendered to locate a problem, so many problems in one template
    /// cost one re-render.
    spans: std::sync::Mutex<HashMap<String, Arc<Vec<minijinja::OutputSpan>>>>,
}

impl Engine<'_> {
    /// A diagnostic for a range of a document, pointing into the template that produced it.
    fn locate(&self, origin: &Origin<'_>, range: Range<usize>, message: &str) -> Diagnostic {
        match origin {
            Origin::File {
                path,
                text,
                doc_offset,
            } => Diagnostic::new(message).in_file(*path).with_snippet(
                Arc::from(*text),
                doc_offset + range.start..doc_offset + range.end,
                "here",
            ),
            Origin::Chart {
                file,
                output,
                doc_offset,
            } => Diagnostic::new(message)
                .in_file(file.clone())
                .with_snippet(
                    Arc::from(*output),
                    doc_offset + range.start..doc_offset + range.end,
                    "in Helm's output",
                )
                .snippet_origin("helm template output"),
            Origin::Template {
                name,
                output,
                doc_offset,
            } => {
                let at = doc_offset + range.start;
                if let Some(d) = self.locate_in_template(name, at, message) {
                    return d;
                }
                Diagnostic::new(message)
                    .in_file(file_of(name))
                    .with_snippet(
                        Arc::from(*output),
                        at..doc_offset + range.end,
                        "in the rendered output",
                    )
                    .snippet_origin("rendered output")
            }
        }
    }

    /// Re-renders a template recording output spans and maps an output offset to its source.
    fn locate_in_template(&self, name: &str, at: usize, message: &str) -> Option<Diagnostic> {
        let spans = self.output_spans(name)?;
        let span = spans
            .iter()
            .find(|s| s.output_range().contains(&at))
            .or_else(|| spans.iter().rev().find(|s| s.output_range().start <= at))?;
        let source = self.templates.get(span.name())?.clone();
        let src = span.source_range();
        let range = match span.kind() {
            minijinja::OutputSpanKind::Raw => {
                let pos = (src.start + (at - span.output_range().start)).min(src.end);
                let line = diagnostic::line_range(&source, diagnostic::line_of(&source, pos));
                pos..line.end.max(pos)
            }
            _ => src,
        };
        Some(
            Diagnostic::new(message)
                .in_file(file_of(span.name()))
                .with_snippet(source, range, "here"),
        )
    }

    /// A rendered template's output spans (rendered again once, within the same budget).
    fn output_spans(&self, name: &str) -> Option<Arc<Vec<minijinja::OutputSpan>>> {
        let mut cache = self.spans.lock().ok()?;
        if let Some(spans) = cache.get(name) {
            return Some(spans.clone());
        }
        let template = self.env.get_template(name).ok()?;
        let (_, spans) = budget::with(&self.budget, || template.render_with_spans(())).ok()?;
        let spans = Arc::new(spans);
        cache.insert(name.to_string(), spans.clone());
        Some(spans)
    }

    /// Renders one template into a [`budget::Sink`], charging its fuel to the render's total.
    fn render_one(&self, name: &str) -> Result<String, minijinja::Error> {
        budget::with(&self.budget, || {
            let template = self.env.get_template(name)?;
            let mut sink = budget::Sink::new(self.budget.clone());
            let captured = template.render_captured_to((), &mut sink)?;
            if let Some((used, _)) = captured.state().fuel_levels() {
                self.budget.charge_fuel(used);
            }
            drop(captured);
            Ok(sink.into_string())
        })
    }

    /// The problem a spent output budget is reported as, pointing where the template stopped.
    fn output_problem(&self, name: &str, err: &minijinja::Error) -> Diagnostic {
        let mut located = self.template_error(err);
        if located.file.is_none() {
            located = located.in_file(file_of(name));
        }
        located.message = format!(
            "the templates {} together",
            self.budget.limits().passed(budget::Exhausted::Output)
        );
        located.with_help(
            "a render is bounded so a template cannot take the process's memory or time; look for a runaway loop or repeat (`x * n`, `range`), or split the environment",
        )
    }

    fn template_error(&self, err: &minijinja::Error) -> Diagnostic {
        // The innermost error with a location is where the problem is (e.g. inside an include).
        let mut best = err;
        let mut cur: &dyn std::error::Error = err;
        while let Some(next) = cur.source() {
            if let Some(e) = next.downcast_ref::<minijinja::Error>()
                && e.line().is_some()
            {
                best = e;
            }
            cur = next;
        }
        let e = best;
        let kind = e.kind();
        let message = match e.detail() {
            Some(d) => d.to_string(),
            None => kind.to_string(),
        };
        let help = match kind {
            minijinja::ErrorKind::UndefinedError if e.detail().is_none() => Some(format!(
                "the expression uses a value that is not set: add it to values.yaml or environments/{}/values.yaml, or give a fallback with `| default(...)`",
                self.env_name
            )),
            minijinja::ErrorKind::OutOfFuel => Some(format!(
                "a template may take at most {} steps; look for a runaway loop, or split the template",
                self.budget.limits().template_fuel
            )),
            minijinja::ErrorKind::TemplateNotFound => {
                Some("include names are paths relative to templates/".to_string())
            }
            _ => None,
        };
        let expression = e
            .name()
            .and_then(|n| self.templates.get(n))
            .zip(e.range())
            .and_then(|(src, r)| src.get(r).map(str::to_string));
        let message = match (kind, e.detail(), expression) {
            (minijinja::ErrorKind::UndefinedError, None, Some(expr)) => {
                format!("`{expr}` is undefined")
            }
            _ => message,
        };
        let mut d = Diagnostic::new(message);
        if let Some(name) = e.name() {
            d = d.in_file(file_of(name));
            let source = self.templates.get(name).cloned();
            match (source, e.range(), e.line()) {
                (Some(src), Some(range), _) => d = d.with_snippet(src, range, "here"),
                (Some(src), None, Some(line)) => {
                    let range = diagnostic::line_range(&src, line);
                    d = d.at_line(line).with_snippet(src, range, "here");
                }
                (_, _, Some(line)) => d = d.at_line(line),
                _ => {}
            }
        }
        if let Some(h) = help {
            d = d.with_help(h);
        }
        d
    }
}

/// A document parsed but not yet finished (namespace defaulting needs every CRD first).
struct Pending<'a> {
    origin: Origin<'a>,
    doc_text: &'a str,
    value: Value,
    id: ObjectId,
    /// The chart release whose output it is (its namespace is the default one).
    release: Option<&'a chart::Output>,
    /// Whether placeholders were revealed from base64 (they are not in `doc_text` then).
    revealed: bool,
}

/// Renders one environment of a project: project and environment → layered values → the secrets
/// file's key structure → templates → manifest files → documents parsed → objects placed (namespace,
/// sealed references checked, duplicates refused). Every problem is collected, so one render reports
/// all of them.
pub fn render(snapshot: &Snapshot, req: &Request) -> Result<Rendered, Diagnostics> {
    let (project, environment) = load_project(snapshot, &req.env)?;
    let env_name = req.env.as_str();
    let values = layered_values(snapshot, req)?;
    let secrets = secrets_file(snapshot, env_name)?;
    let engine = template_engine(
        snapshot,
        &project,
        &environment,
        env_name,
        &values,
        &secrets,
        budget::Budget::new(req.limits),
    )?;
    let mut problems: Vec<Diagnostic> = Vec::new();
    let outputs = render_templates(&engine, &mut problems);
    let releases = render_charts(
        &engine,
        snapshot,
        &project,
        &environment,
        env_name,
        req,
        &mut problems,
    );
    let built = build_overlay(&engine, snapshot, &environment, req, &mut problems);
    let overlay_releases = built
        .as_ref()
        .map(|(_, b)| b.releases.as_slice())
        .unwrap_or_default();
    check_release_names(&project, env_name, overlay_releases, &mut problems);
    let mut files = manifest_files(snapshot, env_name, &mut problems);
    if let Some((label, overlay)) = &built {
        files.push((label.as_str(), overlay.output.as_str()));
    }
    let overlay_label = built.as_ref().map(|(label, _)| label.as_str());
    let (pending, sops_manifests, mut chart_objects) = parse_documents(
        &engine,
        &outputs,
        &files,
        (&releases, overlay_label, overlay_releases),
        &environment.namespace,
        &mut problems,
    );
    let overlay_files = built
        .as_ref()
        .map(|(_, b)| b.sealed.as_slice())
        .unwrap_or_default();
    let manifests = place_objects(
        &engine,
        pending,
        sops_manifests,
        &environment.namespace,
        (&secrets, overlay_files),
        &mut problems,
    );
    check_passed_secrets(&releases, &manifests, &chart_objects, &mut problems);
    for release in overlay_releases {
        let reviewed = release.rerun.as_ref().and_then(|r| r.reviewed.as_deref());
        check_passed(release, reviewed.unwrap_or_default().iter(), &mut problems);
    }
    if !problems.is_empty() {
        return Err(Diagnostics(problems));
    }
    let mut manifests = manifests;
    if environment.create_namespace {
        add_namespace(&mut manifests, &environment.namespace);
    }
    manifests.sort_by(Manifest::order);
    Ok(Rendered {
        project: project.project.clone(),
        environment: env_name.to_string(),
        namespace: environment.namespace.clone(),
        secrets_file: secrets.file.clone(),
        manifests,
        reruns: releases
            .into_iter()
            .filter_map(|r| r.rerun)
            .map(|mut rerun| {
                rerun.objects = chart_objects.remove(&rerun.release).unwrap_or_default();
                rerun
            })
            .chain(overlay_releases.iter().filter_map(|r| r.rerun.clone()))
            .collect(),
        profile: (project.charts.values().any(|c| c.applies_to(env_name))
            || !overlay_releases.is_empty())
        .then(|| environment.profile()),
        needs: project.needed(env_name),
    })
}

/// `createNamespace: true`: the environment's Namespace joins the set, unless a template or manifest
/// already defines it.
fn add_namespace(manifests: &mut Vec<Manifest>, namespace: &str) {
    let id = ObjectId {
        group: String::new(),
        kind: "Namespace".into(),
        namespace: None,
        name: namespace.to_string(),
    };
    if manifests.iter().any(|m| m.id.as_ref() == Some(&id)) {
        return;
    }
    let mut meta = Mapping::new();
    meta.insert("name".into(), namespace.into());
    let mut body = Mapping::new();
    body.insert("apiVersion".into(), "v1".into());
    body.insert("kind".into(), "Namespace".into());
    body.insert("metadata".into(), Value::Mapping(meta));
    manifests.push(Manifest {
        source: format!("{PROJECT_FILE} (createNamespace)"),
        id: Some(id),
        body: Body::Object(Value::Mapping(body)),
        refs: Vec::new(),
        release: None,
    });
}

/// `lockstep.yaml` and the requested environment.
fn load_project(snapshot: &Snapshot, env: &str) -> Result<(Project, EnvironmentSpec), Diagnostics> {
    let Some(project_bytes) = snapshot.get(PROJECT_FILE) else {
        return Err(Diagnostic::new("no lockstep.yaml at the project root")
            .with_help("run `lockstep init` to create a project, or pass the directory that holds lockstep.yaml")
            .into());
    };
    let project = Project::parse(utf8(PROJECT_FILE, project_bytes)?)?;
    let environment = project.environment(env)?.clone();
    Ok((project, environment))
}

/// Values, layered: `values.yaml`, the environment's `values.yaml`, `--values` files, `--set`s.
fn layered_values(snapshot: &Snapshot, req: &Request) -> Result<Mapping, Diagnostics> {
    let mut merged = Mapping::new();
    for file in [
        "values.yaml".to_string(),
        format!("environments/{}/values.yaml", req.env),
    ] {
        if let Some(bytes) = snapshot.get(&file) {
            values::merge(&mut merged, values::parse(&file, utf8(&file, bytes)?)?);
        }
    }
    for (name, text) in &req.values_files {
        values::merge(&mut merged, values::parse(name, text)?);
    }
    for set in &req.sets {
        values::merge(&mut merged, set.clone());
    }
    Ok(merged)
}

/// The environment's secrets file: its key structure only (at most one per environment).
fn secrets_file(snapshot: &Snapshot, env_name: &str) -> Result<SecretsFile, Diagnostics> {
    let found: Vec<String> = sealed::candidates(env_name)
        .into_iter()
        .filter(|c| snapshot.contains(c))
        .collect();
    if found.len() > 1 {
        return Err(Diagnostic::new(format!(
            "environment {env_name} has more than one secrets file: {}",
            found.join(", ")
        ))
        .with_help("keep one secrets file per environment")
        .into());
    }
    Ok(match found.first() {
        Some(file) => SecretsFile::parse(file, snapshot.get(file).unwrap_or_default())?,
        None => SecretsFile::default(),
    })
}

/// The template environment: every file under `templates/`, strict undefined, fuel and recursion
/// limits, lockstep's helpers, and the globals `values`, `env`, `project`, `secrets`.
fn template_engine<'s>(
    snapshot: &Snapshot,
    project: &Project,
    environment: &EnvironmentSpec,
    env_name: &str,
    values: &Mapping,
    secrets: &SecretsFile,
    budget: Arc<budget::Budget>,
) -> Result<Engine<'s>, Diagnostics> {
    let mut templates = BTreeMap::new();
    for (path, bytes) in snapshot.under("templates/") {
        let name = &path["templates/".len()..];
        templates.insert(name.to_string(), Arc::<str>::from(utf8(path, bytes)?));
    }
    // Charts' values templates, by their project path after a `/` (never rendered as manifests).
    for (release, chart) in &project.charts {
        let Some(path) = chart
            .values
            .as_deref()
            .filter(|_| chart.applies_to(env_name))
        else {
            continue;
        };
        let bytes = snapshot.get(path).ok_or_else(|| {
            Diagnostic::new(format!(
                "chart {release}: the values template {path} does not exist"
            ))
            .in_file(PROJECT_FILE)
            .with_help("create it, or remove `values:` from the chart")
        })?;
        templates.insert(format!("/{path}"), Arc::<str>::from(utf8(path, bytes)?));
    }
    let templates = Arc::new(templates);
    let mut env = Environment::new();
    let loader_templates = templates.clone();
    env.set_loader(move |name| Ok(loader_templates.get(name).map(|s| s.to_string())));
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_formatter(helpers::format_value);
    env.set_fuel(Some(budget.limits().template_fuel));
    env.set_recursion_limit(RECURSION_LIMIT);
    env.set_debug(false);
    let syntax = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(true)
        .build()
        .map_err(|e| Diagnostic::new(format!("template syntax configuration: {e}")))?;
    env.set_syntax(syntax);
    helpers::register(&mut env);
    env.add_global("values", minijinja::Value::from(Serde(values)));
    env.add_global(
        "env",
        context! { name => env_name, namespace => environment.namespace.as_str() },
    );
    env.add_global("project", context! { name => project.project.as_str() });
    env.add_global("secrets", secrets.to_value(env_name));
    Ok(Engine {
        env,
        templates,
        env_name: env_name.to_string(),
        budget,
        spans: std::sync::Mutex::default(),
    })
}

/// Renders every template that is not a helper, in parallel; failures become problems.
fn render_templates(engine: &Engine<'_>, problems: &mut Vec<Diagnostic>) -> Vec<(String, String)> {
    let names: Vec<&String> = engine
        .templates
        .keys()
        .filter(|n| is_rendered_template(n))
        .collect();
    let results = par_map(&names, 1, |name| {
        (!engine.budget.fuel_spent()).then(|| engine.render_one(name))
    });
    let mut outputs = Vec::new();
    let mut skipped = Vec::new();
    let mut output_reported = false;
    for (name, result) in names.iter().zip(results) {
        match result {
            Some(Ok(text)) => outputs.push((name.to_string(), text)),
            Some(Err(e)) if e.kind() == minijinja::ErrorKind::WriteFailure => {
                if !output_reported {
                    output_reported = true;
                    problems.push(engine.output_problem(name, &e));
                } else {
                    skipped.push(name.as_str());
                }
            }
            Some(Err(e)) => problems.push(engine.template_error(&e)),
            None => skipped.push(name.as_str()),
        }
    }
    if !skipped.is_empty() {
        let spent = engine.budget.exhausted().unwrap_or(budget::Exhausted::Fuel);
        let why = format!("together they {}", engine.budget.limits().passed(spent));
        problems.push(
            Diagnostic::new(format!(
                "{} templates were not rendered (the first is templates/{}): {why}",
                skipped.len(),
                skipped[0]
            ))
            .with_help("a render is bounded so templates cannot take the process's memory or time; look for runaway loops, or split the project into more environments or projects"),
        );
    }
    outputs
}

/// The environment's chart releases: each values template rendered (problems collected), then
/// `helm template` run for each (unless `charts` says only values) — up to one Helm per core at
/// once — in order of release name.
fn render_charts(
    engine: &Engine<'_>,
    snapshot: &Snapshot,
    project: &Project,
    environment: &EnvironmentSpec,
    env_name: &str,
    req: &Request,
    problems: &mut Vec<Diagnostic>,
) -> Vec<chart::Output> {
    let mut jobs = Vec::new();
    for (release, spec) in project
        .charts
        .iter()
        .filter(|(_, c)| c.applies_to(env_name))
    {
        let values = match &spec.values {
            None => chart::Values::parse(PROJECT_FILE, String::new()),
            Some(path) => match engine.render_one(&format!("/{path}")) {
                Ok(text) => chart::Values::parse(path, text),
                Err(e) => Err(engine.template_error(&e)),
            },
        };
        match values {
            Ok(v) => {
                let namespace = spec
                    .namespace
                    .clone()
                    .unwrap_or_else(|| environment.namespace.clone());
                jobs.push((release, spec, namespace, v));
            }
            Err(d) => problems.push(d),
        }
    }
    let chart::Charts::Helm(helm) = &req.charts else {
        return Vec::new();
    };
    let jobs = with_archives(jobs, snapshot, &req.archives, problems);
    let max_output = engine.budget.bytes_left();
    let results = par_map(&jobs, 1, |(release, spec, namespace, values, archive)| {
        let job = chart::Release {
            name: release,
            chart: spec,
            namespace,
            archive: archive.as_deref(),
        };
        chart::template(helm, snapshot, &job, environment, values, max_output)
    });
    let mut releases = Vec::new();
    for ((release, spec, namespace, values, archive), result) in jobs.into_iter().zip(results) {
        let text = match result {
            Ok(text) => text,
            Err(d) => {
                problems.push(d);
                continue;
            }
        };
        if engine.budget.take_bytes(text.len()).is_err() {
            problems.push(
                Diagnostic::new(format!(
                    "chart {release}: the charts' output passes the {} bytes a render may produce",
                    engine.budget.limits().output_bytes
                ))
                .in_file(spec.label())
                .with_help("split the environment, or look for a runaway loop in a chart"),
            );
            continue;
        }
        // Every release is rendered again at apply: with its real values when it has sealed ones,
        // else to see that the chart renders alike each time (no randAlphaNum, genCA, lookup).
        let rerun = Some(chart::Rerun {
            release: release.clone(),
            chart: spec.clone(),
            namespace: namespace.clone(),
            environment: environment.clone(),
            values: values.text.clone(),
            helm: helm.clone(),
            archive: archive.clone(),
            sealed: !values.passed.is_empty(),
            objects: Vec::new(),
            reviewed: None,
        });
        releases.push(chart::Output {
            release: release.clone(),
            chart_dir: spec.label(),
            namespace,
            text,
            passed: values.passed,
            rerun,
        });
    }
    releases
}

/// A rendered release's job: name, chart, namespace, values, and archive (repository and OCI
/// charts).
type ChartJob<'a> = (
    &'a String,
    &'a project::Chart,
    String,
    chart::Values,
    Option<std::sync::Arc<[u8]>>,
);

/// Each job with its chart archive: a repository or OCI chart must be in `lockstep.lock`, and its
/// archive at hand with the locked digest (problems collected; those jobs dropped).
fn with_archives<'a>(
    jobs: Vec<(&'a String, &'a project::Chart, String, chart::Values)>,
    snapshot: &Snapshot,
    archives: &lock::Archives,
    problems: &mut Vec<Diagnostic>,
) -> Vec<ChartJob<'a>> {
    if jobs.iter().all(|(_, spec, ..)| !spec.is_remote()) {
        return jobs
            .into_iter()
            .map(|(r, s, n, v)| (r, s, n, v, None))
            .collect();
    }
    let text = snapshot
        .get(lock::LOCK_FILE)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    let lock = match lock::Lock::parse(&text) {
        Ok(lock) => lock,
        Err(d) => {
            problems.push(d);
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (release, spec, namespace, values) in jobs {
        if !spec.is_remote() {
            out.push((release, spec, namespace, values, None));
            continue;
        }
        let fail = |message: String, help: &str| {
            Diagnostic::new(format!("chart {release}: {message}"))
                .in_file(lock::LOCK_FILE)
                .with_help(help.to_string())
        };
        let entry = match lock.entry(release, spec) {
            Ok(entry) => entry,
            Err(why) => {
                problems.push(fail(
                    why,
                    "the lock file pins each repository and OCI chart by digest, so a render uses exactly the reviewed chart",
                ));
                continue;
            }
        };
        match archives.get(&entry.digest) {
            Some(bytes) => out.push((release, spec, namespace, values, Some(bytes.clone()))),
            None => problems.push(fail(
                format!(
                    "the archive of {} with digest {} is not at hand",
                    spec.label(),
                    entry.digest
                ),
                "`lockstep charts pull` fetches the locked charts into the cache",
            )),
        }
    }
    out
}

/// Every sealed value passed to a chart must reach its output (in a Secret): one the chart hashed,
/// trimmed or otherwise changed would become a wrong credential without a word.
fn check_passed_secrets(
    releases: &[chart::Output],
    manifests: &[Manifest],
    chart_objects: &HashMap<String, Vec<String>>,
    problems: &mut Vec<Diagnostic>,
) {
    for release in releases {
        let prefix = format!("{}/", release.chart_dir);
        let own = chart_objects.get(&release.release);
        let objects = manifests.iter().filter(|m| {
            (m.source.starts_with(&prefix) || m.source == release.chart_dir)
                && m.id.as_ref().is_some_and(|id| {
                    own.is_some_and(|keys| keys.contains(&chart::object_key(&id.kind, &id.name)))
                })
        });
        check_passed(release, objects, problems);
    }
}

/// [`check_passed_secrets`] for one release, given its objects.
fn check_passed<'m>(
    release: &chart::Output,
    objects: impl Iterator<Item = &'m Manifest>,
    problems: &mut Vec<Diagnostic>,
) {
    let mut reached: std::collections::HashSet<(String, Vec<String>)> = Default::default();
    for m in objects {
        if let Body::Object(v) = &m.body {
            for r in chart::refs_in(v) {
                reached.insert((r.file, r.path));
            }
        }
    }
    for (r, key) in &release.passed {
        if reached.contains(&(r.file.clone(), r.path.clone())) {
            continue;
        }
        problems.push(
                Diagnostic::new(format!(
                    "chart {}: the sealed secret {} passed in values key {key} appears nowhere in the chart's output: the chart transformed it (a hash such as sha256sum or htpasswd, trim, upper, …), which would apply a wrong value",
                    release.release,
                    r.display_path()
                ))
                .in_file(release.chart_dir.clone())
                .with_help("pass the value the chart needs as it is (for a hash, store the hashed form in the secrets file), or point the chart at an existing Secret"),
            );
    }
}

/// A release of a kustomization's `helmCharts` must not share its name with one of
/// `lockstep.yaml`'s: hooks and reruns are per release.
fn check_release_names(
    project: &Project,
    env_name: &str,
    overlay_releases: &[chart::Output],
    problems: &mut Vec<Diagnostic>,
) {
    for release in overlay_releases {
        if project
            .charts
            .get(&release.release)
            .is_some_and(|c| c.applies_to(env_name))
        {
            problems.push(
                Diagnostic::new(format!(
                    "chart release {} is declared in lockstep.yaml and in a kustomization's helmCharts",
                    release.release
                ))
                .in_file(release.chart_dir.clone())
                .with_help("give the kustomization's entry another releaseName"),
            );
        }
    }
}

/// The environment's Kustomize overlay, built: a name for its objects' source and the output.
fn build_overlay(
    engine: &Engine<'_>,
    snapshot: &Snapshot,
    environment: &EnvironmentSpec,
    req: &Request,
    problems: &mut Vec<Diagnostic>,
) -> Option<(String, kustomize::Built)> {
    let dir = environment.kustomize.as_deref()?;
    let kustomize::Kustomizer::Run(k) = &req.kustomize else {
        return None;
    };
    let with = kustomize::ChartsWith {
        helm: match &req.charts {
            chart::Charts::Helm(helm) => Some(helm),
            chart::Charts::ValuesOnly => None,
        },
        environment,
    };
    match kustomize::build(k, snapshot, dir, &with, engine.budget.bytes_left()) {
        Ok(built) => {
            if engine.budget.take_bytes(built.output.len()).is_err() {
                problems.push(
                    Diagnostic::new(format!(
                        "kustomize build {dir}: its output passes the {} bytes a render may produce",
                        engine.budget.limits().output_bytes
                    ))
                    .in_file(dir.to_string())
                    .with_help("split the environment"),
                );
                return None;
            }
            Some((
                format!("{} (kustomize build)", dir.trim_end_matches('/')),
                built,
            ))
        }
        Err(d) => {
            problems.push(d);
            None
        }
    }
}

/// Plain and whole-file SOPS manifests: `manifests/` and the environment's `manifests/`.
fn manifest_files<'a>(
    snapshot: &'a Snapshot,
    env_name: &str,
    problems: &mut Vec<Diagnostic>,
) -> Vec<(&'a str, &'a str)> {
    let mut files = Vec::new();
    let env_manifests = format!("environments/{env_name}/manifests/");
    for prefix in ["manifests/", env_manifests.as_str()] {
        for (path, bytes) in snapshot.under(prefix) {
            if !(path.ends_with(".yaml") || path.ends_with(".yml")) {
                continue;
            }
            match utf8(path, bytes) {
                Ok(text) => files.push((path, text)),
                Err(d) => problems.push(d),
            }
        }
    }
    files
}

/// Every document of the template outputs and manifest files, parsed and identified in parallel
/// (parsing dominates render time); whole-file SOPS manifests are kept as they are.
fn parse_documents<'a>(
    engine: &Engine<'_>,
    outputs: &'a [(String, String)],
    files: &[(&'a str, &'a str)],
    (releases, overlay, overlay_releases): (&'a [chart::Output], Option<&str>, &'a [chart::Output]),
    namespace: &str,
    problems: &mut Vec<Diagnostic>,
) -> (
    Vec<Pending<'a>>,
    Vec<Manifest>,
    HashMap<String, Vec<String>>,
) {
    let mut sops_manifests = Vec::new();
    let mut docs: Vec<(Origin<'a>, &'a str)> = Vec::new();
    let mut release_of: Vec<Option<&'a chart::Output>> = Vec::new();
    for release in releases {
        for doc in manifest::split_documents(&release.text) {
            if chart::holds_nothing(doc.text) {
                continue;
            }
            let origin = Origin::Chart {
                file: chart::source_of(doc.text, &release.chart_dir),
                output: &release.text,
                doc_offset: doc.offset,
            };
            docs.push((origin, doc.text));
            release_of.push(Some(release));
        }
    }
    for (name, output) in outputs {
        for doc in manifest::split_documents(output) {
            let origin = Origin::Template {
                name,
                output,
                doc_offset: doc.offset,
            };
            docs.push((origin, doc.text));
        }
    }
    // Documents of the overlay's output: their generators base64-encode placeholders (revealed).
    let mut from_overlay = vec![false; docs.len()];
    for &(path, text) in files {
        if lockstep_sops::is_encrypted(text.as_bytes(), lockstep_sops::store::Format::Yaml) {
            sops_manifests.push(sops_manifest(path, text, namespace));
            continue;
        }
        for doc in manifest::split_documents(text) {
            let origin = Origin::File {
                path,
                text,
                doc_offset: doc.offset,
            };
            docs.push((origin, doc.text));
            from_overlay.push(overlay == Some(path));
        }
    }
    let parsed = par_map(&docs, 16, |(_, text)| parse_document(text));
    release_of.resize(docs.len(), None);
    let mut pending = Vec::new();
    let mut chart_objects: HashMap<String, Vec<String>> = HashMap::new();
    for ((((origin, doc_text), result), release), overlaid) in docs
        .into_iter()
        .zip(parsed)
        .zip(release_of)
        .zip(from_overlay)
    {
        match result {
            Ok((mut value, id)) => {
                if let Some(r) = release {
                    chart_objects
                        .entry(r.release.clone())
                        .or_default()
                        .push(chart::object_key(&id.kind, &id.name));
                }
                // An object of a kustomization's chart carries its release through the build.
                let release = match overlaid.then(|| kustomize::take_mark(&mut value)) {
                    Some(Some(name)) => overlay_releases.iter().find(|r| r.release == name),
                    _ => release,
                };
                let revealed = (release.is_some() || overlaid) && chart::reveal_encoded(&mut value);
                pending.push(Pending {
                    origin,
                    doc_text,
                    value,
                    id,
                    release,
                    revealed,
                })
            }
            Err(p) => {
                let mut d = engine.locate(&origin, p.range.clone(), &p.message);
                if let Some(h) = p.help {
                    d = d.with_help(h);
                }
                problems.push(d);
            }
        }
    }
    (pending, sops_manifests, chart_objects)
}

/// Places every object: its namespace (defaulted for namespaced kinds; CRDs in the set tell which
/// custom kinds are not), its sealed references (checked), and one definition per identity.
fn place_objects(
    engine: &Engine<'_>,
    pending: Vec<Pending<'_>>,
    sops_manifests: Vec<Manifest>,
    namespace: &str,
    secrets: (&SecretsFile, &[SecretsFile]),
    problems: &mut Vec<Diagnostic>,
) -> Vec<Manifest> {
    let mut scopes = lockstep_core::objects::Scopes::default();
    for p in &pending {
        if p.id.kind == "CustomResourceDefinition" && p.id.group == "apiextensions.k8s.io" {
            scopes.learn(&p.value);
        }
    }
    let mut manifests: Vec<Manifest> = Vec::new();
    // Two objects with the same identity: the second is reported where it is defined.
    let mut defined: HashMap<ObjectId, String> = HashMap::new();
    for mut p in pending {
        if scopes.is_cluster_scoped(&p.id.group, &p.id.kind) {
            p.id.namespace = None;
        } else if p.id.namespace.is_none() {
            let namespace = p.release.map_or(namespace, |r| r.namespace.as_str());
            manifest::default_namespace(&mut p.value, namespace);
            p.id.namespace = Some(namespace.to_string());
        }
        let refs = sealed_refs(engine, &p, secrets, problems);
        let source = match &p.origin {
            Origin::Template { name, .. } => format!("templates/{name}"),
            Origin::File { path, .. } => path.to_string(),
            Origin::Chart { file, .. } => file.clone(),
        };
        if let Some(other) = defined.get(&p.id) {
            // Two releases of one chart ship the same CRD (`crds/`): Helm installs it once.
            let same = p.release.is_some()
                && manifests.iter().any(|m| {
                    m.id.as_ref() == Some(&p.id)
                        && matches!(&m.body, Body::Object(v) if *v == p.value)
                });
            if same {
                continue;
            }
            let name_at = p
                .doc_text
                .find("name:")
                .map_or(0..0, |i| i..i + "name:".len());
            problems.push(
                engine
                    .locate(
                        &p.origin,
                        name_at,
                        &format!("{} is defined twice: in {other} and in {source}", p.id),
                    )
                    .with_help("each object may come from one template or manifest only; rename one or guard it with {% if %}"),
            );
            continue;
        }
        defined.insert(p.id.clone(), source.clone());
        manifests.push(Manifest {
            source,
            id: Some(p.id),
            body: Body::Object(p.value),
            refs,
            release: p.release.map(|r| r.release.clone()),
        });
    }
    // Whole-file SOPS manifests whose identity is readable take part in the same check.
    for m in sops_manifests {
        if let Some(id) = &m.id {
            if let Some(other) = defined.get(id) {
                problems.push(
                    Diagnostic::new(format!(
                        "{id} is defined twice: in {other} and in {}",
                        m.source
                    ))
                    .in_file(m.source.clone())
                    .with_help("each object may come from one template or manifest only"),
                );
                continue;
            }
            defined.insert(id.clone(), m.source.clone());
        }
        manifests.push(m);
    }
    manifests
}

/// An object's sealed references: in allowed places only, and only to values of this environment's
/// secrets file; each refusal is a problem located where the placeholder is.
fn sealed_refs(
    engine: &Engine<'_>,
    p: &Pending<'_>,
    (secrets, overlay_files): (&SecretsFile, &[SecretsFile]),
    problems: &mut Vec<Diagnostic>,
) -> Vec<SealedRef> {
    // A placeholder is spelled out in the text, or hidden in a double-quoted escape.
    let may_hold_refs =
        p.revealed || p.doc_text.contains(sealed::PLACEHOLDER_PREFIX) || p.doc_text.contains('\\');
    if !may_hold_refs {
        return Vec::new();
    }
    let mut refs = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for f in manifest::find_refs(&p.value, &p.id) {
        let nth = seen.entry(f.text.clone()).or_insert(0);
        let occurrence = *nth;
        *nth += 1;
        let range = nth_range(p.doc_text, &f.text, occurrence);
        let problem = match (&f.refused, &f.reference) {
            (Some(why), reference) if p.release.is_some() => {
                let key = reference.as_ref().and_then(|r| {
                    p.release?
                        .passed
                        .iter()
                        .find(|(passed, _)| passed.file == r.file && passed.path == r.path)
                        .map(|(_, key)| key.clone())
                });
                Some((
                    match key {
                        Some(key) => format!("{why} (the chart put values key {key} there)"),
                        None => why.clone(),
                    },
                    Some("a chart must keep secrets in a Secret: point it at an existing Secret instead (many charts take an `existingSecret` value naming one; create that Secret under templates/ with the sealed value), or use a chart option that reads the value from a Secret".to_string()),
                ))
            }
            (Some(why), _) => Some((why.clone(), None)),
            (None, Some(r))
                if !secrets.resolves(r) && !overlay_files.iter().any(|f| f.resolves(r)) =>
            {
                Some((
                    format!(
                        "{} names {} in {}, which is not a value of this environment's secrets file",
                        f.at,
                        r.display_path(),
                        r.file
                    ),
                    Some(match &secrets.file {
                        Some(file) => {
                            format!("use {{{{ secrets.… }}}} to refer to values of {file}")
                        }
                        None => format!("environment {} has no secrets file", engine.env_name),
                    }),
                ))
            }
            _ => None,
        };
        match problem {
            Some((message, help)) => {
                let mut d = engine.locate(&p.origin, range, &format!("{}: {message}", p.id));
                if let Some(h) = help {
                    d = d.with_help(h);
                }
                problems.push(d);
            }
            None => {
                if let Some(r) = f.reference {
                    refs.push(r);
                }
            }
        }
    }
    refs.sort();
    refs.dedup();
    refs
}

/// Parses one document and reads its identity.
pub(crate) fn parse_document(doc_text: &str) -> Result<(Value, ObjectId), manifest::Problem> {
    let value: Value = yaml_serde::from_str(doc_text).map_err(|e| {
        let (message, range) = project::yaml_error_at(doc_text, &e);
        manifest::Problem {
            message: format!("rendered YAML does not parse: {message}"),
            range,
            help: Some(
                "check indentation around the expression; `| toyaml | nindent(N)` inserts structures safely"
                    .into(),
            ),
        }
    })?;
    let id = manifest::identify(&value, doc_text)?;
    Ok((value, id))
}

/// Maps `f` over `items` on up to [`std::thread::available_parallelism`] threads, results in input
/// order. Items are dealt round-robin (neighbours often differ in size, e.g. one template's large
/// Deployments next to another's small Services); at least `min_chunk` items go to each thread.
pub fn par_map<T: Sync, R: Send>(
    items: &[T],
    min_chunk: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8)
        .min(items.len().div_ceil(min_chunk.max(1)).max(1));
    if threads <= 1 {
        return items.iter().map(&f).collect();
    }
    let f = &f;
    let parts: Vec<Vec<R>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| scope.spawn(move || items.iter().skip(t).step_by(threads).map(f).collect()))
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    let mut iters: Vec<_> = parts.into_iter().map(Vec::into_iter).collect();
    let mut out = Vec::with_capacity(items.len());
    for i in 0..items.len() {
        if let Some(r) = iters[i % threads].next() {
            out.push(r);
        }
    }
    out
}

fn nth_range(text: &str, needle: &str, n: usize) -> Range<usize> {
    text.match_indices(needle)
        .nth(n)
        .or_else(|| text.match_indices(needle).next())
        .map_or(0..0, |(i, s)| i..i + s.len())
}

/// A whole-file SOPS manifest: kept as text; identity from its clear-text fields when they are.
fn sops_manifest(path: &str, text: &str, namespace: &str) -> Manifest {
    let first = manifest::split_documents(text)
        .first()
        .and_then(|d| yaml_serde::from_str::<Value>(d.text).ok());
    let clear = |v: &Value| {
        v.as_str()
            .filter(|s| !s.starts_with("ENC["))
            .map(str::to_string)
    };
    let id = first.as_ref().and_then(|v| {
        let api_version = clear(&v["apiVersion"])?;
        let kind = clear(&v["kind"])?;
        let name = clear(&v["metadata"]["name"])?;
        let group = lockstep_core::objects::group_of(&api_version).to_string();
        let ns = match &v["metadata"]["namespace"] {
            Value::Null => None,
            other => Some(clear(other)?),
        };
        let namespace = if lockstep_core::objects::is_builtin_cluster_scoped(&group, &kind) {
            None
        } else {
            Some(ns.unwrap_or_else(|| namespace.to_string()))
        };
        Some(ObjectId {
            group,
            kind,
            namespace,
            name,
        })
    });
    Manifest {
        source: path.to_string(),
        id,
        body: Body::Sops {
            text: text.to_string(),
        },
        refs: Vec::new(),
        release: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn par_map_keeps_input_order_for_any_length() {
        for n in [0, 1, 2, 3, 17, 100, 1001] {
            let items: Vec<usize> = (0..n).collect();
            assert_eq!(
                par_map(&items, 1, |x| x * 2),
                (0..n).map(|x| x * 2).collect::<Vec<_>>()
            );
            assert_eq!(par_map(&items, 16, |x| x + 1), (1..=n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn only_manifest_files_outside_helper_paths_are_rendered() {
        assert!(is_rendered_template("web.yaml"));
        assert!(is_rendered_template("apps/web.yml.j2"));
        assert!(!is_rendered_template("_helpers/labels.yaml"));
        assert!(!is_rendered_template("apps/_partial.yaml"));
        assert!(!is_rendered_template("README.md"));
    }

    fn project(templates: &[(&str, String)]) -> Snapshot {
        let mut snapshot = Snapshot::new();
        snapshot.insert(
            "lockstep.yaml",
            "project: t\nenvironments:\n  dev: {namespace: t-dev}\n",
        );
        for (name, text) in templates {
            snapshot.insert(format!("templates/{name}"), text.as_str());
        }
        snapshot
    }

    fn problems(snapshot: &Snapshot, limits: budget::Limits) -> Vec<String> {
        let req = Request {
            env: "dev".into(),
            limits,
            ..Request::default()
        };
        match render(snapshot, &req) {
            Ok(r) => panic!("rendered {} objects", r.manifests.len()),
            Err(d) => {
                d.0.iter()
                    .map(|d| format!("{}: {}", d.location(), d.message))
                    .collect()
            }
        }
    }

    const CONFIG_MAP: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata:\n  a: ";

    #[test]
    fn output_past_the_budget_stops_the_render_naming_the_template() {
        let loud = format!(
            "{CONFIG_MAP}|\n{{% for i in range(1000) %}}    {{{{ 'x' * 100 }}}}\n{{% endfor %}}"
        );
        let found = problems(
            &project(&[("loud.yaml", loud)]),
            budget::Limits {
                output_bytes: 10_000,
                ..budget::Limits::default()
            },
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("templates/loud.yaml"), "{found:?}");
        assert!(found[0].contains("more than 0 MiB of output"), "{found:?}");
    }

    #[test]
    fn helpers_size_what_they_build_against_the_budget() {
        for expression in [
            "([range(10000)] * 100000000) | tojson",
            "([range(10000)] * 100000000) | toyaml",
            "[range(10000)] * 100000000",
            "('x\\n' * 20000) | indent(1000)",
        ] {
            let t = format!("{CONFIG_MAP}{{{{ {expression} }}}}\n");
            let found = problems(&project(&[("a.yaml", t)]), budget::Limits::default());
            assert_eq!(found.len(), 1, "{expression}: {found:?}");
            assert!(
                found[0].contains("larger than what is left of the render's output budget"),
                "{expression}: {found:?}"
            );
        }
    }

    #[test]
    fn the_fuel_of_all_templates_adds_up_to_one_budget() {
        // Each template takes about 2,000 steps: fine alone, not forty of them within 10,000.
        let busy = format!("{CONFIG_MAP}x\n{{% for i in range(1000) %}}{{% endfor %}}");
        let templates: Vec<(String, String)> = (0..40)
            .map(|i| {
                (
                    format!("t{i:02}.yaml"),
                    busy.replace("name: c", &format!("name: c{i}")),
                )
            })
            .collect();
        let templates: Vec<(&str, String)> = templates
            .iter()
            .map(|(n, t)| (n.as_str(), t.clone()))
            .collect();
        let limits = budget::Limits {
            fuel: 10_000,
            ..budget::Limits::default()
        };
        let found = problems(&project(&templates), limits);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("templates were not rendered"),
            "{found:?}"
        );
        assert!(found[0].contains("more than 10000 steps"), "{found:?}");
        // The same templates render under the default budget.
        let req = Request {
            env: "dev".into(),
            ..Request::default()
        };
        assert_eq!(
            render(&project(&templates), &req)
                .map(|r| r.manifests.len())
                .ok(),
            Some(40)
        );
    }

    #[test]
    fn many_problems_in_one_template_are_located_with_one_re_render() {
        // 2,000 documents without a kind: each problem is located in the template's source.
        let t = "{% for i in range(2000) %}\n---\napiVersion: v1\nmetadata: {name: c{{ i }}}\n{% endfor %}\n".to_string();
        let started = std::time::Instant::now();
        let found = problems(&project(&[("many.yaml", t)]), budget::Limits::default());
        assert_eq!(found.len(), 2000);
        assert!(
            found.iter().all(|p| p.starts_with("templates/many.yaml:")),
            "{:?}",
            &found[..2]
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
    }
}
