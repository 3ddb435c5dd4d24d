//! `lockstep rollback` against a running controller and a real Git HTTP server: the pin holds over
//! polls until a newer commit arrives, a rollback the Git server cannot serve is refused with the
//! reason, and after a reseal a rollback to a commit the current identities cannot open is refused
//! up front — nothing changed in either case.

use super::*;
use crate::faults::Proxy;
use support::gitserver::GitHttp;

const SECRET_TEMPLATE: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: token}\nstringData: {token: \"{{ secrets.token }}\"}\n";

/// A new age identity: (identity file text, recipient).
fn new_key(dir: &Path) -> (String, String) {
    let path = dir.join("second.key");
    let out = support::run_isolated(
        Path::new(BIN),
        &["keygen", "-o", &path.to_string_lossy()],
        &[],
        dir,
    );
    support::assert_success(&out);
    let text = std::fs::read_to_string(&path).expect("key");
    let recipient = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("public key line")
        .to_string();
    (text, recipient)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_holds_until_a_newer_commit_and_is_refused_when_it_cannot_be_applied() {
    let Fixture {
        cluster,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("rollback").await);
    let target = cluster.namespace(&client, "rollback-apps").await;
    let marker = "rollback-marker-5d1e0c";
    let demo_recipient = "age1cunssxzmelyguczf39cjyuztac9mh3wlk6hgqv0s8m7khtfyw47qxrz3zg";

    // A project with a setting and an encrypted secret, served by git http-backend behind a proxy
    // that can cut it off.
    let repo = tiny_repo(&target);
    std::fs::create_dir_all(repo.path().join("environments/dev")).expect("mkdir");
    std::fs::write(
        repo.path().join(".sops.yaml"),
        format!("creation_rules:\n  - path_regex: environments/.*/secrets\\.yaml$\n    age: {demo_recipient}\n"),
    )
    .expect("write");
    std::fs::write(
        repo.path().join("environments/dev/secrets.yaml"),
        support::encrypt_stdin(
            Path::new(BIN),
            demo_recipient,
            "environments/dev/secrets.yaml",
            &format!("token: {marker}\n"),
        ),
    )
    .expect("write");
    std::fs::write(repo.path().join("templates/token.yaml"), SECRET_TEMPLATE).expect("write");
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "a secret"]);
    let served = tempfile::tempdir().expect("tempdir");
    clone_bare(served.path(), repo.path(), "app.git");
    let bare = served.path().join("app.git");
    let push = || {
        git(
            repo.path(),
            &["push", "-q", &bare.to_string_lossy(), "main"],
        )
    };
    let http = GitHttp::start(served.path(), None);
    let proxy = Proxy::start(http.port());

    put_secret(&client, &sync_ns, "age", "demo.key", &demo_key()).await;
    let api = syncs(&client, &sync_ns);
    create_sync(
        &api,
        "app",
        serde_json::json!({
            "source": {"url": format!("http://127.0.0.1:{}/app.git", proxy.port)},
            "environment": "dev",
            "interval": "1h",
            "decryption": {"secretRef": {"name": "age"}},
        }),
    )
    .await;
    let home = tempfile::tempdir().expect("tempdir");
    let _controller = spawn_loop(
        &controller_kubeconfig,
        &["-n", &sync_ns],
        free_port(),
        home.path(),
        "controller",
        &[],
    );
    let first = head(repo.path());
    wait_applied(&api, "app", &first, "the first commit").await;
    let admin = &cluster.kubeconfig;
    let sync_now = || {
        let (ok, out, err) = cli_as(admin, &["sync", "-n", &sync_ns, "app", "--timeout", "60s"]);
        assert!(ok, "{out}{err}");
    };
    let mode = async || settings_mode(&client, &target).await;
    let rollback_to = |rev: &str| {
        cli_as(
            admin,
            &[
                "rollback",
                "-n",
                &sync_ns,
                "app",
                "--to",
                rev,
                "--timeout",
                "60s",
            ],
        )
    };
    for m in ["two", "three"] {
        commit_settings(repo.path(), m);
        push();
        sync_now();
    }
    let third = head(repo.path());
    assert_eq!(mode().await, "three");

    // Back to the first commit, by the start of its id as `lockstep history` shows it.
    let (ok, out, err) = rollback_to(&first[..10]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("Ready (RolledBack)"), "{out}");
    assert_eq!(mode().await, "one");
    let sync = api.get("app").await.expect("sync");
    let rollback = &sync.data["status"]["rollback"];
    assert_eq!(rollback["state"], "Pinned", "{rollback}");
    assert_eq!(rollback["revision"], first.as_str());
    assert_eq!(rollback["from"], third.as_str());
    assert_eq!(rollback["requestedBy"], "lockstep-test-admin", "{rollback}");
    assert_eq!(sync.data["status"]["lastAppliedRevision"], first.as_str());
    assert_eq!(ready(&sync).1, "RolledBack");
    let (ok, shown, err) = cli_as(admin, &["status", "-n", &sync_ns, "app"]);
    assert!(ok, "{err}");
    assert!(
        shown.contains(&format!(
            "pinned: to {} from {} by lockstep-test-admin",
            &first[..7],
            &third[..7]
        )),
        "{shown}"
    );

    // A poll of the unchanged branch keeps the pin.
    sync_now();
    assert_eq!(mode().await, "one");
    assert_eq!(ready(&api.get("app").await.expect("sync")).1, "RolledBack");

    // A newer commit ends it: the Sync follows the branch again.
    commit_settings(repo.path(), "four");
    push();
    let fourth = head(repo.path());
    sync_now();
    assert_eq!(mode().await, "four");
    let sync = api.get("app").await.expect("sync");
    assert_eq!(ready(&sync).1, "Succeeded");
    assert_eq!(sync.data["status"]["rollback"]["state"], "Ended");
    assert!(
        !sync
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("lockstep.dev/rollback"),
        "the controller removes the request once it is over"
    );
    assert_eq!(sync.data["status"]["lastAppliedRevision"], fourth.as_str());

    // The Git server is gone: the rollback says why it cannot be done, and nothing changes.
    proxy.cut();
    let (ok, out, err) = rollback_to(&first);
    assert!(!ok, "{out}");
    for needle in [
        "refused, nothing was changed",
        "FetchFailed",
        "needs the Git server",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in: {err}");
    }
    assert_eq!(mode().await, "four");
    proxy.restore();
    sync_now();

    // A reseal: the secrets move to a new key, and the decryption Secret holds only that one.
    let keys = tempfile::tempdir().expect("tempdir");
    let (second_key, second_recipient) = new_key(keys.path());
    std::fs::write(
        repo.path().join(".sops.yaml"),
        format!("creation_rules:\n  - path_regex: environments/.*/secrets\\.yaml$\n    age: {second_recipient}\n"),
    )
    .expect("write");
    std::fs::write(keys.path().join("demo.key"), demo_key()).expect("write");
    let resealed = Command::new(BIN)
        .args(["reseal", "--identity"])
        .arg(keys.path().join("demo.key"))
        .current_dir(repo.path())
        .env("HOME", keys.path())
        .env_remove("SOPS_AGE_KEY_FILE")
        .env_remove("SOPS_AGE_KEY")
        .output()
        .expect("reseal");
    support::assert_success(&resealed);
    git(repo.path(), &["commit", "-q", "-am", "reseal"]);
    push();
    put_secret(&client, &sync_ns, "age", "second.key", &second_key).await;
    Api::<Secret>::namespaced(client.clone(), &sync_ns)
        .patch(
            "age",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"demo.key": null}})),
        )
        .await
        .expect("drop the old key");
    sync_now();
    let resealed_head = head(repo.path());
    wait_applied(&api, "app", &resealed_head, "the resealed commit").await;

    // Rolling back past the reseal is refused before anything is touched, with the reason.
    let (ok, out, err) = rollback_to(&fourth);
    assert!(!ok, "{out}");
    for needle in [
        "refused, nothing was changed",
        "DecryptFailed",
        "after a reseal",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in: {err}");
    }
    let sync = api.get("app").await.expect("sync");
    assert_eq!(ready(&sync).0, "True", "still Ready at the resealed commit");
    assert_eq!(
        sync.data["status"]["lastAppliedRevision"],
        resealed_head.as_str()
    );
    assert_eq!(sync.data["status"]["rollback"]["state"], "Refused");
    assert!(!err.contains(marker) && !out.contains(marker));
    let status_text = serde_json::to_string(&sync.data["status"]).unwrap_or_default();
    assert!(!status_text.contains(marker), "{status_text}");
}
