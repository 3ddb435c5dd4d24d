//! What a Sync prunes: a protected object that left Git is kept and listed in the status, and is
//! deleted once the Sync consents (`pruneProtected`).

use super::*;

#[tokio::test]
async fn a_protected_object_that_left_git_is_listed_as_kept_until_the_sync_consents() {
    let Fixture {
        cluster,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("prune").await);
    let target = cluster.namespace(&client, "prune-apps").await;
    let repo = unbindable_repo(&target);
    std::fs::write(
        repo.path().join("templates/settings.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: one}\n",
    )
    .expect("write");
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "settings"]);
    let home = tempfile::tempdir().expect("tempdir");
    let cache = home.path().join("git-cache");
    let api = syncs(&client, &sync_ns);
    create_local_sync(&api, "slow", repo.path(), serde_json::json!({})).await;
    support::assert_success(&controller(
        &controller_kubeconfig,
        &sync_ns,
        &cache,
        home.path(),
    ));
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(client.clone(), &target);
    assert!(claims.get_opt("data").await.expect("get").is_some());

    // The claim leaves Git: kept (a protected kind), and the status says so and why.
    std::fs::remove_file(repo.path().join("templates/data.yaml")).expect("rm");
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "no claim"]);
    support::assert_success(&controller(
        &controller_kubeconfig,
        &sync_ns,
        &cache,
        home.path(),
    ));
    assert!(claims.get_opt("data").await.expect("get").is_some(), "kept");
    let sync = api.get("slow").await.expect("get");
    let kept = &sync.data["status"]["kept"];
    assert_eq!(
        kept,
        &serde_json::json!([format!(
            "PersistentVolumeClaim {target}/data: PersistentVolumeClaim is protected: pruned only with consent (--prune-protected; a Sync: spec.pruneProtected: true)"
        )]),
        "{}",
        sync.data["status"]
    );
    let (status, _, message) = ready(&sync);
    assert_eq!(status, "True");
    assert!(
        message.contains("1 object(s) left the set but were kept (see status.kept)"),
        "{message}"
    );

    // With the Sync's consent it goes, and the list empties.
    create_local_sync(
        &api,
        "slow",
        repo.path(),
        serde_json::json!({"pruneProtected": true}),
    )
    .await;
    support::assert_success(&controller(
        &controller_kubeconfig,
        &sync_ns,
        &cache,
        home.path(),
    ));
    let gone = claims.get_opt("data").await.expect("get");
    assert!(
        gone.is_none() || gone.is_some_and(|c| c.metadata.deletion_timestamp.is_some()),
        "pruned"
    );
    let sync = api.get("slow").await.expect("get");
    assert!(
        sync.data["status"].get("kept").is_none(),
        "{}",
        sync.data["status"]
    );
}
