//! `lockstep review` through the real binary over a real Git repository (the `git` CLI makes the
//! commits): every environment rendered at two revisions without a key, the Markdown summary and
//! per-object diffs, `secret value changed` for a re-encrypted value, `would prune`, exit codes as
//! `diff`, and no plaintext anywhere in what it prints.

use crate::support;

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_lockstep");
const DEMO_RECIPIENT: &str = "age1cunssxzmelyguczf39cjyuztac9mh3wlk6hgqv0s8m7khtfyw47qxrz3zg";
const MARKER: &str = "review-marker-pl41nt3xt";

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

fn commit(dir: &Path, message: &str) {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
}

fn review(home: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["review"];
    all.extend_from_slice(args);
    let out: Output = support::run_isolated(Path::new(BIN), &all, &[], home);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A repository whose project sits in `deploy/`: two environments, a Secret from sealed values, a
/// ConfigMap, and a Deployment.
fn repository() -> (tempfile::TempDir, tempfile::TempDir) {
    let repo = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let d = repo.path();
    git(d, &["init", "-q", "-b", "main"]);
    write(d, "README.md", "not the project\n");
    write(
        d,
        "deploy/lockstep.yaml",
        "project: shop\nenvironments:\n  dev: {namespace: shop-dev}\n  prod: {namespace: shop}\n",
    );
    write(d, "deploy/values.yaml", "image: nginx:1.27\n");
    write(
        d,
        "deploy/templates/app.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: web, image: \"{{ values.image }}\"}]\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: old-settings}\ndata: {a: b}\n",
    );
    write(
        d,
        "deploy/templates/secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData:\n  password: {{ secrets.db.password }}\n  user: {{ secrets.db.user }}\n",
    );
    for env in ["dev", "prod"] {
        let rel = format!("deploy/environments/{env}/secrets.yaml");
        let plain = format!("db:\n  password: {MARKER}-{env}\n  user: {MARKER}-user\n");
        let sealed = support::encrypt_stdin(Path::new(BIN), DEMO_RECIPIENT, &rel, &plain);
        std::fs::create_dir_all(d.join(format!("deploy/environments/{env}"))).expect("mkdir");
        std::fs::write(d.join(&rel), sealed).expect("write");
    }
    commit(d, "first");
    (repo, home)
}

fn no_plaintext(text: &str) {
    assert!(!text.contains(MARKER), "plaintext in the output:\n{text}");
    assert!(!text.contains("AGE-SECRET-KEY"), "{text}");
}

#[test]
fn a_change_is_reviewed_per_environment_without_a_key() {
    let (repo, home) = repository();
    let d = repo.path();
    let project = d.join("deploy");
    let project = project.to_string_lossy();
    // Nothing changed: exit 0.
    let (code, out, err) = review(home.path(), &[&project]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("No environment changes."), "{out}");

    // prod gets a new image, the ConfigMap goes, dev's password is re-encrypted (`set`).
    write(
        d,
        "deploy/environments/prod/values.yaml",
        "image: nginx:1.28\n",
    );
    write(
        d,
        "deploy/templates/app.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: web, image: \"{{ values.image }}\"}]\n",
    );
    let key = support::repo_root().join("keys-example/age.key");
    let file = d.join("deploy/environments/dev/secrets.yaml");
    let out = support::run_isolated(
        Path::new(BIN),
        &[
            "set",
            "--identity",
            &key.to_string_lossy(),
            &file.to_string_lossy(),
            r#"["db"]["password"]"#,
            &format!("\"{MARKER}-rotated\""),
        ],
        &[],
        home.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The working tree (uncommitted) against HEAD.
    let (code, out, err) = review(home.path(), &[&project]);
    assert_eq!(code, Some(1), "{out}{err}");
    no_plaintext(&out);
    no_plaintext(&err);
    for needle in [
        "→ the working tree",
        "| dev | 0 | 1 | 1 | 0 | 1 | 1 |",
        "| prod | 0 | 1 | 1 | 0 | 1 | 0 |",
        "- **would prune** `ConfigMap shop-dev/old-settings`",
        "- **changed** `Deployment.apps shop/web`",
        "secret value changed: `environments/dev/secrets.yaml#/db/password`",
        "-        image: nginx:1.27",
        "+        image: nginx:1.28",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    // Only the password was re-encrypted: the user's reference is not named.
    assert!(
        !out.contains("secret value changed: `environments/dev/secrets.yaml#/db/user`"),
        "{out}"
    );

    // Committed: the same review between two commits, named by their subjects.
    commit(d, "prod gets nginx 1.28");
    let (code, between, err) = review(home.path(), &["--from", "HEAD~1", "--to", "HEAD", &project]);
    assert_eq!(code, Some(1), "{between}{err}");
    assert!(between.contains("(first) → `"), "{between}");
    assert!(between.contains("(prod gets nginx 1.28)"), "{between}");
    assert!(
        between.contains("- **would prune** `ConfigMap shop/old-settings`"),
        "{between}"
    );
    // One environment only.
    let (_, only, _) = review(home.path(), &["--from", "HEAD~1", "-e", "prod", &project]);
    assert!(
        only.contains("| prod |") && !only.contains("| dev |"),
        "{only}"
    );
}

#[test]
fn environments_added_or_broken_and_bad_revisions_are_named() {
    let (repo, home) = repository();
    let d = repo.path();
    let project = d.join("deploy");
    let project = project.to_string_lossy();
    write(
        d,
        "deploy/lockstep.yaml",
        "project: shop\nenvironments:\n  dev: {namespace: shop-dev}\n  prod: {namespace: shop}\n  qa: {namespace: shop-qa}\n",
    );
    // qa has no secrets file: its render fails, and says so; the review exits 2.
    let (code, out, err) = review(home.path(), &[&project]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(out.contains("| qa ⚠ render failed |"), "{out}");
    assert!(
        out.contains("the render at the new revision failed"),
        "{out}"
    );
    assert!(err.contains("a render failed"), "{err}");
    no_plaintext(&out);

    // A template that does not render: named with its file.
    std::fs::remove_dir_all(d.join("deploy/environments/qa")).ok();
    write(
        d,
        "deploy/lockstep.yaml",
        "project: shop\nenvironments:\n  dev: {namespace: shop-dev}\n  prod: {namespace: shop}\n",
    );
    write(
        d,
        "deploy/templates/broken.yaml",
        "{{ values.nope.deeper }}\n",
    );
    let (code, out, _) = review(home.path(), &[&project]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("templates/broken.yaml"), "{out}");
    std::fs::remove_file(d.join("deploy/templates/broken.yaml")).expect("rm");

    // A revision that does not exist, a directory outside any repository.
    let (code, _, err) = review(home.path(), &["--from", "no-such-branch", &project]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no-such-branch"), "{err}");
    let outside = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = review(home.path(), &[&outside.path().to_string_lossy()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not inside a Git repository"), "{err}");
}

#[test]
fn a_huge_change_stays_under_the_comment_size() {
    let (repo, home) = repository();
    let d = repo.path();
    let project = d.join("deploy");
    let project = project.to_string_lossy();
    let many: String = (0..400)
        .map(|i| format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i}}}\ndata: {{text: \"{}\"}}\n", "x".repeat(200)))
        .collect();
    write(d, "deploy/templates/many.yaml", &many);
    let (code, out, err) = review(home.path(), &["--max-size", "20000", &project]);
    assert_eq!(code, Some(1), "{err}");
    assert!(out.len() <= 20_000, "{} characters", out.len());
    assert!(
        out.contains("diffs left out to keep this comment under 20000 characters"),
        "{out}"
    );
    // The summary still counts everything.
    assert!(out.contains("| dev | 400 | 0 | 0 | 0 | 3 | 0 |"), "{out}");
    assert!(out.contains("| prod | 400 | 0 | 0 | 0 | 3 | 0 |"), "{out}");
}
