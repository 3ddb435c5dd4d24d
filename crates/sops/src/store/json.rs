//! JSON store (also the container of the binary store): key order kept, integers that fit in 64 bits
//! stay integers, output indented with a tab, escaped and with numbers written as Go's encoder does.

use super::StoreError;
use crate::tree::{Document, Item, Value, format_float};

/// Converts a parsed JSON value to a tree value (integers that fit in 64 bits stay integers).
pub fn from_json(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b.into()),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i.into()),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN).into()),
        },
        serde_json::Value::String(s) => Value::Str(s.into()),
        serde_json::Value::Array(a) => Value::List(a.into_iter().map(from_json).collect()),
        serde_json::Value::Object(o) => Value::Map(
            o.into_iter()
                .map(|(k, v)| Item::Pair(k, from_json(v)))
                .collect(),
        ),
    }
}

/// Parses a JSON object into one document.
pub fn parse(text: &str) -> Result<Vec<Document>, StoreError> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| StoreError {
        line: Some(e.line()),
        message: e.to_string(),
    })?;
    match from_json(v) {
        Value::Map(items) => Ok(vec![Document::new(items)]),
        other => Err(StoreError {
            line: Some(1),
            message: format!(
                "the top level of a JSON file must be an object, found a {}",
                other.kind()
            ),
        }),
    }
}

fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A finite float as Go's `encoding/json` writes it (and so sops): the shortest digits that read back,
/// without an exponent between 1e-6 and 1e21, otherwise `1e+21` / `1.5e-7` (`1` for `1.0`, `-0` for
/// `-0.0`).
fn json_float(f: f64) -> String {
    let abs = f.abs();
    if abs == 0.0 || (1e-6..1e21).contains(&abs) {
        return format_float(f);
    }
    let text = format!("{f:e}");
    match text.split_once('e') {
        Some((mantissa, exp)) if exp.starts_with('-') => format!("{mantissa}e{exp}"),
        Some((mantissa, exp)) => format!("{mantissa}e+{exp:0>2}"),
        None => text,
    }
}

/// The key–value pairs of a mapping's items (JSON drops comments).
fn pairs_of(items: &[Item]) -> Vec<(&str, &Value)> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Pair(k, v) => Some((k.as_str(), v)),
            Item::Comment(_) => None,
        })
        .collect()
}

fn map(out: &mut String, pairs: &[(&str, &Value)], depth: usize, indent: &str) {
    if pairs.is_empty() {
        out.push_str("{}");
        return;
    }
    out.push_str("{\n");
    for (n, (k, v)) in pairs.iter().enumerate() {
        out.push_str(&indent.repeat(depth + 1));
        string(out, k);
        out.push_str(": ");
        value(out, v, depth + 1, indent);
        if n + 1 < pairs.len() {
            out.push(',');
        }
        out.push('\n');
    }
    out.push_str(&indent.repeat(depth));
    out.push('}');
}

fn value(out: &mut String, v: &Value, depth: usize, indent: &str) {
    let pad = |n: usize| indent.repeat(n);
    match v {
        Value::Map(items) => map(out, &pairs_of(items), depth, indent),
        Value::List(values) => {
            let values: Vec<_> = values
                .iter()
                .filter(|v| !matches!(v, Value::Comment(_)))
                .collect();
            if values.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push_str("[\n");
            for (n, v) in values.iter().enumerate() {
                out.push_str(&pad(depth + 1));
                value(out, v, depth + 1, indent);
                if n + 1 < values.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            out.push_str(&pad(depth));
            out.push(']');
        }
        Value::Str(s) | Value::Time(s) => string(out, s.expose()),
        Value::Bytes(b) => string(out, &String::from_utf8_lossy(b.expose())),
        Value::Int(i) => out.push_str(&i.expose().to_string()),
        Value::Float(f) if f.expose().is_finite() => out.push_str(&json_float(*f.expose())),
        // JSON has no NaN/Inf; keep them as strings rather than writing invalid JSON.
        Value::Float(f) => string(out, &format_float(*f.expose())),
        Value::Bool(b) => out.push_str(if *b.expose() { "true" } else { "false" }),
        Value::Null => out.push_str("null"),
        Value::Comment(_) => {}
    }
}

/// Emits one document (JSON has no multi-document form) with `metadata` as the last key `sops`.
pub fn emit(docs: &[Document], metadata: Option<&Value>, indent: &str) -> String {
    let mut pairs = docs.first().map(|d| pairs_of(&d.items)).unwrap_or_default();
    if let Some(m) = metadata {
        pairs.push(("sops", m));
    }
    let mut out = String::new();
    map(&mut out, &pairs, 0, indent);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spellings Go's `encoding/json` gives (checked against sops 3.13.2's output).
    #[test]
    fn floats_are_written_as_go_writes_them() {
        for (f, want) in [
            (1.0, "1"),
            (1.5, "1.5"),
            (-0.0, "-0"),
            (0.0, "0"),
            (0.1, "0.1"),
            (1e300, "1e+300"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (12345678901234567890.0, "12345678901234567000"),
            (0.000001, "0.000001"),
            (1.5e-7, "1.5e-7"),
            (-2.5e-10, "-2.5e-10"),
        ] {
            assert_eq!(json_float(f), want, "{f:?}");
        }
    }
}
