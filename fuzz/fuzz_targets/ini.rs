//! Fuzzes the ini store: any input either parses or is refused with an error, never a panic; what parses
//! emits as plaintext and parses back to the same documents.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep::sops::store::{self, Format};

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
        format!("{:?}", again.docs),
        format!("{:?}", loaded.docs),
        "round trip changed the documents"
    );
});
