//! Signatures made by `portcullis sign` have cosign's exact layout and
//! verify with an independent implementation: OpenSSL checks the signature
//! annotation over the payload blob with the public key, straight from the
//! registry. (Debian's skopeo is built without sigstore support, so
//! containers/image cannot be the independent verifier here.)
//!
//! cosign users bring their keys and habits: an encrypted `cosign.key` in
//! cosign's format, written here by an independent implementation (PyNaCl's
//! scrypt and secretbox over libsodium, python3-cryptography for the
//! PKCS#8 key), signs with `COSIGN_PASSWORD`; `COSIGN_REPOSITORY` moves
//! signatures (to another registry, too); `verify --key` needs no
//! configuration; `--allow-insecure-registry` is accepted. All against a
//! real distribution registry.

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

mod common;

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;
use common::clients::{require_tool, run, run_unchecked};
use common::content;
use common::cosign::cosign_key;
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

// ------------------------------------------------- cosign keys and habits

/// `portcullis ARGS…` with exactly the cosign variables given (none
/// inherited from the environment running the tests).
fn portcullis(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(trust::PORTCULLIS);
    cmd.args(args)
        .env_remove("COSIGN_PASSWORD")
        .env_remove("COSIGN_REPOSITORY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_unchecked(&mut cmd, &format!("portcullis {}", args.join(" ")))
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

/// `portcullis sign REF --key K --allow-insecure-registry` with `env`.
fn sign(reference: &str, key: &Path, env: &[(&str, &str)]) -> Output {
    let key = key.to_str().unwrap();
    portcullis(
        &["sign", reference, "--key", key, "--allow-insecure-registry"],
        env,
    )
}

/// `portcullis verify REF --key PUB --allow-insecure-registry` with `env`.
fn verify_key(reference: &str, public: &Path, env: &[(&str, &str)]) -> Output {
    let public = public.to_str().unwrap();
    portcullis(
        &[
            "verify",
            reference,
            "--key",
            public,
            "--allow-insecure-registry",
        ],
        env,
    )
}

/// A password with spaces and non-ASCII, so it is passed as bytes intact.
const PASSWORD: &str = "correct horse battery staple ☃ 7f3a";

#[test]
fn cosign_key_signs_with_cosign_password_and_verify_key_checks_it() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let url = registry.url();
    let host = registry.host();
    let signed = content::push_image(&url, "demo/app", Some("v1"), "amd64", 11, &[128]);
    content::push_image(&url, "demo/unsigned", Some("v1"), "amd64", 12, &[128]);
    let by_other = content::push_image(&url, "demo/other", Some("v1"), "amd64", 13, &[128]);
    let cosign = cosign_key(dir.path(), "cosign", PASSWORD);

    let reference = format!("{host}/demo/app:v1");
    let out = sign(&reference, &cosign.key, &[("COSIGN_PASSWORD", PASSWORD)]);
    let text = trust::output_text(&out);
    assert_eq!(code(&out), Some(0), "{text}");
    let tag = trust::sig_tag(&signed.digest);
    assert!(
        text.contains(&format!("signature: {host}/demo/app:{tag}")),
        "sign does not say where the signature went: {text}"
    );
    assert!(
        !text.contains(PASSWORD) && !text.contains("horse"),
        "{text}"
    );
    let (_, sig) = trust::get_manifest(&url, "demo/app", &tag).unwrap();
    let sig: serde_json::Value = serde_json::from_slice(&sig).unwrap();
    assert_eq!(sig["layers"].as_array().unwrap().len(), 1);

    // The signature verifies with cosign.pub (written by Python, so the
    // key Portcullis decrypted is the key that was sealed).
    let out = verify_key(&reference, &cosign.public, &[]);
    let text = trust::output_text(&out);
    assert_eq!(code(&out), Some(0), "{text}");
    assert!(
        text.starts_with(&format!("VERIFIED {host}/demo/app@{}", signed.digest)),
        "{text}"
    );
    assert!(
        text.contains("valid, verified with key cosign.pub"),
        "{text}"
    );
    assert!(text.contains("--insecure-ignore-tlog"), "{text}");
    // By digest too.
    let by_digest = format!("{host}/demo/app@{}", signed.digest);
    assert_eq!(code(&verify_key(&by_digest, &cosign.public, &[])), Some(0));

    // An unsigned image: 1, and says there was nothing.
    let out = verify_key(&format!("{host}/demo/unsigned:v1"), &cosign.public, &[]);
    let text = trust::output_text(&out);
    assert_eq!(code(&out), Some(1), "{text}");
    assert!(
        text.starts_with("NOT VERIFIED") && text.contains("no signature found"),
        "{text}"
    );

    // An image signed with another key: 1, and says why.
    let other = trust::keygen(dir.path(), "other");
    let other_ref = format!("{host}/demo/other:v1");
    let out = sign(&other_ref, &other.key, &[]);
    assert_eq!(code(&out), Some(0), "{}", trust::output_text(&out));
    let out = verify_key(&other_ref, &cosign.public, &[]);
    let text = trust::output_text(&out);
    assert_eq!(code(&out), Some(1), "{text}");
    assert!(text.contains("does not verify"), "{text}");
    // …and that image verifies with its own key (keygen's PKCS#8 keys
    // keep working, and verify --key takes their public half).
    let out = verify_key(&other_ref, &other.public, &[]);
    assert_eq!(code(&out), Some(0), "{}", trust::output_text(&out));
    assert_ne!(by_other.digest, signed.digest);

    // A signature copied onto another image's tag does not transfer: the
    // payload names the signed digest.
    let sig_bytes = trust::get_manifest(&url, "demo/app", &tag).unwrap().1;
    let copy_tag = trust::sig_tag(&by_other.digest);
    for d in trust::manifest_blobs(&sig_bytes) {
        let blob = trust::get_blob(&url, "demo/app", &d);
        content::push_blob(&url, "demo/other", &blob);
    }
    content::push_manifest(
        &url,
        "demo/other",
        &copy_tag,
        "application/vnd.oci.image.manifest.v1+json",
        &sig_bytes,
    );
    let out = verify_key(&other_ref, &cosign.public, &[]);
    let text = trust::output_text(&out);
    assert_eq!(code(&out), Some(1), "{text}");
    assert!(text.contains("for another digest"), "{text}");

    // verify --key needs no configuration, and unreachable means 2.
    let out = verify_key("127.0.0.1:1/demo/app:v1", &cosign.public, &[]);
    assert_eq!(code(&out), Some(2), "{}", trust::output_text(&out));
    // --key and --config do not mix.
    let out = portcullis(
        &[
            "verify",
            &reference,
            "--key",
            cosign.public.to_str().unwrap(),
            "--config",
            "/nonexistent.yaml",
        ],
        &[],
    );
    assert_eq!(code(&out), Some(2), "{}", trust::output_text(&out));
}

#[test]
fn wrong_or_missing_cosign_password_fails_clearly_and_pushes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let url = registry.url();
    let image = content::push_image(&url, "demo/app", Some("v1"), "amd64", 21, &[64]);
    let cosign = cosign_key(dir.path(), "cosign", PASSWORD);
    let reference = format!("{}/demo/app:v1", registry.host());
    let wrong = "hunter2 is not it";

    let out = sign(&reference, &cosign.key, &[("COSIGN_PASSWORD", wrong)]);
    let text = trust::output_text(&out);
    assert_eq!(code(&out), Some(2), "{text}");
    assert!(
        text.contains("wrong COSIGN_PASSWORD or corrupted key"),
        "{text}"
    );
    assert!(
        !text.contains("hunter2") && !text.contains("horse"),
        "{text}"
    );

    let out = sign(&reference, &cosign.key, &[]);
    let text = trust::output_text(&out);
    assert_eq!(code(&out), Some(2), "{text}");
    assert!(text.contains("set COSIGN_PASSWORD"), "{text}");

    // attest refuses the same way.
    let predicate = dir.path().join("p.json");
    std::fs::write(&predicate, r#"{"builder":{"id":"ci"}}"#).unwrap();
    let out = portcullis(
        &[
            "attest",
            &reference,
            "--key",
            cosign.key.to_str().unwrap(),
            "--predicate",
            predicate.to_str().unwrap(),
            "--allow-insecure-registry",
        ],
        &[("COSIGN_PASSWORD", wrong)],
    );
    let text = trust::output_text(&out);
    assert_eq!(code(&out), Some(2), "{text}");
    assert!(text.contains("wrong COSIGN_PASSWORD"), "{text}");

    // Nothing was pushed.
    for suffix in ["sig", "att"] {
        let tag = format!("{}.{suffix}", image.digest.replace(':', "-"));
        assert_eq!(
            trust::get_manifest(&url, "demo/app", &tag).map(|_| ()),
            Err(404),
            "a failed sign pushed {tag}"
        );
    }

    // A corrupted key file reads as such, whatever the password.
    let corrupted = dir.path().join("corrupted.key");
    let pem = std::fs::read_to_string(&cosign.key).unwrap();
    let mut lines: Vec<String> = pem.lines().map(str::to_owned).collect();
    let body: String = lines[1..lines.len() - 1].concat();
    let json = base64::engine::general_purpose::STANDARD
        .decode(&body)
        .unwrap();
    let mut doc: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let mut ct = base64::engine::general_purpose::STANDARD
        .decode(doc["ciphertext"].as_str().unwrap())
        .unwrap();
    ct[40] ^= 0x80;
    doc["ciphertext"] = base64::engine::general_purpose::STANDARD.encode(ct).into();
    let body = base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&doc).unwrap());
    lines.truncate(1);
    lines.push(body);
    lines.push("-----END ENCRYPTED SIGSTORE PRIVATE KEY-----".into());
    std::fs::write(&corrupted, lines.join("\n")).unwrap();
    let out = sign(&reference, &corrupted, &[("COSIGN_PASSWORD", PASSWORD)]);
    let text = trust::output_text(&out);
    assert_eq!(code(&out), Some(2), "{text}");
    assert!(
        text.contains("wrong COSIGN_PASSWORD or corrupted key"),
        "{text}"
    );
    assert!(!text.contains("horse"), "{text}");
}

#[test]
fn cosign_repository_moves_signatures_even_to_another_registry() {
    require_tool("/usr/bin/skopeo", "skopeo");
    let dir = tempfile::tempdir().unwrap();
    let images = Registry::start();
    let signatures = Registry::start();
    let image = content::push_image(&images.url(), "demo/app", Some("v1"), "amd64", 31, &[64]);
    let cosign = cosign_key(dir.path(), "cosign", PASSWORD);
    let reference = format!("{}/demo/app:v1", images.host());
    let elsewhere = format!("{}/sigs/app", signatures.host());
    let tag = trust::sig_tag(&image.digest);

    let out = sign(
        &reference,
        &cosign.key,
        &[
            ("COSIGN_PASSWORD", PASSWORD),
            ("COSIGN_REPOSITORY", &elsewhere),
        ],
    );
    let text = trust::output_text(&out);
    assert_eq!(code(&out), Some(0), "{text}");
    assert!(
        text.contains(&format!("signature: {elsewhere}:{tag}")),
        "{text}"
    );

    // The .sig is in the other registry's repository, tag unchanged, and
    // not next to the image. skopeo reads it as any client would.
    let raw = run(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{elsewhere}:{tag}")),
        "skopeo inspect the moved signature",
    );
    let manifest: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    let layer = &manifest["layers"][0];
    assert_eq!(
        layer["mediaType"],
        "application/vnd.dev.cosign.simplesigning.v1+json"
    );
    let payload = trust::get_blob(
        &signatures.url(),
        "sigs/app",
        layer["digest"].as_str().unwrap(),
    );
    let payload: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    // The payload still names the image, not where its signature lives.
    assert_eq!(
        payload["critical"]["identity"]["docker-reference"],
        format!("{}/demo/app", images.host())
    );
    assert_eq!(
        payload["critical"]["image"]["docker-manifest-digest"],
        image.digest.as_str()
    );
    assert_eq!(
        trust::get_manifest(&images.url(), "demo/app", &tag).map(|_| ()),
        Err(404)
    );

    // verify --key finds it there with COSIGN_REPOSITORY, not without.
    let out = verify_key(
        &reference,
        &cosign.public,
        &[("COSIGN_REPOSITORY", &elsewhere)],
    );
    let text = trust::output_text(&out);
    assert_eq!(code(&out), Some(0), "{text}");
    assert!(
        text.contains(&format!("signatures: {elsewhere}:{tag}")),
        "{text}"
    );
    let out = verify_key(&reference, &cosign.public, &[]);
    assert_eq!(code(&out), Some(1), "{}", trust::output_text(&out));

    // attest honours it too (here another repository on the same registry).
    let predicate = dir.path().join("p.json");
    std::fs::write(&predicate, r#"{"builder":{"id":"ci"}}"#).unwrap();
    let same_registry = format!("{}/attestations/app", images.host());
    let out = portcullis(
        &[
            "attest",
            &reference,
            "--key",
            cosign.key.to_str().unwrap(),
            "--predicate",
            predicate.to_str().unwrap(),
            "--allow-insecure-registry",
        ],
        &[
            ("COSIGN_PASSWORD", PASSWORD),
            ("COSIGN_REPOSITORY", &same_registry),
        ],
    );
    let text = trust::output_text(&out);
    assert_eq!(code(&out), Some(0), "{text}");
    let att = format!("{}.att", image.digest.replace(':', "-"));
    assert!(
        text.contains(&format!("attestation: {same_registry}:{att}")),
        "{text}"
    );
    let (_, manifest) = trust::get_manifest(&images.url(), "attestations/app", &att).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.dsse.envelope.v1+json"
    );
    assert!(!text.contains("horse"), "{text}");

    // A COSIGN_REPOSITORY that is not a repository is refused up front.
    let out = sign(
        &reference,
        &cosign.key,
        &[
            ("COSIGN_PASSWORD", PASSWORD),
            ("COSIGN_REPOSITORY", "127.0.0.1:1/sigs:v1"),
        ],
    );
    let text = trust::output_text(&out);
    assert_eq!(code(&out), Some(2), "{text}");
    assert!(text.contains("COSIGN_REPOSITORY="), "{text}");
}
