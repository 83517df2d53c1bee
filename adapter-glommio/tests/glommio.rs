//! What is particular to glommio: the peek/timer bridge under bulk data and
//! descriptors, the worker's executor and its options, the locked-memory
//! check, a thread without an executor, workers of another adapter. The
//! behaviour every adapter shares is in the conformance suite. The zygote
//! starts in `main` before libtest-mimic starts its threads.

use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use glommio::{LocalExecutorBuilder, Placement};
use libtest_mimic::{Arguments, Failed, Trial};
use nix::sys::resource::{getrlimit, Resource as OsResource};
use parallel_glommio::{
    Error, Fd, GlommioWorker, MessageSender, MessageStream, Parallel, Resource, SpawnOptions,
};

type TestFuture = std::pin::Pin<Box<dyn Future<Output = Result<(), Failed>>>>;

fn main() {
    let parallel = parallel_glommio::init().expect("start the zygote before any thread");
    let args = Arguments::from_args();
    let t = |name: &str, test: fn(Parallel) -> TestFuture| {
        let parallel = parallel.clone();
        Trial::test(name, move || block_on(test(parallel)))
    };
    macro_rules! trial {
        ($name:ident) => {
            t(stringify!($name), |p| Box::pin($name(p)))
        };
    }
    let tests = vec![
        trial!(spawn_run_and_process_round_trips),
        trial!(thousand_sequential_calls),
        trial!(eight_mib_each_way_through_process),
        trial!(reads_left_pending_across_many_wake_ups),
        trial!(descriptors_both_ways),
        trial!(workers_run_glommio_timers_and_spawn_local),
        trial!(worker_options_are_used),
        trial!(too_little_locked_memory_is_a_clear_error),
        trial!(a_low_soft_locked_memory_limit_is_raised),
        trial!(tokio_workers_from_a_glommio_parent),
        {
            let parallel = parallel.clone();
            Trial::test("outside_an_executor_is_an_error_not_a_panic", move || {
                // Not in `block_on`: the point is a thread without an executor.
                // Quietly: glommio's probe panics there (caught), as documented.
                let hook = std::panic::take_hook();
                std::panic::set_hook(Box::new(|_| {}));
                let result = parallel.run(|x: u8| async move { x });
                std::panic::set_hook(hook);
                match result {
                    Err(Error::NoRuntime { runtime: "glommio" }) => Ok(()),
                    other => Err(format!("expected NoRuntime, got {other:?}").into()),
                }
            })
        },
    ];
    libtest_mimic::run(&args, tests).exit();
}

/// Runs a test on a small executor of its own, on the trial's thread.
fn block_on(test: TestFuture) -> Result<(), Failed> {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(64 << 10)
        .ring_depth(8)
        .make()
        .map_err(|error| format!("building the test's executor: {error}"))?
        .run(test)
}

fn check(condition: bool, message: impl Into<String>) -> Result<(), Failed> {
    if condition {
        Ok(())
    } else {
        Err(message.into().into())
    }
}

fn memlock_limit(soft: u64, hard: u64) -> SpawnOptions {
    SpawnOptions::default().limit(Resource::LockedMemory, soft, hard)
}

async fn spawn_run_and_process_round_trips(parallel: Parallel) -> Result<(), Failed> {
    let doubled = parallel.spawn(|x: u64| async move { x * 2 }, 21).await?;
    check(doubled == 42, format!("spawn gave {doubled}"))?;
    let square = parallel.run(|x: u64| async move { x * x })?;
    for x in 0..100u64 {
        let value = square.call(x).await?;
        check(value == x * x, format!("call {x} gave {value}"))?;
    }
    // No time limit in practice: glommio's timer must not overflow.
    let value = square.call_timeout(3, Duration::MAX).await?;
    check(value == 9, format!("call_timeout gave {value}"))?;
    let mut echo = parallel.process(
        |mut input: MessageStream<String>, output: MessageSender<usize>| async move {
            while let Some(Ok(line)) = input.recv().await {
                output.send(line.len()).await.unwrap();
            }
        },
    )?;
    for word in ["a", "bb", "ccc"] {
        echo.sender.send(word.to_string()).await?;
        let len = echo.stream.recv().await.transpose()?;
        check(len == Some(word.len()), format!("{word}: {len:?}"))?;
    }
    drop(echo.sender);
    echo.handle.wait().await?;
    Ok(())
}

async fn thousand_sequential_calls(parallel: Parallel) -> Result<(), Failed> {
    let add_one = parallel.run(|x: u32| async move { x + 1 })?;
    check(add_one.call(0).await? == 1, "first call")?;
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

/// Far more than a socket buffer each way: both sides' writes hit `EAGAIN`
/// and wait on the timer bridge, both sides' reads on the peek.
async fn eight_mib_each_way_through_process(parallel: Parallel) -> Result<(), Failed> {
    const LEN: usize = 8 << 20;
    let mut echo = parallel.process(
        |mut input: MessageStream<Vec<u8>>, output: MessageSender<Vec<u8>>| async move {
            while let Some(Ok(mut data)) = input.recv().await {
                data.iter_mut()
                    .for_each(|byte| *byte = byte.wrapping_add(1));
                output.send(data).await.unwrap();
            }
        },
    )?;
    let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let started = Instant::now();
    let (sent, back) = futures_util::join!(echo.sender.send(data), echo.stream.next());
    sent?;
    let back = back.ok_or("no answer")??;
    eprintln!("    8 MiB each way: {:?}", started.elapsed());
    check(back.len() == LEN, format!("{} bytes came back", back.len()))?;
    let wrong = (0..LEN).find(|&i| back[i] != ((i % 251) as u8).wrapping_add(1));
    check(wrong.is_none(), format!("byte {wrong:?} differs"))
}

/// glommio keeps a clone of the task's waker for every poll of a pending
/// read and counts a task's wakers in an `i16`: a read left pending while
/// its task was woken 32,768 times for other reasons (each message sent)
/// overflowed the count, and glommio aborted the process (found by the
/// reliability suite's 1 GiB back-pressure run). Here both sides send
/// 100,000 messages while their reads wait: the worker's while the parent
/// sends, the parent's while the worker sends.
async fn reads_left_pending_across_many_wake_ups(parallel: Parallel) -> Result<(), Failed> {
    const MESSAGES: u32 = 100_000;
    let mut worker = parallel.process(
        |mut input: MessageStream<u32>, output: MessageSender<u32>| async move {
            let mut received = 0;
            while let Some(Ok(_)) = input.recv().await {
                received += 1;
                if received == MESSAGES {
                    break;
                }
            }
            // Now the worker's reading waits while it sends.
            for i in 0..MESSAGES {
                output.send(i).await.unwrap();
            }
        },
    )?;
    for i in 0..MESSAGES {
        worker.sender.send(i).await?;
    }
    let mut received = 0;
    while let Some(message) = worker.stream.next().await {
        check(
            message? == received,
            format!("message {received} out of order"),
        )?;
        received += 1;
    }
    check(
        received == MESSAGES,
        format!("{received} of {MESSAGES} messages came back"),
    )?;
    worker.handle.wait().await?;
    Ok(())
}

async fn descriptors_both_ways(parallel: Parallel) -> Result<(), Failed> {
    // The worker writes into the socket we pass and passes one back.
    let mut process = parallel.process(
        |mut input: MessageStream<Fd>, output: MessageSender<Fd>| async move {
            while let Some(Ok(fd)) = input.recv().await {
                let mut theirs = UnixStream::from(fd.into_inner());
                theirs.write_all(b"from the worker").unwrap();
                let (mut ours, back) = UnixStream::pair().unwrap();
                ours.write_all(b"made in the worker").unwrap();
                output.send(Fd(back.into())).await.unwrap();
            }
        },
    )?;
    for round in 0..3 {
        let (mut ours, theirs) = UnixStream::pair()?;
        process.sender.send(Fd(theirs.into())).await?;
        let fd = process.stream.next().await.ok_or("no fd")??;
        let mut text = [0u8; 15];
        ours.read_exact(&mut text)?;
        check(
            &text == b"from the worker",
            format!("round {round}: {text:?}"),
        )?;
        let mut back = UnixStream::from(fd.into_inner());
        let mut text = [0u8; 18];
        back.read_exact(&mut text)?;
        check(
            &text == b"made in the worker",
            format!("round {round}: {text:?}"),
        )?;
    }
    Ok(())
}

async fn workers_run_glommio_timers_and_spawn_local(parallel: Parallel) -> Result<(), Failed> {
    let sum = parallel
        .spawn(
            |n: u64| async move {
                let tasks: Vec<_> = (1..=n)
                    .map(|i| {
                        glommio::spawn_local(async move {
                            glommio::timer::sleep(Duration::from_millis(i)).await;
                            i
                        })
                    })
                    .collect();
                let mut sum = 0;
                for task in tasks {
                    sum += task.await;
                }
                (sum, glommio::executor().id() > 0)
            },
            10,
        )
        .await?;
    check(sum == (55, true), format!("worker gave {sum:?}"))
}

async fn worker_options_are_used(parallel: Parallel) -> Result<(), Failed> {
    // Bigger than the default, and a ring depth glommio itself would panic on.
    for options in [
        GlommioWorker {
            io_memory: 1 << 20,
            ring_depth: 32,
        },
        GlommioWorker {
            io_memory: 0,
            ring_depth: 1,
        },
    ] {
        let custom = parallel.clone().worker_runtime(options);
        let value = custom.spawn(|x: u8| async move { x + 1 }, 1).await?;
        check(value == 2, format!("{options:?}: {value}"))?;
    }
    Ok(())
}

async fn too_little_locked_memory_is_a_clear_error(parallel: Parallel) -> Result<(), Failed> {
    let limited = parallel.worker_options(memlock_limit(256 << 10, 256 << 10));
    match limited.spawn(|x: u8| async move { x }, 1).await {
        Err(error) => {
            let message = error.to_string();
            check(
                message.contains("glommio needs at least 512 KiB of locked memory")
                    && message.contains("the worker has 256 KiB")
                    && message.contains("ulimit -l")
                    && message.contains("Resource::LockedMemory"),
                message,
            )
        }
        Ok(value) => Err(format!("the worker ran and gave {value}").into()),
    }
}

async fn a_low_soft_locked_memory_limit_is_raised(parallel: Parallel) -> Result<(), Failed> {
    let (_, hard) = getrlimit(OsResource::RLIMIT_MEMLOCK)?;
    check(
        hard >= 1 << 20,
        format!("this test needs a hard RLIMIT_MEMLOCK of 1 MiB or more, not {hard}"),
    )?;
    let limited = parallel.worker_options(memlock_limit(64 << 10, hard));
    let soft = limited
        .spawn(
            |_: ()| async move { getrlimit(OsResource::RLIMIT_MEMLOCK).unwrap().0 },
            (),
        )
        .await?;
    check(
        soft == 1 << 20,
        format!("the worker's soft limit is {soft}"),
    )
}

async fn tokio_workers_from_a_glommio_parent(parallel: Parallel) -> Result<(), Failed> {
    let on_tokio = parallel.worker_runtime(parallel_tokio::WorkerRuntime::default());
    let add = on_tokio.run(|x: u64| async move {
        tokio::task::yield_now().await;
        x + tokio::runtime::Handle::current().metrics().num_workers() as u64
    })?;
    let value = add.call(41).await?;
    check(value == 42, format!("tokio worker gave {value}"))
}
