//! Latency of time-travel moves and the memory they take, per recording: median
//! reverse-stepi at random positions and median goto to a random event, after one
//! replay to the end that takes checkpoints as a session would.
//!
//! `cargo bench -p krr-engine --bench timeline` runs four cases: the checked-in demo
//! and bench-loop recordings, a synthetic recording of 10 M events (`10m`), and a
//! synthetic recording of a guest with 1 GiB of RAM (`1gib`), both written through the
//! trace writer into a temporary directory first (see `tests/synthetic`).
//! `KRR_BENCH_CASES=demo,10m` picks cases by name (also `1m`, 1 M events);
//! `KRR_BENCH_RECORDING=FILE` runs that recording alone.
//!
//! Memory, per case: the process's peak resident set (`VmHWM`, reset through
//! `/proc/self/clear_refs` before the case) and the peak of bytes allocated on the heap
//! beyond what was allocated before the case (counted by this bench's allocator), both
//! for opening and the straight replay, and for the whole case.

#[path = "../tests/cpu_common/mod.rs"]
#[allow(unused_imports)]
mod cpu_common;
#[path = "../tests/synthetic/mod.rs"]
mod synthetic;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use krr_engine::replay::{Replay, Target};
use krr_engine::timeline::{DEFAULT_CHECKPOINT_BUDGET, Timeline};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{NOW, PEAK};

/// Peak memory since the last [`Peaks::reset`].
struct Peaks {
    heap_base: usize,
}

impl Peaks {
    /// Starts measuring: the resident-set peak and the heap peak restart from now.
    fn reset() -> Peaks {
        // "5" resets the peak resident set size (VmHWM) to the current one.
        if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
            eprintln!("(cannot reset VmHWM: {e}; it then counts from the process start)");
        }
        let heap_base = NOW.load(Ordering::Relaxed);
        PEAK.store(heap_base, Ordering::Relaxed);
        Peaks { heap_base }
    }

    /// (peak resident set in KiB, peak heap bytes beyond what was allocated at reset).
    fn read(&self) -> (u64, usize) {
        let hwm = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0);
        (hwm, PEAK.load(Ordering::Relaxed) - self.heap_base)
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Opens and measures one recording.
fn run_case(name: &str, path: &Path) {
    let peaks = Peaks::reset();
    let started = Instant::now();
    let replay = Replay::open(path).expect("recording");
    let opened = started.elapsed();
    let events = replay.event_count();
    let mut end = replay.clone();
    let started = Instant::now();
    end.run(Target::End);
    let straight = started.elapsed();
    let total = end.icount();
    let cache = end.event_cache_usage();
    let applied = end.applied_table_bytes();
    drop(end);
    let (replay_hwm, replay_heap) = peaks.read();
    println!(
        "{name} ({}): {events} events, {total} instructions; open {:.3} s, straight replay {:.2} s; \
         peak {:.1} MiB resident (VmHWM), {:.1} MiB heap; event cache {:.1} of {:.0} MiB at most, \
         {} chunk reads; applied table {:.1} MiB",
        path.display(),
        opened.as_secs_f64(),
        straight.as_secs_f64(),
        replay_hwm as f64 / 1024.0,
        mib(replay_heap),
        mib(cache.peak_bytes as usize),
        mib(cache.budget as usize),
        cache.loads,
        mib(applied as usize),
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
    let (hwm, heap) = peaks.read();
    println!(
        "reverse-stepi median {:.2} ms (max {:.2} ms); goto random event median {:.2} ms (max {:.2} ms); \
         {} checkpoints, {} KiB; whole case: peak {:.1} MiB resident (VmHWM), {:.1} MiB heap",
        ms(median(reverse.clone())),
        ms(*reverse.iter().max().unwrap()),
        ms(median(goto.clone())),
        ms(*goto.iter().max().unwrap()),
        t.checkpoints().len(),
        t.checkpoint_bytes() / 1024,
        hwm as f64 / 1024.0,
        mib(heap),
    );
}

/// The synthetic cases.
fn synthetic_spec(name: &str) -> Option<synthetic::Spec> {
    match name {
        // 5 M iterations of the loop, two events each, in a 16 MiB guest whose loop
        // stores into 16 pages; the writer's default chunks of 4096 events.
        "10m" => Some(synthetic::Spec {
            iterations: 5_000_000,
            ram: 16 << 20,
            window: 64 << 10,
            stride: 64,
            chunk_events: 4096,
        }),
        // The same with 1 M events: small enough for a replay that holds every event
        // (for comparisons with builds before the event cache).
        "1m" => Some(synthetic::Spec {
            iterations: 500_000,
            ram: 16 << 20,
            window: 64 << 10,
            stride: 64,
            chunk_events: 4096,
        }),
        // A 1 GiB guest whose loop stores into 2,048 pages spread over 512 MiB of it
        // (one every 256 KiB), 400 k events.
        "1gib" => Some(synthetic::Spec {
            iterations: 200_000,
            ram: 1 << 30,
            window: 512 << 20,
            stride: 256 << 10,
            chunk_events: 4096,
        }),
        _ => None,
    }
}

fn main() {
    if let Some(path) = std::env::var_os("KRR_BENCH_RECORDING") {
        run_case("recording", Path::new(&path));
        return;
    }
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let names =
        std::env::var("KRR_BENCH_CASES").unwrap_or_else(|_| "demo,bench-loop,10m,1gib".to_string());
    // Synthetic recordings go to a temporary directory, or are kept in
    // KRR_BENCH_SYNTHETIC_DIR (to run another build's bench on them).
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let keep = std::env::var_os("KRR_BENCH_SYNTHETIC_DIR").map(PathBuf::from);
    let dir = keep.as_deref().unwrap_or(tmp.path());
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let path = match synthetic_spec(name) {
            Some(spec) => {
                let path = dir.join(format!("{name}.krr"));
                let started = Instant::now();
                let stats = synthetic::write(&path, spec);
                println!(
                    "{name}: wrote {} events, {} bytes in {:.1} s",
                    stats.total_events,
                    stats.file_size,
                    started.elapsed().as_secs_f64()
                );
                path
            }
            None => fixtures.join(format!("{name}.krr")),
        };
        run_case(name, &path);
        if synthetic_spec(name).is_some() && keep.is_none() {
            let _ = std::fs::remove_file(&path);
        }
    }
}
