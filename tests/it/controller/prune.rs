//! What a Sync prunes: a protected object that left Git is kept and listed in the status, and is
//! deleted once the Sync consents (`pruneProtected`); deleting a Sync deletes what it applied
//! (`prune: true`, through its finalizer) or leaves it (`prune: false`).

use super::*;

#[tokio::test]
async fn protected_objects_wait_for_consent_and_deleting_a_sync_prunes_what_it_applied() {
    let Fixture {
        cluster,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("prune").await);
    let target = cluster.namespace(&client, "prune-apps").await;
    let repo = unbindable_repo(&target);
    commit_template(
        repo.path(),
        "settings.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: one}\n",
    );
    let home = tempfile::tempdir().expect("tempdir");
    let cache = home.path().join("git-cache");
    let api = syncs(&client, &sync_ns);
    let sync_once = || {
        support::assert_success(&controller(
            &controller_kubeconfig,
            &sync_ns,
            &cache,
            home.path(),
        ))
    };
    create_local_sync(&api, "slow", repo.path(), serde_json::json!({})).await;
    sync_once();
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(client.clone(), &target);
    assert!(claims.get_opt("data").await.expect("get").is_some());

    // The claim leaves Git: kept (a protected kind), and the status says so and why.
    std::fs::remove_file(repo.path().join("templates/data.yaml")).expect("rm");
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "no claim"]);
    sync_once();
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
    sync_once();
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

    // Deleting the Sync (prune on, the default) deletes what it applied, then the Sync goes.
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), &target);
    assert!(
        config_maps
            .get_opt("settings")
            .await
            .expect("get")
            .is_some()
    );
    let inventory = sync.data["status"]["inventory"]
        .as_str()
        .expect("inventory")
        .to_string();
    assert_eq!(
        sync.metadata.finalizers.as_deref(),
        Some(&["lockstep.dev/prune".to_string()][..]),
        "a Sync that prunes carries the finalizer"
    );
    api.delete("slow", &Default::default())
        .await
        .expect("delete");
    assert!(
        api.get_opt("slow").await.expect("get").is_some(),
        "held by the finalizer"
    );
    sync_once();
    assert!(
        config_maps
            .get_opt("settings")
            .await
            .expect("get")
            .is_none(),
        "pruned on delete"
    );
    let (inv_ns, inv_name) = inventory.split_once('/').expect("ns/name");
    let inventories: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), inv_ns);
    assert!(
        inventories.get_opt(inv_name).await.expect("get").is_none(),
        "inventory gone"
    );
    assert!(
        api.get_opt("slow").await.expect("get").is_none(),
        "the Sync is gone"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), &sync_ns);
    let list = events.list(&Default::default()).await.expect("events");
    assert!(
        list.items
            .iter()
            .filter_map(|e| e.note.as_deref())
            .any(|n| n.starts_with("deleted: pruned 1 object(s)")),
        "{:#?}",
        list.items
            .iter()
            .map(|e| e.note.clone())
            .collect::<Vec<_>>()
    );

    // With prune: false the finalizer goes, and deleting the Sync leaves its objects.
    create_local_sync(
        &api,
        "keep",
        repo.path(),
        serde_json::json!({"prune": false}),
    )
    .await;
    sync_once();
    assert!(
        config_maps
            .get_opt("settings")
            .await
            .expect("get")
            .is_some()
    );
    let sync = api.get("keep").await.expect("get");
    assert!(sync.metadata.finalizers.unwrap_or_default().is_empty());
    api.delete("keep", &Default::default())
        .await
        .expect("delete");
    assert!(
        api.get_opt("keep").await.expect("get").is_none(),
        "nothing holds it"
    );
    assert!(
        config_maps
            .get_opt("settings")
            .await
            .expect("get")
            .is_some(),
        "left as it is"
    );
}

#[tokio::test]
async fn a_commit_that_would_prune_everything_waits_for_the_syncs_consent() {
    let Fixture {
        cluster,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("massprune").await);
    let target = cluster.namespace(&client, "massprune-apps").await;
    let repo = tiny_repo(&target);
    let home = tempfile::tempdir().expect("tempdir");
    let cache = home.path().join("git-cache");
    let api = syncs(&client, &sync_ns);
    create_local_sync(&api, "tiny", repo.path(), serde_json::json!({})).await;
    let run = || controller(&controller_kubeconfig, &sync_ns, &cache, home.path());
    support::assert_success(&run());
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), &target);
    // A commit that empties the project: refused, nothing deleted, the way out named.
    std::fs::remove_file(repo.path().join("templates/settings.yaml")).expect("rm");
    std::fs::write(repo.path().join("templates/.keep"), "").expect("write");
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "empty"]);
    let message = failed_with(&run(), &api, "tiny", "PruneFailed").await;
    assert!(
        message.contains("would be deleted (everything)")
            && message.contains("spec.allowMassPrune: true"),
        "{message}"
    );
    assert!(
        config_maps
            .get_opt("settings")
            .await
            .expect("get")
            .is_some()
    );
    // With the Sync's consent, it goes.
    create_local_sync(
        &api,
        "tiny",
        repo.path(),
        serde_json::json!({"allowMassPrune": true}),
    )
    .await;
    support::assert_success(&run());
    assert!(
        config_maps
            .get_opt("settings")
            .await
            .expect("get")
            .is_none()
    );
}
