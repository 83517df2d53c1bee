//! Moving frames and descriptors over an AF_UNIX stream socket.
//!
//! [`Outbox`] and [`Inbox`] hold the bytes and descriptors of one direction
//! and make progress with one `sendmsg`/`recvmsg` per call. They work on
//! blocking sockets (each call completes or fails) and on non-blocking ones
//! (a call returns `WouldBlock` and is retried when the socket is ready),
//! which is how every adapter binds them to its runtime.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{send, sendmsg, ControlMessage, MsgFlags};
use parallel_proto::Transmit;

/// Slices one `sendmsg` gathers at most (well under the kernel's `UIO_MAXIOV`
/// of 1024): 32 transmits of a head and a body each.
const MAX_SLICES_PER_SEND: usize = 64;

/// Descriptors one `recvmsg` can return (the kernel's `SCM_MAX_FD`).
const MAX_FDS_PER_RECV: usize = 253;

/// Payload bytes of a transmit that the state machine never held
/// ([`Transmit::external`]): a part of a message, written from where it is.
pub type Piece = Box<dyn AsRef<[u8]> + Send>;

/// A queued transmit and the external pieces that complete it.
#[derive(Default)]
struct Queued {
    transmit: Transmit,
    pieces: Vec<Piece>,
}

impl Queued {
    /// True when the transmit is all in `head`, with no descriptors.
    fn is_plain(&self) -> bool {
        self.transmit.fds == 0
            && self.transmit.body.is_empty()
            && self.transmit.external == 0
            && self.pieces.is_empty()
    }

    /// The byte runs to write, in order.
    fn runs(&self) -> impl Iterator<Item = &[u8]> {
        [&self.transmit.head[..], &self.transmit.body[..]]
            .into_iter()
            .chain(self.pieces.iter().map(|piece| (**piece).as_ref()))
    }
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued")
            .field("transmit", &self.transmit)
            .field("pieces", &self.pieces.len())
            .finish()
    }
}

/// Outgoing transmits and the descriptors they carry, written in order.
#[derive(Debug, Default)]
pub struct Outbox {
    transmits: VecDeque<Queued>,
    /// Bytes of the front transmit already written.
    written: usize,
    fds: VecDeque<OwnedFd>,
    /// Where a written transmit's body goes (see [`set_recycle`](Self::set_recycle)).
    recycle: Option<fn(Vec<u8>)>,
    /// The `head` of the last transmit written whole (see [`take_spent`](Self::take_spent)).
    spent: Option<Vec<u8>>,
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Hands each transmit's body (a large payload, moved into the frame)
    /// to `recycle` once it has been written, instead of freeing it: a pool
    /// of buffers for the next large payloads.
    pub fn set_recycle(&mut self, recycle: fn(Vec<u8>)) {
        self.recycle = Some(recycle);
    }

    /// The `head` buffer of the last transmit written whole, if it was not
    /// taken yet: hand it back to the state machine (its `recycle`) and the
    /// next frame is encoded into it instead of a fresh allocation.
    pub fn take_spent(&mut self) -> Option<Vec<u8>> {
        self.spent.take()
    }

    /// Queues a transmit; the next `transmit.fds` descriptors of `fds` ride with it.
    pub fn push(&mut self, transmit: Transmit, fds: impl IntoIterator<Item = OwnedFd>) {
        self.push_with(transmit, fds, Vec::new());
    }

    /// Queues a transmit whose [`external`](Transmit::external) bytes are
    /// `pieces`, written after its head and body from where they are.
    ///
    /// # Panics
    /// When the pieces do not hold exactly `transmit.external` bytes (a
    /// caller bug: the frame's header announced that many).
    pub fn push_with(
        &mut self,
        transmit: Transmit,
        fds: impl IntoIterator<Item = OwnedFd>,
        pieces: Vec<Piece>,
    ) {
        let held: usize = pieces.iter().map(|piece| (**piece).as_ref().len()).sum();
        assert_eq!(
            held, transmit.external,
            "a transmit's external pieces must hold the bytes its header announced"
        );
        self.fds.extend(fds);
        self.transmits.push_back(Queued { transmit, pieces });
    }

    /// True when everything has been written.
    pub fn is_empty(&self) -> bool {
        self.transmits.is_empty()
    }

    /// Transmits not wholly written yet.
    pub fn len(&self) -> usize {
        self.transmits.len()
    }

    /// Bytes still to write.
    pub fn pending_bytes(&self) -> usize {
        self.transmits
            .iter()
            .map(|queued| queued.transmit.len())
            .sum::<usize>()
            - self.written
    }

    /// Writes until the outbox is empty or the socket would block
    /// (`Err(WouldBlock)`). Descriptors are closed here once sent: the
    /// receiver holds its own copies.
    ///
    /// # Errors
    /// [`io::ErrorKind::WouldBlock`] on a non-blocking socket whose buffer
    /// is full: call again once it is writable, nothing is lost.
    /// [`io::ErrorKind::InvalidInput`] when a transmit declares more
    /// descriptors than were pushed with it (a caller bug). Any other
    /// `sendmsg` error as it is (`EPIPE` once the peer closed, `ECONNRESET`,
    /// ...; `EINTR` is retried, and `MSG_NOSIGNAL` means no `SIGPIPE`).
    pub fn flush(&mut self, socket: &impl AsRawFd) -> io::Result<()> {
        while let Some(front) = self.transmits.front() {
            if self.transmits.len() == 1 && front.is_plain() {
                // A lone call, answer or small message (the common case):
                // one `send` of one slice, without the gathering below
                // (a quarter of the instructions a round trip spends here).
                let rest = &front.transmit.head[self.written..];
                let sent = loop {
                    match send(socket.as_raw_fd(), rest, MsgFlags::MSG_NOSIGNAL) {
                        Ok(sent) => break sent,
                        Err(nix::errno::Errno::EINTR) => continue,
                        Err(errno) => return Err(errno.into()),
                    }
                };
                if sent < rest.len() {
                    self.written += sent;
                } else {
                    self.spent = self.transmits.pop_front().map(|done| done.transmit.head);
                    self.written = 0;
                }
                continue;
            }
            let attach = if self.written == 0 {
                front.transmit.fds
            } else {
                0
            };
            let raw: Vec<RawFd> = self
                .fds
                .iter()
                .take(attach)
                .map(AsRawFd::as_raw_fd)
                .collect();
            if raw.len() < attach {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a transmit declares more descriptors than were queued with it",
                ));
            }
            // Gather the front transmit's rest and the transmits after it,
            // up to the next that carries descriptors (they must ride with
            // that transmit's first byte): pipelined calls and small messages
            // go out in one system call rather than one each.
            // On the stack: a call's or a reply's write allocates nothing.
            let mut slices = [IoSlice::new(&[]); MAX_SLICES_PER_SEND];
            let mut used = 0;
            let mut skip = self.written;
            for run in front.runs() {
                let rest = run.get(skip..).unwrap_or(&[]);
                skip = skip.saturating_sub(run.len());
                if !rest.is_empty() && used < MAX_SLICES_PER_SEND {
                    slices[used] = IoSlice::new(rest);
                    used += 1;
                }
            }
            for next in self.transmits.iter().skip(1) {
                if next.transmit.fds > 0 || used + 2 + next.pieces.len() > MAX_SLICES_PER_SEND {
                    break;
                }
                for run in next.runs() {
                    slices[used] = IoSlice::new(run);
                    used += 1;
                }
            }
            let slices = &slices[..used];
            let rights = [ControlMessage::ScmRights(&raw)];
            let cmsgs: &[ControlMessage] = if attach > 0 { &rights } else { &[] };
            let mut sent = send_gathered(socket, slices, cmsgs)?;
            // The kernel took the descriptors with the first byte: close ours.
            if sent > 0 {
                self.fds.drain(..attach);
            }
            // Retire every transmit the write covered.
            while let Some(front) = self.transmits.front() {
                let rest = front.transmit.len() - self.written;
                if sent < rest {
                    self.written += sent;
                    break;
                }
                sent -= rest;
                if let Some(done) = self.transmits.pop_front() {
                    if let Some(recycle) = self.recycle {
                        if done.transmit.body.capacity() > 0 {
                            recycle(done.transmit.body);
                        }
                    }
                    self.spent = Some(done.transmit.head);
                }
                self.written = 0;
            }
        }
        Ok(())
    }
}

/// Writes as much of `slices` as the socket takes now, in one `sendmsg`,
/// with no descriptors. Returns the bytes written.
///
/// # Errors
/// [`io::ErrorKind::WouldBlock`] on a non-blocking socket whose buffer is
/// full; any other `sendmsg` error as it is (`EINTR` is retried, and
/// `MSG_NOSIGNAL` means no `SIGPIPE`).
pub fn write_gathered(socket: &impl AsRawFd, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    send_gathered(socket, slices, &[])
}

/// One `sendmsg` of `slices` with `cmsgs`, retried on `EINTR`, without
/// `SIGPIPE`.
fn send_gathered(
    socket: &impl AsRawFd,
    slices: &[IoSlice<'_>],
    cmsgs: &[ControlMessage<'_>],
) -> io::Result<usize> {
    loop {
        match sendmsg::<()>(
            socket.as_raw_fd(),
            slices,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(sent) => return Ok(sent),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// The descriptors received on one socket, in order, until frames claim them.
#[derive(Debug)]
pub struct Inbox {
    fds: VecDeque<OwnedFd>,
    cmsg: Vec<u8>,
    /// The buffer [`read_append`](Self::read_append) last asked huge pages
    /// for (its address): asked once per buffer, not once per read.
    advised: usize,
}

impl Default for Inbox {
    fn default() -> Self {
        Inbox {
            fds: VecDeque::new(),
            // Room for the most descriptors one recvmsg can return, zeroed
            // (the macro only reserves it).
            cmsg: vec![0; nix::cmsg_space!([RawFd; MAX_FDS_PER_RECV]).capacity()],
            advised: 0,
        }
    }
}

impl Inbox {
    /// An empty inbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads once into `buffer`. Returns the number of bytes read (0 at end of
    /// stream); the descriptors that came along are queued for
    /// [`take_fds`](Self::take_fds).
    ///
    /// # Errors
    /// [`io::ErrorKind::WouldBlock`] on a non-blocking socket with nothing to
    /// read. `ENOBUFS` when the kernel truncated the descriptors that came
    /// along (`MSG_CTRUNC`; they are closed and lost). Any other `recvmsg`
    /// error as it is (`ECONNRESET`, ...; `EINTR` is retried).
    pub fn read(&mut self, socket: &impl AsRawFd, buffer: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `recv` only writes initialized bytes into the slice, and
        // `u8` and `MaybeUninit<u8>` have the same layout.
        let buffer =
            unsafe { &mut *(std::ptr::from_mut::<[u8]>(buffer) as *mut [MaybeUninit<u8>]) };
        self.recv(socket, buffer)
    }

    /// Reads once, appending at most `max` bytes to `buffer` (reading into
    /// its spare capacity: no zeroing, no staging copy). Otherwise as
    /// [`read`](Self::read).
    ///
    /// The first time it sees a buffer, it asks the kernel to back the
    /// 2 MiB-aligned blocks of its spare capacity with transparent huge
    /// pages (`MADV_HUGEPAGE`; anonymous THP is often `madvise`-only): a
    /// fresh 64 MiB payload buffer then costs 32 page faults instead of
    /// 16 384.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub fn read_append(
        &mut self,
        socket: &impl AsRawFd,
        buffer: &mut Vec<u8>,
        max: usize,
    ) -> io::Result<usize> {
        buffer.reserve(max);
        // A large payload's fresh buffer: its pages come 2 MiB at a time
        // (where the system gives huge pages on request), not 4 KiB per
        // fault. Asked once per buffer.
        if buffer.as_ptr() as usize != self.advised {
            self.advised = buffer.as_ptr() as usize;
            advise_huge_pages(buffer.spare_capacity_mut());
        }
        let spare = &mut buffer.spare_capacity_mut()[..max];
        let received = self.recv(socket, spare)?;
        // SAFETY: the kernel initialized the first `received` bytes of the
        // spare capacity, which holds at least `max >= received` bytes.
        unsafe { buffer.set_len(buffer.len() + received) };
        Ok(received)
    }

    /// One `recvmsg` into possibly uninitialized memory, queueing the
    /// descriptors that came along.
    fn recv(&mut self, socket: &impl AsRawFd, buffer: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
        loop {
            let mut iov = libc::iovec {
                iov_base: buffer.as_mut_ptr().cast(),
                iov_len: buffer.len(),
            };
            // SAFETY: all-zero is a valid `msghdr` (null pointers, zero lengths).
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            header.msg_iov = &mut iov;
            header.msg_iovlen = 1;
            header.msg_control = self.cmsg.as_mut_ptr().cast();
            header.msg_controllen = self.cmsg.len() as _;
            // SAFETY: `header` points at one iovec over `buffer` and at the
            // control buffer, both valid for writes of their stated lengths
            // for the duration of the call.
            let received =
                unsafe { libc::recvmsg(socket.as_raw_fd(), &mut header, libc::MSG_CMSG_CLOEXEC) };
            if received < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            // SAFETY: the kernel filled `msg_controllen` bytes of the control
            // buffer with well-formed cmsgs; the CMSG_* macros walk them.
            let truncated = unsafe { self.take_rights(&header) };
            if truncated {
                // Some descriptors were dropped by the kernel: the stream's
                // descriptor accounting is broken (those we got are closed).
                return Err(io::Error::from_raw_os_error(libc::ENOBUFS));
            }
            return Ok(received as usize);
        }
    }

    /// Queues the `SCM_RIGHTS` descriptors of a received message; true if
    /// the control data was truncated (`MSG_CTRUNC`), in which case the
    /// descriptors are closed instead.
    ///
    /// # Safety
    /// `header` must be the message header a successful `recvmsg` just filled.
    unsafe fn take_rights(&mut self, header: &libc::msghdr) -> bool {
        let mut fds = Vec::new();
        // SAFETY: (caller) the header and its control buffer are valid.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(header) };
        while !cmsg.is_null() {
            // SAFETY: CMSG_FIRSTHDR/NXTHDR return pointers to complete cmsg headers.
            let c = unsafe { &*cmsg };
            if c.cmsg_level == libc::SOL_SOCKET && c.cmsg_type == libc::SCM_RIGHTS {
                // SAFETY: a zero-length CMSG_LEN is the header's size.
                let data_len = c.cmsg_len as usize - unsafe { libc::CMSG_LEN(0) } as usize;
                // SAFETY: the data holds `data_len / 4` descriptors, maybe unaligned.
                let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
                for i in 0..data_len / std::mem::size_of::<RawFd>() {
                    // SAFETY: in bounds of this cmsg's data, read unaligned.
                    let fd = unsafe { data.add(i).read_unaligned() };
                    // SAFETY: the kernel just installed this descriptor in
                    // our table for us (SCM_RIGHTS); nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
            // SAFETY: as above.
            cmsg = unsafe { libc::CMSG_NXTHDR(header, cmsg) };
        }
        if header.msg_flags & libc::MSG_CTRUNC != 0 {
            return true; // `fds` are dropped: closed.
        }
        self.fds.extend(fds);
        false
    }

    /// How many received descriptors wait to be taken.
    pub fn pending_fds(&self) -> usize {
        self.fds.len()
    }

    /// Raw numbers of the descriptors received and not yet taken (a forked
    /// child closes them: they belong to other requests).
    pub fn held_fds(&self) -> Vec<RawFd> {
        self.fds.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// Takes the next `count` received descriptors, or `None` if fewer arrived
    /// (the peer broke the protocol).
    pub fn take_fds(&mut self, count: usize) -> Option<Vec<OwnedFd>> {
        if count == 0 {
            // Most frames carry none: no drain, no collect.
            return Some(Vec::new());
        }
        if self.fds.len() < count {
            return None;
        }
        Some(self.fds.drain(..count).collect())
    }
}

/// Size of a transparent huge page (x86-64's and arm64's with 4 KiB pages).
const HUGE_PAGE: usize = 2 << 20;

/// `bytes` copied into a new `Vec` whose 2 MiB-aligned blocks are backed by
/// transparent huge pages where the system gives them on request (see
/// [`Inbox::read_append`]): a fresh 64 MiB buffer then costs 32 page faults
/// instead of 16 384, and its copy runs about 4 times faster here (11 ms
/// against 44 ms, fault, zeroing and copy together). The result is an
/// ordinary `Vec` of capacity `bytes.len()`; without THP it is what
/// `bytes.to_vec()` makes.
pub fn copy_to_huge_pages(bytes: &[u8]) -> Vec<u8> {
    let mut copy = Vec::with_capacity(bytes.len());
    advise_huge_pages(&mut copy.spare_capacity_mut()[..bytes.len()]);
    parallel_proto::copy::extend_from_slice(&mut copy, bytes);
    copy
}

/// Asks the kernel to back the 2 MiB-aligned blocks inside `spare` (memory
/// not yet written) with transparent huge pages when they are first
/// touched. Advice only: without THP, or if refused, pages come 4 KiB at a
/// time as before.
fn advise_huge_pages(spare: &mut [MaybeUninit<u8>]) {
    let start = spare.as_mut_ptr() as usize;
    let first = start.next_multiple_of(HUGE_PAGE);
    let end = (start + spare.len()) / HUGE_PAGE * HUGE_PAGE;
    if end <= first {
        return;
    }
    // SAFETY: `first..end` lies inside `spare`, memory this process owns
    // and maps; MADV_HUGEPAGE changes how later faults there are served,
    // never the bytes or the mapping's validity.
    unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE) };
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use super::*;

    fn transmit(head: &[u8], body: &[u8], fds: usize) -> Transmit {
        Transmit {
            head: head.to_vec(),
            body: body.to_vec(),
            fds,
            external: 0,
        }
    }

    #[test]
    fn a_large_payload_buffer_is_offered_huge_pages_and_filled_as_before() {
        let (mut writer, reader) = UnixStream::pair().unwrap();
        let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        writer.write_all(&sent).unwrap();
        let mut inbox = Inbox::new();
        let mut payload = Vec::new();
        let max = 8 * HUGE_PAGE;
        while payload.len() < sent.len() {
            let want = max - payload.len();
            inbox.read_append(&reader, &mut payload, want).unwrap();
        }
        assert_eq!(payload, sent);
        // A 2 MiB block well inside the buffer's capacity, never written.
        let block = (payload.as_ptr() as usize).next_multiple_of(HUGE_PAGE) + HUGE_PAGE;
        assert!(block + HUGE_PAGE <= payload.as_ptr() as usize + payload.capacity());
        // Kernels without THP refuse the advice; nothing else changes.
        if std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            let flags = crate::shm::smaps_field_at(block, "VmFlags:");
            let advised = flags.split_whitespace().any(|flag| flag == "hg");
            assert!(advised, "MADV_HUGEPAGE not applied: VmFlags {flags}");
        }
    }

    #[test]
    fn queued_transmits_arrive_whole_and_in_order() {
        let (sender, receiver) = UnixStream::pair().unwrap();
        let mut outbox = Outbox::new();
        let mut expected = Vec::new();
        // More than one sendmsg's worth of slices, some with bodies.
        for i in 0..100u8 {
            let body = if i % 3 == 0 { vec![i; 100] } else { Vec::new() };
            let t = transmit(&[i, i, i], &body, 0);
            expected.extend_from_slice(&t.head);
            expected.extend_from_slice(&t.body);
            outbox.push(t, []);
        }
        outbox.flush(&sender).unwrap();
        assert!(outbox.is_empty());
        drop(sender);
        let mut received = Vec::new();
        let mut inbox = Inbox::new();
        let mut buffer = vec![0u8; 1024];
        loop {
            match inbox.read(&receiver, &mut buffer).unwrap() {
                0 => break,
                n => received.extend_from_slice(&buffer[..n]),
            }
        }
        assert_eq!(received, expected);
    }

    #[test]
    fn a_lone_transmit_larger_than_the_socket_buffer_resumes_where_it_stopped() {
        // The one-`send` path of a lone transmit, through partial writes.
        let (sender, receiver) = UnixStream::pair().unwrap();
        sender.set_nonblocking(true).unwrap();
        let head: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        let mut outbox = Outbox::new();
        outbox.push(transmit(&head, &[], 0), []);
        let mut received = Vec::new();
        let mut buffer = vec![0u8; 64 << 10];
        let mut would_block = 0;
        while !outbox.is_empty() {
            match outbox.flush(&sender) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => would_block += 1,
                Err(error) => panic!("flush: {error}"),
            }
            assert!(outbox.pending_bytes() <= head.len());
            if !outbox.is_empty() {
                let n = (&receiver).read(&mut buffer).unwrap();
                received.extend_from_slice(&buffer[..n]);
            }
        }
        drop(sender);
        (&receiver).read_to_end(&mut received).unwrap();
        assert!(
            would_block > 0,
            "4 MiB fit the socket buffer: nothing was tested"
        );
        assert_eq!(received.len(), head.len());
        assert!(
            received == head,
            "bytes lost or reordered across partial writes"
        );
    }

    #[test]
    fn a_head_is_spent_only_once_written_whole_on_either_path() {
        let (sender, receiver) = UnixStream::pair().unwrap();
        sender.set_nonblocking(true).unwrap();
        let mut outbox = Outbox::new();
        // The lone-transmit path, through a partial write first.
        let big: Vec<u8> = vec![5; 4 << 20];
        let mut first = transmit(&[], &[], 0);
        first.head = big;
        let first_at = first.head.as_ptr();
        outbox.push(first, []);
        let error = outbox.flush(&sender).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        assert!(
            outbox.take_spent().is_none(),
            "half written: still the socket's"
        );
        let mut sink = vec![0u8; 1 << 20];
        while !outbox.is_empty() {
            let _ = (&receiver).read(&mut sink).unwrap();
            let _ = outbox.flush(&sender);
        }
        let spent = outbox.take_spent().expect("written whole");
        assert_eq!(spent.as_ptr(), first_at);
        assert!(outbox.take_spent().is_none(), "given once");
        // The gathered path (two transmits in one write): the last one's.
        let (sender, _receiver) = UnixStream::pair().unwrap();
        outbox.push(transmit(b"ab", &[], 0), []);
        let second = transmit(b"cd", &[], 0);
        let second_at = second.head.as_ptr();
        outbox.push(second, []);
        outbox.flush(&sender).unwrap();
        let spent = outbox.take_spent().expect("written whole");
        assert_eq!(spent.as_ptr(), second_at);
    }

    #[test]
    fn a_written_body_goes_to_the_recycler_only_once_written_whole() {
        thread_local! {
            static RECYCLED: std::cell::RefCell<Vec<Vec<u8>>> = const {
                std::cell::RefCell::new(Vec::new())
            };
        }
        fn keep(body: Vec<u8>) {
            RECYCLED.with(|recycled| recycled.borrow_mut().push(body));
        }
        let (sender, receiver) = UnixStream::pair().unwrap();
        sender.set_nonblocking(true).unwrap();
        let mut outbox = Outbox::new();
        outbox.set_recycle(keep);
        // More than the socket buffer holds: the first flush writes part.
        let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 249) as u8).collect();
        let pointer = body.as_ptr();
        outbox.push(transmit(b"head", &[], 0), []);
        outbox.push(
            Transmit {
                head: b"h2".to_vec(),
                body,
                fds: 0,
                external: 0,
            },
            [],
        );
        let flush = |outbox: &mut Outbox| match outbox.flush(&sender) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            other => other.unwrap(),
        };
        flush(&mut outbox);
        assert!(!outbox.is_empty(), "the socket buffer took it all");
        assert!(RECYCLED.with(|recycled| recycled.borrow().is_empty()));
        let mut received = Vec::new();
        let mut inbox = Inbox::new();
        let mut buffer = vec![0u8; 65536];
        while !outbox.is_empty() {
            let read = inbox.read(&receiver, &mut buffer).unwrap();
            received.extend_from_slice(&buffer[..read]);
            flush(&mut outbox);
        }
        drop(sender);
        loop {
            match inbox.read(&receiver, &mut buffer).unwrap() {
                0 => break,
                n => received.extend_from_slice(&buffer[..n]),
            }
        }
        assert_eq!(received.len(), 4 + 2 + 1_000_000);
        assert!(received[6..]
            .iter()
            .enumerate()
            .all(|(i, &byte)| byte == (i % 249) as u8));
        let recycled = RECYCLED.with(|recycled| recycled.take());
        assert_eq!(recycled.len(), 1, "the one body, not the bodiless transmit");
        assert_eq!(recycled[0].as_ptr(), pointer);
    }

    #[test]
    fn external_pieces_are_written_after_their_transmit_in_order() {
        let (sender, receiver) = UnixStream::pair().unwrap();
        sender.set_nonblocking(true).unwrap();
        let mut outbox = Outbox::new();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let pieces: Vec<Piece> = vec![
            Box::new(b"one".to_vec()),
            Box::new(big.clone()),
            Box::new(b"two".to_vec()),
        ];
        let mut first = transmit(b"head", b"", 0);
        first.external = 3 + big.len() + 3;
        outbox.push_with(first, [], pieces);
        outbox.push(transmit(b"next", b"", 0), []);
        let expected = [&b"head"[..], b"one", &big, b"two", b"next"].concat();
        // More than the socket buffer holds: written in several goes,
        // resuming inside the pieces.
        let reader = std::thread::spawn(move || {
            let mut received = Vec::new();
            let mut inbox = Inbox::new();
            let mut buffer = vec![0u8; 7000];
            while received.len() < expected.len() {
                let n = inbox.read(&receiver, &mut buffer).unwrap();
                assert!(n > 0, "the stream ended early");
                received.extend_from_slice(&buffer[..n]);
            }
            assert_eq!(received, expected);
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !outbox.is_empty() {
            match outbox.flush(&sender) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "hang guard");
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(error) => panic!("{error}"),
            }
        }
        reader.join().unwrap();
    }

    #[test]
    fn a_batched_write_stops_before_a_transmit_with_descriptors() {
        let (sender, receiver) = UnixStream::pair().unwrap();
        let (mut pipe_writer, pipe_reader) = {
            let (reader, writer) = nix::unistd::pipe().unwrap();
            (std::fs::File::from(writer), reader)
        };
        let mut outbox = Outbox::new();
        outbox.push(transmit(b"first", b"", 0), []);
        outbox.push(transmit(b"second", b"", 1), [pipe_reader]);
        outbox.push(transmit(b"third", b"", 0), []);
        outbox.flush(&sender).unwrap();
        assert!(outbox.is_empty());

        let mut inbox = Inbox::new();
        let mut buffer = vec![0u8; 1024];
        // The first transmit went alone: reading exactly its bytes brings no
        // descriptor (had it shared a write with the next, the descriptor
        // would come with its first byte).
        let n = inbox.read(&receiver, &mut buffer[..5]).unwrap();
        assert_eq!(&buffer[..n], b"first");
        assert_eq!(inbox.pending_fds(), 0);
        // The one with the descriptor, and the one after it, in one write.
        let n = inbox.read(&receiver, &mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"secondthird");
        let fds = inbox.take_fds(1).expect("the descriptor came along");
        // It is the pipe: what goes in one end comes out of the received one.
        pipe_writer.write_all(b"x").unwrap();
        let mut byte = [0u8; 1];
        let read = nix::unistd::read(fds[0].as_raw_fd(), &mut byte).unwrap();
        assert_eq!((read, byte), (1, *b"x"));
    }
}
