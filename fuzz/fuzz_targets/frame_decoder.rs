//! Arbitrary bytes in arbitrary chunks through `FrameDecoder`: it never
//! panics, never holds more than one frame, refuses what breaks the limits,
//! keeps its error, re-encodes what it decoded to the bytes it read, and
//! gives the same result however the bytes were cut.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use parallel_proto::frame::{encode_frame, HEADER_LEN};
use parallel_proto::{Frame, FrameDecoder, FrameError, Limits};

#[derive(Debug, Arbitrary)]
struct Input {
    max_frame_len: u16,
    max_fds_per_frame: u8,
    chunks: Vec<u16>,
    bytes: Vec<u8>,
}

fn decode(limits: Limits, bytes: &[u8], chunks: &[u16]) -> (Vec<Frame>, Option<FrameError>) {
    let mut decoder = FrameDecoder::new(limits);
    let mut frames = Vec::new();
    let mut sizes = chunks.iter().map(|&size| usize::from(size).max(1)).cycle();
    let mut rest = bytes;
    while !rest.is_empty() {
        let take = sizes.next().unwrap_or(rest.len()).min(rest.len());
        let (mut chunk, tail) = rest.split_at(take);
        rest = tail;
        loop {
            let result = decoder.decode(&mut chunk);
            assert!(decoder.buffered() <= HEADER_LEN + limits.max_frame_len() as usize);
            match result {
                Ok(Some(frame)) => {
                    assert!(frame.payload.len() <= limits.max_frame_len() as usize);
                    assert!(frame.fds <= limits.max_fds_per_frame());
                    frames.push(frame);
                }
                Ok(None) => {
                    assert!(chunk.is_empty());
                    break;
                }
                Err(error) => {
                    assert_eq!(decoder.error(), Some(error));
                    assert_eq!(decoder.decode(&mut &bytes[..]), Err(error));
                    return (frames, Some(error));
                }
            }
        }
    }
    // What was decoded re-encodes to exactly the bytes it came from.
    let mut encoded = Vec::new();
    for frame in &frames {
        encode_frame(
            frame.kind,
            frame.fds.into(),
            &frame.payload,
            &limits,
            &mut encoded,
        )
        .expect("a decoded frame fits the limits it was checked against");
    }
    assert_eq!(&bytes[..encoded.len()], &encoded[..]);
    assert_eq!(encoded.len() + decoder.buffered(), bytes.len());
    assert_eq!(decoder.is_at_boundary(), encoded.len() == bytes.len());
    (frames, None)
}

fuzz_target!(|input: Input| {
    // Clamped into the range `Limits` accepts.
    let fds = input
        .max_fds_per_frame
        .clamp(Limits::MIN_FDS_PER_FRAME, Limits::MAX_FDS_PER_FRAME);
    let limits = Limits::default()
        .with_max_frame_len(u32::from(input.max_frame_len).max(Limits::MIN_FRAME_LEN))
        .and_then(|l| l.with_max_fds_per_frame(fds))
        .expect("clamped into range");
    let whole = decode(limits, &input.bytes, &[]);
    let chunked = decode(limits, &input.bytes, &input.chunks);
    assert_eq!(whole, chunked);
});
