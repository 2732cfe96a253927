//! OCI error codes, the error envelope, and the one place where every
//! layer's error becomes an HTTP response.
//!
//! Layers return their own error enums ([`crate::routing::RouteError`],
//! [`crate::upstream::UpstreamError`], [`crate::serve::ServeError`]); the
//! `From` impls below decide status and OCI code for each. Internal details
//! are logged by the caller; what reaches the client is a message a person
//! can act on, never a secret.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::oci::InvalidReference;
use crate::policy::Decision;
use crate::verify::VerifyError;

/// Longest reason phrase sent; status lines are read into small buffers.
const MAX_REASON_LEN: usize = 200;
use crate::routing::RouteError;
use crate::serve::{body_from, ProxyBody, ServeError};
use crate::upstream::UpstreamError;

/// Error codes of the OCI distribution spec, plus the legacy Docker codes
/// clients still understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    BlobUnknown,
    DigestInvalid,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    TagInvalid,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    Toomanyrequests,
    /// distribution's code for "service unavailable"; used when an upstream
    /// cannot be reached or does not answer in time.
    Unavailable,
    /// distribution's catch-all code.
    Unknown,
}

/// An error as the client sees it: status, OCI code, message, detail.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP/1.1 reason phrase, for clients that show only the status line.
    pub reason: Option<String>,
    /// Extra response headers (e.g. `Content-Range` on a 416).
    pub headers: http::HeaderMap,
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub detail: serde_json::Value,
}

#[derive(Serialize)]
struct Envelope<'a> {
    errors: [EnvelopeEntry<'a>; 1],
}

#[derive(Serialize)]
struct EnvelopeEntry<'a> {
    code: ErrorCode,
    message: &'a str,
    detail: &'a serde_json::Value,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            reason: None,
            headers: http::HeaderMap::new(),
            status,
            code,
            message: message.into(),
            detail: serde_json::Value::Null,
        }
    }

    pub fn with_detail(mut self, detail: serde_json::Value) -> ApiError {
        self.detail = detail;
        self
    }

    /// Sets the reason phrase; characters HTTP does not allow there are
    /// replaced.
    pub fn with_reason(mut self, reason: String) -> ApiError {
        let clean: String = reason
            .chars()
            .map(|c| {
                if c == '\t' || (' '..='~').contains(&c) {
                    c
                } else {
                    '?'
                }
            })
            .take(MAX_REASON_LEN)
            .collect();
        self.reason = Some(clean);
        self
    }

    /// The OCI error envelope `{"errors":[{"code","message","detail"}]}`.
    pub fn body(&self) -> Bytes {
        let envelope = Envelope {
            errors: [EnvelopeEntry {
                code: self.code,
                message: &self.message,
                detail: &self.detail,
            }],
        };
        // Serializing plain strings and JSON values cannot fail.
        Bytes::from(serde_json::to_vec(&envelope).unwrap_or_default())
    }

    /// Renders the error; a HEAD response carries the headers only.
    pub fn into_response(self, head: bool) -> Response<ProxyBody> {
        let body = self.body();
        let len = body.len();
        let mut response = Response::new(if head {
            body_from(Bytes::new())
        } else {
            body_from(body)
        });
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.extend(self.headers);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if let Some(reason) = self.reason {
            if let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(reason) {
                response.extensions_mut().insert(phrase);
            }
        }
        response
    }
}

impl From<InvalidReference> for ApiError {
    fn from(e: InvalidReference) -> ApiError {
        let code = match e {
            InvalidReference::Name(_) => ErrorCode::NameInvalid,
            InvalidReference::Tag(_) => ErrorCode::TagInvalid,
            InvalidReference::Digest(_) => ErrorCode::DigestInvalid,
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> ApiError {
        let message = e.to_string();
        match e {
            RouteError::Invalid(inner) => inner.into(),
            RouteError::MethodNotAllowed => ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::Unsupported,
                message,
            ),
            RouteError::NotFound => {
                ApiError::new(StatusCode::NOT_FOUND, ErrorCode::Unsupported, message)
            }
            RouteError::NoUpstream { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NameUnknown, message)
            }
            RouteError::BadQuery(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::Unsupported, message)
            }
        }
    }
}

impl From<UpstreamError> for ApiError {
    fn from(e: UpstreamError) -> ApiError {
        let message = e.to_string();
        match e {
            UpstreamError::Timeout { .. } | UpstreamError::Deadline { .. } => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, ErrorCode::Unavailable, message)
            }
            UpstreamError::Auth { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, ErrorCode::Unauthorized, message)
            }
            UpstreamError::Connect { .. }
            | UpstreamError::Protocol { .. }
            | UpstreamError::Redirect { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, ErrorCode::Unavailable, message)
            }
        }
    }
}

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> ApiError {
        let message = e.to_string();
        match e {
            ServeError::Upstream(inner) => inner.into(),
            ServeError::ManifestTooLarge { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::ManifestInvalid, message)
            }
            ServeError::DigestMismatch { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, ErrorCode::ManifestInvalid, message)
            }
            ServeError::BadRange(_) => ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::Unsupported,
                message,
            ),
            ServeError::UpstreamStatus {
                headers,
                status,
                code,
                upstream_message,
                detail,
                ..
            } => {
                let status = client_status_for_upstream(status);
                let mut error = ApiError::new(status, code, upstream_message.unwrap_or(message))
                    .with_detail(detail);
                error.headers = *headers;
                error
            }
            ServeError::UpstreamInvalid { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, ErrorCode::Unknown, message)
            }
            ServeError::Denied { decision, .. } => {
                ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Denied, message)
                    .with_detail(decision_detail(&decision))
                    .with_reason(format!("Forbidden: {}", decision.short_reason()))
            }
            ServeError::Busy { per_connection, .. } => {
                let (status, code) = if per_connection {
                    (StatusCode::TOO_MANY_REQUESTS, ErrorCode::Toomanyrequests)
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
                };
                let mut error = ApiError::new(status, code, message);
                error
                    .headers
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                error
            }
            ServeError::CannotVerify { source, .. } => {
                let status = match source {
                    VerifyError::Upstream(
                        UpstreamError::Timeout { .. } | UpstreamError::Deadline { .. },
                    )
                    | VerifyError::Deadline { .. } => StatusCode::GATEWAY_TIMEOUT,
                    _ => StatusCode::BAD_GATEWAY,
                };
                ApiError::new(
                    status,
                    ErrorCode::Unavailable,
                    format!("{message}; not serving an image that could not be verified"),
                )
            }
        }
    }
}

/// The machine-readable explanation of a decision, in the error detail.
fn decision_detail(decision: &Decision) -> serde_json::Value {
    serde_json::json!({
        "rule": decision.rule.to_string(),
        "enforcementMode": decision.enforcement.to_string(),
        "attestors": decision.attestors.iter().map(|a| serde_json::json!({
            "name": a.name,
            "satisfied": a.satisfied,
            "summary": a.summary(),
            "evidence": a.evidence.iter().map(|e| serde_json::json!({
                "source": e.source,
                "result": e.check.describe(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// Which status a client gets when the upstream answered `upstream` with an
/// error. Client errors that describe the request (not found, bad request,
/// rate limits, range) pass through; an upstream that refused the proxy's
/// own credentials, or failed, is a bad gateway.
fn client_status_for_upstream(upstream: StatusCode) -> StatusCode {
    match upstream.as_u16() {
        400 | 403 | 404 | 405 | 416 | 429 => upstream,
        _ => StatusCode::BAD_GATEWAY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_shape() {
        let e = ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Denied, "no")
            .with_detail(serde_json::json!({"a": 1}));
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"errors":[{"code":"DENIED","message":"no","detail":{"a":1}}]})
        );
        let e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Toomanyrequests,
            "",
        );
        assert!(String::from_utf8_lossy(&e.body()).contains("\"TOOMANYREQUESTS\""));
    }

    #[test]
    fn upstream_statuses() {
        assert_eq!(
            client_status_for_upstream(StatusCode::NOT_FOUND),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            client_status_for_upstream(StatusCode::UNAUTHORIZED),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            client_status_for_upstream(StatusCode::SERVICE_UNAVAILABLE),
            StatusCode::BAD_GATEWAY
        );
    }
}
