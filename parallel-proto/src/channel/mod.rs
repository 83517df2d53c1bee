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

use crate::{Limits, LocalError};

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
