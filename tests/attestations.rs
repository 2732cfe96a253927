//! SLSA provenance attestations (cosign `.att`, DSSE over in-toto) signed by
//! independent implementations (OpenSSL signs the DSSE PAE; Python's
//! securesystemslib generates the key and signs), stored in a real
//! registry, enforced by the "built by our CI" rule through the proxy.

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use common::clients::{require_tool, run, run_unchecked};
use common::content::{self, sha256_digest};
use common::registry::Registry;
use common::trust::pull_v1 as pull;
use common::trust::{self, KeyPair};
use common::Proxy;

const BUILDER: &str = "https://ci.example.com/builder@v1";
const SLSA_V1: &str = "https://slsa.dev/provenance/v1";

/// A SLSA v1 statement about `digest` in the repository `name` (as cosign
/// names its subject: `<registry>/<repository>`), built by `builder` from
/// `source`.
fn statement(name: &str, digest: &str, builder: &str, source: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": name, "digest": {"sha256": digest.trim_start_matches("sha256:")}}],
        "predicateType": SLSA_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": "https://ci.example.com/build/v1",
                "externalParameters": {"source": source},
            },
            "runDetails": {"builder": {"id": builder}},
        },
    }))
    .unwrap()
}

/// A DSSE envelope over `payload`, signed with OpenSSL (not Portcullis).
fn openssl_envelope(dir: &Path, key: &KeyPair, payload: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&trust::openssl_dsse(dir, key, payload).0).unwrap()
}

/// Stores `envelope` as cosign does: `sha256-<hex>.att`, one DSSE layer.
fn push_attestation(registry: &Registry, repo: &str, digest: &str, envelope: &[u8]) {
    let layer = content::push_blob(&registry.url(), repo, envelope);
    let config = format!(
        r#"{{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{{"created":"0001-01-01T00:00:00Z"}}],"os":"","rootfs":{{"type":"layers","diff_ids":["{}"]}},"config":{{}}}}"#,
        layer.digest
    );
    let config_blob = content::push_blob(&registry.url(), repo, config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": config_blob.digest},
        "layers": [{
            "mediaType": "application/vnd.dsse.envelope.v1+json",
            "size": envelope.len(),
            "digest": layer.digest,
            "annotations": {"dev.cosignproject.cosign/signature": "", "predicateType": SLSA_V1},
        }],
    });
    content::push_manifest(
        &registry.url(),
        repo,
        &format!("{}.att", digest.replace(':', "-")),
        "application/vnd.oci.image.manifest.v1+json",
        manifest.to_string().as_bytes(),
    );
}

/// The proxy configuration: every image needs SLSA v1 provenance from
/// `BUILDER` and a source under git.example.com/team, signed by the key
/// whose SPKI PEM is `public_pem`.
fn config(registry: &Registry, public_pem: &str) -> String {
    let mut pem = String::new();
    for line in public_pem.lines() {
        pem.push_str(&format!("            {line}\n"));
    }
    format!(
        "listen: {{listen}}\nupstreams:\n  - registry: {host}\n    url: {url}\n\
         policy:\n  defaultAdmissionRule:\n    evaluationMode: REQUIRE_ATTESTATION\n    \
         enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG\n    requireAttestationsBy: [built-by-ci]\n\
         attestors:\n  - name: built-by-ci\n    publicKeys:\n      - id: ci\n        pkixPublicKey:\n          \
         signatureAlgorithm: ECDSA_P256_SHA256\n          publicKeyPem: |\n{pem}\
         \x20   attestations:\n      - predicateType: {SLSA_V1}\n        conditions:\n          \
         - {{path: /runDetails/builder/id, in: [\"{BUILDER}\"]}}\n          \
         - {{path: /buildDefinition/externalParameters/source, matches: \"git\\\\+https://git.example.com/team/.*\"}}\n",
        host = registry.host(),
        url = registry.url(),
    )
}

#[test]
fn built_by_ci_provenance_rule() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let key = trust::keygen(dir.path(), "ci");
    let good_source = "git+https://git.example.com/team/app";
    let mut digests = Vec::new();
    for (i, repo) in [
        "good/app",
        "evil/app",
        "replayed/app",
        "edited/app",
        "bare/app",
    ]
    .iter()
    .enumerate()
    {
        let img = content::push_image(
            &registry.url(),
            repo,
            Some("v1"),
            "amd64",
            10 + i as u64,
            &[64],
        );
        digests.push(img.digest);
    }
    // Provenance from our builder.
    let good = openssl_envelope(
        dir.path(),
        &key,
        &statement(
            &format!("{}/good/app", registry.host()),
            &digests[0],
            BUILDER,
            good_source,
        ),
    );
    push_attestation(&registry, "good/app", &digests[0], &good);
    // Provenance from another builder, properly signed.
    let evil = openssl_envelope(
        dir.path(),
        &key,
        &statement(
            &format!("{}/evil/app", registry.host()),
            &digests[1],
            "https://evil.example/builder",
            good_source,
        ),
    );
    push_attestation(&registry, "evil/app", &digests[1], &evil);
    // Good provenance for another digest, replayed.
    push_attestation(&registry, "replayed/app", &digests[2], &good);
    // Provenance whose predicate was edited after signing.
    let honest = statement(
        &format!("{}/edited/app", registry.host()),
        &digests[3],
        "https://evil.example/builder",
        good_source,
    );
    let signed = openssl_envelope(dir.path(), &key, &honest);
    let mut envelope: serde_json::Value = serde_json::from_slice(&signed).unwrap();
    let edited = String::from_utf8(honest)
        .unwrap()
        .replace("https://evil.example/builder", BUILDER);
    envelope["payload"] = base64::engine::general_purpose::STANDARD
        .encode(edited)
        .into();
    push_attestation(
        &registry,
        "edited/app",
        &digests[3],
        envelope.to_string().as_bytes(),
    );
    // A plain signature is not provenance.
    trust::sign(
        &registry.url(),
        &format!("{}/bare/app:v1", registry.host()),
        "bare/app",
        &digests[4],
        &key,
        &[],
    );

    let proxy = Proxy::start(&config(&registry, &key.pem));
    let ok = pull(&proxy, "good/app");
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(sha256_digest(&ok.body), digests[0]);

    let cases = [
        ("evil/app", "condition failed: /runDetails/builder/id"),
        ("replayed/app", "for another digest"),
        ("edited/app", "by unknown key or altered"),
        ("bare/app", "no attestations found"),
    ];
    for (repo, why) in cases {
        let r = pull(&proxy, repo);
        assert_eq!(r.status, 403, "{repo}: {}", r.text());
        let text = r.text();
        assert!(text.contains("attestor built-by-ci"), "{repo}: {text}");
        assert!(text.contains(why), "{repo}: expected {why:?} in {text}");
    }
    // The explanation names the failed condition for operators too.
    let out = Command::new(trust::PORTCULLIS)
        .arg("verify")
        .arg(format!("{}/evil/app:v1", registry.host()))
        .arg("--config")
        .arg(proxy.config_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("evil.example/builder"), "{text}");
}

/// The system Python, which Debian's python3-securesystemslib installs into
/// (a pyenv `python3` on PATH may not see it).
const PYTHON: &str = "/usr/bin/python3";

/// Signs in-toto statements with securesystemslib: see the docstring.
const SSLIB_DSSE_SIGN: &str = r#""""DSSE envelopes over in-toto statements, signed with securesystemslib.

usage: dsse_sign.py DIR NAME...

Generates an ECDSA P-256 key (ecdsa-sha2-nistp256) with securesystemslib,
writes its public key (SPKI PEM) to DIR/key.pub, and for each NAME signs the
statement in DIR/NAME.statement.json and writes the envelope to
DIR/NAME.dsse.json.

securesystemslib 0.26 (Debian 12) has signers but no DSSE module, so PAE is
computed here, per the DSSE spec. Its signatures are hex
(Signature.signature); the DSSE JSON envelope carries base64, as the spec
says and as securesystemslib's own Envelope does in later releases (it
converts on export: secure-systems-lab/securesystemslib#565).
"""
import base64
import json
import sys

from securesystemslib import keys
from securesystemslib.signer import SSlibKey, SSlibSigner

PAYLOAD_TYPE = "application/vnd.in-toto+json"


def pae(payload_type: str, body: bytes) -> bytes:
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def main() -> None:
    out, names = sys.argv[1], sys.argv[2:]
    key = keys.generate_ecdsa_key(scheme="ecdsa-sha2-nistp256")
    assert key["keytype"] == "ecdsa", key["keytype"]
    with open(f"{out}/key.pub", "w", encoding="utf-8") as f:
        f.write(key["keyval"]["public"])
    signer = SSlibSigner(key)
    public = SSlibKey.from_securesystemslib_key(
        {k: v for k, v in key.items() if k != "keyval"}
        | {"keyval": {"public": key["keyval"]["public"]}}
    )
    for name in names:
        with open(f"{out}/{name}.statement.json", "rb") as f:
            body = f.read()
        message = pae(PAYLOAD_TYPE, body)
        signature = signer.sign(message)
        public.verify_signature(signature, message)  # raises if it does not
        envelope = {
            "payloadType": PAYLOAD_TYPE,
            "payload": base64.b64encode(body).decode("ascii"),
            "signatures": [
                {
                    "keyid": signature.keyid,
                    "sig": base64.b64encode(bytes.fromhex(signature.signature)).decode("ascii"),
                }
            ],
        }
        with open(f"{out}/{name}.dsse.json", "w", encoding="utf-8") as f:
            json.dump(envelope, f)


if __name__ == "__main__":
    main()
"#;

/// Fails (never skips) unless the system Python has securesystemslib with
/// its ECDSA backend (python3-cryptography).
fn require_securesystemslib() {
    require_tool(PYTHON, "python3");
    let out = run_unchecked(
        Command::new(PYTHON).args([
            "-c",
            "import securesystemslib.signer, securesystemslib.keys, cryptography",
        ]),
        "python3 -c 'import securesystemslib'",
    );
    assert!(
        out.status.success(),
        "securesystemslib is not usable from {PYTHON}: run `apt-get install -y \
         python3-securesystemslib python3-cryptography` (this test needs the real \
         library and is never skipped)\n{}",
        trust::output_text(&out)
    );
}

/// Runs the securesystemslib script on `(name, statement)` pairs in `dir`:
/// returns the public key's PEM and each envelope.
fn securesystemslib_envelopes(
    dir: &Path,
    statements: &[(&str, Vec<u8>)],
) -> (String, Vec<Vec<u8>>) {
    require_securesystemslib();
    let script = dir.join("dsse_sign.py");
    std::fs::write(&script, SSLIB_DSSE_SIGN).unwrap();
    for (name, statement) in statements {
        std::fs::write(dir.join(format!("{name}.statement.json")), statement).unwrap();
    }
    run(
        Command::new(PYTHON)
            .arg(&script)
            .arg(dir)
            .args(statements.iter().map(|(name, _)| name)),
        "python3 dsse_sign.py (securesystemslib)",
    );
    let pem = std::fs::read_to_string(dir.join("key.pub")).unwrap();
    let envelopes = statements
        .iter()
        .map(|(name, _)| std::fs::read(dir.join(format!("{name}.dsse.json"))).unwrap())
        .collect();
    (pem, envelopes)
}

#[test]
fn securesystemslib_provenance_is_enforced() {
    require_tool(common::clients::SKOPEO, "skopeo");
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let source = "git+https://git.example.com/team/app";
    let arch = common::host_arch();
    let good = content::push_image(&registry.url(), "sslib/good", Some("v1"), arch, 31, &[128]);
    let evil = content::push_image(&registry.url(), "sslib/evil", Some("v1"), arch, 32, &[128]);
    let (pem, envelopes) = securesystemslib_envelopes(
        dir.path(),
        &[
            (
                "good",
                statement(
                    &format!("{}/sslib/good", registry.host()),
                    &good.digest,
                    BUILDER,
                    source,
                ),
            ),
            (
                "evil",
                statement(
                    &format!("{}/sslib/evil", registry.host()),
                    &evil.digest,
                    "https://evil.example/builder",
                    source,
                ),
            ),
        ],
    );
    // What securesystemslib wrote: its own key id (ignored: keys are tried
    // in turn) and a base64 DER signature.
    let envelope: serde_json::Value = serde_json::from_slice(&envelopes[0]).unwrap();
    assert_eq!(envelope["payloadType"], "application/vnd.in-toto+json");
    let signature = &envelope["signatures"][0];
    assert_eq!(signature["keyid"].as_str().unwrap().len(), 64, "{envelope}");
    let der = base64::engine::general_purpose::STANDARD
        .decode(signature["sig"].as_str().unwrap())
        .unwrap();
    assert_eq!(der[0], 0x30, "an ASN.1 DER ECDSA signature: {envelope}");
    push_attestation(&registry, "sslib/good", &good.digest, &envelopes[0]);
    push_attestation(&registry, "sslib/evil", &evil.digest, &envelopes[1]);

    let proxy = Proxy::start(&config(&registry, &pem));
    trust::assert_builder_condition_enforced(
        &proxy.host(),
        dir.path(),
        "sslib/good",
        &good.digest,
        "sslib/evil",
    );
}
