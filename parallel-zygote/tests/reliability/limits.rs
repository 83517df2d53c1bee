//! Limits: a worker that runs past a CPU-time or address-space limit set
//! through `SpawnOptions` dies with an error that names the limit, and the
//! rest of the tree carries on.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use parallel_zygote::async_core::{Error, Parallel, Runtime};
use parallel_zygote::{Resource, SpawnOptions};

use super::{check, ms, report, within};

const MIB: u64 = 1 << 20;

/// The address-space limit of the memory trial: room for the worker's
/// binary, runtime threads and malloc arenas, not for the allocation below.
const ADDRESS_SPACE: u64 = 1024 * MIB;
/// What the memory trial's worker tries to allocate.
const TOO_MUCH: usize = 3 << 30;

/// How long a worker past its limit may take to be reported: a CPU-time
/// limit of 1 s needs a second of CPU, which a loaded machine hands out
/// slowly.
const DETECT_WITHIN: Duration = Duration::from_secs(90);

/// Burns CPU until the kernel stops it.
async fn spin(_: ()) -> u64 {
    let mut x: u64 = 1;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

/// Allocates (and touches) more than the address-space limit allows.
async fn allocate(bytes: usize) -> usize {
    let buffer = vec![1u8; bytes];
    std::hint::black_box(&buffer).len()
}

/// One trial: the spawn's error, how long it took, and checks on it.
async fn expect_limit<R: Runtime>(
    figures: &mut Vec<String>,
    trial: &str,
    result: impl std::future::Future<Output = Result<u64, Error>>,
    signal: i32,
    resource: Resource,
    certain: bool,
    words: &str,
) -> Result<(), Failed> {
    let started = Instant::now();
    let error = match within::<R, _>(DETECT_WITHIN, result).await {
        None => return Err(format!("{trial}: no answer within {DETECT_WITHIN:?}").into()),
        Some(Ok(value)) => return Err(format!("{trial}: returned {value} past its limit").into()),
        Some(Err(error)) => error,
    };
    let took = started.elapsed();
    let text = error.to_string();
    check(
        error.signal() == Some(signal),
        format!("{trial}: expected signal {signal}, got {error:?}"),
    )?;
    let limit = error
        .limit()
        .ok_or_else(|| format!("{trial}: the error names no limit: {text}"))?;
    check(
        limit.limit.resource == resource && limit.certain == certain,
        format!("{trial}: wrong limit {limit:?} in {text}"),
    )?;
    check(
        text.contains(words),
        format!("{trial}: {text:?} does not say {words:?}"),
    )?;
    figures.push(format!("{trial}: \"{text}\" after {}", ms(took)));
    Ok(())
}

/// *limits*: CPU time past the soft limit (SIGXCPU), past a hard limit
/// equal to the soft one (SIGKILL), and an allocation past the
/// address-space limit (abort); a worker under the same limits that stays
/// within them answers, and so does the parent's next spawn.
pub async fn limits<R: Runtime>(parallel: Parallel<R>) -> Result<(), Failed> {
    let mut figures = Vec::new();

    let cpu = parallel
        .clone()
        .worker_options(SpawnOptions::default().limit(Resource::CpuTime, 1, 3));
    expect_limit::<R>(
        &mut figures,
        "cpu soft 1 s",
        cpu.spawn(spin, ()),
        libc::SIGXCPU,
        Resource::CpuTime,
        true,
        "exceeded its CPU-time limit (RLIMIT_CPU, soft 1 s, hard 3 s)",
    )
    .await?;

    let cpu_hard = parallel
        .clone()
        .worker_options(SpawnOptions::default().limit(Resource::CpuTime, 1, 1));
    expect_limit::<R>(
        &mut figures,
        "cpu hard 1 s",
        cpu_hard.spawn(spin, ()),
        libc::SIGKILL,
        Resource::CpuTime,
        false,
        "probably by its CPU-time limit (RLIMIT_CPU, soft 1 s, hard 1 s)",
    )
    .await?;

    let memory = parallel
        .clone()
        .worker_options(SpawnOptions::default().limit(
            Resource::AddressSpace,
            ADDRESS_SPACE,
            ADDRESS_SPACE,
        ));
    let within_limit = memory.spawn(allocate, 16 << 20).await?;
    check(
        within_limit == 16 << 20,
        format!("a worker within its address-space limit returned {within_limit}"),
    )?;
    expect_limit::<R>(
        &mut figures,
        "address space 1 GiB",
        async { memory.spawn(allocate, TOO_MUCH).await.map(|n| n as u64) },
        libc::SIGABRT,
        Resource::AddressSpace,
        false,
        "probably by its address-space limit (RLIMIT_AS, soft 1024 MiB, hard 1024 MiB)",
    )
    .await?;

    // A worker killed on request is not blamed on its limits, though it
    // dies by the signal its CPU-time hard limit would send.
    let sleeper = cpu.spawn(
        |_: ()| async move {
            std::thread::sleep(Duration::from_secs(600));
            0u64
        },
        (),
    );
    let started = Instant::now();
    while sleeper.pid().is_none() && started.elapsed() < DETECT_WITHIN {
        R::sleep(Duration::from_millis(5)).await;
    }
    sleeper.abort();
    let error = match within::<R, _>(DETECT_WITHIN, sleeper).await {
        Some(Err(error)) => error,
        other => return Err(format!("a killed worker: {other:?}").into()),
    };
    check(
        error.signal() == Some(libc::SIGKILL) && error.limit().is_none(),
        format!("a worker killed on request: {error}"),
    )?;
    // And a call made after a kill fails without reaching the worker.
    let killed = cpu.run(|x: u64| async move { x })?;
    killed.kill();
    let error = killed
        .call(1)
        .await
        .err()
        .ok_or("a killed worker answered")?;
    check(
        matches!(error, Error::WorkerDied { limit: None, .. }),
        format!("a call after a kill: {error}"),
    )?;

    let next = parallel.spawn(|x: u64| async move { x + 1 }, 41).await?;
    check(next == 42, format!("the next spawn returned {next}"))?;
    report::<R>("limits", &figures);
    Ok(())
}
