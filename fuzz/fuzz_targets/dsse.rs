//! DSSE envelopes and the in-toto statements they carry: the envelope as
//! fetched (parsed before any signature is checked) and the statement as
//! read once a signature held.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::verify::formats::dsse::{self, Envelope, Verified};

const HEX: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::parse(data) {
        let _ = envelope.payload_type();
        let _ = envelope.claimed_names(HEX);
        let _ = envelope.claimed_subjects();
    }
    let _ = dsse::claimed_subjects(data);
    // The same bytes as a signed in-toto statement.
    if let Ok(verified) = Verified::from_signed("application/vnd.in-toto+json", data, "k".into()) {
        let _ = verified.subject_names(HEX);
        let _ = verified.predicate_type();
    }
});
