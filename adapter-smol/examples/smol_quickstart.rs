//! The quick start of the crate docs, runnable: `cargo run -p parallel-smol --example smol_quickstart`.

fn main() -> Result<(), parallel_smol::Error> {
    // 1. First thing in main: start the zygote, before anything async
    //    (no smol::block_on, Async, Timer or smol::spawn before it).
    let parallel = parallel_smol::init()?;
    // 2. Then use smol as usual.
    smol::block_on(async move {
        // spawn: one call in a fresh process.
        let doubled = parallel.spawn(|x: u64| async move { x * 2 }, 21).await?;
        assert_eq!(doubled, 42);

        // run: a persistent worker, called many times.
        let square = parallel.run(|x: u64| async move { x * x })?;
        assert_eq!(square.call(7).await?, 49);

        // process: a typed two-way channel.
        let mut echo = parallel.process(
            |mut input: parallel_smol::MessageStream<String>,
             output: parallel_smol::MessageSender<usize>| async move {
                while let Some(Ok(line)) = input.recv().await {
                    output.send(line.len()).await.unwrap();
                }
            },
        )?;
        echo.sender.send("hello".to_string()).await?;
        assert_eq!(echo.stream.recv().await.transpose()?, Some(5));

        // pool: N warm workers, map over inputs in order.
        use smol::stream::StreamExt;
        let pool = parallel_smol::Pool::new(
            &parallel,
            |x: u64| async move { x + 1 },
            parallel_smol::PoolConfig::default(),
        )?;
        let results: Vec<_> = pool.map(smol::stream::iter(0..10u64)).collect().await;
        assert_eq!(results.len(), 10);
        println!("spawn, run, process and pool all answered");
        Ok(())
    })
}
