//! The raw floor: a hand-written mini zygote, with no code of this project.
//!
//! Forked at the top of `main` while the process is single-threaded, it waits
//! on a socketpair for requests: one byte (what to run) carrying one
//! descriptor (the new worker's end of a fresh socketpair). Per request it
//! forks a worker that runs [`RawKind`] on that descriptor, on a
//! [`RawRuntime`]. No pid reply, no entry verification, no signal mask, no
//! death signal in the worker: the least a zygote can do. Workers are reaped
//! by the kernel (SIGCHLD ignored).
//!
//! The fork hazard of async-io (a process forked after its parent used
//! async-io's global reactor inherits a reactor whose thread is gone, and
//! hangs when it uses it) does not reach the raw smol workers: they are forked
//! by the raw zygote, which `main` forks before anything touches async-io and
//! which never touches it itself, so each raw worker builds async-io's
//! reactor afresh on its first `Async::new` (as `parallel-smol`'s workers,
//! forked from the library's zygote, do). The harness forks nothing else from
//! its own process after async-io started, except the OS baselines, whose
//! children `_exit` or `exec` at once.

use std::any::Any;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use smol::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::proto::ProtoEchoer;

/// The runtime a raw worker builds (for every [`RawKind`] but `Byte`): each
/// adapter's raw baselines run on its own runtime, on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RawRuntime {
    /// A tokio current-thread runtime; the socket a `tokio::net::UnixStream`.
    Tokio = 0,
    /// async-io: `async_io::block_on` running a `smol::LocalExecutor` (what a
    /// `parallel-smol` worker runs); the socket an `Async<UnixStream>`.
    Smol = 1,
    /// A glommio `LocalExecutor`, built as `parallel-glommio` builds its
    /// workers' (unbound, 64 KiB of io memory, 8-deep rings, membarrier
    /// registered first); the socket glommio's own `net::UnixStream`.
    Glommio = 2,
}

impl RawRuntime {
    fn from_bits(bits: u8) -> Option<RawRuntime> {
        [RawRuntime::Tokio, RawRuntime::Smol, RawRuntime::Glommio]
            .into_iter()
            .find(|runtime| *runtime as u8 == bits)
    }
}

/// What a raw worker does with its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RawKind {
    /// Writes one byte and exits: fork + first reply, no runtime.
    Byte = 0,
    /// Builds its runtime, writes one byte through it, exits.
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
    /// Builds the runtime, writes its pid, then speaks the worker's side of
    /// `parallel-proto`'s channel with plain reads and writes, answering
    /// each `u64` call with its argument (see [`super::proto`]).
    ProtoEcho = 7,
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
            RawKind::ProtoEcho,
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

    /// Asks for a worker on tokio; returns the parent's end of its socket at once.
    pub fn spawn(&self, kind: RawKind) -> UnixStream {
        self.spawn_on(RawRuntime::Tokio, kind)
    }

    /// Asks for a worker on `runtime`; returns the parent's end of its
    /// socket at once.
    pub fn spawn_on(&self, runtime: RawRuntime, kind: RawKind) -> UnixStream {
        let (mine, theirs) = UnixStream::pair().expect("socketpair");
        let fds = [theirs.as_raw_fd()];
        // One byte: the kind in the low nibble, the runtime in the high one.
        let request = [kind as u8 | (runtime as u8) << 4];
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

    /// Spawns an `Echo` or `Sink` worker on tokio and waits for its pid hello.
    pub fn spawn_ready(&self, kind: RawKind) -> (UnixStream, i32) {
        self.spawn_ready_on(RawRuntime::Tokio, kind)
    }

    /// Spawns an `Echo` or `Sink` worker on `runtime` and waits for its pid
    /// hello.
    pub fn spawn_ready_on(&self, runtime: RawRuntime, kind: RawKind) -> (UnixStream, i32) {
        let mut stream = self.spawn_on(runtime, kind);
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
        let (Some(kind), Some(runtime), Some(channel)) = (
            RawKind::from_byte(request[0] & 0x0f),
            RawRuntime::from_bits(request[0] >> 4),
            fds.pop(),
        ) else {
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
                work(kind, runtime, UnixStream::from(channel))
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
fn work(kind: RawKind, runtime: RawRuntime, mut channel: UnixStream) -> ! {
    if kind == RawKind::Byte {
        let _ = channel.write_all(&[1]);
        exit_now();
    }
    // The runtime comes back, for the teardown kind to drop.
    let runtime: Box<dyn Any> = match runtime {
        RawRuntime::Tokio => work_tokio(kind, channel),
        RawRuntime::Smol => work_smol(kind, channel),
        RawRuntime::Glommio => work_glommio(kind, channel),
    };
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

/// The clock message of the `RuntimeClock*` kinds: ready time, minor page
/// faults, pid.
fn clock_message() -> [u8; 24] {
    // Faults first, so reading /proc lands before the clock (the library's
    // function does the same).
    let faults = super::os::minor_faults();
    let now = super::os::monotonic_ns();
    let mut message = [0u8; 24];
    message[..8].copy_from_slice(&now.to_le_bytes());
    message[8..16].copy_from_slice(&faults.to_le_bytes());
    message[16..].copy_from_slice(&u64::from(std::process::id()).to_le_bytes());
    message
}

/// Reads the size `parallel-tokio` reads in one go (256 KiB); the kernel's
/// socket buffer (~208 KiB) bounds a read anyway.
const SINK_READ: usize = 256 * 1024;

/// A tokio current-thread runtime.
fn work_tokio(kind: RawKind, channel: UnixStream) -> Box<dyn Any> {
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
                let _ = stream.write_all(&clock_message()).await;
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
                let mut buffer = vec![0u8; SINK_READ];
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
            RawKind::ProtoEcho => {
                let _ = stream.write_all(&std::process::id().to_le_bytes()).await;
                let mut echoer = ProtoEchoer::new();
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    while let Some(transmit) = echoer.transmit() {
                        if stream.write_all(&transmit.head).await.is_err()
                            || stream.write_all(&transmit.body).await.is_err()
                        {
                            return;
                        }
                        echoer.written(transmit);
                    }
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) if !echoer.read(&buffer[..read]) => return,
                        Ok(_) => {}
                    }
                }
            }
        }
    });
    Box::new(runtime)
}

/// async-io's `block_on` running a `smol::LocalExecutor`, as a
/// `parallel-smol` worker does. The first `Async::new` builds async-io's
/// reactor and starts its thread (this process never used async-io before:
/// see the module's doc).
fn work_smol(kind: RawKind, channel: UnixStream) -> Box<dyn Any> {
    let executor = smol::LocalExecutor::new();
    async_io::block_on(executor.run(async move {
        let stream = async_io::Async::new(channel).expect("async-io stream");
        serve_futures_io(kind, stream).await;
    }));
    Box::new(executor)
}

/// A glommio `LocalExecutor`, built as `parallel-glommio`'s worker builds it.
fn work_glommio(kind: RawKind, channel: UnixStream) -> Box<dyn Any> {
    // glommio refuses to start with less than 512 KiB of locked memory; raise
    // the soft limit if it is lower (as the library's worker does).
    if let Ok((soft, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
    {
        if soft < 512 << 10 {
            let _ = nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_MEMLOCK,
                hard.min(1 << 20),
                hard,
            );
        }
    }
    // glommio issues membarrier(PRIVATE_EXPEDITED) before each park and
    // registers for it on the first, which takes milliseconds once its
    // threads exist; registering now, single-threaded, is cheap (the
    // library's worker and `parallel_glommio::init` do the same).
    super::os::register_membarrier();
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(64 << 10)
        .ring_depth(8)
        .make()
        .expect("glommio executor");
    executor.run(async move {
        // SAFETY: `into_raw_fd` gives up ownership of an open descriptor and
        // `from_raw_fd` takes it over; nothing else refers to it.
        let stream = unsafe { glommio::net::UnixStream::from_raw_fd(channel.into_raw_fd()) };
        serve_futures_io(kind, stream).await;
    });
    Box::new(executor)
}

/// The raw worker's work on a futures-io socket (smol's and glommio's):
/// the same steps as on tokio.
async fn serve_futures_io<S: AsyncRead + AsyncWrite + Unpin>(kind: RawKind, mut stream: S) {
    use smol::io::{AsyncReadExt as _, AsyncWriteExt as _};
    match kind {
        RawKind::Byte => unreachable!(),
        RawKind::RuntimeByte => {
            let _ = stream.write_all(&[1]).await;
        }
        RawKind::RuntimeClock | RawKind::RuntimeClockTeardown | RawKind::RuntimeClockBusy => {
            let _ = stream.write_all(&clock_message()).await;
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
            let mut buffer = vec![0u8; SINK_READ];
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
        RawKind::ProtoEcho => {
            let _ = stream.write_all(&std::process::id().to_le_bytes()).await;
            let mut echoer = ProtoEchoer::new();
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                while let Some(transmit) = echoer.transmit() {
                    if stream.write_all(&transmit.head).await.is_err()
                        || stream.write_all(&transmit.body).await.is_err()
                    {
                        return;
                    }
                    echoer.written(transmit);
                }
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) if !echoer.read(&buffer[..read]) => return,
                    Ok(_) => {}
                }
            }
        }
    }
}
