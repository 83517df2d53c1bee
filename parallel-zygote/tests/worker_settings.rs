//! Per-worker settings and nested zygotes with the blocking client, real
//! processes: a refused setting fails the spawn naming it and its errno,
//! settings apply to a derived snapshot and its workers, a worker starts a
//! zygote of its own and the whole tree dies with the top parent, and a
//! snapshot's init may not start a zygote.
//!
//! Scenarios that must own their process tree run in a fresh copy of this
//! binary, chosen by the `PARALLEL_SETTINGS_HELPER` variable.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use parallel_zygote::{Error, Resource, SpawnOptions, WorkerContext, Zygote};

const HELPER: &str = "PARALLEL_SETTINGS_HELPER";

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
            "refused_settings_fail_the_spawn_naming_the_setting_and_errno",
            z(refused_settings_fail_the_spawn_naming_the_setting_and_errno),
        ),
        Trial::test(
            "settings_apply_to_a_snapshot_and_its_workers",
            z(settings_apply_to_a_snapshot_and_its_workers),
        ),
        Trial::test(
            "start_in_a_snapshot_init_is_refused_without_clone_advice",
            z(start_in_a_snapshot_init_is_refused_without_clone_advice),
        ),
        Trial::test(
            "worker_starts_two_workers_of_its_own_and_all_die_with_the_top_parent",
            worker_starts_two_workers_of_its_own_and_all_die_with_the_top_parent,
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
    // SAFETY: _exit ends the process at once.
    unsafe { libc::_exit(code) }
}

/// The spawn failure of `options`, or a test failure if the spawn worked.
fn spawn_error(zygote: &Zygote, options: SpawnOptions) -> Result<Error, Failed> {
    match zygote.spawn_with(|_ctx: WorkerContext| exit_with(0), options, Vec::new()) {
        Ok(worker) => Err(format!("worker {} started", worker.process.pid()).into()),
        Err(error) => Ok(error),
    }
}

fn refused_settings_fail_the_spawn_naming_the_setting_and_errno(
    zygote: &Zygote,
) -> Result<(), Failed> {
    // Fails in the child: reported over the setup pipe.
    let error = spawn_error(
        zygote,
        SpawnOptions::default().current_dir("/nope/not-here"),
    )?;
    let text = error.to_string();
    check(
        matches!(error, Error::SpawnFailed(_)) && error.errno() == Some(libc::ENOENT),
        format!("{error:?}"),
    )?;
    check(
        text.contains(
            "setting the working directory to /nope/not-here failed: No such file or directory",
        ),
        text,
    )?;

    // A limit setrlimit refuses (a soft limit above the hard one) now fails
    // the spawn too, naming the limit, rather than a bare exit code 126.
    let error = spawn_error(
        zygote,
        SpawnOptions::default().limit(Resource::LockedMemory, 2 << 20, 1 << 20),
    )?;
    let text = error.to_string();
    check(
        error.errno() == Some(libc::EINVAL)
            && text.contains(
                "setting the resource limit LockedMemory to soft 2097152 / hard 1048576 failed",
            ),
        format!("errno {:?}: {text}", error.errno()),
    )?;

    // Settings that can never work are refused before any fork.
    for (options, what) in [
        (
            SpawnOptions::default().env("", "x"),
            "environment variable name",
        ),
        (
            SpawnOptions::default().env("A", "nul\0inside"),
            "contains a NUL",
        ),
        (
            SpawnOptions::default().cpu_affinity([]),
            "empty set of CPUs",
        ),
        (
            SpawnOptions::default().cpu_affinity([1 << 20]),
            "CPU 1048576",
        ),
    ] {
        let error = spawn_error(zygote, options)?;
        check(
            error.errno() == Some(libc::EINVAL) && error.to_string().contains(what),
            format!("errno {:?}: {error}", error.errno()),
        )?;
    }

    // When not root, a uid change is refused with EPERM, naming it.
    if !nix::unistd::geteuid().is_root() {
        let error = spawn_error(zygote, SpawnOptions::default().uid(0))?;
        check(
            error.errno() == Some(libc::EPERM)
                && error
                    .to_string()
                    .contains("setting the user id to 0 (setuid) failed"),
            format!("errno {:?}: {error}", error.errno()),
        )?;
    }

    // The zygote reaped the failed children and still serves.
    let mut worker = zygote.spawn(|mut ctx: WorkerContext| {
        ctx.channel.write_all(b"fine").unwrap();
    })?;
    let mut text = String::new();
    worker.channel.read_to_string(&mut text)?;
    check(text == "fine", text)?;
    check(worker.process.wait()?.success(), "clean exit")
}

fn settings_apply_to_a_snapshot_and_its_workers(zygote: &Zygote) -> Result<(), Failed> {
    // A nice value is absolute (`setpriority`): two above this process's
    // own, which any user may set, whatever nice value the tests run at
    // (`nice cargo test` must not change the outcome).
    // SAFETY: getpriority takes integers and touches no memory.
    let nice = (unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) } + 2).min(19);
    let options = SpawnOptions::default()
        .env("PARALLEL_SNAPSHOT_SETTING", "from-the-snapshot")
        .current_dir("/")
        .nice(nice);
    let snapshot = zygote.snapshot_with(|_args: Vec<u8>| {}, Vec::new(), options)?;
    let mut worker = snapshot.spawn(|mut ctx: WorkerContext| {
        let value = std::env::var("PARALLEL_SNAPSHOT_SETTING").unwrap_or_default();
        let dir = std::env::current_dir().unwrap();
        // SAFETY: getpriority takes integers and touches no memory.
        let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        write!(ctx.channel, "{value} {} {nice}", dir.display()).unwrap();
    })?;
    let mut text = String::new();
    worker.channel.read_to_string(&mut text)?;
    check(
        text == format!("from-the-snapshot / {nice}"),
        format!("the snapshot's worker saw {text:?}"),
    )?;
    check(worker.process.wait()?.success(), "clean exit")
}

/// What `start` said inside the snapshot's init.
static INIT_START: Mutex<String> = Mutex::new(String::new());

fn start_in_a_snapshot_init_is_refused_without_clone_advice(zygote: &Zygote) -> Result<(), Failed> {
    let snapshot = zygote.snapshot(
        |_args: Vec<u8>| {
            let said = match parallel_zygote::start() {
                Ok(zygote) => format!("started zygote {}", zygote.pid()),
                Err(error @ Error::AlreadyStarted { .. }) => format!("refused: {error}"),
                Err(error) => format!("other error: {error}"),
            };
            *INIT_START.lock().unwrap() = said;
        },
        Vec::new(),
    )?;
    let mut worker = snapshot.spawn(|mut ctx: WorkerContext| {
        let said = INIT_START.lock().unwrap().clone();
        ctx.channel.write_all(said.as_bytes()).unwrap();
    })?;
    let mut said = String::new();
    worker.channel.read_to_string(&mut said)?;
    check(said.starts_with("refused: "), said.clone())?;
    check(
        said.contains("zygote process") && !said.to_lowercase().contains("clone"),
        said,
    )
}

// ------------------------------------------------------------ nested tree

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

/// Whether `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'))
        .unwrap_or(false)
}

/// Waits until none of `pids` is alive; gives back the survivors otherwise.
fn wait_gone(pids: &[i32], within: Duration) -> Result<(), Vec<i32>> {
    let deadline = Instant::now() + within;
    loop {
        let alive: Vec<i32> = pids.iter().copied().filter(|&pid| alive(pid)).collect();
        if alive.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(alive);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn worker_starts_two_workers_of_its_own_and_all_die_with_the_top_parent() -> Result<(), Failed> {
    let mut child = run_helper("nested-tree");
    let line = read_line(&mut child);
    let pids: Vec<i32> = line
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    check(
        pids.len() == 5,
        format!("helper reported zygote, worker, its zygote and 2 workers: {line:?}"),
    )?;
    check(
        pids.iter().all(|&pid| alive(pid)),
        format!("not all alive before the kill: {pids:?}"),
    )?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let killed = Instant::now();
    child.wait()?;
    match wait_gone(&pids, Duration::from_secs(2)) {
        Ok(()) => {
            eprintln!(
                "    zygote, worker, the worker's zygote and its 2 workers gone {:?} after the \
                 top parent's SIGKILL",
                killed.elapsed()
            );
            Ok(())
        }
        Err(survivors) => {
            Err(format!("survivors 2 s after the top parent's SIGKILL: {survivors:?}").into())
        }
    }
}

/// In a worker: starts the worker's own zygote, spawns two sleeping workers
/// from it, writes "zygote-pid worker-pid worker-pid" and sleeps.
fn nested_worker(mut ctx: WorkerContext) {
    let report = |ctx: &mut WorkerContext, text: String| {
        ctx.channel.write_all(text.as_bytes()).unwrap();
        ctx.channel.write_all(b"\n").unwrap();
    };
    let zygote = match parallel_zygote::start() {
        Ok(zygote) => zygote,
        Err(error) => return report(&mut ctx, format!("start in a worker failed: {error}")),
    };
    let sleepers: Vec<_> = (0..2)
        .map(|_| zygote.spawn(|_ctx: WorkerContext| std::thread::sleep(Duration::from_secs(120))))
        .collect();
    let mut line = zygote.pid().to_string();
    for sleeper in &sleepers {
        match sleeper {
            Ok(worker) => line += &format!(" {}", worker.process.pid()),
            Err(error) => return report(&mut ctx, format!("nested spawn failed: {error}")),
        }
    }
    report(&mut ctx, line);
    std::thread::sleep(Duration::from_secs(120));
}

fn helper(scenario: &str) {
    let zygote = parallel_zygote::start().expect("helper starts its zygote");
    match scenario {
        "nested-tree" => {
            let worker = zygote.spawn(nested_worker).unwrap();
            let mut line = Vec::new();
            let mut byte = [0u8];
            let mut channel = &worker.channel;
            while channel.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
            let nested = String::from_utf8_lossy(&line);
            println!("{} {} {nested}", zygote.pid(), worker.process.pid());
            std::thread::sleep(Duration::from_secs(120));
        }
        other => panic!("{HELPER}={other}: no such helper"),
    }
}
