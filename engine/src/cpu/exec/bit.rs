//! Bit instructions: `bt`, `bts`, `btr`, `btc` (register, immediate, and memory with
//! large signed offsets), `bsf`, `bsr`, `tzcnt`, `lzcnt`, `bswap`.

use iced_x86::{Instruction, OpKind};

use super::super::flags::{self, mask, sext};
use super::super::undefined::{Family, ZeroSourceDestination, size_index};
use super::super::{Cpu, R};
use super::operand::{op_size, reg_size};
use crate::memory::GuestMemory;

/// What `bt`, `bts`, `btr` and `btc` do to the bit they test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BitOp {
    Test,
    Set,
    Reset,
    Complement,
}

impl BitOp {
    fn apply(self, v: u64, bit: u64) -> u64 {
        match self {
            BitOp::Test => v,
            BitOp::Set => v | (1 << bit),
            BitOp::Reset => v & !(1 << bit),
            BitOp::Complement => v ^ (1 << bit),
        }
    }

    fn family(self) -> Family {
        match self {
            BitOp::Test => Family::Bt,
            BitOp::Set => Family::Bts,
            BitOp::Reset => Family::Btr,
            BitOp::Complement => Family::Btc,
        }
    }
}

/// `bsf`, `bsr`, `tzcnt` and `lzcnt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ScanOp {
    Bsf,
    Bsr,
    Tzcnt,
    Lzcnt,
}

impl Cpu {
    pub(super) fn bit_test(
        &mut self,
        mem: &mut GuestMemory,
        ins: &Instruction,
        op: BitOp,
    ) -> R<()> {
        let size = op_size(ins, 0);
        let bits = size as u64 * 8;
        let off = self.rd(mem, ins, 1, size)?;
        let (val, bit, la) = if ins.op_kind(0) == OpKind::Memory {
            let base = self.mem_la(ins);
            if ins.op_kind(1) == OpKind::Register {
                // A register bit offset is signed and may address memory far away.
                let o = sext(off, size) as i64;
                let unit = o >> bits.trailing_zeros();
                let la = base.wrapping_add((unit * size as i64) as u64);
                let v = self.read_lin(mem, la, size, Self::mem_ss(ins))?;
                (v, (o as u64) & (bits - 1), Some(la))
            } else {
                let v = self.read_lin(mem, base, size, Self::mem_ss(ins))?;
                (v, off & (bits - 1), Some(base))
            }
        } else {
            (self.rd(mem, ins, 0, size)?, off & (bits - 1), None)
        };
        let was = (val >> bit) & 1;
        if op != BitOp::Test {
            let nv = op.apply(val, bit);
            match la {
                Some(la) => self.write_lin(mem, la, size, nv, Self::mem_ss(ins))?,
                None => self.wr(mem, ins, 0, size, nv)?,
            }
        }
        let f = flags::bit_test(op.family(), was != 0, size, self.st.rflags, &self.undefined);
        self.set_status(f);
        Ok(())
    }

    /// `bsf`, `bsr`, and `tzcnt`/`lzcnt`, which count where CPUID has them and the
    /// recording host did not run them as bit scans ([`super::super::Quirks`]).
    pub(super) fn bit_scan(
        &mut self,
        mem: &mut GuestMemory,
        ins: &Instruction,
        op: ScanOp,
    ) -> R<()> {
        let size = op_size(ins, 0);
        let s = self.rd(mem, ins, 1, size)? & mask(size);
        let counting = !self.quirks.bit_scan_ignores_rep
            && ((op == ScanOp::Tzcnt && self.has_tzcnt) || (op == ScanOp::Lzcnt && self.has_lzcnt));
        if counting {
            return self.count_zeros(mem, ins, op == ScanOp::Tzcnt, s, size);
        }
        let forward = matches!(op, ScanOp::Bsf | ScanOp::Tzcnt);
        let family = if forward { Family::Bsf } else { Family::Bsr };
        let index = if s == 0 {
            // The destination is undefined: the recording host's rule says what it
            // became.
            let rule = self.undefined.zero_source[!forward as usize][size_index(size)];
            if rule == ZeroSourceDestination::UpperCleared && size == 4 {
                let r = ins.op_register(0);
                let old = self.reg_get(r);
                self.reg_set(r, old);
            }
            0
        } else {
            let i = if forward {
                s.trailing_zeros() as u64
            } else {
                63 - s.leading_zeros() as u64
            };
            self.wr(mem, ins, 0, size, i)?;
            i
        };
        let f = flags::bit_scan(family, s == 0, index, size, self.st.rflags, &self.undefined);
        self.set_status(f);
        Ok(())
    }

    /// `tzcnt` (`trailing`) or `lzcnt` of source `s`, counting.
    fn count_zeros(
        &mut self,
        mem: &mut GuestMemory,
        ins: &Instruction,
        trailing: bool,
        s: u64,
        size: usize,
    ) -> R<()> {
        let bits = size as u64 * 8;
        let r = if s == 0 {
            bits
        } else if trailing {
            s.trailing_zeros() as u64
        } else {
            s.leading_zeros() as u64 - (64 - bits)
        };
        self.wr(mem, ins, 0, size, r)?;
        let family = if trailing {
            Family::Tzcnt
        } else {
            Family::Lzcnt
        };
        let f = flags::count_zeros(family, s == 0, r, size, self.st.rflags, &self.undefined);
        self.set_status(f);
        Ok(())
    }

    pub(super) fn bswap(&mut self, ins: &Instruction) {
        let r = ins.op_register(0);
        let v = self.reg_get(r);
        let n = match reg_size(r) {
            8 => v.swap_bytes(),
            4 => (v as u32).swap_bytes() as u64,
            _ => 0,
        };
        self.reg_set(r, n);
    }
}
