//! Properties of the format code: random trees survive encrypt → decrypt in every structured store, and
//! a change of any single character in a value, an IV, a tag, the MAC or a recipient's wrapped data key
//! is rejected (never silently decrypted to something else).

use lockstep::keys::{self, KeyRing, Recipient};
use lockstep::sops::rules::Selection;
use lockstep::sops::store::{self, Format};
use lockstep::sops::tree::{Document, Item, Value};
use lockstep::sops::{self, EncryptOptions};
use proptest::prelude::*;

fn ring_and_recipient() -> (KeyRing, Recipient, String) {
    let (text, public) = keys::generate("2026-01-01T00:00:00Z");
    let mut ring = KeyRing::default();
    ring.add_text(text.as_bytes(), "test").expect("identity");
    let recipient = Recipient::parse(&public).expect("recipient");
    (ring, recipient, public)
}

fn encrypt(
    format: Format,
    plain: &[u8],
    recipient: (String, Recipient),
    selection: Selection,
) -> Vec<u8> {
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut rng = |buf: &mut [u8]| {
        for b in buf.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
    };
    sops::encrypt(
        plain,
        EncryptOptions {
            format,
            output: format,
            key_groups: vec![vec![recipient]],
            shamir_threshold: None,
            selection,
            mac_only_encrypted: false,
            now: "2026-01-02T03:04:05Z".parse().expect("timestamp"),
            yaml_indent: 4,
            rng: &mut rng,
        },
    )
    .expect("encrypts")
}

fn key() -> impl Strategy<Value = String> {
    "[a-zA-Z_][a-zA-Z0-9_.é-]{0,10}".prop_filter("reserved", |k| k != "sops")
}

/// What the strategies generate: a cloneable model of a tree (trees themselves are not `Clone`, so
/// plaintext cannot be copied by accident), built into a real tree once per use.
#[derive(Debug, Clone)]
enum Model {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
    List(Vec<Model>),
    Map(Vec<(String, Model)>),
}

impl Model {
    fn build(&self) -> Value {
        match self {
            Model::Str(s) => Value::Str(s.as_str().into()),
            Model::Int(i) => Value::Int((*i).into()),
            Model::Float(f) => Value::Float((*f).into()),
            Model::Bool(b) => Value::Bool((*b).into()),
            Model::Null => Value::Null,
            Model::List(l) => Value::List(l.iter().map(Model::build).collect()),
            Model::Map(m) => Value::Map(
                m.iter()
                    .map(|(k, v)| Item::Pair(k.clone(), v.build()))
                    .collect(),
            ),
        }
    }
}

fn leaf() -> impl Strategy<Value = Model> {
    prop_oneof![
        "\\PC{0,20}".prop_map(Model::Str),
        "[ -~\\n\\t]{0,20}".prop_map(Model::Str),
        // Strings a YAML reader would take for something else unless they are quoted.
        prop::sample::select(vec![
            "017",
            "0x1F",
            "1e3",
            "1_000",
            "-.5",
            "true",
            "False",
            "yes",
            "~",
            "null",
            "2024-01-01",
            "2001-12-14t21:59:43.10-05:00",
            ".inf",
            ".NaN",
            "- a",
            "a: b",
            "#c",
            "a #c",
            "'q'",
            "\"dq\"",
            "",
            " lead",
            "trail ",
            "@at",
            "%p",
            "`b",
            "|",
            ">",
            "*x",
            "&y",
            "!t",
            "[",
            "{",
            ",",
            "?",
            ":",
            "---",
            "...",
            "a\nb\n",
            "a\n\n",
            "\n",
            " \na",
            "tab\there",
            "ENC[AES256_GCM,data:x]",
            "\u{feff}bom",
        ])
        .prop_map(|s| Model::Str(s.to_string())),
        any::<i64>().prop_map(Model::Int),
        (-1e12f64..1e12).prop_map(Model::Float),
        any::<bool>().prop_map(Model::Bool),
        Just(Model::Null),
    ]
}

fn tree() -> impl Strategy<Value = Model> {
    leaf().prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Model::List),
            prop::collection::btree_map(key(), inner, 0..4)
                .prop_map(|m| Model::Map(m.into_iter().collect())),
        ]
    })
}

fn document() -> impl Strategy<Value = Vec<(String, Model)>> {
    prop::collection::btree_map(key(), tree(), 1..5).prop_map(|m| m.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64), failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn random_trees_round_trip_through_yaml_and_json(items in document()) {
        let (ring, recipient, public) = ring_and_recipient();
        for format in [Format::Yaml, Format::Json] {
            let doc = Document::new(items.iter().map(|(k, v)| Item::Pair(k.clone(), v.build())).collect());
            let plain = store::emit_plain(format, std::slice::from_ref(&doc), 4).expect("emits");
            let enc = encrypt(format, &plain, (public.clone(), Recipient::parse(&public).expect("r")), Selection::default());
            let decrypted = sops::decrypt(&enc, format, &ring, false).expect("decrypts with MAC");
            prop_assert!(decrypted.docs == vec![doc], "{:?}\n{}", format, String::from_utf8_lossy(&plain));
        }
        drop(recipient);
    }
}

/// Positions of the characters inside `ENC[…]` fields and armored age blocks of an encrypted YAML file.
fn sensitive_positions(text: &str) -> Vec<(usize, &'static str)> {
    let mut out = Vec::new();
    for (start, _) in text.match_indices("ENC[AES256_GCM,") {
        let end = start + text[start..].find(']').expect("closing ]");
        let body = &text[start..end];
        let is_mac = text[..start].ends_with("mac: ");
        for field in ["data:", "iv:", "tag:"] {
            let f = start + body.find(field).expect("field") + field.len();
            let len = text[f..].find([',', ']']).expect("field end");
            let label = match (is_mac, field) {
                (true, _) => "mac",
                (false, "data:") => "value",
                (false, "iv:") => "iv",
                _ => "tag",
            };
            out.extend(
                (f..f + len)
                    .filter(|&i| &text[i..=i] != "=")
                    .map(|i| (i, label)),
            );
        }
    }
    let begin = text
        .find("-----BEGIN AGE ENCRYPTED FILE-----")
        .expect("armor")
        + 35;
    let end = text
        .find("-----END AGE ENCRYPTED FILE-----")
        .expect("armor end");
    out.extend(
        (begin..end)
            .filter(|&i| text.as_bytes()[i].is_ascii_alphanumeric())
            .map(|i| (i, "recipient")),
    );
    out
}

#[test]
fn any_single_character_change_is_rejected() {
    let (ring, recipient, public) = ring_and_recipient();
    let plain = b"db:\n    password: hunter2\n    port: 5432\nflag: true\n";
    let enc = String::from_utf8(encrypt(
        Format::Yaml,
        plain,
        (public, recipient),
        Selection::default(),
    ))
    .expect("utf-8");
    sops::decrypt(enc.as_bytes(), Format::Yaml, &ring, false).expect("the original decrypts");
    let positions = sensitive_positions(&enc);
    let mut counts = std::collections::BTreeMap::new();
    for (i, label) in positions {
        let original = enc.as_bytes()[i];
        let replacement = if original == b'A' { b'B' } else { b'A' };
        let mut bytes = enc.clone().into_bytes();
        bytes[i] = replacement;
        let result = sops::decrypt(&bytes, Format::Yaml, &ring, false);
        assert!(
            result.is_err(),
            "a change at byte {i} ({label}) was accepted"
        );
        *counts.entry(label).or_insert(0) += 1;
    }
    for label in ["value", "iv", "tag", "mac", "recipient"] {
        assert!(
            counts.get(label).copied().unwrap_or(0) > 10,
            "too few {label} positions tried: {counts:?}"
        );
    }
}
