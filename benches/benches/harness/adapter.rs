//! What the harness asks of each async adapter. Adding an adapter is one
//! impl of [`Adapter`] (a file beside this one, declared in `mod.rs`) and one
//! line in `adapters()` in `benches/spawn.rs` of the `parallel-benches` package;
//! every table then gets its rows, each beside a raw baseline measured on the
//! same runtime. The functions the workers run, the same for every adapter,
//! are here too.
//!
//! | adapter | impl |
//! |---|---|
//! | `parallel-tokio` | [`TokioAdapter`](super::tokio_adapter::TokioAdapter) |
//! | `parallel-smol` | [`HostAdapter`](super::futures_adapter::HostAdapter) of [`SmolHost`](super::smol_adapter::SmolHost) |
//! | `parallel-glommio` | [`HostAdapter`](super::futures_adapter::HostAdapter) of [`GlommioHost`](super::glommio_adapter::GlommioHost) |

use std::any::Any;
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parallel_zygote::async_core::{
    MessageSender, MessageStream, Parallel, Pool, PoolConfig, Postcard, Run, Runtime, WarmConfig,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::os::{minor_faults, monotonic_ns, wait_exit};
use super::raw::{RawKind, RawZygote};
use super::stages::{Chunk, OurChunk};
use super::stats::{Budget, Sampler};

/// Cold `spawn(f, x)`s, each to its result; the worker's exit is waited
/// for outside the clock.
pub async fn cold_spawns<R: Runtime>(parallel: Parallel<R>, budget: Budget) -> Vec<Duration> {
    let mut sampler = Sampler::new(budget);
    let (mut spawns, mut without_pid) = (0, 0);
    while sampler.next() {
        let start = Instant::now();
        let mut handle = parallel.spawn(echo_pid, 7);
        let (value, pid) = (&mut handle).await.expect("spawn");
        let elapsed = start.elapsed();
        assert_eq!(value, 7);
        spawns += 1;
        if handle.pid().is_none() {
            without_pid += 1;
        }
        drop(handle);
        // Outside the clock: let the worker exit before the next one.
        wait_exit(pid as i32, Duration::from_secs(5));
        sampler.record(elapsed);
    }
    if without_pid > 0 {
        eprintln!(
            "  note: JoinHandle::pid() was still None after the result in \
             {without_pid} of {spawns} cold spawns"
        );
    }
    sampler.finish()
}

/// `Run::call`s on a `Run` started outside the clock, each made 5 ms after
/// the process churn `churn` names (see [`Adapter::run_after_churn`]).
pub async fn calls_after_churn<R: Runtime>(
    parallel: Parallel<R>,
    churn: Churn,
    budget: Budget,
) -> Vec<Duration> {
    timed_calls(parallel, Some(churn), budget).await
}

/// `Run::call` round trips, back to back.
pub async fn round_trip<R: Runtime>(parallel: Parallel<R>, budget: Budget) -> Vec<Duration> {
    timed_calls(parallel, None, budget).await
}

/// `Run::call`s carrying `size` bytes each way (a `serde_bytes` buffer, the
/// fast path for bytes): what the protocol's own framing of arguments and
/// results costs once they are large. Made in the `block_on` future.
pub async fn bytes_round_trip<R: Runtime>(
    parallel: Parallel<R>,
    size: usize,
    budget: Budget,
) -> Vec<Duration> {
    let run = parallel.run(echo_bytes).expect("run");
    timed_echoes(run, serde_bytes::ByteBuf::from(vec![3u8; size]), budget).await
}

/// Calls of `run`, a function that sends its argument back, each with a
/// copy of `template` (made outside the clock), after one untimed call.
async fn timed_echoes<R, B>(
    run: Run<B, B, Postcard, R>,
    template: B,
    budget: Budget,
) -> Vec<Duration>
where
    R: Runtime,
    B: Clone + Serialize + DeserializeOwned + AsRef<[u8]> + 'static,
{
    run.call(template.clone()).await.expect("first call");
    let mut sampler = Sampler::new(budget);
    while sampler.next() {
        let argument = template.clone();
        let start = Instant::now();
        let answer = run.call(argument).await.expect("call");
        sampler.record(start.elapsed());
        assert_eq!(answer.as_ref().len(), template.as_ref().len());
    }
    sampler.finish()
}

/// [`bytes_round_trip`]'s function: its bytes back.
pub async fn echo_bytes(bytes: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf {
    bytes
}

/// [`bytes_round_trip`] with a plain `Vec<u8>` each way (no serde_bytes).
pub async fn plain_round_trip<R: Runtime>(
    parallel: Parallel<R>,
    size: usize,
    budget: Budget,
) -> Vec<Duration> {
    let run = parallel.run(echo_plain).expect("run");
    timed_echoes(run, vec![3u8; size], budget).await
}

/// `spawn(echo_bytes, x)`s with `size` bytes each way (a `serde_bytes`
/// buffer), from pre-forked workers (`warm`) or cold, each after the
/// previous worker exited and 5 ms passed, as in the warm-spawn rows: what
/// bulk arguments and results add to a one-shot spawn.
pub async fn spawn_bytes<R: Runtime>(
    parallel: Parallel<R>,
    warm: Option<WarmConfig>,
    size: usize,
    budget: Budget,
) -> Vec<Duration> {
    let parallel = match warm {
        Some(config) => parallel.warm_workers(config).expect("warm workers"),
        None => parallel,
    };
    let template = serde_bytes::ByteBuf::from(vec![3u8; size]);
    let mut sampler = Sampler::new(budget);
    while sampler.next() {
        let argument = template.clone();
        let start = Instant::now();
        let mut handle = parallel.spawn(echo_bytes, argument);
        let answer = (&mut handle).await.expect("spawn");
        let elapsed = start.elapsed();
        assert_eq!(answer.len(), size);
        // Outside the clock: the worker's exit and the refill's forks.
        if let Some(pid) = handle.pid() {
            wait_exit(pid, Duration::from_secs(5));
        }
        drop(handle);
        R::sleep(Duration::from_millis(5)).await;
        sampler.record(elapsed);
    }
    sampler.finish()
}

/// [`plain_round_trip`]'s function: its bytes back.
pub async fn echo_plain(bytes: Vec<u8>) -> Vec<u8> {
    bytes
}

/// `Run::call`s on a `Run` started outside the clock; with `churn`, each
/// made 5 ms after that process churn.
async fn timed_calls<R: Runtime>(
    parallel: Parallel<R>,
    churn: Option<Churn>,
    budget: Budget,
) -> Vec<Duration> {
    let warm = match churn {
        Some(Churn::WarmSpawn(config)) => {
            Some(parallel.clone().warm_workers(config).expect("warm workers"))
        }
        _ => None,
    };
    let run = parallel.run(echo).expect("run");
    run.call(0).await.expect("first call");
    let mut sampler = Sampler::new(budget);
    let mut x = 0;
    while sampler.next() {
        // Outside the clock: the churn, then 5 ms, as before each warm
        // spawn of the warm-spawn rows.
        match (&warm, churn) {
            (Some(warm), _) => {
                let (_, pid) = warm.spawn(echo_pid, 7).await.expect("spawn");
                wait_exit(pid as i32, Duration::from_secs(5));
            }
            (None, Some(Churn::Exec)) => Churn::exec(),
            _ => {}
        }
        if churn.is_some() {
            R::sleep(Duration::from_millis(5)).await;
        }
        x += 1;
        let start = Instant::now();
        let value = run.call(x).await.expect("call");
        sampler.record(start.elapsed());
        assert_eq!(value, x);
    }
    sampler.finish()
}

/// `Pool::call`s.
pub async fn pool_call<R: Runtime>(parallel: Parallel<R>, budget: Budget) -> Vec<Duration> {
    let pool = Pool::new(&parallel, echo, PoolConfig::default()).expect("pool");
    for x in 0..4 {
        pool.call(x).await.expect("warm-up call");
    }
    let mut sampler = Sampler::new(budget);
    let mut x = 0;
    while sampler.next() {
        x += 1;
        let start = Instant::now();
        let value = pool.call(x).await.expect("pool call");
        sampler.record(start.elapsed());
        assert_eq!(value, x);
    }
    sampler.finish()
}

/// The trivial worker function: its argument back.
pub async fn echo(x: u64) -> u64 {
    x
}

/// The trivial function of cold spawns: its argument back, and the worker's
/// pid, so the harness can wait for the worker's exit between samples.
pub async fn echo_pid(x: u64) -> (u64, u32) {
    (x, std::process::id())
}

/// `process` throughput of `SharedBytesMut` buffers, the same on every
/// adapter: one filled before the clock and sent `count` times, or
/// (`fill_in_clock`) a new one per message, created, filled and frozen
/// inside the clock.
pub async fn shared_throughput<R: Runtime>(
    parallel: Parallel<R>,
    size: usize,
    count: usize,
    fill_in_clock: bool,
    budget: Budget,
) -> Vec<Duration> {
    let process = parallel.process(sink::<OurChunk>).expect("process");
    let (sender, mut stream) = (process.sender, process.stream);
    let template = vec![1u8; size];
    let total = (size * count) as u64;
    let mut sampler = Sampler::new(budget);
    while sampler.next() {
        let ready = (!fill_in_clock).then(|| match OurChunk::shared(&template) {
            OurChunk::Data(bytes) => bytes,
            OurChunk::Flush => unreachable!(),
        });
        let start = Instant::now();
        for _ in 0..count {
            let message = match &ready {
                Some(bytes) => OurChunk::Data(bytes.clone()),
                None => OurChunk::shared(&template),
            };
            sender.send(message).await.expect("send");
        }
        sender.send(OurChunk::Flush).await.expect("send");
        let received = stream.recv().await.expect("count").expect("count");
        sampler.record(start.elapsed());
        assert_eq!(received, total);
    }
    sampler.finish()
}

/// The `process` worker: counts payload bytes; answers the count at a flush.
/// It reads a byte of every 4 KiB page of each payload, as a worker using
/// its message would: a payload mapped from shared memory (mapped lazily)
/// then pays for its pages here, as the raw rows' reader pays its reads.
pub async fn sink<T: Chunk>(mut input: MessageStream<T>, output: MessageSender<u64>) {
    let mut total = 0u64;
    while let Some(Ok(chunk)) = input.recv().await {
        match chunk.payload() {
            Some(bytes) => {
                let touched = bytes.iter().step_by(4096).fold(0u8, |a, &b| a ^ b);
                std::hint::black_box(touched);
                total += bytes.len() as u64;
            }
            None => {
                if output.send(total).await.is_err() {
                    return;
                }
                total = 0;
            }
        }
    }
}

/// The function of the phase breakdown: when it ran, on the shared clock,
/// its pid, and the page faults its process took until then.
pub async fn clock(_: ()) -> (u64, u32, u64) {
    // Faults first, so reading /proc lands before the clock (as in the raw worker).
    let faults = minor_faults();
    (monotonic_ns(), std::process::id(), faults)
}

/// The time from one `monotonic_ns` reading to a later one.
pub fn nanos(from: u64, to: u64) -> Duration {
    Duration::from_nanos(to.saturating_sub(from))
}

/// What a raw throughput row writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawWrites {
    /// The same buffer every time (hot in the cache): the socket's floor.
    Same,
    /// Messages built before the clock (as the `process` rows' are), each
    /// written as it is: they are no longer in the cache, as a library's
    /// that writes a message without copying it would not be.
    Prebuilt,
    /// The same messages, each copied once into a new buffer before its
    /// write: the floor of a library that encodes a message into a buffer
    /// of its own.
    CopiedOnce,
}

impl RawWrites {
    /// Whether each message is copied before its write.
    pub fn copies(self) -> bool {
        self == RawWrites::CopiedOnce
    }
}

/// The messages a [`RawWrites::Prebuilt`] or [`RawWrites::CopiedOnce`] row
/// writes (none for `Same`).
pub fn raw_messages(writes: RawWrites, size: usize, count: usize) -> Vec<Vec<u8>> {
    match writes {
        RawWrites::Same => Vec::new(),
        RawWrites::Prebuilt | RawWrites::CopiedOnce => {
            (0..count).map(|_| vec![1u8; size]).collect()
        }
    }
}

/// How a `process` message of bytes is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `#[serde(with = "serde_bytes")] Vec<u8>`: one length, then the bytes.
    Bytes,
    /// A plain `Vec<u8>`: serde's sequence of `u8`, one element at a time.
    Seq,
    /// A plain `Vec<u8>` as the whole message (no enum around it), which
    /// the library sends as a byte string where the codec writes both alike.
    Plain,
    /// The library's `Bytes`: one length, then the bytes, no attribute.
    Ours,
    /// A `Bytes` frozen from a `SharedBytesMut` filled before the clock
    /// (as raw writes' buffer is), sent again and again: its memfd travels,
    /// no byte is copied.
    SharedReady,
    /// The same, each message's `SharedBytesMut` created and filled (a copy
    /// from a buffer into its fresh pages) and frozen inside the clock.
    SharedFilled,
}

/// Which path a `process` message takes (the sender's
/// `with_shared_memory_min`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedMemory {
    /// The library's default, the sender left as it is: a memfd from 4 MiB
    /// (from 32 MiB for a message made mostly of large `Bytes`, which the
    /// socket write takes from their own buffers).
    Default,
    /// Always the socket (a threshold no message reaches, so that the
    /// sender still sizes each message first, as it does by default).
    Off,
    /// Always a memfd.
    Always,
}

impl SharedMemory {
    /// The threshold to give the sender (`Default` leaves it unset).
    pub fn min(self) -> Option<usize> {
        match self {
            SharedMemory::Default => Some(4 << 20),
            SharedMemory::Off => Some(usize::MAX),
            SharedMemory::Always => Some(0),
        }
    }
}

/// One cold spawn cut at the moment the worker is ready (worker and parent
/// read the same monotonic clock).
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    /// The spawn call itself, until it returns to the caller.
    pub submit: Duration,
    /// From the request to the worker being ready.
    pub to_ready: Duration,
    /// From the worker being ready to its answer in the parent's task.
    pub back: Duration,
    /// Minor page faults (copy-on-write included) the worker took until ready.
    pub faults: u64,
    /// From the answer in the parent's task to the worker's exit (pidfd):
    /// what the worker still runs after answering.
    pub tail: Duration,
}

/// What runs before each sample of [`Adapter::run_after_churn`] (outside
/// the clock), 5 ms before the timed call.
#[derive(Clone, Copy, Debug)]
pub enum Churn {
    /// A warm `spawn(f, x)` to its result (pre-forked workers of this
    /// config), its worker's exit, and (1 ms later) the refill's fork and
    /// boot: what happens before each sample of the warm-spawn rows.
    WarmSpawn(WarmConfig),
    /// `true` run to its exit (`std::process::Command`): a fork, an exec
    /// and an exit that have nothing to do with this library.
    Exec,
}

impl Churn {
    /// Runs `true` to its end (the [`Churn::Exec`] step).
    pub fn exec() {
        let status = std::process::Command::new("true")
            .status()
            .expect("running `true` (the churn of the run-after-exec row)");
        assert!(status.success(), "`true` failed: {status}");
    }
}

/// Where a measurement's future runs on the parent's runtime: the wake-ups
/// a call's answer costs differ (on tokio's multi-thread runtime the
/// `block_on` future runs on the caller's thread, outside the workers, so
/// an answer crosses threads to wake it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A task spawned on the runtime (`tokio::spawn`, `smol::spawn`,
    /// glommio's `spawn_local`), awaited from `block_on`.
    Task,
    /// The future given to `block_on` itself: how `#[tokio::main]`,
    /// `smol::block_on(async { .. })` and README code run.
    Main,
}

impl Place {
    /// For row keys and labels.
    pub fn name(self) -> &'static str {
        match self {
            Place::Task => "task",
            Place::Main => "main",
        }
    }
}

/// The raw ping-pong in the library's shape (see [`Adapter::raw_relayed`]):
/// the caller leaves a one-shot channel here and writes its request; a
/// reader task reads the reply and answers through it, under this lock, as
/// a worker's driver answers a waiting `Run::call`.
#[derive(Clone, Default)]
pub struct ReplySlot(Arc<Mutex<Option<futures_channel::oneshot::Sender<[u8; 8]>>>>);

impl ReplySlot {
    /// Where the next reply goes; set before the request is written.
    pub fn expect_reply(&self) -> futures_channel::oneshot::Receiver<[u8; 8]> {
        let (sender, receiver) = futures_channel::oneshot::channel();
        *self.0.lock().expect("reply slot") = Some(sender);
        receiver
    }

    /// Hands a reply read by the reader task to its caller; false once
    /// nobody waits (the measurement is over).
    pub fn answer(&self, reply: [u8; 8]) -> bool {
        let sender = self.0.lock().expect("reply slot").take();
        sender.is_some_and(|sender| sender.send(reply).is_ok())
    }
}

/// Pipelined raw ping-pongs in the library's shape (see
/// [`Adapter::raw_relayed_pipelined`]): each call leaves a one-shot channel
/// under its request's number and writes its request itself; a reader task
/// reads the replies in batches and answers them as a worker's driver
/// answers pipelined `Run::call`s: the waiting channels taken under the
/// lock, sent to after it is released.
#[derive(Clone, Default)]
pub struct ReplySlots(Arc<Mutex<HashMap<u64, futures_channel::oneshot::Sender<()>>>>);

impl ReplySlots {
    /// Where the reply to `request` goes; set before the request is written.
    pub fn expect_reply(&self, request: u64) -> futures_channel::oneshot::Receiver<()> {
        let (sender, receiver) = futures_channel::oneshot::channel();
        self.0.lock().expect("reply slots").insert(request, sender);
        receiver
    }

    /// The reader task's side: hands every whole 8-byte reply of the bytes
    /// read to its caller, keeping a reply split across reads for the next.
    pub fn reader(&self) -> ReplyReader {
        ReplyReader {
            slots: self.clone(),
            partial: Vec::with_capacity(8),
            answered: Vec::new(),
        }
    }

    /// `calls` pipelined ping-pongs, at most `in_flight` outstanding, per
    /// sample, on `writer` (a non-blocking duplicate of the socket whose
    /// replies a [`ReplyReader`] hands over). The request is written by the
    /// call itself, as a `Run::call` finding the channel idle writes its own.
    pub async fn pipelined(
        &self,
        writer: UnixStream,
        calls: usize,
        in_flight: usize,
        budget: Budget,
    ) -> Vec<Duration> {
        use futures_util::StreamExt;
        let mut sampler = Sampler::new(budget);
        while sampler.next() {
            let start = Instant::now();
            let answered = futures_util::stream::iter(0..calls as u64)
                .map(|x| {
                    let reply = self.expect_reply(x);
                    let mut writer = &writer;
                    async move {
                        // 8 bytes with at most `in_flight` (64) requests
                        // unanswered: far below the socket's buffer.
                        writer.write_all(&x.to_le_bytes()).expect("write");
                        reply.await.is_ok()
                    }
                })
                .buffer_unordered(in_flight)
                .filter(|answered| std::future::ready(*answered))
                .count()
                .await;
            sampler.record(start.elapsed());
            assert_eq!(answered, calls);
        }
        sampler.finish()
    }
}

/// The reader task's half of [`ReplySlots`].
pub struct ReplyReader {
    slots: ReplySlots,
    /// The start of a reply whose rest has not been read yet.
    partial: Vec<u8>,
    /// The channels of one read's replies, sent to once the lock is released.
    answered: Vec<futures_channel::oneshot::Sender<()>>,
}

impl ReplyReader {
    /// Answers the replies in `bytes`, just read.
    pub fn answer(&mut self, mut bytes: &[u8]) {
        {
            let mut slots = self.slots.0.lock().expect("reply slots");
            let mut take = |reply: [u8; 8]| {
                let request = u64::from_le_bytes(reply);
                slots.remove(&request).expect("a reply to a request made")
            };
            if !self.partial.is_empty() {
                let missing = (8 - self.partial.len()).min(bytes.len());
                self.partial.extend_from_slice(&bytes[..missing]);
                bytes = &bytes[missing..];
                if let Ok(reply) = <[u8; 8]>::try_from(self.partial.as_slice()) {
                    self.answered.push(take(reply));
                    self.partial.clear();
                }
            }
            let mut replies = bytes.chunks_exact(8);
            for reply in replies.by_ref() {
                self.answered
                    .push(take(reply.try_into().expect("8-byte chunk")));
            }
            self.partial.extend_from_slice(replies.remainder());
        }
        for sender in self.answered.drain(..) {
            let _ = sender.send(());
        }
    }
}

/// `calls` persistent-worker calls per sample, at most `in_flight`
/// outstanding (`buffer_unordered`), on `parallel`'s runtime.
pub async fn pipelined_calls<R: Runtime>(
    parallel: Parallel<R>,
    calls: usize,
    in_flight: usize,
    budget: Budget,
) -> Vec<Duration> {
    use futures_util::StreamExt;
    let run = parallel.run(echo).expect("run");
    run.call(0).await.expect("first call");
    let mut sampler = Sampler::new(budget);
    // Each thread's scheduling per sample, with `PARALLEL_BENCH_SCHEDSTAT`
    // set (see `os::ThreadSched`).
    let watched = [std::process::id() as i32, run.pid().unwrap_or(0)];
    while sampler.next() {
        let before = super::os::ThreadSched::of(&watched);
        let start = Instant::now();
        let answered = futures_util::stream::iter(0..calls as u64)
            .map(|x| run.call(x))
            .buffer_unordered(in_flight)
            .filter(|result| std::future::ready(result.is_ok()))
            .count()
            .await;
        let took = start.elapsed();
        let after = super::os::ThreadSched::of(&watched);
        super::os::ThreadSched::report("pipelined calls", took, &before, &after);
        sampler.record(took);
        assert_eq!(answered, calls);
    }
    sampler.finish()
}

/// Workers held alive for the scaling and memory figures.
pub struct IdleWorkers {
    pub pids: Vec<i32>,
    /// Whatever keeps them alive; dropping it lets them exit.
    pub holder: Box<dyn Any>,
}

/// One async adapter on one parent runtime. Each method takes samples per
/// [`Budget`]; every sample times exactly the operation named and lets any
/// worker it started exit before the next one.
pub trait Adapter {
    /// Shown in row labels, e.g. `tokio (multi-thread parent)`.
    fn name(&self) -> &str;
    /// Short, for row keys, e.g. `tokio-mt`.
    fn key(&self) -> &str;

    /// Raw floor on this runtime: the raw zygote forks a worker that builds a
    /// current-thread runtime of this adapter's kind and writes one byte,
    /// awaited here.
    fn raw_floor(&self, raw: &Arc<RawZygote>, budget: Budget) -> Vec<Duration>;
    /// [`raw_floor`](Self::raw_floor) awaited at `place`: in the `block_on`
    /// future, or in a task spawned on the runtime (where the drivers run),
    /// i.e. where [`cold_spawn`](Self::cold_spawn) and
    /// [`cold_spawn_in_task`](Self::cold_spawn_in_task) await their spawns.
    /// `raw_floor` runs in one of the two (a task on tokio's multi-thread
    /// runtime, the `block_on` future elsewhere); this is the floor of the
    /// other place too.
    fn raw_floor_at(&self, raw: &Arc<RawZygote>, place: Place, budget: Budget) -> Vec<Duration>;
    /// Cold spawn: a trivial function in a new worker, to its result (in
    /// the `block_on` future).
    fn cold_spawn(&self, budget: Budget) -> Vec<Duration>;
    /// [`cold_spawn`](Self::cold_spawn) awaited in a task spawned on the
    /// runtime, where the drivers run: no answer crosses threads.
    fn cold_spawn_in_task(&self, budget: Budget) -> Vec<Duration>;
    /// Warm spawn: a trivial function in a pre-forked worker
    /// (`Parallel::warm_workers(config)`), to its result.
    fn warm_spawn(&self, config: WarmConfig, budget: Budget) -> Vec<Duration>;
    /// A one-shot call in a fresh, already started process: an `AnyPool`
    /// of 2 whose workers serve one call each (`max_calls_per_worker(1)`),
    /// to its result. What a warm `spawn` would cost if its pre-forked
    /// worker were started (runtime, task, driver) before the spawn.
    fn fresh_pool_spawn(&self, budget: Budget) -> Vec<Duration>;
    /// `Run::call(x)` on a `Run` started outside the clock, each call made
    /// as a warm spawn is: 5 ms after the process churn `churn` names (in the
    /// `block_on` future, as the warm-spawn rows). What the same call costs
    /// when the machine is in the state a warm spawn finds it in.
    fn run_after_churn(&self, churn: Churn, budget: Budget) -> Vec<Duration>;
    /// A spawn in phases (see [`Phases`]); `ready` is the user's function
    /// running in the worker. Cold with `warm` `None`; otherwise from a
    /// pre-forked worker (`Parallel::warm_workers(config)`), each spawn
    /// after the refill's forks have had time to finish.
    fn spawn_phases(&self, warm: Option<WarmConfig>, budget: Budget) -> Vec<Phases>;
    /// The raw floor in phases; `ready` is the raw worker's runtime built.
    /// `kind` is one of the `RuntimeClock*` kinds: how the worker ends.
    fn raw_floor_phases(&self, raw: &Arc<RawZygote>, kind: RawKind, budget: Budget) -> Vec<Phases>;
    /// Warm spawn: one call on a pool of pre-forked workers, awaited at `place`.
    fn pool_call(&self, place: Place, budget: Budget) -> Vec<Duration>;

    /// The floor of a warm spawn: one 8-byte round trip with a raw echo
    /// worker (runtime built, socket registered here, both outside the
    /// clock) that has then idled 5 ms, as a pre-forked worker idles between
    /// the warm-spawn rows' samples; a fresh worker for each sample.
    fn raw_warm_round_trip(&self, raw: &Arc<RawZygote>, budget: Budget) -> Vec<Duration>;
    /// The floor of [`run_after_churn`](Self::run_after_churn) with
    /// [`Churn::Exec`]: one 8-byte round trip with a raw echo worker started
    /// outside the clock and kept, each made 5 ms after running `true`.
    fn raw_after_exec(&self, raw: &Arc<RawZygote>, budget: Budget) -> Vec<Duration>;
    /// Raw socketpair ping-pong (8 bytes) with a raw echo worker running the
    /// same runtime.
    fn raw_ping_pong(&self, raw: &Arc<RawZygote>, budget: Budget) -> Vec<Duration>;
    /// The same, from the `block_on` future itself: the floor of a call
    /// awaited there. (On smol and glommio the other rows run there too.)
    fn raw_ping_pong_main(&self, raw: &Arc<RawZygote>, budget: Budget) -> Vec<Duration> {
        self.raw_ping_pong(raw, budget)
    }
    /// The protocol's floor (see [`super::proto`]): `u64 → u64` calls
    /// through `parallel-proto`'s channels and postcard, with a raw worker
    /// of kind `ProtoEcho` on the same runtime, made where the raw ping-pong
    /// is made; plain reads and writes, no library code.
    fn proto_ping_pong(&self, raw: &Arc<RawZygote>, budget: Budget) -> Vec<Duration>;
    /// The raw ping-pong in the shape of a `Run::call`: the caller at
    /// `place` writes its request itself, and a reader task spawned on the
    /// runtime (where the library runs a worker's driver) reads the reply
    /// and hands it over through a one-shot channel (see [`ReplySlot`]).
    /// The floor of any design in which a task of its own reads the
    /// channel, which the library needs so that no caller left unpolled
    /// can stall the others.
    fn raw_relayed(&self, raw: &Arc<RawZygote>, place: Place, budget: Budget) -> Vec<Duration>;
    /// Whether the library's channel reads differently from this runtime's
    /// own sockets (so that [`raw_peeked`](Self::raw_peeked) has a row).
    fn reads_by_peeking(&self) -> bool {
        false
    }
    /// The raw ping-pong with the parent reading the way the library's
    /// channel reads on this runtime, where that differs from the runtime's
    /// own socket (see [`reads_by_peeking`](Self::reads_by_peeking)): the
    /// floor of a channel that can receive descriptors there.
    fn raw_peeked(&self, raw: &Arc<RawZygote>, budget: Budget) -> Vec<Duration> {
        self.raw_ping_pong(raw, budget)
    }
    /// One call with tiny arguments (`u64 -> u64`) on a persistent worker,
    /// awaited at `place`.
    fn run_round_trip(&self, place: Place, budget: Budget) -> Vec<Duration>;
    /// [`bytes_round_trip`]: `Run::call`s with `size` bytes each way.
    fn run_bytes_round_trip(&self, size: usize, budget: Budget) -> Vec<Duration>;
    /// The same with a plain `Vec<u8>` each way.
    fn run_plain_round_trip(&self, size: usize, budget: Budget) -> Vec<Duration>;
    /// [`spawn_bytes`]: spawns (warm with `warm`) with `size` bytes each way.
    fn spawn_bytes(&self, warm: Option<WarmConfig>, size: usize, budget: Budget) -> Vec<Duration>;
    /// Time for `calls` raw 8-byte ping-pongs with `in_flight` outstanding.
    fn raw_pipelined(
        &self,
        raw: &Arc<RawZygote>,
        calls: usize,
        in_flight: usize,
        budget: Budget,
    ) -> Vec<Duration>;
    /// [`raw_pipelined`](Self::raw_pipelined) in the library's shape: each
    /// call writes its request itself and waits on a one-shot channel that
    /// a reader task, spawned where the adapter runs its drivers, answers
    /// (see [`ReplySlots`]). The floor of pipelined calls in any design in
    /// which a task of its own reads the channel.
    fn raw_relayed_pipelined(
        &self,
        raw: &Arc<RawZygote>,
        calls: usize,
        in_flight: usize,
        budget: Budget,
    ) -> Vec<Duration>;
    /// Time for `calls` persistent-worker calls with `in_flight` outstanding.
    fn run_pipelined(&self, calls: usize, in_flight: usize, budget: Budget) -> Vec<Duration>;
    /// The same, the calls made in a task spawned where the adapter runs
    /// its drivers (on tokio's multi-thread runtime, what `run_pipelined`
    /// does too).
    fn run_pipelined_in_task(
        &self,
        calls: usize,
        in_flight: usize,
        budget: Budget,
    ) -> Vec<Duration>;

    /// Time to write `count` buffers of `size` bytes to a raw sink worker
    /// (one write call each) and get its 8-byte acknowledgement.
    fn raw_throughput(
        &self,
        raw: &Arc<RawZygote>,
        size: usize,
        count: usize,
        writes: RawWrites,
        budget: Budget,
    ) -> Vec<Duration>;
    /// Time to send `count` messages of `size` bytes through a `process`
    /// channel and get the worker's count back.
    fn process_throughput(
        &self,
        size: usize,
        count: usize,
        encoding: Encoding,
        shared: SharedMemory,
        budget: Budget,
    ) -> Vec<Duration>;

    /// Starts `count` persistent workers, each answered one call (so each
    /// built its runtime), and keeps them alive.
    fn idle_workers(&self, count: usize) -> IdleWorkers;
}
