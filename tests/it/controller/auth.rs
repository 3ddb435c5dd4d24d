//! Private repositories over HTTPS (basic auth) and SSH (deploy keys), and signed commits only.

use super::*;

#[tokio::test]
async fn private_repositories_over_https_auth_and_ssh_and_signed_commits_only() {
    use support::gitserver::{GitHttp, GitSsh, ssh_keypair};
    let Fixture {
        cluster: _,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("private").await);
    let home = tempfile::tempdir().expect("tempdir");
    let cache = home.path().join("git-cache");
    let served = tempfile::tempdir().expect("tempdir");
    put_secret(&client, &sync_ns, "age-key", "key", &demo_key()).await;
    let api = syncs(&client, &sync_ns);

    // Three repositories, each rendering into its own namespace, served from one directory.
    let pid = std::process::id();
    let mut work = Vec::new();
    for name in ["https", "ssh", "signed"] {
        let repo = shop_repo(&format!("shop-{name}-{pid}"));
        clone_bare(served.path(), repo.path(), &format!("{name}.git"));
        git(
            &served.path().join(format!("{name}.git")),
            &["config", "http.receivepack", "true"],
        );
        work.push(repo);
    }

    // HTTPS with basic auth (the server's CA handed to the controller as SSL_CERT_FILE): a wrong
    // password is a FetchFailed naming nothing secret…
    let http = GitHttp::start_tls(served.path(), Some(("deploy", "t0ken-4f9a")));
    let ca = http.ca_file().expect("a CA").to_string_lossy().into_owned();
    let run = || {
        controller_with(
            &controller_kubeconfig,
            &sync_ns,
            &cache,
            home.path(),
            &[],
            &[("SSL_CERT_FILE", ca.as_str())],
        )
    };
    put_secret_data(
        &client,
        &sync_ns,
        "https-creds",
        serde_json::json!({"username": "deploy", "password": "wrong"}),
    )
    .await;
    create_sync(
        &api,
        "https",
        serde_json::json!({
            "source": {"url": http.url("https.git"), "ref": {"branch": "main"},
                       "secretRef": {"name": "https-creds"}},
            "environment": "dev",
            "decryption": {"secretRef": {"name": "age-key"}}
        }),
    )
    .await;
    // SSH with a deploy key and the server's host key.
    let (key, public) = ssh_keypair(home.path());
    let ssh = GitSsh::start(served.path(), &public);
    put_secret_data(
        &client,
        &sync_ns,
        "ssh-creds",
        serde_json::json!({"identity": key, "known_hosts": ssh.known_hosts()}),
    )
    .await;
    create_sync(
        &api,
        "ssh",
        serde_json::json!({
            "source": {"url": ssh.url("ssh.git"), "secretRef": {"name": "ssh-creds"}},
            "environment": "dev",
            "decryption": {"secretRef": {"name": "age-key"}}
        }),
    )
    .await;
    // A local path is refused unless the controller allows local sources: another Sync's
    // repository or fetch on the controller's disk is no one else's business.
    create_sync(
        &api,
        "local",
        serde_json::json!({
            "source": {"url": format!("file://{}", served.path().join("ssh.git").display())},
            "environment": "dev"
        }),
    )
    .await;
    let out = run();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, reason, message) = ready(&api.get("local").await.expect("get"));
    assert_eq!((status.as_str(), reason.as_str()), ("False", "FetchFailed"));
    assert!(message.contains("--allow-local-sources"), "{message}");
    api.delete("local", &Default::default())
        .await
        .expect("delete");
    let (status, reason, message) = ready(&api.get("https").await.expect("get"));
    assert_eq!((status.as_str(), reason.as_str()), ("False", "FetchFailed"));
    assert!(!message.contains("wrong"), "{message}");
    assert!(
        http.requests().iter().any(|r| r.status == 401),
        "the server was asked and refused"
    );
    let (status, reason, message) = ready(&api.get("ssh").await.expect("get"));
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "Succeeded"),
        "{message}\n{}",
        ssh.log()
    );
    // …and the right one converges.
    put_secret_data(
        &client,
        &sync_ns,
        "https-creds",
        serde_json::json!({"username": "deploy", "password": "t0ken-4f9a"}),
    )
    .await;
    let out = run();
    assert!(
        out.status.success(),
        "{}\nhttps: {:?}\nssh: {:?}",
        String::from_utf8_lossy(&out.stderr),
        ready(&api.get("https").await.expect("get")),
        ready(&api.get("ssh").await.expect("get")),
    );
    let sync = api.get("https").await.expect("get");
    assert_eq!(ready(&sync).0, "True", "{:?}", ready(&sync));
    assert_eq!(
        sync.data["status"]["lastAppliedRevision"],
        head(work[0].path()).as_str()
    );
    // SSH without known_hosts is refused before connecting.
    put_secret_data(
        &client,
        &sync_ns,
        "ssh-creds",
        serde_json::json!({"identity": key, "known_hosts": ""}),
    )
    .await;
    let out = run();
    let message = failed_with(&out, &api, "ssh", "FetchFailed").await;
    assert!(message.contains("known_hosts"), "{message}");
    api.delete("https", &Default::default())
        .await
        .expect("delete");
    api.delete("ssh", &Default::default())
        .await
        .expect("delete");

    // Signed commits only: the trusted signer's key in allowed_signers form.
    let (signing_key, signing_public) = ssh_keypair(home.path());
    let key_file = home.path().join("signing-key");
    support::write_private(&key_file, &signing_key);
    put_secret_data(
        &client,
        &sync_ns,
        "signers",
        serde_json::json!({"allowed_signers": format!("release@example.com {signing_public}\n")}),
    )
    .await;
    create_sync(
        &api,
        "signed",
        serde_json::json!({
            "source": {"url": http.url("signed.git"), "secretRef": {"name": "https-creds"},
                       "verify": {"secretRef": {"name": "signers"}}},
            "environment": "dev",
            "decryption": {"secretRef": {"name": "age-key"}}
        }),
    )
    .await;
    let target = format!("shop-signed-{pid}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &target);
    // The repository's only commit is unsigned: VerifyFailed, Stalled, nothing applied.
    let out = run();
    let message = failed_with(&out, &api, "signed", "VerifyFailed").await;
    let sync = api.get("signed").await.expect("get");
    assert!(message.contains("not signed"), "{message}");
    assert!(
        sync.data["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs
                .iter()
                .any(|c| c["type"] == "Stalled" && c["status"] == "True")),
        "{}",
        sync.data["status"]
    );
    assert!(deployments.get_opt("web").await.expect("get").is_none());
    // A commit signed by the trusted key is applied.
    let repo = work[2].path();
    git(repo, &["remote", "add", "origin", &http.url("signed.git")]);
    // `git push -q [extra…] URL main [refs…]` to the signed repository.
    let push_with = |repo: &Path, extra: &[&str], refs: &[&str]| {
        let url = http
            .url("signed.git")
            .replace("https://", "https://deploy:t0ken-4f9a@");
        let out = Command::new("git")
            .args(["push", "-q"])
            .args(extra)
            .args([url.as_str(), "main"])
            .args(refs)
            .current_dir(repo)
            .env("GIT_SSL_CAINFO", &ca)
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()
            .expect("git push");
        assert!(
            out.status.success(),
            "git push: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let push = |repo: &Path| push_with(repo, &[], &[]);
    let commit_signed = |repo: &Path, key: &Path, message: &str| {
        git(
            repo,
            &[
                "-c",
                "gpg.format=ssh",
                "-c",
                &format!("user.signingkey={}", key.display()),
                "commit",
                "-q",
                "-S",
                "--allow-empty",
                "-m",
                message,
            ],
        );
    };
    commit_signed(repo, &key_file, "signed release");
    push(repo);
    let signed = head(repo);
    let out = run();
    support::assert_success(&out);
    let sync = api.get("signed").await.expect("get");
    assert_eq!(sync.data["status"]["lastAppliedRevision"], signed.as_str());
    assert!(
        !sync.data["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Stalled")),
        "{}",
        sync.data["status"]
    );
    let web_generation = deployments
        .get("web")
        .await
        .expect("web")
        .metadata
        .generation;
    // A commit signed by another key, changing the web Deployment: refused, the cluster unchanged.
    let (other_key, _) = ssh_keypair(home.path());
    let other_file = home.path().join("other-key");
    support::write_private(&other_file, &other_key);
    let values = repo.join("values.yaml");
    let text = std::fs::read_to_string(&values).expect("values");
    std::fs::write(&values, text.replacen("replicas: 1", "replicas: 4", 1)).expect("write");
    git(repo, &["add", "-A"]);
    commit_signed(repo, &other_file, "not trusted");
    push(repo);
    let out = run();
    let message = failed_with(&out, &api, "signed", "VerifyFailed").await;
    let sync = api.get("signed").await.expect("get");
    assert!(message.contains("not in the allowed signers"), "{message}");
    assert_eq!(sync.data["status"]["lastAppliedRevision"], signed.as_str());
    assert_eq!(
        deployments
            .get("web")
            .await
            .expect("web")
            .metadata
            .generation,
        web_generation,
        "a refused commit changes nothing"
    );

    // Rewinds: with requireFastForward, a trusted commit on top is applied…
    api.patch(
        "signed",
        &PatchParams::default(),
        &Patch::Merge(
            serde_json::json!({"spec": {"source": {"verify": {"requireFastForward": true}}}}),
        ),
    )
    .await
    .expect("requireFastForward");
    commit_signed(repo, &key_file, "trusted, on top");
    push(repo);
    let on_top = head(repo);
    support::assert_success(&run());
    let sync = api.get("signed").await.expect("get");
    assert_eq!(sync.data["status"]["lastAppliedRevision"], on_top.as_str());
    let replicas = |d: Deployment| d.spec.and_then(|s| s.replicas);
    assert_eq!(
        replicas(deployments.get("web").await.expect("web")),
        Some(4)
    );
    // …but moving the branch back to the older, validly signed release is NotFastForward: Stalled,
    // the cluster and lastAppliedRevision unchanged.
    git(repo, &["reset", "-q", "--hard", &signed]);
    push_with(repo, &["--force"], &[]);
    let out = run();
    let message = failed_with(&out, &api, "signed", "NotFastForward").await;
    assert!(
        message.contains(&on_top) && message.contains(&signed),
        "names both commits: {message}"
    );
    let sync = api.get("signed").await.expect("get");
    assert_eq!(sync.data["status"]["lastAppliedRevision"], on_top.as_str());
    assert_eq!(
        sync.data["status"]["lastAttemptedRevision"],
        signed.as_str()
    );
    assert!(
        sync.data["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs
                .iter()
                .any(|c| c["type"] == "Stalled" && c["status"] == "True")),
        "{}",
        sync.data["status"]
    );
    assert_eq!(
        replicas(deployments.get("web").await.expect("web")),
        Some(4),
        "the rewind changed nothing"
    );

    // Tag verification: a lightweight tag is refused, an annotated tag signed by the trusted key
    // is applied (its commit was signed by an untrusted key: verify.mode Tag checks the tag only).
    git(repo, &["reset", "-q", "--hard", &on_top]);
    let untrusted_commit = {
        std::fs::write(&values, text.replacen("replicas: 1", "replicas: 2", 1)).expect("write");
        git(repo, &["add", "-A"]);
        commit_signed(repo, &other_file, "released by tag");
        head(repo)
    };
    git(repo, &["tag", "light"]);
    git(
        repo,
        &[
            "-c",
            "gpg.format=ssh",
            "-c",
            &format!("user.signingkey={}", key_file.display()),
            "tag",
            "-s",
            "-m",
            "release 2",
            "v2",
        ],
    );
    push_with(repo, &["--force"], &["light", "v2"]);
    let by_tag = |tag: &str| {
        serde_json::json!({"spec": {"source": {"ref": {"tag": tag},
            "verify": {"mode": "Tag", "requireFastForward": true}}}})
    };
    api.patch(
        "signed",
        &PatchParams::default(),
        &Patch::Merge(by_tag("light")),
    )
    .await
    .expect("tag light");
    let message = failed_with(&run(), &api, "signed", "VerifyFailed").await;
    assert!(
        message.contains("tag light") && message.contains("lightweight"),
        "{message}"
    );
    api.patch(
        "signed",
        &PatchParams::default(),
        &Patch::Merge(by_tag("v2")),
    )
    .await
    .expect("tag v2");
    support::assert_success(&run());
    let sync = api.get("signed").await.expect("get");
    assert_eq!(
        sync.data["status"]["lastAppliedRevision"],
        untrusted_commit.as_str()
    );
    assert_eq!(
        replicas(deployments.get("web").await.expect("web")),
        Some(2)
    );
    // TagAndHEAD also checks the commit, which the trusted key did not sign.
    api.patch(
        "signed",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"source": {"verify": {"mode": "TagAndHEAD"}}}})),
    )
    .await
    .expect("TagAndHEAD");
    let message = failed_with(&run(), &api, "signed", "VerifyFailed").await;
    assert!(
        message.contains(&format!("commit {untrusted_commit}"))
            && message.contains("not in the allowed signers"),
        "{message}"
    );
}

#[tokio::test]
async fn the_hosts_git_configuration_plays_no_part_in_a_fetch() {
    let Fixture {
        cluster,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("isolated-git").await);
    let target = cluster.namespace(&client, "isolated-git-apps").await;
    let repo = tiny_repo(&target);
    let home = tempfile::tempdir().expect("tempdir");
    // A ~/.gitconfig that would send every fetch somewhere else.
    std::fs::write(
        home.path().join(".gitconfig"),
        "[url \"file:///nonexistent/\"]\n\tinsteadOf = file:///\n",
    )
    .expect("write");
    let api = syncs(&client, &sync_ns);
    create_local_sync(&api, "tiny", repo.path(), serde_json::json!({})).await;
    let out = controller(
        &controller_kubeconfig,
        &sync_ns,
        &home.path().join("git-cache"),
        home.path(),
    );
    support::assert_success(&out);
    let sync = api.get("tiny").await.expect("get");
    assert_eq!(
        sync.data["status"]["lastAppliedRevision"],
        head(repo.path()).as_str()
    );
}
