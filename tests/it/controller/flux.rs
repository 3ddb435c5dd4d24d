//! Side by side with real Flux: source-controller and kustomize-controller (the pinned peers, run
//! as processes against the control plane with Flux's own CRDs) and lockstep's controller sync one
//! Git repository, served over HTTP on loopback, into two namespaces. The live objects match —
//! names, labels, data and spec, Secrets included (generated Secret names differ only in their
//! hash suffix, computed by lockstep over ciphertext and by Flux over plaintext). Flux decrypts
//! the SOPS generator inputs in place on its temp disk before the build; a watch over the
//! directories each controller writes to holds the plaintext Flux left there and finds none from
//! lockstep.

use super::*;

use crate::kustomize::without_suffix;
use crate::support::gitserver::GitHttp;

use std::collections::{BTreeMap, BTreeSet};

const MARKER: &str = "Flux-Side-By-Side-Marker-71c4";

/// The API of one Flux kind in `ns`.
fn flux_api(
    client: &kube::Client,
    ns: &str,
    group: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural);
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Applies Flux's CRDs (as the peers ship them) and waits until the API serves Kustomizations.
async fn install_flux_crds(client: &kube::Client, ns: &str) {
    let crds = support::peer_share("flux/crds.yaml").expect("the Flux CRDs");
    let text = std::fs::read_to_string(crds).expect("read the Flux CRDs");
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
        "customresourcedefinitions",
    );
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    for crd in crate::charts::objects(&text).into_values() {
        apply_json(&api, serde_json::to_value(crd).expect("json")).await;
    }
    for (group, kind, plural) in [
        (
            "source.toolkit.fluxcd.io",
            "GitRepository",
            "gitrepositories",
        ),
        (
            "kustomize.toolkit.fluxcd.io",
            "Kustomization",
            "kustomizations",
        ),
    ] {
        let api = flux_api(client, ns, group, kind, plural);
        support::eventually(
            &format!("the API to serve {plural}"),
            std::time::Duration::from_secs(30),
            || async { api.list(&Default::default()).await.ok().map(|_| ()) },
        )
        .await;
    }
}

/// Starts one Flux controller on the admin kubeconfig, watching `ns` only, its temp directory
/// `tmp` and its log under `dir`.
fn start_flux(
    program: &Path,
    kubeconfig: &Path,
    ns: &str,
    dir: &Path,
    tmp: &Path,
    extra: &[String],
) -> Running {
    let name = program
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).expect("log file");
    std::fs::create_dir_all(tmp).expect("mkdir");
    Running(
        Command::new(program)
            .args([
                "--watch-all-namespaces=false",
                "--enable-leader-election=false",
                &format!("--metrics-addr=127.0.0.1:{}", free_port()),
                &format!("--health-addr=127.0.0.1:{}", free_port()),
            ])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUNTIME_NAMESPACE", ns)
            .env("TMPDIR", tmp)
            .env("HOME", dir)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}")),
        log_path,
    )
}

/// The repository both sync: the overlay tree without a namespace of its own (Flux sets its
/// `targetNamespace`, lockstep its environment's), a SOPS-encrypted Secret among the resources,
/// and SOPS-encrypted generator inputs (a dotenv file and a binary file).
fn side_by_side_repo(root: &Path, lockstep_ns: &str) {
    crate::kustomize::overlay_tree(root, lockstep_ns);
    crate::kustomize::add_sops_db_secret(root, &format!("{MARKER}-pw"));
    crate::kustomize::edit_overlay(root, |k| {
        k.replace(&format!("namespace: {lockstep_ns}\n"), "")
            .replace(
                "secretGenerator:\n",
                "secretGenerator:\n  - name: app-env\n    envs: [app.env]\n  - name: app-files\n    files: [tls.crt=tls.pem]\n",
            )
    });
    for (rel, plain) in [
        (
            "overlays/prod/app.env",
            format!("API_KEY={MARKER}-api\nREGION=eu-west-1\n"),
        ),
        (
            "overlays/prod/tls.pem",
            format!("-----BEGIN CERT-----\n{MARKER}-cert\n-----END CERT-----\n"),
        ),
    ] {
        crate::kustomize::write_encrypted(root, rel, &plain);
    }
    commit_all(root, "an overlay with SOPS inputs");
}

/// The objects the overlay makes, as they are live in `ns`: `Kind/name` (generated names without
/// their suffix) → labels, annotations, data and spec, without what each tool adds of its own
/// (its labels and annotations, a Service's cluster IP) or what the API server assigns.
async fn live(client: &kube::Client, ns: &str) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    // What each tool adds of its own.
    let without_own = |map: Option<&BTreeMap<String, String>>| -> BTreeMap<String, String> {
        let mut map = map.cloned().unwrap_or_default();
        map.retain(|k, v| {
            let tools_own = k.starts_with("kustomize.toolkit.fluxcd.io/")
                || k.starts_with("lockstep.dev/")
                || (k == "app.kubernetes.io/managed-by" && v == "lockstep");
            !tools_own
        });
        map
    };
    for (group, kind, plural) in [
        ("", "ConfigMap", "configmaps"),
        ("", "Secret", "secrets"),
        ("", "Service", "services"),
        ("apps", "Deployment", "deployments"),
    ] {
        // Flux keeps its inventory in the Kustomization's status, lockstep in a ConfigMap
        // (left out here).
        for object in objects_of(client, ns, (group, "v1", kind, plural)).await {
            let name = object.metadata.name.clone().unwrap_or_default();
            let labels = without_own(object.metadata.labels.as_ref());
            let annotations = without_own(object.metadata.annotations.as_ref());
            let mut data = object.data.clone();
            if let Some(spec) = data.get_mut("spec").and_then(|s| s.as_object_mut()) {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
            let text = serde_json::json!({
                "labels": labels,
                "annotations": annotations,
                "type": data["type"],
                "data": data["data"],
                "spec": data["spec"],
            })
            .to_string();
            out.insert(format!("{kind}/{}", without_suffix(&name)), (name, text));
        }
    }
    // References to generated names (envFrom, volumes) compared without the suffix too.
    let renamed: BTreeSet<(String, String)> = out
        .values()
        .filter(|(name, _)| without_suffix(name) != *name)
        .map(|(name, _)| (name.clone(), without_suffix(name)))
        .collect();
    out.into_iter()
        .map(|(key, (_, mut text))| {
            for (name, stem) in &renamed {
                text = text.replace(&format!("\"{name}\""), &format!("\"{stem}\""));
            }
            (key, serde_json::from_str(&text).expect("json"))
        })
        .collect()
}

#[tokio::test]
async fn flux_and_lockstep_sync_one_repository_alike_and_only_flux_puts_plaintext_on_disk() {
    let kustomize = need!("kustomize", crate::kustomize::kustomize());
    let source_controller = need!("source-controller", support::peer("source-controller"));
    let kustomize_controller = need!(
        "kustomize-controller",
        support::peer("kustomize-controller")
    );
    need!("the Flux CRDs", support::peer_share("flux/crds.yaml"));
    let Fixture {
        cluster,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("side-by-side").await);
    let flux_ns = cluster.namespace(&client, "flux-system").await;
    let flux_apps = cluster.namespace(&client, "flux-apps").await;
    let lockstep_apps = cluster.namespace(&client, "lockstep-apps").await;
    install_flux_crds(&client, &flux_ns).await;

    // One repository, served over HTTP.
    let repo = tempfile::tempdir().expect("tempdir");
    side_by_side_repo(repo.path(), &lockstep_apps);
    let served = tempfile::tempdir().expect("tempdir");
    clone_bare(served.path(), repo.path(), "shop.git");
    let http = GitHttp::start(served.path(), None);
    let url = http.url("shop.git");

    // Flux: its controllers, the age key as Flux's guide stores it, a GitRepository and a
    // Kustomization of the overlay.
    let flux_dir = tempfile::tempdir().expect("tempdir");
    let flux_tmp = flux_dir.path().join("tmp");
    let storage_port = free_port();
    std::fs::create_dir_all(flux_dir.path().join("storage")).expect("mkdir");
    let _source = start_flux(
        &source_controller,
        &cluster.kubeconfig,
        &flux_ns,
        flux_dir.path(),
        &flux_dir.path().join("source-tmp"),
        &[
            format!(
                "--storage-path={}",
                flux_dir.path().join("storage").display()
            ),
            format!("--storage-addr=127.0.0.1:{storage_port}"),
            format!("--storage-adv-addr=127.0.0.1:{storage_port}"),
        ],
    );
    let flux_disk = support::DiskWatch::start(&[&flux_tmp]);
    let _kustomize = start_flux(
        &kustomize_controller,
        &cluster.kubeconfig,
        &flux_ns,
        flux_dir.path(),
        &flux_tmp,
        &["--requeue-dependency=2s".to_string()],
    );
    put_secret(&client, &flux_ns, "sops-age", "age.agekey", &demo_key()).await;
    let gitrepos = flux_api(
        &client,
        &flux_ns,
        "source.toolkit.fluxcd.io",
        "GitRepository",
        "gitrepositories",
    );
    apply_json(
        &gitrepos,
        serde_json::json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
            "metadata": {"name": "shop"},
            "spec": {"interval": "1m", "url": url, "ref": {"branch": "main"}}
        }),
    )
    .await;
    let kustomizations = flux_api(
        &client,
        &flux_ns,
        "kustomize.toolkit.fluxcd.io",
        "Kustomization",
        "kustomizations",
    );
    let apply_kustomization = |requested: String| {
        apply_json(
            &kustomizations,
            serde_json::json!({
                "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
                "metadata": {"name": "shop", "annotations": {"reconcile.fluxcd.io/requestedAt": requested}},
                "spec": {
                    "interval": "10m", "path": "./overlays/prod", "prune": true,
                    "targetNamespace": flux_apps,
                    "sourceRef": {"kind": "GitRepository", "name": "shop"},
                    "decryption": {"provider": "sops", "secretRef": {"name": "sops-age"}}
                }
            }),
        )
    };
    apply_kustomization("0".into()).await;
    let revision = format!("main@sha1:{}", head(repo.path()));
    support::eventually(
        "Flux's Kustomization to be Ready",
        std::time::Duration::from_secs(120),
        || async {
            let k = kustomizations.get("shop").await.ok()?;
            (ready(&k).0 == "True" && k.data["status"]["lastAppliedRevision"] == revision.as_str())
                .then_some(())
        },
    )
    .await;
    // Flux's build is brief: until the watch has held its decrypted files, reconcile again.
    let mut round = 0;
    while flux_disk.holding(MARKER).is_empty() && round < 20 {
        round += 1;
        apply_kustomization(round.to_string()).await;
        support::eventually(
            "Flux's requested reconcile",
            std::time::Duration::from_secs(60),
            || async {
                let k = kustomizations.get("shop").await.ok()?;
                (k.data["status"]["lastHandledReconcileAt"] == round.to_string().as_str())
                    .then_some(())
            },
        )
        .await;
    }
    let flux_plaintext = flux_disk.holding(MARKER);
    assert!(
        !flux_plaintext.is_empty(),
        "Flux wrote no plaintext to its temp disk in {round} reconciles ({} files seen)",
        flux_disk.paths().len()
    );
    assert!(
        flux_plaintext
            .iter()
            .any(|p| p.ends_with("overlays/prod/app.env") || p.ends_with("overlays/prod/tls.pem")),
        "{flux_plaintext:?}"
    );
    eprintln!("Flux's temp disk held plaintext in {flux_plaintext:?} ({round} extra reconciles)");
    drop(flux_disk);

    // lockstep: the same repository with its project file, the same key, one sync.
    let home = tempfile::tempdir().expect("tempdir");
    let lockstep_tmp = home.path().join("tmp");
    std::fs::create_dir_all(&lockstep_tmp).expect("mkdir");
    let lockstep_disk =
        support::DiskWatch::start(&[&lockstep_tmp, home.path(), Path::new("/dev/shm")]);
    put_secret(&client, &sync_ns, "age-key", "age.agekey", &demo_key()).await;
    let api = syncs(&client, &sync_ns);
    create_sync(
        &api,
        "shop",
        serde_json::json!({
            "source": {"url": url},
            "environment": "prod",
            "decryption": {"secretRef": {"name": "age-key"}}
        }),
    )
    .await;
    let kustomize = kustomize.to_string_lossy().into_owned();
    let tmp = lockstep_tmp.to_string_lossy().into_owned();
    let out = controller_with(
        &controller_kubeconfig,
        &sync_ns,
        &home.path().join("git-cache"),
        home.path(),
        &[],
        &[("LOCKSTEP_KUSTOMIZE", &kustomize), ("TMPDIR", &tmp)],
    );
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    let sync = api.get("shop").await.expect("get");
    assert_eq!(ready(&sync).0, "True", "{:?}\n{log}", ready(&sync));
    assert!(
        lockstep_disk
            .paths()
            .iter()
            .any(|p| p.ends_with("overlays/prod/kustomization.yaml")),
        "the watch saw lockstep's scratch copy of the tree"
    );
    assert_eq!(
        lockstep_disk.holding(MARKER),
        Vec::<PathBuf>::new(),
        "lockstep wrote plaintext"
    );
    drop(lockstep_disk);
    assert!(!log.contains(MARKER), "{log}");
    support::assert_nowhere(MARKER, &[home.path(), Path::new("/dev/shm")]);

    // The same objects, Secrets included.
    let theirs = live(&client, &flux_apps).await;
    let ours = live(&client, &lockstep_apps).await;
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "the same objects"
    );
    for (key, flux) in &theirs {
        assert_eq!(
            &ours[key], flux,
            "{key}: lockstep's (left) and Flux's (right)"
        );
    }
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    assert_eq!(
        ours["Secret/prod-db"]["data"]["password"],
        b64(&format!("{MARKER}-pw"))
    );
    assert_eq!(
        ours["Secret/prod-app-env"]["data"]["API_KEY"],
        b64(&format!("{MARKER}-api"))
    );
}
