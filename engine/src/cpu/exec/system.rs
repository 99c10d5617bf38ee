//! System instructions: flag control (`cli`, `sti`, `clc` ...), descriptor tables
//! (`lgdt`, `sidt` ...), `ltr`/`lldt`/`str`/`sldt`, control registers (`mov cr`, `smsw`,
//! `lmsw`, `clts`), TLB control (`invlpg`, `invpcid`), `rdmsr`/`wrmsr`, `cpuid`, `iret`,
//! `hlt`, `lar`, and the instructions that do nothing here (`nop`, fences, `serialize`,
//! prefetches, cache control). Exception delivery, segment loads, MSRs and CPUID themselves are in
//! `cpu/system.rs`.

use iced_x86::{Instruction, Mnemonic};

use super::super::flags::{AC, CF, DF, IF, ZF, mask};
use super::super::mmu::canonical;
use super::super::{Cpu, Exit, Pending, R, Retired, exc, exit, gp0, ud, vector};
use super::operand::op_size;
use crate::arch::{cr0, cr3, cr4, efer, seg_attr};
use crate::memory::GuestMemory;
use crate::state::gpr::{RAX, RBX, RCX, RDX};
use crate::state::{DescriptorTable, Segment};

/// The CR4 bits that can be set (VMXE, SMXE, LA57 and reserved bits fault).
const CR4_KNOWN: u64 = cr4::VME
    | cr4::PVI
    | cr4::TSD
    | cr4::DE
    | cr4::PSE
    | cr4::PAE
    | cr4::MCE
    | cr4::PGE
    | cr4::PCE
    | cr4::OSFXSR
    | cr4::OSXMMEXCPT
    | cr4::UMIP
    | cr4::FSGSBASE
    | cr4::PCIDE
    | cr4::OSXSAVE
    | cr4::SMEP
    | cr4::SMAP
    | cr4::PKE
    | cr4::CET
    | cr4::PKS;

/// CR4 bits whose change flushes the TLB.
const CR4_FLUSH: u64 = cr4::PGE | cr4::PCIDE | cr4::SMEP | cr4::SMAP | cr4::PAE;

/// CR0 bits whose change flushes the TLB.
const CR0_FLUSH: u64 = cr0::PG | cr0::WP | cr0::PE;

/// The CR0 bits `lmsw` writes.
const LMSW_BITS: u64 = cr0::PE | cr0::MP | cr0::EM | cr0::TS;

/// Whether `m` does nothing the replay CPU models (no-ops, fences, prefetches, cache
/// control).
pub(super) fn is_nop(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::Nop
            | M::Pause
            | M::Lfence
            | M::Mfence
            | M::Sfence
            | M::Prefetchnta
            | M::Prefetcht0
            | M::Prefetcht1
            | M::Prefetcht2
            | M::Prefetchw
            | M::Prefetch
            | M::Clflush
            | M::Clflushopt
            | M::Clwb
            | M::Wbinvd
            | M::Invd
            | M::Endbr64
            | M::Serialize
    )
}

impl Cpu {
    pub(super) fn cli(&mut self) {
        self.st.rflags &= !IF;
    }

    /// `sti`: an interrupt shadow follows when it sets IF.
    pub(super) fn sti(&mut self) {
        if self.st.rflags & IF == 0 {
            self.st.interrupt_shadow = true;
        }
        self.st.rflags |= IF;
    }

    /// `clc`, `stc`, `cmc`, `cld`, `std`, `clac`, `stac`.
    pub(super) fn flag_control(&mut self, m: Mnemonic) {
        use Mnemonic as M;
        let f = &mut self.st.rflags;
        match m {
            M::Clc => *f &= !CF,
            M::Stc => *f |= CF,
            M::Cmc => *f ^= CF,
            M::Cld => *f &= !DF,
            M::Std => *f |= DF,
            M::Clac => *f &= !AC,
            _ => *f |= AC,
        }
    }

    /// `lgdt` (`gdt`) and `lidt`.
    pub(super) fn load_descriptor_table(
        &mut self,
        mem: &mut GuestMemory,
        ins: &Instruction,
        gdt: bool,
    ) -> R<()> {
        let la = self.mem_la(ins);
        let ss = Self::mem_ss(ins);
        let limit = self.read_lin(mem, la, 2, ss)? as u16;
        let base = self.read_lin(mem, la.wrapping_add(2), 8, ss)?;
        if !canonical(base) {
            return Err(gp0());
        }
        let t = if gdt {
            &mut self.st.gdtr
        } else {
            &mut self.st.idtr
        };
        *t = DescriptorTable { base, limit };
        Ok(())
    }

    /// `sgdt` (`gdt`) and `sidt`.
    pub(super) fn store_descriptor_table(
        &mut self,
        mem: &mut GuestMemory,
        ins: &Instruction,
        gdt: bool,
    ) -> R<()> {
        let t = if gdt { self.st.gdtr } else { self.st.idtr };
        let la = self.mem_la(ins);
        let ss = Self::mem_ss(ins);
        self.probe_write(mem, la, 10)?;
        self.write_lin(mem, la, 2, t.limit as u64, ss)?;
        self.write_lin(mem, la.wrapping_add(2), 8, t.base, ss)
    }

    /// `ltr` (`tss`) and `lldt`.
    pub(super) fn load_system_register(
        &mut self,
        mem: &mut GuestMemory,
        ins: &Instruction,
        tss: bool,
    ) -> R<()> {
        let sel = self.rd(mem, ins, 0, 2)? as u16;
        self.load_system_segment(mem, sel, tss)
    }

    /// `str` (`tss`) and `sldt`.
    pub(super) fn store_system_register(
        &mut self,
        mem: &mut GuestMemory,
        ins: &Instruction,
        tss: bool,
    ) -> R<()> {
        let sel = if tss {
            self.st.tr.selector
        } else {
            self.st.ldtr.selector
        } as u64;
        let size = op_size(ins, 0);
        self.wr(mem, ins, 0, size, sel)
    }

    pub(super) fn smsw(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        let size = op_size(ins, 0);
        let v = self.st.cr0 & mask(size);
        self.wr(mem, ins, 0, size, v)
    }

    /// `lmsw`: PE, MP, EM and TS only; PE cannot be cleared.
    pub(super) fn lmsw(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        let v = self.rd(mem, ins, 0, 2)?;
        let old = self.st.cr0;
        let cr0 = (old & !(LMSW_BITS & !cr0::PE)) | (v & LMSW_BITS) | (old & cr0::PE);
        self.write_cr(0, cr0)
    }

    pub(super) fn clts(&mut self) {
        self.st.cr0 &= !cr0::TS;
    }

    pub(super) fn invlpg(&mut self, ins: &Instruction) {
        let la = self.mem_la(ins);
        self.tlb_flush_page(la);
    }

    /// `rdmsr`; IA32_TSC waits for the driver, as `rdtsc` does.
    pub(super) fn rdmsr_instruction(&mut self) -> R<()> {
        let idx = self.st.gpr[RCX] as u32;
        match self.rdmsr(idx)? {
            Some(v) => {
                self.st.gpr[RAX] = v & 0xffff_ffff;
                self.st.gpr[RDX] = v >> 32;
                Ok(())
            }
            None => {
                self.pending = Some(Pending::EdxEax {
                    next_rip: self.next_rip,
                });
                Err(exit(Exit::Rdtsc))
            }
        }
    }

    pub(super) fn wrmsr_instruction(&mut self) -> R<()> {
        let v = (self.st.gpr[RAX] & 0xffff_ffff) | (self.st.gpr[RDX] << 32);
        self.wrmsr(self.st.gpr[RCX] as u32, v)
    }

    pub(super) fn cpuid_instruction(&mut self) {
        let [a, b, c, d] = self.cpuid(self.st.gpr[RAX] as u32, self.st.gpr[RCX] as u32);
        for (r, v) in [(RAX, a), (RBX, b), (RCX, c), (RDX, d)] {
            self.st.gpr[r] = v as u64;
        }
    }

    /// `iret`, `iretd`, `iretq`: RF comes from the popped image.
    pub(super) fn iret_instruction(&mut self, mem: &mut GuestMemory, m: Mnemonic) -> R<Retired> {
        let size = match m {
            Mnemonic::Iretq => 8,
            Mnemonic::Iretd => 4,
            _ => 2,
        };
        self.keep_rf = true;
        self.iret(mem, size)
    }

    /// `lar`: the access rights of the descriptor a selector names, with ZF set, or ZF
    /// clear and the destination unchanged when the selector is null, beyond its
    /// table, names a type not valid in long mode (an LDT, a gate other than a call
    /// gate, a reserved type), or a non-conforming segment less privileged than CPL
    /// and RPL allow. Checked against the host CPU at ring 3 in cpu_vs_kvm_linux.rs.
    pub(super) fn lar(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        let sel = self.rd(mem, ins, 1, 2)? as u16;
        let size = op_size(ins, 0);
        let rights = match self.lar_rights(mem, sel)? {
            Some(r) => r,
            None => {
                self.st.rflags &= !ZF;
                return Ok(());
            }
        };
        let v = if size == 2 { rights & 0xff00 } else { rights };
        self.wr(mem, ins, 0, size, v)?;
        self.st.rflags |= ZF;
        Ok(())
    }

    /// The second doubleword of `sel`'s descriptor masked by 00FFFF00H, if `lar` may
    /// read it.
    fn lar_rights(&mut self, mem: &mut GuestMemory, sel: u16) -> R<Option<u64>> {
        let ldt = sel & 4 != 0;
        if sel & !3 == 0 || (ldt && self.st.ldtr.attr & seg_attr::P == 0) {
            return Ok(None);
        }
        let (base, limit) = if ldt {
            (self.st.ldtr.base, self.st.ldtr.limit as u64)
        } else {
            (self.st.gdtr.base, self.st.gdtr.limit as u64)
        };
        let off = (sel & !7) as u64;
        if off + 7 > limit {
            return Ok(None);
        }
        let d = self.read_lin(mem, base.wrapping_add(off), 8, false)?;
        let attr = super::super::system::segment_from_descriptor(sel, d).attr;
        let ty = attr & seg_attr::TYPE;
        let valid = if attr & seg_attr::S != 0 {
            true
        } else {
            matches!(
                ty,
                seg_attr::TYPE_TSS64_AVAILABLE
                    | seg_attr::TYPE_TSS64_BUSY
                    | seg_attr::TYPE_CALL_GATE64
            )
        };
        let conforming_code = attr & seg_attr::S != 0
            && ty & (seg_attr::CODE | seg_attr::CONFORMING)
                == seg_attr::CODE | seg_attr::CONFORMING;
        let dpl = ((attr & seg_attr::DPL) >> seg_attr::DPL_SHIFT) as u8;
        let rpl = (sel & 3) as u8;
        if !valid || (!conforming_code && (self.st.cpl() > dpl || rpl > dpl)) {
            return Ok(None);
        }
        Ok(Some((d >> 32) & 0x00ff_ff00))
    }

    pub(super) fn hlt(&mut self) -> Retired {
        self.st.halted = true;
        Retired::Hlt
    }

    pub(super) fn software_interrupt(&self) -> R<Retired> {
        Err(self.unsupported(
            "software interrupt instruction in kernel code (the recording host cannot execute it)",
        ))
    }

    pub(super) fn read_cr(&self, n: u32) -> R<u64> {
        Ok(match n {
            0 => self.st.cr0,
            2 => self.st.cr2,
            3 => self.st.cr3,
            4 => self.st.cr4,
            8 => self.st.cr8,
            _ => return Err(ud()),
        })
    }

    pub(crate) fn write_cr(&mut self, n: u32, v: u64) -> R<()> {
        match n {
            0 => self.write_cr0(v)?,
            2 => self.st.cr2 = v,
            3 => {
                let v = if self.st.cr4 & cr4::PCIDE != 0 {
                    v & !cr3::PCID_NO_FLUSH
                } else {
                    v
                };
                if v >> self.max_phys_bits != 0 {
                    return Err(gp0());
                }
                self.st.cr3 = v;
                self.tlb_flush(false);
            }
            4 => {
                // PAE cannot be cleared in long mode.
                if v & !CR4_KNOWN != 0 || v & cr4::PAE == 0 {
                    return Err(gp0());
                }
                if (v ^ self.st.cr4) & CR4_FLUSH != 0 {
                    self.tlb_flush(true);
                }
                self.st.cr4 = v;
            }
            8 => {
                if v & !0xf != 0 {
                    return Err(gp0());
                }
                self.st.cr8 = v;
            }
            _ => return Err(ud()),
        }
        Ok(())
    }

    fn write_cr0(&mut self, v: u64) -> R<()> {
        if v >> 32 != 0
            || (v & cr0::PG != 0 && v & cr0::PE == 0)
            || (v & cr0::NW != 0 && v & cr0::CD == 0)
        {
            return Err(gp0());
        }
        if v & cr0::PG == 0 && self.st.efer & efer::LMA != 0 {
            return Err(self.unsupported("leaving long mode (clearing CR0.PG)"));
        }
        let v = v | cr0::ET;
        if (v ^ self.st.cr0) & CR0_FLUSH != 0 {
            self.tlb_flush(true);
        }
        self.st.cr0 = v;
        Ok(())
    }

    /// `ltr` (`tss`) and `lldt` of selector `sel`.
    fn load_system_segment(&mut self, mem: &mut GuestMemory, sel: u16, tss: bool) -> R<()> {
        let err = Some(sel as u32 & !3);
        if sel & !3 == 0 {
            if tss {
                return Err(gp0());
            }
            self.st.ldtr = Segment {
                selector: sel,
                base: 0,
                limit: 0,
                attr: 0,
            };
            return Ok(());
        }
        if sel & 4 != 0 {
            return Err(exc(vector::GP, err));
        }
        let off = (sel & !7) as u64;
        if off + 15 > self.st.gdtr.limit as u64 {
            return Err(exc(vector::GP, err));
        }
        let la = self.st.gdtr.base.wrapping_add(off);
        let lo = self.read_lin(mem, la, 8, false)?;
        let hi = self.read_lin(mem, la.wrapping_add(8), 8, false)?;
        let mut s = super::super::system::segment_from_descriptor(sel, lo);
        let want = if tss {
            seg_attr::TYPE_TSS64_AVAILABLE
        } else {
            seg_attr::TYPE_LDT
        };
        if s.attr & (seg_attr::TYPE | seg_attr::S) != want {
            return Err(exc(vector::GP, err));
        }
        if s.attr & seg_attr::P == 0 {
            return Err(exc(vector::NP, err));
        }
        s.base |= (hi & 0xffff_ffff) << 32;
        if tss {
            // Mark the TSS busy in the GDT.
            self.write_lin(mem, la, 8, lo | crate::arch::descriptor::TSS_BUSY, false)?;
            s.attr |= seg_attr::TSS_BUSY;
            self.st.tr = s;
        } else {
            self.st.ldtr = s;
        }
        Ok(())
    }
}
