//! INI store, read and written as sops reads and writes it (through go-ini with its default options):
//! sections become top-level mappings of string values; a value's quotes, inline `#`/`;` comment and
//! `\` continuation are taken off as go-ini does; the comments above a key (and its inline comment)
//! become one comment item after the key, a section's comment its first item; output aligns the `=` of
//! a section and quotes as go-ini does. Metadata lives in a `[sops]` section, flattened.

use super::{StoreError, flatten, unflatten};
use crate::tree::{Comment, Document, Item, Value};

/// The line-by-line reader: each line with its `\n`, as go-ini's `readUntil('\n')` gives it.
struct Lines<'a> {
    rest: &'a str,
    number: usize,
}

impl<'a> Lines<'a> {
    fn next(&mut self) -> Option<(usize, &'a str)> {
        if self.rest.is_empty() {
            return None;
        }
        let end = self.rest.find('\n').map_or(self.rest.len(), |i| i + 1);
        let (line, rest) = self.rest.split_at(end);
        self.rest = rest;
        self.number += 1;
        Some((self.number, line))
    }
}

fn error(line: usize, message: &str) -> StoreError {
    StoreError {
        line: Some(line),
        message: message.into(),
    }
}

/// The start of an inline comment: go-ini's default takes any `#` or `;`.
fn comment_start(s: &str) -> Option<usize> {
    s.find(['#', ';'])
}

fn surrounded(s: &str, quote: char) -> bool {
    s.len() >= 2
        && s.starts_with(quote)
        && s.ends_with(quote)
        && s[1..s.len() - 1].find(quote).is_none()
}

/// A key name and the offset of its value (go-ini's `readKeyName`, delimiters `=` and `:`).
fn read_key_name(line: &str, n: usize) -> Result<(String, usize), StoreError> {
    let quote = if line.starts_with('"') {
        if line.len() > 6 && line.starts_with("\"\"\"") {
            "\"\"\""
        } else {
            "\""
        }
    } else if line.starts_with('`') {
        "`"
    } else {
        ""
    };
    if !quote.is_empty() {
        let start = quote.len();
        let pos = line[start..]
            .find(quote)
            .ok_or_else(|| error(n, "a quoted key without its closing quote"))?
            + start;
        let delimiter = line[pos + start..]
            .find(['=', ':'])
            .ok_or_else(|| error(n, "expected key = value, [section] or a ; comment"))?;
        return Ok((
            line[start..pos].trim().to_string(),
            pos + delimiter + start + 1,
        ));
    }
    match line.find(['=', ':']) {
        None => Err(error(n, "expected key = value, [section] or a ; comment")),
        Some(0) => Err(error(n, "a key = value line without a key")),
        Some(end) => Ok((line[..end].trim().to_string(), end + 1)),
    }
}

/// A value (go-ini's `readValue`): `"""…"""` and `` `…` `` taken verbatim (across lines when they do
/// not close), otherwise trimmed, `\`-continued, cut at an inline comment and unquoted.
fn read_value(
    input: &str,
    n: usize,
    lines: &mut Lines<'_>,
    comment: &mut String,
) -> Result<String, StoreError> {
    let line = input.trim_start();
    if line.is_empty() {
        return Ok(String::new());
    }
    let quote = if line.len() > 3 && line.starts_with("\"\"\"") {
        "\"\"\""
    } else if line.starts_with('`') {
        "`"
    } else {
        ""
    };
    if !quote.is_empty() {
        let body = &line[quote.len()..];
        return match body.rfind(quote) {
            Some(pos) => Ok(body[..pos].to_string()),
            None => read_multiline(body, quote, n, lines, comment),
        };
    }
    let mut line = line.trim();
    if let Some(head) = line.strip_suffix('\\') {
        return Ok(read_continuation(head, lines));
    }
    if let Some(i) = comment_start(line) {
        comment.push_str(&line[i..]);
        line = line[..i].trim();
    }
    if surrounded(line, '\'') || surrounded(line, '"') {
        line = &line[1..line.len() - 1];
    }
    Ok(line.to_string())
}

fn read_multiline(
    first: &str,
    quote: &str,
    n: usize,
    lines: &mut Lines<'_>,
    comment: &mut String,
) -> Result<String, StoreError> {
    let mut value = first.to_string();
    while let Some((_, next)) = lines.next() {
        if let Some(pos) = next.rfind(quote) {
            let after = next[pos + quote.len()..].trim_end_matches(['\r', '\n']);
            if after.trim().ends_with('\\') {
                value.push_str(next);
                continue;
            }
            value.push_str(&next[..pos]);
            if let Some(i) = comment_start(&next[pos..]) {
                comment.push_str(next[pos + i..].trim());
            }
            return Ok(value);
        }
        value.push_str(next);
    }
    Err(error(n, &format!("a {quote} value that is never closed")))
}

fn read_continuation(head: &str, lines: &mut Lines<'_>) -> String {
    let mut value = head.to_string();
    while let Some((_, next)) = lines.next() {
        let next = next.trim();
        if next.is_empty() {
            break;
        }
        value.push_str(next);
        match value.strip_suffix('\\') {
            Some(v) => value.truncate(v.len()),
            None => break,
        }
    }
    value
}

/// One section as go-ini holds it: its comment, and its keys with theirs (a repeated key overwrites).
#[derive(Default)]
struct Section {
    name: String,
    comment: String,
    keys: Vec<(String, String, String)>,
}

impl Section {
    fn set(&mut self, key: String, value: String, comment: String) -> usize {
        match self.keys.iter().position(|(k, _, _)| *k == key) {
            Some(i) => {
                self.keys[i].1 = value;
                self.keys[i].2 = comment;
                i
            }
            None => {
                self.keys.push((key, value, comment));
                self.keys.len() - 1
            }
        }
    }
}

/// sops's `stripCommentChar`: the leading `;`/`#` characters and spaces go.
fn strip_comment_char(c: &str) -> &str {
    if c.starts_with(';') {
        c.trim_start_matches([';', ' '])
    } else if c.starts_with('#') {
        c.trim_start_matches(['#', ' '])
    } else {
        c
    }
}

fn comment_item(text: &str) -> Item {
    Item::Comment(Comment {
        text: strip_comment_char(text).into(),
        inline: false,
    })
}

/// Parses INI text into one document (sections as mappings) and the raw `[sops]` metadata, if any.
pub fn parse(text: &str) -> Result<(Vec<Document>, Option<Value>), StoreError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = Lines {
        rest: text,
        number: 0,
    };
    let mut sections = vec![Section {
        name: "DEFAULT".into(),
        ..Section::default()
    }];
    let mut comment = String::new();
    let mut counter = 1;
    while let Some((n, raw)) = lines.next() {
        let line = raw.trim_start();
        if line.is_empty() {
            continue;
        }
        if line.starts_with(['#', ';']) {
            comment.push_str(line);
            continue;
        }
        if line.starts_with('[') {
            let close = line
                .rfind(']')
                .ok_or_else(|| error(n, "section header without closing ]"))?;
            let name = &line[1..close];
            if name.is_empty() {
                return Err(error(n, "a section without a name"));
            }
            if let Some(i) = comment_start(&line[close + 1..]) {
                comment.push_str(&line[close + 1 + i..]);
            }
            sections.push(Section {
                name: name.to_string(),
                comment: std::mem::take(&mut comment).trim().to_string(),
                keys: vec![],
            });
            counter = 1;
            continue;
        }
        let (mut key, offset) = read_key_name(line, n)?;
        if key == "-" {
            key = format!("#{counter}");
            counter += 1;
        }
        let value = read_value(&line[offset..], n, &mut lines, &mut comment)?;
        let key_comment = std::mem::take(&mut comment).trim().to_string();
        sections
            .last_mut()
            .expect("the DEFAULT section is always there")
            .set(key, value, key_comment);
    }
    let mut metadata = None;
    let mut items = Vec::new();
    for (i, section) in sections.into_iter().enumerate() {
        if section.name == "sops" {
            let pairs = section
                .keys
                .into_iter()
                .map(|(k, v, _)| (k, v.replace("\\n", "\n")))
                .collect();
            metadata = Some(unflatten(pairs).map_err(|m| StoreError {
                line: None,
                message: m,
            })?);
            continue;
        }
        if i == 0 && section.keys.is_empty() && section.comment.is_empty() {
            continue;
        }
        let mut body = Vec::new();
        // A comment that is only its `;`/`#` is kept by sops as an empty one, which nothing writes.
        if !strip_comment_char(&section.comment).is_empty() {
            body.push(comment_item(&section.comment));
        }
        for (k, v, c) in section.keys {
            body.push(Item::Pair(k, Value::Str(v.into())));
            if !strip_comment_char(&c).is_empty() {
                body.push(comment_item(&c));
            }
        }
        items.push(Item::Pair(section.name, Value::Map(body)));
    }
    Ok((vec![Document::new(items)], metadata))
}

/// What the reader makes of the line `key = value` in a section of its own.
fn reads_back(key: &str, value: &str) -> Option<(String, String)> {
    let (docs, _) = parse(&format!("[s]\n{key} = {value}\n")).ok()?;
    match docs.first()?.items.first()? {
        Item::Pair(_, Value::Map(items)) if items.len() == 1 => match &items[0] {
            Item::Pair(k, Value::Str(s)) => Some((k.clone(), s.expose().to_string())),
            _ => None,
        },
        _ => None,
    }
}

/// go-ini's spelling of a key: in backticks when it holds `"` or a delimiter, in `"""` when it holds a
/// backtick.
fn quote_key(k: &str) -> String {
    if k.contains(['"', '=', ':']) {
        format!("`{k}`")
    } else if k.contains('`') {
        format!("\"\"\"{k}\"\"\"")
    } else {
        k.to_string()
    }
}

/// go-ini's spelling of a value, or — where that would not read back the same — the first spelling
/// that does; `None` when none does.
fn quote_value(v: &str) -> Vec<String> {
    let go_ini = if v.contains(['\n', '`']) {
        format!("\"\"\"{v}\"\"\"")
    } else if v.contains(['#', ';']) {
        format!("`{v}`")
    } else if v.trim().len() != v.len() {
        format!("\"{v}\"")
    } else {
        v.to_string()
    };
    vec![
        go_ini,
        v.to_string(),
        format!("`{v}`"),
        format!("\"{v}\""),
        format!("\"\"\"{v}\"\"\""),
    ]
}

/// A key and value spelled so that reading them back gives the same; keys or values INI cannot carry
/// are an error naming the key.
fn spell(section: &str, k: &str, v: &str) -> Result<(String, String), StoreError> {
    let key = quote_key(k);
    let fail = |what: &str| StoreError {
        line: None,
        message: format!(
            "{section}.{k}: {what} cannot be written to an INI file so that it reads back the same"
        ),
    };
    // A key starting with a byte-order mark would lose it at the start of a file.
    if k.starts_with('\u{feff}')
        || reads_back(&key, "x").map(|(back, _)| back).as_deref() != Some(k)
    {
        return Err(fail("the key"));
    }
    let value = quote_value(v)
        .into_iter()
        .find(|c| reads_back(&key, c).map(|(_, back)| back).as_deref() == Some(v))
        .ok_or_else(|| fail("the value"))?;
    Ok((key, value))
}

/// One section as sops hands it to go-ini.
struct OutSection<'a> {
    name: &'a str,
    comment: Option<String>,
    keys: Vec<(String, String, Option<String>)>,
}

/// sops's `encodeTree`: a section's first comment is the section's; a later one belongs to the key
/// before it (written above that key); top-level comments are dropped, and so are empty ones (go-ini
/// writes a comment only when it has text).
fn sections_of(doc: &Document) -> Result<Vec<OutSection<'_>>, StoreError> {
    let mut out = Vec::new();
    for item in &doc.items {
        let (name, items) = match item {
            Item::Comment(_) => continue,
            Item::Pair(name, Value::Map(items)) => (name, items),
            Item::Pair(k, v) => {
                return Err(StoreError {
                    line: None,
                    message: format!(
                        "{k}: the top level of an INI file holds sections (mappings), not a {}",
                        v.kind()
                    ),
                });
            }
        };
        let mut section = OutSection {
            name,
            comment: None,
            keys: vec![],
        };
        let mut rest = items.as_slice();
        if let Some((Item::Comment(c), tail)) = rest.split_first() {
            section.comment = Some(c.text.expose().to_string()).filter(|c| !c.is_empty());
            rest = tail;
        }
        let mut last = None;
        for item in rest {
            match item {
                Item::Comment(c) => {
                    if let Some(i) = last {
                        let key: &mut (String, String, Option<String>) = &mut section.keys[i];
                        key.2 = Some(c.text.expose().to_string()).filter(|c| !c.is_empty());
                    }
                }
                Item::Pair(k, v) => {
                    let text = v.scalar_text().ok_or_else(|| StoreError {
                        line: None,
                        message: format!(
                            "{name}.{k}: INI values must be scalars, not a {}",
                            v.kind()
                        ),
                    })?;
                    let (key, value) = spell(name, k, text.expose())?;
                    last = Some(match section.keys.iter().position(|(q, _, _)| *q == key) {
                        Some(i) => {
                            section.keys[i].1 = value;
                            i
                        }
                        None => {
                            section.keys.push((key, value, None));
                            section.keys.len() - 1
                        }
                    });
                }
            }
        }
        out.push(section);
    }
    Ok(out)
}

/// go-ini's comment lines: each keeps its `;`/`#` (one space after it) or gets `; `.
fn write_comment(out: &mut String, comment: &str, trim: bool) {
    for line in comment.split('\n') {
        match line.chars().next() {
            Some(c @ ('#' | ';')) => {
                out.push(c);
                out.push(' ');
                out.push_str(line[1..].trim());
            }
            _ => {
                out.push_str("; ");
                out.push_str(if trim { line.trim() } else { line });
            }
        }
        out.push('\n');
    }
}

/// Emits the sections, then `[sops]` with the flattened metadata, as go-ini's `WriteTo` does.
pub fn emit(docs: &[Document], metadata: Option<&Value>) -> Result<String, StoreError> {
    let mut sections = match docs.first() {
        Some(doc) => sections_of(doc)?,
        None => vec![],
    };
    if let Some(m) = metadata {
        let mut keys = Vec::new();
        for (k, v) in flatten(m) {
            let (key, value) = spell("sops", &k, &v.replace('\n', "\\n"))?;
            keys.push((key, value, None));
        }
        sections.push(OutSection {
            name: "sops",
            comment: None,
            keys,
        });
    }
    let mut out = String::new();
    let count = sections.len();
    for (i, section) in sections.iter().enumerate() {
        if let Some(c) = &section.comment {
            write_comment(&mut out, c, false);
        }
        if i > 0 || !section.name.eq_ignore_ascii_case("DEFAULT") {
            out.push('[');
            out.push_str(section.name);
            out.push_str("]\n");
        } else if section.keys.is_empty() {
            continue;
        }
        // go-ini aligns to the longest key as written (with the quotes it adds).
        let width = section
            .keys
            .iter()
            .map(|(k, _, _)| k.len())
            .max()
            .unwrap_or(0);
        for (key, value, comment) in &section.keys {
            if let Some(c) = comment {
                write_comment(&mut out, c, true);
            }
            out.push_str(key);
            out.push_str(&" ".repeat(width - key.len()));
            out.push_str(" = ");
            out.push_str(value);
            out.push('\n');
        }
        if i + 1 < count {
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(items: Vec<Item>) -> Document {
        Document::new(vec![Item::Pair("s".into(), Value::Map(items))])
    }

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
            "ends\\",
            "a\nb",
        ] {
            let doc = section(vec![Item::Pair("k".into(), Value::Str(v.into()))]);
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

    /// go-ini's reading, as sops 3.13.2 showed it: inline comments cut values (any `#` or `;`), quotes
    /// come off, comments gather after their key, a section's comment is its first item.
    #[test]
    fn values_and_comments_are_read_as_go_ini_reads_them() {
        let text = "; top\n[a] ; of a\n; c1\n# c2\nk1 = v #inline\nk2 = 'q'\nk3 = \"d\"\nk4 = `x;y`\nk5 = cont\\\n  inued\nk6 = \"\"\"two\nlines\"\"\"\n- = auto\nk1 = again\n";
        let (docs, _) = parse(text).expect("parses");
        let Item::Pair(name, Value::Map(items)) = &docs[0].items[0] else {
            panic!("a section")
        };
        assert_eq!(name, "a");
        let shown: Vec<String> = items
            .iter()
            .map(|i| match i {
                Item::Pair(k, v) => format!("{k}={}", v.scalar_text().expect("scalar").expose()),
                Item::Comment(c) => format!("#{}", c.text.expose()),
            })
            .collect();
        assert_eq!(
            shown,
            [
                "#top\n; of a",
                "k1=again",
                "k2=q",
                "k3=d",
                "k4=x;y",
                "k5=continued",
                "k6=two\nlines",
                "#1=auto",
            ]
        );
    }

    /// go-ini's writing: `=` aligned per section, comments above their key, quotes only where needed.
    #[test]
    fn output_aligns_and_quotes_as_go_ini_writes() {
        let doc = section(vec![
            Item::Comment(Comment {
                text: "about s".into(),
                inline: false,
            }),
            Item::Pair("k".into(), Value::Str("v".into())),
            Item::Comment(Comment {
                text: "about k".into(),
                inline: false,
            }),
            Item::Pair("longer".into(), Value::Str("a;b".into())),
            Item::Pair("a:b".into(), Value::Str(" pad".into())),
        ]);
        assert_eq!(
            emit(std::slice::from_ref(&doc), None).expect("emits"),
            "; about s\n[s]\n; about k\nk      = v\nlonger = `a;b`\n`a:b`  = \" pad\"\n"
        );
    }
}
