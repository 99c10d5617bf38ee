//! The stack: `push` and `pop` (registers, memory, immediates, segment registers),
//! `pushf`/`popf`, `enter`/`leave`, and the push and pop primitives that calls and
//! returns (`control.rs`) and the fast forms use.

use iced_x86::{Code, Instruction, OpKind};

use super::super::flags::{self, mask};
use super::super::{Cpu, R};
use super::operand::{is_segment, seg_index};
use crate::memory::GuestMemory;
use crate::state::gpr::{RBP, RSP};

impl Cpu {
    /// Pushes the low `size` bytes of `v`.
    #[inline(always)]
    pub(crate) fn push(&mut self, mem: &mut GuestMemory, v: u64, size: usize) -> R<()> {
        let rsp = self.st.gpr[RSP].wrapping_sub(size as u64);
        self.write_lin(mem, rsp, size, v, true)?;
        self.st.gpr[RSP] = rsp;
        Ok(())
    }

    /// Reads `size` bytes at `off` above the top of the stack without popping them.
    #[inline(always)]
    pub(crate) fn peek(&mut self, mem: &mut GuestMemory, off: u64, size: usize) -> R<u64> {
        let rsp = self.st.gpr[RSP].wrapping_add(off);
        self.read_lin(mem, rsp, size, true)
    }

    /// Pops `size` bytes: reads the top of the stack, then moves RSP past it.
    #[inline(always)]
    pub(crate) fn pop(&mut self, mem: &mut GuestMemory, size: usize) -> R<u64> {
        let v = self.peek(mem, 0, size)?;
        self.st.gpr[RSP] = self.st.gpr[RSP].wrapping_add(size as u64);
        Ok(v)
    }

    pub(super) fn push_operand(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        let size = (-ins.stack_pointer_increment()) as usize;
        let v = if ins.op_kind(0) == OpKind::Register {
            self.reg_get(ins.op_register(0))
        } else {
            self.rd(mem, ins, 0, size)?
        };
        self.push(mem, v & mask(size), size)
    }

    pub(super) fn pop_operand(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        let size = ins.stack_pointer_increment() as usize;
        let old_rsp = self.st.gpr[RSP];
        let v = self.pop(mem, size)?;
        let r = if ins.op_kind(0) == OpKind::Register && is_segment(ins.op_register(0)) {
            self.load_data_segment(mem, seg_index(ins.op_register(0)), v as u16, true)
        } else {
            // The destination address uses the incremented RSP.
            self.wr(mem, ins, 0, size, v)
        };
        if r.is_err() {
            self.st.gpr[RSP] = old_rsp;
        }
        r
    }

    /// `pushf` (`size` 2) and `pushfq` (8).
    pub(super) fn pushf(&mut self, mem: &mut GuestMemory, size: usize) -> R<()> {
        let v = self.st.rflags & !(flags::VM | flags::RF);
        self.push(mem, v & mask(size), size)
    }

    /// `popf` (`size` 2) and `popfq` (8).
    pub(super) fn popf(&mut self, mem: &mut GuestMemory, size: usize) -> R<()> {
        let v = self.pop(mem, size)?;
        let writable = (flags::WRITABLE & !(flags::RF | flags::VIF | flags::VIP)) & mask(size);
        self.st.rflags =
            ((self.st.rflags & !writable) | (v & writable) | flags::FIXED1) & !flags::RF;
        Ok(())
    }

    pub(super) fn enter(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        let size = if ins.code() == Code::Enterq_imm16_imm8 {
            8
        } else {
            2
        };
        let alloc = ins.immediate16() as u64;
        let level = (ins.immediate8_2nd() & 31) as u64;
        let mut rsp = self.st.gpr[RSP];
        let rbp = self.st.gpr[RBP];
        rsp = rsp.wrapping_sub(size as u64);
        self.write_lin(mem, rsp, size, rbp, true)?;
        let frame = rsp;
        if level > 0 {
            let mut p = rbp;
            for _ in 1..level {
                p = p.wrapping_sub(size as u64);
                let v = self.read_lin(mem, p, size, true)?;
                rsp = rsp.wrapping_sub(size as u64);
                self.write_lin(mem, rsp, size, v, true)?;
            }
            rsp = rsp.wrapping_sub(size as u64);
            self.write_lin(mem, rsp, size, frame, true)?;
        }
        rsp = rsp.wrapping_sub(alloc);
        // The new stack top must be accessible.
        self.probe_write(mem, rsp, 1)
            .or_else(|f| if alloc == 0 { Ok(()) } else { Err(f) })?;
        self.set_gpr_sized(RBP, size, frame);
        self.st.gpr[RSP] = rsp;
        Ok(())
    }

    pub(super) fn leave(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        let size = match ins.code() {
            Code::Leavew => 2,
            Code::Leaved => 4,
            _ => 8,
        };
        let rbp = self.st.gpr[RBP];
        let v = self.read_lin(mem, rbp, size, true)?;
        self.st.gpr[RSP] = rbp.wrapping_add(size as u64);
        self.set_gpr_sized(RBP, size, v);
        Ok(())
    }
}
