//! The ordered document tree every store parses into and emits from.
//!
//! Key order, comments and value types survive a round trip, because the SOPS MAC hashes leaf values in
//! document order and each value's type decides its `type:` tag. Decrypted trees hold plaintext, so
//! [`Document`] wipes every string it owns when dropped, and `Debug` never shows a value or a
//! comment (only its kind and size): a tree in a log line, a panic message or a test failure cannot
//! leak what it holds. Keys are shown: SOPS never encrypts them.

use std::fmt;

use zeroize::Zeroize;

/// A node of a document.
#[derive(Clone, PartialEq)]
pub enum Value {
    /// An ordered mapping (comments are items of it).
    Map(Vec<Item>),
    /// A sequence; comments appear as [`Value::Comment`] elements.
    List(Vec<Value>),
    /// A string.
    Str(String),
    /// A 64-bit integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A timestamp, kept as its RFC 3339 text (as sops writes it).
    Time(String),
    /// Raw bytes (binary files, and the legacy `bytes` type).
    Bytes(Vec<u8>),
    /// null / `~` / empty: never encrypted, never hashed.
    Null,
    /// A comment line inside a sequence.
    Comment(Comment),
}

/// A comment: its text after `#` (or `;`), and whether it stood at the end of the previous line.
#[derive(Clone, PartialEq)]
pub struct Comment {
    /// Text after the comment marker, leading space kept.
    pub text: String,
    /// `key: value # text` rather than a line of its own.
    pub inline: bool,
}

/// An item of a mapping.
#[derive(Debug, Clone, PartialEq)]
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
            Value::Str(s) => write!(f, "Str(<{} bytes>)", s.len()),
            Value::Time(s) => write!(f, "Time(<{} bytes>)", s.len()),
            Value::Bytes(b) => write!(f, "Bytes(<{} bytes>)", b.len()),
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
            self.text.len(),
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
    pub fn scalar_text(&self) -> Option<String> {
        Some(match self {
            Value::Str(s) | Value::Time(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => format_float(*f),
            Value::Bool(b) => b.to_string(),
            Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            Value::Null => String::new(),
            Value::Map(_) | Value::List(_) | Value::Comment(_) => return None,
        })
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

    /// Zeroes every string and byte string this value holds (what a plaintext copy needs on drop).
    pub fn wipe(&mut self) {
        match self {
            Value::Map(items) => {
                for item in items.iter_mut() {
                    match item {
                        Item::Pair(k, v) => {
                            k.zeroize();
                            v.wipe();
                        }
                        Item::Comment(c) => c.text.zeroize(),
                    }
                }
            }
            Value::List(values) => values.iter_mut().for_each(Value::wipe),
            Value::Str(s) | Value::Time(s) => s.zeroize(),
            Value::Comment(c) => c.text.zeroize(),
            Value::Bytes(b) => b.zeroize(),
            Value::Int(i) => *i = 0,
            Value::Float(f) => *f = 0.0,
            Value::Bool(b) => *b = false,
            Value::Null => {}
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

/// One document of a file: a top-level mapping. Strings are wiped when it is dropped.
#[derive(Debug, Clone, PartialEq, Default)]
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

impl Drop for Document {
    fn drop(&mut self) {
        for item in self.items.iter_mut() {
            match item {
                Item::Pair(k, v) => {
                    k.zeroize();
                    v.wipe();
                }
                Item::Comment(c) => c.text.zeroize(),
            }
        }
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
            Item::Pair("port".into(), Value::Int(5432)),
            Item::Pair(
                "list".into(),
                Value::List(vec![
                    Value::Bool(true),
                    Value::Float(1.5),
                    Value::Time("2026-01-01T00:00:00Z".into()),
                    Value::Bytes(b"raw".to_vec()),
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
