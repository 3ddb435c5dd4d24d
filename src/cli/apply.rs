//! `lockstep apply` and `lockstep diff`: render, decrypt in memory, validate with a server-side dry
//! run, then apply in stages (or show the diff), prune and wait.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde_json::json;

use crate::apply::{self, Action, ApplyError, Event, Options, Summary};
use crate::decrypt::{self, DecryptError};
use crate::source::Snapshot;

use super::crypt::{Failure, explain};
use super::keysources::{self, Env};
use super::render::{RenderArgs, draw};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON document for machines.
    Json,
}

/// Where the cluster is.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use (default: the current one).
    #[arg(long)]
    pub context: Option<String>,
}

/// Arguments shared by `apply` and `diff`.
#[derive(Debug, Clone, Args)]
pub struct PipelineArgs {
    /// What to render.
    #[command(flatten)]
    pub render: RenderArgs,
    /// The cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// age identity file to decrypt with (repeatable; in addition to the sops sources).
    #[arg(long, value_name = "FILE")]
    pub identity: Vec<PathBuf>,
    /// Take over fields another field manager owns (reported as conflicts otherwise).
    #[arg(long)]
    pub force_conflicts: bool,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// Arguments of `lockstep apply`.
#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// Render, cluster and key options.
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Delete objects that left the set (from the inventory).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub prune: bool,
    /// Allow pruning everything or more than half of the inventory.
    #[arg(long)]
    pub allow_mass_prune: bool,
    /// Also prune CustomResourceDefinitions, Namespaces and PersistentVolumeClaims.
    #[arg(long)]
    pub prune_protected: bool,
    /// Wait until applied objects are healthy.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub wait: bool,
    /// How long to wait for health, e.g. 90s, 5m.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Arguments of `lockstep diff`.
#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    /// Render, cluster and key options.
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

pub use crate::apply::parse_duration;

const FAILED: u8 = 2;

/// A client for the cluster the arguments name (counting its requests for `--output json`).
pub async fn client(args: &ClusterArgs) -> Result<kube::Client, Failure> {
    client_for(config(args).await?)
}

/// The cluster configuration the arguments name: `--kubeconfig`, else $KUBECONFIG or
/// ~/.kube/config, else the in-cluster ServiceAccount.
pub async fn config(args: &ClusterArgs) -> Result<kube::Config, Failure> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let fail = |e: String| Failure::new(FAILED, format!("cluster connection: {e}"));
    let options = kube::config::KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    Ok(match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| fail(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| fail(format!("{}: {e}", path.display())))?
        }
        None => match kube::Config::from_kubeconfig(&options).await {
            Ok(c) => c,
            Err(kc_err) => kube::Config::incluster().map_err(|_| {
                fail(format!(
                    "no kubeconfig ({kc_err}) and not running in a cluster; pass --kubeconfig"
                ))
            })?,
        },
    })
}

/// A client for `config`, counting its requests.
pub fn client_for(config: kube::Config) -> Result<kube::Client, Failure> {
    apply::counting_client(config)
        .map_err(|e| Failure::new(FAILED, format!("cluster connection: {e}")))
}

fn requests_made() -> usize {
    apply::requests_made()
}

fn decrypt_failure(dir: &Path, e: &DecryptError, searched: &[String]) -> Failure {
    match e {
        DecryptError::Sops { file, source } => Failure::new(
            source.exit_code(),
            format!(
                "{}\n  nothing was applied",
                explain(&dir.join(file), source, searched)
            ),
        ),
        other => Failure::new(FAILED, format!("{other}\n  nothing was applied")),
    }
}

fn apply_failure(e: &ApplyError) -> Failure {
    Failure::new(FAILED, e.to_string())
}

/// Runs the pipeline up to (and including) apply or diff.
async fn pipeline(
    args: &PipelineArgs,
    opts: Options,
    env: &Env<'_>,
    stderr: &mut dyn Write,
) -> Result<(Summary, String), Failure> {
    let req = args.render.request()?;
    let snapshot = Snapshot::read_dir(&args.render.dir)
        .map_err(|e| Failure::new(FAILED, format!("reading project: {e}")))?;
    pipeline_of(&snapshot, &req, args, opts, env, stderr).await
}

/// [`pipeline`] for a project already in memory (`args.render.dir` only names it in messages).
pub(crate) async fn pipeline_of(
    snapshot: &Snapshot,
    req: &crate::render::Request,
    args: &PipelineArgs,
    opts: Options,
    env: &Env<'_>,
    stderr: &mut dyn Write,
) -> Result<(Summary, String), Failure> {
    let dir = &args.render.dir;
    let rendered = crate::render::render(snapshot, req).map_err(|d| {
        let _ = stderr.write_all(draw(&d).as_bytes());
        Failure::new(
            FAILED,
            format!("render of {} failed; nothing was applied", dir.display()),
        )
    })?;
    let ring = keysources::load(env, &args.identity)
        .map_err(|e| Failure::new(FAILED, format!("{e}\n  nothing was applied")))?;
    let set = decrypt::decrypt(&rendered, snapshot, &ring)
        .map_err(|e| decrypt_failure(dir, &e, &ring.searched))?;
    drop(ring);
    let client = client(&args.cluster).await?;
    let text = args.output == OutputFormat::Text;
    // On a terminal the current stage shows a counter updated in place; in a log, plain lines.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut stage: Option<(String, usize, usize)> = None;
    let mut progress = |e: &Event| {
        if !text {
            return;
        }
        match e {
            Event::Stage(name, n) => {
                if terminal && stage.is_some() {
                    let _ = writeln!(stderr);
                }
                if terminal {
                    let _ = write!(stderr, "\r\x1b[2Klockstep: {name}: 0/{n}");
                    let _ = stderr.flush();
                } else {
                    let _ = writeln!(stderr, "lockstep: {name}: {n} object(s)");
                }
                stage = Some((name.clone(), 0, *n));
            }
            Event::Object(id, action, note) => {
                if *action != Action::Unchanged {
                    let note = note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default();
                    let action = action.to_string();
                    if terminal {
                        let _ = write!(stderr, "\r\x1b[2K");
                    }
                    let _ = writeln!(stderr, "  {action:<10} {id}{note}");
                }
                if let Some((name, done, total)) = stage.as_mut() {
                    *done += 1;
                    if terminal {
                        let _ = write!(stderr, "\r\x1b[2Klockstep: {name}: {done}/{total}");
                        let _ = stderr.flush();
                    }
                }
            }
        }
    };
    let result = apply::apply(&client, &set, &opts, &mut progress).await;
    if terminal && text {
        let _ = writeln!(stderr);
    }
    let summary = result.map_err(|e| apply_failure(&e))?;
    Ok((summary, format!("{}/{}", set.project, set.environment)))
}

/// The project's Git commit (with `-dirty` when the work tree has changes), or empty.
fn git_revision(dir: &Path) -> String {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "HEAD"]) {
        Some(head) => match run(&["status", "--porcelain", "--", "."]) {
            Some(s) if !s.is_empty() => format!("{head}-dirty"),
            _ => head,
        },
        None => String::new(),
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::new(FAILED, format!("cannot start the async runtime: {e}")))
}

fn counts(summary: &Summary) -> serde_json::Value {
    json!({
        "created": summary.count(Action::Created),
        "configured": summary.count(Action::Configured),
        "unchanged": summary.count(Action::Unchanged),
        "pruned": summary.count(Action::Pruned),
        "kept": summary.count(Action::Kept),
        "notReady": summary.not_ready.len(),
    })
}

fn objects_json(summary: &Summary) -> serde_json::Value {
    summary
        .objects
        .iter()
        .map(|(id, action, note)| {
            json!({
                "group": id.group, "kind": id.kind, "namespace": id.namespace, "name": id.name,
                "action": action.to_string(), "note": note,
            })
        })
        .collect()
}

/// Runs `lockstep apply`. Exit 0 when applied and healthy, 1 when objects are not ready, 2 on error.
pub fn run_apply(
    args: &ApplyArgs,
    env: &Env<'_>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<(), Failure> {
    let opts = Options {
        force_conflicts: args.pipeline.force_conflicts,
        prune: args.prune,
        allow_mass_prune: args.allow_mass_prune,
        prune_protected: args.prune_protected,
        wait: args.wait,
        timeout: args.timeout,
        concurrency: args.pipeline.concurrency,
        dry_run: false,
        revision: git_revision(&args.pipeline.render.dir),
        gate: None,
    };
    let rt = runtime()?;
    let (summary, what) = rt.block_on(pipeline(&args.pipeline, opts, env, stderr))?;
    report_apply(&summary, &what, args.pipeline.output, stdout, stderr)
}

/// Prints what an apply did; exit 1 when objects are not ready.
pub(crate) fn report_apply(
    summary: &Summary,
    what: &str,
    output: OutputFormat,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<(), Failure> {
    match output {
        OutputFormat::Json => {
            let doc = json!({
                "applied": what,
                "counts": counts(summary),
                "requests": requests_made(),
                "objects": objects_json(summary),
                "notReady": summary.not_ready.iter().map(|(id, why)| json!({"object": id.to_string(), "reason": why})).collect::<Vec<_>>(),
            });
            let _ = writeln!(stdout, "{doc}");
        }
        OutputFormat::Text => {
            for (id, why) in &summary.not_ready {
                let _ = writeln!(stderr, "  not ready  {id}: {why}");
            }
            let _ = writeln!(
                stdout,
                "applied {what}: {} created, {} configured, {} unchanged, {} pruned, {} kept, {} not ready",
                summary.count(Action::Created),
                summary.count(Action::Configured),
                summary.count(Action::Unchanged),
                summary.count(Action::Pruned),
                summary.count(Action::Kept),
                summary.not_ready.len()
            );
        }
    }
    if summary.not_ready.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(
            1,
            format!("{} object(s) did not become ready", summary.not_ready.len()),
        ))
    }
}

/// Runs `lockstep diff`. Exit 0 = no changes, 1 = changes, 2 = error (as `kubectl diff`).
pub fn run_diff(
    args: &DiffArgs,
    env: &Env<'_>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<bool, Failure> {
    let opts = Options {
        force_conflicts: args.pipeline.force_conflicts,
        prune: true,
        allow_mass_prune: true,
        wait: false,
        concurrency: args.pipeline.concurrency,
        dry_run: true,
        ..Options::default()
    };
    let rt = runtime()?;
    let (summary, what) = rt.block_on(pipeline(&args.pipeline, opts, env, stderr))?;
    let changed = summary
        .objects
        .iter()
        .any(|(_, a, _)| matches!(a, Action::Created | Action::Configured | Action::Pruned));
    match args.pipeline.output {
        OutputFormat::Json => {
            let doc = json!({
                "diff": what,
                "counts": counts(&summary),
                "requests": requests_made(),
                "objects": objects_json(&summary),
                "diffs": summary.diffs.iter().map(|(id, d)| json!({"object": id.to_string(), "diff": d})).collect::<Vec<_>>(),
            });
            let _ = writeln!(stdout, "{doc}");
        }
        OutputFormat::Text => {
            for (_, d) in &summary.diffs {
                let _ = stdout.write_all(d.as_bytes());
            }
            for (id, action, _) in &summary.objects {
                if *action == Action::Pruned {
                    let _ = writeln!(stdout, "would prune {id}");
                }
            }
        }
    }
    Ok(changed)
}
