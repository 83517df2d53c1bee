//! The adapter conformance suite: every behaviour the async core promises,
//! written once, generic over the [`Runtime`], run by each adapter on its
//! own runtime with real workers, real sockets and a real zygote.
//!
//! This folder is not a test target of `parallel-zygote` (a folder with a
//! `mod.rs` under `tests/` is not one): each adapter includes it from its own
//! `tests/conformance.rs`, declared with `harness = false`:
//!
//! ```ignore
//! #[path = "../../parallel-zygote/tests/conformance/mod.rs"]
//! mod conformance;
//!
//! struct MyHarness;
//! impl conformance::Harness for MyHarness {
//!     type R = my_adapter::MyRuntime;
//!     fn init() -> Result<Parallel<Self::R>, Error> { my_adapter::init() }
//!     fn block_on(test: conformance::TestFuture) -> Result<(), Failed> {
//!         /* build a fresh runtime, run `test` on it to completion */
//!     }
//! }
//!
//! fn main() {
//!     conformance::main::<MyHarness>();
//! }
//! ```
//!
//! The adapter's dev-dependencies must include `libtest-mimic`,
//! `futures-util`, `libc`, `nix`, `postcard`, `serde` and `tracing` (the suite is
//! compiled inside the adapter's test crate and uses them), and the adapter
//! must depend on `parallel-zygote`.
//!
//! # Layout
//!
//! - this file: the [`Harness`] trait, [`main`], [`trials`], and the helpers
//!   every scenario shares (bounded waits, pids, process liveness);
//! - `calls.rs`: values in and out (`spawn`, `run` in order, concurrent and
//!   pipelined, a custom codec, snapshots);
//! - `failures.rs`: what a worker's failure looks like (panic, abort,
//!   SIGKILL mid-call, death before the first reply, a dead zygote);
//! - `cancel.rs`: who stops a worker (abort, a dropped or detached spawn, a
//!   dropped call future, the last `Run` dropped);
//! - `readers.rs`: callers reading their own answers (passing on others'
//!   answers, handing the read back, cancelled mid-read, the worker killed
//!   mid-read);
//! - `process.rs`: typed two-way channels (half close, panic, back-pressure,
//!   descriptors both ways, large messages through shared memory and
//!   through the socket);
//! - `pool.rs`: pools (timeouts, a poisoned input, recycling,
//!   `map_unordered`);
//! - `pools.rs`: per-worker options kept across a replacement, an
//!   any-function pool, one pooled call under control (pid, kill, cancel
//!   while queued), pool shutdown and kill;
//! - `panics.rs`: panic reports (structured location, a backtrace without
//!   `RUST_BACKTRACE`, none when turned off);
//! - `sugar.rs`: the `spawn!` capture list;
//! - `lifecycle.rs`: graceful shutdown of a pool and of a `Parallel`
//!   (drain, SIGTERM), recycling a worker over its memory limit, and the
//!   tracing events of a killed worker (a helper process with a global
//!   test subscriber);
//! - `output.rs`: workers' stdout and stderr captured line by line and
//!   attributed (pid, stream, a pool's workers each), discarded, inherited,
//!   cut when over-long, the stderr tail in a death error, and a worker's
//!   tracing events forwarded into its span (a helper process, as above);
//! - `options.rs`: per-worker `SpawnOptions` read back in the worker
//!   (environment, working directory, uid/gid, CPU affinity, nice) and a
//!   refused setting failing the spawn with its name and errno.
//!
//! # Running
//!
//! [`main`] starts the zygote first thing, before libtest-mimic starts its
//! threads (a zygote must fork from a single-threaded process), builds the
//! trials and runs them. It also serves as the helper process of
//! `zygote_gone_gives_a_clear_error_promptly`: that trial re-executes the
//! test binary with [`HELPER_ENV`] set, so that killing the zygote does not
//! take the other trials' zygote down; `main` sees the variable and runs the
//! helper instead of the suite. An adapter that builds its own `main` from
//! [`trials`] must call [`helper`] first in the same way.
//!
//! Each trial runs its scenario with [`Harness::block_on`] on a runtime of
//! its own; trials run in parallel threads.
//!
//! # Skipping a scenario
//!
//! An adapter skips a scenario only with a written reason:
//! [`Harness::skip`] returns `Some(reason)` for its name, and the trial is
//! reported as ignored with `"<runtime> skips this: <reason>"` (libtest's
//! `ignored, <reason>` line), never silently dropped. Scenarios that only
//! make sense for one adapter (a runtime option of its own, a notion of
//! "outside the runtime") are that adapter's [`Harness::extra_trials`].
//!
//! # Rules for scenarios
//!
//! - Written as `async fn name<R: Runtime>(parallel: Parallel<R>) ->
//!   Result<(), Failed>`, using nothing of a particular runtime: timers are
//!   `R::sleep`, bounded waits are [`within`], concurrency is
//!   `futures_util::future::{join, select}` inside the test's own future (no
//!   task spawning, so `!Send` runtimes work too).
//! - Functions sent to workers capture nothing (fn items, or closures
//!   without captures; a closure may still name `R`). Inside a worker,
//!   `R::sleep` runs on that adapter's worker runtime.
//! - The machine may be small and loaded (two cores, trials in parallel):
//!   no timing assertion tighter than the generous bounds below, and no
//!   fixed sleep standing in for "it has happened by now" where the thing
//!   can be polled for (a pid, a process gone, a counter settled).
//! - A worker's pid comes with the zygote's "spawned" reply, on another
//!   socket than the worker's answers: it can trail a call's result, so read
//!   it with [`known_pid`], never `pid().unwrap()`.

use std::future::Future;
use std::pin::{pin, Pin};
use std::time::{Duration, Instant};

use futures_util::future::{select, Either};
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use parallel_zygote::async_core::{Error, Parallel, Runtime};

pub mod calls;
mod cancel;
mod failures;
mod lifecycle;
mod options;
mod output;
mod panics;
mod pool;
mod pools;
mod process;
mod readers;
mod sugar;
mod warm;
mod zero_copy;

/// A scenario's future, as [`Harness::block_on`] runs it.
pub type TestFuture = Pin<Box<dyn Future<Output = Result<(), Failed>>>>;

/// A scenario: given a handle on the zygote, the future to run.
pub type Test<R> = fn(Parallel<R>) -> TestFuture;

/// The environment variable that turns the test binary into a helper
/// process (see [`helper`]).
pub const HELPER_ENV: &str = "PARALLEL_CONFORMANCE_HELPER";

/// What an adapter provides to run the suite.
pub trait Harness: 'static {
    /// The adapter's runtime.
    type R: Runtime;

    /// Starts the zygote and returns a handle on it (the adapter's `init()`).
    /// Called first thing in [`main`], before any thread exists, and again in
    /// helper processes.
    fn init() -> Result<Parallel<Self::R>, Error>;

    /// Runs a parent-side test future to completion on this runtime: a fresh
    /// runtime per call, dropped afterwards. Called from libtest-mimic's
    /// threads, several at once.
    fn block_on(test: TestFuture) -> Result<(), Failed>;

    /// `Some(reason)` to skip the scenario called `name` on this adapter;
    /// the trial is then reported as ignored with that reason.
    fn skip(name: &str) -> Option<&'static str> {
        let _ = name;
        None
    }

    /// Trials of this adapter only (see [`trial`] to build them), run after
    /// the shared ones.
    fn extra_trials(parallel: &Parallel<Self::R>) -> Vec<Trial> {
        let _ = parallel;
        Vec::new()
    }
}

/// The whole test binary: runs as the helper process when [`HELPER_ENV`]
/// says so; otherwise starts the zygote, builds the shared and the extra
/// trials, and runs them with libtest-mimic (command-line filters apply).
pub fn main<H: Harness>() {
    if helper::<H>() {
        return;
    }
    let parallel = H::init().expect("start the zygote first thing in main, before any thread");
    let args = Arguments::from_args();
    let mut all = trials::<H>(parallel.clone());
    all.extend(H::extra_trials(&parallel));
    libtest_mimic::run(&args, all).exit();
}

/// Runs this test binary again as the helper `which` (see [`helper`]); the
/// helper prints `ok` on success, what went wrong otherwise.
pub fn run_helper(which: &str) -> Result<(), Failed> {
    let output = std::process::Command::new(std::env::current_exe()?)
        .env(HELPER_ENV, which)
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() && text.starts_with("ok") {
        Ok(())
    } else {
        Err(format!(
            "helper ({}) said: {text} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
        .into())
    }
}

/// When [`HELPER_ENV`] is set, runs the helper process it names and returns
/// true (the caller then returns from `main`); otherwise returns false.
pub fn helper<H: Harness>() -> bool {
    match std::env::var(HELPER_ENV) {
        Ok(which) if which == failures::ZYGOTE_GONE_HELPER => {
            failures::zygote_gone_helper::<H>();
            true
        }
        Ok(which) if which == lifecycle::TRACING_HELPER => {
            lifecycle::tracing_helper::<H>();
            true
        }
        Ok(which) if which == output::FORWARDING_HELPER => {
            output::forwarding_helper::<H>();
            true
        }
        Ok(which) if which.starts_with(zero_copy::HELPER_PREFIX) => {
            zero_copy::helper::<H>(&which[zero_copy::HELPER_PREFIX.len()..]);
            true
        }
        Ok(which) => panic!("{HELPER_ENV}={which}: no such helper"),
        Err(_) => false,
    }
}

/// The shared scenarios, one trial each, on `parallel`'s zygote.
pub fn trials<H: Harness>(parallel: Parallel<H::R>) -> Vec<Trial> {
    macro_rules! scenarios {
        ($($module:ident :: $name:ident),* $(,)?) => {
            vec![$(
                trial::<H>(stringify!($name), parallel.clone(), |p| {
                    Box::pin($module::$name(p))
                }),
            )*]
        };
    }
    let mut trials = scenarios![
        calls::spawn_returns_the_value,
        calls::spawn_arguments_larger_than_the_socket_buffer_arrive_whole,
        calls::large_spawn_arguments_arrive_before_the_handle_is_polled,
        calls::spawn_runs_in_another_process,
        calls::thousand_calls_in_order_on_one_run_worker,
        calls::thousand_concurrent_calls_on_one_run_worker,
        calls::pipelined_calls_ready_at_once_or_later_reach_their_callers,
        calls::pipelined_calls_reach_the_worker_while_their_caller_keeps_the_thread,
        calls::custom_codec_is_used_both_ways,
        calls::plain_byte_vectors_cross_both_ways,
        calls::byte_buffers_cross_calls_and_spawns_whole,
        calls::codec_failures_in_the_worker_are_codec_errors,
        calls::snapshot_workers_see_init_state,
        failures::run_call_panic_reports_message_and_location_and_worker_survives,
        failures::spawn_panic_is_reported,
        failures::worker_abort_reports_sigabrt_and_the_call,
        failures::worker_sigkill_mid_call_reports_signal_and_call,
        failures::workers_killed_at_once_each_report_their_signal,
        failures::worker_dying_before_first_reply_errors_promptly,
        cancel::spawn_abort_kills_the_worker,
        cancel::dropped_spawn_handle_kills_its_worker,
        cancel::spawn_handle_dropped_unpolled_kills_its_worker,
        cancel::detached_spawn_runs_to_completion,
        cancel::dropped_call_future_kills_its_worker,
        cancel::dropping_the_last_run_handle_ends_the_worker,
        readers::answers_arriving_out_of_order_reach_their_callers,
        readers::callers_polled_only_when_woken_are_all_answered,
        readers::a_cancelled_first_caller_leaves_no_caller_waiting,
        readers::worker_killed_while_calls_wait_fails_each_call,
        readers::a_call_set_aside_blocks_no_other_call,
        readers::a_lone_caller_set_aside_leaves_no_death_unnoticed,
        readers::a_lone_caller_set_aside_keeps_the_answer_that_came,
        readers::pipelined_calls_with_the_worker_killed_halfway_each_end,
        readers::pipelined_callers_dropped_mid_flight_leave_no_caller_waiting,
        readers::a_pipelined_call_set_aside_blocks_no_other_call,
        process::process_streams_both_ways_with_half_close,
        process::process_worker_panic_ends_stream_with_error,
        process::slow_consumer_keeps_memory_bounded,
        process::fd_passed_to_a_worker_is_usable_there,
        process::fd_passed_back_from_a_worker_is_usable_here,
        process::process_sender_is_a_sink,
        process::socket_messages_with_large_bytes_arrive_intact_and_in_order,
        process::received_buffers_are_reused_once_dropped_never_while_held,
        process::descriptors_between_large_messages_reach_their_own_message,
        process::messages_queued_together_arrive_whole_in_order_with_their_descriptors,
        process::many_senders_at_once_arrive_whole_each_in_order,
        process::send_futures_dropped_mid_frame_lose_nothing_that_was_sent,
        process::serde_bytes_send_futures_dropped_mid_frame_lose_nothing_that_was_sent,
        process::many_senders_of_serde_bytes_at_once_arrive_whole_each_in_order,
        process::messages_with_serde_bytes_arrive_intact_and_in_order_both_ways,
        process::a_message_that_encodes_differently_when_written_leaves_the_channel_whole,
        process::a_worker_killed_mid_message_fails_its_sender,
        process::a_message_mostly_of_large_bytes_takes_the_socket_below_32_mib_by_default,
        process::a_copied_message_takes_the_socket_below_4_mib_by_default,
        process::plain_byte_vectors_arrive_intact_both_ways,
        zero_copy::shared_buffers_past_a_streams_limit_are_refused_until_released,
        pool::timeout_kills_stuck_worker_and_pool_keeps_serving,
        pool::pool_of_4_over_1000_inputs_with_one_poisoned,
        pool::pool_recycles_workers_after_max_calls,
        pool::pool_map_unordered_reports_indices,
        pool::pool_replaces_idle_workers_killed_before_a_call,
        pool::cancelled_pool_call_leaves_no_worker_listed,
        pools::pool_worker_i_keeps_its_options_after_a_replacement,
        pools::any_pool_runs_three_different_functions,
        pools::queued_pool_call_is_cancelled_without_touching_workers,
        pools::a_woken_queued_call_dropped_passes_its_turn_on,
        pools::pool_task_killed_before_its_first_poll_never_runs,
        pools::pool_task_kill_kills_its_worker_only,
        pools::pool_shutdown_finishes_running_calls_and_refuses_new_ones,
        pools::pool_kill_ends_all_workers,
        panics::panic_has_a_backtrace_without_rust_backtrace,
        panics::panic_has_no_backtrace_when_turned_off,
        panics::uncaught_panics_in_a_worker_are_printed_caught_ones_reported,
        sugar::spawn_macro_passes_locals_without_a_tuple,
        options::env_set_removed_and_cleared_in_the_worker,
        options::current_dir_applies_in_the_worker,
        options::uid_and_gid_drop_applies_in_the_worker,
        options::cpu_affinity_applies_in_the_worker,
        options::nice_value_applies_in_the_worker,
        options::refused_setting_fails_the_spawn_naming_it,
        lifecycle::pool_graceful_shutdown_drains_then_terminates,
        lifecycle::parallel_shutdown_drains_and_refuses_new_work,
        lifecycle::parallel_shutdown_terminates_what_outlives_the_grace,
        lifecycle::parallel_shutdown_is_not_held_up_by_unawaited_spawns,
        lifecycle::one_shot_spawns_report_every_end_and_leave_no_driver,
        lifecycle::parallel_shutdown_shuts_its_pools_down,
        lifecycle::pool_recycles_workers_over_the_memory_limit,
        output::captured_output_is_attributed_to_its_worker,
        output::null_output_goes_to_dev_null,
        output::inherited_output_is_the_parents,
        output::death_error_carries_the_stderr_tail,
        output::over_long_lines_are_cut_and_marked,
        output::a_last_line_is_delivered_when_a_child_holds_the_stream_open,
        output::pool_workers_output_is_attributed_to_each_worker,
        warm::warm_spawn_uses_a_preforked_worker_and_the_set_refills,
        warm::warm_workers_that_wait_before_building_their_runtime_serve_too,
        warm::warm_worker_killed_while_idle_is_replaced_not_used,
        warm::warm_spawns_take_arguments_of_every_size,
        warm::warm_workers_end_with_the_handle_and_at_shutdown,
        warm::deferred_refill_tops_the_set_up_to_its_minimum,
        warm::refill_pending_at_drop_or_shutdown_forks_nothing,
        warm::warm_worker_killed_after_its_refill_registered_it_is_skipped,
    ];
    trials.push(skippable::<H>(
        failures::ZYGOTE_GONE,
        failures::zygote_gone_gives_a_clear_error_promptly,
    ));
    trials.push(skippable::<H>(
        lifecycle::TRACING,
        lifecycle::tracing_reports_a_killed_worker_and_its_replacement,
    ));
    trials.push(skippable::<H>(
        output::FORWARDING,
        output::worker_tracing_and_output_reach_a_parent_subscriber,
    ));
    trials.extend(zero_copy::alone_trials::<H>());
    trials
}

/// A trial running `test` with [`Harness::block_on`], or reported as
/// ignored with the adapter's reason when [`Harness::skip`] names it.
pub fn trial<H: Harness>(name: &'static str, parallel: Parallel<H::R>, test: Test<H::R>) -> Trial {
    skippable::<H>(name, move || H::block_on(test(parallel)))
}

/// A trial running `run` on libtest-mimic's thread, unless skipped.
fn skippable<H: Harness>(
    name: &'static str,
    run: impl FnOnce() -> Result<(), Failed> + Send + 'static,
) -> Trial {
    match H::skip(name) {
        Some(reason) => Trial::ignorable_test(name, move || {
            Ok(Completion::ignored_with(format!(
                "{} skips this: {reason}",
                <H::R as Runtime>::NAME
            )))
        }),
        None => Trial::test(name, run),
    }
}

/// How many descriptors this process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// How many of this process's mappings are of files (memfds) whose name
/// contains `name`.
pub fn mappings_named(name: &str) -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(name))
        .count()
}

/// `Ok` when `condition` holds, else a failure saying `message`.
pub fn check(condition: bool, message: impl Into<String>) -> Result<(), Failed> {
    if condition {
        Ok(())
    } else {
        Err(message.into().into())
    }
}

/// `future`'s output, or `None` when `limit` passed first (the future is
/// then dropped).
pub async fn within<R: Runtime, F: Future>(limit: Duration, future: F) -> Option<F::Output> {
    match select(pin!(future), pin!(R::sleep(limit))).await {
        Either::Left((output, _)) => Some(output),
        Either::Right(_) => None,
    }
}

/// How long the zygote may take to report a worker's pid.
const PID_WAIT: Duration = Duration::from_secs(5);

/// A worker's pid, waiting (up to 5 s) for the zygote to report it.
///
/// The pid comes with the zygote's "spawned" reply, which can arrive after
/// the worker's first answer (they travel on different sockets), so a test
/// that needs it right after a call polls for it.
pub async fn known_pid<R: Runtime>(
    what: &str,
    pid: impl Fn() -> Option<i32>,
) -> Result<i32, Failed> {
    let deadline = Instant::now() + PID_WAIT;
    loop {
        if let Some(pid) = pid() {
            return Ok(pid);
        }
        if Instant::now() >= deadline {
            return Err(format!("the pid of the {what} was not known after {PID_WAIT:?}").into());
        }
        R::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the parenthesized command name.
            let state = stat.get(stat.rfind(')')? + 2..)?;
            Some(!state.starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Waits (up to `limit`) for process `pid` to be gone or a zombie; true if
/// it was.
pub async fn wait_gone<R: Runtime>(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        R::sleep(Duration::from_millis(5)).await;
    }
}

/// A fresh, already unlinked, read-write file in the temporary directory.
pub fn tempfile() -> std::io::Result<std::fs::File> {
    let path = temp_path("file");
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// A path in the temporary directory that nothing else uses.
pub fn temp_path(label: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "parallel-conformance-{}-{label}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}
