//! The replay driver's interface to the CPU: run limits, exits and input completion,
//! breakpoints, interrupts, user-mode entries and returns, clones (no KVM needed).

mod cpu_common;

use cpu_common::*;
use iced_x86::code_asm::*;
use krr_engine::cpu::{Cpu, CpuError, Exit};
use krr_engine::event::{EntryKind, UserEntry, UserRegs};
use krr_engine::memory::GuestMemory;
use krr_engine::state::msr;

fn setup(f: impl FnOnce(&mut CodeAssembler)) -> (Cpu, GuestMemory, Image) {
    let mut img = image();
    let mut a = asm();
    f(&mut a);
    img.load_code(&mut a);
    let mem = img.memory();
    let cpu = Cpu::new(img.state.clone(), default_cpuid());
    (cpu, mem, img)
}

#[test]
fn limit_counts_exactly() {
    let (mut cpu, mut mem, _) = setup(|a| {
        let mut l = a.create_label();
        a.mov(ecx, 1000u32).unwrap();
        a.set_label(&mut l).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(l).unwrap();
        a.out(END_PORT as u32, al).unwrap();
    });
    assert_eq!(cpu.run(&mut mem, 501), Exit::Limit);
    assert_eq!(cpu.icount(), 501);
    assert_eq!(cpu.state().gpr[1], 750);
    assert_eq!(cpu.run(&mut mem, 501), Exit::Limit, "already at the limit");
    assert_eq!(
        cpu.run(&mut mem, u64::MAX),
        Exit::PortOut {
            port: END_PORT,
            size: 1,
            value: 0
        }
    );
    assert_eq!(cpu.icount(), 1 + 2000 + 1);
}

#[test]
fn input_exits_complete() {
    let (mut cpu, mut mem, _) = setup(|a| {
        a.mov(rax, u64::MAX).unwrap();
        a.in_(al, 0x60u32).unwrap();
        a.mov(rbx, rax).unwrap();
        a.rdtsc().unwrap();
        a.rdrand(r9).unwrap();
        a.mov(rcx, qword_ptr(0x2000_0000u64)).unwrap();
        a.mov(dword_ptr(0x2000_0010u64), ecx).unwrap();
        a.hlt().unwrap();
    });
    assert_eq!(
        cpu.run(&mut mem, 100),
        Exit::PortIn {
            port: 0x60,
            size: 1
        }
    );
    assert_eq!(cpu.icount(), 1, "the in is pending");
    assert_eq!(
        cpu.run(&mut mem, 100),
        Exit::PortIn {
            port: 0x60,
            size: 1
        },
        "still pending"
    );
    cpu.complete_input(0xab, false).unwrap();
    assert_eq!(cpu.icount(), 2);
    assert_eq!(cpu.complete_input(0, false), Err(CpuError::NoPendingInput));
    assert_eq!(cpu.run(&mut mem, 100), Exit::Rdtsc);
    assert_eq!(cpu.state().gpr[3], 0xffff_ffff_ffff_ffab);
    cpu.complete_input(0x1_2345_6789, false).unwrap();
    assert_eq!((cpu.state().gpr[0], cpu.state().gpr[2]), (0x2345_6789, 1));
    assert_eq!(cpu.run(&mut mem, 100), Exit::Rdrand);
    cpu.complete_input(0x55, true).unwrap();
    assert_eq!(cpu.state().gpr[9], 0x55);
    assert_eq!(cpu.state().rflags & 1, 1);
    // A load from outside RAM: pending, then executed with the value on the next run.
    assert_eq!(
        cpu.run(&mut mem, 100),
        Exit::MmioRead {
            gpa: 0x2000_0000,
            size: 8
        }
    );
    let before = cpu.icount();
    cpu.complete_input(0xfeed, false).unwrap();
    assert_eq!(
        cpu.run(&mut mem, 100),
        Exit::MmioWrite {
            gpa: 0x2000_0010,
            size: 4,
            value: 0xfeed
        }
    );
    assert_eq!(cpu.state().gpr[1], 0xfeed);
    assert_eq!(cpu.icount(), before + 2);
    assert_eq!(cpu.run(&mut mem, 100), Exit::Hlt);
    assert!(cpu.state().halted);
    let n = cpu.icount();
    assert_eq!(
        cpu.run(&mut mem, 100),
        Exit::Hlt,
        "halted until an interrupt"
    );
    assert_eq!(cpu.icount(), n);
    cpu.inject_interrupt(&mut mem, 0x20).unwrap();
    assert!(!cpu.state().halted);
    assert_eq!(cpu.icount(), n, "delivery does not count");
    assert_eq!(
        cpu.run(&mut mem, 100),
        Exit::PortOut {
            port: EXC_PORT,
            size: 4,
            value: 0x20
        }
    );
}

#[test]
fn breakpoints_stop_before_and_resume_past() {
    let (mut cpu, mut mem, _) = setup(|a| {
        let mut l = a.create_label();
        a.mov(ecx, 3u32).unwrap();
        a.set_label(&mut l).unwrap();
        a.inc(rax).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(l).unwrap();
        a.out(END_PORT as u32, al).unwrap();
    });
    let bp_addr = CODE + 5;
    cpu.add_breakpoint(bp_addr);
    cpu.add_breakpoint(0xdead_0000);
    let mut hits = 0;
    loop {
        match cpu.run(&mut mem, 1000) {
            Exit::Breakpoint(a) => {
                assert_eq!(a, bp_addr);
                assert_eq!(cpu.state().rip, bp_addr);
                assert_eq!(cpu.state().gpr[0], hits, "stopped before the instruction");
                hits += 1;
            }
            Exit::PortOut { port: END_PORT, .. } => break,
            e => panic!("{e:?}"),
        }
    }
    assert_eq!(hits, 3);
    cpu.remove_breakpoint(bp_addr);
    assert_eq!(cpu.breakpoints().len(), 1);
}

#[test]
fn return_to_user_and_entries() {
    let (mut cpu, mut mem, img) = setup(|a| {
        a.mov(rcx, 0x40_1000u64).unwrap();
        a.mov(r11, 0x246u64).unwrap();
        a.sysretq().unwrap();
    });
    assert_eq!(cpu.run(&mut mem, 100), Exit::ReturnToUser);
    let st = cpu.state();
    assert_eq!(st.rip, 0x40_1000);
    assert_eq!(st.cpl(), 3);
    assert_eq!(st.seg[1].selector, (USER_BASE_SEL + 16) | 3);
    assert_eq!(st.seg[2].selector, (USER_BASE_SEL + 8) | 3);
    assert_eq!(st.rflags, 0x246);
    assert_eq!(cpu.icount(), 3);
    // Executing user code is a bug of the driver: reported, never executed.
    assert!(matches!(
        cpu.run(&mut mem, 100),
        Exit::Error(CpuError::NotRing0 { cpl: 3, .. })
    ));

    let mut regs = UserRegs {
        gpr: [7; 16],
        rip: 0x40_2000,
        rflags: 0x202,
        cs: (USER_BASE_SEL + 16) | 3,
        ss: (USER_BASE_SEL + 8) | 3,
        fs_base: 0x7000,
        gs_base: 0x8000,
    };
    regs.gpr[4] = 0x7fff_0000;
    let syscall = UserEntry {
        icount: 3,
        kind: EntryKind::Syscall,
        regs,
    };
    cpu.enter_from_user(&mut mem, &syscall).unwrap();
    let st = cpu.state();
    assert_eq!(st.rip, img.state.msr(msr::IA32_LSTAR).unwrap());
    assert_eq!((st.gpr[1], st.gpr[11]), (0x40_2000, 0x202));
    assert_eq!(st.rflags & 0x200, 0, "FMASK clears IF");
    assert_eq!(st.cpl(), 0);
    assert_eq!(st.seg[1].selector, KERNEL_CS);
    assert_eq!(st.gpr[4], 0x7fff_0000, "syscall keeps the user stack");
    assert_eq!(st.seg[5].base, 0x8000);
    assert_eq!(cpu.icount(), 3, "entries do not count");

    // A user page fault: delivered on TSS.RSP0 with the full frame and CR2.
    let pf = UserEntry {
        icount: 3,
        kind: EntryKind::Exception {
            vector: 14,
            error_code: Some(6),
            cr2: 0x1234,
        },
        regs,
    };
    cpu.enter_from_user(&mut mem, &pf).unwrap();
    let st = cpu.state().clone();
    assert_eq!(st.rip, STUBS + 14 * 16);
    assert_eq!(st.cr2, 0x1234);
    assert_eq!(st.gpr[4], RSP0_TOP - 48);
    let mut frame = [0u8; 48];
    cpu.read_virtual(&mem, st.gpr[4], &mut frame).unwrap();
    let w = |i: usize| u64::from_le_bytes(frame[8 * i..8 * i + 8].try_into().unwrap());
    assert_eq!(
        [w(0), w(1), w(2), w(3), w(4), w(5)],
        // A fault frame carries RF, as hardware pushes it for faults.
        [
            6,
            0x40_2000,
            regs.cs as u64,
            0x10202,
            0x7fff_0000,
            regs.ss as u64
        ]
    );
    assert_eq!(
        cpu.run(&mut mem, 100),
        Exit::PortOut {
            port: EXC_PORT,
            size: 4,
            value: 14
        }
    );

    // An interrupt from user mode, returned from with iretq to CPL3.
    let (mut cpu, mut mem, mut img) = setup(|_| {});
    let mut h = asm();
    h.iretq().unwrap();
    img.load_at(HANDLERS + 0x100, &mut h);
    img.set_gate(0x30, HANDLERS + 0x100, false, 0);
    let mut mem2 = img.memory();
    std::mem::swap(&mut mem, &mut mem2);
    let irq = UserEntry {
        icount: 0,
        kind: EntryKind::Interrupt { vector: 0x30 },
        regs,
    };
    cpu.enter_from_user(&mut mem, &irq).unwrap();
    assert_eq!(cpu.state().gpr[4], RSP0_TOP - 40, "no error code");
    assert_eq!(cpu.run(&mut mem, 100), Exit::ReturnToUser);
    assert_eq!(cpu.state().rip, 0x40_2000);
    assert_eq!(cpu.state().gpr[4], 0x7fff_0000);
    assert_eq!(cpu.state().cpl(), 3);
}

#[test]
fn unreplayable_instructions_are_errors() {
    let (mut cpu, mut mem, _) = setup(|a| {
        a.int(0x80).unwrap();
    });
    assert!(matches!(
        cpu.run(&mut mem, 100),
        Exit::Error(CpuError::Unsupported { .. })
    ));
    assert_eq!(cpu.state().rip, CODE, "nothing executed");
    let (mut cpu, mut mem, _) = setup(|a| {
        a.fld1().unwrap();
    });
    match cpu.run(&mut mem, 100) {
        Exit::Error(CpuError::Unimplemented {
            rip,
            bytes,
            mnemonic,
            instruction,
        }) => {
            assert_eq!((rip, bytes), (CODE, vec![0xd9, 0xe8]));
            assert_eq!((mnemonic.as_str(), instruction.as_str()), ("fld1", "fld1"));
        }
        e => panic!("{e:?}"),
    }
    // An IDT that cannot be used: triple fault.
    let (mut cpu, mut mem, _) = setup(|a| {
        a.ud2().unwrap();
    });
    cpu.state_mut().idtr.limit = 0;
    assert!(matches!(
        cpu.run(&mut mem, 100),
        Exit::Error(CpuError::TripleFault { .. })
    ));
}

/// Checkpoints: a clone of CPU and memory continues identically, and clones share the
/// pages not written since.
#[test]
fn clones_replay_identically_and_share_pages() {
    let (mut cpu, mut mem, _) = setup(|a| {
        let mut l = a.create_label();
        a.mov(ecx, 5000u32).unwrap();
        a.mov(rdi, DATA).unwrap();
        a.set_label(&mut l).unwrap();
        a.imul_3(eax, ecx, 0x9e37_79b9u32 as i32).unwrap();
        a.xor(dword_ptr(rdi + rcx * 4), eax).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(l).unwrap();
        a.out(END_PORT as u32, al).unwrap();
    });
    assert_eq!(cpu.run(&mut mem, 7000), Exit::Limit);
    // As a checkpoint does: the pages the write cache owns go back into the tree first,
    // so that the clone shares them too.
    mem.flush();
    let (cpu2, mem2) = (cpu.clone(), mem.clone());
    let s = mem.stats();
    assert_eq!(
        s.shared_pages, s.allocated_pages,
        "a fresh clone shares every page"
    );
    let e1 = cpu.run(&mut mem, u64::MAX);
    assert!(
        mem.stats().shared_pages < s.allocated_pages,
        "written pages were copied"
    );
    let (mut cpu2, mut mem2) = (cpu2, mem2);
    let e2 = cpu2.run(&mut mem2, u64::MAX);
    assert_eq!(e1, e2);
    assert_eq!(cpu.state(), cpu2.state());
    assert_eq!(cpu.icount(), cpu2.icount());
    assert_eq!(mem.hash(), mem2.hash());
    assert_eq!(mem.diff_pages(&mem2), Some(vec![]));
}

#[test]
fn dma_writes_to_code_are_seen() {
    let (mut cpu, mut mem, _) = setup(|a| {
        let mut l = a.create_label();
        a.set_label(&mut l).unwrap();
        a.mov(eax, 1u32).unwrap();
        a.out(0x10u32, al).unwrap();
        a.jmp(l).unwrap();
    });
    assert_eq!(
        cpu.run(&mut mem, 100),
        Exit::PortOut {
            port: 0x10,
            size: 1,
            value: 1
        }
    );
    // The driver patches the immediate (as a DMA write would).
    mem.write(CODE + 1, &[9]).unwrap();
    assert_eq!(
        cpu.run(&mut mem, 100),
        Exit::PortOut {
            port: 0x10,
            size: 1,
            value: 9
        }
    );
}

/// Straight-line code runs as blocks; limits, breakpoints and writes to the code ahead
/// must still take effect at the exact instruction.
#[test]
fn straight_line_code_stops_exactly() {
    let line = |a: &mut CodeAssembler| {
        for _ in 0..40 {
            a.inc(rax).unwrap();
        }
        a.out(END_PORT as u32, al).unwrap();
    };
    // A limit in the middle of a run.
    let (mut cpu, mut mem, _) = setup(line);
    assert_eq!(cpu.run(&mut mem, 17), Exit::Limit);
    assert_eq!((cpu.icount(), cpu.state().gpr[0]), (17, 17));
    assert_eq!(cpu.run(&mut mem, 18), Exit::Limit);
    assert_eq!((cpu.icount(), cpu.state().gpr[0]), (18, 18));
    assert!(matches!(cpu.run(&mut mem, 1000), Exit::PortOut { .. }));
    assert_eq!((cpu.icount(), cpu.state().gpr[0]), (41, 40));

    // Breakpoints in the middle of a run, on the first and on a later 64-byte line
    // (inc rax is 3 bytes), set after the run was first entered.
    let (mut cpu, mut mem, _) = setup(line);
    assert_eq!(cpu.run(&mut mem, 2), Exit::Limit);
    for n in [5u64, 30] {
        cpu.add_breakpoint(CODE + 3 * n);
    }
    assert_eq!(cpu.run(&mut mem, 1000), Exit::Breakpoint(CODE + 15));
    assert_eq!((cpu.icount(), cpu.state().gpr[0]), (5, 5));
    assert_eq!(cpu.run(&mut mem, 1000), Exit::Breakpoint(CODE + 90));
    assert_eq!((cpu.icount(), cpu.state().gpr[0]), (30, 30));
    cpu.add_breakpoint(CODE + 3 * 35);
    assert_eq!(cpu.run(&mut mem, 1000), Exit::Breakpoint(CODE + 105));
    assert_eq!(cpu.icount(), 35);
    assert!(matches!(cpu.run(&mut mem, 1000), Exit::PortOut { .. }));
    assert_eq!(cpu.state().gpr[0], 40);

    // A store into the instruction right after it, in the same run.
    let (mut cpu, mut mem, _) = setup(|a| {
        let mut site = a.create_label();
        a.lea(rbx, ptr(site)).unwrap();
        a.mov(dword_ptr(rbx + 1), 7u32).unwrap();
        a.set_label(&mut site).unwrap();
        a.mov(ecx, 1u32).unwrap();
        a.inc(ecx).unwrap();
        a.out(END_PORT as u32, al).unwrap();
    });
    assert!(matches!(cpu.run(&mut mem, 1000), Exit::PortOut { .. }));
    assert_eq!(cpu.state().gpr[1], 8, "the patched immediate is used");
    assert_eq!(cpu.icount(), 5);
}

/// A block goes on past a conditional jump not taken and past a return to the call in
/// it; a jump taken, or a return elsewhere (the callee moved its return address), leaves
/// it at the right place, with the right count, also with limits at every instruction.
#[test]
fn blocks_leave_at_taken_jumps_and_unpredicted_returns() {
    let program = |a: &mut CodeAssembler| {
        let (mut callee, mut back, mut elsewhere, mut end) = (
            a.create_label(),
            a.create_label(),
            a.create_label(),
            a.create_label(),
        );
        a.mov(ecx, 3u32).unwrap();
        let mut top = a.create_label();
        a.set_label(&mut top).unwrap();
        a.inc(rax).unwrap();
        a.call(callee).unwrap(); // predicted back to `back`, which the callee changes twice
        a.set_label(&mut back).unwrap();
        a.add(rbx, 1i32).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap(); // taken twice, then not
        a.jmp(end).unwrap();
        a.set_label(&mut elsewhere).unwrap();
        a.add(rbx, 100i32).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.set_label(&mut end).unwrap();
        a.out(END_PORT as u32, al).unwrap();
        a.set_label(&mut callee).unwrap();
        a.cmp(ecx, 2u32).unwrap();
        let mut keep = a.create_label();
        a.jne(keep).unwrap(); // taken but once
        a.lea(rdx, ptr(elsewhere)).unwrap();
        a.mov(qword_ptr(rsp), rdx).unwrap();
        a.set_label(&mut keep).unwrap();
        a.ret().unwrap();
    };
    let (mut cpu, mut mem, _) = setup(program);
    assert!(matches!(cpu.run(&mut mem, 1000), Exit::PortOut { .. }));
    let end = (
        cpu.state().gpr[0],
        cpu.state().gpr[3],
        cpu.state().rip,
        cpu.icount(),
    );
    // Iterations 1 and 3 return to `back` (+1), iteration 2 elsewhere (+100).
    assert_eq!((end.0, end.1), (3, 102));
    // The same, one instruction at a time through limits.
    let (mut cpu, mut mem, _) = setup(program);
    let mut n = 0;
    loop {
        n += 1;
        match cpu.run(&mut mem, n) {
            Exit::Limit => assert_eq!(cpu.icount(), n),
            Exit::PortOut { .. } => break,
            e => panic!("unexpected exit {e:?} at {n}"),
        }
    }
    assert_eq!(
        (
            cpu.state().gpr[0],
            cpu.state().gpr[3],
            cpu.state().rip,
            cpu.icount()
        ),
        end
    );
}

/// More instructions without a fast form than the CPU keeps decoded: the decode cache
/// is emptied on the way (also while a block is being built) and execution goes on
/// exactly.
#[test]
fn more_general_instructions_than_the_decoded_table_holds() {
    const PAIRS: u64 = 18_000;
    const AT: u64 = 0x10_0000;
    let mut img = image();
    let mut a = asm();
    for _ in 0..PAIRS {
        a.inc(rax).unwrap(); // a fast form, so blocks start here
        a.cld().unwrap(); // the general path
    }
    a.out(END_PORT as u32, al).unwrap();
    img.load_at(AT, &mut a);
    img.state.rip = AT;
    let mut mem = img.memory();
    let mut cpu = Cpu::new(img.state.clone(), default_cpuid());
    for round in 0..2 {
        assert!(matches!(cpu.run(&mut mem, u64::MAX), Exit::PortOut { .. }));
        assert_eq!(cpu.state().gpr[0], PAIRS * (round + 1));
        assert_eq!(cpu.icount(), (2 * PAIRS + 1) * (round + 1));
        cpu.state_mut().rip = AT;
    }
}

/// Throughput in CPU time (robust against other load on the machine):
/// `cargo test --release -p krr-engine --test cpu_api -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    let (cpu0, mem0, _) = setup(checksum_loop);
    let thread_cpu = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec owned by this frame.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    };
    for _ in 0..3 {
        let (mut cpu, mut mem) = (cpu0.clone(), mem0.clone());
        let t = thread_cpu();
        assert_eq!(cpu.run(&mut mem, 20_000_000), Exit::Limit);
        let dt = thread_cpu() - t;
        println!(
            "{:.1} M instructions/s (CPU time)",
            cpu.icount() as f64 / dt / 1e6
        );
    }
}

/// Throughput of a loop that stores to the page its own code is on (another 64-byte
/// line) and stops at a breakpoint on every iteration, as the replay driver does for
/// signature-placed interrupts: measures code-write invalidation and `run` entry/exit.
#[test]
#[ignore = "benchmark; run with --ignored --nocapture"]
fn breakpoint_and_code_page_write_throughput() {
    let (cpu0, mem0, _) = setup(|a| {
        let mut top = a.create_label();
        a.mov(rsi, CODE + 0xf00).unwrap();
        a.mov(ecx, 0x7fff_ffffu32).unwrap();
        a.set_label(&mut top).unwrap();
        a.mov(dword_ptr(rsi), ecx).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
    });
    for _ in 0..3 {
        let (mut cpu, mut mem) = (cpu0.clone(), mem0.clone());
        assert_eq!(cpu.run(&mut mem, 2), Exit::Limit);
        cpu.add_breakpoint(cpu.state().rip);
        let start = std::time::Instant::now();
        let mut stops = 0u64;
        loop {
            match cpu.run(&mut mem, 300_000) {
                Exit::Breakpoint(_) => stops += 1,
                Exit::Limit => break,
                e => panic!("unexpected exit {e:?}"),
            }
        }
        let dt = start.elapsed().as_secs_f64();
        assert_eq!(stops, (300_000 - 2) / 3 + 1);
        assert_eq!(
            mem.read_u64(CODE + 0xf00).unwrap() as u32,
            0x7fff_ffff - 99_999
        );
        println!(
            "{:.2} M instructions/s, {:.2} M breakpoint stops/s",
            (cpu.icount() - 2) as f64 / dt / 1e6,
            stops as f64 / dt / 1e6
        );
    }
}
