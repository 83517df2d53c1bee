//! The raw floor: a hand-written mini zygote, with no code of this project.
//!
//! Forked at the top of `main` while the process is single-threaded, it waits
//! on a socketpair for requests: one byte (what to run) carrying one
//! descriptor (the new worker's end of a fresh socketpair). Per request it
//! forks a worker that runs [`RawKind`] on that descriptor. No pid reply, no
//! entry verification, no signal mask, no death signal in the worker: the
//! least a zygote can do. Workers are reaped by the kernel (SIGCHLD ignored).

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a raw worker does with its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RawKind {
    /// Writes one byte and exits: fork + first reply, no runtime.
    Byte = 0,
    /// Builds a tokio current-thread runtime, writes one byte through it, exits.
    RuntimeByte = 1,
    /// Builds the runtime, then writes the CLOCK_MONOTONIC time (8 bytes,
    /// LE nanoseconds) at which it is ready to run a task, its minor page
    /// faults so far and its pid (8 bytes each), through it; then `_exit`s.
    RuntimeClock = 4,
    /// As `RuntimeClock`, then exits the way a library worker does: drops
    /// the runtime, then `std::process::exit` (atexit handlers, stdio flush).
    RuntimeClockTeardown = 5,
    /// As `RuntimeClock`, then keeps its CPU busy for 200 µs before `_exit`:
    /// shows what a worker that goes on running after its reply costs the
    /// parent's wake-up.
    RuntimeClockBusy = 6,
    /// Builds the runtime, writes its pid (4 bytes, LE), then echoes every
    /// byte until end of stream.
    Echo = 2,
    /// Builds the runtime, writes its pid, then repeatedly reads an 8-byte
    /// length `n`, reads and drops `n` bytes, and answers `n` (8 bytes).
    Sink = 3,
}

impl RawKind {
    fn from_byte(byte: u8) -> Option<RawKind> {
        [
            RawKind::Byte,
            RawKind::RuntimeByte,
            RawKind::Echo,
            RawKind::Sink,
            RawKind::RuntimeClock,
            RawKind::RuntimeClockTeardown,
            RawKind::RuntimeClockBusy,
        ]
        .into_iter()
        .find(|kind| *kind as u8 == byte)
    }
}

/// The parent's handle on the raw zygote.
pub struct RawZygote {
    control: UnixStream,
}

impl RawZygote {
    /// Forks the raw zygote. Call while the process is single-threaded.
    pub fn start() -> RawZygote {
        let threads = std::fs::read_dir("/proc/self/task").map_or(0, |dir| dir.count());
        assert_eq!(threads, 1, "the raw zygote must be forked single-threaded");
        let (parent_end, zygote_end) = UnixStream::pair().expect("socketpair");
        // SAFETY: the process has one thread (checked above), so the child
        // inherits no lock held by another thread and may run ordinary code;
        // it never returns (`serve` ends in `_exit`).
        match unsafe { libc::fork() } {
            -1 => panic!("fork: {}", std::io::Error::last_os_error()),
            0 => {
                drop(parent_end);
                serve(zygote_end)
            }
            _ => {
                drop(zygote_end);
                RawZygote {
                    control: parent_end,
                }
            }
        }
    }

    /// Asks for a worker; returns the parent's end of its socket at once.
    pub fn spawn(&self, kind: RawKind) -> UnixStream {
        let (mine, theirs) = UnixStream::pair().expect("socketpair");
        let fds = [theirs.as_raw_fd()];
        let request = [kind as u8];
        sendmsg::<()>(
            self.control.as_raw_fd(),
            &[IoSlice::new(&request)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .expect("sending a request to the raw zygote");
        mine
    }

    /// Spawns an `Echo` or `Sink` worker and waits for its pid hello.
    pub fn spawn_ready(&self, kind: RawKind) -> (UnixStream, i32) {
        let mut stream = self.spawn(kind);
        let mut pid = [0u8; 4];
        stream.read_exact(&mut pid).expect("raw worker hello");
        (stream, i32::from_le_bytes(pid))
    }
}

/// The raw zygote's loop. Never returns.
fn serve(control: UnixStream) -> ! {
    // SAFETY: prctl(PR_SET_PDEATHSIG) and signal(SIGCHLD, SIG_IGN) take plain
    // integers and touch no memory of ours. With SIGCHLD ignored the kernel
    // reaps the workers, so the zygote needs no waitpid.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
    }
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    loop {
        let mut request = [0u8; 1];
        let (bytes, fds) = {
            let mut iov = [IoSliceMut::new(&mut request)];
            match recvmsg::<()>(
                control.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            ) {
                Ok(message) => {
                    let mut fds = Vec::new();
                    for received in message.cmsgs().into_iter().flatten() {
                        if let ControlMessageOwned::ScmRights(received) = received {
                            fds.extend(received);
                        }
                    }
                    (message.bytes, fds)
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => exit_now(),
            }
        };
        if bytes == 0 {
            exit_now(); // the parent hung up
        }
        // SAFETY: the kernel just installed these descriptors for us.
        let mut fds: Vec<OwnedFd> = fds
            .into_iter()
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect();
        let (Some(kind), Some(channel)) = (RawKind::from_byte(request[0]), fds.pop()) else {
            exit_now();
        };
        // SAFETY: the raw zygote is single-threaded (forked from a
        // single-threaded parent, it starts no thread), so the child may run
        // ordinary code; `work` never returns.
        match unsafe { libc::fork() } {
            -1 => panic!("fork: {}", std::io::Error::last_os_error()),
            0 => {
                drop(control);
                // SAFETY: restores the default disposition; no memory involved.
                unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
                work(kind, UnixStream::from(channel))
            }
            _ => drop(channel),
        }
    }
}

fn exit_now() -> ! {
    // SAFETY: _exit ends the process at once.
    unsafe { libc::_exit(0) }
}

/// A raw worker's life. Never returns.
fn work(kind: RawKind, mut channel: UnixStream) -> ! {
    if kind == RawKind::Byte {
        let _ = channel.write_all(&[1]);
        exit_now();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        channel.set_nonblocking(true).expect("nonblocking");
        let mut stream = tokio::net::UnixStream::from_std(channel).expect("tokio stream");
        match kind {
            RawKind::Byte => unreachable!(),
            RawKind::RuntimeByte => {
                let _ = stream.write_all(&[1]).await;
            }
            RawKind::RuntimeClock | RawKind::RuntimeClockTeardown | RawKind::RuntimeClockBusy => {
                // Faults first, so reading /proc lands before the clock
                // (the library's function does the same).
                let faults = super::os::minor_faults();
                let now = super::os::monotonic_ns();
                let mut message = [0u8; 24];
                message[..8].copy_from_slice(&now.to_le_bytes());
                message[8..16].copy_from_slice(&faults.to_le_bytes());
                message[16..].copy_from_slice(&u64::from(std::process::id()).to_le_bytes());
                let _ = stream.write_all(&message).await;
            }
            RawKind::Echo => {
                let _ = stream.write_all(&std::process::id().to_le_bytes()).await;
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(read) => {
                            if stream.write_all(&buffer[..read]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
            RawKind::Sink => {
                let _ = stream.write_all(&std::process::id().to_le_bytes()).await;
                // Reads the size `parallel-tokio` reads in one go (256 KiB);
                // the kernel's socket buffer (~208 KiB) bounds a read anyway.
                let mut buffer = vec![0u8; 256 * 1024];
                let mut header = [0u8; 8];
                while stream.read_exact(&mut header).await.is_ok() {
                    let total = u64::from_le_bytes(header);
                    let mut left = total as usize;
                    while left > 0 {
                        let want = left.min(buffer.len());
                        match stream.read(&mut buffer[..want]).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => left -= read,
                        }
                    }
                    if stream.write_all(&total.to_le_bytes()).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    if kind == RawKind::RuntimeClockBusy {
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_micros(200) {
            std::hint::spin_loop();
        }
    }
    if kind == RawKind::RuntimeClockTeardown {
        drop(runtime);
        std::process::exit(0);
    }
    exit_now()
}
