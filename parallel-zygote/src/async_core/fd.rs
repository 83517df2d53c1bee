//! File descriptors inside messages.
//!
//! An [`Fd`] anywhere in a `process` message (a field, a `Vec<Fd>`, an enum
//! variant) travels as a real descriptor: while the message is encoded each
//! `Fd` is duplicated into a side list that rides with the frame as
//! `SCM_RIGHTS`, and only its index goes into the bytes; on the other side the
//! index is swapped back for the received descriptor. This works with any
//! serde codec.

use std::cell::RefCell;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

thread_local! {
    static OUTGOING: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
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
            let list = outgoing
                .as_mut()
                .ok_or("an Fd can only be sent inside a parallel message")?;
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
        let index = u32::deserialize(deserializer)? as usize;
        INCOMING
            .with(|incoming| {
                incoming
                    .borrow_mut()
                    .as_mut()
                    .and_then(|list| list.get_mut(index))
                    .and_then(Option::take)
            })
            .map(Fd)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "descriptor #{index} did not arrive with the message (or was used twice)"
                ))
            })
    }
}

/// Encodes with the descriptors it contains collected on the side.
pub(crate) fn encode_with_fds<E>(
    encode: impl FnOnce() -> Result<Vec<u8>, E>,
) -> Result<(Vec<u8>, Vec<OwnedFd>), E> {
    OUTGOING.with(|outgoing| *outgoing.borrow_mut() = Some(Vec::new()));
    let bytes = encode();
    let fds = OUTGOING.with(|outgoing| outgoing.borrow_mut().take().unwrap_or_default());
    Ok((bytes?, fds))
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
