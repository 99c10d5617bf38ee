//! The x87 and SSE state instructions kernel code executes: `fninit`, `fnclex`, `fwait`,
//! `fnstcw`, `fnstsw`, `ldmxcsr`, `stmxcsr`, `fxsave`/`fxsave64`, `fxrstor`/`fxrstor64`.
//! No floating-point arithmetic: the state itself and its image are in `cpu/fpu.rs`.
//!
//! The recording host's KVM emulates `fninit`, `fnstcw`/`fnstsw` to memory and the
//! `fxsave` family at ring 0 (engine/tests/cpu_vs_kvm_linux.rs compares them); its
//! emulator differs from hardware in two ways replay follows: `fxsave`/`fxrstor` do not
//! check the 16-byte alignment of their operand, and they write and read all 512 bytes
//! (see [`crate::cpu::FpuState::to_fxsave_image`]). It cannot execute `fnclex`, `fwait`,
//! `ldmxcsr`, `stmxcsr` or `fnstsw ax` at ring 0 (a recording made there never holds
//! them); they follow the architecture, checked against the host CPU at ring 3.

use iced_x86::Instruction;

use super::super::mmu::canonical;
use super::super::{Cpu, R, exc, gp0, ud, vector};
use crate::arch::fpu::{FSW_CLEARED_BY_FNCLEX, FXSAVE_SIZE, MXCSR_MASK};
use crate::arch::{cpuid as cpuid_bits, cr0, cr4};
use crate::cpu::FpuState;
use crate::memory::GuestMemory;

impl Cpu {
    /// #NM for an x87 instruction when CR0.EM or CR0.TS is set.
    fn x87_available(&self) -> R<()> {
        if self.st.cr0 & (cr0::EM | cr0::TS) != 0 {
            return Err(exc(vector::NM, None));
        }
        Ok(())
    }

    /// The checks of `ldmxcsr`/`stmxcsr`: #UD without SSE enabled, #NM with CR0.TS.
    fn sse_available(&self) -> R<()> {
        let sse = self.cpuid(1, 0)[3] & cpuid_bits::LEAF1_EDX_SSE != 0;
        if !sse || self.st.cr0 & cr0::EM != 0 || self.st.cr4 & cr4::OSFXSR == 0 {
            return Err(ud());
        }
        if self.st.cr0 & cr0::TS != 0 {
            return Err(exc(vector::NM, None));
        }
        Ok(())
    }

    /// The checks of the `fxsave` family: #UD without FXSR, #NM with CR0.EM or CR0.TS.
    fn fxsr_available(&self) -> R<()> {
        if self.cpuid(1, 0)[3] & cpuid_bits::LEAF1_EDX_FXSR == 0 {
            return Err(ud());
        }
        self.x87_available()
    }

    /// The linear address of the memory operand, with #SS for a non-canonical stack
    /// address (other non-canonical addresses fault as #GP when translated).
    fn block_address(&self, ins: &Instruction) -> R<u64> {
        let la = self.mem_la(ins);
        if Self::mem_ss(ins) && !canonical(la) {
            return Err(exc(vector::SS, Some(0)));
        }
        Ok(la)
    }

    pub(super) fn fninit(&mut self) -> R<()> {
        self.x87_available()?;
        self.st.fpu.init_x87();
        Ok(())
    }

    pub(super) fn fnclex(&mut self) -> R<()> {
        self.x87_available()?;
        self.st.fpu.fsw &= !FSW_CLEARED_BY_FNCLEX;
        Ok(())
    }

    /// `fwait`: #NM with CR0.MP and CR0.TS, #MF for a pending unmasked x87 exception.
    pub(super) fn fwait(&mut self) -> R<()> {
        if self.st.cr0 & (cr0::MP | cr0::TS) == cr0::MP | cr0::TS {
            return Err(exc(vector::NM, None));
        }
        if self.st.fpu.x87_error_pending() {
            if self.st.cr0 & cr0::NE == 0 {
                return Err(self.unsupported(
                    "fwait with a pending x87 exception and CR0.NE clear (external FERR#)",
                ));
            }
            return Err(exc(vector::MF, None));
        }
        Ok(())
    }

    /// `fnstcw` (`control`) and `fnstsw`, to memory or AX.
    pub(super) fn x87_store_word(
        &mut self,
        mem: &mut GuestMemory,
        ins: &Instruction,
        control: bool,
    ) -> R<()> {
        self.x87_available()?;
        let v = if control {
            self.st.fpu.fcw
        } else {
            self.st.fpu.fsw
        };
        self.wr(mem, ins, 0, 2, v as u64)
    }

    pub(super) fn ldmxcsr(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        self.sse_available()?;
        let v = self.rd(mem, ins, 0, 4)? as u32;
        if v & !MXCSR_MASK != 0 {
            return Err(gp0());
        }
        self.st.fpu.mxcsr = v;
        Ok(())
    }

    pub(super) fn stmxcsr(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        self.sse_available()?;
        self.wr(mem, ins, 0, 4, self.st.fpu.mxcsr as u64)
    }

    /// `fxsave` and `fxsave64` (the recording host writes the same image for both).
    pub(super) fn fxsave(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        self.fxsr_available()?;
        let la = self.block_address(ins)?;
        let image = self.st.fpu.to_fxsave_image();
        self.write_block(mem, la, &image)
    }

    /// `fxrstor` and `fxrstor64`: #GP for MXCSR bits outside MXCSR_MASK, before
    /// anything is loaded.
    pub(super) fn fxrstor(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        self.fxsr_available()?;
        let la = self.block_address(ins)?;
        let mut image = [0u8; FXSAVE_SIZE];
        self.read_block(mem, la, &mut image)?;
        if FpuState::image_mxcsr(&image) & !MXCSR_MASK != 0 {
            return Err(gp0());
        }
        self.st.fpu.load_fxsave_image(&image);
        Ok(())
    }
}
