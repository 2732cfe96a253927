//! The pull endpoints. [`App::handle`] routes a `/v2/` request and runs the
//! endpoint's handler:
//!
//! - [`manifest`]: fetched whole (bounded), hashed over the exact bytes,
//!   checked against a requested digest, then served. Nothing is sent
//!   before the whole manifest is checked.
//! - [`blob`]: streamed with flat memory, hashed while streaming; a
//!   mismatch aborts the response before its last bytes.
//! - [`listing`]: tag lists (links rewritten to point back at the proxy)
//!   and referrers (with the tag-schema fallback).
//!
//! Handlers return [`ServeError`]; [`crate::error`] turns it into the OCI
//! error response.

pub mod blob;
pub mod listing;
pub mod manifest;
pub mod verifying;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, Limited};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::audit::{Client, Decided, Observer, Subject};
use crate::config::Config;
use crate::error::{ApiError, ErrorCode};
use crate::metrics::{Metrics, Snapshot};
use crate::oci::Digest;
use crate::policy::Decision;
use crate::routing::{Endpoint, Route, RouteError, Routed, Router};
use crate::upstream::{SetupError, Upstream, UpstreamBody, UpstreamError};
use crate::verify::{Verifier, VerifyError};

/// The error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body the proxy sends.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Largest manifest accepted from an upstream (the distribution spec's
/// recommended limit; registries reject larger pushes too).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest upstream error body read to pass its OCI error on.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Longest an upstream error body may take to arrive: past it, the error
/// is answered without the upstream's message (an upstream trickling an
/// error body must not hold a blob request, which has no total deadline).
const MAX_ERROR_BODY_TIME: Duration = Duration::from_secs(10);
/// How long `/readyz` waits for an upstream that has been quiet.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// An upstream that answered within this window counts as reachable
/// without a probe.
const READY_WINDOW: Duration = Duration::from_secs(30);

/// One request's log context: id, method, path, peer and, once routed,
/// the canonical reference. The `request` span that carries them (and
/// that every line the serving layer logs for the request is written in)
/// is made on first use, so a request that logs nothing at an enabled
/// level (a warm pull) pays for no span; every line that is logged has
/// the same span fields as if the span had been made when the request
/// arrived. (With debug logging on, the server makes it up front and runs
/// the whole request in it.)
#[derive(Debug)]
pub struct RequestLog {
    id: u64,
    method: Method,
    uri: http::Uri,
    peer: SocketAddr,
    reference: OnceLock<String>,
    span: OnceLock<tracing::Span>,
}

impl RequestLog {
    pub fn new(id: u64, method: Method, uri: http::Uri, peer: SocketAddr) -> RequestLog {
        RequestLog {
            id,
            method,
            uri,
            peer,
            reference: OnceLock::new(),
            span: OnceLock::new(),
        }
    }

    /// The request's canonical `<registry>/<repository>`, once routed.
    pub fn set_reference(&self, reference: String) {
        if self.reference.set(reference).is_ok() {
            if let (Some(span), Some(reference)) = (self.span.get(), self.reference.get()) {
                span.record("reference", reference.as_str());
            }
        }
    }

    /// The `request` span, made now if it was not yet.
    pub fn span(&self) -> &tracing::Span {
        self.span.get_or_init(|| {
            let span = tracing::info_span!(
                target: "portcullis::server",
                "request",
                id = self.id,
                method = %self.method,
                path = %self.uri.path(),
                peer = %self.peer,
                reference = tracing::field::Empty,
            );
            if let Some(reference) = self.reference.get() {
                span.record("reference", reference.as_str());
            }
            span
        })
    }

    /// Runs `log` (which logs) in the request span. Callers check that the
    /// level they log at is enabled before calling this for debug lines,
    /// so that no span is made for nothing.
    pub fn in_scope<R>(&self, log: impl FnOnce() -> R) -> R {
        self.span().in_scope(log)
    }
}

/// Marks a response (in its extensions) that only repeats a decision
/// already made and logged: a manifest served on a verdict-cache hit. Its
/// access log line is written at debug rather than info.
#[derive(Debug, Clone, Copy)]
pub struct Routine;

/// A body holding `bytes`.
pub fn body_from(bytes: Bytes) -> ProxyBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Why a pull request could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("manifest is larger than the {limit}-byte limit")]
    ManifestTooLarge { limit: usize },
    #[error(
        "upstream returned content for {requested} whose digest is {actual}; refusing to serve it"
    )]
    DigestMismatch { requested: Digest, actual: Digest },
    #[error("{0}")]
    BadRange(String),
    #[error("upstream answered {status} for {what}")]
    UpstreamStatus {
        /// Upstream headers worth passing on (Content-Range of a 416,
        /// Retry-After of a 429).
        headers: Box<http::HeaderMap>,
        status: StatusCode,
        code: ErrorCode,
        upstream_message: Option<String>,
        detail: serde_json::Value,
        what: String,
    },
    #[error("upstream sent an invalid response for {what}: {reason}")]
    UpstreamInvalid { what: String, reason: String },
    #[error("{}", decision.message(subject))]
    Denied {
        /// `image <name>@<digest>` or `blob <name>@<digest>`.
        subject: String,
        decision: Arc<Decision>,
    },
    #[error("cannot verify {image}: {source}")]
    CannotVerify { image: String, source: VerifyError },
    /// No upstream fetch slot came free within `timeouts.read`.
    #[error("{}", busy_message(*per_connection, *limit))]
    Busy {
        /// The connection's own cap (`limits.upstreamFetchesPerConnection`)
        /// rather than the proxy's (`limits.upstreamFetches`).
        per_connection: bool,
        limit: usize,
    },
}

fn busy_message(per_connection: bool, limit: usize) -> String {
    if per_connection {
        format!(
            "more than {limit} blob downloads at once on one connection \
             (limits.upstreamFetchesPerConnection); retry when one has finished"
        )
    } else {
        format!(
            "the proxy is running its limit of {limit} upstream blob fetches \
             (limits.upstreamFetches); retry later"
        )
    }
}

/// The upstream blob fetches one client connection may run at once
/// (`limits.upstreamFetchesPerConnection`): HTTP/2 multiplexes many
/// requests on a connection, and each fetch holds an upstream connection
/// for as long as its client takes to read. The server puts one in the
/// extensions of every request of a connection
/// ([`App::connection_fetches`]).
#[derive(Debug, Clone)]
pub struct ConnectionFetches(Arc<Semaphore>);

/// The slots an upstream blob fetch holds while it streams: released when
/// the response body ends or is dropped.
#[derive(Debug)]
pub struct FetchSlots {
    _connection: Option<OwnedSemaphorePermit>,
    _proxy: OwnedSemaphorePermit,
}

/// The proxy: routing plus one client per upstream.
#[derive(Debug)]
pub struct App {
    router: Router,
    pub(crate) upstreams: Vec<Arc<Upstream>>,
    pub verifier: Verifier,
    manifests: manifest::ManifestCache,
    pub observer: Arc<Observer>,
    break_glass: Option<crate::breakglass::BreakGlass>,
    /// Upstream blob fetches running, proxy-wide (`limits.upstreamFetches`).
    fetches: Arc<Semaphore>,
    fetches_limit: usize,
    /// `limits.upstreamFetchesPerConnection`.
    fetches_per_connection: usize,
    /// How long a blob request waits for a fetch slot (`timeouts.read`).
    fetch_wait: Duration,
}

impl App {
    /// An app that records decisions in metrics and the recent list only
    /// (no audit file, no alerts): what one-shot commands use.
    pub fn new(config: &Config) -> Result<App, SetupError> {
        let metrics = Arc::new(Metrics::new());
        App::with_observer(config, Arc::new(Observer::new(metrics, None, None)))
    }

    /// An app whose decisions go to `observer`.
    pub fn with_observer(config: &Config, observer: Arc<Observer>) -> Result<App, SetupError> {
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                Upstream::new(u, config.timeouts)
                    .map(|up| Arc::new(up.with_metrics(Arc::clone(&observer.metrics))))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let policy = config
            .compile_policy()
            .map_err(|e| SetupError::Policy(e.to_string()))?;
        observer.metrics.policy_loaded(&policy.revision);
        let mut verifier = Verifier::new(policy, config.cache)
            .with_timeouts(config.timeouts)
            .with_limits(&config.limits);
        if let Some(store) = &config.attestation_store {
            let store = crate::verify::store::Store::open(&store.path)
                .map_err(SetupError::AttestationStore)?;
            verifier = verifier.with_store(Arc::new(store));
        }
        Ok(App {
            router: Router::new(config),
            upstreams,
            verifier,
            manifests: manifest::ManifestCache::new(&config.cache),
            observer,
            break_glass: match &config.break_glass {
                Some(bg) => {
                    crate::breakglass::BreakGlass::from_config(bg).map_err(SetupError::Policy)?
                }
                None => None,
            },
            fetches: Arc::new(Semaphore::new(config.limits.upstream_fetches)),
            fetches_limit: config.limits.upstream_fetches,
            fetches_per_connection: config.limits.upstream_fetches_per_connection,
            fetch_wait: config.timeouts.read,
        })
    }

    /// A new client connection's fetch slots.
    pub fn connection_fetches(&self) -> ConnectionFetches {
        ConnectionFetches(Arc::new(Semaphore::new(self.fetches_per_connection)))
    }

    /// Slots for one upstream blob fetch: the connection's (when the
    /// request came through the server) and the proxy's, each waited for
    /// up to `timeouts.read`. The connection's first, so a connection at
    /// its own cap queues on itself without taking proxy-wide slots.
    async fn fetch_slots(
        &self,
        connection: Option<&ConnectionFetches>,
    ) -> Result<FetchSlots, ServeError> {
        let wait = |semaphore: &Arc<Semaphore>| {
            tokio::time::timeout(self.fetch_wait, Arc::clone(semaphore).acquire_owned())
        };
        let connection = match connection {
            Some(ConnectionFetches(slots)) => match wait(slots).await {
                Ok(Ok(permit)) => Some(permit),
                _ => {
                    return Err(ServeError::Busy {
                        per_connection: true,
                        limit: self.fetches_per_connection,
                    })
                }
            },
            None => None,
        };
        match wait(&self.fetches).await {
            Ok(Ok(permit)) => Ok(FetchSlots {
                _connection: connection,
                _proxy: permit,
            }),
            _ => Err(ServeError::Busy {
                per_connection: false,
                limit: self.fetches_limit,
            }),
        }
    }

    /// Answers one `/v2/` request. The canonical reference of the request
    /// is recorded in `log`, and what is logged is logged in its span.
    pub async fn handle<B>(
        &self,
        request: &Request<B>,
        client: &Client,
        log: &RequestLog,
    ) -> Response<ProxyBody> {
        let started = std::time::Instant::now();
        let head = request.method() == Method::HEAD;
        let routed = self.router.route(
            request.method(),
            request.uri().path(),
            request.uri().query(),
        );
        let route = match routed {
            Ok(Routed::Base) => return base_response(head),
            Ok(Routed::Repository(route)) => route,
            Err(e) => return reject(e, head, log),
        };
        let canonical = route.canonical();
        log.set_reference(canonical.clone());
        let upstream = &self.upstreams[route.upstream];
        let result = match &route.endpoint {
            Endpoint::Base => return base_response(head),
            Endpoint::Manifest(reference) => {
                manifest::serve(
                    self,
                    &route,
                    &canonical,
                    reference,
                    request.headers(),
                    head,
                    client,
                    log,
                    started,
                )
                .await
            }
            Endpoint::Blob(digest) => match self.verifier.blob_allowed(&route, digest).await {
                Ok(()) => match self.fetch_slots(request.extensions().get()).await {
                    Ok(slots) => {
                        blob::serve(upstream, &route, digest, request.headers(), head, slots).await
                    }
                    Err(busy) => Err(busy),
                },
                // A blob of an image admitted by break-glass: only for a
                // request carrying a valid break-glass credential, and
                // audited as such.
                Err(decision)
                    if self
                        .break_glass_blob(
                            &route,
                            digest,
                            request.headers(),
                            client,
                            &canonical,
                            &decision,
                            started,
                        )
                        .await =>
                {
                    match self.fetch_slots(request.extensions().get()).await {
                        Ok(slots) => {
                            blob::serve(upstream, &route, digest, request.headers(), head, slots)
                                .await
                        }
                        Err(busy) => Err(busy),
                    }
                }
                Err(decision) => {
                    let decided = Decided {
                        at: std::time::SystemTime::now(),
                        client: client.clone(),
                        subject: Subject::Blob,
                        reference: canonical,
                        tag: None,
                        digest: digest.clone(),
                        decision: Arc::clone(&decision),
                        cache_hit: false,
                        latency: started.elapsed(),
                    };
                    let subject = decided.subject_text();
                    self.observer.decided(decided).await;
                    Err(ServeError::Denied { subject, decision })
                }
            },
            // Listings are read whole, like manifests, and bounded alike.
            Endpoint::TagsList { n, last } => {
                upstream
                    .within(
                        upstream.timeouts().manifest,
                        "manifest",
                        || format!("the tag list of {}", route.repository),
                        listing::tags(upstream, &route, *n, last.as_deref(), head),
                    )
                    .await
            }
            Endpoint::Referrers {
                digest,
                artifact_type,
            } => {
                upstream
                    .within(
                        upstream.timeouts().manifest,
                        "manifest",
                        || format!("the referrers of {}@{digest}", route.repository),
                        listing::referrers(
                            upstream,
                            &route,
                            digest,
                            artifact_type.as_deref(),
                            head,
                        ),
                    )
                    .await
            }
        };
        result.unwrap_or_else(|e| {
            let error = ApiError::from(e);
            log.in_scope(|| {
                if error.status.is_server_error() {
                    tracing::warn!(code = ?error.code, error = %error.message, "request failed");
                } else {
                    tracing::info!(code = ?error.code, error = %error.message, "request refused");
                }
            });
            error.into_response(head)
        })
    }

    /// Whether the denied blob `digest` may be served by break-glass: the
    /// request carries a valid break-glass credential and the blob belongs
    /// to an image admitted by break-glass in this repository. Each such
    /// serve is audited (verdict `breakglass`, with the identity).
    #[allow(clippy::too_many_arguments)]
    async fn break_glass_blob(
        &self,
        route: &Route,
        digest: &Digest,
        headers: &http::HeaderMap,
        client: &Client,
        canonical: &str,
        decision: &Arc<Decision>,
        started: std::time::Instant,
    ) -> bool {
        let Some(glass) = &self.break_glass else {
            return false;
        };
        let crate::breakglass::Attempt::Valid(used) = glass.check(headers) else {
            return false;
        };
        if !self.verifier.break_glass_blob(route, digest) {
            return false;
        }
        let decided = Decided {
            at: std::time::SystemTime::now(),
            client: client.clone(),
            subject: Subject::Blob,
            reference: canonical.to_owned(),
            tag: None,
            digest: digest.clone(),
            decision: Arc::clone(decision),
            cache_hit: false,
            latency: started.elapsed(),
        };
        let mut record = decided.to_record();
        record.verdict = crate::audit::RecordedVerdict::Breakglass;
        record.identity = Some(used.identity.clone());
        record.break_glass_justification = Some(used.justification.clone());
        record.reason = format!(
            "{} — served by break-glass ({}: {})",
            record.reason, used.identity, used.justification
        );
        self.observer.record(record).await;
        true
    }

    /// The `/metrics` exposition.
    pub async fn metrics_text(&self) -> String {
        let stats = &self.verifier.stats;
        let (audit_written, audit_dropped) = self.observer.audit_counts();
        let alerts = self.observer.alert_counts();
        use std::sync::atomic::Ordering::Relaxed;
        self.observer.metrics.encode(Snapshot {
            cache_hits: stats.cache_hits.load(Relaxed),
            cache_misses: stats.cache_misses.load(Relaxed),
            cache_entries: self.verifier.cached_verdicts().await,
            signature_lookups: stats.signature_lookups.load(Relaxed),
            audit_written,
            audit_dropped,
            alerts_sent: alerts.sent,
            alerts_failed: alerts.failed,
            alerts_dropped: alerts.dropped,
            alerts_coalesced: alerts.coalesced,
        })
    }

    /// `/readyz`: every upstream answered recently, or answers a probe now.
    pub async fn readiness(&self) -> (bool, serde_json::Value) {
        let mut probes = tokio::task::JoinSet::new();
        for (i, upstream) in self.upstreams.iter().enumerate() {
            let upstream = Arc::clone(upstream);
            probes.spawn(async move {
                let state = if upstream.answered_within(READY_WINDOW) {
                    Ok(())
                } else {
                    upstream.probe(READY_PROBE_TIMEOUT).await
                };
                (i, state)
            });
        }
        let mut ready = true;
        let mut upstreams = serde_json::Map::new();
        while let Some(joined) = probes.join_next().await {
            let Ok((i, state)) = joined else {
                ready = false;
                continue;
            };
            let text = match state {
                Ok(()) => "reachable".to_owned(),
                Err(e) => {
                    ready = false;
                    e.to_string()
                }
            };
            upstreams.insert(
                self.upstreams[i].registry.clone(),
                serde_json::Value::String(text),
            );
        }
        (
            ready,
            serde_json::json!({"ready": ready, "upstreams": upstreams}),
        )
    }
}

fn base_response(head: bool) -> Response<ProxyBody> {
    let body = Bytes::from_static(b"{}");
    let mut response = Response::new(body_from(if head { Bytes::new() } else { body }));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(2));
    response
}

fn reject(e: RouteError, head: bool, log: &RequestLog) -> Response<ProxyBody> {
    log.in_scope(|| tracing::info!(error = %e, "rejected request"));
    ApiError::from(e).into_response(head)
}

/// What an upstream's error response means for the client: its OCI error
/// when it sent one, else a code chosen by status.
pub(crate) async fn upstream_failure(
    route: &Route,
    response: Response<UpstreamBody>,
    what: String,
    not_found: ErrorCode,
) -> ServeError {
    let status = response.status();
    let mut headers = Box::new(http::HeaderMap::new());
    for name in [header::CONTENT_RANGE, header::RETRY_AFTER] {
        if let Some(value) = response.headers().get(&name) {
            headers.insert(name, value.clone());
        }
    }
    let body = tokio::time::timeout(
        MAX_ERROR_BODY_TIME,
        Limited::new(response.into_body(), MAX_ERROR_BODY).collect(),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .map(|c| c.to_bytes())
    .unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: serde_json::Value,
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        detail: serde_json::Value,
    }
    let first = serde_json::from_slice::<Envelope>(&body)
        .ok()
        .and_then(|e| e.errors.into_iter().next());
    let default_code = match status.as_u16() {
        404 => not_found,
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Denied,
        429 => ErrorCode::Toomanyrequests,
        500..=599 => ErrorCode::Unavailable,
        _ => ErrorCode::Unknown,
    };
    if status == StatusCode::UNAUTHORIZED {
        return ServeError::UpstreamStatus {
            headers,
            status,
            code: ErrorCode::Unauthorized,
            upstream_message: Some(format!(
                "upstream {} refused the proxy's credentials for {}",
                route.registry, route.repository
            )),
            detail: serde_json::Value::Null,
            what,
        };
    }
    let (code, upstream_message, detail) = match first {
        Some(entry) => (
            serde_json::from_value(entry.code).unwrap_or(default_code),
            entry.message,
            entry.detail,
        ),
        None => (default_code, None, serde_json::Value::Null),
    };
    let upstream_message = match (status.is_server_error(), upstream_message) {
        (true, m) => Some(format!(
            "upstream {} failed with {status}{}",
            route.registry,
            m.map(|m| format!(": {m}")).unwrap_or_default()
        )),
        (false, m) => m,
    };
    ServeError::UpstreamStatus {
        headers,
        status,
        code,
        upstream_message,
        detail,
        what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Lines logged through a [`RequestLog`] carry the request span's
    /// fields (as the JSON log format writes them), whether the reference
    /// was known when the span was made or recorded after; nothing logged,
    /// no span made.
    #[test]
    fn request_log_makes_its_span_on_first_use_with_every_field() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(move || writer.clone())
            .finish();
        let peer: SocketAddr = "127.0.0.1:4711".parse().expect("address");
        let new = |id: u64| {
            RequestLog::new(
                id,
                Method::GET,
                "/v2/demo/app/manifests/v1?ns=r.io".parse().expect("uri"),
                peer,
            )
        };
        tracing::subscriber::with_default(subscriber, || {
            let quiet = new(1);
            quiet.set_reference("r.io/demo/app".into());
            assert!(quiet.span.get().is_none(), "no span without a line");

            let routed_first = new(2);
            routed_first.set_reference("r.io/demo/app".into());
            routed_first.in_scope(|| tracing::info!("first"));

            let logged_first = new(3);
            logged_first.in_scope(|| tracing::info!("before routing"));
            logged_first.set_reference("r.io/demo/web".into());
            logged_first.in_scope(|| tracing::warn!(status = 502, "after routing"));
        });
        let text = String::from_utf8(buffer.0.lock().expect("buffer").clone()).expect("utf-8");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        let span = |i: usize| &lines[i]["span"];
        for (i, id, reference) in [
            (0, 2, Some("r.io/demo/app")),
            (1, 3, None),
            (2, 3, Some("r.io/demo/web")),
        ] {
            assert_eq!(span(i)["name"], "request", "{text}");
            assert_eq!(span(i)["id"], id, "{text}");
            assert_eq!(span(i)["method"], "GET", "{text}");
            assert_eq!(span(i)["path"], "/v2/demo/app/manifests/v1", "{text}");
            assert_eq!(span(i)["peer"], "127.0.0.1:4711", "{text}");
            assert_eq!(span(i)["reference"].as_str(), reference, "{text}");
        }
        assert_eq!(lines[2]["status"], 502);
    }
}
