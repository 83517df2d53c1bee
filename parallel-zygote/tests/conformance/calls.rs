//! Values in and out: `spawn`, `run` (in order, concurrent, and pipelined
//! with answers ready at once or later), a custom codec, snapshots.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use libtest_mimic::Failed;
use parallel_zygote::async_core::{Codec, CodecError, Error, Parallel, Pool, PoolConfig, Runtime};

use super::{check, within};

pub async fn spawn_returns_the_value<R: Runtime>(parallel: Parallel<R>) -> Result<(), Failed> {
    let value = parallel.spawn(|x: u64| async move { x * 2 }, 21).await?;
    check(value == 42, format!("got {value}"))?;
    let text = parallel
        .spawn(
            |words: Vec<String>| async move { words.join(" ") },
            vec!["in".into(), "another".into(), "process".into()],
        )
        .await?;
    check(text == "in another process", text)
}

/// A spawn's Start frame is written inside `spawn()`, on the fresh socket;
/// arguments larger than the socket's buffer leave the rest to the driver,
/// and arrive whole.
pub async fn spawn_arguments_larger_than_the_socket_buffer_arrive_whole<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let arguments: Vec<u8> = (0..(2usize << 20)).map(|i| (i % 251) as u8).collect();
    let expected = (
        arguments.len(),
        arguments.iter().map(|&b| u64::from(b)).sum::<u64>(),
    );
    let spawned = parallel.spawn(
        |bytes: Vec<u8>| async move {
            (
                bytes.len(),
                bytes.iter().map(|&b| u64::from(b)).sum::<u64>(),
            )
        },
        arguments,
    );
    let Some(result) = within::<R, _>(Duration::from_secs(60), spawned).await else {
        return Err("no result within 60 s: the arguments did not all arrive".into());
    };
    let (len, sum) = result?;
    check(
        (len, sum) == expected,
        format!("the worker saw {len} bytes summing to {sum}, not {expected:?}"),
    )
}

/// The same arguments, the handle left unpolled until the worker has run:
/// what did not fit the socket's buffer is written without the handle's
/// help (a spawn's driver, held by its handle and polled only with it,
/// is not for such a Start).
pub async fn large_spawn_arguments_arrive_before_the_handle_is_polled<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let path = super::temp_path("large-unpolled");
    let text = path.to_str().ok_or("temp path is not UTF-8")?.to_owned();
    let arguments: Vec<u8> = (0..(2usize << 20)).map(|i| (i % 251) as u8).collect();
    let spawned = parallel.spawn(
        |(path, bytes): (String, Vec<u8>)| async move {
            std::fs::write(path, bytes.len().to_string()).unwrap();
            bytes.len()
        },
        (text, arguments),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let written = loop {
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.is_empty() => break Some(text),
            _ if Instant::now() >= deadline => break None,
            _ => R::sleep(Duration::from_millis(10)).await,
        }
    };
    let _ = std::fs::remove_file(&path);
    check(
        written.as_deref() == Some("2097152"),
        format!("the unpolled spawn's worker wrote {written:?} within 60 s"),
    )?;
    check(
        matches!(spawned.await, Ok(2097152)),
        "the spawn's result, awaited afterwards",
    )
}

pub async fn spawn_runs_in_another_process<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let handle = parallel.spawn(|_: ()| async move { std::process::id() }, ());
    let pid = handle.await?;
    check(
        pid != std::process::id(),
        "worker pid differs from the parent's",
    )
}

pub async fn thousand_calls_in_order_on_one_run_worker<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let add_one = parallel.run(|x: u32| async move { x + 1 })?;
    let started = Instant::now();
    for i in 0..1000u32 {
        let value = add_one.call(i).await?;
        check(value == i + 1, format!("call {i} gave {value}"))?;
    }
    eprintln!(
        "    1000 sequential calls: {:?} per call",
        started.elapsed() / 1000
    );
    Ok(())
}

/// 1000 calls made at once on one run worker run there concurrently: each
/// sleeps 10 ms and says how many calls were running when it started.
/// Counted in the worker rather than timed, so that a loaded machine cannot
/// fail it (a bound of 3 s against the 10 s of calls run one by one was
/// missed once with two busy loops per core: 5.3 s).
pub async fn thousand_concurrent_calls_on_one_run_worker<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // The worker's own: it is a process of its own, forked with it at 0.
    static RUNNING: AtomicUsize = AtomicUsize::new(0);
    let slow = parallel.run(|x: u32| async move {
        let running = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
        R::sleep(Duration::from_millis(10)).await;
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        (x * 3, running)
    })?;
    let started = Instant::now();
    let calls = (0..1000u32).map(|i| {
        let slow = slow.clone();
        async move { (i, slow.call(i).await) }
    });
    let results = futures_util::future::join_all(calls).await;
    let mut most = 0;
    for (i, result) in results {
        let (value, running) = result?;
        check(value == i * 3, format!("call {i}"))?;
        most = most.max(running);
    }
    eprintln!(
        "    1000 concurrent 10 ms calls: {:?}, at most {most} running at once",
        started.elapsed()
    );
    // The parent writes them in batches of 64 at most, and the worker
    // starts each batch's calls before any of them ends.
    check(
        most >= 32,
        format!("1000 concurrent calls, but at most {most} ran at once"),
    )
}

/// A codec that XORs postcard bytes: proves both sides use the plugged codec.
pub struct Scrambled;

impl Codec for Scrambled {
    fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
        let mut bytes = postcard::to_stdvec(value)?;
        bytes.iter_mut().for_each(|b| *b ^= 0x5A);
        bytes.push(0xEE);
        Ok(bytes)
    }

    fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        let (marker, body) = bytes.split_last().ok_or("empty")?;
        if *marker != 0xEE {
            return Err("not scrambled".into());
        }
        let plain: Vec<u8> = body.iter().map(|b| b ^ 0x5A).collect();
        Ok(postcard::from_bytes(&plain)?)
    }
}

pub async fn custom_codec_is_used_both_ways<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let scrambled = parallel.with_codec::<Scrambled>();
    let value = scrambled
        .spawn(|s: String| async move { s.len() }, "seven!!".to_string())
        .await?;
    check(value == 7, format!("{value}"))?;
    let run = scrambled.run(|x: i64| async move { -x })?;
    check(run.call(5).await? == -5, "run with custom codec")
}

/// Plain `Vec<u8>` arguments and results (which take the byte-string path
/// with the default codec, and serde's sequence with another), through a
/// `Run`, a `Pool` and a spawn: every byte arrives, in order, both ways.
pub async fn plain_byte_vectors_cross_both_ways<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let long: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let expected: Vec<u8> = long.iter().rev().copied().collect();
    let default = reversed_everywhere(parallel.clone(), &long).await?;
    let scrambled = reversed_everywhere(parallel.with_codec::<Scrambled>(), &long).await?;
    for (codec, answers) in [("default", default), ("scrambled", scrambled)] {
        let [from_run, empty, from_pool, spawned] = answers;
        check(from_run == expected, format!("{codec}: Run::call's bytes"))?;
        check(empty.is_empty(), format!("{codec}: an empty Vec<u8>"))?;
        check(
            from_pool == expected,
            format!("{codec}: Pool::call's bytes"),
        )?;
        check(spawned == expected, format!("{codec}: spawn's bytes"))?;
    }
    Ok(())
}

/// `bytes` reversed by a `Run` (and an empty `Vec<u8>`), a `Pool` and a
/// spawn with codec `C`.
async fn reversed_everywhere<R: Runtime, C: Codec>(
    parallel: Parallel<R, C>,
    bytes: &[u8],
) -> Result<[Vec<u8>; 4], Failed> {
    let reversed = |bytes: Vec<u8>| async move { bytes.into_iter().rev().collect::<Vec<u8>>() };
    let run = parallel.run(reversed)?;
    let pool = Pool::new(&parallel, reversed, PoolConfig::default().size(2))?;
    Ok([
        run.call(bytes.to_vec()).await?,
        run.call(Vec::new()).await?,
        pool.call(bytes.to_vec()).await?,
        parallel.spawn(reversed, bytes.to_vec()).await?,
    ])
}

/// `serde_bytes::ByteBuf` arguments and results of every size (on both
/// sides of 64 KiB, from which the default codec's are moved into their
/// frames and kept in the buffers they arrive in) through a `Run`, a
/// `Pool` and a spawn, with the default codec and a plugged one: every
/// byte arrives, in order, both ways.
pub async fn byte_buffers_cross_calls_and_spawns_whole<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    for len in [0, 100, 64 * 1024 - 1, 70_000, (1 << 20) + 3] {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
        let expected: Vec<u8> = bytes.iter().rev().copied().collect();
        let default = reversed_buffers(parallel.clone(), &bytes).await?;
        let scrambled = reversed_buffers(parallel.with_codec::<Scrambled>(), &bytes).await?;
        for (codec, answers) in [("default", default), ("scrambled", scrambled)] {
            for (path, answer) in ["Run::call", "Pool::call", "spawn"].iter().zip(answers) {
                check(
                    answer.as_ref() == expected.as_slice(),
                    format!("{codec}, {len} B: {path}'s bytes"),
                )?;
            }
        }
    }
    Ok(())
}

/// `bytes` reversed as a `ByteBuf` by a `Run`, a `Pool` and a spawn with
/// codec `C`.
async fn reversed_buffers<R: Runtime, C: Codec>(
    parallel: Parallel<R, C>,
    bytes: &[u8],
) -> Result<[serde_bytes::ByteBuf; 3], Failed> {
    let reversed = |bytes: serde_bytes::ByteBuf| async move {
        serde_bytes::ByteBuf::from(bytes.into_iter().rev().collect::<Vec<u8>>())
    };
    let run = parallel.run(reversed)?;
    let pool = Pool::new(&parallel, reversed, PoolConfig::default().size(1))?;
    let buffer = || serde_bytes::ByteBuf::from(bytes.to_vec());
    Ok([
        run.call(buffer()).await?,
        pool.call(buffer()).await?,
        parallel.spawn(reversed, buffer()).await?,
    ])
}

static TABLE: std::sync::OnceLock<Vec<u64>> = std::sync::OnceLock::new();

/// Runs in a worker: how many entries the snapshot's init left in `TABLE`.
async fn table_len(_: ()) -> usize {
    TABLE.get().map_or(0, Vec::len)
}

pub async fn snapshot_workers_see_init_state<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let warm = parallel.snapshot(
        |args: Vec<u8>| {
            let n = u64::from(args[0]);
            TABLE.set((0..n * 1000).collect()).unwrap();
        },
        vec![7],
    )?;
    let len = warm.spawn(table_len, ()).await?;
    check(len == 7000, format!("snapshot worker saw {len} entries"))?;
    let cold = parallel.spawn(table_len, ()).await?;
    check(cold == 0, "main zygote workers do not see it")
}

/// Encodes anything, but decodes only even numbers: a decode that fails in
/// the worker only.
#[derive(Debug, serde::Serialize)]
pub struct Even(u32);

impl<'de> serde::Deserialize<'de> for Even {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Even, D::Error> {
        let value = u32::deserialize(deserializer)?;
        if value % 2 == 1 {
            return Err(serde::de::Error::custom("odd"));
        }
        Ok(Even(value))
    }
}

/// Decodes fine but never encodes: a result that fails in the worker.
#[derive(Debug, serde::Deserialize)]
pub struct Unencodable;

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("never encodes"))
    }
}

pub async fn codec_failures_in_the_worker_are_codec_errors<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let halve = parallel.run(|Even(x): Even| async move { x / 2 })?;
    check(halve.call(Even(8)).await? == 4, "an even number decodes")?;
    match halve.call(Even(7)).await {
        Err(Error::Codec {
            action: "decode",
            type_name,
            in_worker: true,
            ..
        }) if type_name.ends_with("Even") => {}
        other => {
            return Err(format!("expected a decode error in the worker, got {other:?}").into())
        }
    }
    check(halve.call(Even(2)).await? == 1, "the worker serves on")?;
    let broken = parallel.spawn(|_: u8| async move { Unencodable }, 0);
    match broken.await {
        Err(
            error @ Error::Codec {
                action: "encode",
                in_worker: true,
                ..
            },
        ) => {
            // postcard keeps no custom message ("Serde Serialization
            // Error"): the codec's error is the source, whatever it says.
            let Some(source) = std::error::Error::source(&error).map(ToString::to_string) else {
                return Err(format!("no source in {error:?}").into());
            };
            check(
                !error.to_string().contains(&source),
                format!("the source is not repeated in Display: {error}"),
            )
        }
        other => Err(format!("expected an encode error in the worker, got {other:?}").into()),
    }
}

pub async fn pipelined_calls_ready_at_once_or_later_reach_their_callers<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    // Most calls finish at once (the worker answers them in the pass that
    // read them), every fifth waits a little, one panics at once: each
    // caller must get its own answer whichever way its call went.
    let mixed = parallel.run(|x: u64| async move {
        if x % 5 == 0 {
            R::sleep(Duration::from_millis(1)).await;
        }
        if x == 777 {
            panic!("call {x} panics at once");
        }
        x * 2 + 1
    })?;
    let results: Vec<(u64, Result<u64, Error>)> = futures_util::stream::iter(0..2000u64)
        .map(|x| {
            let mixed = &mixed;
            async move { (x, mixed.call(x).await) }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    check(results.len() == 2000, format!("{} answers", results.len()))?;
    for (x, result) in results {
        match result {
            Ok(value) => check(value == x * 2 + 1, format!("call {x} got {value}"))?,
            Err(Error::Panicked { report, .. }) if x == 777 => check(
                report.message.contains("call 777"),
                format!("call 777's panic says {:?}", report.message),
            )?,
            Err(error) => return Err(format!("call {x} failed: {error}").into()),
        }
    }
    // The worker survived its panic and serves on.
    check(mixed.call(10).await? == 21, "a call after the panic")
}

/// Calls pipelined by one task go out in chunks that their callers write,
/// not only when the driver's task runs: a task that goes on without
/// yielding after making its calls (here it blocks its thread, as a busy
/// task would) has them answered meanwhile, and the worker gets its next
/// calls while the parent is still busy with the last answers. On a
/// current-thread runtime (tokio's, glommio's) the driver's task cannot run
/// until the caller yields, so only the callers' own writes can have
/// reached the worker; elsewhere the driver's thread may also write them.
///
/// 17 calls: the first goes out alone (nothing else in flight), the next
/// 16 as one chunk (the driver's `CALLER_WRITE_CHUNK`; on smol, whose
/// drivers run on the executor's thread, the driver writes them for a
/// caller in the `block_on` future, and a caller in a task of the executor
/// writes them itself: smol's own trial
/// `pipelined_calls_from_a_task_on_the_drivers_thread`).
pub async fn pipelined_calls_reach_the_worker_while_their_caller_keeps_the_thread<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    use futures_util::stream::FuturesUnordered;
    use std::task::Poll;

    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("parallel-chunks-{}-{unique}", std::process::id()));
    std::fs::create_dir(&dir)?;
    let dir_name = dir.to_string_lossy().into_owned();
    // Each call leaves a file named after its argument: the worker ran it.
    let run = parallel.run(|(dir, x): (String, u64)| async move {
        let _ = std::fs::write(std::path::Path::new(&dir).join(x.to_string()), b"");
        x
    })?;
    let result = async {
        check(
            run.call((dir_name.clone(), 1000)).await? == 1000,
            "first call",
        )?;
        // One poll of each call submits it (and may find its answer on a
        // multi-thread runtime, whose driver runs elsewhere). Each is polled
        // by itself: a `FuturesUnordered` stops polling its futures for the
        // task's poll once two of them woke themselves during their polls
        // (a reading caller that defers its write wakes itself; another
        // caller's poll can be woken by an answer read meanwhile on the
        // driver's thread), and the calls not polled yet were never made:
        // "2 of 17 pipelined calls reached the worker", under load.
        let mut answered = Vec::new();
        let mut calls: FuturesUnordered<_> = FuturesUnordered::new();
        for x in 0..17u64 {
            let mut call = Box::pin(run.call((dir_name.clone(), x)));
            match futures_util::poll!(call.as_mut()) {
                Poll::Ready(result) => answered.push(result?),
                Poll::Pending => calls.push(call),
            }
        }
        // Not yielding from here until every call has run (or 60 s have
        // passed: then they were not written).
        let deadline = Instant::now() + Duration::from_secs(60);
        let ran = |x: u64| dir.join(x.to_string()).exists();
        while !(0..17).all(ran) {
            if Instant::now() > deadline {
                let count = (0..17).filter(|&x| ran(x)).count();
                return Err(format!(
                    "{count} of 17 pipelined calls reached the worker in 60 s \
                     while their caller kept its thread"
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        while let Some(result) = calls.next().await {
            answered.push(result?);
        }
        answered.sort_unstable();
        check(
            answered == (0..17).collect::<Vec<u64>>(),
            format!("answers {answered:?}"),
        )
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}
