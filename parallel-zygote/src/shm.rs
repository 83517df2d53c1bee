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
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
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
    seal(&fd)?;
    Ok(fd)
}

/// Adds the seals that make a memfd's bytes trustworthy to a peer (no
/// shrinking, growing, writing or further sealing).
///
/// The write seal fails with EBUSY while a page of the file has an extra
/// reference (the kernel waits ~100 ms for those first): on a busy machine,
/// per-CPU page batches can hold one a little longer. Tried again a few
/// times before giving up.
fn seal(fd: &OwnedFd) -> io::Result<()> {
    let mut busy_tries = 0;
    loop {
        match fcntl(
            fd.as_raw_fd(),
            FcntlArg::F_ADD_SEALS(required_seals() | SealFlag::F_SEAL_SEAL),
        ) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) if busy_tries < 3 => {
                busy_tries += 1;
                std::thread::yield_now();
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Name of the memfds behind [`WritableMemfd`]s (seen in `/proc/*/maps`
/// and `/proc/*/fd` as `memfd:parallel-bytes`).
pub const BUFFER_NAME: &CStr = c"parallel-bytes";

/// A new memfd, writable and mapped read-write, for a caller to fill in
/// place; [`seal`](Self::seal) turns it into a sealed, read-only
/// [`SharedBytes`] that can be passed to another process with no copy.
///
/// Unmapped and closed when dropped.
#[derive(Debug)]
pub struct WritableMemfd {
    /// The memfd; taken by `seal`.
    memfd: Option<OwnedFd>,
    /// Start of the read-write mapping; dangling when `capacity` is 0.
    start: NonNull<u8>,
    /// Bytes mapped (the memfd's size at creation).
    capacity: usize,
    /// Bytes kept when sealed (at most `capacity`).
    len: usize,
}

// SAFETY: the mapping is private to this value (no other handle to the
// memfd exists until `seal`), reached only through `&self`/`&mut self`, so
// it moves and shares between threads as a `Vec<u8>`'s buffer does.
unsafe impl Send for WritableMemfd {}
// SAFETY: as above: `&self` hands out only `&[u8]`.
unsafe impl Sync for WritableMemfd {}

impl WritableMemfd {
    /// A memfd of `len` zero bytes, mapped read-write, its pages allocated.
    ///
    /// # Errors
    /// The kernel refused the memfd (`EMFILE`, `ENOMEM`), its size, or the
    /// mapping (`ENOMEM`, an address-space limit).
    pub fn new(len: usize) -> io::Result<WritableMemfd> {
        let memfd = memfd_create(
            BUFFER_NAME,
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )?;
        let file = File::from(memfd);
        file.set_len(len as u64)?;
        let memfd = OwnedFd::from(file);
        let start = if len == 0 {
            NonNull::dangling()
        } else {
            // SAFETY: a fresh shared mapping chosen by the kernel, of a memfd
            // only this value holds, sized to `len` above: it aliases no Rust
            // object, and nothing can shrink the file under it (the only
            // descriptor is ours and we never truncate while mapped).
            let start = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    memfd.as_raw_fd(),
                    0,
                )
            };
            if start == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let start = NonNull::new(start.cast::<u8>())
                .ok_or_else(|| io::Error::other("mmap returned null"))?;
            // Allocate every page now, in one call: filling fresh pages one
            // fault at a time costs about 2.5× more (BENCHMARKS.md, issue
            // 13 zero-copy slice), and a memory limit is then reported here
            // rather than as a SIGBUS in the middle of the fill.
            // SAFETY: advice on the mapping just made, of `len` bytes; it
            // only allocates and maps the pages (zeroed), changing no byte.
            let populated =
                unsafe { libc::madvise(start.as_ptr().cast(), len, libc::MADV_POPULATE_WRITE) };
            if populated != 0 {
                let error = io::Error::last_os_error();
                // EINVAL: a kernel before 5.14; the pages then come one
                // fault at a time.
                if error.raw_os_error() != Some(libc::EINVAL) {
                    // SAFETY: the mapping made above, not yet shared.
                    unsafe { libc::munmap(start.as_ptr().cast(), len) };
                    return Err(error);
                }
            }
            start
        };
        Ok(WritableMemfd {
            memfd: Some(memfd),
            start,
            capacity: len,
            len,
        })
    }

    /// The bytes, to read.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `start` is a live read-write mapping of `capacity >= len`
        // bytes (or dangling with `len` 0), unmapped only in `seal` or
        // `drop`, which take `self`; only this value writes it.
        unsafe { std::slice::from_raw_parts(self.start.as_ptr(), self.len) }
    }

    /// The bytes, to fill in place.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.start.as_ptr(), self.len) }
    }

    /// Keeps only the first `len` bytes (no effect if `len` is not smaller).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Unmaps the writable mapping, trims the memfd to the kept length,
    /// seals it against shrinking, growing and writing, and maps it
    /// read-only (pages are not touched: the sender seldom reads them).
    ///
    /// # Errors
    /// The kernel refused to trim, seal (EBUSY while a page stays pinned)
    /// or map it; the memfd is closed then.
    pub fn seal(mut self) -> io::Result<SharedBytes> {
        let (len, capacity) = (self.len, self.capacity);
        self.unmap();
        let file = File::from(self.memfd.take().expect("present until sealed"));
        if len < capacity {
            file.set_len(len as u64)?;
        }
        let memfd = OwnedFd::from(file);
        seal(&memfd)?;
        SharedBytes::map_unchecked(Some(memfd.as_fd()), len).map(|mapping| mapping.keeping(memfd))
    }

    fn unmap(&mut self) {
        if self.capacity == 0 {
            return;
        }
        // SAFETY: the mapping `new` created, unmapped once (capacity is set
        // to 0 after); every borrow of it ended (this takes `&mut self`).
        unsafe { libc::munmap(self.start.as_ptr().cast(), self.capacity) };
        self.capacity = 0;
        self.len = 0;
        self.start = NonNull::dangling();
    }
}

impl Drop for WritableMemfd {
    fn drop(&mut self) {
        self.unmap();
    }
}

/// Checks that `fd` is a memfd sealed against shrinking, growing and
/// writing, exactly `len` bytes long; its length as a `usize`.
fn check_sealed(fd: BorrowedFd<'_>, len: u64) -> Result<usize, String> {
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
            "the memfd holds {size} bytes, {len} were announced"
        ));
    }
    usize::try_from(len).map_err(|_| format!("{len} bytes do not fit in this address space"))
}

/// A read-only mapping of a sealed memfd: the bytes of one message, or of
/// one shared buffer.
///
/// Unmapped when dropped. The memfd itself may be closed once mapped (the
/// mapping keeps its memory alive), or kept ([`map_keeping`](Self::map_keeping))
/// to pass it on to another process.
#[derive(Debug)]
pub struct SharedBytes {
    /// Start of the mapping; dangling (and never unmapped) when `len` is 0.
    start: NonNull<u8>,
    len: usize,
    /// The memfd, when kept to be passed on.
    memfd: Option<OwnedFd>,
}

// SAFETY: the mapping is read-only and sealed against writes by anyone
// (checked in `map`), so sharing or moving it between threads is the same
// as sharing an immutable `[u8]`.
unsafe impl Send for SharedBytes {}
// SAFETY: as above: nothing can write the bytes.
unsafe impl Sync for SharedBytes {}

impl SharedBytes {
    /// Maps `fd` read-only after checking that it is a memfd sealed against
    /// shrinking, growing and writing, exactly `len` bytes long. Its pages
    /// are mapped as they are read; `fd` may be closed afterwards.
    ///
    /// # Errors
    /// Why the memory cannot be trusted or mapped, in words for a
    /// `RemoteError::BadSharedMemory`: not a sealable file, a seal
    /// missing, another size, or the kernel refused the mapping.
    pub fn map(fd: BorrowedFd<'_>, len: u64) -> Result<SharedBytes, String> {
        let len = check_sealed(fd, len)?;
        SharedBytes::map_unchecked(Some(fd), len)
            .map_err(|error| format!("mapping {len} bytes failed ({error})"))
    }

    /// As [`map`](Self::map), but keeps `fd` (closed when the mapping is
    /// dropped), so that the bytes can be passed on without a copy.
    ///
    /// # Errors
    /// As [`map`](Self::map).
    pub fn map_keeping(fd: OwnedFd, len: u64) -> Result<SharedBytes, String> {
        SharedBytes::map(fd.as_fd(), len).map(|mapping| mapping.keeping(fd))
    }

    /// Maps `len` bytes of `fd` read-only, trusting the caller that it is
    /// sealed and that long. Pages are mapped as they are first read (16 at
    /// a time, the kernel's fault-around), not all at once: populating the
    /// mapping (`MAP_POPULATE`) also marked every page accessed, which moves
    /// each one between the kernel's LRU lists under a lock; on the worker
    /// receiving 64 MiB `Bytes` that was a quarter of its time, and those
    /// messages took 15-29 % less time without it (BENCHMARKS.md, issue 13,
    /// session 9). Pages never read are never mapped.
    fn map_unchecked(fd: Option<BorrowedFd<'_>>, len: usize) -> io::Result<SharedBytes> {
        let Some(fd) = fd.filter(|_| len > 0) else {
            // mmap refuses an empty mapping: nothing to map.
            return Ok(SharedBytes {
                start: NonNull::dangling(),
                len: 0,
                memfd: None,
            });
        };
        // SAFETY: a fresh mapping chosen by the kernel (no address hint), of a
        // descriptor we hold open for the call; it aliases no Rust object.
        // The file is sealed against shrinking (checked by `check_sealed`,
        // or sealed by `WritableMemfd::seal`), so every page of the `len`
        // bytes stays backed (no SIGBUS), and against writing, so the bytes
        // never change under a `&[u8]`.
        let start = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if start == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let start = NonNull::new(start.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(SharedBytes {
            start,
            len,
            memfd: None,
        })
    }

    fn keeping(mut self, memfd: OwnedFd) -> SharedBytes {
        self.memfd = Some(memfd);
        self
    }

    /// The sealed memfd behind the bytes, if this mapping kept it.
    pub fn memfd(&self) -> Option<BorrowedFd<'_>> {
        self.memfd.as_ref().map(AsFd::as_fd)
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

/// The value of `field` (`"Rss:"`, `"VmFlags:"`, ...) in `/proc/self/smaps`
/// for the mapping of this process that holds `address`: what unit tests
/// check the kernel did with a mapping.
///
/// # Panics
/// When no mapping holds `address` or it has no such field.
#[cfg(test)]
pub(crate) fn smaps_field_at(address: usize, field: &str) -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        let range = line
            .split_once(' ')
            .and_then(|(range, _)| range.split_once('-'));
        if let Some((start, end)) = range {
            if let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) {
                inside = (start..end).contains(&address);
                continue;
            }
        }
        if let Some(value) = line.strip_prefix(field).filter(|_| inside) {
            return value.to_string();
        }
    }
    panic!("no mapping holds {address:#x} with a {field} field");
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The resident kilobytes of the mapping of this process that holds `address`.
    fn rss_kib_at(address: usize) -> u64 {
        let kib = smaps_field_at(address, "Rss:");
        kib.trim().trim_end_matches("kB").trim().parse().unwrap()
    }

    #[test]
    fn a_mapping_maps_pages_as_they_are_read_not_before() {
        let pages = 64;
        let bytes: Vec<u8> = (0..pages * 4096).map(|i| (i % 241) as u8).collect();
        let fd = sealed_memfd(&bytes).unwrap();
        let mapped = SharedBytes::map(fd.as_fd(), bytes.len() as u64).unwrap();
        drop(fd);
        let start = mapped.as_slice().as_ptr() as usize;
        assert_eq!(rss_kib_at(start), 0, "nothing mapped before a read");
        assert_eq!(mapped.as_slice(), &bytes[..]);
        assert_eq!(rss_kib_at(start), pages as u64 * 4, "all of it once read");
    }

    #[test]
    fn a_filled_memfd_seals_to_its_kept_bytes_and_passes_the_checks() {
        let mut buffer = WritableMemfd::new(3 * 4096).unwrap();
        assert!(buffer.as_slice().iter().all(|&byte| byte == 0));
        for (i, byte) in buffer.as_mut_slice().iter_mut().enumerate() {
            *byte = (i % 7) as u8;
        }
        buffer.truncate(5000);
        let sealed = buffer.seal().unwrap();
        assert_eq!(sealed.len(), 5000);
        assert!(sealed
            .as_slice()
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % 7) as u8));
        let memfd = sealed.memfd().expect("kept to be passed on");
        let again = SharedBytes::map(memfd, 5000).expect("sealed and sized as a peer checks");
        assert_eq!(again.as_slice(), sealed.as_slice());
        let empty = WritableMemfd::new(0).unwrap().seal().unwrap();
        assert!(empty.is_empty() && empty.memfd().is_some());
    }

    #[test]
    fn a_wrong_size_or_missing_seal_is_refused() {
        let fd = sealed_memfd(&[1; 4096]).unwrap();
        let error = SharedBytes::map(fd.as_fd(), 8192).unwrap_err();
        assert_eq!(error, "the memfd holds 4096 bytes, 8192 were announced");

        let unsealed = memfd_create(c"test", MemFdCreateFlag::MFD_CLOEXEC).unwrap();
        let error = SharedBytes::map(unsealed.as_fd(), 0).unwrap_err();
        assert!(error.contains("not sealed"), "{error}");

        let (pipe, _writer) = nix::unistd::pipe().unwrap();
        let error = SharedBytes::map(pipe.as_fd(), 0).unwrap_err();
        assert!(error.contains("not a sealable memfd"), "{error}");
    }
}
