//! The exec start path: a zygote made by executing this program's own
//! binary, for a process that already has threads (a runtime, a test
//! harness, a logger) and so must not fork one.
//!
//! The parent writes a handshake (magic bytes, the entry key, the protocol
//! limits and the zygote's name) into its end of a fresh control socketpair,
//! then executes `/proc/self/exe` with the other end as standard input and
//! [`MARKER`] naming that descriptor. Nothing secret travels in argv or the
//! environment (both are readable in `/proc`): the key is in the socket.
//!
//! In the new process, [`hook`] runs at load time, before `main`. It turns
//! the process into the zygote only when the named descriptor is an AF_UNIX
//! stream socket that already holds a complete handshake; then it runs the
//! same `serve` as a forked zygote and exits, never returning to `main`.
//! Otherwise it changes nothing (a stray variable alone does nothing).
//!
//! Since the zygote runs the same binary, entry tags (offsets from an anchor
//! in the binary, sealed with the parent's key) verify there as they do in a
//! forked zygote.

use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::signal::{SigHandler, SigSet, Signal};
use nix::sys::socket::{
    getsockname, getsockopt, recv, sockopt, AddressFamily, MsgFlags, SockType, SockaddrLike,
    SockaddrStorage,
};
use parallel_proto::{EntryKey, Limits};

use crate::server::{serve, ServeConfig};
use crate::{entry, Error};

/// The environment variable that marks a process executed as a zygote. It
/// only *names* the descriptor of the control socket (`0`, standard input);
/// it carries nothing secret, and alone it does nothing.
pub(crate) const MARKER: &str = "PARALLEL_ZYGOTE_FD";

/// First bytes of the handshake (and its version).
const MAGIC: [u8; 8] = *b"PZYGOTE\x01";

/// Magic, key, limits (4 + 8 + 8 + 1 bytes), name length.
const FIXED_LEN: usize = 8 + 16 + 21 + 1;

/// The longest handshake: a name is cut to 255 bytes.
const MAX_LEN: usize = FIXED_LEN + 255;

/// Exit code of an executed zygote that found other threads running at load
/// time (another constructor in the program started them): forking workers
/// from it would be unsafe, so it exits instead of serving.
pub(crate) const THREADS_AT_LOAD_EXIT_CODE: i32 = 125;

/// Exit code of an executed zygote whose setup failed after it accepted the
/// handshake (a descriptor could not be moved, the signal mask not read).
pub(crate) const SETUP_FAILED_EXIT_CODE: i32 = 126;

/// Set by [`hook`] whenever it runs, in every process of this binary: a
/// process whose environment carries [`MARKER`] while this is false runs a
/// binary whose hook was not linked in, and must not start a zygote itself.
static HOOK_RAN: AtomicBool = AtomicBool::new(false);

/// Whether the load-time hook ran in this process.
pub(crate) fn hook_ran() -> bool {
    HOOK_RAN.load(Ordering::SeqCst)
}

/// What the parent hands the executed zygote.
struct Handshake {
    key: [u8; 16],
    limits: Limits,
    name: String,
}

fn encode(key: &EntryKey, limits: Limits, name: &str) -> Vec<u8> {
    let mut name = name.as_bytes();
    if name.len() > 255 {
        name = &name[..255];
    }
    let mut bytes = Vec::with_capacity(FIXED_LEN + name.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&key.to_bytes());
    bytes.extend_from_slice(&limits.max_frame_len().to_le_bytes());
    bytes.extend_from_slice(&(limits.max_buffered_bytes() as u64).to_le_bytes());
    bytes.extend_from_slice(&(limits.max_in_flight() as u64).to_le_bytes());
    bytes.push(limits.max_fds_per_frame());
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes
}

/// Parses a handshake at the start of `bytes`; `None` unless it is
/// complete and valid. Returns its length too.
fn decode(bytes: &[u8]) -> Option<(Handshake, usize)> {
    if bytes.len() < FIXED_LEN || bytes[..8] != MAGIC {
        return None;
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let key: [u8; 16] = bytes[8..24].try_into().ok()?;
    let max_frame_len = u32::from_le_bytes(bytes[24..28].try_into().ok()?);
    let max_buffered = usize::try_from(u64_at(28)).ok()?;
    let max_in_flight = usize::try_from(u64_at(36)).ok()?;
    let max_fds = bytes[44];
    let name_len = bytes[45] as usize;
    let len = FIXED_LEN + name_len;
    let name = std::str::from_utf8(bytes.get(FIXED_LEN..len)?).ok()?;
    let limits = Limits::DEFAULT
        .with_max_frame_len(max_frame_len)
        .and_then(|l| l.with_max_buffered_bytes(max_buffered))
        .and_then(|l| l.with_max_in_flight(max_in_flight))
        .and_then(|l| l.with_max_fds_per_frame(max_fds))
        .ok()?;
    let handshake = Handshake {
        key,
        limits,
        name: name.to_string(),
    };
    Some((handshake, len))
}

/// Starts a zygote by executing `/proc/self/exe`: returns the parent's end
/// of the control socket and the zygote's pid (a child of this process).
///
/// `std::process::Command` spawns it with `posix_spawn` (the control socket
/// is placed on standard input by a file action), so no code of ours runs
/// between fork and exec, and the cost does not grow with this process's
/// heap the way a `fork` would.
pub(crate) fn spawn_zygote(
    key: &EntryKey,
    limits: Limits,
    name: &str,
) -> Result<(UnixStream, i32), Error> {
    let (parent_end, zygote_end) =
        UnixStream::pair().map_err(|e| Error::os("creating the control socketpair", e))?;
    // Written before the exec, so the hook finds it complete at once and
    // never waits: a socket without it at load time is not ours.
    (&parent_end)
        .write_all(&encode(key, limits, name))
        .map_err(|e| Error::os("writing the zygote's handshake", e))?;
    let child = Command::new("/proc/self/exe")
        .arg0(name)
        .env(MARKER, "0")
        .stdin(Stdio::from(OwnedFd::from(zygote_end)))
        .spawn()
        .map_err(|e| Error::os("executing /proc/self/exe as the zygote", e))?;
    // `Child` neither waits nor kills when dropped: the handle's reader
    // thread reaps the zygote by its pid.
    let pid = child.id() as i32;
    Ok((parent_end, pid))
}

/// The load-time hook: becomes the zygote when this process was executed as
/// one, otherwise does nothing.
///
/// It runs before `main`, possibly after other constructors, with no Rust
/// runtime set up: it uses only std's plain functions and system calls,
/// starts no thread, and does not panic (every failure before the handshake
/// is accepted means "not ours"; every failure after it exits the process).
///
/// The hook's object code is linked into every program that can call
/// `start`: `start` calls [`spawn_zygote`], in this same module.
// SAFETY: `ctor` asks for `unsafe` to acknowledge life before main. This
// function relies on nothing that main sets up: std's environment access
// and plain system calls work at load time, it panics nowhere, and it
// starts no thread (see above).
#[ctor::ctor(unsafe)]
fn hook() {
    HOOK_RAN.store(true, Ordering::SeqCst);
    let Some(fd) = std::env::var_os(MARKER)
        .and_then(|value| value.to_str()?.parse::<RawFd>().ok())
        .filter(|fd| *fd >= 0)
    else {
        return;
    };
    let Some(handshake) = accept(fd) else {
        return;
    };
    become_zygote(fd, handshake)
}

/// Reads the handshake from `fd` if `fd` is an open AF_UNIX stream socket
/// that holds one right now; consumes nothing otherwise.
fn accept(fd: RawFd) -> Option<Handshake> {
    // Open at all? (F_GETFD touches nothing.)
    fcntl(fd, FcntlArg::F_GETFD).ok()?;
    // SAFETY: `fd` is open (checked just above) and stays open for the
    // borrow: nothing in this function closes it, and before `main` no
    // code of this program runs concurrently that would.
    let socket = unsafe { BorrowedFd::borrow_raw(fd) };
    if getsockopt(&socket, sockopt::SockType).ok()? != SockType::Stream {
        return None;
    }
    let address: SockaddrStorage = getsockname(fd).ok()?;
    if address.family() != Some(AddressFamily::Unix) {
        return None;
    }
    // Peek without waiting: the parent wrote the handshake before the exec.
    let mut peeked = [0u8; MAX_LEN];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    let seen = recv(fd, &mut peeked, flags).ok()?;
    let (handshake, len) = decode(&peeked[..seen])?;
    // Ours: consume exactly the handshake (the client's first frames may
    // follow it in the socket already).
    let mut taken = 0;
    while taken < len {
        match recv(fd, &mut peeked[taken..len], MsgFlags::empty()) {
            Ok(0) => return None,
            Ok(read) => taken += read,
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return None,
        }
    }
    Some(handshake)
}

/// Turns this process into the zygote; never returns.
fn become_zygote(fd: RawFd, handshake: Handshake) -> ! {
    // Another constructor may have started threads before this one ran: a
    // process with threads must not fork workers.
    if !matches!(crate::start::count_threads(), Ok(1)) {
        exit_now(THREADS_AT_LOAD_EXIT_CODE);
    }
    let Ok(control) = take_control_socket(fd) else {
        exit_now(SETUP_FAILED_EXIT_CODE);
    };
    // Workers and whatever they execute must not see the marker. The process
    // has one thread (checked above), so nothing reads the environment
    // concurrently.
    std::env::remove_var(MARKER);
    // What Rust's `main` would have set up: writes to a closed socket or
    // pipe fail with EPIPE instead of killing the writer. Workers inherit it,
    // as workers of a forked zygote inherit it from the parent.
    // SAFETY: SIG_IGN installs no handler, so no code of ours can run in a
    // signal context; the previous disposition is not used.
    if unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) }.is_err() {
        exit_now(SETUP_FAILED_EXIT_CODE);
    }
    let Ok(child_mask) = SigSet::thread_get_mask() else {
        exit_now(SETUP_FAILED_EXIT_CODE);
    };
    entry::install_key(EntryKey::from_bytes(handshake.key));
    crate::start::mark_zygote();
    serve(ServeConfig {
        control,
        limits: handshake.limits,
        name: handshake.name,
        child_mask,
    })
}

/// Moves the control socket off `fd` onto a descriptor of its own,
/// close-on-exec. On a standard stream (standard input, as the parent
/// passes it) it leaves `/dev/null` in its place, so that the zygote and
/// its workers read an empty standard input, as `Stdio::null` gives.
fn take_control_socket(fd: RawFd) -> Result<UnixStream, nix::Error> {
    let moved = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: `moved` was just created by F_DUPFD_CLOEXEC; nothing else
    // refers to it, so it is ours to own and close.
    let control = unsafe { OwnedFd::from_raw_fd(moved) };
    if fd > 2 {
        nix::unistd::close(fd)?;
        return Ok(UnixStream::from(control));
    }
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    nix::unistd::dup2(null.as_raw_fd(), fd)?;
    Ok(UnixStream::from(control))
}

fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the process at once; always safe. (Not `exit`: the
    // program's atexit handlers and stdio buffers are not the zygote's.)
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_round_trips_key_limits_and_name() {
        let key = EntryKey::from_bytes([7; 16]);
        let limits = Limits::DEFAULT.with_max_in_flight(9).unwrap();
        let mut bytes = encode(&key, limits, "demo-zygote");
        bytes.extend_from_slice(b"client frames follow");
        let (handshake, len) = decode(&bytes).expect("a valid handshake");
        assert_eq!(len, FIXED_LEN + "demo-zygote".len());
        assert_eq!(handshake.key, [7; 16]);
        assert_eq!(handshake.limits, limits);
        assert_eq!(handshake.name, "demo-zygote");
    }

    #[test]
    fn incomplete_or_foreign_bytes_are_not_a_handshake() {
        let bytes = encode(&EntryKey::from_bytes([1; 16]), Limits::DEFAULT, "z");
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        let mut foreign = bytes.clone();
        foreign[0] ^= 1;
        assert!(decode(&foreign).is_none());
    }
}
