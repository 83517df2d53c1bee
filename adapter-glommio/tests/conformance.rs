//! The adapter conformance suite (`parallel-zygote/tests/conformance`) on
//! glommio: each trial on a `LocalExecutor` of its own, built on the trial's
//! thread. What only glommio has is in `tests/glommio.rs`.

#[path = "../../parallel-zygote/tests/conformance/mod.rs"]
mod conformance;

use conformance::{Harness, TestFuture};
use glommio::{LocalExecutorBuilder, Placement};
use libtest_mimic::Failed;
use parallel_glommio::{Error, Glommio, Parallel};

struct GlommioHarness;

impl Harness for GlommioHarness {
    type R = Glommio;

    fn init() -> Result<Parallel, Error> {
        parallel_glommio::init()
    }

    fn block_on(test: TestFuture) -> Result<(), Failed> {
        // Small, like a worker's: many trials run at once.
        let executor = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(64 << 10)
            .ring_depth(8)
            .make()
            .map_err(|error| format!("building the test's executor: {error}"))?;
        executor.run(test)
    }
}

fn main() {
    conformance::main::<GlommioHarness>();
}
