//! Pools: a timeout that does not break the pool, a poisoned input among a
//! thousand, recycling, `map_unordered`.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use libtest_mimic::Failed;
use parallel_zygote::async_core::{Error, Parallel, Pool, PoolConfig, Runtime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::check;

pub async fn timeout_kills_stuck_worker_and_pool_keeps_serving<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let config = PoolConfig::default()
        .size(2)
        .call_timeout(Duration::from_millis(300));
    let pool = Pool::new(
        &parallel,
        |millis: u64| async move {
            // Blocks the worker's thread: only a kill ends it.
            std::thread::sleep(Duration::from_millis(millis));
            millis
        },
        config,
    )?;
    let started = Instant::now();
    match pool.call(60_000).await {
        Err(Error::Timeout { after, .. }) => {
            check(after == Duration::from_millis(300), format!("{after:?}"))?
        }
        other => return Err(format!("expected a timeout, got {other:?}").into()),
    }
    check(
        started.elapsed() < Duration::from_secs(2),
        "timeout was prompt",
    )?;
    for i in 0..20 {
        check(pool.call(i).await? == i, "pool serves after a timeout")?;
    }
    Ok(())
}

pub async fn pool_of_4_over_1000_inputs_with_one_poisoned<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let pool = Pool::new(
        &parallel,
        |x: u32| async move {
            if x == 500 {
                let _ = std::env::set_current_dir(std::env::temp_dir());
                std::process::abort();
            }
            x * 2
        },
        PoolConfig::default().size(4),
    )?;
    let started = Instant::now();
    let results: Vec<Result<u32, Error>> = pool
        .map(futures_util::stream::iter(0..1000u32))
        .collect()
        .await;
    check(results.len() == 1000, "one result per input")?;
    for (i, result) in results.iter().enumerate() {
        match (i, result) {
            (500, Err(error @ Error::WorkerDied { .. })) => {
                check(error.signal() == Some(libc::SIGABRT), error.to_string())?
            }
            (500, other) => return Err(format!("poisoned input gave {other:?}").into()),
            (i, Ok(value)) => check(*value == i as u32 * 2, format!("input {i} gave {value}"))?,
            (i, Err(error)) => return Err(format!("input {i} failed: {error}").into()),
        }
    }
    eprintln!("    pool of 4: 1000 inputs in {:?}", started.elapsed());
    check(pool.idle_pids().len() == 4, "the pool is back to 4 workers")
}

pub async fn pool_recycles_workers_after_max_calls<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let pool = Pool::new(
        &parallel,
        |_: ()| async move { std::process::id() },
        PoolConfig::default().size(1).max_calls_per_worker(3),
    )?;
    let mut pids = Vec::new();
    for _ in 0..9 {
        pids.push(pool.call(()).await?);
    }
    let distinct: std::collections::BTreeSet<_> = pids.iter().collect();
    check(
        distinct.len() == 3,
        format!(
            "9 calls at 3 per worker used {} workers: {pids:?}",
            distinct.len()
        ),
    )
}

pub async fn pool_map_unordered_reports_indices<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let pool = Pool::new(
        &parallel,
        |x: u64| async move {
            R::sleep(Duration::from_millis(10 * (5 - x % 5))).await;
            x
        },
        PoolConfig::default().size(3),
    )?;
    let mut seen: Vec<(usize, u64)> = Vec::new();
    let mut stream = std::pin::pin!(pool.map_unordered(futures_util::stream::iter(0..20u64)));
    while let Some((index, result)) = stream.next().await {
        seen.push((index, result?));
    }
    seen.sort();
    check(
        seen == (0..20).map(|i| (i as usize, i)).collect::<Vec<_>>(),
        format!("{seen:?}"),
    )
}

pub async fn pool_replaces_idle_workers_killed_before_a_call<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let pool = Pool::new(
        &parallel,
        |x: u32| async move { x + 1 },
        PoolConfig::default().size(2),
    )?;
    check(pool.call(1).await? == 2, "warm call")?;
    // Both workers' pids become known (the zygote's answers arrive on their own).
    let started = Instant::now();
    let pids = loop {
        let pids = pool.pids();
        if pids.len() == 2 {
            break pids;
        }
        if started.elapsed() > Duration::from_secs(5) {
            return Err(format!("pids not known after 5 s: {pids:?}").into());
        }
        R::sleep(Duration::from_millis(10)).await;
    };
    for pid in &pids {
        kill(Pid::from_raw(*pid), Signal::SIGKILL)?;
    }
    // Wait until each is reaped, not merely a zombie: a thread group's
    // leader shows as a zombie while its other threads (a runtime's) still
    // exit, and until the last one has, its socket is open and a call
    // written to it counts as delivered.
    for pid in &pids {
        let started = Instant::now();
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            if started.elapsed() > Duration::from_secs(5) {
                return Err(format!("worker {pid} not reaped in 5 s").into());
            }
            R::sleep(Duration::from_millis(2)).await;
        }
    }
    // The pool was not told: every call must still succeed, on fresh
    // workers. Except (the known defect in RELIABILITY.md, seen on glommio,
    // whose io_uring teardown keeps a reaped worker's socket open a moment
    // longer): a call written into such a socket before the zygote's report
    // of the exit arrives counts as delivered and fails naming SIGKILL, at
    // most once per killed worker, never twice in a row for one call.
    let mut landed_on_the_dead = 0;
    for i in 0..10u32 {
        let answer = pool.call(i).await;
        if let Err(error) = &answer {
            if error.signal() == Some(libc::SIGKILL) && landed_on_the_dead < pids.len() {
                landed_on_the_dead += 1;
                eprintln!("    call {i} landed on a killed worker: {error}");
                let again = pool.call(i).await;
                check(
                    matches!(again, Ok(x) if x == i + 1),
                    format!("call {i} again after the kill: {again:?}"),
                )?;
                continue;
            }
        }
        check(
            matches!(answer, Ok(x) if x == i + 1),
            format!("call {i} after the kill: {answer:?}"),
        )?;
    }
    // Sequential calls may all go to the worker that served the last one:
    // two at once take both idle workers, so a killed one still waiting at
    // the bottom is found (and replaced) too.
    let (a, b) = futures_util::future::join(pool.call(100), pool.call(200)).await;
    check(
        matches!((&a, &b), (Ok(101), Ok(201))),
        format!("two calls at once after the kill: {a:?}, {b:?}"),
    )?;
    let stats = pool.stats();
    eprintln!("    after the kill: {stats:?}");
    check(stats.deaths >= 1, format!("deaths counted: {stats:?}"))?;
    check(
        stats.replacements >= stats.deaths,
        format!("each death replaced: {stats:?}"),
    )?;
    let now = pool.pids();
    check(
        now.iter().all(|pid| !pids.contains(pid)),
        format!("no killed worker left: {now:?} vs {pids:?}"),
    )?;
    Ok(())
}

pub async fn cancelled_pool_call_leaves_no_worker_listed<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let pool = Pool::new(
        &parallel,
        |millis: u64| async move {
            // Blocks the worker's thread: only a kill ends it.
            std::thread::sleep(Duration::from_millis(millis));
            millis
        },
        PoolConfig::default().size(1),
    )?;
    check(pool.call(0).await? == 0, "warm call")?;
    let cancelled = super::within::<R, _>(Duration::from_millis(200), pool.call(60_000)).await;
    check(
        cancelled.is_none(),
        "the call was still running, and is dropped",
    )?;
    // Dropping the call killed its worker: the pool must not list it.
    let pids = pool.pids();
    check(pids.is_empty(), format!("no worker listed: {pids:?}"))?;
    check(pool.call(5).await? == 5, "the pool serves on")?;
    Ok(())
}
