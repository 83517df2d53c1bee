//! Typed entry points: turning a non-capturing function into a [`WireEntry`]
//! and back, in any process of this tree.
//!
//! A function `F: Fn(A) -> R` that captures nothing is a zero-sized type, so
//! the code of `trampoline::<F, A, R>` alone determines what runs: the
//! trampoline's address *is* the function. We send its offset from an anchor,
//! sealed with the tree's [`EntryKey`] and the fingerprint of `fn(A) -> R`, and
//! turn a verified offset back into that function pointer on the other side.
//! Workers are forked, never exec'd, so every process maps the binary at the
//! same address.

use std::any::TypeId;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::OnceLock;

use parallel_proto::{EntryError, EntryKey, WireEntry};

use crate::Error;

/// The tree's key, drawn once in `start` before the zygote is forked, so that
/// the zygote and every worker inherit it and nobody else knows it.
static KEY: OnceLock<EntryKey> = OnceLock::new();

pub(crate) fn install_key(key: EntryKey) -> bool {
    KEY.set(key).is_ok()
}

pub(crate) fn key() -> Result<&'static EntryKey, Error> {
    KEY.get().ok_or(Error::NotStarted)
}

/// The symbol every offset is measured from.
#[inline(never)]
fn anchor() {
    // Never called: only its address matters. The black_box keeps the
    // compiler from merging it with another empty function.
    std::hint::black_box(());
}

fn anchor_address() -> i64 {
    anchor as fn() as usize as i64
}

/// The fingerprint of the function type `fn(A) -> R`, identical in every
/// process of the tree (same binary, same `TypeId`s).
pub fn signature<A: 'static, R: 'static>() -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    TypeId::of::<fn(A) -> R>().hash(&mut hasher);
    hasher.finish()
}

struct ZeroSized<F>(PhantomData<F>);

impl<F> ZeroSized<F> {
    const CHECK: () = assert!(
        std::mem::size_of::<F>() == 0,
        "parallel: a function run in another process must not capture anything. \
         Use a fn item or a closure without captures, and pass data as its arguments."
    );
}

/// Calls the zero-sized `F` without having a value of it.
fn trampoline<F, A, R>(argument: A) -> R
where
    F: Fn(A) -> R + Copy + 'static,
{
    // SAFETY: `F` is zero-sized (checked at compile time by `seal`, the only
    // way to obtain this trampoline's address), so it has no bytes that could
    // be invalid; it is inhabited, since `seal` was handed a value of it; and
    // it is `Copy`, so it has no destructor and conjuring one duplicates
    // nothing observable. This is the value `seal` was given.
    let function: F = unsafe { std::mem::zeroed::<F>() };
    function(argument)
}

/// A sealed entry that resolves to `fn(A) -> R`.
pub struct Entry<A: 'static, R: 'static = ()> {
    wire: WireEntry,
    _signature: PhantomData<fn(A) -> R>,
}

impl<A: 'static, R: 'static> Clone for Entry<A, R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A: 'static, R: 'static> Copy for Entry<A, R> {}

impl<A: 'static, R: 'static> std::fmt::Debug for Entry<A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("offset", &self.wire.offset)
            .finish_non_exhaustive()
    }
}

impl<A: 'static, R: 'static> Entry<A, R> {
    /// Seals `function` under the tree's key. Fails with [`Error::NotStarted`]
    /// before [`start`](crate::start).
    ///
    /// `function` must capture nothing; a capturing closure fails to compile
    /// with a message that says so.
    pub fn new<F>(function: F) -> Result<Self, Error>
    where
        F: Fn(A) -> R + Copy + 'static,
    {
        #[allow(clippy::let_unit_value)]
        let () = ZeroSized::<F>::CHECK;
        let _ = function;
        let address = trampoline::<F, A, R> as fn(A) -> R as usize as i64;
        let wire = key()?.seal(address - anchor_address(), signature::<A, R>());
        Ok(Entry {
            wire,
            _signature: PhantomData,
        })
    }

    /// What goes on the wire.
    pub fn wire(&self) -> WireEntry {
        self.wire
    }

    /// Verifies a received entry as a `fn(A) -> R` of this tree.
    pub fn verify(wire: WireEntry) -> Result<Self, Error> {
        key()?
            .verify(&wire, signature::<A, R>())
            .map_err(Error::BadEntry)?;
        Ok(Entry {
            wire,
            _signature: PhantomData,
        })
    }

    /// The function this entry names.
    pub fn resolve(&self) -> fn(A) -> R {
        let address = (anchor_address() + self.wire.offset) as usize;
        // SAFETY: an `Entry<A, R>` exists only after its tag verified under the
        // tree's key with the fingerprint of `fn(A) -> R` (`new` seals, `verify`
        // checks). The key never leaves this process tree and only `new` seals
        // with it, always the address of a `trampoline::<F, A, R>`, which has
        // exactly the type `fn(A) -> R`. Every process of the tree runs the same
        // binary at the same load address (fork without exec), so the address
        // is that function here too. Fn pointers and usize have the same size.
        unsafe { std::mem::transmute::<usize, fn(A) -> R>(address) }
    }

    /// Verifies and calls: the one way a received entry is ever run.
    pub fn call(wire: WireEntry, argument: A) -> Result<R, EntryError> {
        let key = KEY.get().ok_or(EntryError::BadTag {
            offset: wire.offset,
        })?;
        key.verify(&wire, signature::<A, R>())?;
        let entry = Entry::<A, R> {
            wire,
            _signature: PhantomData,
        };
        Ok(entry.resolve()(argument))
    }
}
