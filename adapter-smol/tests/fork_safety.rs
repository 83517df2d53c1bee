//! The fork hazard of async-io: a process forked after async-io's reactor
//! started inherits the reactor (its lock possibly held by a thread that is
//! not there, the parent's epoll and notify descriptors) and hangs or
//! misbehaves as soon as it uses async-io itself.
//!
//! `parallel_smol::init()` forks the zygote before anything async, the
//! zygote never runs async code, and workers start their own reactor after
//! their fork. Here the parent uses async-io heavily first (timers, sockets,
//! smol's global executor), then starts workers that use async-io too, from
//! the main zygote and from a derived snapshot: all must finish within a
//! bound (a hang fails the test instead of hanging it), and the zygotes must
//! still be single-threaded.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use async_io::{Async, Timer};
use libtest_mimic::{Arguments, Failed, Trial};
use parallel_smol::Parallel;
use smol::io::{AsyncReadExt, AsyncWriteExt};

/// Far above what a run takes (well under a second): only a hang reaches it.
const BOUND: Duration = Duration::from_secs(60);

fn main() {
    // First: the zygote, before any thread or reactor exists.
    let parallel = parallel_smol::init().expect("start the zygote before any thread");
    // init() itself starts nothing of smol or async-io.
    let threads_after_init = thread_names().expect("list this process's threads");
    // Then the parent uses async-io before any test runs.
    smol::block_on(exercise_async_io(1)).expect("async-io works in the parent");
    let args = Arguments::from_args();
    let t = |name: &str, test: fn(Parallel) -> Result<(), Failed>| {
        let parallel = parallel.clone();
        Trial::test(name, move || bounded(move || test(parallel)))
    };
    let tests = vec![
        Trial::test("init_starts_no_reactor_and_no_executor", move || {
            check(
                threads_after_init
                    .iter()
                    .all(|name| name != "async-io" && !name.starts_with("smol")),
                format!("threads right after init: {threads_after_init:?}"),
            )
        }),
        t(
            "zygote_is_single_threaded_after_the_parent_used_async_io",
            zygote_is_single_threaded,
        ),
        t(
            "workers_use_async_io_after_the_parent_did",
            workers_use_async_io,
        ),
        t(
            "snapshot_workers_use_async_io_after_the_parent_did",
            snapshot_workers_use_async_io,
        ),
        t(
            "a_spawn_that_waits_for_nothing_starts_no_reactor_in_its_worker",
            spawn_starts_no_reactor,
        ),
        t(
            "a_spawn_whose_answer_outgrows_the_socket_waits_through_the_reactor",
            large_answer_waits_through_the_reactor,
        ),
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

/// Runs `test` on a thread of its own and fails if it has not finished
/// within [`BOUND`] (the thread is left behind; the process exits anyway).
fn bounded(test: impl FnOnce() -> Result<(), Failed> + Send + 'static) -> Result<(), Failed> {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(test());
    });
    match result.recv_timeout(BOUND) {
        Ok(result) => result,
        Err(_) => Err(format!("did not finish within {BOUND:?}: hung").into()),
    }
}

/// Timers, an `Async` socket pair round trip, and a task on smol's global
/// executor: everything that starts async-io's reactor and its threads.
/// Returns the process id and `tag`, back through the socket.
async fn exercise_async_io(tag: u64) -> std::io::Result<(u32, u64)> {
    let timers = (1..=5u64).map(|ms| Timer::after(Duration::from_millis(ms)));
    for timer in timers {
        timer.await;
    }
    let (a, b) = Async::<UnixStream>::pair()?;
    let echo = smol::spawn(async move {
        let mut buffer = [0u8; 8];
        (&b).read_exact(&mut buffer).await?;
        Timer::after(Duration::from_millis(1)).await;
        (&b).write_all(&buffer).await?;
        std::io::Result::Ok(())
    });
    (&a).write_all(&tag.to_le_bytes()).await?;
    let mut buffer = [0u8; 8];
    (&a).read_exact(&mut buffer).await?;
    echo.await?;
    Ok((std::process::id(), u64::from_le_bytes(buffer)))
}

/// What a worker runs: the same, reported as a string on failure.
async fn in_worker(tag: u64) -> Result<(u32, u64), String> {
    exercise_async_io(tag).await.map_err(|e| e.to_string())
}

/// The `Threads:` line of `/proc/<pid>/status`.
fn threads(pid: u32) -> Result<usize, Failed> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .ok_or("no Threads: line")?;
    Ok(line.trim().parse()?)
}

/// The names of this process's threads (async-io's reactor thread is
/// "async-io", smol's executor threads "smol-<n>").
fn thread_names() -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")? {
        let comm = std::fs::read_to_string(task?.path().join("comm"))?;
        names.push(comm.trim().to_string());
    }
    Ok(names)
}

/// Runs [`in_worker`] in `count` spawned workers and `calls` calls of one
/// run worker, all at once, and checks every answer came from a worker.
async fn use_workers(parallel: &Parallel, count: u64, calls: u64) -> Result<(), Failed> {
    let spawns: Vec<_> = (0..count)
        .map(|tag| parallel.spawn(in_worker, tag))
        .collect();
    let run = parallel.run(in_worker)?;
    let runs: Vec<_> = (0..calls).map(|tag| run.call(100 + tag)).collect();
    let spawned = futures_util::future::join_all(spawns).await;
    let called = futures_util::future::join_all(runs).await;
    let expected = (0..count).chain(100..100 + calls);
    for (result, tag) in spawned.into_iter().chain(called).zip(expected) {
        let (pid, echoed) = result??;
        check(echoed == tag, format!("worker echoed {echoed} for {tag}"))?;
        check(pid != std::process::id(), "the answer came from a worker")?;
    }
    Ok(())
}

fn zygote_is_single_threaded(parallel: Parallel) -> Result<(), Failed> {
    smol::block_on(async {
        let (pid, tag) = exercise_async_io(7).await?;
        check(
            (pid, tag) == (std::process::id(), 7),
            "round trip in the parent",
        )?;
        check(
            thread_names()?.iter().any(|name| name == "async-io"),
            "the parent runs async-io's reactor thread (else this test proves nothing)",
        )?;
        let zygote = parallel.zygote().pid() as u32;
        check(threads(zygote)? == 1, "the zygote has exactly 1 thread")?;
        // Still so once it has forked workers that use async-io.
        use_workers(&parallel, 2, 2).await?;
        let count = threads(zygote)?;
        check(count == 1, format!("the zygote has {count} threads"))
    })
}

fn workers_use_async_io(parallel: Parallel) -> Result<(), Failed> {
    smol::block_on(async {
        exercise_async_io(1).await?;
        use_workers(&parallel, 8, 20).await
    })
}

/// A cold spawn's worker answers without waiting (Start and End were read
/// before its runtime existed; a small answer fits the socket's buffer), so
/// its channel never joins async-io's reactor, whose first use starts a
/// thread: the function runs in a single-threaded worker. (When the channel
/// was registered before the task ran, the reactor's thread was there.)
fn spawn_starts_no_reactor(parallel: Parallel) -> Result<(), Failed> {
    smol::block_on(async {
        let (pid, count, names) = parallel
            .spawn(
                |_: ()| async move {
                    let pid = std::process::id();
                    let names = thread_names().map_err(|e| e.to_string());
                    (pid, threads(pid).map_err(|e| format!("{e:?}")), names)
                },
                (),
            )
            .await?;
        check(pid != std::process::id(), "the answer came from a worker")?;
        let (count, names) = (count?, names?);
        check(
            count == 1,
            format!("the worker had {count} threads ({names:?}) while its function ran"),
        )
    })
}

/// An answer larger than the socket's buffer: the worker's write stops at
/// `WouldBlock`, its channel joins the reactor then, and the rest goes out
/// as the parent reads.
fn large_answer_waits_through_the_reactor(parallel: Parallel) -> Result<(), Failed> {
    const LEN: usize = 16 << 20;
    smol::block_on(async {
        let answer = parallel
            .spawn(
                |len: usize| async move {
                    (0..len)
                        .map(|i| (b'a' + (i % 26) as u8) as char)
                        .collect::<String>()
                },
                LEN,
            )
            .await?;
        check(
            answer.len() == LEN,
            format!("answer of {} bytes", answer.len()),
        )?;
        let right = answer
            .bytes()
            .enumerate()
            .all(|(i, byte)| byte == b'a' + (i % 26) as u8);
        check(right, "the answer's bytes arrived in order")
    })
}

static TABLE: std::sync::OnceLock<Vec<u64>> = std::sync::OnceLock::new();

fn snapshot_workers_use_async_io(parallel: Parallel) -> Result<(), Failed> {
    smol::block_on(async {
        exercise_async_io(2).await?;
        // The snapshot's init runs in a zygote: no async-io there.
        let warm = parallel.snapshot(
            |args: Vec<u8>| {
                TABLE.set((0..args[0] as u64 * 1000).collect()).unwrap();
            },
            vec![3],
        )?;
        let snapshot = warm.zygote().pid() as u32;
        check(threads(snapshot)? == 1, "the snapshot has exactly 1 thread")?;
        use_workers(&warm, 4, 10).await?;
        let seen = warm
            .spawn(
                |tag: u64| async move {
                    let echoed = in_worker(tag).await.map(|(_, echoed)| echoed);
                    (echoed, TABLE.get().map_or(0, Vec::len))
                },
                42,
            )
            .await?;
        check(
            seen == (Ok(42), 3000),
            format!("snapshot worker gave {seen:?}"),
        )?;
        let count = threads(snapshot)?;
        check(count == 1, format!("the snapshot has {count} threads"))
    })
}
