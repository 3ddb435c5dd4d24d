//! The command-line edge: argument parsing, exit codes and human output.
//!
//! Parsing is pure ([`Cli::try_parse_from`] over any argument list), so it is unit-tested without a
//! process; discovering the environment (variables, terminal, kubeconfig) happens afterwards, at the
//! start of each command.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

pub mod apply;
pub mod charts;
pub mod check;
pub mod controller;
pub mod crypt;
pub mod edit;
pub mod exec;
pub mod exit;
pub mod gpg;
pub mod init;
pub mod install;
pub mod keysources;
pub mod migrate;
pub mod rekey;
pub mod render;
pub mod review;
pub mod rollback;
pub mod status;

/// GitOps with secrets kept encrypted in Git.
///
/// Secrets files are encrypted with age in the SOPS file format; templates and layered values render
/// Kubernetes manifests per environment with secrets still sealed; secrets are decrypted in memory
/// only when the manifests are server-side applied to a cluster, by hand or by the in-cluster
/// controller.
#[derive(Debug, Parser)]
#[command(name = "lockstep", version, about, long_about = None)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands of `lockstep`, in pipeline order.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an age identity (age-keygen format) and print its recipient.
    Keygen(crypt::KeygenArgs),
    /// Encrypt a secrets file in the SOPS format (YAML, JSON, dotenv, INI, binary).
    Encrypt(crypt::EncryptArgs),
    /// Decrypt a SOPS file to stdout or in place.
    Decrypt(crypt::DecryptArgs),
    /// Edit a SOPS file in $EDITOR through a memory-backed file.
    Edit(edit::EditArgs),
    /// Re-encrypt files with a new data key for the recipients the creation rules name now.
    Reseal(rekey::ResealArgs),
    /// As `sops updatekeys`: re-wrap the data key for the recipients the creation rules name now.
    Updatekeys(rekey::UpdatekeysArgs),
    /// As `sops rotate`: re-encrypt every value with a new data key for the same recipients.
    Rotate(rekey::RotateArgs),
    /// Pre-commit guard: every file matching a creation rule must be encrypted.
    Check(check::CheckArgs),
    /// Install the git pre-commit hook that runs `check --staged`.
    Hook(check::HookArgs),
    /// Set one value in an encrypted file (as `sops set`); other values keep their ciphertext.
    Set(edit::SetArgs),
    /// Remove one key from an encrypted file (as `sops unset`).
    Unset(edit::UnsetArgs),
    /// Print whether a file is encrypted, as `sops filestatus`: {"encrypted":true}.
    Filestatus(check::FilestatusArgs),
    /// Run a command with a file's decrypted values in its environment only (as `sops exec-env`).
    ExecEnv(exec::ExecEnvArgs),
    /// Run a command on a memory-backed decrypted copy, wiped when it ends (as `sops exec-file`).
    ExecFile(exec::ExecFileArgs),
    /// Scaffold a lockstep repository.
    Init(init::InitArgs),
    /// Render the manifests of one environment, secrets sealed.
    Render(render::RenderCommandArgs),
    /// Pin repository and OCI charts by digest in lockstep.lock, or fetch them into the cache.
    Charts(charts::ChartsArgs),
    /// Show what `apply` would change: server-side dry run against the live objects.
    Diff(apply::DiffArgs),
    /// What a change does to every environment, keyless, as Markdown for a pull request.
    Review(review::ReviewArgs),
    /// Decrypt in memory and server-side apply one environment, with pruning and health waiting.
    Apply(apply::ApplyArgs),
    /// Run the in-cluster controller that syncs `Sync` resources from Git.
    Controller(controller::ControllerArgs),
    /// Ask the controller to sync a `Sync` resource now.
    Sync(controller::SyncArgs),
    /// The Syncs at a glance, or one Sync in full: its objects with live health, the last error.
    Status(status::StatusArgs),
    /// A Sync's last syncs: revision, subject, trigger, result, duration, objects changed.
    History(status::HistoryArgs),
    /// Pin a Sync to an older commit until a newer one than it rolls back from arrives, or end that.
    Rollback(rollback::RollbackArgs),
    /// Print (or `--apply`) the controller's install manifests: CRD, RBAC, Deployment.
    Install(install::InstallArgs),
}

impl Command {
    /// The name the user typed this command by.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Keygen(_) => "keygen",
            Command::Encrypt(_) => "encrypt",
            Command::Decrypt(_) => "decrypt",
            Command::Edit(_) => "edit",
            Command::Reseal(_) => "reseal",
            Command::Updatekeys(_) => "updatekeys",
            Command::Rotate(_) => "rotate",
            Command::Check(_) => "check",
            Command::Hook(_) => "hook",
            Command::Filestatus(_) => "filestatus",
            Command::ExecEnv(_) => "exec-env",
            Command::ExecFile(_) => "exec-file",
            Command::Set(_) => "set",
            Command::Unset(_) => "unset",
            Command::Init(_) => "init",
            Command::Render(_) => "render",
            Command::Charts(_) => "charts",
            Command::Diff(_) => "diff",
            Command::Review(_) => "review",
            Command::Apply(_) => "apply",
            Command::Controller(_) => "controller",
            Command::Sync(_) => "sync",
            Command::Status(_) => "status",
            Command::History(_) => "history",
            Command::Rollback(_) => "rollback",
            Command::Install(_) => "install",
        }
    }
}

/// Runs a parsed command line, writing human output to the given streams, and returns the exit code.
pub fn run(
    cli: Cli,
    env: &keysources::Env<'_>,
    stdout: &mut dyn std::io::Write,
    stderr: &mut dyn std::io::Write,
) -> ExitCode {
    let result = match &cli.command {
        Command::Keygen(args) => crypt::keygen(args, stdout, stderr),
        Command::Encrypt(args) => crypt::encrypt(args, env, stdout),
        Command::Decrypt(args) => crypt::decrypt(args, env, stdout),
        Command::Edit(args) => edit::edit(args, env, stderr),
        Command::Rotate(args) => rekey::rotate(args, env, stdout),
        Command::Updatekeys(args) => rekey::updatekeys(args, env, stdout),
        Command::Reseal(args) => rekey::reseal(args, env, stdout),
        Command::Check(args) => check::check(args, env, stdout),
        Command::Hook(args) => check::hook(args, stdout),
        Command::Filestatus(args) => check::filestatus(args, stdout),
        Command::ExecEnv(args) => match exec::exec_env(args, env) {
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        Command::ExecFile(args) => match exec::exec_file(args, env) {
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        Command::Set(args) => edit::set(args, env, &mut std::io::stdin()),
        Command::Unset(args) => edit::unset(args, env),
        Command::Render(args) => render::run(args, stdout, stderr),
        Command::Charts(args) => charts::run(args, stdout, stderr),
        Command::Init(args) => init::run(args, env, stdout, stderr),
        Command::Apply(args) => apply::run_apply(args, env, stdout, stderr),
        Command::Controller(args) => controller::run(args, stdout, stderr),
        Command::Sync(args) => controller::request(args, stdout),
        Command::Status(args) => status::run(args, stdout),
        Command::History(args) => status::run_history(args, stdout),
        Command::Rollback(args) => rollback::run(args, stdout),
        Command::Install(args) => install::run(args, env, stdout, stderr),
        Command::Review(args) => match review::run(args, stdout) {
            Ok(false) => Ok(()),
            Ok(true) => return exit::Code::CHANGES.into(),
            Err(e) => Err(e),
        },
        Command::Diff(args) => match apply::run_diff(args, env, stdout, stderr) {
            Ok(false) => Ok(()),
            Ok(true) => return exit::Code::CHANGES.into(),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => exit::Code::SUCCESS.into(),
        Err(failure) => {
            let _ = writeln!(stderr, "lockstep: {}", failure.message);
            failure.code.into()
        }
    }
}

/// sops's older command line, as sops still accepts it: `-d FILE` (decrypt), `-e FILE` (encrypt),
/// `-r FILE` (rotate) and a bare `FILE` (edit) become the lockstep command. Anything else is left
/// as it is. `is_file` says whether a bare first argument names an existing file.
pub fn sops_style(
    mut args: Vec<std::ffi::OsString>,
    is_file: impl Fn(&std::ffi::OsStr) -> bool,
) -> Vec<std::ffi::OsString> {
    let Some(first) = args.get(1).and_then(|a| a.to_str()) else {
        return args;
    };
    let command = match first {
        "-d" | "--decrypt" => "decrypt",
        "-e" | "--encrypt" => "encrypt",
        "-r" | "--rotate" => "rotate",
        _ if !first.starts_with('-')
            && Cli::command().find_subcommand(first).is_none()
            && is_file(args[1].as_os_str()) =>
        {
            args.insert(1, "edit".into());
            return args;
        }
        _ => return args,
    };
    args[1] = command.into();
    args
}

/// Entry point of the binary: parse `std::env::args_os`, run, map to a process exit code.
pub fn main() -> ExitCode {
    // A render probe child (see `lockstep::probe`): not a command anyone types.
    let mut raw = std::env::args();
    if raw.nth(1).as_deref() == Some(crate::probe::ARG) {
        let memory = raw
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(crate::probe::DEFAULT_MEMORY);
        return ExitCode::from(u8::try_from(crate::probe::serve(memory)).unwrap_or(1));
    }
    let args = sops_style(std::env::args_os().collect(), |a| {
        std::path::Path::new(a).is_file()
    });
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version are "errors" to clap; print them and exit 0 like any CLI.
            let _ = err.print();
            return if err.use_stderr() {
                exit::Code::ERROR.into()
            } else {
                exit::Code::SUCCESS.into()
            };
        }
    };
    let env = keysources::Env::process();
    run(
        cli,
        &env,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_names_round_trip() {
        for name in ["reseal", "rotate", "check", "controller"] {
            let args: &[&str] = if name == "rotate" {
                &["lockstep", name, "f.yaml"]
            } else {
                &["lockstep", name]
            };
            let cli = Cli::try_parse_from(args).expect("parses");
            assert_eq!(cli.command.name(), name);
        }
    }

    #[test]
    fn sops_style_command_lines_become_lockstep_commands() {
        let args = |list: &[&str]| {
            list.iter()
                .map(std::ffi::OsString::from)
                .collect::<Vec<_>>()
        };
        let file = |a: &std::ffi::OsStr| a == "secrets.yaml";
        for (given, expected) in [
            (
                &["lockstep", "-d", "secrets.yaml"][..],
                &["lockstep", "decrypt", "secrets.yaml"][..],
            ),
            (
                &["lockstep", "--encrypt", "-i", "f"],
                &["lockstep", "encrypt", "-i", "f"],
            ),
            (&["lockstep", "-r", "f"], &["lockstep", "rotate", "f"]),
            (
                &["lockstep", "secrets.yaml"],
                &["lockstep", "edit", "secrets.yaml"],
            ),
            // A command, a missing file and flags stay as they are.
            (
                &["lockstep", "render", "--env", "dev"],
                &["lockstep", "render", "--env", "dev"],
            ),
            (&["lockstep", "missing.yaml"], &["lockstep", "missing.yaml"]),
            (&["lockstep", "--version"], &["lockstep", "--version"]),
        ] {
            assert_eq!(sops_style(args(given), file), args(expected), "{given:?}");
        }
    }

    #[test]
    fn unknown_command_is_a_usage_error() {
        let err = Cli::try_parse_from(["lockstep", "frobnicate"]).expect_err("must fail");
        assert!(err.use_stderr());
    }
}
