//! Shifts and rotates: `shl`/`sal`, `shr`, `sar`, `rol`, `ror`, `rcl`, `rcr` (by 1, CL or
//! an immediate) and `shld`/`shrd`. The results and flags are [`flags::shift`] and
//! [`flags::double_shift`], which the fast forms use too.

use iced_x86::{Instruction, OpKind};

use super::super::flags::{self, ShiftOp};
use super::super::{Cpu, R};
use super::operand::op_size;
use crate::memory::GuestMemory;

impl Cpu {
    /// The count of a shift in operand `n`, masked as the CPU masks it.
    fn shift_count(
        &mut self,
        mem: &mut GuestMemory,
        ins: &Instruction,
        n: u32,
        size: usize,
    ) -> R<u32> {
        let c = self.rd(mem, ins, n, 1)? as u32;
        Ok(c & if size == 8 { 63 } else { 31 })
    }

    pub(super) fn shift(&mut self, mem: &mut GuestMemory, ins: &Instruction, op: ShiftOp) -> R<()> {
        let size = op_size(ins, 0);
        let count = self.shift_count(mem, ins, 1, size)?;
        let a = self.rd(mem, ins, 0, size)?;
        let (r, f) = flags::shift(op, a, count, size, self.st.rflags, &self.undefined);
        if count != 0 || ins.op_kind(0) == OpKind::Register {
            // A 32-bit register destination is written (zero-extended) even for a zero
            // count.
            self.wr(mem, ins, 0, size, r)?;
        }
        self.st.rflags = f;
        Ok(())
    }

    /// `shld` (`left`) and `shrd`.
    pub(super) fn double_shift(
        &mut self,
        mem: &mut GuestMemory,
        ins: &Instruction,
        left: bool,
    ) -> R<()> {
        let size = op_size(ins, 0);
        let count = self.shift_count(mem, ins, 2, size)?;
        let d = self.rd(mem, ins, 0, size)?;
        let s = self.rd(mem, ins, 1, size)?;
        let rflags = self.st.rflags;
        let (r, f) = flags::double_shift(left, d, s, count, size, rflags, &self.undefined);
        if count != 0 || ins.op_kind(0) == OpKind::Register {
            self.wr(mem, ins, 0, size, r)?;
        }
        self.st.rflags = f;
        Ok(())
    }
}
