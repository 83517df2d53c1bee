//! [`Adapter`](super::adapter::Adapter) for `parallel-smol`: each
//! measurement runs under `smol::block_on` on the bench thread, as a smol
//! program's `main` would; the workers' drivers run on smol's global
//! executor (its own thread, as `parallel-smol` spawns them with
//! `smol::spawn`), and async-io's reactor has its thread too.
//!
//! Raw baselines: async-io on both sides. The parent's end is an
//! `Async<UnixStream>` under `smol::block_on`; the raw worker runs
//! `async_io::block_on` over a `smol::LocalExecutor` with an
//! `Async<UnixStream>` (what a `parallel-smol` worker runs).
//!
//! The fork hazard: a process forked after its parent used async-io's global
//! reactor inherits a reactor it cannot use. Nothing here touches async-io
//! before `main` has forked both zygotes (this adapter is built after them,
//! and async-io starts lazily, on the first `Async` or `smol::spawn`); every
//! raw or library worker is forked by one of the zygotes, which never touch
//! async-io, so each worker builds its own reactor (see `raw.rs`).

use std::future::Future;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use async_io::Async;
use parallel_smol::{Parallel, Smol};

use std::time::Duration;

use super::adapter::{Place, ReplySlot, ReplySlots};
use super::futures_adapter::{
    proto_ping_pongs, raw_floors, raw_ping_pongs, relay_pipelined_replies, relay_replies,
    relayed_ping_pongs, Calls, Host, HostAdapter,
};
use super::raw::{RawRuntime, RawZygote};
use super::stats::Budget;

/// The smol parent: `smol::block_on` on the bench thread.
pub struct SmolHost;

impl Host for SmolHost {
    type Runtime = Smol;
    type Stream = Async<UnixStream>;
    const RAW: RawRuntime = RawRuntime::Smol;

    fn block_on<T>(&self, future: impl Future<Output = T>) -> T {
        smol::block_on(future)
    }

    fn stream(socket: UnixStream) -> Async<UnixStream> {
        Async::new(socket).expect("async-io stream")
    }

    /// On smol's global executor, where the drivers run too.
    fn in_task(&self, parallel: &Parallel, calls: Calls, budget: Budget) -> Vec<Duration> {
        smol::block_on(smol::spawn(calls.measure(parallel.clone(), budget)))
    }

    /// The reader on smol's global executor, where the drivers run; the
    /// caller there too, or in the `block_on` future.
    fn raw_relayed_pipelined(
        &self,
        socket: UnixStream,
        calls: usize,
        in_flight: usize,
        budget: Budget,
    ) -> Vec<Duration> {
        let writer = socket.try_clone().expect("duplicate socket");
        smol::block_on(async move {
            let slots = ReplySlots::default();
            let relay = smol::spawn(relay_pipelined_replies(
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
        smol::block_on(async move {
            let slot = ReplySlot::default();
            let relay = smol::spawn(relay_replies(Self::stream(reader), slot.clone()));
            let calls = relayed_ping_pongs(Self::stream(socket), slot, budget);
            let samples = match place {
                Place::Task => smol::spawn(calls).await,
                Place::Main => calls.await,
            };
            // Ends the worker: it sees the end of its input, and the reader then ours.
            let _ = relay.cancel().await;
            samples
        })
    }

    /// On smol's global executor, where the drivers run and
    /// [`in_task`](Host::in_task) awaits its cold spawns.
    fn raw_floor_in_task(&self, raw: Arc<RawZygote>, budget: Budget) -> Vec<Duration> {
        smol::block_on(smol::spawn(raw_floors::<Self>(raw, budget)))
    }

    /// On smol's global executor too: the floor of the calls made there.
    fn raw_in_task(&self, socket: UnixStream, budget: Budget) -> Vec<Duration> {
        smol::block_on(smol::spawn(async move {
            raw_ping_pongs(Self::stream(socket), budget).await
        }))
    }

    /// On smol's global executor, as the raw ping-pong.
    fn proto_in_task(&self, socket: UnixStream, budget: Budget) -> Vec<Duration> {
        smol::block_on(smol::spawn(async move {
            proto_ping_pongs(Self::stream(socket), budget).await
        }))
    }
}

/// `parallel-smol` on a handle of the shared zygote.
pub type SmolAdapter = HostAdapter<SmolHost>;

impl SmolAdapter {
    pub fn smol(parallel: &Parallel) -> SmolAdapter {
        HostAdapter::new(
            "smol (`smol::block_on` parent)",
            "smol",
            parallel.clone(),
            SmolHost,
        )
    }
}
