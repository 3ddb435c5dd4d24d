//! `lockstep charts update|pull`: pin the project's repository and OCI charts by digest in
//! `lockstep.lock`, and fill the local cache so renders need no network.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};

use crate::pipeline::ChartAccess;
use crate::render::lock::LOCK_FILE;
use crate::source::Snapshot;
use crate::source::charts::{self, Credentials, Store};

use super::exit::{Code, Failure};
use super::render::draw;

/// Arguments of `lockstep charts`.
#[derive(Debug, Clone, Args)]
pub struct ChartsArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: ChartsAction,
}

/// `lockstep charts` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum ChartsAction {
    /// Find each repository and OCI chart at its version and write its digest to lockstep.lock
    /// (as `helm dependency update` writes Chart.lock).
    Update(UpdateArgs),
    /// Fetch every chart locked in lockstep.lock into the cache, checking each digest.
    Pull(PullArgs),
}

/// Arguments of `lockstep charts update`.
#[derive(Debug, Clone, Args)]
pub struct UpdateArgs {
    /// Only these releases (default: every repository and OCI chart).
    #[arg(long = "release", short = 'r', value_name = "RELEASE")]
    pub releases: Vec<String>,
    /// The project directory (holding lockstep.yaml).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

/// Arguments of `lockstep charts pull`.
#[derive(Debug, Clone, Args)]
pub struct PullArgs {
    /// The project directory (holding lockstep.yaml).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

/// Runs `lockstep charts …`.
pub fn run(
    args: &ChartsArgs,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<(), Failure> {
    let access = local_access()?;
    match &args.action {
        ChartsAction::Update(a) => update(a, &access, stdout, stderr),
        ChartsAction::Pull(a) => pull(a, &access, stdout, stderr),
    }
}

/// The CLI's chart cache (on disk, see [`Store::default_dir`]) and Helm's own credentials.
pub fn local_access() -> Result<ChartAccess, Failure> {
    let credentials = Credentials::from_helm()
        .map_err(|e| Failure::new(Code::ERROR, format!("reading Helm's credentials: {e}")))?;
    Ok(ChartAccess {
        store: Arc::new(Store::on_disk(Store::default_dir())),
        credentials: Arc::new(credentials),
        scope: String::new(),
    })
}

fn read(dir: &Path) -> Result<Snapshot, Failure> {
    Snapshot::read_dir(dir).map_err(|e| Failure::new(Code::ERROR, format!("reading project: {e}")))
}

fn drawn(dir: &Path, what: &str, d: crate::render::Diagnostic, stderr: &mut dyn Write) -> Failure {
    let _ = stderr.write_all(draw(&d.into()).as_bytes());
    Failure::new(
        Code::ERROR,
        format!(
            "{what} of {} failed; {LOCK_FILE} was not changed",
            dir.display()
        ),
    )
}

fn update(
    args: &UpdateArgs,
    access: &ChartAccess,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<(), Failure> {
    let snapshot = read(&args.dir)?;
    let updated = charts::update(
        &snapshot,
        &args.releases,
        &access.store,
        &access.credentials,
    )
    .map_err(|d| drawn(&args.dir, "charts update", d, stderr))?;
    let path = args.dir.join(LOCK_FILE);
    let text = updated.lock.to_yaml();
    let before = std::fs::read_to_string(&path).unwrap_or_default();
    if before != text {
        let tmp = args.dir.join(format!(".{LOCK_FILE}.tmp"));
        std::fs::write(&tmp, &text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| Failure::new(Code::ERROR, format!("writing {}: {e}", path.display())))?;
    }
    for line in &updated.changes {
        let _ = writeln!(stdout, "{line}");
    }
    let _ = writeln!(
        stderr,
        "lockstep: {} chart{} locked in {}{}",
        updated.lock.charts.len(),
        if updated.lock.charts.len() == 1 {
            ""
        } else {
            "s"
        },
        path.display(),
        if updated.changes.is_empty() {
            " (unchanged)"
        } else {
            ""
        }
    );
    Ok(())
}

fn pull(
    args: &PullArgs,
    access: &ChartAccess,
    _stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<(), Failure> {
    let snapshot = read(&args.dir)?;
    let (fetched, cached) = charts::pull(&snapshot, &access.store, &access.credentials)
        .map_err(|d| drawn(&args.dir, "charts pull", d, stderr))?;
    let _ = writeln!(
        stderr,
        "lockstep: {fetched} chart{} fetched, {cached} already in {}",
        if fetched == 1 { "" } else { "s" },
        Store::default_dir().display()
    );
    Ok(())
}
