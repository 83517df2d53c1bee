//! [`Adapter`](super::adapter::Adapter) for `parallel-glommio`: one glommio
//! `LocalExecutor` on the bench thread, and every measurement runs inside it
//! (`LocalExecutor::run`), since the workers' channels and drivers are
//! `!Send` and live on that executor (the drivers are `spawn_local` tasks:
//! they run only while a measurement does).
//!
//! The parent's executor is glommio's default (unbound, 128-deep rings) but
//! for its io memory: 64 KiB (glommio's floor, what the workers and the
//! crate's tests use) instead of 10 MiB. That memory is registered with
//! io_uring, hence pinned, and the kernel copies pinned pages into the child
//! at every `fork()` of the process: with 10 MiB, each fork of this parent
//! cost 2.4-3.4 ms more (plain fork of the 0 GiB parent: 2.6-3.6 ms instead
//! of 0.15-0.17 ms), which would distort every OS baseline of the run. The
//! parent does no storage I/O, the only use of that memory.
//!
//! Raw baselines: glommio on both sides, on glommio's own sockets
//! (`glommio::net::UnixStream`: io_uring receive, and a non-blocking send
//! first). The raw worker builds its executor as a `parallel-glommio` worker
//! does (unbound, 64 KiB of io memory, 8-deep rings, membarrier registered
//! first). The library's channel cannot use glommio's sockets (they carry no
//! descriptors): it waits for reads with a 1-byte `MSG_PEEK` on a duplicate
//! and for writes by a backed-off `poll(POLLOUT)` on glommio timers (see
//! `adapter-glommio/src/runtime.rs`); the ratios show what that costs.

use std::future::Future;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;

use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use parallel_glommio::{Glommio, Parallel};

use std::time::Duration;

use super::adapter::{Place, ReplySlot, ReplySlots};
use super::futures_adapter::{
    relay_pipelined_replies, relay_replies, relayed_ping_pongs, Calls, Host, HostAdapter,
};
use super::raw::RawRuntime;
use super::stats::Budget;

/// The glommio parent: one `LocalExecutor` on the bench thread.
pub struct GlommioHost {
    executor: LocalExecutor,
}

impl Host for GlommioHost {
    type Runtime = Glommio;
    type Stream = glommio::net::UnixStream;
    const RAW: RawRuntime = RawRuntime::Glommio;

    fn block_on<T>(&self, future: impl Future<Output = T>) -> T {
        self.executor.run(future)
    }

    fn stream(socket: UnixStream) -> glommio::net::UnixStream {
        // SAFETY: `into_raw_fd` gives up ownership of an open descriptor and
        // `from_raw_fd` takes it over; nothing else refers to it.
        unsafe { glommio::net::UnixStream::from_raw_fd(socket.into_raw_fd()) }
    }

    /// The reader a `spawn_local` task, as the drivers are; the caller
    /// another, or the future `run` was given.
    fn raw_relayed_pipelined(
        &self,
        socket: UnixStream,
        calls: usize,
        in_flight: usize,
        budget: Budget,
    ) -> Vec<Duration> {
        let writer = socket.try_clone().expect("duplicate socket");
        self.executor.run(async move {
            let slots = ReplySlots::default();
            let relay = glommio::spawn_local(relay_pipelined_replies(
                Self::stream(socket),
                slots.reader(),
            ));
            let samples = slots.pipelined(writer, calls, in_flight, budget).await;
            let _ = relay.cancel().await;
            samples
        })
    }

    fn raw_relayed(&self, socket: UnixStream, place: Place, budget: Budget) -> Vec<Duration> {
        let reader = socket.try_clone().expect("duplicate socket");
        self.executor.run(async move {
            let slot = ReplySlot::default();
            let relay = glommio::spawn_local(relay_replies(Self::stream(reader), slot.clone()));
            let calls = relayed_ping_pongs(Self::stream(socket), slot, budget);
            let samples = match place {
                Place::Task => glommio::spawn_local(calls).await,
                Place::Main => calls.await,
            };
            let _ = relay.cancel().await;
            samples
        })
    }

    /// A `spawn_local` task on the same executor (glommio has no other).
    fn in_task(&self, parallel: &Parallel, calls: Calls, budget: Budget) -> Vec<Duration> {
        let parallel = parallel.clone();
        self.executor
            .run(async move { glommio::spawn_local(calls.measure(parallel, budget)).await })
    }
}

/// `parallel-glommio` on a handle of the shared zygote.
pub type GlommioAdapter = HostAdapter<GlommioHost>;

impl GlommioAdapter {
    /// Builds the parent's executor: call after the zygotes are forked
    /// (glommio starts a thread), with the process registered for
    /// membarrier while it was single-threaded (see `main`).
    pub fn glommio(parallel: &Parallel) -> GlommioAdapter {
        let executor = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(64 << 10)
            .make()
            .expect("the parent's glommio executor");
        HostAdapter::new(
            "glommio (`LocalExecutor` parent)",
            "glommio",
            parallel.clone(),
            GlommioHost { executor },
        )
    }
}
