//! The MSRs the replay CPU does not model ([`MEASURED_MSRS`]): a guest's `rdmsr` and
//! `wrmsr` of each give the same results under KVM and in the replay CPU answering
//! from the table the recorder's probe measures ([`krr_kvm::probe::msr_behaviour`]);
//! the CPU models none of them itself; replay of a recording stops with a divergence
//! naming an MSR its table does not cover; and a timeline keeps answering from the
//! table after restoring a checkpoint. The KVM tests skip with a printed reason where
//! /dev/kvm is absent.

mod cpu_common;

use cpu_common::kvm::{KvmExit, KvmMachine, available, observed_cpuid};
use cpu_common::*;
use iced_x86::code_asm::*;
use krr_engine::cpu::{
    Cpu, CpuError, Exit, MEASURED_MSRS, MsrBehaviour, MsrRead, MsrTable, MsrWrite,
};
use krr_engine::replay::{Replay, Stop, Target};
use krr_engine::state::{CounterSourceKind, KernelIdentity};
use krr_engine::timeline::{Moved, Timeline};
use krr_engine::trace::{FinishInfo, Header, RecordingWriter};

/// Reads MSR `index` into DATA; where `write` is given, writes it and reads the MSR
/// back into DATA + 8. A #GP ends the program at the default stub (EXC_PORT, 13).
fn msr_program(index: u32, write: Option<u64>) -> Image {
    let mut img = image();
    let mut a = asm();
    // Marks, so that a store that did not happen differs from one of zero.
    a.mov(rax, 0x5a5a_5a5a_5a5a_5a5au64).unwrap();
    a.mov(qword_ptr(DATA), rax).unwrap();
    a.mov(qword_ptr(DATA + 8), rax).unwrap();
    a.mov(ecx, index).unwrap();
    a.rdmsr().unwrap();
    a.mov(dword_ptr(DATA), eax).unwrap();
    a.mov(dword_ptr(DATA + 4), edx).unwrap();
    if let Some(v) = write {
        a.mov(eax, v as u32).unwrap();
        a.mov(edx, (v >> 32) as u32).unwrap();
        a.wrmsr().unwrap();
        a.rdmsr().unwrap();
        a.mov(dword_ptr(DATA + 8), eax).unwrap();
        a.mov(dword_ptr(DATA + 12), edx).unwrap();
    }
    a.out(END_PORT as u32, al).unwrap();
    img.load_code(&mut a);
    img
}

fn probed_table() -> MsrTable {
    let given = krr_kvm::Vm::supported_cpuid().expect("KVM_GET_SUPPORTED_CPUID");
    krr_kvm::probe::msr_behaviour(MEASURED_MSRS, &given).expect("the MSR probe")
}

/// For every measured MSR: `rdmsr` (and, where the probe measures the write, `wrmsr`
/// of the probe value and `rdmsr` back) ends the same way, with the same registers and
/// stored values, under KVM and in the replay CPU with the probed table.
#[test]
fn measured_msrs_read_and_write_as_under_kvm() {
    if !available() {
        return;
    }
    let table = probed_table();
    let cpuid = observed_cpuid();
    let mut compared_writes = 0;
    for m in MEASURED_MSRS {
        let behaviour = table.get(m.index).expect("every listed MSR is measured");
        let write = match behaviour.write {
            MsrWrite::NotMeasured => None,
            _ => m.probe_write,
        };
        compared_writes += write.is_some() as usize;
        let img = msr_program(m.index, write);
        let k = KvmMachine::new(&img).run(100);
        let mut mem = img.memory();
        let mut cpu = Cpu::new(img.state.clone(), cpuid.clone());
        cpu.set_msr_table(table.clone());
        let exit = run_cpu(&mut cpu, &mut mem, 1000);
        let ours = match exit {
            Exit::PortOut { port, value, .. } => KvmExit::Out { port, value },
            e => KvmExit::Other(format!("{e:?}")),
        };
        let name = format!("MSR {:#x} {} ({behaviour:?})", m.index, m.name);
        assert_eq!(ours, k.exit, "{name}: exit");
        let expected_port = match behaviour.read {
            MsrRead::Faults => EXC_PORT,
            MsrRead::Value(_) => END_PORT,
        };
        assert!(
            matches!(k.exit, KvmExit::Out { port, .. } if port == expected_port),
            "{name}: KVM's exit {:?} is not the table's",
            k.exit
        );
        let mut data = [0u8; 16];
        mem.read(DATA, &mut data).unwrap();
        assert_eq!(
            data[..],
            k.ram[DATA as usize..DATA as usize + 16],
            "{name}: stored values"
        );
        for r in [0usize, 1, 2] {
            assert_eq!(
                cpu.state().gpr[r],
                k.state.gpr[r],
                "{name}: {}",
                krr_engine::state::gpr::NAMES[r]
            );
        }
    }
    assert!(compared_writes > 0, "no write was compared");
}

/// What the probe measures on this host for the MSRs a Linux 6.1 boot is known to use:
/// IA32_BIOS_SIGN_ID's write is accepted and ignored, IA32_FEATURE_CONTROL and
/// MSR_PPERF fault, the others read.
#[test]
fn the_probe_measures_what_linux_needs() {
    if !available() {
        return;
    }
    let table = probed_table();
    for line in table.table() {
        println!("{line}");
    }
    let get = |i: u32| {
        table
            .get(i)
            .unwrap_or_else(|| panic!("MSR {i:#x} measured"))
    };
    assert_eq!(get(0x8b).write, MsrWrite::Ignored);
    assert!(matches!(get(0x8b).read, MsrRead::Value(_)));
    assert_eq!(get(0x3a).read, MsrRead::Faults);
    for i in [0x10a, 0x140, 0x1a0, 0xce] {
        assert!(
            matches!(get(i).read, MsrRead::Value(_)),
            "MSR {i:#x}: {:?}",
            get(i)
        );
    }
    assert_ne!(get(0x140).write, MsrWrite::NotMeasured);
}

/// The table covers only what the replay CPU does not model: with an empty table each
/// listed MSR's `rdmsr` is an error naming it (a modelled one would read).
#[test]
fn the_replay_cpu_models_none_of_the_measured_msrs() {
    for m in MEASURED_MSRS {
        let img = msr_program(m.index, None);
        let mut mem = img.memory();
        let mut cpu = Cpu::new(img.state.clone(), default_cpuid());
        cpu.set_msr_table(MsrTable::default());
        let exit = run_cpu(&mut cpu, &mut mem, 1000);
        let expected = format!("rdmsr of MSR {:#x} ({}),", m.index, m.name);
        assert!(
            matches!(&exit, Exit::Error(CpuError::Unsupported { what, .. }) if what.contains(&expected)),
            "MSR {:#x} {}: {exit:?}",
            m.index,
            m.name
        );
    }
}

/// A recording of `img` (no events) whose header holds `table`.
fn recording(img: &Image, table: MsrTable) -> tempfile::NamedTempFile {
    let mut config = Image::config();
    config.counter = CounterSourceKind::KvmInsnEmulation;
    config.msrs = table;
    let mut header = Header::new(
        config,
        KernelIdentity {
            name: "rdmsr".into(),
            size: 0,
            sha256: [0; 32],
        },
    );
    header.cpuid = default_cpuid();
    let file = tempfile::NamedTempFile::new().unwrap();
    let mut w = RecordingWriter::create(file.path()).unwrap();
    w.write_header(&header).unwrap();
    w.write_snapshot(&img.snapshot()).unwrap();
    w.finish(FinishInfo {
        kernel_instructions: 20,
        duration_s: 0.0,
        end_reason: "test".into(),
    })
    .unwrap();
    file
}

/// A recording whose table lacks an MSR the guest reads replays to that `rdmsr` and
/// stops with a divergence naming the MSR; with the MSR in its table it runs to the end
/// with the table's value; a write the table did not measure stops it too.
#[test]
fn replay_of_an_msr_its_table_does_not_cover_is_a_divergence_naming_it() {
    let img = msr_program(0x1a0, None);
    let file = recording(&img, MsrTable::default());
    let mut r = Replay::open(file.path()).unwrap();
    let Stop::Diverged(d) = r.run(Target::End) else {
        panic!("replay did not diverge");
    };
    assert!(
        d.actual.contains("rdmsr of MSR 0x1a0 (IA32_MISC_ENABLE)"),
        "{}",
        d.actual
    );

    let read = MsrBehaviour {
        read: MsrRead::Value(0x85_0089),
        write: MsrWrite::NotMeasured,
    };
    let file = recording(&img, MsrTable::new([(0x1a0, read)]));
    let mut r = Replay::open(file.path()).unwrap();
    let stop = r.run(Target::End);
    assert!(!matches!(stop, Stop::Diverged(_)), "{stop:?}");
    let mut b = [0u8; 8];
    r.read_memory(DATA, &mut b).unwrap();
    assert_eq!(u64::from_le_bytes(b), 0x85_0089);

    let img = msr_program(0x1a0, Some(0x85_0089));
    let file = recording(&img, MsrTable::new([(0x1a0, read)]));
    let mut r = Replay::open(file.path()).unwrap();
    let Stop::Diverged(d) = r.run(Target::End) else {
        panic!("replay did not diverge");
    };
    assert!(d.actual.contains("wrmsr of MSR 0x1a0"), "{}", d.actual);
}

/// Moving back in a timeline restores a checkpoint: the CPU made from it answers from
/// the recording's table too, and a write the host keeps is undone and redone.
#[test]
fn a_timeline_answers_from_the_table_after_going_back() {
    let img = msr_program(0x140, Some(3));
    let table = MsrTable::new([(
        0x140,
        MsrBehaviour {
            read: MsrRead::Value(0),
            write: MsrWrite::Kept,
        },
    )]);
    let file = recording(&img, table);
    let mut t = Timeline::new(Replay::open(file.path()).unwrap(), 64 << 20);
    let stored = |t: &Timeline| [t.read_u64(DATA), t.read_u64(DATA + 8)];
    // The program's 13th instruction stores the value read back.
    const STORED: u64 = 13;
    const MARK: u64 = 0x5a5a_5a5a_5a5a_5a5a;
    assert_eq!(t.goto_icount(STORED), Moved::Arrived);
    assert_eq!(stored(&t), [Some(0), Some(3)]);
    assert_eq!(t.goto_icount(5), Moved::Arrived);
    assert_eq!(stored(&t), [Some(MARK), Some(MARK)]);
    assert_eq!(t.goto_icount(STORED), Moved::Arrived);
    assert_eq!(stored(&t), [Some(0), Some(3)]);
}
