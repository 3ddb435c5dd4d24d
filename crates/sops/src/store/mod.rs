//! Stores: one per file format, bytes ↔ ordered [`Document`]s plus the raw `sops` metadata value.

pub mod dotenv;
pub mod ini;
pub mod json;
pub mod yaml;

use std::path::Path;

use zeroize::Zeroizing;

use crate::tree::{Document, Item, Value};

/// The file formats sops (and lockstep) read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.yaml`, `.yml`
    Yaml,
    /// `.json`
    Json,
    /// `.env`
    Dotenv,
    /// `.ini`
    Ini,
    /// Anything else: the whole file is one value.
    Binary,
}

/// The names accepted by `--input-type` / `--output-type`.
pub const FORMAT_NAMES: &str = "yaml, json, dotenv, ini, binary";

impl Format {
    /// The format sops picks from a file name.
    pub fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Format::Yaml,
            Some("json") => Format::Json,
            Some("env") => Format::Dotenv,
            Some("ini") => Format::Ini,
            _ => Format::Binary,
        }
    }

    /// Parses a `--input-type` value.
    pub fn from_name(name: &str) -> Option<Format> {
        Some(match name {
            "yaml" | "yml" => Format::Yaml,
            "json" => Format::Json,
            "dotenv" | "env" => Format::Dotenv,
            "ini" => Format::Ini,
            "binary" => Format::Binary,
            _ => return None,
        })
    }
}

/// A file that does not parse in its format; `line` is 1-based when known. Never holds values.
#[derive(Debug, thiserror::Error)]
#[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct StoreError {
    /// 1-based line of the problem, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// Parsed file content.
pub struct Loaded {
    /// The documents, without the `sops` key.
    pub docs: Vec<Document>,
    /// The raw `sops` metadata value, when present.
    pub metadata: Option<Value>,
}

fn split_metadata(mut docs: Vec<Document>) -> Loaded {
    let mut metadata = None;
    for (i, doc) in docs.iter_mut().enumerate() {
        let m = doc.take("sops");
        if i == 0 {
            metadata = m;
        }
    }
    Loaded { docs, metadata }
}

/// Reads a plaintext file (binary: the bytes as the single value `data`).
pub fn load_plain(format: Format, bytes: &[u8]) -> Result<Loaded, StoreError> {
    match format {
        Format::Binary => Ok(Loaded {
            docs: vec![Document::new(vec![Item::Pair(
                "data".into(),
                Value::Bytes(bytes.into()),
            )])],
            metadata: None,
        }),
        other => load_encrypted(other, bytes),
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, StoreError> {
    std::str::from_utf8(bytes).map_err(|e| StoreError {
        line: Some(
            bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1,
        ),
        message: "not valid UTF-8".into(),
    })
}

/// Reads a file in its format, separating the `sops` metadata (binary files are a JSON container).
pub fn load_encrypted(format: Format, bytes: &[u8]) -> Result<Loaded, StoreError> {
    let text = utf8(bytes)?;
    match format {
        Format::Yaml => Ok(split_metadata(yaml::parse(text)?)),
        Format::Json | Format::Binary => Ok(split_metadata(json::parse(text)?)),
        Format::Dotenv => {
            let (docs, metadata) = dotenv::parse(text)?;
            Ok(Loaded { docs, metadata })
        }
        Format::Ini => {
            let (docs, metadata) = ini::parse(text)?;
            Ok(Loaded { docs, metadata })
        }
    }
}

/// Emits documents with metadata (an encrypted file).
pub fn emit_encrypted(
    format: Format,
    docs: &[Document],
    metadata: &Value,
    yaml_indent: usize,
) -> Result<Vec<u8>, StoreError> {
    Ok(match format {
        Format::Yaml => {
            yaml::check_keys(docs)?;
            yaml::emit(docs, Some(metadata), yaml_indent).into_bytes()
        }
        Format::Json => json::emit(docs, Some(metadata), "\t").into_bytes(),
        Format::Binary => {
            json::emit(docs, Some(&single_value_metadata(metadata)), "\t").into_bytes()
        }
        Format::Dotenv => dotenv::emit(docs, Some(metadata))?.into_bytes(),
        Format::Ini => ini::emit(docs, Some(metadata))?.into_bytes(),
    })
}

/// A single-value (binary) file's metadata as sops writes it: without the default
/// `unencrypted_suffix`, which sops leaves out there (and assumes again when reading).
fn single_value_metadata(metadata: &Value) -> Value {
    match metadata {
        Value::Map(items) => Value::Map(
            items
                .iter()
                .filter(|i| {
                    !matches!(i, Item::Pair(k, Value::Str(v))
                        if k == "unencrypted_suffix" && v.expose() == "_unencrypted")
                })
                .map(Item::duplicate)
                .collect(),
        ),
        other => other.duplicate(),
    }
}

/// Emits plaintext documents (binary: the raw bytes of `data`).
pub fn emit_plain(
    format: Format,
    docs: &[Document],
    yaml_indent: usize,
) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    Ok(Zeroizing::new(match format {
        Format::Yaml => {
            yaml::check_keys(docs)?;
            yaml::emit(docs, None, yaml_indent).into_bytes()
        }
        Format::Json => json::emit(docs, None, "\t").into_bytes(),
        Format::Dotenv => dotenv::emit(docs, None)?.into_bytes(),
        Format::Ini => ini::emit(docs, None)?.into_bytes(),
        Format::Binary => match docs.first().and_then(|d| d.items.first()) {
            Some(Item::Pair(k, Value::Bytes(b))) if k == "data" => b.expose().to_vec(),
            Some(Item::Pair(k, Value::Str(s))) if k == "data" => s.expose().as_bytes().to_vec(),
            _ => {
                return Err(StoreError {
                    line: None,
                    message: "binary file without a data value".into(),
                });
            }
        },
    }))
}

/// Emits one decrypted value on its own (`decrypt --extract`): a scalar as its text, a mapping as a
/// YAML document, a list as a YAML document with the single key `value`.
pub fn emit_plain_value(v: &Value, yaml_indent: usize) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(match v {
        Value::Str(s) | Value::Time(s) => s.expose().as_bytes().to_vec(),
        Value::Bytes(b) => b.expose().to_vec(),
        Value::Null => b"null".to_vec(),
        Value::Comment(_) => Vec::new(),
        Value::Map(_) | Value::List(_) => yaml::emit_value(v, yaml_indent).into_bytes(),
        scalar => scalar
            .scalar_text()
            .map(|t| t.expose().as_bytes().to_vec())
            .unwrap_or_default(),
    })
}

/// Flattens a metadata tree for dotenv/INI: map keys joined by `__map_`, list indices by `__list_<n>`.
pub fn flatten(v: &Value) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Map(items) => {
                for item in items {
                    if let Item::Pair(k, child) = item {
                        let key = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}__map_{k}")
                        };
                        walk(&key, child, out);
                    }
                }
            }
            Value::List(values) => {
                for (i, child) in values.iter().enumerate() {
                    walk(&format!("{prefix}__list_{i}"), child, out);
                }
            }
            Value::Str(s) | Value::Time(s) => {
                out.push((prefix.to_string(), s.expose().to_string()))
            }
            Value::Int(i) => out.push((prefix.to_string(), i.expose().to_string())),
            Value::Float(f) => {
                out.push((prefix.to_string(), crate::tree::format_float(*f.expose())))
            }
            Value::Bool(b) => out.push((prefix.to_string(), b.expose().to_string())),
            Value::Bytes(_) | Value::Null | Value::Comment(_) => {}
        }
    }
    let mut out = Vec::new();
    walk("", v, &mut out);
    out
}

/// Rebuilds a metadata tree from flattened `(key, value)` pairs (values stay strings).
pub fn unflatten(pairs: Vec<(String, String)>) -> Result<Value, String> {
    #[derive(Debug)]
    enum Seg {
        Key(String),
        Index(usize),
    }
    fn segments(key: &str) -> Result<Vec<Seg>, String> {
        let mut segs = Vec::new();
        let mut rest = key;
        let first_end = [rest.find("__map_"), rest.find("__list_")]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(rest.len());
        segs.push(Seg::Key(rest[..first_end].to_string()));
        rest = &rest[first_end..];
        while !rest.is_empty() {
            let (is_list, body) = if let Some(b) = rest.strip_prefix("__map_") {
                (false, b)
            } else if let Some(b) = rest.strip_prefix("__list_") {
                (true, b)
            } else {
                return Err(format!("cannot unflatten metadata key {key:?}"));
            };
            let end = [body.find("__map_"), body.find("__list_")]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(body.len());
            let part = &body[..end];
            segs.push(if is_list {
                Seg::Index(
                    part.parse()
                        .map_err(|_| format!("bad list index in metadata key {key:?}"))?,
                )
            } else {
                Seg::Key(part.to_string())
            });
            rest = &body[end..];
        }
        Ok(segs)
    }
    fn insert(node: &mut Value, segs: &[Seg], leaf: String, max: usize) -> Result<(), String> {
        let Some((head, tail)) = segs.split_first() else {
            *node = Value::Str(leaf.into());
            return Ok(());
        };
        match head {
            Seg::Key(k) => {
                if !matches!(node, Value::Map(_)) {
                    *node = Value::Map(vec![]);
                }
                let Value::Map(items) = node else {
                    unreachable!("just set")
                };
                let child = crate::tree::entry(items, k);
                insert(child, tail, leaf, max)
            }
            Seg::Index(i) => {
                if !matches!(node, Value::List(_)) {
                    *node = Value::List(vec![]);
                }
                let Value::List(values) = node else {
                    unreachable!("just set")
                };
                // Keys may come sorted as text (list_10 before list_2), but there cannot be more list
                // items than flattened keys: a bigger index is malformed and must not allocate a huge list.
                if *i >= max {
                    return Err(format!("metadata list index {i} is out of range"));
                }
                while values.len() <= *i {
                    values.push(Value::Null);
                }
                insert(&mut values[*i], tail, leaf, max)
            }
        }
    }
    let mut root = Value::Map(vec![]);
    let max = pairs.len();
    for (k, v) in pairs {
        let segs = segments(&k)?;
        insert(&mut root, &segs, v, max)?;
    }
    Ok(root)
}
