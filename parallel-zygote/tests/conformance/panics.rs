//! Panic reports: a structured location, and a backtrace without
//! `RUST_BACKTRACE` unless the parent turned capture off.

use libtest_mimic::Failed;
use parallel_zygote::async_core::{Error, PanicReport, Parallel, Runtime};

use super::check;

fn panic_report<T: std::fmt::Debug>(result: Result<T, Error>) -> Result<PanicReport, Failed> {
    match result {
        Err(Error::Panicked { report, .. }) => Ok(report),
        other => Err(format!("expected a panic, got {other:?}").into()),
    }
}

pub async fn panic_has_a_backtrace_without_rust_backtrace<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    check(parallel.captures_backtraces(), "on by default")?;
    let result = parallel
        .spawn(
            |_: ()| async move {
                // Whatever the environment says: no RUST_BACKTRACE here.
                std::env::remove_var("RUST_BACKTRACE");
                std::env::remove_var("RUST_LIB_BACKTRACE");
                panic!("traced") as ()
            },
            (),
        )
        .await;
    let text = match &result {
        Err(error) => error.to_string(),
        Ok(()) => String::new(),
    };
    let report = panic_report(result)?;
    let backtrace = report.backtrace.clone().unwrap_or_default();
    check(
        !backtrace.is_empty(),
        format!("a backtrace by default: {report:?}"),
    )?;
    let location = report.location.clone().unwrap_or_default();
    check(
        location.file == file!() && location.line > 0 && location.column > 0,
        format!("location {location:?}"),
    )?;
    let expected = format!(
        "panicked at {}:{}:{}: traced",
        location.file, location.line, location.column
    );
    check(
        text.ends_with(&expected) && !text.contains(&backtrace),
        format!("Display {text:?} ends with {expected:?}, without the backtrace"),
    )
}

pub async fn panic_has_no_backtrace_when_turned_off<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let quiet = parallel.capture_backtraces(false);
    let result = quiet
        .spawn(
            |_: ()| async move {
                std::env::set_var("RUST_BACKTRACE", "1");
                panic!("untraced") as ()
            },
            (),
        )
        .await;
    let report = panic_report(result)?;
    check(
        report.backtrace.is_none(),
        format!("no backtrace: {report:?}"),
    )?;
    check(report.location.is_some(), "a location still")?;
    let run = quiet.run(|x: u32| async move {
        if x == 1 {
            panic!("run panic");
        }
        x
    })?;
    let report = panic_report(run.call(1).await)?;
    check(
        report.backtrace.is_none() && report.message == "run panic",
        format!("{report:?}"),
    )
}

/// The worker's stderr, redirected to a file the worker reads back.
const STDERR_FILE: &str = "parallel-conformance-worker-stderr";

/// A panic no task reports (here, in a thread the worker started) is
/// printed on the worker's stderr as Rust would, so its death can be
/// explained; a panic in the task function is reported to the parent
/// instead, and not printed twice.
pub async fn uncaught_panics_in_a_worker_are_printed_caught_ones_reported<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let worker = parallel.run(|step: u8| async move {
        let path = std::env::temp_dir().join(format!("{STDERR_FILE}-{}", std::process::id()));
        match step {
            0 => {
                let file = std::fs::File::create(&path).unwrap();
                nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&file), 2).unwrap();
                let thread = std::thread::spawn(|| panic!("uncaught in a thread"));
                assert!(thread.join().is_err());
                String::new()
            }
            1 => panic!("caught in the task"),
            _ => {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let _ = std::fs::remove_file(&path);
                text
            }
        }
    })?;
    worker.call(0).await?;
    let caught = worker.call(1).await;
    check(
        matches!(&caught, Err(Error::Panicked { report, .. }) if report.message == "caught in the task"),
        format!("the task's panic is reported: {caught:?}"),
    )?;
    let stderr = worker.call(2).await?;
    check(
        stderr.contains("panicked at") && stderr.contains("uncaught in a thread"),
        format!("the thread's panic is printed: {stderr:?}"),
    )?;
    check(
        !stderr.contains("caught in the task"),
        format!("the task's panic is not printed: {stderr:?}"),
    )
}
