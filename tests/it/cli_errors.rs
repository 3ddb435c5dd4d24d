//! The error paths a user meets, through the real binary: exit codes (sops's where it has one) and
//! messages that name the file, the key path or line, and what to do — never a secret value.

use crate::support;

use std::path::Path;
use std::process::Output;

const LOCKSTEP: &str = env!("CARGO_BIN_EXE_lockstep");
const MARKER: &str = "marker-5ec4e7-plaintext";

fn lockstep(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    support::run_isolated(Path::new(LOCKSTEP), args, env, dir)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A key pair made with `lockstep keygen`: (key file, recipient).
fn key(dir: &Path, name: &str) -> (String, String) {
    let path = dir.join(name);
    let out = lockstep(dir, &["keygen", "-o", path.to_str().expect("utf-8")], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let recipient = stderr(&out)
        .trim()
        .strip_prefix("Public key: ")
        .expect("recipient")
        .to_string();
    (path.to_string_lossy().into_owned(), recipient)
}

fn encrypted(dir: &Path, recipient: &str) -> std::path::PathBuf {
    let plain = dir.join("secrets.yaml");
    std::fs::write(
        &plain,
        format!("db:\n    password: {MARKER}\n    user: admin\n"),
    )
    .expect("write");
    let out = lockstep(
        dir,
        &["encrypt", "-i", "--age", recipient, "secrets.yaml"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    plain
}

#[test]
fn no_matching_identity_names_recipients_identities_and_where_it_looked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, owner) = key(dir.path(), "owner.txt");
    let (other_file, other) = key(dir.path(), "other.txt");
    encrypted(dir.path(), &owner);
    let out = lockstep(
        dir.path(),
        &["decrypt", "secrets.yaml"],
        &[("SOPS_AGE_KEY_FILE", &other_file)],
    );
    assert_eq!(out.status.code(), Some(128));
    let e = stderr(&out);
    assert!(
        e.starts_with("lockstep: secrets.yaml: no identity can decrypt this file's data key"),
        "{e}"
    );
    assert!(
        e.contains(&format!("the file is encrypted to:\n    {owner}\n")),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "    {other}  (from SOPS_AGE_KEY_FILE={other_file})"
        )),
        "{e}"
    );
    // Every place decrypt reads, in the order it reads them (sops's order).
    assert!(
        e.contains("looked in: SOPS_AGE_SSH_PRIVATE_KEY_CMD (unset), SOPS_AGE_SSH_PRIVATE_KEY_FILE (unset), ~/.ssh/id_ed25519 (not found), ~/.ssh/id_rsa (not found), SOPS_AGE_KEY (unset), SOPS_AGE_KEY_FILE="),
        "{e}"
    );
    assert!(e.contains("SOPS_AGE_KEY_CMD (unset), "), "{e}");
    assert!(e.contains("sops/age/keys.txt (not found)"), "{e}");
    assert!(e.contains("fix: set SOPS_AGE_KEY_FILE"), "{e}");
    assert!(!e.contains("AGE-SECRET-KEY") && !e.contains(MARKER), "{e}");
    assert!(out.stdout.is_empty());
}

#[test]
fn tampered_values_and_macs_are_refused_with_the_key_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key_file, recipient) = key(dir.path(), "k.txt");
    let file = encrypted(dir.path(), &recipient);
    let text = std::fs::read_to_string(&file).expect("read");
    let env = [("SOPS_AGE_KEY_FILE", key_file.as_str())];

    // Swap two values: each no longer authenticates at its new path.
    let lines: Vec<&str> = text.lines().collect();
    let pw = lines
        .iter()
        .position(|l| l.trim_start().starts_with("password:"))
        .expect("password line");
    let user = lines
        .iter()
        .position(|l| l.trim_start().starts_with("user:"))
        .expect("user line");
    let mut swapped: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let (a, b) = (
        lines[pw].split_once(": ").expect("pair").1,
        lines[user].split_once(": ").expect("pair").1,
    );
    swapped[pw] = format!("    password: {b}");
    swapped[user] = format!("    user: {a}");
    std::fs::write(&file, swapped.join("\n") + "\n").expect("write");
    let out = lockstep(dir.path(), &["decrypt", "secrets.yaml"], &env);
    assert_eq!(out.status.code(), Some(25), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("secrets.yaml: db.password: value does not decrypt"),
        "{}",
        stderr(&out)
    );

    // A malformed ENC[…] names its key path.
    std::fs::write(&file, text.replace(",type:str]", ",type:nope]")).expect("write");
    let out = lockstep(dir.path(), &["decrypt", "secrets.yaml"], &env);
    assert_eq!(out.status.code(), Some(25));
    assert!(
        stderr(&out).contains("db.password: malformed ENC[…] value (unknown type)"),
        "{}",
        stderr(&out)
    );

    // A changed lastmodified breaks the MAC: exit 51 like sops.
    let stamp = text
        .lines()
        .find(|l| l.contains("lastmodified:"))
        .expect("lastmodified");
    std::fs::write(
        &file,
        text.replace(stamp, "    lastmodified: \"2001-01-01T00:00:00Z\""),
    )
    .expect("write");
    let out = lockstep(dir.path(), &["decrypt", "secrets.yaml"], &env);
    assert_eq!(out.status.code(), Some(51), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot decrypt the MAC") || stderr(&out).contains("MAC mismatch"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains(MARKER));
}

#[test]
fn refusals_for_wrong_kind_of_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key_file, recipient) = key(dir.path(), "k.txt");
    encrypted(dir.path(), &recipient);

    let out = lockstep(
        dir.path(),
        &["encrypt", "--age", &recipient, "secrets.yaml"],
        &[],
    );
    assert_eq!(out.status.code(), Some(203));
    assert!(
        stderr(&out).contains("secrets.yaml: the file is already encrypted"),
        "{}",
        stderr(&out)
    );

    std::fs::write(dir.path().join("plain.yaml"), "a: 1\n").expect("write");
    let out = lockstep(
        dir.path(),
        &["decrypt", "plain.yaml"],
        &[("SOPS_AGE_KEY_FILE", &key_file)],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("plain.yaml: sops metadata not found: the file is not encrypted"),
        "{}",
        stderr(&out)
    );

    let out = lockstep(
        dir.path(),
        &["decrypt", "--input-type", "xml", "plain.yaml"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("use one of: yaml, json, dotenv, ini, binary"),
        "{}",
        stderr(&out)
    );

    std::fs::write(dir.path().join("broken.yaml"), "a: 1\nb: [unclosed\nc: 3\n").expect("write");
    let out = lockstep(
        dir.path(),
        &["encrypt", "--age", &recipient, "broken.yaml"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("broken.yaml: cannot parse as Yaml: line"),
        "{}",
        stderr(&out)
    );

    let out = lockstep(dir.path(), &["encrypt", "plain.yaml"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no .sops.yaml found"),
        "{}",
        stderr(&out)
    );

    let out = lockstep(
        dir.path(),
        &["encrypt", "--age", "age1notarecipient", "plain.yaml"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("\"age1notarecipient\" is not an age recipient"),
        "{}",
        stderr(&out)
    );

    let out = lockstep(dir.path(), &["decrypt", "missing.yaml"], &[]);
    assert_eq!(out.status.code(), Some(100));
    assert!(
        stderr(&out).contains("missing.yaml: cannot read"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn creation_rules_are_found_from_the_files_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key_file, recipient) = key(dir.path(), "k.txt");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("environments/prod")).expect("mkdir");
    std::fs::write(
        repo.join(".sops.yaml"),
        format!("creation_rules:\n  - path_regex: environments/prod/.*\\.yaml$\n    encrypted_regex: ^password$\n    age: {recipient}\n"),
    )
    .expect("config");
    std::fs::write(
        repo.join("environments/prod/secrets.yaml"),
        format!("password: {MARKER}\nuser: admin\n"),
    )
    .expect("write");
    // Run from somewhere else entirely: the rules still apply (sops would look in the working directory).
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    let target = repo.join("environments/prod/secrets.yaml");
    let out = lockstep(
        &elsewhere,
        &["encrypt", "-i", target.to_str().expect("utf-8")],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&target).expect("read");
    assert!(
        text.contains("user: admin") && text.contains("password: ENC[AES256_GCM"),
        "{text}"
    );
    assert!(
        text.contains("encrypted_regex: ^password$") && text.contains(&recipient),
        "{text}"
    );
    let out = lockstep(
        &elsewhere,
        &[
            "decrypt",
            "--extract",
            "[\"password\"]",
            target.to_str().expect("utf-8"),
        ],
        &[("SOPS_AGE_KEY_FILE", &key_file)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), MARKER);
}

/// Encrypt, decrypt in place and back: the marker plaintext is on disk only where the user asked for it.
#[test]
fn plaintext_reaches_disk_only_where_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key_file, recipient) = key(dir.path(), "k.txt");
    let file = encrypted(dir.path(), &recipient);
    let env = [("SOPS_AGE_KEY_FILE", key_file.as_str())];
    let out = lockstep(dir.path(), &["decrypt", "secrets.yaml"], &env);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(MARKER),
        "decrypt to stdout shows the value"
    );
    assert!(!stderr(&out).contains(MARKER));
    // Nothing on disk holds the marker after encrypt -i and decrypt to stdout.
    let mut hits = Vec::new();
    for entry in support::files_under(dir.path()) {
        if std::fs::read(&entry)
            .is_ok_and(|b| b.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()))
        {
            hits.push(entry);
        }
    }
    assert!(hits.is_empty(), "marker found on disk: {hits:?}");
    // decrypt -i writes plaintext because the user asked; encrypt -i seals it again, atomically.
    assert!(
        lockstep(dir.path(), &["decrypt", "-i", "secrets.yaml"], &env)
            .status
            .success()
    );
    assert!(
        std::fs::read_to_string(&file)
            .expect("read")
            .contains(MARKER)
    );
    assert!(
        lockstep(
            dir.path(),
            &["encrypt", "-i", "--age", &recipient, "secrets.yaml"],
            &[]
        )
        .status
        .success()
    );
    assert!(
        !std::fs::read_to_string(&file)
            .expect("read")
            .contains(MARKER)
    );
    let leftovers: Vec<_> = support::files_under(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
