//! The zygote server's table of live children: ids for pids, `Exited` on
//! reaping, and no signal ever aimed at a pid it already reaped.

mod support;

use parallel_proto::zygote::{ExitStatus, ServerEvent, SpawnOptions, ZygoteEvent};
use parallel_proto::{EntryKey, Limits, WireEntry};
use support::ZygotePair;

fn entry() -> WireEntry {
    EntryKey::from_bytes([6; 16]).seal(0x30, 4)
}

/// A pair with one spawned worker (id 1, pid 500), all events taken.
fn one_worker() -> ZygotePair {
    let mut pair = ZygotePair::zygote(Limits::default());
    pair.parent
        .spawn(entry(), SpawnOptions::default(), 0)
        .unwrap();
    pair.settle();
    assert_eq!(pair.child.spawned(1, 500), Ok(1));
    pair.settle();
    pair.take_child_events();
    pair.take_parent_events();
    pair
}

#[test]
fn a_spawned_worker_is_reported_exited_when_reaped() {
    let mut pair = one_worker();
    assert_eq!(pair.child.live_pids().collect::<Vec<_>>(), [500]);
    assert!(pair.parent.is_live(1));
    let status = ExitStatus::Exited(3);
    assert_eq!(pair.child.reaped(500, status), Ok(Some(1)));
    assert_eq!(pair.child.live_pids().count(), 0);
    pair.settle();
    assert_eq!(
        pair.parent_events,
        [ZygoteEvent::Exited { worker: 1, status }]
    );
    assert!(!pair.parent.is_live(1));
    assert_eq!(status.to_string(), "exited with code 3");
    assert!(!status.success());
}

#[test]
fn a_kill_for_a_live_worker_names_its_pid() {
    let mut pair = one_worker();
    pair.parent.kill(1, 15).unwrap();
    pair.settle();
    assert_eq!(
        pair.child_events,
        [ServerEvent::Kill {
            worker: 1,
            pid: 500,
            signal: 15
        }]
    );
}

#[test]
fn a_kill_for_an_already_reaped_worker_produces_no_event() {
    let mut pair = one_worker();
    // The race: the zygote reaps the worker while the parent, which has not
    // yet seen `Exited`, asks to kill it.
    let status = ExitStatus::Signaled {
        signal: 11,
        core_dumped: true,
    };
    pair.child.reaped(500, status).unwrap();
    pair.parent.kill(1, 9).unwrap();
    pair.parent.kill(1, 9).unwrap();
    pair.settle();
    assert_eq!(pair.child_events, [], "no signal for a reaped pid");
    assert_eq!(
        pair.parent_events,
        [ZygoteEvent::Exited { worker: 1, status }]
    );
    assert_eq!(
        status.to_string(),
        "killed by signal 11 (SIGSEGV, core dumped)"
    );
    // The server still serves requests afterwards.
    pair.parent
        .spawn(entry(), SpawnOptions::default(), 0)
        .unwrap();
    pair.settle();
    assert!(matches!(
        pair.child_events[..],
        [ServerEvent::Spawn { request: 2, .. }]
    ));
}

#[test]
fn a_kill_for_a_worker_id_never_issued_produces_no_event() {
    let mut pair = one_worker();
    let kill = parallel_proto::zygote::ToZygote::Kill {
        worker: 99,
        signal: 9,
    };
    let bytes = support::frame(kill.kind(), 0, &kill.encode_payload());
    let mut events = Vec::new();
    support::feed(&mut pair.child, &bytes, &[], &mut events).unwrap();
    assert_eq!(events, []);
}

#[test]
fn reaping_an_unknown_pid_returns_none_and_sends_nothing() {
    let mut pair = one_worker();
    assert_eq!(pair.child.reaped(12345, ExitStatus::Exited(0)), Ok(None));
    assert_eq!(pair.child.poll_transmit(), None);
    assert_eq!(pair.child.live_pids().collect::<Vec<_>>(), [500]);
}

#[test]
fn reaping_the_same_pid_twice_reports_it_once() {
    let mut pair = one_worker();
    assert_eq!(pair.child.reaped(500, ExitStatus::Exited(0)), Ok(Some(1)));
    assert_eq!(pair.child.reaped(500, ExitStatus::Exited(0)), Ok(None));
    pair.settle();
    assert_eq!(pair.parent_events.len(), 1);
}

#[test]
fn snapshots_are_tracked_and_reaped_like_workers() {
    let mut pair = one_worker();
    let request = pair
        .parent
        .snapshot(entry(), b"init".to_vec(), SpawnOptions::default())
        .unwrap();
    pair.settle();
    assert_eq!(
        pair.take_child_events(),
        [ServerEvent::Snapshot {
            request,
            init: entry(),
            args: b"init".to_vec(),
            options: SpawnOptions::default()
        }]
    );
    assert_eq!(pair.child.snapshot_ready(request, 600), Ok(2));
    let mut pids: Vec<i32> = pair.child.live_pids().collect();
    pids.sort_unstable();
    assert_eq!(pids, [500, 600]);
    pair.settle();
    assert!(pair.parent.is_live(2));
    assert_eq!(pair.parent.live_workers(), 2);
    pair.child.reaped(600, ExitStatus::Exited(0)).unwrap();
    pair.settle();
    assert!(!pair.parent.is_live(2));
    assert!(pair.parent.is_live(1));
}

#[test]
fn worker_ids_are_never_reused() {
    let mut pair = ZygotePair::zygote(Limits::default());
    let mut ids = Vec::new();
    for pid in 100..105 {
        let request = pair
            .parent
            .spawn(entry(), SpawnOptions::default(), 0)
            .unwrap();
        pair.settle();
        // The same pid may come back after reaping; the id must not.
        let worker = pair.child.spawned(request, pid % 2).unwrap();
        pair.child.reaped(pid % 2, ExitStatus::Exited(0)).unwrap();
        pair.settle();
        ids.push(worker);
    }
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    assert_eq!(pair.parent.live_workers(), 0);
}

#[test]
fn shutdown_reaches_the_server_as_an_event() {
    let mut pair = one_worker();
    pair.parent.shutdown().unwrap();
    pair.settle();
    assert_eq!(pair.child_events, [ServerEvent::Shutdown]);
    assert_eq!(
        pair.child.live_pids().collect::<Vec<_>>(),
        [500],
        "the OS layer terminates the live children"
    );
}

#[test]
fn exit_statuses_read_as_words_naming_the_signal() {
    let signaled = |signal| ExitStatus::Signaled {
        signal,
        core_dumped: false,
    };
    assert_eq!(signaled(9).to_string(), "killed by signal 9 (SIGKILL)");
    assert_eq!(signaled(24).to_string(), "killed by signal 24 (SIGXCPU)");
    assert_eq!(signaled(31).to_string(), "killed by signal 31 (SIGSYS)");
    // Real-time and unknown signals: the number alone.
    assert_eq!(signaled(40).to_string(), "killed by signal 40");
    assert_eq!(signaled(0).to_string(), "killed by signal 0");
    assert_eq!(signaled(-3).to_string(), "killed by signal -3");
    assert_eq!(ExitStatus::Exited(3).to_string(), "exited with code 3");
}
