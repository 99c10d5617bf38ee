//! Differential tests: the same ring-0 code under KVM and in the replay CPU must leave
//! the same registers, flags, memory, and instruction count.

mod cpu_common;

use cpu_common::kvm::{KvmExit, KvmMachine, available};
use cpu_common::*;
use iced_x86::code_asm::*;
use krr_engine::cpu::Exit;

struct Compared {
    ours_icount: u64,
    kvm_count: u64,
}

/// Runs `img` in both and asserts identical results. `undefined` masks RFLAGS bits the
/// architecture leaves undefined for the code under test.
fn compare(name: &str, img: &Image, undefined: u64) -> Compared {
    let mut km = KvmMachine::new(img);
    let cpuid = km.cpuid.clone();
    let k = km.run(1000);
    let o = run_replay(img, &cpuid, 50_000_000);
    let ours_exit = match &o.exit {
        Exit::PortOut { port, value, .. } => KvmExit::Out { port: *port, value: *value },
        Exit::Hlt => KvmExit::Hlt,
        e => KvmExit::Other(format!("{e:?}")),
    };
    let st = o.cpu.state();
    let mut diffs = Vec::new();
    if ours_exit != k.exit {
        diffs.push(format!("exit: ours {ours_exit:?} kvm {:?}", k.exit));
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
    if (st.rflags ^ k.state.rflags) & !undefined != 0 {
        diffs.push(format!("rflags: ours {:#x} kvm {:#x}", st.rflags, k.state.rflags));
    }
    if st.cr2 != k.state.cr2 {
        diffs.push(format!("cr2: ours {:#x} kvm {:#x}", st.cr2, k.state.cr2));
    }
    for (a, b, n) in [(st.cr0, k.state.cr0, "cr0"), (st.cr3, k.state.cr3, "cr3"), (st.cr4, k.state.cr4, "cr4")] {
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
            mem_diffs += 1;
            if mem_diffs <= 4 {
                let off = (0..4096).find(|&i| page[i] != kp[i]).unwrap();
                let a = gpa as usize + off & !7;
                let ours = u64::from_le_bytes(page[a % 4096..a % 4096 + 8].try_into().unwrap());
                let kv = u64::from_le_bytes(k.ram[a..a + 8].try_into().unwrap());
                diffs.push(format!("memory at {a:#x}: ours {ours:#x} kvm {kv:#x}"));
            }
        }
    }
    if o.cpu.icount() != k.insn_delta {
        diffs.push(format!("icount: ours {} kvm insn_emulation {}", o.cpu.icount(), k.insn_delta));
    }
    assert!(diffs.is_empty(), "{name}: replay CPU differs from KVM:\n  {}", diffs.join("\n  "));
    Compared {
        ours_icount: o.cpu.icount(),
        kvm_count: k.insn_delta,
    }
}

fn end(a: &mut CodeAssembler) {
    a.out(END_PORT as u32, al).unwrap();
}

#[test]
fn basic_sequence() {
    if !available() {
        return;
    }
    let mut img = image();
    let mut a = asm();
    a.mov(eax, 1u32).unwrap();
    a.add(eax, 2i32).unwrap();
    a.mov(rbx, 0xffff_ffff_ffff_fff0u64).unwrap();
    a.add(rbx, 0x20i32).unwrap();
    a.mov(qword_ptr(DATA), rbx).unwrap();
    end(&mut a);
    img.load_code(&mut a);
    let c = compare("basic", &img, 0);
    assert_eq!(c.ours_icount, 6);
}
