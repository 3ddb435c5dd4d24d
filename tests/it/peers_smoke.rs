//! Smoke tests proving the peers are the real thing: a real kube-apiserver (server-side apply, RBAC),
//! a real controller-manager + scheduler + kwok (a Deployment becomes Available), and the real `sops`
//! and `age-keygen` CLIs (a round trip).

use crate::support;

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};

use support::{cluster, eventually, peer};

fn configmap(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {"greeting": value}
    }))
    .expect("configmap object")
}

#[tokio::test]
async fn server_side_apply_as_admin_and_service_account_refused_outside_its_namespace() {
    let cluster = need!("the control plane", cluster());
    let admin = cluster.admin().await;
    let ns = cluster.namespace(&admin, "smoke-ssa").await;

    // Admin: server-side apply, then read back what the API server stored.
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
    let applied = cms
        .patch(
            "hello",
            &PatchParams::apply("lockstep-test"),
            &Patch::Apply(configmap("hello", "hi")),
        )
        .await
        .expect("server-side apply as admin");
    let managers: Vec<_> = applied
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager.zip(m.operation))
        .collect();
    assert!(
        managers.contains(&("lockstep-test".to_string(), "Apply".to_string())),
        "field manager recorded by the server: {managers:?}"
    );
    let read = cms.get("hello").await.expect("read back");
    assert_eq!(
        read.data
            .unwrap_or_default()
            .get("greeting")
            .map(String::as_str),
        Some("hi")
    );

    // A ServiceAccount allowed to manage ConfigMaps in its own namespace only.
    let role: Role = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "deployer"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                   "verbs": ["get", "list", "create", "patch", "update"]}]
    }))
    .expect("role");
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .expect("create role");
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "deployer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "deployer"},
        "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": ns}]
    }))
    .expect("rolebinding");
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("create rolebinding");

    let dir = tempfile::tempdir().expect("tempdir");
    let sa_kubeconfig = cluster
        .service_account_kubeconfig(&admin, &ns, "deployer", dir.path())
        .await;
    let sa = support::client_for(&sa_kubeconfig)
        .await
        .expect("service account client");

    // Inside its namespace the token works (so the refusal below is RBAC, not a broken token). The
    // authorizer learns of new Roles through a watch, so the first attempts may still be refused.
    let own = Api::<ConfigMap>::namespaced(sa.clone(), &ns);
    eventually(
        "the new Role to reach the RBAC authorizer",
        Duration::from_secs(30),
        || {
            let own = own.clone();
            async move {
                own.patch(
                    "from-sa",
                    &PatchParams::apply("lockstep-test"),
                    &Patch::Apply(configmap("from-sa", "ok")),
                )
                .await
                .ok()
            }
        },
    )
    .await;

    // Outside it: 403 Forbidden from the real authorizer.
    let other = cluster.namespace(&admin, "smoke-other").await;
    let err = Api::<ConfigMap>::namespaced(sa, &other)
        .patch(
            "intruder",
            &PatchParams::apply("lockstep-test"),
            &Patch::Apply(configmap("intruder", "no")),
        )
        .await
        .expect_err("service account must be refused outside its namespace");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert!(
                status
                    .message
                    .contains(&format!("system:serviceaccount:{ns}:deployer")),
                "{status:?}"
            );
        }
        other => panic!("expected a 403 from the API server, got {other}"),
    }
}

#[tokio::test]
async fn deployment_with_one_replica_becomes_available() {
    let cluster = need!("the control plane", cluster());
    let admin = cluster.admin().await;
    let ns = cluster.namespace(&admin, "smoke-deploy").await;
    let deploy: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]}
            }
        }
    }))
    .expect("deployment object");
    let api: Api<Deployment> = Api::namespaced(admin, &ns);
    api.patch(
        "web",
        &PatchParams::apply("lockstep-test"),
        &Patch::Apply(deploy),
    )
    .await
    .expect("apply deployment");

    let status = eventually(
        "Deployment web to become Available",
        Duration::from_secs(120),
        || {
            let api = api.clone();
            async move {
                let d = api.get("web").await.ok()?;
                let status = d.status?;
                let available = status
                    .conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Available" && c.status == "True");
                (available && status.available_replicas == Some(1)).then_some(status.ready_replicas)
            }
        },
    )
    .await;
    assert_eq!(status, Some(1));
}

#[test]
fn sops_encrypts_with_an_age_key_from_age_keygen_and_decrypts_it_back() {
    let sops = need!("sops", peer("sops"));
    let keygen = need!("age-keygen", peer("age-keygen"));
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("keys.txt");

    let out = Command::new(&keygen)
        .arg("-o")
        .arg(&key)
        .output()
        .expect("run age-keygen");
    assert!(
        out.status.success(),
        "age-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key_text = std::fs::read_to_string(&key).expect("read key");
    let recipient = key_text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("age-keygen writes the public key comment")
        .to_string();
    assert!(recipient.starts_with("age1"), "{recipient}");
    assert!(key_text.contains("AGE-SECRET-KEY-1"));

    let plain = "db:\n    password: smoke-marker-5f1e\n    port: 5432\n";
    let file = dir.path().join("secrets.yaml");
    std::fs::write(&file, plain).expect("write plaintext");

    let enc = Command::new(&sops)
        .args(["--encrypt", "--age", &recipient])
        .arg(&file)
        .env_remove("SOPS_AGE_KEY_FILE")
        .env_remove("SOPS_AGE_KEY")
        .output()
        .expect("run sops --encrypt");
    assert!(
        enc.status.success(),
        "sops --encrypt: {}",
        String::from_utf8_lossy(&enc.stderr)
    );
    let cipher = String::from_utf8(enc.stdout).expect("utf-8 ciphertext");
    assert!(
        !cipher.contains("smoke-marker-5f1e"),
        "plaintext leaked:\n{cipher}"
    );
    assert!(
        cipher.contains("password: ENC[AES256_GCM,data:"),
        "{cipher}"
    );
    assert!(cipher.contains("port: ENC[AES256_GCM,data:"), "{cipher}");
    assert!(cipher.contains(&recipient), "{cipher}");
    assert!(
        cipher.contains("-----BEGIN AGE ENCRYPTED FILE-----"),
        "{cipher}"
    );

    let enc_file = dir.path().join("secrets.enc.yaml");
    std::fs::write(&enc_file, &cipher).expect("write ciphertext");
    let dec = Command::new(&sops)
        .args(["--decrypt"])
        .arg(&enc_file)
        .env("SOPS_AGE_KEY_FILE", &key)
        .output()
        .expect("run sops --decrypt");
    assert!(
        dec.status.success(),
        "sops --decrypt: {}",
        String::from_utf8_lossy(&dec.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&dec.stdout), plain);

    // Without the key it must fail: the file really is encrypted.
    let nokey = Command::new(&sops)
        .args(["--decrypt"])
        .arg(&enc_file)
        .env("SOPS_AGE_KEY_FILE", dir.path().join("absent.txt"))
        .env("XDG_CONFIG_HOME", dir.path())
        .env_remove("SOPS_AGE_KEY")
        .output()
        .expect("run sops --decrypt without key");
    assert!(!nokey.status.success(), "decrypted without the key");
}

#[test]
fn keys_example_is_a_matching_age_key_pair() {
    let keygen = need!("age-keygen", peer("age-keygen"));
    let age = need!("age", peer("age"));
    let key = support::repo_root().join("keys-example/age.key");
    let recipient = std::fs::read_to_string(support::repo_root().join("keys-example/age.pub"))
        .expect("keys-example/age.pub")
        .trim()
        .to_string();
    let key_text = std::fs::read_to_string(&key).expect("keys-example/age.key");
    assert!(
        key_text.starts_with("# TEST AND DEMO ONLY"),
        "the example key must say it is for tests only"
    );

    // The real age-keygen derives the committed recipient from the committed identity.
    let out = Command::new(&keygen)
        .arg("-y")
        .arg(&key)
        .output()
        .expect("age-keygen -y");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), recipient);

    // And the real age encrypts to the recipient and decrypts with the identity.
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = dir.path().join("plain.txt");
    std::fs::write(&plain, "keys-example round trip").expect("write");
    let sealed = dir.path().join("plain.txt.age");
    let enc = Command::new(&age)
        .args(["-r", &recipient, "-o"])
        .arg(&sealed)
        .arg(&plain)
        .output()
        .expect("age -r");
    assert!(
        enc.status.success(),
        "{}",
        String::from_utf8_lossy(&enc.stderr)
    );
    let dec = Command::new(&age)
        .arg("-d")
        .arg("-i")
        .arg(&key)
        .arg(&sealed)
        .output()
        .expect("age -d");
    assert!(
        dec.status.success(),
        "{}",
        String::from_utf8_lossy(&dec.stderr)
    );
    assert_eq!(dec.stdout, b"keys-example round trip");
}
