//! The admin listener's endpoints: `/metrics`, the JSON API behind the
//! dashboard (`/-/api/decisions`, `/-/api/summary`, `/-/api/policy`) and
//! the dashboard itself (`/-/ui`, one self-contained page: no CDN).
//!
//! With `admin.tokenFile`, every admin endpoint requires
//! `Authorization: Bearer <token>` except the health endpoints (answered
//! before this module), the dashboard page itself and the `/` redirect to
//! it: they carry no data, and the page must load to ask for the token.
//! The page keeps the token in the tab's `sessionStorage` and sends it as
//! that header; there is no cookie, so nothing is sent by the browser on
//! its own (no cross-site request can use it).
//!
//! May use: `serve` (the app whose state it shows), `audit`, `metrics`,
//! `policy`. Must never use: server, reload, app, cli.

use std::path::Path;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use sha2::{Digest as _, Sha256};

use crate::audit::Query;
use crate::metrics::CONTENT_TYPE as METRICS_CONTENT_TYPE;
use crate::policy::{Policy, Rule};
use crate::serve::{body_from, App, ProxyBody};

/// The dashboard page.
const UI: &str = include_str!("ui.html");
/// The marker in the page saying whether the API needs a token.
const UI_AUTH_NONE: &str = r#"<meta name="portcullis-admin-auth" content="none">"#;
const UI_AUTH_TOKEN: &str = r#"<meta name="portcullis-admin-auth" content="token">"#;
/// Shortest admin token accepted.
pub const MIN_TOKEN_LEN: usize = 16;
/// What a refused request is told to present.
const CHALLENGE: &str = r#"Bearer realm="portcullis-admin""#;
const CHALLENGE_INVALID: &str = r#"Bearer realm="portcullis-admin", error="invalid_token""#;

/// The admin bearer token. Only its SHA-256 is kept, so comparisons take
/// the same time whatever the length or content of what is presented, and
/// `Debug` has nothing to show.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// Reads the token from `path` (one line; a trailing newline is
    /// ignored). It must be at least [`MIN_TOKEN_LEN`] visible ASCII
    /// characters, so it fits in a header as it is.
    pub fn from_file(path: &Path) -> Result<AdminToken, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let token = text.trim_end_matches(['\n', '\r']);
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "the token in {} must be at least {MIN_TOKEN_LEN} characters",
                path.display()
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "the token in {} must be visible ASCII characters only (no spaces)",
                path.display()
            ));
        }
        Ok(AdminToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Whether `headers` carry `Authorization: Bearer <this token>`.
    fn presented_in(&self, headers: &HeaderMap) -> Presented {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Presented::Nothing;
        };
        let bytes = value.as_bytes();
        let token = match bytes.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => &bytes[7..],
            _ => return Presented::Wrong,
        };
        let digest: [u8; 32] = Sha256::digest(token.trim_ascii()).into();
        let difference = digest
            .iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if difference == 0 {
            Presented::Right
        } else {
            Presented::Wrong
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Presented {
    Nothing,
    Wrong,
    Right,
}

/// Paths served without the token: they carry no data.
fn is_public(path: &str) -> bool {
    matches!(path, "/" | "/-/ui" | "/-/ui/")
}

/// Answers one admin request (other than the health endpoints); with a
/// `token`, refuses every data endpoint that does not present it.
pub async fn handle<B>(
    app: &App,
    request: &Request<B>,
    token: Option<&AdminToken>,
) -> Response<ProxyBody> {
    if let Some(token) = token {
        if !is_public(request.uri().path()) {
            match token.presented_in(request.headers()) {
                Presented::Right => {}
                Presented::Nothing => {
                    return unauthorized(CHALLENGE, "the admin API requires a bearer token\n")
                }
                Presented::Wrong => {
                    return unauthorized(CHALLENGE_INVALID, "invalid admin token\n")
                }
            }
        }
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"read-only\n"),
        );
    }
    let params: Vec<(String, String)> = request
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let param = |k: &str| {
        params
            .iter()
            .find(|(key, v)| key == k && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    match request.uri().path() {
        "/metrics" => respond(
            StatusCode::OK,
            METRICS_CONTENT_TYPE,
            Bytes::from(app.metrics_text().await),
        ),
        "/-/api/decisions" => {
            let query = Query {
                verdict: param("verdict"),
                repository: param("repository"),
                rule: param("rule"),
                limit: param("limit").and_then(|l| l.parse().ok()).unwrap_or(100),
            };
            let (decisions, partial) = app.observer.recent_fleet(&query).await;
            let list: Vec<&crate::audit::DecisionRecord> =
                decisions.iter().map(|d| d.as_ref()).collect();
            let scope = match (app.observer.fleet(), &partial) {
                (None, _) => "replica",
                (Some(_), None) => "fleet",
                (Some(_), Some(_)) => "replica (fleet unavailable)",
            };
            let mut body = serde_json::json!({ "decisions": list, "scope": scope });
            if let Some(why) = partial {
                body["warning"] = serde_json::Value::String(why);
            }
            json(&body)
        }
        "/-/api/summary" => {
            let minutes = param("minutes")
                .and_then(|m| m.parse::<u64>().ok())
                .unwrap_or(60)
                .clamp(1, 24 * 60);
            json(&serde_json::to_value(app.observer.summary(minutes)).unwrap_or_default())
        }
        "/-/api/policy" => json(&describe_policy(&app.verifier.policy())),
        "/-/ui" | "/-/ui/" => {
            let page = match token {
                None => Bytes::from_static(UI.as_bytes()),
                Some(_) => Bytes::from(UI.replacen(UI_AUTH_NONE, UI_AUTH_TOKEN, 1)),
            };
            let mut r = respond(StatusCode::OK, "text/html; charset=utf-8", page);
            // The page (and its token form) is never framed by another site.
            r.headers_mut()
                .insert("x-frame-options", HeaderValue::from_static("DENY"));
            r.headers_mut().insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            r
        }
        "/" => {
            let mut r = respond(StatusCode::FOUND, "text/plain", Bytes::new());
            r.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/-/ui"));
            r
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"not found\n"),
        ),
    }
}

fn unauthorized(challenge: &'static str, message: &'static str) -> Response<ProxyBody> {
    let mut r = respond(
        StatusCode::UNAUTHORIZED,
        "text/plain; charset=utf-8",
        Bytes::from_static(message.as_bytes()),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    r
}

fn json(value: &serde_json::Value) -> Response<ProxyBody> {
    respond(
        StatusCode::OK,
        "application/json",
        Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
    )
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<ProxyBody> {
    let len = body.len();
    let mut r = Response::new(body_from(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The policy as data, for `/-/api/policy` and the dashboard.
fn describe_policy(policy: &Policy) -> serde_json::Value {
    let rule = |r: &Rule| {
        serde_json::json!({
            "scope": r.source.to_string(),
            "evaluationMode": r.evaluation.to_string(),
            "enforcementMode": r.enforcement.to_string(),
            "requireAttestationsBy": r.attestors,
        })
    };
    serde_json::json!({
        "configured": policy.configured,
        "revision": policy.revision,
        "allowlist": policy
            .allowlist()
            .iter()
            .map(|p| p.as_str().to_owned())
            .chain(policy.pinned_allowlist())
            .collect::<Vec<_>>(),
        "repositoryRules": policy.repository_rules().map(|(_, r)| rule(r)).collect::<Vec<_>>(),
        "defaultRule": rule(policy.default_rule()),
        "attestors": policy.attestors_by_name().iter().map(|a| serde_json::json!({
            "name": a.name,
            "keys": a.keys.iter().map(|k| serde_json::json!({
                "id": k.id,
                "algorithm": k.key.algorithm().name(),
            })).collect::<Vec<_>>(),
            "signatureRepository": a.signature_repository,
            "keyless": a.keyless.as_ref().map(|k| serde_json::json!({
                "identities": k.identities.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "trustedRoot": k.root_source,
                "requireTlog": k.require_tlog,
                "requireSct": k.require_sct,
            })),
        })).collect::<Vec<_>>(),
        "ignored": policy.ignored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(dir: &tempfile::TempDir, text: &str) -> Result<AdminToken, String> {
        let path = dir.path().join("token");
        std::fs::write(&path, text).unwrap();
        AdminToken::from_file(&path)
    }

    fn headers(authorization: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(authorization).unwrap(),
        );
        h
    }

    #[test]
    fn tokens_are_checked_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let t = token(&dir, "0123456789abcdef-admin\n").unwrap();
        assert!(!format!("{t:?}").contains("0123456789"));
        assert_eq!(t.presented_in(&HeaderMap::new()), Presented::Nothing);
        assert_eq!(
            t.presented_in(&headers("Bearer 0123456789abcdef-admin")),
            Presented::Right
        );
        assert_eq!(
            t.presented_in(&headers("bearer 0123456789abcdef-admin")),
            Presented::Right
        );
        for wrong in [
            "Bearer 0123456789abcdef-admix",
            "Bearer 0123456789abcdef-admin0",
            "Bearer ",
            "Basic 0123456789abcdef-admin",
            "0123456789abcdef-admin",
        ] {
            assert_eq!(t.presented_in(&headers(wrong)), Presented::Wrong, "{wrong}");
        }
        assert!(token(&dir, "short\n").is_err());
        assert!(token(&dir, "has a space in it, long enough").is_err());
        assert!(AdminToken::from_file(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn the_page_says_whether_a_token_is_needed() {
        assert_eq!(UI.matches(UI_AUTH_NONE).count(), 1);
        assert!(is_public("/-/ui") && is_public("/"));
        assert!(!is_public("/metrics") && !is_public("/-/api/policy") && !is_public("/x"));
    }
}
