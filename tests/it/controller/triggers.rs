//! What starts a sync: a new Sync at once, then its interval; `lockstep sync`; the webhook (signed, or refused).

use super::*;

#[tokio::test]
async fn the_loop_syncs_new_syncs_at_once_waits_for_the_interval_and_obeys_lockstep_sync_and_the_webhook()
 {
    let Fixture {
        cluster,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("loop").await);
    let target = format!("shop-loop-{}", std::process::id());
    let repo = shop_repo(&target);
    let home = tempfile::tempdir().expect("tempdir");
    put_secret(&client, &sync_ns, "age-key", "keys.txt", &demo_key()).await;
    put_secret(&client, &sync_ns, "hook", "token", "hook-s3cret-0123456789").await;
    let api = syncs(&client, &sync_ns);
    api.patch(
        "shop",
        &PatchParams::apply("test"),
        &Patch::Apply(serde_json::json!({
            "apiVersion": "lockstep.dev/v1alpha1", "kind": "Sync", "metadata": {"name": "shop"},
            "spec": {
                "source": {"url": format!("file://{}", repo.path().display())},
                "environment": "dev",
                "interval": "1h",
                "decryption": {"secretRef": {"name": "age-key"}},
                "webhook": {"secretRef": {"name": "hook"}}
            }
        })),
    )
    .await
    .expect("sync");
    let port = free_port();
    let _controller = spawn_loop(
        &controller_kubeconfig,
        &["-n", &sync_ns],
        port,
        home.path(),
        "controller",
        &["--poll", "1s"],
    );
    let first = head(repo.path());
    wait_applied(&api, "shop", &first, "the first sync").await;

    // A new commit is not picked up before the interval (1h)…
    std::fs::remove_file(repo.path().join("templates/ingress.yaml")).expect("rm");
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "no ingress"]);
    let second = head(repo.path());
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let status = api.get("shop").await.expect("get").data["status"].clone();
    assert_eq!(
        status["lastAppliedRevision"],
        first.as_str(),
        "synced before its interval"
    );

    // …but at once when asked; `lockstep sync` waits for the outcome (as `flux reconcile`), in
    // the kubeconfig context's namespace when -n is not given.
    let kubeconfig = std::fs::read_to_string(&cluster.kubeconfig).expect("kubeconfig");
    let mut kc: serde_json::Value = yaml_serde::from_str(&kubeconfig).expect("kubeconfig yaml");
    kc["contexts"][0]["context"]["namespace"] = serde_json::Value::String(sync_ns.clone());
    let in_ns = home.path().join("kubeconfig-in-namespace");
    std::fs::write(&in_ns, serde_json::to_string(&kc).expect("json")).expect("write");
    let out = support::run_isolated(
        Path::new(BIN),
        &["sync", "shop", "--kubeconfig", &in_ns.to_string_lossy()],
        &[],
        home.path(),
    );
    support::assert_success(&out);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("requested"), "{said}");
    assert!(
        said.contains(&format!(
            "{sync_ns}/shop: Ready (Succeeded): applied revision {second}"
        )),
        "{said}"
    );
    let status = api.get("shop").await.expect("get").data["status"].clone();
    assert_eq!(
        status["lastAppliedRevision"],
        second.as_str(),
        "done when it returns"
    );
    wait_applied(&api, "shop", &second, "the requested sync").await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &target);
    assert!(
        ingresses.get_opt("web").await.expect("get").is_none(),
        "pruned by the loop"
    );

    // Health and metrics.
    assert_eq!(http(port, "GET", "/healthz", &[], b"").0, 200);
    assert_eq!(http(port, "GET", "/readyz", &[], b"").0, 200);
    let (code, metrics) = http(port, "GET", "/metrics", &[], b"");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("lockstep_syncs_total{result=\"success\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("revision=\"{second}\"")),
        "{metrics}"
    );
    assert!(metrics.contains("lockstep_objects_managed{"), "{metrics}");

    // The webhook: a bad signature is refused and changes nothing; a good one syncs at once.
    std::fs::remove_file(repo.path().join("templates/backup.yaml")).expect("rm");
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "no backup"]);
    let third = head(repo.path());
    let body = br#"{"ref":"refs/heads/main"}"#;
    let path = format!("/hook/{sync_ns}/shop");
    let (code, _) = http(
        port,
        "POST",
        &path,
        &[("X-Hub-Signature-256", "sha256=00")],
        body,
    );
    assert_eq!(code, 401);
    let (code, wrong) = http(port, "POST", &path, &[("X-Gitlab-Token", "wrong")], body);
    assert_eq!(code, 401);
    // An unknown Sync gets the very same answer as a wrong signature: the receiver tells nobody
    // which Syncs exist.
    let (code, unknown) = http(
        port,
        "POST",
        &format!("/hook/{sync_ns}/no-such-sync"),
        &[("X-Gitlab-Token", "wrong")],
        body,
    );
    assert_eq!((code, unknown.as_str()), (401, wrong.as_str()));
    // A body over the limit is refused before anything is looked up.
    let big = vec![b'x'; 2 * 1024 * 1024];
    let (code, _) = http(port, "POST", &path, &[("X-Gitlab-Token", "wrong")], &big);
    assert_eq!(code, 413);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let status = api.get("shop").await.expect("get").data["status"].clone();
    assert_eq!(
        status["lastAppliedRevision"],
        second.as_str(),
        "a refused hook must not sync"
    );
    let signature = hook_signature(body, b"hook-s3cret-0123456789");
    let (code, _) = http(
        port,
        "POST",
        &path,
        &[("X-Hub-Signature-256", &signature)],
        body,
    );
    assert_eq!(code, 202);
    wait_applied(&api, "shop", &third, "the webhook sync").await;

    // The decrypted values are nowhere in the metrics, the log, the status or the cache on disk.
    let shop_secrets: Api<Secret> = Api::namespaced(client.clone(), &target);
    let app = shop_secrets.get("shop-app").await.expect("shop-app");
    let (_, metrics) = http(port, "GET", "/metrics", &[], b"");
    let log = log_of(&home.path().join("controller.log"));
    assert!(log.contains("ready"), "{log}");
    let status = api.get("shop").await.expect("get").data["status"].to_string();
    let files = support::files_under(home.path());
    for (key, value) in app.data.unwrap_or_default() {
        let value = String::from_utf8(value.0).expect("utf-8");
        assert!(!metrics.contains(&value), "{key} in the metrics");
        assert!(!log.contains(&value), "{key} in the log");
        assert!(!status.contains(&value), "{key} in the status");
        for file in &files {
            let bytes = std::fs::read(file).unwrap_or_default();
            assert!(
                !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
                "{key} on disk: {}",
                file.display()
            );
        }
    }

    // A requested sync that fails: `lockstep sync` says why and exits 1.
    commit_template(repo.path(), "broken.yaml", BROKEN);
    let out = support::run_isolated(
        Path::new(BIN),
        &[
            "sync",
            "shop",
            "-n",
            &sync_ns,
            "--kubeconfig",
            &cluster.kubeconfig.to_string_lossy(),
        ],
        &[],
        home.path(),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains(&format!("{sync_ns}/shop: not Ready (RenderFailed):"))
            && err.contains("templates/broken.yaml"),
        "{err}"
    );
}
