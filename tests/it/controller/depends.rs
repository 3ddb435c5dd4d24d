//! `spec.dependsOn` with the controller loop: a chain A → B → C where B waits (its status names
//! A and A's reason) while A fails, C becomes Ready within 2 s of B (woken by the watch; their
//! intervals are an hour), a cycle is refused with the cycle named, a deleted dependency is
//! reported.

use super::*;

/// Waits up to `seconds` for `check`.
async fn within(seconds: u64, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out after {seconds}s waiting for {what}");
}

/// The controller loop for the fixture's namespace, its scratch space and log under `home`.
fn controller_loop(f: &Fixture, home: &Path) -> Running {
    spawn_loop(
        &f.controller_kubeconfig,
        &["-n", &f.sync_ns],
        free_port(),
        home,
        "loop",
        &[],
    )
}

/// The Ready condition of Sync `name`: (status, reason, message, lastTransitionTime).
async fn condition(api: &Api<DynamicObject>, name: &str) -> (String, String, String, String) {
    let Ok(sync) = api.get(name).await else {
        return Default::default();
    };
    let (status, reason, message) = ready(&sync);
    let time = sync.data["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or_default()
        .to_string();
    (status, reason, message, time)
}

fn seconds(time: &str) -> i64 {
    time.parse::<jiff::Timestamp>()
        .expect("a timestamp")
        .as_second()
}

#[tokio::test]
async fn a_chain_of_syncs_waits_says_why_and_wakes_at_once() {
    let f = need!("control plane", fixture("depends").await);
    let ns = f.sync_ns.clone();
    let cm = |name: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{x: y}}\n")
    };
    let repo_a = project_repo("a", &ns, &[("a.yaml", BROKEN)]);
    let repo_b = project_repo("b", &ns, &[("b.yaml", &cm("b"))]);
    let repo_c = project_repo("c", &ns, &[("c.yaml", &cm("c"))]);
    let api = syncs(&f.client, &ns);
    let home = tempfile::tempdir().expect("tempdir");
    let _loop = controller_loop(&f, home.path());
    create_local_sync(
        &api,
        "a",
        repo_a.path(),
        serde_json::json!({"retryInterval": "1s"}),
    )
    .await;
    let after = |dep: &str| serde_json::json!({"interval": "1h", "dependsOn": [{"name": dep}]});
    create_local_sync(&api, "b", repo_b.path(), after("a")).await;
    create_local_sync(&api, "c", repo_c.path(), after("b")).await;

    // A fails to render: B waits, naming A and its reason; C waits for B.
    within(90, "b waiting for a", async || {
        let (status, reason, message, _) = condition(&api, "b").await;
        status == "False"
            && reason == "DependencyNotReady"
            && message.starts_with(&format!("waiting for {ns}/a (RenderFailed: "))
    })
    .await;
    within(90, "c waiting for b", async || {
        let (_, reason, message, _) = condition(&api, "c").await;
        reason == "DependencyNotReady" && message.starts_with(&format!("waiting for {ns}/b ("))
    })
    .await;
    assert!(
        objects_of(&f.client, &ns, ("", "v1", "ConfigMap", "configmaps"))
            .await
            .is_empty(),
        "nothing of B or C was applied"
    );

    // A is fixed: A, then B, then C, each woken by the one before.
    std::fs::remove_file(repo_a.path().join("templates/a.yaml")).expect("rm");
    commit_template(repo_a.path(), "a2.yaml", &cm("a"));
    within(90, "c ready", async || {
        condition(&api, "c").await.0 == "True"
    })
    .await;
    let (_, _, _, b_ready) = condition(&api, "b").await;
    let (_, _, _, c_ready) = condition(&api, "c").await;
    let hop = seconds(&c_ready) - seconds(&b_ready);
    assert!(
        (0..=2).contains(&hop),
        "C Ready {hop}s after B (B {b_ready}, C {c_ready})"
    );

    // A cycle: refused with the cycle named.
    let repo_d = project_repo("d", &ns, &[("d.yaml", &cm("d"))]);
    create_local_sync(&api, "d", repo_d.path(), after("e")).await;
    create_local_sync(&api, "e", repo_d.path(), after("d")).await;
    within(90, "d refused as a cycle", async || {
        let (_, reason, message, _) = condition(&api, "d").await;
        reason == "DependencyNotReady"
            && message.contains(&format!("dependency cycle: {ns}/d → {ns}/e → {ns}/d"))
    })
    .await;

    // A deleted dependency is reported at once (B's interval is an hour).
    api.delete("a", &Default::default())
        .await
        .expect("delete a");
    within(90, "b reporting a gone", async || {
        let (_, reason, message, _) = condition(&api, "b").await;
        reason == "DependencyNotReady" && message.contains(&format!("{ns}/a, which does not exist"))
    })
    .await;
}

/// Asks for a sync of `name` now (`lockstep sync --wait=false`).
fn request(f: &Fixture, name: &str, home: &Path) {
    let out = support::run_isolated(
        Path::new(BIN),
        &[
            "sync",
            name,
            "-n",
            &f.sync_ns,
            "--wait=false",
            "--kubeconfig",
            &f.cluster.kubeconfig.to_string_lossy(),
        ],
        &[],
        home,
    );
    support::assert_success(&out);
}

#[tokio::test]
async fn revision_same_waits_until_the_dependency_applied_the_same_commit() {
    let f = need!("control plane", fixture("depends-rev").await);
    let ns = f.sync_ns.clone();
    // One repository, two environments of one project, each its own ConfigMap.
    let repo = tempfile::tempdir().expect("tempdir");
    let root = repo.path();
    let write = |rel: &str, text: &str| {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    };
    write(
        "lockstep.yaml",
        &format!(
            "project: layers\nenvironments:\n  platform: {{namespace: {ns}}}\n  team: {{namespace: {ns}}}\n"
        ),
    );
    write("environments/platform/values.yaml", "name: platform\n");
    write("environments/team/values.yaml", "name: team\n");
    write(
        "templates/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: \"{{ values.name }}\"}\ndata: {version: \"1\"}\n",
    );
    commit_all(root, "one");
    let first = head(root);
    let api = syncs(&f.client, &ns);
    let home = tempfile::tempdir().expect("tempdir");
    let _loop = controller_loop(&f, home.path());
    let url = format!("file://{}", root.display());
    create_sync(
        &api,
        "platform",
        serde_json::json!({"source": {"url": url}, "environment": "platform", "interval": "1h"}),
    )
    .await;
    create_sync(
        &api,
        "team",
        serde_json::json!({"source": {"url": url}, "environment": "team", "interval": "1h",
            "dependsOn": [{"name": "platform", "revision": "same"}]}),
    )
    .await;
    within(90, "team at the first commit", async || {
        api.get("team")
            .await
            .is_ok_and(|s| s.data["status"]["lastAppliedRevision"] == first.as_str())
    })
    .await;

    // A new commit, seen by team first: it waits until platform has applied that commit too.
    write(
        "templates/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: \"{{ values.name }}\"}\ndata: {version: \"2\"}\n",
    );
    commit_all(root, "two");
    let second = head(root);
    request(&f, "team", home.path());
    within(90, "team waiting for platform's commit", async || {
        let (_, reason, message, _) = condition(&api, "team").await;
        reason == "DependencyNotReady"
            && message.contains(&format!(
                "waiting for {ns}/platform to apply commit {second}"
            ))
    })
    .await;
    request(&f, "platform", home.path());
    within(90, "team at the second commit", async || {
        api.get("team")
            .await
            .is_ok_and(|s| s.data["status"]["lastAppliedRevision"] == second.as_str())
    })
    .await;
}
