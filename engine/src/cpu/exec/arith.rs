//! The integer ALU: `add`, `adc`, `sub`, `sbb`, `cmp`, `and`, `or`, `xor`, `test`, `inc`,
//! `dec`, `neg`, `not`, `xadd`, `cmpxchg`, `cmpxchg8b`.
//!
//! Each operation's result and status flags are defined once, by an [`ArithOp`] or
//! [`UnaryOp`] type; the general path ([`Cpu::arith`], [`Cpu::unary`]) and the fast
//! forms (`fast.rs`) both instantiate them.

use iced_x86::{Instruction, OpKind};

use super::super::flags::{self, CF, STATUS, ZF, mask};
use super::super::undefined::{Family, UndefinedRules};
use super::super::{Cpu, R};
use super::operand::op_size;
use crate::memory::GuestMemory;
use crate::state::gpr::{RAX, RBX, RCX, RDX};

/// A two-operand ALU operation `a op b` on `size`-byte operands (1, 2, 4 or 8).
pub(crate) trait ArithOp {
    /// Whether the result goes to the destination (`cmp` and `test` only set flags).
    const WRITES: bool;

    /// The result (masked to `size`) and the status flags, from the operands (masked
    /// to `size`) and the flags before (the carry in; the recording host's `rules` for
    /// the undefined ones).
    fn apply(a: u64, b: u64, size: usize, rflags: u64, rules: &UndefinedRules) -> (u64, u64);

    /// [`Self::apply`] where the rules give the flags it leaves undefined their
    /// natural values (the fast forms' natural form; not for operations with a carry
    /// in).
    fn natural(a: u64, b: u64, size: usize) -> (u64, u64);
}

/// A one-operand ALU operation.
pub(crate) trait UnaryOp {
    /// The result (masked to `size`) and the new status flags (those the operation
    /// leaves alone are taken from `rflags`).
    fn apply(a: u64, size: usize, rflags: u64) -> (u64, u64);
}

/// The result and flags of a logical operation of `family` (CF = OF = 0, AF undefined).
#[inline(always)]
fn logic(family: Family, r: u64, size: usize, rflags: u64, rules: &UndefinedRules) -> (u64, u64) {
    (r, flags::logic(family, r, size, rflags, rules))
}

pub(crate) struct AddOp;
pub(crate) struct AdcOp;
pub(crate) struct SubOp;
pub(crate) struct SbbOp;
pub(crate) struct CmpOp;
pub(crate) struct AndOp;
pub(crate) struct OrOp;
pub(crate) struct XorOp;
pub(crate) struct TestOp;

impl ArithOp for AddOp {
    const WRITES: bool = true;
    #[inline(always)]
    fn apply(a: u64, b: u64, size: usize, _: u64, _: &UndefinedRules) -> (u64, u64) {
        flags::add(a, b, false, size)
    }
    #[inline(always)]
    fn natural(a: u64, b: u64, size: usize) -> (u64, u64) {
        flags::add(a, b, false, size)
    }
}

impl ArithOp for AdcOp {
    const WRITES: bool = true;
    #[inline(always)]
    fn apply(a: u64, b: u64, size: usize, rflags: u64, _: &UndefinedRules) -> (u64, u64) {
        flags::add(a, b, rflags & CF != 0, size)
    }
    #[inline(always)]
    fn natural(a: u64, b: u64, size: usize) -> (u64, u64) {
        // Not a fast form (its carry in is in RFLAGS): as `add` without it.
        flags::add(a, b, false, size)
    }
}

impl ArithOp for SubOp {
    const WRITES: bool = true;
    #[inline(always)]
    fn apply(a: u64, b: u64, size: usize, _: u64, _: &UndefinedRules) -> (u64, u64) {
        flags::sub(a, b, false, size)
    }
    #[inline(always)]
    fn natural(a: u64, b: u64, size: usize) -> (u64, u64) {
        flags::sub(a, b, false, size)
    }
}

impl ArithOp for SbbOp {
    const WRITES: bool = true;
    #[inline(always)]
    fn apply(a: u64, b: u64, size: usize, rflags: u64, _: &UndefinedRules) -> (u64, u64) {
        flags::sub(a, b, rflags & CF != 0, size)
    }
    #[inline(always)]
    fn natural(a: u64, b: u64, size: usize) -> (u64, u64) {
        // Not a fast form (its carry in is in RFLAGS): as `sub` without it.
        flags::sub(a, b, false, size)
    }
}

impl ArithOp for CmpOp {
    const WRITES: bool = false;
    #[inline(always)]
    fn apply(a: u64, b: u64, size: usize, _: u64, _: &UndefinedRules) -> (u64, u64) {
        flags::sub(a, b, false, size)
    }
    #[inline(always)]
    fn natural(a: u64, b: u64, size: usize) -> (u64, u64) {
        flags::sub(a, b, false, size)
    }
}

impl ArithOp for AndOp {
    const WRITES: bool = true;
    #[inline(always)]
    fn apply(a: u64, b: u64, size: usize, rflags: u64, rules: &UndefinedRules) -> (u64, u64) {
        logic(Family::And, a & b, size, rflags, rules)
    }
    #[inline(always)]
    fn natural(a: u64, b: u64, size: usize) -> (u64, u64) {
        let r = a & b;
        (r, flags::szp(r, size))
    }
}

impl ArithOp for OrOp {
    const WRITES: bool = true;
    #[inline(always)]
    fn apply(a: u64, b: u64, size: usize, rflags: u64, rules: &UndefinedRules) -> (u64, u64) {
        logic(Family::Or, a | b, size, rflags, rules)
    }
    #[inline(always)]
    fn natural(a: u64, b: u64, size: usize) -> (u64, u64) {
        let r = a | b;
        (r, flags::szp(r, size))
    }
}

impl ArithOp for XorOp {
    const WRITES: bool = true;
    #[inline(always)]
    fn apply(a: u64, b: u64, size: usize, rflags: u64, rules: &UndefinedRules) -> (u64, u64) {
        logic(Family::Xor, a ^ b, size, rflags, rules)
    }
    #[inline(always)]
    fn natural(a: u64, b: u64, size: usize) -> (u64, u64) {
        let r = a ^ b;
        (r, flags::szp(r, size))
    }
}

impl ArithOp for TestOp {
    const WRITES: bool = false;
    #[inline(always)]
    fn apply(a: u64, b: u64, size: usize, rflags: u64, rules: &UndefinedRules) -> (u64, u64) {
        logic(Family::Test, a & b, size, rflags, rules)
    }
    #[inline(always)]
    fn natural(a: u64, b: u64, size: usize) -> (u64, u64) {
        let r = a & b;
        (r, flags::szp(r, size))
    }
}

pub(crate) struct IncOp;
pub(crate) struct DecOp;
pub(crate) struct NegOp;
pub(crate) struct NotOp;

impl UnaryOp for IncOp {
    /// CF is kept.
    #[inline(always)]
    fn apply(a: u64, size: usize, rflags: u64) -> (u64, u64) {
        let (r, f) = flags::add(a, 1, false, size);
        (r, (f & !CF) | (rflags & CF))
    }
}

impl UnaryOp for DecOp {
    /// CF is kept.
    #[inline(always)]
    fn apply(a: u64, size: usize, rflags: u64) -> (u64, u64) {
        let (r, f) = flags::sub(a, 1, false, size);
        (r, (f & !CF) | (rflags & CF))
    }
}

impl UnaryOp for NegOp {
    #[inline(always)]
    fn apply(a: u64, size: usize, _: u64) -> (u64, u64) {
        flags::sub(0, a, false, size)
    }
}

impl UnaryOp for NotOp {
    /// No flag changes.
    #[inline(always)]
    fn apply(a: u64, size: usize, rflags: u64) -> (u64, u64) {
        (!a & mask(size), rflags & STATUS)
    }
}

impl Cpu {
    /// `add`, `or`, `adc`, `sbb`, `and`, `sub`, `xor`, `cmp`, `test`: `Op` of operands 0
    /// and 1.
    pub(super) fn arith<Op: ArithOp>(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        let size = op_size(ins, 0);
        let a = self.rd(mem, ins, 0, size)?;
        let b = self.rd(mem, ins, 1, size)?;
        let (r, f) = Op::apply(a, b, size, self.st.rflags, &self.undefined);
        if Op::WRITES {
            self.wr(mem, ins, 0, size, r)?;
        }
        self.set_status(f);
        Ok(())
    }

    /// `inc`, `dec`, `neg`, `not`: `Op` of operand 0.
    pub(super) fn unary<Op: UnaryOp>(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        let size = op_size(ins, 0);
        let a = self.rd(mem, ins, 0, size)?;
        let (r, f) = Op::apply(a, size, self.st.rflags);
        self.wr(mem, ins, 0, size, r)?;
        self.set_status(f);
        Ok(())
    }

    pub(super) fn xadd(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        let size = op_size(ins, 0);
        let d = self.rd(mem, ins, 0, size)?;
        let s = self.rd(mem, ins, 1, size)?;
        let (r, f) = AddOp::apply(d, s, size, self.st.rflags, &self.undefined);
        if ins.op_kind(0) == OpKind::Memory {
            self.wr(mem, ins, 0, size, r)?;
            self.wr(mem, ins, 1, size, d)?;
        } else {
            self.wr(mem, ins, 1, size, d)?;
            self.wr(mem, ins, 0, size, r)?;
        }
        self.set_status(f);
        Ok(())
    }

    pub(super) fn cmpxchg(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        let size = op_size(ins, 0);
        let d = self.rd(mem, ins, 0, size)?;
        let s = self.rd(mem, ins, 1, size)?;
        let acc = self.st.gpr[RAX] & mask(size);
        let (_, f) = CmpOp::apply(acc, d, size, self.st.rflags, &self.undefined);
        if acc == d {
            self.wr(mem, ins, 0, size, s)?;
        } else {
            // The destination is written back unchanged (a locked write cycle), then
            // the accumulator receives it.
            self.wr(mem, ins, 0, size, d)?;
            self.set_acc(size, d);
        }
        self.set_status(f);
        Ok(())
    }

    pub(super) fn cmpxchg8b(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        let la = self.mem_la(ins);
        let ss = Self::mem_ss(ins);
        let d = self.read_lin(mem, la, 8, ss)?;
        let g = &self.st.gpr;
        let cmp = (g[RAX] & 0xffff_ffff) | (g[RDX] << 32);
        if d == cmp {
            let nv = (g[RBX] & 0xffff_ffff) | (g[RCX] << 32);
            self.write_lin(mem, la, 8, nv, ss)?;
            self.st.rflags |= ZF;
        } else {
            self.write_lin(mem, la, 8, d, ss)?;
            self.st.gpr[RAX] = d & 0xffff_ffff;
            self.st.gpr[RDX] = d >> 32;
            self.st.rflags &= !ZF;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::flags::AF;
    use super::super::super::undefined::probe::Rng;
    use super::super::super::undefined::{FlagRule, UndefinedBehaviour};
    use super::*;

    /// Each operation's natural form is `apply` under rules that give every undefined
    /// flag its natural value (for the logical operations' AF, 0: the result rule or
    /// the clearing one), whatever the flags before.
    #[test]
    fn natural_is_apply_under_natural_rules() {
        fn check<Op: ArithOp>(name: &str, rules: &UndefinedRules, a: u64, b: u64, rflags: u64) {
            for size in [1, 2, 4, 8] {
                let (a, b) = (a & mask(size), b & mask(size));
                let (r, f) = Op::apply(a, b, size, rflags, rules);
                assert_eq!(
                    Op::natural(a, b, size),
                    (r, f & STATUS),
                    "{name} {a:#x}, {b:#x}, size {size}"
                );
            }
        }
        let mut rng = Rng(0x853c_49e6_748f_ea9b);
        for rule in [FlagRule::Result, FlagRule::Clear] {
            let rules = UndefinedRules::new(&UndefinedBehaviour::uniform(rule));
            for f in [Family::And, Family::Or, Family::Xor, Family::Test] {
                assert!(rules.masks(f, 8).is_natural(AF, f.natural_zero()), "{f:?}");
            }
            for _ in 0..2000 {
                let x = rng.next();
                let (a, b, rflags) = (x, x.rotate_left(29) ^ (x >> 3), x.rotate_right(11) & STATUS);
                check::<AddOp>("add", &rules, a, b, rflags);
                check::<SubOp>("sub", &rules, a, b, rflags);
                check::<CmpOp>("cmp", &rules, a, b, rflags);
                check::<AndOp>("and", &rules, a, b, rflags);
                check::<OrOp>("or", &rules, a, b, rflags);
                check::<XorOp>("xor", &rules, a, b, rflags);
                check::<TestOp>("test", &rules, a, b, rflags);
            }
        }
    }
}
