//! A peer that breaks the worker-channel protocol gets the right
//! `RemoteError`, and it is sticky: every later input and send returns it.

mod support;

use parallel_proto::channel::{
    FromWorker, Outcome, ParentChannel, ParentEvent, ToWorker, WorkerChannel, WorkerEvent,
};
use parallel_proto::{EntryKey, Error, FrameError, Limits, RemoteError, WireEntry};
use support::{assert_sticky, feed, first_error, frame};

fn entry() -> WireEntry {
    EntryKey::from_bytes([5; 16]).seal(0x20, 1)
}

fn to_worker(message: ToWorker, fds: usize) -> Vec<u8> {
    frame(message.kind(), fds, &message.into_payload())
}

fn from_worker(message: FromWorker, fds: usize) -> Vec<u8> {
    frame(message.kind(), fds, &message.into_payload())
}

fn hello_to_worker() -> Vec<u8> {
    to_worker(ToWorker::Hello { version: 3 }, 0)
}

fn start() -> Vec<u8> {
    to_worker(
        ToWorker::Start {
            task: entry(),
            args: Vec::new(),
        },
        0,
    )
}

fn worker_hello() -> Vec<u8> {
    from_worker(FromWorker::Hello { version: 3, pid: 9 }, 0)
}

fn unexpected(message: &'static str, reason: &'static str) -> Error {
    Error::Remote(RemoteError::Unexpected { message, reason })
}

/// A worker that got the parent's hello and Start.
fn started_worker() -> WorkerChannel {
    let mut worker = WorkerChannel::new(Limits::default(), 9);
    let mut events = Vec::new();
    feed(
        &mut worker,
        &[hello_to_worker(), start()].concat(),
        &[],
        &mut events,
    )
    .unwrap();
    assert!(matches!(events[..], [WorkerEvent::Start { .. }]));
    worker
}

/// A parent that started its task, made `calls` calls and got the worker's hello.
fn ready_parent(calls: usize) -> ParentChannel {
    let mut parent = ParentChannel::new(Limits::default());
    parent.start(entry(), Vec::new()).unwrap();
    for _ in 0..calls {
        parent.call(Vec::new()).unwrap();
    }
    let mut events = Vec::new();
    feed(&mut parent, &worker_hello(), &[], &mut events).unwrap();
    assert_eq!(events, [ParentEvent::Ready { pid: 9 }]);
    parent
}

/// `bytes` must fail `worker` with `expected`; then every input and every
/// send must keep failing with it.
fn worker_fails(mut worker: WorkerChannel, bytes: &[u8], expected: Error) {
    assert_eq!(first_error(&mut worker, bytes), expected);
    assert_sticky(&mut worker, &expected);
    assert_eq!(worker.send_data(Vec::new(), 0), Err(expected.clone()));
    assert_eq!(worker.finish(Outcome::Ok(Vec::new())), Err(expected));
}

fn parent_fails(mut parent: ParentChannel, bytes: &[u8], expected: Error) {
    assert_eq!(first_error(&mut parent, bytes), expected);
    assert_sticky(&mut parent, &expected);
    assert_eq!(parent.call(Vec::new()), Err(expected.clone()));
    assert_eq!(parent.end(), Err(expected));
}

// ---- what the worker refuses ----

#[test]
fn second_start_from_parent_is_sticky_fatal() {
    let expected = unexpected("Start", "a second time: a worker runs one task");
    assert_eq!(
        expected.to_string(),
        "peer sent Start a second time: a worker runs one task"
    );
    worker_fails(started_worker(), &start(), expected);
}

#[test]
fn data_after_end_from_parent_is_sticky_fatal() {
    let bytes = [
        to_worker(ToWorker::End, 0),
        to_worker(ToWorker::Data(b"late".to_vec()), 0),
    ]
    .concat();
    worker_fails(
        started_worker(),
        &bytes,
        unexpected("Data", "after the parent ended its stream"),
    );
}

#[test]
fn call_after_end_from_parent_is_sticky_fatal() {
    let bytes = [
        to_worker(ToWorker::End, 0),
        to_worker(
            ToWorker::Call {
                call: 1,
                args: Vec::new(),
            },
            0,
        ),
    ]
    .concat();
    worker_fails(
        started_worker(),
        &bytes,
        unexpected("Call", "after the parent ended its stream"),
    );
}

#[test]
fn data_before_start_from_parent_is_sticky_fatal() {
    let bytes = [hello_to_worker(), to_worker(ToWorker::Data(vec![1]), 0)].concat();
    worker_fails(
        WorkerChannel::new(Limits::default(), 9),
        &bytes,
        unexpected("Data", "before Start"),
    );
}

#[test]
fn start_before_hello_from_parent_is_sticky_fatal() {
    worker_fails(
        WorkerChannel::new(Limits::default(), 9),
        &start(),
        unexpected("Start", "before the parent's hello"),
    );
}

#[test]
fn wrong_version_from_parent_is_sticky_fatal() {
    let expected = Error::Remote(RemoteError::VersionMismatch {
        protocol: "worker channel",
        ours: 3,
        theirs: 4,
    });
    assert_eq!(
        expected.to_string(),
        "peer speaks worker channel protocol version 4, we speak 3; both sides must come from the same build"
    );
    worker_fails(
        WorkerChannel::new(Limits::default(), 9),
        &to_worker(ToWorker::Hello { version: 4 }, 0),
        expected,
    );
}

#[test]
fn second_hello_from_parent_is_sticky_fatal() {
    worker_fails(
        started_worker(),
        &hello_to_worker(),
        unexpected("Hello", "twice"),
    );
}

#[test]
fn fds_on_a_message_other_than_data_are_sticky_fatal_for_the_worker() {
    let cases = [
        (ToWorker::Hello { version: 3 }, "Hello", false),
        (
            ToWorker::Start {
                task: entry(),
                args: Vec::new(),
            },
            "Start",
            false,
        ),
        (
            ToWorker::Call {
                call: 1,
                args: Vec::new(),
            },
            "Call",
            true,
        ),
        (ToWorker::End, "End", true),
    ];
    for (message, name, after_start) in cases {
        let worker = if after_start {
            started_worker()
        } else {
            WorkerChannel::new(Limits::default(), 9)
        };
        let expected = Error::Remote(RemoteError::WrongFdCount {
            message: name,
            got: 2,
            expected: "none (only Data and SharedData carry descriptors)",
        });
        worker_fails(worker, &to_worker(message, 2), expected);
    }
}

#[test]
fn data_with_fds_from_parent_is_an_event_with_its_fd_count() {
    let mut worker = started_worker();
    let mut events = Vec::new();
    let bytes = to_worker(ToWorker::Data(b"fd".to_vec()), 3);
    feed(&mut worker, &bytes, &[], &mut events).unwrap();
    assert_eq!(
        events,
        [WorkerEvent::Data {
            payload: b"fd".to_vec(),
            fds: 3
        }]
    );
}

#[test]
fn a_reused_call_id_from_parent_is_sticky_fatal() {
    let call = to_worker(
        ToWorker::Call {
            call: 4,
            args: Vec::new(),
        },
        0,
    );
    worker_fails(
        started_worker(),
        &[call.clone(), call].concat(),
        unexpected("Call", "reusing the id of a call still in flight"),
    );
}

#[test]
fn a_malformed_end_from_parent_is_sticky_fatal() {
    let expected = Error::Remote(RemoteError::Malformed {
        message: "End",
        reason: "2 bytes where none belong".into(),
    });
    worker_fails(started_worker(), &frame(0x14, 0, &[0, 0]), expected);
}

#[test]
fn an_unknown_kind_from_parent_is_sticky_fatal() {
    let expected = Error::Remote(RemoteError::UnknownKind {
        protocol: "worker channel",
        kind: 0x01,
    });
    worker_fails(started_worker(), &frame(0x01, 0, &[1]), expected);
}

#[test]
fn a_corrupt_header_from_parent_is_sticky_fatal() {
    let expected = Error::Remote(RemoteError::Frame(FrameError::BadMagic { found: 0x00 }));
    // The cause is the source, not repeated in Display.
    assert_eq!(expected.to_string(), "corrupt stream from peer");
    let Error::Remote(remote) = &expected else {
        unreachable!()
    };
    assert_eq!(
        std::error::Error::source(remote).unwrap().to_string(),
        "frame header starts with 0x00, not the magic byte 0xb7: the stream is out of sync or not ours"
    );
    worker_fails(started_worker(), &[0; 8], expected);
}

// ---- what the parent refuses ----

#[test]
fn a_reply_for_an_unknown_call_is_sticky_fatal() {
    let expected = Error::Remote(RemoteError::UnknownId {
        message: "Reply",
        what: "call",
        id: 7,
    });
    assert_eq!(expected.to_string(), "peer sent Reply for unknown call 7");
    let reply = from_worker(
        FromWorker::Reply {
            call: 7,
            outcome: Outcome::Ok(Vec::new()),
        },
        0,
    );
    parent_fails(ready_parent(2), &reply, expected);
}

#[test]
fn a_second_reply_to_one_call_is_sticky_fatal() {
    let reply = from_worker(
        FromWorker::Reply {
            call: 1,
            outcome: Outcome::Ok(Vec::new()),
        },
        0,
    );
    let mut parent = ready_parent(1);
    let mut events = Vec::new();
    feed(&mut parent, &reply, &[], &mut events).unwrap();
    assert_eq!(parent.calls_in_flight(), 0);
    let expected = Error::Remote(RemoteError::UnknownId {
        message: "Reply",
        what: "call",
        id: 1,
    });
    parent_fails(parent, &reply, expected);
}

#[test]
fn worker_messages_before_its_hello_are_sticky_fatal() {
    let mut parent = ParentChannel::new(Limits::default());
    parent.start(entry(), Vec::new()).unwrap();
    parent_fails(
        parent,
        &from_worker(FromWorker::Data(vec![1]), 0),
        unexpected("Data", "before the worker's hello"),
    );
}

#[test]
fn worker_data_before_the_task_was_started_is_sticky_fatal() {
    let mut parent = ParentChannel::new(Limits::default());
    let mut events = Vec::new();
    feed(&mut parent, &worker_hello(), &[], &mut events).unwrap();
    let expected = unexpected("Data", "before the task was started");
    let bytes = from_worker(FromWorker::Data(vec![1]), 0);
    assert_eq!(first_error(&mut parent, &bytes), expected);
    assert_sticky(&mut parent, &expected);
    assert_eq!(parent.start(entry(), Vec::new()), Err(expected));
}

#[test]
fn wrong_version_from_worker_is_sticky_fatal() {
    let mut parent = ParentChannel::new(Limits::default());
    parent.start(entry(), Vec::new()).unwrap();
    let expected = Error::Remote(RemoteError::VersionMismatch {
        protocol: "worker channel",
        ours: 3,
        theirs: 0,
    });
    let hello = from_worker(FromWorker::Hello { version: 0, pid: 9 }, 0);
    parent_fails(parent, &hello, expected);
}

#[test]
fn second_hello_from_worker_is_sticky_fatal() {
    parent_fails(
        ready_parent(0),
        &worker_hello(),
        unexpected("Hello", "twice"),
    );
}

#[test]
fn worker_data_after_its_end_is_sticky_fatal() {
    let bytes = [
        from_worker(FromWorker::End, 0),
        from_worker(FromWorker::Data(vec![1]), 0),
    ]
    .concat();
    parent_fails(
        ready_parent(0),
        &bytes,
        unexpected("Data", "after the worker ended its stream"),
    );
}

#[test]
fn worker_end_twice_is_sticky_fatal() {
    let end = from_worker(FromWorker::End, 0);
    parent_fails(
        ready_parent(0),
        &[end.clone(), end].concat(),
        unexpected("End", "twice"),
    );
}

#[test]
fn anything_after_return_is_sticky_fatal() {
    let returned = from_worker(FromWorker::Return(Outcome::Ok(Vec::new())), 0);
    let cases = [
        (from_worker(FromWorker::Data(vec![1]), 0), "Data"),
        (from_worker(FromWorker::End, 0), "End"),
        (returned.clone(), "Return"),
        (
            from_worker(
                FromWorker::Reply {
                    call: 1,
                    outcome: Outcome::Ok(Vec::new()),
                },
                0,
            ),
            "Reply",
        ),
    ];
    for (bytes, name) in cases {
        parent_fails(
            ready_parent(1),
            &[returned.clone(), bytes].concat(),
            unexpected(name, "after the task returned"),
        );
    }
}

#[test]
fn fds_on_a_message_other_than_data_are_sticky_fatal_for_the_parent() {
    let reply = from_worker(
        FromWorker::Reply {
            call: 1,
            outcome: Outcome::Ok(Vec::new()),
        },
        1,
    );
    let expected = Error::Remote(RemoteError::WrongFdCount {
        message: "Reply",
        got: 1,
        expected: "none (only Data and SharedData carry descriptors)",
    });
    assert_eq!(
        expected.to_string(),
        "peer sent Reply with 1 file descriptors, expected none (only Data and SharedData carry descriptors)"
    );
    parent_fails(ready_parent(1), &reply, expected);
    let hello = frame(0x91, 1, &[1, 2]);
    let mut parent = ParentChannel::new(Limits::default());
    parent.start(entry(), Vec::new()).unwrap();
    parent_fails(
        parent,
        &hello,
        Error::Remote(RemoteError::WrongFdCount {
            message: "Hello",
            got: 1,
            expected: "none (only Data and SharedData carry descriptors)",
        }),
    );
}

#[test]
fn worker_data_with_fds_is_an_event_with_its_fd_count() {
    let mut parent = ready_parent(0);
    let mut events = Vec::new();
    feed(
        &mut parent,
        &from_worker(FromWorker::Data(vec![7]), 2),
        &[],
        &mut events,
    )
    .unwrap();
    assert_eq!(
        events,
        [ParentEvent::Data {
            payload: vec![7],
            fds: 2
        }]
    );
}

// ---- the end of the stream ----

#[test]
fn a_stream_that_ends_inside_a_frame_is_sticky_fatal() {
    let mut parent = ready_parent(0);
    let reply = frame(0x01, 0, &[1, 2, 3, 4]);
    let mut events = Vec::new();
    // Half a frame arrives, then the stream ends.
    feed(&mut parent, &reply[..6], &[], &mut events).unwrap();
    let expected = Error::Remote(RemoteError::Frame(FrameError::Truncated { buffered: 6 }));
    assert_eq!(parent.end_of_input(), Err(expected.clone()));
    assert_sticky(&mut parent, &expected);
    assert_eq!(parent.call(Vec::new()), Err(expected));
}

#[test]
fn a_stream_that_ends_between_frames_is_fine() {
    let mut worker = started_worker();
    assert_eq!(worker.end_of_input(), Ok(()));
    let mut parent = ready_parent(0);
    assert_eq!(parent.end_of_input(), Ok(()));
}

// ---- data in shared memory ----

#[test]
fn shared_data_from_parent_is_an_event_with_its_length_and_fds() {
    let mut worker = started_worker();
    let mut events = Vec::new();
    let bytes = to_worker(ToWorker::SharedData { len: 5 << 20 }, 2);
    feed(&mut worker, &bytes, &[], &mut events).unwrap();
    assert_eq!(
        events,
        [WorkerEvent::SharedData {
            len: 5 << 20,
            fds: 2
        }]
    );
}

#[test]
fn shared_data_from_worker_is_an_event_with_its_length_and_fds() {
    let mut parent = ready_parent(0);
    let mut events = Vec::new();
    let bytes = from_worker(FromWorker::SharedData { len: 1 << 20 }, 1);
    feed(&mut parent, &bytes, &[], &mut events).unwrap();
    assert_eq!(
        events,
        [ParentEvent::SharedData {
            len: 1 << 20,
            fds: 1
        }]
    );
}

#[test]
fn shared_data_without_its_memfd_is_sticky_fatal() {
    let expected = Error::Remote(RemoteError::WrongFdCount {
        message: "SharedData",
        got: 0,
        expected: "at least 1 (the shared memory)",
    });
    worker_fails(
        started_worker(),
        &to_worker(ToWorker::SharedData { len: 1 << 20 }, 0),
        expected.clone(),
    );
    parent_fails(
        ready_parent(0),
        &from_worker(FromWorker::SharedData { len: 1 << 20 }, 0),
        expected,
    );
}

#[test]
fn shared_data_longer_than_a_frame_may_be_is_sticky_fatal() {
    let max = Limits::default().max_frame_len();
    let len = u64::from(max) + 1;
    let expected = Error::Remote(RemoteError::SharedTooLong { len, max });
    assert_eq!(
        expected.to_string(),
        format!("peer sent SharedData of {len} bytes, more than max_frame_len ({max} bytes)")
    );
    worker_fails(
        started_worker(),
        &to_worker(ToWorker::SharedData { len }, 1),
        expected.clone(),
    );
    parent_fails(
        ready_parent(0),
        &from_worker(FromWorker::SharedData { len }, 1),
        expected,
    );
}

#[test]
fn shared_data_after_the_worker_ended_its_stream_is_sticky_fatal() {
    let mut parent = ready_parent(0);
    let mut events = Vec::new();
    feed(
        &mut parent,
        &from_worker(FromWorker::End, 0),
        &[],
        &mut events,
    )
    .unwrap();
    parent_fails(
        parent,
        &from_worker(FromWorker::SharedData { len: 1 }, 1),
        unexpected("SharedData", "after the worker ended its stream"),
    );
}
