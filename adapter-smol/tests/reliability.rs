//! The reliability suite (`parallel-zygote/tests/reliability`, figures in
//! `RELIABILITY.md`) on smol: each scenario under `smol::block_on`.
//! `PARALLEL_RELIABILITY=full` for the full sizes.

#[path = "../../parallel-zygote/tests/reliability/mod.rs"]
mod reliability;

use libtest_mimic::Failed;
use parallel_smol::{Error, Parallel, Smol};
use reliability::{Harness, TestFuture};

struct SmolHarness;

impl Harness for SmolHarness {
    type R = Smol;

    fn init() -> Result<Parallel, Error> {
        parallel_smol::init()
    }

    fn block_on(test: TestFuture) -> Result<(), Failed> {
        smol::block_on(test)
    }
}

fn main() {
    reliability::main::<SmolHarness>();
}
