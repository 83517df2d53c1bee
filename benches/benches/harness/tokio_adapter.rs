//! [`Adapter`] for `parallel-tokio`, on a multi-thread or a current-thread
//! parent runtime. Raw baselines use tokio on both sides too.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parallel_tokio::{AnyPool, Parallel, PoolConfig, WarmConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

use super::adapter::{
    bytes_round_trip, calls_after_churn, clock, cold_spawns, echo, echo_pid, nanos,
    pipelined_calls, plain_round_trip, pool_call, raw_messages, round_trip, shared_throughput,
    sink, spawn_bytes, Adapter, Churn, Encoding, IdleWorkers, Phases, Place, RawWrites, ReplySlot,
    ReplySlots, SharedMemory,
};
use super::os::{monotonic_ns, wait_exit};
use super::proto::ProtoCaller;
use super::raw::{RawKind, RawZygote};
use super::stages::{ByteChunk, Chunk, OurChunk, SeqChunk};
use super::stats::{Budget, Sampler};

/// `parallel-tokio` with its parent runtime.
pub struct TokioAdapter {
    name: String,
    key: String,
    parallel: Parallel,
    /// Shared with the idle workers' holder ([`IdleRuns`]), which drops
    /// them on it.
    runtime: Arc<Runtime>,
    multi_thread: bool,
}

impl TokioAdapter {
    /// On `Runtime::new()`, the multi-thread runtime most programs use.
    pub fn multi_thread(parallel: &Parallel) -> TokioAdapter {
        TokioAdapter {
            name: "tokio (multi-thread parent)".into(),
            key: "tokio-mt".into(),
            parallel: parallel.clone(),
            runtime: Arc::new(Runtime::new().expect("runtime")),
            multi_thread: true,
        }
    }

    /// On a current-thread parent runtime: no cross-thread wake-ups.
    pub fn current_thread(parallel: &Parallel) -> TokioAdapter {
        TokioAdapter {
            name: "tokio (current-thread parent)".into(),
            key: "tokio-ct".into(),
            parallel: parallel.clone(),
            runtime: Arc::new(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime"),
            ),
            multi_thread: false,
        }
    }

    /// Runs a measurement as a task, where user code runs: on a worker thread
    /// of the multi-thread runtime, on the only thread of the other.
    fn on_runtime<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> T {
        if self.multi_thread {
            let task = self.runtime.spawn(future);
            self.runtime.block_on(task).expect("measurement task")
        } else {
            self.runtime.block_on(future)
        }
    }

    /// Runs a measurement at `place`: a spawned task, or the `block_on`
    /// future itself (on the calling thread, which on the multi-thread
    /// runtime is none of its workers).
    fn at<T: Send + 'static>(
        &self,
        place: Place,
        future: impl Future<Output = T> + Send + 'static,
    ) -> T {
        match place {
            Place::Task => {
                let task = self.runtime.spawn(future);
                self.runtime.block_on(task).expect("measurement task")
            }
            Place::Main => self.runtime.block_on(future),
        }
    }
}

/// Raw floors (a raw worker builds its runtime and writes 1 byte), each
/// awaited to that byte.
async fn raw_floors(raw: Arc<RawZygote>, budget: Budget) -> Vec<Duration> {
    let mut sampler = Sampler::new(budget);
    while sampler.next() {
        let start = Instant::now();
        let mut stream = tokio_stream(raw.spawn(RawKind::RuntimeByte));
        let mut byte = [0u8];
        stream.read_exact(&mut byte).await.expect("first byte");
        let elapsed = start.elapsed();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await; // the worker exited
        sampler.record(elapsed);
    }
    sampler.finish()
}

fn tokio_stream(stream: std::os::unix::net::UnixStream) -> UnixStream {
    stream.set_nonblocking(true).expect("nonblocking");
    UnixStream::from_std(stream).expect("tokio stream")
}

impl Adapter for TokioAdapter {
    fn name(&self) -> &str {
        &self.name
    }

    fn key(&self) -> &str {
        &self.key
    }

    fn raw_floor(&self, raw: &Arc<RawZygote>, budget: Budget) -> Vec<Duration> {
        self.on_runtime(raw_floors(Arc::clone(raw), budget))
    }

    fn raw_floor_at(&self, raw: &Arc<RawZygote>, place: Place, budget: Budget) -> Vec<Duration> {
        self.at(place, raw_floors(Arc::clone(raw), budget))
    }

    fn cold_spawn(&self, budget: Budget) -> Vec<Duration> {
        self.at(Place::Main, cold_spawns(self.parallel.clone(), budget))
    }

    fn cold_spawn_in_task(&self, budget: Budget) -> Vec<Duration> {
        self.at(Place::Task, cold_spawns(self.parallel.clone(), budget))
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
                tokio::time::sleep(Duration::from_millis(5)).await;
                sampler.record(elapsed);
            }
            sampler.finish()
        })
    }

    fn run_after_churn(&self, churn: Churn, budget: Budget) -> Vec<Duration> {
        self.at(
            Place::Main,
            calls_after_churn(self.parallel.clone(), churn, budget),
        )
    }

    fn fresh_pool_spawn(&self, budget: Budget) -> Vec<Duration> {
        let parallel = self.parallel.clone();
        self.on_runtime(async move {
            let config = PoolConfig::default().size(2).max_calls_per_worker(1);
            let pool = AnyPool::new(&parallel, config).expect("any-function pool");
            let mut sampler = Sampler::new(budget);
            while sampler.next() {
                let start = Instant::now();
                let (value, pid) = pool.spawn(echo_pid, 7).await.expect("pool spawn");
                let elapsed = start.elapsed();
                assert_eq!(value, 7);
                // Outside the clock, as in `warm_spawn`: the served worker
                // exits and its replacement starts before the next call.
                wait_exit(pid as i32, Duration::from_secs(5));
                tokio::time::sleep(Duration::from_millis(5)).await;
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
                    tokio::time::sleep(Duration::from_millis(5)).await;
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
        let raw = Arc::clone(raw);
        self.on_runtime(async move {
            let mut sampler = Sampler::new(budget);
            let mut phases = Vec::new();
            while sampler.next() {
                let start = monotonic_ns();
                let mut stream = tokio_stream(raw.spawn(kind));
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
        self.at(place, pool_call(self.parallel.clone(), budget))
    }

    fn raw_warm_round_trip(&self, raw: &Arc<RawZygote>, budget: Budget) -> Vec<Duration> {
        let raw = Arc::clone(raw);
        self.on_runtime(async move {
            let mut sampler = Sampler::new(budget);
            let mut reply = [0u8; 8];
            while sampler.next() {
                let (stream, pid) = raw.spawn_ready(RawKind::Echo);
                let mut stream = tokio_stream(stream);
                tokio::time::sleep(Duration::from_millis(5)).await;
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
            let (stream, _pid) = raw.spawn_ready(RawKind::Echo);
            let mut stream = tokio_stream(stream);
            let mut sampler = Sampler::new(budget);
            let mut reply = [0u8; 8];
            while sampler.next() {
                // Outside the clock, as in `run_after_churn`.
                Churn::exec();
                tokio::time::sleep(Duration::from_millis(5)).await;
                let start = Instant::now();
                stream.write_all(&7u64.to_le_bytes()).await.expect("write");
                stream.read_exact(&mut reply).await.expect("read");
                sampler.record(start.elapsed());
            }
            sampler.finish()
        })
    }

    fn raw_ping_pong(&self, raw: &Arc<RawZygote>, budget: Budget) -> Vec<Duration> {
        self.raw_ping_pong_at(Place::Task, raw, budget)
    }

    fn proto_ping_pong(&self, raw: &Arc<RawZygote>, budget: Budget) -> Vec<Duration> {
        let (stream, _pid) = raw.spawn_ready(RawKind::ProtoEcho);
        self.at(Place::Task, async move {
            let mut stream = tokio_stream(stream);
            let mut caller = ProtoCaller::new();
            let mut buffer = vec![0u8; 64 * 1024];
            let mut sampler = Sampler::new(budget);
            let mut x = 0u64;
            // The hello and `Start` go out, and the worker's hello comes
            // back, outside the clock (as a `Run`'s do before its calls).
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
        })
    }

    fn raw_ping_pong_main(&self, raw: &Arc<RawZygote>, budget: Budget) -> Vec<Duration> {
        self.raw_ping_pong_at(Place::Main, raw, budget)
    }

    fn raw_relayed(&self, raw: &Arc<RawZygote>, place: Place, budget: Budget) -> Vec<Duration> {
        self.raw_relayed_at(place, raw, budget)
    }

    fn run_round_trip(&self, place: Place, budget: Budget) -> Vec<Duration> {
        self.at(place, round_trip(self.parallel.clone(), budget))
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
        let (stream, _pid) = raw.spawn_ready(RawKind::Echo);
        self.on_runtime(async move {
            let (mut reader, mut writer) = tokio_stream(stream).into_split();
            let mut sampler = Sampler::new(budget);
            while sampler.next() {
                let start = Instant::now();
                let permits = Semaphore::new(in_flight);
                let write = async {
                    for x in 0..calls as u64 {
                        permits.acquire().await.expect("permit").forget();
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
                tokio::join!(write, read);
                sampler.record(start.elapsed());
            }
            sampler.finish()
        })
    }

    fn raw_relayed_pipelined(
        &self,
        raw: &Arc<RawZygote>,
        calls: usize,
        in_flight: usize,
        budget: Budget,
    ) -> Vec<Duration> {
        let (stream, _pid) = raw.spawn_ready(RawKind::Echo);
        let writer = stream.try_clone().expect("duplicate socket");
        let slots = ReplySlots::default();
        let relay = {
            let _entered = self.runtime.enter();
            let mut reader = tokio_stream(stream);
            let mut replies = slots.reader();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                while let Ok(read @ 1..) = reader.read(&mut buffer).await {
                    replies.answer(&buffer[..read]);
                }
            })
        };
        // Where `run_pipelined` makes its calls.
        let samples =
            self.on_runtime(async move { slots.pipelined(writer, calls, in_flight, budget).await });
        relay.abort();
        samples
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
        let parallel = self.parallel.clone();
        self.at(
            Place::Task,
            pipelined_calls(parallel, calls, in_flight, budget),
        )
    }

    fn raw_throughput(
        &self,
        raw: &Arc<RawZygote>,
        size: usize,
        count: usize,
        writes: RawWrites,
        budget: Budget,
    ) -> Vec<Duration> {
        let (stream, _pid) = raw.spawn_ready(RawKind::Sink);
        self.on_runtime(async move {
            let mut stream = tokio_stream(stream);
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
                        None if Instant::now() < deadline => tokio::task::yield_now().await,
                        None => panic!("no pid for a worker after 5 s"),
                    }
                };
                pids.push(pid);
            }
            (runs, pids)
        });
        IdleWorkers {
            pids: pids.clone(),
            holder: Box::new(IdleRuns {
                runs,
                pids,
                runtime: Arc::clone(&self.runtime),
            }),
        }
    }
}

/// Idle `run` workers. Their drivers are tasks of the parent runtime: on a
/// current-thread runtime they run only inside `block_on`, so the handles
/// are dropped there, and it runs until the workers have exited. (Dropped
/// outside it, as they once were, no driver told its worker to end: the
/// harness then waited 5 s for each worker's exit, which looked like a hang
/// with 100 or 500 live workers.)
struct IdleRuns {
    runs: Vec<parallel_tokio::Run<u64, u64>>,
    pids: Vec<i32>,
    runtime: Arc<Runtime>,
}

impl Drop for IdleRuns {
    fn drop(&mut self) {
        let runs = std::mem::take(&mut self.runs);
        let pids = std::mem::take(&mut self.pids);
        self.runtime.block_on(async move {
            drop(runs);
            let deadline = Instant::now() + Duration::from_secs(5);
            for pid in pids {
                while !wait_exit(pid, Duration::ZERO) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
    }
}

impl TokioAdapter {
    fn raw_ping_pong_at(
        &self,
        place: Place,
        raw: &Arc<RawZygote>,
        budget: Budget,
    ) -> Vec<Duration> {
        let (stream, _pid) = raw.spawn_ready(RawKind::Echo);
        self.at(place, async move {
            let mut stream = tokio_stream(stream);
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
        })
    }

    fn raw_relayed_at(&self, place: Place, raw: &Arc<RawZygote>, budget: Budget) -> Vec<Duration> {
        let (stream, _pid) = raw.spawn_ready(RawKind::Echo);
        let slot = ReplySlot::default();
        let reader = {
            let slot = slot.clone();
            let _entered = self.runtime.enter();
            let (mut reader, writer) = tokio_stream(stream).into_split();
            let relay = tokio::spawn(async move {
                let mut reply = [0u8; 8];
                while reader.read_exact(&mut reply).await.is_ok() && slot.answer(reply) {}
            });
            (relay, writer)
        };
        let (relay, mut writer) = reader;
        let samples = self.at(place, async move {
            let mut sampler = Sampler::new(budget);
            let mut x = 0u64;
            while sampler.next() {
                x += 1;
                let start = Instant::now();
                let reply = slot.expect_reply();
                writer.write_all(&x.to_le_bytes()).await.expect("write");
                let reply = reply.await.expect("the reader task ended");
                sampler.record(start.elapsed());
                assert_eq!(u64::from_le_bytes(reply), x);
            }
            sampler.finish()
        });
        relay.abort();
        samples
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
                let start = Instant::now();
                for message in messages {
                    process.sender.send(message).await.expect("send");
                }
                process.sender.send(T::flush()).await.expect("send");
                let received = process.stream.recv().await.expect("count").expect("count");
                sampler.record(start.elapsed());
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
