//! Every bound in `Limits` is enforced on both sides: a local send past it is
//! a `LocalError` with nothing queued, a peer past it is a `RemoteError`.
//! And `Limits` itself holds only values its docs allow: a setter refuses
//! anything else with an error naming the field and the bound.

mod support;

use parallel_proto::channel::{Outcome, ParentChannel, ParentEvent, WorkerChannel, WorkerEvent};
use parallel_proto::zygote::{
    ExitStatus, ServerEvent, SpawnFailure, SpawnOptions, ZygoteClient, ZygoteEvent, ZygoteServer,
};
use parallel_proto::{
    EntryKey, Error, FrameError, Limits, LimitsError, LocalError, RemoteError, WireEntry,
};
use proptest::prelude::*;
use support::strategies::chunk_sizes;
use support::{
    assert_sticky, drain, feed, small_limits, wire, ChannelPair, Chunking, Pair, Side, ZygotePair,
};

fn entry() -> WireEntry {
    EntryKey::from_bytes([4; 16]).seal(0, 0)
}

#[test]
fn default_limits_are_the_documented_ones() {
    let limits = Limits::default();
    assert_eq!(limits, Limits::DEFAULT);
    assert_eq!(limits.max_frame_len(), 128 * 1024 * 1024);
    assert_eq!(limits.max_buffered_bytes(), 256 * 1024 * 1024);
    assert_eq!(limits.max_in_flight(), 1024);
    assert_eq!(limits.max_fds_per_frame(), 16);
}

// ---- construction ----

fn below(field: &'static str, value: u64, min: u64) -> LimitsError {
    LimitsError::BelowMinimum { field, value, min }
}

#[test]
fn the_defaults_are_valid() {
    // Set through the checked setters, the defaults come back unchanged.
    let d = Limits::DEFAULT;
    let rebuilt = Limits::default()
        .with_max_frame_len(d.max_frame_len())
        .and_then(|l| l.with_max_buffered_bytes(d.max_buffered_bytes()))
        .and_then(|l| l.with_max_in_flight(d.max_in_flight()))
        .and_then(|l| l.with_max_fds_per_frame(d.max_fds_per_frame()));
    assert_eq!(rebuilt, Ok(Limits::DEFAULT));
}

#[test]
fn max_frame_len_below_64_is_refused() {
    let error = Limits::default().with_max_frame_len(8).unwrap_err();
    assert_eq!(error, below("max_frame_len", 8, 64));
    assert_eq!(error.field(), "max_frame_len");
    assert_eq!(
        error.to_string(),
        "max_frame_len = 8 is below its minimum of 64"
    );
    assert_eq!(
        Limits::default().with_max_frame_len(63),
        Err(below("max_frame_len", 63, 64))
    );
    assert_eq!(
        Limits::default().with_max_frame_len(0),
        Err(below("max_frame_len", 0, 64))
    );
    for ok in [Limits::MIN_FRAME_LEN, 65, u32::MAX] {
        let limits = Limits::default().with_max_frame_len(ok).unwrap();
        assert_eq!(limits.max_frame_len(), ok);
    }
}

#[test]
fn max_in_flight_of_zero_is_refused() {
    let error = Limits::default().with_max_in_flight(0).unwrap_err();
    assert_eq!(error, below("max_in_flight", 0, 1));
    assert_eq!(error.field(), "max_in_flight");
    assert_eq!(
        error.to_string(),
        "max_in_flight = 0 is below its minimum of 1"
    );
    for ok in [Limits::MIN_IN_FLIGHT, 2, usize::MAX] {
        let limits = Limits::default().with_max_in_flight(ok).unwrap();
        assert_eq!(limits.max_in_flight(), ok);
    }
}

#[test]
fn max_fds_per_frame_of_zero_is_refused() {
    let error = Limits::default().with_max_fds_per_frame(0).unwrap_err();
    assert_eq!(error, below("max_fds_per_frame", 0, 1));
    assert_eq!(error.field(), "max_fds_per_frame");
    assert_eq!(
        error.to_string(),
        "max_fds_per_frame = 0 is below its minimum of 1"
    );
    let limits = Limits::default()
        .with_max_fds_per_frame(Limits::MIN_FDS_PER_FRAME)
        .unwrap();
    assert_eq!(limits.max_fds_per_frame(), 1);
}

#[test]
fn max_fds_per_frame_above_253_is_refused() {
    let error = Limits::default().with_max_fds_per_frame(254).unwrap_err();
    assert_eq!(
        error,
        LimitsError::AboveMaximum {
            field: "max_fds_per_frame",
            value: 254,
            max: 253
        }
    );
    assert_eq!(error.field(), "max_fds_per_frame");
    assert_eq!(
        error.to_string(),
        "max_fds_per_frame = 254 is above its maximum of 253"
    );
    assert!(Limits::default().with_max_fds_per_frame(255).is_err());
    let limits = Limits::default()
        .with_max_fds_per_frame(Limits::MAX_FDS_PER_FRAME)
        .unwrap();
    assert_eq!(limits.max_fds_per_frame(), 253);
}

#[test]
fn max_buffered_bytes_has_no_bound() {
    for ok in [0, 1, usize::MAX] {
        let limits = Limits::default().with_max_buffered_bytes(ok).unwrap();
        assert_eq!(limits.max_buffered_bytes(), ok);
    }
}

#[test]
fn a_setter_changes_its_field_only() {
    let base = small_limits();
    let changed = base.with_max_in_flight(9).unwrap();
    assert_eq!(changed.max_in_flight(), 9);
    assert_eq!(changed.max_frame_len(), base.max_frame_len());
    assert_eq!(changed.max_buffered_bytes(), base.max_buffered_bytes());
    assert_eq!(changed.max_fds_per_frame(), base.max_fds_per_frame());
    assert_eq!(changed.with_max_in_flight(4), Ok(base));
}

/// Any `Limits` the setters accept.
fn valid_limits() -> impl Strategy<Value = Limits> {
    (
        Limits::MIN_FRAME_LEN..4096,
        prop_oneof![0usize..256, 0usize..1 << 16],
        Limits::MIN_IN_FLIGHT..6,
        Limits::MIN_FDS_PER_FRAME..=Limits::MAX_FDS_PER_FRAME,
    )
        .prop_map(|(frame, buffered, in_flight, fds)| {
            let limits = Limits::default()
                .with_max_frame_len(frame)
                .and_then(|l| l.with_max_buffered_bytes(buffered))
                .and_then(|l| l.with_max_in_flight(in_flight))
                .and_then(|l| l.with_max_fds_per_frame(fds))
                .expect("in range");
            assert_eq!(
                (
                    limits.max_frame_len(),
                    limits.max_buffered_bytes(),
                    limits.max_in_flight(),
                    limits.max_fds_per_frame()
                ),
                (frame, buffered, in_flight, fds)
            );
            limits
        })
}

proptest! {
    #![proptest_config(support::proptest_config(64))]

    #[test]
    fn the_setters_accept_exactly_the_documented_ranges(
        frame in any::<u32>(),
        in_flight in prop_oneof![0usize..4, any::<usize>()],
        fds in any::<u8>(),
        buffered in any::<usize>(),
    ) {
        let base = Limits::default();
        let checked = base.with_max_frame_len(frame);
        prop_assert_eq!(checked.is_ok(), frame >= 64);
        if let Err(error) = checked {
            prop_assert_eq!(error.field(), "max_frame_len");
        }
        let checked = base.with_max_in_flight(in_flight);
        prop_assert_eq!(checked.is_ok(), in_flight >= 1);
        if let Err(error) = checked {
            prop_assert_eq!(error.field(), "max_in_flight");
        }
        let checked = base.with_max_fds_per_frame(fds);
        prop_assert_eq!(checked.is_ok(), (1..=253).contains(&fds));
        if let Err(error) = checked {
            prop_assert_eq!(error.field(), "max_fds_per_frame");
        }
        prop_assert!(base.with_max_buffered_bytes(buffered).is_ok());
    }

    /// Any valid limits carry a whole conversation of each protocol, with
    /// messages as large, descriptors as many and requests as numerous as
    /// they allow, however the bytes are cut; one past each is refused.
    #[test]
    fn any_valid_limits_carry_a_conversation_up_to_each_bound(
        limits in valid_limits(),
        chunks in chunk_sizes(),
        fill in any::<u8>(),
    ) {
        let frame = limits.max_frame_len() as usize;
        let fds = usize::from(limits.max_fds_per_frame());
        let in_flight = limits.max_in_flight();

        // The zygote protocol: as many spawns as may be in flight, each
        // with as many descriptors as a frame may carry.
        let chunking = Chunking::Sizes(chunks);
        let mut pair = ZygotePair::zygote(limits).with_chunking(chunking.clone());
        pair.settle();
        for request in 1..=in_flight as u64 {
            let spawned = pair.parent.spawn(entry(), SpawnOptions::default(), fds - 1);
            prop_assert_eq!(spawned, Ok(request));
            pair.settle();
        }
        prop_assert_eq!(
            pair.parent.spawn(entry(), SpawnOptions::default(), 0),
            Err(Error::Local(LocalError::TooManyInFlight { max: in_flight }))
        );
        prop_assert!(matches!(
            pair.parent.spawn(entry(), SpawnOptions::default(), fds),
            Err(Error::Local(_))
        ));
        for request in 1..=in_flight as u64 {
            let pid = 1000 + request as i32;
            prop_assert_eq!(pair.child.spawned(request, pid), Ok(request));
            pair.settle();
            let reaped = pair.child.reaped(pid, ExitStatus::Exited(0));
            prop_assert_eq!(reaped, Ok(Some(request)));
            pair.settle();
        }
        pair.parent.shutdown().unwrap();
        pair.settle();
        prop_assert_eq!(pair.child_events.len(), in_flight + 1);
        for event in &pair.child_events[..in_flight] {
            let spawn_fds = match event {
                ServerEvent::Spawn { fds, .. } => usize::from(*fds),
                other => panic!("not a spawn: {other:?}"),
            };
            prop_assert_eq!(spawn_fds, fds);
        }
        prop_assert_eq!(pair.child_events.last(), Some(&ServerEvent::Shutdown));
        prop_assert_eq!(pair.parent_events.len(), 1 + 2 * in_flight);
        prop_assert_eq!(pair.parent.in_flight(), 0);
        prop_assert_eq!(pair.parent.live_workers(), 0);

        // The channel protocol: frames of exactly max_frame_len both ways,
        // as many calls as may be in flight.
        let mut pair = ChannelPair::channel(limits).with_chunking(chunking);
        pair.settle();
        pair.parent.start(entry(), Vec::new()).unwrap();
        pair.settle();
        pair.parent.send_data(vec![fill; frame], fds).unwrap();
        prop_assert_eq!(
            pair.parent.send_data(vec![fill; frame + 1], 0),
            Err(Error::Local(LocalError::MessageTooLong {
                len: frame + 1,
                max: frame as u32,
            }))
        );
        pair.settle();
        for call in 1..=in_flight as u64 {
            prop_assert_eq!(pair.parent.call(vec![fill; frame / 2]), Ok(call));
            pair.settle();
        }
        prop_assert!(pair.parent.call(Vec::new()).is_err());
        for call in 1..=in_flight as u64 {
            pair.child.reply(call, Outcome::Ok(vec![fill; frame / 2])).unwrap();
            pair.settle();
        }
        pair.child.send_data(vec![fill; frame], fds).unwrap();
        pair.settle();
        pair.child.finish(Outcome::Ok(Vec::new())).unwrap();
        pair.settle();

        prop_assert_eq!(pair.child_events.len(), 2 + in_flight);
        let started = matches!(pair.child_events[0], WorkerEvent::Start { .. });
        prop_assert!(started);
        prop_assert_eq!(
            &pair.child_events[1],
            &WorkerEvent::Data { payload: vec![fill; frame], fds: fds as u8 }
        );
        prop_assert_eq!(pair.parent_events.len(), 3 + in_flight);
        let ready = matches!(pair.parent_events[0], ParentEvent::Ready { .. });
        prop_assert!(ready);
        prop_assert_eq!(
            &pair.parent_events[1 + in_flight],
            &ParentEvent::Data { payload: vec![fill; frame], fds: fds as u8 }
        );
        prop_assert_eq!(
            pair.parent_events.last(),
            Some(&ParentEvent::Returned(Outcome::Ok(Vec::new())))
        );
    }
}

// ---- max_in_flight ----

#[test]
fn spawns_past_max_in_flight_are_refused_locally_until_a_reply_frees_a_slot() {
    let mut pair = ZygotePair::zygote(Limits::default().with_max_in_flight(2).unwrap());
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
    let mut pair = ChannelPair::channel(Limits::default().with_max_in_flight(2).unwrap());
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
        ZygoteClient::new(Limits::default().with_max_in_flight(10).unwrap()),
        ZygoteServer::new(Limits::default().with_max_in_flight(2).unwrap(), 1),
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
        ParentChannel::new(Limits::default().with_max_in_flight(10).unwrap()),
        WorkerChannel::new(Limits::default().with_max_in_flight(2).unwrap(), 1),
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
    let mut pair = ChannelPair::channel(Limits::default().with_max_in_flight(1).unwrap());
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
        WorkerChannel::new(Limits::default().with_max_fds_per_frame(2).unwrap(), 1),
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
    let mut parent = ParentChannel::new(Limits::default().with_max_buffered_bytes(4096).unwrap());
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
    let mut parent = ParentChannel::new(Limits::default().with_max_buffered_bytes(40).unwrap());
    parent.start(entry(), Vec::new()).unwrap();
    assert!(matches!(
        parent.call(Vec::new()),
        Err(Error::Local(LocalError::SendQueueFull { .. }))
    ));
    assert_eq!(parent.calls_in_flight(), 0);
    let _ = drain(&mut parent);
    assert_eq!(parent.call(Vec::new()), Ok(1));

    let mut client = ZygoteClient::new(Limits::default().with_max_buffered_bytes(10).unwrap());
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
    let mut parent = ParentChannel::new(Limits::default().with_max_buffered_bytes(100).unwrap());
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
    let mut server = ZygoteServer::new(Limits::default().with_max_buffered_bytes(16).unwrap(), 77);
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
