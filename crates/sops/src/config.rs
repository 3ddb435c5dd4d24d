//! `.sops.yaml` creation rules: which recipients and options a new file gets, chosen by `path_regex`.
//!
//! Pure: the caller finds and reads the file (lockstep looks from the target file's directory upwards,
//! then from the working directory) and passes its text and directory in.

use std::path::Path;

use regex::Regex;

use super::rules::{SELECTION_FIELDS, Selection};
use super::store::yaml;
use super::tree::Value;

/// One creation rule.
#[derive(Debug, Clone)]
pub struct CreationRule {
    /// Unanchored regex on the path relative to the config's directory; `None` matches everything.
    pub path_regex: Option<Regex>,
    /// Recipients per key group (`age:`/`pgp:` shorthand → one group): age recipients as written,
    /// PGP keys as `pgp:FINGERPRINT`.
    pub key_groups: Vec<Vec<String>>,
    /// Whether groups hold keys of other types (pgp, kms…) that lockstep cannot encrypt to.
    pub foreign_keys: Vec<String>,
    /// `shamir_threshold`.
    pub shamir_threshold: Option<usize>,
    /// The rule's selection option, if any.
    pub selection: Option<Selection>,
    /// `mac_only_encrypted`.
    pub mac_only_encrypted: bool,
}

/// A parsed `.sops.yaml`.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Rules in file order; the first match wins.
    pub creation_rules: Vec<CreationRule>,
    /// `stores.yaml.indent` (default 4).
    pub yaml_indent: Option<usize>,
}

/// A `.sops.yaml` that cannot be used; names the rule and field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn strings(v: &Value, what: &str) -> Result<Vec<String>, ConfigError> {
    let out: Vec<String> = match v {
        Value::Str(s) => s
            .expose()
            .split(',')
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty())
            .collect(),
        Value::List(items) => {
            let mut out = Vec::new();
            for i in items {
                match i {
                    Value::Str(s) => out.extend(
                        s.expose()
                            .split(',')
                            .map(|r| r.trim().to_string())
                            .filter(|r| !r.is_empty()),
                    ),
                    Value::Comment(_) => {}
                    other => {
                        return Err(ConfigError(format!(
                            "{what}: expected recipient strings, found a {}",
                            other.kind()
                        )));
                    }
                }
            }
            out
        }
        Value::Null => vec![],
        other => {
            return Err(ConfigError(format!(
                "{what}: expected a string or a list, found a {}",
                other.kind()
            )));
        }
    };
    Ok(out)
}

const FOREIGN: [&str; 6] = [
    "kms",
    "gcp_kms",
    "azure_keyvault",
    "hc_vault_transit_uri",
    "hc_vault",
    "hckms",
];

/// PGP fingerprints (a list, or comma-separated as sops takes them) as `pgp:FINGERPRINT` recipients:
/// upper-case, spaces removed.
fn pgp_recipients(v: &Value, what: &str) -> Result<Vec<String>, ConfigError> {
    Ok(strings(v, what)?
        .into_iter()
        .map(|fp| pgp_recipient(&fp))
        .collect())
}

/// The recipient text of a PGP key: `pgp:` and its fingerprint, upper-case, without spaces (or
/// sops's `!` for "this subkey exactly": the fingerprint names the key either way).
pub fn pgp_recipient(fingerprint: &str) -> String {
    let fp: String = fingerprint
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '!')
        .collect::<String>()
        .to_uppercase();
    format!("pgp:{fp}")
}

fn parse_rule(v: &Value, n: usize) -> Result<CreationRule, ConfigError> {
    let ctx = |field: &str| format!("creation_rules[{n}].{field}");
    let path_regex = match v.get("path_regex").and_then(Value::clear_text) {
        Some(r) => {
            Some(Regex::new(&r).map_err(|e| ConfigError(format!("{}: {e}", ctx("path_regex"))))?)
        }
        None => None,
    };
    let mut foreign_keys = Vec::new();
    let key_groups = match v.get("key_groups") {
        Some(Value::List(groups)) if !groups.is_empty() => {
            let mut out = Vec::new();
            for (g, group) in groups
                .iter()
                .filter(|g| !matches!(g, Value::Comment(_)))
                .enumerate()
            {
                let mut age = match group.get("age") {
                    Some(a) => strings(a, &ctx(&format!("key_groups[{g}].age")))?,
                    None => vec![],
                };
                if let Some(p) = group.get("pgp") {
                    age.extend(pgp_recipients(p, &ctx(&format!("key_groups[{g}].pgp")))?);
                }
                for f in FOREIGN {
                    if group.get(f).is_some_and(|x| !matches!(x, Value::Null)) {
                        foreign_keys.push(f.to_string());
                    }
                }
                out.push(age);
            }
            out
        }
        _ => {
            for f in FOREIGN {
                if v.get(f).is_some_and(|x| !matches!(x, Value::Null)) {
                    foreign_keys.push(f.to_string());
                }
            }
            let mut group = match v.get("age") {
                Some(a) => strings(a, &ctx("age"))?,
                None => vec![],
            };
            if let Some(p) = v.get("pgp") {
                group.extend(pgp_recipients(p, &ctx("pgp"))?);
            }
            vec![group]
        }
    };
    let shamir_threshold = match v.get("shamir_threshold").and_then(Value::clear_text) {
        Some(t) => Some(t.parse().map_err(|_| {
            ConfigError(format!(
                "{}: {t:?} is not a number",
                ctx("shamir_threshold")
            ))
        })?),
        None => None,
    };
    let fields: Vec<(&str, String)> = SELECTION_FIELDS
        .iter()
        .filter_map(|f| v.get(f).and_then(Value::clear_text).map(|s| (*f, s)))
        .collect();
    let selection = Selection::from_fields(fields.iter().map(|(f, s)| (*f, s.as_str())))
        .map_err(|e| ConfigError(format!("creation_rules[{n}]: {e}")))?;
    let mac_only_encrypted =
        matches!(v.get("mac_only_encrypted"), Some(Value::Bool(b)) if *b.expose());
    Ok(CreationRule {
        path_regex,
        key_groups,
        foreign_keys,
        shamir_threshold,
        selection,
        mac_only_encrypted,
    })
}

impl Config {
    /// Parses `.sops.yaml` text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let docs = yaml::parse(text).map_err(|e| ConfigError(e.to_string()))?;
        let Some(doc) = docs.into_iter().next() else {
            return Ok(Config::default());
        };
        let root = Value::Map(doc.items);
        let mut config = Config::default();
        if let Some(Value::List(rules)) = root.get("creation_rules") {
            for (n, rule) in rules
                .iter()
                .filter(|r| !matches!(r, Value::Comment(_)))
                .enumerate()
            {
                config.creation_rules.push(parse_rule(rule, n)?);
            }
        }
        if let Some(Value::Int(i)) = root
            .get("stores")
            .and_then(|s| s.get("yaml"))
            .and_then(|y| y.get("indent"))
        {
            config.yaml_indent = usize::try_from(*i.expose()).ok();
        }
        Ok(config)
    }

    /// The first rule matching `file`, tested relative to `config_dir` when the file lies below it.
    pub fn rule_for(&self, file: &Path, config_dir: &Path) -> Option<&CreationRule> {
        let rel = file.strip_prefix(config_dir).unwrap_or(file);
        let text = rel.to_string_lossy();
        self.creation_rules
            .iter()
            .find(|r| r.path_regex.as_ref().is_none_or(|re| re.is_match(&text)))
    }
}
