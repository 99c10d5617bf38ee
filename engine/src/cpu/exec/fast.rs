//! Fast forms: the commonest instructions, pre-classified at decode time into a compact
//! [`FastOp`] that carries everything the instruction needs (registers, immediate,
//! memory operand), so that executing them neither copies nor consults the decoded
//! `Instruction`. Every fast form does exactly what [`Cpu::exec`] does for it; anything
//! else is [`Fast::Generic`] and goes through the general dispatch.

use iced_x86::{Code, ConditionCode, Instruction, Mnemonic, OpKind, Register};

use super::super::flags::{self, CF, ShiftOp, mask, sext};
use super::super::{Cpu, R, Retired};
use super::{AL, EAX, R15, R15L, RAX};
use crate::memory::GuestMemory;

/// ALU operations with a fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AluOp {
    Add,
    Or,
    And,
    Sub,
    Xor,
    Cmp,
    Test,
}

/// A pre-classified instruction form. Register operands are GPRs given by index with
/// an operand size of 4 or 8 bytes unless a form says otherwise; forms with a memory
/// operand find it in [`FastOp::mem`], immediates in [`FastOp::imm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fast {
    Generic,
    Nop,
    /// mov reg, reg
    MovRR {
        d: u8,
        s: u8,
        size: u8,
    },
    /// mov reg, imm
    MovRI {
        d: u8,
        size: u8,
    },
    /// mov reg, [mem]
    MovRM {
        d: u8,
        size: u8,
    },
    /// mov [mem], reg
    MovMR {
        s: u8,
        size: u8,
    },
    /// mov [mem], imm; `size` 1, 2, 4 or 8
    MovMI {
        size: u8,
    },
    /// movzx/movsx/movsxd reg, reg or [mem] (`s` = [`NO_REG`]); the source is 1, 2 or 4
    /// bytes (a register source never a high-byte register)
    Extend {
        d: u8,
        s: u8,
        size: u8,
        src_size: u8,
        signed: bool,
    },
    /// op reg, reg
    AluRR {
        op: AluOp,
        d: u8,
        s: u8,
        size: u8,
    },
    /// op reg, imm
    AluRI {
        op: AluOp,
        d: u8,
        size: u8,
    },
    /// op reg, [mem]
    AluRM {
        op: AluOp,
        d: u8,
        size: u8,
    },
    /// op [mem], reg (`s`) or op [mem], imm (`s` = [`NO_REG`]); `size` 1, 2, 4 or 8
    AluM {
        op: AluOp,
        s: u8,
        size: u8,
    },
    /// imul reg, reg or [mem] (`s` = [`NO_REG`]), with an immediate third operand if
    /// `with_imm`
    Imul {
        d: u8,
        s: u8,
        size: u8,
        with_imm: bool,
    },
    /// inc/dec reg
    IncDec {
        d: u8,
        size: u8,
        inc: bool,
    },
    /// shift or rotate reg by an immediate count (already masked, in `imm`)
    ShiftRI {
        op: ShiftOp,
        d: u8,
        size: u8,
    },
    /// lea reg, [mem]
    Lea {
        d: u8,
        size: u8,
    },
    /// The relative branches: the target is RIP + `imm`.
    Jcc(ConditionCode),
    JmpRel,
    CallRel,
    Ret,
    Push {
        s: u8,
    },
    Pop {
        d: u8,
    },
}

/// No register: an immediate or memory source.
const NO_REG: u8 = u8::MAX;
/// [`MemOperand::base`] for RIP-relative addressing.
const BASE_RIP: u8 = 16;
const SEG_FLAT: u8 = 0;
const SEG_FS: u8 = 1;
const SEG_GS: u8 = 2;

/// A memory operand with 64-bit addressing, evaluated without the decoded instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemOperand {
    /// The displacement as decoded at IP 0: for RIP-relative operands it is relative to
    /// the start of the instruction, so the instruction's RIP is added.
    disp: u64,
    /// A GPR index, [`BASE_RIP`] or [`NO_REG`].
    base: u8,
    /// A GPR index or [`NO_REG`].
    index: u8,
    scale_shift: u8,
    /// [`SEG_FS`], [`SEG_GS`] or [`SEG_FLAT`] (base 0 in 64-bit mode).
    seg: u8,
    /// A stack-segment access (#SS rather than #GP on a non-canonical address).
    ss: bool,
}

impl MemOperand {
    const NONE: MemOperand = MemOperand {
        disp: 0,
        base: NO_REG,
        index: NO_REG,
        scale_shift: 0,
        seg: SEG_FLAT,
        ss: false,
    };

    /// The memory operand of `ins` if it uses 64-bit addressing (no 32-bit address
    /// registers, which truncate the address).
    fn of(ins: &Instruction) -> Option<MemOperand> {
        let gpr64 = |r: Register| match r {
            Register::None => Some(NO_REG),
            Register::RIP => Some(BASE_RIP),
            r if (RAX..=R15).contains(&(r as u32)) => Some((r as u32 - RAX) as u8),
            _ => None,
        };
        let base = gpr64(ins.memory_base())?;
        let index = gpr64(ins.memory_index())?;
        if index == BASE_RIP {
            return None;
        }
        let seg = match ins.memory_segment() {
            Register::FS => SEG_FS,
            Register::GS => SEG_GS,
            _ => SEG_FLAT,
        };
        Some(MemOperand {
            disp: ins.memory_displacement64(),
            base,
            index,
            scale_shift: ins.memory_index_scale().trailing_zeros() as u8,
            seg,
            ss: ins.memory_segment() == Register::SS,
        })
    }
}

/// A decoded instruction's fast form with its operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FastOp {
    pub(crate) form: Fast,
    /// Length of the instruction in bytes.
    pub(crate) len: u8,
    mem: MemOperand,
    /// The immediate masked to the operand size, the shift count, or the branch
    /// displacement from RIP.
    imm: u64,
}

impl FastOp {
    /// The form of an instruction that takes the general path.
    pub(crate) fn generic(len: usize) -> FastOp {
        FastOp {
            form: Fast::Generic,
            len: len as u8,
            mem: MemOperand::NONE,
            imm: 0,
        }
    }
}

#[inline]
fn alu_result(op: AluOp, a: u64, b: u64, size: usize) -> (u64, u64) {
    match op {
        AluOp::Add => flags::add(a, b, false, size),
        AluOp::Sub | AluOp::Cmp => flags::sub(a, b, false, size),
        AluOp::And | AluOp::Test => (a & b, flags::logic(a & b, size)),
        AluOp::Or => (a | b, flags::logic(a | b, size)),
        AluOp::Xor => (a ^ b, flags::logic(a ^ b, size)),
    }
}

/// The index and size of a 32- or 64-bit GPR.
fn gpr32_64(r: Register) -> Option<(u8, u8)> {
    match r as u32 {
        v @ EAX..RAX => Some(((v - EAX) as u8, 4)),
        v @ RAX..=R15 => Some(((v - RAX) as u8, 8)),
        _ => None,
    }
}

/// The index and size of a GPR usable as the source of a zero or sign extension: an
/// 8-bit register other than AH, CH, DH, BH, or a 16- or 32-bit register.
fn gpr_extend_source(r: Register) -> Option<(u8, u8)> {
    const AH: u32 = Register::AH as u32;
    const SPL: u32 = Register::SPL as u32;
    const AX: u32 = Register::AX as u32;
    match r as u32 {
        v @ AL..AH => Some(((v - AL) as u8, 1)),
        v @ SPL..=R15L => Some(((v - AL - 4) as u8, 1)),
        v @ AX..EAX => Some(((v - AX) as u8, 2)),
        v @ EAX..RAX => Some(((v - EAX) as u8, 4)),
        _ => None,
    }
}

/// Classifies a decoded instruction (see [`Fast`]).
pub(crate) fn classify(ins: &Instruction) -> FastOp {
    let generic = FastOp::generic(ins.len());
    if ins.has_lock_prefix()
        || ins.has_rep_prefix()
        || ins.has_repne_prefix()
        || ins.code() == Code::INVALID
    {
        return generic;
    }
    let mem = if (0..ins.op_count()).any(|n| ins.op_kind(n) == OpKind::Memory) {
        match MemOperand::of(ins) {
            Some(m) => m,
            None => return generic,
        }
    } else {
        MemOperand::NONE
    };
    let Some((form, imm)) = classify_form(ins) else {
        return generic;
    };
    FastOp {
        form,
        len: ins.len() as u8,
        mem,
        imm,
    }
}

fn classify_form(ins: &Instruction) -> Option<(Fast, u64)> {
    use Mnemonic as M;
    let reg = |n: u32| {
        if ins.op_kind(n) == OpKind::Register {
            gpr32_64(ins.op_register(n))
        } else {
            None
        }
    };
    let imm = |n: u32| {
        matches!(
            ins.op_kind(n),
            OpKind::Immediate8
                | OpKind::Immediate16
                | OpKind::Immediate32
                | OpKind::Immediate64
                | OpKind::Immediate8to32
                | OpKind::Immediate8to64
                | OpKind::Immediate32to64
        )
    };
    let memop = |n: u32| ins.op_kind(n) == OpKind::Memory;
    let msize = ins.memory_size().size();
    let imm1 = |size: usize| ins.immediate(1) & mask(size);
    let m = ins.mnemonic();
    let two = ins.op_count() == 2;
    let form = match m {
        M::Nop | M::Pause | M::Endbr64 => (Fast::Nop, 0),
        M::Mov if two => match (reg(0), reg(1)) {
            (Some((d, a)), Some((s, b))) if a == b => (Fast::MovRR { d, s, size: a }, 0),
            (Some((d, size)), None) if imm(1) => (Fast::MovRI { d, size }, imm1(size as usize)),
            (Some((d, size)), None) if memop(1) && msize == size as usize => {
                (Fast::MovRM { d, size }, 0)
            }
            (None, Some((s, size))) if memop(0) && msize == size as usize => {
                (Fast::MovMR { s, size }, 0)
            }
            (None, None) if memop(0) && imm(1) && matches!(msize, 1 | 2 | 4 | 8) => {
                (Fast::MovMI { size: msize as u8 }, imm1(msize))
            }
            _ => return None,
        },
        M::Movzx | M::Movsx | M::Movsxd if two => {
            let (d, size) = reg(0)?;
            let (s, src_size) = match ins.op_kind(1) {
                OpKind::Register => gpr_extend_source(ins.op_register(1))?,
                OpKind::Memory if matches!(msize, 1 | 2 | 4) => (NO_REG, msize as u8),
                _ => return None,
            };
            let form = Fast::Extend {
                d,
                s,
                size,
                src_size,
                signed: m != M::Movzx,
            };
            (form, 0)
        }
        M::Add | M::Or | M::And | M::Sub | M::Xor | M::Cmp | M::Test if two => {
            let op = match m {
                M::Add => AluOp::Add,
                M::Or => AluOp::Or,
                M::And => AluOp::And,
                M::Sub => AluOp::Sub,
                M::Xor => AluOp::Xor,
                M::Cmp => AluOp::Cmp,
                _ => AluOp::Test,
            };
            match (reg(0), reg(1)) {
                (Some((d, a)), Some((s, b))) if a == b => (Fast::AluRR { op, d, s, size: a }, 0),
                (Some((d, size)), None) if imm(1) => {
                    (Fast::AluRI { op, d, size }, imm1(size as usize))
                }
                (Some((d, size)), None) if memop(1) && msize == size as usize => {
                    (Fast::AluRM { op, d, size }, 0)
                }
                (None, Some((s, size))) if memop(0) && msize == size as usize => {
                    (Fast::AluM { op, s, size }, 0)
                }
                (None, None) if memop(0) && imm(1) && matches!(msize, 1 | 2 | 4 | 8) => {
                    let form = Fast::AluM {
                        op,
                        s: NO_REG,
                        size: msize as u8,
                    };
                    (form, imm1(msize))
                }
                _ => return None,
            }
        }
        M::Imul if matches!(ins.op_count(), 2 | 3) => {
            let (d, size) = reg(0)?;
            let s = match ins.op_kind(1) {
                OpKind::Register => match reg(1)? {
                    (s, sz) if sz == size => s,
                    _ => return None,
                },
                OpKind::Memory if msize == size as usize => NO_REG,
                _ => return None,
            };
            let with_imm = ins.op_count() == 3;
            if with_imm && !imm(2) {
                return None;
            }
            let value = if with_imm {
                ins.immediate(2) & mask(size as usize)
            } else {
                0
            };
            let form = Fast::Imul {
                d,
                s,
                size,
                with_imm,
            };
            (form, value)
        }
        M::Inc | M::Dec if ins.op_count() == 1 => {
            let (d, size) = reg(0)?;
            let form = Fast::IncDec {
                d,
                size,
                inc: m == M::Inc,
            };
            (form, 0)
        }
        M::Shl | M::Sal | M::Shr | M::Sar | M::Rol | M::Ror if two => {
            let op = match m {
                M::Shl | M::Sal => ShiftOp::Shl,
                M::Shr => ShiftOp::Shr,
                M::Sar => ShiftOp::Sar,
                M::Rol => ShiftOp::Rol,
                _ => ShiftOp::Ror,
            };
            let (d, size) = reg(0)?;
            if ins.op_kind(1) != OpKind::Immediate8 {
                return None;
            }
            let count = (ins.immediate(1) & 0xff) & if size == 8 { 63 } else { 31 };
            (Fast::ShiftRI { op, d, size }, count)
        }
        M::Lea => {
            let (d, size) = reg(0)?;
            (Fast::Lea { d, size }, 0)
        }
        _ if ins.is_jcc_short_or_near() => (Fast::Jcc(ins.condition_code()), ins.near_branch64()),
        M::Jmp if matches!(ins.code(), Code::Jmp_rel8_64 | Code::Jmp_rel32_64) => {
            (Fast::JmpRel, ins.near_branch64())
        }
        M::Call if ins.code() == Code::Call_rel32_64 => (Fast::CallRel, ins.near_branch64()),
        M::Ret if ins.code() == Code::Retnq => (Fast::Ret, 0),
        M::Push if ins.code() == Code::Push_r64 => match reg(0)? {
            (s, 8) => (Fast::Push { s }, 0),
            _ => return None,
        },
        M::Pop if ins.code() == Code::Pop_r64 => match reg(0)? {
            (d, 8) => (Fast::Pop { d }, 0),
            _ => return None,
        },
        _ => return None,
    };
    Some(form)
}

impl Cpu {
    #[inline(always)]
    fn set_gpr(&mut self, i: u8, size: u8, v: u64) {
        // Only 32- and 64-bit registers: a 32-bit write zero-extends.
        self.st.gpr[i as usize & 15] = if size == 4 { v & 0xffff_ffff } else { v };
    }

    #[inline(always)]
    fn get_gpr(&self, i: u8, size: u8) -> u64 {
        let v = self.st.gpr[i as usize & 15];
        if size == 4 { v & 0xffff_ffff } else { v }
    }

    #[inline(always)]
    fn alu(&mut self, op: AluOp, a: u64, b: u64, size: usize) -> (u64, bool) {
        let (r, f) = alu_result(op, a, b, size);
        self.set_status(f);
        (r, !matches!(op, AluOp::Cmp | AluOp::Test))
    }

    /// The effective address of a fast form's memory operand (no segment base).
    #[inline(always)]
    fn fast_ea(&self, m: &MemOperand) -> u64 {
        let mut a = m.disp;
        if (m.base as usize) < 16 {
            a = a.wrapping_add(self.st.gpr[m.base as usize]);
        } else if m.base == BASE_RIP {
            a = a.wrapping_add(self.st.rip);
        }
        if (m.index as usize) < 16 {
            a = a.wrapping_add(self.st.gpr[m.index as usize] << m.scale_shift);
        }
        a
    }

    /// The linear address of a fast form's memory operand.
    #[inline(always)]
    fn fast_la(&self, m: &MemOperand) -> u64 {
        let a = self.fast_ea(m);
        match m.seg {
            SEG_FLAT => a,
            SEG_FS => a.wrapping_add(self.st.seg[crate::state::seg::FS].base),
            _ => a.wrapping_add(self.st.seg[crate::state::seg::GS].base),
        }
    }

    #[inline(always)]
    fn fast_read(&mut self, mem: &mut GuestMemory, m: &MemOperand, size: usize) -> R<u64> {
        let la = self.fast_la(m);
        self.read_lin(mem, la, size, m.ss)
    }

    /// Executes an instruction of a fast form other than [`Fast::Generic`] (the same
    /// effects as [`Cpu::exec`]).
    #[inline(always)]
    pub(crate) fn exec_fast(&mut self, mem: &mut GuestMemory, op: &FastOp) -> R<Retired> {
        match op.form {
            Fast::Generic => unreachable!("generic instructions take Cpu::exec"),
            Fast::Nop => {}
            Fast::MovRR { d, s, size } => {
                let v = self.get_gpr(s, size);
                self.set_gpr(d, size, v);
            }
            Fast::MovRI { d, size } => self.set_gpr(d, size, op.imm),
            Fast::MovRM { d, size } => {
                let v = self.fast_read(mem, &op.mem, size as usize)?;
                self.set_gpr(d, size, v);
            }
            Fast::MovMR { s, size } => {
                let la = self.fast_la(&op.mem);
                let v = self.get_gpr(s, size);
                self.write_lin(mem, la, size as usize, v, op.mem.ss)?;
            }
            Fast::MovMI { size } => {
                let la = self.fast_la(&op.mem);
                self.write_lin(mem, la, size as usize, op.imm, op.mem.ss)?;
            }
            Fast::Extend {
                d,
                s,
                size,
                src_size,
                signed,
            } => {
                let v = if s == NO_REG {
                    self.fast_read(mem, &op.mem, src_size as usize)?
                } else {
                    self.st.gpr[s as usize & 15] & mask(src_size as usize)
                };
                let v = if signed {
                    sext(v, src_size as usize)
                } else {
                    v
                };
                self.set_gpr(d, size, v);
            }
            Fast::AluRR {
                op: alu,
                d,
                s,
                size,
            } => {
                let a = self.get_gpr(d, size);
                let b = self.get_gpr(s, size);
                let (r, write) = self.alu(alu, a, b, size as usize);
                if write {
                    self.set_gpr(d, size, r);
                }
            }
            Fast::AluRI { op: alu, d, size } => {
                let a = self.get_gpr(d, size);
                let (r, write) = self.alu(alu, a, op.imm, size as usize);
                if write {
                    self.set_gpr(d, size, r);
                }
            }
            Fast::AluRM { op: alu, d, size } => {
                let a = self.get_gpr(d, size);
                let b = self.fast_read(mem, &op.mem, size as usize)?;
                let (r, write) = self.alu(alu, a, b, size as usize);
                if write {
                    self.set_gpr(d, size, r);
                }
            }
            Fast::AluM { op: alu, s, size } => {
                let la = self.fast_la(&op.mem);
                let a = self.read_lin(mem, la, size as usize, op.mem.ss)?;
                let b = if s == NO_REG {
                    op.imm
                } else {
                    self.get_gpr(s, size)
                };
                let (r, f) = alu_result(alu, a, b, size as usize);
                if !matches!(alu, AluOp::Cmp | AluOp::Test) {
                    self.write_lin(mem, la, size as usize, r, op.mem.ss)?;
                }
                self.set_status(f);
            }
            Fast::Imul {
                d,
                s,
                size,
                with_imm,
            } => {
                let sz = size as usize;
                let a = if s == NO_REG {
                    self.fast_read(mem, &op.mem, sz)?
                } else {
                    self.get_gpr(s, size)
                };
                let b = if with_imm {
                    op.imm
                } else {
                    self.get_gpr(d, size)
                };
                let p = (sext(a, sz) as i64 as i128) * (sext(b, sz) as i64 as i128);
                let r = (p as u64) & mask(sz);
                let overflow = sext(r, sz) as i64 as i128 != p;
                self.set_gpr(d, size, r);
                self.set_mul_flags(r, sz, overflow);
            }
            Fast::IncDec { d, size, inc } => {
                let a = self.get_gpr(d, size);
                let (r, f) = if inc {
                    flags::add(a, 1, false, size as usize)
                } else {
                    flags::sub(a, 1, false, size as usize)
                };
                self.set_gpr(d, size, r);
                self.set_status((f & !CF) | (self.st.rflags & CF));
            }
            Fast::ShiftRI { op: shift, d, size } => {
                let a = self.get_gpr(d, size);
                let (r, f) = flags::shift(shift, a, op.imm as u32, size as usize, self.st.rflags);
                // A register destination is written even for a zero count.
                self.set_gpr(d, size, r);
                self.st.rflags = f;
            }
            Fast::Lea { d, size } => {
                let a = self.fast_ea(&op.mem);
                self.set_gpr(d, size, a);
            }
            Fast::Jcc(cc) => {
                if self.cond(cc) {
                    self.next_rip = self.st.rip.wrapping_add(op.imm);
                }
            }
            Fast::JmpRel => self.next_rip = self.st.rip.wrapping_add(op.imm),
            Fast::CallRel => {
                let t = self.st.rip.wrapping_add(op.imm);
                self.push(mem, self.next_rip, 8)?;
                self.next_rip = t;
            }
            Fast::Ret => {
                let t = self.peek(mem, 0, 8)?;
                self.jump(t)?;
                self.st.gpr[4] = self.st.gpr[4].wrapping_add(8);
            }
            Fast::Push { s } => {
                let v = self.st.gpr[s as usize & 15];
                self.push(mem, v, 8)?;
            }
            Fast::Pop { d } => {
                let v = self.peek(mem, 0, 8)?;
                self.st.gpr[4] = self.st.gpr[4].wrapping_add(8);
                self.st.gpr[d as usize & 15] = v;
            }
        }
        Ok(Retired::Continue)
    }
}
