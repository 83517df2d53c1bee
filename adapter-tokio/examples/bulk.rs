//! Bulk data through `process`: `Bytes` for the payload (a block for the
//! codec, not a sequence of numbers), 1 MiB messages or larger moving
//! through shared memory rather than the socket, and a `SharedBytesMut`
//! filled in shared memory, whose memfd travels instead of its bytes (no
//! copy at all).
//!
//! `cargo run -p parallel-tokio --release --example bulk`

use std::time::Instant;

use futures_util::StreamExt;
use parallel_tokio::{Bytes, MessageSender, MessageStream, SharedBytesMut};

/// The worker: answers each chunk with its length and a checksum.
async fn checksums(mut input: MessageStream<Bytes>, output: MessageSender<(usize, u64)>) {
    while let Some(Ok(chunk)) = input.recv().await {
        let sum = chunk.iter().map(|&byte| u64::from(byte)).sum();
        let _ = output.send((chunk.len(), sum)).await;
    }
}

/// Sends `chunk` 8 times to a new checksum worker; prints the rate.
async fn send_eight(
    parallel: &parallel_tokio::Parallel,
    what: &str,
    chunk: Bytes,
) -> Result<(), parallel_tokio::Error> {
    let process = parallel.process(checksums)?;
    let started = Instant::now();
    for _ in 0..8 {
        process.sender.send(chunk.clone()).await?;
    }
    drop(process.sender);
    let mut stream = process.stream;
    let mut moved = 0;
    while let Some(answer) = stream.next().await {
        let (len, sum) = answer?;
        assert_eq!(sum, len as u64, "every byte arrived");
        moved += len;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{what}: {} MiB in {:.1} ms: {:.2} GB/s (the worker read every byte)",
        moved >> 20,
        seconds * 1e3,
        moved as f64 / seconds / 1e9
    );
    process.handle.wait().await
}

fn main() -> Result<(), parallel_tokio::Error> {
    let parallel = parallel_tokio::init()?;
    tokio::runtime::Runtime::new()?.block_on(async move {
        // Copied once per message, into a sealed memfd the worker maps.
        send_eight(&parallel, "Bytes", Bytes::from(vec![1u8; 16 << 20])).await?;
        // Filled in shared memory once; each message passes its memfd.
        let mut buffer = SharedBytesMut::zeroed(16 << 20)?;
        buffer.fill(1);
        send_eight(&parallel, "SharedBytesMut", buffer.freeze()?).await
    })
}
