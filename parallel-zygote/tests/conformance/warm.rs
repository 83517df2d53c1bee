//! Pre-forked workers (`Parallel::warm_workers`): a spawn takes one, the set
//! refills (to its minimum after `min_refill_delay`, to its maximum after
//! `refill_delay`), a worker that died while it waited is never used, and
//! nothing outlives the handle, not even a refill still pending at its drop.
//!
//! Each scenario forks its workers from a snapshot of its own, so that the
//! snapshot's children are exactly this scenario's workers (other scenarios
//! run at the same time on the main zygote).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use parallel_zygote::async_core::{Parallel, Runtime, WarmConfig};

use super::{check, wait_gone, within};

const WAIT: Duration = Duration::from_secs(10);

fn nothing(_: Vec<u8>) {}

/// Its argument plus one, and the worker's pid.
async fn plus_one_and_pid(x: u64) -> (u64, i32) {
    (x + 1, std::process::id() as i32)
}

async fn double(x: u64) -> u64 {
    x * 2
}

/// The live (not zombie) children of process `parent`.
fn children_of(parent: i32) -> HashSet<i32> {
    let mut children = HashSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return children;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the parenthesized command name: state, then ppid.
        let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (Some(state), Some(ppid)) = (fields.next(), fields.next()) else {
            continue;
        };
        if state != "Z" && ppid.parse::<i32>() == Ok(parent) {
            children.insert(pid);
        }
    }
    children
}

/// Polls (up to [`WAIT`]) until `done` holds; false if it never did.
async fn eventually<R: Runtime>(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        R::sleep(Duration::from_millis(5)).await;
    }
}

/// A snapshot of its own with pre-forked workers, and its zygote's pid.
fn warm_snapshot<R: Runtime>(
    parallel: &Parallel<R>,
    config: WarmConfig,
) -> Result<(Parallel<R>, i32), Failed> {
    // A scope of its own: the shutdown scenario must not end other scenarios.
    let snapshot = parallel.scope().snapshot(nothing, Vec::new())?;
    let zygote = snapshot.zygote().pid();
    Ok((snapshot.warm_workers(config)?, zygote))
}

pub async fn warm_spawn_uses_a_preforked_worker_and_the_set_refills<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    // Refilled to the minimum at once (inside the spawn), to check it right
    // after; the default's deferred refill has a scenario of its own.
    let config = WarmConfig::new(1, 3)
        .min_refill_delay(Duration::ZERO)
        .refill_delay(Duration::from_millis(20));
    let (warm, zygote) = warm_snapshot(&parallel, config)?;
    check(
        warm.warm_idle() == 3,
        format!("{} pre-forked, not 3", warm.warm_idle()),
    )?;
    check(
        eventually::<R>(|| children_of(zygote).len() == 3).await,
        format!(
            "the snapshot has {} children, not 3",
            children_of(zygote).len()
        ),
    )?;
    let preforked = children_of(zygote);
    let (value, pid) = within::<R, _>(WAIT, warm.spawn(plus_one_and_pid, 41))
        .await
        .ok_or("a warm spawn did not answer")??;
    check(value == 42, format!("warm spawn answered {value}"))?;
    check(
        preforked.contains(&pid),
        format!("the spawn ran in {pid}, not one of the pre-forked {preforked:?}"),
    )?;
    check(
        warm.warm_idle() >= config.min,
        format!(
            "{} waiting right after a spawn, fewer than the minimum",
            warm.warm_idle()
        ),
    )?;
    check(
        eventually::<R>(|| warm.warm_idle() == 3).await,
        format!("refilled to {} after the delay, not 3", warm.warm_idle()),
    )?;
    // Every kind of spawn runs right on pre-forked workers.
    for x in 0..10 {
        let (value, _) = warm.spawn(plus_one_and_pid, x).await?;
        check(value == x + 1, format!("spawn {x} answered {value}"))?;
    }
    let run = warm.run(double)?;
    for x in 0..10 {
        let value = run.call(x).await?;
        check(value == x * 2, format!("run call {x} answered {value}"))?;
    }
    Ok(())
}

pub async fn warm_workers_that_wait_before_building_their_runtime_serve_too<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    // Options named explicitly: the workers wait for Start with no runtime
    // (the path for options other than the adapter's defaults).
    let snapshot = parallel.scope().snapshot(nothing, Vec::new())?;
    let zygote = snapshot.zygote().pid();
    let warm = snapshot
        .worker_runtime(<R::Worker as Default>::default())
        .warm_workers(WarmConfig::new(1, 2))?;
    check(
        eventually::<R>(|| children_of(zygote).len() == 2).await,
        "the two pre-forked workers did not appear",
    )?;
    let preforked = children_of(zygote);
    let (value, pid) = within::<R, _>(WAIT, warm.spawn(plus_one_and_pid, 1))
        .await
        .ok_or("a warm spawn did not answer")??;
    check(value == 2, format!("warm spawn answered {value}"))?;
    check(
        preforked.contains(&pid),
        format!("the spawn ran in {pid}, not one of the pre-forked {preforked:?}"),
    )?;
    let run = warm.run(double)?;
    let doubled = run.call(21).await?;
    check(doubled == 42, format!("run call answered {doubled}"))
}

/// A label, a length and a checksum of the bytes that came with it.
async fn summary((label, bytes): (String, serde_bytes::ByteBuf)) -> (String, usize, u64) {
    (label, bytes.len(), checksum(&bytes))
}

async fn plain_summary(bytes: Vec<u8>) -> (usize, u64) {
    (bytes.len(), checksum(&bytes))
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().enumerate().fold(0u64, |sum, (i, &b)| {
        sum.wrapping_mul(31).wrapping_add(b as u64 ^ i as u64)
    })
}

/// Spawn arguments of every size (on both sides of the sizes from which a
/// Start's arguments are moved into their frame rather than copied, read
/// into a buffer of their own, and kept in it) reach pre-forked workers
/// whole: on both kinds (the adapter's default runtime, and named options
/// that wait without one), with the default codec and a plugged one.
pub async fn warm_spawns_take_arguments_of_every_size<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let (default, _) = warm_snapshot(&parallel, WarmConfig::new(1, 2))?;
    let waiting = parallel
        .scope()
        .snapshot(nothing, Vec::new())?
        .worker_runtime(<R::Worker as Default>::default())
        .warm_workers(WarmConfig::new(1, 2))?;
    for (kind, warm) in [("default", default), ("waiting", waiting)] {
        for len in [0, 100, 16 * 1024 - 30, 16 * 1024 + 1, 70_000, (1 << 20) + 3] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let label = format!("{kind} {len}");
            let expected = (label.clone(), len, checksum(&bytes));
            let argument = (label.clone(), serde_bytes::ByteBuf::from(bytes.clone()));
            let got = within::<R, _>(WAIT, warm.spawn(summary, argument))
                .await
                .ok_or_else(|| format!("{label}: no answer"))??;
            check(got == expected, format!("{label}: the worker saw {got:?}"))?;
            let expected = (len, checksum(&bytes));
            let plain = warm.spawn(plain_summary, bytes.clone()).await?;
            check(plain == expected, format!("{label}, plain: {plain:?}"))?;
            let scrambled = warm
                .with_codec::<super::calls::Scrambled>()
                .spawn(plain_summary, bytes)
                .await?;
            check(
                scrambled == expected,
                format!("{label}, plugged codec: {scrambled:?}"),
            )?;
        }
    }
    Ok(())
}

pub async fn warm_worker_killed_while_idle_is_replaced_not_used<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let config = WarmConfig::new(2, 2).refill_delay(Duration::from_millis(20));
    let (warm, zygote) = warm_snapshot(&parallel, config)?;
    check(
        eventually::<R>(|| children_of(zygote).len() == 2).await,
        "the two pre-forked workers did not appear",
    )?;
    let killed = children_of(zygote);
    kill_and_spawn_past::<R>(&warm, &killed).await?;
    check(
        eventually::<R>(|| warm.warm_idle() == 2).await,
        format!("{} waiting after the replacements, not 2", warm.warm_idle()),
    )
}

pub async fn warm_workers_end_with_the_handle_and_at_shutdown<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    // Dropped: the pre-forked workers exit, while their zygote lives on.
    let (warm, zygote) = warm_snapshot(&parallel, WarmConfig::new(2, 4))?;
    let zygote_handle = warm.zygote().clone();
    check(
        eventually::<R>(|| children_of(zygote).len() == 4).await,
        "the four pre-forked workers did not appear",
    )?;
    let answer = warm.spawn(double, 4).await?;
    check(answer == 8, format!("spawn answered {answer}"))?;
    drop(warm);
    check(
        eventually::<R>(|| children_of(zygote).is_empty()).await,
        format!("workers {:?} outlived their handle", children_of(zygote)),
    )?;
    check(
        zygote_handle.is_alive(),
        "the snapshot zygote itself went away",
    )?;

    // Shut down: the pre-forked workers go, spawns are refused.
    let (warm, zygote) = warm_snapshot(&parallel, WarmConfig::new(2, 2))?;
    check(
        eventually::<R>(|| children_of(zygote).len() == 2).await,
        "the two pre-forked workers did not appear",
    )?;
    warm.shutdown(Duration::from_secs(1)).await;
    check(
        warm.warm_idle() == 0,
        "pre-forked workers listed after shutdown",
    )?;
    check(
        eventually::<R>(|| children_of(zygote).is_empty()).await,
        format!("workers {:?} outlived the shutdown", children_of(zygote)),
    )?;
    check(
        warm.spawn(double, 1).await.is_err(),
        "a spawn after shutdown was not refused",
    )
}

pub async fn deferred_refill_tops_the_set_up_to_its_minimum<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    // The default `min_refill_delay`; the refill to the maximum an hour
    // away, so that only the deferred refill to the minimum can fork here.
    let config = WarmConfig::new(2, 3).refill_delay(Duration::from_secs(3600));
    let (warm, zygote) = warm_snapshot(&parallel, config)?;
    check(
        eventually::<R>(|| children_of(zygote).len() == 3).await,
        "the three pre-forked workers did not appear",
    )?;
    let preforked = children_of(zygote);
    // Two spawns leave one waiting, below the minimum of 2.
    for x in 0..2 {
        let (value, pid) = within::<R, _>(WAIT, warm.spawn(plus_one_and_pid, x))
            .await
            .ok_or("a warm spawn did not answer")??;
        check(value == x + 1, format!("spawn {x} answered {value}"))?;
        check(
            preforked.contains(&pid),
            format!("spawn {x} ran in {pid}, not one of the pre-forked {preforked:?}"),
        )?;
    }
    check(
        eventually::<R>(|| warm.warm_idle() == 2).await,
        format!(
            "{} waiting after the deferred refill, not the minimum 2",
            warm.warm_idle()
        ),
    )?;
    check(
        eventually::<R>(|| {
            children_of(zygote)
                .iter()
                .any(|pid| !preforked.contains(pid))
        })
        .await,
        "no worker forked by the refill among the snapshot's children",
    )?;
    // The set serves on: the leftover worker, then the refilled one.
    for x in 0..2 {
        let (value, _) = within::<R, _>(WAIT, warm.spawn(plus_one_and_pid, x))
            .await
            .ok_or("a spawn after the refill did not answer")??;
        check(
            value == x + 1,
            format!("spawn after the refill answered {value}"),
        )?;
    }
    Ok(())
}

pub async fn refill_pending_at_drop_or_shutdown_forks_nothing<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    // A refill due long after the handle is gone: it must find the set
    // gone and fork nothing, and the waiting workers must go with the handle.
    let config = WarmConfig::new(2, 2)
        .min_refill_delay(Duration::from_millis(200))
        .refill_delay(Duration::from_millis(300));
    for shutdown in [false, true] {
        let (warm, zygote) = warm_snapshot(&parallel, config)?;
        // Kept: the snapshot zygote outlives the handle, so a refill could fork.
        let zygote_handle = warm.zygote().clone();
        check(
            eventually::<R>(|| children_of(zygote).len() == 2).await,
            "the two pre-forked workers did not appear",
        )?;
        let answer = within::<R, _>(WAIT, warm.spawn(double, 4))
            .await
            .ok_or("a warm spawn did not answer")??;
        check(answer == 8, format!("spawn answered {answer}"))?;
        if shutdown {
            warm.shutdown(Duration::from_secs(1)).await;
        } else {
            drop(warm);
        }
        let how = if shutdown {
            "a shutdown"
        } else {
            "the handle's drop"
        };
        check(
            eventually::<R>(|| children_of(zygote).is_empty()).await,
            format!("workers {:?} outlived {how}", children_of(zygote)),
        )?;
        // Past both delays (a slow machine only makes this check weaker):
        // the refill found nothing to fill.
        R::sleep(Duration::from_millis(500)).await;
        check(
            children_of(zygote).is_empty(),
            format!("a refill pending at {how} forked {:?}", children_of(zygote)),
        )?;
        check(
            zygote_handle.is_alive(),
            "the snapshot zygote itself went away",
        )?;
    }
    Ok(())
}

pub async fn warm_worker_killed_after_its_refill_registered_it_is_skipped<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    // The workers a refill forks (and those waiting then) are registered
    // with the runtime ahead, on runtimes that do so: kill those, and a
    // spawn must still find out and go on without them.
    let config = WarmConfig::new(2, 2).refill_delay(Duration::from_millis(20));
    let (warm, zygote) = warm_snapshot(&parallel, config)?;
    check(
        eventually::<R>(|| children_of(zygote).len() == 2).await,
        "the two pre-forked workers did not appear",
    )?;
    let answer = within::<R, _>(WAIT, warm.spawn(double, 4))
        .await
        .ok_or("a warm spawn did not answer")??;
    check(answer == 8, format!("spawn answered {answer}"))?;
    check(
        eventually::<R>(|| warm.warm_idle() == 2).await,
        format!("{} waiting after the refill, not 2", warm.warm_idle()),
    )?;
    // Past the refill to the maximum too (a slow machine only makes this
    // check weaker: the workers are then killed before registration).
    R::sleep(Duration::from_millis(100)).await;
    let mut killed = HashSet::new();
    check(
        eventually::<R>(|| {
            killed = children_of(zygote);
            killed.len() == 2
        })
        .await,
        format!("the snapshot has {:?} children, not 2 waiting", killed),
    )?;
    kill_and_spawn_past::<R>(&warm, &killed).await?;
    drop(warm);
    check(
        eventually::<R>(|| children_of(zygote).is_empty()).await,
        format!("workers {:?} outlived their handle", children_of(zygote)),
    )
}

/// Kills the pre-forked workers `killed` (all those waiting), waits until
/// the handle knows them dead, then spawns three times: each spawn answers,
/// none in a killed worker.
async fn kill_and_spawn_past<R: Runtime>(
    warm: &Parallel<R>,
    killed: &HashSet<i32>,
) -> Result<(), Failed> {
    for &pid in killed {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;
    }
    for &pid in killed {
        check(
            wait_gone::<R>(pid, WAIT).await,
            format!("killed worker {pid} lingers"),
        )?;
    }
    // Known dead by the handle once the zygote reported the exits: from then
    // on neither may be used (a spawn racing the kill itself could be).
    check(
        eventually::<R>(|| warm.warm_idle() == 0).await,
        format!(
            "{} killed workers still listed as waiting",
            warm.warm_idle()
        ),
    )?;
    for x in 0..3 {
        let (value, pid) = within::<R, _>(WAIT, warm.spawn(plus_one_and_pid, x))
            .await
            .ok_or("a spawn after the kills did not answer")??;
        check(value == x + 1, format!("spawn {x} answered {value}"))?;
        check(
            !killed.contains(&pid),
            format!("spawn {x} claims to have run in killed worker {pid}"),
        )?;
    }
    Ok(())
}
