//! procspawn 1.0, the peer: `spawn` re-executes this binary (posix_spawn of
//! `/proc/self/exe`), which runs `procspawn::init()` at the top of `main`,
//! connects back over ipc-channel and runs the function. Its pool keeps such
//! processes alive and sends them calls.

use std::time::{Duration, Instant};

use super::stats::{Budget, Sampler};

fn add_one(x: u64) -> u64 {
    x + 1
}

/// `procspawn::spawn` of a trivial function, then `join` (which also waits
/// for the process to exit).
pub fn spawn_join(budget: Budget) -> Vec<Duration> {
    let mut sampler = Sampler::new(budget);
    let mut x = 0;
    while sampler.next() {
        x += 1;
        let start = Instant::now();
        let value = procspawn::spawn(x, add_one).join().expect("procspawn join");
        sampler.record(start.elapsed());
        assert_eq!(value, x + 1);
    }
    sampler.finish()
}

/// One call on a `procspawn::Pool` of warm processes.
pub fn pool_round_trip(budget: Budget) -> Vec<Duration> {
    let pool = procspawn::Pool::new(1).expect("procspawn pool");
    for x in 0..4 {
        pool.spawn(x, add_one).join().expect("warm-up call");
    }
    let mut sampler = Sampler::new(budget);
    let mut x = 0;
    while sampler.next() {
        x += 1;
        let start = Instant::now();
        let value = pool.spawn(x, add_one).join().expect("pool call");
        sampler.record(start.elapsed());
        assert_eq!(value, x + 1);
    }
    pool.shutdown();
    sampler.finish()
}
