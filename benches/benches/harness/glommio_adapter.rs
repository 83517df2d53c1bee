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
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, MsgFlags};

use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use parallel_glommio::{Glommio, Parallel};

use std::time::Duration;

use super::adapter::{Place, ReplySlot, ReplySlots};
use super::futures_adapter::{
    raw_floors, relay_pipelined_replies, relay_replies, relayed_ping_pongs, Calls, Host,
    HostAdapter,
};
use super::raw::{RawRuntime, RawZygote};
use super::stats::{Budget, Sampler};

/// The glommio parent: one `LocalExecutor` on the bench thread.
pub struct GlommioHost {
    executor: LocalExecutor,
}

impl Host for GlommioHost {
    type Runtime = Glommio;
    type Stream = glommio::net::UnixStream;
    const RAW: RawRuntime = RawRuntime::Glommio;
    const READS_BY_PEEKING: bool = true;

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

    /// The library's read, raw: each request written with a direct
    /// `sendmsg`, then a 1-byte `MSG_PEEK` through io_uring on a duplicate
    /// that glommio owns, then the reply taken with `recvmsg` and room for
    /// descriptors (see `adapter-glommio/src/runtime.rs`), in a
    /// `spawn_local` task as the drivers are.
    fn raw_peeked(&self, socket: UnixStream, budget: Budget) -> Option<Vec<Duration>> {
        socket.set_nonblocking(true).expect("non-blocking socket");
        let duplicate = socket.try_clone().expect("duplicate socket");
        Some(self.executor.run(async move {
            glommio::spawn_local(async move {
                let peer = Self::stream(duplicate);
                let mut sampler = Sampler::new(budget);
                let mut x = 0u64;
                while sampler.next() {
                    x += 1;
                    let start = Instant::now();
                    send_all(&socket, &x.to_le_bytes());
                    let mut reply = [0u8; 8];
                    let mut got = 0;
                    while got < reply.len() {
                        peer.peek(&mut [0u8; 1]).await.expect("peek");
                        got += receive(&socket, &mut reply[got..]);
                    }
                    sampler.record(start.elapsed());
                }
                sampler.finish()
            })
            .await
        }))
    }

    /// A `spawn_local` task on the same executor (glommio has no other).
    fn in_task(&self, parallel: &Parallel, calls: Calls, budget: Budget) -> Vec<Duration> {
        let parallel = parallel.clone();
        self.executor
            .run(async move { glommio::spawn_local(calls.measure(parallel, budget)).await })
    }

    /// In a task of the executor, as [`in_task`](Host::in_task).
    fn raw_floor_in_task(&self, raw: Arc<RawZygote>, budget: Budget) -> Vec<Duration> {
        self.executor
            .run(async move { glommio::spawn_local(raw_floors::<Self>(raw, budget)).await })
    }
}

/// Writes `bytes` with `sendmsg`, as the library's channel does (a few bytes
/// always fit the socket buffer of an idle echo).
fn send_all(socket: &UnixStream, bytes: &[u8]) {
    let mut sent = 0;
    while sent < bytes.len() {
        match sendmsg::<()>(
            socket.as_raw_fd(),
            &[IoSlice::new(&bytes[sent..])],
            &[],
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(n) => sent += n,
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            Err(error) => panic!("sendmsg: {error}"),
        }
    }
}

/// One `recvmsg` with room for descriptors, as the library's channel reads
/// (none come here); what it read, 0 on `EAGAIN` (the peek that follows
/// waits).
fn receive(socket: &UnixStream, buffer: &mut [u8]) -> usize {
    let mut control = nix::cmsg_space!([std::os::fd::RawFd; 8]);
    let mut iov = [IoSliceMut::new(buffer)];
    match recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_CMSG_CLOEXEC,
    ) {
        Ok(message) if message.bytes > 0 => message.bytes,
        Ok(_) => panic!("the echo worker hung up"),
        Err(Errno::EAGAIN | Errno::EINTR) => 0,
        Err(error) => panic!("recvmsg: {error}"),
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
