//! A worker's life seen from outside: graceful shutdown of a pool and of a
//! `Parallel` (drain, then SIGTERM), memory-based recycling, and the
//! tracing events the core emits (in a helper process with a global
//! subscriber of its own).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join;
use libtest_mimic::Failed;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use parallel_zygote::async_core::{Error, Parallel, Pool, PoolConfig, Runtime};

use super::{check, known_pid, within, Harness};

pub async fn pool_graceful_shutdown_drains_then_terminates<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let pool = Pool::new(
        &parallel,
        |ms: u64| async move {
            R::sleep(Duration::from_millis(ms)).await;
            ms
        },
        PoolConfig::default().size(2),
    )?;
    // A call that ends within the grace finishes; one that outlives it is
    // ended by SIGTERM (the worker handles nothing: it dies of it).
    let started = Instant::now();
    let calls = join(pool.call(200), pool.call(60_000));
    let shutdown = async {
        while pool.stats().active < 2 {
            R::sleep(Duration::from_millis(5)).await;
        }
        pool.shutdown_gracefully(Duration::from_secs(2)).await;
    };
    let ((quick, slow), ()) = join(calls, shutdown).await;
    check(
        matches!(quick, Ok(200)),
        format!("in-flight call: {quick:?}"),
    )?;
    match &slow {
        Err(error @ Error::WorkerDied { .. }) => check(
            error.signal() == Some(libc::SIGTERM),
            format!("expected SIGTERM, got {error}"),
        )?,
        other => return Err(format!("the overlong call gave {other:?}").into()),
    }
    check(
        started.elapsed() < Duration::from_secs(20),
        format!("graceful shutdown took {:?}", started.elapsed()),
    )?;
    check(
        matches!(pool.call(1).await, Err(Error::ShutDown)),
        "a call after shutdown is refused",
    )
}

pub async fn parallel_shutdown_drains_and_refuses_new_work<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    // A scope of its own: the suite's other trials share `parallel`.
    let scope = parallel.scope();
    let quick = scope.spawn(
        |ms: u64| async move {
            R::sleep(Duration::from_millis(ms)).await;
            ms
        },
        300,
    );
    let started = Instant::now();
    scope.shutdown(Duration::from_secs(10)).await;
    check(
        started.elapsed() < Duration::from_secs(8),
        format!("drain waited {:?} for a 300 ms task", started.elapsed()),
    )?;
    let value = quick.await;
    check(
        matches!(value, Ok(300)),
        format!("in-flight spawn: {value:?}"),
    )?;
    let clone = scope.clone();
    check(clone.is_shut_down(), "clones share the shutdown")?;
    let spawned = clone.spawn(|x: u32| async move { x }, 1).await;
    check(
        matches!(spawned, Err(Error::ShutDown)),
        format!("spawn after shutdown: {spawned:?}"),
    )?;
    check(
        matches!(clone.run(|x: u32| async move { x }), Err(Error::ShutDown)),
        "run after shutdown is refused",
    )?;
    let pool = Pool::new(&clone, |x: u32| async move { x }, PoolConfig::default());
    check(
        matches!(pool, Err(Error::ShutDown)),
        "a pool after shutdown is refused",
    )?;
    // The suite's handle is another scope: untouched.
    check(
        !parallel.is_shut_down(),
        "the parent scope is not shut down",
    )?;
    let still = parallel.spawn(|x: u32| async move { x + 1 }, 1).await?;
    check(still == 2, "the other scope still works")
}

pub async fn parallel_shutdown_shuts_its_pools_down<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let scope = parallel.scope();
    let pool = Pool::new(
        &scope,
        |ms: u64| async move {
            R::sleep(Duration::from_millis(ms)).await;
            ms
        },
        PoolConfig::default().size(1),
    )?;
    check(pool.call(0).await? == 0, "warm-up call")?;
    let idle = super::known_pid::<R>("pool worker", || pool.pids().first().copied()).await?;
    let other = Pool::new(
        &scope,
        |x: u32| async move { x },
        PoolConfig::default().size(1),
    )?;
    let other_pid =
        super::known_pid::<R>("other pool's worker", || other.pids().first().copied()).await?;
    // One call runs, one waits for the only worker; then the scope shuts down.
    let running = pool.call(300);
    let queued = async {
        R::sleep(Duration::from_millis(50)).await;
        pool.call(1).await
    };
    let shutting = async {
        R::sleep(Duration::from_millis(100)).await;
        scope.shutdown(Duration::from_secs(10)).await;
    };
    let ((ran, refused), ()) = join(join(running, queued), shutting).await;
    check(matches!(ran, Ok(300)), format!("the running call: {ran:?}"))?;
    check(
        matches!(refused, Err(Error::ShutDown)),
        format!("the queued call: {refused:?}"),
    )?;
    for pool_shut in [pool.is_shut_down(), other.is_shut_down()] {
        check(pool_shut, "a pool of the scope reports shut down")?;
    }
    check(
        pool.stats().shut_down && other.stats().shut_down,
        format!("stats: {:?} {:?}", pool.stats(), other.stats()),
    )?;
    let late = other.call(5).await;
    check(
        matches!(late, Err(Error::ShutDown)),
        format!("a call after shutdown: {late:?}"),
    )?;
    // The idle worker exited by itself (it was let go, not left for the
    // SIGTERM: it is gone although the grace is 10 s).
    for pid in [idle, other_pid] {
        check(
            super::wait_gone::<R>(pid, Duration::from_secs(8)).await,
            format!("pool worker {pid} still runs"),
        )?;
    }
    Ok(())
}

pub async fn parallel_shutdown_terminates_what_outlives_the_grace<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let scope = parallel.scope();
    let stuck = scope.spawn(
        |_: ()| async move {
            R::sleep(Duration::from_secs(60)).await;
        },
        (),
    );
    known_pid::<R>("stuck spawn", || stuck.pid()).await?;
    let started = Instant::now();
    scope.shutdown(Duration::from_millis(300)).await;
    check(
        started.elapsed() < Duration::from_secs(10),
        format!("shutdown took {:?}", started.elapsed()),
    )?;
    match stuck.await {
        Err(error) => check(
            error.signal() == Some(libc::SIGTERM),
            format!("expected death by SIGTERM, got {error}"),
        ),
        Ok(()) => Err("the stuck spawn returned".into()),
    }
}

/// Spawns whose handles nobody awaits (one never polled, one polled once)
/// are not what a shutdown waits its grace for: their drivers, which a
/// handle polls in place while awaited, are handed to their tasks, which
/// see the workers finish. The handles then give the results.
pub async fn parallel_shutdown_is_not_held_up_by_unawaited_spawns<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let scope = parallel.scope();
    let never_polled = scope.spawn(|x: u64| async move { x + 1 }, 1);
    // A spawn polled once while its worker has not answered yet: its
    // driver is left held by a handle nobody polls again. The worker waits
    // 200 ms before it answers so that the poll right after the spawn finds
    // no answer; a machine loaded enough to delay that poll past it gets a
    // fresh spawn, up to three.
    let mut held = None;
    for _ in 0..3 {
        let mut spawn = scope.spawn(
            |x: u64| async move {
                std::thread::sleep(Duration::from_millis(200));
                x + 2
            },
            1,
        );
        match futures_util::poll!(&mut spawn) {
            std::task::Poll::Pending => {
                held = Some(spawn);
                break;
            }
            std::task::Poll::Ready(result) => {
                check(matches!(result, Ok(3)), format!("answered {result:?}"))?;
            }
        }
    }
    let Some(polled_once) = held else {
        return Err(
            "three spawns answered at their first poll, though each worker waits 200 ms \
                    before it answers"
                .into(),
        );
    };
    // Both workers run to their end meanwhile (nothing awaits them).
    let started = Instant::now();
    let shut = within::<R, _>(
        Duration::from_secs(60),
        scope.shutdown(Duration::from_secs(120)),
    )
    .await;
    check(
        shut.is_some(),
        format!(
            "shutdown waited {:?} for finished spawns nobody awaited",
            started.elapsed()
        ),
    )?;
    check(
        matches!(never_polled.await, Ok(2)),
        "the never-polled spawn's result",
    )?;
    check(
        matches!(polled_once.await, Ok(3)),
        "the spawn polled once: its result",
    )
}

/// A spawn's driver, polled in place by its handle while awaited, goes to
/// its task afterwards, which on some runtimes is started only then (see
/// `Runtime::defer_driver`): every way a one-shot spawn ends still reports
/// to its handle, and leaves no driver behind for a shutdown to wait for.
/// A worker that dies while its handle awaits it (signal, exit code), one
/// aborted while its handle waits, one dropped before its first poll, and
/// one that returns: a shutdown with a long grace then returns at once,
/// which it does only once every worker's driver has finished.
pub async fn one_shot_spawns_report_every_end_and_leave_no_driver<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let scope = parallel.scope();
    let killed = scope
        .spawn(
            |()| async move {
                let _ = kill(Pid::this(), Signal::SIGKILL);
            },
            (),
        )
        .await;
    match killed {
        Err(error) => check(
            error.signal() == Some(libc::SIGKILL),
            format!("expected death by SIGKILL, got {error}"),
        )?,
        Ok(()) => return Err("a worker that killed itself returned".into()),
    }
    let exited = scope
        .spawn::<_, _, _, ()>(|()| async move { std::process::exit(3) }, ())
        .await;
    check(
        matches!(&exited, Err(Error::WorkerDied { status: Some(status), .. })
            if *status == parallel_zygote::ExitStatus::Exited(3)),
        format!("expected exit code 3, got {exited:?}"),
    )?;
    // Aborted while awaited: the handle, polled once, holds the driver.
    let mut aborted = scope.spawn(
        |()| async move {
            std::thread::sleep(Duration::from_secs(30));
        },
        (),
    );
    let _ = futures_util::poll!(&mut aborted);
    known_pid::<R>("aborted spawn", || aborted.pid()).await?;
    aborted.abort();
    match within::<R, _>(Duration::from_secs(20), aborted).await {
        Some(Err(error)) => check(
            error.signal() == Some(libc::SIGKILL),
            format!("expected the aborted spawn's death by SIGKILL, got {error}"),
        )?,
        Some(Ok(())) => return Err("the aborted spawn returned".into()),
        None => return Err("the aborted spawn's handle never resolved".into()),
    }
    // Dropped before its first poll: its worker is killed.
    drop(scope.spawn(
        |()| async move {
            std::thread::sleep(Duration::from_secs(30));
        },
        (),
    ));
    let returned = scope.spawn(|x: u64| async move { x * 2 }, 21).await;
    check(
        matches!(returned, Ok(42)),
        format!("the returning spawn: {returned:?}"),
    )?;
    let started = Instant::now();
    let shut = within::<R, _>(
        Duration::from_secs(60),
        scope.shutdown(Duration::from_secs(30)),
    )
    .await;
    check(
        shut.is_some() && started.elapsed() < Duration::from_secs(20),
        format!(
            "shutdown waited {:?} (a driver left unfinished keeps it for its grace)",
            started.elapsed()
        ),
    )
}

/// Grows by 64 MiB (touched) at each call, kept until the process exits.
async fn grow(_: ()) -> i32 {
    let mut block = vec![0u8; 64 << 20];
    for page in block.chunks_mut(4096) {
        page[0] = 1;
    }
    std::mem::forget(block);
    std::process::id() as i32
}

pub async fn pool_recycles_workers_over_the_memory_limit<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let config = PoolConfig::default().size(1).max_worker_rss(32 << 20);
    let growing = Pool::new(&parallel, grow, config)?;
    let first = growing.call(()).await?;
    // The pid may trail the first answer (the check is then skipped once):
    // a few calls later the worker must have been replaced.
    let mut replaced = false;
    for _ in 0..10 {
        if growing.call(()).await? != first {
            replaced = true;
            break;
        }
    }
    check(
        replaced,
        format!("worker {first} kept after 10 calls of 64 MiB"),
    )?;
    let stats = growing.stats();
    check(
        stats.recycled_for_memory >= 1 && stats.replacements >= stats.recycled_for_memory,
        format!("stats: {stats:?}"),
    )?;
    let small = Pool::new(
        &parallel,
        |_: ()| async move { std::process::id() as i32 },
        config,
    )?;
    let first = small.call(()).await?;
    known_pid::<R>("small worker", || small.pids().first().copied()).await?;
    for _ in 0..5 {
        let pid = small.call(()).await?;
        check(
            pid == first,
            format!("small worker replaced: {first} -> {pid}"),
        )?;
    }
    check(
        small.stats().recycled_for_memory == 0,
        format!("stats: {:?}", small.stats()),
    )
}

/// The name of the tracing trial.
pub const TRACING: &str = "tracing_reports_a_killed_worker_and_its_replacement";
/// The [`HELPER_ENV`] value that runs [`tracing_helper`].
pub const TRACING_HELPER: &str = "tracing";

/// Runs in a helper process: a global subscriber sees the events of every
/// thread (tokio's driver tasks run on its worker threads), and only this
/// scenario's.
pub fn tracing_reports_a_killed_worker_and_its_replacement() -> Result<(), Failed> {
    super::run_helper(TRACING_HELPER)
}

/// The helper process: installs [`Collector`] globally, then runs the
/// scenario. Prints `ok` or what went wrong.
pub fn tracing_helper<H: Harness>() {
    let collector = Collector::default();
    let events = Arc::clone(&collector.events);
    let outcome = H::init().map_err(Failed::from).and_then(|parallel| {
        tracing::subscriber::set_global_default(collector).map_err(|e| e.to_string())?;
        H::block_on(Box::pin(traced(parallel, events)))
    });
    match outcome {
        Ok(()) => println!("ok"),
        Err(failed) => println!("{}", failed.message().unwrap_or("failed")),
    }
}

async fn traced<R: Runtime>(
    parallel: Parallel<R>,
    events: Arc<Mutex<Vec<Seen>>>,
) -> Result<(), Failed> {
    let pool = Pool::new(
        &parallel,
        |ms: u64| async move {
            R::sleep(Duration::from_millis(ms)).await;
            std::process::id() as i32
        },
        PoolConfig::default().size(1),
    )?;
    let pid = pool.call(0).await?;
    known_pid::<R>("pool worker", || pool.pids().first().copied()).await?;
    let killing = async {
        R::sleep(Duration::from_millis(100)).await;
        kill(Pid::from_raw(pid), Signal::SIGKILL)
    };
    let (result, killed) = join(pool.call(60_000), killing).await;
    killed?;
    check(
        result.as_ref().err().and_then(Error::signal) == Some(9),
        format!("the killed call gave {result:?}"),
    )?;
    let events = events.lock().unwrap().clone();
    let pid_text = pid.to_string();
    let death = events.iter().find(|event| {
        event.fields.get("signal").map(String::as_str) == Some("9")
            && event.fields.get("pid") == Some(&pid_text)
    });
    let Some(death) = death else {
        return Err(format!("no death event with pid {pid} and signal 9 in {events:#?}").into());
    };
    check(
        death.level == tracing::Level::WARN,
        format!("death level: {death:?}"),
    )?;
    check(
        death.span.get("pid") == Some(&pid_text),
        format!("death event outside the worker's span: {death:?}"),
    )?;
    check(
        events.iter().any(|event| {
            event.level == tracing::Level::INFO
                && event
                    .fields
                    .get("message")
                    .is_some_and(|m| m.contains("replacing pool worker"))
        }),
        format!("no replacement event in {events:#?}"),
    )?;
    check(
        events.iter().any(|event| {
            event
                .fields
                .get("message")
                .is_some_and(|m| m.contains("worker ready"))
        }),
        "no ready event",
    )
}

/// One event as the test subscriber saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub level: tracing::Level,
    pub target: String,
    pub fields: HashMap<String, String>,
    /// The fields of the span it happened in (none: empty).
    pub span: HashMap<String, String>,
}

/// A minimal subscriber: spans by id with their fields, a per-thread stack
/// of entered spans, every event recorded.
#[derive(Default)]
pub struct Collector {
    next: AtomicU64,
    spans: Mutex<HashMap<u64, HashMap<String, String>>>,
    pub events: Arc<Mutex<Vec<Seen>>>,
}

thread_local! {
    static STACK: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
}

impl tracing::Subscriber for Collector {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fields = HashMap::new();
        span.record(&mut Fields(&mut fields));
        self.spans.lock().unwrap().insert(id, fields);
        tracing::span::Id::from_u64(id)
    }

    fn record(&self, span: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        if let Some(fields) = self.spans.lock().unwrap().get_mut(&span.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        let parent = match event.parent() {
            Some(id) => Some(id.into_u64()),
            None if event.is_contextual() => STACK.with(|stack| stack.borrow().last().copied()),
            None => None,
        };
        let span = parent
            .and_then(|id| self.spans.lock().unwrap().get(&id).cloned())
            .unwrap_or_default();
        self.events.lock().unwrap().push(Seen {
            level: *event.metadata().level(),
            target: event.metadata().target().to_string(),
            fields,
            span,
        });
    }

    fn enter(&self, span: &tracing::span::Id) {
        STACK.with(|stack| stack.borrow_mut().push(span.into_u64()));
    }

    fn exit(&self, span: &tracing::span::Id) {
        STACK.with(|stack| {
            let mut stack = stack.borrow_mut();
            if let Some(at) = stack.iter().rposition(|id| *id == span.into_u64()) {
                stack.remove(at);
            }
        });
    }
}
