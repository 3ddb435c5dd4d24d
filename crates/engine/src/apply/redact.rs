//! The API server's messages about objects that carry decrypted values, with the values hidden.
//!
//! A refusal such as `Secret "db" is invalid: data[url]: Invalid value: "postgres://…"` would carry
//! the plaintext into the CLI's output, a Sync's status, its Events and the log. Two passes make
//! sure it does not: every value the server quotes after `Invalid value:` (and its kin) is hidden,
//! and so is every string of the object's own body that appears in the message anyway.

use serde_json::Value as Json;

/// What a hidden value is replaced with.
pub const HIDDEN: &str = "<hidden: the object carries decrypted values>";

/// The phrases after which Kubernetes' field errors print the offending value.
const VALUE_MARKERS: [&str; 4] = [
    "Invalid value: ",
    "Unsupported value: ",
    "Duplicate value: ",
    "Forbidden value: ",
];

/// Strings shorter than this are not looked for in a message (they would hide ordinary words).
const MIN_SCRUBBED_LEN: usize = 4;

/// `message` about an object whose body is `body`, with every value it might reveal hidden.
pub fn hide_values(message: &str, body: &Json) -> String {
    let mut text = hide_quoted(message);
    let mut values = Vec::new();
    body_strings(body, true, &mut values);
    // Longest first, so a value that contains another is hidden whole.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    for v in values {
        if v.len() >= MIN_SCRUBBED_LEN && text.contains(v) {
            text = text.replace(v, HIDDEN);
        }
    }
    text
}

/// Replaces the value after each [`VALUE_MARKERS`] phrase: a Go-quoted string up to its closing
/// quote, anything else up to the next `: ` (or the end).
fn hide_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some((at, marker)) = VALUE_MARKERS
        .iter()
        .filter_map(|m| rest.find(m).map(|i| (i, *m)))
        .min_by_key(|(i, _)| *i)
    {
        let start = at + marker.len();
        out.push_str(&rest[..start]);
        let value = &rest[start..];
        let end = if value.starts_with('"') {
            quoted_end(value)
        } else {
            value.find(": ").unwrap_or(value.len())
        };
        out.push_str(HIDDEN);
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

/// The byte just past the closing quote of the Go-quoted string `s` starts with (all of `s` when
/// it is not closed).
fn quoted_end(s: &str) -> usize {
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return i + 1,
            _ => {}
        }
    }
    s.len()
}

/// Every string in `body` (keys excepted), leaving out the top level's `apiVersion`, `kind` and
/// `metadata`, which name the object rather than carry its values.
fn body_strings<'a>(body: &'a Json, top: bool, into: &mut Vec<&'a str>) {
    match body {
        Json::String(s) => into.push(s),
        Json::Array(items) => items.iter().for_each(|v| body_strings(v, false, into)),
        Json::Object(map) => {
            for (k, v) in map {
                if top && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                body_strings(v, false, into);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_after_field_errors_are_hidden_and_names_kept() {
        let body = serde_json::json!({"kind": "Secret", "metadata": {"name": "db"}});
        let message = r#"Secret "db" is invalid: [data[u]: Invalid value: "p\"w: d", stringData[x]: Unsupported value: 42: supported values: "a"]"#;
        let hidden = hide_values(message, &body);
        assert_eq!(
            hidden,
            format!(
                r#"Secret "db" is invalid: [data[u]: Invalid value: {HIDDEN}, stringData[x]: Unsupported value: {HIDDEN}: supported values: "a"]"#
            )
        );
    }

    #[test]
    fn the_bodys_own_values_are_hidden_wherever_they_appear() {
        let body = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
            "data": {"url": "postgres://user:MARKER@db", "short": "on"}
        });
        let message =
            "admission webhook denied settings: url postgres://user:MARKER@db is not allowed; on";
        let hidden = hide_values(message, &body);
        assert!(!hidden.contains("MARKER"), "{hidden}");
        assert!(hidden.contains("denied settings"), "names stay: {hidden}");
        assert!(hidden.ends_with("; on"), "short strings stay: {hidden}");
    }
}
