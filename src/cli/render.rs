//! `lockstep render`: print (or write) the manifests of one environment, secrets sealed.

use std::io::Write;
use std::path::{Path, PathBuf};

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};
use clap::Args;

use crate::render::{self, Diagnostic, Diagnostics, Rendered, Request};
use crate::source::Snapshot;

use super::exit::{Code, Failure};

/// Marker file that makes a directory safe for `render --out` to clear and rewrite.
pub const OUT_MARKER: &str = ".lockstep-render";

/// What to render: shared by `render`, `apply` and `diff`.
#[derive(Debug, Clone, Args)]
pub struct RenderArgs {
    /// The environment to render (defined in lockstep.yaml).
    #[arg(long, short = 'e')]
    pub env: String,
    /// The project directory (holding lockstep.yaml).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Value overrides.
    #[command(flatten)]
    pub values: ValuesArgs,
}

/// Arguments of `lockstep render`.
#[derive(Debug, Clone, Args)]
pub struct RenderCommandArgs {
    /// What to render.
    #[command(flatten)]
    pub render: RenderArgs,
    /// Write one file per object under this directory instead of one stream on stdout:
    /// `<namespace>/<kind>[.<group>]-<name>.yaml` (`_cluster/` for cluster-scoped objects,
    /// `_encrypted/` for SOPS manifests whose identity is encrypted). Earlier output is replaced.
    #[arg(long, value_name = "OUTDIR")]
    pub out: Option<PathBuf>,
}

/// Value overrides, shared by every command that renders.
#[derive(Debug, Clone, Default, Args)]
pub struct ValuesArgs {
    /// Override a value: `--set image.tag=1.2.3` (dot path; value read as a YAML scalar).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    /// Like --set, but the value is always a string.
    #[arg(long = "set-string", value_name = "PATH=VALUE")]
    pub set_string: Vec<String>,
    /// Extra values file, merged after the project's own values (repeatable, in order).
    #[arg(long = "values", short = 'f', value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

impl RenderArgs {
    /// The render request these arguments describe (reads `--values` files).
    pub fn request(&self) -> Result<Request, Failure> {
        let mut req = Request {
            env: self.env.clone(),
            ..Request::default()
        };
        for file in &self.values.files {
            let text = std::fs::read_to_string(file).map_err(|e| {
                Failure::new(Code::ERROR, format!("--values {}: {e}", file.display()))
            })?;
            req.values_files.push((file.display().to_string(), text));
        }
        for (list, string) in [(&self.values.set, false), (&self.values.set_string, true)] {
            for arg in list {
                let m = render::values::parse_set(arg, string)
                    .map_err(|e| Failure::new(Code::ERROR, e))?;
                req.sets.push(m);
            }
        }
        Ok(req)
    }
}

/// Draws diagnostics for a terminal or a log: message, `file:line`, a snippet, help.
pub fn draw(diagnostics: &Diagnostics) -> String {
    let renderer = Renderer::plain();
    let mut out = String::new();
    for d in &diagnostics.0 {
        out.push_str(&draw_one(&renderer, d));
        out.push('\n');
    }
    let n = diagnostics.0.len();
    if n > 1 {
        out.push_str(&format!("error: render found {n} problems\n"));
    }
    out
}

fn draw_one(renderer: &Renderer, d: &Diagnostic) -> String {
    let title = Level::ERROR.primary_title(d.message.as_str());
    let mut group = match (&d.snippet, &d.file) {
        (Some(s), file) => {
            let mut snippet = Snippet::source(&*s.source).line_start(1).fold(true);
            let path = match (file, &s.origin) {
                (Some(f), Some(o)) => Some(format!("{f} ({o})")),
                (Some(f), None) => Some(f.clone()),
                (None, _) => None,
            };
            if let Some(p) = path {
                snippet = snippet.path(p);
            }
            title.element(
                snippet.annotation(
                    AnnotationKind::Primary
                        .span(s.range.clone())
                        .label(s.label.as_str()),
                ),
            )
        }
        (None, Some(_)) => {
            let title = Level::ERROR.primary_title(format!("{}{}", d.location(), d.message));
            Group::with_title(title)
        }
        (None, None) => Group::with_title(title),
    };
    if let Some(help) = &d.help {
        group = group.element(Level::HELP.message(help.as_str()));
    }
    renderer.render(&[group])
}

/// Runs `lockstep render`.
pub fn run(
    args: &RenderCommandArgs,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<(), Failure> {
    let rendered = render_dir(&args.render.dir, &args.render.request()?, stderr)?;
    let result = write_rendered(args, &rendered, stdout, stderr);
    // The process ends right after; freeing a thousand small objects one by one is wasted time
    // (the rendered set holds no secret, so nothing needs wiping).
    std::mem::forget(rendered);
    result
}

fn write_rendered(
    args: &RenderCommandArgs,
    rendered: &Rendered,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<(), Failure> {
    match &args.out {
        None => stdout
            .write_all(rendered.to_yaml_stream().as_bytes())
            .or_else(ignore_broken_pipe)
            .map_err(|e| Failure::new(Code::ERROR, format!("writing output: {e}"))),
        Some(out) => {
            let n = write_out(out, rendered)?;
            let _ = writeln!(
                stderr,
                "lockstep: wrote {n} objects of {}/{} to {}",
                rendered.project,
                rendered.environment,
                out.display()
            );
            Ok(())
        }
    }
}

fn ignore_broken_pipe(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(e)
    }
}

/// Reads a project directory and renders one environment; problems are drawn on `stderr`.
pub fn render_dir(dir: &Path, req: &Request, stderr: &mut dyn Write) -> Result<Rendered, Failure> {
    let snapshot = Snapshot::read_dir(dir)
        .map_err(|e| Failure::new(Code::ERROR, format!("reading project: {e}")))?;
    let req = with_chart_archives(dir, &snapshot, req, stderr)?;
    render::render(&snapshot, &req).map_err(|diagnostics| {
        let _ = stderr.write_all(draw(&diagnostics).as_bytes());
        let n = diagnostics.0.len();
        Failure::new(
            Code::ERROR,
            format!(
                "render of {} (environment {}) failed with {n} problem{}; nothing was written",
                dir.display(),
                req.env,
                if n == 1 { "" } else { "s" }
            ),
        )
    })
}

/// Renders one environment of a project read from anywhere (`dir` is where its chart cache and
/// messages point); a failure is the drawn diagnostics, as text.
pub fn render_snapshot(dir: &Path, snapshot: &Snapshot, req: &Request) -> Result<Rendered, String> {
    let mut drawn = Vec::new();
    let req = with_chart_archives(dir, snapshot, req, &mut drawn)
        .map_err(|f| format!("{}{}", String::from_utf8_lossy(&drawn), f.message))?;
    render::render(snapshot, &req).map_err(|d| draw(&d))
}

/// The request with the archives of the project's repository and OCI charts (cached, else
/// fetched and checked against `lockstep.lock`).
fn with_chart_archives(
    dir: &Path,
    snapshot: &Snapshot,
    req: &Request,
    stderr: &mut dyn Write,
) -> Result<Request, Failure> {
    if !crate::source::charts::needs_archives(snapshot) {
        return Ok(req.clone());
    }
    let access = super::charts::local_access()?;
    let archives = crate::source::charts::gather(
        snapshot,
        &req.env,
        &access.store,
        &access.credentials,
        &access.scope,
    )
    .map_err(|d| {
        let _ = stderr.write_all(draw(&d.into()).as_bytes());
        Failure::new(
            Code::ERROR,
            format!(
                "render of {} (environment {}) failed: a chart could not be fetched; nothing was written",
                dir.display(),
                req.env
            ),
        )
    })?;
    Ok(Request {
        archives,
        ..req.clone()
    })
}

/// Writes one file per object under `out`, replacing earlier render output there.
fn write_out(out: &Path, rendered: &Rendered) -> Result<usize, Failure> {
    let fail = |what: &str, p: &Path, e: std::io::Error| {
        Failure::new(Code::ERROR, format!("{what} {}: {e}", p.display()))
    };
    if out.exists() {
        let is_empty = std::fs::read_dir(out)
            .map_err(|e| fail("reading", out, e))?
            .next()
            .is_none();
        if !is_empty && !out.join(OUT_MARKER).exists() {
            return Err(Failure::new(
                Code::ERROR,
                format!(
                    "--out {}: the directory is not empty and was not written by `lockstep render`; choose an empty or new directory",
                    out.display()
                ),
            ));
        }
        // Earlier output goes, so objects that are no longer rendered disappear from the tree.
        remove_yaml_files(out).map_err(|e| fail("clearing", out, e))?;
    }
    std::fs::create_dir_all(out).map_err(|e| fail("creating", out, e))?;
    std::fs::write(
        out.join(OUT_MARKER),
        "Written by `lockstep render --out`; this directory is replaced on every run.\n",
    )
    .map_err(|e| fail("writing", out, e))?;
    for m in &rendered.manifests {
        let path = out.join(m.file_name());
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| fail("creating", parent, e))?;
        }
        let text = format!("# Source: {}\n{}", m.source, m.to_yaml());
        std::fs::write(&path, text).map_err(|e| fail("writing", &path, e))?;
    }
    Ok(rendered.manifests.len())
}

fn remove_yaml_files(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            remove_yaml_files(&path)?;
            if std::fs::read_dir(&path)?.next().is_none() {
                std::fs::remove_dir(&path)?;
            }
        } else if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}
