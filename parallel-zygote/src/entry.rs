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
//!
//! # Functions sent to a worker must capture nothing
//!
//! A worker runs the function in another process, which has none of the
//! caller's variables: the function must be a `fn` item or a closure that
//! captures nothing, and its data goes in as its argument. Rust has no bound
//! for "captures nothing" (that is, "is zero-sized"), so this is enforced in
//! two steps, and only the first runs under `cargo check`:
//!
//! | the closure captures | e.g. | rejected by | error |
//! |---|---|---|---|
//! | a value that is not `Copy`: a `String`, `Vec`, `Box`, `Arc`... | `move \|x\| x + name.len()` | `cargo check`, `cargo build`, rust-analyzer | E0277 at the closure: "functions sent to a worker must capture nothing: `{closure@src/main.rs:9:25: 9:38}` captures a value" |
//! | a local, by reference (no `move`) | `\|x\| x + offset` | `cargo check`, `cargo build`, rust-analyzer | E0373 "closure may outlive the current function", suggesting `move` (then another row applies) |
//! | only `Copy` values: a `u64`, a `&'static str`, a `fn` pointer... | `move \|x\| x + offset` | **`cargo build` only** (and `cargo run`, `cargo test`): **not `cargo check`, not rust-analyzer** | E0080 "evaluation panicked: functions sent to a worker must capture nothing: ..." |
//!
//! The first step is the bound [`CapturesNothing`] (a stand-in for
//! `Copy + 'static` with its own error message): a non-`Copy` capture fails
//! type checking, at the closure, with the message above. That message
//! needs Rust 1.85 or later, and a function that takes the closure with
//! this bound, as [`Entry::new`] does; with a plain `Copy + 'static` bound,
//! or an older compiler, the same capture gives "the trait bound `String:
//! Copy` is not satisfied in `{closure@..}`".
//!
//! The second step is the constant [`CapturesNothing::ASSERT_ZERO_SIZED`],
//! which fails to evaluate when the function's type is not zero-sized. A
//! constant that depends on a generic type is evaluated only when the
//! generic function is compiled for a concrete type (monomorphization),
//! which `cargo check` and rust-analyzer never do; nothing on stable Rust
//! can move this check to type checking. So a closure that captures only
//! `Copy` values passes `cargo check` and fails at the first `cargo build`,
//! with an error that points at the assertion in this file, not at your
//! code. Your closure is in its notes: the `evaluation of` note names the
//! type that is not zero-sized, `{closure@FILE:LINE:COL}`, either your
//! closure or a closure of the library that wraps it (its type name
//! contains yours); the "encountered while instantiating" note points at
//! the call that evaluated the constant, which is your line when the
//! function you called evaluates it first thing, as [`Entry::new`] does.
//!
//! The fix is the same in every case: pass the data as the argument.
//!
//! ```compile_fail,E0277
//! // A `String` capture: rejected by `cargo check` too, at the closure, with
//! // "functions sent to a worker must capture nothing: `{closure@..}`
//! // captures a value".
//! let name = String::from("worker");
//! let entry = parallel_zygote::Entry::<u64>::new(move |x: u64| {
//!     println!("{name} got {x}");
//! });
//! ```
//!
//! ```compile_fail,E0080
//! // A `u64` capture: passes `cargo check`, rejected by `cargo build` with
//! // "evaluation panicked: functions sent to a worker must capture nothing:
//! // this function captures a `Copy` value (a number, a reference...), which
//! // `cargo check` cannot detect. ...".
//! let offset = 5u64;
//! let entry = parallel_zygote::Entry::<u64>::new(move |x: u64| {
//!     println!("{}", x + offset);
//! });
//! ```
//!
//! ```no_run
//! // The data as the argument: compiles.
//! # fn main() -> Result<(), parallel_zygote::Error> {
//! let entry = parallel_zygote::Entry::<(u64, String)>::new(|(x, name): (u64, String)| {
//!     println!("{name} got {x}");
//! })?;
//! # Ok(()) }
//! ```

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

/// The bound on every function sent to a worker: it must capture nothing.
///
/// Implemented for every `Copy + 'static` type and nothing else, so it can
/// only stand in for `Copy + 'static` in a bound. What it adds is the
/// message when it does not hold: a closure that captures a `String` (or
/// any value that is not `Copy`) gets "functions sent to a worker must
/// capture nothing: `{closure@src/main.rs:9:25: 9:38}` captures a value",
/// at the closure, from `cargo check` as from `cargo build`, rather than
/// "the trait bound `String: Copy` is not satisfied".
///
/// `Copy` is the most a bound can ask: a closure that captures only `Copy`
/// values (a `u64`) satisfies it. [`ASSERT_ZERO_SIZED`](Self::ASSERT_ZERO_SIZED)
/// catches those, at `cargo build` only (see [the module docs](self) for
/// what each command catches). A function taking such a function should
/// bound it with `F: Fn(A) -> R + CapturesNothing` and evaluate
/// `let () = F::ASSERT_ZERO_SIZED;` first thing, so that both errors point
/// at its caller's line.
#[diagnostic::on_unimplemented(
    message = "functions sent to a worker must capture nothing: `{Self}` captures a value",
    label = "captures a value; a worker runs this in another process, where the value does not exist",
    note = "use a `fn` item or a closure that captures nothing, and pass data as the function's argument: `|(x, name): (u64, String)| ..` with the argument `(x, name)`"
)]
pub trait CapturesNothing: Copy + 'static {
    /// Fails to compile (error E0080, at `cargo build`, not `cargo check`)
    /// when `Self` is not zero-sized, that is when the closure captures a
    /// value, even a `Copy` one. Evaluate it as `let () = F::ASSERT_ZERO_SIZED;`
    /// in a generic function: the error's notes then name the closure
    /// (`{closure@FILE:LINE:COL}`) and the call of that function.
    const ASSERT_ZERO_SIZED: () = assert!(
        std::mem::size_of::<Self>() == 0,
        "functions sent to a worker must capture nothing: this function captures a `Copy` value \
         (a number, a reference...), which `cargo check` cannot detect. The closure is the \
         `{{closure@FILE:LINE:COL}}` in the `evaluation of` note below. A worker runs it in \
         another process, where captured values do not exist: pass the data as the function's \
         argument instead, e.g. `|(x, offset): (u64, u64)| ..` with `(x, offset)`."
    );
}

// `do_not_recommend` (Rust 1.85+) makes an unsatisfied bound report
// `CapturesNothing` and its message, not the `Copy` the impl needs; older
// compilers ignore it (the `allow` keeps them quiet about it) and report
// "the trait bound `String: Copy` is not satisfied".
#[allow(unknown_or_malformed_diagnostic_attributes)]
#[diagnostic::do_not_recommend]
impl<F: Copy + 'static> CapturesNothing for F {}

/// Calls the zero-sized `F` without having a value of it.
fn trampoline<F, A, R>(argument: A) -> R
where
    F: Fn(A) -> R + Copy + 'static,
{
    // SAFETY: `F` is zero-sized (checked at compile time by `Entry::new`, the
    // only way to obtain this trampoline's address), so it has no bytes that could
    // be invalid; it is inhabited, since `Entry::new` was handed a value of it; and
    // it is `Copy`, so it has no destructor and conjuring one duplicates
    // nothing observable. This is the value `Entry::new` was given.
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
    /// Seals `function` under the tree's key.
    ///
    /// `function` must capture nothing: a capturing closure fails to compile
    /// with a message that says so ([`CapturesNothing`]; a closure that
    /// captures only `Copy` values is rejected by `cargo build`, not by
    /// `cargo check`: see [the module docs](self)).
    ///
    /// # Errors
    /// [`Error::NotStarted`] before [`start`](crate::start).
    pub fn new<F>(function: F) -> Result<Self, Error>
    where
        F: Fn(A) -> R + CapturesNothing,
    {
        // The soundness of `trampoline` rests on this check: keep it here
        // even where a caller checked first.
        #[allow(clippy::let_unit_value)]
        let () = F::ASSERT_ZERO_SIZED;
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
    ///
    /// # Errors
    /// [`Error::NotStarted`] before [`start`](crate::start);
    /// [`Error::BadEntry`] when `wire` was not sealed by this tree for a
    /// `fn(A) -> R`.
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
    ///
    /// # Errors
    /// [`EntryError`] when `wire` was not sealed by this tree for a
    /// `fn(A) -> R` (or the tree's key is not installed); the function is
    /// then not called.
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
