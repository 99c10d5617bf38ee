//! The exact flag results of the integer ALU (and the RFLAGS bits, from
//! [`crate::arch::rflags`]).
//!
//! Every function takes and returns values masked to the operand size in bytes (1, 2,
//! 4 or 8). Flags that the architecture leaves undefined follow the recording host's
//! [`UndefinedRules`] (see [`super::undefined`]), which these functions take.

use super::undefined::{Family, FlagRule, UndefinedBehaviour, UndefinedRules, WideDoubleShift};

pub use crate::arch::rflags::*;

#[inline]
pub fn mask(size: usize) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

#[inline]
pub fn sign_bit(size: usize) -> u64 {
    1u64 << (size * 8 - 1)
}

/// Sign-extends the low `size` bytes of `v` to 64 bits.
#[inline]
pub fn sext(v: u64, size: usize) -> u64 {
    let sh = 64 - size as u32 * 8;
    (((v << sh) as i64) >> sh) as u64
}

/// PF of each low byte: [`PF`] where the number of set bits is even.
static PF_OF_BYTE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        if (b as u8).count_ones() & 1 == 0 {
            t[b] = PF as u8;
        }
        b += 1;
    }
    t
};

#[inline]
pub fn parity_even(v: u64) -> bool {
    PF_OF_BYTE[v as u8 as usize] != 0
}

/// SF, ZF and PF of a result (without branches: this is on the hot path of every
/// flag-setting instruction).
#[inline(always)]
pub fn szp(r: u64, size: usize) -> u64 {
    let r = r & mask(size);
    let zf = ((r == 0) as u64) << ZF.trailing_zeros();
    let sf = ((r >> (size * 8 - 1)) & 1) << SF.trailing_zeros();
    zf | sf | PF_OF_BYTE[r as u8 as usize] as u64
}

/// `a + b + carry`.
#[inline]
pub fn add(a: u64, b: u64, carry: bool, size: usize) -> (u64, u64) {
    let m = mask(size);
    let wide = a as u128 + b as u128 + carry as u128;
    let r = (wide as u64) & m;
    let mut f = szp(r, size);
    if wide > m as u128 {
        f |= CF;
    }
    if (a ^ r) & (b ^ r) & sign_bit(size) != 0 {
        f |= OF;
    }
    if (a ^ b ^ r) & 0x10 != 0 {
        f |= AF;
    }
    (r, f)
}

/// `a - b - borrow`.
#[inline]
pub fn sub(a: u64, b: u64, borrow: bool, size: usize) -> (u64, u64) {
    let m = mask(size);
    let r = a.wrapping_sub(b).wrapping_sub(borrow as u64) & m;
    let mut f = szp(r, size);
    if (a as u128) < b as u128 + borrow as u128 {
        f |= CF;
    }
    if (a ^ b) & (a ^ r) & sign_bit(size) != 0 {
        f |= OF;
    }
    if (a ^ b ^ r) & 0x10 != 0 {
        f |= AF;
    }
    (r, f)
}

/// Flags of AND/OR/XOR/TEST (`family`) with result `r`: CF = OF = 0, SF, ZF, PF from
/// the result; AF undefined.
#[inline(always)]
pub fn logic(family: Family, r: u64, size: usize, rflags: u64, rules: &UndefinedRules) -> u64 {
    rules
        .masks(family, size)
        .resolve(AF, rflags, szp(r, size), 0, 0)
}

/// The shift and rotate group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShiftOp {
    Rol,
    Ror,
    Rcl,
    Rcr,
    Shl,
    Shr,
    Sar,
}

/// OF set from bit 0 of `b` (branch-free: this is on the hot path of every shift).
#[inline(always)]
fn of_if(b: u64) -> u64 {
    (b & 1) << 11
}

/// CF set from bit 0 of `b`.
#[inline(always)]
fn cf_if(b: u64) -> u64 {
    b & 1
}

/// Bit `bits - 1` (the sign) of `v`.
#[inline(always)]
fn msb(v: u64, bits: u32) -> u64 {
    (v >> (bits - 1)) & 1
}

/// Bit `bits - 2` of `v`.
#[inline(always)]
fn below_msb(v: u64, bits: u32) -> u64 {
    (v >> (bits - 2)) & 1
}

/// A shift or rotate by a non-zero count before the rules pick its undefined flags:
/// the result, its family, the flags as defined (OF as the first one-bit step sets it,
/// AF 0, CF for counts past the width as the last bit out), the undefined ones, and the
/// OF of the last one-bit step.
struct Shifted {
    r: u64,
    family: Family,
    natural: u64,
    undefined: u64,
    last: u64,
}

/// The flags a shift leaves undefined: AF, OF for counts above 1, and for `shl`/`shr`
/// CF for counts from the width on.
#[inline(always)]
fn shift_undefined(count: u32, bits: u32, cf_too: bool) -> u64 {
    AF | if count > 1 { OF } else { 0 } | if cf_too && count >= bits { CF } else { 0 }
}

#[inline(always)]
fn shl(a: u64, count: u32, size: usize) -> Shifted {
    let bits = size as u32 * 8;
    // Counts below the width (every count of 32- and 64-bit operands) stay in u64
    // arithmetic; 8- and 16-bit operands can be shifted by up to 31.
    let (wide, cf) = if count < bits {
        (a << count, (a >> (bits - count)) & 1)
    } else {
        let cf = if count == bits { a & 1 } else { 0 };
        (((a as u128) << count.min(127)) as u64, cf)
    };
    let r = wide & mask(size);
    Shifted {
        r,
        family: Family::Shl,
        natural: szp(r, size) | cf_if(cf) | of_if(msb(a, bits) ^ below_msb(a, bits)),
        undefined: shift_undefined(count, bits, true),
        last: of_if(msb(r, bits) ^ cf),
    }
}

#[inline(always)]
fn shr(a: u64, count: u32, size: usize) -> Shifted {
    let bits = size as u32 * 8;
    let r = if count >= 64 { 0 } else { a >> count };
    let cf = if count <= bits {
        (a >> (count - 1)) & 1
    } else {
        0
    };
    Shifted {
        r,
        family: Family::Shr,
        natural: szp(r, size) | cf_if(cf) | of_if(msb(a, bits)),
        undefined: shift_undefined(count, bits, true),
        last: of_if(msb(a >> (count - 1).min(63), bits)),
    }
}

#[inline(always)]
fn sar(a: u64, count: u32, size: usize) -> Shifted {
    let s = sext(a, size) as i64;
    let c = count.min(63);
    let r = ((s >> c) as u64) & mask(size);
    let cf = ((s >> (c - 1).min(63)) & 1) as u64;
    Shifted {
        r,
        family: Family::Sar,
        natural: szp(r, size) | cf_if(cf),
        undefined: shift_undefined(count, size as u32 * 8, false),
        last: 0,
    }
}

/// `rol` (`left`) or `ror`; `old` holds the status flags before it.
#[inline(always)]
fn rotate(left: bool, a: u64, count: u32, size: usize, old: u64) -> Shifted {
    let bits = size as u32 * 8;
    let c = count % bits;
    let r = if c == 0 {
        a
    } else if left {
        ((a << c) | (a >> (bits - c))) & mask(size)
    } else {
        ((a >> c) | (a << (bits - c))) & mask(size)
    };
    let (family, cf, first, last) = if left {
        (
            Family::Rol,
            r,
            of_if(msb(a, bits) ^ below_msb(a, bits)),
            of_if(msb(r, bits) ^ r),
        )
    } else {
        (
            Family::Ror,
            msb(r, bits),
            of_if(a ^ msb(a, bits)),
            of_if(msb(r, bits) ^ below_msb(r, bits)),
        )
    };
    Shifted {
        r,
        family,
        natural: (old & !(CF | OF)) | cf_if(cf) | first,
        undefined: if count > 1 { OF } else { 0 },
        last,
    }
}

/// `rcl` (`left`) or `rcr` by `count`, which turns the value by `c` bits (not a
/// multiple of the width plus one).
#[inline(always)]
fn rotate_through_carry(left: bool, a: u64, count: u32, c: u32, size: usize, old: u64) -> Shifted {
    let bits = size as u32 * 8;
    // Rotate the (bits+1)-bit value CF:a.
    let w = bits + 1;
    let v = (((old & CF) as u128) << bits) | a as u128;
    let wm = (1u128 << w) - 1;
    let rv = if left {
        ((v << c) | (v >> (w - c))) & wm
    } else {
        ((v >> c) | (v << (w - c))) & wm
    };
    let r = (rv as u64) & mask(size);
    let cf = ((rv >> bits) & 1) as u64;
    let (family, first, last) = if left {
        (
            Family::Rcl,
            of_if(below_msb(a, bits) ^ msb(a, bits)),
            of_if(msb(r, bits) ^ cf),
        )
    } else {
        (
            Family::Rcr,
            of_if((old & CF) ^ msb(a, bits)),
            of_if(msb(r, bits) ^ below_msb(r, bits)),
        )
    };
    Shifted {
        r,
        family,
        natural: (old & !(CF | OF)) | cf_if(cf) | first,
        undefined: if count > 1 { OF } else { 0 },
        last,
    }
}

/// The status flags of a full turn of `rcl` (`left`) or `rcr` through CF: the value and
/// CF come back unchanged; only OF is in question.
#[inline(always)]
fn full_turn_flags(left: bool, a: u64, size: usize, old: u64, rules: &UndefinedRules) -> u64 {
    let bits = size as u32 * 8;
    let cf_in = old & CF;
    let (family, first, last) = if left {
        (
            Family::RclFullTurn,
            of_if(below_msb(a, bits) ^ msb(a, bits)),
            of_if(msb(a, bits) ^ cf_in),
        )
    } else {
        (
            Family::RcrFullTurn,
            of_if(cf_in ^ msb(a, bits)),
            of_if(msb(a, bits) ^ below_msb(a, bits)),
        )
    };
    let natural = (old & !OF) | first;
    rules.masks(family, size).resolve(OF, old, natural, last, 0)
}

/// The status flags a shift or rotate by `count` (already masked) of a `size`-byte
/// operand may change, those of them it leaves undefined, and the family whose rules
/// decide these (as [`shift`] computes them).
pub fn shift_flags(op: ShiftOp, count: u32, size: usize) -> (u64, u64, Option<Family>) {
    let bits = size as u32 * 8;
    if count == 0 {
        return (0, 0, None);
    }
    let rotate_undefined = if count > 1 { OF } else { 0 };
    match op {
        ShiftOp::Shl => (
            STATUS,
            shift_undefined(count, bits, true),
            Some(Family::Shl),
        ),
        ShiftOp::Shr => (
            STATUS,
            shift_undefined(count, bits, true),
            Some(Family::Shr),
        ),
        ShiftOp::Sar => (
            STATUS,
            shift_undefined(count, bits, false),
            Some(Family::Sar),
        ),
        ShiftOp::Rol => (CF | OF, rotate_undefined, Some(Family::Rol)),
        ShiftOp::Ror => (CF | OF, rotate_undefined, Some(Family::Ror)),
        ShiftOp::Rcl | ShiftOp::Rcr => {
            let left = op == ShiftOp::Rcl;
            if bits < 32 && count.is_multiple_of(bits + 1) {
                let family = if left {
                    Family::RclFullTurn
                } else {
                    Family::RcrFullTurn
                };
                (OF, OF, Some(family))
            } else {
                let family = if left { Family::Rcl } else { Family::Rcr };
                (CF | OF, rotate_undefined, Some(family))
            }
        }
    }
}

/// Shifts/rotates `a` by `count` (already masked to 5 or 6 bits). Returns the result and
/// the new RFLAGS (only status bits change). A zero count changes nothing.
///
/// The undefined flags ([`Family::Shl`] and the rest) follow `rules`: for OF after a
/// count above 1, the first step's OF is that of a one-bit shift of `a`; the last
/// step's is the one-bit formula applied to the result and CF.
#[inline(always)]
pub fn shift(
    op: ShiftOp,
    a: u64,
    count: u32,
    size: usize,
    rflags: u64,
    rules: &UndefinedRules,
) -> (u64, u64) {
    shift_by(op, a, count, size, rflags, Some(rules))
}

/// [`shift`] where the rules give every flag left undefined its natural value (see
/// `FlagMasks::is_natural`): the same result and flags without consulting them.
#[inline(always)]
pub fn shift_natural(op: ShiftOp, a: u64, count: u32, size: usize, rflags: u64) -> (u64, u64) {
    shift_by(op, a, count, size, rflags, None)
}

/// [`shift`] under `rules`, or (`None`) giving undefined flags their natural values.
#[inline(always)]
fn shift_by(
    op: ShiftOp,
    a: u64,
    count: u32,
    size: usize,
    rflags: u64,
    rules: Option<&UndefinedRules>,
) -> (u64, u64) {
    let bits = size as u32 * 8;
    let a = a & mask(size);
    if count == 0 {
        return (a, rflags);
    }
    let old = rflags & STATUS;
    let s = match op {
        ShiftOp::Shl => shl(a, count, size),
        ShiftOp::Shr => shr(a, count, size),
        ShiftOp::Sar => sar(a, count, size),
        ShiftOp::Rol | ShiftOp::Ror => rotate(op == ShiftOp::Rol, a, count, size, old),
        ShiftOp::Rcl | ShiftOp::Rcr => {
            let left = op == ShiftOp::Rcl;
            let c = if bits < 32 { count % (bits + 1) } else { count };
            if c == 0 {
                // Not a fast form: natural values through rules that give them.
                let natural;
                let rules = match rules {
                    Some(r) => r,
                    None => {
                        natural =
                            UndefinedRules::new(&UndefinedBehaviour::uniform(FlagRule::Result));
                        &natural
                    }
                };
                let f = full_turn_flags(left, a, size, old, rules);
                return (a, (rflags & !STATUS) | f);
            }
            rotate_through_carry(left, a, count, c, size, old)
        }
    };
    let Some(rules) = rules else {
        return (s.r, (rflags & !STATUS) | s.natural);
    };
    let sign = of_if(msb(s.r, bits) ^ msb(a, bits));
    let f = rules
        .masks(s.family, size)
        .resolve(s.undefined, old, s.natural, s.last, sign);
    (s.r, (rflags & !STATUS) | f)
}

/// The result of [`shift`] alone, for `shl`, `shr`, `sar`, `rol` and `ror` of a 32- or
/// 64-bit `a` by a count below the width (as the fast forms mask it): what a block
/// computes when nothing can read the flags.
#[inline(always)]
pub fn shift_result(op: ShiftOp, a: u64, count: u32, size: usize) -> u64 {
    let bits = size as u32 * 8;
    let (a, c) = (a & mask(size), count & (bits - 1));
    match op {
        ShiftOp::Shl => (a << c) & mask(size),
        ShiftOp::Shr => a >> c,
        ShiftOp::Sar => ((sext(a, size) as i64 >> c) as u64) & mask(size),
        ShiftOp::Rol if size == 4 => (a as u32).rotate_left(c) as u64,
        ShiftOp::Rol => a.rotate_left(c),
        ShiftOp::Ror if size == 4 => (a as u32).rotate_right(c) as u64,
        ShiftOp::Ror => a.rotate_right(c),
        // Not fast forms: the whole computation.
        ShiftOp::Rcl | ShiftOp::Rcr => shift(op, a, c, size, 0, &UndefinedRules::default()).0,
    }
}

/// `shld`/`shrd` of `dst` with bits from `src` by `count` (already masked). Returns the
/// result and RFLAGS; a zero count changes nothing. 16-bit counts above 16 follow the
/// rules' [`WideDoubleShift`].
pub fn double_shift(
    left: bool,
    dst: u64,
    src: u64,
    count: u32,
    size: usize,
    rflags: u64,
    rules: &UndefinedRules,
) -> (u64, u64) {
    let bits = size as u32 * 8;
    let m = mask(size);
    let (dst, src) = (dst & m, src & m);
    if count == 0 {
        return (dst, rflags);
    }
    let msb = |v: u64| (v >> (bits - 1)) & 1;
    let below_msb = |v: u64| (v >> (bits - 2)) & 1;
    let (r, cf) = if size == 2 && count > 16 {
        // Undefined by the architecture: a 48-bit value made of the operands is shifted.
        let (d, s) = (dst as u128, src as u128);
        let w = match (rules.wide_double_shift[!left as usize], left) {
            (WideDoubleShift::DstSrcSrc, true) => (d << 32) | (s << 16) | s,
            (WideDoubleShift::DstSrcSrc, false) => (s << 32) | (s << 16) | d,
            (WideDoubleShift::DstSrcDst, _) => (d << 32) | (s << 16) | d,
        };
        if left {
            (
                ((w << count) >> 32) as u64 & m,
                ((w >> (48 - count)) & 1) as u64,
            )
        } else {
            (((w >> count) as u64) & m, ((w >> (count - 1)) & 1) as u64)
        }
    } else if left {
        // Concatenate dst:src (2*bits wide) and take the top `bits` after shifting.
        let v = ((dst as u128) << bits) | src as u128;
        let sh = v << count;
        let r = ((sh >> bits) as u64) & m;
        let cf = ((v >> (2 * bits - count)) & 1) as u64;
        (r, cf)
    } else {
        let v = ((src as u128) << bits) | dst as u128;
        let r = ((v >> count) as u64) & m;
        let cf = ((v >> (count - 1)) & 1) as u64;
        (r, cf)
    };
    let sign = of_if(msb(r) ^ msb(dst));
    let (family, first, last) = if left {
        (
            Family::Shld,
            of_if(below_msb(dst) ^ msb(dst)),
            of_if(msb(r) ^ cf),
        )
    } else {
        (
            Family::Shrd,
            of_if(src ^ msb(dst)),
            of_if(msb(r) ^ below_msb(r)),
        )
    };
    let undefined = AF | if count > 1 { OF } else { 0 };
    // OF as the first one-bit step sets it (for a count of 1 that is the sign change).
    let natural = szp(r, size) | cf_if(cf) | first;
    let f = rules
        .masks(family, size)
        .resolve(undefined, rflags & STATUS, natural, last, sign);
    (r, (rflags & !STATUS) | f)
}

/// Status flags of `mul`/`imul` (`family`) whose low half is `low`: CF = OF = `overflow`;
/// SF, ZF, AF and PF undefined ("result": SF, ZF and PF of `low`).
#[inline]
pub fn multiply(
    family: Family,
    low: u64,
    size: usize,
    overflow: bool,
    rflags: u64,
    rules: &UndefinedRules,
) -> u64 {
    let natural = szp(low, size) | if overflow { CF | OF } else { 0 };
    rules
        .masks(family, size)
        .resolve(SF | ZF | AF | PF, rflags, natural, 0, 0)
}

/// Status flags of `div`/`idiv` (`family`) with quotient `quotient`: all undefined
/// ("result": SF, ZF and PF of the quotient).
pub fn divide(
    family: Family,
    quotient: u64,
    size: usize,
    rflags: u64,
    rules: &UndefinedRules,
) -> u64 {
    rules
        .masks(family, size)
        .resolve(STATUS, rflags, szp(quotient, size), 0, 0)
}

/// Status flags of `bsf`/`bsr` (`family`): ZF = source zero; CF, OF, SF, AF, PF
/// undefined ("result": SF and PF of the bit index, 0 for a zero source).
pub fn bit_scan(
    family: Family,
    source_zero: bool,
    index: u64,
    size: usize,
    rflags: u64,
    rules: &UndefinedRules,
) -> u64 {
    let natural = (szp(index, size) & !ZF) | if source_zero { ZF } else { 0 };
    rules
        .masks(family, size)
        .resolve(CF | OF | SF | AF | PF, rflags, natural, 0, 0)
}

/// Status flags of `tzcnt`/`lzcnt` (`family`) that count: CF = source zero, ZF = count
/// zero; OF, SF, AF, PF undefined ("result": SF and PF of the count).
pub fn count_zeros(
    family: Family,
    source_zero: bool,
    count: u64,
    size: usize,
    rflags: u64,
    rules: &UndefinedRules,
) -> u64 {
    let natural = szp(count, size) | if source_zero { CF } else { 0 };
    rules
        .masks(family, size)
        .resolve(OF | SF | AF | PF, rflags, natural, 0, 0)
}

/// Status flags of `bt`/`bts`/`btr`/`btc` (`family`): CF = the bit; OF, SF, AF, PF
/// undefined; ZF unchanged.
pub fn bit_test(
    family: Family,
    bit: bool,
    size: usize,
    rflags: u64,
    rules: &UndefinedRules,
) -> u64 {
    let natural = (rflags & ZF) | if bit { CF } else { 0 };
    rules
        .masks(family, size)
        .resolve(OF | SF | AF | PF, rflags, natural, 0, 0)
}

#[cfg(test)]
mod tests {
    use super::super::undefined::probe::Rng;

    /// SF, ZF and PF as the architecture defines them, for every size.
    #[test]
    fn szp_is_sign_zero_and_parity() {
        use super::*;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for i in 0..4000u64 {
            let x = rng.next();
            let v = if i % 7 == 0 { x & 0xff00 } else { x };
            for size in [1, 2, 4, 8] {
                let r = v & mask(size);
                let mut want = 0;
                if r == 0 {
                    want |= ZF;
                }
                if r >> (size * 8 - 1) & 1 == 1 {
                    want |= SF;
                }
                if (r & 0xff).count_ones() & 1 == 0 {
                    want |= PF;
                }
                assert_eq!(szp(v, size), want, "{v:#x}, size {size}");
            }
        }
    }

    #[test]
    fn parity_matches_popcount() {
        for v in 0..=255u64 {
            assert_eq!(
                super::parity_even(v | 0xff00),
                v.count_ones() % 2 == 0,
                "{v:#x}"
            );
        }
    }

    use super::*;

    /// `shift_result` is `shift`'s result for every fast-form operation, size and count.
    #[test]
    fn shift_result_is_the_result_of_shift() {
        let rules = UndefinedRules::default();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200 {
            let x = rng.next();
            for op in [
                ShiftOp::Shl,
                ShiftOp::Shr,
                ShiftOp::Sar,
                ShiftOp::Rol,
                ShiftOp::Ror,
            ] {
                for size in [4, 8] {
                    for count in 0..(size as u32 * 8) {
                        assert_eq!(
                            shift_result(op, x, count, size),
                            shift(op, x, count, size, 0, &rules).0,
                            "{op:?} {x:#x} by {count}, size {size}"
                        );
                    }
                }
            }
        }
    }

    /// `shift_natural` is `shift` wherever the rules give every flag the shift leaves
    /// undefined its natural value (`FlagMasks::is_natural`), under rule tables where
    /// they do and do not, whatever the flags before.
    #[test]
    fn shift_natural_is_shift_where_the_rules_are_natural() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut checked = 0;
        for table in [
            UndefinedBehaviour::uniform(FlagRule::Result),
            UndefinedBehaviour::uniform(FlagRule::Clear),
            UndefinedBehaviour::uniform(FlagRule::Keep),
            UndefinedBehaviour::legacy(),
        ] {
            let rules = UndefinedRules::new(&table);
            for _ in 0..40 {
                let x = rng.next();
                let rflags = ((x >> 7) & STATUS) | FIXED1;
                for op in [
                    ShiftOp::Shl,
                    ShiftOp::Shr,
                    ShiftOp::Sar,
                    ShiftOp::Rol,
                    ShiftOp::Ror,
                ] {
                    for size in [4, 8] {
                        for count in 0..(size as u32 * 8) {
                            let (_, undefined, family) = shift_flags(op, count, size);
                            let natural = family.is_none_or(|f| {
                                rules.masks(f, size).is_natural(undefined, f.natural_zero())
                            });
                            if !natural {
                                continue;
                            }
                            checked += 1;
                            assert_eq!(
                                shift_natural(op, x, count, size, rflags),
                                shift(op, x, count, size, rflags, &rules),
                                "{op:?} {x:#x} by {count}, size {size}, {table:?}"
                            );
                        }
                    }
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    #[test]
    fn add_sub_boundaries() {
        assert_eq!(add(0x7f, 1, false, 1), (0x80, SF | OF | AF));
        assert_eq!(add(0xff, 1, false, 1), (0, ZF | CF | AF | PF));
        assert_eq!(sub(0, 1, false, 8), (u64::MAX, SF | CF | AF | PF));
        assert_eq!(sub(0x8000_0000, 1, false, 4).1, OF | AF | PF);
        assert_eq!(add(u64::MAX, 0, true, 8), (0, ZF | CF | AF | PF));
        assert_eq!(sub(5, 5, true, 2), (0xffff, SF | CF | AF | PF));
    }

    #[test]
    fn shifts() {
        let legacy = UndefinedRules::default();
        let l = &legacy;
        assert_eq!(
            shift(ShiftOp::Shl, 0x80, 1, 1, 0, l),
            (0, CF | ZF | PF | OF | AF)
        );
        assert_eq!(shift(ShiftOp::Shr, 1, 1, 1, 0, l), (0, CF | ZF | PF | AF));
        assert_eq!(shift(ShiftOp::Sar, 0x80, 7, 1, 0, l).0, 0xff);
        assert_eq!(shift(ShiftOp::Rol, 0x81, 1, 1, 0, l).0, 0x03);
        assert_eq!(shift(ShiftOp::Rcr, 1, 1, 1, 0, l), (0, CF));
        assert_eq!(shift(ShiftOp::Rcl, 0x80, 1, 1, CF, l), (1, CF | OF));
        assert_eq!(double_shift(true, 0x1, 0x8000_0000, 1, 4, 0, l).0, 3);
        assert_eq!(double_shift(false, 0x1, 0x1, 1, 4, 0, l).0, 0x8000_0000);
    }

    /// The rules decide exactly the undefined flags: the defined ones and the results
    /// are the same under any rules.
    #[test]
    fn rules_change_only_undefined_flags() {
        use crate::cpu::undefined::{FlagRule, UndefinedBehaviour};
        let all = [
            FlagRule::Keep,
            FlagRule::Clear,
            FlagRule::Set,
            FlagRule::Result,
            FlagRule::FirstStep,
            FlagRule::LastStep,
            FlagRule::SignChange,
        ];
        let rules: Vec<UndefinedRules> = all
            .iter()
            .map(|&r| UndefinedRules::new(&UndefinedBehaviour::uniform(r)))
            .collect();
        // shr by 1: only AF is undefined.
        for r in &rules {
            let (v, f) = shift(ShiftOp::Shr, 0x81, 1, 1, AF | ZF, r);
            assert_eq!((v, f & !AF), (0x40, CF | OF));
        }
        // shr by 4: AF and OF are undefined; the first step's OF is the old sign.
        let (_, f) = shift(ShiftOp::Shr, 0x80, 4, 1, 0, &rules[4]);
        assert_eq!(f & OF, OF);
        let (_, f) = shift(ShiftOp::Shr, 0x80, 4, 1, 0, &rules[5]);
        assert_eq!(f & OF, 0);
        // shl by 3: the last step's OF is msb(result) ^ CF, the first msb ^ bit 6.
        let (v, f) = shift(ShiftOp::Shl, 0x10, 3, 1, 0, &rules[5]);
        assert_eq!((v, f & (OF | CF)), (0x80, OF));
        let (_, f) = shift(ShiftOp::Shl, 0x10, 3, 1, 0, &rules[4]);
        assert_eq!(f & OF, 0);
        // A full turn of rcl al by 9: kept OF under Keep, computed under LastStep.
        let (v, f) = shift(ShiftOp::Rcl, 0x80, 9, 1, OF, &rules[0]);
        assert_eq!((v, f), (0x80, OF));
        let (_, f) = shift(ShiftOp::Rcl, 0x80, 9, 1, OF | CF, &rules[5]);
        assert_eq!(f, CF);
        // mul: CF/OF are the overflow whatever the rules; ZF of a zero low half.
        for r in &rules {
            assert_eq!(multiply(Family::Mul, 0, 2, true, 0, r) & (CF | OF), CF | OF);
        }
        assert_eq!(multiply(Family::Mul, 0, 2, false, 0, &rules[3]), ZF | PF);
        assert_eq!(multiply(Family::Mul, 0, 2, false, 0, &rules[1]), 0);
    }

    /// `shift_flags` against `shift`: a shift changes no status flag outside those it
    /// names, the defined ones do not depend on the flags before, and the undefined
    /// ones are the flags before where the rules keep them.
    #[test]
    fn shift_flags_name_what_shift_writes() {
        use crate::cpu::undefined::{FlagRule, UndefinedBehaviour};
        let keep = UndefinedRules::new(&UndefinedBehaviour::uniform(FlagRule::Keep));
        let ops = [
            ShiftOp::Rol,
            ShiftOp::Ror,
            ShiftOp::Rcl,
            ShiftOp::Rcr,
            ShiftOp::Shl,
            ShiftOp::Shr,
            ShiftOp::Sar,
        ];
        let values = [
            0u64,
            1,
            0x80,
            0x8000,
            0x8000_0000,
            0x8000_0000_0000_0000,
            0x5a5a_a5a5_0ff0_f00f,
            u64::MAX,
        ];
        let mut undefined_seen = 0;
        for op in ops {
            for size in [1usize, 2, 4, 8] {
                let max = if size == 8 { 63 } else { 31 };
                for count in 0..=max {
                    let (written, undefined, family) = shift_flags(op, count, size);
                    assert_eq!(undefined & !written, 0, "{op:?} {size} {count}");
                    assert_eq!(family.is_some(), written != 0, "{op:?} {size} {count}");
                    if let Some(f) = family {
                        assert_eq!(undefined & !f.undefined_flags(), 0, "{op:?} {f:?}");
                    }
                    undefined_seen |= undefined;
                    for &a in &values {
                        let a = a & mask(size);
                        let all = [0, STATUS, CF, OF | ZF, SF | AF | PF];
                        for rules in [&UndefinedRules::default(), &keep] {
                            let results: Vec<u64> = all
                                .iter()
                                .map(|&old| shift(op, a, count, size, old, rules).1)
                                .collect();
                            for (&old, &f) in all.iter().zip(&results) {
                                let what = format!(
                                    "{op:?} size {size} count {count} a {a:#x} old {old:#x}"
                                );
                                assert_eq!(f & !written, old & !written, "{what}: outside");
                                // rcl/rcr read CF: compared with a result from the same CF.
                                let same = if matches!(op, ShiftOp::Rcl | ShiftOp::Rcr) {
                                    all.iter().position(|&o| o & CF == old & CF).unwrap_or(0)
                                } else {
                                    0
                                };
                                let defined = written & !undefined;
                                assert_eq!(f & defined, results[same] & defined, "{what}: defined");
                                if std::ptr::eq(rules, &keep) {
                                    assert_eq!(f & undefined, old & undefined, "{what}: kept");
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(undefined_seen, CF | OF | AF);
    }

    #[test]
    fn wide_double_shifts_follow_the_rule() {
        use crate::cpu::undefined::{FlagRule, UndefinedBehaviour};
        let mut b = UndefinedBehaviour::uniform(FlagRule::Clear);
        b.wide_double_shift = [WideDoubleShift::DstSrcDst; 2];
        let rotate = UndefinedRules::new(&b);
        let legacy = UndefinedRules::default();
        // Measured on a host that rotates: shld dx=0xfe1b, bx=0x00ff, 19 -> 0x07ff;
        // shrd 0x081e, 0, 20 -> 0xe000.
        assert_eq!(double_shift(true, 0xfe1b, 0xff, 19, 2, 0, &rotate).0, 0x7ff);
        assert_eq!(double_shift(false, 0x81e, 0, 20, 2, 0, &rotate).0, 0xe000);
        assert_eq!(double_shift(true, 0xfe1b, 0xff, 19, 2, 0, &legacy).0, 0x7f8);
    }
}
