//! Arbitrary kind and payload through `ToWorker::decode` and
//! `FromWorker::decode`: never a panic, and whatever decodes re-encodes to a
//! payload that decodes to the same message (and re-encodes identically).
#![no_main]

use libfuzzer_sys::fuzz_target;
use parallel_proto::channel::{FromWorker, ToWorker};

fn to_worker(kind: u8, payload: &[u8]) {
    if let Ok(message) = ToWorker::decode(kind, payload.to_vec()) {
        assert_eq!(message.kind(), kind);
        assert!(!message.name().is_empty());
        if let ToWorker::Data(bytes) = &message {
            assert_eq!(bytes, payload, "data is carried raw");
        }
        let encoded = message.clone().into_payload();
        let again = ToWorker::decode(kind, encoded.clone()).expect("a re-encoded message decodes");
        assert_eq!(again, message);
        assert_eq!(again.into_payload(), encoded);
    }
}

fn from_worker(kind: u8, payload: &[u8]) {
    if let Ok(message) = FromWorker::decode(kind, payload.to_vec()) {
        assert_eq!(message.kind(), kind);
        assert!(!message.name().is_empty());
        if let FromWorker::Data(bytes) = &message {
            assert_eq!(bytes, payload, "data is carried raw");
        }
        let encoded = message.clone().into_payload();
        let again =
            FromWorker::decode(kind, encoded.clone()).expect("a re-encoded message decodes");
        assert_eq!(again, message);
        assert_eq!(again.into_payload(), encoded);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    // The raw byte as the kind, and the byte folded onto each table (plus an
    // unknown kind or two next to it) so that most inputs reach a decoder.
    to_worker(selector, payload);
    from_worker(selector, payload);
    to_worker(0x11 + selector % 7, payload);
    from_worker(0x91 + selector % 8, payload);
});
