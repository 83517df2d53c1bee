//! `parallel-smol`: the binding of `parallel` to the smol runtime.
//!
//! Not written yet: no issue has asked for it. Until then, use
//! `parallel-zygote`'s blocking client from smol's blocking pool, or
//! `parallel-tokio`. This crate exists so that the workspace layout is final.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
