//! Private keys for signing, as files hold them: unencrypted PKCS#8 PEM
//! (`PRIVATE KEY`, what `portcullis keygen` writes) and cosign's encrypted
//! keys (`ENCRYPTED SIGSTORE PRIVATE KEY`, or the older `ENCRYPTED COSIGN
//! PRIVATE KEY`, what `cosign generate-key-pair` writes). Pure: the caller
//! reads the file and finds the password.
//!
//! A cosign key's PEM body is the JSON of go-securesystemslib's
//! `encrypted` package:
//!
//! ```text
//! {"kdf":{"name":"scrypt","params":{"N":32768,"r":8,"p":1},"salt":"<b64>"},
//!  "cipher":{"name":"nacl/secretbox","nonce":"<b64, 24 bytes>"},
//!  "ciphertext":"<b64>"}
//! ```
//!
//! The box key is `scrypt(password, salt, N, r, p)` (32 bytes) and the
//! plaintext is the PKCS#8 DER of the key. Everything a hostile file could
//! use to make us work or allocate is bounded before any work is done:
//! the file size ([`MAX_KEY_FILE_BYTES`]), scrypt's memory
//! ([`MAX_SCRYPT_MEMORY_BYTES`]) and its parallelism ([`MAX_SCRYPT_P`]).
//! Unknown KDF or cipher names and unknown fields are refused, not
//! guessed at. Secrets (the password, the derived key, the DER) are wiped
//! when dropped and never appear in a `Debug` or an error.

use std::fmt;

use base64::Engine as _;
use crypto_secretbox::aead::{Aead as _, KeyInit as _};
use serde::Deserialize;
use zeroize::Zeroizing;

/// Largest key file read: a P-256 PKCS#8 PEM is ~240 bytes, an encrypted
/// cosign key ~650, an RSA-4096 one ~3.3 KiB; anything near 64 KiB is not
/// a key.
pub const MAX_KEY_FILE_BYTES: usize = 64 * 1024;

/// Most memory scrypt may take for one key: `128 · N · r` bytes. cosign
/// writes N = 32768, r = 8 (32 MiB); go-securesystemslib's strongest
/// setting (N = 131072) takes 128 MiB. 256 MiB leaves room for that and
/// stops a key file from making the CLI allocate gigabytes.
pub const MAX_SCRYPT_MEMORY_BYTES: u64 = 256 * 1024 * 1024;

/// Largest scrypt `p` accepted (the work is `p` times the memory-bound
/// mix). cosign and go-securesystemslib only ever write 1.
pub const MAX_SCRYPT_P: u32 = 4;

/// The KDF cosign keys use.
const KDF_SCRYPT: &str = "scrypt";
/// The cipher cosign keys use (XSalsa20-Poly1305).
const CIPHER_SECRETBOX: &str = "nacl/secretbox";
/// The secretbox key length, and so scrypt's output length.
const BOX_KEY_BYTES: usize = 32;
/// The secretbox nonce length.
const BOX_NONCE_BYTES: usize = 24;
/// The Poly1305 tag every secretbox ciphertext starts with.
const BOX_TAG_BYTES: usize = 16;
/// Longest salt accepted (cosign's is 32 bytes).
const MAX_SALT_BYTES: usize = 1024;
/// Longest KDF or cipher name repeated in an error.
const MAX_NAME_IN_ERROR: usize = 40;

/// PEM labels of cosign's encrypted keys (current, then the older one).
pub const ENCRYPTED_LABELS: [&str; 2] = [
    "ENCRYPTED SIGSTORE PRIVATE KEY",
    "ENCRYPTED COSIGN PRIVATE KEY",
];
/// The PEM label of an unencrypted PKCS#8 key.
pub const PKCS8_LABEL: &str = "PRIVATE KEY";

/// Why a private key file cannot be used. No variant carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrivateKeyError {
    /// The file is larger than [`MAX_KEY_FILE_BYTES`].
    #[error("the file is larger than {MAX_KEY_FILE_BYTES} bytes; not a private key")]
    TooLarge,
    /// Not PEM at all.
    #[error("{0}")]
    NotPem(String),
    /// PEM, but of a kind this reads no key from.
    #[error(
        "PEM {0:?} is not a supported private key (expected \"PRIVATE KEY\" (PKCS#8, as \
         `portcullis keygen` writes it) or \"ENCRYPTED SIGSTORE PRIVATE KEY\" (as \
         `cosign generate-key-pair` writes it))"
    )]
    UnsupportedPem(String),
    /// The encrypted key's JSON is not the shape cosign writes.
    #[error("the encrypted key is malformed: {0}")]
    Malformed(String),
    /// A KDF other than scrypt.
    #[error("the encrypted key uses KDF {0:?}; only \"scrypt\" is supported")]
    UnknownKdf(String),
    /// A cipher other than NaCl secretbox.
    #[error("the encrypted key uses cipher {0:?}; only \"nacl/secretbox\" is supported")]
    UnknownCipher(String),
    /// scrypt parameters that are invalid or cost more than allowed.
    #[error("the encrypted key's scrypt parameters N={n} r={r} p={p} are refused: {reason}")]
    ScryptParams {
        n: u64,
        r: u64,
        p: u64,
        reason: String,
    },
    /// The box did not open: another password, or altered bytes.
    #[error("wrong password or corrupted key")]
    WrongPassword,
    /// The key (decrypted or not) is not a PKCS#8 key this can sign with.
    #[error("{0}")]
    Unusable(String),
}

/// PKCS#8 DER of a private key: wiped when dropped, never printed.
pub struct SecretDer(Zeroizing<Vec<u8>>);

impl SecretDer {
    /// The DER bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretDer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretDer(<redacted>)")
    }
}

/// A private key file, read.
#[derive(Debug)]
pub enum PrivateKeyFile {
    /// An unencrypted PKCS#8 key.
    Plain(SecretDer),
    /// A cosign encrypted key, its parameters already checked: opening it
    /// needs the password ([`EncryptedKey::decrypt`]).
    Encrypted(EncryptedKey),
}

impl PrivateKeyFile {
    /// Reads a key file's bytes: one PEM block, unencrypted PKCS#8 or a
    /// cosign encrypted key. An encrypted key's parameters are checked
    /// here, before anyone is asked for a password.
    pub fn parse(bytes: &[u8]) -> Result<PrivateKeyFile, PrivateKeyError> {
        if bytes.len() > MAX_KEY_FILE_BYTES {
            return Err(PrivateKeyError::TooLarge);
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| PrivateKeyError::NotPem("not PEM: the file is not text".into()))?;
        let (label, der) = super::pem_decode(text).map_err(PrivateKeyError::NotPem)?;
        let der = Zeroizing::new(der);
        if label == PKCS8_LABEL {
            return Ok(PrivateKeyFile::Plain(SecretDer(der)));
        }
        if ENCRYPTED_LABELS.contains(&label.as_str()) {
            return EncryptedKey::from_json(&der).map(PrivateKeyFile::Encrypted);
        }
        Err(PrivateKeyError::UnsupportedPem(shorten(&label)))
    }
}

/// scrypt's parameters, validated: `N = 2^log_n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScryptParams {
    pub log_n: u8,
    pub r: u32,
    pub p: u32,
}

impl ScryptParams {
    /// Checks `N`, `r`, `p` as a key file gives them: `N` a power of two
    /// above 1, `r` and `p` at least 1, `p` at most [`MAX_SCRYPT_P`], and
    /// `128 · N · r` within [`MAX_SCRYPT_MEMORY_BYTES`].
    pub fn new(n: u64, r: u64, p: u64) -> Result<ScryptParams, PrivateKeyError> {
        let refuse = |reason: &str| PrivateKeyError::ScryptParams {
            n,
            r,
            p,
            reason: reason.to_owned(),
        };
        if n < 2 || !n.is_power_of_two() {
            return Err(refuse("N must be a power of two greater than 1"));
        }
        if r == 0 || p == 0 {
            return Err(refuse("r and p must be at least 1"));
        }
        if p > u64::from(MAX_SCRYPT_P) {
            return Err(refuse(&format!("p above {MAX_SCRYPT_P}")));
        }
        let memory = n
            .checked_mul(r)
            .and_then(|nr| nr.checked_mul(128))
            .filter(|m| *m <= MAX_SCRYPT_MEMORY_BYTES);
        if memory.is_none() {
            return Err(refuse(&format!(
                "scrypt would need more than {} MiB of memory",
                MAX_SCRYPT_MEMORY_BYTES / (1024 * 1024)
            )));
        }
        // Both fit: r ≤ 2^21 and p ≤ MAX_SCRYPT_P by the checks above.
        let (Ok(r32), Ok(p32)) = (u32::try_from(r), u32::try_from(p)) else {
            return Err(refuse("r or p out of range"));
        };
        let log_n = u8::try_from(n.trailing_zeros()).map_err(|_| refuse("N out of range"))?;
        // The scrypt crate's own rules (N < 2^(128·r/8), r·p < 2^30).
        scrypt::Params::new(log_n, r32, p32, BOX_KEY_BYTES)
            .map_err(|e| refuse(&format!("not valid scrypt parameters ({e})")))?;
        Ok(ScryptParams {
            log_n,
            r: r32,
            p: p32,
        })
    }
}

/// A cosign encrypted key: what opening it takes.
pub struct EncryptedKey {
    params: ScryptParams,
    salt: Vec<u8>,
    nonce: [u8; BOX_NONCE_BYTES],
    ciphertext: Vec<u8>,
}

impl fmt::Debug for EncryptedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedKey")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EncryptedDoc {
    kdf: KdfDoc,
    cipher: CipherDoc,
    ciphertext: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KdfDoc {
    name: String,
    params: ScryptParamsDoc,
    salt: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScryptParamsDoc {
    #[serde(rename = "N")]
    n: u64,
    r: u64,
    p: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CipherDoc {
    name: String,
    nonce: String,
}

impl EncryptedKey {
    /// Reads the JSON body of a cosign encrypted key (the PEM's bytes),
    /// checking names, sizes and scrypt's cost; no work is done yet.
    pub fn from_json(json: &[u8]) -> Result<EncryptedKey, PrivateKeyError> {
        if json.len() > MAX_KEY_FILE_BYTES {
            return Err(PrivateKeyError::TooLarge);
        }
        // The names first: an unknown scheme is reported as such even
        // when its parameters have another shape.
        let names: serde_json::Value = serde_json::from_slice(json)
            .map_err(|e| PrivateKeyError::Malformed(format!("not JSON: {e}")))?;
        if let Some(kdf) = names["kdf"]["name"].as_str() {
            if kdf != KDF_SCRYPT {
                return Err(PrivateKeyError::UnknownKdf(shorten(kdf)));
            }
        }
        if let Some(cipher) = names["cipher"]["name"].as_str() {
            if cipher != CIPHER_SECRETBOX {
                return Err(PrivateKeyError::UnknownCipher(shorten(cipher)));
            }
        }
        let doc: EncryptedDoc =
            serde_json::from_slice(json).map_err(|e| PrivateKeyError::Malformed(e.to_string()))?;
        if doc.kdf.name != KDF_SCRYPT {
            return Err(PrivateKeyError::UnknownKdf(shorten(&doc.kdf.name)));
        }
        if doc.cipher.name != CIPHER_SECRETBOX {
            return Err(PrivateKeyError::UnknownCipher(shorten(&doc.cipher.name)));
        }
        let params = ScryptParams::new(doc.kdf.params.n, doc.kdf.params.r, doc.kdf.params.p)?;
        let b64 = |field: &str, text: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| PrivateKeyError::Malformed(format!("{field} is not base64")))
        };
        let salt = b64("kdf.salt", &doc.kdf.salt)?;
        if salt.is_empty() || salt.len() > MAX_SALT_BYTES {
            return Err(PrivateKeyError::Malformed(format!(
                "kdf.salt must be 1 to {MAX_SALT_BYTES} bytes"
            )));
        }
        let nonce: [u8; BOX_NONCE_BYTES] = b64("cipher.nonce", &doc.cipher.nonce)?
            .try_into()
            .map_err(|_| {
                PrivateKeyError::Malformed(format!("cipher.nonce must be {BOX_NONCE_BYTES} bytes"))
            })?;
        let ciphertext = b64("ciphertext", &doc.ciphertext)?;
        if ciphertext.len() < BOX_TAG_BYTES {
            return Err(PrivateKeyError::Malformed(
                "ciphertext is shorter than its authentication tag".into(),
            ));
        }
        Ok(EncryptedKey {
            params,
            salt,
            nonce,
            ciphertext,
        })
    }

    /// The scrypt parameters the key was written with.
    pub fn params(&self) -> ScryptParams {
        self.params
    }

    /// Opens the box with `password`: the plaintext (for cosign keys,
    /// PKCS#8 DER). Any failure to open is [`PrivateKeyError::WrongPassword`]:
    /// a wrong password and altered bytes cannot be told apart.
    pub fn decrypt(&self, password: &[u8]) -> Result<SecretDer, PrivateKeyError> {
        let params = scrypt::Params::new(
            self.params.log_n,
            self.params.r,
            self.params.p,
            BOX_KEY_BYTES,
        )
        .map_err(|e| PrivateKeyError::ScryptParams {
            n: 1u64 << self.params.log_n,
            r: self.params.r.into(),
            p: self.params.p.into(),
            reason: e.to_string(),
        })?;
        let mut key = Zeroizing::new([0u8; BOX_KEY_BYTES]);
        scrypt::scrypt(password, &self.salt, &params, key.as_mut_slice()).map_err(|_| {
            PrivateKeyError::ScryptParams {
                n: 1u64 << self.params.log_n,
                r: self.params.r.into(),
                p: self.params.p.into(),
                reason: "scrypt refused the output length".into(),
            }
        })?;
        let cipher = crypto_secretbox::XSalsa20Poly1305::new(&(*key).into());
        let plaintext = cipher
            .decrypt(&self.nonce.into(), self.ciphertext.as_slice())
            .map_err(|_| PrivateKeyError::WrongPassword)?;
        Ok(SecretDer(Zeroizing::new(plaintext)))
    }
}

/// An ECDSA P-256 signing key from PKCS#8 DER (cosign's default key type
/// and the one `portcullis sign` signs with); another key type is named
/// in the error.
pub fn p256_signing_key(der: &SecretDer) -> Result<p256::ecdsa::SigningKey, PrivateKeyError> {
    use p256::pkcs8::DecodePrivateKey as _;
    if let Ok(key) = p256::ecdsa::SigningKey::from_pkcs8_der(der.expose()) {
        return Ok(key);
    }
    let info = p256::pkcs8::PrivateKeyInfo::try_from(der.expose())
        .map_err(|_| PrivateKeyError::Unusable("not a PKCS#8 private key".into()))?;
    let kind = match (
        info.algorithm.oid.to_string().as_str(),
        info.algorithm.parameters_oid().ok().map(|o| o.to_string()),
    ) {
        (super::OID_EC_PUBLIC_KEY, Some(curve)) if curve == super::OID_P256 => {
            "an invalid P-256 key".to_owned()
        }
        (super::OID_EC_PUBLIC_KEY, Some(curve)) if curve == super::OID_P384 => {
            "an ECDSA P-384 key".to_owned()
        }
        (super::OID_EC_PUBLIC_KEY, _) => "an ECDSA key on another curve".to_owned(),
        (super::OID_RSA, _) => "an RSA key".to_owned(),
        ("1.3.101.112", _) => "an Ed25519 key".to_owned(),
        (oid, _) => format!("a key of type {oid}"),
    };
    Err(PrivateKeyError::Unusable(format!(
        "the private key is {kind}; Portcullis signs with ECDSA P-256 keys \
         (cosign's default, `cosign generate-key-pair` without --signing-algorithm)"
    )))
}

/// A name from a key file, cut short and printable, for an error.
fn shorten(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_NAME_IN_ERROR)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().count() > MAX_NAME_IN_ERROR {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// go-securesystemslib's own test vector (`encrypted_test.go`,
    /// `TestDecrypt`): "reallyimportant" sealed with "supersecret" at
    /// cosign's parameters (N=32768, r=8, p=1).
    const GO_VECTOR: &str = r#"{"kdf":{"name":"scrypt","params":{"N":32768,"r":8,"p":1},"salt":"N9a7x5JFGbrtB2uBR81jPwp0eiLR4A7FV3mjVAQrg1g="},"cipher":{"name":"nacl/secretbox","nonce":"2h8HxMmgRfuYdpswZBQaU3xJ1nkA/5Ik"},"ciphertext":"SEW6sUh0jf2wfdjJGPNS9+bkk2uB+Cxamf32zR8XkQ=="}"#;

    /// The same library's vector for its "Legacy" strength (cosign's),
    /// made with its `Marshal`: the sealed bytes are the JSON of the
    /// plaintext (a Go `[]byte`, so a base64 string).
    const GO_LEGACY_VECTOR: &str = r#"{"kdf":{"name":"scrypt","params":{"N":32768,"r":8,"p":1},"salt":"WO3mVvyTwJ9vwT5/Tk5OW5WPIBUofMjcpEfrLnfY4uA="},"cipher":{"name":"nacl/secretbox","nonce":"tCy7HcTFr4uxv4Nrg/DWmncuZ148U1MX"},"ciphertext":"08n43p5G5yviPEZpO7tPPF4aZQkWiWjkv4taFdhDBA0tamKH4nw="}"#;

    fn with(doc: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_str(doc).unwrap();
        edit(&mut v);
        serde_json::to_vec(&v).unwrap()
    }

    fn pem(label: &str, body: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(body);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn known_answers_from_go_securesystemslib() {
        for (vector, plaintext) in [
            (GO_VECTOR, &b"reallyimportant"[..]),
            (GO_LEGACY_VECTOR, &br#""cmVhbGx5aW1wb3J0YW50""#[..]),
        ] {
            let key = EncryptedKey::from_json(vector.as_bytes()).unwrap();
            assert_eq!(
                key.params(),
                ScryptParams {
                    log_n: 15,
                    r: 8,
                    p: 1
                }
            );
            assert_eq!(key.decrypt(b"supersecret").unwrap().expose(), plaintext);
            assert_eq!(
                key.decrypt(b"Supersecret").unwrap_err(),
                PrivateKeyError::WrongPassword
            );
            assert_eq!(
                key.decrypt(b"").unwrap_err(),
                PrivateKeyError::WrongPassword
            );
        }
    }

    #[test]
    fn altered_bytes_do_not_open() {
        let tampered = with(GO_VECTOR, |v| {
            let mut ct = base64::engine::general_purpose::STANDARD
                .decode(v["ciphertext"].as_str().unwrap())
                .unwrap();
            ct[20] ^= 1;
            v["ciphertext"] = base64::engine::general_purpose::STANDARD.encode(ct).into();
        });
        let key = EncryptedKey::from_json(&tampered).unwrap();
        assert_eq!(
            key.decrypt(b"supersecret").unwrap_err(),
            PrivateKeyError::WrongPassword
        );
        let other_salt = with(GO_VECTOR, |v| {
            v["kdf"]["salt"] = "AAAA".into();
        });
        let key = EncryptedKey::from_json(&other_salt).unwrap();
        assert_eq!(
            key.decrypt(b"supersecret").unwrap_err(),
            PrivateKeyError::WrongPassword
        );
    }

    #[test]
    fn scrypt_cost_is_bounded_before_any_work() {
        // Each of these would be refused before scrypt runs: no test here
        // takes time or memory.
        for (n, r, p, says) in [
            (1u64 << 40, 8u64, 1u64, "MiB of memory"),
            (1 << 22, 8, 1, "MiB of memory"), // 4 GiB
            (1 << 18, 8, 1, "ok"),            // 256 MiB: the limit
            (1 << 18, 16, 1, "MiB of memory"),
            (1 << 20, 1, 1, "not valid scrypt"), // N ≥ 2^(16·r)
            (32768, 1 << 40, 1, "MiB of memory"),
            (u64::MAX, 8, 1, "power of two"),
            (32769, 8, 1, "power of two"),
            (99, 99, 99, "power of two"),
            (1, 8, 1, "power of two"),
            (0, 8, 1, "power of two"),
            (32768, 0, 1, "at least 1"),
            (32768, 8, 0, "at least 1"),
            (32768, 8, 5, "p above 4"),
            (32768, 8, u64::MAX, "p above 4"),
            (1 << 17, 8, 1, "ok"), // go-securesystemslib's OWASP setting
        ] {
            match ScryptParams::new(n, r, p) {
                Ok(_) => assert_eq!(says, "ok", "N={n} r={r} p={p} accepted"),
                Err(e) => assert!(e.to_string().contains(says), "N={n} r={r} p={p}: {e}"),
            }
        }
        let huge = with(GO_VECTOR, |v| {
            v["kdf"]["params"]["N"] = (1u64 << 30).into();
        });
        let e = EncryptedKey::from_json(&huge).unwrap_err();
        assert!(matches!(e, PrivateKeyError::ScryptParams { .. }), "{e}");
        assert!(e.to_string().contains("N=1073741824"), "{e}");
    }

    #[test]
    fn only_scrypt_and_secretbox() {
        let argon = with(GO_VECTOR, |v| v["kdf"]["name"] = "argon2id".into());
        assert_eq!(
            EncryptedKey::from_json(&argon).unwrap_err(),
            PrivateKeyError::UnknownKdf("argon2id".into())
        );
        let aes = with(GO_VECTOR, |v| v["cipher"]["name"] = "aes-256-gcm".into());
        let e = EncryptedKey::from_json(&aes).unwrap_err();
        assert_eq!(e, PrivateKeyError::UnknownCipher("aes-256-gcm".into()));
        assert!(e.to_string().contains("only \"nacl/secretbox\""), "{e}");
        let long = with(GO_VECTOR, |v| {
            v["cipher"]["name"] = format!("x{}\n", "y".repeat(500)).into()
        });
        let e = EncryptedKey::from_json(&long).unwrap_err().to_string();
        assert!(e.len() < 200 && !e.contains('\n'), "{e}");
    }

    #[test]
    fn malformed_documents() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "not JSON"),
            (with(GO_VECTOR, |v| v["extra"] = 1.into()), "unknown field"),
            (
                with(GO_VECTOR, |v| v["kdf"]["params"]["N"] = (-1).into()),
                "invalid value",
            ),
            (
                with(GO_VECTOR, |v| v["cipher"]["nonce"] = "AAAA".into()),
                "24 bytes",
            ),
            (
                with(GO_VECTOR, |v| v["cipher"]["nonce"] = "%%%".into()),
                "not base64",
            ),
            (
                with(GO_VECTOR, |v| v["kdf"]["salt"] = "".into()),
                "1 to 1024",
            ),
            (with(GO_VECTOR, |v| v["ciphertext"] = "AAAA".into()), "tag"),
            (
                with(GO_VECTOR, |v| {
                    v.as_object_mut().unwrap().remove("ciphertext");
                }),
                "missing field",
            ),
        ];
        for (doc, says) in cases {
            let e = EncryptedKey::from_json(&doc).unwrap_err();
            assert!(
                matches!(e, PrivateKeyError::Malformed(_)) && e.to_string().contains(says),
                "{}: {e}",
                String::from_utf8_lossy(&doc)
            );
        }
    }

    #[test]
    fn key_files() {
        use p256::pkcs8::EncodePrivateKey as _;
        let signing = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let pkcs8 = signing.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap();
        let PrivateKeyFile::Plain(der) = PrivateKeyFile::parse(pkcs8.as_bytes()).unwrap() else {
            panic!("PKCS#8 PEM read as encrypted");
        };
        assert_eq!(p256_signing_key(&der).unwrap(), signing);
        assert_eq!(format!("{der:?}"), "SecretDer(<redacted>)");

        for label in ENCRYPTED_LABELS {
            let file = pem(label, GO_VECTOR.as_bytes());
            let PrivateKeyFile::Encrypted(key) = PrivateKeyFile::parse(file.as_bytes()).unwrap()
            else {
                panic!("{label} read as plain");
            };
            let debug = format!("{key:?}");
            assert!(
                !debug.contains("SEW6") && !debug.contains("N9a7"),
                "{debug}"
            );
            let der = key.decrypt(b"supersecret").unwrap();
            // "reallyimportant" is no key: the error says so, and no bytes.
            let e = p256_signing_key(&der).unwrap_err().to_string();
            assert_eq!(e, "not a PKCS#8 private key");
        }

        let e = PrivateKeyFile::parse(pem("EC PRIVATE KEY", b"x").as_bytes()).unwrap_err();
        assert!(matches!(e, PrivateKeyError::UnsupportedPem(_)), "{e}");
        let e = PrivateKeyFile::parse(pem("PUBLIC KEY", b"x").as_bytes()).unwrap_err();
        assert!(
            e.to_string().contains("\"PUBLIC KEY\" is not a supported"),
            "{e}"
        );
        assert!(matches!(
            PrivateKeyFile::parse(b"hello").unwrap_err(),
            PrivateKeyError::NotPem(_)
        ));
        assert!(matches!(
            PrivateKeyFile::parse(&[0xff, 0xfe]).unwrap_err(),
            PrivateKeyError::NotPem(_)
        ));
        let big = vec![b'A'; MAX_KEY_FILE_BYTES + 1];
        assert_eq!(
            PrivateKeyFile::parse(&big).unwrap_err(),
            PrivateKeyError::TooLarge
        );
    }

    #[test]
    fn other_key_types_are_named() {
        use p256::pkcs8::EncodePrivateKey as _;
        // A P-384 key (ring is in the tree, but p384 is not: build the
        // PKCS#8 with ring's generator).
        let rng = ring::rand::SystemRandom::new();
        let doc = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P384_SHA384_ASN1_SIGNING,
            &rng,
        )
        .unwrap();
        let der = SecretDer(Zeroizing::new(doc.as_ref().to_vec()));
        let e = p256_signing_key(&der).unwrap_err().to_string();
        assert!(e.contains("ECDSA P-384") && e.contains("P-256"), "{e}");
        let ed = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let der = SecretDer(Zeroizing::new(ed.as_ref().to_vec()));
        let e = p256_signing_key(&der).unwrap_err().to_string();
        assert!(e.contains("Ed25519"), "{e}");
        let p256 = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng)
            .to_pkcs8_der()
            .unwrap();
        let der = SecretDer(Zeroizing::new(p256.as_bytes().to_vec()));
        assert!(p256_signing_key(&der).is_ok());
    }
}
