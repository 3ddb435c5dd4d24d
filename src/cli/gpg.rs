//! GnuPG as sops runs it: the `gpg` program (or `SOPS_GPG_EXEC`), with the user's own `GNUPGHOME`,
//! keyring and agent, so smartcards and pinentry keep working. Only the armored message goes in (on
//! stdin) and only the data key comes out (on stdout, into wiped memory): nothing touches the disk.

use std::io::Write as _;
use std::process::{Command, Stdio};

use zeroize::Zeroizing;

use crate::keys::pgp::{PgpAgent, PgpRecipient};

use super::keysources::Env;

/// The GnuPG program to run and the home it uses.
pub struct Gpg {
    program: String,
    from: &'static str,
    home: Option<String>,
}

impl Gpg {
    /// `SOPS_GPG_EXEC` when set, else `gpg` on the PATH; `GNUPGHOME` as the environment has it.
    pub fn from_env(env: &Env<'_>) -> Gpg {
        let (program, from) = match (env.var)("SOPS_GPG_EXEC") {
            Some(p) => (p, "SOPS_GPG_EXEC"),
            None => ("gpg".to_string(), "PATH"),
        };
        Gpg {
            program,
            from,
            home: (env.var)("GNUPGHOME"),
        }
    }
}

impl Gpg {
    /// The PGP key `fingerprint` from GnuPG's keyring (`gpg --export`: public key material only), ready
    /// to encrypt to in process — the data key never leaves lockstep.
    pub fn recipient(&self, fingerprint: &str) -> Result<PgpRecipient, String> {
        let out = Command::new(&self.program)
            .args(["--batch", "--no-tty", "--export", fingerprint])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {} ({}): {e}", self.program, self.from))?;
        if !out.status.success() || out.stdout.is_empty() {
            return Err(format!(
                "pgp {fingerprint}: no such public key in GnuPG's keyring ({}); import it with gpg --import KEY.asc",
                self.describe()
            ));
        }
        PgpRecipient::from_key_material(fingerprint, &out.stdout)
    }
}

impl PgpAgent for Gpg {
    fn decrypt(
        &self,
        fingerprint: &str,
        armored: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, String> {
        let mut child = match Command::new(&self.program)
            .arg("-d")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            // No GnuPG: the key can only have come from the in-process keys.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot run {} ({}): {e}", self.program, self.from)),
        };
        if let Some(mut stdin) = child.stdin.take() {
            // A gpg that exits early closes the pipe; its exit status says why.
            let _ = stdin.write_all(armored.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("{} -d: {e}", self.program))?;
        let data = Zeroizing::new(out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() && !data.is_empty() {
            return Ok(Some(data));
        }
        if stderr.contains("No secret key") || stderr.contains("no secret key") {
            return Ok(None);
        }
        if out.status.success() {
            // Old GnuPG drops packets it does not know (AEAD) and prints nothing.
            return Err(format!(
                "{} -d returned no data for the key {fingerprint}; the message may need a newer GnuPG",
                self.program
            ));
        }
        let last = stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("no message");
        Err(format!(
            "{} -d failed for the key {fingerprint} ({}): {}",
            self.program,
            out.status,
            last.trim()
        ))
    }

    fn describe(&self) -> String {
        let program = match self.from {
            "PATH" => format!("{} on the PATH", self.program),
            var => format!("{var}={}", self.program),
        };
        format!(
            "GnuPG: {program}, GNUPGHOME={}",
            self.home.as_deref().unwrap_or("~/.gnupg")
        )
    }
}
