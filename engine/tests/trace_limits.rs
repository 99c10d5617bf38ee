//! Recordings that claim more than they hold: the reader and replay refuse them, or read
//! them, with memory bounded by what they verified (measured here by a counting
//! allocator), and fast.
//! The files are built by the tests (tests/craft), not checked in.

mod craft;

use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use krr_engine::event::Event;
use krr_engine::memory::MAX_REGIONS;
use krr_engine::replay::{
    APPLIED_BYTES_PER_EVENT, DEFAULT_RECORDING_MEMORY, EVENT_CACHE_SHARE, Replay, ReplayLimits,
};
use krr_engine::trace::limits::{MAX_CHUNK_EVENTS, MAX_MSR_TABLE, MAX_SYMBOLS, MAX_ZSTD_LEVEL};
use krr_engine::trace::section::SectionKind;
use krr_engine::trace::{RecordingReader, RecordingWriter, TraceError, WriterConfig};

// The benches' counting allocator (the bytes allocated now and the most at once).
#[path = "../benches/support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{NOW, PEAK};

/// One test at a time: the counters are global, and another test building its file
/// while one measures would count in its peak.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The most bytes allocated at once while `f` ran, beyond what was allocated before
/// (the caller holds [`serial`]).
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = NOW.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let t = f();
    (t, PEAK.load(Ordering::Relaxed) - base)
}

const MIB: usize = 1 << 20;

/// Opens `bytes`, reads every event and verifies, as `info` does.
fn read_all(bytes: Vec<u8>) -> Result<(u64, Option<String>), TraceError> {
    let mut r = RecordingReader::from_bytes(bytes)?;
    let mut n = 0;
    for e in r.events_from(0) {
        if e.is_err() {
            break;
        }
        n += 1;
    }
    let damage = r.verify().err().map(|e| e.to_string());
    Ok((n, damage.or(r.recovery().reason.clone())))
}

#[test]
fn a_chunk_that_expands_to_22_million_events_is_refused() {
    let _serial = serial();
    for (name, bytes) in [
        ("cut short", craft::chunk_bomb()),
        ("finished", craft::chunk_bomb_finished()),
    ] {
        assert!(bytes.len() < 100 << 10, "{name}: {} bytes", bytes.len());
        let start = Instant::now();
        let (r, peak) = peak_during(|| read_all(bytes));
        let (events, problem) = r.expect("opens");
        assert_eq!(events, 0, "{name}");
        let problem = problem.expect("damage reported");
        assert!(
            problem.contains(&format!("at most {MAX_CHUNK_EVENTS} per chunk")),
            "{name}: {problem}"
        );
        assert!(peak < 16 * MIB, "{name}: peak {peak} bytes");
        assert!(start.elapsed() < Duration::from_secs(5), "{name}");
    }
}

#[test]
fn millions_of_events_are_read_one_chunk_at_a_time() {
    let _serial = serial();
    for n in [1_000_000u64, 4_000_000] {
        let bytes = craft::many_events(n, MAX_CHUNK_EVENTS);
        let (r, peak) = peak_during(|| read_all(bytes));
        let (events, problem) = r.expect("opens");
        assert_eq!((events, problem), (n, None));
        // One decoded chunk (65,536 events) and its payload at a time.
        assert!(peak < 48 * MIB, "{n} events: peak {} MiB", peak / MIB);
    }
}

#[test]
fn a_trailer_index_larger_than_the_file_is_refused() {
    let _serial = serial();
    let bytes = craft::trailer_bomb();
    let (r, peak) = peak_during(|| RecordingReader::from_bytes(bytes));
    let r = r.expect("recovered by scanning");
    assert!(!r.recovery().complete);
    assert_eq!(r.event_count(), 1);
    let reason = r.recovery().reason.clone().unwrap();
    assert!(reason.contains("index claims"), "{reason}");
    // The 64 MiB payload itself, nothing per claimed entry.
    assert!(peak < 80 * MIB, "peak {} MiB", peak / MIB);
}

#[test]
fn a_header_with_millions_of_symbols_is_refused() {
    let _serial = serial();
    let bytes = craft::symbol_bomb();
    let (r, peak) = peak_during(|| RecordingReader::from_bytes(bytes));
    let err = r.err().expect("refused").to_string();
    assert!(
        err.contains(&format!(
            "symbols, more than the {MAX_SYMBOLS} a recording may hold"
        )),
        "{err}"
    );
    assert!(peak < 80 * MIB, "peak {} MiB", peak / MIB);
}

#[test]
fn a_header_with_a_huge_msr_table_is_refused() {
    let _serial = serial();
    let bytes = craft::msr_table_bomb();
    let (r, peak) = peak_during(|| RecordingReader::from_bytes(bytes));
    let err = r.err().expect("refused").to_string();
    assert!(
        err.contains(&format!(
            "entries of the MSR table, more than the {MAX_MSR_TABLE} a recording may hold"
        )),
        "{err}"
    );
    assert!(peak < 80 * MIB, "peak {} MiB", peak / MIB);
}

#[test]
fn a_payload_larger_than_its_header_says_is_cut_off_while_decompressing() {
    let _serial = serial();
    // A frame without a content size (streamed), expanding to 32 MiB, in a section whose
    // header says 1,000 bytes.
    let big = zstd::stream::encode_all(std::io::repeat(0).take_bytes(32 << 20), 3).unwrap();
    assert_eq!(
        zstd::zstd_safe::get_frame_content_size(&big).unwrap(),
        None,
        "a streamed frame has no content size"
    );
    let mut c = craft::start(&[craft::RAM]);
    let at = c.bytes.len();
    c.chunk(1, &craft::console_events(1));
    // Replace the chunk's payload and lengths, fixing the checksums.
    let mut file = c.bytes[..at].to_vec();
    let header = raw_header(SectionKind::EventChunk, &big, 1000, [0, 1, 0, 0]);
    file.extend_from_slice(&header);
    file.extend_from_slice(&big);
    let (r, peak) = peak_during(|| read_all(file));
    let (_, problem) = r.unwrap();
    let problem = problem.unwrap();
    assert!(
        problem.contains("more than the 1000 bytes the header says"),
        "{problem}"
    );
    assert!(peak < 2 * MIB, "peak {peak} bytes");

    // A frame whose content size disagrees with the header is refused before it is
    // decompressed.
    let sized = zstd::bulk::compress(&vec![0u8; 8 << 20], 3).unwrap();
    let mut file = c.bytes[..at].to_vec();
    file.extend_from_slice(&raw_header(
        SectionKind::EventChunk,
        &sized,
        1000,
        [0, 1, 0, 0],
    ));
    file.extend_from_slice(&sized);
    let (r, peak) = peak_during(|| read_all(file));
    let problem = r.unwrap().1.unwrap();
    assert!(
        problem.contains("its zstd frame declares 8388608 bytes, the section header 1000"),
        "{problem}"
    );
    assert!(peak < MIB, "peak {peak} bytes");
}

trait TakeBytes: std::io::Read + Sized {
    fn take_bytes(self, n: u64) -> std::io::Take<Self> {
        self.take(n)
    }
}
impl<R: std::io::Read> TakeBytes for R {}

/// A section header for `payload` with these lengths and a valid checksum.
fn raw_header(kind: SectionKind, payload: &[u8], uncompressed: u64, meta: [u64; 4]) -> [u8; 72] {
    use krr_engine::trace::section::{SectionHeader, checksum};
    SectionHeader {
        kind,
        compressed_len: payload.len() as u64,
        uncompressed_len: uncompressed,
        meta,
        payload_checksum: checksum(payload),
    }
    .encode()
}

#[test]
fn replay_reads_events_through_a_cache_within_its_budget() {
    let _serial = serial();
    let event = std::mem::size_of::<Event>() as u64;
    // Within the budget: every event, no problem, read a chunk at a time.
    let bytes = craft::many_events(100_000, 4096);
    let r = Replay::from_reader(
        RecordingReader::from_bytes(bytes.clone()).unwrap(),
        ReplayLimits::default(),
    )
    .unwrap();
    assert_eq!(r.event_count(), 100_000);
    assert_eq!(r.recording_problem(), None);
    assert_eq!(r.events(0..100_000).count(), 100_000);
    let cache = r.event_cache_usage();
    assert_eq!(cache.budget, DEFAULT_RECORDING_MEMORY / EVENT_CACHE_SHARE);
    // 25 chunks of 4096 empty console events, all within 32 MiB.
    let chunk = 4096 * event;
    assert_eq!((cache.chunks, cache.loads), (25, 25));
    assert_eq!(cache.bytes, 100_000 * event);

    // Over the budget: the events whose applied positions (8 bytes each) fit besides
    // the cache (an eighth), and the replay says why the rest are not replayed.
    let limits = ReplayLimits {
        recording_memory: 512 << 10,
    };
    let r = Replay::from_reader(RecordingReader::from_bytes(bytes).unwrap(), limits).unwrap();
    let fits = (limits.recording_memory - limits.event_cache()) / APPLIED_BYTES_PER_EVENT;
    // The chunk index (25 entries) and the snapshot's map (the region table) take the
    // rest: a few KB.
    assert!(
        r.event_count() < fits && r.event_count() > fits - 512,
        "{} of {fits}",
        r.event_count()
    );
    let problem = r.recording_problem().expect("a problem");
    assert!(problem.contains("--recording-memory"), "{problem}");
    // Reading them all keeps the cache within its 64 KiB: 14 chunks of 4096 events do
    // not fit, so it holds the chunk read last alone.
    assert_eq!(r.events(0..100_000).count() as u64, r.event_count());
    let cache = r.event_cache_usage();
    assert_eq!(cache.budget, 64 << 10);
    assert_eq!((cache.chunks, cache.bytes), (1, cache.bytes.min(chunk)));
    assert!(cache.peak_bytes <= chunk, "{}", cache.peak_bytes);

    // Four million events in chunks of 65,536: opening decodes the first chunk, and
    // reading them all holds the cache (32 MiB: two chunks) and the chunk in hand.
    let bytes = craft::many_events(4_000_000, MAX_CHUNK_EVENTS);
    let (r, peak) = peak_during(|| {
        Replay::from_reader(
            RecordingReader::from_bytes(bytes).unwrap(),
            ReplayLimits::default(),
        )
    });
    let r = r.unwrap();
    let chunk = MAX_CHUNK_EVENTS * event;
    assert_eq!(r.event_count(), 4_000_000);
    assert_eq!(r.recording_problem(), None);
    assert!(
        (peak as u64) < chunk + 4 * MIB as u64,
        "open: peak {} MiB",
        peak / MIB
    );
    let (n, peak) = peak_during(|| r.events(0..4_000_000).count());
    assert_eq!(n, 4_000_000);
    let cache = r.event_cache_usage();
    assert!(cache.peak_bytes <= cache.budget, "{cache:?}");
    assert!(
        (peak as u64) < cache.budget + 2 * chunk,
        "reading: peak {} MiB",
        peak / MIB
    );
}

#[test]
fn snapshot_pages_are_read_when_first_touched() {
    let _serial = serial();
    // 1 GiB of snapshot pages (filled with ones) in a file of about 1 MB.
    let bytes = craft::snapshot_bomb(256);
    assert!(bytes.len() < 2 << 20, "{} bytes", bytes.len());
    let (r, peak) = peak_during(|| {
        Replay::from_reader(
            RecordingReader::from_bytes(bytes).unwrap(),
            ReplayLimits::default(),
        )
    });
    let r = r.unwrap();
    // A section being decoded and the map: a leaf (about 560 bytes) per page, since no
    // two pages share one here. Not the pages.
    assert!(peak < 160 * MIB, "peak {} MiB", peak / MIB);
    // Paging is off in the snapshot's CPU state: addresses are physical.
    let stride = ((60u64 << 30) >> 12) / (256 * 1024);
    let mut page = [0u8; 4096];
    for n in [0u64, 1, 1023, 1024, 256 * 1024 - 1] {
        r.read_memory((n * stride) << 12, &mut page).unwrap();
        assert!(page.iter().all(|&b| b == 1), "snapshot page {n}");
    }
    r.read_memory(4096, &mut page).unwrap();
    assert!(
        page.iter().all(|&b| b == 0),
        "a page the snapshot does not hold"
    );
    assert_eq!(r.recording_problem(), None);

    // The map counts against the budget: one too large is refused while it is built.
    let bytes = craft::snapshot_bomb(64);
    let limits = ReplayLimits {
        recording_memory: 16 << 20,
    };
    let (r, peak) =
        peak_during(|| Replay::from_reader(RecordingReader::from_bytes(bytes).unwrap(), limits));
    let err = r.err().expect("refused").to_string();
    assert!(err.contains("--recording-memory"), "{err}");
    assert!(peak < 48 * MIB, "peak {} MiB", peak / MIB);
}

#[test]
fn memory_regions_are_bounded_and_cost_nothing_until_used() {
    let _serial = serial();
    // Extra 64 GiB regions: more than the largest guest replay takes.
    let bytes = craft::region_bomb(16, 64 << 30);
    assert!(
        RecordingReader::from_bytes(bytes.clone()).is_ok(),
        "info reads it"
    );
    let (r, peak) = peak_during(|| {
        Replay::from_reader(
            RecordingReader::from_bytes(bytes).unwrap(),
            ReplayLimits::default(),
        )
    });
    let err = r.err().expect("refused").to_string();
    assert!(err.contains("replay takes at most"), "{err}");
    assert!(peak < MIB, "peak {peak} bytes");
    // Up to the limit: 62 regions of 1 GiB open at once, and nothing is allocated for them.
    let bytes = craft::region_bomb(62, 1 << 30);
    let (r, peak) = peak_during(|| {
        Replay::from_reader(
            RecordingReader::from_bytes(bytes).unwrap(),
            ReplayLimits::default(),
        )
    });
    r.unwrap();
    assert!(peak < MIB, "peak {peak} bytes");
    // One region too many.
    let bytes = craft::region_bomb(MAX_REGIONS as u64, 1 << 20);
    let err = RecordingReader::from_bytes(bytes)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("memory regions, more than the"), "{err}");
}

#[test]
fn a_frame_with_a_window_over_8_mib_is_refused_and_never_written() {
    let _serial = serial();
    // zstd level 22 on 16 MiB uses a 32 MiB window.
    let data: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let frame = zstd::bulk::compress(&data, 22).unwrap();
    let c = craft::start(&[craft::RAM]);
    let at = c.bytes.len();
    let mut file = c.bytes[..at].to_vec();
    file.extend_from_slice(&raw_header(
        SectionKind::EventChunk,
        &frame,
        data.len() as u64,
        [0, 1, 0, 0],
    ));
    file.extend_from_slice(&frame);
    drop(data);
    let (r, peak) = peak_during(|| read_all(file));
    let problem = r.unwrap().1.unwrap();
    assert!(
        problem.contains("zstd: Frame requires too much memory"),
        "{problem}"
    );
    assert!(peak < 2 * MIB, "peak {peak} bytes");

    let cfg = WriterConfig {
        zstd_level: MAX_ZSTD_LEVEL + 1,
        ..WriterConfig::default()
    };
    let err = RecordingWriter::with_config(Vec::new(), cfg)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("zstd level"), "{err}");
}
