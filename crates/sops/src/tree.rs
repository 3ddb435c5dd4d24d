//! The ordered document tree every store parses into and emits from.
//!
//! Key order, comments and value types survive a round trip, because the SOPS MAC hashes leaf values in
//! document order and each value's type decides its `type:` tag. Decrypted trees hold plaintext, so
//! the tree enforces the plaintext rules by its types rather than by each caller: every leaf and
//! every comment is a [`Plain`], which is wiped when dropped, has no `Clone` and no `Display`; the
//! tree types ([`Value`], [`Item`], [`Comment`], [`Document`]) are not `Clone` either, so a copy of
//! a decrypted tree can only be made inside this crate, where a format demands one (a YAML alias),
//! and is wiping again. `Debug` never shows a value or a comment (only its kind and size): a tree in
//! a log line, a panic message or a test failure cannot leak what it holds. Keys are plain
//! `String`s and are shown: SOPS never encrypts them.

use std::fmt;

use zeroize::Zeroize;

/// A leaf of a tree that may hold plaintext: zeroed when dropped, never cloned, never displayed.
///
/// Reading it is explicit ([`Plain::expose`]); it does not dereference, so neither `.clone()` nor
/// `.to_string()` can quietly make an unwiped copy; its `Debug` shows nothing of the content.
///
/// ```compile_fail
/// # use lockstep_sops::tree::Plain;
/// let secret = Plain::from("hunter2");
/// println!("{secret}"); // no Display
/// ```
/// ```compile_fail
/// # use lockstep_sops::tree::Plain;
/// let secret = Plain::from("hunter2");
/// let copy = secret.clone(); // no Clone
/// ```
#[derive(PartialEq, Default)]
pub struct Plain<T: Zeroize>(T);

impl<T: Zeroize> Plain<T> {
    /// Takes ownership of `value`; the buffer it owns is the one wiped on drop.
    pub fn new(value: T) -> Self {
        Plain(value)
    }

    /// What it holds. The one way in, so every read of plaintext is a visible `expose()`.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: Zeroize + Clone> Plain<T> {
    /// A second wiping copy, for the places a format itself duplicates a value (YAML aliases,
    /// metadata emitted next to a document). Deliberately not `Clone`, and not public.
    pub(crate) fn duplicate(&self) -> Self {
        Plain(self.0.clone())
    }
}

impl<T: Zeroize> Drop for Plain<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<T: Zeroize> From<T> for Plain<T> {
    fn from(value: T) -> Self {
        Plain(value)
    }
}

impl AsRef<str> for Plain<String> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Plain<String> {
    fn from(value: &str) -> Self {
        Plain(value.to_string())
    }
}

impl From<&[u8]> for Plain<Vec<u8>> {
    fn from(value: &[u8]) -> Self {
        Plain(value.to_vec())
    }
}

impl<T: Zeroize> fmt::Debug for Plain<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Plain(<hidden>)")
    }
}

/// A node of a document.
///
/// ```compile_fail
/// # use lockstep_sops::tree::Value;
/// let v = Value::Str("hunter2".into());
/// let copy = v.clone(); // trees are not Clone
/// ```
/// ```compile_fail
/// # use lockstep_sops::tree::Document;
/// let doc = Document::default();
/// let copy = doc.clone(); // nor are documents
/// ```
#[derive(PartialEq)]
pub enum Value {
    /// An ordered mapping (comments are items of it).
    Map(Vec<Item>),
    /// A sequence; comments appear as [`Value::Comment`] elements.
    List(Vec<Value>),
    /// A string.
    Str(Plain<String>),
    /// A 64-bit integer.
    Int(Plain<i64>),
    /// A 64-bit float.
    Float(Plain<f64>),
    /// A boolean.
    Bool(Plain<bool>),
    /// A timestamp, kept as its RFC 3339 text (as sops writes it).
    Time(Plain<String>),
    /// Raw bytes (binary files, and the legacy `bytes` type).
    Bytes(Plain<Vec<u8>>),
    /// null / `~` / empty: never encrypted, never hashed.
    Null,
    /// A comment line inside a sequence.
    Comment(Comment),
}

/// A comment: its text after `#` (or `;`), and whether it stood at the end of the previous line.
#[derive(PartialEq)]
pub struct Comment {
    /// Text after the comment marker, leading space kept (sops encrypts comments too).
    pub text: Plain<String>,
    /// `key: value # text` rather than a line of its own.
    pub inline: bool,
}

/// An item of a mapping.
#[derive(Debug, PartialEq)]
pub enum Item {
    /// `key: value`.
    Pair(String, Value),
    /// A comment line (or inline comment) among the pairs.
    Comment(Comment),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Map(items) => f.debug_tuple("Map").field(items).finish(),
            Value::List(values) => f.debug_tuple("List").field(values).finish(),
            Value::Str(s) => write!(f, "Str(<{} bytes>)", s.expose().len()),
            Value::Time(s) => write!(f, "Time(<{} bytes>)", s.expose().len()),
            Value::Bytes(b) => write!(f, "Bytes(<{} bytes>)", b.expose().len()),
            Value::Int(_) => f.write_str("Int(<hidden>)"),
            Value::Float(_) => f.write_str("Float(<hidden>)"),
            Value::Bool(_) => f.write_str("Bool(<hidden>)"),
            Value::Null => f.write_str("Null"),
            Value::Comment(c) => f.debug_tuple("Comment").field(c).finish(),
        }
    }
}

impl fmt::Debug for Comment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Comment(<{} bytes>{})",
            self.text.expose().len(),
            if self.inline { ", inline" } else { "" }
        )
    }
}

impl Value {
    /// The value under `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(items) => items.iter().find_map(|i| match i {
                Item::Pair(k, v) if k == key => Some(v),
                _ => None,
            }),
            _ => None,
        }
    }

    /// The text of a scalar as sops writes it into flat formats (dotenv, INI, metadata fields);
    /// `None` for mappings, lists and comments.
    pub fn scalar_text(&self) -> Option<Plain<String>> {
        Some(Plain::new(match self {
            Value::Str(s) | Value::Time(s) => s.expose().to_string(),
            Value::Int(i) => i.expose().to_string(),
            Value::Float(f) => format_float(*f.expose()),
            Value::Bool(b) => b.expose().to_string(),
            Value::Bytes(b) => String::from_utf8_lossy(b.expose()).into_owned(),
            Value::Null => String::new(),
            Value::Map(_) | Value::List(_) | Value::Comment(_) => return None,
        }))
    }

    /// [`Value::scalar_text`] as a plain `String`, for the fields that never hold plaintext (the
    /// `sops` metadata block, `.sops.yaml`). Not public: a decrypted value must stay a [`Plain`].
    pub(crate) fn clear_text(&self) -> Option<String> {
        self.scalar_text().map(|t| t.expose().to_string())
    }

    /// A short name of the value's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Map(_) => "mapping",
            Value::List(_) => "list",
            Value::Str(_) => "string",
            Value::Int(_) => "integer",
            Value::Float(_) => "float",
            Value::Bool(_) => "boolean",
            Value::Time(_) => "timestamp",
            Value::Bytes(_) => "bytes",
            Value::Null => "null",
            Value::Comment(_) => "comment",
        }
    }

    /// A second, equally wiping copy (YAML aliases, metadata emitted with a document). Not `Clone`:
    /// only the format code in this crate may duplicate a tree.
    pub(crate) fn duplicate(&self) -> Value {
        match self {
            Value::Map(items) => Value::Map(items.iter().map(Item::duplicate).collect()),
            Value::List(values) => Value::List(values.iter().map(Value::duplicate).collect()),
            Value::Str(s) => Value::Str(s.duplicate()),
            Value::Int(i) => Value::Int(i.duplicate()),
            Value::Float(f) => Value::Float(f.duplicate()),
            Value::Bool(b) => Value::Bool(b.duplicate()),
            Value::Time(s) => Value::Time(s.duplicate()),
            Value::Bytes(b) => Value::Bytes(b.duplicate()),
            Value::Null => Value::Null,
            Value::Comment(c) => Value::Comment(c.duplicate()),
        }
    }
}

impl Item {
    /// See [`Value::duplicate`].
    pub(crate) fn duplicate(&self) -> Item {
        match self {
            Item::Pair(k, v) => Item::Pair(k.clone(), v.duplicate()),
            Item::Comment(c) => Item::Comment(c.duplicate()),
        }
    }
}

impl Comment {
    /// See [`Value::duplicate`].
    pub(crate) fn duplicate(&self) -> Comment {
        Comment {
            text: self.text.duplicate(),
            inline: self.inline,
        }
    }
}

/// The value under `key` in a mapping's items, inserted as null at the end when missing.
pub fn entry<'a>(items: &'a mut Vec<Item>, key: &str) -> &'a mut Value {
    let idx = match items
        .iter()
        .position(|i| matches!(i, Item::Pair(k, _) if k == key))
    {
        Some(p) => p,
        None => {
            items.push(Item::Pair(key.to_string(), Value::Null));
            items.len() - 1
        }
    };
    match &mut items[idx] {
        Item::Pair(_, v) => v,
        Item::Comment(_) => unreachable!("the position found or pushed holds a pair"),
    }
}

/// Where the `i`-th element of a list sits, counting values only (sops paths do not count comments).
pub fn element_index(values: &[Value], i: usize) -> Option<usize> {
    values
        .iter()
        .enumerate()
        .filter(|(_, v)| !matches!(v, Value::Comment(_)))
        .nth(i)
        .map(|(n, _)| n)
}

/// One document of a file: a top-level mapping. Its leaves and comments are wiped when it is dropped.
#[derive(Debug, PartialEq, Default)]
pub struct Document {
    /// The top-level items, `sops` metadata included while the document is encrypted.
    pub items: Vec<Item>,
}

impl Document {
    /// Wraps the items of a top-level mapping.
    pub fn new(items: Vec<Item>) -> Self {
        Document { items }
    }

    /// Removes and returns the top-level value under `key`.
    pub fn take(&mut self, key: &str) -> Option<Value> {
        let pos = self
            .items
            .iter()
            .position(|i| matches!(i, Item::Pair(k, _) if k == key))?;
        match self.items.remove(pos) {
            Item::Pair(_, v) => Some(v),
            Item::Comment(_) => None,
        }
    }

    /// True when a top-level key `key` exists.
    pub fn has(&self, key: &str) -> bool {
        self.items
            .iter()
            .any(|i| matches!(i, Item::Pair(k, _) if k == key))
    }
}

/// Formats a float as sops does (Go `strconv.FormatFloat(f, 'f', -1, 64)`): shortest round-trip digits,
/// never an exponent, `+Inf`/`-Inf`/`NaN`.
pub fn format_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        // Rust's Display is the shortest round-trip representation without exponent.
        format!("{f}")
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    #[test]
    fn debug_shows_keys_and_kinds_but_never_a_value_or_comment() {
        let doc = Document::new(vec![
            Item::Pair("password".into(), Value::Str("hunter2".into())),
            Item::Pair("port".into(), Value::Int(5432.into())),
            Item::Pair(
                "list".into(),
                Value::List(vec![
                    Value::Bool(true.into()),
                    Value::Float(1.5.into()),
                    Value::Time("2026-01-01T00:00:00Z".into()),
                    Value::Bytes(b"raw".to_vec().into()),
                    Value::Comment(Comment {
                        text: " the old one was s3cret".into(),
                        inline: false,
                    }),
                ]),
            ),
        ]);
        let shown = format!("{doc:?} {doc:#?}");
        for secret in ["hunter2", "5432", "true", "1.5", "2026", "raw", "s3cret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("password") && shown.contains("Str(<7 bytes>)"),
            "{shown}"
        );
    }
}
