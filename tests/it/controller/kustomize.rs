//! The controller syncs a Kustomize overlay from Git — bases elsewhere in the repository, a
//! SOPS-encrypted Secret among its resources, as Flux repositories have them: the Secret holds the
//! real value only in the cluster, never in the status or the log.

use super::*;

#[tokio::test]
async fn a_sync_applies_a_kustomize_overlay_with_a_sops_secret_from_git() {
    let kustomize = need!("kustomize", crate::kustomize::kustomize());
    let Fixture {
        cluster,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("kustomize-syncs").await);
    let target = cluster.namespace(&client, "kustomize-apps").await;
    let repo = tempfile::tempdir().expect("tempdir");
    let root = repo.path();
    crate::kustomize::overlay_tree(root, &target);
    let password = "Controller-Kustomize-Marker-9d2e";
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: {password}\n"
    );
    let sealed = crate::kustomize::encrypt_values_only(&secret, "overlays/prod/db.sops.yaml");
    std::fs::write(root.join("overlays/prod/db.sops.yaml"), sealed).expect("write");
    let overlay =
        std::fs::read_to_string(root.join("overlays/prod/kustomization.yaml")).expect("read");
    std::fs::write(
        root.join("overlays/prod/kustomization.yaml"),
        overlay.replace("  - ../../base\n", "  - ../../base\n  - db.sops.yaml\n"),
    )
    .expect("write");
    git(root, &["init", "-q", "-b", "main"]);
    git(root, &["add", "-A"]);
    git(root, &["commit", "-q", "-m", "an overlay"]);
    put_secret(&client, &sync_ns, "age-key", "key", &demo_key()).await;
    let api = syncs(&client, &sync_ns);
    create_local_sync(
        &api,
        "shop",
        root,
        serde_json::json!({
            "environment": "prod",
            "decryption": {"secretRef": {"name": "age-key"}}
        }),
    )
    .await;
    let home = tempfile::tempdir().expect("tempdir");
    let kustomize = kustomize.to_string_lossy().into_owned();
    let out = controller_with(
        &controller_kubeconfig,
        &sync_ns,
        &home.path().join("git-cache"),
        home.path(),
        &["--allow-local-sources"],
        &[("LOCKSTEP_KUSTOMIZE", &kustomize)],
    );
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    let sync = api.get("shop").await.expect("get");
    assert_eq!(ready(&sync).0, "True", "{:?}\n{log}", ready(&sync));
    let applied = Api::<Secret>::namespaced(client.clone(), &target)
        .get("prod-db")
        .await
        .expect("the overlay's Secret");
    assert_eq!(
        applied.data.unwrap_or_default()["password"].0,
        password.as_bytes()
    );
    Api::<Deployment>::namespaced(client.clone(), &target)
        .get("prod-web")
        .await
        .expect("the overlay's Deployment");
    let status = sync.data["status"].to_string();
    assert!(
        !log.contains(password) && !status.contains(password),
        "{log}\n{status}"
    );
}
