//! Pools beyond one function: per-worker options kept across replacement,
//! any function on one pool, and one pooled call under control (its pid,
//! kill, cancellation while queued), shutdown and kill of the whole pool.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::future::{join, join3};
use futures_util::StreamExt;
use libtest_mimic::Failed;
use parallel_zygote::async_core::{AnyPool, Error, Parallel, Pool, PoolConfig, Runtime};
use parallel_zygote::SpawnOptions;

use super::{check, known_pid, wait_gone, within};

/// Waits (up to 5 s) until `pids` gives `count` known pids; them, sorted.
async fn all_pids<R: Runtime>(
    count: usize,
    pids: impl Fn() -> Vec<i32>,
) -> Result<Vec<i32>, Failed> {
    let started = Instant::now();
    loop {
        let mut now = pids();
        if now.len() == count {
            now.sort_unstable();
            return Ok(now);
        }
        if started.elapsed() > Duration::from_secs(5) {
            return Err(format!("{count} pids not known after 5 s: {now:?}").into());
        }
        R::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (up to 5 s) until process `pid` is reaped, not merely a zombie
/// (see `pool_replaces_idle_workers_killed_before_a_call`).
async fn reaped<R: Runtime>(pid: i32) -> Result<(), Failed> {
    let started = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        if started.elapsed() > Duration::from_secs(5) {
            return Err(format!("worker {pid} not reaped in 5 s").into());
        }
        R::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// One call per worker of a pool of 4 (each holds its worker 300 ms):
/// worker name (from `/proc/self/comm`, checked against `WORKER_INDEX`) → pid.
async fn names_of_4<R: Runtime>(
    pool: &Pool<u64, (String, i32), parallel_zygote::async_core::Postcard, R>,
) -> Result<BTreeMap<String, i32>, Failed> {
    let answers: Vec<_> = pool
        .map(futures_util::stream::iter(std::iter::repeat(300).take(4)))
        .collect()
        .await;
    let mut names = BTreeMap::new();
    for answer in answers {
        let (name, pid) = answer?;
        names.insert(name, pid);
    }
    check(
        names.keys().eq(["w0", "w1", "w2", "w3"].iter()),
        format!("worker i is named wi: {names:?}"),
    )?;
    Ok(names)
}

pub async fn pool_worker_i_keeps_its_options_after_a_replacement<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let pool = Pool::with_worker_options(
        &parallel,
        |millis: u64| async move {
            R::sleep(Duration::from_millis(millis)).await;
            // Both per-worker settings: the name `ps` shows and the
            // environment (the usual case: one GPU or core set per worker).
            let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
            let index = std::env::var("WORKER_INDEX").unwrap_or_default();
            let name = if comm.trim() == format!("w{index}") {
                comm.trim().to_string()
            } else {
                format!("name {comm:?} but WORKER_INDEX={index:?}")
            };
            (name, std::process::id() as i32)
        },
        PoolConfig::default().size(4),
        |index| {
            SpawnOptions::default()
                .name(format!("w{index}"))
                .env("WORKER_INDEX", index.to_string())
        },
    )?;
    let before = names_of_4(&pool).await?;
    // Replace one worker through the pool: kill the worker running a long
    // call. (A SIGKILL from outside races glommio's io_uring teardown, which
    // holds a dead worker's socket open a moment after it is reaped, so a
    // call written then counts as delivered and is not retried.)
    let mut task = pool.submit(60_000);
    let _ = within::<R, _>(Duration::from_millis(100), &mut task).await;
    let victim = known_pid::<R>("the long call's worker", || task.pid()).await?;
    task.kill();
    let killed = task.await;
    check(
        matches!(killed, Err(Error::WorkerDied { .. })),
        format!("the killed call: {killed:?}"),
    )?;
    let Some(victim_name) = before
        .iter()
        .find(|(_, pid)| **pid == victim)
        .map(|(name, _)| name.clone())
    else {
        return Err(format!("worker {victim} is not one of {before:?}").into());
    };
    reaped::<R>(victim).await?;
    let after = names_of_4(&pool).await?;
    check(
        after[&victim_name] != victim,
        format!("{victim_name} was replaced: {before:?} then {after:?}"),
    )?;
    for name in ["w0", "w1", "w2", "w3"]
        .into_iter()
        .filter(|n| *n != victim_name)
    {
        check(
            after[name] == before[name],
            format!("{name} kept its worker: {before:?} then {after:?}"),
        )?;
    }
    Ok(())
}

pub async fn any_pool_runs_three_different_functions<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let pool = AnyPool::new(&parallel, PoolConfig::default().size(2))?;
    let sum = pool.spawn(|(a, b): (u64, u64)| async move { a + b }, (2, 3));
    let text = pool.spawn(|n: u32| async move { "ab".repeat(n as usize) }, 3);
    let stats = pool.spawn(
        |xs: Vec<f64>| async move { (xs.len(), xs.iter().sum::<f64>(), std::process::id()) },
        vec![1.5, 2.5],
    );
    let (sum, text, stats) = join3(sum, text, stats).await;
    let (sum, text) = (sum?, text?);
    check(sum == 5, "sum")?;
    check(text == "ababab", "text")?;
    let (count, total, pid) = stats?;
    check(count == 2 && total == 4.0, format!("stats {count} {total}"))?;
    let pids = all_pids::<R>(2, || pool.pids()).await?;
    check(
        pids.contains(&(pid as i32)),
        format!("ran in a pool worker: {pid} in {pids:?}"),
    )?;
    // A panic is the call's error; the worker survives it.
    let panicked = pool
        .spawn(|_: ()| async move { panic!("any pool panic") as u8 }, ())
        .await;
    check(
        matches!(&panicked, Err(Error::Panicked { report, .. }) if report.message == "any pool panic"),
        format!("{panicked:?}"),
    )?;
    let product = parallel_zygote::spawn!(pool, (sum => a, count => b) || async move {
        a * b as u64
    });
    check(product.await? == 10, "spawn! on an any-function pool")?;
    let after = all_pids::<R>(2, || pool.pids()).await?;
    check(
        after == pids,
        format!("same workers: {pids:?} then {after:?}"),
    )?;
    check(pool.stats().deaths == 0, format!("{:?}", pool.stats()))
}

fn sleeper<R: Runtime>(
    parallel: &Parallel<R>,
    size: usize,
) -> Result<Pool<u64, u32, parallel_zygote::async_core::Postcard, R>, Error> {
    Pool::new(
        parallel,
        |millis: u64| async move {
            R::sleep(Duration::from_millis(millis)).await;
            std::process::id()
        },
        PoolConfig::default().size(size),
    )
}

/// A call killed before its first poll is withdrawn even though a worker
/// is free: it never runs, and no worker is touched.
pub async fn pool_task_killed_before_its_first_poll_never_runs<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let pool = sleeper(&parallel, 2)?;
    let before = all_pids::<R>(2, || pool.pids()).await?;
    let task = pool.submit(0);
    task.kill();
    let result = task.await;
    check(
        matches!(result, Err(Error::Cancelled)),
        format!("killed before its first poll: {result:?}"),
    )?;
    let stats = pool.stats();
    check(
        stats.deaths == 0 && stats.active == 0 && stats.queued == 0,
        format!("no worker touched, nothing left running or queued: {stats:?}"),
    )?;
    // Both workers still serve.
    let (a, b) = futures_util::future::join(pool.call(0), pool.call(0)).await;
    let after = all_pids::<R>(2, || pool.pids()).await?;
    check(after == before, format!("pids {before:?} then {after:?}"))?;
    check(
        a.is_ok() && b.is_ok(),
        format!("calls after it: {a:?}, {b:?}"),
    )?;
    // The same while every worker is busy: the kill comes before the call
    // ever queues, and the call must still leave without waiting for a
    // worker (the kill, not the queue, made its withdrawal channel).
    let mut a = pool.submit(300);
    let mut b = pool.submit(300);
    let polled = within::<R, _>(Duration::from_millis(100), join(&mut a, &mut b)).await;
    check(polled.is_none(), "both workers are busy")?;
    let task = pool.submit(0);
    task.kill();
    let result = task.await;
    check(
        matches!(result, Err(Error::Cancelled)),
        format!("killed before its first poll, workers busy: {result:?}"),
    )?;
    let (a, b) = join(a, b).await;
    check(
        a.is_ok() && b.is_ok(),
        format!("the busy calls: {a:?}, {b:?}"),
    )?;
    let stats = pool.stats();
    check(
        stats.deaths == 0 && stats.active == 0 && stats.queued == 0,
        format!("no worker touched, nothing left running or queued: {stats:?}"),
    )
}

pub async fn queued_pool_call_is_cancelled_without_touching_workers<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let pool = sleeper(&parallel, 2)?;
    let before = all_pids::<R>(2, || pool.pids()).await?;
    let mut a = pool.submit(1000);
    let mut b = pool.submit(1000);
    let mut queued = pool.submit(0);
    let polled = within::<R, _>(
        Duration::from_millis(300),
        join3(&mut a, &mut b, &mut queued),
    )
    .await;
    check(polled.is_none(), "both workers are busy for a second")?;
    let stats = pool.stats();
    check(
        stats.active == 2 && stats.queued == 1 && stats.size == 2,
        format!("two running, one queued: {stats:?}"),
    )?;
    check(
        !a.is_queued() && !b.is_queued() && queued.is_queued(),
        "a and b have workers",
    )?;
    check(queued.pid().is_none(), "a queued call has no worker")?;
    check(queued.cancel(), "the call was still queued")?;
    check(pool.stats().queued == 0, "the queue is empty")?;
    // A queued call killed is withdrawn: it never runs.
    let mut withdrawn = pool.submit(0);
    check(
        within::<R, _>(Duration::from_millis(100), &mut withdrawn)
            .await
            .is_none(),
        "still queued",
    )?;
    withdrawn.kill();
    let result = withdrawn.await;
    check(
        matches!(result, Err(Error::Cancelled)),
        format!("withdrawn: {result:?}"),
    )?;
    let (a, b) = join(a, b).await;
    let (a, b) = (a?, b?);
    check(
        before.contains(&(a as i32)) && before.contains(&(b as i32)) && a != b,
        "the running calls finished on the original workers",
    )?;
    let after = all_pids::<R>(2, || pool.pids()).await?;
    check(after == before, format!("pids {before:?} then {after:?}"))?;
    let stats = pool.stats();
    check(
        stats.deaths == 0 && stats.replacements == 0 && stats.active == 0,
        format!("no worker touched: {stats:?}"),
    )
}

/// A queued call woken for the worker just freed, and dropped before it
/// took it, passes its turn on: the next queued call runs (rather than
/// wait for another release, which here never comes).
pub async fn a_woken_queued_call_dropped_passes_its_turn_on<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let pool = sleeper(&parallel, 1)?;
    let mut running = pool.submit(300);
    let mut woken = pool.submit(0);
    let mut next = pool.submit(0);
    let polled = within::<R, _>(
        Duration::from_millis(100),
        join3(&mut running, &mut woken, &mut next),
    )
    .await;
    check(polled.is_none(), "the one worker is busy")?;
    let stats = pool.stats();
    check(
        stats.active == 1 && stats.queued == 2,
        format!("one running, two queued: {stats:?}"),
    )?;
    // The running call gives its worker back as it ends, waking the
    // first queued call, which is dropped before it is polled again.
    running.await?;
    drop(woken);
    let next = within::<R, _>(Duration::from_secs(5), next).await;
    check(
        matches!(next, Some(Ok(_))),
        format!("the next queued call ran: {next:?}"),
    )?;
    let stats = pool.stats();
    check(
        stats.active == 0 && stats.queued == 0 && stats.idle == 1 && stats.deaths == 0,
        format!("nothing left running or queued, no worker touched: {stats:?}"),
    )
}

pub async fn pool_task_kill_kills_its_worker_only<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let pool = sleeper(&parallel, 1)?;
    let mut task = pool.submit(60_000);
    check(
        within::<R, _>(Duration::from_millis(200), &mut task)
            .await
            .is_none(),
        "the call runs",
    )?;
    let pid = known_pid::<R>("pooled call's worker", || task.pid()).await?;
    task.kill();
    let result = task.await;
    check(
        matches!(&result, Err(error) if error.signal() == Some(libc::SIGKILL)),
        format!("killed: {result:?}"),
    )?;
    check(
        wait_gone::<R>(pid, Duration::from_secs(5)).await,
        "worker gone",
    )?;
    let next = pool.call(0).await? as i32;
    check(next != pid, "a fresh worker serves on")?;
    check(
        pool.stats().replacements >= 1,
        format!("{:?}", pool.stats()),
    )
}

pub async fn pool_shutdown_finishes_running_calls_and_refuses_new_ones<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let pool = sleeper(&parallel, 2)?;
    let mut a = pool.submit(500);
    let mut b = pool.submit(500);
    let polled = within::<R, _>(Duration::from_millis(150), join(&mut a, &mut b)).await;
    check(polled.is_none(), "both calls run")?;
    pool.shutdown();
    check(pool.is_shut_down() && pool.stats().shut_down, "shut down")?;
    match pool.call(1).await {
        Err(error @ Error::ShutDown) => check(
            error.to_string() == "the pool was shut down: it takes no new calls",
            error.to_string(),
        )?,
        other => return Err(format!("a call after shutdown gave {other:?}").into()),
    }
    let (a, b) = join(a, b).await;
    let pids = [a? as i32, b? as i32];
    for pid in pids {
        check(
            wait_gone::<R>(pid, Duration::from_secs(5)).await,
            format!("worker {pid} exits after its call"),
        )?;
    }
    check(
        pool.pids().is_empty(),
        format!("no workers: {:?}", pool.pids()),
    )
}

pub async fn pool_kill_ends_all_workers<R: Runtime>(parallel: Parallel<R>) -> Result<(), Failed> {
    let pool = sleeper(&parallel, 3)?;
    let pids = all_pids::<R>(3, || pool.pids()).await?;
    let mut running = pool.submit(60_000);
    check(
        within::<R, _>(Duration::from_millis(200), &mut running)
            .await
            .is_none(),
        "the call runs",
    )?;
    pool.kill();
    let result = running.await;
    check(
        matches!(result, Err(Error::WorkerDied { .. })),
        format!("the running call: {result:?}"),
    )?;
    for pid in pids {
        check(
            wait_gone::<R>(pid, Duration::from_secs(5)).await,
            format!("worker {pid} killed"),
        )?;
    }
    check(
        matches!(pool.call(0).await, Err(Error::ShutDown)),
        "a killed pool takes no calls",
    )
}
