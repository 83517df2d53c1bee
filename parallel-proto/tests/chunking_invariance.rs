//! However the transport cuts the bytes, both protocols' state machines see
//! the same events: a whole conversation is run once as written and once
//! re-chunked (down to one byte at a time), and the event logs must match.

mod support;

use parallel_proto::channel::{Outcome, ParentEvent, WorkerEvent};
use parallel_proto::zygote::{ExitStatus, ServerEvent, SpawnFailure, SpawnOptions, ZygoteEvent};
use parallel_proto::{EntryKey, Limits, WireEntry};
use proptest::collection::vec;
use proptest::prelude::*;
use support::strategies::{bulk_bytes, chunk_sizes, small_bytes};
use support::{ChannelPair, Chunking, ZygotePair};

fn entry() -> WireEntry {
    EntryKey::from_bytes([3; 16]).seal(0x40, 9)
}

#[derive(Debug, Clone)]
enum ChannelStep {
    ParentData(Vec<u8>, usize),
    ParentCall(Vec<u8>),
    WorkerData(Vec<u8>, usize),
    /// Move the bytes, then the worker answers every call it has seen.
    Settle,
}

fn channel_step() -> impl Strategy<Value = ChannelStep> {
    prop_oneof![
        (bulk_bytes(20_000), 0usize..=3).prop_map(|(p, fds)| ChannelStep::ParentData(p, fds)),
        small_bytes().prop_map(ChannelStep::ParentCall),
        (bulk_bytes(20_000), 0usize..=3).prop_map(|(p, fds)| ChannelStep::WorkerData(p, fds)),
        Just(ChannelStep::Settle),
    ]
}

fn answer_calls(pair: &mut ChannelPair, seen: &mut usize) {
    pair.settle();
    let calls: Vec<_> = pair.child_events[*seen..]
        .iter()
        .filter_map(|event| match event {
            WorkerEvent::Call { call, args } => Some((*call, args.clone())),
            _ => None,
        })
        .collect();
    *seen = pair.child_events.len();
    for (call, mut args) in calls {
        args.reverse();
        pair.child.reply(call, Outcome::Ok(args)).unwrap();
    }
    pair.settle();
}

fn channel_conversation(
    script: &[ChannelStep],
    chunking: Chunking,
) -> (Vec<ParentEvent>, Vec<WorkerEvent>) {
    let mut pair = ChannelPair::channel(Limits::default()).with_chunking(chunking);
    let mut seen = 0;
    pair.parent.start(entry(), b"args".to_vec()).unwrap();
    for step in script.iter().cloned() {
        match step {
            ChannelStep::ParentData(payload, fds) => pair.parent.send_data(payload, fds).unwrap(),
            ChannelStep::ParentCall(args) => {
                pair.parent.call(args).unwrap();
            }
            ChannelStep::WorkerData(payload, fds) => pair.child.send_data(payload, fds).unwrap(),
            ChannelStep::Settle => answer_calls(&mut pair, &mut seen),
        }
    }
    pair.parent.end().unwrap();
    answer_calls(&mut pair, &mut seen);
    pair.child.end().unwrap();
    pair.child.finish(Outcome::Ok(b"done".to_vec())).unwrap();
    pair.settle();
    assert_eq!(pair.parent.calls_in_flight(), 0);
    assert!(pair.parent.is_returned());
    (pair.parent_events, pair.child_events)
}

#[derive(Debug, Clone)]
enum ZygoteStep {
    Spawn {
        user_fds: usize,
        fail: bool,
    },
    Snapshot {
        args: Vec<u8>,
        fail: bool,
    },
    /// The parent kills the n-th worker it believes live.
    Kill {
        index: usize,
        signal: i32,
    },
    /// The zygote reaps the n-th child it knows.
    Reap {
        index: usize,
        code: i32,
    },
    /// Move the bytes; the zygote answers every request it has seen.
    Settle,
}

fn zygote_step() -> impl Strategy<Value = ZygoteStep> {
    prop_oneof![
        (0usize..=3, any::<bool>())
            .prop_map(|(user_fds, fail)| ZygoteStep::Spawn { user_fds, fail }),
        (small_bytes(), any::<bool>()).prop_map(|(args, fail)| ZygoteStep::Snapshot { args, fail }),
        (any::<usize>(), 1i32..32).prop_map(|(index, signal)| ZygoteStep::Kill { index, signal }),
        (any::<usize>(), any::<i32>()).prop_map(|(index, code)| ZygoteStep::Reap { index, code }),
        Just(ZygoteStep::Settle),
    ]
}

fn failing() -> SpawnOptions {
    SpawnOptions::default().name("fail")
}

fn answer_requests(pair: &mut ZygotePair, seen: &mut usize, next_pid: &mut i32) {
    pair.settle();
    let events = pair.child_events[*seen..].to_vec();
    *seen = pair.child_events.len();
    for event in events {
        match event {
            ServerEvent::Spawn {
                request, options, ..
            }
            | ServerEvent::Snapshot {
                request, options, ..
            } if options == failing() => {
                let failure = SpawnFailure {
                    errno: Some(11),
                    message: "no".into(),
                };
                pair.child.spawn_failed(request, failure).unwrap();
            }
            ServerEvent::Spawn { request, .. } => {
                pair.child.spawned(request, *next_pid).unwrap();
                *next_pid += 1;
            }
            ServerEvent::Snapshot { request, .. } => {
                pair.child.snapshot_ready(request, *next_pid).unwrap();
                *next_pid += 1;
            }
            ServerEvent::Kill { pid, signal, .. } => {
                let status = ExitStatus::Signaled {
                    signal,
                    core_dumped: false,
                };
                // Two kills of one worker may arrive together: the second
                // finds it already reaped.
                pair.child.reaped(pid, status).unwrap();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    pair.settle();
}

fn zygote_conversation(
    script: &[ZygoteStep],
    chunking: Chunking,
) -> (Vec<ZygoteEvent>, Vec<ServerEvent>) {
    let mut pair = ZygotePair::zygote(Limits::default()).with_chunking(chunking);
    let (mut seen, mut next_pid) = (0, 1000);
    for step in script.iter().cloned() {
        match step {
            ZygoteStep::Spawn { user_fds, fail } => {
                let options = if fail {
                    failing()
                } else {
                    SpawnOptions::default()
                };
                pair.parent.spawn(entry(), options, user_fds).unwrap();
            }
            ZygoteStep::Snapshot { args, fail } => {
                let options = if fail {
                    failing()
                } else {
                    SpawnOptions::default()
                };
                pair.parent.snapshot(entry(), args, options).unwrap();
            }
            ZygoteStep::Kill { index, signal } => {
                let mut live: Vec<u64> = pair
                    .parent_events
                    .iter()
                    .filter_map(|event| match event {
                        ZygoteEvent::Spawned { worker, .. }
                        | ZygoteEvent::SnapshotReady { worker, .. } => Some(*worker),
                        _ => None,
                    })
                    .filter(|worker| pair.parent.is_live(*worker))
                    .collect();
                live.sort_unstable();
                if !live.is_empty() {
                    pair.parent.kill(live[index % live.len()], signal).unwrap();
                }
            }
            ZygoteStep::Reap { index, code } => {
                let mut pids: Vec<i32> = pair.child.live_pids().collect();
                pids.sort_unstable();
                if !pids.is_empty() {
                    let pid = pids[index % pids.len()];
                    let status = ExitStatus::Exited(code);
                    assert!(pair.child.reaped(pid, status).unwrap().is_some());
                }
            }
            ZygoteStep::Settle => answer_requests(&mut pair, &mut seen, &mut next_pid),
        }
    }
    answer_requests(&mut pair, &mut seen, &mut next_pid);
    pair.parent.shutdown().unwrap();
    pair.settle();
    assert_eq!(pair.parent.in_flight(), 0);
    assert_eq!(pair.child_events.last(), Some(&ServerEvent::Shutdown));
    (pair.parent_events, pair.child_events)
}

proptest! {
    #![proptest_config(support::proptest_config(256))]

    #[test]
    fn channel_events_do_not_depend_on_chunking(
        script in vec(channel_step(), 0..10),
        sizes in chunk_sizes(),
    ) {
        let as_written = channel_conversation(&script, Chunking::AsWritten);
        let rechunked = channel_conversation(&script, Chunking::Sizes(sizes));
        prop_assert_eq!(as_written, rechunked);
    }

    #[test]
    fn zygote_events_do_not_depend_on_chunking(
        script in vec(zygote_step(), 0..16),
        sizes in chunk_sizes(),
    ) {
        let as_written = zygote_conversation(&script, Chunking::AsWritten);
        let rechunked = zygote_conversation(&script, Chunking::Sizes(sizes));
        prop_assert_eq!(as_written, rechunked);
    }
}

#[test]
fn a_whole_channel_conversation_one_byte_at_a_time() {
    let script = [
        ChannelStep::ParentData(vec![1; 20_000], 2),
        ChannelStep::ParentCall(b"abc".to_vec()),
        ChannelStep::WorkerData(b"out".to_vec(), 1),
        ChannelStep::Settle,
        ChannelStep::ParentCall(b"xy".to_vec()),
    ];
    let (parent, worker) = channel_conversation(&script, Chunking::bytewise());
    assert_eq!(
        worker,
        [
            WorkerEvent::Start {
                task: entry(),
                args: b"args".to_vec()
            },
            WorkerEvent::Data {
                payload: vec![1; 20_000],
                fds: 2
            },
            WorkerEvent::Call {
                call: 1,
                args: b"abc".to_vec()
            },
            WorkerEvent::Call {
                call: 2,
                args: b"xy".to_vec()
            },
            WorkerEvent::End,
        ]
    );
    assert_eq!(
        parent,
        [
            ParentEvent::Ready {
                pid: support::WORKER_PID
            },
            ParentEvent::Data {
                payload: b"out".to_vec(),
                fds: 1
            },
            ParentEvent::Reply {
                call: 1,
                outcome: Outcome::Ok(b"cba".to_vec())
            },
            ParentEvent::Reply {
                call: 2,
                outcome: Outcome::Ok(b"yx".to_vec())
            },
            ParentEvent::End,
            ParentEvent::Returned(Outcome::Ok(b"done".to_vec())),
        ]
    );
}

#[test]
fn a_whole_zygote_conversation_one_byte_at_a_time() {
    let script = [
        ZygoteStep::Spawn {
            user_fds: 2,
            fail: false,
        },
        ZygoteStep::Snapshot {
            args: b"init".to_vec(),
            fail: false,
        },
        ZygoteStep::Spawn {
            user_fds: 0,
            fail: true,
        },
        ZygoteStep::Settle,
        ZygoteStep::Kill {
            index: 0,
            signal: 9,
        },
    ];
    let (parent, server) = zygote_conversation(&script, Chunking::bytewise());
    assert_eq!(
        parent,
        [
            ZygoteEvent::Ready {
                pid: support::ZYGOTE_PID
            },
            ZygoteEvent::Spawned {
                request: 1,
                worker: 1,
                pid: 1000
            },
            ZygoteEvent::SnapshotReady {
                request: 2,
                worker: 2,
                pid: 1001
            },
            ZygoteEvent::SpawnFailed {
                request: 3,
                failure: SpawnFailure {
                    errno: Some(11),
                    message: "no".into()
                }
            },
            ZygoteEvent::Exited {
                worker: 1,
                status: ExitStatus::Signaled {
                    signal: 9,
                    core_dumped: false
                }
            },
        ]
    );
    assert_eq!(server.len(), 5, "{server:?}");
    assert!(matches!(
        server[0],
        ServerEvent::Spawn {
            request: 1,
            fds: 3,
            ..
        }
    ));
}
