//! Debug aid: searches rflags variants matching a recorded signature digest.
use krr_engine::replay::{Replay, Target};
use krr_engine::state::regs_digest;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut r = Replay::open(&args[1]).expect("open");
    let rip = u64::from_str_radix(args[2].trim_start_matches("0x"), 16).unwrap();
    let want = u64::from_str_radix(args[3].trim_start_matches("0x"), 16).unwrap();
    let start: u64 = args[4].parse().unwrap();
    r.run(Target::Icount(start));
    for _ in 0..4_000_000u64 {
        let k = r.icount() + 1;
        r.run(Target::Icount(k));
        let st = r.cpu.state();
        if st.rip != rip { continue; }
        for extra in [0u64, 0x10000, 0x100, 0x10100, 0x4, 0x10] {
            for fl in [st.rflags | extra, st.rflags & !extra] {
                if regs_digest(&st.gpr, fl) == want {
                    println!("match at icount {} rax {:#x} rflags {fl:#x} (ours {:#x})", r.icount(), st.gpr[0], st.rflags);
                    return;
                }
            }
        }
    }
    println!("no match");
}
