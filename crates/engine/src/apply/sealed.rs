//! A keyless preview's comparison of secret-bearing objects: the sealed digest of what would be
//! applied against the [`SEALED_DIGEST`] annotation of the live
//! object (no value is read, compared or shown).

use serde_json::Value as Json;

use super::Action;
use crate::sealed::SEALED_DIGEST;

/// What a sealed comparison found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The object does not exist yet.
    New,
    /// The live object was applied from the same rendered object and ciphertexts.
    Unchanged,
    /// The rendered object or a ciphertext it refers to differs.
    Changed,
    /// The live object has no sealed digest (applied by an older lockstep, or by another tool).
    NoDigest,
    /// The cluster does not serve the object's kind.
    Unserved,
    /// This client may not read the live object.
    Forbidden,
}

/// Compares `digest` with the live object's annotation.
pub fn verdict(live: Option<&Json>, digest: &str) -> Verdict {
    let Some(live) = live else {
        return Verdict::New;
    };
    match live["metadata"]["annotations"][SEALED_DIGEST].as_str() {
        None => Verdict::NoDigest,
        Some(d) if d == digest => Verdict::Unchanged,
        Some(_) => Verdict::Changed,
    }
}

impl Verdict {
    /// How the summary reports it: the action, and the note shown instead of a diff.
    pub fn report(self) -> (Action, &'static str) {
        match self {
            Verdict::New => (Action::Created, "(sealed, new)"),
            Verdict::Unchanged => (Action::Unchanged, "(sealed, unchanged)"),
            Verdict::Changed => (Action::Configured, "(sealed, changed)"),
            // Not knowing is reported as a change: a CI gate must not pass what it could not see.
            Verdict::NoDigest => (
                Action::Configured,
                "(sealed, not compared: the live object has no sealed digest; one apply with the key records it)",
            ),
            Verdict::Unserved => (
                Action::Created,
                "(sealed, not compared: the cluster does not serve its kind yet)",
            ),
            Verdict::Forbidden => (
                Action::Configured,
                "(sealed, not compared: not allowed to read the live object)",
            ),
        }
    }

    /// Whether `note` is the report of a sealed comparison.
    pub fn is_report(note: &str) -> bool {
        [
            Verdict::New,
            Verdict::Unchanged,
            Verdict::Changed,
            Verdict::NoDigest,
            Verdict::Unserved,
            Verdict::Forbidden,
        ]
        .iter()
        .any(|v| v.report().1 == note)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn verdicts_follow_the_live_annotation() {
        let live = |d: Option<&str>| match d {
            Some(d) => json!({"metadata": {"annotations": {SEALED_DIGEST: d}}}),
            None => json!({"metadata": {"annotations": {"other": "x"}}}),
        };
        let cases = [
            (None, Verdict::New),
            (Some(live(Some("sha256:aa"))), Verdict::Unchanged),
            (Some(live(Some("sha256:bb"))), Verdict::Changed),
            (Some(live(None)), Verdict::NoDigest),
        ];
        for (object, expected) in cases {
            assert_eq!(
                verdict(object.as_ref(), "sha256:aa"),
                expected,
                "{object:?}"
            );
        }
        assert_eq!(Verdict::Unchanged.report().0, Action::Unchanged);
        assert!(Verdict::is_report(Verdict::Forbidden.report().1));
        assert!(!Verdict::is_report("(sealed"));
    }
}
