//! The sans-IO protocol of `parallel`: bytes in, events and bytes out.
//!
//! **Platform:** this crate is portable; the library as a whole (`parallel-zygote`, the adapters) is Linux only.
//!
//! This crate knows nothing of sockets, threads, clocks or runtimes. It holds
//! the framing, the two protocols of the project as state machines, the
//! entry-point tags and the limits. `parallel-zygote` binds it to the OS, the
//! adapters bind it to async runtimes, and you can bind it to any transport.
//!
//! | protocol | between | state machines |
//! |---|---|---|
//! | [`zygote`] | the parent and the fork server | [`ZygoteClient`](zygote::ZygoteClient), [`ZygoteServer`](zygote::ZygoteServer) |
//! | [`channel`] | the parent and one worker | [`ParentChannel`](channel::ParentChannel), [`WorkerChannel`](channel::WorkerChannel) |
//!
//! # The run loop
//!
//! Every state machine has the same shape: *inputs* (`handle_input` with the
//! bytes you read, and methods such as `start`, `call`, `send_data`, `spawn`
//! that you call), and *outputs* (`poll_transmit`, the bytes to write). Drive it
//! like this:
//!
//! 1. Create it. Its hello is already queued.
//! 2. After **every** input method, drain [`poll_transmit`](channel::ParentChannel::poll_transmit)
//!    until it returns `None` and write each [`Transmit`] in order (`head`,
//!    then `body`, then its `external` bytes if you queued a frame with
//!    `send_data_external`), passing `fds` descriptors with its first byte.
//! 3. When bytes arrive, call `handle_input(&mut slice)` in a loop: each call
//!    consumes bytes until it has one event (`Ok(Some(event))`) or the slice is
//!    empty (`Ok(None)`). Handle each event before asking for the next; an
//!    event may make you call input methods, so go back to step 2.
//! 4. An `Err(Error::Remote(_))` is fatal: close the transport. An
//!    `Err(Error::Local(_))` means your call was refused and nothing changed.
//!
//! Nothing here reads a clock: timeouts belong to the caller, who simply stops
//! waiting and closes the transport.
//!
//! # Example: a parent and a worker, in memory
//!
//! ```
//! use parallel_proto::channel::*;
//! use parallel_proto::{EntryKey, Limits, Transmit};
//!
//! let key = EntryKey::from_bytes([7; 16]);
//! let mut parent = ParentChannel::new(Limits::default());
//! let mut worker = WorkerChannel::new(Limits::default(), 4242);
//!
//! // The parent names the task and makes a call, without waiting for the worker.
//! const SIGNATURE: u64 = 1; // the fingerprint of the task's Rust type
//! parent.start(key.seal(0x1000, SIGNATURE), b"args".to_vec()).unwrap();
//! let call = parent.call(b"2+2".to_vec()).unwrap();
//!
//! // "Transport": move every transmit from one side to the other.
//! fn wire(mut poll: impl FnMut() -> Option<Transmit>) -> Vec<u8> {
//!     let mut bytes = Vec::new();
//!     while let Some(t) = poll() {
//!         bytes.extend_from_slice(&t.head);
//!         bytes.extend_from_slice(&t.body);
//!     }
//!     bytes
//! }
//!
//! let bytes = wire(|| parent.poll_transmit());
//! let mut input = &bytes[..];
//! while let Some(event) = worker.handle_input(&mut input).unwrap() {
//!     match event {
//!         WorkerEvent::Start { task, args } => {
//!             assert_eq!(key.verify(&task, SIGNATURE), Ok(0x1000));
//!             assert_eq!(args, b"args");
//!         }
//!         WorkerEvent::Call { call, args } => {
//!             assert_eq!(args, b"2+2");
//!             worker.reply(call, Outcome::Ok(b"4".to_vec())).unwrap();
//!         }
//!         other => panic!("unexpected {other:?}"),
//!     }
//! }
//! worker.finish(Outcome::Ok(Vec::new())).unwrap();
//!
//! let bytes = wire(|| worker.poll_transmit());
//! let mut input = &bytes[..];
//! assert_eq!(parent.handle_input(&mut input).unwrap(), Some(ParentEvent::Ready { pid: 4242 }));
//! assert_eq!(
//!     parent.handle_input(&mut input).unwrap(),
//!     Some(ParentEvent::Reply { call, outcome: Outcome::Ok(b"4".to_vec()) })
//! );
//! assert_eq!(
//!     parent.handle_input(&mut input).unwrap(),
//!     Some(ParentEvent::Returned(Outcome::Ok(Vec::new())))
//! );
//! assert!(input.is_empty());
//! ```
//!
//! # Writing a custom transport
//!
//! Anything that moves bytes in order works (a pipe, a TCP stream, shared
//! memory); descriptors need an AF_UNIX socket.
//!
//! - **Writing.** Drain `poll_transmit` after each input method and write the
//!   transmits in order. Partial writes are yours to finish: keep the
//!   remainder and write it before the next transmit. The queue is bounded by
//!   [`Limits::max_buffered_bytes`]; a send past it fails with
//!   [`LocalError::SendQueueFull`], which is back-pressure, not a failure.
//! - **Descriptors.** A `Transmit` with `fds: n` must carry the next `n`
//!   descriptors you handed over (in order) as `SCM_RIGHTS` with its first
//!   byte. On the reading side, push every descriptor `recvmsg` gives you onto
//!   a FIFO; when an event says `fds: n`, pop `n` from it. The sender sends
//!   them with the frame's first byte, so they are always there by the time the
//!   frame is complete.
//! - **Reading.** Read into any buffer of any size and feed it to
//!   `handle_input`; chunking never changes the events. The decoder holds at
//!   most one frame ([`Limits::max_frame_len`]), checked before it buffers.
//! - **End of stream.** EOF with calls in flight or before `Returned` means
//!   the worker died: ask the zygote for its exit status to say why.
//! - **Entries.** [`EntryKey::seal`] names a function; [`EntryKey::verify`]
//!   checks a received one against the expected type fingerprint. Never call
//!   an entry that did not verify.
//!
//! # Wire format
//!
//! See [`frame`] for the header. Payloads are [postcard] encodings of the
//! message bodies, except `Data`, whose payload is the raw bytes. `SharedData`
//! carries only a length: its bytes are in the frame's first descriptor, a
//! sealed memfd (for transports that pass descriptors). Golden byte
//! fixtures in the tests pin every message kind.
//!
//! [postcard]: https://docs.rs/postcard
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(clippy::missing_errors_doc)]

pub mod channel;
mod codec;
pub mod copy;
mod endpoint;
pub mod entry;
mod error;
pub mod frame;
mod limits;
mod transmit;
mod wire;
pub mod zygote;

pub use endpoint::Endpoint;
pub use entry::{EntryError, EntryKey, WireEntry};
pub use error::{Error, LocalError, RemoteError};
pub use frame::{Frame, FrameDecoder, FrameError, PayloadAlloc};
pub use limits::{Limits, LimitsError};
pub use transmit::Transmit;
