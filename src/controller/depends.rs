//! Dependencies between Syncs (`spec.dependsOn`): a Sync applies only once every Sync it names is
//! Ready for its current spec (and, with `revision: same`, has applied the commit this one is
//! about to apply, from the same repository). Until then its status says which one it waits for
//! and why (`Ready=False`, reason `DependencyNotReady`). It is woken by the watch the moment a
//! dependency becomes Ready — no timer per hop. Cycles are refused with the cycle named.
//!
//! A dependency in another namespace is named with its Ready reason only: its message may name
//! another tenant's objects.

use std::collections::BTreeSet;
use std::sync::Arc;

use kube::ResourceExt;

use super::{Dependency, DependencyRevision, Sync};

/// Finds a Sync by (namespace, name).
pub trait Lookup {
    /// The Sync `namespace/name`, when known.
    fn find(&self, namespace: &str, name: &str) -> Option<Arc<Sync>>;
}

impl Lookup for kube::runtime::reflector::Store<Sync> {
    fn find(&self, namespace: &str, name: &str) -> Option<Arc<Sync>> {
        self.get(&kube::runtime::reflector::ObjectRef::new(name).within(namespace))
    }
}

impl<F: Fn(&str, &str) -> Option<Arc<Sync>>> Lookup for F {
    fn find(&self, namespace: &str, name: &str) -> Option<Arc<Sync>> {
        self(namespace, name)
    }
}

/// A dependency with `revision: same`: the commit it last applied must be the one this Sync is
/// about to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// `namespace/name` of the dependency.
    pub label: String,
    /// Its `status.lastAppliedRevision`.
    pub applied: Option<String>,
    /// Whether it is in this Sync's namespace (else what it applied is not quoted).
    pub near: bool,
}

impl Pin {
    /// Why this Sync must still wait once it knows the `commit` it would apply (`None`: the
    /// dependency applied that commit).
    pub fn waiting(&self, commit: &str) -> Option<String> {
        let applied = self.applied.as_deref().unwrap_or_default();
        if !commit.is_empty() && applied.contains(commit) {
            return None;
        }
        let theirs = match (applied.is_empty(), self.near) {
            (true, _) => "; it applied nothing yet".to_string(),
            (false, true) => format!("; it applied {applied}"),
            (false, false) => String::new(),
        };
        Some(format!(
            "waiting for {} to apply commit {commit} (revision: same{theirs})",
            self.label
        ))
    }
}

/// What the dependencies of a Sync allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every dependency is Ready; the pins are checked once the commit is known.
    Go(Vec<Pin>),
    /// It must wait (or its dependencies make no sense): why.
    Wait(String),
}

/// The longest chain of dependencies followed when looking for a cycle (a hostile spec cannot
/// make the walk unbounded: each Sync is visited once anyway).
const MAX_DEPTH: usize = 64;

/// Decides whether `sync` may apply now, from what `syncs` knows of its dependencies.
pub fn check(sync: &Sync, syncs: &impl Lookup) -> Verdict {
    if sync.spec.depends_on.is_empty() {
        return Verdict::Go(Vec::new());
    }
    let ns = sync.namespace().unwrap_or_default();
    if let Some(cycle) = cycle(sync, syncs) {
        return Verdict::Wait(format!(
            "dependency cycle: {}; remove one of these dependsOn entries",
            cycle.join(" → ")
        ));
    }
    let mut pins = Vec::new();
    for dep in &sync.spec.depends_on {
        let dep_ns = dep.namespace.as_deref().unwrap_or(&ns);
        let label = format!("{dep_ns}/{}", dep.name);
        let Some(found) = syncs.find(dep_ns, &dep.name) else {
            return Verdict::Wait(format!(
                "waiting for {label}, which does not exist (spec.dependsOn); create it or remove the entry"
            ));
        };
        if found.metadata.deletion_timestamp.is_some() {
            return Verdict::Wait(format!("waiting for {label}, which is being deleted"));
        }
        if let Some(why) = not_ready(&found, dep_ns == ns) {
            return Verdict::Wait(format!("waiting for {label} ({why})"));
        }
        if dep.revision == Some(DependencyRevision::Same) {
            if found.spec.source.url != sync.spec.source.url {
                return Verdict::Wait(format!(
                    "dependsOn {label} has revision: same, but it syncs another repository; remove revision: same or point both at one repository"
                ));
            }
            pins.push(Pin {
                near: dep_ns == ns,
                label,
                applied: found
                    .status
                    .as_ref()
                    .and_then(|s| s.last_applied_revision.clone()),
            });
        }
    }
    Verdict::Go(pins)
}

/// Why a Sync is not Ready for its current spec (`None`: it is); its message only when `near`
/// (same namespace).
fn not_ready(sync: &Sync, near: bool) -> Option<String> {
    let status = sync.status.as_ref();
    let ready = status.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let Some(ready) = ready else {
        return Some("not synced yet".into());
    };
    let current = status.and_then(|s| s.observed_generation) == sync.metadata.generation;
    if ready.status == "True" && current {
        return None;
    }
    if !current {
        return Some("its new spec is not synced yet".into());
    }
    if near && !ready.message.is_empty() {
        Some(format!("{}: {}", ready.reason, ready.message))
    } else {
        Some(ready.reason.clone())
    }
}

/// The first cycle through `sync` its dependencies make, as `namespace/name` labels from `sync`
/// back to it.
fn cycle(sync: &Sync, syncs: &impl Lookup) -> Option<Vec<String>> {
    let start = label(sync);
    let mut seen = BTreeSet::new();
    let mut path = vec![start.clone()];
    walk(sync, syncs, &start, &mut seen, &mut path).then_some(path)
}

fn walk(
    at: &Sync,
    syncs: &impl Lookup,
    start: &str,
    seen: &mut BTreeSet<String>,
    path: &mut Vec<String>,
) -> bool {
    if path.len() > MAX_DEPTH {
        return false;
    }
    let ns = at.namespace().unwrap_or_default();
    for dep in &at.spec.depends_on {
        let dep_ns = dep.namespace.as_deref().unwrap_or(&ns);
        let next = format!("{dep_ns}/{}", dep.name);
        if next == start {
            path.push(next);
            return true;
        }
        if !seen.insert(next.clone()) {
            continue;
        }
        if let Some(found) = syncs.find(dep_ns, &dep.name) {
            path.push(next);
            if walk(&found, syncs, start, seen, path) {
                return true;
            }
            path.pop();
        }
    }
    false
}

fn label(sync: &Sync) -> String {
    format!(
        "{}/{}",
        sync.namespace().unwrap_or_default(),
        sync.name_any()
    )
}

/// `syncs` with every Sync after the ones it depends on (as far as they are listed; a cycle
/// keeps its listed order and is refused by [`check`]).
pub fn in_order(syncs: Vec<Sync>) -> Vec<Sync> {
    // Memoised: a graph where each Sync names every earlier one has exponentially many paths.
    fn depth(
        at: &str,
        by_label: &std::collections::HashMap<String, &Sync>,
        on_path: &mut BTreeSet<String>,
        known: &mut std::collections::HashMap<String, usize>,
    ) -> usize {
        if let Some(&d) = known.get(at) {
            return d;
        }
        let Some(sync) = by_label.get(at) else {
            return 0;
        };
        if on_path.len() > MAX_DEPTH || !on_path.insert(at.to_string()) {
            return 0;
        }
        let ns = sync.namespace().unwrap_or_default();
        let deepest = sync
            .spec
            .depends_on
            .iter()
            .map(|d| {
                let next = format!("{}/{}", d.namespace.as_deref().unwrap_or(&ns), d.name);
                depth(&next, by_label, on_path, known) + 1
            })
            .max()
            .unwrap_or(0);
        on_path.remove(at);
        known.insert(at.to_string(), deepest);
        deepest
    }
    let by_label: std::collections::HashMap<String, &Sync> =
        syncs.iter().map(|s| (label(s), s)).collect();
    let mut known = std::collections::HashMap::new();
    let mut depths: Vec<usize> = syncs
        .iter()
        .map(|s| depth(&label(s), &by_label, &mut BTreeSet::new(), &mut known))
        .collect();
    let mut indexed: Vec<(usize, Sync)> = depths.drain(..).zip(syncs.iter().cloned()).collect();
    indexed.sort_by_key(|(d, _)| *d);
    indexed.into_iter().map(|(_, s)| s).collect()
}

/// Whether `sync` names `namespace/name` among its dependencies.
pub fn names(sync: &Sync, namespace: &str, name: &str) -> bool {
    let ns = sync.namespace().unwrap_or_default();
    sync.spec
        .depends_on
        .iter()
        .any(|d: &Dependency| d.name == name && d.namespace.as_deref().unwrap_or(&ns) == namespace)
}

/// The Syncs that wait for a dependency, by (namespace, name): woken when one changes. A Sync is
/// marked *before* its dependencies are checked and cleared only once a reconcile ended for
/// another reason, so a dependency that changes between the check and the status write still
/// wakes it (its status alone would not say it waits yet).
#[derive(Debug, Default)]
pub struct Waiting(std::sync::Mutex<BTreeSet<(String, String)>>);

impl Waiting {
    /// Marks `namespace/name` as waiting (or about to check).
    pub fn mark(&self, namespace: &str, name: &str) {
        if let Ok(mut w) = self.0.lock() {
            w.insert((namespace.to_string(), name.to_string()));
        }
    }

    /// `namespace/name` no longer waits.
    pub fn clear(&self, namespace: &str, name: &str) {
        if let Ok(mut w) = self.0.lock() {
            w.remove(&(namespace.to_string(), name.to_string()));
        }
    }

    /// Every Sync that waits, as (namespace, name).
    pub fn all(&self) -> Vec<(String, String)> {
        self.0
            .lock()
            .map(|w| w.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether `namespace/name` waits.
    pub fn contains(&self, namespace: &str, name: &str) -> bool {
        self.0
            .lock()
            .is_ok_and(|w| w.contains(&(namespace.to_string(), name.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::SyncStatus;

    fn sync(ns: &str, name: &str, deps: &[(&str, Option<&str>)]) -> Sync {
        let deps: Vec<serde_json::Value> = deps
            .iter()
            .map(|(n, ns)| serde_json::json!({"name": n, "namespace": ns}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "lockstep.dev/v1alpha1", "kind": "Sync",
            "metadata": {"name": name, "namespace": ns, "generation": 1},
            "spec": {
                "source": {"url": "https://git.example/repo.git"},
                "environment": "dev",
                "dependsOn": deps
            }
        }))
        .expect("a Sync")
    }

    fn with_ready(mut s: Sync, status: &str, reason: &str, message: &str) -> Sync {
        s.status = Some(SyncStatus {
            conditions: vec![super::super::Condition {
                type_: "Ready".into(),
                status: status.into(),
                reason: reason.into(),
                message: message.into(),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::UNIX_EPOCH,
                ),
                observed_generation: Some(1),
            }],
            observed_generation: Some(1),
            last_applied_revision: Some("main@sha1:abc123".into()),
            ..SyncStatus::default()
        });
        s
    }

    fn lookup(all: Vec<Sync>) -> impl Fn(&str, &str) -> Option<Arc<Sync>> {
        move |ns: &str, name: &str| {
            all.iter()
                .find(|s| s.namespace().as_deref() == Some(ns) && s.name_any() == name)
                .cloned()
                .map(Arc::new)
        }
    }

    #[test]
    fn a_sync_waits_for_each_dependency_and_says_why() {
        let a = with_ready(
            sync("t", "a", &[]),
            "False",
            "HealthCheckFailed",
            "Deployment web: 0/1 ready",
        );
        let b = sync("t", "b", &[("a", None)]);
        let all = lookup(vec![a.clone(), b.clone()]);
        assert_eq!(
            check(&b, &all),
            Verdict::Wait("waiting for t/a (HealthCheckFailed: Deployment web: 0/1 ready)".into())
        );
        let all = lookup(vec![with_ready(a, "True", "Succeeded", ""), b.clone()]);
        assert_eq!(check(&b, &all), Verdict::Go(Vec::new()));
        let Verdict::Wait(why) = check(&sync("t", "c", &[("gone", None)]), &all) else {
            panic!("a missing dependency waits");
        };
        assert!(why.contains("t/gone, which does not exist"), "{why}");
    }

    #[test]
    fn another_namespaces_dependency_is_named_with_its_reason_only() {
        let a = with_ready(
            sync("platform", "a", &[]),
            "False",
            "ApplyFailed",
            "secret-name-of-theirs",
        );
        let b = sync("team", "b", &[("a", Some("platform"))]);
        let all = lookup(vec![a, b.clone()]);
        assert_eq!(
            check(&b, &all),
            Verdict::Wait("waiting for platform/a (ApplyFailed)".into())
        );
    }

    #[test]
    fn cycles_are_refused_with_the_cycle_named() {
        let a = sync("t", "a", &[("c", None)]);
        let b = sync("t", "b", &[("a", None)]);
        let c = sync("t", "c", &[("b", None)]);
        let all = lookup(vec![a.clone(), b, c]);
        let Verdict::Wait(why) = check(&a, &all) else {
            panic!("a cycle is refused");
        };
        assert_eq!(
            why,
            "dependency cycle: t/a → t/c → t/b → t/a; remove one of these dependsOn entries"
        );
        let own = sync("t", "self", &[("self", None)]);
        assert!(
            matches!(check(&own, &lookup(vec![own.clone()])), Verdict::Wait(w) if w.contains("t/self → t/self"))
        );
    }

    #[test]
    fn a_long_chain_or_a_wide_fan_is_walked_within_bounds() {
        // 5,000 Syncs in a chain and each naming every earlier one: the cycle search visits each
        // once and stops at MAX_DEPTH, and no stack grows with the chain.
        let mut all: Vec<Sync> = (0..5000)
            .map(|i| {
                let dep = format!("s{}", i + 1);
                sync("t", &format!("s{i}"), &[(dep.as_str(), None)])
            })
            .collect();
        all[0].spec.depends_on.extend((1..200).map(|i| Dependency {
            name: format!("s{i}"),
            namespace: None,
            revision: None,
        }));
        let first = all[0].clone();
        let started = std::time::Instant::now();
        let verdict = check(&first, &lookup(all));
        assert!(matches!(verdict, Verdict::Wait(_)), "{verdict:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn the_once_pass_reconciles_dependencies_first() {
        let c = sync("t", "c", &[("b", None)]);
        let b = sync("t", "b", &[("a", None)]);
        let a = sync("t", "a", &[]);
        let names: Vec<String> = in_order(vec![c, b, a])
            .iter()
            .map(|s| s.name_any())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        // Each of 40 naming every earlier one: 2^40 paths, each Sync's depth computed once.
        let names: Vec<String> = (0..40).map(|i| format!("s{i}")).collect();
        let layered: Vec<Sync> = (0..40)
            .rev()
            .map(|i| {
                let deps: Vec<(&str, Option<&str>)> =
                    names[..i].iter().map(|n| (n.as_str(), None)).collect();
                sync("t", &names[i], &deps)
            })
            .collect();
        let started = std::time::Instant::now();
        let ordered = in_order(layered);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(ordered[0].name_any(), "s0");
        assert_eq!(ordered[39].name_any(), "s39");
    }

    #[test]
    fn a_same_revision_pin_waits_until_the_dependency_applied_the_commit() {
        let pin = Pin {
            label: "t/a".into(),
            applied: Some("main@sha1:abc123".into()),
            near: true,
        };
        assert_eq!(pin.waiting("abc123"), None);
        let why = pin.waiting("def456").expect("waits");
        assert!(
            why.contains("t/a to apply commit def456")
                && why.contains("it applied main@sha1:abc123"),
            "{why}"
        );
    }
}
