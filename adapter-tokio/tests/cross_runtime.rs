//! A tokio parent running workers on the other adapters' runtimes: the wire
//! is the same, only the worker's runtime differs. (The smol and glommio
//! adapters test the other direction: their parents with tokio workers.)

use futures_util::StreamExt;
use libtest_mimic::{Arguments, Failed, Trial};
use parallel_tokio::{MessageSender, MessageStream, Parallel};

fn main() {
    let parallel = parallel_tokio::init().expect("start the zygote before any thread");
    let on = |name: &str, parallel: Parallel| {
        Trial::test(name, move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(spawn_run_and_process(parallel))
        })
    };
    let trials = vec![
        on(
            "smol_workers_from_a_tokio_parent",
            parallel
                .clone()
                .worker_runtime(parallel_smol::SmolWorker::default()),
        ),
        on(
            "glommio_workers_from_a_tokio_parent",
            parallel
                .clone()
                .worker_runtime(parallel_glommio::GlommioWorker::default()),
        ),
    ];
    libtest_mimic::run(&Arguments::from_args(), trials).exit();
}

/// Whether the worker really runs the runtime it was given.
fn worker_thread_name() -> String {
    std::thread::current().name().unwrap_or("").to_string()
}

async fn spawn_run_and_process(parallel: Parallel) -> Result<(), Failed> {
    let doubled = parallel.spawn(|x: u64| async move { x * 2 }, 21).await?;
    if doubled != 42 {
        return Err(format!("spawn gave {doubled}").into());
    }
    let square = parallel.run(|x: u64| async move { x * x })?;
    for x in 0..100u64 {
        let got = square.call(x).await?;
        if got != x * x {
            return Err(format!("call {x} gave {got}").into());
        }
    }
    // The function runs outside any tokio runtime on these workers.
    let inside_tokio = parallel
        .spawn(
            |_: ()| async move {
                (
                    tokio::runtime::Handle::try_current().is_ok(),
                    worker_thread_name(),
                )
            },
            (),
        )
        .await?;
    if inside_tokio.0 {
        return Err(format!("the worker ran inside tokio: {inside_tokio:?}").into());
    }
    let echo = parallel.process(
        |mut input: MessageStream<String>, output: MessageSender<usize>| async move {
            while let Some(Ok(line)) = input.recv().await {
                if output.send(line.len()).await.is_err() {
                    break;
                }
            }
        },
    )?;
    for word in ["a", "bb", "ccc"] {
        echo.sender.send(word.to_string()).await?;
    }
    drop(echo.sender);
    let lengths: Vec<usize> = echo
        .stream
        .map(|item| item.expect("a length"))
        .collect()
        .await;
    if lengths != [1, 2, 3] {
        return Err(format!("process echoed {lengths:?}").into());
    }
    Ok(())
}
