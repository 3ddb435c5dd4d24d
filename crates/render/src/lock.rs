//! `lockstep.lock`: the digest of every repository and OCI chart a project names, written by
//! `lockstep charts update` and read on every render. A chart archive whose SHA-256 is not the
//! locked one is refused, so what a review saw is what is rendered.
//!
//! ```yaml
//! # lockstep.lock (written by `lockstep charts update`): review changes to digests.
//! charts:
//!   dns:
//!     source: https://charts.example.org
//!     chart: external-dns
//!     version: 1.22.0
//!     digest: sha256:9f1c…
//!     url: https://charts.example.org/external-dns-1.22.0.tgz
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::diagnostic::Diagnostic;
use super::project::{self, Chart, Source};

/// The lock file's name at the root of a project.
pub const LOCK_FILE: &str = "lockstep.lock";

/// The first line of a written lock file.
const HEADER: &str = "# lockstep.lock: the repository and OCI charts of lockstep.yaml, pinned by the SHA-256 of their archives.\n# Written by `lockstep charts update`; review every change of a digest.\n";

/// A parsed `lockstep.lock`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// Locked charts by release name.
    #[serde(default)]
    pub charts: BTreeMap<String, Locked>,
}

/// One locked chart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Locked {
    /// The repository URL, or the OCI reference without tag.
    pub source: String,
    /// The chart's name.
    pub chart: String,
    /// Its version.
    pub version: String,
    /// `sha256:<hex>` of the chart archive (`.tgz`): for OCI, the chart layer's digest.
    pub digest: String,
    /// Where a repository's index said the archive is (absolute); OCI archives are fetched by
    /// digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl Lock {
    /// Parses a lock file's text.
    pub fn parse(text: &str) -> Result<Lock, Diagnostic> {
        if text.trim().is_empty() {
            return Ok(Lock::default());
        }
        let lock: Lock = yaml_serde::from_str(text)
            .map_err(|e| project::yaml_diagnostic(LOCK_FILE, text, &e))
            .map_err(|d| d.with_help("lockstep.lock is written by `lockstep charts update`: run it again rather than editing the file"))?;
        for (release, entry) in &lock.charts {
            if parse_digest(&entry.digest).is_none() {
                return Err(Diagnostic::new(format!(
                    "chart {release}: digest {:?} is not sha256:<64 hex digits>",
                    entry.digest
                ))
                .in_file(LOCK_FILE)
                .with_help("run `lockstep charts update` to write the lock file again"));
            }
        }
        Ok(lock)
    }

    /// The lock file's text.
    pub fn to_yaml(&self) -> String {
        let body = yaml_serde::to_string(self).unwrap_or_default();
        format!("{HEADER}{body}")
    }

    /// The entry locking `chart` of `release`, or what is wrong and what to do.
    pub fn entry(&self, release: &str, chart: &Chart) -> Result<&Locked, String> {
        let Some(entry) = self.charts.get(release) else {
            return Err(format!(
                "{LOCK_FILE} has no digest for {}: run `lockstep charts update {release}` and commit {LOCK_FILE}",
                chart.label()
            ));
        };
        if !entry.locks(chart) {
            return Err(format!(
                "{LOCK_FILE} pins {}/{}@{} for this release, but lockstep.yaml asks for {}: run `lockstep charts update {release}` and review the new digest",
                entry.source,
                entry.chart,
                entry.version,
                chart.label()
            ));
        }
        Ok(entry)
    }
}

impl Locked {
    /// Whether this entry is for exactly `chart` (same source, name and version).
    pub fn locks(&self, chart: &Chart) -> bool {
        match chart.source() {
            Source::Dir(_) => false,
            Source::Repo { url, name, version } => {
                self.source == url && self.chart == name && self.version == version
            }
            Source::Oci { reference, version } => {
                self.source == reference
                    && self.version == version
                    && reference.rsplit('/').next() == Some(self.chart.as_str())
            }
        }
    }
}

/// The 32 bytes of a `sha256:<hex>` digest.
pub fn parse_digest(digest: &str) -> Option<[u8; 32]> {
    let hex = digest.strip_prefix("sha256:")?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).ok()?;
    (hex.bytes().all(|b| !b.is_ascii_uppercase())).then_some(out)
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Chart archives at hand for a render, by digest (fetched and checked by the caller; checked
/// again before use).
#[derive(Clone, Default)]
pub struct Archives(BTreeMap<String, Arc<[u8]>>);

impl Archives {
    /// Adds an archive under its digest.
    pub fn insert(&mut self, digest: String, bytes: Arc<[u8]>) {
        self.0.insert(digest, bytes);
    }

    /// The archive with `digest`, if it is at hand and its bytes have that digest.
    pub fn get(&self, digest: &str) -> Option<&Arc<[u8]>> {
        self.0.get(digest).filter(|b| digest_of(b) == digest)
    }

    /// How many archives there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Archives {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(yaml: &str) -> Chart {
        yaml_serde::from_str(yaml).expect("chart")
    }

    #[test]
    fn a_written_lock_reads_back() {
        let mut lock = Lock::default();
        lock.charts.insert(
            "dns".into(),
            Locked {
                source: "https://charts.example.org".into(),
                chart: "external-dns".into(),
                version: "1.22.0".into(),
                digest: digest_of(b"archive"),
                url: Some("https://charts.example.org/external-dns-1.22.0.tgz".into()),
            },
        );
        let text = lock.to_yaml();
        assert!(text.starts_with("# lockstep.lock"), "{text}");
        assert_eq!(Lock::parse(&text).expect("parses"), lock);
    }

    #[test]
    fn an_entry_must_lock_the_same_source_name_and_version() {
        let mut lock = Lock::default();
        lock.charts.insert(
            "web".into(),
            Locked {
                source: "oci://registry.example.org/charts/web".into(),
                chart: "web".into(),
                version: "2.0.1".into(),
                digest: digest_of(b"x"),
                url: None,
            },
        );
        let same = chart("{chart: oci://registry.example.org/charts/web, version: 2.0.1}");
        assert!(lock.entry("web", &same).is_ok());
        let newer = chart("{chart: oci://registry.example.org/charts/web, version: 2.0.2}");
        let err = lock.entry("web", &newer).expect_err("stale");
        assert!(
            err.contains("pins oci://registry.example.org/charts/web/web@2.0.1")
                && err.contains("lockstep charts update web"),
            "{err}"
        );
        let err = lock.entry("api", &same).expect_err("missing");
        assert!(err.contains("has no digest"), "{err}");
    }

    #[test]
    fn bad_digests_and_tampered_archives_are_refused() {
        let err = Lock::parse(
            "charts:\n  a: {source: https://x, chart: a, version: 1.0.0, digest: md5:00}\n",
        )
        .expect_err("bad digest");
        assert!(err.to_string().contains("sha256:<64 hex digits>"), "{err}");
        let mut archives = Archives::default();
        let digest = digest_of(b"archive");
        archives.insert(digest.clone(), Arc::from(&b"tampered"[..]));
        assert!(archives.get(&digest).is_none());
        archives.insert(digest.clone(), Arc::from(&b"archive"[..]));
        assert!(archives.get(&digest).is_some());
    }
}
