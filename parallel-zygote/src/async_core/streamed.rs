//! A `process` message encoded while it is written: its large byte strings
//! (`serde_bytes` fields and buffers, anything serialized with
//! `serialize_bytes` of at least [`LEND_MIN`] bytes; [`STREAM_MIN`] of them
//! in all) go from the message's own memory to the socket, with no copy
//! into a frame first.
//!
//! serde lends a `serialize_bytes` slice only for the duration of the call,
//! so its bytes cannot be kept for a later gathered write (as a [`Bytes`]'s
//! buffer is, see `pieces`). Instead the sender sizes the message (a pass
//! that copies nothing), hands the message itself to the driver, and the
//! driver encodes it when the frame's turn comes, writing each large run
//! straight to the socket as the encoder produces it. Whatever the socket
//! does not take at once (its buffer full, or an error) is copied, from
//! there on, into a buffer queued behind it: the message is encoded once,
//! and a frame is never left half-written.
//!
//! The encode runs twice (sizing, then writing), so the two runs must agree.
//! They do for any `Serialize` that depends only on the value; should the
//! second differ (interior mutability), the frame still holds exactly the
//! announced bytes (cut, or filled with zeros) and the channel stays whole:
//! the receiver decodes what came, most likely into a decode error for
//! that message, and the sender logs an error.
//!
//! [`Bytes`]: super::Bytes

use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;

use serde::Serialize;

use super::fd::encode_with_fds;
use super::pieces::LEND_MIN;

/// Bytes in large byte strings (not lent `Bytes`) from which a message is
/// streamed. Below it, the copy into a frame costs less than what streaming
/// gives up: the messages queued together then go out in one gathered
/// write, where each streamed message is a write (or more) of its own
/// (64 KiB `serde_bytes` messages went 0.7-0.95 × as fast streamed on
/// tokio's current-thread runtime and on glommio, 256 KiB ones 0.95-1.3 ×,
/// 1 MiB ones 1.2-1.7 ×: BENCHMARKS.md, session 18).
pub(crate) const STREAM_MIN: usize = 256 * 1024;

/// What a sizing pass over a message found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    /// The encoding's length.
    pub(crate) len: usize,
    /// Bytes of it in runs of at least [`LEND_MIN`] (byte strings).
    pub(crate) large: usize,
}

/// A sizing pass is a postcard encode that keeps only lengths: every
/// write is counted where it is made, with no writer behind (a plain
/// `Vec<u8>` is serialized one byte at a time).
impl postcard::ser_flavors::Flavor for Shape {
    type Output = Shape;

    #[inline]
    fn try_push(&mut self, _byte: u8) -> postcard::Result<()> {
        self.len += 1;
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.len += bytes.len();
        if bytes.len() >= LEND_MIN {
            self.large += bytes.len();
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Shape> {
        Ok(self)
    }
}

/// Sizes `value`'s postcard encoding, copying no bytes; `None` when it
/// cannot be encoded.
pub(crate) fn shape<T: Serialize>(value: &T) -> Option<Shape> {
    postcard::serialize_with_flavor(value, Shape::default()).ok()
}

/// A message waiting for its turn on the socket, encoded then.
pub(crate) trait Streamed: Send {
    /// The encoding's length, from the sizing pass (the frame announces it).
    fn len(&self) -> usize;
    /// Encodes the message into `writer`, as postcard.
    ///
    /// # Errors
    /// The message's `Serialize` or the writer's.
    fn encode_into(&self, writer: &mut dyn io::Write) -> postcard::Result<()>;
}

impl std::fmt::Debug for dyn Streamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streamed")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// A message of type `T`, sized at `len` bytes.
struct Message<T> {
    message: T,
    len: usize,
    /// Whether shared `Bytes` went as their memfds in the sizing pass (the
    /// channel passes descriptors); the encode must see the same.
    attach: bool,
}

impl<T: Serialize + Send> Streamed for Message<T> {
    fn len(&self) -> usize {
        self.len
    }

    fn encode_into(&self, writer: &mut dyn io::Write) -> postcard::Result<()> {
        // The sizing pass found no descriptors to pass; any the encode
        // collects now (it should not) are dropped with the list.
        let encoded = encode_with_fds(self.attach, || {
            super::pieces::to_writer(&self.message, writer).map(|_| ())
        });
        encoded.map(|((), _fds)| ())
    }
}

/// `message`, sized at `len` bytes by a pass with the same `attach`, to be
/// encoded when it is written.
pub(crate) fn boxed<T: Serialize + Send + 'static>(
    message: T,
    len: usize,
    attach: bool,
) -> Box<dyn Streamed> {
    Box::new(Message {
        message,
        len,
        attach,
    })
}

/// Writes `head` (a frame's header) and then `message`'s encoding on
/// `socket`, each large run from the message's memory, as far as the socket
/// takes them now. Returns the bytes it did not take, to be written next
/// (empty when all went out): exactly `head.len() + message.len()` bytes are
/// written and returned in all.
pub(crate) fn write(socket: &impl AsRawFd, head: Vec<u8>, message: &dyn Streamed) -> Vec<u8> {
    let mut writer = Writer {
        socket,
        pending: head,
        stopped: false,
        remaining: message.len(),
        overflowed: false,
    };
    let encoded = message.encode_into(&mut writer);
    writer.finish(encoded.err())
}

/// The bytes of `message`'s encoding, exactly `message.len()` of them, in
/// one buffer (the copying path, for a frame that cannot be streamed).
pub(crate) fn to_vec(message: &dyn Streamed) -> Vec<u8> {
    let mut writer = Collector {
        bytes: Vec::with_capacity(message.len()),
        remaining: message.len(),
        overflowed: false,
    };
    let encoded = message.encode_into(&mut writer);
    if encoded.is_err() || writer.remaining > 0 || writer.overflowed {
        report_mismatch(encoded.err());
    }
    let mut bytes = writer.bytes;
    bytes.resize(message.len(), 0);
    bytes
}

/// The encoder's output, written to the socket as it comes.
struct Writer<'a, S> {
    socket: &'a S,
    /// Bytes not written yet: the frame's header and small runs until the
    /// next large one; once `stopped`, everything that came after.
    pending: Vec<u8>,
    /// The socket took less than offered (full, or failed: the queued rest
    /// meets the error again and reports it); from here on, bytes are
    /// copied into `pending`.
    stopped: bool,
    /// Message bytes still to come, by the sizing pass: never more are
    /// written, whatever the encoder produces.
    remaining: usize,
    /// Whether the encoder produced more than the sizing pass said.
    overflowed: bool,
}

impl<S: AsRawFd> Writer<'_, S> {
    /// Writes `pending` and then `run` in one system call per part the
    /// socket takes; what it does not take stays in `pending`.
    fn send(&mut self, run: &[u8]) {
        let mut pending_sent = 0;
        let mut run_sent = 0;
        while run_sent < run.len() {
            let slices = [
                IoSlice::new(&self.pending[pending_sent..]),
                IoSlice::new(&run[run_sent..]),
            ];
            match crate::io::write_gathered(self.socket, &slices) {
                Ok(sent) if sent > 0 => {
                    let from_pending = sent.min(self.pending.len() - pending_sent);
                    pending_sent += from_pending;
                    run_sent += sent - from_pending;
                }
                // Full (`WouldBlock`), or an error the queued rest will
                // meet again on the driver's next write.
                _ => {
                    self.pending.drain(..pending_sent);
                    parallel_proto::copy::extend_from_slice(&mut self.pending, &run[run_sent..]);
                    self.stopped = true;
                    return;
                }
            }
        }
        self.pending.clear();
    }

    /// The bytes still to write: `pending`, completed to the announced
    /// length should the encode have failed or come out short.
    fn finish(mut self, error: Option<postcard::Error>) -> Vec<u8> {
        if error.is_some() || self.remaining > 0 || self.overflowed {
            report_mismatch(error);
            let padded = self.pending.len() + self.remaining;
            self.pending.resize(padded, 0);
        }
        self.pending
    }
}

impl<S: AsRawFd> io::Write for Writer<'_, S> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let run = &bytes[..bytes.len().min(self.remaining)];
        self.remaining -= run.len();
        self.overflowed |= run.len() < bytes.len();
        if self.stopped || run.len() < LEND_MIN {
            parallel_proto::copy::extend_from_slice(&mut self.pending, run);
        } else {
            self.send(run);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The encoder's output, copied, cut at the announced length.
struct Collector {
    bytes: Vec<u8>,
    remaining: usize,
    overflowed: bool,
}

impl io::Write for Collector {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let run = &bytes[..bytes.len().min(self.remaining)];
        self.remaining -= run.len();
        self.overflowed |= run.len() < bytes.len();
        parallel_proto::copy::extend_from_slice(&mut self.bytes, run);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Says that a message's two encodes disagreed (see the module's notes).
fn report_mismatch(error: Option<postcard::Error>) {
    match error {
        Some(error) => tracing::error!(
            %error,
            "a process message that was sized could not be encoded when written: \
             its frame is filled with zeros, and its receiver most likely gets a \
             decode error"
        ),
        None => tracing::error!(
            "a process message encoded to another length when written than when \
             sized (its Serialize does not depend on its value alone): its frame \
             is cut or filled with zeros to the announced length, and its \
             receiver most likely gets a decode error"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_bytes::ByteBuf;

    use super::*;

    #[derive(Serialize)]
    struct Record {
        tag: u32,
        big: ByteBuf,
        label: String,
        #[serde(with = "serde_bytes")]
        other: Vec<u8>,
    }

    fn record() -> Record {
        Record {
            tag: 7,
            big: ByteBuf::from((0..1 << 20).map(|i| (i * 7) as u8).collect::<Vec<u8>>()),
            label: "between".into(),
            other: vec![5; 100_000],
        }
    }

    /// A non-blocking pair whose writing end holds little.
    fn pair() -> (UnixStream, UnixStream) {
        let (writer, reader) = UnixStream::pair().unwrap();
        writer.set_nonblocking(true).unwrap();
        reader.set_nonblocking(true).unwrap();
        nix::sys::socket::setsockopt(&writer, nix::sys::socket::sockopt::SndBuf, &65_536).unwrap();
        (writer, reader)
    }

    fn read_available(reader: &mut UnixStream) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut chunk = vec![0; 1 << 16];
        loop {
            match reader.read(&mut chunk) {
                Ok(0) => return bytes,
                Ok(read) => bytes.extend_from_slice(&chunk[..read]),
                Err(error) if error.kind() == ErrorKind::WouldBlock => return bytes,
                Err(error) => panic!("{error}"),
            }
        }
    }

    fn streamed_record() -> (Box<dyn Streamed>, Vec<u8>) {
        let message = record();
        let expected = postcard::to_stdvec(&message).unwrap();
        let sized = shape(&message).unwrap();
        assert_eq!(sized.len, expected.len());
        assert_eq!(sized.large, (1 << 20) + 100_000, "the two byte strings");
        (boxed(message, sized.len, true), expected)
    }

    #[test]
    fn what_the_socket_takes_goes_from_the_message_and_the_rest_comes_back() {
        let (writer, mut reader) = pair();
        let (message, encoding) = streamed_record();
        let head = vec![1, 2, 3];
        let rest = write(&writer, head.clone(), &*message);
        let written = read_available(&mut reader);
        assert!(
            !written.is_empty() && !rest.is_empty(),
            "a 64 KiB buffer takes part of a 1.1 MiB message: {} written, {} left",
            written.len(),
            rest.len()
        );
        let mut all = written;
        all.extend_from_slice(&rest);
        let mut expected = head;
        expected.extend_from_slice(&encoding);
        assert!(all == expected, "the bytes differ from head + postcard's");
    }

    #[test]
    fn a_socket_that_reads_as_it_goes_takes_the_whole_message() {
        let (writer, mut reader) = pair();
        let (message, encoding) = streamed_record();
        let reading = std::thread::spawn(move || {
            reader.set_nonblocking(false).unwrap();
            let mut bytes = vec![0; encoding.len() + 2];
            reader.read_exact(&mut bytes).unwrap();
            bytes == [&[9, 9][..], &encoding].concat()
        });
        // The reader drains the socket while `write` goes on: with the
        // socket full now and then, what is not taken comes back.
        let mut rest = write(&writer, vec![9, 9], &*message);
        writer.set_nonblocking(false).unwrap();
        (&writer).write_all(&rest).unwrap();
        rest.clear();
        assert!(reading.join().unwrap(), "the bytes differ from postcard's");
    }

    #[test]
    fn a_full_socket_takes_nothing_and_everything_comes_back() {
        let (mut writer, mut reader) = pair();
        while writer.write(&[0; 4096]).is_ok() {}
        let filler = read_available(&mut reader).len();
        assert!(filler > 0);
        while writer.write(&[0; 4096]).is_ok() {}
        let (message, encoding) = streamed_record();
        let rest = write(&writer, vec![4], &*message);
        assert_eq!(rest, [&[4][..], &encoding].concat());
    }

    /// Serializes `len` bytes on its first pass and `len + change` after.
    struct Shifty {
        len: usize,
        change: isize,
        passes: AtomicUsize,
    }

    impl Serialize for Shifty {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let len = match self.passes.fetch_add(1, Ordering::Relaxed) {
                0 => self.len,
                _ => self.len.saturating_add_signed(self.change),
            };
            serializer.serialize_bytes(&vec![9; len])
        }
    }

    #[test]
    fn an_encode_that_disagrees_with_its_sizing_keeps_the_announced_length() {
        for change in [-10_000, 10_000, 0] {
            let message = Shifty {
                len: 40_000,
                change,
                passes: AtomicUsize::new(0),
            };
            let sized = shape(&message).unwrap();
            let streamed = boxed(message, sized.len, true);
            let (writer, mut reader) = UnixStream::pair().unwrap();
            writer.set_nonblocking(true).unwrap();
            reader.set_nonblocking(true).unwrap();
            let rest = write(&writer, vec![1], &*streamed);
            let mut all = read_available(&mut reader);
            all.extend_from_slice(&rest);
            assert_eq!(all.len(), 1 + sized.len, "change {change}");
            let decoded: Result<ByteBuf, _> = postcard::from_bytes(&all[1..]);
            match change {
                // The shorter encoding, then zeros: postcard reads the
                // shorter value and ignores what follows.
                -10_000 => assert_eq!(decoded.unwrap().len(), 30_000),
                10_000 => assert!(decoded.is_err(), "a cut encoding"),
                _ => assert_eq!(decoded.unwrap().len(), 40_000),
            }
            let copied = to_vec(&*boxed(
                Shifty {
                    len: 40_000,
                    change,
                    passes: AtomicUsize::new(1),
                },
                sized.len,
                true,
            ));
            assert_eq!(copied.len(), sized.len, "the copying path, change {change}");
        }
    }
}
