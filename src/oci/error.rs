//! OCI error codes and the error envelope (`{"errors":[{code, message,
//! detail}]}`): the words every layer uses to say why a request failed.
//! Which error becomes which status and code is decided at the HTTP edge
//! ([`crate::serve::edge`]); this module only defines the vocabulary.

use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::InvalidReference;

/// Longest reason phrase sent; status lines are read into small buffers.
const MAX_REASON_LEN: usize = 200;

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
}
