//! Nested spawns on tokio: a worker calls `parallel_tokio::init()` and
//! starts two workers of its own, and none of the tree survives a SIGKILL of
//! the top parent.
//!
//! The top parent is a helper process (this binary again, with
//! [`HELPER_ENV`] set): it prints the pids of its zygote, its worker, the
//! worker's zygote and the worker's two workers, then sleeps until killed.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use parallel_tokio::{MessageSender, MessageStream};

const HELPER_ENV: &str = "PARALLEL_TOKIO_NESTED_HELPER";

fn main() {
    if std::env::var_os(HELPER_ENV).is_some() {
        top_parent();
        return;
    }
    let args = Arguments::from_args();
    let tests = vec![Trial::test(
        "worker_spawns_two_workers_and_none_survives_the_top_parent_sigkill",
        worker_spawns_two_workers_and_none_survives_the_top_parent_sigkill,
    )];
    libtest_mimic::run(&args, tests).exit();
}

/// The worker: `init()` inside it starts its own zygote; two `run` workers
/// from it answer once (so their pids are known), then the pids go to the
/// parent and the worker waits for its input to end.
async fn nested(mut input: MessageStream<()>, output: MessageSender<String>) {
    let line = match spawn_two().await {
        Ok((zygote, workers, handles)) => {
            let line = format!("{zygote} {} {}", workers[0], workers[1]);
            output.send(line).await.ok();
            // Keep the two workers until the parent goes away.
            while let Some(Ok(())) = input.recv().await {}
            drop(handles);
            return;
        }
        Err(error) => error,
    };
    output.send(format!("failed: {line}")).await.ok();
}

type Sleeper = parallel_tokio::Run<u32, u32>;

async fn spawn_two() -> Result<(i32, Vec<i32>, Vec<Sleeper>), String> {
    let parallel = parallel_tokio::init().map_err(|e| format!("init() in a worker: {e}"))?;
    let mut handles = Vec::new();
    let mut pids = Vec::new();
    for i in 0..2u32 {
        let run: Sleeper = parallel
            .run(|x: u32| async move { x + 1 })
            .map_err(|e| format!("run: {e}"))?;
        let answer = run.call(i).await.map_err(|e| format!("call: {e}"))?;
        if answer != i + 1 {
            return Err(format!("nested worker answered {answer}"));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let pid = loop {
            if let Some(pid) = run.pid() {
                break pid;
            }
            if Instant::now() > deadline {
                return Err("the nested worker's pid never came".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        pids.push(pid);
        handles.push(run);
    }
    Ok((parallel.zygote().pid(), pids, handles))
}

fn top_parent() {
    // First thing: no threads yet, so the zygote is forked.
    let parallel = parallel_tokio::init().expect("the helper starts its zygote");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let mut process = parallel.process(nested).unwrap();
        let line = match process.stream.recv().await {
            Some(Ok(line)) => line,
            other => format!("failed: the worker said {other:?}"),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let worker = loop {
            match process.handle.pid() {
                Some(pid) => break pid,
                None if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                None => break 0,
            }
        };
        println!("{} {worker} {line}", parallel.zygote().pid());
        tokio::time::sleep(Duration::from_secs(120)).await;
        drop(process);
    });
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'))
        .unwrap_or(false)
}

fn worker_spawns_two_workers_and_none_survives_the_top_parent_sigkill() -> Result<(), Failed> {
    let mut child = Command::new(std::env::current_exe()?)
        .env(HELPER_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut line = Vec::new();
    let stdout = child.stdout.as_mut().unwrap();
    let mut byte = [0u8];
    while stdout.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    let pids: Vec<i32> = line
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect();
    let killed = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    if pids.len() != 5 || pids.contains(&0) {
        let _ = child.wait();
        return Err(format!(
            "the helper should print 5 pids (zygote, worker, the worker's zygote, its 2 \
             workers): {line:?}"
        )
        .into());
    }
    killed?;
    let since = Instant::now();
    child.wait()?;
    let deadline = since + Duration::from_secs(2);
    loop {
        let survivors: Vec<i32> = pids.iter().copied().filter(|&pid| alive(pid)).collect();
        if survivors.is_empty() {
            eprintln!(
                "    the tree of 5 ({line}) gone {:?} after the top parent's SIGKILL",
                since.elapsed()
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(
                format!("survivors 2 s after the top parent's SIGKILL: {survivors:?}").into(),
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
