//! Registry auth: Basic and bearer checks on registry requests, the
//! challenges they answer with, and the token endpoint.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};

use super::config::{FakeConfig, TokenAuth};
use super::response::{full, header_str, oci_error, Resp};
use super::{lock, Shared};

/// A token the fake handed out, and what it grants for how long.
pub(super) struct IssuedToken {
    scopes: Vec<String>,
    issued: Instant,
    lifetime: Duration,
}

fn challenge(shared: &Shared, t: &TokenAuth, repo: Option<&str>, error: Option<&str>) -> String {
    let realm = if t.foreign_realm {
        format!("{}/token", shared.storage_url)
    } else {
        format!("http://{}/token", shared.addr)
    };
    let scope = repo.map(|r| format!("repository:{r}:pull"));
    if t.quirky_challenge {
        let mut c = format!("Bearer service=\"{}\"", t.service);
        if let Some(s) = &scope {
            c.push_str(&format!(", scope=\"{s}\""));
        }
        c.push_str(&format!(",   realm=\"{realm}\""));
        c.push_str(&format!(
            ", error=\"{}\"",
            error.unwrap_or("insufficient_scope")
        ));
        c
    } else {
        let mut c = format!("Bearer realm=\"{realm}\",service=\"{}\"", t.service);
        if let Some(s) = &scope {
            c.push_str(&format!(",scope=\"{s}\""));
        }
        if let Some(e) = error {
            c.push_str(&format!(",error=\"{e}\""));
        }
        c
    }
}

fn basic_ok(headers: &HeaderMap, user: &str, pass: &str) -> bool {
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    );
    header_str(headers, "authorization") == Some(want.as_str())
}

/// A `401 UNAUTHORIZED` OCI error carrying `challenge` in `WWW-Authenticate`.
fn unauthorized(message: &str, challenge: &str) -> Resp {
    let mut r = oci_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message);
    r.headers_mut().insert(
        "www-authenticate",
        http::HeaderValue::from_str(challenge).expect("header"),
    );
    r
}

/// `None` when the request is authorised, else the 401 to send.
pub(super) fn check_auth(
    shared: &Shared,
    cfg: &FakeConfig,
    repo: Option<&str>,
    headers: &HeaderMap,
) -> Option<Resp> {
    if let Some((user, pass)) = &cfg.require_basic {
        if !basic_ok(headers, user, pass) {
            return Some(unauthorized(
                "authentication required",
                "Basic realm=\"fake-registry\"",
            ));
        }
    }
    if let Some(t) = &cfg.require_token {
        let presented =
            header_str(headers, "authorization").and_then(|v| v.strip_prefix("Bearer "));
        let mut error = None;
        if let Some(tok) = presented {
            let tokens = lock(&shared.tokens);
            match tokens.get(tok) {
                Some(issued) if issued.issued.elapsed() >= issued.lifetime => {
                    shared.expired_token_uses.fetch_add(1, Ordering::SeqCst);
                    error = Some("invalid_token");
                }
                Some(issued) => {
                    let allowed = match repo {
                        None => true,
                        Some(repo) => issued.scopes.iter().any(|s| scope_allows_pull(s, repo)),
                    };
                    if allowed {
                        return None;
                    }
                    error = Some("insufficient_scope");
                }
                None => error = Some("invalid_token"),
            }
        }
        return Some(unauthorized(
            "authentication required",
            &challenge(shared, t, repo, error),
        ));
    }
    None
}

/// `repository:<repo>:pull[,push]` grants pull on `repo`.
fn scope_allows_pull(scope: &str, repo: &str) -> bool {
    let Some(rest) = scope.strip_prefix("repository:") else {
        return false;
    };
    let Some((name, actions)) = rest.rsplit_once(':') else {
        return false;
    };
    name == repo && actions.split(',').any(|a| a == "pull" || a == "*")
}

pub(super) fn serve_token(
    shared: &Shared,
    cfg: &FakeConfig,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Resp {
    let Some(t) = &cfg.require_token else {
        return oci_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no token endpoint");
    };
    if let Some((user, pass)) = &t.basic {
        if !basic_ok(headers, user, pass) {
            return unauthorized("bad token credentials", "Basic realm=\"fake-token\"");
        }
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let service = pairs
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.as_str());
    if service != Some(t.service.as_str()) {
        return oci_error(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            "wrong or missing service",
        );
    }
    let scopes: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .collect();
    let seq = shared.token_seq.fetch_add(1, Ordering::SeqCst);
    let nonce = Sha256::digest(format!("{seq}-{:?}-{}", Instant::now(), shared.addr));
    let token = format!("faketok{}x{}", seq, &hex::encode(nonce)[..40]);
    lock(&shared.tokens).insert(
        token.clone(),
        IssuedToken {
            scopes,
            issued: Instant::now(),
            lifetime: Duration::from_secs(t.expires_in.unwrap_or(60)),
        },
    );
    let mut body = serde_json::Map::new();
    if t.access_token_only {
        body.insert("access_token".into(), token.into());
    } else {
        body.insert("token".into(), token.clone().into());
        body.insert("access_token".into(), token.into());
    }
    if let Some(e) = t.expires_in {
        body.insert("expires_in".into(), e.into());
    }
    body.insert("issued_at".into(), "2025-01-01T00:00:00Z".into());
    full(
        StatusCode::OK,
        "application/json",
        serde_json::Value::Object(body).to_string(),
    )
}
