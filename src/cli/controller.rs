//! `lockstep controller`: reconcile `Sync` resources — once (`--once`) or in a loop.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::apply::{ClusterArgs, parse_duration};
use super::crypt::Failure;

/// Arguments of `lockstep controller`.
#[derive(Debug, Clone, Args)]
pub struct ControllerArgs {
    /// The cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Only this namespace's Syncs (default: all namespaces).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Reconcile every Sync once and exit (non-zero when any failed).
    #[arg(long)]
    pub once: bool,
    /// How often to look for Syncs that are due (new, changed, requested, or past their interval).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub poll: Duration,
    /// Where fetched Git objects are kept (only what is in Git: secrets stay encrypted).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Address of the health, metrics and webhook server (`/healthz`, `/readyz`, `/metrics`,
    /// `POST /hook/<namespace>/<name>`); not started with `--once`.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// Print the Sync CustomResourceDefinition and exit.
    #[arg(long)]
    pub print_crd: bool,
}

/// Runs the controller.
pub fn run(
    args: &ControllerArgs,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<(), Failure> {
    if args.print_crd {
        let _ = stdout.write_all(crate::controller::crd_yaml().as_bytes());
        return Ok(());
    }
    let cache = args
        .cache
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("lockstep-git"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::new(2, format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async {
        let client = super::apply::client(&args.cluster).await?;
        if !args.once {
            let hub = std::sync::Arc::new(crate::controller::server::Hub::default());
            let listener = tokio::net::TcpListener::bind(&args.listen)
                .await
                .map_err(|e| Failure::new(2, format!("--listen {}: {e}", args.listen)))?;
            let server = tokio::spawn(crate::controller::server::serve(
                listener,
                hub.clone(),
                client.clone(),
            ));
            let _ = writeln!(
                stderr,
                "lockstep controller: serving /healthz /readyz /metrics /hook on {}",
                args.listen
            );
            let mut log = |line: &str| {
                let _ = writeln!(stderr, "lockstep controller: {line}");
            };
            crate::controller::run_loop(
                &client,
                args.namespace.as_deref(),
                &cache,
                args.poll,
                &hub,
                &mut log,
            )
            .await;
            server.abort();
            return Ok(());
        }
        match crate::controller::reconcile_all(&client, args.namespace.as_deref(), &cache).await {
            Ok((ok, 0)) => {
                let _ = writeln!(stderr, "lockstep controller: {ok} Sync(s) ready");
                Ok(())
            }
            Ok((ok, failed)) => Err(Failure::new(
                1,
                format!("{ok} Sync(s) ready, {failed} failed; see their status"),
            )),
            Err(e) => Err(Failure::new(
                2,
                format!("listing or updating Syncs: {}", crate::apply::reason(&e)),
            )),
        }
    })
}

/// Arguments of `lockstep sync`.
#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    /// The Sync's name.
    pub name: String,
    /// Its namespace.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// The cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Runs `lockstep sync`: asks the controller to sync now.
pub fn request(args: &SyncArgs, stdout: &mut dyn Write) -> Result<(), Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(2, format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async {
        let client = super::apply::client(&args.cluster).await?;
        let at = crate::controller::request_sync(&client, &args.namespace, &args.name)
            .await
            .map_err(|e| {
                Failure::new(
                    2,
                    format!(
                        "Sync {}/{}: {}",
                        args.namespace,
                        args.name,
                        crate::apply::reason(&e)
                    ),
                )
            })?;
        let _ = writeln!(
            stdout,
            "sync of {}/{} requested at {at}",
            args.namespace, args.name
        );
        Ok(())
    })
}
