//! `parallel_smol::init()` where smol programs call it: inside a running
//! `smol::block_on`, in ordinary `#[test]` functions (default harness, tests
//! in parallel). The zygote starts by exec when the process has threads.

#[test]
fn init_inside_smol_block_on_spawns_workers() {
    smol::block_on(async {
        let parallel = parallel_smol::init().unwrap();
        let doubled = parallel.spawn(|x: u64| async move { x * 2 }, 21).await;
        assert_eq!(doubled.unwrap(), 42);
    });
}

#[test]
fn init_in_a_plain_test_runs_a_worker() {
    let parallel = parallel_smol::init().unwrap();
    smol::block_on(async move {
        let square = parallel.run(|x: u64| async move { x * x }).unwrap();
        assert_eq!(square.call(9).await.unwrap(), 81);
    });
}
