//! Any bytes given to the recording reader: opening, every event, random access, the
//! snapshot, statistics and verification must return values or errors, never panic,
//! hang or allocate what the bytes merely claim. Then the same bytes opened for replay
//! (the snapshot mapped lazily, the events held within a budget), a few snapshot pages
//! read through the map, and a short stretch replayed.

#![no_main]

use krr_engine::replay::{Replay, ReplayLimits, Target};
use krr_engine::trace::RecordingReader;
use libfuzzer_sys::fuzz_target;

/// Small enough that the fuzzer's inputs reach the budget's edges.
const BUDGET: u64 = 16 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(mut r) = RecordingReader::from_bytes(data.to_vec()) else {
        return;
    };
    let _ = r.header().symbols.len();
    let _ = r.recovery().reason.clone();
    let _ = r.stats().to_json().to_string();
    let _ = r.stats().to_string();
    let _ = r.chunk_index().len();
    let n = r.event_count();
    let mut read = 0u64;
    for e in r.events_from(0) {
        if e.is_err() {
            break;
        }
        read += 1;
    }
    assert!(read <= n);
    if n > 0 {
        let _ = r.event(n - 1);
        let _ = r.event(n / 2);
        let _ = r.events_from(n / 2).count();
    }
    let _ = r.event(n);
    let _ = r.first_event_at(u64::from(data.first().copied().unwrap_or(0)) << 3);
    let _ = r.first_event_at(u64::MAX);
    let pages: Vec<u64> = r.snapshot_pages().take(4).flatten().map(|p| p.gpa).collect();
    let _ = r.snapshot();
    let _ = r.verify();

    let Ok(reader) = RecordingReader::from_bytes(data.to_vec()) else {
        return;
    };
    let limits = ReplayLimits {
        recording_memory: BUDGET,
    };
    let Ok(mut replay) = Replay::from_reader(reader, limits) else {
        return;
    };
    let mut page = [0u8; 4096];
    for gpa in pages {
        let _ = replay.read_memory(gpa, &mut page);
    }
    let _ = replay.recording_problem();
    let _ = replay.run(Target::Icount(2_000));
});
