//! Where identities come from, in sops's order and names, plus `--identity FILE`. This is the only
//! place that reads key material from the environment and the filesystem.

use std::path::{Path, PathBuf};
use std::process::Command;

use zeroize::Zeroizing;

use crate::keys::{IdentityError, KeyRing, SecretString, is_passphrase_protected};

/// Asks for the passphrase of the identity file named by its argument, or says why it cannot.
pub type AskPassphrase = dyn Fn(&str) -> Result<SecretString, String> + Sync;

/// Reads of the environment, injected so tests can run without touching the real one.
pub struct Env<'a> {
    /// Looks up a variable.
    pub var: &'a (dyn Fn(&str) -> Option<String> + Sync),
    /// The home directory.
    pub home: Option<PathBuf>,
    /// Asks for an identity file's passphrase.
    pub passphrase: &'a AskPassphrase,
}

impl Env<'_> {
    /// The process environment; passphrases are asked for on the controlling terminal.
    pub fn process() -> Env<'static> {
        Env {
            var: &|k| std::env::var(k).ok().filter(|v| !v.is_empty()),
            home: std::env::var_os("HOME").map(PathBuf::from),
            passphrase: &ask_on_terminal,
        }
    }
}

/// Prompts on the controlling terminal (`/dev/tty`, not stdin, so a pipe into lockstep cannot answer
/// and the passphrase is not echoed). Without a terminal, refuses with what to do.
fn ask_on_terminal(label: &str) -> Result<SecretString, String> {
    rpassword::prompt_password(format!("Enter the passphrase of the identity file {label}: "))
        .map(SecretString::from)
        .map_err(|e| {
            format!(
                "the identity file is passphrase-protected (age -p) and there is no terminal to ask for its passphrase ({e}); run lockstep on a terminal, or give it an identity without a passphrase (SOPS_AGE_KEY, SOPS_AGE_KEY_CMD)"
            )
        })
}

/// Adds the identities in `bytes`, asking for the passphrase first when the file is protected by one.
fn add(
    env: &Env<'_>,
    ring: &mut KeyRing,
    bytes: &[u8],
    label: &str,
) -> Result<usize, IdentityError> {
    if !is_passphrase_protected(bytes) {
        return ring.add_text(bytes, label);
    }
    let passphrase = (env.passphrase)(label).map_err(|reason| IdentityError {
        source_name: label.to_string(),
        reason,
    })?;
    ring.add_protected(bytes, passphrase, label)
}

fn read_key_file(path: &Path) -> std::io::Result<Zeroizing<Vec<u8>>> {
    std::fs::read(path).map(Zeroizing::new)
}

/// The default age key file: `$XDG_CONFIG_HOME/sops/age/keys.txt`, else `~/.config/sops/age/keys.txt`.
pub fn default_key_file(env: &Env<'_>) -> Option<PathBuf> {
    match (env.var)("XDG_CONFIG_HOME") {
        Some(x) => Some(PathBuf::from(x).join("sops/age/keys.txt")),
        None => env
            .home
            .as_ref()
            .map(|h| h.join(".config/sops/age/keys.txt")),
    }
}

/// Runs the shell command in variable `var` (if set) and adds the identities it prints.
fn key_cmd(env: &Env<'_>, ring: &mut KeyRing, var: &str) -> Result<(), IdentityError> {
    let Some(cmd) = (env.var)(var) else {
        ring.searched.push(format!("{var} (unset)"));
        return Ok(());
    };
    let err = |reason: String| IdentityError {
        source_name: var.into(),
        reason,
    };
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(&cmd)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| err(format!("cannot run: {e}")))?;
    let stdout = Zeroizing::new(out.stdout);
    if !out.status.success() {
        return Err(err(format!("exited with {}", out.status)));
    }
    let n = add(env, ring, &stdout, var)?;
    ring.searched.push(format!("{var} ({n} identities)"));
    Ok(())
}

/// Loads every identity from every source. Sources that are absent are noted in `searched`; a source
/// that exists but does not parse is an error naming it.
pub fn load(env: &Env<'_>, identity_files: &[PathBuf]) -> Result<KeyRing, IdentityError> {
    let mut ring = KeyRing::default();
    let file = |ring: &mut KeyRing,
                path: &Path,
                label: String,
                optional: bool|
     -> Result<(), IdentityError> {
        match read_key_file(path) {
            Ok(bytes) => {
                let n = add(env, ring, &bytes, &label)?;
                ring.searched.push(format!(
                    "{label} ({n} identit{})",
                    if n == 1 { "y" } else { "ies" }
                ));
                Ok(())
            }
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => {
                ring.searched.push(format!("{label} (not found)"));
                Ok(())
            }
            Err(e) => Err(IdentityError {
                source_name: label,
                reason: format!("cannot read: {e}"),
            }),
        }
    };

    for path in identity_files {
        file(
            &mut ring,
            path,
            format!("--identity {}", path.display()),
            false,
        )?;
    }
    // 1. SSH keys.
    key_cmd(env, &mut ring, "SOPS_AGE_SSH_PRIVATE_KEY_CMD")?;
    match (env.var)("SOPS_AGE_SSH_PRIVATE_KEY_FILE") {
        Some(p) => file(
            &mut ring,
            Path::new(&p),
            format!("SOPS_AGE_SSH_PRIVATE_KEY_FILE={p}"),
            false,
        )?,
        None => {
            ring.searched
                .push("SOPS_AGE_SSH_PRIVATE_KEY_FILE (unset)".into());
            if let Some(home) = &env.home {
                for name in ["id_ed25519", "id_rsa"] {
                    let p = home.join(".ssh").join(name);
                    if !p.is_file() {
                        ring.searched.push(format!("~/.ssh/{name} (not found)"));
                    } else {
                        // An unusable default SSH key (e.g. passphrase-protected) is skipped, as sops does.
                        if let Err(e) = file(&mut ring, &p, format!("~/.ssh/{name}"), true) {
                            ring.searched
                                .push(format!("~/.ssh/{name} (skipped: {})", e.reason));
                        }
                    }
                }
            }
        }
    }
    // 2. SOPS_AGE_KEY
    match (env.var)("SOPS_AGE_KEY") {
        Some(text) => {
            let text = Zeroizing::new(text);
            let n = add(env, &mut ring, text.as_bytes(), "SOPS_AGE_KEY")?;
            ring.searched.push(format!("SOPS_AGE_KEY ({n} identities)"));
        }
        None => ring.searched.push("SOPS_AGE_KEY (unset)".into()),
    }
    // 3. SOPS_AGE_KEY_FILE
    match (env.var)("SOPS_AGE_KEY_FILE") {
        Some(p) => file(
            &mut ring,
            Path::new(&p),
            format!("SOPS_AGE_KEY_FILE={p}"),
            false,
        )?,
        None => ring.searched.push("SOPS_AGE_KEY_FILE (unset)".into()),
    }
    // 4. SOPS_AGE_KEY_CMD
    key_cmd(env, &mut ring, "SOPS_AGE_KEY_CMD")?;
    // 5. The default key file.
    if let Some(p) = default_key_file(env) {
        file(&mut ring, &p, p.display().to_string(), true)?;
    }
    // 6. As sops: GnuPG's legacy secret keyring, read in process (GnuPG 2.1 and later keep secret
    //    keys in their agent instead, which the gpg program below reaches).
    let gnupghome = (env.var)("GNUPGHOME")
        .map(PathBuf::from)
        .or_else(|| env.home.as_ref().map(|h| h.join(".gnupg")));
    if let Some(secring) = gnupghome.map(|d| d.join("secring.gpg")) {
        let label = secring.display().to_string();
        match read_key_file(&secring) {
            Ok(bytes) => {
                let keys = crate::keys::pgp::parse_keyring(&bytes);
                ring.searched
                    .push(format!("{label} ({} unprotected PGP keys)", keys.len()));
                ring.pgp
                    .extend(keys.into_iter().map(|k| (k, label.clone())));
            }
            Err(_) => ring.searched.push(format!("{label} (not found)")),
        }
    }
    // PGP keys not given in process (`--identity key.asc`) are asked of GnuPG, as sops does.
    ring.agent = Some(Box::new(super::gpg::Gpg::from_env(env)));
    Ok(ring)
}
