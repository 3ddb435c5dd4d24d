//! Ownership is bound to the Sync: what another Sync applied is neither overwritten nor pruned —
//! not by a second Sync of the same project environment, and not through a forged inventory.

use super::*;
use k8s_openapi::api::core::v1::ConfigMap;

#[tokio::test]
async fn a_sync_never_overwrites_or_prunes_what_another_sync_applied() {
    let Fixture {
        cluster,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("owners").await);
    let home = tempfile::tempdir().expect("tempdir");
    let cache = home.path().join("git-cache");
    let api = syncs(&client, &sync_ns);
    let sync_once = || controller(&controller_kubeconfig, &sync_ns, &cache, home.path());
    // Two tenants who both named their project "tiny", each deploying to a namespace of its own.
    let target_a = cluster.namespace(&client, "owners-a").await;
    let target_b = cluster.namespace(&client, "owners-b").await;
    let repo_a = tiny_repo(&target_a);
    let repo_b = tiny_repo(&target_b);
    create_local_sync(&api, "a", repo_a.path(), serde_json::json!({})).await;
    create_local_sync(&api, "b", repo_b.path(), serde_json::json!({})).await;
    support::assert_success(&sync_once());
    let config_maps = |ns: &str| Api::<ConfigMap>::namespaced(client.clone(), ns);
    let b_settings = config_maps(&target_b)
        .get("settings")
        .await
        .expect("B applied");
    let owner = b_settings
        .metadata
        .annotations
        .unwrap_or_default()
        .get("lockstep.dev/owner")
        .cloned();
    assert_eq!(owner.as_deref(), Some(format!("Sync {sync_ns}/b").as_str()));

    // Someone who may edit ConfigMaps in A's namespace lists B's object in A's inventory. A's
    // next sync finds it stale, and keeps it: it belongs to B.
    let inventories = Api::<ConfigMap>::namespaced(client.clone(), &target_a);
    let mut inventory = inventories
        .get("lockstep-inventory-tiny-dev")
        .await
        .expect("A's inventory");
    let data = inventory.data.get_or_insert_with(Default::default);
    let objects = data.get("objects").cloned().unwrap_or_default();
    data.insert(
        "objects".into(),
        format!("{objects}\nv1 ConfigMap {target_b} settings"),
    );
    inventories
        .replace(
            "lockstep-inventory-tiny-dev",
            &Default::default(),
            &inventory,
        )
        .await
        .expect("forge A's inventory");
    commit_template(
        repo_a.path(),
        "settings.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: two}\n",
    );
    support::assert_success(&sync_once());
    assert!(
        config_maps(&target_b)
            .get_opt("settings")
            .await
            .expect("get")
            .is_some(),
        "B's object survives A's forged inventory"
    );
    let status = api.get("a").await.expect("get").data["status"].clone();
    assert!(
        status["kept"]
            .to_string()
            .contains(&format!("belongs to Sync {sync_ns}/b")),
        "{status}"
    );

    // A second Sync of A's very project environment is refused before it writes anything.
    create_local_sync(&api, "a-again", repo_a.path(), serde_json::json!({})).await;
    let out = sync_once();
    let message = failed_with(&out, &api, "a-again", "ValidationFailed").await;
    assert!(
        message.contains(&format!("belongs to Sync {sync_ns}/a")),
        "{message}"
    );
    let a_status = api.get("a").await.expect("get");
    assert_eq!(ready(&a_status).0, "True", "A is unaffected");
}
