//! The listeners and request dispatch: routing, the request log, delays,
//! auth, and handing each request to its endpoint.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{HeaderMap, Method, Request, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::blobs::{redirect_to_storage, serve_blob, serve_storage};
use super::config::FakeConfig;
use super::log::{Kind, RecordedRequest};
use super::manifests::{serve_manifest, serve_referrers, serve_tags};
use super::response::{full, oci_error, page_not_found, trickled, Resp};
use super::token::{check_auth, serve_token};
use super::{lock, Shared};

pub(super) async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    storage: bool,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let open = shared.open_connections.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak_connections.fetch_max(open, Ordering::SeqCst);
        tokio::spawn(async move {
            let counted = shared.clone();
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req, storage).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            counted.open_connections.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Parsed registry path.
enum Route {
    Base,
    Manifest(String, String),
    Blob(String, String),
    TagsList(String),
    Referrers(String, String),
    Token,
    Other,
}

fn route(path: &str) -> Route {
    if path == "/v2/" || path == "/v2" {
        return Route::Base;
    }
    if path == "/token" {
        return Route::Token;
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Route::Other;
    };
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Route::TagsList(name.to_string());
    }
    let Some((head, last)) = rest.rsplit_once('/') else {
        return Route::Other;
    };
    if let Some(name) = head.strip_suffix("/manifests") {
        Route::Manifest(name.to_string(), last.to_string())
    } else if let Some(name) = head.strip_suffix("/blobs") {
        Route::Blob(name.to_string(), last.to_string())
    } else if let Some(name) = head.strip_suffix("/referrers") {
        Route::Referrers(name.to_string(), last.to_string())
    } else {
        Route::Other
    }
}

impl Route {
    fn kind(&self) -> Kind {
        match self {
            Route::Base => Kind::Base,
            Route::Manifest(..) => Kind::Manifest,
            Route::Blob(..) => Kind::Blob,
            Route::TagsList(_) => Kind::TagsList,
            Route::Referrers(..) => Kind::Referrers,
            Route::Token => Kind::Token,
            Route::Other => Kind::Other,
        }
    }

    /// The repository a registry endpoint names.
    fn repo(&self) -> Option<String> {
        match self {
            Route::Manifest(n, _)
            | Route::Blob(n, _)
            | Route::TagsList(n)
            | Route::Referrers(n, _) => Some(n.clone()),
            Route::Base | Route::Token | Route::Other => None,
        }
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>, storage: bool) -> Resp {
    let trickle = lock(&shared.config).trickle_responses.clone();
    let kind = if storage {
        Kind::Storage
    } else {
        route(req.uri().path()).kind()
    };
    let response = respond(shared, req, storage).await;
    match trickle {
        Some((kinds, every)) if kinds.contains(&kind) => trickled(response, every),
        _ => response,
    }
}

/// Appends `req` to the request log.
fn record(
    shared: &Shared,
    req: &Request<Incoming>,
    kind: Kind,
    repo: Option<String>,
    storage: bool,
) {
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    lock(&shared.log).push(RecordedRequest {
        kind,
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().map(str::to_string),
        headers,
        repo,
        on_storage: storage,
    });
}

async fn respond(shared: Arc<Shared>, req: Request<Incoming>, storage: bool) -> Resp {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let method = req.method().clone();
    let storage_token = storage && path == "/token" && {
        let cfg = lock(&shared.config);
        cfg.require_token.as_ref().is_some_and(|t| t.foreign_realm)
    };
    let r = if storage_token {
        Route::Token
    } else if storage {
        Route::Other
    } else {
        route(&path)
    };
    let (kind, repo) = if storage && !storage_token {
        (Kind::Storage, None)
    } else {
        (r.kind(), r.repo())
    };
    record(&shared, &req, kind, repo.clone(), storage);

    let cfg = lock(&shared.config).clone();
    if cfg.never_respond {
        std::future::pending::<()>().await;
    }
    if let Some(d) = cfg.response_delay {
        if kind != Kind::Token {
            tokio::time::sleep(d).await;
        }
    }

    if storage && !storage_token {
        return serve_storage(&shared, &cfg, &method, &path, req.headers());
    }
    match r {
        Route::Token => serve_token(&shared, &cfg, query.as_deref(), req.headers()),
        Route::Other => page_not_found(),
        _ => match check_auth(&shared, &cfg, repo.as_deref(), req.headers()) {
            Some(denied) => denied,
            None => serve_registry(&shared, &cfg, r, &method, query.as_deref(), req.headers()),
        },
    }
}

/// An authorised request to a registry endpoint (not the token endpoint).
fn serve_registry(
    shared: &Shared,
    cfg: &FakeConfig,
    r: Route,
    method: &Method,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Resp {
    let head = method == Method::HEAD;
    if method != Method::GET && !head {
        return oci_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "the fake registry is read-only",
        );
    }
    if let (Route::Manifest(_, reference), Some(suffix)) = (&r, &cfg.fail_manifests_ending_with) {
        if reference.ends_with(suffix.as_str()) {
            return oci_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "fake: injected manifest failure",
            );
        }
    }
    match r {
        Route::Base => {
            let mut resp = full(StatusCode::OK, "application/json", "{}");
            resp.headers_mut().insert(
                "docker-distribution-api-version",
                http::HeaderValue::from_static("registry/2.0"),
            );
            resp
        }
        Route::Manifest(name, reference) => {
            serve_manifest(shared, cfg, &name, &reference, head, headers)
        }
        Route::Blob(name, digest) if cfg.redirect_blobs => {
            redirect_to_storage(shared, &name, &digest)
        }
        Route::Blob(name, digest) => serve_blob(shared, cfg, &name, &digest, head, headers),
        Route::TagsList(name) => serve_tags(shared, cfg, &name, query),
        Route::Referrers(name, digest) => serve_referrers(shared, cfg, &name, &digest),
        Route::Token | Route::Other => unreachable!("handled by respond"),
    }
}
