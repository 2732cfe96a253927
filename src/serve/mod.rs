//! The request pipeline. [`App::handle`] takes one `/v2/` request through
//! named phases, in this order, each in its own place:
//!
//! 1. **route** ([`App::route`]): the client authenticated (when
//!    `clientAuth` is on, [`crate::clientauth`]: a `401` with a challenge
//!    otherwise), then the request becomes a [`Ctx`]: which endpoint,
//!    upstream and repository ([`crate::routing`]) — one the identity may
//!    pull —, the client, and the break-glass attempt, checked once;
//! 2. **resolve**: the manifest's bytes, from memory or the upstream,
//!    bounded and hashed ([`manifest::fetch`]);
//! 3. **verify**: [`crate::verify::Verifier::admit`] (manifests) or
//!    [`crate::verify::Verifier::permit_blob`] (blobs) answer with a proof
//!    type; nothing is served without one;
//! 4. **serve**: the verified bytes ([`manifest`]), or the blob streamed
//!    with flat memory and hashed while streaming ([`blob`], [`body`]);
//!    listings ([`listing`]) are passed through, bounded;
//! 5. **finish** ([`finish`]): the one place a decision is audited,
//!    counted, alerted and logged.
//!
//! Errors are [`ServeError`]s, classified by [`Source`]; [`edge`] is the
//! one place they become an HTTP status, OCI code and message.
//!
//! May use: `oci`, `config`, `policy`, `routing`, `upstream`, `breakglass`,
//! `clientauth`,
//! `verify`, `audit`, `metrics`. Must never use: `server`, `admin`, `app`,
//! `cli` (they are built on top of it).

pub mod blob;
pub mod body;
mod context;
pub mod edge;
mod error;
mod finish;
pub mod listing;
pub mod manifest;
pub mod readiness;
mod stored;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::audit::{Client, Observer};
use crate::breakglass::{Attempt, BreakGlass};
use crate::clientauth::{AuthError, ClientAuth, Identity};
use crate::config::Config;
use crate::metrics::{ContentSnapshot, Snapshot};
use crate::oci::{media, Digest, Reference};
use crate::policy::Decision;
use crate::routing::{Endpoint, Routed, Router};
use crate::store::ContentStore;
use crate::upstream::Upstream;
use crate::verify::{Failed, Outcome, Verifier};

pub use context::{Ctx, RequestLog};
pub use error::{ServeError, Source};
pub use readiness::{Readiness, UpstreamState};

/// The error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body the proxy sends.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// How long `/readyz` waits for an upstream that has been quiet.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// An upstream that answered within this window counts as reachable
/// without a probe.
const READY_WINDOW: Duration = Duration::from_secs(30);

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

/// The content store's figures for `/metrics`.
fn content_snapshot(store: &ContentStore) -> ContentSnapshot {
    use std::sync::atomic::Ordering::Relaxed;
    let s = &store.stats;
    let (stored_blobs, stored_bytes) = store.usage();
    ContentSnapshot {
        hits: s.hits.load(Relaxed),
        misses: s.misses.load(Relaxed),
        bytes_from_store: s.bytes_from_store.load(Relaxed),
        bytes_downloaded: s.bytes_downloaded.load(Relaxed),
        evictions: s.evictions.load(Relaxed),
        errors: s.errors.load(Relaxed),
        mismatches: s.mismatches.load(Relaxed),
        corrupt: s.corrupt.load(Relaxed),
        tags_unchanged: s.tags_unchanged.load(Relaxed),
        tags_changed: s.tags_changed.load(Relaxed),
        downloads: store.downloads(),
        stored_bytes,
        stored_blobs,
    }
}

/// What the pipeline is built from: the parts the composition root
/// ([`crate::app`]) makes from a configuration.
#[derive(Debug)]
pub struct Parts {
    pub router: Router,
    pub upstreams: Vec<Arc<Upstream>>,
    pub verifier: Verifier,
    pub observer: Arc<Observer>,
    pub break_glass: Option<BreakGlass>,
    /// Who may pull (`clientAuth`), if configured.
    pub client_auth: Option<Arc<ClientAuth>>,
    /// The content store (`cache.content`), if configured.
    pub content: Option<Arc<ContentStore>>,
}

/// The proxy: routing, one client per upstream, the verifier and where
/// decisions go.
#[derive(Debug)]
pub struct App {
    router: Router,
    upstreams: Vec<Arc<Upstream>>,
    pub verifier: Verifier,
    manifests: manifest::ManifestCache,
    pub observer: Arc<Observer>,
    break_glass: Option<BreakGlass>,
    client_auth: Option<Arc<ClientAuth>>,
    /// Upstream blob fetches running, proxy-wide (`limits.upstreamFetches`).
    fetches: Arc<Semaphore>,
    fetches_limit: usize,
    /// `limits.upstreamFetchesPerConnection`.
    fetches_per_connection: usize,
    /// How long a blob request waits for a fetch slot (`timeouts.read`).
    fetch_wait: Duration,
    /// Total time of one download into the store (`timeouts.download`).
    download_time: Duration,
    /// Blobs on disk (`cache.content`).
    content: Option<Arc<ContentStore>>,
}

impl App {
    /// The pipeline over `parts`, with the caches and limits `config` sets.
    pub fn new(parts: Parts, config: &Config) -> App {
        App {
            router: parts.router,
            upstreams: parts.upstreams,
            verifier: parts.verifier,
            manifests: manifest::ManifestCache::new(&config.cache),
            observer: parts.observer,
            break_glass: parts.break_glass,
            client_auth: parts.client_auth,
            fetches: Arc::new(Semaphore::new(config.limits.upstream_fetches)),
            fetches_limit: config.limits.upstream_fetches,
            fetches_per_connection: config.limits.upstream_fetches_per_connection,
            fetch_wait: config.timeouts.read,
            download_time: config.timeouts.download,
            content: parts.content,
        }
    }

    /// The client of each configured upstream, in configuration order.
    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
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

    /// Answers one `/v2/` request: route, then the endpoint's phases; an
    /// error of any phase is answered at the edge. What is logged is
    /// logged in the request's span.
    pub async fn handle<B>(
        &self,
        request: &Request<B>,
        client: &Client,
        log: &RequestLog,
    ) -> Response<ProxyBody> {
        let head = request.method() == Method::HEAD;
        let authenticated;
        let (client, identity) = match &self.client_auth {
            None => (client, None),
            Some(auth) => match auth
                .authenticate(request.headers(), request.extensions().get())
                .await
            {
                Ok(identity) => {
                    authenticated = Client {
                        identity: Some(identity.name.clone()),
                        ..client.clone()
                    };
                    (&authenticated, Some(identity))
                }
                Err(reason) => {
                    if let AuthError::Rejected(why) = &reason {
                        log.in_scope(
                            || tracing::info!(reason = %why, "client credentials refused"),
                        );
                    }
                    let e = ServeError::Unauthenticated {
                        reason,
                        challenge: auth.challenge(),
                    };
                    return edge::failed(e, head, log);
                }
            },
        };
        let ctx = match self.route(request, client, identity.as_ref(), log) {
            Ok(Some(ctx)) => ctx,
            Ok(None) => return base_response(head),
            Err(e) => return edge::failed(e, head, log),
        };
        let result = match &ctx.route.endpoint {
            Endpoint::Manifest(reference) => manifest::pull(self, &ctx, reference).await,
            Endpoint::Blob(digest) => self.blob(&ctx, digest).await,
            Endpoint::TagsList { n, last } => {
                listing::tags(self.upstream(&ctx), &ctx.route, *n, last.as_deref(), head).await
            }
            Endpoint::Referrers {
                digest,
                artifact_type,
            } => {
                let artifact_type = artifact_type.as_deref();
                listing::referrers(self.upstream(&ctx), &ctx.route, digest, artifact_type, head)
                    .await
            }
        };
        result.unwrap_or_else(|e| edge::failed(e, head, log))
    }

    /// The route phase: `None` for the API base (`/v2/`). An authenticated
    /// `identity` must be allowed the repository (`clientAuth.access`).
    fn route<'r, B>(
        &self,
        request: &'r Request<B>,
        client: &'r Client,
        identity: Option<&Identity>,
        log: &'r RequestLog,
    ) -> Result<Option<Ctx<'r>>, ServeError> {
        let started = Instant::now();
        let uri = request.uri();
        let route = match self
            .router
            .route(request.method(), uri.path(), uri.query())?
        {
            Routed::Base => return Ok(None),
            Routed::Repository(route) => route,
        };
        let canonical = route.canonical();
        log.set_reference(canonical.clone());
        if let (Some(auth), Some(identity)) = (&self.client_auth, identity) {
            if !auth.may_pull(identity, &canonical) {
                return Err(ServeError::AccessDenied {
                    identity: identity.name.clone(),
                    repository: canonical,
                });
            }
        }
        let glass = match &self.break_glass {
            Some(glass) => glass.check(request.headers()),
            None => Attempt::None,
        };
        Ok(Some(Ctx {
            route,
            canonical,
            head: request.method() == Method::HEAD,
            headers: request.headers(),
            client,
            log,
            started,
            glass,
            connection: request.extensions().get(),
        }))
    }

    fn upstream(&self, ctx: &Ctx<'_>) -> &Upstream {
        &self.upstreams[ctx.route.upstream]
    }

    /// A blob: verify (a permit, or the denial, finished), then serve.
    async fn blob(
        &self,
        ctx: &Ctx<'_>,
        digest: &Digest,
    ) -> Result<Response<ProxyBody>, ServeError> {
        let permit = match self
            .verifier
            .permit_blob(&ctx.route, digest, &ctx.glass)
            .await
        {
            Ok(permit) => permit,
            Err(refusal) => match self.readmit(ctx, digest, refusal).await {
                Ok(permit) => permit,
                Err(decision) => return Err(finish::blob_denied(self, ctx, digest, decision).await),
            },
        };
        finish::blob_permitted(self, ctx, &permit).await;
        if let Some(store) = &self.content {
            if let Some(response) = stored::serve(self, store, ctx, &permit).await? {
                return Ok(response);
            }
        }
        let slots = self.fetch_slots(ctx.connection).await?;
        blob::serve(
            self.upstream(ctx),
            &ctx.route,
            &permit,
            ctx.headers,
            ctx.head,
            slots,
        )
        .await
    }

    /// A blob refused because the policy (or the evidence) changed after
    /// its image's manifest was admitted, in the middle of a pull: the
    /// manifests that admitted it ([`Verifier::readmissions`]) are fetched
    /// and verified again under the current policy, as if the client had
    /// asked for them, and the blob is served only if they admit it.
    /// Otherwise the refusal stands, saying why: the image's denial under
    /// the current policy, or that it could not be checked again.
    ///
    /// Not audited apart: no manifest is served, and the blob's own
    /// refusal is audited when it stands.
    async fn readmit(
        &self,
        ctx: &Ctx<'_>,
        digest: &Digest,
        refusal: Arc<Decision>,
    ) -> Result<crate::verify::BlobPermit, Arc<Decision>> {
        let chain = self.verifier.readmissions(&ctx.route, digest).await;
        if chain.is_empty() {
            return Err(refusal);
        }
        let mut accept = HeaderMap::new();
        accept.insert(header::ACCEPT, HeaderValue::from_static(media::ACCEPT_ALL));
        let because = |manifest: &Digest, why: String| {
            Arc::new(Decision {
                reason: format!(
                    "{} (its image {}@{manifest} was admitted before the policy or the evidence changed, {why})",
                    refusal.reason, ctx.canonical
                ),
                ..(*refusal).clone()
            })
        };
        for manifest in &chain {
            let reference = Reference::Digest(manifest.clone());
            let resolve =
                self.manifests
                    .get_or_fetch(self.upstream(ctx), &ctx.route, &reference, &accept);
            // Without the request's break-glass credential: a denied image
            // is admitted by break-glass only where that is audited, at its
            // manifest.
            let admitted = self
                .verifier
                .admit(&ctx.route, &reference, resolve, &Attempt::None)
                .await;
            match admitted {
                Ok(Outcome::Admitted(_)) => {}
                Ok(Outcome::Denied(denial)) => {
                    self.observer.metrics.readmission("denied");
                    let denied = denial.decision();
                    return Err(Arc::new(Decision {
                        reason: format!(
                            "blob of image {}@{manifest}, which the current policy denies: {}",
                            ctx.canonical, denied.reason
                        ),
                        ..(**denied).clone()
                    }));
                }
                Err(Failed::Fetch(e)) => {
                    self.observer.metrics.readmission("failed");
                    return Err(because(
                        manifest,
                        format!("and it could not be fetched to check it again: {e}"),
                    ));
                }
                Err(Failed::Verify { error, .. }) => {
                    self.observer.metrics.readmission("failed");
                    return Err(because(
                        manifest,
                        format!("and it could not be checked again: {error}"),
                    ));
                }
            }
        }
        self.observer.metrics.readmission("admitted");
        ctx.log.in_scope(|| {
            tracing::info!(
                blob = %digest,
                manifest = %chain.last().map(ToString::to_string).unwrap_or_default(),
                "image admitted again under the current policy for a pull begun before it changed"
            )
        });
        self.verifier
            .permit_blob(&ctx.route, digest, &ctx.glass)
            .await
    }

    /// The `/metrics` exposition.
    pub async fn metrics_text(&self) -> String {
        let stats = &self.verifier.stats;
        let (audit_written, audit_dropped, audit_errors) = self.observer.audit_counts();
        let alerts = self.observer.alert_counts();
        use std::sync::atomic::Ordering::Relaxed;
        let fleet = self.verifier.fleet().map(|f| &f.stats);
        self.observer.metrics.encode(Snapshot {
            cache_hits: stats.cache_hits.load(Relaxed),
            cache_misses: stats.cache_misses.load(Relaxed),
            cache_entries: self.verifier.cached_verdicts().await,
            signature_lookups: stats.signature_lookups.load(Relaxed),
            audit_written,
            audit_dropped,
            audit_errors,
            alerts_sent: alerts.sent,
            alerts_failed: alerts.failed,
            alerts_dropped: alerts.dropped,
            alerts_coalesced: alerts.coalesced,
            redis_errors: fleet.map_or(0, |f| f.errors.load(Relaxed)),
            redis_fallbacks: fleet.map_or(0, |f| f.fallbacks.load(Relaxed)),
            fleet_hits: fleet.map_or(0, |f| f.hits.load(Relaxed)),
            fleet_decisions_dropped: fleet.map_or(0, |f| f.decisions_dropped.load(Relaxed)),
            content: self
                .content
                .as_deref()
                .map(content_snapshot)
                .unwrap_or_default(),
        })
    }

    /// `/readyz`: each upstream's state (it answered recently, or answers
    /// a probe now; the upstreams are checked at once), judged by
    /// [`Readiness`]'s rule. Checking updates `portcullis_upstream_up`.
    pub async fn readiness(&self) -> Readiness {
        let mut states: Vec<UpstreamState> = self
            .upstreams
            .iter()
            .map(|u| UpstreamState {
                registry: u.registry.clone(),
                required: u.required(),
                error: Some("the readiness check did not finish".to_owned()),
            })
            .collect();
        let mut probes = tokio::task::JoinSet::new();
        for (i, upstream) in self.upstreams.iter().enumerate() {
            let upstream = Arc::clone(upstream);
            probes.spawn(async move {
                let state = upstream
                    .reachability(READY_WINDOW, READY_PROBE_TIMEOUT)
                    .await;
                (i, state)
            });
        }
        let shared = async {
            match self.verifier.fleet() {
                Some(fleet) => Some(fleet.ping().await.map_err(|e| e.to_string())),
                None => None,
            }
        };
        let upstreams = async {
            while let Some(joined) = probes.join_next().await {
                // A check that panicked leaves its upstream unreachable.
                let Ok((i, state)) = joined else { continue };
                if let Some(s) = states.get_mut(i) {
                    s.error = state.err().map(|e| e.to_string());
                }
            }
        };
        let (shared, ()) = tokio::join!(shared, upstreams);
        Readiness {
            upstreams: states,
            shared,
        }
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
