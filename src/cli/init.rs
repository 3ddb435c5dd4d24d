//! `lockstep init`: scaffold a project that renders right away.
//!
//! Writes `lockstep.yaml` (environments `dev` and `prod`), `.sops.yaml`, values, one app's templates
//! and an encrypted secrets file per environment (random values, generated in memory and written
//! only encrypted). The age recipient is `--age`, else the user's existing identity (the same
//! sources `decrypt` uses), else a new key written where sops looks by default. In a Git repository
//! (one is created when `git` is available and the directory is not in one) the pre-commit hook
//! that refuses unencrypted secrets is installed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Args;
use zeroize::Zeroizing;

use crate::render::project::is_dns_label;
use crate::sops::store::Format;

use super::crypt::{NewFileArgs, encrypt_new};
use super::exit::{Code, Failure};
use super::keysources::{self, Env};

/// Arguments of `lockstep init`.
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// Directory to create the project in (created if missing).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Project name (default: the directory's name, as a DNS label).
    #[arg(long)]
    pub project: Option<String>,
    /// age recipient to encrypt the secrets to (default: your existing identity, else a new key).
    #[arg(long, value_name = "RECIPIENT")]
    pub age: Option<String>,
    /// Where to write a new key when one is needed (default: $XDG_CONFIG_HOME/sops/age/keys.txt or
    /// ~/.config/sops/age/keys.txt, where sops and lockstep look).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Do not create a Git repository or install the pre-commit hook.
    #[arg(long)]
    pub no_git: bool,
    /// Migrate a Flux repository instead: DIR (relative to the project directory) holds its
    /// Kustomizations (e.g. clusters/prod); writes lockstep.yaml over the same tree and prints
    /// the Syncs that replace them.
    #[arg(long, value_name = "DIR")]
    pub from_flux: Option<PathBuf>,
}

fn io_fail(path: &Path, e: std::io::Error) -> Failure {
    Failure::new(
        Code::COULD_NOT_WRITE_OUTPUT_FILE,
        format!("{}: {e}", path.display()),
    )
}

/// A DNS label made from a directory name (`My Shop` → `my-shop`).
pub fn project_name_from(dir: &Path) -> String {
    let base = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let mut name: String = base
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    while name.contains("--") {
        name = name.replace("--", "-");
    }
    let name: String = name.trim_matches('-').chars().take(40).collect();
    let name = name.trim_matches('-').to_string();
    if is_dns_label(&name) {
        name
    } else {
        "app".into()
    }
}

/// Picks the recipient: `--age`, else the first identity found, else a new key (written 0600).
fn recipient(args: &InitArgs, env: &Env<'_>, stderr: &mut dyn Write) -> Result<String, Failure> {
    if let Some(r) = &args.age {
        crate::keys::Recipient::parse(r)
            .map_err(|e| Failure::new(Code::ERROR, format!("--age {r}: {e}")))?;
        return Ok(r.clone());
    }
    if args.key_file.is_none()
        && let Ok(ring) = keysources::load(env, &[])
        && let Some(id) = ring
            .identities
            .iter()
            .find(|i| i.public.starts_with("age1"))
    {
        let _ = writeln!(
            stderr,
            "lockstep: encrypting to your existing identity {} (from {})",
            id.public, id.source
        );
        return Ok(id.public.clone());
    }
    let path = match &args.key_file {
        Some(p) => p.clone(),
        None => keysources::default_key_file(env).ok_or_else(|| {
            Failure::new(
                Code::ERROR,
                "no HOME or XDG_CONFIG_HOME to put a new key in; pass --key-file FILE or --age RECIPIENT",
            )
        })?,
    };
    if path.exists() {
        return Err(Failure::new(
            Code::ERROR,
            format!(
                "{} exists but holds no age identity lockstep can read; pass --age RECIPIENT",
                path.display()
            ),
        ));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_fail(parent, e))?;
    }
    let created = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let (text, public) = crate::keys::generate(&created);
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_fail(&path, e))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| io_fail(&path, e))?;
    }
    let _ = writeln!(
        stderr,
        "lockstep: created a new age key in {} (public key {public}); back it up: without it the secrets cannot be decrypted",
        path.display()
    );
    Ok(public)
}

fn random_token(bytes: usize) -> Zeroizing<String> {
    let mut buf = Zeroizing::new(vec![0u8; bytes]);
    super::crypt::random(&mut buf);
    Zeroizing::new(hex::encode(&*buf))
}

/// The scaffold's plain files, as (path, content).
fn files(project: &str, recipient: &str) -> Vec<(String, String)> {
    let mut out = vec![
        (
            "lockstep.yaml".to_string(),
            format!(
                "# Project name and environments; each environment renders into its namespace\n# (createNamespace: the Namespace is part of the set unless a template defines it).\nproject: {project}\nenvironments:\n  dev:\n    namespace: {project}-dev\n    createNamespace: true\n  prod:\n    namespace: {project}\n    createNamespace: true\n"
            ),
        ),
        (
            ".sops.yaml".to_string(),
            format!(
                "# Which files are encrypted, and to whom (read by lockstep and by sops).\ncreation_rules:\n  - path_regex: environments/[^/]+/secrets\\.(yaml|json|env|ini)$\n    age: {recipient}\n  - path_regex: manifests/.*\\.sops\\.yaml$\n    encrypted_regex: ^(data|stringData)$\n    age: {recipient}\n"
            ),
        ),
        (
            "values.yaml".to_string(),
            "# Base values; environments/<env>/values.yaml and --set override them.\nimage:\n  repository: ghcr.io/stefanprodan/podinfo\n  tag: \"6.7.1\"\nreplicas: 1\nport: 9898\nmessage: Hello from lockstep\n".to_string(),
        ),
        (
            "environments/dev/values.yaml".to_string(),
            "message: Hello from dev\n".to_string(),
        ),
        (
            "environments/prod/values.yaml".to_string(),
            "replicas: 3\n".to_string(),
        ),
        (
            "templates/_helpers/labels.j2".to_string(),
            "{% macro labels(component) -%}\napp.kubernetes.io/name: {{ project.name }}\napp.kubernetes.io/component: {{ component }}\napp.kubernetes.io/instance: {{ project.name }}-{{ env.name }}\n{%- endmacro %}\n".to_string(),
        ),
        (
            "templates/app.yaml".to_string(),
            "{% from \"_helpers/labels.j2\" import labels %}\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\n  labels: {{ labels(\"app\") | nindent(4) }}\nspec:\n  replicas: {{ values.replicas }}\n  selector:\n    matchLabels: {{ labels(\"app\") | nindent(6) }}\n  template:\n    metadata:\n      labels: {{ labels(\"app\") | nindent(8) }}\n      annotations:\n        checksum/config: {{ values.message | sha256 }}\n    spec:\n      containers:\n        - name: app\n          image: {{ values.image.repository }}:{{ values.image.tag }}\n          ports:\n            - {name: http, containerPort: {{ values.port }}}\n          envFrom:\n            - configMapRef: {name: app-config}\n            - secretRef: {name: app-secrets}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: app\n  labels: {{ labels(\"app\") | nindent(4) }}\nspec:\n  selector: {{ labels(\"app\") | nindent(4) }}\n  ports:\n    - {name: http, port: 80, targetPort: http}\n".to_string(),
        ),
        (
            "templates/config.yaml".to_string(),
            "{% from \"_helpers/labels.j2\" import labels %}\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-config\n  labels: {{ labels(\"app\") | nindent(4) }}\ndata:\n  PODINFO_UI_MESSAGE: {{ values.message | quote }}\n".to_string(),
        ),
        (
            "templates/secrets.yaml".to_string(),
            "{# secrets.* are sealed references: render prints placeholders, apply fills them in memory. #}\n{% from \"_helpers/labels.j2\" import labels %}\napiVersion: v1\nkind: Secret\nmetadata:\n  name: app-secrets\n  labels: {{ labels(\"app\") | nindent(4) }}\ntype: Opaque\nstringData:\n  API_TOKEN: {{ secrets.api.token }}\n".to_string(),
        ),
    ];
    out.sort();
    out
}

/// Runs `lockstep init`.
pub fn run(
    args: &InitArgs,
    env: &Env<'_>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<(), Failure> {
    let dir = &args.dir;
    if dir.join("lockstep.yaml").exists() {
        return Err(Failure::new(
            Code::ERROR,
            format!(
                "{}: lockstep.yaml already exists; init does not overwrite a project",
                dir.display()
            ),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| io_fail(dir, e))?;
    let project = match &args.project {
        Some(p) if is_dns_label(p) => p.clone(),
        Some(p) => {
            return Err(Failure::new(
                Code::ERROR,
                format!(
                    "--project {p:?}: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"
                ),
            ));
        }
        None => project_name_from(dir),
    };
    if let Some(flux) = &args.from_flux {
        return super::migrate::run(dir, flux, &project, stdout, stderr);
    }
    let files = files(&project, "RECIPIENT");
    for (path, _) in &files {
        if dir.join(path).exists() {
            return Err(Failure::new(
                Code::ERROR,
                format!(
                    "{}: already exists; init writes a new project and does not overwrite files",
                    dir.join(path).display()
                ),
            ));
        }
    }
    let recipient = recipient(args, env, stderr)?;
    for (path, content) in self::files(&project, &recipient) {
        let full = dir.join(&path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_fail(parent, e))?;
        }
        std::fs::write(&full, content).map_err(|e| io_fail(&full, e))?;
    }
    // Secrets: generated in memory, written only encrypted, per the .sops.yaml just written.
    for env_name in ["dev", "prod"] {
        let path = dir.join(format!("environments/{env_name}/secrets.yaml"));
        let plain = Zeroizing::new(format!("api:\n    token: {}\n", *random_token(24)));
        let new = NewFileArgs::default().plan(&path, env)?;
        let sealed = encrypt_new(&path, Format::Yaml, Format::Yaml, plain.as_bytes(), new)?;
        std::fs::write(&path, sealed).map_err(|e| io_fail(&path, e))?;
    }
    if !args.no_git {
        git_and_hook(dir, stderr);
    }
    let quote = |p: &Path| {
        let text = p.display().to_string();
        shlex::try_quote(&text).map_or(text.clone(), |q| q.into_owned())
    };
    let shown = quote(dir);
    let secrets = quote(&dir.join("environments/dev/secrets.yaml"));
    let _ = writeln!(
        stdout,
        "created project {project} in {}\n  render:   lockstep render --env dev {shown}\n  apply:    lockstep apply --env dev {shown}\n  secrets:  lockstep edit {secrets}",
        dir.display()
    );
    Ok(())
}

/// Creates a Git repository when needed and installs the pre-commit hook; problems are warnings.
fn git_and_hook(dir: &Path, stderr: &mut dyn Write) {
    let in_repo = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .current_dir(dir)
        .output();
    let in_repo = match in_repo {
        Ok(out) => out.status.success(),
        Err(_) => {
            let _ = writeln!(
                stderr,
                "lockstep: git is not available; install the pre-commit hook later with `lockstep hook install`"
            );
            return;
        }
    };
    if !in_repo {
        let ok = Command::new("git")
            .args(["init", "-q"])
            .current_dir(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = writeln!(stderr, "lockstep: `git init` failed; no hook installed");
            return;
        }
    }
    let mut out = Vec::new();
    match super::check::install_hook(dir, false, &mut out) {
        Ok(()) => {
            let _ = stderr.write_all(&out);
        }
        Err(e) => {
            let _ = writeln!(
                stderr,
                "lockstep: pre-commit hook not installed: {}",
                e.message
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names_are_made_dns_safe() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("My Shop__v2");
        std::fs::create_dir(&p).expect("mkdir");
        assert_eq!(project_name_from(&p), "my-shop-v2");
    }
}
