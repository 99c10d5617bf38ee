//! Backtraces from the demo kernel's DWARF call-frame information.

use krr_engine::replay::{Replay, Stop, Target};
use krr_engine::state::gpr;
use krr_engine::symbols::{Frame, Symbols};
use std::path::Path;

#[test]
fn call_frame_information_unwinds_to_the_callers() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/demo.krr");
    let mut r = Replay::open(&path).unwrap();
    let symbols = Symbols::from_header(r.header());
    let unwinder = symbols
        .unwinder()
        .expect("the demo kernel has .debug_frame");
    let target = symbols.address_of("copy_from_user").expect("symbol");
    r.set_user_breakpoints(vec![target]);
    let mut checked = 0;
    while checked < 3 {
        match r.run(Target::End) {
            Stop::Breakpoint(a) if a == target => {}
            other => panic!("breakpoint not reached: {other:?}"),
        }
        let st = r.regs().clone();
        let read = |addr: u64| r.read_u64(addr);
        let frames = unwinder.backtrace(
            Frame {
                rip: st.rip,
                rsp: st.gpr[gpr::RSP],
                rbp: st.gpr[gpr::RBP],
            },
            &read,
        );
        // At a function's first instruction the return address is at [rsp].
        assert_eq!(frames[0], target);
        assert_eq!(Some(frames[1]), read(st.gpr[gpr::RSP]), "{frames:x?}");
        assert!(frames.len() >= 3, "{frames:x?}");
        // Every return address is in known code (the last may be an assembly label
        // right after the entry stub's call, at offset 0).
        for f in &frames[1..] {
            assert!(
                symbols.lookup(*f).is_some(),
                "{f:#x} in no function: {frames:x?}"
            );
        }
        let names: Vec<String> = frames.iter().map(|f| symbols.describe(*f)).collect();
        assert!(names[1].starts_with("syscall_dispatch"), "{names:?}");
        checked += 1;
    }
}
