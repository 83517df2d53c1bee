//! Shared pieces of the fuzz targets: limits from fuzz input, and one side of
//! an in-memory transport that checks the run-loop contract as it feeds bytes.

use arbitrary::Arbitrary;
use parallel_proto::{Endpoint, Error, Limits};

/// Limits drawn from fuzz input, small enough to be hit.
///
/// Each value is clamped into the range `Limits` accepts (`max_frame_len` at
/// least 64, `max_in_flight` at least 1, `max_fds_per_frame` in 1..=253), so
/// every input gives valid limits.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct FuzzLimits {
    max_frame_len: u16,
    max_buffered_bytes: u16,
    max_in_flight: u8,
    max_fds_per_frame: u8,
}

impl FuzzLimits {
    /// The `Limits` these stand for.
    pub fn get(self) -> Limits {
        let fds = self
            .max_fds_per_frame
            .clamp(Limits::MIN_FDS_PER_FRAME, Limits::MAX_FDS_PER_FRAME);
        Limits::default()
            .with_max_frame_len(u32::from(self.max_frame_len).max(Limits::MIN_FRAME_LEN))
            .and_then(|l| l.with_max_buffered_bytes(usize::from(self.max_buffered_bytes)))
            .and_then(|l| {
                l.with_max_in_flight(usize::from(self.max_in_flight).max(Limits::MIN_IN_FLIGHT))
            })
            .and_then(|l| l.with_max_fds_per_frame(fds))
            .expect("clamped into range")
    }
}

/// One state machine plus the bytes in flight towards it.
pub struct Side<E: Endpoint> {
    /// The state machine.
    pub machine: E,
    /// Bytes its peer wrote that it has not read yet.
    pub inbox: Vec<u8>,
    /// Events it produced, in order.
    pub events: Vec<E::Event>,
    /// Its sticky error, once it failed.
    pub failed: Option<Error>,
}

impl<E: Endpoint> Side<E> {
    /// Wraps a fresh state machine.
    pub fn new(machine: E) -> Self {
        Side {
            machine,
            inbox: Vec::new(),
            events: Vec::new(),
            failed: None,
        }
    }

    /// Feeds the first `max` bytes of the inbox.
    pub fn deliver(&mut self, max: usize) {
        let take = max.min(self.inbox.len());
        let chunk: Vec<u8> = self.inbox.drain(..take).collect();
        self.input(&chunk);
    }

    /// Feeds `bytes` through `handle_input`, checking the contract: `Ok(None)`
    /// only once the input is consumed, errors are remote and sticky.
    pub fn input(&mut self, bytes: &[u8]) {
        let mut input = bytes;
        loop {
            match self.machine.handle_input(&mut input) {
                Ok(Some(event)) => {
                    assert!(self.failed.is_none(), "an event after a fatal error");
                    self.events.push(event);
                }
                Ok(None) => {
                    assert!(input.is_empty(), "Ok(None) with input left");
                    assert!(self.failed.is_none(), "Ok(None) after a fatal error");
                    return;
                }
                Err(error) => {
                    assert!(matches!(error, Error::Remote(_)), "input gave {error:?}");
                    if let Some(previous) = &self.failed {
                        assert_eq!(previous, &error, "the error changed");
                    }
                    let mut nothing: &[u8] = &[];
                    match self.machine.handle_input(&mut nothing) {
                        Err(again) => assert_eq!(again, error, "the error changed"),
                        Ok(_) => panic!("the error {error:?} is not sticky"),
                    }
                    self.failed = Some(error);
                    return;
                }
            }
        }
    }

    /// Checks what a local API call returned: a remote error only as the
    /// sticky one. Returns whether the call succeeded.
    pub fn local<T>(&self, result: &Result<T, Error>) -> bool {
        match result {
            Ok(_) => true,
            Err(Error::Local(_)) => false,
            Err(error) => {
                assert_eq!(Some(error), self.failed.as_ref(), "unexpected {error:?}");
                false
            }
        }
    }
}

/// Moves everything `from` queued into `to`'s inbox, checking each transmit.
pub fn pump<A: Endpoint, B: Endpoint>(from: &mut A, to: &mut Side<B>, limits: &Limits) {
    while let Some(transmit) = from.poll_transmit() {
        assert!(!transmit.head.is_empty(), "a transmit starts with a header");
        assert_eq!(transmit.head[0], parallel_proto::frame::MAGIC);
        assert!(transmit.fds <= usize::from(limits.max_fds_per_frame()));
        if transmit.fds > 0 {
            assert_eq!(usize::from(transmit.head[2]), transmit.fds);
        }
        to.inbox.extend_from_slice(&transmit.head);
        to.inbox.extend_from_slice(&transmit.body);
    }
}

/// One frame with a well-formed header around arbitrary bytes.
pub fn raw_frame(kind: u8, fds: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![parallel_proto::frame::MAGIC, kind, fds, 0];
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Picks the `index`-th of `items` (wrapping), if there are any.
pub fn pick<T: Copy>(items: &[T], index: u8) -> Option<T> {
    if items.is_empty() {
        None
    } else {
        Some(items[usize::from(index) % items.len()])
    }
}
