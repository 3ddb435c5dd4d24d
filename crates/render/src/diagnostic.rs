//! Render errors as diagnostics: a message, the file and line it is about, a snippet, and a hint.
//!
//! The library only describes the problem; the CLI draws it (with `annotate-snippets`). A diagnostic
//! never carries a secret value: render never has one, and snippets come from templates, values or
//! the rendered (sealed) output.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// One problem found while rendering, located in a project file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// What is wrong, in one sentence.
    pub message: String,
    /// The project file (relative path) the problem is in, when it is in one.
    pub file: Option<String>,
    /// 1-based line in `file`.
    pub line: Option<usize>,
    /// Text to show around the problem and the byte range in it to underline.
    pub snippet: Option<Box<Snippet>>,
    /// What to do about it.
    pub help: Option<String>,
}

/// Source text shown with a diagnostic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snippet {
    /// The whole text the range points into (a template, a values file or rendered output).
    pub source: Arc<str>,
    /// The byte range to underline.
    pub range: Range<usize>,
    /// A short label under the underline.
    pub label: String,
    /// A note on where the text comes from, when it is not `file` itself (e.g. "rendered output").
    pub origin: Option<String>,
}

impl Diagnostic {
    /// A diagnostic with only a message.
    pub fn new(message: impl Into<String>) -> Self {
        Diagnostic {
            message: message.into(),
            file: None,
            line: None,
            snippet: None,
            help: None,
        }
    }

    /// Names the file.
    pub fn in_file(mut self, file: impl Into<String>) -> Self {
        self.file = Some(file.into());
        self
    }

    /// Names the line.
    pub fn at_line(mut self, line: usize) -> Self {
        self.line = Some(line);
        self
    }

    /// Adds a snippet; also sets `line` from the range when it is not set yet.
    pub fn with_snippet(
        mut self,
        source: Arc<str>,
        range: Range<usize>,
        label: impl Into<String>,
    ) -> Self {
        let start = floor_boundary(&source, range.start);
        if self.line.is_none() {
            self.line = Some(line_of(&source, start));
        }
        let end = floor_boundary(&source, range.end.max(start));
        self.snippet = Some(Box::new(Snippet {
            source,
            range: start..end,
            label: label.into(),
            origin: None,
        }));
        self
    }

    /// Marks where the snippet text comes from.
    pub fn snippet_origin(mut self, origin: impl Into<String>) -> Self {
        if let Some(s) = self.snippet.as_mut() {
            s.origin = Some(origin.into());
        }
        self
    }

    /// Adds a hint.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// `file:line: ` (or less) as a prefix for one-line output.
    pub fn location(&self) -> String {
        match (&self.file, self.line) {
            (Some(f), Some(l)) => format!("{f}:{l}: "),
            (Some(f), None) => format!("{f}: "),
            _ => String::new(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.location(), self.message)?;
        if let Some(help) = &self.help {
            write!(f, " ({help})")?;
        }
        Ok(())
    }
}

/// The largest char boundary of `text` at or before `offset` (clamped to the text).
pub fn floor_boundary(text: &str, offset: usize) -> usize {
    let mut i = offset.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// 1-based line number of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    let offset = floor_boundary(text, offset);
    text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Byte range of a 1-based line (without its newline); empty at the end for lines past the end.
pub fn line_range(text: &str, line: usize) -> Range<usize> {
    let mut start = 0;
    for _ in 1..line.max(1) {
        match text[start..].find('\n') {
            Some(i) => start += i + 1,
            None => return text.len()..text.len(),
        }
    }
    let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    start..end
}

/// Every problem a render found (it reports them all, not only the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_ranges_agree() {
        let t = "a: 1\nbb: 2\n\nc: 3";
        assert_eq!(line_of(t, 0), 1);
        assert_eq!(line_of(t, 5), 2);
        assert_eq!(&t[line_range(t, 2)], "bb: 2");
        assert_eq!(&t[line_range(t, 3)], "");
        assert_eq!(&t[line_range(t, 4)], "c: 3");
        assert_eq!(line_range(t, 9), t.len()..t.len());
        let u = "é: x";
        assert_eq!(floor_boundary(u, 1), 0);
        let d = Diagnostic::new("m").with_snippet(Arc::from(u), 1..2, "here");
        assert_eq!(d.snippet.expect("snippet").range, 0..2);
    }
}
