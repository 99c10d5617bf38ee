//! Timing of moves with a watchpoint over the whole bench-loop recording (52 M
//! instructions), as the UI runs them. Ignored: a figure for BENCHMARKS.md, not a test of
//! behaviour (run it alone, with `--ignored --nocapture`).

use krr_engine::replay::Replay;
use krr_engine::timeline::Timeline;
use krr_ui::{App, Keymap, MoveCtl};
use std::path::Path;
use std::time::Instant;

fn bench_app() -> App {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/bench-loop.krr");
    let replay = Replay::open(path).expect("fixture");
    App::new(Timeline::new(replay, 1 << 30), Keymap::default())
}

fn timed(app: &mut App, command: &str) -> f64 {
    let mut ignore = |_: f64| {};
    let t = Instant::now();
    app.command(command, &mut MoveCtl::none(&mut ignore));
    let s = t.elapsed().as_secs_f64();
    println!(
        "{command:<18} {s:>7.3} s  -> {}  [{}]",
        app.position(),
        app.message
    );
    s
}

/// From the end of the recording, reverse-continue with a watchpoint on 8 bytes that
/// nothing writes (the first bytes of the loop's code): the move scans back to the start.
#[test]
#[ignore]
fn reverse_continue_with_a_watchpoint_over_bench_loop() {
    let mut a = bench_app();
    timed(&mut a, "continue");
    timed(&mut a, "watch bench_loop 8");
    let back = timed(&mut a, "reverse-continue");
    assert_eq!(a.timeline.icount(), 0, "{}", a.message);
    let forward = timed(&mut a, "continue");
    println!("reverse-continue {back:.3} s, continue {forward:.3} s");
}
