//! `lockstep edit`: the plaintext goes to a file on a memory-backed filesystem (`/dev/shm`, tmpfs), in
//! a private directory (0700) with a private file (0600) named like the original so editors pick the
//! right syntax; it is overwritten with zeros and removed on every way out. The result is re-encrypted
//! with the same data key, and unchanged values keep their ciphertext.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Args;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::crypt::{self, NewFileArgs};
use super::exit::{Code, Failure};
use super::keysources::Env;
use crate::sops::store::{self, Format};

/// `lockstep edit`
#[derive(Debug, Args)]
pub struct EditArgs {
    /// The file to edit (created, with recipients from .sops.yaml or --age, when it does not exist).
    pub file: PathBuf,
    /// Input format (default: from the file extension).
    #[arg(long, value_name = "TYPE")]
    pub input_type: Option<String>,
    /// Also try the identities in FILE; repeatable.
    #[arg(long, value_name = "FILE")]
    pub identity: Vec<PathBuf>,
    /// Options for a file that does not exist yet.
    #[command(flatten)]
    pub new: NewFileArgs,
}

/// Where memory-backed scratch files go.
const SHM: &str = "/dev/shm";

/// True when `dir` is a tmpfs mount (memory-backed), per /proc/mounts.
fn is_tmpfs(dir: &str) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let mut f = l.split_whitespace();
                let (_, mount, fstype) = (f.next(), f.next(), f.next());
                mount == Some(dir) && fstype == Some("tmpfs")
            })
        })
        .unwrap_or(false)
}

/// A private scratch file in memory, wiped and removed when dropped.
pub(super) struct ScratchFile {
    dir: PathBuf,
    /// The file.
    pub(super) path: PathBuf,
}

impl ScratchFile {
    /// Writes `contents` to a new file `name` in a new private (0700) directory on `/dev/shm`;
    /// refused when that is not memory-backed.
    pub(super) fn create(name: &str, contents: &[u8]) -> Result<ScratchFile, Failure> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        if !is_tmpfs(SHM) {
            return Err(Failure::new(
                Code::GENERIC,
                format!(
                    "{SHM} is not a memory-backed (tmpfs) filesystem; refusing to write plaintext to disk"
                ),
            ));
        }
        let mut suffix = [0u8; 8];
        crypt::random(&mut suffix);
        let dir = Path::new(SHM).join(format!("lockstep-edit-{}", hex::encode(suffix)));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| {
                Failure::new(
                    Code::GENERIC,
                    format!("{}: cannot create: {e}", dir.display()),
                )
            })?;
        let scratch = ScratchFile {
            path: dir.join(name),
            dir,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&scratch.path)
            .map_err(|e| {
                Failure::new(
                    Code::GENERIC,
                    format!("{}: cannot create: {e}", scratch.path.display()),
                )
            })?;
        f.write_all(contents).map_err(|e| {
            Failure::new(
                Code::GENERIC,
                format!("{}: cannot write: {e}", scratch.path.display()),
            )
        })?;
        Ok(scratch)
    }

    fn read(&self) -> Result<Zeroizing<Vec<u8>>, Failure> {
        std::fs::read(&self.path).map(Zeroizing::new).map_err(|e| {
            Failure::new(
                Code::GENERIC,
                format!("{}: cannot read the edited file: {e}", self.path.display()),
            )
        })
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        // Editors may replace the file (write to a new inode and rename), so wipe whatever is there now,
        // and every other file the editor left in the private directory (swap and backup files).
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let p = entry.path();
                if let Ok(meta) = std::fs::metadata(&p)
                    && meta.is_file()
                    && let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&p)
                {
                    let _ = f.write_all(&vec![0u8; meta.len() as usize]);
                    let _ = f.sync_all();
                }
                let _ = std::fs::remove_file(&p);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn run_editor(env: &Env<'_>, path: &Path) -> Result<(), Failure> {
    let editor = (env.var)("SOPS_EDITOR")
        .or_else(|| (env.var)("EDITOR"))
        .unwrap_or_else(|| "vi".into());
    // Shell-split the editor command as sops does (e.g. EDITOR="code --wait").
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("lockstep-editor")
        .arg(path)
        .status()
        .map_err(|e| {
            Failure::new(
                Code::NO_EDITOR_FOUND,
                format!("cannot run the editor {editor:?}: {e}"),
            )
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(Failure::new(
            Code::GENERIC,
            format!("the editor {editor:?} exited with {status}; nothing was changed"),
        ))
    }
}

/// Checks edited plaintext; returns the documents or a message naming the line.
fn check_edit(format: Format, bytes: &[u8]) -> Result<Vec<crate::sops::tree::Document>, String> {
    let loaded = store::load_plain(format, bytes).map_err(|e| e.to_string())?;
    if loaded.metadata.is_some() || loaded.docs.iter().any(|d| d.has("sops")) {
        return Err("the top-level key `sops` is reserved for the file's metadata".into());
    }
    Ok(loaded.docs)
}

/// How many times a non-interactive session reopens the editor on invalid content before giving up.
const NON_INTERACTIVE_RETRIES: usize = 3;

/// Where an edit goes: back into the file it came from, or into a new file for planned recipients.
enum Target {
    Existing(Box<crate::sops::Decrypted>),
    New(crypt::NewFile),
}

/// What the editor opens with: the decrypted file (and what re-encrypting needs), or an example
/// for a new file.
fn starting_text(
    args: &EditArgs,
    format: Format,
    env: &Env<'_>,
) -> Result<(Zeroizing<Vec<u8>>, Option<crate::sops::Decrypted>), Failure> {
    let file = &args.file;
    if file.exists() {
        let decrypted = crypt::open(file, format, &args.identity, env, false)?;
        let plain = store::emit_plain(format, &decrypted.docs, 4).map_err(|e| {
            Failure::new(Code::ERROR_DUMPING_TREE, format!("{}: {e}", file.display()))
        })?;
        return Ok((plain, Some(decrypted)));
    }
    let example: &[u8] = match format {
        Format::Yaml => {
            b"# New secrets file: add keys and values, save and quit.\nexample_key: example_value\n"
        }
        Format::Json => b"{\n\t\"example_key\": \"example_value\"\n}\n",
        Format::Dotenv => b"EXAMPLE_KEY=example_value\n",
        Format::Ini => b"[section]\nexample_key = example_value\n",
        Format::Binary => b"",
    };
    Ok((Zeroizing::new(example.to_vec()), None))
}

/// Runs the editor until the scratch file holds a valid edit: the parsed documents and the text.
/// Unchanged (same digest as `unchanged`), interrupted or abandoned edits end with nothing changed.
fn edit_until_valid(
    file: &Path,
    format: Format,
    env: &Env<'_>,
    scratch: &ScratchFile,
    unchanged: Option<&[u8]>,
    interrupted: &AtomicBool,
    stderr: &mut dyn Write,
) -> Result<(Vec<crate::sops::tree::Document>, Zeroizing<Vec<u8>>), Failure> {
    let fname = file.display();
    let interactive = std::io::stdin().is_terminal();
    let mut attempts = 0;
    loop {
        run_editor(env, &scratch.path)?;
        if interrupted.load(Ordering::SeqCst) {
            return Err(Failure::new(
                Code::INTERRUPTED,
                format!("{fname}: interrupted; nothing was changed"),
            ));
        }
        let edited = scratch.read()?;
        if unchanged.is_some_and(|d| Sha256::digest(edited.as_slice()).as_slice() == d) {
            return Err(Failure::new(
                Code::FILE_HAS_NOT_BEEN_MODIFIED,
                format!("{fname}: file not modified; nothing was changed"),
            ));
        }
        let why = match check_edit(format, &edited) {
            Ok(docs) => return Ok((docs, edited)),
            Err(why) => why,
        };
        attempts += 1;
        let _ = writeln!(
            stderr,
            "lockstep: {fname}: the edited file is not valid: {why}"
        );
        if interactive {
            let _ = write!(
                stderr,
                "Press Enter to fix it in the editor (your edit is kept), or type q and Enter to abandon it: "
            );
            let _ = stderr.flush();
            let mut answer = String::new();
            let _ = std::io::stdin().lock().read_line(&mut answer);
            if answer.trim() == "q" {
                return Err(Failure::new(
                    Code::GENERIC,
                    format!("{fname}: edit abandoned; nothing was changed"),
                ));
            }
        } else if attempts >= NON_INTERACTIVE_RETRIES {
            return Err(Failure::new(
                Code::ERROR,
                format!(
                    "{fname}: still not valid after {attempts} attempts ({why}); nothing was changed"
                ),
            ));
        } else {
            let _ = writeln!(stderr, "lockstep: reopening the editor with your edit");
        }
    }
}

/// `lockstep edit`
pub fn edit(args: &EditArgs, env: &Env<'_>, stderr: &mut dyn Write) -> Result<(), Failure> {
    let file = &args.file;
    let fname = file.display();
    let format = match &args.input_type {
        Some(t) => Format::from_name(t).ok_or_else(|| {
            Failure::new(
                Code::GENERIC,
                format!(
                    "--input-type {t:?} is not a format; use one of: {}",
                    store::FORMAT_NAMES
                ),
            )
        })?,
        None => Format::from_path(file),
    };
    let (plain, existing) = starting_text(args, format, env)?;
    // For a new file, settle the recipients before anyone types a secret.
    let target = match existing {
        Some(decrypted) => Target::Existing(Box::new(decrypted)),
        None => Target::New(args.new.plan(file, env)?),
    };

    // Keep running when the terminal's Ctrl+C reaches us too: the editor handles it, and we must live
    // to wipe the scratch file.
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }

    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "secrets".into());
    let scratch = ScratchFile::create(&name, &plain)?;
    let unchanged = matches!(target, Target::Existing(_)).then(|| Sha256::digest(plain.as_slice()));
    let (docs, edited) = edit_until_valid(
        file,
        format,
        env,
        &scratch,
        unchanged.as_ref().map(|d| d.as_slice()),
        &interrupted,
        stderr,
    )?;
    drop(scratch);

    let out = match target {
        Target::Existing(decrypted) => {
            let mut docs = docs;
            reencrypt(file, &decrypted, &mut docs, format)?
        }
        Target::New(plan) => {
            drop(docs);
            crypt::encrypt_new(file, format, format, &edited, plan)?
        }
    };
    crypt::write_atomic(file, &out).map_err(|e| {
        Failure::new(
            Code::COULD_NOT_WRITE_OUTPUT_FILE,
            format!("{fname}: cannot write: {e}"),
        )
    })
}

/// `lockstep set`
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The encrypted file (changed in place).
    pub file: PathBuf,
    /// Where to set, e.g. `'["db"]["password"]'`; missing mappings are created, an index past the end appends.
    pub path: String,
    /// The value as JSON: '"text"', 5, true, {"a": 1}; with --value-file the file holding it;
    /// omitted with --value-stdin.
    #[arg(required_unless_present = "value_stdin")]
    pub value: Option<String>,
    /// Read the JSON value from the file VALUE names, not from the command line (which `ps` and
    /// shell history show), as sops's --value-file.
    #[arg(long, conflicts_with = "value_stdin")]
    pub value_file: bool,
    /// Read the JSON value from standard input (no VALUE argument), as sops's --value-stdin.
    #[arg(long, conflicts_with = "value")]
    pub value_stdin: bool,
    /// Leave the file untouched (not even re-written) when the key already holds the value.
    #[arg(long)]
    pub idempotent: bool,
    /// Also try the identities in FILE; repeatable.
    #[arg(long, value_name = "FILE")]
    pub identity: Vec<PathBuf>,
}

/// `lockstep unset`
#[derive(Debug, Args)]
pub struct UnsetArgs {
    /// The encrypted file (changed in place).
    pub file: PathBuf,
    /// What to remove, e.g. `'["db"]["password"]'`.
    pub path: String,
    /// Succeed when the key is already absent.
    #[arg(long)]
    pub idempotent: bool,
    /// Also try the identities in FILE; repeatable.
    #[arg(long, value_name = "FILE")]
    pub identity: Vec<PathBuf>,
}

use crate::sops::tree::{Item, Value};
use crypt::Step;

fn set_in(node: &mut Value, steps: &[Step], value: Value) -> Result<(), String> {
    let Some((head, rest)) = steps.split_first() else {
        *node = value;
        return Ok(());
    };
    match head {
        Step::Key(k) => {
            if !matches!(node, Value::Map(_)) {
                if rest.is_empty() || matches!(node, Value::Null) {
                    *node = Value::Map(vec![]);
                } else {
                    return Err(format!(
                        "{k:?}: the parent is a {}, not a mapping",
                        node.kind()
                    ));
                }
            }
            let Value::Map(items) = node else {
                unreachable!("just made a mapping")
            };
            let child = crate::sops::tree::entry(items, k);
            set_in(child, rest, value)
        }
        Step::Index(i) => {
            let Value::List(values) = node else {
                return Err(format!(
                    "[{i}]: the parent is a {}, not a list",
                    node.kind()
                ));
            };
            match crate::sops::tree::element_index(values, *i) {
                Some(p) => set_in(&mut values[p], rest, value),
                None => {
                    values.push(Value::Null);
                    let last = values.len() - 1;
                    set_in(&mut values[last], rest, value)
                }
            }
        }
    }
}

/// The value at `steps`, if there is one.
fn get_in<'v>(node: &'v Value, steps: &[Step]) -> Option<&'v Value> {
    let Some((head, rest)) = steps.split_first() else {
        return Some(node);
    };
    let child = match (head, node) {
        (Step::Key(k), Value::Map(items)) => items.iter().find_map(|i| match i {
            Item::Pair(ik, v) if ik == k => Some(v),
            _ => None,
        }),
        (Step::Index(i), Value::List(values)) => {
            crate::sops::tree::element_index(values, *i).map(|p| &values[p])
        }
        _ => None,
    }?;
    get_in(child, rest)
}

fn unset_in(node: &mut Value, steps: &[Step]) -> bool {
    match steps {
        [] => false,
        [Step::Key(k)] => match node {
            Value::Map(items) => {
                let before = items.len();
                items.retain(|i| !matches!(i, Item::Pair(ik, _) if ik == k));
                items.len() != before
            }
            _ => false,
        },
        [Step::Index(i)] => match node {
            Value::List(values) => match crate::sops::tree::element_index(values, *i) {
                Some(p) => {
                    values.remove(p);
                    true
                }
                None => false,
            },
            _ => false,
        },
        [head, rest @ ..] => {
            let child = match (head, node) {
                (Step::Key(k), Value::Map(items)) => items.iter_mut().find_map(|i| match i {
                    Item::Pair(ik, v) if ik == k => Some(v),
                    _ => None,
                }),
                (Step::Index(i), Value::List(values)) => {
                    crate::sops::tree::element_index(values, *i).map(|p| &mut values[p])
                }
                _ => None,
            };
            child.is_some_and(|c| unset_in(c, rest))
        }
    }
}

/// Decrypts `file`, applies `change` to its first document (which says whether to write), re-encrypts with the same data key (unchanged
/// values keep their ciphertext) and writes it back atomically.
fn change_in_place(
    file: &Path,
    identity: &[PathBuf],
    env: &Env<'_>,
    change: impl FnOnce(&mut Value) -> Result<bool, Failure>,
) -> Result<(), Failure> {
    let fname = file.display();
    let format = Format::from_path(file);
    let mut decrypted = crypt::open(file, format, identity, env, false)?;
    let mut docs = std::mem::take(&mut decrypted.docs);
    let first = docs
        .first_mut()
        .ok_or_else(|| Failure::new(Code::GENERIC, format!("{fname}: the file has no document")))?;
    let mut root = Value::Map(std::mem::take(&mut first.items));
    let result = change(&mut root);
    if let Value::Map(items) = root {
        first.items = items;
    }
    if !result? {
        return Ok(());
    }
    let out = reencrypt(file, &decrypted, &mut docs, format)?;
    crypt::write_atomic(file, &out).map_err(|e| {
        Failure::new(
            Code::COULD_NOT_WRITE_OUTPUT_FILE,
            format!("{fname}: cannot write: {e}"),
        )
    })
}

/// Re-encrypts changed documents with the file's own data key and metadata; unchanged values reuse
/// their IVs, so their ciphertext stays byte-identical.
fn reencrypt(
    file: &Path,
    decrypted: &crate::sops::Decrypted,
    docs: &mut [crate::sops::tree::Document],
    format: Format,
) -> Result<Vec<u8>, Failure> {
    let mut random = crypt::random;
    let mut rng: crate::sops::walk::Rng = &mut random;
    crate::sops::seal(
        docs,
        decrypted.metadata.clone(),
        &decrypted.key,
        Some(&decrypted.stash),
        format,
        jiff::Timestamp::now(),
        4,
        &mut rng,
    )
    .map_err(|e| Failure::new(Code::of(&e), format!("{}: {e}", file.display())))
}

/// A non-empty sops path (`["a"][0]`), or exit 7 as in sops.
fn parse_path(path: &str) -> Result<Vec<Step>, Failure> {
    crypt::parse_extract(path)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Failure::new(
                Code::INVALID_SET_FORMAT,
                format!("{path:?} is not a path like '[\"key\"][0]'"),
            )
        })
}

/// `lockstep set`
pub fn set(args: &SetArgs, env: &Env<'_>, stdin: &mut dyn std::io::Read) -> Result<(), Failure> {
    let steps = parse_path(&args.path)?;
    let text = set_value_text(args, stdin)?;
    let json: serde_json::Value = serde_json::from_str(text.as_str()).map_err(|e| {
        let from = match (args.value_stdin, args.value_file) {
            (true, _) => "standard input",
            (_, true) => "--value-file",
            _ => "the value",
        };
        Failure::new(
            Code::INVALID_SET_FORMAT,
            format!("{from} is not JSON ({e}); quote strings: '\"text\"'"),
        )
    })?;
    drop(text);
    let value = store::json::from_json(json);
    let idempotent = args.idempotent;
    change_in_place(&args.file, &args.identity, env, |root| {
        if idempotent && get_in(root, &steps) == Some(&value) {
            return Ok(false);
        }
        set_in(root, &steps, value).map_err(|e| {
            Failure::new(
                Code::INVALID_SET_FORMAT,
                format!("{}: {}: {e}", args.file.display(), args.path),
            )
        })?;
        Ok(true)
    })
}

/// The JSON text of `set`'s value: the argument, the file it names (`--value-file`), or standard
/// input (`--value-stdin`) — read into memory that is wiped when dropped.
fn set_value_text(
    args: &SetArgs,
    stdin: &mut dyn std::io::Read,
) -> Result<zeroize::Zeroizing<String>, Failure> {
    let mut text = zeroize::Zeroizing::new(String::new());
    let read = |what: &str, e: std::io::Error| {
        Failure::new(
            Code::COULD_NOT_READ_INPUT_FILE,
            format!("reading {what}: {e}"),
        )
    };
    if args.value_stdin {
        stdin
            .read_to_string(&mut text)
            .map_err(|e| read("the value from standard input", e))?;
        return Ok(text);
    }
    let value = args.value.as_deref().unwrap_or_default();
    if args.value_file {
        let mut file = std::fs::File::open(value).map_err(|e| read(value, e))?;
        std::io::Read::read_to_string(&mut file, &mut text).map_err(|e| read(value, e))?;
    } else {
        text.push_str(value);
    }
    Ok(text)
}

/// `lockstep unset`
pub fn unset(args: &UnsetArgs, env: &Env<'_>) -> Result<(), Failure> {
    let steps = parse_path(&args.path)?;
    let idempotent = args.idempotent;
    let file = args.file.display().to_string();
    let path = args.path.clone();
    change_in_place(&args.file, &args.identity, env, move |root| {
        if unset_in(root, &steps) {
            Ok(true)
        } else if idempotent {
            // As sops: an absent key with --idempotent leaves the file as it is.
            Ok(false)
        } else {
            Err(Failure::new(
                Code::GENERIC,
                format!("{file}: {path}: no such key"),
            ))
        }
    })
}
