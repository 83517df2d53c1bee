//! The demo on glommio: lwt-parallel's 64-task test, then a pool speed-up and
//! captured worker output (the body is shared by every adapter's demo).
//!
//! Run: `cargo run --release -p parallel-glommio --example glommio_demo`

#[path = "../../parallel-zygote/examples/shared/demo.rs"]
mod demo;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // First thing in main: the zygote, before glommio starts its threads.
    let parallel = parallel_glommio::init()?;
    glommio::LocalExecutor::default().run(demo::run(parallel))
}
