//! The instructions of a Linux 6.1 boot beyond the demo kernel's, where no KVM is
//! needed: `lar` against the SDM's rules (this host's KVM cannot execute it at ring 0:
//! cpu_vs_kvm_linux.rs), the faults of the x87/SSE state instructions that KVM cannot
//! show here, how an `ins` chunk waits for its values, and that replay reports an
//! instruction the replay CPU does not implement as a divergence naming it.

mod cpu_common;

use cpu_common::lar::{BEFORE, CASES, lar_program};
use cpu_common::*;
use iced_x86::code_asm::*;
use krr_engine::cpu::{Cpu, CpuError, Exit};
use krr_engine::event::{Event, PortIn};
use krr_engine::replay::{Replay, Stop, Target};
use krr_engine::state::{CounterSourceKind, KernelIdentity};
use krr_engine::trace::{FinishInfo, Header, RecordingWriter};

fn run(img: &Image) -> Outcome {
    run_replay(img, &default_cpuid(), 100_000)
}

fn ended_with(o: &Outcome) -> (u16, u32) {
    match o.exit {
        Exit::PortOut { port, value, .. } => (port, value),
        ref e => panic!("ended with {e:?}"),
    }
}

#[test]
fn lar_follows_the_sdm() {
    let mut img = image();
    let mut a = asm();
    lar_program(&mut img, &mut a, DATA);
    a.out(END_PORT as u32, al).unwrap();
    img.load_code(&mut a);
    let o = run(&img);
    assert_eq!(ended_with(&o).0, END_PORT);
    let read = |at: u64| {
        let mut b = [0u8; 8];
        o.mem.read(at, &mut b).unwrap();
        u64::from_le_bytes(b)
    };
    for (i, &(sel, rights)) in CASES.iter().enumerate() {
        let slot = DATA + 16 * i as u64;
        let (value, zf) = (read(slot), read(slot + 8) as u8);
        match rights {
            Some(r) => assert_eq!((value, zf), (r as u64, 1), "selector {sel:#x}"),
            None => assert_eq!((value, zf), (BEFORE, 0), "selector {sel:#x}"),
        }
    }
    let slot = DATA + 0x400;
    assert_eq!(
        read(slot),
        (BEFORE & !0xffff) | 0xfa00,
        "lar ax: bits 8-15 only"
    );
    assert_eq!(read(slot + 8), 0x00af_fa00, "lar rax");
    assert_eq!(
        (read(slot + 16), read(slot + 24) as u8),
        (0xe900, 1),
        "lar r9d, m16"
    );
}

/// Each case: what to change in the image, the code, and the vector it must raise
/// (None: it completes).
#[test]
fn x87_and_sse_state_faults() {
    type Build = fn(&mut Image, &mut CodeAssembler);
    let cases: [(&str, Build, Option<u32>); 11] = [
        (
            "ldmxcsr with a bit outside MXCSR_MASK",
            |img, a| {
                img.write(DATA, &0x1_1f80u32.to_le_bytes());
                a.ldmxcsr(dword_ptr(DATA)).unwrap();
            },
            Some(13),
        ),
        (
            "ldmxcsr with CR4.OSFXSR clear",
            |img, a| {
                img.state.cr4 &= !0x200;
                a.ldmxcsr(dword_ptr(DATA)).unwrap();
            },
            Some(6),
        ),
        (
            "stmxcsr with CR0.EM",
            |img, a| {
                img.state.cr0 |= 4;
                a.stmxcsr(dword_ptr(DATA)).unwrap();
            },
            Some(6),
        ),
        (
            "stmxcsr with CR0.TS",
            |img, a| {
                img.state.cr0 |= 8;
                a.stmxcsr(dword_ptr(DATA)).unwrap();
            },
            Some(7),
        ),
        (
            "stmxcsr",
            |img, a| {
                img.write(DATA, &0x8040u32.to_le_bytes());
                a.ldmxcsr(dword_ptr(DATA)).unwrap();
                a.stmxcsr(dword_ptr(DATA + 4)).unwrap();
                a.mov(eax, dword_ptr(DATA + 4)).unwrap();
                a.cmp(eax, 0x8040).unwrap();
                a.jne(0).unwrap();
            },
            None,
        ),
        (
            "fnclex with CR0.TS",
            |img, a| {
                img.state.cr0 |= 8;
                a.fnclex().unwrap();
            },
            Some(7),
        ),
        (
            "fwait with CR0.TS and CR0.MP",
            |img, a| {
                img.state.cr0 |= 8 | 2;
                a.wait().unwrap();
            },
            Some(7),
        ),
        (
            "fwait with CR0.TS alone",
            |img, a| {
                img.state.cr0 = (img.state.cr0 | 8) & !2;
                a.wait().unwrap();
            },
            None,
        ),
        (
            "fwait with an unmasked exception pending",
            |img, a| {
                let mut image = [0u8; 512];
                image[..4].copy_from_slice(&[0x7b, 0x03, 0x04, 0x00]);
                image[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
                img.write(DATA, &image);
                a.mov(rsi, DATA).unwrap();
                a.fxrstor64(ptr(rsi)).unwrap();
                a.wait().unwrap();
            },
            Some(16),
        ),
        (
            "fxsave64",
            |_, a| {
                a.fxsave64(ptr(DATA)).unwrap();
            },
            None,
        ),
        (
            "fnstsw ax",
            |img, a| {
                let mut image = [0u8; 512];
                image[..4].copy_from_slice(&[0x7f, 0x03, 0x21, 0x38]);
                image[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
                img.write(DATA, &image);
                a.mov(rsi, DATA).unwrap();
                a.fxrstor64(ptr(rsi)).unwrap();
                a.mov(eax, 0xffff_ffffu32).unwrap();
                a.fnstsw(ax).unwrap();
                a.cmp(eax, 0xffff_3821u32 as i32).unwrap();
                a.jne(0).unwrap();
            },
            None,
        ),
    ];
    for (name, build, vector) in cases {
        let mut img = image();
        let mut a = asm();
        build(&mut img, &mut a);
        a.out(END_PORT as u32, al).unwrap();
        img.load_code(&mut a);
        let o = run(&img);
        match vector {
            Some(v) => assert_eq!(ended_with(&o), (EXC_PORT, v), "{name}"),
            None => assert_eq!(ended_with(&o).0, END_PORT, "{name}"),
        }
    }
    // Without FXSR in CPUID: #UD.
    let mut cpuid = default_cpuid();
    for e in cpuid.iter_mut().filter(|e| e.function == 1) {
        e.edx &= !(1 << 24);
    }
    let mut img = image();
    let mut a = asm();
    a.fxsave64(ptr(DATA)).unwrap();
    a.out(END_PORT as u32, al).unwrap();
    img.load_code(&mut a);
    let o = run_replay(&img, &cpuid, 1000);
    assert_eq!(ended_with(&o), (EXC_PORT, 6), "fxsave64 without FXSR");
    // fwait with an error pending and CR0.NE clear would raise FERR#: not replayed.
    let mut img = image();
    img.state.cr0 &= !0x20;
    let mut image = [0u8; 512];
    image[..4].copy_from_slice(&[0x7b, 0x03, 0x04, 0x00]);
    image[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    img.write(DATA, &image);
    let mut a = asm();
    a.mov(rsi, DATA).unwrap();
    a.fxrstor64(ptr(rsi)).unwrap();
    a.wait().unwrap();
    img.load_code(&mut a);
    let o = run(&img);
    assert!(
        matches!(&o.exit, Exit::Error(CpuError::Unsupported { what, .. }) if what.contains("FERR")),
        "{:?}",
        o.exit
    );
}

/// A `rep ins` chunk exits once for all its values and takes exactly that many; the
/// chunk executes when they are supplied, writes them to ES:RDI and retires with RIP on
/// the instruction until RCX is 0.
#[test]
fn an_ins_chunk_waits_for_its_values() {
    let mut img = image();
    let mut a = asm();
    a.mov(rdi, DATA + 0xffd).unwrap();
    a.mov(ecx, 5u32).unwrap();
    a.mov(edx, 0x1f0u32).unwrap();
    a.rep().insw().unwrap();
    a.out(END_PORT as u32, al).unwrap();
    img.load_code(&mut a);
    let mut mem = img.memory();
    let mut cpu = Cpu::new(img.state.clone(), default_cpuid());
    // 3 bytes left in the page: a chunk of 3 words (the emulator compares bytes with
    // elements), then one of 2.
    let exit = cpu.run(&mut mem, 100);
    assert_eq!(
        exit,
        Exit::PortInString {
            port: 0x1f0,
            size: 2,
            count: 3
        }
    );
    assert_eq!(cpu.icount(), 3, "the chunk is pending");
    assert_eq!(cpu.complete_input(1, false), Err(CpuError::NoPendingInput));
    assert_eq!(
        cpu.complete_string_input(&[1, 2]),
        Err(CpuError::InputCount {
            expected: 3,
            given: 2
        })
    );
    assert_eq!(cpu.run(&mut mem, 100), exit, "still waiting");
    cpu.complete_string_input(&[0x1111, 0x2222, 0x3333])
        .unwrap();
    assert_eq!(
        cpu.run(&mut mem, 100),
        Exit::PortInString {
            port: 0x1f0,
            size: 2,
            count: 2
        }
    );
    assert_eq!(cpu.icount(), 4, "the first chunk retired");
    assert_eq!(cpu.state().rip, CODE + 10 + 5 + 5, "on the ins");
    assert_eq!(cpu.state().gpr[1], 2);
    cpu.complete_string_input(&[0x4444, 0x5555]).unwrap();
    assert_eq!(
        cpu.run(&mut mem, 100),
        Exit::PortOut {
            port: END_PORT,
            size: 1,
            value: 0
        }
    );
    // The two chunks, the execution with RCX = 0, the out.
    assert_eq!(cpu.icount(), 3 + 2 + 1 + 1);
    let mut b = [0u8; 10];
    mem.read(DATA + 0xffd, &mut b).unwrap();
    assert_eq!(
        b,
        [0x11, 0x11, 0x22, 0x22, 0x33, 0x33, 0x44, 0x44, 0x55, 0x55]
    );
    assert_eq!(cpu.state().gpr[7], DATA + 0xffd + 10);
}

/// A recording of code that reads a string from a port and then executes `fld1`: replay
/// takes the string from the recorded port inputs, then stops with a divergence that
/// names `fld1` and its address. With an input of another size recorded it diverges at
/// the string input, naming it.
#[test]
fn an_unimplemented_instruction_is_a_divergence_naming_it() {
    let mut img = image();
    let mut a = asm();
    a.fninit().unwrap();
    a.mov(rdi, DATA).unwrap();
    a.mov(ecx, 3u32).unwrap();
    a.mov(edx, 0x60u32).unwrap();
    a.rep().insb().unwrap();
    let fld1_at = CODE + 2 + 10 + 5 + 5 + 2;
    a.fld1().unwrap();
    a.out(END_PORT as u32, al).unwrap();
    img.load_code(&mut a);
    let recording = |size: u8| {
        let mut config = Image::config();
        config.counter = CounterSourceKind::KvmInsnEmulation;
        let mut header = Header::new(
            config,
            KernelIdentity {
                name: "fld1".into(),
                size: 0,
                sha256: [0; 32],
            },
        );
        header.cpuid = default_cpuid();
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut w = RecordingWriter::create(file.path()).unwrap();
        w.write_header(&header).unwrap();
        w.write_snapshot(&img.snapshot()).unwrap();
        for value in [0x41, 0x42, 0x43] {
            // At the exit the chunk has counted: the 4 instructions before it and itself.
            w.push(Event::PortIn(PortIn {
                icount: 5,
                port: 0x60,
                size,
                value,
            }))
            .unwrap();
        }
        w.finish(FinishInfo {
            kernel_instructions: 8,
            duration_s: 0.0,
            end_reason: "test".into(),
        })
        .unwrap();
        file
    };

    let file = recording(1);
    let mut r = Replay::open(file.path()).unwrap();
    let Stop::Diverged(d) = r.run(Target::End) else {
        panic!("replay did not diverge");
    };
    assert_eq!(d.rip, fld1_at);
    assert_eq!(d.event, 3, "the three inputs were applied");
    assert!(
        d.actual.contains("unimplemented instruction fld1")
            && d.actual.contains(&format!("{fld1_at:#x}")),
        "{}",
        d.actual
    );
    let mut b = [0u8; 3];
    r.read_memory(DATA, &mut b).unwrap();
    assert_eq!(b, [0x41, 0x42, 0x43]);

    let file = recording(2);
    let mut r = Replay::open(file.path()).unwrap();
    let Stop::Diverged(d) = r.run(Target::End) else {
        panic!("replay did not diverge");
    };
    assert_eq!((d.event, d.icount), (0, 4));
    assert!(
        d.actual
            .contains("element 1 of 3 of string input from port 0x60 (size 1)"),
        "{}",
        d.actual
    );
}

/// `rdmsr` and `wrmsr` of MSRs the CPU does not model follow the recording host's
/// measurements when the recording has them: values, #GP, writes ignored or kept, and
/// an error naming an MSR the table does not cover; without a table both raise #GP.
#[test]
fn msrs_the_cpu_does_not_model_follow_the_msr_table() {
    use krr_engine::cpu::{MsrBehaviour, MsrRead, MsrTable, MsrWrite};
    let table = MsrTable::new([
        (
            0x10a,
            MsrBehaviour {
                read: MsrRead::Value(0x0c00_e16d),
                write: MsrWrite::Faults,
            },
        ),
        (
            0x8b,
            MsrBehaviour {
                read: MsrRead::Value(0x1_0000_0000),
                write: MsrWrite::Ignored,
            },
        ),
        (
            0x140,
            MsrBehaviour {
                read: MsrRead::Value(0),
                write: MsrWrite::Kept,
            },
        ),
        (
            0x3a,
            MsrBehaviour {
                read: MsrRead::Faults,
                write: MsrWrite::Faults,
            },
        ),
    ]);
    // Reads RCX, stores EDX:EAX at DATA + 8 * slot.
    fn read_msr(a: &mut CodeAssembler, msr: u32, slot: u64) {
        a.mov(ecx, msr).unwrap();
        a.rdmsr().unwrap();
        a.shl(rdx, 32).unwrap();
        a.or(rax, rdx).unwrap();
        a.mov(qword_ptr(DATA + 8 * slot), rax).unwrap();
    }
    fn write_msr(a: &mut CodeAssembler, msr: u32, value: u64) {
        a.mov(ecx, msr).unwrap();
        a.mov(eax, value as u32).unwrap();
        a.mov(edx, (value >> 32) as u32).unwrap();
        a.wrmsr().unwrap();
    }
    let run_with = |table: Option<&MsrTable>, build: &dyn Fn(&mut CodeAssembler)| {
        let mut img = image();
        let mut a = asm();
        build(&mut a);
        a.out(END_PORT as u32, al).unwrap();
        img.load_code(&mut a);
        let mut mem = img.memory();
        let mut cpu = Cpu::new(img.state.clone(), default_cpuid());
        if let Some(t) = table {
            cpu.set_msr_table(t.clone());
        }
        let exit = run_cpu(&mut cpu, &mut mem, 1000);
        let mut b = [0u8; 32];
        mem.read(DATA, &mut b).unwrap();
        let slots: Vec<u64> = b
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (exit, slots)
    };
    let out = |port: u16, value: u32| Exit::PortOut {
        port,
        size: 4,
        value,
    };
    let (exit, slots) = run_with(Some(&table), &|a| {
        read_msr(a, 0x10a, 0);
        write_msr(a, 0x8b, 0);
        read_msr(a, 0x8b, 1);
        write_msr(a, 0x140, 1);
        read_msr(a, 0x140, 2);
    });
    assert!(
        matches!(exit, Exit::PortOut { port: END_PORT, .. }),
        "{exit:?}"
    );
    assert_eq!(slots[..3], [0x0c00_e16d, 0x1_0000_0000, 1]);
    for (name, build) in [
        (
            "rdmsr 0x3a",
            &(|a: &mut CodeAssembler| read_msr(a, 0x3a, 0)) as &dyn Fn(&mut CodeAssembler),
        ),
        ("wrmsr 0x10a", &|a: &mut CodeAssembler| {
            write_msr(a, 0x10a, 0)
        }),
    ] {
        let (exit, _) = run_with(Some(&table), build);
        assert_eq!(exit, out(EXC_PORT, 13), "{name}");
    }
    let (exit, _) = run_with(Some(&table), &|a| read_msr(a, 0x1a0, 0));
    assert!(
        matches!(&exit, Exit::Error(CpuError::Unsupported { what, .. }) if what.contains("rdmsr of MSR 0x1a0")),
        "{exit:?}"
    );
    let (exit, _) = run_with(Some(&table), &|a| write_msr(a, 0x1a1, 0));
    assert!(
        matches!(&exit, Exit::Error(CpuError::Unsupported { what, .. }) if what.contains("wrmsr of MSR 0x1a1")),
        "{exit:?}"
    );
    for build in [
        &(|a: &mut CodeAssembler| read_msr(a, 0x10a, 0)) as &dyn Fn(&mut CodeAssembler),
        &|a: &mut CodeAssembler| write_msr(a, 0x8b, 0),
    ] {
        let (exit, _) = run_with(None, build);
        assert_eq!(exit, out(EXC_PORT, 13), "without a table");
    }
}
