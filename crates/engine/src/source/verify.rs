//! Commit signature verification: checks that a Git commit carries a valid SSH signature
//! (`gpg.format=ssh`) or OpenPGP signature (`gpg.format=openpgp`, the default) made by one of a set
//! of trusted keys: SSH keys in OpenSSH `allowed_signers` form (the file
//! `gpg.ssh.allowedSignersFile` names) and ASCII-armored OpenPGP public keys (`gpg --armor
//! --export`), possibly mixed in one text.
//!
//! The signed payload is rebuilt from the raw commit exactly as Git does. An SSH signature (an
//! armored SSHSIG block) is checked in the `git` namespace and its key must be listed. Supported SSH
//! keys: `ssh-ed25519`, `ssh-rsa` (with `rsa-sha2-256`/`rsa-sha2-512` signatures, 2048 to 4096
//! bits), `ecdsa-sha2-nistp256` and the FIDO variants `sk-ssh-ed25519@openssh.com` and
//! `sk-ecdsa-sha2-nistp256@openssh.com`. An OpenPGP signature must be made by the primary key or a
//! signing subkey of a trusted OpenPGP key that is neither revoked nor expired when the signature
//! was made; it must use SHA-256 or a stronger hash, and RSA and DSA keys need 2048 bits or more.

use std::fmt;

use base64::Engine as _;
use pgp::composed::{Deserializable as _, DetachedSignature, SignedPublicKey, SignedPublicSubKey};
use pgp::crypto::hash::HashAlgorithm;
use pgp::packet::{RevocationCode, Signature, SignatureType, SubpacketData};
use pgp::ser::Serialize as _;
use pgp::types::{KeyDetails as _, PublicParams, Tag, Timestamp};
use ssh_key::public::KeyData;
use ssh_key::{Algorithm, EcdsaCurve, HashAlg, PublicKey, SshSig};

/// The SSHSIG namespace Git signs commits and tags in.
pub const GIT_NAMESPACE: &str = "git";

const SSH_BEGIN: &[u8] = b"-----BEGIN SSH SIGNATURE-----";
const PGP_SIGNATURE_BEGIN: &[u8] = b"-----BEGIN PGP SIGNATURE-----";
/// Armor lines of the signature forms Git knows besides SSH and detached OpenPGP signatures.
const OTHER_FORMATS: [(&[u8], &str); 2] = [
    (
        b"-----BEGIN PGP MESSAGE-----",
        "an OpenPGP message (not a detached signature)",
    ),
    (
        b"-----BEGIN SIGNED MESSAGE-----",
        "an X.509 (gpgsm) signature",
    ),
];
/// How an armored OpenPGP block starts in allowed signers text.
const PGP_ARMOR_PREFIX: &str = "-----BEGIN PGP ";
const PGP_KEY_BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
const PGP_KEY_END: &str = "-----END PGP PUBLIC KEY BLOCK-----";
const PGP_PRIVATE_KEY_BEGIN: &str = "-----BEGIN PGP PRIVATE KEY BLOCK-----";
/// Smallest RSA or DSA OpenPGP key accepted, in bits.
const PGP_MIN_BITS: u16 = 2048;
/// Key types an `allowed_signers` line may name (certificate types are recognised to be refused).
const KEY_TYPES: [&str; 7] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];
const CERT_SUFFIX: &str = "-cert-v01@openssh.com";
const RSA_MIN_BYTES: usize = 2048 / 8;
const RSA_MAX_BYTES: usize = 4096 / 8;
/// What to sign with instead, appended to SSH [`VerifyError::UnsupportedAlgorithm`] messages.
const SSH_ADVICE: &str =
    "sign with an ssh-ed25519, ecdsa-sha2-nistp256 or RSA (rsa-sha2-256/rsa-sha2-512) key";

/// Why a commit's signature was not accepted, or why `allowed_signers` text could not be read.
/// Messages name keys only by fingerprint and never repeat commit or file contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The commit has no signature.
    #[error(
        "not signed; sign it with `git commit -S` using a trusted key: an SSH key listed in the \
         allowed signers (with gpg.format=ssh) or a trusted OpenPGP key"
    )]
    Unsigned,
    /// The annotated tag has no signature.
    #[error(
        "the tag is not signed; sign it with `git tag -s` using a trusted key: an SSH key listed \
         in the allowed signers (with gpg.format=ssh) or a trusted OpenPGP key"
    )]
    UnsignedTag,
    /// The tag is lightweight (a bare ref, no tag object): it cannot carry a signature.
    #[error(
        "the tag is a lightweight tag, which cannot carry a signature; make it an annotated, \
         signed tag (`git tag -s`), or verify the commit instead (verify.mode: HEAD)"
    )]
    LightweightTag,
    /// The commit has an OpenPGP signature, but no OpenPGP public key is trusted.
    #[error(
        "the signature is OpenPGP (GPG), but no OpenPGP public key is trusted; add the \
         signer's armored public key block (`gpg --armor --export <key>`, starting with \
         -----BEGIN PGP PUBLIC KEY BLOCK-----) to the signers"
    )]
    NoPgpKeys,
    /// The commit's signature is of a form that cannot be verified (X.509/gpgsm, or an OpenPGP
    /// message instead of a detached signature); the text names it.
    #[error(
        "the signature is {0}, which is not supported; sign with an SSH key (gpg.format=ssh) or an \
         OpenPGP key (gpg.format=openpgp)"
    )]
    UnsupportedFormat(String),
    /// The signature or the commit could not be parsed.
    #[error("the signature is malformed: {0}")]
    Malformed(String),
    /// The signature does not match the commit content.
    #[error(
        "the signature does not match the signed content: it was changed after it was signed or \
         the signature is forged"
    )]
    BadSignature,
    /// The signing key is not one of the allowed signers.
    #[error(
        "signed by {fingerprint}, which is not in the allowed signers; add that public \
         key to the allowed signers or sign with a listed key"
    )]
    UnknownKey {
        /// The signing key's fingerprint: `SHA256:…` for SSH; for OpenPGP the issuer's
        /// fingerprint in uppercase hex, or `key ID …` (16 hex digits) when the signature names
        /// only a key ID.
        fingerprint: String,
    },
    /// The signature was made for another SSHSIG namespace than `git`.
    #[error(
        "the signature was made for another namespace than \"git\" (ssh-keygen -Y sign -n …); \
         sign with `git commit -S` or `git tag -s`"
    )]
    WrongNamespace,
    /// The signing key is listed, but its entry's `namespaces=` option does not include `git`.
    #[error(
        "signed by {fingerprint}, whose allowed signers entry does not allow the \"git\" \
         namespace; add git to its namespaces=\"…\" option"
    )]
    NamespaceNotAllowed {
        /// The signing key's fingerprint (`SHA256:…`).
        fingerprint: String,
    },
    /// The signing key is listed, but not valid at the commit's committer time
    /// (`valid-after=`/`valid-before=`), or, for OpenPGP, revoked, expired or not usable for
    /// signing when the signature was made.
    #[error("signed by {fingerprint}, which is not valid at the time it was signed: {detail}")]
    KeyNotValid {
        /// The signing key's fingerprint (`SHA256:…`; for OpenPGP the primary key's, in
        /// uppercase hex).
        fingerprint: String,
        /// Which entry and which bound, or why the OpenPGP key is not valid.
        detail: String,
    },
    /// A key type, key size, signature algorithm or hash that is not supported; the text says
    /// what to use instead.
    #[error("unsupported signature algorithm: {0}")]
    UnsupportedAlgorithm(String),
    /// A line of `allowed_signers` text that could not be used.
    #[error("{origin}, line {line}: {message}")]
    AllowedSigners {
        /// Where the text came from.
        origin: String,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },
}

/// Trusted signers parsed from allowed_signers text and armored OpenPGP public keys.
#[derive(Clone)]
pub struct AllowedSigners {
    origin: String,
    entries: Vec<Entry>,
    pgp_keys: Vec<PgpKey>,
}

/// One `allowed_signers` line.
#[derive(Clone)]
struct Entry {
    line: usize,
    principals: String,
    key: KeyData,
    namespaces: Option<String>,
    valid_after: Option<i64>,
    valid_before: Option<i64>,
}

/// One trusted OpenPGP public key (certificate), with what parsing learnt from its
/// self-signatures.
#[derive(Clone)]
struct PgpKey {
    key: SignedPublicKey,
    /// The primary user ID, lossily decoded.
    principal: String,
    /// The primary key's fingerprint in uppercase hex.
    fingerprint: String,
    /// The newest valid self-signature of the primary key (on the primary user ID or a direct key
    /// signature): its key flags and expiration apply to the primary key.
    self_signature: Signature,
    /// Valid key revocation signatures issued by the key itself.
    revocations: Vec<Signature>,
}

impl fmt::Debug for AllowedSigners {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AllowedSigners")
            .field("origin", &self.origin)
            .field("entries", &self.entries.len())
            .field("pgp_keys", &self.pgp_keys.len())
            .finish()
    }
}

impl AllowedSigners {
    /// Parses allowed_signers text: lines `principals [options] keytype base64 [comment]`, with `#`
    /// comment lines and blank lines skipped. Principals may be double-quoted. Options are
    /// `namespaces="…"` (a pattern list the signature namespace must match), `valid-after="…"` and
    /// `valid-before="…"` (`YYYYMMDD[HHMM[SS]]`, read as UTC, an optional `Z`/`UTC` suffix
    /// allowed) checked against the commit's committer time as Git does; `cert-authority` lines,
    /// certificate key types and RSA keys outside 2048–4096 bits are refused (`ecdsa-sha2-nistp384`
    /// and `-nistp521` keys are accepted, but their signatures are reported as unsupported).
    ///
    /// The text may also hold ASCII-armored OpenPGP public key blocks (`-----BEGIN PGP PUBLIC KEY
    /// BLOCK-----` to `-----END PGP PUBLIC KEY BLOCK-----`, lines possibly indented), each with one
    /// or more keys; every key needs a user ID with a valid self-signature. Other armored PGP
    /// blocks (a private key, a signature) are refused.
    ///
    /// `origin` names the source in error messages, which also give the line number (for an
    /// OpenPGP block, the line of its BEGIN line).
    pub fn parse(text: &str, origin: &str) -> Result<AllowedSigners, VerifyError> {
        let error = |line: usize, message: String| VerifyError::AllowedSigners {
            origin: origin.to_string(),
            line,
            message,
        };
        let mut entries = Vec::new();
        let mut pgp_keys = Vec::new();
        let mut lines = text.lines().enumerate();
        while let Some((index, line)) = lines.next() {
            let number = index + 1;
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if trimmed.starts_with(PGP_ARMOR_PREFIX) {
                let block = pgp_block(trimmed, &mut lines).map_err(|m| error(number, m))?;
                pgp_keys.extend(parse_pgp_block(&block).map_err(|m| error(number, m))?);
                continue;
            }
            let entry = parse_line(trimmed, number).map_err(|m| error(number, m))?;
            entries.push(entry);
        }
        Ok(AllowedSigners {
            origin: origin.to_string(),
            entries,
            pgp_keys,
        })
    }

    /// Whether no signer is listed, neither an allowed_signers line nor an OpenPGP key (then every
    /// commit is refused).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.pgp_keys.is_empty()
    }

    /// Number of listed entries: allowed_signers lines plus OpenPGP public keys.
    pub fn len(&self) -> usize {
        self.entries.len() + self.pgp_keys.len()
    }

    /// Where the text came from, as given to [`AllowedSigners::parse`].
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

/// Who signed, when verification succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The principals field of the matching `allowed_signers` line, as written there; for an
    /// OpenPGP key, its primary user ID (`Name <email>`).
    pub principal: String,
    /// The signing key's fingerprint: `SHA256:…` as `ssh-keygen -l` prints it; for OpenPGP the
    /// primary key's fingerprint in uppercase hex (also when a subkey signed).
    pub fingerprint: String,
}

/// Verifies the raw commit object bytes (as stored in Git: headers, blank line, message; the
/// `gpgsig` header possibly multi-line with continuation lines starting with a space). Removes the
/// gpgsig header to get the signed payload exactly as Git does, then checks the signature:
///
/// - `-----BEGIN SSH SIGNATURE-----` (SSHSIG format, namespace must be `git`): checked with the
///   embedded public key, which must be one of the allowed_signers lines; validity bounds are
///   checked against the committer time, as `git verify-commit` does.
/// - `-----BEGIN PGP SIGNATURE-----` (a detached OpenPGP signature): the issuer must be the primary
///   key or a subkey of a trusted OpenPGP key, and that (sub)key must be valid for signing when the
///   signature was made (not revoked, not expired, a subkey bound with the signing flag and a
///   valid back-signature).
///
/// `raw_commit` is the object's content without the loose-object `commit <size>\0` prefix. In a
/// SHA-256 repository (a 64-digit `tree` id) the signature header is `gpgsig-sha256`.
pub fn verify_commit(raw_commit: &[u8], signers: &AllowedSigners) -> Result<Signer, VerifyError> {
    let (payload, signature) = split_signed_commit(raw_commit)?;
    let Some(signature) = signature else {
        return Err(VerifyError::Unsigned);
    };
    verify_signature(&payload, &signature, signers, "committer ")
}

/// Verifies the raw object of an annotated tag (headers, blank line, message, then the signature
/// appended to the message, as `git tag -s` writes it) as `git verify-tag` does: the payload is
/// everything before the last line that starts a signature, checked like a commit's (SSH
/// validity bounds against the tagger time).
pub fn verify_tag(raw_tag: &[u8], signers: &AllowedSigners) -> Result<Signer, VerifyError> {
    let (payload, signature) = split_signed_tag(raw_tag);
    let Some(signature) = signature else {
        return Err(VerifyError::UnsignedTag);
    };
    verify_signature(payload, signature, signers, "tagger ")
}

/// Checks `signature` over `payload` by its form; SSH validity bounds use the time of the
/// `time_header` identity (`committer `, `tagger `).
fn verify_signature(
    payload: &[u8],
    signature: &[u8],
    signers: &AllowedSigners,
    time_header: &str,
) -> Result<Signer, VerifyError> {
    if let Some((_, what)) = OTHER_FORMATS
        .iter()
        .find(|(begin, _)| signature.starts_with(begin))
    {
        return Err(VerifyError::UnsupportedFormat((*what).to_string()));
    }
    if signature.starts_with(PGP_SIGNATURE_BEGIN) {
        return verify_pgp_signature(payload, signature, signers);
    }
    if !signature.starts_with(SSH_BEGIN) {
        return Err(VerifyError::Malformed(
            "it holds no SSH, OpenPGP or X.509 signature".into(),
        ));
    }
    let time =
        identity_time(payload, time_header).unwrap_or_else(|| jiff::Timestamp::now().as_second());
    verify_ssh_signature(payload, signature, signers, time)
}

/// Splits a raw tag into the signed payload and the signature: Git's `parse_signed_buffer` takes
/// the last line that begins with a signature's armor line as the signature's start.
fn split_signed_tag(raw: &[u8]) -> (&[u8], Option<&[u8]>) {
    let begins: [&[u8]; 4] = [
        SSH_BEGIN,
        PGP_SIGNATURE_BEGIN,
        OTHER_FORMATS[0].0,
        OTHER_FORMATS[1].0,
    ];
    let mut start = None;
    let mut at = 0;
    while at < raw.len() {
        let line = &raw[at..];
        if begins.iter().any(|b| line.starts_with(b)) {
            start = Some(at);
        }
        at += line
            .iter()
            .position(|&b| b == b'\n')
            .map_or(line.len(), |i| i + 1);
    }
    match start {
        Some(i) => (&raw[..i], Some(&raw[i..])),
        None => (raw, None),
    }
}

/// Splits a raw commit into the signed payload and the signature, following Git's
/// `parse_buffer_signed_by_header`: the signature header's lines and their continuation lines
/// (leading space removed) form the signature; every other header starting with `gpgsig` (the
/// other hash algorithm's signature) is left out of the payload too; the rest is the payload.
fn split_signed_commit(raw: &[u8]) -> Result<(Vec<u8>, Option<Vec<u8>>), VerifyError> {
    let header: &[u8] = if is_sha256_commit(raw) {
        b"gpgsig-sha256"
    } else {
        b"gpgsig"
    };
    let mut payload = Vec::with_capacity(raw.len());
    let mut signature = Vec::new();
    let (mut saw_signature, mut in_signature, mut other_signature) = (false, false, false);
    let mut rest = raw;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let (line, next) = rest.split_at(end);
        let continuation = if in_signature {
            line.strip_prefix(b" ")
        } else {
            None
        };
        let own_header = line
            .strip_prefix(header)
            .and_then(|after| after.strip_prefix(b" "));
        let sig_part = if continuation.is_some() {
            continuation
        } else if own_header.is_some() {
            other_signature = false;
            own_header
        } else {
            if line.starts_with(b"gpgsig") {
                other_signature = true;
            } else if other_signature && !line.starts_with(b" ") {
                other_signature = false;
            }
            None
        };
        if let Some(part) = sig_part {
            signature.extend_from_slice(part);
            saw_signature = true;
            in_signature = true;
        } else {
            if line.first() == Some(&b'\n') {
                // The blank line ending the headers: the message follows, all of it signed.
                payload.extend_from_slice(rest);
                break;
            }
            if line.contains(&0) {
                // Git stops reading at a NUL here, which would leave the rest unsigned.
                return Err(VerifyError::Malformed(
                    "the commit headers contain a NUL byte".into(),
                ));
            }
            if !other_signature {
                payload.extend_from_slice(line);
            }
            in_signature = false;
        }
        rest = next;
    }
    Ok((payload, saw_signature.then_some(signature)))
}

/// Whether the commit names its tree with a SHA-256 id (64 hex digits).
fn is_sha256_commit(raw: &[u8]) -> bool {
    raw.strip_prefix(b"tree ")
        .map(|rest| rest.iter().take_while(|b| b.is_ascii_hexdigit()).count() == 64)
        .unwrap_or(false)
}

/// The timestamp (seconds since the epoch) of the `header` identity (`committer `, `tagger `) in
/// the payload's headers.
fn identity_time(payload: &[u8], header: &str) -> Option<i64> {
    for line in payload.split(|&b| b == b'\n') {
        if line.is_empty() {
            break;
        }
        if let Some(ident) = line.strip_prefix(header.as_bytes()) {
            let close = ident.iter().rposition(|&b| b == b'>')?;
            let after = std::str::from_utf8(ident.get(close + 1..)?).ok()?;
            return after.split_whitespace().next()?.parse().ok();
        }
    }
    None
}

/// Verifies an armored SSH signature (`ssh-keygen -Y sign -n git`) over `message`, made at `time`
/// (seconds since the epoch), against the trusted signers — what [`verify_commit`] does for a
/// commit's payload.
pub fn verify_ssh_signature(
    message: &[u8],
    armored: &[u8],
    signers: &AllowedSigners,
    time: i64,
) -> Result<Signer, VerifyError> {
    let sig = SshSig::from_pem(armored)
        .map_err(|e| VerifyError::Malformed(format!("the SSH signature does not parse ({e})")))?;
    if sig.namespace() != GIT_NAMESPACE {
        return Err(VerifyError::WrongNamespace);
    }
    let key_data = sig.public_key();
    check_key_supported(key_data).map_err(ssh_unsupported)?;
    let fingerprint = key_data.fingerprint(HashAlg::Sha256).to_string();
    if let Algorithm::Rsa { hash: None } = sig.signature().algorithm() {
        return Err(ssh_unsupported(
            "ssh-rsa signatures (RSA with SHA-1)".into(),
        ));
    }
    let key = PublicKey::from(key_data.clone());

    let matching: Vec<&Entry> = signers
        .entries
        .iter()
        .filter(|e| &e.key == key_data)
        .collect();
    if matching.is_empty() {
        return Err(VerifyError::UnknownKey { fingerprint });
    }

    key.verify(GIT_NAMESPACE, message, &sig)
        .map_err(|_| VerifyError::BadSignature)?;

    let mut first_refusal = None;
    for entry in matching {
        match entry.allows(GIT_NAMESPACE, time, &signers.origin, &fingerprint) {
            Ok(()) => {
                return Ok(Signer {
                    principal: entry.principals.clone(),
                    fingerprint,
                });
            }
            Err(e) => {
                first_refusal.get_or_insert(e);
            }
        }
    }
    Err(first_refusal.unwrap_or(VerifyError::UnknownKey { fingerprint }))
}

fn malformed(what: &str) -> VerifyError {
    VerifyError::Malformed(what.to_string())
}

/// An SSH key type or algorithm that is not supported, with what to use instead.
fn ssh_unsupported(what: String) -> VerifyError {
    VerifyError::UnsupportedAlgorithm(format!("{what}; {SSH_ADVICE}"))
}

/// Whether signatures by this key type can be verified; the error names the type.
fn check_key_supported(key: &KeyData) -> Result<(), String> {
    let algorithm = key.algorithm();
    let supported = match &algorithm {
        Algorithm::Ed25519 | Algorithm::SkEd25519 | Algorithm::SkEcdsaSha2NistP256 => true,
        Algorithm::Ecdsa { curve } => *curve == EcdsaCurve::NistP256,
        Algorithm::Rsa { .. } => key
            .rsa()
            .and_then(|rsa| rsa.n.as_positive_bytes())
            .is_some_and(|n| (RSA_MIN_BYTES..=RSA_MAX_BYTES).contains(&n.len())),
        _ => false,
    };
    if supported {
        return Ok(());
    }
    let name = printable(algorithm.as_str().as_bytes());
    Err(match algorithm {
        Algorithm::Rsa { .. } => "RSA keys must have 2048 to 4096 bits".to_string(),
        _ if name.ends_with(CERT_SUFFIX) => format!("{name} (SSH certificates are not supported)"),
        _ => format!("{name} keys"),
    })
}

/// A name from input, shown only when it is short printable ASCII.
fn printable(name: &[u8]) -> String {
    if !name.is_empty()
        && name.len() <= 64
        && name.iter().all(|b| b.is_ascii_graphic())
        && let Ok(s) = std::str::from_utf8(name)
    {
        return s.to_string();
    }
    "(unrecognised)".to_string()
}

/// Collects an armored OpenPGP block from its BEGIN line (`first`, trimmed) to its END line, the
/// lines trimmed and joined with `\n`; `lines` is left after the END line.
fn pgp_block<'a>(
    first: &str,
    lines: &mut impl Iterator<Item = (usize, &'a str)>,
) -> Result<String, String> {
    if first == PGP_PRIVATE_KEY_BEGIN {
        return Err(
            "this is an OpenPGP private key block; give the public key instead \
             (`gpg --armor --export <key>`) and keep the private key out of the signers"
                .into(),
        );
    }
    if first != PGP_KEY_BEGIN {
        return Err(format!(
            "only OpenPGP public key blocks ({PGP_KEY_BEGIN}) are accepted here"
        ));
    }
    let mut block = format!("{first}\n");
    for (_, line) in lines {
        let line = line.trim();
        if line.starts_with("-----BEGIN ") {
            break;
        }
        block.push_str(line);
        block.push('\n');
        if line == PGP_KEY_END {
            return Ok(block);
        }
    }
    Err(format!(
        "the OpenPGP public key block has no {PGP_KEY_END} line (is it truncated?)"
    ))
}

/// Parses one armored public key block (one or more keys).
fn parse_pgp_block(block: &str) -> Result<Vec<PgpKey>, String> {
    // The library's errors may quote the input, so they are not repeated.
    let unreadable = |_| {
        "the OpenPGP public key block could not be read (bad armor, checksum or key packets); \
         export it again with `gpg --armor --export <key>`"
            .to_string()
    };
    let (keys, _headers) = SignedPublicKey::from_string_many(block).map_err(unreadable)?;
    let mut parsed = Vec::new();
    for key in keys {
        parsed.push(PgpKey::new(key.map_err(unreadable)?)?);
    }
    if parsed.is_empty() {
        return Err("the OpenPGP public key block holds no public key".into());
    }
    Ok(parsed)
}

impl PgpKey {
    /// Checks the key's self-signatures and picks its primary user ID: among the user IDs with a
    /// valid self-certification that no later self-revocation withdraws, the one whose newest
    /// self-certification has the primary flag (the newest such), else the first.
    fn new(key: SignedPublicKey) -> Result<PgpKey, String> {
        let primary = &key.primary_key;
        let fingerprint = format!("{:X}", primary.fingerprint());
        let mut users = Vec::new();
        for user in &key.details.users {
            let valid = |sig: &&Signature| {
                sig.verify_certification(primary, Tag::UserId, &user.id)
                    .is_ok()
            };
            let certification = newest(
                user.signatures
                    .iter()
                    .filter(|sig| sig.typ() != Some(SignatureType::CertRevocation))
                    .filter(valid),
            );
            let Some(certification) = certification else {
                continue;
            };
            let revoked = user
                .signatures
                .iter()
                .filter(|sig| sig.typ() == Some(SignatureType::CertRevocation))
                .filter(valid)
                .any(|sig| sig.created() >= certification.created());
            if !revoked {
                users.push((user, certification));
            }
        }
        let chosen = users
            .iter()
            .filter(|(_, sig)| sig.is_primary())
            .max_by_key(|(_, sig)| sig.created())
            .or_else(|| users.first());
        let Some((user, certification)) = chosen else {
            return Err(format!(
                "the OpenPGP key {fingerprint} has no user ID with a valid self-signature"
            ));
        };
        let direct =
            key.details.direct_signatures.iter().filter(|sig| {
                sig.typ() == Some(SignatureType::Key) && sig.verify_key(primary).is_ok()
            });
        let self_signature = newest(direct.chain([*certification]))
            .unwrap_or(certification)
            .clone();
        let revocations = key
            .details
            .revocation_signatures
            .iter()
            .filter(|sig| {
                sig.typ() == Some(SignatureType::KeyRevocation) && sig.verify_key(primary).is_ok()
            })
            .cloned()
            .collect();
        Ok(PgpKey {
            principal: String::from_utf8_lossy(user.id.id()).into_owned(),
            fingerprint,
            self_signature,
            revocations,
            key,
        })
    }
}

/// The signature with the latest creation time (the last of equals).
fn newest<'a>(signatures: impl Iterator<Item = &'a Signature>) -> Option<&'a Signature> {
    signatures.max_by_key(|sig| sig.created())
}

/// The key of a trusted OpenPGP certificate that made a signature.
#[derive(Clone, Copy)]
enum PgpSigner<'a> {
    Primary,
    Subkey(&'a SignedPublicSubKey),
}

/// Verifies an armored detached OpenPGP signature over `message` against the trusted OpenPGP
/// keys.
/// Verifies an armored OpenPGP detached signature over `message` against the trusted keys —
/// what [`verify_commit`] does for a commit's payload.
pub fn verify_pgp_signature(
    message: &[u8],
    armored: &[u8],
    signers: &AllowedSigners,
) -> Result<Signer, VerifyError> {
    if signers.pgp_keys.is_empty() {
        return Err(VerifyError::NoPgpKeys);
    }
    let sig = parse_pgp_signature(armored)?;
    let config = sig
        .config()
        .ok_or_else(|| malformed("the OpenPGP signature has an unsupported version"))?;
    if !matches!(config.typ, SignatureType::Binary | SignatureType::Text) {
        return Err(malformed(
            "the OpenPGP signature is not a signature over data (binary or text)",
        ));
    }
    let created = sig
        .created()
        .ok_or_else(|| malformed("the OpenPGP signature has no creation time"))?;
    match config.hash_alg {
        HashAlgorithm::Md5 | HashAlgorithm::Sha1 | HashAlgorithm::Ripemd160 => {
            return Err(VerifyError::UnsupportedAlgorithm(format!(
                "OpenPGP signatures with the {} hash; sign with SHA-256 or stronger (gpg \
                 --personal-digest-preferences SHA512)",
                config.hash_alg
            )));
        }
        other if other.new_hasher().is_err() => {
            return Err(VerifyError::UnsupportedAlgorithm(format!(
                "OpenPGP signatures with the {other} hash; sign with SHA-256 or stronger"
            )));
        }
        _ => {}
    }

    let fingerprints = sig.issuer_fingerprint();
    let key_ids = sig.issuer_key_id();
    let names = |key: &dyn pgp::types::KeyDetails| {
        if !fingerprints.is_empty() {
            fingerprints.iter().any(|fp| **fp == key.fingerprint())
        } else if !key_ids.is_empty() {
            key_ids.iter().any(|id| **id == key.legacy_key_id())
        } else {
            true
        }
    };
    let mut candidates = Vec::new();
    for trusted in &signers.pgp_keys {
        if names(&trusted.key.primary_key) {
            candidates.push((trusted, PgpSigner::Primary));
        }
        for subkey in &trusted.key.public_subkeys {
            if names(&subkey.key) {
                candidates.push((trusted, PgpSigner::Subkey(subkey)));
            }
        }
    }
    if candidates.is_empty() {
        let fingerprint = match (fingerprints.first(), key_ids.first()) {
            (Some(fp), _) => format!("{fp:X}"),
            (None, Some(id)) => format!("key ID {}", hex::encode_upper(id)),
            (None, None) => "an unnamed OpenPGP key".to_string(),
        };
        return Err(VerifyError::UnknownKey { fingerprint });
    }

    let mut first_refusal = None;
    for (trusted, signer) in candidates {
        let verified = match signer {
            PgpSigner::Primary => sig.verify(&trusted.key.primary_key, message),
            PgpSigner::Subkey(subkey) => sig.verify(&subkey.key, message),
        };
        if verified.is_err() {
            continue;
        }
        let params = match signer {
            PgpSigner::Primary => trusted.key.primary_key.public_params(),
            PgpSigner::Subkey(subkey) => subkey.key.public_params(),
        };
        if let Some(bits) = pgp_key_bits(params)
            && bits < PGP_MIN_BITS
        {
            return Err(VerifyError::UnsupportedAlgorithm(format!(
                "OpenPGP {bits}-bit RSA/DSA keys; sign with a key of {PGP_MIN_BITS} bits or more, \
                 or an ed25519 key"
            )));
        }
        match pgp_key_valid(trusted, signer, created) {
            Ok(()) => {
                return Ok(Signer {
                    principal: trusted.principal.clone(),
                    fingerprint: trusted.fingerprint.clone(),
                });
            }
            Err(detail) => {
                first_refusal.get_or_insert(VerifyError::KeyNotValid {
                    fingerprint: trusted.fingerprint.clone(),
                    detail,
                });
            }
        }
    }
    Err(first_refusal.unwrap_or(VerifyError::BadSignature))
}

/// The one signature packet of an armored `-----BEGIN PGP SIGNATURE-----` block.
fn parse_pgp_signature(armored: &[u8]) -> Result<Signature, VerifyError> {
    let unreadable = |_| malformed("the OpenPGP signature could not be read");
    let text = std::str::from_utf8(armored)
        .map_err(|_| malformed("the OpenPGP signature is not ASCII armor"))?;
    let (mut signatures, _headers) =
        DetachedSignature::from_string_many(text).map_err(unreadable)?;
    let first = signatures
        .next()
        .ok_or_else(|| malformed("the OpenPGP signature block holds no signature"))?
        .map_err(unreadable)?;
    if signatures.next().is_some() {
        return Err(malformed(
            "the OpenPGP signature block holds more than one signature",
        ));
    }
    Ok(first.signature)
}

/// The size in bits of an RSA modulus or a DSA prime (the first MPI of the public parameters);
/// `None` for other algorithms.
fn pgp_key_bits(params: &PublicParams) -> Option<u16> {
    if !matches!(params, PublicParams::RSA(_) | PublicParams::DSA(_)) {
        return None;
    }
    let mut encoded = Vec::new();
    params.to_writer(&mut encoded).ok()?;
    Some(u16::from_be_bytes([*encoded.first()?, *encoded.get(1)?]))
}

/// Whether `signer` of `trusted` could sign at `time`: the certificate not revoked and not expired
/// (by its newest self-signature), created before `time`; the primary key, when it signed, not
/// restricted by key flags to other uses; a subkey bound by a valid binding signature with the
/// signing flag and a valid back-signature, not revoked and not expired. The error says why not.
fn pgp_key_valid(trusted: &PgpKey, signer: PgpSigner<'_>, time: Timestamp) -> Result<(), String> {
    let primary = &trusted.key.primary_key;
    if trusted
        .revocations
        .iter()
        .any(|rev| revocation_applies(rev, time))
    {
        return Err("the OpenPGP key has been revoked".into());
    }
    check_lifetime(
        "the OpenPGP key",
        primary.created_at(),
        trusted.self_signature.key_expiration_time(),
        time,
    )?;
    let subkey = match signer {
        PgpSigner::Primary => {
            if has_key_flags(&trusted.self_signature) && !trusted.self_signature.key_flags().sign()
            {
                return Err("the OpenPGP primary key is not marked for signing (key flags)".into());
            }
            return Ok(());
        }
        PgpSigner::Subkey(subkey) => subkey,
    };
    let what = format!("the OpenPGP subkey {:X}", subkey.key.fingerprint());
    let by_primary = |typ: SignatureType| {
        move |sig: &&Signature| {
            sig.typ() == Some(typ) && sig.verify_subkey_binding(primary, &subkey.key).is_ok()
        }
    };
    if subkey
        .signatures
        .iter()
        .filter(by_primary(SignatureType::SubkeyRevocation))
        .any(|rev| revocation_applies(rev, time))
    {
        return Err(format!("{what} has been revoked"));
    }
    let binding = newest(
        subkey
            .signatures
            .iter()
            .filter(by_primary(SignatureType::SubkeyBinding)),
    )
    .ok_or_else(|| format!("{what} has no valid binding signature from the primary key"))?;
    if !binding.key_flags().sign() {
        return Err(format!("{what} is not marked for signing (key flags)"));
    }
    let back_signed = binding.embedded_signature().is_some_and(|back| {
        back.verify_primary_key_binding(&subkey.key, primary)
            .is_ok()
    });
    if !back_signed {
        return Err(format!(
            "{what} has no valid primary key binding (back) signature"
        ));
    }
    check_lifetime(
        &what,
        subkey.key.created_at(),
        binding.key_expiration_time(),
        time,
    )
}

/// Whether a (valid) revocation signature revokes at `time`: a revocation saying the key was
/// superseded or retired applies from its creation on, any other (compromised, no reason) always.
fn revocation_applies(revocation: &Signature, time: Timestamp) -> bool {
    let soft = matches!(
        revocation.revocation_reason_code(),
        Some(RevocationCode::KeySuperseded | RevocationCode::KeyRetired)
    );
    !soft || revocation.created().is_none_or(|created| created <= time)
}

/// Checks that a key created at `created`, expiring `expiration` after that (none or zero: never),
/// was usable at `time`.
fn check_lifetime(
    what: &str,
    created: Timestamp,
    expiration: Option<pgp::types::Duration>,
    time: Timestamp,
) -> Result<(), String> {
    if time < created {
        return Err(format!(
            "{what} was created ({}) after the signature was made ({})",
            show_time(created.as_secs().into()),
            show_time(time.as_secs().into())
        ));
    }
    if let Some(expiration) = expiration.filter(|d| d.as_secs() > 0) {
        let expiry = u64::from(created.as_secs()) + u64::from(expiration.as_secs());
        if u64::from(time.as_secs()) >= expiry {
            return Err(format!(
                "{what} expired ({}) before the signature was made ({})",
                show_time(expiry),
                show_time(time.as_secs().into())
            ));
        }
    }
    Ok(())
}

/// Whether a signature's hashed area has a key flags subpacket.
fn has_key_flags(sig: &Signature) -> bool {
    sig.config().is_some_and(|config| {
        config
            .hashed_subpackets()
            .any(|p| matches!(p.data, SubpacketData::KeyFlags(_)))
    })
}

/// Seconds since the epoch as an RFC 3339 UTC time.
fn show_time(seconds: u64) -> String {
    i64::try_from(seconds)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map_or_else(
            || format!("{seconds} seconds after 1970"),
            |t| t.to_string(),
        )
}

impl Entry {
    /// Whether this entry allows a signature in `namespace` made at `time`.
    fn allows(
        &self,
        namespace: &str,
        time: i64,
        origin: &str,
        fingerprint: &str,
    ) -> Result<(), VerifyError> {
        if let Some(patterns) = &self.namespaces
            && !match_pattern_list(namespace, patterns)
        {
            return Err(VerifyError::NamespaceNotAllowed {
                fingerprint: fingerprint.to_string(),
            });
        }
        let not_valid = |bound: &str| VerifyError::KeyNotValid {
            fingerprint: fingerprint.to_string(),
            detail: format!(
                "{origin}, line {}: its {bound} bound excludes the commit's committer time",
                self.line
            ),
        };
        if self.valid_after.is_some_and(|after| time < after) {
            return Err(not_valid("valid-after"));
        }
        if self.valid_before.is_some_and(|before| time > before) {
            return Err(not_valid("valid-before"));
        }
        Ok(())
    }
}

/// Parses one non-blank, non-comment line (already trimmed).
fn parse_line(line: &str, number: usize) -> Result<Entry, String> {
    let (principals, rest) = if let Some(quoted) = line.strip_prefix('"') {
        let close = quoted
            .find('"')
            .ok_or("the quoted principals have no closing quote")?;
        let (inside, after) = quoted.split_at(close);
        let after = after.get(1..).unwrap_or_default();
        if !after.is_empty() && !after.starts_with([' ', '\t']) {
            return Err("the quoted principals must be followed by a space".into());
        }
        (inside, after)
    } else {
        split_token(line)
    };
    if principals.is_empty() {
        return Err("the principals field is empty".into());
    }
    let after_principals = rest.trim_start();
    let (token, after_token) = split_token(after_principals);
    if token.is_empty() {
        return Err("missing key (expected `principals [options] keytype base64`)".into());
    }
    let (options, key_type, rest) = if is_key_type(token) || token.ends_with(CERT_SUFFIX) {
        (None, token, after_token)
    } else {
        // Options may hold quoted blanks, so the field is re-read with quote handling.
        let (options, rest) = split_options(after_principals);
        let (key_type, rest) = split_token(rest.trim_start());
        (Some(options), key_type, rest)
    };
    if key_type.is_empty() {
        return Err("missing key after the options".into());
    }
    if key_type.ends_with(CERT_SUFFIX) {
        return Err(
            "certificate key types are not supported; list the signer's plain public key".into(),
        );
    }
    if !is_key_type(key_type) {
        return Err(format!(
            "unknown option or key type (key types: {})",
            KEY_TYPES.join(", ")
        ));
    }
    let (data, _comment) = split_token(rest.trim_start());
    if data.is_empty() {
        return Err("missing base64 key data after the key type".into());
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| "the key data is not valid base64".to_string())?;
    let key = PublicKey::from_bytes(&blob)
        .map_err(|_| "the key data could not be decoded as an SSH public key".to_string())?;
    if key.algorithm().as_str() != key_type {
        return Err("the key data is of another type than the line names".into());
    }
    if key.key_data().is_rsa() {
        check_key_supported(key.key_data())?;
    }
    let mut entry = Entry {
        line: number,
        principals: principals.to_string(),
        key: key.key_data().clone(),
        namespaces: None,
        valid_after: None,
        valid_before: None,
    };
    if let Some(options) = options {
        parse_options(options, &mut entry)?;
    }
    Ok(entry)
}

fn is_key_type(token: &str) -> bool {
    KEY_TYPES.contains(&token)
}

/// The text up to the first space or tab, and the remainder (starting at that blank).
fn split_token(s: &str) -> (&str, &str) {
    let end = s.find([' ', '\t']).unwrap_or(s.len());
    s.split_at(end)
}

/// The options field (up to the first blank outside double quotes) and the remainder.
fn split_options(s: &str) -> (&str, &str) {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            '\\' if in_quotes && !escaped => {
                escaped = true;
                continue;
            }
            '"' if !escaped => in_quotes = !in_quotes,
            ' ' | '\t' if !in_quotes => return s.split_at(i),
            _ => {}
        }
        escaped = false;
    }
    (s, "")
}

/// Parses `opt[,opt…]` as OpenSSH's `sshsigopt_parse` does.
fn parse_options(options: &str, entry: &mut Entry) -> Result<(), String> {
    let mut rest = options;
    loop {
        let name_end = rest.find(['=', ',']).unwrap_or(rest.len());
        let (name, after) = rest.split_at(name_end);
        match name {
            "cert-authority" if !after.starts_with('=') => {
                return Err(
                    "cert-authority entries (trusting SSH certificates) are not supported; list \
                     each signer's own public key"
                        .into(),
                );
            }
            "namespaces" | "valid-after" | "valid-before" => {
                let value_text = after
                    .strip_prefix('=')
                    .ok_or_else(|| format!("the {name} option needs a value"))?;
                let (value, remaining) = option_value(value_text)
                    .ok_or_else(|| format!("the {name} option's value has no closing quote"))?;
                rest = remaining;
                match name {
                    "namespaces" => {
                        if entry.namespaces.replace(value).is_some() {
                            return Err("the namespaces option is given twice".into());
                        }
                    }
                    _ => {
                        let time = parse_time(&value).ok_or_else(|| {
                            format!("the {name} time is not YYYYMMDD[HHMM[SS]][Z]")
                        })?;
                        let slot = if name == "valid-after" {
                            &mut entry.valid_after
                        } else {
                            &mut entry.valid_before
                        };
                        if slot.replace(time).is_some() {
                            return Err(format!("the {name} option is given twice"));
                        }
                    }
                }
            }
            _ => {
                return Err(
                    "unknown option or key type (options: namespaces=\"…\", valid-after=\"…\", \
                     valid-before=\"…\")"
                        .into(),
                );
            }
        }
        if rest.is_empty() {
            break;
        }
        rest = rest
            .strip_prefix(',')
            .ok_or("options must be separated by commas")?;
        if rest.is_empty() {
            return Err("the options end with a comma".into());
        }
    }
    if let (Some(after), Some(before)) = (entry.valid_after, entry.valid_before)
        && before <= after
    {
        return Err("valid-before is not later than valid-after".into());
    }
    Ok(())
}

/// An option value: `"…"` (with `\"` for a quote) or, leniently, unquoted up to the next comma.
/// Returns the value and the text after it.
fn option_value(s: &str) -> Option<(String, &str)> {
    let Some(quoted) = s.strip_prefix('"') else {
        let end = s.find(',').unwrap_or(s.len());
        let (value, rest) = s.split_at(end);
        return Some((value.to_string(), rest));
    };
    let mut value = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, quoted.get(i + 1..).unwrap_or_default())),
            '\\' if quoted.get(i + 1..).is_some_and(|r| r.starts_with('"')) => {
                value.push('"');
                chars.next();
            }
            _ => value.push(c),
        }
    }
    None
}

/// `YYYYMMDD`, `YYYYMMDDHHMM` or `YYYYMMDDHHMMSS`, optionally followed by `Z` or `UTC`, as seconds
/// since the epoch (UTC).
fn parse_time(value: &str) -> Option<i64> {
    let digits = value
        .strip_suffix('Z')
        .or_else(|| value.strip_suffix("UTC"))
        .unwrap_or(value);
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return None;
    }
    let field = |range: std::ops::Range<usize>| -> Option<i64> {
        digits.get(range).map_or(Some(0), |s| s.parse().ok())
    };
    let year = i16::try_from(field(0..4)?).ok()?;
    let month = i8::try_from(field(4..6)?).ok()?;
    let day = i8::try_from(field(6..8)?).ok()?;
    let hour = i8::try_from(field(8..10)?).ok()?;
    let minute = i8::try_from(field(10..12)?).ok()?;
    let second = i8::try_from(field(12..14)?).ok()?;
    let datetime = jiff::civil::DateTime::new(year, month, day, hour, minute, second, 0).ok()?;
    let zoned = datetime.to_zoned(jiff::tz::TimeZone::UTC).ok()?;
    Some(zoned.timestamp().as_second())
}

/// OpenSSH's `match_pattern_list`: comma-separated `*`/`?` patterns, `!` negating; a matching
/// negated pattern refuses, otherwise any matching pattern accepts.
fn match_pattern_list(value: &str, list: &str) -> bool {
    let mut matched = false;
    for pattern in list.split(',') {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        if wildcard_match(value.as_bytes(), pattern.as_bytes()) {
            if negated {
                return false;
            }
            matched = true;
        }
    }
    matched
}

/// Glob match with `*` (any run) and `?` (any one byte).
fn wildcard_match(value: &[u8], pattern: &[u8]) -> bool {
    let (mut v, mut p) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while v < value.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, v));
                p += 1;
            }
            Some(&c) if c == b'?' || Some(&c) == value.get(v) => {
                p += 1;
                v += 1;
            }
            _ => match star {
                Some((sp, sv)) => {
                    p = sp + 1;
                    v = sv + 1;
                    star = Some((sp, sv + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .unwrap_or_default()
        .iter()
        .all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "test allowed_signers";

    fn signers(text: &str) -> AllowedSigners {
        AllowedSigners::parse(text, ORIGIN).expect("allowed signers parse")
    }

    #[test]
    fn x509_signatures_and_pgp_messages_are_not_supported() {
        for (armor, named) in [
            ("SIGNED MESSAGE", "X.509"),
            ("PGP MESSAGE", "OpenPGP message"),
        ] {
            let raw = format!(
                "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
                 author A <a@example.com> 1700000000 +0000\n\
                 committer A <a@example.com> 1700000000 +0000\n\
                 gpgsig -----BEGIN {armor}-----\n \n MIAGCSqGSIb3\n -----END {armor}-----\n\
                 \n\
                 message\n"
            );
            let err = verify_commit(raw.as_bytes(), &signers("")).expect_err(armor);
            assert!(
                matches!(&err, VerifyError::UnsupportedFormat(what) if what.contains(named)),
                "{err:?}"
            );
        }
    }

    #[test]
    fn payload_split_follows_git() {
        let raw = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
            author A <a@example.com> 1700000000 +0000\n\
            committer A <a@example.com> 1700000001 +0000\n\
            gpgsig -----BEGIN SSH SIGNATURE-----\n U1NI\n -----END SSH SIGNATURE-----\n\
            gpgsig-sha256 other\n continued\n\
            extra value\n more\n\
            \n\
            message\ngpgsig not a header\n";
        let (payload, signature) = split_signed_commit(raw).expect("split");
        assert_eq!(
            signature.as_deref(),
            Some(&b"-----BEGIN SSH SIGNATURE-----\nU1NI\n-----END SSH SIGNATURE-----\n"[..])
        );
        assert_eq!(
            payload,
            b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
            author A <a@example.com> 1700000000 +0000\n\
            committer A <a@example.com> 1700000001 +0000\n\
            extra value\n more\n\
            \n\
            message\ngpgsig not a header\n"
        );
        assert_eq!(identity_time(&payload, "committer "), Some(1_700_000_001));
        assert!(matches!(
            split_signed_commit(b"tree 00\nfoo\0bar\n\nmsg"),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn pattern_lists_match_like_openssh() {
        assert!(match_pattern_list("git", "git"));
        assert!(match_pattern_list("git", "file,git"));
        assert!(match_pattern_list("git", "g?t"));
        assert!(match_pattern_list("git", "*"));
        assert!(!match_pattern_list("git", "*,!git"));
        assert!(!match_pattern_list("git", "file"));
        assert!(!match_pattern_list("git", "gi"));
        assert!(!match_pattern_list("git", ""));
    }

    #[test]
    fn allowed_signers_accepts_quoted_principals_options_and_comments() {
        // A public key made by `ssh-keygen -t ed25519`.
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOqxhLTFlDaOF0PTt6e98VgHjyE2cEUyxcmLrD+GmXPE";
        let text = format!(
            "  # indented comment\r\n\
             \"alice example\" {key} trailing comment\r\n\
             carol namespaces=\"git,file\",valid-after=\"20200101UTC\" {key}\n\
             dave namespaces=git {key}\n"
        );
        let list = signers(&text);
        assert_eq!(list.len(), 3);
        assert_eq!(list.origin(), ORIGIN);
        assert_eq!(list.entries[0].principals, "alice example");
        assert_eq!(list.entries[1].namespaces.as_deref(), Some("git,file"));
        assert_eq!(list.entries[1].valid_after, Some(1_577_836_800));
        assert_eq!(list.entries[2].namespaces.as_deref(), Some("git"));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// An ed25519 key made by `gpg --quick-gen-key 'Property <property@example.com>' ed25519`.
    const PGP_KEY: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----

mDMEZZIAgBYJKwYBBAHaRw8BAQdAdLsDNYEMh2wzeK3wfTem2iNiI/fewk0ZtXJW
rQRIV6u0H1Byb3BlcnR5IDxwcm9wZXJ0eUBleGFtcGxlLmNvbT6IkAQTFggAOBYh
BLwUGiU8IgxsR++iJ16hG6ItDiwSBQJlkgCAAhsDBQsJCAcCBhUKCQgLAgQWAgMB
Ah4BAheAAAoJEF6hG6ItDiwSyJsA/1aeOOSZ4DDZXArexRTfwIGqMZwbeE1eqt4T
QH2BTXDZAQCIpYd7eQY+QZNqVhdpjOBaH2a/pU0TLU9ncGkBPMfFDg==
=6pFE
-----END PGP PUBLIC KEY BLOCK-----
";
    /// The body of a detached signature by [`PGP_KEY`] (over other data).
    const PGP_SIGNATURE: &str = "iHUEABYIAB0WIQS8FBolPCIMbEfvoideoRuiLQ4sEgUCawkWnAAKCRBeoRuiLQ4s\
        EmQHAQCQYPXGSlc5Niw5MyDx/vzqFQ0p9bV4SkP9Q89P4UQL5wEAqHQ4RSgblV+j\
        Kfudb5ysAVsSJeDmC7Hh041YFN3HQg4=";

    /// `bytes` in ASCII armor of the given kind (`PUBLIC KEY BLOCK`, `SIGNATURE`), no checksum.
    fn armor(kind: &str, bytes: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let mut out = format!("-----BEGIN PGP {kind}-----\n\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            out.push('\n');
        }
        out.push_str(&format!("-----END PGP {kind}-----\n"));
        out
    }

    /// A commit whose gpgsig header holds `signature`.
    fn commit_with(signature: &str) -> String {
        let mut commit = String::from(
            "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor A <a@x> 1 +0000\ncommitter A <a@x> 1 +0000\ngpgsig",
        );
        for line in signature.lines() {
            commit.push(' ');
            commit.push_str(line);
            commit.push('\n');
        }
        commit.push_str("\nmessage\n");
        commit
    }

    /// `bytes` with each `(index, mask)` flip applied (index modulo the length, mask made nonzero).
    fn flipped(bytes: &[u8], flips: &[(usize, u8)]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        let len = out.len();
        for &(index, mask) in flips {
            if let Some(byte) = out.get_mut(index % len.max(1)) {
                *byte ^= mask | 1;
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever a repository or a Secret holds, verification answers with an error, never a
        /// panic: random allowed_signers text, random commit bytes, and commits whose signature
        /// block is well-framed but holds random (base64) bytes.
        #[test]
        fn arbitrary_input_is_an_error_not_a_panic(
            text in "[ -~\n]{0,300}",
            raw in proptest::collection::vec(any::<u8>(), 0..600),
            blob in proptest::collection::vec(any::<u8>(), 0..400),
            prefix in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let _ = AllowedSigners::parse(&text, "property");
            let listed = "p ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKJ0b2zvTqnsJfvcWv8tbbJN4aWvQ2NrUCGd3hsQ9G0X\n";
            let signers = AllowedSigners::parse(listed, "property").expect("a valid line");
            let _ = verify_commit(&raw, &signers);
            let mut sig = b"SSHSIG".to_vec();
            sig.extend_from_slice(&prefix);
            sig.extend_from_slice(&blob);
            let b64 = base64::engine::general_purpose::STANDARD.encode(&sig);
            let mut commit = String::from(
                "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor A <a@x> 1 +0000\ncommitter A <a@x> 1 +0000\ngpgsig -----BEGIN SSH SIGNATURE-----\n",
            );
            for chunk in b64.as_bytes().chunks(70) {
                commit.push(' ');
                commit.push_str(std::str::from_utf8(chunk).unwrap_or_default());
                commit.push('\n');
            }
            commit.push_str(" -----END SSH SIGNATURE-----\n\nmessage\n");
            prop_assert!(verify_commit(commit.as_bytes(), &signers).is_err());
        }

        /// The same for OpenPGP: random or bit-flipped key blocks in the signers text, random or
        /// bit-flipped signatures (a real signature, over other data) with a trusted key.
        #[test]
        fn arbitrary_pgp_input_is_an_error_not_a_panic(
            blob in proptest::collection::vec(any::<u8>(), 0..400),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            text in "[ -~\n]{0,100}",
        ) {
            let _ = AllowedSigners::parse(&armor("PUBLIC KEY BLOCK", &blob), "property");
            let _ = AllowedSigners::parse(&format!("{PGP_KEY_BEGIN}\n{text}"), "property");
            let key_body: String = PGP_KEY
                .lines()
                .skip(2)
                .take_while(|line| !line.starts_with('='))
                .collect();
            let key_bytes = base64::engine::general_purpose::STANDARD
                .decode(key_body)
                .expect("the constant key");
            let mutated_key = armor("PUBLIC KEY BLOCK", &flipped(&key_bytes, &flips));
            let _ = AllowedSigners::parse(&mutated_key, "property");

            let signers = AllowedSigners::parse(PGP_KEY, "property").expect("a valid key");
            prop_assert_eq!(signers.len(), 1);
            let sig_bytes = base64::engine::general_purpose::STANDARD
                .decode(PGP_SIGNATURE)
                .expect("the constant signature");
            for signature in [blob, flipped(&sig_bytes, &flips)] {
                let commit = commit_with(&armor("SIGNATURE", &signature));
                prop_assert!(verify_commit(commit.as_bytes(), &signers).is_err());
            }
            // Intact, the signature is read and checked, but made over other data.
            let intact = commit_with(&armor("SIGNATURE", &sig_bytes));
            prop_assert_eq!(
                verify_commit(intact.as_bytes(), &signers),
                Err(VerifyError::BadSignature)
            );
            if let Ok(mutated) = AllowedSigners::parse(&mutated_key, "property") {
                prop_assert!(verify_commit(intact.as_bytes(), &mutated).is_err());
            }
        }
    }
}
