//! A small long-mode ring-0 machine for the replay CPU tests: GDT, IDT with one stub per
//! vector, TSS, identity page tables (4 KiB pages below 2 MiB, 2 MiB pages up to 1 GiB),
//! and helpers to run code in the replay CPU. `kvm` runs the same image under KVM;
//! `compare` runs it in both and lists what differs.
#![allow(dead_code)]

pub mod compare;
pub mod kvm;
pub mod lar;

use std::collections::HashMap;

use iced_x86::code_asm::CodeAssembler;
use krr_engine::cpu::{Cpu, Exit, Quirks};
use krr_engine::memory::GuestMemory;
use krr_engine::state::{
    CounterSourceKind, CpuState, CpuidEntry, DescriptorTable, MachineConfig, MemoryRegion,
    RegionKind, Segment, Snapshot, SnapshotPage, msr,
};

pub const RAM_SIZE: u64 = 16 << 20;
pub const GDT: u64 = 0x1000;
pub const IDT: u64 = 0x2000;
pub const PML4: u64 = 0x3000;
pub const PDPT: u64 = 0x4000;
pub const PD: u64 = 0x5000;
/// The 4 KiB page table for 0..2 MiB.
pub const PT: u64 = 0x6000;
pub const TSS: u64 = 0x7000;
pub const STUBS: u64 = 0x8000;
pub const CODE: u64 = 0x10000;
pub const HANDLERS: u64 = 0x18000;
pub const DATA: u64 = 0x20000;
pub const STACK_TOP: u64 = 0x40000;
pub const IST1_TOP: u64 = 0x48000;
pub const RSP0_TOP: u64 = 0x50000;
/// Port the default exception stubs write the vector to (ends a run).
pub const EXC_PORT: u16 = 0xe0;
/// Port test code writes to when it is done.
pub const END_PORT: u16 = 0xf0;

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const TSS_SEL: u16 = 0x18;
/// STAR[63:48] base for sysret: SS = 0x28 | 3, CS = 0x30 | 3.
pub const USER_BASE_SEL: u16 = 0x20;

/// The throughput workload of the test and the bench: a ring-0 checksum loop over a
/// 4 KiB table at DATA (a load, add, rotate, read-modify-write xor, dec, jnz), about
/// 2^31 iterations of 8 instructions.
pub fn checksum_loop(a: &mut CodeAssembler) {
    use iced_x86::code_asm::*;
    let mut top = a.create_label();
    a.mov(rsi, DATA).unwrap();
    a.mov(ecx, 0x7fff_ffffu32).unwrap();
    a.xor(eax, eax).unwrap();
    a.set_label(&mut top).unwrap();
    a.mov(edx, ecx).unwrap();
    a.and(edx, 0x3ff).unwrap();
    a.mov(ebx, dword_ptr(rsi + rdx * 4)).unwrap();
    a.add(eax, ebx).unwrap();
    a.rol(eax, 5).unwrap();
    a.xor(dword_ptr(rsi + rdx * 4), eax).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(top).unwrap();
}

pub fn asm() -> CodeAssembler {
    CodeAssembler::new(64).expect("64-bit assembler")
}

/// Guest memory image and initial CPU state.
#[derive(Clone)]
pub struct Image {
    pub ram: Vec<u8>,
    pub state: CpuState,
}

impl Image {
    pub fn write(&mut self, gpa: u64, bytes: &[u8]) {
        self.ram[gpa as usize..gpa as usize + bytes.len()].copy_from_slice(bytes);
    }
    pub fn write_u64(&mut self, gpa: u64, v: u64) {
        self.write(gpa, &v.to_le_bytes());
    }
    pub fn read_u64(&self, gpa: u64) -> u64 {
        u64::from_le_bytes(self.ram[gpa as usize..gpa as usize + 8].try_into().unwrap())
    }

    /// Sets IDT gate `v` (interrupt gate unless `trap`) to `target` with `ist`.
    pub fn set_gate(&mut self, v: u8, target: u64, trap: bool, ist: u8) {
        let ty: u64 = if trap { 0x8f } else { 0x8e };
        let lo = (target & 0xffff)
            | ((KERNEL_CS as u64) << 16)
            | ((ist as u64 & 7) << 32)
            | (ty << 40)
            | (((target >> 16) & 0xffff) << 48);
        self.write_u64(IDT + 16 * v as u64, lo);
        self.write_u64(IDT + 16 * v as u64 + 8, target >> 32);
    }

    /// Assembles `a` at CODE and points RIP there.
    pub fn load_code(&mut self, a: &mut CodeAssembler) {
        let bytes = a.assemble(CODE).expect("assemble");
        assert!(bytes.len() < (HANDLERS - CODE) as usize);
        self.write(CODE, &bytes);
        self.state.rip = CODE;
    }

    /// Assembles a handler at `at` (in the handler area).
    pub fn load_at(&mut self, at: u64, a: &mut CodeAssembler) {
        let bytes = a.assemble(at).expect("assemble");
        self.write(at, &bytes);
    }

    /// The 4 KiB PTE for `va` below 2 MiB.
    pub fn pte_addr(va: u64) -> u64 {
        assert!(va < 0x20_0000);
        PT + (va >> 12) * 8
    }

    pub fn config() -> MachineConfig {
        MachineConfig {
            regions: vec![MemoryRegion {
                gpa: 0,
                size: RAM_SIZE,
                kind: RegionKind::Ram,
            }],
            tsc_khz: None,
            counter: CounterSourceKind::None,
            quirks: Default::default(),
            msrs: Default::default(),
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let pages = self
            .ram
            .chunks(4096)
            .enumerate()
            .filter(|(_, p)| p.iter().any(|&b| b != 0))
            .map(|(i, p)| SnapshotPage {
                gpa: i as u64 * 4096,
                data: p.to_vec(),
            })
            .collect();
        Snapshot {
            cpu: self.state.clone(),
            pages,
        }
    }

    pub fn memory(&self) -> GuestMemory {
        GuestMemory::from_snapshot(&Self::config(), &self.snapshot()).expect("memory")
    }
}

fn seg(selector: u16, attr: u16) -> Segment {
    Segment {
        selector,
        base: 0,
        limit: 0xffff_ffff,
        attr,
    }
}

/// The standard machine: see the module documentation.
pub fn image() -> Image {
    let mut img = Image {
        ram: vec![0; RAM_SIZE as usize],
        state: CpuState::default(),
    };
    // GDT: null, kernel code64, kernel data, TSS (16 bytes), user data, user code64.
    let gdt: [u64; 3] = [0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff];
    for (i, d) in gdt.iter().enumerate() {
        img.write_u64(GDT + 8 * i as u64, *d);
    }
    let tss_limit: u64 = 0x67;
    let tss_lo =
        tss_limit | ((TSS & 0xff_ffff) << 16) | (0x89u64 << 40) | (((TSS >> 24) & 0xff) << 56);
    img.write_u64(GDT + 0x18, tss_lo);
    img.write_u64(GDT + 0x20, TSS >> 32);
    img.write_u64(GDT + 0x28, 0x00cf_f200_0000_ffff);
    img.write_u64(GDT + 0x30, 0x00af_fa00_0000_ffff);
    // TSS: RSP0 and IST1.
    img.write_u64(TSS + 4, RSP0_TOP);
    img.write_u64(TSS + 0x24, IST1_TOP);
    img.write(TSS + 0x66, &0x68u16.to_le_bytes());
    // Page tables (no A/D bits set: the walks set them).
    img.write_u64(PML4, PDPT | 3);
    img.write_u64(PDPT, PD | 3);
    img.write_u64(PD, PT | 3);
    for i in 1..512u64 {
        img.write_u64(PD + 8 * i, (i << 21) | 0x83);
    }
    for i in 0..512u64 {
        img.write_u64(PT + 8 * i, (i << 12) | 3);
    }
    // Exception stubs: report the vector and stop.
    for v in 0..256u64 {
        let stub = STUBS + v * 16;
        let mut a = asm();
        a.mov(iced_x86::code_asm::eax, v as u32).unwrap();
        a.out(EXC_PORT as u32, iced_x86::code_asm::eax).unwrap();
        let mut l = a.create_label();
        a.set_label(&mut l).unwrap();
        a.hlt().unwrap();
        a.jmp(l).unwrap();
        let b = a.assemble(stub).unwrap();
        assert!(b.len() <= 16);
        img.write(stub, &b);
        img.set_gate(v as u8, stub, false, 0);
    }
    let st = &mut img.state;
    st.rip = CODE;
    st.rflags = 2;
    st.gpr[4] = STACK_TOP;
    st.seg[0] = seg(KERNEL_DS, 0xc093);
    st.seg[1] = seg(KERNEL_CS, 0xa09b);
    st.seg[2] = seg(KERNEL_DS, 0xc093);
    st.seg[3] = seg(KERNEL_DS, 0xc093);
    st.seg[4] = seg(KERNEL_DS, 0xc093);
    st.seg[5] = seg(KERNEL_DS, 0xc093);
    st.tr = Segment {
        selector: TSS_SEL,
        base: TSS,
        limit: 0x67,
        attr: 0x8b,
    };
    st.ldtr = Segment {
        selector: 0,
        base: 0,
        limit: 0xffff,
        attr: 0x82,
    };
    st.gdtr = DescriptorTable {
        base: GDT,
        limit: 0x37,
    };
    st.idtr = DescriptorTable {
        base: IDT,
        limit: 0xfff,
    };
    st.cr0 = 0x8005_0033;
    st.cr3 = PML4;
    st.cr4 = 0x20 | 0x200 | 0x400;
    st.efer = 0xd01;
    st.set_msr(
        msr::IA32_STAR,
        ((USER_BASE_SEL as u64) << 48) | ((KERNEL_CS as u64) << 32),
    );
    st.set_msr(msr::IA32_LSTAR, HANDLERS);
    st.set_msr(msr::IA32_FMASK, 0x4700);
    st.set_msr(msr::IA32_PAT, 0x0007_0406_0007_0406);
    st.set_msr(msr::IA32_KERNEL_GS_BASE, 0);
    img
}

/// A CPUID table resembling the recording host's: leaf 0 (max basic 0xd), leaf 1,
/// leaf 7, extended leaves with NX, LM and 46 physical address bits.
pub fn default_cpuid() -> Vec<CpuidEntry> {
    let e = |function, index, flags, eax, ebx, ecx, edx| CpuidEntry {
        function,
        index,
        flags,
        eax,
        ebx,
        ecx,
        edx,
    };
    vec![
        e(0, 0, 0, 0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69),
        e(1, 0, 0, 0x806f8, 0x800, 0x8120_2000, 0x0f8b_fbff),
        e(7, 0, 1, 0, 0x0180_2852, 0, 0),
        e(0x8000_0000, 0, 0, 0x8000_0008, 0, 0, 0),
        e(0x8000_0001, 0, 0, 0, 0, 0x121, 0x2010_0800),
        e(0x8000_0008, 0, 0, 0x302e, 0, 0, 0),
    ]
}

/// The result of running in the replay CPU.
pub struct Outcome {
    pub cpu: Cpu,
    pub mem: GuestMemory,
    pub exit: Exit,
    pub io: IoLog,
}

/// The port accesses of a run, in order: for an input the port and how many bytes the
/// access (or string-input chunk) read, for an output the port and the bytes written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoLog {
    pub inputs: Vec<(u16, usize)>,
    pub outputs: Vec<(u16, Vec<u8>)>,
}

/// What the tests' ports deliver, the same under KVM and in the replay CPU: every port
/// is a stream of bytes, and an access of n bytes (or a string-input chunk of n
/// bytes) takes the next n of its port.
#[derive(Debug, Default)]
pub struct PortInput {
    taken: HashMap<u16, u64>,
}

impl PortInput {
    pub fn take(&mut self, port: u16, n: usize) -> Vec<u8> {
        let at = self.taken.entry(port).or_insert(0);
        let bytes = (*at..*at + n as u64)
            .map(|j| (port as u64 * 0x9d + j * 0x3b + (j >> 8) * 0x11 + 0x5a) as u8)
            .collect();
        *at += n as u64;
        bytes
    }

    /// The next value of `size` bytes.
    pub fn value(&mut self, port: u16, size: usize) -> u32 {
        let mut v = [0u8; 4];
        v[..size].copy_from_slice(&self.take(port, size));
        u32::from_le_bytes(v)
    }
}

/// Runs the image in the replay CPU until a port write to END_PORT or EXC_PORT, `hlt`,
/// or another exit. Port reads return `port_in(port)`.
pub fn run_replay(img: &Image, cpuid: &[CpuidEntry], limit: u64) -> Outcome {
    // The tests model the host they run on, as the recorder measures it (a recording
    // stores these quirks and replay follows them).
    let quirks = if kvm::present() {
        kvm::host_quirks()
    } else {
        Quirks::default()
    };
    run_replay_with(img, cpuid, limit, quirks)
}

/// [`run_replay`] with the given quirks instead of this host's.
pub fn run_replay_with(img: &Image, cpuid: &[CpuidEntry], limit: u64, quirks: Quirks) -> Outcome {
    let mut mem = img.memory();
    let mut cpu = Cpu::new(img.state.clone(), cpuid.to_vec());
    cpu.set_quirks(quirks);
    let mut io = IoLog::default();
    let exit = run_cpu_logged(&mut cpu, &mut mem, limit, &mut io);
    Outcome { cpu, mem, exit, io }
}

pub fn port_in_value(port: u16) -> u64 {
    0x1234_5678u64.wrapping_mul(port as u64 + 1) & 0xffff_ffff
}

/// The value a load from MMIO address `gpa` returns in the tests (KVM and replay).
pub fn mmio_value(gpa: u64) -> u64 {
    gpa.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

pub fn run_cpu(cpu: &mut Cpu, mem: &mut GuestMemory, limit: u64) -> Exit {
    run_cpu_logged(cpu, mem, limit, &mut IoLog::default())
}

/// Runs until a write to END_PORT or EXC_PORT, `hlt`, or another exit, answering port
/// reads from a [`PortInput`] and MMIO loads with [`mmio_value`], and logging the port
/// accesses.
pub fn run_cpu_logged(cpu: &mut Cpu, mem: &mut GuestMemory, limit: u64, io: &mut IoLog) -> Exit {
    let mut ports = PortInput::default();
    loop {
        let e = cpu.run(mem, limit);
        match e {
            Exit::PortIn { port, size } => {
                io.inputs.push((port, size as usize));
                let v = ports.value(port, size as usize);
                cpu.complete_input(v as u64, false).unwrap()
            }
            Exit::PortInString { port, size, count } => {
                io.inputs.push((port, size as usize * count as usize));
                let values: Vec<u32> = (0..count)
                    .map(|_| ports.value(port, size as usize))
                    .collect();
                cpu.complete_string_input(&values).unwrap()
            }
            Exit::MmioRead { gpa, .. } => cpu.complete_input(mmio_value(gpa), false).unwrap(),
            Exit::MmioWrite { .. } => {}
            Exit::PortOut { port, size, value } if port != END_PORT && port != EXC_PORT => io
                .outputs
                .push((port, value.to_le_bytes()[..size as usize].to_vec())),
            _ => return e,
        }
    }
}
