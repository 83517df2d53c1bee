//! The adapter conformance suite (`parallel-zygote/tests/conformance`) on
//! tokio: each trial on a multi-thread runtime of its own (2 worker
//! threads), plus the scenarios only tokio has.

#[path = "../../parallel-zygote/tests/conformance/mod.rs"]
mod conformance;

use conformance::{check, Harness, TestFuture};
use libtest_mimic::{Failed, Trial};
use std::time::{Duration, Instant};

use parallel_tokio::{Error, Parallel, Tokio, WarmConfig, WorkerRuntime};

struct TokioHarness;

impl Harness for TokioHarness {
    type R = Tokio;

    fn init() -> Result<Parallel, Error> {
        parallel_tokio::init()
    }

    fn block_on(test: TestFuture) -> Result<(), Failed> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        runtime.block_on(test)
    }

    fn extra_trials(parallel: &Parallel) -> Vec<Trial> {
        vec![
            conformance::trial::<Self>(
                "multi_thread_worker_runtime_works",
                parallel.clone(),
                |p| Box::pin(multi_thread_worker_runtime_works(p)),
            ),
            {
                // Not run through `block_on`: two runtimes, one after the other.
                let parallel = parallel.clone();
                Trial::test(
                    "warm_workers_registered_by_a_finished_runtime_are_not_used",
                    move || warm_workers_registered_by_a_finished_runtime_are_not_used(&parallel),
                )
            },
            {
                // Not run through `block_on`: the point is a thread with no
                // tokio runtime at all.
                let parallel = parallel.clone();
                Trial::test("outside_a_runtime_is_an_error_not_a_panic", move || {
                    outside_a_runtime_is_an_error_not_a_panic(&parallel)
                })
            },
        ]
    }
}

fn main() {
    conformance::main::<TokioHarness>();
}

/// Tokio only: the worker runtime option is tokio's own.
async fn multi_thread_worker_runtime_works(parallel: Parallel) -> Result<(), Failed> {
    let threaded = parallel.worker_runtime(WorkerRuntime::MultiThread { threads: 2 });
    let threads = threaded
        .spawn(
            |_: ()| async move { std::fs::read_dir("/proc/self/task").unwrap().count() },
            (),
        )
        .await?;
    check(threads >= 3, format!("worker had {threads} threads"))
}

/// Tokio only: a runtime whose absence a thread can observe
/// (`Handle::try_current`), so "outside" is a place a caller can be.
fn outside_a_runtime_is_an_error_not_a_panic(parallel: &Parallel) -> Result<(), Failed> {
    match parallel.run(|x: u8| async move { x }) {
        Err(error @ Error::NoRuntime { runtime: "tokio" }) => check(
            error.to_string().contains("tokio runtime"),
            error.to_string(),
        ),
        other => Err(format!("expected NoRuntime, got {other:?}").into()),
    }
}

/// Its argument plus one, and the worker's pid.
async fn plus_one_and_pid(x: u64) -> (u64, i32) {
    (x + 1, std::process::id() as i32)
}

/// Tokio only: a handle outlives the runtime whose refill registered its
/// pre-forked workers' channels (a runtime per test, or a runtime rebuilt);
/// spawns on the next runtime must not use those channels (their reactor
/// is gone: the spawn would fail), and must leave no worker behind.
fn warm_workers_registered_by_a_finished_runtime_are_not_used(
    parallel: &Parallel,
) -> Result<(), Failed> {
    const WAIT: Duration = Duration::from_secs(20);
    let snapshot = parallel.scope().snapshot(|_: Vec<u8>| {}, Vec::new())?;
    let warm = snapshot.warm_workers(
        WarmConfig::new(2, 2)
            .min_refill_delay(Duration::from_millis(1))
            .refill_delay(Duration::from_millis(5)),
    )?;
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let registered = first.block_on(async {
        let (value, _) = tokio::time::timeout(WAIT, warm.spawn(plus_one_and_pid, 1)).await??;
        check(value == 2, format!("spawn answered {value}"))?;
        // One thread: seen from here, a refill's poll (forks, then
        // registration) is over. Past the refill to the maximum too.
        let deadline = Instant::now() + WAIT;
        while warm.warm_idle() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok::<_, Failed>(warm.warm_idle())
    })?;
    check(registered == 2, format!("{registered} waiting, not 2"))?;
    drop(first);
    let second = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    second.block_on(async {
        for x in 0..4 {
            let (value, _) = tokio::time::timeout(WAIT, warm.spawn(plus_one_and_pid, x))
                .await
                .map_err(|_| format!("spawn {x} on the second runtime did not answer"))??;
            check(value == x + 1, format!("spawn {x} answered {value}"))?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok::<_, Failed>(())
    })?;
    let zygote = warm.zygote().pid();
    drop(warm);
    // Every worker of the snapshot gone with the handles.
    let deadline = Instant::now() + WAIT;
    loop {
        let children = live_children(zygote);
        if children.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("workers {children:?} outlived their handle").into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The live (not zombie) children of process `parent`.
fn live_children(parent: i32) -> Vec<i32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
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
        let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        if let (Some(state), Some(ppid)) = (fields.next(), fields.next()) {
            if state != "Z" && ppid.parse::<i32>() == Ok(parent) {
                children.push(pid);
            }
        }
    }
    children
}
