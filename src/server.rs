//! The serving side: accept loop, optional TLS, HTTP/1.1 and HTTP/2 on one
//! port, per-request logging, `/healthz` and `/readyz`, graceful shutdown.
//!
//! [`run`] takes an already-bound listener and a shutdown future, so tests
//! bind `127.0.0.1:0` and drive the real server. What a connection may
//! hold, and for how long (connection caps, handshake and idle deadlines,
//! the progress deadline of response streams), is in [`conn`].
//!
//! May use: `serve`, `admin`, `audit`, `metrics`, `config`, `clientauth`. Must never
//! use: reload, app, cli.

pub mod conn;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::audit::Client;
use crate::clientauth::PeerCertificate;
use crate::config::{Limits, Timeouts, TlsConfig};
use crate::metrics::{Endpoint, Metrics};
use crate::serve::{body_from, App, BoxError, ProxyBody, RequestLog, Routine};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const DOCKER_DISTRIBUTION_API_VERSION: HeaderName =
    HeaderName::from_static("docker-distribution-api-version");

/// HTTP/2 streams per connection.
const MAX_CONCURRENT_STREAMS: u32 = 256;
/// The most an HTTP/1.1 request head (request line and headers) may take,
/// in bytes; a longer one is answered `431` and its connection closed.
/// hyper keeps a request head whole in the connection's read buffer until
/// it ends, and this is that buffer's limit (`max_buf_size`). hyper's
/// default, about 408 KiB, let a head that never ends pin that much (and
/// the allocator up to twice that) per connection until
/// `timeouts.handshake`: 200 such connections from one address held about
/// 100 MiB (`protocol_abuse::http1_unfinished_request_heads_hold_bounded_memory`).
/// Registry clients send heads of a few KiB, a bearer token being the
/// largest part; 64 KiB is many times that, and four times what an HTTP/2
/// request may carry (hyper's 16 KiB `SETTINGS_MAX_HEADER_LIST_SIZE`).
/// hyper also queues at most this much of a response before writing it
/// out, so a response body goes out in writes of one or a few chunks.
const MAX_REQUEST_HEAD: usize = 64 * 1024;
/// HTTP/2 streams a connection may make the proxy reset (protocol errors
/// on the client's streams) before it is closed with `ENHANCE_YOUR_CALM`.
/// h2's default, 1,024, let a "MadeYouReset" client (CVE-2025-8671: a
/// frame that makes the server reset each stream it opens) turn 1,024
/// streams per connection into tasks before the cut: 20-65 MiB over idle
/// in `protocol_abuse`. A stream refused past `MAX_CONCURRENT_STREAMS`
/// counts too: a client that respects the advertised limit, as registry
/// clients do, is never refused, nor reset.
const H2_MAX_LOCAL_RESETS: usize = 64;
/// An HTTP/2 connection pings its client after this long without hearing
/// from it...
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// ...and is closed if the ping is not answered within this: a client
/// that vanished without closing (a dropped NAT entry, a host switched
/// off) holds its streams, and their upstream fetches, no longer than the
/// two together. (A live client that answers pings but sends no request
/// is closed by `timeouts.idle`.)
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Could not set up serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("TLS: {0}")]
    Tls(String),
}

/// Builds the TLS acceptor from the configured PEM files (ALPN h2 and
/// http/1.1). With `client_ca` (`clientAuth.clientCAFile`), a client
/// certificate is asked for and, when one is sent, verified against those
/// CAs during the handshake (a certificate that does not verify fails
/// the handshake); sending none is allowed at the TLS level, and the
/// request is then authenticated (or refused) by its credentials, so that
/// health probes and password clients share the port.
pub fn tls_acceptor(
    config: &TlsConfig,
    client_ca: Option<&Path>,
) -> Result<TlsAcceptor, ServerError> {
    let certs = read_certs(&config.cert)?;
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .map_err(|e| ServerError::Tls(format!("key {}: {e}", config.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|e| {
                    ServerError::Tls(format!("clientAuth.clientCAFile {}: {e}", path.display()))
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| {
                ServerError::Tls(format!("clientAuth.clientCAFile {}: {e}", path.display()))
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    let err = |e: String| ServerError::Tls(format!("certificate {}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificates in file".into()));
    }
    Ok(certs)
}

/// The sockets the proxy serves, bound by the caller (the composition root
/// binds the configured addresses; tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    pub registry: TcpListener,
    pub admin: Option<TcpListener>,
}

/// How the listeners serve: TLS on the registry listener, the admin
/// listener's bearer token, and what bounds connections.
pub struct Settings {
    pub tls: Option<TlsAcceptor>,
    pub admin_token: Option<Arc<crate::admin::AdminToken>>,
    pub connections: Connections,
}

/// Serves `app` on `listeners` until `shutdown` completes, then stops
/// accepting and lets in-flight requests finish for up to
/// `timeouts.shutdown` (mini-redis style: the caller owns the sockets and
/// the shutdown signal, so a test can run the proxy in-process).
pub async fn run(
    listeners: Listeners,
    app: Arc<App>,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let health = listeners.admin.is_none();
    let admin = listeners.admin.map(|listener| {
        tokio::spawn(serve_listener(
            listener,
            Role::Admin {
                token: settings.admin_token,
            },
            Arc::clone(&app),
            None,
            settings.connections,
            stopped(stop_rx.clone()),
        ))
    });
    let registry = serve_listener(
        listeners.registry,
        Role::Registry { health },
        app,
        settings.tls,
        settings.connections,
        stopped(stop_rx),
    );
    tokio::pin!(registry);
    tokio::select! {
        () = &mut registry => {}
        () = shutdown => {
            let _ = stop_tx.send(true);
            registry.await;
        }
    }
    if let Some(admin) = admin {
        let _ = admin.await;
    }
}

/// Serves one connection until it ends, the server stops (then it is
/// closed gracefully), or its watchdog fires ([`conn::Connection::expired`]):
/// no first request within `timeouts.handshake` or an HTTP/1.1 response
/// whose client stopped reading for `timeouts.clientStall` drops it at
/// once; `timeouts.idle` without a request closes it gracefully (an
/// HTTP/2 client gets a `GOAWAY`), and drops it if it is still open, with
/// nothing in flight, a moment later.
///
/// A macro rather than a generic `async fn`: rustc cannot prove such a
/// function's future `Send` for hyper-util's connection type (a
/// higher-ranked `From<Box<dyn Error>>` bound), and the plain and TLS
/// connections are different types.
macro_rules! drive {
    ($connection:expr, $state:expr, $deadlines:expr, $stop:expr, $peer:expr) => {{
        let connection = $connection;
        let state: &conn::Connection = $state;
        let deadlines: conn::Deadlines = $deadlines;
        let mut stop: watch::Receiver<bool> = $stop;
        let peer: SocketAddr = $peer;
        tokio::pin!(connection);
        let mut stopping = false;
        let mut closing = None;
        loop {
            tokio::select! {
                result = connection.as_mut() => break result,
                _ = stop.wait_for(|stop| *stop), if !stopping => {
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
                expiry = state.expired(&deadlines, closing) => match expiry {
                    conn::Expiry::Idle if closing.is_none() => {
                        tracing::debug!(%peer, "idle connection (timeouts.idle); closing");
                        closing = Some(tokio::time::Instant::now());
                        connection.as_mut().graceful_shutdown();
                    }
                    conn::Expiry::Handshake => {
                        tracing::debug!(%peer, "no request within timeouts.handshake; closing");
                        break Ok(());
                    }
                    conn::Expiry::Stall => {
                        tracing::info!(%peer, stall = ?deadlines.stall, "client accepted no bytes of a response for timeouts.clientStall; connection closed");
                        break Ok(());
                    }
                    conn::Expiry::Idle | conn::Expiry::Closed => break Ok(()),
                }
            }
        }
    }};
}

/// What bounds a listener's connections: `timeouts` (`handshake`, `idle`,
/// `clientStall`, and `shutdown` as the grace period) and `limits`
/// (`connections`, `connectionsPerClient`).
#[derive(Debug, Clone, Copy)]
pub struct Connections {
    pub timeouts: Timeouts,
    pub limits: Limits,
}

/// Serves `app` on one listener until `shutdown` completes, then stops
/// accepting and lets in-flight requests finish for up to
/// `timeouts.shutdown`.
async fn serve_listener(
    listener: TcpListener,
    role: Role,
    app: Arc<App>,
    tls: Option<TlsAcceptor>,
    connections: Connections,
    shutdown: impl Future<Output = ()>,
) {
    let Connections { timeouts, limits } = connections;
    let deadlines = conn::Deadlines {
        handshake: timeouts.handshake,
        idle: timeouts.idle,
        stall: timeouts.client_stall(),
    };
    let builder = http_builder(timeouts, deadlines);
    let gate = Gate::new(limits);
    // Each connection holds a receiver: `stop` tells them to finish, and
    // the sender sees when the last one is gone.
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(held) = gate.admit(peer) else {
            continue;
        };
        let accepted = tokio::time::Instant::now();
        let connection = conn::Connection::new();
        let _ = stream.set_nodelay(true);
        let fetches = app.connection_fetches();
        let service = {
            let app = Arc::clone(&app);
            let connection = Arc::clone(&connection);
            let role = role.clone();
            move |certificate: Option<PeerCertificate>| {
                service_fn(move |mut request: Request<Incoming>| {
                    let app = Arc::clone(&app);
                    let role = role.clone();
                    let active = connection.request();
                    request.extensions_mut().insert(fetches.clone());
                    if let Some(certificate) = &certificate {
                        request.extensions_mut().insert(certificate.clone());
                    }
                    async move { Ok::<_, Infallible>(handle(&app, request, peer, role, active).await) }
                })
            }
        };
        let builder = builder.clone();
        let stopping = stopping.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _held = held;
            let progress = Arc::clone(&connection.progress);
            let result = match tls {
                None => {
                    let served = builder
                        .serve_connection(TokioIo::new(stream), service(None))
                        .into_owned();
                    let driven = async { drive!(served, &connection, deadlines, stopping, peer) };
                    conn::with_progress(progress, driven).await
                }
                Some(acceptor) => {
                    let handshake = tokio::time::timeout_at(
                        accepted + deadlines.handshake,
                        acceptor.accept(stream),
                    )
                    .await;
                    let stream = match handshake {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out (timeouts.handshake)");
                            return;
                        }
                    };
                    // The certificate rustls verified against
                    // clientAuth.clientCAFile, if the client sent one.
                    let certificate = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|leaf| {
                            let name = crate::clientauth::certificate_name(leaf);
                            if name.is_none() {
                                tracing::info!(%peer, "client certificate names no one (no common name or subject alternative name); ignored");
                            }
                            name
                        })
                        .map(|name| PeerCertificate(Arc::from(name)));
                    let served = builder
                        .serve_connection(TokioIo::new(stream), service(certificate))
                        .into_owned();
                    let driven = async { drive!(served, &connection, deadlines, stopping, peer) };
                    conn::with_progress(progress, driven).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(stopping);
    drain(stop, timeouts.shutdown).await;
}

/// Tells every connection to finish and waits for them, for at most
/// `grace` (`timeouts.shutdown`).
async fn drain(stop: watch::Sender<bool>, grace: Duration) {
    tracing::info!(?grace, "shutting down: finishing in-flight requests");
    let _ = stop.send(true);
    tokio::select! {
        () = stop.closed() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "grace period over; dropping remaining connections");
        }
    }
}

/// The HTTP/1.1 + HTTP/2 connection builder for one listener.
fn http_builder(
    timeouts: Timeouts,
    deadlines: conn::Deadlines,
) -> auto::Builder<conn::StreamExecutor> {
    let mut builder = auto::Builder::new(conn::StreamExecutor {
        stall: deadlines.stall,
    });
    builder
        .http1()
        .timer(TokioTimer::new())
        // Reading a request's headers (and, in hyper, waiting for the next
        // request on a keep-alive connection) is bounded like idleness.
        .header_read_timeout(timeouts.idle)
        .max_buf_size(MAX_REQUEST_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_local_error_reset_streams(Some(H2_MAX_LOCAL_RESETS))
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    builder
}

/// Who may open a connection: at most `limits.connections` open, and
/// `limits.connectionsPerClient` per client address. A refused connection
/// is closed at once; refusals are logged, rate-limited.
struct Gate {
    limits: Limits,
    open: Arc<Semaphore>,
    per_client: Arc<conn::PerClient>,
    refused_total: conn::Refusals,
    refused_client: conn::Refusals,
}

impl Gate {
    fn new(limits: Limits) -> Gate {
        Gate {
            limits,
            open: Arc::new(Semaphore::new(limits.connections)),
            per_client: conn::PerClient::new(limits.connections_per_client),
            refused_total: conn::Refusals::default(),
            refused_client: conn::Refusals::default(),
        }
    }

    /// What a connection from `peer` holds while it is open, or `None`
    /// when a limit refuses it.
    fn admit(&self, peer: SocketAddr) -> Option<impl Send + 'static> {
        let limits = &self.limits;
        let Ok(permit) = Arc::clone(&self.open).try_acquire_owned() else {
            if let Some(refused) = self.refused_total.count() {
                tracing::warn!(%peer, limit = limits.connections, refused, "connection limit (limits.connections) reached; closing");
            }
            return None;
        };
        let Some(slot) = self.per_client.admit(peer.ip()) else {
            if let Some(refused) = self.refused_client.count() {
                tracing::warn!(%peer, limit = limits.connections_per_client, refused, "per-client connection limit (limits.connectionsPerClient) reached; closing");
            }
            return None;
        };
        Some((permit, slot))
    }
}

static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

/// `/healthz` (the process is up) and `/readyz` (200 or 503, with the
/// JSON of [`crate::serve::readiness`]; `?verbose` adds each upstream's
/// detail).
async fn health_response(app: &App, uri: &http::Uri) -> Response<ProxyBody> {
    if uri.path() == "/healthz" {
        return text(StatusCode::OK, "ok\n");
    }
    let readiness = app.readiness().await;
    let status = if readiness.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, readiness.to_json(verbose(uri.query())).to_string())
}

/// Whether a query asks for detail: `verbose` present, with no value or
/// any value but `0` and `false` (as Kubernetes' own `/readyz?verbose`).
fn verbose(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes())
            .any(|(key, value)| key == "verbose" && value != "0" && value != "false")
    })
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone)]
pub enum Role {
    /// The registry API; `/healthz` and `/readyz` too when there is no
    /// admin listener.
    Registry { health: bool },
    /// `/metrics`, `/-/ui`, `/-/api/…`, `/healthz`, `/readyz`; with a
    /// token, everything but the health endpoints and the page requires it.
    Admin {
        token: Option<Arc<crate::admin::AdminToken>>,
    },
}

async fn handle(
    app: &App,
    request: Request<Incoming>,
    peer: SocketAddr,
    role: Role,
    active: conn::ActiveRequest,
) -> Response<ProxyBody> {
    let id = REQUEST_IDS.fetch_add(1, Ordering::Relaxed);
    // At info and above, the `request` span is made only when a line of
    // this request is logged (see `RequestLog`). With debug logging on
    // anywhere, it is made up front and the whole request runs in it, so
    // that every line, from any module, carries it.
    let log = RequestLog::new(id, request.method().clone(), request.uri().clone(), peer);
    let span = if tracing::level_filters::LevelFilter::current()
        >= tracing::level_filters::LevelFilter::DEBUG
    {
        log.span().clone()
    } else {
        tracing::Span::none()
    };
    let start = Instant::now();
    let metrics = Arc::clone(&app.observer.metrics);
    metrics.request_started();
    let endpoint = match (&role, request.uri().path()) {
        (Role::Admin { .. }, "/healthz" | "/readyz") => Endpoint::Health,
        (Role::Admin { .. }, _) => Endpoint::Admin,
        (Role::Registry { .. }, path) => Endpoint::of_registry_path(path),
    };
    let response = async {
        let path = request.uri().path();
        match role {
            Role::Registry { health } => {
                if path == "/v2" || path.starts_with("/v2/") {
                    let client = Client {
                        request_id: id,
                        addr: Some(peer),
                        user_agent: request
                            .headers()
                            .get(header::USER_AGENT)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned),
                        identity: None,
                    };
                    app.handle(&request, &client, &log).await
                } else if health && (path == "/healthz" || path == "/readyz") {
                    health_response(app, request.uri()).await
                } else {
                    text(StatusCode::NOT_FOUND, "not found\n")
                }
            }
            Role::Admin { token } => match path {
                "/healthz" | "/readyz" => health_response(app, request.uri()).await,
                _ => crate::admin::handle(app, &request, token.as_deref()).await,
            },
        }
    }
    .instrument(span)
    .await;
    let (mut parts, body) = response.into_parts();
    parts.headers.insert(X_REQUEST_ID, HeaderValue::from(id));
    parts.headers.insert(
        DOCKER_DISTRIBUTION_API_VERSION,
        HeaderValue::from_static("registry/2.0"),
    );
    let routine = parts.extensions.remove::<Routine>().is_some();
    let progress = conn::current_progress();
    if let Some(progress) = &progress {
        progress.started();
    }
    let logged = LoggedBody {
        metrics,
        endpoint,
        inner: body,
        log,
        status: parts.status,
        bytes: 0,
        start,
        outcome: Outcome::Incomplete,
        routine,
        progress,
        _active: active,
    };
    Response::from_parts(parts, logged.boxed_unsync())
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(body_from(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(body_from(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    Incomplete,
    Complete,
    Failed,
}

/// Counts the request (`portcullis_requests_total`) and the bytes sent,
/// and logs the request, when the body is finished or dropped (a client
/// that hangs up is logged as incomplete). Reports
/// the stream's [`conn::Progress`], and keeps the connection busy
/// ([`conn::ActiveRequest`]) until it is dropped.
///
/// The line is at info, except for a [`Routine`] response sent in full
/// with a success status (a manifest served on a cached verdict, which
/// was logged at info when it was decided): that one is at debug, so a
/// warm pull costs no log write by default. Denials, errors, aborted and
/// incomplete responses, verdicts newly made, blobs and listings stay at
/// info or above.
struct LoggedBody {
    metrics: Arc<Metrics>,
    endpoint: Endpoint,
    inner: ProxyBody,
    log: RequestLog,
    status: StatusCode,
    bytes: u64,
    start: Instant,
    outcome: Outcome,
    routine: bool,
    progress: Option<Arc<conn::Progress>>,
    _active: conn::ActiveRequest,
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let progress = this.progress.as_deref();
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if let Some(p) = progress {
                    p.sent();
                }
            }
            Poll::Ready(Some(Err(e))) => {
                this.outcome = Outcome::Failed;
                this.log
                    .in_scope(|| tracing::warn!(error = %e, "response body aborted"));
                if let Some(p) = progress {
                    p.finished();
                }
            }
            Poll::Ready(None) => {
                if this.outcome == Outcome::Incomplete {
                    this.outcome = Outcome::Complete;
                }
                if let Some(p) = progress {
                    p.finished();
                }
            }
            Poll::Pending => {
                if let Some(p) = progress {
                    p.waiting_for_upstream();
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(progress) = &self.progress {
            progress.finished();
        }
        if self.outcome == Outcome::Incomplete && self.inner.is_end_stream() {
            self.outcome = Outcome::Complete;
        }
        self.metrics.request_finished();
        self.metrics.served_bytes(self.bytes);
        self.metrics.request(self.endpoint, self.status.as_u16());
        let routine = self.routine && self.outcome == Outcome::Complete && self.status.is_success();
        let enabled = if routine {
            tracing::enabled!(tracing::Level::DEBUG)
        } else {
            tracing::enabled!(tracing::Level::INFO)
        };
        if !enabled {
            return;
        }
        let duration_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        self.log.in_scope(|| {
            if routine {
                tracing::debug!(
                    status = self.status.as_u16(),
                    bytes = self.bytes,
                    duration_ms,
                    outcome = ?self.outcome,
                    "response"
                )
            } else {
                tracing::info!(
                    status = self.status.as_u16(),
                    bytes = self.bytes,
                    duration_ms,
                    outcome = ?self.outcome,
                    "response"
                )
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::verbose;

    #[test]
    fn verbose_is_asked_by_the_key() {
        for yes in [
            "verbose",
            "verbose=",
            "verbose=1",
            "verbose=true",
            "x=1&verbose",
        ] {
            assert!(verbose(Some(yes)), "{yes}");
        }
        for no in ["", "verbose=0", "verbose=false", "verbosee", "v=verbose"] {
            assert!(!verbose(Some(no)), "{no}");
        }
        assert!(!verbose(None));
    }
}
