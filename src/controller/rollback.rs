//! Rollback that holds: a Sync pinned to an older commit of its ref until a commit newer than the
//! one it rolled back from arrives. `lockstep rollback` writes the request as the annotation
//! [`ROLLBACK`]; the controller reads it ([`plan`]), applies the pinned commit — or refuses before
//! touching anything when that commit no longer fetches, verifies, renders or decrypts — reports it
//! in `status.rollback`, and removes the annotation once the pin is over (a newer commit, or a
//! refusal). `lockstep rollback --clear` removes it by hand.

use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{GitRef, SYNC_REQUESTED, Sync, VerifyMode};
use crate::pipeline::Reason;
use crate::source::git;

/// The annotation a rollback request is written to (a JSON [`Request`]).
pub const ROLLBACK: &str = "lockstep.dev/rollback";

/// A rollback request, as `lockstep rollback --to` writes it into [`ROLLBACK`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Request {
    /// The commit to pin (full hex).
    pub revision: String,
    /// The commit applied when it was asked (full hex): a newer one ends the pin.
    pub from: String,
    /// Who asked, as the API server named them to `lockstep rollback` (the audit log has the
    /// patch itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// When (RFC 3339); tells one request from the next.
    pub at: String,
}

/// What became of the last rollback request (`status.rollback`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackStatus {
    /// The commit rolled back to.
    pub revision: String,
    /// The commit rolled back from: a commit that descends from it ends the pin.
    pub from: String,
    /// Who asked (as `lockstep rollback` was told by the API server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// When it was asked.
    pub requested_at: String,
    /// `Pinned`, `Refused`, `Ended` or `Cleared`.
    pub state: RollbackState,
    /// What happened, in words (never a value).
    pub message: String,
}

/// The state of a rollback.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RollbackState {
    /// The Sync holds the older commit.
    Pinned,
    /// The older commit could not be applied; nothing was changed.
    Refused,
    /// A newer commit arrived and the Sync follows its ref again.
    Ended,
    /// `lockstep rollback --clear` ended it.
    Cleared,
}

impl RollbackState {
    /// Whether the request is over (the annotation should be gone).
    fn over(self) -> bool {
        self != RollbackState::Pinned
    }
}

/// What a reconcile does about rollback.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Follow the ref. `status`: what to record first (a pin cleared by hand, a request refused
    /// before any fetch), `None` to keep what the status says; `remove`: the annotation's value
    /// to remove (a request that is over).
    Follow {
        /// The new `status.rollback`, if it changes.
        status: Option<RollbackStatus>,
        /// The annotation value to remove.
        remove: Option<String>,
    },
    /// Read the pinned commit while no newer one is there.
    Pin {
        /// The request.
        request: Request,
        /// The annotation's value (removed when the pin ends).
        annotation: String,
        /// Whether the pin was not applied yet (a failure before the apply refuses it).
        fresh: bool,
    },
}

fn is_commit_id(id: &str) -> bool {
    (id.len() == 40 || id.len() == 64) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What the Sync's rollback annotation and status ask of this reconcile.
pub fn plan(sync: &Sync) -> Plan {
    let previous = sync.status.as_ref().and_then(|s| s.rollback.clone());
    let Some(text) = sync.annotations().get(ROLLBACK).cloned() else {
        // Cleared by hand while pinned: say so once.
        let status = previous
            .filter(|p| p.state == RollbackState::Pinned)
            .map(|p| RollbackStatus {
                state: RollbackState::Cleared,
                message: format!(
                    "cleared: following {} again (the rollback to {} from {} is over)",
                    followed(sync),
                    short(&p.revision),
                    short(&p.from)
                ),
                ..p
            });
        return Plan::Follow {
            status,
            remove: None,
        };
    };
    let request = match serde_json::from_str::<Request>(&text) {
        Ok(r) => r,
        Err(e) => {
            return refused_unread(
                sync,
                &text,
                format!(
                    "the annotation {ROLLBACK} is not what `lockstep rollback` writes ({e}); it was removed"
                ),
            );
        }
    };
    if previous
        .as_ref()
        .is_some_and(|p| p.requested_at == request.at && p.state.over())
    {
        // Handled before; only the annotation's removal did not go through.
        return Plan::Follow {
            status: None,
            remove: Some(text),
        };
    }
    if let Some(why) = unfit(sync, &request) {
        return Plan::Follow {
            status: Some(status_of(&request, RollbackState::Refused, why)),
            remove: Some(text),
        };
    }
    let fresh = previous.is_none_or(|p| p.requested_at != request.at);
    Plan::Pin {
        request,
        annotation: text,
        fresh,
    }
}

/// Why a well-formed request cannot be carried out at all, whatever the repository holds.
fn unfit(sync: &Sync, request: &Request) -> Option<String> {
    let source = &sync.spec.source;
    for (what, id) in [("revision", &request.revision), ("from", &request.from)] {
        if !is_commit_id(id) {
            return Some(format!(
                "refused: {what} {id:?} is not a full commit id (40 or 64 hex digits)"
            ));
        }
    }
    if request.revision == request.from {
        return Some(format!(
            "refused: {} is the commit it would roll back from",
            short(&request.revision)
        ));
    }
    if matches!(
        source.git_ref,
        Some(GitRef {
            commit: Some(_),
            ..
        })
    ) {
        return Some(
            "refused: spec.source.ref.commit names one commit already; change it to go back".into(),
        );
    }
    let mode = source.verify.as_ref().map(|v| v.mode.unwrap_or_default());
    if matches!(mode, Some(VerifyMode::Tag | VerifyMode::TagAndHead)) {
        return Some(
            "refused: verify.mode Tag vouches only for the commit the tag names, and an older \
             commit would be applied unverified; move the tag back instead"
                .into(),
        );
    }
    None
}

/// A request that does not parse: refused, with what is known of it.
fn refused_unread(sync: &Sync, text: &str, message: String) -> Plan {
    let applied = sync
        .status
        .as_ref()
        .and_then(|s| s.last_applied_revision.clone())
        .unwrap_or_default();
    Plan::Follow {
        status: Some(RollbackStatus {
            revision: String::new(),
            from: applied,
            requested_by: None,
            requested_at: String::new(),
            state: RollbackState::Refused,
            message,
        }),
        remove: Some(text.to_string()),
    }
}

/// The status of `request` in `state`.
pub fn status_of(request: &Request, state: RollbackState, message: String) -> RollbackStatus {
    RollbackStatus {
        revision: request.revision.clone(),
        from: request.from.clone(),
        requested_by: request.by.clone(),
        requested_at: request.at.clone(),
        state,
        message,
    }
}

/// The ref the Sync follows, in words.
fn followed(sync: &Sync) -> String {
    match &sync.spec.source.git_ref {
        Some(GitRef {
            branch: Some(b), ..
        }) => format!("branch {b}"),
        Some(GitRef { tag: Some(t), .. }) => format!("tag {t}"),
        _ => "the default branch".into(),
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The pin the fetch is given.
pub fn pin_of(request: &Request) -> git::Pin {
    git::Pin {
        commit: request.revision.clone(),
        from: request.from.clone(),
    }
}

/// Whether a failed first attempt of a pin left the cluster untouched, so the request is refused
/// (a failure in or after the apply is retried like any other: the cluster is already part way).
pub fn refuses(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::FetchFailed
            | Reason::VerifyFailed
            | Reason::NotFastForward
            | Reason::RenderFailed
            | Reason::DecryptFailed
            | Reason::ValidationFailed
            | Reason::DependencyNotReady
    )
}

/// The message of a refused request: the step's own words, and what to do.
pub fn refusal(request: &Request, reason: Reason, message: &str) -> String {
    let hint = match reason {
        Reason::FetchFailed => {
            " — the controller keeps the repository's Git objects, but reads only what the \
             server shows the Sync's credentials at each sync (so revoked access ends at once): \
             rolling back needs the Git server; ask again once it answers"
        }
        Reason::DecryptFailed => {
            " — that commit's secrets are encrypted to recipients whose identities the decryption \
             Secret no longer holds (after a reseal, older commits keep the old recipients): add \
             the old identity to the Secret to roll back that far, or roll back to a commit made \
             after the reseal"
        }
        _ => "",
    };
    format!(
        "rollback to {} refused, nothing was changed: {}: {message}{hint}",
        short(&request.revision),
        reason.as_str()
    )
}

/// The Ready message of a Sync that holds its pin.
pub fn held(request: &Request, sync: &Sync, rewritten: Option<&str>, applied: &str) -> String {
    let by = request
        .by
        .as_deref()
        .map(|b| format!(" at the request of {b}"))
        .unwrap_or_default();
    let rewritten = rewritten
        .map(|tip| {
            format!(
                "; {} is now at {}, which does not descend from {} (moved back or rewritten), so the pin holds",
                followed(sync),
                short(tip),
                short(&request.from)
            )
        })
        .unwrap_or_default();
    format!(
        "rolled back to {} from {}{by}; holds until a commit newer than {} arrives on {} (`lockstep rollback --clear` ends it){rewritten}: {applied}",
        short(&request.revision),
        short(&request.from),
        short(&request.from),
        followed(sync),
    )
}

/// The message of a pin a newer commit ended.
pub fn ended(request: &Request, sync: &Sync, tip: &str) -> String {
    format!(
        "ended: {} descends from {}, so {} is followed again (the rollback to {} is over)",
        short(tip),
        short(&request.from),
        followed(sync),
        short(&request.revision)
    )
}

/// Removes the annotation if it still holds `value` (a JSON patch with a test: a newer request
/// made meanwhile stays). A failure is logged: the status already says the request is over.
pub async fn remove_annotation(client: &Client, sync: &Sync, value: &str) {
    let ns = sync.namespace().unwrap_or_else(|| "default".into());
    let api: Api<Sync> = Api::namespaced(client.clone(), &ns);
    let path = format!("/metadata/annotations/{}", ROLLBACK.replace('/', "~1"));
    let patch: Result<json_patch::Patch, _> = serde_json::from_value(json!([
        {"op": "test", "path": path, "value": value},
        {"op": "remove", "path": path},
    ]));
    let Ok(patch) = patch else {
        return;
    };
    if let Err(e) = api
        .patch(
            &sync.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
    {
        tracing::debug!(
            sync = %format!("{ns}/{}", sync.name_any()),
            "removing the rollback annotation: {}",
            crate::apply::reason(&e)
        );
    }
}

/// Writes a rollback request to `revision` (from the applied `from`, asked by `by`); returns the
/// request's time.
pub async fn request(
    client: &Client,
    namespace: &str,
    name: &str,
    revision: &str,
    from: &str,
    by: Option<String>,
) -> Result<String, kube::Error> {
    let at = jiff::Timestamp::now().to_string();
    let request = Request {
        revision: revision.to_string(),
        from: from.to_string(),
        by,
        at: at.clone(),
    };
    let value = serde_json::to_string(&request).unwrap_or_default();
    let api: Api<Sync> = Api::namespaced(client.clone(), namespace);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {ROLLBACK: value}}})),
    )
    .await?;
    Ok(at)
}

/// Removes the rollback annotation and asks for a sync (the answer comes as for `lockstep sync`);
/// returns the sync request's time.
pub async fn clear(client: &Client, namespace: &str, name: &str) -> Result<String, kube::Error> {
    let at = jiff::Timestamp::now().to_string();
    let api: Api<Sync> = Api::namespaced(client.clone(), namespace);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {ROLLBACK: null, SYNC_REQUESTED: at}}})),
    )
    .await?;
    Ok(at)
}

/// The answer to the request made `at`, once the status gives it and no sync is running:
/// the rollback status and the Ready condition's (status, reason, message).
fn answered(sync: &Sync, at: &str) -> Option<(RollbackStatus, (bool, String, String))> {
    let status = sync.status.as_ref()?;
    let rollback = status.rollback.clone().filter(|r| r.requested_at == at)?;
    Some((rollback, super::settled_ready(status)?))
}

/// Waits until the controller answered the rollback request made `at` (polling every half
/// second); `None` after `timeout`.
pub async fn wait_answered(
    client: &Client,
    namespace: &str,
    name: &str,
    at: &str,
    timeout: Duration,
) -> Result<Option<(RollbackStatus, (bool, String, String))>, kube::Error> {
    let api: Api<Sync> = Api::namespaced(client.clone(), namespace);
    super::poll_sync(&api, name, Instant::now() + timeout, |s| answered(s, at)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::SyncStatus;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    fn sync(annotation: Option<&str>, previous: Option<RollbackStatus>) -> Sync {
        let mut s = crate::controller::tests::sync(None, 1, None);
        if let Some(a) = annotation {
            s.metadata.annotations = Some([(ROLLBACK.to_string(), a.to_string())].into());
        }
        s.status = Some(SyncStatus {
            last_applied_revision: Some(B.into()),
            rollback: previous,
            ..SyncStatus::default()
        });
        s
    }

    fn request(at: &str) -> (Request, String) {
        let r = Request {
            revision: A.into(),
            from: B.into(),
            by: Some("jane".into()),
            at: at.into(),
        };
        let text = serde_json::to_string(&r).expect("json");
        (r, text)
    }

    #[test]
    fn a_new_request_pins_fresh_and_an_applied_one_not_fresh() {
        let (r, text) = request("t1");
        assert_eq!(
            plan(&sync(Some(&text), None)),
            Plan::Pin {
                request: r.clone(),
                annotation: text.clone(),
                fresh: true
            }
        );
        let pinned = status_of(&r, RollbackState::Pinned, String::new());
        assert!(matches!(
            plan(&sync(Some(&text), Some(pinned))),
            Plan::Pin { fresh: false, .. }
        ));
    }

    #[test]
    fn a_request_that_is_over_only_has_its_annotation_removed() {
        let (r, text) = request("t1");
        for state in [
            RollbackState::Refused,
            RollbackState::Ended,
            RollbackState::Cleared,
        ] {
            let over = status_of(&r, state, String::new());
            assert_eq!(
                plan(&sync(Some(&text), Some(over))),
                Plan::Follow {
                    status: None,
                    remove: Some(text.clone())
                }
            );
        }
        // A new request after one that is over pins again.
        let (_, newer) = request("t2");
        let over = status_of(&r, RollbackState::Ended, String::new());
        assert!(matches!(
            plan(&sync(Some(&newer), Some(over))),
            Plan::Pin { fresh: true, .. }
        ));
    }

    #[test]
    fn removing_the_annotation_by_hand_clears_a_pin_once() {
        let (r, _) = request("t1");
        let pinned = status_of(&r, RollbackState::Pinned, String::new());
        let Plan::Follow {
            status: Some(s),
            remove: None,
        } = plan(&sync(None, Some(pinned)))
        else {
            panic!("a cleared pin is recorded");
        };
        assert_eq!(s.state, RollbackState::Cleared);
        assert!(s.message.contains("following the default branch again"));
        assert_eq!(
            plan(&sync(None, Some(s))),
            Plan::Follow {
                status: None,
                remove: None
            }
        );
    }

    #[test]
    fn malformed_or_unfit_requests_are_refused_and_removed() {
        let Plan::Follow {
            status: Some(s),
            remove: Some(_),
        } = plan(&sync(Some("{not json"), None))
        else {
            panic!("refused");
        };
        assert_eq!(s.state, RollbackState::Refused);
        assert!(s.message.contains(ROLLBACK), "{}", s.message);

        let same = format!(r#"{{"revision":"{B}","from":"{B}","at":"t"}}"#);
        let short_id = format!(r#"{{"revision":"abc123","from":"{B}","at":"t"}}"#);
        for (text, needle) in [
            (same, "is the commit it would roll back from"),
            (short_id, "not a full commit id"),
        ] {
            let Plan::Follow {
                status: Some(s), ..
            } = plan(&sync(Some(&text), None))
            else {
                panic!("refused: {text}");
            };
            assert!(s.message.contains(needle), "{}", s.message);
        }

        let (_, text) = request("t1");
        let mut pinned_by_spec = sync(Some(&text), None);
        pinned_by_spec.spec.source.git_ref = Some(GitRef {
            commit: Some(B.into()),
            ..GitRef::default()
        });
        assert!(matches!(
            plan(&pinned_by_spec),
            Plan::Follow {
                status: Some(RollbackStatus {
                    state: RollbackState::Refused,
                    ..
                }),
                ..
            }
        ));
    }

    #[test]
    fn only_failures_before_the_apply_refuse_a_fresh_pin() {
        for r in [
            Reason::FetchFailed,
            Reason::DecryptFailed,
            Reason::RenderFailed,
        ] {
            assert!(refuses(r), "{r:?}");
        }
        for r in [
            Reason::ApplyFailed,
            Reason::PruneFailed,
            Reason::HealthCheckFailed,
        ] {
            assert!(!refuses(r), "{r:?}");
        }
        let (r, _) = request("t");
        let text = refusal(&r, Reason::DecryptFailed, "no identity opens secrets.yaml");
        assert!(text.contains("after a reseal"), "{text}");
        assert!(text.contains("nothing was changed"), "{text}");
    }
}
