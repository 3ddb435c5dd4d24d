//! `keygen`, `encrypt` and `decrypt`: reading files and keys, calling the sops format, writing output.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use zeroize::Zeroizing;

use super::gpg::Gpg;
use super::keysources::{self, Env};
use crate::keys::Recipient;
use crate::sops::config::Config;
use crate::sops::rules::Selection;
use crate::sops::store::{self, FORMAT_NAMES, Format};
use crate::sops::tree::{Document, Item, Value};
use crate::sops::{self, EncryptOptions, SopsError};

pub use super::exit::{Code, Failure};

/// `lockstep keygen`
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Write the identity to FILE (created with mode 0600; never overwritten) instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// A post-quantum hybrid identity (ML-KEM-768 + X25519, `age1pq1…`), as `age-keygen -pq`.
    #[arg(long)]
    pub pq: bool,
}

/// Options shared by `encrypt` and `decrypt`.
#[derive(Debug, Args)]
pub struct IoArgs {
    /// The file to read; `-` reads standard input (then give --input-type or --filename-override).
    pub file: PathBuf,
    /// With standard input: the file name to pick the format and the .sops.yaml creation rule by.
    #[arg(long, value_name = "NAME")]
    pub filename_override: Option<PathBuf>,
    /// Write the result back to FILE (atomically) instead of stdout.
    #[arg(short = 'i', long = "in-place")]
    pub in_place: bool,
    /// Write the result to this file instead of stdout.
    #[arg(long, value_name = "FILE", conflicts_with = "in_place")]
    pub output: Option<PathBuf>,
    /// Input format (default: from the file extension): yaml, json, dotenv, ini, binary.
    #[arg(long, value_name = "TYPE")]
    pub input_type: Option<String>,
    /// Output format (default: the input format).
    #[arg(long, value_name = "TYPE")]
    pub output_type: Option<String>,
}

/// `lockstep encrypt`
#[derive(Debug, Args)]
pub struct EncryptArgs {
    #[command(flatten)]
    io: IoArgs,
    #[command(flatten)]
    new: NewFileArgs,
}

/// How a new file is encrypted: recipients and options, from flags or `.sops.yaml`.
#[derive(Debug, Default, Args)]
pub struct NewFileArgs {
    /// age recipients (age1…, or SSH public keys), comma-separated; overrides .sops.yaml. Also SOPS_AGE_RECIPIENTS.
    #[arg(long, value_name = "RECIPIENTS")]
    age: Vec<String>,
    /// PGP key fingerprints, comma-separated (public keys from GnuPG's keyring); overrides .sops.yaml. Also SOPS_PGP_FP.
    #[arg(long, value_name = "FINGERPRINTS")]
    pgp: Vec<String>,
    /// Use this .sops.yaml (also SOPS_CONFIG) instead of looking for one.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Values whose key path has a key ending with this suffix stay plaintext.
    #[arg(long)]
    unencrypted_suffix: Option<String>,
    /// Only values whose key path has a key ending with this suffix are encrypted.
    #[arg(long)]
    encrypted_suffix: Option<String>,
    /// Values whose key path has a key matching this regex stay plaintext.
    #[arg(long)]
    unencrypted_regex: Option<String>,
    /// Only values whose key path has a key matching this regex are encrypted.
    #[arg(long)]
    encrypted_regex: Option<String>,
    /// Values under a comment matching this regex stay plaintext.
    #[arg(long)]
    unencrypted_comment_regex: Option<String>,
    /// Only values under a comment matching this regex are encrypted.
    #[arg(long)]
    encrypted_comment_regex: Option<String>,
    /// The MAC covers encrypted values only, so plaintext values can be edited without a key.
    #[arg(long)]
    mac_only_encrypted: bool,
    /// Shares needed to recover the data key when .sops.yaml names several key groups.
    #[arg(long, visible_alias = "shamir-secret-sharing-threshold")]
    shamir_threshold: Option<usize>,
    /// Indentation of YAML output (default: .sops.yaml stores.yaml.indent, else 4).
    #[arg(long)]
    indent: Option<usize>,
}

/// Everything needed to encrypt a new file.
pub struct NewFile {
    /// Recipients per key group, parsed.
    pub key_groups: Vec<Vec<(String, Recipient)>>,
    /// Shares needed with several groups.
    pub shamir_threshold: Option<usize>,
    /// Which values to encrypt.
    pub selection: Selection,
    /// MAC over encrypted values only.
    pub mac_only_encrypted: bool,
    /// YAML indentation.
    pub yaml_indent: usize,
}

fn split_recipients(list: &[String]) -> Vec<String> {
    list.iter()
        .flat_map(|a| a.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Parses recipient strings per group, naming the file in errors: age recipients as they are, PGP
/// keys (`pgp:FINGERPRINT`) found in GnuPG's keyring.
pub fn parse_groups(
    file: &Path,
    groups: &[Vec<String>],
    env: &Env<'_>,
) -> Result<Vec<Vec<(String, Recipient)>>, Failure> {
    let gpg = Gpg::from_env(env);
    let fail = |e: String| Failure::new(Code::GENERIC, format!("{}: {e}", file.display()));
    groups
        .iter()
        .map(|g| {
            g.iter()
                .map(|r| match r.strip_prefix("pgp:") {
                    Some(fp) => gpg
                        .recipient(fp)
                        .map(|p| (r.clone(), Recipient::Pgp(Box::new(p))))
                        .map_err(fail),
                    None => Recipient::parse(r)
                        .map(|p| (r.clone(), p))
                        .map_err(|e| fail(e.to_string())),
                })
                .collect()
        })
        .collect()
}

/// The recipients the creation rules name for `file` now, with the rule (or why there are none).
pub fn rule_recipients<'c>(
    file: &Path,
    config: &'c Option<(PathBuf, Config)>,
) -> Result<(Vec<Vec<String>>, &'c crate::sops::config::CreationRule), Failure> {
    let fname = file.display();
    let abs = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let Some(rule) = config.as_ref().and_then(|(dir, c)| c.rule_for(&abs, dir)) else {
        let hint = match config {
            Some((dir, _)) => format!(
                "no creation rule in {}/.sops.yaml matches this file",
                dir.display()
            ),
            None => {
                "no .sops.yaml found (looked upwards from the file and from the working directory)"
                    .into()
            }
        };
        return Err(Failure::new(
            Code::GENERIC,
            format!(
                "{fname}: no recipients: {hint}; pass --age age1… (or --pgp FINGERPRINT) or add a creation rule"
            ),
        ));
    };
    if rule.key_groups.iter().all(|g| g.is_empty()) {
        let extra = if rule.foreign_keys.is_empty() {
            String::new()
        } else {
            format!(
                " (it names {} keys, which lockstep does not encrypt to)",
                rule.foreign_keys.join(", ")
            )
        };
        return Err(Failure::new(
            Code::GENERIC,
            format!(
                "{fname}: the matching creation rule has no age or PGP recipients{extra}; pass --age age1… or --pgp FINGERPRINT"
            ),
        ));
    }
    Ok((rule.key_groups.clone(), rule))
}

impl NewFileArgs {
    /// Resolves recipients and options for `file`: flags first, then its creation rule.
    pub fn plan(&self, file: &Path, env: &Env<'_>) -> Result<NewFile, Failure> {
        let config = find_config(self.config.as_deref(), env, file)?;
        let from_env =
            |var: &str| split_recipients(&(env.var)(var).into_iter().collect::<Vec<_>>());
        let mut cli = split_recipients(&self.age);
        let mut pgp = split_recipients(&self.pgp);
        if cli.is_empty() && pgp.is_empty() {
            cli = from_env("SOPS_AGE_RECIPIENTS");
            pgp = from_env("SOPS_PGP_FP");
        }
        cli.extend(pgp.iter().map(|fp| crate::sops::config::pgp_recipient(fp)));
        let (groups, rule) = if cli.is_empty() {
            let (groups, rule) = rule_recipients(file, &config)?;
            (groups, Some(rule))
        } else {
            let abs = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
            (
                vec![cli],
                config.as_ref().and_then(|(dir, c)| c.rule_for(&abs, dir)),
            )
        };
        let cli_selection: Vec<(&str, &str)> = [
            ("unencrypted_suffix", &self.unencrypted_suffix),
            ("encrypted_suffix", &self.encrypted_suffix),
            ("unencrypted_regex", &self.unencrypted_regex),
            ("encrypted_regex", &self.encrypted_regex),
            ("unencrypted_comment_regex", &self.unencrypted_comment_regex),
            ("encrypted_comment_regex", &self.encrypted_comment_regex),
        ]
        .into_iter()
        .filter_map(|(f, v)| v.as_deref().map(|v| (f, v)))
        .collect();
        let selection = match Selection::from_fields(cli_selection)
            .map_err(|e| Failure::new(Code::CONFLICTING_PARAMETERS, e.to_string()))?
        {
            Some(s) => s,
            None => rule.and_then(|r| r.selection.clone()).unwrap_or_default(),
        };
        Ok(NewFile {
            key_groups: parse_groups(file, &groups, env)?,
            shamir_threshold: self
                .shamir_threshold
                .or(rule.and_then(|r| r.shamir_threshold)),
            selection,
            mac_only_encrypted: self.mac_only_encrypted
                || rule.is_some_and(|r| r.mac_only_encrypted),
            yaml_indent: self
                .indent
                .or(config.as_ref().and_then(|(_, c)| c.yaml_indent))
                .unwrap_or(4),
        })
    }
}

/// Encrypts plaintext bytes as a new file.
pub fn encrypt_new(
    file: &Path,
    format: Format,
    output: Format,
    plain: &[u8],
    new: NewFile,
) -> Result<Vec<u8>, Failure> {
    let mut rng = random;
    sops::encrypt(
        plain,
        EncryptOptions {
            format,
            output,
            key_groups: new.key_groups,
            shamir_threshold: new.shamir_threshold,
            selection: new.selection,
            mac_only_encrypted: new.mac_only_encrypted,
            now: jiff::Timestamp::now(),
            yaml_indent: new.yaml_indent,
            rng: &mut rng,
        },
    )
    .map_err(|e| Failure::new(Code::of(&e), format!("{}: {e}", file.display())))
}

/// `lockstep decrypt`
#[derive(Debug, Args)]
pub struct DecryptArgs {
    #[command(flatten)]
    io: IoArgs,
    /// Print only the value at this path, e.g. '["db"]["password"]' or '["hosts"][0]'.
    #[arg(long, value_name = "PATH")]
    extract: Option<String>,
    /// Decrypt even when the MAC does not match (the file may have been tampered with).
    #[arg(long)]
    ignore_mac: bool,
    /// Also try the identities in FILE (age key file or OpenSSH private key); repeatable.
    #[arg(long, value_name = "FILE")]
    identity: Vec<PathBuf>,
}

impl IoArgs {
    /// The name formats and creation rules are chosen by: `--filename-override`, else the file.
    pub fn name(&self) -> &Path {
        self.filename_override.as_deref().unwrap_or(&self.file)
    }

    fn is_stdin(&self) -> bool {
        self.file.as_os_str() == "-"
    }

    /// Input and output formats: the flags, else the file extension; output defaults to input.
    fn formats(&self) -> Result<(Format, Format), Failure> {
        if self.is_stdin() && self.input_type.is_none() && self.filename_override.is_none() {
            return Err(Failure::new(
                Code::GENERIC,
                "reading standard input needs --input-type or --filename-override to know the format",
            ));
        }
        if self.is_stdin() && self.in_place {
            return Err(Failure::new(
                Code::CONFLICTING_PARAMETERS,
                "-i cannot write back to standard input; use --output FILE",
            ));
        }
        let input = format_of(self.input_type.as_deref(), self.name(), "--input-type")?;
        let output = format_of(
            self.output_type.as_deref().or(self.input_type.as_deref()),
            self.name(),
            "--output-type",
        )?;
        Ok((input, output))
    }

    /// The input bytes: the file, or standard input for `-`.
    fn read(&self) -> Result<Zeroizing<Vec<u8>>, Failure> {
        if self.is_stdin() {
            let mut buf = Zeroizing::new(Vec::new());
            std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut buf).map_err(|e| {
                Failure::new(
                    Code::COULD_NOT_READ_INPUT_FILE,
                    format!("cannot read standard input: {e}"),
                )
            })?;
            Ok(buf)
        } else {
            read_input(&self.file)
        }
    }
}

/// The format `name` names (`--input-type`, `--output-type`), else the one `path`'s extension says.
pub fn format_of(name: Option<&str>, path: &Path, flag: &str) -> Result<Format, Failure> {
    match name {
        None => Ok(Format::from_path(path)),
        Some(n) => Format::from_name(n).ok_or_else(|| {
            Failure::new(
                Code::GENERIC,
                format!("{flag} {n:?} is not a format; use one of: {FORMAT_NAMES}"),
            )
        }),
    }
}

/// The value at `steps` in the first document (read in place: no copy of the plaintext).
fn extract<'a>(docs: &'a [Document], steps: &[Step]) -> Option<&'a Value> {
    let first = docs.first()?;
    let (Step::Key(k), rest) = steps.split_first()? else {
        return None;
    };
    let mut node = first.items.iter().find_map(|i| match i {
        Item::Pair(key, v) if key == k => Some(v),
        _ => None,
    })?;
    for step in rest {
        node = match (step, node) {
            (Step::Key(k), v) => v.get(k)?,
            (Step::Index(i), Value::List(l)) => &l[crate::sops::tree::element_index(l, *i)?],
            _ => return None,
        };
    }
    Some(node)
}

/// Reads a file into a wiped-on-drop buffer; a missing file is exit 100 as in sops.
pub fn read_input(path: &Path) -> Result<Zeroizing<Vec<u8>>, Failure> {
    std::fs::read(path).map(Zeroizing::new).map_err(|e| {
        Failure::new(
            if e.kind() == std::io::ErrorKind::NotFound {
                Code::NO_FILE_SPECIFIED
            } else {
                Code::COULD_NOT_READ_INPUT_FILE
            },
            format!("{}: cannot read: {e}", path.display()),
        )
    })
}

/// Writes `bytes` to `path` atomically: a sibling temp file (0600) renamed over the target.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.lockstep-{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        if let Ok(meta) = std::fs::metadata(path) {
            std::fs::set_permissions(&tmp, meta.permissions())?;
        }
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes to `-i` / `--output` atomically, else to stdout (a closed pipe is not an error).
pub fn write_output(io: &IoArgs, bytes: &[u8], stdout: &mut dyn Write) -> Result<(), Failure> {
    let target = if io.in_place {
        Some(&io.file)
    } else {
        io.output.as_ref()
    };
    match target {
        Some(path) => write_atomic(path, bytes).map_err(|e| {
            Failure::new(
                Code::COULD_NOT_WRITE_OUTPUT_FILE,
                format!("{}: cannot write: {e}", path.display()),
            )
        }),
        None => match stdout.write_all(bytes).and_then(|_| stdout.flush()) {
            Ok(()) => Ok(()),
            // A closed pipe (e.g. `| head`) is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            Err(e) => Err(Failure::new(
                Code::COULD_NOT_WRITE_OUTPUT_FILE,
                format!("cannot write to stdout: {e}"),
            )),
        },
    }
}

/// `lockstep keygen`
pub fn keygen(
    args: &KeygenArgs,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<(), Failure> {
    let created = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let (text, public) = if args.pq {
        crate::keys::generate_pq(&created)
    } else {
        crate::keys::generate(&created)
    };
    match &args.output {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        Failure::new(
                            Code::GENERIC,
                            format!(
                                "{}: already exists; refusing to overwrite an identity",
                                path.display()
                            ),
                        )
                    } else {
                        Failure::new(
                            Code::COULD_NOT_WRITE_OUTPUT_FILE,
                            format!("{}: cannot create: {e}", path.display()),
                        )
                    }
                })?;
            f.write_all(text.as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| {
                    Failure::new(
                        Code::COULD_NOT_WRITE_OUTPUT_FILE,
                        format!("{}: cannot write: {e}", path.display()),
                    )
                })?;
            let _ = writeln!(stderr, "Public key: {public}");
        }
        None => {
            stdout.write_all(text.as_bytes()).map_err(|e| {
                Failure::new(
                    Code::COULD_NOT_WRITE_OUTPUT_FILE,
                    format!("cannot write to stdout: {e}"),
                )
            })?;
        }
    }
    Ok(())
}

/// Finds `.sops.yaml`: `--config`, `SOPS_CONFIG`, else upwards from the file's directory, else upwards
/// from the working directory.
pub fn find_config(
    explicit: Option<&Path>,
    env: &Env<'_>,
    file: &Path,
) -> Result<Option<(PathBuf, Config)>, Failure> {
    let load = |p: &Path| -> Result<Option<(PathBuf, Config)>, Failure> {
        let text = std::fs::read_to_string(p).map_err(|e| {
            Failure::new(Code::GENERIC, format!("{}: cannot read: {e}", p.display()))
        })?;
        let config = Config::parse(&text)
            .map_err(|e| Failure::new(Code::GENERIC, format!("{}: {e}", p.display())))?;
        let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Some((dir, config)))
    };
    if let Some(p) = explicit {
        return load(p);
    }
    if let Some(p) = (env.var)("SOPS_CONFIG") {
        return load(Path::new(&p));
    }
    let abs = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let cwd = std::env::current_dir().ok();
    let starts = [abs.parent().map(Path::to_path_buf), cwd];
    for start in starts.into_iter().flatten() {
        for dir in start.ancestors().take(100) {
            let candidate = dir.join(".sops.yaml");
            if candidate.is_file() {
                return load(&candidate);
            }
        }
    }
    Ok(None)
}

/// `lockstep encrypt`
pub fn encrypt(args: &EncryptArgs, env: &Env<'_>, stdout: &mut dyn Write) -> Result<(), Failure> {
    let (format, out_format) = args.io.formats()?;
    let plain = args.io.read()?;
    let new = args.new.plan(args.io.name(), env)?;
    let out = encrypt_new(args.io.name(), format, out_format, &plain, new)?;
    write_output(&args.io, &out, stdout)
}

/// Renders a "no identity matched" error with everything needed to fix it (public halves only).
pub fn explain(file: &Path, err: &SopsError, searched: &[String]) -> String {
    crate::decrypt::explain_sops(
        &file.display().to_string(),
        err,
        searched,
        crate::decrypt::LOCAL_KEY_HINT,
    )
}

/// One step of a sops path (`["key"]` or `[0]`).
#[derive(Debug)]
pub enum Step {
    /// A mapping key.
    Key(String),
    /// A list index.
    Index(usize),
}

/// Parses a sops path like `["a"][0]["b"]`.
pub fn parse_extract(path: &str) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    let mut rest = path.trim();
    while !rest.is_empty() {
        rest = rest.strip_prefix('[')?;
        let end;
        if let Some(q) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') {
            let close = rest[1..].find(q)? + 1;
            steps.push(Step::Key(rest[1..close].to_string()));
            end = close + 1;
        } else {
            let close = rest.find(']')?;
            steps.push(Step::Index(rest[..close].trim().parse().ok()?));
            end = close;
        }
        rest = rest[end..].strip_prefix(']')?;
    }
    Some(steps)
}

/// Reads and decrypts `file` with every identity available (MAC checked unless `ignore_mac`).
pub fn open(
    file: &Path,
    format: Format,
    identity_files: &[PathBuf],
    env: &Env<'_>,
    ignore_mac: bool,
) -> Result<sops::Decrypted, Failure> {
    let bytes = read_input(file)?;
    open_bytes(file, &bytes, format, identity_files, env, ignore_mac)
}

/// Decrypts `bytes` (named `name` in messages) with every identity available.
pub fn open_bytes(
    name: &Path,
    bytes: &[u8],
    format: Format,
    identity_files: &[PathBuf],
    env: &Env<'_>,
    ignore_mac: bool,
) -> Result<sops::Decrypted, Failure> {
    let ring = keysources::load(env, identity_files).map_err(|e| {
        Failure::new(
            Code::COULD_NOT_RETRIEVE_KEY,
            format!("{}: {e}", name.display()),
        )
    })?;
    let decrypted = sops::decrypt(bytes, format, &ring, ignore_mac)
        .map_err(|e| Failure::new(Code::of(&e), explain(name, &e, &ring.searched)))?;
    // As sops warns: a comment that is encrypted but does not open was most likely moved or
    // edited by hand. It is kept as it is (ciphertext), never shown.
    for at in decrypted.stash.unreadable_comments() {
        eprintln!(
            "lockstep: warning: {}: the encrypted comment at {at} does not decrypt (moved or edited by hand?); it is kept as it is",
            name.display()
        );
    }
    Ok(decrypted)
}

/// The operating system's random source, as the format code's injected RNG.
pub fn random(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random source is available");
}

/// `lockstep decrypt`
pub fn decrypt(args: &DecryptArgs, env: &Env<'_>, stdout: &mut dyn Write) -> Result<(), Failure> {
    let file = &args.io.file;
    let fname = file.display();
    let (format, out_format) = args.io.formats()?;
    let bytes = args.io.read()?;
    let decrypted = open_bytes(
        args.io.name(),
        &bytes,
        format,
        &args.identity,
        env,
        args.ignore_mac,
    )?;
    let indent = 4;
    let out: Zeroizing<Vec<u8>> = match &args.extract {
        None => store::emit_plain(out_format, &decrypted.docs, indent).map_err(|e| {
            Failure::new(
                Code::ERROR_DUMPING_TREE,
                format!("{fname}: cannot write as {out_format:?}: {e}"),
            )
        })?,
        Some(path) => {
            let steps = parse_extract(path).ok_or_else(|| {
                Failure::new(
                    Code::INVALID_TREE_PATH_FORMAT,
                    format!("--extract {path:?}: expected a path like '[\"key\"][0][\"other\"]'"),
                )
            })?;
            let node = extract(&decrypted.docs, &steps).ok_or_else(|| {
                Failure::new(
                    Code::INVALID_TREE_PATH_FORMAT,
                    format!("{fname}: --extract {path}: no such key or index"),
                )
            })?;
            store::emit_plain_value(node, indent)
        }
    };
    write_output(&args.io, &out, stdout)
}
