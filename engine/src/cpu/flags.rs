//! RFLAGS bits and the exact flag results of the integer ALU.
//!
//! Every function takes and returns values masked to the operand size in bytes (1, 2,
//! 4 or 8) and returns the six status flags it defines. Flags that the architecture
//! leaves undefined are given the values the hosts these recordings come from produce
//! where that was measured (see the differential tests); the comments say which.

pub const CF: u64 = 1 << 0;
pub const FIXED1: u64 = 1 << 1;
pub const PF: u64 = 1 << 2;
pub const AF: u64 = 1 << 4;
pub const ZF: u64 = 1 << 6;
pub const SF: u64 = 1 << 7;
pub const TF: u64 = 1 << 8;
pub const IF: u64 = 1 << 9;
pub const DF: u64 = 1 << 10;
pub const OF: u64 = 1 << 11;
pub const IOPL: u64 = 3 << 12;
pub const NT: u64 = 1 << 14;
pub const RF: u64 = 1 << 16;
pub const VM: u64 = 1 << 17;
pub const AC: u64 = 1 << 18;
pub const VIF: u64 = 1 << 19;
pub const VIP: u64 = 1 << 20;
pub const ID: u64 = 1 << 21;

/// The six arithmetic status flags.
pub const STATUS: u64 = CF | PF | AF | ZF | SF | OF;

/// Bits of RFLAGS that software can change at CPL0 with `popf`/`iret`.
pub const WRITABLE: u64 = STATUS | TF | IF | DF | IOPL | NT | RF | AC | VIF | VIP | ID;

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

#[inline]
pub fn parity_even(v: u64) -> bool {
    // Fold the low byte to a nibble, then look its parity up in a 16-bit table (bit n
    // of 0x6996 is the odd parity of n): no popcnt instruction is assumed.
    let b = v as u8;
    let n = (b ^ (b >> 4)) & 0xf;
    (0x6996u16 >> n) & 1 == 0
}

/// SF, ZF and PF of a result.
#[inline]
pub fn szp(r: u64, size: usize) -> u64 {
    let r = r & mask(size);
    let mut f = 0;
    if r == 0 {
        f |= ZF;
    }
    if r & sign_bit(size) != 0 {
        f |= SF;
    }
    if parity_even(r) {
        f |= PF;
    }
    f
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

/// Flags of AND/OR/XOR/TEST: CF = OF = 0; AF is undefined and cleared (Intel).
#[inline]
pub fn logic(r: u64, size: usize) -> u64 {
    szp(r, size)
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

/// Shifts/rotates `a` by `count` (already masked to 5 or 6 bits). Returns the result and
/// the new RFLAGS (only status bits change). A zero count changes nothing.
#[inline]
pub fn shift(op: ShiftOp, a: u64, count: u32, size: usize, rflags: u64) -> (u64, u64) {
    let bits = size as u32 * 8;
    let m = mask(size);
    let a = a & m;
    if count == 0 {
        return (a, rflags);
    }
    let msb = |v: u64| (v >> (bits - 1)) & 1;
    let cf_in = rflags & CF;
    let mut f = rflags & !STATUS;
    let r;
    match op {
        ShiftOp::Shl => {
            // Counts below the width (every count of 32- and 64-bit operands) stay in
            // u64 arithmetic; 8- and 16-bit operands can be shifted by up to 31.
            let (wide, cf) = if count < bits {
                (a << count, (a >> (bits - count)) & 1)
            } else {
                let cf = if count == bits { a & 1 } else { 0 };
                (((a as u128) << count.min(127)) as u64, cf)
            };
            r = wide & m;
            // AF is architecturally undefined; the recording host (Intel, whose result
            // KVM's emulator passes through) sets it for every non-zero count.
            f |= szp(r, size) | AF | if cf != 0 { CF } else { 0 };
            if msb(r) ^ cf != 0 {
                f |= OF;
            }
        }
        ShiftOp::Shr => {
            r = if count >= 64 { 0 } else { a >> count };
            let cf = if count <= bits {
                (a >> (count - 1)) & 1
            } else {
                0
            };
            f |= szp(r, size) | AF | if cf != 0 { CF } else { 0 };
            // OF is defined for count 1 only (the original sign); other counts use the
            // same rule.
            if msb(a) != 0 {
                f |= OF;
            }
        }
        ShiftOp::Sar => {
            let s = sext(a, size) as i64;
            let c = count.min(63);
            r = ((s >> c) as u64) & m;
            let cf = ((s >> (c - 1).min(63)) & 1) as u64;
            f |= szp(r, size) | AF | if cf != 0 { CF } else { 0 };
        }
        ShiftOp::Rol => {
            let c = count % bits;
            r = if c == 0 {
                a
            } else {
                ((a << c) | (a >> (bits - c))) & m
            };
            let cf = r & 1;
            f |= (rflags & (SF | ZF | PF | AF)) | if cf != 0 { CF } else { 0 };
            if msb(r) ^ cf != 0 {
                f |= OF;
            }
        }
        ShiftOp::Ror => {
            let c = count % bits;
            r = if c == 0 {
                a
            } else {
                ((a >> c) | (a << (bits - c))) & m
            };
            let cf = msb(r);
            f |= (rflags & (SF | ZF | PF | AF)) | if cf != 0 { CF } else { 0 };
            if msb(r) ^ ((r >> (bits - 2)) & 1) != 0 {
                f |= OF;
            }
        }
        ShiftOp::Rcl | ShiftOp::Rcr => {
            let c = if bits < 32 { count % (bits + 1) } else { count };
            if c == 0 {
                // The masked count is not zero, so the flags are still written (with
                // unchanged values: CF and OF as computed for the identity rotation).
                let mut f2 = rflags;
                if op == ShiftOp::Rcl {
                    f2 = (f2 & !OF) | if msb(a) ^ (cf_in) != 0 { OF } else { 0 };
                } else {
                    f2 = (f2 & !OF)
                        | if msb(a) ^ ((a >> (bits - 2)) & 1) != 0 {
                            OF
                        } else {
                            0
                        };
                }
                return (a, f2);
            }
            // Rotate the (bits+1)-bit value CF:a.
            let w = bits + 1;
            let v = ((cf_in as u128) << bits) | a as u128;
            let wm = (1u128 << w) - 1;
            let rv = if op == ShiftOp::Rcl {
                ((v << c) | (v >> (w - c))) & wm
            } else {
                ((v >> c) | (v << (w - c))) & wm
            };
            r = (rv as u64) & m;
            let cf = ((rv >> bits) & 1) as u64;
            f |= (rflags & (SF | ZF | PF | AF)) | if cf != 0 { CF } else { 0 };
            let of = if op == ShiftOp::Rcl {
                msb(r) ^ cf
            } else {
                msb(r) ^ ((r >> (bits - 2)) & 1)
            };
            if of != 0 {
                f |= OF;
            }
        }
    }
    (r, f)
}

/// `shld`/`shrd` of `dst` with bits from `src` by `count` (already masked). Returns the
/// result and RFLAGS; a zero count changes nothing.
pub fn double_shift(
    left: bool,
    dst: u64,
    src: u64,
    count: u32,
    size: usize,
    rflags: u64,
) -> (u64, u64) {
    let bits = size as u32 * 8;
    let m = mask(size);
    let (dst, src) = (dst & m, src & m);
    if count == 0 {
        return (dst, rflags);
    }
    let msb = |v: u64| (v >> (bits - 1)) & 1;
    let (r, cf) = if size == 2 && count > 16 {
        // Undefined by the architecture; Intel CPUs (and so the recording hosts) shift
        // the 48-bit value dst:src:src (left) or src:src:dst (right).
        let (d, s) = (dst as u128, src as u128);
        if left {
            let w = (d << 32) | (s << 16) | s;
            (
                ((w << count) >> 32) as u64 & m,
                ((w >> (48 - count)) & 1) as u64,
            )
        } else {
            let w = (s << 32) | (s << 16) | d;
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
    let mut f = (rflags & !STATUS) | szp(r, size) | if cf != 0 { CF } else { 0 };
    if msb(r) ^ msb(dst) != 0 {
        f |= OF;
    }
    (r, f)
}

#[cfg(test)]
mod tests {
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
        assert_eq!(
            shift(ShiftOp::Shl, 0x80, 1, 1, 0),
            (0, CF | ZF | PF | OF | AF)
        );
        assert_eq!(shift(ShiftOp::Shr, 1, 1, 1, 0), (0, CF | ZF | PF | AF));
        assert_eq!(shift(ShiftOp::Sar, 0x80, 7, 1, 0).0, 0xff);
        assert_eq!(shift(ShiftOp::Rol, 0x81, 1, 1, 0).0, 0x03);
        assert_eq!(shift(ShiftOp::Rcr, 1, 1, 1, 0), (0, CF));
        assert_eq!(shift(ShiftOp::Rcl, 0x80, 1, 1, CF), (1, CF | OF));
        assert_eq!(double_shift(true, 0x1, 0x8000_0000, 1, 4, 0).0, 3);
        assert_eq!(double_shift(false, 0x1, 0x1, 1, 4, 0).0, 0x8000_0000);
    }
}
