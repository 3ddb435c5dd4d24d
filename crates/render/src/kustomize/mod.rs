//! Kustomize overlays as a render source: an environment's `kustomize:` directory is built by the
//! real `kustomize build`, on a copy of the project taken from the in-memory snapshot (which holds
//! ciphertext only) in a private, memory-backed scratch directory removed afterwards. Its objects
//! join the environment's like any manifest.
//!
//! Nothing reaches out: remote bases and resources are refused before the build (vendor them, so
//! a review sees them); kustomize runs without its plugins, with an empty environment (no `git`
//! on its path). `helmCharts:` are rendered by lockstep's Helm path, not by kustomize, before
//! the build (its `charts` submodule says how).
//!
//! SOPS inside an overlay stays sealed: kustomize never sees a value, not even ciphertext. In the
//! scratch copy, a SOPS-encrypted resource becomes its document with each encrypted value replaced
//! by a sealed placeholder (and no `sops` metadata), and a SOPS dotenv file a `secretGenerator`
//! reads (`envs:`) becomes `KEY=<sealed:…>` lines (its `sops_*` keys dropped), and one it reads
//! whole (`files:`) the placeholder of the whole file (`<sealed:FILE#@…>`). Kustomize
//! transforms, patches and hashes those; apply decrypts the original files in memory, MAC
//! checked, and puts the values in place. Generated-name hash suffixes are therefore computed
//! over placeholders, which carry a digest of each value's ciphertext: deterministic, and changing
//! exactly when a value is re-encrypted (Flux hashes the decrypted values instead).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use yaml_serde::Value;

mod charts;

pub(crate) use charts::take_mark;

use super::chart::{self, Helm};
use super::diagnostic::Diagnostic;
use super::program;
use super::project::Environment;
use super::sealed::{SealedRef, SecretsFile, Transform, ciphertext_digest};
use lockstep_core::snapshot::{Snapshot, join_path as join};

/// The environment variable naming the `kustomize` program (default: `kustomize` on `PATH`).
pub const KUSTOMIZE_ENV: &str = "LOCKSTEP_KUSTOMIZE";

/// How long one `kustomize build` may take.
pub const KUSTOMIZE_TIMEOUT: Duration = Duration::from_secs(60);

/// Data one `kustomize build` may use (`RLIMIT_DATA`), in bytes.
pub const KUSTOMIZE_MEMORY: u64 = 1024 * 1024 * 1024;

/// The names kustomize reads a kustomization from, in its order.
pub const KUSTOMIZATION_FILES: [&str; 3] =
    ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Whether and with what overlays are built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kustomizer {
    /// By running kustomize.
    Run(Kustomize),
    /// Not at all (the controller's render probe: the build runs bounded in its own process).
    Skip,
}

impl Default for Kustomizer {
    fn default() -> Kustomizer {
        Kustomizer::Run(Kustomize::from_env())
    }
}

/// The `kustomize` program and its bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kustomize {
    /// The program (`$LOCKSTEP_KUSTOMIZE`, else `kustomize` on `PATH`).
    pub program: PathBuf,
    /// Wall-clock time before it is killed.
    pub timeout: Duration,
    /// Its `RLIMIT_DATA`, in bytes.
    pub memory: u64,
}

impl Kustomize {
    /// `$LOCKSTEP_KUSTOMIZE` or `kustomize`, with the default bounds.
    pub fn from_env() -> Kustomize {
        let program = std::env::var_os(KUSTOMIZE_ENV)
            .filter(|p| !p.is_empty())
            .map_or_else(|| PathBuf::from("kustomize"), PathBuf::from);
        Kustomize {
            program,
            timeout: KUSTOMIZE_TIMEOUT,
            memory: KUSTOMIZE_MEMORY,
        }
    }
}

/// An overlay built.
pub(crate) struct Built {
    /// `kustomize build`'s output.
    pub output: String,
    /// The key structure of each SOPS file the overlay read (its placeholders name these).
    pub sealed: Vec<SecretsFile>,
    /// The releases of its `helmCharts`, rendered by Helm before the build.
    pub releases: Vec<chart::Output>,
}

/// What an overlay's charts are rendered with: Helm (none: charts are refused) and the
/// environment's profile.
pub(crate) struct ChartsWith<'a> {
    /// The Helm that renders them.
    pub helm: Option<&'a Helm>,
    /// The environment (namespace, `.Capabilities`).
    pub environment: &'a Environment,
}

/// Builds the overlay at `dir` (a project directory holding a kustomization); at most
/// `max_output` bytes of output. Errors name the file at fault and what to do.
pub(crate) fn build(
    kustomize: &Kustomize,
    snapshot: &Snapshot,
    dir: &str,
    with: &ChartsWith<'_>,
    max_output: usize,
) -> Result<Built, Diagnostic> {
    let dir = dir.trim_end_matches('/');
    if kustomization_of(snapshot, dir).is_none() {
        return Err(
            Diagnostic::new(format!("kustomize: {dir} holds no kustomization.yaml"))
                .in_file(super::PROJECT_FILE)
                .with_help("name a directory of the project that holds a kustomization.yaml"),
        );
    }
    let mut stand_ins = check_tree(snapshot)?;
    let reached = reached(snapshot, dir);
    let entries = charts::entries(snapshot, &reached, with.environment, &mut stand_ins)?;
    let inflated = match (entries.is_empty(), with.helm) {
        (true, _) => charts::Inflated::default(),
        (false, Some(helm)) => charts::inflate(helm, snapshot, &reached, entries, max_output)?,
        (false, None) => {
            return Err(Diagnostic::new(format!(
                "kustomize build {dir}: its helmCharts are not rendered here"
            ))
            .in_file(dir));
        }
    };
    let fail =
        |message: String| Diagnostic::new(format!("kustomize build {dir}: {message}")).in_file(dir);
    let scratch = program::Scratch::new("kustomize")
        .map_err(|e| fail(format!("cannot make a scratch directory: {e}")))?;
    let root = scratch.0.join("project");
    copy_snapshot(snapshot, &root, &stand_ins, &inflated.files)
        .map_err(|(path, e)| fail(format!("cannot copy {path}: {e}")))?;
    let home = scratch.0.join("home");
    let mut cmd = Command::new(&kustomize.program);
    cmd.arg("build").arg(root.join(dir));
    // No plugins, no git (remote bases), nothing of the host's setup.
    cmd.env_clear().env("HOME", &home).current_dir(&root);
    let bounds = program::Bounds {
        timeout: kustomize.timeout,
        memory: kustomize.memory,
    };
    let ran =
        program::run(&mut cmd, &[], bounds, max_output, false).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => fail(format!(
                "overlays are built by the kustomize program, and {} was not found",
                kustomize.program.display()
            ))
            .with_help(format!(
                "install kustomize (v5), or set {KUSTOMIZE_ENV} to the kustomize program"
            )),
            _ => fail(format!("cannot run {}: {e}", kustomize.program.display())),
        })?;
    let Some(status) = ran.status else {
        return Err(fail(format!(
            "it took longer than {}s and was stopped",
            kustomize.timeout.as_secs()
        ))
        .with_help("look for a base that includes itself, or a very large generator"));
    };
    if ran.too_long {
        return Err(fail(format!(
            "its output is larger than the {max_output} bytes left for the render"
        ))
        .with_help("a render is bounded; split the environment"));
    }
    if !status.success() {
        let said = String::from_utf8_lossy(&ran.err);
        // Paths in kustomize's message are the scratch copy's: show them as project paths.
        let said = said.replace(&format!("{}/", root.display()), "");
        let said = said.trim();
        return Err(fail(format!(
            "failed ({status}): {}",
            if said.is_empty() { "no message" } else { said }
        ))
        .with_help("the message above is kustomize's; it names the file at fault"));
    }
    let output =
        String::from_utf8(ran.out.to_vec()).map_err(|_| fail("its output is not UTF-8".into()))?;
    Ok(Built {
        output,
        sealed: stand_ins.into_values().map(|(_, file)| file).collect(),
        releases: inflated.releases,
    })
}

/// The kustomizations the build of `dir` reads (its own, then those its `resources`, `bases`
/// and `components` name, once each), parsed.
fn reached(snapshot: &Snapshot, dir: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut queue = std::collections::VecDeque::from([dir.to_string()]);
    while let Some(dir) = queue.pop_front() {
        if !seen.insert(dir.clone()) {
            continue;
        }
        let Some((path, bytes)) = kustomization_of(snapshot, &dir) else {
            continue;
        };
        // kustomize reports its own parse errors, with the file.
        let Ok(doc) = yaml_serde::from_slice::<Value>(bytes) else {
            continue;
        };
        for key in ["resources", "bases", "components"] {
            for entry in strings(doc.get(key)) {
                if let Some(next) = join(&dir, &entry) {
                    queue.push_back(next);
                }
            }
        }
        out.push((path, doc));
    }
    out
}

/// The strings of a kustomization's list field.
fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect()
}

/// The directory of a project file (`""` at the root).
fn dir_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(d, _)| d)
}

/// The stand-ins of SOPS files, by path: their sealed text and key structure.
type StandIns = std::collections::BTreeMap<String, (String, SecretsFile)>;

/// The kustomization file of `dir`, if it has one.
fn kustomization_of<'s>(snapshot: &'s Snapshot, dir: &str) -> Option<(String, &'s [u8])> {
    KUSTOMIZATION_FILES.iter().find_map(|name| {
        let path = if dir.is_empty() || dir == "." {
            (*name).to_string()
        } else {
            format!("{dir}/{name}")
        };
        snapshot.get(&path).map(|b| (path, b))
    })
}

/// Refuses what would reach outside the project (remote resources and bases) and finds the
/// SOPS-encrypted files kustomizations read (checked in every kustomization and file).
fn check_tree(snapshot: &Snapshot) -> Result<StandIns, Diagnostic> {
    let mut stand_ins = StandIns::new();
    for (path, bytes) in snapshot.under("") {
        let name = path.rsplit('/').next().unwrap_or(path);
        if !KUSTOMIZATION_FILES.contains(&name) {
            continue;
        }
        // kustomize reports its own parse errors, with the file.
        if let Ok(doc) = yaml_serde::from_slice::<Value>(bytes) {
            check_kustomization(path, &doc)?;
            sops_inputs(snapshot, path, &doc, &mut stand_ins)?;
        }
    }
    Ok(stand_ins)
}

/// The SOPS-encrypted files among a kustomization's resources and generator inputs (`envs:`,
/// and `files:`, read whole), each with its sealed stand-in.
fn sops_inputs(
    snapshot: &Snapshot,
    path: &str,
    doc: &Value,
    stand_ins: &mut StandIns,
) -> Result<(), Diagnostic> {
    let dir = dir_of(path);
    let mut read: Vec<(String, bool)> = strings(doc.get("resources"))
        .into_iter()
        .map(|r| (r, true))
        .collect();
    let mut whole: Vec<String> = Vec::new();
    for generator in ["secretGenerator", "configMapGenerator"] {
        for g in doc
            .get(generator)
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            for f in strings(g.get("files")) {
                // `key=path` or `path`.
                whole.push(f.split_once('=').map_or(f.clone(), |(_, p)| p.to_string()));
            }
            read.extend(strings(g.get("envs")).into_iter().map(|e| (e, false)));
            if let Some(env) = g.get("env").and_then(Value::as_str) {
                read.push((env.to_string(), false));
            }
        }
    }
    let encrypted = |file: &str| -> Option<Vec<u8>> {
        let content = snapshot.get(file)?;
        let format = lockstep_sops::store::Format::from_path(Path::new(file));
        lockstep_sops::is_encrypted(content, format).then(|| content.to_vec())
    };
    for input in whole {
        let Some(file) = join(dir, &input) else {
            continue;
        };
        let Some(content) = encrypted(&file) else {
            continue;
        };
        // The whole decrypted file (YAML, JSON, dotenv, INI or binary, as `sops -d` prints it).
        let structure = SecretsFile::parse(&file, &content)?.read_whole();
        let r = SealedRef {
            file: file.clone(),
            path: Vec::new(),
            transform: Transform::Plain,
            digest: Some(ciphertext_digest(&content)),
        };
        stand_ins.insert(file, (r.placeholder(), structure));
    }
    for (input, resource) in read {
        let Some(file) = join(dir, &input) else {
            continue;
        };
        if stand_ins.contains_key(&file) {
            continue;
        }
        let Some(content) = encrypted(&file) else {
            continue;
        };
        let structure = SecretsFile::parse(&file, &content)?;
        let text = if resource {
            sealed_manifest(&file, &content)?
        } else {
            sealed_dotenv(&file, &content)
        };
        stand_ins.insert(file, (text, structure));
    }
    Ok(())
}

/// A SOPS-encrypted YAML document with each encrypted value replaced by its placeholder and its
/// `sops` metadata removed.
fn sealed_document(file: &str, content: &[u8]) -> Result<Value, Diagnostic> {
    let mut doc = sops_document(file, content)?;
    seal_values(file, &mut doc, &mut Vec::new());
    Ok(doc)
}

/// A SOPS-encrypted YAML document without its `sops` metadata.
fn sops_document(file: &str, content: &[u8]) -> Result<Value, Diagnostic> {
    let mut doc: Value = yaml_serde::from_slice(content).map_err(|_| {
        Diagnostic::new("a SOPS file in an overlay must be one YAML document")
            .in_file(file)
            .with_help("split it into one file per object")
    })?;
    if let Some(m) = doc.as_mapping_mut() {
        m.remove("sops");
    }
    Ok(doc)
}

/// A SOPS-encrypted manifest as [`sealed_document`] seals it, its identity in clear.
fn sealed_manifest(file: &str, content: &[u8]) -> Result<String, Diagnostic> {
    let mut doc = sops_document(file, content)?;
    let encrypted = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .is_some_and(|s| s.starts_with("ENC["))
    };
    let meta = doc.get("metadata");
    if [
        doc.get("apiVersion"),
        doc.get("kind"),
        meta.and_then(|m| m.get("name")),
        meta.and_then(|m| m.get("namespace")),
    ]
    .into_iter()
    .any(encrypted)
    {
        return Err(Diagnostic::new("its apiVersion, kind or metadata are encrypted, and kustomize needs them in clear")
        .in_file(file)
        .with_help("encrypt only the values: `encrypted_regex: ^(data|stringData)$` in .sops.yaml (as Flux's guide does), then `lockstep encrypt` the file again"));
    }
    seal_values(file, &mut doc, &mut Vec::new());
    Ok(yaml_serde::to_string(&doc).unwrap_or_default())
}

/// Replaces every `ENC[…]` string under `v` with the placeholder of its key path.
fn seal_values(file: &str, v: &mut Value, path: &mut Vec<String>) {
    match v {
        Value::String(s) if s.starts_with("ENC[") => {
            *s = sealed_ref(file, path, s).placeholder();
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                path.push(k.as_str().map_or_else(|| format!("{k:?}"), str::to_string));
                seal_values(file, item, path);
                path.pop();
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                seal_values(file, item, path);
                path.pop();
            }
        }
        _ => {}
    }
}

fn sealed_ref(file: &str, path: &[String], ciphertext: &str) -> SealedRef {
    SealedRef {
        file: file.to_string(),
        path: path.to_vec(),
        transform: Transform::Plain,
        digest: Some(ciphertext_digest(ciphertext.as_bytes())),
    }
}

/// A SOPS dotenv file as `KEY=<placeholder>` lines, without its `sops_*` metadata keys.
fn sealed_dotenv(file: &str, content: &[u8]) -> String {
    let text = String::from_utf8_lossy(content);
    let mut out = String::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            if line.trim_start().starts_with('#') || line.trim().is_empty() {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        };
        if key.starts_with("sops_") {
            continue;
        }
        if value.starts_with("ENC[") {
            let r = sealed_ref(file, &[key.to_string()], value);
            out.push_str(&format!("{key}={}\n", r.placeholder()));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// One kustomization's references.
fn check_kustomization(path: &str, doc: &Value) -> Result<(), Diagnostic> {
    for key in ["resources", "bases", "components", "crds"] {
        for entry in doc
            .get(key)
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let Some(entry) = entry.as_str() else {
                continue;
            };
            if is_remote(entry) {
                return Err(Diagnostic::new(format!(
                    "{key} entry {entry:?} is remote; lockstep does not fetch remote bases"
                ))
                .in_file(path)
                .with_help("vendor it into the repository (a review then sees what is applied) and name its directory"));
            }
        }
    }
    Ok(())
}

/// Whether a kustomization entry names something outside the repository (a URL, a Git remote).
fn is_remote(entry: &str) -> bool {
    entry.contains("://")
        || entry.starts_with("git@")
        || entry.starts_with("github.com/")
        || entry.starts_with("gitlab.com/")
        || entry.contains("?ref=")
        || entry.contains(".git//")
}

/// Writes every file of the snapshot under `root` (one mkdir per directory): the SOPS files an
/// overlay reads as their stand-ins, kustomizations with charts as `inflated` rewrote them, and
/// the charts' output beside them.
fn copy_snapshot(
    snapshot: &Snapshot,
    root: &Path,
    stand_ins: &StandIns,
    inflated: &std::collections::BTreeMap<String, String>,
) -> Result<(), (String, std::io::Error)> {
    let files = snapshot
        .under("")
        .filter(|(path, _)| !inflated.contains_key(*path))
        .map(|(path, bytes)| match stand_ins.get(path) {
            Some((text, _)) => (path, text.as_bytes()),
            None => (path, bytes),
        })
        .chain(inflated.iter().map(|(p, t)| (p.as_str(), t.as_bytes())));
    program::write_tree(root, files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(path: &str, text: &[u8]) -> Result<(), Diagnostic> {
        check_kustomization(path, &yaml_serde::from_slice(text).expect("YAML"))
    }

    #[test]
    fn remote_bases_are_refused() {
        for entry in [
            "https://github.com/org/repo//base?ref=v1",
            "github.com/org/repo/base",
            "git@github.com:org/repo.git//base",
        ] {
            let text = format!("resources:\n  - ../base\n  - {entry}\n");
            let err = check("overlays/prod/kustomization.yaml", text.as_bytes()).expect_err(entry);
            assert!(err.message.contains("is remote"), "{}", err.message);
        }
        assert!(
            check(
                "k/kustomization.yaml",
                b"resources: [../base, deploy.yaml]\n"
            )
            .is_ok()
        );
    }
}
