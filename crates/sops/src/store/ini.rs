//! INI store: sections become top-level mappings of string values (trimmed and unquoted as go-ini does),
//! `;`/`#` comments; metadata lives in a `[sops]` section, flattened.

use super::{StoreError, flatten, unflatten};
use crate::tree::{Comment, Document, Item, Value};

fn unquote(v: &str) -> String {
    let v = v.trim();
    for q in ["\"\"\"", "\"", "`"] {
        if v.len() >= 2 * q.len() && v.starts_with(q) && v.ends_with(q) {
            return v[q.len()..v.len() - q.len()].to_string();
        }
    }
    v.to_string()
}

/// Parses INI text into one document (sections as mappings) and the raw `[sops]` metadata, if any.
pub fn parse(text: &str) -> Result<(Vec<Document>, Option<Value>), StoreError> {
    let mut sections: Vec<(String, Vec<Item>)> = vec![("DEFAULT".into(), vec![])];
    let mut lines = text.split('\n').enumerate().peekable();
    while let Some((n, raw)) = lines.next() {
        let line = raw.trim_end_matches('\r').trim();
        if line.is_empty() {
            continue;
        }
        let current = &mut sections.last_mut().expect("DEFAULT section exists").1;
        if let Some(c) = line.strip_prefix(';').or_else(|| line.strip_prefix('#')) {
            current.push(Item::Comment(Comment {
                text: c.trim_start().into(),
                inline: false,
            }));
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            let name = name.strip_suffix(']').ok_or_else(|| StoreError {
                line: Some(n + 1),
                message: "section header without closing ]".into(),
            })?;
            let name = name.trim().to_string();
            if sections.iter().any(|(s, _)| *s == name) && name != "DEFAULT" {
                return Err(StoreError {
                    line: Some(n + 1),
                    message: format!("duplicate section [{name}]"),
                });
            }
            if name != "DEFAULT" {
                sections.push((name, vec![]));
            }
            continue;
        }
        let Some((k, v)) = line.split_once('=').or_else(|| line.split_once(':')) else {
            return Err(StoreError {
                line: Some(n + 1),
                message: "expected key = value, [section] or a ; comment".into(),
            });
        };
        let mut value = v.trim().to_string();
        if value.starts_with("\"\"\"") && !(value.len() >= 6 && value.ends_with("\"\"\"")) {
            // go-ini multi-line value: """ … """ across lines.
            let mut buf = value[3..].to_string();
            loop {
                let Some((_, next)) = lines.next() else {
                    return Err(StoreError {
                        line: Some(n + 1),
                        message: "unterminated \"\"\" value".into(),
                    });
                };
                let next = next.trim_end_matches('\r');
                buf.push('\n');
                if let Some(end) = next.strip_suffix("\"\"\"") {
                    buf.push_str(end);
                    break;
                }
                buf.push_str(next);
            }
            value = buf;
        } else {
            value = unquote(&value);
        }
        current.push(Item::Pair(k.trim().to_string(), Value::Str(value.into())));
    }
    let mut metadata = None;
    let mut items = Vec::new();
    for (name, section) in sections {
        if name == "sops" {
            let pairs = section
                .into_iter()
                .filter_map(|i| match i {
                    Item::Pair(k, Value::Str(v)) => Some((k, v.expose().replace("\\n", "\n"))),
                    _ => None,
                })
                .collect();
            metadata = Some(unflatten(pairs).map_err(|m| StoreError {
                line: None,
                message: m,
            })?);
        } else if !(name == "DEFAULT" && section.is_empty()) {
            items.push(Item::Pair(name, Value::Map(section)));
        }
    }
    Ok((vec![Document::new(items)], metadata))
}

/// What the reader makes of `raw` written as a value.
fn reads_back(raw: &str) -> Option<String> {
    let (docs, _) = parse(&format!("[s]\nk = {raw}\n")).ok()?;
    match docs.first()?.items.first()? {
        Item::Pair(_, Value::Map(items)) if items.len() == 1 => match &items[0] {
            Item::Pair(_, Value::Str(s)) => Some(s.expose().to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// Writes `k = v` so that reading it back gives the same key and value; keys that INI cannot carry are
/// an error naming them.
fn write_value(out: &mut String, k: &str, v: &str) -> Result<(), StoreError> {
    let bad_key = k.is_empty()
        || k != k.trim()
        || k.contains(['=', ':', '\n', '\r'])
        || k.starts_with(['[', ';', '#']);
    if bad_key {
        return Err(StoreError {
            line: None,
            message: format!("the key {k:?} cannot be written to an INI file"),
        });
    }
    // Candidate spellings, plainest first; the first one the reader turns back into `v` is written.
    let candidates = [
        v.to_string(),
        format!("`{v}`"),
        format!("\"{v}\""),
        format!("\"\"\"{v}\"\"\""),
    ];
    let Some(text) = candidates
        .into_iter()
        .find(|c| reads_back(c).as_deref() == Some(v))
    else {
        return Err(StoreError {
            line: None,
            message: format!(
                "{k}: the value cannot be written to an INI file so that it reads back the same"
            ),
        });
    };
    out.push_str(k);
    out.push_str(" = ");
    out.push_str(&text);
    out.push('\n');
    Ok(())
}

/// Emits the sections, then `[sops]` with the flattened metadata.
pub fn emit(docs: &[Document], metadata: Option<&Value>) -> Result<String, StoreError> {
    let mut out = String::new();
    if let Some(doc) = docs.first() {
        for item in &doc.items {
            match item {
                Item::Comment(c) => {
                    out.push_str("; ");
                    out.push_str(c.text.expose());
                    out.push('\n');
                }
                Item::Pair(section, Value::Map(items)) => {
                    if !out.is_empty() {
                        out.push('\n');
                    }
                    out.push_str(&format!("[{section}]\n"));
                    for item in items {
                        match item {
                            Item::Comment(c) => {
                                out.push_str("; ");
                                out.push_str(c.text.expose());
                                out.push('\n');
                            }
                            Item::Pair(k, v) => {
                                let t = v.scalar_text().ok_or_else(|| StoreError {
                                    line: None,
                                    message: format!(
                                        "{section}.{k}: INI values must be scalars, not a {}",
                                        v.kind()
                                    ),
                                })?;
                                write_value(&mut out, k, t.expose())?;
                            }
                        }
                    }
                }
                Item::Pair(k, v) => {
                    return Err(StoreError {
                        line: None,
                        message: format!(
                            "{k}: the top level of an INI file holds sections (mappings), not a {}",
                            v.kind()
                        ),
                    });
                }
            }
        }
    }
    if let Some(m) = metadata {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str("[sops]\n");
        for (k, v) in flatten(m) {
            write_value(&mut out, &k, &v.replace('\n', "\\n"))?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing: values the reader would unquote or take for a multi-line start are written so
    /// they read back the same, or refused.
    #[test]
    fn regression_values_read_back_the_same() {
        for v in [
            "plain",
            " padded ",
            "\"quoted\"",
            "`tick`",
            "'single'",
            "\"\"\"x",
            "a;b#c",
            "x\"\"\"",
        ] {
            let doc = Document::new(vec![Item::Pair(
                "s".into(),
                Value::Map(vec![Item::Pair("k".into(), Value::Str(v.into()))]),
            )]);
            match emit(std::slice::from_ref(&doc), None) {
                Ok(text) => assert_eq!(
                    parse(&text).expect("reads").0,
                    vec![doc],
                    "{v:?} as {text:?}"
                ),
                Err(e) => assert!(e.message.contains("cannot be written"), "{v:?}: {e}"),
            }
        }
    }
}
