//! The demo, shared by the adapters' `demo` examples: the original
//! lwt-parallel test, then a pool speed-up, on whichever runtime runs it.
//!
//! 1. 64 tasks, each started after a random delay of up to π seconds; each
//!    worker seeds a PRNG with a fixed seed, builds 4 M pseudo-random floats,
//!    folds them with sin/cos and sends the result back. Every result must be
//!    equal (same code, same seed, separate processes).
//! 2. A CPU-bound job mapped over a pool of 1 worker, then of N workers
//!    (N = available cores), showing the speed-up.
//! 3. Captured output: a pool's workers print as they work, and each line
//!    comes back attributed to its worker's pid and stream; a worker that
//!    writes an error to stderr and exits shows it in its death error.
//!
//! Progress is a bar (indicatif) when stderr is a terminal, and a few plain
//! lines otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use parallel_zygote::async_core::{Output, Parallel, Pool, PoolConfig, Runtime};

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

/// A progress bar (indicatif) when stderr is a terminal; plain lines, a few
/// per part, otherwise (CI, a pipe, a file).
enum Progress {
    Bar(indicatif::ProgressBar),
    Lines {
        label: String,
        total: usize,
        done: usize,
    },
}

impl Progress {
    fn new(label: impl Into<String>, total: usize) -> Self {
        let label = label.into();
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total as u64);
            let style = indicatif::ProgressStyle::with_template(
                "{msg:<28} [{bar:40}] {pos:>3}/{len} {elapsed}",
            )
            .expect("a valid template")
            .progress_chars("#>.");
            bar.set_style(style);
            bar.set_message(label);
            Progress::Bar(bar)
        } else {
            eprintln!("{label}: 0/{total}");
            Progress::Lines {
                label,
                total,
                done: 0,
            }
        }
    }

    fn tick(&mut self) {
        match self {
            Progress::Bar(bar) => {
                bar.inc(1);
                if bar.position() >= bar.length().unwrap_or(0) {
                    bar.finish();
                }
            }
            Progress::Lines { label, total, done } => {
                *done += 1;
                if *done == *total || *done % (*total / 8).max(1) == 0 {
                    eprintln!("{label}: {done}/{total}");
                }
            }
        }
    }
}

/// A pooled job that reports as it goes, on stdout, and warns on stderr.
async fn chatty_job(job: u32) -> u32 {
    for step in 1..=2 {
        println!("job {job}: step {step} of 2");
    }
    if job % 3 == 0 {
        eprintln!("job {job}: divisible by 3, double-checking");
    }
    job * job
}

/// A job that fails the way real ones do: a message on stderr, then exit.
async fn failing_job(code: i32) -> u32 {
    eprintln!("loading the model...");
    eprintln!("error: the model file is truncated");
    std::process::exit(code)
}

/// Part 3: workers' output captured, each line attributed to its worker.
async fn captured_output<R: Runtime>(
    parallel: &Parallel<R>,
) -> Result<(), Box<dyn std::error::Error>> {
    println!("\ncaptured output (each line attributed to the worker that wrote it):");
    let (output, mut lines) = Output::lines(256);
    let capturing = parallel.clone().worker_output(output);
    let pool = Pool::new(&capturing, chatty_job, PoolConfig::default().size(2))?;
    // Four jobs at once on two workers: the lines interleave, each tagged.
    let jobs: FuturesUnordered<_> = (1..=4).map(|job| pool.call(job)).collect();
    for answer in jobs.collect::<Vec<_>>().await {
        answer?;
    }
    let expected: usize = (1..=4u32).map(|job| 2 + usize::from(job % 3 == 0)).sum();
    for _ in 0..expected {
        let Some(line) = lines.next().await else {
            break;
        };
        println!(
            "  [worker {} {}] {}",
            line.pid,
            line.stream.as_str(),
            line.text
        );
    }
    match capturing.spawn(failing_job, 3).await {
        Err(error) => {
            println!("  a failing worker: {error}");
            for line in error.stderr_tail() {
                println!("    stderr: {line}");
            }
        }
        Ok(_) => return Err("the failing job did not fail".into()),
    }
    Ok(())
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
            "pool of 1 worker".to_string()
        } else {
            format!("pool of {size} workers")
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

    // Part 3: what workers print, attributed.
    captured_output(&parallel).await?;
    println!("\ndemo passed");
    Ok(())
}
