//! Concurrent callers of one `run` worker and who reads their answers:
//! answers that arrive out of order reach their own callers, a caller
//! answered or cancelled mid-wait leaves the others served, a worker killed
//! while calls wait fails each with its own call, and a caller whose future
//! is kept but no longer polled keeps no other call from its answer. (Written
//! for a design in which a waiting caller read the socket itself; that
//! design was reverted for the last case, and the scenarios hold for any
//! reader: the driver reads today.)

use std::pin::pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::future::{join, join_all, select, Either};
use futures_util::stream::{FuturesUnordered, StreamExt};
use libtest_mimic::Failed;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use parallel_zygote::async_core::{Error, Parallel, Runtime};

use super::{check, known_pid, wait_gone, within};

/// In a worker: the level its waiting calls wait for (see [`gate`]).
static LEVEL: AtomicU32 = AtomicU32::new(0);

/// What [`gate`] adds to a level to raise the gate to it rather than wait.
const RAISE: u32 = 1000;

/// What [`gate`] takes for "wait for level 1, then a while longer".
const LATE: u32 = 100;

/// Runs in a worker: `RAISE + n` raises the worker's gate to `n` and
/// answers at once; `LATE + i` waits for level 1 then 50 ms more; any other
/// `n` waits (polling, on the worker's runtime) until the gate is at `n` or
/// above. Each answers its argument. Calls run concurrently in a worker, so
/// waiting calls stay outstanding while later ones are answered.
async fn gate<R: Runtime>(n: u32) -> u32 {
    if let Some(level) = n.checked_sub(RAISE) {
        LEVEL.fetch_max(level, Ordering::SeqCst);
        return n;
    }
    let level = if n >= LATE { 1 } else { n };
    while LEVEL.load(Ordering::SeqCst) < level {
        R::sleep(Duration::from_millis(1)).await;
    }
    if n >= LATE {
        R::sleep(Duration::from_millis(50)).await;
    }
    n
}

/// How long any step here may take on a loaded machine.
const BOUND: Duration = Duration::from_secs(10);

/// The first caller waits while the answers of the calls made after it
/// arrive first: each must reach its own caller.
pub async fn answers_arriving_out_of_order_reach_their_callers<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let run = parallel.run(gate::<R>)?;
    // Polled first, alone on the channel: it becomes the reader.
    let first = run.call(1);
    let later = async {
        // Answered while `first` waits: read by it.
        for n in 2..40 {
            let answer = run.call(RAISE + n).await?;
            check(
                answer == RAISE + n,
                format!("call {n} was answered {answer}"),
            )?;
        }
        run.call(RAISE + 1).await?;
        Ok::<_, Failed>(())
    };
    match within::<R, _>(BOUND, join(first, later)).await {
        Some((first, later)) => {
            later?;
            let first = first?;
            check(first == 1, format!("the first call was answered {first}"))
        }
        None => Err(format!("the calls were not all answered within {BOUND:?}").into()),
    }
}

/// Once the first caller is answered, the callers still waiting must be
/// answered too, though no new call wakes the driver. Each call is polled only when its own waker is woken (as if each
/// ran in a task of its own), so no caller is polled by chance.
pub async fn callers_polled_only_when_woken_are_all_answered<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let run = parallel.run(gate::<R>)?;
    let calls: FuturesUnordered<_> = std::iter::once(1)
        .chain(LATE..LATE + 10)
        .chain([RAISE + 1])
        .map(|n| {
            let run = run.clone();
            // Pushed first, so polled first: `1` becomes the reader.
            async move { (n, run.call(n).await) }
        })
        .collect();
    let Some(answers) = within::<R, _>(BOUND, calls.collect::<Vec<_>>()).await else {
        return Err(format!("the calls were not all answered within {BOUND:?}").into());
    };
    for (n, answer) in answers {
        let answer = answer?;
        check(answer == n, format!("call {n} was answered {answer}"))?;
    }
    Ok(())
}

/// The first caller's future is dropped while it waits (which kills the
/// worker, as any cancelled call does): every other caller must still hear
/// of the death rather than wait for a read nobody does.
pub async fn a_cancelled_first_caller_leaves_no_caller_waiting<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let run = parallel.run(gate::<R>)?;
    check(run.call(RAISE).await? == RAISE, "warm-up call")?;
    let pid = known_pid::<R>("run worker", || run.pid()).await?;
    let reader = async {
        // Polled first: the reader. Loses the race, so it is dropped mid-read.
        match select(
            pin!(run.call(1)),
            pin!(R::sleep(Duration::from_millis(100))),
        )
        .await
        {
            Either::Left((answer, _)) => Err(format!("the gated call was answered: {answer:?}")),
            Either::Right(_) => Ok(()),
        }
    };
    let others = join_all((0..10).map(|_| run.call(1)));
    let Some((cancelled, answers)) = within::<R, _>(BOUND, join(reader, others)).await else {
        return Err(format!("the other callers still waited after {BOUND:?}").into());
    };
    cancelled?;
    for answer in answers {
        match answer {
            Err(Error::WorkerDied { call: Some(_), .. }) => {}
            other => {
                return Err(format!("expected WorkerDied naming the call, got {other:?}").into())
            }
        }
    }
    check(
        wait_gone::<R>(pid, Duration::from_secs(2)).await,
        format!("worker {pid} survived its cancelled call"),
    )
}

/// The worker is killed from outside while callers wait: each caller must
/// be answered with the death and the call it lost.
pub async fn worker_killed_while_calls_wait_fails_each_call<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let run = parallel.run(gate::<R>)?;
    check(run.call(RAISE).await? == RAISE, "warm-up call")?;
    let pid = known_pid::<R>("run worker", || run.pid()).await?;
    let waiting = join_all((0..10).map(|_| run.call(1)));
    let killer = async {
        // Let the calls reach the worker first (not required: a call that
        // had not fails the same way).
        R::sleep(Duration::from_millis(50)).await;
        let sent = kill(Pid::from_raw(pid), Signal::SIGKILL);
        if sent.is_err() {
            run.kill(); // do not leave the calls waiting
        }
        sent
    };
    let Some((answers, sent)) = within::<R, _>(BOUND, join(waiting, killer)).await else {
        return Err(format!("the callers still waited {BOUND:?} after the kill").into());
    };
    sent?;
    let mut lost = Vec::new();
    for answer in answers {
        match answer {
            Err(
                error @ Error::WorkerDied {
                    call: Some(call), ..
                },
            ) => {
                check(error.signal() == Some(libc::SIGKILL), error.to_string())?;
                lost.push(call);
            }
            other => {
                return Err(format!("expected WorkerDied naming the call, got {other:?}").into())
            }
        }
    }
    lost.sort_unstable();
    lost.dedup();
    check(
        lost.len() == 10,
        format!("the errors named {} different calls: {lost:?}", lost.len()),
    )
}

/// A caller that waited, then is no longer polled (its future kept aside
/// after a timeout, say), must not keep the other calls of its task from
/// their answers, nor lose its own. (It deadlocked when a waiting caller
/// read the socket itself: see BENCHMARKS.md, *Call round trips*.)
pub async fn a_call_set_aside_blocks_no_other_call<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let run = parallel.run(gate::<R>)?;
    let mut first = pin!(run.call(1));
    // Polled alone on the channel, it becomes the reader; then set aside.
    if within::<R, _>(Duration::from_millis(20), first.as_mut())
        .await
        .is_some()
    {
        return Err("the first call was answered before its gate was raised".into());
    }
    // The same task calls again while `first` is kept but not polled.
    match within::<R, _>(BOUND, run.call(RAISE + 1)).await {
        Some(answer) => check(answer? == RAISE + 1, "the second call got another's answer")?,
        None => {
            return Err(format!(
                "a call made while an earlier caller of its task held the read, \
                 unpolled, got no answer within {BOUND:?}"
            )
            .into())
        }
    }
    match within::<R, _>(BOUND, first).await {
        Some(answer) => check(answer? == 1, "the first call got another's answer"),
        None => Err(format!("the call set aside got no answer within {BOUND:?}").into()),
    }
}

/// A call alone on its channel, whose caller waited (on smol's `block_on`
/// thread the caller reads the channel itself then: `Runtime::CALLERS_READ`)
/// and is then no longer polled: the worker's death must still be noticed
/// (the channel closed for every handle) without the caller, and the
/// caller told of it once polled again. What the caller registered for
/// wakes that caller alone while it reads; without the driver's watchdog,
/// which takes the channel back from a reader that did not come for what
/// woke it, nobody would read the end of the channel.
pub async fn a_lone_caller_set_aside_leaves_no_death_unnoticed<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let run = parallel.run(gate::<R>)?;
    check(run.call(RAISE).await? == RAISE, "warm-up call")?;
    let pid = known_pid::<R>("run worker", || run.pid()).await?;
    let mut first = pin!(run.call(1));
    if within::<R, _>(Duration::from_millis(20), first.as_mut())
        .await
        .is_some()
    {
        return Err("the call was answered before its gate was raised".into());
    }
    if let Err(error) = kill(Pid::from_raw(pid), Signal::SIGKILL) {
        run.kill();
        return Err(format!("could not kill the worker: {error}").into());
    }
    let noticed = within::<R, _>(BOUND, async {
        while !run.is_closed() {
            R::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    if noticed.is_none() {
        return Err(format!(
            "the worker's death was not noticed within {BOUND:?} while its only \
             caller was set aside"
        )
        .into());
    }
    match within::<R, _>(BOUND, first).await {
        Some(Err(Error::WorkerDied { call: Some(_), .. })) => Ok(()),
        Some(other) => Err(format!("expected WorkerDied naming the call, got {other:?}").into()),
        None => Err(format!("the call set aside got no answer within {BOUND:?}").into()),
    }
}

/// A lone reading caller (see
/// [`a_lone_caller_set_aside_leaves_no_death_unnoticed`]) set aside before
/// its answer came: the answer wakes that caller alone, which does not
/// come; the driver, taking the channel back, must keep the answer for it,
/// then notice the worker's death, and the call, polled again, gets its
/// answer, not the death.
pub async fn a_lone_caller_set_aside_keeps_the_answer_that_came<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let run = parallel.run(gate::<R>)?;
    // Level 1: a `LATE` call then answers 50 ms after it is made.
    check(run.call(RAISE + 1).await? == RAISE + 1, "warm-up call")?;
    let pid = known_pid::<R>("run worker", || run.pid()).await?;
    let mut first = pin!(run.call(LATE + 1));
    // Polled once or twice (written, and its caller the channel's reader),
    // then set aside. A short window: the answer is 50 ms away, and a test
    // thread held off the CPU for that long under load would see it early.
    if within::<R, _>(Duration::from_millis(2), first.as_mut())
        .await
        .is_some()
    {
        return Err("the call was answered before its 50 ms".into());
    }
    // Its answer comes meanwhile.
    R::sleep(Duration::from_millis(200)).await;
    if let Err(error) = kill(Pid::from_raw(pid), Signal::SIGKILL) {
        run.kill();
        return Err(format!("could not kill the worker: {error}").into());
    }
    let noticed = within::<R, _>(BOUND, async {
        while !run.is_closed() {
            R::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    if noticed.is_none() {
        return Err(format!(
            "the worker's death was not noticed within {BOUND:?} while its only \
             caller, answered, was set aside"
        )
        .into());
    }
    match within::<R, _>(BOUND, first).await {
        Some(answer) => check(answer? == LATE + 1, "the call set aside got another answer"),
        None => Err(format!("the call set aside got no answer within {BOUND:?}").into()),
    }
}
