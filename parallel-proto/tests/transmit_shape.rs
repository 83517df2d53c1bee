//! How queued frames are cut into `Transmit`s: small control frames share one
//! write, descriptors start a write of their own, bulk data is moved, not copied.

mod support;

use parallel_proto::channel::{
    Outcome, ParentChannel, ToWorker, WorkerChannel, WorkerEvent, CHANNEL_PROTOCOL_VERSION,
};
use parallel_proto::frame::{FrameHeader, HEADER_LEN, MAGIC};
use parallel_proto::{EntryKey, Limits, Transmit, WireEntry};
use support::{drain, frame, wire};

const MOVE_THRESHOLD: usize = 16 * 1024;

fn entry() -> WireEntry {
    EntryKey::from_bytes([2; 16]).seal(0x10, 3)
}

fn started_parent() -> ParentChannel {
    let mut parent = ParentChannel::new(Limits::default());
    parent.start(entry(), Vec::new()).unwrap();
    let _ = drain(&mut parent);
    parent
}

#[test]
fn small_frames_without_fds_coalesce_into_one_transmit() {
    let mut parent = ParentChannel::new(Limits::default());
    parent.start(entry(), b"a".to_vec()).unwrap();
    parent.call(b"b".to_vec()).unwrap();
    parent.send_data(b"c".to_vec(), 0).unwrap();
    parent.end().unwrap();
    let transmits = drain(&mut parent);
    assert_eq!(transmits.len(), 1);
    let expected = [
        frame(
            0x11,
            0,
            &ToWorker::Hello {
                version: CHANNEL_PROTOCOL_VERSION,
            }
            .into_payload(),
        ),
        frame(
            0x12,
            0,
            &ToWorker::Start {
                task: entry(),
                args: b"a".to_vec(),
            }
            .into_payload(),
        ),
        frame(
            0x15,
            0,
            &ToWorker::Call {
                call: 1,
                args: b"b".to_vec(),
            }
            .into_payload(),
        ),
        frame(0x13, 0, b"c"),
        frame(0x14, 0, &[]),
    ]
    .concat();
    assert_eq!(
        transmits[0],
        Transmit {
            head: expected,
            body: Vec::new(),
            fds: 0,
            external: 0,
        }
    );
}

#[test]
fn a_frame_with_fds_starts_a_new_transmit() {
    let mut parent = started_parent();
    parent.send_data(b"plain".to_vec(), 0).unwrap();
    parent.send_data(b"with fds".to_vec(), 2).unwrap();
    parent.send_data(b"more fds".to_vec(), 1).unwrap();
    let transmits = drain(&mut parent);
    let fds: Vec<usize> = transmits.iter().map(|t| t.fds).collect();
    assert_eq!(fds, [0, 2, 1], "never merged into the previous transmit");
    assert_eq!(transmits[1].head, frame(0x13, 2, b"with fds"));
    for transmit in &transmits {
        assert_eq!(transmit.head[0], MAGIC, "each transmit starts a frame");
    }
}

#[test]
fn frames_after_an_fd_frame_may_follow_in_its_transmit() {
    // The descriptors ride with the transmit's first byte, which is still
    // the fd-carrying frame's header.
    let mut parent = started_parent();
    parent.send_data(b"fd".to_vec(), 1).unwrap();
    parent.send_data(b"after".to_vec(), 0).unwrap();
    let transmits = drain(&mut parent);
    assert_eq!(transmits.len(), 1);
    assert_eq!(transmits[0].fds, 1);
    assert_eq!(
        transmits[0].head,
        [frame(0x13, 1, b"fd"), frame(0x13, 0, b"after")].concat()
    );
}

#[test]
fn large_data_is_moved_into_body_without_a_copy() {
    let mut parent = started_parent();
    let payload = vec![7u8; MOVE_THRESHOLD];
    let address = payload.as_ptr();
    parent.send_data(payload, 0).unwrap();
    let transmits = drain(&mut parent);
    assert_eq!(transmits.len(), 1);
    let transmit = &transmits[0];
    let header = FrameHeader {
        kind: 0x13,
        fds: 0,
        len: MOVE_THRESHOLD as u32,
    };
    assert_eq!(transmit.head, header.to_bytes(), "the header alone");
    assert_eq!(transmit.body.len(), MOVE_THRESHOLD);
    assert_eq!(
        transmit.body.as_ptr(),
        address,
        "the caller's buffer, moved"
    );
    assert_eq!(transmit.len(), HEADER_LEN + MOVE_THRESHOLD);
}

#[test]
fn data_just_under_16_kib_is_copied_into_head() {
    let mut parent = started_parent();
    parent.send_data(vec![7u8; MOVE_THRESHOLD - 1], 0).unwrap();
    let transmits = drain(&mut parent);
    assert_eq!(transmits.len(), 1);
    assert_eq!(transmits[0].head.len(), HEADER_LEN + MOVE_THRESHOLD - 1);
    assert!(transmits[0].body.is_empty());
}

#[test]
fn large_data_gets_its_own_transmit_and_the_next_frame_a_new_one() {
    let mut parent = ParentChannel::new(Limits::default());
    parent.start(entry(), Vec::new()).unwrap();
    parent.send_data(vec![1; 20_000], 3).unwrap();
    parent.send_data(b"small".to_vec(), 0).unwrap();
    parent.send_data(vec![2; 20_000], 0).unwrap();
    let transmits = drain(&mut parent);
    let shape: Vec<(usize, usize, usize)> = transmits
        .iter()
        .map(|t| (t.head.len(), t.body.len(), t.fds))
        .collect();
    assert_eq!(
        shape,
        [
            (wire(&transmits[..1]).len(), 0, 0), // hello + start
            (HEADER_LEN, 20_000, 3),
            (HEADER_LEN + 5, 0, 0),
            (HEADER_LEN, 20_000, 0),
        ]
    );
}

#[test]
fn large_encoded_messages_also_go_into_body() {
    let mut worker = WorkerChannel::new(Limits::default(), 1);
    let result = vec![9; 20_000];
    let at = result.as_ptr();
    worker.finish(Outcome::Ok(result)).unwrap();
    let transmits = drain(&mut worker);
    assert_eq!(transmits.len(), 2, "hello, then the large Return");
    // The header, then the outcome's variant (0) and the bytes' length
    // (20 000 as a varint): the bytes themselves are the body, moved in.
    assert_eq!(transmits[1].head.len(), HEADER_LEN + 4);
    assert_eq!(transmits[1].head[1], 0x96);
    assert_eq!(transmits[1].head[HEADER_LEN..], [0, 0xa0, 0x9c, 0x01]);
    assert_eq!(transmits[1].body, vec![9; 20_000]);
    assert_eq!(transmits[1].body.as_ptr(), at, "not copied");
}

#[test]
fn a_large_calls_arguments_are_the_body_and_decode_on_the_other_side() {
    let mut parent = ParentChannel::new(Limits::default());
    parent.start(entry(), vec![0; 10]).unwrap();
    let args: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let sent = args.clone();
    let at = sent.as_ptr();
    let call = parent.call(sent).unwrap();
    let transmits = drain(&mut parent);
    let last = transmits.last().unwrap();
    assert_eq!(last.body.as_ptr(), at, "the arguments moved in, not copied");
    let mut worker = WorkerChannel::new(Limits::default(), 1);
    let mut input = &wire(&transmits)[..];
    let mut events = Vec::new();
    while let Some(event) = worker.handle_input(&mut input).unwrap() {
        events.push(event);
    }
    assert!(
        events.contains(&WorkerEvent::Call { call, args }),
        "{:?}",
        events
            .iter()
            .map(std::mem::discriminant)
            .collect::<Vec<_>>()
    );
}

/// Arguments of `head_len` then `tail_len` bytes sent both ways from
/// parents made by `parent`: whole by `whole`, in two parts by `split`
/// (which gets the same values: the two must agree). The frames must be
/// the same bytes, with the tail moved in exactly when the whole is large.
/// Returns the arguments, the frames' bytes and the split parent.
fn sent_both_ways<T: PartialEq + std::fmt::Debug>(
    (head_len, tail_len): (usize, usize),
    parent: impl Fn() -> ParentChannel,
    whole: impl FnOnce(&mut ParentChannel, Vec<u8>) -> T,
    split: impl FnOnce(&mut ParentChannel, &[u8], Vec<u8>) -> T,
) -> (Vec<u8>, Vec<u8>, ParentChannel) {
    let head: Vec<u8> = (0..head_len).map(|i| (i % 7) as u8).collect();
    let tail: Vec<u8> = (0..tail_len).map(|i| (i % 251) as u8).collect();
    let args = [&head[..], &tail[..]].concat();
    let mut by_whole = parent();
    let from_whole = whole(&mut by_whole, args.clone());
    let expected = wire(&drain(&mut by_whole));
    let mut by_split = parent();
    let at = tail.as_ptr();
    assert_eq!(split(&mut by_split, &head, tail), from_whole);
    let transmits = drain(&mut by_split);
    assert_eq!(wire(&transmits), expected, "{head_len} + {tail_len} B");
    let moved = transmits
        .iter()
        .any(|t| !t.body.is_empty() && t.body.as_ptr() == at);
    assert_eq!(
        moved,
        head_len + tail_len >= MOVE_THRESHOLD,
        "{head_len} + {tail_len} B: the tail moved in exactly when large"
    );
    (args, expected, by_split)
}

#[test]
fn start_with_a_tail_is_starts_frame_with_the_tail_moved_in() {
    for lens in [(0, 0), (9, 100), (9, 20_000), (0, 70_000), (300, 1 << 20)] {
        let (args, frames, mut split) = sent_both_ways(
            lens,
            || ParentChannel::new(Limits::default()),
            |parent, args| parent.start(entry(), args).unwrap(),
            |parent, head, tail| parent.start_with_tail(entry(), head, tail).unwrap(),
        );
        // Twice: refused, as `start` is.
        assert!(split.start_with_tail(entry(), &[1], Vec::new()).is_err());
        // And the worker reads those arguments, whole.
        let mut worker = WorkerChannel::new(Limits::default(), 1);
        let event = worker.handle_input(&mut &frames[..]).unwrap();
        assert_eq!(
            event,
            Some(WorkerEvent::Start {
                task: entry(),
                args
            })
        );
    }
    // Past the frame limit: refused, and nothing queued.
    let limits = Limits::default().with_max_frame_len(1000).unwrap();
    let mut parent = ParentChannel::new(limits);
    assert!(parent
        .start_with_tail(entry(), &[1; 10], vec![2; 1000])
        .is_err());
    assert!(parent
        .start_with_tail(entry(), &[1; 1], vec![2; 30_000])
        .is_err());
    assert_eq!(
        parent.queued_bytes(),
        drain(&mut parent).iter().map(Transmit::len).sum()
    );
    parent
        .start_with_tail(entry(), &[1; 10], vec![2; 100])
        .unwrap();
}

#[test]
fn a_call_with_a_tail_is_calls_frame_with_the_tail_moved_in() {
    let started = || {
        let mut parent = started_parent();
        let _ = drain(&mut parent);
        parent
    };
    for lens in [(0, 0), (3, 100), (3, 20_000), (0, 70_000), (5, 1 << 20)] {
        let (_, _, split) = sent_both_ways(
            lens,
            started,
            |parent, args| parent.call(args).unwrap(),
            |parent, head, tail| parent.call_with_tail(head, tail).unwrap(),
        );
        assert_eq!(split.calls_in_flight(), 1);
    }
    // Refused as `call` is: past the frame limit, or past max_in_flight,
    // with nothing queued and no id used.
    let limits = Limits::default()
        .with_max_frame_len(1000)
        .unwrap()
        .with_max_in_flight(1)
        .unwrap();
    let mut parent = ParentChannel::new(limits);
    parent.start(entry(), Vec::new()).unwrap();
    let queued = parent.queued_bytes();
    assert!(parent.call_with_tail(&[1; 1], vec![2; 30_000]).is_err());
    assert_eq!(parent.queued_bytes(), queued);
    assert_eq!(
        parent.call_with_tail(&[1; 3], vec![2; 10]).unwrap(),
        1,
        "the first id"
    );
    assert!(parent.call_with_tail(&[1; 3], vec![2; 10]).is_err());
}

#[test]
fn queued_bytes_counts_exactly_what_poll_transmit_hands_out() {
    let mut parent = ParentChannel::new(Limits::default());
    parent.start(entry(), vec![0; 100]).unwrap();
    parent.send_data(vec![1; 30_000], 2).unwrap();
    parent.call(vec![2; 10]).unwrap();
    let queued = parent.queued_bytes();
    let first = parent.poll_transmit().unwrap();
    assert_eq!(parent.queued_bytes(), queued - first.len());
    let rest = drain(&mut parent);
    assert_eq!(first.len() + wire(&rest).len(), queued);
    assert_eq!(parent.queued_bytes(), 0);
    assert_eq!(parent.poll_transmit(), None);
}

#[test]
fn an_empty_transmit_reports_empty() {
    let transmit = Transmit::default();
    assert!(transmit.is_empty());
    assert_eq!(transmit.len(), 0);
}

#[test]
fn external_data_is_a_header_the_transport_completes_into_the_same_frame() {
    let payload = vec![7u8; 20_000];
    let mut by_value = started_parent();
    by_value.send_data(payload.clone(), 1).unwrap();
    let expected = wire(&drain(&mut by_value));

    let mut external = started_parent();
    external.send_data_external(payload.len(), 1).unwrap();
    // A small frame after it must not join its head: the external bytes
    // are written between the two.
    external.send_data(b"after".to_vec(), 0).unwrap();
    let queued = external.queued_bytes();
    let transmits = drain(&mut external);
    let shape: Vec<(usize, usize, usize, usize)> = transmits
        .iter()
        .map(|t| (t.head.len(), t.body.len(), t.fds, t.external))
        .collect();
    assert_eq!(
        shape,
        [(HEADER_LEN, 0, 1, 20_000), (HEADER_LEN + 5, 0, 0, 0)]
    );
    assert_eq!(transmits[0].len(), HEADER_LEN + 20_000);
    assert_eq!(
        queued,
        transmits.iter().map(Transmit::len).sum::<usize>(),
        "the external bytes count against the send queue"
    );
    let written = [&transmits[0].head[..], &payload].concat();
    assert_eq!(written, expected, "the frame send_data makes of the bytes");
}

#[test]
fn external_data_keeps_the_frame_limits() {
    let limits = Limits::default();
    let mut parent = started_parent();
    let too_long = limits.max_frame_len() as usize + 1;
    assert!(parent.send_data_external(too_long, 0).is_err());
    let too_many_fds = limits.max_fds_per_frame() as usize + 1;
    assert!(parent.send_data_external(10, too_many_fds).is_err());
    assert_eq!(parent.queued_bytes(), 0, "nothing queued on a refusal");
    let mut worker = WorkerChannel::new(Limits::default(), 1);
    worker.end().unwrap();
    assert!(
        worker.send_data_external(10, 0).is_err(),
        "no data after end"
    );
}

#[test]
fn a_recycled_head_carries_the_next_frame_with_the_same_bytes() {
    let mut parent = started_parent();
    parent.call(b"call 1".to_vec()).unwrap();
    let first = parent.poll_transmit().unwrap();
    let mut expected = ParentChannel::new(Limits::default());
    expected.start(entry(), Vec::new()).unwrap();
    let _ = drain(&mut expected);
    expected.call(b"call 1".to_vec()).unwrap();
    expected.call(b"call 2".to_vec()).unwrap();
    let expected = wire(&drain(&mut expected));

    let reused = first.head.as_ptr();
    let mut written = first.head.clone();
    parent.recycle(first.head);
    parent.call(b"call 2".to_vec()).unwrap();
    let second = parent.poll_transmit().unwrap();
    assert_eq!(
        second.head.as_ptr(),
        reused,
        "the frame went into the given buffer"
    );
    written.extend_from_slice(&second.head);
    assert_eq!(written, expected, "recycling changes no byte on the wire");
}

#[test]
fn buffers_over_64_kib_are_not_kept_for_the_next_frame() {
    let mut worker = WorkerChannel::new(Limits::default(), 1);
    let _ = drain(&mut worker);
    let big = Vec::with_capacity(64 * 1024 + 1);
    let big_at = big.as_ptr();
    worker.recycle(big);
    worker.send_data(b"x".to_vec(), 0).unwrap();
    let transmit = worker.poll_transmit().unwrap();
    assert_ne!(transmit.head.as_ptr(), big_at);
    assert!(transmit.head.capacity() < 64 * 1024);
}
