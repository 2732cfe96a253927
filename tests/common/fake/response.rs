//! Response building blocks: the body type, whole and error responses, and
//! bodies that trickle in one byte at a time.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// Size of the chunks blobs are streamed in.
pub(super) const BLOB_CHUNK: usize = 64 * 1024;

/// Response body: whole bytes, or a channel fed by a task (for streaming,
/// aborting and stalling).
pub enum FakeBody {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

impl Body for FakeBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            FakeBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            FakeBody::Channel(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, FakeBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            FakeBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            FakeBody::Full(None) => SizeHint::with_exact(0),
            FakeBody::Channel(_) => SizeHint::default(),
        }
    }
}

pub(super) type Resp = Response<FakeBody>;

pub(super) fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let body: Bytes = body.into();
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(FakeBody::Full(Some(body)))
        .expect("response")
}

pub(super) fn oci_error(status: StatusCode, code: &str, message: &str) -> Resp {
    let body = serde_json::json!({"errors":[{"code":code,"message":message,"detail":null}]});
    full(status, "application/json", body.to_string())
}

/// Go's `http.NotFound`: what a registry answers for a path it has no route for.
pub(super) fn page_not_found() -> Resp {
    full(
        StatusCode::NOT_FOUND,
        "text/plain; charset=utf-8",
        "404 page not found\n",
    )
}

pub(super) fn empty(status: StatusCode) -> http::response::Builder {
    Response::builder().status(status)
}

/// A `307` to `location`, without a body.
pub(super) fn redirect(location: String) -> Resp {
    empty(StatusCode::TEMPORARY_REDIRECT)
        .header("location", location)
        .header("content-length", 0)
        .body(FakeBody::Full(None))
        .expect("response")
}

pub(super) fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// A body that sends `bytes` one byte per `every`.
pub(super) fn trickle(bytes: Bytes, every: Duration) -> FakeBody {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        for i in 0..bytes.len() {
            tokio::time::sleep(every).await;
            if tx.send(Ok(bytes.slice(i..i + 1))).await.is_err() {
                return;
            }
        }
    });
    FakeBody::Channel(rx)
}

/// `response` with its whole body sent one byte per `every` (a body that
/// is already streamed is left alone).
pub(super) fn trickled(response: Resp, every: Duration) -> Resp {
    let (parts, body) = response.into_parts();
    let FakeBody::Full(Some(bytes)) = body else {
        return Response::from_parts(parts, body);
    };
    Response::from_parts(parts, trickle(bytes, every))
}
