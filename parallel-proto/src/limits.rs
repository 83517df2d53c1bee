//! One place for every bound the protocol enforces.

/// Bounds enforced on both the sending and the receiving side.
///
/// A peer that exceeds a limit is a remote error; a caller that tries to send
/// past one gets a local error and nothing is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame payload, in bytes. The decoder checks an announced
    /// length against this before it buffers a single byte of the payload.
    ///
    /// Default: 128 MiB, so a 64 MiB message plus its encoding fits in one frame.
    /// Must be at least 64, so that every control message fits.
    pub max_frame_len: u32,
    /// Largest number of bytes a state machine queues for sending before the
    /// caller drains them with `poll_transmit`. Sends past it fail with
    /// [`LocalError::SendQueueFull`](crate::LocalError::SendQueueFull), which
    /// is back-pressure: drain, then send again.
    ///
    /// Default: 256 MiB.
    pub max_buffered_bytes: usize,
    /// Largest number of requests (zygote spawns and snapshots) or calls
    /// (worker `run` calls) awaiting a reply at once.
    ///
    /// Default: 1024.
    pub max_in_flight: usize,
    /// Largest number of file descriptors one frame may carry.
    ///
    /// Default: 16 (Linux itself caps one `SCM_RIGHTS` message at 253).
    pub max_fds_per_frame: u8,
}

impl Limits {
    /// The documented defaults.
    pub const DEFAULT: Limits = Limits {
        max_frame_len: 128 << 20,
        max_buffered_bytes: 256 << 20,
        max_in_flight: 1024,
        max_fds_per_frame: 16,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}
