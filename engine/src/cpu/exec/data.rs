//! Data movement: `mov` (with segment, control and debug registers), `movnti`, `movzx`,
//! `movsx`, `movsxd`, `lea`, `xchg`, `cmovcc`, `setcc`, the accumulator conversions
//! (`cbw` ... `cqo`), `lahf`, `sahf`, `xlat`.

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use super::super::flags::{AF, CF, FIXED1, PF, SF, ZF, mask, sext, sign_bit};
use super::super::{Cpu, R, ud};
use super::operand::{control_register, debug_register, is_segment, op_size, seg_index};
use crate::memory::GuestMemory;
use crate::state::gpr::{RAX, RBX, RDX};
use crate::state::seg;

/// The status flags `lahf` and `sahf` move.
const AH_FLAGS: u64 = SF | ZF | AF | PF | CF;

/// `movzx`, `movsx`, `movsxd`: the `src_size`-byte source `v`, sign-extended to 64 bits
/// if `signed` (the destination keeps its size's worth).
#[inline(always)]
pub(crate) fn extend(v: u64, src_size: usize, signed: bool) -> u64 {
    if signed { sext(v, src_size) } else { v }
}

/// The slot of debug register `n` in `Cpu::dr` (DR4 and DR5 alias DR6 and DR7), if any.
fn debug_slot(n: u32) -> Option<usize> {
    let n = if n == 4 || n == 5 { n + 2 } else { n } as usize;
    (n < 8).then_some(n)
}

/// Whether `m` is a `setcc`.
pub(super) fn is_setcc(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::Seto
            | M::Setno
            | M::Setb
            | M::Setae
            | M::Sete
            | M::Setne
            | M::Setbe
            | M::Seta
            | M::Sets
            | M::Setns
            | M::Setp
            | M::Setnp
            | M::Setl
            | M::Setge
            | M::Setle
            | M::Setg
    )
}

/// Whether `m` is a `cmovcc`.
pub(super) fn is_cmovcc(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::Cmovo
            | M::Cmovno
            | M::Cmovb
            | M::Cmovae
            | M::Cmove
            | M::Cmovne
            | M::Cmovbe
            | M::Cmova
            | M::Cmovs
            | M::Cmovns
            | M::Cmovp
            | M::Cmovnp
            | M::Cmovl
            | M::Cmovge
            | M::Cmovle
            | M::Cmovg
    )
}

impl Cpu {
    /// `mov` in all its forms.
    pub(super) fn mov(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        if ins.op_kind(0) == OpKind::Register {
            let r0 = ins.op_register(0);
            if is_segment(r0) {
                let sel = self.rd(mem, ins, 1, 2)? as u16;
                let idx = seg_index(r0);
                if idx == seg::CS {
                    return Err(ud());
                }
                return self.load_data_segment(mem, idx, sel, true);
            }
            if let Some(n) = control_register(r0) {
                let v = self.reg_get(ins.op_register(1));
                return self.write_cr(n, v);
            }
            if let Some(n) = debug_register(r0) {
                if let Some(i) = debug_slot(n) {
                    self.dr[i] = self.reg_get(ins.op_register(1));
                }
                return Ok(());
            }
        }
        if ins.op_kind(1) == OpKind::Register {
            let r1 = ins.op_register(1);
            if is_segment(r1) {
                let v = self.reg_get(r1);
                // A register destination receives the zero-extended selector.
                let size = match ins.op_kind(0) {
                    OpKind::Register => op_size(ins, 0),
                    _ => 2,
                };
                return self.wr(mem, ins, 0, size, v);
            }
            if let Some(n) = control_register(r1) {
                let v = self.read_cr(n)?;
                self.reg_set(ins.op_register(0), v);
                return Ok(());
            }
            if let Some(n) = debug_register(r1) {
                let v = debug_slot(n).map_or(0, |i| self.dr[i]);
                self.reg_set(ins.op_register(0), v);
                return Ok(());
            }
        }
        let size = op_size(ins, 0);
        let v = self.rd(mem, ins, 1, size)?;
        self.wr(mem, ins, 0, size, v)
    }

    /// `movnti`.
    pub(super) fn mov_plain(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        let size = op_size(ins, 0);
        let v = self.rd(mem, ins, 1, size)?;
        self.wr(mem, ins, 0, size, v)
    }

    /// `movzx` and (`signed`) `movsx`, `movsxd`.
    pub(super) fn mov_extend(
        &mut self,
        mem: &mut GuestMemory,
        ins: &Instruction,
        signed: bool,
    ) -> R<()> {
        let dsize = op_size(ins, 0);
        let ssize = op_size(ins, 1);
        let v = self.rd(mem, ins, 1, ssize)?;
        self.wr(mem, ins, 0, dsize, extend(v, ssize, signed) & mask(dsize))
    }

    pub(super) fn lea(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        let size = op_size(ins, 0);
        let a = self.ea(ins);
        self.wr(mem, ins, 0, size, a & mask(size))
    }

    pub(super) fn xchg(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        let size = op_size(ins, 0);
        let a = self.rd(mem, ins, 0, size)?;
        let b = self.rd(mem, ins, 1, size)?;
        self.wr(mem, ins, 0, size, b)?;
        self.wr(mem, ins, 1, size, a)
    }

    pub(super) fn setcc(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        let v = self.cond(ins.condition_code()) as u64;
        self.wr(mem, ins, 0, 1, v)
    }

    pub(super) fn cmovcc(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        let size = op_size(ins, 0);
        let v = self.rd(mem, ins, 1, size)?;
        if self.cond(ins.condition_code()) {
            self.wr(mem, ins, 0, size, v)?;
        } else if size == 4 {
            // A 32-bit destination is zero-extended even when nothing moves.
            let r = ins.op_register(0);
            let old = self.reg_get(r);
            self.reg_set(r, old);
        }
        Ok(())
    }

    /// `cbw`, `cwde`, `cdqe` (`size`: the destination's): the accumulator's lower half
    /// sign-extended into it.
    pub(super) fn widen_acc(&mut self, size: usize) {
        let v = sext(self.st.gpr[RAX], size / 2);
        self.set_gpr_sized(RAX, size, v);
    }

    /// `cwd`, `cdq`, `cqo`: rDX filled with the accumulator's sign.
    pub(super) fn sign_fill_rdx(&mut self, size: usize) {
        let neg = self.st.gpr[RAX] & sign_bit(size) != 0;
        self.set_gpr_sized(RDX, size, if neg { u64::MAX } else { 0 });
    }

    pub(super) fn lahf(&mut self) {
        let v = self.st.rflags & AH_FLAGS | FIXED1;
        self.st.gpr[RAX] = (self.st.gpr[RAX] & !0xff00) | (v << 8);
    }

    pub(super) fn sahf(&mut self) {
        let ah = (self.st.gpr[RAX] >> 8) & AH_FLAGS;
        self.st.rflags = (self.st.rflags & !AH_FLAGS) | ah;
    }

    pub(super) fn xlat(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        let a = self.st.gpr[RBX].wrapping_add(self.st.gpr[RAX] & 0xff);
        let la = a.wrapping_add(self.seg_base(ins.memory_segment()));
        let v = self.read_lin(mem, la, 1, false)?;
        self.reg_set(Register::AL, v);
        Ok(())
    }
}
