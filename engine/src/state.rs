//! Machine state shared by the recorder, the trace format and the replay CPU: the
//! architectural CPU state, the memory map, the CPUID table and the initial snapshot.

use serde::{Deserialize, Serialize};

use crate::cpu::undefined::UndefinedBehaviour;
use crate::cpu::{FpuState, MsrTable};

/// Size of a guest page, the unit of snapshots and copy-on-write checkpoints.
pub const PAGE_SIZE: usize = 4096;

/// A segment register as the CPU caches it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
    /// Access rights in the VMX/KVM layout: type (bits 0-3), S (4), DPL (5-6), P (7),
    /// AVL (12), L (13), D/B (14), G (15).
    pub attr: u16,
}

impl Segment {
    pub fn dpl(&self) -> u8 {
        ((self.attr >> 5) & 3) as u8
    }
    pub fn long_mode(&self) -> bool {
        self.attr & (1 << 13) != 0
    }
}

/// A descriptor-table register (GDTR, IDTR).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u16,
}

/// Indices into [`CpuState::seg`].
pub mod seg {
    pub const ES: usize = 0;
    pub const CS: usize = 1;
    pub const SS: usize = 2;
    pub const DS: usize = 3;
    pub const FS: usize = 4;
    pub const GS: usize = 5;
}

/// Indices into [`CpuState::gpr`] (hardware encoding order).
pub mod gpr {
    pub const RAX: usize = 0;
    pub const RCX: usize = 1;
    pub const RDX: usize = 2;
    pub const RBX: usize = 3;
    pub const RSP: usize = 4;
    pub const RBP: usize = 5;
    pub const RSI: usize = 6;
    pub const RDI: usize = 7;
    pub const R8: usize = 8;
    pub const R9: usize = 9;
    pub const R10: usize = 10;
    pub const R11: usize = 11;
    pub const R12: usize = 12;
    pub const R13: usize = 13;
    pub const R14: usize = 14;
    pub const R15: usize = 15;
    pub const NAMES: [&str; 16] = [
        "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15",
    ];
}

/// Model-specific registers a kernel uses, by number.
pub mod msr {
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_APIC_BASE: u32 = 0x1b;
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const IA32_PAT: u32 = 0x277;
    pub const IA32_EFER: u32 = 0xc000_0080;
    pub const IA32_STAR: u32 = 0xc000_0081;
    pub const IA32_LSTAR: u32 = 0xc000_0082;
    pub const IA32_CSTAR: u32 = 0xc000_0083;
    pub const IA32_FMASK: u32 = 0xc000_0084;
    pub const IA32_FS_BASE: u32 = 0xc000_0100;
    pub const IA32_GS_BASE: u32 = 0xc000_0101;
    pub const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const IA32_TSC_AUX: u32 = 0xc000_0103;
}

/// The architectural state of the vCPU that kernel replay needs.
///
/// FS and GS bases live in `seg[FS].base` and `seg[GS].base`; EFER in `efer`; the other
/// MSRs in `msrs` (sorted by number).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuState {
    pub gpr: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    pub seg: [Segment; 6],
    pub tr: Segment,
    pub ldtr: Segment,
    pub gdtr: DescriptorTable,
    pub idtr: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub xcr0: u64,
    #[serde(deserialize_with = "crate::trace::limits::msrs")]
    pub msrs: Vec<(u32, u64)>,
    /// Interrupt shadow after `sti` or `mov ss` (no interrupt before the next instruction).
    pub interrupt_shadow: bool,
    /// The vCPU is halted, waiting for an interrupt.
    pub halted: bool,
    /// The x87 and SSE registers. Not stored in recordings: every recording starts from
    /// a new vCPU, whose state is the reset state ([`FpuState::default`]).
    #[serde(skip)]
    pub fpu: FpuState,
}

impl CpuState {
    /// The current privilege level (CS.DPL in long mode).
    pub fn cpl(&self) -> u8 {
        self.seg[seg::CS].dpl()
    }

    pub fn msr(&self, index: u32) -> Option<u64> {
        self.msrs
            .binary_search_by_key(&index, |&(i, _)| i)
            .ok()
            .map(|i| self.msrs[i].1)
    }

    pub fn set_msr(&mut self, index: u32, value: u64) {
        match self.msrs.binary_search_by_key(&index, |&(i, _)| i) {
            Ok(i) => self.msrs[i].1 = value,
            Err(i) => self.msrs.insert(i, (index, value)),
        }
    }

    /// The register digest stored in [`crate::event::Digest::regs`]: FNV-1a over the
    /// sixteen general registers and RFLAGS. Recorder and replay both call this.
    pub fn regs_digest(&self) -> u64 {
        regs_digest(&self.gpr, self.rflags)
    }
}

/// FNV-1a over the general registers and RFLAGS (see [`CpuState::regs_digest`]).
pub fn regs_digest(gpr: &[u64; 16], rflags: u64) -> u64 {
    let mut h = Fnv1a::new();
    for r in gpr {
        h.write_u64(*r);
    }
    h.write_u64(rflags);
    h.finish()
}

/// Bytes of the kernel stack that [`stack_digest`] covers: from RSP up to this many, never
/// past the end of RSP's page (the next page may be a guard page or another stack).
pub const STACK_DIGEST_BYTES: u64 = 128;

/// How many bytes at `rsp` the stack digest covers.
pub fn stack_digest_len(rsp: u64) -> usize {
    STACK_DIGEST_BYTES.min(PAGE_SIZE as u64 - (rsp & (PAGE_SIZE as u64 - 1))) as usize
}

/// FNV-1a over the top of the kernel stack (the [`stack_digest_len`] bytes at RSP): part
/// of an interrupt's signature and of the recorder's digests, so that two instances of
/// one rip with equal registers but different callers or locals are told apart.
/// Recorder and replay both call this.
pub fn stack_digest(top_of_stack: &[u8]) -> u64 {
    let mut h = Fnv1a::new();
    h.write(top_of_stack);
    h.finish()
}

/// 64-bit FNV-1a, the hash of digests (cheap, stable across versions).
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self::new()
    }
}

impl Fnv1a {
    pub const fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    pub fn write_u64(&mut self, v: u64) {
        self.write(&v.to_le_bytes());
    }
    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// One CPUID leaf as the guest saw it (KVM_SET_CPUID2 layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidEntry {
    pub function: u32,
    pub index: u32,
    /// KVM_CPUID_FLAG_SIGNIFCANT_INDEX (bit 0): `index` selects the sub-leaf.
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// What a region of guest-physical address space is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegionKind {
    /// Ordinary RAM.
    Ram,
    /// The guest agent's shared ring (RAM that the recorder also maps).
    AgentRing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRegion {
    pub gpa: u64,
    pub size: u64,
    pub kind: RegionKind,
}

/// How the machine was configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfig {
    #[serde(deserialize_with = "crate::trace::limits::regions")]
    pub regions: Vec<MemoryRegion>,
    /// Guest TSC frequency in kHz, if known.
    pub tsc_khz: Option<u32>,
    /// The instruction-counter source the recorder used.
    pub counter: CounterSourceKind,
    /// How the recording host executed guest kernel code where it differs from a
    /// hardware CPU with the same CPUID (measured by the recorder).
    pub quirks: Quirks,
    /// What the recording host's `rdmsr` and `wrmsr` did with the MSRs the replay CPU
    /// does not model (measured by the recorder: a ring-0 `rdmsr` causes no VM exit, so
    /// no event can hold its value). Format 5 on; older recordings replay with an empty
    /// table, where such an MSR stops replay.
    pub msrs: MsrTable,
}

/// Behaviours of the recording host that CPUID does not tell: where it differs from a
/// hardware CPU with the same CPUID, and what it gives where the architecture leaves a
/// result undefined. Replay must reproduce the host that made the recording; the
/// recorder measures them in a scratch VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quirks {
    /// `lzcnt`/`tzcnt` execute as `bsr`/`bsf` even when CPUID advertises ABM/BMI1
    /// (KVM's ring-0 emulator ignores the F3 prefix there; measured in cpu_vs_kvm.rs).
    pub bit_scan_ignores_rep: bool,
    /// Undefined flags and results (format 3; format 2 recordings replay with
    /// [`UndefinedBehaviour::legacy`]).
    pub undefined: UndefinedBehaviour,
}

/// Where the recorder's instruction counts came from (DESIGN.md section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CounterSourceKind {
    /// KVM's per-vCPU `insn_emulation` statistic (hosts that emulate ring-0 code).
    KvmInsnEmulation,
    /// A guest-kernel-only hardware performance counter of retired branches (for VT-x
    /// hosts with a PMU, DESIGN.md section 3). The recorder does not implement it, and replay
    /// refuses a recording that claims it (its positions would not be instruction
    /// counts).
    PerfGuestKernel,
    /// No counter: kernel-mode interrupts only at deterministic exits or by signature.
    None,
}

/// Identity of the guest kernel image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelIdentity {
    /// File name or "builtin:demo".
    pub name: String,
    pub size: u64,
    pub sha256: [u8; 32],
}

impl KernelIdentity {
    /// Whether `file`, from its start, is this image: its size first, then the SHA-256
    /// of its bytes, hashed through reads (the file passes through the page cache
    /// without all of it becoming resident in this process). False where it cannot be
    /// read.
    pub fn matches_file(&self, file: &mut std::fs::File) -> bool {
        use sha2::{Digest as _, Sha256};
        use std::io::Read as _;
        match file.metadata() {
            Ok(meta) if meta.is_file() && meta.len() == self.size => {}
            _ => return false,
        }
        let mut sha = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => sha.update(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        <[u8; 32]>::from(sha.finalize()) == self.sha256
    }
}

/// A guest symbol the replay needs (agent hooks) or shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Symbol {
    pub name: String,
    pub addr: u64,
    pub size: u64,
}

/// One guest page of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPage {
    /// Guest-physical address, page aligned.
    pub gpa: u64,
    pub data: Vec<u8>,
}

/// The machine at the start of a recording. Pages absent from `pages` are zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub cpu: CpuState,
    pub pages: Vec<SnapshotPage>,
}

#[cfg(test)]
mod tests {
    use super::KernelIdentity;
    use sha2::{Digest as _, Sha256};
    use std::io::{Seek as _, Write as _};

    #[test]
    fn a_kernel_file_matches_by_size_and_hash_only() {
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i * 13) as u8).collect();
        let identity = KernelIdentity {
            name: "vmlinux".into(),
            size: bytes.len() as u64,
            sha256: Sha256::digest(&bytes).into(),
        };
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&bytes).unwrap();
        f.rewind().unwrap();
        assert!(identity.matches_file(&mut f));
        // One byte changed, the size kept: the hash differs.
        f.rewind().unwrap();
        f.write_all(&[bytes[0] ^ 1]).unwrap();
        f.rewind().unwrap();
        assert!(!identity.matches_file(&mut f));
        // Another size is refused before reading.
        f.set_len(bytes.len() as u64 - 1).unwrap();
        f.rewind().unwrap();
        assert!(!identity.matches_file(&mut f));
    }
}
