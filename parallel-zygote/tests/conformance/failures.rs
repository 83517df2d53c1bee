//! What a worker's failure looks like from the parent: a panic (the `run`
//! worker survives it), an abort, a SIGKILL mid-call, a death before the
//! first reply, and the zygote itself gone.

use std::time::{Duration, Instant};

use futures_util::future::{join, join_all};
use libtest_mimic::Failed;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use parallel_zygote::async_core::{Error, Parallel, Runtime};
use parallel_zygote::ExitStatus;

use super::{check, known_pid, wait_gone, within, Harness};

pub async fn run_call_panic_reports_message_and_location_and_worker_survives<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let picky = parallel.run(|x: u32| async move {
        if x == 13 {
            panic!("unlucky number {x}");
        }
        x
    })?;
    match picky.call(13).await {
        Err(Error::Panicked { report, call, .. }) => {
            check(call.is_some(), "a run panic names its call")?;
            check(
                report.message == "unlucky number 13",
                format!("message {:?}", report.message),
            )?;
            // The panic is in this file, whatever path the adapter included
            // the suite by.
            let location = report.location.unwrap_or_default();
            check(
                location.file == file!() && location.line > 0 && location.column > 0,
                format!("location {location:?}, expected in {}", file!()),
            )?;
        }
        other => return Err(format!("expected a panic error, got {other:?}").into()),
    }
    check(
        picky.call(7).await? == 7,
        "the worker still answers after a panicking call",
    )
}

pub async fn spawn_panic_is_reported<R: Runtime>(parallel: Parallel<R>) -> Result<(), Failed> {
    let result = parallel
        .spawn(
            |_: ()| async move { panic!("spawned task fails") as () },
            (),
        )
        .await;
    let message = match &result {
        Err(error @ Error::Panicked { report, .. }) if report.message == "spawned task fails" => {
            error.to_string()
        }
        other => return Err(format!("expected a panic error, got {other:?}").into()),
    };
    check(
        message.contains("panicked at") && message.contains("spawned task fails"),
        message,
    )
}

pub async fn worker_abort_reports_sigabrt_and_the_call<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let fragile = parallel.run(|x: u32| async move {
        if x == 2 {
            // Not in the repo: an abort may write a core file.
            let _ = std::env::set_current_dir(std::env::temp_dir());
            std::process::abort();
        }
        x
    })?;
    check(fragile.call(1).await? == 1, "first call")?;
    match fragile.call(2).await {
        Err(error @ Error::WorkerDied { call: Some(2), .. }) => {
            check(error.signal() == Some(libc::SIGABRT), format!("{error}"))?;
            check(
                error.to_string().contains("signal 6") && error.to_string().contains("call 2"),
                error.to_string(),
            )
        }
        other => Err(format!("expected WorkerDied for call 2, got {other:?}").into()),
    }
}

pub async fn worker_sigkill_mid_call_reports_signal_and_call<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let sleeper = parallel.run(|seconds: u64| async move {
        R::sleep(Duration::from_secs(seconds)).await;
        seconds
    })?;
    check(sleeper.call(0).await? == 0, "warm-up call")?;
    let pid = known_pid::<R>("run worker", || sleeper.pid()).await?;
    // Call 2 sleeps a minute; 100 ms into it, the worker is killed from
    // outside. Both halves run in this future: no task to spawn.
    let call = async {
        let result = sleeper.call(60).await;
        (result, Instant::now())
    };
    let killer = async {
        R::sleep(Duration::from_millis(100)).await;
        let sent = kill(Pid::from_raw(pid), Signal::SIGKILL);
        if sent.is_err() {
            sleeper.kill(); // do not leave the call waiting a minute
        }
        (sent, Instant::now())
    };
    let ((result, answered), (sent, killed)) = join(call, killer).await;
    sent?;
    match result {
        Err(error @ Error::WorkerDied { call: Some(2), .. }) => {
            check(error.signal() == Some(libc::SIGKILL), error.to_string())?;
            let delay = answered.saturating_duration_since(killed);
            check(
                delay < Duration::from_secs(1),
                format!("the error came {delay:?} after the kill"),
            )
        }
        other => Err(format!("expected WorkerDied for call 2, got {other:?}").into()),
    }
}

/// Workers killed in one burst exit together, and their SIGCHLDs merge in
/// the zygote: every call must still fail with the worker's real signal,
/// which only the zygote's report of each exit gives.
pub async fn workers_killed_at_once_each_report_their_signal<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    const WORKERS: usize = 30;
    let mut sleepers = Vec::new();
    for _ in 0..WORKERS {
        sleepers.push(parallel.run(|seconds: u64| async move {
            R::sleep(Duration::from_secs(seconds)).await;
            seconds
        })?);
    }
    let mut pids = Vec::new();
    for sleeper in &sleepers {
        check(sleeper.call(0).await? == 0, "warm-up call")?;
        pids.push(known_pid::<R>("run worker", || sleeper.pid()).await?);
    }
    // A minute-long call on each; 100 ms into them, every worker is
    // killed from outside, in one burst.
    let calls = join_all(sleepers.iter().map(|sleeper| sleeper.call(60)));
    let killer = async {
        R::sleep(Duration::from_millis(100)).await;
        let mut sent = Ok(());
        for &pid in &pids {
            sent = sent.and(kill(Pid::from_raw(pid), Signal::SIGKILL));
        }
        if sent.is_err() {
            for sleeper in &sleepers {
                sleeper.kill(); // do not leave the calls waiting a minute
            }
        }
        sent
    };
    let (results, sent) = join(calls, killer).await;
    sent?;
    for (index, result) in results.into_iter().enumerate() {
        match result {
            Err(error @ Error::WorkerDied { .. }) => check(
                error.signal() == Some(libc::SIGKILL),
                format!("worker {index}: {error}"),
            )?,
            other => {
                return Err(format!("worker {index}: expected WorkerDied, got {other:?}").into())
            }
        }
    }
    Ok(())
}

pub async fn worker_dying_before_first_reply_errors_promptly<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let started = Instant::now();
    let result = parallel
        .spawn(|_: ()| async move { std::process::exit(3) as () }, ())
        .await;
    match result {
        Err(Error::WorkerDied {
            status: Some(ExitStatus::Exited(3)),
            ..
        }) => {}
        other => return Err(format!("expected WorkerDied with exit code 3, got {other:?}").into()),
    }
    check(
        started.elapsed() < Duration::from_secs(1),
        format!("took {:?}", started.elapsed()),
    )
}

/// The name of the dead-zygote trial.
pub const ZYGOTE_GONE: &str = "zygote_gone_gives_a_clear_error_promptly";
/// The [`HELPER_ENV`] value that runs [`zygote_gone_helper`].
pub const ZYGOTE_GONE_HELPER: &str = "zygote-gone";

/// Kills a zygote: done in a helper process (this test binary run again
/// with [`HELPER_ENV`] set), so that the other trials keep theirs.
pub fn zygote_gone_gives_a_clear_error_promptly() -> Result<(), Failed> {
    super::run_helper(ZYGOTE_GONE_HELPER)
}

/// The helper process: a zygote of its own, killed mid-way. Prints `ok` on
/// success, what went wrong otherwise.
pub fn zygote_gone_helper<H: Harness>() {
    let outcome = H::init()
        .map_err(Failed::from)
        .and_then(|parallel| H::block_on(Box::pin(zygote_gone(parallel))));
    match outcome {
        Ok(()) => println!("ok"),
        Err(failed) => println!("{}", failed.message().unwrap_or("failed")),
    }
}

async fn zygote_gone<R: Runtime>(parallel: Parallel<R>) -> Result<(), Failed> {
    let add = parallel.run(|x: u32| async move { x + 1 })?;
    check(add.call(1).await? == 2, "a call before the zygote dies")?;
    // The pid can trail the call's answer: wait for it, bounded.
    let worker = known_pid::<R>("run worker", || add.pid()).await?;
    kill(Pid::from_raw(parallel.zygote().pid()), Signal::SIGKILL)?;
    let started = Instant::now();
    // The run worker dies with its zygote (the kernel delivers its
    // parent-death signal asynchronously, so wait for that first).
    check(
        wait_gone::<R>(worker, Duration::from_secs(1)).await,
        format!("worker {worker} outlived its zygote by 1 s"),
    )?;
    // Its calls report the death, naming the zygote: the worker died with it.
    let call = within::<R, _>(Duration::from_secs(3), add.call(2)).await;
    if !matches!(&call, Some(Err(Error::Zygote(gone))) if matches!(**gone, parallel_zygote::Error::ZygoteGone { .. }))
    {
        return Err(format!("call on a worker of a dead zygote gave {call:?}").into());
    }
    // A new spawn fails with the zygote error, without hanging.
    let result = within::<R, _>(
        Duration::from_secs(3),
        parallel.spawn(|x: u32| async move { x }, 1),
    )
    .await;
    match result {
        Some(Err(Error::Zygote(gone)))
            if matches!(*gone, parallel_zygote::Error::ZygoteGone { .. }) =>
        {
            eprintln!(
                "    errors in {:?} after the zygote died",
                started.elapsed()
            );
            Ok(())
        }
        other => Err(format!("spawn after zygote death gave {other:?}").into()),
    }
}
