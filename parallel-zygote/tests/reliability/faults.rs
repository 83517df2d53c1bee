//! Faults: the parent killed, a storm of worker kills, the zygote killed
//! with spawns in flight.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::future::{join, join_all};
use futures_util::StreamExt;
use libtest_mimic::Failed;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use parallel_zygote::async_core::{
    Error, MessageSender, MessageStream, Parallel, Pool, PoolConfig, Runtime,
};

use super::{
    block_on_figures, check, descendants, live_descendants, ms, open_fds, report, run_helper,
    settle, size, within, Harness, Rng, ARG_ENV, HELPER_ENV,
};

pub const WATCHER: &str = "parent-killed-watcher";
pub const VICTIM_BUSY: &str = "parent-killed-victim-busy";
pub const VICTIM_STARTUP: &str = "parent-killed-victim-startup";
pub const ZYGOTE_KILLED: &str = "zygote-killed";

/// How many workers a busy victim holds.
const BUSY_WORKERS: usize = 50;

/// *parent killed*: a watcher process (a child subreaper, so every orphan
/// of the victim becomes its child) starts victims and SIGKILLs them, busy
/// or mid start-up, and measures how long until none of their processes
/// is left.
pub fn parent_killed<H: Harness>() -> Result<(), Failed> {
    let busy = size(4, 20);
    let startup = size(4, 20);
    let figures = run_helper(
        WATCHER,
        &format!("{busy},{startup}"),
        Duration::from_secs(60 + 15 * (busy + startup) as u64),
    )?;
    report::<H::R>("parent_killed", &figures);
    Ok(())
}

/// The watcher: `arg` is `busy,startup` (trial counts).
pub fn watcher<H: Harness>(arg: &str) -> Result<Vec<String>, Failed> {
    let (busy, startup) = arg.split_once(',').ok_or("arg: busy,startup")?;
    let (busy, startup): (usize, usize) = (busy.parse()?, startup.parse()?);
    // SAFETY: prctl with integer arguments only.
    let made = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    check(made == 0, "PR_SET_CHILD_SUBREAPER failed")?;
    let me = std::process::id() as i32;
    let mut rng = Rng::new(u64::from(std::process::id()));
    let mut gone_busy = Vec::new();
    let mut gone_startup = Vec::new();
    let mut held = Vec::new();
    for trial in 0..busy + startup {
        let is_busy = trial < busy;
        let mut victim = Command::new(std::env::current_exe()?)
            .env(
                HELPER_ENV,
                if is_busy { VICTIM_BUSY } else { VICTIM_STARTUP },
            )
            .env(ARG_ENV, "")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        if is_busy {
            let stdout = victim.stdout.take().ok_or("no stdout")?;
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = BufReader::new(stdout).read_line(&mut line);
                let _ = tx.send(line);
            });
            let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
            if !line.starts_with("ready") {
                let _ = victim.kill();
                let _ = victim.wait();
                return Err(format!("busy victim {trial} said {line:?} instead of ready").into());
            }
            held.push(descendants(me).iter().filter(|p| !p.zombie).count());
        } else {
            // Somewhere in start-up: before, during or just after init and
            // its first spawns.
            std::thread::sleep(Duration::from_micros(rng.below(60_000)));
        }
        kill(Pid::from_raw(victim.id() as i32), Signal::SIGKILL)?;
        victim.wait()?;
        let killed = Instant::now();
        let gone = loop {
            reap_all();
            let left: Vec<i32> = descendants(me)
                .iter()
                .filter(|p| !p.zombie)
                .map(|p| p.pid)
                .collect();
            if left.is_empty() {
                break killed.elapsed();
            }
            if killed.elapsed() > Duration::from_secs(1) {
                for pid in &left {
                    let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
                }
                return Err(format!(
                    "trial {trial} ({}): {} processes survived the parent by 1 s: {left:?}",
                    if is_busy { "busy" } else { "start-up" },
                    left.len()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        reap_all();
        if is_busy {
            gone_busy.push(gone);
        } else {
            gone_startup.push(gone);
        }
    }
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times.get(times.len() / 2).copied().unwrap_or_default()
    };
    let max = |times: &[Duration]| times.iter().max().copied().unwrap_or_default();
    Ok(vec![
        format!(
            "{busy} busy trials (processes held: min {} max {}), 0 survivors; all gone after median {}, max {}",
            held.iter().min().unwrap_or(&0),
            held.iter().max().unwrap_or(&0),
            ms(median(&mut gone_busy.clone())),
            ms(max(&gone_busy))
        ),
        format!(
            "{startup} start-up trials, 0 survivors; all gone after median {}, max {}",
            ms(median(&mut gone_startup.clone())),
            ms(max(&gone_startup))
        ),
    ])
}

/// Reaps every exited child of this process.
fn reap_all() {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// A busy victim: a zygote, a derived snapshot, and 50 busy workers (`run`
/// mid-call, `process` streaming, a pool mid-call, spawns of the snapshot);
/// prints `ready` when they all run, then waits to be killed.
pub fn victim_busy<H: Harness>(_: &str) -> Result<Vec<String>, Failed> {
    let parallel = H::init()?;
    block_on_figures::<H, _>(busy::<H::R>(parallel))
}

async fn nap<R: Runtime>(seconds: u64) -> u64 {
    R::sleep(Duration::from_secs(seconds)).await;
    seconds
}

async fn busy<R: Runtime>(parallel: Parallel<R>) -> Result<Vec<String>, Failed> {
    let each = BUSY_WORKERS / 5;
    let snapshot = parallel.snapshot(|_: Vec<u8>| {}, Vec::new())?;
    let runs = (0..each)
        .map(|_| parallel.run(|s: u64| nap::<R>(s)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut processes = Vec::new();
    for _ in 0..each {
        let process = parallel.process(
            |mut input: MessageStream<u64>, output: MessageSender<u64>| async move {
                while let Some(Ok(x)) = input.recv().await {
                    if output.send(x).await.is_err() {
                        break;
                    }
                }
            },
        )?;
        process.sender.send(1).await?;
        processes.push(process);
    }
    let pool = Pool::new(
        &parallel,
        |s: u64| nap::<R>(s),
        PoolConfig::default().size(each),
    )?;
    let spawns: Vec<_> = (0..each)
        .map(|_| parallel.spawn(|s: u64| nap::<R>(s), 600))
        .collect();
    let snapshot_spawns: Vec<_> = (0..each)
        .map(|_| snapshot.spawn(|s: u64| nap::<R>(s), 600))
        .collect();
    let mut work: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>> = Vec::new();
    for run in &runs {
        work.push(Box::pin(async move {
            let _ = run.call(600).await;
        }));
    }
    for _ in 0..each {
        work.push(Box::pin(async {
            let _ = pool.call(600).await;
        }));
    }
    for spawn in spawns.into_iter().chain(snapshot_spawns) {
        work.push(Box::pin(async move {
            let _ = spawn.await;
        }));
    }
    // Each process echoes its first message back: streaming both ways.
    for process in &mut processes {
        work.push(Box::pin(async move {
            let _ = process.stream.next().await;
            R::sleep(Duration::from_secs(600)).await;
        }));
    }
    let announce = async {
        // zygote + snapshot zygote + 50 workers; the count only grows.
        let all = settle::<R>(Duration::from_secs(30), || {
            live_descendants() >= BUSY_WORKERS + 2
        })
        .await;
        println!("ready {} {all}", live_descendants());
        R::sleep(Duration::from_secs(600)).await;
    };
    join(join_all(work), announce).await;
    Ok(Vec::new())
}

/// A victim killed during start-up: init, a snapshot, a few spawns.
pub fn victim_startup<H: Harness>(_: &str) -> Result<Vec<String>, Failed> {
    let parallel = H::init()?;
    block_on_figures::<H, _>(async move {
        let snapshot = parallel.snapshot(|_: Vec<u8>| {}, Vec::new())?;
        let spawns: Vec<_> = (0..10)
            .map(|_| parallel.spawn(|s: u64| nap::<H::R>(s), 600))
            .chain((0..10).map(|_| snapshot.spawn(|s: u64| nap::<H::R>(s), 600)))
            .collect();
        join_all(spawns).await;
        Ok(Vec::new())
    })
}

/// *worker storm*: a pool of 8 maps the items while a random worker of it
/// is SIGKILLed every 20 ms; every item answered right or failed naming
/// SIGKILL, none lost or duplicated; the first call after the storm works.
pub async fn worker_storm<R: Runtime>(parallel: Parallel<R>) -> Result<(), Failed> {
    let items = size(1500, 5000);
    let pool = Pool::new(
        &parallel,
        |x: u64| async move {
            // Long enough for kills to land mid-call.
            R::sleep(Duration::from_millis(2)).await;
            x * 3 + 1
        },
        PoolConfig::default().size(8),
    )?;
    let started = Instant::now();
    let done = std::cell::Cell::new(false);
    let mut results: Vec<(usize, Result<u64, Error>)> = Vec::with_capacity(items);
    let work = async {
        let mut stream =
            std::pin::pin!(pool.map_unordered(futures_util::stream::iter(0..items as u64)));
        while let Some(result) = stream.next().await {
            results.push(result);
        }
        done.set(true);
    };
    let mut kills = 0usize;
    let mut last_killed = None;
    let killer = async {
        let mut rng = Rng::new(started.elapsed().as_nanos() as u64 ^ 0x5eed);
        while !done.get() {
            R::sleep(Duration::from_millis(20)).await;
            let pids = pool.pids();
            if !pids.is_empty() {
                let pid = pids[rng.below(pids.len() as u64) as usize];
                if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                    kills += 1;
                    last_killed = Some(pid);
                }
            }
        }
    };
    let bounded = within::<R, _>(Duration::from_secs(240), join(work, killer)).await;
    check(bounded.is_some(), "the storm did not end within 240 s")?;
    let storm = started.elapsed();
    let mut seen = vec![0u32; items];
    let (mut right, mut killed, mut wrong, mut other) = (0usize, 0usize, 0usize, Vec::new());
    for (index, result) in &results {
        seen[*index] += 1;
        match result {
            Ok(value) if *value == *index as u64 * 3 + 1 => right += 1,
            Ok(_) => wrong += 1,
            Err(error) if error.signal() == Some(libc::SIGKILL) => killed += 1,
            Err(error) => other.push(format!("{index}: {error}")),
        }
    }
    let lost = seen.iter().filter(|&&n| n == 0).count();
    let duplicated = seen.iter().filter(|&&n| n > 1).count();
    // The first call right after the storm: the last kill may be under
    // 20 ms old, its worker idle in the pool and not yet known dead.
    let first = within::<R, _>(Duration::from_secs(10), pool.call(41)).await;
    // Then once the last killed worker is reaped.
    if let Some(pid) = last_killed {
        settle::<R>(Duration::from_secs(5), || {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        })
        .await;
    }
    let after = within::<R, _>(Duration::from_secs(10), pool.call(41)).await;
    let figures = vec![
        format!("{items} items, {kills} kills in {}", ms(storm)),
        format!("{right} right, {killed} failed naming SIGKILL, lost {lost}, duplicated {duplicated}, wrong {wrong}, other errors {}", other.len()),
        format!("first call right after: {first:?}; once the last killed worker is reaped: {after:?}"),
        format!("{:?}", pool.stats()),
    ];
    report::<R>("worker_storm", &figures);
    check(kills >= 5, format!("only {kills} kills landed"))?;
    check(
        lost == 0 && duplicated == 0 && wrong == 0,
        figures[1].clone(),
    )?;
    check(
        other.is_empty(),
        format!("errors not naming SIGKILL: {other:?}"),
    )?;
    // Known today (a kill landing on an idle worker just before the storm
    // ends can fail the next call with WorkerDied, call None): asserted to
    // name the signal at least, strictly only when asked.
    let first_ok = matches!(first, Some(Ok(124)));
    if std::env::var("PARALLEL_RELIABILITY_STRICT").is_ok() {
        check(
            first_ok,
            format!("first call right after the storm: {first:?}"),
        )?;
    }
    check(
        first_ok || matches!(&first, Some(Err(e)) if e.signal() == Some(libc::SIGKILL)),
        format!("first call right after the storm: {first:?}"),
    )?;
    check(
        matches!(after, Some(Ok(124))),
        format!("first call after the storm, once its last victim is reaped: {after:?}"),
    )
}

/// *zygote killed* with 50 spawns in flight, in a helper process so the
/// descriptor count is its own.
pub fn zygote_killed<H: Harness>() -> Result<(), Failed> {
    let figures = run_helper(ZYGOTE_KILLED, "", Duration::from_secs(60))?;
    report::<H::R>("zygote_killed_under_load", &figures);
    Ok(())
}

pub fn zygote_killed_helper<H: Harness>(_: &str) -> Result<Vec<String>, Failed> {
    let parallel = H::init()?;
    block_on_figures::<H, _>(zygote_killed_body::<H::R>(parallel))
}

async fn zygote_killed_body<R: Runtime>(parallel: Parallel<R>) -> Result<Vec<String>, Failed> {
    // Warm up whatever is made lazily, then count.
    check(
        parallel.spawn(|x: u64| async move { x + 1 }, 1).await? == 2,
        "warm-up spawn",
    )?;
    settle::<R>(Duration::from_secs(5), || live_descendants() == 1).await;
    let fds_before = open_fds();
    let zygote = parallel.zygote().pid();
    let handles: Vec<_> = (0..50)
        .map(|_| parallel.spawn(|s: u64| nap::<R>(s), 600))
        .collect();
    // Mid-load: let some start (those already forked die with the zygote,
    // the others are still requests in flight).
    settle::<R>(Duration::from_secs(5), || live_descendants() >= 10).await;
    let started = live_descendants().saturating_sub(1);
    kill(Pid::from_raw(zygote), Signal::SIGKILL)?;
    let killed = Instant::now();
    let outcomes = join_all(handles.into_iter().map(|handle| async move {
        let result = within::<R, _>(Duration::from_secs(5), handle).await;
        (result, killed.elapsed())
    }))
    .await;
    let mut slowest = Duration::ZERO;
    let mut bad = Vec::new();
    for (i, (result, after)) in outcomes.iter().enumerate() {
        slowest = slowest.max(*after);
        let named = matches!(result, Some(Err(Error::Zygote(gone)))
            if matches!(**gone, parallel_zygote::Error::ZygoteGone { .. }));
        if !named || *after > Duration::from_secs(2) {
            bad.push(format!("spawn {i} after {after:?}: {result:?}"));
        }
    }
    // Reaped by the handle: no /proc entry at all, not even a zombie.
    let reaped = settle::<R>(Duration::from_secs(2), || {
        !std::path::Path::new(&format!("/proc/{zygote}")).exists()
    })
    .await;
    let workers_gone = settle::<R>(Duration::from_secs(2), || live_descendants() == 0).await;
    let fds_back = settle::<R>(Duration::from_secs(2), || open_fds() <= fds_before).await;
    let fds_after = open_fds();
    let figures = vec![
        format!(
            "50 spawns ({started} forked) failed with ZygoteGone, slowest after {}",
            ms(slowest)
        ),
        format!("zygote reaped: {reaped}; workers gone: {workers_gone}"),
        format!("fds {fds_before} before, {fds_after} after"),
    ];
    check(
        bad.is_empty(),
        format!("{} spawns wrong: {bad:?}", bad.len()),
    )?;
    check(
        reaped,
        format!("zygote {zygote} not reaped 2 s after its death"),
    )?;
    check(workers_gone, "workers outlived their zygote by 2 s")?;
    check(
        fds_back,
        format!("fds: {fds_before} before, {fds_after} after"),
    )?;
    Ok(figures)
}
