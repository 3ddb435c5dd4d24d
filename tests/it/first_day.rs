//! A newcomer's first day, through the real binary: the README's quick start (`init` → `apply` →
//! change → `diff` → `apply`) against the real control plane, and the messages met on the way.

use crate::support;

use std::path::Path;
use std::process::Output;

const BIN: &str = env!("CARGO_BIN_EXE_lockstep");

fn run(home: &Path, args: &[&str]) -> Output {
    support::run_isolated(Path::new(BIN), args, &[], home)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A minimal project in `dir`: one environment `dev` rendering into `namespace`.
fn tiny_project(dir: &Path, namespace: &str, create_namespace: bool) {
    std::fs::create_dir_all(dir.join("templates")).expect("mkdir");
    std::fs::write(
        dir.join("lockstep.yaml"),
        format!(
            "project: tiny\nenvironments:\n  dev:\n    namespace: {namespace}\n    createNamespace: {create_namespace}\n"
        ),
    )
    .expect("write");
    std::fs::write(
        dir.join("templates/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\ndata: {k: v}\n",
    )
    .expect("write");
}

#[tokio::test]
async fn the_quick_start_init_apply_change_diff_apply_runs_as_written() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let home = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    // As after `eval "export $(scripts/cluster up | tail -n1)"`: KUBECONFIG names the cluster.
    let kc = cluster.kubeconfig.to_string_lossy().into_owned();
    let sh = |args: &[&str]| support::run_isolated(Path::new(BIN), args, &[("KUBECONFIG", &kc)], h);
    let name = format!("day-{}", std::process::id());
    let ns = format!("{name}-dev");

    // The README's quick start, step by step (`myapp` is `name` here).
    let out = sh(&["init", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("lockstep apply --env dev {name}")),
        "{}",
        stdout(&out)
    );
    let out = sh(&["apply", "--env", "dev", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(client.clone());
    assert!(namespaces.get_opt(&ns).await.expect("get").is_some());
    let dir = h.join(&name);
    std::fs::write(
        dir.join("environments/dev/values.yaml"),
        "message: Hello again\n",
    )
    .expect("echo 'message: Hello again' > myapp/environments/dev/values.yaml");
    let out = sh(&["diff", "--env", "dev", &name]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // Only the changed value and the checksum annotation that rolls the pods on a config change.
    let text = stdout(&out);
    let changed = support::changed_lines(&text);
    assert!(
        changed.contains(&"+  PODINFO_UI_MESSAGE: Hello again"),
        "{text}"
    );
    assert!(
        changed
            .iter()
            .all(|l| l.contains("PODINFO_UI_MESSAGE: Hello") || l.contains("checksum/config:")),
        "{text}"
    );
    let out = sh(&["apply", "--env", "dev", &name]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Beyond the README: deleting the Service shows as a prune, and the next apply prunes it.
    let app = std::fs::read_to_string(dir.join("templates/app.yaml")).expect("read");
    let without_service = app.split("\n---\n").next().expect("deployment").to_string() + "\n";
    std::fs::write(dir.join("templates/app.yaml"), without_service).expect("write");
    let out = sh(&["diff", "--env", "dev", &name]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("would prune Service {ns}/app\n")),
        "{}",
        stdout(&out)
    );
    let out = sh(&["apply", "--env", "dev", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    let services: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(client.clone(), &ns);
    assert!(services.get_opt("app").await.expect("get").is_none());
    let out = sh(&["diff", "--env", "dev", &name]);
    support::assert_no_changes(&out);
}

#[tokio::test]
async fn a_namespace_that_neither_exists_nor_is_in_the_set_is_named_with_the_way_out() {
    let cluster = need!("control plane", support::cluster());
    let home = tempfile::tempdir().expect("tempdir");
    let ns = format!("nowhere-{}", std::process::id());
    tiny_project(&home.path().join("p"), &ns, false);
    let kc = cluster.kubeconfig.to_string_lossy().into_owned();
    let out = run(
        home.path(),
        &["apply", "--env", "dev", "p", "--kubeconfig", &kc],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "namespace {ns} does not exist and is not in the set; nothing was written. Add `createNamespace: true` to the environment in lockstep.yaml"
        )),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("were written"), "{}", stderr(&out));
}

#[test]
fn apply_and_diff_refuse_out_which_only_render_has() {
    let home = tempfile::tempdir().expect("tempdir");
    tiny_project(&home.path().join("p"), "tiny", true);
    for cmd in ["apply", "diff"] {
        let out = run(home.path(), &[cmd, "--env", "dev", "p", "--out", "review"]);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("unexpected argument '--out'"),
            "{cmd}: {}",
            stderr(&out)
        );
        assert!(!home.path().join("review").exists());
    }
}

#[test]
fn an_unknown_context_is_named_with_the_file_and_the_contexts_there_are() {
    let home = tempfile::tempdir().expect("tempdir");
    tiny_project(&home.path().join("p"), "tiny", true);
    let kc = home.path().join("kubeconfig");
    std::fs::write(
        &kc,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:1'}\nusers:\n- name: u\n  user: {token: t}\ncontexts:\n- name: real\n  context: {cluster: c, user: u}\ncurrent-context: real\n",
    )
    .expect("write");
    let kc = kc.to_string_lossy().into_owned();
    let out = run(
        home.path(),
        &[
            "diff",
            "--env",
            "dev",
            "p",
            "--kubeconfig",
            &kc,
            "--context",
            "nope",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "context \"nope\" does not exist in {kc}; its contexts: real"
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn init_refuses_an_existing_project_with_exit_2_and_quotes_its_next_steps() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = run(home.path(), &["init", "--no-git", "My App"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("lockstep render --env dev 'My App'\n"),
        "{text}"
    );
    assert!(
        text.contains("lockstep edit 'My App/environments/dev/secrets.yaml'\n"),
        "{text}"
    );
    let out = run(home.path(), &["init", "--no-git", "My App"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("lockstep.yaml already exists; init does not overwrite a project"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_pre_commit_check_is_quiet_on_success_and_hook_install_refusals_exit_2() {
    let home = tempfile::tempdir().expect("tempdir");
    let repo = home.path().join("r");
    std::fs::create_dir_all(&repo).expect("mkdir");
    let git = |args: &[&str]| {
        let ok = std::process::Command::new("git")
            .args(args)
            .current_dir(&repo)
            .env("HOME", home.path())
            .status()
            .expect("git")
            .success();
        assert!(ok, "git {args:?}");
    };
    git(&["init", "-q"]);
    std::fs::write(repo.join("README"), "hello\n").expect("write");
    git(&["add", "README"]);
    let out = support::run_isolated(Path::new(BIN), &["check", "--staged"], &[], &repo);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "", "a hook says nothing when all is well");
    // Without --staged (run by hand), the summary line is still printed.
    let out = support::run_isolated(Path::new(BIN), &["check"], &[], &repo);
    assert!(stdout(&out).contains("all encrypted"), "{}", stdout(&out));

    std::fs::write(repo.join(".git/hooks/pre-commit"), "#!/bin/sh\necho mine\n").expect("write");
    let out = support::run_isolated(Path::new(BIN), &["hook", "install"], &[], &repo);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("was not written by lockstep"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn help_is_compact_everywhere_and_lists_what_install_can_set() {
    let home = tempfile::tempdir().expect("tempdir");
    for cmd in ["apply", "diff", "install", "controller", "render"] {
        let long = run(home.path(), &[cmd, "--help"]);
        let short = run(home.path(), &[cmd, "-h"]);
        assert!(long.status.success(), "{cmd}: {}", stderr(&long));
        assert_eq!(stdout(&long), stdout(&short), "{cmd}: --help and -h differ");
        insta::assert_snapshot!(format!("help_{cmd}"), stdout(&long));
    }
}
