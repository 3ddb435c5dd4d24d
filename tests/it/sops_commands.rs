//! The commands that change encrypted files — edit, set, unset, rotate, updatekeys, reseal — and the
//! pre-commit guard, through the real binary, with the real `sops` reading the results.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{peer, run_isolated};

const LOCKSTEP: &str = env!("CARGO_BIN_EXE_lockstep");
const MARKER: &str = "marker-71c0de-plaintext";

fn ls(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    run_isolated(Path::new(LOCKSTEP), args, env, dir)
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A key pair from `lockstep keygen`: (key file path, recipient).
fn key(dir: &Path, name: &str) -> (String, String) {
    let path = dir.join(name);
    let out = ls(dir, &["keygen", "-o", path.to_str().expect("utf-8")], &[]);
    assert!(out.status.success());
    let r = String::from_utf8_lossy(&out.stderr)
        .trim()
        .trim_start_matches("Public key: ")
        .to_string();
    (path.to_string_lossy().into_owned(), r)
}

fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    support::files_under(dir)
        .into_iter()
        .filter(|p| {
            std::fs::read(p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
        .collect()
}

fn editor(dir: &Path, body: &str) -> String {
    let path = dir.join("editor.sh");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nset -e\necho \"$1\" >> \"{}/edited-paths\"\n{body}\n",
            dir.display()
        ),
    )
    .expect("editor");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path.to_string_lossy().into_owned()
}

fn line_of<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find(|l| l.trim_start().starts_with(key))
        .unwrap_or_else(|| panic!("{key} in:\n{text}"))
}

#[test]
fn edit_uses_memory_reopens_on_invalid_input_and_changes_only_what_was_edited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (key_file, recipient) = key(d, "k.txt");
    std::fs::write(
        d.join("s.yaml"),
        format!("keep: {MARKER}\nchange: old\nlist:\n    - a\n"),
    )
    .expect("write");
    ok(
        ls(d, &["encrypt", "-i", "--age", &recipient, "s.yaml"], &[]),
        "encrypt",
    );
    let before = std::fs::read_to_string(d.join("s.yaml")).expect("read");
    // First session breaks the YAML; the reopened editor sees that edit and repairs it.
    let ed = editor(
        d,
        &format!(
            "if [ ! -f \"{0}/opened-once\" ]; then touch \"{0}/opened-once\"; sed -i 's/change: old/change: [new/' \"$1\"; \
             else grep -q 'change: \\[new' \"$1\"; sed -i 's/change: \\[new/change: new/' \"$1\"; fi",
            d.display()
        ),
    );
    let out = ls(
        d,
        &["edit", "s.yaml"],
        &[("SOPS_AGE_KEY_FILE", &key_file), ("EDITOR", &ed)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("s.yaml: the edited file is not valid: line"),
        "{stderr}"
    );
    assert!(!stderr.contains(MARKER));
    // The editor saw a file on /dev/shm, in a private directory that is gone now.
    let paths = std::fs::read_to_string(d.join("edited-paths")).expect("paths");
    let used: Vec<&str> = paths.lines().collect();
    assert_eq!(used.len(), 2, "{paths}");
    for p in &used {
        assert!(
            p.starts_with("/dev/shm/lockstep-edit-") && p.ends_with("/s.yaml"),
            "{p}"
        );
        assert!(
            !Path::new(p).exists() && !Path::new(p).parent().expect("dir").exists(),
            "{p} left behind"
        );
    }
    let after = std::fs::read_to_string(d.join("s.yaml")).expect("read");
    assert_eq!(
        line_of(&before, "keep:"),
        line_of(&after, "keep:"),
        "unchanged value keeps its ciphertext"
    );
    assert_eq!(line_of(&before, "- "), line_of(&after, "- "));
    assert_ne!(line_of(&before, "change:"), line_of(&after, "change:"));
    let plain = ok(
        ls(
            d,
            &["decrypt", "s.yaml"],
            &[("SOPS_AGE_KEY_FILE", &key_file)],
        ),
        "decrypt",
    );
    assert_eq!(
        plain,
        format!("keep: {MARKER}\nchange: new\nlist:\n    - a\n")
    );
    // Nothing but the ciphertext file and the key remain on disk, and no plaintext in them.
    assert!(
        files_containing(d, MARKER).is_empty(),
        "{:?}",
        files_containing(d, MARKER)
    );

    // Unchanged → 200 like sops; editor failure → nothing written.
    let same = std::fs::read(d.join("s.yaml")).expect("read");
    let out = ls(
        d,
        &["edit", "s.yaml"],
        &[("SOPS_AGE_KEY_FILE", &key_file), ("EDITOR", "true")],
    );
    assert_eq!(
        out.status.code(),
        Some(200),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ls(
        d,
        &["edit", "s.yaml"],
        &[("SOPS_AGE_KEY_FILE", &key_file), ("EDITOR", "false")],
    );
    assert_eq!(out.status.code(), Some(1));
    // Hopelessly invalid after three tries: nothing written.
    let bad = editor(d, "echo 'a: [' > \"$1\"");
    let out = ls(
        d,
        &["edit", "s.yaml"],
        &[("SOPS_AGE_KEY_FILE", &key_file), ("EDITOR", &bad)],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(std::fs::read(d.join("s.yaml")).expect("read"), same);
}

#[test]
fn edit_creates_a_new_file_from_creation_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (key_file, recipient) = key(d, "k.txt");
    std::fs::write(
        d.join(".sops.yaml"),
        format!("creation_rules:\n  - path_regex: \\.env$\n    age: {recipient}\n"),
    )
    .expect("cfg");
    let ed = editor(d, &format!("printf 'TOKEN={MARKER}\\n' > \"$1\""));
    ok(
        ls(d, &["edit", "new.env"], &[("EDITOR", &ed)]),
        "edit new file",
    );
    let text = std::fs::read_to_string(d.join("new.env")).expect("read");
    assert!(
        text.starts_with("TOKEN=ENC[AES256_GCM,") && !text.contains(MARKER),
        "{text}"
    );
    let plain = ok(
        ls(
            d,
            &["decrypt", "new.env"],
            &[("SOPS_AGE_KEY_FILE", &key_file)],
        ),
        "decrypt",
    );
    assert_eq!(plain, format!("TOKEN={MARKER}\n"));
}

#[test]
fn set_and_unset_touch_only_their_values_and_sops_agrees() {
    let Some(sops) = support::require("sops", peer("sops")) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (key_file, recipient) = key(d, "k.txt");
    std::fs::write(
        d.join("s.json"),
        "{\"a\": \"x\", \"b\": {\"c\": 1}, \"d\": [1, 2]}",
    )
    .expect("write");
    ok(
        ls(d, &["encrypt", "-i", "--age", &recipient, "s.json"], &[]),
        "encrypt",
    );
    let before = std::fs::read_to_string(d.join("s.json")).expect("read");
    let env = [("SOPS_AGE_KEY_FILE", key_file.as_str())];
    ok(
        ls(d, &["set", "s.json", "[\"b\"][\"c\"]", "2"], &env),
        "set",
    );
    ok(
        ls(d, &["set", "s.json", "[\"new\"][\"deep\"]", "\"v\""], &env),
        "set creates parents",
    );
    ok(
        ls(d, &["set", "s.json", "[\"d\"][5]", "3"], &env),
        "set appends",
    );
    ok(ls(d, &["unset", "s.json", "[\"a\"]"], &env), "unset");
    let out = ls(d, &["unset", "s.json", "[\"a\"]"], &env);
    assert_eq!(out.status.code(), Some(1), "unset of a missing key fails");
    ok(
        ls(d, &["unset", "--idempotent", "s.json", "[\"a\"]"], &env),
        "unset --idempotent",
    );
    let after = std::fs::read_to_string(d.join("s.json")).expect("read");
    let first_list_item = |t: &str| {
        t.lines()
            .skip_while(|l| !l.contains("\"d\""))
            .nth(1)
            .expect("item")
            .to_string()
    };
    assert_eq!(
        first_list_item(&before),
        first_list_item(&after),
        "untouched values keep their ciphertext"
    );
    let out = ok(run_isolated(&sops, &["-d", "s.json"], &env, d), "sops -d");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"b": {"c": 2}, "d": [1, 2, 3], "new": {"deep": "v"}})
    );
}

#[test]
fn rotate_updatekeys_and_reseal_follow_the_rules_and_sops_reads_the_results() {
    let Some(sops) = support::require("sops", peer("sops")) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (ka, a) = key(d, "a.txt");
    let (kb, b) = key(d, "b.txt");
    let rules = |r: &str| format!("creation_rules:\n  - path_regex: secrets/.*\n    age: {r}\n");
    std::fs::create_dir_all(d.join("secrets")).expect("mkdir");
    std::fs::write(d.join(".sops.yaml"), rules(&a)).expect("cfg");
    for name in ["one.yaml", "two.env"] {
        let body = if name.ends_with(".env") {
            format!("K={MARKER}\n")
        } else {
            format!("k: {MARKER}\n")
        };
        std::fs::write(d.join("secrets").join(name), body).expect("write");
        ok(
            ls(d, &["encrypt", "-i", &format!("secrets/{name}")], &[]),
            "encrypt",
        );
    }
    let data_key_line = |t: &str| {
        t.lines()
            .find(|l| l.contains("ENC["))
            .expect("value")
            .to_string()
    };
    let before = std::fs::read_to_string(d.join("secrets/one.yaml")).expect("read");

    // The rules now name b instead of a: dry run first — nothing is written.
    std::fs::write(d.join(".sops.yaml"), rules(&b)).expect("cfg");
    let report = ok(
        ls(
            d,
            &["reseal", "--dry-run", "secrets"],
            &[("SOPS_AGE_KEY_FILE", &ka)],
        ),
        "dry run",
    );
    assert!(
        report.contains(&format!("+ {b}"))
            && report.contains(&format!("- {a}"))
            && report.contains("2 file(s) would be resealed"),
        "{report}"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("secrets/one.yaml")).expect("read"),
        before
    );
    // The CI check: recipients differ from the rules → exit 1, nothing written, no key needed.
    let out = ls(d, &["reseal", "--check", "secrets"], &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("recipients differ from the creation rules"),
        "{text}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("2 of 2 file(s) have recipients that differ"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = ok(
        ls(d, &["reseal", "secrets"], &[("SOPS_AGE_KEY_FILE", &ka)]),
        "reseal",
    );
    assert!(report.contains("2 file(s) resealed"), "{report}");
    let report = ok(
        ls(d, &["reseal", "--check", "secrets"], &[]),
        "check after reseal",
    );
    assert!(
        report.contains("secrets/one.yaml: up to date") && report.contains("2 file(s) up to date"),
        "{report}"
    );
    let after = std::fs::read_to_string(d.join("secrets/one.yaml")).expect("read");
    assert_ne!(
        data_key_line(&before),
        data_key_line(&after),
        "a new data key re-encrypts every value"
    );
    assert!(after.contains(&b) && !after.contains(&a));
    for f in ["secrets/one.yaml", "secrets/two.env"] {
        let out = ok(
            run_isolated(&sops, &["-d", f], &[("SOPS_AGE_KEY_FILE", &kb)], d),
            "sops -d with b",
        );
        assert!(out.contains(MARKER));
        assert!(
            !run_isolated(&sops, &["-d", f], &[("SOPS_AGE_KEY_FILE", &ka)], d)
                .status
                .success(),
            "a still reads {f}"
        );
    }
    assert!(
        std::fs::read_dir(d.join("secrets"))
            .expect("ls")
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().ends_with(".tmp")),
        "temp files left"
    );

    // updatekeys: same data key, recipients from the rules (a and b now); values untouched.
    std::fs::write(d.join(".sops.yaml"), rules(&format!("{a},{b}"))).expect("cfg");
    let before = std::fs::read_to_string(d.join("secrets/one.yaml")).expect("read");
    let report = ok(
        ls(
            d,
            &["updatekeys", "-y", "secrets/one.yaml"],
            &[("SOPS_AGE_KEY_FILE", &kb)],
        ),
        "updatekeys",
    );
    // Only a recipient was added: no advice about removed ones.
    assert!(
        report.contains(&format!("+ {a}")) && report.contains("data key kept"),
        "{report}"
    );
    assert!(!report.contains("removed recipients"), "{report}");
    let after = std::fs::read_to_string(d.join("secrets/one.yaml")).expect("read");
    assert_eq!(data_key_line(&before), data_key_line(&after));
    assert_eq!(line_of(&before, "mac:"), line_of(&after, "mac:"));
    ok(
        run_isolated(
            &sops,
            &["-d", "secrets/one.yaml"],
            &[("SOPS_AGE_KEY_FILE", &ka)],
            d,
        ),
        "sops -d with a again",
    );

    // rotate: new data key, recipients kept, minus --rm-age.
    ok(
        ls(
            d,
            &["rotate", "-i", "--rm-age", &a, "secrets/one.yaml"],
            &[("SOPS_AGE_KEY_FILE", &kb)],
        ),
        "rotate",
    );
    let rotated = std::fs::read_to_string(d.join("secrets/one.yaml")).expect("read");
    assert!(!rotated.contains(&a) && rotated.contains(&b));
    ok(
        run_isolated(
            &sops,
            &["-d", "secrets/one.yaml"],
            &[("SOPS_AGE_KEY_FILE", &kb)],
            d,
        ),
        "sops after rotate",
    );
    // sops-written files rotate in lockstep too.
    let f = d.join("secrets/three.yaml");
    std::fs::write(&f, "x: y\n").expect("write");
    ok(
        run_isolated(
            &sops,
            &["-e", "-i", "--age", &b, "secrets/three.yaml"],
            &[],
            d,
        ),
        "sops -e",
    );
    ok(
        ls(
            d,
            &["rotate", "-i", "--add-age", &a, "secrets/three.yaml"],
            &[("SOPS_AGE_KEY_FILE", &kb)],
        ),
        "rotate sops file",
    );
    ok(
        run_isolated(
            &sops,
            &["-d", "secrets/three.yaml"],
            &[("SOPS_AGE_KEY_FILE", &ka)],
            d,
        ),
        "sops -d with added a",
    );
}

#[test]
fn check_and_the_pre_commit_hook_refuse_plaintext_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (key_file, recipient) = key(d, "k.txt");
    let git = |args: &[&str]| {
        Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.invalid",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .current_dir(d)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    Path::new(LOCKSTEP).parent().expect("bin dir").display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .output()
            .expect("git")
    };
    assert!(git(&["init", "-q"]).status.success());
    std::fs::write(
        d.join(".sops.yaml"),
        format!("creation_rules:\n  - path_regex: secrets/.*\\.yaml$\n    age: {recipient}\n"),
    )
    .expect("cfg");
    std::fs::create_dir_all(d.join("secrets")).expect("mkdir");
    std::fs::write(d.join("secrets/db.yaml"), format!("password: {MARKER}\n")).expect("write");
    std::fs::write(d.join("README.md"), "not a secret\n").expect("write");

    let out = ls(d, &["check"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("secrets/db.yaml: matches a creation rule but is not encrypted")
            && !e.contains("README"),
        "{e}"
    );
    assert!(!e.contains(MARKER));

    ok(ls(d, &["hook", "install"], &[]), "hook install");
    assert!(git(&["add", "."]).status.success());
    let commit = git(&["commit", "-qm", "plaintext"]);
    assert!(
        !commit.status.success(),
        "the hook must refuse a plaintext secret"
    );
    assert!(
        String::from_utf8_lossy(&commit.stderr)
            .contains("secrets/db.yaml: matches a creation rule but is not encrypted")
    );

    ok(ls(d, &["encrypt", "-i", "secrets/db.yaml"], &[]), "encrypt");
    // The working tree is fine now, but the index still holds plaintext: --staged looks at the index.
    let commit = git(&["commit", "-qm", "still plaintext in the index"]);
    assert!(!commit.status.success());
    assert!(git(&["add", "secrets/db.yaml"]).status.success());
    let commit = git(&["commit", "-qm", "encrypted"]);
    assert!(
        commit.status.success(),
        "{}",
        String::from_utf8_lossy(&commit.stderr)
    );

    // With a key, check also verifies the MAC.
    let text = std::fs::read_to_string(d.join("secrets/db.yaml")).expect("read");
    let stamp = line_of(&text, "lastmodified:").to_string();
    std::fs::write(
        d.join("secrets/db.yaml"),
        text.replace(&stamp, "    lastmodified: \"2001-01-01T00:00:00Z\""),
    )
    .expect("write");
    assert!(
        ls(d, &["check"], &[]).status.success(),
        "without a key only the structure is checked"
    );
    let out = ls(d, &["check"], &[("SOPS_AGE_KEY_FILE", &key_file)]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("MAC"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(
        ok(ls(d, &["filestatus", "secrets/db.yaml"], &[]), "filestatus"),
        "{\"encrypted\":true}\n"
    );
    assert_eq!(
        ok(ls(d, &["filestatus", "README.md"], &[]), "filestatus"),
        "{\"encrypted\":false}\n"
    );
}

#[test]
fn standard_input_format_conversion_and_key_commands() {
    let Some(sops) = support::require("sops", peer("sops")) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (key_file, recipient) = key(d, "k.txt");
    // encrypt from standard input, YAML in, JSON out; the real sops reads it.
    let mut child = Command::new(LOCKSTEP)
        .args([
            "encrypt",
            "--age",
            &recipient,
            "--input-type",
            "yaml",
            "--output-type",
            "json",
            "-",
        ])
        .current_dir(d)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("a: {MARKER}\nn: 3\n").as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(d.join("s.json"), &out.stdout).expect("write");
    let plain = ok(
        run_isolated(
            &sops,
            &["-d", "s.json"],
            &[("SOPS_AGE_KEY_FILE", &key_file)],
            d,
        ),
        "sops -d",
    );
    let v: serde_json::Value = serde_json::from_str(&plain).expect("json");
    assert_eq!(v, serde_json::json!({"a": MARKER, "n": 3}));
    // Identities from commands, as sops runs them.
    let cmd = format!("cat {key_file}");
    let out = ok(
        ls(
            d,
            &["decrypt", "--output-type", "yaml", "s.json"],
            &[("SOPS_AGE_KEY_CMD", &cmd)],
        ),
        "SOPS_AGE_KEY_CMD",
    );
    // `n` is a YAML 1.1 boolean: quoted, as `sops -d --output-type yaml` writes it.
    assert_eq!(out, format!("a: {MARKER}\n\"n\": 3\n"));
    let ssh_key = support::repo_root().join("tests/vectors/sops-nix/ssh-ed25519-key");
    let cmd = format!("cat {}", ssh_key.display());
    let out = ok(
        ls(
            d,
            &[
                "decrypt",
                support::repo_root()
                    .join("tests/vectors/sops-nix/secrets-native-ssh.orig.yaml")
                    .to_str()
                    .expect("utf-8"),
            ],
            &[("SOPS_AGE_SSH_PRIVATE_KEY_CMD", &cmd)],
        ),
        "SOPS_AGE_SSH_PRIVATE_KEY_CMD",
    );
    assert!(out.starts_with("test_key: test_value"), "{out}");
    // Standard input without a format is refused with what to add.
    let out = ls(d, &["decrypt", "-"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs --input-type or --filename-override")
    );
}

#[test]
fn sops_habits_work_the_old_command_line_and_sops_flag_spellings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (k1, r1) = key(d, "1.txt");
    let (_, r2) = key(d, "2.txt");
    std::fs::write(
        d.join(".sops.yaml"),
        format!(
            "creation_rules:\n  - path_regex: s\\.yaml$\n    key_groups:\n      - age: [{r1}]\n      - age: [{r2}]\n"
        ),
    )
    .expect("cfg");
    std::fs::write(d.join("s.yaml"), format!("k: {MARKER}\n")).expect("write");
    // sops's spelling of the threshold flag, and `-e` for encrypt.
    ok(
        ls(
            d,
            &[
                "-e",
                "-i",
                "--shamir-secret-sharing-threshold",
                "1",
                "s.yaml",
            ],
            &[],
        ),
        "-e with sops's flag",
    );
    let text = std::fs::read_to_string(d.join("s.yaml")).expect("read");
    assert!(
        text.contains("shamir_threshold: 1") && !text.contains(MARKER),
        "{text}"
    );
    // `-d FILE` decrypts, as `sops -d FILE` does; one group's key is enough with threshold 1.
    let out = ok(
        ls(d, &["-d", "s.yaml"], &[("SOPS_AGE_KEY_FILE", &k1)]),
        "-d",
    );
    assert_eq!(out, format!("k: {MARKER}\n"));
    // A bare FILE opens the editor, as `sops FILE` does (here: an editor that changes nothing).
    let out = ls(
        d,
        &["s.yaml"],
        &[("SOPS_AGE_KEY_FILE", &k1), ("EDITOR", "true")],
    );
    assert_eq!(
        out.status.code(),
        Some(200),
        "unchanged, as sops: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `lockstep ARGS` in `dir` with `input` on standard input.
fn ls_stdin(dir: &Path, args: &[&str], env: &[(&str, &str)], input: &str) -> Output {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut cmd = Command::new(LOCKSTEP);
    cmd.args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env_remove("SOPS_AGE_KEY_FILE")
        .env_remove("SOPS_AGE_KEY")
        .env_remove("SOPS_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

#[test]
fn set_reads_the_value_from_stdin_or_a_file_and_idempotent_leaves_the_file_alone() {
    let Some(sops) = support::require("sops", peer("sops")) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (key_file, recipient) = key(d, "k.txt");
    std::fs::write(d.join("s.yaml"), "db:\n    password: old\n").expect("write");
    ok(
        ls(d, &["encrypt", "-i", "--age", &recipient, "s.yaml"], &[]),
        "encrypt",
    );
    let env = [("SOPS_AGE_KEY_FILE", key_file.as_str())];
    // From standard input: the value never is an argument (`ps`, shell history).
    let out = ls_stdin(
        d,
        &["set", "--value-stdin", "s.yaml", "[\"db\"][\"password\"]"],
        &env,
        &format!("\"{MARKER}-stdin\""),
    );
    ok(out, "set --value-stdin");
    let plain = ok(run_isolated(&sops, &["-d", "s.yaml"], &env, d), "sops -d");
    assert!(
        plain.contains(&format!("password: {MARKER}-stdin")),
        "{plain}"
    );
    // From a file (in memory-backed storage here, as a user would keep it).
    let value_file = d.join("value.json");
    std::fs::write(&value_file, format!("{{\"user\": \"{MARKER}-file\"}}")).expect("write");
    ok(
        ls(
            d,
            &[
                "set",
                "--value-file",
                "s.yaml",
                "[\"app\"]",
                &value_file.to_string_lossy(),
            ],
            &env,
        ),
        "set --value-file",
    );
    let plain = ok(run_isolated(&sops, &["-d", "s.yaml"], &env, d), "sops -d");
    assert!(plain.contains(&format!("user: {MARKER}-file")), "{plain}");
    // The same value again with --idempotent: not written at all (byte-identical, MAC and
    // lastmodified included), as sops does; without it the file is re-written.
    let before = std::fs::read(d.join("s.yaml")).expect("read");
    let same = format!("\"{MARKER}-stdin\"");
    ok(
        ls(
            d,
            &[
                "set",
                "--idempotent",
                "s.yaml",
                "[\"db\"][\"password\"]",
                &same,
            ],
            &env,
        ),
        "set --idempotent",
    );
    assert_eq!(std::fs::read(d.join("s.yaml")).expect("read"), before);
    ok(
        run_isolated(
            &sops,
            &[
                "set",
                "--idempotent",
                "s.yaml",
                "[\"db\"][\"password\"]",
                &same,
            ],
            &env,
            d,
        ),
        "sops set --idempotent",
    );
    assert_eq!(
        std::fs::read(d.join("s.yaml")).expect("read"),
        before,
        "sops agrees"
    );
    // A different value with --idempotent is set.
    ok(
        ls(
            d,
            &[
                "set",
                "--idempotent",
                "s.yaml",
                "[\"db\"][\"password\"]",
                "\"new\"",
            ],
            &env,
        ),
        "set --idempotent of a new value",
    );
    assert_ne!(std::fs::read(d.join("s.yaml")).expect("read"), before);
    // Bad input: both sources, no JSON, a missing file.
    let out = ls(
        d,
        &["set", "--value-stdin", "--value-file", "s.yaml", "[\"x\"]"],
        &env,
    );
    assert!(!out.status.success());
    let out = ls_stdin(
        d,
        &["set", "--value-stdin", "s.yaml", "[\"x\"]"],
        &env,
        "not json",
    );
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("standard input is not JSON"), "{err}");
    assert!(!err.contains("not json"), "the value is not echoed: {err}");
    let out = ls(
        d,
        &["set", "--value-file", "s.yaml", "[\"x\"]", "/nonexistent/v"],
        &env,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/v"));
    // Nothing but the encrypted file holds the markers (the value file is the user's own).
    std::fs::remove_file(&value_file).expect("rm");
    assert!(files_containing(d, MARKER).is_empty());
}

/// Asserts that the changed lines are the value's, the MAC's and (unless both writes fell in one
/// second) `lastmodified`'s.
fn only_value_and_seal(changed: &[String]) {
    let all = changed.join("\n");
    assert!(changed.len() == 2 || changed.len() == 3, "{all}");
    assert!(changed[0].contains("password:"), "{all}");
    assert!(changed.iter().any(|l| l.contains("mac:")), "{all}");
    assert!(
        changed
            .iter()
            .all(|l| ["password:", "lastmodified:", "mac:"]
                .iter()
                .any(|w| l.contains(w))),
        "{all}"
    );
}

/// Lines of `a` and `b` that differ (same line count assumed; a different count is all).
fn changed_lines(a: &str, b: &str) -> Vec<String> {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    if a.len() != b.len() {
        return vec![format!("{} lines became {}", a.len(), b.len())];
    }
    a.iter()
        .zip(&b)
        .filter(|(x, y)| x != y)
        .map(|(x, y)| format!("- {x}\n+ {y}"))
        .collect()
}

#[test]
fn a_set_on_a_sops_written_file_changes_only_what_changed_and_the_layout_is_sops_s() {
    let Some(sops) = support::require("sops", peer("sops")) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (key_file, recipient) = key(d, "k.txt");
    let (_, second) = key(d, "k2.txt");
    // Nested blocks under list items, where go-yaml's indentation differs from "a step past
    // the key": sops's own age block is one.
    let plain = "db:\n    password: old\nusers:\n    - name: a\n      roles:\n        - admin\n      note: |\n        two\n        lines\n      meta:\n        level: 1\n";
    std::fs::write(d.join("s.yaml"), plain).expect("write");
    let env = [("SOPS_AGE_KEY_FILE", key_file.as_str())];
    ok(
        run_isolated(
            &sops,
            &[
                "-e",
                "-i",
                "--age",
                &format!("{recipient},{second}"),
                "s.yaml",
            ],
            &env,
            d,
        ),
        "sops -e",
    );
    // Decrypted, both write the same bytes.
    let theirs = ok(run_isolated(&sops, &["-d", "s.yaml"], &env, d), "sops -d");
    let ours = ok(ls(d, &["decrypt", "s.yaml"], &env), "decrypt");
    assert_eq!(ours, theirs);
    // One value set: that value, `lastmodified` and the MAC change — nothing else.
    let before = std::fs::read_to_string(d.join("s.yaml")).expect("read");
    ok(
        ls(
            d,
            &["set", "s.yaml", "[\"db\"][\"password\"]", "\"new\""],
            &env,
        ),
        "set",
    );
    let after = std::fs::read_to_string(d.join("s.yaml")).expect("read");
    only_value_and_seal(&changed_lines(&before, &after));
    // And sops's own set of the same file changes the same lines back and forth.
    ok(
        run_isolated(
            &sops,
            &["set", "s.yaml", "[\"db\"][\"password\"]", "\"newer\""],
            &env,
            d,
        ),
        "sops set",
    );
    let by_sops = std::fs::read_to_string(d.join("s.yaml")).expect("read");
    only_value_and_seal(&changed_lines(&after, &by_sops));
    // A file lockstep encrypts has sops's layout: the same lines as sops's own, only the
    // ciphertexts and dates differ.
    std::fs::write(d.join("t.yaml"), plain).expect("write");
    std::fs::write(d.join("u.yaml"), plain).expect("write");
    ok(
        ls(
            d,
            &[
                "encrypt",
                "-i",
                "--age",
                &format!("{recipient},{second}"),
                "t.yaml",
            ],
            &[],
        ),
        "encrypt",
    );
    ok(
        run_isolated(
            &sops,
            &[
                "-e",
                "-i",
                "--age",
                &format!("{recipient},{second}"),
                "u.yaml",
            ],
            &env,
            d,
        ),
        "sops -e",
    );
    let shape = |t: &str| -> Vec<String> {
        t.lines()
            .map(|l| {
                let indent = l.len() - l.trim_start().len();
                let head: String = l.trim_start().chars().take_while(|c| *c != ':').collect();
                // Armored lines and ciphertexts differ run to run; their indentation does not.
                let head = if l.contains(':') && !l.trim_start().starts_with("-----") {
                    head
                } else {
                    String::new()
                };
                format!("{indent} {head}")
            })
            .collect()
    };
    let (ours, theirs) = (
        std::fs::read_to_string(d.join("t.yaml")).expect("read"),
        std::fs::read_to_string(d.join("u.yaml")).expect("read"),
    );
    let (a, b) = (shape(&ours), shape(&theirs));
    // The age stanzas may wrap to a different number of lines; compare what surrounds them.
    let strip =
        |v: &[String]| -> Vec<String> { v.iter().filter(|l| !l.ends_with(' ')).cloned().collect() };
    assert_eq!(strip(&a), strip(&b), "ours:\n{ours}\ntheirs:\n{theirs}");
    let armor_indent = |t: &str| {
        t.lines()
            .find(|l| l.trim_start() == "-----BEGIN AGE ENCRYPTED FILE-----")
            .map(|l| l.len() - l.trim_start().len())
    };
    assert_eq!(armor_indent(&ours), Some(12), "{ours}");
    assert_eq!(armor_indent(&ours), armor_indent(&theirs));
}

#[test]
fn an_encrypted_comment_that_no_longer_decrypts_is_kept_with_a_warning_as_sops_does() {
    let Some(sops) = support::require("sops", peer("sops")) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (key_file, recipient) = key(d, "k.txt");
    std::fs::write(
        d.join("s.yaml"),
        format!("db:\n    # {MARKER}-comment\n    password: x\nother:\n    user: y\n"),
    )
    .expect("write");
    let env = [("SOPS_AGE_KEY_FILE", key_file.as_str())];
    ok(
        run_isolated(&sops, &["-e", "-i", "--age", &recipient, "s.yaml"], &env, d),
        "sops -e",
    );
    // Move the encrypted comment by hand to another key: it was sealed for `db:password:`.
    let text = std::fs::read_to_string(d.join("s.yaml")).expect("read");
    let comment = text
        .lines()
        .find(|l| l.trim_start().starts_with("#ENC["))
        .expect("an encrypted comment")
        .to_string();
    let moved = text
        .replace(&format!("{comment}\n"), "")
        .replace("    user:", &format!("{comment}\n    user:"));
    std::fs::write(d.join("s.yaml"), moved).expect("write");
    let ours = ls(d, &["decrypt", "s.yaml"], &env);
    let theirs = run_isolated(&sops, &["-d", "s.yaml"], &env, d);
    assert!(ours.status.success() && theirs.status.success());
    let err = String::from_utf8_lossy(&ours.stderr);
    assert!(
        err.contains("the encrypted comment at other") && err.contains("does not decrypt"),
        "{err}"
    );
    assert!(
        String::from_utf8_lossy(&theirs.stderr).contains("possibly unencrypted comment"),
        "sops warns too"
    );
    assert_eq!(ours.stdout, theirs.stdout, "both keep the comment as it is");
    assert!(!err.contains(MARKER) && !err.contains("#ENC["), "{err}");
}

#[test]
fn exec_env_and_exec_file_hand_the_values_to_the_command_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (key_file, recipient) = key(d, "k.txt");
    std::fs::write(
        d.join("s.yaml"),
        format!("PASSWORD: {MARKER}-env\nPORT: 5432\nnested:\n    a: b\n"),
    )
    .expect("write");
    ok(
        ls(d, &["encrypt", "-i", "--age", &recipient, "s.yaml"], &[]),
        "encrypt",
    );
    let tmp_s = tmp.path().to_string_lossy().into_owned();
    let env = [
        ("SOPS_AGE_KEY_FILE", key_file.as_str()),
        ("TMPDIR", tmp_s.as_str()),
        ("KEPT", "from-parent"),
    ];
    // exec-env: the values are the command's variables; its exit code is lockstep's.
    let out = ls(
        d,
        &[
            "exec-env",
            "s.yaml",
            &format!(
                "test \"$PASSWORD\" = '{MARKER}-env' && test \"$PORT\" = 5432 && echo \"ok $KEPT\" && exit 7"
            ),
        ],
        &env,
    );
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok from-parent\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nested holds a collection"));
    // --pristine: nothing of this process's environment.
    let out = ls(
        d,
        &[
            "exec-env",
            "--pristine",
            "s.yaml",
            "echo \"[$KEPT]\"; test -n \"$PASSWORD\"",
        ],
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[]\n");
    // exec-file: a private memory-backed file, readable twice, gone afterwards.
    let seen = d.join("seen-path");
    let out = ls(
        d,
        &[
            "exec-file",
            "s.yaml",
            &format!(
                "echo {{}} > {}; grep -c '{MARKER}-env' {{}} && grep -q PORT {{}} && ls -ld $(dirname {{}})",
                seen.display()
            ),
        ],
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("1\ndrwx------"), "{stdout}");
    let path = std::fs::read_to_string(&seen)
        .expect("path")
        .trim()
        .to_string();
    assert!(
        path.starts_with("/dev/shm/") && path.ends_with("/s.yaml"),
        "{path}"
    );
    assert!(!Path::new(&path).exists(), "{path} is gone");
    assert!(!Path::new(&path).parent().expect("dir").exists());
    let out = ls(d, &["exec-file", "s.yaml", "exit 3"], &env);
    assert_eq!(out.status.code(), Some(3));
    let out = ls(
        d,
        &["exec-file", "--filename", "../x", "s.yaml", "true"],
        &env,
    );
    assert!(!out.status.success());
    // Nothing under the project, HOME (the same directory here) or TMPDIR holds the value.
    std::fs::remove_file(&seen).expect("rm");
    assert!(
        files_containing(d, MARKER).is_empty(),
        "{:?}",
        files_containing(d, MARKER)
    );
    assert!(files_containing(tmp.path(), MARKER).is_empty());
}
