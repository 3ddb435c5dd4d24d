//! The controller syncs a project with a Helm chart from Git: the chart's values templates are
//! checked in the render probe, the chart is rendered by the real Helm, its Secret gets the real
//! value only at apply (rendered twice and compared), and no value reaches the status or the log.

use super::*;

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
    git(repo.path(), &["init", "-q", "-b", "main"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "a chart"]);
    put_secret(&client, &sync_ns, "age-key", "key", &demo_key()).await;
    let api = syncs(&client, &sync_ns);
    create_local_sync(
        &api,
        "db",
        repo.path(),
        serde_json::json!({"decryption": {"secretRef": {"name": "age-key"}}}),
    )
    .await;
    let home = tempfile::tempdir().expect("tempdir");
    let helm = helm.to_string_lossy().into_owned();
    let out = controller_with(
        &controller_kubeconfig,
        &sync_ns,
        &home.path().join("git-cache"),
        home.path(),
        &["--allow-local-sources"],
        &[("LOCKSTEP_HELM", &helm)],
    );
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
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
