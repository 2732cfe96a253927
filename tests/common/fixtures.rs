//! Loading the third-party signature fixtures of `tests/fixtures` into
//! the in-process fake upstream ([`super::fake::Fake`]), and building the
//! proxy configurations (policy + attestors) the conformance tests use.
//!
//! Fixture files are read, never written. Every blob loaded is checked
//! against the digest its file name (or the manifest that lists it) claims,
//! so a test can never silently run against different bytes.

use std::path::PathBuf;
use std::process::Command;

use base64::Engine as _;

use super::fake::{sha256_digest, Fake, OCI_CONFIG, OCI_MANIFEST};

/// Docker schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 1 (signed) manifest media type.
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// The cosign simple-signing layer media type.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation carrying the signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// What a client sends: every manifest type, schema 1 included.
pub const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.v1+prettyjws, \
     application/vnd.docker.distribution.manifest.v1+json";

/// `tests/fixtures` (see [`super::fixture_dir`]).
pub fn root() -> PathBuf {
    super::fixture_dir::fixtures_dir()
}

/// The exact bytes of a fixture file (path relative to [`root`]).
pub fn read(rel: &str) -> Vec<u8> {
    let path = root().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read fixture {}: {e}", path.display()))
}

pub fn read_string(rel: &str) -> String {
    String::from_utf8(read(rel)).unwrap_or_else(|e| panic!("fixture {rel} is not UTF-8: {e}"))
}

/// The media type a registry would serve `manifest` with: its own
/// `mediaType`, or Docker schema 1 (signed) for `schemaVersion: 1`.
pub fn manifest_media_type(manifest: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(manifest).expect("manifest is JSON");
    if let Some(mt) = v.get("mediaType").and_then(|m| m.as_str()) {
        return mt.to_string();
    }
    if v.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1) {
        return DOCKER_SCHEMA1_SIGNED.to_string();
    }
    OCI_MANIFEST.to_string()
}

// ---------------------------------------------------------------------------
// containers-image sigstore cases, via synthesized-registry-views
// ---------------------------------------------------------------------------

/// One `synthesized-registry-views/<case>` folder.
pub struct View {
    pub case: String,
    /// `image-manifest.json` (absent for `dir-img-cosign-no-manifest`).
    pub image_manifest: Option<Vec<u8>>,
    /// `sha256-<hex>.sig`
    pub sig_tag: String,
    pub sig_manifest: Vec<u8>,
    /// (digest, bytes) of every file in `blobs/`.
    pub blobs: Vec<(String, Vec<u8>)>,
}

impl View {
    pub fn load(case: &str) -> View {
        let dir = format!("synthesized-registry-views/{case}");
        let image_path = root().join(&dir).join("image-manifest.json");
        let image_manifest = image_path
            .exists()
            .then(|| read(&format!("{dir}/image-manifest.json")));
        let sig_tag = read_string(&format!("{dir}/sig-tag.txt"))
            .trim()
            .to_string();
        let sig_manifest = read(&format!("{dir}/sig-manifest.json"));
        let mut blobs = Vec::new();
        let mut names: Vec<_> = std::fs::read_dir(root().join(&dir).join("blobs"))
            .expect("blobs dir")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .into_string()
                    .expect("name")
            })
            .collect();
        names.sort();
        for name in names {
            let bytes = read(&format!("{dir}/blobs/{name}"));
            let digest = name.replacen('-', ":", 1);
            assert_eq!(sha256_digest(&bytes), digest, "{dir}/blobs/{name}");
            blobs.push((digest, bytes));
        }
        View {
            case: case.to_string(),
            image_manifest,
            sig_tag,
            sig_manifest,
            blobs,
        }
    }

    /// `sha256:<hex>` of the image manifest, if there is one.
    pub fn image_digest(&self) -> Option<String> {
        self.image_manifest.as_deref().map(sha256_digest)
    }

    /// The digest the `.sig` tag is for (`sha256-<hex>.sig` → `sha256:<hex>`).
    pub fn sig_subject(&self) -> String {
        self.sig_tag
            .strip_suffix(".sig")
            .expect(".sig tag")
            .replacen('-', ":", 1)
    }

    /// Stores the case in `repo` of `fake` as cosign would have left it in
    /// a registry: the image manifest (under its digest and `tag`), the
    /// `.sig` manifest under its tag, and the config and payload blobs.
    /// Returns the image digest, if there is an image manifest.
    pub fn put(&self, fake: &Fake, repo: &str, tag: Option<&str>) -> Option<String> {
        for (digest, bytes) in &self.blobs {
            assert_eq!(&fake.put_blob(repo, bytes), digest);
        }
        fake.put_manifest(repo, Some(&self.sig_tag), OCI_MANIFEST, &self.sig_manifest);
        self.image_manifest.as_ref().map(|m| {
            let digest = fake.put_manifest(repo, tag, &manifest_media_type(m), m);
            assert_eq!(
                format!("{digest}.sig").replacen(':', "-", 1),
                self.sig_tag,
                "{}",
                self.case
            );
            digest
        })
    }
}

/// One exploded containers-image sigstore signature
/// (`signature-N.mediatype`, `.payload`, `.annotations.json`): exactly one
/// layer of a `.sig` manifest.
#[derive(Clone, Debug)]
pub struct SigLayer {
    pub media_type: String,
    pub payload: Vec<u8>,
    pub annotations: serde_json::Map<String, serde_json::Value>,
}

impl SigLayer {
    /// `prefix` is e.g. `containers-image/sigstore/dir-img-cosign-mixed/signature-1`.
    pub fn load(prefix: &str) -> SigLayer {
        let media_type = read_string(&format!("{prefix}.mediatype"))
            .trim()
            .to_string();
        let payload = read(&format!("{prefix}.payload"));
        let annotations: serde_json::Value =
            serde_json::from_slice(&read(&format!("{prefix}.annotations.json")))
                .expect("annotations JSON");
        let annotations = annotations.as_object().expect("annotations object").clone();
        // Cross-check the exploded files against the on-disk signature file
        // (`\0sigstore-json\n` + JSON) they were exploded from.
        let raw = read(prefix);
        let json = raw
            .strip_prefix(b"\x00sigstore-json\n")
            .expect("sigstore-json signature file");
        let v: serde_json::Value = serde_json::from_slice(json).expect("signature JSON");
        assert_eq!(
            v["mimeType"].as_str(),
            Some(media_type.as_str()),
            "{prefix}"
        );
        let b64 = v["payload"].as_str().expect("payload");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("payload base64");
        assert_eq!(decoded, payload, "{prefix}: payload");
        assert_eq!(v["annotations"].as_object(), Some(&annotations), "{prefix}");
        SigLayer {
            media_type,
            payload,
            annotations,
        }
    }

    /// The same layer with the signature annotation replaced (`None`
    /// removes it).
    pub fn with_signature(&self, signature: Option<&str>) -> SigLayer {
        let mut l = self.clone();
        match signature {
            Some(s) => {
                l.annotations
                    .insert(SIGNATURE_ANNOTATION.into(), serde_json::Value::from(s));
            }
            None => {
                l.annotations.remove(SIGNATURE_ANNOTATION);
            }
        }
        l
    }

    pub fn signature(&self) -> String {
        self.annotations[SIGNATURE_ANNOTATION]
            .as_str()
            .expect("signature annotation")
            .to_string()
    }
}

/// Stores a cosign-layout `.sig` manifest for `subject` in `repo` (the
/// byte layout of `synthesized-registry-views/README.txt`: compact JSON,
/// cosign's field order, inert config listing every payload digest), with
/// its config and payload blobs. Returns the `.sig` manifest bytes.
pub fn put_sig_manifest(fake: &Fake, repo: &str, subject: &str, layers: &[SigLayer]) -> Vec<u8> {
    let mut diff_ids = Vec::new();
    let mut history = Vec::new();
    let mut layer_json = Vec::new();
    for l in layers {
        let digest = fake.put_blob(repo, &l.payload);
        let mut annotations: Vec<_> = l.annotations.iter().collect();
        annotations.sort_by(|a, b| a.0.cmp(b.0));
        let annotations = annotations
            .iter()
            .map(|(k, v)| format!("{}:{}", serde_json::Value::from(k.as_str()), v))
            .collect::<Vec<_>>()
            .join(",");
        layer_json.push(format!(
            r#"{{"mediaType":{},"size":{},"digest":"{digest}","annotations":{{{annotations}}}}}"#,
            serde_json::Value::from(l.media_type.as_str()),
            l.payload.len()
        ));
        diff_ids.push(format!("\"{digest}\""));
        history.push(r#"{"created":"0001-01-01T00:00:00Z"}"#);
    }
    let config = format!(
        r#"{{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{}],"os":"","rootfs":{{"type":"layers","diff_ids":[{}]}},"config":{{}}}}"#,
        history.join(","),
        diff_ids.join(",")
    );
    let config_digest = fake.put_blob(repo, config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","size":{},"digest":"{config_digest}"}},"layers":[{}]}}"#,
        config.len(),
        layer_json.join(",")
    );
    let tag = format!("{}.sig", subject.replacen(':', "-", 1));
    fake.put_manifest(repo, Some(&tag), OCI_MANIFEST, manifest.as_bytes());
    manifest.into_bytes()
}

// ---------------------------------------------------------------------------
// connaisseur recorded registry
// ---------------------------------------------------------------------------

pub const CONNAISSEUR: &str = "connaisseur/cosign/securesystemsengineering/testimage";

/// Replays connaisseur's recorded registry of
/// `docker.io/securesystemsengineering/testimage` into `repo` of `fake`,
/// as its `MockRegistry` serves it: `manifests/<tag-or-digest>.json` answers
/// `/manifests/<tag-or-digest>`, `blobs/<digest>.json` answers
/// `/blobs/<digest>`. Image manifests are also stored under their digest.
pub fn put_connaisseur(fake: &Fake, repo: &str) {
    for (name, bytes) in dir_files(&format!("{CONNAISSEUR}/manifests")) {
        let reference = name.strip_suffix(".json").expect(".json");
        let media_type = manifest_media_type(&bytes);
        fake.put_manifest(repo, Some(reference), &media_type, &bytes);
    }
    for (name, bytes) in dir_files(&format!("{CONNAISSEUR}/blobs")) {
        let digest = name.strip_suffix(".json").expect(".json");
        assert_eq!(
            fake.put_blob(repo, &bytes),
            digest,
            "connaisseur blob {name}"
        );
    }
}

/// A connaisseur public key (`alice`, `bob`, `charlie`, `default`).
pub fn connaisseur_key(name: &str) -> String {
    read_string(&format!("connaisseur/cosign/{name}.pub"))
}

fn dir_files(rel: &str) -> Vec<(String, Vec<u8>)> {
    let mut names: Vec<_> = std::fs::read_dir(root().join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .into_string()
                .expect("name")
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let bytes = read(&format!("{rel}/{n}"));
            (n, bytes)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

/// A containers-image key (`cosign`, `cosign2`, `rekor`, `some-rsa-key`).
pub fn containers_image_key(name: &str) -> String {
    read_string(&format!("containers-image/keys/{name}.pub"))
}

/// The SubjectPublicKeyInfo of the first certificate in `cert_pem`, as a
/// `PUBLIC KEY` PEM: how a BYO-PKI leaf's key is pinned as a plain
/// attestor key (Portcullis does not evaluate certificate chains).
pub fn spki_pem_of_certificate(cert_pem: &str) -> String {
    let b64: String = cert_pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("certificate base64");
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
    // OPTIONAL, serial, signature, issuer, validity, subject, spki, ... } }
    let (cert, _) = der_element(&der);
    let (tbs, _) = der_element(der_content(cert));
    let mut rest = der_content(tbs);
    let mut elements = Vec::new();
    while !rest.is_empty() {
        let (e, r) = der_element(rest);
        elements.push(e);
        rest = r;
    }
    let index = if elements[0][0] == 0xA0 { 6 } else { 5 };
    let spki = elements[index];
    assert_eq!(spki[0], 0x30, "SubjectPublicKeyInfo is a SEQUENCE");
    let body = base64::engine::general_purpose::STANDARD.encode(spki);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

/// Splits one DER element (tag, length, content) off the front of `buf`.
fn der_element(buf: &[u8]) -> (&[u8], &[u8]) {
    let (header, len) = match buf[1] {
        n if n < 0x80 => (2, n as usize),
        n => {
            let k = (n & 0x7f) as usize;
            let len = buf[2..2 + k]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | *b as usize);
            (2 + k, len)
        }
    };
    buf.split_at(header + len)
}

fn der_content(element: &[u8]) -> &[u8] {
    let header = if element[1] < 0x80 {
        2
    } else {
        2 + (element[1] & 0x7f) as usize
    };
    &element[header..]
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// One public key of an attestor.
#[derive(Clone, Debug)]
pub struct Key {
    pub id: String,
    pub pem: String,
    pub algorithm: String,
}

impl Key {
    /// An ECDSA P-256 / SHA-256 key (every cosign key in the fixtures).
    pub fn p256(id: &str, pem: &str) -> Key {
        Key::new(id, pem, "ECDSA_P256_SHA256")
    }

    pub fn new(id: &str, pem: &str, algorithm: &str) -> Key {
        Key {
            id: id.to_string(),
            pem: pem.to_string(),
            algorithm: algorithm.to_string(),
        }
    }
}

/// An attestor: a name and its keys (any one may verify).
#[derive(Clone, Debug)]
pub struct Attestor {
    pub name: String,
    pub keys: Vec<Key>,
    /// The `keyless:` block's YAML (its keys at column 0), if any.
    pub keyless: Option<String>,
}

impl Attestor {
    pub fn new(name: &str, keys: &[Key]) -> Attestor {
        Attestor {
            name: name.to_string(),
            keys: keys.to_vec(),
            keyless: None,
        }
    }

    /// A keyless attestor: `keyless_yaml` is the `keyless:` block's
    /// content (`identities: [...]` ...), unindented.
    pub fn keyless(name: &str, keyless_yaml: &str) -> Attestor {
        Attestor {
            name: name.to_string(),
            keys: Vec::new(),
            keyless: Some(keyless_yaml.to_string()),
        }
    }

    fn yaml(&self) -> String {
        let mut y = format!("  - name: {}\n", self.name);
        if let Some(keyless) = &self.keyless {
            y.push_str("    keyless:\n");
            for line in keyless.lines() {
                y.push_str(&format!("      {line}\n"));
            }
        }
        if self.keys.is_empty() {
            return y;
        }
        y.push_str("    publicKeys:\n");
        for k in &self.keys {
            let pem: String = k
                .pem
                .trim()
                .lines()
                .map(|l| format!("            {l}\n"))
                .collect();
            y.push_str(&format!(
                "      - id: {}\n        pkixPublicKey:\n          publicKeyPem: |\n{pem}          signatureAlgorithm: {}\n",
                k.id, k.algorithm
            ));
        }
        y
    }
}

/// A proxy configuration: one default upstream whose canonical name is
/// `registry` but which is reached at the fake, a default admission rule
/// `REQUIRE_ATTESTATION` / `ENFORCED_BLOCK_AND_AUDIT_LOG` requiring every
/// attestor given (AND), with `signed_identity` (YAML flow value, e.g.
/// `matchRepository`, `"{exactRepository: x/y}"`) when set.
pub fn policy_config(
    registry: &str,
    fake: &Fake,
    attestors: &[Attestor],
    signed_identity: Option<&str>,
) -> String {
    let names: Vec<&str> = attestors.iter().map(|a| a.name.as_str()).collect();
    let mut y = format!(
        "listen: {{listen}}\n\
         upstreams:\n  \
           - registry: {registry}\n    \
             url: {}\n    \
             default: true\n\
         policy:\n  \
           defaultAdmissionRule:\n    \
             evaluationMode: REQUIRE_ATTESTATION\n    \
             enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG\n    \
             requireAttestationsBy: [{}]\n",
        fake.url(),
        names.join(", ")
    );
    if let Some(identity) = signed_identity {
        y.push_str(&format!("    signedIdentity: {identity}\n"));
    }
    y.push_str("attestors:\n");
    for a in attestors {
        y.push_str(&a.yaml());
    }
    y.push_str("cache: {allowTtl: 10m, denyTtl: 30s, maxEntries: 100000}\n");
    y
}

/// What `portcullis verify` said.
#[derive(Debug)]
pub struct VerifyRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl VerifyRun {
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `portcullis verify <reference> --config FILE` with `config_yaml`
/// (its `{listen}` replaced by an unused loopback address).
pub fn run_verify(config_yaml: &str, reference: &str) -> VerifyRun {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("portcullis.yaml");
    let text = config_yaml.replace("{listen}", &format!("127.0.0.1:{}", super::free_port()));
    std::fs::write(&cfg, text).expect("write verify config");
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("verify")
        .arg(reference)
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("run portcullis verify");
    VerifyRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
