//! An in-process fake upstream registry with fault switches.
//!
//! A real registry (CNCF distribution, see `common/registry.rs`) cannot serve a
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

mod blobs;
mod checks;
mod config;
mod content;
mod log;
mod manifests;
mod response;
mod server;
mod token;
mod yaml;

// Every item tests name as `common::fake::X`; each test binary uses only
// some of them.
#[allow(unused_imports)]
pub use checks::{assert_oci_error, oci_errors, raw_exchange, unique_secret};
#[allow(unused_imports)]
pub use config::{FakeConfig, TokenAuth};
#[allow(unused_imports)]
pub use content::{
    image_manifest, pseudo_random, sha256_digest, FakeImage, OCI_CONFIG, OCI_EMPTY_INDEX,
    OCI_INDEX, OCI_LAYER, OCI_MANIFEST,
};
#[allow(unused_imports)]
pub use log::{Kind, RecordedRequest};
#[allow(unused_imports)]
pub use response::FakeBody;
#[allow(unused_imports)]
pub use yaml::{proxy_yaml, Upstream};

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use content::Store;
use token::IssuedToken;

/// State shared by the [`Fake`] handle and the tasks serving requests.
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
            rt.spawn(server::accept_loop(main, shared.clone(), false));
            rt.spawn(server::accept_loop(storage, shared.clone(), true));
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
