//! What becomes of a worker's stdout and stderr ([`Output`]), and the
//! parent's side of a captured stream: lines cut from the socket, handed to
//! tracing and to an [`OutputLines`] stream, the last stderr lines kept for
//! the death error.
//!
//! A captured stream is one end of a `SOCK_STREAM` socketpair the worker
//! gets with its spawn and puts on its descriptor 1 or 2 before anything of
//! the user runs (a socket, not a pipe, so that every adapter registers it
//! as it registers the worker channel).

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use serde::{Deserialize, Serialize};

use super::forward::{self, RecordReader};
use super::runtime::{AsyncSocket, ReadOutcome, Runtime};
use super::Error;

/// The longest line delivered whole: a longer one is cut here, delivered
/// with [`OutputLine::truncated`] set, and the rest of it up to the next
/// newline is discarded.
pub const MAX_LINE_LEN: usize = 8 * 1024;
/// How many stderr lines a death error keeps ([`Error::stderr_tail`]).
pub const STDERR_TAIL_LINES: usize = 20;
/// How many bytes of stderr lines a death error keeps at most.
pub const STDERR_TAIL_BYTES: usize = 4 * 1024;
/// Reads per stream per driver poll, so that a chatty worker cannot starve
/// the rest of the driver's work (the driver is woken again at once).
const READS_PER_POLL: usize = 8;
/// Size of one read.
const CHUNK: usize = 8 * 1024;

/// What a worker's stdout or stderr is connected to. Set for every worker
/// of a handle with [`Parallel::worker_output`](super::Parallel::worker_output)
/// (or per stream with `worker_stdout` / `worker_stderr`); a pool's workers
/// take the setting of the handle the pool was made from.
///
/// ```no_run
/// # async fn demo<R: parallel_zygote::async_core::Runtime>(parallel: parallel_zygote::async_core::Parallel<R>) {
/// use futures_util::StreamExt;
/// use parallel_zygote::async_core::{Output, StdStream};
///
/// let (output, mut lines) = Output::lines(256);
/// let chatty = parallel.worker_output(output);
/// let handle = chatty.spawn(|n: u32| async move { println!("working on {n}"); n }, 7);
/// assert_eq!(handle.await.unwrap(), 7);
/// let line = lines.next().await.unwrap();
/// assert_eq!((line.stream, line.text.as_str()), (StdStream::Stdout, "working on 7"));
/// println!("worker {} said {:?}", line.pid, line.text);
/// # }
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum Output {
    /// The worker writes where the zygote writes (the parent's stdout or
    /// stderr, unless redirected before `init()`): today's behaviour.
    #[default]
    Inherit,
    /// Discarded (`/dev/null`).
    Null,
    /// Read by the parent line by line: each line is a tracing event
    /// (target `parallel::worker::output`, level INFO, fields `pid`, `name`,
    /// `stream`, `line`, `truncated`) inside the worker's span, and a dying
    /// worker's error carries its last stderr lines
    /// ([`Error::stderr_tail`]).
    Capture,
    /// As [`Capture`](Self::Capture), and each line also goes to the
    /// [`OutputLines`] stream made with [`Output::lines`].
    CaptureTo(OutputSink),
}

impl Output {
    /// Capture into a stream that holds up to `capacity` unread lines (one
    /// at least). The parent never blocks a worker for a slow reader: a
    /// line that finds the stream full is dropped and counted
    /// ([`OutputLines::dropped`]); tracing still sees it. The stream ends
    /// once every handle and worker using the returned [`Output`] is gone.
    pub fn lines(capacity: usize) -> (Output, OutputLines) {
        let (sender, receiver) = async_channel::bounded(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        (
            Output::CaptureTo(OutputSink {
                sender,
                dropped: Arc::clone(&dropped),
            }),
            OutputLines {
                receiver: Box::pin(receiver),
                dropped,
            },
        )
    }

    fn is_captured(&self) -> bool {
        matches!(self, Output::Capture | Output::CaptureTo(_))
    }
}

/// Where [`Output::CaptureTo`] sends lines; made by [`Output::lines`].
#[derive(Clone)]
pub struct OutputSink {
    sender: async_channel::Sender<OutputLine>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for OutputSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputSink")
            .field("queued", &self.sender.len())
            .finish()
    }
}

impl OutputSink {
    fn offer(&self, line: OutputLine) {
        if self.sender.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The lines captured workers wrote, as they come, each with the worker's
/// pid: a [`Stream`] made by [`Output::lines`].
#[must_use = "a stream does nothing unless polled"]
pub struct OutputLines {
    receiver: Pin<Box<async_channel::Receiver<OutputLine>>>,
    dropped: Arc<AtomicU64>,
}

impl OutputLines {
    /// Lines dropped so far because the stream was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Stream for OutputLines {
    type Item = OutputLine;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<OutputLine>> {
        self.receiver.as_mut().poll_next(cx)
    }
}

impl std::fmt::Debug for OutputLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputLines")
            .field("queued", &self.receiver.len())
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// Which of a worker's streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StdStream {
    /// Descriptor 1.
    Stdout,
    /// Descriptor 2.
    Stderr,
}

impl StdStream {
    /// "stdout" or "stderr".
    pub fn as_str(self) -> &'static str {
        match self {
            StdStream::Stdout => "stdout",
            StdStream::Stderr => "stderr",
        }
    }
}

/// One line a captured worker wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutputLine {
    /// The worker's pid.
    pub pid: i32,
    /// Its name, from its [`SpawnOptions`](crate::SpawnOptions), if it has one.
    pub name: Option<Arc<str>>,
    /// Which stream.
    pub stream: StdStream,
    /// The line, without its newline (invalid UTF-8 replaced).
    pub text: String,
    /// The line was longer than [`MAX_LINE_LEN`] and was cut there.
    pub truncated: bool,
}

/// What a handle's workers get for their output and tracing.
#[derive(Clone, Debug, Default)]
pub(crate) struct OutputConfig {
    pub(crate) stdout: Output,
    pub(crate) stderr: Output,
    /// Forward the worker's tracing events up to this level (OFF: none).
    pub(crate) tracing: Option<tracing::Level>,
}

/// What the worker does with one of its streams, as its Start frame says.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) enum Redirect {
    Inherit,
    Null,
    /// The descriptor at this index of the spawn's descriptors.
    Fd(u8),
}

/// The worker's part of an [`OutputConfig`], sent in the Start frame.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct WorkerIo {
    pub(crate) stdout: Redirect,
    pub(crate) stderr: Redirect,
    /// The descriptor index of the tracing socket, and the most verbose
    /// level to forward (as [`forward::level_index`] numbers it).
    pub(crate) tracing: Option<(u8, u8)>,
}

impl WorkerIo {
    /// Nothing to apply: both streams inherited, no tracing forwarded.
    pub(crate) fn is_inherit(&self) -> bool {
        matches!(
            self,
            WorkerIo {
                stdout: Redirect::Inherit,
                stderr: Redirect::Inherit,
                tracing: None,
            }
        )
    }
}

impl Default for WorkerIo {
    fn default() -> Self {
        WorkerIo {
            stdout: Redirect::Inherit,
            stderr: Redirect::Inherit,
            tracing: None,
        }
    }
}

/// The parent's ends of one worker's captured streams, before registration.
pub(crate) struct Prepared {
    /// The worker's ends, to send with the spawn.
    pub(crate) fds: Vec<OwnedFd>,
    pub(crate) io: WorkerIo,
    stdout: Option<(UnixStream, Option<OutputSink>)>,
    stderr: Option<(UnixStream, Option<OutputSink>)>,
    tracing: Option<UnixStream>,
}

impl OutputConfig {
    /// Creates the socketpairs this configuration needs.
    pub(crate) fn prepare(&self) -> Result<Prepared, Error> {
        let mut prepared = Prepared {
            fds: Vec::new(),
            io: WorkerIo::default(),
            stdout: None,
            stderr: None,
            tracing: None,
        };
        let pair = |fds: &mut Vec<OwnedFd>| -> Result<(UnixStream, u8), Error> {
            let (parent, worker) = UnixStream::pair()?;
            parent.set_nonblocking(true)?;
            fds.push(OwnedFd::from(worker));
            Ok((parent, (fds.len() - 1) as u8))
        };
        for (output, redirect, end) in [
            (&self.stdout, &mut prepared.io.stdout, &mut prepared.stdout),
            (&self.stderr, &mut prepared.io.stderr, &mut prepared.stderr),
        ] {
            *redirect = match output {
                Output::Inherit => Redirect::Inherit,
                Output::Null => Redirect::Null,
                Output::Capture | Output::CaptureTo(_) => {
                    let (parent, index) = pair(&mut prepared.fds)?;
                    let sink = match output {
                        Output::CaptureTo(sink) => Some(sink.clone()),
                        _ => None,
                    };
                    *end = Some((parent, sink));
                    Redirect::Fd(index)
                }
            };
        }
        if let Some(level) = self.tracing {
            let (parent, index) = pair(&mut prepared.fds)?;
            prepared.tracing = Some(parent);
            prepared.io.tracing = Some((index, forward::level_index(level)));
        }
        Ok(prepared)
    }

    /// Whether any stream is captured or tracing forwarded.
    pub(crate) fn reads_anything(&self) -> bool {
        self.stdout.is_captured() || self.stderr.is_captured() || self.tracing.is_some()
    }
}

impl Prepared {
    /// Registers the parent's ends with the runtime (after the spawn went
    /// out, so the worker's ends are the zygote's now).
    pub(crate) fn register<R: Runtime>(
        self,
        name: Option<&str>,
    ) -> Result<Option<Captured<R>>, Error> {
        let mut readers = Vec::new();
        for (end, stream) in [
            (self.stdout, StdStream::Stdout),
            (self.stderr, StdStream::Stderr),
        ] {
            if let Some((socket, sink)) = end {
                readers.push(Reader {
                    socket: R::register(socket)?,
                    kind: Kind::Lines {
                        stream,
                        sink,
                        lines: LineSplitter::default(),
                    },
                    eof: false,
                });
            }
        }
        if let Some(socket) = self.tracing {
            readers.push(Reader {
                socket: R::register(socket)?,
                kind: Kind::Records(RecordReader::default()),
                eof: false,
            });
        }
        if readers.is_empty() {
            return Ok(None);
        }
        Ok(Some(Captured {
            readers,
            name: name.map(Arc::from),
            tail: Tail::default(),
            pid: None,
        }))
    }
}

/// The parent's side of one worker's captured streams, polled by its driver.
pub(crate) struct Captured<R: Runtime> {
    readers: Vec<Reader<R>>,
    name: Option<Arc<str>>,
    tail: Tail,
    pid: Option<i32>,
}

struct Reader<R: Runtime> {
    socket: R::Socket,
    kind: Kind,
    eof: bool,
}

enum Kind {
    Lines {
        stream: StdStream,
        sink: Option<OutputSink>,
        lines: LineSplitter,
    },
    Records(RecordReader),
}

/// Cuts a byte stream into lines of at most [`MAX_LINE_LEN`] bytes,
/// whatever the chunking.
#[derive(Default)]
struct LineSplitter {
    /// The line so far (never longer than [`MAX_LINE_LEN`]).
    line: Vec<u8>,
    /// The current line was cut: skip to its newline.
    discarding: bool,
}

impl LineSplitter {
    /// Takes bytes; calls `line(bytes, truncated)` for each line completed
    /// (or cut).
    fn push(&mut self, mut bytes: &[u8], line: &mut dyn FnMut(&[u8], bool)) {
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|&b| b == b'\n');
            let (part, rest) = match newline {
                Some(at) => (&bytes[..at], &bytes[at + 1..]),
                None => (bytes, &[][..]),
            };
            bytes = rest;
            if !self.discarding {
                let room = MAX_LINE_LEN - self.line.len();
                self.line.extend_from_slice(&part[..part.len().min(room)]);
                if part.len() > room {
                    line(&self.line, true);
                    self.line.clear();
                    self.discarding = true;
                }
            }
            if newline.is_some() {
                if !self.discarding {
                    line(&self.line, false);
                    self.line.clear();
                }
                self.discarding = false;
            }
        }
    }

    /// At the end of the stream: the last line, if it had no newline.
    fn finish(&mut self, line: &mut dyn FnMut(&[u8], bool)) {
        if !self.line.is_empty() && !self.discarding {
            line(&self.line, false);
        }
        self.line.clear();
    }
}

/// The last stderr lines, bounded in count and bytes.
#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
}

impl Tail {
    fn push(&mut self, line: &str) {
        let line: String = if line.len() > STDERR_TAIL_BYTES {
            let mut end = STDERR_TAIL_BYTES;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line[..end].into()
        } else {
            line.into()
        };
        self.bytes += line.len();
        self.lines.push_back(line);
        while self.lines.len() > STDERR_TAIL_LINES || self.bytes > STDERR_TAIL_BYTES {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.len();
            }
        }
    }
}

impl<R: Runtime> Captured<R> {
    /// Records the worker's pid; true the first time.
    pub(crate) fn attribute(&mut self, pid: i32) -> bool {
        self.pid.replace(pid).is_none()
    }

    /// Reads what is there on every open stream, delivering each complete
    /// line or record as the worker `pid`'s.
    pub(crate) fn poll_read(&mut self, cx: &mut Context<'_>, pid: i32) {
        let mut chunk = [0u8; CHUNK];
        for reader in &mut self.readers {
            let mut reads = 0;
            while !reader.eof {
                if reads == READS_PER_POLL {
                    cx.waker().wake_by_ref();
                    break;
                }
                reads += 1;
                let read = reader
                    .socket
                    .poll_read(cx, &mut |fd| read_chunk(fd, &mut chunk));
                match read {
                    Poll::Ready(Ok(outcome)) if outcome.len > 0 => {
                        reader.take(&chunk[..outcome.len], pid, &self.name, &mut self.tail)
                    }
                    Poll::Ready(_) => {
                        reader.eof = true;
                        reader.finish(pid, &self.name, &mut self.tail);
                    }
                    Poll::Pending => break,
                }
            }
        }
    }

    /// Stops reading the streams still open (the driver waited long
    /// enough for their end): the last line read from each, if it had no
    /// newline yet, is delivered as it is rather than dropped.
    pub(crate) fn finish_open(&mut self) {
        let Some(pid) = self.pid else {
            return;
        };
        for reader in &mut self.readers {
            if !reader.eof {
                reader.eof = true;
                reader.finish(pid, &self.name, &mut self.tail);
            }
        }
    }

    /// Whether every stream reached its end (the worker and anything that
    /// inherited its descriptors closed them).
    pub(crate) fn is_done(&self) -> bool {
        self.readers.iter().all(|reader| reader.eof)
    }

    /// The last stderr lines, oldest first.
    pub(crate) fn stderr_tail(&self) -> Vec<String> {
        self.tail.lines.iter().cloned().collect()
    }
}

fn read_chunk(fd: BorrowedFd<'_>, chunk: &mut [u8]) -> std::io::Result<ReadOutcome> {
    let len = nix::unistd::read(fd.as_raw_fd(), chunk).map_err(std::io::Error::from)?;
    Ok(ReadOutcome {
        len,
        drained: len < chunk.len(),
    })
}

impl<R: Runtime> Reader<R> {
    fn take(&mut self, bytes: &[u8], pid: i32, name: &Option<Arc<str>>, tail: &mut Tail) {
        match &mut self.kind {
            Kind::Records(records) => {
                if records.push(bytes, pid).is_err() {
                    // A corrupt record stream is not read further; the
                    // worker's writes to it then fail, which it ignores.
                    self.eof = true;
                }
            }
            Kind::Lines {
                stream,
                sink,
                lines,
            } => lines.push(bytes, &mut |line, truncated| {
                deliver(*stream, sink, line, truncated, pid, name, tail)
            }),
        }
    }

    /// At the end of the stream: the last line, if it had no newline.
    fn finish(&mut self, pid: i32, name: &Option<Arc<str>>, tail: &mut Tail) {
        if let Kind::Lines {
            stream,
            sink,
            lines,
        } = &mut self.kind
        {
            lines.finish(&mut |line, truncated| {
                deliver(*stream, sink, line, truncated, pid, name, tail)
            });
        }
    }
}

fn deliver(
    stream: StdStream,
    sink: &Option<OutputSink>,
    line: &[u8],
    truncated: bool,
    pid: i32,
    name: &Option<Arc<str>>,
    tail: &mut Tail,
) {
    let mut text = String::from_utf8_lossy(line).into_owned();
    if text.ends_with('\r') {
        text.pop();
    }
    tracing::info!(
        target: "parallel::worker::output",
        pid,
        name = name.as_deref(),
        stream = stream.as_str(),
        truncated,
        line = %text,
    );
    if stream == StdStream::Stderr {
        tail.push(&text);
    }
    if let Some(sink) = sink {
        sink.offer(OutputLine {
            pid,
            name: name.clone(),
            stream,
            text,
            truncated,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{LineSplitter, Tail, MAX_LINE_LEN};

    fn split(chunks: &[&[u8]]) -> Vec<(Vec<u8>, bool)> {
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        for chunk in chunks {
            splitter.push(chunk, &mut |line, cut| lines.push((line.to_vec(), cut)));
        }
        splitter.finish(&mut |line, cut| lines.push((line.to_vec(), cut)));
        lines
    }

    #[test]
    fn lines_are_the_same_whatever_the_chunking() {
        let long = "y".repeat(MAX_LINE_LEN + 10);
        let text = format!(
            "one\n\ntwo\r\n{long}\nafter\n{}\nlast",
            "z".repeat(MAX_LINE_LEN)
        );
        let bytes = text.as_bytes();
        let whole = split(&[bytes]);
        let expected: Vec<(Vec<u8>, bool)> = vec![
            (b"one".to_vec(), false),
            (Vec::new(), false),
            (b"two\r".to_vec(), false),
            (long.as_bytes()[..MAX_LINE_LEN].to_vec(), true),
            (b"after".to_vec(), false),
            ("z".repeat(MAX_LINE_LEN).into_bytes(), false),
            (b"last".to_vec(), false),
        ];
        assert_eq!(whole, expected);
        for size in [1, 2, 3, 7, 100, 4096, MAX_LINE_LEN, MAX_LINE_LEN + 1] {
            let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
            assert_eq!(split(&chunks), expected, "chunks of {size}");
        }
    }

    #[test]
    fn stderr_tail_keeps_the_last_lines_within_its_bounds() {
        let mut tail = Tail::default();
        for i in 0..100 {
            tail.push(&format!("line {i}"));
        }
        assert_eq!(tail.lines.len(), super::STDERR_TAIL_LINES);
        assert_eq!(tail.lines.back().map(String::as_str), Some("line 99"));
        tail.push(&"x".repeat(10_000));
        assert_eq!(tail.lines.len(), 1, "one huge line displaces the rest");
        assert_eq!(tail.bytes, super::STDERR_TAIL_BYTES);
    }
}
