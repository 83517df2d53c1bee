//! `spawn!`: a capture list instead of an argument tuple.

/// Spawns a function with the listed local values as its argument, without
/// writing the tuple twice (procspawn's `spawn!` is the model).
///
/// `spawn!(spawner, (a, b, c) || body)` is
/// `spawner.spawn(|(a, b, c)| body, (a, b, c))`: the values are moved into
/// the argument, and the body sees them under the same names. `spawner` is
/// anything with a `spawn(function, argument)` method: a
/// [`Parallel`](crate::async_core::Parallel) (returns a
/// [`JoinHandle`](crate::async_core::JoinHandle)) or an
/// [`AnyPool`](crate::async_core::AnyPool) (returns a
/// [`PoolTask`](crate::async_core::PoolTask)).
///
/// Each capture is `name`, `mut name` (mutable in the body), `value => name`
/// (the local `value`, seen as `name` in the body) or `value => mut name`.
/// As for any function sent to a worker, the body may use nothing else of
/// the caller's (a capture fails to compile, saying so).
///
/// ```no_run
/// # use parallel_zygote::async_core::{Error, Parallel, Runtime};
/// # async fn demo<R: Runtime>(parallel: Parallel<R>) -> Result<(), Error> {
/// let name = String::from("primes");
/// let limit = 30u32;
/// let step = 1u32;
/// let handle = parallel_zygote::spawn!(parallel, (name, limit => max, mut step) || async move {
///     let mut found = Vec::new();
///     let mut n = 2;
///     while n <= max {
///         if (2..n).all(|d| n % d != 0) {
///             found.push(n);
///         }
///         n += step;
///         step = 1;
///     }
///     format!("{name}: {found:?}")
/// });
/// assert_eq!(handle.await?, "primes: [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]");
/// # Ok(()) }
/// ```
#[macro_export]
macro_rules! spawn {
    ($spawner:expr, ($($captures:tt)*) || $body:expr $(,)?) => {
        $crate::__parallel_spawn!([$spawner] [$body] [] [] $($captures)*)
    };
}

/// The muncher behind [`spawn!`]: collects values and patterns, one
/// capture at a time.
#[doc(hidden)]
#[macro_export]
macro_rules! __parallel_spawn {
    ([$s:expr] [$body:expr] [$($v:tt)*] [$($p:tt)*] mut $name:ident $(, $($rest:tt)*)?) => {
        $crate::__parallel_spawn!([$s] [$body] [$($v)* $name,] [$($p)* mut $name,] $($($rest)*)?)
    };
    ([$s:expr] [$body:expr] [$($v:tt)*] [$($p:tt)*] $value:ident => mut $name:ident $(, $($rest:tt)*)?) => {
        $crate::__parallel_spawn!([$s] [$body] [$($v)* $value,] [$($p)* mut $name,] $($($rest)*)?)
    };
    ([$s:expr] [$body:expr] [$($v:tt)*] [$($p:tt)*] $value:ident => $name:ident $(, $($rest:tt)*)?) => {
        $crate::__parallel_spawn!([$s] [$body] [$($v)* $value,] [$($p)* $name,] $($($rest)*)?)
    };
    ([$s:expr] [$body:expr] [$($v:tt)*] [$($p:tt)*] $name:ident $(, $($rest:tt)*)?) => {
        $crate::__parallel_spawn!([$s] [$body] [$($v)* $name,] [$($p)* $name,] $($($rest)*)?)
    };
    ([$s:expr] [$body:expr] [$($v:tt)*] [$($p:tt)*]) => {
        $s.spawn(|($($p)*)| $body, ($($v)*))
    };
}
