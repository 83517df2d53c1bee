//! Golden byte fixtures: the exact wire bytes of every message kind.
//!
//! postcard is not self-describing, so a reordered field or enum variant
//! would silently change the wire format. These literals pin it: if one of
//! these tests fails, the wire format changed, and
//! `ZYGOTE_PROTOCOL_VERSION` / `CHANNEL_PROTOCOL_VERSION` must be bumped.
//!
//! Each fixture is one whole frame: `B7 kind fds 00 len(u32 LE)` then the body.

mod support;

use parallel_proto::channel::{
    FromWorker, Outcome, PanicLocation, PanicReport, ParentChannel, ToWorker, WorkerChannel,
    CHANNEL_PROTOCOL_VERSION,
};
use parallel_proto::frame::{encode_frame, FrameHeader};
use parallel_proto::zygote::{
    ExitStatus, FromZygote, Resource, SnapshotRequest, SpawnFailure, SpawnOptions, SpawnRequest,
    ToZygote, ZygoteClient, ZygoteServer, ZYGOTE_PROTOCOL_VERSION,
};
use parallel_proto::{Frame, FrameDecoder, Limits, WireEntry};

/// Encodes the frame, compares it with `golden`, then decodes `golden` back
/// and returns the frame for the caller to decode into a message.
fn check_frame(kind: u8, fds: usize, payload: &[u8], golden: &[u8]) -> Frame {
    let mut encoded = Vec::new();
    encode_frame(kind, fds, payload, &Limits::default(), &mut encoded).unwrap();
    assert_eq!(encoded, golden, "the encoding changed: {encoded:02x?}");
    let mut decoder = FrameDecoder::new(Limits::default());
    let mut input = golden;
    let frame = decoder
        .decode(&mut input)
        .unwrap()
        .expect("one whole frame");
    assert!(input.is_empty());
    assert_eq!((frame.kind, frame.fds as usize), (kind, fds));
    frame
}

fn to_zygote(message: ToZygote, fds: usize, golden: &[u8]) {
    let frame = check_frame(message.kind(), fds, &message.encode_payload(), golden);
    assert_eq!(ToZygote::decode(frame.kind, &frame.payload), Ok(message));
}

fn from_zygote(message: FromZygote, golden: &[u8]) {
    let frame = check_frame(message.kind(), 0, &message.encode_payload(), golden);
    assert_eq!(FromZygote::decode(frame.kind, &frame.payload), Ok(message));
}

fn to_worker(message: ToWorker, fds: usize, golden: &[u8]) {
    let frame = check_frame(message.kind(), fds, &message.clone().into_payload(), golden);
    assert_eq!(ToWorker::decode(frame.kind, frame.payload), Ok(message));
}

fn from_worker(message: FromWorker, golden: &[u8]) {
    let frame = check_frame(message.kind(), 0, &message.clone().into_payload(), golden);
    assert_eq!(FromWorker::decode(frame.kind, frame.payload), Ok(message));
}

/// A tag of 16 consecutive byte values from `start`.
fn tag(start: u8) -> [u8; 16] {
    std::array::from_fn(|i| start + i as u8)
}

#[test]
fn frame_header_golden() {
    let header = FrameHeader {
        kind: 0x42,
        fds: 3,
        len: 0x0102_0304,
    };
    assert_eq!(
        header.to_bytes(),
        [0xb7, 0x42, 0x03, 0x00, 0x04, 0x03, 0x02, 0x01]
    );
}

#[test]
fn protocol_versions_are_pinned() {
    assert_eq!(ZYGOTE_PROTOCOL_VERSION, 2);
    assert_eq!(CHANNEL_PROTOCOL_VERSION, 3);
}

// ---- zygote protocol, parent → zygote ----

#[test]
fn zygote_hello_golden() {
    to_zygote(
        ToZygote::Hello { version: 1 },
        0,
        &[0xb7, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01],
    );
}

#[test]
fn zygote_spawn_golden() {
    let message = ToZygote::Spawn(SpawnRequest {
        request: 300,
        boot: WireEntry {
            offset: -2,
            tag: tag(0),
        },
        options: SpawnOptions::default()
            .name("w1")
            .limit(Resource::OpenFiles, 1024, u64::MAX),
    });
    #[rustfmt::skip]
    let golden = [
        0xb7, 0x02, 0x02, 0x00, 0x2c, 0x00, 0x00, 0x00,
        0xac, 0x02, // request 300 (varint)
        0x03, // offset -2 (zigzag varint)
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07,
        0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, // tag, 16 raw bytes
        0x01, 0x02, 0x77, 0x31, // name Some("w1")
        0x01, // one rlimit
        0x03, // OpenFiles
        0x80, 0x08, // soft 1024
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, // hard u64::MAX
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // version 2's fields, all default
    ];
    to_zygote(message, 2, &golden);
}

#[test]
fn zygote_spawn_every_resource_golden() {
    let resources = [
        Resource::AddressSpace,
        Resource::CpuTime,
        Resource::FileSize,
        Resource::OpenFiles,
        Resource::CoreSize,
        Resource::Data,
        Resource::Stack,
        Resource::LockedMemory,
    ];
    let message = ToZygote::Spawn(SpawnRequest {
        request: 1,
        boot: WireEntry {
            offset: 0,
            tag: [0; 16],
        },
        options: resources
            .iter()
            .fold(SpawnOptions::default(), |options, &resource| {
                options.limit(resource, 0, 1)
            }),
    });
    #[rustfmt::skip]
    let golden = [
        0xb7, 0x02, 0x01, 0x00, 0x33, 0x00, 0x00, 0x00,
        0x01, // request
        0x00, // offset
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // tag
        0x00, // name None
        0x08, // eight rlimits: resource tag, soft, hard
        0x00, 0x00, 0x01, // AddressSpace
        0x01, 0x00, 0x01, // CpuTime
        0x02, 0x00, 0x01, // FileSize
        0x03, 0x00, 0x01, // OpenFiles
        0x04, 0x00, 0x01, // CoreSize
        0x05, 0x00, 0x01, // Data
        0x06, 0x00, 0x01, // Stack
        0x07, 0x00, 0x01, // LockedMemory
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // version 2's fields, all default
    ];
    to_zygote(message, 1, &golden);
}

/// Protocol version 2's fields, each set, in their wire order.
#[test]
fn zygote_spawn_environment_identity_placement_golden() {
    let message = ToZygote::Spawn(SpawnRequest {
        request: 7,
        boot: WireEntry {
            offset: 1,
            tag: [0; 16],
        },
        options: SpawnOptions::default()
            .env("GONE", "x")
            .env_clear()
            .env("A", "b")
            .env_remove("C")
            .current_dir("/t")
            .uid(65534)
            .gid(100)
            .cpu_affinity([3, 1])
            .nice(-2),
    });
    #[rustfmt::skip]
    let golden = [
        0xb7, 0x02, 0x01, 0x00, 0x2e, 0x00, 0x00, 0x00,
        0x07, // request
        0x02, // offset 1 (zigzag)
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // tag
        0x00, // name None
        0x00, // no rlimits
        0x01, // env_clear
        0x02, // two environment changes (GONE was dropped by env_clear)
        0x01, 0x41, 0x01, 0x01, 0x62, // A = Some("b")
        0x01, 0x43, 0x00, // C removed (None)
        0x01, 0x02, 0x2f, 0x74, // current_dir Some("/t")
        0x01, 0xfe, 0xff, 0x03, // uid Some(65534)
        0x01, 0x64, // gid Some(100)
        0x01, 0x02, 0x01, 0x03, // cpu_affinity Some([1, 3]) (sorted)
        0x01, 0x03, // nice Some(-2) (zigzag)
    ];
    to_zygote(message, 1, &golden);
}

#[test]
fn zygote_kill_golden() {
    to_zygote(
        ToZygote::Kill {
            worker: 7,
            signal: 15,
        },
        0,
        &[0xb7, 0x03, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x07, 0x1e],
    );
    to_zygote(
        ToZygote::Kill {
            worker: 128,
            signal: -1,
        },
        0,
        &[
            0xb7, 0x03, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x80, 0x01, 0x01,
        ],
    );
}

#[test]
fn zygote_snapshot_golden() {
    let message = ToZygote::Snapshot(SnapshotRequest {
        request: 2,
        init: WireEntry {
            offset: 0x1000,
            tag: [0xaa; 16],
        },
        args: b"ab".to_vec(),
        options: SpawnOptions::default(),
    });
    #[rustfmt::skip]
    let golden = [
        0xb7, 0x04, 0x01, 0x00, 0x1f, 0x00, 0x00, 0x00,
        0x02, // request
        0x80, 0x40, // offset 0x1000
        0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa,
        0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, // tag
        0x02, 0x61, 0x62, // args "ab"
        0x00, 0x00, // options: no name, no rlimits
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // and none of version 2's fields
    ];
    to_zygote(message, 1, &golden);
}

#[test]
fn zygote_shutdown_golden() {
    to_zygote(
        ToZygote::Shutdown,
        0,
        &[0xb7, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
    );
}

// ---- zygote protocol, zygote → parent ----

#[test]
fn zygote_server_hello_golden() {
    from_zygote(
        FromZygote::Hello {
            version: 1,
            pid: 77,
        },
        &[
            0xb7, 0x81, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x01, 0x9a, 0x01,
        ],
    );
}

#[test]
fn zygote_spawned_golden() {
    from_zygote(
        FromZygote::Spawned {
            request: 1,
            worker: 2,
            pid: 4242,
        },
        &[
            0xb7, 0x82, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01, 0x02, 0xa4, 0x42,
        ],
    );
}

#[test]
fn zygote_snapshot_ready_golden() {
    from_zygote(
        FromZygote::SnapshotReady {
            request: 3,
            worker: 4,
            pid: 5000,
        },
        &[
            0xb7, 0x83, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x03, 0x04, 0x90, 0x4e,
        ],
    );
}

#[test]
fn zygote_spawn_failed_golden() {
    #[rustfmt::skip]
    let golden = [
        0xb7, 0x84, 0x00, 0x00, 0x0f, 0x00, 0x00, 0x00,
        0x01, // request
        0x01, 0x16, // errno Some(11)
        0x0b, 0x66, 0x6f, 0x72, 0x6b, 0x20, 0x66, 0x61, 0x69, 0x6c, 0x65, 0x64, // "fork failed"
    ];
    from_zygote(
        FromZygote::SpawnFailed {
            request: 1,
            failure: SpawnFailure {
                errno: Some(11),
                message: "fork failed".into(),
            },
        },
        &golden,
    );
    from_zygote(
        FromZygote::SpawnFailed {
            request: 5,
            failure: SpawnFailure {
                errno: None,
                message: String::new(),
            },
        },
        &[
            0xb7, 0x84, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00,
        ],
    );
}

#[test]
fn zygote_exited_golden() {
    from_zygote(
        FromZygote::Exited {
            worker: 2,
            status: ExitStatus::Exited(3),
        },
        &[
            0xb7, 0x85, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x02, 0x00, 0x06,
        ],
    );
    from_zygote(
        FromZygote::Exited {
            worker: 2,
            status: ExitStatus::Signaled {
                signal: 9,
                core_dumped: true,
            },
        },
        &[
            0xb7, 0x85, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x02, 0x01, 0x12, 0x01,
        ],
    );
}

// ---- worker channel, parent → worker ----

#[test]
fn channel_hello_golden() {
    to_worker(
        ToWorker::Hello { version: 2 },
        0,
        &[0xb7, 0x11, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02],
    );
}

#[test]
fn channel_start_golden() {
    #[rustfmt::skip]
    let golden = [
        0xb7, 0x12, 0x00, 0x00, 0x17, 0x00, 0x00, 0x00,
        0x80, 0x01, // offset 64
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
        0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, // tag
        0x04, 0x61, 0x72, 0x67, 0x73, // args "args"
    ];
    to_worker(
        ToWorker::Start {
            task: WireEntry {
                offset: 64,
                tag: tag(1),
            },
            args: b"args".to_vec(),
        },
        0,
        &golden,
    );
}

#[test]
fn channel_data_to_worker_golden_is_raw_bytes() {
    to_worker(
        ToWorker::Data(b"xyz".to_vec()),
        1,
        &[
            0xb7, 0x13, 0x01, 0x00, 0x03, 0x00, 0x00, 0x00, 0x78, 0x79, 0x7a,
        ],
    );
}

#[test]
fn channel_shared_data_to_worker_golden_is_its_length() {
    // 1 MiB as a varint; the memfd and one descriptor of the message's own
    // ride along.
    to_worker(
        ToWorker::SharedData { len: 1 << 20 },
        2,
        &[
            0xb7, 0x16, 0x02, 0x00, 0x03, 0x00, 0x00, 0x00, 0x80, 0x80, 0x40,
        ],
    );
}

#[test]
fn channel_end_to_worker_golden() {
    to_worker(
        ToWorker::End,
        0,
        &[0xb7, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
    );
}

#[test]
fn channel_call_golden() {
    to_worker(
        ToWorker::Call {
            call: 1,
            args: b"2+2".to_vec(),
        },
        0,
        &[
            0xb7, 0x15, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x01, 0x03, 0x32, 0x2b, 0x32,
        ],
    );
}

// ---- worker channel, worker → parent ----

#[test]
fn channel_worker_hello_golden() {
    from_worker(
        FromWorker::Hello {
            version: 2,
            pid: 4242,
        },
        &[
            0xb7, 0x91, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x02, 0xa4, 0x42,
        ],
    );
}

#[test]
fn channel_data_from_worker_golden_is_raw_bytes() {
    from_worker(
        FromWorker::Data(b"out".to_vec()),
        &[
            0xb7, 0x93, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x6f, 0x75, 0x74,
        ],
    );
}

#[test]
fn channel_shared_data_from_worker_golden_is_its_length() {
    from_worker(
        FromWorker::SharedData { len: 300 },
        &[0xb7, 0x97, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0xac, 0x02],
    );
}

#[test]
fn channel_end_from_worker_golden() {
    from_worker(
        FromWorker::End,
        &[0xb7, 0x94, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
    );
}

#[test]
fn channel_reply_golden() {
    from_worker(
        FromWorker::Reply {
            call: 1,
            outcome: Outcome::Ok(b"4".to_vec()),
        },
        &[
            0xb7, 0x95, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x34,
        ],
    );
    from_worker(
        FromWorker::Reply {
            call: 2,
            outcome: Outcome::Err(b"e".to_vec()),
        },
        &[
            0xb7, 0x95, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x02, 0x01, 0x01, 0x65,
        ],
    );
}

#[test]
fn channel_return_golden() {
    #[rustfmt::skip]
    let golden = [
        0xb7, 0x96, 0x00, 0x00, 0x13, 0x00, 0x00, 0x00,
        0x02, // Outcome::Panic
        0x04, 0x62, 0x6f, 0x6f, 0x6d, // message "boom"
        0x01, // location Some
        0x04, 0x61, 0x2e, 0x72, 0x73, // file "a.rs"
        0x01, // line 1
        0xac, 0x02, // column 300 (varint)
        0x01, 0x02, 0x62, 0x74, // backtrace Some("bt")
    ];
    from_worker(
        FromWorker::Return(Outcome::Panic(PanicReport {
            message: "boom".into(),
            location: Some(PanicLocation {
                file: "a.rs".into(),
                line: 1,
                column: 300,
            }),
            backtrace: Some("bt".into()),
        })),
        &golden,
    );
    from_worker(
        FromWorker::Return(Outcome::Ok(Vec::new())),
        &[0xb7, 0x96, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00],
    );
}

// ---- what the state machines put on the wire ----

#[test]
fn new_state_machines_queue_exactly_their_hello() {
    let limits = Limits::default();
    let hellos: [(Vec<u8>, &[u8]); 4] = [
        (
            support::wire(&support::drain(&mut ZygoteClient::new(limits))),
            &[0xb7, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02],
        ),
        (
            support::wire(&support::drain(&mut ZygoteServer::new(limits, 77))),
            &[
                0xb7, 0x81, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x02, 0x9a, 0x01,
            ],
        ),
        (
            support::wire(&support::drain(&mut ParentChannel::new(limits))),
            &[0xb7, 0x11, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x03],
        ),
        (
            support::wire(&support::drain(&mut WorkerChannel::new(limits, 4242))),
            &[
                0xb7, 0x91, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x03, 0xa4, 0x42,
            ],
        ),
    ];
    for (bytes, golden) in hellos {
        assert_eq!(bytes, golden);
    }
}
