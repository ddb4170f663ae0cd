//! A small benchmark harness that measures *ratios within one run*.
//!
//! These machines are shared and noisy, so absolute figures drift between runs; ratios measured
//! side by side drift much less. [`compare`] interleaves the contenders in short slices over
//! several rounds (A, B, A, B, ...), so a burst of outside load hits all of them alike, and
//! reports each one's operations per second and its ratio to the first (the baseline).

use std::hint::black_box;
use std::time::{Duration, Instant};

/// One contender: a name and a closure doing one operation per call.
pub struct Contender<'a> {
    name: String,
    op: Box<dyn FnMut() + 'a>,
    ops: u64,
    elapsed: Duration,
}

impl<'a> Contender<'a> {
    /// A contender named `name` running `op` once per operation.
    pub fn new(name: impl Into<String>, op: impl FnMut() + 'a) -> Self {
        Self {
            name: name.into(),
            op: Box::new(op),
            ops: 0,
            elapsed: Duration::ZERO,
        }
    }
}

/// The result for one contender.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Its name.
    pub name: String,
    /// Operations per second over all rounds.
    pub ops_per_sec: f64,
    /// `ops_per_sec` divided by the baseline's (the first contender's).
    pub ratio_to_baseline: f64,
}

/// Seconds of measurement per contender, from `STRONGROOM_BENCH_SECS` (default 2).
#[must_use]
pub fn budget() -> Duration {
    let secs = std::env::var("STRONGROOM_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs.max(0.05))
}

/// Runs the contenders interleaved for about `total` each and returns their rates and ratios.
pub fn compare(mut contenders: Vec<Contender<'_>>, total: Duration) -> Vec<Measured> {
    const ROUNDS: u32 = 10;
    let slice = total / ROUNDS;
    // Warm-up: one short slice each.
    for c in &mut contenders {
        run_for(&mut *c.op, slice / 4);
    }
    for _ in 0..ROUNDS {
        for c in &mut contenders {
            let (n, t) = run_for(&mut *c.op, slice);
            c.ops += n;
            c.elapsed += t;
        }
    }
    let rate = |c: &Contender<'_>| c.ops as f64 / c.elapsed.as_secs_f64();
    let base = contenders.first().map_or(1.0, rate);
    contenders
        .iter()
        .map(|c| Measured {
            name: c.name.clone(),
            ops_per_sec: rate(c),
            ratio_to_baseline: rate(c) / base,
        })
        .collect()
}

fn run_for(op: &mut dyn FnMut(), slice: Duration) -> (u64, Duration) {
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        for _ in 0..16 {
            op();
        }
        n += 16;
        let t = start.elapsed();
        if t >= slice {
            return (n, t);
        }
    }
}

/// Prints a titled markdown table of `results` (the format the README quotes).
#[allow(clippy::print_stdout)]
pub fn print_table(title: &str, results: &[Measured]) {
    println!("\n### {title}\n");
    println!(
        "| contender | ops/s | ratio to {} |",
        results.first().map_or("-", |r| &r.name)
    );
    println!("|---|---:|---:|");
    for r in results {
        println!(
            "| {} | {:.0} | {:.2} |",
            r.name, r.ops_per_sec, r.ratio_to_baseline
        );
    }
}

/// `black_box` re-exported for benchmark closures.
pub fn keep<T>(v: T) -> T {
    black_box(v)
}
