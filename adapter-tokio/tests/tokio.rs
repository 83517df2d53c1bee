//! Real workers, real sockets, the real tokio runtime. The zygote starts in
//! `main` before libtest-mimic starts its threads; each test builds its own
//! runtime.

use std::future::Future;
use std::io::{Read, Seek, Write};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use libtest_mimic::{Arguments, Failed, Trial};
use parallel_tokio::{
    Codec, Error, Fd, MessageSender, MessageStream, Parallel, Pool, PoolConfig, WorkerRuntime,
};

type TestFuture = std::pin::Pin<Box<dyn Future<Output = Result<(), Failed>>>>;

fn main() {
    if std::env::var("PARALLEL_TOKIO_HELPER").as_deref() == Ok("zygote-gone") {
        zygote_gone_helper();
        return;
    }
    let parallel = parallel_tokio::init().expect("start the zygote before any thread");
    let args = Arguments::from_args();
    let t = |name: &str, test: fn(Parallel) -> TestFuture| {
        let parallel = parallel.clone();
        Trial::test(name, move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(test(parallel))
        })
    };
    macro_rules! trial {
        ($name:ident) => {
            t(stringify!($name), |p| Box::pin($name(p)))
        };
    }
    let tests = vec![
        trial!(spawn_returns_the_value),
        trial!(spawn_runs_in_another_process),
        trial!(thousand_calls_in_order_on_one_run_worker),
        trial!(thousand_concurrent_calls_on_one_run_worker),
        trial!(run_call_panic_reports_message_and_location_and_worker_survives),
        trial!(spawn_panic_is_reported),
        trial!(worker_abort_reports_sigabrt_and_the_call),
        trial!(worker_sigkill_mid_call_reports_signal_and_call),
        trial!(worker_dying_before_first_reply_errors_promptly),
        trial!(spawn_abort_kills_the_worker),
        trial!(dropped_call_future_kills_its_worker),
        trial!(dropping_the_last_run_handle_ends_the_worker),
        trial!(process_streams_both_ways_with_half_close),
        trial!(process_worker_panic_ends_stream_with_error),
        trial!(slow_consumer_keeps_memory_bounded),
        trial!(fd_passed_to_a_worker_is_usable_there),
        trial!(fd_passed_back_from_a_worker_is_usable_here),
        trial!(custom_codec_is_used_both_ways),
        trial!(multi_thread_worker_runtime_works),
        trial!(timeout_kills_stuck_worker_and_pool_keeps_serving),
        trial!(pool_of_4_over_1000_inputs_with_one_poisoned),
        trial!(pool_recycles_workers_after_max_calls),
        trial!(pool_map_unordered_reports_indices),
        trial!(snapshot_workers_see_init_state),
        {
            let parallel = parallel.clone();
            Trial::test(
                "outside_a_runtime_is_an_error_not_a_panic",
                move || match parallel.run(|x: u8| async move { x }) {
                    Err(Error::NoRuntime { .. }) => Ok(()),
                    other => Err(format!("expected NoRuntime, got {other:?}").into()),
                },
            )
        },
        Trial::test("zygote_gone_gives_a_clear_error_promptly", || {
            let output = std::process::Command::new(std::env::current_exe()?)
                .env("PARALLEL_TOKIO_HELPER", "zygote-gone")
                .output()?;
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            if output.status.success() && text.starts_with("ok") {
                Ok(())
            } else {
                Err(format!(
                    "helper said: {text} {}",
                    String::from_utf8_lossy(&output.stderr)
                )
                .into())
            }
        }),
    ];
    libtest_mimic::run(&args, tests).exit();
}

fn check(condition: bool, message: impl Into<String>) -> Result<(), Failed> {
    if condition {
        Ok(())
    } else {
        Err(message.into().into())
    }
}

async fn spawn_returns_the_value(parallel: Parallel) -> Result<(), Failed> {
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

async fn spawn_runs_in_another_process(parallel: Parallel) -> Result<(), Failed> {
    let handle = parallel.spawn(|_: ()| async move { std::process::id() }, ());
    let pid = handle.await?;
    check(
        pid != std::process::id(),
        "worker pid differs from the parent's",
    )
}

async fn thousand_calls_in_order_on_one_run_worker(parallel: Parallel) -> Result<(), Failed> {
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

async fn thousand_concurrent_calls_on_one_run_worker(parallel: Parallel) -> Result<(), Failed> {
    // Each call sleeps: if calls did not run concurrently inside the worker,
    // 1000 of them would take 10 s, not a few tens of milliseconds.
    let slow = parallel.run(|x: u32| async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        x * 3
    })?;
    let started = Instant::now();
    let calls = (0..1000u32).map(|i| {
        let slow = slow.clone();
        async move { (i, slow.call(i).await) }
    });
    let results = futures_util::future::join_all(calls).await;
    for (i, result) in results {
        check(result? == i * 3, format!("call {i}"))?;
    }
    let elapsed = started.elapsed();
    check(
        elapsed < Duration::from_secs(3),
        format!("1000 concurrent 10 ms calls took {elapsed:?}"),
    )
}

async fn run_call_panic_reports_message_and_location_and_worker_survives(
    parallel: Parallel,
) -> Result<(), Failed> {
    let picky = parallel.run(|x: u32| async move {
        if x == 13 {
            panic!("unlucky number {x}");
        }
        x
    })?;
    match picky.call(13).await {
        Err(Error::Panicked { report, .. }) => {
            check(
                report.message == "unlucky number 13",
                format!("message {:?}", report.message),
            )?;
            let location = report.location.unwrap_or_default();
            check(
                location.contains("tests/tokio.rs"),
                format!("location {location:?}"),
            )?;
        }
        other => return Err(format!("expected a panic error, got {other:?}").into()),
    }
    check(
        picky.call(7).await? == 7,
        "the worker still answers after a panicking call",
    )
}

async fn spawn_panic_is_reported(parallel: Parallel) -> Result<(), Failed> {
    let result = parallel
        .spawn(
            |_: ()| async move { panic!("spawned task fails") as () },
            (),
        )
        .await;
    let message = match &result {
        Err(error @ Error::Panicked { report, .. }) if report.message == "spawned task fails" => {
            error.to_string()
        }
        other => return Err(format!("expected a panic error, got {other:?}").into()),
    };
    check(
        message.contains("panicked at") && message.contains("spawned task fails"),
        message,
    )
}

async fn worker_abort_reports_sigabrt_and_the_call(parallel: Parallel) -> Result<(), Failed> {
    let fragile = parallel.run(|x: u32| async move {
        if x == 2 {
            // Not in the repo: an abort may write a core file.
            let _ = std::env::set_current_dir(std::env::temp_dir());
            std::process::abort();
        }
        x
    })?;
    check(fragile.call(1).await? == 1, "first call")?;
    match fragile.call(2).await {
        Err(error @ Error::WorkerDied { call: Some(2), .. }) => {
            check(error.signal() == Some(libc::SIGABRT), format!("{error}"))?;
            check(
                error.to_string().contains("signal 6") && error.to_string().contains("call 2"),
                error.to_string(),
            )
        }
        other => Err(format!("expected WorkerDied for call 2, got {other:?}").into()),
    }
}

async fn worker_sigkill_mid_call_reports_signal_and_call(parallel: Parallel) -> Result<(), Failed> {
    let sleeper = parallel.run(|seconds: u64| async move {
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        seconds
    })?;
    check(sleeper.call(0).await? == 0, "warm-up call")?;
    let pid = sleeper.pid().ok_or("pid known after a call")?;
    let call = {
        let sleeper = sleeper.clone();
        tokio::spawn(async move { sleeper.call(60).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let started = Instant::now();
    match call.await? {
        Err(error @ Error::WorkerDied { call: Some(2), .. }) => {
            check(error.signal() == Some(libc::SIGKILL), error.to_string())?;
            check(
                started.elapsed() < Duration::from_secs(1),
                "the error came promptly",
            )
        }
        other => Err(format!("expected WorkerDied for call 2, got {other:?}").into()),
    }
}

async fn worker_dying_before_first_reply_errors_promptly(parallel: Parallel) -> Result<(), Failed> {
    let started = Instant::now();
    let result = parallel
        .spawn(|_: ()| async move { std::process::exit(3) as () }, ())
        .await;
    match result {
        Err(Error::WorkerDied {
            status: Some(parallel_tokio::ExitStatus::Exited(3)),
            ..
        }) => {}
        other => return Err(format!("expected WorkerDied with exit code 3, got {other:?}").into()),
    }
    check(
        started.elapsed() < Duration::from_secs(1),
        format!("took {:?}", started.elapsed()),
    )
}

async fn spawn_abort_kills_the_worker(parallel: Parallel) -> Result<(), Failed> {
    let handle = parallel.spawn(
        |_: ()| async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
        },
        (),
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    handle.abort();
    match tokio::time::timeout(Duration::from_secs(2), handle).await? {
        Err(error @ Error::WorkerDied { .. }) => {
            check(error.signal() == Some(libc::SIGKILL), error.to_string())?
        }
        other => return Err(format!("expected WorkerDied, got {other:?}").into()),
    }
    // Aborted at once, before the zygote even reported the pid.
    let handle = parallel.spawn(
        |_: ()| async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
        },
        (),
    );
    handle.abort();
    match tokio::time::timeout(Duration::from_secs(2), handle).await? {
        Err(error @ Error::WorkerDied { .. }) => {
            check(error.signal() == Some(libc::SIGKILL), error.to_string())
        }
        other => Err(format!("expected WorkerDied after an immediate abort, got {other:?}").into()),
    }
}

fn wait_gone(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| !stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'))
            .unwrap_or(false);
        if !alive {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

async fn dropped_call_future_kills_its_worker(parallel: Parallel) -> Result<(), Failed> {
    let stuck = parallel.run(|_: ()| async move { std::thread::sleep(Duration::from_secs(60)) })?;
    let call = stuck.call(());
    // Lose a race against a short sleep: the call future is dropped.
    tokio::select! {
        _ = call => return Err("the stuck call finished".into()),
        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
    }
    let pid = stuck.pid().ok_or("pid known")?;
    check(
        wait_gone(pid, Duration::from_secs(2)),
        format!("worker {pid} survived its cancelled call"),
    )?;
    match stuck.call(()).await {
        Err(error @ Error::WorkerDied { .. }) => {
            check(error.signal() == Some(libc::SIGKILL), error.to_string())
        }
        other => Err(format!("later calls should report the death, got {other:?}").into()),
    }
}

async fn dropping_the_last_run_handle_ends_the_worker(parallel: Parallel) -> Result<(), Failed> {
    let echo = parallel.run(|x: u8| async move { x })?;
    echo.call(1).await?;
    let pid = echo.pid().ok_or("pid known")?;
    drop(echo);
    check(
        wait_gone(pid, Duration::from_secs(2)),
        "worker exits when its last handle is dropped",
    )
}

async fn process_streams_both_ways_with_half_close(parallel: Parallel) -> Result<(), Failed> {
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

async fn process_worker_panic_ends_stream_with_error(parallel: Parallel) -> Result<(), Failed> {
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

fn written_bytes(pid: i32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines()
        .find_map(|line| line.strip_prefix("wchar: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

async fn slow_consumer_keeps_memory_bounded(parallel: Parallel) -> Result<(), Failed> {
    // The worker produces 64 KiB messages as fast as it can, forever.
    let process = parallel.process(
        |_input: MessageStream<()>, output: MessageSender<Vec<u8>>| async move {
            loop {
                if output.send(vec![7u8; 64 * 1024]).await.is_err() {
                    return;
                }
            }
        },
    )?;
    let mut stream = process.stream;
    check(stream.next().await.is_some(), "first message")?;
    let pid = process.handle.pid().ok_or("pid known")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = written_bytes(pid);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = written_bytes(pid);
    // Unbounded, the worker would have written gigabytes by now; bounded, it
    // is parked once the queues (16 messages each side) and socket buffers fill.
    check(
        second == first,
        format!("worker kept writing while nobody read: {first} -> {second} bytes"),
    )?;
    check(
        second < 32 << 20,
        format!("worker wrote {second} bytes ahead of a stalled reader"),
    )?;
    // And reading resumes the flow.
    for _ in 0..100 {
        check(
            matches!(stream.next().await, Some(Ok(ref m)) if m.len() == 64 * 1024),
            "message intact",
        )?;
    }
    process.handle.kill();
    Ok(())
}

async fn fd_passed_to_a_worker_is_usable_there(parallel: Parallel) -> Result<(), Failed> {
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

async fn fd_passed_back_from_a_worker_is_usable_here(parallel: Parallel) -> Result<(), Failed> {
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

fn tempfile() -> std::io::Result<std::fs::File> {
    let path = std::env::temp_dir().join(format!(
        "parallel-tokio-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A codec that XORs postcard bytes: proves both sides use the plugged codec.
struct Scrambled;
impl Codec for Scrambled {
    fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, String> {
        let mut bytes = postcard::to_stdvec(value).map_err(|e| e.to_string())?;
        bytes.iter_mut().for_each(|b| *b ^= 0x5A);
        bytes.push(0xEE);
        Ok(bytes)
    }
    fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        let (marker, body) = bytes.split_last().ok_or("empty")?;
        if *marker != 0xEE {
            return Err("not scrambled".into());
        }
        let plain: Vec<u8> = body.iter().map(|b| b ^ 0x5A).collect();
        postcard::from_bytes(&plain).map_err(|e| e.to_string())
    }
}

async fn custom_codec_is_used_both_ways(parallel: Parallel) -> Result<(), Failed> {
    let scrambled = parallel.with_codec::<Scrambled>();
    let value = scrambled
        .spawn(|s: String| async move { s.len() }, "seven!!".to_string())
        .await?;
    check(value == 7, format!("{value}"))?;
    let run = scrambled.run(|x: i64| async move { -x })?;
    check(run.call(5).await? == -5, "run with custom codec")
}

async fn multi_thread_worker_runtime_works(parallel: Parallel) -> Result<(), Failed> {
    let threaded = parallel
        .clone()
        .worker_runtime(WorkerRuntime::MultiThread { threads: 2 });
    let threads = threaded
        .spawn(
            |_: ()| async move { std::fs::read_dir("/proc/self/task").unwrap().count() },
            (),
        )
        .await?;
    check(threads >= 3, format!("worker had {threads} threads"))
}

async fn timeout_kills_stuck_worker_and_pool_keeps_serving(
    parallel: Parallel,
) -> Result<(), Failed> {
    let config = PoolConfig {
        size: 2,
        call_timeout: Some(Duration::from_millis(300)),
        ..PoolConfig::default()
    };
    let pool = Pool::new(
        &parallel,
        |millis: u64| async move {
            // Blocks the worker's thread: only a kill ends it.
            std::thread::sleep(Duration::from_millis(millis));
            millis
        },
        config,
    )?;
    let started = Instant::now();
    match pool.call(60_000).await {
        Err(Error::Timeout { after, .. }) => {
            check(after == Duration::from_millis(300), format!("{after:?}"))?
        }
        other => return Err(format!("expected a timeout, got {other:?}").into()),
    }
    check(
        started.elapsed() < Duration::from_secs(2),
        "timeout was prompt",
    )?;
    for i in 0..20 {
        check(pool.call(i).await? == i, "pool serves after a timeout")?;
    }
    Ok(())
}

async fn pool_of_4_over_1000_inputs_with_one_poisoned(parallel: Parallel) -> Result<(), Failed> {
    let pool = Pool::new(
        &parallel,
        |x: u32| async move {
            if x == 500 {
                let _ = std::env::set_current_dir(std::env::temp_dir());
                std::process::abort();
            }
            x * 2
        },
        PoolConfig {
            size: 4,
            ..PoolConfig::default()
        },
    )?;
    let started = Instant::now();
    let results: Vec<Result<u32, Error>> = pool
        .map(futures_util::stream::iter(0..1000u32))
        .collect()
        .await;
    check(results.len() == 1000, "one result per input")?;
    for (i, result) in results.iter().enumerate() {
        match (i, result) {
            (500, Err(error @ Error::WorkerDied { .. })) => {
                check(error.signal() == Some(libc::SIGABRT), error.to_string())?
            }
            (500, other) => return Err(format!("poisoned input gave {other:?}").into()),
            (i, Ok(value)) => check(*value == i as u32 * 2, format!("input {i} gave {value}"))?,
            (i, Err(error)) => return Err(format!("input {i} failed: {error}").into()),
        }
    }
    eprintln!("    pool of 4: 1000 inputs in {:?}", started.elapsed());
    check(pool.idle_pids().len() == 4, "the pool is back to 4 workers")
}

async fn pool_recycles_workers_after_max_calls(parallel: Parallel) -> Result<(), Failed> {
    let pool = Pool::new(
        &parallel,
        |_: ()| async move { std::process::id() },
        PoolConfig {
            size: 1,
            max_calls_per_worker: Some(3),
            ..PoolConfig::default()
        },
    )?;
    let mut pids = Vec::new();
    for _ in 0..9 {
        pids.push(pool.call(()).await?);
    }
    let distinct: std::collections::BTreeSet<_> = pids.iter().collect();
    check(
        distinct.len() == 3,
        format!(
            "9 calls at 3 per worker used {} workers: {pids:?}",
            distinct.len()
        ),
    )
}

async fn pool_map_unordered_reports_indices(parallel: Parallel) -> Result<(), Failed> {
    let pool = Pool::new(
        &parallel,
        |x: u64| async move {
            tokio::time::sleep(Duration::from_millis(10 * (5 - x % 5))).await;
            x
        },
        PoolConfig {
            size: 3,
            ..PoolConfig::default()
        },
    )?;
    let mut seen: Vec<(usize, u64)> = Vec::new();
    let mut stream = std::pin::pin!(pool.map_unordered(futures_util::stream::iter(0..20u64)));
    while let Some((index, result)) = stream.next().await {
        seen.push((index, result?));
    }
    seen.sort();
    check(
        seen == (0..20).map(|i| (i as usize, i)).collect::<Vec<_>>(),
        format!("{seen:?}"),
    )
}

static TABLE: std::sync::OnceLock<Vec<u64>> = std::sync::OnceLock::new();

async fn snapshot_workers_see_init_state(parallel: Parallel) -> Result<(), Failed> {
    let warm = parallel.snapshot(
        |args: Vec<u8>| {
            let n = args[0] as u64;
            TABLE.set((0..n * 1000).collect()).unwrap();
        },
        vec![7],
    )?;
    let len = warm
        .spawn(
            |_: ()| async move { TABLE.get().map_or(0, |t| t.len()) },
            (),
        )
        .await?;
    check(len == 7000, format!("snapshot worker saw {len} entries"))?;
    let cold = parallel
        .spawn(
            |_: ()| async move { TABLE.get().map_or(0, |t| t.len()) },
            (),
        )
        .await?;
    check(cold == 0, "main zygote workers do not see it")
}

fn zygote_gone_helper() {
    let parallel = parallel_tokio::init().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let add = parallel.run(|x: u32| async move { x + 1 }).unwrap();
        assert_eq!(add.call(1).await.unwrap(), 2);
        let worker = add.pid().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(parallel.zygote().pid()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let started = Instant::now();
        // The run worker dies with its zygote (the kernel delivers its
        // parent-death signal asynchronously, so wait for that first).
        if !wait_gone(worker, Duration::from_secs(1)) {
            println!("worker {worker} outlived its zygote by 1 s");
            return;
        }
        // Its calls report the death.
        let call = tokio::time::timeout(Duration::from_secs(3), add.call(2)).await;
        if !matches!(call, Ok(Err(Error::WorkerDied { .. }))) {
            println!("call on a worker of a dead zygote gave {call:?}");
            return;
        }
        // A new spawn fails with the zygote error, without hanging.
        let result = tokio::time::timeout(
            Duration::from_secs(3),
            parallel.spawn(|x: u32| async move { x }, 1),
        )
        .await;
        match result {
            Ok(Err(Error::Zygote(parallel_zygote::Error::ZygoteGone { .. }))) => {
                println!("ok in {:?}", started.elapsed())
            }
            other => println!("spawn after zygote death gave {other:?}"),
        }
    });
}
