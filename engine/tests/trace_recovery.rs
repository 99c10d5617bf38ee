//! Damaged recordings: truncation at every byte, byte flips, hostile lengths, foreign
//! versions, a writer that dies without finishing.

use std::time::{Duration, Instant};

use krr_engine::event::*;
use krr_engine::state::*;
use krr_engine::trace::section::{FOOTER_LEN, SECTION_HEADER_LEN, SECTION_MAGIC, SectionKind};
use krr_engine::trace::{
    FinishInfo, Header, RecordingReader, RecordingWriter, TraceError, WriterConfig,
};

fn header() -> Header {
    Header::new(
        MachineConfig {
            regions: vec![],
            tsc_khz: None,
            counter: CounterSourceKind::None,
            quirks: Default::default(),
            msrs: Default::default(),
        },
        KernelIdentity {
            name: "builtin:demo".into(),
            size: 1,
            sha256: [0; 32],
        },
    )
}

/// A deterministic mix of event kinds.
fn events(n: u64) -> Vec<Event> {
    (0..n)
        .map(|i| match i % 5 {
            0 => Event::PortIn(PortIn {
                icount: i * 10,
                port: 0x3f8,
                size: 1,
                value: i as u32,
            }),
            1 => Event::Random(RandomValue {
                icount: i * 10,
                instruction: RandomInstruction::Rdtsc,
                value: i * 977,
                success: true,
            }),
            2 => Event::Console(ConsoleOutput {
                icount: i * 10,
                bytes: format!("line {i}\n").into_bytes(),
            }),
            3 => Event::UserRead(UserRead {
                icount: i * 10,
                dst: 0xffff_8000_0000_0000 + i,
                src: 0x40_0000,
                data: vec![i as u8; 17],
            }),
            _ => Event::KernelInterrupt(KernelInterrupt {
                icount: i * 10,
                vector: 32,
                rip: 0xffff_ffff_8100_0000 + i,
                point: InjectionPoint::AfterExit,
            }),
        })
        .collect()
}

fn snapshot() -> Snapshot {
    let mut a = vec![0u8; PAGE_SIZE];
    a[..5].copy_from_slice(b"hello");
    Snapshot {
        cpu: CpuState {
            rip: 0x1000,
            ..CpuState::default()
        },
        pages: vec![
            SnapshotPage { gpa: 0, data: a },
            SnapshotPage {
                gpa: 0x2000,
                data: vec![0xcc; PAGE_SIZE],
            },
        ],
    }
}

fn small_recording(n: u64) -> (Vec<u8>, Vec<Event>) {
    let evs = events(n);
    let cfg = WriterConfig {
        chunk_events: 4,
        chunk_bytes: 1 << 16,
        zstd_level: 3,
    };
    let mut w = RecordingWriter::with_config(Vec::new(), cfg).unwrap();
    w.write_header(&header()).unwrap();
    w.write_snapshot(&snapshot()).unwrap();
    for e in &evs {
        w.push(e.clone()).unwrap();
    }
    w.finish(FinishInfo {
        kernel_instructions: n * 10,
        duration_s: 0.25,
        end_reason: "guest powered off".into(),
    })
    .unwrap();
    (w.into_inner(), evs)
}

/// Reads events from 0 until the end or the first error; returns them and whether an
/// error ended the read.
fn read_prefix(r: &mut RecordingReader<std::io::Cursor<Vec<u8>>>) -> (Vec<Event>, bool) {
    let mut out = Vec::new();
    for e in r.events_from(0) {
        match e {
            Ok(e) => out.push(e),
            Err(_) => return (out, true),
        }
    }
    (out, false)
}

#[test]
fn truncation_at_every_offset() {
    let (bytes, evs) = small_recording(37);
    let full = RecordingReader::from_bytes(bytes.clone()).unwrap();
    assert!(full.recovery().complete);
    let index = full.chunk_index().to_vec();
    assert_eq!(index.len(), 10);
    let events_start = index[0].offset;
    let trailer_at = u64::from_le_bytes(bytes[bytes.len() - 24..][..8].try_into().unwrap());
    let trailer_end = bytes.len() as u64 - FOOTER_LEN;
    // Where each chunk ends: the next chunk, or the trailer.
    let ends: Vec<u64> = index
        .iter()
        .skip(1)
        .map(|c| c.offset)
        .chain([trailer_at])
        .collect();

    for len in 0..bytes.len() as u64 {
        let cut = bytes[..len as usize].to_vec();
        let result = RecordingReader::from_bytes(cut);
        if len < events_start {
            match result {
                Err(TraceError::Truncated { .. }) => {}
                Err(e) => panic!("cut at {len}: expected a truncation error, got {e}"),
                Ok(_) => panic!("cut at {len} (inside header or snapshot) opened"),
            }
            continue;
        }
        let mut r = result.unwrap_or_else(|e| panic!("cut at {len}: {e}"));
        let rec = r.recovery().clone();
        assert!(!rec.complete, "cut at {len}");
        let whole: Vec<usize> = (0..index.len()).filter(|i| ends[*i] <= len).collect();
        let expected: u64 = whole.iter().map(|i| u64::from(index[*i].count)).sum();
        assert_eq!(rec.valid_events, expected, "cut at {len}: {rec:?}");
        assert_eq!(r.event_count(), expected);
        let valid_end = if len >= trailer_end {
            trailer_end
        } else {
            whole.last().map_or(events_start, |i| ends[*i])
        };
        assert_eq!(rec.lost_bytes, len - valid_end, "cut at {len}: {rec:?}");
        assert!(rec.reason.as_deref().is_some_and(|s| !s.is_empty()));
        let (got, failed) = read_prefix(&mut r);
        assert!(!failed, "cut at {len}");
        assert_eq!(&got[..], &evs[..expected as usize], "cut at {len}");
        let stats = r.stats();
        assert!(!stats.complete);
        assert_eq!(stats.total_events, expected);
        assert_eq!(stats.file_size, len);
        for kind in EventKind::ALL {
            assert_eq!(
                stats.count(kind),
                got.iter().filter(|e| e.kind() == kind).count() as u64
            );
        }
        if len >= trailer_end {
            // Only the footer is missing: the trailer's statistics are used.
            assert_eq!(stats.end_reason, "guest powered off");
            assert_eq!(stats.kernel_instructions, 370);
        }
        assert_eq!(r.snapshot().unwrap(), snapshot(), "cut at {len}");
    }
}

#[test]
fn byte_flips_are_detected_and_never_panic() {
    let (bytes, evs) = small_recording(23);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for pos in 0..bytes.len() {
        // Every position, with a different random non-zero mask each time.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mask = (seed as u8).max(1);
        let mut bad = bytes.clone();
        bad[pos] ^= mask;
        let mut r = match RecordingReader::from_bytes(bad) {
            Err(_) => continue,
            Ok(r) => r,
        };
        let (got, failed) = read_prefix(&mut r);
        assert_eq!(&got[..], &evs[..got.len()], "flip at {pos}: not a prefix");
        let _ = r.snapshot();
        let _ = r.stats().to_json();
        let _ = r.stats().to_string();
        let detected = !r.recovery().complete || failed || r.verify().is_err();
        assert!(detected, "flip of {mask:#x} at {pos} went unnoticed");
    }
}

#[test]
fn checksum_catches_payload_corruption() {
    let (bytes, _) = small_recording(20);
    let r = RecordingReader::from_bytes(bytes.clone()).unwrap();
    let chunk = r.chunk_index()[2];
    let mut bad = bytes.clone();
    bad[(chunk.offset + SECTION_HEADER_LEN + 3) as usize] ^= 0x40;
    let mut r = RecordingReader::from_bytes(bad).unwrap();
    assert!(r.recovery().complete, "the trailer is intact");
    let err = r.event(chunk.first_event).unwrap_err().to_string();
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(err.contains(&format!("offset {}", chunk.offset)), "{err}");
    assert!(err.contains("event chunk 2"), "{err}");
    // Chunks before it still read.
    assert!(r.event(0).is_ok());
}

fn crafted_header(
    kind: SectionKind,
    compressed: u64,
    uncompressed: u64,
    meta: [u64; 4],
) -> [u8; 72] {
    let mut b = [0u8; 72];
    b[0..4].copy_from_slice(&SECTION_MAGIC);
    b[4..8].copy_from_slice(&(kind as u32).to_le_bytes());
    b[8..16].copy_from_slice(&compressed.to_le_bytes());
    b[16..24].copy_from_slice(&uncompressed.to_le_bytes());
    for (i, m) in meta.iter().enumerate() {
        b[24 + 8 * i..32 + 8 * i].copy_from_slice(&m.to_le_bytes());
    }
    let mut h = Fnv1a::new();
    h.write(&b[0..64]);
    b[64..72].copy_from_slice(&h.finish().to_le_bytes());
    b
}

fn preamble() -> Vec<u8> {
    let (bytes, _) = small_recording(0);
    bytes[..16].to_vec()
}

#[test]
fn huge_claimed_lengths_fail_fast_without_allocating() {
    for claim in [u64::MAX, 1 << 40, 9_000_000_000_000_000_000, (64 << 20) + 1] {
        for (compressed, uncompressed) in [(claim, 100), (100, claim), (claim, claim)] {
            let mut file = preamble();
            file.extend_from_slice(&crafted_header(
                SectionKind::Header,
                compressed,
                uncompressed,
                [0; 4],
            ));
            file.extend_from_slice(&[0u8; 5000]);
            let start = Instant::now();
            let err = RecordingReader::from_bytes(file).err().expect("must fail");
            assert!(start.elapsed() < Duration::from_secs(1));
            let msg = err.to_string();
            assert!(msg.contains(&claim.to_string()), "{msg}");
            assert!(msg.contains("offset 16"), "{msg}");
        }
    }
}

#[test]
fn hostile_chunk_after_a_valid_snapshot_is_cut_off() {
    let (bytes, _) = small_recording(8);
    let r = RecordingReader::from_bytes(bytes.clone()).unwrap();
    let events_start = r.chunk_index()[0].offset as usize;
    let crafted = [
        crafted_header(SectionKind::EventChunk, 1 << 40, 1 << 40, [0, 5, 0, 0]),
        crafted_header(SectionKind::EventChunk, 4, 60 << 20, [0, 5, 0, 0]),
        crafted_header(
            SectionKind::EventChunk,
            4,
            100,
            [0, u64::from(u32::MAX), 0, 0],
        ),
        crafted_header(SectionKind::EventChunk, 4, 100, [7, 1, 0, 0]),
        crafted_header(SectionKind::SnapshotEnd, 4, 100, [0, 0, 0, 0]),
    ];
    for h in crafted {
        let mut file = bytes[..events_start].to_vec();
        file.extend_from_slice(&h);
        file.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let start = Instant::now();
        let mut r = RecordingReader::from_bytes(file).unwrap();
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(r.event_count(), 0);
        let rec = r.recovery();
        assert!(!rec.complete);
        assert_eq!(rec.lost_bytes, 80);
        assert!(
            rec.reason
                .as_deref()
                .unwrap()
                .contains(&format!("offset {events_start}")),
            "{rec:?}"
        );
        assert!(r.events_from(0).next().is_none());
    }
}

#[test]
fn other_format_versions_are_rejected() {
    let (mut bytes, _) = small_recording(3);
    bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
    let err = RecordingReader::from_bytes(bytes).err().unwrap();
    assert!(matches!(
        err,
        TraceError::UnsupportedVersion { found: 7, .. }
    ));
    assert!(
        err.to_string().contains("unsupported format version 7"),
        "{err}"
    );
}

#[test]
fn not_a_recording() {
    let err = RecordingReader::from_bytes(b"\x7fELF\x02\x01\x01\0 and more bytes".to_vec())
        .err()
        .unwrap();
    assert!(matches!(err, TraceError::BadMagic { .. }), "{err}");
}

#[test]
fn killed_writer_leaves_every_complete_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("killed.krr");
    let evs = events(1000);
    let cfg = WriterConfig {
        chunk_events: 64,
        ..WriterConfig::default()
    };
    let mut w = RecordingWriter::with_config(std::fs::File::create(&path).unwrap(), cfg).unwrap();
    w.write_header(&header()).unwrap();
    w.write_snapshot(&snapshot()).unwrap();
    for e in &evs {
        w.push(e.clone()).unwrap();
    }
    // Like a kill -9: no finish, no Drop.
    std::mem::forget(w);
    let mut r = RecordingReader::open(&path).unwrap();
    let rec = r.recovery().clone();
    assert!(!rec.complete);
    assert_eq!(rec.valid_events, 1000 / 64 * 64);
    assert_eq!(rec.lost_bytes, 0);
    let got: Vec<Event> = r.events_from(0).collect::<Result<_, _>>().unwrap();
    assert_eq!(&got[..], &evs[..960]);
    assert_eq!(r.stats().kernel_instructions, evs[959].icount());
}

#[test]
fn dropped_writer_flushes_buffered_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dropped.krr");
    let evs = events(100);
    {
        let mut w = RecordingWriter::create(&path).unwrap();
        w.write_header(&header()).unwrap();
        w.write_snapshot(&snapshot()).unwrap();
        for e in &evs {
            w.push(e.clone()).unwrap();
        }
    }
    let mut r = RecordingReader::open(&path).unwrap();
    assert!(!r.recovery().complete);
    let got: Vec<Event> = r.events_from(0).collect::<Result<_, _>>().unwrap();
    assert_eq!(got, evs);
}

const CHILD_ENV: &str = "KRR_TRACE_KILL9_CHILD";

/// The recorder side of `kill_9_keeps_every_flushed_chunk`: runs only in the child
/// process that test starts (it does nothing in a normal test run).
#[test]
fn kill_9_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    use std::io::Write as _;
    let cfg = WriterConfig {
        chunk_events: 100,
        ..WriterConfig::default()
    };
    let mut w = RecordingWriter::with_config(std::fs::File::create(&path).unwrap(), cfg).unwrap();
    w.write_header(&header()).unwrap();
    w.write_snapshot(&snapshot()).unwrap();
    let mut out = std::io::stdout().lock();
    for e in events(5050) {
        w.push(e).unwrap();
        if w.event_count().is_multiple_of(100) {
            writeln!(out, "flushed {}", w.event_count()).unwrap();
        }
    }
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    // Wait to be killed, with 50 events still buffered.
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn kill_9_keeps_every_flushed_chunk() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kill9.krr");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kill_9_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut flushed = 0u64;
    let mut ready = false;
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("flushed ") {
            flushed = n.parse().unwrap();
        } else if line == "ready" {
            ready = true;
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(ready, "the child did not get to the end");
    assert_eq!(flushed, 5000);
    let mut r = RecordingReader::open(&path).unwrap();
    let rec = r.recovery().clone();
    assert!(!rec.complete);
    assert_eq!(rec.valid_events, 5000, "{rec:?}");
    assert_eq!(rec.lost_bytes, 0, "{rec:?}");
    let got: Vec<Event> = r.events_from(0).collect::<Result<_, _>>().unwrap();
    assert_eq!(got, events(5000));
}
