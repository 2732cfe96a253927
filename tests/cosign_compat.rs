//! Signatures made by `portcullis sign` have cosign's exact layout and
//! verify with an independent implementation: OpenSSL checks the signature
//! annotation over the payload blob with the public key, straight from the
//! registry. (Debian's skopeo is built without sigstore support, so
//! containers/image cannot be the independent verifier here.)

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

mod common;

use std::process::Command;

use base64::Engine as _;
use common::clients::run_unchecked;
use common::content;
use common::registry::Registry;
use common::trust;

#[test]
fn portcullis_signatures_have_cosign_layout_and_verify_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let signed = content::push_image(&registry.url(), "demo/app", Some("v1"), "amd64", 1, &[256]);
    let key = trust::keygen(dir.path(), "ci");
    let reference = format!("{}/demo/app:v1", registry.host());
    trust::sign(
        &registry.url(),
        &reference,
        "demo/app",
        &signed.digest,
        &key,
        &[],
    );
    // A second signature appends a layer, as cosign does.
    let other = trust::keygen(dir.path(), "other");
    trust::sign(
        &registry.url(),
        &reference,
        "demo/app",
        &signed.digest,
        &other,
        &["team=ci"],
    );

    let (content_type, manifest) =
        trust::get_manifest(&registry.url(), "demo/app", &trust::sig_tag(&signed.digest)).unwrap();
    assert_eq!(content_type, "application/vnd.oci.image.manifest.v1+json");
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "signatures accumulate as layers");

    for (layer, (public, optional)) in layers
        .iter()
        .zip([(&key.public, "null"), (&other.public, r#"{"team":"ci"}"#)])
    {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.dev.cosign.simplesigning.v1+json"
        );
        let payload = trust::get_blob(
            &registry.url(),
            "demo/app",
            layer["digest"].as_str().unwrap(),
        );
        // cosign's exact payload bytes (formats.md §1.4).
        let expected = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"{}/demo/app"}},"image":{{"docker-manifest-digest":"{}"}},"type":"cosign container image signature"}},"optional":{optional}}}"#,
            registry.host(),
            signed.digest
        );
        assert_eq!(String::from_utf8_lossy(&payload), expected);
        let signature = base64::engine::general_purpose::STANDARD
            .decode(
                layer["annotations"]["dev.cosignproject.cosign/signature"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
        let payload_file = dir.path().join("payload");
        let signature_file = dir.path().join("signature.der");
        std::fs::write(&payload_file, &payload).unwrap();
        std::fs::write(&signature_file, &signature).unwrap();
        let verify = |public: &std::path::Path| {
            run_unchecked(
                Command::new("openssl")
                    .args(["dgst", "-sha256", "-verify"])
                    .arg(public)
                    .arg("-signature")
                    .arg(&signature_file)
                    .arg(&payload_file),
                "openssl dgst -verify",
            )
        };
        let out = verify(public);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Verified OK"),
            "OpenSSL rejected a portcullis signature: {}",
            trust::output_text(&out)
        );
        // And the check is real: the other key does not verify it.
        let wrong = if public == &key.public {
            &other.public
        } else {
            &key.public
        };
        assert!(
            !verify(wrong).status.success(),
            "verified with the wrong key"
        );
    }
}
