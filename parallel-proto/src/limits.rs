//! One place for every bound the protocol enforces.

/// Bounds enforced on both the sending and the receiving side.
///
/// A peer that exceeds a limit is a remote error; a caller that tries to send
/// past one gets a local error and nothing is queued.
///
/// Start from the defaults ([`Limits::DEFAULT`] or [`Limits::default()`]) and
/// change what you need with the `with_*` setters. Each setter checks its
/// value against the bound documented on it and refuses a value out of range
/// with a [`LimitsError`] naming the field, so every `Limits` that exists is
/// valid. The fields are private, so new limits can be added without breaking
/// code that builds one this way.
///
/// ```
/// use parallel_proto::{Limits, LimitsError};
///
/// let limits = Limits::default()
///     .with_max_frame_len(1 << 20)?
///     .with_max_in_flight(64)?;
/// assert_eq!(limits.max_frame_len(), 1 << 20);
/// assert_eq!(limits.max_in_flight(), 64);
/// assert_eq!(limits.max_fds_per_frame(), 16, "the others keep their defaults");
///
/// let error = Limits::default().with_max_frame_len(8).unwrap_err();
/// assert_eq!(error.to_string(), "max_frame_len = 8 is below its minimum of 64");
/// # Ok::<(), LimitsError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    max_frame_len: u32,
    max_buffered_bytes: usize,
    max_in_flight: usize,
    max_fds_per_frame: u8,
}

impl Limits {
    /// The documented defaults: `max_frame_len` 128 MiB,
    /// `max_buffered_bytes` 256 MiB, `max_in_flight` 1024,
    /// `max_fds_per_frame` 16.
    pub const DEFAULT: Limits = Limits {
        max_frame_len: 128 << 20,
        max_buffered_bytes: 256 << 20,
        max_in_flight: 1024,
        max_fds_per_frame: 16,
    };

    /// The smallest `max_frame_len` allowed: every control message fits in 64 bytes.
    pub const MIN_FRAME_LEN: u32 = 64;

    /// The smallest `max_in_flight` allowed: with 0, no spawn, snapshot or
    /// call could ever be made.
    pub const MIN_IN_FLIGHT: usize = 1;

    /// The smallest `max_fds_per_frame` allowed: a spawn carries at least
    /// the worker's channel, a snapshot request exactly one descriptor.
    pub const MIN_FDS_PER_FRAME: u8 = 1;

    /// The largest `max_fds_per_frame` allowed: Linux passes at most 253
    /// descriptors in one `SCM_RIGHTS` message (`SCM_MAX_FD`).
    pub const MAX_FDS_PER_FRAME: u8 = 253;

    /// Largest frame payload, in bytes. The decoder checks an announced
    /// length against this before it buffers a single byte of the payload.
    ///
    /// Default: 128 MiB, so a 64 MiB message plus its encoding fits in one frame.
    pub const fn max_frame_len(&self) -> u32 {
        self.max_frame_len
    }

    /// Sets [`max_frame_len`](Self::max_frame_len).
    ///
    /// # Errors
    /// [`LimitsError::BelowMinimum`] if `max_frame_len` is below
    /// [`MIN_FRAME_LEN`](Self::MIN_FRAME_LEN) (64), so that every control
    /// message fits in a frame.
    pub const fn with_max_frame_len(self, max_frame_len: u32) -> Result<Limits, LimitsError> {
        Limits {
            max_frame_len,
            ..self
        }
        .check()
    }

    /// Largest number of bytes a state machine queues for sending before the
    /// caller drains them with `poll_transmit`. Sends past it fail with
    /// [`LocalError::SendQueueFull`](crate::LocalError::SendQueueFull), which
    /// is back-pressure: drain, then send again. A message always fits into
    /// an empty queue, whatever its size (up to `max_frame_len`).
    ///
    /// Default: 256 MiB.
    pub const fn max_buffered_bytes(&self) -> usize {
        self.max_buffered_bytes
    }

    /// Sets [`max_buffered_bytes`](Self::max_buffered_bytes). Any value is
    /// valid (0 queues one frame at a time); the `Result` keeps the setters
    /// alike and leaves room for a bound later.
    ///
    /// # Errors
    /// None today.
    pub const fn with_max_buffered_bytes(
        self,
        max_buffered_bytes: usize,
    ) -> Result<Limits, LimitsError> {
        Limits {
            max_buffered_bytes,
            ..self
        }
        .check()
    }

    /// Largest number of requests (zygote spawns and snapshots) or calls
    /// (worker `run` calls) awaiting a reply at once.
    ///
    /// Default: 1024.
    pub const fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Sets [`max_in_flight`](Self::max_in_flight).
    ///
    /// # Errors
    /// [`LimitsError::BelowMinimum`] if `max_in_flight` is below
    /// [`MIN_IN_FLIGHT`](Self::MIN_IN_FLIGHT) (1).
    pub const fn with_max_in_flight(self, max_in_flight: usize) -> Result<Limits, LimitsError> {
        Limits {
            max_in_flight,
            ..self
        }
        .check()
    }

    /// Largest number of file descriptors one frame may carry.
    ///
    /// Default: 16.
    pub const fn max_fds_per_frame(&self) -> u8 {
        self.max_fds_per_frame
    }

    /// Sets [`max_fds_per_frame`](Self::max_fds_per_frame).
    ///
    /// # Errors
    /// [`LimitsError::BelowMinimum`] if `max_fds_per_frame` is below
    /// [`MIN_FDS_PER_FRAME`](Self::MIN_FDS_PER_FRAME) (1), and
    /// [`LimitsError::AboveMaximum`] if it is above
    /// [`MAX_FDS_PER_FRAME`](Self::MAX_FDS_PER_FRAME) (253).
    pub const fn with_max_fds_per_frame(
        self,
        max_fds_per_frame: u8,
    ) -> Result<Limits, LimitsError> {
        Limits {
            max_fds_per_frame,
            ..self
        }
        .check()
    }

    /// The one table of bounds: `self` if every field is in range.
    const fn check(self) -> Result<Limits, LimitsError> {
        if self.max_frame_len < Self::MIN_FRAME_LEN {
            return Err(LimitsError::BelowMinimum {
                field: "max_frame_len",
                value: self.max_frame_len as u64,
                min: Self::MIN_FRAME_LEN as u64,
            });
        }
        if self.max_in_flight < Self::MIN_IN_FLIGHT {
            return Err(LimitsError::BelowMinimum {
                field: "max_in_flight",
                value: self.max_in_flight as u64,
                min: Self::MIN_IN_FLIGHT as u64,
            });
        }
        if self.max_fds_per_frame < Self::MIN_FDS_PER_FRAME {
            return Err(LimitsError::BelowMinimum {
                field: "max_fds_per_frame",
                value: self.max_fds_per_frame as u64,
                min: Self::MIN_FDS_PER_FRAME as u64,
            });
        }
        if self.max_fds_per_frame > Self::MAX_FDS_PER_FRAME {
            return Err(LimitsError::AboveMaximum {
                field: "max_fds_per_frame",
                value: self.max_fds_per_frame as u64,
                max: Self::MAX_FDS_PER_FRAME as u64,
            });
        }
        Ok(self)
    }
}

// The defaults obey the bounds; checked at compile time.
const _: () = assert!(Limits::DEFAULT.check().is_ok());

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A value refused by a [`Limits`] setter: the field, the value and the bound
/// it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitsError {
    /// The value is below the field's minimum.
    #[error("{field} = {value} is below its minimum of {min}")]
    BelowMinimum {
        /// The field, e.g. `"max_frame_len"`.
        field: &'static str,
        /// The value refused.
        value: u64,
        /// The smallest value allowed.
        min: u64,
    },
    /// The value is above the field's maximum.
    #[error("{field} = {value} is above its maximum of {max}")]
    AboveMaximum {
        /// The field, e.g. `"max_fds_per_frame"`.
        field: &'static str,
        /// The value refused.
        value: u64,
        /// The largest value allowed.
        max: u64,
    },
}

impl LimitsError {
    /// The name of the field whose value was refused.
    pub fn field(&self) -> &'static str {
        match self {
            LimitsError::BelowMinimum { field, .. } | LimitsError::AboveMaximum { field, .. } => {
                field
            }
        }
    }
}
