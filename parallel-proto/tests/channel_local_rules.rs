//! Misusing the worker-channel API is a `LocalError`: the call is refused with
//! a message that says why, nothing is queued, and the channel stays usable.

mod support;

use parallel_proto::channel::{Outcome, ParentChannel, ParentEvent, WorkerChannel, WorkerEvent};
use parallel_proto::{EntryKey, Error, Limits, LocalError, WireEntry};
use support::ChannelPair;

fn entry() -> WireEntry {
    EntryKey::from_bytes([5; 16]).seal(0x20, 1)
}

fn invalid(operation: &'static str, reason: &'static str) -> Error {
    Error::Local(LocalError::InvalidState { operation, reason })
}

/// A pair past the handshake: started, hello exchanged, nothing pending.
fn started_pair() -> ChannelPair {
    let mut pair = ChannelPair::channel(Limits::default());
    pair.parent.start(entry(), Vec::new()).unwrap();
    pair.settle();
    pair.take_child_events();
    pair.take_parent_events();
    pair
}

#[test]
fn parent_data_before_start_is_invalid_state_and_the_channel_stays_usable() {
    let mut parent = ParentChannel::new(Limits::default());
    let queued = parent.queued_bytes();
    let error = parent.send_data(b"early".to_vec(), 0).unwrap_err();
    assert_eq!(
        error,
        invalid(
            "send data",
            "the task has not been started; call start first"
        )
    );
    assert_eq!(
        error.to_string(),
        "cannot send data: the task has not been started; call start first"
    );
    assert_eq!(parent.queued_bytes(), queued, "nothing was queued");
    parent.start(entry(), Vec::new()).unwrap();
    parent.send_data(b"now".to_vec(), 0).unwrap();
}

#[test]
fn parent_call_and_end_before_start_are_invalid_state() {
    let mut parent = ParentChannel::new(Limits::default());
    assert_eq!(
        parent.call(Vec::new()).unwrap_err(),
        invalid(
            "start a call",
            "the task has not been started; call start first"
        )
    );
    assert_eq!(
        parent.end().unwrap_err(),
        invalid(
            "end the stream",
            "the task has not been started; call start first"
        )
    );
    assert_eq!(parent.calls_in_flight(), 0);
}

#[test]
fn parent_second_start_is_invalid_state() {
    let mut pair = started_pair();
    let queued = pair.parent.queued_bytes();
    let error = pair.parent.start(entry(), Vec::new()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "cannot start the task: it was already started"
    );
    assert_eq!(pair.parent.queued_bytes(), queued);
    pair.parent.send_data(b"still usable".to_vec(), 0).unwrap();
    pair.settle();
    assert_eq!(
        pair.child_events,
        [WorkerEvent::Data {
            payload: b"still usable".to_vec(),
            fds: 0
        }]
    );
}

#[test]
fn parent_data_after_end_is_invalid_state() {
    let mut pair = started_pair();
    pair.parent.end().unwrap();
    let queued = pair.parent.queued_bytes();
    assert_eq!(
        pair.parent.send_data(b"late".to_vec(), 0).unwrap_err(),
        invalid("send data", "this side already sent end-of-stream")
    );
    assert_eq!(pair.parent.queued_bytes(), queued);
    pair.settle();
    assert_eq!(pair.child_events, [WorkerEvent::End]);
}

#[test]
fn parent_call_after_end_is_invalid_state() {
    let mut pair = started_pair();
    pair.parent.end().unwrap();
    let error = pair.parent.call(b"late".to_vec()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "cannot start a call: this side already sent end-of-stream"
    );
    assert_eq!(pair.parent.calls_in_flight(), 0);
}

#[test]
fn parent_end_twice_is_invalid_state() {
    let mut parent = ParentChannel::new(Limits::default());
    parent.start(entry(), Vec::new()).unwrap();
    parent.end().unwrap();
    assert_eq!(
        parent.end().unwrap_err(),
        invalid("end the stream", "this side already sent end-of-stream")
    );
}

#[test]
fn parent_call_ids_are_not_consumed_by_refused_calls() {
    let limits = Limits::default().with_max_in_flight(1).unwrap();
    let mut parent = ParentChannel::new(limits);
    parent.start(entry(), Vec::new()).unwrap();
    assert_eq!(parent.call(Vec::new()), Ok(1));
    assert!(parent.call(Vec::new()).is_err());
    assert_eq!(parent.pending_calls().collect::<Vec<_>>(), [1]);
}

#[test]
fn worker_data_after_end_is_invalid_state_and_replies_may_still_follow() {
    let mut pair = started_pair();
    let call = pair.parent.call(b"q".to_vec()).unwrap();
    pair.settle();
    pair.child.end().unwrap();
    let queued = pair.child.queued_bytes();
    assert_eq!(
        pair.child.send_data(b"late".to_vec(), 0).unwrap_err(),
        invalid("send data", "this side already sent end-of-stream")
    );
    assert_eq!(
        pair.child.end().unwrap_err(),
        invalid("end the stream", "this side already sent end-of-stream")
    );
    assert_eq!(pair.child.queued_bytes(), queued);
    pair.child.reply(call, Outcome::Ok(b"a".to_vec())).unwrap();
    pair.settle();
    assert_eq!(
        pair.parent_events,
        [
            ParentEvent::End,
            ParentEvent::Reply {
                call,
                outcome: Outcome::Ok(b"a".to_vec())
            }
        ]
    );
}

#[test]
fn worker_reply_to_an_unknown_call_is_refused() {
    let mut worker = WorkerChannel::new(Limits::default(), 1);
    let error = worker.reply(9, Outcome::Ok(Vec::new())).unwrap_err();
    assert_eq!(error, Error::Local(LocalError::UnknownCall(9)));
    assert_eq!(error.to_string(), "call 9 is not awaiting a reply");
}

#[test]
fn worker_second_reply_to_one_call_is_refused() {
    let mut pair = started_pair();
    let call = pair.parent.call(Vec::new()).unwrap();
    pair.settle();
    pair.child.reply(call, Outcome::Ok(Vec::new())).unwrap();
    assert_eq!(pair.child.calls_in_flight(), 0);
    assert_eq!(
        pair.child.reply(call, Outcome::Ok(Vec::new())).unwrap_err(),
        Error::Local(LocalError::UnknownCall(call))
    );
}

#[test]
fn worker_anything_after_finish_is_invalid_state() {
    let mut worker = WorkerChannel::new(Limits::default(), 1);
    worker.finish(Outcome::Ok(Vec::new())).unwrap();
    let queued = worker.queued_bytes();
    let reason = "the task already returned its outcome";
    assert_eq!(
        worker.send_data(Vec::new(), 0).unwrap_err(),
        invalid("send data", reason)
    );
    assert_eq!(worker.end().unwrap_err(), invalid("end the stream", reason));
    assert_eq!(
        worker.finish(Outcome::Ok(Vec::new())).unwrap_err(),
        invalid("return the task's outcome", reason)
    );
    assert_eq!(
        worker.reply(1, Outcome::Ok(Vec::new())).unwrap_err(),
        invalid("reply to a call", reason)
    );
    assert_eq!(worker.queued_bytes(), queued);
}

#[test]
fn a_full_conversation_ends_with_returned_and_no_pending_calls() {
    let mut pair = started_pair();
    let first = pair.parent.call(b"1".to_vec()).unwrap();
    let second = pair.parent.call(b"2".to_vec()).unwrap();
    pair.parent.send_data(b"in".to_vec(), 0).unwrap();
    pair.parent.end().unwrap();
    pair.settle();
    assert!(pair.child.is_end_received());
    assert_eq!(pair.child.calls_in_flight(), 2);
    // Replies may come in any order.
    pair.child
        .reply(second, Outcome::Err(b"e".to_vec()))
        .unwrap();
    pair.child.reply(first, Outcome::Ok(b"o".to_vec())).unwrap();
    pair.child.finish(Outcome::Ok(b"r".to_vec())).unwrap();
    pair.settle();
    assert_eq!(
        pair.parent_events,
        [
            ParentEvent::Reply {
                call: second,
                outcome: Outcome::Err(b"e".to_vec())
            },
            ParentEvent::Reply {
                call: first,
                outcome: Outcome::Ok(b"o".to_vec())
            },
            ParentEvent::Returned(Outcome::Ok(b"r".to_vec())),
        ]
    );
    assert!(pair.parent.is_returned());
    assert!(pair.parent.is_end_received(), "Return implies end of data");
    assert_eq!(pair.parent.calls_in_flight(), 0);
    assert_eq!(pair.parent.worker_pid(), Some(support::WORKER_PID));
}

#[test]
fn shared_data_goes_both_ways_as_its_length_and_fds() {
    let mut pair = started_pair();
    pair.parent.send_shared_data(3 << 20, 1).unwrap();
    pair.child.send_shared_data(7, 2).unwrap();
    pair.settle();
    assert_eq!(
        pair.child_events,
        [WorkerEvent::SharedData {
            len: 3 << 20,
            fds: 1
        }]
    );
    assert!(pair
        .parent_events
        .contains(&ParentEvent::SharedData { len: 7, fds: 2 }));
}

#[test]
fn shared_data_without_fds_or_too_long_is_refused_with_nothing_queued() {
    let mut pair = started_pair();
    let queued = pair.parent.queued_bytes();
    assert_eq!(
        pair.parent.send_shared_data(8, 0).unwrap_err(),
        invalid(
            "send shared data",
            "no descriptors: the memfd must come along (fds >= 1)"
        )
    );
    let max = Limits::default().max_frame_len();
    assert_eq!(
        pair.child
            .send_shared_data(u64::from(max) + 1, 1)
            .unwrap_err()
            .to_string(),
        format!(
            "message of {} bytes exceeds max_frame_len ({max} bytes); split it or raise the limit",
            u64::from(max) + 1
        )
    );
    assert_eq!(pair.parent.queued_bytes(), queued);
}
