//! `Pool`: warm workers, `map` with bounded concurrency, a crash that costs
//! only its own input, and a timeout that does not break the pool.
//!
//! `cargo run -p parallel-tokio --example pool`

use std::time::Duration;

use futures_util::StreamExt;
use parallel_tokio::{Pool, PoolConfig};

async fn fragile_square(x: u64) -> u64 {
    match x {
        7 => panic!("seven is not allowed"),
        13 => {
            // Not in the working directory: aborting may write a core file.
            let _ = std::env::set_current_dir(std::env::temp_dir());
            std::process::abort()
        }
        21 => loop {
            std::thread::sleep(Duration::from_secs(1)); // stuck: only a kill helps
        },
        _ => x * x,
    }
}

fn main() -> Result<(), parallel_tokio::Error> {
    let parallel = parallel_tokio::init()?;
    tokio::runtime::Runtime::new()?.block_on(async move {
        let config = PoolConfig::default()
            .size(4)
            .call_timeout(Duration::from_millis(500))
            .max_calls_per_worker(100);
        let pool = Pool::new(&parallel, fragile_square, config)?;
        let mut results = std::pin::pin!(pool.map(futures_util::stream::iter(0..25u64)));
        let mut index = 0;
        while let Some(result) = results.next().await {
            match result {
                Ok(square) => println!("{index:>2} -> {square}"),
                Err(error) => println!("{index:>2} -> error: {error}"),
            }
            index += 1;
        }
        Ok(())
    })
}
