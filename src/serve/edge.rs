//! The HTTP edge: the one place an error becomes a status, an OCI error
//! code, a message and a reason phrase. [`ServeError::source_kind`] says where an error
//! came from (the client, an upstream, the policy, or the proxy itself);
//! [`api_error`] decides what the client sees for it; [`response`] renders
//! it. What reaches the client is a message a person can act on, never a
//! secret.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::{body_from, ProxyBody, RequestLog, ServeError};
use crate::clientauth::AuthError;
use crate::oci::error::{ApiError, ErrorCode};
use crate::policy::Decision;
use crate::routing::RouteError;
use crate::upstream::UpstreamError;
use crate::verify::VerifyError;

/// Answers a failed request: logs `e` with its source (failures the
/// client gets a 5xx for at warn, refusals at info) and renders it.
pub fn failed(e: ServeError, head: bool, log: &RequestLog) -> Response<ProxyBody> {
    let source = e.source_kind();
    let error = api_error(e);
    log.in_scope(|| {
        if error.status.is_server_error() {
            tracing::warn!(?source, code = ?error.code, error = %error.message, "request failed");
        } else {
            tracing::info!(?source, code = ?error.code, error = %error.message, "request refused");
        }
    });
    response(error, head)
}

/// Renders `error`; a HEAD response carries the headers only.
pub fn response(error: ApiError, head: bool) -> Response<ProxyBody> {
    let body = error.body();
    let len = body.len();
    let mut response = Response::new(if head {
        body_from(Bytes::new())
    } else {
        body_from(body)
    });
    *response.status_mut() = error.status;
    let headers = response.headers_mut();
    headers.extend(error.headers);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(reason) = error.reason {
        if let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(reason) {
            response.extensions_mut().insert(phrase);
        }
    }
    response
}

fn route_error(e: RouteError) -> ApiError {
    {
        let message = e.to_string();
        match e {
            RouteError::Invalid(inner) => ApiError::from(inner),
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

fn upstream_error(e: UpstreamError) -> ApiError {
    {
        let message = e.to_string();
        match e {
            UpstreamError::Timeout { .. } | UpstreamError::Deadline { .. } => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, ErrorCode::Unavailable, message)
            }
            UpstreamError::Auth { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, ErrorCode::Unauthorized, message)
            }
            UpstreamError::Connect { .. }
            | UpstreamError::Unreachable { .. }
            | UpstreamError::Protocol { .. }
            | UpstreamError::Redirect { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, ErrorCode::Unavailable, message)
            }
        }
    }
}

/// What the client sees for `e`: status, OCI code, message, detail and
/// reason phrase. The one place this is decided.
pub fn api_error(e: ServeError) -> ApiError {
    {
        let message = e.to_string();
        match e {
            ServeError::Route(inner) => route_error(inner),
            ServeError::Upstream(inner) => upstream_error(inner),
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
            ServeError::Unauthenticated { reason, challenge } => {
                if reason == AuthError::Busy {
                    let mut error = ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        ErrorCode::Toomanyrequests,
                        message,
                    );
                    error
                        .headers
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return error;
                }
                let mut error =
                    ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message);
                error.headers.insert(header::WWW_AUTHENTICATE, challenge);
                error
            }
            ServeError::AccessDenied { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Denied, message)
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
