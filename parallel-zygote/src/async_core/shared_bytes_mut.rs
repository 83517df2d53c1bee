//! [`SharedBytesMut`]: a buffer filled in shared memory, sent without a copy.

use std::fmt;
use std::ops::{Deref, DerefMut};

use super::bytes::Bytes;
use super::Error;
use crate::shm::WritableMemfd;

/// A byte buffer in shared memory that you fill in place, then
/// [`freeze`](Self::freeze) into a [`Bytes`] that moves to and from workers
/// without a copy.
///
/// It is a memfd mapped read-write. Freezing unmaps it, seals the memfd
/// (nobody can change, grow or shrink it any more) and maps it read-only.
/// Sent in a `process` message on a local channel, such a `Bytes` passes
/// its memfd beside the frame (as an [`Fd`](super::Fd) does) and the
/// receiver maps it: the library copies none of its bytes, on either side,
/// whatever its size. The receiver's `Bytes` can be sent on the same way.
/// Where descriptors cannot go, its bytes are encoded as any `Bytes`'
/// (see [`Bytes`]).
///
/// Worth it from about 1 MiB (below, the memfd's own costs — create, map,
/// seal — outweigh a copy); each shared `Bytes` alive holds a descriptor
/// and a mapping; a message carries at most 15 of them with its `Fd`s (by
/// default); and the receiving stream bounds how many bytes of them it
/// keeps mapped ([`MessageStream::with_shared_memory_limit`](super::MessageStream::with_shared_memory_limit)).
/// Its pages are allocated (zeroed) when it is created, all at once: a
/// buffer of the size you will fill, not much larger.
///
/// ```
/// use parallel_zygote::async_core::{Bytes, SharedBytesMut};
///
/// let mut buffer = SharedBytesMut::zeroed(4 << 20)?;
/// for (i, byte) in buffer.iter_mut().enumerate() {
///     *byte = (i % 251) as u8;
/// }
/// buffer.truncate(3 << 20); // keep what was produced
/// let bytes: Bytes = buffer.freeze()?;
/// assert!(bytes.is_shared());
/// assert_eq!(bytes.len(), 3 << 20);
/// assert_eq!(bytes[252], 1);
/// // Cloning shares the memory; `process.sender.send(bytes)` sends its memfd.
/// let copy = bytes.clone();
/// assert_eq!(copy, bytes);
/// # Ok::<(), parallel_zygote::async_core::Error>(())
/// ```
pub struct SharedBytesMut {
    memfd: WritableMemfd,
}

impl SharedBytesMut {
    /// A buffer of `len` zero bytes in a new memfd.
    ///
    /// # Errors
    /// [`Error::SharedMemory`] when the kernel refuses the memfd, its size,
    /// its mapping or its pages (out of descriptors or memory, an
    /// address-space or memory-cgroup limit).
    pub fn zeroed(len: usize) -> Result<SharedBytesMut, Error> {
        let memfd = WritableMemfd::new(len).map_err(|source| Error::SharedMemory {
            action: "create",
            len,
            source,
        })?;
        Ok(SharedBytesMut { memfd })
    }

    /// Keeps only the first `len` bytes (no effect if `len` is not smaller):
    /// for a buffer sized before its contents were known.
    pub fn truncate(&mut self, len: usize) {
        self.memfd.truncate(len);
    }

    /// Seals the buffer and returns it as a [`Bytes`] (see the type's docs).
    ///
    /// # Errors
    /// [`Error::SharedMemory`] when the kernel refuses to seal or map the
    /// memfd (the write seal waits for pages it has pinned, such as those
    /// of an I/O in flight from the buffer); the memory is released then.
    pub fn freeze(self) -> Result<Bytes, Error> {
        let len = self.memfd.as_slice().len();
        let mapping = self.memfd.seal().map_err(|source| Error::SharedMemory {
            action: "seal",
            len,
            source,
        })?;
        Ok(Bytes::from_sealed(mapping, None))
    }
}

impl Deref for SharedBytesMut {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.memfd.as_slice()
    }
}

impl DerefMut for SharedBytesMut {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.memfd.as_mut_slice()
    }
}

impl AsRef<[u8]> for SharedBytesMut {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl AsMut<[u8]> for SharedBytesMut {
    fn as_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl fmt::Debug for SharedBytesMut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedBytesMut({} bytes)", self.len())
    }
}
