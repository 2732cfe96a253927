//! Private key files the CLI signs with: PEM, PKCS#8 and cosign's
//! encrypted keys (scrypt + secretbox). scrypt runs only for small
//! parameters, so an iteration stays fast; the parser's own bound on `N`
//! is exercised on every input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::crypto::private_key::{p256_signing_key, EncryptedKey, PrivateKeyFile};

fn try_key(key: &EncryptedKey) {
    let params = key.params();
    if params.log_n <= 10 && params.r <= 8 && params.p <= 2 {
        if let Ok(der) = key.decrypt(b"") {
            let _ = p256_signing_key(&der);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match PrivateKeyFile::parse(data) {
        Ok(PrivateKeyFile::Plain(der)) => {
            let _ = p256_signing_key(&der);
        }
        Ok(PrivateKeyFile::Encrypted(key)) => try_key(&key),
        Err(_) => {}
    }
    if let Ok(key) = EncryptedKey::from_json(data) {
        try_key(&key);
    }
});
