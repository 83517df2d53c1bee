//! The messages of the throughput figures, and the CPU cost of each stage a
//! `process` message goes through, measured in this one process (no socket,
//! no fork): what explains the gap between `process` and raw writes.
//!
//! Per message, the library's path adds to the two kernel copies that raw
//! writes also pay: the sender's encode into a fresh buffer, the receiver's
//! frame decoder copying the payload out of its 256 KiB read buffer into a
//! growing `Vec`, and the decode into the message's own `Vec`.

use std::time::{Duration, Instant};

use parallel_proto::channel::{FromWorker, Outcome, ToWorker};
use parallel_proto::{FrameDecoder, Limits};
use serde::{Deserialize, Serialize};

use super::stats::{Budget, Sampler};

/// A `process` message of bytes, in either encoding.
pub trait Chunk: Serialize + serde::de::DeserializeOwned + Send + 'static {
    fn data(bytes: Vec<u8>) -> Self;
    fn flush() -> Self;
    /// The payload, or `None` for a flush.
    fn payload(&self) -> Option<&[u8]>;
}

/// Bytes as `#[serde(with = "serde_bytes")]`: a length, then the bytes.
#[derive(Serialize, Deserialize)]
pub enum ByteChunk {
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    Flush,
}

/// Bytes as a plain `Vec<u8>`: serde's sequence, one `u8` at a time.
#[derive(Serialize, Deserialize)]
pub enum SeqChunk {
    Data(Vec<u8>),
    Flush,
}

/// Bytes as the library's `Bytes`: a length, then the bytes.
#[derive(Serialize, Deserialize)]
pub enum OurChunk {
    Data(parallel_tokio::Bytes),
    Flush,
}

impl OurChunk {
    /// A message whose bytes are a copy of `template` in a new shared
    /// buffer, frozen: what travels is its memfd.
    pub fn shared(template: &[u8]) -> OurChunk {
        let mut buffer =
            parallel_tokio::SharedBytesMut::zeroed(template.len()).expect("shared buffer");
        buffer.copy_from_slice(template);
        OurChunk::Data(buffer.freeze().expect("freeze"))
    }
}

impl Chunk for OurChunk {
    fn data(bytes: Vec<u8>) -> Self {
        OurChunk::Data(bytes.into())
    }
    fn flush() -> Self {
        OurChunk::Flush
    }
    fn payload(&self) -> Option<&[u8]> {
        match self {
            OurChunk::Data(bytes) => Some(bytes),
            OurChunk::Flush => None,
        }
    }
}

macro_rules! chunk {
    ($type:ident) => {
        impl Chunk for $type {
            fn data(bytes: Vec<u8>) -> Self {
                $type::Data(bytes)
            }
            fn flush() -> Self {
                $type::Flush
            }
            fn payload(&self) -> Option<&[u8]> {
                match self {
                    $type::Data(bytes) => Some(bytes),
                    $type::Flush => None,
                }
            }
        }
    };
}
chunk!(ByteChunk);
chunk!(SeqChunk);

/// A plain `Vec<u8>` as the whole message; the empty one is the flush.
impl Chunk for Vec<u8> {
    fn data(bytes: Vec<u8>) -> Self {
        bytes
    }
    fn flush() -> Self {
        Vec::new()
    }
    fn payload(&self) -> Option<&[u8]> {
        (!self.is_empty()).then_some(self.as_slice())
    }
}

/// The read size of `parallel-tokio`'s connections.
const READ_CHUNK: usize = 256 * 1024;

/// One stage's samples: (key suffix, label, time per message).
pub type Stage = (&'static str, &'static str, Vec<Duration>);

fn timed(budget: Budget, mut once: impl FnMut() -> Duration) -> Vec<Duration> {
    let mut sampler = Sampler::new(budget);
    while sampler.next() {
        sampler.record(once());
    }
    sampler.finish()
}

/// The CPU cost of each stage for one message of `size` bytes.
pub fn stages(size: usize, budget: Budget) -> Vec<Stage> {
    let source = vec![7u8; size];
    let mut reused = vec![0u8; size];
    let bytes_message = ByteChunk::data(source.clone());
    let seq_message = SeqChunk::data(source.clone());
    let bytes_encoded = postcard::to_stdvec(&bytes_message).expect("encode");
    let seq_encoded = postcard::to_stdvec(&seq_message).expect("encode");
    let limits = Limits::default();
    let mut wire = Vec::new();
    parallel_proto::frame::encode_frame(0x13, 0, &bytes_encoded, &limits, &mut wire)
        .expect("frame");
    vec![
        (
            "memcpy",
            "memcpy into a reused buffer",
            timed(budget, || {
                let start = Instant::now();
                reused.copy_from_slice(&source);
                std::hint::black_box(&mut reused);
                start.elapsed()
            }),
        ),
        (
            "fresh",
            "copy into a new `Vec` (malloc, page faults, free)",
            timed(budget, || {
                let start = Instant::now();
                drop(std::hint::black_box(source.to_vec()));
                start.elapsed()
            }),
        ),
        (
            "encode-bytes",
            "postcard encode, serde_bytes (into a new `Vec`)",
            timed(budget, || {
                let start = Instant::now();
                drop(std::hint::black_box(postcard::to_stdvec(&bytes_message)));
                start.elapsed()
            }),
        ),
        (
            "frame-in",
            "frame decoder: 256 KiB reads → payload `Vec`",
            timed(budget, || {
                let start = Instant::now();
                let mut decoder = FrameDecoder::new(limits);
                let mut frame = None;
                for chunk in wire.chunks(READ_CHUNK) {
                    let mut input = chunk;
                    if let Some(done) = decoder.decode(&mut input).expect("decode") {
                        frame = Some(done);
                    }
                }
                drop(std::hint::black_box(frame.expect("a frame")));
                start.elapsed()
            }),
        ),
        (
            "memfd-out",
            "sealed memfd: create, copy the encoding in, seal (then close)",
            timed(budget, || {
                let start = Instant::now();
                let memfd = parallel_zygote::shm::sealed_memfd(&bytes_encoded).expect("memfd");
                drop(std::hint::black_box(memfd));
                start.elapsed()
            }),
        ),
        (
            "memfd-map",
            "sealed memfd: check, map, read every page, unmap",
            {
                let memfd = parallel_zygote::shm::sealed_memfd(&bytes_encoded).expect("memfd");
                timed(budget, || {
                    let start = Instant::now();
                    let mapped = parallel_zygote::shm::SharedBytes::map(
                        std::os::fd::AsFd::as_fd(&memfd),
                        bytes_encoded.len() as u64,
                    )
                    .expect("map");
                    let bytes = mapped.as_slice();
                    let touched: u64 = bytes.iter().step_by(4096).map(|&b| u64::from(b)).sum();
                    std::hint::black_box(touched);
                    drop(mapped);
                    start.elapsed()
                })
            },
        ),
        (
            "shared-create",
            "`SharedBytesMut::zeroed` (pages allocated), then dropped",
            timed(budget, || {
                let start = Instant::now();
                let buffer = parallel_tokio::SharedBytesMut::zeroed(size).expect("buffer");
                drop(std::hint::black_box(buffer));
                start.elapsed()
            }),
        ),
        (
            "shared-fill",
            "`SharedBytesMut`: create, copy in, freeze, drop (a sender filling in the clock)",
            timed(budget, || {
                let start = Instant::now();
                drop(std::hint::black_box(OurChunk::shared(&source)));
                start.elapsed()
            }),
        ),
        (
            "shared-map",
            "shared `Bytes` received: dup its memfd, check, map, unmap, close",
            {
                // A sealed memfd of the same size: the receiver's work is
                // the same (check seals and size, map, unmap, close).
                let memfd = parallel_zygote::shm::sealed_memfd(&source).expect("memfd");
                timed(budget, || {
                    let start = Instant::now();
                    let copy = memfd.try_clone().expect("dup");
                    let mapped = parallel_zygote::shm::SharedBytes::map_keeping(copy, size as u64)
                        .expect("map");
                    drop(std::hint::black_box(mapped));
                    start.elapsed()
                })
            },
        ),
        (
            "decode-bytes",
            "postcard decode, serde_bytes (into a new `Vec`)",
            timed(budget, || {
                let start = Instant::now();
                let decoded: ByteChunk = postcard::from_bytes(&bytes_encoded).expect("decode");
                drop(std::hint::black_box(decoded));
                start.elapsed()
            }),
        ),
        (
            "call-out",
            "a `Call` frame's payload, its arguments this size (the protocol's encode)",
            timed(budget, || {
                let call = ToWorker::Call {
                    call: 7,
                    args: source.clone(),
                };
                let start = Instant::now();
                drop(std::hint::black_box(call.into_payload()));
                start.elapsed()
            }),
        ),
        (
            "reply-in",
            "a `Reply` frame decoded, its result this size (the protocol's decode)",
            {
                let reply = FromWorker::Reply {
                    call: 7,
                    outcome: Outcome::Ok(source.clone()),
                };
                let (kind, payload) = (reply.kind(), reply.into_payload());
                timed(budget, || {
                    let payload = payload.clone();
                    let start = Instant::now();
                    let decoded = FromWorker::decode(kind, payload).expect("decode");
                    drop(std::hint::black_box(decoded));
                    start.elapsed()
                })
            },
        ),
        (
            "encode-seq",
            "postcard encode, plain `Vec<u8>`",
            timed(budget, || {
                let start = Instant::now();
                drop(std::hint::black_box(postcard::to_stdvec(&seq_message)));
                start.elapsed()
            }),
        ),
        (
            "decode-seq",
            "postcard decode, plain `Vec<u8>`",
            timed(budget, || {
                let start = Instant::now();
                let decoded: SeqChunk = postcard::from_bytes(&seq_encoded).expect("decode");
                drop(std::hint::black_box(decoded));
                start.elapsed()
            }),
        ),
    ]
}
