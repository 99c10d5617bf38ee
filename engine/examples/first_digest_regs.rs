//! Debug aid: registers at the first digest point of a recording.
use krr_engine::event::Event;
use krr_engine::replay::{Replay, Target};
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut r = Replay::open(&args[1]).expect("open");
    let n = r
        .events()
        .iter()
        .position(|e| matches!(e, Event::Digest(_)))
        .unwrap();
    println!("first digest is event {n}");
    let stop = r.run(Target::Event(n.saturating_sub(1) as u64));
    println!("{stop:?} icount {}", r.icount());
    let st = r.cpu.state();
    for (i, v) in st.gpr.iter().enumerate() {
        print!("{}={v:#x} ", krr_engine::state::gpr::NAMES[i]);
    }
    println!("rip={:#x} rflags={:#x}", st.rip, st.rflags);
}
