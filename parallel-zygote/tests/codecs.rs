//! The ready-made codecs (`src/async_core/codecs.rs`): every codec
//! round-trips nested structs, enums and vectors, and keeps the message of a
//! custom `Deserialize` error.
//!
//! Each codec is behind its cargo feature; `parallel-zygote`'s
//! dev-dependency on itself turns them all on for its tests, so plain
//! `cargo test` (CI's `cargo test --workspace`) runs every case here. The
//! `cfg`s only keep the file compiling if that line is ever removed.

use std::collections::BTreeMap;

use parallel_zygote::async_core::{Bytes, Codec, CodecError, Postcard};
use serde::de::{Deserialize, Deserializer};
use serde::{Deserialize as DeriveDeserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, DeriveDeserialize)]
enum Shape {
    Empty,
    Circle(f64),
    Rect { width: u32, height: u32 },
    Polygon(Vec<(i64, i64)>),
}

#[derive(Debug, Clone, PartialEq, Serialize, DeriveDeserialize)]
struct Inner {
    name: String,
    tags: Vec<String>,
    weight: Option<f32>,
    bytes: Vec<u8>,
    /// Bulk bytes: a block in the binary codecs, numbers in JSON.
    block: Bytes,
}

#[derive(Debug, Clone, PartialEq, Serialize, DeriveDeserialize)]
struct Outer {
    id: u64,
    negative: i128,
    inner: Inner,
    children: Vec<Inner>,
    shapes: Vec<Shape>,
    by_name: BTreeMap<String, Shape>,
    unit: (),
    flag: bool,
    letter: char,
}

fn sample() -> Outer {
    let inner = |name: &str| Inner {
        name: name.to_owned(),
        tags: vec!["a".into(), "βγ".into(), String::new()],
        weight: Some(1.5),
        bytes: vec![0, 1, 255],
        block: Bytes::from(vec![0, 1, 255, 128]),
    };
    Outer {
        id: u64::MAX,
        negative: -(1 << 100),
        inner: inner("root"),
        children: vec![
            inner("one"),
            Inner {
                weight: None,
                bytes: Vec::new(),
                block: Bytes::new(),
                ..inner("two")
            },
            // Longer than any codec's scratch buffer.
            inner(&"x".repeat(20_000)),
        ],
        shapes: vec![
            Shape::Empty,
            Shape::Circle(-0.25),
            Shape::Rect {
                width: 3,
                height: 4,
            },
            Shape::Polygon(vec![(0, 0), (i64::MIN, i64::MAX)]),
        ],
        by_name: [
            ("circle".to_owned(), Shape::Circle(2.0)),
            ("empty".to_owned(), Shape::Empty),
        ]
        .into_iter()
        .collect(),
        unit: (),
        flag: true,
        letter: 'é',
    }
}

fn round_trip<C: Codec, T>(value: &T) -> T
where
    T: Serialize + serde::de::DeserializeOwned + std::fmt::Debug + PartialEq,
{
    let bytes = C::encode(value).unwrap_or_else(|error| {
        panic!("{} encodes {value:?}: {error}", std::any::type_name::<C>())
    });
    let back: T = C::decode(&bytes).unwrap_or_else(|error| {
        panic!("{} decodes {value:?}: {error}", std::any::type_name::<C>())
    });
    assert_eq!(&back, value, "{} round trip", std::any::type_name::<C>());
    back
}

/// A nested struct, an enum of every variant kind, and vectors.
fn round_trips<C: Codec>() {
    round_trip::<C, _>(&sample());
    for shape in sample().shapes {
        round_trip::<C, _>(&shape);
    }
    round_trip::<C, _>(&vec![sample(), sample()]);
    round_trip::<C, _>(&Vec::<Shape>::new());
    round_trip::<C, _>(&(7u8, String::from("tuple"), vec![Some(1u16), None]));
}

/// Even numbers only: odd ones fail with a custom message.
#[derive(Debug, PartialEq, Serialize)]
struct Even(u32);

impl<'de> Deserialize<'de> for Even {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let number = u32::deserialize(deserializer)?;
        if number % 2 == 1 {
            return Err(serde::de::Error::custom("odd number"));
        }
        Ok(Even(number))
    }
}

/// Decoding an odd `Even` fails; returns the codec's error.
fn odd_error<C: Codec>() -> CodecError {
    let bytes = C::encode(&Even(3)).expect("encodes");
    assert_eq!(round_trip::<C, _>(&Even(4)), Even(4));
    C::decode::<Even>(&bytes).expect_err("an odd number must not decode")
}

/// The custom message survives, in `Display` and inside the codec's own
/// error type (reachable by downcasting).
fn keeps_custom_message<C: Codec, E: std::error::Error + 'static>() {
    let error = odd_error::<C>();
    assert!(
        error.to_string().contains("odd number"),
        "{}: {error}",
        std::any::type_name::<C>()
    );
    assert!(
        error.downcast_ref::<E>().is_some(),
        "{}'s error is a boxed {}: {error:?}",
        std::any::type_name::<C>(),
        std::any::type_name::<E>()
    );
}

#[test]
fn postcard_round_trips() {
    round_trips::<Postcard>();
}

/// What the Postcard docs say: its error keeps the kind, not the message.
#[test]
fn postcard_drops_custom_messages() {
    let error = odd_error::<Postcard>();
    assert!(error.downcast_ref::<postcard::Error>().is_some());
    assert!(!error.to_string().contains("odd number"), "{error}");
}

#[cfg(feature = "json")]
mod json {
    use super::*;
    use parallel_zygote::async_core::codecs::Json;

    #[test]
    fn round_trips() {
        super::round_trips::<Json>();
    }

    #[test]
    fn keeps_custom_message() {
        super::keeps_custom_message::<Json, serde_json::Error>();
    }

    #[test]
    fn is_readable_text() {
        let bytes = Json::encode(&Shape::Rect {
            width: 3,
            height: 4,
        })
        .unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"Rect":{"width":3,"height":4}}"#
        );
    }
}

#[cfg(feature = "msgpack")]
mod msgpack {
    use super::*;
    use parallel_zygote::async_core::codecs::MessagePack;

    #[test]
    fn round_trips() {
        super::round_trips::<MessagePack>();
    }

    #[test]
    fn keeps_custom_message() {
        super::keeps_custom_message::<MessagePack, rmp_serde::decode::Error>();
    }

    /// `to_vec_named`: a struct is a map keyed by field name, so bytes of an
    /// older version of a type (a field fewer, another order) still decode.
    #[test]
    fn structs_are_maps_so_schemas_can_evolve() {
        #[derive(Serialize)]
        struct V1 {
            b: String,
            a: u32,
        }
        #[derive(Debug, PartialEq, DeriveDeserialize)]
        struct V2 {
            a: u32,
            b: String,
            #[serde(default)]
            c: Vec<u8>,
        }
        let bytes = MessagePack::encode(&V1 {
            b: "bee".into(),
            a: 1,
        })
        .unwrap();
        assert!(bytes.windows(3).any(|window| window == b"bee"));
        assert_eq!(
            MessagePack::decode::<V2>(&bytes).unwrap(),
            V2 {
                a: 1,
                b: "bee".into(),
                c: Vec::new()
            }
        );
    }
}

#[cfg(feature = "cbor")]
mod cbor {
    use parallel_zygote::async_core::codecs::Cbor;

    #[test]
    fn round_trips() {
        super::round_trips::<Cbor>();
    }

    #[test]
    fn keeps_custom_message() {
        super::keeps_custom_message::<Cbor, ciborium::de::Error<std::io::Error>>();
    }
}

#[cfg(feature = "bincode")]
mod bincode_codec {
    use parallel_zygote::async_core::codecs::Bincode;

    #[test]
    fn round_trips() {
        super::round_trips::<Bincode>();
    }

    #[test]
    fn keeps_custom_message() {
        super::keeps_custom_message::<Bincode, bincode::ErrorKind>();
    }
}

/// Runs `$check::<C>()` for every codec compiled in.
macro_rules! every_codec {
    ($check:ident) => {
        $check::<Postcard>();
        #[cfg(feature = "json")]
        $check::<parallel_zygote::async_core::codecs::Json>();
        #[cfg(feature = "msgpack")]
        $check::<parallel_zygote::async_core::codecs::MessagePack>();
        #[cfg(feature = "cbor")]
        $check::<parallel_zygote::async_core::codecs::Cbor>();
        #[cfg(feature = "bincode")]
        $check::<parallel_zygote::async_core::codecs::Bincode>();
    };
}

/// Garbage is an error, never a panic, in every codec.
#[test]
fn garbage_is_an_error() {
    fn check<C: Codec>() {
        for bytes in [&b""[..], b"\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"\x01"] {
            assert!(
                C::decode::<Outer>(bytes).is_err(),
                "{} decoded {bytes:?}",
                std::any::type_name::<C>()
            );
        }
    }
    every_codec!(check);
}

/// The self dev-dependency really turns every codec on for `cargo test`:
/// without it the cases above would compile away and pass vacuously.
#[test]
fn every_codec_is_under_test() {
    let on = [
        cfg!(feature = "json"),
        cfg!(feature = "msgpack"),
        cfg!(feature = "cbor"),
        cfg!(feature = "bincode"),
    ];
    assert_eq!(on, [true; 4], "json, msgpack, cbor, bincode");
}

/// `Codec::BYTE_STRINGS_ARE_SEQUENCES` says the truth for every codec: where
/// it is true, a byte string and a `Vec<u8>` encode to the same bytes and
/// each decodes as the other (so a `process` message that is a plain
/// `Vec<u8>` may take the byte-string path on either side); where it is
/// false, they differ (so the claim is not simply left off).
#[test]
fn byte_strings_are_sequences_exactly_where_the_codec_says() {
    fn check<C: Codec>() {
        let name = std::any::type_name::<C>();
        let mut same = true;
        for len in [0usize, 1, 127, 128, 300, 16_384, 100_003] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let as_sequence = C::encode(&plain).unwrap();
            let as_string = C::encode(&serde_bytes::Bytes::new(&plain)).unwrap();
            if as_sequence != as_string {
                same = false;
                continue;
            }
            let string = C::decode::<serde_bytes::ByteBuf>(&as_sequence).unwrap();
            assert_eq!(
                string.into_vec(),
                plain,
                "{name}: {len} bytes as a byte string"
            );
            let sequence = C::decode::<Vec<u8>>(&as_string).unwrap();
            assert_eq!(sequence, plain, "{name}: {len} bytes as a sequence");
        }
        assert_eq!(C::BYTE_STRINGS_ARE_SEQUENCES, same, "{name}");
    }
    every_codec!(check);
}
