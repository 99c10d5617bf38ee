//! x86-64 architectural constants, defined once for the replay CPU, the recorder and the
//! tests: control-register, EFER and RFLAGS bits, page-table entries and page-fault
//! error codes, segment attributes and descriptors, exception vectors, x87 and SSE
//! control and status bits, and the CPUID feature bits the replay CPU reads. MSR numbers
//! are in [`crate::state::msr`].

/// CR0 bits.
pub mod cr0 {
    pub const PE: u64 = 1 << 0;
    pub const MP: u64 = 1 << 1;
    pub const EM: u64 = 1 << 2;
    pub const TS: u64 = 1 << 3;
    pub const ET: u64 = 1 << 4;
    pub const NE: u64 = 1 << 5;
    pub const WP: u64 = 1 << 16;
    pub const AM: u64 = 1 << 18;
    pub const NW: u64 = 1 << 29;
    pub const CD: u64 = 1 << 30;
    pub const PG: u64 = 1 << 31;
}

/// CR3 bits.
pub mod cr3 {
    /// With CR4.PCIDE, a write with this bit set keeps the PCID's translations; the bit
    /// itself is not stored.
    pub const PCID_NO_FLUSH: u64 = 1 << 63;
}

/// CR4 bits.
pub mod cr4 {
    pub const VME: u64 = 1 << 0;
    pub const PVI: u64 = 1 << 1;
    pub const TSD: u64 = 1 << 2;
    pub const DE: u64 = 1 << 3;
    pub const PSE: u64 = 1 << 4;
    pub const PAE: u64 = 1 << 5;
    pub const MCE: u64 = 1 << 6;
    pub const PGE: u64 = 1 << 7;
    pub const PCE: u64 = 1 << 8;
    pub const OSFXSR: u64 = 1 << 9;
    pub const OSXMMEXCPT: u64 = 1 << 10;
    pub const UMIP: u64 = 1 << 11;
    pub const LA57: u64 = 1 << 12;
    pub const VMXE: u64 = 1 << 13;
    pub const SMXE: u64 = 1 << 14;
    pub const FSGSBASE: u64 = 1 << 16;
    pub const PCIDE: u64 = 1 << 17;
    pub const OSXSAVE: u64 = 1 << 18;
    pub const SMEP: u64 = 1 << 20;
    pub const SMAP: u64 = 1 << 21;
    pub const PKE: u64 = 1 << 22;
    pub const CET: u64 = 1 << 23;
    pub const PKS: u64 = 1 << 24;
}

/// IA32_EFER bits.
pub mod efer {
    /// `syscall`/`sysret` enabled.
    pub const SCE: u64 = 1 << 0;
    pub const LME: u64 = 1 << 8;
    /// Long mode active (read-only: the CPU sets it).
    pub const LMA: u64 = 1 << 10;
    pub const NXE: u64 = 1 << 11;
}

/// RFLAGS bits.
pub mod rflags {
    pub const CF: u64 = 1 << 0;
    /// Always set.
    pub const FIXED1: u64 = 1 << 1;
    pub const PF: u64 = 1 << 2;
    pub const AF: u64 = 1 << 4;
    pub const ZF: u64 = 1 << 6;
    pub const SF: u64 = 1 << 7;
    pub const TF: u64 = 1 << 8;
    pub const IF: u64 = 1 << 9;
    pub const DF: u64 = 1 << 10;
    pub const OF: u64 = 1 << 11;
    pub const IOPL: u64 = 3 << 12;
    pub const NT: u64 = 1 << 14;
    pub const RF: u64 = 1 << 16;
    pub const VM: u64 = 1 << 17;
    pub const AC: u64 = 1 << 18;
    pub const VIF: u64 = 1 << 19;
    pub const VIP: u64 = 1 << 20;
    pub const ID: u64 = 1 << 21;

    /// The six arithmetic status flags.
    pub const STATUS: u64 = CF | PF | AF | ZF | SF | OF;

    /// Bits of RFLAGS that software can change at CPL0 with `popf`/`iret`.
    pub const WRITABLE: u64 = STATUS | TF | IF | DF | IOPL | NT | RF | AC | VIF | VIP | ID;
}

/// Page-table entry bits (every level; `PS` in PDPT and PD entries only).
pub mod pte {
    pub const P: u64 = 1 << 0;
    pub const W: u64 = 1 << 1;
    pub const U: u64 = 1 << 2;
    pub const PWT: u64 = 1 << 3;
    pub const PCD: u64 = 1 << 4;
    pub const A: u64 = 1 << 5;
    pub const D: u64 = 1 << 6;
    /// A large page (1 GiB in a PDPT entry, 2 MiB in a PD entry).
    pub const PS: u64 = 1 << 7;
    pub const G: u64 = 1 << 8;
    pub const NX: u64 = 1 << 63;
    /// The bits of a 1 GiB page's entry between its PAT bit (12) and its frame,
    /// reserved.
    pub const RESERVED_1G: u64 = 0x3fff_e000;
    /// The same for a 2 MiB page.
    pub const RESERVED_2M: u64 = 0x1f_e000;
}

/// Page-fault error code bits.
pub mod pf_error {
    /// The page was present (a protection or reserved-bit fault).
    pub const P: u32 = 1 << 0;
    pub const W: u32 = 1 << 1;
    pub const U: u32 = 1 << 2;
    pub const RSVD: u32 = 1 << 3;
    /// An instruction fetch.
    pub const I: u32 = 1 << 4;
}

/// Segment attributes in the VMX/KVM layout of [`crate::state::Segment::attr`]: the
/// descriptor's access byte in bits 0-7 and its flags nibble in bits 12-15.
pub mod seg_attr {
    /// The type field (bits 0-3).
    pub const TYPE: u16 = 0xf;
    /// Type bit 0 of a code or data segment.
    pub const ACCESSED: u16 = 1 << 0;
    /// Type bit 1: a data segment is writable, a code segment readable.
    pub const WRITABLE: u16 = 1 << 1;
    pub const READABLE: u16 = 1 << 1;
    /// Type bit 2: a code segment is conforming (a data segment expands down).
    pub const CONFORMING: u16 = 1 << 2;
    /// Type bit 3: a code segment.
    pub const CODE: u16 = 1 << 3;
    /// A code or data segment (not a system segment).
    pub const S: u16 = 1 << 4;
    pub const DPL_SHIFT: u16 = 5;
    pub const DPL: u16 = 3 << DPL_SHIFT;
    pub const P: u16 = 1 << 7;
    pub const AVL: u16 = 1 << 12;
    /// A 64-bit code segment.
    pub const L: u16 = 1 << 13;
    pub const DB: u16 = 1 << 14;
    pub const G: u16 = 1 << 15;

    /// System segment types.
    pub const TYPE_LDT: u16 = 0x2;
    pub const TYPE_TSS64_AVAILABLE: u16 = 0x9;
    pub const TYPE_TSS64_BUSY: u16 = 0xb;
    pub const TYPE_CALL_GATE64: u16 = 0xc;
    /// The bit that tells a busy TSS from an available one.
    pub const TSS_BUSY: u16 = 1 << 1;

    /// Execute/read code, accessed.
    const CODE_TYPE: u16 = CODE | READABLE | ACCESSED;
    /// Read/write data, accessed.
    const DATA_TYPE: u16 = WRITABLE | ACCESSED;
    const USER: u16 = 3 << DPL_SHIFT;

    /// Kernel 64-bit code segment attributes (type 0xb, S, DPL 0, P, L, G).
    pub const KERNEL_CODE64: u16 = CODE_TYPE | S | P | L | G;
    /// Kernel data segment attributes (type 3, S, DPL 0, P, D/B, G).
    pub const KERNEL_DATA: u16 = DATA_TYPE | S | P | DB | G;
    /// User-mode 64-bit code segment attributes (type 0xb, S, DPL 3, P, L, G).
    pub const USER_CODE64: u16 = CODE_TYPE | S | USER | P | L | G;
    /// User compatibility-mode code segment attributes (type 0xb, S, DPL 3, P, D/B, G).
    pub const USER_CODE32: u16 = CODE_TYPE | S | USER | P | DB | G;
    /// User-mode data segment attributes (type 3, S, DPL 3, P, D/B, G).
    pub const USER_DATA: u16 = DATA_TYPE | S | USER | P | DB | G;
}

/// Bits of an 8-byte segment descriptor in the GDT or LDT and of a 16-byte IDT gate.
pub mod descriptor {
    /// The accessed bit of a code or data descriptor.
    pub const ACCESSED: u64 = 1 << 40;
    /// The busy bit of a TSS descriptor.
    pub const TSS_BUSY: u64 = 1 << 41;
    /// The present bit of a descriptor or gate.
    pub const PRESENT: u64 = 1 << 47;
    /// Gate types (bits 40-43 of an IDT gate).
    pub const INTERRUPT_GATE: u64 = 0xe;
    pub const TRAP_GATE: u64 = 0xf;
}

/// Offsets in the 64-bit TSS.
pub mod tss {
    /// The stack pointer for CPL0 (RSP1 and RSP2 follow).
    pub const RSP0: u64 = 0x4;
    /// The first interrupt stack table entry (IST2..IST7 follow).
    pub const IST1: u64 = 0x24;
}

/// Exception vectors.
pub mod vector {
    pub const DE: u8 = 0;
    pub const DB: u8 = 1;
    pub const BP: u8 = 3;
    pub const UD: u8 = 6;
    /// Device not available (x87/SSE with CR0.TS or CR0.EM).
    pub const NM: u8 = 7;
    pub const DF: u8 = 8;
    pub const TS: u8 = 10;
    pub const NP: u8 = 11;
    pub const SS: u8 = 12;
    pub const GP: u8 = 13;
    pub const PF: u8 = 14;
    /// x87 floating-point error (a pending unmasked x87 exception, CR0.NE set).
    pub const MF: u8 = 16;
}

/// x87 FPU and SSE control and status registers.
pub mod fpu {
    /// FCW at reset and after `fninit`: every exception masked, 64-bit precision, round to
    /// nearest.
    pub const FCW_INIT: u16 = 0x037f;
    /// The FCW bits that hold state (exception masks, precision, rounding, infinity
    /// control); of the others bit 6 always reads 1 and the rest 0.
    pub const FCW_BITS: u16 = 0x1f3f;
    pub const FCW_ONE: u16 = 1 << 6;
    /// The exception flags of FSW (IE, DE, ZE, OE, UE, PE), and the masks of FCW at the
    /// same positions.
    pub const EXCEPTIONS: u16 = 0x3f;
    /// FSW: exception summary, set while an unmasked exception is pending.
    pub const FSW_ES: u16 = 1 << 7;
    /// FSW: busy, a copy of ES.
    pub const FSW_B: u16 = 1 << 15;
    /// What `fnclex` clears: the exception flags, the stack fault, ES and B.
    pub const FSW_CLEARED_BY_FNCLEX: u16 = 0x80ff;
    /// The bits of the last x87 opcode (FOP).
    pub const FOP_BITS: u16 = 0x7ff;
    /// MXCSR at reset: every SIMD exception masked, round to nearest.
    pub const MXCSR_INIT: u32 = 0x1f80;
    /// The MXCSR bits that can be set (DAZ included), as `fxsave` reports it in
    /// MXCSR_MASK; loading any other bit is #GP.
    pub const MXCSR_MASK: u32 = 0xffff;
    /// Size of the `fxsave` image.
    pub const FXSAVE_SIZE: usize = 512;
}

/// CPUID feature bits the replay CPU reads, by leaf and register.
pub mod cpuid {
    /// Leaf 1 EDX: FXSR (`fxsave`, `fxrstor`).
    pub const LEAF1_EDX_FXSR: u32 = 1 << 24;
    /// Leaf 1 EDX: SSE (`ldmxcsr`, `stmxcsr`).
    pub const LEAF1_EDX_SSE: u32 = 1 << 25;
    /// Leaf 1 ECX: OSXSAVE (mirrors CR4.OSXSAVE).
    pub const LEAF1_ECX_OSXSAVE: u32 = 1 << 27;
    /// Leaf 7 sub-leaf 0 EBX: BMI1 (`tzcnt`).
    pub const LEAF7_EBX_BMI1: u32 = 1 << 3;
    /// Leaf 7 sub-leaf 0 ECX: OSPKE (mirrors CR4.PKE).
    pub const LEAF7_ECX_OSPKE: u32 = 1 << 4;
    /// Leaf 0x8000_0001 ECX: ABM (`lzcnt`).
    pub const EXT1_ECX_ABM: u32 = 1 << 5;
    /// Leaf 0x8000_0001 EDX: 1 GiB pages.
    pub const EXT1_EDX_PDPE1GB: u32 = 1 << 26;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_values_are_the_documented_ones() {
        assert_eq!(seg_attr::KERNEL_CODE64, 0xa09b);
        assert_eq!(seg_attr::KERNEL_DATA, 0xc093);
        assert_eq!(seg_attr::USER_CODE64, 0xa0fb);
        assert_eq!(seg_attr::USER_CODE32, 0xc0fb);
        assert_eq!(seg_attr::USER_DATA, 0xc0f3);
        assert_eq!(rflags::STATUS, 0x8d5);
        // sysret keeps these bits of R11 (the SDM's 3C7FD7H).
        assert_eq!((rflags::WRITABLE & !rflags::RF) | rflags::FIXED1, 0x3c_7fd7);
    }
}
