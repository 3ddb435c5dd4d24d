//! The controller syncs a Kustomize overlay from Git — bases elsewhere in the repository, a
//! SOPS-encrypted Secret among its resources, as Flux repositories have them: the Secret holds the
//! real value only in the cluster, never in the status or the log.

use super::*;

/// Creates the Sync `shop` of the repository at `root` (environment prod, decryption Secret
/// `secret`), runs the controller once with `kustomize` and `env`, and returns the Sync — Ready —
/// and the controller's log.
async fn sync_prod_once(
    client: &kube::Client,
    kubeconfig: &Path,
    ns: &str,
    root: &Path,
    secret: &str,
    kustomize: &Path,
    env: &[(&str, &str)],
) -> (DynamicObject, String) {
    let api = syncs(client, ns);
    create_local_sync(
        &api,
        "shop",
        root,
        serde_json::json!({
            "environment": "prod",
            "decryption": {"secretRef": {"name": secret}}
        }),
    )
    .await;
    let kustomize = kustomize.to_string_lossy().into_owned();
    let mut env = env.to_vec();
    env.push(("LOCKSTEP_KUSTOMIZE", &kustomize));
    let log = sync_local_once(kubeconfig, ns, &env);
    let sync = api.get("shop").await.expect("get");
    assert_eq!(ready(&sync).0, "True", "{:?}\n{log}", ready(&sync));
    (sync, log)
}

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
    crate::kustomize::add_sops_db_secret(root, password);
    commit_all(root, "an overlay");
    put_secret(&client, &sync_ns, "age-key", "key", &demo_key()).await;
    let (sync, log) = sync_prod_once(
        &client,
        &controller_kubeconfig,
        &sync_ns,
        root,
        "age-key",
        &kustomize,
        &[],
    )
    .await;
    crate::kustomize::assert_prod_db_password(&client, &target, password).await;
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

#[tokio::test]
async fn a_flux_repository_migrated_with_init_from_flux_syncs_with_the_controller() {
    let kustomize = need!("kustomize", crate::kustomize::kustomize());
    let Fixture {
        cluster,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("flux-migrated").await);
    let target = cluster.namespace(&client, "flux-apps").await;
    let repo = tempfile::tempdir().expect("tempdir");
    let root = repo.path();
    // A Flux repository: the overlay tree, Flux's own sync, and a Kustomization of the overlay.
    crate::kustomize::overlay_tree(root, &target);
    std::fs::remove_file(root.join("lockstep.yaml")).expect("no lockstep.yaml yet");
    let password = "Flux-Migrated-Marker-4b7c";
    crate::kustomize::add_sops_db_secret(root, password);
    std::fs::create_dir_all(root.join("clusters/prod/flux-system")).expect("mkdir");
    std::fs::write(
        root.join("clusters/prod/flux-system/gotk-sync.yaml"),
        "apiVersion: source.toolkit.fluxcd.io/v1\nkind: GitRepository\nmetadata: {name: flux-system, namespace: flux-system}\nspec:\n  interval: 1m\n  url: https://git.example.org/shop.git\n  ref: {branch: main}\n---\napiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata: {name: flux-system, namespace: flux-system}\nspec:\n  interval: 10m\n  path: ./clusters/prod\n  prune: true\n  sourceRef: {kind: GitRepository, name: flux-system}\n",
    )
    .expect("write");
    std::fs::write(
        root.join("clusters/prod/apps.yaml"),
        format!("apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata: {{name: apps, namespace: flux-system}}\nspec:\n  interval: 10m\n  path: ./overlays/prod\n  prune: true\n  targetNamespace: {target}\n  sourceRef: {{kind: GitRepository, name: flux-system}}\n  decryption:\n    provider: sops\n    secretRef: {{name: sops-age}}\n  postBuild:\n    substitute: {{cluster: prod}}\n"),
    )
    .expect("write");

    // The migration.
    let out = Command::new(crate::charts::BIN)
        .args(["init", "--from-flux", "clusters/prod"])
        .arg(root)
        .output()
        .expect("init --from-flux");
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("not carried over: Kustomization apps: postBuild"),
        "{said}"
    );
    let project_file = std::fs::read_to_string(root.join("lockstep.yaml")).expect("written");
    assert!(
        project_file.contains("kustomize: overlays/prod"),
        "{project_file}"
    );
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut sync: serde_json::Value = yaml_serde::from_str(printed.trim_start_matches("---\n"))
        .unwrap_or_else(|e| panic!("{e}: {printed}"));
    assert_eq!(sync["spec"]["decryption"]["secretRef"]["name"], "sops-age");
    assert_eq!(
        sync["spec"]["source"]["url"],
        "https://git.example.org/shop.git"
    );
    commit_all(root, "migrated from Flux");

    // Flux's decryption Secret as Flux users have it (key age.agekey), and the printed Sync
    // pointed at this repository.
    put_secret(&client, &sync_ns, "sops-age", "age.agekey", &demo_key()).await;
    sync["spec"]["source"]["url"] = serde_json::json!(format!("file://{}", root.display()));
    sync["spec"]["source"]
        .as_object_mut()
        .expect("source")
        .remove("ref");
    let api = syncs(&client, &sync_ns);
    create_sync(&api, "apps", sync["spec"].clone()).await;
    let kustomize = kustomize.to_string_lossy().into_owned();
    let log = sync_local_once(
        &controller_kubeconfig,
        &sync_ns,
        &[("LOCKSTEP_KUSTOMIZE", &kustomize)],
    );
    let synced = api.get("apps").await.expect("get");
    assert_eq!(ready(&synced).0, "True", "{:?}\n{log}", ready(&synced));
    crate::kustomize::assert_prod_db_password(&client, &target, password).await;
    assert!(!log.contains(password), "{log}");
}

/// A Flux-style repository whose Secret sops encrypted to a PGP key (no age at all): the controller
/// decrypts it with the armored secret key in its decryption Secret (Flux's `*.asc` entry), in
/// process — no GnuPG, no keyring on disk.
#[tokio::test]
async fn a_sync_decrypts_a_pgp_encrypted_secret_with_an_armored_key_from_its_secret() {
    let kustomize = need!("kustomize", crate::kustomize::kustomize());
    let sops = need!("sops", support::peer("sops"));
    let Fixture {
        cluster,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("pgp-syncs").await);
    let target = cluster.namespace(&client, "pgp-apps").await;
    let repo = tempfile::tempdir().expect("tempdir");
    let root = repo.path();
    crate::kustomize::overlay_tree(root, &target);
    let gnupg = support::gnupg::Gnupg::new();
    let fpr = gnupg.generate_encrypting("sync <sync@lockstep.invalid>", "ed25519");
    let password = "Controller-Pgp-Marker-51c0";
    let plain = root.join("overlays/prod/db.yaml");
    std::fs::write(
        &plain,
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ntype: Opaque\nstringData:\n  password: {password}\n"
        ),
    )
    .expect("write");
    let out = std::process::Command::new(&sops)
        .args([
            "-e",
            "--pgp",
            &fpr,
            "--encrypted-regex",
            "^(data|stringData)$",
        ])
        .arg(&plain)
        .env("GNUPGHOME", gnupg.dir.path())
        .env_remove("SOPS_AGE_KEY_FILE")
        .output()
        .expect("sops");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&plain).expect("rm");
    crate::kustomize::add_sealed_db_secret(root, &out.stdout);
    commit_all(root, "an overlay with a PGP-encrypted Secret");
    put_secret(
        &client,
        &sync_ns,
        "pgp-key",
        "identity.asc",
        &gnupg.export_secret(&fpr),
    )
    .await;
    let empty = tempfile::tempdir().expect("tempdir");
    let (sync, log) = sync_prod_once(
        &client,
        &controller_kubeconfig,
        &sync_ns,
        root,
        "pgp-key",
        &kustomize,
        &[("GNUPGHOME", empty.path().to_str().expect("utf-8"))],
    )
    .await;
    crate::kustomize::assert_prod_db_password(&client, &target, password).await;
    let status = sync.data["status"].to_string();
    assert!(
        !log.contains(password) && !status.contains(password),
        "{log}\n{status}"
    );
}
