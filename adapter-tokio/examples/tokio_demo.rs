//! The demo on tokio: lwt-parallel's 64-task test, then a pool speed-up and
//! captured worker output (the body is shared by every adapter's demo).
//!
//! Run: `cargo run --release -p parallel-tokio --example tokio_demo`

#[path = "../../parallel-zygote/examples/shared/demo.rs"]
mod demo;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // First thing in main: the zygote, before the runtime and its threads.
    let parallel = parallel_tokio::init()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(demo::run(parallel))
}
