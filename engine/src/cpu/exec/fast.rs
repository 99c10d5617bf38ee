//! Fast forms: the commonest instructions, pre-classified at decode time into a compact
//! [`FastOp`] that carries everything the instruction needs (registers, immediate,
//! memory operand) and a handler specialised for its operation and operand size, so
//! that executing them is one indirect call into straight-line code that neither copies
//! nor consults the decoded `Instruction`. Every handler does exactly what [`Cpu::exec`]
//! does for its instructions; anything else has no handler and goes through the general
//! dispatch.

use iced_x86::{Code, ConditionCode, Instruction, Mnemonic, OpKind, Register};

use super::super::flags::{self, CF, ShiftOp, mask, sext};
use super::super::undefined::Family;
use super::super::{Cpu, Fault, R};
use super::{AL, EAX, R15, R15L, RAX};
use crate::memory::GuestMemory;

/// ALU operations with a fast path (the handlers' `OP` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum AluOp {
    Add,
    Or,
    And,
    Sub,
    Xor,
    Cmp,
    Test,
}

const ADD: u8 = AluOp::Add as u8;
const OR: u8 = AluOp::Or as u8;
const AND: u8 = AluOp::And as u8;
const SUB: u8 = AluOp::Sub as u8;
const XOR: u8 = AluOp::Xor as u8;
const CMP: u8 = AluOp::Cmp as u8;
const TEST: u8 = AluOp::Test as u8;

/// What a handler returns: the fault is boxed so that the result fits in a register
/// (faults are rare; every instruction returns).
pub(crate) type HandlerResult = Result<(), Box<Fault>>;

/// Executes one instruction of a fast form.
pub(crate) type Handler = fn(&mut Cpu, &mut GuestMemory, &FastOp) -> HandlerResult;

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

/// A decoded instruction's fast form: its handler and operands.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FastOp {
    /// `None`: the instruction takes the general path.
    pub(crate) handler: Option<Handler>,
    /// Length of the instruction in bytes.
    pub(crate) len: u8,
    /// A branch, call or return: it ends a block (see [`crate::cpu::block`]).
    pub(crate) branch: bool,
    /// It may write memory (which may be code or a page table).
    pub(crate) writes_memory: bool,
    /// Destination and source GPR indexes (or [`NO_REG`]), as the handler defines them.
    d: u8,
    s: u8,
    /// Extra form bits for the less common handlers (see [`extend`] and [`imul`]).
    aux: u8,
    mem: MemOperand,
    /// The immediate masked to the operand size, the shift count, or the branch
    /// displacement from RIP.
    imm: u64,
}

impl FastOp {
    /// The form of an instruction that takes the general path.
    pub(crate) fn generic(len: usize) -> FastOp {
        FastOp {
            handler: None,
            len: len as u8,
            branch: false,
            writes_memory: true,
            d: NO_REG,
            s: NO_REG,
            aux: 0,
            mem: MemOperand::NONE,
            imm: 0,
        }
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

/// Picks `$f::<..., SIZE>` for a register operand size of 4 or 8.
macro_rules! by_size48 {
    ($size:expr, $f:ident $(, $c:expr)*) => {
        if $size == 4 {
            $f::<$($c,)* 4> as Handler
        } else {
            $f::<$($c,)* 8> as Handler
        }
    };
}

/// Picks `$f::<..., SIZE>` for a memory operand size of 1, 2, 4 or 8.
macro_rules! by_size {
    ($size:expr, $f:ident $(, $c:expr)*) => {
        match $size {
            1 => $f::<$($c,)* 1> as Handler,
            2 => $f::<$($c,)* 2> as Handler,
            4 => $f::<$($c,)* 4> as Handler,
            _ => $f::<$($c,)* 8> as Handler,
        }
    };
}

/// Picks `$f::<OP, SIZE>` over the ALU operations.
macro_rules! by_alu_op {
    ($op:expr, $pick:ident, $size:expr, $f:ident) => {
        match $op {
            AluOp::Add => $pick!($size, $f, ADD),
            AluOp::Or => $pick!($size, $f, OR),
            AluOp::And => $pick!($size, $f, AND),
            AluOp::Sub => $pick!($size, $f, SUB),
            AluOp::Xor => $pick!($size, $f, XOR),
            AluOp::Cmp => $pick!($size, $f, CMP),
            AluOp::Test => $pick!($size, $f, TEST),
        }
    };
}

const SHL: u8 = 0;
const SHR: u8 = 1;
const SAR: u8 = 2;
const ROL: u8 = 3;
const ROR: u8 = 4;

fn shift_op(op: u8) -> ShiftOp {
    match op {
        SHL => ShiftOp::Shl,
        SHR => ShiftOp::Shr,
        SAR => ShiftOp::Sar,
        ROL => ShiftOp::Rol,
        _ => ShiftOp::Ror,
    }
}

/// The condition codes by number (iced's `ConditionCode as u8`).
const CONDITIONS: [ConditionCode; 17] = [
    ConditionCode::None,
    ConditionCode::o,
    ConditionCode::no,
    ConditionCode::b,
    ConditionCode::ae,
    ConditionCode::e,
    ConditionCode::ne,
    ConditionCode::be,
    ConditionCode::a,
    ConditionCode::s,
    ConditionCode::ns,
    ConditionCode::p,
    ConditionCode::np,
    ConditionCode::l,
    ConditionCode::ge,
    ConditionCode::le,
    ConditionCode::g,
];

fn jcc_handler(cc: ConditionCode) -> Handler {
    macro_rules! ccs {
        ($($n:literal)*) => {
            match cc as u8 {
                $($n => jcc::<$n> as Handler,)*
                _ => jcc::<0> as Handler,
            }
        };
    }
    ccs!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
}

/// The form of one instruction, before its memory operand is attached.
struct Form {
    handler: Handler,
    d: u8,
    s: u8,
    aux: u8,
    imm: u64,
}

fn form(handler: Handler, d: u8, s: u8, imm: u64) -> Option<Form> {
    Some(Form {
        handler,
        d,
        s,
        aux: 0,
        imm,
    })
}

/// Classifies a decoded instruction (see [`FastOp`]).
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
    let Some(f) = classify_form(ins) else {
        return generic;
    };
    FastOp {
        handler: Some(f.handler),
        len: ins.len() as u8,
        branch: ins.flow_control() != iced_x86::FlowControl::Next,
        writes_memory: matches!(ins.mnemonic(), Mnemonic::Push | Mnemonic::Call)
            || (ins.op_count() > 0
                && ins.op_kind(0) == OpKind::Memory
                && !matches!(ins.mnemonic(), Mnemonic::Cmp | Mnemonic::Test)),
        d: f.d,
        s: f.s,
        aux: f.aux,
        mem,
        imm: f.imm,
    }
}

fn classify_form(ins: &Instruction) -> Option<Form> {
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
    let mem_sized = matches!(msize, 1 | 2 | 4 | 8);
    let imm1 = |size: usize| ins.immediate(1) & mask(size);
    let m = ins.mnemonic();
    let two = ins.op_count() == 2;
    match m {
        M::Nop | M::Pause | M::Endbr64 => form(nop, NO_REG, NO_REG, 0),
        M::Mov if two => match (reg(0), reg(1)) {
            (Some((d, a)), Some((s, b))) if a == b => form(by_size48!(a, mov_rr), d, s, 0),
            (Some((d, size)), None) if imm(1) => {
                form(by_size48!(size, mov_ri), d, NO_REG, imm1(size as usize))
            }
            (Some((d, size)), None) if memop(1) && msize == size as usize => {
                form(by_size48!(size, mov_rm), d, NO_REG, 0)
            }
            (None, Some((s, size))) if memop(0) && msize == size as usize => {
                form(by_size48!(size, mov_mr), NO_REG, s, 0)
            }
            (None, None) if memop(0) && imm(1) && mem_sized => {
                form(by_size!(msize, mov_mi), NO_REG, NO_REG, imm1(msize))
            }
            _ => None,
        },
        M::Movzx | M::Movsx | M::Movsxd if two => {
            let (d, size) = reg(0)?;
            let (s, src_size) = match ins.op_kind(1) {
                OpKind::Register => gpr_extend_source(ins.op_register(1))?,
                OpKind::Memory if matches!(msize, 1 | 2 | 4) => (NO_REG, msize as u8),
                _ => return None,
            };
            let signed = if m == M::Movzx { 0 } else { EXTEND_SIGNED };
            Some(Form {
                handler: by_size48!(size, extend),
                d,
                s,
                aux: src_size | signed,
                imm: 0,
            })
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
                (Some((d, a)), Some((s, b))) if a == b => {
                    form(by_alu_op!(op, by_size48, a, alu_rr), d, s, 0)
                }
                (Some((d, size)), None) if imm(1) => form(
                    by_alu_op!(op, by_size48, size, alu_ri),
                    d,
                    NO_REG,
                    imm1(size as usize),
                ),
                (Some((d, size)), None) if memop(1) && msize == size as usize => {
                    form(by_alu_op!(op, by_size48, size, alu_rm), d, NO_REG, 0)
                }
                (None, Some((s, size))) if memop(0) && msize == size as usize => {
                    form(by_alu_op!(op, by_size, size, alu_mr), NO_REG, s, 0)
                }
                (None, None) if memop(0) && imm(1) && mem_sized => form(
                    by_alu_op!(op, by_size, msize, alu_mi),
                    NO_REG,
                    NO_REG,
                    imm1(msize),
                ),
                _ => None,
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
            Some(Form {
                handler: by_size48!(size, imul),
                d,
                s,
                aux: with_imm as u8,
                imm: if with_imm {
                    ins.immediate(2) & mask(size as usize)
                } else {
                    0
                },
            })
        }
        M::Inc | M::Dec if ins.op_count() == 1 => {
            let (d, size) = reg(0)?;
            let h = if m == M::Inc {
                by_size48!(size, inc_dec, true)
            } else {
                by_size48!(size, inc_dec, false)
            };
            form(h, d, NO_REG, 0)
        }
        M::Shl | M::Sal | M::Shr | M::Sar | M::Rol | M::Ror if two => {
            let (d, size) = reg(0)?;
            if ins.op_kind(1) != OpKind::Immediate8 {
                return None;
            }
            let count = (ins.immediate(1) & 0xff) & if size == 8 { 63 } else { 31 };
            let h = match m {
                M::Shl | M::Sal => by_size48!(size, shift_ri, SHL),
                M::Shr => by_size48!(size, shift_ri, SHR),
                M::Sar => by_size48!(size, shift_ri, SAR),
                M::Rol => by_size48!(size, shift_ri, ROL),
                _ => by_size48!(size, shift_ri, ROR),
            };
            form(h, d, NO_REG, count)
        }
        M::Lea => {
            let (d, size) = reg(0)?;
            form(by_size48!(size, lea), d, NO_REG, 0)
        }
        _ if ins.is_jcc_short_or_near() => form(
            jcc_handler(ins.condition_code()),
            NO_REG,
            NO_REG,
            ins.near_branch64(),
        ),
        M::Jmp if matches!(ins.code(), Code::Jmp_rel8_64 | Code::Jmp_rel32_64) => {
            form(jmp_rel, NO_REG, NO_REG, ins.near_branch64())
        }
        M::Call if ins.code() == Code::Call_rel32_64 => {
            form(call_rel, NO_REG, NO_REG, ins.near_branch64())
        }
        M::Ret if ins.code() == Code::Retnq => form(ret, NO_REG, NO_REG, 0),
        M::Push if ins.code() == Code::Push_r64 => match reg(0)? {
            (s, 8) => form(push, NO_REG, s, 0),
            _ => None,
        },
        M::Pop if ins.code() == Code::Pop_r64 => match reg(0)? {
            (d, 8) => form(pop, d, NO_REG, 0),
            _ => None,
        },
        _ => None,
    }
}

/// [`FastOp::aux`] of [`extend`]: the source size in bytes, and this bit for a sign
/// extension.
const EXTEND_SIGNED: u8 = 0x80;

// ---- the handlers ----

#[inline(always)]
fn set_gpr<const SIZE: usize>(cpu: &mut Cpu, i: u8, v: u64) {
    // Only 32- and 64-bit registers: a 32-bit write zero-extends.
    cpu.st.gpr[i as usize & 15] = v & mask(SIZE);
}

#[inline(always)]
fn gpr<const SIZE: usize>(cpu: &Cpu, i: u8) -> u64 {
    cpu.st.gpr[i as usize & 15] & mask(SIZE)
}

/// The result and status flags of an ALU operation (`rflags` and the CPU's rules for
/// the undefined AF of the logical ones).
#[inline(always)]
fn alu_result<const OP: u8, const SIZE: usize>(cpu: &Cpu, a: u64, b: u64) -> (u64, u64) {
    let logic = |family, r| {
        (
            r,
            flags::logic(family, r, SIZE, cpu.st.rflags, &cpu.undefined),
        )
    };
    match OP {
        ADD => flags::add(a, b, false, SIZE),
        SUB | CMP => flags::sub(a, b, false, SIZE),
        AND => logic(Family::And, a & b),
        TEST => logic(Family::Test, a & b),
        OR => logic(Family::Or, a | b),
        _ => logic(Family::Xor, a ^ b),
    }
}

/// Whether the ALU operation writes its destination (`cmp` and `test` do not).
const fn alu_writes(op: u8) -> bool {
    op != CMP && op != TEST
}

impl Cpu {
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
}

fn nop(_: &mut Cpu, _: &mut GuestMemory, _: &FastOp) -> HandlerResult {
    Ok(())
}

fn mov_rr<const SIZE: usize>(cpu: &mut Cpu, _: &mut GuestMemory, op: &FastOp) -> HandlerResult {
    let v = gpr::<SIZE>(cpu, op.s);
    set_gpr::<SIZE>(cpu, op.d, v);
    Ok(())
}

fn mov_ri<const SIZE: usize>(cpu: &mut Cpu, _: &mut GuestMemory, op: &FastOp) -> HandlerResult {
    set_gpr::<SIZE>(cpu, op.d, op.imm);
    Ok(())
}

fn mov_rm<const SIZE: usize>(cpu: &mut Cpu, mem: &mut GuestMemory, op: &FastOp) -> HandlerResult {
    let v = cpu.fast_read(mem, &op.mem, SIZE)?;
    set_gpr::<SIZE>(cpu, op.d, v);
    Ok(())
}

fn mov_mr<const SIZE: usize>(cpu: &mut Cpu, mem: &mut GuestMemory, op: &FastOp) -> HandlerResult {
    let la = cpu.fast_la(&op.mem);
    let v = gpr::<SIZE>(cpu, op.s);
    Ok(cpu.write_lin(mem, la, SIZE, v, op.mem.ss)?)
}

fn mov_mi<const SIZE: usize>(cpu: &mut Cpu, mem: &mut GuestMemory, op: &FastOp) -> HandlerResult {
    let la = cpu.fast_la(&op.mem);
    Ok(cpu.write_lin(mem, la, SIZE, op.imm, op.mem.ss)?)
}

/// movzx/movsx/movsxd: `aux` holds the source size and [`EXTEND_SIGNED`]; the source
/// is register `s` or memory.
fn extend<const SIZE: usize>(cpu: &mut Cpu, mem: &mut GuestMemory, op: &FastOp) -> HandlerResult {
    let src_size = (op.aux & !EXTEND_SIGNED) as usize;
    let v = if op.s == NO_REG {
        cpu.fast_read(mem, &op.mem, src_size)?
    } else {
        cpu.st.gpr[op.s as usize & 15] & mask(src_size)
    };
    let v = if op.aux & EXTEND_SIGNED != 0 {
        sext(v, src_size)
    } else {
        v
    };
    set_gpr::<SIZE>(cpu, op.d, v);
    Ok(())
}

/// `d op= b` for a register destination.
#[inline(always)]
fn alu_to_reg<const OP: u8, const SIZE: usize>(cpu: &mut Cpu, d: u8, b: u64) -> HandlerResult {
    let (r, f) = alu_result::<OP, SIZE>(cpu, gpr::<SIZE>(cpu, d), b);
    cpu.set_status(f);
    if alu_writes(OP) {
        set_gpr::<SIZE>(cpu, d, r);
    }
    Ok(())
}

/// `[mem] op= b` (any operand size).
#[inline(always)]
fn alu_to_mem<const OP: u8, const SIZE: usize>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    op: &FastOp,
    b: u64,
) -> HandlerResult {
    let la = cpu.fast_la(&op.mem);
    let a = cpu.read_lin(mem, la, SIZE, op.mem.ss)?;
    let (r, f) = alu_result::<OP, SIZE>(cpu, a, b);
    if alu_writes(OP) {
        cpu.write_lin(mem, la, SIZE, r, op.mem.ss)?;
    }
    cpu.set_status(f);
    Ok(())
}

fn alu_rr<const OP: u8, const SIZE: usize>(
    cpu: &mut Cpu,
    _: &mut GuestMemory,
    op: &FastOp,
) -> HandlerResult {
    let b = gpr::<SIZE>(cpu, op.s);
    alu_to_reg::<OP, SIZE>(cpu, op.d, b)
}

fn alu_ri<const OP: u8, const SIZE: usize>(
    cpu: &mut Cpu,
    _: &mut GuestMemory,
    op: &FastOp,
) -> HandlerResult {
    alu_to_reg::<OP, SIZE>(cpu, op.d, op.imm)
}

fn alu_rm<const OP: u8, const SIZE: usize>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    op: &FastOp,
) -> HandlerResult {
    let b = cpu.fast_read(mem, &op.mem, SIZE)?;
    alu_to_reg::<OP, SIZE>(cpu, op.d, b)
}

/// op [mem], reg (any operand size: the register's low bytes).
fn alu_mr<const OP: u8, const SIZE: usize>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    op: &FastOp,
) -> HandlerResult {
    let b = gpr::<SIZE>(cpu, op.s);
    alu_to_mem::<OP, SIZE>(cpu, mem, op, b)
}

fn alu_mi<const OP: u8, const SIZE: usize>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    op: &FastOp,
) -> HandlerResult {
    alu_to_mem::<OP, SIZE>(cpu, mem, op, op.imm)
}

/// imul reg, reg or [mem] (`s` = [`NO_REG`]), times the immediate if `aux` is 1, else
/// times the destination.
fn imul<const SIZE: usize>(cpu: &mut Cpu, mem: &mut GuestMemory, op: &FastOp) -> HandlerResult {
    let a = if op.s == NO_REG {
        cpu.fast_read(mem, &op.mem, SIZE)?
    } else {
        gpr::<SIZE>(cpu, op.s)
    };
    let b = if op.aux != 0 {
        op.imm
    } else {
        gpr::<SIZE>(cpu, op.d)
    };
    let p = (sext(a, SIZE) as i64 as i128) * (sext(b, SIZE) as i64 as i128);
    let r = (p as u64) & mask(SIZE);
    let overflow = sext(r, SIZE) as i64 as i128 != p;
    set_gpr::<SIZE>(cpu, op.d, r);
    cpu.set_mul_flags(Family::ImulMultiOperand, r, SIZE, overflow);
    Ok(())
}

fn inc_dec<const INC: bool, const SIZE: usize>(
    cpu: &mut Cpu,
    _: &mut GuestMemory,
    op: &FastOp,
) -> HandlerResult {
    let a = gpr::<SIZE>(cpu, op.d);
    let (r, f) = if INC {
        flags::add(a, 1, false, SIZE)
    } else {
        flags::sub(a, 1, false, SIZE)
    };
    set_gpr::<SIZE>(cpu, op.d, r);
    cpu.set_status((f & !CF) | (cpu.st.rflags & CF));
    Ok(())
}

fn shift_ri<const OP: u8, const SIZE: usize>(
    cpu: &mut Cpu,
    _: &mut GuestMemory,
    op: &FastOp,
) -> HandlerResult {
    let a = gpr::<SIZE>(cpu, op.d);
    let (r, f) = flags::shift(
        shift_op(OP),
        a,
        op.imm as u32,
        SIZE,
        cpu.st.rflags,
        &cpu.undefined,
    );
    // A register destination is written even for a zero count.
    set_gpr::<SIZE>(cpu, op.d, r);
    cpu.st.rflags = f;
    Ok(())
}

fn lea<const SIZE: usize>(cpu: &mut Cpu, _: &mut GuestMemory, op: &FastOp) -> HandlerResult {
    let a = cpu.fast_ea(&op.mem);
    set_gpr::<SIZE>(cpu, op.d, a);
    Ok(())
}

fn jcc<const CC: u8>(cpu: &mut Cpu, _: &mut GuestMemory, op: &FastOp) -> HandlerResult {
    if cpu.cond(CONDITIONS[CC as usize]) {
        cpu.next_rip = cpu.st.rip.wrapping_add(op.imm);
    }
    Ok(())
}

fn jmp_rel(cpu: &mut Cpu, _: &mut GuestMemory, op: &FastOp) -> HandlerResult {
    cpu.next_rip = cpu.st.rip.wrapping_add(op.imm);
    Ok(())
}

fn call_rel(cpu: &mut Cpu, mem: &mut GuestMemory, op: &FastOp) -> HandlerResult {
    let t = cpu.st.rip.wrapping_add(op.imm);
    cpu.push(mem, cpu.next_rip, 8)?;
    cpu.next_rip = t;
    Ok(())
}

fn ret(cpu: &mut Cpu, mem: &mut GuestMemory, _: &FastOp) -> HandlerResult {
    let t = cpu.peek(mem, 0, 8)?;
    cpu.jump(t)?;
    cpu.st.gpr[4] = cpu.st.gpr[4].wrapping_add(8);
    Ok(())
}

fn push(cpu: &mut Cpu, mem: &mut GuestMemory, op: &FastOp) -> HandlerResult {
    let v = cpu.st.gpr[op.s as usize & 15];
    Ok(cpu.push(mem, v, 8)?)
}

fn pop(cpu: &mut Cpu, mem: &mut GuestMemory, op: &FastOp) -> HandlerResult {
    let v = cpu.peek(mem, 0, 8)?;
    cpu.st.gpr[4] = cpu.st.gpr[4].wrapping_add(8);
    cpu.st.gpr[op.d as usize & 15] = v;
    Ok(())
}
