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

use std::io::{BufWriter, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use parallel_proto::RemoteError;

use super::codec::Codec;
use crate::shm::{sealed_memfd, sealed_memfd_with, SharedBytes};

/// By default, encoded messages at least this large go through a sealed
/// memfd rather than the socket, on channels that pass descriptors
/// (`MessageSender::with_shared_memory_min` changes it). Below it the memfd's
/// own costs (create, size, seal, map, unmap: tens of µs) outweigh the
/// socket copies they save; see BENCHMARKS.md (issue 13) for the crossover.
pub(crate) const SHARED_MIN: usize = 1 << 20;

/// A message's bytes on their way between the user's task and the driver.
#[derive(Debug)]
pub(crate) enum Payload {
    /// In this process's memory, written to the socket.
    Inline(Vec<u8>),
    /// Outgoing: copied into a sealed memfd of `len` bytes, sent with the frame.
    Sealed { memfd: OwnedFd, len: u64 },
    /// Incoming: the sender's memfd, mapped read-only (shared with the
    /// `Bytes` decoded from it).
    Mapped(Arc<SharedBytes>),
}

impl Payload {
    /// An encoded message to send: in a sealed memfd when `shared` (the
    /// sender's threshold said so), else as it is. A memfd that cannot be
    /// made (out of descriptors, say) leaves the message on the socket path.
    pub(crate) fn outgoing(bytes: Vec<u8>, shared: bool) -> Payload {
        if shared {
            match sealed_memfd(&bytes) {
                Ok(memfd) => {
                    return Payload::Sealed {
                        memfd,
                        len: bytes.len() as u64,
                    }
                }
                Err(error) => tracing::debug!(
                    len = bytes.len(),
                    %error,
                    "no sealed memfd for a large message: it goes through the socket"
                ),
            }
        }
        Payload::Inline(bytes)
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

    /// The bytes of a received message.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Payload::Inline(bytes) => bytes,
            Payload::Mapped(mapping) => mapping.as_slice(),
            // Only outgoing messages are sealed; nothing decodes them.
            Payload::Sealed { .. } => &[],
        }
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
}

impl SendData for parallel_proto::channel::ParentChannel {
    fn send_data(&mut self, payload: Vec<u8>, fds: usize) -> Result<(), parallel_proto::Error> {
        self.send_data(payload, fds)
    }
    fn send_shared_data(&mut self, len: u64, fds: usize) -> Result<(), parallel_proto::Error> {
        self.send_shared_data(len, fds)
    }
}

impl SendData for parallel_proto::channel::WorkerChannel {
    fn send_data(&mut self, payload: Vec<u8>, fds: usize) -> Result<(), parallel_proto::Error> {
        self.send_data(payload, fds)
    }
    fn send_shared_data(&mut self, len: u64, fds: usize) -> Result<(), parallel_proto::Error> {
        self.send_shared_data(len, fds)
    }
}
