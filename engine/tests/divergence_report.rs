//! A recording replays with the recording host's undefined results, whatever host
//! replays it; with one of them changed in its header it diverges, and the report names
//! the flag and the instruction whose result depended on it. Uses
//! tests/fixtures/demo-format3.krr (format 3: the measured rules and full registers at
//! digests), which needs no KVM; regenerate it with
//! `cargo run --release -- record --headless --quiet -o tests/fixtures/demo-format3.krr`.

use std::path::{Path, PathBuf};

use krr_engine::cpu::undefined::{Family, FlagRule};
use krr_engine::event::Event;
use krr_engine::replay::{End, Replay, Stop, Target};
use krr_engine::trace::{FinishInfo, Header, RecordingReader, RecordingWriter};

const AF: u64 = 0x10;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/demo-format3.krr")
}

/// A copy of the fixture, in the current format, with its header changed by `edit`.
fn with_header(edit: impl FnOnce(&mut Header)) -> tempfile::NamedTempFile {
    let mut r = RecordingReader::open(fixture()).unwrap();
    let mut header = r.header().clone();
    // The copy is written in the current format.
    header.format_version = krr_engine::trace::FORMAT_VERSION;
    edit(&mut header);
    let snapshot = r.snapshot().unwrap();
    let stats = r.stats().clone();
    let events: Vec<Event> = r.events_from(0).map(Result::unwrap).collect();
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

/// Format 3 stored no MSR table: it reads with an empty one (the demo kernel uses only
/// MSRs the replay CPU models) and replays to its end.
#[test]
fn the_format_3_fixture_replays_without_divergence() {
    let mut r = Replay::open(fixture()).unwrap();
    assert_eq!(r.header().format_version, 3);
    assert!(r.header().machine.quirks.undefined.unmodelled.is_empty());
    assert!(r.header().machine.msrs.is_empty());
    assert_eq!(r.run(Target::End), Stop::Finished(End::PowerOff));
    assert!(r.fully_consumed());
}

/// The recording host's rule for AF after a 64-bit `shr` is changed to another; the
/// replay diverges at a digest, names AF (recorded and replayed values), and names the
/// `shr` that last wrote it, which the architecture leaves undefined. That `shr` is
/// where the two replays (original and changed rule), run in lockstep, last became
/// different and stayed so: the first instruction whose changed result reached the
/// digest.
#[test]
fn a_changed_rule_diverges_where_a_result_depends_on_it_and_the_report_names_the_flag() {
    let recorded = RecordingReader::open(fixture())
        .unwrap()
        .header()
        .machine
        .quirks
        .undefined
        .rule(Family::Shr, 8, AF);
    let other = if recorded == FlagRule::Set {
        FlagRule::Clear
    } else {
        FlagRule::Set
    };
    let file = with_header(|h| {
        for size in [1, 2, 4, 8] {
            h.machine
                .quirks
                .undefined
                .set_rule(Family::Shr, size, AF, other);
        }
    });
    let mut changed = Replay::open(file.path()).unwrap();
    let Stop::Diverged(d) = changed.run(Target::End) else {
        panic!("the changed rule did not diverge");
    };
    let mut d = *d;
    d.causes = changed.explain(&d);
    let report = d.to_string();
    println!("{report}");
    let af = d
        .differences
        .iter()
        .find(|x| x.what == "AF")
        .unwrap_or_else(|| panic!("AF is not named: {report}"));
    assert_eq!(
        (af.expected, af.actual),
        (
            (recorded == FlagRule::Set) as u64,
            (other == FlagRule::Set) as u64
        ),
        "{report}"
    );
    let cause = d
        .causes
        .iter()
        .find(|c| c.what == "AF")
        .unwrap_or_else(|| panic!("no cause for AF: {report}"));
    assert!(cause.instruction.starts_with("shr"), "{report}");
    assert!(cause.undefined, "{report}");
    let rule = cause.rule.as_deref().unwrap_or_default();
    assert!(
        rule.contains(&format!("AF={}", other.short())),
        "the report names the rule the replay followed: {report}"
    );
    assert!(report.contains("AF recorded"), "{report}");

    // Lockstep: where did the replays become different for the last time before the
    // divergence, where for the first time, and where first since the last digest
    // that matched?
    let before: Vec<_> = changed.events(0..d.event).map(|(_, e)| e).collect();
    let previous_digest = before
        .iter()
        .rev()
        .find_map(|e| match &**e {
            Event::Digest(g) => Some(g.icount),
            _ => None,
        })
        .expect("a digest before the divergence");
    let mut since_previous = None;
    let mut a = Replay::open(fixture()).unwrap();
    let mut b = Replay::open(file.path()).unwrap();
    let (mut first, mut last_split) = (None, None);
    let mut apart = false;
    while a.icount() < d.icount {
        let at = a.icount();
        let t = Target::Icount(at + 1);
        assert_eq!(a.run(t), Stop::Reached(t));
        // The changed replay diverges at the digest taken after the last step.
        let stop = b.run(t);
        assert!(
            stop == Stop::Reached(t) || (at + 1 == d.icount && matches!(stop, Stop::Diverged(_))),
            "{stop:?} at {at}"
        );
        let (sa, sb) = (a.regs(), b.regs());
        let differ = sa.gpr != sb.gpr || sa.rflags != sb.rflags;
        if differ && !apart {
            first.get_or_insert(at);
            last_split = Some(at);
            if at >= previous_digest {
                since_previous.get_or_insert(at);
            }
        }
        apart = differ;
    }
    assert!(apart, "the replays are apart at the divergence");
    assert_eq!(Some(cause.icount), last_split, "{report}");
    // Since the last digest that matched, the first instruction whose result depended
    // on the changed rule is named too: the cause itself, or the first instruction
    // that left AF undefined (a shr whose AF was overwritten before the digest).
    let first_named = cause
        .first_undefined
        .as_ref()
        .map(|(icount, _, text)| {
            assert!(text.starts_with("shr"), "{report}");
            *icount
        })
        .unwrap_or(cause.icount);
    assert_eq!(Some(first_named), since_previous, "{report}");
    // Earlier splits (if any) were undone before a digest saw them.
    let first = first.expect("the replays split");
    println!("first split at icount {first}, last at {}", cause.icount);
    assert!(first <= cause.icount);
    assert_eq!(d.only_undefined(), Some(true), "{report}");
}
