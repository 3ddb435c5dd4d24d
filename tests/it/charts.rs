//! Helm charts as a render source, with the real `helm` v3 and v4 (the pinned peers): a chart renders to what
//! `helm template` prints, object by object; secret values reach Helm only sealed and the cluster
//! only at apply (plain, `b64enc`, and inside a larger `b64enc` text), byte for byte what Helm
//! would make of the real value; and the rules that keep a chart from misplacing or transforming
//! a secret fail closed with the chart file and the values key.

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_lockstep");
const DEMO_RECIPIENT: &str = "age1cunssxzmelyguczf39cjyuztac9mh3wlk6hgqv0s8m7khtfyw47qxrz3zg";
const MARKER: &str = "Chart-Marker-7f3a9c";

pub(crate) fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

/// A chart with a helper, a Deployment, a Service, a CRD under `crds/` and a subchart: what real
/// charts are made of.
pub(crate) fn web_chart(root: &Path) {
    write(
        root,
        "charts/web/Chart.yaml",
        "apiVersion: v2\nname: web\nversion: 1.2.3\nappVersion: \"4.5\"\n",
    );
    write(
        root,
        "charts/web/values.yaml",
        "replicas: 1\nimage: nginx:1.27\nport: 8080\nextraLabels: {}\ncache:\n  enabled: true\n",
    );
    write(
        root,
        "charts/web/templates/_helpers.tpl",
        "{{- define \"web.labels\" -}}\napp.kubernetes.io/name: {{ .Chart.Name }}\napp.kubernetes.io/instance: {{ .Release.Name }}\nhelm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}\n{{- with .Values.extraLabels }}\n{{ toYaml . }}\n{{- end }}\n{{- end }}\n",
    );
    write(
        root,
        "charts/web/templates/deployment.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}\n  labels:\n    {{- include \"web.labels\" . | nindent 4 }}\nspec:\n  replicas: {{ .Values.replicas }}\n  selector:\n    matchLabels:\n      app.kubernetes.io/instance: {{ .Release.Name }}\n  template:\n    metadata:\n      labels:\n        {{- include \"web.labels\" . | nindent 8 }}\n    spec:\n      containers:\n        - name: web\n          image: {{ .Values.image | quote }}\n          ports:\n            - containerPort: {{ .Values.port }}\n",
    );
    write(
        root,
        "charts/web/templates/service.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {{ .Release.Name }}\n  namespace: {{ .Release.Namespace }}\nspec:\n  ports:\n    - port: 80\n      targetPort: {{ .Values.port }}\n  selector:\n    app.kubernetes.io/instance: {{ .Release.Name }}\n",
    );
    write(
        root,
        "charts/web/crds/widgets.yaml",
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.charts.example.com\nspec:\n  group: charts.example.com\n  names: {kind: Widget, plural: widgets, singular: widget}\n  scope: Namespaced\n  versions:\n    - name: v1\n      served: true\n      storage: true\n      schema:\n        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}\n",
    );
    write(
        root,
        "charts/web/templates/capabilities.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-capabilities\ndata:\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n  monitoring: {{ .Capabilities.APIVersions.Has \"monitoring.coreos.com/v1\" | quote }}\n",
    );
    write(
        root,
        "charts/web/charts/cache/Chart.yaml",
        "apiVersion: v2\nname: cache\nversion: 0.1.0\n",
    );
    write(
        root,
        "charts/web/charts/cache/templates/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cache\ndata:\n  size: {{ .Values.size | default \"64Mi\" | quote }}\n",
    );
}

/// The objects of a YAML stream by `Kind/name`, without `metadata.namespace` (lockstep gives
/// namespaced objects the release's namespace, as `helm install -n` does).
pub(crate) fn objects(stream: &str) -> BTreeMap<String, yaml_serde::Value> {
    let mut out = BTreeMap::new();
    for doc in stream.split("\n---") {
        let Ok(mut v) = yaml_serde::from_str::<yaml_serde::Value>(doc) else {
            continue;
        };
        let (Some(kind), Some(name)) = (
            v["kind"].as_str().map(str::to_string),
            v["metadata"]["name"].as_str().map(str::to_string),
        ) else {
            continue;
        };
        if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_mapping_mut()) {
            meta.remove("namespace");
        }
        out.insert(format!("{kind}/{name}"), v);
    }
    out
}

pub(crate) fn helm_template(
    helm: &Path,
    chart: &Path,
    release: &str,
    ns: &str,
    values: &str,
) -> String {
    let scratch = tempfile::tempdir().expect("tempdir");
    let values_file = scratch.path().join("values.yaml");
    std::fs::write(&values_file, values).expect("write values");
    let out = Command::new(helm)
        .args(["template", release])
        .arg(chart)
        .args(["--namespace", ns, "--include-crds", "--values"])
        .arg(&values_file)
        .env("HOME", scratch.path())
        .env("HELM_CACHE_HOME", scratch.path().join("cache"))
        .env("HELM_CONFIG_HOME", scratch.path().join("config"))
        .env("HELM_DATA_HOME", scratch.path().join("data"))
        .output()
        .expect("helm template");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Helm v3 and Helm v4 (`helm4`), or why not.
pub(crate) fn helms() -> Result<Vec<PathBuf>, String> {
    Ok(vec![support::peer("helm")?, support::peer("helm4")?])
}

fn lockstep(args: &[&str], helm: &Path, home: &Path) -> Output {
    support::run_isolated(
        Path::new(BIN),
        args,
        &[("LOCKSTEP_HELM", &helm.to_string_lossy())],
        home,
    )
}

#[test]
fn a_local_chart_renders_to_what_helm_template_prints() {
    for helm in need!("helm v3 and v4", helms()) {
        renders_as_helm_does(&helm);
    }
}

fn renders_as_helm_does(helm: &Path) {
    let project = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let root = project.path();
    write(
        root,
        "lockstep.yaml",
        "project: site\nenvironments:\n  dev: {namespace: site-dev}\n  prod: {namespace: site}\ncharts:\n  front:\n    chart: charts/web\n    values: charts/front.values.yaml\n    namespace: web\n  other:\n    chart: charts/web\n    environments: [prod]\n",
    );
    write(root, "values.yaml", "replicas: 3\n");
    write(
        root,
        "charts/front.values.yaml",
        "replicas: {{ values.replicas }}\nextraLabels:\n  tier: {{ env.name }}\ncache:\n  enabled: {{ values.replicas > 1 }}\n",
    );
    web_chart(root);
    let out = lockstep(
        &["render", "--env", "dev", &root.to_string_lossy()],
        helm,
        home.path(),
    );
    support::assert_success(&out);
    let ours = String::from_utf8(out.stdout).expect("utf-8");
    let theirs = helm_template(
        helm,
        &root.join("charts/web"),
        "front",
        "web",
        "replicas: 3\nextraLabels:\n  tier: dev\ncache:\n  enabled: true\n",
    );
    let (ours_objects, helm_objects) = (objects(&ours), objects(&theirs));
    assert_eq!(
        ours_objects.keys().collect::<Vec<_>>(),
        helm_objects.keys().collect::<Vec<_>>()
    );
    assert_eq!(ours_objects, helm_objects, "object by object");
    assert!(helm_objects.contains_key("CustomResourceDefinition/widgets.charts.example.com"));
    assert!(
        helm_objects.contains_key("ConfigMap/front-cache"),
        "the subchart"
    );
    // Each object names the chart file it came from, and lands in the release's namespace.
    assert!(
        ours.contains("# Source: charts/web/templates/deployment.yaml\n"),
        "{ours}"
    );
    assert!(
        ours.contains("# Source: charts/web/charts/cache/templates/cm.yaml\n"),
        "{ours}"
    );
    assert!(ours.contains("  namespace: web\n"), "{ours}");
    assert!(
        !ours.contains("other"),
        "the prod-only release is not in dev"
    );
    // prod gets both releases; the second with the chart's own values.
    let out = lockstep(
        &["render", "--env", "prod", &root.to_string_lossy()],
        helm,
        home.path(),
    );
    support::assert_success(&out);
    let prod = objects(&String::from_utf8(out.stdout).expect("utf-8"));
    assert_eq!(
        prod["Deployment/other"]["spec"]["replicas"].as_u64(),
        Some(1)
    );
    assert_eq!(
        prod["Deployment/front"]["spec"]["replicas"].as_u64(),
        Some(3)
    );
    // Nothing of the run stays behind in the memory-backed scratch place.
    let left: Vec<_> = std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| left_by_an_ended_process(&e.file_name().to_string_lossy()))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Whether `name` is a chart scratch directory (`lockstep-chart-<pid>-…`) of a process that has
/// ended: one of a running render (another test's) is still in use.
fn left_by_an_ended_process(name: &str) -> bool {
    name.strip_prefix("lockstep-chart-")
        .and_then(|rest| rest.split('-').next())
        .is_some_and(|pid| !Path::new("/proc").join(pid).exists())
}

/// `lockstep.yaml` of project `(name, namespace)` with one environment `dev` and one release
/// `(release, chart directory, values template)`; with `secrets`, `dev`'s secrets file holding
/// them (encrypted to the demo key, never written in clear).
fn one_release_project(
    root: &Path,
    (project, namespace): (&str, &str),
    (release, chart, values): (&str, &str, &str),
    secrets: Option<&str>,
) {
    write(
        root,
        "lockstep.yaml",
        &format!(
            "project: {project}\nenvironments:\n  dev: {{namespace: {namespace}}}\ncharts:\n  {release}:\n    chart: {chart}\n    values: {values}\n"
        ),
    );
    if let Some(plain) = secrets {
        let sealed = support::encrypt_stdin(
            Path::new(BIN),
            DEMO_RECIPIENT,
            "environments/dev/secrets.yaml",
            plain,
        );
        write(
            root,
            "environments/dev/secrets.yaml",
            &String::from_utf8(sealed).expect("utf-8"),
        );
    }
}

/// A project whose `dev` environment has a secrets file (the demo key's) and a chart taking the
/// secret through three paths into one Secret.
pub(crate) fn secret_chart_project(root: &Path, namespace: &str, password: &str) {
    one_release_project(
        root,
        ("vault", namespace),
        ("db", "charts/db", "charts/db.values.yaml"),
        Some(&format!("db:\n  password: {password}\n")),
    );
    // A second release of the same chart: each release is checked against its own objects.
    let text = std::fs::read_to_string(root.join("lockstep.yaml")).expect("read");
    write(
        root,
        "lockstep.yaml",
        &format!("{text}  db2:\n    chart: charts/db\n    values: charts/db.values.yaml\n"),
    );
    write(
        root,
        "charts/db/Chart.yaml",
        "apiVersion: v2\nname: db\nversion: 0.1.0\n",
    );
    write(root, "charts/db/values.yaml", "password: \"\"\nuser: app\n");
    write(
        root,
        "charts/db/templates/secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {{ .Release.Name }}-auth\ntype: Opaque\ndata:\n  password: {{ .Values.password | b64enc | quote }}\n  dsn: {{ printf \"postgres://%s:%s@db:5432/app\" .Values.user .Values.password | b64enc | quote }}\n  .dockerconfigjson: {{ printf \"{\\\"auths\\\":{\\\"reg.example.org\\\":{\\\"auth\\\":\\\"%s\\\"}}}\" (printf \"%s:%s\" .Values.user .Values.password | b64enc) | b64enc | quote }}\nstringData:\n  plain: {{ .Values.password | quote }}\n  url: {{ printf \"https://app:%s@db/\" (.Values.password | urlquery) | quote }}\n  config.json: {{ dict \"user\" .Values.user \"password\" .Values.password | toJson | quote }}\n",
    );
    write(
        root,
        "charts/db.values.yaml",
        "password: {{ secrets.db.password }}\n",
    );
}

#[tokio::test]
async fn chart_secrets_stay_sealed_in_render_and_are_applied_as_helm_would_make_them() {
    let helms = need!("helm v3 and v4", helms());
    let cluster = need!("control plane", support::cluster());
    for helm in helms {
        applies_as_helm_makes_it(&cluster, &helm).await;
    }
}

async fn applies_as_helm_makes_it(cluster: &support::Cluster, helm: &Path) {
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "chart-secrets").await;
    let project = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let root = project.path();
    // Characters a URL and JSON must escape, so `urlquery` and `toJson` have work to do.
    let password = format!("{MARKER}-p@ss w/rd&\"q");
    secret_chart_project(root, &ns, &password);
    let dir = root.to_string_lossy().into_owned();

    // Render, without any key: the placeholders, marked for base64 where the chart encoded.
    let out = lockstep(&["render", "--env", "dev", &dir], helm, home.path());
    support::assert_success(&out);
    let rendered = support::without_digests(&String::from_utf8(out.stdout.clone()).expect("utf-8"));
    assert!(
        rendered.contains("password: <sealed:environments/dev/secrets.yaml#/db/password|base64>"),
        "{rendered}"
    );
    assert!(
        rendered.contains(
            "dsn: postgres://app:<sealed:environments/dev/secrets.yaml#/db/password>@db:5432/app"
        ),
        "{rendered}"
    );
    // Nested base64 (a dockerconfigjson's `auth` inside the encoded document): a block whose inner
    // text holds the placeholder.
    assert!(
        rendered.contains(
            r#"{"auths":{"reg.example.org":{"auth":"<sealed-base64:app%3A<sealed:environments/dev/secrets.yaml#/db/password>>"}}}"#
        ),
        "{rendered}"
    );
    // Apply, with the key: the Secret's bytes are those Helm makes of the real value.
    let kubeconfig = cluster.kubeconfig.to_string_lossy().into_owned();
    let key = support::repo_root().join("keys-example/age.key");
    let key_file = key.to_string_lossy().into_owned();
    let applied = lockstep(
        &[
            "apply",
            "--wait=false",
            "--env",
            "dev",
            "--kubeconfig",
            &kubeconfig,
            "--identity",
            &key.to_string_lossy(),
            &dir,
        ],
        helm,
        home.path(),
    );
    support::assert_success(&applied);
    let live = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("db-auth")
        .await
        .expect("the chart's Secret");
    let live: BTreeMap<String, Vec<u8>> = live
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let by_helm = helm_template(
        helm,
        &root.join("charts/db"),
        "db",
        &ns,
        &format!("password: {password}\n"),
    );
    let by_helm = &objects(&by_helm)["Secret/db-auth"];
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (k, v) in by_helm["data"].as_mapping().expect("data") {
        expected.insert(
            k.as_str().expect("key").into(),
            b64.decode(v.as_str().expect("b64")).expect("b64"),
        );
    }
    for (k, v) in by_helm["stringData"].as_mapping().expect("stringData") {
        expected.insert(
            k.as_str().expect("key").into(),
            v.as_str().expect("text").as_bytes().to_vec(),
        );
    }
    assert_eq!(live, expected, "byte for byte what Helm makes of the value");

    // The value is nowhere but in the cluster: not in any output, nor any file written.
    let said = [&out, &applied]
        .iter()
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .collect::<String>();
    assert!(
        !said.contains(MARKER) && !said.contains(&b64.encode(&password)),
        "{said}"
    );
    let scratch_left: Vec<PathBuf> = std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("lockstep-chart-")
        })
        .map(|e| e.path())
        .collect();
    let mut places = vec![
        home.path().to_path_buf(),
        root.to_path_buf(),
        PathBuf::from("/dev/shm"),
    ];
    places.extend(scratch_left);
    for dir in &places {
        for file in files_under(dir) {
            let bytes = std::fs::read(&file).unwrap_or_default();
            assert!(
                !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
                "{} holds the secret",
                file.display()
            );
        }
    }

    // Render twice, apply what was reviewed: a chart that changes a value (upper) or makes one
    // (randAlphaNum) renders otherwise with the real values; the apply fails naming the field,
    // and the Secret stays as it was.
    let secret_template =
        std::fs::read_to_string(root.join("charts/db/templates/secret.yaml")).expect("read");
    for (key, expression) in [
        ("shout", ".Values.password | upper"),
        ("nonce", "randAlphaNum 12"),
    ] {
        write(
            root,
            "charts/db/templates/secret.yaml",
            &format!("{secret_template}  {key}: {{{{ {expression} | quote }}}}\n"),
        );
        let refused = lockstep(
            &[
                "apply",
                "--wait=false",
                "--env",
                "dev",
                "--kubeconfig",
                &kubeconfig,
                "--identity",
                &key_file,
                &dir,
            ],
            helm,
            home.path(),
        );
        let err = String::from_utf8_lossy(&refused.stderr).into_owned();
        assert_ne!(refused.status.code(), Some(0), "{err}");
        assert!(
            err.contains("chart db: Secret/db-auth differs at `data.")
                && err.contains("nothing was applied"),
            "{key}: {err}"
        );
        assert!(!err.contains(MARKER), "{err}");
        let now = Api::<Secret>::namespaced(client.clone(), &ns)
            .get("db-auth")
            .await
            .expect("the Secret");
        assert!(
            !now.data.unwrap_or_default().contains_key(key),
            "{key} was not applied"
        );
    }
    write(root, "charts/db/templates/secret.yaml", &secret_template);
}

/// Every regular file under `dir` (not following links; unreadable parts are skipped).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out
}

#[test]
fn charts_that_misplace_or_transform_a_secret_or_fail_are_refused_naming_file_and_key() {
    for helm in need!("helm v3 and v4", helms()) {
        refuses_misplaced_secrets(&helm);
    }
}

fn refuses_misplaced_secrets(helm: &Path) {
    let project = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let root = project.path();
    secret_chart_project(root, "vault-dev", "not-read");
    let dir = root.to_string_lossy().into_owned();
    let render = |helm: &Path| {
        let out = lockstep(&["render", "--env", "dev", &dir], helm, home.path());
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "nothing printed on error");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Into a ConfigMap: refused, naming the chart file, the field and the values key.
    write(
        root,
        "charts/db/templates/leak.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: leak\ndata:\n  DB_PASSWORD: {{ .Values.password | quote }}\n  DB_URL: {{ printf \"redis://:%s@redis\" (.Values.password | urlquery) | quote }}\n",
    );
    let err = render(helm);
    says(&err, &["charts/db/templates/leak.yaml"]);
    says(
        &err,
        &[
            "ConfigMap `data.DB_PASSWORD`",
            "values key password",
            "ConfigMap `data.DB_URL`",
        ],
    );
    assert!(err.contains("existingSecret"), "says what to do: {err}");
    std::fs::remove_file(root.join("charts/db/templates/leak.yaml")).expect("rm");
    // Hashed: the value would be wrong, so the key is named.
    write(
        root,
        "charts/db/templates/secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: auth\nstringData:\n  digest: {{ .Values.password | sha256sum }}\n",
    );
    let err = render(helm);
    says(
        &err,
        &[
            "chart db: the sealed secret secrets.db.password passed in values key password appears nowhere",
        ],
    );
    // A chart Helm cannot render: Helm's own message, with the chart.
    write(
        root,
        "charts/db/templates/secret.yaml",
        "{{ .Values.nope.deeper }}\n",
    );
    let err = render(helm);
    says(&err, &["helm template failed", "db/templates/secret.yaml"]);
    // No helm: said so, with what to do.
    let err = render(Path::new("/nonexistent/helm"));
    says(&err, &["/nonexistent/helm was not found", "LOCKSTEP_HELM"]);
    // A chart outside charts/ is refused in lockstep.yaml; one from a repository needs its exact
    // version and a digest in lockstep.lock.
    write(
        root,
        "lockstep.yaml",
        "project: vault\nenvironments:\n  dev: {namespace: vault-dev}\ncharts:\n  db:\n    chart: ../elsewhere\n",
    );
    let err = render(helm);
    says(&err, &["lockstep.yaml", "not a directory under charts/"]);
    write(
        root,
        "lockstep.yaml",
        "project: vault\nenvironments:\n  dev: {namespace: vault-dev}\ncharts:\n  db:\n    chart: metrics-server\n    repo: https://charts.example.org\n    version: 3.12.2\n",
    );
    let err = render(helm);
    says(
        &err,
        &["lockstep.lock has no digest", "lockstep charts update db"],
    );
    write(
        root,
        "lockstep.yaml",
        "project: vault\nenvironments:\n  dev: {namespace: vault-dev}\ncharts:\n  db:\n    chart: metrics-server\n    repo: https://charts.example.org\n    version: ^3.12\n",
    );
    let err = render(helm);
    says(&err, &["version \"^3.12\" is not an exact version"]);
    write(
        root,
        "lockstep.yaml",
        "project: vault\nenvironments:\n  dev: {namespace: vault-dev}\ncharts:\n  db:\n    chart: charts/db\n    version: 1.0.0\n",
    );
    let err = render(helm);
    says(&err, &["version: is for repository and OCI charts"]);
}

/// Asserts that the error output `err` says each of `needles`.
fn says(err: &str, needles: &[&str]) {
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} in: {err}");
    }
}

/// Copies directory `from` to `to`.
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    for file in files_under(from) {
        let rel = file.strip_prefix(from).expect("under");
        let dest = to.join(rel);
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&file, &dest).expect("copy");
    }
}

/// The real metrics-server chart (3.12.2, from `sigs.k8s.io/metrics-server` v0.8.0): the same
/// objects as `helm template` under Helm v3 and v4, applied to the control plane, and applied again
/// without a change.
#[tokio::test]
async fn the_metrics_server_chart_renders_as_helm_does_and_applies() {
    let helms = need!("helm v3 and v4", helms());
    let chart = need!("the metrics-server chart", support::chart("metrics-server"));
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    for helm in helms {
        let ns = cluster.namespace(&client, "metrics").await;
        let project = tempfile::tempdir().expect("tempdir");
        let home = tempfile::tempdir().expect("tempdir");
        let root = project.path();
        copy_dir(&chart, &root.join("charts/metrics-server"));
        one_release_project(
            root,
            ("metrics", &ns),
            (
                "metrics",
                "charts/metrics-server",
                "charts/metrics.values.yaml",
            ),
            None,
        );
        // No APIService: an aggregated API without a running server would disturb discovery for
        // every other test on this control plane.
        let values =
            "apiService:\n  create: false\nargs:\n  - --kubelet-insecure-tls\nreplicas: 2\n";
        write(root, "charts/metrics.values.yaml", values);
        let dir = root.to_string_lossy().into_owned();
        let out = lockstep(&["render", "--env", "dev", &dir], &helm, home.path());
        support::assert_success(&out);
        let ours = objects(&String::from_utf8(out.stdout).expect("utf-8"));
        let theirs = objects(&helm_template(&helm, &chart, "metrics", &ns, values));
        assert!(theirs.len() >= 8, "{:?}", theirs.keys());
        assert_eq!(ours, theirs, "{} object by object", helm.display());
        let kubeconfig = cluster.kubeconfig.to_string_lossy().into_owned();
        let apply = || {
            lockstep(
                &[
                    "apply",
                    "--wait=false",
                    "--env",
                    "dev",
                    "--kubeconfig",
                    &kubeconfig,
                    &dir,
                ],
                &helm,
                home.path(),
            )
        };
        let first = apply();
        support::assert_success(&first);
        let deployment =
            Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &ns)
                .get("metrics-metrics-server")
                .await
                .expect("the chart's Deployment");
        assert_eq!(deployment.spec.and_then(|s| s.replicas), Some(2));
        let again = apply();
        support::assert_success(&again);
        let said = String::from_utf8_lossy(&again.stderr);
        assert!(
            !said.contains("created") && !said.contains("configured "),
            "{said}"
        );
    }
}

/// The real external-dns chart (1.22.0, from `sigs.k8s.io/external-dns` v0.23.0) takes provider
/// credentials through `tpl $value $ | b64enc` into its Secret: a sealed value gets there, and the
/// applied Secret holds what Helm makes of the real value, under Helm v3 and v4.
#[tokio::test]
async fn the_external_dns_chart_takes_a_sealed_credential_through_tpl_and_b64enc() {
    let helms = need!("helm v3 and v4", helms());
    let chart = need!("the external-dns chart", support::chart("external-dns"));
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let token = format!("{MARKER}-dns-token");
    for helm in helms {
        let ns = cluster.namespace(&client, "dns").await;
        let project = tempfile::tempdir().expect("tempdir");
        let home = tempfile::tempdir().expect("tempdir");
        let root = project.path();
        copy_dir(&chart, &root.join("charts/external-dns"));
        one_release_project(
            root,
            ("dns", &ns),
            ("dns", "charts/external-dns", "charts/dns.values.yaml"),
            Some(&format!("dns:\n  token: {token}\n  other: unrelated\n")),
        );
        let values = |token: &str| {
            format!(
                "policy: upsert-only\nsecretConfiguration:\n  enabled: true\n  mountPath: /etc/dns\n  data:\n    token: \"{token}\"\n"
            )
        };
        // The chart's values.schema.json requires a policy: Helm's verdict is passed on.
        write(
            root,
            "charts/dns.values.yaml",
            "secretConfiguration:\n  enabled: true\n",
        );
        let dir = root.to_string_lossy().into_owned();
        let out = lockstep(&["render", "--env", "dev", &dir], &helm, home.path());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{err}");
        says(&err, &["schema", "policy"]);
        write(
            root,
            "charts/dns.values.yaml",
            &values("{{ secrets.dns.token }}"),
        );
        let out = lockstep(&["render", "--env", "dev", &dir], &helm, home.path());
        support::assert_success(&out);
        let rendered = support::without_digests(&String::from_utf8(out.stdout).expect("utf-8"));
        assert!(
            rendered.contains("token: <sealed:environments/dev/secrets.yaml#/dns/token|base64>"),
            "{rendered}"
        );
        assert!(!rendered.contains(MARKER));
        let kubeconfig = cluster.kubeconfig.to_string_lossy().into_owned();
        let key = support::repo_root().join("keys-example/age.key");
        let applied = lockstep(
            &[
                "apply",
                "--wait=false",
                "--env",
                "dev",
                "--kubeconfig",
                &kubeconfig,
                "--identity",
                &key.to_string_lossy(),
                &dir,
            ],
            &helm,
            home.path(),
        );
        support::assert_success(&applied);
        assert!(!String::from_utf8_lossy(&applied.stderr).contains(MARKER));
        let live = Api::<Secret>::namespaced(client.clone(), &ns)
            .get("dns-external-dns")
            .await
            .expect("the chart's Secret");
        let by_helm = objects(&helm_template(&helm, &chart, "dns", &ns, &values(&token)));
        let b64 = base64::engine::general_purpose::STANDARD;
        let expected = b64
            .decode(
                by_helm["Secret/dns-external-dns"]["data"]["token"]
                    .as_str()
                    .expect("token"),
            )
            .expect("base64");
        assert_eq!(expected, token.as_bytes());
        let live_token = live
            .data
            .unwrap_or_default()
            .remove("token")
            .expect("token")
            .0;
        assert_eq!(live_token, expected, "{}", helm.display());

        // The chart's checksum/secret annotation (a hash of its rendered Secret, placeholders and
        // all) changes when, and only when, the token's ciphertext does: pods roll on a new
        // secret value, with no key at render time.
        let checksum = || {
            let out = lockstep(&["render", "--env", "dev", &dir], &helm, home.path());
            support::assert_success(&out);
            let objects = objects(&String::from_utf8(out.stdout).expect("utf-8"));
            objects["Deployment/dns-external-dns"]["spec"]["template"]["metadata"]["annotations"]
                ["checksum/secret"]
                .as_str()
                .expect("a checksum/secret annotation")
                .to_string()
        };
        let set = |path: &str, value: &str| {
            let out = support::run_isolated(
                Path::new(BIN),
                &[
                    "set",
                    "--identity",
                    &key.to_string_lossy(),
                    &root.join("environments/dev/secrets.yaml").to_string_lossy(),
                    path,
                    value,
                ],
                &[],
                home.path(),
            );
            support::assert_success(&out);
        };
        let first = checksum();
        assert_eq!(checksum(), first, "the same inputs, the same checksum");
        set(r#"["dns"]["other"]"#, r#""changed""#);
        assert_eq!(checksum(), first, "another value changed: no rollout");
        set(r#"["dns"]["token"]"#, &format!("\"{MARKER}-rotated\""));
        assert_ne!(checksum(), first, "the token changed: a rollout");
    }
}

/// The environment's cluster profile feeds `.Capabilities`, so an offline render equals what the
/// cluster would get; apply compares it with the cluster and says what differs (it stops nothing).
#[tokio::test]
async fn the_cluster_profile_feeds_capabilities_and_apply_says_what_differs() {
    let helm = need!("helm", support::peer("helm"));
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "profile").await;
    let project = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let root = project.path();
    web_chart(root);
    let profile = |kube: &str, apis: &str| {
        write(
            root,
            "lockstep.yaml",
            &format!(
                "project: profile\nenvironments:\n  dev:\n    namespace: {ns}\n    kubeVersion: {kube}\n    apiVersions: [{apis}]\ncharts:\n  web:\n    chart: charts/web\n"
            ),
        );
    };
    profile("v1.30.0", "monitoring.coreos.com/v1, apps/v1/Deployment");
    let dir = root.to_string_lossy().into_owned();
    let out = lockstep(&["render", "--env", "dev", &dir], &helm, home.path());
    support::assert_success(&out);
    let rendered = objects(&String::from_utf8(out.stdout).expect("utf-8"));
    let caps = &rendered["ConfigMap/web-capabilities"]["data"];
    assert_eq!(
        (caps["kube"].as_str(), caps["monitoring"].as_str()),
        (Some("v1.30.0"), Some("true"))
    );
    let kubeconfig = cluster.kubeconfig.to_string_lossy().into_owned();
    let apply = || {
        let out = lockstep(
            &[
                "apply",
                "--wait=false",
                "--env",
                "dev",
                "--kubeconfig",
                &kubeconfig,
                &dir,
            ],
            &helm,
            home.path(),
        );
        support::assert_success(&out);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let said = apply();
    says(
        &said,
        &[
            "note: the environment's kubeVersion is v1.30.0, the cluster runs v1.34",
            "apiVersions lists monitoring.coreos.com/v1, which the cluster does not serve",
        ],
    );
    assert!(!said.contains("apps/v1/Deployment"), "served: {said}");
    // A profile that matches the cluster: nothing to say.
    let version = client
        .apiserver_version()
        .await
        .expect("version")
        .git_version;
    profile(&version, "apps/v1");
    let said = apply();
    assert!(!said.contains("note:"), "{said}");
}

/// Helm runs with the highest OOM score, so under a container's memory limit the kernel takes it
/// before the controller that runs it.
#[test]
fn helm_is_the_first_the_oom_killer_takes() {
    use std::os::unix::fs::PermissionsExt as _;
    let helm = need!("helm", support::peer("helm"));
    let project = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let root = project.path();
    web_chart(root);
    write(
        root,
        "lockstep.yaml",
        "project: oom\nenvironments:\n  dev: {namespace: oom}\ncharts:\n  web:\n    chart: charts/web\n",
    );
    // Helm itself, behind a wrapper that notes its score once lockstep had a moment to set it.
    let seen = home.path().join("oom-score");
    let wrapper = home.path().join("helm");
    write(
        home.path(),
        "helm",
        &format!(
            "#!/bin/sh\nsleep 0.3\ncat /proc/self/oom_score_adj > '{}'\nexec '{}' \"$@\"\n",
            seen.display(),
            helm.display()
        ),
    );
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = lockstep(
        &["render", "--env", "dev", &root.to_string_lossy()],
        &wrapper,
        home.path(),
    );
    support::assert_success(&out);
    assert_eq!(
        std::fs::read_to_string(&seen).expect("the score").trim(),
        "1000"
    );
}

#[tokio::test]
async fn a_chart_that_renders_differently_each_time_is_told_at_apply() {
    let helm = need!("helm v3 and v4", helms()).remove(0);
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "chart-random").await;
    let project = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let root = project.path();
    one_release_project(
        root,
        ("random", &ns),
        ("gen", "charts/gen", "charts/gen.values.yaml"),
        None,
    );
    write(
        root,
        "charts/gen/Chart.yaml",
        "apiVersion: v2\nname: gen\nversion: 0.1.0\n",
    );
    write(
        root,
        "charts/gen/templates/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: gen\ndata:\n  token: {{ randAlphaNum 16 | quote }}\n",
    );
    write(root, "charts/gen.values.yaml", "");
    let kubeconfig = cluster.kubeconfig.to_string_lossy().into_owned();
    let dir = root.to_string_lossy().into_owned();
    let out = lockstep(
        &[
            "apply",
            "--wait=false",
            "--env",
            "dev",
            "--kubeconfig",
            &kubeconfig,
            &dir,
        ],
        &helm,
        home.path(),
    );
    support::assert_success(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("note: chart gen: ConfigMap/gen differs at `data.token` between two renders with the same values"),
        "{err}"
    );
}
