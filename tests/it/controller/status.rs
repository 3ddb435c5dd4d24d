//! `lockstep status` against Syncs the controller synced: the list (Ready and why, revision,
//! objects, not ready, drift), one Sync's objects as a tree with live health, the last error in
//! full, and `-o json`.

use super::*;

/// `lockstep status ARGS` as the admin of `kubeconfig`: (success, stdout, stderr).
fn status(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["status"];
    all.extend_from_slice(args);
    cli_as(kubeconfig, &all)
}

#[tokio::test]
async fn status_lists_syncs_and_shows_one_as_a_tree_with_live_health() {
    let Fixture {
        cluster,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("status").await);
    let target = cluster.namespace(&client, "status-apps").await;
    let good = project_repo(
        "good",
        &target,
        &[
            (
                "settings.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: one}\n",
            ),
            (
                "web.yaml",
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: web, image: nginx:1.27}]\n",
            ),
        ],
    );
    let broken = project_repo(
        "broken",
        &target,
        &[(
            "bad.yaml",
            "kind: ConfigMap\nmetadata: {name: {{ values.nope }}}\n",
        )],
    );
    let api = syncs(&client, &sync_ns);
    create_local_sync(&api, "good", good.path(), serde_json::json!({"wait": true})).await;
    create_local_sync(&api, "broken", broken.path(), serde_json::json!({})).await;
    let home = tempfile::tempdir().expect("tempdir");
    // One pass of the loop: `good` applies, `broken` fails its render (the pass exits 1).
    let out = controller(
        &controller_kubeconfig,
        &sync_ns,
        &home.path().join("cache"),
        home.path(),
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    let revision = head(good.path());

    let admin = &cluster.kubeconfig;
    let (ok, list, err) = status(admin, &["-n", &sync_ns]);
    assert!(ok, "{err}");
    let header = list.lines().next().unwrap_or_default();
    for column in [
        "NAME",
        "READY",
        "REASON",
        "REVISION",
        "LAST SYNC",
        "OBJECTS",
        "NOT READY",
        "DRIFT",
    ] {
        assert!(header.contains(column), "{list}");
    }
    let row = |name: &str| {
        list.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{list}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let good_row = row("good");
    assert_eq!(
        good_row[1..4],
        ["True", "Succeeded", &revision[..7]],
        "{list}"
    );
    assert_eq!(
        good_row[5..],
        ["2", "0", "0"],
        "objects, not ready, drift: {list}"
    );
    let broken_row = row("broken");
    assert_eq!(broken_row[1..3], ["False", "RenderFailed"], "{list}");

    // One Sync: its objects as a tree, with live health.
    let (ok, one, err) = status(admin, &["-n", &sync_ns, "good"]);
    assert!(ok, "{err}");
    for needle in [
        format!("Sync {sync_ns}/good: Ready (Succeeded)"),
        format!("revision:   {}", &revision[..7]),
        format!("namespace {target}"),
        "ConfigMap/settings".into(),
        "Deployment.apps/web".into(),
        "objects:    2 (0 not ready, 0 drifted)".into(),
    ] {
        assert!(one.contains(&needle), "missing {needle:?} in:\n{one}");
    }
    let health_of = |name: &str| {
        one.lines()
            .find(|l| l.contains(name))
            .and_then(|l| l.split_whitespace().nth(2))
            .map(str::to_string)
    };
    assert_eq!(
        health_of("Deployment.apps/web").as_deref(),
        Some("Ready"),
        "{one}"
    );
    assert_eq!(
        health_of("ConfigMap/settings").as_deref(),
        Some("Exists"),
        "{one}"
    );

    // Deleted by hand: the tree says so.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &target);
    cms.delete("settings", &Default::default())
        .await
        .expect("delete");
    let (_, one, _) = status(admin, &["-n", &sync_ns, "good"]);
    assert_eq!(
        one.lines()
            .find(|l| l.contains("ConfigMap/settings"))
            .and_then(|l| l.split_whitespace().nth(2)),
        Some("Missing"),
        "{one}"
    );

    // The failing one: its last error in full, naming the template.
    let (ok, one, err) = status(admin, &["-n", &sync_ns, "broken"]);
    assert!(ok, "{err}");
    assert!(one.contains("Failed (RenderFailed)"), "{one}");
    assert!(
        one.contains("last error:") && one.contains("templates/bad.yaml"),
        "{one}"
    );
    assert!(one.contains("no inventory yet"), "{one}");

    // JSON, for scripts.
    let (ok, json, err) = status(admin, &["-n", &sync_ns, "-o", "json", "good"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["ready"], "True");
    assert_eq!(v["revision"], revision.as_str());
    assert_eq!(v["objects"], 2);
    let live = v["objectsLive"].as_array().expect("objects");
    assert!(
        live.iter()
            .any(|o| o["kind"] == "Deployment" && o["health"] == "Ready"),
        "{json}"
    );
    let (ok, all, _) = status(admin, &["-A", "-o", "json"]);
    assert!(ok);
    let all: serde_json::Value = serde_json::from_str(&all).expect("json");
    assert!(
        all.as_array()
            .expect("list")
            .iter()
            .filter(|s| s["namespace"] == sync_ns.as_str())
            .count()
            == 2
    );
    // A Sync that does not exist: a clear error.
    let (ok, _, err) = status(admin, &["-n", &sync_ns, "nope"]);
    assert!(
        !ok && err.contains(&format!("no Sync {sync_ns}/nope")),
        "{err}"
    );
}

fn history(kubeconfig: &Path, ns: &str, name: &str) -> Vec<serde_json::Value> {
    let (ok, out, err) = cli_as(kubeconfig, &["history", "-n", ns, "-o", "json", name]);
    assert!(ok, "{err}");
    serde_json::from_str::<Vec<serde_json::Value>>(&out).expect("json")
}

#[tokio::test]
async fn history_keeps_the_syncs_that_did_something_newest_first_and_bounded() {
    let Fixture {
        cluster,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("history").await);
    let target = cluster.namespace(&client, "history-apps").await;
    let repo = tiny_repo(&target);
    let api = syncs(&client, &sync_ns);
    create_local_sync(&api, "tiny", repo.path(), serde_json::json!({})).await;
    // Each pass is a new controller process: history lives in the cluster, not in its memory.
    let pass = |keep: &str| {
        let home = tempfile::tempdir().expect("tempdir");
        let out = controller_with(
            &controller_kubeconfig,
            &sync_ns,
            &home.path().join("cache"),
            home.path(),
            &["--allow-local-sources", "--history", keep],
            &[],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    pass("3");
    let admin = &cluster.kubeconfig;
    let first = head(repo.path());
    let entries = history(admin, &sync_ns, "tiny");
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert_eq!(entries[0]["revision"], first.as_str());
    assert_eq!(entries[0]["subject"], "tiny");
    assert_eq!(entries[0]["trigger"], "new");
    assert_eq!(entries[0]["result"], "Succeeded");
    assert_eq!(entries[0]["changed"], 1);
    let digest = entries[0]["renderDigest"]
        .as_str()
        .expect("digest")
        .to_string();
    assert_eq!(digest.len(), 12);

    // Nothing new: no entry.
    pass("3");
    assert_eq!(history(admin, &sync_ns, "tiny").len(), 1);

    // Three commits: newest first, only three kept.
    for mode in ["two", "three", "four"] {
        commit_template(
            repo.path(),
            "settings.yaml",
            &format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {{mode: {mode}}}\n"
            ),
        );
        pass("3");
    }
    let entries = history(admin, &sync_ns, "tiny");
    assert_eq!(entries.len(), 3, "{entries:#?}");
    assert_eq!(entries[0]["revision"], head(repo.path()).as_str());
    assert_ne!(entries[0]["renderDigest"], digest.as_str());
    assert!(
        entries.iter().all(|e| e["revision"] != first.as_str()),
        "{entries:#?}"
    );

    // The table, for people.
    let (ok, table, err) = cli_as(admin, &["history", "-n", &sync_ns, "tiny"]);
    assert!(ok, "{err}");
    let header = table.lines().next().unwrap_or_default();
    for column in [
        "WHEN", "REVISION", "SUBJECT", "TRIGGER", "RESULT", "DURATION", "CHANGED",
    ] {
        assert!(header.contains(column), "{table}");
    }
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(table.contains("Succeeded"), "{table}");

    // Owned by the Sync: deleting it deletes its history (the garbage collector's work).
    let histories: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &sync_ns,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("lockstep.dev", "v1alpha1", "SyncHistory"),
            "synchistories",
        ),
    );
    let owners = histories
        .get("tiny")
        .await
        .expect("history")
        .metadata
        .owner_references;
    assert_eq!(owners.expect("owned")[0].kind, "Sync");
}
