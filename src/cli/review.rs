//! `lockstep review`: every environment rendered at two revisions (keyless, secrets sealed) and
//! compared, printed as Markdown for a pull-request comment. Exit codes as `diff`: 0 nothing
//! changes, 1 something does, 2 an error (a render that fails at the new revision included).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::render::{Diagnostic, PROJECT_FILE, Project, Request};
use crate::review::{self, Review, Side};
use crate::source::{Snapshot, git};

use super::exit::{Code, Failure};
use super::render::render_snapshot;

/// Arguments of `lockstep review`.
#[derive(Debug, Clone, Args)]
pub struct ReviewArgs {
    /// The old revision, anything `git rev-parse` takes (for a pull request: the merge base,
    /// `$(git merge-base origin/main HEAD)`).
    #[arg(long, value_name = "REV", default_value = "HEAD")]
    pub from: String,
    /// The new revision (default: the project as it is on disk, uncommitted changes included).
    #[arg(long, value_name = "REV")]
    pub to: Option<String>,
    /// Only this environment (repeatable; default: every environment at either revision).
    #[arg(long = "env", short = 'e', value_name = "ENV")]
    pub envs: Vec<String>,
    /// Largest comment to print, in characters (diffs past it are left out, with a note).
    #[arg(long, default_value_t = review::MARKDOWN_BUDGET, value_name = "CHARS")]
    pub max_size: usize,
    /// The project directory (holding lockstep.yaml), inside a Git work tree.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

/// One revision of the project: a label for the comment and its files.
struct Revision {
    label: String,
    snapshot: Snapshot,
}

fn at(dir: &Path, rev: &str) -> Result<Revision, Failure> {
    let commit =
        git::read_local(dir, rev).map_err(|e| Failure::new(Code::ERROR, format!("review: {e}")))?;
    let short = &commit.id[..commit.id.len().min(12)];
    let mut subject = commit.subject.replace(['`', '|'], "'");
    if subject.chars().count() > 72 {
        subject = format!("{}…", subject.chars().take(71).collect::<String>());
    }
    Ok(Revision {
        label: if subject.is_empty() {
            format!("`{short}`")
        } else {
            format!("`{short}` ({subject})")
        },
        snapshot: commit.snapshot,
    })
}

/// One revision's lockstep.yaml, parsed (`None` when it has none, or not as UTF-8 text).
fn project_of(rev: &Revision) -> Option<Result<Project, Diagnostic>> {
    let text = std::str::from_utf8(rev.snapshot.get(PROJECT_FILE)?).ok()?;
    Some(Project::parse(text))
}

/// The environments of a parsed lockstep.yaml (none when it is missing or invalid).
fn environments(project: &Option<Result<Project, Diagnostic>>) -> Vec<String> {
    match project {
        Some(Ok(p)) => p.environments.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

fn side(dir: &Path, rev: &Revision, env: &str, defined: bool) -> Side {
    if !defined {
        return Side::Absent;
    }
    let req = Request {
        env: env.to_string(),
        ..Request::default()
    };
    match render_snapshot(dir, &rev.snapshot, &req) {
        Ok(rendered) => Side::Rendered(rendered),
        Err(why) => Side::Failed(why),
    }
}

/// Runs `lockstep review`; returns whether anything changes.
pub fn run(args: &ReviewArgs, stdout: &mut dyn Write) -> Result<bool, Failure> {
    let from = at(&args.dir, &args.from)?;
    let to = match &args.to {
        Some(rev) => at(&args.dir, rev)?,
        None => Revision {
            label: "the working tree".into(),
            snapshot: Snapshot::read_dir(&args.dir)
                .map_err(|e| Failure::new(Code::ERROR, format!("review: reading project: {e}")))?,
        },
    };
    let new_project = project_of(&to);
    let (old_envs, new_envs) = (environments(&project_of(&from)), environments(&new_project));
    if new_envs.is_empty() && to.snapshot.get(PROJECT_FILE).is_none() {
        return Err(Failure::new(
            Code::ERROR,
            format!(
                "review: {} has no {PROJECT_FILE} at {}; give the project directory",
                args.dir.display(),
                to.label
            ),
        ));
    }
    let mut names: Vec<String> = old_envs.iter().chain(&new_envs).cloned().collect();
    names.sort();
    names.dedup();
    if !args.envs.is_empty() {
        if let Some(unknown) = args.envs.iter().find(|e| !names.contains(e)) {
            return Err(Failure::new(
                Code::ERROR,
                format!(
                    "review: no environment {unknown:?} at either revision (there are: {})",
                    names.join(", ")
                ),
            ));
        }
        names.retain(|n| args.envs.contains(n));
    }
    // A lockstep.yaml that does not parse at the new revision is a failure of every environment.
    let broken = new_project.and_then(Result::err);
    let environments = names
        .iter()
        .map(|env| {
            let old = side(&args.dir, &from, env, old_envs.contains(env));
            let new = match &broken {
                Some(d) => Side::Failed(format!("{PROJECT_FILE}: {}", d.message)),
                None => side(&args.dir, &to, env, new_envs.contains(env)),
            };
            review::compare(env, &old, &new)
        })
        .collect();
    let review = Review {
        from: from.label,
        to: to.label,
        environments,
    };
    stdout
        .write_all(review::markdown(&review, args.max_size).as_bytes())
        .map_err(|e| Failure::new(Code::ERROR, format!("writing output: {e}")))?;
    if review.failed() {
        return Err(Failure::new(
            Code::ERROR,
            "review: a render failed (named in the review); fix it before merging",
        ));
    }
    Ok(review.changed())
}
