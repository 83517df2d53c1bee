//! [`Adapter`] for the adapters whose parent runs one executor on the bench
//! thread and whose sockets speak futures-io: `parallel-smol` and
//! `parallel-glommio`. What differs between them is a [`Host`]: how a
//! measurement runs on the parent's executor, and what a raw socket is on
//! that runtime. The library side is the same code for both (the core's
//! `Parallel<R>`), and the raw side the same steps as tokio's, on the
//! runtime's own sockets, against raw workers running the same runtime
//! ([`RawRuntime`]).

use std::future::Future;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parallel_zygote::async_core::{
    AnyPool, Parallel, PoolConfig, Postcard, Run, Runtime, WarmConfig,
};
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use smol::lock::Semaphore;

use super::adapter::{
    bytes_round_trip, calls_after_churn, clock, cold_spawns, echo, echo_pid, nanos,
    pipelined_calls, plain_round_trip, pool_call, raw_messages, round_trip, shared_throughput,
    sink, spawn_bytes, Adapter, Churn, Encoding, IdleWorkers, Phases, Place, RawWrites,
    ReplyReader, ReplySlot, SharedMemory,
};
use super::os::{self, monotonic_ns, wait_exit};
use super::proto::ProtoCaller;
use super::raw::{RawKind, RawRuntime, RawZygote};
use super::stages::{ByteChunk, Chunk, OurChunk, SeqChunk};
use super::stats::{Budget, Sampler};

/// One parent runtime, as the harness drives it.
pub trait Host: 'static {
    /// The core's runtime of this adapter.
    type Runtime: Runtime;
    /// A socket on this runtime, for the raw baselines.
    type Stream: AsyncRead + AsyncWrite + Unpin;
    /// The runtime of this adapter's raw workers.
    const RAW: RawRuntime;
    /// Whether the library's channel reads differently from [`Host::Stream`]
    /// on this runtime (see [`Adapter::reads_by_peeking`]).
    const READS_BY_PEEKING: bool = false;

    /// Runs `future` to completion on the parent's executor, on this thread:
    /// every measurement runs inside it, where user code would.
    fn block_on<T>(&self, future: impl Future<Output = T>) -> T;

    /// Hands a socket to the runtime (called inside [`Host::block_on`]).
    fn stream(socket: UnixStream) -> Self::Stream;

    /// Runs `calls` as a task spawned on the parent's runtime, awaited from
    /// [`Host::block_on`] (the futures are `Send` on some runtimes only,
    /// hence one method per measurement rather than a generic spawn).
    fn in_task(
        &self,
        parallel: &Parallel<Self::Runtime>,
        calls: Calls,
        budget: Budget,
    ) -> Vec<Duration>;

    /// [`Adapter::raw_relayed`] on `socket`: the reader task reads a
    /// duplicate of it, spawned where the library's drivers run.
    fn raw_relayed(&self, socket: UnixStream, place: Place, budget: Budget) -> Vec<Duration>;

    /// [`Adapter::raw_relayed_pipelined`] on `socket`: the reader task
    /// reads a duplicate of it, spawned where the library's drivers run;
    /// the calls are made in the `block_on` future, as `run_pipelined`'s.
    fn raw_relayed_pipelined(
        &self,
        socket: UnixStream,
        calls: usize,
        in_flight: usize,
        budget: Budget,
    ) -> Vec<Duration>;

    /// [`Adapter::raw_peeked`] on `socket`, in a task where the drivers
    /// run; `None` where the library reads as the runtime's own sockets do.
    fn raw_peeked(&self, _socket: UnixStream, _budget: Budget) -> Option<Vec<Duration>> {
        None
    }

    /// The raw ping-pong on `socket`, where [`Host::in_task`] runs its
    /// calls: the floor of a call awaited there. By default in the
    /// `block_on` future (an executor whose tasks run on this thread).
    fn raw_in_task(&self, socket: UnixStream, budget: Budget) -> Vec<Duration> {
        self.block_on(async move { raw_ping_pongs(Self::stream(socket), budget).await })
    }

    /// The protocol's floor (see [`proto_ping_pongs`]) where
    /// [`raw_in_task`](Self::raw_in_task) makes the raw ping-pong.
    fn proto_in_task(&self, socket: UnixStream, budget: Budget) -> Vec<Duration> {
        self.block_on(async move { proto_ping_pongs(Self::stream(socket), budget).await })
    }

    /// The raw floor (see [`raw_floors`]) where [`Host::in_task`] awaits
    /// its cold spawns. By default in the `block_on` future, as `in_task`.
    fn raw_floor_in_task(&self, raw: Arc<RawZygote>, budget: Budget) -> Vec<Duration>
    where
        Self: Sized,
    {
        self.block_on(raw_floors::<Self>(raw, budget))
    }
}

/// Raw floors on `H` (a raw worker builds its runtime and writes 1 byte),
/// each awaited to that byte.
pub async fn raw_floors<H: Host>(raw: Arc<RawZygote>, budget: Budget) -> Vec<Duration> {
    let mut sampler = Sampler::new(budget);
    while sampler.next() {
        let start = Instant::now();
        let mut stream = H::stream(raw.spawn_on(H::RAW, RawKind::RuntimeByte));
        let mut byte = [0u8];
        stream.read_exact(&mut byte).await.expect("first byte");
        let elapsed = start.elapsed();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await; // the worker exited
        sampler.record(elapsed);
    }
    sampler.finish()
}

/// Raw 8-byte ping-pongs on `stream`, one at a time.
pub async fn raw_ping_pongs<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    budget: Budget,
) -> Vec<Duration> {
    let mut sampler = Sampler::new(budget);
    let mut reply = [0u8; 8];
    let mut x = 0u64;
    while sampler.next() {
        x += 1;
        let start = Instant::now();
        stream.write_all(&x.to_le_bytes()).await.expect("write");
        stream.read_exact(&mut reply).await.expect("read");
        sampler.record(start.elapsed());
    }
    sampler.finish()
}

/// `u64 → u64` calls through `parallel-proto`'s channels on `stream`, to a
/// raw `ProtoEcho` worker, one at a time (see [`super::proto`]).
pub async fn proto_ping_pongs<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    budget: Budget,
) -> Vec<Duration> {
    let mut caller = ProtoCaller::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut sampler = Sampler::new(budget);
    let mut x = 0u64;
    // The hello and `Start` go out, and the worker's hello comes back,
    // outside the clock (as a `Run`'s do before its calls).
    let mut first = true;
    while first || sampler.next() {
        x += 1;
        let start = Instant::now();
        caller.call(x);
        while let Some(transmit) = caller.transmit() {
            stream.write_all(&transmit.head).await.expect("write");
            stream.write_all(&transmit.body).await.expect("write");
            caller.written(transmit);
        }
        loop {
            let read = stream.read(&mut buffer).await.expect("read");
            assert!(read > 0, "proto echo worker hung up");
            if let Some(result) = caller.read(&buffer[..read]) {
                assert_eq!(result, x, "proto echo worker's answer");
                break;
            }
        }
        if !std::mem::take(&mut first) {
            sampler.record(start.elapsed());
        }
    }
    sampler.finish()
}

/// The reader task of [`Adapter::raw_relayed`]: each 8-byte reply on
/// `stream` goes to whoever waits in `slot`, until either side is done.
pub async fn relay_replies<S: AsyncRead + Unpin>(mut stream: S, slot: ReplySlot) {
    let mut reply = [0u8; 8];
    while stream.read_exact(&mut reply).await.is_ok() && slot.answer(reply) {}
}

/// The reader task of [`Adapter::raw_relayed_pipelined`]: reads replies in
/// batches and hands each to its caller, until the socket ends or the task
/// is cancelled.
pub async fn relay_pipelined_replies<S: AsyncRead + Unpin>(mut stream: S, mut reader: ReplyReader) {
    let mut buffer = vec![0u8; 64 * 1024];
    while let Ok(read @ 1..) = stream.read(&mut buffer).await {
        reader.answer(&buffer[..read]);
    }
}

/// The caller of [`Adapter::raw_relayed`]: writes each request on `stream`
/// itself, and waits for the reply that the reader task hands over.
pub async fn relayed_ping_pongs<S: AsyncWrite + Unpin>(
    mut stream: S,
    slot: ReplySlot,
    budget: Budget,
) -> Vec<Duration> {
    let mut sampler = Sampler::new(budget);
    let mut x = 0u64;
    while sampler.next() {
        x += 1;
        let start = Instant::now();
        let reply = slot.expect_reply();
        stream.write_all(&x.to_le_bytes()).await.expect("write");
        let reply = reply.await.expect("the reader task ended");
        sampler.record(start.elapsed());
        assert_eq!(u64::from_le_bytes(reply), x);
    }
    sampler.finish()
}

/// A measurement [`Host::in_task`] runs.
#[derive(Debug, Clone, Copy)]
pub enum Calls {
    RoundTrip,
    Pool,
    /// Cold `spawn(f, x)`s.
    ColdSpawn,
    /// `calls` calls, `in_flight` outstanding.
    Pipelined {
        calls: usize,
        in_flight: usize,
    },
}

impl Calls {
    /// The measurement, as a future on `parallel`.
    pub async fn measure<R: Runtime>(self, parallel: Parallel<R>, budget: Budget) -> Vec<Duration> {
        match self {
            Calls::RoundTrip => round_trip(parallel, budget).await,
            Calls::Pool => pool_call(parallel, budget).await,
            Calls::ColdSpawn => cold_spawns(parallel, budget).await,
            Calls::Pipelined { calls, in_flight } => {
                pipelined_calls(parallel, calls, in_flight, budget).await
            }
        }
    }
}

/// An adapter on the parent runtime `H`.
pub struct HostAdapter<H: Host> {
    name: String,
    key: String,
    parallel: Parallel<H::Runtime>,
    host: Rc<H>,
}

impl<H: Host> HostAdapter<H> {
    pub fn new(
        name: impl Into<String>,
        key: impl Into<String>,
        parallel: Parallel<H::Runtime>,
        host: H,
    ) -> Self {
        HostAdapter {
            name: name.into(),
            key: key.into(),
            parallel,
            host: Rc::new(host),
        }
    }

    fn on_runtime<T>(&self, future: impl Future<Output = T>) -> T {
        self.host.block_on(future)
    }

    fn process_throughput_of<T: Chunk>(
        &self,
        size: usize,
        count: usize,
        shared: SharedMemory,
        budget: Budget,
    ) -> Vec<Duration> {
        let parallel = self.parallel.clone();
        self.on_runtime(async move {
            let mut process = parallel.process(sink::<T>).expect("process");
            if shared != SharedMemory::Default {
                process.sender = process.sender.with_shared_memory_min(shared.min());
            }
            let template = vec![1u8; size];
            let total = (size * count) as u64;
            let mut sampler = Sampler::new(budget);
            while sampler.next() {
                // Built outside the clock: only the transfer is timed.
                let messages: Vec<T> = (0..count).map(|_| T::data(template.clone())).collect();
                // Each thread's scheduling in this transfer, with
                // `PARALLEL_BENCH_SCHEDSTAT` set (see `os::ThreadSched`).
                let watched = [std::process::id() as i32, process.handle.pid().unwrap_or(0)];
                let before = os::ThreadSched::of(&watched);
                let start = Instant::now();
                for message in messages {
                    process.sender.send(message).await.expect("send");
                }
                process.sender.send(T::flush()).await.expect("send");
                let received = process.stream.recv().await.expect("count").expect("count");
                let took = start.elapsed();
                os::ThreadSched::report(
                    &format!("{size} B {}", std::any::type_name::<T>()),
                    took,
                    &before,
                    &os::ThreadSched::of(&watched),
                );
                sampler.record(took);
                assert_eq!(received, total);
            }
            sampler.finish()
        })
    }

    fn process_throughput_shared(
        &self,
        size: usize,
        count: usize,
        fill_in_clock: bool,
        budget: Budget,
    ) -> Vec<Duration> {
        self.on_runtime(shared_throughput(
            self.parallel.clone(),
            size,
            count,
            fill_in_clock,
            budget,
        ))
    }
}

impl<H: Host> Adapter for HostAdapter<H> {
    fn name(&self) -> &str {
        &self.name
    }

    fn key(&self) -> &str {
        &self.key
    }

    fn raw_floor(&self, raw: &Arc<RawZygote>, budget: Budget) -> Vec<Duration> {
        self.on_runtime(raw_floors::<H>(Arc::clone(raw), budget))
    }

    fn raw_floor_at(&self, raw: &Arc<RawZygote>, place: Place, budget: Budget) -> Vec<Duration> {
        match place {
            Place::Main => self.raw_floor(raw, budget),
            Place::Task => self.host.raw_floor_in_task(Arc::clone(raw), budget),
        }
    }

    fn cold_spawn(&self, budget: Budget) -> Vec<Duration> {
        self.on_runtime(cold_spawns(self.parallel.clone(), budget))
    }

    fn cold_spawn_in_task(&self, budget: Budget) -> Vec<Duration> {
        self.host.in_task(&self.parallel, Calls::ColdSpawn, budget)
    }

    fn warm_spawn(&self, config: WarmConfig, budget: Budget) -> Vec<Duration> {
        let parallel = self
            .parallel
            .clone()
            .warm_workers(config)
            .expect("warm workers");
        self.on_runtime(async move {
            let mut sampler = Sampler::new(budget);
            while sampler.next() {
                let start = Instant::now();
                let (value, pid) = parallel.spawn(echo_pid, 7).await.expect("spawn");
                let elapsed = start.elapsed();
                assert_eq!(value, 7);
                // Outside the clock: let the worker exit, and the refill's
                // forks finish, before the next one (on two vCPUs the
                // refill would compete with the spawn it follows).
                wait_exit(pid as i32, Duration::from_secs(5));
                <H::Runtime as Runtime>::sleep(Duration::from_millis(5)).await;
                sampler.record(elapsed);
            }
            sampler.finish()
        })
    }

    fn run_after_churn(&self, churn: Churn, budget: Budget) -> Vec<Duration> {
        self.on_runtime(calls_after_churn(self.parallel.clone(), churn, budget))
    }

    fn fresh_pool_spawn(&self, budget: Budget) -> Vec<Duration> {
        let parallel = self.parallel.clone();
        self.on_runtime(async move {
            let config = PoolConfig::default().size(2).max_calls_per_worker(1);
            let pool =
                AnyPool::<Postcard, H::Runtime>::new(&parallel, config).expect("any-function pool");
            let mut sampler = Sampler::new(budget);
            while sampler.next() {
                let start = Instant::now();
                let (value, pid) = pool.spawn(echo_pid, 7).await.expect("pool spawn");
                let elapsed = start.elapsed();
                assert_eq!(value, 7);
                // Outside the clock, as in `warm_spawn`: the served worker
                // exits and its replacement starts before the next call.
                wait_exit(pid as i32, Duration::from_secs(5));
                <H::Runtime as Runtime>::sleep(Duration::from_millis(5)).await;
                sampler.record(elapsed);
            }
            pool.shutdown();
            sampler.finish()
        })
    }

    fn spawn_phases(&self, warm: Option<WarmConfig>, budget: Budget) -> Vec<Phases> {
        let parallel = match warm {
            Some(config) => self
                .parallel
                .clone()
                .warm_workers(config)
                .expect("warm workers"),
            None => self.parallel.clone(),
        };
        self.on_runtime(async move {
            let mut sampler = Sampler::new(budget);
            let mut phases = Vec::new();
            while sampler.next() {
                let start = monotonic_ns();
                let mut handle = parallel.spawn(clock, ());
                let submitted = monotonic_ns();
                let (ready, pid, faults) = (&mut handle).await.expect("spawn");
                let done = monotonic_ns();
                drop(handle);
                wait_exit(pid as i32, Duration::from_secs(5));
                if warm.is_some() {
                    // Outside the clock, as in `warm_spawn`.
                    <H::Runtime as Runtime>::sleep(Duration::from_millis(5)).await;
                }
                phases.push(Phases {
                    submit: nanos(start, submitted),
                    to_ready: nanos(start, ready),
                    back: nanos(ready, done),
                    faults,
                    tail: nanos(done, monotonic_ns()),
                });
                sampler.record(nanos(start, done));
            }
            let skip = phases.len() - sampler.finish().len();
            phases.split_off(skip)
        })
    }

    fn raw_floor_phases(&self, raw: &Arc<RawZygote>, kind: RawKind, budget: Budget) -> Vec<Phases> {
        self.on_runtime(async move {
            let mut sampler = Sampler::new(budget);
            let mut phases = Vec::new();
            while sampler.next() {
                let start = monotonic_ns();
                let mut stream = H::stream(raw.spawn_on(H::RAW, kind));
                let mut message = [0u8; 24];
                stream.read_exact(&mut message).await.expect("clock");
                let done = monotonic_ns();
                let field = |i: usize| {
                    u64::from_le_bytes(message[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
                };
                wait_exit(field(2) as i32, Duration::from_secs(5));
                phases.push(Phases {
                    submit: Duration::ZERO,
                    to_ready: nanos(start, field(0)),
                    back: nanos(field(0), done),
                    faults: field(1),
                    tail: nanos(done, monotonic_ns()),
                });
                sampler.record(nanos(start, done));
            }
            let skip = phases.len() - sampler.finish().len();
            phases.split_off(skip)
        })
    }

    fn pool_call(&self, place: Place, budget: Budget) -> Vec<Duration> {
        match place {
            Place::Task => self.host.in_task(&self.parallel, Calls::Pool, budget),
            Place::Main => self.on_runtime(pool_call(self.parallel.clone(), budget)),
        }
    }

    fn raw_warm_round_trip(&self, raw: &Arc<RawZygote>, budget: Budget) -> Vec<Duration> {
        let raw = Arc::clone(raw);
        self.on_runtime(async move {
            let mut sampler = Sampler::new(budget);
            let mut reply = [0u8; 8];
            while sampler.next() {
                let (stream, pid) = raw.spawn_ready_on(H::RAW, RawKind::Echo);
                let mut stream = H::stream(stream);
                <H::Runtime as Runtime>::sleep(Duration::from_millis(5)).await;
                let start = Instant::now();
                stream.write_all(&7u64.to_le_bytes()).await.expect("write");
                stream.read_exact(&mut reply).await.expect("read");
                sampler.record(start.elapsed());
                drop(stream);
                wait_exit(pid, Duration::from_secs(5));
            }
            sampler.finish()
        })
    }

    fn raw_after_exec(&self, raw: &Arc<RawZygote>, budget: Budget) -> Vec<Duration> {
        let raw = Arc::clone(raw);
        self.on_runtime(async move {
            let (stream, _pid) = raw.spawn_ready_on(H::RAW, RawKind::Echo);
            let mut stream = H::stream(stream);
            let mut sampler = Sampler::new(budget);
            let mut reply = [0u8; 8];
            while sampler.next() {
                // Outside the clock, as in `run_after_churn`.
                Churn::exec();
                <H::Runtime as Runtime>::sleep(Duration::from_millis(5)).await;
                let start = Instant::now();
                stream.write_all(&7u64.to_le_bytes()).await.expect("write");
                stream.read_exact(&mut reply).await.expect("read");
                sampler.record(start.elapsed());
            }
            sampler.finish()
        })
    }

    fn raw_ping_pong(&self, raw: &Arc<RawZygote>, budget: Budget) -> Vec<Duration> {
        let (stream, _pid) = raw.spawn_ready_on(H::RAW, RawKind::Echo);
        self.host.raw_in_task(stream, budget)
    }

    fn proto_ping_pong(&self, raw: &Arc<RawZygote>, budget: Budget) -> Vec<Duration> {
        let (stream, _pid) = raw.spawn_ready_on(H::RAW, RawKind::ProtoEcho);
        self.host.proto_in_task(stream, budget)
    }

    fn raw_ping_pong_main(&self, raw: &Arc<RawZygote>, budget: Budget) -> Vec<Duration> {
        let (stream, _pid) = raw.spawn_ready_on(H::RAW, RawKind::Echo);
        self.on_runtime(async move { raw_ping_pongs(H::stream(stream), budget).await })
    }

    fn raw_relayed(&self, raw: &Arc<RawZygote>, place: Place, budget: Budget) -> Vec<Duration> {
        let (stream, _pid) = raw.spawn_ready_on(H::RAW, RawKind::Echo);
        self.host.raw_relayed(stream, place, budget)
    }

    fn reads_by_peeking(&self) -> bool {
        H::READS_BY_PEEKING
    }

    fn raw_peeked(&self, raw: &Arc<RawZygote>, budget: Budget) -> Vec<Duration> {
        let (stream, _pid) = raw.spawn_ready_on(H::RAW, RawKind::Echo);
        match self.host.raw_peeked(stream, budget) {
            Some(samples) => samples,
            None => self.raw_ping_pong(raw, budget),
        }
    }

    fn raw_relayed_pipelined(
        &self,
        raw: &Arc<RawZygote>,
        calls: usize,
        in_flight: usize,
        budget: Budget,
    ) -> Vec<Duration> {
        let (stream, _pid) = raw.spawn_ready_on(H::RAW, RawKind::Echo);
        self.host
            .raw_relayed_pipelined(stream, calls, in_flight, budget)
    }

    fn run_round_trip(&self, place: Place, budget: Budget) -> Vec<Duration> {
        match place {
            Place::Task => self.host.in_task(&self.parallel, Calls::RoundTrip, budget),
            Place::Main => self.on_runtime(round_trip(self.parallel.clone(), budget)),
        }
    }

    fn run_bytes_round_trip(&self, size: usize, budget: Budget) -> Vec<Duration> {
        self.on_runtime(bytes_round_trip(self.parallel.clone(), size, budget))
    }

    fn run_plain_round_trip(&self, size: usize, budget: Budget) -> Vec<Duration> {
        self.on_runtime(plain_round_trip(self.parallel.clone(), size, budget))
    }

    fn spawn_bytes(&self, warm: Option<WarmConfig>, size: usize, budget: Budget) -> Vec<Duration> {
        self.on_runtime(spawn_bytes(self.parallel.clone(), warm, size, budget))
    }

    fn raw_pipelined(
        &self,
        raw: &Arc<RawZygote>,
        calls: usize,
        in_flight: usize,
        budget: Budget,
    ) -> Vec<Duration> {
        let (stream, _pid) = raw.spawn_ready_on(H::RAW, RawKind::Echo);
        // A reader and a writer at once: two descriptors of the one socket,
        // each handed to the runtime (tokio's `into_split` shares one).
        let writer = stream.try_clone().expect("dup");
        self.on_runtime(async move {
            let (mut reader, mut writer) = (H::stream(stream), H::stream(writer));
            let mut sampler = Sampler::new(budget);
            while sampler.next() {
                let start = Instant::now();
                let permits = Semaphore::new(in_flight);
                let write = async {
                    for x in 0..calls as u64 {
                        permits.acquire().await.forget();
                        writer.write_all(&x.to_le_bytes()).await.expect("write");
                    }
                };
                let read = async {
                    let mut buffer = vec![0u8; 64 * 1024];
                    let mut received = 0;
                    while received < calls * 8 {
                        let read = reader.read(&mut buffer).await.expect("read");
                        assert!(read > 0, "echo worker hung up");
                        let replies_before = received / 8;
                        received += read;
                        permits.add_permits(received / 8 - replies_before);
                    }
                };
                smol::future::zip(write, read).await;
                sampler.record(start.elapsed());
            }
            sampler.finish()
        })
    }

    fn run_pipelined(&self, calls: usize, in_flight: usize, budget: Budget) -> Vec<Duration> {
        self.on_runtime(pipelined_calls(
            self.parallel.clone(),
            calls,
            in_flight,
            budget,
        ))
    }

    fn run_pipelined_in_task(
        &self,
        calls: usize,
        in_flight: usize,
        budget: Budget,
    ) -> Vec<Duration> {
        let calls = Calls::Pipelined { calls, in_flight };
        self.host.in_task(&self.parallel, calls, budget)
    }

    fn raw_throughput(
        &self,
        raw: &Arc<RawZygote>,
        size: usize,
        count: usize,
        writes: RawWrites,
        budget: Budget,
    ) -> Vec<Duration> {
        let (stream, _pid) = raw.spawn_ready_on(H::RAW, RawKind::Sink);
        self.on_runtime(async move {
            let mut stream = H::stream(stream);
            let buffer = vec![1u8; size];
            let total = (size * count) as u64;
            let mut sampler = Sampler::new(budget);
            while sampler.next() {
                // Built outside the clock, as the `process` rows' messages.
                let messages = raw_messages(writes, size, count);
                let start = Instant::now();
                stream.write_all(&total.to_le_bytes()).await.expect("write");
                for index in 0..count {
                    match messages.get(index) {
                        Some(message) if writes.copies() => {
                            // Copied as the library copies (see
                            // `parallel_proto::copy`), not slower.
                            let copy = parallel_proto::copy::to_vec(message);
                            stream.write_all(&copy).await.expect("write");
                        }
                        Some(message) => stream.write_all(message).await.expect("write"),
                        None => stream.write_all(&buffer).await.expect("write"),
                    }
                }
                let mut ack = [0u8; 8];
                stream.read_exact(&mut ack).await.expect("ack");
                sampler.record(start.elapsed());
                assert_eq!(u64::from_le_bytes(ack), total);
            }
            sampler.finish()
        })
    }

    fn process_throughput(
        &self,
        size: usize,
        count: usize,
        encoding: Encoding,
        shared: SharedMemory,
        budget: Budget,
    ) -> Vec<Duration> {
        match encoding {
            Encoding::Bytes => self.process_throughput_of::<ByteChunk>(size, count, shared, budget),
            Encoding::Seq => self.process_throughput_of::<SeqChunk>(size, count, shared, budget),
            Encoding::Plain => self.process_throughput_of::<Vec<u8>>(size, count, shared, budget),
            Encoding::Ours => self.process_throughput_of::<OurChunk>(size, count, shared, budget),
            Encoding::SharedReady | Encoding::SharedFilled => self.process_throughput_shared(
                size,
                count,
                encoding == Encoding::SharedFilled,
                budget,
            ),
        }
    }

    fn idle_workers(&self, count: usize) -> IdleWorkers {
        let parallel = self.parallel.clone();
        let (runs, pids) = self.on_runtime(async move {
            let runs: Vec<_> = (0..count)
                .map(|_| parallel.run(echo).expect("run"))
                .collect();
            // The spawns are all in flight already: waiting in turn costs
            // no more than the slowest.
            for run in &runs {
                run.call(1).await.expect("first call");
            }
            let mut pids = Vec::with_capacity(count);
            for run in &runs {
                // The pid comes from the zygote, the answer from the worker:
                // the answer may arrive first.
                let deadline = Instant::now() + Duration::from_secs(5);
                let pid = loop {
                    match run.pid() {
                        Some(pid) => break pid,
                        None if Instant::now() < deadline => smol::future::yield_now().await,
                        None => panic!("no pid for a worker after 5 s"),
                    }
                };
                pids.push(pid);
            }
            (runs, pids)
        });
        IdleWorkers {
            pids: pids.clone(),
            holder: Box::new(IdleRuns::<H> {
                runs,
                pids,
                host: Rc::clone(&self.host),
            }),
        }
    }
}

/// Idle `run` workers. The workers' drivers live on the parent's executor,
/// which runs only inside [`Host::block_on`] (glommio's, for one): dropping
/// the handles runs it until the workers have exited.
struct IdleRuns<H: Host> {
    runs: Vec<Run<u64, u64, parallel_zygote::async_core::Postcard, H::Runtime>>,
    pids: Vec<i32>,
    host: Rc<H>,
}

impl<H: Host> Drop for IdleRuns<H> {
    fn drop(&mut self) {
        let runs = std::mem::take(&mut self.runs);
        let pids = std::mem::take(&mut self.pids);
        self.host.block_on(async move {
            drop(runs);
            let deadline = Instant::now() + Duration::from_secs(5);
            for pid in pids {
                while !wait_exit(pid, Duration::ZERO) && Instant::now() < deadline {
                    <H::Runtime as Runtime>::sleep(Duration::from_millis(1)).await;
                }
            }
        });
    }
}
