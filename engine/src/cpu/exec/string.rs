//! String instructions: `movs`, `stos`, `lods`, `cmps`, `scas` with `rep`, `repe` and
//! `repne`, and the string port instructions `ins` and `outs` with `rep`, with 32- and
//! 64-bit addressing.

use iced_x86::{Code, Instruction, OpKind};

use super::super::flags::{DF, ZF, mask};
use super::super::{Cpu, Exit, Pending, R, Retired, exit};
use super::arith::{ArithOp, CmpOp};
use crate::icount::{REP_CHUNK, string_input_chunk};
use crate::memory::GuestMemory;
use crate::state::gpr::{RAX, RCX, RDI, RDX, RSI};

/// The string operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StringOp {
    Movs,
    Stos,
    Lods,
    Cmps,
    Scas,
}

/// How a string instruction walks memory.
#[derive(Clone, Copy)]
struct Walk {
    /// The operand size in bytes.
    size: usize,
    /// The address mask (32- or 64-bit addressing).
    amask: u64,
    /// What RSI and RDI move by (DF: down).
    step: u64,
    /// The source's segment base (RDI always addresses ES, base 0).
    src_base: u64,
}

impl Cpu {
    /// `movsd` and `cmpsd`: the string instructions, not their SSE namesakes.
    pub(super) fn string_dword(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        match ins.code() {
            Code::Movsd_m32_m32 => self.string(mem, ins, StringOp::Movs),
            Code::Cmpsd_m32_m32 => self.string(mem, ins, StringOp::Cmps),
            _ => Err(self.unimplemented(mem, ins)),
        }
    }

    /// A string instruction. With a repeat prefix, one call runs iterations until the
    /// REPE/REPNE condition ends it (RIP advances) or RCX reaches a multiple of
    /// [`REP_CHUNK`], zero included (it retires without advancing RIP); executed with
    /// RCX = 0 it completes at once (see [`crate::icount`]).
    pub(super) fn string(
        &mut self,
        mem: &mut GuestMemory,
        ins: &Instruction,
        op: StringOp,
    ) -> R<()> {
        let addr32 = matches!(ins.op_kind(0), OpKind::MemorySegESI | OpKind::MemoryESEDI)
            || matches!(ins.op_kind(1), OpKind::MemorySegESI | OpKind::MemoryESEDI);
        let size = ins.memory_size().size();
        let walk = Walk {
            size,
            amask: if addr32 { 0xffff_ffffu64 } else { u64::MAX },
            step: if self.st.rflags & DF != 0 {
                (size as u64).wrapping_neg()
            } else {
                size as u64
            },
            src_base: self.seg_base(ins.memory_segment()),
        };
        let amask = walk.amask;
        let rep = ins.has_rep_prefix() || ins.has_repe_prefix() || ins.has_repne_prefix();
        let compares = matches!(op, StringOp::Cmps | StringOp::Scas);
        loop {
            if rep && self.st.gpr[RCX] & amask == 0 {
                return Ok(());
            }
            self.string_iteration(mem, op, &walk)?;
            if !rep {
                return Ok(());
            }
            self.st.gpr[RCX] = self.st.gpr[RCX].wrapping_sub(1) & amask;
            if compares {
                let zf = self.st.rflags & ZF != 0;
                if ins.has_repne_prefix() == zf {
                    return Ok(());
                }
            }
            if self.mmio_write.is_some() {
                return Err(self.unsupported("rep string instruction writing MMIO"));
            }
            // RCX reaching zero also ends a chunk: the instruction then completes when it
            // is executed again and finds RCX = 0.
            if self.st.gpr[RCX].is_multiple_of(REP_CHUNK) {
                // Retire this chunk; the instruction continues at the same RIP.
                self.next_rip = self.st.rip;
                return Ok(());
            }
        }
    }

    /// One iteration of a string instruction: the access, and the index registers moved
    /// on.
    #[inline(always)]
    fn string_iteration(&mut self, mem: &mut GuestMemory, op: StringOp, walk: &Walk) -> R<()> {
        let Walk {
            size,
            amask,
            step,
            src_base,
        } = *walk;
        let rsi = self.st.gpr[RSI] & amask;
        let rdi = self.st.gpr[RDI] & amask;
        let (moves_rsi, moves_rdi) = match op {
            StringOp::Movs => {
                let v = self.read_lin(mem, src_base.wrapping_add(rsi), size, false)?;
                self.write_lin(mem, rdi, size, v, false)?;
                (true, true)
            }
            StringOp::Stos => {
                let v = self.st.gpr[RAX] & mask(size);
                self.write_lin(mem, rdi, size, v, false)?;
                (false, true)
            }
            StringOp::Lods => {
                let v = self.read_lin(mem, src_base.wrapping_add(rsi), size, false)?;
                self.set_acc(size, v);
                (true, false)
            }
            StringOp::Cmps => {
                let a = self.read_lin(mem, src_base.wrapping_add(rsi), size, false)?;
                let b = self.read_lin(mem, rdi, size, false)?;
                let (_, f) = CmpOp::apply(a, b, size, self.st.rflags, &self.undefined);
                self.set_status(f);
                (true, true)
            }
            StringOp::Scas => {
                let b = self.read_lin(mem, rdi, size, false)?;
                let a = self.st.gpr[RAX] & mask(size);
                let (_, f) = CmpOp::apply(a, b, size, self.st.rflags, &self.undefined);
                self.set_status(f);
                (false, true)
            }
        };
        if moves_rsi {
            self.st.gpr[RSI] = rsi.wrapping_add(step) & amask;
        }
        if moves_rdi {
            self.st.gpr[RDI] = rdi.wrapping_add(step) & amask;
        }
        Ok(())
    }
}

/// Whether a string instruction uses 32-bit addresses (RSI, RDI and RCX as ESI, EDI,
/// ECX).
fn address_mask(ins: &Instruction) -> u64 {
    let addr32 = (0..ins.op_count())
        .any(|n| matches!(ins.op_kind(n), OpKind::MemorySegESI | OpKind::MemoryESEDI));
    if addr32 { 0xffff_ffff } else { u64::MAX }
}

impl Cpu {
    /// `ins` and `rep ins`. The port's values come from the driver: a chunk of
    /// [`string_input_chunk`] elements waits for them ([`Exit::PortInString`]); once
    /// they are supplied it is executed again and writes them to ES:RDI. With `rep` a
    /// chunk retires with RIP still on the instruction, which completes when executed
    /// with RCX = 0 (see [`crate::icount`]).
    pub(super) fn port_in_string(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        let size = ins.memory_size().size();
        let port = self.st.gpr[RDX] as u16;
        let amask = address_mask(ins);
        let rep = ins.has_rep_prefix() || ins.has_repne_prefix();
        let down = self.st.rflags & DF != 0;
        let rcx = self.st.gpr[RCX] & amask;
        if rep && rcx == 0 {
            return Ok(());
        }
        let count = if rep {
            string_input_chunk(self.st.gpr[RDI], size, rcx, down)
        } else {
            1
        };
        let Some(input) = self.string_input.take() else {
            self.pending = Some(Pending::StringIn {
                port,
                size: size as u8,
                count: count as u32,
            });
            return Err(exit(Exit::PortInString {
                port,
                size: size as u8,
                count: count as u32,
            }));
        };
        if input.len() != count as usize * size {
            return Err(self.unsupported("string input of another length than its chunk"));
        }
        let step = if down {
            (size as u64).wrapping_neg()
        } else {
            size as u64
        };
        if down || count == 1 {
            // One element at a time, each retired into RDI and RCX as it is written.
            for element in input.chunks(size) {
                let mut v = [0u8; 8];
                v[..size].copy_from_slice(element);
                let rdi = self.st.gpr[RDI] & amask;
                self.write_lin(mem, rdi, size, u64::from_le_bytes(v), false)?;
                self.st.gpr[RDI] = rdi.wrapping_add(step) & amask;
                if rep {
                    self.st.gpr[RCX] = self.st.gpr[RCX].wrapping_sub(1) & amask;
                }
            }
        } else {
            // Upwards the recording host writes the whole chunk at once: a fault leaves
            // RDI and RCX as they were.
            let rdi = self.st.gpr[RDI] & amask;
            self.write_block(mem, rdi, &input)?;
            self.st.gpr[RDI] = rdi.wrapping_add(count * size as u64) & amask;
            self.st.gpr[RCX] = rcx - count;
        }
        if rep {
            self.next_rip = self.st.rip;
        }
        Ok(())
    }

    /// `outs` and `rep outs`: one element from the source (DS:RSI or its override) to
    /// the port. With `rep` every element is a chunk that retires with RIP still on the
    /// instruction (see [`crate::icount`]).
    pub(super) fn port_out_string(
        &mut self,
        mem: &mut GuestMemory,
        ins: &Instruction,
    ) -> R<Retired> {
        let size = ins.memory_size().size();
        let port = self.st.gpr[RDX] as u16;
        let amask = address_mask(ins);
        let rep = ins.has_rep_prefix() || ins.has_repne_prefix();
        if rep && self.st.gpr[RCX] & amask == 0 {
            return Ok(Retired::Continue);
        }
        let rsi = self.st.gpr[RSI] & amask;
        let base = self.seg_base(ins.memory_segment());
        let value = self.read_lin(mem, base.wrapping_add(rsi), size, false)?;
        let step = if self.st.rflags & DF != 0 {
            (size as u64).wrapping_neg()
        } else {
            size as u64
        };
        self.st.gpr[RSI] = rsi.wrapping_add(step) & amask;
        if rep {
            self.st.gpr[RCX] = self.st.gpr[RCX].wrapping_sub(1) & amask;
            self.next_rip = self.st.rip;
        }
        Ok(Retired::PortOut {
            port,
            size: size as u8,
            value: value as u32,
        })
    }
}
