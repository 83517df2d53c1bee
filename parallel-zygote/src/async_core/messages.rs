//! Typed message streams and senders, used on both sides of a `process`.

use std::any::{Any, TypeId};
use std::future::Future;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_channel::mpsc;
use futures_core::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::bytes::{decode_from_mapping, decode_from_received, Bytes};
use super::codec::{Codec, Postcard};
use super::fd::{decode_with_fds, encode_with_fds};
use super::pieces;
use super::recycle::{self, HeapBuffer};
use super::shared::{
    decode_within, Payload, SharedBudget, DEFAULT_SHARED_MEMORY_LIMIT, SHARED_MIN, SHARED_MIN_LENT,
};
use super::streamed::{self, Shape};
use super::Error;

/// A message's bytes and the descriptors that ride with it.
pub(crate) type RawMessage = (Payload, Vec<OwnedFd>);

/// The most descriptors one message may carry: a frame's limit, less the
/// one a large message's memfd takes.
const MAX_MESSAGE_FDS: usize = parallel_proto::Limits::DEFAULT.max_fds_per_frame() as usize - 1;

/// What a sizing pass over a message found (see `MessageSender::size`).
#[derive(Debug, Clone, Copy)]
struct Sizing {
    /// The encoding's length.
    len: usize,
    /// Bytes of it in large byte strings.
    large: usize,
    /// Bytes of it in large heap `Bytes`, which lend their buffers.
    lent: usize,
    /// Descriptors it carries.
    fds: usize,
}

/// How many messages may wait in each direction before the sender waits:
/// the bound that keeps a slow consumer from growing memory.
pub(crate) const QUEUE_DEPTH: usize = 16;

/// The receiving half of a typed channel to or from a worker.
///
/// A [`Stream`] of `Result<T, Error>`; it ends when the other side ends its
/// half (or returns), and yields one `Err` first if the worker died.
///
/// Shared buffers (a [`Bytes`](super::Bytes) from a
/// [`SharedBytesMut`](super::SharedBytesMut), whose memfd came with the
/// message) are mapped as they are decoded, and stay mapped while any
/// `Bytes` of them lives. How many bytes of them the stream may have
/// mapped at once is bounded: 1 GiB by default,
/// [`with_shared_memory_limit`](Self::with_shared_memory_limit) changes it.
/// A message that would pass the limit is not decoded: its item is an
/// [`Error::Codec`] that says so, and the stream goes on.
#[must_use = "dropping the stream discards every message the other side sends"]
pub struct MessageStream<T, C: Codec = Postcard> {
    receiver: mpsc::Receiver<Result<RawMessage, Error>>,
    /// Shared buffers mapped from this stream and still alive.
    budget: Arc<SharedBudget>,
    _types: PhantomData<fn() -> (T, C)>,
}

impl<T: DeserializeOwned + 'static, C: Codec> MessageStream<T, C> {
    pub(crate) fn new(receiver: mpsc::Receiver<Result<RawMessage, Error>>) -> Self {
        MessageStream {
            receiver,
            budget: SharedBudget::new(DEFAULT_SHARED_MEMORY_LIMIT),
            _types: PhantomData,
        }
    }

    /// Sets the most bytes of shared buffers this stream may have mapped at
    /// once (1 GiB by default): received `Bytes` whose memfd came with
    /// their message count from when they are decoded until their last
    /// clone is dropped. It bounds what the other side can make this
    /// process map through the channel (a memfd's pages are allocated as
    /// they are mapped, whoever made it).
    pub fn with_shared_memory_limit(self, bytes: u64) -> Self {
        self.budget.set_limit(bytes);
        self
    }

    /// The bytes of shared buffers received on this stream that are mapped
    /// now (decoded, and not yet dropped).
    pub fn shared_memory_mapped(&self) -> u64 {
        self.budget.mapped()
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
        let budget = &self.budget;
        Pin::new(&mut self.receiver).poll_next(cx).map(|item| {
            item.map(|raw| {
                let (payload, fds) = raw?;
                // `Bytes` inside share the message's buffer rather than copy it.
                match payload {
                    Payload::Mapped(mapping) => decode_with_fds(fds, || {
                        decode_from_mapping(&mapping, || {
                            decode_within(budget, || {
                                super::codec::decode_value::<C, T>(mapping.as_slice())
                            })
                        })
                    }),
                    // Received into a buffer of its own, which goes back
                    // to the pool once this decode and every `Bytes` of
                    // it let go (see `recycle`).
                    Payload::Inline(bytes) => {
                        let buffer = Arc::new(HeapBuffer::received(bytes));
                        decode_with_fds(fds, || {
                            decode_from_received(&buffer, || {
                                decode_within(budget, || {
                                    super::codec::decode_value::<C, T>(&buffer)
                                })
                            })
                        })
                    }
                    // Only outgoing messages are sealed, in pieces or
                    // streamed; nothing decodes them.
                    Payload::Sealed { .. } | Payload::Pieces(_) | Payload::Streamed(_) => {
                        decode_with_fds(fds, || {
                            decode_within(budget, || super::codec::decode_value::<C, T>(&[]))
                        })
                    }
                }
                .map_err(Error::decode::<T>)
            })
        })
    }
}

impl<T: DeserializeOwned + 'static, C: Codec> Stream for MessageStream<T, C> {
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
/// A message whose encoding reaches 4 MiB travels through shared memory:
/// `send` copies it into a sealed memfd that the other side maps, instead of
/// writing it through the socket (the kernel's two copies and the socket
/// round trips are saved); [`with_shared_memory_min`](Self::with_shared_memory_min)
/// moves or removes that threshold. With the default codec, a message made
/// mostly (three quarters or more) of large [`Bytes`](super::Bytes) (16 KiB
/// and up, in a buffer of their own) is not copied at all on this side: the
/// socket write takes their bytes from their own buffers, which was faster
/// than the memfd's copy up to tens of MiB, so such a message uses shared
/// memory only from 32 MiB unless the threshold was set. Byte strings of
/// 16 KiB and up that a message holds itself (`serde_bytes` fields and
/// buffers) are not copied into a frame either once they add up to 256 KiB:
/// below the threshold, such a message goes to the channel's driver whole
/// (which is why `T` is `Send`),
/// and the driver encodes it as it writes it, each of those byte strings
/// from the message's memory to the socket (what the socket does not take
/// at once is copied, to be written next). Its `Serialize` then runs twice,
/// in `send` to size it and when it is written, and must give the same
/// bytes both times, as any `Serialize` that depends only on the value
/// does; one that does not still leaves the channel whole (the frame keeps
/// the length `send` found), and its receiver most likely gets a decode
/// error for that message. For bulk data, use
/// [`Bytes`](super::Bytes) (or `serde_bytes`) rather than a plain `Vec<u8>`
/// inside a message, which serde encodes one element at a time; a message
/// that is a `Vec<u8>` and nothing else goes as a byte string, as a `Bytes`
/// does, with any codec that writes both alike (see
/// [`Codec::BYTE_STRINGS_ARE_SEQUENCES`]). A `Bytes` frozen from a
/// [`SharedBytesMut`](super::SharedBytesMut) is not copied at all: its
/// sealed memfd rides with the message (counted with the message's `Fd`s
/// against the descriptors a frame may carry, `Limits::max_fds_per_frame`
/// less one: 15 by default), whatever the threshold.
pub struct MessageSender<T, C: Codec = Postcard> {
    sender: async_channel::Sender<RawMessage>,
    /// Encoded messages at least this large go through shared memory;
    /// `None` on a channel that passes no descriptors, or when turned off.
    shared_min: Option<usize>,
    /// The same for messages made mostly of large heap `Bytes` (written to
    /// the socket from their own buffers): at least `shared_min`.
    shared_min_lent: usize,
    /// Whether the channel passes descriptors.
    passes_descriptors: bool,
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
            shared_min: self.shared_min,
            shared_min_lent: self.shared_min_lent,
            passes_descriptors: self.passes_descriptors,
            sink: Mutex::new(None),
            _types: PhantomData,
        }
    }
}

impl<T: Serialize + Send + 'static, C: Codec> MessageSender<T, C> {
    pub(crate) fn new(sender: async_channel::Sender<RawMessage>, passes_descriptors: bool) -> Self {
        MessageSender {
            sender,
            shared_min: passes_descriptors.then_some(SHARED_MIN),
            shared_min_lent: SHARED_MIN_LENT,
            passes_descriptors,
            sink: Mutex::new(None),
            _types: PhantomData,
        }
    }

    /// Sends one message, waiting while the queue is full (back-pressure).
    /// Any [`Fd`](super::Fd) inside travels as a real descriptor.
    ///
    /// # Errors
    /// [`Error::Codec`] when the message cannot be encoded (or carries more
    /// than 15 descriptors: `Fd`s and shared `Bytes`), and
    /// [`Error::Closed`] when the other side is gone.
    pub async fn send(&self, message: T) -> Result<(), Error> {
        let raw = self.encode_owned(message)?;
        self.sender.send(raw).await.map_err(|_| Error::Closed)
    }

    /// [`encode`](Self::encode), where a plain `Vec<u8>` goes as a byte
    /// string when the codec writes both alike (see
    /// [`Codec::BYTE_STRINGS_ARE_SEQUENCES`]): serde hands a `Vec<u8>` over
    /// one element at a time, which makes 1 MiB messages about five times
    /// slower than as a byte string (and a large one is lent to the socket
    /// as a [`Bytes`] is, not copied at all). A message with large byte
    /// strings of its own (`serde_bytes`) goes to the driver whole, to be
    /// encoded as it is written (see `streamed`).
    fn encode_owned(&self, message: T) -> Result<RawMessage, Error> {
        let mut slot = Some(message);
        if C::BYTE_STRINGS_ARE_SEQUENCES {
            // `Some` only where `T` is `Vec<u8>`: the message moves out
            // without a copy.
            if let Some(vec) = (&mut slot as &mut dyn Any)
                .downcast_mut::<Option<Vec<u8>>>()
                .and_then(Option::take)
            {
                return self.encode(&Bytes::from(vec));
            }
        }
        let message = slot.expect("taken only when it is a Vec<u8>");
        let sized = self.size(&message);
        if let Some(sized) = sized.filter(|sized| self.streams(sized)) {
            let streamed = streamed::boxed(message, sized.len, self.passes_descriptors);
            return Ok((Payload::Streamed(streamed), Vec::new()));
        }
        self.encode_sized(&message, sized)
    }

    /// The message's bytes (in a sealed memfd when large) and descriptors
    /// (its `Fd`s, and the memfds of shared `Bytes` when the channel passes
    /// descriptors). `message` is a `T`, or what stands for one on the wire
    /// (see [`encode_owned`](Self::encode_owned)); errors name `T`.
    fn encode<M: Serialize>(&self, message: &M) -> Result<RawMessage, Error> {
        self.encode_sized(message, self.size(message))
    }

    /// [`encode`](Self::encode), with what a sizing pass found (`None`: no
    /// sizing, or the codec cannot size).
    fn encode_sized<M: Serialize>(
        &self,
        message: &M,
        sized: Option<Sizing>,
    ) -> Result<RawMessage, Error> {
        let (payload, fds) = self.encode_payload(message, sized)?;
        if fds.len() > MAX_MESSAGE_FDS {
            // Refused here, with words: the channel would otherwise refuse
            // the frame and end.
            let refusal = format!(
                "the message carries {} descriptors (its Fds and shared Bytes' memfds); \
                 at most {MAX_MESSAGE_FDS} fit in one message",
                fds.len()
            );
            return Err(Error::encode::<T>(refusal.into()));
        }
        Ok((payload, fds))
    }

    /// Sizes `message` without copying its bytes, as it will be encoded (a
    /// shared `Bytes` as its memfd's reference; the pass's descriptors are
    /// counted and dropped): with the default codec always (it decides
    /// whether the message is streamed), with another only when it may
    /// go through shared memory.
    fn size<M: Serialize>(&self, message: &M) -> Option<Sizing> {
        let postcard = TypeId::of::<C>() == TypeId::of::<Postcard>();
        if !postcard && self.shared_min.is_none() {
            return None;
        }
        let sized = encode_with_fds(self.passes_descriptors, || {
            Ok::<_, Error>(pieces::lendable::<C, _>(|| {
                if postcard {
                    streamed::shape(message)
                } else {
                    C::encoded_len(message).map(|len| Shape { len, large: 0 })
                }
            }))
        });
        let ((shape, lent), fds) = sized.ok()?;
        let shape = shape?;
        Some(Sizing {
            len: shape.len,
            large: shape.large,
            lent,
            fds: fds.len(),
        })
    }

    /// Whether a message so sized goes to the driver to be encoded as it is
    /// written: the codec is the default one (the driver encodes with
    /// postcard), the message has at least
    /// [`STREAM_MIN`](streamed::STREAM_MIN) bytes in large byte strings
    /// that are not lent `Bytes` (those are written from their own buffers
    /// already), no descriptors (they ride with a frame's first byte), and
    /// it stays below shared memory's threshold.
    fn streams(&self, sized: &Sizing) -> bool {
        TypeId::of::<C>() == TypeId::of::<Postcard>()
            && sized.fds == 0
            && sized.large.saturating_sub(sized.lent) >= streamed::STREAM_MIN
            && !self
                .shared_min
                .is_some_and(|min| sized.len >= self.shared_threshold(min, sized.len, sized.lent))
    }

    fn encode_payload<M: Serialize>(
        &self,
        message: &M,
        sized: Option<Sizing>,
    ) -> Result<RawMessage, Error> {
        let attach = self.passes_descriptors;
        // Where the bytes the encode copies go: a recycled buffer when the
        // sizing pass says the message is large and lends nothing.
        let mut buffer = Vec::new();
        if let (Some(min), Some(Sizing { len, lent, .. })) = (self.shared_min, sized) {
            // A message the codec can size goes straight into shared memory.
            if len >= self.shared_threshold(min, len, lent) {
                let (payload, fds) = encode_with_fds(attach, || {
                    Ok::<_, Error>(Payload::encode_sealed::<C, M>(message, len))
                })?;
                if let Some(payload) = payload {
                    return Ok((payload, fds));
                }
            }
            if lent == 0 {
                buffer = recycle::take(len);
            }
        }
        // Large `Bytes` are lent, not copied (see `pieces`).
        let (pieces, fds) = encode_with_fds(attach, || pieces::encode::<C, M>(message, buffer))
            .map_err(Error::encode::<T>)?;
        let shared = self.shared_min.is_some_and(|min| {
            pieces.len() >= self.shared_threshold(min, pieces.len(), pieces.lent())
        });
        Ok((Payload::outgoing(pieces, shared), fds))
    }

    /// The size from which a message of `len` bytes, `lent` of them in
    /// large heap `Bytes`, goes through shared memory: a message made
    /// mostly of those is written from their own buffers (one copy, the
    /// kernel's), which beats copying it into a memfd up to a larger size.
    fn shared_threshold(&self, min: usize, len: usize, lent: usize) -> usize {
        if lent.saturating_mul(4) >= len.saturating_mul(3) {
            min.max(self.shared_min_lent)
        } else {
            min
        }
    }

    /// Sets the size from which this sender's messages (their encoding)
    /// travel through shared memory rather than the socket: 4 MiB by
    /// default (32 MiB for a message made mostly of large `Bytes`; once set,
    /// the one threshold holds for every message), `None` to turn it off. A
    /// channel whose socket passes no descriptors never uses shared memory,
    /// whatever this says. Clones
    /// made afterwards inherit it.
    ///
    /// Below a few MiB the memfd's own costs (create, size, seal, map, and
    /// its pages allocated and freed for each message) outweigh the socket
    /// copies it saves; see BENCHMARKS.md for measurements.
    #[must_use]
    pub fn with_shared_memory_min(mut self, min: Option<usize>) -> Self {
        self.shared_min = min.filter(|_| self.passes_descriptors);
        self.shared_min_lent = min.unwrap_or(usize::MAX);
        self
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

impl<T: Serialize + Send + 'static, C: Codec> futures_sink::Sink<T> for MessageSender<T, C> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_pending(cx)
    }

    fn start_send(self: Pin<&mut Self>, message: T) -> Result<(), Error> {
        let this = self.get_mut();
        let raw = this.encode_owned(message)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Record {
        tag: u32,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    }

    /// How a sender of `C` on a descriptor-passing channel would send a
    /// `Record` of `len` bytes.
    fn payload_of<C: Codec>(len: usize) -> Payload {
        let (sender, _receiver) = async_channel::bounded(1);
        let sender = MessageSender::<Record, C>::new(sender, true);
        let record = Record {
            tag: 1,
            data: vec![7; len],
        };
        sender.encode_owned(record).expect("encodes").0
    }

    #[test]
    fn only_default_codec_messages_with_enough_byte_strings_are_streamed() {
        let streamed = |payload: &Payload| matches!(payload, Payload::Streamed(_));
        assert!(streamed(&payload_of::<Postcard>(streamed::STREAM_MIN)));
        assert!(streamed(&payload_of::<Postcard>(1 << 20)));
        assert!(!streamed(&payload_of::<Postcard>(streamed::STREAM_MIN - 1)));
        // From 4 MiB: shared memory, as before.
        assert!(!streamed(&payload_of::<Postcard>(5 << 20)));
        // The driver encodes with postcard: another codec copies.
        #[cfg(feature = "msgpack")]
        assert!(!streamed(&payload_of::<super::super::codecs::MessagePack>(
            1 << 20
        )));
    }
}
