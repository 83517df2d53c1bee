//! Sampling, summaries and the printed report.
//!
//! Every figure is a list of samples, each one timed around exactly the work
//! it names (setup and teardown stay outside the clock). Summaries are the
//! median and the 10th / 90th percentiles; ratios compare medians measured in
//! the same run.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// How many samples to take: `warmup` discarded, then at least `min` and at
/// most `max`, stopping after `time` once `min` is reached.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub warmup: usize,
    pub min: usize,
    pub max: usize,
    pub time: Duration,
}

/// Drives one sampling loop: `while sampler.next() { ...; sampler.record(d) }`.
///
/// A loop instead of a closure, so a sample may borrow anything mutably and
/// await freely.
pub struct Sampler {
    budget: Budget,
    started: Instant,
    taken: usize,
    samples: Vec<Duration>,
}

impl Budget {
    /// This budget's share for one of `rounds` interleaved rounds.
    pub fn split(self, rounds: usize) -> Budget {
        Budget {
            warmup: self.warmup,
            min: self.min.div_ceil(rounds).max(1),
            max: self.max.div_ceil(rounds).max(1),
            time: self.time / rounds as u32,
        }
    }
}

impl Sampler {
    pub fn new(budget: Budget) -> Self {
        Sampler {
            budget,
            started: Instant::now(),
            taken: 0,
            samples: Vec::with_capacity(budget.min),
        }
    }

    /// Whether to take another sample.
    pub fn next(&self) -> bool {
        let kept = self.samples.len();
        if self.taken < self.budget.warmup {
            return true;
        }
        kept < self.budget.min
            || (kept < self.budget.max && self.started.elapsed() < self.budget.time)
    }

    pub fn record(&mut self, sample: Duration) {
        if self.taken >= self.budget.warmup {
            self.samples.push(sample);
        }
        self.taken += 1;
        if self.taken == self.budget.warmup {
            // The clock for `time` starts after the warm-up (before the
            // first kept sample, which counts against `time` like the rest).
            self.started = Instant::now();
        }
    }

    pub fn finish(self) -> Vec<Duration> {
        self.samples
    }
}

/// What a row's numbers are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unit {
    /// Seconds per operation: lower is better.
    Time,
    /// Bytes per second: higher is better.
    BytesPerSec,
    /// Operations per second: higher is better.
    OpsPerSec,
    /// KiB of memory: lower is better.
    KiB,
    /// A plain count (page faults): lower is better.
    Count,
}

/// Median and spread of one figure, in its unit (seconds, bytes/s, ...).
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
    pub samples: usize,
    pub unit: Unit,
}

/// The `q` quantile of sorted values, interpolated linearly between ranks.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = q * (sorted.len() - 1) as f64;
    let low = rank.floor() as usize;
    let high = rank.ceil() as usize;
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

impl Summary {
    pub fn of(values: impl IntoIterator<Item = f64>, unit: Unit) -> Summary {
        let mut sorted: Vec<f64> = values.into_iter().collect();
        sorted.sort_by(f64::total_cmp);
        Summary {
            median: quantile(&sorted, 0.5),
            p10: quantile(&sorted, 0.1),
            p90: quantile(&sorted, 0.9),
            samples: sorted.len(),
            unit,
        }
    }

    pub fn times(samples: &[Duration]) -> Summary {
        Summary::of(samples.iter().map(Duration::as_secs_f64), Unit::Time)
    }

    /// Samples that each moved `amount` (bytes or operations) in a duration.
    pub fn rates(samples: &[Duration], amount: f64, unit: Unit) -> Summary {
        Summary::of(samples.iter().map(|d| amount / d.as_secs_f64()), unit)
    }

    fn format(&self, value: f64) -> String {
        match self.unit {
            Unit::Time if value < 1e-3 => format!("{:.1} µs", value * 1e6),
            Unit::Time if value < 1.0 => format!("{:.2} ms", value * 1e3),
            Unit::Time => format!("{value:.2} s"),
            Unit::BytesPerSec => format!("{:.2} GB/s", value / 1e9),
            Unit::OpsPerSec => format!("{:.0} k/s", value / 1e3),
            Unit::KiB => format!("{value:.0} KiB"),
            Unit::Count => format!("{value:.0}"),
        }
    }
}

/// A row: a figure, and the key of the row it is compared with.
#[derive(Debug, Clone)]
struct Row {
    key: String,
    label: String,
    baseline: Option<String>,
}

#[derive(Debug, Clone)]
struct Table {
    title: String,
    note: String,
    rows: Vec<Row>,
}

/// A cell of a [`Matrix`]: a figure (median, and ratio to its baseline), or
/// a target's ratio and verdict.
#[derive(Debug, Clone)]
pub enum Cell {
    Figure {
        key: String,
        baseline: Option<String>,
    },
    Target {
        numerator: String,
        denominator: String,
        at_least: bool,
        limit: f64,
    },
}

/// Figures of the same kind side by side: one row per figure, one column
/// per adapter (each cell against that adapter's own baseline).
#[derive(Debug, Clone)]
struct Matrix {
    title: String,
    note: String,
    columns: Vec<String>,
    rows: Vec<(String, Vec<Cell>)>,
}

/// One run's figures, kept by key, and the tables that show them.
#[derive(Debug, Default)]
pub struct Report {
    figures: HashMap<String, Summary>,
    labels: HashMap<String, String>,
    tables: Vec<Table>,
    matrices: Vec<Matrix>,
    targets: Vec<String>,
}

impl Report {
    /// Opens a new table; rows added next go into it.
    pub fn table(&mut self, title: impl Into<String>, note: impl Into<String>) {
        self.tables.push(Table {
            title: title.into(),
            note: note.into(),
            rows: Vec::new(),
        });
    }

    /// Records a figure under `key` (shown as `label`) in the current table,
    /// compared with the figure under `baseline` (which may come later, or
    /// from another table).
    pub fn add(&mut self, key: &str, label: &str, baseline: Option<&str>, summary: Summary) {
        eprintln!(
            "  {label:<66} median {:>11}  p10 {:>11}  p90 {:>11}  (n={})",
            summary.format(summary.median),
            summary.format(summary.p10),
            summary.format(summary.p90),
            summary.samples,
        );
        self.figures.insert(key.to_string(), summary);
        self.labels.insert(key.to_string(), label.to_string());
        self.tables
            .last_mut()
            .expect("a table is open")
            .rows
            .push(Row {
                key: key.to_string(),
                label: label.to_string(),
                baseline: baseline.map(str::to_string),
            });
    }

    /// Shows a figure recorded elsewhere (perhaps later) as a row of the
    /// current table.
    pub fn show(&mut self, key: &str, label: &str, baseline: Option<&str>) {
        self.tables
            .last_mut()
            .expect("a table is open")
            .rows
            .push(Row {
                key: key.to_string(),
                label: label.to_string(),
                baseline: baseline.map(str::to_string),
            });
    }

    pub fn get(&self, key: &str) -> Option<Summary> {
        self.figures.get(key).copied()
    }

    /// `numerator / denominator` of two medians, if both were measured.
    pub fn ratio(&self, numerator: &str, denominator: &str) -> Option<f64> {
        Some(self.get(numerator)?.median / self.get(denominator)?.median)
    }

    /// Checks a target: `value(numerator / denominator) <= limit` (or `>=`
    /// when `at_least`), and keeps the verdict for the targets table.
    pub fn target(
        &mut self,
        what: &str,
        numerator: &str,
        denominator: &str,
        at_least: bool,
        limit: f64,
    ) {
        let (Some(top), Some(bottom)) = (self.get(numerator), self.get(denominator)) else {
            self.targets
                .push(format!("| {what} | not measured | | | |"));
            return;
        };
        let value = top.median / bottom.median;
        // The best decile: p10 of times, p90 of rates.
        let best = |summary: Summary| match summary.unit {
            Unit::BytesPerSec | Unit::OpsPerSec => summary.p90,
            _ => summary.p10,
        };
        let fast = best(top) / best(bottom);
        let met = if at_least {
            value >= limit
        } else {
            value <= limit
        };
        let sign = if at_least { "≥" } else { "≤" };
        self.targets.push(format!(
            "| {what} | {value:.2}× | {fast:.2}× | {sign} {limit} | {} |",
            if met { "met" } else { "**missed**" }
        ));
    }

    /// Opens a side-by-side table with these column headers (rows from
    /// [`Report::matrix_row`]); printed after the other tables.
    pub fn matrix(
        &mut self,
        title: impl Into<String>,
        note: impl Into<String>,
        columns: Vec<String>,
    ) {
        self.matrices.push(Matrix {
            title: title.into(),
            note: note.into(),
            columns,
            rows: Vec::new(),
        });
    }

    /// Adds a row to the current side-by-side table: one cell per column.
    pub fn matrix_row(&mut self, label: impl Into<String>, cells: Vec<Cell>) {
        self.matrices
            .last_mut()
            .expect("a matrix is open")
            .rows
            .push((label.into(), cells));
    }

    fn cell(&self, cell: &Cell) -> String {
        match cell {
            Cell::Figure { key, baseline } => {
                let Some(summary) = self.get(key) else {
                    return "—".into();
                };
                let median = summary.format(summary.median);
                match baseline.as_ref().and_then(|b| self.ratio(key, b)) {
                    Some(ratio) => format!("{median} ({ratio:.2}×)"),
                    None => median,
                }
            }
            Cell::Target {
                numerator,
                denominator,
                at_least,
                limit,
            } => match self.ratio(numerator, denominator) {
                Some(value) => {
                    let met = if *at_least {
                        value >= *limit
                    } else {
                        value <= *limit
                    };
                    if met {
                        format!("{value:.2}× met")
                    } else {
                        format!("{value:.2}× **missed**")
                    }
                }
                None => "not measured".into(),
            },
        }
    }

    /// The whole report as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        // In section order ("1.", "1c.", "2.", ...), whatever the order of
        // measurement; the big-heap table after the 0 GiB one.
        let mut tables: Vec<&Table> = self.tables.iter().collect();
        tables.sort_by(|a, b| a.title.cmp(&b.title));
        for table in tables {
            let _ = writeln!(out, "\n### {}\n", table.title);
            if !table.note.is_empty() {
                let _ = writeln!(out, "{}\n", table.note);
            }
            let _ = writeln!(
                out,
                "| benchmark | median | p10 | p90 | n | ratio | baseline |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
            for row in &table.rows {
                let Some(summary) = self.get(&row.key) else {
                    let _ = writeln!(out, "| {} | not measured | | | | | |", row.label);
                    continue;
                };
                let (ratio, baseline) = match &row.baseline {
                    Some(baseline) => match self.ratio(&row.key, baseline) {
                        Some(ratio) => (format!("{ratio:.2}×"), self.labels[baseline].clone()),
                        None => ("—".to_string(), format!("{baseline} (not measured)")),
                    },
                    None => ("—".to_string(), String::new()),
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    row.label,
                    summary.format(summary.median),
                    summary.format(summary.p10),
                    summary.format(summary.p90),
                    summary.samples,
                    ratio,
                    baseline
                );
            }
        }
        for matrix in &self.matrices {
            let _ = writeln!(out, "\n### {}\n", matrix.title);
            if !matrix.note.is_empty() {
                let _ = writeln!(out, "{}\n", matrix.note);
            }
            let _ = writeln!(out, "| | {} |", matrix.columns.join(" | "));
            let _ = writeln!(out, "|---|{}", "---:|".repeat(matrix.columns.len()));
            for (label, cells) in &matrix.rows {
                let cells: Vec<String> = cells.iter().map(|cell| self.cell(cell)).collect();
                let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
            }
        }
        if !self.targets.is_empty() {
            let _ = writeln!(out, "\n### Targets (ratios of medians, same run)\n");
            let _ = writeln!(
                out,
                "| target | ratio of medians | ratio of best deciles | limit | verdict (medians) |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---|");
            for line in &self.targets {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }
}

/// How a row's samples become a figure.
#[derive(Debug, Clone, Copy)]
pub enum Measure {
    /// Each sample is the time of one operation.
    Time,
    /// Each sample is the time to move `amount` (bytes, calls).
    Rate { amount: f64, unit: Unit },
}

type Run<'a> = Box<dyn FnMut(Budget) -> Vec<Duration> + 'a>;

struct GroupRow<'a> {
    key: String,
    label: String,
    baseline: Option<String>,
    budget: Budget,
    measure: Measure,
    run: Run<'a>,
}

/// Figures measured together, interleaved: `rounds` rounds, each running
/// every row with its share of the budget, in alternating order (ABC, CBA,
/// ...). A machine whose speed drifts (other jobs, a VM's vCPU wake-ups)
/// then weighs on a figure and its baseline alike.
pub struct Group<'a> {
    rows: Vec<GroupRow<'a>>,
}

impl<'a> Group<'a> {
    pub fn new() -> Self {
        Group { rows: Vec::new() }
    }

    /// Adds a row; `run(budget)` takes that many samples, setting up (and
    /// tearing down) whatever it needs outside the clock.
    pub fn add(
        &mut self,
        key: impl Into<String>,
        label: impl Into<String>,
        baseline: Option<String>,
        budget: Budget,
        measure: Measure,
        run: impl FnMut(Budget) -> Vec<Duration> + 'a,
    ) {
        self.rows.push(GroupRow {
            key: key.into(),
            label: label.into(),
            baseline,
            budget,
            measure,
            run: Box::new(run),
        });
    }

    /// Measures every row, then records the figures in `report`'s current table.
    pub fn run(mut self, report: &mut Report, rounds: usize) {
        let started = Instant::now();
        let rounds = rounds.max(1);
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); self.rows.len()];
        for round in 0..rounds {
            let order: Vec<usize> = if round % 2 == 0 {
                (0..self.rows.len()).collect()
            } else {
                (0..self.rows.len()).rev().collect()
            };
            for index in order {
                let row = &mut self.rows[index];
                let taken = (row.run)(row.budget.split(rounds));
                samples[index].extend(taken);
            }
        }
        for (row, samples) in self.rows.iter().zip(samples) {
            let summary = match row.measure {
                Measure::Time => Summary::times(&samples),
                Measure::Rate { amount, unit } => Summary::rates(&samples, amount, unit),
            };
            report.add(&row.key, &row.label, row.baseline.as_deref(), summary);
        }
        eprintln!(
            "  ({} rows, {rounds} interleaved rounds, {:.1} s)",
            self.rows.len(),
            started.elapsed().as_secs_f64()
        );
    }
}
