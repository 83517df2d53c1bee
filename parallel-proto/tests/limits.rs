//! Every bound in `Limits` is enforced on both sides: a local send past it is
//! a `LocalError` with nothing queued, a peer past it is a `RemoteError`.

mod support;

use parallel_proto::channel::{Outcome, ParentChannel, WorkerChannel};
use parallel_proto::zygote::{
    ExitStatus, SpawnFailure, SpawnOptions, ZygoteClient, ZygoteEvent, ZygoteServer,
};
use parallel_proto::{EntryKey, Error, FrameError, Limits, LocalError, RemoteError, WireEntry};
use support::{
    assert_sticky, drain, feed, small_limits, wire, ChannelPair, Pair, Side, ZygotePair,
};

fn entry() -> WireEntry {
    EntryKey::from_bytes([4; 16]).seal(0, 0)
}

fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut limits = Limits::default();
    f(&mut limits);
    limits
}

#[test]
fn default_limits_are_the_documented_ones() {
    let limits = Limits::default();
    assert_eq!(limits, Limits::DEFAULT);
    assert_eq!(limits.max_frame_len, 128 * 1024 * 1024);
    assert_eq!(limits.max_buffered_bytes, 256 * 1024 * 1024);
    assert_eq!(limits.max_in_flight, 1024);
    assert_eq!(limits.max_fds_per_frame, 16);
}

// ---- max_in_flight ----

#[test]
fn spawns_past_max_in_flight_are_refused_locally_until_a_reply_frees_a_slot() {
    let mut pair = ZygotePair::zygote(limits(|l| l.max_in_flight = 2));
    pair.parent
        .spawn(entry(), SpawnOptions::default(), 0)
        .unwrap();
    pair.parent
        .snapshot(entry(), Vec::new(), SpawnOptions::default())
        .unwrap();
    let queued = pair.parent.queued_bytes();
    let error = pair
        .parent
        .spawn(entry(), SpawnOptions::default(), 0)
        .unwrap_err();
    assert_eq!(error, Error::Local(LocalError::TooManyInFlight { max: 2 }));
    assert_eq!(
        error.to_string(),
        "2 requests already await a reply (max_in_flight); wait for one to finish"
    );
    assert_eq!(
        pair.parent
            .snapshot(entry(), Vec::new(), SpawnOptions::default())
            .unwrap_err(),
        error
    );
    assert_eq!(pair.parent.queued_bytes(), queued);
    pair.settle();
    pair.child.spawned(1, 100).unwrap();
    let failure = SpawnFailure {
        errno: None,
        message: "no".into(),
    };
    pair.child.spawn_failed(2, failure).unwrap();
    pair.settle();
    assert_eq!(pair.parent.in_flight(), 0);
    assert_eq!(
        pair.parent.spawn(entry(), SpawnOptions::default(), 0),
        Ok(3)
    );
    assert_eq!(
        pair.parent.spawn(entry(), SpawnOptions::default(), 0),
        Ok(4)
    );
}

#[test]
fn calls_past_max_in_flight_are_refused_locally_until_a_reply_frees_a_slot() {
    let mut pair = ChannelPair::channel(limits(|l| l.max_in_flight = 2));
    pair.parent.start(entry(), Vec::new()).unwrap();
    let first = pair.parent.call(Vec::new()).unwrap();
    pair.parent.call(Vec::new()).unwrap();
    assert_eq!(
        pair.parent.call(Vec::new()),
        Err(Error::Local(LocalError::TooManyInFlight { max: 2 }))
    );
    pair.settle();
    pair.child.reply(first, Outcome::Ok(Vec::new())).unwrap();
    pair.settle();
    assert_eq!(pair.parent.calls_in_flight(), 1);
    assert_eq!(pair.parent.call(Vec::new()), Ok(3));
}

#[test]
fn a_zygote_refuses_a_parent_with_more_requests_in_flight_than_its_limit() {
    let mut pair = Pair::new(
        ZygoteClient::new(limits(|l| l.max_in_flight = 10)),
        ZygoteServer::new(limits(|l| l.max_in_flight = 2), 1),
    );
    for _ in 0..3 {
        pair.parent
            .spawn(entry(), SpawnOptions::default(), 0)
            .unwrap();
    }
    let expected = Error::Remote(RemoteError::TooManyInFlight { max: 2 });
    assert_eq!(pair.run(), Err((Side::Child, expected.clone())));
    assert_eq!(
        expected.to_string(),
        "peer has more than 2 requests in flight (max_in_flight)"
    );
    assert_eq!(pair.child_events.len(), 2, "the first two were admitted");
    assert_sticky(&mut pair.child, &expected);
}

#[test]
fn a_worker_refuses_a_parent_with_more_calls_in_flight_than_its_limit() {
    let mut pair = Pair::new(
        ParentChannel::new(limits(|l| l.max_in_flight = 10)),
        WorkerChannel::new(limits(|l| l.max_in_flight = 2), 1),
    );
    pair.parent.start(entry(), Vec::new()).unwrap();
    for _ in 0..3 {
        pair.parent.call(Vec::new()).unwrap();
    }
    let expected = Error::Remote(RemoteError::TooManyInFlight { max: 2 });
    assert_eq!(pair.run(), Err((Side::Child, expected.clone())));
    assert_sticky(&mut pair.child, &expected);
    assert_eq!(
        pair.child.reply(1, Outcome::Ok(Vec::new())),
        Err(expected),
        "sends fail too"
    );
}

#[test]
fn a_worker_accepts_new_calls_once_it_answered_old_ones() {
    let mut pair = ChannelPair::channel(limits(|l| l.max_in_flight = 1));
    pair.parent.start(entry(), Vec::new()).unwrap();
    for call in 1..=3 {
        assert_eq!(pair.parent.call(Vec::new()), Ok(call));
        pair.settle();
        pair.child.reply(call, Outcome::Ok(Vec::new())).unwrap();
        pair.settle();
    }
    assert_eq!(pair.child.calls_in_flight(), 0);
}

// ---- max_fds_per_frame ----

#[test]
fn too_many_fds_on_send_are_refused_locally() {
    let limits = small_limits();
    let expected = Error::Local(LocalError::TooManyFds { count: 5, max: 4 });
    assert_eq!(
        expected.to_string(),
        "5 file descriptors in one message exceed max_fds_per_frame (4)"
    );
    let mut parent = ParentChannel::new(limits);
    parent.start(entry(), Vec::new()).unwrap();
    let queued = parent.queued_bytes();
    assert_eq!(parent.send_data(vec![1], 5), Err(expected.clone()));
    assert_eq!(parent.queued_bytes(), queued);
    parent.send_data(vec![1], 4).unwrap();

    let mut worker = WorkerChannel::new(limits, 1);
    let queued = worker.queued_bytes();
    assert_eq!(worker.send_data(vec![1], 5), Err(expected.clone()));
    assert_eq!(worker.queued_bytes(), queued);

    // A spawn carries the worker's channel fd on top of the user's.
    let mut client = ZygoteClient::new(limits);
    assert_eq!(
        client.spawn(entry(), SpawnOptions::default(), 4),
        Err(expected)
    );
    assert_eq!(client.in_flight(), 0);
    assert_eq!(client.spawn(entry(), SpawnOptions::default(), 3), Ok(1));
}

#[test]
fn too_many_fds_on_receive_are_a_sticky_frame_error() {
    let mut pair = Pair::new(
        ParentChannel::new(Limits::default()),
        WorkerChannel::new(limits(|l| l.max_fds_per_frame = 2), 1),
    );
    pair.parent.start(entry(), Vec::new()).unwrap();
    pair.parent.send_data(vec![1], 3).unwrap();
    let expected = Error::Remote(RemoteError::Frame(FrameError::TooManyFds {
        count: 3,
        max: 2,
    }));
    assert_eq!(pair.run(), Err((Side::Child, expected.clone())));
    assert_sticky(&mut pair.child, &expected);
}

// ---- max_frame_len ----

#[test]
fn a_message_over_max_frame_len_is_refused_locally() {
    let limits = small_limits();
    let expected = Error::Local(LocalError::MessageTooLong {
        len: 1025,
        max: 1024,
    });
    assert_eq!(
        expected.to_string(),
        "message of 1025 bytes exceeds max_frame_len (1024 bytes); split it or raise the limit"
    );
    let mut parent = ParentChannel::new(limits);
    parent.start(entry(), Vec::new()).unwrap();
    let queued = parent.queued_bytes();
    assert_eq!(parent.send_data(vec![0; 1025], 0), Err(expected.clone()));
    assert_eq!(parent.queued_bytes(), queued);
    parent.send_data(vec![0; 1024], 0).unwrap();
    // Encoded messages count their encoding: 2 bytes of call id and length.
    assert!(matches!(
        parent.call(vec![0; 1023]),
        Err(Error::Local(LocalError::MessageTooLong { .. }))
    ));
    assert_eq!(parent.calls_in_flight(), 0);

    let mut worker = WorkerChannel::new(limits, 1);
    assert_eq!(worker.send_data(vec![0; 1025], 0), Err(expected));
    assert!(matches!(
        worker.finish(Outcome::Ok(vec![0; 1024])),
        Err(Error::Local(LocalError::MessageTooLong { .. }))
    ));
    worker.finish(Outcome::Ok(vec![0; 1000])).unwrap();

    let mut client = ZygoteClient::new(limits);
    assert!(matches!(
        client.snapshot(entry(), vec![0; 1024], SpawnOptions::default()),
        Err(Error::Local(LocalError::MessageTooLong { .. }))
    ));
    assert_eq!(client.in_flight(), 0);
}

#[test]
fn a_frame_over_max_frame_len_on_receive_is_a_sticky_frame_error() {
    let mut pair = Pair::new(
        ParentChannel::new(Limits::default()),
        WorkerChannel::new(small_limits(), 1),
    );
    pair.parent.start(entry(), Vec::new()).unwrap();
    pair.parent.send_data(vec![0; 2000], 0).unwrap();
    let expected = Error::Remote(RemoteError::Frame(FrameError::TooLong {
        len: 2000,
        max: 1024,
    }));
    assert_eq!(pair.run(), Err((Side::Child, expected.clone())));
    assert_sticky(&mut pair.child, &expected);
}

// ---- max_buffered_bytes ----

#[test]
fn a_full_send_queue_refuses_until_poll_transmit_drains_it() {
    let mut parent = ParentChannel::new(limits(|l| l.max_buffered_bytes = 4096));
    parent.start(entry(), Vec::new()).unwrap();
    parent.send_data(vec![1; 3000], 0).unwrap();
    let queued = parent.queued_bytes();
    let error = parent.send_data(vec![2; 3000], 0).unwrap_err();
    assert_eq!(
        error,
        Error::Local(LocalError::SendQueueFull {
            queued,
            adding: 3008,
            max: 4096
        })
    );
    assert_eq!(
        error.to_string(),
        format!("send queue holds {queued} bytes; adding 3008 would exceed max_buffered_bytes (4096); drain poll_transmit first")
    );
    assert_eq!(parent.queued_bytes(), queued, "nothing was queued");
    let transmits = drain(&mut parent);
    assert_eq!(wire(&transmits).len(), queued);
    assert_eq!(parent.queued_bytes(), 0);
    parent.send_data(vec![2; 3000], 0).unwrap();
    assert_eq!(parent.queued_bytes(), 3008);
}

#[test]
fn a_full_send_queue_does_not_use_up_a_call_or_request_id() {
    let mut parent = ParentChannel::new(limits(|l| l.max_buffered_bytes = 40));
    parent.start(entry(), Vec::new()).unwrap();
    assert!(matches!(
        parent.call(Vec::new()),
        Err(Error::Local(LocalError::SendQueueFull { .. }))
    ));
    assert_eq!(parent.calls_in_flight(), 0);
    let _ = drain(&mut parent);
    assert_eq!(parent.call(Vec::new()), Ok(1));

    let mut client = ZygoteClient::new(limits(|l| l.max_buffered_bytes = 10));
    assert!(matches!(
        client.spawn(entry(), SpawnOptions::default(), 0),
        Err(Error::Local(LocalError::SendQueueFull { .. }))
    ));
    assert_eq!(client.in_flight(), 0);
    let _ = drain(&mut client);
    assert_eq!(client.spawn(entry(), SpawnOptions::default(), 0), Ok(1));
}

#[test]
fn a_message_larger_than_max_buffered_bytes_is_accepted_into_an_empty_queue() {
    // Otherwise a message within max_frame_len could never be sent at all.
    let mut parent = ParentChannel::new(limits(|l| l.max_buffered_bytes = 100));
    parent.start(entry(), Vec::new()).unwrap();
    let _ = drain(&mut parent);
    parent.send_data(vec![0; 1000], 0).unwrap();
    assert_eq!(parent.queued_bytes(), 1008);
    assert!(parent.send_data(vec![0; 1], 0).is_err());
}

#[test]
fn zygote_answers_refused_by_a_full_queue_can_be_retried_after_draining() {
    let mut client = ZygoteClient::new(Limits::default());
    client.spawn(entry(), SpawnOptions::default(), 0).unwrap();
    client.spawn(entry(), SpawnOptions::default(), 0).unwrap();
    // The server's hello (11 bytes) stays queued: no answer fits behind it.
    let mut server = ZygoteServer::new(limits(|l| l.max_buffered_bytes = 16), 77);
    let mut requests = Vec::new();
    feed(&mut server, &wire(&drain(&mut client)), &[], &mut requests).unwrap();
    assert_eq!(requests.len(), 2);

    let full = |error: Error| matches!(error, Error::Local(LocalError::SendQueueFull { .. }));
    assert!(full(server.spawned(1, 100).unwrap_err()));
    let failure = SpawnFailure {
        errno: None,
        message: "x".into(),
    };
    assert!(full(server.spawn_failed(2, failure.clone()).unwrap_err()));
    assert_eq!(server.live_pids().count(), 0, "nothing changed");

    let mut events = Vec::new();
    feed(&mut client, &wire(&drain(&mut server)), &[], &mut events).unwrap();
    assert_eq!(server.spawned(1, 100), Ok(1));
    assert!(full(server.spawn_failed(2, failure.clone()).unwrap_err(),));
    feed(&mut client, &wire(&drain(&mut server)), &[], &mut events).unwrap();
    server.spawn_failed(2, failure).unwrap();

    let status = ExitStatus::Exited(0);
    assert!(full(server.reaped(100, status).unwrap_err()));
    assert_eq!(server.live_pids().collect::<Vec<_>>(), [100], "still live");
    feed(&mut client, &wire(&drain(&mut server)), &[], &mut events).unwrap();
    assert_eq!(server.reaped(100, status), Ok(Some(1)));
    feed(&mut client, &wire(&drain(&mut server)), &[], &mut events).unwrap();

    assert_eq!(
        events,
        [
            ZygoteEvent::Ready { pid: 77 },
            ZygoteEvent::Spawned {
                request: 1,
                worker: 1,
                pid: 100
            },
            ZygoteEvent::SpawnFailed {
                request: 2,
                failure: SpawnFailure {
                    errno: None,
                    message: "x".into()
                }
            },
            ZygoteEvent::Exited { worker: 1, status },
        ]
    );
    assert_eq!(client.in_flight(), 0);
    assert_eq!(client.live_workers(), 0);
}
