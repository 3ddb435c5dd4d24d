//! `lockstep render` and `lockstep init`, through the real binary: snapshots of the bundled example,
//! every error path (file, line and snippet), determinism, and proof that no plaintext escapes.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;

const BIN: &str = env!("CARGO_BIN_EXE_lockstep");
const DEMO_RECIPIENT: &str = "age1cunssxzmelyguczf39cjyuztac9mh3wlk6hgqv0s8m7khtfyw47qxrz3zg";

/// A throwaway project directory with an isolated HOME (no identities anywhere).
struct Project {
    dir: tempfile::TempDir,
    home: tempfile::TempDir,
}

impl Project {
    fn new() -> Project {
        let p = Project {
            dir: tempfile::tempdir().expect("tempdir"),
            home: tempfile::tempdir().expect("tempdir"),
        };
        p.file(
            "lockstep.yaml",
            "project: t\nenvironments:\n  dev: {namespace: t-dev}\n  prod: {namespace: t-prod}\n",
        )
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(self, rel: &str, content: &str) -> Project {
        let path = self.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, content).expect("write");
        self
    }

    /// Encrypts `plain` (never written in clear) to the demo recipient as `rel`.
    fn secrets(self, rel: &str, plain: &str) -> Project {
        let sealed = support::encrypt_stdin(Path::new(BIN), DEMO_RECIPIENT, rel, plain);
        let path = self.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, sealed).expect("write");
        self
    }

    fn run(&self, args: &[&str]) -> Output {
        support::run_isolated(Path::new(BIN), args, &[], self.home.path())
    }

    fn render(&self, env: &str, extra: &[&str]) -> Output {
        let dir = self.path().to_string_lossy().into_owned();
        let mut args = vec!["render", "--env", env, dir.as_str()];
        args.extend_from_slice(extra);
        self.run(&args)
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a failed render whose stderr contains every needle.
fn fails_with(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(2),
        "should fail with 2; stderr:\n{err}"
    );
    assert!(
        o.stdout.is_empty(),
        "a failed render prints nothing on stdout"
    );
    for n in needles {
        assert!(err.contains(n), "stderr should contain {n:?}:\n{err}");
    }
}

const SECRET_TEMPLATE: &str = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\nstringData:\n  url: postgres://app:{{ secrets.db.password }}@db/app\ndata:\n  token: {{ secrets.api.token | b64encode }}\n";

fn with_secrets() -> Project {
    Project::new().secrets(
        "environments/dev/secrets.yaml",
        "db:\n  password: hunter2\napi:\n  token: t0k3n\n",
    )
}

// ------------------------------------------------------------------------------- the bundled example

fn shop() -> PathBuf {
    support::repo_root().join("examples/shop")
}

#[test]
fn shop_example_renders_each_environment_as_in_its_snapshot() {
    let home = tempfile::tempdir().expect("tempdir");
    for env in ["dev", "staging", "prod"] {
        let shop = shop();
        let out = support::run_isolated(
            Path::new(BIN),
            &["render", "--env", env, &shop.to_string_lossy()],
            &[],
            home.path(),
        );
        assert!(out.status.success(), "{env}: {}", stderr(&out));
        insta::assert_snapshot!(format!("shop_{env}"), stdout(&out));
    }
}

#[test]
fn shop_example_has_every_part_the_example_promises() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = support::run_isolated(
        Path::new(BIN),
        &["render", "--env", "prod", &shop().to_string_lossy()],
        &[],
        home.path(),
    );
    let text = stdout(&out);
    for kind in [
        "kind: CustomResourceDefinition",
        "kind: Namespace",
        "kind: Secret",
        "kind: ConfigMap",
        "kind: Service",
        "kind: Deployment",
        "kind: StatefulSet",
        "kind: Ingress",
        "kind: Backup",
    ] {
        assert!(text.contains(kind), "prod render lacks {kind}");
    }
    // The whole-file SOPS manifest passes through byte for byte.
    let sops =
        std::fs::read_to_string(shop().join("manifests/payment-webhook.sops.yaml")).expect("read");
    assert!(
        text.contains(&sops),
        "the SOPS manifest is not passed through as it is"
    );
    // prod values override the base ones.
    assert!(text.contains("replicas: 3"));
    assert!(text.contains("storage: 50Gi"));
}

#[test]
fn same_inputs_give_byte_identical_output_whatever_order_files_were_written_in() {
    let a = Project::new();
    let b = Project::new();
    let files = [
        ("values.yaml", "z: 1\na: {y: 2, b: 3}\n"),
        (
            "templates/b.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\ndata: {{ values | tojson }}\n",
        ),
        (
            "templates/a.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata:\n  x: {{ values.a | toyaml | quote }}\n",
        ),
        (
            "templates/ns.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: {{ env.namespace }}}\n",
        ),
    ];
    let a = files.iter().fold(a, |p, (f, c)| p.file(f, c));
    let b = files.iter().rev().fold(b, |p, (f, c)| p.file(f, c));
    let first = a.render("dev", &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let again = a.render("dev", &[]);
    let other = b.render("dev", &[]);
    assert_eq!(first.stdout, again.stdout);
    assert_eq!(first.stdout, other.stdout);
    // Namespace sorts before ConfigMaps; ConfigMaps by name.
    let text = stdout(&first);
    let ns = text.find("kind: Namespace").expect("ns");
    let ca = text.find("name: a\n").expect("a");
    let cb = text.find("name: b\n").expect("b");
    assert!(ns < ca && ca < cb, "{text}");
}

// ------------------------------------------------------------------------------------------ values

#[test]
fn values_layer_base_then_environment_then_values_files_then_set() {
    let p = Project::new()
        .file("values.yaml", "image: {repo: r, tag: base}\nlist: [1, 2]\nkeep: yes-base\n")
        .file("environments/dev/values.yaml", "image: {tag: dev}\nlist: [3]\n")
        .file("extra.yaml", "image: {tag: extra}\n")
        .file(
            "templates/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata:\n  image: {{ values.image.repo }}:{{ values.image.tag }}\n  list: {{ values.list | tojson | quote }}\n  keep: {{ values.keep }}\n  env: {{ env.name }}/{{ env.namespace }}/{{ project.name }}\n",
        );
    let out = p.render("dev", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("image: r:dev"), "{text}");
    assert!(text.contains("list: '[3]'"), "{text}");
    assert!(text.contains("keep: yes-base"), "{text}");
    assert!(text.contains("env: dev/t-dev/t"), "{text}");
    assert!(text.contains("namespace: t-dev"), "{text}");
    let extra = p.path().join("extra.yaml").to_string_lossy().into_owned();
    let out = p.render("dev", &["--values", &extra, "--set", "image.tag=cli"]);
    assert!(stdout(&out).contains("image: r:cli"), "{}", stderr(&out));
    let out = p.render("dev", &["--values", &extra]);
    assert!(stdout(&out).contains("image: r:extra"), "{}", stderr(&out));
    let out = p.render("prod", &[]);
    assert!(stdout(&out).contains("image: r:base"), "{}", stderr(&out));
}

#[test]
fn out_never_writes_outside_its_directory_whatever_the_names() {
    let p = Project::new().file(
        "templates/escape.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: escape, namespace: ..}\n",
    );
    let out_dir = p.path().join("nested/out");
    let out = p.render("dev", &["--out", &out_dir.to_string_lossy()]);
    // Refused as a name at all (it would change API URLs too); nothing is written anywhere.
    fails_with(&out, &["metadata.namespace"]);
    assert!(!out_dir.join("___/configmap-escape.yaml").exists());
    assert!(
        !p.path().join("nested/configmap-escape.yaml").exists(),
        "a namespace of `..` wrote beside the output directory"
    );
}

#[test]
fn out_writes_one_file_per_object_and_replaces_earlier_output() {
    let p = Project::new()
        .file("templates/a.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: r}\n")
        .file("templates/b.yaml", "{% if values.b | default(true) %}\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n{% endif %}\n");
    let out_dir = p.path().join("out");
    let out_arg = out_dir.to_string_lossy().into_owned();
    let out = p.render("dev", &["--out", &out_arg]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out_dir.join("t-dev/configmap-a.yaml").exists());
    assert!(out_dir.join("t-dev/configmap-b.yaml").exists());
    assert!(
        out_dir
            .join("_cluster/clusterrole.rbac.authorization.k8s.io-r.yaml")
            .exists()
    );
    let out = p.render("dev", &["--out", &out_arg, "--set", "b=false"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !out_dir.join("t-dev/configmap-b.yaml").exists(),
        "stale output must go"
    );
    // A directory that render did not write is refused.
    let foreign = p.path().join("foreign");
    std::fs::create_dir(&foreign).expect("mkdir");
    std::fs::write(foreign.join("keep.txt"), "x").expect("write");
    let out = p.render("dev", &["--out", &foreign.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
    assert!(foreign.join("keep.txt").exists());
}

#[test]
fn helpers_behave_as_helm_users_expect() {
    let p = Project::new()
        .file("values.yaml", "labels: {a: b, c: d}\nname: web\nnum: 3\nflag: true\nnothing: null\n")
        .file("templates/_helpers/common.yaml", "team: {{ team }}\nenv: {{ env.name }}\n")
        .file(
            "templates/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ values.name | trunc(2) }}\n  labels: {{ values.labels | toyaml | nindent(4) }}\n  annotations: {{ include(\"_helpers/common.yaml\", team=\"core\") | nindent(4) }}\ndata:\n  json: {{ values.labels | tojson | squote }}\n  b64: {{ \"hello\" | b64encode }}\n  back: {{ \"aGVsbG8=\" | b64decode }}\n  sum: {{ \"hello\" | sha256 }}\n  q: {{ values.num | quote }}\n  flag: {{ values.flag | quote }}\n  dflt: {{ values.missing | default(\"fallback\") }}\n  req: {{ values.name | required(\"name is required\") }}\n  null: {{ values.nothing | quote }}\n{% if values.absent %}\n  never: here\n{% endif %}\n",
        );
    let out = p.render("dev", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for want in [
        "name: we\n",
        "  labels:\n    a: b\n    c: d\n",
        "  annotations:\n    team: core\n    env: dev\n",
        "json: '{\"a\":\"b\",\"c\":\"d\"}'",
        "b64: aGVsbG8=",
        "back: hello",
        "sum: 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        "q: '3'",
        "flag: 'true'",
        "dflt: fallback",
        "req: web",
        "null: ''",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(!text.contains("never"));
}

// ------------------------------------------------------------------------------------------ errors

#[test]
fn an_undefined_value_is_an_error_naming_the_template_line() {
    let p = Project::new().file(
        "templates/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata:\n  a: {{ values.image.tag }}\n",
    );
    fails_with(
        &p.render("dev", &[]),
        &[
            "templates/cm.yaml:5",
            "values.image.tag",
            "environments/dev/values.yaml",
        ],
    );
}

#[test]
fn required_fails_with_its_message_and_line() {
    let p = Project::new().file(
        "templates/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata:\n\n  a: {{ values.host | required(\"set host in values\") }}\n",
    );
    fails_with(
        &p.render("dev", &[]),
        &["templates/cm.yaml:6", "set host in values"],
    );
}

#[test]
fn a_missing_secret_key_lists_the_available_keys() {
    let p = with_secrets().file(
        "templates/s.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData:\n  p: {{ secrets.db.pasword }}\n",
    );
    fails_with(
        &p.render("dev", &[]),
        &[
            "templates/s.yaml:5",
            "secrets.db.pasword does not exist in environments/dev/secrets.yaml",
            "password",
        ],
    );
}

#[test]
fn a_secret_used_outside_a_secret_is_an_error_at_its_template_line() {
    let p = with_secrets()
        .file("templates/s.yaml", SECRET_TEMPLATE)
        .file(
            "templates/deploy.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n    spec:\n      containers:\n        - name: c\n          env:\n            - name: P\n              value: \"{{ secrets.db.password }}\"\n",
        )
        .file(
            "templates/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata:\n  p: {{ secrets.api.token }}\n",
        );
    fails_with(
        &p.render("dev", &[]),
        &[
            "templates/deploy.yaml:11",
            "spec.template.spec.containers[0].env[0].value",
            "templates/cm.yaml:5",
            "not in ConfigMap `data.p`",
            "render found 2 problems",
        ],
    );
}

#[test]
fn a_secret_embedded_in_longer_data_text_is_refused_but_string_data_is_fine() {
    let p = with_secrets().file(
        "templates/s.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata:\n  p: prefix-{{ secrets.db.password | b64encode }}\n",
    );
    fails_with(
        &p.render("dev", &[]),
        &["templates/s.yaml:5", "use stringData"],
    );
    let p = with_secrets().file("templates/s.yaml", SECRET_TEMPLATE);
    let out = p.render("dev", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = support::without_digests(&stdout(&out));
    assert!(text.contains(
        "url: postgres://app:<sealed:environments/dev/secrets.yaml#/db/password>@db/app"
    ));
    assert!(text.contains("token: <sealed:environments/dev/secrets.yaml#/api/token|base64>"));
}

/// `checksum/secret: {{ include("_secret.yaml") | sha256 }}` changes when, and only when, a value
/// the included Secret uses is re-encrypted: placeholders carry their ciphertext's digest.
#[test]
fn a_checksum_of_an_included_secret_follows_its_values_ciphertexts() {
    let p = with_secrets()
        .file(
            "templates/_secret.yaml",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData:\n  password: {{ secrets.db.password }}\n",
        )
        .file("templates/secret.yaml", "{% include \"_secret.yaml\" %}")
        .file(
            "templates/deploy.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata:\n      labels: {app: web}\n      annotations:\n        checksum/secret: {{ include(\"_secret.yaml\") | sha256 }}\n    spec:\n      containers: [{name: web, image: nginx}]\n",
        );
    let checksum = || {
        let out = p.render("dev", &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        text.lines()
            .find(|l| l.contains("checksum/secret:"))
            .expect("the annotation")
            .trim()
            .to_string()
    };
    let set = |path: &str, value: &str| {
        let file = p.path().join("environments/dev/secrets.yaml");
        let key = support::repo_root().join("keys-example/age.key");
        let out = p.run(&[
            "set",
            "--identity",
            &key.to_string_lossy(),
            &file.to_string_lossy(),
            path,
            value,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    let first = checksum();
    assert_eq!(checksum(), first);
    set(r#"["api"]["token"]"#, r#""another""#);
    assert_eq!(checksum(), first, "a value the Secret does not use");
    set(r#"["db"]["password"]"#, r#""rotated""#);
    assert_ne!(checksum(), first, "the Secret's value was re-encrypted");
}

#[test]
fn helpers_that_would_need_the_plaintext_refuse_sealed_values() {
    for (expr, needle) in [
        (
            "secrets.db.password | sha256",
            "sha256 cannot be applied to the sealed secret",
        ),
        (
            "secrets.db.password | b64decode",
            "b64decode cannot be applied",
        ),
        (
            "(\"u:\" ~ secrets.db.password) | b64encode",
            "put the text in the Secret's stringData",
        ),
        (
            "secrets.db.password | b64encode | b64encode",
            "already base64-encoded",
        ),
    ] {
        let p = with_secrets().file(
            "templates/s.yaml",
            &format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\nstringData:\n  p: {{{{ {expr} }}}}\n"),
        );
        fails_with(&p.render("dev", &[]), &["templates/s.yaml:5", needle]);
    }
}

#[test]
fn a_placeholder_to_another_environments_secrets_is_refused() {
    let p = with_secrets()
        .secrets("environments/prod/secrets.yaml", "db:\n  password: prod-only\n")
        .file(
            "templates/s.yaml",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData:\n  p: <sealed:environments/prod/secrets.yaml#/db/password>\n",
        );
    fails_with(
        &p.render("dev", &[]),
        &[
            "templates/s.yaml:5",
            "not a value of this environment's secrets file",
        ],
    );
}

#[test]
fn secrets_without_a_secrets_file_and_plaintext_secrets_files_are_errors() {
    let p = Project::new().file("templates/s.yaml", SECRET_TEMPLATE);
    fails_with(
        &p.render("dev", &[]),
        &["templates/s.yaml:6", "has no secrets file"],
    );
    let p = Project::new()
        .file("environments/dev/secrets.yaml", "db:\n  password: oops\n")
        .file("templates/s.yaml", SECRET_TEMPLATE);
    fails_with(
        &p.render("dev", &[]),
        &[
            "environments/dev/secrets.yaml",
            "not encrypted",
            "lockstep encrypt -i",
        ],
    );
}

#[test]
fn rendered_yaml_that_does_not_parse_points_at_the_template_line() {
    let p = Project::new()
        .file("values.yaml", "labels: {a: b, c: d}\n")
        .file(
            "templates/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  labels: {{ values.labels | toyaml }}\n",
        );
    fails_with(
        &p.render("dev", &[]),
        &[
            "templates/cm.yaml:5",
            "rendered YAML does not parse",
            "nindent",
        ],
    );
}

#[test]
fn documents_without_api_version_kind_or_name_are_errors() {
    let p = Project::new()
        .file("templates/a.yaml", "apiVersion: v1\nmetadata: {name: a}\n")
        .file(
            "templates/b.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  labels: {}\n",
        )
        .file("templates/c.yaml", "- just\n- a list\n")
        .file("manifests/d.yaml", "kind: ConfigMap\nmetadata: {name: d}\n");
    fails_with(
        &p.render("dev", &[]),
        &[
            "templates/a.yaml:1",
            "no `kind`",
            "templates/b.yaml:3",
            "metadata.name",
            "templates/c.yaml:1",
            "must be a mapping",
            "manifests/d.yaml:1",
            "no `apiVersion`",
        ],
    );
}

#[test]
fn two_objects_with_one_identity_name_both_templates() {
    let p = Project::new()
        .file(
            "templates/a.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: same}\n",
        )
        .file(
            "templates/b.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: same, namespace: t-dev}\n",
        );
    fails_with(
        &p.render("dev", &[]),
        &[
            "ConfigMap t-dev/same is defined twice",
            "templates/a.yaml",
            "templates/b.yaml",
        ],
    );
}

#[test]
fn project_file_errors_name_the_line_and_unknown_environments_list_the_known() {
    let p = Project::new().file(
        "lockstep.yaml",
        "project: t\nenvironments:\n  dev:\n    namespaec: t-dev\n",
    );
    fails_with(&p.render("dev", &[]), &["lockstep.yaml:4", "namespaec"]);
    let p = Project::new();
    fails_with(
        &p.render("qa", &[]),
        &["\"qa\" is not defined", "dev, prod"],
    );
    let empty = tempfile::tempdir().expect("tempdir");
    let out = Project::new().run(&["render", "--env", "dev", &empty.path().to_string_lossy()]);
    fails_with(&out, &["no lockstep.yaml", "lockstep init"]);
}

#[test]
fn runaway_templates_hit_the_fuel_and_include_limits() {
    let p = Project::new().file(
        "templates/loop.yaml",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n",
    );
    fails_with(&p.render("dev", &[]), &["templates/loop.yaml:1", "fuel"]);
    let p = Project::new()
        .file("templates/_self.yaml", "{{ include(\"_self.yaml\") }}\n")
        .file("templates/a.yaml", "{{ include(\"_self.yaml\") }}\n");
    fails_with(&p.render("dev", &[]), &["nested includes"]);
}

// ------------------------------------------------------------------------------- no plaintext, no key

#[test]
fn render_never_reveals_a_secret_and_needs_no_key() {
    let marker = "MARKER-5e3cr3t-d0-not-leak";
    let b64 = base64::engine::general_purpose::STANDARD.encode(marker);
    let p = Project::new()
        .secrets(
            "environments/dev/secrets.yaml",
            &format!("db:\n  password: {marker}\n"),
        )
        .file("templates/s.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData:\n  a: {{ secrets.db.password }}\ndata:\n  b: {{ secrets.db.password | b64encode }}\n");
    // The HOME is empty and no key variable is set: render must not need one.
    let ok = p.render("dev", &[]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let out_dir = p.path().join("rendered");
    let ok_out = p.render("dev", &["--out", &out_dir.to_string_lossy()]);
    assert!(ok_out.status.success(), "{}", stderr(&ok_out));
    // A failing render (secret misused) must not reveal it either.
    let bad = Project::new()
        .secrets("environments/dev/secrets.yaml", &format!("db:\n  password: {marker}\n"))
        .file("templates/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata:\n  a: {{ secrets.db.password }}\n  b: {{ secrets.db.password | sha256 }}\n");
    let failed = bad.render("dev", &[]);
    assert_eq!(failed.status.code(), Some(2));
    let mut seen = Vec::new();
    for o in [&ok, &ok_out, &failed] {
        seen.extend_from_slice(&o.stdout);
        seen.extend_from_slice(&o.stderr);
    }
    for entry in support::files_under(&out_dir) {
        seen.extend(std::fs::read(entry).expect("read"));
    }
    let seen = String::from_utf8_lossy(&seen);
    // The base64 of the marker at any alignment: check a long inner run of each.
    let shifted: Vec<String> = ["", "x", "xy"]
        .iter()
        .map(|pad| {
            let enc = base64::engine::general_purpose::STANDARD.encode(format!("{pad}{marker}"));
            enc[4..enc.len() - 4].to_string()
        })
        .collect();
    assert!(!seen.contains(marker), "the marker leaked");
    assert!(!seen.contains(&b64), "the marker's base64 leaked");
    for s in &shifted {
        assert!(
            !seen.contains(s.as_str()),
            "a base64 form of the marker leaked"
        );
    }
    assert!(
        support::without_digests(&stdout(&ok))
            .contains("<sealed:environments/dev/secrets.yaml#/db/password>")
    );
}

#[test]
fn a_sops_written_manifest_passes_through_sealed_and_byte_for_byte() {
    let vector = support::repo_root().join("tests/vectors/flux/global_secret.yaml");
    let text = std::fs::read_to_string(&vector).expect("vector");
    let p = Project::new().file("manifests/global.sops.yaml", &text);
    let out = p.render("dev", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("---\n# Source: manifests/global.sops.yaml\n{text}")
    );
}

// ------------------------------------------------------------------------------------------- init

#[test]
fn init_scaffolds_a_project_that_renders_and_whose_secrets_decrypt() {
    let home = tempfile::tempdir().expect("tempdir");
    let dir = home.path().join("My Shop");
    let out = support::run_isolated(
        Path::new(BIN),
        &["init", &dir.to_string_lossy()],
        &[],
        home.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // No identity existed: a new key was created where sops looks, private to the user.
    let key = home.path().join(".config/sops/age/keys.txt");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key).expect("key file").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert!(stderr(&out).contains("created a new age key"));
    for env in ["dev", "prod"] {
        let r = support::run_isolated(
            Path::new(BIN),
            &["render", "--env", env, &dir.to_string_lossy()],
            &[],
            home.path(),
        );
        assert!(r.status.success(), "{env}: {}", stderr(&r));
        assert!(support::without_digests(&stdout(&r)).contains(&format!(
            "<sealed:environments/{env}/secrets.yaml#/api/token>"
        )));
        assert!(stdout(&r).contains("namespace: my-shop"));
    }
    // The secrets are encrypted to that key (the default key file is found by decrypt).
    let d = support::run_isolated(
        Path::new(BIN),
        &[
            "decrypt",
            &dir.join("environments/dev/secrets.yaml").to_string_lossy(),
        ],
        &[],
        home.path(),
    );
    assert!(d.status.success(), "{}", stderr(&d));
    assert!(stdout(&d).starts_with("api:\n    token: "));
    if Command::new("git").arg("--version").output().is_ok() {
        assert!(dir.join(".git/hooks/pre-commit").exists(), "hook installed");
    }
    // A second init refuses to overwrite.
    let again = support::run_isolated(
        Path::new(BIN),
        &["init", &dir.to_string_lossy()],
        &[],
        home.path(),
    );
    assert_eq!(
        again.status.code(),
        Some(2),
        "an error, not 'changes found'"
    );
    assert!(stderr(&again).contains("already exists"));
}

#[test]
fn init_uses_an_existing_identity_and_real_sops_decrypts_its_secrets() {
    let home = tempfile::tempdir().expect("tempdir");
    let key = support::repo_root().join("keys-example/age.key");
    let key_arg = key.to_string_lossy().into_owned();
    let dir = home.path().join("proj");
    let out = support::run_isolated(
        Path::new(BIN),
        &["init", "--no-git", &dir.to_string_lossy()],
        &[("SOPS_AGE_KEY_FILE", &key_arg)],
        home.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(DEMO_RECIPIENT), "{}", stderr(&out));
    assert!(!home.path().join(".config/sops/age/keys.txt").exists());
    let sops = need!("sops", support::peer("sops"));
    let d = support::run_isolated(
        &sops,
        &[
            "-d",
            &dir.join("environments/prod/secrets.yaml").to_string_lossy(),
        ],
        &[("SOPS_AGE_KEY_FILE", &key_arg)],
        home.path(),
    );
    assert!(d.status.success(), "{}", stderr(&d));
    assert!(stdout(&d).starts_with("api:\n    token: "));
}

#[test]
fn shop_example_secrets_are_encrypted_and_open_with_the_demo_key_in_real_sops() {
    let home = tempfile::tempdir().expect("tempdir");
    let shop = shop();
    let check = support::run_isolated(
        Path::new(BIN),
        &["check", &shop.to_string_lossy()],
        &[],
        home.path(),
    );
    assert!(
        check.status.success(),
        "{}{}",
        stdout(&check),
        stderr(&check)
    );
    assert!(stdout(&check).contains("4 file(s) matching creation rules, all encrypted"));
    let sops = need!("sops", support::peer("sops"));
    let key = support::repo_root().join("keys-example/age.key");
    for file in [
        "environments/dev/secrets.yaml",
        "environments/staging/secrets.yaml",
        "environments/prod/secrets.yaml",
        "manifests/payment-webhook.sops.yaml",
    ] {
        let out = support::run_isolated(
            &sops,
            &["-d", &shop.join(file).to_string_lossy()],
            &[("SOPS_AGE_KEY_FILE", &key.to_string_lossy())],
            home.path(),
        );
        assert!(out.status.success(), "{file}: {}", stderr(&out));
    }
}

#[test]
fn install_renders_a_locked_down_controller_and_impersonate_drops_its_apply_rights() {
    let run = |args: &[&str]| {
        let home = tempfile::tempdir().expect("tempdir");
        support::run_isolated(Path::new(BIN), args, &[], home.path())
    };
    let out = run(&["install"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let docs: Vec<yaml_serde::Value> = text
        .split("\n---\n")
        .map(|d| yaml_serde::from_str(d.trim_start_matches("---\n")).expect("yaml"))
        .collect();
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| {
                d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name)
            })
            .unwrap_or_else(|| panic!("{kind} {name} in:\n{text}"))
            .clone()
    };
    find("CustomResourceDefinition", "syncs.lockstep.dev");
    find("Namespace", "lockstep-system");
    find("ServiceAccount", "lockstep-controller");
    find("ClusterRoleBinding", "lockstep-controller-apply");
    let deployment = find("Deployment", "lockstep-controller");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let container = &pod["containers"][0];
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    assert!(
        container["resources"]["requests"]["memory"]
            .as_str()
            .is_some()
    );
    assert_eq!(
        container["image"].as_str(),
        Some(
            format!(
                "ghcr.io/lockstep-dev/lockstep:{}",
                env!("CARGO_PKG_VERSION")
            )
            .as_str()
        ),
        "the image defaults to the binary's version"
    );
    assert!(text.contains("--leader-elect"));
    // The controller's own role reads Secrets but never lists or writes them.
    let role = find("ClusterRole", "lockstep-controller");
    let secrets = role["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .find(|r| r["resources"][0].as_str() == Some("secrets"))
        .expect("a secrets rule");
    assert_eq!(secrets["verbs"].as_sequence().map(Vec::len), Some(1));

    let out = run(&[
        "install",
        "--set",
        "applyAs=impersonate",
        "--set",
        "image.tag=9.9.9",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let impersonating = stdout(&out);
    assert!(!impersonating.contains("lockstep-controller-apply"));
    assert!(impersonating.contains("lockstep:9.9.9"));
    // Every Sync acts as a ServiceAccount, so the controller reads no Secret itself.
    assert!(impersonating.contains("--require-service-account"));
    assert!(
        !impersonating.contains("resources: [secrets]") && !impersonating.contains("- secrets")
    );
    // Metrics on a port (and Service) of their own; ingress only on the two ports.
    assert!(text.contains("--metrics-listen=0.0.0.0:8081"));
    assert!(text.contains("--render-memory=48"));
    let service = find("Service", "lockstep-controller");
    assert_eq!(
        service["spec"]["ports"].as_sequence().map(Vec::len),
        Some(1)
    );
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"].as_str(),
        Some("http")
    );
    find("Service", "lockstep-controller-metrics");
    find("NetworkPolicy", "lockstep-controller");
    let out = run(&[
        "install",
        "--set",
        "controller.defaultServiceAccount=tenant",
    ]);
    assert!(
        stdout(&out).contains("--default-service-account=tenant"),
        "{}",
        stdout(&out)
    );
    let out = run(&["install", "--set", "applyAs=root"]);
    fails_with(&out, &["applyAs must be cluster-admin or impersonate"]);
}

/// The controller's render probe: the real binary as a child process with a data limit and a
/// deadline. A template that builds an unbounded string through minijinja itself (`~` on a lazily
/// repeated list) stops the child at its limit; one that runs too long is killed at the deadline;
/// an ordinary project passes, with or without render problems.
#[test]
fn the_render_probe_stops_a_bomb_in_its_child_and_passes_an_ordinary_project() {
    use lockstep::probe::{Probe, ProbeError};
    use lockstep::render::Request;
    use lockstep::source::Snapshot;
    let project = |templates: &[(&str, String)]| {
        let mut s = Snapshot::new();
        s.insert(
            "lockstep.yaml",
            "project: p\nenvironments:\n  dev: {namespace: p-dev}\n",
        );
        for (name, text) in templates {
            s.insert(format!("templates/{name}"), text.as_str());
        }
        s
    };
    let request = Request {
        env: "dev".into(),
        ..Request::default()
    };
    let probe = Probe {
        exe: BIN.into(),
        memory: 128 * 1024 * 1024,
        time: std::time::Duration::from_secs(20),
    };
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n".to_string();
    probe
        .check(&project(&[("cm.yaml", cm)]), &request)
        .expect("an ordinary project");
    let broken = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: {{ nope }}}\n";
    probe
        .check(&project(&[("cm.yaml", broken.to_string())]), &request)
        .expect("render problems are the render's to report");
    let bomb = "x: {{ 'a' ~ ([range(10000)] * 100000000) }}\n".to_string();
    let started = std::time::Instant::now();
    let got = probe.check(&project(&[("bomb.yaml", bomb)]), &request);
    assert!(matches!(got, Err(ProbeError::Memory(_))), "{got:?}");
    assert!(
        got.err()
            .is_some_and(|e| e.to_string().contains("more than 128 MiB"))
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // Forty templates near their fuel each take a while together; a deadline of 50 ms stops them.
    let busy =
        "{% for i in range(1000) %}{% for j in range(250) %}{% endfor %}{% endfor %}\n".to_string();
    let many: Vec<(String, String)> = (0..40)
        .map(|i| (format!("t{i}.yaml"), busy.clone()))
        .collect();
    let many: Vec<(&str, String)> = many.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let quick = Probe {
        time: std::time::Duration::from_millis(50),
        ..probe.clone()
    };
    let got = quick.check(&project(&many), &request);
    assert!(matches!(got, Err(ProbeError::Time(_))), "{got:?}");
}

/// Names from Git go into API URLs: one that would change the URL (`..`, a `/`) is refused at
/// render, naming the field.
#[test]
fn names_that_would_change_an_api_url_are_refused_at_render() {
    for (field, manifest) in [
        (
            "name",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ../../secrets/x}\n",
        ),
        (
            "namespace",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: ..}\n",
        ),
    ] {
        let p = Project::new().file("templates/c.yaml", manifest);
        fails_with(
            &p.render("dev", &[]),
            &["templates/c.yaml", &format!("metadata.{field}")],
        );
    }
}
