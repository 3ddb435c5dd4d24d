//! Charts from a chart repository over TLS (`helm package` + `helm repo index`, served on
//! loopback behind Basic auth) and from the real Distribution registry (`helm push`): `lockstep
//! charts update` pins each archive's digest in `lockstep.lock`, a render equals `helm template`
//! of the same archive object by object, works offline from the cache, and refuses an archive
//! whose digest is not the locked one.

use crate::charts::{BIN, helm_template, helms, objects, web_chart, write};
use crate::support::{self, gitserver::GitHttp, gitserver::Registry};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lockstep::render::lock::digest_of;

/// What a run needs: Helm, the cache, the CA, Helm's config home (credentials).
pub(crate) struct Env {
    pub(crate) helm: PathBuf,
    pub(crate) home: tempfile::TempDir,
    pub(crate) ca: PathBuf,
}

impl Env {
    fn cache(&self) -> PathBuf {
        self.home.path().join("cache")
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        let helm_config = self.home.path().join("helm-config");
        support::run_isolated(
            Path::new(BIN),
            args,
            &[
                ("LOCKSTEP_HELM", &self.helm.to_string_lossy()),
                ("LOCKSTEP_CACHE_DIR", &self.cache().to_string_lossy()),
                ("SSL_CERT_FILE", &self.ca.to_string_lossy()),
                ("HELM_CONFIG_HOME", &helm_config.to_string_lossy()),
            ],
            self.home.path(),
        )
    }

    pub(crate) fn login(&self, url: &str, user: &str, password: &str) {
        write(
            self.home.path(),
            "helm-config/repositories.yaml",
            &format!(
                "apiVersion: \"\"\nrepositories:\n- name: team\n  url: {url}\n  username: {user}\n  password: {password}\n"
            ),
        );
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Packages the test chart `web` (Deployment, Service, CRD, a subchart) into `into`, returning the
/// archive's path; `tweak` changes its Deployment's image (a different archive, same version).
pub(crate) fn package(helm: &Path, into: &Path, tweak: Option<&str>) -> PathBuf {
    let src = tempfile::tempdir().expect("tempdir");
    web_chart(src.path());
    if let Some(image) = tweak {
        write(
            src.path(),
            "charts/web/values.yaml",
            &format!(
                "replicas: 1\nimage: {image}\nport: 8080\nextraLabels: {{}}\ncache:\n  enabled: true\n"
            ),
        );
    }
    let out = Command::new(helm)
        .arg("package")
        .arg(src.path().join("charts/web"))
        .arg("--destination")
        .arg(into)
        .env("HOME", src.path())
        .output()
        .expect("helm package");
    assert!(out.status.success(), "{}", stderr(&out));
    into.join("web-1.2.3.tgz")
}

pub(crate) fn repo_index(helm: &Path, dir: &Path, url: &str) {
    let out = Command::new(helm)
        .args(["repo", "index"])
        .arg(dir)
        .args(["--url", url])
        .env("HOME", dir)
        .output()
        .expect("helm repo index");
    assert!(out.status.success(), "{}", stderr(&out));
}

fn project(root: &Path, chart: &str) {
    write(
        root,
        "lockstep.yaml",
        &format!(
            "project: site\nenvironments:\n  dev: {{namespace: site-dev}}\ncharts:\n  front:\n{chart}    values: charts/front.values.yaml\n"
        ),
    );
    write(root, "charts/front.values.yaml", "replicas: 2\n");
}

fn set_version(root: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(root.join("lockstep.yaml")).expect("read");
    std::fs::write(root.join("lockstep.yaml"), text.replace(from, to)).expect("write");
}

/// The render of `dir` equals `helm template` of `archive` with the same values.
fn renders_as_helm(env: &Env, dir: &str, archive: &Path) -> String {
    let out = env.run(&["render", "--env", "dev", dir]);
    support::assert_success(&out);
    let ours = String::from_utf8(out.stdout).expect("utf-8");
    let theirs = helm_template(&env.helm, archive, "front", "site-dev", "replicas: 2\n");
    assert_eq!(objects(&ours), objects(&theirs), "object by object");
    assert!(
        objects(&ours).contains_key("ConfigMap/front-cache"),
        "the subchart"
    );
    ours
}

#[test]
fn repository_charts_are_locked_by_digest_rendered_offline_and_refused_when_altered() {
    for helm in need!("helm v3 and v4", helms()) {
        from_a_repository(&helm);
    }
}

fn from_a_repository(helm: &Path) {
    let served = tempfile::tempdir().expect("tempdir");
    let archive = package(helm, served.path(), None);
    let server = GitHttp::start_files_tls(served.path(), Some(("charts", "s3cret")));
    let url = server.url("team");
    let repo_dir = served.path().join("team");
    std::fs::create_dir_all(&repo_dir).expect("mkdir");
    std::fs::rename(&archive, repo_dir.join("web-1.2.3.tgz")).expect("move");
    let archive = repo_dir.join("web-1.2.3.tgz");
    repo_index(helm, &repo_dir, &url);
    let env = Env {
        helm: helm.to_path_buf(),
        home: tempfile::tempdir().expect("tempdir"),
        ca: server.ca_file().expect("tls").to_path_buf(),
    };
    let project_dir = tempfile::tempdir().expect("tempdir");
    let root = project_dir.path();
    let dir = root.to_string_lossy().into_owned();
    project(
        root,
        &format!("    repo: {url}\n    chart: web\n    version: 1.2.3\n"),
    );

    // Before the lock: the render says what to run.
    support::fails_saying(
        &env.run(&["render", "--env", "dev", &dir]),
        &[
            "lockstep.lock has no digest",
            "lockstep charts update front",
        ],
    );
    // No credentials for the repository: the server's 401 is named.
    support::fails_saying(
        &env.run(&["charts", "update", &dir]),
        &["chart front:", "asks for credentials", "127.0.0.1"],
    );
    assert!(!root.join("lockstep.lock").exists());

    // With Helm's repositories.yaml: locked, with the archive's SHA-256 and URL.
    env.login(&url, "charts", "s3cret");
    let out = env.run(&["charts", "update", &dir]);
    support::assert_success(&out);
    let digest = digest_of(&std::fs::read(&archive).expect("archive"));
    let lock = std::fs::read_to_string(root.join("lockstep.lock")).expect("lock");
    assert!(lock.contains(&format!("digest: {digest}")), "{lock}");
    assert!(
        lock.contains(&format!("url: {url}/web-1.2.3.tgz")),
        "{lock}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("front: {url}/web@1.2.3 {digest}")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!lock.contains("s3cret"), "{lock}");
    let ours = renders_as_helm(&env, &dir, &archive);
    assert!(
        ours.contains(&format!(
            "# Source: {url}/web@1.2.3/templates/deployment.yaml"
        )),
        "{ours}"
    );
    // A second update changes nothing.
    let out = env.run(&["charts", "update", &dir]);
    support::assert_success(&out);
    assert!(stderr(&out).contains("(unchanged)"), "{}", stderr(&out));

    // Offline: the server is gone, the cache serves the render.
    drop(server);
    renders_as_helm(&env, &dir, &archive);

    // The repository now serves a different archive under the same name and version.
    let original = std::fs::read(&archive).expect("archive");
    let altered_dir = tempfile::tempdir().expect("tempdir");
    let altered = package(helm, altered_dir.path(), Some("nginx:evil"));
    std::fs::copy(&altered, &archive).expect("replace");
    let server = GitHttp::start_files_tls(served.path(), Some(("charts", "s3cret")));
    let url2 = server.url("team");
    let env = Env {
        ca: server.ca_file().expect("tls").to_path_buf(),
        ..env
    };
    // (A new server has a new port: point the project and the lock at it.)
    set_version(root, &url, &url2);
    let lock = std::fs::read_to_string(root.join("lockstep.lock")).expect("lock");
    std::fs::write(root.join("lockstep.lock"), lock.replace(&url, &url2)).expect("write");
    env.login(&url2, "charts", "s3cret");
    std::fs::remove_dir_all(env.cache()).expect("clear the cache");
    support::fails_saying(
        &env.run(&["render", "--env", "dev", &dir]),
        &["chart front:", &digest, "refused", "lockstep charts update"],
    );
    // The index still lists the old digest: update refuses the altered archive too.
    repo_index(helm, &repo_dir, &url2);
    let index = std::fs::read_to_string(repo_dir.join("index.yaml")).expect("index");
    let new_digest = digest_of(&std::fs::read(&archive).expect("archive"));
    let old_hex = digest.trim_start_matches("sha256:");
    std::fs::write(
        repo_dir.join("index.yaml"),
        index.replace(new_digest.trim_start_matches("sha256:"), old_hex),
    )
    .expect("write");
    support::fails_saying(
        &env.run(&["charts", "update", &dir]),
        &["its source lists", "altered or damaged"],
    );
    // An honest new index: update takes the new digest, and says so.
    repo_index(helm, &repo_dir, &url2);
    let out = env.run(&["charts", "update", &dir]);
    support::assert_success(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&new_digest),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_ne!(original, std::fs::read(&archive).expect("archive"));

    // A version the lock does not pin, then one the repository does not have.
    set_version(root, "version: 1.2.3", "version: 1.2.4");
    support::fails_saying(
        &env.run(&["render", "--env", "dev", &dir]),
        &["pins", "web@1.2.3", "asks for", "web@1.2.4"],
    );
    support::fails_saying(
        &env.run(&["charts", "update", &dir]),
        &["has no version 1.2.4 of web", "1.2.3"],
    );
    // A chart the repository does not have.
    set_version(root, "chart: web", "chart: webb");
    support::fails_saying(
        &env.run(&["charts", "update", &dir]),
        &["has no chart named \"webb\""],
    );
    // Nothing of the login reached the cache or the project.
    for file in support::files_under(env.home.path())
        .into_iter()
        .chain(support::files_under(root))
    {
        if file.ends_with("repositories.yaml") {
            continue;
        }
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("s3cret"),
            "{}",
            file.display()
        );
    }
}

#[test]
fn oci_charts_pushed_with_helm_are_locked_and_rendered() {
    let helms = need!("helm v3 and v4", helms());
    let registry_bin = need!("the Distribution registry", support::peer("registry"));
    let registry = Registry::start(&registry_bin);
    let served = tempfile::tempdir().expect("tempdir");
    let archive = package(&helms[0], served.path(), None);
    let scratch = tempfile::tempdir().expect("tempdir");
    let out = Command::new(&helms[0])
        .arg("push")
        .arg(&archive)
        .arg(format!("oci://{}/charts", registry.host()))
        .arg("--ca-file")
        .arg(registry.ca_file())
        .env("HOME", scratch.path())
        .env("HELM_REGISTRY_CONFIG", scratch.path().join("config.json"))
        .output()
        .expect("helm push");
    assert!(out.status.success(), "{}", stderr(&out));
    for helm in &helms {
        let env = Env {
            helm: helm.clone(),
            home: tempfile::tempdir().expect("tempdir"),
            ca: registry.ca_file().to_path_buf(),
        };
        let project_dir = tempfile::tempdir().expect("tempdir");
        let root = project_dir.path();
        let dir = root.to_string_lossy().into_owned();
        let reference = format!("oci://{}/charts/web", registry.host());
        project(
            root,
            &format!("    chart: {reference}\n    version: 1.2.3\n"),
        );
        let out = env.run(&["charts", "update", &dir]);
        support::assert_success(&out);
        let lock = std::fs::read_to_string(root.join("lockstep.lock")).expect("lock");
        let digest = digest_of(&std::fs::read(&archive).expect("archive"));
        assert!(lock.contains(&format!("digest: {digest}")), "{lock}");
        assert!(lock.contains(&format!("source: {reference}")), "{lock}");
        let ours = renders_as_helm(&env, &dir, &archive);
        assert!(
            ours.contains(&format!(
                "# Source: {reference}@1.2.3/templates/service.yaml"
            )),
            "{ours}"
        );
        // `pull` on a fresh cache fetches it by digest.
        std::fs::remove_dir_all(env.cache()).expect("clear");
        let out = env.run(&["charts", "pull", &dir]);
        support::assert_success(&out);
        assert!(stderr(&out).contains("1 chart fetched"), "{}", stderr(&out));
        // A tag the registry does not have.
        set_version(root, "version: 1.2.3", "version: 9.9.9");
        support::fails_saying(
            &env.run(&["charts", "update", &dir]),
            &["chart front:", "manifests/9.9.9", "404"],
        );
    }
}
