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
    compare_opts(name, img, undefined, true)
}

fn compare_opts(name: &str, img: &Image, undefined: u64, check_count: bool) -> Compared {
    let mut km = KvmMachine::new(img);
    let cpuid = km.cpuid.clone();
    let k = km.run(1000);
    let o = run_replay(img, &cpuid, 5_000_000);
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
    if check_count && o.cpu.icount() != k.insn_delta {
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

/// `rep movsb`/`rep stosq`/`repe cmpsb` with various counts: measures KVM's count and
/// checks the replay CPU's rule (engine/src/icount.rs) against it.
#[test]
fn rep_string_counts() {
    if !available() {
        return;
    }
    let mut report = Vec::new();
    for &n in &[0u64, 1, 3, 1023, 1024, 1025, 2048, 2049, 5000] {
        for kind in 0..3 {
            let mut img = image();
            let mut a = asm();
            a.mov(rcx, n).unwrap();
            a.mov(rsi, DATA).unwrap();
            a.mov(rdi, DATA + 0x4000).unwrap();
            a.mov(rax, 0x1122_3344_5566_7788u64).unwrap();
            match kind {
                0 => a.rep().movsb().unwrap(),
                1 => a.rep().stosq().unwrap(),
                _ => a.repe().cmpsb().unwrap(),
            }
            end(&mut a);
            img.load_code(&mut a);
            for i in 0..0x4000u64 {
                img.ram[(DATA + i) as usize] = (i * 7 % 251) as u8;
            }
            let c = compare(&format!("rep kind {kind} n {n}"), &img, 0);
            report.push(format!("kind {kind} rcx {n}: kvm {} ours {}", c.kvm_count, c.ours_icount));
            if kind < 2 {
                // 4 setup instructions, the rep, the end marker.
                assert_eq!(c.ours_icount, 5 + 1 + n.div_ceil(1024), "rep rule for rcx {n}");
            }
        }
    }
    println!("{}", report.join("\n"));
}

/// A load that page-faults, handled by a handler that maps the page and returns with
/// iretq: measures whether KVM counts the faulting instruction.
#[test]
fn faulting_instruction_count() {
    if !available() {
        return;
    }
    let mut img = image();
    let target = DATA + 0x3000;
    let pte = Image::pte_addr(target);
    img.write_u64(pte, img.read_u64(pte) & !1);
    // #PF handler: set P in the PTE, pop the error code, iretq.
    let mut h = asm();
    h.push(rax).unwrap();
    h.mov(rax, pte).unwrap();
    h.or(qword_ptr(rax), 1i32).unwrap();
    h.pop(rax).unwrap();
    h.add(rsp, 8i32).unwrap();
    h.iretq().unwrap();
    img.load_at(HANDLERS, &mut h);
    img.set_gate(14, HANDLERS, false, 0);
    let mut a = asm();
    a.mov(rbx, target).unwrap();
    a.mov(rax, qword_ptr(rbx)).unwrap();
    a.mov(rcx, 5u64).unwrap();
    end(&mut a);
    img.load_code(&mut a);
    let c = compare("faulting load", &img, 0);
    println!("faulting load: kvm {} ours {}", c.kvm_count, c.ours_icount);
    // mov, faulting mov, 6 handler instructions, mov again, mov, out.
    assert_eq!(c.ours_icount, 11);

    // An instruction fetch from a non-present page.
    let mut img = image();
    let code2 = 0x1f_f000u64;
    let pte = Image::pte_addr(code2);
    img.write_u64(pte, img.read_u64(pte) & !1);
    let mut h = asm();
    h.push(rax).unwrap();
    h.mov(rax, pte).unwrap();
    h.or(qword_ptr(rax), 1i32).unwrap();
    h.pop(rax).unwrap();
    h.add(rsp, 8i32).unwrap();
    h.iretq().unwrap();
    img.load_at(HANDLERS, &mut h);
    img.set_gate(14, HANDLERS, false, 0);
    let mut b = asm();
    b.mov(rcx, 7u64).unwrap();
    end(&mut b);
    img.load_at(code2, &mut b);
    let mut a = asm();
    a.mov(rbx, code2).unwrap();
    a.jmp(rbx).unwrap();
    img.load_code(&mut a);
    let c = compare("faulting fetch", &img, 0);
    println!("faulting fetch: kvm {} ours {}", c.kvm_count, c.ours_icount);
    // mov, jmp, the fetch that faults, 6 handler instructions, mov, out.
    assert_eq!(c.ours_icount, 11);
}
