//! One slow or broken Sync never holds back another.

use super::*;

#[tokio::test]
async fn one_slow_or_broken_sync_never_holds_back_another() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let creds = tempfile::tempdir().expect("tempdir");
    let controller_kubeconfig = install_controller(&cluster, &client, creds.path()).await;
    let shard = format!("isolation-{}", std::process::id());
    let label = serde_json::json!({"lockstep.dev/test-shard": shard});
    let home = tempfile::tempdir().expect("tempdir");

    // Sync A: waits (up to 10 minutes) for a claim that never binds.
    let ns_a = cluster.namespace(&client, "slow").await;
    let target_a = cluster.namespace(&client, "slow-target").await;
    let repo_a = unbindable_repo(&target_a);
    let api_a = syncs(&client, &ns_a);
    let sync = |name: &str, repo: &Path, extra: serde_json::Value| {
        let mut spec = serde_json::json!({
            "source": {"url": format!("file://{}", repo.display())},
            "environment": "dev",
            "interval": "1h",
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        serde_json::json!({
            "apiVersion": "lockstep.dev/v1alpha1", "kind": "Sync",
            "metadata": {"name": name, "labels": label.clone()},
            "spec": spec
        })
    };
    apply_json(
        &api_a,
        sync(
            "slow",
            repo_a.path(),
            serde_json::json!({"wait": true, "timeout": "10m"}),
        ),
    )
    .await;
    let port = free_port();
    let _controller = spawn_loop(
        &controller_kubeconfig,
        &[
            "--watch-label-selector",
            &format!("lockstep.dev/test-shard={shard}"),
        ],
        port,
        home.path(),
        "controller",
        &[],
    );
    // A is applied and now waits for health.
    let claims: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &target_a,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("", "v1", "PersistentVolumeClaim"),
            "persistentvolumeclaims",
        ),
    );
    wait_for("A's claim to be applied", async || {
        claims.get_opt("data").await.is_ok_and(|c| c.is_some())
    })
    .await;

    // Sync B, in another namespace, created while A waits: Ready within 30 s.
    let ns_b = cluster.namespace(&client, "quick").await;
    let target_b = cluster.namespace(&client, "quick-target").await;
    let repo_b = tiny_repo(&target_b);
    let api_b = syncs(&client, &ns_b);
    put_secret(&client, &ns_b, "hook", "token", "quick-s3cret-of-b-tenant").await;
    let started = std::time::Instant::now();
    apply_json(
        &api_b,
        sync(
            "quick",
            repo_b.path(),
            serde_json::json!({"webhook": {"secretRef": {"name": "hook"}}}),
        ),
    )
    .await;
    let first = head(repo_b.path());
    wait_applied(&api_b, "quick", &first, "B's first sync").await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "B became Ready after {:?}",
        started.elapsed()
    );

    // A webhook for B during A's wait syncs B's new commit within 10 s.
    let second = commit_settings(repo_b.path(), "two");
    let started = std::time::Instant::now();
    send_hook(port, &ns_b, "quick", "quick-s3cret-of-b-tenant");
    wait_applied(&api_b, "quick", &second, "B's webhook sync").await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "B synced {:?} after its webhook",
        started.elapsed()
    );
    let slow = api_a.get("slow").await.expect("get A").data["status"].clone();
    assert!(
        slow["conditions"].as_array().is_some_and(|cs| cs
            .iter()
            .any(|c| c["type"] == "Reconciling" && c["status"] == "True")),
        "A is still waiting: {slow}"
    );

    // Templates that would exhaust memory or panic a helper, in A's namespace: each ends its own
    // reconcile with RenderFailed; the process keeps running and B keeps syncing.
    for (name, expression) in [
        ("hungry", "'x' | indent(100000000000)"),
        ("overflow", "'x' | indent(18446744073709551615)"),
        ("lazy", "([range(10000)] * 100000000) | tojson"),
        ("printed", "[range(10000)] * 100000000"),
        // Built by minijinja itself: stopped by the render probe's memory limit.
        ("concat", "'a' ~ ([range(10000)] * 100000000)"),
        (
            "endless",
            "range(100000) | map('string') | join('x' * 10000)",
        ),
    ] {
        let template = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata:\n  text: |\n{{{{ {expression} }}}}\n"
        );
        let repo = project_repo(name, &target_a, &[("settings.yaml", &template)]);
        apply_json(&api_a, sync(name, repo.path(), serde_json::json!({}))).await;
        wait_for(&format!("{name} to fail"), async || {
            api_a.get(name).await.is_ok_and(|s| {
                s.data["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["reason"] == "RenderFailed")
                })
            })
        })
        .await;
        // The repository's temporary directory goes with `repo`: the Sync has done its work.
    }
    assert_eq!(
        http(port, "GET", "/healthz", &[], b"").0,
        200,
        "the controller runs"
    );
    let third = commit_settings(repo_b.path(), "three");
    send_hook(port, &ns_b, "quick", "quick-s3cret-of-b-tenant");
    wait_applied(
        &api_b,
        "quick",
        &third,
        "B's sync after the broken templates",
    )
    .await;
}

/// A Sync asking to wait 30 days for health holds its slot only as long as the controller's
/// --max-timeout allows.
#[tokio::test]
async fn no_sync_holds_a_slot_longer_than_the_controllers_max_timeout() {
    let Fixture {
        cluster,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("max-timeout").await);
    let target = cluster.namespace(&client, "max-timeout-apps").await;
    let repo = unbindable_repo(&target);
    let home = tempfile::tempdir().expect("tempdir");
    let api = syncs(&client, &sync_ns);
    create_local_sync(
        &api,
        "patient",
        repo.path(),
        serde_json::json!({"wait": true, "timeout": "720h"}),
    )
    .await;
    let started = std::time::Instant::now();
    let out = controller_with(
        &controller_kubeconfig,
        &sync_ns,
        &home.path().join("git-cache"),
        home.path(),
        &["--allow-local-sources", "--max-timeout", "3s"],
        &[],
    );
    let message = failed_with(&out, &api, "patient", "HealthCheckFailed").await;
    assert!(message.contains("3s"), "{message}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}
