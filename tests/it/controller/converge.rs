//! A Sync converges; a broken commit, a tampered file or a wrong key leaves the cluster as it was and says why; a removed template is pruned.

use super::*;

#[tokio::test]
async fn a_sync_converges_refuses_a_broken_commit_prunes_and_names_a_wrong_key() {
    let Fixture {
        cluster: _,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("sync").await);
    let target = format!("shop-sync-{}", std::process::id());
    let repo = shop_repo(&target);
    let home = tempfile::tempdir().expect("tempdir");
    let cache: PathBuf = home.path().join("git-cache");

    // The decryption Secret: the demo key under an arbitrary key name.
    put_secret(&client, &sync_ns, "age-key", "whatever.agekey", &demo_key()).await;
    let api = syncs(&client, &sync_ns);
    api.patch(
        "shop",
        &PatchParams::apply("test"),
        &Patch::Apply(serde_json::json!({
            "apiVersion": "lockstep.dev/v1alpha1", "kind": "Sync", "metadata": {"name": "shop"},
            "spec": {
                "source": {"url": format!("file://{}", repo.path().display()), "ref": {"branch": "main"}},
                "environment": "dev",
                "decryption": {"secretRef": {"name": "age-key"}}
            }
        })),
    )
    .await
    .expect("sync");

    // Converge.
    let out = controller(&controller_kubeconfig, &sync_ns, &cache, home.path());
    support::assert_success(&out);
    let sync = api.get("shop").await.expect("get");
    let (status, reason, message) = ready(&sync);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "Succeeded"),
        "{message}"
    );
    let first = head(repo.path());
    assert_eq!(sync.data["status"]["lastAppliedRevision"], first.as_str());
    assert_eq!(sync.data["status"]["objects"], 14);
    let shop_secrets: Api<Secret> = Api::namespaced(client.clone(), &target);
    let app = shop_secrets
        .get("shop-app")
        .await
        .expect("shop-app applied");
    let session = app.data.expect("data")["SESSION_KEY"].0.clone();
    let session = String::from_utf8(session).expect("utf-8");
    // A commit that changes one value: only the object that uses it is written.
    let before = versions(&client, &target).await;
    let dev_values = repo.path().join("environments/dev/values.yaml");
    let text = std::fs::read_to_string(&dev_values).expect("values");
    std::fs::write(&dev_values, text.replace("shop.dev.", "shop2.dev.")).expect("write");
    git(repo.path(), &["commit", "-q", "-am", "new host"]);
    let out = controller(&controller_kubeconfig, &sync_ns, &cache, home.path());
    support::assert_success(&out);
    let after = versions(&client, &target).await;
    let changed: Vec<&String> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(v))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(changed, ["Ingress/web"], "only the Ingress uses the host");
    let first = head(repo.path());

    // A hand edit is corrected on the next sync (driftMode: correct is the default)…
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), &target);
    let log_level = |cm: k8s_openapi::api::core::v1::ConfigMap| {
        cm.data
            .unwrap_or_default()
            .get("LOG_LEVEL")
            .cloned()
            .unwrap_or_default()
    };
    let edit = serde_json::json!({"data": {"LOG_LEVEL": "trace"}});
    config_maps
        .patch("shop-config", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .expect("hand edit");
    let out = controller(&controller_kubeconfig, &sync_ns, &cache, home.path());
    support::assert_success(&out);
    assert_eq!(
        log_level(config_maps.get("shop-config").await.expect("cm")),
        "debug"
    );
    // …or only reported with driftMode: warn.
    set_drift_mode(&api, "shop", "warn").await;
    config_maps
        .patch("shop-config", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .expect("hand edit");
    let out = controller(&controller_kubeconfig, &sync_ns, &cache, home.path());
    let message = failed_with(&out, &api, "shop", "DriftDetected").await;
    assert_eq!(
        log_level(config_maps.get("shop-config").await.expect("cm")),
        "trace"
    );
    assert!(
        message.contains("ConfigMap") && message.contains("shop-config"),
        "{message}"
    );
    set_drift_mode(&api, "shop", "correct").await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &target);
    // The generation only moves when the spec changes (status updates by the controllers do not count).
    let web_generation = deployments
        .get("web")
        .await
        .expect("web")
        .metadata
        .generation;

    // A broken template: Ready=False with the reason, the cluster untouched, the old revision kept.
    commit_template(repo.path(), "broken.yaml", BROKEN);
    let out = controller(&controller_kubeconfig, &sync_ns, &cache, home.path());
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The log line says which Sync, which revision, what failed and that only a commit helps.
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = log
        .lines()
        .find(|l| l.contains("RenderFailed"))
        .unwrap_or_else(|| panic!("a log line for the failure: {log}"));
    assert!(
        line.contains("stalled: only a new commit or spec change helps")
            && line.contains("templates/broken.yaml")
            && line.contains(&format!("sync={sync_ns}/shop"))
            && line.contains(&head(repo.path())),
        "{line}"
    );
    // The same as JSON, one object per line, for log collectors.
    let out = controller_with(
        &controller_kubeconfig,
        &sync_ns,
        &cache,
        home.path(),
        &["--allow-local-sources", "--log-format", "json"],
        &[],
    );
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let entry: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["reason"] == "RenderFailed")
        .unwrap_or_else(|| panic!("a JSON log line for the failure: {log}"));
    assert_eq!(entry["sync"], format!("{sync_ns}/shop"), "{entry}");
    assert_eq!(entry["revision"], head(repo.path()).as_str(), "{entry}");
    assert_eq!(entry["level"], "WARN", "{entry}");
    assert!(entry["timestamp"].is_string(), "{entry}");
    assert!(
        entry["message"]
            .as_str()
            .is_some_and(|m| m.contains("templates/broken.yaml")),
        "{entry}"
    );
    let sync = api.get("shop").await.expect("get");
    let (status, reason, message) = ready(&sync);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "RenderFailed")
    );
    assert!(message.contains("templates/broken.yaml"), "{message}");
    assert_eq!(sync.data["status"]["lastAppliedRevision"], first.as_str());
    assert_eq!(
        sync.data["status"]["lastAttemptedRevision"],
        head(repo.path()).as_str()
    );
    assert_eq!(
        deployments
            .get("web")
            .await
            .expect("web")
            .metadata
            .generation,
        web_generation
    );
    // …and says so in a Warning Event on the Sync.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), &sync_ns);
    let list = events.list(&Default::default()).await.expect("events");
    let failed = list
        .items
        .iter()
        .find(|e| e.reason.as_deref() == Some("RenderFailed"))
        .expect("a RenderFailed event");
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    assert_eq!(
        failed.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("shop")
    );
    // Both syncs that changed objects have an Event of their own (a different message each), not
    // one folded series showing the first revision's text.
    let succeeded: std::collections::BTreeSet<&str> = list
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Succeeded"))
        .filter_map(|e| e.note.as_deref())
        .collect();
    assert!(succeeded.len() >= 2, "{succeeded:#?}");
    assert!(
        succeeded.iter().any(|n| n.contains(&first)),
        "the second revision's own message: {succeeded:#?}"
    );

    // Fixed, and the Ingress template removed: converged again, the Ingress pruned.
    std::fs::remove_file(repo.path().join("templates/broken.yaml")).expect("rm");
    std::fs::remove_file(repo.path().join("templates/ingress.yaml")).expect("rm");
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "no ingress"]);
    let out = controller(&controller_kubeconfig, &sync_ns, &cache, home.path());
    support::assert_success(&out);
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &target);
    assert!(
        ingresses.get_opt("web").await.expect("get").is_none(),
        "the Ingress is pruned"
    );
    let sync = api.get("shop").await.expect("get");
    assert_eq!(ready(&sync).0, "True");
    assert_eq!(
        sync.data["status"]["lastAppliedRevision"],
        head(repo.path()).as_str()
    );

    // A tampered secrets file (one ciphertext changed): DecryptFailed, the cluster as it was.
    let before = versions(&client, &target).await;
    let secrets_file = repo.path().join("environments/dev/secrets.yaml");
    let text = std::fs::read_to_string(&secrets_file).expect("secrets");
    let at = text.find("ENC[AES256_GCM,data:").expect("a value") + "ENC[AES256_GCM,data:".len();
    let mut bytes = text.into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(&secrets_file, bytes).expect("write");
    git(repo.path(), &["commit", "-q", "-am", "tampered"]);
    let out = controller(&controller_kubeconfig, &sync_ns, &cache, home.path());
    let message = failed_with(&out, &api, "shop", "DecryptFailed").await;
    assert!(
        message.contains("environments/dev/secrets.yaml"),
        "{message}"
    );
    assert_eq!(
        versions(&client, &target).await,
        before,
        "nothing written or pruned"
    );
    git(repo.path(), &["revert", "--no-edit", "HEAD"]);
    // A missing decryption Secret is named.
    Api::<Secret>::namespaced(client.clone(), &sync_ns)
        .delete("age-key", &Default::default())
        .await
        .expect("delete");
    let out = controller(&controller_kubeconfig, &sync_ns, &cache, home.path());
    let message = failed_with(&out, &api, "shop", "DecryptFailed").await;
    assert!(
        message.contains(&format!(
            "decryption Secret {sync_ns}/age-key does not exist"
        )),
        "{message}"
    );

    // A decryption Secret holding another key: DecryptFailed naming recipients and identities.
    let (other, other_public) = lockstep::keys::generate("2026-01-01T00:00:00Z");
    put_secret(&client, &sync_ns, "age-key", "whatever.agekey", &other).await;
    let out = controller(&controller_kubeconfig, &sync_ns, &cache, home.path());
    let message = failed_with(&out, &api, "shop", "DecryptFailed").await;
    let sync = api.get("shop").await.expect("get");
    assert!(
        message.contains("age1cunssxzmelyguczf39cjyuztac9mh3wlk6hgqv0s8m7khtfyw47qxrz3zg"),
        "{message}"
    );
    assert!(message.contains(&other_public), "{message}");

    // The decrypted value is nowhere in the status, the Events or the controller's output.
    let all_events = serde_json::to_string(
        &events
            .list(&Default::default())
            .await
            .expect("events")
            .items,
    )
    .expect("json");
    assert!(!all_events.contains(&session), "secret in an event");
    let status_text = sync.data["status"].to_string();
    assert!(!status_text.contains(&session), "secret in status");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!output.contains(&session), "secret in output");
    for file in support::files_under(home.path()) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !bytes
                .windows(session.len())
                .any(|w| w == session.as_bytes()),
            "plaintext on disk: {}",
            file.display()
        );
    }
}
