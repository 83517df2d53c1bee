//! The benchmark harness of issue 5: spawn, call and throughput of
//! `parallel`, each figure beside its baseline measured in the same run.
//!
//! ```text
//! cargo bench -p parallel-benches --bench spawn -- --quick   # ~3 min, 1 GiB heap
//! cargo bench -p parallel-benches --bench spawn              # full, 4 GiB heap
//! ```
//!
//! Options: `--quick`, `--heap-gib N` (the big parent's heap), `--rounds N`
//! (interleaved rounds per table, 3 quick and 8 full by default: each row's
//! time is split among them, and each round of a call row has a fresh
//! worker, so more rounds weigh more workers in its median), `--only
//! SECTIONS` (comma-separated, of `spawn`, `phases`, `calls`, `throughput`,
//! `stages`, `peers`, `scaling`, `big`: only those tables). The report
//! (Markdown tables: median, p10, p90, ratio to baseline, and the targets) goes
//! to stdout; progress goes to stderr.
//!
//! `main` starts, in this order, before any thread exists:
//! 1. the exec baselines' exit: this binary run with `PARALLEL_BENCH_EXIT_AT_ONCE`
//!    exits here, so fork+exec and posix_spawn measure exec, not our setup;
//! 2. `procspawn::init()`: in procspawn's children it runs their function and
//!    exits; in this process it only sets a flag (no thread, no fork);
//! 3. the raw mini zygote (the floor, no library code);
//! 4. `parallel_zygote::start()`, the library's zygote, which every adapter
//!    then shares (see [`adapters`]);
//! 5. the membarrier registration glommio wants made single-threaded (as
//!    `parallel_glommio::init` does).
//!
//! Only then are runtimes built and the parent's heap grown. Nothing touches
//! async-io (smol's reactor) before that either: a process forked after its
//! parent used async-io inherits a reactor it cannot use, and every worker,
//! raw or not, is forked by one of the two zygotes, which never touch it.
//!
//! Adapters measured: parallel-tokio on a multi-thread and a current-thread
//! parent runtime, parallel-smol under `smol::block_on`, parallel-glommio in
//! a glommio `LocalExecutor`; each against raw baselines on its own runtime
//! on both sides (fork + that runtime + 1 byte, ping-pong, writes).

mod harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::adapter::{Adapter, Churn, Encoding, Phases, Place, RawWrites, SharedMemory};
use harness::glommio_adapter::GlommioAdapter;
use harness::os::{self, ExecTarget, Heap};
use harness::raw::{RawKind, RawZygote};
use harness::smol_adapter::SmolAdapter;
use harness::stats::{Budget, Cell, Group, Measure, Report, Summary, Unit};
use harness::tokio_adapter::TokioAdapter;
use harness::{blocking, peers};
use parallel_zygote::async_core::WarmConfig;
use parallel_zygote::Zygote;

const GIB: usize = 1 << 30;
const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// Calls in flight for the pipelined figures.
const IN_FLIGHT: usize = 64;

/// The warm-spawn rows' pre-forked workers: 2, refilled after the default
/// `min_refill_delay` (1 ms), up to 4 after 100 ms.
const WARM_DEFAULT: WarmConfig = WarmConfig::new(2, 4);
/// The same refilled to 2 at once (forks that run while the spawn that took
/// a worker does): the default before session 4.
const WARM_AT_ONCE: WarmConfig = WarmConfig::new(2, 4).min_refill_delay(Duration::ZERO);
/// The same set refilled only after 1 ms (outside the clock, between
/// samples): the warm path without a fork competing for the CPU.
const WARM_LATER: WarmConfig = WarmConfig::new(0, 4).refill_delay(Duration::from_millis(1));

/// Live-worker counts for the scaling figures.
const LIVE_WORKERS: [usize; 5] = [0, 1, 10, 100, 500];

/// Idle workers whose PSS is averaged.
const MEMORY_WORKERS: usize = 100;

/// The adapters measured: one line each, all on the one zygote `main`
/// started. To add one: write `harness/<name>_adapter.rs` with an
/// `impl Adapter` (see `harness/adapter.rs`; `harness/tokio_adapter.rs` is
/// the model, and a runtime whose parent is one executor on this thread with
/// futures-io sockets needs only a `Host`, as `harness/smol_adapter.rs` and
/// `harness/glommio_adapter.rs`), declare it in `harness/mod.rs`, add the
/// adapter crate to `benches/Cargo.toml`, and push it here, built on a handle
/// of its crate over `zygote.clone()`. Every table then gets its rows, and
/// the side-by-side tables a column. The first adapter is the reference:
/// the peers and scaling tables measure it alone.
fn adapters(zygote: &Zygote) -> Vec<Box<dyn Adapter>> {
    let tokio = parallel_tokio::Parallel::new(zygote.clone());
    let smol = parallel_smol::Parallel::new(zygote.clone());
    let glommio = parallel_glommio::Parallel::new(zygote.clone());
    vec![
        Box::new(TokioAdapter::multi_thread(&tokio)),
        Box::new(TokioAdapter::current_thread(&tokio)),
        Box::new(SmolAdapter::smol(&smol)),
        Box::new(GlommioAdapter::glommio(&glommio)),
    ]
}

struct Config {
    quick: bool,
    heap_gib: usize,
    /// Interleaved rounds per group of figures.
    rounds: usize,
    /// Hold `/dev/cpu_dma_latency` at 0 while measuring (see `main`).
    poll_idle: bool,
    /// `--profile WHAT`: repeat one operation for a few seconds, report
    /// nothing (for `perf record` / `perf trace`), then exit.
    profile: Option<String>,
    /// Operations of a few µs.
    fast: Budget,
    /// Spawns: 100 µs to a few ms.
    spawn: Budget,
    /// Forks of a big parent: up to ~100 ms.
    slow: Budget,
    /// Bulk transfers and pipelined batches.
    bulk: Budget,
    pipelined_calls: usize,
    /// Bytes moved per throughput sample.
    throughput_bytes: usize,
    /// `--only a,b`: run only the sections named (see [`SECTIONS`]).
    only: Option<Vec<String>>,
}

impl Config {
    fn from_args() -> Config {
        let mut quick = false;
        let mut heap_gib = None;
        let mut poll_idle = true;
        let mut profile = None;
        let mut only = None;
        let mut rounds = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                "--heap-gib" => {
                    heap_gib = args.next().and_then(|n| n.parse().ok());
                    assert!(heap_gib.is_some(), "--heap-gib takes a number");
                }
                "--no-poll-idle" => poll_idle = false,
                "--rounds" => {
                    rounds = args.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0);
                    assert!(rounds.is_some(), "--rounds takes a number above 0");
                }
                "--profile" => profile = args.next(),
                "--only" => {
                    let list = args.next().expect("--only takes a list of sections");
                    let sections: Vec<String> = list.split(',').map(str::to_string).collect();
                    for section in &sections {
                        assert!(
                            SECTIONS.contains(&section.as_str()),
                            "--only: unknown section {section:?} (sections: {SECTIONS:?})"
                        );
                    }
                    only = Some(sections);
                }
                "--bench" => {} // added by `cargo bench`
                other => eprintln!("ignoring unknown argument {other:?}"),
            }
        }
        let budget = |warmup, min, max, millis| Budget {
            warmup,
            min,
            max,
            time: Duration::from_millis(millis),
        };
        if quick {
            Config {
                quick,
                heap_gib: heap_gib.unwrap_or(1),
                rounds: rounds.unwrap_or(3),
                poll_idle,
                profile,
                fast: budget(20, 100, 5_000, 200),
                spawn: budget(3, 20, 300, 250),
                slow: budget(1, 5, 20, 300),
                bulk: budget(1, 3, 20, 250),
                pipelined_calls: 20 * IN_FLIGHT,
                throughput_bytes: 64 * MIB,
                only,
            }
        } else {
            Config {
                quick,
                heap_gib: heap_gib.unwrap_or(4),
                rounds: rounds.unwrap_or(8),
                poll_idle,
                profile,
                fast: budget(100, 500, 50_000, 2_000),
                spawn: budget(10, 100, 3_000, 2_000),
                slow: budget(2, 15, 200, 3_000),
                bulk: budget(2, 10, 200, 2_000),
                pipelined_calls: 100 * IN_FLIGHT,
                throughput_bytes: 256 * MIB,
                only,
            }
        }
    }
}

/// The sections `--only` picks from, in the order they run.
const SECTIONS: [&str; 8] = [
    "spawn",
    "phases",
    "calls",
    "throughput",
    "stages",
    "peers",
    "scaling",
    "big",
];

impl Config {
    /// Whether `--only` left `section` in.
    fn runs(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .map_or(true, |only| only.iter().any(|s| s == section))
    }
}

fn main() {
    // 1. The exec baselines' children end here.
    os::exit_if_exec_child();
    // 2. procspawn's children run their function and exit inside init().
    procspawn::init();
    // 3. The raw floor's mini zygote, while single-threaded.
    let raw = Arc::new(RawZygote::start());
    // 4. The library's zygote, still single-threaded, started as a glommio
    //    program starts it (`parallel_glommio::init()` checks io_uring before
    //    the fork, for glommio's workers to inherit); every adapter shares it.
    let _glommio = parallel_glommio::init().expect("starting the zygote");
    let zygote = parallel_zygote::start().expect("starting the zygote");
    // 5. For glommio's executors, while still single-threaded.
    os::register_membarrier();

    let config = Config::from_args();
    let started = Instant::now();
    // This VM idles its vCPUs by halting them (haltpoll with polling off), so
    // a wake-up that crosses to an idle vCPU costs ~30-40 µs, at random: every
    // latency becomes bimodal. Holding a PM QoS request of 0 µs makes idle
    // vCPUs poll instead, for this process's lifetime only (the kernel drops
    // the request when the descriptor closes). `--no-poll-idle` measures the
    // machine as it is.
    let _poll_idle = config.poll_idle.then(os::hold_poll_idle).flatten();
    let machine_before = os::machine();
    eprintln!("machine: {machine_before}");
    let exec = ExecTarget::this_binary();
    let adapters = adapters(&zygote);
    if let Some(what) = &config.profile {
        profile(what, &raw, &adapters);
        return;
    }
    let mut report = Report::default();
    let big = format!("{} GiB", config.heap_gib);

    if config.runs("spawn") {
        spawn_section(
            &mut report,
            &config,
            &raw,
            &zygote,
            &adapters,
            &exec,
            "0 GiB",
        );
    }
    if config.runs("phases") {
        phases_section(&mut report, &config, &raw, &adapters);
    }
    if config.runs("calls") {
        round_trip_section(&mut report, &config, &raw, &adapters);
    }
    if config.runs("throughput") {
        throughput_section(&mut report, &config, &raw, &adapters);
    }
    if config.runs("stages") {
        stages_section(&mut report, &config);
    }
    if config.runs("peers") {
        peers_section(&mut report, &config, &adapters, &big);
    }
    if config.runs("scaling") {
        scaling_section(&mut report, &config, &raw, &zygote, &adapters);
    }
    if config.runs("big") {
        eprintln!("touching a {big} heap in the parent ...");
        let touch = Instant::now();
        let heap = Heap::touch(config.heap_gib * GIB);
        eprintln!(
            "  {} bytes touched in {:.1} s; parent RSS now {} MiB",
            heap.len(),
            touch.elapsed().as_secs_f64(),
            os::own_rss_kib() / 1024
        );
        spawn_section(&mut report, &config, &raw, &zygote, &adapters, &exec, &big);
        drop(heap);
    }
    if config.only.is_none() {
        // Both tables draw on every section.
        side_by_side(&mut report, &adapters, &big);
        design_floors(&mut report, &adapters, &big);
        targets(&mut report, &adapters, &big);
    }

    println!("## Results\n");
    println!(
        "- mode: {}; parent heap for the big-parent figures: {big} (4 KiB pages, MADV_NOHUGEPAGE)",
        if config.quick { "--quick" } else { "full" }
    );
    println!(
        "- command: `cargo bench -p parallel-benches --bench spawn{}` (binary args: {:?})",
        if config.quick { " -- --quick" } else { "" },
        std::env::args().skip(1).collect::<Vec<_>>()
    );
    println!(
        "- idle vCPUs: {}",
        if _poll_idle.is_some() {
            "poll (/dev/cpu_dma_latency held at 0 by the harness)"
        } else {
            "as configured (halt)"
        }
    );
    println!("- interleaved rounds per group: {}", config.rounds);
    println!("- machine at start: {machine_before}");
    println!("- machine at end: {}", os::machine());
    println!("- wall time: {:.1} s", started.elapsed().as_secs_f64());
    println!("{}", report.markdown());
}

/// 1. Spawn → first reply, cold and warm, from a parent holding `heap`.
#[allow(clippy::too_many_arguments)]
fn spawn_section(
    report: &mut Report,
    config: &Config,
    raw: &Arc<RawZygote>,
    zygote: &Zygote,
    adapters: &[Box<dyn Adapter>],
    exec: &ExecTarget,
    heap: &str,
) {
    eprintln!("\n1. spawn → first reply, parent holding {heap}");
    report.table(
        format!("1. Spawn → first reply, parent holding {heap} of touched heap"),
        "Cold: a new worker forked from the zygote, timed from the request to the \
         first byte or result back. Warm: one call on a `Pool` of pre-forked workers. \
         Raw floor: the hand-written mini zygote (no library code) forks a worker that \
         writes one byte, with or without building a tokio current-thread runtime \
         first (blocking parent); each adapter's own raw floor and raw ping-pong run \
         its runtime on both sides (tokio current-thread; async-io + smol \
         `LocalExecutor`; glommio `LocalExecutor`). OS baselines fork this (big, \
         multi-threaded) parent directly.",
    );
    let key = |name: &str| format!("{heap}/{name}");
    let spawn = config.spawn;
    let fork_budget = if heap.starts_with("0 ") {
        config.spawn
    } else {
        config.slow
    };
    let raw_byte = key("raw-byte");
    let raw_rt = key("raw-rt");
    let mut group = Group::new();
    group.add(
        &raw_byte,
        format!("raw floor: fork + 1 byte ({heap}, blocking parent)"),
        None,
        spawn,
        Measure::Time,
        |budget| blocking::raw_floor(raw, RawKind::Byte, budget),
    );
    group.add(
        &raw_rt,
        format!("raw floor: fork + tokio rt + 1 byte ({heap}, blocking parent)"),
        None,
        spawn,
        Measure::Time,
        |budget| blocking::raw_floor(raw, RawKind::RuntimeByte, budget),
    );
    group.add(
        key("zygote-spawn"),
        format!("parallel-zygote: `spawn()` (waits for pid) + 1 byte ({heap})"),
        Some(raw_byte.clone()),
        spawn,
        Measure::Time,
        |budget| blocking::spawn_first_byte(zygote, budget),
    );
    group.add(
        key("zygote-entry"),
        format!("parallel-zygote: `spawn_entry()` + 1 byte ({heap})"),
        Some(raw_byte.clone()),
        spawn,
        Measure::Time,
        |budget| blocking::spawn_entry_first_byte(zygote, false, budget),
    );
    group.add(
        key("zygote-entry-rt"),
        format!("parallel-zygote: `spawn_entry()` + tokio rt + 1 byte ({heap})"),
        Some(raw_rt.clone()),
        spawn,
        Measure::Time,
        |budget| blocking::spawn_entry_first_byte(zygote, true, budget),
    );
    for adapter in adapters {
        let adapter: &dyn Adapter = adapter.as_ref();
        let (a, name) = (adapter.key(), adapter.name());
        let floor = key(&format!("{a}/raw-floor"));
        let ping_pong = key(&format!("{a}/raw-ping-pong"));
        group.add(
            &floor,
            format!("{name}: raw floor, fork + rt + 1 byte, awaited ({heap})"),
            None,
            spawn,
            Measure::Time,
            move |budget| adapter.raw_floor(raw, budget),
        );
        group.add(
            key(&format!("{a}/spawn")),
            format!("{name}: `spawn(f, x)` → result, cold ({heap})"),
            Some(floor.clone()),
            spawn,
            Measure::Time,
            move |budget| adapter.cold_spawn(budget),
        );
        group.add(
            key(&format!("{a}/raw-floor-main")),
            format!("{name}: raw floor, awaited in the `block_on` future ({heap})"),
            None,
            spawn,
            Measure::Time,
            move |budget| adapter.raw_floor_at(raw, Place::Main, budget),
        );
        group.add(
            key(&format!("{a}/raw-floor-task")),
            format!("{name}: raw floor, awaited in a spawned task ({heap})"),
            None,
            spawn,
            Measure::Time,
            move |budget| adapter.raw_floor_at(raw, Place::Task, budget),
        );
        group.add(
            key(&format!("{a}/spawn-task")),
            format!("{name}: `spawn(f, x)` → result, cold, awaited in a spawned task ({heap})"),
            Some(floor.clone()),
            spawn,
            Measure::Time,
            move |budget| adapter.cold_spawn_in_task(budget),
        );
        group.add(
            &ping_pong,
            format!("{name}: raw ping-pong round trip ({heap})"),
            None,
            config.fast,
            Measure::Time,
            move |budget| adapter.raw_ping_pong(raw, budget),
        );
        group.add(
            key(&format!("{a}/pool")),
            format!("{name}: `Pool::call(x)`, warm ({heap})"),
            Some(ping_pong),
            config.fast,
            Measure::Time,
            move |budget| adapter.pool_call(Place::Task, budget),
        );
    }
    group.add(
        key("fork"),
        format!("plain fork() + _exit + waitpid ({heap})"),
        Some(raw_byte.clone()),
        fork_budget,
        Measure::Time,
        |budget| sample(budget, os::plain_fork),
    );
    group.add(
        key("fork-exec"),
        format!("fork() + exec of this binary + waitpid ({heap})"),
        Some(raw_byte.clone()),
        fork_budget,
        Measure::Time,
        |budget| sample(budget, || exec.fork_exec()),
    );
    group.add(
        key("posix-spawn"),
        format!("posix_spawn of this binary + waitpid ({heap})"),
        Some(raw_byte.clone()),
        spawn,
        Measure::Time,
        |budget| sample(budget, || exec.posix_spawn()),
    );
    group.add(
        key("procspawn-spawn"),
        format!("procspawn: `spawn(x, f).join()` ({heap})"),
        Some(key(&format!("{}/spawn", adapters[0].key()))),
        spawn,
        Measure::Time,
        peers::spawn_join,
    );
    group.run(report, config.rounds);
}

/// 1c. The cold spawn in phases, to see where it differs from the floor.
fn phases_section(
    report: &mut Report,
    config: &Config,
    raw: &Arc<RawZygote>,
    adapters: &[Box<dyn Adapter>],
) {
    eprintln!("\n1c. cold spawn phases");
    report.table(
        "1c. Where a cold spawn's time goes (0 GiB parent)",
        "Parent and worker read the same CLOCK_MONOTONIC. Library: `spawn()` \
         returning; request → the user's function running in the worker (fork, \
         boot, Start frame, runtime, task); function → its result in the parent's \
         task. Raw: request → the raw worker's runtime built; that → its 8 bytes \
         read by the parent. Medians of each phase (they need not add up).",
    );
    for adapter in adapters {
        let (a, name) = (adapter.key(), adapter.name());
        let (mut ours, mut floor) = (Vec::new(), Vec::new());
        let (mut teardown, mut busy) = (Vec::new(), Vec::new());
        let budget = config.spawn.split(config.rounds);
        for _ in 0..config.rounds {
            floor.extend(adapter.raw_floor_phases(raw, RawKind::RuntimeClock, budget));
            teardown.extend(adapter.raw_floor_phases(raw, RawKind::RuntimeClockTeardown, budget));
            busy.extend(adapter.raw_floor_phases(raw, RawKind::RuntimeClockBusy, budget));
            ours.extend(adapter.spawn_phases(None, budget));
        }
        let times = |rows: &[Phases], phase: fn(&Phases) -> Duration| {
            Summary::times(&rows.iter().map(phase).collect::<Vec<_>>())
        };
        let faults =
            |rows: &[Phases]| Summary::of(rows.iter().map(|p| p.faults as f64), Unit::Count);
        let key = |name: &str| format!("phase/{a}/{name}");
        report.add(
            &key("raw/to-ready"),
            &format!("{name}: raw: request → runtime ready in worker"),
            None,
            times(&floor, |p| p.to_ready),
        );
        report.add(
            &key("raw/faults"),
            &format!("{name}: raw: page faults in worker until ready"),
            None,
            faults(&floor),
        );
        report.add(
            &key("raw/back"),
            &format!("{name}: raw: ready → reply in parent, then `_exit`"),
            None,
            times(&floor, |p| p.back),
        );
        report.add(
            &key("raw/tail"),
            &format!("{name}: raw: reply in parent → worker exited (`_exit`)"),
            None,
            times(&floor, |p| p.tail),
        );
        report.add(
            &key("raw-teardown/tail"),
            &format!("{name}: raw: reply in parent → worker exited (rt drop + `exit`)"),
            Some(&key("raw/tail")),
            times(&teardown, |p| p.tail),
        );
        report.add(
            &key("raw-teardown/back"),
            &format!("{name}: raw: ready → reply in parent, then rt drop + `exit`"),
            Some(&key("raw/back")),
            times(&teardown, |p| p.back),
        );
        report.add(
            &key("raw-busy/back"),
            &format!("{name}: raw: ready → reply in parent, then 200 µs busy"),
            Some(&key("raw/back")),
            times(&busy, |p| p.back),
        );
        report.add(
            &key("submit"),
            &format!("{name}: `spawn()` call returns"),
            None,
            times(&ours, |p| p.submit),
        );
        report.add(
            &key("to-fn"),
            &format!("{name}: request → function running in worker"),
            Some(&key("raw/to-ready")),
            times(&ours, |p| p.to_ready),
        );
        report.add(
            &key("faults"),
            &format!("{name}: page faults in worker until function runs"),
            Some(&key("raw/faults")),
            faults(&ours),
        );
        report.add(
            &key("back"),
            &format!("{name}: function running → result in parent task"),
            Some(&key("raw/back")),
            times(&ours, |p| p.back),
        );
        report.add(
            &key("tail"),
            &format!("{name}: result in parent → worker exited"),
            Some(&key("raw/tail")),
            times(&ours, |p| p.tail),
        );
    }
}

/// 2. Call round trip and pipelined calls on a persistent worker.
fn round_trip_section(
    report: &mut Report,
    config: &Config,
    raw: &Arc<RawZygote>,
    adapters: &[Box<dyn Adapter>],
) {
    eprintln!("\n2. call round trip");
    report.table(
        "2. Call round trip, tiny arguments (`u64 → u64`)",
        "Raw: 8 bytes to a raw echo worker (forked by the mini zygote, running the \
         adapter's runtime) and back, on the same parent runtime; the blocking row's \
         echo worker runs tokio. `Run::call` goes through the library's driver task, \
         framing and postcard, awaited either in a task spawned on the runtime or \
         in the future given to `block_on` (how `#[tokio::main]` and \
         `smol::block_on` programs run; on tokio's multi-thread runtime that \
         future runs on the calling thread, none of the runtime's workers), each \
         beside a raw ping-pong made there (on smol, the task's in a `smol::spawn` \
         task, on the global executor where the drivers run). Warm spawn: `spawn(f, x)` on a \
         `Parallel` with pre-forked workers (`warm_workers(WarmConfig::new(2, 4))`: \
         refilled to 2 after the default 1 ms; also refilled to 2 at once, and with no \
         minimum, refilled after 1 ms only; 5 ms between samples), beside `Run::call`, \
         after the raw floor of a warm spawn (one round trip with an echo worker idle 5 ms); \
         cold spawn beside it. Parent holds 0 GiB.",
    );
    let mut group = Group::new();
    group.add(
        "rt/raw-blocking",
        "raw ping-pong, blocking std parent",
        None,
        config.fast,
        Measure::Time,
        |budget| blocking::raw_ping_pong(raw, budget),
    );
    for adapter in adapters {
        let adapter: &dyn Adapter = adapter.as_ref();
        let (a, name) = (adapter.key(), adapter.name());
        let raw_key = format!("rt/{a}/raw");
        group.add(
            &raw_key,
            format!("{name}: raw ping-pong"),
            None,
            config.fast,
            Measure::Time,
            move |budget| adapter.raw_ping_pong(raw, budget),
        );
        group.add(
            format!("rt/{a}/relay"),
            format!("{name}: raw ping-pong, reply relayed by a reader task"),
            Some(raw_key.clone()),
            config.fast,
            Measure::Time,
            move |budget| adapter.raw_relayed(raw, Place::Task, budget),
        );
        group.add(
            format!("rt/{a}/proto"),
            format!(
                "{name}: ping-pong through parallel-proto's channels and postcard (no async core)"
            ),
            Some(raw_key.clone()),
            config.fast,
            Measure::Time,
            move |budget| adapter.proto_ping_pong(raw, budget),
        );
        if adapter.reads_by_peeking() {
            group.add(
                format!("rt/{a}/peeked"),
                format!("{name}: raw ping-pong, read as the library's channel reads (peek, then recvmsg)"),
                Some(raw_key.clone()),
                config.fast,
                Measure::Time,
                move |budget| adapter.raw_peeked(raw, budget),
            );
        }
        group.add(
            format!("rt/{a}/run"),
            format!("{name}: `Run::call(x)`, awaited in a spawned task"),
            Some(raw_key.clone()),
            config.fast,
            Measure::Time,
            move |budget| adapter.run_round_trip(Place::Task, budget),
        );
        group.add(
            format!("rt/{a}/raw-warm"),
            format!("{name}: raw round trip with an echo worker idle 5 ms (warm floor)"),
            Some(format!("rt/{a}/run")),
            config.spawn,
            Measure::Time,
            move |budget| adapter.raw_warm_round_trip(raw, budget),
        );
        group.add(
            format!("rt/{a}/warm-spawn"),
            format!("{name}: `spawn(f, x)` → result, warm (pre-forked worker)"),
            Some(format!("rt/{a}/run")),
            config.spawn,
            Measure::Time,
            move |budget| adapter.warm_spawn(WARM_DEFAULT, budget),
        );
        group.add(
            format!("rt/{a}/warm-spawn-at-once"),
            format!("{name}: `spawn(f, x)` → result, warm, refilled to 2 at once"),
            Some(format!("rt/{a}/run")),
            config.spawn,
            Measure::Time,
            move |budget| adapter.warm_spawn(WARM_AT_ONCE, budget),
        );
        group.add(
            format!("rt/{a}/warm-spawn-quiet"),
            format!("{name}: `spawn(f, x)` → result, warm, refilled after 1 ms only"),
            Some(format!("rt/{a}/run")),
            config.spawn,
            Measure::Time,
            move |budget| adapter.warm_spawn(WARM_LATER, budget),
        );
        group.add(
            format!("rt/{a}/run-after-spawn"),
            format!(
                "{name}: `Run::call(x)` 5 ms after a warm spawn (its worker's exit, the refill's fork)"
            ),
            Some(format!("rt/{a}/run")),
            config.spawn,
            Measure::Time,
            move |budget| adapter.run_after_churn(Churn::WarmSpawn(WARM_DEFAULT), budget),
        );
        group.add(
            format!("rt/{a}/raw-after-exec"),
            format!("{name}: raw round trip 5 ms after running `true` (a fork, exec and exit)"),
            Some(format!("rt/{a}/raw")),
            config.spawn,
            Measure::Time,
            move |budget| adapter.raw_after_exec(raw, budget),
        );
        group.add(
            format!("rt/{a}/run-after-exec"),
            format!("{name}: `Run::call(x)` 5 ms after running `true` (a fork, exec and exit)"),
            Some(format!("rt/{a}/run")),
            config.spawn,
            Measure::Time,
            move |budget| adapter.run_after_churn(Churn::Exec, budget),
        );
        group.add(
            format!("rt/{a}/cold-spawn"),
            format!("{name}: `spawn(f, x)` → result, cold"),
            Some(format!("rt/{a}/warm-spawn")),
            config.spawn,
            Measure::Time,
            move |budget| adapter.cold_spawn(budget),
        );
        let raw_main = format!("rt/{a}/raw-main");
        group.add(
            &raw_main,
            format!("{name}: raw ping-pong, in the `block_on` future"),
            None,
            config.fast,
            Measure::Time,
            move |budget| adapter.raw_ping_pong_main(raw, budget),
        );
        group.add(
            format!("rt/{a}/relay-main"),
            format!(
                "{name}: raw ping-pong, reply relayed by a reader task, in the `block_on` future"
            ),
            Some(raw_main.clone()),
            config.fast,
            Measure::Time,
            move |budget| adapter.raw_relayed(raw, Place::Main, budget),
        );
        group.add(
            format!("rt/{a}/run-main"),
            format!("{name}: `Run::call(x)`, awaited in the `block_on` future"),
            Some(raw_main),
            config.fast,
            Measure::Time,
            move |budget| adapter.run_round_trip(Place::Main, budget),
        );
    }
    group.run(report, config.rounds);

    eprintln!("\n2b. pipelined calls");
    let calls = config.pipelined_calls;
    report.table(
        format!("2b. Pipelined calls, {IN_FLIGHT} in flight"),
        format!(
            "{calls} calls per sample, at most {IN_FLIGHT} outstanding. Raw: 8-byte \
             messages written one by one to the raw echo worker while the same task \
             counts the replies. Relayed: the raw echo in the library's shape, each \
             call writing its request and awaiting a one-shot that a reader task \
             (spawned where the adapter runs its drivers) answers. `Run::call`: \
             `buffer_unordered({IN_FLIGHT})` over calls, where the other rows run \
             (the `block_on` future; a task on tokio's multi-thread runtime), and in \
             a task spawned where the drivers run."
        ),
    );
    let rate = Measure::Rate {
        amount: calls as f64,
        unit: Unit::OpsPerSec,
    };
    let mut group = Group::new();
    for adapter in adapters {
        let adapter: &dyn Adapter = adapter.as_ref();
        let (a, name) = (adapter.key(), adapter.name());
        let raw_key = format!("pipe/{a}/raw");
        group.add(
            &raw_key,
            format!("{name}: raw, {IN_FLIGHT} in flight"),
            None,
            config.bulk,
            rate,
            move |budget| adapter.raw_pipelined(raw, calls, IN_FLIGHT, budget),
        );
        group.add(
            format!("pipe/{a}/relay"),
            format!("{name}: raw, {IN_FLIGHT} in flight, replies relayed by a reader task"),
            Some(raw_key.clone()),
            config.bulk,
            rate,
            move |budget| adapter.raw_relayed_pipelined(raw, calls, IN_FLIGHT, budget),
        );
        group.add(
            format!("pipe/{a}/run"),
            format!("{name}: `Run::call`, {IN_FLIGHT} in flight"),
            Some(raw_key.clone()),
            config.bulk,
            rate,
            move |budget| adapter.run_pipelined(calls, IN_FLIGHT, budget),
        );
        group.add(
            format!("pipe/{a}/run-task"),
            format!("{name}: `Run::call`, {IN_FLIGHT} in flight, in a spawned task"),
            Some(raw_key),
            config.bulk,
            rate,
            move |budget| adapter.run_pipelined_in_task(calls, IN_FLIGHT, budget),
        );
    }
    group.run(report, config.rounds);
}

/// 3. Bulk throughput: `process` channel vs raw socket writes.
fn throughput_section(
    report: &mut Report,
    config: &Config,
    raw: &Arc<RawZygote>,
    adapters: &[Box<dyn Adapter>],
) {
    eprintln!("\n3. throughput");
    report.table(
        "3. Throughput, parent → worker",
        format!(
            "{} MiB per sample, in messages of the given size, until the worker \
             acknowledges the total. Raw: one `write_all` per message to a raw sink \
             worker reading 256 KiB at a time, the same buffer each time; 64 KiB and 1 MiB \
             also from \"messages built before the clock\" as the `process` rows' are (out \
             of the cache), written as they are or \"each copied once first\" into a new \
             buffer: the floors of a library that writes a message without a copy, and of \
             one that encodes it into a buffer of its own. `process`: `MessageSender::send` of an \
             enum whose data variant is a `Vec<u8>`, either `#[serde(with = \
             \"serde_bytes\")]` or plain (serde's sequence of u8); messages are built \
             before the clock starts. `SharedBytesMut` rows (1 MiB and up): a shared \
             buffer whose memfd travels instead of its bytes, filled before the clock \
             and sent again per message, or created, filled and frozen per message \
             inside the clock.",
            config.throughput_bytes / MIB
        ),
    );
    let sizes = [
        (64 * KIB, "64 KiB"),
        (256 * KIB, "256 KiB"),
        (MIB, "1 MiB"),
        (64 * MIB, "64 MiB"),
    ];
    for (size, label) in sizes {
        let count = (config.throughput_bytes / size).max(1);
        let rate = Measure::Rate {
            amount: (size * count) as f64,
            unit: Unit::BytesPerSec,
        };
        // The path the default does not take at this size, for the crossover.
        let (other, other_name) = if size >= MIB {
            (SharedMemory::Off, "socket only")
        } else {
            (SharedMemory::Always, "memfd always")
        };
        let mut group = Group::new();
        for adapter in adapters {
            let adapter: &dyn Adapter = adapter.as_ref();
            let (a, name) = (adapter.key(), adapter.name());
            let raw_key = format!("tp/{a}/{label}/raw");
            group.add(
                &raw_key,
                format!("{name}: raw writes of {label}"),
                None,
                config.bulk,
                rate,
                move |budget| adapter.raw_throughput(raw, size, count, RawWrites::Same, budget),
            );
            if size <= MIB {
                // The floors of a library that writes the user's messages
                // without a copy, and of one that encodes each into a
                // buffer of its own, beside the socket's.
                for (key, what, writes) in [
                    (
                        "raw-prebuilt",
                        "messages built before the clock",
                        RawWrites::Prebuilt,
                    ),
                    (
                        "raw-copied",
                        "messages built before the clock, each copied once first",
                        RawWrites::CopiedOnce,
                    ),
                ] {
                    group.add(
                        format!("tp/{a}/{label}/{key}"),
                        format!("{name}: raw writes of {label}, {what}"),
                        Some(raw_key.clone()),
                        config.bulk,
                        rate,
                        move |budget| adapter.raw_throughput(raw, size, count, writes, budget),
                    );
                }
            }
            let rows = [
                (
                    "bytes",
                    "serde_bytes",
                    Encoding::Bytes,
                    SharedMemory::Default,
                ),
                ("bytes-other", other_name, Encoding::Bytes, other),
                ("ours", "Bytes", Encoding::Ours, SharedMemory::Default),
                ("seq", "plain Vec<u8>", Encoding::Seq, SharedMemory::Default),
                (
                    "plain",
                    "plain Vec<u8> as the whole message",
                    Encoding::Plain,
                    SharedMemory::Default,
                ),
                (
                    "zc-ready",
                    "SharedBytesMut filled before the clock",
                    Encoding::SharedReady,
                    SharedMemory::Default,
                ),
                (
                    "zc-filled",
                    "SharedBytesMut filled in the clock",
                    Encoding::SharedFilled,
                    SharedMemory::Default,
                ),
            ];
            for (key, what, encoding, shared) in rows {
                if size == 256 * KIB && encoding != Encoding::Bytes {
                    continue; // Only the crossover at this size.
                }
                if encoding == Encoding::Plain && size != MIB {
                    continue; // The goal's size.
                }
                let zero_copy = matches!(encoding, Encoding::SharedReady | Encoding::SharedFilled);
                if zero_copy && size < MIB {
                    continue; // Made for large payloads.
                }
                let what = if key == "bytes-other" {
                    format!("serde_bytes, {what}")
                } else {
                    what.to_string()
                };
                group.add(
                    format!("tp/{a}/{label}/{key}"),
                    format!("{name}: `process`, {label} {what}"),
                    Some(raw_key.clone()),
                    config.bulk,
                    rate,
                    move |budget| adapter.process_throughput(size, count, encoding, shared, budget),
                );
            }
        }
        group.run(report, config.rounds);
    }
}

/// 3b. Each stage of a `process` message, in-process.
fn stages_section(report: &mut Report, config: &Config) {
    eprintln!("\n3b. message stages");
    report.table(
        "3b. CPU cost of each stage of a `process` message, in one process",
        "No socket, no fork: each stage alone, one message per sample, as bytes \
         of payload per second. Raw writes pay neither of these stages, only the \
         kernel's two copies (into and out of the socket buffer); the library adds \
         an encode on the sender, and the frame decoder plus the decode on the \
         receiver, each into fresh memory.",
    );
    for (size, label) in [(64 * KIB, "64 KiB"), (MIB, "1 MiB"), (64 * MIB, "64 MiB")] {
        let memcpy = format!("stage/{label}/memcpy");
        let budget = if size > MIB { config.bulk } else { config.fast };
        for (key, stage, samples) in harness::stages::stages(size, budget) {
            let key = format!("stage/{label}/{key}");
            report.add(
                &key,
                &format!("{label}: {stage}"),
                (key != memcpy).then_some(memcpy.as_str()),
                Summary::rates(&samples, size as f64, Unit::BytesPerSec),
            );
        }
    }
}

/// 4. procspawn beside our figures.
fn peers_section(report: &mut Report, config: &Config, adapters: &[Box<dyn Adapter>], big: &str) {
    eprintln!("\n4. peers");
    report.table(
        "4. Peers: procspawn 1.0",
        "Ratio: procspawn's median over ours (above 1: procspawn is slower). \
         procspawn's `join` also waits for its process to exit. The spawn rows \
         come from table 1, the pool rows are measured here, interleaved.",
    );
    let adapter: &dyn Adapter = adapters[0].as_ref();
    let (a, name) = (adapter.key(), adapter.name());
    for heap in ["0 GiB", big] {
        report.show(
            &format!("{heap}/{a}/spawn"),
            &format!("{name}: `spawn(f, x)` → result ({heap})"),
            None,
        );
        report.show(
            &format!("{heap}/procspawn-spawn"),
            &format!("procspawn: `spawn(x, f).join()` ({heap})"),
            Some(&format!("{heap}/{a}/spawn")),
        );
    }
    let mut group = Group::new();
    group.add(
        "peer/procspawn-pool",
        "procspawn: `Pool::spawn(x, f).join()`, pool of 1",
        None,
        config.fast,
        Measure::Time,
        peers::pool_round_trip,
    );
    for adapter in adapters {
        let adapter: &dyn Adapter = adapter.as_ref();
        let (a, name) = (adapter.key(), adapter.name());
        for place in [Place::Task, Place::Main] {
            let where_ = match place {
                Place::Task => "in a spawned task",
                Place::Main => "in the `block_on` future",
            };
            group.add(
                format!("peer/{a}/pool-{}", place.name()),
                format!("{name}: `Pool::call(x)`, warm, awaited {where_}"),
                None,
                config.fast,
                Measure::Time,
                move |budget| adapter.pool_call(place, budget),
            );
        }
    }
    group.run(report, config.rounds);
    for adapter in adapters {
        let (a, name) = (adapter.key(), adapter.name());
        for place in [Place::Task, Place::Main] {
            report.show(
                "peer/procspawn-pool",
                &format!("procspawn's pool over {name}, {}", place.name()),
                Some(&format!("peer/{a}/pool-{}", place.name())),
            );
        }
    }
}

/// 5. Spawn latency with live workers, and memory per idle worker.
fn scaling_section(
    report: &mut Report,
    config: &Config,
    raw: &Arc<RawZygote>,
    zygote: &Zygote,
    adapters: &[Box<dyn Adapter>],
) {
    eprintln!("\n5. scaling");
    report.table(
        "5. Cold spawn with N live workers",
        "N idle persistent workers of the library (on the adapter's parent \
         runtime) and N idle raw echo workers are kept alive (each answered once, \
         so each built its runtime), then cold spawns are timed: the library's \
         `spawn` and the raw floor (fork + rt + 1 byte, awaited on the same \
         runtime), interleaved. Every adapter in turn.",
    );
    let mut memory = None;
    let mut raw_memory = None;
    for adapter in adapters {
        let adapter: &dyn Adapter = adapter.as_ref();
        let (a, name) = (adapter.key(), adapter.name());
        for live in LIVE_WORKERS {
            eprintln!("  {name}: {live} live workers");
            let idle = adapter.idle_workers(live);
            let raw_idle: Vec<_> = (0..live).map(|_| raw.spawn_ready(RawKind::Echo)).collect();
            let raw_pids: Vec<i32> = raw_idle.iter().map(|(_, pid)| *pid).collect();
            if live == MEMORY_WORKERS && memory.is_none() {
                memory = Some((a, name, pss_of(&idle.pids)));
                raw_memory = Some(pss_of(&raw_pids));
            }
            scaling_group(report, config, raw, zygote, adapter, live);
            drop(idle.holder);
            drop(raw_idle);
            wait_all(&idle.pids);
            wait_all(&raw_pids);
        }
    }
    memory_table(report, zygote, memory, raw_memory);
}

/// One row pair of table 5: `adapter`'s cold spawn and its raw floor with
/// `live` workers alive; then the library zygote's CPU time per spawn over
/// the group (only the library's spawns use that zygote): a figure the
/// machine's other load hardly moves.
fn scaling_group(
    report: &mut Report,
    config: &Config,
    raw: &Arc<RawZygote>,
    zygote: &Zygote,
    adapter: &dyn Adapter,
    live: usize,
) {
    let spawns = std::cell::Cell::new(0usize);
    let cpu_before = os::cpu_ns(zygote.pid());
    let (a, name) = (adapter.key(), adapter.name());
    let raw_key = format!("scale/{a}/raw/{live}");
    let mut group = Group::new();
    group.add(
        &raw_key,
        format!("{name}: raw floor, {live} live raw workers"),
        (live > 0).then(|| format!("scale/{a}/raw/0")),
        config.spawn,
        Measure::Time,
        move |budget| adapter.raw_floor(raw, budget),
    );
    group.add(
        format!("scale/{a}/{live}"),
        format!("{name}: `spawn` → result, {live} live workers"),
        Some(if live > 0 {
            format!("scale/{a}/0")
        } else {
            raw_key.clone()
        }),
        config.spawn,
        Measure::Time,
        |budget| {
            let samples = adapter.cold_spawn(budget);
            // The warm-up spawns are taken but not returned.
            spawns.set(spawns.get() + samples.len() + budget.warmup);
            samples
        },
    );
    group.run(report, config.rounds);
    if let (Some(before), Some(after)) = (cpu_before, os::cpu_ns(zygote.pid())) {
        let per_spawn = (after.saturating_sub(before)) / spawns.get().max(1) as u64;
        report.add(
            &format!("scale/{a}/zygote-cpu/{live}"),
            &format!("{name}: the zygote's CPU time per spawn, {live} live workers"),
            (live > 0)
                .then(|| format!("scale/{a}/zygote-cpu/0"))
                .as_deref(),
            Summary::times(&[Duration::from_nanos(per_spawn)]),
        );
    }
}

/// Table 5b, from the idle workers of the first adapter measured.
fn memory_table(
    report: &mut Report,
    zygote: &Zygote,
    memory: Option<(&str, &str, (Summary, Summary))>,
    raw_memory: Option<(Summary, Summary)>,
) {
    report.table(
        "5b. Memory per idle worker",
        format!(
            "PSS and RSS from /proc/<pid>/smaps_rollup, over {MEMORY_WORKERS} idle \
             workers of each kind alive at once (PSS splits shared pages among the \
             processes sharing them). Raw: the mini zygote's echo worker with a tokio \
             current-thread runtime."
        ),
    );
    if let (Some((raw_pss, raw_rss)), Some((a, name, (pss, rss)))) = (raw_memory, memory) {
        report.add("mem/raw/pss", "raw idle worker: PSS", None, raw_pss);
        report.add(
            &format!("mem/{a}/pss"),
            &format!("{name}: idle `run` worker: PSS"),
            Some("mem/raw/pss"),
            pss,
        );
        report.add("mem/raw/rss", "raw idle worker: RSS", None, raw_rss);
        report.add(
            &format!("mem/{a}/rss"),
            &format!("{name}: idle `run` worker: RSS"),
            Some("mem/raw/rss"),
            rss,
        );
    }
    if let Some((pss, rss)) = os::pss_rss_kib(zygote.pid()) {
        report.add(
            "mem/zygote/pss",
            "the zygote process: PSS",
            None,
            Summary::of([pss as f64], Unit::KiB),
        );
        report.add(
            "mem/zygote/rss",
            "the zygote process: RSS",
            None,
            Summary::of([rss as f64], Unit::KiB),
        );
    }
}

/// `--profile WHAT`: one operation, over and over for 5 s, for a profiler.
/// WHAT is `<adapter key>/<operation>`, e.g. `tokio-mt/spawn`; operations:
/// `spawn`, `spawn-task`, `warm-spawn`, `warm-spawn-at-once`, `warm-spawn-quiet`, `raw-warm`, `fresh-pool`, `call-after-spawn`, `call-after-exec`, `raw-after-exec`, `pipe`, `pipe-task`, `raw-pipe`, `relay-pipe`, `peeked`, `raw-floor`, `raw-floor-main` (the raw floor awaited in the `block_on` future), `raw-floor-task` (in a spawned task), `call`, `call-main`, `call-64kib` and `call-1mib` (`Run::call` with that many bytes each way, a `serde_bytes` buffer), `call-1mib-plain` (the same with a plain `Vec<u8>`), `warm-spawn-64kib` and `warm-spawn-1mib` (a warm spawn with that many bytes each way), `spawn-1mib` (the same, cold), `ping-pong`, `ping-pong-main` (the raw ping-pong in the `block_on` future), `relay`, `relay-main`, `pool`, `pool-main`, `process-1mib`, `raw-1mib`,
/// `process-1mib-inline` (socket only), `process-1mib-ours` (`Bytes`),
/// `process-1mib-ours-inline` (`Bytes`, socket only), `raw-1mib-prebuilt`,
/// `process-64mib-ours`, `process-64mib-ours-inline` (socket only), `raw-64mib`,
/// `process-<n>mib[-ours][-inline]` (64 MiB in messages of n MiB: serde_bytes, or `Bytes` with `-ours`),
/// `process-64b-ours`, `process-64kib`, `process-64kib-ours`, `raw-64kib`, `raw-64kib-prebuilt`, `raw-64kib-copied`, `raw-1mib-copied`,
/// `fresh-64kib-ours`, `fresh-64kib-raw`, `fresh-1mib-ours` and `fresh-1mib-raw` (20 fresh workers, six 64 MiB transfers
/// each in 64 KiB or 1 MiB messages, printed per worker: a fresh worker's first transfers),
/// and `phases` / `raw-phases` / `warm-phases` (which also print the
/// medians of table 1c's phases; `warm-phases` for a warm spawn refilled
/// after 1 ms).
fn profile(what: &str, raw: &Arc<RawZygote>, adapters: &[Box<dyn Adapter>]) {
    let (key, operation) = what.split_once('/').unwrap_or((what, "spawn"));
    let adapter = adapters
        .iter()
        .find(|adapter| adapter.key() == key)
        .unwrap_or_else(|| panic!("no adapter {key:?}"));
    let budget = Budget {
        warmup: 0,
        min: 1,
        max: usize::MAX,
        time: Duration::from_secs(5),
    };
    eprintln!("profiling {what} for 5 s (pid {})", std::process::id());
    let samples = match operation {
        "spawn" => adapter.cold_spawn(budget),
        "spawn-task" => adapter.cold_spawn_in_task(budget),
        "raw-floor" => adapter.raw_floor(raw, budget),
        "raw-floor-main" => adapter.raw_floor_at(raw, Place::Main, budget),
        "raw-floor-task" => adapter.raw_floor_at(raw, Place::Task, budget),
        "call" => adapter.run_round_trip(Place::Task, budget),
        "warm-spawn" => adapter.warm_spawn(WARM_DEFAULT, budget),
        "warm-spawn-at-once" => adapter.warm_spawn(WARM_AT_ONCE, budget),
        "warm-spawn-quiet" => adapter.warm_spawn(WARM_LATER, budget),
        "raw-warm" => adapter.raw_warm_round_trip(raw, budget),
        "fresh-pool" => adapter.fresh_pool_spawn(budget),
        "call-after-spawn" => adapter.run_after_churn(Churn::WarmSpawn(WARM_DEFAULT), budget),
        "call-after-exec" => adapter.run_after_churn(Churn::Exec, budget),
        "raw-after-exec" => adapter.raw_after_exec(raw, budget),
        "pipe" => adapter.run_pipelined(20 * IN_FLIGHT, IN_FLIGHT, budget),
        "pipe-task" => adapter.run_pipelined_in_task(20 * IN_FLIGHT, IN_FLIGHT, budget),
        "raw-pipe" => adapter.raw_pipelined(raw, 20 * IN_FLIGHT, IN_FLIGHT, budget),
        "call-main" => adapter.run_round_trip(Place::Main, budget),
        "call-64kib" => adapter.run_bytes_round_trip(64 * KIB, budget),
        "call-1mib" => adapter.run_bytes_round_trip(MIB, budget),
        "call-1mib-plain" => adapter.run_plain_round_trip(MIB, budget),
        "warm-spawn-64kib" => adapter.spawn_bytes(Some(WARM_DEFAULT), 64 * KIB, budget),
        "warm-spawn-1mib" => adapter.spawn_bytes(Some(WARM_DEFAULT), MIB, budget),
        "spawn-1mib" => adapter.spawn_bytes(None, MIB, budget),
        "ping-pong" => adapter.raw_ping_pong(raw, budget),
        "ping-pong-main" => adapter.raw_ping_pong_main(raw, budget),
        "relay" => adapter.raw_relayed(raw, Place::Task, budget),
        "proto" => adapter.proto_ping_pong(raw, budget),
        "peeked" => adapter.raw_peeked(raw, budget),
        "relay-main" => adapter.raw_relayed(raw, Place::Main, budget),
        "relay-pipe" => adapter.raw_relayed_pipelined(raw, 20 * IN_FLIGHT, IN_FLIGHT, budget),
        "pool" => adapter.pool_call(Place::Task, budget),
        // `fresh-64kib-ours` / `fresh-64kib-raw` (and `fresh-1mib-*`): 20
        // fresh workers, six transfers of 64 MiB each (no warm-up), every transfer printed by
        // its index: how a fresh worker's first transfers compare with its later ones.
        "fresh-64kib-ours" | "fresh-64kib-raw" | "fresh-1mib-ours" | "fresh-1mib-raw" => {
            let size = if operation.starts_with("fresh-1mib") {
                MIB
            } else {
                64 * KIB
            };
            let per_worker = Budget {
                warmup: 0,
                min: 6,
                max: 6,
                time: Duration::ZERO,
            };
            let mut all = Vec::new();
            for _ in 0..20 {
                let samples = if operation.ends_with("-ours") {
                    adapter.process_throughput(
                        size,
                        64 * MIB / size,
                        Encoding::Ours,
                        SharedMemory::Default,
                        per_worker,
                    )
                } else {
                    adapter.raw_throughput(
                        raw,
                        size,
                        64 * MIB / size,
                        RawWrites::Prebuilt,
                        per_worker,
                    )
                };
                let line: Vec<String> = samples
                    .iter()
                    .map(|s| format!("{:.1}", s.as_secs_f64() * 1e3))
                    .collect();
                eprintln!("ms: {}", line.join(" "));
                all.extend(samples);
            }
            all
        }
        "pool-main" => adapter.pool_call(Place::Main, budget),
        "process-1mib" => {
            adapter.process_throughput(MIB, 64, Encoding::Bytes, SharedMemory::Default, budget)
        }
        "raw-1mib" => adapter.raw_throughput(raw, MIB, 64, RawWrites::Same, budget),
        "raw-1mib-copied" => adapter.raw_throughput(raw, MIB, 64, RawWrites::CopiedOnce, budget),
        "process-1mib-inline" => {
            adapter.process_throughput(MIB, 64, Encoding::Bytes, SharedMemory::Off, budget)
        }
        "process-1mib-ours-inline" => {
            adapter.process_throughput(MIB, 64, Encoding::Ours, SharedMemory::Off, budget)
        }
        "process-64mib-ours" => {
            adapter.process_throughput(64 * MIB, 1, Encoding::Ours, SharedMemory::Default, budget)
        }
        "process-64mib-ours-inline" => {
            adapter.process_throughput(64 * MIB, 1, Encoding::Ours, SharedMemory::Off, budget)
        }
        "raw-64mib" => adapter.raw_throughput(raw, 64 * MIB, 1, RawWrites::Same, budget),
        "raw-1mib-prebuilt" => adapter.raw_throughput(raw, MIB, 64, RawWrites::Prebuilt, budget),
        "process-1mib-ours" => {
            adapter.process_throughput(MIB, 64, Encoding::Ours, SharedMemory::Default, budget)
        }
        "process-64kib" => adapter.process_throughput(
            64 * KIB,
            1024,
            Encoding::Bytes,
            SharedMemory::Default,
            budget,
        ),
        "process-64b-ours" => {
            adapter.process_throughput(64, 16 * 1024, Encoding::Ours, SharedMemory::Default, budget)
        }
        "process-64kib-ours" => adapter.process_throughput(
            64 * KIB,
            1024,
            Encoding::Ours,
            SharedMemory::Default,
            budget,
        ),
        "raw-64kib" => adapter.raw_throughput(raw, 64 * KIB, 1024, RawWrites::Same, budget),
        "raw-64kib-prebuilt" => {
            adapter.raw_throughput(raw, 64 * KIB, 1024, RawWrites::Prebuilt, budget)
        }
        "raw-64kib-copied" => {
            adapter.raw_throughput(raw, 64 * KIB, 1024, RawWrites::CopiedOnce, budget)
        }
        "phases" | "raw-phases" | "warm-phases" => {
            let phases = match operation {
                "phases" => adapter.spawn_phases(None, budget),
                "warm-phases" => adapter.spawn_phases(Some(WARM_LATER), budget),
                _ => adapter.raw_floor_phases(raw, RawKind::RuntimeClock, budget),
            };
            let mut faults: Vec<u64> = phases.iter().map(|p| p.faults).collect();
            faults.sort_unstable();
            if let Some(median) = faults.get(faults.len() / 2) {
                eprintln!("worker's minor faults until ready: median {median}");
            }
            for (name, phase) in [
                ("spawn call", (|p| p.submit) as fn(&Phases) -> Duration),
                ("request → ready", |p| p.to_ready),
                ("ready → reply in parent", |p| p.back),
                ("reply → worker exited", |p| p.tail),
            ] {
                let summary = Summary::times(&phases.iter().map(phase).collect::<Vec<_>>());
                eprintln!(
                    "{name}: median {:.1} µs, p10 {:.1} µs, p90 {:.1} µs",
                    summary.median * 1e6,
                    summary.p10 * 1e6,
                    summary.p90 * 1e6
                );
            }
            phases.iter().map(|p| p.to_ready + p.back).collect()
        }
        // `process-<n>mib[-ours|-seq|-plain][-inline]`: 64 MiB in messages
        // of n MiB (`Bytes`, a `Vec<u8>` in an enum, a `Vec<u8>` alone, or
        // serde_bytes).
        other => {
            let parsed = other
                .strip_prefix("process-")
                .and_then(|rest| rest.split_once("mib"))
                .and_then(|(mib, path)| Some((mib.parse::<usize>().ok()?, path)));
            let Some((mib, path)) = parsed.filter(|(mib, _)| (1..=64).contains(mib)) else {
                panic!("unknown operation {other:?}")
            };
            let (encoding, path) = if let Some(path) = path.strip_prefix("-ours") {
                (Encoding::Ours, path)
            } else if let Some(path) = path.strip_prefix("-seq") {
                (Encoding::Seq, path)
            } else if let Some(path) = path.strip_prefix("-plain") {
                (Encoding::Plain, path)
            } else {
                (Encoding::Bytes, path)
            };
            let shared = match path {
                "-inline" => SharedMemory::Off,
                "" => SharedMemory::Default,
                _ => panic!("unknown operation {other:?}"),
            };
            adapter.process_throughput(mib * MIB, 64 / mib, encoding, shared, budget)
        }
    };
    let summary = Summary::times(&samples);
    eprintln!(
        "{} samples, median {:.1} µs, p10 {:.1} µs, p90 {:.1} µs",
        summary.samples,
        summary.median * 1e6,
        summary.p10 * 1e6,
        summary.p90 * 1e6
    );
}

/// PSS and RSS summaries over processes.
fn pss_of(pids: &[i32]) -> (Summary, Summary) {
    let readings: Vec<(u64, u64)> = pids
        .iter()
        .filter_map(|&pid| os::pss_rss_kib(pid))
        .collect();
    (
        Summary::of(readings.iter().map(|r| r.0 as f64), Unit::KiB),
        Summary::of(readings.iter().map(|r| r.1 as f64), Unit::KiB),
    )
}

fn wait_all(pids: &[i32]) {
    for &pid in pids {
        os::wait_exit(pid, Duration::from_secs(5));
    }
}

/// Samples a blocking operation that times itself.
fn sample(budget: Budget, mut once: impl FnMut() -> Duration) -> Vec<Duration> {
    let mut sampler = harness::stats::Sampler::new(budget);
    while sampler.next() {
        sampler.record(once());
    }
    sampler.finish()
}

/// One target of issue 5, for the adapter keyed `a`: what, numerator,
/// denominator, at least (else at most), limit.
type TargetSpec = (String, String, String, bool, f64);

fn target_specs(a: &str, big: &str) -> Vec<TargetSpec> {
    let mut specs = Vec::new();
    // Issue 13's goals first.
    specs.push((
        "cold spawn ≤ 1.15 × raw floor (0 GiB)".to_string(),
        format!("0 GiB/{a}/spawn"),
        format!("0 GiB/{a}/raw-floor"),
        false,
        1.15,
    ));
    for (place, what) in [
        ("run", "a spawned task"),
        ("run-main", "the `block_on` future"),
    ] {
        specs.push((
            format!("`Run::call` in {what} ≤ 1.25 × raw ping-pong"),
            format!("rt/{a}/{place}"),
            format!("rt/{a}/raw"),
            false,
            1.25,
        ));
    }
    specs.push((
        "`Run::call` in the `block_on` future ≤ 1.25 × raw ping-pong there".to_string(),
        format!("rt/{a}/run-main"),
        format!("rt/{a}/raw-main"),
        false,
        1.25,
    ));
    specs.push((
        "warm `spawn(f, x)` → result ≤ 3 × `Run::call` round trip".to_string(),
        format!("rt/{a}/warm-spawn"),
        format!("rt/{a}/run"),
        false,
        3.0,
    ));
    specs.push((
        format!("`Run::call`, {IN_FLIGHT} in flight ≥ 0.8 × raw"),
        format!("pipe/{a}/run"),
        format!("pipe/{a}/raw"),
        true,
        0.8,
    ));
    for (place, what) in [
        ("task", "a spawned task"),
        ("main", "the `block_on` future"),
    ] {
        specs.push((
            format!("procspawn's pool / `Pool::call` in {what} ≥ 2.5"),
            "peer/procspawn-pool".to_string(),
            format!("peer/{a}/pool-{place}"),
            true,
            2.5,
        ));
    }
    specs.push((
        "cold spawn with 500 live workers / with 0 ≤ 1.1".to_string(),
        format!("scale/{a}/500"),
        format!("scale/{a}/0"),
        false,
        1.1,
    ));
    // Issue 5's, still watched.
    specs.push((
        format!("cold spawn ≤ 1.25 × raw floor ({big})"),
        format!("{big}/{a}/spawn"),
        format!("{big}/{a}/raw-floor"),
        false,
        1.25,
    ));
    specs.push((
        format!("cold spawn, {big} parent / 0 GiB parent ≤ 1.2"),
        format!("{big}/{a}/spawn"),
        format!("0 GiB/{a}/spawn"),
        false,
        1.2,
    ));
    specs.push((
        format!("plain fork from {big} / cold spawn from {big} ≥ 100"),
        format!("{big}/fork"),
        format!("{big}/{a}/spawn"),
        true,
        100.0,
    ));
    for heap in ["0 GiB", big] {
        specs.push((
            format!("warm spawn (`Pool::call`) ≤ 4 × raw round trip ({heap})"),
            format!("{heap}/{a}/pool"),
            format!("{heap}/{a}/raw-ping-pong"),
            false,
            4.0,
        ));
    }
    // Each size also with the fastest path a user can choose (`Bytes`, and
    // a `SharedBytesMut` filled before the clock as raw writes' buffer is).
    for (label, key, limit) in [
        ("64 KiB", "bytes", 0.8),
        ("64 KiB", "ours", 0.8),
        ("1 MiB", "bytes", 0.8),
        ("1 MiB", "ours", 0.8),
        ("1 MiB", "zc-ready", 0.8),
        ("64 MiB", "bytes", 1.5),
        ("64 MiB", "ours", 1.5),
        ("64 MiB", "zc-ready", 1.5),
        ("1 MiB", "seq", 0.5),
        ("1 MiB", "plain", 0.5),
    ] {
        let what = match key {
            "seq" => "plain Vec<u8> ",
            "plain" => "plain Vec<u8> (the whole message) ",
            "ours" => "`Bytes` ",
            "zc-ready" => "`SharedBytesMut` (filled before the clock) ",
            _ => "serde_bytes ",
        };
        specs.push((
            format!("{label} `process` {what}throughput ≥ {limit} × raw"),
            format!("tp/{a}/{label}/{key}"),
            format!("tp/{a}/{label}/raw"),
            true,
            limit,
        ));
    }
    specs
}

/// The issue's targets, as ratios of medians from this run: each adapter's
/// in the targets table, and all side by side.
fn targets(report: &mut Report, adapters: &[Box<dyn Adapter>], big: &str) {
    for adapter in adapters {
        let a = adapter.key();
        for (what, numerator, denominator, at_least, limit) in target_specs(a, big) {
            report.target(
                &format!("{a}: {what}"),
                &numerator,
                &denominator,
                at_least,
                limit,
            );
        }
    }
    report.target(
        "parallel-zygote alone: `spawn_entry` + rt + byte ≤ 1.25 × raw floor (0 GiB)",
        "0 GiB/zygote-entry-rt",
        "0 GiB/raw-rt",
        false,
        1.25,
    );

    report.matrix(
        "Targets, adapters side by side",
        "Ratio of medians per adapter, each against its own baseline (raw floor \
         and raw round trips on its own runtime).",
        adapters.iter().map(|a| a.key().to_string()).collect(),
    );
    let specs: Vec<Vec<TargetSpec>> = adapters
        .iter()
        .map(|adapter| target_specs(adapter.key(), big))
        .collect();
    for (index, (what, ..)) in specs[0].iter().enumerate() {
        let cells = specs
            .iter()
            .map(|specs| {
                let (_, numerator, denominator, at_least, limit) = specs[index].clone();
                Cell::Target {
                    numerator,
                    denominator,
                    at_least,
                    limit,
                }
            })
            .collect();
        report.matrix_row(what.clone(), cells);
    }
}

/// The library's rows against the raw shapes its design has to take, side by
/// side: where a target misses its fastest raw baseline, whether the miss is
/// the library's work or the shape's floor.
fn design_floors(report: &mut Report, adapters: &[Box<dyn Adapter>], big: &str) {
    report.matrix(
        "Library rows against the floors of their design",
        "Medians; in parentheses, the ratio to the floor named in the row, on the same \
         adapter and runtime. Relayed: the raw echo with a reader task (spawned where the \
         drivers run) handing each reply to its caller, as the drivers do. Peeked: the \
         raw ping-pong reading as the library's glommio channel does (a `MSG_PEEK` \
         through io_uring, then `recvmsg` with room for descriptors). Proto: the \
         `u64` call and its answer framed, checked and encoded by `parallel-proto`'s \
         channel state machines and postcard on both sides, with plain reads and \
         writes (the protocol's own work, without the library's async core). Built before the \
         clock: raw writes of distinct messages rather than one hot buffer. After running \
         `true` / after a warm spawn: each sample made 5 ms after that process churn (a \
         fork, an exit), in the state every warm spawn but a first one finds the machine \
         in. The raw floor's own ratios (its big parent, its live workers, a plain fork) \
         are what the spawn targets on the same quantities can be held to. \u{2014}: no \
         such row.",
        adapters.iter().map(|a| a.key().to_string()).collect(),
    );
    let mut rows: Vec<(String, String, String)> = vec![
        (
            "`spawn(f, x)` → result, cold, awaited in a task (/ raw floor, 0 GiB)".into(),
            "0 GiB/{a}/spawn-task".into(),
            "0 GiB/{a}/raw-floor".into(),
        ),
        (
            "`spawn(f, x)` → result, cold, in the `block_on` future (/ raw floor awaited there)"
                .into(),
            "0 GiB/{a}/spawn".into(),
            "0 GiB/{a}/raw-floor-main".into(),
        ),
        (
            "`spawn(f, x)` → result, cold, awaited in a task (/ raw floor awaited in a task)"
                .into(),
            "0 GiB/{a}/spawn-task".into(),
            "0 GiB/{a}/raw-floor-task".into(),
        ),
        (
            "raw ping-pong, relayed (/ raw ping-pong)".into(),
            "rt/{a}/relay".into(),
            "rt/{a}/raw".into(),
        ),
        (
            "raw ping-pong, peeked (/ raw ping-pong)".into(),
            "rt/{a}/peeked".into(),
            "rt/{a}/raw".into(),
        ),
        (
            "proto ping-pong: `parallel-proto` + postcard, no async core (/ raw ping-pong)".into(),
            "rt/{a}/proto".into(),
            "rt/{a}/raw".into(),
        ),
        (
            "`Run::call(x)` in a task (/ relayed)".into(),
            "rt/{a}/run".into(),
            "rt/{a}/relay".into(),
        ),
        (
            "`Run::call(x)` in a task (/ proto ping-pong)".into(),
            "rt/{a}/run".into(),
            "rt/{a}/proto".into(),
        ),
        (
            "`Run::call(x)` in the `block_on` future (/ relayed there)".into(),
            "rt/{a}/run-main".into(),
            "rt/{a}/relay-main".into(),
        ),
        (
            "raw round trip, echo worker idle 5 ms (/ `Run::call` in a task)".into(),
            "rt/{a}/raw-warm".into(),
            "rt/{a}/run".into(),
        ),
        (
            "`spawn(f, x)` → result, warm (/ raw round trip, echo worker idle 5 ms)".into(),
            "rt/{a}/warm-spawn".into(),
            "rt/{a}/raw-warm".into(),
        ),
        (
            "raw round trip 5 ms after running `true` (/ raw ping-pong)".into(),
            "rt/{a}/raw-after-exec".into(),
            "rt/{a}/raw".into(),
        ),
        (
            "`Run::call(x)` 5 ms after running `true` (/ raw round trip there)".into(),
            "rt/{a}/run-after-exec".into(),
            "rt/{a}/raw-after-exec".into(),
        ),
        (
            "`Run::call(x)` 5 ms after a warm spawn (/ `Run::call` in a task)".into(),
            "rt/{a}/run-after-spawn".into(),
            "rt/{a}/run".into(),
        ),
        (
            "`spawn(f, x)` → result, warm (/ `Run::call` 5 ms after a warm spawn)".into(),
            "rt/{a}/warm-spawn".into(),
            "rt/{a}/run-after-spawn".into(),
        ),
        (
            format!("raw, {IN_FLIGHT} in flight, relayed (/ raw)"),
            "pipe/{a}/relay".into(),
            "pipe/{a}/raw".into(),
        ),
        (
            format!("`Run::call`, {IN_FLIGHT} in flight (/ relayed)"),
            "pipe/{a}/run".into(),
            "pipe/{a}/relay".into(),
        ),
        (
            format!("`Run::call`, {IN_FLIGHT} in flight, in a task (/ raw)"),
            "pipe/{a}/run-task".into(),
            "pipe/{a}/raw".into(),
        ),
    ];
    // The spawn targets that compare the library with itself (a big
    // parent, live workers) or with a plain fork, beside the same ratio of
    // the raw floor: a miss the floor shares is the machine's.
    rows.push((
        format!("raw floor, {big} parent (/ raw floor, 0 GiB parent)"),
        format!("{big}/{{a}}/raw-floor"),
        "0 GiB/{a}/raw-floor".into(),
    ));
    rows.push((
        "raw floor, 500 live raw workers (/ with 0)".into(),
        "scale/{a}/raw/500".into(),
        "scale/{a}/raw/0".into(),
    ));
    rows.push((
        format!("plain fork from {big} (/ raw floor from {big})"),
        format!("{big}/fork"),
        format!("{big}/{{a}}/raw-floor"),
    ));
    for label in ["64 KiB", "1 MiB"] {
        let built = format!("tp/{{a}}/{label}/raw-prebuilt");
        rows.push((
            format!("raw writes of {label}, built before the clock (/ one hot buffer)"),
            built.clone(),
            format!("tp/{{a}}/{label}/raw"),
        ));
        for (key, what) in [("bytes", "serde_bytes"), ("ours", "`Bytes`")] {
            rows.push((
                format!("`process`, {label} {what} (/ raw writes built before the clock)"),
                format!("tp/{{a}}/{label}/{key}"),
                built.clone(),
            ));
        }
    }
    let rows = rows
        .into_iter()
        .map(|(label, key, baseline)| (label, key, Some(baseline)));
    figure_rows(report, adapters, rows);
}

/// One matrix row per `(label, key, baseline)`, `{a}` in the keys standing
/// for each adapter's key.
fn figure_rows(
    report: &mut Report,
    adapters: &[Box<dyn Adapter>],
    rows: impl IntoIterator<Item = (String, String, Option<String>)>,
) {
    for (label, key, baseline) in rows {
        let cells = adapters
            .iter()
            .map(|adapter| {
                let a = adapter.key();
                Cell::Figure {
                    key: key.replace("{a}", a),
                    baseline: baseline.as_ref().map(|b| b.replace("{a}", a)),
                }
            })
            .collect();
        report.matrix_row(label, cells);
    }
}

/// The main figures of every adapter side by side, each (in parentheses)
/// as a ratio to its own baseline on its own runtime.
fn side_by_side(report: &mut Report, adapters: &[Box<dyn Adapter>], big: &str) {
    report.matrix(
        "Adapters side by side",
        "Medians from the tables above; in parentheses, the ratio to the row's \
         baseline on the same adapter and runtime (raw floor: fork + that runtime + \
         1 byte; raw ping-pong, pipelined echo and writes: that runtime on both sides).",
        adapters.iter().map(|a| a.key().to_string()).collect(),
    );
    // (label, key, baseline key), `{a}` standing for the adapter's key.
    let mut rows: Vec<(String, String, Option<String>)> = Vec::new();
    for heap in ["0 GiB", big] {
        let floor = format!("{heap}/{{a}}/raw-floor");
        let ping_pong = format!("{heap}/{{a}}/raw-ping-pong");
        rows.push((
            format!("raw floor: fork + rt + 1 byte ({heap})"),
            floor.clone(),
            None,
        ));
        rows.push((
            format!("`spawn(f, x)` → result, cold ({heap}) (/ raw floor)"),
            format!("{heap}/{{a}}/spawn"),
            Some(floor),
        ));
        rows.push((format!("raw ping-pong ({heap})"), ping_pong.clone(), None));
        rows.push((
            format!("`Pool::call(x)`, warm ({heap}) (/ raw ping-pong)"),
            format!("{heap}/{{a}}/pool"),
            Some(ping_pong),
        ));
    }
    let fixed = [
        (
            "`spawn(f, x)` → result, warm (/ `Run::call` in a task)",
            "rt/{a}/warm-spawn",
            Some("rt/{a}/run"),
        ),
        (
            "`spawn(f, x)` → result, cold (/ warm)",
            "rt/{a}/cold-spawn",
            Some("rt/{a}/warm-spawn"),
        ),
        (
            "raw: request → runtime ready in worker",
            "phase/{a}/raw/to-ready",
            None,
        ),
        (
            "request → function running in worker (/ raw)",
            "phase/{a}/to-fn",
            Some("phase/{a}/raw/to-ready"),
        ),
        (
            "function running → result in parent task (/ raw)",
            "phase/{a}/back",
            Some("phase/{a}/raw/back"),
        ),
        ("raw ping-pong (table 2)", "rt/{a}/raw", None),
        (
            "`Run::call(x)` in a task (/ raw ping-pong)",
            "rt/{a}/run",
            Some("rt/{a}/raw"),
        ),
        (
            "raw ping-pong in the `block_on` future",
            "rt/{a}/raw-main",
            None,
        ),
        (
            "`Run::call(x)` in the `block_on` future (/ raw ping-pong there)",
            "rt/{a}/run-main",
            Some("rt/{a}/raw-main"),
        ),
    ];
    for (label, key, baseline) in fixed {
        rows.push((label.into(), key.into(), baseline.map(Into::into)));
    }
    rows.push((
        format!("raw echo, {IN_FLIGHT} in flight"),
        "pipe/{a}/raw".into(),
        None,
    ));
    rows.push((
        format!("`Run::call`, {IN_FLIGHT} in flight (/ raw)"),
        "pipe/{a}/run".into(),
        Some("pipe/{a}/raw".into()),
    ));
    for label in ["64 KiB", "1 MiB", "64 MiB"] {
        let raw = format!("tp/{{a}}/{label}/raw");
        rows.push((format!("raw writes of {label}"), raw.clone(), None));
        rows.push((
            format!("`process`, {label} serde_bytes (/ raw writes)"),
            format!("tp/{{a}}/{label}/bytes"),
            Some(raw.clone()),
        ));
        rows.push((
            format!("`process`, {label} `Bytes` (/ raw writes)"),
            format!("tp/{{a}}/{label}/ours"),
            Some(raw.clone()),
        ));
        rows.push((
            format!("`process`, {label} plain Vec<u8> (/ raw writes)"),
            format!("tp/{{a}}/{label}/seq"),
            Some(raw),
        ));
    }
    figure_rows(report, adapters, rows);
}
