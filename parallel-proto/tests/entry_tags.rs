//! Entry tags: a sealed entry verifies under the same key and signature, and
//! any change (tag, offset, key, signature, or a random entry) is refused.

mod support;

use parallel_proto::{EntryError, EntryKey, WireEntry};
use proptest::prelude::*;
use support::strategies::wire_entry;

const KEY: [u8; 16] = [0x5a; 16];
const SIGNATURE: u64 = 0xfeed_beef;

fn key() -> EntryKey {
    EntryKey::from_bytes(KEY)
}

fn bad_tag(offset: i64) -> Result<i64, EntryError> {
    Err(EntryError::BadTag { offset })
}

#[test]
fn a_sealed_entry_verifies_and_returns_its_offset() {
    for offset in [0, 1, -1, 0x1234_5678, i64::MIN, i64::MAX] {
        let entry = key().seal(offset, SIGNATURE);
        assert_eq!(entry.offset, offset);
        assert_eq!(key().verify(&entry, SIGNATURE), Ok(offset));
    }
}

#[test]
fn sealing_is_deterministic_for_one_key() {
    assert_eq!(key().seal(64, SIGNATURE), key().seal(64, SIGNATURE));
    let copy = EntryKey::from_bytes(key().to_bytes());
    assert_eq!(copy.verify(&key().seal(64, SIGNATURE), SIGNATURE), Ok(64));
}

#[test]
fn every_flipped_tag_bit_is_refused() {
    let entry = key().seal(0x4000, SIGNATURE);
    for bit in 0..128 {
        let mut forged = entry;
        forged.tag[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(
            key().verify(&forged, SIGNATURE),
            bad_tag(0x4000),
            "bit {bit}"
        );
    }
}

#[test]
fn a_changed_offset_is_refused() {
    let entry = key().seal(0x4000, SIGNATURE);
    for offset in [0x4001, 0x3fff, -0x4000, 0] {
        let moved = WireEntry { offset, ..entry };
        assert_eq!(key().verify(&moved, SIGNATURE), bad_tag(offset));
    }
}

#[test]
fn an_entry_sealed_under_another_key_is_refused() {
    let mut other = KEY;
    other[15] ^= 1;
    let entry = EntryKey::from_bytes(other).seal(0x4000, SIGNATURE);
    assert_eq!(key().verify(&entry, SIGNATURE), bad_tag(0x4000));
}

#[test]
fn an_entry_sealed_for_another_signature_is_refused() {
    let entry = key().seal(0x4000, SIGNATURE);
    assert_eq!(key().verify(&entry, SIGNATURE + 1), bad_tag(0x4000));
    assert_eq!(key().verify(&entry, 0), bad_tag(0x4000));
}

#[test]
fn the_bad_tag_error_says_what_happened() {
    let error = EntryError::BadTag { offset: 0x40 };
    assert_eq!(
        error.to_string(),
        "entry point at offset 0x40 has a bad tag: it was tampered with, comes from another process tree, or names a function of another type; it was not run"
    );
}

#[test]
fn debug_output_does_not_reveal_the_key() {
    assert_eq!(format!("{:?}", key()), "EntryKey(..)");
}

proptest! {
    #![proptest_config(support::proptest_config(512))]

    #[test]
    fn random_entries_never_verify(entry in wire_entry(), signature in any::<u64>()) {
        prop_assert_eq!(key().verify(&entry, signature), bad_tag(entry.offset));
    }

    #[test]
    fn sealed_entries_verify_only_with_their_signature(
        offset in any::<i64>(),
        signature in any::<u64>(),
        other in any::<u64>(),
    ) {
        let entry = key().seal(offset, signature);
        prop_assert_eq!(key().verify(&entry, signature), Ok(offset));
        prop_assume!(other != signature);
        prop_assert_eq!(key().verify(&entry, other), bad_tag(offset));
    }
}
