//! Exit codes, by name, and the one [`Failure`] every command returns.
//!
//! lockstep's own commands follow `kubectl diff`: 0 done, 1 changes (or objects not ready), 2 an error.
//! The sops-compatible commands (`encrypt`, `decrypt`, `edit`, `set`, …) exit with sops's codes
//! (`cmd/sops/codes` in getsops/sops), so scripts written for sops keep working; a key problem in
//! `apply` or `diff` exits with sops's code too (128 no identity, 51 MAC mismatch).

use lockstep_engine::sops::codes as sops;

/// A process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code(u8);

impl Code {
    /// The command did what was asked.
    pub const SUCCESS: Code = Code(0);
    /// `diff` found changes, `check` found a problem.
    pub const CHANGES: Code = Code(1);
    /// Applied, but objects did not become ready (or Syncs failed, for `controller --once`).
    pub const NOT_READY: Code = Code(1);
    /// Bad input, a failed step, or a command that is not available in this build.
    pub const ERROR: Code = Code(2);
    /// sops: a failure without a more specific code.
    pub const GENERIC: Code = Code(sops::ERROR_GENERIC);
    /// sops: the input could not be read or parsed.
    pub const COULD_NOT_READ_INPUT_FILE: Code = Code(sops::COULD_NOT_READ_INPUT_FILE);
    /// sops: the input file does not exist.
    pub const NO_FILE_SPECIFIED: Code = Code(sops::NO_FILE_SPECIFIED);
    /// sops: the output could not be written.
    pub const COULD_NOT_WRITE_OUTPUT_FILE: Code = Code(sops::COULD_NOT_WRITE_OUTPUT_FILE);
    /// sops: the tree could not be written in the output format.
    pub const ERROR_DUMPING_TREE: Code = Code(sops::ERROR_DUMPING_TREE);
    /// sops: a `set` value that does not parse.
    pub const INVALID_SET_FORMAT: Code = Code(sops::ERROR_INVALID_SET_FORMAT);
    /// sops: options that cannot go together.
    pub const CONFLICTING_PARAMETERS: Code = Code(sops::ERROR_CONFLICTING_PARAMETERS);
    /// sops: a tree path (`["a"][0]`) that does not parse.
    pub const INVALID_TREE_PATH_FORMAT: Code = Code(sops::INVALID_TREE_PATH_FORMAT);
    /// sops: no identity could open the data key.
    pub const COULD_NOT_RETRIEVE_KEY: Code = Code(sops::COULD_NOT_RETRIEVE_KEY);
    /// sops: `edit` left the file as it was.
    pub const FILE_HAS_NOT_BEEN_MODIFIED: Code = Code(sops::FILE_HAS_NOT_BEEN_MODIFIED);
    /// sops: the editor could not be started.
    pub const NO_EDITOR_FOUND: Code = Code(sops::NO_EDITOR_FOUND);
    /// Interrupted (Ctrl+C: 128 + SIGINT, as shells report it).
    pub const INTERRUPTED: Code = Code(130);

    /// sops's code for a SOPS failure.
    pub fn of(e: &lockstep_engine::sops::SopsError) -> Code {
        Code(e.exit_code())
    }

    /// sops's code from the engine (a key problem in `apply`/`diff`).
    pub fn from_sops(code: u8) -> Code {
        Code(code)
    }

    /// The number the process exits with.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl From<Code> for std::process::ExitCode {
    fn from(code: Code) -> Self {
        std::process::ExitCode::from(code.0)
    }
}

/// A failed command: what to print and the exit code.
pub struct Failure {
    /// The message (already names the file).
    pub message: String,
    /// Process exit code.
    pub code: Code,
}

impl Failure {
    /// A failure with an exit code and a message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code,
        }
    }
}
