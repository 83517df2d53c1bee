//! The worker channel protocol: parent ↔ one worker.
//!
//! ```text
//! parent (ParentChannel)                    worker (WorkerChannel)
//!   Hello{version}             ─────▶
//!   Start{task, args}          ─────▶       (first event; a worker may be forked
//!                                            before its task is known)
//!                              ◀─────       Hello{version, pid}
//!   Data / Call{call, args}    ─────▶
//!                              ◀─────       Data / Reply{call, outcome}
//!   End (half close)           ─────▶
//!                              ◀─────       End (half close)
//!                              ◀─────       Return(outcome)   (last message)
//! ```
//!
//! The parent writes Hello and Start without waiting, so spawning costs no
//! round trip. Data after End, a second Start, a reply to no call: each is a
//! local error when this side tries it, a fatal remote error when the peer does.

mod messages;
mod parent;
mod worker;

pub use messages::*;
pub use parent::{ParentChannel, ParentEvent};
pub use worker::{WorkerChannel, WorkerEvent};

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use crate::{Limits, LocalError, RemoteError};

/// The calls in flight on one side of a channel. Ids are a counter the
/// parent hands out, so a multiply spreads them over the table well
/// enough; SipHash (the default) cost more per pipelined call than the
/// rest of the bookkeeping, and resists attacks no party here can make
/// (a worker trusts its parent, which picks the ids).
type CallSet = HashSet<CallId, BuildHasherDefault<CallIdHasher>>;

/// Fibonacci hashing of a call id: for maps keyed by [`CallId`] (the
/// parent's driver keeps each call's waiter in one), where SipHash, the
/// default, costs more than the rest of a call's bookkeeping.
#[derive(Debug, Default, Clone, Copy)]
pub struct CallIdHasher(u64);

impl Hasher for CallIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64`s are hashed; any other input still hashes consistently.
        for &byte in bytes {
            self.write_u64(self.0 ^ u64::from(byte));
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// What either side checks before it sends a `SharedData` frame: the
/// receiver maps no more than a frame may hold, and the memfd must come
/// along.
fn check_shared_data(limits: &Limits, len: u64, fds: usize) -> Result<(), LocalError> {
    let max = limits.max_frame_len();
    if len > u64::from(max) {
        return Err(LocalError::MessageTooLong {
            len: usize::try_from(len).unwrap_or(usize::MAX),
            max,
        });
    }
    if fds == 0 {
        return Err(LocalError::InvalidState {
            operation: "send shared data",
            reason: "no descriptors: the memfd must come along (fds >= 1)",
        });
    }
    Ok(())
}

/// What either side checks of a received frame's descriptors: only `Data`
/// and `SharedData` carry any, `SharedData` at least its memfd, and a
/// `SharedData` (`shared_len`) holds no more than a frame may.
fn check_received_fds(
    limits: &Limits,
    message: &'static str,
    fds: u8,
    carries_fds: bool,
    shared_len: Option<u64>,
) -> Result<(), RemoteError> {
    if fds != 0 && !carries_fds {
        return Err(RemoteError::WrongFdCount {
            message,
            got: fds,
            expected: "none (only Data and SharedData carry descriptors)",
        });
    }
    if let Some(len) = shared_len {
        if fds == 0 {
            return Err(RemoteError::WrongFdCount {
                message,
                got: 0,
                expected: "at least 1 (the shared memory)",
            });
        }
        let max = limits.max_frame_len();
        if len > u64::from(max) {
            return Err(RemoteError::SharedTooLong { len, max });
        }
    }
    Ok(())
}
