//! What the compiler says about a function that captures a value, as a
//! user sees it: a small crate that depends on this one is checked and built
//! with the same `cargo` (in `CARGO_TARGET_TMPDIR`, offline, with the
//! workspace's lock file), and its errors are read.
//!
//! Pins the table in `src/entry.rs`'s docs: a `String` capture is rejected
//! by `cargo check` with a message that says "capture" at the user's
//! closure; a `u64` capture passes `cargo check` (the documented limit) and
//! is rejected by `cargo build`, with notes that name the user's closure and
//! line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MANIFEST: &str = r#"[package]
name = "capture-diagnostics"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
parallel-zygote = { path = "PATH" }

[workspace]
"#;

const STRING_CAPTURE: &str = r#"fn main() {
    let name = String::from("worker");
    let entry = parallel_zygote::Entry::<u64>::new(move |x: u64| {
        println!("{name} got {x}");
    });
    drop(entry);
}
"#;

const COPY_CAPTURE: &str = r#"fn main() {
    let offset = 5u64;
    let entry = parallel_zygote::Entry::<u64>::new(move |x: u64| {
        println!("{}", x + offset);
    });
    drop(entry);
}
"#;

const ARGUMENT: &str = r#"fn main() {
    let entry = parallel_zygote::Entry::<(u64, String)>::new(|(x, name): (u64, String)| {
        println!("{name} got {x}");
    });
    drop(entry);
}
"#;

/// The async API's `spawn`, generic over the runtime: type checking alone.
const SPAWN_STRING_CAPTURE: &str = r#"use parallel_zygote::async_core::{Parallel, Runtime};

pub fn spawn<R: Runtime>(parallel: &Parallel<R>) {
    let name = String::from("worker");
    let handle = parallel.spawn(move |x: u64| { let n = name.len() as u64; async move { x + n } }, 1);
    drop(handle);
}

fn main() {}
"#;

/// A crate with one binary per case, next to this test's other output.
fn project() -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("capture-diagnostics");
    let bin = root.join("src/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let this = env!("CARGO_MANIFEST_DIR");
    write_if_changed(
        &root.join("Cargo.toml"),
        &MANIFEST.replace("PATH", &this.replace('\\', "/")),
    );
    // The workspace's versions, so that nothing is downloaded.
    if let Ok(lock) = std::fs::read_to_string(Path::new(this).join("../Cargo.lock")) {
        write_if_changed(&root.join("Cargo.lock"), &lock);
    }
    write_if_changed(&bin.join("string_capture.rs"), STRING_CAPTURE);
    write_if_changed(&bin.join("copy_capture.rs"), COPY_CAPTURE);
    write_if_changed(&bin.join("argument.rs"), ARGUMENT);
    write_if_changed(&bin.join("spawn_string_capture.rs"), SPAWN_STRING_CAPTURE);
    root
}

fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text).unwrap();
    }
}

/// `cargo <command> --bin <bin>` in the project; its output.
fn cargo(root: &Path, command: &str, bin: &str) -> Output {
    Command::new(env!("CARGO"))
        .current_dir(root)
        .args([command, "--offline", "--quiet", "--bin", bin])
        .env("CARGO_TARGET_DIR", root.join("target"))
        .env("CARGO_TERM_COLOR", "never")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("runs cargo")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_contains(text: &str, pieces: &[&str]) {
    for piece in pieces {
        assert!(text.contains(piece), "expected {piece:?} in:\n{text}");
    }
}

#[test]
fn captures_are_rejected_with_messages_that_name_the_closure() {
    let root = project();

    // The data as the argument: builds.
    let output = cargo(&root, "build", "argument");
    assert!(output.status.success(), "{}", stderr(&output));

    // A `String` capture: `cargo check` rejects it, at the closure.
    let output = cargo(&root, "check", "string_capture");
    assert!(!output.status.success(), "a String capture was accepted");
    assert_contains(
        &stderr(&output),
        &[
            "error[E0277]: functions sent to a worker must capture nothing: \
             `{closure@src/bin/string_capture.rs:3:52: 3:65}` captures a value",
            "--> src/bin/string_capture.rs:3:52",
            "pass data as the function's argument",
        ],
    );
    assert!(
        !stderr(&output).contains("Copy` is not satisfied"),
        "{}",
        stderr(&output)
    );

    // The same through `Parallel::spawn`: rejected by `cargo check`, at the
    // closure, in `CapturesNothing`'s words.
    let output = cargo(&root, "check", "spawn_string_capture");
    assert!(!output.status.success(), "a String capture was accepted");
    assert_contains(
        &stderr(&output),
        &[
            "error[E0277]",
            "capture nothing",
            "{closure@src/bin/spawn_string_capture.rs:5:33: 5:46}",
            "--> src/bin/spawn_string_capture.rs:5:33",
        ],
    );

    // A `u64` capture: `cargo check` cannot see it (the documented limit;
    // if this fails, Rust learned to, and the docs in entry.rs should say so).
    let output = cargo(&root, "check", "copy_capture");
    assert!(output.status.success(), "{}", stderr(&output));

    // `cargo build` rejects it, naming the closure and the user's line.
    let output = cargo(&root, "build", "copy_capture");
    assert!(!output.status.success(), "a u64 capture was built");
    assert_contains(
        &stderr(&output),
        &[
            "error[E0080]: evaluation panicked: functions sent to a worker must capture nothing: \
             this function captures a `Copy` value",
            "evaluation of `<{closure@src/bin/copy_capture.rs:3:52: 3:65} as",
            "pass the data as the function's argument",
            "encountered while instantiating",
            "--> src/bin/copy_capture.rs:3:17",
        ],
    );
}
