//! Control transfer: conditions, `jcc`, `jmp` (relative, indirect, far through memory),
//! `call` and `ret` (near), `lret`, `jrcxz`/`jecxz`, `loop`/`loope`/`loopne`. The
//! near transfers that have fast forms (`jcc`, `jmp rel`, `call rel`, `ret`) are the
//! primitives here, which the fast forms call too.
//!
//! Branch targets of decoded instructions are relative to RIP: instructions are decoded
//! at IP 0.

use iced_x86::{Code, ConditionCode, Instruction, Mnemonic, Register};

use super::super::flags::{CF, OF, PF, SF, ZF};
use super::super::mmu::canonical;
use super::super::{Cpu, R, gp0};
use crate::memory::GuestMemory;
use crate::state::gpr::{RCX, RSP};
use crate::state::seg;

/// Whether condition `cc` holds for `rflags`.
#[inline(always)]
pub(crate) fn condition(cc: ConditionCode, rflags: u64) -> bool {
    let cf = rflags & CF != 0;
    let zf = rflags & ZF != 0;
    let sf = rflags & SF != 0;
    let of = rflags & OF != 0;
    let pf = rflags & PF != 0;
    match cc {
        ConditionCode::o => of,
        ConditionCode::no => !of,
        ConditionCode::b => cf,
        ConditionCode::ae => !cf,
        ConditionCode::e => zf,
        ConditionCode::ne => !zf,
        ConditionCode::be => cf || zf,
        ConditionCode::a => !cf && !zf,
        ConditionCode::s => sf,
        ConditionCode::ns => !sf,
        ConditionCode::p => pf,
        ConditionCode::np => !pf,
        ConditionCode::l => sf != of,
        ConditionCode::ge => sf == of,
        ConditionCode::le => zf || sf != of,
        ConditionCode::g => !zf && sf == of,
        ConditionCode::None => true,
    }
}

impl Cpu {
    /// Whether condition `cc` holds now.
    #[inline(always)]
    pub(crate) fn cond(&self, cc: ConditionCode) -> bool {
        condition(cc, self.st.rflags)
    }

    /// Continues at `target` (#GP if it is not canonical).
    #[inline(always)]
    pub(crate) fn jump(&mut self, target: u64) -> R<()> {
        if !canonical(target) {
            return Err(gp0());
        }
        self.next_rip = target;
        Ok(())
    }

    /// Continues at `rel` from this instruction's RIP.
    #[inline(always)]
    pub(crate) fn jump_relative(&mut self, rel: u64) {
        self.next_rip = self.st.rip.wrapping_add(rel);
    }

    /// `jcc`: continues at `rel` from RIP if `cc` holds.
    #[inline(always)]
    pub(crate) fn jump_relative_if(&mut self, cc: ConditionCode, rel: u64) {
        if self.cond(cc) {
            self.jump_relative(rel);
        }
    }

    /// A near call to `target`: pushes the return address and continues there.
    #[inline(always)]
    pub(crate) fn call_near(&mut self, mem: &mut GuestMemory, target: u64) -> R<()> {
        self.push(mem, self.next_rip, 8)?;
        self.next_rip = target;
        Ok(())
    }

    /// A near return, releasing `extra` more bytes of stack.
    #[inline(always)]
    pub(crate) fn ret_near(&mut self, mem: &mut GuestMemory, extra: u64) -> R<()> {
        let t = self.peek(mem, 0, 8)?;
        self.jump(t)?;
        self.st.gpr[RSP] = self.st.gpr[RSP].wrapping_add(8 + extra);
        Ok(())
    }

    pub(super) fn jcc(&mut self, ins: &Instruction) {
        self.jump_relative_if(ins.condition_code(), ins.near_branch64());
    }

    pub(super) fn call(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        match ins.code() {
            Code::Call_rel32_64 => {
                let t = self.st.rip.wrapping_add(ins.near_branch64());
                self.call_near(mem, t)
            }
            Code::Call_rm64 => {
                let t = self.rd(mem, ins, 0, 8)?;
                if !canonical(t) {
                    return Err(gp0());
                }
                self.call_near(mem, t)
            }
            _ => Err(self.unimplemented(mem, ins)),
        }
    }

    pub(super) fn ret(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        let extra = match ins.code() {
            Code::Retnq => 0,
            Code::Retnq_imm16 => ins.immediate16() as u64,
            _ => {
                // The return address is read first: a fault there comes before the
                // missing form.
                self.peek(mem, 0, 8)?;
                return Err(self.unimplemented(mem, ins));
            }
        };
        self.ret_near(mem, extra)
    }

    pub(super) fn jmp(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        match ins.code() {
            Code::Jmp_rel8_64 | Code::Jmp_rel32_64 => {
                self.jump_relative(ins.near_branch64());
                Ok(())
            }
            Code::Jmp_rm64 => {
                let t = self.rd(mem, ins, 0, 8)?;
                self.jump(t)
            }
            Code::Jmp_m1664 => self.jmp_far(mem, ins, 8),
            Code::Jmp_m1632 => self.jmp_far(mem, ins, 4),
            _ => Err(self.unimplemented(mem, ins)),
        }
    }

    /// A far `jmp` through a memory operand with an offset of `osz` bytes.
    fn jmp_far(&mut self, mem: &mut GuestMemory, ins: &Instruction, osz: usize) -> R<()> {
        let la = self.mem_la(ins);
        let ss = Self::mem_ss(ins);
        let off = self.read_lin(mem, la, osz, ss)?;
        let sel = self.read_lin(mem, la.wrapping_add(osz as u64), 2, ss)? as u16;
        let cs = self.load_code_segment(mem, sel, true)?;
        if !cs.long_mode() {
            return Err(self.unsupported("far jump to a non-64-bit code segment"));
        }
        if !canonical(off) {
            return Err(gp0());
        }
        self.st.seg[seg::CS] = cs;
        self.next_rip = off;
        Ok(())
    }

    /// `lret` to the same privilege level.
    pub(super) fn retf(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        let (osz, with_imm) = match ins.code() {
            Code::Retfq => (8, false),
            Code::Retfq_imm16 => (8, true),
            Code::Retfd => (4, false),
            Code::Retfd_imm16 => (4, true),
            _ => return Err(self.unimplemented(mem, ins)),
        };
        let off = self.peek(mem, 0, osz)?;
        let sel = self.peek(mem, osz as u64, osz)? as u16;
        if sel & 3 != 0 {
            return Err(self.unsupported("far return to another privilege level"));
        }
        let cs = self.load_code_segment(mem, sel, true)?;
        if !cs.long_mode() {
            return Err(self.unsupported("far return to a non-64-bit code segment"));
        }
        if !canonical(off) {
            return Err(gp0());
        }
        let extra = if with_imm {
            ins.immediate16() as u64
        } else {
            0
        };
        self.st.seg[seg::CS] = cs;
        self.st.gpr[RSP] = self.st.gpr[RSP].wrapping_add(2 * osz as u64 + extra);
        self.next_rip = off;
        Ok(())
    }

    /// `jrcxz` (`wide`) and `jecxz`.
    pub(super) fn jrcxz(&mut self, ins: &Instruction, wide: bool) {
        let c = if wide {
            self.st.gpr[RCX]
        } else {
            self.st.gpr[RCX] & 0xffff_ffff
        };
        if c == 0 {
            self.jump_relative(ins.near_branch64());
        }
    }

    /// `loop`, `loope`, `loopne`.
    pub(super) fn loop_rcx(&mut self, ins: &Instruction, m: Mnemonic) {
        let amask = if ins.op_register(1) == Register::ECX {
            0xffff_ffff
        } else {
            u64::MAX
        };
        let c = self.st.gpr[RCX].wrapping_sub(1) & amask;
        let zf = self.st.rflags & ZF != 0;
        let take = c != 0
            && match m {
                Mnemonic::Loope => zf,
                Mnemonic::Loopne => !zf,
                _ => true,
            };
        self.st.gpr[RCX] = c;
        if take {
            self.jump_relative(ins.near_branch64());
        }
    }
}
