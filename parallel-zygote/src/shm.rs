//! Large messages through shared memory: a sealed memfd on the sending side,
//! a read-only mapping of it on the receiving side.
//!
//! A message above a size threshold travels as the worker channel's
//! `SharedData` frame: a few bytes in the stream, and a memfd passed with it
//! (`SCM_RIGHTS`). The sender copies the message into the memfd once and
//! seals it (no shrinking, growing or writing, by anyone, from then on); the
//! receiver checks the seals and the size, then maps it read-only and decodes
//! straight from the mapping. The bytes never cross the socket, which saves
//! the kernel's two copies and hundreds of `sendmsg`/`recvmsg` round trips
//! per 64 MiB.
//!
//! The seals are what make mapping a peer's memory safe: without
//! `F_SEAL_SHRINK` the peer could truncate the file under the mapping
//! (reading it would then raise `SIGBUS`), and without `F_SEAL_WRITE` it
//! could change the bytes while they are decoded.

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Seek, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

/// The seals a memfd must carry before its bytes are trusted.
fn required_seals() -> SealFlag {
    SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE
}

/// Copies `bytes` into a new memfd and seals it against shrinking, growing,
/// writing and further sealing: the descriptor to send with a `SharedData`
/// frame. It closes on exec (`MFD_CLOEXEC`).
///
/// # Errors
/// The kernel refused the memfd (`EMFILE`, `ENOMEM`, a kernel without
/// memfd sealing) or the copy (`ENOSPC` past the memory cgroup's limit).
pub fn sealed_memfd(bytes: &[u8]) -> io::Result<OwnedFd> {
    sealed_memfd_with(bytes.len(), |file| file.write_all(bytes))
}

/// Like [`sealed_memfd`], but `fill` writes the `len` bytes (an encoder
/// writing straight into the memfd, with no buffer in between).
///
/// # Errors
/// As [`sealed_memfd`], whatever `fill` returns, and
/// [`io::ErrorKind::InvalidData`] when `fill` wrote other than `len` bytes.
pub fn sealed_memfd_with(
    len: usize,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<OwnedFd> {
    const NAME: &CStr = c"parallel-message";
    let fd = memfd_create(
        NAME,
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )?;
    let mut file = File::from(fd);
    // Sized first: the kernel then allocates no more than the message.
    file.set_len(len as u64)?;
    fill(&mut file)?;
    if file.stream_position()? != len as u64 || file.metadata()?.len() != len as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the encoder wrote other than the {len} bytes it announced"),
        ));
    }
    let fd = OwnedFd::from(file);
    // The write seal fails with EBUSY while a page of the file has an extra
    // reference (the kernel waits ~100 ms for those first): on a busy
    // machine, per-CPU page batches can hold one a little longer. Tried
    // again a few times before the caller falls back to the socket.
    let mut busy_tries = 0;
    loop {
        match fcntl(
            fd.as_raw_fd(),
            FcntlArg::F_ADD_SEALS(required_seals() | SealFlag::F_SEAL_SEAL),
        ) {
            Ok(_) => return Ok(fd),
            Err(nix::errno::Errno::EBUSY) if busy_tries < 3 => {
                busy_tries += 1;
                std::thread::yield_now();
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// A read-only mapping of a sealed memfd: the bytes of one message.
///
/// Unmapped when dropped. The memfd itself may be closed once mapped: the
/// mapping keeps its memory alive.
#[derive(Debug)]
pub struct SharedBytes {
    /// Start of the mapping; dangling (and never unmapped) when `len` is 0.
    start: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is read-only and sealed against writes by anyone
// (checked in `map`), so sharing or moving it between threads is the same
// as sharing an immutable `[u8]`.
unsafe impl Send for SharedBytes {}
// SAFETY: as above: nothing can write the bytes.
unsafe impl Sync for SharedBytes {}

impl SharedBytes {
    /// Maps `fd` read-only after checking that it is a memfd sealed against
    /// shrinking, growing and writing, exactly `len` bytes long.
    ///
    /// # Errors
    /// Why the memory cannot be trusted or mapped, in words for a
    /// `RemoteError::BadSharedMemory`: not a sealable file, a seal
    /// missing, another size, or the kernel refused the mapping.
    pub fn map(fd: BorrowedFd<'_>, len: u64) -> Result<SharedBytes, String> {
        let seals = fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS)
            .map_err(|errno| format!("the descriptor is not a sealable memfd ({errno})"))?;
        let seals = SealFlag::from_bits_truncate(seals);
        if !seals.contains(required_seals()) {
            return Err(format!(
                "the memfd is not sealed against shrinking, growing and writing \
                 (seals {seals:?})"
            ));
        }
        let size = nix::sys::stat::fstat(fd.as_raw_fd())
            .map_err(|errno| format!("fstat of the memfd failed ({errno})"))?
            .st_size;
        if u64::try_from(size).ok() != Some(len) {
            return Err(format!(
                "the memfd holds {size} bytes, the frame announced {len}"
            ));
        }
        let len = usize::try_from(len)
            .map_err(|_| format!("{len} bytes do not fit in this address space"))?;
        if len == 0 {
            // mmap refuses an empty mapping: nothing to map.
            return Ok(SharedBytes {
                start: NonNull::dangling(),
                len: 0,
            });
        }
        // SAFETY: a fresh mapping chosen by the kernel (no address hint), of a
        // descriptor we hold open for the call; it aliases no Rust object.
        // The file is sealed against shrinking, so every page of the
        // `len` bytes stays backed (no SIGBUS), and against writing, so the
        // bytes never change under a `&[u8]`. MAP_POPULATE maps the pages
        // now rather than one fault at a time.
        let start = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if start == libc::MAP_FAILED {
            return Err(format!(
                "mapping {len} bytes failed ({})",
                io::Error::last_os_error()
            ));
        }
        let start = NonNull::new(start.cast::<u8>()).ok_or("mmap returned null")?;
        Ok(SharedBytes { start, len })
    }

    /// The message's bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `start` is a live read-only mapping of `len` bytes (or
        // dangling with `len` 0), unmapped only in `drop`, after every
        // borrow of `self` ended; sealed, so nothing writes it.
        unsafe { std::slice::from_raw_parts(self.start.as_ptr(), self.len) }
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty message.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for SharedBytes {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: the mapping `map` created, unmapped once, here; no slice
        // of it outlives `self`.
        unsafe { libc::munmap(self.start.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_sealed_memfd_maps_back_to_its_bytes() {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let fd = sealed_memfd(&bytes).unwrap();
        let mapped = SharedBytes::map(fd.as_fd(), bytes.len() as u64).unwrap();
        drop(fd);
        assert_eq!(mapped.as_slice(), &bytes[..]);
        let empty = sealed_memfd(&[]).unwrap();
        assert!(SharedBytes::map(empty.as_fd(), 0).unwrap().is_empty());
    }

    #[test]
    fn a_wrong_size_or_missing_seal_is_refused() {
        let fd = sealed_memfd(&[1; 4096]).unwrap();
        let error = SharedBytes::map(fd.as_fd(), 8192).unwrap_err();
        assert_eq!(
            error,
            "the memfd holds 4096 bytes, the frame announced 8192"
        );

        let unsealed = memfd_create(c"test", MemFdCreateFlag::MFD_CLOEXEC).unwrap();
        let error = SharedBytes::map(unsealed.as_fd(), 0).unwrap_err();
        assert!(error.contains("not sealed"), "{error}");

        let (pipe, _writer) = nix::unistd::pipe().unwrap();
        let error = SharedBytes::map(pipe.as_fd(), 0).unwrap_err();
        assert!(error.contains("not a sealable memfd"), "{error}");
    }
}
