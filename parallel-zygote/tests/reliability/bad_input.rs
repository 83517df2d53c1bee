//! Bad input: a hostile peer on a worker channel (a worker whose function
//! writes raw bytes to its own channel socket) and on the zygote socket (a
//! helper process that writes raw bytes to its zygote's control socket).
//! Each case must end in a clear error, without a panic, a hang or a
//! process left behind, and without disturbing other workers.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use libtest_mimic::Failed;
use parallel_zygote::async_core::{
    Error, MessageSender, MessageStream, Parallel, Postcard, Process, Runtime,
};

use super::{block_on_figures, check, report, run_helper_capturing, settle, within, Harness};

pub const ZYGOTE_SOCKET: &str = "bad-input-zygote-socket";

/// Reads a hostile `process` worker's stream to its end, then waits for
/// the worker, each within 10 s: the items (errors as their chains) and
/// how the wait ended.
async fn drain_and_wait<R: Runtime>(
    mut process: Process<u8, u8, Postcard>,
    case: &str,
) -> Result<(Vec<Result<u8, String>>, Result<(), Error>), Failed> {
    let items = within::<R, _>(Duration::from_secs(10), async {
        let mut items = Vec::new();
        while let Some(item) = process.stream.next().await {
            items.push(item.map_err(|e| error_chain(&e)));
        }
        items
    })
    .await
    .ok_or_else(|| format!("case {case:?}: the stream did not end within 10 s"))?;
    let waited = within::<R, _>(Duration::from_secs(10), process.handle.wait())
        .await
        .ok_or_else(|| format!("case {case:?}: wait hung"))?;
    Ok((items, waited))
}

/// A frame header: magic, kind, fd count, reserved, length.
fn header(kind: u8, fds: u8, len: u32) -> Vec<u8> {
    let mut bytes = vec![0xB7, kind, fds, 0];
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes
}

/// The hostile payloads, by case number: (name, bytes, close after).
fn case(which: u8, zygote: bool) -> (&'static str, Vec<u8>, bool) {
    // The protocols' own kinds: a data frame and a hello.
    let (data, hello, end) = if zygote {
        (0x02, 0x01, 0x05)
    } else {
        (0x93, 0x91, 0x94)
    };
    match which {
        0 => (
            "random bytes",
            (0..64u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
            false,
        ),
        1 => ("oversized length", header(data, 0, 0xFFFF_FFF0), false),
        2 => {
            let mut bytes = header(data, 0, 100);
            bytes.extend_from_slice(&[1; 10]);
            ("truncated frame, then end of stream", bytes, true)
        }
        3 => {
            // A second hello (version 1, pid 1 for the worker's).
            let body: &[u8] = if zygote { &[1] } else { &[1, 2] };
            let mut bytes = header(hello, 0, body.len() as u32);
            bytes.extend_from_slice(body);
            ("a second Hello", bytes, false)
        }
        4 => {
            // End (or Shutdown), then more.
            let mut bytes = header(end, 0, 0);
            bytes.extend(header(data, 0, 4));
            bytes.extend_from_slice(&[9; 4]);
            ("data after End/Shutdown", bytes, false)
        }
        5 => ("unknown kind", header(0x7F, 0, 0), false),
        6 => (
            "a frame claiming 200 descriptors",
            header(data, 200, 0),
            false,
        ),
        7 => (
            "a malformed body",
            {
                let mut bytes = header(hello, 0, 3);
                bytes.extend_from_slice(&[0xFF, 0xFF, 0xFF]);
                bytes
            },
            false,
        ),
        _ => ("none", Vec::new(), false),
    }
}

const CASES: u8 = 8;

/// The socket descriptors of this process, one per socket (a runtime may
/// hold a duplicate of the channel: glommio does).
fn sockets() -> Vec<RawFd> {
    let mut all = socket_targets();
    all.sort_by(|a, b| a.1.cmp(&b.1));
    all.dedup_by(|a, b| a.1 == b.1);
    all.into_iter().map(|(fd, _)| fd).collect()
}

/// The socket descriptors of this process, with what they point to
/// (`socket:[inode]`: duplicates share it).
fn socket_targets() -> Vec<(RawFd, String)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let entry = entry.ok()?;
        let target = std::fs::read_link(entry.path()).ok()?;
        let fd = entry.file_name().to_str()?.parse().ok()?;
        let target = target.to_str()?.to_string();
        target.starts_with("socket:").then_some((fd, target))
    })
    .collect()
}

/// Writes `bytes` to `fd` whole (blocking), then shuts its writing side if
/// `close`.
fn write_raw(fd: RawFd, bytes: &[u8], close: bool) {
    let mut written = 0;
    while written < bytes.len() {
        // SAFETY: a valid buffer; fd is a socket of this process.
        let n = unsafe {
            libc::send(
                fd,
                bytes[written..].as_ptr().cast(),
                bytes.len() - written,
                libc::MSG_NOSIGNAL,
            )
        };
        if n <= 0 {
            break;
        }
        written += n as usize;
    }
    if close {
        // SAFETY: as above.
        unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    }
}

/// In the worker: writes case `which` to the channel (its one socket),
/// then blocks its thread (only a kill ends it).
async fn hostile_worker(which: u8) -> u64 {
    let (_, bytes, close) = case(which, false);
    for fd in sockets() {
        write_raw(fd, &bytes, close);
    }
    std::thread::sleep(Duration::from_secs(600));
    0
}

pub async fn worker_channel<R: Runtime>(parallel: Parallel<R>) -> Result<(), Failed> {
    // The worker's only socket is its channel: what the hostile workers write to.
    let probe = parallel
        .spawn(|_: ()| async move { sockets().len() }, ())
        .await?;
    check(
        probe == 1,
        format!("a worker has {probe} sockets, expected 1"),
    )?;
    let bystander = parallel.run(|x: u64| async move { x + 1 })?;
    check(bystander.call(1).await? == 2, "bystander warm")?;
    let mut figures = Vec::new();
    let mut unnamed = Vec::new();
    for which in 0..CASES {
        let (name, _, _) = case(which, false);
        let handle = parallel.spawn(hostile_worker, which);
        let pid = {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(pid) = handle.pid() {
                    break Some(pid);
                }
                if Instant::now() > deadline {
                    break None;
                }
                R::sleep(Duration::from_millis(5)).await;
            }
        };
        let started = Instant::now();
        let result = within::<R, _>(Duration::from_secs(10), handle).await;
        let took = started.elapsed();
        let text = match &result {
            Some(Err(error)) => error_chain(error),
            other => return Err(format!("case {name:?}: expected an error, got {other:?}").into()),
        };
        // Today most cases come out as the worker's death by SIGKILL (the
        // parent kills a worker that broke the protocol, and reports the
        // death rather than the cause): reported, asserted only when asked.
        let named = matches!(result, Some(Err(Error::Protocol(_))));
        if !named {
            unnamed.push(name);
        }
        let gone = match pid {
            Some(pid) => {
                settle::<R>(Duration::from_secs(5), || {
                    !std::path::Path::new(&format!("/proc/{pid}")).exists()
                })
                .await
            }
            None => true,
        };
        check(
            gone,
            format!("case {name:?}: hostile worker {pid:?} left alive"),
        )?;
        let answer = bystander.call(which as u64).await;
        check(
            matches!(answer, Ok(x) if x == which as u64 + 1),
            format!("case {name:?}: bystander gave {answer:?}"),
        )?;
        figures.push(format!("{name}: \"{text}\" ({})", super::ms(took)));
    }
    // Data after End on a process channel, the parent reading its stream.
    let process = parallel.process(|_: MessageStream<u8>, _: MessageSender<u8>| async move {
        let (_, bytes, _) = case(4, false);
        for fd in sockets() {
            write_raw(fd, &bytes, false);
        }
        std::thread::sleep(Duration::from_secs(600));
    })?;
    let (items, waited) = drain_and_wait::<R>(process, "data after End").await?;
    figures.push(format!(
        "process, data after End: stream {items:?}, wait {}",
        match &waited {
            Ok(()) => "Ok".to_string(),
            Err(error) => error_chain(error),
        }
    ));
    check(
        waited.is_err() || items.iter().any(Result::is_err),
        format!("data after End went unnoticed: {items:?} {waited:?}"),
    )?;
    figures.push(format!(
        "{} of {CASES} cases reported as Error::Protocol; not: {unnamed:?}",
        CASES as usize - unnamed.len()
    ));
    report::<R>("bad_input_on_a_worker_channel", &figures);
    if std::env::var("PARALLEL_RELIABILITY_STRICT").is_ok() {
        check(
            unnamed.is_empty(),
            format!("cases not named as protocol errors: {unnamed:?}"),
        )?;
    }
    Ok(())
}

/// An error and its sources, one line.
pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The zygote socket: one helper (a zygote of its own) per case.
pub fn zygote_socket<H: Harness>() -> Result<(), Failed> {
    let mut figures = Vec::new();
    for which in 0..CASES {
        let (name, _, _) = case(which, true);
        let (said, stderr) =
            run_helper_capturing(ZYGOTE_SOCKET, &which.to_string(), Duration::from_secs(60))?;
        check(
            !stderr.contains("panicked"),
            format!("case {name:?}: a panic: {stderr}"),
        )?;
        let zygote_said = stderr
            .lines()
            .filter(|line| !line.trim().is_empty())
            .collect::<Vec<_>>()
            .join(" | ");
        figures.push(format!(
            "{name}: {}; zygote's stderr: {:?}",
            said.join("; "),
            zygote_said
        ));
    }
    report::<H::R>("bad_input_on_the_zygote_socket", &figures);
    Ok(())
}

pub fn zygote_socket_helper<H: Harness>(arg: &str) -> Result<Vec<String>, Failed> {
    let which: u8 = arg.parse()?;
    let before = sockets();
    let parallel = H::init()?;
    // The control socket (the handle's reader thread holds a duplicate).
    let mut mine: Vec<(RawFd, String)> = socket_targets()
        .into_iter()
        .filter(|(fd, _)| !before.contains(fd))
        .collect();
    mine.dedup_by(|a, b| a.1 == b.1);
    let mine: Vec<RawFd> = mine.into_iter().map(|(fd, _)| fd).collect();
    block_on_figures::<H, _>(async move {
        type R<H> = <H as Harness>::R;
        check(
            parallel.spawn(|x: u64| async move { x + 1 }, 1).await? == 2,
            "warm-up spawn",
        )?;
        check(
            mine.len() == 1,
            format!("init opened {} distinct sockets, expected 1", mine.len()),
        )?;
        let zygote = parallel.zygote().pid();
        let (_, bytes, close) = case(which, true);
        write_raw(mine[0], &bytes, close);
        let started = Instant::now();
        // The zygote ends on bad input; the handle then reports it gone.
        let result = within::<R<H>, _>(
            Duration::from_secs(10),
            parallel.spawn(|x: u64| async move { x + 1 }, 1),
        )
        .await;
        let took = started.elapsed();
        let reaped = settle::<R<H>>(Duration::from_secs(5), || {
            !std::path::Path::new(&format!("/proc/{zygote}")).exists()
        })
        .await;
        let text = match &result {
            Some(Err(error)) => error_chain(error),
            other => format!("{other:?}"),
        };
        let figures = vec![format!(
            "next spawn: \"{text}\" after {}; zygote exit {:?}, reaped: {reaped}",
            super::ms(took),
            parallel.zygote().exit_status()
        )];
        check(
            matches!(result, Some(Err(Error::Zygote(_)))),
            figures[0].clone(),
        )?;
        check(reaped, figures[0].clone())?;
        Ok(figures)
    })
}

/// The hostile shared-memory cases, by number: (name, what the parent's
/// error must say).
fn shared_case(which: u8) -> (&'static str, &'static str) {
    match which {
        0 => ("an unsealed memfd", "not sealed"),
        1 => (
            "a memfd shorter than announced",
            "the memfd holds 4096 bytes",
        ),
        2 => ("a pipe instead of a memfd", "not a sealable memfd"),
        _ => (
            "more than max_frame_len announced",
            "more than max_frame_len",
        ),
    }
}

const SHARED_CASES: u8 = 4;

/// A memfd named so that the parent can tell whether it kept one.
pub(super) fn hostile_memfd(len: usize, seal: bool) -> std::os::fd::OwnedFd {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let fd = memfd_create(
        c"hostile-shared",
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )
    .unwrap();
    let file = std::fs::File::from(fd);
    file.set_len(len as u64).unwrap();
    let fd = std::os::fd::OwnedFd::from(file);
    if seal {
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE;
        fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            FcntlArg::F_ADD_SEALS(seals),
        )
        .unwrap();
    }
    fd
}

/// In a `process` worker: sends case `which` as a SharedData frame (kind
/// 0x97, its length as a varint) with its descriptor, then blocks.
async fn hostile_shared_worker(which: u8) {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let (fd, announced): (std::os::fd::OwnedFd, u64) = match which {
        0 => (hostile_memfd(4096, false), 4096),
        1 => (hostile_memfd(4096, true), 8192),
        2 => {
            let (reader, _writer) = nix::unistd::pipe().unwrap();
            (reader, 0)
        }
        _ => (hostile_memfd(1, true), 1 << 40),
    };
    let mut body = Vec::new();
    let mut len = announced;
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            body.push(byte);
            break;
        }
        body.push(byte | 0x80);
    }
    let mut frame = header(0x97, 1, body.len() as u32);
    frame.extend_from_slice(&body);
    let raw = [fd.as_raw_fd()];
    for socket in sockets() {
        let _ = sendmsg::<()>(
            socket,
            &[std::io::IoSlice::new(&frame)],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        );
    }
    std::thread::sleep(Duration::from_secs(600));
}

/// Fails unless this process lets go of every hostile memfd within 5 s.
pub(super) async fn hostile_memfds_released<R: Runtime>() -> Result<(), Failed> {
    let released = settle::<R>(Duration::from_secs(5), || hostile_memfds_held() == 0).await;
    check(
        released,
        format!(
            "the parent still holds {} hostile memfds",
            hostile_memfds_held()
        ),
    )
}

/// Descriptors of this process that point at a hostile worker's memfd.
pub(super) fn hostile_memfds_held() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    dir.filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().contains("hostile-shared"))
        .count()
}

pub async fn shared_memory_from_a_hostile_worker<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let mut figures = Vec::new();
    for which in 0..SHARED_CASES {
        let (name, expected) = shared_case(which);
        let process = parallel.process(
            |mut input: MessageStream<u8>, output: MessageSender<u8>| async move {
                if let Some(Ok(which)) = input.recv().await {
                    hostile_shared_worker(which).await;
                }
                // Held open until here: its drop would end the stream first.
                drop(output);
            },
        )?;
        process.sender.send(which).await?;
        let pid = process.handle.pid();
        let (items, waited) = drain_and_wait::<R>(process, name).await?;
        let text = match &waited {
            Err(error @ Error::Protocol(_)) => error_chain(error),
            other => {
                return Err(format!(
                    "case {name:?}: expected a protocol error, got {other:?} (stream {items:?})"
                )
                .into())
            }
        };
        check(
            text.contains(expected),
            format!("case {name:?}: {text:?} does not say {expected:?}"),
        )?;
        let gone = match pid {
            Some(pid) => {
                settle::<R>(Duration::from_secs(5), || {
                    !std::path::Path::new(&format!("/proc/{pid}")).exists()
                })
                .await
            }
            None => true,
        };
        check(gone, format!("case {name:?}: hostile worker left alive"))?;
        figures.push(format!("{name}: \"{text}\""));
    }
    hostile_memfds_released::<R>().await?;
    report::<R>("bad_shared_memory_on_a_worker_channel", &figures);
    Ok(())
}
