//! The adapter conformance suite (`parallel-zygote/tests/conformance`) on
//! smol: each trial under `smol::block_on`, plus the scenarios only smol has
//! (handles usable from any thread, `spawn_local` and `smol::spawn` in
//! workers, async-io timers for time limits, workers of another adapter).

#[path = "../../parallel-zygote/tests/conformance/mod.rs"]
mod conformance;

use std::rc::Rc;
use std::time::{Duration, Instant};

use conformance::{check, Harness, TestFuture};
use libtest_mimic::{Failed, Trial};
use parallel_smol::{Error, Parallel, Smol};

struct SmolHarness;

impl Harness for SmolHarness {
    type R = Smol;

    fn init() -> Result<Parallel, Error> {
        parallel_smol::init()
    }

    /// smol has no runtime to build: async-io's reactor and smol's global
    /// executor are process-wide, so each trial only blocks on its future.
    fn block_on(test: TestFuture) -> Result<(), Failed> {
        smol::block_on(test)
    }

    fn extra_trials(parallel: &Parallel) -> Vec<Trial> {
        macro_rules! trial {
            ($name:ident) => {
                conformance::trial::<Self>(stringify!($name), parallel.clone(), |p| {
                    Box::pin($name(p))
                })
            };
        }
        vec![
            trial!(workers_spawn_local_and_smol_spawn),
            trial!(call_timeout_fires_on_an_async_io_timer),
            trial!(tokio_workers_from_a_smol_parent),
            trial!(pipelined_calls_from_a_task_on_the_drivers_thread),
            trial!(pipelined_calls_from_block_on_and_from_a_task_at_once),
            trial!(a_call_reading_its_own_answer_does_not_wake_its_task),
            {
                // Not run through `block_on`: the point is a thread that
                // runs no smol at all.
                let parallel = parallel.clone();
                Trial::test("handles_work_outside_smol_block_on", move || {
                    handles_work_outside_smol_block_on(parallel)
                })
            },
            Trial::test("spawn_local_outside_a_worker_panics", || {
                // Quietly: the panic is expected.
                let hook = std::panic::take_hook();
                std::panic::set_hook(Box::new(|_| {}));
                let panicked = std::panic::catch_unwind(|| parallel_smol::spawn_local(async {}));
                std::panic::set_hook(hook);
                check(panicked.is_err(), "spawn_local in the parent panics")
            }),
        ]
    }
}

fn main() {
    conformance::main::<SmolHarness>();
}

/// Smol only: the worker's executor serves `spawn_local` (`!Send` tasks)
/// and smol's global executor works there too.
async fn workers_spawn_local_and_smol_spawn(parallel: Parallel) -> Result<(), Failed> {
    let sums = parallel.run(|n: u64| async move {
        // `!Send` state, shared with local tasks.
        let shared = Rc::new(std::cell::Cell::new(0u64));
        let local: Vec<_> = (1..=n)
            .map(|i| {
                let shared = Rc::clone(&shared);
                parallel_smol::spawn_local(async move {
                    async_io::Timer::after(Duration::from_millis(1)).await;
                    shared.set(shared.get() + i);
                })
            })
            .collect();
        for task in local {
            task.await;
        }
        let global = smol::spawn(async move { (1..=n).sum::<u64>() }).await;
        (shared.get(), global)
    })?;
    // Twice: the worker's executor serves call after call.
    for n in [10, 100] {
        let (local, global) = sums.call(n).await?;
        let expected = n * (n + 1) / 2;
        check(
            (local, global) == (expected, expected),
            format!("n = {n}: local {local}, global {global}"),
        )?;
    }
    Ok(())
}

/// Smol only: `call_timeout` runs on the parent's async-io timer.
async fn call_timeout_fires_on_an_async_io_timer(parallel: Parallel) -> Result<(), Failed> {
    let slow = parallel.run(|ms: u64| async move {
        async_io::Timer::after(Duration::from_millis(ms)).await;
        ms
    })?;
    check(
        // Generous: the worker starts during this call, which a loaded
        // machine once made last over 5 s.
        slow.call_timeout(1, Duration::from_secs(60)).await? == 1,
        "a fast call",
    )?;
    let started = Instant::now();
    let late = slow.call_timeout(60_000, Duration::from_millis(100)).await;
    check(
        matches!(late, Err(Error::Timeout { .. })),
        format!("a stuck call gave {late:?}"),
    )?;
    check(started.elapsed() < Duration::from_secs(5), "promptly")
}

/// The wire is the same: a smol parent runs tokio workers.
async fn tokio_workers_from_a_smol_parent(parallel: Parallel) -> Result<(), Failed> {
    let tokio = parallel.worker_runtime(parallel_tokio::WorkerRuntime::CurrentThread);
    let value = tokio
        .spawn(
            |x: u64| async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                x * 2
            },
            21,
        )
        .await?;
    check(value == 42, format!("got {value}"))
}

/// Calls pipelined by a task of smol's global executor, which runs on the
/// thread of their channel's driver: the shared trial, whose caller blocks
/// its thread after making its calls, so that only a chunk its caller
/// wrote can reach the worker (the driver cannot run until the caller
/// yields; before session 13 that trial failed here after 60 s).
async fn pipelined_calls_from_a_task_on_the_drivers_thread(
    parallel: Parallel,
) -> Result<(), Failed> {
    let on_executor = smol::spawn(async move {
        conformance::calls::pipelined_calls_reach_the_worker_while_their_caller_keeps_the_thread(
            parallel,
        )
        .await
        .map_err(|failed| format!("{failed:?}"))
    });
    Ok(on_executor.await?)
}

/// Smol only: pipelined calls (64 in flight each) on one worker from the
/// `block_on` future, whose callers write and read the channel themselves
/// on its thread (`Runtime::CALLERS_READ`), and from a task of smol's
/// executor, on the driver's thread, at once: each caller gets its own
/// answer, whichever thread wrote its call or read its answer.
async fn pipelined_calls_from_block_on_and_from_a_task_at_once(
    parallel: Parallel,
) -> Result<(), Failed> {
    use futures_util::stream::{self, StreamExt};

    async fn pipelined(run: parallel_smol::Run<u64, u64>, from: u64) -> Vec<(u64, u64)> {
        stream::iter(from..from + 2000)
            .map(|x| {
                let run = &run;
                async move { (x, run.call(x).await.unwrap_or(0)) }
            })
            .buffer_unordered(64)
            .collect()
            .await
    }
    let run = parallel.run(|x: u64| async move { x * 2 + 1 })?;
    let task = smol::spawn(pipelined(run.clone(), 0));
    let here = pipelined(run.clone(), 10_000).await;
    let there = task.await;
    for (where_, answers) in [("block_on", here), ("task", there)] {
        check(
            answers.len() == 2000,
            format!("{} answers in the {where_}", answers.len()),
        )?;
        for (x, answer) in answers {
            check(
                answer == x * 2 + 1,
                format!("call {x} in the {where_} got {answer}"),
            )?;
        }
    }
    check(run.call(5).await? == 11, "a call after both")
}

/// Smol only: a call made from the `block_on` future, which reads its
/// own answer on its thread (`Runtime::CALLERS_READ`), returns it without
/// waking its own task. Such a wake, made during the poll that completes
/// the call, would have async-io's `block_on` make an extra pass of its
/// reactor and poll the next call once more before waiting (BENCHMARKS.md,
/// session 15). Wakes from other threads (the driver's, the reactor's) are
/// not counted: only those made by the polling thread during the poll
/// that returns the answer.
async fn a_call_reading_its_own_answer_does_not_wake_its_task(
    parallel: Parallel,
) -> Result<(), Failed> {
    use std::future::{poll_fn, Future};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Wake, Waker};
    use std::thread::{self, ThreadId};

    /// Forwards to the task's waker, counting the wakes made on `polling`.
    struct Counting {
        task: Waker,
        polling: ThreadId,
        here: AtomicUsize,
    }
    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            if thread::current().id() == self.polling {
                self.here.fetch_add(1, Ordering::SeqCst);
            }
            self.task.wake_by_ref();
        }
    }

    let run = parallel.run(|x: u64| async move { x + 1 })?;
    check(run.call(0).await? == 1, "the first call")?;
    let mut woken_by_itself = 0;
    for x in 1..=200u64 {
        let mut call = std::pin::pin!(run.call(x));
        let mut counting: Option<(Arc<Counting>, Waker)> = None;
        let answer = poll_fn(|cx| {
            let (count, waker) = counting.get_or_insert_with(|| {
                let count = Arc::new(Counting {
                    task: cx.waker().clone(),
                    polling: thread::current().id(),
                    here: AtomicUsize::new(0),
                });
                let waker = Waker::from(Arc::clone(&count));
                (count, waker)
            });
            let before = count.here.load(Ordering::SeqCst);
            let poll = call.as_mut().poll(&mut Context::from_waker(waker));
            if poll.is_ready() && count.here.load(Ordering::SeqCst) > before {
                woken_by_itself += 1;
            }
            poll
        })
        .await?;
        check(answer == x + 1, format!("call {x} got {answer}"))?;
    }
    check(
        woken_by_itself == 0,
        format!("{woken_by_itself} of 200 calls woke their own task as they returned"),
    )
}

/// The driver runs on smol's global executor and the reactor on async-io's
/// thread, so handles work from a thread that runs no smol at all (here a
/// bare futures-lite block_on, which drives no reactor).
fn handles_work_outside_smol_block_on(parallel: Parallel) -> Result<(), Failed> {
    let square = parallel.run(|x: u64| async move { x * x })?;
    let value = smol::future::block_on(square.call(12))?;
    check(value == 144, format!("got {value}"))
}
