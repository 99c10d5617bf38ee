//! Recording overhead: the demo guest's wall time recorded to a file against the same
//! machine with capture off, alternating runs, reported as a ratio of medians.
//!
//! `cargo bench -p krr-recorder --bench overhead` (needs /dev/kvm). `KRR_BENCH_RUNS`
//! sets the number of run pairs (default 5).

use krr_engine::event::Event;
use krr_engine::trace::{FinishInfo, Header, RecordingWriter};
use krr_recorder::{EventSink, RecordConfig, Recorder, SinkError};
use std::fs::File;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

struct FileSink(RecordingWriter<File>);

impl EventSink for FileSink {
    fn event(&mut self, e: Event) -> Result<(), SinkError> {
        Ok(self.0.push(e)?)
    }
}

fn config(capture: bool) -> RecordConfig {
    let mut c = RecordConfig::new(krr_guest::DEMO_KERNEL.to_vec(), "builtin:demo");
    c.disk = Some(krr_guest::demo_disk().into());
    c.capture = capture;
    c
}

/// One run: its wall time, exits, and (recording) the time the initial snapshot took
/// (collecting the pages, compressing and writing them).
fn run(capture: bool, path: &std::path::Path) -> (Duration, u64, Option<Duration>) {
    let stop = AtomicBool::new(false);
    let t = Instant::now();
    let mut rec = Recorder::new(config(capture)).expect("machine");
    let mut snapshot_time = None;
    let outcome = if capture {
        let t_snapshot = Instant::now();
        let start = rec.start().expect("snapshot");
        let mut w = RecordingWriter::create(path).expect("file");
        let mut h = Header::new(start.machine, start.kernel);
        h.cpuid = start.cpuid;
        h.symbols = start.symbols;
        w.write_header(&h).unwrap();
        w.write_snapshot(&start.snapshot).unwrap();
        snapshot_time = Some(t_snapshot.elapsed());
        let mut sink = FileSink(w);
        let o = rec.run(&mut sink, &stop).expect("run");
        sink.0
            .finish(FinishInfo {
                kernel_instructions: o.kernel_instructions,
                duration_s: o.duration.as_secs_f64(),
                end_reason: o.end.to_string(),
            })
            .unwrap();
        o
    } else {
        rec.run(&mut Vec::new(), &stop).expect("run")
    };
    (t.elapsed(), outcome.exits, snapshot_time)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if let Err(why) = krr_recorder::kvm_available() {
        println!("skipped: {why}");
        return;
    }
    let runs: usize = std::env::var("KRR_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.krr");
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for i in 0..runs {
        // Alternate the order so drift in the machine's load hits both sides.
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for capture in order {
            let (t, exits, snapshot) = run(capture, &path);
            let snapshot = snapshot
                .map(|s| format!(" (initial snapshot {:.3} s)", s.as_secs_f64()))
                .unwrap_or_default();
            println!(
                "run {i} capture={capture}: {:.3} s, {exits} exits{snapshot}",
                t.as_secs_f64()
            );
            if capture { on.push(t) } else { off.push(t) }
        }
    }
    let (m_on, m_off) = (median(on), median(off));
    println!(
        "recording overhead: median {:.3} s recording / {:.3} s capture off = {:.3}",
        m_on.as_secs_f64(),
        m_off.as_secs_f64(),
        m_on.as_secs_f64() / m_off.as_secs_f64()
    );
}
