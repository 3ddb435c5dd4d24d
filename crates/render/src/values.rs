//! Values layering: `values.yaml` → `environments/ENV/values.yaml` → `--values` files → `--set`.
//!
//! Maps merge deeply; lists and scalars replace (as in Helm). A `null` in a later layer removes the
//! key, so an environment can drop a default.

use std::sync::Arc;

use yaml_serde::{Mapping, Value};

use super::diagnostic::Diagnostic;
use super::project::yaml_diagnostic;

/// Parses a values file; it must be a mapping (an empty file is an empty mapping).
pub fn parse(file: &str, text: &str) -> Result<Mapping, Diagnostic> {
    if text.trim().is_empty() {
        return Ok(Mapping::new());
    }
    let value: Value = yaml_serde::from_str(text).map_err(|e| yaml_diagnostic(file, text, &e))?;
    match value {
        Value::Mapping(m) => Ok(m),
        Value::Null => Ok(Mapping::new()),
        other => Err(Diagnostic::new(format!(
            "values must be a mapping at the top level, found {}",
            kind_name(&other)
        ))
        .in_file(file)
        .with_snippet(Arc::from(text), 0..text.trim_end().len().min(80), "here")),
    }
}

/// A short name of a YAML value's kind, for messages.
pub fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Merges `over` into `base`: mappings recursively, everything else replaced; `null` removes.
pub fn merge(base: &mut Mapping, over: Mapping) {
    for (key, value) in over {
        match value {
            Value::Null => {
                // A later layer's null removes a default; with nothing to remove it stays a null.
                if base.shift_remove(&key).is_none() {
                    base.insert(key, Value::Null);
                }
            }
            Value::Mapping(over_map) => match base.get_mut(&key) {
                Some(Value::Mapping(base_map)) => merge(base_map, over_map),
                _ => {
                    let mut fresh = Mapping::new();
                    merge(&mut fresh, over_map);
                    base.insert(key, Value::Mapping(fresh));
                }
            },
            other => {
                base.insert(key, other);
            }
        }
    }
}

/// Parses one `--set path=value` (or `--set-string` when `string` is true) into a one-path mapping.
///
/// The path is dot-separated (`\.` for a literal dot). The value is read as a YAML scalar (`true`,
/// `3`, `null`, strings), or kept as a string with `--set-string`.
pub fn parse_set(arg: &str, string: bool) -> Result<Mapping, String> {
    let Some((path, raw)) = split_unescaped(arg, '=') else {
        return Err(format!(
            "--set {arg:?}: expected PATH=VALUE, e.g. --set image.tag=1.2.3"
        ));
    };
    let mut keys = Vec::new();
    let mut current = String::new();
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'.') => {
                current.push('.');
                chars.next();
            }
            '.' => keys.push(std::mem::take(&mut current)),
            '[' => {
                return Err(format!(
                    "--set {arg:?}: list indexes are not supported; put lists in a --values file"
                ));
            }
            c => current.push(c),
        }
    }
    keys.push(current);
    if keys.iter().any(String::is_empty) {
        return Err(format!(
            "--set {arg:?}: empty key in path {path:?}; write it as a.b.c=value"
        ));
    }
    let value = if string {
        Value::String(raw.to_string())
    } else {
        match yaml_serde::from_str::<Value>(raw) {
            Ok(v @ (Value::Bool(_) | Value::Number(_) | Value::String(_))) => v,
            Ok(Value::Null) if raw.trim() == "null" || raw.trim() == "~" => Value::Null,
            _ => Value::String(raw.to_string()),
        }
    };
    let mut keys = keys.into_iter().rev();
    let mut map = Mapping::new();
    if let Some(last) = keys.next() {
        map.insert(Value::String(last), value);
    }
    for key in keys {
        let mut outer = Mapping::new();
        outer.insert(Value::String(key), Value::Mapping(map));
        map = outer;
    }
    Ok(map)
}

fn split_unescaped(s: &str, sep: char) -> Option<(&str, &str)> {
    let i = s.find(sep)?;
    Some((&s[..i], &s[i + sep.len_utf8()..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(text: &str) -> Mapping {
        parse("t.yaml", text).expect("parses")
    }

    #[test]
    fn maps_merge_deeply_lists_and_scalars_replace_null_removes() {
        let mut base = map("a: {b: 1, c: [1, 2], d: x}\ne: keep\nf: gone\n");
        merge(
            &mut base,
            map("a: {c: [3], d: y, n: {m: 1}}\nf: null\ng: null\n"),
        );
        let got = yaml_serde::to_string(&base).expect("emit");
        assert_eq!(
            got,
            "a:\n  b: 1\n  c:\n  - 3\n  d: y\n  n:\n    m: 1\ne: keep\ng: null\n"
        );
    }

    #[test]
    fn set_parses_paths_and_scalars() {
        let m = parse_set("image.tag=1.2", false).expect("ok");
        assert_eq!(
            yaml_serde::to_string(&m).expect("emit"),
            "image:\n  tag: 1.2\n"
        );
        let m = parse_set("image.tag=1.2", true).expect("ok");
        assert_eq!(
            yaml_serde::to_string(&m).expect("emit"),
            "image:\n  tag: '1.2'\n"
        );
        let m = parse_set(r"annotations.a\.b/c=x=y", false).expect("ok");
        assert_eq!(
            yaml_serde::to_string(&m).expect("emit"),
            "annotations:\n  a.b/c: x=y\n"
        );
        let m = parse_set("flag=true", false).expect("ok");
        assert_eq!(yaml_serde::to_string(&m).expect("emit"), "flag: true\n");
        assert!(parse_set("novalue", false).is_err());
        assert!(parse_set("a..b=1", false).is_err());
        assert!(parse_set("a[0]=1", false).is_err());
    }

    #[test]
    fn a_values_file_must_be_a_mapping() {
        let err = parse("environments/dev/values.yaml", "- a\n- b\n").expect_err("list");
        assert!(err.message.contains("a list"), "{}", err.message);
        assert_eq!(err.file.as_deref(), Some("environments/dev/values.yaml"));
        assert!(
            parse("v.yaml", "# only a comment\n")
                .expect("empty")
                .is_empty()
        );
    }
}
