//! Concurrent callers of one `run` worker and who reads their answers:
//! answers that arrive out of order reach their own callers, a caller
//! answered or cancelled mid-wait leaves the others served, a worker killed
//! while calls wait fails each with its own call, and a caller whose future
//! is kept but no longer polled keeps no other call from its answer; the
//! same with calls pipelined (64 in flight). The scenarios hold for any
//! reader: the driver's task, or on smol a caller on another thread than
//! the driver's (`Runtime::CALLERS_READ`), which since session 14 writes and
//! reads pipelined calls too.

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

/// How many calls the pipelined scenarios below keep in flight, as the
/// benchmarks' `buffer_unordered(64)` does.
const IN_FLIGHT: usize = 64;

/// Pipelined calls (64 in flight, as in the benchmarks) with the worker
/// killed from outside once 32 were answered: every call answered before
/// gets its value, every other caller the death, and none waits on. (On
/// smol's `block_on` thread such callers write and read the channel
/// themselves, taking turns as its reader: `Runtime::CALLERS_READ`.)
pub async fn pipelined_calls_with_the_worker_killed_halfway_each_end<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let run = parallel.run(gate::<R>)?;
    check(run.call(RAISE).await? == RAISE, "warm-up call")?;
    let pid = known_pid::<R>("run worker", || run.pid()).await?;
    let answered = AtomicU32::new(0);
    // The first 32 are answered at once, the rest wait for a level never
    // raised.
    let calls = futures_util::stream::iter(0..128u32)
        .map(|i| {
            let (run, answered) = (&run, &answered);
            async move {
                let answer = run.call(if i < 32 { RAISE } else { 1 }).await;
                answered.fetch_add(u32::from(answer.is_ok()), Ordering::SeqCst);
                (i, answer)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>();
    let killer = async {
        while answered.load(Ordering::SeqCst) < 32 {
            R::sleep(Duration::from_millis(1)).await;
        }
        let sent = kill(Pid::from_raw(pid), Signal::SIGKILL);
        if sent.is_err() {
            run.kill(); // do not leave the calls waiting
        }
        sent
    };
    let Some((answers, sent)) = within::<R, _>(BOUND, join(calls, killer)).await else {
        return Err(format!("the callers still waited {BOUND:?} after the kill").into());
    };
    sent?;
    check(answers.len() == 128, format!("{} answers", answers.len()))?;
    for (i, answer) in answers {
        match answer {
            Ok(value) if i < 32 => check(value == RAISE, format!("call {i} got {value}"))?,
            Err(error @ Error::WorkerDied { .. }) if i >= 32 => {
                check(error.signal() == Some(libc::SIGKILL), error.to_string())?;
            }
            other => return Err(format!("call {i}: unexpected {other:?}").into()),
        }
    }
    Ok(())
}

/// Pipelined callers waiting together, half of whose futures are dropped
/// mid-flight (which kills the worker, as any cancelled call does), among
/// them the last made, which on smol's `block_on` thread is the one that
/// writes and reads for the others: the callers kept must each hear of the
/// death rather than wait for a write or a read nobody does.
pub async fn pipelined_callers_dropped_mid_flight_leave_no_caller_waiting<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let run = parallel.run(gate::<R>)?;
    check(run.call(RAISE).await? == RAISE, "warm-up call")?;
    let pid = known_pid::<R>("run worker", || run.pid()).await?;
    let half = IN_FLIGHT / 2;
    let mut kept: FuturesUnordered<_> = (0..half).map(|_| run.call(1)).collect();
    let mut dropped: FuturesUnordered<_> = (0..half).map(|_| run.call(1)).collect();
    // One poll each: every call is made and waits.
    check(
        futures_util::poll!(kept.next()).is_pending(),
        "a gated call was answered",
    )?;
    check(
        futures_util::poll!(dropped.next()).is_pending(),
        "a gated call was answered",
    )?;
    drop(dropped);
    let Some(answers) = within::<R, _>(BOUND, kept.collect::<Vec<_>>()).await else {
        return Err(format!("the callers kept still waited after {BOUND:?}").into());
    };
    for answer in answers {
        // A call not made yet when the others were dropped (the poll above
        // may stop early, when the futures polled wake themselves) names
        // no call: it never reached the worker.
        match answer {
            Err(error @ Error::WorkerDied { .. }) => {
                check(error.signal() == Some(libc::SIGKILL), error.to_string())?;
            }
            other => return Err(format!("expected WorkerDied, got {other:?}").into()),
        }
    }
    check(
        wait_gone::<R>(pid, Duration::from_secs(2)).await,
        format!("worker {pid} survived its cancelled calls"),
    )
}

/// Pipelined callers waiting together, and one more made last and then set
/// aside unpolled (on smol's `block_on` thread, the caller that was to
/// write the calls made beside it, or to read for them): the others must
/// still all be answered, and the one set aside too once polled again.
pub async fn a_pipelined_call_set_aside_blocks_no_other_call<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let run = parallel.run(gate::<R>)?;
    check(run.call(RAISE).await? == RAISE, "warm-up call")?;
    let mut others: FuturesUnordered<_> = (0..IN_FLIGHT - 1).map(|_| run.call(1)).collect();
    check(
        futures_util::poll!(others.next()).is_pending(),
        "a gated call was answered",
    )?;
    let mut last = pin!(run.call(1));
    check(
        futures_util::poll!(last.as_mut()).is_pending(),
        "the last gated call was answered",
    )?;
    // `last` is kept, not polled, while the others wait, are let through
    // and answered.
    let raise = async { run.call(RAISE + 1).await };
    let Some((answers, raised)) =
        within::<R, _>(BOUND, join(others.collect::<Vec<_>>(), raise)).await
    else {
        return Err(format!(
            "calls waiting beside one set aside were not all answered within {BOUND:?}"
        )
        .into());
    };
    check(
        raised? == RAISE + 1,
        "the raising call got another's answer",
    )?;
    check(
        answers.len() == IN_FLIGHT - 1,
        format!("{} answers", answers.len()),
    )?;
    for answer in answers {
        check(answer? == 1, "a call got another's answer")?;
    }
    match within::<R, _>(BOUND, last).await {
        Some(answer) => check(answer? == 1, "the call set aside got another's answer"),
        None => Err(format!("the call set aside got no answer within {BOUND:?}").into()),
    }
}
