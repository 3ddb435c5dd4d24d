//! Which values of a tree are encrypted: the six sops selection options, at most one per file.

use regex::Regex;

/// The selection option of a file (sops allows at most one; the default is `unencrypted_suffix: _unencrypted`).
#[derive(Debug, Clone)]
pub enum Selection {
    /// Plaintext when any key of the path ends with the suffix.
    UnencryptedSuffix(String),
    /// Encrypted only when some key of the path ends with the suffix.
    EncryptedSuffix(String),
    /// Plaintext when any key of the path matches.
    UnencryptedRegex(Regex),
    /// Encrypted only when some key of the path matches.
    EncryptedRegex(Regex),
    /// Plaintext when a comment above the value (or above one of its parents) matches.
    UnencryptedCommentRegex(Regex),
    /// Encrypted only when a comment above the value (or above one of its parents) matches.
    EncryptedCommentRegex(Regex),
}

impl Default for Selection {
    fn default() -> Self {
        Selection::UnencryptedSuffix("_unencrypted".into())
    }
}

/// The metadata field names of the selection options, in the order sops checks them.
pub const SELECTION_FIELDS: [&str; 6] = [
    "unencrypted_suffix",
    "encrypted_suffix",
    "unencrypted_regex",
    "encrypted_regex",
    "unencrypted_comment_regex",
    "encrypted_comment_regex",
];

/// A selection option that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SelectionError {
    /// More than one option was given.
    #[error(
        "only one of unencrypted_suffix, encrypted_suffix, unencrypted_regex, encrypted_regex, unencrypted_comment_regex, encrypted_comment_regex may be set, found {0}"
    )]
    Conflict(String),
    /// A regular expression does not compile.
    #[error("{field}: invalid regular expression: {message}")]
    Regex {
        /// The option's name.
        field: String,
        /// What the regex engine said.
        message: String,
    },
}

impl Selection {
    /// Builds the option from `(field name, value)` pairs; at most one may be present.
    pub fn from_fields<'a>(
        fields: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Option<Selection>, SelectionError> {
        let given: Vec<_> = fields.into_iter().collect();
        if given.len() > 1 {
            let names: Vec<_> = given.iter().map(|(f, _)| *f).collect();
            return Err(SelectionError::Conflict(names.join(" and ")));
        }
        let Some((field, value)) = given.into_iter().next() else {
            return Ok(None);
        };
        let re = |v: &str| {
            Regex::new(v).map_err(|e| SelectionError::Regex {
                field: field.to_string(),
                message: e.to_string(),
            })
        };
        Ok(Some(match field {
            "unencrypted_suffix" => Selection::UnencryptedSuffix(value.to_string()),
            "encrypted_suffix" => Selection::EncryptedSuffix(value.to_string()),
            "unencrypted_regex" => Selection::UnencryptedRegex(re(value)?),
            "encrypted_regex" => Selection::EncryptedRegex(re(value)?),
            "unencrypted_comment_regex" => Selection::UnencryptedCommentRegex(re(value)?),
            "encrypted_comment_regex" => Selection::EncryptedCommentRegex(re(value)?),
            other => return Err(SelectionError::Conflict(format!("unknown option {other}"))),
        }))
    }

    /// The metadata field name and value of this option.
    pub fn field(&self) -> (&'static str, String) {
        match self {
            Selection::UnencryptedSuffix(s) => ("unencrypted_suffix", s.clone()),
            Selection::EncryptedSuffix(s) => ("encrypted_suffix", s.clone()),
            Selection::UnencryptedRegex(r) => ("unencrypted_regex", r.as_str().to_string()),
            Selection::EncryptedRegex(r) => ("encrypted_regex", r.as_str().to_string()),
            Selection::UnencryptedCommentRegex(r) => {
                ("unencrypted_comment_regex", r.as_str().to_string())
            }
            Selection::EncryptedCommentRegex(r) => {
                ("encrypted_comment_regex", r.as_str().to_string())
            }
        }
    }

    /// Whether a value at `path` (keys from the root), under the given active comments, is encrypted.
    pub fn encrypts<C: AsRef<str>>(&self, path: &[String], comments: &[C]) -> bool {
        match self {
            Selection::UnencryptedSuffix(s) => !path.iter().any(|k| k.ends_with(s.as_str())),
            Selection::EncryptedSuffix(s) => path.iter().any(|k| k.ends_with(s.as_str())),
            Selection::UnencryptedRegex(r) => !path.iter().any(|k| r.is_match(k)),
            Selection::EncryptedRegex(r) => path.iter().any(|k| r.is_match(k)),
            Selection::UnencryptedCommentRegex(r) => {
                !comments.iter().any(|c| r.is_match(c.as_ref()))
            }
            Selection::EncryptedCommentRegex(r) => comments.iter().any(|c| r.is_match(c.as_ref())),
        }
    }

    /// Whether a comment's own text keeps it in plaintext (the marker comments of comment regexes).
    pub fn is_marker(&self, comment: &str) -> bool {
        match self {
            Selection::UnencryptedCommentRegex(r) | Selection::EncryptedCommentRegex(r) => {
                r.is_match(comment)
            }
            _ => false,
        }
    }
}
