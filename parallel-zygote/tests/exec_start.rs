//! The exec start path: a zygote started from a process that has threads,
//! by executing this very binary (its load-time hook becomes the zygote).
//! Every scenario runs in a fresh copy of this binary, chosen by the
//! `EXEC_START_HELPER` variable, so that each owns its zygote and its
//! thread count.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use parallel_zygote::{Builder, Error, ExitStatus, StartMethod, WorkerContext};

const HELPER: &str = "EXEC_START_HELPER";
const MARKER: &str = "PARALLEL_ZYGOTE_FD";

/// Set by `main` before it starts anything: a forked zygote inherits the
/// value, an executed one starts from the initial 0.
static SET_IN_MAIN: AtomicU32 = AtomicU32::new(0);

fn main() {
    SET_IN_MAIN.store(42, Ordering::SeqCst);
    if let Ok(scenario) = std::env::var(HELPER) {
        helper(&scenario);
        return;
    }
    let args = Arguments::from_args();
    let tests = vec![
        Trial::test("start_with_a_thread_running_execs_and_serves", || {
            helper_says_ok("threaded-start").map(drop)
        }),
        Trial::test("many_threads_starting_at_once_share_one_zygote", || {
            helper_says_ok("racing-starts").map(drop)
        }),
        Trial::test("zygote_sigkill_then_start_and_spawn_succeed", || {
            helper_says_ok("replace-killed").map(drop)
        }),
        Trial::test("fork_only_start_with_threads_is_refused", || {
            helper_says_ok("fork-only-threaded").map(drop)
        }),
        Trial::test(
            "marker_without_a_descriptor_runs_main_normally",
            marker_without_a_descriptor_runs_main_normally,
        ),
        Trial::test(
            "marker_naming_a_foreign_socket_runs_main_and_leaves_its_data",
            marker_naming_a_foreign_socket_runs_main_and_leaves_its_data,
        ),
        Trial::test(
            "parent_sigkill_on_the_exec_path_leaves_no_orphans_within_1s",
            parent_sigkill_on_the_exec_path_leaves_no_orphans_within_1s,
        ),
        Trial::test("exec_start_up_is_measured_against_fork", || {
            let fork = helper_says_ok("measure-fork")?;
            let exec = helper_says_ok("measure-exec")?;
            eprintln!("    init() until the first spawn answered: fork {fork}; exec {exec}");
            Ok(())
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

fn helper_command(scenario: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .env(HELPER, scenario)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    command
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

/// Runs `scenario` in a fresh copy of this binary; passes when it prints a
/// line starting with "ok" and exits successfully. Returns the rest of it.
fn helper_says_ok(scenario: &str) -> Result<String, Failed> {
    let mut child = helper_command(scenario).spawn()?;
    let output = read_line(&mut child);
    let status = child.wait()?;
    check(
        status.success() && output.starts_with("ok"),
        format!("helper said: {output} ({status})"),
    )?;
    eprintln!("    {output}");
    Ok(output.trim_start_matches("ok: ").to_string())
}

fn marker_without_a_descriptor_runs_main_normally() -> Result<(), Failed> {
    // Standard input is /dev/null (fd 0 named, not a socket), then a
    // descriptor that is not open at all.
    for fd in ["0", "517", "-1", "zygote"] {
        let mut child = helper_command("plain-main").env(MARKER, fd).spawn()?;
        let output = read_line(&mut child);
        let status = child.wait()?;
        check(
            status.success() && output == "ok: main ran",
            format!("with {MARKER}={fd}: {output} ({status})"),
        )?;
    }
    Ok(())
}

fn marker_naming_a_foreign_socket_runs_main_and_leaves_its_data() -> Result<(), Failed> {
    // A real AF_UNIX stream socket on standard input, with data that is not
    // a handshake: main runs and reads that data untouched.
    let (mut ours, theirs) = UnixStream::pair()?;
    ours.write_all(b"PZYGOTE\x02 not a handshake\n")?;
    let mut child = helper_command("read-stdin")
        .env(MARKER, "0")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .spawn()?;
    let output = read_line(&mut child);
    drop(ours);
    let status = child.wait()?;
    check(
        status.success() && output == "ok: PZYGOTE\u{2} not a handshake",
        format!("{output} ({status})"),
    )
}

fn parent_sigkill_on_the_exec_path_leaves_no_orphans_within_1s() -> Result<(), Failed> {
    let mut child = helper_command("exec-parent-with-workers").spawn()?;
    let line = read_line(&mut child);
    let pids: Vec<i32> = line
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    check(
        pids.len() == 6,
        format!("helper reported zygote + 5 workers, got {line:?}"),
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
                "    executed zygote and 5 workers gone {:?} after the parent's SIGKILL",
                killed.elapsed()
            );
            Ok(())
        }
        Err(survivors) => {
            Err(format!("survivors 1 s after the parent's SIGKILL: {survivors:?}").into())
        }
    }
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

// ------------------------------------------------------------ helper processes

/// Keeps a second thread running for as long as the value lives.
struct BusyThread(
    Option<std::sync::mpsc::Sender<()>>,
    Option<std::thread::JoinHandle<()>>,
);

fn busy_thread() -> BusyThread {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let _ = stopped.recv();
    });
    BusyThread(Some(stop), Some(thread))
}

impl Drop for BusyThread {
    fn drop(&mut self) {
        drop(self.0.take());
        if let Some(thread) = self.1.take() {
            let _ = thread.join();
        }
    }
}

/// What a worker reports: the value of `SET_IN_MAIN` in its process, and
/// whether it sees the marker, on its channel.
fn report_state(mut ctx: WorkerContext) {
    let marker = u8::from(std::env::var_os(MARKER).is_some());
    let value = SET_IN_MAIN.load(Ordering::SeqCst) as u8;
    ctx.channel.write_all(&[value, marker]).unwrap();
}

fn helper(scenario: &str) {
    match run_scenario(scenario) {
        Ok(message) => println!("ok: {message}"),
        Err(failure) => println!("{failure}"),
    }
}

fn run_scenario(scenario: &str) -> Result<String, String> {
    let e = |error: Error| error.to_string();
    match scenario {
        "plain-main" => Ok("main ran".into()),
        "read-stdin" => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| e.to_string())?;
            Ok(line.trim_end().to_string())
        }
        "threaded-start" => {
            let _thread = busy_thread();
            let zygote = parallel_zygote::start().map_err(e)?;
            if zygote.start_method() != StartMethod::Exec {
                return Err(format!("started by {:?}", zygote.start_method()));
            }
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", zygote.pid()))
                .map_err(|e| e.to_string())?;
            let mut worker = zygote.spawn(report_state).map_err(e)?;
            let mut state = [0u8; 2];
            worker
                .channel
                .read_exact(&mut state)
                .map_err(|e| e.to_string())?;
            let status = worker.process.wait().map_err(e)?;
            if status != ExitStatus::Exited(0) {
                return Err(format!("worker ended: {status}"));
            }
            // Executed: the zygote's statics start fresh, main never ran there.
            if state != [0, 0] {
                return Err(format!(
                    "worker saw SET_IN_MAIN={} marker={}",
                    state[0], state[1]
                ));
            }
            Ok(format!(
                "zygote {} ({}) by exec; its worker saw fresh statics and no marker",
                zygote.pid(),
                comm.trim()
            ))
        }
        "racing-starts" => {
            let threads: Vec<_> = (0..8)
                .map(|_| std::thread::spawn(|| parallel_zygote::start().map(|z| (z.pid(), z))))
                .collect();
            let mut pids = Vec::new();
            let mut handles = Vec::new();
            for thread in threads {
                let (pid, zygote) = thread.join().map_err(|_| "panicked")?.map_err(e)?;
                pids.push(pid);
                handles.push(zygote);
            }
            pids.dedup();
            if pids.len() != 1 {
                return Err(format!("several zygotes: {pids:?}"));
            }
            let worker = handles[3].spawn(|_ctx: WorkerContext| {}).map_err(e)?;
            worker.process.wait().map_err(e)?;
            Ok(format!("8 threads got zygote {}", pids[0]))
        }
        "replace-killed" => {
            let _thread = busy_thread();
            let first = parallel_zygote::start().map_err(e)?;
            let pid = first.pid();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .map_err(|e| e.to_string())?;
            let deadline = Instant::now() + Duration::from_secs(5);
            while first.exit_status().is_none() {
                if Instant::now() > deadline {
                    return Err("the killed zygote was not reaped in 5 s".into());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            // The old handle stays dead and says how the zygote died.
            match first.spawn(|_ctx: WorkerContext| {}) {
                Err(error @ Error::ZygoteGone { .. })
                    if error.to_string().contains("killed by signal 9") => {}
                other => return Err(format!("spawn on the dead zygote gave {other:?}")),
            }
            let second = Builder::new()
                .caller("parallel_tokio::init()")
                .start()
                .map_err(e)?;
            if second.pid() == pid || !second.is_alive() {
                return Err(format!("no new zygote: {second:?}"));
            }
            let worker = second
                .spawn(|_ctx: WorkerContext| std::process::exit(5))
                .map_err(e)?;
            match worker.process.wait().map_err(e)? {
                ExitStatus::Exited(5) => Ok(format!(
                    "zygote {pid} killed; start gave zygote {} ({:?}), whose worker ran",
                    second.pid(),
                    second.start_method()
                )),
                other => Err(format!("worker of the new zygote ended: {other}")),
            }
        }
        "fork-only-threaded" => {
            let _thread = busy_thread();
            match Builder::new()
                .caller("parallel_tokio::init()")
                .method(StartMethod::Fork)
                .start()
            {
                Err(error @ Error::MultiThreaded { threads: 2, .. }) => {
                    let message = error.to_string();
                    if message.starts_with("parallel_tokio::init() was asked to fork")
                        && message.contains("StartMethod::Auto")
                    {
                        Ok(message)
                    } else {
                        Err(format!("message does not say what to do: {message}"))
                    }
                }
                other => Err(format!("fork-only start gave {other:?}")),
            }
        }
        "exec-parent-with-workers" => {
            let _thread = busy_thread();
            let zygote = parallel_zygote::start().map_err(e)?;
            let workers: Vec<_> = (0..5)
                .map(|_| {
                    zygote.spawn(|_ctx: WorkerContext| std::thread::sleep(Duration::from_secs(120)))
                })
                .collect::<Result<_, _>>()
                .map_err(e)?;
            let mut line = zygote.pid().to_string();
            for worker in &workers {
                line.push_str(&format!(" {}", worker.process.pid()));
            }
            println!("{line}");
            std::io::stdout().flush().unwrap();
            std::thread::sleep(Duration::from_secs(120));
            Err("not killed".into())
        }
        "measure-fork" | "measure-exec" => {
            let method = if scenario == "measure-fork" {
                StartMethod::Fork
            } else {
                StartMethod::Exec
            };
            let started = Instant::now();
            let zygote = Builder::new().method(method).start().map_err(e)?;
            let worker = zygote.spawn(|_ctx: WorkerContext| {}).map_err(e)?;
            let first_spawn = started.elapsed();
            worker.process.wait().map_err(e)?;
            // A second spawn, for comparison: the same either way.
            let again = Instant::now();
            let worker = zygote.spawn(|_ctx: WorkerContext| {}).map_err(e)?;
            let second_spawn = again.elapsed();
            worker.process.wait().map_err(e)?;
            Ok(format!(
                "{first_spawn:?} (next spawn {second_spawn:?}, {:?})",
                zygote.start_method()
            ))
        }
        other => Err(format!("unknown scenario {other}")),
    }
}
