//! The protocol's own floor: a call round trip through `parallel-proto`'s
//! channel state machines and postcard, with no code of the library's async
//! core (no driver task, no hand-over to the caller, no descriptor passing).
//!
//! The parent's side ([`ProtoCaller`]) runs where the raw ping-pong runs, on
//! the adapter's runtime; the worker's side ([`ProtoEchoer`]) is a raw
//! worker of kind [`RawKind::ProtoEcho`](super::raw::RawKind::ProtoEcho),
//! forked by the mini zygote. Both frame, check and encode every message as
//! the library's channel does (hello, `Start`, then `Call`/`Reply` frames,
//! the `u64` argument and result through postcard), and read and write with
//! the runtime's plain socket calls (`read`/`write`, where the library uses
//! `recvmsg`/`sendmsg`, which can carry descriptors). So
//! `Run::call / this row` is what the async core adds to the protocol's
//! work, and `this row / raw ping-pong` what the protocol costs over 8 bytes.

use parallel_proto::channel::{Outcome, ParentChannel, ParentEvent, WorkerChannel, WorkerEvent};
use parallel_proto::{Limits, Transmit, WireEntry};

/// The parent's side: a started channel that makes `u64 → u64` calls.
pub struct ProtoCaller {
    channel: ParentChannel,
}

impl ProtoCaller {
    /// A channel with its hello and a `Start` queued (the raw worker runs no
    /// entry point: any entry does).
    pub fn new() -> ProtoCaller {
        let mut channel = ParentChannel::new(Limits::DEFAULT);
        channel
            .start(
                WireEntry {
                    offset: 0,
                    tag: [0; 16],
                },
                Vec::new(),
            )
            .expect("start");
        ProtoCaller { channel }
    }

    /// Queues a call with argument `x`.
    pub fn call(&mut self, x: u64) {
        let args = postcard::to_allocvec(&x).expect("encode");
        self.channel.call(args).expect("call");
    }

    /// The next bytes to write; give the transmit back with
    /// [`written`](Self::written) once written.
    pub fn transmit(&mut self) -> Option<Transmit> {
        self.channel.poll_transmit()
    }

    /// Takes back a written transmit's buffer, as the library's connection
    /// does (the next frame is encoded into it).
    pub fn written(&mut self, transmit: Transmit) {
        self.channel.recycle(transmit.head);
    }

    /// Feeds bytes read; the result of the call they complete, if any.
    pub fn read(&mut self, mut input: &[u8]) -> Option<u64> {
        let mut result = None;
        while let Some(event) = self
            .channel
            .handle_input(&mut input)
            .expect("worker's frames")
        {
            match event {
                ParentEvent::Ready { .. } => {}
                ParentEvent::Reply {
                    outcome: Outcome::Ok(bytes),
                    ..
                } => result = Some(postcard::from_bytes(&bytes).expect("decode")),
                other => panic!("unexpected event from the proto echo worker: {other:?}"),
            }
        }
        result
    }
}

/// The worker's side: answers each `u64` call with its argument.
pub struct ProtoEchoer {
    channel: WorkerChannel,
}

impl ProtoEchoer {
    /// A channel for this process, with its hello queued.
    pub fn new() -> ProtoEchoer {
        ProtoEchoer {
            channel: WorkerChannel::new(Limits::DEFAULT, std::process::id() as i32),
        }
    }

    /// The next bytes to write (see [`ProtoCaller::transmit`]).
    pub fn transmit(&mut self) -> Option<Transmit> {
        self.channel.poll_transmit()
    }

    /// See [`ProtoCaller::written`].
    pub fn written(&mut self, transmit: Transmit) {
        self.channel.recycle(transmit.head);
    }

    /// Feeds bytes read, queueing a reply to each call; false once the
    /// parent ended its stream.
    pub fn read(&mut self, mut input: &[u8]) -> bool {
        while let Some(event) = self
            .channel
            .handle_input(&mut input)
            .expect("parent's frames")
        {
            match event {
                WorkerEvent::Call { call, args } => {
                    let x: u64 = postcard::from_bytes(&args).expect("decode");
                    let result = postcard::to_allocvec(&x).expect("encode");
                    self.channel
                        .reply(call, Outcome::Ok(result))
                        .expect("reply");
                }
                WorkerEvent::End => return false,
                _ => {}
            }
        }
        true
    }
}
