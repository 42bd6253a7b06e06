//! A body fed through a bounded channel: what the filter chain lets through, sent on as it
//! comes, with backpressure. Dropping it (the peer finished or went away) runs `on_drop`.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::sync::mpsc;

use super::body::BoxError;

pub type FrameSender = mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

/// A body and the sender that feeds it.
pub fn channel(capacity: usize) -> (FrameSender, ChannelBody) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, ChannelBody { rx, on_drop: None })
}

impl ChannelBody {
    pub fn on_drop(mut self, f: impl FnOnce() + Send + Sync + 'static) -> ChannelBody {
        self.on_drop = Some(Box::new(f));
        self
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for ChannelBody {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}
