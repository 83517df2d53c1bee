//! File descriptors inside messages.
//!
//! An [`Fd`] anywhere in a `process` message (a field, a `Vec<Fd>`, an enum
//! variant) travels as a real descriptor: while the message is encoded each
//! `Fd` is duplicated into a side list that rides with the frame as
//! `SCM_RIGHTS`, and only its index goes into the bytes; on the other side the
//! index is swapped back for the received descriptor. This works with any
//! serde codec.
//!
//! A shared [`Bytes`](super::Bytes) (from a
//! [`SharedBytesMut`](super::SharedBytesMut), or received as one) uses the
//! same side list for its sealed memfd, when the channel passes descriptors.

use std::cell::RefCell;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The descriptors collected while one message is encoded.
struct Outgoing {
    fds: Vec<OwnedFd>,
    /// Whether the channel passes descriptors, so that a shared `Bytes`
    /// may send its memfd rather than its bytes.
    attach_memfds: bool,
}

thread_local! {
    static OUTGOING: RefCell<Option<Outgoing>> = const { RefCell::new(None) };
    static INCOMING: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
}

/// A file descriptor that can be part of a message to or from a worker.
#[derive(Debug)]
pub struct Fd(pub OwnedFd);

impl Fd {
    /// The descriptor, owned.
    pub fn into_inner(self) -> OwnedFd {
        self.0
    }
}

impl From<OwnedFd> for Fd {
    fn from(fd: OwnedFd) -> Self {
        Fd(fd)
    }
}

impl AsFd for Fd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Serialize for Fd {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let index = OUTGOING.with(|outgoing| {
            let mut outgoing = outgoing.borrow_mut();
            let list = &mut outgoing
                .as_mut()
                .ok_or("an Fd can only be sent inside a parallel message")?
                .fds;
            let copy = self
                .0
                .try_clone()
                .map_err(|_| "duplicating the descriptor failed")?;
            list.push(copy);
            Ok::<u32, &str>(list.len() as u32 - 1)
        });
        match index {
            Ok(index) => serializer.serialize_u32(index),
            Err(message) => Err(serde::ser::Error::custom(message)),
        }
    }
}

impl<'de> Deserialize<'de> for Fd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Fd, D::Error> {
        let index = u32::deserialize(deserializer)?;
        take_incoming(index).map(Fd).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "descriptor #{index} did not arrive with the message (or was used twice)"
            ))
        })
    }
}

/// Adds a duplicate of `memfd` to the message being encoded, if the
/// channel passes descriptors: its index among the message's descriptors.
/// `None` outside a message or on a channel without descriptors (the
/// caller then sends the bytes themselves).
pub(crate) fn attach_memfd(memfd: BorrowedFd<'_>) -> Option<Result<u32, std::io::Error>> {
    OUTGOING.with(|outgoing| {
        let mut outgoing = outgoing.borrow_mut();
        let outgoing = outgoing.as_mut().filter(|o| o.attach_memfds)?;
        Some(memfd.try_clone_to_owned().map(|copy| {
            outgoing.fds.push(copy);
            outgoing.fds.len() as u32 - 1
        }))
    })
}

/// The received descriptor at `index` of the message being decoded, taken
/// (each is claimed once).
pub(crate) fn take_incoming(index: u32) -> Option<OwnedFd> {
    INCOMING.with(|incoming| {
        incoming
            .borrow_mut()
            .as_mut()
            .and_then(|list| list.get_mut(index as usize))
            .and_then(Option::take)
    })
}

/// Runs `encode` with the descriptors the message contains collected on
/// the side; `attach_memfds` when the channel passes descriptors (shared
/// `Bytes` then send their memfd).
pub(crate) fn encode_with_fds<R, E>(
    attach_memfds: bool,
    encode: impl FnOnce() -> Result<R, E>,
) -> Result<(R, Vec<OwnedFd>), E> {
    let previous = OUTGOING.with(|outgoing| {
        outgoing.borrow_mut().replace(Outgoing {
            fds: Vec::new(),
            attach_memfds,
        })
    });
    let encoded = encode();
    let fds = OUTGOING.with(|outgoing| std::mem::replace(&mut *outgoing.borrow_mut(), previous));
    Ok((encoded?, fds.map(|o| o.fds).unwrap_or_default()))
}

/// Decodes with `fds` available to the [`Fd`]s inside.
pub(crate) fn decode_with_fds<R, E>(
    fds: Vec<OwnedFd>,
    decode: impl FnOnce() -> Result<R, E>,
) -> Result<R, E> {
    INCOMING.with(|incoming| *incoming.borrow_mut() = Some(fds.into_iter().map(Some).collect()));
    let result = decode();
    // Descriptors the message did not claim are closed here.
    INCOMING.with(|incoming| incoming.borrow_mut().take());
    result
}
