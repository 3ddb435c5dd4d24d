//! The controller's HTTP side: `/healthz`, `/readyz`, `/metrics` (Prometheus text) and the webhook
//! receiver `POST /hook/<namespace>/<name>`, which checks a GitHub-style HMAC-SHA256 signature
//! (`X-Hub-Signature-256`) or a GitLab token (`X-Gitlab-Token`) against the Sync's webhook Secret
//! and asks the loop to sync at once. The payload is otherwise ignored. Nothing here sees plaintext.
//!
//! The receiver is reachable by anyone, so it gives nothing away and holds little: every refusal
//! (no such Sync, no webhook, no token, a bad signature) is the same `401`, a body is read only up to
//! [`MAX_HOOK_BODY`] within [`HOOK_READ_TIMEOUT`], and at most [`HOOK_CONCURRENCY`] requests are
//! handled at once (`429` beyond). Syncs are looked up in the loop's watch (no API request for an
//! unknown name), webhook tokens are read with the Sync's own ServiceAccount and kept for
//! [`TOKEN_TTL`], tokens shorter than [`MIN_TOKEN_BYTES`] are never accepted, and `/metrics` can be
//! served on a port of its own (`--metrics-listen`) that the webhook's Service does not expose.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::Notify;
use zeroize::Zeroizing;

use super::Sync;

/// State shared by the loop, the election and the HTTP server, one part per concern.
#[derive(Default)]
pub struct Hub {
    /// Whether the controller has its first list of Syncs (`/readyz`).
    ready: AtomicBool,
    /// Whether this replica may reconcile and write.
    pub leadership: Leadership,
    /// Stop and drain.
    pub lifecycle: Lifecycle,
    /// Syncs asked for by webhooks.
    pub requests: Requests,
    /// Syncs waiting for a dependency.
    pub waiting: super::depends::Waiting,
    /// What the controller exports on `/metrics`.
    pub metrics: super::metrics::Metrics,
    /// The loop's signs of life (`/healthz`).
    pub progress: Progress,
    /// The loop's watch of the Syncs, once it runs.
    syncs: OnceLock<Store<Sync>>,
}

impl Hub {
    /// Marks the controller ready (it has listed its Syncs) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the controller is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Shares the loop's store of Syncs with the webhook receiver.
    pub fn set_syncs(&self, store: Store<Sync>) {
        let _ = self.syncs.set(store);
    }

    /// The loop's store of Syncs, once its watch runs.
    pub fn syncs(&self) -> Option<&Store<Sync>> {
        self.syncs.get()
    }

    /// The Sync `namespace/name` as the loop's watch last saw it; `None` when it is unknown or the
    /// watch has not listed yet.
    pub fn sync(&self, namespace: &str, name: &str) -> Option<Arc<Sync>> {
        if !self.is_ready() {
            return None;
        }
        self.syncs
            .get()?
            .get(&ObjectRef::new(name).within(namespace))
    }
}

/// How long the loop may show no sign of life before `/healthz` fails (it beats several times a
/// second while it runs, leading or not).
pub const STALL_AFTER: Duration = Duration::from_secs(60);

/// The loop's signs of life, for `/healthz`: a process whose HTTP side still answers while its
/// loop is wedged, or has ended, is not healthy and should be restarted.
#[derive(Default)]
pub struct Progress {
    started: OnceLock<Instant>,
    last_beat: Mutex<Option<Instant>>,
    ended: AtomicBool,
}

impl Progress {
    /// Records that the loop runs (called at its start and then several times a second).
    pub fn beat(&self) {
        let now = Instant::now();
        let _ = self.started.set(now);
        if let Ok(mut b) = self.last_beat.lock() {
            *b = Some(now);
        }
    }

    /// Records that the loop has returned.
    pub fn end(&self) {
        self.ended.store(true, Ordering::SeqCst);
    }

    /// What is wrong with the loop at `now`, unless `stopping` (a loop that ended after a stop
    /// is fine): it ended, or its last sign of life is older than [`STALL_AFTER`]. A loop that has
    /// not started yet is fine.
    pub fn problem(&self, now: Instant, stopping: bool) -> Option<String> {
        if stopping {
            return None;
        }
        if self.ended.load(Ordering::SeqCst) {
            return Some("the reconcile loop has ended".into());
        }
        let last = self.last_beat.lock().ok().and_then(|b| *b)?;
        let quiet = now.saturating_duration_since(last);
        (quiet > STALL_AFTER).then(|| {
            format!(
                "the reconcile loop has shown no progress for {}s",
                quiet.as_secs()
            )
        })
    }
}

/// Webhook requests waiting for the controller at most; more are still honoured at the Sync's
/// next reconcile (the request is remembered), they only do not start one at once.
const TRIGGER_QUEUE: usize = 1024;

/// Syncs a webhook asked for: remembered until their reconcile takes them, and fed to the
/// controller as reconcile triggers.
#[derive(Default)]
pub struct Requests {
    requested: Mutex<HashSet<(String, String)>>,
    triggers: Mutex<Option<tokio::sync::mpsc::Sender<(String, String)>>>,
}

impl Requests {
    /// Asks for a sync of `namespace/name` at once.
    pub fn ask(&self, namespace: &str, name: &str) {
        if let Ok(mut r) = self.requested.lock() {
            r.insert((namespace.to_string(), name.to_string()));
        }
        if let Ok(t) = self.triggers.lock()
            && let Some(t) = t.as_ref()
        {
            let _ = t.try_send((namespace.to_string(), name.to_string()));
        }
    }

    /// The requests made through [`Requests::ask`] from now on, as (namespace, name).
    pub fn stream(&self) -> impl futures::Stream<Item = (String, String)> + Send + 'static {
        let (tx, rx) = tokio::sync::mpsc::channel(TRIGGER_QUEUE);
        if let Ok(mut t) = self.triggers.lock() {
            *t = Some(tx);
        }
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) })
    }

    /// Whether a sync of `namespace/name` was asked for (and forgets the request).
    pub fn take(&self, namespace: &str, name: &str) -> bool {
        self.requested
            .lock()
            .map(|mut r| r.remove(&(namespace.to_string(), name.to_string())))
            .unwrap_or(false)
    }
}

/// Whether this replica may write.
#[derive(Debug, Clone, Copy, Default)]
enum Term {
    /// Not elected.
    #[default]
    No,
    /// No leader election: always.
    Always,
    /// Elected, until this moment of the local monotonic clock.
    Until(std::time::Instant),
}

/// This replica's leadership: a deadline on the local monotonic clock, renewed by the election.
#[derive(Default)]
pub struct Leadership(Mutex<Term>);

impl Leadership {
    /// Records whether this replica leads for good (`true`: no leader election) or not at all.
    pub fn set_leading(&self, leading: bool) {
        if let Ok(mut l) = self.0.lock() {
            *l = if leading { Term::Always } else { Term::No };
        }
    }

    /// Records that this replica leads until `deadline` (a renewed Lease), or not (`None`).
    pub fn lead_until(&self, deadline: Option<std::time::Instant>) {
        if let Ok(mut l) = self.0.lock() {
            *l = deadline.map_or(Term::No, Term::Until);
        }
    }

    /// The moment an elected term ends unless it is renewed (`None`: not elected, or leading for good).
    pub fn deadline(&self) -> Option<std::time::Instant> {
        match self.0.lock().map(|l| *l) {
            Ok(Term::Until(t)) => Some(t),
            _ => None,
        }
    }

    /// Whether this replica leads now (it alone reconciles and writes). An elected replica stops
    /// leading by itself when its deadline passes without a renewal.
    pub fn is_leading(&self) -> bool {
        match self.0.lock().map(|l| *l) {
            Ok(Term::Always) => true,
            Ok(Term::Until(t)) => std::time::Instant::now() < t,
            _ => false,
        }
    }
}

/// Graceful shutdown: a stop asked for (no new reconcile starts), then the loop drained (the last
/// reconcile finished, so the Lease may be given up).
#[derive(Default)]
pub struct Lifecycle {
    stopping: AtomicBool,
    stopped: Notify,
    drained: AtomicBool,
    drained_notify: Notify,
}

impl Lifecycle {
    /// Asks the loop and the election to finish.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stopped.notify_waiters();
    }

    /// Whether [`Lifecycle::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Sleeps for `d`, returning early when the controller stops.
    pub async fn sleep_unless_stopped(&self, d: Duration) {
        if self.is_stopping() {
            return;
        }
        let _ = tokio::time::timeout(d, self.stopped.notified()).await;
    }

    /// Records that the loop has finished its last reconcile (after [`Lifecycle::stop`]).
    pub fn mark_drained(&self) {
        self.drained.store(true, Ordering::SeqCst);
        self.drained_notify.notify_waiters();
    }

    /// Whether the loop has finished.
    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::SeqCst)
    }

    /// Sleeps for `d`, returning early when the loop has finished.
    pub async fn sleep_unless_drained(&self, d: Duration) {
        if self.is_drained() {
            return;
        }
        let _ = tokio::time::timeout(d, self.drained_notify.notified()).await;
    }
}

/// Whether a webhook request carries a valid GitHub signature or GitLab token for `token`.
pub fn authentic(headers: &HeaderMap, body: &[u8], token: &[u8]) -> bool {
    if let Some(sig) = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        && let Ok(expected) = hex::decode(sig)
        && let Ok(mut mac) = Hmac::<sha2_10::Sha256>::new_from_slice(token)
    {
        mac.update(body);
        return mac.verify_slice(&expected).is_ok();
    }
    if let Some(given) = headers.get("x-gitlab-token").map(|v| v.as_bytes()) {
        // Compare in constant time (through the MAC of both values).
        let digest = |v: &[u8]| {
            let mut mac = Hmac::<sha2_10::Sha256>::new_from_slice(b"lockstep-webhook")
                .expect("HMAC accepts any key length");
            mac.update(v);
            mac.finalize().into_bytes()
        };
        return digest(given) == digest(token);
    }
    false
}

/// The largest webhook body read (a push event of many commits fits; more is refused with `413`).
pub const MAX_HOOK_BODY: usize = 1024 * 1024;

/// How long a webhook body may take to arrive.
pub const HOOK_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Webhook requests handled at once.
pub const HOOK_CONCURRENCY: usize = 16;

/// The shortest webhook token accepted (a short one could be guessed from outside).
pub const MIN_TOKEN_BYTES: usize = 16;

/// How long a webhook token read from its Secret is used before it is read again (a rotated token
/// takes effect within this long).
pub const TOKEN_TTL: Duration = Duration::from_secs(30);

/// How long a token that could not be read (missing, unreadable, too short) stays unread: requests
/// for its Sync cost at most one read per this long.
pub const MISSING_TOKEN_TTL: Duration = Duration::from_secs(5);

/// The one answer to every refused webhook: which Syncs exist is nobody's business.
const REFUSED: (StatusCode, &str) = (StatusCode::UNAUTHORIZED, "not accepted\n");

/// A webhook token as last read, and when.
struct Token {
    read: Instant,
    secret: String,
    value: Option<Zeroizing<Vec<u8>>>,
}

#[derive(Clone)]
struct AppState {
    hub: Arc<Hub>,
    access: super::Access,
    hooks: Arc<tokio::sync::Semaphore>,
    /// Tokens by Sync (only Syncs that exist and have a webhook get an entry).
    tokens: Arc<Mutex<HashMap<(String, String), Token>>>,
}

impl AppState {
    /// The webhook token of `sync`, read with the Sync's own ServiceAccount at most once per
    /// [`TOKEN_TTL`]; `None` when it is missing, unreadable or too short.
    async fn token(&self, sync: &Sync, secret: &str) -> Option<Zeroizing<Vec<u8>>> {
        let ns = sync.metadata.namespace.clone().unwrap_or_default();
        let key = (ns.clone(), sync.metadata.name.clone().unwrap_or_default());
        if let Ok(tokens) = self.tokens.lock()
            && let Some(t) = tokens.get(&key)
            && t.secret == secret
            && t.read.elapsed()
                < if t.value.is_some() {
                    TOKEN_TTL
                } else {
                    MISSING_TOKEN_TTL
                }
        {
            return t.value.clone();
        }
        let value = match self.access.for_sync(sync, &ns) {
            Ok(client) => super::read_secret(&client, &ns, secret, "webhook")
                .await
                .ok()
                .and_then(|s| s.get("token").map(|t| Zeroizing::new(t.to_vec()))),
            Err(_) => None,
        };
        let value = value.filter(|t| {
            let long_enough = t.len() >= MIN_TOKEN_BYTES;
            if !long_enough {
                tracing::warn!(
                    namespace = %key.0,
                    sync = %key.1,
                    "webhook token is shorter than {MIN_TOKEN_BYTES} bytes; its requests are refused"
                );
            }
            long_enough
        });
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(
                key,
                Token {
                    read: Instant::now(),
                    secret: secret.to_string(),
                    value: value.clone(),
                },
            );
        }
        value
    }
}

async fn hook(
    State(state): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
    request: Request,
) -> (StatusCode, &'static str) {
    let Ok(_permit) = state.hooks.clone().try_acquire_owned() else {
        return (StatusCode::TOO_MANY_REQUESTS, "busy; try again\n");
    };
    let (parts, body) = request.into_parts();
    let body =
        match tokio::time::timeout(HOOK_READ_TIMEOUT, axum::body::to_bytes(body, MAX_HOOK_BODY))
            .await
        {
            Ok(Ok(b)) => b,
            Ok(Err(_)) => return (StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"),
            Err(_) => return (StatusCode::REQUEST_TIMEOUT, "body too slow\n"),
        };
    let headers = parts.headers;
    if !state.hub.is_ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready; try again\n");
    }
    let Some(sync) = state.hub.sync(&namespace, &name) else {
        return REFUSED;
    };
    let Some(webhook) = &sync.spec.webhook else {
        return REFUSED;
    };
    let Some(token) = state.token(&sync, &webhook.secret_ref.name).await else {
        return REFUSED;
    };
    if !authentic(&headers, &body, &token) {
        return REFUSED;
    }
    if state.hub.leadership.is_leading() {
        state.hub.requests.ask(&namespace, &name);
    } else if super::request_sync(&state.access.client, &namespace, &name)
        .await
        .is_err()
    {
        // Not the leader: the annotation hands the request to the replica that is.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot hand the request to the leader\n",
        );
    }
    (StatusCode::ACCEPTED, "sync requested\n")
}

/// Serves health, the webhook and (unless `metrics` has a listener of its own) metrics on
/// `listener` until the process ends; `metrics` serves health and metrics.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Option<tokio::net::TcpListener>,
    hub: Arc<Hub>,
    access: super::Access,
) -> std::io::Result<()> {
    let state = AppState {
        hub,
        access,
        hooks: Arc::new(tokio::sync::Semaphore::new(HOOK_CONCURRENCY)),
        tokens: Arc::default(),
    };
    let hooks = health_routes().route(
        "/hook/{namespace}/{name}",
        // The body is read by the handler itself, within its own limit and time.
        post(hook).layer(axum::extract::DefaultBodyLimit::disable()),
    );
    match metrics {
        None => {
            let app = hooks.merge(metrics_routes()).with_state(state);
            axum::serve(listener, app).await
        }
        Some(metrics) => {
            let hooks = axum::serve(listener, hooks.with_state(state.clone()));
            let metrics = axum::serve(
                metrics,
                health_routes().merge(metrics_routes()).with_state(state),
            );
            tokio::try_join!(hooks.into_future(), metrics.into_future()).map(drop)
        }
    }
}

/// `/healthz` and `/readyz`.
fn health_routes() -> Router<AppState> {
    Router::new()
        .route(
            "/healthz",
            get(|State(s): State<AppState>| async move {
                let stopping = s.hub.lifecycle.is_stopping();
                match s.hub.progress.problem(Instant::now(), stopping) {
                    None => (StatusCode::OK, "ok\n".to_string()),
                    Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                }
            }),
        )
        .route(
            "/readyz",
            get(|State(s): State<AppState>| async move {
                if s.hub.is_ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        )
}

/// `/metrics`.
fn metrics_routes() -> Router<AppState> {
    Router::new().route(
        "/metrics",
        get(|State(s): State<AppState>| async move {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    super::metrics::CONTENT_TYPE,
                )],
                s.hub.metrics.render(),
            )
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_signatures_and_gitlab_tokens_are_checked() {
        let body = b"{\"ref\":\"refs/heads/main\"}";
        let mut mac = Hmac::<sha2_10::Sha256>::new_from_slice(b"s3cret").expect("key");
        mac.update(body);
        let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        let mut h = HeaderMap::new();
        h.insert("x-hub-signature-256", good.parse().expect("header"));
        assert!(authentic(&h, body, b"s3cret"));
        assert!(!authentic(&h, b"{}", b"s3cret"), "another body");
        assert!(!authentic(&h, body, b"other"), "another key");
        let mut g = HeaderMap::new();
        g.insert("x-gitlab-token", "s3cret".parse().expect("header"));
        assert!(authentic(&g, body, b"s3cret"));
        assert!(!authentic(&g, body, b"other"));
        assert!(
            !authentic(&HeaderMap::new(), body, b"s3cret"),
            "no credentials"
        );
    }

    #[test]
    fn health_follows_the_loops_signs_of_life() {
        let progress = Progress::default();
        let now = Instant::now();
        assert_eq!(progress.problem(now, false), None, "not started yet");
        progress.beat();
        let beat = Instant::now();
        assert_eq!(progress.problem(beat + Duration::from_secs(1), false), None);
        let late = beat + STALL_AFTER + Duration::from_secs(5);
        let why = progress.problem(late, false).expect("stalled");
        assert!(why.contains("no progress for 65s"), "{why}");
        assert_eq!(progress.problem(late, true), None, "stopping");
        progress.beat();
        assert_eq!(
            progress.problem(Instant::now(), false),
            None,
            "beating again"
        );
        progress.end();
        assert_eq!(
            progress.problem(Instant::now(), false).as_deref(),
            Some("the reconcile loop has ended")
        );
        assert_eq!(progress.problem(Instant::now(), true), None);
    }

    #[test]
    fn elected_leadership_lapses_by_itself_at_its_deadline() {
        let hub = Hub::default();
        assert!(
            !hub.leadership.is_leading(),
            "nobody leads before an election"
        );
        let now = std::time::Instant::now();
        hub.leadership
            .lead_until(Some(now + Duration::from_secs(60)));
        assert!(hub.leadership.is_leading());
        hub.leadership
            .lead_until(Some(now - Duration::from_millis(1)));
        assert!(
            !hub.leadership.is_leading(),
            "a deadline in the past is no leadership"
        );
        hub.leadership.set_leading(true);
        assert!(hub.leadership.is_leading(), "without election: always");
        hub.leadership.lead_until(None);
        assert!(!hub.leadership.is_leading());
    }
}
