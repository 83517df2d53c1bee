//! Misusing the zygote API is a `LocalError`: refused with a message that
//! says why, nothing queued, the state machine still usable.

mod support;

use parallel_proto::zygote::{
    ExitStatus, ServerEvent, SpawnFailure, SpawnOptions, ZygoteClient, ZygoteEvent, ZygoteServer,
};
use parallel_proto::{EntryKey, Error, Limits, LocalError, WireEntry};
use support::ZygotePair;

fn entry() -> WireEntry {
    EntryKey::from_bytes([8; 16]).seal(0x80, 2)
}

fn invalid(operation: &'static str, reason: &'static str) -> Error {
    Error::Local(LocalError::InvalidState { operation, reason })
}

#[test]
fn everything_after_shutdown_is_invalid_state() {
    let mut client = ZygoteClient::new(Limits::default());
    client.shutdown().unwrap();
    let queued = client.queued_bytes();
    let reason = "shutdown was already requested";
    assert_eq!(
        client
            .spawn(entry(), SpawnOptions::default(), 0)
            .unwrap_err(),
        invalid("spawn a worker", reason)
    );
    assert_eq!(
        client
            .snapshot(entry(), Vec::new(), SpawnOptions::default())
            .unwrap_err(),
        invalid("create a snapshot", reason)
    );
    assert_eq!(
        client.kill(1, 9).unwrap_err(),
        invalid("kill a worker", reason)
    );
    let error = client.shutdown().unwrap_err();
    assert_eq!(
        error.to_string(),
        "cannot shut down: shutdown was already requested"
    );
    assert_eq!(client.queued_bytes(), queued, "nothing was queued");
    assert_eq!(client.in_flight(), 0);
}

#[test]
fn killing_a_worker_that_never_existed_is_refused() {
    let mut client = ZygoteClient::new(Limits::default());
    let error = client.kill(3, 9).unwrap_err();
    assert_eq!(error, Error::Local(LocalError::UnknownWorker(3)));
    assert_eq!(
        error.to_string(),
        "worker 3 is not running (it exited, or never existed)"
    );
}

#[test]
fn killing_a_worker_after_its_exit_arrived_is_refused() {
    let mut pair = ZygotePair::zygote(Limits::default());
    pair.parent
        .spawn(entry(), SpawnOptions::default(), 0)
        .unwrap();
    pair.settle();
    pair.child.spawned(1, 500).unwrap();
    pair.settle();
    assert!(pair.parent.is_live(1));
    pair.parent.kill(1, 15).unwrap();
    pair.child.reaped(500, ExitStatus::Exited(0)).unwrap();
    pair.settle();
    assert!(!pair.parent.is_live(1));
    assert_eq!(
        pair.parent.kill(1, 9).unwrap_err(),
        Error::Local(LocalError::UnknownWorker(1))
    );
}

#[test]
fn a_refused_spawn_does_not_use_up_a_request_id() {
    let limits = Limits::default().with_max_fds_per_frame(2).unwrap();
    let mut client = ZygoteClient::new(limits);
    assert!(client.spawn(entry(), SpawnOptions::default(), 2).is_err());
    assert_eq!(client.spawn(entry(), SpawnOptions::default(), 1), Ok(1));
    assert_eq!(client.in_flight(), 1);
}

#[test]
fn spawn_with_absurdly_many_user_fds_is_refused_not_a_panic() {
    let mut client = ZygoteClient::new(Limits::default());
    let queued = client.queued_bytes();
    assert_eq!(
        client
            .spawn(entry(), SpawnOptions::default(), usize::MAX)
            .unwrap_err(),
        Error::Local(LocalError::TooManyFds {
            count: usize::MAX,
            max: 16
        })
    );
    assert_eq!(client.queued_bytes(), queued);
    assert_eq!(client.in_flight(), 0);
}

#[test]
fn spawn_sends_the_channel_fd_plus_the_user_fds() {
    let mut pair = ZygotePair::zygote(Limits::default());
    pair.parent
        .spawn(entry(), SpawnOptions::default(), 0)
        .unwrap();
    pair.parent
        .spawn(entry(), SpawnOptions::default(), 3)
        .unwrap();
    pair.parent
        .snapshot(entry(), b"x".to_vec(), SpawnOptions::default())
        .unwrap();
    pair.settle();
    let fds: Vec<usize> = pair.to_child.iter().map(|t| t.fds).collect();
    assert_eq!(fds, [0, 1, 4, 1], "hello, spawn, spawn, snapshot");
    let event_fds: Vec<Option<u8>> = pair
        .child_events
        .iter()
        .map(|event| match event {
            ServerEvent::Spawn { fds, .. } => Some(*fds),
            _ => None,
        })
        .collect();
    assert_eq!(event_fds, [Some(1), Some(4), None]);
}

#[test]
fn server_answers_to_unknown_requests_are_invalid_state() {
    let mut server = ZygoteServer::new(Limits::default(), 1);
    let reason = "no such request awaits a reply";
    let error = server.spawned(5, 100).unwrap_err();
    assert_eq!(error, invalid("report a started child", reason));
    assert_eq!(
        error.to_string(),
        "cannot report a started child: no such request awaits a reply"
    );
    assert_eq!(
        server.snapshot_ready(5, 100).unwrap_err(),
        invalid("report a started child", reason)
    );
    let failure = SpawnFailure {
        errno: None,
        message: "x".into(),
    };
    assert_eq!(
        server.spawn_failed(5, failure).unwrap_err(),
        invalid("report a failed spawn", reason)
    );
    assert_eq!(server.live_pids().count(), 0);
}

#[test]
fn server_answers_each_request_once() {
    let mut pair = ZygotePair::zygote(Limits::default());
    let request = pair
        .parent
        .spawn(entry(), SpawnOptions::default(), 0)
        .unwrap();
    pair.settle();
    pair.child.spawned(request, 100).unwrap();
    assert!(pair.child.spawned(request, 101).is_err());
    let failure = SpawnFailure {
        errno: Some(1),
        message: "late".into(),
    };
    assert!(pair.child.spawn_failed(request, failure).is_err());
    pair.settle();
    assert_eq!(
        pair.parent_events,
        [
            ZygoteEvent::Ready {
                pid: support::ZYGOTE_PID
            },
            ZygoteEvent::Spawned {
                request,
                worker: 1,
                pid: 100
            }
        ]
    );
}

#[test]
fn a_failed_spawn_leaves_nothing_live() {
    let mut pair = ZygotePair::zygote(Limits::default());
    let request = pair
        .parent
        .snapshot(entry(), Vec::new(), SpawnOptions::default())
        .unwrap();
    pair.settle();
    let failure = SpawnFailure {
        errno: Some(12),
        message: "fork: out of memory".into(),
    };
    assert_eq!(failure.to_string(), "fork: out of memory (errno 12)");
    pair.child.spawn_failed(request, failure.clone()).unwrap();
    pair.settle();
    assert_eq!(
        pair.parent_events.last(),
        Some(&ZygoteEvent::SpawnFailed { request, failure })
    );
    assert_eq!(pair.parent.in_flight(), 0);
    assert_eq!(pair.parent.live_workers(), 0);
    assert_eq!(pair.child.live_pids().count(), 0);
}
