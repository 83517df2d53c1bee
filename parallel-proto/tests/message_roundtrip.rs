//! Every message of both protocols survives encode → decode unchanged, and
//! decoding refuses what is not exactly one message.

mod support;

use parallel_proto::channel::{FromWorker, ToWorker};
use parallel_proto::zygote::{FromZygote, ToZygote};
use parallel_proto::{FrameDecoder, Limits, RemoteError};
use proptest::prelude::*;
use support::strategies;

const ZYGOTE_TO_KINDS: [u8; 5] = [0x01, 0x02, 0x03, 0x04, 0x05];
const ZYGOTE_FROM_KINDS: [u8; 5] = [0x81, 0x82, 0x83, 0x84, 0x85];
const WORKER_TO_KINDS: [u8; 6] = [0x11, 0x12, 0x13, 0x14, 0x15, 0x16];
const WORKER_FROM_KINDS: [u8; 6] = [0x91, 0x93, 0x94, 0x95, 0x96, 0x97];

proptest! {
    #![proptest_config(support::proptest_config(256))]

    #[test]
    fn every_to_zygote_message_round_trips(message in strategies::to_zygote()) {
        let decoded = ToZygote::decode(message.kind(), &message.encode_payload());
        prop_assert_eq!(decoded, Ok(message));
    }

    #[test]
    fn every_from_zygote_message_round_trips(message in strategies::from_zygote()) {
        let decoded = FromZygote::decode(message.kind(), &message.encode_payload());
        prop_assert_eq!(decoded, Ok(message));
    }

    #[test]
    fn every_to_worker_message_round_trips(message in strategies::to_worker()) {
        let decoded = ToWorker::decode(message.kind(), message.clone().into_payload());
        prop_assert_eq!(decoded, Ok(message));
    }

    #[test]
    fn every_from_worker_message_round_trips(message in strategies::from_worker()) {
        let decoded = FromWorker::decode(message.kind(), message.clone().into_payload());
        prop_assert_eq!(decoded, Ok(message));
    }

    #[test]
    fn messages_round_trip_through_frames(
        to_zygote in strategies::to_zygote(),
        from_zygote in strategies::from_zygote(),
        to_worker in strategies::to_worker(),
        from_worker in strategies::from_worker(),
    ) {
        let limits = Limits::default();
        let mut stream = Vec::new();
        for (kind, payload) in [
            (to_zygote.kind(), to_zygote.encode_payload()),
            (from_zygote.kind(), from_zygote.encode_payload()),
            (to_worker.kind(), to_worker.clone().into_payload()),
            (from_worker.kind(), from_worker.clone().into_payload()),
        ] {
            parallel_proto::frame::encode_frame(kind, 0, &payload, &limits, &mut stream).unwrap();
        }
        let mut decoder = FrameDecoder::new(limits);
        let mut input = &stream[..];
        let mut next = || decoder.decode(&mut input).unwrap().expect("a whole frame");
        let frame = next();
        prop_assert_eq!(ToZygote::decode(frame.kind, &frame.payload), Ok(to_zygote));
        let frame = next();
        prop_assert_eq!(FromZygote::decode(frame.kind, &frame.payload), Ok(from_zygote));
        let frame = next();
        prop_assert_eq!(ToWorker::decode(frame.kind, frame.payload), Ok(to_worker));
        let frame = next();
        prop_assert_eq!(FromWorker::decode(frame.kind, frame.payload), Ok(from_worker));
        prop_assert!(input.is_empty());
    }

    #[test]
    fn a_trailing_byte_after_a_zygote_message_is_malformed(
        to in strategies::to_zygote(),
        from in strategies::from_zygote(),
        extra in any::<u8>(),
    ) {
        let mut payload = to.encode_payload();
        payload.push(extra);
        let is_malformed = matches!(
            ToZygote::decode(to.kind(), &payload),
            Err(RemoteError::Malformed { .. })
        );
        prop_assert!(is_malformed);
        let mut payload = from.encode_payload();
        payload.push(extra);
        let is_malformed = matches!(
            FromZygote::decode(from.kind(), &payload),
            Err(RemoteError::Malformed { .. })
        );
        prop_assert!(is_malformed);
    }

    #[test]
    fn a_trailing_byte_after_a_channel_message_is_malformed_except_in_data(
        to in strategies::to_worker(),
        from in strategies::from_worker(),
        extra in any::<u8>(),
    ) {
        let kind = to.kind();
        let mut payload = to.clone().into_payload();
        payload.push(extra);
        match (to, ToWorker::decode(kind, payload.clone())) {
            (ToWorker::Data(_), decoded) => prop_assert_eq!(decoded, Ok(ToWorker::Data(payload))),
            (_, decoded) => {
                let is_malformed = matches!(decoded, Err(RemoteError::Malformed { .. }));
                prop_assert!(is_malformed, "{:?}", decoded);
            }
        }
        let kind = from.kind();
        let mut payload = from.clone().into_payload();
        payload.push(extra);
        match (from, FromWorker::decode(kind, payload.clone())) {
            (FromWorker::Data(_), decoded) => {
                prop_assert_eq!(decoded, Ok(FromWorker::Data(payload)))
            }
            (_, decoded) => {
                let is_malformed = matches!(decoded, Err(RemoteError::Malformed { .. }));
                prop_assert!(is_malformed, "{:?}", decoded);
            }
        }
    }

    #[test]
    fn a_truncated_message_is_malformed_never_a_panic(
        message in strategies::from_zygote(),
        cut in any::<prop::sample::Index>(),
    ) {
        let payload = message.encode_payload();
        let cut = cut.index(payload.len());
        let is_malformed = matches!(
            FromZygote::decode(message.kind(), &payload[..cut]),
            Err(RemoteError::Malformed { .. })
        );
        prop_assert!(is_malformed);
    }
}

#[test]
fn kinds_outside_each_table_are_unknown() {
    for kind in 0..=u8::MAX {
        if !ZYGOTE_TO_KINDS.contains(&kind) {
            assert_eq!(
                ToZygote::decode(kind, &[]),
                Err(RemoteError::UnknownKind {
                    protocol: "zygote",
                    kind
                })
            );
        }
        if !ZYGOTE_FROM_KINDS.contains(&kind) {
            assert_eq!(
                FromZygote::decode(kind, &[]),
                Err(RemoteError::UnknownKind {
                    protocol: "zygote",
                    kind
                })
            );
        }
        if !WORKER_TO_KINDS.contains(&kind) {
            assert_eq!(
                ToWorker::decode(kind, Vec::new()),
                Err(RemoteError::UnknownKind {
                    protocol: "worker channel",
                    kind
                })
            );
        }
        if !WORKER_FROM_KINDS.contains(&kind) {
            assert_eq!(
                FromWorker::decode(kind, Vec::new()),
                Err(RemoteError::UnknownKind {
                    protocol: "worker channel",
                    kind
                })
            );
        }
    }
}

#[test]
fn unknown_kind_error_names_the_kind_and_protocol() {
    let error = ToWorker::decode(0x7f, Vec::new()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "peer sent a frame of unknown kind 0x7f for the worker channel protocol"
    );
}

#[test]
fn no_kind_tag_is_shared_between_directions_or_protocols() {
    let tables: [&[u8]; 4] = [
        &ZYGOTE_TO_KINDS,
        &ZYGOTE_FROM_KINDS,
        &WORKER_TO_KINDS,
        &WORKER_FROM_KINDS,
    ];
    let mut all: Vec<u8> = tables.concat();
    let count = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), count);
}

#[test]
fn malformed_error_names_the_message() {
    let error = ToZygote::decode(0x05, &[0]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "peer sent a malformed Shutdown message: 1 bytes where none belong"
    );
    let error = FromWorker::decode(0x95, vec![1]).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("peer sent a malformed Reply message: "),
        "{error}"
    );
}
