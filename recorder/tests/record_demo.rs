//! Recording the built-in demo guest under KVM.

use krr_engine::event::{Event, EventKind};
use krr_recorder::{EndReason, RecordConfig, Recorder};
use std::sync::atomic::AtomicBool;

fn demo_config() -> RecordConfig {
    let mut c = RecordConfig::new(krr_guest::DEMO_KERNEL.to_vec(), "builtin:demo");
    c.disk = Some(krr_guest::demo_disk().into());
    c
}

fn record(config: RecordConfig) -> (krr_recorder::RecordOutcome, Vec<Event>) {
    let mut rec = Recorder::new(config).expect("machine set up");
    let start = rec.start().expect("snapshot");
    assert!(!start.snapshot.pages.is_empty());
    let mut events = Vec::new();
    let stop = AtomicBool::new(false);
    let outcome = rec.run(&mut events, &stop).expect("recording runs");
    (outcome, events)
}

#[test]
fn demo_records_every_event_kind_to_power_off_twice_in_one_process() {
    if let Err(why) = krr_recorder::kvm_available() {
        println!("skipped: {why}");
        return;
    }
    for round in 0..2 {
        let (outcome, events) = record(demo_config());
        println!(
            "round {round}: {:?}, {} kernel instructions, {} exits, {:.2} s",
            outcome.end,
            outcome.kernel_instructions,
            outcome.exits,
            outcome.duration.as_secs_f64()
        );
        for k in EventKind::ALL {
            println!("  {:<16} {}", k.name(), outcome.counts[k.index()]);
        }
        assert_eq!(outcome.end, EndReason::PowerOff, "round {round}");
        let count = |k: EventKind| outcome.counts[k.index()];
        for kind in [
            EventKind::Syscall,
            EventKind::UserInterrupt,
            EventKind::KernelInterrupt,
            EventKind::UserException,
            EventKind::PortIn,
            EventKind::UserRead,
            EventKind::Rdtsc,
            EventKind::DmaWrite,
            EventKind::Console,
        ] {
            assert!(count(kind) > 0, "round {round}: no {} events", kind.name());
        }
        assert_eq!(
            events.len() as u64,
            outcome.counts.iter().sum::<u64>(),
            "every counted event reached the sink"
        );
        // Positions never go backwards.
        assert!(events.windows(2).all(|w| w[0].icount() <= w[1].icount()));
        assert!(outcome.kernel_instructions > 1_000_000);
        let console: Vec<u8> = events
            .iter()
            .filter_map(|e| match e {
                Event::Console(c) => Some(c.bytes.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        let text = String::from_utf8_lossy(&console);
        assert!(text.contains("powering off"), "console: {text}");
        // The demo takes random numbers from rdrand and rdseed where the CPUID it observes
        // offers them (it says which); each one it executes is an event.
        let sources = krr_guest::console::random_sources(&text)
            .unwrap_or_else(|| panic!("no random-source line in: {text}"));
        assert_eq!(
            count(EventKind::Rdrand) > 0,
            sources.rdrand,
            "round {round}"
        );
        assert_eq!(
            count(EventKind::Rdseed) > 0,
            sources.rdseed,
            "round {round}"
        );
    }
}
