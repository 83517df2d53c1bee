//! Typed message streams and senders, used on both sides of a `process`.

use std::future::Future;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use futures_channel::mpsc;
use futures_core::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::{Codec, Postcard};
use super::fd::{decode_with_fds, encode_with_fds};
use super::shared::Payload;
use super::Error;

/// A message's bytes and the descriptors that ride with it.
pub(crate) type RawMessage = (Payload, Vec<OwnedFd>);

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
                let (payload, fds) = raw?;
                decode_with_fds(fds, || C::decode::<T>(payload.bytes())).map_err(Error::decode::<T>)
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

/// A send the [`Sink`](futures_sink::Sink) side started and has not finished.
type PendingSend = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// The sending half of a typed channel to or from a worker. Cheap to clone;
/// the other side's stream ends when every clone is dropped.
///
/// Send with [`send`](Self::send) from `&self`, or use it as a
/// [`Sink`](futures_sink::Sink) (`SinkExt::send`, `forward`). Either way at
/// most 16 messages wait in the queue: a full queue makes the sender wait.
///
/// A message whose encoding reaches 1 MiB travels through shared memory:
/// `send` copies it into a sealed memfd that the other side maps, instead of
/// writing it through the socket (one copy instead of three, and no
/// socket round trips). For bulk data, use [`Bytes`](super::Bytes) (or
/// `serde_bytes`) rather than a plain `Vec<u8>`, which serde encodes one
/// element at a time.
pub struct MessageSender<T, C: Codec = Postcard> {
    sender: async_channel::Sender<RawMessage>,
    /// Whether large messages may go through shared memory (the channel
    /// passes descriptors).
    shared: bool,
    /// The Sink's message on its way into the queue. In a `Mutex` only so
    /// that the sender stays `Sync`; the Sink methods reach it through
    /// `&mut self` and never lock.
    sink: Mutex<Option<PendingSend>>,
    _types: PhantomData<fn(T, C)>,
}

impl<T, C: Codec> Clone for MessageSender<T, C> {
    fn clone(&self) -> Self {
        MessageSender {
            sender: self.sender.clone(),
            shared: self.shared,
            sink: Mutex::new(None),
            _types: PhantomData,
        }
    }
}

impl<T: Serialize, C: Codec> MessageSender<T, C> {
    pub(crate) fn new(sender: async_channel::Sender<RawMessage>, shared: bool) -> Self {
        MessageSender {
            sender,
            shared,
            sink: Mutex::new(None),
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
        let raw = self.encode(&message)?;
        self.sender.send(raw).await.map_err(|_| Error::Closed)
    }

    /// The message's bytes (in a sealed memfd when large) and descriptors.
    fn encode(&self, message: &T) -> Result<RawMessage, Error> {
        let (bytes, fds) = encode_with_fds(|| C::encode(message)).map_err(Error::encode::<T>)?;
        Ok((Payload::outgoing(bytes, self.shared), fds))
    }
}

impl<T, C: Codec> MessageSender<T, C> {
    /// Polls the Sink's message in flight to the queue, if any.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let pending = self.sink.get_mut().unwrap_or_else(|e| e.into_inner());
        let Some(send) = pending.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let result = std::task::ready!(send.as_mut().poll(cx));
        *pending = None;
        Poll::Ready(result)
    }
}

impl<T: Serialize, C: Codec> futures_sink::Sink<T> for MessageSender<T, C> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_pending(cx)
    }

    fn start_send(self: Pin<&mut Self>, message: T) -> Result<(), Error> {
        let this = self.get_mut();
        let raw = this.encode(&message)?;
        let sender = this.sender.clone();
        let send: PendingSend =
            Box::pin(async move { sender.send(raw).await.map_err(|_| Error::Closed) });
        *this.sink.get_mut().unwrap_or_else(|e| e.into_inner()) = Some(send);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_pending(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // The other side sees the end once every clone is dropped.
        self.get_mut().poll_pending(cx)
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
