//! Real processes, real sockets. The zygote starts in `main`, before the
//! harness starts any thread; scenarios that must own a zygote of their own
//! (killing it, killing its parent, starting from many threads) run in a
//! fresh copy of this binary, chosen by the `PARALLEL_ZYGOTE_HELPER` variable.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use parallel_zygote::{Error, ExitStatus, Resource, SpawnOptions, Worker, WorkerContext, Zygote};

const HELPER: &str = "PARALLEL_ZYGOTE_HELPER";

fn main() {
    if let Ok(scenario) = std::env::var(HELPER) {
        helper(&scenario);
        return;
    }
    let zygote = parallel_zygote::start().expect("start the zygote before any thread");
    let args = Arguments::from_args();
    let z = |f: fn(&Zygote) -> Result<(), Failed>| {
        let zygote = zygote.clone();
        move || f(&zygote)
    };
    let tests = vec![
        Trial::test(
            "worker_echoes_over_its_channel",
            z(worker_echoes_over_its_channel),
        ),
        Trial::test(
            "zygote_names_itself_after_the_program",
            z(zygote_names_itself_after_the_program),
        ),
        Trial::test(
            "abandoned_spawn_kills_its_worker",
            z(abandoned_spawn_kills_its_worker),
        ),
        Trial::test(
            "burst_spawned_workers_hold_only_their_own_channel",
            z(burst_spawned_workers_hold_only_their_own_channel),
        ),
        Trial::test(
            "thousand_spawns_in_a_row_leak_no_fds_and_no_zombies",
            || {
                // In a process of its own: other tests open and close descriptors
                // concurrently, which would blur the count.
                let mut child = run_helper("thousand-spawns");
                let output = read_line(&mut child);
                let status = child.wait()?;
                check(
                    status.success() && output.starts_with("ok"),
                    format!("helper said: {output}"),
                )?;
                eprintln!("    {output}");
                Ok(())
            },
        ),
        Trial::test(
            "exit_code_signal_and_core_dump_are_reported",
            z(exit_code_signal_and_core_dump_are_reported),
        ),
        Trial::test(
            "panicking_boot_exits_with_101",
            z(panicking_boot_exits_with_101),
        ),
        Trial::test(
            "two_hundred_workers_alive_at_once",
            z(two_hundred_workers_alive_at_once),
        ),
        Trial::test(
            "workers_exiting_at_once_all_have_their_exit_reported",
            z(workers_exiting_at_once_all_have_their_exit_reported),
        ),
        Trial::test(
            "kill_reaches_only_the_live_worker",
            z(kill_reaches_only_the_live_worker),
        ),
        Trial::test(
            "dropping_a_worker_handle_kills_it",
            z(dropping_a_worker_handle_kills_it),
        ),
        Trial::test(
            "tampered_entry_is_refused_and_not_run",
            z(tampered_entry_is_refused_and_not_run),
        ),
        Trial::test(
            "derived_snapshot_workers_see_init_state",
            z(derived_snapshot_workers_see_init_state),
        ),
        Trial::test(
            "snapshot_whose_init_leaves_a_thread_running_fails",
            z(snapshot_whose_init_leaves_a_thread_running_fails),
        ),
        Trial::test(
            "snapshot_whose_init_joins_its_thread_serves",
            z(snapshot_whose_init_joins_its_thread_serves),
        ),
        Trial::test(
            "snapshot_whose_init_panics_fails",
            z(snapshot_whose_init_panics_fails),
        ),
        Trial::test("user_fds_reach_the_worker", z(user_fds_reach_the_worker)),
        Trial::test(
            "rlimits_and_name_apply_in_the_worker",
            z(rlimits_and_name_apply_in_the_worker),
        ),
        Trial::test(
            "locked_memory_limit_applies_in_the_worker",
            z(locked_memory_limit_applies_in_the_worker),
        ),
        Trial::test(
            "spawn_is_usable_from_many_threads",
            z(spawn_is_usable_from_many_threads),
        ),
        Trial::test(
            "fork_only_start_from_a_multithreaded_process_is_refused",
            fork_only_start_from_a_multithreaded_process_is_refused,
        ),
        Trial::test(
            "parent_sigkill_takes_zygote_and_workers_down_within_1s",
            parent_sigkill_takes_zygote_and_workers_down_within_1s,
        ),
        Trial::test(
            "zygote_sigkill_makes_next_spawn_fail_promptly",
            zygote_sigkill_makes_next_spawn_fail_promptly,
        ),
        Trial::test(
            "dropping_the_last_handle_shuts_the_zygote_down",
            dropping_the_last_handle_shuts_the_zygote_down,
        ),
        Trial::test("killed_zygote_is_reaped_and_its_reader_ends", || {
            helper_says_ok("reap-killed-zygote")
        }),
        Trial::test("dropped_zygote_is_reaped_and_its_reader_ends", || {
            helper_says_ok("reap-dropped-zygote")
        }),
        Trial::test("second_start_returns_the_same_zygote", || {
            helper_says_ok("start-twice")
        }),
        Trial::test("start_after_the_zygote_was_killed_starts_a_new_one", || {
            helper_says_ok("start-after-kill")
        }),
        Trial::test(
            "start_after_the_last_handle_dropped_starts_a_new_one",
            || helper_says_ok("start-after-drop"),
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

fn exit_with(code: i32) -> ! {
    std::process::exit(code)
}

// ---------------------------------------------------------------- in-process

fn worker_echoes_over_its_channel(zygote: &Zygote) -> Result<(), Failed> {
    let mut worker = zygote.spawn(|mut ctx: WorkerContext| {
        let mut buf = [0u8; 5];
        ctx.channel.read_exact(&mut buf).unwrap();
        buf.reverse();
        ctx.channel.write_all(&buf).unwrap();
    })?;
    check(worker.process.pid() > 0, "worker has a pid")?;
    worker.channel.write_all(b"hello")?;
    let mut answer = [0u8; 5];
    worker.channel.read_exact(&mut answer)?;
    check(&answer == b"olleh", format!("echo came back as {answer:?}"))?;
    check(
        worker.process.wait()? == ExitStatus::Exited(0),
        "clean exit",
    )
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Children of `pid` in state Z (zombie), read from /proc.
fn zombie_children(pid: i32) -> Vec<i32> {
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // Fields after the ")" that closes the command name: state ppid ...
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let mut fields = rest.split(' ');
        let state = fields.next().unwrap_or("");
        let ppid: i32 = fields.next().unwrap_or("0").parse().unwrap_or(0);
        if ppid == pid && state == "Z" {
            zombies.push(child);
        }
    }
    zombies
}

fn thousand_spawns_in_a_row_leak_no_fds_and_no_zombies(zygote: &Zygote) -> Result<(), Failed> {
    // Warm up once so lazily opened descriptors are not counted as leaks.
    zygote.spawn(|_ctx: WorkerContext| {})?.process.wait()?;
    let before = open_fds();
    let started = Instant::now();
    for i in 0..1000 {
        let worker = zygote.spawn(|_ctx: WorkerContext| {})?;
        let status = worker.process.wait()?;
        check(
            status == ExitStatus::Exited(0),
            format!("spawn {i}: {status}"),
        )?;
    }
    let elapsed = started.elapsed();
    // The reader thread completes the exit slot before the zygote's socket
    // buffer is drained of anything else; no descriptor is in flight now.
    let after = open_fds();
    check(
        after == before,
        format!("parent fds went from {before} to {after} over 1000 spawns"),
    )?;
    let zombies = zombie_children(zygote.pid());
    check(
        zombies.is_empty(),
        format!("zombies left under the zygote: {zombies:?}"),
    )?;
    println!(
        "ok: 1000 spawn+exit round trips in {elapsed:?} ({:?} each), fds {before} -> {after}",
        elapsed / 1000
    );
    Ok(())
}

fn exit_code_signal_and_core_dump_are_reported(zygote: &Zygote) -> Result<(), Failed> {
    let worker = zygote.spawn(|_ctx: WorkerContext| exit_with(7))?;
    check(
        worker.process.wait()? == ExitStatus::Exited(7),
        "exit code 7",
    )?;

    let worker = zygote.spawn(|_ctx: WorkerContext| {
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).unwrap();
    })?;
    let status = worker.process.wait()?;
    check(
        status
            == ExitStatus::Signaled {
                signal: libc::SIGTERM,
                core_dumped: false,
            },
        format!("SIGTERM reported as {status}"),
    )?;

    // A core dump needs RLIMIT_CORE above zero; whether the kernel writes one
    // depends on core_pattern, so the flag is checked against what the kernel
    // says it does: a pattern starting with '|' pipes to a helper and still sets it.
    let options = SpawnOptions::default().limit(Resource::CoreSize, u64::MAX, u64::MAX);
    // The core file lands in the worker's working directory: a temp dir, not the repo.
    let worker = zygote.spawn_with(
        |_ctx: WorkerContext| {
            let _ = std::env::set_current_dir(std::env::temp_dir());
            std::process::abort()
        },
        options,
        Vec::new(),
    );
    let status = match worker {
        Ok(worker) => worker.process.wait()?,
        Err(error) => return Err(format!("spawn with RLIMIT_CORE failed: {error}").into()),
    };
    match status {
        ExitStatus::Signaled {
            signal: libc::SIGABRT,
            core_dumped,
        } => {
            let without = zygote.spawn_with(
                |_ctx: WorkerContext| std::process::abort(),
                SpawnOptions::default().limit(Resource::CoreSize, 0, 0),
                Vec::new(),
            )?;
            let status_without = without.process.wait()?;
            check(
                status_without
                    == ExitStatus::Signaled {
                        signal: libc::SIGABRT,
                        core_dumped: false,
                    },
                format!("abort with RLIMIT_CORE=0 reported as {status_without}"),
            )?;
            eprintln!("    abort with cores allowed: core_dumped = {core_dumped}");
            Ok(())
        }
        other => Err(format!("abort reported as {other}").into()),
    }
}

fn panicking_boot_exits_with_101(zygote: &Zygote) -> Result<(), Failed> {
    let worker = zygote.spawn(|_ctx: WorkerContext| panic!("boom (expected by the test)"))?;
    let status = worker.process.wait()?;
    check(
        status == ExitStatus::Exited(parallel_zygote::PANIC_EXIT_CODE),
        format!("panic reported as {status}"),
    )
}

/// `count` workers, each alive (it said so) and waiting for the parent to
/// hang up its channel, then exiting.
fn workers_waiting_for_hang_up(zygote: &Zygote, count: usize) -> Result<Vec<Worker>, Failed> {
    let mut workers = Vec::new();
    for _ in 0..count {
        workers.push(zygote.spawn(|mut ctx: WorkerContext| {
            ctx.channel.write_all(b"!").unwrap();
            let mut rest = Vec::new();
            let _ = ctx.channel.read_to_end(&mut rest);
        })?);
    }
    for worker in &mut workers {
        let mut byte = [0u8];
        worker.channel.read_exact(&mut byte)?;
    }
    Ok(workers)
}

fn two_hundred_workers_alive_at_once(zygote: &Zygote) -> Result<(), Failed> {
    let workers = workers_waiting_for_hang_up(zygote, 200)?;
    let alive = workers
        .iter()
        .filter(|w| std::path::Path::new(&format!("/proc/{}", w.process.pid())).exists())
        .count();
    check(alive == 200, format!("{alive} of 200 workers alive"))?;
    for worker in workers {
        worker.channel.shutdown(std::net::Shutdown::Both)?;
        check(
            worker.process.wait()?.success(),
            "worker exits when its channel closes",
        )?;
    }
    Ok(())
}

/// The zygote reaps each exited child by the pid its SIGCHLD names; exits
/// at the same moment merge their SIGCHLDs into one, and those it did not
/// name must still be reaped and reported (by the zygote's sweep).
fn workers_exiting_at_once_all_have_their_exit_reported(zygote: &Zygote) -> Result<(), Failed> {
    const WORKERS: usize = 100;
    let workers = workers_waiting_for_hang_up(zygote, WORKERS)?;
    // All hang-ups in one burst, so the exits land together.
    for worker in &workers {
        worker.channel.shutdown(std::net::Shutdown::Both)?;
    }
    for (index, worker) in workers.into_iter().enumerate() {
        match worker.process.wait_timeout(Duration::from_secs(30)) {
            Some(status) => check(status?.success(), format!("worker {index} exited cleanly"))?,
            None => {
                return Err(format!("worker {index}'s exit was not reported within 30 s").into())
            }
        }
    }
    Ok(())
}

fn zygote_names_itself_after_the_program(zygote: &Zygote) -> Result<(), Failed> {
    let program = std::fs::read_to_string("/proc/self/comm")?;
    let expected = format!(
        "{}-zygote",
        program.trim().chars().take(8).collect::<String>()
    );
    // The zygote names itself as it starts, which can trail start()'s
    // return on a loaded machine: give it time.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let name = loop {
        let name = std::fs::read_to_string(format!("/proc/{}/comm", zygote.pid()))?;
        if name.trim() == expected || std::time::Instant::now() > deadline {
            break name;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    check(
        name.trim() == expected,
        format!(
            "ps shows the zygote as {:?}, expected {expected:?}",
            name.trim()
        ),
    )
}

fn abandoned_spawn_kills_its_worker(zygote: &Zygote) -> Result<(), Failed> {
    let entry = parallel_zygote::Entry::<WorkerContext>::new(|_ctx: WorkerContext| {
        std::thread::sleep(Duration::from_secs(60))
    })?;
    let (mut channel, pending) =
        zygote.spawn_entry(entry.wire(), SpawnOptions::default(), Vec::new())?;
    // Nobody will ever wait for this worker: it must not outlive the request.
    drop(pending);
    channel.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut rest = Vec::new();
    match channel.read_to_end(&mut rest) {
        Ok(_) => Ok(()), // EOF: the worker is gone
        Err(error) => {
            Err(format!("worker of an abandoned spawn still holds its channel: {error}").into())
        }
    }
}

fn burst_spawned_workers_hold_only_their_own_channel(zygote: &Zygote) -> Result<(), Failed> {
    // Fifty requests sent back to back, so the zygote reads several (with
    // their descriptors) before it forks the first worker. A worker that kept
    // another's channel open would delay that one's EOF until it exits.
    let entry = parallel_zygote::Entry::<WorkerContext>::new(|mut ctx: WorkerContext| {
        let open = std::fs::read_dir("/proc/self/fd").unwrap().count() - 1; // minus read_dir's own
        ctx.channel.write_all(&(open as u32).to_le_bytes()).unwrap();
        let mut rest = Vec::new();
        let _ = ctx.channel.read_to_end(&mut rest);
    })?;
    let spawned: Vec<_> = (0..50)
        .map(|_| zygote.spawn_entry(entry.wire(), SpawnOptions::default(), Vec::new()))
        .collect::<Result<_, _>>()?;
    let mut counts = Vec::new();
    let mut workers = Vec::new();
    for (mut channel, pending) in spawned {
        let mut count = [0u8; 4];
        channel.read_exact(&mut count)?;
        counts.push(u32::from_le_bytes(count));
        workers.push((channel, pending.wait()?));
    }
    let first = counts[0];
    check(
        counts.iter().all(|&c| c == first),
        format!("open descriptors per worker differ: {counts:?}"),
    )?;
    for (channel, process) in workers {
        drop(channel);
        check(process.wait()?.success(), "worker exits at EOF")?;
    }
    Ok(())
}

fn kill_reaches_only_the_live_worker(zygote: &Zygote) -> Result<(), Failed> {
    let mut worker = zygote.spawn(|mut ctx: WorkerContext| {
        let mut rest = Vec::new();
        let _ = ctx.channel.read_to_end(&mut rest);
    })?;
    worker.process.kill(libc::SIGKILL)?;
    let status = worker.process.wait()?;
    check(
        status
            == ExitStatus::Signaled {
                signal: libc::SIGKILL,
                core_dumped: false,
            },
        format!("{status}"),
    )?;
    // Killing again after it was reaped is a no-op, not an error.
    worker.process.kill(libc::SIGKILL)?;
    let mut rest = Vec::new();
    worker.channel.read_to_end(&mut rest)?;
    check(rest.is_empty(), "the channel reached EOF")
}

fn dropping_a_worker_handle_kills_it(zygote: &Zygote) -> Result<(), Failed> {
    let worker = zygote.spawn(|_ctx: WorkerContext| std::thread::sleep(Duration::from_secs(60)))?;
    let pid = worker.process.pid();
    drop(worker);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(format!("worker {pid} still exists 2 s after its handle was dropped").into())
}

static RAN_MARKER: &str = "/tmp/parallel-zygote-tampered-entry-ran";

fn tampered_entry_is_refused_and_not_run(zygote: &Zygote) -> Result<(), Failed> {
    let _ = std::fs::remove_file(RAN_MARKER);
    let entry = parallel_zygote::Entry::<WorkerContext>::new(|_ctx: WorkerContext| {
        std::fs::write(RAN_MARKER, b"ran").unwrap();
    })?;
    let mut wire = entry.wire();
    wire.tag[0] ^= 1;
    let (_channel, pending) = zygote.spawn_entry(wire, SpawnOptions::default(), Vec::new())?;
    match pending.wait() {
        Err(Error::SpawnFailed(failure)) => check(
            failure.message.contains("bad tag"),
            format!("failure says: {failure}"),
        )?,
        Ok(process) => return Err(format!("tampered entry spawned pid {}", process.pid()).into()),
        Err(other) => return Err(format!("unexpected error: {other}").into()),
    }
    // A random offset with a valid-looking length is refused too.
    let mut random = entry.wire();
    random.offset = random.offset.wrapping_add(64);
    let (_channel, pending) = zygote.spawn_entry(random, SpawnOptions::default(), Vec::new())?;
    check(
        matches!(pending.wait(), Err(Error::SpawnFailed(_))),
        "a moved offset is refused",
    )?;
    // The untampered entry does run, so the marker check above means something.
    let (_channel, pending) =
        zygote.spawn_entry(entry.wire(), SpawnOptions::default(), Vec::new())?;
    check(pending.wait()?.wait()?.success(), "the genuine entry runs")?;
    check(
        std::path::Path::new(RAN_MARKER).exists(),
        "genuine entry wrote the marker",
    )?;
    std::fs::remove_file(RAN_MARKER)?;
    Ok(())
}

static TABLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// Spawns a worker of `zygote` that reports the length of `TABLE` it sees.
fn table_len_seen_by_a_worker_of(zygote: &Zygote) -> Result<u32, Failed> {
    let mut worker = zygote.spawn(|mut ctx: WorkerContext| {
        let table = TABLE.get().map_or(0, |t| t.len()) as u32;
        ctx.channel.write_all(&table.to_le_bytes()).unwrap();
    })?;
    let mut len = [0u8; 4];
    worker.channel.read_exact(&mut len)?;
    Ok(u32::from_le_bytes(len))
}

fn derived_snapshot_workers_see_init_state(zygote: &Zygote) -> Result<(), Failed> {
    let snapshot = zygote.snapshot(
        |args: Vec<u8>| {
            TABLE.set(args.repeat(1000)).unwrap();
        },
        b"warm".to_vec(),
    )?;
    check(
        snapshot.pid() != zygote.pid(),
        "the snapshot is a process of its own",
    )?;
    for _ in 0..3 {
        let seen = table_len_seen_by_a_worker_of(&snapshot)?;
        check(seen == 4000, format!("worker saw a table of {seen} bytes"))?;
    }
    // The main zygote never ran init.
    check(
        table_len_seen_by_a_worker_of(zygote)? == 0,
        "main zygote's workers do not see the snapshot's state",
    )?;
    // Two snapshots coexist.
    let second = zygote.snapshot(|_args: Vec<u8>| {}, Vec::new())?;
    check(
        second.pid() != snapshot.pid(),
        "second snapshot is another process",
    )?;
    let pid = snapshot.pid();
    drop(snapshot);
    wait_gone(&[pid], Duration::from_secs(2))
        .map_err(|s| format!("snapshot survived its handle: {s:?}"))?;
    Ok(())
}

fn snapshot_whose_init_leaves_a_thread_running_fails(zygote: &Zygote) -> Result<(), Failed> {
    let result = zygote.snapshot(
        |_args: Vec<u8>| {
            // What a runtime, a logger or async-io's reactor would leave behind.
            std::thread::spawn(|| loop {
                std::thread::sleep(Duration::from_secs(1));
            });
        },
        Vec::new(),
    );
    match result {
        Err(error @ Error::SnapshotFailed { status, .. }) => {
            check(
                status == ExitStatus::Exited(parallel_zygote::SNAPSHOT_THREADS_EXIT_CODE),
                format!("the snapshot {status}"),
            )?;
            let message = error.to_string();
            check(
                message.contains("left threads running")
                    && message.contains("single-threaded")
                    && message.contains("do not start runtimes"),
                format!("message says what to do: {message}"),
            )
        }
        Err(other) => Err(format!("wrong error: {other}").into()),
        Ok(snapshot) => Err(format!(
            "a snapshot with a thread left running serves as pid {}",
            snapshot.pid()
        )
        .into()),
    }
}

fn snapshot_whose_init_joins_its_thread_serves(zygote: &Zygote) -> Result<(), Failed> {
    // A thread that init joins is gone when init returns: not a reason to fail.
    let snapshot = zygote.snapshot(
        |args: Vec<u8>| {
            let table = std::thread::spawn(move || args.repeat(10)).join().unwrap();
            TABLE.set(table).unwrap();
        },
        b"joined".to_vec(),
    )?;
    let seen = table_len_seen_by_a_worker_of(&snapshot)?;
    check(seen == 60, format!("worker saw a table of {seen} bytes"))
}

fn snapshot_whose_init_panics_fails(zygote: &Zygote) -> Result<(), Failed> {
    match zygote.snapshot(
        |_args: Vec<u8>| panic!("init boom (expected by the test)"),
        Vec::new(),
    ) {
        Err(error @ Error::SnapshotFailed { status, .. }) => {
            check(
                status == ExitStatus::Exited(parallel_zygote::PANIC_EXIT_CODE),
                format!("the snapshot {status}"),
            )?;
            let message = error.to_string();
            check(
                message.contains("init panicked"),
                format!("message says what happened: {message}"),
            )
        }
        Err(other) => Err(format!("wrong error: {other}").into()),
        Ok(snapshot) => Err(format!(
            "a snapshot whose init panicked serves as pid {}",
            snapshot.pid()
        )
        .into()),
    }
}

fn user_fds_reach_the_worker(zygote: &Zygote) -> Result<(), Failed> {
    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let path = std::env::temp_dir().join(format!("parallel-zygote-fd-{}", std::process::id()));
    std::fs::write(&path, b"from a file")?;
    let file = std::fs::File::open(&path)?;
    let worker = zygote.spawn_with(
        |ctx: WorkerContext| {
            let mut fds = ctx.fds.into_iter();
            let mut socket = std::os::unix::net::UnixStream::from(fds.next().unwrap());
            let mut file = std::fs::File::from(fds.next().unwrap());
            let mut text = String::new();
            file.read_to_string(&mut text).unwrap();
            socket.write_all(text.as_bytes()).unwrap();
        },
        SpawnOptions::default(),
        vec![OwnedFd::from(theirs), OwnedFd::from(file)],
    )?;
    let mut text = String::new();
    ours.read_to_string(&mut text)?;
    std::fs::remove_file(&path)?;
    check(
        text == "from a file",
        format!("worker read {text:?} through the passed fds"),
    )?;
    check(worker.process.wait()?.success(), "clean exit")
}

fn rlimits_and_name_apply_in_the_worker(zygote: &Zygote) -> Result<(), Failed> {
    let options = SpawnOptions::default()
        .name("pz-test-worker")
        .limit(Resource::OpenFiles, 77, 77);
    let mut worker = zygote.spawn_with(
        |mut ctx: WorkerContext| {
            let (soft, _) =
                nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
            let name = std::fs::read_to_string("/proc/self/comm").unwrap();
            write!(ctx.channel, "{soft} {}", name.trim()).unwrap();
        },
        options,
        Vec::new(),
    )?;
    let mut text = String::new();
    worker.channel.read_to_string(&mut text)?;
    check(
        text == "77 pz-test-worker",
        format!("worker reported {text:?}"),
    )
}

fn locked_memory_limit_applies_in_the_worker(zygote: &Zygote) -> Result<(), Failed> {
    const MIB: u64 = 1 << 20;
    // Lowering is always allowed; raising the hard limit needs root, so stay
    // at or under the hard limit this process (and so the zygote) has.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)?;
    let limit = MIB.min(hard);
    let mut worker = zygote.spawn_with(
        |mut ctx: WorkerContext| {
            let (soft, hard) =
                nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
                    .unwrap();
            write!(ctx.channel, "{soft} {hard}").unwrap();
        },
        SpawnOptions::default().limit(Resource::LockedMemory, limit, limit),
        Vec::new(),
    )?;
    let mut text = String::new();
    worker.channel.read_to_string(&mut text)?;
    check(
        text == format!("{limit} {limit}"),
        format!("worker reported RLIMIT_MEMLOCK {text:?}, expected {limit} for both"),
    )?;
    check(worker.process.wait()?.success(), "clean exit")?;

    // A limit setrlimit refuses (here a soft limit above the hard one) fails
    // the spawn in the child, before its entry runs: the spawn itself fails,
    // naming the limit and the OS error.
    match zygote.spawn_with(
        |_ctx: WorkerContext| exit_with(0),
        SpawnOptions::default().limit(Resource::LockedMemory, 2 * limit + 1, limit),
        Vec::new(),
    ) {
        Ok(worker) => Err(format!(
            "a refused RLIMIT_MEMLOCK started worker {}",
            worker.process.pid()
        )
        .into()),
        Err(error) => check(
            error.errno() == Some(libc::EINVAL)
                && error
                    .to_string()
                    .contains("setting the resource limit LockedMemory"),
            format!(
                "a refused RLIMIT_MEMLOCK reported as {error} ({:?})",
                error.errno()
            ),
        ),
    }
}

fn spawn_is_usable_from_many_threads(zygote: &Zygote) -> Result<(), Failed> {
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let zygote = zygote.clone();
            std::thread::spawn(move || -> Result<(), String> {
                for _ in 0..25 {
                    let worker = zygote
                        .spawn(|_ctx: WorkerContext| exit_with(3))
                        .map_err(|e| e.to_string())?;
                    let status = worker.process.wait().map_err(|e| e.to_string())?;
                    if status != ExitStatus::Exited(3) {
                        return Err(format!("got {status}"));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for thread in threads {
        thread.join().map_err(|_| "thread panicked")??;
    }
    Ok(())
}

fn fork_only_start_from_a_multithreaded_process_is_refused() -> Result<(), Failed> {
    // In a process of its own: this one started its zygote already, and a
    // second start would hand out another handle on it.
    helper_says_ok("start-multithreaded")
}

/// The helper scenario: a first start that must fork (`StartMethod::Fork`),
/// made with a thread running, is refused with a message naming what the
/// user called. (The default method starts by exec then: tests/exec_start.rs.)
fn first_start_with_a_thread_running() -> Result<String, String> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let _ = stopped.recv();
    });
    let fork = parallel_zygote::StartMethod::Fork;
    let plain = parallel_zygote::Builder::new().method(fork).start();
    let adapter = parallel_zygote::Builder::new()
        .caller("parallel_tokio::init()")
        .method(fork)
        .start();
    stop.send(()).unwrap();
    thread.join().unwrap();
    let plain = match plain {
        Err(error @ Error::MultiThreaded { threads: 2, .. }) => error.to_string(),
        Err(other) => return Err(format!("wrong error: {other}")),
        Ok(_) => return Err("start succeeded with several threads".into()),
    };
    let adapter = match adapter {
        Err(error @ Error::MultiThreaded { threads: 2, .. }) => error.to_string(),
        Err(other) => return Err(format!("wrong error from the adapter's entry: {other}")),
        Ok(_) => return Err("the adapter's start succeeded with several threads".into()),
    };
    if !plain.starts_with("parallel_zygote::start() was asked to fork the zygote")
        || !plain.contains("first thing in main")
    {
        return Err(format!("message does not say what to do: {plain}"));
    }
    if !adapter.starts_with("parallel_tokio::init() was asked to fork the zygote") {
        return Err(format!(
            "message does not name the adapter's entry: {adapter}"
        ));
    }
    Ok(adapter)
}

// ------------------------------------------------------------ helper processes

fn run_helper(scenario: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .env(HELPER, scenario)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the helper process")
}

fn read_line(child: &mut std::process::Child) -> String {
    let mut line = Vec::new();
    let stdout = child.stdout.as_mut().unwrap();
    let mut byte = [0u8];
    while stdout.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Waits until none of `pids` exists (or is only a zombie about to vanish).
fn wait_gone(pids: &[i32], within: Duration) -> Result<(), Vec<i32>> {
    let deadline = Instant::now() + within;
    loop {
        let alive: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|stat| !stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'))
                    .unwrap_or(false)
            })
            .collect();
        if alive.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(alive);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn parent_sigkill_takes_zygote_and_workers_down_within_1s() -> Result<(), Failed> {
    let mut child = run_helper("parent-with-workers");
    let pids: Vec<i32> = read_line(&mut child)
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    check(
        pids.len() == 11,
        format!("helper reported zygote + 10 workers, got {pids:?}"),
    )?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let killed = Instant::now();
    child.wait()?;
    match wait_gone(&pids, Duration::from_secs(1)) {
        Ok(()) => {
            eprintln!(
                "    zygote and 10 workers gone {:?} after the parent's SIGKILL",
                killed.elapsed()
            );
            Ok(())
        }
        Err(survivors) => {
            Err(format!("survivors 1 s after the parent's SIGKILL: {survivors:?}").into())
        }
    }
}

fn zygote_sigkill_makes_next_spawn_fail_promptly() -> Result<(), Failed> {
    let mut child = run_helper("kill-own-zygote");
    let output = read_line(&mut child);
    let status = child.wait()?;
    check(status.success(), format!("helper failed: {output}"))?;
    check(output.starts_with("ok"), output)
}

fn dropping_the_last_handle_shuts_the_zygote_down() -> Result<(), Failed> {
    let mut child = run_helper("drop-last-handle");
    let output = read_line(&mut child);
    let status = child.wait()?;
    check(
        status.success() && output.starts_with("ok"),
        format!("helper said: {output}"),
    )
}

/// Runs `scenario` in a fresh copy of this binary; passes when it prints a
/// line starting with "ok" and exits successfully.
fn helper_says_ok(scenario: &str) -> Result<(), Failed> {
    let mut child = run_helper(scenario);
    let output = read_line(&mut child);
    let status = child.wait()?;
    check(
        status.success() && output.starts_with("ok"),
        format!("helper said: {output}"),
    )?;
    eprintln!("    {output}");
    Ok(())
}

/// The state letter of `pid` while it is an unreaped child of this process
/// (running, sleeping, or a zombie: "Z"), `None` once it has been reaped.
fn child_state(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.to_string();
    let ppid: u32 = fields.next()?.parse().ok()?;
    (ppid == std::process::id()).then_some(state)
}

/// Waits until `pid`, a child of this process, has been reaped (a zombie
/// does not count); gives back its last state otherwise.
fn wait_reaped(pid: i32, within: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        match child_state(pid) {
            None => return Ok(started.elapsed()),
            Some(state) if started.elapsed() > within => return Err(state),
            Some(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Waits until this process has `threads` threads; gives back the last count otherwise.
fn wait_threads(threads: usize, within: Duration) -> Result<(), usize> {
    let deadline = Instant::now() + within;
    loop {
        let now = parallel_zygote::count_threads().unwrap();
        if now == threads {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(now);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sigkill(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

fn helper(scenario: &str) {
    if scenario == "start-multithreaded" {
        match first_start_with_a_thread_running() {
            Ok(message) => println!("ok: {message}"),
            Err(failure) => println!("{failure}"),
        }
        return;
    }
    let zygote = parallel_zygote::start().expect("helper starts its zygote");
    match scenario {
        "parent-with-workers" => {
            let workers: Vec<_> = (0..10)
                .map(|_| {
                    zygote
                        .spawn(|_ctx: WorkerContext| std::thread::sleep(Duration::from_secs(120)))
                        .unwrap()
                })
                .collect();
            let mut line = zygote.pid().to_string();
            for worker in &workers {
                line += &format!(" {}", worker.process.pid());
            }
            println!("{line}");
            std::thread::sleep(Duration::from_secs(120));
        }
        "thousand-spawns" => {
            if let Err(failure) = thousand_spawns_in_a_row_leak_no_fds_and_no_zombies(&zygote) {
                println!("{failure:?}");
            }
        }
        "kill-own-zygote" => {
            let worker = zygote
                .spawn(|_ctx: WorkerContext| std::thread::sleep(Duration::from_secs(120)))
                .unwrap();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(zygote.pid()),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            // The worker dies with its zygote (PDEATHSIG).
            if let Err(survivors) = wait_gone(&[worker.process.pid()], Duration::from_secs(1)) {
                println!("worker survived its zygote: {survivors:?}");
                return;
            }
            // Its wait does not hang: it reports the zygote gone.
            match worker.process.wait_timeout(Duration::from_secs(2)) {
                Some(Err(Error::ZygoteGone { .. })) => {}
                other => {
                    println!("worker wait after zygote death gave {other:?}");
                    return;
                }
            }
            let started = Instant::now();
            match zygote.spawn(|_ctx: WorkerContext| {}) {
                Err(Error::ZygoteGone { reason, .. })
                    if started.elapsed() < Duration::from_millis(500) =>
                {
                    println!("ok: next spawn failed in {:?}: {reason}", started.elapsed())
                }
                Err(other) => println!("wrong error: {other}"),
                Ok(_) => println!("spawn succeeded on a dead zygote"),
            }
        }
        "drop-last-handle" => {
            let pid = zygote.pid();
            let worker = zygote
                .spawn(|_ctx: WorkerContext| std::thread::sleep(Duration::from_secs(120)))
                .unwrap();
            let worker_pid = worker.process.pid();
            let _detached = worker.process.detach();
            drop(worker.channel);
            drop(zygote);
            drop(_detached);
            match wait_gone(&[pid, worker_pid], Duration::from_secs(2)) {
                Ok(()) => println!("ok"),
                Err(survivors) => println!("survivors: {survivors:?}"),
            }
        }
        "reap-killed-zygote" => {
            // Only this thread and the zygote's reader thread exist.
            let pid = zygote.pid();
            let threads = parallel_zygote::count_threads().unwrap();
            if threads != 2 {
                println!("expected main + reader thread, counted {threads}");
                return;
            }
            sigkill(pid);
            let reaped_in = match wait_reaped(pid, Duration::from_secs(5)) {
                Ok(elapsed) => elapsed,
                Err(state) => {
                    println!("the killed zygote {pid} is not reaped after 5 s: state {state}");
                    return;
                }
            };
            if let Err(threads) = wait_threads(1, Duration::from_secs(5)) {
                println!("the reader thread outlived its zygote: {threads} threads");
                return;
            }
            let killed = ExitStatus::Signaled {
                signal: 9,
                core_dumped: false,
            };
            if zygote.exit_status() != Some(killed) {
                println!("exit status recorded as {:?}", zygote.exit_status());
                return;
            }
            match zygote.spawn(|_ctx: WorkerContext| {}) {
                Err(error @ Error::ZygoteGone { status, .. }) if status == Some(killed) => {
                    let message = error.to_string();
                    if message.contains("killed by signal 9") && message.contains(&pid.to_string())
                    {
                        println!("ok: reaped in {reaped_in:?}; then: {message}");
                    } else {
                        println!("the error does not say how the zygote {pid} ended: {message}");
                    }
                }
                Err(other) => println!("wrong error: {other}"),
                Ok(_) => println!("spawn succeeded on a dead zygote"),
            }
        }
        "reap-dropped-zygote" => {
            let pid = zygote.pid();
            let worker = zygote
                .spawn(|_ctx: WorkerContext| std::thread::sleep(Duration::from_secs(120)))
                .unwrap();
            drop(worker);
            drop(zygote);
            let reaped_in = match wait_reaped(pid, Duration::from_secs(5)) {
                Ok(elapsed) => elapsed,
                Err(state) => {
                    println!("the shut down zygote {pid} is not reaped after 5 s: state {state}");
                    return;
                }
            };
            match wait_threads(1, Duration::from_secs(5)) {
                Ok(()) => println!("ok: reaped in {reaped_in:?}, reader thread ended"),
                Err(threads) => {
                    println!("the reader thread outlived its zygote: {threads} threads")
                }
            }
        }
        "start-twice" => {
            // The second line of this process's main, as in `init(); init();`.
            let again = match parallel_zygote::start() {
                Ok(again) => again,
                Err(error) => {
                    println!("the second start failed: {error}");
                    return;
                }
            };
            if again.pid() != zygote.pid() {
                println!("a second zygote: {} and {}", zygote.pid(), again.pid());
                return;
            }
            // So does an adapter's entry point, whatever the thread count.
            match parallel_zygote::Builder::new()
                .caller("parallel_tokio::init()")
                .start()
            {
                Ok(third) if third.pid() == zygote.pid() => {}
                other => {
                    println!("a third start through the builder gave {other:?}");
                    return;
                }
            }
            let status = again
                .spawn(|_ctx: WorkerContext| exit_with(7))
                .and_then(|worker| worker.process.wait());
            if !matches!(status, Ok(ExitStatus::Exited(7))) {
                println!("spawn through the second handle gave {status:?}");
                return;
            }
            // The handles share one zygote: dropping the first keeps it serving.
            drop(zygote);
            let status = again
                .spawn(|_ctx: WorkerContext| exit_with(8))
                .and_then(|worker| worker.process.wait());
            match status {
                Ok(ExitStatus::Exited(8)) => {
                    println!("ok: both starts gave zygote {}", again.pid())
                }
                other => println!("after dropping the first handle, spawn gave {other:?}"),
            }
        }
        "start-after-kill" => {
            let pid = zygote.pid();
            sigkill(pid);
            if let Err(state) = wait_reaped(pid, Duration::from_secs(5)) {
                println!("the killed zygote {pid} is not reaped after 5 s: state {state}");
                return;
            }
            // The old handle stays dead and says how the zygote died.
            match zygote.spawn(|_ctx: WorkerContext| {}) {
                Err(error @ Error::ZygoteGone { .. })
                    if error.to_string().contains("killed by signal 9") => {}
                other => {
                    println!("spawn on the dead zygote gave {other:?}");
                    return;
                }
            }
            // A new start replaces it (by fork again: the reader thread has
            // ended, so the process is single-threaded once more).
            let second = match parallel_zygote::start() {
                Ok(second) => second,
                Err(error) => {
                    println!("start after the zygote died failed: {error}");
                    return;
                }
            };
            if second.pid() == pid {
                println!("start handed out the dead zygote {pid}");
                return;
            }
            match parallel_zygote::Builder::new()
                .caller("parallel_tokio::init()")
                .start()
            {
                Ok(third) if third.pid() == second.pid() => {}
                other => {
                    println!("the adapter's entry gave {other:?}");
                    return;
                }
            }
            match second
                .spawn(|_ctx: WorkerContext| exit_with(9))
                .and_then(|worker| worker.process.wait())
            {
                Ok(ExitStatus::Exited(9)) => println!(
                    "ok: zygote {pid} killed, replaced by {} ({:?})",
                    second.pid(),
                    second.start_method()
                ),
                other => println!("spawn through the new zygote gave {other:?}"),
            }
        }
        "start-after-drop" => {
            let pid = zygote.pid();
            drop(zygote);
            if let Err(state) = wait_reaped(pid, Duration::from_secs(5)) {
                println!("the shut down zygote {pid} is not reaped after 5 s: state {state}");
                return;
            }
            match parallel_zygote::start().and_then(|second| {
                let worker = second.spawn(|_ctx: WorkerContext| exit_with(4))?;
                Ok((second.pid(), worker.process.wait()?))
            }) {
                Ok((second, ExitStatus::Exited(4))) if second != pid => {
                    println!("ok: zygote {pid} shut down, replaced by {second}")
                }
                other => println!("start after the zygote shut down gave {other:?}"),
            }
        }
        other => println!("unknown scenario {other}"),
    }
}
