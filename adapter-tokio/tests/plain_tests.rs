//! Ordinary tests under the default libtest harness: many threads, tests in
//! parallel, no `harness = false` and no custom `main`. Each test calls
//! `parallel_tokio::init()` and nothing else to set up: the first call
//! starts the zygote by exec (the harness has threads), calls made while it
//! serves share it, and a call after every handle was dropped starts a new one.

use std::time::Duration;

use futures_util::StreamExt;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn spawn_doubles_in_a_worker() {
    let parallel = parallel_tokio::init().unwrap();
    runtime().block_on(async move {
        let doubled = parallel.spawn(|x: u64| async move { x * 2 }, 21).await;
        assert_eq!(doubled.unwrap(), 42);
    });
}

#[test]
fn run_worker_answers_many_calls() {
    let parallel = parallel_tokio::init().unwrap();
    runtime().block_on(async move {
        let square = parallel.run(|x: u64| async move { x * x }).unwrap();
        for x in 0..20u64 {
            assert_eq!(square.call(x).await.unwrap(), x * x);
        }
    });
}

#[test]
fn process_channel_echoes_lengths() {
    let parallel = parallel_tokio::init().unwrap();
    runtime().block_on(async move {
        let mut echo = parallel
            .process(
                |mut input: parallel_tokio::MessageStream<String>,
                 output: parallel_tokio::MessageSender<usize>| async move {
                    while let Some(Ok(line)) = input.recv().await {
                        output.send(line.len()).await.unwrap();
                    }
                },
            )
            .unwrap();
        echo.sender.send("hello".to_string()).await.unwrap();
        assert_eq!(echo.stream.recv().await.transpose().unwrap(), Some(5));
    });
}

#[test]
fn pool_maps_in_order() {
    let parallel = parallel_tokio::init().unwrap();
    runtime().block_on(async move {
        let pool = parallel_tokio::Pool::new(
            &parallel,
            |x: u64| async move { x + 1 },
            parallel_tokio::PoolConfig::default().size(2),
        )
        .unwrap();
        let results: Vec<u64> = pool
            .map(futures_util::stream::iter(0..16u64))
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(results, (1..17).collect::<Vec<_>>());
    });
}

#[test]
fn panicking_function_reports_its_message() {
    let parallel = parallel_tokio::init().unwrap();
    runtime().block_on(async move {
        let result = parallel
            .spawn(
                |x: u64| async move {
                    assert_eq!(x, 0, "boom in a plain test");
                    x
                },
                1,
            )
            .await;
        let error = result.unwrap_err();
        assert!(
            error.to_string().contains("boom in a plain test"),
            "{error}"
        );
    });
}

#[test]
fn many_concurrent_spawns_from_one_test() {
    let parallel = parallel_tokio::init().unwrap();
    runtime().block_on(async move {
        let handles: Vec<_> = (0..8u64)
            .map(|x| parallel.spawn(|x: u64| async move { x + 100 }, x))
            .collect();
        for (x, handle) in handles.into_iter().enumerate() {
            assert_eq!(handle.await.unwrap(), x as u64 + 100);
        }
    });
}

#[test]
fn concurrent_tests_share_one_zygote() {
    let first = parallel_tokio::init().unwrap();
    let second = parallel_tokio::init().unwrap();
    assert_eq!(first.zygote().pid(), second.zygote().pid());
    // The harness runs tests on threads: the zygote was executed, not forked.
    assert_eq!(
        first.zygote().start_method(),
        parallel_zygote::StartMethod::Exec
    );
    runtime().block_on(async move {
        let value = second.spawn(|x: u64| async move { x }, 7).await.unwrap();
        assert_eq!(value, 7);
    });
}

/// The form `#[tokio::main]` takes in a test: `init()` inside the runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_inside_a_tokio_runtime_works() {
    let parallel = parallel_tokio::init().unwrap();
    let handle = parallel.spawn(
        |x: u64| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            x * 3
        },
        5,
    );
    assert_eq!(handle.await.unwrap(), 15);
}
