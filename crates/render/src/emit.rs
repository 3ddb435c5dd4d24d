//! Writing rendered objects as YAML: block style, 2-space indent, sequences not indented under
//! their key (the layout `yaml_serde`/libyaml produce), several times faster than going through
//! serde, and safer for Kubernetes: strings that YAML 1.1 would read as something else (`yes`,
//! `on`, `0o17`, `1_000`, `2024-01-01`…) are quoted, because the API server's YAML reader is 1.1.

use std::fmt::Write as _;

use yaml_serde::{Mapping, Value};

/// The YAML text of a value, ending in a newline.
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::with_capacity(512);
    if write_top(&mut out, v).is_none() {
        // Tags and non-scalar keys are rare in manifests; the serde emitter handles them.
        return yaml_serde::to_string(v).unwrap_or_else(|e| {
            format!("# lockstep: this object could not be written as YAML: {e}\n")
        });
    }
    out
}

fn write_top(out: &mut String, v: &Value) -> Option<()> {
    match v {
        Value::Mapping(m) if !m.is_empty() => write_map(out, m, 0, false),
        Value::Sequence(s) if !s.is_empty() => write_seq(out, s, 0, false),
        Value::String(s) if is_literal(s) => write_literal(out, s, 2),
        other => {
            write_scalar(out, other)?;
            out.push('\n');
            Some(())
        }
    }
}

fn pad(out: &mut String, indent: usize) {
    for _ in 0..indent {
        out.push(' ');
    }
}

fn write_map(out: &mut String, m: &Mapping, indent: usize, inline_first: bool) -> Option<()> {
    for (i, (k, v)) in m.iter().enumerate() {
        if !(i == 0 && inline_first) {
            pad(out, indent);
        }
        match k {
            Value::String(s) if !s.contains('\n') => write_str(out, s),
            Value::Null | Value::Bool(_) | Value::Number(_) => write_scalar(out, k)?,
            _ => return None,
        }
        out.push(':');
        write_child(out, v, indent, true)?;
    }
    Some(())
}

fn write_seq(out: &mut String, s: &[Value], indent: usize, inline_first: bool) -> Option<()> {
    for (i, item) in s.iter().enumerate() {
        if !(i == 0 && inline_first) {
            pad(out, indent);
        }
        out.push('-');
        write_child(out, item, indent, false)?;
    }
    Some(())
}

/// Writes what follows `key:` (in a mapping) or `-` (in a sequence) at `indent`.
fn write_child(out: &mut String, v: &Value, indent: usize, in_map: bool) -> Option<()> {
    match v {
        Value::Mapping(m) if !m.is_empty() => {
            if in_map {
                out.push('\n');
                write_map(out, m, indent + 2, false)
            } else {
                out.push(' ');
                write_map(out, m, indent + 2, true)
            }
        }
        Value::Sequence(s) if !s.is_empty() => {
            if in_map {
                // Sequences under a key are not indented (`key:\n- a`).
                out.push('\n');
                write_seq(out, s, indent, false)
            } else {
                out.push(' ');
                write_seq(out, s, indent + 2, true)
            }
        }
        Value::String(s) if is_literal(s) => {
            out.push(' ');
            write_literal(out, s, indent + 2)
        }
        Value::Tagged(_) => None,
        other => {
            out.push(' ');
            write_scalar(out, other)?;
            out.push('\n');
            Some(())
        }
    }
}

fn write_scalar(out: &mut String, v: &Value) -> Option<()> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_str(out, s),
        Value::Mapping(m) if m.is_empty() => out.push_str("{}"),
        Value::Sequence(s) if s.is_empty() => out.push_str("[]"),
        _ => return None,
    }
    Some(())
}

/// Multi-line text that reads back exactly from a literal block (`|`).
fn is_literal(s: &str) -> bool {
    if !s.contains('\n') || s.trim().is_empty() {
        return false;
    }
    if s.chars()
        .any(|c| (c.is_control() && c != '\n' && c != '\t') || is_special(c))
    {
        return false;
    }
    // The first non-empty line sets the block's indentation: it must not start with blanks, and no
    // blank-only line may come before it.
    for line in s.split('\n') {
        if line.is_empty() {
            continue;
        }
        return !line.starts_with([' ', '\t']);
    }
    false
}

fn write_literal(out: &mut String, s: &str, indent: usize) -> Option<()> {
    let body = s.trim_end_matches('\n');
    let trailing = s.len() - body.len();
    out.push('|');
    match trailing {
        0 => out.push('-'),
        1 => {}
        _ => out.push('+'),
    }
    out.push('\n');
    for line in body.split('\n') {
        if !line.is_empty() {
            pad(out, indent);
            out.push_str(line);
        }
        out.push('\n');
    }
    for _ in 1..trailing {
        out.push('\n');
    }
    Some(())
}

fn is_special(c: char) -> bool {
    matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}')
}

fn write_str(out: &mut String, s: &str) {
    if !needs_quotes(s) {
        out.push_str(s);
    } else if !s.chars().any(|c| c.is_control() || is_special(c)) {
        out.push('\'');
        out.push_str(&s.replace('\'', "''"));
        out.push('\'');
    } else {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() || is_special(c) => {
                    let _ = write!(out, "\\u{:04X}", c as u32);
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Words YAML 1.1 or 1.2 reads as null, booleans or special floats.
const RESERVED: &[&str] = &[
    "~", "null", "Null", "NULL", "true", "True", "TRUE", "false", "False", "FALSE", "y", "Y",
    "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF", "<<",
    "=",
];

/// Whether YAML 1.1 (the API server's reader) or 1.2 could read `s` as a number or a timestamp.
fn is_numberish(s: &str) -> bool {
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let lower = unsigned.to_ascii_lowercase();
    if matches!(lower.as_str(), ".inf" | ".nan") {
        return true;
    }
    let digits: String = lower.chars().filter(|&c| c != '_').collect();
    let all = |t: &str, radix: u32| !t.is_empty() && t.chars().all(|c| c.is_digit(radix));
    if let Some(rest) = digits.strip_prefix("0x") {
        return all(rest, 16);
    }
    if let Some(rest) = digits.strip_prefix("0o") {
        return all(rest, 8);
    }
    if let Some(rest) = digits.strip_prefix("0b") {
        return all(rest, 2);
    }
    if all(&digits, 10) {
        return true;
    }
    // Sexagesimal (1.1): 1:20, 190:20:30.15
    if digits.contains(':') {
        let (whole, _frac) = digits.split_once('.').unwrap_or((&digits, ""));
        if whole.split(':').all(|p| all(p, 10)) {
            return true;
        }
    }
    // Floats: (.d+ | d+(.d*)?)([e][+-]?d+)?
    let (mantissa, exponent) = match digits.split_once('e') {
        Some((m, e)) => (m, Some(e)),
        None => (digits.as_str(), None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            (int.is_empty() && all(frac, 10))
                || (all(int, 10) && (frac.is_empty() || all(frac, 10)))
        }
        None => all(mantissa, 10),
    };
    let exponent_ok = exponent.is_none_or(|e| all(e.strip_prefix(['+', '-']).unwrap_or(e), 10));
    if mantissa_ok && exponent_ok {
        return true;
    }
    // Timestamps: 2001-12-14, 2001-12-14t21:59:43.10-05:00, 2001-12-14 21:59:43.10 -5
    let b = s.as_bytes();
    b.len() >= 8 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[5].is_ascii_digit()
}

/// Whether a string must be quoted to read back as the same string in YAML 1.1 and 1.2.
pub fn needs_quotes(s: &str) -> bool {
    let b = s.as_bytes();
    let Some(&first) = b.first() else {
        return true;
    };
    if RESERVED.contains(&s) {
        return true;
    }
    // Anything number-like (ints, floats, hex/octal/binary, 1_000, 1:20, dates, .inf/.nan).
    let second = b.get(1).copied();
    if (first.is_ascii_digit() || matches!(first, b'+' | b'-' | b'.')) && is_numberish(s) {
        return true;
    }
    // Indicators that start another construct.
    if b"?:,[]{}#&*!|>'\"%@`-".contains(&first) {
        let continues_plain =
            matches!(first, b'-' | b'?' | b':') && second.is_some_and(|c| c != b' ' && c != b'\t');
        if !continues_plain {
            return true;
        }
    }
    if s.starts_with("---") || s.starts_with("...") {
        return true;
    }
    if s.starts_with([' ', '\t']) || s.ends_with([' ', '\t']) || s.ends_with(':') {
        return true;
    }
    if s.contains(": ") || s.contains(":\t") || s.contains(" #") || s.contains("\t#") {
        return true;
    }
    s.chars().any(|c| c.is_control() || is_special(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(v: &Value) {
        let text = to_yaml(v);
        let back: Value = yaml_serde::from_str(&text)
            .unwrap_or_else(|e| panic!("emitted YAML does not parse: {e}\n{text}"));
        assert_eq!(&back, v, "round trip changed the value:\n{text}");
    }

    #[test]
    fn layout_matches_the_serde_emitter_for_manifests() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels:\n    a: b\n  annotations: {}\nspec:\n  replicas: 3\n  args:\n  - serve\n  - --port\n  - '8080'\n  items:\n  - name: a\n    value: x\n  - - nested\n    - list\n  - []\n  config: |\n    line one\n    line two\n  strip: |-\n    no newline\n  keep: |+\n    two newlines\n\n  empty: ''\n  json: '{\"a\":1}'\n  float: 1.5\n  nothing: null\n  'on': 'yes'\n  sched: 0 3 * * *\n";
        let v: Value = yaml_serde::from_str(text).expect("parse");
        assert_eq!(
            to_yaml(&v),
            yaml_serde::to_string(&v)
                .expect("serde")
                .replace("on: yes", "'on': 'yes'")
        );
        round_trip(&v);
    }

    #[test]
    fn yaml_1_1_words_and_numbers_are_quoted() {
        for s in [
            "yes",
            "No",
            "on",
            "OFF",
            "y",
            "~",
            "",
            "0o17",
            "0x1F",
            "1_000",
            "1:20",
            "012",
            "1e3",
            ".5",
            "-.inf",
            ".NaN",
            "2024-01-01",
            "-",
            "- a",
            "#x",
            "a: b",
            "a #b",
            "x:",
            " a",
            "a ",
            "---",
            "@x",
            "`x",
            "%x",
            "*x",
            "&x",
            "!x",
            "|x",
            ">x",
            "'x",
            "\"x",
            "{x",
            "[x",
            "<<",
        ] {
            assert!(needs_quotes(s), "{s:?} should be quoted");
        }
        for s in [
            "web",
            "1.8.2",
            "--queue=orders",
            "-x",
            "a:b",
            "a#b",
            "0 3 * * *",
            "http://x:80/y",
            "registry.example.com/shop/web:1.8.2",
            "<sealed:environments/dev/secrets.yaml#/a/b>",
        ] {
            assert!(!needs_quotes(s), "{s:?} should stay plain");
        }
    }

    fn arb_string() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9 .:#'\"\\-_\n\t\\\\{}\\[\\],&*!|>%@`~?=<]{0,12}",
            Just("yes".to_string()),
            Just("0o17".to_string()),
            Just("\n\n".to_string()),
            Just(" lead\nx".to_string()),
            Just("a\r\nb".to_string()),
            Just("x\u{85}y".to_string()),
        ]
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| Value::Number(i.into())),
            (-1e9f64..1e9).prop_map(|f| Value::Number(f.into())),
            arb_string().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
                prop::collection::vec((arb_string(), inner), 0..4).prop_map(|pairs| {
                    let mut m = Mapping::new();
                    for (k, v) in pairs {
                        m.insert(Value::String(k), v);
                    }
                    Value::Mapping(m)
                }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn any_value_reads_back_as_itself(v in arb_value()) {
            round_trip(&v);
        }
    }
}
