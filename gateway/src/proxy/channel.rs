//! A body fed through a bounded channel: what the filter chain lets through, sent on as it
//! comes, with backpressure. Dropping it (the peer finished or went away) runs `on_drop`.
//!
//! The sender ends the body in one of two ways. Dropped, the body ends whole; aborted
//! ([`FrameSender::abort`]), the body fails once what was sent before is read, so hyper
//! breaks the message off (HTTP/1.1: the connection closes without the last chunk; HTTP/2:
//! RST_STREAM) instead of ending it cleanly: a peer that went away mid-body is never passed on
//! as a complete, truncated body.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::sync::mpsc;

use super::body::BoxError;

type Item = Result<Frame<Bytes>, BoxError>;

#[derive(Clone)]
pub struct FrameSender {
    tx: mpsc::Sender<Item>,
    aborted: Arc<AtomicBool>,
}

impl FrameSender {
    /// Waits for room and sends; fails when the body was dropped.
    pub async fn send(&self, item: Item) -> Result<(), mpsc::error::SendError<Item>> {
        self.tx.send(item).await
    }

    /// Whether a send would wait: every slot holds a frame the reader has not taken.
    pub fn is_full(&self) -> bool {
        self.tx.capacity() == 0
    }

    /// Breaks the body off: its reader gets an error after the frames already sent.
    pub fn abort(self) {
        self.aborted.store(true, Ordering::Release);
    }
}

pub struct ChannelBody {
    rx: mpsc::Receiver<Item>,
    aborted: Arc<AtomicBool>,
    flushed_before_break: bool,
    /// Frames [`ChannelBody::take_whole`] took out and had to give back: read first.
    replay: VecDeque<Item>,
    on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

/// A body and the sender that feeds it.
pub fn channel(capacity: usize) -> (FrameSender, ChannelBody) {
    let (tx, rx) = mpsc::channel(capacity);
    let aborted = Arc::new(AtomicBool::new(false));
    (
        FrameSender {
            tx,
            aborted: Arc::clone(&aborted),
        },
        ChannelBody {
            rx,
            aborted,
            flushed_before_break: false,
            replay: VecDeque::new(),
            on_drop: None,
        },
    )
}

impl ChannelBody {
    pub fn on_drop(mut self, f: impl FnOnce() + Send + Sync + 'static) -> ChannelBody {
        self.on_drop = Some(Box::new(f));
        self
    }

    /// The whole body, when the sender has already sent it and ended it whole with data
    /// frames only: it can then leave as one piece of known length, which hyper writes without
    /// polling a channel. `None` otherwise (more may come, trailers, broken off), and the body
    /// reads on as before.
    pub fn take_whole(&mut self) -> Option<Bytes> {
        if !self.replay.is_empty() || !self.rx.is_closed() || self.aborted.load(Ordering::Acquire) {
            return None;
        }
        let mut taken: Vec<Item> = Vec::new();
        while let Ok(item) = self.rx.try_recv() {
            taken.push(item);
        }
        if !taken
            .iter()
            .all(|item| item.as_ref().is_ok_and(Frame::is_data))
        {
            self.replay.extend(taken);
            return None;
        }
        let mut data = taken
            .into_iter()
            .filter_map(|item| item.ok()?.into_data().ok());
        let first = data.next().unwrap_or_default();
        let rest: Vec<Bytes> = data.collect();
        if rest.is_empty() {
            return Some(first);
        }
        let mut whole =
            Vec::with_capacity(first.len() + rest.iter().map(Bytes::len).sum::<usize>());
        whole.extend_from_slice(&first);
        for piece in rest {
            whole.extend_from_slice(&piece);
        }
        Some(whole.into())
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        if let Some(item) = self.replay.pop_front() {
            return Poll::Ready(Some(item));
        }
        match self.rx.poll_recv(cx) {
            // Every sender is gone: the flag is final. The reader is told "not yet" once
            // first, which makes hyper flush what it holds: the head and the frames sent
            // before the break reach the peer even when all of them were written at once
            // (hyper drops unflushed bytes when a body fails).
            Poll::Ready(None) if self.aborted.load(Ordering::Acquire) => {
                if self.flushed_before_break {
                    Poll::Ready(Some(Err("the body was broken off".into())))
                } else {
                    self.flushed_before_break = true;
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            }
            other => other,
        }
    }
}

impl Drop for ChannelBody {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn a_dropped_sender_ends_the_body_whole_and_an_aborted_one_breaks_it_off() {
        let (tx, body) = channel(4);
        tx.send(Ok(Frame::data(Bytes::from_static(b"hello"))))
            .await
            .unwrap();
        drop(tx);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");

        let (tx, mut body) = channel(4);
        let kept = tx.clone();
        tx.send(Ok(Frame::data(Bytes::from_static(b"hello"))))
            .await
            .unwrap();
        tx.abort();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hello");
        // The error comes once every clone (a send under way) is gone.
        drop(kept);
        assert!(body.frame().await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_body_sent_and_ended_whole_is_taken_as_one_piece_and_any_other_reads_on() {
        let data = |s: &'static str| Ok(Frame::data(Bytes::from_static(s.as_bytes())));

        let (tx, mut body) = channel(4);
        tx.send(data("hel")).await.unwrap();
        tx.send(data("lo")).await.unwrap();
        // The sender may still send more: nothing is taken.
        assert_eq!(body.take_whole(), None);
        drop(tx);
        assert_eq!(body.take_whole().as_deref(), Some(&b"hello"[..]));

        // Trailers cannot ride in one piece of data: every frame is read as sent.
        let (tx, mut body) = channel(4);
        tx.send(data("hello")).await.unwrap();
        tx.send(Ok(Frame::trailers(http::HeaderMap::new())))
            .await
            .unwrap();
        drop(tx);
        assert_eq!(body.take_whole(), None);
        let collected = body.collect().await.unwrap();
        assert!(collected.trailers().is_some());
        assert_eq!(collected.to_bytes(), "hello");

        // Broken off: it must fail as before, never pass for a whole body.
        let (tx, mut body) = channel(4);
        tx.send(data("hel")).await.unwrap();
        tx.abort();
        assert_eq!(body.take_whole(), None);
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "hel"
        );
        assert!(body.frame().await.unwrap().is_err());
    }
}
