//! The reliability suite (`parallel-zygote/tests/reliability`, figures in
//! `RELIABILITY.md`) on glommio: each scenario on a `LocalExecutor` of its
//! own. `PARALLEL_RELIABILITY=full` for the full sizes.

#[path = "../../parallel-zygote/tests/reliability/mod.rs"]
mod reliability;

use glommio::{LocalExecutorBuilder, Placement};
use libtest_mimic::Failed;
use parallel_glommio::{Error, Glommio, Parallel};
use reliability::{Harness, TestFuture};

struct GlommioHarness;

impl Harness for GlommioHarness {
    type R = Glommio;

    fn init() -> Result<Parallel, Error> {
        parallel_glommio::init()
    }

    fn block_on(test: TestFuture) -> Result<(), Failed> {
        let executor = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(64 << 10)
            .ring_depth(8)
            .make()
            .map_err(|error| format!("building the test's executor: {error}"))?;
        executor.run(test)
    }
}

fn main() {
    reliability::main::<GlommioHarness>();
}
