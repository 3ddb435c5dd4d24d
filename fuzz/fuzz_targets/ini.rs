//! Fuzzes the ini store: any input either parses or is refused with an error, never a panic; what parses
//! emits as plaintext and parses back to the same keys and values (comments may come back re-marked or,
//! when they are only `;`/`#` marks, not at all: go-ini rewrites them so, and lockstep writes as sops).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep::sops::store::{self, Format};
use lockstep::sops::tree::{Document, Item, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(loaded) = store::load_encrypted(Format::Ini, data) else {
        return;
    };
    // Metadata is kept aside by the store; the documents must survive a plaintext round trip.
    if loaded.metadata.is_some() {
        return;
    }
    let Ok(text) = store::emit_plain(Format::Ini, &loaded.docs, 4) else {
        return;
    };
    let again = store::load_plain(Format::Ini, &text).expect("emitted plaintext parses again");
    // Compared as text: NaN is not equal to itself, but prints the same.
    assert_eq!(
        without_comments(&again.docs),
        without_comments(&loaded.docs),
        "round trip changed the documents"
    );
});

/// The debug text of the documents' keys and values, without their comments.
fn without_comments(docs: &[Document]) -> String {
    let shown: Vec<String> = docs
        .iter()
        .map(|d| {
            d.items
                .iter()
                .filter_map(|i| match i {
                    Item::Pair(k, Value::Map(items)) => Some(format!(
                        "{k:?}: {:?}",
                        items
                            .iter()
                            .filter(|i| matches!(i, Item::Pair(..)))
                            .collect::<Vec<_>>()
                    )),
                    Item::Pair(k, v) => Some(format!("{k:?}: {v:?}")),
                    Item::Comment(_) => None,
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect();
    shown.join("\n")
}
