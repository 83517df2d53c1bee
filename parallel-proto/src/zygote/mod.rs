//! The zygote protocol: parent ↔ zygote (the fork server).
//!
//! ```text
//! parent (ZygoteClient)                      zygote (ZygoteServer)
//!   Hello{version}              ─────▶
//!   Spawn{request, boot, opts} + fds ──▶     fork, verify, run boot in the child
//!                               ◀─────       Hello{version, pid}
//!                               ◀─────       Spawned{request, worker, pid} | SpawnFailed
//!   Kill{worker, signal}        ─────▶       kill(pid) (never a reaped pid)
//!                               ◀─────       Exited{worker, status}   (on reaping)
//!   Snapshot{request, init, args} + 1 fd ─▶  fork a child zygote serving on that fd
//!                               ◀─────       SnapshotReady{request, worker, pid}
//!   Shutdown                    ─────▶       terminate children, exit
//! ```
//!
//! Both hellos are sent unprompted, so the parent may queue a spawn right
//! behind its own hello. At most `Limits::max_in_flight` requests await replies.
//! Shutdown is the parent's last message: the zygote refuses anything after it
//! as a protocol error, as a worker refuses data after End.

mod client;
mod messages;
mod server;

pub use client::{ZygoteClient, ZygoteEvent};
pub use messages::*;
pub use server::{ServerEvent, ZygoteServer};
