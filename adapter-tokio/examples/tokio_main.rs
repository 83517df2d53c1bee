//! `init()` inside `#[tokio::main]`: the runtime's threads exist already, so
//! the zygote starts by executing this program anew (its load-time hook
//! becomes the zygote before `main` would run) instead of by fork.
//!
//! Run: `cargo run -p parallel-tokio --example tokio_main`

#[tokio::main]
async fn main() -> Result<(), parallel_tokio::Error> {
    let started = std::time::Instant::now();
    let parallel = parallel_tokio::init()?;
    let doubled = parallel.spawn(|x: u64| async move { x * 2 }, 21).await?;
    let first_spawn = started.elapsed();
    assert_eq!(doubled, 42);

    let square = parallel.run(|x: u64| async move { x * x })?;
    assert_eq!(square.call(7).await?, 49);

    println!(
        "ok: zygote {} started by {:?}; init() until the first spawn answered: {first_spawn:?}",
        parallel.zygote().pid(),
        parallel.zygote().start_method(),
    );
    Ok(())
}
