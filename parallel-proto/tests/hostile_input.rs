//! A peer can send anything. Each state machine's `handle_input` must answer
//! every byte sequence with events or an error, never a panic; its first
//! error must be sticky; and chunking must not change the outcome.
//!
//! The streams are mostly well-formed frames of plausible messages (small
//! ids, mostly the right version, a few fds) so that they get past the
//! framing and into the state machines' rules, with noise mixed in.

mod support;

use parallel_proto::channel::{FromWorker, ParentChannel, ToWorker, WorkerChannel};
use parallel_proto::zygote::{
    FromZygote, SnapshotRequest, SpawnOptions, SpawnRequest, ToZygote, ZygoteClient, ZygoteServer,
};
use parallel_proto::{Endpoint, EntryKey, Error, Limits};
use proptest::collection::vec;
use proptest::prelude::*;
use support::strategies::{
    bulk_bytes, chunk_sizes, exit_status, outcome, small_bytes, spawn_failure, spawn_options,
    wire_entry,
};
use support::{feed, raw_frame};

type Frame = (u8, u8, Vec<u8>);

fn version() -> impl Strategy<Value = u32> {
    prop_oneof![9 => Just(1u32), 1 => any::<u32>()]
}

fn id() -> impl Strategy<Value = u64> {
    0u64..5
}

fn fds() -> impl Strategy<Value = u8> {
    prop_oneof![6 => Just(0u8), 3 => Just(1u8), 1 => 2u8..5]
}

fn to_zygote() -> impl Strategy<Value = ToZygote> {
    prop_oneof![
        version().prop_map(|version| ToZygote::Hello { version }),
        (id(), wire_entry(), spawn_options()).prop_map(|(request, boot, options)| {
            ToZygote::Spawn(SpawnRequest {
                request,
                boot,
                options,
            })
        }),
        (id(), any::<i32>()).prop_map(|(worker, signal)| ToZygote::Kill { worker, signal }),
        (id(), wire_entry(), small_bytes()).prop_map(|(request, init, args)| {
            ToZygote::Snapshot(SnapshotRequest {
                request,
                init,
                args,
                options: SpawnOptions::default(),
            })
        }),
        Just(ToZygote::Shutdown),
    ]
}

fn from_zygote() -> impl Strategy<Value = FromZygote> {
    prop_oneof![
        (version(), any::<i32>()).prop_map(|(version, pid)| FromZygote::Hello { version, pid }),
        (id(), id(), any::<i32>()).prop_map(|(request, worker, pid)| FromZygote::Spawned {
            request,
            worker,
            pid
        }),
        (id(), id(), any::<i32>()).prop_map(|(request, worker, pid)| {
            FromZygote::SnapshotReady {
                request,
                worker,
                pid,
            }
        }),
        (id(), spawn_failure())
            .prop_map(|(request, failure)| FromZygote::SpawnFailed { request, failure }),
        (id(), exit_status()).prop_map(|(worker, status)| FromZygote::Exited { worker, status }),
    ]
}

fn to_worker() -> impl Strategy<Value = ToWorker> {
    prop_oneof![
        version().prop_map(|version| ToWorker::Hello { version }),
        (wire_entry(), small_bytes()).prop_map(|(task, args)| ToWorker::Start { task, args }),
        bulk_bytes(20_000).prop_map(ToWorker::Data),
        Just(ToWorker::End),
        (id(), small_bytes()).prop_map(|(call, args)| ToWorker::Call { call, args }),
    ]
}

fn from_worker() -> impl Strategy<Value = FromWorker> {
    prop_oneof![
        (version(), any::<i32>()).prop_map(|(version, pid)| FromWorker::Hello { version, pid }),
        bulk_bytes(20_000).prop_map(FromWorker::Data),
        Just(FromWorker::End),
        (id(), outcome()).prop_map(|(call, outcome)| FromWorker::Reply { call, outcome }),
        outcome().prop_map(FromWorker::Return),
    ]
}

/// Frames of `messages`, frames of random kinds, and raw noise, as bytes.
fn hostile_stream(messages: impl Strategy<Value = Frame> + 'static) -> BoxedStrategy<Vec<u8>> {
    let piece = prop_oneof![
        8 => messages.prop_map(|(kind, fds, payload)| raw_frame(kind, fds, &payload)),
        1 => (any::<u8>(), fds(), small_bytes())
            .prop_map(|(kind, fds, payload)| raw_frame(kind, fds, &payload)),
        1 => vec(any::<u8>(), 1..16),
    ];
    vec(piece, 0..12).prop_map(|pieces| pieces.concat()).boxed()
}

/// Feeds `bytes` as `sizes` chunks; returns the events (as debug strings) and
/// the first error, after checking that the error is sticky.
fn outcome_of<E: Endpoint>(
    mut machine: E,
    bytes: &[u8],
    sizes: &[usize],
) -> (Vec<E::Event>, Option<Error>)
where
    E::Event: PartialEq,
{
    let mut events = Vec::new();
    match feed(&mut machine, bytes, sizes, &mut events) {
        Ok(()) => (events, None),
        Err(error) => {
            support::assert_sticky(&mut machine, &error);
            (events, Some(error))
        }
    }
}

fn check<E: Endpoint>(new: impl Fn() -> E, prefix: &[u8], bytes: &[u8], sizes: &[usize])
where
    E::Event: PartialEq,
{
    let stream = [prefix, bytes].concat();
    let whole = outcome_of(new(), &stream, &[]);
    let chunked = outcome_of(new(), &stream, sizes);
    assert_eq!(whole, chunked);
}

fn entry() -> parallel_proto::WireEntry {
    EntryKey::from_bytes([1; 16]).seal(0, 0)
}

fn small_frame_limits() -> Limits {
    Limits::default()
        .with_max_frame_len(30_000)
        .and_then(|l| l.with_max_in_flight(3))
        .and_then(|l| l.with_max_fds_per_frame(3))
        .expect("valid limits")
}

proptest! {
    #![proptest_config(support::proptest_config(256))]

    #[test]
    fn zygote_server_survives_any_input(
        bytes in hostile_stream((to_zygote(), fds()).prop_map(|(m, fds)| (m.kind(), fds, m.encode_payload()))),
        sizes in chunk_sizes(),
        with_hello in any::<bool>(),
    ) {
        let prefix = if with_hello { raw_frame(0x01, 0, &[1]) } else { Vec::new() };
        check(|| ZygoteServer::new(small_frame_limits(), 1), &prefix, &bytes, &sizes);
    }

    #[test]
    fn zygote_client_survives_any_input(
        bytes in hostile_stream((from_zygote(), fds()).prop_map(|(m, fds)| (m.kind(), fds, m.encode_payload()))),
        sizes in chunk_sizes(),
        with_hello in any::<bool>(),
    ) {
        let prefix = if with_hello { raw_frame(0x81, 0, &[1, 2]) } else { Vec::new() };
        let new = || {
            let mut client = ZygoteClient::new(small_frame_limits());
            client.spawn(entry(), SpawnOptions::default(), 0).unwrap();
            client.snapshot(entry(), Vec::new(), SpawnOptions::default()).unwrap();
            client.spawn(entry(), SpawnOptions::default(), 1).unwrap();
            client
        };
        check(new, &prefix, &bytes, &sizes);
    }

    #[test]
    fn worker_channel_survives_any_input(
        bytes in hostile_stream((to_worker(), fds()).prop_map(|(m, fds)| (m.kind(), fds, m.into_payload()))),
        sizes in chunk_sizes(),
        with_start in any::<bool>(),
    ) {
        let prefix = if with_start {
            let mut parent = ParentChannel::new(Limits::default());
            parent.start(entry(), Vec::new()).unwrap();
            support::wire(&support::drain(&mut parent))
        } else {
            Vec::new()
        };
        check(|| WorkerChannel::new(small_frame_limits(), 7), &prefix, &bytes, &sizes);
    }

    #[test]
    fn parent_channel_survives_any_input(
        bytes in hostile_stream((from_worker(), fds()).prop_map(|(m, fds)| (m.kind(), fds, m.into_payload()))),
        sizes in chunk_sizes(),
        with_hello in any::<bool>(),
    ) {
        let prefix = if with_hello { raw_frame(0x91, 0, &[1, 2]) } else { Vec::new() };
        let new = || {
            let mut parent = ParentChannel::new(small_frame_limits());
            parent.start(entry(), Vec::new()).unwrap();
            parent.call(Vec::new()).unwrap();
            parent.call(Vec::new()).unwrap();
            parent
        };
        check(new, &prefix, &bytes, &sizes);
    }

    #[test]
    fn pure_noise_never_panics_any_state_machine(
        bytes in vec(any::<u8>(), 0..256),
        sizes in chunk_sizes(),
    ) {
        let limits = small_frame_limits();
        check(|| ZygoteServer::new(limits, 1), &[], &bytes, &sizes);
        check(|| ZygoteClient::new(limits), &[], &bytes, &sizes);
        check(|| WorkerChannel::new(limits, 1), &[], &bytes, &sizes);
        check(|| ParentChannel::new(limits), &[], &bytes, &sizes);
    }
}
