//! The `sops:` metadata block: recipients and wrapped data keys, MAC, timestamps, selection option.
//!
//! age and PGP entries are parsed; entries for key types lockstep does not implement (kms, gcp_kms,
//! azure_kv, hc_vault, hckms) are carried as they are, so a mixed-key file survives a round trip.

use super::rules::{SELECTION_FIELDS, Selection, SelectionError};
use super::tree::{Item, Value};

/// The sops version lockstep writes into `version` (the format revision it is compatible with).
pub const SOPS_VERSION: &str = "3.13.2";

/// One age recipient and the data key (or Shamir share) wrapped to it, as an armored age file.
#[derive(Debug, Clone, PartialEq)]
pub struct AgeEntry {
    /// `age1…` or an OpenSSH public key line, exactly as given.
    pub recipient: String,
    /// The armored age file.
    pub enc: String,
}

/// One PGP key and the data key (or Shamir share) encrypted to it, as an armored PGP message.
#[derive(Debug, Clone, PartialEq)]
pub struct PgpEntry {
    /// The key's fingerprint (40 hex digits, as sops writes it).
    pub fp: String,
    /// When the data key was encrypted to it (RFC 3339).
    pub created_at: String,
    /// The armored PGP message.
    pub enc: String,
}

/// A key group: every key in it can recover the group's share of the data key.
#[derive(Debug, PartialEq, Default)]
pub struct KeyGroup {
    /// age recipients.
    pub age: Vec<AgeEntry>,
    /// PGP keys.
    pub pgp: Vec<PgpEntry>,
    /// Other key types, verbatim: `(type, list)` e.g. `("kms", [...])`.
    pub others: Vec<(String, Value)>,
}

/// Metadata holds no plaintext, so its tree parts may be copied (trees are not `Clone` in general).
impl Clone for KeyGroup {
    fn clone(&self) -> Self {
        KeyGroup {
            age: self.age.clone(),
            pgp: self.pgp.clone(),
            others: self
                .others
                .iter()
                .map(|(k, v)| (k.clone(), v.duplicate()))
                .collect(),
        }
    }
}

impl KeyGroup {
    /// True when the group holds keys lockstep cannot use (kms, Vault…).
    pub fn has_foreign_keys(&self) -> bool {
        self.others
            .iter()
            .any(|(_, v)| matches!(v, Value::List(l) if !l.is_empty()))
    }
}

/// The parsed `sops` block.
#[derive(Debug, Clone)]
pub struct Metadata {
    /// Key groups; one group is written in the flat form (`age:`, `pgp:` … at the top).
    pub key_groups: Vec<KeyGroup>,
    /// Shares needed to recover the data key (several groups only).
    pub shamir_threshold: Option<usize>,
    /// RFC 3339 UTC time of the last write; the MAC's AAD.
    pub lastmodified: String,
    /// The encrypted MAC.
    pub mac: String,
    /// Which values are encrypted.
    pub selection: Selection,
    /// Whether the MAC covers encrypted values only.
    pub mac_only_encrypted: bool,
    /// The sops version that wrote the file.
    pub version: String,
}

/// A `sops` block that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// A field has the wrong shape.
    #[error("sops metadata: {0}")]
    Invalid(String),
    /// Conflicting or invalid selection options.
    #[error("sops metadata: {0}")]
    Selection(#[from] SelectionError),
}

const KEY_TYPES: [&str; 7] = [
    "age", "pgp", "kms", "gcp_kms", "azure_kv", "hc_vault", "hckms",
];

fn pairs(v: &Value) -> impl Iterator<Item = (&String, &Value)> {
    let items: &[Item] = match v {
        Value::Map(items) => items,
        _ => &[],
    };
    items.iter().filter_map(|i| match i {
        Item::Pair(k, v) => Some((k, v)),
        Item::Comment(_) => None,
    })
}

fn parse_group(v: &Value) -> Result<KeyGroup, MetadataError> {
    let mut group = KeyGroup::default();
    for (k, val) in pairs(v) {
        if k == "age" {
            let list: &[Value] = match val {
                Value::List(l) => l,
                Value::Null => &[],
                _ => return Err(MetadataError::Invalid("age must be a list".into())),
            };
            for entry in list {
                let field = |name: &str| entry.get(name).and_then(Value::clear_text);
                let recipient = field("recipient")
                    .ok_or_else(|| MetadataError::Invalid("age entry without recipient".into()))?;
                let enc = field("enc")
                    .ok_or_else(|| MetadataError::Invalid("age entry without enc".into()))?;
                group.age.push(AgeEntry {
                    recipient: recipient.trim().to_string(),
                    enc,
                });
            }
        } else if k == "pgp" {
            let list: &[Value] = match val {
                Value::List(l) => l,
                Value::Null => &[],
                _ => return Err(MetadataError::Invalid("pgp must be a list".into())),
            };
            for entry in list {
                let field = |name: &str| entry.get(name).and_then(Value::clear_text);
                let fp = field("fp")
                    .ok_or_else(|| MetadataError::Invalid("pgp entry without fp".into()))?;
                let enc = field("enc")
                    .ok_or_else(|| MetadataError::Invalid("pgp entry without enc".into()))?;
                group.pgp.push(PgpEntry {
                    fp: fp.trim().to_string(),
                    created_at: field("created_at").unwrap_or_default(),
                    enc,
                });
            }
        } else if KEY_TYPES.contains(&k.as_str()) {
            group.others.push((k.clone(), val.duplicate()));
        }
    }
    Ok(group)
}

impl Metadata {
    /// Parses the value of the top-level `sops` key. Numbers and booleans may be strings (dotenv, INI).
    pub fn parse(v: &Value) -> Result<Metadata, MetadataError> {
        if !matches!(v, Value::Map(_)) {
            return Err(MetadataError::Invalid(
                "the sops key is not a mapping".into(),
            ));
        }
        let text = |name: &str| v.get(name).and_then(Value::clear_text);
        let key_groups = match v.get("key_groups") {
            Some(Value::List(groups)) if !groups.is_empty() => groups
                .iter()
                .map(parse_group)
                .collect::<Result<Vec<_>, _>>()?,
            _ => vec![parse_group(v)?],
        };
        let shamir_threshold = match text("shamir_threshold") {
            Some(t) => {
                let n: usize = t.parse().map_err(|_| {
                    MetadataError::Invalid(format!("shamir_threshold {t:?} is not a number"))
                })?;
                (n > 0).then_some(n)
            }
            None => None,
        };
        let selection_fields: Vec<(&str, String)> = SELECTION_FIELDS
            .iter()
            .filter_map(|f| text(f).filter(|s| !s.is_empty()).map(|s| (*f, s)))
            .collect();
        let selection =
            Selection::from_fields(selection_fields.iter().map(|(f, s)| (*f, s.as_str())))?
                .unwrap_or_default();
        let mac_only_encrypted = match text("mac_only_encrypted").as_deref() {
            None | Some("false") | Some("False") => false,
            Some("true") | Some("True") => true,
            Some(other) => {
                return Err(MetadataError::Invalid(format!(
                    "mac_only_encrypted {other:?} is not a boolean"
                )));
            }
        };
        let version = text("version").unwrap_or_default();
        if version.is_empty() {
            return Err(MetadataError::Invalid("version is missing".into()));
        }
        Ok(Metadata {
            key_groups,
            shamir_threshold,
            lastmodified: text("lastmodified")
                .ok_or_else(|| MetadataError::Invalid("lastmodified is missing".into()))?,
            mac: text("mac").unwrap_or_default(),
            selection,
            mac_only_encrypted,
            version,
        })
    }

    /// All PGP entries of all groups.
    pub fn pgp_entries(&self) -> impl Iterator<Item = &PgpEntry> {
        self.key_groups.iter().flat_map(|g| g.pgp.iter())
    }

    /// All age entries of all groups.
    pub fn age_entries(&self) -> impl Iterator<Item = &AgeEntry> {
        self.key_groups.iter().flat_map(|g| g.age.iter())
    }

    /// The block as a tree, keys in alphabetical order as sops 3.13 writes them.
    pub fn to_value(&self) -> Value {
        fn group_items(g: &KeyGroup, in_group: bool) -> Vec<(String, Value)> {
            let mut out: Vec<(String, Value)> = g
                .others
                .iter()
                .map(|(k, v)| (k.clone(), v.duplicate()))
                .collect();
            if !g.age.is_empty() || in_group {
                let list = g
                    .age
                    .iter()
                    .map(|e| {
                        Value::Map(vec![
                            Item::Pair("enc".into(), Value::Str(e.enc.as_str().into())),
                            Item::Pair("recipient".into(), Value::Str(e.recipient.as_str().into())),
                        ])
                    })
                    .collect();
                out.push(("age".into(), Value::List(list)));
            }
            if !g.pgp.is_empty() {
                let list = g
                    .pgp
                    .iter()
                    .map(|e| {
                        Value::Map(vec![
                            Item::Pair(
                                "created_at".into(),
                                Value::Str(e.created_at.as_str().into()),
                            ),
                            Item::Pair("enc".into(), Value::Str(e.enc.as_str().into())),
                            Item::Pair("fp".into(), Value::Str(e.fp.as_str().into())),
                        ])
                    })
                    .collect();
                out.push(("pgp".into(), Value::List(list)));
            }
            out
        }
        let mut fields: Vec<(String, Value)> = Vec::new();
        if self.key_groups.len() == 1 {
            fields.extend(group_items(&self.key_groups[0], false));
        } else {
            let groups = self
                .key_groups
                .iter()
                .map(|g| {
                    let mut items = group_items(g, true);
                    items.sort_by(|a, b| a.0.cmp(&b.0));
                    Value::Map(items.into_iter().map(|(k, v)| Item::Pair(k, v)).collect())
                })
                .collect();
            fields.push(("key_groups".into(), Value::List(groups)));
        }
        if let Some(t) = self.shamir_threshold {
            fields.push(("shamir_threshold".into(), Value::Int((t as i64).into())));
        }
        fields.push((
            "lastmodified".into(),
            Value::Str(self.lastmodified.as_str().into()),
        ));
        fields.push(("mac".into(), Value::Str(self.mac.as_str().into())));
        let (sel_field, sel_value) = self.selection.field();
        fields.push((sel_field.into(), Value::Str(sel_value.into())));
        if self.mac_only_encrypted {
            fields.push(("mac_only_encrypted".into(), Value::Bool(true.into())));
        }
        fields.push(("version".into(), Value::Str(self.version.as_str().into())));
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        Value::Map(fields.into_iter().map(|(k, v)| Item::Pair(k, v)).collect())
    }
}

/// Formats a UTC time as sops's `lastmodified` (RFC 3339, seconds, `Z`).
pub fn format_lastmodified(ts: jiff::Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Normalises a stored `lastmodified` to the MAC's AAD form (Go `time.RFC3339`: no fraction, `Z`).
pub fn mac_aad_time(lastmodified: &str) -> String {
    match lastmodified.parse::<jiff::Timestamp>() {
        Ok(ts) => {
            let offset = lastmodified
                .rfind(['+', '-'])
                .filter(|&i| i > 10)
                .map(|i| &lastmodified[i..]);
            match offset {
                // Keep a non-UTC offset as written (seconds precision).
                Some(off) if off != "+00:00" && off != "-00:00" => {
                    let secs = lastmodified.split('.').next().unwrap_or(lastmodified);
                    let base = secs.trim_end_matches(off);
                    format!("{}{off}", &base[..base.len().min(19)])
                }
                _ => format_lastmodified(ts),
            }
        }
        Err(_) => lastmodified.to_string(),
    }
}
