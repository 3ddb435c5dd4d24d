//! Key management: `rotate` (new data key, same recipients ± changes), `updatekeys` (same data key,
//! recipients the creation rules name now) and `reseal` (both at once, for whole trees: the one safe
//! rotation). Every write is atomic per file: a sibling temp of the ciphertext, then a rename.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;

use super::crypt;
use super::exit::{Code, Failure};
use super::keysources::{self, Env};
use crate::sops::cipher::DataKey;
use crate::sops::config::pgp_recipient;
use crate::sops::metadata::Metadata;
use crate::sops::store::{self, Format};
use crate::sops::walk::Rng;
use crate::sops::{self, SopsError};

/// `lockstep rotate`
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The file to rotate.
    pub file: PathBuf,
    /// Write the result back to FILE instead of stdout.
    #[arg(short = 'i', long = "in-place")]
    pub in_place: bool,
    /// Add these age recipients (comma-separated) to the first key group.
    #[arg(long, value_name = "RECIPIENTS")]
    pub add_age: Vec<String>,
    /// Remove these age recipients (comma-separated) from every key group.
    #[arg(long, value_name = "RECIPIENTS")]
    pub rm_age: Vec<String>,
    /// Add these PGP keys (fingerprints, comma-separated; public keys from GnuPG) to the first key group.
    #[arg(long, value_name = "FINGERPRINTS")]
    pub add_pgp: Vec<String>,
    /// Remove these PGP keys (fingerprints, comma-separated) from every key group.
    #[arg(long, value_name = "FINGERPRINTS")]
    pub rm_pgp: Vec<String>,
    /// Also try the identities in FILE; repeatable.
    #[arg(long, value_name = "FILE")]
    pub identity: Vec<PathBuf>,
}

/// `lockstep updatekeys`
#[derive(Debug, Args)]
pub struct UpdatekeysArgs {
    /// Files to update.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Accepted for sops compatibility (lockstep does not prompt).
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Also try the identities in FILE; repeatable.
    #[arg(long, value_name = "FILE")]
    pub identity: Vec<PathBuf>,
}

/// `lockstep reseal`
#[derive(Debug, Args)]
pub struct ResealArgs {
    /// Files or directories (default: the working directory).
    pub paths: Vec<PathBuf>,
    /// Report what would change; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Check only (for CI): exit 1 when a file's recipients differ from what the creation rules
    /// name today, else say it is up to date; write nothing.
    #[arg(long, conflicts_with = "dry_run")]
    pub check: bool,
    /// Also try the identities in FILE; repeatable.
    #[arg(long, value_name = "FILE")]
    pub identity: Vec<PathBuf>,
}

fn split(list: &[String]) -> Vec<String> {
    list.iter()
        .flat_map(|a| a.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn fail(file: &Path, e: SopsError) -> Failure {
    Failure::new(Code::of(&e), format!("{}: {e}", file.display()))
}

/// Files below `paths` (directories walked; `.git`, `target` and `node_modules` skipped), sorted.
pub fn files_under(paths: &[PathBuf]) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        if p.is_dir() {
            let skip = p
                .file_name()
                .is_some_and(|n| n == ".git" || n == "target" || n == "node_modules");
            if skip {
                return;
            }
            if let Ok(entries) = std::fs::read_dir(p) {
                for e in entries.flatten() {
                    walk(&e.path(), out);
                }
            }
        } else if p.is_file() {
            out.push(p.to_path_buf());
        }
    }
    let mut out = Vec::new();
    let default = [PathBuf::from(".")];
    for p in if paths.is_empty() {
        &default[..]
    } else {
        paths
    } {
        walk(p, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

fn recipients(meta: &Metadata) -> BTreeSet<String> {
    meta.age_entries()
        .map(|e| e.recipient.clone())
        .chain(meta.pgp_entries().map(|e| pgp_recipient(&e.fp)))
        .collect()
}

/// Re-encrypts a decrypted file with a new data key for `groups`; unchanged values reuse their IVs.
fn rekey(
    file: &Path,
    format: Format,
    mut decrypted: sops::Decrypted,
    groups: &[Vec<(String, crate::keys::Recipient)>],
    threshold: Option<usize>,
) -> Result<Vec<u8>, Failure> {
    let mut random = crypt::random;
    let mut rng: Rng = &mut random;
    let key = DataKey::generate(&mut rng);
    let mut meta = decrypted.metadata.clone();
    let threshold = if groups.len() > 1 {
        Some(threshold.unwrap_or(groups.len()).min(groups.len()))
    } else {
        None
    };
    meta.key_groups = sops::wrap_groups(&key, groups, threshold, jiff::Timestamp::now(), &mut rng)
        .map_err(|e| fail(file, e))?;
    meta.shamir_threshold = threshold;
    let mut docs = std::mem::take(&mut decrypted.docs);
    sops::seal(
        &mut docs,
        meta,
        &key,
        Some(&decrypted.stash),
        format,
        jiff::Timestamp::now(),
        4,
        &mut rng,
    )
    .map_err(|e| fail(file, e))
}

/// `lockstep rotate`: a new data key for the file's recipients (plus/minus `--add-age`/`--rm-age`,
/// `--add-pgp`/`--rm-pgp`).
pub fn rotate(args: &RotateArgs, env: &Env<'_>, stdout: &mut dyn Write) -> Result<(), Failure> {
    let file = &args.file;
    let format = Format::from_path(file);
    let decrypted = crypt::open(file, format, &args.identity, env, false)?;
    sops::ensure_age_only(&decrypted.metadata).map_err(|e| fail(file, e))?;
    let mut groups: Vec<Vec<String>> = decrypted
        .metadata
        .key_groups
        .iter()
        .map(|g| {
            g.age
                .iter()
                .map(|e| e.recipient.clone())
                .chain(g.pgp.iter().map(|e| pgp_recipient(&e.fp)))
                .collect()
        })
        .collect();
    let pgp = |list: &[String]| {
        split(list)
            .iter()
            .map(|fp| pgp_recipient(fp))
            .collect::<Vec<_>>()
    };
    let remove: Vec<String> = split(&args.rm_age)
        .into_iter()
        .chain(pgp(&args.rm_pgp))
        .collect();
    for g in groups.iter_mut() {
        g.retain(|r| !remove.contains(r));
    }
    if let Some(first) = groups.first_mut() {
        for r in split(&args.add_age).into_iter().chain(pgp(&args.add_pgp)) {
            if !first.contains(&r) {
                first.push(r);
            }
        }
    }
    if groups.iter().any(|g| g.is_empty()) {
        return Err(Failure::new(
            Code::GENERIC,
            format!(
                "{}: a key group would have no recipients left",
                file.display()
            ),
        ));
    }
    let parsed = crypt::parse_groups(file, &groups, env)?;
    let threshold = decrypted.metadata.shamir_threshold;
    let out = rekey(file, format, decrypted, &parsed, threshold)?;
    if args.in_place {
        crypt::write_atomic(file, &out).map_err(|e| {
            Failure::new(
                Code::COULD_NOT_WRITE_OUTPUT_FILE,
                format!("{}: cannot write: {e}", file.display()),
            )
        })
    } else {
        stdout.write_all(&out).map_err(|e| {
            Failure::new(
                Code::COULD_NOT_WRITE_OUTPUT_FILE,
                format!("cannot write to stdout: {e}"),
            )
        })
    }
}

/// `lockstep updatekeys`: re-wrap the existing data key for the recipients the creation rules name now.
/// Values, `lastmodified` and the MAC are untouched; follow with `rotate` (or use `reseal`) so removed
/// recipients cannot read future versions with the old data key.
pub fn updatekeys(
    args: &UpdatekeysArgs,
    env: &Env<'_>,
    stdout: &mut dyn Write,
) -> Result<(), Failure> {
    let ring = keysources::load(env, &args.identity)
        .map_err(|e| Failure::new(Code::COULD_NOT_RETRIEVE_KEY, e.to_string()))?;
    for file in &args.files {
        let format = Format::from_path(file);
        let bytes = crypt::read_input(file)?;
        let loaded = store::load_encrypted(format, &bytes)
            .map_err(|source| fail(file, SopsError::Parse { format, source }))?;
        let meta = Metadata::parse(
            loaded
                .metadata
                .as_ref()
                .ok_or_else(|| fail(file, SopsError::NotEncrypted))?,
        )
        .map_err(|e| fail(file, e.into()))?;
        let config = crypt::find_config(None, env, file)?;
        let (groups, rule) = crypt::rule_recipients(file, &config)?;
        let now: BTreeSet<String> = groups.iter().flatten().cloned().collect();
        let before = recipients(&meta);
        if now == before && groups.len() == meta.key_groups.len() {
            let _ = writeln!(stdout, "{}: already up to date", file.display());
            continue;
        }
        sops::ensure_age_only(&meta).map_err(|e| fail(file, e))?;
        let key = sops::data_key(&meta, &ring)
            .map_err(|e| Failure::new(Code::of(&e), crypt::explain(file, &e, &ring.searched)))?;
        let parsed = crypt::parse_groups(file, &groups, env)?;
        let mut random = crypt::random;
        let mut rng: Rng = &mut random;
        let threshold = (groups.len() > 1).then(|| {
            rule.shamir_threshold
                .or(meta.shamir_threshold)
                .unwrap_or(groups.len())
                .min(groups.len())
        });
        let mut new_meta = meta.clone();
        new_meta.key_groups =
            sops::wrap_groups(&key, &parsed, threshold, jiff::Timestamp::now(), &mut rng)
                .map_err(|e| fail(file, e))?;
        new_meta.shamir_threshold = threshold;
        let out = store::emit_encrypted(format, &loaded.docs, &new_meta.to_value(), 4)
            .map_err(|source| fail(file, SopsError::Emit { format, source }))?;
        crypt::write_atomic(file, &out).map_err(|e| {
            Failure::new(
                Code::COULD_NOT_WRITE_OUTPUT_FILE,
                format!("{}: cannot write: {e}", file.display()),
            )
        })?;
        // Only a removed recipient holds a data key it should no longer have.
        let tail = if before.difference(&now).next().is_some() {
            "data key kept; run `lockstep rotate -i` (or `reseal`) so removed recipients cannot read new versions"
        } else {
            "data key kept"
        };
        report(stdout, file, &before, &now, tail);
    }
    Ok(())
}

fn report(
    out: &mut dyn Write,
    file: &Path,
    before: &BTreeSet<String>,
    now: &BTreeSet<String>,
    tail: &str,
) {
    let _ = writeln!(out, "{}:", file.display());
    for r in now.difference(before) {
        let _ = writeln!(out, "  + {r}");
    }
    for r in before.difference(now) {
        let _ = writeln!(out, "  - {r}");
    }
    let _ = writeln!(out, "  {tail}");
}

/// `lockstep reseal`: for every encrypted file under the paths that matches a creation rule, a new data
/// key and the recipients the rule names now. Files are independent: one failure does not stop the rest,
/// and each write is atomic.
pub fn reseal(args: &ResealArgs, env: &Env<'_>, stdout: &mut dyn Write) -> Result<(), Failure> {
    let mut failures = Vec::new();
    let mut done = 0;
    let mut differ = 0;
    for file in files_under(&args.paths) {
        if file.file_name().is_some_and(|n| n == ".sops.yaml") {
            continue;
        }
        let config = crypt::find_config(None, env, &file)?;
        let abs = std::path::absolute(&file).unwrap_or_else(|_| file.clone());
        let Some(rule) = config
            .as_ref()
            .and_then(|(dir, c)| c.rule_for(&abs, dir))
            .filter(|r| r.path_regex.is_some())
        else {
            continue;
        };
        let format = Format::from_path(&file);
        let Ok(bytes) = crypt::read_input(&file) else {
            continue;
        };
        if !sops::is_encrypted(&bytes, format) {
            failures.push(format!(
                "{}: matches a creation rule but is not encrypted (run `lockstep encrypt -i`)",
                file.display()
            ));
            continue;
        }
        let result = (|| -> Result<(), Failure> {
            let (groups, _) = crypt::rule_recipients(&file, &config)?;
            let loaded = store::load_encrypted(format, &bytes)
                .map_err(|source| fail(&file, SopsError::Parse { format, source }))?;
            let meta = Metadata::parse(
                loaded
                    .metadata
                    .as_ref()
                    .ok_or_else(|| fail(&file, SopsError::NotEncrypted))?,
            )
            .map_err(|e| fail(&file, e.into()))?;
            let before = recipients(&meta);
            let now: BTreeSet<String> = groups.iter().flatten().cloned().collect();
            let current = now == before && groups.len() == meta.key_groups.len();
            if args.check {
                if current {
                    let _ = writeln!(stdout, "{}: up to date", file.display());
                } else {
                    report(
                        stdout,
                        &file,
                        &before,
                        &now,
                        "recipients differ from the creation rules",
                    );
                    differ += 1;
                }
                return Ok(());
            }
            if args.dry_run {
                let tail = if current {
                    "recipients up to date; would get a new data key"
                } else {
                    "would get a new data key"
                };
                report(stdout, &file, &before, &now, tail);
                return Ok(());
            }
            let decrypted = crypt::open(&file, format, &args.identity, env, false)?;
            sops::ensure_age_only(&decrypted.metadata).map_err(|e| fail(&file, e))?;
            let parsed = crypt::parse_groups(&file, &groups, env)?;
            let out = rekey(&file, format, decrypted, &parsed, rule.shamir_threshold)?;
            crypt::write_atomic(&file, &out).map_err(|e| {
                Failure::new(
                    Code::COULD_NOT_WRITE_OUTPUT_FILE,
                    format!("{}: cannot write: {e}", file.display()),
                )
            })?;
            report(stdout, &file, &before, &now, "new data key");
            Ok(())
        })();
        match result {
            Ok(()) => done += 1,
            Err(f) => failures.push(f.message),
        }
    }
    if failures.is_empty() && args.check {
        if differ == 0 {
            let _ = writeln!(stdout, "{done} file(s) up to date");
            return Ok(());
        }
        return Err(Failure::new(
            Code::CHANGES,
            format!(
                "{differ} of {done} file(s) have recipients that differ from the creation rules; run `lockstep reseal`"
            ),
        ));
    }
    if failures.is_empty() {
        let _ = writeln!(
            stdout,
            "{done} file(s) {}",
            if args.dry_run {
                "would be resealed"
            } else {
                "resealed"
            }
        );
        Ok(())
    } else {
        Err(Failure::new(
            Code::GENERIC,
            format!(
                "{done} file(s) resealed; {} could not be:\n  {}",
                failures.len(),
                failures.join("\n  ")
            ),
        ))
    }
}
