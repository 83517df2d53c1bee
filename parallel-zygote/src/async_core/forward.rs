//! Worker tracing into the parent: in the worker, a subscriber that turns
//! each event into a record and writes it to a socket of its own; in the
//! parent, the reader that re-emits each record inside the worker's span.
//!
//! Records are a 4-byte little-endian length and a postcard body. The worker
//! never waits for the parent: records go into a bounded buffer
//! ([`MAX_PENDING`]) written without blocking; a record that does not fit
//! is dropped and counted, and the count travels with the next record that
//! fits (the parent warns about it).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Bytes of records a worker holds for a parent that reads slowly.
pub const MAX_PENDING: usize = 256 * 1024;
/// The largest record the parent accepts (a longer message is cut in the
/// worker before it is sent).
const MAX_RECORD: usize = 64 * 1024;
/// How long an exiting worker waits to hand its last records over.
const FINAL_FLUSH: Duration = Duration::from_secs(1);

/// One forwarded event.
#[derive(Debug, Serialize, Deserialize)]
struct LogRecord {
    level: u8,
    target: String,
    message: String,
    /// The other fields, `name=value` separated by spaces.
    fields: String,
    /// The names of the spans the event happened in, outermost first,
    /// separated by `:`.
    spans: String,
    /// Events dropped before this one (the buffer was full).
    dropped: u64,
}

/// A level as a number: 0 = ERROR (most severe) ... 4 = TRACE.
pub(crate) fn level_index(level: Level) -> u8 {
    match level {
        Level::ERROR => 0,
        Level::WARN => 1,
        Level::INFO => 2,
        Level::DEBUG => 3,
        _ => 4,
    }
}

fn level_of(index: u8) -> Level {
    match index {
        0 => Level::ERROR,
        1 => Level::WARN,
        2 => Level::INFO,
        3 => Level::DEBUG,
        _ => Level::TRACE,
    }
}

// ---------------------------------------------------------------- worker

/// The worker's subscriber: records events at `max` or more severe.
pub(crate) struct Forwarder {
    max: Level,
    next_id: AtomicU64,
    spans: Mutex<HashMap<u64, SpanData>>,
    out: Mutex<Outgoing>,
}

struct SpanData {
    name: &'static str,
    refs: usize,
}

struct Outgoing {
    socket: UnixStream,
    pending: Vec<u8>,
    dropped: u64,
    broken: bool,
}

thread_local! {
    /// The spans entered on this thread, innermost last.
    static ENTERED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

impl Forwarder {
    /// A subscriber writing to `socket` (made non-blocking here).
    pub(crate) fn new(socket: UnixStream, max: u8) -> std::io::Result<Forwarder> {
        socket.set_nonblocking(true)?;
        Ok(Forwarder {
            max: level_of(max),
            next_id: AtomicU64::new(1),
            spans: Mutex::new(HashMap::new()),
            out: Mutex::new(Outgoing {
                socket,
                pending: Vec::new(),
                dropped: 0,
                broken: false,
            }),
        })
    }

    fn lock_out(&self) -> std::sync::MutexGuard<'_, Outgoing> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands what is still buffered over, waiting at most [`FINAL_FLUSH`]:
    /// called once the worker's task is done.
    pub(crate) fn finish(&self) {
        let mut out = self.lock_out();
        if out.broken || out.pending.is_empty() {
            return;
        }
        let _ = out.socket.set_nonblocking(false);
        let _ = out.socket.set_write_timeout(Some(FINAL_FLUSH));
        let pending = std::mem::take(&mut out.pending);
        let _ = out.socket.write_all(&pending);
    }
}

impl Outgoing {
    fn write_pending(&mut self) {
        while !self.pending.is_empty() && !self.broken {
            match self.socket.write(&self.pending) {
                Ok(0) => self.broken = true,
                Ok(written) => {
                    self.pending.drain(..written);
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => self.broken = true,
            }
        }
    }

    fn push(&mut self, mut record: LogRecord) {
        if self.broken {
            return;
        }
        self.write_pending();
        record.dropped = self.dropped;
        let Ok(body) = postcard::to_stdvec(&record) else {
            return;
        };
        if self.pending.len() + 4 + body.len() > MAX_PENDING {
            self.dropped += 1;
            return;
        }
        self.dropped = 0;
        self.pending
            .extend_from_slice(&(body.len() as u32).to_le_bytes());
        self.pending.extend_from_slice(&body);
        self.write_pending();
    }
}

/// Collects an event's message and other fields as text.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }
}

/// Cuts `text` to at most `max` bytes, on a character boundary.
fn cut(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

impl Subscriber for Forwarder {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::from_level(self.max))
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id,
            SpanData {
                name: span.metadata().name(),
                refs: 1,
            },
        );
        Id::from_u64(id)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut text = Text::default();
        event.record(&mut text);
        let budget = MAX_RECORD / 2;
        cut(&mut text.message, budget);
        cut(&mut text.fields, budget / 2);
        let spans = {
            let spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
            let mut names = ENTERED.with(|entered| {
                entered
                    .borrow()
                    .iter()
                    .filter_map(|id| spans.get(id).map(|span| span.name))
                    .collect::<Vec<_>>()
                    .join(":")
            });
            cut(&mut names, budget / 4);
            names
        };
        let mut target = event.metadata().target().to_string();
        cut(&mut target, 256);
        self.lock_out().push(LogRecord {
            level: level_index(*event.metadata().level()),
            target,
            message: text.message,
            fields: text.fields,
            spans,
            dropped: 0,
        });
    }

    fn enter(&self, span: &Id) {
        ENTERED.with(|entered| entered.borrow_mut().push(span.into_u64()));
    }

    fn exit(&self, span: &Id) {
        ENTERED.with(|entered| {
            let mut entered = entered.borrow_mut();
            if let Some(at) = entered.iter().rposition(|id| *id == span.into_u64()) {
                entered.remove(at);
            }
        });
    }

    fn clone_span(&self, id: &Id) -> Id {
        if let Some(span) = self
            .spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&id.into_u64())
        {
            span.refs += 1;
        }
        id.clone()
    }

    fn try_close(&self, id: Id) -> bool {
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        let Some(span) = spans.get_mut(&id.into_u64()) else {
            return false;
        };
        span.refs -= 1;
        if span.refs == 0 {
            spans.remove(&id.into_u64());
            return true;
        }
        false
    }
}

// ---------------------------------------------------------------- parent

/// The parent's reader of one worker's records.
#[derive(Default)]
pub(crate) struct RecordReader {
    buffer: Vec<u8>,
}

/// The record stream was corrupt.
#[derive(Debug)]
pub(crate) struct Corrupt;

impl RecordReader {
    /// Takes bytes; re-emits every complete record as the worker `pid`'s.
    pub(crate) fn push(&mut self, bytes: &[u8], pid: i32) -> Result<(), Corrupt> {
        self.buffer.extend_from_slice(bytes);
        let mut at = 0;
        let result = loop {
            let Some(head) = self.buffer.get(at..at + 4) else {
                break Ok(());
            };
            let len = u32::from_le_bytes(head.try_into().expect("four bytes")) as usize;
            if len > MAX_RECORD {
                tracing::error!(
                    pid,
                    len,
                    "worker sent a tracing record over 64 KiB: no more of its tracing is read"
                );
                break Err(Corrupt);
            }
            let Some(body) = self.buffer.get(at + 4..at + 4 + len) else {
                break Ok(());
            };
            match postcard::from_bytes::<LogRecord>(body) {
                Ok(record) => emit(&record, pid),
                Err(error) => {
                    tracing::error!(pid, %error, "worker sent a malformed tracing record: no more of its tracing is read");
                    break Err(Corrupt);
                }
            }
            at += 4 + len;
        };
        self.buffer.drain(..at);
        result
    }
}

/// Re-emits a worker's event in the parent, in the current (the worker's) span.
fn emit(record: &LogRecord, pid: i32) {
    if record.dropped > 0 {
        tracing::warn!(
            pid,
            dropped = record.dropped,
            "the worker dropped tracing events: the parent read them too slowly"
        );
    }
    macro_rules! forward {
        ($level:expr) => {
            tracing::event!(
                target: "parallel::worker::log",
                $level,
                pid,
                worker_target = %record.target,
                spans = %record.spans,
                fields = %record.fields,
                "{}",
                record.message
            )
        };
    }
    match level_of(record.level) {
        Level::ERROR => forward!(Level::ERROR),
        Level::WARN => forward!(Level::WARN),
        Level::INFO => forward!(Level::INFO),
        Level::DEBUG => forward!(Level::DEBUG),
        _ => forward!(Level::TRACE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_buffer_drops_and_counts_and_the_count_travels_with_the_next_record() {
        let (worker, parent) = UnixStream::pair().unwrap();
        let forwarder = Forwarder::new(worker, 4).unwrap();
        let record = || LogRecord {
            level: 2,
            target: "t".into(),
            message: "x".repeat(1000),
            fields: String::new(),
            spans: String::new(),
            dropped: 0,
        };
        // Nobody reads `parent`: the socket's buffer fills, then ours.
        let mut out = forwarder.lock_out();
        for _ in 0..2000 {
            out.push(record());
        }
        assert!(out.dropped > 0, "some records were dropped");
        assert!(out.pending.len() <= MAX_PENDING);
        drop(out);
        drop(parent);
    }

    #[test]
    fn records_split_anywhere_decode_the_same() {
        let record = LogRecord {
            level: 1,
            target: "worker::job".into(),
            message: "hello".into(),
            fields: "n=3".into(),
            spans: "outer:inner".into(),
            dropped: 0,
        };
        let body = postcard::to_stdvec(&record).unwrap();
        let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&bytes.clone());
        for split in 0..bytes.len() {
            let mut reader = RecordReader::default();
            reader.push(&bytes[..split], 1).unwrap();
            reader.push(&bytes[split..], 1).unwrap();
            assert!(reader.buffer.is_empty(), "split at {split}");
        }
        let mut reader = RecordReader::default();
        let mut huge = ((MAX_RECORD + 1) as u32).to_le_bytes().to_vec();
        huge.push(0);
        assert!(reader.push(&huge, 1).is_err());
    }
}
