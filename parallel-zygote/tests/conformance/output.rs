//! What a worker writes and logs, seen from the parent: captured stdout and
//! stderr attributed to the worker (pid, stream), discarded and inherited
//! output, the stderr tail in a death error, over-long lines cut, pool
//! workers' lines each attributed to its own worker, and the worker's
//! tracing events forwarded into its span (in a helper process with a
//! global subscriber, as in `lifecycle.rs`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use libtest_mimic::Failed;
use parallel_zygote::async_core::{
    Error, Output, OutputLine, OutputLines, Parallel, Pool, PoolConfig, Runtime, StdStream,
    MAX_LINE_LEN, STDERR_TAIL_LINES,
};

use super::lifecycle::{Collector, Seen};
use super::{check, within, Harness};

/// How long lines may take to arrive after the call that wrote them returned.
const LINE_WAIT: Duration = Duration::from_secs(10);

/// Reads `lines` until `wanted` lines matched `keep`, or [`LINE_WAIT`] passed.
async fn collect<R: Runtime>(
    lines: &mut OutputLines,
    wanted: usize,
    keep: impl Fn(&OutputLine) -> bool,
) -> Result<Vec<OutputLine>, Failed> {
    let mut kept = Vec::new();
    let deadline = Instant::now() + LINE_WAIT;
    while kept.len() < wanted {
        let left = deadline.saturating_duration_since(Instant::now());
        match within::<R, _>(left, lines.next()).await {
            Some(Some(line)) if keep(&line) => kept.push(line),
            Some(Some(_)) => {}
            Some(None) => return Err(format!("the line stream ended after {kept:?}").into()),
            None => {
                return Err(format!(
                    "only {} of {wanted} lines in {LINE_WAIT:?}: {kept:?}",
                    kept.len()
                )
                .into())
            }
        }
    }
    Ok(kept)
}

pub async fn captured_output_is_attributed_to_its_worker<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let (output, mut lines) = Output::lines(64);
    let named = parallel
        .clone()
        .worker_options(parallel_zygote::SpawnOptions::default().name("chatty"))
        .worker_output(output);
    let pid = named
        .spawn(
            |n: u32| async move {
                println!("out {n}");
                eprintln!("err {n}");
                println!("out {}", n + 1);
                std::process::id() as i32
            },
            7,
        )
        .await?;
    let seen = collect::<R>(&mut lines, 3, |line| line.pid == pid).await?;
    let texts: Vec<(StdStream, &str)> = seen.iter().map(|l| (l.stream, l.text.as_str())).collect();
    check(
        texts.contains(&(StdStream::Stdout, "out 7"))
            && texts.contains(&(StdStream::Stderr, "err 7"))
            && texts.contains(&(StdStream::Stdout, "out 8")),
        format!("lines of worker {pid}: {seen:?}"),
    )?;
    let stdout: Vec<&str> = seen
        .iter()
        .filter(|l| l.stream == StdStream::Stdout)
        .map(|l| l.text.as_str())
        .collect();
    check(
        stdout == ["out 7", "out 8"],
        format!("stdout in order: {stdout:?}"),
    )?;
    check(
        seen.iter()
            .all(|l| l.name.as_deref() == Some("chatty") && !l.truncated),
        format!("name and truncation: {seen:?}"),
    )
}

/// Where the calling process's descriptor `fd` points (`/proc/self/fd`).
fn fd_target(fd: u32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|path| path.to_string_lossy().into_owned())
        .unwrap_or_else(|error| format!("unreadable: {error}"))
}

pub async fn null_output_goes_to_dev_null<R: Runtime>(parallel: Parallel<R>) -> Result<(), Failed> {
    let targets = parallel
        .clone()
        .worker_output(Output::Null)
        .spawn(
            |()| async move {
                println!("nobody hears this");
                (fd_target(1), fd_target(2))
            },
            (),
        )
        .await?;
    check(
        targets == ("/dev/null".to_string(), "/dev/null".to_string()),
        format!("worker's stdout and stderr: {targets:?}"),
    )
}

pub async fn inherited_output_is_the_parents<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    // The default: what the zygote got from this process at init().
    let targets = parallel
        .spawn(|()| async move { (fd_target(1), fd_target(2)) }, ())
        .await?;
    let ours = (fd_target(1), fd_target(2));
    check(
        targets == ours,
        format!("worker {targets:?}, parent {ours:?}"),
    )?;
    // Capturing one stream leaves the other inherited.
    let (output, _lines) = Output::lines(4);
    let targets = parallel
        .clone()
        .worker_stderr(output)
        .spawn(|()| async move { (fd_target(1), fd_target(2)) }, ())
        .await?;
    check(
        targets.0 == ours.0 && targets.1.starts_with("socket:"),
        format!("stderr captured only: worker {targets:?}, parent {ours:?}"),
    )
}

/// Ends the worker with `code`; typed, so the spawned function has a result type.
fn exit_with(code: i32) -> u32 {
    std::process::exit(code)
}

pub async fn death_error_carries_the_stderr_tail<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let captured = parallel.clone().worker_stderr(Output::Capture);
    let result = captured
        .spawn(
            |code: i32| async move {
                for i in 0..30 {
                    eprintln!("progress {i}");
                }
                eprintln!("fatal: the input is corrupt");
                exit_with(code)
            },
            3,
        )
        .await;
    let error = match result {
        Err(error @ Error::WorkerDied { .. }) => error,
        other => return Err(format!("expected WorkerDied, got {other:?}").into()),
    };
    let tail = error.stderr_tail();
    check(
        tail.len() == STDERR_TAIL_LINES
            && tail.last().map(String::as_str) == Some("fatal: the input is corrupt")
            && tail.first().map(String::as_str) == Some("progress 11"),
        format!("tail: {tail:?}"),
    )?;
    let text = error.to_string();
    check(
        text.contains("exited with code 3")
            && text.contains("fatal: the input is corrupt")
            && !text.contains("progress"),
        format!("Display shows the status and the last line only: {text}"),
    )?;
    // Not captured: no tail.
    let result = parallel
        .clone()
        .worker_stderr(Output::Null)
        .spawn(
            |()| async move {
                eprintln!("lost");
                exit_with(3)
            },
            (),
        )
        .await;
    check(
        matches!(&result, Err(error) if error.stderr_tail().is_empty()),
        format!("uncaptured stderr: {result:?}"),
    )
}

pub async fn over_long_lines_are_cut_and_marked<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let (output, mut lines) = Output::lines(16);
    let pid = parallel
        .clone()
        .worker_output(output)
        .spawn(
            |len: usize| async move {
                println!("{}", "x".repeat(len));
                print!("no newline at the end");
                std::process::id() as i32
            },
            3 * MAX_LINE_LEN,
        )
        .await?;
    let seen = collect::<R>(&mut lines, 2, |line| line.pid == pid).await?;
    check(
        seen[0].truncated && seen[0].text.len() == MAX_LINE_LEN,
        format!(
            "first line: truncated {}, {} bytes",
            seen[0].truncated,
            seen[0].text.len()
        ),
    )?;
    check(
        !seen[1].truncated && seen[1].text == "no newline at the end",
        format!("second line: {:?}", seen[1]),
    )
}

/// A last line without its newline, in a stream that a process the worker
/// started keeps open after the worker exited: the driver stops waiting for
/// the stream's end after a while, and delivers that line then rather than
/// dropping it with the stream. (Before, the line went only with the end of
/// the stream; it was also how a starved worker's last line got lost.)
pub async fn a_last_line_is_delivered_when_a_child_holds_the_stream_open<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let (output, mut lines) = Output::lines(16);
    let pid = parallel
        .clone()
        .worker_output(output)
        .spawn(
            |()| async move {
                // Inherits stdout and outlives the worker by five seconds.
                let _ = std::process::Command::new("sleep").arg("5").spawn();
                print!("no newline, the stream held open");
                std::process::id() as i32
            },
            (),
        )
        .await?;
    let started = Instant::now();
    let seen = collect::<R>(&mut lines, 1, |line| line.pid == pid).await?;
    check(
        seen[0].text == "no newline, the stream held open" && !seen[0].truncated,
        format!("the last line: {:?}", seen[0]),
    )?;
    // Delivered when the driver stopped waiting, not at the child's exit.
    check(
        started.elapsed() < Duration::from_millis(4500),
        format!("delivered after {:?}", started.elapsed()),
    )
}

pub async fn pool_workers_output_is_attributed_to_each_worker<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let (output, mut lines) = Output::lines(64);
    let pool = Pool::new(
        &parallel.clone().worker_output(output),
        |n: u32| async move {
            println!("call {n} in {}", std::process::id());
            std::process::id() as i32
        },
        PoolConfig::default().size(2),
    )?;
    let mut pids = Vec::new();
    for n in 0..6 {
        pids.push((n, pool.call(n).await?));
    }
    let seen = collect::<R>(&mut lines, 6, |line| line.text.starts_with("call ")).await?;
    for (n, pid) in pids {
        let expected = format!("call {n} in {pid}");
        check(
            seen.iter()
                .any(|line| line.pid == pid && line.text == expected),
            format!("no line {expected:?} attributed to {pid}: {seen:?}"),
        )?;
    }
    check(
        seen.iter()
            .all(|line| line.text.ends_with(&format!(" in {}", line.pid))),
        format!("every line attributed to the worker that wrote it: {seen:?}"),
    )
}

/// The name of the forwarding trial.
pub const FORWARDING: &str = "worker_tracing_and_output_reach_a_parent_subscriber";
/// The [`HELPER_ENV`](super::HELPER_ENV) value that runs [`forwarding_helper`].
pub const FORWARDING_HELPER: &str = "forwarding";

/// Runs in a helper process with a global subscriber, as the tracing trial
/// of `lifecycle.rs` does.
pub fn worker_tracing_and_output_reach_a_parent_subscriber() -> Result<(), Failed> {
    super::run_helper(FORWARDING_HELPER)
}

/// The helper process: installs [`Collector`] globally, then runs the
/// scenario. Prints `ok` or what went wrong.
pub fn forwarding_helper<H: Harness>() {
    let collector = Collector::default();
    let events = Arc::clone(&collector.events);
    let outcome = H::init().map_err(Failed::from).and_then(|parallel| {
        tracing::subscriber::set_global_default(collector).map_err(|e| e.to_string())?;
        H::block_on(Box::pin(forwarded(parallel, events)))
    });
    match outcome {
        Ok(()) => println!("ok"),
        Err(failed) => println!("{}", failed.message().unwrap_or("failed")),
    }
}

/// Waits (up to [`LINE_WAIT`]) for an event `matches` accepts.
async fn seen<R: Runtime>(
    events: &Mutex<Vec<Seen>>,
    what: &str,
    matches: impl Fn(&Seen) -> bool,
) -> Result<Seen, Failed> {
    let deadline = Instant::now() + LINE_WAIT;
    loop {
        if let Some(event) = events.lock().unwrap().iter().find(|e| matches(e)) {
            return Ok(event.clone());
        }
        if Instant::now() >= deadline {
            let all = events.lock().unwrap().clone();
            return Err(format!("no {what} in {LINE_WAIT:?}; events: {all:#?}").into());
        }
        R::sleep(Duration::from_millis(10)).await;
    }
}

async fn forwarded<R: Runtime>(
    parallel: Parallel<R>,
    events: Arc<Mutex<Vec<Seen>>>,
) -> Result<(), Failed> {
    let traced = parallel
        .forward_worker_tracing(Some(tracing::Level::INFO))
        .worker_output(Output::Capture);
    let pid = traced
        .spawn(
            |answer: u32| async move {
                tracing::info_span!("job", answer).in_scope(|| {
                    tracing::warn!(answer, "hello from the worker");
                    tracing::debug!("below the forwarded level");
                });
                println!("a line on stdout");
                std::process::id() as i32
            },
            42,
        )
        .await?;
    let pid_text = pid.to_string();
    let log = seen::<R>(&events, "forwarded event", |event| {
        event.target == "parallel::worker::log"
            && event.fields.get("message").map(String::as_str) == Some("hello from the worker")
    })
    .await?;
    let field = |name: &str| log.fields.get(name).cloned().unwrap_or_default();
    check(
        log.level == tracing::Level::WARN
            && field("pid") == pid_text
            && field("fields") == "answer=42"
            && field("spans") == "job"
            && field("worker_target").ends_with("conformance::output"),
        format!("forwarded event: {log:?}"),
    )?;
    check(
        log.span.get("pid") == Some(&pid_text),
        format!("forwarded event outside the worker's span: {log:?}"),
    )?;
    let line = seen::<R>(&events, "output event", |event| {
        event.target == "parallel::worker::output"
            && event.fields.get("line").map(String::as_str) == Some("a line on stdout")
    })
    .await?;
    check(
        line.fields.get("pid") == Some(&pid_text)
            && line.fields.get("stream").map(String::as_str) == Some("stdout")
            && line.span.get("pid") == Some(&pid_text),
        format!("output event: {line:?}"),
    )?;
    let below = events.lock().unwrap().iter().any(|event| {
        event.fields.get("message").map(String::as_str) == Some("below the forwarded level")
    });
    check(!below, "a DEBUG event was forwarded at max level INFO")?;
    Ok(())
}
