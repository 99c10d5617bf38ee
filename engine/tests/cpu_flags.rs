//! Flag and arithmetic edge cases in the replay CPU (no KVM needed). Each test
//! assembles a short ring-0 sequence, runs it to the end marker and checks registers
//! and RFLAGS.

mod cpu_common;

use cpu_common::*;
use iced_x86::code_asm::*;
use krr_engine::arch::rflags::{AF, CF, OF, PF, SF, STATUS, ZF};
use krr_engine::cpu::Exit;

/// Runs `build` (followed by the end marker) and returns (gprs, rflags).
fn run(build: impl FnOnce(&mut CodeAssembler)) -> Outcome {
    let mut img = image();
    let mut a = asm();
    build(&mut a);
    a.out(END_PORT as u32, al).unwrap();
    img.load_code(&mut a);
    let o = run_replay(&img, &default_cpuid(), 100_000);
    assert!(
        matches!(o.exit, Exit::PortOut { port, .. } if port == END_PORT),
        "did not reach the end marker: {:?}",
        o.exit
    );
    o
}

fn flags_after(build: impl FnOnce(&mut CodeAssembler)) -> u64 {
    run(build).cpu.state().rflags & STATUS
}

#[test]
fn add_sub_overflow_and_carry_at_every_width() {
    // 8-bit
    assert_eq!(
        flags_after(|a| {
            a.mov(al, 0x7fu32).unwrap();
            a.add(al, 1u32).unwrap();
        }),
        OF | SF | AF
    );
    assert_eq!(
        flags_after(|a| {
            a.mov(al, 0xffu32).unwrap();
            a.add(al, 1u32).unwrap();
        }),
        CF | ZF | AF | PF
    );
    assert_eq!(
        flags_after(|a| {
            a.mov(al, 0x80u32).unwrap();
            a.sub(al, 1u32).unwrap();
        }),
        OF | AF
    );
    // 16-bit
    assert_eq!(
        flags_after(|a| {
            a.mov(ax, 0x7fffu32).unwrap();
            a.add(ax, 1u32).unwrap();
        }),
        OF | SF | AF | PF
    );
    assert_eq!(
        flags_after(|a| {
            a.mov(ax, 0u32).unwrap();
            a.sub(ax, 1u32).unwrap();
        }),
        CF | SF | AF | PF
    );
    // 32-bit
    assert_eq!(
        flags_after(|a| {
            a.mov(eax, 0x7fff_ffffu32).unwrap();
            a.add(eax, 1).unwrap();
        }),
        OF | SF | AF | PF
    );
    assert_eq!(
        flags_after(|a| {
            a.mov(eax, 0xffff_ffffu32).unwrap();
            a.add(eax, 1).unwrap();
        }),
        CF | ZF | AF | PF
    );
    // 64-bit
    assert_eq!(
        flags_after(|a| {
            a.mov(rax, 0x7fff_ffff_ffff_ffffu64).unwrap();
            a.add(rax, 1).unwrap();
        }),
        OF | SF | AF | PF
    );
    assert_eq!(
        flags_after(|a| {
            a.mov(rax, 0x8000_0000_0000_0000u64).unwrap();
            a.sub(rax, 1).unwrap();
        }),
        OF | AF | PF
    );
    // A 32-bit result zero-extends.
    let o = run(|a| {
        a.mov(rax, u64::MAX).unwrap();
        a.add(eax, 1).unwrap();
    });
    assert_eq!(o.cpu.state().gpr[0], 0);
}

#[test]
fn adc_sbb_use_the_carry_in() {
    let o = run(|a| {
        a.stc().unwrap();
        a.mov(eax, 0xffff_fffeu32).unwrap();
        a.adc(eax, 1).unwrap();
    });
    assert_eq!(o.cpu.state().gpr[0], 0);
    assert_eq!(o.cpu.state().rflags & STATUS, CF | ZF | AF | PF);
    let o = run(|a| {
        a.stc().unwrap();
        a.xor(ecx, ecx).unwrap();
        a.stc().unwrap();
        a.mov(ecx, 0u32).unwrap();
        a.sbb(ecx, 0).unwrap();
    });
    assert_eq!(o.cpu.state().gpr[1], 0xffff_ffff);
    assert_eq!(o.cpu.state().rflags & STATUS, CF | SF | AF | PF);
}

#[test]
fn inc_dec_keep_cf_and_neg_zero() {
    assert_eq!(
        flags_after(|a| {
            a.stc().unwrap();
            a.mov(al, 0xffu32).unwrap();
            a.inc(al).unwrap();
        }),
        CF | ZF | AF | PF
    );
    assert_eq!(
        flags_after(|a| {
            a.clc().unwrap();
            a.mov(eax, 0x8000_0000u32).unwrap();
            a.dec(eax).unwrap();
        }),
        OF | AF | PF
    );
    assert_eq!(
        flags_after(|a| {
            a.xor(eax, eax).unwrap();
            a.neg(eax).unwrap();
        }),
        ZF | PF
    );
    assert_eq!(
        flags_after(|a| {
            a.mov(al, 0x80u32).unwrap();
            a.neg(al).unwrap();
        }),
        CF | OF | SF
    );
}

#[test]
fn shifts_by_zero_one_width_and_masked_counts() {
    // A zero count changes no flag.
    assert_eq!(
        flags_after(|a| {
            a.stc().unwrap();
            a.mov(cl, 0u32).unwrap();
            a.mov(eax, 1u32).unwrap();
            a.shl(eax, cl).unwrap();
        }),
        CF
    );
    // Count 1: OF = MSB(result) xor CF.
    assert_eq!(
        flags_after(|a| {
            a.mov(al, 0x40u32).unwrap();
            a.shl(al, 1).unwrap();
        }) & (OF | CF),
        OF
    );
    assert_eq!(
        flags_after(|a| {
            a.mov(al, 0xc0u32).unwrap();
            a.shl(al, 1).unwrap();
        }) & (OF | CF),
        CF
    );
    // SHR count 1: OF = original MSB; CF = the last bit out.
    assert_eq!(
        flags_after(|a| {
            a.mov(al, 0x81u32).unwrap();
            a.shr(al, 1).unwrap();
        }) & (OF | CF),
        OF | CF
    );
    // Width-1 and counts masked to 5 bits (33 -> 1) for 32-bit operands.
    let o = run(|a| {
        a.mov(eax, 0x8000_0001u32).unwrap();
        a.mov(cl, 31u32).unwrap();
        a.shr(eax, cl).unwrap();
    });
    assert_eq!(o.cpu.state().gpr[0], 1);
    let o = run(|a| {
        a.mov(eax, 3u32).unwrap();
        a.mov(cl, 33u32).unwrap();
        a.shl(eax, cl).unwrap();
    });
    assert_eq!(o.cpu.state().gpr[0], 6);
    // 64-bit counts mask to 6 bits.
    let o = run(|a| {
        a.mov(rax, 1u64).unwrap();
        a.mov(cl, 63u32).unwrap();
        a.shl(rax, cl).unwrap();
    });
    assert_eq!(o.cpu.state().gpr[0], 1 << 63);
    // 8-bit shifts by more than the width: the result is zero and CF is clear.
    let o = run(|a| {
        a.mov(al, 0xffu32).unwrap();
        a.mov(cl, 9u32).unwrap();
        a.shl(al, cl).unwrap();
    });
    assert_eq!(o.cpu.state().gpr[0] & 0xff, 0);
    assert_eq!(o.cpu.state().rflags & CF, 0);
    // SAR keeps the sign.
    let o = run(|a| {
        a.mov(al, 0x80u32).unwrap();
        a.sar(al, 7).unwrap();
    });
    assert_eq!(o.cpu.state().gpr[0] & 0xff, 0xff);
}

#[test]
fn rotates() {
    let o = run(|a| {
        a.mov(al, 0x81u32).unwrap();
        a.rol(al, 1).unwrap();
    });
    assert_eq!(o.cpu.state().gpr[0] & 0xff, 0x03);
    assert_eq!(o.cpu.state().rflags & (CF | OF), CF | OF);
    let o = run(|a| {
        a.stc().unwrap();
        a.mov(al, 0u32).unwrap();
        a.rcr(al, 1).unwrap();
    });
    assert_eq!(o.cpu.state().gpr[0] & 0xff, 0x80);
    // RCL of an 8-bit value by 9 is the identity through CF (count mod 9).
    let o = run(|a| {
        a.clc().unwrap();
        a.mov(al, 0x5au32).unwrap();
        a.mov(cl, 9u32).unwrap();
        a.rcl(al, cl).unwrap();
    });
    assert_eq!(o.cpu.state().gpr[0] & 0xff, 0x5a);
    let o = run(|a| {
        a.mov(eax, 0x8000_0000u32).unwrap();
        a.ror(eax, 31).unwrap();
    });
    assert_eq!(o.cpu.state().gpr[0], 1);
}

#[test]
fn imul_overflow() {
    assert_eq!(
        flags_after(|a| {
            a.mov(eax, 0x4000_0000u32).unwrap();
            a.imul_3(eax, eax, 2).unwrap();
        }) & (CF | OF),
        CF | OF
    );
    assert_eq!(
        flags_after(|a| {
            a.mov(eax, 0x3fff_ffffu32).unwrap();
            a.imul_3(eax, eax, 2).unwrap();
        }) & (CF | OF),
        0
    );
    let o = run(|a| {
        a.mov(rax, u64::MAX).unwrap();
        a.mov(rcx, 2u64).unwrap();
        a.imul(rcx).unwrap();
    });
    assert_eq!(
        (o.cpu.state().gpr[0], o.cpu.state().gpr[2]),
        (u64::MAX - 1, u64::MAX)
    );
    assert_eq!(o.cpu.state().rflags & (CF | OF), 0);
    let o = run(|a| {
        a.mov(rax, u64::MAX).unwrap();
        a.mov(rcx, 2u64).unwrap();
        a.mul(rcx).unwrap();
    });
    assert_eq!(
        (o.cpu.state().gpr[0], o.cpu.state().gpr[2]),
        (u64::MAX - 1, 1)
    );
    assert_eq!(o.cpu.state().rflags & (CF | OF), CF | OF);
}

/// Division faults are delivered through the IDT: the default stub reports vector 0.
#[test]
fn divide_errors_reach_the_idt() {
    for build in [
        (|a: &mut CodeAssembler| {
            a.xor(ecx, ecx).unwrap();
            a.div(ecx).unwrap();
        }) as fn(&mut CodeAssembler),
        |a| {
            a.mov(edx, 1u32).unwrap();
            a.mov(ecx, 1u32).unwrap();
            a.div(ecx).unwrap();
        },
        |a| {
            a.mov(rax, 0x8000_0000_0000_0000u64).unwrap();
            a.cqo().unwrap();
            a.mov(rcx, u64::MAX).unwrap();
            a.idiv(rcx).unwrap();
        },
    ] {
        let mut img = image();
        let mut a = asm();
        build(&mut a);
        a.out(END_PORT as u32, al).unwrap();
        img.load_code(&mut a);
        let o = run_replay(&img, &default_cpuid(), 1000);
        assert_eq!(
            o.exit,
            Exit::PortOut {
                port: EXC_PORT,
                size: 4,
                value: 0
            }
        );
        // The frame: RIP of the faulting div (not retired), CS, RFLAGS with RF.
        let top = o.cpu.state().gpr[4];
        let mut frame = [0u8; 40];
        o.cpu.read_virtual(&o.mem, top, &mut frame).unwrap();
        let w = |i: usize| u64::from_le_bytes(frame[8 * i..8 * i + 8].try_into().unwrap());
        assert!(w(0) > CODE && w(0) < CODE + 32, "pushed rip {:#x}", w(0));
        let mut op = [0u8; 3];
        o.cpu.read_virtual(&o.mem, w(0), &mut op).unwrap();
        assert!(
            op.contains(&0xf7),
            "the pushed RIP is the div itself: {op:x?}"
        );
        assert_eq!(w(1), KERNEL_CS as u64);
        assert_ne!(w(2) & 0x10000, 0, "RF set in a fault frame");
        assert_eq!(w(3), STACK_TOP);
    }
}

#[test]
fn bsf_bsr_zero_input_leaves_the_destination() {
    let o = run(|a| {
        a.mov(rdx, 0x1234u64).unwrap();
        a.xor(ecx, ecx).unwrap();
        a.bsf(rdx, rcx).unwrap();
    });
    assert_eq!(o.cpu.state().gpr[2], 0x1234);
    assert_ne!(o.cpu.state().rflags & ZF, 0);
    let o = run(|a| {
        a.mov(ecx, 0x0010_0100u32).unwrap();
        a.bsr(edx, ecx).unwrap();
        a.bsf(ebx, ecx).unwrap();
    });
    assert_eq!((o.cpu.state().gpr[2], o.cpu.state().gpr[3]), (20, 8));
    assert_eq!(o.cpu.state().rflags & ZF, 0);
}

#[test]
fn lzcnt_follows_cpuid() {
    // The default table does not advertise ABM/BMI1... but leaf 0x80000001 ECX bit 5 is
    // set there, so LZCNT counts; TZCNT (BMI1 absent) behaves as BSF.
    let o = run(|a| {
        a.mov(ecx, 0x0000_0100u32).unwrap();
        a.mov(rdx, 0x77u64).unwrap();
        a.lzcnt(eax, ecx).unwrap();
        a.xor(esi, esi).unwrap();
        a.tzcnt(rdx, rsi).unwrap();
    });
    // run_replay models the recording host, where both behave as bit scans.
    assert_eq!(o.cpu.state().gpr[0], 8, "bsr of 0x100");
    assert_eq!(
        o.cpu.state().gpr[2],
        0x77,
        "bsf of 0 leaves the destination"
    );

    let mut img = image();
    let mut a = asm();
    a.mov(ecx, 0x0000_0100u32).unwrap();
    a.lzcnt(eax, ecx).unwrap();
    a.xor(esi, esi).unwrap();
    a.mov(rdx, 0x77u64).unwrap();
    a.tzcnt(rdx, rsi).unwrap();
    a.out(END_PORT as u32, al).unwrap();
    img.load_code(&mut a);
    let mut mem = img.memory();
    let mut cpu = krr_engine::cpu::Cpu::new(img.state.clone(), default_cpuid());
    let e = run_cpu(&mut cpu, &mut mem, 1000);
    assert!(matches!(e, Exit::PortOut { .. }));
    assert_eq!(cpu.state().gpr[0], 23, "lzcnt of 0x100 (ABM advertised)");
    assert_eq!(cpu.state().gpr[2], 0x77, "tzcnt without BMI1 is bsf");
}

#[test]
fn bt_with_memory_and_large_offsets() {
    let o = run(|a| {
        a.mov(rbx, DATA + 0x100).unwrap();
        a.mov(qword_ptr(rbx + 0x20), 0x10i32).unwrap();
        a.mov(rcx, 0x104u64).unwrap(); // byte 0x20, bit 4
        a.bts(qword_ptr(rbx), rcx).unwrap();
        a.setc(dl).unwrap();
        a.mov(rcx, (-8i64) as u64).unwrap(); // the qword before, bit 56
        a.bts(qword_ptr(rbx), rcx).unwrap();
        a.mov(rsi, qword_ptr(rbx - 8)).unwrap();
        a.bt(dword_ptr(rbx + 0x20), 36).unwrap(); // immediate offsets wrap: bit 4
        a.setc(dh).unwrap();
    });
    let st = o.cpu.state();
    assert_eq!(st.gpr[2] & 0xffff, 0x0101);
    assert_eq!(st.gpr[6], 1 << 56);
}

#[test]
fn cmpxchg_success_and_failure() {
    let o = run(|a| {
        a.mov(qword_ptr(DATA), 5i32).unwrap();
        a.mov(eax, 5u32).unwrap();
        a.mov(ecx, 9u32).unwrap();
        a.lock().cmpxchg(qword_ptr(DATA), rcx).unwrap();
        a.setz(bl).unwrap();
        a.mov(eax, 1u32).unwrap();
        a.lock().cmpxchg(qword_ptr(DATA), rcx).unwrap();
        a.setz(bh).unwrap();
        a.mov(rdx, qword_ptr(DATA)).unwrap();
    });
    let st = o.cpu.state();
    assert_eq!(st.gpr[3] & 0xffff, 0x0001, "success then failure");
    assert_eq!(st.gpr[0], 9, "failure loads the accumulator");
    assert_eq!(st.gpr[2], 9);
}

#[test]
fn parity_and_auxiliary() {
    assert_eq!(
        flags_after(|a| {
            a.mov(al, 0x0fu32).unwrap();
            a.add(al, 1u32).unwrap();
        }),
        AF
    );
    assert_eq!(
        flags_after(|a| {
            a.mov(eax, 0x103u32).unwrap();
            a.test(eax, eax).unwrap();
        }),
        PF
    );
    assert_eq!(
        flags_after(|a| {
            a.mov(eax, 0x107u32).unwrap();
            a.or(eax, 0).unwrap();
        }),
        0
    );
}
