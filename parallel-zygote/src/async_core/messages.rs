//! Typed message streams and senders, used on both sides of a `process`.

use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_channel::mpsc;
use futures_core::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::{Codec, Postcard};
use super::fd::{decode_with_fds, encode_with_fds};
use super::Error;

/// A message's bytes and the descriptors that ride with it.
pub(crate) type RawMessage = (Vec<u8>, Vec<OwnedFd>);

/// How many messages may wait in each direction before the sender waits:
/// the bound that keeps a slow consumer from growing memory.
pub(crate) const QUEUE_DEPTH: usize = 16;

/// The receiving half of a typed channel to or from a worker.
///
/// A [`Stream`] of `Result<T, Error>`; it ends when the other side ends its
/// half (or returns), and yields one `Err` first if the worker died.
#[must_use = "dropping the stream discards every message the other side sends"]
pub struct MessageStream<T, C: Codec = Postcard> {
    receiver: mpsc::Receiver<Result<RawMessage, Error>>,
    _types: PhantomData<fn() -> (T, C)>,
}

impl<T: DeserializeOwned, C: Codec> MessageStream<T, C> {
    pub(crate) fn new(receiver: mpsc::Receiver<Result<RawMessage, Error>>) -> Self {
        MessageStream {
            receiver,
            _types: PhantomData,
        }
    }

    /// The next message; `None` once the stream ended.
    ///
    /// # Errors
    /// An item is `Err` when the message could not be decoded as `T`
    /// ([`Error::Codec`]) or, as the last item, when the other side died.
    pub async fn recv(&mut self) -> Option<Result<T, Error>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, Error>>> {
        Pin::new(&mut self.receiver).poll_next(cx).map(|item| {
            item.map(|raw| {
                let (bytes, fds) = raw?;
                decode_with_fds(fds, || C::decode::<T>(&bytes)).map_err(Error::decode::<T>)
            })
        })
    }
}

impl<T: DeserializeOwned, C: Codec> Stream for MessageStream<T, C> {
    type Item = Result<T, Error>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx)
    }
}

/// The sending half of a typed channel to or from a worker. Cheap to clone;
/// the other side's stream ends when every clone is dropped.
pub struct MessageSender<T, C: Codec = Postcard> {
    sender: async_channel::Sender<RawMessage>,
    _types: PhantomData<fn(T, C)>,
}

impl<T, C: Codec> Clone for MessageSender<T, C> {
    fn clone(&self) -> Self {
        MessageSender {
            sender: self.sender.clone(),
            _types: PhantomData,
        }
    }
}

impl<T: Serialize, C: Codec> MessageSender<T, C> {
    pub(crate) fn new(sender: async_channel::Sender<RawMessage>) -> Self {
        MessageSender {
            sender,
            _types: PhantomData,
        }
    }

    /// Sends one message, waiting while the queue is full (back-pressure).
    /// Any [`Fd`](super::Fd) inside travels as a real descriptor.
    ///
    /// # Errors
    /// [`Error::Codec`] when the message cannot be encoded, and
    /// [`Error::Closed`] when the other side is gone.
    pub async fn send(&self, message: T) -> Result<(), Error> {
        let raw = encode_with_fds(|| C::encode(&message)).map_err(Error::encode::<T>)?;
        self.sender.send(raw).await.map_err(|_| Error::Closed)
    }
}

impl<T, C: Codec> std::fmt::Debug for MessageSender<T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageSender").finish_non_exhaustive()
    }
}

impl<T, C: Codec> std::fmt::Debug for MessageStream<T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageStream").finish_non_exhaustive()
    }
}
