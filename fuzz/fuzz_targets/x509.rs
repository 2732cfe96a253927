//! The keyless work's X.509 and trust-root parsing: Fulcio leaf
//! certificates (identity, SCT list) and `trusted_root.json`; RFC 3339
//! times.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::sigstore::cert::Leaf;
use portcullis::sigstore::root::TrustedRoot;

fuzz_target!(|data: &[u8]| {
    if let Ok(leaf) = Leaf::parse(data) {
        let _ = leaf.identity();
        let _ = leaf.sct_list();
        let _ = leaf.valid_at(0);
    }
    let _ = TrustedRoot::parse(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = portcullis::sigstore::time::parse_rfc3339_ms(text);
    }
});
