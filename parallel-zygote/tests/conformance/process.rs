//! Typed two-way channels: half close, a panicking worker, back-pressure
//! towards a worker that outruns its reader, descriptors both ways, large
//! messages through shared memory both ways, and large `Bytes` through the
//! socket (sharing the received buffer) in order.

use std::future::Future;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use libtest_mimic::Failed;
use parallel_zygote::async_core::{
    Bytes, Error, Fd, MessageSender, MessageStream, Parallel, ProcessHandle, Runtime,
};

use super::{check, known_pid, mappings_named, open_fds, tempfile, within};

pub async fn process_streams_both_ways_with_half_close<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let mut process = parallel.process(
        |mut input: MessageStream<String>, output: MessageSender<String>| async move {
            let mut count = 0;
            while let Some(Ok(line)) = input.recv().await {
                count += 1;
                output.send(line.to_uppercase()).await.unwrap();
            }
            // Input ended (the parent dropped its sender): say how many came.
            output.send(format!("{count} lines")).await.unwrap();
        },
    )?;
    for word in ["alpha", "beta", "gamma"] {
        process.sender.send(word.to_string()).await?;
    }
    drop(process.sender);
    let mut received = Vec::new();
    while let Some(message) = process.stream.next().await {
        received.push(message?);
    }
    check(
        received == ["ALPHA", "BETA", "GAMMA", "3 lines"],
        format!("{received:?}"),
    )?;
    process.handle.wait().await?;
    Ok(())
}

pub async fn process_worker_panic_ends_stream_with_error<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let process = parallel.process(
        |_input: MessageStream<u8>, output: MessageSender<u8>| async move {
            output.send(1).await.unwrap();
            panic!("process function fails");
        },
    )?;
    let mut stream = process.stream;
    check(
        matches!(stream.next().await, Some(Ok(1))),
        "first message arrives",
    )?;
    check(stream.next().await.is_none(), "stream ends")?;
    match process.handle.wait().await {
        Err(Error::Panicked { report, .. }) => {
            check(report.message == "process function fails", report.message)
        }
        other => Err(format!("expected a panic, got {other:?}").into()),
    }
}

const MESSAGE: usize = 64 * 1024;

/// Runs in a worker: produces 64 KiB messages as fast as it may, forever,
/// and keeps the count of those its sender accepted in the file it is sent
/// first (8 bytes, little endian, at offset 0).
async fn firehose(mut input: MessageStream<Fd>, output: MessageSender<Vec<u8>>) {
    let Some(Ok(counter)) = input.recv().await else {
        return;
    };
    let counter = std::fs::File::from(counter.into_inner());
    let mut sent = 0u64;
    while output.send(vec![7u8; MESSAGE]).await.is_ok() {
        sent += 1;
        counter.write_all_at(&sent.to_le_bytes(), 0).unwrap();
    }
}

/// How many messages the firehose has handed to its sender so far.
fn produced(counter: &std::fs::File) -> std::io::Result<u64> {
    let mut bytes = [0u8; 8];
    match counter.read_exact_at(&mut bytes, 0) {
        Ok(()) => Ok(u64::from_le_bytes(bytes)),
        // Nothing written yet.
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
        Err(error) => Err(error),
    }
}

pub async fn slow_consumer_keeps_memory_bounded<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    // The worker's progress is read from a shared file it updates, not from
    // /proc/<pid>/io: the channel writes with sendmsg, which `wchar` does
    // not count, so that would stay flat however much the worker sent.
    let counter = tempfile()?;
    let process = parallel.process(firehose)?;
    process.sender.send(Fd(counter.try_clone()?.into())).await?;
    let mut stream = process.stream;
    check(stream.next().await.is_some(), "first message")?;
    // Nobody reads now. Bounded, the worker is parked once the queues (16
    // messages each side) and the socket buffers are full; unbounded, it
    // would go on to gigabytes. How soon it parks depends on the scheduler,
    // so wait (up to 10 s) for the count to stop moving over 300 ms.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stalled = produced(&counter)?;
    loop {
        R::sleep(Duration::from_millis(300)).await;
        let now = produced(&counter)?;
        if now == stalled {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "worker kept producing while nobody read: {stalled} -> {now} messages"
            )
            .into());
        }
        stalled = now;
    }
    eprintln!("    worker parked after {stalled} messages");
    check(
        stalled > 1,
        format!("worker produced only {stalled} messages: is the counter read?"),
    )?;
    check(
        (stalled as usize) * MESSAGE < 32 << 20,
        format!("worker produced {stalled} messages of 64 KiB ahead of a stalled reader"),
    )?;
    // And reading resumes the flow: more than the stalled pipeline held.
    let reads = (stalled + 10).max(100);
    for _ in 0..reads {
        check(
            matches!(stream.next().await, Some(Ok(ref m)) if m.len() == MESSAGE),
            "message intact",
        )?;
    }
    let now = produced(&counter)?;
    check(
        now > stalled,
        format!("{reads} messages read, yet the worker stayed at {stalled}"),
    )?;
    process.handle.kill();
    Ok(())
}

pub async fn fd_passed_to_a_worker_is_usable_there<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let mut file = tempfile()?;
    file.write_all(b"written by the parent")?;
    file.rewind()?;
    let mut process = parallel.process(
        |mut input: MessageStream<(String, Fd)>, output: MessageSender<String>| async move {
            while let Some(Ok((label, fd))) = input.recv().await {
                let mut file = std::fs::File::from(fd.into_inner());
                let mut text = String::new();
                file.read_to_string(&mut text).unwrap();
                output.send(format!("{label}: {text}")).await.unwrap();
            }
        },
    )?;
    process
        .sender
        .send(("file".to_string(), Fd(file.into())))
        .await?;
    let answer = process.stream.next().await.ok_or("no answer")??;
    check(answer == "file: written by the parent", answer)
}

pub async fn fd_passed_back_from_a_worker_is_usable_here<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let mut process = parallel.process(
        |_input: MessageStream<()>, output: MessageSender<Fd>| async move {
            let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
            ours.write_all(b"made in the worker").unwrap();
            drop(ours);
            output.send(Fd(theirs.into())).await.unwrap();
        },
    )?;
    let fd = process.stream.next().await.ok_or("no fd")??;
    let mut socket = std::os::unix::net::UnixStream::from(fd.into_inner());
    let mut text = String::new();
    socket.read_to_string(&mut text)?;
    check(text == "made in the worker", text)
}

pub async fn process_sender_is_a_sink<R: Runtime>(parallel: Parallel<R>) -> Result<(), Failed> {
    use futures_util::SinkExt;
    let echo = parallel.process(
        |mut input: MessageStream<u32>, output: MessageSender<u32>| async move {
            while let Some(Ok(x)) = input.recv().await {
                if output.send(x * 3).await.is_err() {
                    break;
                }
            }
        },
    )?;
    let mut sink = echo.sender;
    let mut stream = echo.stream;
    SinkExt::send(&mut sink, 1).await?;
    sink.send_all(&mut futures_util::stream::iter(2..=100u32).map(Ok))
        .await?;
    SinkExt::close(&mut sink).await?;
    drop(sink);
    let mut got = Vec::new();
    while let Some(item) = stream.next().await {
        got.push(item?);
    }
    let expected: Vec<u32> = (1..=100).map(|x| x * 3).collect();
    check(got == expected, format!("echoed in order: {got:?}"))
}

/// A `process` message of bulk bytes: the bytes, their checksum, and maybe
/// a descriptor riding along (which must stay paired with its message when
/// the bytes travel through shared memory).
type Bulk = (Bytes, u64, Option<Fd>);

/// What the bulk echo worker answers.
#[derive(serde::Serialize, serde::Deserialize)]
enum BulkEcho {
    /// A message back: its bytes, their checksum as the worker computed it,
    /// whether they arrived in shared memory, and the text of the file whose
    /// descriptor came with it.
    Data(Bytes, u64, bool, Option<String>),
    /// The input ended: the worker's open descriptors after the first round
    /// and at the end, and the shared-memory mappings it still holds.
    Done {
        fds_after_first_round: usize,
        fds_at_end: usize,
        mappings: usize,
    },
}

/// Sizes around the shared-memory threshold (1 MiB), and well above it.
const BULK_SIZES: [usize; 5] = [100, (1 << 20) - 1, 1 << 20, (3 << 20) + 5, 9 << 20];
const BULK_ROUNDS: usize = 6;

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Sends and reads at once (a worker that answers each message must be
/// read while it is written to), then checks that all `total` answers came
/// and that the worker ended well.
async fn send_and_read_all<E>(
    send_all: impl Future<Output = Result<(), E>>,
    receive_all: impl Future<Output = Result<usize, Failed>>,
    total: usize,
    handle: ProcessHandle,
) -> Result<(), Failed>
where
    Failed: From<E>,
{
    let (sent, received) = futures_util::join!(send_all, receive_all);
    sent?;
    let received = received?;
    check(
        received == total,
        format!("{received} of {total} messages answered"),
    )?;
    handle.wait().await?;
    Ok(())
}

fn bulk_bytes(size: usize, seed: usize) -> Bytes {
    (0..size)
        .map(|i| (i.wrapping_mul(31) ^ seed) as u8)
        .collect()
}

/// Mappings of the library's memfds (named `parallel-message`) this process holds.
fn shared_mappings() -> usize {
    mappings_named("parallel-message")
}

async fn bulk_echo(mut input: MessageStream<Bulk>, output: MessageSender<BulkEcho>) {
    // The threshold for every message, `Bytes` or not (by default a message
    // made mostly of large `Bytes` takes the socket up to 32 MiB).
    let output = output.with_shared_memory_min(Some(1 << 20));
    let mut seen = 0;
    let mut fds_after_first_round = 0;
    while let Some(Ok((data, _sum, fd))) = input.recv().await {
        let text = fd.map(|fd| {
            let mut text = String::new();
            let mut file = std::fs::File::from(fd.into_inner());
            file.rewind().unwrap();
            file.read_to_string(&mut text).unwrap();
            text
        });
        let sum = checksum(&data);
        let shared = data.is_shared();
        output
            .send(BulkEcho::Data(data, sum, shared, text))
            .await
            .unwrap();
        seen += 1;
        if seen == BULK_SIZES.len() {
            fds_after_first_round = open_fds();
        }
    }
    let done = BulkEcho::Done {
        fds_after_first_round,
        fds_at_end: open_fds(),
        mappings: shared_mappings(),
    };
    output.send(done).await.unwrap();
}

pub async fn large_messages_arrive_intact_both_ways_and_leak_nothing<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let mut process = parallel.process(bulk_echo)?;
    process.sender = process.sender.with_shared_memory_min(Some(1 << 20));
    let mut sent = 0;
    let (mut large_messages, mut shared_both_ways) = (0, 0);
    for round in 0..BULK_ROUNDS {
        for (index, &size) in BULK_SIZES.iter().enumerate() {
            let seed = round * 10 + index;
            let data = bulk_bytes(size, seed);
            let sum = checksum(&data);
            // Every other message carries a file, whatever its size.
            let fd = if seed % 2 == 0 {
                let mut file = tempfile()?;
                write!(file, "file {seed}")?;
                Some(Fd(file.into()))
            } else {
                None
            };
            process.sender.send((data, sum, fd)).await?;
            sent += 1;
            // The echo is read back at once: the worker's queue stays short.
            let Some(echo) = process.stream.next().await else {
                return Err(format!("the stream ended after {sent} messages").into());
            };
            let BulkEcho::Data(back, back_sum, shared_there, text) = echo? else {
                return Err("expected an echo".into());
            };
            // From 1 MiB (the threshold set above) the bytes come through a
            // memfd, both ways, and are not copied out of it; below, never.
            // A memfd the sender could not make or seal (the kernel refuses
            // the write seal while a page is briefly pinned, on a loaded
            // machine) leaves a message on the socket: counted, and most
            // must have gone through shared memory.
            let large = size >= 1 << 19;
            check(
                large || !(shared_there || back.is_shared()),
                format!("message {seed} of {size} bytes went through shared memory"),
            )?;
            if large {
                large_messages += 2;
                shared_both_ways += usize::from(shared_there) + usize::from(back.is_shared());
            }
            check(
                back_sum == sum,
                format!("message {seed} of {size} bytes changed on the way out"),
            )?;
            check(
                back.len() == size && checksum(&back) == sum,
                format!("message {seed} of {size} bytes changed on the way back"),
            )?;
            let expected = (seed % 2 == 0).then(|| format!("file {seed}"));
            check(
                text == expected,
                format!("message {seed}: descriptor text {text:?}, expected {expected:?}"),
            )?;
        }
    }
    check(
        large_messages > 0 && shared_both_ways * 4 >= large_messages * 3,
        format!("{shared_both_ways} of {large_messages} large messages went through shared memory"),
    )?;
    drop(process.sender);
    match process.stream.next().await {
        Some(Ok(BulkEcho::Done {
            fds_after_first_round,
            fds_at_end,
            mappings,
        })) => {
            check(
                fds_at_end <= fds_after_first_round,
                format!(
                    "the worker's descriptors grew from {fds_after_first_round} to {fds_at_end} \
                     over {BULK_ROUNDS} rounds of large messages"
                ),
            )?;
            check(
                mappings == 0,
                format!("the worker still maps {mappings} message memfds"),
            )?;
        }
        _ => return Err("expected the worker's final counts".into()),
    }
    check(
        shared_mappings() == 0,
        "the parent still maps a message memfd",
    )?;
    process.handle.wait().await?;
    Ok(())
}

/// Sizes around the point from which a received `Bytes` shares its
/// message's buffer (4 KiB), and bulk sizes, all through the socket.
const SOCKET_SIZES: [usize; 6] = [0, 4095, 4096, 65_536, 100_003, (1 << 20) + 3];

/// The worker of the socket-path scenario: echoes each message with its
/// sequence number, its checksum as computed there, and whether its bytes
/// came in shared memory (they must not); shared memory is off both ways.
async fn socket_echo(
    mut input: MessageStream<(u64, Bytes)>,
    output: MessageSender<(u64, Bytes, u64, bool)>,
) {
    let output = output.with_shared_memory_min(None);
    while let Some(Ok((sequence, data))) = input.next().await {
        let sum = checksum(&data);
        let shared = data.is_shared();
        // Sent on as received: a `Bytes` that shares its message's buffer.
        if output.send((sequence, data, sum, shared)).await.is_err() {
            return;
        }
    }
}

pub async fn socket_messages_with_large_bytes_arrive_intact_and_in_order<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let process = parallel.process(socket_echo)?;
    let sender = process.sender.with_shared_memory_min(None);
    let mut stream = process.stream;
    let total = SOCKET_SIZES.len() * 12;
    let message = |sequence: usize| {
        let size = SOCKET_SIZES[sequence % SOCKET_SIZES.len()];
        (sequence as u64, bulk_bytes(size, sequence))
    };
    // Sends run ahead of the echoes, as a pipelined producer's do (up to
    // the queues' bound, then they wait); the echoes are read beside them.
    let send_all = async {
        for sequence in 0..total {
            sender.send(message(sequence)).await?;
        }
        drop(sender);
        Ok::<_, Error>(())
    };
    let receive_all = async {
        let mut received = 0;
        while let Some(echo) = stream.next().await {
            let (sequence, back, sum_there, shared_there) = echo?;
            let (expected_sequence, sent) = message(received);
            check(
                sequence == expected_sequence,
                format!("echo {received} carries sequence {sequence}: out of order"),
            )?;
            check(
                sum_there == checksum(&sent),
                format!(
                    "message {sequence} of {} bytes changed on the way out",
                    sent.len()
                ),
            )?;
            check(
                back == sent,
                format!(
                    "message {sequence} of {} bytes changed on the way back",
                    sent.len()
                ),
            )?;
            check(
                !shared_there && !back.is_shared(),
                format!("message {sequence} went through shared memory, which was off"),
            )?;
            // A received `Bytes` is the user's to change: a copy of its own.
            let mut changed = back.clone();
            if let Some(first) = changed.first_mut() {
                *first ^= 0xff;
                check(
                    back == sent,
                    format!("changing a clone of message {sequence} changed it too"),
                )?;
            }
            check(
                back.into_vec() == sent.as_slice(),
                format!("message {sequence}: into_vec lost bytes"),
            )?;
            received += 1;
        }
        Ok::<_, Failed>(received)
    };
    send_and_read_all(send_all, receive_all, total, process.handle).await
}

/// The worker of the descriptors-between-large-frames scenario: answers
/// each message with its sequence number, the text of the file that came
/// with it, and whether its bytes are those the parent made.
async fn fd_and_bulk(
    mut input: MessageStream<(u64, Fd, Bytes)>,
    output: MessageSender<(u64, String, bool)>,
) {
    while let Some(Ok((sequence, fd, data))) = input.next().await {
        let mut file = std::fs::File::from(fd.into_inner());
        let mut text = String::new();
        let read = file.read_to_string(&mut text).is_ok();
        let intact = read && data == bulk_bytes(data.len(), sequence as usize);
        if output.send((sequence, text, intact)).await.is_err() {
            return;
        }
    }
}

/// Large frames back to back, each with a descriptor: however the reads
/// cut the stream (a read that takes a large payload's rest together with
/// the next frame's header, and that header's descriptor, is one way to get
/// it wrong), each descriptor must reach its own message.
pub async fn descriptors_between_large_messages_reach_their_own_message<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let process = parallel.process(fd_and_bulk)?;
    let sender = process.sender.with_shared_memory_min(None);
    let mut stream = process.stream;
    let total = 24usize;
    let sizes = [65_536, 100_003, 20_000, 8];
    let send_all = async {
        for sequence in 0..total {
            let mut file = tempfile()?;
            write!(file, "file {sequence}")?;
            file.rewind()?;
            let data = bulk_bytes(sizes[sequence % sizes.len()], sequence);
            sender
                .send((sequence as u64, Fd(file.into()), data))
                .await?;
        }
        drop(sender);
        Ok::<_, Failed>(())
    };
    let receive_all = async {
        let mut received = 0u64;
        while let Some(answer) = stream.next().await {
            let (sequence, text, intact) = answer?;
            check(
                sequence == received,
                format!("answer {received} carries sequence {sequence}: out of order"),
            )?;
            check(
                text == format!("file {sequence}"),
                format!("message {sequence} came with the file reading {text:?}"),
            )?;
            check(intact, format!("message {sequence}: its bytes changed"))?;
            received += 1;
        }
        Ok::<_, Failed>(received as usize)
    };
    send_and_read_all(send_all, receive_all, total, process.handle).await
}

/// Messages in each burst of the queued-together scenario: a queue's worth
/// (16), which the pumps take in one batch and write with one `sendmsg`
/// where they can.
const BURST: usize = 16;

/// The worker of the queued-together scenario: gathers a burst of messages,
/// then sends every one back at once (so that its own pump finds them all
/// queued), each with its descriptor and its bytes as they came.
async fn echo_bursts(
    mut input: MessageStream<(u64, Option<Fd>, Bytes)>,
    output: MessageSender<(u64, Option<Fd>, Bytes)>,
) {
    let mut burst = Vec::with_capacity(BURST);
    loop {
        let next = input.next().await;
        let ended = !matches!(next, Some(Ok(_)));
        if let Some(Ok(message)) = next {
            burst.push(message);
        }
        if burst.len() == BURST || (ended && !burst.is_empty()) {
            for message in burst.drain(..) {
                if output.send(message).await.is_err() {
                    return;
                }
            }
        }
        if ended {
            return;
        }
    }
}

/// Messages queued together (small ones, large `Bytes` lent to the socket,
/// some with a descriptor, a burst's bytes past what one write takes) go out
/// in shared writes both ways: each must arrive whole, in order, with its
/// own descriptor and no other.
pub async fn messages_queued_together_arrive_whole_in_order_with_their_descriptors<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let process = parallel.process(echo_bursts)?;
    let sender = process.sender.with_shared_memory_min(None);
    let mut stream = process.stream;
    let sizes = [8, 65_536, 300, 100_003, 65_537, 0, 20_000];
    let mut sequence = 0u64;
    for burst in 0..4 {
        let first = sequence;
        // Sent without waiting for answers: the queue fills before the
        // driver runs (on a one-thread runtime, all of it).
        for index in 0..BURST {
            let size = sizes[(index + burst) % sizes.len()];
            let fd = if (index + burst) % 3 == 0 {
                let mut file = tempfile()?;
                write!(file, "file {sequence}")?;
                file.rewind()?;
                Some(Fd(file.into()))
            } else {
                None
            };
            sender
                .send((sequence, fd, bulk_bytes(size, sequence as usize)))
                .await?;
            sequence += 1;
        }
        for expected in first..sequence {
            let Some(answer) = stream.next().await else {
                return Err(format!("the stream ended before answer {expected}").into());
            };
            let (got, fd, data) = answer?;
            check(
                got == expected,
                format!("answer {expected} carries sequence {got}: out of order"),
            )?;
            let index = (expected - first) as usize;
            let size = sizes[(index + burst) % sizes.len()];
            check(
                data == bulk_bytes(size, expected as usize),
                format!("message {expected} ({size} bytes) changed on the way"),
            )?;
            match fd {
                Some(fd) => {
                    check(
                        (index + burst) % 3 == 0,
                        format!("message {expected} came back with a descriptor it had not"),
                    )?;
                    let mut text = String::new();
                    std::fs::File::from(fd.into_inner()).read_to_string(&mut text)?;
                    check(
                        text == format!("file {expected}"),
                        format!("message {expected} came back with the file reading {text:?}"),
                    )?;
                }
                None => check(
                    (index + burst) % 3 != 0,
                    format!("message {expected} came back without its descriptor"),
                )?,
            }
        }
    }
    drop(sender);
    check(
        stream.next().await.is_none(),
        "the stream goes on after every answer",
    )?;
    process.handle.wait().await?;
    Ok(())
}

/// The worker of the buffer-reuse scenario: keeps every even-numbered
/// message's `Bytes` and drops the odd ones before answering each with
/// where its bytes are and whether they, and every `Bytes` kept so far, are
/// still the bytes sent.
async fn keep_even(
    mut input: MessageStream<(u64, Bytes)>,
    output: MessageSender<(u64, u64, bool)>,
) {
    let mut kept: Vec<(u64, Bytes)> = Vec::new();
    while let Some(Ok((sequence, data))) = input.next().await {
        let address = data.as_ptr() as u64;
        let intact =
            |(sequence, data): &(u64, Bytes)| *data == bulk_bytes(data.len(), *sequence as usize);
        let mut all_intact = kept.iter().all(intact);
        let message = (sequence, data);
        all_intact &= intact(&message);
        if sequence % 2 == 0 {
            kept.push(message);
        } else {
            // Dropped before the answer: the next message may take its buffer.
            drop(message);
        }
        if output.send((sequence, address, all_intact)).await.is_err() {
            return;
        }
    }
}

pub async fn received_buffers_are_reused_once_dropped_never_while_held<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let mut process = parallel.process(keep_even)?;
    let sender = process.sender.clone().with_shared_memory_min(None);
    let mut sequence = 0u64;
    let mut kept = Vec::new();
    // One message at a time, so that the worker reads each only after it
    // dropped the one before (its reads do not run ahead).
    for size in [100_003, (1 << 20) + 3] {
        let mut dropped = None;
        for _ in 0..12 {
            sender
                .send((sequence, bulk_bytes(size, sequence as usize)))
                .await?;
            let Some(answer) = process.stream.next().await else {
                return Err("the stream ended early".into());
            };
            let (answered, address, intact) = answer?;
            check(answered == sequence, "answers out of order")?;
            check(
                intact,
                format!(
                    "message {sequence} ({size} bytes), or a Bytes the worker still \
                     holds, changed"
                ),
            )?;
            check(
                !kept.contains(&address),
                format!("message {sequence} was received into a buffer a Bytes still holds"),
            )?;
            if let Some(previous) = dropped.take() {
                check(
                    address == previous,
                    format!(
                        "message {sequence} ({size} bytes) was not received into the \
                         buffer of the one before, dropped"
                    ),
                )?;
            }
            if sequence % 2 == 0 {
                kept.push(address);
            } else {
                dropped = Some(address);
            }
            sequence += 1;
        }
    }
    drop((sender, process.sender));
    process.handle.wait().await?;
    Ok(())
}

/// The worker of the default-threshold scenario: answers whether each
/// message's bytes came in shared memory, and their checksum there.
async fn shared_or_not(mut input: MessageStream<Bytes>, output: MessageSender<(bool, u64)>) {
    while let Some(Ok(data)) = input.next().await {
        if output
            .send((data.is_shared(), checksum(&data)))
            .await
            .is_err()
        {
            return;
        }
    }
}

pub async fn a_message_mostly_of_large_bytes_takes_the_socket_below_32_mib_by_default<
    R: Runtime,
>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let mut process = parallel.process(shared_or_not)?;
    let size = (3 << 20) + 7;
    // By default a 3 MiB `Bytes` is written from its own buffer through the
    // socket; with the threshold set to 1 MiB it goes through a memfd.
    for (threshold, shared_expected) in [(None, false), (Some(1 << 20), true)] {
        let sender = match threshold {
            Some(min) => process.sender.clone().with_shared_memory_min(Some(min)),
            None => process.sender.clone(),
        };
        let data = bulk_bytes(size, usize::from(shared_expected));
        let sum = checksum(&data);
        sender.send(data).await?;
        let Some(answer) = process.stream.next().await else {
            return Err("the stream ended early".into());
        };
        let (shared, sum_there) = answer?;
        check(sum_there == sum, "the bytes changed on the way")?;
        check(
            shared == shared_expected,
            format!(
                "threshold {threshold:?}: came in shared memory: {shared}, \
                 expected {shared_expected}"
            ),
        )?;
    }
    drop(process.sender);
    process.handle.wait().await?;
    Ok(())
}

/// The worker of the copied-message threshold scenario: answers whether the
/// message's bytes came in shared memory, and their checksum.
async fn chunks_shared_or_not(
    mut input: MessageStream<Vec<Bytes>>,
    output: MessageSender<(bool, u64)>,
) {
    while let Some(Ok(chunks)) = input.next().await {
        let shared = chunks.first().is_some_and(Bytes::is_shared);
        let joined: Vec<u8> = chunks
            .iter()
            .flat_map(|chunk| chunk.iter().copied())
            .collect();
        if output.send((shared, checksum(&joined))).await.is_err() {
            return;
        }
    }
}

pub async fn a_copied_message_takes_the_socket_below_4_mib_by_default<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let mut process = parallel.process(chunks_shared_or_not)?;
    // Chunks of 8 KiB are copied into the encoding (only `Bytes` of 16 KiB
    // and up are lent), as serde_bytes' are. By default such a message
    // takes the socket below 4 MiB and a memfd from there; a threshold set
    // by the user still holds.
    const CHUNK: usize = 8 << 10;
    let cases = [
        (None, (3 << 20) / CHUNK, false),
        (None, (4 << 20) / CHUNK + 1, true),
        (Some(1 << 20), (3 << 20) / CHUNK, true),
    ];
    for (round, (threshold, chunks, shared_expected)) in cases.into_iter().enumerate() {
        let sender = match threshold {
            Some(min) => process.sender.clone().with_shared_memory_min(Some(min)),
            None => process.sender.clone(),
        };
        // A memfd the sender could not make or seal (the kernel refuses the
        // write seal while a page is briefly pinned, on a loaded machine)
        // leaves a message on the socket: a message expected in shared
        // memory gets three tries, one of which must arrive there.
        let tries = if shared_expected { 3 } else { 1 };
        let mut came_shared = false;
        for attempt in 0..tries {
            let message: Vec<Bytes> = (0..chunks)
                .map(|index| bulk_bytes(CHUNK, round * 10_000 + attempt * 1000 + index))
                .collect();
            let joined: Vec<u8> = message
                .iter()
                .flat_map(|chunk| chunk.iter().copied())
                .collect();
            let sum = checksum(&joined);
            sender.send(message).await?;
            let Some(answer) = process.stream.next().await else {
                return Err("the stream ended early".into());
            };
            let (shared, sum_there) = answer?;
            check(sum_there == sum, "the bytes changed on the way")?;
            came_shared |= shared;
            if shared {
                break;
            }
        }
        check(
            came_shared == shared_expected,
            format!(
                "threshold {threshold:?}, {} bytes: came in shared memory: {came_shared}, \
                 expected {shared_expected}",
                chunks * CHUNK
            ),
        )?;
    }
    drop(process.sender);
    process.handle.wait().await?;
    Ok(())
}

/// Runs in a worker: answers each plain byte vector with its bytes reversed.
async fn reverse_byte_vectors(mut input: MessageStream<Vec<u8>>, output: MessageSender<Vec<u8>>) {
    while let Some(Ok(mut message)) = input.recv().await {
        message.reverse();
        if output.send(message).await.is_err() {
            return;
        }
    }
}

/// Plain `Vec<u8>` messages take the byte-string path both ways (the
/// default codec writes a byte string as it writes a `Vec<u8>`): every size
/// arrives whole, across the length prefix's width steps, the size from
/// which a buffer is lent to the socket (16 KiB), and shared memory (4 MiB).
pub async fn plain_byte_vectors_arrive_intact_both_ways<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let mut process = parallel.process(reverse_byte_vectors)?;
    for len in [
        0usize,
        1,
        127,
        128,
        300,
        (16 << 10) + 3,
        (1 << 20) + 7,
        5 << 20,
    ] {
        let message: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let mut expected = message.clone();
        expected.reverse();
        process.sender.send(message).await?;
        let Some(answer) = process.stream.next().await else {
            return Err(format!("the stream ended before the {len}-byte answer").into());
        };
        let answer = answer?;
        check(
            answer.len() == len,
            format!("{len} bytes sent, {} came back", answer.len()),
        )?;
        check(
            answer == expected,
            format!("the {len} bytes changed on the way"),
        )?;
    }
    drop(process.sender);
    check(process.stream.next().await.is_none(), "the stream ends")?;
    process.handle.wait().await?;
    Ok(())
}

/// How many messages of each sender the many-senders scenario sends.
const PER_SENDER: u64 = 24;

/// The worker of the senders' scenarios: checks each message's bytes (the
/// template `bulk_bytes(len, 7)`'s first `len` bytes) and that each sender's
/// messages come in the order it sent them; once its input ends it answers
/// with how many came and how many were wrong. With `wait`, it sleeps that
/// long before it reads anything (the parent's writes then fill the socket).
async fn check_senders<B: AsRef<[u8]> + serde::de::DeserializeOwned + 'static>(
    mut input: MessageStream<(u64, u64, B)>,
    output: MessageSender<(u64, u64)>,
    wait: Duration,
) {
    std::thread::sleep(wait);
    let template = bulk_bytes(BIG_SEND, 7);
    let mut next: Vec<u64> = Vec::new();
    let (mut count, mut wrong) = (0, 0);
    while let Some(message) = input.next().await {
        let Ok((sender, sequence, data)) = message else {
            wrong += 1;
            break;
        };
        let sender = sender as usize;
        if next.len() <= sender {
            next.resize(sender + 1, 0);
        }
        let data = data.as_ref();
        if sequence != next[sender] || data[..] != template[..data.len()] {
            wrong += 1;
        }
        next[sender] = sequence + 1;
        count += 1;
    }
    let _ = output.send((count, wrong)).await;
}

/// A message larger than a widened socket buffer (4 MiB here): its write
/// cannot go out whole while the worker does not read.
const BIG_SEND: usize = 6 << 20;

/// Clones of one sender sending at once (interleaved in one task, each one
/// writing itself when it finds the driver idle, or queueing): every
/// message arrives whole, each sender's in its order.
pub async fn many_senders_at_once_arrive_whole_each_in_order<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    many_senders_body(parallel, |bytes| Bytes::from(bytes)).await
}

/// The same with `serde_bytes` buffers (written from the messages' own
/// memory as the driver encodes them).
pub async fn many_senders_of_serde_bytes_at_once_arrive_whole_each_in_order<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    many_senders_body(parallel, serde_bytes_of).await
}

/// A byte buffer the senders' scenarios send: `Bytes` or a `serde_bytes`
/// buffer (each travels its own way; both decode from the same wire).
trait ByteBuffer:
    AsRef<[u8]> + serde::Serialize + serde::de::DeserializeOwned + Send + 'static
{
}

impl<B> ByteBuffer for B where
    B: AsRef<[u8]> + serde::Serialize + serde::de::DeserializeOwned + Send + 'static
{
}

/// A `serde_bytes` buffer of `bytes`.
fn serde_bytes_of(bytes: &[u8]) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from(bytes.to_vec())
}

async fn many_senders_body<R: Runtime, B: ByteBuffer>(
    parallel: Parallel<R>,
    make: fn(&[u8]) -> B,
) -> Result<(), Failed> {
    let process =
        parallel.process(|input, output| check_senders::<B>(input, output, Duration::ZERO))?;
    let sender = process.sender.with_shared_memory_min(None);
    let mut stream = process.stream;
    let template = bulk_bytes(BIG_SEND, 7);
    let sizes = [0, 300, 65_536, 100_003, 20_000, 1_048_576, 7];
    const SENDERS: u64 = 5;
    let sends = (0..SENDERS).map(|id| {
        let sender = sender.clone();
        let template = &template;
        async move {
            for sequence in 0..PER_SENDER {
                let size = sizes[((id + sequence) % sizes.len() as u64) as usize];
                sender.send((id, sequence, make(&template[..size]))).await?;
            }
            Ok::<_, Error>(())
        }
    });
    for sent in futures_util::future::join_all(sends).await {
        sent?;
    }
    drop(sender);
    let answer = stream.next().await;
    check(
        matches!(answer, Some(Ok((count, 0))) if count == SENDERS * PER_SENDER),
        format!(
            "the worker answered {answer:?} for {} messages",
            SENDERS * PER_SENDER
        ),
    )?;
    process.handle.wait().await?;
    Ok(())
}

/// A message too large for the socket's buffer, sent while the worker does
/// not read, and send futures dropped after one poll, those whose message
/// went out (or in the queue) and the one that found the queue full: every
/// message that was sent arrives whole and in order, the refused one not
/// at all, and nothing of one message mixes with the next.
pub async fn send_futures_dropped_mid_frame_lose_nothing_that_was_sent<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    send_futures_dropped_body(parallel, |bytes| Bytes::from(bytes)).await
}

/// The same with `serde_bytes` buffers: a message the driver encodes as it
/// writes it, past the socket buffer, keeps its rest queued, whole.
pub async fn serde_bytes_send_futures_dropped_mid_frame_lose_nothing_that_was_sent<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    send_futures_dropped_body(parallel, serde_bytes_of).await
}

async fn send_futures_dropped_body<R: Runtime, B: ByteBuffer>(
    parallel: Parallel<R>,
    make: fn(&[u8]) -> B,
) -> Result<(), Failed> {
    let process = parallel
        .process(|input, output| check_senders::<B>(input, output, Duration::from_millis(400)))?;
    let sender = process.sender.with_shared_memory_min(None);
    let mut stream = process.stream;
    let template = bulk_bytes(BIG_SEND, 7);
    // Polled once each, then dropped: the first is written in part (the
    // rest is the driver's to write), the next ones queue until the queue
    // is full.
    let mut sequence = 0;
    loop {
        let size = if sequence == 0 { BIG_SEND } else { 1 << 20 };
        match sender
            .send((0, sequence, make(&template[..size])))
            .now_or_never()
        {
            Some(sent) => sent?,
            None => break,
        }
        sequence += 1;
        if sequence > 64 {
            return Err("64 messages queued while the worker read nothing".into());
        }
    }
    // The one whose send was dropped pending was not sent: its number goes
    // with the next.
    for _ in 0..3 {
        sender.send((0, sequence, make(&template[..5000]))).await?;
        sequence += 1;
    }
    drop(sender);
    let answer = stream.next().await;
    check(
        matches!(answer, Some(Ok((count, 0))) if count == sequence),
        format!("the worker answered {answer:?} for {sequence} messages"),
    )?;
    process.handle.wait().await?;
    Ok(())
}

/// A worker killed while a message is half written and more wait in the
/// queue: the sender gets an error (not a hang), and the handle says how
/// the worker died.
pub async fn a_worker_killed_mid_message_fails_its_sender<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let process =
        parallel.process(|input, output| check_senders(input, output, Duration::from_secs(60)))?;
    let sender = process.sender.with_shared_memory_min(None);
    let template = bulk_bytes(BIG_SEND, 7);
    let mut sequence = 0;
    while let Some(sent) = sender
        .send((0, sequence, Bytes::from(&template[..1 << 20])))
        .now_or_never()
    {
        sent?;
        sequence += 1;
        if sequence > 64 {
            return Err("64 MiB queued while the worker read nothing".into());
        }
    }
    known_pid::<R>("process worker", || process.handle.pid()).await?;
    process.handle.kill();
    let failed = within::<R, _>(Duration::from_secs(10), async {
        loop {
            if let Err(error) = sender
                .send((0, sequence, Bytes::from(&template[..1000])))
                .await
            {
                return error;
            }
            sequence += 1;
        }
    })
    .await;
    check(
        matches!(failed, Some(Error::Closed)),
        format!("sends to a killed worker ended with {failed:?}"),
    )?;
    let waited = process.handle.wait().await;
    check(
        matches!(waited, Err(Error::WorkerDied { .. })),
        format!("the killed worker's handle said {waited:?}"),
    )?;
    Ok(())
}

/// A `process` message with byte strings of its own, as users write them
/// (`serde_bytes`): those of 16 KiB and up are written to the socket from
/// the message's memory, encoded as the driver writes them; a descriptor
/// or a lent `Bytes` may ride along.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    sequence: u64,
    label: String,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
    tail: serde_bytes::ByteBuf,
    fd: Option<Fd>,
    ours: Option<Bytes>,
}

/// Sizes of a `Record`'s `data`: either side of a large byte string (16
/// KiB) and of a streamed message (256 KiB of them; the `tail` may add up
/// to 20 000), past a socket buffer, and past shared memory's threshold (4
/// MiB: that one goes as a memfd).
const RECORD_SIZES: [usize; 11] = [
    0,
    100,
    (16 << 10) - 1,
    16 << 10,
    65_536,
    (256 << 10) - 30_000,
    256 << 10,
    (1 << 20) + 3,
    3 << 20,
    (5 << 20) + 1,
    300,
];
const RECORD_ROUNDS: usize = 3;

fn record(sequence: usize) -> Result<Record, Failed> {
    let size = RECORD_SIZES[sequence % RECORD_SIZES.len()];
    let fd = if sequence % 4 == 1 {
        let mut file = tempfile()?;
        write!(file, "file {sequence}")?;
        file.rewind()?;
        Some(Fd(file.into()))
    } else {
        None
    };
    Ok(Record {
        sequence: sequence as u64,
        label: format!("record {sequence}"),
        data: bulk_bytes(size, sequence).to_vec(),
        tail: serde_bytes::ByteBuf::from(
            bulk_bytes([0, 20_000, 7][sequence % 3], !sequence).to_vec(),
        ),
        fd,
        ours: (sequence % 5 == 2).then(|| bulk_bytes(100_000, sequence + 1)),
    })
}

/// Whether `received` is what [`record`] made for its sequence number,
/// its descriptor's file read back (the worker echoes records as they came).
fn record_is_intact(received: Record) -> Result<(), Failed> {
    let sequence = received.sequence as usize;
    let expected = record(sequence)?;
    check(
        received.label == expected.label,
        format!("record {sequence}: its label is {:?}", received.label),
    )?;
    check(
        received.data == expected.data && received.tail == expected.tail,
        format!(
            "record {sequence}: its bytes changed ({} and {} bytes came)",
            received.data.len(),
            received.tail.len()
        ),
    )?;
    check(
        received.ours.as_deref() == expected.ours.as_deref(),
        format!("record {sequence}: its Bytes changed"),
    )?;
    match (received.fd, expected.fd.is_some()) {
        (None, false) => Ok(()),
        (Some(fd), true) => {
            let mut text = String::new();
            let mut file = std::fs::File::from(fd.into_inner());
            file.rewind()?;
            file.read_to_string(&mut text)?;
            check(
                text == format!("file {sequence}"),
                format!("record {sequence} came with the file reading {text:?}"),
            )
        }
        (fd, _) => Err(format!("record {sequence}: its descriptor came as {fd:?}").into()),
    }
}

/// The worker of the records scenario: sends every record back as it came,
/// through the socket whatever its size (a record the parent received in
/// shared memory would map a memfd in the parent, which
/// `large_messages_arrive_intact_both_ways_and_leak_nothing`, running
/// beside this in the same process, counts).
async fn echo_records(mut input: MessageStream<Record>, output: MessageSender<Record>) {
    let output = output.with_shared_memory_min(None);
    while let Some(record) = input.next().await {
        let Ok(record) = record else {
            return;
        };
        if output.send(record).await.is_err() {
            return;
        }
    }
}

/// Messages with `serde_bytes` fields of every size, some with a descriptor
/// or a lent `Bytes`, sent as fast as the channel takes them, both ways:
/// each arrives whole and in order, whether it was written from its own
/// memory, copied, or (towards the worker) sent through shared memory.
pub async fn messages_with_serde_bytes_arrive_intact_and_in_order_both_ways<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let process = parallel.process(echo_records)?;
    let sender = process.sender;
    let mut stream = process.stream;
    let total = RECORD_SIZES.len() * RECORD_ROUNDS;
    let send_all = async {
        for sequence in 0..total {
            sender.send(record(sequence)?).await?;
        }
        drop(sender);
        Ok::<_, Failed>(())
    };
    let receive_all = async {
        let mut received = 0;
        while let Some(answer) = stream.next().await {
            let answer = answer?;
            check(
                answer.sequence == received as u64,
                format!(
                    "answer {received} carries sequence {}: out of order",
                    answer.sequence
                ),
            )?;
            record_is_intact(answer)?;
            received += 1;
        }
        Ok::<_, Failed>(received)
    };
    send_and_read_all(send_all, receive_all, total, process.handle).await
}

/// A message of `len` bytes the first time it is serialized (the sender's
/// sizing pass) and `len + change` every time after (the encode as it is
/// written): what a `Serialize` with interior mutability can do.
struct Shifty {
    len: usize,
    change: isize,
    passes: std::sync::atomic::AtomicUsize,
}

impl serde::Serialize for Shifty {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let len = match self
            .passes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        {
            0 => self.len,
            _ => self.len.saturating_add_signed(self.change),
        };
        serializer.serialize_bytes(&vec![9; len])
    }
}

impl<'de> serde::Deserialize<'de> for Shifty {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(deserializer)?;
        if bytes.iter().any(|&byte| byte != 9) {
            return Err(serde::de::Error::custom("a byte other than 9"));
        }
        Ok(Shifty {
            len: bytes.len(),
            change: 0,
            passes: 0.into(),
        })
    }
}

/// The worker of the shifting-message scenario: answers each message with
/// its length, or the error its decode gave.
async fn shifty_lengths(
    mut input: MessageStream<Shifty>,
    output: MessageSender<Result<usize, String>>,
) {
    while let Some(message) = input.next().await {
        let answer = message.map(|shifty| shifty.len).map_err(|e| e.to_string());
        if output.send(answer).await.is_err() {
            return;
        }
    }
}

/// A message whose encode when written differs from its sizing: its frame
/// keeps the length it announced (cut, or filled with zeros), so the
/// channel stays whole; the receiver decodes what came (a shorter encoding
/// then zeros is the shorter value, a cut one an error) and the next
/// messages arrive as sent.
pub async fn a_message_that_encodes_differently_when_written_leaves_the_channel_whole<
    R: Runtime,
>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let process = parallel.process(shifty_lengths)?;
    let mut stream = process.stream;
    for change in [-100_000, 100_000, 0, 250_000, -400_000] {
        let shifty = Shifty {
            len: 400_000,
            change,
            passes: 0.into(),
        };
        process.sender.send(shifty).await?;
        // A frame that lost its length would leave the worker waiting for
        // bytes that never come: bounded, not a hang.
        let answer = within::<R, _>(Duration::from_secs(30), stream.next())
            .await
            .ok_or("no answer in 30 s: the channel lost its framing")?;
        let fits = match (change, &answer) {
            (-100_000, Some(Ok(Ok(300_000)))) | (0, Some(Ok(Ok(400_000)))) => true,
            // Zero bytes then zeros: an empty byte string.
            (-400_000, Some(Ok(Ok(0)))) => true,
            (100_000 | 250_000, Some(Ok(Err(error)))) => !error.is_empty(),
            _ => false,
        };
        check(
            fits,
            format!("a 400 000-byte message that became {change:+} bytes longer when written: the worker said {answer:?}"),
        )?;
    }
    drop(process.sender);
    process.handle.wait().await?;
    Ok(())
}
