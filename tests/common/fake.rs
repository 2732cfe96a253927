//! An in-process fake upstream registry with fault switches.
//!
//! A real registry (CNCF distribution, see `registry.rs`) cannot serve a
//! manifest that does not hash to its digest, abort a blob half-way, or hang
//! forever; this one can. It is configured by a plain struct of switches
//! ([`FakeConfig`]) that tests may also flip while it runs ([`Fake::set`]),
//! holds manifests, blobs, tags and referrers in memory, and records every
//! request it receives (method, path, query, headers) so tests can assert
//! "this never reached the upstream" or "exactly one token fetch".
//!
//! It speaks HTTP/1.1 (hyper 1) on `127.0.0.1:0` on its own tokio runtime;
//! a second listener on another loopback address (`127.0.0.2`, a different
//! host as far as URLs go) plays blob storage for 307 redirects. Dropping the
//! [`Fake`] shuts the runtime down, which closes every listener and
//! connection, including those parked by `never_respond`.
//!
//! Behaviour mirrors distribution where it matters: error bodies are OCI
//! envelopes, blob `Range` handling follows Go's `http.ServeContent` (416
//! with plain text, `Content-Range: bytes */N` when nothing overlaps),
//! `tags/list` paginates with `Link: </v2/<name>/tags/list?last=..&n=..>;
//! rel="next"`, and the bearer flow follows the distribution token spec.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_EMPTY_INDEX: &str =
    r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;

/// Size of the chunks blobs are streamed in.
const BLOB_CHUNK: usize = 64 * 1024;

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// Bearer-token protection (distribution's `auth: token`), with the token
/// endpoint served by the fake itself at `/token`.
#[derive(Clone, Debug)]
pub struct TokenAuth {
    /// `service` parameter of the challenge.
    pub service: String,
    /// If set, the token endpoint demands these Basic credentials.
    pub basic: Option<(String, String)>,
    /// `expires_in` in the token response; `None` omits the field (clients
    /// must then assume 60 s). Tokens stop being accepted after this long.
    pub expires_in: Option<u64>,
    /// Answer with `{"access_token": ...}` only (no `token` field).
    pub access_token_only: bool,
    /// Write the challenge with parameters reordered, spaces after commas
    /// and an `error="insufficient_scope"` parameter, as some registries do.
    pub quirky_challenge: bool,
    /// The challenge's realm is the storage listener's `/token` (another
    /// loopback address, plain http): a token endpoint on another host.
    /// The storage listener then serves the token endpoint too.
    pub foreign_realm: bool,
}

impl Default for TokenAuth {
    fn default() -> Self {
        TokenAuth {
            service: "fake-registry".into(),
            basic: None,
            expires_in: Some(300),
            access_token_only: false,
            quirky_challenge: false,
            foreign_realm: false,
        }
    }
}

/// Fault switches. `Default` is a well-behaved anonymous registry.
#[derive(Clone, Debug, Default)]
pub struct FakeConfig {
    /// A manifest requested *by digest* is served with bytes that do not
    /// hash to that digest (the `Docker-Content-Digest` header still claims
    /// the requested one).
    pub wrong_manifest_digest: bool,
    /// Manifests are sent chunked, without `Content-Length`.
    pub chunked_manifests: bool,
    /// Like distribution: a manifest whose media type is not listed in the
    /// request's `Accept` header is answered 404 `MANIFEST_UNKNOWN`.
    pub strict_accept: bool,
    /// Full blob bodies have one byte flipped (same length, same claimed
    /// digest).
    pub corrupt_blob: bool,
    /// Full blob bodies: send about half of the advertised `Content-Length`,
    /// then reset the connection.
    pub drop_connection_mid_blob: bool,
    /// Full blob bodies: send about half, then go silent forever (the
    /// connection stays open).
    pub stall_mid_blob: bool,
    /// Accept the connection, read the request, never answer anything
    /// (registry endpoints and token endpoint alike).
    pub never_respond: bool,
    /// Wait this long before answering any registry request.
    pub response_delay: Option<Duration>,
    /// Every `/v2/...` request needs these Basic credentials.
    pub require_basic: Option<(String, String)>,
    /// Every `/v2/...` request needs a bearer token from `/token`.
    pub require_token: Option<TokenAuth>,
    /// Full blob bodies: wait this long before each 64 KiB chunk (a slow
    /// but live upstream).
    pub blob_chunk_delay: Option<Duration>,
    /// Blob GET/HEAD answer `307` to the storage listener (another host).
    pub redirect_blobs: bool,
    /// The storage listener answers every request with a `307` to itself
    /// (an endless redirect chain).
    pub redirect_loop: bool,
    /// `/v2/<name>/referrers/<digest>` answers a plain 404, like a registry
    /// without the referrers API.
    pub no_referrers_api: bool,
    /// `tags/list` without `n` returns at most this many tags plus a `Link`.
    pub tags_page_size: Option<usize>,
    /// `Link` headers carry an absolute URL (`http://127.0.0.1:PORT/v2/...`)
    /// instead of a path.
    pub absolute_links: bool,
    /// Manifest GET/HEAD requests whose reference (tag or digest) ends with
    /// this string answer `500 UNKNOWN` (e.g. `".sig"` to break signature
    /// lookups while images stay reachable).
    pub fail_manifests_ending_with: Option<String>,
    /// A blob GET *without* `Range` is answered `206 Partial Content`
    /// (`Content-Range: bytes 0-<size-1>/<size>`, the whole body, with
    /// `corrupt_blob` applied): a lying upstream.
    pub partial_without_range: bool,
    /// A blob GET with a `Range` is answered with a different range than
    /// asked for: one byte further (or back, at the end of the blob), with
    /// a `Content-Range` and bytes to match.
    pub shifted_ranges: bool,
    /// Ranged blob bodies have one byte flipped (same length, honest
    /// `Content-Range`).
    pub corrupt_ranges: bool,
    /// Manifest GET requests whose reference ends with the string (`""`:
    /// every manifest) are answered at once, with `Content-Length`, but
    /// the body trickles in one byte per interval: a live upstream that
    /// never goes silent long enough for an idle read timeout.
    pub trickle_manifests: Option<(String, Duration)>,
    /// Every whole-body response to a request of one of these kinds (a
    /// tag list, a token, an error) trickles in one byte per interval.
    pub trickle_responses: Option<(Vec<Kind>, Duration)>,
}

// ---------------------------------------------------------------------------
// Request log
// ---------------------------------------------------------------------------

/// What kind of endpoint a request addressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `/v2/`
    Base,
    Manifest,
    Blob,
    TagsList,
    Referrers,
    /// `/token`
    Token,
    /// A request to the storage listener (redirect target).
    Storage,
    Other,
}

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub kind: Kind,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Repository name parsed from the path (registry endpoints only).
    pub repo: Option<String>,
    /// Received by the storage listener (the other host) rather than the
    /// registry's own.
    pub on_storage: bool,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a (possibly repeated) header.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Decoded query parameters (repeated keys kept).
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query.as_deref().unwrap_or("").as_bytes())
            .into_owned()
            .collect()
    }

    pub fn query_param(&self, key: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// `/path?query`
    pub fn target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }
}

// ---------------------------------------------------------------------------
// Content
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct StoredManifest {
    media_type: String,
    bytes: Bytes,
}

#[derive(Default)]
struct Store {
    /// (repo, tag or digest) → manifest
    manifests: HashMap<(String, String), StoredManifest>,
    /// (repo, digest) → bytes
    blobs: HashMap<(String, String), Bytes>,
    /// repo → tags
    tags: BTreeMap<String, BTreeSet<String>>,
    /// (repo, subject digest) → referrers index bytes
    referrers: HashMap<(String, String), Bytes>,
}

struct IssuedToken {
    scopes: Vec<String>,
    issued: Instant,
    lifetime: Duration,
}

struct Shared {
    addr: SocketAddr,
    storage_url: String,
    config: Mutex<FakeConfig>,
    store: Mutex<Store>,
    log: Mutex<Vec<RecordedRequest>>,
    tokens: Mutex<HashMap<String, IssuedToken>>,
    expired_token_uses: AtomicU64,
    token_seq: AtomicU64,
    /// Connections open now (registry and storage listeners).
    open_connections: AtomicU64,
    /// The most connections that were open at once.
    peak_connections: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking handler must not wedge every later assertion.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A simple image stored in the fake: config blob, one layer, a manifest.
#[derive(Clone, Debug)]
pub struct FakeImage {
    pub repo: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layer: Vec<u8>,
    pub layer_digest: String,
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Deterministic pseudo-random bytes (xorshift), for blob content.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// An OCI image manifest referencing `config` and `layers` (digest, size).
pub fn image_manifest(config: (&str, usize), layers: &[(&str, usize)]) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|(d, s)| serde_json::json!({"mediaType": OCI_LAYER, "digest": d, "size": s}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.0, "size": config.1},
        "layers": layers,
    }))
    .expect("serialize manifest")
}

// ---------------------------------------------------------------------------
// The fake
// ---------------------------------------------------------------------------

/// A running fake registry. See the module docs.
pub struct Fake {
    shared: Arc<Shared>,
    storage_addr: SocketAddr,
    rt: Option<tokio::runtime::Runtime>,
}

impl Fake {
    /// Starts a well-behaved anonymous fake.
    pub fn start() -> Fake {
        Fake::with_config(FakeConfig::default())
    }

    pub fn with_config(config: FakeConfig) -> Fake {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fake-registry")
            .enable_all()
            .build()
            .expect("build fake registry runtime");

        let main = StdListener::bind("127.0.0.1:0").expect("bind fake registry");
        // Blob storage must be a *different host* from the registry, so that
        // "don't forward Authorization across hosts" is unambiguous even for a
        // proxy that compares host names only. All of 127/8 is loopback on
        // Linux; fall back to `localhost` naming if 127.0.0.2 is unusable.
        let (storage, storage_host) = match StdListener::bind("127.0.0.2:0") {
            Ok(l) => (l, "127.0.0.2".to_string()),
            Err(_) => (
                StdListener::bind("127.0.0.1:0").expect("bind fake storage"),
                "localhost".to_string(),
            ),
        };
        let addr = main.local_addr().expect("local_addr");
        let storage_addr = storage.local_addr().expect("local_addr");
        main.set_nonblocking(true).expect("nonblocking");
        storage.set_nonblocking(true).expect("nonblocking");

        let shared = Arc::new(Shared {
            addr,
            storage_url: format!("http://{storage_host}:{}", storage_addr.port()),
            config: Mutex::new(config),
            store: Mutex::new(Store::default()),
            log: Mutex::new(Vec::new()),
            tokens: Mutex::new(HashMap::new()),
            expired_token_uses: AtomicU64::new(0),
            token_seq: AtomicU64::new(0),
            open_connections: AtomicU64::new(0),
            peak_connections: AtomicU64::new(0),
        });

        {
            let _guard = rt.enter();
            let main = tokio::net::TcpListener::from_std(main).expect("tokio listener");
            let storage = tokio::net::TcpListener::from_std(storage).expect("tokio listener");
            rt.spawn(accept_loop(main, shared.clone(), false));
            rt.spawn(accept_loop(storage, shared.clone(), true));
        }

        Fake {
            shared,
            storage_addr,
            rt: Some(rt),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        self.shared.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// Base URL of the storage listener that blob redirects point at.
    pub fn storage_url(&self) -> String {
        self.shared.storage_url.clone()
    }

    pub fn storage_addr(&self) -> SocketAddr {
        self.storage_addr
    }

    /// Changes fault switches while running.
    pub fn set(&self, f: impl FnOnce(&mut FakeConfig)) {
        f(&mut lock(&self.shared.config));
    }

    // ----- content -------------------------------------------------------

    /// Stores a blob in `repo`; returns its digest.
    pub fn put_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        lock(&self.shared.store).blobs.insert(
            (repo.to_string(), digest.clone()),
            Bytes::copy_from_slice(bytes),
        );
        digest
    }

    /// Stores a manifest under its digest and, if given, a tag; returns the
    /// digest.
    pub fn put_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let digest = sha256_digest(bytes);
        let m = StoredManifest {
            media_type: media_type.to_string(),
            bytes: Bytes::copy_from_slice(bytes),
        };
        let mut store = lock(&self.shared.store);
        store
            .manifests
            .insert((repo.to_string(), digest.clone()), m.clone());
        if let Some(tag) = tag {
            store
                .manifests
                .insert((repo.to_string(), tag.to_string()), m);
            store
                .tags
                .entry(repo.to_string())
                .or_default()
                .insert(tag.to_string());
        }
        digest
    }

    /// Adds tags to the tag list of `repo` without manifests behind them.
    pub fn put_tags(&self, repo: &str, tags: &[&str]) {
        let mut store = lock(&self.shared.store);
        let set = store.tags.entry(repo.to_string()).or_default();
        for t in tags {
            set.insert(t.to_string());
        }
    }

    /// Sets what the referrers API answers for `subject` in `repo`.
    pub fn put_referrers(&self, repo: &str, subject: &str, index: &[u8]) {
        lock(&self.shared.store).referrers.insert(
            (repo.to_string(), subject.to_string()),
            Bytes::copy_from_slice(index),
        );
    }

    /// Stores a small image (config, one layer of `layer_len` pseudo-random
    /// bytes, an OCI manifest) in `repo` under `tag`.
    pub fn put_image(
        &self,
        repo: &str,
        tag: Option<&str>,
        seed: u64,
        layer_len: usize,
    ) -> FakeImage {
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"seed":{seed}}}"#
        )
        .into_bytes();
        let layer = pseudo_random(seed, layer_len);
        let config_digest = self.put_blob(repo, &config);
        let layer_digest = self.put_blob(repo, &layer);
        let manifest = image_manifest(
            (&config_digest, config.len()),
            &[(&layer_digest, layer.len())],
        );
        let manifest_digest = self.put_manifest(repo, tag, OCI_MANIFEST, &manifest);
        FakeImage {
            repo: repo.to_string(),
            manifest,
            manifest_digest,
            config,
            config_digest,
            layer,
            layer_digest,
        }
    }

    // ----- observations --------------------------------------------------

    /// Every request received so far (registry and storage listener).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.log).clone()
    }

    /// Requests received after the first `since` ones.
    pub fn requests_since(&self, since: usize) -> Vec<RecordedRequest> {
        lock(&self.shared.log).iter().skip(since).cloned().collect()
    }

    /// Total number of requests received (use as a mark for
    /// [`Fake::requests_since`]).
    pub fn request_count(&self) -> usize {
        lock(&self.shared.log).len()
    }

    pub fn count(&self, kind: Kind) -> usize {
        lock(&self.shared.log)
            .iter()
            .filter(|r| r.kind == kind)
            .count()
    }

    /// Requests whose path is exactly `path`.
    pub fn hits(&self, path: &str) -> usize {
        lock(&self.shared.log)
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// Number of requests to the token endpoint.
    pub fn token_hits(&self) -> usize {
        self.count(Kind::Token)
    }

    pub fn token_requests(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.kind == Kind::Token)
            .collect()
    }

    /// Requests the storage listener (redirect target) received.
    pub fn storage_requests(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.kind == Kind::Storage)
            .collect()
    }

    /// Registry requests that presented a bearer token the fake had issued
    /// but which had already expired.
    pub fn expired_token_uses(&self) -> u64 {
        self.shared.expired_token_uses.load(Ordering::SeqCst)
    }

    /// Connections to the fake (registry and storage) open now.
    pub fn open_connections(&self) -> u64 {
        self.shared.open_connections.load(Ordering::SeqCst)
    }

    /// The most connections that were open at once so far.
    pub fn peak_connections(&self) -> u64 {
        self.shared.peak_connections.load(Ordering::SeqCst)
    }

    /// Every token the fake has issued.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.shared.tokens).keys().cloned().collect()
    }

    // ----- proxy configuration -------------------------------------------

    /// A proxy config with this fake as the only, default upstream.
    pub fn proxy_config(&self) -> String {
        proxy_yaml(
            &[Upstream::new(&self.host(), &self.url()).with_default()],
            None,
        )
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------------------
// Proxy config YAML helpers
// ---------------------------------------------------------------------------

/// One `upstreams:` entry.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub registry: String,
    pub url: String,
    pub prefix: Option<String>,
    pub default: bool,
    pub auth: Option<(String, String)>,
    /// `auth.tokenRealms` (with `auth`).
    pub token_realms: Vec<String>,
}

impl Upstream {
    pub fn new(registry: &str, url: &str) -> Upstream {
        Upstream {
            registry: registry.to_string(),
            url: url.to_string(),
            prefix: None,
            default: false,
            auth: None,
            token_realms: Vec::new(),
        }
    }

    /// Lists a token endpoint on another host that may get the credentials.
    pub fn token_realm(mut self, realm: &str) -> Upstream {
        self.token_realms.push(realm.to_string());
        self
    }

    pub fn with_default(mut self) -> Upstream {
        self.default = true;
        self
    }

    pub fn prefix(mut self, prefix: &str) -> Upstream {
        self.prefix = Some(prefix.to_string());
        self
    }

    pub fn auth(mut self, username: &str, password_file: &Path) -> Upstream {
        self.auth = Some((username.to_string(), password_file.display().to_string()));
        self
    }
}

/// Builds a proxy config (`listen: {listen}` left for `Proxy::start`).
/// `timeouts` is `(connect, read)`, e.g. `("2s", "3s")`.
pub fn proxy_yaml(upstreams: &[Upstream], timeouts: Option<(&str, &str)>) -> String {
    let mut y = String::from("listen: {listen}\nupstreams:\n");
    for u in upstreams {
        y.push_str(&format!(
            "  - registry: {}\n    url: {}\n",
            u.registry, u.url
        ));
        if let Some(p) = &u.prefix {
            y.push_str(&format!("    prefix: {p}\n"));
        }
        if u.default {
            y.push_str("    default: true\n");
        }
        if let Some((user, file)) = &u.auth {
            let realms = if u.token_realms.is_empty() {
                String::new()
            } else {
                format!(
                    ", tokenRealms: {}",
                    serde_json::to_string(&u.token_realms).expect("json list")
                )
            };
            y.push_str(&format!(
                "    auth: {{username: {}, passwordFile: {}{realms}}}\n",
                serde_json::to_string(user).expect("json string"),
                serde_json::to_string(file).expect("json string"),
            ));
        }
    }
    if let Some((connect, read)) = timeouts {
        y.push_str(&format!("timeouts: {{connect: {connect}, read: {read}}}\n"));
    }
    y
}

// ---------------------------------------------------------------------------
// A raw exchange, for checks the line-level client cannot make
// ---------------------------------------------------------------------------

/// Sends `request` verbatim on a fresh connection and returns every byte the
/// server sends until it closes the connection (or `timeout` passes), plus
/// whether the read ended by timeout.
pub fn raw_exchange(addr: SocketAddr, request: &str, timeout: Duration) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(timeout)).expect("set_read_timeout");
    s.write_all(request.as_bytes()).expect("write request");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, false),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return (out, true)
            }
            Err(_) => return (out, false),
        }
    }
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>, storage: bool) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let open = shared.open_connections.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak_connections.fetch_max(open, Ordering::SeqCst);
        tokio::spawn(async move {
            let counted = shared.clone();
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req, storage).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            counted.open_connections.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Response body: whole bytes, or a channel fed by a task (for streaming,
/// aborting and stalling).
pub enum FakeBody {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

impl Body for FakeBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            FakeBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            FakeBody::Channel(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, FakeBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            FakeBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            FakeBody::Full(None) => SizeHint::with_exact(0),
            FakeBody::Channel(_) => SizeHint::default(),
        }
    }
}

type Resp = Response<FakeBody>;

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let body: Bytes = body.into();
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(FakeBody::Full(Some(body)))
        .expect("response")
}

fn oci_error(status: StatusCode, code: &str, message: &str) -> Resp {
    let body = serde_json::json!({"errors":[{"code":code,"message":message,"detail":null}]});
    full(status, "application/json", body.to_string())
}

fn empty(status: StatusCode) -> http::response::Builder {
    Response::builder().status(status)
}

/// Parsed registry path.
enum Route {
    Base,
    Manifest(String, String),
    Blob(String, String),
    TagsList(String),
    Referrers(String, String),
    Token,
    Other,
}

fn route(path: &str) -> Route {
    if path == "/v2/" || path == "/v2" {
        return Route::Base;
    }
    if path == "/token" {
        return Route::Token;
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Route::Other;
    };
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Route::TagsList(name.to_string());
    }
    let Some((head, last)) = rest.rsplit_once('/') else {
        return Route::Other;
    };
    if let Some(name) = head.strip_suffix("/manifests") {
        Route::Manifest(name.to_string(), last.to_string())
    } else if let Some(name) = head.strip_suffix("/blobs") {
        Route::Blob(name.to_string(), last.to_string())
    } else if let Some(name) = head.strip_suffix("/referrers") {
        Route::Referrers(name.to_string(), last.to_string())
    } else {
        Route::Other
    }
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>, storage: bool) -> Resp {
    let trickle = lock(&shared.config).trickle_responses.clone();
    let kind = if storage {
        Kind::Storage
    } else {
        match route(req.uri().path()) {
            Route::Base => Kind::Base,
            Route::Manifest(..) => Kind::Manifest,
            Route::Blob(..) => Kind::Blob,
            Route::TagsList(_) => Kind::TagsList,
            Route::Referrers(..) => Kind::Referrers,
            Route::Token => Kind::Token,
            Route::Other => Kind::Other,
        }
    };
    let response = respond(shared, req, storage).await;
    match trickle {
        Some((kinds, every)) if kinds.contains(&kind) => trickled(response, every),
        _ => response,
    }
}

/// `response` with its whole body sent one byte per `every` (a body that
/// is already streamed is left alone).
fn trickled(response: Resp, every: Duration) -> Resp {
    let (parts, body) = response.into_parts();
    let FakeBody::Full(Some(bytes)) = body else {
        return Response::from_parts(parts, body);
    };
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        for i in 0..bytes.len() {
            tokio::time::sleep(every).await;
            if tx.send(Ok(bytes.slice(i..i + 1))).await.is_err() {
                return;
            }
        }
    });
    Response::from_parts(parts, FakeBody::Channel(rx))
}

async fn respond(shared: Arc<Shared>, req: Request<Incoming>, storage: bool) -> Resp {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let method = req.method().clone();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let storage_token = storage && path == "/token" && {
        let cfg = lock(&shared.config);
        cfg.require_token.as_ref().is_some_and(|t| t.foreign_realm)
    };
    let r = if storage_token {
        Route::Token
    } else if storage {
        Route::Other
    } else {
        route(&path)
    };
    let (kind, repo) = match &r {
        _ if storage && !storage_token => (Kind::Storage, None),
        Route::Base => (Kind::Base, None),
        Route::Manifest(n, _) => (Kind::Manifest, Some(n.clone())),
        Route::Blob(n, _) => (Kind::Blob, Some(n.clone())),
        Route::TagsList(n) => (Kind::TagsList, Some(n.clone())),
        Route::Referrers(n, _) => (Kind::Referrers, Some(n.clone())),
        Route::Token => (Kind::Token, None),
        Route::Other => (Kind::Other, None),
    };
    lock(&shared.log).push(RecordedRequest {
        kind,
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        headers,
        repo: repo.clone(),
        on_storage: storage,
    });

    let cfg = lock(&shared.config).clone();
    if cfg.never_respond {
        std::future::pending::<()>().await;
    }
    if let Some(d) = cfg.response_delay {
        if kind != Kind::Token {
            tokio::time::sleep(d).await;
        }
    }

    if storage && !storage_token {
        return serve_storage(&shared, &cfg, &method, &path, req.headers());
    }
    if let Route::Token = r {
        return serve_token(&shared, &cfg, query.as_deref(), req.headers());
    }
    if let Route::Other = r {
        return full(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "404 page not found\n",
        );
    }
    if let Some(denied) = check_auth(&shared, &cfg, repo.as_deref(), req.headers()) {
        return denied;
    }
    let head = method == Method::HEAD;
    if method != Method::GET && !head {
        return oci_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "the fake registry is read-only",
        );
    }
    if let (Route::Manifest(_, reference), Some(suffix)) = (&r, &cfg.fail_manifests_ending_with) {
        if reference.ends_with(suffix.as_str()) {
            return oci_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "fake: injected manifest failure",
            );
        }
    }
    match r {
        Route::Base => {
            let mut resp = full(StatusCode::OK, "application/json", "{}");
            resp.headers_mut().insert(
                "docker-distribution-api-version",
                http::HeaderValue::from_static("registry/2.0"),
            );
            resp
        }
        Route::Manifest(name, reference) => {
            serve_manifest(&shared, &cfg, &name, &reference, head, req.headers())
        }
        Route::Blob(name, digest) => {
            if cfg.redirect_blobs {
                let loc = format!(
                    "{}/storage/{}/{}?sig=fake",
                    shared.storage_url, name, digest
                );
                return empty(StatusCode::TEMPORARY_REDIRECT)
                    .header("location", loc)
                    .header("content-length", 0)
                    .body(FakeBody::Full(None))
                    .expect("response");
            }
            serve_blob(&shared, &cfg, &name, &digest, head, req.headers())
        }
        Route::TagsList(name) => serve_tags(&shared, &cfg, &name, query.as_deref()),
        Route::Referrers(name, digest) => serve_referrers(&shared, &cfg, &name, &digest),
        Route::Token | Route::Other => unreachable!("handled above"),
    }
}

fn challenge(shared: &Shared, t: &TokenAuth, repo: Option<&str>, error: Option<&str>) -> String {
    let realm = if t.foreign_realm {
        format!("{}/token", shared.storage_url)
    } else {
        format!("http://{}/token", shared.addr)
    };
    let scope = repo.map(|r| format!("repository:{r}:pull"));
    if t.quirky_challenge {
        let mut c = format!("Bearer service=\"{}\"", t.service);
        if let Some(s) = &scope {
            c.push_str(&format!(", scope=\"{s}\""));
        }
        c.push_str(&format!(",   realm=\"{realm}\""));
        c.push_str(&format!(
            ", error=\"{}\"",
            error.unwrap_or("insufficient_scope")
        ));
        c
    } else {
        let mut c = format!("Bearer realm=\"{realm}\",service=\"{}\"", t.service);
        if let Some(s) = &scope {
            c.push_str(&format!(",scope=\"{s}\""));
        }
        if let Some(e) = error {
            c.push_str(&format!(",error=\"{e}\""));
        }
        c
    }
}

fn basic_ok(headers: &HeaderMap, user: &str, pass: &str) -> bool {
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    );
    header_str(headers, "authorization") == Some(want.as_str())
}

/// `None` when the request is authorised, else the 401 to send.
fn check_auth(
    shared: &Shared,
    cfg: &FakeConfig,
    repo: Option<&str>,
    headers: &HeaderMap,
) -> Option<Resp> {
    if let Some((user, pass)) = &cfg.require_basic {
        if !basic_ok(headers, user, pass) {
            let mut r = oci_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "authentication required",
            );
            r.headers_mut().insert(
                "www-authenticate",
                http::HeaderValue::from_static("Basic realm=\"fake-registry\""),
            );
            return Some(r);
        }
    }
    if let Some(t) = &cfg.require_token {
        let presented =
            header_str(headers, "authorization").and_then(|v| v.strip_prefix("Bearer "));
        let mut error = None;
        if let Some(tok) = presented {
            let tokens = lock(&shared.tokens);
            match tokens.get(tok) {
                Some(issued) if issued.issued.elapsed() >= issued.lifetime => {
                    shared.expired_token_uses.fetch_add(1, Ordering::SeqCst);
                    error = Some("invalid_token");
                }
                Some(issued) => {
                    let allowed = match repo {
                        None => true,
                        Some(repo) => issued.scopes.iter().any(|s| scope_allows_pull(s, repo)),
                    };
                    if allowed {
                        return None;
                    }
                    error = Some("insufficient_scope");
                }
                None => error = Some("invalid_token"),
            }
        }
        let mut r = oci_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "authentication required",
        );
        r.headers_mut().insert(
            "www-authenticate",
            http::HeaderValue::from_str(&challenge(shared, t, repo, error)).expect("header"),
        );
        return Some(r);
    }
    None
}

/// `repository:<repo>:pull[,push]` grants pull on `repo`.
fn scope_allows_pull(scope: &str, repo: &str) -> bool {
    let Some(rest) = scope.strip_prefix("repository:") else {
        return false;
    };
    let Some((name, actions)) = rest.rsplit_once(':') else {
        return false;
    };
    name == repo && actions.split(',').any(|a| a == "pull" || a == "*")
}

fn serve_token(
    shared: &Shared,
    cfg: &FakeConfig,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Resp {
    let Some(t) = &cfg.require_token else {
        return oci_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no token endpoint");
    };
    if let Some((user, pass)) = &t.basic {
        if !basic_ok(headers, user, pass) {
            let mut r = oci_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "bad token credentials",
            );
            r.headers_mut().insert(
                "www-authenticate",
                http::HeaderValue::from_static("Basic realm=\"fake-token\""),
            );
            return r;
        }
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let service = pairs
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.as_str());
    if service != Some(t.service.as_str()) {
        return oci_error(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            "wrong or missing service",
        );
    }
    let scopes: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .collect();
    let seq = shared.token_seq.fetch_add(1, Ordering::SeqCst);
    let nonce = Sha256::digest(format!("{seq}-{:?}-{}", Instant::now(), shared.addr));
    let token = format!("faketok{}x{}", seq, &hex::encode(nonce)[..40]);
    lock(&shared.tokens).insert(
        token.clone(),
        IssuedToken {
            scopes,
            issued: Instant::now(),
            lifetime: Duration::from_secs(t.expires_in.unwrap_or(60)),
        },
    );
    let mut body = serde_json::Map::new();
    if t.access_token_only {
        body.insert("access_token".into(), token.into());
    } else {
        body.insert("token".into(), token.clone().into());
        body.insert("access_token".into(), token.into());
    }
    if let Some(e) = t.expires_in {
        body.insert("expires_in".into(), e.into());
    }
    body.insert("issued_at".into(), "2025-01-01T00:00:00Z".into());
    full(
        StatusCode::OK,
        "application/json",
        serde_json::Value::Object(body).to_string(),
    )
}

fn serve_manifest(
    shared: &Shared,
    cfg: &FakeConfig,
    name: &str,
    reference: &str,
    head: bool,
    headers: &HeaderMap,
) -> Resp {
    let found = lock(&shared.store)
        .manifests
        .get(&(name.to_string(), reference.to_string()))
        .cloned();
    let Some(m) = found else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "manifest unknown",
        );
    };
    if cfg.strict_accept {
        let accepted = headers
            .get_all("accept")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| {
                let t = t.split(';').next().unwrap_or("").trim();
                t == m.media_type || t == "*/*"
            });
        if !accepted {
            return oci_error(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                "manifest unknown (media type not accepted)",
            );
        }
    }
    let by_digest = reference.contains(':');
    let claimed = if by_digest {
        reference.to_string()
    } else {
        sha256_digest(&m.bytes)
    };
    let bytes = if by_digest && cfg.wrong_manifest_digest {
        let mut b = m.bytes.to_vec();
        b.extend_from_slice(b"\n\n");
        Bytes::from(b)
    } else {
        m.bytes.clone()
    };
    let builder = empty(StatusCode::OK)
        .header("content-type", &m.media_type)
        .header("docker-content-digest", &claimed)
        .header("etag", format!("\"{claimed}\""))
        .header("docker-distribution-api-version", "registry/2.0");
    if head {
        return builder
            .header("content-length", bytes.len())
            .body(FakeBody::Full(None))
            .expect("response");
    }
    if let Some((suffix, every)) = &cfg.trickle_manifests {
        if reference.ends_with(suffix.as_str()) {
            let every = *every;
            let len = bytes.len();
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                for i in 0..bytes.len() {
                    tokio::time::sleep(every).await;
                    if tx.send(Ok(bytes.slice(i..i + 1))).await.is_err() {
                        return;
                    }
                }
            });
            return builder
                .header("content-length", len)
                .body(FakeBody::Channel(rx))
                .expect("response");
        }
    }
    if cfg.chunked_manifests {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for chunk in bytes.chunks(BLOB_CHUNK.max(bytes.len() / 2 + 1)) {
                if tx.send(Ok(Bytes::copy_from_slice(chunk))).await.is_err() {
                    return;
                }
            }
        });
        return builder.body(FakeBody::Channel(rx)).expect("response");
    }
    builder
        .header("content-length", bytes.len())
        .body(FakeBody::Full(Some(bytes)))
        .expect("response")
}

/// Result of parsing a `Range` header against a representation of `size`.
enum RangeSpec {
    /// No usable range: serve the whole thing (absent, or multi-range).
    Whole,
    /// Inclusive byte range.
    Single(u64, u64),
    /// Syntactically invalid (Go: "invalid range").
    Invalid,
    /// Valid but nothing overlaps the representation.
    NoOverlap,
}

/// Single-range subset of Go's `net/http` `parseRange`.
fn parse_range(h: Option<&str>, size: u64) -> RangeSpec {
    let Some(h) = h else {
        return RangeSpec::Whole;
    };
    let Some(spec) = h.strip_prefix("bytes=") else {
        return RangeSpec::Invalid;
    };
    if spec.contains(',') {
        return RangeSpec::Whole;
    }
    let spec = spec.trim();
    let Some((start, end)) = spec.split_once('-') else {
        return RangeSpec::Invalid;
    };
    let (start, end) = (start.trim(), end.trim());
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    if start.is_empty() {
        let Some(n) = num(end) else {
            return RangeSpec::Invalid;
        };
        if n == 0 || size == 0 {
            return RangeSpec::NoOverlap;
        }
        let n = n.min(size);
        return RangeSpec::Single(size - n, size - 1);
    }
    let Some(s) = num(start) else {
        return RangeSpec::Invalid;
    };
    if end.is_empty() {
        if s >= size {
            return RangeSpec::NoOverlap;
        }
        return RangeSpec::Single(s, size - 1);
    }
    let Some(e) = num(end) else {
        return RangeSpec::Invalid;
    };
    if s > e {
        return RangeSpec::Invalid;
    }
    if s >= size {
        return RangeSpec::NoOverlap;
    }
    RangeSpec::Single(s, e.min(size - 1))
}

fn serve_storage(
    shared: &Shared,
    cfg: &FakeConfig,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Resp {
    // /storage/<repo...>/<digest>
    let Some(rest) = path.strip_prefix("/storage/") else {
        return full(StatusCode::NOT_FOUND, "text/plain", "no such object\n");
    };
    let Some((repo, digest)) = rest.rsplit_once('/') else {
        return full(StatusCode::NOT_FOUND, "text/plain", "no such object\n");
    };
    if method != Method::GET && method != Method::HEAD {
        return full(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "read-only\n");
    }
    if cfg.redirect_loop {
        return empty(StatusCode::TEMPORARY_REDIRECT)
            .header(
                "location",
                format!("{}{path}?sig=again", shared.storage_url),
            )
            .header("content-length", 0)
            .body(FakeBody::Full(None))
            .expect("response");
    }
    serve_blob(shared, cfg, repo, digest, method == Method::HEAD, headers)
}

fn serve_blob(
    shared: &Shared,
    cfg: &FakeConfig,
    name: &str,
    digest: &str,
    head: bool,
    headers: &HeaderMap,
) -> Resp {
    let found = lock(&shared.store)
        .blobs
        .get(&(name.to_string(), digest.to_string()))
        .cloned();
    let Some(blob) = found else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            "blob unknown to registry",
        );
    };
    let size = blob.len() as u64;
    let base = || {
        empty(StatusCode::OK)
            .header("docker-content-digest", digest)
            .header("accept-ranges", "bytes")
            .header("etag", format!("\"{digest}\""))
            .header("cache-control", "max-age=31536000")
    };
    if head {
        return base()
            .header("content-type", "application/octet-stream")
            .header("content-length", size)
            .body(FakeBody::Full(None))
            .expect("response");
    }
    match parse_range(header_str(headers, "range"), size) {
        RangeSpec::Invalid => {
            return full(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "text/plain; charset=utf-8",
                "invalid range\n",
            )
        }
        RangeSpec::NoOverlap => {
            let mut r = full(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "text/plain; charset=utf-8",
                "invalid range: failed to overlap\n",
            );
            r.headers_mut().insert(
                "content-range",
                http::HeaderValue::from_str(&format!("bytes */{size}")).expect("header"),
            );
            return r;
        }
        RangeSpec::Single(s, e) => {
            let (s, e) = if !cfg.shifted_ranges {
                (s, e)
            } else if e + 1 < size {
                (s + 1, e + 1)
            } else {
                (s.saturating_sub(1), e.saturating_sub(1))
            };
            let mut part = blob.slice(s as usize..=e as usize);
            if cfg.corrupt_ranges {
                let mut b = part.to_vec();
                let mid = b.len() / 2;
                b[mid] ^= 0xff;
                part = Bytes::from(b);
            }
            return base()
                .status(StatusCode::PARTIAL_CONTENT)
                .header("content-type", "application/octet-stream")
                .header("content-range", format!("bytes {s}-{e}/{size}"))
                .header("content-length", part.len())
                .body(FakeBody::Full(Some(part)))
                .expect("response");
        }
        RangeSpec::Whole => {}
    }

    let body = if cfg.corrupt_blob {
        let mut b = blob.to_vec();
        let mid = b.len() / 2;
        b[mid] ^= 0xff;
        Bytes::from(b)
    } else {
        blob
    };
    if cfg.partial_without_range {
        return base()
            .status(StatusCode::PARTIAL_CONTENT)
            .header("content-type", "application/octet-stream")
            .header(
                "content-range",
                format!("bytes 0-{}/{size}", size.saturating_sub(1)),
            )
            .header("content-length", size)
            .body(FakeBody::Full(Some(body)))
            .expect("response");
    }
    let half = body.len() / 2;
    let chunk_delay = cfg.blob_chunk_delay;
    let drop_mid = cfg.drop_connection_mid_blob;
    let stall_mid = cfg.stall_mid_blob;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut sent = 0usize;
        for chunk in body.chunks(BLOB_CHUNK) {
            if let Some(d) = chunk_delay {
                tokio::time::sleep(d).await;
            }
            if (drop_mid || stall_mid) && sent + chunk.len() > half {
                let first = half - sent;
                if first > 0 {
                    let _ = tx.send(Ok(Bytes::copy_from_slice(&chunk[..first]))).await;
                }
                if drop_mid {
                    let _ = tx
                        .send(Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "fake: dropping connection mid-blob",
                        )))
                        .await;
                } else {
                    // Keep the sender alive so the body neither ends nor errors.
                    std::future::pending::<()>().await;
                }
                return;
            }
            if tx.send(Ok(Bytes::copy_from_slice(chunk))).await.is_err() {
                return;
            }
            sent += chunk.len();
        }
    });
    base()
        .header("content-type", "application/octet-stream")
        .header("content-length", size)
        .body(FakeBody::Channel(rx))
        .expect("response")
}

fn serve_tags(shared: &Shared, cfg: &FakeConfig, name: &str, query: Option<&str>) -> Resp {
    let tags: Option<Vec<String>> = lock(&shared.store)
        .tags
        .get(name)
        .map(|s| s.iter().cloned().collect());
    let Some(tags) = tags else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "repository name not known to registry",
        );
    };
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| pairs.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
    let n: Option<usize> = match get("n") {
        Some(v) => match v.parse() {
            Ok(n) => Some(n),
            Err(_) => {
                return oci_error(
                    StatusCode::BAD_REQUEST,
                    "PAGINATION_NUMBER_INVALID",
                    "invalid number of results requested",
                )
            }
        },
        None => None,
    };
    let last = get("last");
    let after: Vec<String> = tags
        .into_iter()
        .filter(|t| last.as_ref().is_none_or(|l| t > l))
        .collect();
    let limit = n.or(cfg.tags_page_size).unwrap_or(usize::MAX);
    let page: Vec<String> = after.iter().take(limit).cloned().collect();
    let body = serde_json::json!({"name": name, "tags": page}).to_string();
    let mut resp = full(StatusCode::OK, "application/json", body);
    if limit > 0 && after.len() > page.len() {
        let last_tag = page.last().cloned().unwrap_or_default();
        let target = format!(
            "/v2/{name}/tags/list?last={}&n={limit}",
            form_urlencoded::byte_serialize(last_tag.as_bytes()).collect::<String>()
        );
        let target = if cfg.absolute_links {
            format!("http://{}{target}", shared.addr)
        } else {
            target
        };
        resp.headers_mut().insert(
            "link",
            http::HeaderValue::from_str(&format!("<{target}>; rel=\"next\"")).expect("header"),
        );
    }
    resp
}

fn serve_referrers(shared: &Shared, cfg: &FakeConfig, name: &str, digest: &str) -> Resp {
    if cfg.no_referrers_api {
        return full(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "404 page not found\n",
        );
    }
    let stored = lock(&shared.store)
        .referrers
        .get(&(name.to_string(), digest.to_string()))
        .cloned();
    let body = stored.unwrap_or_else(|| Bytes::from_static(OCI_EMPTY_INDEX.as_bytes()));
    full(StatusCode::OK, OCI_INDEX, body)
}

// ---------------------------------------------------------------------------
// Assertions shared by the fault, bad-input and auth tests
// ---------------------------------------------------------------------------

/// The `(code, message)` pairs of an OCI error envelope
/// `{"errors":[{"code","message","detail"}]}`, or a description of why
/// `body` is not one. Every entry must have a string `code`, a string
/// `message` and a `detail` key (any JSON, `null` included).
pub fn oci_errors(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        )
    })?;
    let errors = v
        .get("errors")
        .and_then(|e| e.as_array())
        .ok_or_else(|| format!("no \"errors\" array in {v}"))?;
    if errors.is_empty() {
        return Err(format!("empty \"errors\" array in {v}"));
    }
    errors
        .iter()
        .map(|e| {
            let code = e.get("code").and_then(|c| c.as_str());
            let message = e.get("message").and_then(|c| c.as_str());
            match (code, message, e.get("detail")) {
                (Some(c), Some(m), Some(_)) if !c.is_empty() => Ok((c.to_string(), m.to_string())),
                _ => Err(format!("error entry lacks code/message/detail: {e}")),
            }
        })
        .collect()
}

/// Asserts `r` is `status` with an OCI error envelope whose first code is
/// `code` (any code when `None`). `what` names the case in the panic.
pub fn assert_oci_error(r: &super::http::Response, status: u16, code: Option<&str>, what: &str) {
    assert_eq!(
        r.status,
        status,
        "{what}: expected HTTP {status}, got {} with body {:?}",
        r.status,
        r.text()
    );
    let errors = oci_errors(&r.body).unwrap_or_else(|e| panic!("{what}: {e}"));
    if let Some(code) = code {
        assert_eq!(
            errors[0].0, code,
            "{what}: expected OCI code {code}, got {errors:?}"
        );
    }
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("application/json"),
        "{what}: error Content-Type should be application/json, got {ct:?}"
    );
}

/// A string unlikely to appear anywhere by chance (for secrets).
pub fn unique_secret(label: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seed = format!(
        "{label}-{}-{}-{:?}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst),
        std::time::SystemTime::now()
    );
    format!(
        "{label}{}",
        &hex::encode(Sha256::digest(seed.as_bytes()))[..24]
    )
}
