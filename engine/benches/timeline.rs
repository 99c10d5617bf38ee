//! Latency of time-travel moves on a recording (default: the checked-in demo recording;
//! `KRR_BENCH_RECORDING=FILE` for another): median reverse-stepi at random positions and
//! median goto to a random event, with the checkpoint memory they left.
//!
//! `cargo bench -p krr-engine --bench timeline`

use krr_engine::replay::{Replay, Target};
use krr_engine::timeline::{DEFAULT_CHECKPOINT_BUDGET, Timeline};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A small deterministic generator (xorshift64*), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let path = std::env::var_os("KRR_BENCH_RECORDING")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/demo.krr")
        });
    let replay = Replay::open(&path).expect("recording");
    let events = replay.events().len() as u64;
    let mut end = replay.clone();
    let started = Instant::now();
    end.run(Target::End);
    let total = end.icount();
    println!(
        "{}: {events} events, {total} instructions; straight replay {:.2} s",
        path.display(),
        started.elapsed().as_secs_f64()
    );

    let mut t = Timeline::new(replay, DEFAULT_CHECKPOINT_BUDGET);
    // Checkpoints are taken on the way: one pass to the end first, as a session would.
    t.goto_icount(total);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut reverse = Vec::new();
    for _ in 0..50 {
        t.goto_icount(1 + rng.below(total - 1));
        let s = Instant::now();
        t.reverse_stepi();
        reverse.push(s.elapsed());
    }
    let mut goto = Vec::new();
    for _ in 0..50 {
        let n = rng.below(events);
        let s = Instant::now();
        t.goto_event(n);
        goto.push(s.elapsed());
    }
    println!(
        "reverse-stepi median {:.2} ms (max {:.2} ms); goto random event median {:.2} ms (max {:.2} ms); {} checkpoints, {} KiB",
        median(reverse.clone()).as_secs_f64() * 1e3,
        reverse.iter().max().unwrap().as_secs_f64() * 1e3,
        median(goto.clone()).as_secs_f64() * 1e3,
        goto.iter().max().unwrap().as_secs_f64() * 1e3,
        t.checkpoints().len(),
        t.checkpoint_bytes() / 1024
    );
}
