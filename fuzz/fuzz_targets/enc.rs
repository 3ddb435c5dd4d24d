//! Fuzzes the `ENC[…]` parser and the sops metadata/structure checks: never a panic on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep::sops::{self, cipher, store::Format};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = cipher::parse(s);
    }
    for format in [Format::Yaml, Format::Json, Format::Dotenv, Format::Ini] {
        let _ = sops::check_structure(data, format);
    }
});
