//! `SharedBytesMut`: buffers filled in shared memory, whose sealed memfd
//! travels beside a `process` message instead of their bytes, both ways,
//! sent on from the receiver, and released by both processes.

use futures_util::StreamExt;
use libtest_mimic::Failed;
use parallel_zygote::async_core::{
    Bytes, Error, MessageSender, MessageStream, Parallel, Runtime, SharedBytesMut,
};

use super::{check, mappings_named, open_fds, skippable, Harness, TestFuture};

/// The trial that sends shared buffers both ways and checks that neither
/// process keeps a descriptor or a mapping of them.
pub const TRAVEL: &str = "shared_buffers_travel_as_memfds_both_ways_are_sent_on_and_leak_nothing";
/// The trial that sends one shared buffer too many in a message.
pub const TOO_MANY: &str =
    "a_message_with_too_many_shared_buffers_is_refused_and_the_channel_goes_on";
/// `process`' trial of large messages both ways, which counts the parent's
/// mappings of message memfds: any trial beside it that receives a message
/// through shared memory maps one for a moment.
pub const LARGE: &str = "large_messages_arrive_intact_both_ways_and_leak_nothing";
/// How a [`HELPER_ENV`](super::HELPER_ENV) value naming one of these
/// trials starts.
pub const HELPER_PREFIX: &str = "zero-copy:";

/// The trials that count this process's descriptors and mappings: other
/// trials, running beside them in the same process, open and close theirs
/// at any moment, so each runs alone in a helper process.
pub fn alone_trials<H: Harness>() -> Vec<libtest_mimic::Trial> {
    [TRAVEL, TOO_MANY, LARGE]
        .into_iter()
        .map(|name| {
            skippable::<H>(name, move || {
                super::run_helper(&format!("{HELPER_PREFIX}{name}"))
            })
        })
        .collect()
}

/// The helper process for the trial `name`: starts the zygote, runs the
/// trial, prints `ok` or what went wrong.
pub fn helper<H: Harness>(name: &str) {
    let outcome = H::init().map_err(Failed::from).and_then(|parallel| {
        let test: TestFuture = match name {
            TRAVEL => Box::pin(travel_both_ways_and_leak_nothing(parallel)),
            TOO_MANY => Box::pin(too_many_refused_and_the_channel_goes_on(parallel)),
            LARGE => Box::pin(
                super::process::large_messages_arrive_intact_both_ways_and_leak_nothing(parallel),
            ),
            other => return Err(format!("no zero-copy trial called {other}").into()),
        };
        H::block_on(test)
    });
    match outcome {
        Ok(()) => println!("ok"),
        Err(failed) => println!("{}", failed.message().unwrap_or("failed")),
    }
}

/// Sizes from empty to past the message threshold (off in this scenario).
const SIZES: [usize; 5] = [0, 1, 4096, 100_003, (3 << 20) + 5];
const ROUNDS: usize = 4;

/// To the worker: a buffer and its checksum, or a request for one of
/// the worker's own, or the end with the worker's counts.
#[derive(serde::Serialize, serde::Deserialize)]
enum ToWorker {
    /// Echo this buffer back (sent on without a copy).
    Echo(Bytes, u64),
    /// Fill a buffer of this size with this seed and send it.
    Make(usize, usize),
}

/// From the worker.
#[derive(serde::Serialize, serde::Deserialize)]
enum FromWorker {
    /// A buffer, the checksum the worker computed, and whether it had
    /// arrived as a memfd there (echoes only).
    Data(Bytes, u64, bool),
    /// The input ended: the worker's open descriptors after the first
    /// round and at the end, and the buffer mappings it still holds.
    Done {
        fds_after_first_round: usize,
        fds_at_end: usize,
        mappings: usize,
    },
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn filled(size: usize, seed: usize) -> Result<Bytes, Error> {
    let mut buffer = SharedBytesMut::zeroed(size)?;
    for (i, byte) in buffer.iter_mut().enumerate() {
        *byte = (i.wrapping_mul(29) ^ seed) as u8;
    }
    buffer.freeze()
}

/// Mappings of `SharedBytesMut` memfds (named `parallel-bytes`) this process holds.
fn buffer_mappings() -> usize {
    mappings_named("parallel-bytes")
}

async fn shared_echo(mut input: MessageStream<ToWorker>, output: MessageSender<FromWorker>) {
    // Off: a `Bytes` that arrives shared came as its own memfd.
    let output = output.with_shared_memory_min(None);
    let (mut seen, mut fds_after_first_round) = (0, 0);
    while let Some(Ok(request)) = input.recv().await {
        let reply = match request {
            ToWorker::Echo(data, _) => {
                let (sum, shared) = (checksum(&data), data.is_shared());
                FromWorker::Data(data, sum, shared)
            }
            ToWorker::Make(size, seed) => {
                let data = filled(size, seed).unwrap();
                let sum = checksum(&data);
                FromWorker::Data(data, sum, false)
            }
        };
        output.send(reply).await.unwrap();
        seen += 1;
        if seen == 2 * SIZES.len() {
            fds_after_first_round = open_fds();
        }
    }
    let done = FromWorker::Done {
        fds_after_first_round,
        fds_at_end: open_fds(),
        mappings: buffer_mappings(),
    };
    output.send(done).await.unwrap();
}

async fn travel_both_ways_and_leak_nothing<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let mut process = parallel.process(shared_echo)?;
    process.sender = process.sender.with_shared_memory_min(None);
    let fds_before = open_fds();
    for round in 0..ROUNDS {
        for (index, &size) in SIZES.iter().enumerate() {
            let seed = round * 10 + index;
            // Parent → worker → parent: the worker sends on what it got.
            let data = filled(size, seed)?;
            let sum = checksum(&data);
            process.sender.send(ToWorker::Echo(data, sum)).await?;
            let Some(echo) = process.stream.next().await else {
                return Err("the stream ended early".into());
            };
            let FromWorker::Data(back, back_sum, shared_there) = echo? else {
                return Err("expected an echo".into());
            };
            check(
                shared_there && back.is_shared(),
                format!(
                    "buffer {seed} of {size} bytes was copied (shared in the worker: \
                     {shared_there}, back here: {})",
                    back.is_shared()
                ),
            )?;
            check(
                back_sum == sum && back.len() == size && checksum(&back) == sum,
                format!("buffer {seed} of {size} bytes changed on the way"),
            )?;
            // Worker → parent: a buffer the worker filled.
            process.sender.send(ToWorker::Make(size, seed)).await?;
            let Some(made) = process.stream.next().await else {
                return Err("the stream ended early".into());
            };
            let FromWorker::Data(made, made_sum, _) = made? else {
                return Err("expected a buffer".into());
            };
            let expected = filled(size, seed)?;
            check(
                made.is_shared() && made == expected && checksum(&made) == made_sum,
                format!("the worker's buffer {seed} of {size} bytes arrived changed or copied"),
            )?;
        }
    }
    drop(process.sender);
    match process.stream.next().await {
        Some(Ok(FromWorker::Done {
            fds_after_first_round,
            fds_at_end,
            mappings,
        })) => {
            check(
                fds_at_end <= fds_after_first_round,
                format!(
                    "the worker's descriptors grew from {fds_after_first_round} to \
                     {fds_at_end} over {ROUNDS} rounds of shared buffers"
                ),
            )?;
            check(
                mappings == 0,
                format!("the worker still maps {mappings} shared buffers"),
            )?;
        }
        _ => return Err("expected the worker's final counts".into()),
    }
    process.handle.wait().await?;
    check(
        buffer_mappings() == 0,
        format!("the parent still maps {} shared buffers", buffer_mappings()),
    )?;
    check(
        open_fds() <= fds_before,
        format!(
            "the parent's descriptors grew from {fds_before} to {}",
            open_fds()
        ),
    )?;
    Ok(())
}

/// To the limited worker: a buffer to keep, or release all kept.
#[derive(serde::Serialize, serde::Deserialize)]
enum Keep {
    Buffer(Bytes),
    ReleaseAll,
}

/// What the limited worker saw: the message decoded or the error's chain,
/// and the shared bytes its stream has mapped afterwards.
type KeepReport = (Result<(), String>, u64);

const KEPT: usize = 2 << 20;
const LIMIT: u64 = 5 << 20;

async fn keeper(input: MessageStream<Keep>, output: MessageSender<KeepReport>) {
    let mut input = input.with_shared_memory_limit(LIMIT);
    let mut kept = Vec::new();
    while let Some(item) = input.recv().await {
        let outcome = match item {
            Ok(Keep::Buffer(data)) => {
                kept.push(data);
                Ok(())
            }
            Ok(Keep::ReleaseAll) => {
                kept.clear();
                Ok(())
            }
            Err(error) => {
                let mut chain = error.to_string();
                let mut source = std::error::Error::source(&error);
                while let Some(cause) = source {
                    chain += &format!(": {cause}");
                    source = cause.source();
                }
                Err(chain)
            }
        };
        let report = (outcome, input.shared_memory_mapped());
        output.send(report).await.unwrap();
    }
}

async fn exchange(
    sender: &MessageSender<Keep>,
    stream: &mut MessageStream<KeepReport>,
    message: Keep,
) -> Result<KeepReport, Failed> {
    sender.send(message).await?;
    match stream.next().await {
        Some(report) => Ok(report?),
        None => Err("the stream ended early".into()),
    }
}

pub async fn shared_buffers_past_a_streams_limit_are_refused_until_released<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let mut process = parallel.process(keeper)?;
    let (sender, stream) = (&process.sender, &mut process.stream);
    let kept = KEPT as u64;
    // Two buffers fit under the limit (5 MiB); the third does not.
    for expected_mapped in [kept, 2 * kept] {
        let (outcome, mapped) = exchange(sender, stream, Keep::Buffer(filled(KEPT, 1)?)).await?;
        check(
            outcome.is_ok() && mapped == expected_mapped,
            format!("kept buffer: {outcome:?}, {mapped} bytes mapped (expected {expected_mapped})"),
        )?;
    }
    let (outcome, mapped) = exchange(sender, stream, Keep::Buffer(filled(KEPT, 2)?)).await?;
    let text = outcome.err().unwrap_or_default();
    check(
        text.contains("could not decode") && text.contains("past its limit of 5242880 bytes"),
        format!("the third buffer: {text:?}"),
    )?;
    check(
        mapped == 2 * kept,
        format!("the refused buffer left {mapped} bytes mapped"),
    )?;
    // Released, the same buffer goes in again.
    let (outcome, mapped) = exchange(sender, stream, Keep::ReleaseAll).await?;
    check(
        outcome.is_ok() && mapped == 0,
        format!("released: {mapped} bytes still counted"),
    )?;
    let (outcome, mapped) = exchange(sender, stream, Keep::Buffer(filled(KEPT, 3)?)).await?;
    check(
        outcome.is_ok() && mapped == kept,
        format!("after the release: {outcome:?}, {mapped} bytes mapped"),
    )?;
    drop(process.sender);
    check(
        process.stream.next().await.is_none(),
        "the worker sent more reports than messages",
    )?;
    process.handle.wait().await?;
    Ok(())
}

async fn too_many_refused_and_the_channel_goes_on<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let mut process = parallel.process(
        |mut input: MessageStream<Vec<Bytes>>, output: MessageSender<usize>| async move {
            while let Some(Ok(buffers)) = input.recv().await {
                let shared = buffers.iter().filter(|b| b.is_shared()).count();
                output.send(shared).await.unwrap();
            }
        },
    )?;
    let buffer = filled(4096, 7)?;
    let fds_before = open_fds();
    let refused = process.sender.send(vec![buffer.clone(); 16]).await;
    let text = match refused {
        Err(error @ Error::Codec { .. }) => {
            let cause = std::error::Error::source(&error).map(ToString::to_string);
            format!("{error}: {}", cause.unwrap_or_default())
        }
        other => return Err(format!("16 shared buffers in one message: {other:?}").into()),
    };
    check(
        text.contains("carries 16 descriptors") && text.contains("at most 15"),
        format!("the refusal says {text:?}"),
    )?;
    check(
        open_fds() <= fds_before,
        "the refused message's descriptor copies were kept",
    )?;
    process.sender.send(vec![buffer; 15]).await?;
    let shared = process.stream.next().await.ok_or("the stream ended")??;
    check(
        shared == 15,
        format!("15 buffers went, {shared} arrived shared"),
    )?;
    drop(process.sender);
    process.handle.wait().await?;
    Ok(())
}
