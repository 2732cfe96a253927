//! A response body that hashes what it streams and fails the response if
//! the digest does not match.
//!
//! The last chunk is held back until the upstream body has ended and the
//! digest is known: on a mismatch the client never receives the final
//! bytes, so a `Content-Length`-framed response is short and the client
//! cannot accept the blob (hyper aborts the connection on a body error).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::BoxError;
use crate::oci::{Digest, Hasher};

/// A blob's bytes did not hash to the digest they were requested by.
#[derive(Debug, thiserror::Error)]
#[error("blob content does not match {expected} (got {actual}); response aborted")]
pub struct BlobDigestMismatch {
    pub expected: Digest,
    pub actual: Digest,
}

/// Wraps a body and checks its digest while streaming.
pub struct VerifyingBody<B> {
    inner: B,
    expected: Digest,
    hasher: Option<Hasher>,
    held: Option<Bytes>,
    done: bool,
}

impl<B> VerifyingBody<B> {
    pub fn new(inner: B, expected: Digest) -> VerifyingBody<B> {
        let hasher = Hasher::new(expected.algorithm());
        VerifyingBody {
            inner,
            expected,
            hasher: Some(hasher),
            held: None,
            done: false,
        }
    }
}

impl<B> Body for VerifyingBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        // Trailers carry nothing a blob needs.
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if let Some(h) = this.hasher.as_mut() {
                        h.update(&data);
                    }
                    if let Some(previous) = this.held.replace(data) {
                        return Poll::Ready(Some(Ok(Frame::data(previous))));
                    }
                }
                Poll::Ready(None) => {
                    this.done = true;
                    let actual = match this.hasher.take() {
                        Some(h) => h.finish(),
                        None => return Poll::Ready(None),
                    };
                    if actual != this.expected {
                        return Poll::Ready(Some(Err(Box::new(BlobDigestMismatch {
                            expected: this.expected.clone(),
                            actual,
                        }))));
                    }
                    return Poll::Ready(this.held.take().map(|d| Ok(Frame::data(d))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A part of a blob was not as long as its `Content-Range` said.
#[derive(Debug, thiserror::Error)]
#[error("upstream sent {received} bytes for a {expected}-byte range; response aborted")]
pub struct RangeLengthMismatch {
    pub expected: u64,
    pub received: u64,
}

/// Wraps the body of a checked partial response: it must be exactly
/// `expected` bytes long. Past that the response fails before the excess
/// is sent; a short body fails at its end.
pub struct ExactLengthBody<B> {
    inner: B,
    expected: u64,
    received: u64,
    done: bool,
}

impl<B> ExactLengthBody<B> {
    pub fn new(inner: B, expected: u64) -> ExactLengthBody<B> {
        ExactLengthBody {
            inner,
            expected,
            received: 0,
            done: false,
        }
    }

    fn mismatch(&mut self, received: u64) -> BoxError {
        self.done = true;
        Box::new(RangeLengthMismatch {
            expected: self.expected,
            received,
        })
    }
}

impl<B> Body for ExactLengthBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let received = this.received.saturating_add(data.len() as u64);
                    if received > this.expected {
                        return Poll::Ready(Some(Err(this.mismatch(received))));
                    }
                    this.received = received;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.done = true;
                if this.received != this.expected {
                    let received = this.received;
                    return Poll::Ready(Some(Err(this.mismatch(received))));
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.expected - self.received.min(self.expected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;

    /// A body that yields the given chunks.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn chunks(parts: &[&'static [u8]]) -> Chunks {
        Chunks(parts.iter().map(|p| Bytes::from_static(p)).collect())
    }

    #[tokio::test]
    async fn passes_matching_content_whole() {
        let digest = Digest::sha256_of(b"hello world");
        let body = VerifyingBody::new(chunks(&[b"hello", b" ", b"world"]), digest);
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"hello world");
    }

    #[tokio::test]
    async fn withholds_last_chunk_on_mismatch() {
        let digest = Digest::sha256_of(b"something else");
        let mut body = VerifyingBody::new(chunks(&[b"hello", b" ", b"world"]), digest);
        let mut received = Vec::new();
        let mut failed = false;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => received.extend_from_slice(&f.into_data().unwrap()),
                Err(e) => {
                    assert!(e.to_string().contains("does not match"));
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed);
        assert_eq!(&received[..], b"hello ", "the final chunk must not be sent");
    }

    #[tokio::test]
    async fn exact_length_passes_only_the_announced_length() {
        let out = ExactLengthBody::new(chunks(&[b"hello", b" world"]), 11)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&out[..], b"hello world");
        let long = ExactLengthBody::new(chunks(&[b"hello", b" world"]), 5)
            .collect()
            .await;
        assert!(long.is_err());
        let short = ExactLengthBody::new(chunks(&[b"hello"]), 11)
            .collect()
            .await;
        assert!(short.is_err());
    }
}
