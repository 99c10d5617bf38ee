//! A recording cut off right after `flush_events` keeps every flushed event.

use krr_engine::event::{ConsoleOutput, Event};
use krr_engine::state::{CounterSourceKind, CpuState, KernelIdentity, MachineConfig, Snapshot};
use krr_engine::trace::{Header, RecordingReader, RecordingWriter};

#[test]
fn flushed_events_survive_a_writer_that_never_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.krr");
    let mut w = RecordingWriter::create(&path).unwrap();
    let header = Header::new(
        MachineConfig {
            regions: Vec::new(),
            tsc_khz: None,
            counter: CounterSourceKind::None,
            quirks: Default::default(),
            msrs: Default::default(),
        },
        KernelIdentity {
            name: "test".into(),
            size: 0,
            sha256: [0; 32],
        },
    );
    w.write_header(&header).unwrap();
    w.write_snapshot(&Snapshot {
        cpu: CpuState::default(),
        pages: Vec::new(),
    })
    .unwrap();
    let event = |i: u64| {
        Event::Console(ConsoleOutput {
            icount: i,
            bytes: vec![b'a' + (i % 26) as u8],
        })
    };
    for i in 0..10 {
        w.push(event(i)).unwrap();
    }
    w.flush_events().unwrap();
    w.push(event(10)).unwrap();
    // A kill -9: the writer never finishes, never drops.
    std::mem::forget(w);
    let mut r = RecordingReader::open(&path).unwrap();
    assert!(!r.recovery().complete);
    assert_eq!(r.event_count(), 10);
    let events: Vec<Event> = r.events_from(0).map(Result::unwrap).collect();
    assert_eq!(events, (0..10).map(event).collect::<Vec<_>>());
}
