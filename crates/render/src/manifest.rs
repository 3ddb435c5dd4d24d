//! Rendered objects: splitting YAML streams, identity, namespace defaulting, sealed-reference
//! placement rules, ordering and output.

use std::cmp::Ordering;
use std::ops::Range;

use yaml_serde::{Mapping, Value};

use super::sealed::SealedRef;
use lockstep_core::objects::{ObjectId, group_of, kind_rank};

/// What a rendered object is.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A plain manifest (sealed placeholders possibly inside a Secret's data).
    Object(Value),
    /// A whole-file SOPS-encrypted manifest, kept byte for byte (its MAC covers every value).
    Sops {
        /// The file's text.
        text: String,
    },
}

/// One object of the rendered set.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The project file it came from (`templates/web.yaml`, `manifests/db.sops.yaml`).
    pub source: String,
    /// Its identity (for a SOPS file: read from its clear-text keys; `None` if they are encrypted).
    pub id: Option<ObjectId>,
    /// The object.
    pub body: Body,
    /// Sealed references inside it, sorted and without duplicates.
    pub refs: Vec<SealedRef>,
    /// The chart release whose output it is, if any (hooks run per release).
    pub release: Option<String>,
}

impl Manifest {
    fn sort_key(&self) -> (usize, &str, &str, Option<&str>, &str, &str) {
        match &self.id {
            Some(id) => (
                kind_rank(&id.kind),
                id.group.as_str(),
                id.kind.as_str(),
                id.namespace.as_deref(),
                id.name.as_str(),
                self.source.as_str(),
            ),
            None => (usize::MAX, "", "", None, "", self.source.as_str()),
        }
    }

    /// Orders manifests for output and apply.
    pub fn order(a: &Manifest, b: &Manifest) -> Ordering {
        a.sort_key().cmp(&b.sort_key())
    }

    /// The YAML text of this object (without a leading `---`).
    pub fn to_yaml(&self) -> String {
        match &self.body {
            Body::Object(v) => super::emit::to_yaml(v),
            Body::Sops { text } => {
                let t = text.strip_prefix("---\n").unwrap_or(text);
                if t.ends_with('\n') {
                    t.to_string()
                } else {
                    format!("{t}\n")
                }
            }
        }
    }

    /// A file name for `render --out`: `<namespace|_cluster>/<kind>-<name>.yaml`.
    pub fn file_name(&self) -> String {
        match &self.id {
            Some(id) => {
                let dir = id.namespace.clone().unwrap_or_else(|| "_cluster".into());
                let kind = id.kind.to_ascii_lowercase();
                let group = if id.group.is_empty() {
                    String::new()
                } else {
                    format!(".{}", id.group)
                };
                format!(
                    "{}/{}{}-{}.yaml",
                    component(&dir),
                    component(&kind),
                    sanitize(&group),
                    sanitize(&id.name)
                )
            }
            None => format!("_encrypted/{}", sanitize(&self.source.replace('/', "_"))),
        }
    }
}

/// A name made safe inside one path component: `[A-Za-z0-9._-]` only, and never `.` or `..` (a
/// `metadata.namespace: ".."` must not write outside `render --out`'s directory).
fn sanitize(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !out.is_empty() && out.chars().all(|c| c == '.') {
        out.replace('.', "_") + "_"
    } else {
        out
    }
}

/// [`sanitize`]d, and never empty (an empty component would make the path absolute).
fn component(s: &str) -> String {
    match sanitize(s) {
        empty if empty.is_empty() => "_".into(),
        safe => safe,
    }
}

#[cfg(test)]
mod path_tests {
    use super::sanitize;

    #[test]
    fn names_never_leave_the_output_directory() {
        for (name, safe) in [
            ("..", "___"),
            (".", "__"),
            ("", "_"),
            ("a/../b", "a_.._b"),
            ("web-1.x", "web-1.x"),
        ] {
            assert_eq!(super::component(name), safe, "{name:?}");
            assert!(!sanitize(name).contains('/'));
        }
    }
}

/// One YAML document of a stream: its text and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocText<'a> {
    /// The document's text (without its `---` line).
    pub text: &'a str,
    /// Byte offset of `text` in the stream.
    pub offset: usize,
}

/// Splits a YAML stream at `---` lines (a `---` at column 0, alone or followed by a space).
pub fn split_documents(stream: &str) -> Vec<DocText<'_>> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in stream.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if bare == "---" || bare.starts_with("--- ") || bare == "..." {
            docs.push(DocText {
                text: &stream[start..offset],
                offset: start,
            });
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(DocText {
        text: &stream[start..],
        offset: start,
    });
    docs.retain(|d| !is_blank_yaml(d.text));
    docs
}

/// Whether a document holds nothing but whitespace and comments.
pub fn is_blank_yaml(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim_start();
        t.is_empty() || t.starts_with('#')
    })
}

/// A problem with one rendered document, located by a byte range in its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong.
    pub message: String,
    /// Where in the document text (byte range).
    pub range: Range<usize>,
    /// What to do.
    pub help: Option<String>,
}

impl Problem {
    fn new(message: impl Into<String>, range: Range<usize>) -> Self {
        Problem {
            message: message.into(),
            range,
            help: None,
        }
    }

    fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// The range of the first occurrence of `needle` in `text`, or the first line.
fn range_of(text: &str, needle: &str) -> Range<usize> {
    match text.find(needle) {
        Some(i) => i..i + needle.len(),
        None => {
            let start = text.len() - text.trim_start().len();
            let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
            start..end
        }
    }
}

/// Checks the shape of a parsed document and returns its identity (namespace not yet defaulted).
pub fn identify(value: &Value, text: &str) -> Result<ObjectId, Problem> {
    let Value::Mapping(map) = value else {
        return Err(Problem::new(
            format!(
                "a manifest must be a mapping, this document is {}",
                super::values::kind_name(value)
            ),
            range_of(text, ""),
        ));
    };
    let field = |name: &str| -> Result<String, Problem> {
        match map.get(name) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
            Some(_) => Err(Problem::new(
                format!("`{name}` must be a non-empty string"),
                range_of(text, &format!("{name}:")),
            )),
            None => Err(
                Problem::new(format!("the document has no `{name}`"), range_of(text, ""))
                    .help("every manifest needs apiVersion, kind and metadata.name"),
            ),
        }
    };
    let api_version = field("apiVersion")?;
    let kind = field("kind")?;
    let metadata = match map.get("metadata") {
        Some(Value::Mapping(m)) => m,
        _ => {
            return Err(Problem::new(
                "the document has no `metadata` mapping",
                range_of(text, "metadata:"),
            )
            .help("every manifest needs apiVersion, kind and metadata.name"));
        }
    };
    let name = match metadata.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => {
            let hint = if metadata.contains_key("generateName") {
                "generateName is not supported: a GitOps object needs a stable name to be updated and pruned"
            } else {
                "set metadata.name"
            };
            return Err(Problem::new(
                "`metadata.name` is missing or not a non-empty string",
                range_of(text, "metadata:"),
            )
            .help(hint));
        }
    };
    let namespace = match metadata.get("namespace") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        None | Some(Value::Null) => None,
        Some(_) => {
            return Err(Problem::new(
                "`metadata.namespace` must be a string",
                range_of(text, "namespace:"),
            ));
        }
    };
    for (field, value) in [("name", Some(&name)), ("namespace", namespace.as_ref())] {
        if let Some(why) = value.and_then(|v| lockstep_core::objects::path_segment_problem(v)) {
            return Err(Problem::new(
                format!(
                    "`metadata.{field}` {value:?} cannot name an object: {why}",
                    value = value.map_or("", String::as_str)
                ),
                range_of(text, &format!("{field}:")),
            ));
        }
    }
    Ok(ObjectId {
        group: group_of(&api_version).to_string(),
        kind,
        namespace,
        name,
    })
}

/// Sets `metadata.namespace` (right after `metadata.name`) when it is missing.
pub fn default_namespace(value: &mut Value, namespace: &str) {
    let Some(Value::Mapping(metadata)) = value.get_mut("metadata") else {
        return;
    };
    if metadata.get("namespace").is_some_and(|v| !v.is_null()) {
        return;
    }
    let mut fresh = Mapping::new();
    let old = std::mem::take(metadata);
    let mut placed = false;
    for (k, v) in old {
        if k.as_str() == Some("namespace") {
            continue;
        }
        let is_name = k.as_str() == Some("name");
        fresh.insert(k, v);
        if is_name {
            fresh.insert(Value::from("namespace"), Value::from(namespace));
            placed = true;
        }
    }
    if !placed {
        fresh.insert(Value::from("namespace"), Value::from(namespace));
    }
    *metadata = fresh;
}

/// A sealed reference found in a document: the reference, the YAML path of the string that holds
/// it and whether that place is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The reference (or `None` for text that starts like one but is malformed).
    pub reference: Option<SealedRef>,
    /// The placeholder text as it appears.
    pub text: String,
    /// Where it is, e.g. `spec.template.spec.containers[0].env[1].value`.
    pub at: String,
    /// `None` when allowed, else why not.
    pub refused: Option<String>,
}

/// Finds every sealed placeholder in an object and judges its place: only string values directly
/// under a `v1/Secret`'s `stringData` (embedded anywhere in the string) or `data` (the whole value,
/// one placeholder) are allowed.
pub fn find_refs(value: &Value, id: &ObjectId) -> Vec<Found> {
    let is_secret = id.group.is_empty() && id.kind == "Secret";
    let mut out = Vec::new();
    walk(value, &mut Vec::new(), &mut |path, s, is_key| {
        if !SealedRef::mentioned_in(s) {
            return;
        }
        let found = SealedRef::find_all(s);
        let place = if is_key {
            None
        } else if is_secret && path.len() == 2 && path[0] == "stringData" {
            Some("stringData")
        } else if is_secret && path.len() == 2 && path[0] == "data" {
            Some("data")
        } else {
            None
        };
        let at = display_yaml_path(path);
        let malformed = s.matches(super::sealed::PLACEHOLDER_PREFIX).count() > found.len();
        if malformed {
            out.push(Found {
                reference: None,
                text: s.to_string(),
                at: at.clone(),
                refused: Some(
                    "this text starts like a sealed reference but is not a well-formed one".into(),
                ),
            });
        }
        for (range, r) in found {
            let text = s[range.clone()].to_string();
            let refused = match place {
                None => Some(format!(
                    "a sealed secret may only be used in the data or stringData of a v1 Secret, not in {} `{at}`",
                    id.kind
                )),
                Some("data") if range != (0..s.len()) => Some(format!(
                    "in a Secret's data, `{at}` must be exactly one sealed reference (data is base64); to embed a secret in longer text use stringData"
                )),
                _ => None,
            };
            out.push(Found {
                reference: Some(r),
                text,
                at: at.clone(),
                refused,
            });
        }
    });
    out
}

fn walk(value: &Value, path: &mut Vec<String>, f: &mut dyn FnMut(&[String], &str, bool)) {
    match value {
        Value::String(s) => f(path, s, false),
        Value::Sequence(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(format!("[{i}]"));
                walk(v, path, f);
                path.pop();
            }
        }
        Value::Mapping(m) => {
            for (k, v) in m {
                let key = match k {
                    Value::String(s) => {
                        f(path, s, true);
                        s.clone()
                    }
                    other => yaml_serde::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                path.push(key);
                walk(v, path, f);
                path.pop();
            }
        }
        Value::Tagged(t) => walk(&t.value, path, f),
        _ => {}
    }
}

fn display_yaml_path(path: &[String]) -> String {
    let mut s = String::new();
    for p in path {
        if p.starts_with('[') {
            s.push_str(p);
        } else {
            if !s.is_empty() {
                s.push('.');
            }
            s.push_str(p);
        }
    }
    if s.is_empty() {
        "(top level)".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Value {
        yaml_serde::from_str(text).expect("yaml")
    }

    #[test]
    fn documents_split_at_separator_lines_and_blank_ones_are_dropped() {
        let s = "# c\n---\na: 1\n--- \nb: 2\n---\n# only comment\n---\nc: |\n  ---x\n";
        let docs = split_documents(s);
        let texts: Vec<_> = docs.iter().map(|d| d.text).collect();
        assert_eq!(texts, ["a: 1\n", "b: 2\n", "c: |\n  ---x\n"]);
        assert_eq!(&s[docs[1].offset..docs[1].offset + 4], "b: 2");
    }

    #[test]
    fn identity_needs_api_version_kind_and_name() {
        let v = parse("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n");
        let id = identify(&v, "").expect("valid");
        assert_eq!(id.group, "apps");
        assert_eq!(id.to_string(), "Deployment.apps web");
        let text = "apiVersion: v1\nmetadata: {name: x}\n";
        let p = identify(&parse(text), text).expect_err("no kind");
        assert!(p.message.contains("`kind`"), "{}", p.message);
        let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  generateName: x-\n";
        let p = identify(&parse(text), text).expect_err("no name");
        assert!(p.help.expect("help").contains("generateName"));
        assert_eq!(&text[p.range], "metadata:");
    }

    #[test]
    fn namespace_is_inserted_after_name() {
        let mut v = parse("kind: X\nmetadata:\n  name: a\n  labels: {a: b}\n");
        default_namespace(&mut v, "dev");
        assert_eq!(
            yaml_serde::to_string(&v).expect("emit"),
            "kind: X\nmetadata:\n  name: a\n  namespace: dev\n  labels:\n    a: b\n"
        );
        let mut v = parse("metadata:\n  namespace: other\n  name: a\n");
        default_namespace(&mut v, "dev");
        assert_eq!(v["metadata"]["namespace"].as_str(), Some("other"));
    }

    #[test]
    fn sealed_references_are_only_allowed_in_secret_data_and_string_data() {
        let r = SealedRef {
            file: "environments/dev/secrets.yaml".into(),
            path: vec!["db".into(), "password".into()],
            transform: super::super::sealed::Transform::Plain,
            digest: Some("0a1b2c3d".into()),
        };
        let p = r.placeholder();
        let secret = parse(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: s, annotations: {{a: '{p}'}}}}\nstringData:\n  url: 'postgres://u:{p}@db/x'\ndata:\n  pw: '{p}'\n  bad: 'x{p}'\n"
        ));
        let id = identify(&secret, "").expect("id");
        let found = find_refs(&secret, &id);
        let verdicts: Vec<_> = found
            .iter()
            .map(|f| (f.at.as_str(), f.refused.is_some()))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("metadata.annotations.a", true),
                ("stringData.url", false),
                ("data.pw", false),
                ("data.bad", true)
            ]
        );
        let cm = parse(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata:\n  pw: '{p}'\n"
        ));
        let id = identify(&cm, "").expect("id");
        let found = find_refs(&cm, &id);
        assert!(
            found[0]
                .refused
                .as_deref()
                .expect("refused")
                .contains("ConfigMap")
        );
    }
}
