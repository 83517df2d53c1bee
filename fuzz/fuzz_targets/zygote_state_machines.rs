//! A `ZygoteClient` and a `ZygoteServer` joined by an in-memory transport,
//! driven by arbitrary sequences of local API calls, partial deliveries of
//! the real bytes (queued output is written only when the peer reads, so
//! send queues fill up), and injected garbage or forged frames.
//!
//! Checked: nothing panics; `handle_input` errors are remote and sticky; a
//! refused local call queues nothing; as long as only the API was used
//! (no injected bytes, requests answered in kind), neither side ever sees a
//! protocol error: honest peers always agree; and Shutdown is final: it is
//! the server's last event, and any whole frame after it (which only injected
//! bytes can bring) leaves the server failed, an `Unexpected` error then
//! saying "after Shutdown".
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use parallel_proto::zygote::{
    ExitStatus, Resource, ServerEvent, SpawnFailure, SpawnOptions, ToZygote, ZygoteClient,
    ZygoteEvent, ZygoteServer,
};
use parallel_proto::{EntryKey, Error, FrameDecoder, Limits, RemoteError, WireEntry};
use parallel_proto_fuzz::{pick, pump, raw_frame, FuzzLimits, Side};

#[derive(Debug, Arbitrary)]
enum Pick {
    /// One the other side told us about.
    Seen(u8),
    /// Any value at all.
    Raw(u64),
}

#[derive(Debug, Arbitrary)]
enum Op {
    Spawn {
        offset: i64,
        name: Option<String>,
        rlimits: Vec<(u8, u64, u64)>,
        /// Protocol version 2's options.
        more: MoreOptions,
        user_fds: usize,
    },
    Snapshot {
        offset: i64,
        args: Vec<u8>,
    },
    Kill {
        worker: Pick,
        signal: i32,
    },
    Shutdown,
    Spawned {
        request: Pick,
        pid: i32,
    },
    SnapshotReady {
        request: Pick,
        pid: i32,
    },
    SpawnFailed {
        request: Pick,
        errno: Option<i32>,
        message: String,
    },
    Reaped {
        pid: Pick,
        code: i32,
        signal: Option<(i32, bool)>,
    },
    DeliverToServer(u16),
    DeliverToClient(u16),
    DeliverAll,
    GarbageToServer(Vec<u8>),
    GarbageToClient(Vec<u8>),
    FrameToServer {
        kind: u8,
        fds: u8,
        payload: Vec<u8>,
    },
    FrameToClient {
        kind: u8,
        fds: u8,
        payload: Vec<u8>,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    limits: FuzzLimits,
    ops: Vec<Op>,
}

fn entry(offset: i64) -> WireEntry {
    EntryKey::from_bytes([0x42; 16]).seal(offset, 7)
}

/// Environment, working directory, identity and placement of a spawn.
#[derive(Debug, Arbitrary)]
struct MoreOptions {
    env_clear: bool,
    env: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    current_dir: Option<Vec<u8>>,
    uid: Option<u32>,
    gid: Option<u32>,
    cpu_affinity: Option<Vec<u16>>,
    nice: Option<i32>,
}

impl MoreOptions {
    fn apply(self, mut options: SpawnOptions) -> SpawnOptions {
        use std::os::unix::ffi::OsStrExt;
        let os = |bytes: &[u8]| std::ffi::OsStr::from_bytes(bytes).to_os_string();
        if self.env_clear {
            options = options.env_clear();
        }
        for (key, value) in self.env {
            options = match value {
                Some(value) => options.env(os(&key), os(&value)),
                None => options.env_remove(os(&key)),
            };
        }
        if let Some(dir) = self.current_dir {
            options = options.current_dir(os(&dir));
        }
        if let Some(uid) = self.uid {
            options = options.uid(uid);
        }
        if let Some(gid) = self.gid {
            options = options.gid(gid);
        }
        if let Some(cpus) = self.cpu_affinity {
            options = options.cpu_affinity(cpus.into_iter().map(usize::from));
        }
        match self.nice {
            Some(nice) => options.nice(nice),
            None => options,
        }
    }
}

fn resource(tag: u8) -> Resource {
    match tag % 8 {
        0 => Resource::AddressSpace,
        1 => Resource::CpuTime,
        2 => Resource::FileSize,
        3 => Resource::OpenFiles,
        4 => Resource::CoreSize,
        5 => Resource::Data,
        6 => Resource::Stack,
        _ => Resource::LockedMemory,
    }
}

/// Requests the server has seen and not answered, by kind.
#[derive(Default)]
struct Pending {
    spawns: Vec<u64>,
    snapshots: Vec<u64>,
    seen: usize,
}

impl Pending {
    fn update(&mut self, events: &[ServerEvent]) {
        for event in &events[self.seen..] {
            match event {
                ServerEvent::Spawn { request, .. } => self.spawns.push(*request),
                ServerEvent::Snapshot { request, .. } => self.snapshots.push(*request),
                _ => {}
            }
        }
        self.seen = events.len();
    }

    fn answered(&mut self, request: u64) {
        self.spawns.retain(|&r| r != request);
        self.snapshots.retain(|&r| r != request);
    }
}

/// The server's view of Shutdown, modelled apart from it: a shadow decoder
/// reads every byte the server is given and notes when a well-formed
/// Shutdown frame has gone by, and whether any whole frame came after it.
struct ShutdownModel {
    decoder: FrameDecoder,
    /// A Shutdown frame (no descriptors, empty payload) was delivered.
    shut_down: bool,
    /// A whole frame was delivered after it.
    frame_after: bool,
}

impl ShutdownModel {
    fn new(limits: Limits) -> Self {
        ShutdownModel {
            decoder: FrameDecoder::new(limits),
            shut_down: false,
            frame_after: false,
        }
    }

    /// Sees `bytes` as the server will. Once the stream is corrupt the
    /// server has failed, and the model stops learning.
    fn feed(&mut self, bytes: &[u8]) {
        let mut input = bytes;
        while let Ok(Some(frame)) = self.decoder.decode(&mut input) {
            if self.shut_down {
                self.frame_after = true;
            } else if frame.fds == 0 {
                let message = ToZygote::decode(frame.kind, &frame.payload);
                self.shut_down = matches!(message, Ok(ToZygote::Shutdown));
            }
        }
    }

    /// Gives the server the first `max` bytes of its inbox.
    fn deliver(&mut self, server: &mut Side<ZygoteServer>, max: usize) {
        let take = max.min(server.inbox.len());
        self.feed(&server.inbox[..take]);
        server.deliver(max);
    }

    /// Gives the server `bytes` that did not come from the client.
    fn inject(&mut self, server: &mut Side<ZygoteServer>, bytes: &[u8]) {
        self.feed(bytes);
        server.input(bytes);
    }

    fn check(&self, server: &Side<ZygoteServer>) {
        let shutdown = server
            .events
            .iter()
            .position(|event| matches!(event, ServerEvent::Shutdown));
        if let Some(index) = shutdown {
            assert!(self.shut_down, "a Shutdown event without a Shutdown frame");
            assert_eq!(index + 1, server.events.len(), "an event after Shutdown");
            if let Some(Error::Remote(RemoteError::Unexpected { reason, .. })) = &server.failed {
                assert_eq!(*reason, "after Shutdown", "{:?}", server.failed);
            }
        }
        if self.frame_after {
            assert!(
                server.failed.is_some(),
                "a message after Shutdown was accepted: {:?}",
                server.events
            );
        }
    }
}

/// `pid`, or another one if a live child has it: the OS never gives two
/// unreaped children one pid, and the server relies on that.
fn unique_pid(server: &ZygoteServer, pid: i32) -> i32 {
    let live: Vec<i32> = server.live_pids().collect();
    let mut pid = pid;
    while live.contains(&pid) {
        pid = pid.wrapping_add(1);
    }
    pid
}

fn live_workers(client: &Side<ZygoteClient>) -> Vec<u64> {
    let mut live: Vec<u64> = client
        .events
        .iter()
        .filter_map(|event| match event {
            ZygoteEvent::Spawned { worker, .. } | ZygoteEvent::SnapshotReady { worker, .. } => {
                Some(*worker)
            }
            _ => None,
        })
        .filter(|&worker| client.machine.is_live(worker))
        .collect();
    live.sort_unstable();
    live
}

fuzz_target!(|input: Input| {
    let limits = input.limits.get();
    let mut client = Side::new(ZygoteClient::new(limits));
    let mut server = Side::new(ZygoteServer::new(limits, 1));
    let mut pending = Pending::default();
    let mut model = ShutdownModel::new(limits);
    let mut honest = true;

    for op in input.ops {
        let queued = client.machine.queued_bytes();
        match op {
            Op::Spawn {
                offset,
                name,
                rlimits,
                more,
                user_fds,
            } => {
                let options = rlimits
                    .into_iter()
                    .fold(SpawnOptions::default(), |options, (tag, soft, hard)| {
                        options.limit(resource(tag), soft, hard)
                    });
                let options = match name {
                    Some(name) => options.name(name),
                    None => options,
                };
                let options = more.apply(options);
                let result = client.machine.spawn(entry(offset), options, user_fds);
                if !client.local(&result) {
                    assert_eq!(client.machine.queued_bytes(), queued);
                }
                assert!(client.machine.in_flight() <= limits.max_in_flight());
            }
            Op::Snapshot { offset, args } => {
                let result = client
                    .machine
                    .snapshot(entry(offset), args, SpawnOptions::default());
                if !client.local(&result) {
                    assert_eq!(client.machine.queued_bytes(), queued);
                }
                assert!(client.machine.in_flight() <= limits.max_in_flight());
            }
            Op::Kill { worker, signal } => {
                let worker = match worker {
                    Pick::Seen(index) => pick(&live_workers(&client), index),
                    Pick::Raw(raw) => Some(raw),
                };
                if let Some(worker) = worker {
                    let result = client.machine.kill(worker, signal);
                    if !client.local(&result) {
                        assert_eq!(client.machine.queued_bytes(), queued);
                    }
                }
            }
            Op::Shutdown => {
                let result = client.machine.shutdown();
                if !client.local(&result) {
                    assert_eq!(client.machine.queued_bytes(), queued);
                }
            }
            Op::Spawned { request, pid } => {
                let pid = unique_pid(&server.machine, pid);
                let request = match request {
                    Pick::Seen(index) => pick(&pending.spawns, index),
                    Pick::Raw(raw) => Some(raw),
                };
                if let Some(request) = request {
                    let seen = pending.spawns.contains(&request);
                    let result = server.machine.spawned(request, pid);
                    if server.local(&result) {
                        honest &= seen;
                        pending.answered(request);
                    }
                }
            }
            Op::SnapshotReady { request, pid } => {
                let pid = unique_pid(&server.machine, pid);
                let request = match request {
                    Pick::Seen(index) => pick(&pending.snapshots, index),
                    Pick::Raw(raw) => Some(raw),
                };
                if let Some(request) = request {
                    let seen = pending.snapshots.contains(&request);
                    let result = server.machine.snapshot_ready(request, pid);
                    if server.local(&result) {
                        honest &= seen;
                        pending.answered(request);
                    }
                }
            }
            Op::SpawnFailed {
                request,
                errno,
                message,
            } => {
                let all: Vec<u64> = pending
                    .spawns
                    .iter()
                    .chain(&pending.snapshots)
                    .copied()
                    .collect();
                let request = match request {
                    Pick::Seen(index) => pick(&all, index),
                    Pick::Raw(raw) => Some(raw),
                };
                if let Some(request) = request {
                    let failure = SpawnFailure { errno, message };
                    let result = server.machine.spawn_failed(request, failure);
                    if server.local(&result) {
                        pending.answered(request);
                    }
                }
            }
            Op::Reaped { pid, code, signal } => {
                let mut pids: Vec<i32> = server.machine.live_pids().collect();
                pids.sort_unstable();
                let pid = match pid {
                    Pick::Seen(index) => pick(&pids, index),
                    Pick::Raw(raw) => Some(raw as i32),
                };
                let status = match signal {
                    Some((signal, core_dumped)) => ExitStatus::Signaled {
                        signal,
                        core_dumped,
                    },
                    None => ExitStatus::Exited(code),
                };
                if let Some(pid) = pid {
                    let known = pids.contains(&pid);
                    let result = server.machine.reaped(pid, status);
                    if server.local(&result) {
                        assert_eq!(result.unwrap().is_some(), known);
                    }
                }
            }
            Op::DeliverToServer(max) => {
                pump(&mut client.machine, &mut server, &limits);
                model.deliver(&mut server, max.into());
            }
            Op::DeliverToClient(max) => {
                pump(&mut server.machine, &mut client, &limits);
                client.deliver(max.into());
            }
            Op::DeliverAll => {
                pump(&mut client.machine, &mut server, &limits);
                model.deliver(&mut server, usize::MAX);
                pump(&mut server.machine, &mut client, &limits);
                client.deliver(usize::MAX);
            }
            Op::GarbageToServer(bytes) => {
                honest = false;
                model.inject(&mut server, &bytes);
            }
            Op::GarbageToClient(bytes) => {
                honest = false;
                client.input(&bytes);
            }
            Op::FrameToServer { kind, fds, payload } => {
                honest = false;
                model.inject(&mut server, &raw_frame(kind, fds, &payload));
            }
            Op::FrameToClient { kind, fds, payload } => {
                honest = false;
                client.input(&raw_frame(kind, fds, &payload));
            }
        }
        pending.update(&server.events);
        model.check(&server);
        if honest {
            assert_eq!(client.failed, None::<Error>, "honest peers disagree");
            assert_eq!(server.failed, None::<Error>, "honest peers disagree");
        }
    }
});
