//! Shared test support: an in-memory transport between two state machines,
//! frame builders, and proptest strategies for every message.
//!
//! Each integration test file is its own crate and uses only part of this.
#![allow(dead_code)]

pub mod strategies;

use parallel_proto::channel::{ParentChannel, WorkerChannel};
use parallel_proto::frame::encode_frame;
use parallel_proto::zygote::{ZygoteClient, ZygoteServer};
use parallel_proto::{Endpoint, Error, Limits, Transmit};

/// The pair loop gives up (and fails the test) after this many rounds
/// without settling: two correct state machines never ping-pong forever.
pub const MAX_STEPS: usize = 64;

/// How the transport cuts the bytes it delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunking {
    /// Each `head` and each `body` in one `handle_input` call, as written.
    AsWritten,
    /// All bytes of a round in runs of these sizes, cycling (sizes must be > 0).
    Sizes(Vec<usize>),
}

impl Chunking {
    /// One byte per `handle_input` call.
    pub fn bytewise() -> Chunking {
        Chunking::Sizes(vec![1])
    }
}

/// Which side of a pair failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The parent (`ParentChannel` or `ZygoteClient`).
    Parent,
    /// The child (`WorkerChannel` or `ZygoteServer`).
    Child,
}

/// Feeds `bytes` to `machine` in the given run sizes (cycling), calling
/// `handle_input` until each run is consumed; pushes every event.
pub fn feed<E: Endpoint>(
    machine: &mut E,
    bytes: &[u8],
    sizes: &[usize],
    events: &mut Vec<E::Event>,
) -> Result<(), Error> {
    let mut rest = bytes;
    let mut size = sizes.iter().copied().cycle();
    while !rest.is_empty() {
        let take = size.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (mut chunk, tail) = rest.split_at(take);
        rest = tail;
        feed_chunk(machine, &mut chunk, events)?;
    }
    Ok(())
}

/// Calls `handle_input` until it has consumed `chunk`; pushes every event.
pub fn feed_chunk<E: Endpoint>(
    machine: &mut E,
    chunk: &mut &[u8],
    events: &mut Vec<E::Event>,
) -> Result<(), Error> {
    while let Some(event) = machine.handle_input(chunk)? {
        events.push(event);
    }
    assert!(
        chunk.is_empty(),
        "Ok(None) must mean the input was consumed"
    );
    Ok(())
}

/// Drains `machine`'s transmits.
pub fn drain<E: Endpoint>(machine: &mut E) -> Vec<Transmit> {
    std::iter::from_fn(|| machine.poll_transmit()).collect()
}

/// The bytes of `transmits`, `head` then `body`, in order.
pub fn wire(transmits: &[Transmit]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for transmit in transmits {
        bytes.extend_from_slice(&transmit.head);
        bytes.extend_from_slice(&transmit.body);
    }
    bytes
}

/// Two state machines joined by an in-memory transport.
///
/// Tests call the local API on `parent` and `child`, then [`run`](Self::run)
/// to move bytes both ways until neither side has anything left to send.
/// Events pile up in `parent_events` / `child_events`; every transmit is
/// logged in `to_child` / `to_parent`.
pub struct Pair<P: Endpoint, C: Endpoint> {
    pub parent: P,
    pub child: C,
    pub parent_events: Vec<P::Event>,
    pub child_events: Vec<C::Event>,
    pub to_child: Vec<Transmit>,
    pub to_parent: Vec<Transmit>,
    pub chunking: Chunking,
}

/// A parent and a worker.
pub type ChannelPair = Pair<ParentChannel, WorkerChannel>;
/// A zygote client and its server.
pub type ZygotePair = Pair<ZygoteClient, ZygoteServer>;

/// The worker pid every channel pair uses.
pub const WORKER_PID: i32 = 4242;
/// The zygote pid every zygote pair uses.
pub const ZYGOTE_PID: i32 = 77;

impl ChannelPair {
    /// A fresh parent and worker, both with `limits`.
    pub fn channel(limits: Limits) -> Self {
        Pair::new(
            ParentChannel::new(limits),
            WorkerChannel::new(limits, WORKER_PID),
        )
    }
}

impl ZygotePair {
    /// A fresh client and server, both with `limits`.
    pub fn zygote(limits: Limits) -> Self {
        Pair::new(
            ZygoteClient::new(limits),
            ZygoteServer::new(limits, ZYGOTE_PID),
        )
    }
}

impl<P: Endpoint, C: Endpoint> Pair<P, C> {
    /// Joins two machines; the transport delivers bytes as written.
    pub fn new(parent: P, child: C) -> Self {
        Pair {
            parent,
            child,
            parent_events: Vec::new(),
            child_events: Vec::new(),
            to_child: Vec::new(),
            to_parent: Vec::new(),
            chunking: Chunking::AsWritten,
        }
    }

    /// Sets how the transport cuts the bytes it delivers.
    pub fn with_chunking(mut self, chunking: Chunking) -> Self {
        self.chunking = chunking;
        self
    }

    /// One round: everything the parent queued goes to the child, then
    /// everything the child queued goes to the parent. Returns whether any
    /// byte moved.
    pub fn step(&mut self) -> Result<bool, (Side, Error)> {
        let down = drain(&mut self.parent);
        deliver(
            &mut self.child,
            &down,
            &self.chunking,
            &mut self.child_events,
        )
        .map_err(|error| (Side::Child, error))?;
        let up = drain(&mut self.child);
        deliver(
            &mut self.parent,
            &up,
            &self.chunking,
            &mut self.parent_events,
        )
        .map_err(|error| (Side::Parent, error))?;
        let moved = !down.is_empty() || !up.is_empty();
        self.to_child.extend(down);
        self.to_parent.extend(up);
        Ok(moved)
    }

    /// Steps until nothing moves (at most [`MAX_STEPS`] rounds).
    pub fn run(&mut self) -> Result<(), (Side, Error)> {
        for _ in 0..MAX_STEPS {
            if !self.step()? {
                return Ok(());
            }
        }
        panic!("the pair did not settle within {MAX_STEPS} rounds");
    }

    /// Like [`run`](Self::run), for tests where neither side may fail.
    pub fn settle(&mut self) {
        if let Err((side, error)) = self.run() {
            panic!("{side:?} failed: {error}");
        }
    }

    /// Takes the events the child collected so far.
    pub fn take_child_events(&mut self) -> Vec<C::Event> {
        std::mem::take(&mut self.child_events)
    }

    /// Takes the events the parent collected so far.
    pub fn take_parent_events(&mut self) -> Vec<P::Event> {
        std::mem::take(&mut self.parent_events)
    }
}

fn deliver<E: Endpoint>(
    machine: &mut E,
    transmits: &[Transmit],
    chunking: &Chunking,
    events: &mut Vec<E::Event>,
) -> Result<(), Error> {
    match chunking {
        Chunking::AsWritten => {
            for transmit in transmits {
                for part in [&transmit.head, &transmit.body] {
                    if !part.is_empty() {
                        feed_chunk(machine, &mut &part[..], events)?;
                    }
                }
            }
            Ok(())
        }
        Chunking::Sizes(sizes) => feed(machine, &wire(transmits), sizes, events),
    }
}

/// One frame's bytes: header and payload, checked against the default limits.
pub fn frame(kind: u8, fds: usize, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(kind, fds, payload, &Limits::default(), &mut out).expect("fits the defaults");
    out
}

/// A frame with a raw header, for headers the encoder refuses to build.
pub fn raw_frame(kind: u8, fds: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![parallel_proto::frame::MAGIC, kind, fds, 0];
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Limits small enough to reach in a test.
pub fn small_limits() -> Limits {
    Limits::default()
        .with_max_frame_len(1024)
        .and_then(|l| l.with_max_buffered_bytes(4096))
        .and_then(|l| l.with_max_in_flight(4))
        .and_then(|l| l.with_max_fds_per_frame(4))
        .expect("valid limits")
}

/// Feeds `bytes` in one go and returns the first error, panicking if there is none.
pub fn first_error<E: Endpoint>(machine: &mut E, bytes: &[u8]) -> Error {
    let mut events = Vec::new();
    match feed(machine, bytes, &[], &mut events) {
        Err(error) => error,
        Ok(()) => panic!("expected an error, got events {events:?}"),
    }
}

/// Asserts that `machine` keeps returning `expected` on every later input:
/// none, valid-looking, or garbage.
pub fn assert_sticky<E: Endpoint>(machine: &mut E, expected: &Error)
where
    E::Event: PartialEq,
{
    let inputs: [&[u8]; 3] = [&[], &frame(0x01, 0, &[1]), &[0xff; 9]];
    for bytes in inputs {
        let mut input = bytes;
        assert_eq!(
            machine.handle_input(&mut input).as_ref(),
            Err(expected),
            "the error must be sticky"
        );
    }
}

/// Proptest settings for this suite: `cases` cases (kept low so the whole
/// suite stays fast in debug), failures saved beside the test file.
pub fn proptest_config(cases: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..proptest::test_runner::Config::default()
    }
}
