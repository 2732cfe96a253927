//! Trust-enforcement helpers: real keys and signatures made by the
//! `portcullis keygen` / `portcullis sign` commands, policy configs, the
//! signature tampering cases (wrong key, replayed digest, wrong repository,
//! altered payload) built with the distribution API, and client runs whose
//! failure output is returned instead of panicking.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::clients::{self, Containerd, Podman};
use super::content::{self, sha256_digest};
use super::fake::Fake;
use super::http;

pub const PORTCULLIS: &str = env!("CARGO_BIN_EXE_portcullis");

/// Every manifest media type a client may accept.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// The attestor every trust test's policy requires.
pub const ATTESTOR: &str = "built-by-ci";

/// A P-256 key pair written by `portcullis keygen`.
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub key: PathBuf,
    pub public: PathBuf,
    /// The SPKI PEM text of `public`.
    pub pem: String,
}

/// `portcullis keygen --key DIR/NAME.key --pub DIR/NAME.pub`.
pub fn keygen(dir: &Path, name: &str) -> KeyPair {
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    clients::run(
        Command::new(PORTCULLIS)
            .arg("keygen")
            .arg("--key")
            .arg(&key)
            .arg("--pub")
            .arg(&public),
        "portcullis keygen",
    );
    let pem = std::fs::read_to_string(&public).expect("read public key");
    assert!(
        pem.contains("BEGIN PUBLIC KEY"),
        "keygen wrote no SPKI PEM: {pem}"
    );
    KeyPair { key, public, pem }
}

/// The cosign signature tag of `digest`: `sha256-<hex>.sig`.
pub fn sig_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}

/// `portcullis sign <reference> --key K --insecure [--annotation a]...`,
/// then checks that the registry at `registry_url` now holds a `.sig`
/// manifest for `expected_digest` in `repo`.
pub fn sign(
    registry_url: &str,
    reference: &str,
    repo: &str,
    expected_digest: &str,
    key: &KeyPair,
    annotations: &[&str],
) {
    let mut cmd = Command::new(PORTCULLIS);
    cmd.arg("sign")
        .arg(reference)
        .arg("--key")
        .arg(&key.key)
        .arg("--insecure");
    for a in annotations {
        cmd.arg("--annotation").arg(a);
    }
    clients::run(&mut cmd, &format!("portcullis sign {reference}"));
    let (_, bytes) = get_manifest(registry_url, repo, &sig_tag(expected_digest))
        .unwrap_or_else(|s| {
            panic!("after `portcullis sign {reference}` there is no signature for {expected_digest} in {repo} (HTTP {s})")
        });
    let v: Value = serde_json::from_slice(&bytes).expect("sig manifest json");
    assert!(
        !v["layers"].as_array().expect("layers").is_empty(),
        "signature manifest has no layers"
    );
}

// ------------------------------------------------------------- policy yaml

/// A proxy configuration with one upstream and the policy of the trust
/// tests. `registry` is the canonical host that patterns and signatures
/// name; `url` is where it is reached (the same registry, or a fake serving
/// its content).
#[derive(Debug, Clone)]
pub struct TrustConfig {
    pub registry: String,
    pub url: String,
    /// `(id, SPKI PEM)` of the attestor's keys.
    pub keys: Vec<(String, String)>,
    pub default_mode: String,
    pub cache: String,
}

impl TrustConfig {
    pub fn new(registry: &str, url: &str, keys: &[(&str, &KeyPair)]) -> TrustConfig {
        TrustConfig {
            registry: registry.to_string(),
            url: url.to_string(),
            keys: keys
                .iter()
                .map(|(id, k)| (id.to_string(), k.pem.clone()))
                .collect(),
            default_mode: "REQUIRE_ATTESTATION".into(),
            cache: "{allowTtl: 10m, denyTtl: 30s, maxEntries: 100000}".into(),
        }
    }

    /// The YAML, `listen: {listen}` left for `Proxy::start`.
    pub fn yaml(&self) -> String {
        let r = &self.registry;
        let mut y = format!(
            "listen: {{listen}}\n\
             upstreams:\n\
             \x20 - registry: {r}\n\
             \x20   url: {url}\n\
             \x20   default: true\n\
             policy:\n\
             \x20 admissionWhitelistPatterns:\n\
             \x20   - namePattern: {r}/base/*\n\
             \x20 defaultAdmissionRule:\n\
             \x20   evaluationMode: {mode}\n\
             \x20   enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG\n\
             \x20   requireAttestationsBy: [{ATTESTOR}]\n\
             \x20 repositoryAdmissionRules:\n\
             \x20   \"{r}/sandbox/**\": {{evaluationMode: ALWAYS_ALLOW}}\n\
             \x20   \"{r}/dry/**\": {{evaluationMode: REQUIRE_ATTESTATION, enforcementMode: DRYRUN_AUDIT_LOG_ONLY, requireAttestationsBy: [{ATTESTOR}]}}\n\
             attestors:\n\
             \x20 - name: {ATTESTOR}\n\
             \x20   publicKeys:\n",
            url = self.url,
            mode = self.default_mode,
        );
        for (id, pem) in &self.keys {
            y.push_str(&format!(
                "      - id: {id}\n        pkixPublicKey:\n          publicKeyPem: |\n"
            ));
            for line in pem.lines() {
                y.push_str(&format!("            {line}\n"));
            }
            y.push_str("          signatureAlgorithm: ECDSA_P256_SHA256\n");
        }
        y.push_str(&format!("cache: {}\n", self.cache));
        y
    }
}

// ------------------------------------------------------ registry plumbing

/// GET a manifest with every media type accepted: `(content type, bytes)`,
/// or the HTTP status when it is not 200.
pub fn get_manifest(base_url: &str, repo: &str, reference: &str) -> Result<(String, Vec<u8>), u16> {
    let r = http::request(
        "GET",
        &format!("{base_url}/v2/{repo}/manifests/{reference}"),
        &[("Accept", MANIFEST_ACCEPT)],
        &[],
    )
    .unwrap_or_else(|e| panic!("GET manifest {repo}:{reference} at {base_url}: {e}"));
    if r.status != 200 {
        return Err(r.status);
    }
    let ct = r.header("content-type").unwrap_or_default().to_string();
    Ok((ct, r.body))
}

/// `GET <repo>:<reference>` through `proxy` with every manifest type
/// accepted, whatever the status (the tests assert it).
pub fn get_manifest_via(proxy: &super::Proxy, repo: &str, reference: &str) -> http::Response {
    http::request(
        "GET",
        &format!("{}/v2/{repo}/manifests/{reference}", proxy.url()),
        &[("Accept", MANIFEST_ACCEPT)],
        &[],
    )
    .unwrap_or_else(|e| panic!("GET {repo}:{reference} through the proxy: {e}"))
}

/// `GET <repo>:v1` through `proxy`, as [`get_manifest_via`].
pub fn pull_v1(proxy: &super::Proxy, repo: &str) -> http::Response {
    get_manifest_via(proxy, repo, "v1")
}

/// GET a blob's bytes; panics unless 200.
pub fn get_blob(base_url: &str, repo: &str, digest: &str) -> Vec<u8> {
    let url = format!("{base_url}/v2/{repo}/blobs/{digest}");
    let r = http::get(&url).unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(r.status, 200, "GET {url}: HTTP {} {}", r.status, r.text());
    r.body
}

/// Digests of the blobs a single-image manifest references (config first).
pub fn manifest_blobs(manifest: &[u8]) -> Vec<String> {
    let v: Value = serde_json::from_slice(manifest).expect("manifest json");
    let mut out = vec![v["config"]["digest"]
        .as_str()
        .expect("config digest")
        .to_string()];
    for l in v["layers"].as_array().expect("layers") {
        out.push(l["digest"].as_str().expect("layer digest").to_string());
    }
    out
}

/// Copies the single-image manifest `src_repo:src_ref` and every blob it
/// references to `dst_repo:dst_ref` in the same registry (bytes unchanged,
/// so the digest is unchanged). Returns the manifest digest.
pub fn copy_manifest(
    registry_url: &str,
    src_repo: &str,
    src_ref: &str,
    dst_repo: &str,
    dst_ref: &str,
) -> String {
    let (ct, bytes) = get_manifest(registry_url, src_repo, src_ref)
        .unwrap_or_else(|s| panic!("copy: {src_repo}:{src_ref} is HTTP {s}"));
    if src_repo != dst_repo {
        for d in manifest_blobs(&bytes) {
            let blob = get_blob(registry_url, src_repo, &d);
            content::push_blob(registry_url, dst_repo, &blob);
        }
    }
    content::push_manifest(registry_url, dst_repo, dst_ref, &ct, &bytes)
}

/// Replaces the `.sig` of `digest` in `repo` with one whose simple-signing
/// payload blob has been altered (an extra `optional` field), keeping the
/// original signature annotation. Returns the altered payload.
pub fn tamper_signature(registry_url: &str, repo: &str, digest: &str) -> Vec<u8> {
    let tag = sig_tag(digest);
    let (ct, bytes) =
        get_manifest(registry_url, repo, &tag).unwrap_or_else(|s| panic!("{repo}:{tag}: HTTP {s}"));
    let mut m: Value = serde_json::from_slice(&bytes).expect("sig manifest json");
    let layer = &mut m["layers"][0];
    assert!(
        layer["annotations"]["dev.cosignproject.cosign/signature"].is_string(),
        "sig layer has no signature annotation: {layer}"
    );
    let payload = get_blob(
        registry_url,
        repo,
        layer["digest"].as_str().expect("payload digest"),
    );
    let mut p: Value = serde_json::from_slice(&payload).expect("payload json");
    assert_eq!(
        p["critical"]["image"]["docker-manifest-digest"].as_str(),
        Some(digest),
        "payload does not name the signed digest"
    );
    p["optional"] = serde_json::json!({"tampered": "yes"});
    let altered = serde_json::to_vec(&p).expect("payload json");
    assert_ne!(altered, payload);
    let blob = content::push_blob(registry_url, repo, &altered);
    layer["digest"] = Value::String(blob.digest);
    layer["size"] = Value::from(blob.size);
    let new = serde_json::to_vec(&m).expect("manifest json");
    content::push_manifest(registry_url, repo, &tag, &ct, &new);
    altered
}

/// Copies the manifest `repo:reference` and every blob it references from
/// a real registry into the fake, under the same repository and (when
/// `tag` is given) tag. Returns `(media type, bytes)`.
pub fn copy_to_fake(
    registry_url: &str,
    repo: &str,
    reference: &str,
    tag: Option<&str>,
    fake: &Fake,
) -> (String, Vec<u8>) {
    let (ct, bytes) = get_manifest(registry_url, repo, reference)
        .unwrap_or_else(|s| panic!("{repo}:{reference}: HTTP {s}"));
    for d in manifest_blobs(&bytes) {
        let blob = get_blob(registry_url, repo, &d);
        assert_eq!(fake.put_blob(repo, &blob), d);
    }
    fake.put_manifest(repo, tag, &ct, &bytes);
    (ct, bytes)
}

// ------------------------------------------------------------- denials

/// What a denial of one case must say.
#[derive(Debug, Clone, Copy)]
pub struct Expected {
    /// The kind of failure, e.g. "no signatures found".
    pub failure: &'static str,
}

/// The words every denial by the default rule must contain.
pub const DENIAL_WORDS: [&str; 2] = ["default admission rule", "attestor built-by-ci"];

/// Asserts a proxy answer is 403 `DENIED` whose message names the rule, the
/// attestor and `failure`. Returns the message.
pub fn assert_denied(r: &http::Response, failure: &str, what: &str) -> String {
    super::fake::assert_oci_error(r, 403, Some("DENIED"), what);
    let errors = super::fake::oci_errors(&r.body).expect("oci errors");
    let msg = errors[0].1.clone();
    for w in DENIAL_WORDS.iter().chain([&failure]) {
        assert!(
            msg.contains(w),
            "{what}: denial message lacks {w:?}: {msg:?}"
        );
    }
    msg
}

/// Asserts a 403 `DENIED` by the keyless attestor `acme-release` whose
/// message names the keyless check that failed (`says`). Returns the
/// message.
pub fn assert_denied_keyless(r: &http::Response, says: &str, what: &str) -> String {
    super::fake::assert_oci_error(r, 403, Some("DENIED"), what);
    let errors = super::fake::oci_errors(&r.body).expect("oci errors");
    let msg = errors[0].1.clone();
    for w in ["attestor acme-release", "keyless verification failed", says] {
        assert!(
            msg.contains(w),
            "{what}: denial message lacks {w:?}: {msg:?}"
        );
    }
    msg
}

/// The combined stdout and stderr of a command.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn empty_registries_conf(dir: &Path) -> PathBuf {
    let p = dir.join("registries.conf");
    std::fs::write(&p, "unqualified-search-registries = []\n").expect("write registries.conf");
    p
}

/// `skopeo copy docker://REF dir:DEST` over plain HTTP, whatever the
/// outcome.
pub fn skopeo_copy(reference: &str, dest: &Path) -> Output {
    clients::require_tool(clients::SKOPEO, "skopeo");
    let conf_dir = tempfile::tempdir().expect("tempdir");
    let conf = empty_registries_conf(conf_dir.path());
    clients::run_unchecked(
        Command::new(clients::SKOPEO)
            .env("CONTAINERS_REGISTRIES_CONF", &conf)
            .arg("--insecure-policy")
            .arg("copy")
            .arg("--src-tls-verify=false")
            .arg("--retry-times=0")
            .arg(format!("docker://{reference}"))
            .arg(format!("dir:{}", dest.display())),
        &format!("skopeo copy {reference}"),
    )
}

/// `podman pull --tls-verify=false REF`, whatever the outcome.
pub fn podman_pull(podman: &Podman, reference: &str) -> Output {
    clients::run_unchecked(
        podman
            .cmd()
            .arg("pull")
            .arg("--tls-verify=false")
            .arg(reference),
        &format!("podman pull {reference}"),
    )
}

/// `ctr images pull --plain-http --snapshotter native [--platform P] REF`,
/// whatever the outcome.
pub fn ctr_pull(ctr: &Containerd, reference: &str, platform: Option<&str>) -> Output {
    let mut cmd = ctr.ctr();
    cmd.args(["images", "pull", "--plain-http", "--snapshotter", "native"]);
    if let Some(p) = platform {
        cmd.arg("--platform").arg(p);
    }
    cmd.arg(reference);
    clients::run_unchecked(&mut cmd, &format!("ctr images pull {reference}"))
}

/// Asserts the command failed and its output contains every one of `words`.
pub fn assert_failed_saying(out: &Output, words: &[&str], what: &str) {
    let text = output_text(out);
    assert!(
        !out.status.success(),
        "{what}: expected failure, but it succeeded\n{text}"
    );
    for w in words {
        assert!(
            text.contains(w),
            "{what}: output lacks {w:?}\n--- output ---\n{text}"
        );
    }
}

/// Asserts the command succeeded (panics with its output otherwise).
pub fn assert_succeeded(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({})\n{}",
        out.status,
        output_text(out)
    );
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; returns
/// whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The digest of the manifest a `skopeo copy … dir:` wrote.
pub fn dir_manifest_digest(dir: &Path) -> String {
    sha256_digest(&std::fs::read(dir.join("manifest.json")).expect("read dir manifest"))
}

// ------------------------------------------------------------ deny cases

/// The ways an image can fail the `built-by-ci` attestor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// No `.sig` at all.
    Unsigned,
    /// Signed with a key the attestor does not hold.
    WrongKey,
    /// A valid `.sig` of image A copied under image B's `sha256-<hexB>.sig`.
    ReplayedDigest,
    /// Signed in repository `team-x/app`; same content and `.sig` copied to
    /// `team-y/app`.
    WrongRepository,
    /// The payload blob altered, the old signature annotation kept.
    TamperedPayload,
}

pub const ALL_CASES: [Case; 5] = [
    Case::Unsigned,
    Case::WrongKey,
    Case::ReplayedDigest,
    Case::WrongRepository,
    Case::TamperedPayload,
];

/// An image prepared for one [`Case`], to be requested as `repo:tag`.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub case: Case,
    pub repo: String,
    pub tag: String,
    pub digest: String,
    /// The words the denial must use for this kind of failure.
    pub failure: &'static str,
}

/// Pushes (and signs, copies, tampers) the images of `case` into the
/// registry at `registry_host`, in repositories no other case uses.
/// `ci` is the attestor's key, `other` a key it does not know.
pub fn prepare_case(
    case: Case,
    registry_host: &str,
    ci: &KeyPair,
    other: &KeyPair,
    seed: u64,
) -> Prepared {
    let url = format!("http://{registry_host}");
    let arch = super::host_arch();
    let push = |repo: &str, tag: &str, seed: u64| {
        content::push_image(&url, repo, Some(tag), arch, seed, &[4096]).digest
    };
    let sign_as = |repo: &str, tag: &str, digest: &str, key: &KeyPair| {
        sign(
            &url,
            &format!("{registry_host}/{repo}:{tag}"),
            repo,
            digest,
            key,
            &[],
        )
    };
    let (repo, digest, failure) = match case {
        Case::Unsigned => {
            let repo = "demo/unsigned";
            (repo, push(repo, "v1", seed), "no signatures found")
        }
        Case::WrongKey => {
            let repo = "demo/wrong-key";
            let d = push(repo, "v1", seed);
            sign_as(repo, "v1", &d, other);
            (repo, d, "by unknown key or altered")
        }
        Case::ReplayedDigest => {
            let repo = "demo/replayed";
            let a = push(repo, "a", seed);
            sign_as(repo, "a", &a, ci);
            let b = push(repo, "v1", seed + 1);
            assert_ne!(a, b);
            copy_manifest(&url, repo, &sig_tag(&a), repo, &sig_tag(&b));
            (repo, b, "for another digest")
        }
        Case::WrongRepository => {
            let d = push("team-x/app", "v1", seed);
            sign_as("team-x/app", "v1", &d, ci);
            let repo = "team-y/app";
            assert_eq!(copy_manifest(&url, "team-x/app", "v1", repo, "v1"), d);
            copy_manifest(&url, "team-x/app", &sig_tag(&d), repo, &sig_tag(&d));
            (repo, d, "for another repository")
        }
        Case::TamperedPayload => {
            let repo = "demo/tampered";
            let d = push(repo, "v1", seed);
            sign_as(repo, "v1", &d, ci);
            tamper_signature(&url, repo, &d);
            (repo, d, "by unknown key or altered")
        }
    };
    Prepared {
        case,
        repo: repo.to_string(),
        tag: "v1".to_string(),
        digest,
        failure,
    }
}

// ------------------------------------------------- independent signers

/// DSSE's pre-authentication encoding, written out here from the spec
/// (not Portcullis' implementation).
pub fn dsse_pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut pae = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    pae.extend_from_slice(payload);
    pae
}

/// `openssl dgst -sha256 -sign KEY` over `message`: a DER ECDSA signature
/// made by an implementation other than Portcullis. Scratch files go to
/// `dir`.
pub fn openssl_sign(dir: &Path, key: &KeyPair, message: &[u8]) -> Vec<u8> {
    let input = dir.join("openssl-message.bin");
    let output = dir.join("openssl-message.sig");
    std::fs::write(&input, message).expect("write message");
    clients::run(
        Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&key.key)
            .arg("-out")
            .arg(&output)
            .arg(&input),
        "openssl dgst -sign",
    );
    std::fs::read(&output).expect("read signature")
}

/// An in-toto DSSE envelope over `statement`, signed with OpenSSL: the
/// JSON object and the signature's base64.
pub fn openssl_dsse(dir: &Path, key: &KeyPair, statement: &[u8]) -> (Value, String) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload_type = "application/vnd.in-toto+json";
    let signature = b64.encode(openssl_sign(dir, key, &dsse_pae(payload_type, statement)));
    let envelope = serde_json::json!({
        "payloadType": payload_type,
        "payload": b64.encode(statement),
        "signatures": [{"keyid": "", "sig": signature}],
    });
    (envelope, signature)
}

/// Pulls `good_repo:v1` (which must be `good_digest`) and `evil_repo:v1`
/// through the proxy with skopeo: the first succeeds, the second fails
/// naming the built-by-ci builder condition.
pub fn assert_builder_condition_enforced(
    proxy_host: &str,
    dir: &Path,
    good_repo: &str,
    good_digest: &str,
    evil_repo: &str,
) {
    let pulled = dir.join("pulled-good");
    let out = skopeo_copy(&format!("{proxy_host}/{good_repo}:v1"), &pulled);
    assert_succeeded(&out, &format!("skopeo copy {good_repo} (our builder)"));
    assert_eq!(dir_manifest_digest(&pulled), good_digest);
    let out = skopeo_copy(
        &format!("{proxy_host}/{evil_repo}:v1"),
        &dir.join("pulled-evil"),
    );
    assert_failed_saying(
        &out,
        &[
            "attestor built-by-ci",
            "condition failed: /runDetails/builder/id",
            "evil.example/builder",
        ],
        &format!("skopeo copy {evil_repo} (another builder)"),
    );
}

// ------------------------------------------------ referrers (cosign v3)

/// The sigstore bundle v0.3 media type.
pub const BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// What cosign v3 pushes: the bundle blob, the empty config and a
/// manifest whose `subject` is the image. Returns the referrer manifest
/// and the descriptor a referrers index lists for it.
pub fn referrer(
    push_blob: &mut dyn FnMut(&[u8]) -> String,
    image_digest: &str,
    image_size: usize,
    bundle: &[u8],
    predicate_type: &str,
) -> (Vec<u8>, Value) {
    let bundle_digest = push_blob(bundle);
    let empty = push_blob(b"{}");
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2, "digest": empty},
        "layers": [{"mediaType": BUNDLE_V03, "size": bundle.len(), "digest": bundle_digest}],
        "annotations": {
            "dev.sigstore.bundle.content": "dsse-envelope",
            "dev.sigstore.bundle.predicateType": predicate_type,
        },
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": image_size, "digest": image_digest},
        "artifactType": BUNDLE_V03,
    }))
    .expect("JSON");
    let descriptor = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": content::sha256_digest(&manifest),
        "size": manifest.len(),
        "artifactType": BUNDLE_V03,
        "annotations": {"dev.sigstore.bundle.predicateType": predicate_type},
    });
    (manifest, descriptor)
}

/// An OCI image index listing `descriptors` (a referrers index).
pub fn index(descriptors: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": descriptors,
    }))
    .expect("JSON")
}

/// Pushes `bundle` as a referrer of `image_digest` in `repo`, with the
/// referrers tag that distribution 2.8 needs (it has no referrers API).
pub fn attach_bundle(
    url: &str,
    repo: &str,
    image_digest: &str,
    image_size: usize,
    bundle: &[u8],
    predicate_type: &str,
) {
    let mut push = |bytes: &[u8]| content::push_blob(url, repo, bytes).digest;
    let (manifest, descriptor) =
        referrer(&mut push, image_digest, image_size, bundle, predicate_type);
    content::push_manifest(
        url,
        repo,
        &content::sha256_digest(&manifest),
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
    );
    content::push_manifest(
        url,
        repo,
        &image_digest.replace(':', "-"),
        "application/vnd.oci.image.index.v1+json",
        &index(&[descriptor]),
    );
}
