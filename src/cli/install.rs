//! `lockstep install`: render (or apply) the controller's own install manifests — the built-in
//! lockstep project from `templates/` of the source tree — with the same pipeline as any project.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::apply::Options;
use crate::controller::install;

use super::apply::{
    ClusterArgs, OutputFormat, PipelineArgs, parse_duration, pipeline_of, report_apply, runtime,
};
use super::exit::{Code, Failure};
use super::keysources::Env;
use super::render::{RenderArgs, ValuesArgs, draw};

/// The values `lockstep install --set` takes (those of `templates/values.yaml`).
const SETTABLE: &str = "Values (--set PATH=VALUE, --set-string, -f FILE):
  image.repository   ghcr.io/lockstep-dev/lockstep (build and push it: see the Dockerfile)
  image.tag          its tag (default: this binary's version)
  image.pullPolicy   IfNotPresent
  replicas           1; more are safe (leader election on a Lease)
  controller.poll    5s; how often due Syncs are looked for
  controller.concurrency  4; Syncs reconciled at once
  controller.port    8080; POST /hook/<namespace>/<name>, /healthz, /readyz (the Service's port)
  controller.metricsPort  8081; /metrics, /healthz, /readyz (Service lockstep-controller-metrics)
  controller.defaultServiceAccount  the account Syncs naming none act as (in their namespace)
  controller.renderMemory, controller.renderTimeout  48 (MiB), 60s; each render's child process
  applyAs            cluster-admin, or impersonate (every Sync applies as its serviceAccountName)
  tenantNamespaces   \"a,b\": serve and impersonate only in these namespaces (default: all)
  networkPolicy      true; ingress only on the two ports
  resources.requests.cpu, resources.requests.memory, resources.limits.memory";

/// Arguments of `lockstep install`.
#[derive(Debug, Clone, Args)]
#[command(after_help = SETTABLE)]
pub struct InstallArgs {
    /// Apply the manifests to the cluster (default: print them).
    #[arg(long)]
    pub apply: bool,
    /// Overrides of `templates/values.yaml`, e.g. `--set replicas=2`,
    /// `--set image.repository=registry.local/lockstep`, `--set applyAs=impersonate`.
    #[command(flatten)]
    pub values: ValuesArgs,
    /// The cluster (with --apply).
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// With --apply: wait until the controller is available.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub wait: bool,
    /// How long to wait, e.g. 90s, 5m.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Output format of --apply: text or json.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text, hide_possible_values = true)]
    pub output: OutputFormat,
}

/// Runs `lockstep install`.
pub fn run(
    args: &InstallArgs,
    env: &Env<'_>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<(), Failure> {
    let render = RenderArgs {
        env: install::ENVIRONMENT.into(),
        dir: PathBuf::from("<built-in install project>"),
        // The image defaults to this binary's version; the user's --set comes after and wins.
        values: ValuesArgs {
            set: std::iter::once(format!("image.tag={}", env!("CARGO_PKG_VERSION")))
                .chain(args.values.set.iter().cloned())
                .collect(),
            ..args.values.clone()
        },
    };
    let req = render.request()?;
    let snapshot = install::snapshot();
    if !args.apply {
        let rendered = crate::render::render(&snapshot, &req).map_err(|d| {
            let _ = stderr.write_all(draw(&d).as_bytes());
            Failure::new(Code::ERROR, "the install manifests did not render")
        })?;
        let _ = stdout.write_all(rendered.to_yaml_stream().as_bytes());
        return Ok(());
    }
    let pipeline = PipelineArgs {
        render,
        cluster: args.cluster.clone(),
        identity: Vec::new(),
        force_conflicts: false,
        concurrency: 16,
        output: args.output,
    };
    let opts = Options {
        wait: args.wait,
        timeout: args.timeout,
        revision: format!("lockstep {}", env!("CARGO_PKG_VERSION")),
        ..Options::default()
    };
    let rt = runtime()?;
    let (summary, what, _) = rt.block_on(pipeline_of(
        Some(snapshot),
        &req,
        &pipeline,
        opts,
        env,
        stderr,
    ))?;
    report_apply(&summary, &what, args.output, stdout, stderr)
}
