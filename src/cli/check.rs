//! `check` (the pre-commit guard), `hook install`, and `filestatus`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{Args, Subcommand};

use super::crypt;
use super::exit::{Code, Failure};
use super::keysources::{self, Env};
use super::rekey::files_under;
use crate::sops::store::Format;
use crate::sops::{self, SopsError};

/// `lockstep check`
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Files or directories (default: the working directory).
    pub paths: Vec<PathBuf>,
    /// Check the content staged for commit (`git diff --cached`) instead of the working tree.
    #[arg(long)]
    pub staged: bool,
    /// Also try the identities in FILE for the MAC check; repeatable.
    #[arg(long, value_name = "FILE")]
    pub identity: Vec<PathBuf>,
}

/// `lockstep hook`
#[derive(Debug, Args)]
pub struct HookArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: HookAction,
}

/// Git hook actions.
#[derive(Debug, Subcommand)]
pub enum HookAction {
    /// Write `.git/hooks/pre-commit` running `lockstep check --staged`.
    Install {
        /// Replace an existing pre-commit hook.
        #[arg(long)]
        force: bool,
    },
}

/// `lockstep filestatus`
#[derive(Debug, Args)]
pub struct FilestatusArgs {
    /// The file to inspect.
    pub file: PathBuf,
    /// Input format (default: from the file extension).
    #[arg(long, value_name = "TYPE")]
    pub input_type: Option<String>,
}

/// A rule-matched file and why it is not acceptable.
fn verdict(path: &Path, bytes: &[u8], ring: &crate::keys::KeyRing) -> Option<String> {
    let format = Format::from_path(path);
    match sops::check_structure(bytes, format) {
        Err(SopsError::NotEncrypted) => Some("matches a creation rule but is not encrypted".into()),
        Err(e) => Some(e.to_string()),
        Ok(meta) => {
            // With a key at hand, verify the values and the MAC too.
            if ring.identities.is_empty() {
                return None;
            }
            match sops::data_key(&meta, ring) {
                Err(_) => None, // not ours to open: the structure check is all we can do
                Ok(_) => match sops::decrypt(bytes, format, ring, false) {
                    Ok(_) => None,
                    Err(e) => Some(e.to_string()),
                },
            }
        }
    }
}

/// Runs git and returns stdout, or a failure naming the command.
fn git(args: &[&str]) -> Result<Vec<u8>, Failure> {
    let out = Command::new("git")
        .args(args)
        .output()
        .map_err(|e| Failure::new(Code::ERROR, format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(Failure::new(
            Code::ERROR,
            format!(
                "git {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(out.stdout)
}

/// `lockstep check`: every file matching a creation rule (with a `path_regex`) must be encrypted with a
/// valid structure, and a valid MAC when a key is available. Exit 1 lists the offenders.
pub fn check(args: &CheckArgs, env: &Env<'_>, stdout: &mut dyn Write) -> Result<(), Failure> {
    let ring = keysources::load(env, &args.identity).unwrap_or_default();
    let candidates: Vec<(PathBuf, Option<Vec<u8>>)> = if args.staged {
        let root = String::from_utf8_lossy(&git(&["rev-parse", "--show-toplevel"])?)
            .trim()
            .to_string();
        let names = git(&[
            "diff",
            "--cached",
            "--name-only",
            "--diff-filter=ACMR",
            "-z",
        ])?;
        names
            .split(|b| *b == 0)
            .filter(|n| !n.is_empty())
            .map(|n| {
                let rel = String::from_utf8_lossy(n).into_owned();
                let blob = git(&["show", &format!(":{rel}")]).ok();
                (Path::new(&root).join(rel), blob)
            })
            .collect()
    } else {
        files_under(&args.paths)
            .into_iter()
            .map(|p| (p, None))
            .collect()
    };
    let mut offenders = Vec::new();
    let mut checked = 0;
    for (path, staged) in candidates {
        if path.file_name().is_some_and(|n| n == ".sops.yaml") {
            continue;
        }
        let config = crypt::find_config(None, env, &path)?;
        let abs = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
        let matched = config
            .as_ref()
            .and_then(|(dir, c)| c.rule_for(&abs, dir))
            .is_some_and(|r| r.path_regex.is_some());
        if !matched {
            continue;
        }
        let bytes = match staged {
            Some(b) => b,
            None => match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    offenders.push(format!("{}: cannot read: {e}", path.display()));
                    continue;
                }
            },
        };
        checked += 1;
        if let Some(why) = verdict(&path, &bytes, &ring) {
            offenders.push(format!("{}: {why}", path.display()));
        }
    }
    if offenders.is_empty() {
        // A pre-commit hook (`--staged`) is quiet on success, as hooks are.
        if !args.staged {
            let _ = writeln!(
                stdout,
                "{checked} file(s) matching creation rules, all encrypted"
            );
        }
        Ok(())
    } else {
        Err(Failure::new(
            Code::GENERIC,
            format!(
                "{} of {checked} file(s) matching creation rules are not safely encrypted:\n  {}\n  fix: `lockstep encrypt -i FILE` (or `lockstep edit FILE`), then stage the encrypted file",
                offenders.len(),
                offenders.join("\n  ")
            ),
        ))
    }
}

const HOOK_MARK: &str = "# installed by `lockstep hook install`";

/// `lockstep hook install`
pub fn hook(args: &HookArgs, stdout: &mut dyn Write) -> Result<(), Failure> {
    let HookAction::Install { force } = args.action;
    install_hook(Path::new("."), force, stdout)
}

/// Installs the pre-commit hook of the Git repository that holds `dir`.
pub fn install_hook(dir: &Path, force: bool, stdout: &mut dyn Write) -> Result<(), Failure> {
    let dir_arg = dir.to_string_lossy();
    let hooks =
        String::from_utf8_lossy(&git(&["-C", &dir_arg, "rev-parse", "--git-path", "hooks"])?)
            .trim()
            .to_string();
    let path = dir.join(hooks).join("pre-commit");
    if let Ok(existing) = std::fs::read_to_string(&path)
        && !existing.contains(HOOK_MARK)
        && !force
    {
        return Err(Failure::new(
            Code::ERROR,
            format!(
                "{} exists and was not written by lockstep; add `lockstep check --staged` to it, or pass --force",
                path.display()
            ),
        ));
    }
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "lockstep".into());
    let script = format!(
        "#!/bin/sh\n{HOOK_MARK}\n# Refuses a commit that stages a secrets file (per .sops.yaml creation rules) unencrypted.\nif command -v lockstep >/dev/null 2>&1; then exec lockstep check --staged; fi\nexec '{exe}' check --staged\n"
    );
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            Failure::new(
                Code::COULD_NOT_WRITE_OUTPUT_FILE,
                format!("{}: {e}", dir.display()),
            )
        })?;
    }
    std::fs::write(&path, script).map_err(|e| {
        Failure::new(
            Code::COULD_NOT_WRITE_OUTPUT_FILE,
            format!("{}: cannot write: {e}", path.display()),
        )
    })?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(|e| {
        Failure::new(
            Code::COULD_NOT_WRITE_OUTPUT_FILE,
            format!("{}: {e}", path.display()),
        )
    })?;
    let _ = writeln!(stdout, "installed {}", path.display());
    Ok(())
}

/// `lockstep filestatus`: `{"encrypted":true}` or `{"encrypted":false}`, as sops prints it.
pub fn filestatus(args: &FilestatusArgs, stdout: &mut dyn Write) -> Result<(), Failure> {
    let format = match &args.input_type {
        Some(t) => Format::from_name(t).ok_or_else(|| {
            Failure::new(Code::GENERIC, format!("--input-type {t:?} is not a format"))
        })?,
        None => Format::from_path(&args.file),
    };
    let bytes = crypt::read_input(&args.file)?;
    let encrypted = sops::is_encrypted(&bytes, format);
    writeln!(stdout, "{{\"encrypted\":{encrypted}}}")
        .map_err(|e| Failure::new(Code::COULD_NOT_WRITE_OUTPUT_FILE, e.to_string()))
}
