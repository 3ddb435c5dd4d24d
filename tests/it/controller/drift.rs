//! Objects changed by hand are corrected within one interval.

use super::*;

#[tokio::test]
async fn the_loop_corrects_a_hand_edit_within_one_interval() {
    let Fixture {
        cluster,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("drift").await);
    let target = cluster.namespace(&client, "drift-apps").await;
    let repo = tiny_repo(&target);
    let home = tempfile::tempdir().expect("tempdir");
    let api = syncs(&client, &sync_ns);
    create_local_sync(
        &api,
        "tiny",
        repo.path(),
        serde_json::json!({"interval": "3s"}),
    )
    .await;
    let port = free_port();
    let _controller = spawn_loop(
        &controller_kubeconfig,
        &["-n", &sync_ns],
        port,
        home.path(),
        "controller",
        &["--poll", "1s"],
    );
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), &target);
    let mode = async || {
        config_maps
            .get_opt("settings")
            .await
            .ok()
            .flatten()
            .and_then(|c| c.data)
            .and_then(|d| d.get("mode").cloned())
    };
    wait_for("the first sync", async || {
        mode().await.as_deref() == Some("one")
    })
    .await;
    config_maps
        .patch(
            "settings",
            &PatchParams::apply("kubectl-edit").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
                "data": {"mode": "by hand"}
            })),
        )
        .await
        .expect("hand edit");
    assert_eq!(mode().await.as_deref(), Some("by hand"));
    let edited = std::time::Instant::now();
    wait_for("the correction", async || {
        mode().await.as_deref() == Some("one")
    })
    .await;
    assert!(
        edited.elapsed() < std::time::Duration::from_millis(3300 + 1000 + 1500),
        "corrected after {:?}: more than one interval (3 s ± 10 %) plus a poll",
        edited.elapsed()
    );
    // Counted once the sync that corrected it has finished.
    wait_for("the correction to be counted", async || {
        metric(port, "lockstep_drift_corrections_total") >= 1.0
    })
    .await;
}
