//! Two replicas: only the leader syncs, and a stopped leader hands over.

use super::*;

#[tokio::test]
async fn two_replicas_only_the_leader_syncs_and_a_stopped_leader_hands_over() {
    let Fixture {
        cluster,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("replicas").await);
    let target = cluster.namespace(&client, "replicas-apps").await;
    let repo = tiny_repo(&target);
    let home = tempfile::tempdir().expect("tempdir");
    put_secret(&client, &sync_ns, "hook", "token", "hook-s3cret-0123456789").await;
    let api = syncs(&client, &sync_ns);
    create_local_sync(
        &api,
        "tiny",
        repo.path(),
        serde_json::json!({"interval": "1h", "webhook": {"secretRef": {"name": "hook"}}}),
    )
    .await;
    let lease = format!("test-{}", std::process::id());
    let ports = [free_port(), free_port()];
    let mut replicas = vec![
        Some(start_replica(
            &controller_kubeconfig,
            &sync_ns,
            &lease,
            "replica-a",
            ports[0],
            home.path(),
        )),
        Some(start_replica(
            &controller_kubeconfig,
            &sync_ns,
            &lease,
            "replica-b",
            ports[1],
            home.path(),
        )),
    ];
    let first = head(repo.path());
    wait_applied(&api, "tiny", &first, "the first sync").await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "lockstep-system");
    let holder = leases
        .get(&lease)
        .await
        .expect("lease")
        .spec
        .unwrap_or_default()
        .holder_identity;
    let leader = match holder.as_deref() {
        Some("replica-a") => 0,
        Some("replica-b") => 1,
        other => panic!("unexpected holder {other:?}"),
    };
    let follower = 1 - leader;
    let success = "lockstep_syncs_total{result=\"success\"}";
    assert_eq!(metric(ports[leader], success), 1.0);
    assert_eq!(
        metric(ports[follower], success),
        0.0,
        "the follower never syncs"
    );

    // A webhook that reaches the follower is handed to the leader.
    std::fs::write(
        repo.path().join("templates/settings.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: two}\n",
    )
    .expect("write");
    git(repo.path(), &["commit", "-q", "-am", "two"]);
    let second = head(repo.path());
    let body = br#"{}"#;
    let signature = hook_signature(body, b"hook-s3cret-0123456789");
    let (code, _) = http(
        ports[follower],
        "POST",
        &format!("/hook/{sync_ns}/tiny"),
        &[("X-Hub-Signature-256", &signature)],
        body,
    );
    assert_eq!(code, 202);
    wait_applied(&api, "tiny", &second, "the hooked sync").await;
    assert_eq!(
        metric(ports[follower], success),
        0.0,
        "the follower still never syncs"
    );

    // SIGTERM: the leader finishes, gives the Lease up and exits 0; the follower takes over.
    let mut stopping = replicas[leader].take().expect("leader");
    let child = &mut stopping.0;
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let status = child.wait().expect("wait");
    let names = ["replica-a", "replica-b"];
    let leader_log = log_of(&home.path().join(format!("{}.log", names[leader])));
    assert!(status.success(), "{status:?}\n{leader_log}");
    assert!(leader_log.contains("stopped"), "{leader_log}");
    std::fs::write(
        repo.path().join("templates/settings.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: three}\n",
    )
    .expect("write");
    git(repo.path(), &["commit", "-q", "-am", "three"]);
    let third = head(repo.path());
    // The new leader starts its term with a sync of every Sync.
    wait_applied(&api, "tiny", &third, "the new leader's sync").await;
    let holder = leases
        .get(&lease)
        .await
        .expect("lease")
        .spec
        .unwrap_or_default()
        .holder_identity;
    assert_eq!(holder.as_deref(), Some(names[follower]));
    assert!(metric(ports[follower], success) >= 1.0);
    drop(replicas);
}
