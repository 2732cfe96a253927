//! Sigstore bundles (v0.1–v0.3) as fetched, before verification.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::verify::formats::bundle;

const HEX: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = bundle::parse(data) {
        let _ = bundle::is_bundle_media_type(b.media_type());
        let _ = b.hint();
        let _ = b.is_keyless();
        let _ = b.tlog_entries();
        let _ = b.is_dsse();
        let _ = b.names_repository(HEX);
        let _ = b.claimed_subjects();
    }
});
