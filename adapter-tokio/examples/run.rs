//! `run`: a persistent worker answering many calls, concurrently.
//!
//! `cargo run -p parallel-tokio --example run`

use std::time::Duration;

fn main() -> Result<(), parallel_tokio::Error> {
    let parallel = parallel_tokio::init()?;
    tokio::runtime::Runtime::new()?.block_on(async move {
        let lookup = parallel.run(|key: String| async move {
            // Pretend this is slow I/O or work we want isolated from the parent.
            tokio::time::sleep(Duration::from_millis(20)).await;
            format!("value of {key} from pid {}", std::process::id())
        })?;
        // Calls are pipelined: these three run at the same time in the worker.
        let (a, b, c) = tokio::join!(
            lookup.call("a".into()),
            lookup.call("b".into()),
            lookup.call("c".into())
        );
        println!("{}\n{}\n{}", a?, b?, c?);
        // A call with a time limit: on timeout the worker is killed.
        match lookup
            .call_timeout("slow".into(), Duration::from_millis(1))
            .await
        {
            Err(error) => println!("as expected: {error}"),
            Ok(value) => println!("unexpectedly fast: {value}"),
        }
        Ok(())
    })
}
