//! Dotenv store: `KEY=value` lines, `#` comments; keys and values are taken as written (no trimming, no
//! unquoting), `\n` in a value means a newline, as in sops. Metadata is flattened into `sops_…` keys.

use super::{StoreError, flatten, unflatten};
use crate::tree::{Comment, Document, Item, Value};

/// Parses dotenv text into one document and the raw metadata (`sops_` keys), if any.
pub fn parse(text: &str) -> Result<(Vec<Document>, Option<Value>), StoreError> {
    let mut items = Vec::new();
    let mut meta = Vec::new();
    for (n, line) in text.split('\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            items.push(Item::Comment(Comment {
                text: c.into(),
                inline: false,
            }));
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(StoreError {
                line: Some(n + 1),
                message: "expected KEY=value or a # comment".into(),
            });
        };
        let v = v.replace("\\n", "\n");
        if let Some(mk) = k.strip_prefix("sops_") {
            meta.push((mk.to_string(), v));
        } else {
            items.push(Item::Pair(k.to_string(), Value::Str(v.into())));
        }
    }
    let metadata = if meta.is_empty() {
        None
    } else {
        Some(unflatten(meta).map_err(|m| StoreError {
            line: None,
            message: m,
        })?)
    };
    Ok((vec![Document::new(items)], metadata))
}

/// Emits one document; nested values cannot be represented and are an error naming the key.
pub fn emit(docs: &[Document], metadata: Option<&Value>) -> Result<String, StoreError> {
    let mut out = String::new();
    if let Some(doc) = docs.first() {
        for item in &doc.items {
            match item {
                Item::Comment(c) => {
                    out.push('#');
                    out.push_str(c.text.expose());
                    out.push('\n');
                }
                Item::Pair(k, v) => {
                    if matches!(v, Value::Map(_) | Value::List(_)) {
                        return Err(StoreError {
                            line: None,
                            message: format!(
                                "{k}: dotenv files hold flat KEY=value pairs, not a {}",
                                v.kind()
                            ),
                        });
                    }
                    out.push_str(k);
                    out.push('=');
                    out.push_str(
                        &v.scalar_text()
                            .unwrap_or_default()
                            .expose()
                            .replace('\n', "\\n"),
                    );
                    out.push('\n');
                }
            }
        }
    }
    if let Some(m) = metadata {
        for (k, v) in flatten(m) {
            out.push_str("sops_");
            out.push_str(&k);
            out.push('=');
            out.push_str(&v.replace('\n', "\\n"));
            out.push('\n');
        }
    }
    Ok(out)
}
