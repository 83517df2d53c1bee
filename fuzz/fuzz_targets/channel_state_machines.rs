//! A `ParentChannel` and a `WorkerChannel` joined by an in-memory transport,
//! driven by arbitrary sequences of local API calls, partial deliveries of
//! the real bytes (queued output is written only when the peer reads, so
//! send queues fill up), and injected garbage or forged frames.
//!
//! Checked: nothing panics; `handle_input` errors are remote and sticky; a
//! refused local call queues nothing; and as long as only the API was used
//! (no injected bytes, and the worker speaks only once it got its Start, as a
//! real worker does), neither side ever sees a protocol error.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use parallel_proto::channel::{
    Outcome, PanicLocation, PanicReport, ParentChannel, ParentEvent, WorkerChannel, WorkerEvent,
};
use parallel_proto::{EntryKey, Error, WireEntry};
use parallel_proto_fuzz::{pick, pump, raw_frame, FuzzLimits, Side};

#[derive(Debug, Arbitrary)]
enum Pick {
    /// A call the worker received and has not answered.
    Seen(u8),
    /// Any id at all.
    Raw(u64),
}

#[derive(Debug, Arbitrary)]
enum FuzzOutcome {
    Ok(Vec<u8>),
    Err(Vec<u8>),
    Panic {
        message: String,
        location: Option<(String, u32, u32)>,
        backtrace: Option<String>,
    },
}

impl FuzzOutcome {
    fn get(self) -> Outcome {
        match self {
            FuzzOutcome::Ok(bytes) => Outcome::Ok(bytes),
            FuzzOutcome::Err(bytes) => Outcome::Err(bytes),
            FuzzOutcome::Panic {
                message,
                location,
                backtrace,
            } => Outcome::Panic(PanicReport {
                message,
                location: location.map(|(file, line, column)| PanicLocation { file, line, column }),
                backtrace,
            }),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Op {
    Start { offset: i64, args: Vec<u8> },
    ParentData { len: u16, fill: u8, fds: usize },
    ParentSharedData { len: u64, fds: usize },
    Call { args: Vec<u8> },
    ParentEnd,
    WorkerData { len: u16, fill: u8, fds: usize },
    WorkerSharedData { len: u64, fds: usize },
    WorkerEnd,
    Reply { call: Pick, outcome: FuzzOutcome },
    Finish { outcome: FuzzOutcome },
    DeliverToWorker(u16),
    DeliverToParent(u16),
    DeliverAll,
    GarbageToWorker(Vec<u8>),
    GarbageToParent(Vec<u8>),
    FrameToWorker { kind: u8, fds: u8, payload: Vec<u8> },
    FrameToParent { kind: u8, fds: u8, payload: Vec<u8> },
}

#[derive(Debug, Arbitrary)]
struct Input {
    limits: FuzzLimits,
    ops: Vec<Op>,
}

fn entry(offset: i64) -> WireEntry {
    EntryKey::from_bytes([0x24; 16]).seal(offset, 5)
}

/// Calls the worker received and has not answered yet.
fn open_calls(worker: &Side<WorkerChannel>, answered: &[u64]) -> Vec<u64> {
    worker
        .events
        .iter()
        .filter_map(|event| match event {
            WorkerEvent::Call { call, .. } => Some(*call),
            _ => None,
        })
        .filter(|call| !answered.contains(call))
        .collect()
}

fuzz_target!(|input: Input| {
    let limits = input.limits.get();
    let mut parent = Side::new(ParentChannel::new(limits));
    let mut worker = Side::new(WorkerChannel::new(limits, 1));
    let mut answered = Vec::new();
    let mut honest = true;

    for op in input.ops {
        let parent_queued = parent.machine.queued_bytes();
        let worker_queued = worker.machine.queued_bytes();
        // A real worker runs only once its Start arrived.
        let worker_started = matches!(worker.events.first(), Some(WorkerEvent::Start { .. }));
        let mut parent_refused = false;
        let mut worker_refused = false;
        let mut worker_sent = false;
        match op {
            Op::Start { offset, args } => {
                let result = parent.machine.start(entry(offset), args);
                parent_refused = !parent.local(&result);
            }
            Op::ParentData { len, fill, fds } => {
                let result = parent.machine.send_data(vec![fill; len.into()], fds);
                parent_refused = !parent.local(&result);
            }
            Op::ParentSharedData { len, fds } => {
                let result = parent.machine.send_shared_data(len, fds);
                parent_refused = !parent.local(&result);
            }
            Op::Call { args } => {
                let result = parent.machine.call(args);
                parent_refused = !parent.local(&result);
                assert!(parent.machine.calls_in_flight() <= limits.max_in_flight());
            }
            Op::ParentEnd => {
                let result = parent.machine.end();
                parent_refused = !parent.local(&result);
            }
            Op::WorkerData { len, fill, fds } => {
                let result = worker.machine.send_data(vec![fill; len.into()], fds);
                worker_refused = !worker.local(&result);
                worker_sent = !worker_refused;
            }
            Op::WorkerSharedData { len, fds } => {
                let result = worker.machine.send_shared_data(len, fds);
                worker_refused = !worker.local(&result);
                worker_sent = !worker_refused;
            }
            Op::WorkerEnd => {
                let result = worker.machine.end();
                worker_refused = !worker.local(&result);
                worker_sent = !worker_refused;
            }
            Op::Reply { call, outcome } => {
                let call = match call {
                    Pick::Seen(index) => pick(&open_calls(&worker, &answered), index),
                    Pick::Raw(raw) => Some(raw),
                };
                if let Some(call) = call {
                    let result = worker.machine.reply(call, outcome.get());
                    worker_refused = !worker.local(&result);
                    worker_sent = !worker_refused;
                    if worker_sent {
                        answered.push(call);
                    }
                }
            }
            Op::Finish { outcome } => {
                let result = worker.machine.finish(outcome.get());
                worker_refused = !worker.local(&result);
                worker_sent = !worker_refused;
            }
            Op::DeliverToWorker(max) => {
                pump(&mut parent.machine, &mut worker, &limits);
                worker.deliver(max.into());
            }
            Op::DeliverToParent(max) => {
                pump(&mut worker.machine, &mut parent, &limits);
                parent.deliver(max.into());
            }
            Op::DeliverAll => {
                pump(&mut parent.machine, &mut worker, &limits);
                worker.deliver(usize::MAX);
                pump(&mut worker.machine, &mut parent, &limits);
                parent.deliver(usize::MAX);
            }
            Op::GarbageToWorker(bytes) => {
                honest = false;
                worker.input(&bytes);
            }
            Op::GarbageToParent(bytes) => {
                honest = false;
                parent.input(&bytes);
            }
            Op::FrameToWorker { kind, fds, payload } => {
                honest = false;
                worker.input(&raw_frame(kind, fds, &payload));
            }
            Op::FrameToParent { kind, fds, payload } => {
                honest = false;
                parent.input(&raw_frame(kind, fds, &payload));
            }
        }
        // A refused call queues nothing.
        if parent_refused {
            assert_eq!(parent.machine.queued_bytes(), parent_queued);
        }
        if worker_refused {
            assert_eq!(worker.machine.queued_bytes(), worker_queued);
        }
        if worker_sent && !worker_started {
            honest = false;
        }
        if honest {
            assert_eq!(parent.failed, None::<Error>, "honest peers disagree");
            assert_eq!(worker.failed, None::<Error>, "honest peers disagree");
        }
    }
    // The events are well-ordered on each side.
    if let Some(position) = parent
        .events
        .iter()
        .position(|event| matches!(event, ParentEvent::Returned(_)))
    {
        assert_eq!(
            position,
            parent.events.len() - 1,
            "Returned is the last event"
        );
    }
});
