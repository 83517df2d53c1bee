//! The demo, shared by the adapters' `demo` examples: the original
//! lwt-parallel test, then a pool speed-up, on whichever runtime runs it.
//!
//! 1. 64 tasks, each started after a random delay of up to π seconds; each
//!    worker seeds a PRNG with a fixed seed, builds 4 M pseudo-random floats,
//!    folds them with sin/cos and sends the result back. Every result must be
//!    equal (same code, same seed, separate processes).
//! 2. A CPU-bound job mapped over a pool of 1 worker, then of N workers
//!    (N = available cores), showing the speed-up.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use parallel_zygote::async_core::{Parallel, Pool, PoolConfig, Runtime};

const TASKS: usize = 64;
const FLOATS: usize = 4 << 20;

/// xorshift64*: tiny, deterministic, good enough for a demo.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The original test's work: 4 M seeded floats folded with sin and cos.
async fn fold_floats(seed: u64) -> f64 {
    let mut rng = Rng(seed);
    let floats: Vec<f64> = (0..FLOATS).map(|_| rng.next_f64()).collect();
    floats
        .iter()
        .fold(0.0, |acc, x| acc + x.sin() * (acc * 1e-6).cos())
}

/// The pool's CPU-bound job: count primes below `limit` by trial division.
async fn count_primes(limit: u64) -> u64 {
    (2..limit)
        .filter(|n| (2..).take_while(|d| d * d <= *n).all(|d| n % d != 0))
        .count() as u64
}

struct Progress {
    label: &'static str,
    total: usize,
    done: usize,
    terminal: bool,
}

impl Progress {
    fn new(label: &'static str, total: usize) -> Self {
        let progress = Progress {
            label,
            total,
            done: 0,
            terminal: std::io::stderr().is_terminal(),
        };
        progress.draw();
        progress
    }

    fn tick(&mut self) {
        self.done += 1;
        self.draw();
    }

    fn draw(&self) {
        let mut err = std::io::stderr();
        if self.terminal {
            let width = 40;
            let filled = width * self.done / self.total.max(1);
            let _ = write!(
                err,
                "\r{:<28} [{}{}] {:>3}/{}",
                self.label,
                "#".repeat(filled),
                ".".repeat(width - filled),
                self.done,
                self.total
            );
            if self.done == self.total {
                let _ = writeln!(err);
            }
        } else if self.done == self.total || self.done % (self.total / 8).max(1) == 0 {
            let _ = writeln!(err, "{}: {}/{}", self.label, self.done, self.total);
        }
    }
}

/// Runs the demo on the runtime `R` the caller is inside of.
pub async fn run<R: Runtime>(parallel: Parallel<R>) -> Result<(), Box<dyn std::error::Error>> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!(
        "parallel demo on {}: {TASKS} tasks like lwt-parallel's own test, then a pool on {cores} cores\n",
        R::NAME
    );

    // Part 1: the original test.
    let started = Instant::now();
    let mut delays = Rng(started.elapsed().as_nanos() as u64
        ^ 0x9E37_79B9_7F4A_7C15
        ^ std::process::id() as u64);
    let tasks = FuturesUnordered::new();
    for index in 0..TASKS {
        let delay = Duration::from_secs_f64(delays.next_f64() * std::f64::consts::PI);
        let parallel = parallel.clone();
        tasks.push(async move {
            R::sleep(delay).await;
            let result = parallel.spawn(fold_floats, 42).await;
            (index, result)
        });
    }
    let mut tasks = std::pin::pin!(tasks);
    let mut progress = Progress::new("64 tasks (random delays)", TASKS);
    let mut results = vec![None; TASKS];
    while let Some((index, result)) = tasks.next().await {
        results[index] = Some(result?);
        progress.tick();
    }
    let part1 = started.elapsed();
    let values: Vec<f64> = results
        .into_iter()
        .map(|r| r.expect("every task reported"))
        .collect();
    let all_equal = values.iter().all(|v| v.to_bits() == values[0].to_bits());

    // Part 2: pool speed-up on a CPU-bound job.
    let inputs: Vec<u64> = vec![1_500_000; 4 * cores];
    let mut timings = Vec::new();
    for size in [1, cores] {
        let pool = Pool::new(&parallel, count_primes, PoolConfig::default().size(size))?;
        let label = if size == 1 {
            "pool of 1 worker"
        } else {
            "pool of N workers"
        };
        let mut progress = Progress::new(label, inputs.len());
        let started = Instant::now();
        let mut stream = std::pin::pin!(pool.map(futures_util::stream::iter(inputs.clone())));
        let mut answers = Vec::new();
        while let Some(answer) = stream.next().await {
            answers.push(answer?);
            progress.tick();
        }
        timings.push((size, started.elapsed(), answers));
    }
    let same_answers = timings[0].2 == timings[1].2;
    let speedup = timings[0].1.as_secs_f64() / timings[1].1.as_secs_f64();

    println!();
    println!("| part | result | time |");
    println!("|---|---|---|");
    println!(
        "| {TASKS} tasks, 4 M floats each | all equal: {} ({:.6}) | {:.2?} |",
        if all_equal { "yes" } else { "NO" },
        values[0],
        part1
    );
    for (size, elapsed, answers) in &timings {
        println!(
            "| prime count x{} on {size} worker(s) | {} primes below 1500000 | {elapsed:.2?} |",
            inputs.len(),
            answers[0]
        );
    }
    println!("| speed-up, {cores} workers over 1 | {speedup:.2}x | |");
    if !all_equal || !same_answers {
        return Err("results differ between workers".into());
    }
    println!("\ndemo passed");
    Ok(())
}
