//! Faults around the controller: the Git server down or answering garbage, and the controller
//! killed with SIGKILL in the middle of a sync.

use super::*;
use crate::faults::Proxy;
use k8s_openapi::api::core::v1::ConfigMap;

/// The Git server unreachable, then answering garbage: `FetchFailed`, the cluster untouched and the
/// last applied revision kept; once it is back, the pending commit is applied.
#[tokio::test]
async fn a_git_server_down_or_garbled_leaves_the_cluster_untouched_and_recovery_follows() {
    use support::gitserver::GitHttp;
    let Fixture {
        cluster,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("git-faults").await);
    let target = cluster.namespace(&client, "git-faults-apps").await;
    let repo = tiny_repo(&target);
    let served = tempfile::tempdir().expect("tempdir");
    clone_bare(served.path(), repo.path(), "tiny.git");
    let http = GitHttp::start(served.path(), None);
    let proxy = Proxy::start(http.port());
    let home = tempfile::tempdir().expect("tempdir");
    let cache = home.path().join("git-cache");
    let api = syncs(&client, &sync_ns);
    create_sync(
        &api,
        "tiny",
        serde_json::json!({
            "source": {"url": format!("http://127.0.0.1:{}/tiny.git", proxy.port)},
            "environment": "dev",
        }),
    )
    .await;
    let once = || {
        controller_with(
            &controller_kubeconfig,
            &sync_ns,
            &cache,
            home.path(),
            &[],
            &[],
        )
    };
    support::assert_success(&once());
    let first = head(repo.path());
    let settings = async || settings_mode(&client, &target).await;
    assert_eq!(settings().await, "one");

    // A new commit is pushed while the server is unreachable, then while it answers garbage.
    commit_template(
        repo.path(),
        "settings.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: two}\n",
    );
    git(
        repo.path(),
        &[
            "push",
            "-q",
            &served.path().join("tiny.git").to_string_lossy(),
            "main",
        ],
    );
    for (fault, arm) in [
        ("down", Proxy::cut as fn(&Proxy)),
        ("garbage", Proxy::garble),
    ] {
        arm(&proxy);
        let message = failed_with(&once(), &api, "tiny", "FetchFailed").await;
        assert!(message.contains("127.0.0.1"), "{fault}: {message}");
        assert_eq!(settings().await, "one", "{fault}: the cluster is untouched");
        let status = api.get("tiny").await.expect("get").data["status"].clone();
        assert_eq!(status["lastAppliedRevision"], first.as_str(), "{fault}");
    }
    proxy.restore();
    support::assert_success(&once());
    assert_eq!(settings().await, "two");
    let status = api.get("tiny").await.expect("get").data["status"].clone();
    assert_eq!(status["lastAppliedRevision"], head(repo.path()).as_str());
}

/// The controller killed with SIGKILL while it writes 200 objects: the restarted controller
/// converges, and the inventory lists each object once — none lost, none twice.
#[tokio::test]
async fn a_controller_killed_mid_sync_converges_after_restart_with_a_complete_inventory() {
    let Fixture {
        cluster,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("kill").await);
    let target = cluster.namespace(&client, "kill-apps").await;
    let many = format!(
        "{{% for i in range(200) %}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{{{{ i }}}}\ndata:\n  payload: \"{}\"\n{{% endfor %}}\n",
        "x".repeat(2000)
    );
    let repo = project_repo("kill", &target, &[("many.yaml", &many)]);
    let api = syncs(&client, &sync_ns);
    create_local_sync(
        &api,
        "many",
        repo.path(),
        serde_json::json!({"interval": "1h"}),
    )
    .await;
    let home = tempfile::tempdir().expect("tempdir");
    let count = async || crate::faults::config_maps(&client, &target).await;
    let mut first = spawn_loop(
        &controller_kubeconfig,
        &["-n", &sync_ns],
        free_port(),
        home.path(),
        "first",
        &[],
    );
    let mut written = 0;
    for _ in 0..2000 {
        written = count().await;
        if written > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let _ = first.0.kill(); // SIGKILL
    let _ = first.0.wait();
    assert!(
        written > 0 && written < 200,
        "killed after {written} of 200 were written"
    );
    let _second = spawn_loop(
        &controller_kubeconfig,
        &["-n", &sync_ns],
        free_port(),
        home.path(),
        "second",
        &[],
    );
    wait_applied(
        &api,
        "many",
        &head(repo.path()),
        "the sync after the restart",
    )
    .await;
    assert_eq!(count().await, 200);
    let inventory = Api::<ConfigMap>::namespaced(client.clone(), &target)
        .get("lockstep-inventory-kill-dev")
        .await
        .expect("inventory")
        .data
        .unwrap_or_default()["objects"]
        .clone();
    let lines: Vec<&str> = inventory.lines().collect();
    let unique: std::collections::BTreeSet<&str> = lines.iter().copied().collect();
    assert_eq!((lines.len(), unique.len()), (200, 200), "{inventory}");
}

/// etcd paused for 20 s (SIGSTOP, on a control plane of this test's own): the controller neither
/// crashes nor stalls; once etcd resumes it syncs the next commit.
#[tokio::test]
async fn an_etcd_pause_of_20_seconds_neither_crashes_nor_stalls_the_controller() {
    let private = need!("control plane", support::PrivateCluster::start());
    let cluster = &private.cluster;
    let client = cluster.admin().await;
    let home = tempfile::tempdir().expect("tempdir");
    install_manifests(cluster, home.path());
    let sync_ns = cluster.namespace(&client, "etcd-pause").await;
    let target = cluster.namespace(&client, "etcd-pause-apps").await;
    let repo = tiny_repo(&target);
    let api = syncs(&client, &sync_ns);
    create_local_sync(
        &api,
        "tiny",
        repo.path(),
        serde_json::json!({"interval": "1h"}),
    )
    .await;
    let port = free_port();
    let mut controller = spawn_loop(
        &cluster.kubeconfig,
        &["-n", &sync_ns],
        port,
        home.path(),
        "controller",
        &[],
    );
    wait_applied(&api, "tiny", &head(repo.path()), "the first sync").await;

    let etcd = private.pid("etcd").to_string();
    let signal = |sig: &str| {
        assert!(
            Command::new("kill")
                .args([sig, &etcd])
                .status()
                .expect("kill")
                .success()
        );
    };
    signal("-STOP");
    let second = commit_settings(repo.path(), "two");
    tokio::time::sleep(std::time::Duration::from_secs(20)).await;
    signal("-CONT");
    assert!(
        controller.0.try_wait().expect("wait").is_none(),
        "the controller is running"
    );
    // A sync requested now (as `lockstep sync` does) is served once the API server answers again.
    let requested = support::run_isolated(
        Path::new(BIN),
        &[
            "sync",
            "tiny",
            "-n",
            &sync_ns,
            "--kubeconfig",
            &cluster.kubeconfig.to_string_lossy(),
        ],
        &[],
        home.path(),
    );
    support::assert_success(&requested);
    // The API server itself takes a few seconds to answer again; the controller's watch retries
    // at most 6 s apart, and its Lease (lapsed during the pause) is renewed every 4 s.
    support::eventually(
        "the sync after etcd resumed",
        std::time::Duration::from_secs(45),
        || async {
            api.get("tiny")
                .await
                .is_ok_and(|s| s.data["status"]["lastAppliedRevision"] == second.as_str())
                .then_some(())
        },
    )
    .await;
    assert_eq!(http(port, "GET", "/healthz", &[], b"").0, 200);
    assert!(
        controller.0.try_wait().expect("wait").is_none(),
        "the controller is still running"
    );
}

/// The leader's Lease renewals blocked (its connection to the API server cut): it stops leading
/// by its own deadline before the other replica takes the Lease.
#[tokio::test]
async fn a_leader_that_cannot_renew_stops_before_another_replica_takes_over() {
    let Fixture {
        cluster: _,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("lease-cut").await);
    let home = tempfile::tempdir().expect("tempdir");
    let upstream = crate::faults::upstream_port(&controller_kubeconfig);
    let proxy = Proxy::start(upstream);
    let through_proxy = proxy.kubeconfig(&controller_kubeconfig, home.path());
    let lease = format!("cut-{}", std::process::id());
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "lockstep-system");
    let holder = async || {
        leases
            .get_opt(&lease)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
    };
    let _a = start_replica(
        &through_proxy,
        &sync_ns,
        &lease,
        "replica-a",
        free_port(),
        home.path(),
    );
    wait_for("replica-a to lead", async || {
        holder().await.as_deref() == Some("replica-a")
    })
    .await;
    let _b = start_replica(
        &controller_kubeconfig,
        &sync_ns,
        &lease,
        "replica-b",
        free_port(),
        home.path(),
    );
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    proxy.cut();
    for _ in 0..300 {
        if holder().await.as_deref() == Some("replica-b") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        holder().await.as_deref(),
        Some("replica-b"),
        "replica-b took over"
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // Log lines start with an RFC 3339 UTC timestamp of fixed width: they compare as text.
    let at = |file: &str, what: &str| {
        log_of(&home.path().join(file))
            .lines()
            .filter(|l| l.contains(what))
            .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
            .next_back()
            .unwrap_or_else(|| {
                panic!(
                    "{file}: no {what:?} line in:\n{}",
                    log_of(&home.path().join(file))
                )
            })
    };
    let a_stopped = log_of(&home.path().join("replica-a.log"))
        .lines()
        .find_map(|l| l.split("stopped_at=").nth(1))
        .map(|rest| {
            rest.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_else(|| {
            panic!(
                "replica-a.log: no stopped_at in:\n{}",
                log_of(&home.path().join("replica-a.log"))
            )
        });
    let b_started = at("replica-b.log", "leading: reconciling Syncs");
    assert!(
        a_stopped < b_started,
        "replica-a stopped at {a_stopped}, replica-b led from {b_started}"
    );
}
