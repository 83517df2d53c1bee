//! `parallel_glommio::init()` where glommio programs call it: inside a
//! running `LocalExecutor`, in ordinary `#[test]` functions (default
//! harness, tests in parallel). The zygote starts by exec when the process
//! has threads.

use glommio::{LocalExecutorBuilder, Placement};

fn executor() -> glommio::LocalExecutor {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(64 << 10)
        .ring_depth(8)
        .make()
        .expect("building the test's executor")
}

#[test]
fn init_inside_a_local_executor_spawns_workers() {
    executor().run(async {
        let parallel = parallel_glommio::init().unwrap();
        let doubled = parallel.spawn(|x: u64| async move { x * 2 }, 21).await;
        assert_eq!(doubled.unwrap(), 42);
    });
}

#[test]
fn init_in_a_plain_test_runs_a_worker() {
    let parallel = parallel_glommio::init().unwrap();
    executor().run(async move {
        let square = parallel.run(|x: u64| async move { x * x }).unwrap();
        assert_eq!(square.call(9).await.unwrap(), 81);
    });
}
