//! Commit signatures with the real tools: keys made by `ssh-keygen` and `gpg`, commits signed by
//! `git commit -S`, checked by `lockstep::source::verify` (SSH: ed25519, RSA, ECDSA; OpenPGP:
//! ed25519, RSA-3072, subkeys, expiry and revocation; allowed_signers rules).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::gnupg::Gnupg;
use lockstep::source::verify::*;

const ORIGIN: &str = "test allowed_signers";

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .expect("running a tool (are git and ssh-keygen installed?)");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A key made by `ssh-keygen`: private key path, public key line, `ssh-keygen -lf` fingerprint.
struct Key {
    path: PathBuf,
    public: String,
    fingerprint: String,
}

fn keygen(dir: &Path, name: &str, kind: &[&str]) -> Key {
    let path = dir.join(name);
    run(Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .args(kind));
    let public = std::fs::read_to_string(path.with_extension("pub")).expect("public key");
    let listing = run(Command::new("ssh-keygen")
        .arg("-lf")
        .arg(path.with_extension("pub")));
    let fingerprint = String::from_utf8(listing)
        .expect("utf-8")
        .split_whitespace()
        .nth(1)
        .expect("fingerprint field")
        .to_string();
    assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
    Key {
        path,
        public: public.trim().to_string(),
        fingerprint,
    }
}

/// The `keytype base64` part of a public key line (without its comment).
fn key_part(key: &Key) -> String {
    key.public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn signers(text: &str) -> AllowedSigners {
    AllowedSigners::parse(text, ORIGIN).expect("allowed signers parse")
}

struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        let repo = Repo {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("git");
        cmd.current_dir(self.dir.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("HOME", self.dir.path())
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
            .args(["-c", "commit.gpgSign=false", "-c", "tag.gpgSign=false"]);
        cmd
    }

    fn git(&self, args: &[&str]) -> Vec<u8> {
        run(self.command().args(args))
    }

    fn signing(&self, key: &Key, args: &[&str]) -> Vec<u8> {
        run(self
            .command()
            .args(["-c", "gpg.format=ssh", "-c"])
            .arg(format!("user.signingkey={}", key.path.display()))
            .args(args))
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join(name), text).expect("write");
        self.git(&["add", name]);
    }

    /// Commits a change signed with `key` (unsigned if `None`) and returns the raw commit.
    fn commit(&self, key: Option<&Key>, message: &str) -> Vec<u8> {
        self.write("file.txt", message);
        match key {
            Some(key) => self.signing(key, &["commit", "-q", "-S", "-m", message]),
            None => self.git(&["commit", "-q", "-m", message]),
        };
        self.git(&["cat-file", "commit", "HEAD"])
    }
}

impl Repo {
    /// Commits a change signed by GnuPG with `key` (a fingerprint, `!`-suffixed for a subkey)
    /// from `gnupg`'s keyring and returns the raw commit.
    fn gpg_commit(&self, gnupg: &Gnupg, key: &str, message: &str) -> Vec<u8> {
        self.write("file.txt", message);
        run(self
            .command()
            .env("GNUPGHOME", gnupg.dir.path())
            .args(["-c", "gpg.format=openpgp", "-c", "gpg.program=gpg", "-c"])
            .arg(format!("user.signingkey={key}"))
            .args(["commit", "-q", "-S", "-m", message]));
        self.git(&["cat-file", "commit", "HEAD"])
    }
}

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = haystack
        .windows(from.len())
        .position(|w| w == from)
        .expect("bytes to replace");
    let mut out = haystack[..at].to_vec();
    out.extend_from_slice(to);
    out.extend_from_slice(&haystack[at + from.len()..]);
    out
}

#[test]
fn ed25519_signed_commit_by_listed_key_verifies_and_git_agrees() {
    let repo = Repo::new();
    let alice = keygen(repo.dir.path(), "alice", &["-t", "ed25519"]);
    let raw = repo.commit(Some(&alice), "first\n\nbody line\n");
    assert!(raw.windows(7).any(|w| w == b"gpgsig "), "commit is signed");
    let text = format!(
        "# trusted\n\nalice@example.com {} alice laptop\n",
        key_part(&alice)
    );
    let signer = verify_commit(&raw, &signers(&text)).expect("verifies");
    assert_eq!(
        signer,
        Signer {
            principal: "alice@example.com".into(),
            fingerprint: alice.fingerprint.clone(),
        }
    );

    // Git itself accepts the same commit with the same allowed_signers text.
    let file = repo.dir.path().join("allowed_signers");
    std::fs::write(&file, &text).expect("write");
    let out = repo
        .command()
        .args(["-c", "gpg.format=ssh", "-c"])
        .arg(format!("gpg.ssh.allowedSignersFile={}", file.display()))
        .args(["verify-commit", "HEAD"])
        .output()
        .expect("git verify-commit");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rsa_and_ecdsa_signed_commits_verify() {
    let repo = Repo::new();
    let rsa = keygen(repo.dir.path(), "rsa", &["-t", "rsa", "-b", "3072"]);
    let ecdsa = keygen(repo.dir.path(), "ecdsa", &["-t", "ecdsa", "-b", "256"]);
    let list = signers(&format!(
        "rsa@example.com {}\necdsa@example.com {}\n",
        key_part(&rsa),
        key_part(&ecdsa)
    ));
    let raw = repo.commit(Some(&rsa), "by rsa\n");
    let signer = verify_commit(&raw, &list).expect("rsa verifies");
    assert_eq!(signer.principal, "rsa@example.com");
    assert_eq!(signer.fingerprint, rsa.fingerprint);
    let raw = repo.commit(Some(&ecdsa), "by ecdsa\n");
    let signer = verify_commit(&raw, &list).expect("ecdsa verifies");
    assert_eq!(signer.principal, "ecdsa@example.com");
    assert_eq!(signer.fingerprint, ecdsa.fingerprint);
}

#[test]
fn commit_signed_by_unlisted_key_is_unknown_key() {
    let repo = Repo::new();
    let alice = keygen(repo.dir.path(), "alice", &["-t", "ed25519"]);
    let mallory = keygen(repo.dir.path(), "mallory", &["-t", "ed25519"]);
    let raw = repo.commit(Some(&mallory), "sneaky\n");
    let list = signers(&format!("alice@example.com {}\n", key_part(&alice)));
    let err = verify_commit(&raw, &list).expect_err("refused");
    assert_eq!(
        err,
        VerifyError::UnknownKey {
            fingerprint: mallory.fingerprint.clone()
        }
    );
    assert!(err.to_string().contains(&mallory.fingerprint));
    // An empty list trusts nobody.
    let empty = signers("# nobody yet\n");
    assert!(empty.is_empty());
    assert!(matches!(
        verify_commit(&raw, &empty),
        Err(VerifyError::UnknownKey { .. })
    ));
}

#[test]
fn unsigned_commit_is_unsigned() {
    let repo = Repo::new();
    let alice = keygen(repo.dir.path(), "alice", &["-t", "ed25519"]);
    let raw = repo.commit(None, "plain\n");
    let list = signers(&format!("alice@example.com {}\n", key_part(&alice)));
    let err = verify_commit(&raw, &list).expect_err("refused");
    assert_eq!(err, VerifyError::Unsigned);
    assert!(err.to_string().contains("git commit -S"));
}

#[test]
fn commit_altered_after_signing_is_bad_signature() {
    let repo = Repo::new();
    let alice = keygen(repo.dir.path(), "alice", &["-t", "ed25519"]);
    let raw = repo.commit(Some(&alice), "deploy version 1\n");
    let list = signers(&format!("alice@example.com {}\n", key_part(&alice)));
    verify_commit(&raw, &list).expect("original verifies");

    let message_changed = replace(&raw, b"deploy version 1\n", b"deploy version 2\n");
    assert_eq!(
        verify_commit(&message_changed, &list),
        Err(VerifyError::BadSignature)
    );
    let author_changed = replace(&raw, b"author Test", b"author Evil");
    assert_eq!(
        verify_commit(&author_changed, &list),
        Err(VerifyError::BadSignature)
    );
    let appended = [raw.as_slice(), b"extra\n"].concat();
    assert_eq!(
        verify_commit(&appended, &list),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn namespaces_option_must_allow_git() {
    let repo = Repo::new();
    let alice = keygen(repo.dir.path(), "alice", &["-t", "ed25519"]);
    let raw = repo.commit(Some(&alice), "namespaced\n");
    let key = key_part(&alice);
    for refused in [r#"namespaces="file""#, r#"namespaces="*,!git""#] {
        let list = signers(&format!("alice@example.com {refused} {key}\n"));
        assert_eq!(
            verify_commit(&raw, &list),
            Err(VerifyError::NamespaceNotAllowed {
                fingerprint: alice.fingerprint.clone()
            }),
            "{refused}"
        );
    }
    for allowed in [r#"namespaces="file,git""#, r#"namespaces="g*""#] {
        let list = signers(&format!("alice@example.com {allowed} {key}\n"));
        verify_commit(&raw, &list).expect(allowed);
    }
    // A second line for the same key that allows git is enough.
    let list = signers(&format!(
        "ci namespaces=\"file\" {key}\nalice@example.com namespaces=\"git\" {key}\n"
    ));
    assert_eq!(
        verify_commit(&raw, &list).expect("second line").principal,
        "alice@example.com"
    );
}

#[test]
fn validity_bounds_are_checked_against_the_committer_time() {
    let repo = Repo::new();
    let alice = keygen(repo.dir.path(), "alice", &["-t", "ed25519"]);
    std::fs::write(repo.dir.path().join("file.txt"), "dated").expect("write");
    repo.git(&["add", "file.txt"]);
    run(repo
        .command()
        .env("GIT_COMMITTER_DATE", "2024-06-01T12:00:00Z")
        .args(["-c", "gpg.format=ssh", "-c"])
        .arg(format!("user.signingkey={}", alice.path.display()))
        .args(["commit", "-q", "-S", "-m", "dated"]));
    let raw = repo.git(&["cat-file", "commit", "HEAD"]);
    let key = key_part(&alice);
    let check = |options: &str| verify_commit(&raw, &signers(&format!("alice {options} {key}")));
    check(r#"valid-after="20240101",valid-before="20250101Z""#).expect("inside");
    check(r#"valid-after="202406011100""#).expect("after");
    assert!(matches!(
        check(r#"valid-before="20240601115959""#),
        Err(VerifyError::KeyNotValid { .. })
    ));
    let err = check(r#"valid-after="20240602""#).expect_err("not yet valid");
    assert!(err.to_string().contains("line 1"), "{err}");
}

#[test]
fn sha256_repository_commits_use_the_gpgsig_sha256_header() {
    let repo = Repo {
        dir: tempfile::tempdir().expect("tempdir"),
    };
    repo.git(&["init", "-q", "-b", "main", "--object-format=sha256"]);
    let alice = keygen(repo.dir.path(), "alice", &["-t", "ed25519"]);
    let raw = repo.commit(Some(&alice), "in a sha256 repository\n");
    assert!(
        raw.strip_prefix(b"tree ").is_some_and(|r| r
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count()
            == 64),
        "a SHA-256 tree id"
    );
    assert!(raw.windows(14).any(|w| w == b"\ngpgsig-sha256"));
    let list = signers(&format!("alice@example.com {}\n", key_part(&alice)));
    assert_eq!(
        verify_commit(&raw, &list).expect("verifies").fingerprint,
        alice.fingerprint
    );
}

#[test]
fn signed_merge_of_a_signed_tag_keeps_the_mergetag_in_the_payload() {
    let repo = Repo::new();
    let alice = keygen(repo.dir.path(), "alice", &["-t", "ed25519"]);
    repo.commit(Some(&alice), "base\n");
    repo.git(&["checkout", "-q", "-b", "side"]);
    repo.write("side.txt", "side");
    repo.git(&["commit", "-q", "-m", "side"]);
    repo.signing(&alice, &["tag", "-s", "-m", "release", "v1"]);
    repo.git(&["checkout", "-q", "main"]);
    repo.write("main.txt", "main");
    repo.git(&["commit", "-q", "-m", "main"]);
    repo.signing(
        &alice,
        &["merge", "-q", "--no-ff", "-S", "-m", "merge v1", "v1"],
    );
    let raw = repo.git(&["cat-file", "commit", "HEAD"]);
    assert!(raw.starts_with(b"tree "));
    assert!(
        raw.windows(9).any(|w| w == b"mergetag "),
        "the merge records the tag"
    );
    let list = signers(&format!("alice@example.com {}\n", key_part(&alice)));
    verify_commit(&raw, &list).expect("merge verifies");
    // The embedded tag (and its signature) is signed content of the merge.
    let tampered = replace(&raw, b"\n release", b"\n Release");
    assert_eq!(
        verify_commit(&tampered, &list),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn ssh_keygen_signatures_verify_through_the_sshsig_helper() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = keygen(dir.path(), "alice", &["-t", "ed25519"]);
    let rsa = keygen(dir.path(), "rsa", &["-t", "rsa", "-b", "2048"]);
    let list = signers(&format!(
        "alice {}\nrsa {}\n",
        key_part(&alice),
        key_part(&rsa)
    ));
    let message: &[u8] = b"arbitrary bytes \x00\xff\n";
    let data = dir.path().join("data");
    std::fs::write(&data, message).expect("write");
    let sign = |key: &Key, extra: &[&str]| -> Vec<u8> {
        // ssh-keygen asks before overwriting a signature file.
        let _ = std::fs::remove_file(data.with_extension("sig"));
        run(Command::new("ssh-keygen")
            .stdin(std::process::Stdio::null())
            .args(["-Y", "sign", "-f"])
            .arg(&key.path)
            .args(extra)
            .arg(&data));
        std::fs::read(data.with_extension("sig")).expect("signature file")
    };
    let now = jiff::Timestamp::now().as_second();

    for (key, extra, hash) in [
        (&alice, &["-n", "git"][..], &b"sha512"[..]),
        (
            &alice,
            &["-n", "git", "-O", "hashalg=sha256"][..],
            b"sha256",
        ),
        (&rsa, &["-n", "git"][..], b"sha512"),
        (&rsa, &["-n", "git", "-O", "hashalg=sha256"][..], b"sha256"),
    ] {
        let armored = sign(key, extra);
        // The hash ssh-keygen chose is named inside the SSHSIG blob.
        let body: String = String::from_utf8_lossy(&armored)
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let blob = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body)
            .expect("base64");
        assert!(blob.windows(hash.len()).any(|w| w == hash), "{extra:?}");

        let signer = verify_ssh_signature(message, &armored, &list, now).expect("verifies");
        assert_eq!(signer.fingerprint, key.fingerprint, "{extra:?}");
        assert_eq!(
            verify_ssh_signature(b"other bytes", &armored, &list, now),
            Err(VerifyError::BadSignature)
        );
    }

    let file_namespace = sign(&alice, &["-n", "file"]);
    assert_eq!(
        verify_ssh_signature(message, &file_namespace, &list, now),
        Err(VerifyError::WrongNamespace)
    );

    let armored = sign(&alice, &["-n", "git"]);
    let garbled = replace(&armored, b"\n", b"\n!!");
    assert!(matches!(
        verify_ssh_signature(message, &garbled, &list, now),
        Err(VerifyError::Malformed(_))
    ));
    let truncated = &armored[..armored.len() / 2];
    assert!(matches!(
        verify_ssh_signature(message, truncated, &list, now),
        Err(VerifyError::Malformed(_))
    ));
}

#[test]
fn pgp_signature_without_trusted_pgp_keys_asks_for_the_public_key_block() {
    let repo = Repo::new();
    let gnupg = Gnupg::new();
    let key = gnupg.generate("Ed Test <ed@example.com>", "ed25519");
    let raw = repo.gpg_commit(&gnupg, &key, "gpg signed\n");
    let alice = keygen(repo.dir.path(), "alice", &["-t", "ed25519"]);
    let list = signers(&format!("alice@example.com {}\n", key_part(&alice)));
    let err = verify_commit(&raw, &list).expect_err("no PGP key trusted");
    assert_eq!(err, VerifyError::NoPgpKeys);
    assert!(
        err.to_string().contains("BEGIN PGP PUBLIC KEY BLOCK"),
        "{err}"
    );
    assert_eq!(
        verify_commit(&raw, &signers("")),
        Err(VerifyError::NoPgpKeys)
    );
}

#[test]
fn gpg_ed25519_signed_commit_by_trusted_key_verifies() {
    let repo = Repo::new();
    let gnupg = Gnupg::new();
    let key = gnupg.generate("Ed Test <ed@example.com>", "ed25519");
    let raw = repo.gpg_commit(&gnupg, &key, "first\n\nbody line\n");
    assert!(
        raw.windows(36)
            .any(|w| w == b"gpgsig -----BEGIN PGP SIGNATURE-----"),
        "commit is GPG-signed"
    );
    let list = signers(&gnupg.export(&[&key]));
    assert_eq!((list.len(), list.is_empty()), (1, false));
    assert_eq!(
        verify_commit(&raw, &list).expect("verifies"),
        Signer {
            principal: "Ed Test <ed@example.com>".into(),
            fingerprint: key.clone(),
        }
    );
}

#[test]
fn gpg_rsa3072_signed_commit_by_trusted_key_verifies() {
    let repo = Repo::new();
    let gnupg = Gnupg::new();
    let key = gnupg.generate("Rsa Test <rsa@example.com>", "rsa3072");
    let raw = repo.gpg_commit(&gnupg, &key, "by rsa\n");
    let list = signers(&gnupg.export(&[&key]));
    let signer = verify_commit(&raw, &list).expect("verifies");
    assert_eq!(signer.principal, "Rsa Test <rsa@example.com>");
    assert_eq!(signer.fingerprint, key);
    let changed = replace(&raw, b"by rsa\n", b"by RSA\n");
    assert_eq!(
        verify_commit(&changed, &list),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn gpg_commit_by_untrusted_key_is_unknown_key() {
    let repo = Repo::new();
    let gnupg = Gnupg::new();
    let alice = gnupg.generate("Alice <alice@example.com>", "ed25519");
    let mallory = gnupg.generate("Mallory <mallory@example.com>", "ed25519");
    let raw = repo.gpg_commit(&gnupg, &mallory, "sneaky\n");
    let list = signers(&gnupg.export(&[&alice]));
    let err = verify_commit(&raw, &list).expect_err("refused");
    assert_eq!(
        err,
        VerifyError::UnknownKey {
            fingerprint: mallory.clone()
        }
    );
    assert!(err.to_string().contains(&mallory), "{err}");
    // Trusting both keys (one block holding two keys) accepts it.
    let both = signers(&gnupg.export(&[&alice, &mallory]));
    assert_eq!(both.len(), 2);
    assert_eq!(
        verify_commit(&raw, &both).expect("trusted").principal,
        "Mallory <mallory@example.com>"
    );
}

#[test]
fn gpg_commit_altered_after_signing_is_bad_signature() {
    let repo = Repo::new();
    let gnupg = Gnupg::new();
    let key = gnupg.generate("Ed Test <ed@example.com>", "ed25519");
    let raw = repo.gpg_commit(&gnupg, &key, "deploy version 1\n");
    let list = signers(&gnupg.export(&[&key]));
    verify_commit(&raw, &list).expect("original verifies");
    for altered in [
        replace(&raw, b"deploy version 1\n", b"deploy version 2\n"),
        replace(&raw, b"author Test", b"author Evil"),
        [raw.as_slice(), b"extra\n"].concat(),
    ] {
        assert_eq!(
            verify_commit(&altered, &list),
            Err(VerifyError::BadSignature)
        );
    }
}

#[test]
fn gpg_signing_subkey_verifies_as_its_primary_key() {
    let repo = Repo::new();
    let gnupg = Gnupg::new();
    let primary = gnupg.generate("Sub Test <sub@example.com>", "ed25519");
    run(gnupg
        .gpg()
        .args(["--passphrase", "", "--quick-add-key", &primary])
        .args(["ed25519", "sign", "never"]));
    let subkey = gnupg
        .fingerprints(&primary)
        .into_iter()
        .nth(1)
        .expect("the subkey's fingerprint");
    // `!` makes GnuPG sign with exactly that subkey.
    let raw = repo.gpg_commit(&gnupg, &format!("{subkey}!"), "by a subkey\n");
    let list = signers(&gnupg.export(&[&primary]));
    assert_eq!(
        verify_commit(&raw, &list).expect("verifies"),
        Signer {
            principal: "Sub Test <sub@example.com>".into(),
            fingerprint: primary.clone(),
        }
    );
    // Another key does not know the subkey: the error names the subkey that signed.
    let other = gnupg.generate("Other <other@example.com>", "ed25519");
    assert_eq!(
        verify_commit(&raw, &signers(&gnupg.export(&[&other]))),
        Err(VerifyError::UnknownKey {
            fingerprint: subkey
        })
    );
}

#[test]
fn expired_and_revoked_pgp_keys_are_not_valid_at_signing_time() {
    let gnupg = Gnupg::new();
    let message: &[u8] = b"tree 0\n\nsigned payload\n";
    let key = gnupg.generate_at("20200101T000000", "Old <old@example.com>", "ed25519");
    let early = gnupg.sign_at("20200201T000000", &key, message);
    let late = gnupg.sign_at("20210601T000000", &key, message);
    let list = signers(&gnupg.export(&[&key]));
    verify_pgp_signature(message, &early, &list).expect("no expiry yet");
    verify_pgp_signature(message, &late, &list).expect("no expiry yet");

    // Expiry set on 2020-07-01 for 180 days: the late signature was made after it.
    run(gnupg
        .gpg()
        .args(["--faked-system-time", "20200701T000000"])
        .args(["--quick-set-expire", &key, "180d"]));
    let list = signers(&gnupg.export(&[&key]));
    verify_pgp_signature(message, &early, &list).expect("made before the expiry");
    let err = verify_pgp_signature(message, &late, &list).expect_err("expired");
    assert!(
        matches!(&err, VerifyError::KeyNotValid { fingerprint, detail }
            if *fingerprint == key && detail.contains("expired")),
        "{err:?}"
    );

    // The revocation certificate GnuPG made with the key (no reason given) revokes it for
    // every signature.
    let certificate = std::fs::read_to_string(
        gnupg
            .dir
            .path()
            .join("openpgp-revocs.d")
            .join(format!("{key}.rev")),
    )
    .expect("revocation certificate");
    let certificate = certificate.replace(":-----BEGIN", "-----BEGIN");
    let file = gnupg.dir.path().join("revocation.asc");
    std::fs::write(&file, certificate).expect("write");
    run(gnupg.gpg().arg("--import").arg(&file));
    let list = signers(&gnupg.export(&[&key]));
    let err = verify_pgp_signature(message, &early, &list).expect_err("revoked");
    assert!(
        matches!(&err, VerifyError::KeyNotValid { detail, .. } if detail.contains("revoked")),
        "{err:?}"
    );
    assert!(err.to_string().contains(&key), "{err}");
}

#[test]
fn one_secret_text_with_allowed_signers_lines_and_a_pgp_block_verifies_both() {
    let repo = Repo::new();
    let gnupg = Gnupg::new();
    let alice = keygen(repo.dir.path(), "alice", &["-t", "ed25519"]);
    let bob = keygen(repo.dir.path(), "bob", &["-t", "ed25519"]);
    let gpg_key = gnupg.generate("Carol <carol@example.com>", "ed25519");
    // As the controller joins a Secret's values: each value followed by a newline, a block
    // possibly indented.
    let block: String = gnupg
        .export(&[&gpg_key])
        .lines()
        .map(|line| format!("    {line}\r\n"))
        .collect();
    let text = format!(
        "# trusted\nalice@example.com {}\n\n{block}\nbob@example.com {}\n",
        key_part(&alice),
        key_part(&bob)
    );
    let list = signers(&text);
    assert_eq!(list.len(), 3);

    let ssh_signed = repo.commit(Some(&alice), "by ssh\n");
    assert_eq!(
        verify_commit(&ssh_signed, &list).expect("ssh verifies"),
        Signer {
            principal: "alice@example.com".into(),
            fingerprint: alice.fingerprint.clone(),
        }
    );
    let after_block = repo.commit(Some(&bob), "by bob\n");
    assert_eq!(
        verify_commit(&after_block, &list)
            .expect("line after the block")
            .principal,
        "bob@example.com"
    );
    let gpg_signed = repo.gpg_commit(&gnupg, &gpg_key, "by gpg\n");
    assert_eq!(
        verify_commit(&gpg_signed, &list).expect("gpg verifies"),
        Signer {
            principal: "Carol <carol@example.com>".into(),
            fingerprint: gpg_key.clone(),
        }
    );
    // Only the PGP block: SSH signatures find no listed key, the GPG one still verifies.
    let only_pgp = signers(&gnupg.export(&[&gpg_key]));
    assert!(matches!(
        verify_commit(&ssh_signed, &only_pgp),
        Err(VerifyError::UnknownKey { .. })
    ));
    verify_commit(&gpg_signed, &only_pgp).expect("gpg verifies");
}

#[test]
fn malformed_pgp_blocks_are_named_by_their_begin_line() {
    let gnupg = Gnupg::new();
    let key = gnupg.generate("Ed Test <ed@example.com>", "ed25519");
    let block = gnupg.export(&[&key]);
    let lines: Vec<&str> = block.lines().collect();
    let half = lines[..lines.len() / 2].join("\n");
    // Body lines dropped, BEGIN and END kept (first body line after the blank line).
    let gap = [&lines[..3], &lines[lines.len() - 3..]].concat().join("\n");
    let garbled = block.replacen('A', "!", 3);
    let secret = String::from_utf8(run(gnupg.gpg().args([
        "--armor",
        "--export-secret-keys",
        &key,
    ])))
    .expect("utf-8");
    let cases = [
        ("truncated", half.clone()),
        ("lines missing", gap),
        ("garbled", garbled),
        (
            "a second block before the END line",
            format!("{half}\n{block}"),
        ),
        ("private key", secret),
        (
            "a signature",
            "-----BEGIN PGP SIGNATURE-----\n\niQ==\n-----END PGP SIGNATURE-----\n".into(),
        ),
        (
            "empty",
            "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n-----END PGP PUBLIC KEY BLOCK-----\n"
                .to_string(),
        ),
    ];
    for (name, case) in cases {
        let text = format!("# header\n\n{case}\nalice@example.com ssh-ed25519 AAAA\n");
        let err = AllowedSigners::parse(&text, ORIGIN).expect_err(name);
        let VerifyError::AllowedSigners { origin, line, .. } = &err else {
            panic!("{name}: {err:?}");
        };
        assert_eq!((origin.as_str(), *line), (ORIGIN, 3), "{name}: {err}");
        let shown = err.to_string();
        assert!(shown.starts_with(&format!("{ORIGIN}, line 3: ")), "{shown}");
        assert!(shown.contains("OpenPGP"), "{name}: {shown}");
    }
    // The block itself is fine: the error is then the (bad) line after it.
    let text = format!("# header\n\n{block}\nalice@example.com ssh-ed25519 AAAA\n");
    let err = AllowedSigners::parse(&text, ORIGIN).expect_err("bad ssh line");
    // The block's lines, then a blank line, then the SSH line.
    let after = 3 + lines.len() + 1;
    assert!(
        matches!(err, VerifyError::AllowedSigners { line, .. } if line == after),
        "{err:?}"
    );
}

#[test]
fn malformed_allowed_signers_lines_are_named_by_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = keygen(dir.path(), "alice", &["-t", "ed25519"]);
    let key = key_part(&alice);
    let base64 = key.split_whitespace().nth(1).expect("base64").to_string();
    let cases = [
        "alice@example.com\n".to_string(),
        "alice@example.com ssh-ed25519\n".to_string(),
        "alice@example.com ssh-ed25519 not*base64\n".to_string(),
        format!("alice@example.com ssh-rsa {base64}\n"),
        format!("alice@example.com frobnicate {key}\n"),
        format!("alice@example.com namespaces=\"git {key}\n"),
        format!("alice@example.com valid-after=\"yesterday\" {key}\n"),
        format!("alice@example.com valid-after=\"20250101\",valid-before=\"20240101\" {key}\n"),
        format!("alice@example.com namespaces=\"git\",namespaces=\"file\" {key}\n"),
        format!("\"alice@example.com {key}\n"),
        format!("alice@example.com ssh-ed25519-cert-v01@openssh.com {base64}\n"),
    ];
    for case in cases {
        let text = format!("# header\n\n{case}");
        let err = AllowedSigners::parse(&text, ORIGIN).expect_err(&case);
        let VerifyError::AllowedSigners { origin, line, .. } = &err else {
            panic!("{case}: {err:?}");
        };
        assert_eq!((origin.as_str(), *line), (ORIGIN, 3), "{case}");
        let shown = err.to_string();
        assert!(shown.starts_with(&format!("{ORIGIN}, line 3: ")), "{shown}");
        assert!(!shown.contains(&base64), "no key data in {shown}");
    }
}

#[test]
fn cert_authority_lines_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = keygen(dir.path(), "ca", &["-t", "ed25519"]);
    let text = format!("*@example.com cert-authority {}\n", key_part(&ca));
    let err = AllowedSigners::parse(&text, ORIGIN).expect_err("refused");
    assert!(err.to_string().contains("cert-authority"), "{err}");
}

#[test]
fn signed_annotated_tags_verify_as_git_verify_tag_does() {
    let repo = Repo::new();
    let alice = keygen(repo.dir.path(), "alice", &["-t", "ed25519"]);
    let mallory = keygen(repo.dir.path(), "mallory", &["-t", "ed25519"]);
    repo.commit(None, "unsigned commit");
    repo.signing(&alice, &["tag", "-s", "-m", "release 1\n\nnotes", "v1"]);
    repo.signing(&mallory, &["tag", "-s", "-m", "release 2", "v2"]);
    repo.git(&["tag", "-a", "-m", "annotated, unsigned", "v3"]);
    let raw = |tag: &str| repo.git(&["cat-file", "tag", tag]);
    let text = format!("alice@example.com {}\n", key_part(&alice));
    let list = signers(&text);
    let signer = verify_tag(&raw("v1"), &list).expect("v1 verifies");
    assert_eq!(signer.fingerprint, alice.fingerprint);
    // Git agrees.
    let file = repo.dir.path().join("allowed_signers");
    std::fs::write(&file, &text).expect("write");
    let git_verify = |tag: &str| {
        repo.command()
            .args(["-c", "gpg.format=ssh", "-c"])
            .arg(format!("gpg.ssh.allowedSignersFile={}", file.display()))
            .args(["verify-tag", tag])
            .output()
            .expect("git verify-tag")
            .status
            .success()
    };
    assert!(git_verify("v1"));
    assert!(!git_verify("v2"));
    assert!(matches!(
        verify_tag(&raw("v2"), &list),
        Err(VerifyError::UnknownKey { fingerprint }) if fingerprint == mallory.fingerprint
    ));
    assert_eq!(verify_tag(&raw("v3"), &list), Err(VerifyError::UnsignedTag));
    // A tag moved to another object, or its message changed, no longer matches its signature.
    let moved = replace(&raw("v1"), b"release 1", b"release 9");
    assert_eq!(verify_tag(&moved, &list), Err(VerifyError::BadSignature));
    let commit = repo.git(&["rev-parse", "HEAD"]);
    let commit = String::from_utf8_lossy(&commit).trim().to_string();
    let retargeted = replace(&raw("v1"), commit.as_bytes(), &[b'0'; 40]);
    assert_eq!(
        verify_tag(&retargeted, &list),
        Err(VerifyError::BadSignature)
    );
    // The signature's armor inside the message does not move the split: the last one counts.
    repo.signing(
        &alice,
        &[
            "tag",
            "-s",
            "-m",
            "quoting\n-----BEGIN SSH SIGNATURE-----\nnot one",
            "v4",
        ],
    );
    verify_tag(&raw("v4"), &list).expect("v4 verifies");
    assert!(git_verify("v4"));
}

#[test]
fn openpgp_signed_tags_verify() {
    let repo = Repo::new();
    let gnupg = Gnupg::new();
    let key = gnupg.generate("Release <release@example.com>", "ed25519");
    repo.commit(None, "unsigned commit");
    run(repo
        .command()
        .env("GNUPGHOME", gnupg.dir.path())
        .args(["-c", "gpg.format=openpgp", "-c", "gpg.program=gpg", "-c"])
        .arg(format!("user.signingkey={key}"))
        .args(["tag", "-s", "-m", "release", "v1"]));
    let raw = repo.git(&["cat-file", "tag", "v1"]);
    assert!(
        raw.windows(29)
            .any(|w| w == b"-----BEGIN PGP SIGNATURE-----")
    );
    let list = signers(&gnupg.export(&[&key]));
    let signer = verify_tag(&raw, &list).expect("verifies");
    assert_eq!(signer.fingerprint, key.to_uppercase());
    assert_eq!(verify_tag(&raw, &signers("")), Err(VerifyError::NoPgpKeys));
}
