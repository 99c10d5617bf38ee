//! Time travel on the checked-in demo recording: any sequence of moves lands on exactly
//! the state a straight replay reaches.

use krr_engine::replay::{Replay, Stop, Target};
use krr_engine::timeline::{Moved, Timeline};
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
    assert_eq!(r.run(Target::Icount(k)), Stop::Reached(Target::Icount(k)));
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
    let events = opened().events().len() as u64;
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
        prop_assert_eq!(t.replay().cpu.state(), straight.cpu.state());
        prop_assert_eq!(t.replay().mem.hash(), straight.mem.hash());
        prop_assert_eq!(t.replay().console(), straight.console());
    }
}

#[test]
fn reverse_stepi_at_the_start_reports_the_start() {
    let mut t = Timeline::new(opened(), 1 << 30);
    assert_eq!(t.reverse_stepi(), Moved::Start);
    assert_eq!(t.stepi(), Moved::Arrived);
    assert_eq!(t.icount(), 1);
    assert_eq!(t.reverse_stepi(), Moved::Arrived);
    assert_eq!(t.icount(), 0);
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
    assert_eq!(t.replay().cpu.state().rip, hook);
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
