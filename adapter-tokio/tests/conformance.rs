//! The adapter conformance suite (`parallel-zygote/tests/conformance`) on
//! tokio: each trial on a multi-thread runtime of its own (2 worker
//! threads), plus the scenarios only tokio has.

#[path = "../../parallel-zygote/tests/conformance/mod.rs"]
mod conformance;

use conformance::{check, Harness, TestFuture};
use libtest_mimic::{Failed, Trial};
use parallel_tokio::{Error, Parallel, Tokio, WorkerRuntime};

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
