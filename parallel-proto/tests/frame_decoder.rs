//! The framing layer: any chunking gives the same frames, no byte sequence
//! panics or overfills the buffer, and a lying length is refused at once.

mod support;

use parallel_proto::frame::{encode_frame, FrameHeader, HEADER_LEN, MAGIC};
use parallel_proto::{Frame, FrameDecoder, FrameError, Limits, PayloadAlloc};
use proptest::collection::vec;
use proptest::prelude::*;
use support::strategies::{bulk_bytes, chunk_sizes};

fn limits_with_max_frame(max_frame_len: u32) -> Limits {
    Limits::default()
        .with_max_frame_len(max_frame_len)
        .expect("at least the minimum")
}

/// Decodes `bytes` in runs of `sizes` (cycling); returns the frames and the
/// error that stopped it, if any.
fn decode_chunked(
    limits: Limits,
    bytes: &[u8],
    sizes: &[usize],
) -> (Vec<Frame>, Option<FrameError>) {
    let mut decoder = FrameDecoder::new(limits);
    let mut frames = Vec::new();
    let mut sizes = sizes.iter().copied().cycle();
    let mut rest = bytes;
    while !rest.is_empty() {
        let take = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (mut chunk, tail) = rest.split_at(take);
        rest = tail;
        loop {
            match decoder.decode(&mut chunk) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => {
                    assert!(chunk.is_empty());
                    break;
                }
                Err(error) => return (frames, Some(error)),
            }
            assert!(decoder.buffered() <= HEADER_LEN + limits.max_frame_len() as usize);
        }
        assert!(decoder.buffered() <= HEADER_LEN + limits.max_frame_len() as usize);
    }
    (frames, None)
}

/// As [`decode_chunked`], but as a transport that reads bulk data straight
/// into the payload does: whenever the decoder is inside a payload and
/// `direct` says so, the chunk's bytes go through
/// [`FrameDecoder::payload_buffer`] (up to the payload's end) and `decode`
/// then sees only what is left of the chunk, or an empty input. With
/// `alloc`, payloads start in its buffers.
fn decode_mixed(
    limits: Limits,
    bytes: &[u8],
    sizes: &[usize],
    direct: &[bool],
    alloc: Option<PayloadAlloc>,
) -> (Vec<Frame>, Option<FrameError>) {
    let mut decoder = FrameDecoder::new(limits);
    if let Some(alloc) = alloc {
        decoder.set_payload_alloc(alloc);
    }
    let mut frames = Vec::new();
    let mut sizes = sizes.iter().copied().cycle();
    let mut direct = direct.iter().copied().cycle();
    let mut rest = bytes;
    while !rest.is_empty() {
        let take = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (mut chunk, tail) = rest.split_at(take);
        rest = tail;
        if direct.next().unwrap_or(false) {
            if let Some(mut payload) = decoder.payload_buffer() {
                let remaining = payload.remaining();
                assert!(payload.as_mut_vec().capacity() - payload.as_mut_vec().len() >= remaining);
                let took = payload.extend_from_slice(chunk);
                assert_eq!(took, chunk.len().min(remaining));
                chunk = &chunk[took..];
            }
        }
        loop {
            match decoder.decode(&mut chunk) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => {
                    assert!(chunk.is_empty());
                    break;
                }
                Err(error) => {
                    assert!(decoder.payload_buffer().is_none());
                    return (frames, Some(error));
                }
            }
        }
        assert!(decoder.buffered() <= HEADER_LEN + limits.max_frame_len() as usize);
    }
    (frames, None)
}

/// A [`PayloadAlloc`] as a transport that recycles buffers is one: each
/// buffer was used before (its memory holds old bytes), some are larger
/// than asked, a few smaller (none, or less than the payload).
fn used_buffer(len: usize) -> Vec<u8> {
    let mut buffer = match len % 4 {
        0 => vec![0xA5; len / 2],
        1 => vec![0x5A; len],
        _ => vec![0xEE; len + len / 3 + 1],
    };
    buffer.truncate(len % 3);
    buffer
}

fn frames_strategy() -> impl Strategy<Value = Vec<Frame>> {
    let frame = (any::<u8>(), 0u8..=16, bulk_bytes(20_000))
        .prop_map(|(kind, fds, payload)| Frame { kind, fds, payload });
    vec(frame, 0..6)
}

fn encode_all(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        encode_frame(
            frame.kind,
            frame.fds as usize,
            &frame.payload,
            &Limits::default(),
            &mut out,
        )
        .unwrap();
    }
    out
}

/// Bytes that are mostly frame-shaped (so the decoder gets past the header
/// checks) with raw noise mixed in.
fn frameish_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        vec(any::<u8>(), 0..32),
        (any::<u8>(), 0u8..20, any::<u16>(), vec(any::<u8>(), 0..64)).prop_map(
            |(kind, fds, len, payload)| {
                let mut out = vec![MAGIC, kind, fds, 0];
                out.extend_from_slice(&u32::from(len % 200).to_le_bytes());
                out.extend_from_slice(&payload);
                out
            }
        ),
    ];
    vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(support::proptest_config(256))]

    #[test]
    fn any_chunking_of_a_valid_stream_yields_the_same_frames(
        frames in frames_strategy(),
        sizes in chunk_sizes(),
    ) {
        let bytes = encode_all(&frames);
        let (whole, error) = decode_chunked(Limits::default(), &bytes, &[]);
        prop_assert_eq!(error, None);
        prop_assert_eq!(&whole, &frames);
        let (chunked, error) = decode_chunked(Limits::default(), &bytes, &sizes);
        prop_assert_eq!(error, None);
        prop_assert_eq!(chunked, frames);
    }

    #[test]
    fn reading_payloads_into_the_payload_buffer_yields_the_same_frames(
        frames in frames_strategy(),
        sizes in chunk_sizes(),
        direct in vec(any::<bool>(), 1..8),
    ) {
        let bytes = encode_all(&frames);
        let (mixed, error) = decode_mixed(Limits::default(), &bytes, &sizes, &direct, None);
        prop_assert_eq!(error, None);
        prop_assert_eq!(mixed, frames);
    }

    #[test]
    fn the_payload_buffer_does_not_change_what_arbitrary_bytes_give(
        bytes in prop_oneof![vec(any::<u8>(), 0..512), frameish_bytes()],
        sizes in chunk_sizes(),
        direct in vec(any::<bool>(), 1..8),
        max_frame_len in Limits::MIN_FRAME_LEN..256,
    ) {
        let limits = limits_with_max_frame(max_frame_len).with_max_fds_per_frame(8).unwrap();
        let whole = decode_chunked(limits, &bytes, &[]);
        let mixed = decode_mixed(limits, &bytes, &sizes, &direct, None);
        prop_assert_eq!(&whole, &mixed);
        let recycled = decode_mixed(limits, &bytes, &sizes, &direct, Some(used_buffer));
        prop_assert_eq!(whole, recycled);
    }

    #[test]
    fn payloads_started_in_used_buffers_are_the_same_frames(
        frames in frames_strategy(),
        sizes in chunk_sizes(),
        direct in vec(any::<bool>(), 1..8),
    ) {
        let bytes = encode_all(&frames);
        let (recycled, error) =
            decode_mixed(Limits::default(), &bytes, &sizes, &direct, Some(used_buffer));
        prop_assert_eq!(error, None);
        prop_assert_eq!(recycled, frames);
    }

    #[test]
    fn a_payload_arriving_in_pieces_ends_at_its_exact_length(
        len in 1u32..2_000_000,
        sizes in chunk_sizes(),
    ) {
        let mut decoder = FrameDecoder::new(Limits::default());
        let header = FrameHeader { kind: 1, fds: 0, len }.to_bytes();
        prop_assert_eq!(decoder.decode(&mut &header[..]), Ok(None));
        let payload = vec![7u8; len as usize];
        let mut arrived = 0;
        for size in sizes.iter().cycle() {
            let take = (*size).min(payload.len() - arrived);
            let mut chunk = &payload[arrived..arrived + take];
            arrived += take;
            match decoder.decode(&mut chunk).unwrap() {
                Some(frame) => {
                    prop_assert_eq!(frame.payload.capacity(), len as usize);
                    break;
                }
                None => {
                    let held = decoder.buffered() - HEADER_LEN;
                    prop_assert_eq!(held, arrived);
                }
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_nor_overfill_and_chunking_does_not_matter(
        bytes in prop_oneof![vec(any::<u8>(), 0..512), frameish_bytes()],
        sizes in chunk_sizes(),
        max_frame_len in Limits::MIN_FRAME_LEN..256,
    ) {
        let limits = limits_with_max_frame(max_frame_len).with_max_fds_per_frame(8).unwrap();
        let whole = decode_chunked(limits, &bytes, &[]);
        let chunked = decode_chunked(limits, &bytes, &sizes);
        prop_assert_eq!(whole, chunked);
    }

    #[test]
    fn buffered_counts_every_byte_of_the_unfinished_frame(
        frames in frames_strategy(),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = encode_all(&frames);
        let cut = cut.index(bytes.len() + 1);
        let (done, error) = decode_chunked(Limits::default(), &bytes[..cut], &[]);
        prop_assert_eq!(error, None);
        let mut decoder = FrameDecoder::new(Limits::default());
        let mut input = &bytes[..cut];
        while decoder.decode(&mut input).unwrap().is_some() {}
        let complete = encode_all(&done).len();
        prop_assert_eq!(decoder.buffered(), cut - complete);
        prop_assert_eq!(decoder.is_at_boundary(), cut == complete);
    }

    #[test]
    fn an_announced_length_over_the_limit_is_refused_after_the_header_alone(
        max in Limits::MIN_FRAME_LEN..1_000_000,
        over in 1u32..1_000,
        kind in any::<u8>(),
    ) {
        let len = max.saturating_add(over);
        let mut bytes = vec![MAGIC, kind, 0, 0];
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&[0xAA; 100]);
        let mut decoder = FrameDecoder::new(limits_with_max_frame(max));
        let mut input = &bytes[..];
        prop_assert_eq!(
            decoder.decode(&mut input),
            Err(FrameError::TooLong { len, max })
        );
        prop_assert_eq!(input.len(), 100, "only the 8 header bytes were consumed");
        prop_assert_eq!(decoder.buffered(), 0);
    }
}

#[test]
fn stream_data_is_received_into_the_payload_allocators_buffers() {
    use parallel_proto::channel::{FromWorker, ParentChannel, ParentEvent};
    use parallel_proto::{Endpoint, EntryKey};

    /// Buffers with room to spare, so that a payload's capacity says where
    /// it came from.
    fn roomy(len: usize) -> Vec<u8> {
        Vec::with_capacity(len + 1000)
    }
    let data: Vec<Vec<u8>> = vec![vec![1; 10], vec![2; 50_000], vec![3; 300_000]];
    let hello = FromWorker::Hello { version: 3, pid: 9 };
    let mut wire = support::frame(hello.kind(), 0, &hello.into_payload());
    for payload in &data {
        let message = FromWorker::Data(payload.clone());
        wire.extend_from_slice(&support::frame(message.kind(), 0, &message.into_payload()));
    }
    // Whole in one input, and in pieces of 4 KiB.
    for cut in [wire.len(), 4096] {
        let mut parent = ParentChannel::new(Limits::default());
        parent
            .start(EntryKey::from_bytes([5; 16]).seal(0x20, 1), Vec::new())
            .unwrap();
        parent.set_payload_alloc(roomy);
        let mut received = Vec::new();
        for mut chunk in wire.chunks(cut) {
            while let Some(event) = Endpoint::handle_input(&mut parent, &mut chunk).unwrap() {
                received.push(event);
            }
        }
        let payloads: Vec<&Vec<u8>> = received
            .iter()
            .filter_map(|event| match event {
                ParentEvent::Data { payload, .. } => Some(payload),
                _ => None,
            })
            .collect();
        assert_eq!(payloads, data.iter().collect::<Vec<_>>());
        for payload in payloads {
            assert_eq!(
                payload.capacity(),
                payload.len() + 1000,
                "from the allocator"
            );
        }
    }
}

#[test]
fn header_bytes_are_magic_kind_fds_reserved_then_le_length() {
    let header = FrameHeader {
        kind: 0x42,
        fds: 3,
        len: 0x0102_0304,
    };
    assert_eq!(
        header.to_bytes(),
        [0xB7, 0x42, 0x03, 0x00, 0x04, 0x03, 0x02, 0x01]
    );
    assert_eq!(
        FrameHeader::parse(header.to_bytes(), &Limits::DEFAULT),
        Ok(header)
    );
    assert_eq!(
        FrameHeader::parse(header.to_bytes(), &limits_with_max_frame(0x0102_0303)),
        Err(FrameError::TooLong {
            len: 0x0102_0304,
            max: 0x0102_0303
        })
    );
}

#[test]
fn corrupt_magic_is_sticky_fatal() {
    let mut decoder = FrameDecoder::new(Limits::default());
    let bytes = [0xB6, 1, 0, 0, 0, 0, 0, 0];
    let mut input = &bytes[..];
    let error = FrameError::BadMagic { found: 0xB6 };
    assert_eq!(decoder.decode(&mut input), Err(error));
    assert_eq!(decoder.error(), Some(error));
    let valid = support::frame(1, 0, b"x");
    assert_eq!(decoder.decode(&mut &valid[..]), Err(error));
    assert_eq!(decoder.decode(&mut &[][..]), Err(error));
    assert_eq!(
        error.to_string(),
        "frame header starts with 0xb6, not the magic byte 0xb7: the stream is out of sync or not ours"
    );
}

#[test]
fn nonzero_reserved_byte_is_sticky_fatal() {
    let mut decoder = FrameDecoder::new(Limits::default());
    let mut input = &[MAGIC, 1, 0, 0x80, 0, 0, 0, 0][..];
    let error = FrameError::ReservedByteSet { found: 0x80 };
    assert_eq!(decoder.decode(&mut input), Err(error));
    assert_eq!(
        decoder.decode(&mut &support::frame(1, 0, b"")[..]),
        Err(error)
    );
}

#[test]
fn too_many_fds_in_a_header_is_refused() {
    let limits = Limits::default().with_max_fds_per_frame(2).unwrap();
    let mut decoder = FrameDecoder::new(limits);
    let bytes = support::raw_frame(0x13, 3, b"abc");
    let error = FrameError::TooManyFds { count: 3, max: 2 };
    assert_eq!(decoder.decode(&mut &bytes[..]), Err(error));
    assert_eq!(decoder.error(), Some(error));
    assert_eq!(
        error.to_string(),
        "frame carries 3 file descriptors, more than max_fds_per_frame (2)"
    );
}

#[test]
fn too_long_error_says_length_and_limit() {
    let error = FrameError::TooLong { len: 80, max: 64 };
    assert_eq!(
        error.to_string(),
        "frame of 80 bytes exceeds max_frame_len (64 bytes)"
    );
}

#[test]
fn a_frame_exactly_at_the_limit_is_accepted() {
    let limits = limits_with_max_frame(64);
    let mut bytes = Vec::new();
    encode_frame(9, 0, &[7; 64], &limits, &mut bytes).unwrap();
    let (frames, error) = decode_chunked(limits, &bytes, &[3]);
    assert_eq!(error, None);
    assert_eq!(
        frames,
        vec![Frame {
            kind: 9,
            fds: 0,
            payload: vec![7; 64]
        }]
    );
}

#[test]
fn an_empty_payload_frame_completes_with_its_header() {
    let mut decoder = FrameDecoder::new(Limits::default());
    let bytes = support::frame(0x14, 0, &[]);
    let mut input = &bytes[..];
    assert_eq!(
        decoder.decode(&mut input),
        Ok(Some(Frame {
            kind: 0x14,
            fds: 0,
            payload: Vec::new()
        }))
    );
    assert!(input.is_empty());
    assert!(decoder.is_at_boundary());
}

#[test]
fn a_partial_frame_is_buffered_and_not_at_a_boundary() {
    let mut decoder = FrameDecoder::new(Limits::default());
    let bytes = support::frame(0x13, 0, b"hello");
    let mut input = &bytes[..5];
    assert_eq!(decoder.decode(&mut input), Ok(None));
    assert_eq!(decoder.buffered(), 5);
    assert!(!decoder.is_at_boundary());
    let mut input = &bytes[5..10];
    assert_eq!(decoder.decode(&mut input), Ok(None));
    assert_eq!(decoder.buffered(), 10, "the header counts once parsed");
    assert!(!decoder.is_at_boundary());
    let mut input = &bytes[10..];
    assert!(decoder.decode(&mut input).unwrap().is_some());
    assert_eq!(decoder.buffered(), 0);
    assert!(decoder.is_at_boundary());
}

#[test]
fn decode_stops_after_each_frame_and_leaves_the_rest() {
    let mut bytes = support::frame(1, 0, b"a");
    bytes.extend(support::frame(2, 1, b"bc"));
    let mut decoder = FrameDecoder::new(Limits::default());
    let mut input = &bytes[..];
    assert_eq!(decoder.decode(&mut input).unwrap().unwrap().kind, 1);
    assert_eq!(input.len(), HEADER_LEN + 2);
    let second = decoder.decode(&mut input).unwrap().unwrap();
    assert_eq!(
        (second.kind, second.fds, &second.payload[..]),
        (2, 1, &b"bc"[..])
    );
    assert_eq!(decoder.decode(&mut input), Ok(None));
}

#[test]
fn encode_frame_refuses_oversized_payloads_and_writes_nothing() {
    let limits = limits_with_max_frame(64);
    let mut out = vec![1, 2, 3];
    let error = encode_frame(1, 0, &[0; 65], &limits, &mut out).unwrap_err();
    assert_eq!(
        error,
        parallel_proto::LocalError::MessageTooLong { len: 65, max: 64 }
    );
    assert_eq!(out, [1, 2, 3]);
    let error = encode_frame(1, 17, &[], &Limits::default(), &mut out).unwrap_err();
    assert_eq!(
        error,
        parallel_proto::LocalError::TooManyFds { count: 17, max: 16 }
    );
    assert_eq!(out, [1, 2, 3]);
}
