//! The one body type of the proxy: a streamed hyper body or bytes the proxy produced.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body in either direction.
pub struct ProxyBody(BoxBody<Bytes, BoxError>);

impl ProxyBody {
    pub fn streaming<B>(body: B) -> ProxyBody
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        ProxyBody(body.map_err(Into::into).boxed())
    }

    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        ProxyBody(
            Full::new(bytes.into())
                .map_err(|never| match never {})
                .boxed(),
        )
    }

    pub fn empty() -> ProxyBody {
        ProxyBody::full(Bytes::new())
    }
}

impl http_body::Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

/// A peer sent nothing of its body for the timeout while the proxy waited to read it.
#[derive(Debug)]
pub struct BodyTimeout {
    /// Whose body: "the client's request" or "the upstream's response".
    pub whose: &'static str,
    pub timeout: std::time::Duration,
}

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "nothing of {} body came for {:?}",
            self.whose, self.timeout
        )
    }
}

impl std::error::Error for BodyTimeout {}

/// A body that fails with [`BodyTimeout`] when its peer sends nothing for `timeout` while it
/// is being read: nginx's timeouts "between two successive read operations". Time in which
/// the proxy does not ask (its own peer is slow to take what it has) does not count.
pub struct IdleTimeout<B> {
    body: B,
    whose: &'static str,
    timeout: std::time::Duration,
    /// The timer of the current silence; kept between silences and reset, so a body read in
    /// many chunks does not allocate and register a timer for each.
    silence: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// Whether `silence` runs for the current wait (else it is left over from the last one).
    waiting: bool,
}

impl<B> IdleTimeout<B> {
    pub fn new(body: B, whose: &'static str, timeout: std::time::Duration) -> IdleTimeout<B> {
        IdleTimeout {
            body,
            whose,
            timeout,
            silence: None,
            waiting: false,
        }
    }
}

impl<B> http_body::Body for IdleTimeout<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|frame| frame.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let silence = this
                    .silence
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if !this.waiting {
                    silence
                        .as_mut()
                        .reset(tokio::time::Instant::now() + timeout);
                    this.waiting = true;
                }
                match std::future::Future::poll(silence.as_mut(), cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout {
                        whose: this.whose,
                        timeout,
                    })))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A client's request body as the proxy reads it: broken off after the client's body
/// timeout of silence.
pub type ClientBody = IdleTimeout<hyper::body::Incoming>;
