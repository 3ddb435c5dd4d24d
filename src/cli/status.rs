//! `lockstep status` and `lockstep history`. Status: the Syncs at a glance (Ready and why, revision, last sync, objects, not
//! ready, drift), or one Sync in full: its objects as a tree with live health and last change,
//! the last error, the dependency it waits on. As a table on a terminal (coloured, like kubectl),
//! or `-o json|yaml`. History: a Sync's last syncs, as the controller keeps them.

use std::io::{IsTerminal, Write};

use clap::{Args, ValueEnum};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::{Value as Json, json};

use crate::apply::observe::{self, Observed};
use crate::controller::history::{self, Entry};
use crate::controller::{Condition, Sync};

use super::apply::ClusterArgs;
use super::exit::{Code, Failure};

/// How `status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns (coloured on a terminal, unless `NO_COLOR` is set).
    Table,
    /// One JSON document.
    Json,
    /// One YAML document.
    Yaml,
}

/// Arguments of `lockstep status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// One Sync to show in full (default: list the Syncs).
    pub name: Option<String>,
    /// The namespace (default: the kubeconfig context's namespace, else `default`).
    #[arg(long, short = 'n', conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// Syncs of every namespace.
    #[arg(long, short = 'A', conflicts_with = "name")]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// The cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// A Sync's `Ready` condition.
fn ready(sync: &Sync) -> Option<&Condition> {
    sync.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
}

fn short(rev: Option<&String>) -> String {
    rev.map_or_else(|| "-".into(), |r| r.chars().take(7).collect())
}

/// How long ago `at` was, as kubectl writes ages (`45s`, `12m`, `3h`, `5d`).
fn age(at: Option<jiff::Timestamp>, now: jiff::Timestamp) -> String {
    let Some(at) = at else {
        return "-".into();
    };
    let secs = now.as_second().saturating_sub(at.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn timestamp(text: &str) -> Option<jiff::Timestamp> {
    text.parse().ok()
}

fn synced_at(sync: &Sync) -> Option<jiff::Timestamp> {
    sync.status.as_ref()?.last_synced_at.as_ref().map(|t| t.0)
}

/// One row of the list, as JSON (also what `-o json` prints per Sync).
fn summary(sync: &Sync) -> Json {
    let status = sync.status.clone().unwrap_or_default();
    let ready = ready(sync);
    json!({
        "namespace": sync.namespace().unwrap_or_default(),
        "name": sync.name_any(),
        "environment": sync.spec.environment,
        "ready": ready.map(|c| c.status.as_str()),
        "reason": ready.map(|c| c.reason.as_str()),
        "message": ready.map(|c| c.message.as_str()),
        "suspended": sync.spec.suspend.unwrap_or(false),
        "revision": status.last_applied_revision,
        "lastAttemptedRevision": status.last_attempted_revision,
        "lastSyncedAt": status.last_synced_at.map(|t| t.0.to_string()),
        "lastSyncDuration": status.last_sync_duration,
        "objects": status.objects,
        "notReady": status.not_ready,
        "drifted": status.drifted,
        "inventory": status.inventory,
    })
}

/// Colours for a terminal (none when the output is not one, or `NO_COLOR` is set).
struct Paint(bool);

impl Paint {
    fn stdout() -> Paint {
        Paint(std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none())
    }

    /// `text` padded to `width`, coloured by what it says.
    fn cell(&self, text: &str, width: usize) -> String {
        let padded = format!("{text:<width$}");
        if !self.0 {
            return padded;
        }
        let colour = match text {
            "True" | "Ready" | "Exists" | "Succeeded" => "32",
            "False" | "Failed" | "Missing" => "31",
            "Unknown" | "Progressing" | "-" => "33",
            _ => return padded,
        };
        format!("\x1b[{colour}m{padded}\x1b[0m")
    }
}

/// Aligned columns; cells of `coloured` columns go through [`Paint::cell`].
fn table(rows: &[Vec<String>], coloured: &[usize], paint: &Paint) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, text)| {
                let width = if c + 1 == columns { 0 } else { widths[c] };
                if i > 0 && coloured.contains(&c) {
                    paint.cell(text, width)
                } else {
                    format!("{text:<width$}")
                }
            })
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

fn list_table(syncs: &[Sync], all: bool, now: jiff::Timestamp) -> String {
    let mut rows = vec![
        [
            "NAMESPACE",
            "NAME",
            "READY",
            "REASON",
            "REVISION",
            "LAST SYNC",
            "OBJECTS",
            "NOT READY",
            "DRIFT",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for s in syncs {
        let status = s.status.clone().unwrap_or_default();
        let ready = ready(s);
        let number = |n: Option<i64>| n.map_or_else(|| "-".into(), |n| n.to_string());
        let reason = match (s.spec.suspend, ready) {
            (Some(true), _) => "Suspended".to_string(),
            (_, Some(c)) => c.reason.clone(),
            (_, None) => "-".into(),
        };
        rows.push(vec![
            s.namespace().unwrap_or_default(),
            s.name_any(),
            ready.map_or_else(|| "Unknown".into(), |c| c.status.clone()),
            reason,
            short(status.last_applied_revision.as_ref()),
            age(synced_at(s), now),
            number(status.objects),
            number(status.not_ready),
            number(status.drifted),
        ]);
    }
    if !all {
        rows.iter_mut().for_each(|r| {
            r.remove(0);
        });
        return table(&rows, &[1], &Paint::stdout());
    }
    table(&rows, &[2], &Paint::stdout())
}

/// The objects as a tree: cluster-scoped ones, then each namespace's.
fn object_tree(objects: &[Observed], now: jiff::Timestamp, paint: &Paint) -> String {
    let mut groups: std::collections::BTreeMap<String, Vec<&Observed>> = Default::default();
    for o in objects {
        let key =
            o.id.namespace
                .clone()
                .map_or_else(|| "(cluster)".to_string(), |ns| format!("namespace {ns}"));
        groups.entry(key).or_default().push(o);
    }
    let mut rows = vec![
        ["OBJECT", "HEALTH", "CHANGED", "WHY"]
            .map(String::from)
            .to_vec(),
    ];
    let mut headers = Vec::new();
    for (group, members) in &groups {
        headers.push(rows.len());
        rows.push(vec![
            group.clone(),
            String::new(),
            String::new(),
            String::new(),
        ]);
        for (i, o) in members.iter().enumerate() {
            let branch = if i + 1 == members.len() {
                "└─"
            } else {
                "├─"
            };
            let kind = if o.id.group.is_empty() {
                o.id.kind.clone()
            } else {
                format!("{}.{}", o.id.kind, o.id.group)
            };
            rows.push(vec![
                format!("{branch} {kind}/{}", o.id.name),
                o.state.word().to_string(),
                age(o.changed_at.as_deref().and_then(timestamp), now),
                o.state.why().unwrap_or_default().to_string(),
            ]);
        }
    }
    let text = table(&rows, &[1], paint);
    // Group headers carry no health: drop the padding the empty cells left.
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            if headers.contains(&i) {
                l.trim_end()
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn one_text(sync: &Sync, objects: Option<&[Observed]>, now: jiff::Timestamp) -> String {
    let paint = Paint::stdout();
    let status = sync.status.clone().unwrap_or_default();
    let ready = ready(sync);
    let mut out = format!(
        "Sync {}/{}: {} ({})\n",
        sync.namespace().unwrap_or_default(),
        sync.name_any(),
        paint.cell(
            match ready.map(|c| c.status.as_str()) {
                Some("True") => "Ready",
                Some("False") => "Failed",
                _ => "Unknown",
            },
            0
        ),
        ready.map_or("not synced yet", |c| c.reason.as_str()),
    );
    let source = &sync.spec.source;
    let line = |out: &mut String, label: &str, value: String| {
        out.push_str(&format!("  {label:<12}{value}\n"));
    };
    line(
        &mut out,
        "source:",
        format!(
            "{}{}, environment {}",
            crate::source::git::redact(&source.url),
            source
                .path
                .as_ref()
                .map_or(String::new(), |p| format!(" ({p})")),
            sync.spec.environment
        ),
    );
    let attempted = match (
        &status.last_attempted_revision,
        &status.last_applied_revision,
    ) {
        (Some(a), Some(b)) if a != b => format!(" (last tried {})", short(Some(a))),
        (Some(a), None) => format!(" (last tried {})", short(Some(a))),
        _ => String::new(),
    };
    line(
        &mut out,
        "revision:",
        format!(
            "{}{attempted}",
            short(status.last_applied_revision.as_ref())
        ),
    );
    if let Some(r) = &status.rollback {
        let by = r
            .requested_by
            .as_deref()
            .map_or(String::new(), |b| format!(" by {b}"));
        let what = match r.state {
            crate::controller::rollback::RollbackState::Pinned => "pinned",
            crate::controller::rollback::RollbackState::Refused => "refused",
            crate::controller::rollback::RollbackState::Ended => "ended",
            crate::controller::rollback::RollbackState::Cleared => "cleared",
        };
        line(
            &mut out,
            "rollback:",
            format!(
                "{what}: to {} from {}{by} at {}",
                short(Some(&r.revision)),
                short(Some(&r.from)),
                r.requested_at
            ),
        );
    }
    line(
        &mut out,
        "last sync:",
        format!(
            "{} ago{}",
            age(synced_at(sync), now),
            status
                .last_sync_duration
                .as_ref()
                .map_or(String::new(), |d| format!(", took {d}"))
        ),
    );
    line(
        &mut out,
        "objects:",
        format!(
            "{} ({} not ready, {} drifted)",
            status.objects.unwrap_or(0),
            status.not_ready.unwrap_or(0),
            status.drifted.unwrap_or(0)
        ),
    );
    if sync.spec.suspend == Some(true) {
        line(&mut out, "suspended:", "yes: nothing is synced".into());
    }
    if let Some(c) = ready {
        if c.reason == "DependencyNotReady" {
            line(&mut out, "waits on:", c.message.clone());
        } else if c.status != "True" {
            line(&mut out, "last error:", c.message.clone());
        } else {
            line(&mut out, "message:", c.message.clone());
        }
    }
    for kept in &status.kept {
        line(&mut out, "kept:", kept.clone());
    }
    match objects {
        Some(objects) if !objects.is_empty() => {
            out.push('\n');
            out.push_str(&object_tree(objects, now, &paint));
        }
        Some(_) => out.push_str("\n  (its inventory lists no objects)\n"),
        None => out.push_str("\n  (no inventory yet: nothing was applied)\n"),
    }
    out
}

fn one_json(sync: &Sync, objects: Option<&[Observed]>) -> Json {
    let mut v = summary(sync);
    v["kept"] = json!(
        sync.status
            .as_ref()
            .map(|s| s.kept.clone())
            .unwrap_or_default()
    );
    v["objectsLive"] = match objects {
        None => Json::Null,
        Some(list) => list
            .iter()
            .map(|o| {
                json!({
                    "apiVersion": o.api_version,
                    "kind": o.id.kind,
                    "namespace": o.id.namespace,
                    "name": o.id.name,
                    "health": o.state.word(),
                    "why": o.state.why(),
                    "changedAt": o.changed_at,
                })
            })
            .collect(),
    };
    v
}

fn print(out: &mut dyn Write, format: Format, value: &Json) -> Result<(), Failure> {
    let text = match format {
        Format::Json => serde_json::to_string_pretty(value).unwrap_or_default() + "\n",
        _ => yaml_serde::to_string(value).unwrap_or_default(),
    };
    out.write_all(text.as_bytes())
        .map_err(|e| Failure::new(Code::ERROR, format!("writing output: {e}")))
}

/// Runs `lockstep status`.
pub fn run(args: &StatusArgs, stdout: &mut dyn Write) -> Result<(), Failure> {
    super::apply::with_cluster(
        &args.cluster,
        args.namespace.as_deref(),
        async |client, namespace| {
            let now = jiff::Timestamp::now();
            let api: Api<Sync> = if args.all_namespaces {
                Api::all(client.clone())
            } else {
                Api::namespaced(client.clone(), &namespace)
            };
            let fail = |what: String, e: kube::Error| {
                let hint = match &e {
                    kube::Error::Api(s) if s.code == 404 => {
                        "; is lockstep's CRD installed? (`lockstep install --apply`)"
                    }
                    kube::Error::Api(s) if s.code == 403 => "; your user may not read Syncs there",
                    _ => "",
                };
                Failure::new(
                    Code::ERROR,
                    format!("{what}: {}{hint}", crate::apply::reason(&e)),
                )
            };
            let Some(name) = &args.name else {
                let mut syncs = api
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| fail("listing Syncs".into(), e))?
                    .items;
                syncs.sort_by_key(|s| (s.namespace(), s.name_any()));
                return match args.output {
                    Format::Table if syncs.is_empty() => {
                        let _ = writeln!(stdout, "no Syncs in namespace {namespace}");
                        Ok(())
                    }
                    Format::Table => stdout
                        .write_all(list_table(&syncs, args.all_namespaces, now).as_bytes())
                        .map_err(|e| Failure::new(Code::ERROR, format!("writing output: {e}"))),
                    f => print(stdout, f, &syncs.iter().map(summary).collect()),
                };
            };
            let sync = api
            .get_opt(name)
            .await
            .map_err(|e| fail(format!("Sync {namespace}/{name}"), e))?
            .ok_or_else(|| {
                Failure::new(
                    Code::ERROR,
                    format!(
                        "no Sync {namespace}/{name} (`lockstep status -n {namespace}` lists them)"
                    ),
                )
            })?;
            let objects = match sync.status.as_ref().and_then(|s| s.inventory.as_ref()) {
                Some(inventory) => {
                    let (ns, cm) = inventory.split_once('/').unwrap_or((&namespace, inventory));
                    observe::environment(&client, ns, cm)
                        .await
                        .map_err(|e| {
                            Failure::new(Code::ERROR, format!("reading inventory {inventory}: {e}"))
                        })?
                        .map(|(_, objects)| objects)
                }
                None => None,
            };
            match args.output {
                Format::Table => stdout
                    .write_all(one_text(&sync, objects.as_deref(), now).as_bytes())
                    .map_err(|e| Failure::new(Code::ERROR, format!("writing output: {e}"))),
                f => print(stdout, f, &one_json(&sync, objects.as_deref())),
            }
        },
    )
}

/// Arguments of `lockstep history`.
#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// The Sync.
    pub name: String,
    /// Its namespace (default: the kubeconfig context's namespace, else `default`).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Entries to show, newest first (the controller keeps up to its `--history`).
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// The cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

fn history_table(entries: &[Entry], now: jiff::Timestamp) -> String {
    let mut rows = vec![
        [
            "WHEN", "REVISION", "SUBJECT", "TRIGGER", "RESULT", "DURATION", "CHANGED", "RENDER",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for e in entries {
        let subject: String = e.subject.clone().unwrap_or_default();
        let subject = if subject.chars().count() > 48 {
            format!("{}…", subject.chars().take(47).collect::<String>())
        } else {
            subject
        };
        rows.push(vec![
            format!("{} ago", age(timestamp(&e.at), now)),
            short(e.revision.as_ref()),
            if subject.is_empty() {
                "-".into()
            } else {
                subject
            },
            e.trigger.clone(),
            e.result.clone(),
            e.duration.clone(),
            e.changed.to_string(),
            e.render_digest.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    table(&rows, &[4], &Paint::stdout())
}

/// The Sync `namespace/name`, or a failure saying how to find the Syncs there.
pub(super) async fn sync_named(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Sync, Failure> {
    let syncs: Api<Sync> = Api::namespaced(client.clone(), namespace);
    match syncs.get_opt(name).await {
        Ok(Some(sync)) => Ok(sync),
        Ok(None) => Err(Failure::new(
            Code::ERROR,
            format!("no Sync {namespace}/{name} (`lockstep status -n {namespace}` lists them)"),
        )),
        Err(e) => Err(super::controller::sync_failure(namespace, name, &e)),
    }
}

/// Runs `lockstep history`.
pub fn run_history(args: &HistoryArgs, stdout: &mut dyn Write) -> Result<(), Failure> {
    super::apply::with_cluster(
        &args.cluster,
        args.namespace.as_deref(),
        async |client, namespace| {
            let name = &args.name;
            sync_named(&client, &namespace, name).await?;
            let mut entries = history::read(&client, &namespace, name)
                .await
                .map_err(|e| {
                    let hint = match &e {
                        kube::Error::Api(s) if s.code == 403 => {
                            " (reading history needs `get` on synchistories.lockstep.dev)"
                        }
                        kube::Error::Api(s) if s.code == 404 => {
                            " (the SyncHistory CRD is not installed: `lockstep install --apply`)"
                        }
                        _ => "",
                    };
                    Failure::new(
                        Code::ERROR,
                        format!(
                            "history of Sync {namespace}/{name}: {}{hint}",
                            crate::apply::reason(&e)
                        ),
                    )
                })?;
            entries.truncate(args.limit);
            match args.output {
                Format::Table if entries.is_empty() => {
                    let _ = writeln!(stdout, "no syncs recorded for {namespace}/{name} yet");
                    Ok(())
                }
                Format::Table => stdout
                    .write_all(history_table(&entries, jiff::Timestamp::now()).as_bytes())
                    .map_err(|e| Failure::new(Code::ERROR, format!("writing output: {e}"))),
                f => print(
                    stdout,
                    f,
                    &serde_json::to_value(&entries).unwrap_or(Json::Null),
                ),
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        let now: jiff::Timestamp = "2026-12-03T12:00:00Z".parse().expect("time");
        let ago = |s: i64| Some(jiff::Timestamp::from_second(now.as_second() - s).expect("t"));
        assert_eq!(age(ago(5), now), "5s");
        assert_eq!(age(ago(600), now), "10m");
        assert_eq!(age(ago(3 * 3600), now), "3h");
        assert_eq!(age(ago(9 * 86_400), now), "9d");
        assert_eq!(age(None, now), "-");
    }

    #[test]
    fn columns_align_and_colour_only_on_request() {
        let rows = vec![
            vec!["NAME".to_string(), "READY".into(), "WHY".into()],
            vec!["a-long-name".into(), "True".into(), "x".into()],
            vec!["b".into(), "False".into(), "y".into()],
        ];
        let plain = table(&rows, &[1], &Paint(false));
        assert_eq!(
            plain,
            "NAME          READY   WHY\na-long-name   True    x\nb             False   y\n"
        );
        let coloured = table(&rows, &[1], &Paint(true));
        assert!(coloured.contains("\x1b[31mFalse"), "{coloured:?}");
        assert!(!coloured.lines().next().unwrap_or_default().contains('\x1b'));
    }
}
