//! `lockstep controller`: reconcile `Sync` resources — once (`--once`) or in a loop.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::apply::{ClusterArgs, parse_duration};
use super::exit::{Code, Failure};

/// Arguments of `lockstep controller`.
#[derive(Debug, Clone, Args)]
pub struct ControllerArgs {
    /// The cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Only this namespace's Syncs (default: all namespaces).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Only Syncs matching this label selector (e.g. `shard=a`; default: all), as Flux's
    /// `--watch-label-selector`: split Syncs between controllers.
    #[arg(long, value_name = "SELECTOR")]
    pub watch_label_selector: Option<String>,
    /// Reconcile every Sync once and exit (non-zero when any failed).
    #[arg(long)]
    pub once: bool,
    /// How often a replica that does not hold the Lease looks again (Syncs are watched: new ones,
    /// spec changes and requests start a sync at once; each Sync requeues itself after its interval).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub poll: Duration,
    /// Where fetched Git objects are kept (only what is in Git: secrets stay encrypted)
    /// [default: $TMPDIR/lockstep-git].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Address of the health, metrics and webhook server (`/healthz`, `/readyz`, `/metrics`,
    /// `POST /hook/<namespace>/<name>`); not started with `--once`.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// Serve `/metrics` (with `/healthz` and `/readyz`) on this address instead, apart from the
    /// webhook receiver (the install does: its webhook Service does not expose metrics).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Syncs reconciled at the same time.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Reconcile only while holding a Lease, so several replicas are safe (the install manifests
    /// turn this on).
    #[arg(long)]
    pub leader_elect: bool,
    /// Namespace of the Lease.
    #[arg(
        long,
        env = "POD_NAMESPACE",
        hide_env_values = true,
        default_value = "lockstep-system"
    )]
    pub lease_namespace: String,
    /// Name of the Lease.
    #[arg(long, default_value = "lockstep-controller")]
    pub lease_name: String,
    /// This replica's name in the Lease (default: the host name and process id).
    #[arg(long, env = "POD_NAME", hide_env_values = true)]
    pub lease_identity: Option<String>,
    /// Also accept `file://` and local-path sources (off by default: in a shared cluster a Sync
    /// could otherwise read any repository on the controller's file system).
    #[arg(long)]
    pub allow_local_sources: bool,
    /// The ServiceAccount (in each Sync's own namespace) that Syncs without `serviceAccountName` act
    /// as, instead of the controller's own rights; its Secrets are read with its rights too.
    #[arg(long, value_name = "NAME")]
    pub default_service_account: Option<String>,
    /// Refuse Syncs that would act with the controller's own rights: each must name a
    /// `serviceAccountName` (or `--default-service-account` gives one). The install's
    /// `applyAs: impersonate` turns this on.
    #[arg(long)]
    pub require_service_account: bool,
    /// Serve only Syncs in these namespaces (comma-separated; default: every namespace): a Sync
    /// elsewhere is refused with FetchFailed before anything is read. The install's
    /// `tenantNamespaces` sets this and grants impersonation in these namespaces only.
    #[arg(long, value_name = "NS,…", value_delimiter = ',')]
    pub tenant_namespaces: Vec<String>,
    /// Data a Sync's render may use, in MiB: each render runs first in a child process limited to
    /// this (and to --render-timeout), so a hostile template stops there, not in the controller.
    /// 0 renders in the controller's own process only.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub render_memory: u64,
    /// How long a Sync's render may take in its child process.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub render_timeout: Duration,
    /// The longest a Sync's fetch or health wait may take, whatever its `spec.timeout` says: one
    /// Sync holds one of the --concurrency slots that long at most.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub max_timeout: Duration,
    /// Also send Git credentials over plain `http://`, and read chart repositories over it (off
    /// by default: credentials would cross the network in clear).
    #[arg(long)]
    pub allow_insecure_http: bool,
    /// Print a CustomResourceDefinition and exit: `sync` (the default) or `history`.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "sync", value_name = "CRD")]
    pub print_crd: Option<Crd>,
    /// Syncs kept in each Sync's history (its `SyncHistory`), at most 100.
    #[arg(long, default_value_t = crate::controller::history::DEFAULT_ENTRIES, value_name = "N",
          value_parser = clap::builder::TypedValueParser::map(
              clap::value_parser!(u16).range(1..=100), usize::from))]
    pub history: usize,
    /// Log lines as text, or as one JSON object each (for log collectors).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The CustomResourceDefinitions `--print-crd` prints: `Sync`, `SyncHistory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[allow(missing_docs)]
pub enum Crd {
    Sync,
    History,
}

/// How the controller writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[allow(missing_docs)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs to standard error through `tracing` (kube-rs's own events included), filtered by
/// `LOCKSTEP_LOG` (e.g. `debug`, `info,kube=debug`; default `info`).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOCKSTEP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// Runs the controller.
pub fn run(
    args: &ControllerArgs,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<(), Failure> {
    if let Some(crd) = args.print_crd {
        let yaml = match crd {
            Crd::Sync => crate::controller::crd_yaml(),
            Crd::History => crate::controller::history::crd_yaml(),
        };
        let _ = stdout.write_all(yaml.as_bytes());
        return Ok(());
    }
    init_logging(args.log_format);
    let cache = args
        .cache
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("lockstep-git"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::new(Code::ERROR, format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async {
        let config = super::apply::config(&args.cluster).await?;
        let client = super::apply::client_for(config.clone())?;
        let access = crate::controller::Access::new(client.clone(), Some(config))
            .with_local_sources(args.allow_local_sources)
            .with_insecure_http(args.allow_insecure_http)
            .with_default_service_account(args.default_service_account.clone())
            .with_required_service_account(args.require_service_account)
            .with_tenant_namespaces(&args.tenant_namespaces)
            .with_render_probe(render_probe(args)?)
            .with_max_timeout(args.max_timeout)
            .with_history(args.history);
        crate::source::git::remove_leftovers();
        if !args.once {
            return serve(args, access, &cache).await;
        }
        match crate::controller::reconcile_all(
            &access,
            args.namespace.as_deref(),
            args.watch_label_selector.as_deref(),
            &cache,
        )
        .await
        {
            Ok((ok, 0)) => {
                let _ = writeln!(stderr, "lockstep controller: {ok} Sync(s) ready");
                Ok(())
            }
            Ok((ok, failed)) => Err(Failure::new(
                Code::NOT_READY,
                format!("{ok} Sync(s) ready, {failed} failed; see their status"),
            )),
            Err(e) => Err(Failure::new(
                Code::ERROR,
                format!("listing or updating Syncs: {}", crate::apply::reason(&e)),
            )),
        }
    })
}

/// The render probe the flags ask for.
fn render_probe(args: &ControllerArgs) -> Result<Option<crate::probe::Probe>, Failure> {
    if args.render_memory == 0 {
        return Ok(None);
    }
    let mut probe =
        crate::probe::Probe::current().map_err(|e| Failure::new(Code::ERROR, e.to_string()))?;
    probe.memory = args.render_memory.saturating_mul(1024 * 1024);
    probe.time = args.render_timeout;
    Ok(Some(probe))
}

/// The long-running controller: HTTP server, optional leader election, the loop; on SIGTERM or
/// Ctrl+C, finishes the reconciles in flight, gives up the Lease and returns.
async fn serve(
    args: &ControllerArgs,
    mut access: crate::controller::Access,
    cache: &std::path::Path,
) -> Result<(), Failure> {
    use crate::controller::{leader, server};
    let hub = std::sync::Arc::new(server::Hub::default());
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| Failure::new(Code::ERROR, format!("--listen {}: {e}", args.listen)))?;
    let metrics = match &args.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Failure::new(Code::ERROR, format!("--metrics-listen {addr}: {e}")))?,
        ),
        None => None,
    };
    let server = tokio::spawn(server::serve(
        listener,
        metrics,
        hub.clone(),
        access.clone(),
    ));
    match &args.metrics_listen {
        Some(addr) => {
            tracing::info!(listen = %args.listen, "serving /healthz /readyz /hook");
            tracing::info!(listen = %addr, "serving /healthz /readyz /metrics");
        }
        None => tracing::info!(listen = %args.listen, "serving /healthz /readyz /metrics /hook"),
    }
    let signals = {
        let hub = hub.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async {
                    match term.as_mut() {
                        Some(t) => { t.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {}
            }
            hub.lifecycle.stop();
        })
    };
    let election = if args.leader_elect {
        let identity = args.lease_identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "lockstep".into());
            format!("{host}-{}", std::process::id())
        });
        tracing::info!(
            lease = %format!("{}/{}", args.lease_namespace, args.lease_name),
            identity = %identity,
            "leader election"
        );
        let elector = leader::Elector::new(
            access.client.clone(),
            &args.lease_namespace,
            &args.lease_name,
            &identity,
        );
        let election_hub = hub.clone();
        let election = tokio::spawn(async move {
            crate::controller::run_election(elector, &election_hub).await;
        });
        let gate_hub = hub.clone();
        access = access.with_gate(move || gate_hub.leadership.is_leading());
        Some(election)
    } else {
        hub.leadership.set_leading(true);
        None
    };
    let opts = crate::controller::LoopOptions {
        namespace: args.namespace.clone(),
        selector: args.watch_label_selector.clone(),
        poll: args.poll,
        concurrency: args.concurrency,
    };
    crate::controller::run_loop(access, &opts, cache, hub.clone()).await;
    if let Some(e) = election {
        let _ = e.await;
    }
    signals.abort();
    server.abort();
    tracing::info!("stopped");
    Ok(())
}

/// Arguments of `lockstep sync`.
#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    /// The Sync's name.
    pub name: String,
    /// The namespace, the wait and the cluster.
    #[command(flatten)]
    pub request: RequestArgs,
}

/// What the commands that ask the controller something share.
#[derive(Debug, Clone, Args)]
pub struct RequestArgs {
    /// The Sync's namespace (default: the kubeconfig context's namespace, else `default`).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Wait until the controller has answered, print the outcome, and exit 1 when it did not
    /// do what was asked or the Sync is not Ready (as `flux reconcile`); `--wait=false` only asks.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub wait: bool,
    /// How long to wait, e.g. 90s, 5m.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// A failure naming the Sync and the API server's reason.
pub(super) fn sync_failure(namespace: &str, name: &str, e: &kube::Error) -> Failure {
    Failure::new(
        Code::ERROR,
        format!("Sync {namespace}/{name}: {}", crate::apply::reason(e)),
    )
}

/// The failure of a request nobody answered in time.
pub(super) fn unanswered(namespace: &str, name: &str, timeout: Duration) -> Failure {
    Failure::new(
        Code::ERROR,
        format!(
            "Sync {namespace}/{name}: not handled within {}s; is the controller running? (`kubectl -n lockstep-system get pods`)",
            timeout.as_secs()
        ),
    )
}

/// Waits for the controller to handle the sync request made `at`, prints its outcome, and fails
/// with [`Code::NOT_READY`] when the Sync is not Ready.
pub(super) async fn report_handled(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    at: &str,
    timeout: Duration,
    stdout: &mut dyn Write,
) -> Result<(), Failure> {
    let handled = crate::controller::wait_handled(client, namespace, name, at, timeout)
        .await
        .map_err(|e| sync_failure(namespace, name, &e))?;
    match handled {
        None => Err(unanswered(namespace, name, timeout)),
        Some((true, reason, message)) => {
            let _ = writeln!(stdout, "{namespace}/{name}: Ready ({reason}): {message}");
            Ok(())
        }
        Some((false, reason, message)) => Err(Failure::new(
            Code::NOT_READY,
            format!("{namespace}/{name}: not Ready ({reason}): {message}"),
        )),
    }
}

/// Runs `lockstep sync`: asks the controller to sync now and (by default) waits for the outcome.
pub fn request(args: &SyncArgs, stdout: &mut dyn Write) -> Result<(), Failure> {
    let request = &args.request;
    super::apply::with_cluster(
        &request.cluster,
        request.namespace.as_deref(),
        async |client, namespace| {
            let name = &args.name;
            let at = crate::controller::request_sync(&client, &namespace, name)
                .await
                .map_err(|e| sync_failure(&namespace, name, &e))?;
            let _ = writeln!(stdout, "sync of {namespace}/{name} requested at {at}");
            if !request.wait {
                return Ok(());
            }
            report_handled(&client, &namespace, name, &at, request.timeout, stdout).await
        },
    )
}
