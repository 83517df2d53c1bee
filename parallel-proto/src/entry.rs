//! Entry points on the wire: which function a worker should run.
//!
//! Every process of one tree runs the same binary at the same addresses
//! (workers are forked, never exec'd), so a function is named by its offset
//! from an anchor symbol. An offset alone would let anyone who can write to a
//! socket jump anywhere, so each offset travels with a MAC tag: SipHash-2-4
//! (128-bit output) under a key that the zygote crate draws from the OS's
//! random source before the first fork, over the offset and a *signature*
//! fingerprint (the Rust type of the function). A tag made for one type never
//! verifies as another, and a tampered, random or foreign entry is rejected
//! before anything is called.

use serde::{Deserialize, Serialize};
use siphasher::sip128::{Hasher128, SipHasher24};
use std::hash::Hasher;

/// A function named on the wire: offset from the anchor plus its tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WireEntry {
    /// Address of the function minus the address of the anchor symbol.
    pub offset: i64,
    /// MAC over `offset` and the signature fingerprint.
    pub tag: [u8; 16],
}

/// Why an entry was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// The tag does not match: the entry was forged, corrupted, made under
    /// another key (another process tree), or made for another signature.
    #[error("entry point at offset {offset:#x} has a bad tag: it was tampered with, comes from another process tree, or names a function of another type; it was not run")]
    BadTag {
        /// The offset the entry claimed.
        offset: i64,
    },
}

/// The secret key that makes and checks entry tags.
///
/// `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct EntryKey([u8; 16]);

impl std::fmt::Debug for EntryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EntryKey(..)")
    }
}

impl EntryKey {
    /// A key from 16 secret random bytes (the caller draws them from the OS).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        EntryKey(bytes)
    }

    /// The key's bytes, to hand to a child process.
    pub fn to_bytes(&self) -> [u8; 16] {
        self.0
    }

    fn tag(&self, offset: i64, signature: u64) -> [u8; 16] {
        let mut mac = SipHasher24::new_with_key(&self.0);
        mac.write(b"parallel-entry-v1");
        mac.write(&offset.to_le_bytes());
        mac.write(&signature.to_le_bytes());
        mac.finish128().as_bytes()
    }

    /// Names the function at `offset` whose type has fingerprint `signature`.
    pub fn seal(&self, offset: i64, signature: u64) -> WireEntry {
        WireEntry {
            offset,
            tag: self.tag(offset, signature),
        }
    }

    /// Checks `entry` against the expected `signature` and returns its offset.
    ///
    /// # Errors
    /// [`EntryError::BadTag`] if the tag is not the one this key makes for
    /// `entry.offset` and `signature`: forged, corrupted, sealed under another
    /// key, or sealed for another signature.
    pub fn verify(&self, entry: &WireEntry, signature: u64) -> Result<i64, EntryError> {
        let expected = self.tag(entry.offset, signature);
        // Compare in constant time so that timing does not leak how many tag
        // bytes a forger got right.
        let difference = expected
            .iter()
            .zip(entry.tag.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if difference == 0 {
            Ok(entry.offset)
        } else {
            Err(EntryError::BadTag {
                offset: entry.offset,
            })
        }
    }
}
