//! Runs an image under KVM and in the replay CPU and lists what differs: the exit, every
//! register and flag, control registers, segment selectors and bases, every byte of
//! memory, the port accesses and (where asked) the instruction count.

use iced_x86::code_asm::{CodeAssembler, al};
use krr_engine::cpu::Exit;

use super::kvm::{KvmExit, KvmMachine, observed_cpuid};
use super::{END_PORT, Image, RAM_SIZE, run_replay, run_replay_with};

/// The instruction counts of a comparison.
pub struct Compared {
    pub ours_icount: u64,
    pub kvm_count: u64,
}

/// Runs `img` in both and asserts identical results: every register and flag, the
/// architecturally undefined ones included (the replay CPU follows this host's rules as
/// the recorder's probe measured them: [`super::kvm::host_quirks`]).
pub fn compare(name: &str, img: &Image) -> Compared {
    compare_opts(name, img, true)
}

pub fn compare_opts(name: &str, img: &Image, check_count: bool) -> Compared {
    compare_full(name, img, check_count, &|_| String::new())
}

pub fn compare_annotated(name: &str, img: &Image, annotate: &dyn Fn(u64) -> String) -> Compared {
    compare_full(name, img, true, annotate)
}

pub fn compare_full(
    name: &str,
    img: &Image,
    check_count: bool,
    annotate: &dyn Fn(u64) -> String,
) -> Compared {
    let (diffs, compared) = differences(img, None, check_count, annotate);
    assert!(
        diffs.is_empty(),
        "{name}: replay CPU differs from KVM:\n  {}",
        diffs.join("\n  ")
    );
    compared
}

/// What differs between KVM and the replay CPU (with `quirks`, or this host's).
pub fn differences(
    img: &Image,
    quirks: Option<krr_engine::cpu::Quirks>,
    check_count: bool,
    annotate: &dyn Fn(u64) -> String,
) -> (Vec<String>, Compared) {
    let mut km = KvmMachine::new(img);
    let cpuid = observed_cpuid();
    let k = km.run(1000);
    let o = match quirks {
        Some(q) => run_replay_with(img, &cpuid, 5_000_000, q),
        None => run_replay(img, &cpuid, 5_000_000),
    };
    let ours_exit = match &o.exit {
        Exit::PortOut { port, value, .. } => KvmExit::Out {
            port: *port,
            value: *value,
        },
        Exit::Hlt => KvmExit::Hlt,
        e => KvmExit::Other(format!("{e:?}")),
    };
    let st = o.cpu.state();
    let mut diffs = Vec::new();
    if ours_exit != k.exit {
        diffs.push(format!("exit: ours {ours_exit:?} kvm {:?}", k.exit));
    }
    if o.io.inputs != k.io.inputs {
        diffs.push(format!(
            "port inputs (port, bytes): ours {:x?} kvm {:x?}",
            o.io.inputs, k.io.inputs
        ));
    }
    if o.io.outputs != k.io.outputs {
        diffs.push(format!(
            "port outputs (port, bytes): ours {:x?} kvm {:x?}",
            o.io.outputs, k.io.outputs
        ));
    }
    for i in 0..16 {
        if st.gpr[i] != k.state.gpr[i] {
            diffs.push(format!(
                "{}: ours {:#x} kvm {:#x}",
                krr_engine::state::gpr::NAMES[i],
                st.gpr[i],
                k.state.gpr[i]
            ));
        }
    }
    if st.rip != k.state.rip {
        diffs.push(format!("rip: ours {:#x} kvm {:#x}", st.rip, k.state.rip));
    }
    if st.rflags != k.state.rflags {
        diffs.push(format!(
            "rflags: ours {:#x} kvm {:#x}",
            st.rflags, k.state.rflags
        ));
    }
    if st.cr2 != k.state.cr2 {
        diffs.push(format!("cr2: ours {:#x} kvm {:#x}", st.cr2, k.state.cr2));
    }
    for (a, b, n) in [
        (st.cr0, k.state.cr0, "cr0"),
        (st.cr3, k.state.cr3, "cr3"),
        (st.cr4, k.state.cr4, "cr4"),
    ] {
        if a != b {
            diffs.push(format!("{n}: ours {a:#x} kvm {b:#x}"));
        }
    }
    for i in 0..6 {
        let (a, b) = (st.seg[i], k.state.seg[i]);
        if a.selector != b.selector || a.base != b.base {
            diffs.push(format!("seg{i}: ours {a:x?} kvm {b:x?}"));
        }
    }
    let mut page = vec![0u8; 4096];
    let mut mem_diffs = 0;
    for gpa in (0..RAM_SIZE).step_by(4096) {
        o.mem.read(gpa, &mut page).unwrap();
        let kp = &k.ram[gpa as usize..gpa as usize + 4096];
        if page[..] != kp[..] {
            for off in (0..4096).step_by(8) {
                if page[off..off + 8] != kp[off..off + 8] {
                    mem_diffs += 1;
                    if mem_diffs <= 6 {
                        let a = gpa as usize + off;
                        let ours = u64::from_le_bytes(page[off..off + 8].try_into().unwrap());
                        let kv = u64::from_le_bytes(k.ram[a..a + 8].try_into().unwrap());
                        diffs.push(format!(
                            "memory at {a:#x}: ours {ours:#x} kvm {kv:#x} {}",
                            annotate(a as u64)
                        ));
                    }
                }
            }
        }
    }
    if check_count && o.cpu.icount() != k.insn_delta {
        diffs.push(format!(
            "icount: ours {} kvm insn_emulation {}",
            o.cpu.icount(),
            k.insn_delta
        ));
    }
    let compared = Compared {
        ours_icount: o.cpu.icount(),
        kvm_count: k.insn_delta,
    };
    (diffs, compared)
}

pub fn end(a: &mut CodeAssembler) {
    a.out(END_PORT as u32, al).unwrap();
}

/// Whether KVM here cannot execute `img` at ring 0 (its instruction emulator stops
/// with KVM_EXIT_INTERNAL_ERROR, as it does on some hosts for x87, SSE and other
/// instructions): then it says so and compares nothing. Otherwise [`compare`].
pub fn compare_where_kvm_emulates(name: &str, img: &Image) -> Option<Compared> {
    let k = KvmMachine::new(img).run(1000);
    if let KvmExit::Other(why) = &k.exit
        && why.contains("InternalError")
    {
        println!("{name}: KVM cannot execute this at ring 0 here ({why}); not compared at ring 0");
        return None;
    }
    Some(compare(name, img))
}
