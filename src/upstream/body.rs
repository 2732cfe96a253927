//! Upstream response bodies with an idle-read timeout: a stalled upstream
//! fails the request instead of hanging it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// Why reading an upstream body failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream {upstream} stopped sending for {after:?}")]
    IdleTimeout { upstream: String, after: Duration },
    #[error("upstream {upstream} connection failed mid-body: {source}")]
    Upstream {
        upstream: String,
        source: hyper::Error,
    },
}

impl BodyError {
    /// The timeout this is, as an [`super::UpstreamError`] (so a body that
    /// stalls answers `504` like a response that never came); `None` for
    /// other failures.
    pub fn as_timeout(&self) -> Option<super::UpstreamError> {
        match self {
            BodyError::IdleTimeout { upstream, after } => Some(super::UpstreamError::Timeout {
                upstream: upstream.clone(),
                after: *after,
            }),
            BodyError::Upstream { .. } => None,
        }
    }

    /// [`BodyError::as_timeout`] of a boxed error (as `Limited` returns
    /// them).
    pub fn timeout_in(error: &(dyn std::error::Error + 'static)) -> Option<super::UpstreamError> {
        error
            .downcast_ref::<BodyError>()
            .and_then(BodyError::as_timeout)
    }
}

/// An upstream body that errors if no frame arrives for `idle`; or, when
/// the upstream could not be reached, what the content store kept of its
/// earlier answer ([`super::offline`]).
pub struct UpstreamBody {
    inner: Inner,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    upstream: String,
    /// Sees every byte; given the whole body at its end.
    tap: Option<Tap>,
}

enum Inner {
    Live(Incoming),
    /// Bytes from the store, sent as one frame.
    Stored(Option<Bytes>),
}

/// Collects a body (up to `limit` bytes) and hands it to `on_end` when it
/// ends cleanly; a longer body or a failed one is not handed on.
pub(super) struct Tap {
    collected: bytes::BytesMut,
    limit: usize,
    on_end: Option<Box<dyn FnOnce(Bytes) + Send>>,
}

impl Tap {
    pub(super) fn new(limit: usize, on_end: Box<dyn FnOnce(Bytes) + Send>) -> Tap {
        Tap {
            collected: bytes::BytesMut::new(),
            limit,
            on_end: Some(on_end),
        }
    }

    fn see(&mut self, data: &Bytes) {
        if self.collected.len() + data.len() > self.limit {
            self.on_end = None;
        }
        if self.on_end.is_some() {
            self.collected.extend_from_slice(data);
        }
    }

    fn end(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end(std::mem::take(&mut self.collected).freeze());
        }
    }
}

impl UpstreamBody {
    pub fn new(inner: Incoming, idle: Duration, upstream: String) -> UpstreamBody {
        UpstreamBody {
            inner: Inner::Live(inner),
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            upstream,
            tap: None,
        }
    }

    /// A body of `bytes` from the content store.
    pub(super) fn stored(bytes: Bytes, upstream: String) -> UpstreamBody {
        UpstreamBody {
            inner: Inner::Stored(Some(bytes)),
            idle: Duration::MAX,
            deadline: Box::pin(tokio::time::sleep(Duration::ZERO)),
            upstream,
            tap: None,
        }
    }

    pub(super) fn with_tap(mut self, tap: Tap) -> UpstreamBody {
        self.tap = Some(tap);
        self
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let inner = match &mut this.inner {
            Inner::Stored(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Live(inner) => inner,
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let idle = this.idle;
                this.deadline.as_mut().reset(Instant::now() + idle);
                if let Some(tap) = this.tap.as_mut() {
                    match &frame {
                        Some(Ok(f)) => {
                            if let Some(data) = f.data_ref() {
                                tap.see(data);
                            }
                        }
                        Some(Err(_)) => this.tap = None,
                        None => tap.end(),
                    }
                }
                Poll::Ready(frame.map(|r| {
                    r.map_err(|source| BodyError::Upstream {
                        upstream: this.upstream.clone(),
                        source,
                    })
                }))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::IdleTimeout {
                    upstream: this.upstream.clone(),
                    after: this.idle,
                }))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Live(inner) => inner.is_end_stream(),
            Inner::Stored(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Live(inner) => inner.size_hint(),
            Inner::Stored(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// Why a bounded read of an upstream body failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The body is longer than the limit (whatever it declared).
    #[error("larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The upstream stopped sending: a timeout, answered like a response
    /// that never came.
    #[error(transparent)]
    Stalled(super::UpstreamError),
    /// The connection broke mid-body.
    #[error("{0}")]
    Broken(String),
}

/// Reads a whole upstream body of at most `limit` bytes: the one bounded
/// read every small upstream document (manifest, listing, evidence, token)
/// goes through. Blobs are never read whole; they stream.
pub async fn read_bounded<B>(body: B, limit: usize) -> Result<Bytes, ReadError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ReadError::TooLarge { limit }
            } else if let Some(timeout) = BodyError::timeout_in(e.as_ref()) {
                ReadError::Stalled(timeout)
            } else {
                ReadError::Broken(e.to_string())
            }
        })
}
