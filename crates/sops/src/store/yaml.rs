//! YAML store: multi-document streams with key order, comments and value types kept.
//!
//! Plain scalars are typed as sops (go-yaml v3) types them, because the type decides both the `type:`
//! tag and the bytes the MAC hashes. Output uses sops's layout (4-space indent, sequences indented
//! under their key) so files diff cleanly against files `sops` wrote.

use std::collections::HashMap;

use granit_parser::{Event, Parser, Placement, ScalarStyle};

use super::StoreError;
use crate::tree::{Comment, Document, Item, Value, format_float};

/// Resolves a plain (unquoted) scalar the way go-yaml v3 does.
pub fn resolve_plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true.into()),
        "false" | "False" | "FALSE" => return Value::Bool(false.into()),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY.into());
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY.into()),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN.into()),
        _ => {}
    }
    let first = s.as_bytes()[0];
    if first.is_ascii_digit() || first == b'-' || first == b'+' || first == b'.' {
        if let Some(i) = parse_int(s) {
            return Value::Int(i.into());
        }
        let plain: String = s.chars().filter(|&c| c != '_').collect();
        if is_float(&plain)
            && let Ok(f) = plain.parse::<f64>()
        {
            return Value::Float(f.into());
        }
        if let Some(t) = parse_timestamp(s) {
            return Value::Time(t.into());
        }
    }
    Value::Str(s.into())
}

/// Go `strconv.ParseInt(s, 0, 64)` after removing `_` (go-yaml v3's int rule).
fn parse_int(s: &str) -> Option<i64> {
    let plain: String = s.chars().filter(|&c| c != '_').collect();
    let (neg, digits) = match plain.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, plain.strip_prefix('+').unwrap_or(&plain)),
    };
    if digits.is_empty() {
        return None;
    }
    let (radix, body) = if let Some(b) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        (16, b)
    } else if let Some(b) = digits
        .strip_prefix("0o")
        .or_else(|| digits.strip_prefix("0O"))
    {
        (8, b)
    } else if let Some(b) = digits
        .strip_prefix("0b")
        .or_else(|| digits.strip_prefix("0B"))
    {
        (2, b)
    } else if digits.len() > 1 && digits.starts_with('0') {
        (8, &digits[1..])
    } else {
        (10, digits)
    };
    if body.is_empty() || !body.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = i128::from_str_radix(body, radix).ok()?;
    let v = if neg { -magnitude } else { magnitude };
    i64::try_from(v).ok()
}

fn is_float(s: &str) -> bool {
    // ^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if i < b.len() && b[i] == b'.' {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            digits(&mut i);
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// A YAML timestamp as Go's RFC3339Nano text, or `None` when `s` is not one.
fn parse_timestamp(s: &str) -> Option<String> {
    // Cheap shape check first: most scalars are not dates, and the regex costs its compile.
    let b = s.as_bytes();
    if b.len() < 8 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' {
        return None;
    }
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(
            r"^(\d{4})-(\d{1,2})-(\d{1,2})(?:(?:[Tt]|[ \t]+)(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d{1,9}))?[ \t]*(Z|[+-]\d{1,2}(?::?\d{2})?)?)?$",
        )
        .expect("static regex")
    });
    let c = re.captures(s)?;
    let num = |i: usize| {
        c.get(i)
            .map(|m| m.as_str().parse::<i16>().ok())
            .unwrap_or(Some(0))
    };
    let date = jiff::civil::Date::new(num(1)?, num(2)? as i8, num(3)? as i8).ok()?;
    let (h, mi, se) = (num(4)?, num(5)?, num(6)?);
    jiff::civil::Time::new(h as i8, mi as i8, se as i8, 0).ok()?;
    let frac = c
        .get(7)
        .map(|m| m.as_str().trim_end_matches('0'))
        .unwrap_or("");
    let offset = match c.get(8).map(|m| m.as_str()) {
        None | Some("Z") => "Z".to_string(),
        Some(o) => {
            let sign = &o[..1];
            let rest = o[1..].replace(':', "");
            let (hh, mm) = if rest.len() <= 2 {
                (rest.as_str(), "00")
            } else {
                rest.split_at(rest.len() - 2)
            };
            let hh: u8 = hh.parse().ok()?;
            if hh == 0 && mm == "00" {
                "Z".to_string()
            } else {
                format!("{sign}{hh:02}:{mm}")
            }
        }
    };
    let frac = if frac.is_empty() {
        String::new()
    } else {
        format!(".{frac}")
    };
    Some(format!("{date}T{h:02}:{mi:02}:{se:02}{frac}{offset}"))
}

/// Own-line comments at the very end of a document are ambiguous (the parser may report them inside the
/// last nested block or after it, depending on what follows), so they are always kept at the top level:
/// moved out of the chain of last nested blocks to just after the document's last pair.
fn hoist_final_comments(items: &mut Vec<Item>) {
    fn take_trailing(v: &mut Value) -> Vec<Comment> {
        let mut taken = Vec::new();
        match v {
            Value::Map(items) => {
                let tail = items
                    .iter()
                    .rposition(|i| !matches!(i, Item::Comment(c) if !c.inline))
                    .map_or(0, |p| p + 1);
                let mut own: Vec<Comment> = items
                    .drain(tail..)
                    .filter_map(|i| match i {
                        Item::Comment(c) => Some(c),
                        Item::Pair(..) => None,
                    })
                    .collect();
                if let Some(Item::Pair(_, last)) = items.last_mut() {
                    taken.extend(take_trailing(last));
                }
                taken.append(&mut own);
            }
            Value::List(values) => {
                let tail = values
                    .iter()
                    .rposition(|v| !matches!(v, Value::Comment(c) if !c.inline))
                    .map_or(0, |p| p + 1);
                let mut own: Vec<Comment> = values
                    .drain(tail..)
                    .filter_map(|v| match v {
                        Value::Comment(c) => Some(c),
                        _ => None,
                    })
                    .collect();
                if let Some(last) = values.last_mut() {
                    taken.extend(take_trailing(last));
                }
                taken.append(&mut own);
            }
            _ => {}
        }
        taken
    }
    let Some(last_pair) = items.iter().rposition(|i| matches!(i, Item::Pair(..))) else {
        return;
    };
    let taken = match &mut items[last_pair] {
        Item::Pair(_, v) => take_trailing(v),
        Item::Comment(_) => Vec::new(),
    };
    for (n, c) in taken.into_iter().enumerate() {
        items.insert(last_pair + 1 + n, Item::Comment(c));
    }
}

/// A value written on one line, which an inline comment can follow.
fn one_line(v: &Value) -> bool {
    match v {
        Value::Str(s) | Value::Time(s) => !s.expose().contains('\n'),
        Value::Map(_) | Value::List(_) | Value::Comment(_) | Value::Bytes(_) => false,
        Value::Int(_) | Value::Float(_) | Value::Bool(_) | Value::Null => true,
    }
}

/// Comments between a key and its nested block open that block: only the first can stay on the key's
/// line, the others stand on their own lines.
fn opening_comments(pending: &mut Vec<Comment>) -> impl Iterator<Item = Comment> + '_ {
    pending.drain(..).enumerate().map(|(n, c)| Comment {
        inline: c.inline && n == 0,
        ..c
    })
}

/// How many nodes aliases may copy in one stream: past this an alias is refused, so a small file of
/// nested aliases (a "billion laughs") cannot make the parser exhaust memory.
pub const MAX_ALIAS_NODES: usize = 100_000;

/// A copy of a value without its comments: an alias repeats the anchored data, not the comments written
/// around the anchor. Counts the nodes it makes into `budget`; `None` when the budget runs out.
fn without_comments(v: &Value, budget: &mut usize) -> Option<Value> {
    *budget = budget.checked_sub(1)?;
    Some(match v {
        Value::Map(items) => Value::Map(
            items
                .iter()
                .filter_map(|i| match i {
                    Item::Pair(k, v) => {
                        Some(without_comments(v, budget).map(|v| Item::Pair(k.clone(), v)))
                    }
                    Item::Comment(_) => None,
                })
                .collect::<Option<_>>()?,
        ),
        Value::List(values) => Value::List(
            values
                .iter()
                .filter(|v| !matches!(v, Value::Comment(_)))
                .map(|v| without_comments(v, budget))
                .collect::<Option<_>>()?,
        ),
        other => other.duplicate(),
    })
}

enum Frame {
    Map {
        items: Vec<Item>,
        key: Option<String>,
        anchor: usize,
        line: usize,
    },
    List {
        values: Vec<Value>,
        anchor: usize,
    },
}

fn err(line: usize, message: impl Into<String>) -> StoreError {
    StoreError {
        line: Some(line),
        message: message.into(),
    }
}

/// Parses a YAML stream into documents (each a top-level mapping; empty documents are skipped).
pub fn parse(text: &str) -> Result<Vec<Document>, StoreError> {
    let mut parse = Parse::default();
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| err(e.marker().line(), e.info()))?;
        parse.event(event, span.start.line(), span.start.col())?;
    }
    let mut docs = parse.docs;
    for doc in &mut docs {
        hoist_key_line_comments(&mut doc.items);
    }
    Ok(docs)
}

/// A comment on the line of a collection's key (`key: # note`) becomes a comment above the key, in
/// the parent — where sops's tree holds it, so it is encrypted (and its ciphertext read back) at
/// the place both tools write it.
fn hoist_key_line_comments(items: &mut Vec<Item>) {
    let mut out = Vec::with_capacity(items.len());
    for item in std::mem::take(items) {
        match item {
            Item::Pair(k, mut v) => {
                if let Some(head) = hoist_within(&mut v) {
                    out.push(Item::Comment(head));
                }
                out.push(Item::Pair(k, v));
            }
            comment => out.push(comment),
        }
    }
    *items = out;
}

/// Hoists inside a collection and returns the comment on its key's line, if any.
fn hoist_within(v: &mut Value) -> Option<Comment> {
    match v {
        Value::Map(items) => {
            let head = match items.first() {
                Some(Item::Comment(c)) if c.inline => match items.remove(0) {
                    Item::Comment(c) => Some(Comment { inline: false, ..c }),
                    Item::Pair(..) => None,
                },
                _ => None,
            };
            hoist_key_line_comments(items);
            head
        }
        Value::List(values) => {
            let head = match values.first() {
                Some(Value::Comment(c)) if c.inline => match values.remove(0) {
                    Value::Comment(c) => Some(Comment { inline: false, ..c }),
                    _ => None,
                },
                _ => None,
            };
            let mut out = Vec::with_capacity(values.len());
            for mut item in std::mem::take(values) {
                if let Some(inner) = hoist_within(&mut item) {
                    out.push(Value::Comment(inner));
                }
                out.push(item);
            }
            *values = out;
            head
        }
        _ => None,
    }
}

/// The state of a parse: the documents so far, the open collections and the comments waiting for a
/// place.
#[derive(Default)]
struct Parse {
    docs: Vec<Document>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Value>,
    /// Nodes aliases have copied so far (at most [`MAX_ALIAS_NODES`]).
    alias_copied: usize,
    /// Comments before the first key of a document.
    doc_comments: Vec<Item>,
    /// Comments between a key and its value.
    pending: Vec<Comment>,
    /// Per open collection: its block indentation, once known.
    indents: Vec<Option<usize>>,
    /// Per open collection: comments to attach after it closes, at its parent's level.
    trailing: Vec<Vec<Comment>>,
}

impl Parse {
    /// Takes one parser event at `line`/`col`.
    fn event(&mut self, event: Event<'_>, line: usize, col: usize) -> Result<(), StoreError> {
        self.note_indent(&event, col);
        let closed = match event {
            Event::DocumentEnd => {
                self.document_end();
                None
            }
            Event::Comment(text, placement) => {
                self.comment(text.into_owned(), placement == Placement::Right, col);
                None
            }
            Event::Scalar(text, style, anchor, tag) => Some((
                self.scalar(&text, style, tag.as_deref()),
                anchor,
                Vec::new(),
            )),
            Event::Alias(id) => Some((self.alias(id, line)?, 0, Vec::new())),
            Event::MappingStart(_, anchor, _) => {
                self.mapping_start(anchor, line);
                None
            }
            Event::SequenceStart(style, anchor, _) => {
                let block = matches!(style, granit_parser::StructureStyle::Block);
                self.sequence_start(anchor, block.then_some(col));
                None
            }
            Event::MappingEnd => Some(self.mapping_end(line)?),
            Event::SequenceEnd => Some(self.sequence_end(line)?),
            _ => None,
        };
        match closed {
            Some((value, anchor, carry)) => self.closed(value, anchor, carry, line),
            None => Ok(()),
        }
    }

    /// The first node of a block mapping tells its indentation.
    fn note_indent(&mut self, event: &Event<'_>, col: usize) {
        if let (
            Some(Frame::Map {
                items, key: None, ..
            }),
            Some(ind @ None),
        ) = (self.stack.last(), self.indents.last_mut())
            && !items.iter().any(|i| matches!(i, Item::Pair(..)))
            && event.is_node()
        {
            *ind = Some(col);
        }
    }

    /// Comments after the last key belong to the last document.
    fn document_end(&mut self) {
        if let Some(doc) = self.docs.last_mut() {
            doc.items.append(&mut self.doc_comments);
            doc.items.extend(self.pending.drain(..).map(Item::Comment));
        }
        self.doc_comments.clear();
        self.pending.clear();
    }

    /// Places a comment. An own-line comment left of a nested block's indentation belongs to an outer
    /// block; it is attached there once the nested block closes.
    fn comment(&mut self, text: String, inline: bool, col: usize) {
        let mut c = Comment {
            text: text.into(),
            inline,
        };
        let mut target = self.stack.len();
        if !c.inline {
            while target > 1 && self.indents[target - 1].is_some_and(|ind| col < ind) {
                target -= 1;
            }
        }
        if target < self.stack.len() {
            self.trailing[target].push(c);
            return;
        }
        match self.stack.last_mut() {
            None => self
                .doc_comments
                .push(Item::Comment(Comment { inline: false, ..c })),
            Some(Frame::Map { key: Some(_), .. }) => self.pending.push(c),
            Some(Frame::Map { items, .. }) => {
                // Inline only after a one-line value; else it stands on its own line.
                c.inline &= matches!(items.last(), Some(Item::Pair(_, v)) if one_line(v));
                items.push(Item::Comment(c));
            }
            Some(Frame::List { values, .. }) => {
                c.inline &= values.last().is_some_and(one_line);
                values.push(Value::Comment(c));
            }
        }
    }

    /// A scalar's value. Keys keep their text as written (`0x1F`, `1.0`, `~`): they name values, they
    /// are not values, and resolving them would rename them on the next write.
    fn scalar(&self, text: &str, style: ScalarStyle, tag: Option<&granit_parser::Tag>) -> Value {
        let is_key = matches!(self.stack.last(), Some(Frame::Map { key: None, .. }));
        let core =
            |suffix: &str| tag.is_some_and(|t| t.is_yaml_core_schema() && t.suffix() == suffix);
        if is_key || core("str") || core("binary") || !matches!(style, ScalarStyle::Plain) {
            Value::Str(text.into())
        } else {
            resolve_plain(text)
        }
    }

    /// A copy of the anchored value, within the alias budget.
    fn alias(&mut self, id: usize, line: usize) -> Result<Value, StoreError> {
        let anchored = self
            .anchors
            .get(&id)
            .ok_or_else(|| err(line, "alias to an unknown anchor"))?;
        let mut budget = MAX_ALIAS_NODES - self.alias_copied;
        let copy = without_comments(anchored, &mut budget).ok_or_else(|| {
            err(
                line,
                format!(
                    "aliases expand to more than {MAX_ALIAS_NODES} values; write the values out or \
                     use fewer nested aliases"
                ),
            )
        })?;
        self.alias_copied = MAX_ALIAS_NODES - budget;
        Ok(copy)
    }

    fn mapping_start(&mut self, anchor: usize, line: usize) {
        let mut items = Vec::new();
        if matches!(self.stack.last(), Some(Frame::Map { key: Some(_), .. })) {
            items.extend(opening_comments(&mut self.pending).map(Item::Comment));
        }
        self.stack.push(Frame::Map {
            items,
            key: None,
            anchor,
            line,
        });
        self.indents.push(None);
        self.trailing.push(Vec::new());
    }

    fn sequence_start(&mut self, anchor: usize, block_indent: Option<usize>) {
        let mut values = Vec::new();
        if matches!(self.stack.last(), Some(Frame::Map { key: Some(_), .. })) {
            values.extend(opening_comments(&mut self.pending).map(Value::Comment));
        }
        self.stack.push(Frame::List { values, anchor });
        self.indents.push(block_indent);
        self.trailing.push(Vec::new());
    }

    /// Closes a mapping: its value, anchor and the comments that follow it.
    fn mapping_end(&mut self, line: usize) -> Result<(Value, usize, Vec<Comment>), StoreError> {
        let Some(Frame::Map {
            mut items,
            key,
            anchor,
            line: start,
        }) = self.stack.pop()
        else {
            return Err(err(line, "unbalanced mapping"));
        };
        self.indents.pop();
        let carry = self.trailing.pop().unwrap_or_default();
        if key.is_some() {
            return Err(err(start, "mapping key without a value"));
        }
        if self.stack.is_empty() {
            // Comments at the end of the document's top-level mapping.
            items.extend(self.pending.drain(..).map(Item::Comment));
        }
        Ok((Value::Map(items), anchor, carry))
    }

    /// Closes a sequence: its value, anchor and the comments that follow it.
    fn sequence_end(&mut self, line: usize) -> Result<(Value, usize, Vec<Comment>), StoreError> {
        let Some(Frame::List { values, anchor }) = self.stack.pop() else {
            return Err(err(line, "unbalanced sequence"));
        };
        self.indents.pop();
        let carry = self.trailing.pop().unwrap_or_default();
        Ok((Value::List(values), anchor, carry))
    }

    /// A finished node: remembered for aliases, attached to its parent, followed by the comments that
    /// belong after it at its parent's level.
    fn closed(
        &mut self,
        value: Value,
        anchor: usize,
        carry: Vec<Comment>,
        line: usize,
    ) -> Result<(), StoreError> {
        if anchor != 0 {
            self.anchors.insert(anchor, value.duplicate());
        }
        self.attach(value, line)?;
        match self.stack.last_mut() {
            Some(Frame::Map { items, .. }) => items.extend(carry.into_iter().map(Item::Comment)),
            Some(Frame::List { values, .. }) => {
                values.extend(carry.into_iter().map(Value::Comment))
            }
            None => {
                if let Some(doc) = self.docs.last_mut() {
                    doc.items.extend(carry.into_iter().map(Item::Comment));
                }
            }
        }
        Ok(())
    }

    /// Attaches a finished node to its parent, or makes it the document.
    fn attach(&mut self, value: Value, line: usize) -> Result<(), StoreError> {
        match self.stack.last_mut() {
            None => self.document(value, line),
            Some(Frame::Map { items, key, .. }) => match key.take() {
                None => {
                    *key = Some(key_of(items, value, line)?);
                    Ok(())
                }
                Some(k) => {
                    let is_scalar = !matches!(value, Value::Map(_) | Value::List(_));
                    let can_follow = one_line(&value);
                    items.push(Item::Pair(k, value));
                    if is_scalar {
                        // As after a key: at most the first comment rides on the value's line.
                        items.extend(opening_comments(&mut self.pending).map(|c| {
                            Item::Comment(Comment {
                                inline: c.inline && can_follow,
                                ..c
                            })
                        }));
                    }
                    Ok(())
                }
            },
            Some(Frame::List { values, .. }) => {
                let can_follow = one_line(&value);
                values.push(value);
                values.extend(opening_comments(&mut self.pending).map(|c| {
                    Value::Comment(Comment {
                        inline: c.inline && can_follow,
                        ..c
                    })
                }));
                Ok(())
            }
        }
    }

    /// A finished top-level node: a mapping becomes a document, with the comments around it.
    fn document(&mut self, value: Value, line: usize) -> Result<(), StoreError> {
        match value {
            Value::Map(mut items) => {
                let mut all = std::mem::take(&mut self.doc_comments);
                all.append(&mut items);
                all.extend(self.pending.drain(..).map(Item::Comment));
                hoist_final_comments(&mut all);
                self.docs.push(Document::new(all));
                Ok(())
            }
            Value::Null => Ok(()),
            other => Err(err(
                line,
                format!(
                    "the top level of a document must be a mapping, found a {}",
                    other.kind()
                ),
            )),
        }
    }
}

/// A scalar used as a mapping key, refused when it is a collection or repeats a key of `items`.
fn key_of(items: &[Item], value: Value, line: usize) -> Result<String, StoreError> {
    let k = match &value {
        Value::Str(s) | Value::Time(s) => s.expose().to_string(),
        Value::Int(i) => i.expose().to_string(),
        Value::Bool(b) => b.expose().to_string(),
        Value::Float(f) => format_float(*f.expose()),
        Value::Null => "null".into(),
        other => {
            return Err(err(
                line,
                format!("a {} cannot be a mapping key", other.kind()),
            ));
        }
    };
    if items
        .iter()
        .any(|i| matches!(i, Item::Pair(existing, _) if *existing == k))
    {
        return Err(err(line, format!("duplicate key {k:?}")));
    }
    Ok(k)
}

// ------------------------------------------------------------------------------------------ emitter

/// Whether go-yaml v3 (sops's YAML library) reads `s`, unquoted, back as the same string — and a
/// YAML 1.1 reader would too: not `yes`/`on`/`y` and the like, not a sexagesimal `1:30`
/// (go-yaml's `stringv` quotes those for older readers, Kubernetes' own among them).
fn go_plain_is_str(s: &str) -> bool {
    if is_old_bool(s) || is_base60_float(s) || s == "<<" {
        return false;
    }
    if !matches!(resolve_plain(s), Value::Str(_)) {
        return false;
    }
    // What `resolve_plain` (made for reading into typed values) leaves out: integers past i64
    // that Go's `ParseUint` still takes.
    let first = s.as_bytes().first().copied().unwrap_or(b' ');
    if first.is_ascii_digit() || first == b'+' || first == b'-' {
        let plain: String = s.chars().filter(|&c| c != '_').collect();
        if go_parse_uint(&plain) {
            return false;
        }
    }
    true
}

/// Go `strconv.ParseUint(s, 0, 64)` succeeds.
fn go_parse_uint(s: &str) -> bool {
    let (radix, body) = if let Some(b) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (16, b)
    } else if let Some(b) = s.strip_prefix("0o").or_else(|| s.strip_prefix("0O")) {
        (8, b)
    } else if let Some(b) = s.strip_prefix("0b").or_else(|| s.strip_prefix("0B")) {
        (2, b)
    } else if s.len() > 1 && s.starts_with('0') {
        (8, &s[1..])
    } else {
        (10, s)
    };
    !body.is_empty()
        && body.chars().all(|c| c.is_digit(radix))
        && u64::from_str_radix(body, radix).is_ok()
}

/// YAML 1.1 booleans go-yaml quotes (`isOldBool`).
fn is_old_bool(s: &str) -> bool {
    matches!(
        s,
        "y" | "Y"
            | "yes"
            | "Yes"
            | "YES"
            | "on"
            | "On"
            | "ON"
            | "n"
            | "N"
            | "no"
            | "No"
            | "NO"
            | "off"
            | "Off"
            | "OFF"
    )
}

/// YAML 1.1 sexagesimal floats go-yaml quotes (`isBase60Float`):
/// `^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$`.
fn is_base60_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'-' | b'+')));
    if !b.get(i).is_some_and(u8::is_ascii_digit) {
        return false;
    }
    while b.get(i).is_some_and(|c| c.is_ascii_digit() || *c == b'_') {
        i += 1;
    }
    let mut groups = 0;
    while b.get(i) == Some(&b':') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) && i - start < 2 {
            i += 1;
        }
        let group = &b[start..i];
        let ok = match group {
            [d] => d.is_ascii_digit(),
            [a, _] => (b'0'..=b'5').contains(a),
            _ => false,
        };
        if !ok {
            return false;
        }
        groups += 1;
    }
    if groups == 0 {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        while b.get(i).is_some_and(|c| c.is_ascii_digit() || *c == b'_') {
            i += 1;
        }
    }
    i == b.len()
}

/// libyaml's `is_printable` (as go-yaml has it): what may stand in a scalar unescaped.
fn printable(c: char) -> bool {
    c == '\n'
        || (' '..='~').contains(&c)
        || ('\u{A0}'..='\u{D7FF}').contains(&c)
        || (('\u{E000}'..='\u{FFFD}').contains(&c) && c != '\u{FEFF}')
}

fn line_break(c: char) -> bool {
    matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// What the text of a string allows, as libyaml's `yaml_emitter_analyze_scalar` finds it.
struct Allowed {
    plain: bool,
    single: bool,
    block: bool,
}

fn analyze(s: &str) -> Allowed {
    if s.is_empty() {
        return Allowed {
            plain: true,
            single: true,
            block: false,
        };
    }
    let chars: Vec<char> = s.chars().collect();
    let mut block_indicators = s.starts_with("---") || s.starts_with("...");
    let (mut line_breaks, mut special, mut tabs) = (false, false, false);
    let (mut leading_space, mut leading_break) = (false, false);
    let (mut trailing_space, mut trailing_break) = (false, false);
    let (mut break_space, mut space_break) = (false, false);
    let (mut previous_space, mut previous_break) = (false, false);
    let mut preceded_by_whitespace = true;
    for (i, &c) in chars.iter().enumerate() {
        let last = i + 1 == chars.len();
        let followed_by_whitespace = last || matches!(chars[i + 1], ' ' | '\t');
        if i == 0 {
            match c {
                '#' | ',' | '[' | ']' | '{' | '}' | '&' | '*' | '!' | '|' | '>' | '\'' | '"'
                | '%' | '@' | '`' => block_indicators = true,
                '?' | ':' | '-' if followed_by_whitespace => block_indicators = true,
                _ => {}
            }
        } else {
            match c {
                ':' if followed_by_whitespace => block_indicators = true,
                '#' if preceded_by_whitespace => block_indicators = true,
                _ => {}
            }
        }
        if c == '\t' {
            tabs = true;
        } else if !printable(c) {
            special = true;
        }
        if c == ' ' {
            leading_space |= i == 0;
            trailing_space |= last;
            break_space |= previous_break;
            previous_space = true;
            previous_break = false;
        } else if line_break(c) {
            line_breaks = true;
            leading_break |= i == 0;
            trailing_break |= last;
            space_break |= previous_space;
            previous_space = false;
            previous_break = true;
        } else {
            previous_space = false;
            previous_break = false;
        }
        preceded_by_whitespace = matches!(c, ' ' | '\t' | '\0') || line_break(c);
    }
    let mut a = Allowed {
        plain: true,
        single: true,
        block: true,
    };
    if leading_space || leading_break || trailing_space || trailing_break {
        a.plain = false;
    }
    if trailing_space {
        a.block = false;
    }
    if break_space {
        a.plain = false;
        a.single = false;
    }
    if space_break || tabs || special {
        a.plain = false;
        a.single = false;
    }
    if space_break || special {
        a.block = false;
    }
    if line_breaks || block_indicators {
        a.plain = false;
    }
    a
}

/// How a string is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Plain,
    Single,
    Double,
    Literal,
}

/// The style go-yaml v3 writes a string in (as a mapping key with `key`): it asks for a literal
/// block when the text has a line break, plain when [`go_plain_is_str`], double quotes
/// otherwise; then the emitter falls back to single, then double quotes, when the text does not
/// allow what was asked.
fn style_of(s: &str, key: bool) -> Style {
    let asked = if s.contains('\n') {
        Style::Literal
    } else if go_plain_is_str(s) {
        Style::Plain
    } else {
        Style::Double
    };
    let a = analyze(s);
    let style = match asked {
        Style::Plain if !a.plain || (key && s.is_empty()) => Style::Single,
        Style::Literal if !a.block || key => Style::Double,
        other => other,
    };
    match style {
        // Lines inside single quotes (U+2028 and the like) are folded by go-yaml in ways not
        // worth copying; double quotes say the same.
        Style::Single if !a.single || s.chars().any(line_break) => Style::Double,
        other => other,
    }
}

fn single_quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Double quotes with libyaml's escapes: every character that is not printable, a line break,
/// the byte-order mark, `"` and `\`.
fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if printable(c) && !line_break(c) && c != '"' && c != '\\' {
            out.push(c);
            continue;
        }
        let code = c as u32;
        match c {
            '\0' => out.push_str("\\0"),
            '\u{07}' => out.push_str("\\a"),
            '\u{08}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{0b}' => out.push_str("\\v"),
            '\u{0c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            '\u{1b}' => out.push_str("\\e"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{85}' => out.push_str("\\N"),
            '\u{a0}' => out.push_str("\\_"),
            '\u{2028}' => out.push_str("\\L"),
            '\u{2029}' => out.push_str("\\P"),
            _ if code <= 0xFF => out.push_str(&format!("\\x{code:02X}")),
            _ if code <= 0xFFFF => out.push_str(&format!("\\u{code:04X}")),
            _ => out.push_str(&format!("\\U{code:08X}")),
        }
    }
    out.push('"');
    out
}

/// A literal block as go-yaml writes it: `|`, an indentation hint when the text starts with a
/// space or a line break, the chomping hint, then the lines at `indent`. The hint is `hint`, the
/// distance from the node holding the block (its key, or its dash) to the lines: go-yaml always
/// writes its indent step there, which under a list item is wrong (`- |4-` with the lines 2 in:
/// no YAML reader takes it back), so there lockstep differs from sops and stays readable.
fn literal(s: &str, indent: usize, hint: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::from("|");
    if chars.first().is_some_and(|&c| c == ' ' || line_break(c)) {
        out.push_str(&hint.to_string());
    }
    let n = chars.len();
    let chomp = if !chars.last().is_some_and(|&c| line_break(c)) {
        "-"
    } else if n == 1 || line_break(chars[n - 2]) {
        "+"
    } else {
        ""
    };
    out.push_str(chomp);
    let pad = " ".repeat(indent);
    let body = s.strip_suffix('\n').unwrap_or(s);
    for line in body.split('\n') {
        out.push('\n');
        if !line.is_empty() {
            out.push_str(&pad);
            out.push_str(line);
        }
    }
    out
}

/// A scalar as YAML text, as go-yaml (and so sops) writes it; multi-line strings become a
/// literal block indented to `indent`, `hint` past the node that holds it.
fn scalar(v: &Value, indent: usize, hint: usize) -> String {
    match v {
        Value::Str(s) => {
            let text = s.expose();
            match style_of(text, false) {
                Style::Plain => text.to_string(),
                Style::Single => single_quoted(text),
                Style::Double => double_quoted(text),
                Style::Literal => literal(text, indent, hint),
            }
        }
        Value::Int(i) => i.expose().to_string(),
        Value::Float(f) if f.expose().is_nan() => ".nan".into(),
        Value::Float(f) if f.expose().is_infinite() => {
            (if *f.expose() > 0.0 { ".inf" } else { "-.inf" }).into()
        }
        Value::Float(f) => go_yaml_float(*f.expose()),
        Value::Bool(b) => b.expose().to_string(),
        Value::Time(t) => t.expose().to_string(),
        Value::Null => "null".into(),
        Value::Bytes(b) => scalar(
            &Value::Str(String::from_utf8_lossy(b.expose()).into_owned().into()),
            indent,
            hint,
        ),
        Value::Map(_) | Value::List(_) | Value::Comment(_) => String::new(),
    }
}

fn key_text(k: &str) -> String {
    // Keys are kept as text; one written as an integer is (most likely) one, which sops writes
    // plain. (A quoted "8080" key comes back unquoted: the type of a key is not kept.)
    if k.parse::<i64>().is_ok_and(|i| i.to_string() == k) {
        return k.to_string();
    }
    match style_of(k, true) {
        Style::Plain => k.to_string(),
        Style::Single => single_quoted(k),
        _ => double_quoted(k),
    }
}

/// YAML allows at most 1024 characters in an implicit key; longer keys cannot be written back.
pub fn check_keys(docs: &[Document]) -> Result<(), StoreError> {
    fn walk(items: &[Item]) -> Result<(), StoreError> {
        for item in items {
            if let Item::Pair(k, v) = item {
                if key_text(k).chars().count() > 1024 {
                    let head: String = k.chars().take(40).collect();
                    return Err(StoreError {
                        line: None,
                        message: format!(
                            "the key starting {head:?} is longer than YAML's 1024-character limit for keys"
                        ),
                    });
                }
                value(v)?;
            }
        }
        Ok(())
    }
    fn value(v: &Value) -> Result<(), StoreError> {
        match v {
            Value::Map(items) => walk(items),
            Value::List(values) => values.iter().try_for_each(value),
            _ => Ok(()),
        }
    }
    docs.iter().try_for_each(|d| walk(&d.items))
}

struct Emitter {
    out: String,
    step: usize,
    /// Plaintext output: a comment that was on an entry's line goes on its own line above it, as
    /// `sops -d` writes it. (In an encrypted file sops keeps it on the line, unless the entry is a
    /// collection's key.)
    hoist: bool,
}

impl Emitter {
    fn comment_line(&mut self, indent: usize, c: &Comment) {
        self.out.push_str(&" ".repeat(indent));
        self.out.push('#');
        self.out.push_str(c.text.expose());
        self.out.push('\n');
    }

    /// Writes `key: value` after `lead` — or, for a key that cannot be a simple key (a line
    /// break in it, more than 128 bytes), `? key` and `: value` on the next line, as go-yaml does.
    fn pair(&mut self, lead: &str, k: &str, v: &Value, indent: usize, inline: Option<&Comment>) {
        self.out.push_str(lead);
        if k.len() > 128 || k.chars().any(line_break) {
            self.out.push_str("? ");
            self.out.push_str(&key_text(k));
            self.out.push('\n');
            self.out.push_str(&" ".repeat(indent));
        } else {
            self.out.push_str(&key_text(k));
        }
        self.out.push(':');
        self.value_after_key(v, indent, inline);
    }

    /// Writes the items of a mapping, each line starting at `indent` (the first after `first_prefix`).
    /// A comment that was on a collection's key line goes above the key, as sops writes it; one after
    /// a value too in plaintext output (`hoist`).
    fn map(&mut self, items: &[Item], indent: usize, mut first_prefix: Option<String>) {
        let mut idx = 0;
        while idx < items.len() {
            let lead = first_prefix.take().unwrap_or_else(|| " ".repeat(indent));
            match &items[idx] {
                Item::Comment(c) => {
                    self.out.push_str(&lead);
                    self.out.push('#');
                    self.out.push_str(c.text.expose());
                    self.out.push('\n');
                }
                Item::Pair(k, v) => {
                    let column = lead.len() - lead.trim_start().len();
                    if let Some(head) = leading_inline(v) {
                        self.comment_line(column, head);
                    }
                    let mut inline = match items.get(idx + 1) {
                        Some(Item::Comment(c)) if c.inline => {
                            idx += 1;
                            Some(c)
                        }
                        _ => None,
                    };
                    if self.hoist
                        && let Some(c) = inline.take()
                    {
                        self.comment_line(column, c);
                    }
                    self.pair(&lead, k, v, indent, inline);
                }
            }
            idx += 1;
        }
    }

    fn inline_comment(&mut self, c: Option<&Comment>) {
        if let Some(c) = c {
            self.out.push_str(" #");
            self.out.push_str(c.text.expose());
        }
    }

    /// The indentation of what nests under a key at `indent`: the next multiple of the step, as
    /// go-yaml (and so sops) writes it — a mapping that is a list item has its keys two past the
    /// dash, and its nested blocks go to the step after the dash, not a step past the key
    /// (`- enc: |` at 8 has its block at 12 with sops's 4, not 14).
    fn deeper(&self, indent: usize) -> usize {
        self.step * ((indent + self.step) / self.step)
    }

    fn value_after_key(&mut self, v: &Value, indent: usize, inline: Option<&Comment>) {
        match v {
            // A comment on the key's line was written above the key (see `map`).
            Value::Map(items) if items.iter().any(|i| matches!(i, Item::Pair(..))) => {
                let (_, rest) = split_leading_inline(items);
                self.inline_comment(inline);
                self.out.push('\n');
                self.map(rest, self.deeper(indent), None);
            }
            Value::List(values) if values.iter().any(|v| !matches!(v, Value::Comment(_))) => {
                let (_, rest) = split_leading_inline_list(values);
                self.inline_comment(inline);
                self.out.push('\n');
                self.list(rest, self.deeper(indent), None);
            }
            // Empty collections (perhaps holding only comments) are written in flow style; their
            // comments follow on their own lines.
            Value::Map(_) | Value::List(_) => self.empty_collection(v, inline, indent),
            scalar_value => {
                self.out.push(' ');
                self.out.push_str(&scalar(
                    scalar_value,
                    self.deeper(indent),
                    self.deeper(indent) - indent,
                ));
                self.inline_comment(inline);
                self.out.push('\n');
            }
        }
    }

    /// Writes an empty mapping or list (it may hold comments) as ` {}` / ` []`, then its comments on
    /// their own lines at `indent`.
    fn empty_collection(&mut self, v: &Value, inline: Option<&Comment>, indent: usize) {
        let (flow, comments): (&str, Vec<&Comment>) = match v {
            Value::Map(items) => (
                " {}",
                items
                    .iter()
                    .filter_map(|i| match i {
                        Item::Comment(c) => Some(c),
                        Item::Pair(..) => None,
                    })
                    .collect(),
            ),
            Value::List(values) => (
                " []",
                values
                    .iter()
                    .filter_map(|v| match v {
                        Value::Comment(c) => Some(c),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => return,
        };
        self.out.push_str(flow);
        self.inline_comment(inline);
        self.out.push('\n');
        for c in comments {
            self.comment_line(indent, c);
        }
    }

    /// Writes the items of a list, each `- ` at `indent` (the first after `first_prefix`, for a
    /// list in a list: `- - a`, as go-yaml writes it). A comment that was on an item's line stays
    /// there, or goes on its own line above the item in plaintext output (`hoist`).
    fn list(&mut self, values: &[Value], indent: usize, mut first_prefix: Option<String>) {
        let mut idx = 0;
        while idx < values.len() {
            let pad = " ".repeat(indent);
            if let Value::Comment(c) = &values[idx] {
                if let Some(lead) = first_prefix.take() {
                    // A comment cannot follow the outer dash: the outer item opens on its own line.
                    self.out.push_str(lead.trim_end());
                    self.out.push('\n');
                }
                self.comment_line(indent, c);
                idx += 1;
                continue;
            }
            let lead = first_prefix.take().unwrap_or_else(|| pad.clone());
            let column = lead.len() - lead.trim_start().len();
            let item = &values[idx];
            let scalar_item = !matches!(item, Value::Map(_) | Value::List(_));
            let mut inline = match values.get(idx + 1) {
                Some(Value::Comment(c)) if c.inline && (self.hoist || scalar_item) => {
                    idx += 1;
                    Some(c)
                }
                _ => None,
            };
            if self.hoist
                && let Some(c) = inline.take()
            {
                self.comment_line(column, c);
            }
            match item {
                Value::Map(items) if items.iter().any(|i| matches!(i, Item::Pair(..))) => {
                    self.map(items, indent + 2, Some(format!("{lead}- ")));
                }
                Value::List(inner) if inner.iter().any(|v| !matches!(v, Value::Comment(_))) => {
                    let (head, rest) = split_leading_inline_list(inner);
                    if let Some(head) = head {
                        self.comment_line(column, head);
                    }
                    self.list(rest, indent + 2, Some(format!("{lead}- ")));
                }
                // Empty collections (perhaps holding only comments): flow style, comments after.
                empty @ (Value::Map(_) | Value::List(_)) => {
                    self.out.push_str(&format!("{lead}-"));
                    self.empty_collection(empty, None, indent);
                }
                v => {
                    self.out.push_str(&lead);
                    self.out.push_str("- ");
                    self.out.push_str(&scalar(v, indent + 2, 2));
                    self.inline_comment(inline);
                    self.out.push('\n');
                }
            }
            idx += 1;
        }
    }
}

/// The comment on the line of a key whose value is a non-empty collection (`key: # note`).
fn leading_inline(v: &Value) -> Option<&Comment> {
    match v {
        Value::Map(items) if items.iter().any(|i| matches!(i, Item::Pair(..))) => {
            split_leading_inline(items).0
        }
        Value::List(values) if values.iter().any(|v| !matches!(v, Value::Comment(_))) => {
            split_leading_inline_list(values).0
        }
        _ => None,
    }
}

fn split_leading_inline(items: &[Item]) -> (Option<&Comment>, &[Item]) {
    match items.first() {
        Some(Item::Comment(c)) if c.inline => (Some(c), &items[1..]),
        _ => (None, items),
    }
}

fn split_leading_inline_list(values: &[Value]) -> (Option<&Comment>, &[Value]) {
    match values.first() {
        Some(Value::Comment(c)) if c.inline => (Some(c), &values[1..]),
        _ => (None, values),
    }
}

/// Emits documents (with `metadata` appended to each as the last top-level key `sops`).
pub fn emit(docs: &[Document], metadata: Option<&Value>, indent: usize) -> String {
    let mut e = Emitter {
        out: String::new(),
        step: indent.clamp(2, 9),
        hoist: metadata.is_none(),
    };
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            e.out.push_str("---\n");
        }
        e.map(&doc.items, 0, None);
        match metadata {
            Some(meta) => e.pair("", "sops", meta, 0, None),
            // A document without keys is still a (empty) mapping, not just comments.
            None if !doc.items.iter().any(|i| matches!(i, Item::Pair(..))) => {
                e.out.push_str("{}\n")
            }
            None => {}
        }
    }
    e.out
}

/// Emits a mapping as a document of its items, anything else as a document `value: <v>`.
pub fn emit_value(v: &Value, indent: usize) -> String {
    let mut e = Emitter {
        out: String::new(),
        step: indent.clamp(2, 9),
        hoist: true,
    };
    match v {
        Value::Map(items) if items.iter().any(|i| matches!(i, Item::Pair(..))) => {
            e.map(items, 0, None)
        }
        Value::Map(items) => {
            e.map(items, 0, None);
            e.out.push_str("{}\n");
        }
        other => e.pair("", "value", other, 0, None),
    }
    e.out
}

/// A finite float as go-yaml v3 (and so sops) writes it: Go's `%g` with the shortest digits — an
/// exponent (`1e+06`, `1.234e-05`) when the decimal exponent is below -4 or 6 and above, otherwise
/// plain digits (`123456`, `1.5`, `1` for `1.0`, `-0`).
fn go_yaml_float(f: f64) -> String {
    if f == 0.0 {
        return format_float(f);
    }
    let e = format!("{f:e}");
    let Some((mantissa, exp)) = e.split_once('e') else {
        return e;
    };
    let Ok(exp) = exp.parse::<i32>() else {
        return e;
    };
    if (-4..6).contains(&exp) {
        format_float(f)
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    /// What sops 3.13.2 wrote for this file: comments that were on a line go above it, lists in
    /// lists open on their parent's dash.
    #[test]
    fn line_comments_and_nested_lists_are_laid_out_as_sops_lays_them_out() {
        let src = "# top\ndb:\n    password: s3cr3t # inline\n    list: # on the key\n        - one # item\n        - - nested\n          - nested2\n        - - - deep\n        - k: v # in a map item\n          n: 2\nlast: y # end\n";
        let docs = super::parse(src).expect("parses");
        assert_eq!(
            super::emit(&docs, None, 4),
            "# top\ndb:\n    # inline\n    password: s3cr3t\n    # on the key\n    list:\n        # item\n        - one\n        - - nested\n          - nested2\n        - - - deep\n        # in a map item\n        - k: v\n          \"n\": 2\n# end\nlast: \"y\"\n"
        );
        let again = super::parse(&super::emit(&docs, None, 4)).expect("re-parses");
        assert_eq!(super::emit(&again, None, 4), super::emit(&docs, None, 4));
        // In an encrypted file sops keeps a comment after a value on its line.
        let meta = super::Value::Map(vec![]);
        let encrypted = super::emit(&docs, Some(&meta), 4);
        assert!(
            encrypted.contains("    # on the key\n    list:\n        - one # item\n")
                && encrypted.contains("    password: s3cr3t # inline\n")
                && encrypted.contains("        - k: v # in a map item\n"),
            "{encrypted}"
        );
    }

    /// The spellings sops 3.13.2 printed for these floats.
    #[test]
    fn floats_are_written_as_go_yaml_writes_them() {
        for (f, want) in [
            (1.0, "1"),
            (1.5, "1.5"),
            (1e6, "1e+06"),
            (123456.0, "123456"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e21, "1e+21"),
            (1234567.0, "1.234567e+06"),
            (-0.0, "-0"),
            (1.234568e9, "1.234568e+09"),
            (1.234e-5, "1.234e-05"),
            (300.0, "300"),
        ] {
            assert_eq!(super::go_yaml_float(f), want, "{f:?}");
        }
    }

    use super::*;

    #[test]
    fn strings_are_written_in_the_style_go_yaml_picks() {
        let cases = [
            ("plain text", Style::Plain),
            ("yes", Style::Double),
            ("Off", Style::Double),
            ("1:30", Style::Double),
            ("1_000.5", Style::Double),
            ("2024-01-02", Style::Double),
            ("0xFFFFFFFFFFFFFFFF", Style::Double),
            ("0x1FFFFFFFFFFFFFFFF", Style::Plain),
            ("", Style::Double),
            ("a: b", Style::Single),
            (" lead", Style::Single),
            ("#x", Style::Single),
            ("-x", Style::Plain),
            ("- x", Style::Single),
            ("tab\there", Style::Double),
            ("emoji 😀", Style::Double),
            ("a\nb", Style::Literal),
            ("trailing \nx", Style::Double),
            ("tab\tin\nblock", Style::Literal),
        ];
        for (text, style) in cases {
            assert_eq!(style_of(text, false), style, "{text:?}");
        }
        assert_eq!(style_of("a\nb", true), Style::Double, "no block as a key");
        assert_eq!(
            double_quoted("😀\t\u{85}\u{feff}"),
            "\"\\U0001F600\\t\\N\\uFEFF\""
        );
        assert_eq!(single_quoted("it's"), "'it''s'");
        assert_eq!(literal("\nx", 8, 4), "|4-\n\n        x");
        assert_eq!(literal("x\n\n", 4, 4), "|+\n    x\n");
        assert_eq!(literal("\n", 4, 4), "|4+\n");
        // Under a list item the hint is the distance to the dash (go-yaml's 4 would not read back).
        assert_eq!(literal("\nx", 10, 2), "|2-\n\n          x");
    }

    #[test]
    fn plain_scalars_resolve_like_go_yaml_v3() {
        assert_eq!(resolve_plain("42"), Value::Int(42.into()));
        assert_eq!(resolve_plain("0x1F"), Value::Int(31.into()));
        assert_eq!(resolve_plain("017"), Value::Int(15.into()));
        assert_eq!(resolve_plain("1_000"), Value::Int(1000.into()));
        assert_eq!(resolve_plain("-7"), Value::Int((-7).into()));
        assert_eq!(resolve_plain("1.5"), Value::Float(1.5.into()));
        assert_eq!(resolve_plain("1e3"), Value::Float(1000.0.into()));
        assert_eq!(resolve_plain("yes"), Value::Str("yes".into()));
        assert_eq!(resolve_plain("True"), Value::Bool(true.into()));
        assert_eq!(resolve_plain("~"), Value::Null);
        assert_eq!(
            resolve_plain("2024-01-01"),
            Value::Time("2024-01-01T00:00:00Z".into())
        );
        assert_eq!(
            resolve_plain("2001-12-14t21:59:43.10-05:00"),
            Value::Time("2001-12-14T21:59:43.1-05:00".into())
        );
        assert_eq!(resolve_plain("2024-13-01"), Value::Str("2024-13-01".into()));
        assert_eq!(resolve_plain("1.2.3"), Value::Str("1.2.3".into()));
    }

    #[test]
    fn round_trip_keeps_order_comments_types_and_documents() {
        let src = "# head\nb: 1 # one\na:\n    # inner\n    x: \"1\"\n    y: [1, two]\nlist:\n    - k: v\n      j: w\n    - plain\nmulti: |\n    line1\n    line2\n---\nsecond: true\n";
        let docs = parse(src).expect("parses");
        assert_eq!(docs.len(), 2);
        let out = emit(&docs, None, 4);
        let again = parse(&out).expect("re-parses");
        // The plaintext view is stable (a line comment, written above its key, stays there).
        assert_eq!(emit(&again, None, 4), out);
        assert!(
            out.starts_with("# head\n# one\nb: 1\na:\n    # inner\n    x: \"1\"\n"),
            "{out}"
        );
        assert!(
            out.contains("list:\n    - k: v\n      j: w\n    - plain\n"),
            "{out}"
        );
        assert!(
            out.contains("multi: |\n    line1\n    line2\n---\nsecond: true\n"),
            "{out}"
        );
    }

    /// Found by fuzzing: a column-0 comment after a nested block was re-read as part of that block.
    #[test]
    fn regression_outdented_comment_after_nested_block_stays_outside() {
        let docs = parse("d:\n    e: 1\n# after\nf: 2\n").expect("parses");
        assert_eq!(
            docs[0].items,
            vec![
                Item::Pair(
                    "d".into(),
                    Value::Map(vec![Item::Pair("e".into(), Value::Int(1.into()))])
                ),
                Item::Comment(Comment {
                    text: " after".into(),
                    inline: false
                }),
                Item::Pair("f".into(), Value::Int(2.into())),
            ]
        );
        let out = emit(&docs, None, 4);
        assert_eq!(parse(&out).expect("re-parses"), docs, "{out}");
    }

    /// Found by fuzzing: comments at the end of a document inside the last nested block were read back
    /// at the top level after emitting; they are kept at the top level from the start.
    #[test]
    fn regression_comments_ending_a_document_stay_at_the_top_level() {
        let src = "a:\n    b:\n        c: 1\n        # deep end\n    # mid end\n---\nx: 1\n";
        let docs = parse(src).expect("parses");
        let again = parse(&emit(&docs, None, 4)).expect("re-parses");
        assert_eq!(again, docs);
        let top_comments = docs[0]
            .items
            .iter()
            .filter(|i| matches!(i, Item::Comment(_)))
            .count();
        assert_eq!(top_comments, 2, "{:?}", docs[0].items);
    }

    /// Found by fuzzing: of several comments between a key and its nested block, only the first can stay
    /// on the key's line.
    #[test]
    fn regression_only_one_comment_rides_on_the_key_line() {
        let docs = parse("a: # one\n  !t # two\n  b: 1\n").expect("parses");
        assert_eq!(parse(&emit(&docs, None, 4)).expect("re-parses"), docs);
    }

    /// Found by fuzzing: an inline comment after a multi-line value would land inside the emitted block.
    #[test]
    fn regression_comment_after_a_multi_line_value_stands_on_its_own_line() {
        let docs = parse("a:\n  - x\n\n    y # c\n").expect("parses");
        let out = emit(&docs, None, 4);
        assert_eq!(parse(&out).expect("re-parses"), docs, "{out}");
    }

    /// Found by fuzzing: of the comments between a key and its scalar, only the first can be inline.
    #[test]
    fn regression_only_the_first_comment_before_a_scalar_is_inline() {
        let docs = parse("b:\n    # x\n    !t  # y\n nd\n").expect("parses");
        assert_eq!(parse(&emit(&docs, None, 4)).expect("re-parses"), docs);
    }

    /// Found by fuzzing: an empty mapping with only comments must stay a document.
    #[test]
    fn regression_empty_mapping_with_comments_stays_a_document() {
        let docs = parse("# c\n{}\n").expect("parses");
        assert_eq!(docs.len(), 1);
        assert_eq!(parse(&emit(&docs, None, 4)).expect("re-parses"), docs);
    }

    /// Found by fuzzing: a block that opens with comments still learns its indentation from its first key.
    #[test]
    fn regression_block_opening_with_comments_knows_its_indentation() {
        let docs = parse("b:\n    # one\n    da: 1\n# outer\nc: 2\n").expect("parses");
        assert!(
            matches!(docs[0].items[1], Item::Comment(_)),
            "{:?}",
            docs[0].items
        );
        assert_eq!(parse(&emit(&docs, None, 4)).expect("re-parses"), docs);
    }

    /// Found by fuzzing: keys that look like numbers kept their resolved value (`-0.` became `0`).
    #[test]
    fn regression_keys_keep_their_text() {
        let docs = parse("-0.: a\n0x1F: b\n1.0: c\n~: d\ntrue: e\n").expect("parses");
        let keys: Vec<&str> = docs[0]
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Pair(k, _) => Some(k.as_str()),
                Item::Comment(_) => None,
            })
            .collect();
        assert_eq!(keys, ["-0.", "0x1F", "1.0", "~", "true"]);
        assert_eq!(parse(&emit(&docs, None, 4)).expect("re-parses"), docs);
    }

    /// Found by fuzzing: an empty collection that holds only comments stays an empty collection.
    #[test]
    fn regression_empty_collections_with_comments_stay_collections() {
        let docs = parse("s: # a\n  []\nl:\n  - # b\n    {}\n").expect("parses");
        let out = emit(&docs, None, 4);
        let again = parse(&out).expect("re-parses");
        let kinds = |d: &[Document]| -> Vec<&'static str> {
            d[0].items
                .iter()
                .filter_map(|i| match i {
                    Item::Pair(_, v) => Some(v.kind()),
                    Item::Comment(_) => None,
                })
                .collect()
        };
        assert_eq!(kinds(&again), kinds(&docs), "{out}");
        assert_eq!(kinds(&docs), ["list", "list"]);
    }

    /// Found by fuzzing: a comment after a tag on the first line has nothing to stand beside.
    #[test]
    fn regression_comment_without_a_preceding_value_is_not_inline() {
        let docs = parse("!tag #c\nkind: x\n").expect("parses");
        assert_eq!(
            docs[0].items[0],
            Item::Comment(Comment {
                text: "c".into(),
                inline: false
            })
        );
        assert_eq!(parse(&emit(&docs, None, 4)).expect("re-parses"), docs);
    }

    #[test]
    fn nested_aliases_are_refused_past_the_budget_naming_the_line() {
        // Nine levels of ten aliases each: 10^9 nodes if expanded.
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for n in 1..10 {
            let refs = vec![format!("*a{}", n - 1); 10].join(", ");
            text.push_str(&format!("a{n}: &a{n} [{refs}]\n"));
        }
        let e = parse(&text).expect_err("an alias bomb is refused");
        assert!(e.message.contains("aliases expand to more than"), "{e}");
        assert!(matches!(e.line, Some(l) if (4..=10).contains(&l)), "{e:?}");
        // Within the budget, aliases still expand (and drop their comments).
        let docs = parse("a: &x {k: v} # c\nb: *x\n").expect("parses");
        assert_eq!(docs[0].items.len(), 3, "{:?}", docs[0].items);
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("a: 1\nb: [\n").expect_err("fails");
        assert!(e.line.is_some());
        let e = parse("a: 1\na: 2\n").expect_err("duplicate");
        assert_eq!(e.line, Some(2), "{e:?}");
        assert!(parse("- 1\n- 2\n").is_err());
    }
}
