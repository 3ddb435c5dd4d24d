//! Sealed digests: what lets a preview compare secret-bearing objects without any key.
//!
//! Every object that carries decrypted values when applied (a Secret with sealed references, the
//! objects of a whole-file SOPS manifest) is annotated with [`SEALED_DIGEST`]: a SHA-256 over its
//! rendered form with the placeholders still in, and over the *ciphertext* of every value it refers
//! to. The digest is made from what Git holds (never from a plaintext value), so anyone with the
//! repository can recompute it. A keyless preview ([`keyless`]) leaves those objects out of the
//! dry run and compares their digest with the live object's annotation instead: `(sealed,
//! unchanged)`, `(sealed, changed)`, `(sealed, new)`, or — when the live object has no digest —
//! not comparable.

use std::collections::HashMap;

use serde_json::Value as Json;
use sha2::{Digest as _, Sha256};

use crate::decrypt::{ApplyObject, ApplySet, SecretJson, yaml_to_json};
use crate::objects::ObjectId;
use crate::render::{Body, Manifest, Rendered};
use crate::sops::store::{self, Format};
use crate::sops::tree::Document;
use crate::source::Snapshot;

/// The annotation holding an object's sealed digest (`sha256:<hex>`).
pub const SEALED_DIGEST: &str = "lockstep.dev/sealed-digest";

/// An object a keyless preview compares by its sealed digest instead of a dry run.
#[derive(Debug, Clone)]
pub struct SealedObject {
    /// Its identity (namespace defaulted).
    pub id: ObjectId,
    /// `apiVersion`.
    pub api_version: String,
    /// The project file it came from.
    pub source: String,
    /// Its sealed digest.
    pub digest: String,
}

/// The encrypted documents of the SOPS files references point into, parsed once per set.
#[derive(Default)]
pub struct Ciphertexts(HashMap<String, Option<Vec<Document>>>);

impl Ciphertexts {
    /// The text of the encrypted leaf at `path` of `file` (`ENC[…]`, or a value kept in clear).
    fn leaf(&mut self, snapshot: &Snapshot, file: &str, path: &[String]) -> Option<String> {
        let docs = self
            .0
            .entry(file.to_string())
            .or_insert_with(|| {
                let bytes = snapshot.get(file)?;
                let format = Format::from_path(std::path::Path::new(file));
                store::load_encrypted(format, bytes).ok().map(|l| l.docs)
            })
            .as_ref()?;
        let cur = crate::decrypt::lookup(docs, path)?;
        cur.scalar_text().map(|t| t.expose().clone())
    }
}

/// The sealed digest of a manifest, when applying it carries decrypted values.
pub fn digest_of(m: &Manifest, snapshot: &Snapshot, texts: &mut Ciphertexts) -> Option<String> {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    match &m.body {
        Body::Sops { text } => field(text.as_bytes()),
        Body::Object(_) if m.refs.is_empty() => return None,
        Body::Object(v) => {
            field(
                serde_json::to_string(&yaml_to_json(v))
                    .unwrap_or_default()
                    .as_bytes(),
            );
            for r in &m.refs {
                field(r.file.as_bytes());
                field(r.path.join("/").as_bytes());
                field(format!("{:?}", r.transform).as_bytes());
                let leaf = texts.leaf(snapshot, &r.file, &r.path).unwrap_or_default();
                field(leaf.as_bytes());
            }
        }
    }
    Some(format!("sha256:{}", hex::encode(h.finalize())))
}

/// Sets the [`SEALED_DIGEST`] annotation of an object about to be sent.
pub fn annotate(object: &mut SecretJson, digest: &str) {
    let Some(meta) = object
        .expose_mut()
        .get_mut("metadata")
        .and_then(Json::as_object_mut)
    else {
        return;
    };
    let annotations = meta
        .entry("annotations")
        .or_insert_with(|| Json::Object(Default::default()));
    if let Some(a) = annotations.as_object_mut() {
        a.insert(SEALED_DIGEST.into(), Json::String(digest.into()));
    }
}

/// A keyless preview's set: every object without decrypted values as it will be sent, and the
/// secret-bearing ones as sealed digests; `unreadable` lists whole-file SOPS manifests whose
/// identity (kind, name) is encrypted too, which nothing can compare without a key.
pub struct Keyless {
    /// The objects to dry-run, with `sealed` filled in.
    pub set: ApplySet,
    /// SOPS manifests whose identity is encrypted.
    pub unreadable: Vec<String>,
}

/// Builds a keyless preview's set (no identity needed: nothing is decrypted).
pub fn keyless(rendered: &Rendered, snapshot: &Snapshot) -> Keyless {
    let mut texts = Ciphertexts::default();
    let mut objects = Vec::new();
    let mut sealed = Vec::new();
    let mut unreadable = Vec::new();
    for m in &rendered.manifests {
        let digest = digest_of(m, snapshot, &mut texts);
        match (&m.id, &m.body, digest) {
            (Some(id), _, Some(digest)) => sealed.push(SealedObject {
                id: id.clone(),
                api_version: api_version_of(m),
                source: m.source.clone(),
                digest,
            }),
            (None, _, _) => unreadable.push(m.source.clone()),
            (Some(id), Body::Object(v), None) => {
                let json = SecretJson::wrap(yaml_to_json(v));
                let api_version = json.expose()["apiVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                objects.push(ApplyObject {
                    id: id.clone(),
                    api_version,
                    source: m.source.clone(),
                    object: json,
                    has_secrets: false,
                    release: m.release.clone(),
                });
            }
            (Some(_), Body::Sops { .. }, None) => unreadable.push(m.source.clone()),
        }
    }
    Keyless {
        set: ApplySet {
            project: rendered.project.clone(),
            environment: rendered.environment.clone(),
            namespace: rendered.namespace.clone(),
            objects,
            sealed,
            profile: rendered.profile.clone(),
            notes: Vec::new(),
            needs: rendered.needs.clone(),
        },
        unreadable,
    }
}

/// The `apiVersion` of a manifest (a SOPS manifest keeps it in clear).
fn api_version_of(m: &Manifest) -> String {
    match &m.body {
        Body::Object(v) => v
            .get("apiVersion")
            .and_then(yaml_serde::Value::as_str)
            .unwrap_or_default()
            .to_string(),
        Body::Sops { text } => text
            .lines()
            .find_map(|l| l.strip_prefix("apiVersion:"))
            .map(|v| v.trim().trim_matches(['"', '\'']).to_string())
            .unwrap_or_default(),
    }
}
