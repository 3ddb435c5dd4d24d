//! Decrypt: the only stage that produces plaintext. It turns a [`Rendered`] set into an
//! [`ApplySet`] — the objects exactly as they will be sent — in memory.
//!
//! - The environment's secrets file is opened whole from its original bytes (MAC verified) and
//!   every sealed reference inside a Secret is replaced by its value (base64-encoded for `data`).
//!   A Secret's `stringData` is folded into `data`, so what is sent is what the API server stores.
//! - Whole-file SOPS manifests are decrypted (MAC verified) and get the environment's namespace.
//! - Anything still carrying `ENC[…]` or a `<sealed:…>` placeholder is refused, naming the object.
//!
//! Plaintext lives in [`SecretJson`] (wiped on drop, never printed) until the caller sends it.
//! Nothing here logs, prints or stores anything; errors name files, objects and key paths only.

use std::collections::BTreeSet;

use base64::Engine as _;
use serde_json::{Map, Value as Json};
use zeroize::{Zeroize, Zeroizing};

use crate::keys::KeyRing;
use crate::objects::{self, ObjectId, Scopes};
use crate::render::sealed::{SealedRef, Transform};
use crate::render::{Body, Manifest, Rendered};
use crate::sops::store::Format;
use crate::sops::tree::{Item, Value as Tree};
use crate::sops::{self, SopsError};
use crate::source::Snapshot;

/// Why an apply set could not be built. Never carries a secret value.
#[derive(Debug, thiserror::Error)]
pub enum DecryptError {
    /// A SOPS file did not open (no identity, MAC mismatch, damaged value…).
    #[error("{file}: {source}")]
    Sops {
        /// The file.
        file: String,
        /// What went wrong.
        source: SopsError,
    },
    /// A file named by the rendered set is not in the project.
    #[error("{file}: not found in the project")]
    Missing {
        /// The file.
        file: String,
    },
    /// A sealed reference that does not resolve to a usable value.
    #[error("{object} ({source_file}): {at}: {message}")]
    Reference {
        /// The object.
        object: String,
        /// Where it was rendered from.
        source_file: String,
        /// The field.
        at: String,
        /// What is wrong.
        message: String,
    },
    /// A decrypted SOPS manifest that is not a valid object.
    #[error("{file}: {message}")]
    Manifest {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// A chart release whose render with the real values does not match the reviewed, sealed
    /// render (or could not be made); the message names the object and field, never a value.
    #[error("chart {release}: {message}")]
    Chart {
        /// The release.
        release: String,
        /// What differs or failed.
        message: String,
    },
    /// Ciphertext or a placeholder would reach the cluster.
    #[error(
        "{object} ({source_file}): `{at}` still holds {what}; refusing to send it to the cluster"
    )]
    Leftover {
        /// The object.
        object: String,
        /// Where it was rendered from.
        source_file: String,
        /// The field.
        at: String,
        /// `ENC[…] ciphertext` or `a sealed placeholder`.
        what: &'static str,
    },
}

impl DecryptError {
    /// A chart release that could not be rendered again, or rendered differently, at apply.
    fn chart(release: &str, message: String) -> DecryptError {
        DecryptError::Chart {
            release: release.to_string(),
            message,
        }
    }
}

/// What sops users are told to do when no identity opens a file (the CLI's key sources).
pub const LOCAL_KEY_HINT: &str =
    "set SOPS_AGE_KEY_FILE to the key file of one of the recipients above, or pass --identity FILE";

/// Explains why `file` did not open: for "no identity", the file's recipients, the identities tried
/// (public halves only) and where they were looked for (`searched`), then `hint`. The one
/// explanation every edge gives.
pub fn explain_sops(file: &str, err: &SopsError, searched: &[String], hint: &str) -> String {
    let SopsError::NoMatchingIdentity {
        recipients,
        foreign,
        tried,
    } = err
    else {
        return format!("{file}: {err}");
    };
    let mut m = format!("{file}: no identity can decrypt this file's data key\n");
    if recipients.is_empty() {
        m.push_str("  the file has no age or PGP recipients\n");
    } else {
        m.push_str("  the file is encrypted to:\n");
        for r in recipients {
            m.push_str(&format!("    {r}\n"));
        }
    }
    if !foreign.is_empty() {
        m.push_str(&format!(
            "  it also has {} keys, which lockstep cannot use\n",
            foreign.join(", ")
        ));
    }
    if tried.is_empty() {
        m.push_str("  no identities were found\n");
    } else {
        m.push_str("  identities tried:\n");
        for (public, source) in tried {
            m.push_str(&format!("    {public}  (from {source})\n"));
        }
    }
    if !searched.is_empty() {
        m.push_str(&format!("  looked in: {}\n", searched.join(", ")));
    }
    m.push_str(&format!("  fix: {hint}"));
    if recipients.iter().any(|r| r.starts_with("pgp ")) {
        m.push_str(
            "\n  for a pgp key: give its armored secret key (gpg --export-secret-keys -a FPR) as an identity — --identity KEY.asc, or a *.asc entry of the controller's decryption Secret — or, on the command line, import it into GnuPG (gpg --import), which lockstep asks as sops does",
        );
    }
    m
}

/// A JSON object holding plaintext: no `Debug`, no `Clone`, every string wiped on drop.
pub struct SecretJson(Json);

impl SecretJson {
    /// Takes ownership of a JSON value that may hold plaintext (a server response, a copy).
    pub fn wrap(value: Json) -> SecretJson {
        SecretJson(value)
    }

    /// A copy in its own wiping container.
    pub fn duplicate(&self) -> SecretJson {
        SecretJson(self.0.clone())
    }

    /// The object, to serialise into a request body.
    pub fn expose(&self) -> &Json {
        &self.0
    }

    /// Mutable access, for adding labels before sending.
    pub fn expose_mut(&mut self) -> &mut Json {
        &mut self.0
    }
}

fn wipe(v: &mut Json) {
    match v {
        Json::String(s) => s.zeroize(),
        Json::Array(items) => items.iter_mut().for_each(wipe),
        Json::Object(map) => {
            for (_, v) in map.iter_mut() {
                wipe(v);
            }
        }
        _ => {}
    }
}

impl Drop for SecretJson {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// One object ready to send.
pub struct ApplyObject {
    /// Its identity (namespace defaulted).
    pub id: ObjectId,
    /// `apiVersion`.
    pub api_version: String,
    /// The project file it came from.
    pub source: String,
    /// The object, with secrets in place.
    pub object: SecretJson,
    /// Whether it holds decrypted values (a Secret with references, or a SOPS manifest).
    pub has_secrets: bool,
    /// The chart release whose output it is, if any.
    pub release: Option<String>,
}

/// The decrypted set of one environment, in apply order.
pub struct ApplySet {
    /// Project name.
    pub project: String,
    /// Environment name.
    pub environment: String,
    /// The environment's namespace.
    pub namespace: String,
    /// The objects.
    pub objects: Vec<ApplyObject>,
    /// In a keyless preview: the secret-bearing objects, compared by their sealed digest instead
    /// of being sent (empty otherwise).
    pub sealed: Vec<crate::sealed::SealedObject>,
    /// The cluster profile the set's charts were rendered for.
    pub profile: Option<crate::render::project::Profile>,
    /// What the set's checks found that stops nothing (a chart that renders differently on each
    /// run), told at apply.
    pub notes: Vec<String>,
    /// The environments that must be applied and healthy first (`dependsOn`).
    pub needs: Vec<crate::render::project::Needed>,
}

/// Converts a YAML value to JSON (tags dropped, non-string keys as their YAML text).
pub fn yaml_to_json(v: &yaml_serde::Value) -> Json {
    use yaml_serde::Value as Y;
    match v {
        Y::Null => Json::Null,
        Y::Bool(b) => Json::Bool(*b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Json::from(i)
            } else if let Some(u) = n.as_u64() {
                Json::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Json::Null, Json::Number)
            }
        }
        Y::String(s) => Json::String(s.clone()),
        Y::Sequence(items) => Json::Array(items.iter().map(yaml_to_json).collect()),
        Y::Mapping(m) => Json::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Y::String(s) => s.clone(),
                        other => yaml_serde::to_string(other)
                            .unwrap_or_default()
                            .trim_end()
                            .to_string(),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(t) => yaml_to_json(&t.value),
    }
}

/// A mapping's items as a JSON object (read in place: no copy of the plaintext tree).
fn items_to_json(items: &[Item]) -> Json {
    Json::Object(
        items
            .iter()
            .filter_map(|i| match i {
                Item::Pair(k, v) => Some((k.clone(), tree_to_json(v))),
                Item::Comment(_) => None,
            })
            .collect(),
    )
}

fn tree_to_json(v: &Tree) -> Json {
    match v {
        Tree::Map(items) => items_to_json(items),
        Tree::List(values) => Json::Array(
            values
                .iter()
                .filter(|v| !matches!(v, Tree::Comment(_)))
                .map(tree_to_json)
                .collect(),
        ),
        Tree::Str(s) | Tree::Time(s) => Json::String(s.expose().to_string()),
        Tree::Int(i) => Json::from(*i.expose()),
        Tree::Float(f) => {
            serde_json::Number::from_f64(*f.expose()).map_or(Json::Null, Json::Number)
        }
        Tree::Bool(b) => Json::Bool(*b.expose()),
        Tree::Bytes(b) => Json::String(String::from_utf8_lossy(b.expose()).into_owned()),
        Tree::Null | Tree::Comment(_) => Json::Null,
    }
}

/// The bytes of a decrypted leaf (scalars as sops writes them in flat formats).
pub(crate) fn leaf_bytes(v: &Tree) -> Option<Zeroizing<Vec<u8>>> {
    Some(Zeroizing::new(match v {
        Tree::Bytes(b) => b.expose().to_vec(),
        Tree::Map(_) | Tree::List(_) | Tree::Comment(_) => return None,
        other => other.scalar_text()?.expose().as_bytes().to_vec(),
    }))
}

/// Looks a key path up in decrypted documents.
pub(crate) fn lookup<'a>(
    docs: &'a [crate::sops::tree::Document],
    path: &[String],
) -> Option<&'a Tree> {
    let (first, rest) = path.split_first()?;
    let mut cur = docs.iter().find_map(|d| {
        d.items.iter().find_map(|i| match i {
            Item::Pair(k, v) if k == first => Some(v),
            _ => None,
        })
    })?;
    for key in rest {
        cur = match cur {
            Tree::Map(_) => cur.get(key)?,
            Tree::List(values) => {
                let i: usize = key.parse().ok()?;
                let idx = crate::sops::tree::element_index(values, i)?;
                &values[idx]
            }
            _ => return None,
        };
    }
    Some(cur)
}

/// Every SOPS file the set's placeholders name — the environment's secrets file, and a
/// Kustomize overlay's SOPS resources and generator inputs — each decrypted in memory from its
/// original bytes, MAC checked.
fn referenced_files(
    rendered: &Rendered,
    snapshot: &Snapshot,
    ring: &KeyRing,
) -> Result<std::collections::BTreeMap<String, sops::Decrypted>, DecryptError> {
    let mut out = std::collections::BTreeMap::new();
    let reviewed = rendered
        .reruns
        .iter()
        .flat_map(|r| r.reviewed.as_deref().unwrap_or_default());
    for r in rendered
        .manifests
        .iter()
        .chain(reviewed)
        .flat_map(|m| &m.refs)
    {
        if out.contains_key(&r.file) {
            continue;
        }
        let bytes = snapshot.get(&r.file).ok_or_else(|| DecryptError::Missing {
            file: r.file.clone(),
        })?;
        let format = Format::from_path(std::path::Path::new(&r.file));
        let opened =
            sops::decrypt(bytes, format, ring, false).map_err(|source| DecryptError::Sops {
                file: r.file.clone(),
                source,
            })?;
        out.insert(r.file.clone(), opened);
    }
    Ok(out)
}

/// Where a field is, for messages: `data.password`.
fn field(section: &str, key: &str) -> String {
    format!("{section}.{key}")
}

/// Builds the apply set: decrypts what the rendered set refers to, with the identities in `ring`.
pub fn decrypt(
    rendered: &Rendered,
    snapshot: &Snapshot,
    ring: &KeyRing,
) -> Result<ApplySet, DecryptError> {
    let files = referenced_files(rendered, snapshot, ring)?;
    let docs_of = |file: &str| -> &[crate::sops::tree::Document] {
        files.get(file).map_or(&[], |d| d.docs.as_slice())
    };

    // Custom kinds declared cluster-scoped by CRDs in the set (for SOPS manifests' namespaces).
    let mut scopes = Scopes::default();
    for m in &rendered.manifests {
        if let (Body::Object(v), Some(id)) = (&m.body, &m.id)
            && id.kind == "CustomResourceDefinition"
        {
            scopes.learn(v);
        }
    }

    let mut objects = Vec::with_capacity(rendered.manifests.len());
    let mut texts = crate::sealed::Ciphertexts::default();
    for m in &rendered.manifests {
        let digest = crate::sealed::digest_of(m, snapshot, &mut texts);
        match &m.body {
            Body::Object(v) => {
                let Some(id) = m.id.clone() else { continue };
                objects.push(object_of(m, v, id, &docs_of, digest.as_deref())?);
            }
            Body::Sops { text } => {
                for mut obj in
                    open_sops_manifest(&m.source, text, ring, &rendered.namespace, &scopes)?
                {
                    if let Some(digest) = &digest {
                        crate::sealed::annotate(&mut obj.object, digest);
                    }
                    objects.push(obj);
                }
            }
        }
    }
    for o in &objects {
        check_leftovers(o)?;
    }
    let mut notes = Vec::new();
    for rerun in &rendered.reruns {
        // A kustomization's release is compared with what Helm printed, before the build.
        let reviewed = rerun
            .reviewed
            .as_ref()
            .map(|manifests| {
                manifests
                    .iter()
                    .filter_map(|m| match (&m.body, &m.id) {
                        (Body::Object(v), Some(id)) => {
                            Some(object_of(m, v, id.clone(), &docs_of, None))
                        }
                        _ => None,
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        match crate::rerun::check(
            rerun,
            snapshot,
            &docs_of,
            reviewed.as_deref().unwrap_or(&objects),
        ) {
            Ok(()) => {}
            // Without secret values a second render that differs costs no secret: told, not
            // refused (every apply will change those fields).
            Err(m) if !rerun.sealed => notes.push(format!("chart {}: {m}", rerun.release)),
            Err(m) => return Err(DecryptError::chart(&rerun.release, m)),
        }
    }
    Ok(ApplySet {
        project: rendered.project.clone(),
        environment: rendered.environment.clone(),
        namespace: rendered.namespace.clone(),
        objects,
        sealed: Vec::new(),
        profile: rendered.profile.clone(),
        notes,
        needs: rendered.needs.clone(),
    })
}

/// One object of the apply set: its placeholders replaced, annotated with its sealed digest.
fn object_of<'d>(
    m: &Manifest,
    v: &yaml_serde::Value,
    id: ObjectId,
    docs_of: &dyn Fn(&str) -> &'d [crate::sops::tree::Document],
    digest: Option<&str>,
) -> Result<ApplyObject, DecryptError> {
    let mut json = SecretJson(yaml_to_json(v));
    let has_secrets = !m.refs.is_empty();
    if has_secrets {
        fill_secret(&mut json, docs_of, &id, &m.source)?;
    }
    if let Some(digest) = digest {
        crate::sealed::annotate(&mut json, digest);
    }
    let api_version = json.0["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok(ApplyObject {
        id,
        api_version,
        source: m.source.clone(),
        object: json,
        has_secrets,
        release: m.release.clone(),
    })
}

/// Replaces placeholders in a Secret and folds `stringData` into `data`.
fn fill_secret<'d>(
    json: &mut SecretJson,
    docs_of: &dyn Fn(&str) -> &'d [crate::sops::tree::Document],
    id: &ObjectId,
    source: &str,
) -> Result<(), DecryptError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let err = |at: String, message: String| DecryptError::Reference {
        object: id.to_string(),
        source_file: source.to_string(),
        at,
        message,
    };
    let resolve = |r: &SealedRef, at: &str| -> Result<Zeroizing<Vec<u8>>, DecryptError> {
        if r.path.is_empty() {
            // The whole file, as `sops -d` prints it (a Kustomize generator's input).
            let format = Format::from_path(std::path::Path::new(&r.file));
            return crate::sops::store::emit_plain(format, docs_of(&r.file), 4)
                .map_err(|e| err(at.to_string(), format!("{}: {}", r.file, e.message)));
        }
        let leaf = lookup(docs_of(&r.file), &r.path).ok_or_else(|| {
            err(
                at.to_string(),
                format!("{} is not in {}", r.display_path(), r.file),
            )
        })?;
        leaf_bytes(leaf).ok_or_else(|| {
            err(
                at.to_string(),
                format!(
                    "{} is a {}, not a single value",
                    r.display_path(),
                    leaf.kind()
                ),
            )
        })
    };
    let Some(obj) = json.0.as_object_mut() else {
        return Ok(());
    };
    // In a wiping container from here on: an error below must not leave decrypted values behind.
    let mut data = SecretJson(match obj.remove("data") {
        Some(Json::Object(m)) => Json::Object(m),
        _ => Json::Object(Map::new()),
    });
    let Json::Object(entries) = &mut data.0 else {
        return Ok(());
    };
    // data: each value is exactly one reference (or plain base64 text).
    for (key, value) in entries.iter_mut() {
        let Json::String(text) = value else { continue };
        let found = SealedRef::find_all(text);
        let Some((_, r)) = found.first() else {
            continue;
        };
        let at = field("data", key);
        let plain = resolve(r, &at)?;
        let encoded = Zeroizing::new(match r.transform {
            Transform::Base64 => b64.encode(&*plain),
            Transform::UrlQuery | Transform::JsonString => {
                return Err(err(
                    at,
                    format!(
                        "{} is escaped for a URL or JSON text, which a Secret's data (base64) cannot hold; put the text in stringData",
                        r.display_path()
                    ),
                ));
            }
            Transform::Plain => {
                let s = std::str::from_utf8(&plain).map_err(|_| {
                    err(
                        at.clone(),
                        format!("{} is not text; use | b64encode", r.display_path()),
                    )
                })?;
                if b64.decode(s.trim()).is_err() {
                    return Err(err(
                        at,
                        format!(
                            "{} is not base64, which a Secret's data needs; write `{{{{ {} | b64encode }}}}` or move it to stringData",
                            r.display_path(),
                            r.display_path()
                        ),
                    ));
                }
                s.trim().to_string()
            }
        });
        text.zeroize();
        *text = encoded.to_string();
    }
    // stringData: references anywhere in the text; folded into data (base64), as the API server would.
    if let Some(Json::Object(string_data)) = obj.remove("stringData") {
        let mut string_data = SecretJson(Json::Object(string_data));
        if let Json::Object(sd) = &mut string_data.0 {
            for (key, value) in sd.iter_mut() {
                let Json::String(text) = value else { continue };
                let at = field("stringData", key);
                let out = substitute(text, |r| {
                    let plain = resolve(r, &at)?;
                    Ok(transformed(r.transform, &plain).unwrap_or_else(|| {
                        Zeroizing::new(String::from_utf8_lossy(&plain).into_owned())
                    }))
                })?;
                entries.insert(key.clone(), Json::String(b64.encode(out.as_bytes())));
            }
        }
    }
    if !entries.is_empty() {
        obj.insert("data".into(), std::mem::take(&mut data.0));
    }
    Ok(())
}

/// `text` with each placeholder replaced by what `piece` makes of its reference, and each nested
/// base64 block by the base64 of its inner text so filled, in a wiping buffer.
pub(crate) fn substitute<E>(
    text: &str,
    mut piece: impl FnMut(&SealedRef) -> Result<Zeroizing<String>, E>,
) -> Result<Zeroizing<String>, E> {
    use crate::render::sealed::find_nested_base64;
    let mut out = Zeroizing::new(String::with_capacity(text.len() + 64));
    let mut last = 0;
    for (range, inner) in find_nested_base64(text) {
        fill(&mut out, &text[last..range.start], &mut piece)?;
        let mut filled = Zeroizing::new(String::with_capacity(inner.len() + 64));
        fill(&mut filled, &inner, &mut piece)?;
        let encoded =
            Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(filled.as_bytes()));
        out.push_str(&encoded);
        last = range.end;
    }
    fill(&mut out, &text[last..], &mut piece)?;
    Ok(out)
}

/// Appends `text` to `out` with each placeholder replaced by what `piece` makes of it.
fn fill<E>(
    out: &mut String,
    text: &str,
    piece: &mut impl FnMut(&SealedRef) -> Result<Zeroizing<String>, E>,
) -> Result<(), E> {
    let mut last = 0;
    for (range, r) in SealedRef::find_all(text) {
        out.push_str(&text[last..range.start]);
        out.push_str(&piece(&r)?);
        last = range.end;
    }
    out.push_str(&text[last..]);
    Ok(())
}

/// A value as it takes a placeholder's place with `transform`; `None` when a plain value is not
/// UTF-8 text.
pub(crate) fn transformed(transform: Transform, plain: &[u8]) -> Option<Zeroizing<String>> {
    use crate::render::sealed::{json_escape, query_escape};
    Some(Zeroizing::new(match transform {
        Transform::Plain => std::str::from_utf8(plain).ok()?.to_string(),
        Transform::Base64 => base64::engine::general_purpose::STANDARD.encode(plain),
        Transform::UrlQuery => query_escape(plain),
        Transform::JsonString => json_escape(&String::from_utf8_lossy(plain)),
    }))
}

/// Decrypts a whole-file SOPS manifest into its objects.
fn open_sops_manifest(
    file: &str,
    text: &str,
    ring: &KeyRing,
    namespace: &str,
    scopes: &Scopes,
) -> Result<Vec<ApplyObject>, DecryptError> {
    let opened = sops::decrypt(text.as_bytes(), Format::Yaml, ring, false).map_err(|source| {
        DecryptError::Sops {
            file: file.to_string(),
            source,
        }
    })?;
    let mut out = Vec::new();
    for doc in &opened.docs {
        let mut json = SecretJson(items_to_json(&doc.items));
        let bad = |message: String| DecryptError::Manifest {
            file: file.to_string(),
            message,
        };
        let text_of = |v: &Json| v.as_str().map(str::to_string);
        let api_version = text_of(&json.0["apiVersion"])
            .ok_or_else(|| bad("the decrypted document has no apiVersion".into()))?;
        let kind = text_of(&json.0["kind"])
            .ok_or_else(|| bad("the decrypted document has no kind".into()))?;
        let name = text_of(&json.0["metadata"]["name"])
            .ok_or_else(|| bad("the decrypted document has no metadata.name".into()))?;
        let group = objects::group_of(&api_version).to_string();
        let namespace = if scopes.is_cluster_scoped(&group, &kind) {
            None
        } else {
            let ns =
                text_of(&json.0["metadata"]["namespace"]).unwrap_or_else(|| namespace.to_string());
            if let Some(meta) = json.0["metadata"].as_object_mut() {
                meta.insert("namespace".into(), Json::String(ns.clone()));
            }
            Some(ns)
        };
        // A Secret's stringData is folded into data here too.
        if group.is_empty() && kind == "Secret" {
            fold_string_data(&mut json);
        }
        out.push(ApplyObject {
            id: ObjectId {
                group,
                kind,
                namespace,
                name,
            },
            api_version,
            source: file.to_string(),
            object: json,
            has_secrets: true,
            release: None,
        });
    }
    Ok(out)
}

pub(crate) fn fold_string_data(json: &mut SecretJson) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some(obj) = json.0.as_object_mut() else {
        return;
    };
    let Some(Json::Object(sd)) = obj.remove("stringData") else {
        return;
    };
    let sd = SecretJson(Json::Object(sd));
    let data = obj
        .entry("data")
        .or_insert_with(|| Json::Object(Map::new()));
    if let (Json::Object(data), Json::Object(sd)) = (data, &sd.0) {
        for (k, v) in sd {
            let text = match v {
                Json::String(s) => Zeroizing::new(s.clone()),
                other => Zeroizing::new(other.to_string()),
            };
            data.insert(k.clone(), Json::String(b64.encode(text.as_bytes())));
        }
    }
}

/// Refuses objects that still carry ciphertext or placeholders anywhere.
fn check_leftovers(o: &ApplyObject) -> Result<(), DecryptError> {
    fn walk(v: &Json, path: &mut Vec<String>, found: &mut Option<(String, &'static str)>) {
        if found.is_some() {
            return;
        }
        match v {
            Json::String(s) => {
                if s.contains("ENC[AES256_GCM,") {
                    *found = Some((path.join("."), "ENC[…] ciphertext"));
                } else if SealedRef::mentioned_in(s) {
                    *found = Some((path.join("."), "a sealed placeholder"));
                }
            }
            Json::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(format!("[{i}]"));
                    walk(item, path, found);
                    path.pop();
                }
            }
            Json::Object(map) => {
                for (k, item) in map {
                    if k.contains("ENC[AES256_GCM,") || SealedRef::mentioned_in(k) {
                        *found = Some((
                            path.join("."),
                            "a sealed placeholder or ciphertext in a key",
                        ));
                        return;
                    }
                    path.push(k.clone());
                    walk(item, path, found);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut found = None;
    walk(o.object.expose(), &mut Vec::new(), &mut found);
    match found {
        Some((at, what)) => Err(DecryptError::Leftover {
            object: o.id.to_string(),
            source_file: o.source.clone(),
            at: at.replace(".[", "["),
            what,
        }),
        None => Ok(()),
    }
}

/// Every distinct secrets file a rendered set needs a key for.
pub fn files_needing_keys(rendered: &Rendered) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for m in &rendered.manifests {
        for r in &m.refs {
            out.insert(r.file.clone());
        }
        if matches!(m.body, Body::Sops { .. }) {
            out.insert(m.source.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(body: Json) -> ApplyObject {
        ApplyObject {
            id: ObjectId {
                group: String::new(),
                kind: "Secret".into(),
                namespace: Some("shop".into()),
                name: "db".into(),
            },
            api_version: "v1".into(),
            source: "templates/db.yaml".into(),
            object: SecretJson::wrap(body),
            has_secrets: true,
            release: None,
        }
    }

    const FILE: &str = "environments/dev/secrets.yaml";

    #[test]
    fn ciphertext_or_placeholders_left_anywhere_are_refused_naming_the_field() {
        let placeholder = format!("<sealed:{FILE}#/db/password>");
        let cases = [
            (
                json!({"data": {"a": "ENC[AES256_GCM,data:eA==,iv:eA==,tag:eA==,type:str]"}}),
                Some(("data.a", "ENC[…] ciphertext")),
            ),
            (
                json!({"spec": {"env": [{"value": "x"}, {"value": placeholder}]}}),
                Some(("spec.env[1].value", "a sealed placeholder")),
            ),
            (
                json!({"metadata": {"annotations": {placeholder.clone(): "x"}}}),
                Some((
                    "metadata.annotations",
                    "a sealed placeholder or ciphertext in a key",
                )),
            ),
            (
                json!({"data": {"a": "c2VjcmV0"}, "note": "ENC is fine as a word"}),
                None,
            ),
        ];
        for (body, expected) in cases {
            let shown = body.to_string();
            match (check_leftovers(&object(body)), expected) {
                (Ok(()), None) => {}
                (Err(DecryptError::Leftover { at, what, .. }), Some((want_at, want_what))) => {
                    assert_eq!((at.as_str(), what), (want_at, want_what), "{shown}");
                }
                (got, want) => panic!("{shown}: got {got:?}, want {want:?}"),
            }
        }
    }

    fn secrets() -> Vec<crate::sops::tree::Document> {
        crate::sops::store::load_plain(
            crate::sops::store::Format::Yaml,
            b"db:\n  password: hunter2\n  token: c2VjcmV0\n",
        )
        .expect("parses")
        .docs
    }

    #[test]
    fn secret_data_takes_only_base64_and_single_values() {
        let reference = |path: &str, base64: bool| {
            format!(
                "<sealed:{FILE}#{path}{}>",
                if base64 { "|base64" } else { "" }
            )
        };
        let cases: [(Json, Result<&str, &str>); 5] = [
            // Already base64 in the secrets file: sent as it is.
            (
                json!({"data": {"t": reference("/db/token", false)}}),
                Ok("c2VjcmV0"),
            ),
            // Encoded on the way.
            (
                json!({"data": {"p": reference("/db/password", true)}}),
                Ok("aHVudGVyMg=="),
            ),
            // Plain text in data: refused, with the way out.
            (
                json!({"data": {"p": reference("/db/password", false)}}),
                Err("is not base64"),
            ),
            (
                json!({"data": {"p": reference("/db/missing", true)}}),
                Err("is not in"),
            ),
            (
                json!({"data": {"p": reference("/db", true)}}),
                Err("not a single value"),
            ),
        ];
        let docs = secrets();
        for (body, expected) in cases {
            let shown = body.to_string();
            let mut json = SecretJson::wrap(body);
            let id = object(Json::Null).id;
            let result = fill_secret(&mut json, &|_| docs.as_slice(), &id, "templates/db.yaml");
            match (result, expected) {
                (Ok(()), Ok(value)) => {
                    let data = &json.expose()["data"];
                    let sent: Vec<&str> = data
                        .as_object()
                        .expect("data")
                        .values()
                        .filter_map(Json::as_str)
                        .collect();
                    assert_eq!(sent, [value], "{shown}");
                }
                (Err(e), Err(message)) => {
                    let text = e.to_string();
                    assert!(text.contains(message), "{shown}: {text}");
                    assert!(!text.contains("hunter2"), "no value in errors: {text}");
                }
                (got, want) => panic!("{shown}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn string_data_is_folded_into_data_with_references_filled_in() {
        let mut json = SecretJson::wrap(json!({
            "stringData": {"url": format!("postgres://app:<sealed:{FILE}#/db/password>@db/shop")}
        }));
        let id = object(Json::Null).id;
        let docs = secrets();
        fill_secret(&mut json, &|_| docs.as_slice(), &id, "templates/db.yaml").expect("fills");
        let b64 = base64::engine::general_purpose::STANDARD;
        let sent = json.expose()["data"]["url"].as_str().expect("in data");
        assert_eq!(
            b64.decode(sent).expect("base64"),
            b"postgres://app:hunter2@db/shop"
        );
        assert!(json.expose().get("stringData").is_none());
    }
}
