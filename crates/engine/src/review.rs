//! Review: what a change of the project does to each environment, without any key. Every
//! environment is rendered at two revisions (secrets sealed) and the two sets are compared object
//! by object: added, changed (a unified diff of the sealed YAML), `would prune`; a sealed
//! reference whose ciphertext digest changed is named (`secret value changed`) — the value itself
//! is never known. [`markdown`] writes it as a pull-request comment, bounded in size.

use std::collections::{BTreeMap, BTreeSet};

use crate::apply::{PRUNE_ANNOTATION, inventory};
use crate::render::{Body, Manifest, Rendered, SealedRef};

/// One environment at one revision: rendered, absent (the environment is not defined there), or
/// a render that failed (its message; nothing secret — renders are keyless).
pub enum Side {
    /// The rendered set.
    Rendered(Rendered),
    /// The environment does not exist at this revision.
    Absent,
    /// The render failed.
    Failed(String),
}

/// How one object differs between the two revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Only in the new set.
    Added,
    /// In both, different.
    Changed,
    /// Only in the old set: an apply deletes it.
    WouldPrune,
    /// Only in the old set, but an apply keeps it (why: a protected kind, or
    /// `lockstep.dev/prune: disabled`).
    Kept(&'static str),
}

/// One object that differs.
#[derive(Debug, Clone)]
pub struct ObjectChange {
    /// `Kind.group namespace/name` (or the source file, for a SOPS manifest whose identity is
    /// encrypted).
    pub object: String,
    /// How it differs.
    pub change: Change,
    /// A unified diff of the sealed YAML (empty for an encrypted manifest, whose text is
    /// ciphertext).
    pub diff: String,
    /// The sealed references whose ciphertext changed (`file#/path`), and encrypted manifests
    /// that changed: a secret value changed, or was re-encrypted.
    pub secrets_changed: Vec<String>,
}

/// The review of one environment.
#[derive(Debug, Clone)]
pub struct EnvReview {
    /// The environment.
    pub environment: String,
    /// What happened to the environment itself, when not an ordinary comparison: `added`,
    /// `removed`, or a render failure at one revision.
    pub note: Option<String>,
    /// Whether the review of this environment is incomplete (a render failed).
    pub failed: bool,
    /// The objects that differ, in apply order of the new set (pruned ones last).
    pub changes: Vec<ObjectChange>,
    /// Objects that are the same at both revisions.
    pub unchanged: usize,
}

impl EnvReview {
    fn count(&self, f: impl Fn(&Change) -> bool) -> usize {
        self.changes.iter().filter(|c| f(&c.change)).count()
    }
}

/// The review of a change: both revisions' labels and every environment.
#[derive(Debug, Clone)]
pub struct Review {
    /// The old revision (e.g. `a1b2c3d (main)`).
    pub from: String,
    /// The new revision (e.g. `e4f5a6b`, or `working tree`).
    pub to: String,
    /// Each environment, by name.
    pub environments: Vec<EnvReview>,
}

impl Review {
    /// Whether anything differs (objects, or an environment added or removed).
    pub fn changed(&self) -> bool {
        self.environments
            .iter()
            .any(|e| !e.changes.is_empty() || e.note.is_some())
    }

    /// Whether a render failed at either revision.
    pub fn failed(&self) -> bool {
        self.environments.iter().any(|e| e.failed)
    }
}

/// Compares one environment's two sides.
pub fn compare(environment: &str, from: &Side, to: &Side) -> EnvReview {
    let mut review = EnvReview {
        environment: environment.to_string(),
        note: None,
        failed: false,
        changes: Vec::new(),
        unchanged: 0,
    };
    let empty = Vec::new();
    let (old, new) = match (from, to) {
        (Side::Failed(why), _) => {
            review.failed = true;
            review.note = Some(format!("the render at the old revision failed: {why}"));
            return review;
        }
        (_, Side::Failed(why)) => {
            review.failed = true;
            review.note = Some(format!("the render at the new revision failed: {why}"));
            return review;
        }
        (Side::Absent, Side::Absent) => return review,
        (Side::Absent, Side::Rendered(r)) => {
            review.note = Some("a new environment".into());
            (&empty, &r.manifests)
        }
        (Side::Rendered(r), Side::Absent) => {
            review.note = Some(
                "the environment was removed from lockstep.yaml: nothing prunes it on its own (its inventory stays in the cluster)".into(),
            );
            (&r.manifests, &empty)
        }
        (Side::Rendered(a), Side::Rendered(b)) => (&a.manifests, &b.manifests),
    };
    let removed = matches!(to, Side::Absent);
    let old_by_key: BTreeMap<String, &Manifest> = old.iter().map(|m| (key(m), m)).collect();
    let new_keys: BTreeSet<String> = new.iter().map(key).collect();
    for m in new {
        let k = key(m);
        match old_by_key.get(&k).copied() {
            None => review.changes.push(ObjectChange {
                diff: diff_of(&k, None, Some(m)),
                secrets_changed: Vec::new(),
                object: k,
                change: Change::Added,
            }),
            Some(before) if before.to_yaml() == m.to_yaml() => review.unchanged += 1,
            Some(before) => review.changes.push(ObjectChange {
                diff: diff_of(&k, Some(before), Some(m)),
                secrets_changed: secrets_changed(before, m),
                object: k,
                change: Change::Changed,
            }),
        }
    }
    for m in old {
        let k = key(m);
        if new_keys.contains(&k) {
            continue;
        }
        // An environment that left lockstep.yaml is not applied at all: nothing is pruned.
        let change = if removed {
            Change::Kept("its environment is no longer applied")
        } else {
            prune_of(m)
        };
        review.changes.push(ObjectChange {
            diff: diff_of(&k, Some(m), None),
            secrets_changed: Vec::new(),
            object: k,
            change,
        });
    }
    review
}

/// The name an object is compared by.
fn key(m: &Manifest) -> String {
    match &m.id {
        Some(id) => id.to_string(),
        None => format!("encrypted manifest {}", m.source),
    }
}

/// What an apply does to an object that left the set.
fn prune_of(m: &Manifest) -> Change {
    let Some(id) = &m.id else {
        return Change::WouldPrune;
    };
    if inventory::protected(&id.kind) {
        return Change::Kept("a protected kind: pruned only with --prune-protected");
    }
    let disabled = match &m.body {
        Body::Object(v) => {
            v["metadata"]["annotations"][PRUNE_ANNOTATION].as_str() == Some("disabled")
        }
        Body::Sops { .. } => false,
    };
    if disabled {
        Change::Kept("lockstep.dev/prune: disabled")
    } else {
        Change::WouldPrune
    }
}

/// A unified diff of the sealed YAML; none for an encrypted manifest (its text is ciphertext).
fn diff_of(name: &str, old: Option<&Manifest>, new: Option<&Manifest>) -> String {
    let text = |m: Option<&Manifest>| match m {
        Some(m) if matches!(m.body, Body::Object(_)) => Some(m.to_yaml()),
        Some(_) => None,
        None => Some(String::new()),
    };
    let (Some(a), Some(b)) = (text(old), text(new)) else {
        return String::new();
    };
    similar::TextDiff::from_lines(&a, &b)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{name}"), &format!("b/{name}"))
        .to_string()
}

/// The sealed references of `new` whose ciphertext digest differs from the same reference in
/// `old`; an encrypted manifest whose text changed.
fn secrets_changed(old: &Manifest, new: &Manifest) -> Vec<String> {
    if let (Body::Sops { text: a }, Body::Sops { text: b }) = (&old.body, &new.body) {
        return if a == b {
            Vec::new()
        } else {
            vec![format!("{} (encrypted manifest)", new.source)]
        };
    }
    let name = |r: &SealedRef| format!("{}#/{}", r.file, r.path.join("/"));
    let before: BTreeMap<String, &Option<String>> =
        old.refs.iter().map(|r| (name(r), &r.digest)).collect();
    let mut out: Vec<String> = new
        .refs
        .iter()
        .filter(|r| before.get(&name(r)).is_some_and(|d| **d != r.digest))
        .map(name)
        .collect();
    out.dedup();
    out
}

/// Characters of Markdown [`markdown`] writes at most (GitHub refuses comments over 65,536; Gitea
/// and GitLab take about as much); diffs past it are left out, with a note.
pub const MARKDOWN_BUDGET: usize = 60_000;

/// The review as Markdown: a summary table, then per environment a line per changed object and
/// its diff in a collapsed block. At most `budget` characters.
pub fn markdown(review: &Review, budget: usize) -> String {
    let mut out = format!("## lockstep review: {} → {}\n\n", review.from, review.to);
    if !review.changed() && !review.failed() {
        out.push_str("No environment changes.\n");
        return out;
    }
    out.push_str("| environment | added | changed | would prune | kept | unchanged | secret values changed |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for e in &review.environments {
        let secrets: usize = e.changes.iter().map(|c| c.secrets_changed.len()).sum();
        let name = if e.failed {
            format!("{} ⚠ render failed", e.environment)
        } else {
            e.environment.clone()
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            escape(&name),
            e.count(|c| *c == Change::Added),
            e.count(|c| *c == Change::Changed),
            e.count(|c| *c == Change::WouldPrune),
            e.count(|c| matches!(c, Change::Kept(_))),
            e.unchanged,
            secrets
        ));
    }
    // Room is kept for the note about what was left out.
    let room = budget.saturating_sub(300);
    let (mut lines_left_out, mut diffs_left_out) = (0usize, 0usize);
    let push = |out: &mut String, text: &str, left_out: &mut usize| {
        if out.len() + text.len() > room {
            *left_out += 1;
        } else {
            out.push_str(text);
        }
    };
    for e in &review.environments {
        if e.changes.is_empty() && e.note.is_none() {
            continue;
        }
        let mut head = format!("\n### {}\n\n", escape(&e.environment));
        if let Some(note) = &e.note {
            head.push_str(&format!("{}\n\n", escape(note)));
        }
        push(&mut out, &head, &mut lines_left_out);
        for c in &e.changes {
            let what = match &c.change {
                Change::Added => "added".to_string(),
                Change::Changed => "changed".to_string(),
                Change::WouldPrune => "would prune".to_string(),
                Change::Kept(why) => format!("would be kept ({why})"),
            };
            let mut line = format!("- **{what}** `{}`\n", c.object);
            for s in &c.secrets_changed {
                line.push_str(&format!(
                    "  - secret value changed: `{s}` (its ciphertext differs)\n"
                ));
            }
            push(&mut out, &line, &mut lines_left_out);
        }
        for c in e.changes.iter().filter(|c| !c.diff.is_empty()) {
            let fence = fence_for(&c.diff);
            let block = format!(
                "\n<details><summary><code>{}</code></summary>\n\n{fence}diff\n{}{fence}\n</details>\n",
                html(&c.object),
                c.diff
            );
            push(&mut out, &block, &mut diffs_left_out);
        }
    }
    if lines_left_out + diffs_left_out > 0 {
        out.push_str(&format!(
            "\n_{lines_left_out} lines and {diffs_left_out} diffs left out to keep this comment under {budget} characters; run `lockstep review` to see everything._\n"
        ));
    }
    out
}

/// Markdown table and heading text with `|` and newlines made harmless.
fn escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Text inside an HTML element.
fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A code fence longer than any run of backticks in `text`, so a template line of backticks
/// cannot end the block early.
fn fence_for(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    "`".repeat(longest.max(2) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::ObjectId;

    fn manifest(kind: &str, name: &str, yaml: &str) -> Manifest {
        Manifest {
            source: "templates/t.yaml".into(),
            id: Some(ObjectId {
                group: String::new(),
                kind: kind.into(),
                namespace: Some("n".into()),
                name: name.into(),
            }),
            body: Body::Object(yaml_serde::from_str(yaml).expect("yaml")),
            refs: Vec::new(),
            release: None,
        }
    }

    fn rendered(manifests: Vec<Manifest>) -> Side {
        Side::Rendered(Rendered {
            project: "p".into(),
            environment: "dev".into(),
            namespace: "n".into(),
            secrets_file: None,
            manifests,
            reruns: Vec::new(),
            profile: None,
            needs: Vec::new(),
        })
    }

    #[test]
    fn protected_kinds_and_disabled_prune_are_kept_not_pruned() {
        let old = rendered(vec![
            manifest(
                "PersistentVolumeClaim",
                "data",
                "kind: PersistentVolumeClaim\n",
            ),
            manifest(
                "ConfigMap",
                "keep",
                "kind: ConfigMap\nmetadata:\n  annotations: {lockstep.dev/prune: disabled}\n",
            ),
            manifest("ConfigMap", "gone", "kind: ConfigMap\n"),
        ]);
        let r = compare("dev", &old, &rendered(Vec::new()));
        let changes: Vec<(&str, &Change)> = r
            .changes
            .iter()
            .map(|c| (c.object.as_str(), &c.change))
            .collect();
        assert!(matches!(
            changes[0],
            ("PersistentVolumeClaim n/data", Change::Kept(_))
        ));
        assert!(matches!(changes[1], ("ConfigMap n/keep", Change::Kept(_))));
        assert_eq!(changes[2], ("ConfigMap n/gone", &Change::WouldPrune));
        // A removed environment prunes nothing.
        let r = compare("dev", &old, &Side::Absent);
        assert!(
            r.changes
                .iter()
                .all(|c| matches!(c.change, Change::Kept(_)))
        );
    }

    #[test]
    fn a_diff_cannot_close_its_code_block_early() {
        let line = "data: {a: \"```\"}\n";
        let old = rendered(vec![manifest("ConfigMap", "c", "kind: ConfigMap\n")]);
        let new = rendered(vec![manifest(
            "ConfigMap",
            "c",
            &format!("kind: ConfigMap\n{line}"),
        )]);
        let review = Review {
            from: "a".into(),
            to: "b".into(),
            environments: vec![compare("dev", &old, &new)],
        };
        let md = markdown(&review, MARKDOWN_BUDGET);
        assert!(md.contains("\n````diff\n"), "{md}");
        assert!(md.contains("\n````\n</details>"), "{md}");
        assert_eq!(fence_for("no backticks"), "```");
    }
}
