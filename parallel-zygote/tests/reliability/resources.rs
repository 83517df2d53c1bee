//! Resources: leaks over many spawns, many live workers at once, memory
//! under back-pressure. Each in a helper process, so that its descriptors,
//! children and memory are its own.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use futures_util::StreamExt;
use libtest_mimic::Failed;
use parallel_zygote::async_core::{MessageSender, MessageStream, Parallel, Runtime};

use super::{
    block_on_figures, check, live_descendants, ms, open_fds, report, run_helper, settle, size,
    status_kb, zombie_descendants, Harness,
};

pub const LEAKS: &str = "leaks";
pub const SCALE: &str = "scale";
pub const BACK_PRESSURE: &str = "back-pressure";
pub const BUSY_EXITS: &str = "busy-exits";

/// *leaks*: sequential spawns leave descriptors, processes and zombies
/// flat; spawns dropped unawaited give their memory back.
pub fn leaks<H: Harness>() -> Result<(), Failed> {
    let sequential = size(1000, 10_000);
    let dropped = size(500, 2000);
    let figures = run_helper(
        LEAKS,
        &format!("{sequential},{dropped}"),
        Duration::from_secs(if super::full() { 600 } else { 120 }),
    )?;
    report::<H::R>("leaks", &figures);
    Ok(())
}

pub fn leaks_helper<H: Harness>(arg: &str) -> Result<Vec<String>, Failed> {
    let (sequential, dropped) = arg.split_once(',').ok_or("arg: sequential,dropped")?;
    let (sequential, dropped) = (sequential.parse()?, dropped.parse()?);
    let parallel = H::init()?;
    block_on_figures::<H, _>(leaks_body::<H::R>(parallel, sequential, dropped))
}

async fn leaks_body<R: Runtime>(
    parallel: Parallel<R>,
    sequential: u64,
    dropped: usize,
) -> Result<Vec<String>, Failed> {
    let add = |x: u64| async move { x + 1 };
    for i in 0..20 {
        check(parallel.spawn(add, i).await? == i + 1, "warm-up")?;
    }
    // Only the zygote left.
    settle::<R>(Duration::from_secs(5), || live_descendants() == 1).await;
    let (fds_before, tree_before) = (open_fds(), live_descendants());
    let (mut fds_max, mut tree_max, mut zombies_max) = (fds_before, tree_before, 0);
    let started = Instant::now();
    for i in 0..sequential {
        check(parallel.spawn(add, i).await? == i + 1, format!("spawn {i}"))?;
        if i % 50 == 0 {
            fds_max = fds_max.max(open_fds());
            tree_max = tree_max.max(live_descendants());
            zombies_max = zombies_max.max(zombie_descendants());
        }
    }
    let took = started.elapsed();
    let settled = settle::<R>(Duration::from_secs(5), || {
        open_fds() <= fds_before && live_descendants() <= tree_before && zombie_descendants() == 0
    })
    .await;
    let (fds_after, tree_after, zombies_after) =
        (open_fds(), live_descendants(), zombie_descendants());
    let mut figures = vec![
        format!(
            "{sequential} sequential spawns in {} ({:.0}/s)",
            ms(took),
            sequential as f64 / took.as_secs_f64()
        ),
        format!("fds {fds_before} before, max {fds_max} during, {fds_after} after"),
        format!(
            "processes {tree_before} before, max {tree_max} during, {tree_after} after; zombies max {zombies_max} during, {zombies_after} after"
        ),
    ];
    check(
        settled,
        format!("not flat after 5 s: {}", figures[1..].join("; ")),
    )?;
    // Dropped without being awaited: each handle dropped at once kills its
    // worker; the memory held for them must come back.
    let rss_before = status_kb("VmRSS");
    let started = Instant::now();
    for i in 0..dropped {
        drop(parallel.spawn(
            |s: u64| async move {
                R::sleep(Duration::from_secs(s)).await;
                s
            },
            600,
        ));
        if i % 100 == 99 {
            // Let the drivers run a little, as a real program would.
            R::sleep(Duration::from_millis(1)).await;
        }
    }
    let rss_peak = status_kb("VmRSS");
    let calm = settle::<R>(Duration::from_secs(20), || {
        live_descendants() <= tree_before
    })
    .await;
    // Bounded settle: give allocator and drivers a moment, polled.
    let mut rss_after = status_kb("VmRSS");
    let deadline = Instant::now() + Duration::from_secs(5);
    while rss_after > 2 * rss_before && Instant::now() < deadline {
        R::sleep(Duration::from_millis(100)).await;
        rss_after = status_kb("VmRSS");
    }
    // The drivers close their sockets once the zygote reported each exit,
    // which can trail the processes' end: poll, bounded.
    let mut fds_dropped = open_fds();
    let deadline = Instant::now() + Duration::from_secs(10);
    while fds_dropped > fds_before && Instant::now() < deadline {
        R::sleep(Duration::from_millis(50)).await;
        fds_dropped = open_fds();
    }
    let settled_in = started.elapsed();
    figures.push(format!(
        "{dropped} dropped spawns: RSS {} kB before, {} kB right after, {} kB settled ({:.1}x) after {}; workers gone: {calm}; fds {fds_dropped}",
        rss_before,
        rss_peak,
        rss_after,
        rss_after as f64 / rss_before.max(1) as f64,
        ms(settled_in)
    ));
    check(
        calm,
        "the dropped spawns' workers were still alive 20 s later",
    )?;
    check(
        fds_dropped <= fds_before,
        format!("fds {fds_before} before the dropped spawns, {fds_dropped} after"),
    )?;
    // Each channel's read buffer starts small (4 KiB) and grows only for
    // bulk data: that brought this from 5-7x down to 1.4-1.5x.
    check(
        rss_after <= 2 * rss_before,
        format!(
            "RSS not back within 2x of its baseline ({rss_after} kB vs {rss_before} kB): {}",
            figures.join("; ")
        ),
    )?;
    Ok(figures)
}

/// *exits on a busy machine*: sequential spawns while every CPU is kept
/// busy by threads of the parent; a worker that has answered must exit as
/// any process does, so the finished workers alive at once stay few.
///
/// A worker once moved itself to `SCHED_IDLE` for its exit: beside busy
/// loops of ordinary priority such exits waited seconds for a CPU, and the
/// finished workers piled up (92-145 alive at once during 1000 sequential
/// spawns beside six busy loops).
pub fn exits_on_a_busy_machine<H: Harness>() -> Result<(), Failed> {
    let spawns = size(300, 3000);
    let figures = run_helper(BUSY_EXITS, &spawns.to_string(), Duration::from_secs(120))?;
    report::<H::R>("exits on a busy machine", &figures);
    Ok(())
}

pub fn exits_on_a_busy_machine_helper<H: Harness>(arg: &str) -> Result<Vec<String>, Failed> {
    let spawns: u64 = arg.parse()?;
    let parallel = H::init()?;
    // Two spinning threads per CPU (started after the zygote, which must
    // be forked while this process has one thread).
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinners: Vec<_> = (0..2 * cpus)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let outcome = block_on_figures::<H, _>(busy_exits_body::<H::R>(parallel, spawns, cpus));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for spinner in spinners {
        let _ = spinner.join();
    }
    outcome
}

async fn busy_exits_body<R: Runtime>(
    parallel: Parallel<R>,
    spawns: u64,
    cpus: usize,
) -> Result<Vec<String>, Failed> {
    let add = |x: u64| async move { x + 1 };
    let started = Instant::now();
    // Descendants besides the zygote: workers running, exiting, or exited
    // and not yet reaped.
    let mut most = 0;
    for i in 0..spawns {
        check(parallel.spawn(add, i).await? == i + 1, format!("spawn {i}"))?;
        if i % 10 == 0 {
            most = most.max(
                super::descendants(std::process::id() as i32)
                    .len()
                    .saturating_sub(1),
            );
        }
    }
    let took = started.elapsed();
    let figures = vec![format!(
        "{spawns} sequential spawns beside {} spinning threads in {} ({:.0}/s); at most {most} workers alive or unreaped at once",
        2 * cpus,
        ms(took),
        spawns as f64 / took.as_secs_f64()
    )];
    // One worker answers at a time; its exit runs while the next spawns.
    // A few more are fine; dozens mean exits wait for an idle CPU.
    check(
        most <= 20,
        format!("finished workers pile up: {}", figures[0]),
    )?;
    Ok(figures)
}

/// *scale*: many live workers at once, after raising the soft descriptor
/// limit to the hard one (the library does not, today); plus a probe at a
/// lowered soft limit that shows where the parent runs out.
pub fn scale<H: Harness>() -> Result<(), Failed> {
    let workers = size(300, 2000);
    let mut figures = run_helper(
        SCALE,
        &format!("{workers},raise"),
        Duration::from_secs(if super::full() { 600 } else { 120 }),
    )?;
    // The probe: soft limit lowered to 256 (CI) or 1024 (full).
    let (probe_limit, probe_workers) = (size(256, 1024), size(300, 1100));
    figures.extend(run_helper(
        SCALE,
        &format!("{probe_workers},{probe_limit}"),
        Duration::from_secs(if super::full() { 600 } else { 120 }),
    )?);
    report::<H::R>("scale", &figures);
    Ok(())
}

fn set_nofile(soft: u64) -> Result<(u64, u64), Failed> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (old, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard)?;
    Ok((old, hard))
}

/// `arg` is `workers,raise` (soft limit raised to the hard one, must
/// succeed) or `workers,<soft limit>` (a probe: reports how far it got).
pub fn scale_helper<H: Harness>(arg: &str) -> Result<Vec<String>, Failed> {
    let (workers, limit) = arg.split_once(',').ok_or("arg: workers,limit")?;
    let workers: usize = workers.parse()?;
    let probe = limit != "raise";
    let soft = if probe { limit.parse()? } else { u64::MAX };
    // Before init: the zygote inherits the limit too.
    let (old, hard) = set_nofile(soft)?;
    let parallel = H::init()?;
    let now = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?.0;
    block_on_figures::<H, _>(scale_body::<H::R>(
        parallel,
        workers,
        probe,
        (old, now, hard),
    ))
}

async fn scale_body<R: Runtime>(
    parallel: Parallel<R>,
    workers: usize,
    probe: bool,
    (old, now, hard): (u64, u64, u64),
) -> Result<Vec<String>, Failed> {
    let fds_before = open_fds();
    let rss_before = status_kb("VmRSS");
    let started = Instant::now();
    let mut runs = Vec::with_capacity(workers);
    let mut failure = None;
    // In batches: each worker answers a call before the next batch starts.
    'batches: for batch in 0..workers.div_ceil(50) {
        let mut fresh = Vec::new();
        for _ in batch * 50..((batch + 1) * 50).min(workers) {
            match parallel.run(|x: u64| async move { x + 1 }) {
                Ok(run) => fresh.push(run),
                Err(error) => {
                    failure = Some(format!("run #{}: {error}", runs.len() + fresh.len()));
                    break;
                }
            }
        }
        let answers = join_all(fresh.iter().map(|run| run.call(1))).await;
        for (run, answer) in fresh.into_iter().zip(answers) {
            match answer {
                Ok(2) => runs.push(run),
                other => {
                    failure = Some(format!("call on worker #{}: {other:?}", runs.len()));
                    break 'batches;
                }
            }
        }
        if failure.is_some() {
            break;
        }
    }
    let took = started.elapsed();
    // (At an exhausted descriptor limit /proc cannot be read: 0 then.)
    let live = live_descendants().saturating_sub(1);
    let fds_held = open_fds().saturating_sub(fds_before);
    let rss = status_kb("VmRSS").saturating_sub(rss_before);
    // All still answer, at once.
    let answers = join_all(runs.iter().map(|run| run.call(2))).await;
    let answering = answers.iter().filter(|a| matches!(a, Ok(3))).count();
    let count = runs.len();
    drop(runs);
    let dropped = Instant::now();
    let ended = settle::<R>(Duration::from_secs(30), || live_descendants() <= 1).await;
    let ending = ms(dropped.elapsed());
    let label = if probe {
        format!("probe at soft RLIMIT_NOFILE {now}")
    } else {
        format!("soft RLIMIT_NOFILE raised {old} -> {now} (hard {hard})")
    };
    let figures = vec![format!(
        "{label}: {count}/{workers} live workers in {} ({live} processes, {answering} answering at once; parent +{fds_held} fds, +{} MiB RSS); {}; all ended: {ended} (in {ending})",
        ms(took),
        rss / 1024,
        failure.as_deref().unwrap_or("no failure")
    )];
    if !probe {
        check(
            failure.is_none(),
            format!("{}: {}", figures[0], failure.as_deref().unwrap_or("")),
        )?;
        check(
            count == workers && answering == workers && live >= workers,
            figures[0].clone(),
        )?;
    } else {
        // At a soft limit below what the workers need, the parent must run
        // out with an error, not hang or crash.
        check(count == workers || failure.is_some(), figures[0].clone())?;
    }
    if !ended {
        return Err(format!(
            "workers still alive 30 s after their handles dropped: {}; {}",
            super::describe_live_descendants(),
            figures[0]
        )
        .into());
    }
    Ok(figures)
}

const CHUNK: usize = 64 * 1024;

/// The content of message `seq`: its sequence number, then bytes that
/// depend on it.
/// (Cheap even unoptimized: a sequence number at each end, a byte that
/// depends on it between them; a lost, repeated, reordered or cut message
/// shows.)
fn fill(seq: u64, chunk: &mut [u8]) {
    let end = chunk.len() - 8;
    chunk[..8].copy_from_slice(&seq.to_le_bytes());
    chunk[8..end].fill(seq.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes()[7] | 1);
    chunk[end..].copy_from_slice(&seq.to_le_bytes());
}

/// *back-pressure*: a worker produces `total` bytes as fast as it may; the
/// parent reads slowly; its memory stays bounded and every byte arrives in
/// order.
pub fn back_pressure<H: Harness>() -> Result<(), Failed> {
    let total = size(256, 1024) << 20;
    let figures = run_helper(
        BACK_PRESSURE,
        &total.to_string(),
        Duration::from_secs(if super::full() { 600 } else { 180 }),
    )?;
    report::<H::R>("back_pressure", &figures);
    Ok(())
}

pub fn back_pressure_helper<H: Harness>(arg: &str) -> Result<Vec<String>, Failed> {
    let total: u64 = arg.parse()?;
    let parallel = H::init()?;
    block_on_figures::<H, _>(back_pressure_body::<H::R>(parallel, total))
}

async fn back_pressure_body<R: Runtime>(
    parallel: Parallel<R>,
    total: u64,
) -> Result<Vec<String>, Failed> {
    let messages = total / CHUNK as u64;
    let mut process = parallel.process(
        |mut input: MessageStream<u64>, output: MessageSender<Vec<u8>>| async move {
            let Some(Ok(messages)) = input.recv().await else {
                return;
            };
            let mut chunk = vec![0u8; CHUNK];
            for seq in 0..messages {
                fill(seq, &mut chunk);
                if output.send(chunk.clone()).await.is_err() {
                    return;
                }
            }
        },
    )?;
    // Warm: the first message in, then the baseline.
    process.sender.send(messages).await?;
    let mut expected = vec![0u8; CHUNK];
    let mut seq = 0u64;
    let mut check_message = |message: &[u8]| -> Result<(), Failed> {
        fill(seq, &mut expected);
        check(
            message == expected.as_slice(),
            format!(
                "message {seq} out of order or corrupt (len {})",
                message.len()
            ),
        )?;
        seq += 1;
        Ok(())
    };
    let first = process.stream.next().await.ok_or("no first message")??;
    check_message(&first)?;
    drop(first);
    let rss_before = status_kb("VmRSS");
    let mut rss_max = rss_before;
    let started = Instant::now();
    let mut received = 1u64;
    while let Some(message) = within::<R>(&mut process.stream).await {
        let message = message?;
        check_message(&message)?;
        received += 1;
        // Slow: a pause every 8 messages (about 1/4 of the producer's rate).
        if received % 8 == 0 {
            R::sleep(Duration::from_millis(2)).await;
        }
        if received % 32 == 0 {
            rss_max = rss_max.max(status_kb("VmRSS"));
        }
    }
    let took = started.elapsed();
    let result = process.handle.wait().await;
    let growth_mib = rss_max.saturating_sub(rss_before) as f64 / 1024.0;
    let figures = vec![format!(
        "{} MiB in {received}/{messages} messages of 64 KiB, in order, in {} ({:.0} MiB/s); parent RSS {} kB before, max {} kB (+{growth_mib:.1} MiB)",
        total >> 20,
        ms(took),
        (total >> 20) as f64 / took.as_secs_f64(),
        rss_before,
        rss_max
    )];
    check(received == messages, figures[0].clone())?;
    check(result.is_ok(), format!("worker ended with {result:?}"))?;
    check(growth_mib < 16.0, figures[0].clone())?;
    Ok(figures)
}

/// The next message of `stream`, bounded by 30 s (a stall is a failure,
/// reported as the end of the stream).
async fn within<R: Runtime>(
    stream: &mut (impl futures_util::Stream<Item = Result<Vec<u8>, parallel_zygote::async_core::Error>>
              + Unpin),
) -> Option<Result<Vec<u8>, parallel_zygote::async_core::Error>> {
    super::within::<R, _>(Duration::from_secs(30), stream.next())
        .await
        .flatten()
}
