//! Kustomize overlays as a render source, with the real `kustomize` (the pinned peer): an overlay
//! tree renders to what `kustomize build` prints, object by object (bases, overlays, components,
//! strategic-merge and JSON 6902 patches, namespace, namePrefix, labels, images, replicas,
//! generators); a sealed reference in an overlay patch stays sealed in the render and is the real
//! value in the cluster; SOPS-encrypted resources and `secretGenerator` env files (Flux's layout)
//! reach kustomize as sealed stand-ins and the cluster as what Flux would apply; what would reach
//! outside the project or past sealing is refused, naming the file.

use crate::charts::{BIN, objects, write};
use crate::support;

use std::path::Path;
use std::process::{Command, Output};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

const DEMO_RECIPIENT: &str = "age1cunssxzmelyguczf39cjyuztac9mh3wlk6hgqv0s8m7khtfyw47qxrz3zg";
const MARKER: &str = "Kustomize-Marker-3e81";

pub(crate) fn kustomize() -> Result<std::path::PathBuf, String> {
    support::peer("kustomize")
}

fn lockstep(args: &[&str], kustomize: &Path, home: &Path) -> Output {
    support::run_isolated(
        Path::new(BIN),
        args,
        &[("LOCKSTEP_KUSTOMIZE", &kustomize.to_string_lossy())],
        home,
    )
}

/// A Flux-style tree: a base, a component, and a prod overlay using most of what overlays do.
pub(crate) fn overlay_tree(root: &Path, namespace: &str) {
    write(
        root,
        "lockstep.yaml",
        &format!(
            "project: shop\nenvironments:\n  prod:\n    namespace: {namespace}\n    kustomize: overlays/prod\n"
        ),
    );
    write(
        root,
        "base/kustomization.yaml",
        "resources:\n  - deployment.yaml\n  - service.yaml\nconfigMapGenerator:\n  - name: web-config\n    literals: [MODE=base, LEVEL=info]\n",
    );
    write(
        root,
        "base/deployment.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n        - name: web\n          image: nginx:1.25\n          envFrom:\n            - configMapRef: {name: web-config}\n",
    );
    write(
        root,
        "base/service.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {app: web}\n  ports:\n    - port: 80\n",
    );
    write(
        root,
        "components/monitoring/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\npatches:\n  - target: {kind: Deployment}\n    patch: |-\n      - op: add\n        path: /metadata/annotations\n        value: {prometheus.io/scrape: \"true\"}\n",
    );
    write(
        root,
        "overlays/prod/kustomization.yaml",
        &format!(
            "namespace: {namespace}\nnamePrefix: prod-\nlabels:\n  - pairs: {{tier: frontend}}\n    includeSelectors: false\nresources:\n  - ../../base\ncomponents:\n  - ../../components/monitoring\nimages:\n  - name: nginx\n    newTag: \"1.27\"\nreplicas:\n  - name: web\n    count: 3\npatches:\n  - path: service-patch.yaml\nconfigMapGenerator:\n  - name: web-config\n    behavior: merge\n    literals: [MODE=prod]\nsecretGenerator:\n  - name: web-tls\n    literals: [ca=not-a-secret]\n"
        ),
    );
    write(
        root,
        "overlays/prod/service-patch.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  type: ClusterIP\n  ports:\n    - port: 80\n      targetPort: 8080\n",
    );
}

fn kustomize_build(kustomize: &Path, dir: &Path) -> String {
    let out = Command::new(kustomize)
        .arg("build")
        .arg(dir)
        .output()
        .expect("kustomize build");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// `lockstep apply` of environment prod with the demo key.
fn apply_prod(cluster: &support::Cluster, kustomize: &Path, home: &Path, dir: &str) -> Output {
    let kubeconfig = cluster.kubeconfig.to_string_lossy().into_owned();
    let key = support::repo_root().join("keys-example/age.key");
    let key = key.to_string_lossy();
    let args = [
        "apply",
        "--wait=false",
        "--env",
        "prod",
        "--kubeconfig",
        &kubeconfig,
    ];
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--identity", &key, dir]);
    lockstep(&all, kustomize, home)
}

#[test]
fn an_overlay_renders_to_what_kustomize_build_prints() {
    let kustomize = need!("kustomize", kustomize());
    let project = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let root = project.path();
    overlay_tree(root, "shop");
    let dir = root.to_string_lossy().into_owned();
    let out = lockstep(&["render", "--env", "prod", &dir], &kustomize, home.path());
    support::assert_success(&out);
    let ours = String::from_utf8(out.stdout).expect("utf-8");
    let theirs = kustomize_build(&kustomize, &root.join("overlays/prod"));
    let (ours_objects, theirs_objects) = (objects(&ours), objects(&theirs));
    assert_eq!(ours_objects, theirs_objects, "object by object");
    // What the overlay did shows: a prefix, the generated names with their hash, three replicas.
    assert!(
        theirs_objects.contains_key("Deployment/prod-web"),
        "{:?}",
        theirs_objects.keys()
    );
    assert!(
        theirs_objects
            .keys()
            .any(|k| k.starts_with("ConfigMap/prod-web-config-")),
        "{:?}",
        theirs_objects.keys()
    );
    assert_eq!(
        theirs_objects["Deployment/prod-web"]["spec"]["replicas"].as_u64(),
        Some(3)
    );
    assert!(
        ours.contains("# Source: overlays/prod (kustomize build)\n"),
        "{ours}"
    );
    // Nothing of the build stays behind.
    let left: Vec<_> = std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(&format!("lockstep-kustomize-{}-", std::process::id()))
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn overlays_that_reach_outside_or_fail_are_refused_naming_the_file() {
    let kustomize = need!("kustomize", kustomize());
    let project = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let root = project.path();
    overlay_tree(root, "shop");
    let dir = root.to_string_lossy().into_owned();
    let render = |k: &Path| lockstep(&["render", "--env", "prod", &dir], k, home.path());
    let overlay =
        std::fs::read_to_string(root.join("overlays/prod/kustomization.yaml")).expect("read");
    let with = |text: &str| write(root, "overlays/prod/kustomization.yaml", text);

    // A remote base.
    with(&overlay.replace(
        "  - ../../base\n",
        "  - ../../base\n  - https://github.com/org/repo//base?ref=v1\n",
    ));
    support::fails_saying(
        &render(&kustomize),
        &["overlays/prod/kustomization.yaml", "is remote", "vendor it"],
    );
    // A chart of helmCharts that is not vendored.
    with(&format!(
        "{overlay}helmCharts:\n  - name: web\n    repo: https://charts.example.org\n"
    ));
    support::fails_saying(
        &render(&kustomize),
        &[
            "overlays/prod/kustomization.yaml",
            "chart web of https://charts.example.org is not in the repository",
            "helm pull --untar",
        ],
    );
    // kustomize's own failure, passed on with the file (a patch of nothing).
    with(&overlay.replace("service-patch.yaml", "missing-patch.yaml"));
    support::fails_saying(
        &render(&kustomize),
        &[
            "kustomize build overlays/prod: failed",
            "missing-patch.yaml",
        ],
    );
    let err = String::from_utf8_lossy(&render(&kustomize).stderr).into_owned();
    assert!(
        !err.contains("/dev/shm"),
        "scratch paths are shown as project paths: {err}"
    );
    // No kustomize program.
    with(&overlay);
    support::fails_saying(
        &render(Path::new("/nonexistent/kustomize")),
        &["/nonexistent/kustomize was not found", "LOCKSTEP_KUSTOMIZE"],
    );
    // No kustomization where lockstep.yaml points.
    let project_file = std::fs::read_to_string(root.join("lockstep.yaml")).expect("read");
    write(
        root,
        "lockstep.yaml",
        &project_file.replace("overlays/prod", "overlays/qa"),
    );
    support::fails_saying(
        &render(&kustomize),
        &["overlays/qa holds no kustomization.yaml"],
    );
    write(
        root,
        "lockstep.yaml",
        &project_file.replace("overlays/prod", "../elsewhere"),
    );
    support::fails_saying(
        &render(&kustomize),
        &["is not a directory inside the project"],
    );
}

#[tokio::test]
async fn a_sealed_reference_in_an_overlay_patch_is_the_real_value_only_in_the_cluster() {
    let kustomize = need!("kustomize", kustomize());
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "kustomized").await;
    let project = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let root = project.path();
    overlay_tree(root, &ns);
    write_encrypted(
        root,
        "environments/prod/secrets.yaml",
        &format!("db:\n  password: {MARKER}\n"),
    );
    write(
        root,
        "base/db-secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: placeholder\n",
    );
    let base = std::fs::read_to_string(root.join("base/kustomization.yaml")).expect("read");
    write(
        root,
        "base/kustomization.yaml",
        &base.replace(
            "  - service.yaml\n",
            "  - service.yaml\n  - db-secret.yaml\n",
        ),
    );
    write(
        root,
        "overlays/prod/db-patch.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: <sealed:environments/prod/secrets.yaml#/db/password>\n",
    );
    edit_overlay(root, |k| {
        k.replace(
            "  - path: service-patch.yaml\n",
            "  - path: service-patch.yaml\n  - path: db-patch.yaml\n",
        )
    });
    let dir = root.to_string_lossy().into_owned();
    let out = lockstep(&["render", "--env", "prod", &dir], &kustomize, home.path());
    support::assert_success(&out);
    let rendered = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        rendered.contains("password: <sealed:environments/prod/secrets.yaml#/db/password>"),
        "{rendered}"
    );
    let applied = apply_prod(&cluster, &kustomize, home.path(), &dir);
    support::assert_success(&applied);
    assert_prod_db_password(&client, &ns, MARKER).await;
    let said = format!(
        "{rendered}{}{}",
        String::from_utf8_lossy(&applied.stdout),
        String::from_utf8_lossy(&applied.stderr)
    );
    assert!(!said.contains(MARKER), "{said}");
    support::assert_nowhere(MARKER, &[home.path(), root, Path::new("/dev/shm")]);
}

/// Writes `plain` to project file `rel`, SOPS-encrypted (whole) to the demo recipient.
pub(crate) fn write_encrypted(root: &Path, rel: &str, plain: &str) {
    let encrypted = support::encrypt_stdin(Path::new(BIN), DEMO_RECIPIENT, rel, plain);
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(path, encrypted).expect("write");
}

/// Adds a Secret `db` whose `stringData.password` is `password`, SOPS-encrypted as Flux's guide
/// does (`overlays/prod/db.sops.yaml`), to the prod overlay's resources.
pub(crate) fn add_sops_db_secret(root: &Path, password: &str) {
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ntype: Opaque\nstringData:\n  password: {password}\n"
    );
    add_sealed_db_secret(
        root,
        &encrypt_values_only(&secret, "overlays/prod/db.sops.yaml"),
    );
}

/// Adds `sealed` (a SOPS-encrypted Secret) to the prod overlay as `db.sops.yaml`.
pub(crate) fn add_sealed_db_secret(root: &Path, sealed: &[u8]) {
    std::fs::write(root.join("overlays/prod/db.sops.yaml"), sealed).expect("write");
    edit_overlay(root, |k| {
        k.replace("  - ../../base\n", "  - ../../base\n  - db.sops.yaml\n")
    });
}

/// Asserts that the overlay's Secret `prod-db` in `ns` holds `password` (decrypted in the cluster).
pub(crate) async fn assert_prod_db_password(client: &kube::Client, ns: &str, password: &str) {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get("prod-db")
        .await
        .expect("the overlay's Secret");
    assert_eq!(
        secret.data.unwrap_or_default()["password"].0,
        password.as_bytes()
    );
}

/// Rewrites the prod overlay's kustomization with `edit`.
pub(crate) fn edit_overlay(root: &Path, edit: impl FnOnce(String) -> String) {
    let path = "overlays/prod/kustomization.yaml";
    let text = std::fs::read_to_string(root.join(path)).expect("read");
    write(root, path, &edit(text));
}

/// `plain` encrypted as Flux's guide does (`--encrypted-regex '^(data|stringData)$'`).
pub(crate) fn encrypt_values_only(plain: &str, rel: &str) -> Vec<u8> {
    use std::io::Write as _;
    let mut child = Command::new(BIN)
        .args([
            "encrypt",
            "--age",
            DEMO_RECIPIENT,
            "--encrypted-regex",
            "^(data|stringData)$",
        ])
        .args(["--filename-override", rel, "-"])
        .env_remove("SOPS_CONFIG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("encrypt");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(plain.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("encrypt");
    assert!(out.status.success());
    out.stdout
}

/// A generated name (or `Kind/name` key) without its hash suffix (`web-tls-9th9f5254h` →
/// `web-tls`), which lockstep computes over placeholders and Flux over values.
pub(crate) fn without_suffix(key: &str) -> String {
    match key.rsplit_once('-') {
        Some((stem, hash))
            if hash.len() == 10 && hash.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            stem.to_string()
        }
        _ => key.to_string(),
    }
}

#[tokio::test]
async fn sops_resources_and_env_files_in_an_overlay_are_sealed_for_kustomize_and_real_in_the_cluster()
 {
    let kustomize = need!("kustomize", kustomize());
    let sops = need!("sops", support::peer("sops"));
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "kustomize-sops").await;
    let project = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let root = project.path();
    overlay_tree(root, &ns);
    // Flux's layout: a SOPS-encrypted Secret among the resources (data and stringData), and a
    // secretGenerator reading a SOPS-encrypted dotenv file.
    let b64 = base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ntype: Opaque\ndata:\n  token: {}\nstringData:\n  password: {MARKER}-pw\n",
        b64.encode(format!("{MARKER}-token"))
    );
    // As Flux's guide encrypts them: the values only.
    write_encrypted(root, "overlays/prod/db.sops.yaml", &secret);
    let overlay =
        std::fs::read_to_string(root.join("overlays/prod/kustomization.yaml")).expect("read");
    write(
        root,
        "overlays/prod/kustomization.yaml",
        &overlay.replace("  - ../../base\n", "  - ../../base\n  - db.sops.yaml\n"),
    );
    let out = lockstep(
        &["render", "--env", "prod", &root.to_string_lossy()],
        &kustomize,
        home.path(),
    );
    support::fails_saying(
        &out,
        &[
            "its apiVersion, kind or metadata are encrypted",
            "encrypted_regex",
        ],
    );
    write(root, "overlays/prod/kustomization.yaml", &overlay);
    let sealed = encrypt_values_only(&secret, "overlays/prod/db.sops.yaml");
    std::fs::write(root.join("overlays/prod/db.sops.yaml"), &sealed).expect("write");
    // Generator inputs read whole: a binary file and a YAML file, each SOPS-encrypted.
    write_encrypted(
        root,
        "overlays/prod/tls.pem",
        &format!("-----BEGIN CERT-----\n{MARKER}-cert\n-----END CERT-----\n"),
    );
    write_encrypted(
        root,
        "overlays/prod/config.yaml",
        &format!("db:\n    user: app\n    password: {MARKER}-cfg\n"),
    );
    let env_file = format!("API_KEY={MARKER}-api\nREGION=eu-west-1\n");
    write_encrypted(root, "overlays/prod/app.env", &env_file);
    let overlay =
        std::fs::read_to_string(root.join("overlays/prod/kustomization.yaml")).expect("read");
    let overlay = overlay
        .replace("  - ../../base\n", "  - ../../base\n  - db.sops.yaml\n")
        .replace(
            "secretGenerator:\n",
            "secretGenerator:\n  - name: app-env\n    envs: [app.env]\n  - name: app-files\n    files: [tls.crt=tls.pem, config.yaml]\n",
        );
    write(root, "overlays/prod/kustomization.yaml", &overlay);
    let dir = root.to_string_lossy().into_owned();

    // The render: placeholders, no value and no ciphertext of one.
    let out = lockstep(&["render", "--env", "prod", &dir], &kustomize, home.path());
    support::assert_success(&out);
    let rendered = support::without_digests(&String::from_utf8_lossy(&out.stdout));
    assert!(
        rendered.contains("password: <sealed:overlays/prod/db.sops.yaml#/stringData/password>"),
        "{rendered}"
    );
    assert!(
        rendered.contains("token: <sealed:overlays/prod/db.sops.yaml#/data/token>"),
        "{rendered}"
    );
    assert!(
        rendered.contains("API_KEY: <sealed:overlays/prod/app.env#/API_KEY|base64>"),
        "{rendered}"
    );
    assert!(
        !rendered.contains("ENC[") && !rendered.contains("sops_"),
        "{rendered}"
    );
    assert!(
        rendered.contains("tls.crt: <sealed:overlays/prod/tls.pem#|base64>"),
        "{rendered}"
    );

    // Apply, with the key.
    let applied = apply_prod(&cluster, &kustomize, home.path(), &dir);
    support::assert_success(&applied);

    // What Flux would apply: the same tree with the SOPS files decrypted, built by kustomize.
    let key = support::repo_root().join("keys-example/age.key");
    let flux = tempfile::tempdir().expect("tempdir");
    crate::charts::copy_dir(root, flux.path());
    for rel in [
        "overlays/prod/db.sops.yaml",
        "overlays/prod/app.env",
        "overlays/prod/tls.pem",
        "overlays/prod/config.yaml",
    ] {
        let out = Command::new(&sops)
            .args(["--decrypt", "--in-place"])
            .arg(flux.path().join(rel))
            .env("SOPS_AGE_KEY_FILE", &key)
            .output()
            .expect("sops");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let theirs = kustomize_build(&kustomize, &flux.path().join("overlays/prod"));
    let theirs: std::collections::BTreeMap<String, yaml_serde::Value> = objects(&theirs)
        .into_iter()
        .map(|(k, v)| (without_suffix(&k), v))
        .collect();
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    for (name, keys) in [
        ("prod-db", vec!["token", "password"]),
        ("prod-app-env", vec!["API_KEY", "REGION"]),
        ("prod-app-files", vec!["tls.crt", "config.yaml"]),
    ] {
        let live = secrets
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .into_iter()
            .find(|s| {
                s.metadata.name.as_deref().is_some_and(|n| {
                    without_suffix(&format!("Secret/{n}")) == format!("Secret/{name}")
                })
            })
            .unwrap_or_else(|| panic!("Secret {name}"));
        let data = live.data.unwrap_or_default();
        let mut names: Vec<&str> = data.keys().map(String::as_str).collect();
        names.sort();
        let mut wanted = keys.clone();
        wanted.sort();
        assert_eq!(names, wanted, "{name}: no sops_* keys, nothing else");
        let flux_secret = &theirs[&format!("Secret/{name}")];
        for key in keys {
            let expected = match flux_secret["data"][key].as_str() {
                Some(encoded) => b64
                    .decode(encoded.split_whitespace().collect::<String>())
                    .expect("base64"),
                None => flux_secret["stringData"][key]
                    .as_str()
                    .expect(key)
                    .as_bytes()
                    .to_vec(),
            };
            assert_eq!(data[key].0, expected, "{name}.{key} as Flux would apply it");
        }
    }
    // The value is nowhere but in the cluster.
    let said = format!(
        "{rendered}{}{}",
        String::from_utf8_lossy(&applied.stdout),
        String::from_utf8_lossy(&applied.stderr)
    );
    assert!(!said.contains(MARKER), "{said}");
    support::assert_nowhere(MARKER, &[home.path(), root, Path::new("/dev/shm")]);
}
