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
