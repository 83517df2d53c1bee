//! The reliability suite: hostile conditions (a parent killed, a storm of
//! worker kills, a zygote killed under load, leaks, exits on a busy machine,
//! scale, back-pressure, bad input, resource limits), each scenario
//! measuring and asserting, written once,
//! generic over the [`Runtime`], run by each adapter's
//! `tests/reliability.rs` (a `harness = false` test target):
//!
//! ```ignore
//! #[path = "../../parallel-zygote/tests/reliability/mod.rs"]
//! mod reliability;
//!
//! struct MyHarness;
//! impl reliability::Harness for MyHarness {
//!     type R = my_adapter::MyRuntime;
//!     fn init() -> Result<Parallel<Self::R>, Error> { my_adapter::init() }
//!     fn block_on(test: reliability::TestFuture) -> Result<(), Failed> { /* fresh runtime */ }
//! }
//!
//! fn main() {
//!     reliability::main::<MyHarness>();
//! }
//! ```
//!
//! What each scenario asserts, and the figures it measured, are in
//! `RELIABILITY.md` at the top of the repository.
//!
//! # Sizes
//!
//! By default the suite runs at its CI size (each property asserted, the
//! whole suite a minute or so per adapter on two cores). With
//! `PARALLEL_RELIABILITY=full` it runs the issue's full figures (20 + 20
//! parent kills, 5,000 storm items, 10,000 sequential spawns, 2,000 live
//! workers, 1 GiB of back-pressure).
//!
//! # Helper processes
//!
//! Most scenarios need a process of their own: one to kill, or one whose
//! descriptors, children and memory no other trial blurs. [`main`] re-runs
//! the test binary with [`HELPER_ENV`] naming the helper and [`ARG_ENV`] its
//! argument; the helper prints `figure: ...` lines, then `ok` or
//! `fail: <why>` (see [`run_helper`]).
//!
//! # Figures
//!
//! Each trial prints its figures on stderr as
//! `[reliability] <runtime> <scenario>: <figures>`; grep for
//! `[reliability]` to collect them.

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::pin::{pin, Pin};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::future::{select, Either};
use libtest_mimic::{Arguments, Failed, Trial};
use parallel_zygote::async_core::{Error, Parallel, Runtime};

mod bad_input;
mod bad_shared_buffers;
mod faults;
mod limits;
mod resources;

/// A scenario's future, as [`Harness::block_on`] runs it.
pub type TestFuture = Pin<Box<dyn Future<Output = Result<(), Failed>>>>;

/// The environment variable that turns the test binary into a helper.
pub const HELPER_ENV: &str = "PARALLEL_RELIABILITY_HELPER";
/// The helper's argument.
pub const ARG_ENV: &str = "PARALLEL_RELIABILITY_ARG";
/// `full` for the issue's full sizes; anything else (or unset) for CI's.
pub const SIZE_ENV: &str = "PARALLEL_RELIABILITY";

/// What an adapter provides to run the suite (the conformance suite's
/// trait, minus what only conformance needs).
pub trait Harness: 'static {
    /// The adapter's runtime.
    type R: Runtime;

    /// Starts the zygote (the adapter's `init()`), before any thread exists.
    fn init() -> Result<Parallel<Self::R>, Error>;

    /// Runs a parent-side future to completion on a fresh runtime of this
    /// adapter. Called from several threads at once.
    fn block_on(test: TestFuture) -> Result<(), Failed>;
}

/// The whole test binary: a helper when [`HELPER_ENV`] says so, otherwise
/// the suite under libtest-mimic.
pub fn main<H: Harness>() {
    if let Ok(which) = std::env::var(HELPER_ENV) {
        helper::<H>(&which);
        return;
    }
    let parallel = H::init().expect("start the zygote first thing in main, before any thread");
    let args = Arguments::from_args();
    libtest_mimic::run(&args, trials::<H>(parallel)).exit();
}

/// Whether the full sizes were asked for.
pub fn full() -> bool {
    std::env::var(SIZE_ENV).is_ok_and(|size| size == "full")
}

/// `ci` or `full`, as [`full`] says.
pub fn size(ci: usize, full_size: usize) -> usize {
    if full() {
        full_size
    } else {
        ci
    }
}

fn trials<H: Harness>(parallel: Parallel<H::R>) -> Vec<Trial> {
    let in_process = |name: &'static str, test: fn(Parallel<H::R>) -> TestFuture| {
        let parallel = parallel.clone();
        Trial::test(name, move || H::block_on(test(parallel)))
    };
    vec![
        Trial::test("parent_killed", faults::parent_killed::<H>),
        in_process("worker_storm", |p| Box::pin(faults::worker_storm(p))),
        Trial::test("zygote_killed_under_load", faults::zygote_killed::<H>),
        Trial::test("leaks_sequential_and_dropped_spawns", resources::leaks::<H>),
        Trial::test(
            "exits_on_a_busy_machine",
            resources::exits_on_a_busy_machine::<H>,
        ),
        Trial::test("scale_live_workers", resources::scale::<H>),
        Trial::test("back_pressure_slow_consumer", resources::back_pressure::<H>),
        in_process("bad_input_on_a_worker_channel", |p| {
            Box::pin(bad_input::worker_channel(p))
        }),
        in_process("bad_shared_memory_on_a_worker_channel", |p| {
            Box::pin(bad_input::shared_memory_from_a_hostile_worker(p))
        }),
        in_process("bad_shared_buffers_on_a_worker_channel", |p| {
            Box::pin(bad_shared_buffers::forged_shared_buffers_from_a_hostile_worker(p))
        }),
        Trial::test(
            "bad_input_on_the_zygote_socket",
            bad_input::zygote_socket::<H>,
        ),
        in_process("limits_cpu_time_and_address_space", |p| {
            Box::pin(limits::limits(p))
        }),
    ]
}

/// A helper's body: given its argument, the figures it measured.
type HelperBody = fn(&str) -> Result<Vec<String>, Failed>;

fn helper<H: Harness>(which: &str) {
    let arg = std::env::var(ARG_ENV).unwrap_or_default();
    let body: HelperBody = match which {
        faults::WATCHER => faults::watcher::<H>,
        faults::VICTIM_BUSY => faults::victim_busy::<H>,
        faults::VICTIM_STARTUP => faults::victim_startup::<H>,
        faults::ZYGOTE_KILLED => faults::zygote_killed_helper::<H>,
        resources::LEAKS => resources::leaks_helper::<H>,
        resources::BUSY_EXITS => resources::exits_on_a_busy_machine_helper::<H>,
        resources::SCALE => resources::scale_helper::<H>,
        resources::BACK_PRESSURE => resources::back_pressure_helper::<H>,
        bad_input::ZYGOTE_SOCKET => bad_input::zygote_socket_helper::<H>,
        other => panic!("{HELPER_ENV}={other}: no such helper"),
    };
    match body(&arg) {
        Ok(figures) => {
            for figure in figures {
                println!("figure: {figure}");
            }
            println!("ok");
        }
        Err(failed) => println!("fail: {}", failed.message().unwrap_or("failed")),
    }
}

/// Runs helper `which` with `arg`, killed if it takes longer than `limit`;
/// its figures, or a failure with what it said.
pub fn run_helper(which: &str, arg: &str, limit: Duration) -> Result<Vec<String>, Failed> {
    let (figures, stderr) = run_helper_capturing(which, arg, limit)?;
    eprint!("{stderr}");
    Ok(figures)
}

/// As [`run_helper`], also returning what the helper (and its zygote and
/// workers) wrote on stderr.
pub fn run_helper_capturing(
    which: &str,
    arg: &str,
    limit: Duration,
) -> Result<(Vec<String>, String), Failed> {
    let mut child = Command::new(std::env::current_exe()?)
        .env(HELPER_ENV, which)
        .env(ARG_ENV, arg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + limit;
    let mut said = Vec::new();
    let outcome = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(Ok(line)) => {
                if line == "ok" {
                    break Ok(());
                }
                if let Some(why) = line.strip_prefix("fail: ") {
                    break Err(why.to_string());
                }
                said.push(line);
            }
            Ok(Err(error)) => break Err(format!("reading the helper: {error}")),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                break Err(format!("helper {which} still running after {limit:?}"))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(format!("helper {which} ended without a verdict"))
            }
        }
    };
    let _ = child.kill();
    let status = child.wait()?;
    // Descendants may hold stderr open a little longer: bounded.
    let stderr = {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !errors.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if errors.is_finished() {
            errors.join().unwrap_or_default()
        } else {
            "(stderr still open)".to_string()
        }
    };
    let figures: Vec<String> = said
        .iter()
        .filter_map(|line| line.strip_prefix("figure: ").map(str::to_string))
        .collect();
    match outcome {
        Ok(()) => Ok((figures, stderr)),
        Err(why) => Err(format!(
            "{why} (helper {which} {arg}: {status}; figures so far {figures:?}; stderr {stderr})"
        )
        .into()),
    }
}

/// Prints a scenario's figures in the greppable form.
pub fn report<R: Runtime>(scenario: &str, figures: &[String]) {
    eprintln!(
        "[reliability] {} {scenario}: {}",
        R::NAME,
        figures.join(", ")
    );
}

/// Runs a helper's async body on the adapter's runtime, collecting figures.
pub fn block_on_figures<H: Harness, F>(future: F) -> Result<Vec<String>, Failed>
where
    F: Future<Output = Result<Vec<String>, Failed>> + 'static,
{
    let figures = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let out = figures.clone();
    H::block_on(Box::pin(async move {
        *out.borrow_mut() = future.await?;
        Ok(())
    }))?;
    let figures = figures.borrow().clone();
    Ok(figures)
}

/// `Ok` when `condition` holds, else a failure saying `message`.
pub fn check(condition: bool, message: impl Into<String>) -> Result<(), Failed> {
    if condition {
        Ok(())
    } else {
        Err(message.into().into())
    }
}

/// `future`'s output, or `None` when `limit` passed first.
pub async fn within<R: Runtime, F: Future>(limit: Duration, future: F) -> Option<F::Output> {
    match select(pin!(future), pin!(R::sleep(limit))).await {
        Either::Left((output, _)) => Some(output),
        Either::Right(_) => None,
    }
}

/// A process as /proc shows it.
#[derive(Debug, Clone, Copy)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub zombie: bool,
}

/// Every process of the system (threads excluded).
pub fn processes() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // After the parenthesized name: state, ppid.
            let rest = stat.get(stat.rfind(')')? + 2..)?;
            let mut fields = rest.split(' ');
            let state = fields.next()?;
            let ppid = fields.next()?.parse().ok()?;
            Some(Proc {
                pid,
                ppid,
                zombie: state.starts_with('Z') || state.starts_with('X'),
            })
        })
        .collect()
}

/// The processes whose parent chain leads to `root` (`root` excluded).
pub fn descendants(root: i32) -> Vec<Proc> {
    let all = processes();
    let mut children: HashMap<i32, Vec<Proc>> = HashMap::new();
    for process in &all {
        children.entry(process.ppid).or_default().push(*process);
    }
    let mut found = Vec::new();
    let mut next = vec![root];
    while let Some(pid) = next.pop() {
        for child in children.get(&pid).into_iter().flatten() {
            found.push(*child);
            next.push(child.pid);
        }
    }
    found
}

/// This process's live descendants besides the zygote (its first child),
/// each with its name, state, threads and where it waits: what a failure
/// that finds workers still alive says about them.
pub fn describe_live_descendants() -> String {
    let me = std::process::id() as i32;
    let live: Vec<String> = descendants(me)
        .iter()
        .filter(|p| !p.zombie && p.ppid != me)
        .take(10)
        .map(|p| {
            let read = |file: &str| {
                std::fs::read_to_string(format!("/proc/{}/{file}", p.pid)).unwrap_or_default()
            };
            let stat = read("stat");
            let name = stat
                .find('(')
                .zip(stat.rfind(')'))
                .map_or("?", |(open, close)| &stat[open + 1..close]);
            let state = stat
                .rfind(')')
                .and_then(|close| stat.get(close + 2..close + 3))
                .unwrap_or("?");
            let threads =
                std::fs::read_dir(format!("/proc/{}/task", p.pid)).map_or(0, |tasks| tasks.count());
            format!(
                "{} {name} {state}, {threads} threads, waits in {:?}",
                p.pid,
                read("wchan")
            )
        })
        .collect();
    format!("[{}]", live.join("; "))
}

/// Live (non-zombie) descendants of this process.
pub fn live_descendants() -> usize {
    descendants(std::process::id() as i32)
        .iter()
        .filter(|p| !p.zombie)
        .count()
}

/// Zombie descendants of this process.
pub fn zombie_descendants() -> usize {
    descendants(std::process::id() as i32)
        .iter()
        .filter(|p| p.zombie)
        .count()
}

/// This process's open descriptors.
pub fn open_fds() -> usize {
    // The directory's own descriptor is listed too.
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count().saturating_sub(1))
}

/// A field of /proc/self/status in kB (VmRSS, VmHWM).
pub fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let value = line.strip_prefix(field)?.strip_prefix(':')?;
                value.trim().trim_end_matches(" kB").trim().parse().ok()
            })
        })
        .unwrap_or(0)
}

/// Polls `condition` every 5 ms (on `R`'s timer) until it holds or `limit`
/// passes; whether it held.
pub async fn settle<R: Runtime>(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        R::sleep(Duration::from_millis(5)).await;
    }
}

/// A small deterministic generator (xorshift64*), seeded per run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// Milliseconds, for figures.
pub fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}
