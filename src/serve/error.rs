//! Why a request could not be served ([`ServeError`]) and where that came
//! from ([`Source`]). The HTTP edge ([`super::edge`]) turns it into the
//! response.

use std::sync::Arc;
use std::time::Duration;

use http::{header, Response, StatusCode};

use crate::clientauth::AuthError;
use crate::oci::error::ErrorCode;
use crate::oci::Digest;
use crate::policy::Decision;
use crate::routing::{Route, RouteError};
use crate::upstream::{UpstreamBody, UpstreamError};
use crate::verify::VerifyError;

/// Largest upstream error body read to pass its OCI error on.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Longest an upstream error body may take to arrive: past it, the error
/// is answered without the upstream's message (an upstream trickling an
/// error body must not hold a blob request, which has no total deadline).
const MAX_ERROR_BODY_TIME: Duration = Duration::from_secs(10);

/// Where an error came from: what it says about whose fault it is, and so
/// how it is logged and answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The request is malformed or not one the proxy serves (4xx).
    Client,
    /// An upstream failed, answered an error, or sent content that does
    /// not check out.
    Upstream,
    /// The policy refused the image or blob (403).
    Policy,
    /// The proxy itself: a limit of its own was reached.
    Internal,
}

/// Why a pull request could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The request itself is not one the proxy serves.
    #[error(transparent)]
    Route(#[from] RouteError),
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
    /// `clientAuth` is on and the request did not authenticate.
    #[error("{}", unauthenticated_message(reason))]
    Unauthenticated {
        reason: AuthError,
        /// The `WWW-Authenticate` challenge.
        challenge: http::HeaderValue,
    },
    /// The authenticated identity may not pull this repository
    /// (`clientAuth.access`).
    #[error("{identity} may not pull {repository} (clientAuth.access)")]
    AccessDenied {
        identity: String,
        repository: String,
    },
    /// No upstream fetch slot came free within `timeouts.read`.
    #[error("{}", busy_message(*per_connection, *limit))]
    Busy {
        /// The connection's own cap (`limits.upstreamFetchesPerConnection`)
        /// rather than the proxy's (`limits.upstreamFetches`).
        per_connection: bool,
        limit: usize,
    },
}

/// What a client that did not authenticate is told: never which part of
/// its credentials was wrong (the log has that).
fn unauthenticated_message(reason: &AuthError) -> String {
    match reason {
        AuthError::Missing => "authentication required".to_owned(),
        AuthError::Rejected(_) => "authentication failed: credentials refused".to_owned(),
        AuthError::Busy => AuthError::Busy.to_string(),
    }
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

impl ServeError {
    /// Where the error came from.
    pub fn source_kind(&self) -> Source {
        match self {
            ServeError::Route(_)
            | ServeError::BadRange(_)
            | ServeError::Unauthenticated { .. }
            | ServeError::AccessDenied { .. } => Source::Client,
            ServeError::Upstream(_)
            | ServeError::ManifestTooLarge { .. }
            | ServeError::DigestMismatch { .. }
            | ServeError::UpstreamStatus { .. }
            | ServeError::UpstreamInvalid { .. }
            | ServeError::CannotVerify { .. } => Source::Upstream,
            ServeError::Denied { .. } => Source::Policy,
            ServeError::Busy { .. } => Source::Internal,
        }
    }
}

/// What an upstream's error response means for the client: its OCI error
/// when it sent one, else a code chosen by status.
pub(super) async fn upstream_failure(
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
        crate::upstream::read_bounded(response.into_body(), MAX_ERROR_BODY),
    )
    .await
    .ok()
    .and_then(Result::ok)
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
