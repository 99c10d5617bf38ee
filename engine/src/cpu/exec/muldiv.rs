//! Multiplication and division: `mul`, `imul` (one, two and three operands), `div`,
//! `idiv` (#DE on a zero divisor or a quotient that does not fit).

use iced_x86::Instruction;

use super::super::flags::{self, mask, sext};
use super::super::undefined::Family;
use super::super::{Cpu, R, exc, vector};
use super::operand::op_size;
use crate::memory::GuestMemory;
use crate::state::gpr::{RAX, RDX};

/// `imul` with two or three operands: the low `size` bytes of the signed product of
/// `a` and `b`, and whether the product did not fit in them (CF = OF).
#[inline(always)]
pub(crate) fn imul_truncated(a: u64, b: u64, size: usize) -> (u64, bool) {
    let p = (sext(a, size) as i64 as i128) * (sext(b, size) as i64 as i128);
    let r = (p as u64) & mask(size);
    (r, sext(r, size) as i64 as i128 != p)
}

/// The low and high halves of the double-width product of `a` and `b` and whether the
/// high half is significant: `mul` and one-operand `imul`.
fn multiply_wide(a: u64, b: u64, size: usize, signed: bool) -> (u64, u64, bool) {
    let bits = size * 8;
    if signed {
        let p = (sext(a, size) as i64 as i128) * (sext(b, size) as i64 as i128);
        let lo = (p as u64) & mask(size);
        let hi = ((p >> bits) as u64) & mask(size);
        (lo, hi, sext(lo, size) as i64 as i128 != p)
    } else {
        let p = (a as u128) * (b as u128);
        let lo = (p as u64) & mask(size);
        let hi = ((p >> bits) as u64) & mask(size);
        (lo, hi, hi != 0)
    }
}

/// The quotient and remainder of `dividend` (2 * `size` bytes) by `divisor` (`size`
/// bytes, not zero), or `None` where the quotient does not fit (#DE).
fn divide(dividend: u128, divisor: u64, size: usize, signed: bool) -> Option<(u64, u64)> {
    let bits = size * 8;
    if signed {
        // Sign-extend the 2*bits-wide dividend.
        let sh = 128 - 2 * bits as u32;
        let n = ((dividend << sh) as i128) >> sh;
        let d = sext(divisor, size) as i64 as i128;
        let q = n.checked_div(d)?;
        let r = n - q * d;
        let min = -(1i128 << (bits - 1));
        let max = (1i128 << (bits - 1)) - 1;
        if q < min || q > max {
            return None;
        }
        Some(((q as u64) & mask(size), (r as u64) & mask(size)))
    } else {
        let d = divisor as u128;
        let q = dividend / d;
        if q > mask(size) as u128 {
            return None;
        }
        Some((q as u64, (dividend % d) as u64))
    }
}

impl Cpu {
    /// The status flags of a multiplication of `family` whose low half is `low`.
    #[inline(always)]
    pub(crate) fn set_mul_flags(&mut self, family: Family, low: u64, size: usize, overflow: bool) {
        let f = flags::multiply(family, low, size, overflow, self.st.rflags, &self.undefined);
        self.set_status(f);
    }

    /// Writes a double-width result: AH:AL for bytes, else rDX:rAX.
    fn set_acc_pair(&mut self, size: usize, lo: u64, hi: u64) {
        if size == 1 {
            self.set_gpr_sized(RAX, 2, lo | (hi << 8));
        } else {
            self.set_gpr_sized(RAX, size, lo);
            self.set_gpr_sized(RDX, size, hi);
        }
    }

    /// `imul r, r/m` and `imul r, r/m, imm`.
    pub(super) fn imul_truncating(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        let size = op_size(ins, 0);
        let (a, b) = if ins.op_count() == 2 {
            (self.rd(mem, ins, 0, size)?, self.rd(mem, ins, 1, size)?)
        } else {
            (self.rd(mem, ins, 1, size)?, self.rd(mem, ins, 2, size)?)
        };
        let (r, overflow) = imul_truncated(a, b, size);
        self.wr(mem, ins, 0, size, r)?;
        self.set_mul_flags(Family::ImulMultiOperand, r, size, overflow);
        Ok(())
    }

    /// `mul r/m` and `imul r/m`: the accumulator times the operand, into rDX:rAX.
    pub(super) fn multiply_acc(
        &mut self,
        mem: &mut GuestMemory,
        ins: &Instruction,
        signed: bool,
    ) -> R<()> {
        let size = op_size(ins, 0);
        let s = self.rd(mem, ins, 0, size)?;
        let a = self.st.gpr[RAX] & mask(size);
        let (lo, hi, overflow) = multiply_wide(a, s, size, signed);
        self.set_acc_pair(size, lo, hi);
        let family = if signed { Family::Imul } else { Family::Mul };
        self.set_mul_flags(family, lo, size, overflow);
        Ok(())
    }

    /// `div r/m` and `idiv r/m`: rDX:rAX (AX for bytes) by the operand.
    pub(super) fn divide_acc(
        &mut self,
        mem: &mut GuestMemory,
        ins: &Instruction,
        signed: bool,
    ) -> R<()> {
        let size = op_size(ins, 0);
        let s = self.rd(mem, ins, 0, size)?;
        if s & mask(size) == 0 {
            return Err(exc(vector::DE, None));
        }
        let g = &self.st.gpr;
        let dividend: u128 = if size == 1 {
            (g[RAX] & 0xffff) as u128
        } else {
            ((g[RDX] & mask(size)) as u128) << (size * 8) | (g[RAX] & mask(size)) as u128
        };
        let (q, r) = divide(dividend, s, size, signed).ok_or_else(|| exc(vector::DE, None))?;
        self.set_acc_pair(size, q, r);
        let family = if signed { Family::Idiv } else { Family::Div };
        let f = flags::divide(family, q, size, self.st.rflags, &self.undefined);
        self.set_status(f);
        Ok(())
    }
}
