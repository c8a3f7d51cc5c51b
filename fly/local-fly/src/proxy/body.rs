//! Bodies: the client's request body as the proxy keeps it for a replay,
//! and a response body that holds its machine's load until it ends.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::HeaderMap;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::route::LoadGuard;

/// What the proxy answers its clients with.
pub(super) type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// A body of `bytes`, whole.
pub(super) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The client's request body.
///
/// Fly replays "the original request", body included, and "requests
/// larger than 1MB cannot be replayed": so the proxy reads a body up to
/// that limit before it sends the request anywhere. A body within the
/// limit is kept and can be sent any number of times; a larger one is
/// sent once, streamed (what was read first, then the rest as it comes).
pub(super) enum ClientBody {
    Kept {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    TooLarge {
        prefix: VecDeque<Bytes>,
        rest: Incoming,
    },
    /// A too-large body that has been sent: it cannot be sent again.
    Sent,
}

impl ClientBody {
    /// Reads `body` up to `limit` bytes.
    pub(super) async fn read(mut body: Incoming, limit: usize) -> Result<Self, hyper::Error> {
        if body.size_hint().lower() > limit as u64 {
            return Ok(Self::TooLarge {
                prefix: VecDeque::new(),
                rest: body,
            });
        }
        let mut chunks: VecDeque<Bytes> = VecDeque::new();
        let mut length = 0usize;
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            match frame.into_data() {
                Ok(data) => {
                    length = length.saturating_add(data.len());
                    chunks.push_back(data);
                    if length > limit {
                        return Ok(Self::TooLarge {
                            prefix: chunks,
                            rest: body,
                        });
                    }
                }
                Err(frame) => {
                    if let Ok(more) = frame.into_trailers() {
                        trailers.get_or_insert_with(HeaderMap::new).extend(more);
                    }
                }
            }
        }
        let data = if chunks.len() == 1 {
            chunks.pop_front().unwrap_or_default()
        } else {
            let mut whole = Vec::with_capacity(length);
            for chunk in chunks {
                whole.extend_from_slice(&chunk);
            }
            Bytes::from(whole)
        };
        Ok(Self::Kept { data, trailers })
    }

    /// Whether the body can be sent again (for a replay).
    pub(super) fn replayable(&self) -> bool {
        matches!(self, Self::Kept { .. })
    }

    /// The body to send to a machine: a copy of a kept body, or a too-large
    /// body itself (once; `None` afterwards).
    pub(super) fn outgoing(&mut self) -> Option<Outgoing> {
        match self {
            Self::Kept { data, trailers } => Some(Outgoing::Kept {
                data: (!data.is_empty()).then(|| data.clone()),
                length: data.len() as u64,
                trailers: trailers.clone(),
            }),
            Self::TooLarge { .. } => match std::mem::replace(self, Self::Sent) {
                Self::TooLarge { prefix, rest } => Some(Outgoing::Streamed { prefix, rest }),
                _ => None,
            },
            Self::Sent => None,
        }
    }
}

/// A request body on its way to a machine.
pub(super) enum Outgoing {
    Kept {
        data: Option<Bytes>,
        length: u64,
        trailers: Option<HeaderMap>,
    },
    Streamed {
        prefix: VecDeque<Bytes>,
        rest: Incoming,
    },
}

impl Body for Outgoing {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Kept { data, trailers, .. } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            Self::Streamed { prefix, rest } => {
                if let Some(chunk) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Pin::new(rest).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Kept { data, trailers, .. } => data.is_none() && trailers.is_none(),
            Self::Streamed { prefix, rest } => prefix.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            // Trailers need chunked encoding: no length announced.
            Self::Kept {
                trailers: Some(_), ..
            } => SizeHint::new(),
            Self::Kept { length, .. } => SizeHint::with_exact(*length),
            Self::Streamed { prefix, rest } => {
                let queued: u64 = prefix.iter().map(|c| c.len() as u64).sum();
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(queued));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(queued));
                }
                hint
            }
        }
    }
}

/// A machine's response body, streamed to the client as it comes; the
/// request counts toward the machine's load until the body ends or the
/// client goes away.
pub(super) struct Guarded {
    pub(super) inner: Incoming,
    pub(super) guard: Option<LoadGuard>,
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
