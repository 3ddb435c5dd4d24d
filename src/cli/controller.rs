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
    /// Time between reconciles of all Syncs, e.g. 30s, 5m.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub resync: Duration,
    /// Where fetched Git objects are kept (only what is in Git: secrets stay encrypted).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
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
        loop {
            match crate::controller::reconcile_all(&client, args.namespace.as_deref(), &cache).await
            {
                Ok((ok, failed)) => {
                    let _ = writeln!(
                        stderr,
                        "lockstep controller: {ok} Sync(s) ready, {failed} failed"
                    );
                    if args.once {
                        return if failed == 0 {
                            Ok(())
                        } else {
                            Err(Failure::new(
                                1,
                                format!("{failed} Sync(s) failed; see their status"),
                            ))
                        };
                    }
                }
                Err(e) => {
                    let message =
                        format!("listing or updating Syncs: {}", crate::apply::reason(&e));
                    if args.once {
                        return Err(Failure::new(2, message));
                    }
                    let _ = writeln!(stderr, "lockstep controller: {message}");
                }
            }
            tokio::time::sleep(args.resync).await;
        }
    })
}
