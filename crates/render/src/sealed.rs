//! Sealed secret references: what `{{ secrets.db.password }}` yields instead of a value.
//!
//! SOPS keeps key names in clear, so the structure of an environment's secrets file is readable
//! without a key. Templates see that structure as `secrets`; each leaf is a [`SealedRef`] that
//! prints as a placeholder naming the file and key path:
//!
//! ```text
//! <sealed:environments/prod/secrets.yaml#/db/password@3f9a1c2e>
//! <sealed:environments/prod/secrets.yaml#/db/password@3f9a1c2e|base64>     (after `| b64encode`)
//! <sealed-base64:app%3A<sealed:environments/prod/secrets.yaml#/db/password@3f9a1c2e>>
//! ```
//!
//! The last is a text with placeholders inside, base64-encoded at apply (a chart's `printf
//! "%s:%s" … | b64enc` inside a larger encoded text: a dockerconfigjson's `auth`); its literal
//! parts are percent-encoded.
//!
//! The placeholder carries nothing derived from the value. Its `@…` part is a short digest of the
//! value's *ciphertext* (public, in Git): it changes exactly when the value is re-encrypted, so a
//! checksum of rendered output that holds placeholders (Helm's `checksum/secret` annotations, an
//! `include(…) | sha256`) changes when a secret does, and pods roll — with no key at render time.
//! `apply` replaces placeholders with the decrypted values in memory, only inside a `v1/Secret`'s
//! `data`/`stringData`.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, LazyLock};

use minijinja::value::{Enumerator, Object, ObjectRepr, Value as JValue};
use minijinja::{Error, ErrorKind};
use regex::Regex;

use lockstep_sops::store::{self, Format};
use lockstep_sops::tree::{Item, Value as TreeValue};

use super::diagnostic::Diagnostic;

/// The text every placeholder starts with.
pub const PLACEHOLDER_PREFIX: &str = "<sealed:";

/// The text a nested base64 block starts with (see [`nested_base64`]).
pub const NESTED_BASE64_PREFIX: &str = "<sealed-base64:";

static NESTED_BASE64: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"<sealed-base64:((?:[A-Za-z0-9._~%-]|<sealed:[^<>]*>)*)>")
        .expect("the nested base64 pattern is a valid regex")
});

/// A base64 run long enough to hold a placeholder.
static BASE64_RUN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9+/]{12,}={0,2}").expect("the base64 run pattern is a valid regex")
});

/// The block that stands for the base64 of `inner` (a text holding placeholders): its literal
/// parts percent-encoded, its placeholders as they are.
pub fn nested_base64(inner: &str) -> String {
    let mut out = String::from(NESTED_BASE64_PREFIX);
    let mut last = 0;
    for (range, _) in SealedRef::find_all(inner) {
        out.push_str(&encode(&inner[last..range.start], false));
        out.push_str(&inner[range.clone()]);
        last = range.end;
    }
    out.push_str(&encode(&inner[last..], false));
    out.push('>');
    out
}

/// Every nested base64 block of `text`: its range and the inner text (literal parts decoded,
/// placeholders as they are).
pub fn find_nested_base64(text: &str) -> Vec<(std::ops::Range<usize>, String)> {
    if !text.contains(NESTED_BASE64_PREFIX) {
        return Vec::new();
    }
    NESTED_BASE64
        .captures_iter(text)
        .filter_map(|c| {
            let whole = c.get(0)?;
            let body = c.get(1)?.as_str();
            let mut inner = String::with_capacity(body.len());
            let mut last = 0;
            for (range, _) in SealedRef::find_all(body) {
                inner.push_str(&decode(&body[last..range.start])?);
                inner.push_str(&body[range.clone()]);
                last = range.end;
            }
            inner.push_str(&decode(&body[last..])?);
            Some((whole.range(), inner))
        })
        .collect()
}

/// `text` with each base64 run that decodes to a text holding placeholders (a chart's `b64enc` of
/// `"user:" + password`) replaced by its [`nested_base64`] block; `None` when there is none.
pub fn reveal_nested_base64(text: &str) -> Option<String> {
    use base64::Engine as _;
    // A placeholder's start, base64-encoded at each of the three offsets.
    if !["PHNlYWxlZD", "xzZWFsZWQ6", "8c2VhbGVkO"]
        .iter()
        .any(|m| text.contains(m))
    {
        return None;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut changed = false;
    for run in BASE64_RUN.find_iter(text) {
        let Some(inner) = b64
            .decode(run.as_str())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|t| !SealedRef::find_all(t).is_empty())
        else {
            continue;
        };
        out.push_str(&text[last..run.start()]);
        out.push_str(&nested_base64(&inner));
        last = run.end();
        changed = true;
    }
    out.push_str(&text[last..]);
    changed.then_some(out)
}

/// What `apply` does to the plaintext before putting it in place of the placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transform {
    /// The value as it is.
    Plain,
    /// The value base64-encoded (standard alphabet, padded), for a Secret's `data`.
    Base64,
    /// The value escaped for a URL query as Go's `url.QueryEscape` (Helm's `urlquery`) does: a
    /// password inside a connection URL.
    UrlQuery,
    /// The value escaped as Go's `encoding/json` writes a string's contents (Helm's `toJson`): a
    /// password inside a JSON document.
    JsonString,
}

/// `text` escaped as Go's `encoding/json` escapes the inside of a string (Go 1.22 and later): `"`
/// and `\\`, control characters, and (HTML-safe, as `json.Marshal` does) `<`, `>`, `&`, U+2028 and U+2029.
pub fn json_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// How a placeholder looks inside Go's JSON (`<` as `\u003c`).
pub const JSON_ESCAPED_PREFIX: &str = "\\u003csealed:";

/// `text`, when it is a JSON document, with every placeholder that Helm's `toJson` wrote inside a
/// string (`\u003csealed:…\u003e`) put back, marked for JSON escaping at apply (`None` when there
/// is none).
pub fn reveal_json_escaped(text: &str) -> Option<String> {
    if !text.contains(JSON_ESCAPED_PREFIX)
        || serde_json::from_str::<serde_json::Value>(text).is_err()
    {
        return None;
    }
    reveal_escaped(
        text,
        JSON_ESCAPED_PREFIX,
        "\\u003e",
        Transform::JsonString,
        |run| Some(run.replace("\\u003c", "<").replace("\\u003e", ">")),
    )
}

/// `text` with each run from `prefix` to `end` (an escaped placeholder) that `unescape` turns into
/// exactly one plain placeholder replaced by that placeholder marked with `transform`; `None` when
/// there is no such run.
fn reveal_escaped(
    text: &str,
    prefix: &str,
    end: &str,
    transform: Transform,
    unescape: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut changed = false;
    while let Some(start) = rest.find(prefix) {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let stop = rest.find(end).map_or(rest.len(), |i| i + end.len());
        let run = &rest[..stop];
        let whole = unescape(run).and_then(|t| match SealedRef::find_all(&t).as_slice() {
            [(range, r)] if *range == (0..t.len()) && r.transform == Transform::Plain => {
                Some(r.clone())
            }
            _ => None,
        });
        match whole {
            Some(mut marked) => {
                marked.transform = transform;
                out.push_str(&marked.placeholder());
                changed = true;
            }
            None => out.push_str(run),
        }
        rest = &rest[stop..];
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// `text` escaped as Go's `url.QueryEscape` escapes it: letters, digits and `-_.~` stay, a space
/// becomes `+`, every other byte `%XX` (upper-case hex).
pub fn query_escape(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for &b in text {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The text `query_escape` made `escaped` from (`None` when it is not such text).
pub fn query_unescape(escaped: &str) -> Option<String> {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                out.push(u8::from_str_radix(escaped.get(i + 1..i + 3)?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// How a placeholder looks after Helm's `urlquery` (the start of [`PLACEHOLDER_PREFIX`]).
pub const QUERY_ESCAPED_PREFIX: &str = "%3Csealed%3A";

/// `text` with every placeholder that `urlquery` escaped put back, marked for that escaping at
/// apply (`None` when there is none).
pub fn reveal_query_escaped(text: &str) -> Option<String> {
    if !text.contains(QUERY_ESCAPED_PREFIX) {
        return None;
    }
    reveal_escaped(
        text,
        QUERY_ESCAPED_PREFIX,
        "%3E",
        Transform::UrlQuery,
        query_unescape,
    )
}

/// A reference to one value of a SOPS file, by file and key path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SealedRef {
    /// The SOPS file, relative to the project root.
    pub file: String,
    /// Keys from the root (list elements by decimal index).
    pub path: Vec<String>,
    /// What to do to the value.
    pub transform: Transform,
    /// [`DIGEST_LEN`] hex digits of the SHA-256 of the value's ciphertext (`None` in placeholders
    /// written without one).
    pub digest: Option<String>,
}

/// Hex digits of the ciphertext digest a placeholder carries.
pub const DIGEST_LEN: usize = 8;

/// The digest a placeholder carries for a value whose ciphertext (as stored in the SOPS file) is
/// `ciphertext`.
pub fn ciphertext_digest(ciphertext: &[u8]) -> String {
    use sha2::Digest as _;
    let mut hex = hex::encode(sha2::Sha256::digest(ciphertext));
    hex.truncate(DIGEST_LEN);
    hex
}

static PLACEHOLDER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"<sealed:([A-Za-z0-9._~/%-]+)#((?:/[A-Za-z0-9._~%-]*)*)(?:@([0-9a-f]{8}))?(\|base64|\|urlquery|\|json)?>",
    )
    .expect("the placeholder pattern is a valid regex")
});

fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let plain = b.is_ascii_alphanumeric()
            || matches!(b, b'.' | b'_' | b'~' | b'-')
            || (keep_slash && b == b'/');
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl SealedRef {
    /// The placeholder text for this reference.
    pub fn placeholder(&self) -> String {
        let mut s = format!("{PLACEHOLDER_PREFIX}{}#", encode(&self.file, true));
        for key in &self.path {
            s.push('/');
            s.push_str(&encode(key, false));
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        match self.transform {
            Transform::Plain => {}
            Transform::Base64 => s.push_str("|base64"),
            Transform::UrlQuery => s.push_str("|urlquery"),
            Transform::JsonString => s.push_str("|json"),
        }
        s.push('>');
        s
    }

    /// The key path as templates write it: `secrets.db.password`, `secrets.list[0]`.
    pub fn display_path(&self) -> String {
        display_path(&self.path)
    }

    /// Every placeholder in `text`, with its byte range.
    pub fn find_all(text: &str) -> Vec<(std::ops::Range<usize>, SealedRef)> {
        if !text.contains(PLACEHOLDER_PREFIX) {
            return Vec::new();
        }
        PLACEHOLDER
            .captures_iter(text)
            .filter_map(|c| {
                let whole = c.get(0)?;
                let file = decode(c.get(1)?.as_str())?;
                // No path: the whole file (a generator's input).
                let path = match c.get(2)?.as_str() {
                    "" => Vec::new(),
                    p => p[1..].split('/').map(decode).collect::<Option<Vec<_>>>()?,
                };
                let transform = match c.get(4).map(|m| m.as_str()) {
                    Some("|base64") => Transform::Base64,
                    Some("|json") => Transform::JsonString,
                    Some(_) => Transform::UrlQuery,
                    None => Transform::Plain,
                };
                Some((
                    whole.range(),
                    SealedRef {
                        file,
                        path,
                        transform,
                        digest: c.get(3).map(|d| d.as_str().to_string()),
                    },
                ))
            })
            .collect()
    }

    /// Whether `text` contains anything that looks like a placeholder (well-formed or not).
    /// (A nested base64 block holds placeholders, so it counts.)
    pub fn mentioned_in(text: &str) -> bool {
        text.contains(PLACEHOLDER_PREFIX)
    }
}

/// `secrets.a.b[0]` for a key path.
pub fn display_path(path: &[String]) -> String {
    let mut s = String::from("secrets");
    for key in path {
        let simple = !key.is_empty()
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !key.as_bytes()[0].is_ascii_digit();
        if simple {
            s.push('.');
            s.push_str(key);
        } else if key.bytes().all(|b| b.is_ascii_digit()) && !key.is_empty() {
            s.push_str(&format!("[{key}]"));
        } else {
            s.push_str(&format!("[{key:?}]"));
        }
    }
    s
}

impl Object for SealedRef {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn is_true(self: &Arc<Self>) -> bool {
        true
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.placeholder())
    }
}

/// The readable structure of an environment's secrets file.
#[derive(Debug, Clone, Default)]
pub struct SecretsFile {
    /// The file, relative to the project root (`None` when the environment has none).
    pub file: Option<String>,
    /// Every leaf key path, for checking placeholders found in output.
    pub leaves: BTreeSet<Vec<String>>,
    /// Whether a placeholder may name the whole file (see [`SecretsFile::read_whole`]).
    whole: bool,
    root: Node,
}

#[derive(Debug, Clone)]
enum Node {
    /// A value, with the digest of its ciphertext.
    Leaf(Arc<str>),
    Map(Arc<[(String, Node)]>),
    List(Arc<[Node]>),
}

fn map_entries(items: &[Item]) -> Vec<(String, Node)> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Pair(k, v) => Some((k.clone(), node_of(v))),
            Item::Comment(_) => None,
        })
        .collect()
}

fn node_of(value: &TreeValue) -> Node {
    match value {
        TreeValue::Map(items) => Node::Map(Arc::from(map_entries(items))),
        TreeValue::List(values) => Node::List(
            values
                .iter()
                .filter(|v| !matches!(v, TreeValue::Comment(_)))
                .map(node_of)
                .collect::<Vec<_>>()
                .into(),
        ),
        other => Node::Leaf(Arc::from(ciphertext_digest(
            other
                .scalar_text()
                .map(|t| t.expose().clone())
                .unwrap_or_default()
                .as_bytes(),
        ))),
    }
}

fn collect_leaves(node: &Node, path: &mut Vec<String>, out: &mut BTreeSet<Vec<String>>) {
    match node {
        Node::Leaf(_) => {
            out.insert(path.clone());
        }
        Node::Map(entries) => {
            for (k, v) in entries.iter() {
                path.push(k.clone());
                collect_leaves(v, path, out);
                path.pop();
            }
        }
        Node::List(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(i.to_string());
                collect_leaves(v, path, out);
                path.pop();
            }
        }
    }
}

/// The candidate names of an environment's secrets file, in the order they are looked for.
pub fn candidates(env: &str) -> Vec<String> {
    ["yaml", "yml", "json", "env", "ini"]
        .iter()
        .map(|ext| format!("environments/{env}/secrets.{ext}"))
        .collect()
}

impl Default for Node {
    fn default() -> Self {
        // No secrets file: an empty mapping, whose lookups explain that the file is missing.
        Node::Map(Arc::from(Vec::new()))
    }
}

impl SecretsFile {
    /// Reads the key structure of an encrypted SOPS file (no key is needed or used).
    pub fn parse(file: &str, bytes: &[u8]) -> Result<SecretsFile, Diagnostic> {
        let format = Format::from_path(std::path::Path::new(file));
        let loaded = store::load_encrypted(format, bytes).map_err(|e| {
            let d = Diagnostic::new(format!("not a valid SOPS file: {}", e.message)).in_file(file);
            match e.line {
                Some(l) => d.at_line(l),
                None => d,
            }
        })?;
        if loaded.metadata.is_none() {
            return Err(Diagnostic::new(
                "this secrets file is not encrypted (it has no `sops` metadata)",
            )
            .in_file(file)
            .with_help(format!(
                "encrypt it before committing: lockstep encrypt -i {file}"
            )));
        }
        let mut entries = Vec::new();
        for doc in &loaded.docs {
            entries.extend(map_entries(&doc.items));
        }
        let root = Node::Map(Arc::from(entries));
        let mut leaves = BTreeSet::new();
        collect_leaves(&root, &mut Vec::new(), &mut leaves);
        Ok(SecretsFile {
            file: Some(file.to_string()),
            leaves,
            whole: false,
            root,
        })
    }

    /// The `secrets` value templates see.
    pub fn to_value(&self, env: &str) -> JValue {
        let file: Arc<str> = Arc::from(self.file.as_deref().unwrap_or(""));
        node_value(
            &Arc::new(Shared {
                file,
                env: env.to_string(),
                present: self.file.is_some(),
            }),
            &self.root,
            Vec::new(),
        )
    }

    /// Whether a placeholder found in rendered output names a value of this file (no path: the
    /// whole file, when `whole` allows it).
    pub fn resolves(&self, r: &SealedRef) -> bool {
        self.file.as_deref() == Some(r.file.as_str())
            && (self.leaves.contains(&r.path) || (r.path.is_empty() && self.whole))
    }

    /// This file, read whole by a Kustomize generator: a placeholder without path names all of it.
    pub fn read_whole(mut self) -> SecretsFile {
        self.whole = true;
        self
    }
}

#[derive(Debug)]
struct Shared {
    file: Arc<str>,
    env: String,
    present: bool,
}

fn node_value(shared: &Arc<Shared>, node: &Node, path: Vec<String>) -> JValue {
    match node {
        Node::Leaf(digest) => JValue::from_object(SealedRef {
            file: shared.file.to_string(),
            path,
            transform: Transform::Plain,
            digest: Some(digest.to_string()),
        }),
        Node::Map(entries) => JValue::from_object(SecretMap {
            shared: shared.clone(),
            path,
            entries: entries.clone(),
        }),
        Node::List(items) => JValue::from_object(SecretList {
            shared: shared.clone(),
            path,
            items: items.clone(),
        }),
    }
}

/// A mapping of the secrets file: keys are readable, leaves are sealed.
#[derive(Debug)]
struct SecretMap {
    shared: Arc<Shared>,
    path: Vec<String>,
    entries: Arc<[(String, Node)]>,
}

impl Object for SecretMap {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &JValue) -> Option<JValue> {
        let name = key.as_str()?;
        if let Some((_, node)) = self.entries.iter().find(|(k, _)| k == name) {
            let mut path = self.path.clone();
            path.push(name.to_string());
            return Some(node_value(&self.shared, node, path));
        }
        let mut wanted = self.path.clone();
        wanted.push(name.to_string());
        let message = if !self.shared.present {
            format!(
                "{} is used, but environment {:?} has no secrets file; create environments/{}/secrets.yaml and encrypt it",
                display_path(&wanted),
                self.shared.env,
                self.shared.env
            )
        } else {
            let keys: Vec<&str> = self.entries.iter().map(|(k, _)| k.as_str()).collect();
            format!(
                "{} does not exist in {}; keys available at {}: {}",
                display_path(&wanted),
                self.shared.file,
                display_path(&self.path),
                if keys.is_empty() {
                    "(none)".to_string()
                } else {
                    keys.join(", ")
                }
            )
        };
        Some(JValue::from(Error::new(ErrorKind::UndefinedError, message)))
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let keys: Vec<JValue> = self
            .entries
            .iter()
            .map(|(k, _)| JValue::from(k.as_str()))
            .collect();
        Enumerator::Values(keys)
    }
}

/// A list of the secrets file: indexable, leaves sealed.
#[derive(Debug)]
struct SecretList {
    shared: Arc<Shared>,
    path: Vec<String>,
    items: Arc<[Node]>,
}

impl Object for SecretList {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Seq
    }

    fn get_value(self: &Arc<Self>, key: &JValue) -> Option<JValue> {
        let index = key.as_usize()?;
        let node = self.items.get(index)?;
        let mut path = self.path.clone();
        path.push(index.to_string());
        Some(node_value(&self.shared, node, path))
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Seq(self.items.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placeholder_base64_encoded_inside_a_text_is_revealed_as_a_nested_block() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let r = SealedRef {
            file: "environments/dev/secrets.yaml".into(),
            path: vec!["registry".into(), "password".into()],
            transform: Transform::Plain,
            digest: Some("0123abcd".into()),
        };
        // Every offset of the placeholder within the encoded text.
        for user in ["a", "ab", "app", "robot$x>y"] {
            let inner = format!("{user}:{}", r.placeholder());
            let json = format!(
                "{{\"auths\":{{\"reg.example.org\":{{\"auth\":\"{}\"}}}}}}",
                b64.encode(&inner)
            );
            let revealed = reveal_nested_base64(&json).expect("revealed");
            assert!(revealed.contains(NESTED_BASE64_PREFIX), "{revealed}");
            let found = find_nested_base64(&revealed);
            assert_eq!(found.len(), 1, "{revealed}");
            assert_eq!(found[0].1, inner);
            assert_eq!(
                SealedRef::find_all(&revealed)[0].1,
                r,
                "its placeholder is found"
            );
        }
        assert_eq!(
            reveal_nested_base64(&b64.encode("no placeholder at all here")),
            None
        );
    }

    #[test]
    fn placeholders_round_trip_through_text_with_odd_keys() {
        let r = SealedRef {
            file: "environments/prod env/secrets.yaml".into(),
            path: vec!["db".into(), "pass word/x>y|z%".into(), "0".into()],
            transform: Transform::Base64,
            digest: Some(ciphertext_digest(b"ENC[AES256_GCM,data:x]")),
        };
        let text = format!("url: postgres://app:{}@db:5432/x", r.placeholder());
        let found = SealedRef::find_all(&text);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].1, r);
        assert_eq!(&text[found[0].0.clone()], r.placeholder());
        assert!(!r.placeholder().contains(' '));
        assert!(r.placeholder().ends_with(&format!(
            "@{}|base64>",
            r.digest.as_deref().unwrap_or_default()
        )));
        // Without a digest, as placeholders were written before.
        let bare = SealedRef {
            digest: None,
            ..r.clone()
        };
        assert_eq!(SealedRef::find_all(&bare.placeholder())[0].1, bare);
    }

    #[test]
    fn query_escaping_is_gos() {
        // url.QueryEscape("p@ss w/rd&é~") in Go.
        assert_eq!(
            query_escape("p@ss w/rd&é~".as_bytes()),
            "p%40ss+w%2Frd%26%C3%A9~"
        );
        assert_eq!(
            query_unescape("p%40ss+w%2Frd%26%C3%A9~").as_deref(),
            Some("p@ss w/rd&é~")
        );
        let r = SealedRef {
            file: "environments/dev/secrets.yaml".into(),
            path: vec!["db".into(), "pw".into()],
            transform: Transform::Plain,
            digest: Some("0a1b2c3d".into()),
        };
        let text = format!(
            "postgres://u:{}@db/x",
            query_escape(r.placeholder().as_bytes())
        );
        let revealed = reveal_query_escaped(&text).expect("revealed");
        let marked = SealedRef {
            transform: Transform::UrlQuery,
            ..r.clone()
        };
        assert_eq!(
            revealed,
            format!("postgres://u:{}@db/x", marked.placeholder())
        );
        assert_eq!(SealedRef::find_all(&revealed)[0].1, marked);
        assert_eq!(reveal_query_escaped("plain %3Cnot%3E"), None);
    }

    #[test]
    fn json_escaping_is_gos() {
        // json.Marshal("a\"b\\c<d>&\n\u0001") in Go, without the quotes.
        assert_eq!(
            json_escape("a\"b\\c<d>&\n\u{1}"),
            r#"a\"b\\c\u003cd\u003e\u0026\n\u0001"#
        );
        let r = SealedRef {
            file: "environments/dev/secrets.yaml".into(),
            path: vec!["db".into(), "pw".into()],
            transform: Transform::Plain,
            digest: Some("0a1b2c3d".into()),
        };
        let json = format!("{{\"password\":\"{}\"}}", json_escape(&r.placeholder()));
        let revealed = reveal_json_escaped(&json).expect("revealed");
        let marked = SealedRef {
            transform: Transform::JsonString,
            ..r.clone()
        };
        assert_eq!(
            revealed,
            format!("{{\"password\":\"{}\"}}", marked.placeholder())
        );
        assert_eq!(reveal_json_escaped("not json \\u003csealed:x\\u003e"), None);
    }

    #[test]
    fn the_digest_follows_the_ciphertext() {
        let yaml = |pw: &str| {
            format!(
                "db:\n    password: ENC[AES256_GCM,data:{pw},iv:aXY=,tag:dGFn,type:str]\n    user: ENC[AES256_GCM,data:dXNlcg==,iv:aXY=,tag:dGFn,type:str]\nsops:\n    age: []\n    lastmodified: \"2024-01-01T00:00:00Z\"\n    mac: ENC[AES256_GCM,data:bWFj,iv:aXY=,tag:dGFn,type:str]\n    version: 3.9.0\n"
            )
        };
        let digest_of = |text: &str, key: &str| {
            let file = SecretsFile::parse("environments/dev/secrets.yaml", text.as_bytes())
                .expect("parses");
            let v = file.to_value("dev");
            let leaf = v
                .get_attr("db")
                .and_then(|db| db.get_attr(key))
                .expect("leaf");
            leaf.downcast_object_ref::<SealedRef>()
                .and_then(|r| r.digest.clone())
                .expect("digest")
        };
        let (one, two) = (yaml("b25l"), yaml("dHdv"));
        assert_ne!(
            digest_of(&one, "password"),
            digest_of(&two, "password"),
            "a new value, a new digest"
        );
        assert_eq!(
            digest_of(&one, "user"),
            digest_of(&two, "user"),
            "an unchanged value keeps its digest"
        );
        assert_eq!(digest_of(&one, "password").len(), DIGEST_LEN);
    }

    #[test]
    fn display_paths_read_like_template_expressions() {
        assert_eq!(
            display_path(&["db".into(), "password".into()]),
            "secrets.db.password"
        );
        assert_eq!(
            display_path(&["list".into(), "0".into(), "a-b".into()]),
            "secrets.list[0][\"a-b\"]"
        );
    }
}
