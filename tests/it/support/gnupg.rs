//! GnuPG homes for tests: a throwaway `GNUPGHOME` per test, keys made by `gpg` itself, the agent
//! stopped when the home is dropped.

use std::process::Command;

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("running gpg (is GnuPG installed?)");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A GnuPG home in a temporary directory; its agent is stopped on drop.
pub struct Gnupg {
    /// The home directory (`GNUPGHOME`).
    pub dir: tempfile::TempDir,
}

impl Gnupg {
    pub fn new() -> Gnupg {
        Gnupg {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn gpg(&self) -> Command {
        let mut cmd = Command::new("gpg");
        cmd.env("GNUPGHOME", self.dir.path())
            .stdin(std::process::Stdio::null())
            .args(["--batch", "--quiet", "--no-tty"]);
        cmd
    }

    /// Generates a key without passphrase for signing and returns its fingerprint.
    pub fn generate(&self, uid: &str, algorithm: &str) -> String {
        run(self
            .gpg()
            .args(["--passphrase", "", "--quick-gen-key", uid, algorithm])
            .args(["sign", "never"]));
        self.fingerprints(uid)
            .into_iter()
            .next()
            .expect("fingerprint")
    }

    /// Generates a key as if at `time` (`YYYYMMDDTHHMMSS`).
    pub fn generate_at(&self, time: &str, uid: &str, algorithm: &str) -> String {
        run(self
            .gpg()
            .args(["--faked-system-time", time, "--passphrase", ""])
            .args(["--quick-gen-key", uid, algorithm, "sign", "never"]));
        self.fingerprints(uid)
            .into_iter()
            .next()
            .expect("fingerprint")
    }

    /// The fingerprints (primary key first, then subkeys) of the key `name` selects.
    pub fn fingerprints(&self, name: &str) -> Vec<String> {
        let listing = run(self.gpg().args(["--with-colons", "--list-keys", name]));
        String::from_utf8(listing)
            .expect("utf-8")
            .lines()
            .filter_map(|line| line.strip_prefix("fpr:"))
            .filter_map(|rest| rest.split(':').nth(8))
            .map(str::to_string)
            .collect()
    }

    /// The armored public key block of `keys`.
    pub fn export(&self, keys: &[&str]) -> String {
        let block = run(self.gpg().args(["--armor", "--export"]).args(keys));
        String::from_utf8(block).expect("armored")
    }

    /// A detached armored signature over `data` made as if at `time`.
    pub fn sign_at(&self, time: &str, key: &str, data: &[u8]) -> Vec<u8> {
        let file = self.dir.path().join("data");
        std::fs::write(&file, data).expect("write");
        run(self
            .gpg()
            .args(["--faked-system-time", time, "--local-user", key])
            .args(["--armor", "--detach-sign", "--output", "-"])
            .arg(&file))
    }
}

impl Drop for Gnupg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.dir.path())
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

impl Gnupg {
    /// Generates a key without passphrase that can encrypt (an encryption subkey of `algorithm`'s
    /// family: `ed25519` gets `cv25519`, `rsa2048` another `rsa2048`) and returns its fingerprint.
    pub fn generate_encrypting(&self, uid: &str, algorithm: &str) -> String {
        let fpr = self.generate(uid, algorithm);
        let sub = if algorithm == "ed25519" {
            "cv25519"
        } else {
            algorithm
        };
        run(self.gpg().args([
            "--passphrase",
            "",
            "--quick-add-key",
            &fpr,
            sub,
            "encr",
            "never",
        ]));
        fpr
    }

    /// The armored secret key block of `key` (unprotected).
    pub fn export_secret(&self, key: &str) -> String {
        let block = run(self
            .gpg()
            .args(["--pinentry-mode", "loopback", "--passphrase", ""])
            .args(["--armor", "--export-secret-keys", key]));
        String::from_utf8(block).expect("armored")
    }

    /// Imports an armored key block.
    pub fn import(&self, path: &std::path::Path) {
        run(self.gpg().arg("--import").arg(path));
    }
}
