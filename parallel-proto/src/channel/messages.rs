//! The worker channel's messages and their kind tags.

use serde::{Deserialize, Serialize};

use std::borrow::Cow;

use crate::codec::{decode_body, encode_body, encode_body_into, expect_empty, take_tail};
use crate::entry::WireEntry;
use crate::frame::{owned_payload, PayloadAlloc};
use crate::RemoteError;

/// Version carried in both hellos; a mismatch is fatal.
/// Version 2: `PanicReport` carries a structured location (file, line,
/// column) instead of a string. Version 3: `SharedData`, stream data whose
/// bytes are in shared memory passed with the frame.
pub const CHANNEL_PROTOCOL_VERSION: u32 = 3;

/// Names one `run` call on a worker. Chosen by the parent.
pub type CallId = u64;

/// Where in the source a panic happened.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PanicLocation {
    /// The source file, as the compiler named it.
    pub file: String,
    /// The line, from 1.
    pub line: u32,
    /// The column, from 1.
    pub column: u32,
}

impl std::fmt::Display for PanicLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

impl From<&std::panic::Location<'_>> for PanicLocation {
    fn from(location: &std::panic::Location<'_>) -> Self {
        PanicLocation {
            file: location.file().to_owned(),
            line: location.line(),
            column: location.column(),
        }
    }
}

/// Where and why a worker panicked.
///
/// Displays as `panicked at file:line:column: message`; the backtrace is
/// left out of `Display` (print it from [`backtrace`](Self::backtrace)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PanicReport {
    /// The panic message.
    pub message: String,
    /// Where it panicked, when known.
    pub location: Option<PanicLocation>,
    /// The backtrace the worker captured: by default always (no
    /// `RUST_BACKTRACE` needed), unless the parent turned capture off.
    pub backtrace: Option<String>,
}

impl std::fmt::Display for PanicReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "panicked")?;
        if let Some(location) = &self.location {
            write!(f, " at {location}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// How a task or a call ended, its values already serialized by the adapter's codec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// It returned a value.
    Ok(#[serde(with = "crate::copy::bytes")] Vec<u8>),
    /// It returned the user's error value.
    Err(#[serde(with = "crate::copy::bytes")] Vec<u8>),
    /// It panicked.
    Panic(PanicReport),
}

impl Outcome {
    /// `Ok` (postcard's variant 0) or `Err` (1) holding `bytes`: what
    /// [`take_tail`] found after a variant of one of the two.
    fn with_bytes(variant: u32, bytes: Vec<u8>) -> Outcome {
        match variant {
            0 => Outcome::Ok(bytes),
            _ => Outcome::Err(bytes),
        }
    }

    /// The other way: the variant and bytes of `Ok` or `Err`; a panic
    /// comes back.
    fn into_variant_bytes(self) -> Result<(u32, Vec<u8>), Outcome> {
        match self {
            Outcome::Ok(bytes) => Ok((0, bytes)),
            Outcome::Err(bytes) => Ok((1, bytes)),
            panic => Err(panic),
        }
    }
}

/// Parent → worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToWorker {
    /// First message: the parent's version.
    Hello {
        /// [`CHANNEL_PROTOCOL_VERSION`].
        version: u32,
    },
    /// Second message, exactly once: what to run.
    Start {
        /// The task function.
        task: WireEntry,
        /// Its serialized arguments.
        args: Vec<u8>,
    },
    /// Stream data, carried raw as the frame's payload.
    Data(Vec<u8>),
    /// Stream data whose `len` bytes are in shared memory: the frame's first
    /// descriptor (a sealed memfd of exactly `len` bytes, which the receiver
    /// maps instead of reading the bytes from the stream); any further
    /// descriptors are the message's own.
    SharedData {
        /// The message's length in bytes: the size of the shared memory.
        len: u64,
    },
    /// The parent sends nothing more (no data, no calls).
    End,
    /// A `run` call.
    Call {
        /// Matches the reply.
        call: CallId,
        /// Serialized arguments.
        args: Vec<u8>,
    },
}

/// Worker → parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromWorker {
    /// First message: the worker's version and pid.
    Hello {
        /// [`CHANNEL_PROTOCOL_VERSION`].
        version: u32,
        /// The worker's process id.
        pid: i32,
    },
    /// Stream data, carried raw as the frame's payload.
    Data(Vec<u8>),
    /// Stream data in shared memory, as [`ToWorker::SharedData`].
    SharedData {
        /// The message's length in bytes: the size of the shared memory.
        len: u64,
    },
    /// The worker sends no more data.
    End,
    /// The answer to a `run` call.
    Reply {
        /// The call answered.
        call: CallId,
        /// How it went.
        outcome: Outcome,
    },
    /// The task function finished; the last message of the channel.
    Return(Outcome),
}

#[derive(Serialize, Deserialize)]
struct HelloBody {
    version: u32,
}
#[derive(Serialize, Deserialize)]
struct WorkerHelloBody {
    version: u32,
    pid: i32,
}
#[derive(Serialize, Deserialize)]
struct StartBody {
    task: WireEntry,
    #[serde(with = "crate::copy::bytes")]
    args: Vec<u8>,
}
#[derive(Serialize, Deserialize)]
struct SharedBody {
    len: u64,
}
#[derive(Serialize, Deserialize)]
struct CallBody {
    call: CallId,
    #[serde(with = "crate::copy::bytes")]
    args: Vec<u8>,
}
#[derive(Serialize, Deserialize)]
struct ReplyBody {
    call: CallId,
    outcome: Outcome,
}

impl ToWorker {
    /// Kind tag of the frame.
    pub fn kind(&self) -> u8 {
        match self {
            ToWorker::Hello { .. } => 0x11,
            ToWorker::Start { .. } => 0x12,
            ToWorker::Data(_) => 0x13,
            ToWorker::End => 0x14,
            ToWorker::Call { .. } => 0x15,
            ToWorker::SharedData { .. } => 0x16,
        }
    }

    /// The message's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            ToWorker::Hello { .. } => "Hello",
            ToWorker::Start { .. } => "Start",
            ToWorker::Data(_) => "Data",
            ToWorker::SharedData { .. } => "SharedData",
            ToWorker::End => "End",
            ToWorker::Call { .. } => "Call",
        }
    }

    /// The frame payload (moves data payloads without copying).
    pub fn into_payload(self) -> Vec<u8> {
        match self {
            ToWorker::Hello { version } => encode_body(&HelloBody { version }),
            ToWorker::Start { task, args } => encode_body(&StartBody { task, args }),
            ToWorker::Data(bytes) => bytes,
            ToWorker::SharedData { len } => encode_body(&SharedBody { len }),
            ToWorker::End => Vec::new(),
            ToWorker::Call { call, args } => encode_body(&CallBody { call, args }),
        }
    }

    /// The bytes of user data inside (arguments): how large the payload is,
    /// give or take a few bytes of fields.
    pub(crate) fn bulk_len(&self) -> usize {
        match self {
            ToWorker::Start { args, .. } | ToWorker::Call { args, .. } => args.len(),
            ToWorker::Data(bytes) => bytes.len(),
            ToWorker::Hello { .. } | ToWorker::SharedData { .. } | ToWorker::End => 0,
        }
    }

    /// Appends the payload to `out`: what [`into_payload`](Self::into_payload)
    /// returns, without a buffer of its own.
    pub(crate) fn encode_into(self, out: &mut Vec<u8>) {
        match self {
            ToWorker::Hello { version } => encode_body_into(&HelloBody { version }, out),
            ToWorker::Start { task, args } => encode_body_into(&StartBody { task, args }, out),
            ToWorker::Data(bytes) => crate::copy::extend_from_slice(out, &bytes),
            ToWorker::SharedData { len } => encode_body_into(&SharedBody { len }, out),
            ToWorker::End => {}
            ToWorker::Call { call, args } => encode_body_into(&CallBody { call, args }, out),
        }
    }

    /// A call or Start as the first bytes of its payload (the call's id or
    /// the task, the arguments' length) and its arguments, which end the
    /// payload: written as they are, they are not copied into a payload
    /// buffer. Any other message comes back.
    pub(crate) fn split_bulk(self) -> Result<(Vec<u8>, Vec<u8>), ToWorker> {
        let Some(prefix) = self.bulk_prefix(self.bulk_len()) else {
            return Err(self);
        };
        match self {
            ToWorker::Call { args, .. } | ToWorker::Start { args, .. } => Ok((prefix, args)),
            message => Err(message),
        }
    }

    /// The first bytes of a call's or a Start's payload (the call's id or
    /// the task, then the length) before arguments of `len` bytes; `None`
    /// for any other message.
    pub(crate) fn bulk_prefix(&self, len: usize) -> Option<Vec<u8>> {
        match self {
            ToWorker::Call { call, .. } => Some(encode_body(&(call, len))),
            ToWorker::Start { task, .. } => Some(encode_body(&(task, len))),
            _ => None,
        }
    }

    /// A call or a Start with `args` as its arguments (any other message
    /// as it is).
    pub(crate) fn with_args(self, args: Vec<u8>) -> ToWorker {
        match self {
            ToWorker::Call { call, .. } => ToWorker::Call { call, args },
            ToWorker::Start { task, .. } => ToWorker::Start { task, args },
            message => message,
        }
    }

    /// Decodes a frame's kind and payload.
    ///
    /// # Errors
    /// [`RemoteError::UnknownKind`] if `kind` names no message the parent
    /// sends, and [`RemoteError::Malformed`] if the payload does not decode
    /// as that message completely (trailing bytes included).
    pub fn decode(kind: u8, payload: Vec<u8>) -> Result<ToWorker, RemoteError> {
        Self::decode_frame(kind, Cow::Owned(payload), None)
    }

    /// [`decode`](Self::decode) from a payload that may be borrowed from the
    /// input: only stream data takes it as a `Vec` of its own (from `alloc`
    /// when it has one).
    pub(crate) fn decode_frame(
        kind: u8,
        mut payload: Cow<'_, [u8]>,
        alloc: Option<PayloadAlloc>,
    ) -> Result<ToWorker, RemoteError> {
        Ok(match kind {
            0x11 => {
                let body: HelloBody = decode_body("Hello", &payload)?;
                ToWorker::Hello {
                    version: body.version,
                }
            }
            0x12 => {
                if let Some((task, args)) = take_tail::<WireEntry>(&mut payload, |_| true) {
                    return Ok(ToWorker::Start { task, args });
                }
                let body: StartBody = decode_body("Start", &payload)?;
                ToWorker::Start {
                    task: body.task,
                    args: body.args,
                }
            }
            0x13 => ToWorker::Data(owned_payload(payload, alloc)),
            0x14 => {
                expect_empty("End", &payload)?;
                ToWorker::End
            }
            0x15 => {
                if let Some((call, args)) = take_tail::<CallId>(&mut payload, |_| true) {
                    return Ok(ToWorker::Call { call, args });
                }
                let body: CallBody = decode_body("Call", &payload)?;
                ToWorker::Call {
                    call: body.call,
                    args: body.args,
                }
            }
            0x16 => {
                let body: SharedBody = decode_body("SharedData", &payload)?;
                ToWorker::SharedData { len: body.len }
            }
            kind => {
                return Err(RemoteError::UnknownKind {
                    protocol: "worker channel",
                    kind,
                })
            }
        })
    }
}

impl FromWorker {
    /// Kind tag of the frame.
    pub fn kind(&self) -> u8 {
        match self {
            FromWorker::Hello { .. } => 0x91,
            FromWorker::Data(_) => 0x93,
            FromWorker::SharedData { .. } => 0x97,
            FromWorker::End => 0x94,
            FromWorker::Reply { .. } => 0x95,
            FromWorker::Return(_) => 0x96,
        }
    }

    /// The message's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            FromWorker::Hello { .. } => "Hello",
            FromWorker::Data(_) => "Data",
            FromWorker::SharedData { .. } => "SharedData",
            FromWorker::End => "End",
            FromWorker::Reply { .. } => "Reply",
            FromWorker::Return(_) => "Return",
        }
    }

    /// The frame payload (moves data payloads without copying).
    pub fn into_payload(self) -> Vec<u8> {
        match self {
            FromWorker::Hello { version, pid } => encode_body(&WorkerHelloBody { version, pid }),
            FromWorker::Data(bytes) => bytes,
            FromWorker::SharedData { len } => encode_body(&SharedBody { len }),
            FromWorker::End => Vec::new(),
            FromWorker::Reply { call, outcome } => encode_body(&ReplyBody { call, outcome }),
            FromWorker::Return(outcome) => encode_body(&outcome),
        }
    }

    /// The bytes of user data inside (a result, a panic report): how large
    /// the payload is, give or take a few bytes of fields.
    pub(crate) fn bulk_len(&self) -> usize {
        match self {
            FromWorker::Reply { outcome, .. } | FromWorker::Return(outcome) => match outcome {
                Outcome::Ok(bytes) | Outcome::Err(bytes) => bytes.len(),
                Outcome::Panic(report) => {
                    report.message.len()
                        + report.backtrace.as_ref().map_or(0, String::len)
                        + report.location.as_ref().map_or(0, |l| l.file.len())
                }
            },
            FromWorker::Data(bytes) => bytes.len(),
            FromWorker::Hello { .. } | FromWorker::SharedData { .. } | FromWorker::End => 0,
        }
    }

    /// Appends the payload to `out`: what [`into_payload`](Self::into_payload)
    /// returns, without a buffer of its own.
    pub(crate) fn encode_into(self, out: &mut Vec<u8>) {
        match self {
            FromWorker::Hello { version, pid } => {
                encode_body_into(&WorkerHelloBody { version, pid }, out)
            }
            FromWorker::Data(bytes) => crate::copy::extend_from_slice(out, &bytes),
            FromWorker::SharedData { len } => encode_body_into(&SharedBody { len }, out),
            FromWorker::End => {}
            FromWorker::Reply { call, outcome } => {
                encode_body_into(&ReplyBody { call, outcome }, out)
            }
            FromWorker::Return(outcome) => encode_body_into(&outcome, out),
        }
    }

    /// A reply or returned outcome of bytes as the first bytes of its
    /// payload (ids, the variant, the bytes' length) and its bytes, which
    /// end the payload (see [`ToWorker::split_bulk`]). Any other message
    /// (a panic report among them) comes back.
    pub(crate) fn split_bulk(self) -> Result<(Vec<u8>, Vec<u8>), FromWorker> {
        match self {
            FromWorker::Reply { call, outcome } => match outcome.into_variant_bytes() {
                Ok((variant, bytes)) => Ok((encode_body(&(call, variant, bytes.len())), bytes)),
                Err(outcome) => Err(FromWorker::Reply { call, outcome }),
            },
            FromWorker::Return(outcome) => match outcome.into_variant_bytes() {
                Ok((variant, bytes)) => Ok((encode_body(&(variant, bytes.len())), bytes)),
                Err(outcome) => Err(FromWorker::Return(outcome)),
            },
            message => Err(message),
        }
    }

    /// Decodes a frame's kind and payload.
    ///
    /// # Errors
    /// [`RemoteError::UnknownKind`] if `kind` names no message the worker
    /// sends, and [`RemoteError::Malformed`] if the payload does not decode
    /// as that message completely (trailing bytes included).
    pub fn decode(kind: u8, payload: Vec<u8>) -> Result<FromWorker, RemoteError> {
        Self::decode_frame(kind, Cow::Owned(payload), None)
    }

    /// [`decode`](Self::decode) from a payload that may be borrowed from the
    /// input: only stream data takes it as a `Vec` of its own (from `alloc`
    /// when it has one).
    pub(crate) fn decode_frame(
        kind: u8,
        mut payload: Cow<'_, [u8]>,
        alloc: Option<PayloadAlloc>,
    ) -> Result<FromWorker, RemoteError> {
        Ok(match kind {
            0x91 => {
                let body: WorkerHelloBody = decode_body("Hello", &payload)?;
                FromWorker::Hello {
                    version: body.version,
                    pid: body.pid,
                }
            }
            0x93 => FromWorker::Data(owned_payload(payload, alloc)),
            0x94 => {
                expect_empty("End", &payload)?;
                FromWorker::End
            }
            0x95 => {
                if let Some(((call, variant), bytes)) =
                    take_tail::<(CallId, u32)>(&mut payload, |(_, variant)| *variant <= 1)
                {
                    let outcome = Outcome::with_bytes(variant, bytes);
                    return Ok(FromWorker::Reply { call, outcome });
                }
                let body: ReplyBody = decode_body("Reply", &payload)?;
                FromWorker::Reply {
                    call: body.call,
                    outcome: body.outcome,
                }
            }
            0x96 => {
                if let Some((variant, bytes)) = take_tail::<u32>(&mut payload, |v| *v <= 1) {
                    return Ok(FromWorker::Return(Outcome::with_bytes(variant, bytes)));
                }
                FromWorker::Return(decode_body("Return", &payload)?)
            }
            0x97 => {
                let body: SharedBody = decode_body("SharedData", &payload)?;
                FromWorker::SharedData { len: body.len }
            }
            kind => {
                return Err(RemoteError::UnknownKind {
                    protocol: "worker channel",
                    kind,
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::TAIL_IN_PLACE_MIN;
    use proptest::prelude::*;

    fn bulk(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// The payload decoded both ways: owned (its bulk bytes may be taken in
    /// place) and borrowed (always decoded by serde). Also whether the
    /// owned decode kept the payload's buffer.
    fn both_ways<M: PartialEq + std::fmt::Debug>(
        payload: &[u8],
        decode: impl Fn(Cow<'_, [u8]>) -> Result<M, RemoteError>,
        bulk_of: impl Fn(&M) -> Option<*const u8>,
    ) -> (Result<M, RemoteError>, bool) {
        let owned = payload.to_vec();
        let buffer = owned.as_ptr();
        let from_owned = decode(Cow::Owned(owned));
        let from_borrowed = decode(Cow::Borrowed(payload));
        assert_eq!(
            format!("{from_owned:?}"),
            format!("{from_borrowed:?}"),
            "the same message or error either way"
        );
        let kept = from_owned
            .as_ref()
            .ok()
            .and_then(&bulk_of)
            .is_some_and(|bytes| bytes == buffer);
        (from_owned, kept)
    }

    fn call_args(message: &ToWorker) -> Option<*const u8> {
        match message {
            ToWorker::Call { args, .. } => Some(args.as_ptr()),
            _ => None,
        }
    }

    fn start_args(message: &ToWorker) -> Option<*const u8> {
        match message {
            ToWorker::Start { args, .. } => Some(args.as_ptr()),
            _ => None,
        }
    }

    fn outcome_bytes(message: &FromWorker) -> Option<*const u8> {
        match message {
            FromWorker::Reply { outcome, .. } | FromWorker::Return(outcome) => match outcome {
                Outcome::Ok(bytes) | Outcome::Err(bytes) => Some(bytes.as_ptr()),
                Outcome::Panic(_) => None,
            },
            _ => None,
        }
    }

    #[test]
    fn large_arguments_and_results_stay_in_the_payloads_buffer() {
        let to_worker = |payload: Cow<'_, [u8]>| ToWorker::decode_frame(0x15, payload, None);
        let from_worker = |kind| move |p: Cow<'_, [u8]>| FromWorker::decode_frame(kind, p, None);
        for len in [TAIL_IN_PLACE_MIN, 1 << 20] {
            let call = ToWorker::Call {
                call: u64::MAX - 3,
                args: bulk(len),
            };
            let (decoded, kept) = both_ways(&call.clone().into_payload(), to_worker, call_args);
            assert_eq!(decoded.unwrap(), call);
            assert!(kept, "{len} B of arguments: no new buffer");
            let start = ToWorker::Start {
                task: WireEntry {
                    offset: -40,
                    tag: [7; 16],
                },
                args: bulk(len + 3),
            };
            let starts = |payload: Cow<'_, [u8]>| ToWorker::decode_frame(0x12, payload, None);
            let (decoded, kept) = both_ways(&start.clone().into_payload(), starts, start_args);
            assert_eq!(decoded.unwrap(), start);
            assert!(kept, "{len} B of Start arguments: no new buffer");
            for outcome in [Outcome::Ok(bulk(len)), Outcome::Err(bulk(len + 1))] {
                let answers = [
                    FromWorker::Reply {
                        call: 300,
                        outcome: outcome.clone(),
                    },
                    FromWorker::Return(outcome),
                ];
                for answer in answers {
                    let payload = answer.clone().into_payload();
                    let (decoded, kept) =
                        both_ways(&payload, from_worker(answer.kind()), outcome_bytes);
                    assert!(kept, "{len} B in a {}: no new buffer", answer.name());
                    assert_eq!(decoded.unwrap(), answer);
                }
            }
        }
    }

    #[test]
    fn a_split_message_is_its_payload_cut_before_the_bulk_bytes() {
        let bytes = bulk(70_000);
        let calls = [
            ToWorker::Call {
                call: 1 << 40,
                args: bytes.clone(),
            },
            ToWorker::Start {
                task: WireEntry {
                    offset: i64::MAX,
                    tag: [0xff; 16],
                },
                args: bytes.clone(),
            },
        ];
        for message in calls {
            let payload = message.clone().into_payload();
            let (prefix, bulk) = message.split_bulk().unwrap();
            assert_eq!([prefix, bulk].concat(), payload);
        }
        let answers = [
            FromWorker::Reply {
                call: 5,
                outcome: Outcome::Ok(bytes.clone()),
            },
            FromWorker::Reply {
                call: u64::MAX,
                outcome: Outcome::Err(Vec::new()),
            },
            FromWorker::Return(Outcome::Ok(bytes.clone())),
            FromWorker::Return(Outcome::Err(bytes.clone())),
        ];
        for message in answers {
            let payload = message.clone().into_payload();
            let original = match &message {
                FromWorker::Reply { outcome, .. } | FromWorker::Return(outcome) => match outcome {
                    Outcome::Ok(b) | Outcome::Err(b) => b.as_ptr(),
                    Outcome::Panic(_) => unreachable!(),
                },
                _ => unreachable!(),
            };
            let (prefix, bulk) = message.split_bulk().unwrap();
            assert_eq!(bulk.as_ptr(), original, "moved, not copied");
            assert_eq!([prefix, bulk].concat(), payload);
        }
        let panicked = FromWorker::Return(Outcome::Panic(PanicReport {
            message: "boom".into(),
            location: None,
            backtrace: None,
        }));
        assert_eq!(panicked.clone().split_bulk(), Err(panicked));
        assert_eq!(ToWorker::End.split_bulk(), Err(ToWorker::End));
    }

    /// The few bytes before a large payload's bulk: random, or the head
    /// its kind has (so that most cases reach the length check).
    fn large_payload_head(kind: u8) -> impl Strategy<Value = Vec<u8>> {
        let shaped = match kind {
            0x12 => (any::<i64>(), any::<[u8; 16]>())
                .prop_map(|(offset, tag)| postcard::to_stdvec(&WireEntry { offset, tag }).unwrap())
                .boxed(),
            0x15 => any::<u64>()
                .prop_map(|call| postcard::to_stdvec(&call).unwrap())
                .boxed(),
            0x95 => (any::<u64>(), 0u32..4)
                .prop_map(|head| postcard::to_stdvec(&head).unwrap())
                .boxed(),
            _ => (0u32..4)
                .prop_map(|variant| postcard::to_stdvec(&variant).unwrap())
                .boxed(),
        };
        prop_oneof![3 => shaped, 1 => prop::collection::vec(any::<u8>(), 0..24)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever a large payload holds, decoding it owned (where its
        /// bulk may be taken in place) gives what decoding it borrowed gives:
        /// the same message or the same error.
        #[test]
        fn large_payloads_decode_alike_owned_and_borrowed(
            (kind, head) in prop::sample::select(vec![0x12u8, 0x15, 0x95, 0x96])
                .prop_flat_map(|kind| (Just(kind), large_payload_head(kind))),
            bulk_len in TAIL_IN_PLACE_MIN..TAIL_IN_PLACE_MIN + 300,
            declared_off in -1i64..=1,
        ) {
            let declared = (bulk_len as i64 + declared_off) as usize;
            let mut payload = head;
            payload.extend_from_slice(&postcard::to_stdvec(&declared).unwrap());
            payload.extend_from_slice(&bulk(bulk_len));
            let owned = payload.clone();
            let (from_owned, from_borrowed) = if kind < 0x80 {
                let decode = |p| format!("{:?}", ToWorker::decode_frame(kind, p, None));
                (decode(Cow::Owned(owned)), decode(Cow::Borrowed(&payload[..])))
            } else {
                let decode = |p| format!("{:?}", FromWorker::decode_frame(kind, p, None));
                (decode(Cow::Owned(owned)), decode(Cow::Borrowed(&payload[..])))
            };
            prop_assert_eq!(from_owned, from_borrowed);
        }
    }

    #[test]
    fn other_payloads_decode_as_before() {
        let from_worker = |kind| move |p: Cow<'_, [u8]>| FromWorker::decode_frame(kind, p, None);
        // Small: copied, as before.
        let call = ToWorker::Call {
            call: 1,
            args: bulk(TAIL_IN_PLACE_MIN - 100),
        };
        let to_worker = |payload: Cow<'_, [u8]>| ToWorker::decode_frame(0x15, payload, None);
        let (decoded, kept) = both_ways(&call.clone().into_payload(), to_worker, call_args);
        assert_eq!(decoded.unwrap(), call);
        assert!(!kept);
        // A panic whose report is a large message, then nothing: its
        // variant is not one of bytes, whatever its shape.
        let panicked = FromWorker::Reply {
            call: 2,
            outcome: Outcome::Panic(PanicReport {
                message: "x".repeat(2 * TAIL_IN_PLACE_MIN),
                location: None,
                backtrace: None,
            }),
        };
        let (decoded, _) = both_ways(
            &panicked.clone().into_payload(),
            from_worker(0x95),
            outcome_bytes,
        );
        assert_eq!(decoded.unwrap(), panicked);
        // Trailing bytes, and a length past the end: the same errors.
        let reply = FromWorker::Reply {
            call: 3,
            outcome: Outcome::Ok(bulk(TAIL_IN_PLACE_MIN)),
        };
        let mut trailing = reply.into_payload();
        trailing.extend_from_slice(&[0; 5]);
        let (decoded, _) = both_ways(&trailing, from_worker(0x95), outcome_bytes);
        assert!(
            matches!(&decoded, Err(RemoteError::Malformed { reason, .. }) if reason.contains("5 trailing bytes")),
            "{decoded:?}"
        );
        // Another variant followed by exactly one byte string: not a
        // result of bytes (a panic report is more than one string), so the
        // error the whole decode finds.
        for variant in [2u8, 7] {
            let mut forged = vec![3, variant];
            forged.extend_from_slice(
                &postcard::to_stdvec(&serde_bytes::Bytes::new(&bulk(TAIL_IN_PLACE_MIN))).unwrap(),
            );
            let (decoded, _) = both_ways(&forged, from_worker(0x95), outcome_bytes);
            assert!(
                matches!(decoded, Err(RemoteError::Malformed { .. })),
                "{decoded:?}"
            );
        }
        trailing.truncate(trailing.len() - 6);
        let (decoded, _) = both_ways(&trailing, from_worker(0x95), outcome_bytes);
        assert!(
            matches!(decoded, Err(RemoteError::Malformed { .. })),
            "{decoded:?}"
        );
    }
}
