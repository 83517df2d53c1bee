//! Which `process` messages travel through shared memory, and how they are
//! turned into frames and back (the OS side is in [`crate::shm`]).
//!
//! Memory held in memfds is bounded as message buffers are: a message's
//! bytes live in its memfd *instead of* a `Vec`, and the same queues bound
//! how many exist per channel (16 messages each way between the user's
//! task and the driver, one frame being written, and on the receiving side
//! one held message plus 16 in the stream's queue; the driver stops reading
//! the socket while they are full). The receiver maps nothing larger than
//! `max_frame_len` (the state machine refuses a longer `SharedData` before
//! the transport looks at the descriptor). A mapping lives as long as the
//! decoded message's [`Bytes`](super::Bytes) that point into it, exactly as
//! a `Vec` would.
//!
//! Shared buffers (a [`SharedBytesMut`](super::SharedBytesMut) frozen into
//! a `Bytes`) travel as a memfd beside the message, of any size: the
//! sender's memory, already allocated. What a peer could make the receiver
//! map (and allocate: a sparse memfd's pages come into being as they are
//! mapped) is bounded per stream by a [`SharedBudget`]: the bytes of
//! shared buffers decoded from it and still alive, 1 GiB by default. Each
//! is charged before it is mapped and released when its last `Bytes` is
//! dropped; one that does not fit is refused as its message's decode error.

use std::cell::RefCell;
use std::io::{BufWriter, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parallel_proto::RemoteError;

use super::codec::{Codec, CodecError};
use super::pieces::Pieces;
use super::streamed::Streamed;
use crate::shm::{sealed_memfd_with, SharedBytes};

/// By default, encoded messages at least this large go through a sealed
/// memfd rather than the socket, on channels that pass descriptors
/// (`MessageSender::with_shared_memory_min` changes it). Below it the socket
/// is faster: since received payloads (and the buffers copied messages are
/// encoded into) are recycled, its two copies go between warm buffers,
/// while a memfd's pages are allocated, mapped, unmapped and freed for
/// every message (tens of µs, and about a microsecond per 4 KiB page). The
/// sweep in BENCHMARKS.md (issue 13, session 9) put serde_bytes messages of
/// 1, 2 and 4 MiB 15-35 % faster through the socket; it was 1 MiB before
/// the buffers were recycled.
pub(crate) const SHARED_MIN: usize = 4 << 20;

/// By default, a message whose encoding is at least three quarters large
/// heap [`Bytes`](super::Bytes) (written to the socket from their own
/// buffers, see `pieces`) goes through a memfd only from this size: the
/// socket's one copy each way beat the memfd's copy into fresh pages at
/// 1, 4 and 16 MiB, not at 64 MiB (glibc hands out buffers above 32 MiB as
/// fresh mappings, whose pages the receiver then faults in); BENCHMARKS.md,
/// issue 13, session 7.
pub(crate) const SHARED_MIN_LENT: usize = 32 << 20;

/// A message's bytes on their way between the user's task and the driver.
#[derive(Debug)]
pub(crate) enum Payload {
    /// In this process's memory, written to the socket.
    Inline(Vec<u8>),
    /// Outgoing, in this process's memory in pieces (large `Bytes` lent
    /// rather than copied), written to the socket with one gathered write.
    Pieces(Pieces),
    /// Outgoing: copied into a sealed memfd of `len` bytes, sent with the frame.
    Sealed { memfd: OwnedFd, len: u64 },
    /// Outgoing: the message itself, encoded as the driver writes it (its
    /// large byte strings straight from its memory; see `streamed`).
    Streamed(Box<dyn Streamed>),
    /// Incoming: the sender's memfd, mapped read-only (shared with the
    /// `Bytes` decoded from it).
    Mapped(Arc<SharedBytes>),
}

impl Payload {
    /// An encoded message to send: in a sealed memfd when `shared` (the
    /// sender's threshold said so), else as it is. A memfd that cannot be
    /// made (out of descriptors, say) leaves the message on the socket path.
    pub(crate) fn outgoing(pieces: Pieces, shared: bool) -> Payload {
        if shared {
            let len = pieces.len();
            match sealed_memfd_with(len, |file| pieces.write_to(file)) {
                Ok(memfd) => {
                    return Payload::Sealed {
                        memfd,
                        len: len as u64,
                    }
                }
                Err(error) => tracing::debug!(
                    len,
                    %error,
                    "no sealed memfd for a large message: it goes through the socket"
                ),
            }
        }
        match pieces.into_single() {
            Ok(bytes) => Payload::Inline(bytes),
            Err(pieces) => Payload::Pieces(pieces),
        }
    }

    /// `value` encoded straight into a sealed memfd of `len` bytes (the
    /// codec's [`encoded_len`](Codec::encoded_len)), with no buffer in
    /// between; `None` if anything fails (the caller then takes the
    /// ordinary path, which reports a codec error as such).
    pub(crate) fn encode_sealed<C: Codec, T: serde::Serialize>(
        value: &T,
        len: usize,
    ) -> Option<Payload> {
        let memfd = sealed_memfd_with(len, |file| {
            // Small writes (the fields around bulk bytes) are gathered;
            // bulk bytes larger than the buffer go straight through.
            let mut writer = BufWriter::with_capacity(64 * 1024, file);
            C::encode_to(value, &mut writer).map_err(std::io::Error::other)?;
            writer.flush()
        })
        .map_err(|error| {
            tracing::debug!(
                len,
                %error,
                "no sealed memfd for a large message: it goes through the socket"
            )
        })
        .ok()?;
        Some(Payload::Sealed {
            memfd,
            len: len as u64,
        })
    }
}

/// A `SharedData` event's message: the first descriptor is the memfd (checked
/// and mapped here, then closed: the mapping keeps the memory), the rest are
/// the message's own.
///
/// # Errors
/// [`RemoteError::BadSharedMemory`] when the memfd is missing, unsealed, of
/// another size, or cannot be mapped: the peer broke the protocol.
pub(crate) fn receive(
    len: u64,
    mut fds: Vec<OwnedFd>,
) -> Result<(Payload, Vec<OwnedFd>), RemoteError> {
    if fds.is_empty() {
        return Err(RemoteError::BadSharedMemory {
            reason: "no descriptor came with it".into(),
        });
    }
    let memfd = fds.remove(0);
    let mapping = SharedBytes::map(memfd.as_fd(), len)
        .map_err(|reason| RemoteError::BadSharedMemory { reason })?;
    Ok((Payload::Mapped(Arc::new(mapping)), fds))
}

/// What a channel machine needs to send a message either way.
pub(crate) trait SendData {
    fn send_data(&mut self, payload: Vec<u8>, fds: usize) -> Result<(), parallel_proto::Error>;
    fn send_shared_data(&mut self, len: u64, fds: usize) -> Result<(), parallel_proto::Error>;
    fn send_data_external(&mut self, len: usize, fds: usize) -> Result<(), parallel_proto::Error>;
}

impl SendData for parallel_proto::channel::ParentChannel {
    fn send_data(&mut self, payload: Vec<u8>, fds: usize) -> Result<(), parallel_proto::Error> {
        self.send_data(payload, fds)
    }
    fn send_shared_data(&mut self, len: u64, fds: usize) -> Result<(), parallel_proto::Error> {
        self.send_shared_data(len, fds)
    }
    fn send_data_external(&mut self, len: usize, fds: usize) -> Result<(), parallel_proto::Error> {
        self.send_data_external(len, fds)
    }
}

impl SendData for parallel_proto::channel::WorkerChannel {
    fn send_data(&mut self, payload: Vec<u8>, fds: usize) -> Result<(), parallel_proto::Error> {
        self.send_data(payload, fds)
    }
    fn send_shared_data(&mut self, len: u64, fds: usize) -> Result<(), parallel_proto::Error> {
        self.send_shared_data(len, fds)
    }
    fn send_data_external(&mut self, len: usize, fds: usize) -> Result<(), parallel_proto::Error> {
        self.send_data_external(len, fds)
    }
}

/// By default, the most bytes of shared buffers (`Bytes` whose memfd came
/// with a message) one [`MessageStream`](super::MessageStream) may have
/// mapped at once: what a peer can make this process map and hold through
/// one channel. [`MessageStream::with_shared_memory_limit`](super::MessageStream::with_shared_memory_limit)
/// changes it.
pub(crate) const DEFAULT_SHARED_MEMORY_LIMIT: u64 = 1 << 30;

/// The bytes of shared buffers a stream has mapped and not yet released,
/// against its limit.
#[derive(Debug)]
pub(crate) struct SharedBudget {
    limit: AtomicU64,
    mapped: AtomicU64,
}

/// One mapped shared buffer's share of a [`SharedBudget`], given back when
/// the last `Bytes` of that buffer is dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    budget: Arc<SharedBudget>,
    len: u64,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.mapped.fetch_sub(self.len, Ordering::AcqRel);
    }
}

impl SharedBudget {
    pub(crate) fn new(limit: u64) -> Arc<SharedBudget> {
        Arc::new(SharedBudget {
            limit: AtomicU64::new(limit),
            mapped: AtomicU64::new(0),
        })
    }

    pub(crate) fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Release);
    }

    /// Bytes mapped now.
    pub(crate) fn mapped(&self) -> u64 {
        self.mapped.load(Ordering::Acquire)
    }

    /// Reserves `len` bytes, or says why not.
    fn charge(self: &Arc<Self>, len: u64) -> Result<Charge, String> {
        let limit = self.limit.load(Ordering::Acquire);
        self.mapped
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |mapped| {
                mapped.checked_add(len).filter(|&total| total <= limit)
            })
            .map_err(|mapped| {
                format!(
                    "a shared Bytes of {len} bytes would take the shared memory this stream \
                     has mapped ({mapped} bytes, in received buffers still alive) past its \
                     limit of {limit} bytes (MessageStream::with_shared_memory_limit)"
                )
            })?;
        Ok(Charge {
            budget: Arc::clone(self),
            len,
        })
    }
}

thread_local! {
    /// The budget of the stream whose message is being decoded on this thread.
    static DECODING_BUDGET: RefCell<Option<Arc<SharedBudget>>> = const { RefCell::new(None) };
    /// Why a shared `Bytes` of that message was refused, if one was.
    static REFUSAL: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `decode` with `budget` charged for the shared buffers it maps. A
/// refused shared `Bytes` makes the error its reason (in words, whatever
/// the codec keeps of a custom error: postcard keeps only its kind).
pub(crate) fn decode_within<T, E: Into<CodecError>>(
    budget: &Arc<SharedBudget>,
    decode: impl FnOnce() -> Result<T, E>,
) -> Result<T, CodecError> {
    let previous = DECODING_BUDGET.with(|slot| slot.replace(Some(Arc::clone(budget))));
    REFUSAL.with(|slot| slot.borrow_mut().take());
    let result = decode();
    DECODING_BUDGET.with(|slot| *slot.borrow_mut() = previous);
    let refusal = REFUSAL.with(|slot| slot.borrow_mut().take());
    result.map_err(|error| refusal.map_or_else(|| error.into(), CodecError::from))
}

/// Notes why a shared `Bytes` was refused (see [`decode_within`]).
pub(crate) fn note_refusal(reason: &str) {
    REFUSAL.with(|slot| *slot.borrow_mut() = Some(reason.to_owned()));
}

/// Charges a shared buffer of `len` bytes to the stream being decoded, if
/// any (outside a stream, nothing is counted).
///
/// # Errors
/// The stream's limit would be passed: the words of the refusal.
pub(crate) fn charge(len: u64) -> Result<Option<Charge>, String> {
    DECODING_BUDGET.with(|slot| {
        slot.borrow()
            .as_ref()
            .map(|budget| budget.charge(len))
            .transpose()
    })
}
