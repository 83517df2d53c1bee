//! Moving frames and descriptors over an AF_UNIX stream socket.
//!
//! [`Outbox`] and [`Inbox`] hold the bytes and descriptors of one direction
//! and make progress with one `sendmsg`/`recvmsg` per call. They work on
//! blocking sockets (each call completes or fails) and on non-blocking ones
//! (a call returns `WouldBlock` and is retried when the socket is ready),
//! which is how every adapter binds them to its runtime.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use parallel_proto::Transmit;

/// Descriptors one `recvmsg` can return (the kernel's `SCM_MAX_FD`).
const MAX_FDS_PER_RECV: usize = 253;

/// Outgoing transmits and the descriptors they carry, written in order.
#[derive(Debug, Default)]
pub struct Outbox {
    transmits: VecDeque<Transmit>,
    /// Bytes of the front transmit already written.
    written: usize,
    fds: VecDeque<OwnedFd>,
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a transmit; the next `transmit.fds` descriptors of `fds` ride with it.
    pub fn push(&mut self, transmit: Transmit, fds: impl IntoIterator<Item = OwnedFd>) {
        self.fds.extend(fds);
        self.transmits.push_back(transmit);
    }

    /// True when everything has been written.
    pub fn is_empty(&self) -> bool {
        self.transmits.is_empty()
    }

    /// Bytes still to write.
    pub fn pending_bytes(&self) -> usize {
        self.transmits.iter().map(Transmit::len).sum::<usize>() - self.written
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
            let head_rest = front.head.get(self.written..).unwrap_or(&[]);
            let body_start = self.written.saturating_sub(front.head.len());
            let body_rest = &front.body[body_start..];
            let slices = [IoSlice::new(head_rest), IoSlice::new(body_rest)];
            let attach = if self.written == 0 { front.fds } else { 0 };
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
            let rights = [ControlMessage::ScmRights(&raw)];
            let cmsgs: &[ControlMessage] = if attach > 0 { &rights } else { &[] };
            let sent = loop {
                match sendmsg::<()>(
                    socket.as_raw_fd(),
                    &slices,
                    cmsgs,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                ) {
                    Ok(sent) => break sent,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(errno) => return Err(errno.into()),
                }
            };
            // The kernel took the descriptors with the first byte: close ours.
            if sent > 0 {
                self.fds.drain(..attach);
            }
            self.written += sent;
            if self.written == front.len() {
                self.transmits.pop_front();
                self.written = 0;
            }
        }
        Ok(())
    }
}

/// The descriptors received on one socket, in order, until frames claim them.
#[derive(Debug)]
pub struct Inbox {
    fds: VecDeque<OwnedFd>,
    cmsg: Vec<u8>,
}

impl Default for Inbox {
    fn default() -> Self {
        Inbox {
            fds: VecDeque::new(),
            cmsg: nix::cmsg_space!([RawFd; MAX_FDS_PER_RECV]),
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
        let received = loop {
            let mut iov = [IoSliceMut::new(&mut *buffer)];
            match recvmsg::<()>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut self.cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(message) => {
                    let mut fds = Vec::new();
                    for cmsg in message.cmsgs().map_err(io::Error::from)? {
                        if let ControlMessageOwned::ScmRights(received) = cmsg {
                            fds.extend(received);
                        }
                    }
                    for fd in fds {
                        // SAFETY: the kernel just installed this descriptor in
                        // our table for us (SCM_RIGHTS); nothing else owns it.
                        self.fds.push_back(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                    break message.bytes;
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(errno) => return Err(errno.into()),
            }
        };
        Ok(received)
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
        if self.fds.len() < count {
            return None;
        }
        Some(self.fds.drain(..count).collect())
    }
}
