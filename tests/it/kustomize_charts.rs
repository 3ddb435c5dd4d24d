//! `helmCharts:` in a kustomization, through lockstep's Helm path, with the real `kustomize` and
//! `helm` v3 and v4: the same objects as `kustomize build --enable-helm` (values merged as
//! kustomize merges them, the overlay's transformers applied to the chart's output, CRDs only with
//! `includeCRDs`); a SOPS-encrypted values file reaches Helm sealed and the cluster real; the
//! chart's hooks run as Helm runs them; what lockstep will not do is refused, naming the file.

use crate::charts::{BIN, copy_dir, helms, objects, web_chart, write};
use crate::kustomize::{edit_overlay, kustomize, overlay_tree, write_encrypted};
use crate::support;

use std::path::Path;
use std::process::{Command, Output};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;

const MARKER: &str = "Overlay-Chart-Marker-51c2";

fn lockstep(args: &[&str], kustomize: &Path, helm: &Path, home: &Path) -> Output {
    support::run_isolated(
        Path::new(BIN),
        args,
        &[
            ("LOCKSTEP_KUSTOMIZE", &kustomize.to_string_lossy()),
            ("LOCKSTEP_HELM", &helm.to_string_lossy()),
        ],
        home,
    )
}

/// The overlay tree with the web chart vendored beside the prod overlay and named in its
/// `helmCharts` (values inline and from a file, CRDs included).
fn chart_overlay(root: &Path, namespace: &str) {
    overlay_tree(root, namespace);
    let charts = tempfile::tempdir().expect("tempdir");
    web_chart(charts.path());
    copy_dir(
        &charts.path().join("charts/web"),
        &root.join("overlays/prod/charts/web"),
    );
    write(
        root,
        "overlays/prod/web-values.yaml",
        "replicas: 2\nextraLabels: {team: shop}\ncache: {enabled: false}\n",
    );
    edit_overlay(root, |k| {
        format!(
            "{k}helmCharts:\n  - name: web\n    releaseName: storefront\n    valuesFile: web-values.yaml\n    valuesInline:\n      replicas: 4\n      image: nginx:1.28\n    includeCRDs: true\n"
        )
    });
}

fn kustomize_enable_helm(kustomize: &Path, helm: &Path, dir: &Path) -> String {
    let home = tempfile::tempdir().expect("tempdir");
    let out = Command::new(kustomize)
        .args(["build", "--enable-helm", "--helm-command"])
        .arg(helm)
        .arg(dir)
        .env("HOME", home.path())
        .output()
        .expect("kustomize build");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// `lockstep render` of prod and `kustomize build --enable-helm` of its overlay, as objects.
fn both_renders(
    root: &Path,
    kustomize: &Path,
    helm: &Path,
    home: &Path,
) -> (
    std::collections::BTreeMap<String, yaml_serde::Value>,
    std::collections::BTreeMap<String, yaml_serde::Value>,
) {
    let dir = root.to_string_lossy().into_owned();
    let out = lockstep(&["render", "--env", "prod", &dir], kustomize, helm, home);
    support::assert_success(&out);
    let ours = objects(&String::from_utf8(out.stdout).expect("utf-8"));
    let theirs = objects(&kustomize_enable_helm(
        kustomize,
        helm,
        &root.join("overlays/prod"),
    ));
    (ours, theirs)
}

#[test]
fn a_kustomization_chart_renders_as_kustomize_enable_helm_renders_it() {
    let kustomize = need!("kustomize", kustomize());
    let helms = need!("helm v3 and v4", helms());
    for helm in helms {
        let project = tempfile::tempdir().expect("tempdir");
        let home = tempfile::tempdir().expect("tempdir");
        let root = project.path();
        chart_overlay(root, "shop");
        let (ours, theirs) = both_renders(root, &kustomize, &helm, home.path());
        assert_eq!(ours, theirs, "object by object ({})", helm.display());
        // The inline values won over the file's, the overlay's transformers reached the chart's
        // objects (its prefix, labels and image tag), and the chart's CRD is there (includeCRDs).
        let web = &theirs["Deployment/prod-storefront"];
        assert_eq!(
            web["spec"]["replicas"].as_u64(),
            Some(4),
            "valuesInline wins"
        );
        assert_eq!(
            web["spec"]["template"]["spec"]["containers"][0]["image"].as_str(),
            Some("nginx:1.27"),
            "the overlay's images: transformer"
        );
        assert_eq!(web["metadata"]["labels"]["team"].as_str(), Some("shop"));
        assert_eq!(web["metadata"]["labels"]["tier"].as_str(), Some("frontend"));
        assert!(theirs.contains_key("CustomResourceDefinition/widgets.charts.example.com"));
        // Without includeCRDs, as kustomize: no CRD.
        edit_overlay(root, |k| k.replace("    includeCRDs: true\n", ""));
        let (ours, theirs) = both_renders(root, &kustomize, &helm, home.path());
        assert_eq!(ours, theirs, "without includeCRDs ({})", helm.display());
        assert!(!ours.contains_key("CustomResourceDefinition/widgets.charts.example.com"));
    }
}

/// A chart whose Secret takes a password from a SOPS-encrypted values file, with a pre-install
/// hook, named by the prod overlay.
fn secret_chart_overlay(root: &Path, namespace: &str) {
    overlay_tree(root, namespace);
    write(
        root,
        "overlays/prod/charts/db/Chart.yaml",
        "apiVersion: v2\nname: db\nversion: 0.1.0\n",
    );
    write(
        root,
        "overlays/prod/charts/db/values.yaml",
        "password: \"\"\nuser: app\n",
    );
    write(
        root,
        "overlays/prod/charts/db/templates/secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {{ .Release.Name }}-auth\ntype: Opaque\ndata:\n  password: {{ .Values.password | b64enc | quote }}\nstringData:\n  dsn: {{ printf \"postgres://%s:%s@db/app\" .Values.user .Values.password | quote }}\n",
    );
    write(
        root,
        "overlays/prod/charts/db/templates/hook.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-migrated\n  annotations:\n    helm.sh/hook: pre-install,pre-upgrade\ndata:\n  user: {{ .Values.user | quote }}\n",
    );
    write_encrypted(
        root,
        "overlays/prod/db.secrets.yaml",
        &format!("password: {MARKER}\n"),
    );
    edit_overlay(root, |k| {
        format!(
            "{k}helmCharts:\n  - name: db\n    releaseName: db\n    additionalValuesFiles: [db.secrets.yaml]\n"
        )
    });
}

#[tokio::test]
async fn a_sops_values_file_of_a_kustomization_chart_is_sealed_for_helm_and_real_in_the_cluster() {
    let kustomize = need!("kustomize", kustomize());
    let helm = need!("helm", support::peer("helm"));
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "kustomize-chart").await;
    let project = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let root = project.path();
    secret_chart_overlay(root, &ns);
    let dir = root.to_string_lossy().into_owned();

    let out = lockstep(
        &["render", "--env", "prod", &dir],
        &kustomize,
        &helm,
        home.path(),
    );
    support::assert_success(&out);
    let rendered = support::without_digests(&String::from_utf8_lossy(&out.stdout));
    assert!(
        rendered.contains("password: <sealed:overlays/prod/db.secrets.yaml#/password|base64>"),
        "{rendered}"
    );
    assert!(
        rendered.contains(
            "dsn: postgres://app:<sealed:overlays/prod/db.secrets.yaml#/password>@db/app"
        ),
        "{rendered}"
    );
    assert!(!rendered.contains("ENC["), "{rendered}");
    assert!(
        !rendered.contains("lockstep.dev/overlay-release"),
        "{rendered}"
    );

    let kubeconfig = cluster.kubeconfig.to_string_lossy().into_owned();
    let key = support::repo_root().join("keys-example/age.key");
    let key = key.to_string_lossy().into_owned();
    let apply = [
        "apply",
        "--wait=false",
        "--env",
        "prod",
        "--kubeconfig",
        &kubeconfig,
        "--identity",
        &key,
        &dir,
    ];
    let applied = lockstep(&apply, &kustomize, &helm, home.path());
    support::assert_success(&applied);
    let secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("prod-db-auth")
        .await
        .expect("the chart's Secret, prefixed by the overlay");
    let data = secret.data.unwrap_or_default();
    assert_eq!(data["password"].0, MARKER.as_bytes());
    assert_eq!(
        data["dsn"].0,
        format!("postgres://app:{MARKER}@db/app").as_bytes()
    );
    // The hook ran as a hook of release db (before the release), and was transformed too.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&applied.stdout),
        String::from_utf8_lossy(&applied.stderr)
    );
    assert!(said.contains("pre-install"), "{said}");
    let hook = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("prod-db-migrated")
        .await
        .expect("the hook's ConfigMap");
    assert_eq!(
        hook.metadata.labels.unwrap_or_default().get("tier"),
        Some(&"frontend".to_string())
    );
    // Applied again without a change: no hook runs.
    let again = lockstep(&apply, &kustomize, &helm, home.path());
    support::assert_success(&again);
    let said_again = format!(
        "{}{}",
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(!said_again.contains("pre-upgrade"), "{said_again}");

    // A chart that makes up a value on each render fails closed at apply, naming the field: the
    // second render (real values) is compared with what Helm printed before the build.
    let template = root.join("overlays/prod/charts/db/templates/secret.yaml");
    let text = std::fs::read_to_string(&template).expect("read");
    write(
        root,
        "overlays/prod/charts/db/templates/secret.yaml",
        &format!("{text}  nonce: {{{{ randAlphaNum 12 | quote }}}}\n"),
    );
    let refused = lockstep(&apply, &kustomize, &helm, home.path());
    support::fails_saying(
        &refused,
        &["chart db", "Secret/db-auth differs at `data.nonce`"],
    );
    let said_refused = String::from_utf8_lossy(&refused.stderr).into_owned();

    let all = format!("{rendered}{said}{said_again}{said_refused}");
    assert!(!all.contains(MARKER), "{all}");
    support::assert_nowhere(MARKER, &[home.path(), root, Path::new("/dev/shm")]);
}

#[test]
fn kustomization_charts_lockstep_will_not_render_are_refused_naming_the_file() {
    let kustomize = need!("kustomize", kustomize());
    let helm = need!("helm", support::peer("helm"));
    let project = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let root = project.path();
    overlay_tree(root, "shop");
    let overlay =
        std::fs::read_to_string(root.join("overlays/prod/kustomization.yaml")).expect("read");
    let dir = root.to_string_lossy().into_owned();
    for (entry, said) in [
        (
            "  - name: external-dns\n    repo: https://kubernetes-sigs.github.io/external-dns\n    version: 1.15.0\n",
            &[
                "overlays/prod/kustomization.yaml",
                "is not in the repository at overlays/prod/charts/external-dns-1.15.0/external-dns",
                "helm pull --untar --untardir overlays/prod/charts/external-dns-1.15.0",
            ][..],
        ),
        (
            "  - name: web\n",
            &["overlays/prod/charts/web/Chart.yaml does not exist"][..],
        ),
        (
            "  - name: web\n    valuesFile: ../../../outside.yaml\n",
            &["is outside the project"][..],
        ),
        (
            "  - name: web\n    valuesMerge: deep\n",
            &["valuesMerge \"deep\" is not override, merge or replace"][..],
        ),
    ] {
        if entry.contains("valuesMerge") || entry.contains("valuesFile") {
            let charts = tempfile::tempdir().expect("tempdir");
            web_chart(charts.path());
            copy_dir(
                &charts.path().join("charts/web"),
                &root.join("overlays/prod/charts/web"),
            );
        }
        let text = format!("{overlay}helmCharts:\n{entry}");
        let text = if entry.contains("valuesMerge") {
            text.replace(
                "    valuesMerge: deep\n",
                "    valuesMerge: deep\n    valuesInline: {replicas: 2}\n",
            )
        } else {
            text
        };
        write(root, "overlays/prod/kustomization.yaml", &text);
        let out = lockstep(
            &["render", "--env", "prod", &dir],
            &kustomize,
            &helm,
            home.path(),
        );
        support::fails_saying(&out, said);
    }
}
