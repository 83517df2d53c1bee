//! The pieces of the `spawn` benchmark (see `benches/spawn.rs`).
//!
//! | module | what it holds |
//! |---|---|
//! | [`stats`] | sampling budgets, median / p10 / p90, the report and its tables |
//! | [`os`] | the OS baselines: plain fork, fork+exec, posix_spawn; heap, PSS, pidfd waits |
//! | [`raw`] | the raw floor: a hand-written mini zygote with no library code |
//! | [`blocking`] | `parallel-zygote`'s blocking client, runtime-free |
//! | [`adapter`] | the [`Adapter`](adapter::Adapter) trait: one impl per async adapter |
//! | [`tokio_adapter`] | that trait for `parallel-tokio` (any parent runtime flavour) |
//! | [`futures_adapter`] | that trait for a parent with one executor on the bench thread and futures-io sockets, given a `Host` |
//! | [`smol_adapter`] | the `Host` of `parallel-smol` (`smol::block_on`, async-io) |
//! | [`glommio_adapter`] | the `Host` of `parallel-glommio` (a glommio `LocalExecutor`) |
//! | [`peers`] | procspawn, the peer measured in the same run |
//! | [`stages`] | the throughput messages, and each stage's CPU cost in-process |

pub mod adapter;
pub mod blocking;
pub mod futures_adapter;
pub mod glommio_adapter;
pub mod os;
pub mod peers;
pub mod proto;
pub mod raw;
pub mod smol_adapter;
pub mod stages;
pub mod stats;
pub mod tokio_adapter;
