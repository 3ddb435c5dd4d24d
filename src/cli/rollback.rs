//! `lockstep rollback`: pins a Sync to an older commit until a newer commit than the one it rolls
//! back from arrives (`--to REV`), or ends the pin (`--clear`); waits for the controller's answer.

use std::io::Write;

use clap::Args;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, PostParams};

use crate::controller::history;
use crate::controller::rollback::{self, RollbackState};

use super::controller::{RequestArgs, report_handled, sync_failure, unanswered};
use super::exit::{Code, Failure};
use super::status::sync_named;

/// Arguments of `lockstep rollback`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["to", "clear"])))]
pub struct RollbackArgs {
    /// The Sync's name.
    pub name: String,
    /// The commit to go back to: a full commit id, or the start of one that `lockstep history`
    /// lists. The Sync holds it until a commit newer than the one applied now arrives.
    #[arg(long, value_name = "REV")]
    pub to: Option<String>,
    /// End the rollback: follow the ref again now.
    #[arg(long)]
    pub clear: bool,
    /// The namespace, the wait and the cluster.
    #[command(flatten)]
    pub request: RequestArgs,
}

fn is_hex(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The full commit id `to` names: itself when it is one, else the one commit of the Sync's
/// history and status it starts.
fn resolve(to: &str, known: &[String]) -> Result<String, String> {
    let to = to.trim().to_ascii_lowercase();
    if !is_hex(&to) {
        return Err(format!(
            "--to {to:?} is not a commit id (hex digits; `lockstep history` lists the Sync's commits)"
        ));
    }
    if to.len() == 40 || to.len() == 64 {
        return Ok(to);
    }
    if to.len() < 4 {
        return Err(format!(
            "--to {to}: give at least 4 hex digits of the commit id"
        ));
    }
    let mut found: Vec<&String> = known.iter().filter(|k| k.starts_with(&to)).collect();
    found.sort();
    found.dedup();
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(format!(
            "--to {to}: no commit of the Sync's history starts so (`lockstep history` lists them); give the full commit id"
        )),
        many => Err(format!(
            "--to {to} is ambiguous: {}; give more digits",
            many.iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Who the API server says this client is (`None` when it will not say).
async fn who_am_i(client: &kube::Client) -> Option<String> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .ok()?;
    review.status?.user_info?.username
}

/// Runs `lockstep rollback`.
pub fn run(args: &RollbackArgs, stdout: &mut dyn Write) -> Result<(), Failure> {
    let request = &args.request;
    super::apply::with_cluster(
        &request.cluster,
        request.namespace.as_deref(),
        async |client, namespace| {
            let name = &args.name;
            let fail = |e: kube::Error| sync_failure(&namespace, name, &e);
            let sync = sync_named(&client, &namespace, name).await?;
            if args.clear {
                let at = rollback::clear(&client, &namespace, name)
                    .await
                    .map_err(fail)?;
                let _ = writeln!(
                    stdout,
                    "rollback of {namespace}/{name} cleared; sync requested at {at}"
                );
                if !request.wait {
                    return Ok(());
                }
                return report_handled(&client, &namespace, name, &at, request.timeout, stdout)
                    .await;
            }
            let status = sync.status.clone().unwrap_or_default();
            // Rolling back again while pinned keeps the commit the first rollback came from.
            let pinned_from = status
                .rollback
                .as_ref()
                .filter(|r| r.state == RollbackState::Pinned)
                .map(|r| r.from.clone());
            let Some(from) = pinned_from.or(status.last_applied_revision.clone()) else {
                return Err(Failure::new(
                    Code::ERROR,
                    format!(
                        "Sync {namespace}/{name} has applied no commit yet: there is nothing to roll back from"
                    ),
                ));
            };
            let mut known: Vec<String> = history::read(&client, &namespace, name)
                .await
                .unwrap_or_default()
                .into_iter()
                .filter_map(|e| e.revision)
                .collect();
            known.extend(status.last_attempted_revision.clone());
            known.push(from.clone());
            let to = args.to.as_deref().unwrap_or_default();
            let revision = resolve(to, &known).map_err(|why| Failure::new(Code::ERROR, why))?;
            if Some(&revision) == status.last_applied_revision.as_ref() || revision == from {
                return Err(Failure::new(
                    Code::ERROR,
                    format!("Sync {namespace}/{name} has {revision} applied already"),
                ));
            }
            let by = who_am_i(&client).await;
            let at = rollback::request(&client, &namespace, name, &revision, &from, by)
                .await
                .map_err(fail)?;
            let _ = writeln!(
                stdout,
                "rollback of {namespace}/{name} to {revision} (from {from}) requested at {at}"
            );
            if !request.wait {
                return Ok(());
            }
            let answer = rollback::wait_answered(&client, &namespace, name, &at, request.timeout)
                .await
                .map_err(fail)?;
            let Some((rolled, (ready, reason, message))) = answer else {
                return Err(unanswered(&namespace, name, request.timeout));
            };
            match rolled.state {
                RollbackState::Pinned if ready => {
                    let _ = writeln!(stdout, "{namespace}/{name}: Ready ({reason}): {message}");
                    Ok(())
                }
                RollbackState::Pinned => Err(Failure::new(
                    Code::NOT_READY,
                    format!(
                        "{namespace}/{name}: pinned to {revision} but not Ready ({reason}): {message}"
                    ),
                )),
                _ => Err(Failure::new(
                    Code::NOT_READY,
                    format!("{namespace}/{name}: {}", rolled.message),
                )),
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revision_is_a_full_id_or_the_one_known_commit_it_starts() {
        let a = "a1b2c3d4".repeat(5);
        let b = "a1b2ffff".repeat(5);
        let known = vec![a.clone(), b.clone(), a.clone()];
        assert_eq!(resolve(&a.to_uppercase(), &[]), Ok(a.clone()));
        assert_eq!(resolve("a1b2c3", &known), Ok(a.clone()));
        assert!(resolve("a1b2", &known).is_err_and(|e| e.contains("ambiguous")));
        assert!(resolve("beef", &known).is_err_and(|e| e.contains("lockstep history")));
        assert!(resolve("a1b", &known).is_err_and(|e| e.contains("at least 4")));
        assert!(resolve("main", &known).is_err_and(|e| e.contains("not a commit id")));
    }
}
