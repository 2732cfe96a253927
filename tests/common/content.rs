//! Builds valid OCI images from deterministic pseudo-random content and pushes
//! them to a registry over the distribution API (monolithic uploads).
//!
//! Layers are uncompressed tar archives written by hand (one ustar entry per
//! layer) whose file content is xorshift output, so it is incompressible and
//! can be regenerated from its seed instead of being kept in memory: big
//! layers are hashed in one streaming pass and uploaded in a second one.

use std::io::{self, Read};

use serde_json::json;
use sha2::{Digest, Sha256};

use super::http;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

pub const MIB: u64 = 1024 * 1024;

/// `sha256:<hex>` of a byte slice.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Streams `r` to the end, returning (`sha256:<hex>`, byte count).
pub fn sha256_reader(mut r: impl Read) -> io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((format!("sha256:{}", hex::encode(h.finalize())), n))
}

/// Deterministic incompressible bytes (xorshift64*), `len` of them.
pub struct RandomReader {
    state: u64,
    remaining: u64,
    pending: [u8; 8],
    pending_len: usize,
}

impl RandomReader {
    pub fn new(seed: u64, len: u64) -> Self {
        RandomReader {
            // xorshift must not start at 0.
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            remaining: len,
            pending: [0; 8],
            pending_len: 0,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes()
    }
}

impl Read for RandomReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.remaining) as usize;
        let mut i = 0;
        while i < want && self.pending_len > 0 {
            buf[i] = self.pending[8 - self.pending_len];
            self.pending_len -= 1;
            i += 1;
        }
        while want - i >= 8 {
            buf[i..i + 8].copy_from_slice(&self.next_word());
            i += 8;
        }
        if i < want {
            self.pending = self.next_word();
            self.pending_len = 8;
            while i < want {
                buf[i] = self.pending[8 - self.pending_len];
                self.pending_len -= 1;
                i += 1;
            }
        }
        self.remaining -= want as u64;
        Ok(want)
    }
}

/// One ustar header block for a regular file.
fn ustar_header(name: &str, size: u64) -> [u8; 512] {
    assert!(name.len() < 100, "tar name too long");
    assert!(size < 0o77777777777, "tar entry too large for ustar");
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0"); // mode
    h[108..116].copy_from_slice(b"0000000\0"); // uid
    h[116..124].copy_from_slice(b"0000000\0"); // gid
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes()); // size
    h[136..148].copy_from_slice(b"00000000000\0"); // mtime
    h[148..156].copy_from_slice(b"        "); // checksum placeholder
    h[156] = b'0'; // regular file
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// An uncompressed tar layer holding one file of `file_size` pseudo-random
/// bytes generated from `seed`. Regenerable at will.
#[derive(Debug, Clone)]
pub struct TarLayer {
    pub seed: u64,
    pub file_size: u64,
    pub file_name: String,
}

impl TarLayer {
    pub fn new(seed: u64, file_size: u64) -> Self {
        TarLayer {
            seed,
            file_size,
            file_name: format!("data-{seed}.bin"),
        }
    }

    /// Size of the whole tar stream: header, content padded to 512, and the
    /// two zero end-of-archive blocks.
    pub fn tar_size(&self) -> u64 {
        512 + self.file_size.div_ceil(512) * 512 + 1024
    }

    /// A fresh reader over the tar bytes.
    pub fn reader(&self) -> impl Read + Send {
        let pad = self.file_size.div_ceil(512) * 512 - self.file_size + 1024;
        io::Cursor::new(ustar_header(&self.file_name, self.file_size))
            .chain(RandomReader::new(self.seed, self.file_size))
            .chain(io::repeat(0).take(pad))
    }

    /// The whole tar in memory (fine for small layers).
    pub fn bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.tar_size() as usize);
        self.reader().read_to_end(&mut v).expect("generate tar");
        v
    }

    /// `sha256:<hex>` of the tar (the layer digest and, since it is
    /// uncompressed, its diff_id too). One streaming pass.
    pub fn digest(&self) -> String {
        let (d, n) = sha256_reader(self.reader()).expect("hash tar");
        assert_eq!(n, self.tar_size());
        d
    }
}

/// A blob as pushed: digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
}

/// A pushed single-platform image.
#[derive(Debug, Clone)]
pub struct PushedImage {
    pub name: String,
    pub tag: Option<String>,
    pub arch: String,
    /// Exact manifest bytes pushed.
    pub manifest: Vec<u8>,
    /// Digest of `manifest` (as confirmed by the registry).
    pub digest: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layers: Vec<(TarLayer, Blob)>,
}

impl PushedImage {
    /// Every blob the image references: config first, then layers.
    pub fn blobs(&self) -> Vec<Blob> {
        let mut v = vec![Blob {
            digest: self.config_digest.clone(),
            size: self.config.len() as u64,
        }];
        v.extend(self.layers.iter().map(|(_, b)| b.clone()));
        v
    }
}

/// A pushed multi-platform OCI index and its children.
#[derive(Debug, Clone)]
pub struct PushedIndex {
    pub name: String,
    pub tag: String,
    pub manifest: Vec<u8>,
    pub digest: String,
    pub images: Vec<PushedImage>,
}

fn upload_location(registry_url: &str, name: &str) -> String {
    let url = format!("{registry_url}/v2/{name}/blobs/uploads/");
    let r = http::request("POST", &url, &[], &[]).unwrap_or_else(|e| panic!("POST {url}: {e}"));
    assert_eq!(r.status, 202, "POST {url}: {} {}", r.status, r.text());
    let loc = r
        .header("location")
        .unwrap_or_else(|| panic!("POST {url}: no Location header"))
        .to_string();
    if loc.starts_with('/') {
        format!("{registry_url}{loc}")
    } else {
        loc
    }
}

fn with_digest(location: &str, digest: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={}", digest.replace(':', "%3A"))
}

/// Monolithic upload of an in-memory blob. Returns its digest and size.
pub fn push_blob(registry_url: &str, name: &str, bytes: &[u8]) -> Blob {
    let digest = sha256_digest(bytes);
    let mut r = bytes;
    push_blob_stream(registry_url, name, &digest, &mut r, bytes.len() as u64);
    Blob {
        digest,
        size: bytes.len() as u64,
    }
}

/// Monolithic upload streaming `len` bytes from `body` (the digest must be
/// known in advance). Panics unless the registry answers 201 with the same
/// `Docker-Content-Digest`.
pub fn push_blob_stream(
    registry_url: &str,
    name: &str,
    digest: &str,
    body: &mut dyn Read,
    len: u64,
) {
    let loc = upload_location(registry_url, name);
    let url = with_digest(&loc, digest);
    let mut resp = http::request_streaming(
        "PUT",
        &url,
        &[("Content-Type", "application/octet-stream")],
        Some((body, len)),
    )
    .unwrap_or_else(|e| panic!("PUT blob {digest} ({len} bytes) to {name}: {e}"));
    let mut text = String::new();
    let _ = resp.body.read_to_string(&mut text);
    assert_eq!(
        resp.status, 201,
        "PUT blob {digest} to {name}: HTTP {} {text}",
        resp.status
    );
    assert_eq!(resp.header("docker-content-digest"), Some(digest));
}

/// Pushes a tar layer by streaming it twice (hash, then upload).
pub fn push_layer(registry_url: &str, name: &str, layer: &TarLayer) -> Blob {
    let digest = layer.digest();
    let size = layer.tar_size();
    let mut r = layer.reader();
    push_blob_stream(registry_url, name, &digest, &mut r, size);
    Blob { digest, size }
}

/// PUTs a manifest under `reference` (tag or digest) with `media_type` as
/// Content-Type; checks the registry's digest equals sha256 of the bytes.
pub fn push_manifest(
    registry_url: &str,
    name: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> String {
    let digest = sha256_digest(bytes);
    let url = format!("{registry_url}/v2/{name}/manifests/{reference}");
    let r = http::request("PUT", &url, &[("Content-Type", media_type)], bytes)
        .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
    assert_eq!(r.status, 201, "PUT {url}: HTTP {} {}", r.status, r.text());
    assert_eq!(
        r.header("docker-content-digest"),
        Some(digest.as_str()),
        "registry computed another manifest digest"
    );
    digest
}

/// Builds and pushes a linux/`arch` image with one layer per entry of
/// `layer_sizes` (file sizes; layer `i` uses seed `seed + i`). Tagged with
/// `tag` when given, otherwise pushed by digest only.
pub fn push_image(
    registry_url: &str,
    name: &str,
    tag: Option<&str>,
    arch: &str,
    seed: u64,
    layer_sizes: &[u64],
) -> PushedImage {
    let mut layers = Vec::new();
    for (i, &size) in layer_sizes.iter().enumerate() {
        let layer = TarLayer::new(seed.wrapping_add(i as u64), size);
        let blob = push_layer(registry_url, name, &layer);
        layers.push((layer, blob));
    }
    let diff_ids: Vec<&str> = layers.iter().map(|(_, b)| b.digest.as_str()).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/"],
            "Labels": {"org.example.portcullis-test.seed": seed.to_string()}
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": layers.iter().map(|_| json!({"created": "2024-01-01T00:00:00Z", "created_by": "portcullis test harness"})).collect::<Vec<_>>()
    }))
    .expect("config json");
    let config_blob = push_blob(registry_url, name, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_blob.digest, "size": config_blob.size},
        "layers": layers.iter().map(|(_, b)| json!({
            "mediaType": OCI_LAYER_TAR, "digest": b.digest, "size": b.size
        })).collect::<Vec<_>>()
    }))
    .expect("manifest json");
    let digest = sha256_digest(&manifest);
    let reference = tag.unwrap_or(&digest).to_string();
    let pushed = push_manifest(registry_url, name, &reference, OCI_MANIFEST, &manifest);
    assert_eq!(pushed, digest);
    PushedImage {
        name: name.to_string(),
        tag: tag.map(str::to_string),
        arch: arch.to_string(),
        manifest,
        digest,
        config,
        config_digest: config_blob.digest,
        layers,
    }
}

/// Pushes a linux/amd64 + linux/arm64 OCI index under `tag`, each child
/// image with one small layer of `layer_size` bytes.
pub fn push_multiarch(
    registry_url: &str,
    name: &str,
    tag: &str,
    seed: u64,
    layer_size: u64,
) -> PushedIndex {
    let images: Vec<PushedImage> = ["amd64", "arm64"]
        .iter()
        .enumerate()
        .map(|(i, arch)| {
            push_image(
                registry_url,
                name,
                None,
                arch,
                seed.wrapping_add(1000 * (i as u64 + 1)),
                &[layer_size],
            )
        })
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": images.iter().map(|im| json!({
            "mediaType": OCI_MANIFEST,
            "digest": im.digest,
            "size": im.manifest.len(),
            "platform": {"architecture": im.arch, "os": "linux"}
        })).collect::<Vec<_>>()
    }))
    .expect("index json");
    let digest = push_manifest(registry_url, name, tag, OCI_INDEX, &manifest);
    PushedIndex {
        name: name.to_string(),
        tag: tag.to_string(),
        manifest,
        digest,
        images,
    }
}

/// The three fixtures every real-client test pulls: a single-arch image, a
/// multi-arch index and an image with a 64 MiB layer.
pub struct Fixtures {
    pub single: PushedImage,
    pub multi: PushedIndex,
    pub big: PushedImage,
}

pub fn push_fixtures(registry_url: &str) -> Fixtures {
    Fixtures {
        single: push_image(
            registry_url,
            "test/single",
            Some("v1"),
            "amd64",
            1,
            &[100_000, 3000],
        ),
        multi: push_multiarch(registry_url, "test/multi", "v1", 2, 200_000),
        big: push_image(
            registry_url,
            "test/big",
            Some("v1"),
            "amd64",
            3,
            &[64 * MIB],
        ),
    }
}
