//! `lockstep exec-env` and `lockstep exec-file`, as sops's: a command runs with the decrypted
//! values — in its environment only, or in a private file on a memory-backed filesystem that is
//! wiped and removed when the command ends — never in a regular file on disk. The exit code is the
//! command's.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Args;
use zeroize::Zeroizing;

use crate::sops::store::{self, Format};
use crate::sops::tree::{Item, Value};

use super::crypt;
use super::edit::ScratchFile;
use super::exit::{Code, Failure};
use super::keysources::Env;

/// Arguments of `lockstep exec-env`.
#[derive(Debug, Args)]
pub struct ExecEnvArgs {
    /// The encrypted file; its top-level keys become environment variables.
    pub file: PathBuf,
    /// The command, run by `/bin/sh -c`.
    pub command: String,
    /// Give the command only the decrypted variables, not this process's environment.
    #[arg(long)]
    pub pristine: bool,
    /// Also try the identities in FILE; repeatable.
    #[arg(long, value_name = "FILE")]
    pub identity: Vec<PathBuf>,
}

/// Arguments of `lockstep exec-file`.
#[derive(Debug, Args)]
pub struct ExecFileArgs {
    /// The encrypted file.
    pub file: PathBuf,
    /// The command, run by `/bin/sh -c`; `{}` stands for the decrypted file's path.
    pub command: String,
    /// Accepted for sops's command lines: lockstep always hands over a memory-backed file (a FIFO
    /// breaks programs that read twice or never open it).
    #[arg(long)]
    pub no_fifo: bool,
    /// The decrypted file's name (default: the encrypted file's own, so tools see its extension).
    #[arg(long)]
    pub filename: Option<String>,
    /// The decrypted file's format (default: the encrypted file's).
    #[arg(long)]
    pub output_type: Option<String>,
    /// Also try the identities in FILE; repeatable.
    #[arg(long, value_name = "FILE")]
    pub identity: Vec<PathBuf>,
}

/// The variables of a decrypted file's first document: each top-level scalar, as text.
/// Collections cannot be variables; they are skipped and named on stderr.
fn variables(docs: &[crate::sops::tree::Document]) -> Vec<(String, Zeroizing<String>)> {
    let Some(doc) = docs.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in &doc.items {
        let Item::Pair(key, value) = item else {
            continue;
        };
        let text = match value {
            Value::Str(s) | Value::Time(s) => s.expose().clone(),
            Value::Int(i) => i.expose().to_string(),
            Value::Float(f) => crate::sops::tree::format_float(*f.expose()),
            Value::Bool(b) => b.expose().to_string(),
            Value::Bytes(b) => String::from_utf8_lossy(b.expose()).into_owned(),
            Value::Null => String::new(),
            Value::Map(_) | Value::List(_) | Value::Comment(_) => {
                eprintln!(
                    "lockstep: warning: {key} holds a collection; it is not passed as a variable"
                );
                continue;
            }
        };
        out.push((key.clone(), Zeroizing::new(text)));
    }
    out
}

/// Runs `command` by `/bin/sh -c` with `prepare` applied, Ctrl+C going to the command (this
/// process waits for it and then cleans up).
fn run_shell(
    command: &str,
    prepare: impl FnOnce(&mut std::process::Command),
) -> Result<ExitStatus, Failure> {
    let interrupted = std::sync::Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c").arg(command);
    prepare(&mut cmd);
    cmd.status()
        .map_err(|e| Failure::new(Code::GENERIC, format!("cannot run /bin/sh: {e}")))
}

/// The process exit code for a child's status: its code, or 128 + the signal that ended it.
fn code_of(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(1),
        _ => 1,
    }
}

/// Runs `lockstep exec-env`; returns the command's exit code.
pub fn exec_env(args: &ExecEnvArgs, env: &Env<'_>) -> Result<u8, Failure> {
    let format = Format::from_path(&args.file);
    let decrypted = crypt::open(&args.file, format, &args.identity, env, false)?;
    let vars = variables(&decrypted.docs);
    drop(decrypted);
    let status = run_shell(&args.command, |cmd| {
        if args.pristine {
            cmd.env_clear();
        }
        for (k, v) in &vars {
            cmd.env(k, v.as_str());
        }
    })?;
    Ok(code_of(status))
}

/// Runs `lockstep exec-file`; returns the command's exit code. The file is gone when this returns.
pub fn exec_file(args: &ExecFileArgs, env: &Env<'_>) -> Result<u8, Failure> {
    let format = Format::from_path(&args.file);
    let decrypted = crypt::open(&args.file, format, &args.identity, env, false)?;
    let out_format = crypt::format_of(args.output_type.as_deref(), &args.file, "--output-type")?;
    let plain = store::emit_plain(out_format, &decrypted.docs, 4).map_err(|e| {
        Failure::new(
            Code::ERROR_DUMPING_TREE,
            format!("{}: {e}", args.file.display()),
        )
    })?;
    drop(decrypted);
    let name = match &args.filename {
        Some(n) if !n.is_empty() && !n.contains('/') && n != "." && n != ".." => n.clone(),
        Some(n) => {
            return Err(Failure::new(
                Code::GENERIC,
                format!("--filename {n:?}: give a plain file name, without a directory"),
            ));
        }
        None => args
            .file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("tmp-file")
            .to_string(),
    };
    let scratch = ScratchFile::create(&name, &plain)?;
    drop(plain);
    let path = scratch.path.to_string_lossy().into_owned();
    let command = args.command.replace("{}", &path);
    let status = run_shell(&command, |_| {});
    // Wiped and removed whatever the command's outcome.
    drop(scratch);
    Ok(code_of(status?))
}
