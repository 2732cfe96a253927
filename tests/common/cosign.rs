//! Cosign key pairs for tests, written without cosign or Portcullis.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::clients::{require_tool, run};

/// The system Python, which Debian's python3-nacl and python3-cryptography
/// install into (a pyenv `python3` on PATH may not see them).
const PYTHON: &str = "/usr/bin/python3";

/// Writes a key pair in `cosign generate-key-pair`'s format without cosign
/// or Portcullis: a P-256 key (python3-cryptography) as PKCS#8 DER, sealed
/// with NaCl secretbox under scrypt(password, salt, N=32768, r=8, p=1)
/// (PyNaCl over libsodium), in an `ENCRYPTED SIGSTORE PRIVATE KEY` PEM
/// whose body is go-securesystemslib's JSON. The password comes from the
/// environment, never the command line.
const WRITE_COSIGN_KEY: &str = r#"
import base64, json, os, sys
import nacl.bindings, nacl.pwhash, nacl.secret, nacl.utils
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

key_path, pub_path = sys.argv[1], sys.argv[2]
password = os.environb[b"COSIGN_PASSWORD"]
private = ec.generate_private_key(ec.SECP256R1())
der = private.private_bytes(
    serialization.Encoding.DER,
    serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption(),
)
# libsodium picks scrypt's N, r, p from opslimit and memlimit; these two
# give cosign's N=2^15, r=8, p=1 (checked, so the JSON below is true).
opslimit, memlimit = 2**20, 2**26
assert nacl.bindings.nacl_bindings_pick_scrypt_params(opslimit, memlimit) == (15, 8, 1)
salt = nacl.utils.random(nacl.pwhash.scrypt.SALTBYTES)
box_key = nacl.pwhash.scrypt.kdf(
    nacl.secret.SecretBox.KEY_SIZE, password, salt, opslimit=opslimit, memlimit=memlimit
)
nonce = nacl.utils.random(nacl.secret.SecretBox.NONCE_SIZE)
sealed = nacl.secret.SecretBox(box_key).encrypt(der, nonce)
b64 = lambda b: base64.b64encode(b).decode()
body = json.dumps({
    "kdf": {"name": "scrypt", "params": {"N": 32768, "r": 8, "p": 1}, "salt": b64(salt)},
    "cipher": {"name": "nacl/secretbox", "nonce": b64(nonce)},
    "ciphertext": b64(sealed.ciphertext),
}, separators=(",", ":")).encode()
text = base64.b64encode(body).decode()
lines = [text[i:i + 64] for i in range(0, len(text), 64)]
label = "ENCRYPTED SIGSTORE PRIVATE KEY"
fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
with os.fdopen(fd, "w") as f:
    f.write("-----BEGIN %s-----\n%s\n-----END %s-----\n" % (label, "\n".join(lines), label))
with open(pub_path, "wb") as f:
    f.write(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
"#;

/// A cosign-format key pair: `cosign.key` (encrypted) and `cosign.pub`.
pub struct CosignKey {
    pub key: PathBuf,
    pub public: PathBuf,
}

/// Writes `DIR/NAME.key` and `DIR/NAME.pub` with [`WRITE_COSIGN_KEY`].
pub fn cosign_key(dir: &Path, name: &str, password: &str) -> CosignKey {
    require_tool(PYTHON, "python3");
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    run(
        Command::new(PYTHON)
            .arg("-c")
            .arg(WRITE_COSIGN_KEY)
            .arg(&key)
            .arg(&public)
            .env("COSIGN_PASSWORD", password),
        "write a cosign key with PyNaCl (apt-get install python3-nacl python3-cryptography)",
    );
    let pem = std::fs::read_to_string(&key).expect("read the cosign key");
    assert!(pem.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"));
    CosignKey { key, public }
}
