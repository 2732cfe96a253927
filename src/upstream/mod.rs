//! The client side: one [`Upstream`] per configured registry, with pooled
//! keep-alive connections (HTTP/1.1, HTTP/2 over TLS by ALPN), connect and
//! read timeouts, redirect following, and authentication.
//!
//! This layer knows the registry protocol only as far as authentication
//! needs it; what the responses mean is the [`crate::serve`] layer's job.
//! [`client`] builds the HTTP(S) clients (also for alert webhooks).
//!
//! May use: `crate::config` (upstream settings, timeouts), `crate::metrics`
//! (round-trip metrics), `crate::oci`. Must never use: verify, breakglass,
//! audit, alerts, serve and the layers above them.

pub mod auth;
pub mod body;
pub mod client;
pub mod credentials;
pub mod offline;
mod referrers;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;

use crate::config::{AuthConfig, Timeouts, UpstreamConfig};
use crate::store::ContentStore;
use auth::{AuthState, Challenge, Secret};
pub use body::{read_bounded, BodyError, ReadError, UpstreamBody};
use client::{ClientError, HttpClient};
use credentials::CredentialSource;
pub use referrers::Referrers;

/// Redirects followed per request (registries redirect blobs to storage
/// once; more than a few hops is a loop or a hostile upstream).
pub const MAX_REDIRECTS: usize = 5;
/// Idle pooled connections kept per upstream host.
pub const MAX_IDLE_PER_HOST: usize = 32;
/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Largest token-endpoint response read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// Why a request to an upstream failed before it produced a response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach upstream {upstream}: {reason}")]
    Connect { upstream: String, reason: String },
    #[error("upstream {upstream} did not answer within {after:?}")]
    Timeout { upstream: String, after: Duration },
    /// A total deadline passed while the upstream was still answering: a
    /// trickle that the idle read timeout never catches.
    #[error("upstream {upstream} did not deliver {what} within {after:?} (timeouts.{setting})")]
    Deadline {
        upstream: String,
        what: String,
        after: Duration,
        /// The `timeouts` key that set the deadline.
        setting: &'static str,
    },
    #[error("upstream {upstream} failed: {reason}")]
    Protocol { upstream: String, reason: String },
    #[error("cannot authenticate to upstream {upstream}: {reason}")]
    Auth { upstream: String, reason: String },
    #[error("upstream {upstream} redirect failed: {reason}")]
    Redirect { upstream: String, reason: String },
    /// The upstream cannot be reached and the content store keeps nothing
    /// for the request: the image was never pulled (and verified) through
    /// this proxy, or not all of its evidence was.
    #[error("upstream {upstream} cannot be reached ({reason}), and the content store holds no copy of {what}: it was never verified through this proxy")]
    Unreachable {
        upstream: String,
        reason: String,
        what: String,
    },
}

/// Could not build an upstream client from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("upstream {registry}: cannot read CA file {path}: {reason}")]
    CaFile {
        registry: String,
        path: String,
        reason: String,
    },
    /// `auth.passwordFile` or `auth.dockerConfig` gave no credentials.
    #[error("upstream {registry}: auth.{field}: {reason}")]
    Credentials {
        registry: String,
        field: &'static str,
        reason: String,
    },
    #[error("upstream {registry}: TLS setup failed: {reason}")]
    Tls { registry: String, reason: String },
    #[error("upstream {registry}: invalid url {url}")]
    Url { registry: String, url: String },
    #[error("policy: {0}")]
    Policy(String),
    #[error("{0}")]
    AttestationStore(String),
}

/// How long an upstream that answered 404 (or 405/501) on the referrers
/// API is assumed to still lack it: a registry upgraded meanwhile is
/// asked again after this.
pub const NO_REFERRERS_API_MEMORY: Duration = Duration::from_secs(300);

/// One upstream registry and the means to talk to it.
#[derive(Debug)]
pub struct Upstream {
    /// Canonical registry host, as configured.
    pub registry: String,
    /// `upstreams[].required`: `/readyz` needs this upstream reachable.
    required: bool,
    base: Uri,
    client: HttpClient,
    auth: AuthState,
    /// Token endpoints on other origins that may receive the credentials
    /// (`auth.tokenRealms`).
    token_realms: Vec<Uri>,
    /// Whether the "realm on another host gets no credentials" warning
    /// was logged (it is logged once).
    warned_foreign_realm: AtomicBool,
    timeouts: Timeouts,
    /// Milliseconds since `epoch` at which the upstream (its own origin,
    /// not a token realm or a storage host it redirected to) last answered
    /// anything (0: never). Drives `/readyz`.
    last_answer_ms: AtomicU64,
    /// Milliseconds since `epoch` at which a request to the upstream's own
    /// origin last got no answer (0: never). An answer older than this
    /// no longer vouches for the upstream.
    last_failure_ms: AtomicU64,
    /// Milliseconds since `epoch` at which the upstream last showed it has
    /// no referrers API (0: not seen). Evidence lookups then go straight
    /// to the referrers tag for [`NO_REFERRERS_API_MEMORY`].
    no_referrers_api_ms: AtomicU64,
    epoch: Instant,
    metrics: Option<crate::metrics::UpstreamMetrics>,
    /// The content store its answers are kept in (`cache.content`).
    offline: Option<Arc<ContentStore>>,
    /// Answers the store gave because the upstream could not be reached.
    stale_answers: AtomicU64,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig, timeouts: Timeouts) -> Result<Upstream, SetupError> {
        let registry = config.registry.clone();
        let base_url = config.base_url();
        let base: Uri = base_url.parse().map_err(|_| SetupError::Url {
            registry: registry.clone(),
            url: base_url.clone(),
        })?;
        let credentials = match &config.auth {
            None => None,
            Some(auth) => Some(credential_source(&registry, auth)?),
        };
        let token_realms = config
            .auth
            .iter()
            .flat_map(|auth| auth.token_realms.iter())
            .map(|realm| {
                realm.parse::<Uri>().map_err(|_| SetupError::Url {
                    registry: registry.clone(),
                    url: realm.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let client = build_client(config, &timeouts)?;
        Ok(Upstream {
            registry,
            required: config.required,
            base,
            client,
            auth: AuthState::new(credentials),
            token_realms,
            warned_foreign_realm: AtomicBool::new(false),
            timeouts,
            last_answer_ms: AtomicU64::new(0),
            last_failure_ms: AtomicU64::new(0),
            no_referrers_api_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            metrics: None,
            offline: None,
            stale_answers: AtomicU64::new(0),
        })
    }

    /// Keeps what this upstream answers in `store`, and answers from it
    /// when the upstream cannot be reached ([`offline`]).
    pub fn with_store(mut self, store: Arc<ContentStore>) -> Upstream {
        self.offline = Some(store);
        self
    }

    /// Answers given from the content store because this upstream could
    /// not be reached.
    pub fn stale_answers(&self) -> u64 {
        self.stale_answers.load(Ordering::Relaxed)
    }

    /// Reports upstream round trips to `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Upstream {
        self.metrics = Some(crate::metrics::UpstreamMetrics::new(
            metrics,
            &self.registry,
        ));
        self
    }

    /// Sends `method path_and_query` for `repository` and returns the final
    /// response: after authenticating if challenged and following
    /// redirects. Any status is returned as a response; only transport
    /// failures are errors.
    pub async fn fetch(
        &self,
        method: Method,
        path_and_query: &str,
        repository: &str,
        headers: &HeaderMap,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        self.request(
            method,
            path_and_query,
            repository,
            headers,
            Bytes::new(),
            Access::Pull,
        )
        .await
    }

    /// Like [`Upstream::fetch`], with a request body and the access the
    /// token must grant (`portcullis sign` pushes).
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        repository: &str,
        headers: &HeaderMap,
        body: Bytes,
        access: Access,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let kept = match (&self.offline, access) {
            (Some(_), Access::Pull) if method == Method::GET => offline::Kept::of(path_and_query),
            _ => None,
        };
        match (&self.offline, kept) {
            (Some(store), Some(kept)) => {
                self.request_kept(store, kept, path_and_query, repository, headers)
                    .await
            }
            _ => {
                self.request_online(method, path_and_query, repository, headers, body, access)
                    .await
            }
        }
    }

    /// Like [`Upstream::fetch`], but what it answers is not kept in the
    /// content store: blob bodies the store's own downloads keep.
    pub async fn fetch_unkept(
        &self,
        method: Method,
        path_and_query: &str,
        repository: &str,
        headers: &HeaderMap,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        self.request_online(
            method,
            path_and_query,
            repository,
            headers,
            Bytes::new(),
            Access::Pull,
        )
        .await
    }

    /// [`Upstream::request`] on the network only.
    async fn request_online(
        &self,
        method: Method,
        path_and_query: &str,
        repository: &str,
        headers: &HeaderMap,
        body: Bytes,
        access: Access,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let scope = format!("repository:{repository}:{}", access.actions());
        let mut uri = self.uri_for(path_and_query)?;
        let mut authorization = self.proactive_authorization(&scope).await?;
        let mut challenged = false;
        let mut redirects = 0;
        loop {
            let response = self
                .send(
                    method.clone(),
                    uri.clone(),
                    headers,
                    authorization.as_ref(),
                    body.clone(),
                )
                .await?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !challenged && self.is_own_host(&uri) {
                challenged = true;
                if authorization.is_some() {
                    // What was sent was refused: a token revoked or expired
                    // early, or credentials rotated. Drop the token; the
                    // challenge is answered with credentials resolved
                    // afresh, once. A second 401 is the upstream's answer.
                    self.auth.forget_token(&scope).await;
                }
                let challenge = response
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(Challenge::parse);
                if let Some(challenge) = challenge {
                    if let Some(auth) = self.answer_challenge(challenge, &scope).await? {
                        authorization = Some(auth);
                        continue;
                    }
                }
            }
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(self.redirect_error(format!("more than {MAX_REDIRECTS} redirects")));
                }
                let location = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| self.redirect_error("redirect without Location".into()))?;
                uri = resolve_location(&uri, location)
                    .ok_or_else(|| self.redirect_error(format!("bad Location {location:?}")))?;
                if !self.is_own_host(&uri) {
                    // Credentials for the registry never go to storage hosts.
                    authorization = None;
                }
                continue;
            }
            let (parts, body) = response.into_parts();
            let body = UpstreamBody::new(body, self.timeouts.read, self.registry.clone());
            return Ok(Response::from_parts(parts, body));
        }
    }

    /// The timeouts this upstream's requests run under.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// Runs `work` (requests to this upstream and the reading of their
    /// bodies) under a total deadline: once `after` has passed, `work` is
    /// dropped, and with it its upstream connections, and the answer is
    /// [`UpstreamError::Deadline`]. `setting` names the `timeouts` key;
    /// `what` is made only when the deadline passes.
    pub async fn within<T, E: From<UpstreamError>>(
        &self,
        after: Duration,
        setting: &'static str,
        what: impl FnOnce() -> String,
        work: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        match tokio::time::timeout(after, work).await {
            Ok(result) => result,
            Err(_) => Err(E::from(UpstreamError::Deadline {
                upstream: self.registry.clone(),
                what: what(),
                after,
                setting,
            })),
        }
    }

    /// Remembers that the referrers API answered "not here".
    fn mark_no_referrers_api(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.no_referrers_api_ms
            .store(now.max(1), Ordering::Relaxed);
    }

    /// Whether the upstream showed, recently, that it has no referrers API
    /// (so a lookup can skip that round trip and read the referrers tag).
    fn known_without_referrers_api(&self) -> bool {
        let seen = self.no_referrers_api_ms.load(Ordering::Relaxed);
        seen != 0
            && (self.epoch.elapsed().as_millis() as u64).saturating_sub(seen)
                <= NO_REFERRERS_API_MEMORY.as_millis() as u64
    }

    /// Whether `/readyz` needs this upstream reachable
    /// (`upstreams[].required`).
    pub fn required(&self) -> bool {
        self.required
    }

    /// Whether the upstream answered anything within `window`, and no
    /// request to it has failed since (nor in the same millisecond: then
    /// the caller had better ask again).
    pub fn answered_within(&self, window: Duration) -> bool {
        let last = self.last_answer_ms.load(Ordering::Relaxed);
        let failed = self.last_failure_ms.load(Ordering::Relaxed);
        let now = self.epoch.elapsed().as_millis() as u64;
        last > failed && now.saturating_sub(last) <= window.as_millis() as u64
    }

    /// Whether the upstream is reachable: it answered within `window` (see
    /// [`Upstream::answered_within`]), or it answers a [`Upstream::probe`]
    /// now, within `probe_timeout`. The answer is what
    /// `portcullis_upstream_up` shows until the next check or request.
    pub async fn reachability(
        &self,
        window: Duration,
        probe_timeout: Duration,
    ) -> Result<(), UpstreamError> {
        if self.answered_within(window) {
            self.report_up(true);
            return Ok(());
        }
        let probed = self.probe(probe_timeout).await;
        match &probed {
            Ok(()) => self.report_up(true),
            Err(_) => self.failed(),
        }
        probed
    }

    /// The upstream's own origin answered a request.
    fn answered(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_answer_ms.store(now.max(1), Ordering::Relaxed);
        self.report_up(true);
    }

    /// A request to the upstream's own origin got no answer.
    fn failed(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_failure_ms.store(now.max(1), Ordering::Relaxed);
        self.report_up(false);
    }

    fn report_up(&self, up: bool) {
        if let Some(metrics) = &self.metrics {
            metrics.up(up);
        }
    }

    /// Asks the upstream's `/v2/` once; any HTTP answer means reachable.
    /// (A probe that times out is not recorded as a failure here:
    /// [`Upstream::reachability`] does that.)
    pub async fn probe(&self, timeout: Duration) -> Result<(), UpstreamError> {
        let uri = self.uri_for("/v2/")?;
        let headers = HeaderMap::new();
        let request = tokio::time::timeout(
            timeout,
            self.send(Method::GET, uri, &headers, None, Bytes::new()),
        );
        match request.await {
            Ok(result) => result.map(|_| ()),
            Err(_) => Err(UpstreamError::Timeout {
                upstream: self.registry.clone(),
                after: timeout,
            }),
        }
    }

    /// Turns a `Location` from this upstream into a path and query on it;
    /// `None` if it points at another host.
    pub fn same_host_path(&self, location: &str) -> Option<String> {
        let base = self.uri_for("/").ok()?;
        let uri = resolve_location(&base, location)?;
        if !self.is_own_host(&uri) {
            return None;
        }
        uri.path_and_query().map(|p| p.to_string())
    }

    fn uri_for(&self, path_and_query: &str) -> Result<Uri, UpstreamError> {
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query =
            Some(
                path_and_query
                    .parse()
                    .map_err(|_| UpstreamError::Protocol {
                        upstream: self.registry.clone(),
                        reason: format!("cannot build a request for {path_and_query:?}"),
                    })?,
            );
        Uri::from_parts(parts).map_err(|e| UpstreamError::Protocol {
            upstream: self.registry.clone(),
            reason: e.to_string(),
        })
    }

    /// Whether the token endpoint `realm` may receive the upstream
    /// credentials: it is on the upstream's own origin (scheme, host and
    /// port), or configured in `auth.tokenRealms` (same origin and path).
    /// Never a plain-http realm for an https upstream.
    fn realm_gets_credentials(&self, realm: &str) -> bool {
        let Ok(realm) = realm.parse::<Uri>() else {
            return false;
        };
        let Some(origin) = Origin::of(&realm) else {
            return false;
        };
        if self.base.scheme_str() == Some("https") && origin.scheme != "https" {
            return false;
        }
        if Origin::of(&self.base).as_ref() == Some(&origin) {
            return true;
        }
        self.token_realms.iter().any(|trusted| {
            Origin::of(trusted).as_ref() == Some(&origin)
                && normal_path(trusted.path()) == normal_path(realm.path())
        })
    }

    fn is_own_host(&self, uri: &Uri) -> bool {
        uri.authority() == self.base.authority() && uri.scheme() == self.base.scheme()
    }

    fn redirect_error(&self, reason: String) -> UpstreamError {
        UpstreamError::Redirect {
            upstream: self.registry.clone(),
            reason,
        }
    }

    async fn send(
        &self,
        method: Method,
        uri: Uri,
        headers: &HeaderMap,
        authorization: Option<&Secret>,
        body: Bytes,
    ) -> Result<Response<hyper::body::Incoming>, UpstreamError> {
        // Only the upstream's own origin speaks for its reachability: a
        // token realm or a storage host it redirects to may be elsewhere.
        let own_origin = self.is_own_host(&uri);
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(h) = request.headers_mut() {
            h.extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));
            h.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
            if let Some(auth) = authorization {
                h.insert(header::AUTHORIZATION, auth.header().clone());
            }
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| UpstreamError::Protocol {
                upstream: self.registry.clone(),
                reason: e.to_string(),
            })?;
        let after = self.timeouts.read;
        let started = Instant::now();
        let result = tokio::time::timeout(after, self.client.request(request)).await;
        if let Some(metrics) = &self.metrics {
            let status = match &result {
                Ok(Ok(r)) => Ok(r.status().as_u16()),
                Ok(Err(e)) if e.is_connect() => Err("connect-error"),
                Ok(Err(_)) => Err("protocol-error"),
                Err(_) => Err("timeout"),
            };
            metrics.response(status, started.elapsed());
        }
        if own_origin {
            match &result {
                Ok(Ok(_)) => self.answered(),
                _ => self.failed(),
            }
        }
        match result {
            Err(_) => Err(UpstreamError::Timeout {
                upstream: self.registry.clone(),
                after,
            }),
            Ok(Err(e)) => {
                let reason = error_chain(&e);
                if e.is_connect() {
                    if reason.contains("timed out") {
                        return Err(UpstreamError::Timeout {
                            upstream: self.registry.clone(),
                            after: self.timeouts.connect,
                        });
                    }
                    Err(UpstreamError::Connect {
                        upstream: self.registry.clone(),
                        reason,
                    })
                } else {
                    Err(UpstreamError::Protocol {
                        upstream: self.registry.clone(),
                        reason,
                    })
                }
            }
            Ok(Ok(response)) => Ok(response),
        }
    }
}

/// What a request needs the registry to allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Pull,
    Push,
}

impl Access {
    fn actions(self) -> &'static str {
        match self {
            Access::Pull => "pull",
            Access::Push => "pull,push",
        }
    }
}

const USER_AGENT: &str = concat!("portcullis/", env!("CARGO_PKG_VERSION"));

/// The credential source `auth` configures: `username` with
/// `passwordFile`, or `dockerConfig` (config validation makes it exactly
/// one; anything else is refused here too).
fn credential_source(registry: &str, auth: &AuthConfig) -> Result<CredentialSource, SetupError> {
    let error = |field: &'static str, reason: String| SetupError::Credentials {
        registry: registry.to_owned(),
        field,
        reason,
    };
    match (&auth.username, &auth.password_file, &auth.docker_config) {
        (Some(username), Some(password_file), None) => {
            CredentialSource::password_file(registry, username, password_file)
                .map_err(|e| error("passwordFile", e.to_string()))
        }
        (None, None, Some(docker_config)) => {
            CredentialSource::docker_config(registry, docker_config)
                .map_err(|e| error("dockerConfig", e.to_string()))
        }
        _ => Err(error(
            "dockerConfig",
            "give username and passwordFile, or dockerConfig".into(),
        )),
    }
}

fn build_client(config: &UpstreamConfig, timeouts: &Timeouts) -> Result<HttpClient, SetupError> {
    let options = client::Options {
        ca_file: config.ca_file.as_deref(),
        connect_timeout: Some(timeouts.connect),
        tcp_keepalive: Some(Duration::from_secs(60)),
        pool_idle_timeout: POOL_IDLE_TIMEOUT,
        max_idle_per_host: MAX_IDLE_PER_HOST,
    };
    client::build(&options).map_err(|e| match e {
        ClientError::CaFile(reason) => SetupError::CaFile {
            registry: config.registry.clone(),
            path: config
                .ca_file
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            reason,
        },
        ClientError::Tls(reason) => SetupError::Tls {
            registry: config.registry.clone(),
            reason,
        },
    })
}

/// Scheme, host and port (the scheme's default when not given), lower
/// case: what decides whether two URLs are the same party.
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    fn of(uri: &Uri) -> Option<Origin> {
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return None,
        };
        let authority = uri.authority()?;
        if authority.as_str().contains('@') {
            // userinfo in a realm: not a plain token endpoint.
            return None;
        }
        Some(Origin {
            scheme,
            host: authority.host().to_ascii_lowercase(),
            port: authority.port_u16().unwrap_or(default_port),
        })
    }
}

fn normal_path(path: &str) -> &str {
    if path.is_empty() {
        "/"
    } else {
        path
    }
}

/// Resolves a `Location` header against the request URI.
fn resolve_location(base: &Uri, location: &str) -> Option<Uri> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.parse().ok();
    }
    let mut parts = base.clone().into_parts();
    let path = if location.starts_with('/') {
        location.to_owned()
    } else {
        let dir = base.path().rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        format!("{dir}/{location}")
    };
    parts.path_and_query = Some(path.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// An error and its sources, joined, for messages.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(url: &str, realms: &[&str]) -> Upstream {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "pw").unwrap();
        let config = UpstreamConfig {
            registry: "r.example".into(),
            url: Some(url.into()),
            prefix: None,
            default: true,
            required: false,
            auth: Some(crate::config::AuthConfig {
                username: Some("u".into()),
                password_file: Some(pw),
                docker_config: None,
                token_realms: realms.iter().map(|r| r.to_string()).collect(),
            }),
            ca_file: None,
        };
        Upstream::new(&config, Timeouts::default()).unwrap()
    }

    #[test]
    fn credentials_go_only_to_own_or_configured_realms() {
        let u = upstream("https://r.example", &["https://auth.example/token"]);
        for ok in [
            "https://r.example/token",
            "https://R.Example:443/v2/token",
            "https://auth.example/token",
            "https://auth.example:443/token",
        ] {
            assert!(u.realm_gets_credentials(ok), "{ok}");
        }
        for no in [
            "http://r.example/token",
            "https://r.example:8443/token",
            "https://evil.example/token",
            "https://auth.example/other",
            "http://auth.example/token",
            "https://user@r.example/token",
            "not a url",
        ] {
            assert!(!u.realm_gets_credentials(no), "{no}");
        }
        let plain = upstream("http://127.0.0.1:5000", &[]);
        assert!(plain.realm_gets_credentials("http://127.0.0.1:5000/token"));
        assert!(!plain.realm_gets_credentials("http://127.0.0.2:5000/token"));
        assert!(!plain.realm_gets_credentials("http://127.0.0.1:5001/token"));
    }

    #[test]
    fn a_failure_outweighs_an_earlier_answer_until_the_next_one() {
        let u = upstream("http://127.0.0.1:1", &[]);
        let window = Duration::from_secs(30);
        let tick = || std::thread::sleep(Duration::from_millis(3));
        assert!(!u.answered_within(window), "never answered");
        u.answered();
        assert!(u.answered_within(window));
        tick();
        u.failed();
        assert!(!u.answered_within(window));
        tick();
        u.answered();
        assert!(u.answered_within(window));
        tick();
        assert!(!u.answered_within(Duration::ZERO), "older than the window");
    }

    #[tokio::test]
    async fn reachability_probes_an_upstream_that_failed_and_reports_it() {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        // Nothing listens on port 1.
        let u = upstream("http://127.0.0.1:1", &[]).with_metrics(Arc::clone(&metrics));
        u.answered();
        assert!(u
            .reachability(Duration::from_secs(30), Duration::from_secs(2))
            .await
            .is_ok());
        let text = metrics.encode(crate::metrics::Snapshot::default());
        assert!(
            text.contains(r#"portcullis_upstream_up{upstream="r.example"} 1"#),
            "{text}"
        );
        std::thread::sleep(Duration::from_millis(3));
        u.failed();
        let probed = u
            .reachability(Duration::from_secs(30), Duration::from_secs(2))
            .await;
        assert!(
            matches!(probed, Err(UpstreamError::Connect { .. })),
            "{probed:?}"
        );
        let text = metrics.encode(crate::metrics::Snapshot::default());
        assert!(
            text.contains(r#"portcullis_upstream_up{upstream="r.example"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn locations() {
        let base: Uri = "http://r:5000/v2/a/blobs/sha256:x".parse().unwrap();
        assert_eq!(
            resolve_location(&base, "https://s3/x?sig=1")
                .unwrap()
                .to_string(),
            "https://s3/x?sig=1"
        );
        assert_eq!(
            resolve_location(&base, "/other?q").unwrap().to_string(),
            "http://r:5000/other?q"
        );
        assert_eq!(
            resolve_location(&base, "rel").unwrap().to_string(),
            "http://r:5000/v2/a/blobs/rel"
        );
    }
}
