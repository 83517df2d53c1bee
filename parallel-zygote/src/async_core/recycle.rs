//! Buffers of large payloads, recycled: a `process` message that came
//! through the socket is read into a buffer of its own, which the `Bytes`
//! decoded from it share; once the message and every `Bytes` of it are
//! dropped, the buffer comes back here and the next large payload received
//! (on any channel of this process) is read into it. On the sending side,
//! a large frame's payload, once written, comes back here too, and a
//! message whose bytes are copied (serde_bytes, say: nothing lent) is
//! encoded into it.
//!
//! Without this, every message took a fresh allocation of its size: from
//! 1 MiB up, glibc hands such buffers out and trims them back to the
//! kernel often enough that a worker receiving 1 MiB messages faulted in
//! 130 pages per MiB received (BENCHMARKS.md, session 8), half of all its
//! CPU time.
//!
//! What is kept is bounded: at most [`KEEP_BYTES`] of idle buffers per
//! process, in at most [`KEEP_COUNT`] buffers of [`RECYCLE_MIN`] to
//! [`KEEP_MAX`] bytes each; a buffer that does not fit is freed as before,
//! and when the pool is full the oldest buffers make room for newer ones.
//! Idle buffers stay until reused or the process exits. A buffer comes
//! back only when nothing refers to it any more (it is behind an `Arc`
//! that every `Bytes` of it holds), so no `Bytes` ever sees its bytes
//! change; one taken out with [`Bytes::into_vec`](super::Bytes::into_vec)
//! is the user's and never comes back.

use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Payloads at least this large are received into recycled buffers (the
/// size from which a payload is read straight into its own buffer, and
/// from which a `Bytes` is lent to the socket rather than copied).
pub(crate) const RECYCLE_MIN: usize = 16 * 1024;

/// Most bytes of idle buffers the process keeps.
pub(crate) const KEEP_BYTES: usize = 16 * 1024 * 1024;

/// Largest buffer kept: two fit in [`KEEP_BYTES`].
pub(crate) const KEEP_MAX: usize = KEEP_BYTES / 2;

/// Most buffers kept (a payload's buffer is looked for among them).
pub(crate) const KEEP_COUNT: usize = 64;

/// Idle buffers, oldest first; empty, each of `RECYCLE_MIN..=KEEP_MAX`
/// bytes of capacity.
static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// The capacity of the buffers in [`FREE`], read without the lock so that
/// taking from an empty pool costs no lock.
static IDLE: AtomicUsize = AtomicUsize::new(0);

fn free() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
    // The pool holds plain buffers: a panic while it was locked left it
    // consistent (at worst `IDLE` is off, which only bounds the pool).
    FREE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An empty buffer for a payload of `len` bytes: a recycled one with room
/// for it (and not more than twice as large) if there is one, newest
/// first; else a `Vec` without capacity. The frame decoders'
/// [`PayloadAlloc`](parallel_proto::PayloadAlloc): it never allocates, so
/// the length a peer's header announces cannot make it.
pub(crate) fn take(len: usize) -> Vec<u8> {
    if !(RECYCLE_MIN..=KEEP_MAX).contains(&len) || IDLE.load(Ordering::Relaxed) == 0 {
        return Vec::new();
    }
    let mut free = free();
    let fits = |buffer: &Vec<u8>| buffer.capacity() >= len && buffer.capacity() / 2 <= len;
    let Some(at) = free.iter().rposition(fits) else {
        return Vec::new();
    };
    let buffer = free.remove(at);
    IDLE.fetch_sub(buffer.capacity(), Ordering::Relaxed);
    buffer
}

/// Keeps `buffer` for a later payload if it is of a size kept, making room
/// by dropping the oldest; else drops it. Also the socket's outbox's
/// recycler: a large frame's encoded payload, once written, is the next
/// large message's encode buffer.
pub(crate) fn give(mut buffer: Vec<u8>) {
    let capacity = buffer.capacity();
    if !(RECYCLE_MIN..=KEEP_MAX).contains(&capacity) {
        return;
    }
    buffer.clear();
    let mut evicted = Vec::new();
    {
        let mut free = free();
        let mut idle = IDLE.load(Ordering::Relaxed);
        while !free.is_empty() && (idle + capacity > KEEP_BYTES || free.len() >= KEEP_COUNT) {
            let oldest = free.remove(0);
            idle -= oldest.capacity();
            evicted.push(oldest);
        }
        free.push(buffer);
        IDLE.store(idle + capacity, Ordering::Relaxed);
    }
    // Freed outside the lock.
    drop(evicted);
}

/// A heap buffer that [`Bytes`](super::Bytes) share: a large `Vec` the
/// user converted into a `Bytes`, or a payload received through the socket,
/// which goes back to the pool once dropped (once the last `Bytes` of it,
/// and the decode, let go of its `Arc`).
pub(crate) struct HeapBuffer {
    bytes: Vec<u8>,
    recycle: bool,
}

impl HeapBuffer {
    /// The user's buffer: freed when dropped.
    pub(crate) fn new(bytes: Vec<u8>) -> HeapBuffer {
        HeapBuffer {
            bytes,
            recycle: false,
        }
    }

    /// A received payload: recycled when dropped.
    pub(crate) fn received(bytes: Vec<u8>) -> HeapBuffer {
        HeapBuffer {
            bytes,
            recycle: true,
        }
    }

    /// The buffer, taken out: it is the caller's and never recycled.
    pub(crate) fn into_vec(mut self) -> Vec<u8> {
        self.recycle = false;
        std::mem::take(&mut self.bytes)
    }
}

impl Deref for HeapBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for HeapBuffer {
    fn drop(&mut self) {
        if self.recycle {
            give(std::mem::take(&mut self.bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The pool is the process's: other tests running at the same time may
    /// take from it or fill it, so these tests assert only what holds
    /// whatever they do.
    #[test]
    fn a_received_buffer_is_never_handed_out_while_anything_holds_it() {
        let len = 3 * RECYCLE_MIN;
        let held = Arc::new(HeapBuffer::received(vec![7u8; len]));
        let pointer = held.as_ptr();
        let clone = Arc::clone(&held);
        drop(held);
        // Everything the pool has of this size, taken: not the held one.
        let mut taken = Vec::new();
        loop {
            let buffer = take(len);
            if buffer.capacity() == 0 {
                break;
            }
            assert_ne!(buffer.as_ptr(), pointer, "handed out while held");
            taken.push(buffer);
        }
        assert!(clone.iter().all(|&byte| byte == 7), "unchanged");
        drop(clone);
        // Now it may be handed out, empty.
        let again = take(len);
        assert!(again.is_empty());
    }

    #[test]
    fn a_buffer_taken_out_is_never_recycled_and_small_or_huge_ones_are_not_kept() {
        let buffer = HeapBuffer::received(vec![1u8; 2 * RECYCLE_MIN]);
        let pointer = buffer.as_ptr();
        let mine = buffer.into_vec();
        assert_eq!(mine.as_ptr(), pointer);
        // Asked for its size, the pool never hands out the user's buffer.
        for _ in 0..KEEP_COUNT {
            let other = take(2 * RECYCLE_MIN);
            assert_ne!(other.as_ptr(), pointer);
        }
        assert_eq!(mine, vec![1u8; 2 * RECYCLE_MIN]);
        assert_eq!(take(RECYCLE_MIN - 1).capacity(), 0, "small: not asked");
        assert_eq!(take(KEEP_MAX + 1).capacity(), 0, "huge: not kept");
    }

    #[test]
    fn the_pool_stays_within_its_bounds() {
        for _ in 0..4 {
            drop(HeapBuffer::received(Vec::with_capacity(KEEP_MAX)));
        }
        for _ in 0..2 * KEEP_COUNT {
            drop(HeapBuffer::received(Vec::with_capacity(RECYCLE_MIN)));
        }
        let free = free();
        assert!(free.len() <= KEEP_COUNT);
        let idle: usize = free.iter().map(Vec::capacity).sum();
        assert!(idle <= KEEP_BYTES, "{idle} bytes idle");
        assert_eq!(idle, IDLE.load(Ordering::Relaxed));
    }
}
