//! Time travel on the checked-in demo recording: any sequence of moves lands on exactly
//! the state a straight replay reaches.

use krr_engine::replay::{Replay, Stop, Target};
use krr_engine::state::gpr;
use krr_engine::symbols::{Frame, Symbols};
use krr_engine::timeline::{CallerFrame, Moved, Timeline};
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/demo.krr")
}

fn opened() -> Replay {
    static BASE: OnceLock<Replay> = OnceLock::new();
    BASE.get_or_init(|| Replay::open(fixture()).expect("fixture"))
        .clone()
}

fn straight_to(k: u64) -> Replay {
    let mut r = opened();
    match r.run(Target::Icount(k)) {
        Stop::Reached(Target::Icount(at)) => assert_eq!(at, k),
        // The last instruction of the recording: the end is reached with it.
        Stop::Finished(_) => assert_eq!(r.icount(), k),
        other => panic!("straight replay to {k}: {other:?}"),
    }
    r
}

fn total_icount() -> u64 {
    static TOTAL: OnceLock<u64> = OnceLock::new();
    *TOTAL.get_or_init(|| {
        let mut r = opened();
        r.run(Target::End);
        r.icount()
    })
}

#[derive(Debug, Clone)]
enum Move {
    Stepi,
    ReverseStepi,
    GotoIcount(u64),
    GotoEvent(u64),
}

fn moves() -> impl Strategy<Value = Vec<Move>> {
    let total = total_icount();
    let events = opened().event_count();
    prop::collection::vec(
        prop_oneof![
            Just(Move::Stepi),
            Just(Move::ReverseStepi),
            (0..total).prop_map(Move::GotoIcount),
            (0..events).prop_map(Move::GotoEvent),
        ],
        1..8,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn any_moves_match_a_straight_replay(moves in moves()) {
        let mut t = Timeline::new(opened(), 1 << 30);
        t.set_interval(50_000);
        for m in &moves {
            let r = match m {
                Move::Stepi => t.stepi(),
                Move::ReverseStepi => t.reverse_stepi(),
                Move::GotoIcount(k) => t.goto_icount(*k),
                Move::GotoEvent(n) => t.goto_event(*n),
            };
            prop_assert!(
                matches!(r, Moved::Arrived | Moved::Start | Moved::End(_)),
                "{m:?} -> {r:?}"
            );
        }
        // A position is an icount and the events applied there: at one icount, events
        // that need no instruction (data at an agent hook) may or may not be applied yet.
        let k = t.icount();
        let mut straight = straight_to(k);
        let consumed = t.replay().events_consumed();
        if straight.events_consumed() < consumed {
            straight.run(Target::Event(consumed - 1));
        }
        prop_assert_eq!(straight.icount(), k);
        prop_assert_eq!(straight.events_consumed(), consumed);
        prop_assert_eq!(t.replay().regs(), straight.regs());
        prop_assert_eq!(t.replay().memory_hash(), straight.memory_hash());
        prop_assert_eq!(t.replay().console(), straight.console());
    }
}

#[test]
fn reverse_stepi_at_the_start_reports_the_start() {
    let mut t = Timeline::new(opened(), 1 << 30);
    assert_eq!(t.reverse_stepi(), Moved::Start);
    assert_eq!(t.stepi(), Moved::Arrived);
    assert_eq!(t.icount(), 1);
    // Arriving at the start is arriving; only a move that cannot go back is the start.
    assert_eq!(t.reverse_stepi(), Moved::Arrived);
    assert_eq!(t.icount(), 0);
    assert_eq!(t.reverse_stepi(), Moved::Start);
    assert_eq!(t.goto_icount(5), Moved::Arrived);
    assert_eq!(t.goto_icount(0), Moved::Arrived);
    assert_eq!(t.icount(), 0);
    // Past the end: the end.
    assert!(matches!(t.goto_icount(u64::MAX), Moved::End(_)));
}

#[test]
fn reverse_continue_finds_the_last_breakpoint_hit() {
    let replay = opened();
    let hook = replay
        .header()
        .symbols
        .iter()
        .find(|s| s.name == "krr_agent_rdtsc")
        .expect("symbol")
        .addr;
    let mut t = Timeline::new(replay, 1 << 30);
    t.set_interval(100_000);
    t.add_breakpoint(hook);
    // Forward to the first two hits.
    assert_eq!(t.continue_forward(None), Moved::Breakpoint(hook));
    let first = t.icount();
    assert_eq!(t.continue_forward(None), Moved::Breakpoint(hook));
    let second = t.icount();
    assert!(second > first);
    // Far ahead, then back: reverse-continue lands on the last hit before.
    t.goto_icount(second + 300_000);
    let mut last_progress = -1.0;
    let mut seen = |p: f64| {
        assert!(p >= last_progress);
        last_progress = p;
    };
    assert_eq!(t.reverse_continue(None, &mut seen), Moved::Breakpoint(hook));
    assert!(t.icount() >= second, "{} < {second}", t.icount());
    assert_eq!(t.replay().regs().rip, hook);
    // And again from just after the second hit: back to it... then to the first.
    t.goto_icount(second + 1);
    assert_eq!(
        t.reverse_continue(None, &mut |_| {}),
        Moved::Breakpoint(hook)
    );
    assert_eq!(t.icount(), second);
    assert_eq!(
        t.reverse_continue(None, &mut |_| {}),
        Moved::Breakpoint(hook)
    );
    assert_eq!(t.icount(), first);
}

/// The moves that look at every instruction, from random places: wherever they stop,
/// the state equals a straight replay's.
#[derive(Debug, Clone)]
enum SlowMove {
    Next,
    ReverseNext,
    Finish,
    ReverseFinish,
    WatchStackAndContinue,
    WatchStackAndReverseContinue,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]
    #[test]
    fn instruction_level_moves_match_a_straight_replay(
        start in 0..total_icount(),
        moves in prop::collection::vec(prop_oneof![
            Just(SlowMove::Next),
            Just(SlowMove::ReverseNext),
            Just(SlowMove::Finish),
            Just(SlowMove::ReverseFinish),
            Just(SlowMove::WatchStackAndContinue),
            Just(SlowMove::WatchStackAndReverseContinue),
        ], 1..4),
    ) {
        let mut t = Timeline::new(opened(), 1 << 30);
        t.set_interval(50_000);
        t.goto_icount(start);
        for m in &moves {
            let sp = t.replay().regs().gpr[gpr::RSP];
            let r = match m {
                SlowMove::Next => t.next(None),
                SlowMove::ReverseNext => t.reverse_next(None, &mut |_| {}),
                SlowMove::Finish => t.finish(None, None),
                SlowMove::ReverseFinish => t.reverse_finish(None, None, &mut |_| {}),
                SlowMove::WatchStackAndContinue => {
                    t.add_watchpoint(sp - 16, 8);
                    t.continue_forward(None)
                }
                SlowMove::WatchStackAndReverseContinue => {
                    t.add_watchpoint(sp + 8, 8);
                    t.reverse_continue(None, &mut |_| {})
                }
            };
            prop_assert!(
                matches!(r, Moved::Arrived | Moved::Start | Moved::End(_) | Moved::Watchpoint(_)),
                "{m:?} -> {r:?}"
            );
            for w in t.watchpoints().clone() {
                t.remove_watchpoint(w.addr);
            }
        }
        let k = t.icount();
        let straight = straight_to(k);
        prop_assert_eq!(t.replay().regs(), straight.regs());
        prop_assert_eq!(t.replay().memory_hash(), straight.memory_hash());
    }
}

fn rsp(t: &Timeline) -> u64 {
    t.replay().regs().gpr[gpr::RSP]
}

/// The first position at or after `from` where the instruction at RIP is a call.
fn first_call_from(t: &mut Timeline, from: u64) -> u64 {
    t.goto_icount(from);
    loop {
        let ins = t.replay().current_instruction().expect("decodable");
        if ins.is_call_near() || ins.is_call_near_indirect() {
            return t.icount();
        }
        assert_eq!(t.stepi(), Moved::Arrived);
    }
}

#[test]
fn next_steps_over_a_call_and_reverse_next_comes_back_to_it() {
    let mut t = Timeline::new(opened(), 1 << 30);
    t.set_interval(50_000);
    let call = first_call_from(&mut t, 200_000);
    let ins = t.replay().current_instruction().unwrap();
    let sp = rsp(&t);
    assert_eq!(t.next(None), Moved::Arrived);
    assert_eq!(t.replay().regs().rip, ins.next_ip());
    assert_eq!(rsp(&t), sp);
    assert!(t.icount() > call + 1, "the callee ran");
    assert_eq!(t.reverse_next(None, &mut |_| {}), Moved::Arrived);
    assert_eq!(t.icount(), call);
    // Not on a call: next is stepi, and reverse-next is reverse-stepi.
    let mut t2 = Timeline::new(opened(), 1 << 30);
    let k = first_call_from(&mut t2, 200_000) + 1;
    t2.goto_icount(k);
    let ins = t2.replay().current_instruction().unwrap();
    if !ins.is_call_near() && !ins.is_call_near_indirect() {
        assert_eq!(t2.next(None), Moved::Arrived);
        assert_eq!(t2.icount(), k + 1);
    }
}

#[test]
fn finish_returns_to_the_caller_and_reverse_finish_goes_back_to_the_call() {
    let mut t = Timeline::new(opened(), 1 << 30);
    t.set_interval(50_000);
    let call = first_call_from(&mut t, 300_000);
    let ret = t.replay().current_instruction().unwrap().next_ip();
    let sp = rsp(&t);
    assert_eq!(t.stepi(), Moved::Arrived);
    // A few instructions into the callee.
    for _ in 0..3 {
        if t.replay().current_instruction().unwrap().is_call_near() {
            break;
        }
        t.stepi();
    }
    let inside = t.icount();
    assert_eq!(t.reverse_finish(None, None, &mut |_| {}), Moved::Arrived);
    assert_eq!(t.icount(), call);
    t.goto_icount(inside);
    // The caller's frame, as the terminal UI finds it: from the call-frame information.
    let symbols = Symbols::from_header(t.replay().header());
    let unwinder = symbols
        .unwinder()
        .expect("the demo kernel has .debug_frame");
    let st = t.replay().regs().clone();
    let read = |a: u64| t.replay().read_u64(a);
    let frame = Frame {
        rip: st.rip,
        rsp: st.gpr[gpr::RSP],
        rbp: st.gpr[gpr::RBP],
    };
    let caller = unwinder
        .caller(frame, true, &read)
        .expect("a described function");
    assert_eq!(
        (caller.rip, caller.rsp),
        (ret, sp),
        "the unwound caller is the call site"
    );
    let caller = CallerFrame {
        return_address: caller.rip,
        stack_pointer: caller.rsp,
    };
    assert_eq!(t.finish(Some(caller), None), Moved::Arrived);
    assert_eq!(t.replay().regs().rip, ret);
    assert_eq!(rsp(&t), sp);
    t.goto_icount(inside);
    assert_eq!(
        t.reverse_finish(Some(caller), None, &mut |_| {}),
        Moved::Arrived
    );
    assert_eq!(t.icount(), call);
}

/// A context switch (`swtch`) returns to the same address on every process's kernel
/// stack: finish out of it and next over the call that led there must wait for this
/// process's stack, not stop where another process resumes.
#[test]
fn next_and_finish_over_a_context_switch_wait_for_the_same_stack() {
    let base = opened();
    let symbols = Symbols::from_header(base.header());
    let swtch = symbols.address_of("swtch").expect("symbol swtch");
    // An entry into swtch whose return address is next reached on another stack.
    let mut r = base.clone();
    r.set_user_breakpoints(vec![swtch]);
    let (entry, frame, foreign_hit) = loop {
        match r.run(Target::End) {
            Stop::Breakpoint(a) if a == swtch => {}
            other => panic!("no entry of swtch returns first on another stack: {other:?}"),
        }
        let entry_sp = r.regs().gpr[gpr::RSP];
        let frame = CallerFrame {
            return_address: r.read_u64(entry_sp).unwrap(),
            stack_pointer: entry_sp + 8,
        };
        let mut probe = r.clone();
        probe.set_user_breakpoints(vec![frame.return_address]);
        if let Stop::Breakpoint(_) = probe.run(Target::End)
            && probe.regs().gpr[gpr::RSP] != frame.stack_pointer
        {
            break (r.icount(), frame, probe.icount());
        }
    };
    let mut t = Timeline::new(opened(), 1 << 30);
    t.set_interval(50_000);
    // finish from swtch's first instruction (assembly, which the call-frame information
    // does not describe: the frame is given as the call left it).
    t.goto_icount(entry);
    assert_eq!(t.finish(Some(frame), None), Moved::Arrived);
    assert_eq!(t.replay().regs().rip, frame.return_address);
    assert_eq!(rsp(&t), frame.stack_pointer, "finish resumed this process");
    assert!(
        t.icount() > foreign_hit,
        "passed the other process's return"
    );
    let back = t.icount();
    // The call that pushed that return address (sched tail-calls swtch).
    t.goto_icount(entry);
    assert_eq!(
        t.reverse_finish(Some(frame), None, &mut |_| {}),
        Moved::Arrived
    );
    let call = t.icount();
    let ins = t.replay().current_instruction().unwrap();
    assert!(ins.is_call_near() || ins.is_call_near_indirect(), "{ins}");
    assert_eq!(ins.next_ip(), frame.return_address);
    assert_eq!(rsp(&t), frame.stack_pointer);
    assert_eq!(t.next(None), Moved::Arrived);
    assert_eq!(t.icount(), back, "next over the call");
    // With a watchpoint set (that nothing writes), next ends at the same place.
    t.goto_icount(call);
    t.add_watchpoint(swtch, 1); // code: never written
    assert_eq!(t.next(None), Moved::Arrived);
    assert_eq!(t.icount(), back, "next over the call, watching");
}

#[test]
fn a_watchpoint_stops_continue_after_the_write_and_reverse_continue_before_it() {
    let mut t = Timeline::new(opened(), 1 << 30);
    t.set_interval(50_000);
    // The slot a call pushes its return address into.
    let call = first_call_from(&mut t, 250_000);
    t.goto_icount(call.saturating_sub(20));
    let slot = rsp(&t) - 8;
    let w = t.add_watchpoint(slot, 8);
    let read = |t: &Timeline| {
        let mut b = [0u8; 8];
        t.read_memory(slot, &mut b).ok();
        b
    };
    let before = read(&t);
    let from = t.icount();
    assert_eq!(t.continue_forward(None), Moved::Watchpoint(w));
    let hit = t.icount();
    assert!(hit > from);
    assert_ne!(read(&t), before);
    // The instruction before changed it, and nothing earlier did.
    let s = straight_to(hit - 1);
    let mut b = [0u8; 8];
    s.read_memory(slot, &mut b).unwrap();
    assert_eq!(b, before);
    // Backward from further on: stops right before the last write.
    t.goto_icount(hit + 1);
    let after = read(&t);
    let m = t.reverse_continue(None, &mut |_| {});
    assert_eq!(m, Moved::Watchpoint(w));
    let k = t.icount();
    assert!(k < hit + 1);
    let before_write = read(&t);
    t.stepi();
    assert_ne!(read(&t), before_write);
    assert_eq!(read(&t), after);
}

/// The watchpoint engine (writes reported by the memory path, stretches replayed again
/// in halves) stops at exactly the writes that a comparison of the watched bytes after
/// every instruction finds, forward and backward, interrupt frames included.
#[test]
fn watchpoint_hits_are_those_of_a_comparison_after_every_instruction() {
    let mut t = Timeline::new(opened(), 1 << 30);
    t.set_interval(20_000);
    let call = first_call_from(&mut t, 250_000);
    t.goto_icount(call.saturating_sub(20));
    let from = t.icount();
    let to = from + 60_000;
    // The slot the call pushes its return address into, which later calls and interrupt
    // frames write again.
    let slot = rsp(&t) - 8;
    let read = |r: &Replay| {
        let mut b = [0u8; 8];
        r.read_memory(slot, &mut b).ok().map(|()| b)
    };
    let mut r = t.replay().clone();
    let mut expected = Vec::new();
    let mut prev = read(&r);
    for k in from..to {
        assert_eq!(
            r.run(Target::Icount(k + 1)),
            Stop::Reached(Target::Icount(k + 1))
        );
        let now = read(&r);
        if now != prev {
            expected.push(k + 1);
        }
        prev = now;
    }
    assert!(!expected.is_empty(), "a slot written in the stretch");
    let w = t.add_watchpoint(slot, 8);
    let mut forward = Vec::new();
    while t.icount() < to {
        assert_eq!(t.continue_forward(None), Moved::Watchpoint(w));
        forward.push(t.icount());
    }
    forward.retain(|&k| k <= to);
    assert_eq!(forward, expected, "forward: right after each write");
    t.goto_icount(to);
    let mut backward = Vec::new();
    loop {
        match t.reverse_continue(None, &mut |_| {}) {
            Moved::Watchpoint(hit) if t.icount() >= from => {
                assert_eq!(hit, w);
                backward.push(t.icount() + 1);
            }
            Moved::Watchpoint(_) | Moved::Start => break,
            other => panic!("{other:?}"),
        }
    }
    backward.reverse();
    assert_eq!(backward, expected, "backward: right before each write");
}

#[test]
fn checkpoints_stay_within_a_small_budget_and_thin_with_age() {
    let budget = 3 << 20;
    let mut t = Timeline::new(opened(), budget);
    t.set_interval(10_000);
    let total = total_icount();
    assert!(matches!(
        t.goto_icount(total),
        Moved::Arrived | Moved::End(_)
    ));
    let cps = t.checkpoints();
    assert!(
        t.checkpoint_bytes() <= budget,
        "{} > {budget}: {:?}",
        t.checkpoint_bytes(),
        cps.iter().map(|c| (c.icount, c.bytes)).collect::<Vec<_>>()
    );
    assert!(cps.len() >= 6, "{} checkpoints", cps.len());
    assert_eq!(cps[0].icount, 0, "the start stays");
    // Older stretches are sparser than recent ones.
    let gap = |i: usize| cps[i + 1].icount - cps[i].icount;
    let oldest = gap(1);
    let newest = gap(cps.len() - 2);
    assert!(oldest > newest, "oldest gap {oldest}, newest gap {newest}");
    // Moves after thinning still land on the straight replay's state.
    for k in [total / 7, total / 2, total - 3] {
        assert_eq!(t.goto_icount(k), Moved::Arrived);
        assert_eq!(t.reverse_stepi(), Moved::Arrived);
        let straight = straight_to(k - 1);
        assert_eq!(t.replay().regs(), straight.regs());
        assert_eq!(t.replay().memory_hash(), straight.memory_hash());
    }
}
