//! Binary Authorization attestation occurrences (Container Analysis API
//! answers, single occurrences, legacy PGP/PKIX forms).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::verify::formats::binauthz::parse_occurrences;

fuzz_target!(|data: &[u8]| {
    if let Ok(occurrences) = parse_occurrences(data) {
        for o in &occurrences {
            let _ = o.payload();
            let _ = o.signatures();
            let _ = o.claimed_digest();
        }
    }
});
