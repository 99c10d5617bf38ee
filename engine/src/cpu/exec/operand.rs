//! Operands of the general path: iced registers mapped onto the GPR file (with the
//! merging rules of 8-, 16- and 32-bit writes), effective and linear addresses of
//! memory operands, and reading and writing an instruction's operand `n`.

use iced_x86::{Instruction, OpKind, Register};

use super::super::flags::{STATUS, mask};
use super::super::{Cpu, R};
use crate::memory::GuestMemory;
use crate::state::gpr::RAX;
use crate::state::seg;

// iced numbers registers in runs: AL..=R15L (AH, CH, DH, BH at 4..8), AX..=R15W,
// EAX..=R15D, RAX..=R15, ES..=GS, then control and debug registers.
pub(super) const REG_AL: u32 = Register::AL as u32;
pub(super) const REG_AH: u32 = Register::AH as u32;
pub(super) const REG_SPL: u32 = Register::SPL as u32;
pub(super) const REG_R15L: u32 = Register::R15L as u32;
pub(super) const REG_AX: u32 = Register::AX as u32;
pub(super) const REG_EAX: u32 = Register::EAX as u32;
pub(super) const REG_RAX: u32 = Register::RAX as u32;
pub(super) const REG_R15: u32 = Register::R15 as u32;
const REG_ES: u32 = Register::ES as u32;
const REG_GS: u32 = Register::GS as u32;
const REG_CR0: u32 = Register::CR0 as u32;
const REG_DR0: u32 = Register::DR0 as u32;

/// The size in bytes of a register operand.
#[inline]
pub(super) fn reg_size(r: Register) -> usize {
    match r as u32 {
        REG_AL..=REG_R15L => 1,
        REG_AX..REG_EAX => 2,
        REG_EAX..REG_RAX => 4,
        REG_RAX..=REG_R15 => 8,
        REG_ES..=REG_GS => 2,
        _ => 8,
    }
}

/// The size in bytes of operand `n`.
#[inline]
pub(super) fn op_size(ins: &Instruction, n: u32) -> usize {
    match ins.op_kind(n) {
        OpKind::Register => reg_size(ins.op_register(n)),
        _ => ins.memory_size().size(),
    }
}

/// Where a GPR operand lives: the index of its 64-bit register, and whether it is one
/// of AH, CH, DH, BH (bits 8..16).
#[inline]
fn gpr_slot(v: u32) -> (usize, bool) {
    match v {
        REG_AH..REG_SPL => ((v - REG_AH) as usize, true),
        REG_AL..=REG_R15L if v < REG_AH => ((v - REG_AL) as usize, false),
        REG_AL..=REG_R15L => ((v - REG_AL - 4) as usize, false),
        REG_AX..REG_EAX => ((v - REG_AX) as usize, false),
        REG_EAX..REG_RAX => ((v - REG_EAX) as usize, false),
        _ => ((v - REG_RAX) as usize, false),
    }
}

/// The index of the 64-bit register of a GPR operand (AH and the like: their 64-bit
/// register), for fixed-register instructions.
#[inline]
pub(super) fn gpr_index(r: Register) -> usize {
    match r as u32 {
        v @ REG_AL..=REG_R15 => gpr_slot(v).0,
        _ => RAX,
    }
}

/// Whether `r` is a segment register.
#[inline]
pub(super) fn is_segment(r: Register) -> bool {
    (REG_ES..=REG_GS).contains(&(r as u32))
}

/// The index in [`crate::state::CpuState::seg`] of a segment register.
pub(super) fn seg_index(r: Register) -> usize {
    (r as u32 - REG_ES) as usize
}

/// The number of a control register (CR0..CR15).
#[inline]
pub(super) fn control_register(r: Register) -> Option<u32> {
    (REG_CR0..REG_CR0 + 16)
        .contains(&(r as u32))
        .then(|| r as u32 - REG_CR0)
}

/// The number of a debug register (DR0..DR15).
#[inline]
pub(super) fn debug_register(r: Register) -> Option<u32> {
    (REG_DR0..REG_DR0 + 16)
        .contains(&(r as u32))
        .then(|| r as u32 - REG_DR0)
}

/// A 32-bit address register (the address is truncated to 32 bits).
#[inline]
fn is_gpr32(r: Register) -> bool {
    (REG_EAX..REG_RAX).contains(&(r as u32))
}

impl Cpu {
    #[inline]
    pub(super) fn reg_get(&self, r: Register) -> u64 {
        let v = r as u32;
        let g = &self.st.gpr;
        match v {
            REG_AL..=REG_R15 => {
                let (i, high) = gpr_slot(v);
                match v {
                    _ if high => (g[i] >> 8) & 0xff,
                    REG_AL..=REG_R15L => g[i] & 0xff,
                    REG_AX..REG_EAX => g[i] & 0xffff,
                    REG_EAX..REG_RAX => g[i] & 0xffff_ffff,
                    _ => g[i],
                }
            }
            REG_ES..=REG_GS => self.st.seg[(v - REG_ES) as usize].selector as u64,
            _ => 0,
        }
    }

    /// Writes a GPR operand: 8- and 16-bit writes keep the other bits, 32-bit writes
    /// zero the upper half. Other registers are not written.
    #[inline]
    pub(super) fn reg_set(&mut self, r: Register, x: u64) {
        let v = r as u32;
        if !(REG_AL..=REG_R15).contains(&v) {
            return;
        }
        let (i, high) = gpr_slot(v);
        let g = &mut self.st.gpr[i];
        *g = match v {
            _ if high => (*g & !0xff00) | ((x & 0xff) << 8),
            REG_AL..=REG_R15L => (*g & !0xff) | (x & 0xff),
            REG_AX..REG_EAX => (*g & !0xffff) | (x & 0xffff),
            REG_EAX..REG_RAX => x & 0xffff_ffff,
            _ => x,
        };
    }

    /// Sets the accumulator of `size` bytes (AL, AX, EAX, RAX) with the usual merging.
    pub(super) fn set_acc(&mut self, size: usize, x: u64) {
        self.set_gpr_sized(RAX, size, x);
    }

    /// Sets register `i` as a `size`-byte register (no high-byte registers).
    pub(super) fn set_gpr_sized(&mut self, i: usize, size: usize, x: u64) {
        let g = &mut self.st.gpr[i];
        *g = match size {
            1 => (*g & !0xff) | (x & 0xff),
            2 => (*g & !0xffff) | (x & 0xffff),
            4 => x & 0xffff_ffff,
            _ => x,
        };
    }

    /// Effective address of the memory operand (no segment base).
    #[inline]
    pub(super) fn ea(&self, ins: &Instruction) -> u64 {
        let base = ins.memory_base();
        let mut a = ins.memory_displacement64();
        let mut narrow = false;
        match base {
            Register::None => {}
            Register::RIP => a = a.wrapping_add(self.st.rip),
            Register::EIP => {
                a = a.wrapping_add(self.st.rip);
                narrow = true;
            }
            b => {
                narrow = is_gpr32(b);
                a = a.wrapping_add(self.reg_get(b));
            }
        }
        let idx = ins.memory_index();
        if idx != Register::None {
            narrow |= is_gpr32(idx);
            a = a.wrapping_add(
                self.reg_get(idx)
                    .wrapping_mul(ins.memory_index_scale() as u64),
            );
        }
        if narrow { a & 0xffff_ffff } else { a }
    }

    /// The base of segment register `r` in 64-bit mode (FS and GS only).
    #[inline]
    pub(super) fn seg_base(&self, r: Register) -> u64 {
        match r {
            Register::FS => self.st.seg[seg::FS].base,
            Register::GS => self.st.seg[seg::GS].base,
            _ => 0,
        }
    }

    /// Linear address of the memory operand.
    #[inline]
    pub(super) fn mem_la(&self, ins: &Instruction) -> u64 {
        self.ea(ins)
            .wrapping_add(self.seg_base(ins.memory_segment()))
    }

    /// Whether the memory operand is a stack access (#SS rather than #GP).
    #[inline]
    pub(super) fn mem_ss(ins: &Instruction) -> bool {
        ins.memory_segment() == Register::SS
    }

    /// Reads operand `n` (`size` bytes; an immediate masked to them).
    #[inline]
    pub(super) fn rd(
        &mut self,
        mem: &mut GuestMemory,
        ins: &Instruction,
        n: u32,
        size: usize,
    ) -> R<u64> {
        match ins.op_kind(n) {
            OpKind::Register => Ok(self.reg_get(ins.op_register(n))),
            OpKind::Memory => {
                let la = self.mem_la(ins);
                self.read_lin(mem, la, size, Self::mem_ss(ins))
            }
            _ => Ok(ins.immediate(n) & mask(size)),
        }
    }

    /// Writes operand `n` (`size` bytes).
    #[inline]
    pub(super) fn wr(
        &mut self,
        mem: &mut GuestMemory,
        ins: &Instruction,
        n: u32,
        size: usize,
        v: u64,
    ) -> R<()> {
        match ins.op_kind(n) {
            OpKind::Register => {
                self.reg_set(ins.op_register(n), v);
                Ok(())
            }
            OpKind::Memory => {
                let la = self.mem_la(ins);
                self.write_lin(mem, la, size, v, Self::mem_ss(ins))
            }
            _ => Ok(()),
        }
    }

    /// Writes the status flags from `f` (other bits of `f` are ignored).
    #[inline(always)]
    pub(crate) fn set_status(&mut self, f: u64) {
        self.st.rflags = (self.st.rflags & !STATUS) | (f & STATUS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The register mapping against iced's own description of each register.
    #[test]
    fn gpr_operands_map_to_their_full_register() {
        let mut cpu = Cpu::new(Default::default(), Vec::new());
        for v in REG_AL..=REG_R15 {
            let r: Register = iced_x86::Register::values().nth(v as usize).unwrap();
            let full = r.full_register();
            let i = (full as u32 - REG_RAX) as usize;
            assert_eq!(gpr_index(r), i, "{r:?}");
            cpu.st.gpr = [0; 16];
            cpu.st.gpr[i] = 0x1122_3344_5566_7788;
            let high = matches!(r, Register::AH | Register::CH | Register::DH | Register::BH);
            let expect = if high {
                0x77
            } else {
                0x1122_3344_5566_7788 & mask(r.size())
            };
            assert_eq!(cpu.reg_get(r), expect, "{r:?}");
            cpu.reg_set(r, u64::MAX);
            let written = match r.size() {
                1 if high => 0x1122_3344_5566_ff88,
                1 => 0x1122_3344_5566_77ff,
                2 => 0x1122_3344_5566_ffff,
                4 => 0xffff_ffff,
                _ => u64::MAX,
            };
            assert_eq!(cpu.st.gpr[i], written, "{r:?}");
        }
    }
}
