//! The one pipeline both edges run — `lockstep apply`/`diff` and the controller's reconcile:
//!
//! ```text
//! fetch → verify → render → decrypt → validate → apply → prune → health
//! ```
//!
//! Each step is a function; what differs between the edges (where the project comes from, whether
//! its commit is checked, where identities are, how to apply) is behind [`Inputs`]. A step that
//! fails returns a [`StageError`] that knows its [`Step`], its status [`Reason`], whether only a new
//! commit can help ([`StageError::stalls`]) and its metric label; every later step is skipped, so
//! nothing is written after a failed check and nothing is pruned after an error.

use std::future::Future;
use std::sync::Arc;

use kube::Client;

use crate::apply::{self, ApplyError, Event, Options, Plan, SealedPreview, Summary};
use crate::decrypt::{self, ApplySet, DecryptError};
use crate::keys::KeyRing;
use crate::render::{self, Diagnostics, Rendered, Request};
use crate::source::Snapshot;
use crate::source::charts;

/// The steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// Read the project (a directory, or a Git commit).
    Fetch,
    /// Check the commit's signature.
    Verify,
    /// Templates and values → manifests, secrets sealed.
    Render,
    /// Open the secrets, in memory.
    Decrypt,
    /// Server-side dry run of the whole set.
    Validate,
    /// Staged server-side apply.
    Apply,
    /// Delete what left the set; record the inventory.
    Prune,
    /// Wait until the applied objects are healthy.
    Health,
}

impl Step {
    /// The Reason a failure of this step reports.
    pub fn failure(self) -> Reason {
        match self {
            Step::Fetch => Reason::FetchFailed,
            Step::Verify => Reason::VerifyFailed,
            Step::Render => Reason::RenderFailed,
            Step::Decrypt => Reason::DecryptFailed,
            Step::Validate => Reason::ValidationFailed,
            Step::Apply => Reason::ApplyFailed,
            Step::Prune => Reason::PruneFailed,
            Step::Health => Reason::HealthCheckFailed,
        }
    }
}

/// How a sync ended, as a status condition's reason (and a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Everything applied.
    Succeeded,
    /// Everything applied, at an older commit the Sync is pinned to (`lockstep rollback`) until a
    /// newer one than it rolled back from arrives: Ready, as [`Reason::Succeeded`].
    RolledBack,
    /// The Git fetch failed (or its credentials Secret is missing or unusable).
    FetchFailed,
    /// The commit's signature is missing, bad, or not from a trusted key.
    VerifyFailed,
    /// The commit does not descend from the last applied one (`verify.requireFastForward`): the
    /// ref was moved back to an older commit or its history rewritten.
    NotFastForward,
    /// Render found problems.
    RenderFailed,
    /// The decryption Secret or the secrets did not open.
    DecryptFailed,
    /// The dry run refused objects.
    ValidationFailed,
    /// Applying failed.
    ApplyFailed,
    /// Pruning was refused or failed.
    PruneFailed,
    /// Applied objects did not become healthy in time (`wait: true`).
    HealthCheckFailed,
    /// Suspended.
    Suspended,
    /// `driftMode: warn` found objects changed by hand (nothing was written).
    DriftDetected,
    /// The reconcile stopped unexpectedly (an internal error); retried with back-off.
    ReconcileFailed,
    /// A Sync it depends on is not Ready, has not applied the same commit, or the dependencies
    /// make a cycle (the controller's `spec.dependsOn`).
    DependencyNotReady,
}

impl Reason {
    /// The CamelCase reason string.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Succeeded => "Succeeded",
            Reason::FetchFailed => "FetchFailed",
            Reason::VerifyFailed => "VerifyFailed",
            Reason::RolledBack => "RolledBack",
            Reason::NotFastForward => "NotFastForward",
            Reason::RenderFailed => "RenderFailed",
            Reason::DecryptFailed => "DecryptFailed",
            Reason::ValidationFailed => "ValidationFailed",
            Reason::ApplyFailed => "ApplyFailed",
            Reason::PruneFailed => "PruneFailed",
            Reason::HealthCheckFailed => "HealthCheckFailed",
            Reason::Suspended => "Suspended",
            Reason::DriftDetected => "DriftDetected",
            Reason::ReconcileFailed => "ReconcileFailed",
            Reason::DependencyNotReady => "DependencyNotReady",
        }
    }

    /// Whether the commit itself is at fault, so retrying the same commit cannot help (the Sync
    /// is `Stalled` until a new commit or a spec change).
    pub fn stalls(self) -> bool {
        matches!(
            self,
            Reason::VerifyFailed
                | Reason::NotFastForward
                | Reason::RenderFailed
                | Reason::ValidationFailed
        )
    }

    /// Whether the sync applied everything (Ready): [`Reason::Succeeded`] or [`Reason::RolledBack`].
    pub fn is_ok(self) -> bool {
        matches!(self, Reason::Succeeded | Reason::RolledBack)
    }

    /// The `result` label of `lockstep_syncs_total`: `success` or `failure`.
    pub fn metric_label(self) -> &'static str {
        if self.is_ok() { "success" } else { "failure" }
    }
}

/// Why a step failed. Never holds a secret value: messages name files, objects and key paths.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The project could not be read or fetched.
    #[error("{0}")]
    Fetch(String),
    /// The commit is not signed by a trusted key (or the signers are unusable).
    #[error("{0}")]
    Verify(String),
    /// The commit does not descend from the last applied one.
    #[error("{0}")]
    NotFastForward(String),
    /// Render found problems (drawn with their source spans by the CLI).
    #[error("{0}")]
    Render(Diagnostics),
    /// The identities could not be loaded.
    #[error("{0}")]
    Keys(String),
    /// No connection to the cluster.
    #[error("{0}")]
    Cluster(String),
    /// The secrets did not open; the message explains which identities were tried where.
    #[error("{message}")]
    Decrypt {
        /// The explanation (see [`decrypt::explain_sops`]).
        message: String,
        /// What went wrong.
        error: Box<DecryptError>,
    },
    /// A cluster step failed (its step follows from the error: see [`StageError::step`]).
    #[error("{0}")]
    Apply(ApplyError),
    /// What the project depends on is not there yet (a dependency has not applied the fetched
    /// commit): nothing was applied.
    #[error("{0}")]
    Dependency(String),
}

impl StageError {
    /// The step that failed.
    pub fn step(&self) -> Step {
        match self {
            StageError::Fetch(_) | StageError::Dependency(_) => Step::Fetch,
            StageError::Verify(_) | StageError::NotFastForward(_) => Step::Verify,
            StageError::Render(_) => Step::Render,
            StageError::Keys(_) | StageError::Decrypt { .. } => Step::Decrypt,
            StageError::Apply(e) => match e {
                ApplyError::Validation { .. }
                | ApplyError::UnknownKind(_)
                | ApplyError::Owned { .. } => Step::Validate,
                ApplyError::MassPrune { .. } => Step::Prune,
                _ => Step::Apply,
            },
            StageError::Cluster(_) => Step::Apply,
        }
    }

    /// The status Reason of this failure.
    pub fn reason(&self) -> Reason {
        match self {
            StageError::NotFastForward(_) => Reason::NotFastForward,
            StageError::Dependency(_) | StageError::Apply(ApplyError::Dependency { .. }) => {
                Reason::DependencyNotReady
            }
            _ => self.step().failure(),
        }
    }

    /// Whether only a new commit or spec can help (see [`Reason::stalls`]).
    pub fn stalls(&self) -> bool {
        self.reason().stalls()
    }

    /// The metric label of this failure's Reason.
    pub fn metric_label(&self) -> &'static str {
        self.reason().metric_label()
    }

    /// sops's exit code for a key problem (128 no identity, 51 MAC mismatch…), if it is one.
    pub fn sops_exit_code(&self) -> Option<u8> {
        match self {
            StageError::Decrypt { error, .. } => match error.as_ref() {
                DecryptError::Sops { source, .. } => Some(source.exit_code()),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A project read by the fetch step.
pub struct Fetched {
    /// The project's files (ciphertext only).
    pub snapshot: Snapshot,
    /// The Git commit, or empty.
    pub revision: String,
    /// The raw commit object, for the verify step (Git sources only).
    pub commit: Option<Vec<u8>>,
    /// The raw annotated tag object the revision was read through, for the verify step.
    pub tag: Option<Vec<u8>>,
    /// Whether the commit descends from the one applied before (when that was asked).
    pub descends: Option<bool>,
}

/// What differs between the edges. The futures are `Send` so a reconcile can run on its own task.
pub trait Inputs: Send {
    /// Fetch: the project's files.
    fn fetch(&mut self) -> impl Future<Output = Result<Fetched, StageError>> + Send;

    /// Verify: checks the fetched commit (nothing to check for a local directory).
    fn verify(&mut self, fetched: &Fetched) -> impl Future<Output = Result<(), StageError>> + Send;

    /// The identities to decrypt with, read fresh each run.
    fn identities(&mut self) -> impl Future<Output = Result<KeyRing, StageError>> + Send;

    /// What to tell a user whose identities open nothing.
    fn key_hint(&self) -> String;

    /// How to name a project file in messages (e.g. inside the project's directory).
    fn show_path(&self, file: &str) -> String {
        file.to_string()
    }

    /// How to apply the set rendered from `fetched`.
    fn options(&self, fetched: &Fetched) -> Options;

    /// The client to apply with (connected only once the set is built, so a broken project fails
    /// without a cluster).
    fn client(&mut self) -> impl Future<Output = Result<Client, StageError>> + Send;

    /// How to probe the render in a child process first (see [`crate::probe`]); `None`: render
    /// in this process only (the CLI, rendering its user's own templates).
    fn render_probe(&self) -> Option<&crate::probe::Probe> {
        None
    }

    /// Where repository and OCI chart archives are cached, and the credentials to fetch them.
    fn chart_access(&mut self) -> impl Future<Output = Result<ChartAccess, StageError>> + Send;
}

/// What fetching chart archives needs: the cache, the credentials, and the scope that keeps
/// archives fetched with one tenant's credentials from another (see [`charts::gather`]).
#[derive(Clone)]
pub struct ChartAccess {
    /// The archive cache.
    pub store: Arc<charts::Store>,
    /// Logins and CA certificates.
    pub credentials: Arc<charts::Credentials>,
    /// The tenant's scope (the Sync's namespace; empty for the CLI).
    pub scope: String,
}

/// What a successful run did.
pub struct Outcome {
    /// What was applied (or compared).
    pub summary: Summary,
    /// `project/environment`.
    pub target: String,
    /// The namespace holding the inventory.
    pub namespace: String,
    /// The inventory's name.
    pub inventory: String,
    /// Objects in the set.
    pub objects: usize,
    /// The revision applied.
    pub revision: String,
    /// When secret-bearing objects were compared sealed (no key): why, and the SOPS manifests
    /// whose identity is encrypted too, which could not be compared at all.
    pub sealed: Option<SealedNote>,
    /// The first line of the commit's message (Git sources).
    pub subject: Option<String>,
    /// A digest of the sealed render (the manifests as `render` prints them, no value in them):
    /// two syncs with the same digest applied the same set.
    pub render_digest: String,
}

/// Why a preview compared secret-bearing objects by their sealed digest.
#[derive(Debug, Clone)]
pub struct SealedNote {
    /// `no identity opens …`, or that it was asked for.
    pub why: String,
    /// SOPS manifests that could not be compared.
    pub unreadable: Vec<String>,
}

/// A failed run: the step's error, and the revision when the fetch got that far.
pub struct Failed {
    /// What failed.
    pub error: StageError,
    /// The fetched revision, if any.
    pub revision: Option<String>,
    /// The first line of the fetched commit's message, if any.
    pub subject: Option<String>,
}

/// The first line of a raw Git commit object's message.
pub fn commit_subject(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let (_, message) = text.split_once("\n\n")?;
    let line = message.lines().next()?.trim();
    (!line.is_empty()).then(|| line.chars().take(200).collect())
}

/// [`DIGEST_HEX`] hex digits of the SHA-256 of the sealed render.
pub fn render_digest(rendered: &Rendered) -> String {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    for m in &rendered.manifests {
        hasher.update(m.source.as_bytes());
        hasher.update(b"\n");
        hasher.update(m.to_yaml().as_bytes());
    }
    let mut hex = hex::encode(hasher.finalize());
    hex.truncate(DIGEST_HEX);
    hex
}

/// Hex digits of a [`render_digest`].
pub const DIGEST_HEX: usize = 12;

/// Runs every step in order; `progress` sees each apply stage and object.
pub async fn run<I: Inputs>(
    inputs: &mut I,
    request: &Request,
    progress: &mut impl FnMut(&Event),
) -> Result<Outcome, Failed> {
    let fetched = fetch(inputs).await.map_err(|error| Failed {
        error,
        revision: None,
        subject: None,
    })?;
    let subject = fetched.commit.as_deref().and_then(commit_subject);
    let at = |error| Failed {
        error,
        revision: Some(fetched.revision.clone()),
        subject: subject.clone(),
    };
    verify(inputs, &fetched).await.map_err(at)?;
    if let Some(probe) = inputs.render_probe() {
        probed(probe, &fetched.snapshot, request).map_err(at)?;
    }
    let access = inputs.chart_access().await.map_err(at)?;
    let archives = chart_archives(&access, &fetched.snapshot, &request.env)
        .await
        .map_err(at)?;
    let request = Request {
        archives,
        ..request.clone()
    };
    let rendered = render(&fetched.snapshot, &request).map_err(at)?;
    let digest = cpu(|| render_digest(&rendered));
    let options = inputs.options(&fetched);
    let (set, sealed) = decrypt_or_seal(inputs, &rendered, &fetched.snapshot, &options)
        .await
        .map_err(at)?;
    let client = inputs.client().await.map_err(at)?;
    let summary = converge(&client, &set, &options, progress)
        .await
        .map_err(at)?;
    Ok(Outcome {
        summary,
        target: format!("{}/{}", set.project, set.environment),
        namespace: set.namespace.clone(),
        inventory: apply::inventory::name(&set.project, &set.environment),
        objects: set.objects.len() + set.sealed.len(),
        revision: fetched.revision.clone(),
        sealed,
        subject,
        render_digest: digest,
    })
}

/// Decrypt step, or for a preview that may or must do without keys, the sealed set.
async fn decrypt_or_seal(
    inputs: &mut impl Inputs,
    rendered: &Rendered,
    snapshot: &Snapshot,
    options: &Options,
) -> Result<(ApplySet, Option<SealedNote>), StageError> {
    let sealed = |why: String| {
        let keyless = cpu(|| crate::sealed::keyless(rendered, snapshot));
        let note = SealedNote {
            why,
            unreadable: keyless.unreadable,
        };
        (keyless.set, Some(note))
    };
    if !options.dry_run || options.sealed == SealedPreview::Never {
        return Ok((decrypt(inputs, rendered, snapshot).await?, None));
    }
    if options.sealed == SealedPreview::Always {
        return Ok(sealed("asked for (--sealed)".into()));
    }
    match decrypt(inputs, rendered, snapshot).await {
        Ok(set) => Ok((set, None)),
        Err(StageError::Decrypt { error, .. }) if no_identity(&error) => {
            let file = match error.as_ref() {
                DecryptError::Sops { file, .. } => inputs.show_path(file),
                _ => String::new(),
            };
            Ok(sealed(format!("no identity at hand opens {file}")))
        }
        Err(e) => Err(e),
    }
}

/// Whether a decrypt failed only for want of a key (sops's exit code 128).
fn no_identity(error: &DecryptError) -> bool {
    matches!(error, DecryptError::Sops { source, .. } if source.exit_code() == 128)
}

/// Fetch step.
pub async fn fetch(inputs: &mut impl Inputs) -> Result<Fetched, StageError> {
    inputs.fetch().await
}

/// Verify step.
pub async fn verify(inputs: &mut impl Inputs, fetched: &Fetched) -> Result<(), StageError> {
    inputs.verify(fetched).await
}

/// The render probe: the render in a child process within its limits, before it runs here.
pub fn probed(
    probe: &crate::probe::Probe,
    snapshot: &Snapshot,
    request: &Request,
) -> Result<(), StageError> {
    cpu(|| probe.check(snapshot, request))
        .map_err(|e| StageError::Render(render::Diagnostic::new(e.to_string()).into()))
}

/// Chart step: the archives of the environment's repository and OCI charts, from the cache or
/// fetched (on a blocking thread), each checked against `lockstep.lock`.
pub async fn chart_archives(
    access: &ChartAccess,
    snapshot: &Snapshot,
    env: &str,
) -> Result<render::lock::Archives, StageError> {
    if !charts::needs_archives(snapshot) {
        return Ok(render::lock::Archives::default());
    }
    let access = access.clone();
    let snapshot = snapshot.clone();
    let env = env.to_string();
    tokio::task::spawn_blocking(move || {
        charts::gather(
            &snapshot,
            &env,
            &access.store,
            &access.credentials,
            &access.scope,
        )
    })
    .await
    .map_err(|e| StageError::Fetch(format!("fetching charts: {e}")))?
    .map_err(|d| StageError::Render(d.into()))
}

/// Render step (CPU work: off the async workers' hands when there are several).
pub fn render(snapshot: &Snapshot, request: &Request) -> Result<Rendered, StageError> {
    cpu(|| render::render(snapshot, request)).map_err(StageError::Render)
}

/// Decrypt step: identities read fresh, dropped as soon as the set is built.
pub async fn decrypt(
    inputs: &mut impl Inputs,
    rendered: &Rendered,
    snapshot: &Snapshot,
) -> Result<ApplySet, StageError> {
    let ring = inputs.identities().await?;
    cpu(|| decrypt::decrypt(rendered, snapshot, &ring)).map_err(|error| StageError::Decrypt {
        message: match &error {
            DecryptError::Sops { file, source } => decrypt::explain_sops(
                &inputs.show_path(file),
                source,
                &ring.searched,
                &inputs.key_hint(),
            ),
            other => other.to_string(),
        },
        error: Box::new(error),
    })
}

/// Validate → apply → prune → health against the cluster.
pub async fn converge(
    client: &Client,
    set: &ApplySet,
    options: &Options,
    progress: &mut impl FnMut(&Event),
) -> Result<Summary, StageError> {
    let mut plan = Plan::new(client, set, options)
        .await
        .map_err(StageError::Apply)?;
    for note in plan.profile_differences().await {
        progress(&Event::Note(note));
    }
    for note in &set.notes {
        progress(&Event::Note(note.clone()));
    }
    plan.dependencies(progress)
        .await
        .map_err(StageError::Apply)?;
    validate(&mut plan, progress).await?;
    match write(&mut plan, progress).await {
        Err(e) => {
            plan.failure_hooks(progress).await;
            Err(e)
        }
        Ok(()) => {
            if !plan.not_ready().is_empty() {
                plan.failure_hooks(progress).await;
            }
            Ok(plan.finish())
        }
    }
}

/// The steps that write, after validation: apply → prune → post hooks → health. When one fails,
/// or the set is not healthy in the end, the caller runs the `on-failure` hooks.
async fn write(plan: &mut Plan<'_>, progress: &mut impl FnMut(&Event)) -> Result<(), StageError> {
    apply(plan, progress).await?;
    prune(plan, progress).await?;
    post_hooks(plan, progress).await?;
    health(plan, progress).await
}

/// Validate step: a strict server-side dry run of the whole set; nothing is written on failure.
pub async fn validate(
    plan: &mut Plan<'_>,
    progress: &mut impl FnMut(&Event),
) -> Result<(), StageError> {
    plan.validate(progress).await.map_err(StageError::Apply)
}

/// Apply step: staged server-side apply.
pub async fn apply(
    plan: &mut Plan<'_>,
    progress: &mut impl FnMut(&Event),
) -> Result<(), StageError> {
    plan.apply(progress).await.map_err(StageError::Apply)
}

/// Prune step: deletes what left the set and records the inventory.
pub async fn prune(
    plan: &mut Plan<'_>,
    progress: &mut impl FnMut(&Event),
) -> Result<(), StageError> {
    plan.prune(progress).await.map_err(StageError::Apply)
}

/// Post-hook step: charts' `post-install`/`post-upgrade` hooks, once their objects are healthy,
/// then the environment's `post-apply` hooks (pre hooks run inside the apply step, after CRDs and
/// namespaces).
pub async fn post_hooks(
    plan: &mut Plan<'_>,
    progress: &mut impl FnMut(&Event),
) -> Result<(), StageError> {
    plan.post_hooks(progress).await.map_err(StageError::Apply)
}

/// Health step: waits for the applied objects (when asked to).
pub async fn health(
    plan: &mut Plan<'_>,
    progress: &mut impl FnMut(&Event),
) -> Result<(), StageError> {
    plan.health(progress).await.map_err(StageError::Apply)
}

/// Runs CPU-bound work (render, decrypt, signature checks) so other tasks keep running on a
/// multi-threaded runtime; on any other runtime, in place.
pub fn cpu<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_subject_is_the_first_line_after_the_headers() {
        let signed = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor A <a@x> 1 +0000\ncommitter A <a@x> 1 +0000\ngpgsig -----BEGIN SSH SIGNATURE-----\n U1NIU0lH\n -----END SSH SIGNATURE-----\n\nprod gets nginx 1.28\n\nlonger text\n";
        assert_eq!(
            commit_subject(signed).as_deref(),
            Some("prod gets nginx 1.28")
        );
        assert_eq!(commit_subject(b"tree x\n\n\n"), None);
        assert_eq!(commit_subject(b"no message at all"), None);
    }
}
