//! The per-request context: what every phase of one request reads (its
//! route, the client, the break-glass attempt, the log context), made
//! once by the route phase.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Instant;

use http::{HeaderMap, Method};

use super::ConnectionFetches;
use crate::audit::Client;
use crate::breakglass::Attempt;
use crate::routing::Route;

/// One request on its way through the phases.
#[derive(Debug)]
pub struct Ctx<'r> {
    pub route: Route,
    /// `route.canonical()`: `<registry>/<repository>`.
    pub canonical: String,
    pub head: bool,
    pub headers: &'r HeaderMap,
    pub client: &'r Client,
    pub log: &'r RequestLog,
    pub started: Instant,
    /// The request's break-glass header, checked once.
    pub glass: Attempt,
    /// The connection's upstream fetch slots, when it came through the
    /// server.
    pub connection: Option<&'r ConnectionFetches>,
}

/// One request's log context: id, method, path, peer and, once routed,
/// the canonical reference. The `request` span that carries them (and
/// that every line the serving layer logs for the request is written in)
/// is made on first use, so a request that logs nothing at an enabled
/// level (a warm pull) pays for no span; every line that is logged has
/// the same span fields as if the span had been made when the request
/// arrived. (With debug logging on, the server makes it up front and runs
/// the whole request in it.)
#[derive(Debug)]
pub struct RequestLog {
    id: u64,
    method: Method,
    uri: http::Uri,
    peer: SocketAddr,
    reference: OnceLock<String>,
    span: OnceLock<tracing::Span>,
}

impl RequestLog {
    pub fn new(id: u64, method: Method, uri: http::Uri, peer: SocketAddr) -> RequestLog {
        RequestLog {
            id,
            method,
            uri,
            peer,
            reference: OnceLock::new(),
            span: OnceLock::new(),
        }
    }

    /// The request's canonical `<registry>/<repository>`, once routed.
    pub fn set_reference(&self, reference: String) {
        if self.reference.set(reference).is_ok() {
            if let (Some(span), Some(reference)) = (self.span.get(), self.reference.get()) {
                span.record("reference", reference.as_str());
            }
        }
    }

    /// The `request` span, made now if it was not yet.
    pub fn span(&self) -> &tracing::Span {
        self.span.get_or_init(|| {
            let span = tracing::info_span!(
                target: "portcullis::server",
                "request",
                id = self.id,
                method = %self.method,
                path = %self.uri.path(),
                peer = %self.peer,
                reference = tracing::field::Empty,
            );
            if let Some(reference) = self.reference.get() {
                span.record("reference", reference.as_str());
            }
            span
        })
    }

    /// Runs `log` (which logs) in the request span. Callers check that the
    /// level they log at is enabled before calling this for debug lines,
    /// so that no span is made for nothing.
    pub fn in_scope<R>(&self, log: impl FnOnce() -> R) -> R {
        self.span().in_scope(log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Lines logged through a [`RequestLog`] carry the request span's
    /// fields (as the JSON log format writes them), whether the reference
    /// was known when the span was made or recorded after; nothing logged,
    /// no span made.
    #[test]
    fn request_log_makes_its_span_on_first_use_with_every_field() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(move || writer.clone())
            .finish();
        let peer: SocketAddr = "127.0.0.1:4711".parse().expect("address");
        let new = |id: u64| {
            RequestLog::new(
                id,
                Method::GET,
                "/v2/demo/app/manifests/v1?ns=r.io".parse().expect("uri"),
                peer,
            )
        };
        tracing::subscriber::with_default(subscriber, || {
            let quiet = new(1);
            quiet.set_reference("r.io/demo/app".into());
            assert!(quiet.span.get().is_none(), "no span without a line");

            let routed_first = new(2);
            routed_first.set_reference("r.io/demo/app".into());
            routed_first.in_scope(|| tracing::info!("first"));

            let logged_first = new(3);
            logged_first.in_scope(|| tracing::info!("before routing"));
            logged_first.set_reference("r.io/demo/web".into());
            logged_first.in_scope(|| tracing::warn!(status = 502, "after routing"));
        });
        let text = String::from_utf8(buffer.0.lock().expect("buffer").clone()).expect("utf-8");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        let span = |i: usize| &lines[i]["span"];
        for (i, id, reference) in [
            (0, 2, Some("r.io/demo/app")),
            (1, 3, None),
            (2, 3, Some("r.io/demo/web")),
        ] {
            assert_eq!(span(i)["name"], "request", "{text}");
            assert_eq!(span(i)["id"], id, "{text}");
            assert_eq!(span(i)["method"], "GET", "{text}");
            assert_eq!(span(i)["path"], "/v2/demo/app/manifests/v1", "{text}");
            assert_eq!(span(i)["peer"], "127.0.0.1:4711", "{text}");
            assert_eq!(span(i)["reference"].as_str(), reference, "{text}");
        }
        assert_eq!(lines[2]["status"], 502);
    }
}
