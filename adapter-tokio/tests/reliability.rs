//! The reliability suite (`parallel-zygote/tests/reliability`, figures in
//! `RELIABILITY.md`) on tokio: each scenario on a multi-thread runtime of
//! its own (2 worker threads). `PARALLEL_RELIABILITY=full` for the full
//! sizes.

#[path = "../../parallel-zygote/tests/reliability/mod.rs"]
mod reliability;

use libtest_mimic::Failed;
use parallel_tokio::{Error, Parallel, Tokio};
use reliability::{Harness, TestFuture};

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
}

fn main() {
    reliability::main::<TokioHarness>();
}
