//! Where replay applies each event of the demo recording: exactly where recorded,
//! except for the events the guest agent writes into its ring, which the recorder
//! stamps with the exit that collected them (an upper bound).

use krr_engine::replay::{Replay, Target};
use krr_engine::timeline::Timeline;
use std::path::Path;

fn fixture() -> Replay {
    Replay::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/demo.krr"))
        .expect("fixture")
}

#[test]
fn events_apply_where_recorded_or_before_their_bound() {
    let mut r = fixture();
    assert_eq!(
        r.applied_position(0),
        None,
        "nothing is known before replay"
    );
    r.run(Target::End);
    let mut before_bound = 0;
    for (n, e) in r.events(0..r.event_count()) {
        let applied = r.applied_position(n).expect("every event applied");
        if e.position_is_bound() {
            assert!(applied <= e.icount(), "#{n} applied after its bound");
            before_bound += usize::from(applied < e.icount());
        } else {
            assert_eq!(applied, e.icount(), "#{n} {:?}", e.kind());
        }
    }
    assert!(before_bound > 100, "{before_bound}");
    // Issue 12: four events collected at the exit at 320846.
    for (n, at) in [(215, 312501), (216, 316806), (217, 317168), (218, 317252)] {
        assert_eq!(r.event(n).expect("event").icount(), 320846);
        assert_eq!(r.event_position(n), Some((at, false)));
    }
}

#[test]
fn positions_are_learned_by_any_replay_and_shown_as_bounds_until_then() {
    let mut t = Timeline::new(fixture(), 1 << 30);
    t.goto_icount(317139);
    // Applied so far: known. Ahead: the recorded bound, marked as one.
    assert_eq!(t.replay().event_position(216), Some((316806, false)));
    assert_eq!(t.replay().event_position(218), Some((320846, true)));
    assert_eq!(t.replay().events_applied_known(), 217);
    // Learning ahead replays a copy; the position stays.
    t.learn_events_through(218);
    assert_eq!(t.icount(), 317139);
    assert_eq!(t.replay().event_position(218), Some((317252, false)));
    // A checkpoint or another replay of the recording shares what was learned.
    let other = t.replay().restart();
    assert_eq!(other.applied_position(217), Some(317168));
}
