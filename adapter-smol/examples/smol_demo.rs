//! The demo on smol: lwt-parallel's 64-task test, then a pool speed-up and
//! captured worker output (the body is shared by every adapter's demo).
//!
//! Run: `cargo run --release -p parallel-smol --example smol_demo`

#[path = "../../parallel-zygote/examples/shared/demo.rs"]
mod demo;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // First thing in main: the zygote, before async-io's reactor exists.
    let parallel = parallel_smol::init()?;
    smol::block_on(demo::run(parallel))
}
