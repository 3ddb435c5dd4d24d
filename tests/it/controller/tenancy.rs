//! A Sync with a ServiceAccount can do only what that account may.

use super::*;

#[tokio::test]
async fn a_sync_with_a_service_account_can_do_only_what_that_account_may() {
    let Fixture {
        cluster,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("tenant-syncs").await);
    let target = cluster.namespace(&client, "tenant-apps").await;
    let repo = tiny_repo(&target);
    let home = tempfile::tempdir().expect("tempdir");
    let cache = home.path().join("git-cache");
    // The tenant's ServiceAccount may manage ConfigMaps in its own namespace and nothing else.
    let sa: k8s_openapi::api::core::v1::ServiceAccount = serde_json::from_value(
        serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "tenant"}}),
    )
    .expect("sa");
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), &sync_ns)
        .create(&Default::default(), &sa)
        .await
        .expect("create sa");
    grant(
        &client,
        &target,
        "tenant-admin",
        manage_config_maps(),
        (&sync_ns, "tenant"),
    )
    .await;
    // RBAC takes effect asynchronously: wait until the API server agrees.
    let reviews: Api<k8s_openapi::api::authorization::v1::SubjectAccessReview> =
        Api::all(client.clone());
    let review: k8s_openapi::api::authorization::v1::SubjectAccessReview =
        serde_json::from_value(serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {
                "user": format!("system:serviceaccount:{sync_ns}:tenant"),
                "resourceAttributes": {"verb": "patch", "resource": "configmaps", "namespace": target}
            }
        }))
        .expect("review");
    wait_for("the tenant's RoleBinding", async || {
        reviews
            .create(&Default::default(), &review)
            .await
            .is_ok_and(|r| r.status.is_some_and(|s| s.allowed))
    })
    .await;
    let api = syncs(&client, &sync_ns);
    create_local_sync(
        &api,
        "tiny",
        repo.path(),
        serde_json::json!({"serviceAccountName": "tenant"}),
    )
    .await;
    let out = controller(&controller_kubeconfig, &sync_ns, &cache, home.path());
    assert!(
        out.status.success(),
        "{}\n{:?}",
        String::from_utf8_lossy(&out.stderr),
        ready(&api.get("tiny").await.expect("get"))
    );
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), &target);
    let settings = config_maps.get("settings").await.expect("applied");
    // The object was written by the impersonated ServiceAccount, as field manager lockstep.
    assert!(
        settings
            .metadata
            .managed_fields
            .unwrap_or_default()
            .iter()
            .any(|m| m.manager.as_deref() == Some("lockstep")),
    );

    // A commit reaching into another namespace: refused by the API server for that account, with
    // verb, resource and namespace named; nothing changes.
    std::fs::write(
        repo.path().join("templates/settings.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: two}\n",
    )
    .expect("write");
    std::fs::write(
        repo.path().join("templates/escape.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: escape, namespace: default}\ndata: {x: y}\n",
    )
    .expect("write");
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "escape"]);
    let out = controller(&controller_kubeconfig, &sync_ns, &cache, home.path());
    let message = failed_with(&out, &api, "tiny", "ValidationFailed").await;
    assert!(
        message.contains("forbidden")
            && message.contains(&format!("system:serviceaccount:{sync_ns}:tenant"))
            && message.contains("configmaps")
            && message.contains("\"default\""),
        "{message}"
    );
    assert_eq!(
        config_maps
            .get("settings")
            .await
            .expect("cm")
            .data
            .unwrap_or_default()["mode"],
        "one",
        "nothing was applied"
    );
    let defaults: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "default");
    assert!(defaults.get_opt("escape").await.expect("get").is_none());

    // With --default-service-account, a Sync that names no account acts as that one in its own
    // namespace, not as the controller: the same commit is refused the same way.
    // (A project of its own: one environment of one project belongs to one Sync.)
    let plain_repo = project_repo(
        "plain",
        &target,
        &[(
            "escape.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: escape, namespace: default}\ndata: {x: y}\n",
        )],
    );
    create_local_sync(&api, "plain", plain_repo.path(), serde_json::json!({})).await;
    let out = controller_with(
        &controller_kubeconfig,
        &sync_ns,
        &cache,
        home.path(),
        &[
            "--allow-local-sources",
            "--default-service-account",
            "tenant",
        ],
        &[],
    );
    let message = failed_with(&out, &api, "plain", "ValidationFailed").await;
    assert!(
        message.contains("forbidden")
            && message.contains(&format!("system:serviceaccount:{sync_ns}:tenant")),
        "{message}"
    );
    assert!(defaults.get_opt("escape").await.expect("get").is_none());

    // With --require-service-account, a Sync that would act as the controller is refused before
    // anything is fetched, saying what to do.
    let out = controller_with(
        &controller_kubeconfig,
        &sync_ns,
        &cache,
        home.path(),
        &["--allow-local-sources", "--require-service-account"],
        &[],
    );
    let message = failed_with(&out, &api, "plain", "FetchFailed").await;
    assert!(
        message.contains("spec.serviceAccountName is required by this controller")
            && message.contains(&format!("namespace {sync_ns}")),
        "{message}"
    );
}

/// Creates ServiceAccount `name` in `ns` with no rights at all.
async fn bare_service_account(client: &kube::Client, ns: &str, name: &str) {
    let sa: k8s_openapi::api::core::v1::ServiceAccount = serde_json::from_value(
        serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}),
    )
    .expect("sa");
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), ns)
        .create(&Default::default(), &sa)
        .await
        .expect("create sa");
}

/// Lets ServiceAccount `sa` of `ns` read Secret `secret` there.
async fn grant_secret(client: &kube::Client, ns: &str, sa: &str, secret: &str) {
    let rules = serde_json::json!([{"apiGroups": [""], "resources": ["secrets"],
                                    "resourceNames": [secret], "verbs": ["get"]}]);
    grant(client, ns, &format!("read-{secret}"), rules, (ns, sa)).await;
}

/// The rules of a Role that manages ConfigMaps.
fn manage_config_maps() -> serde_json::Value {
    serde_json::json!([{"apiGroups": [""], "resources": ["configmaps"],
                        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}])
}

/// Creates Role `name` with `rules` in `ns` and binds it to ServiceAccount `account` (namespace,
/// name).
async fn grant(
    client: &kube::Client,
    ns: &str,
    name: &str,
    rules: serde_json::Value,
    account: (&str, &str),
) {
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": name}, "rules": rules
    }))
    .expect("role");
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(client.clone(), ns)
        .create(&Default::default(), &role)
        .await
        .expect("create role");
    let binding: k8s_openapi::api::rbac::v1::RoleBinding =
        serde_json::from_value(serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": account.1, "namespace": account.0}]
        }))
        .expect("binding");
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client.clone(), ns)
        .create(&Default::default(), &binding)
        .await
        .expect("create binding");
}

/// The webhook token is read with the Sync's ServiceAccount (a Sync cannot borrow a Secret its
/// account may not read), a short token is never accepted, and with `--metrics-listen` the
/// webhook's port serves no metrics.
#[tokio::test]
async fn webhook_tokens_are_read_as_the_sync_and_metrics_are_served_apart() {
    let Fixture {
        cluster,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("tenant-hooks").await);
    let target = cluster.namespace(&client, "tenant-hook-apps").await;
    let repo = tiny_repo(&target);
    let home = tempfile::tempdir().expect("tempdir");
    bare_service_account(&client, &sync_ns, "hooker").await;
    let token = "hook-token-of-the-tenant-0123";
    put_secret(&client, &sync_ns, "hook", "token", token).await;
    put_secret(&client, &sync_ns, "short", "token", "short-tok").await;
    let api = syncs(&client, &sync_ns);
    for (name, secret) in [("hooked", "hook"), ("shorty", "short")] {
        create_local_sync(
            &api,
            name,
            repo.path(),
            serde_json::json!({
                "serviceAccountName": "hooker",
                "interval": "1h",
                "webhook": {"secretRef": {"name": secret}},
            }),
        )
        .await;
    }
    let (port, metrics_port) = (free_port(), free_port());
    let _controller = spawn_loop(
        &controller_kubeconfig,
        &["-n", &sync_ns],
        port,
        home.path(),
        "controller",
        &["--metrics-listen", &format!("127.0.0.1:{metrics_port}")],
    );
    wait_for("the controller to be ready", async || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http(port, "GET", "/readyz", &[], b"").0 == 200
    })
    .await;
    let body = br#"{"ref":"refs/heads/main"}"#;
    let post = |name: &str, key: &str| {
        let signature = hook_signature(body, key.as_bytes());
        http(
            port,
            "POST",
            &format!("/hook/{sync_ns}/{name}"),
            &[("X-Hub-Signature-256", signature.as_str())],
            body,
        )
    };
    // The account may not read the Secret: a correctly signed request is refused like any other.
    assert_eq!(post("hooked", token).0, 401);
    assert_eq!(post("shorty", "short-tok").0, 401, "a short token");
    grant_secret(&client, &sync_ns, "hooker", "hook").await;
    grant_secret(&client, &sync_ns, "hooker", "short").await;
    let mut accepted = false;
    for _ in 0..40 {
        if post("hooked", token).0 == 202 {
            accepted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(
        accepted,
        "once the account may read its Secret, the hook is accepted"
    );
    assert_eq!(post("shorty", "short-tok").0, 401, "still too short");
    assert_eq!(http(port, "GET", "/metrics", &[], b"").0, 404);
    let (code, metrics) = http(metrics_port, "GET", "/metrics", &[], b"");
    assert_eq!(code, 200);
    assert!(metrics.contains("lockstep_"), "{metrics}");
    assert!(!metrics.contains(token));
    assert_eq!(
        http(
            metrics_port,
            "POST",
            &format!("/hook/{sync_ns}/hooked"),
            &[],
            body
        )
        .0,
        404
    );
}

/// 100 concurrent slow 2 MB webhook POSTs: each is answered (413 past the body limit, 429 past the
/// concurrency limit), `/healthz` answers throughout, and the process stays up.
#[tokio::test]
async fn a_flood_of_slow_large_webhook_posts_leaves_the_controller_answering() {
    let Fixture {
        cluster: _,
        client: _,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("hook-flood").await);
    let home = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut controller = spawn_loop(
        &controller_kubeconfig,
        &["-n", &sync_ns],
        port,
        home.path(),
        "controller",
        &[],
    );
    wait_for("the controller to be ready", async || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http(port, "GET", "/readyz", &[], b"").0 == 200
    })
    .await;
    let path = format!("/hook/{sync_ns}/nobody");
    let flood: Vec<_> = (0..100)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || -> String {
                use std::io::{Read, Write};
                let size = 2_000_000;
                let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                    return "refused".into();
                };
                let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\nX-Gitlab-Token: wrong-token-0123456789\r\n\r\n");
                let _ = s.write_all(head.as_bytes());
                let piece = vec![b'x'; 65536];
                let mut sent = 0;
                while sent < size && s.write_all(&piece).is_ok() {
                    sent += piece.len();
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                let mut answer = [0u8; 64];
                let n = s.read(&mut answer).unwrap_or(0);
                String::from_utf8_lossy(&answer[..n]).split_whitespace().nth(1).unwrap_or("closed").to_string()
            })
        })
        .collect();
    let mut healthy = true;
    while flood.iter().any(|t| !t.is_finished()) {
        healthy &= http(port, "GET", "/healthz", &[], b"").0 == 200;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let answers: Vec<String> = flood
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    assert!(healthy, "/healthz stopped answering during the flood");
    assert!(
        answers.iter().all(|a| a == "413" || a == "429"),
        "{answers:?}"
    );
    assert!(
        controller.0.try_wait().expect("wait").is_none(),
        "the controller is running"
    );
    // Afterwards an unknown Sync and a wrongly signed request get the same answer.
    assert_eq!(
        http(
            port,
            "POST",
            &path,
            &[("X-Gitlab-Token", "wrong-token-0123456789")],
            b"{}"
        )
        .0,
        401
    );
}

/// With the install's `tenantNamespaces`, the controller may impersonate ServiceAccounts only in
/// those namespaces (a Role in each, no cluster-wide `impersonate`: kube-system's accounts are out
/// of its reach, as the API server's own access review confirms), and a Sync elsewhere is refused
/// before anything is read for it.
#[tokio::test]
async fn tenant_namespaces_bound_whom_the_controller_may_impersonate() {
    let private = need!("control plane", support::PrivateCluster::start());
    let cluster = &private.cluster;
    let client = cluster.admin().await;
    let home = tempfile::tempdir().expect("tempdir");
    let tenant = cluster.namespace(&client, "tenant").await;
    let outsider = cluster.namespace(&client, "outsider").await;
    let out = support::run_isolated(
        Path::new(BIN),
        &[
            "install",
            "--apply",
            "--wait=false",
            "--set",
            "applyAs=impersonate",
            "--set-string",
            &format!("tenantNamespaces={tenant}"),
            "--kubeconfig",
            &cluster.kubeconfig.to_string_lossy(),
        ],
        &[],
        home.path(),
    );
    support::assert_success(&out);
    let deployment: Deployment = Api::namespaced(client.clone(), "lockstep-system")
        .get("lockstep-controller")
        .await
        .expect("the installed Deployment");
    let args = deployment
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().next())
        .and_then(|c| c.args)
        .unwrap_or_default();
    let flag = format!("--tenant-namespaces={tenant}");
    assert!(args.contains(&flag), "{args:?}");
    let creds = tempfile::tempdir().expect("tempdir");
    let kubeconfig = cluster
        .service_account_kubeconfig(
            &client,
            "lockstep-system",
            "lockstep-controller",
            creds.path(),
        )
        .await;

    // Whom the controller may impersonate, in the API server's own words.
    let reviews: Api<k8s_openapi::api::authorization::v1::SubjectAccessReview> =
        Api::all(client.clone());
    let may_impersonate = async |ns: &str| {
        let review = serde_json::from_value(serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {
                "user": "system:serviceaccount:lockstep-system:lockstep-controller",
                "resourceAttributes": {"verb": "impersonate", "resource": "serviceaccounts",
                                       "namespace": ns, "name": "deployer"}
            }
        }))
        .expect("review");
        reviews
            .create(&Default::default(), &review)
            .await
            .expect("review")
            .status
            .is_some_and(|s| s.allowed)
    };
    wait_for("the tenant's impersonation Role", async || {
        may_impersonate(&tenant).await
    })
    .await;
    assert!(
        !may_impersonate("kube-system").await,
        "kube-system is out of reach"
    );
    assert!(!may_impersonate(&outsider).await);

    // A deployer that may manage ConfigMaps, in both namespaces.
    for ns in [&tenant, &outsider] {
        bare_service_account(&client, ns, "deployer").await;
        grant(
            &client,
            ns,
            "deployer",
            manage_config_maps(),
            (ns, "deployer"),
        )
        .await;
    }
    let cache = home.path().join("git-cache");
    let run = |ns: &str| {
        controller_with(
            &kubeconfig,
            ns,
            &cache,
            home.path(),
            &["--allow-local-sources", "--require-service-account", &flag],
            &[],
        )
    };
    // The tenant's Sync applies as its deployer…
    let repo = tiny_repo(&tenant);
    let api = syncs(&client, &tenant);
    create_local_sync(
        &api,
        "tiny",
        repo.path(),
        serde_json::json!({"serviceAccountName": "deployer"}),
    )
    .await;
    let out = run(&tenant);
    support::assert_success(&out);
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), &tenant);
    assert!(
        config_maps
            .get_opt("settings")
            .await
            .expect("get")
            .is_some()
    );
    // …the outsider's is refused before anything is read, naming what to do.
    let repo = tiny_repo(&outsider);
    let api = syncs(&client, &outsider);
    create_local_sync(
        &api,
        "tiny",
        repo.path(),
        serde_json::json!({"serviceAccountName": "deployer"}),
    )
    .await;
    let out = run(&outsider);
    let message = failed_with(&out, &api, "tiny", "FetchFailed").await;
    assert!(
        message.contains(&format!(
            "namespace {outsider} is not one of this controller's tenant namespaces"
        )) && message.contains("tenantNamespaces"),
        "{message}"
    );
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), &outsider);
    assert!(
        config_maps
            .get_opt("settings")
            .await
            .expect("get")
            .is_none()
    );
}
