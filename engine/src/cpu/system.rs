//! Exceptions and interrupts (IDT delivery, double and triple faults), entries from and
//! returns to user mode, descriptor tables and segments, MSRs and CPUID.

use super::{
    Cpu, CpuError, Exception, Exit, Fault, MsrBehaviour, MsrRead, MsrWrite, R, Retired, exc, flags,
    gp0, vector,
};
use crate::arch::seg_attr::{
    self, KERNEL_CODE64 as KERNEL_CODE64_ATTR, KERNEL_DATA as KERNEL_DATA_ATTR,
    USER_CODE32 as USER_CODE32_ATTR, USER_CODE64 as USER_CODE64_ATTR, USER_DATA as USER_DATA_ATTR,
};
use crate::arch::{cpuid as cpuid_bits, cr0, cr4, descriptor, efer, tss};
use crate::event::{EntryKind, UserEntry};
use crate::memory::GuestMemory;
use crate::state::gpr::{R11, RCX, RSP};
use crate::state::{Segment, msr, seg};

/// Type bits of a code segment's attributes (S and the code bit).
const CODE_SEGMENT: u16 = seg_attr::S | seg_attr::CODE;

/// The RFLAGS bits `sysret` loads from R11 (the SDM's 3C7FD7H).
const SYSRET_RFLAGS: u64 = (flags::WRITABLE & !flags::RF) | flags::FIXED1;

/// Segment-register state that a descriptor describes.
pub(crate) fn segment_from_descriptor(selector: u16, d: u64) -> Segment {
    let mut limit = ((d & 0xffff) | ((d >> 32) & 0xf_0000)) as u32;
    let attr = (((d >> 40) & 0xff) | (((d >> 52) & 0xf) << 12)) as u16;
    if attr & seg_attr::G != 0 {
        limit = (limit << 12) | 0xfff;
    }
    let base = ((d >> 16) & 0xff_ffff) | (((d >> 56) & 0xff) << 24);
    Segment {
        selector,
        base,
        limit,
        attr,
    }
}

fn has_error_code(v: u8) -> bool {
    matches!(v, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

impl Cpu {
    /// Delivers an exception raised by an instruction. A fault while delivering it
    /// becomes a double fault (#DF, error code 0), without the architectural
    /// benign/contributory distinction and without writing CR2 for a page fault met
    /// during delivery: this is what the recording host does (measured in
    /// cpu_vs_kvm.rs, `exceptions`). A fault while delivering #DF is a triple fault.
    pub(crate) fn deliver_exception(
        &mut self,
        mem: &mut GuestMemory,
        first: Exception,
    ) -> Result<(), CpuError> {
        if first.vector == vector::PF {
            self.st.cr2 = first.cr2;
        }
        let mut cur = first;
        loop {
            let code = if has_error_code(cur.vector) {
                Some(cur.error_code.unwrap_or(0))
            } else {
                None
            };
            match self.deliver(mem, cur.vector, code, false, true) {
                Ok(()) => return Ok(()),
                Err(Fault::Exc(next)) => {
                    if cur.vector == vector::DF {
                        return Err(CpuError::TripleFault {
                            rip: self.st.rip,
                            vector: next.vector,
                        });
                    }
                    cur = Exception {
                        vector: vector::DF,
                        error_code: Some(0),
                        cr2: 0,
                    };
                }
                Err(Fault::Exit(x)) => {
                    return Err(match *x {
                        Exit::Error(e) => e,
                        _ => CpuError::Unsupported {
                            rip: self.st.rip,
                            what: format!("MMIO access while delivering vector {}", cur.vector),
                        },
                    });
                }
            }
        }
    }

    /// Delivers an external interrupt through the IDT now. It does not count as an
    /// instruction. Clears `halted`.
    pub fn inject_interrupt(&mut self, mem: &mut GuestMemory, vector: u8) -> Result<(), CpuError> {
        self.sync_caches(mem);
        self.skip_breakpoint_at = None;
        let r = match self.deliver(mem, vector, None, true, false) {
            Ok(()) => Ok(()),
            // A fault while delivering an interrupt: a double fault, as above.
            Err(Fault::Exc(_)) => self.deliver_exception(
                mem,
                Exception {
                    vector: vector::DF,
                    error_code: Some(0),
                    cr2: 0,
                },
            ),
            Err(Fault::Exit(x)) => Err(match *x {
                Exit::Error(e) => e,
                _ => CpuError::Unsupported {
                    rip: self.st.rip,
                    what: "MMIO access while delivering an interrupt".into(),
                },
            }),
        };
        self.st.halted = false;
        r
    }

    /// One IDT delivery in 64-bit mode. Changes nothing unless it succeeds. `fault`: the
    /// event is a fault-class exception, whose pushed RFLAGS image has RF set.
    /// The code segment's descriptor is not marked accessed (the recording host does not
    /// mark it).
    fn deliver(
        &mut self,
        mem: &mut GuestMemory,
        vec: u8,
        error_code: Option<u32>,
        ext: bool,
        fault: bool,
    ) -> R<()> {
        let ext_bit = ext as u32;
        let idt_err = Some(vec as u32 * 8 + 2 + ext_bit);
        let off = vec as u64 * 16;
        if off + 15 > self.st.idtr.limit as u64 {
            return Err(exc(vector::GP, idt_err));
        }
        let base = self.st.idtr.base.wrapping_add(off);
        let lo = self.read_lin(mem, base, 8, false)?;
        let hi = self.read_lin(mem, base.wrapping_add(8), 8, false)?;
        let gate_type = (lo >> 40) & 0xf;
        if gate_type != descriptor::INTERRUPT_GATE && gate_type != descriptor::TRAP_GATE {
            return Err(exc(vector::GP, idt_err));
        }
        if lo & descriptor::PRESENT == 0 {
            return Err(exc(vector::NP, idt_err));
        }
        let target = (lo & 0xffff) | ((lo >> 32) & 0xffff_0000) | ((hi & 0xffff_ffff) << 32);
        let ist = (lo >> 32) & 7;
        let sel = ((lo >> 16) & 0xffff) as u16;
        let sel_err = Some((sel as u32 & !3) + ext_bit);
        if sel & !3 == 0 {
            return Err(exc(vector::GP, Some(ext_bit)));
        }
        // The recording host pushes the frame before it reads the code segment's
        // descriptor through the page tables (that order shows in the accessed bits
        // when the push faults), so look at the descriptor without side effects first.
        let d = match self.peek_descriptor(mem, sel) {
            Some(d) => d,
            None => self.read_descriptor(mem, sel).map_err(|f| match f {
                Fault::Exc(e) if e.vector == vector::GP => exc(vector::GP, sel_err),
                f => f,
            })?,
        };
        let cs = segment_from_descriptor(sel, d);
        // A present 64-bit code segment, not more privileged-than-allowed.
        if cs.attr & CODE_SEGMENT != CODE_SEGMENT || !cs.long_mode() || cs.attr & seg_attr::DB != 0
        {
            return Err(exc(vector::GP, sel_err));
        }
        if cs.attr & seg_attr::P == 0 {
            return Err(exc(vector::NP, sel_err));
        }
        let old_cpl = self.st.cpl();
        let new_cpl = cs.dpl().min(old_cpl);
        if cs.dpl() > old_cpl {
            return Err(exc(vector::GP, sel_err));
        }
        let mut rsp = if ist != 0 {
            self.read_tss(mem, tss::IST1 + (ist - 1) * 8)?
        } else if new_cpl < old_cpl {
            self.read_tss(mem, tss::RSP0 + new_cpl as u64 * 8)?
        } else {
            self.st.gpr[RSP]
        };
        rsp &= !0xf;
        let old_ss = self.st.seg[seg::SS].selector as u64;
        let old_cs = self.st.seg[seg::CS].selector as u64;
        let frame = [
            old_ss,
            self.st.gpr[RSP],
            if fault {
                self.st.rflags | flags::RF
            } else {
                self.st.rflags
            },
            old_cs,
            self.st.rip,
            error_code.unwrap_or(0) as u64,
        ];
        let n = if error_code.is_some() { 6 } else { 5 };
        let new_rsp = rsp.wrapping_sub(8 * n as u64);
        // Check the whole frame before writing any of it.
        self.probe_write(mem, new_rsp, 8 * n).map_err(|f| match f {
            Fault::Exc(e) if e.vector == vector::GP => exc(vector::SS, Some(0)),
            f => f,
        })?;
        for (i, v) in frame[..n].iter().enumerate() {
            self.write_lin(mem, rsp.wrapping_sub(8 * (i as u64 + 1)), 8, *v, true)?;
        }
        self.read_descriptor(mem, sel)?;
        let mut cs = cs;
        cs.selector = (sel & !3) | new_cpl as u16;
        self.st.seg[seg::CS] = cs;
        if new_cpl != old_cpl {
            self.st.seg[seg::SS] = Segment {
                selector: new_cpl as u16,
                base: 0,
                limit: 0,
                attr: 0,
            };
        }
        self.st.gpr[RSP] = new_rsp;
        self.st.rip = target;
        self.st.rflags &= !(flags::TF | flags::NT | flags::RF | flags::VM);
        if gate_type == descriptor::INTERRUPT_GATE {
            self.st.rflags &= !flags::IF;
        }
        self.st.interrupt_shadow = false;
        self.st.halted = false;
        Ok(())
    }

    fn read_tss(&mut self, mem: &mut GuestMemory, off: u64) -> R<u64> {
        let tr = self.st.tr;
        if tr.attr & seg_attr::P == 0 || off + 7 > tr.limit as u64 {
            return Err(exc(vector::TS, Some(tr.selector as u32 & !3)));
        }
        self.read_lin(mem, tr.base.wrapping_add(off), 8, false)
    }

    /// The descriptor `sel` selects, read without side effects (`None` if that needs a
    /// fault or an accessed-bit update).
    fn peek_descriptor(&self, mem: &GuestMemory, sel: u16) -> Option<u64> {
        let (base, limit) = if sel & 4 != 0 {
            (self.st.ldtr.base, self.st.ldtr.limit as u64)
        } else {
            (self.st.gdtr.base, self.st.gdtr.limit as u64)
        };
        let off = (sel & !7) as u64;
        if off + 7 > limit {
            return None;
        }
        let mut b = [0u8; 8];
        self.read_virtual(mem, base.wrapping_add(off), &mut b)
            .ok()?;
        Some(u64::from_le_bytes(b))
    }

    /// Reads the 8-byte descriptor `sel` selects (GDT or LDT). #GP(sel) beyond the limit.
    pub(crate) fn read_descriptor(&mut self, mem: &mut GuestMemory, sel: u16) -> R<u64> {
        let (base, limit) = if sel & 4 != 0 {
            if self.st.ldtr.attr & seg_attr::P == 0 {
                return Err(exc(vector::GP, Some(sel as u32 & !3)));
            }
            (self.st.ldtr.base, self.st.ldtr.limit as u64)
        } else {
            (self.st.gdtr.base, self.st.gdtr.limit as u64)
        };
        let off = (sel & !7) as u64;
        if off + 7 > limit {
            return Err(exc(vector::GP, Some(sel as u32 & !3)));
        }
        self.read_lin(mem, base.wrapping_add(off), 8, false)
    }

    /// Sets the accessed bit of a code/data descriptor in its table.
    fn mark_descriptor_accessed(&mut self, mem: &mut GuestMemory, sel: u16, d: u64) -> R<()> {
        if d & descriptor::ACCESSED != 0 {
            return Ok(());
        }
        let base = if sel & 4 != 0 {
            self.st.ldtr.base
        } else {
            self.st.gdtr.base
        };
        self.write_lin(
            mem,
            base.wrapping_add((sel & !7) as u64),
            8,
            d | descriptor::ACCESSED,
            false,
        )
    }

    /// `mov sreg` / `pop sreg` for DS, ES, FS, GS and SS in 64-bit mode at CPL0.
    pub(crate) fn load_data_segment(
        &mut self,
        mem: &mut GuestMemory,
        idx: usize,
        sel: u16,
        mark_accessed: bool,
    ) -> R<()> {
        let err = Some(sel as u32 & !3);
        if sel & !3 == 0 {
            if idx == seg::SS && sel & 3 != 0 {
                return Err(exc(vector::GP, Some(0)));
            }
            self.st.seg[idx] = Segment {
                selector: sel,
                base: 0,
                limit: 0,
                attr: 0,
            };
            return Ok(());
        }
        let d = self.read_descriptor(mem, sel)?;
        let mut s = segment_from_descriptor(sel, d);
        let code = s.attr & seg_attr::CODE != 0;
        if s.attr & seg_attr::S == 0 {
            return Err(exc(vector::GP, err));
        }
        if idx == seg::SS {
            // A writable data segment with DPL = RPL = CPL.
            if code || s.attr & seg_attr::WRITABLE == 0 || s.dpl() != 0 || sel & 3 != 0 {
                return Err(exc(vector::GP, err));
            }
            if s.attr & seg_attr::P == 0 {
                return Err(exc(vector::SS, err));
            }
        } else {
            if code && s.attr & seg_attr::READABLE == 0 {
                return Err(exc(vector::GP, err));
            }
            if s.attr & seg_attr::P == 0 {
                return Err(exc(vector::NP, err));
            }
        }
        if mark_accessed {
            self.mark_descriptor_accessed(mem, sel, d)?;
            s.attr |= seg_attr::ACCESSED;
        }
        self.st.seg[idx] = s;
        if idx == seg::SS {
            self.st.interrupt_shadow = true;
        }
        Ok(())
    }

    /// Loads CS for a far transfer at CPL0 (far `jmp`, `lret`). Only 64-bit code
    /// segments keep the CPU executing; anything else is reported at the next step.
    pub(crate) fn load_code_segment(
        &mut self,
        mem: &mut GuestMemory,
        sel: u16,
        mark_accessed: bool,
    ) -> R<Segment> {
        let err = Some(sel as u32 & !3);
        if sel & !3 == 0 {
            return Err(gp0());
        }
        let d = self.read_descriptor(mem, sel)?;
        let s = segment_from_descriptor(sel, d);
        if s.attr & CODE_SEGMENT != CODE_SEGMENT {
            return Err(exc(vector::GP, err));
        }
        if s.attr & seg_attr::P == 0 {
            return Err(exc(vector::NP, err));
        }
        if s.dpl() != (sel & 3) as u8 && s.attr & seg_attr::CONFORMING == 0 {
            return Err(exc(vector::GP, err));
        }
        if mark_accessed {
            self.mark_descriptor_accessed(mem, sel, d)?;
        }
        Ok(s)
    }

    /// `iretq` (and its 16/32-bit operand-size forms).
    pub(crate) fn iret(&mut self, mem: &mut GuestMemory, size: usize) -> R<Retired> {
        let rsp = self.st.gpr[RSP];
        let mut v = [0u64; 5];
        for (i, x) in v.iter_mut().enumerate() {
            *x = self.read_lin(mem, rsp.wrapping_add((i * size) as u64), size, true)?;
        }
        let [rip, cs_sel, rflags, new_rsp, ss_sel] = v;
        let (cs_sel, ss_sel) = (cs_sel as u16, ss_sel as u16);
        let rpl = cs_sel & 3;
        let old = self.st.rflags;
        let mut mask = flags::WRITABLE & !flags::VM;
        if size == 2 {
            mask &= 0xffff;
        } else if size == 4 {
            mask &= 0xffff_ffff;
        }
        let new_flags = (old & !mask) | (rflags & mask) | flags::FIXED1;
        if rpl == 0 {
            let cs = self.load_code_segment(mem, cs_sel, false)?;
            if !cs.long_mode() && size == 8 {
                // Compatibility-mode kernel code is not replayed.
                return Err(self.unsupported("iret to a non-64-bit kernel code segment"));
            }
            if ss_sel & !3 != 0 {
                self.load_data_segment(mem, seg::SS, ss_sel, false)?;
            } else {
                self.st.seg[seg::SS] = Segment {
                    selector: ss_sel,
                    base: 0,
                    limit: 0,
                    attr: 0,
                };
            }
            self.st.seg[seg::CS] = cs;
            self.st.rflags = new_flags;
            self.st.gpr[RSP] = new_rsp;
            self.next_rip = rip;
            // An interrupt shadow set by loading SS does not apply to iret.
            self.st.interrupt_shadow = false;
            return Ok(Retired::Continue);
        }
        if rpl != 3 {
            return Err(self.unsupported(format!("iret to CPL{rpl}")));
        }
        let cs = self.load_code_segment(mem, cs_sel, false)?;
        let ss = if ss_sel & !3 != 0 {
            let d = self.read_descriptor(mem, ss_sel)?;
            let mut s = segment_from_descriptor(ss_sel, d);
            s.attr |= seg_attr::ACCESSED;
            s
        } else {
            return Err(exc(vector::GP, Some(0)));
        };
        self.st.seg[seg::CS] = cs;
        self.st.seg[seg::SS] = ss;
        self.st.rflags = new_flags;
        self.st.gpr[RSP] = new_rsp;
        self.next_rip = rip;
        Ok(Retired::ReturnToUser)
    }

    /// `sysret`: to 64-bit user mode with REX.W, to compatibility mode without.
    pub(crate) fn sysret(&mut self, wide: bool) -> R<Retired> {
        if self.st.efer & efer::SCE == 0 {
            return Err(super::ud());
        }
        let rcx = self.st.gpr[RCX];
        if wide && !super::mmu::canonical(rcx) {
            return Err(gp0());
        }
        let star = self.msr_value(msr::IA32_STAR);
        let base = ((star >> 48) & 0xffff) as u16;
        let (cs_sel, cs_attr, rip) = if wide {
            (base.wrapping_add(16) | 3, USER_CODE64_ATTR, rcx)
        } else {
            (base | 3, USER_CODE32_ATTR, rcx & 0xffff_ffff)
        };
        self.st.seg[seg::CS] = Segment {
            selector: cs_sel,
            base: 0,
            limit: 0xffff_ffff,
            attr: cs_attr,
        };
        self.st.seg[seg::SS] = Segment {
            selector: base.wrapping_add(8) | 3,
            base: 0,
            limit: 0xffff_ffff,
            attr: USER_DATA_ATTR,
        };
        self.st.rflags = (self.st.gpr[R11] & SYSRET_RFLAGS) | flags::FIXED1;
        self.next_rip = rip;
        Ok(Retired::ReturnToUser)
    }

    /// The architectural effect of `syscall` from `rip_after` with `rflags`.
    fn do_syscall(&mut self, rip_after: u64, rflags: u64) {
        let star = self.msr_value(msr::IA32_STAR);
        let sel = ((star >> 32) & 0xfffc) as u16;
        self.st.gpr[RCX] = rip_after;
        self.st.gpr[R11] = rflags;
        self.st.seg[seg::CS] = Segment {
            selector: sel,
            base: 0,
            limit: 0xffff_ffff,
            attr: KERNEL_CODE64_ATTR,
        };
        self.st.seg[seg::SS] = Segment {
            selector: sel.wrapping_add(8),
            base: 0,
            limit: 0xffff_ffff,
            attr: KERNEL_DATA_ATTR,
        };
        let fmask = self.msr_value(msr::IA32_FMASK);
        self.st.rflags = (rflags & !fmask & !flags::RF) | flags::FIXED1;
        self.next_rip = self.msr_value(msr::IA32_LSTAR);
    }

    /// `syscall` executed by kernel code.
    pub(crate) fn syscall(&mut self) -> R<()> {
        if self.st.efer & efer::SCE == 0 {
            return Err(super::ud());
        }
        self.do_syscall(self.next_rip, self.st.rflags);
        Ok(())
    }

    /// Performs a recorded entry from user mode (see the module documentation).
    pub fn enter_from_user(
        &mut self,
        mem: &mut GuestMemory,
        entry: &UserEntry,
    ) -> Result<(), CpuError> {
        self.sync_caches(mem);
        self.skip_breakpoint_at = None;
        self.pending = None;
        self.mmio_input = None;
        self.string_input = None;
        let r = &entry.regs;
        self.st.gpr = r.gpr;
        self.st.rip = r.rip;
        self.st.rflags = r.rflags | flags::FIXED1;
        self.st.seg[seg::CS] = Segment {
            selector: r.cs,
            base: 0,
            limit: 0xffff_ffff,
            attr: USER_CODE64_ATTR,
        };
        self.st.seg[seg::SS] = Segment {
            selector: r.ss,
            base: 0,
            limit: 0xffff_ffff,
            attr: USER_DATA_ATTR,
        };
        self.st.seg[seg::FS].base = r.fs_base;
        self.st.seg[seg::GS].base = r.gs_base;
        self.st.halted = false;
        self.st.interrupt_shadow = false;
        match entry.kind {
            EntryKind::Syscall => {
                if self.st.efer & efer::SCE == 0 {
                    return Err(CpuError::BadEntry("syscall with EFER.SCE clear".into()));
                }
                self.do_syscall(r.rip, self.st.rflags);
                self.st.rip = self.next_rip;
                Ok(())
            }
            EntryKind::Interrupt { vector } => self.entry_delivery(mem, vector, None, true),
            EntryKind::Exception {
                vector,
                error_code,
                cr2,
            } => {
                if vector == super::vector::PF {
                    self.st.cr2 = cr2;
                }
                self.entry_delivery(mem, vector, error_code, false)
            }
        }
    }

    fn entry_delivery(
        &mut self,
        mem: &mut GuestMemory,
        v: u8,
        code: Option<u32>,
        ext: bool,
    ) -> Result<(), CpuError> {
        match self.deliver(mem, v, code, ext, !ext) {
            Ok(()) => Ok(()),
            Err(Fault::Exc(e)) => Err(CpuError::BadEntry(format!(
                "delivering vector {v} from user mode raised exception {} (error code {:?})",
                e.vector, e.error_code
            ))),
            Err(Fault::Exit(x)) => Err(match *x {
                Exit::Error(e) => e,
                x => CpuError::BadEntry(format!("delivery of vector {v} needs {x:?}")),
            }),
        }
    }

    // ---- MSRs ----

    pub(crate) fn msr_value(&self, index: u32) -> u64 {
        self.st.msr(index).unwrap_or(0)
    }

    fn named_msr(index: u32) -> bool {
        matches!(
            index,
            msr::IA32_APIC_BASE
                | msr::IA32_SYSENTER_CS
                | msr::IA32_SYSENTER_ESP
                | msr::IA32_SYSENTER_EIP
                | msr::IA32_PAT
                | msr::IA32_STAR
                | msr::IA32_LSTAR
                | msr::IA32_CSTAR
                | msr::IA32_FMASK
                | msr::IA32_KERNEL_GS_BASE
                | msr::IA32_TSC_AUX
        )
    }

    /// `rdmsr`. `Ok(None)` means the value comes from the driver (IA32_TSC).
    pub(crate) fn rdmsr(&mut self, index: u32) -> R<Option<u64>> {
        Ok(Some(match index {
            msr::IA32_TSC => return Ok(None),
            msr::IA32_EFER => self.st.efer,
            msr::IA32_FS_BASE => self.st.seg[seg::FS].base,
            msr::IA32_GS_BASE => self.st.seg[seg::GS].base,
            // The power-on default when the snapshot did not include PAT.
            msr::IA32_PAT => self.st.msr(msr::IA32_PAT).unwrap_or(0x0007_0406_0007_0406),
            i if Self::named_msr(i) => self.msr_value(i),
            i => match self.st.msr(i) {
                Some(v) => v,
                None => return self.rdmsr_measured(i).map(Some),
            },
        }))
    }

    /// What the recording host does with an MSR the CPU does not model: #GP without a
    /// table, an error for an MSR the table does not cover.
    fn measured_msr(&self, index: u32, what: &str) -> R<MsrBehaviour> {
        let Some(table) = &self.msr_table else {
            return Err(gp0());
        };
        table.get(index).ok_or_else(|| {
            let name = super::measured_msr_name(index)
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            self.unsupported(format!(
                "{what} of MSR {index:#x}{name}, which the recording host's MSR table does not \
                 cover"
            ))
        })
    }

    /// `rdmsr` of an MSR the CPU does not model: the recording host's answer.
    fn rdmsr_measured(&self, index: u32) -> R<u64> {
        match self.measured_msr(index, "rdmsr")?.read {
            MsrRead::Value(v) => Ok(v),
            MsrRead::Faults => Err(gp0()),
        }
    }

    pub(crate) fn wrmsr(&mut self, index: u32, v: u64) -> R<()> {
        let need_canonical = matches!(
            index,
            msr::IA32_FS_BASE
                | msr::IA32_GS_BASE
                | msr::IA32_KERNEL_GS_BASE
                | msr::IA32_LSTAR
                | msr::IA32_CSTAR
                | msr::IA32_SYSENTER_ESP
                | msr::IA32_SYSENTER_EIP
        );
        if need_canonical && !super::mmu::canonical(v) {
            return Err(gp0());
        }
        match index {
            msr::IA32_TSC => return Err(self.unsupported("wrmsr to IA32_TSC")),
            msr::IA32_EFER => {
                // SCE, LME, NXE are writable; LMA is read-only; the rest is reserved.
                let writable = efer::SCE | efer::LME | efer::NXE;
                if v & !(writable | efer::LMA) != 0 {
                    return Err(gp0());
                }
                if (v ^ self.st.efer) & efer::LME != 0 && self.st.cr0 & cr0::PG != 0 {
                    return Err(gp0());
                }
                self.st.efer = (self.st.efer & efer::LMA) | (v & writable);
                self.tlb_flush(true);
            }
            msr::IA32_FS_BASE => self.st.seg[seg::FS].base = v,
            msr::IA32_GS_BASE => self.st.seg[seg::GS].base = v,
            msr::IA32_PAT => {
                if (0..8).any(|i| !matches!((v >> (8 * i)) & 0xff, 0 | 1 | 4 | 5 | 6 | 7)) {
                    return Err(gp0());
                }
                self.st.set_msr(index, v);
            }
            msr::IA32_TSC_AUX => {
                if v >> 32 != 0 {
                    return Err(gp0());
                }
                self.st.set_msr(index, v);
            }
            i if Self::named_msr(i) || self.st.msr(i).is_some() => self.st.set_msr(i, v),
            i => match self.measured_msr(i, "wrmsr")?.write {
                MsrWrite::Faults => return Err(gp0()),
                MsrWrite::Ignored => {}
                MsrWrite::Kept => self.st.set_msr(i, v),
                MsrWrite::NotMeasured => {
                    return Err(self.unsupported(format!(
                        "wrmsr of MSR {i:#x}, whose write the recording host's MSR table \
                         did not measure"
                    )));
                }
            },
        }
        Ok(())
    }

    pub(crate) fn swapgs(&mut self) {
        let k = self.msr_value(msr::IA32_KERNEL_GS_BASE);
        let g = self.st.seg[seg::GS].base;
        self.st.set_msr(msr::IA32_KERNEL_GS_BASE, g);
        self.st.seg[seg::GS].base = k;
    }

    // ---- CPUID ----

    /// CPUID from the recorded table: an entry with the significant-index flag matches
    /// (leaf, subleaf), others match the leaf; a leaf missing from the table returns
    /// zeros (what the recording host answers for leaves beyond its maximum, measured in
    /// engine/tests/cpu_vs_kvm.rs). OSXSAVE and OSPKE reflect CR4.
    ///
    /// The table must hold what the guest observed: on the recording hosts the CPUID a
    /// guest sees differs from the KVM_GET_SUPPORTED_CPUID table it was given.
    pub fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let find = |f: u32, i: u32| {
            self.cpuid
                .iter()
                .find(|e| e.function == f && (e.flags & 1 == 0 || e.index == i))
        };
        let (l, s) = (leaf, subleaf);
        let mut out = match find(l, s) {
            Some(e) => [e.eax, e.ebx, e.ecx, e.edx],
            None => [0; 4],
        };
        let mirror = |reg: u32, bit: u32, on: bool| (reg & !bit) | if on { bit } else { 0 };
        if l == 1 {
            let on = self.st.cr4 & cr4::OSXSAVE != 0;
            out[2] = mirror(out[2], cpuid_bits::LEAF1_ECX_OSXSAVE, on);
        }
        if l == 7 && s == 0 {
            let on = self.st.cr4 & cr4::PKE != 0;
            out[2] = mirror(out[2], cpuid_bits::LEAF7_ECX_OSPKE, on);
        }
        out
    }
}
