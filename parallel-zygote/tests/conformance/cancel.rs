//! Who stops a worker: `abort`, a spawn's handle dropped (or detached), a
//! call future dropped, the last `Run` dropped.

use std::pin::pin;
use std::time::{Duration, Instant};

use futures_util::future::{select, Either};
use libtest_mimic::Failed;
use parallel_zygote::async_core::{Error, Parallel, Runtime};

use super::{check, known_pid, temp_path, wait_gone, within};

/// Runs in a worker: sleeps a minute (on the worker's runtime).
async fn sleep_a_minute<R: Runtime>(_: ()) {
    R::sleep(Duration::from_secs(60)).await;
}

/// Runs in a worker: blocks its thread for a minute; only a kill ends it.
async fn block_a_minute(_: ()) {
    std::thread::sleep(Duration::from_secs(60));
}

pub async fn spawn_abort_kills_the_worker<R: Runtime>(parallel: Parallel<R>) -> Result<(), Failed> {
    let handle = parallel.spawn(sleep_a_minute::<R>, ());
    R::sleep(Duration::from_millis(50)).await;
    handle.abort();
    match within::<R, _>(Duration::from_secs(2), handle).await {
        Some(Err(error @ Error::WorkerDied { .. })) => {
            check(error.signal() == Some(libc::SIGKILL), error.to_string())?
        }
        other => return Err(format!("expected WorkerDied, got {other:?}").into()),
    }
    // Aborted at once, before the zygote even reported the pid.
    let handle = parallel.spawn(sleep_a_minute::<R>, ());
    handle.abort();
    match within::<R, _>(Duration::from_secs(2), handle).await {
        Some(Err(error @ Error::WorkerDied { .. })) => {
            check(error.signal() == Some(libc::SIGKILL), error.to_string())
        }
        other => Err(format!("expected WorkerDied after an immediate abort, got {other:?}").into()),
    }
}

/// An abandoned spawn: the handle is dropped unawaited, so the work stops.
pub async fn dropped_spawn_handle_kills_its_worker<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let handle = parallel.spawn(block_a_minute, ());
    let pid = known_pid::<R>("spawned worker", || handle.pid()).await?;
    drop(handle);
    check(
        wait_gone::<R>(pid, Duration::from_secs(2)).await,
        format!("worker {pid} outlived its dropped JoinHandle"),
    )
}

/// Runs in a worker: writes its pid to `path`, then blocks its thread for
/// a minute; only a kill ends it.
async fn say_pid_then_block(path: String) {
    std::fs::write(path, std::process::id().to_string()).unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

/// The pid a worker wrote to `path`, if it did within 5 s.
async fn pid_from_file<R: Runtime>(path: &std::path::Path) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.parse().ok())
        {
            let _ = std::fs::remove_file(path);
            return Some(pid);
        }
        if Instant::now() >= deadline {
            let _ = std::fs::remove_file(path);
            return None;
        }
        R::sleep(Duration::from_millis(10)).await;
    }
}

/// A handle dropped (or timed out) at once, never polled, before the
/// zygote reported its pid: the kill waits for the pid in the driver, which
/// the handle would have polled in place, so the drop must hand the driver
/// to its task.
pub async fn spawn_handle_dropped_unpolled_kills_its_worker<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    for timed_out in [false, true] {
        let path = temp_path("unpolled");
        let text = path.to_str().ok_or("temp path is not UTF-8")?.to_owned();
        let handle = parallel.spawn(say_pid_then_block, text);
        if timed_out {
            match handle.timeout(Duration::ZERO).await {
                Err(Error::Timeout { .. }) => {}
                other => return Err(format!("expected a timeout, got {other:?}").into()),
            }
        } else {
            drop(handle);
        }
        // Killed as soon as the zygote reports it, the worker mostly never
        // writes its pid; one that does must be gone soon after (left to
        // run, it blocks a minute).
        if let Some(pid) = pid_from_file::<R>(&path).await {
            check(
                wait_gone::<R>(pid, Duration::from_secs(20)).await,
                format!(
                    "worker {pid} outlived its handle (timed out: {timed_out}), dropped unpolled"
                ),
            )?;
        }
    }
    Ok(())
}

/// Runs in a worker: waits a little, then writes "done" to `path`.
async fn finish_later<R: Runtime>(path: String) {
    R::sleep(Duration::from_millis(100)).await;
    std::fs::write(path, "done").unwrap();
}

/// The counterpart: a detached handle lets its worker finish.
pub async fn detached_spawn_runs_to_completion<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let path = temp_path("detached");
    let text = path.to_str().ok_or("temp path is not UTF-8")?.to_owned();
    parallel.spawn(finish_later::<R>, text).detach();
    let deadline = Instant::now() + Duration::from_secs(5);
    let written = loop {
        match std::fs::read_to_string(&path) {
            Ok(text) if text == "done" => break true,
            _ if Instant::now() >= deadline => break false,
            _ => R::sleep(Duration::from_millis(10)).await,
        }
    };
    let _ = std::fs::remove_file(&path);
    check(
        written,
        "the detached worker did not finish its work within 5 s",
    )
}

pub async fn dropped_call_future_kills_its_worker<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let stuck = parallel.run(block_a_minute)?;
    // Lose a race against a short sleep: the call future is dropped.
    match select(
        pin!(stuck.call(())),
        pin!(R::sleep(Duration::from_millis(100))),
    )
    .await
    {
        Either::Left(_) => return Err("the stuck call finished".into()),
        Either::Right(_) => {}
    }
    // Killed on the drop; the pid may be reported only now.
    let pid = known_pid::<R>("run worker", || stuck.pid()).await?;
    check(
        wait_gone::<R>(pid, Duration::from_secs(2)).await,
        format!("worker {pid} survived its cancelled call"),
    )?;
    match stuck.call(()).await {
        Err(error @ Error::WorkerDied { .. }) => {
            check(error.signal() == Some(libc::SIGKILL), error.to_string())
        }
        other => Err(format!("later calls should report the death, got {other:?}").into()),
    }
}

pub async fn dropping_the_last_run_handle_ends_the_worker<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let echo = parallel.run(|x: u8| async move { x })?;
    echo.call(1).await?;
    // The pid can trail the call's answer: wait for it, bounded.
    let pid = known_pid::<R>("run worker", || echo.pid()).await?;
    drop(echo);
    check(
        wait_gone::<R>(pid, Duration::from_secs(2)).await,
        "worker exits when its last handle is dropped",
    )
}
