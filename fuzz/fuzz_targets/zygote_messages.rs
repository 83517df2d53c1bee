//! Arbitrary kind and payload through `ToZygote::decode` and
//! `FromZygote::decode`: never a panic, and whatever decodes re-encodes to a
//! payload that decodes to the same message (and re-encodes identically).
#![no_main]

use libfuzzer_sys::fuzz_target;
use parallel_proto::zygote::{FromZygote, ToZygote};

fn to_zygote(kind: u8, payload: &[u8]) {
    if let Ok(message) = ToZygote::decode(kind, payload) {
        assert_eq!(message.kind(), kind);
        assert!(!message.name().is_empty());
        let encoded = message.encode_payload();
        let again = ToZygote::decode(kind, &encoded).expect("a re-encoded message decodes");
        assert_eq!(again, message);
        assert_eq!(again.encode_payload(), encoded);
    }
}

fn from_zygote(kind: u8, payload: &[u8]) {
    if let Ok(message) = FromZygote::decode(kind, payload) {
        assert_eq!(message.kind(), kind);
        assert!(!message.name().is_empty());
        let encoded = message.encode_payload();
        let again = FromZygote::decode(kind, &encoded).expect("a re-encoded message decodes");
        assert_eq!(again, message);
        assert_eq!(again.encode_payload(), encoded);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    // The raw byte as the kind, and the byte folded onto each table (plus a
    // few unknown kinds next to it) so that most inputs reach a decoder.
    to_zygote(selector, payload);
    from_zygote(selector, payload);
    to_zygote(0x01 + selector % 6, payload);
    from_zygote(0x81 + selector % 6, payload);
});
