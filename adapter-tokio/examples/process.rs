//! `process`: a typed two-way channel to a worker, with half close.
//!
//! `cargo run -p parallel-tokio --example process`

use futures_util::StreamExt;
use parallel_tokio::{MessageSender, MessageStream};

/// The worker: reads numbers until the parent ends its stream, answering
/// each with its running total, then reports how many it saw.
async fn running_total(mut input: MessageStream<i64>, output: MessageSender<String>) {
    let (mut total, mut count) = (0, 0);
    while let Some(Ok(n)) = input.recv().await {
        total += n;
        count += 1;
        let _ = output.send(format!("total so far: {total}")).await;
    }
    let _ = output
        .send(format!("input ended after {count} numbers"))
        .await;
}

fn main() -> Result<(), parallel_tokio::Error> {
    let parallel = parallel_tokio::init()?;
    tokio::runtime::Runtime::new()?.block_on(async move {
        let process = parallel.process(running_total)?;
        for n in [3, 4, 5] {
            process.sender.send(n).await?;
        }
        drop(process.sender); // half close: the worker's input stream ends
        let mut stream = process.stream;
        while let Some(line) = stream.next().await {
            println!("{}", line?);
        }
        process.handle.wait().await
    })
}
