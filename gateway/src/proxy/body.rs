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
