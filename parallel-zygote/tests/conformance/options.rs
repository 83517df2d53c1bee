//! Per-worker settings of `SpawnOptions` (environment, working directory,
//! identity, CPU affinity, nice value), read back inside real workers, and a
//! setting the OS refuses failing the spawn with an error that names it.

use std::time::Duration;

use libtest_mimic::Failed;
use parallel_zygote::async_core::{Error, Parallel, Runtime};
use parallel_zygote::SpawnOptions;

use super::{check, within};

/// Generous: a spawn on a loaded two-core machine.
const SPAWN_WAIT: Duration = Duration::from_secs(20);

/// The error and its sources, one line: what a user's report would print.
fn chain(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}

/// The worker's environment, sorted.
fn environment() -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    vars.sort();
    vars
}

pub async fn env_set_removed_and_cleared_in_the_worker<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    // Every process of the tree inherits PATH (the test runner has it).
    check(
        std::env::var_os("PATH").is_some(),
        "PATH is not set here, the test needs it",
    )?;
    let set = parallel
        .clone()
        .worker_options(
            SpawnOptions::default()
                .env("PARALLEL_OPTIONS_A", "one")
                .envs([("PARALLEL_OPTIONS_B", "two"), ("PARALLEL_OPTIONS_C", "x")])
                .env_remove("PARALLEL_OPTIONS_C")
                .env_remove("PATH"),
        )
        .spawn(|_: ()| async move { environment() }, ());
    let vars = within::<R, _>(SPAWN_WAIT, set)
        .await
        .ok_or("the worker did not answer")??;
    let get = |key: &str| {
        vars.iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value.clone())
    };
    check(
        get("PARALLEL_OPTIONS_A").as_deref() == Some("one")
            && get("PARALLEL_OPTIONS_B").as_deref() == Some("two"),
        format!("set variables missing: {vars:?}"),
    )?;
    check(
        get("PARALLEL_OPTIONS_C").is_none() && get("PATH").is_none(),
        format!("removed variables still set: {vars:?}"),
    )?;
    check(
        std::env::var_os("PARALLEL_OPTIONS_A").is_none(),
        "the parent's own environment changed",
    )?;

    let cleared = parallel
        .worker_options(
            SpawnOptions::default()
                .env("DROPPED_BY_CLEAR", "1")
                .env_clear()
                .env("ONLY_ONE", "left"),
        )
        .spawn(|_: ()| async move { environment() }, ());
    let vars = within::<R, _>(SPAWN_WAIT, cleared)
        .await
        .ok_or("the worker did not answer")??;
    check(
        vars == [("ONLY_ONE".to_string(), "left".to_string())],
        format!("after env_clear the worker saw {vars:?}"),
    )
}

pub async fn current_dir_applies_in_the_worker<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let dir = super::temp_path("cwd");
    std::fs::create_dir(&dir)?;
    let expected = std::fs::canonicalize(&dir)?;
    let seen = parallel
        .worker_options(SpawnOptions::default().current_dir(&dir))
        .spawn(
            |_: ()| async move {
                std::env::current_dir()
                    .map(|dir| dir.to_string_lossy().into_owned())
                    .unwrap_or_else(|e| format!("error: {e}"))
            },
            (),
        );
    let seen = within::<R, _>(SPAWN_WAIT, seen).await;
    let _ = std::fs::remove_dir(&dir);
    let seen = seen.ok_or("the worker did not answer")??;
    check(
        seen == expected.to_string_lossy(),
        format!("the worker ran in {seen:?}, expected {expected:?}"),
    )
}

pub async fn uid_and_gid_drop_applies_in_the_worker<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    const NOBODY: u32 = 65534;
    let options = SpawnOptions::default().uid(NOBODY).gid(NOBODY);
    let ids = parallel.worker_options(options).spawn(
        |_: ()| async move {
            let groups = nix::unistd::getgroups()
                .map(|groups| groups.iter().map(|g| g.as_raw()).collect())
                .unwrap_or_default();
            (
                nix::unistd::getuid().as_raw(),
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getgid().as_raw(),
                groups,
            )
        },
        (),
    );
    let result: Result<(u32, u32, u32, Vec<u32>), Error> = within::<R, _>(SPAWN_WAIT, ids)
        .await
        .ok_or("the worker did not answer")?;
    if !nix::unistd::geteuid().is_root() {
        // Not root: the drop itself cannot be tested; what can is that the
        // refusal names the setting and carries EPERM.
        eprintln!("    not root: the uid drop is checked to fail with EPERM instead");
        let error = match result {
            Err(error) => error,
            Ok(ids) => return Err(format!("an unprivileged uid change succeeded: {ids:?}").into()),
        };
        let text = chain(&error);
        return check(
            error.errno() == Some(libc::EPERM) && text.contains(&NOBODY.to_string()),
            format!("errno {:?}: {text}", error.errno()),
        );
    }
    let (uid, euid, gid, groups) = result?;
    check(
        (uid, euid, gid) == (NOBODY, NOBODY, NOBODY) && groups == [NOBODY],
        format!("the worker runs as uid {uid} (euid {euid}), gid {gid}, groups {groups:?}"),
    )
}

pub async fn cpu_affinity_applies_in_the_worker<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    // The last CPU this process may run on (CPU 1 on a two-core machine).
    let mine = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))?;
    let cpu = (0..nix::sched::CpuSet::count())
        .rev()
        .find(|&cpu| mine.is_set(cpu).unwrap_or(false))
        .ok_or("this process may run on no CPU")?;
    let seen = parallel
        .worker_options(SpawnOptions::default().cpu_affinity([cpu]))
        .spawn(
            |_: ()| async move {
                let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
                (0..nix::sched::CpuSet::count())
                    .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
                    .collect::<Vec<usize>>()
            },
            (),
        );
    let seen = within::<R, _>(SPAWN_WAIT, seen)
        .await
        .ok_or("the worker did not answer")??;
    check(
        seen == [cpu],
        format!("the worker may run on CPUs {seen:?}, expected [{cpu}]"),
    )
}

/// This process's nice value.
fn nice() -> i32 {
    // getpriority may return -1 as a value: errno tells; it cannot fail for
    // the calling process.
    // SAFETY: getpriority takes integers and touches no memory.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

pub async fn nice_value_applies_in_the_worker<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    // Raising the nice value is always allowed.
    let wanted = (nice() + 3).min(19);
    let seen = parallel
        .worker_options(SpawnOptions::default().nice(wanted))
        .spawn(|_: ()| async move { nice() }, ());
    let seen = within::<R, _>(SPAWN_WAIT, seen)
        .await
        .ok_or("the worker did not answer")??;
    check(
        seen == wanted,
        format!("the worker's nice value is {seen}, expected {wanted}"),
    )
}

pub async fn refused_setting_fails_the_spawn_naming_it<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let missing = super::temp_path("no-such-dir");
    let spawn = parallel
        .clone()
        .worker_options(SpawnOptions::default().current_dir(&missing))
        .spawn(|_: ()| async move { std::process::id() }, ());
    let error = match within::<R, _>(SPAWN_WAIT, spawn).await {
        None => return Err("the failed spawn did not answer".into()),
        Some(Ok(pid)) => return Err(format!("worker {pid} ran in a missing directory").into()),
        Some(Err(error)) => error,
    };
    let text = chain(&error);
    check(
        error.errno() == Some(libc::ENOENT),
        format!("errno {:?}, expected ENOENT: {text}", error.errno()),
    )?;
    check(
        text.contains(&format!(
            "setting the working directory to {} failed: No such file or directory",
            missing.display()
        )),
        format!("the error does not name the setting: {text}"),
    )?;
    // (Not a bare "exited with code 126"; the path itself may hold "126".)
    check(
        !text.contains("code 126"),
        format!("the error is a bare exit code: {text}"),
    )?;

    // A setting that can never work is refused before any fork: here an
    // environment variable name with '='.
    let spawn = parallel
        .clone()
        .worker_options(SpawnOptions::default().env("A=B", "1"))
        .spawn(|_: ()| async move { std::process::id() }, ());
    let error = match within::<R, _>(SPAWN_WAIT, spawn).await {
        None => return Err("the refused spawn did not answer".into()),
        Some(Ok(pid)) => return Err(format!("worker {pid} ran with a bad variable name").into()),
        Some(Err(error)) => error,
    };
    let text = chain(&error);
    check(
        error.errno() == Some(libc::EINVAL) && text.contains("\"A=B\""),
        format!("errno {:?}: {text}", error.errno()),
    )?;

    // The zygote still serves, with default options (no setup pipe).
    let fine = parallel.spawn(|x: u32| async move { x + 1 }, 1);
    let value = within::<R, _>(SPAWN_WAIT, fine)
        .await
        .ok_or("the next spawn did not answer")??;
    check(value == 2, format!("got {value}"))
}
