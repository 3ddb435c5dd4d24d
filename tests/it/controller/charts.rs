//! The controller syncs a project with a Helm chart from Git: the chart's values templates are
//! checked in the render probe, the chart is rendered by the real Helm, its Secret gets the real
//! value only at apply (rendered twice and compared), and no value reaches the status or the log.
//! Charts from a repository behind Basic auth and from an OCI registry, both over TLS, are fetched
//! with the logins and CA of the Sync's charts Secret.

use super::*;

use base64::Engine as _;

#[tokio::test]
async fn a_sync_applies_a_chart_with_a_sealed_value_from_git() {
    let helm = need!("helm", support::peer("helm"));
    let Fixture {
        cluster,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("chart-syncs").await);
    let target = cluster.namespace(&client, "chart-apps").await;
    let repo = tempfile::tempdir().expect("tempdir");
    let password = "Controller-Chart-Marker-51c2";
    crate::charts::secret_chart_project(repo.path(), &target, password);
    commit_all(repo.path(), "a chart");
    put_secret(&client, &sync_ns, "age-key", "key", &demo_key()).await;
    let api = syncs(&client, &sync_ns);
    create_local_sync(
        &api,
        "db",
        repo.path(),
        serde_json::json!({"decryption": {"secretRef": {"name": "age-key"}}}),
    )
    .await;
    let helm = helm.to_string_lossy().into_owned();
    let log = sync_local_once(
        &controller_kubeconfig,
        &sync_ns,
        &[("LOCKSTEP_HELM", &helm)],
    );
    let sync = api.get("db").await.expect("get");
    assert_eq!(ready(&sync).0, "True", "{:?}", ready(&sync));
    assert_eq!(
        sync.data["status"]["lastAppliedRevision"],
        head(repo.path()).as_str()
    );
    let secret = Api::<Secret>::namespaced(client.clone(), &target)
        .get("db-auth")
        .await
        .expect("the chart's Secret");
    let data = secret.data.unwrap_or_default();
    assert_eq!(data["password"].0, password.as_bytes());
    assert_eq!(
        data["dsn"].0,
        format!("postgres://app:{password}@db:5432/app").as_bytes()
    );
    let status = sync.data["status"].to_string();
    assert!(
        !log.contains(password) && !status.contains(password),
        "{log}\n{status}"
    );
}

#[tokio::test]
async fn a_sync_fetches_charts_from_a_repository_and_a_registry_with_its_secret() {
    use crate::chart_sources::{Env, package, repo_index};
    use crate::support::gitserver::{GitHttp, Registry};
    let helm = need!("helm", support::peer("helm"));
    let registry_bin = need!("the Distribution registry", support::peer("registry"));
    let Fixture {
        cluster,
        client,
        controller_kubeconfig,
        sync_ns,
        _creds,
    } = need!("control plane", fixture("chart-sources").await);
    let target = cluster.namespace(&client, "chart-sourced").await;

    // A repository behind Basic auth, and a registry, each with its own CA.
    let served = tempfile::tempdir().expect("tempdir");
    let archive = package(&helm, served.path(), None);
    let server = GitHttp::start_files_tls(served.path(), Some(("charts", "s3cret")));
    repo_index(&helm, served.path(), &server.url(""));
    let registry = Registry::start(&registry_bin);
    let scratch = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(&helm)
        .arg("push")
        .arg(&archive)
        .arg(format!("oci://{}/charts", registry.host()))
        .arg("--ca-file")
        .arg(registry.ca_file())
        .env("HOME", scratch.path())
        .output()
        .expect("helm push");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cas = std::fs::read(server.ca_file().expect("tls")).expect("ca");
    cas.extend(std::fs::read(registry.ca_file()).expect("ca"));
    let bundle = scratch.path().join("cas.pem");
    std::fs::write(&bundle, &cas).expect("write");

    // The project, locked by the CLI, committed.
    let repo = tempfile::tempdir().expect("tempdir");
    let url = server.url("").trim_end_matches('/').to_string();
    std::fs::write(
        repo.path().join("lockstep.yaml"),
        format!(
            "project: sourced\nenvironments:\n  dev: {{namespace: {target}}}\ncharts:\n  front:\n    repo: {url}\n    chart: web\n    version: 1.2.3\n  back:\n    chart: oci://{}/charts/web\n    version: 1.2.3\n",
            registry.host()
        ),
    )
    .expect("write");
    let env = Env {
        helm: helm.clone(),
        home: tempfile::tempdir().expect("tempdir"),
        ca: bundle.clone(),
    };
    env.login(&url, "charts", "s3cret");
    let out = env.run(&["charts", "update", &repo.path().to_string_lossy()]);
    support::assert_success(&out);
    git(repo.path(), &["init", "-q", "-b", "main"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "remote charts"]);

    // The Sync's Secret: the login by host, and both CAs.
    let host = url.trim_start_matches("https://");
    let auth = base64::engine::general_purpose::STANDARD.encode("charts:s3cret");
    let docker = serde_json::json!({"auths": {host: {"auth": auth}}}).to_string();
    put_secret_data(
        &client,
        &sync_ns,
        "chart-access",
        serde_json::json!({
            ".dockerconfigjson": docker,
            "ca.crt": String::from_utf8(cas.clone()).expect("PEM"),
        }),
    )
    .await;
    let api = syncs(&client, &sync_ns);
    create_local_sync(
        &api,
        "sourced",
        repo.path(),
        serde_json::json!({"charts": {"secretRef": {"name": "chart-access"}}}),
    )
    .await;
    let home = tempfile::tempdir().expect("tempdir");
    let helm_path = helm.to_string_lossy().into_owned();
    let out = controller_with(
        &controller_kubeconfig,
        &sync_ns,
        &home.path().join("git-cache"),
        home.path(),
        &["--allow-local-sources"],
        &[("LOCKSTEP_HELM", &helm_path)],
    );
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    let sync = api.get("sourced").await.expect("get");
    assert_eq!(ready(&sync).0, "True", "{:?}\n{log}", ready(&sync));
    let deployments =
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &target);
    for name in ["front", "back"] {
        deployments
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("Deployment {name}: {e}"));
    }
    assert!(!log.contains("s3cret"), "{log}");
    // Nothing of the controller's chart cache is on disk.
    let tgz: Vec<_> = support::files_under(home.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "tgz"))
        .collect();
    assert!(tgz.is_empty(), "{tgz:?}");
}
