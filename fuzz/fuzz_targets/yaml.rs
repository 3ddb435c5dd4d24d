//! Fuzzes the yaml store: any input either parses or is refused with an error, never a panic; what parses
//! emits as plaintext and parses back to the same data, in the same order, with every comment kept
//! (where a comment sits between odd constructs may be normalised; its text may not change or vanish).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep::sops::store::{self, Format};
use lockstep::sops::tree::{Document, Item, Value};

/// The data without comments, and the comment texts in document order.
fn split(docs: &[Document]) -> (String, Vec<String>) {
    fn walk_items(items: &[Item], comments: &mut Vec<String>) -> String {
        let mut out = String::from("{");
        for i in items {
            match i {
                Item::Pair(k, v) => out.push_str(&format!("{k:?}:{},", walk(v, comments))),
                Item::Comment(c) => comments.push(c.text.expose().to_string()),
            }
        }
        out + "}"
    }
    fn walk(v: &Value, comments: &mut Vec<String>) -> String {
        match v {
            Value::Map(items) => walk_items(items, comments),
            Value::List(values) => {
                let mut out = String::from("[");
                for v in values {
                    match v {
                        Value::Comment(c) => comments.push(c.text.expose().to_string()),
                        other => out.push_str(&format!("{},", walk(other, comments))),
                    }
                }
                out + "]"
            }
            // Compared as kind and text: NaN is not equal to itself, but prints the same.
            other => format!(
                "{}:{:?}",
                other.kind(),
                other.scalar_text().as_ref().map(|t| t.expose().as_str())
            ),
        }
    }
    let mut comments = Vec::new();
    let data = docs
        .iter()
        .map(|d| walk_items(&d.items, &mut comments))
        .collect::<Vec<_>>()
        .join("---");
    (data, comments)
}

fuzz_target!(|data: &[u8]| {
    let Ok(loaded) = store::load_encrypted(Format::Yaml, data) else {
        return;
    };
    // Metadata is kept aside by the store; the documents must survive a plaintext round trip.
    if loaded.metadata.is_some() {
        return;
    }
    let Ok(text) = store::emit_plain(Format::Yaml, &loaded.docs, 4) else {
        return;
    };
    let again = store::load_plain(Format::Yaml, &text).expect("emitted plaintext parses again");
    let (data_before, comments_before) = split(&loaded.docs);
    let (data_after, comments_after) = split(&again.docs);
    assert_eq!(data_after, data_before, "round trip changed the data");
    let (mut sorted_before, mut sorted_after) = (comments_before, comments_after);
    sorted_before.sort();
    sorted_after.sort();
    assert_eq!(
        sorted_after, sorted_before,
        "round trip lost or changed a comment"
    );
});
