//! Replay of the checked-in demo recording (tests/fixtures/demo.krr), which needs no KVM,
//! and detection of deliberately corrupted recordings.
//!
//! Regenerate the fixture after a format change with
//! `cargo run --release -- record --headless --quiet -o tests/fixtures/demo.krr`.

use krr_engine::event::{Event, EventKind};
use krr_engine::replay::{End, Replay, Stop, Target};
use krr_engine::trace::{FinishInfo, RecordingReader, RecordingWriter};
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/demo.krr")
}

fn recorded_console(path: &Path) -> Vec<u8> {
    RecordingReader::open(path).unwrap().console().unwrap()
}

#[test]
fn fixture_replays_to_power_off_without_divergence() {
    let path = fixture();
    let mut replay = Replay::open(&path).expect("fixture opens");
    let stop = replay.run(Target::End);
    assert_eq!(stop, Stop::Finished(End::PowerOff), "{stop:?}");
    assert!(replay.fully_consumed());
    let stats = RecordingReader::open(&path).unwrap().stats().clone();
    assert_eq!(replay.icount(), stats.kernel_instructions);
    assert_eq!(replay.events_consumed(), stats.total_events);
    assert_eq!(replay.console().to_vec(), recorded_console(&path));
    let text = String::from_utf8_lossy(&replay.console().to_vec()).into_owned();
    assert!(
        text.contains("all processes exited, powering off"),
        "{text}"
    );
}

#[test]
fn goto_event_stops_right_after_it_and_continues_identically() {
    let mut a = Replay::open(fixture()).unwrap();
    let n = a.event_count() / 2;
    assert_eq!(a.run(Target::Event(n)), Stop::Reached(Target::Event(n)));
    assert_eq!(a.events_consumed(), n + 1);
    let middle = a.icount();
    assert_eq!(a.run(Target::End), Stop::Finished(End::PowerOff));

    let mut b = Replay::open(fixture()).unwrap();
    assert_eq!(
        b.run(Target::Icount(middle)),
        Stop::Reached(Target::Icount(middle))
    );
    assert_eq!(b.icount(), middle);
    assert_eq!(b.run(Target::End), Stop::Finished(End::PowerOff));
    assert_eq!(a.regs(), b.regs());
    assert_eq!(a.memory_hash(), b.memory_hash());
}

/// Writes a copy of the fixture with its events changed by `edit` (in the current
/// format: the fixture is format 2).
fn corrupted(edit: impl FnOnce(&mut Vec<Event>)) -> tempfile::NamedTempFile {
    rewritten(|_| {}, edit)
}

/// Writes a copy of the fixture with its header and events changed (in the current
/// format).
fn rewritten(
    edit_header: impl FnOnce(&mut krr_engine::trace::Header),
    edit: impl FnOnce(&mut Vec<Event>),
) -> tempfile::NamedTempFile {
    let mut r = RecordingReader::open(fixture()).unwrap();
    let mut header = r.header().clone();
    header.format_version = krr_engine::trace::FORMAT_VERSION;
    edit_header(&mut header);
    let snapshot = r.snapshot().unwrap();
    let stats = r.stats().clone();
    let mut events: Vec<Event> = r.events_from(0).map(Result::unwrap).collect();
    edit(&mut events);
    let file = tempfile::NamedTempFile::new().unwrap();
    let mut w = RecordingWriter::create(file.path()).unwrap();
    w.write_header(&header).unwrap();
    w.write_snapshot(&snapshot).unwrap();
    for e in events {
        w.push(e).unwrap();
    }
    w.finish(FinishInfo {
        kernel_instructions: stats.kernel_instructions,
        duration_s: stats.duration_s,
        end_reason: stats.end_reason.clone(),
    })
    .unwrap();
    file
}

fn diverges(file: &tempfile::NamedTempFile) -> krr_engine::replay::Divergence {
    let mut replay = Replay::open(file.path()).unwrap();
    match replay.run(Target::End) {
        Stop::Diverged(d) => *d,
        other => panic!("corruption not detected: {other:?}"),
    }
}

fn nth_index(events: &[Event], kind: EventKind, n: usize) -> usize {
    events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind() == kind)
        .nth(n)
        .map(|(i, _)| i)
        .expect("the fixture has such an event")
}

#[test]
fn a_wrong_port_input_is_a_divergence() {
    let mut at = 0;
    let file = corrupted(|events| {
        // A UART line status that says "not ready": the guest polls again, so the next
        // input comes at a different instruction than recorded.
        at = events
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e, Event::PortIn(p) if p.port == 0x3fd))
            .nth(40)
            .map(|(i, _)| i)
            .expect("UART status reads");
        if let Event::PortIn(p) = &mut events[at] {
            p.value ^= 0x20;
        }
    });
    let d = diverges(&file);
    assert!(d.event as usize > at, "{d}");
    assert!(d.expected.contains("port"), "{d}");
}

#[test]
fn a_shifted_interrupt_is_a_divergence_with_a_useful_report() {
    let mut at = 0;
    let mut icount = 0;
    let file = corrupted(|events| {
        at = nth_index(events, EventKind::KernelInterrupt, 3);
        if let Event::KernelInterrupt(k) = &mut events[at] {
            k.icount += 1;
            icount = k.icount;
        }
    });
    let mut replay = Replay::open(file.path()).unwrap();
    let d = match replay.run(Target::End) {
        Stop::Diverged(d) => *d,
        other => panic!("corruption not detected: {other:?}"),
    };
    assert_eq!(d.event as usize, at, "{d}");
    // Reported where replay reached the recorded point (an interrupt at `hlt` is noticed
    // at the `hlt`, one instruction before the shifted position).
    assert!(d.icount + 1 >= icount && d.icount <= icount, "{d}");
    assert!(d.expected.contains("interrupt"), "{d}");
    let last = replay.last_instructions(d.icount, 8);
    assert_eq!(last.len(), 8, "{last:?}");
    let report = format!("{d}");
    assert!(report.contains(&format!("event #{at}")), "{report}");
}

#[test]
fn a_changed_console_byte_is_a_divergence() {
    let file = corrupted(|events| {
        let at = nth_index(events, EventKind::Console, 2);
        if let Event::Console(c) = &mut events[at] {
            c.bytes[0] ^= 1;
        }
    });
    let d = diverges(&file);
    assert!(d.expected.contains("console"), "{d}");
}

#[test]
fn a_missing_rdtsc_value_is_a_divergence() {
    let file = corrupted(|events| {
        let at = nth_index(events, EventKind::Rdtsc, 0);
        events.remove(at);
    });
    let d = diverges(&file);
    assert!(!d.expected.is_empty() && !d.actual.is_empty(), "{d}");
}

#[test]
fn a_changed_stack_digest_is_a_divergence() {
    let file = corrupted(|events| {
        let at = events
            .iter()
            .position(|e| matches!(e, Event::Digest(d) if d.stack.is_some()))
            .expect("the fixture's digests cover the stack");
        if let Event::Digest(d) = &mut events[at] {
            d.stack = d.stack.map(|s| s ^ 1);
        }
    });
    let d = diverges(&file);
    assert!(d.expected.contains("stack"), "{d}");
}

/// The fixture is format 2: it reads with the undefined results replay always gave it
/// (the legacy rules) and digests that hold a hash of the registers.
#[test]
fn a_format_2_recording_reads_with_the_legacy_rules() {
    use krr_engine::cpu::undefined::UndefinedBehaviour;
    use krr_engine::event::DigestRegisters;
    let mut r = RecordingReader::open(fixture()).unwrap();
    assert_eq!(r.header().format_version, 2);
    assert_eq!(
        r.header().machine.quirks.undefined,
        UndefinedBehaviour::legacy()
    );
    assert!(
        r.header().machine.msrs.is_empty(),
        "format 2 has no MSR table"
    );
    let digests: Vec<DigestRegisters> = r
        .events_from(0)
        .map(Result::unwrap)
        .filter_map(|e| match e {
            Event::Digest(d) => Some(d.registers),
            _ => None,
        })
        .collect();
    assert!(!digests.is_empty());
    assert!(
        digests
            .iter()
            .all(|d| matches!(d, DigestRegisters::Hash(_)))
    );
}

/// What this build cannot replay faithfully is refused with a clear message, never
/// replayed wrongly: page-table-entry reads where the kernel has no hook to apply them, and
/// positions from a branch counter.
#[test]
fn what_replay_cannot_apply_is_refused() {
    use krr_engine::event::PteRead;
    use krr_engine::replay::ReplayError;
    use krr_engine::state::CounterSourceKind;
    let file = corrupted(|events| {
        let icount = events[10].icount();
        events.insert(
            10,
            Event::PteRead(PteRead {
                icount,
                addr: 0xffff_8880_0000_1000,
                value: 0x8000_0000_0123_4067,
            }),
        );
    });
    match Replay::open(file.path()) {
        Err(ReplayError::Unsupported(why)) => assert!(why.contains("page-table-entry"), "{why}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a PTE read was accepted"),
    }
    let file = rewritten(
        |h| h.machine.counter = CounterSourceKind::PerfGuestKernel,
        |_| {},
    );
    match Replay::open(file.path()) {
        Err(ReplayError::Unsupported(why)) => assert!(why.contains("branches"), "{why}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a branch-counted recording was accepted"),
    }
}
