//! `WWW-Authenticate` challenges from upstreams, and the token endpoint's
//! JSON answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::upstream::auth::{Challenge, TokenResponse};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(Challenge::Bearer { realm, .. }) = Challenge::parse(text) {
            assert!(text.len() >= realm.len());
        }
    }
    let _ = serde_json::from_slice::<TokenResponse>(data);
});
