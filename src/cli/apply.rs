//! `lockstep apply` and `lockstep diff`: render, decrypt in memory, validate with a server-side dry
//! run, then apply in stages (or show the diff), prune and wait.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde_json::json;

use crate::apply::{self, ADOPTED, Action, Event, Options, SealedPreview, Summary};
use crate::decrypt;
use crate::keys::KeyRing;
use crate::pipeline::{self, Fetched, StageError};
use crate::source::Snapshot;
use kube::Client;

use super::exit::{Code, Failure};
use super::keysources::{self, Env};
use super::render::{RenderArgs, draw};

/// Output format (its help lives on the flags, so help stays compact like every other command's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
#[allow(missing_docs)]
pub enum OutputFormat {
    // Lines for people.
    #[default]
    Text,
    // One JSON document for machines.
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
    /// Output format: text (lines for people) or json (one JSON document for machines).
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text, hide_possible_values = true)]
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
    /// How long the apply may wait in all (dependencies, CRDs, hooks, waves, health), e.g. 90s, 5m.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Arguments of `lockstep diff`.
#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    /// Render, cluster and key options.
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Compare Secrets and SOPS manifests by the digest of their rendered form and ciphertexts,
    /// without decrypting (as happens anyway when no identity opens the secrets).
    #[arg(long)]
    pub sealed: bool,
}

pub use crate::apply::parse_duration;

/// A client for the cluster the arguments name (counting its requests for `--output json`).
pub async fn client(args: &ClusterArgs) -> Result<kube::Client, Failure> {
    client_for(config(args).await?)
}

/// The cluster configuration the arguments name: `--kubeconfig`, else $KUBECONFIG or
/// ~/.kube/config, else the in-cluster ServiceAccount.
pub async fn config(args: &ClusterArgs) -> Result<kube::Config, Failure> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let fail = |e: String| Failure::new(Code::ERROR, format!("cluster connection: {e}"));
    let options = kube::config::KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    if let Some(context) = &args.context {
        check_context(args.kubeconfig.as_deref(), context)?;
    }
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

/// `--context NAME` must name a context of the kubeconfig in use (`--kubeconfig`, else
/// $KUBECONFIG, else ~/.kube/config); the error lists the ones there are.
fn check_context(kubeconfig: Option<&Path>, context: &str) -> Result<(), Failure> {
    let (read, file) = match kubeconfig {
        Some(path) => (
            kube::config::Kubeconfig::read_from(path),
            path.display().to_string(),
        ),
        None => (
            kube::config::Kubeconfig::read(),
            std::env::var("KUBECONFIG").unwrap_or_else(|_| "~/.kube/config".into()),
        ),
    };
    let Ok(kc) = read else {
        // Unreadable: the connection reports why.
        return Ok(());
    };
    if kc.contexts.iter().any(|c| c.name == context) {
        return Ok(());
    }
    let known: Vec<&str> = kc.contexts.iter().map(|c| c.name.as_str()).collect();
    Err(Failure::new(
        Code::ERROR,
        format!(
            "context {context:?} does not exist in {file}; its contexts: {}",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ),
    ))
}

/// A client for `config`, counting its requests.
pub fn client_for(config: kube::Config) -> Result<kube::Client, Failure> {
    apply::counting_client(config)
        .map_err(|e| Failure::new(Code::ERROR, format!("cluster connection: {e}")))
}

/// Runs `work` on a fresh runtime with a client of the cluster and the namespace it is about:
/// `namespace`, else the kubeconfig context's (else `default`).
pub fn with_cluster<T>(
    cluster: &ClusterArgs,
    namespace: Option<&str>,
    work: impl AsyncFnOnce(kube::Client, String) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(Code::ERROR, format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async {
        let config = config(cluster).await?;
        let namespace = namespace.map_or_else(|| config.default_namespace.clone(), str::to_string);
        let client = client_for(config)?;
        work(client, namespace).await
    })
}

fn requests_made() -> usize {
    apply::requests_made()
}

/// The CLI's side of the pipeline: a project directory (or one already in memory), identities
/// from sops's places and `--identity`, the options the flags give, and the cluster they name.
struct Local<'a> {
    dir: &'a Path,
    snapshot: Option<Snapshot>,
    env: &'a Env<'a>,
    identity: &'a [PathBuf],
    cluster: &'a ClusterArgs,
    options: Options,
}

impl pipeline::Inputs for Local<'_> {
    async fn fetch(&mut self) -> Result<Fetched, StageError> {
        let snapshot = match self.snapshot.take() {
            Some(s) => s,
            None => Snapshot::read_dir(self.dir)
                .map_err(|e| StageError::Fetch(format!("reading project: {e}")))?,
        };
        Ok(Fetched {
            snapshot,
            revision: self.options.revision.clone(),
            commit: None,
            tag: None,
            descends: None,
        })
    }

    async fn verify(&mut self, _: &Fetched) -> Result<(), StageError> {
        Ok(())
    }

    async fn identities(&mut self) -> Result<KeyRing, StageError> {
        keysources::load(self.env, self.identity).map_err(|e| StageError::Keys(e.to_string()))
    }

    fn key_hint(&self) -> String {
        decrypt::LOCAL_KEY_HINT.into()
    }

    fn show_path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    fn options(&self, _: &Fetched) -> Options {
        self.options.clone()
    }

    async fn client(&mut self) -> Result<Client, StageError> {
        client(self.cluster)
            .await
            .map_err(|f| StageError::Cluster(f.message))
    }

    async fn chart_access(&mut self) -> Result<pipeline::ChartAccess, StageError> {
        super::charts::local_access().map_err(|f| StageError::Fetch(f.message))
    }
}

/// The CLI's message and exit code for a failed step (`preview`: of `diff`, which applies nothing
/// anyway).
fn failure(dir: &Path, e: &StageError, preview: bool, stderr: &mut dyn Write) -> Failure {
    let stopped = if preview {
        "no diff was made"
    } else {
        "nothing was applied"
    };
    let message = match e {
        StageError::Render(d) => {
            let _ = stderr.write_all(draw(d).as_bytes());
            return Failure::new(
                Code::ERROR,
                format!("render of {} failed; {stopped}", dir.display()),
            );
        }
        StageError::Keys(_) | StageError::Decrypt { .. } => e.to_string(),
        StageError::Apply(a) if has_conflicts(a) => {
            return Failure::new(
                Code::ERROR,
                format!(
                    "{e}\n  other field managers own these fields: pass --force-conflicts to take them over (as `kubectl apply --server-side --force-conflicts` does)"
                ),
            );
        }
        _ => return Failure::new(Code::ERROR, e.to_string()),
    };
    Failure::new(
        e.sops_exit_code().map_or(Code::ERROR, Code::from_sops),
        format!("{message}\n  {stopped}"),
    )
}

/// Whether the server refused objects for field-manager conflicts.
fn has_conflicts(e: &apply::ApplyError) -> bool {
    let refusals = match e {
        apply::ApplyError::Validation { refusals, .. } | apply::ApplyError::Apply(refusals) => {
            refusals
        }
        _ => return false,
    };
    refusals.iter().any(|r| r.reason.contains("conflict with"))
}

/// Runs the pipeline up to (and including) apply or diff.
async fn pipeline(
    args: &PipelineArgs,
    opts: Options,
    env: &Env<'_>,
    stderr: &mut dyn Write,
) -> Result<Previewed, Failure> {
    let req = args.render.request()?;
    pipeline_of(None, &req, args, opts, env, stderr).await
}

/// What a pipeline run gives the commands: the summary, `project/environment`, and whether (and
/// why) secret-bearing objects stayed sealed.
pub(crate) type Previewed = (Summary, String, Option<pipeline::SealedNote>);

/// [`pipeline`] for a project already in memory (`args.render.dir` then only names it in
/// messages), or read from `args.render.dir`.
pub(crate) async fn pipeline_of(
    snapshot: Option<Snapshot>,
    req: &crate::render::Request,
    args: &PipelineArgs,
    opts: Options,
    env: &Env<'_>,
    stderr: &mut dyn Write,
) -> Result<Previewed, Failure> {
    let dir = &args.render.dir;
    let preview = opts.dry_run;
    let mut inputs = Local {
        dir,
        snapshot,
        env,
        identity: &args.identity,
        cluster: &args.cluster,
        options: opts,
    };
    let mut progress = Progress::new(args.output == OutputFormat::Text);
    let result = pipeline::run(&mut inputs, req, &mut |e| progress.show(e, stderr)).await;
    progress.end(stderr);
    match result {
        Ok(done) => Ok((done.summary, done.target, done.sealed)),
        Err(failed) => Err(failure(dir, &failed.error, preview, stderr)),
    }
}

/// Progress lines: on a terminal the current stage shows a counter updated in place; in a log,
/// plain lines.
struct Progress {
    text: bool,
    terminal: bool,
    stage: Option<(String, usize, usize)>,
}

impl Progress {
    fn new(text: bool) -> Progress {
        Progress {
            text,
            terminal: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            stage: None,
        }
    }

    fn show(&mut self, e: &Event, stderr: &mut dyn Write) {
        if !self.text {
            return;
        }
        let terminal = self.terminal;
        match e {
            Event::Stage(name, n) => {
                if terminal && self.stage.is_some() {
                    let _ = writeln!(stderr);
                }
                if terminal {
                    let _ = write!(stderr, "\r\x1b[2Klockstep: {name}: 0/{n}");
                    let _ = stderr.flush();
                } else {
                    let _ = writeln!(stderr, "lockstep: {name}: {n} object(s)");
                }
                self.stage = Some((name.clone(), 0, *n));
            }
            Event::Note(note) => {
                if terminal && self.stage.is_some() {
                    let _ = writeln!(stderr);
                }
                let _ = writeln!(stderr, "lockstep: note: {note}");
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
                if let Some((name, done, total)) = self.stage.as_mut() {
                    *done += 1;
                    if terminal {
                        let _ = write!(stderr, "\r\x1b[2Klockstep: {name}: {done}/{total}");
                        let _ = stderr.flush();
                    }
                }
            }
        }
    }

    fn end(&self, stderr: &mut dyn Write) {
        if self.terminal && self.text && self.stage.is_some() {
            let _ = writeln!(stderr);
        }
    }
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
        .map_err(|e| Failure::new(Code::ERROR, format!("cannot start the async runtime: {e}")))
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
        sealed: SealedPreview::Never,
        revision: git_revision(&args.pipeline.render.dir),
        owner: None,
        gate: None,
    };
    let rt = runtime()?;
    let (summary, what, _) = rt.block_on(pipeline(&args.pipeline, opts, env, stderr))?;
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
            Code::NOT_READY,
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
        sealed: if args.sealed {
            SealedPreview::Always
        } else {
            SealedPreview::WithoutKeys
        },
        ..Options::default()
    };
    let rt = runtime()?;
    let (summary, what, sealed) = rt.block_on(pipeline(&args.pipeline, opts, env, stderr))?;
    if let Some(note) = &sealed {
        let _ = writeln!(
            stderr,
            "lockstep: secret-bearing objects compared sealed ({}): by the digest of their rendered form and ciphertexts; no value was read",
            note.why
        );
        for source in &note.unreadable {
            let _ = writeln!(
                stderr,
                "lockstep: {source}: not compared (a SOPS manifest whose kind and name are encrypted too)"
            );
        }
    }
    let changed = summary.changes().next().is_some()
        || sealed.as_ref().is_some_and(|n| !n.unreadable.is_empty());
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
            for (id, action, note) in &summary.objects {
                match (action, note) {
                    (Action::Pruned, _) => {
                        let _ = writeln!(stdout, "would prune {id}");
                    }
                    (Action::Created | Action::Configured, Some(note)) if note == ADOPTED => {
                        let _ = writeln!(stdout, "would adopt {id}: {ADOPTED}");
                    }
                    (Action::Created | Action::Configured, Some(note))
                        if apply::sealed::Verdict::is_report(note) =>
                    {
                        let _ = writeln!(stdout, "{id}: {note}");
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(changed)
}
