//! The admin listener's endpoints: `/metrics`, the JSON API behind the
//! dashboard (`/-/api/decisions`, `/-/api/summary`, `/-/api/policy`) and
//! the dashboard itself (`/-/ui`, one self-contained page: no CDN).

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use crate::audit::Query;
use crate::metrics::CONTENT_TYPE as METRICS_CONTENT_TYPE;
use crate::serve::{body_from, App, ProxyBody};

/// The dashboard page.
const UI: &str = include_str!("ui.html");

/// Answers one admin request (other than the health endpoints).
pub async fn handle<B>(app: &App, request: &Request<B>) -> Response<ProxyBody> {
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
            let decisions = app.observer.recent(&query);
            let list: Vec<&crate::audit::DecisionRecord> =
                decisions.iter().map(|d| d.as_ref()).collect();
            let body = serde_json::json!({ "decisions": list });
            json(&body)
        }
        "/-/api/summary" => {
            let minutes = param("minutes")
                .and_then(|m| m.parse::<u64>().ok())
                .unwrap_or(60)
                .clamp(1, 24 * 60);
            json(&serde_json::to_value(app.observer.summary(minutes)).unwrap_or_default())
        }
        "/-/api/policy" => json(&app.verifier.policy().describe()),
        "/-/ui" | "/-/ui/" => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from_static(UI.as_bytes()),
        ),
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
