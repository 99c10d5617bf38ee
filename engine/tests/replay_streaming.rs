//! Replay reads its events from the file a chunk at a time through a bounded cache:
//! the demo recording re-written in chunks of a few events replays, travels and shows
//! its events exactly as the original, with the cache within its budget (counted
//! exactly); damage in a chunk is found when replay reaches it; a synthetic recording
//! of a 1 GiB guest replays to its power-off.

#[path = "cpu_common/mod.rs"]
#[allow(unused_imports)]
mod cpu_common;
mod synthetic;

use std::path::{Path, PathBuf};

use krr_engine::replay::{End, Replay, ReplayLimits, Stop, Target};
use krr_engine::timeline::Timeline;
use krr_engine::trace::{
    FORMAT_VERSION, FinishInfo, RecordingReader, RecordingWriter, WriterConfig,
};

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/demo.krr")
}

/// The demo recording re-written through the writer in chunks of `per_chunk` events.
fn rechunked(dir: &Path, per_chunk: usize) -> PathBuf {
    let mut r = RecordingReader::open(demo()).unwrap();
    let out = dir.join(format!("demo-{per_chunk}.krr"));
    let cfg = WriterConfig {
        chunk_events: per_chunk,
        ..WriterConfig::default()
    };
    let mut w = RecordingWriter::with_config(std::fs::File::create(&out).unwrap(), cfg).unwrap();
    // The fixture is format 2; the reader gives its header as this build's.
    let mut header = r.header().clone();
    header.format_version = FORMAT_VERSION;
    w.write_header(&header).unwrap();
    w.write_snapshot(&r.snapshot().unwrap()).unwrap();
    let stats = r.stats().clone();
    for e in r.events_from(0) {
        w.push(e.unwrap()).unwrap();
    }
    w.finish(FinishInfo {
        kernel_instructions: stats.kernel_instructions,
        duration_s: stats.duration_s,
        end_reason: stats.end_reason,
    })
    .unwrap();
    out
}

/// 2 MiB: a cache of 256 KiB, about 180 chunks of 7 demo events (of 375).
const SMALL: ReplayLimits = ReplayLimits {
    recording_memory: 2 << 20,
};

#[test]
fn a_recording_in_small_chunks_replays_as_the_original_within_the_cache_budget() {
    let dir = tempfile::tempdir().unwrap();
    let path = rechunked(dir.path(), 7);
    let chunks = RecordingReader::open(&path).unwrap().chunk_index().len() as u64;
    let mut original = Replay::open(demo()).unwrap();
    let mut small = Replay::open_with(&path, SMALL).unwrap();
    assert_eq!(small.event_count(), original.event_count());
    assert_eq!(chunks, original.event_count().div_ceil(7));
    assert_eq!(original.run(Target::End), Stop::Finished(End::PowerOff));
    assert_eq!(small.run(Target::End), Stop::Finished(End::PowerOff));
    assert!(small.fully_consumed());
    assert_eq!(small.icount(), original.icount());
    assert_eq!(small.console().to_vec(), original.console().to_vec());
    for n in 0..original.event_count() {
        assert_eq!(
            small.applied_position(n),
            original.applied_position(n),
            "#{n}"
        );
    }
    let cache = small.event_cache_usage();
    assert_eq!(cache.budget, SMALL.event_cache());
    assert!(cache.peak_bytes <= cache.budget, "{cache:?}");
    assert!(cache.loads >= chunks, "{cache:?}");
    // Where events were applied: 8 bytes each, allocated as replay got there.
    assert_eq!(small.applied_table_bytes(), 8 * small.event_count());
}

#[test]
fn time_travel_over_small_chunks_lands_where_it_does_on_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let path = rechunked(dir.path(), 5);
    let budget = 64 << 20;
    let mut a = Timeline::new(Replay::open(demo()).unwrap(), budget);
    let mut b = Timeline::new(Replay::open_with(&path, SMALL).unwrap(), budget);
    let total = a.replay().final_position().unwrap();
    let events = a.replay().event_count();
    a.goto_icount(total);
    b.goto_icount(total);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in 0..40u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if i % 2 == 0 {
            let n = x % events;
            a.goto_event(n);
            b.goto_event(n);
        } else {
            let k = 1 + x % (total - 1);
            a.goto_icount(k);
            b.goto_icount(k);
            a.reverse_stepi();
            b.reverse_stepi();
        }
        let (pa, pb) = (a.position(), b.position());
        assert_eq!(
            (pa.event, pa.icount, pa.rip),
            (pb.event, pb.icount, pb.rip),
            "move {i}"
        );
    }
    let cache = b.replay().event_cache_usage();
    assert!(cache.peak_bytes <= cache.budget, "{cache:?}");
}

#[test]
fn the_density_of_events_is_where_each_is_shown_before_and_after_replay() {
    let dir = tempfile::tempdir().unwrap();
    let path = rechunked(dir.path(), 64);
    let mut r = Replay::open_with(&path, SMALL).unwrap();
    let extent = r.final_position().unwrap();
    let brute = |r: &Replay, columns: usize| {
        let mut d = vec![0u32; columns];
        for n in 0..r.event_count() {
            let p = r.event_position(n).unwrap().0;
            let c = (p as u128 * columns as u128 / (extent as u128 + 1)) as usize;
            d[c.min(columns - 1)] += 1;
        }
        d
    };
    for stop in [None, Some(r.event_count() / 3), Some(r.event_count() - 1)] {
        if let Some(n) = stop {
            r.run(Target::Event(n));
            assert_eq!(r.events_applied_known(), n + 1);
        }
        for columns in [1, 7, 80, 2000] {
            let d = r.event_density(columns, extent);
            assert_eq!(d, brute(&r, columns), "{columns} columns after {stop:?}");
            assert_eq!(
                d.iter().map(|&c| u64::from(c)).sum::<u64>(),
                r.event_count()
            );
        }
    }
}

#[test]
fn a_damaged_chunk_ends_the_events_when_replay_reaches_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = rechunked(dir.path(), 64);
    let index = RecordingReader::open(&path).unwrap().chunk_index().to_vec();
    let bad = index[index.len() / 2];
    let mut bytes = std::fs::read(&path).unwrap();
    // A byte of the chunk's compressed payload, after its 72-byte section header.
    bytes[bad.offset as usize + 72 + 4] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();

    let mut r = Replay::open(&path).unwrap();
    assert_eq!(r.recording_problem(), None, "found only when read");
    assert!(r.final_position().is_some());
    let stop = r.run(Target::End);
    assert_eq!(stop, Stop::Finished(End::EndOfRecording));
    assert_eq!(r.event_count(), bad.first_event);
    assert_eq!(r.events_consumed(), bad.first_event);
    assert_eq!(r.final_position(), None);
    let problem = r.recording_problem().expect("the damage");
    assert!(
        problem.contains(&format!(
            "{} events before it are replayed",
            bad.first_event
        )),
        "{problem}"
    );
    // A copy made before shares what was found.
    assert_eq!(r.restart().event_count(), bad.first_event);
}

#[test]
fn a_synthetic_recording_of_a_1_gib_guest_replays_to_its_power_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("synthetic.krr");
    let spec = synthetic::Spec {
        iterations: 40_000,
        ram: 1 << 30,
        window: 512 << 20,
        stride: 256 << 10,
        chunk_events: 512,
    };
    let stats = synthetic::write(&path, spec);
    assert_eq!(stats.total_events, spec.events());
    let limits = ReplayLimits {
        recording_memory: 8 << 20,
    };
    let mut r = Replay::open_with(&path, limits).unwrap();
    assert_eq!(r.event_count(), spec.events());
    assert_eq!(r.run(Target::End), Stop::Finished(End::PowerOff));
    assert!(r.fully_consumed());
    assert_eq!(r.icount(), spec.instructions());
    assert_eq!(r.recording_problem(), None);
    let cache = r.event_cache_usage();
    let chunks = spec.events().div_ceil(512);
    assert!(cache.peak_bytes <= cache.budget, "{cache:?}");
    assert!(cache.loads >= chunks, "{cache:?}");
    // Every rdtsc applied at its recorded position or before it.
    for n in (1..spec.events()).step_by(2) {
        let e = r.event(n).unwrap();
        assert!(r.applied_position(n).unwrap() <= e.icount(), "#{n}");
    }
}
